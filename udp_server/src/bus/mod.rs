//! Call events on a message bus and webhooks: every event the metadata feed
//! carries is also published, as the same JSON, to NATS (JetStream), AMQP
//! 0-9-1 (RabbitMQ) and HTTP webhooks, any of them or none.
//!
//! The pieces:
//! * [`Sink`] is what the [`Feed`](crate::feed::Feed) hands each event to: an
//!   unbounded channel send, so the recorder threads never wait.
//! * The *writer*, a plain thread, gives each event its id (a UUID v4, kept
//!   with it from then on: the consumers' key for de-duplication) and appends
//!   it to every target's [`Outbox`] on disk.
//! * One task per target takes the oldest waiting event, delivers it, and only
//!   then moves the outbox's cursor: at least once, in order. A failure is
//!   retried after 1 s, doubling to 30 s, for as long as it takes; meanwhile
//!   events wait on disk (the outbox drops its oldest when full).
//! * [`targets`] are thin shells around the clients (`async-nats`, `lapin`,
//!   `reqwest`): connect, publish one event, wait for its acknowledgement.
//!
//! At shutdown the writer stores every event already published; the targets
//! get [`SHUTDOWN_GRACE`] to deliver what waits, the rest is delivered by the
//! next run.

pub mod outbox;
pub mod targets;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rst_control::control::Secret;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use self::outbox::{Outbox, OutboxError, Stored};
use self::targets::Client;

/// The default outbox size of each target: 256 MiB.
pub const DEFAULT_OUTBOX_MAX_BYTES: u64 = 256 << 20;
/// The default NATS subject prefix and AMQP routing key prefix.
pub const DEFAULT_PREFIX: &str = "rst";
/// The default JetStream stream, created when missing (subjects `PREFIX.>`).
pub const DEFAULT_STREAM: &str = "rst";
/// The default AMQP exchange (a durable topic exchange, declared).
pub const DEFAULT_EXCHANGE: &str = "rst";
/// First pause after a failed delivery; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// At shutdown, how long the targets get to deliver what waits.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The bus targets, resolved from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct BusConfig {
    pub nats: Option<NatsTarget>,
    pub amqp: Option<AmqpTarget>,
    pub webhooks: Vec<WebhookTarget>,
    /// Each target's outbox holds at most this many bytes.
    pub outbox_max_bytes: u64,
}

impl Default for BusConfig {
    fn default() -> BusConfig {
        BusConfig {
            nats: None,
            amqp: None,
            webhooks: Vec::new(),
            outbox_max_bytes: DEFAULT_OUTBOX_MAX_BYTES,
        }
    }
}

impl BusConfig {
    fn is_empty(&self) -> bool {
        self.nats.is_none() && self.amqp.is_none() && self.webhooks.is_empty()
    }
}

/// NATS with JetStream: subject `PREFIX.EVENT`, header `Nats-Msg-Id`.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsTarget {
    /// `nats://HOST:PORT` (credentials in it stay out of the logs).
    pub url: Secret,
    pub subject_prefix: String,
    /// The JetStream stream, created (subjects `PREFIX.>`) when missing.
    pub stream: String,
    pub credentials_file: Option<PathBuf>,
}

/// AMQP 0-9-1: a durable topic exchange, routing key `PREFIX.EVENT`.
#[derive(Debug, Clone, PartialEq)]
pub struct AmqpTarget {
    /// `amqp://USER:PASS@HOST:PORT/VHOST`.
    pub url: Secret,
    pub exchange: String,
    pub routing_prefix: String,
}

/// An HTTP endpoint: POST of each event, signed.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookTarget {
    /// The target's name: its outbox's folder and its metrics' label.
    pub name: String,
    pub url: Secret,
    /// The HMAC-SHA256 key of `X-Rst-Signature`.
    pub secret: Secret,
}

/// `url` without the user and password it may hold, for logs.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let path = path.split(['?', '#']).next().unwrap_or("");
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

/// The name of an event (`call_start`, ...), made safe for a subject or a
/// routing key: anything but letters, digits, `_` and `-` becomes `_`.
pub fn event_name(event: &serde_json::Value) -> String {
    let name = event
        .get("event")
        .and_then(|e| e.as_str())
        .unwrap_or("event");
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "event".to_owned()
    } else {
        name
    }
}

