//! The tap's control plane: a discovery responder (UDP) and a control server
//! (TCP, JSON lines), speaking [`rst_control`]'s messages.
//!
//! Enabled by a `secret` in the configuration file; without one the daemon
//! captures at once, as configured, and says in its log that control is off.
//! With one, nothing is captured or sent until a client says `start`, and
//! calls go only to the receiver a client named: the file's `receiver` is
//! not used.
//!
//! Decisions, as the design leaves them open:
//!
//! * **One controlling client.** The first connection to authenticate
//!   controls the tap. Another one that authenticates while it is connected
//!   is an observer: `status` and `close` work, `config`, `start` and `stop`
//!   are refused with code `busy` naming the controller. When the controller
//!   leaves, the next `hello` (from anyone, an observer included) takes
//!   control.
//! * **A dropped control connection** (closed, reset, or silent for
//!   `control-idle-timeout`) only frees the control: the capture goes on with
//!   the last configuration, so a recording never stops because an
//!   operator's laptop lost its network. `close` does the same; `stop` stops.
//! * **Wrong secrets** are answered `auth`, logged with the address, and the
//!   connection is closed. Each further failure from the same address
//!   doubles the wait before its next `hello` is looked at ([`Backoff`]:
//!   250 ms, 500 ms, … up to 10 s; forgotten after 10 quiet minutes).
//! * **Bounds**: 8 connections at once (more are answered
//!   `too_many_connections` and closed); a line is at most 16 KiB; a
//!   connection that has not said `hello` within 10 s, or then says nothing
//!   for `control-idle-timeout` (default 60 s; `status` is the heartbeat),
//!   is closed; 8 bad lines in a row close it too.

mod backoff;
pub mod session;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rst_control::control::{
    ConfigChange, Counters, ErrorCode, Failure, Mode, PlaneCounters, Reply, Request, Response,
    Role, State, Status, TapConfig,
};
use rst_control::discovery::{Reply as Here, Request as Who};
use rst_control::line::LineBuffer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

pub use backoff::Backoff;
use session::{Ended, Session, Update};

use crate::capture::RunConfig;
use crate::config::Settings;

/// Everything the control plane needs, from the daemon's settings.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub secret: String,
    pub name: String,
    /// Stable across restarts (see [`stable_id`]).
    pub id: String,
    /// Where discovery requests are heard; `None`: no discovery.
    pub discovery: Option<SocketAddr>,
    /// The control server's address.
    pub control: SocketAddr,
    /// What a client may capture on (empty: a capture file, or anything).
    pub interfaces: Vec<String>,
    /// Whether `interfaces` is the whole choice (an interface configured).
    pub interfaces_fixed: bool,
    pub hello_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// The daemon's settings: the base of every capture a client starts.
    pub base: Settings,
}

/// Default discovery and control addresses.
pub const DISCOVERY_LISTEN: SocketAddr = SocketAddr::new(
    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    rst_control::DISCOVERY_PORT,
);
pub const CONTROL_LISTEN: SocketAddr = SocketAddr::new(
    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    rst_control::CONTROL_PORT,
);

impl ControlConfig {
    /// The control plane these settings ask for; `None` without a secret.
    pub fn from_settings(settings: &Settings) -> Option<ControlConfig> {
        let secret = settings.secret.clone().filter(|s| !s.is_empty())?;
        let name = settings.name.clone().unwrap_or_else(hostname);
        let control = settings.control_listen.unwrap_or(CONTROL_LISTEN);
        let (interfaces, fixed) = match (&settings.interface, &settings.pcap) {
            (Some(interface), _) => (vec![interface.clone()], true),
            (None, Some(_)) => (Vec::new(), true),
            (None, None) => (capture_devices(), false),
        };
        Some(ControlConfig {
            secret,
            id: stable_id(&name, control.port()),
            name,
            discovery: Some(settings.discovery_listen.unwrap_or(DISCOVERY_LISTEN)),
            control,
            interfaces,
            interfaces_fixed: fixed,
            hello_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(settings.control_idle_timeout.unwrap_or(60).max(1)),
            max_connections: 8,
            base: settings.clone(),
        })
    }

