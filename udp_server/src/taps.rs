//! The receiver as a client of taps (tap_daemon): for each tap in the
//! configuration a link thread connects, configures the tap to send its calls
//! here, starts it, and then asks its status every `tap-poll-interval` (which
//! is also the heartbeat the tap expects). A link that breaks — the tap
//! restarted, the network went away — is opened again with a growing pause
//! (1 s doubling up to 30 s), so a restarted tap is capturing again within
//! seconds. When the receiver stops, each link says `stop` (the tap ends
//! every call with a BYE while the receiver still listens) and `close`.
//!
//! A tap that another client controls answers `hello` with the observer role:
//! the link says so in the log and tries again later, so it takes over once
//! the other client has gone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use ipnet::IpNet;
use rst_control::control::{ConfigChange, ErrorCode, Mode, Reply, Request, Role, Secret, State};
use rst_tap_client::{ClientError, Connection};
use serde::Deserialize;
use thiserror::Error;

use crate::Metrics;

/// How long one request may wait for its answer (`stop` included: the tap
/// gives its receiver a few seconds to acknowledge the BYEs, then answers).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(30);
/// How long discovery waits for a named tap to answer.
const DISCOVERY_WAIT: Duration = Duration::from_secs(1);

/// One tap as the configuration names it: in the file either a string (as on
/// the command line) or a table with the tap's capture settings.
///
/// ```toml
/// tap = ["10.0.0.7", "name=iptap-giga-1"]
/// # or
/// [[tap]]
/// address = "10.0.0.7:9531"
/// secret-file = "/etc/rst/tap.secret"
/// networks = ["10.1.0.0/16"]
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TapSpec {
    /// `HOST[:PORT]` of the tap's control server (port 9531 by default).
    pub address: Option<String>,
    /// Or the tap's name (or id), found by discovery broadcast.
    pub name: Option<String>,
    /// The file holding this tap's secret [default: `tap-secret-file`].
    pub secret_file: Option<PathBuf>,
    /// The secret itself (a file key only; prefer `secret-file`).
    pub secret: Option<Secret>,
    /// Where the tap sends calls [default: this receiver's address as the
    /// tap reaches it].
    pub receiver: Option<SocketAddr>,
    /// The tap's capture interface, BPF filter, networks and number patterns;
    /// absent ones are left as the tap has them.
    pub interface: Option<String>,
    pub filter: Option<String>,
    pub networks: Option<Vec<IpNet>>,
    pub numbers: Option<Vec<String>>,
    pub skip_numbers: Option<Vec<String>>,
}

/// `tap = [...]` in the file: each entry a string (as on the command line)
/// or a table. Written by hand, not `#[serde(untagged)]`: that would hide a
/// misspelt key behind "did not match any variant".
pub fn deserialize_taps<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<TapSpec>, D::Error> {
    struct Entry(TapSpec);

    impl<'de> Deserialize<'de> for Entry {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(EntryVisitor)
        }
    }

    struct EntryVisitor;

    impl<'de> serde::de::Visitor<'de> for EntryVisitor {
        type Value = Entry;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("\"HOST[:PORT]\", \"name=NAME\" or a table with `address` or `name`")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Entry, E> {
            text.parse().map(Entry).map_err(E::custom)
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Entry, A::Error> {
            use serde::de::Error as _;
            let spec = TapSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
            match (&spec.address, &spec.name) {
                (Some(_), None) | (None, Some(_)) => Ok(Entry(spec)),
                _ => Err(A::Error::custom(
                    "a [[tap]] needs exactly one of `address` and `name`",
                )),
            }
        }
    }

    let entries = Vec::<Entry>::deserialize(deserializer)?;
    Ok(entries.into_iter().map(|entry| entry.0).collect())
}

/// `HOST[:PORT]`, or `name=NAME` for a tap found by discovery.
impl std::str::FromStr for TapSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() {
            return Err("a tap is HOST[:PORT] or name=NAME".to_owned());
        }
        Ok(match text.strip_prefix("name=") {
            Some(name) if !name.is_empty() => TapSpec {
                name: Some(name.to_owned()),
                ..TapSpec::default()
            },
            Some(_) => return Err("name= needs the tap's name".to_owned()),
            None => TapSpec {
                address: Some(text.to_owned()),
                ..TapSpec::default()
            },
        })
    }
}

/// Where a link finds its tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapTarget {
    /// `HOST[:PORT]`, resolved at each connection (a tap may move).
    Address(String),
    /// A name or id answered to discovery.
    Name(String),
}

