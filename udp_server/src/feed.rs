//! The metadata feed: recording consoles (and anything else) connect over TCP
//! and read one compact JSON line per call event.
//!
//! A console that connects first gets a *snapshot* (one `call_start` line per
//! call in progress, in start order), then every event from then on. The
//! pieces, and why they are shaped so:
//!
//! * [`Feed`] is the publishing handle. The recorder thread is a plain thread
//!   that must never wait on a network peer, so publishing is a send on an
//!   unbounded tokio channel: it never blocks and never fails visibly (once the
//!   server is gone the event is simply discarded). It is unbounded rather than
//!   bounded-with-drops because the only reader, the hub, never waits on
//!   anything but that channel: events are turned into lines and pushed into
//!   per-client queues with `try_send`, so the backlog stays as short as the hub
//!   is fast, and dropping an event here would break "no event lost" for every
//!   client at once. [`FeedStats::pending`] shows the backlog.
//! * [`FeedServer::run`] is the *hub*: one task that accepts connections and
//!   handles events, so registrations and events are taken in one order. A new
//!   client's snapshot is taken at the moment the hub registers it, and every
//!   event handled after that goes into its queue: nothing is lost or doubled
//!   between snapshot and live stream.
//! * Each client has its own bounded queue ([`FeedLimits::queue_lines`]) and its
//!   own task that writes the queue to the socket and reads (and ignores)
//!   whatever the client sends, so the client's unread bytes never pile up. A
//!   client whose queue is full is not reading: the hub drops it at once (and
//!   cancels its task, which may be stuck writing to a stalled socket), so one
//!   stuck console never slows the publishers or the other consoles.
//! * The snapshot bookkeeping (`Snapshot`) is sans-IO and unit-tested without
//!   sockets; the hub's own steps never wait (queue pushes are `try_send`).
//!
//! The feed never parses what it sends: the caller gives the complete JSON
//! object of each line.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Clients served at once unless [`FeedLimits`] says otherwise.
pub const DEFAULT_MAX_CLIENTS: usize = 256;
/// Lines queued per client unless [`FeedLimits`] says otherwise. Large enough
/// for the biggest realistic burst, the `call_end` of every call when the
/// receiver stops (`max-calls` is 10000 by default), on top of what the
/// kernel's socket buffers hold; a client this far behind is not reading.
/// Entries point to lines shared by all clients (about 24 bytes each), so a
/// full queue costs some 400 KiB, and only while its client lags.
pub const DEFAULT_QUEUE_LINES: usize = 16384;

/// Events the hub takes from the channel per wake-up: bounds the time between
/// two looks at the listener and at departing clients.
const HUB_BATCH: usize = 256;
/// Queue entries a client's writer joins into one `write` call.
const WRITE_BATCH: usize = 64;
/// At shutdown, how long clients get to be sent what is already queued for
/// them before their sockets are closed regardless.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// How long a refused connection gets to be sent its error line.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// TCP keepalive idle time, so a console that vanished without a FIN (cable
/// pulled, host crashed) is noticed even when no events flow.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// After an accept error (out of file descriptors, say), wait this long before
/// accepting again instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Limits of a feed server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedLimits {
    /// Clients served at once; more are sent a one-line JSON error and closed.
    pub max_clients: usize,
    /// Lines (queue entries; a snapshot is one entry) queued per client before
    /// the client is dropped as too slow.
    pub queue_lines: usize,
}

impl Default for FeedLimits {
    fn default() -> FeedLimits {
        FeedLimits {
            max_clients: DEFAULT_MAX_CLIENTS,
            queue_lines: DEFAULT_QUEUE_LINES,
        }
    }
}

/// Counters of the feed. Relaxed atomics: statistics, not synchronisation.
#[derive(Debug, Default)]
pub struct FeedStats {
    /// Clients connected now (a gauge).
    pub clients: AtomicI64,
    /// Clients ever accepted (refused ones not included).
    pub clients_total: AtomicU64,
    /// Connections refused because `max_clients` were connected.
    pub refused: AtomicU64,
    /// Clients dropped because their queue was full (they stopped reading).
    pub dropped_slow: AtomicU64,
    /// Clients that went away by themselves (closed, reset, write error).
    pub disconnected: AtomicU64,
    /// Events handed to [`Feed`] while a server was there to take them.
    pub published: AtomicU64,
    /// Events the hub has handled (turned into lines and queued).
    pub events: AtomicU64,
    /// Lines completely written to client sockets (snapshot lines included).
    pub lines_sent: AtomicU64,
}

