use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;
use udp_server::assemble::{Place, Source};
use udp_server::storage::StorageSettings;
use udp_server::taps::TapsConfig;
use udp_server::{Config, Metrics, Settings};

#[global_allocator]
static ALLOCATOR: udp_server::allocator::Allocator = udp_server::allocator::Allocator;

/// The rst receiver: records the calls that mod_rst and tap_daemon send.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file; its keys are the flags' names (record-dir = "...")
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
}

// Parsed once per run: the size of `Assemble`'s storage settings costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Taps (tap_daemon) on the network: find them, see the configured ones
    Taps {
        #[command(subcommand)]
        command: TapsCommand,
    },
    /// Join the parts of a call recorded on several receivers (a pool's
    /// failover) into one set of WAV files, silence where audio was lost
    Assemble {
        /// The call's UUID
        uuid: String,
        /// The receivers' record folders (or copies of them), and buckets
        /// they store in: s3://BUCKET/PREFIX (s3:// alone: the [storage]
        /// bucket and prefix), reached with the --storage-* settings
        #[arg(long, required = true, num_args = 1..)]
        from: Vec<String>,
        /// Where UUID.R.wav, UUID.W.wav, UUID.stereo.wav and UUID.assembled.json go
        #[arg(long)]
        out: PathBuf,
        /// Day (YYYY-MM-DD, UTC) the call began, so that a store is searched
        /// that day and its neighbours [default: the days of the parts found
        /// in the folders, else every day, newest first]
        #[arg(long, value_parser = udp_server::assemble::parse_day)]
        day: Vec<time::Date>,
        #[command(flatten)]
        storage: StorageSettings,
    },
}

#[derive(Debug, Subcommand)]
enum TapsCommand {
    /// Ask "who is there" (to tap-discovery) and list the taps that answer
    Discover {
        /// Where to ask [default: tap-discovery, 255.255.255.255:9530]
        #[arg(long, value_name = "ADDR:PORT")]
        to: Option<SocketAddr>,
        /// Seconds to wait for answers
        #[arg(long, default_value_t = 1.0)]
        wait: f64,
    },
    /// Connect to each configured tap and show its state and counters
    Status,
}

fn main() -> anyhow::Result<()> {
    let _log = rst_log::init();
    let cli = Cli::parse();
    let file = match &cli.config {
        Some(path) => Settings::load(path)?,
        None => Settings::default(),
    };
    let settings = cli.settings.over(file);
    if let Some(Command::Assemble {
        uuid,
        from,
        out,
        day,
        storage,
    }) = cli.command
    {
        return assemble(&uuid, &from, &out, &day, storage.over(settings.storage));
    }
    // Finding taps needs no secrets: the rest of the configuration may be unfinished.
    if let Some(Command::Taps {
        command: TapsCommand::Discover { to, wait },
    }) = cli.command
    {
        let to = to
            .or(settings.tap_discovery)
            .unwrap_or(TapsConfig::default().discovery);
        return discover(to, Duration::from_secs_f64(wait.clamp(0.01, 600.0)));
    }
    let config = settings.resolve().context("invalid configuration")?;
    match cli.command {
        Some(Command::Taps {
            command: TapsCommand::Status,
        }) => status(&config),
        _ => receive(config),
    }
}

/// `assemble`: each store opened as the receiver opens its own (endpoint,
/// region, addressing, credentials from `storage`), with the bucket and
/// prefix of its `s3://`.
fn assemble(
    uuid: &str,
    from: &[String],
    out: &std::path::Path,
    days: &[time::Date],
    storage: StorageSettings,
) -> anyhow::Result<()> {
    let mut sources = Vec::new();
    for from in from {
        let source = match Place::parse(from) {
            Place::Dir(dir) => Source::Dir(dir),
            Place::Store(named) => {
                let mut settings = storage.clone();
                if let Some((bucket, prefix)) = named {
                    settings.bucket = Some(bucket);
                    settings.prefix = Some(prefix);
                }
                anyhow::ensure!(
                    settings.bucket.is_some(),
                    "--from {from}: no bucket (give s3://BUCKET/PREFIX, or set the storage bucket)"
                );
                let config = settings
                    .resolve()
                    .with_context(|| format!("--from {from}"))?
                    .context("no bucket")?;
                Source::Store(config)
            }
        };
        sources.push(source);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let assembled = runtime
        .block_on(udp_server::assemble::assemble_from(
            uuid, &sources, days, out,
        ))
        .with_context(|| format!("cannot assemble call {uuid}"))?;
    println!("{}", serde_json::to_string_pretty(&assembled)?);
    Ok(())
}

#[tokio::main]
async fn receive(config: Config) -> anyhow::Result<()> {
    let socket = udp_server::bind(config.listen)?;
    tracing::info!(
        "listening on {} and recording into {}",
        socket.local_addr()?,
        config.record_dir.display()
    );
    // The handlers are in place before anything is logged: a SIGTERM sent
    // the moment the receiver says it started is never missed.
    let signals = Signals::install()?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signals.stop(shutdown.clone()));
    udp_server::run(socket, config, Arc::new(Metrics::default()), shutdown).await
}

/// SIGINT and SIGTERM, listened for from the moment they are installed.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("installing a SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing a SIGTERM handler")?,
        })
    }

    /// Either signal: finish every call and exit. A second one while that
    /// takes long (a store or disk that hangs): exit at once; the files are
    /// valid as they are, and the next start completes them.
    async fn stop(mut self, shutdown: CancellationToken) {
        self.next().await;
        tracing::info!("stopping: finishing every call (a second SIGTERM or SIGINT stops at once)");
        shutdown.cancel();
        self.next().await;
        tracing::warn!("stopping at once: the next start completes the calls left open");
        std::process::exit(1);
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

fn discover(to: SocketAddr, wait: Duration) -> anyhow::Result<()> {
    let found = rst_tap_client::discover(to, wait)
        .with_context(|| format!("cannot send a discovery request to {to}"))?;
    for tap in &found {
        println!("{tap}");
    }
    if found.is_empty() {
        eprintln!(
            "no tap answered {to} within {:.1} s: check that the taps run with a secret \
             (control on) and that UDP port {} reaches them",
            wait.as_secs_f64(),
            to.port()
        );
    }
    Ok(())
}

fn status(config: &Config) -> anyhow::Result<()> {
    anyhow::ensure!(
        !config.taps.links.is_empty(),
        "no tap configured: add `tap = [\"HOST\"]` to the config file or give --tap"
    );
    let mut failed = 0;
    for link in &config.taps.links {
        match udp_server::taps::status(link, config.taps.discovery) {
            Ok(line) => println!("{}\t{line}", link.target),
            Err(error) => {
                failed += 1;
                println!("{}\tunreachable: {error:#}", link.target);
            }
        }
    }
    anyhow::ensure!(failed == 0, "{failed} tap(s) did not answer");
    Ok(())
}
