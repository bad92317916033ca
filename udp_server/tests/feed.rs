//! The metadata feed over real TCP sockets on 127.0.0.1: snapshots, live
//! events, a stalled client, garbage, the client limit and shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use udp_server::feed::{Feed, FeedLimits, FeedServer, FeedStats};

/// Every wait in these tests gives up after this long.
const PATIENCE: Duration = Duration::from_secs(20);

struct Server {
    feed: Feed,
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(limits: FeedLimits) -> Server {
        let (feed, server) = Feed::with_limits(limits);
        Server::run(feed, server).await
    }

    async fn run(feed: Feed, server: FeedServer) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(listener, shutdown.clone()));
        Server {
            feed,
            addr,
            shutdown,
            task,
        }
    }

    fn stats(&self) -> &FeedStats {
        self.feed.stats()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the feed server stops")
            .unwrap();
    }
}

/// Polls `condition` until it holds; panics after [`PATIENCE`].
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct Client {
    lines: Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (read, write) = stream.into_split();
        Client {
            lines: BufReader::new(read).lines(),
            write,
        }
    }

    /// The next line, parsed; panics on end of stream or after [`PATIENCE`].
    async fn next(&mut self) -> Value {
        let line = self.next_raw().await.expect("a line, not the end");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
    }

    async fn next_raw(&mut self) -> Option<String> {
        tokio::time::timeout(PATIENCE, self.lines.next_line())
            .await
            .expect("a line in time")
            .expect("no read error")
    }

    /// Asserts the server closes the connection (after lines already sent).
    async fn expect_end(&mut self) {
        assert_eq!(
            self.next_raw().await,
            None,
            "the server closes the connection"
        );
    }
}

fn start(uuid: &str) -> Value {
    json!({"event": "call_start", "uuid": uuid, "caller": "1001", "callee": "1002",
           "sender": "10.0.0.5:40312", "time": "2026-11-23T10:00:00.123Z", "mode": "data"})
}

fn end(uuid: &str) -> Value {
    json!({"event": "call_end", "uuid": uuid, "time": "2026-11-23T10:02:13.456Z", "reason": "bye"})
}