    /// The configuration a client starts from: the file's filters, no receiver.
    fn initial(&self) -> TapConfig {
        TapConfig {
            interface: self.base.interface.clone(),
            filter: self.base.filter.clone(),
            networks: self.base.networks.clone(),
            numbers: self.base.numbers.clone(),
            skip_numbers: self.base.skip_numbers.clone(),
            receiver: None,
            receivers: Vec::new(),
            mode: Mode::Rtp,
        }
    }

    /// The capture `tap` describes, checked (patterns, source).
    fn run_config(&self, tap: &TapConfig) -> Result<RunConfig, Failure> {
        let mut s = self.base.clone();
        s.receiver = tap.receiver;
        s.receivers = tap.receivers.clone();
        s.filter = tap.filter.clone();
        s.networks = tap.networks.clone();
        s.numbers = tap.numbers.clone();
        s.skip_numbers = tap.skip_numbers.clone();
        if let Some(interface) = &tap.interface {
            s.interface = Some(interface.clone());
            s.pcap = None;
        }
        if s.interface.is_none() && s.pcap.is_none() {
            return Err(Failure::new(
                ErrorCode::State,
                format!(
                    "no interface chosen: send a config with one of {:?}",
                    self.interfaces
                ),
            ));
        }
        s.resolve()
            .map_err(|e| Failure::new(ErrorCode::InvalidConfig, e.to_string()))
    }
}

/// The machine's host name: a tap's name unless `name` gives one.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tap".to_owned())
}

/// 16 hex digits from the machine's id, the tap's name and its control
/// port: the same after a restart, different for two taps on one machine.
pub fn stable_id(name: &str, port: u16) -> String {
    let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let mut hash = sha1_smol::Sha1::new();
    hash.update(machine.trim().as_bytes());
    hash.update(b"\0");
    hash.update(name.as_bytes());
    hash.update(&port.to_be_bytes());
    hash.digest().to_string()[..16].to_owned()
}

/// Interfaces libpcap can open, less its pseudo-devices.
fn capture_devices() -> Vec<String> {
    pcap::Device::list()
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.name)
        .filter(|n| !matches!(n.as_str(), "any" | "nflog" | "nfqueue") && !n.starts_with("dbus"))
        .collect()
}

/// The sockets, bound (so a test knows the ports before serving).
#[derive(Debug)]
pub struct Bound {
    pub discovery: Option<std::net::UdpSocket>,
    pub control: std::net::TcpListener,
}

/// Binds the discovery and control sockets.
pub fn bind(config: &ControlConfig) -> std::io::Result<Bound> {
    let discovery = match config.discovery {
        Some(addr) => {
            let socket = std::net::UdpSocket::bind(addr)?;
            socket.set_nonblocking(true)?;
            Some(socket)
        }
        None => None,
    };
    let control = std::net::TcpListener::bind(config.control)?;
    control.set_nonblocking(true)?;
    Ok(Bound { discovery, control })
}

/// Serves discovery and control until `shutdown` is set, then stops the
/// capture (every call ends with a BYE).
pub fn serve(bound: Bound, config: ControlConfig, shutdown: &AtomicBool) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut config = config;
    // Port 0 (tests) becomes the port bound, which discovery announces.
    config.control = bound.control.local_addr()?;
    runtime.block_on(async {
        let (stop_tx, stop_rx) = watch::channel(false);
        let tap = Arc::new(Tap {
            inner: Mutex::new(Inner {
                tap: config.initial(),
                session: None,
                state: State::Stopped,
                last_error: None,
                last_counters: Counters::default(),
                controller: None,
                clients: 0,
                plane: PlaneCounters::default(),
                backoff: Backoff::default(),
            }),
            config,
            connections: AtomicUsize::new(0),
            next_connection: AtomicU64::new(1),
        });
        let listener = TcpListener::from_std(bound.control)?;
        tracing::info!(
            control = %listener.local_addr()?,
            discovery = ?bound.discovery.as_ref().and_then(|s| s.local_addr().ok()),
            name = tap.config.name,
            id = tap.config.id,
            "control plane listening"
        );
        if let Some(socket) = bound.discovery {
            let socket = UdpSocket::from_std(socket)?;
            tokio::spawn(discovery_responder(socket, tap.clone(), stop_rx.clone()));
        }
        tokio::spawn(accept(listener, tap.clone(), stop_rx.clone()));
        while !shutdown.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = stop_tx.send(true);
        let session = tap.lock().session.take();
        if let Some(session) = session {
            tracing::info!("shutting down: stopping the capture");
            let _ = tokio::task::spawn_blocking(move || session.stop()).await;
        }
        Ok(())
    })
}

