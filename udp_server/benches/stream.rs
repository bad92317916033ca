//! Live streaming: what it adds, in one run.
//!
//! ```text
//! cargo bench -p udp_server --bench stream
//! ```
//!
//! The real udp_server binary takes CALLS calls, each sending a 20 ms PCMU
//! frame per direction every 20 ms for SECONDS (real time), twice:
//!
//! 1. recorded only: the baseline CPU time of the receiver;
//! 2. recorded and streamed: `--stream-url` to a WebSocket consumer in this
//!    process (tokio-tungstenite), `twilio` format, both tracks, one connection
//!    per call. Each frame's payload carries its call, frame and direction
//!    numbers (PCMU bytes go through untouched), so the consumer matches every
//!    media message to the moment its datagram was sent and measures the
//!    added latency (datagram sent, to its WebSocket frame at the consumer:
//!    loopback UDP, the receiver, loopback TCP), p50 and p99, as a fraction
//!    of one 20 ms frame; and counts what never came (loss).
//!
//! The ratio printed is the receiver's CPU time per streamed call over a
//! recorded-only call. Sender, receiver and consumer share the machine's
//! cores: the figures are for this machine as loaded.
//!
//! Capacity per core: the real-time calls (both directions, recorded and
//! streamed) one core of this machine sustains, from the receiver's CPU time
//! in the streamed run: CALLS x SECONDS / CPU seconds. Printed only when that
//! run lost no media frame; it assumes CPU time grows in proportion to the
//! calls (it does not find the knee). Every figure also goes to
//! `bench-results.jsonl` ([`rst_load::results`]).

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use futures_util::StreamExt as _;
use rst_load::results::{self, Figure};
use rst_proto::{Data, Direction, Message, PayloadType, Uuid};

const CALLS: usize = 200;
const SECONDS: u64 = 10;
const FRAMES: usize = (SECONDS * 50) as usize;
const FRAME: Duration = Duration::from_millis(20);

fn main() -> anyhow::Result<()> {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| "stream".contains(f.as_str())) {
        return Ok(());
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "udp_server stream bench: {CALLS} calls x {SECONDS} s, PCMU both ways ({cores} cores shared by sender, receiver and consumer)\n"
    );

    let recorded = {
        let server = Server::start(&[])?;
        let cpu = run_calls(&server, None)?;
        server.stop();
        cpu
    };
    println!(
        "recorded only:          receiver CPU {:>6.2} s  ({:.1} ms per call)",
        recorded.as_secs_f64(),
        recorded.as_secs_f64() * 1000.0 / CALLS as f64
    );

    let consumer = Consumer::start()?;
    let url = format!("ws://{}/media", consumer.addr);
    let server = Server::start(&[
        "--stream-url",
        &url,
        "--stream-format",
        "twilio",
        "--stream-tracks",
        "both",
    ])?;
    let streamed = run_calls(&server, Some(&consumer))?;
    let connections = consumer.wait_stops(CALLS, Duration::from_secs(60));
    server.stop();
    let mut latencies = consumer.latencies.lock().expect("lock").clone();
    let expected = CALLS * FRAMES * 2;
    let received = latencies.len();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies
            .get(((received as f64 * p) as usize).min(received.saturating_sub(1)))
            .copied()
            .unwrap_or(Duration::ZERO)
    };
    let (p50, p99) = (percentile(0.50), percentile(0.99));
    println!(
        "recorded and streamed:  receiver CPU {:>6.2} s  ({:.1} ms per call)",
        streamed.as_secs_f64(),
        streamed.as_secs_f64() * 1000.0 / CALLS as f64
    );
    println!(
        "\nstreams: {connections} of {CALLS} ended with stop; media frames {received} of {expected} ({} lost)",
        expected.saturating_sub(received)
    );
    println!(
        "added latency: p50 {:.2} ms = {:.3} x a 20 ms frame; p99 {:.2} ms = {:.3} x a frame",
        p50.as_secs_f64() * 1000.0,
        p50.as_secs_f64() / FRAME.as_secs_f64(),
        p99.as_secs_f64() * 1000.0,
        p99.as_secs_f64() / FRAME.as_secs_f64()
    );
    let ratio = streamed.as_secs_f64() / recorded.as_secs_f64().max(1e-9);
    println!("CPU per streamed call / per recorded-only call: {ratio:.2} x");
    let lost = expected.saturating_sub(received);
    let per_core = (CALLS as f64 * SECONDS as f64) / streamed.as_secs_f64().max(1e-9);
    if lost == 0 {
        println!(
            "capacity: {per_core:.0} real-time calls per core (both directions, recorded and streamed; {CALLS} calls used {:.1} % of a core, no frame lost)",
            100.0 * streamed.as_secs_f64() / SECONDS as f64
        );
    } else {
        println!("capacity: not given, {lost} media frames were lost");
    }
    let mut figures = vec![
        Figure::new(
            "cpu_per_recorded_call",
            recorded.as_secs_f64() * 1000.0 / CALLS as f64,
            "ms per call",
        ),
        Figure::new(
            "cpu_per_streamed_call",
            streamed.as_secs_f64() * 1000.0 / CALLS as f64,
            "ms per call",
        ),
        Figure::new("streamed_over_recorded", ratio, "x"),
        Figure::new(
            "latency_p50",
            p50.as_secs_f64() / FRAME.as_secs_f64(),
            "x frame",
        ),
        Figure::new(
            "latency_p99",
            p99.as_secs_f64() / FRAME.as_secs_f64(),
            "x frame",
        ),
        Figure::new("frames_lost", lost as f64, "frames"),
    ];
    if lost == 0 {
        figures.push(Figure::new("calls_per_core", per_core, "real-time calls"));
    }
    match results::record("udp_server/stream", &figures) {
        Ok(path) => println!("figures appended to {}", path.display()),
        Err(error) => println!("cannot append the figures to the results file: {error}"),
    }
    Ok(())
}

