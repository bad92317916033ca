//! Call events on a message bus and webhooks, against real servers the tests
//! start themselves on loopback ports in temporary folders: `nats-server -js`
//! (Debian's nats-server), RabbitMQ (Debian's rabbitmq-server) and an HTTP
//! endpoint (axum) that checks the HMAC signature. Calls are real, sent to a
//! real receiver.
//!
//! When nats-server or rabbitmq-server is not installed (`scripts/setup.sh
//! --test` installs both) a test says SKIPPED and why; under CI (`CI` set) it
//! fails instead.

mod common;

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hmac::Mac as _;
use serde_json::Value;
use udp_server::bus::targets::signature;
use udp_server::config::{AmqpSettings, NatsSettings};
use udp_server::Settings;

/// Every wait gives up after this long.
const PATIENCE: Duration = Duration::from_secs(120);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `probe` until it gives a value; panics after [`PATIENCE`].
fn wait_for<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    rst_test_support::wait_for_within(what, PATIENCE, probe)
}

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

// ---------------------------------------------------------------- servers

/// A nats-server with JetStream, its store in a folder that outlives restarts.
struct Nats {
    program: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl Nats {
    fn new() -> Option<Nats> {
        let program = installed(
            "nats-server",
            &["/usr/sbin/nats-server", "/usr/bin/nats-server"],
        )?;
        Some(Nats {
            program,
            port: free_port(),
            store: tempfile::tempdir().unwrap(),
            child: None,
        })
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let child = Command::new(&self.program)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let port = self.port;
        wait_for("nats-server to listen", || listening(port).then_some(()));
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The first `count` messages of the stream `rst`: (subject, Nats-Msg-Id, body).
    fn read(&self, runtime: &tokio::runtime::Runtime, count: u64) -> Vec<(String, String, Value)> {
        let url = self.url();
        runtime.block_on(async move {
            let client = async_nats::connect(url).await.unwrap();
            let context = async_nats::jetstream::new(client);
            let deadline = Instant::now() + PATIENCE;
            let stream = loop {
                if let Ok(mut stream) = context.get_stream("rst").await {
                    if let Ok(info) = stream.info().await {
                        if info.state.messages >= count {
                            break stream;
                        }
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {count} messages on NATS"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let mut messages = Vec::new();
            for sequence in 1..=count {
                let message = stream.get_raw_message(sequence).await.unwrap();
                let id = message
                    .headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .unwrap_or_else(|| panic!("a Nats-Msg-Id header in {message:?}"))
                    .to_string();
                messages.push((
                    message.subject.to_string(),
                    id,
                    serde_json::from_slice(&message.payload).unwrap(),
                ));
            }
            messages
        })
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A RabbitMQ node of its own (name, ports, folders), run as the current
/// user; stopped with rabbitmqctl, its process group killed, its epmd
/// (on a port of its own) told to quit.
struct Rabbit {
    dir: tempfile::TempDir,
    port: u16,
    epmd_port: u16,
    node: String,
    child: Option<Child>,
}

fn rabbit_bin(name: &str) -> PathBuf {
    let own = Path::new("/usr/lib/rabbitmq/bin").join(name);
    if own.exists() {
        own
    } else {
        PathBuf::from(name)
    }
}

impl Rabbit {
    fn new() -> Option<Rabbit> {
        installed(
            "rabbitmq-server",
            &[
                "/usr/lib/rabbitmq/bin/rabbitmq-server",
                "/usr/sbin/rabbitmq-server",
            ],
        )?;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        let port = free_port();
        Some(Rabbit {
            dir,
            port,
            epmd_port: free_port(),
            node: format!("rst-test-{port}@localhost"),
            child: None,
        })
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let dir = self.dir.path();
        let mut command = Command::new(rabbit_bin(program));
        command
            .env("HOME", dir)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", dir.join("plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    fn start(&mut self, runtime: &tokio::runtime::Runtime) {
        use std::os::unix::process::CommandExt as _;
        let child = self
            .command("rabbitmq-server")
            .process_group(0)
            .spawn()
            .expect("rabbitmq-server starts");
        self.child = Some(child);
        let url = self.url();
        wait_for("RabbitMQ to accept AMQP connections", || {
            runtime
                .block_on(amqp_connect(&url))
                .ok()
                .map(|connection| drop(runtime.block_on(connection.close(0, "ready"))))
        });
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = self
            .command("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .status();
        // Whatever is left of the node (its process group): killed.
        // SAFETY: kill with a negative pid signals the process group we made.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
        let _ = Command::new("epmd")
            .args(["-port", &self.epmd_port.to_string(), "-kill"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn amqp_connect(url: &str) -> lapin::Result<lapin::Connection> {
    let properties = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    lapin::Connection::connect(url, properties).await
}

/// Declares the exchange `rst` (as the receiver does) and a durable queue
/// `events` bound to it for every routing key `rst.#`.
fn bind_queue(runtime: &tokio::runtime::Runtime, url: &str) {
    runtime.block_on(async {
        let connection = amqp_connect(url).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let durable = lapin::options::ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                "rst",
                lapin::ExchangeKind::Topic,
                durable,
                Default::default(),
            )
            .await
            .unwrap();
        let durable = lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare("events", durable, Default::default())
            .await
            .unwrap();
        channel
            .queue_bind(
                "events",
                "rst",
                "rst.#",
                Default::default(),
                Default::default(),
            )
            .await
            .unwrap();
        let _ = connection.close(0, "bound").await;
    });
}

/// `count` messages from the queue `events`: (routing key, message_id, body).
fn read_queue(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    count: usize,
) -> Vec<(String, String, Value)> {
    runtime.block_on(async {
        let connection = amqp_connect(url).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let deadline = Instant::now() + PATIENCE;
        let mut messages = Vec::new();
        while messages.len() < count {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {count} AMQP messages, got {}",
                messages.len()
            );
            let options = lapin::options::BasicGetOptions { no_ack: true };
            match channel.basic_get("events", options).await.unwrap() {
                Some(message) => {
                    let properties = &message.delivery.properties;
                    assert_eq!(properties.delivery_mode(), &Some(2), "persistent");
                    messages.push((
                        message.delivery.routing_key.to_string(),
                        properties
                            .message_id()
                            .as_ref()
                            .expect("a message_id")
                            .to_string(),
                        serde_json::from_slice(&message.delivery.data).unwrap(),
                    ));
                }
                None => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        let _ = connection.close(0, "read").await;
        messages
    })
}

/// An HTTP endpoint that verifies each POST's signature and keeps
/// (X-Rst-Event-Id, body); a bad signature is answered 400 and counted.
#[derive(Clone, Default)]
struct Hook {
    received: Arc<Mutex<Vec<(String, Value)>>>,
    bad: Arc<Mutex<u64>>,
}

const SECRET: &str = "webhook-test-secret";

impl Hook {
    /// Serves on 127.0.0.1:`port` (on `runtime`) from now on.
    fn serve(&self, runtime: &tokio::runtime::Runtime, port: u16) {
        let hook = self.clone();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .expect("the webhook port is free");
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: bytes::Bytes| async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    // Verified as a consumer would, with the hmac crate's
                    // constant-time comparison.
                    let given = header("x-rst-signature");
                    let mut mac =
                        <hmac::Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(
                            SECRET.as_bytes(),
                        )
                        .unwrap();
                    mac.update(&body);
                    let valid = given
                        .strip_prefix("sha256=")
                        .and_then(|h| hex::decode(h).ok())
                        .is_some_and(|tag| mac.verify_slice(&tag).is_ok());
                    if !valid || given != signature(SECRET.as_bytes(), &body) {
                        *hook.bad.lock().unwrap() += 1;
                        return axum::http::StatusCode::BAD_REQUEST;
                    }
                    let event: Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(header("x-rst-event"), event["event"].as_str().unwrap());
                    hook.received
                        .lock()
                        .unwrap()
                        .push((header("x-rst-event-id"), event));
                    axum::http::StatusCode::NO_CONTENT
                },
            ),
        );
        runtime.spawn(async move { axum::serve(listener, app).await });
    }

    fn received(&self) -> Vec<(String, Value)> {
        self.received.lock().unwrap().clone()
    }

    /// Waits for `count` distinct events; returns them, first deliveries only, in arrival order.
    fn wait(&self, count: usize) -> Vec<(String, Value)> {
        wait_for(&format!("{count} webhook events"), || {
            let unique = first_deliveries(self.received());
            (unique.len() >= count).then_some(unique)
        })
    }
}

/// At least once: duplicates are possible; keep each id's first delivery.
fn first_deliveries(events: Vec<(String, Value)>) -> Vec<(String, Value)> {
    let mut seen = HashSet::new();
    events
        .into_iter()
        .filter(|(id, _)| seen.insert(id.clone()))
        .collect()
}

fn secret_file(dir: &Path) -> PathBuf {
    let path = dir.join("webhook.secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    path
}

/// Settings with a webhook; one recorder thread, so that the events of calls
/// made one after the other are published in that order.
fn webhook(port: u16, secret: &Path) -> Settings {
    Settings {
        recorder_threads: Some(1),
        webhook_url: Some(format!("http://127.0.0.1:{port}/hook")),
        webhook_secret_file: Some(secret.to_owned()),
        ..Settings::default()
    }
}

/// A call: INV and BYE (call_start, call_end).
fn call(sender: &mut Sender, n: u32) {
    let uuid = uuid(n);
    sender.inv(&uuid, "alice", "bob");
    sender.bye(&uuid);
}

/// (event, uuid) of each event: what the order is checked on.
fn kinds(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_owned(),
                e["uuid"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn expected_kinds(calls: std::ops::Range<u32>) -> Vec<(String, String)> {
    calls
        .flat_map(|n| {
            [
                ("call_start".to_owned(), uuid(n)),
                ("call_end".to_owned(), uuid(n)),
            ]
        })
        .collect()
}

fn bus_metric(receiver: &Receiver, name: &str, target: &str) -> u64 {
    metric(
        &receiver.metrics.render(),
        &format!("{name}{{target=\"{target}\"}}"),
    )
}

// ---------------------------------------------------------------- tests

#[test]
fn events_reach_nats_amqp_and_a_webhook_as_the_feed_sends_them() {
    let (Some(mut nats), Some(mut rabbit)) = (Nats::new(), Rabbit::new()) else {
        return;
    };
    let runtime = runtime();
    nats.start();
    rabbit.start(&runtime);
    bind_queue(&runtime, &rabbit.url());
    let hook = Hook::default();
    let hook_port = free_port();
    hook.serve(&runtime, hook_port);
    let secrets = tempfile::tempdir().unwrap();
    let feed = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut receiver = Receiver::with(Settings {
        feed: Some(feed),
        nats: NatsSettings {
            url: Some(nats.url()),
            ..NatsSettings::default()
        },
        amqp: AmqpSettings {
            url: Some(rabbit.url()),
            ..AmqpSettings::default()
        },
        ..webhook(hook_port, &secret_file(secrets.path()))
    });
    // The feed port opens just after the UDP port.
    let console = wait_for("the feed port", || TcpStream::connect(feed).ok());
    console
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut console = BufReader::new(console);
    let mut sender = Sender::new(receiver.addr);
    call(&mut sender, 1);
    call(&mut sender, 2);
    let feed_lines: Vec<Value> = (0..4)
        .map(|_| {
            let mut line = String::new();
            console.read_line(&mut line).unwrap();
            serde_json::from_str(&line).unwrap()
        })
        .collect();
    assert_eq!(kinds(&feed_lines), expected_kinds(1..3));

    let on_nats = nats.read(&runtime, 4);
    let on_amqp = read_queue(&runtime, &rabbit.url(), 4);
    let on_hook = hook.wait(4);
    for (i, line) in feed_lines.iter().enumerate() {
        let name = line["event"].as_str().unwrap();
        let (subject, nats_id, body) = &on_nats[i];
        assert_eq!(subject, &format!("rst.{name}"));
        assert_eq!(body, line, "the same JSON as the feed");
        let (key, amqp_id, body) = &on_amqp[i];
        assert_eq!(key, &format!("rst.{name}"));
        assert_eq!(body, line);
        let (hook_id, body) = &on_hook[i];
        assert_eq!(body, line);
        // One id per event, the same on every target.
        assert_eq!(nats_id, amqp_id);
        assert_eq!(nats_id, hook_id);
        assert!(uuid::Uuid::parse_str(nats_id).is_ok(), "{nats_id}");
    }
    assert_eq!(*hook.bad.lock().unwrap(), 0, "every signature verified");
    wait_for("the published counters", || {
        (["nats", "amqp", "webhook-1"]
            .iter()
            .all(|t| bus_metric(&receiver, "rst_bus_published_total", t) >= 4))
        .then_some(())
    });
    // The gauge falls once the delivered event is acknowledged, after it is counted.
    wait_for("NATS's empty outbox", || {
        (bus_metric(&receiver, "rst_bus_waiting", "nats") == 0).then_some(())
    });
    assert_eq!(bus_metric(&receiver, "rst_bus_waiting", "nats"), 0);
    receiver.stop();
}

#[test]
fn targets_down_at_first_or_midway_get_every_event_in_order() {
    let (Some(mut nats), Some(mut rabbit)) = (Nats::new(), Rabbit::new()) else {
        return;
    };
    let runtime = runtime();
    // RabbitMQ: the queue is bound first, then the broker goes down.
    rabbit.start(&runtime);
    bind_queue(&runtime, &rabbit.url());
    rabbit.stop();
    let hook = Hook::default();
    let hook_port = free_port();
    let secrets = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::with(Settings {
        nats: NatsSettings {
            url: Some(nats.url()),
            ..NatsSettings::default()
        },
        amqp: AmqpSettings {
            url: Some(rabbit.url()),
            ..AmqpSettings::default()
        },
        ..webhook(hook_port, &secret_file(secrets.path()))
    });
    let mut sender = Sender::new(receiver.addr);
    for n in 0..5 {
        call(&mut sender, n);
    }
    // Nothing is up: the events wait, and the failures show.
    for target in ["nats", "amqp", "webhook-1"] {
        wait_for(&format!("{target}'s backlog"), || {
            (bus_metric(&receiver, "rst_bus_waiting", target) == 10
                && bus_metric(&receiver, "rst_bus_failures_total", target) > 0)
                .then_some(())
        });
    }
    // ...and stay down 30 s: the backlog ages, nothing is lost.
    wait_for("a backlog 30 s old", || {
        let text = receiver.metrics.render();
        ["nats", "amqp", "webhook-1"]
            .iter()
            .all(|target| {
                let line = format!("rst_bus_oldest_waiting_seconds{{target=\"{target}\"}} ");
                text.lines()
                    .find_map(|l| l.strip_prefix(&line))
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|age| age >= 30.0)
            })
            .then_some(())
    });
    nats.start();
    rabbit.start(&runtime);
    hook.serve(&runtime, hook_port);
    let expected = expected_kinds(0..5);
    let values = |messages: &[(String, String, Value)]| {
        messages.iter().map(|m| m.2.clone()).collect::<Vec<_>>()
    };
    assert_eq!(kinds(&values(&nats.read(&runtime, 10))), expected);
    assert_eq!(
        kinds(&values(&read_queue(&runtime, &rabbit.url(), 10))),
        expected
    );
    let events: Vec<Value> = hook.wait(10).into_iter().map(|(_, e)| e).collect();
    assert_eq!(kinds(&events), expected);

    // NATS goes down midway, calls go on, it comes back with its store.
    nats.stop();
    for n in 5..8 {
        call(&mut sender, n);
    }
    wait_for("NATS's new backlog", || {
        (bus_metric(&receiver, "rst_bus_waiting", "nats") == 6).then_some(())
    });
    nats.start();
    let all = nats.read(&runtime, 16);
    assert_eq!(
        kinds(&values(&all)),
        expected_kinds(0..8),
        "none lost, in order"
    );
    let ids: HashSet<_> = all.iter().map(|m| m.1.clone()).collect();
    assert_eq!(ids.len(), 16);
    let events: Vec<Value> = hook.wait(16).into_iter().map(|(_, e)| e).collect();
    assert_eq!(kinds(&events), expected_kinds(0..8));
    assert_eq!(bus_metric(&receiver, "rst_bus_dropped_total", "nats"), 0);
    receiver.stop();
}

#[test]
fn a_restarted_receiver_delivers_what_waited() {
    let runtime = runtime();
    let hook = Hook::default();
    let hook_port = free_port();
    let secrets = tempfile::tempdir().unwrap();
    let settings = webhook(hook_port, &secret_file(secrets.path()));
    let mut receiver = Receiver::with(settings.clone());
    let mut sender = Sender::new(receiver.addr);
    for n in 0..3 {
        call(&mut sender, n);
    }
    wait_for("the backlog", || {
        (bus_metric(&receiver, "rst_bus_waiting", "webhook-1") == 6).then_some(())
    });
    receiver.stop();
    let Receiver { dir, .. } = receiver;
    let outbox = dir.path().join(".outbox/webhook-1");
    assert!(outbox.is_dir(), "the outbox lives under the record folder");

    hook.serve(&runtime, hook_port);
    let mut receiver = Receiver::in_dir(settings, dir);
    let events: Vec<Value> = hook.wait(6).into_iter().map(|(_, e)| e).collect();
    assert_eq!(kinds(&events), expected_kinds(0..3));
    // New events follow the old ones.
    let mut sender = Sender::new(receiver.addr);
    call(&mut sender, 3);
    let events: Vec<Value> = hook.wait(8).into_iter().map(|(_, e)| e).collect();
    assert_eq!(kinds(&events), expected_kinds(0..4));
    receiver.stop();
}

#[test]
fn a_tiny_outbox_drops_the_oldest_and_counts_them() {
    let runtime = runtime();
    let hook = Hook::default();
    let hook_port = free_port();
    let secrets = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::with(Settings {
        outbox_max_bytes: Some(3000),
        ..webhook(hook_port, &secret_file(secrets.path()))
    });
    let mut sender = Sender::new(receiver.addr);
    for n in 0..20 {
        call(&mut sender, n);
    }
    let dropped = wait_for("all 40 events stored or dropped", || {
        let dropped = bus_metric(&receiver, "rst_bus_dropped_total", "webhook-1");
        let waiting = bus_metric(&receiver, "rst_bus_waiting", "webhook-1");
        (dropped + waiting == 40).then_some(dropped)
    });
    assert!(dropped > 0, "a 3000-byte outbox cannot hold 40 events");
    assert!(bus_metric(&receiver, "rst_bus_waiting_bytes", "webhook-1") <= 3000);
    hook.serve(&runtime, hook_port);
    let kept = (40 - dropped) as usize;
    let events: Vec<Value> = hook.wait(kept).into_iter().map(|(_, e)| e).collect();
    // The newest are kept, in order.
    let all = expected_kinds(0..20);
    assert_eq!(kinds(&events), all[all.len() - kept..].to_vec());
    wait_for("an empty outbox", || {
        (bus_metric(&receiver, "rst_bus_waiting", "webhook-1") == 0).then_some(())
    });
    assert_eq!(
        bus_metric(&receiver, "rst_bus_published_total", "webhook-1") as usize,
        hook.received().len()
    );
    receiver.stop();
}