fn dtmf(n: u64) -> Value {
    json!({"event": "dtmf", "n": n})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_client_is_dropped_while_the_other_gets_every_event() {
    const EVENTS: u64 = 100_000;
    const BURST: u64 = 1000;
    let server = Server::start(FeedLimits::default()).await;

    let mut reader = Client::connect(server.addr).await;
    // Connects and never reads; a small receive buffer so it fills soon.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(server.addr).await.unwrap();
    wait_until("both clients are registered", || {
        server.stats().clients.load(Relaxed) == 2
    })
    .await;

    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let reading = tokio::spawn(async move {
        for n in 0..EVENTS {
            let line = reader.next().await;
            assert_eq!(line["n"], n, "events in order, none lost");
            counter.store(n + 1, Relaxed);
        }
        reader
    });

    // Publish from a plain thread, as the recorder does, in bursts of 1000
    // (far more than real calls make) paced by the reading client, the way
    // real events are paced by real calls: the stalled client is never waited
    // for, and fills its queue.
    let feed = server.feed.clone();
    let publisher = std::thread::spawn(move || {
        let pad = "x".repeat(200);
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        for n in 0..EVENTS {
            let event = json!({"event": "dtmf", "n": n, "pad": pad});
            let t = Instant::now();
            feed.publish(event);
            slowest = slowest.max(t.elapsed());
            if n % BURST == BURST - 1 {
                let deadline = Instant::now() + PATIENCE;
                while received.load(Relaxed) + BURST <= n {
                    assert!(Instant::now() < deadline, "the reader stopped at {n}");
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
        (started.elapsed(), slowest)
    });
    let (total, slowest) = tokio::task::spawn_blocking(move || publisher.join().unwrap())
        .await
        .unwrap();
    assert!(
        total < Duration::from_secs(60),
        "publishing {EVENTS} events took {total:?}"
    );
    assert!(
        slowest < Duration::from_millis(500),
        "one publish call took {slowest:?}"
    );

    let mut reader = tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .expect("the reading client gets everything in time")
        .unwrap();
    wait_until("the stalled client is dropped", || {
        server.stats().dropped_slow.load(Relaxed) == 1
    })
    .await;
    // Counted dropped just before it is no longer counted connected.
    wait_until("the dropped client is unregistered", || {
        server.stats().clients.load(Relaxed) <= 1
    })
    .await;
    assert_eq!(server.stats().clients.load(Relaxed), 1);
    assert_eq!(server.stats().clients_total.load(Relaxed), 2);
    assert_eq!(server.stats().events.load(Relaxed), EVENTS);

    // The dropped client's connection is closed, not left hanging: after what
    // was already in its buffers it reads the end (or a reset).
    let mut sink = vec![0u8; 1 << 16];
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match stalled.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stalled client's socket is closed");

    // The reader is still served.
    server.feed.publish(dtmf(EVENTS));
    assert_eq!(reader.next().await["n"], EVENTS);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_client_gets_the_calls_in_progress_then_live_events() {
    let server = Server::start(FeedLimits::default()).await;
    let feed = &server.feed;
    feed.call_started("a", start("a"));
    feed.call_started("b", start("b"));
    feed.call_started("c", start("c"));
    feed.call_ended("b", end("b"));
    wait_until("the hub has the four events", || {
        server.stats().events.load(Relaxed) == 4
    })
    .await;

    let mut client = Client::connect(server.addr).await;
    assert_eq!(client.next().await, start("a"));
    assert_eq!(client.next().await, start("c"));
    wait_until("the client is registered", || {
        server.stats().clients.load(Relaxed) == 1
    })
    .await;
    feed.publish(dtmf(1));
    feed.call_ended("a", end("a"));
    feed.call_started("d", start("d"));
    assert_eq!(client.next().await, dtmf(1));
    assert_eq!(client.next().await, end("a"));
    assert_eq!(client.next().await, start("d"));

    // A second late client sees the state now: c and d.
    let mut second = Client::connect(server.addr).await;
    assert_eq!(second.next().await, start("c"));
    assert_eq!(second.next().await, start("d"));
    wait_until("the second client is registered", || {
        server.stats().clients.load(Relaxed) == 2
    })
    .await;
    feed.publish(dtmf(2));
    assert_eq!(second.next().await, dtmf(2));
    assert_eq!(client.next().await, dtmf(2));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_are_compact_json_terminated_by_newline() {
    let server = Server::start(FeedLimits::default()).await;
    let client = TcpStream::connect(server.addr).await.unwrap();
    wait_until("the client is registered", || {
        server.stats().clients.load(Relaxed) == 1
    })
    .await;
    server
        .feed
        .publish(json!({"event": "dtmf", "uuid": "u1", "digit": "5"}));
    let mut reader = BufReader::new(client);
    let mut line = String::new();
    tokio::time::timeout(PATIENCE, reader.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    // Key order is serde_json's, so compare parsed.
    assert!(line.ends_with("}\n"), "{line:?}");
    assert!(
        !line.contains(' ') && line.matches('\n').count() == 1,
        "{line:?}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&line).unwrap(),
        json!({"event": "dtmf", "uuid": "u1", "digit": "5"})
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_before_the_server_runs_shape_the_snapshot() {
    let (feed, server) = Feed::new();
    feed.call_started("early", start("early"));
    feed.publish(dtmf(0));
    let server = Server::run(feed, server).await;
    let mut client = Client::connect(server.addr).await;
    assert_eq!(client.next().await, start("early"));
    wait_until("the client is registered", || {
        server.stats().clients.load(Relaxed) == 1
    })
    .await;
    server.feed.publish(dtmf(1));
    assert_eq!(
        client.next().await,
        dtmf(1),
        "dtmf 0 was before it connected"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_client_gets_the_snapshot_again() {
    let server = Server::start(FeedLimits::default()).await;
    server.feed.call_started("a", start("a"));

    let mut client = Client::connect(server.addr).await;
    assert_eq!(client.next().await, start("a"));
    drop(client);
    wait_until("the disconnect is noticed", || {
        server.stats().clients.load(Relaxed) == 0
    })
    .await;
    // Counted disconnected just after it is no longer counted connected.
    wait_until("the disconnect is counted", || {
        server.stats().disconnected.load(Relaxed) >= 1
    })
    .await;
    assert_eq!(server.stats().disconnected.load(Relaxed), 1);

    server.feed.call_started("b", start("b"));
    let mut client = Client::connect(server.addr).await;
    assert_eq!(client.next().await, start("a"));
    assert_eq!(client.next().await, start("b"));
    wait_until("the client is registered again", || {
        server.stats().clients.load(Relaxed) == 1
    })
    .await;
    server.feed.call_ended("a", end("a"));
    assert_eq!(client.next().await, end("a"));
    assert_eq!(server.stats().clients_total.load(Relaxed), 2);
    assert_eq!(server.stats().dropped_slow.load(Relaxed), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_client_does_no_harm() {
    const EVENTS: u64 = 2000;
    let server = Server::start(FeedLimits::default()).await;
    let Client {
        mut lines,
        mut write,
    } = Client::connect(server.addr).await;
    wait_until("the client is registered", || {
        server.stats().clients.load(Relaxed) == 1
    })
    .await;

    // 4 MiB of junk: JSON-looking lines, bare newlines, invalid UTF-8, NULs.
    let garbage = tokio::spawn(async move {
        let mut junk = Vec::new();
        junk.extend_from_slice(b"{\"event\":\"call_start\",\"uuid\":\"evil\"}\n\n\r\n");
        junk.extend_from_slice(&[0xff, 0xfe, 0x00, 0xc3, 0x28, b'\n']);
        junk.extend((0..4096u32).map(|i| (i * 7919 % 251) as u8));
        for _ in 0..(4 << 20) / junk.len() {
            write.write_all(&junk).await.unwrap();
        }
        write
    });
    for n in 0..EVENTS {
        server.feed.publish(dtmf(n));
    }
    for n in 0..EVENTS {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), dtmf(n));
    }
    let _write = tokio::time::timeout(PATIENCE, garbage)
        .await
        .expect("the server reads everything the client sends")
        .unwrap();
    assert_eq!(server.stats().clients.load(Relaxed), 1);
    // What the client sent was not taken for an event.
    let mut late = Client::connect(server.addr).await;
    wait_until("the late client is registered", || {
        server.stats().clients.load(Relaxed) == 2
    })
    .await;
    server.feed.publish(dtmf(EVENTS));
    assert_eq!(late.next().await, dtmf(EVENTS), "no snapshot of `evil`");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_beyond_the_limit_are_refused() {
    let server = Server::start(FeedLimits {
        max_clients: 2,
        ..FeedLimits::default()
    })
    .await;
    let mut first = Client::connect(server.addr).await;
    let mut second = Client::connect(server.addr).await;
    wait_until("two clients are registered", || {
        server.stats().clients.load(Relaxed) == 2
    })
    .await;

    let mut third = Client::connect(server.addr).await;
    assert_eq!(
        third.next().await,
        json!({"error": "too many clients", "max_clients": 2})
    );
    third.expect_end().await;
    assert_eq!(server.stats().refused.load(Relaxed), 1);
    assert_eq!(server.stats().clients.load(Relaxed), 2);

    server.feed.publish(dtmf(1));
    assert_eq!(first.next().await, dtmf(1));
    assert_eq!(second.next().await, dtmf(1));

    // A place freed is a place taken.
    drop(first);
    wait_until("the first client's leaving is noticed", || {
        server.stats().clients.load(Relaxed) == 1
    })
    .await;
    let mut fourth = Client::connect(server.addr).await;
    wait_until("the fourth client is registered", || {
        server.stats().clients.load(Relaxed) == 2
    })
    .await;
    server.feed.publish(dtmf(2));
    assert_eq!(fourth.next().await, dtmf(2));
    assert_eq!(second.next().await, dtmf(2));
    assert_eq!(server.stats().refused.load(Relaxed), 1);
    assert_eq!(server.stats().clients_total.load(Relaxed), 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_sees_the_same_order_from_concurrent_publishers() {
    const CLIENTS: usize = 8;
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 2000;
    let server = Server::start(FeedLimits::default()).await;
    let mut readers = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = Client::connect(server.addr).await;
        readers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..THREADS * PER_THREAD {
                let line = client.next().await;
                seen.push((
                    line["thread"].as_u64().unwrap(),
                    line["n"].as_u64().unwrap(),
                ));
            }
            seen
        }));
    }
    wait_until("every client is registered", || {
        server.stats().clients.load(Relaxed) == CLIENTS as i64
    })
    .await;

    let publishers: Vec<_> = (0..THREADS)
        .map(|thread| {
            let feed = server.feed.clone();
            std::thread::spawn(move || {
                for n in 0..PER_THREAD {
                    feed.publish(json!({"event": "dtmf", "thread": thread, "n": n}));
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.join().unwrap();
    }

    let mut sequences = Vec::new();
    for reader in readers {
        sequences.push(reader.await.unwrap());
    }
    for thread in 0..THREADS {
        let own: Vec<u64> = sequences[0]
            .iter()
            .filter(|(t, _)| *t == thread)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(own, (0..PER_THREAD).collect::<Vec<_>>());
    }
    for other in &sequences[1..] {
        assert!(other == &sequences[0], "every client sees one order");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_what_was_published_and_closes_every_client() {
    let server = Server::start(FeedLimits::default()).await;
    server.feed.call_started("a", start("a"));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = Client::connect(server.addr).await;
        assert_eq!(client.next().await, start("a"));
        clients.push(client);
    }
    wait_until("every client is registered", || {
        server.stats().clients.load(Relaxed) == 3
    })
    .await;
    // A stalled one too: shutdown must not wait for it forever.
    let _stalled = TcpStream::connect(server.addr).await.unwrap();
    wait_until("the stalled client is registered", || {
        server.stats().clients.load(Relaxed) == 4
    })
    .await;

    let feed = server.feed.clone();
    let stats = feed.stats().clone();
    for n in 0..10 {
        feed.publish(dtmf(n));
    }
    feed.call_ended("a", end("a"));
    // Not forever: the stalled client is given up on, however busy the machine.
    tokio::time::timeout(Duration::from_secs(60), server.stop())
        .await
        .expect("shutdown waited for the stalled client");
    for client in &mut clients {
        for n in 0..10 {
            assert_eq!(client.next().await, dtmf(n));
        }
        assert_eq!(client.next().await, end("a"));
        client.expect_end().await;
    }
    assert_eq!(stats.clients.load(Relaxed), 0);
    // Publishing after the server is gone is harmless.
    feed.publish(dtmf(99));
}