impl FeedStats {
    /// Events published but not yet handled by the hub (its backlog).
    pub fn pending(&self) -> u64 {
        self.published
            .load(Relaxed)
            .saturating_sub(self.events.load(Relaxed))
    }

    /// Appends the counters in the Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let counters = [
            (
                "rst_feed_clients_total",
                "Feed clients accepted",
                self.clients_total.load(Relaxed),
            ),
            (
                "rst_feed_refused_total",
                "Feed connections refused at max clients",
                self.refused.load(Relaxed),
            ),
            (
                "rst_feed_dropped_slow_total",
                "Feed clients dropped for not reading",
                self.dropped_slow.load(Relaxed),
            ),
            (
                "rst_feed_disconnected_total",
                "Feed clients that disconnected",
                self.disconnected.load(Relaxed),
            ),
            (
                "rst_feed_events_total",
                "Events handled by the feed",
                self.events.load(Relaxed),
            ),
            (
                "rst_feed_lines_sent_total",
                "Lines written to feed clients",
                self.lines_sent.load(Relaxed),
            ),
        ];
        let _ = writeln!(
            out,
            "# HELP rst_feed_clients Feed clients connected\n# TYPE rst_feed_clients gauge\nrst_feed_clients {}",
            self.clients.load(Relaxed)
        );
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
    }
}

/// What a [`Feed`] hands to the hub.
#[derive(Debug)]
enum Event {
    Start {
        uuid: String,
        event: serde_json::Value,
    },
    End {
        uuid: String,
        event: serde_json::Value,
    },
    Other(serde_json::Value),
}

/// The publishing handle of the metadata feed.
///
/// Cheap to clone, `Send + Sync`, and callable from any thread, tokio or not:
/// every method is one non-blocking channel send. If the [`FeedServer`] is
/// dropped (or never run and dropped), publishing does nothing, so a receiver
/// without a feed can still hold a `Feed`.
#[derive(Clone)]
pub struct Feed {
    events: mpsc::UnboundedSender<Event>,
    stats: Arc<FeedStats>,
    /// Where every event also goes: the message bus and webhooks, if any.
    bus: Option<crate::bus::Sink>,
}

impl fmt::Debug for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed")
            .field("closed", &self.events.is_closed())
            .finish_non_exhaustive()
    }
}

impl Feed {
    /// A feed with the default limits, and the server to run for it.
    pub fn new() -> (Feed, FeedServer) {
        Feed::with_limits(FeedLimits::default())
    }

    /// A feed with `limits`, and the server to run for it.
    pub fn with_limits(limits: FeedLimits) -> (Feed, FeedServer) {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(FeedStats::default());
        let feed = Feed {
            events: events_tx,
            stats: stats.clone(),
            bus: None,
        };
        let server = FeedServer {
            events: events_rx,
            stats,
            limits: FeedLimits {
                max_clients: limits.max_clients,
                queue_lines: limits.queue_lines.max(1),
            },
        };
        (feed, server)
    }

    /// A call began. `event` is the complete line, e.g.
    /// `{"event":"call_start","uuid":..,"caller":..,"callee":..,"sender":..,"time":..,"mode":"data"}`.
    /// It is sent to every client and kept in the snapshot until
    /// [`call_ended`](Feed::call_ended) for the same `uuid`. A second start for
    /// a uuid in progress replaces the first in the snapshot.
    pub fn call_started(&self, uuid: &str, event: serde_json::Value) {
        self.send(Event::Start {
            uuid: uuid.to_owned(),
            event,
        });
    }

    /// A call ended: `event` (the complete `call_end` line) is sent to every
    /// client and `uuid` leaves the snapshot.
    pub fn call_ended(&self, uuid: &str, event: serde_json::Value) {
        self.send(Event::End {
            uuid: uuid.to_owned(),
            event,
        });
    }