/// Counters of one target. Relaxed atomics: statistics.
#[derive(Debug, Default)]
pub struct TargetStats {
    /// Events delivered (acknowledged by the target).
    pub published: AtomicU64,
    /// Events waiting in the outbox, and their bytes (gauges).
    pub waiting: AtomicU64,
    pub waiting_bytes: AtomicU64,
    /// Oldest events dropped because the outbox was full.
    pub dropped: AtomicU64,
    /// Failed delivery attempts (connection errors, refusals, time-outs).
    pub failures: AtomicU64,
    /// When the event at the head entered the outbox (Unix ms); 0: none.
    pub oldest_at_ms: AtomicU64,
}

/// The counters of every target, rendered with the receiver's metrics.
#[derive(Debug, Default)]
pub struct BusStats {
    targets: Mutex<Vec<(String, Arc<TargetStats>)>>,
}

impl BusStats {
    /// The counters of `target`, made if new.
    pub fn target(&self, target: &str) -> Arc<TargetStats> {
        let mut targets = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, stats)) = targets.iter().find(|(name, _)| name == target) {
            return stats.clone();
        }
        let stats = Arc::new(TargetStats::default());
        targets.push((target.to_owned(), stats.clone()));
        stats
    }

    /// Appends the counters in the Prometheus text format (nothing when no
    /// target is configured).
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let targets = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        if targets.is_empty() {
            return;
        }
        let now = now_ms();
        type Read = fn(&TargetStats, u64) -> String;
        let families: [(&str, &str, &str, Read); 6] = [
            (
                "rst_bus_published_total",
                "counter",
                "Events delivered to a bus or webhook target",
                |s, _| s.published.load(Relaxed).to_string(),
            ),
            (
                "rst_bus_waiting",
                "gauge",
                "Events waiting in a target's outbox",
                |s, _| s.waiting.load(Relaxed).to_string(),
            ),
            (
                "rst_bus_waiting_bytes",
                "gauge",
                "Bytes waiting in a target's outbox",
                |s, _| s.waiting_bytes.load(Relaxed).to_string(),
            ),
            (
                "rst_bus_dropped_total",
                "counter",
                "Oldest events dropped from a full outbox",
                |s, _| s.dropped.load(Relaxed).to_string(),
            ),
            (
                "rst_bus_failures_total",
                "counter",
                "Failed delivery attempts to a target",
                |s, _| s.failures.load(Relaxed).to_string(),
            ),
            (
                "rst_bus_oldest_waiting_seconds",
                "gauge",
                "Age of the oldest event waiting for a target",
                |s, now| match s.oldest_at_ms.load(Relaxed) {
                    0 => "0".to_owned(),
                    at => format!("{:.3}", now.saturating_sub(at) as f64 / 1000.0),
                },
            ),
        ];
        for (name, kind, help, read) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (target, stats) in targets.iter() {
                let _ = writeln!(out, "{name}{{target=\"{target}\"}} {}", read(stats, now));
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug)]
enum Message {
    Event(serde_json::Value),
    Stop,
}

/// Where the feed hands events for the bus: a non-blocking send.
#[derive(Debug, Clone)]
pub struct Sink(mpsc::UnboundedSender<Message>);

impl Sink {
    /// Queues `event` for every target; never waits, never fails visibly.
    pub fn send(&self, event: &serde_json::Value) {
        let _ = self.0.send(Message::Event(event.clone()));
    }
}

/// Why the bus cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("cannot start the bus writer thread: {0}")]
    Thread(std::io::Error),
    #[error("{0}")]
    Target(#[from] targets::DeliverError),
}

/// One target at work: its outbox, shared by the writer and its task.
#[derive(Debug)]
struct Shared {
    name: String,
    outbox: Mutex<Outbox>,
    stats: Arc<TargetStats>,
    wake: Notify,
}

impl Shared {
    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn gauges(&self, outbox: &Outbox) {
        self.stats.waiting.store(outbox.waiting(), Relaxed);
        self.stats
            .waiting_bytes
            .store(outbox.waiting_bytes(), Relaxed);
    }
}