/// One tap the receiver drives, resolved: a secret in hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapLink {
    pub target: TapTarget,
    pub secret: Secret,
    pub receiver: Option<SocketAddr>,
    /// The capture settings sent with every `config`.
    pub capture: ConfigChange,
}

impl TapLink {
    /// Resolves `spec`, reading its secret file or else `default_secret_file`.
    pub fn resolve(
        spec: TapSpec,
        default_secret_file: Option<&PathBuf>,
    ) -> anyhow::Result<TapLink> {
        let target = match (spec.address, spec.name) {
            (Some(address), _) => TapTarget::Address(address),
            (None, Some(name)) => TapTarget::Name(name),
            (None, None) => anyhow::bail!("a tap needs an address or a name"),
        };
        let label = target.to_string();
        // The tap's own file, else its own secret, else the shared file.
        let secret = match (spec.secret_file.as_ref(), spec.secret, default_secret_file) {
            (Some(path), _, _) | (None, None, Some(path)) => {
                rst_tap_client::read_secret(path).with_context(|| {
                    format!("tap {label}: cannot read its secret file {}", path.display())
                })?
            }
            (None, Some(secret), _) => secret,
            (None, None, None) => anyhow::bail!(
                "tap {label} has no secret: give `tap-secret-file`, or `secret-file` in its [[tap]] entry"
            ),
        };
        anyhow::ensure!(!secret.0.is_empty(), "tap {label}: the secret is empty");
        Ok(TapLink {
            target,
            secret,
            receiver: spec.receiver,
            capture: ConfigChange {
                interface: spec.interface,
                filter: spec.filter,
                networks: spec.networks,
                numbers: spec.numbers,
                skip_numbers: spec.skip_numbers,
                receiver: None,
                receivers: None,
                mode: Some(Mode::Rtp),
            },
        })
    }
}

impl std::fmt::Display for TapTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TapTarget::Address(address) => f.write_str(address),
            TapTarget::Name(name) => write!(f, "name={name}"),
        }
    }
}

/// The taps and how they are driven, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapsConfig {
    pub links: Vec<TapLink>,
    /// Where discovery requests go (named taps, `taps discover`).
    pub discovery: SocketAddr,
    /// Seconds between status requests on each link.
    pub poll_interval: Duration,
}

impl Default for TapsConfig {
    fn default() -> Self {
        TapsConfig {
            links: Vec::new(),
            discovery: SocketAddr::from(([255, 255, 255, 255], rst_control::DISCOVERY_PORT)),
            poll_interval: Duration::from_secs(5),
        }
    }
}

/// Why a link session ended.
#[derive(Debug, Error)]
enum LinkError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("no tap named {0:?} answered discovery")]
    NotFound(String),
    #[error("another client controls the tap; trying again later")]
    Observer,
    #[error("the tap answered {0:?} to {1}")]
    Unexpected(Box<Reply>, &'static str),
    #[error("discovery failed: {0}")]
    Discovery(std::io::Error),
}

impl LinkError {
    /// What the operator can do about it.
    fn hint(&self) -> &'static str {
        match self.refusal_code() {
            Some(ErrorCode::Auth) => "check that the tap's secret is the one configured here",
            Some(ErrorCode::InvalidConfig | ErrorCode::Capture) => {
                "fix this tap's capture settings in the receiver's config"
            }
            _ => "check that the tap runs and is reachable",
        }
    }

    fn refusal_code(&self) -> Option<ErrorCode> {
        match self {
            LinkError::Client(error) => error.refusal().map(|failure| failure.code),
            _ => None,
        }
    }
}

/// Set once, when the receiver stops; links wait on it between steps.
#[derive(Debug, Default)]
struct StopSignal {
    stopped: Mutex<bool>,
    changed: Condvar,
}

impl StopSignal {
    fn set(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.changed.notify_all();
    }

    /// Waits up to `pause`; true when the receiver is stopping.
    fn wait(&self, pause: Duration) -> bool {
        let stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        let (stopped, _) = self
            .changed
            .wait_timeout_while(stopped, pause, |stopped| !*stopped)
            .unwrap_or_else(|e| e.into_inner());
        *stopped
    }
}

/// What the console shows of each tap: its state and counters as the link
/// last saw them.
#[derive(Debug, Default)]
pub struct TapBoard(Mutex<std::collections::BTreeMap<String, TapView>>);