#[derive(Debug)]
struct Tap {
    config: ControlConfig,
    inner: Mutex<Inner>,
    connections: AtomicUsize,
    next_connection: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    tap: TapConfig,
    session: Option<Session>,
    /// The state when no session runs.
    state: State,
    last_error: Option<String>,
    /// The counters of the last capture, once it ended.
    last_counters: Counters,
    /// The controlling connection: its number and address.
    controller: Option<(u64, SocketAddr)>,
    clients: u32,
    plane: PlaneCounters,
    backoff: Backoff,
}

impl Tap {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// A session that ended by itself (file read, failure) becomes a state.
    fn reap(&mut self) {
        if !self.session.as_ref().is_some_and(Session::is_finished) {
            return;
        }
        if let Some(session) = self.session.take() {
            let (ended, counters) = session.stop();
            self.end(ended, counters);
        }
    }

    fn end(&mut self, ended: Ended, counters: Counters) {
        self.last_counters = counters;
        self.state = match ended {
            Ended::Stopped => State::Stopped,
            Ended::Finished => State::Finished,
            Ended::Failed(error) => {
                tracing::warn!(error, "capture failed");
                self.last_error = Some(error);
                State::Failed
            }
        };
    }

    fn status(&mut self) -> Status {
        self.reap();
        let (state, counters) = match &self.session {
            Some(session) => (State::Running, session.counters()),
            None => (self.state, self.last_counters.clone()),
        };
        Status {
            state,
            config: self.tap.clone(),
            counters,
            plane: self.plane.clone(),
            controller: self.controller.map(|(_, addr)| addr.to_string()),
            clients: self.clients,
            last_error: self.last_error.clone(),
        }
    }
}

// ------------------------------------------------------------- discovery

async fn discovery_responder(socket: UdpSocket, tap: Arc<Tap>, mut stop: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let (len, from) = tokio::select! {
            _ = stop.changed() => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                // ICMP errors from earlier replies and the like.
                Err(_) => continue,
            },
        };
        let request = match Who::decode(&buf[..len]) {
            Ok(request) => request,
            Err(error) => {
                tap.lock().plane.discovery_ignored += 1;
                tracing::debug!(%from, %error, "discovery: ignored a datagram");
                continue;
            }
        };
        tap.lock().plane.discovery_requests += 1;
        let reply = Here {
            version: rst_control::VERSION,
            nonce: request.nonce,
            name: tap.config.name.clone(),
            id: tap.config.id.clone(),
            software: env!("CARGO_PKG_VERSION").to_owned(),
            control_port: socket_port(&tap),
            interfaces: tap.config.interfaces.clone(),
        };
        if let Err(error) = socket.send_to(&reply.encode(), from).await {
            tracing::debug!(%from, %error, "discovery: reply not sent");
        } else {
            tracing::debug!(%from, "discovery: answered");
        }
    }
}

/// The control port announced: the configured one (a test binds port 0 and
/// sets `control` to what it got).
fn socket_port(tap: &Tap) -> u16 {
    tap.config.control.port()
}

// --------------------------------------------------------------- control