/// The running bus: the writer thread and one task per target.
#[derive(Debug)]
pub struct Bus {
    sink: Sink,
    writer: Option<std::thread::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    drain: CancellationToken,
    stop: CancellationToken,
}

impl Bus {
    /// Opens every target's outbox under `record_dir/.outbox/` and starts
    /// delivering (what an earlier run left first). `None` without targets.
    pub fn start(
        config: &BusConfig,
        record_dir: &Path,
        stats: &BusStats,
    ) -> Result<Option<Bus>, BusError> {
        if config.is_empty() {
            return Ok(None);
        }
        let mut clients = Vec::new();
        if let Some(nats) = &config.nats {
            clients.push(("nats".to_owned(), Client::nats(nats)));
        }
        if let Some(amqp) = &config.amqp {
            clients.push(("amqp".to_owned(), Client::amqp(amqp)));
        }
        for webhook in &config.webhooks {
            clients.push((webhook.name.clone(), Client::webhook(webhook)?));
        }
        let (drain, stop) = (CancellationToken::new(), CancellationToken::new());
        let mut shared = Vec::new();
        let mut tasks = Vec::new();
        for (name, client) in clients {
            let outbox = Outbox::open(
                &record_dir.join(".outbox").join(&name),
                config.outbox_max_bytes,
            )?;
            let target = Arc::new(Shared {
                stats: stats.target(&name),
                name,
                outbox: Mutex::new(outbox),
                wake: Notify::new(),
            });
            {
                let outbox = target.outbox();
                target.gauges(&outbox);
                if outbox.waiting() > 0 {
                    tracing::info!(target = %target.name, waiting = outbox.waiting(), "bus: events left by an earlier run wait for delivery");
                }
            }
            tracing::info!(target = %target.name, to = %client.describe(), "publishing call events");
            tasks.push(tokio::spawn(deliver(
                target.clone(),
                client,
                drain.clone(),
                stop.clone(),
            )));
            shared.push(target);
        }
        let (sender, events) = mpsc::unbounded_channel();
        let writer = std::thread::Builder::new()
            .name("rst-bus-writer".into())
            .spawn(move || write(events, &shared))
            .map_err(BusError::Thread)?;
        Ok(Some(Bus {
            sink: Sink(sender),
            writer: Some(writer),
            tasks,
            drain,
            stop,
        }))
    }

    /// Where events go in.
    pub fn sink(&self) -> Sink {
        self.sink.clone()
    }

    /// Stores every event sent so far, gives the targets [`SHUTDOWN_GRACE`]
    /// to deliver what waits, and stops.
    pub async fn stop(mut self) {
        let _ = self.sink.0.send(Message::Stop);
        if let Some(writer) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        self.drain.cancel();
        let tasks = std::mem::take(&mut self.tasks);
        let mut all = futures_util::future::join_all(tasks);
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut all)
            .await
            .is_err()
        {
            tracing::info!("bus: events still waiting stay in the outbox for the next run");
            self.stop.cancel();
            all.await;
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        // Stopped without `stop` (an error ended the receiver): the writer
        // and the tasks must not outlive it.
        let _ = self.sink.0.send(Message::Stop);
        self.stop.cancel();
    }
}

/// The writer thread: ids the events and appends them to every outbox.
fn write(mut events: mpsc::UnboundedReceiver<Message>, targets: &[Arc<Shared>]) {
    while let Some(Message::Event(event)) = events.blocking_recv() {
        let stored = Stored {
            id: uuid::Uuid::new_v4().to_string(),
            at: now_ms(),
            event,
        };
        for target in targets {
            let mut outbox = target.outbox();
            match outbox.push(&stored) {
                Ok(pushed) if pushed.dropped > 0 => {
                    target.stats.dropped.fetch_add(pushed.dropped, Relaxed);
                    tracing::warn!(target = %target.name, dropped = pushed.dropped, waiting = outbox.waiting(), "bus: outbox full, the oldest events were dropped");
                }
                Ok(_) => {}
                Err(error) => {
                    target.stats.dropped.fetch_add(1, Relaxed);
                    tracing::warn!(target = %target.name, %error, id = %stored.id, "bus: cannot store an event; it is dropped");
                }
            }
            target.gauges(&outbox);
            drop(outbox);
            target.wake.notify_one();
        }
    }
}