/// One tap on the [`TapBoard`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct TapView {
    pub tap: String,
    /// `connecting`, the tap's own state (`Running`, `Stopped`, ...), or `down`.
    pub state: String,
    pub address: Option<String>,
    pub controller: Option<String>,
    pub counters: Option<rst_control::control::Counters>,
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated: time::OffsetDateTime,
}

impl TapBoard {
    /// Every tap, by name.
    pub fn list(&self) -> Vec<TapView> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn set(&self, link: &TapLink, change: impl FnOnce(&mut TapView)) {
        let tap = link.target.to_string();
        let mut taps = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let view = taps.entry(tap.clone()).or_insert_with(|| TapView {
            tap,
            state: "connecting".into(),
            address: None,
            controller: None,
            counters: None,
            error: None,
            updated: time::OffsetDateTime::now_utc(),
        });
        change(view);
        view.updated = time::OffsetDateTime::now_utc();
    }
}

/// The running links, one thread each.
#[derive(Debug)]
pub struct TapLinks {
    stop: Arc<StopSignal>,
    threads: Vec<JoinHandle<()>>,
}

/// What every link shares.
#[derive(Debug)]
struct LinkContext {
    /// The receiver's bound UDP address.
    listen: SocketAddr,
    discovery: SocketAddr,
    poll_interval: Duration,
    metrics: Arc<Metrics>,
    stop: Arc<StopSignal>,
    board: Arc<TapBoard>,
}

impl TapLinks {
    /// Starts a link per configured tap; `listen` is the receiver's bound address.
    pub fn start(config: &TapsConfig, listen: SocketAddr, metrics: Arc<Metrics>) -> TapLinks {
        TapLinks::start_with(config, listen, metrics, Arc::default())
    }

    /// [`TapLinks::start`], showing each tap on `board`.
    pub fn start_with(
        config: &TapsConfig,
        listen: SocketAddr,
        metrics: Arc<Metrics>,
        board: Arc<TapBoard>,
    ) -> TapLinks {
        for link in &config.links {
            board.set(link, |_| {});
        }
        let stop = Arc::new(StopSignal::default());
        let context = Arc::new(LinkContext {
            listen,
            discovery: config.discovery,
            poll_interval: config.poll_interval,
            metrics,
            stop: stop.clone(),
            board,
        });
        let threads = config
            .links
            .iter()
            .filter_map(|link| {
                let label = link.target.to_string();
                let (link, context) = (link.clone(), context.clone());
                std::thread::Builder::new()
                    .name(format!("rst-tap-{label}"))
                    .spawn(move || run_link(&link, &context))
                    .map_err(
                        |error| tracing::error!(tap = label, %error, "cannot start a tap link"),
                    )
                    .ok()
            })
            .collect();
        TapLinks { stop, threads }
    }