async fn accept(listener: TcpListener, tap: Arc<Tap>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // EMFILE and the like: wait rather than spin.
                    tracing::warn!(%error, "control: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let tap = tap.clone();
        let count = tap.connections.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::spawn(async move {
            if count > tap.config.max_connections {
                tap.lock().plane.connections_dropped += 1;
                tracing::warn!(%peer, "control: too many connections; refused");
                let failure = Failure::new(ErrorCode::TooManyConnections, "too many connections");
                let mut stream = stream;
                let line = Response::Err(failure).encode() + "\n";
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), stream.write_all(line.as_bytes()))
                        .await;
            } else {
                Connection::new(tap.clone(), peer).run(stream).await;
            }
            tap.connections.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Bad lines in a row that close a connection.
const MAX_BAD_LINES: u32 = 8;

struct Connection {
    tap: Arc<Tap>,
    peer: SocketAddr,
    number: u64,
    role: Option<Role>,
    bad_lines: u32,
}

/// What to do after answering.
enum After {
    Continue,
    Close,
}

impl Connection {
    fn new(tap: Arc<Tap>, peer: SocketAddr) -> Connection {
        let number = tap.next_connection.fetch_add(1, Ordering::Relaxed);
        Connection {
            tap,
            peer,
            number,
            role: None,
            bad_lines: 0,
        }
    }

    async fn run(mut self, mut stream: TcpStream) {
        tracing::debug!(peer = %self.peer, "control: connection");
        let mut lines = LineBuffer::default();
        let mut buf = vec![0u8; 4096];
        let mut parsed = Vec::new();
        'connection: loop {
            let wait = match self.role {
                None => self.tap.config.hello_timeout,
                Some(_) => self.tap.config.idle_timeout,
            };
            let read = match tokio::time::timeout(wait, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => n,
                Err(_) => {
                    self.tap.lock().plane.connections_dropped += 1;
                    tracing::info!(peer = %self.peer, seconds = wait.as_secs(), "control: idle connection closed");
                    let failure = Failure::new(
                        ErrorCode::Timeout,
                        format!("nothing received for {} s; closing", wait.as_secs()),
                    );
                    let _ = self.send(&mut stream, Response::Err(failure)).await;
                    break;
                }
            };
            lines.push(&buf[..read], &mut parsed);
            for line in parsed.drain(..) {
                let (response, after) = match line {
                    Ok(line) if line.trim().is_empty() => continue,
                    Ok(line) => match Request::decode(&line) {
                        Ok(request) => {
                            self.bad_lines = 0;
                            self.handle(request).await
                        }
                        Err(error) => self.bad(error.failure()),
                    },
                    Err(error) => {
                        self.bad(rst_control::control::MessageError::from(error).failure())
                    }
                };
                if !self.send(&mut stream, response).await {
                    break 'connection;
                }
                if let After::Close = after {
                    break 'connection;
                }
            }
        }
        self.leave();
    }

    fn bad(&mut self, failure: Failure) -> (Response, After) {
        self.bad_lines += 1;
        self.tap.lock().plane.bad_requests += 1;
        tracing::debug!(peer = %self.peer, error = failure.error, "control: bad request");
        if self.bad_lines >= MAX_BAD_LINES {
            let failure = Failure::new(
                failure.code,
                format!("{}; too many bad requests, closing", failure.error),
            );
            return (Response::Err(failure), After::Close);
        }
        (Response::Err(failure), After::Continue)
    }

    /// Writes one response line; false if the client is gone or not reading.
    async fn send(&self, stream: &mut TcpStream, response: Response) -> bool {
        let line = response.encode() + "\n";
        let write = stream.write_all(line.as_bytes());
        matches!(
            tokio::time::timeout(self.tap.config.idle_timeout, write).await,
            Ok(Ok(()))
        )
    }

    fn leave(&mut self) {
        let Some(role) = self.role.take() else {
            return;
        };
        let mut inner = self.tap.lock();
        inner.clients = inner.clients.saturating_sub(1);
        if role == Role::Control && inner.controller.map(|(n, _)| n) == Some(self.number) {
            inner.controller = None;
            if inner.session.is_some() {
                tracing::info!(
                    peer = %self.peer,
                    "control: the controlling client left; the capture goes on with the last config"
                );
            } else {
                tracing::info!(peer = %self.peer, "control: the controlling client left");
            }
        }
    }

    async fn handle(&mut self, request: Request) -> (Response, After) {
        let (result, after) = match request {
            Request::Hello {
                version, secret, client,
            } => {
                let (result, after) = self.hello(version, secret.0.as_bytes(), client).await;
                (result, after)
            }
            _ if self.role.is_none() => (
                Err(Failure::new(
                    ErrorCode::NotAuthenticated,
                    "say hello with the secret first: {\"cmd\":\"hello\",\"version\":1,\"secret\":\"...\"}",
                )),
                After::Continue,
            ),
            Request::Status => (
                Ok(Reply::Status(Box::new(self.tap.lock().status()))),
                After::Continue,
            ),
            Request::Close => (Ok(Reply::Close {}), After::Close),
            Request::Config(change) => (self.config(change), After::Continue),
            Request::Start => (self.start().await, After::Continue),
            Request::Stop => (self.stop().await, After::Continue),
        };
        (Response::from(result), after)
    }

    async fn hello(
        &mut self,
        version: u32,
        secret: &[u8],
        client: Option<String>,
    ) -> (Result<Reply, Failure>, After) {
        if version == 0 {
            let failure = Failure::new(
                ErrorCode::Version,
                format!(
                    "version 0 is not spoken here; this tap speaks {}",
                    rst_control::VERSION
                ),
            );
            return (Err(failure), After::Close);
        }
        let delay = self
            .tap
            .lock()
            .backoff
            .delay(self.peer.ip(), Instant::now());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if !rst_control::secret::matches(self.tap.config.secret.as_bytes(), secret) {
            let failures = {
                let mut inner = self.tap.lock();
                inner.plane.auth_failures += 1;
                inner.backoff.failed(self.peer.ip(), Instant::now())
            };
            tracing::warn!(peer = %self.peer, failures, "control: wrong secret refused");
            return (
                Err(Failure::new(ErrorCode::Auth, "wrong secret")),
                After::Close,
            );
        }
        let mut inner = self.tap.lock();
        inner.backoff.succeeded(self.peer.ip());
        if self.role.is_none() {
            inner.clients += 1;
        }
        let role = match inner.controller {
            None => {
                inner.controller = Some((self.number, self.peer));
                Role::Control
            }
            Some((n, _)) if n == self.number => Role::Control,
            Some(_) => Role::Observer,
        };
        self.role = Some(role);
        tracing::info!(peer = %self.peer, ?role, client = client.as_deref().unwrap_or("?"), "control: client authenticated");
        (
            Ok(Reply::Hello {
                version: rst_control::VERSION,
                name: self.tap.config.name.clone(),
                id: self.tap.config.id.clone(),
                role,
            }),
            After::Continue,
        )
    }

    /// Refuses observers.
    fn must_control(&self, inner: &Inner) -> Result<(), Failure> {
        if self.role == Some(Role::Control) {
            return Ok(());
        }
        let who = inner
            .controller
            .map(|(_, addr)| addr.to_string())
            .unwrap_or_else(|| "nobody".into());
        let message = match inner.controller {
            Some(_) => format!(
                "another client ({who}) controls this tap; this connection may only ask for status"
            ),
            None => "the control is free: say hello again to take it".to_owned(),
        };
        Err(Failure::new(ErrorCode::Busy, message))
    }

    fn config(&mut self, change: ConfigChange) -> Result<Reply, Failure> {
        let mut inner = self.tap.lock();
        self.must_control(&inner)?;
        inner.reap();
        let next = inner.tap.with(&change);
        let config = &self.tap.config;
        if next.mode == Mode::Data {
            return Err(Failure::new(
                ErrorCode::InvalidConfig,
                "mode \"data\" is not supported by this tap (it forwards RTP unchanged); use \"rtp\"",
            ));
        }
        if let Some(interface) = &change.interface {
            if config.interfaces_fixed && !config.interfaces.contains(interface) {
                return Err(Failure::new(
                    ErrorCode::InvalidConfig,
                    format!(
                        "no interface {interface:?} on this tap; it captures on {:?}",
                        config.interfaces
                    ),
                ));
            }
            if inner.session.is_some() && Some(interface) != inner.tap.interface.as_ref() {
                return Err(Failure::new(
                    ErrorCode::State,
                    "the interface cannot change while running: stop first",
                ));
            }
        }
        if let Some(filter) = &next.filter {
            check_bpf(filter)?;
        }
        // Patterns and the rest, as a capture would be resolved; the source
        // may still be missing (chosen later).
        let run = match config.run_config(&next) {
            Ok(run) => Some(run),
            Err(f) if f.code == ErrorCode::State => None,
            Err(f) => return Err(f),
        };
        if let (Some(session), Some(run)) = (&inner.session, &run) {
            session.update(Update::Filter(run.pipeline.filter.clone()));
            let changed =
                next.receiver != inner.tap.receiver || next.receivers != inner.tap.receivers;
            if changed && (next.receiver.is_some() || !next.receivers.is_empty()) {
                session.update(Update::Receiver(
                    run.output.receiver,
                    run.output.pool.clone(),
                ));
            }
            if next.filter != inner.tap.filter {
                session.update(Update::Bpf(next.filter.clone()));
            }
        }
        tracing::info!(peer = %self.peer, running = inner.session.is_some(), "control: configured");
        inner.tap = next.clone();
        Ok(Reply::Config { config: next })
    }

    async fn start(&mut self) -> Result<Reply, Failure> {
        let run = {
            let mut inner = self.tap.lock();
            self.must_control(&inner)?;
            inner.reap();
            if inner.session.is_some() {
                return Ok(Reply::Start {
                    state: State::Running,
                });
            }
            if inner.tap.receiver.is_none() && inner.tap.receivers.is_empty() {
                return Err(Failure::new(
                    ErrorCode::State,
                    "no receiver configured: send {\"cmd\":\"config\",\"receiver\":\"ADDR:PORT\"} first",
                ));
            }
            self.tap.config.run_config(&inner.tap)?
        };
        let started = tokio::task::spawn_blocking(move || Session::start(run))
            .await
            .map_err(|e| Failure::new(ErrorCode::Internal, e.to_string()))?;
        let session = started.map_err(|e| {
            let mut inner = self.tap.lock();
            inner.state = State::Failed;
            inner.last_error = Some(e.to_string());
            Failure::new(ErrorCode::Capture, e.to_string())
        })?;
        let mut inner = self.tap.lock();
        inner.session = Some(session);
        inner.last_error = None;
        tracing::info!(peer = %self.peer, "control: capture started");
        Ok(Reply::Start {
            state: State::Running,
        })
    }

    async fn stop(&mut self) -> Result<Reply, Failure> {
        let session = {
            let mut inner = self.tap.lock();
            self.must_control(&inner)?;
            inner.session.take()
        };
        if let Some(session) = session {
            let (ended, counters) = tokio::task::spawn_blocking(move || session.stop())
                .await
                .map_err(|e| Failure::new(ErrorCode::Internal, e.to_string()))?;
            self.tap.lock().end(ended, counters);
            tracing::info!(peer = %self.peer, "control: capture stopped");
        }
        let mut inner = self.tap.lock();
        if inner.state == State::Finished {
            inner.state = State::Stopped;
        }
        Ok(Reply::Stop { state: inner.state })
    }
}

/// Compiles a BPF filter for Ethernet, to refuse a bad one before it is used.
fn check_bpf(filter: &str) -> Result<(), Failure> {
    let dead = pcap::Capture::dead(pcap::Linktype::ETHERNET)
        .map_err(|e| Failure::new(ErrorCode::Internal, e.to_string()))?;
    dead.compile(filter, true).map(|_| ()).map_err(|e| {
        Failure::new(
            ErrorCode::InvalidConfig,
            format!("bad filter {filter:?}: {e}"),
        )
    })
}