/// One target's task: delivers the outbox's head, in order, retrying with
/// backoff; ends once `drain` is cancelled and nothing waits, or at `stop`.
async fn deliver(
    target: Arc<Shared>,
    mut client: Client,
    drain: CancellationToken,
    stop: CancellationToken,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut failing = false;
    loop {
        let head = {
            let mut outbox = target.outbox();
            let head = outbox.peek();
            target.gauges(&outbox);
            head
        };
        let entry = match head {
            Ok(Some(entry)) => entry,
            Ok(None) => {
                target.stats.oldest_at_ms.store(0, Relaxed);
                if drain.is_cancelled() {
                    return;
                }
                tokio::select! {
                    () = target.wake.notified() => {}
                    () = drain.cancelled() => {}
                    () = stop.cancelled() => return,
                }
                continue;
            }
            Err(error) => {
                tracing::warn!(target = %target.name, %error, "bus: cannot read the outbox");
                tokio::select! {
                    () = tokio::time::sleep(MAX_BACKOFF) => continue,
                    () = stop.cancelled() => return,
                }
            }
        };
        target
            .stats
            .oldest_at_ms
            .store(entry.stored.at.max(1), Relaxed);
        let delivered = tokio::select! {
            delivered = client.deliver(&entry.stored) => delivered,
            () = stop.cancelled() => return,
        };
        match delivered {
            Ok(()) => {
                target.stats.published.fetch_add(1, Relaxed);
                if failing {
                    tracing::info!(target = %target.name, "bus: target reachable again");
                    failing = false;
                }
                backoff = FIRST_BACKOFF;
                let mut outbox = target.outbox();
                if let Err(error) = outbox.ack(&entry) {
                    tracing::warn!(target = %target.name, %error, "bus: cannot move the outbox cursor; the event may be sent again");
                }
                target.gauges(&outbox);
            }
            Err(error) => {
                target.stats.failures.fetch_add(1, Relaxed);
                if failing {
                    tracing::debug!(target = %target.name, %error, retry_in = ?backoff, "bus: delivery failed");
                } else {
                    tracing::warn!(target = %target.name, %error, retry_in = ?backoff, "bus: delivery failed; events wait in the outbox");
                    failing = true;
                }
                client.reset();
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials_in_logs() {
        assert_eq!(
            redact_url("amqp://user:pa@ss@mq.example.com:5672/vhost?x=1"),
            "amqp://mq.example.com:5672/vhost"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redact_url("https://hooks.example.com/in?token=s3cret"),
            "https://hooks.example.com/in"
        );
    }

    #[test]
    fn event_names_are_safe_subject_tokens() {
        assert_eq!(
            event_name(&serde_json::json!({"event": "call_end"})),
            "call_end"
        );
        assert_eq!(
            event_name(&serde_json::json!({"event": "a.b *>"})),
            "a_b___"
        );
        assert_eq!(event_name(&serde_json::json!({"uuid": "x"})), "event");
        assert_eq!(event_name(&serde_json::json!({"event": ""})), "event");
    }

    #[test]
    fn prometheus_text_has_a_row_per_target() {
        let stats = BusStats::default();
        let mut out = String::new();
        stats.render_prometheus(&mut out);
        assert!(out.is_empty());
        stats.target("nats").dropped.store(4, Relaxed);
        stats.target("webhook-1").published.store(2, Relaxed);
        stats.target("nats").failures.store(1, Relaxed);
        stats.render_prometheus(&mut out);
        assert!(
            out.contains("rst_bus_dropped_total{target=\"nats\"} 4\n"),
            "{out}"
        );
        assert!(out.contains("rst_bus_failures_total{target=\"nats\"} 1\n"));
        assert!(out.contains("rst_bus_published_total{target=\"webhook-1\"} 2\n"));
        assert!(out.contains("rst_bus_oldest_waiting_seconds{target=\"nats\"} 0\n"));
    }
}