    /// Any other event (`dtmf`, say): sent to every client, not kept.
    pub fn publish(&self, event: serde_json::Value) {
        self.send(Event::Other(event));
    }

    /// The feed's counters, shared with its server.
    pub fn stats(&self) -> &Arc<FeedStats> {
        &self.stats
    }

    /// This feed, also handing every event to `bus` (a non-blocking send
    /// too), whether or not a feed server runs. Call it before cloning.
    pub fn with_bus(mut self, bus: crate::bus::Sink) -> Feed {
        self.bus = Some(bus);
        self
    }

    fn send(&self, event: Event) {
        if let Some(bus) = &self.bus {
            let (Event::Start { event, .. } | Event::End { event, .. } | Event::Other(event)) =
                &event;
            bus.send(event);
        }
        // Count before sending, so `pending` never goes below zero in between.
        self.stats.published.fetch_add(1, Relaxed);
        if self.events.send(event).is_err() {
            // No server: nobody to tell.
            self.stats.published.fetch_sub(1, Relaxed);
        }
    }
}

/// The serving half of the feed: run it on a listener with [`FeedServer::run`].
pub struct FeedServer {
    events: mpsc::UnboundedReceiver<Event>,
    stats: Arc<FeedStats>,
    limits: FeedLimits,
}

impl fmt::Debug for FeedServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedServer")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl FeedServer {
    /// The feed's counters.
    pub fn stats(&self) -> &Arc<FeedStats> {
        &self.stats
    }

    /// Serves the feed on `listener` until `shutdown` is cancelled; then sends
    /// every event already published, gives clients a second to receive what
    /// is queued for them, closes every connection and returns.
    ///
    /// Events published after `shutdown` is cancelled are not sent: to let
    /// consoles see the `call_end` of the calls the receiver ends as it stops,
    /// cancel this token after the recorder has finished.
    ///
    /// Events published before `run` starts are not lost: they wait in the
    /// channel and shape the first clients' snapshot.
    pub async fn run(self, listener: TcpListener, shutdown: CancellationToken) {
        let FeedServer {
            events: mut events_rx,
            stats,
            limits,
        } = self;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "serving the metadata feed");
        }
        let tracker = TaskTracker::new();
        // Parent of every client's kick token: cancelled only when the grace
        // period at shutdown has run out.
        let force_close = CancellationToken::new();
        let (gone_tx, mut gone_rx) = mpsc::unbounded_channel::<Gone>();
        let mut hub = Hub::new(limits, stats.clone());
        let mut batch = Vec::with_capacity(HUB_BATCH);
        let mut publishers_open = true;

        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                n = events_rx.recv_many(&mut batch, HUB_BATCH), if publishers_open => {
                    if n == 0 {
                        // Every Feed is gone; keep serving snapshots until shutdown.
                        publishers_open = false;
                        tracing::debug!("every feed publisher is gone");
                    }
                    for event in batch.drain(..) {
                        hub.event(event);
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, addr)) => {
                        // Take in what was published before this connection
                        // came, so its snapshot is as fresh as can be (a
                        // bounded drain: order is right either way).
                        for _ in 0..HUB_BATCH * 4 {
                            match events_rx.try_recv() {
                                Ok(event) => hub.event(event),
                                Err(_) => break,
                            }
                        }
                        hub.connect(stream, addr, &tracker, &force_close, &gone_tx);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "feed: cannot accept a connection");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                },
                Some(gone) = gone_rx.recv() => hub.gone(gone),
            }
        }

        // Shutdown: what was published up to now still goes out.
        while let Ok(event) = events_rx.try_recv() {
            hub.event(event);
        }
        drop(listener);
        let clients = hub.close_all();
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            tracing::info!("feed: closing clients that did not take their last lines in time");
            force_close.cancel();
            tracker.wait().await;
        }
        tracing::info!(clients, "metadata feed stopped");
    }
}

/// One queue entry: complete lines, shared by every client they go to.
#[derive(Debug, Clone)]
struct Chunk {
    bytes: Arc<[u8]>,
    lines: u64,
}

/// Serialises `value` as one compact JSON line.
fn line(value: &serde_json::Value) -> Arc<[u8]> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    bytes.push(b'\n');
    bytes.into()
}