    /// Stops every tap (each ends its calls with a BYE) and closes the links.
    /// Blocks until they are done.
    pub fn stop(self) {
        self.stop.set();
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Keeps one tap capturing for this receiver until the receiver stops.
fn run_link(link: &TapLink, context: &LinkContext) {
    let mut retry = FIRST_RETRY;
    loop {
        match session(link, context, &mut retry) {
            Ok(()) => return,
            Err(error) => {
                context
                    .metrics
                    .tap_link_failures
                    .fetch_add(1, Ordering::Relaxed);
                context.board.set(link, |view| {
                    view.state = "down".into();
                    view.error = Some(error.to_string());
                });
                if let LinkError::Observer = error {
                    tracing::info!(tap = %link.target, %error);
                } else {
                    tracing::warn!(
                        tap = %link.target,
                        %error,
                        retry_in_secs = retry.as_secs(),
                        "tap link down; {}",
                        error.hint()
                    );
                }
            }
        }
        if context.stop.wait(retry) {
            return;
        }
        retry = (retry * 2).min(LAST_RETRY);
    }
}

/// One connection: configure, start, watch; stop and close when the receiver
/// stops (`Ok`), or the error that broke it.
fn session(link: &TapLink, context: &LinkContext, retry: &mut Duration) -> Result<(), LinkError> {
    let (addr, mut connection) = connect(link, context.discovery)?;
    if let Reply::Hello {
        role: Role::Observer,
        ..
    } = connection.hello()
    {
        connection.close();
        return Err(LinkError::Observer);
    }
    let receiver = match link.receiver {
        Some(receiver) => receiver,
        // Bound to every address: the one this host has towards the tap.
        None if context.listen.ip().is_unspecified() => SocketAddr::new(
            connection.local_addr().map_err(ClientError::Io)?.ip(),
            context.listen.port(),
        ),
        None => context.listen,
    };
    if receiver.ip().is_loopback() && !addr.ip().is_loopback() {
        tracing::warn!(tap = %link.target, %receiver, "the tap is remote but the receiver listens on loopback: set `listen` to an address the tap can reach");
    }
    let change = ConfigChange {
        receiver: Some(receiver),
        ..link.capture.clone()
    };
    connection.ask(&Request::Config(change))?;
    start(&mut connection)?;
    context.metrics.taps_running.fetch_add(1, Ordering::Relaxed);
    let _running = Decrement(&context.metrics);
    tracing::info!(tap = %link.target, %addr, %receiver, "tap capturing for this receiver");
    *retry = FIRST_RETRY;

    let mut finished_reported = false;
    loop {
        if context.stop.wait(context.poll_interval) {
            // The tap answers `stop` once every call has ended with a BYE.
            let stopped = connection.ask(&Request::Stop);
            connection.close();
            match stopped {
                Ok(_) => tracing::info!(tap = %link.target, "tap stopped"),
                Err(error) => {
                    tracing::warn!(tap = %link.target, %error, "the tap did not stop cleanly")
                }
            }
            return Ok(());
        }
        let status = match connection.ask(&Request::Status)? {
            Reply::Status(status) => status,
            other => return Err(LinkError::Unexpected(Box::new(other), "status")),
        };
        context.board.set(link, |view| {
            view.state = format!("{:?}", status.state);
            view.address = Some(addr.to_string());
            view.controller = status.controller.clone();
            view.counters = Some(status.counters.clone());
            view.error = status.last_error.clone();
        });
        tracing::debug!(tap = %link.target, state = ?status.state, calls = status.counters.calls_active, packets = status.counters.packets, "tap status");
        match status.state {
            State::Running => {}
            // A capture file read to its end: nothing more will come.
            State::Finished => {
                if !finished_reported {
                    tracing::info!(tap = %link.target, "the tap's capture finished");
                    finished_reported = true;
                }
            }
            State::Stopped | State::Failed => {
                tracing::warn!(tap = %link.target, state = ?status.state, error = status.last_error.as_deref().unwrap_or(""), "tap not capturing; starting it again");
                start(&mut connection)?;
            }
        }
    }
}

/// Finds the tap (by its address or by discovery) and says hello.
fn connect(link: &TapLink, discovery: SocketAddr) -> Result<(SocketAddr, Connection), LinkError> {
    let addr = match &link.target {
        TapTarget::Address(address) => rst_tap_client::resolve(address)?,
        TapTarget::Name(name) => rst_tap_client::discover(discovery, DISCOVERY_WAIT)
            .map_err(LinkError::Discovery)?
            .into_iter()
            .find(|found| found.here.name == *name || found.here.id == *name)
            .map(|found| found.control)
            .ok_or_else(|| LinkError::NotFound(name.clone()))?,
    };
    let client = format!("udp_server {}", env!("CARGO_PKG_VERSION"));
    let connection = Connection::open(addr, &link.secret.0, &client, REQUEST_TIMEOUT)?;
    Ok((addr, connection))
}

/// One line on a configured tap: where it is, its state, who controls it,
/// its counters. For `udp_server taps status`.
pub fn status(link: &TapLink, discovery: SocketAddr) -> anyhow::Result<String> {
    let (addr, mut connection) = connect(link, discovery)?;
    let reply = connection.ask(&Request::Status)?;
    connection.close();
    let Reply::Status(status) = reply else {
        anyhow::bail!("the tap answered {reply:?} to status");
    };
    let c = &status.counters;
    Ok(format!(
        "{addr}\t{:?}\treceiver {}\tcontroller {}\tcalls {} active, {} started\tpackets {}\tpcap drops {}{}",
        status.state,
        status.config.receiver.map_or("-".to_owned(), |r| r.to_string()),
        status.controller.as_deref().unwrap_or("-"),
        c.calls_active,
        c.calls_started,
        c.packets,
        c.pcap.as_ref().map_or(0, |p| p.dropped + p.if_dropped),
        status.last_error.as_deref().map_or(String::new(), |e| format!("\terror {e}")),
    ))
}

fn start(connection: &mut Connection) -> Result<(), LinkError> {
    match connection.ask(&Request::Start)? {
        Reply::Start { .. } => Ok(()),
        other => Err(LinkError::Unexpected(Box::new(other), "start")),
    }
}

/// Counts a running tap down when its session ends, however it ends.
struct Decrement<'a>(&'a Metrics);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.taps_running.fetch_sub(1, Ordering::Relaxed);
    }
}