/// Sends CALLS calls in real time and returns the receiver's CPU time meanwhile.
fn run_calls(server: &Server, consumer: Option<&Consumer>) -> anyhow::Result<Duration> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let uuids: Vec<String> = (0..CALLS).map(|_| rst_load::random_uuid()).collect();
    let cpu_before = server.cpu()?;
    for (i, uuid) in uuids.iter().enumerate() {
        let inv = format!("INV :{uuid}:{i}:bench");
        socket.send_to(inv.as_bytes(), server.listen)?;
    }
    let mut acks = 0;
    let mut buffer = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(10);
    while acks < CALLS && Instant::now() < deadline {
        if socket.recv_from(&mut buffer).is_ok() {
            acks += 1;
        }
    }
    anyhow::ensure!(acks == CALLS, "only {acks} of {CALLS} INVs were answered");
    let start = Instant::now();
    let mut datagram = Vec::with_capacity(256);
    let mut payload = [0xFFu8; 160];
    for frame in 0..FRAMES {
        let due = start + FRAME * frame as u32;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        for (call, uuid) in uuids.iter().enumerate() {
            for direction in Direction::BOTH {
                let tag = tag(call, frame, direction);
                payload[..4].copy_from_slice(&(tag as u32).to_be_bytes());
                datagram.clear();
                Message::Data(Data {
                    uuid: Uuid::new(uuid)?,
                    direction,
                    payload_type: PayloadType::PCMU,
                    payload: &payload,
                })
                .encode(&mut datagram)?;
                if let Some(consumer) = consumer {
                    consumer.sent[tag].store(consumer.epoch.elapsed().as_nanos() as u64, Relaxed);
                }
                socket.send_to(&datagram, server.listen)?;
            }
        }
    }
    for uuid in &uuids {
        socket.send_to(format!("BYE :{uuid}").as_bytes(), server.listen)?;
    }
    // Every call ended: its record is written (streamed calls: once their stream is done).
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.records() < CALLS {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the calls' records did not appear"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(server.cpu()? - cpu_before)
}

