//! `tapctl`: find taps and drive them by hand, the operator's side of the
//! tap control plane (the messages are `rst-control`'s).
//!
//! ```sh
//! tapctl discover                                  # who is there (broadcast)
//! export TAPCTL_SECRET=…                            # or --secret-file FILE
//! tapctl config --tap 10.0.0.7 --receiver 10.0.0.20:9527 --network 10.1.0.0/16
//! tapctl start  --tap 10.0.0.7
//! tapctl status --tap 10.0.0.7
//! tapctl stop   --tap 10.0.0.7
//! ```
//!
//! Each command connects, says hello with the secret, sends its request,
//! prints the tap's answer (JSON) and closes. Exit status 1 when the tap
//! refused, with its error on stderr.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use rst_control::control::{ConfigChange, Mode, Reply, Request, Response};
use rst_tap_client::Connection;

#[derive(Debug, Parser)]
#[command(name = "tapctl", version, about = "Find rst taps and control them")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Broadcast "who is there" and list the taps that answer
    Discover {
        /// Where to send the request
        #[arg(long, default_value = "255.255.255.255")]
        broadcast: IpAddr,
        /// The taps' discovery port
        #[arg(long, default_value_t = rst_control::DISCOVERY_PORT)]
        port: u16,
        /// Seconds to wait for answers
        #[arg(long, default_value_t = 1.0)]
        wait: f64,
        /// One JSON object per tap instead of a table
        #[arg(long)]
        json: bool,
    },
    /// State, configuration and counters
    Status(Target),
    /// Change the configuration (only the options given)
    Config {
        #[command(flatten)]
        target: Target,
        /// The rst receiver calls go to
        #[arg(long, value_name = "ADDR:PORT")]
        receiver: Option<SocketAddr>,
        /// Several receivers, comma-separated: calls spread over them and
        /// fail over (an empty value goes back to --receiver alone)
        #[arg(long, value_name = "ADDR:PORT,...", value_delimiter = ',', num_args = 0..)]
        receivers: Option<Vec<SocketAddr>>,
        /// BPF capture filter ("" removes it)
        #[arg(long, value_name = "BPF")]
        filter: Option<String>,
        /// Record only calls in these networks (repeatable)
        #[arg(long, value_name = "CIDR")]
        network: Vec<ipnet::IpNet>,
        /// Record calls in any network
        #[arg(long, conflicts_with = "network")]
        any_network: bool,
        /// Record only calls whose caller or callee matches (glob or re:REGEX; repeatable)
        #[arg(long, value_name = "PATTERN")]
        number: Vec<String>,
        /// Record calls with any number
        #[arg(long, conflicts_with = "number")]
        any_number: bool,
        /// Never record calls whose caller or callee matches (repeatable)
        #[arg(long, value_name = "PATTERN")]
        skip_number: Vec<String>,
        /// Skip no numbers
        #[arg(long, conflicts_with = "skip_number")]
        no_skip_number: bool,
        /// The interface to capture on
        #[arg(long, value_name = "IF")]
        interface: Option<String>,
        /// How calls go to the receiver: rtp
        #[arg(long, value_name = "MODE", value_parser = parse_mode)]
        mode: Option<Mode>,
    },
    /// Start capturing and sending
    Start(Target),
    /// Stop: every call ends, nothing more is sent
    Stop(Target),
}

#[derive(Debug, Args)]
struct Target {
    /// The tap: HOST or HOST:PORT (control port, default 9531)
    #[arg(long, value_name = "HOST[:PORT]")]
    tap: String,
    /// The shared secret (visible in `ps`: prefer TAPCTL_SECRET or --secret-file)
    #[arg(long)]
    secret: Option<String>,
    /// A file holding the shared secret
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Seconds to wait for the tap
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| format!("unknown mode {text:?} (rtp or data)"))
}

fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli) {
        eprintln!("tapctl: {error:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (target, request) = match cli.command {
        Command::Discover {
            broadcast,
            port,
            wait,
            json,
        } => return discover(SocketAddr::new(broadcast, port), seconds(wait), json),
        Command::Status(target) => (target, Request::Status),
        Command::Start(target) => (target, Request::Start),
        Command::Stop(target) => (target, Request::Stop),
        Command::Config {
            target,
            receiver,
            receivers,
            filter,
            network,
            any_network,
            number,
            any_number,
            skip_number,
            no_skip_number,
            interface,
            mode,
        } => {
            let list =
                |given: Vec<String>, clear: bool| (clear || !given.is_empty()).then_some(given);
            let change = ConfigChange {
                interface,
                filter,
                networks: (any_network || !network.is_empty()).then_some(network),
                numbers: list(number, any_number),
                skip_numbers: list(skip_number, no_skip_number),
                receiver,
                receivers,
                mode,
            };
            (target, Request::Config(change))
        }
    };
    let reply = session(&target, request)?;
    let line = Response::Ok(reply).encode();
    let value: serde_json::Value = serde_json::from_str(&line)?;
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.01, 3600.0))
}

/// Broadcasts one request and prints each distinct answer.
fn discover(to: SocketAddr, wait: Duration, json: bool) -> anyhow::Result<()> {
    let found = rst_tap_client::discover(to, wait).with_context(|| format!("cannot ask {to}"))?;
    for tap in &found {
        if json {
            let mut value = serde_json::to_value(&tap.here)?;
            value["control"] = tap.control.to_string().into();
            println!("{value}");
        } else {
            println!("{tap}");
        }
    }
    if found.is_empty() && !json {
        eprintln!("tapctl: no tap answered within {:.1} s", wait.as_secs_f64());
    }
    Ok(())
}

fn secret(target: &Target) -> anyhow::Result<String> {
    if let Some(path) = &target.secret_file {
        let secret = rst_tap_client::read_secret(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return Ok(secret.0);
    }
    target
        .secret
        .clone()
        .or_else(|| std::env::var("TAPCTL_SECRET").ok())
        .context("no secret: give --secret-file FILE or set TAPCTL_SECRET")
}

/// Connects, says hello, sends `request`, closes; the tap's reply.
fn session(target: &Target, request: Request) -> anyhow::Result<Reply> {
    let addr = rst_tap_client::resolve(&target.tap)?;
    let client = format!("tapctl {}", env!("CARGO_PKG_VERSION"));
    let mut connection = Connection::open(addr, &secret(target)?, &client, seconds(target.timeout))
        .context("hello")?;
    let reply = connection.ask(&request)?;
    connection.close();
    Ok(reply)
}