/// The calls in progress, in start order, with the line each started with.
/// Sans-IO: the hub feeds it events and asks it for a new client's snapshot.
#[derive(Debug, Default)]
struct Snapshot {
    next: u64,
    /// Start sequence number → the call's `call_start` line.
    lines: BTreeMap<u64, Arc<[u8]>>,
    /// uuid → its start sequence number.
    index: HashMap<String, u64>,
}

impl Snapshot {
    fn start(&mut self, uuid: String, line: Arc<[u8]>) {
        let seq = self.next;
        self.next += 1;
        if let Some(old) = self.index.insert(uuid, seq) {
            self.lines.remove(&old);
        }
        self.lines.insert(seq, line);
    }

    fn end(&mut self, uuid: &str) {
        if let Some(seq) = self.index.remove(uuid) {
            self.lines.remove(&seq);
        }
    }

    fn len(&self) -> usize {
        self.lines.len()
    }

    /// Every in-progress call's line, in start order, as one queue entry (so
    /// a snapshot of thousands of calls fits in any client's queue).
    fn chunk(&self) -> Option<Chunk> {
        if self.lines.is_empty() {
            return None;
        }
        let size = self.lines.values().map(|l| l.len()).sum();
        let mut bytes = Vec::with_capacity(size);
        for line in self.lines.values() {
            bytes.extend_from_slice(line);
        }
        Some(Chunk {
            bytes: bytes.into(),
            lines: self.lines.len() as u64,
        })
    }
}

/// The hub's view of one client.
#[derive(Debug)]
struct Client {
    addr: SocketAddr,
    queue: mpsc::Sender<Chunk>,
    /// Cancels the client's task, wherever it is waiting.
    kick: CancellationToken,
}

/// Why a client's task ended, as it tells the hub.
#[derive(Debug)]
enum Ended {
    /// The hub cancelled it (too slow, or shutdown ran out of time).
    Kicked,
    /// The client closed its side or the connection broke.
    Disconnected(Option<io::Error>),
    /// Its queue was closed by the hub (shutdown) and everything was written.
    Finished,
}

#[derive(Debug)]
struct Gone {
    id: u64,
    ended: Ended,
}

/// The hub's state: the snapshot and the clients. Only the hub task touches
/// it, which is what makes snapshot and live stream consistent.
#[derive(Debug)]
struct Hub {
    limits: FeedLimits,
    stats: Arc<FeedStats>,
    snapshot: Snapshot,
    clients: HashMap<u64, Client>,
    next_id: u64,
}

impl Hub {
    fn new(limits: FeedLimits, stats: Arc<FeedStats>) -> Hub {
        Hub {
            limits,
            stats,
            snapshot: Snapshot::default(),
            clients: HashMap::new(),
            next_id: 0,
        }
    }