/// A frame's number among all: call, frame, direction.
fn tag(call: usize, frame: usize, direction: Direction) -> usize {
    (call * FRAMES + frame) * 2 + direction as usize
}

/// The WebSocket consumer: one connection per call.
struct Consumer {
    addr: SocketAddr,
    epoch: Instant,
    /// When each frame's datagram was sent, in ns since `epoch`.
    sent: Arc<Vec<AtomicU64>>,
    latencies: Arc<Mutex<Vec<Duration>>>,
    stops: Arc<AtomicU64>,
}

impl Consumer {
    fn start() -> anyhow::Result<Consumer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let consumer = Consumer {
            addr: listener.local_addr()?,
            epoch: Instant::now(),
            sent: Arc::new((0..CALLS * FRAMES * 2).map(|_| AtomicU64::new(0)).collect()),
            latencies: Arc::default(),
            stops: Arc::default(),
        };
        let (epoch, sent, latencies, stops) = (
            consumer.epoch,
            consumer.sent.clone(),
            consumer.latencies.clone(),
            consumer.stops.clone(),
        );
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (sent, latencies, stops) = (sent.clone(), latencies.clone(), stops.clone());
                    tokio::spawn(async move {
                        let Ok(mut socket) = tokio_tungstenite::accept_async(tcp).await else {
                            return;
                        };
                        let mut mine = Vec::with_capacity(FRAMES * 2);
                        while let Some(Ok(message)) = socket.next().await {
                            let arrived = epoch.elapsed().as_nanos() as u64;
                            let Ok(text) = message.to_text() else {
                                continue;
                            };
                            let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
                                continue;
                            };
                            match value["event"].as_str() {
                                Some("media") => {
                                    let Some(payload) =
                                        value["media"]["payload"].as_str().and_then(|p| {
                                            base64::engine::general_purpose::STANDARD.decode(p).ok()
                                        })
                                    else {
                                        continue;
                                    };
                                    let Some(tag) = payload.first_chunk::<4>() else {
                                        continue;
                                    };
                                    let tag = u32::from_be_bytes(*tag) as usize;
                                    if let Some(at) = sent.get(tag) {
                                        let at = at.load(Relaxed);
                                        mine.push(Duration::from_nanos(arrived.saturating_sub(at)));
                                    }
                                }
                                Some("stop") => {
                                    stops.fetch_add(1, Relaxed);
                                    break;
                                }
                                _ => {}
                            }
                        }
                        latencies.lock().expect("lock").extend(mine);
                    });
                }
            });
        });
        Ok(consumer)
    }

    /// Waits until `count` streams said stop (or `within` passed); how many did.
    fn wait_stops(&self, count: usize, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        while (self.stops.load(Relaxed) as usize) < count && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // The last connections hand their figures over as they close.
        std::thread::sleep(Duration::from_millis(200));
        self.stops.load(Relaxed)
    }
}

/// The real udp_server binary.
struct Server {
    child: Child,
    listen: SocketAddr,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(extra: &[&str]) -> anyhow::Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix("rst-bench-stream-")
            .tempdir()?;
        let listen = UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_udp_server"))
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--record-dir")
            .arg(dir.path())
            .args(extra)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start udp_server")?;
        let (ready, listening) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = ready.send(());
                }
            }
        });
        anyhow::ensure!(
            listening.recv_timeout(Duration::from_secs(10)).is_ok(),
            "udp_server did not start"
        );
        Ok(Server { child, listen, dir })
    }

    /// The receiver's user and system CPU time so far.
    fn cpu(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the command name (which may hold spaces) end with ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
            + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
    }

    /// Finished records under the record folder.
    fn records(&self) -> usize {
        let mut count = 0;
        for day in std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            for file in std::fs::read_dir(day.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if file.file_name().to_string_lossy().ends_with(".json") {
                    count += 1;
                }
            }
        }
        count
    }

    fn stop(mut self) {
        // SAFETY: kill with a valid pid: SIGTERM, the receiver's clean stop.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