    /// Turns `event` into a line, updates the snapshot and queues the line
    /// for every client; a client whose queue is full is dropped.
    fn event(&mut self, event: Event) {
        let bytes = match event {
            Event::Start { uuid, event } => {
                let bytes = line(&event);
                self.snapshot.start(uuid, bytes.clone());
                bytes
            }
            Event::End { uuid, event } => {
                self.snapshot.end(&uuid);
                line(&event)
            }
            Event::Other(event) => line(&event),
        };
        self.stats.events.fetch_add(1, Relaxed);
        let chunk = Chunk { bytes, lines: 1 };
        let stats = &self.stats;
        let queue_lines = self.limits.queue_lines;
        self.clients
            .retain(|_, client| match client.queue.try_send(chunk.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    client.kick.cancel();
                    stats.dropped_slow.fetch_add(1, Relaxed);
                    stats.clients.fetch_sub(1, Relaxed);
                    tracing::info!(
                        addr = %client.addr,
                        queued = queue_lines,
                        "feed client dropped: it stopped reading"
                    );
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    // Its task has ended; its `Gone` is on the way and will
                    // find it removed.
                    stats.disconnected.fetch_add(1, Relaxed);
                    stats.clients.fetch_sub(1, Relaxed);
                    tracing::info!(addr = %client.addr, "feed client disconnected");
                    false
                }
            });
    }

    /// A new connection: refused if the feed is full, otherwise sent the
    /// snapshot and registered for every later event.
    fn connect(
        &mut self,
        stream: TcpStream,
        addr: SocketAddr,
        tracker: &TaskTracker,
        force_close: &CancellationToken,
        gone: &mpsc::UnboundedSender<Gone>,
    ) {
        if self.clients.len() >= self.limits.max_clients {
            self.stats.refused.fetch_add(1, Relaxed);
            tracing::info!(%addr, max_clients = self.limits.max_clients, "feed client refused: too many clients");
            let message = serde_json::json!({
                "error": "too many clients",
                "max_clients": self.limits.max_clients,
            });
            tracker.spawn(refuse(stream, line(&message)));
            return;
        }
        configure(&stream);
        let (queue, queue_rx) = mpsc::channel(self.limits.queue_lines);
        if let Some(chunk) = self.snapshot.chunk() {
            // The queue is empty and at least one entry long.
            let _ = queue.try_send(chunk);
        }
        let id = self.next_id;
        self.next_id += 1;
        let kick = force_close.child_token();
        tracker.spawn(serve_client(
            id,
            stream,
            queue_rx,
            kick.clone(),
            self.stats.clone(),
            gone.clone(),
        ));
        self.clients.insert(id, Client { addr, queue, kick });
        self.stats.clients.fetch_add(1, Relaxed);
        self.stats.clients_total.fetch_add(1, Relaxed);
        tracing::info!(%addr, calls = self.snapshot.len(), "feed client connected");
    }

    /// A client's task ended by itself.
    fn gone(&mut self, gone: Gone) {
        // Not there: the hub had already dropped it.
        let Some(client) = self.clients.remove(&gone.id) else {
            return;
        };
        self.stats.clients.fetch_sub(1, Relaxed);
        self.stats.disconnected.fetch_add(1, Relaxed);
        match gone.ended {
            Ended::Disconnected(Some(error)) => {
                tracing::info!(addr = %client.addr, %error, "feed client disconnected")
            }
            _ => tracing::info!(addr = %client.addr, "feed client disconnected"),
        }
    }

    /// Shutdown: closes every client's queue, so its task writes what is
    /// queued and closes the connection. Returns how many there were.
    fn close_all(&mut self) -> usize {
        let n = self.clients.len();
        self.stats.clients.fetch_sub(n as i64, Relaxed);
        self.clients.clear();
        n
    }
}

/// Socket options for a client: no Nagle delay (lines are small and wanted
/// now; the writer batches them anyway) and keepalive, so a vanished console
/// is noticed on an idle feed.
fn configure(stream: &TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "feed: cannot set TCP_NODELAY");
    }
    let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
    #[cfg(target_os = "linux")]
    let keepalive = keepalive
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(%error, "feed: cannot set TCP keepalive");
    }
}

/// Sends a refused connection its error line and closes it, within
/// [`REFUSAL_TIMEOUT`]. It reads what the client sent until it closes, so the
/// close is not a reset that could destroy the error line in flight.
async fn refuse(mut stream: TcpStream, message: Arc<[u8]>) {
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        stream.write_all(&message).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

/// One client's task: writes its queue to the socket and reads (and ignores)
/// what the client sends, until the client goes, the hub kicks it or the
/// queue is closed and drained; then tells the hub.
async fn serve_client(
    id: u64,
    mut stream: TcpStream,
    mut queue: mpsc::Receiver<Chunk>,
    kick: CancellationToken,
    stats: Arc<FeedStats>,
    gone: mpsc::UnboundedSender<Gone>,
) {
    let (mut reader, mut writer) = stream.split();
    let ended = tokio::select! {
        () = kick.cancelled() => Ended::Kicked,
        error = discard(&mut reader) => Ended::Disconnected(error),
        written = write_queue(&mut writer, &mut queue, &stats) => match written {
            Ok(()) => Ended::Finished,
            Err(error) => Ended::Disconnected(Some(error)),
        },
    };
    tracing::debug!(id, ?ended, "feed client task ended");
    let _ = gone.send(Gone { id, ended });
}

/// Reads and throws away what the client sends. Returns when it closes its
/// side (end of stream counts as leaving: a console that is done closes the
/// connection) or the connection fails.
async fn discard(reader: &mut ReadHalf<'_>) -> Option<io::Error> {
    let mut sink = vec![0u8; 4096];
    loop {
        match reader.read(&mut sink).await {
            Ok(0) => return None,
            Ok(_) => {}
            Err(error) => return Some(error),
        }
    }
}

/// Writes queued lines, several entries per `write` when they have piled up,
/// until the hub closes the queue; then closes the sending side.
async fn write_queue(
    writer: &mut WriteHalf<'_>,
    queue: &mut mpsc::Receiver<Chunk>,
    stats: &FeedStats,
) -> io::Result<()> {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut buffer = Vec::new();
    loop {
        if queue.recv_many(&mut batch, WRITE_BATCH).await == 0 {
            writer.shutdown().await?;
            return Ok(());
        }
        let lines: u64 = batch.iter().map(|c| c.lines).sum();
        if let [one] = batch.as_slice() {
            writer.write_all(&one.bytes).await?;
        } else {
            buffer.clear();
            for chunk in &batch {
                buffer.extend_from_slice(&chunk.bytes);
            }
            writer.write_all(&buffer).await?;
        }
        batch.clear();
        stats.lines_sent.fetch_add(lines, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(chunk: Option<Chunk>) -> String {
        chunk
            .map(|c| String::from_utf8(c.bytes.to_vec()).unwrap())
            .unwrap_or_default()
    }

    #[test]
    fn snapshot_keeps_calls_in_progress_in_start_order() {
        let mut snapshot = Snapshot::default();
        assert!(snapshot.chunk().is_none());
        snapshot.start("a".into(), line(&serde_json::json!({"uuid": "a"})));
        snapshot.start("b".into(), line(&serde_json::json!({"uuid": "b"})));
        snapshot.start("c".into(), line(&serde_json::json!({"uuid": "c"})));
        snapshot.end("b");
        snapshot.end("unknown");
        assert_eq!(snapshot.len(), 2);
        let chunk = snapshot.chunk().unwrap();
        assert_eq!(chunk.lines, 2);
        assert_eq!(text(Some(chunk)), "{\"uuid\":\"a\"}\n{\"uuid\":\"c\"}\n");
    }

    #[test]
    fn a_repeated_start_replaces_the_first() {
        let mut snapshot = Snapshot::default();
        snapshot.start("a".into(), line(&serde_json::json!({"n": 1})));
        snapshot.start("b".into(), line(&serde_json::json!({"n": 2})));
        snapshot.start("a".into(), line(&serde_json::json!({"n": 3})));
        assert_eq!(text(snapshot.chunk()), "{\"n\":2}\n{\"n\":3}\n");
        snapshot.end("a");
        snapshot.end("b");
        assert!(snapshot.chunk().is_none());
        assert!(snapshot.index.is_empty());
    }

    #[test]
    fn lines_are_compact_and_newline_terminated() {
        // Key order is serde_json's (sorted, unless its `preserve_order`
        // feature is on): compare with its own compact form.
        let value = serde_json::json!({"event": "dtmf", "digit": "5", "n": [1, 2]});
        let expected = format!("{}\n", serde_json::to_string(&value).unwrap());
        assert_eq!(&*line(&value), expected.as_bytes());
        assert!(!expected.contains(' '));
        assert_eq!(expected.matches('\n').count(), 1);
    }

    #[test]
    fn publishing_without_a_server_is_a_no_op() {
        let (feed, server) = Feed::new();
        drop(server);
        feed.publish(serde_json::json!({"event": "dtmf"}));
        feed.call_started("a", serde_json::json!({}));
        assert_eq!(feed.stats().published.load(Relaxed), 0);
    }

    #[test]
    fn prometheus_text_has_every_counter() {
        let stats = FeedStats::default();
        stats.clients.store(3, Relaxed);
        let mut out = String::new();
        stats.render_prometheus(&mut out);
        assert!(out.contains("rst_feed_clients 3\n"));
        assert!(out.contains("rst_feed_dropped_slow_total 0\n"));
    }
}
