//! Live capture drop rate: the `tap_daemon` binary capturing on a veth while
//! tcpreplay sends a large capture onto it at a fixed packet rate.
//!
//!     sudo -E cargo bench -p tap_daemon --bench live
//!
//! Two network namespaces made for the run (named after this process, so
//! nothing clashes; deleted at the end, also on a panic or Ctrl-C) are joined
//! by a veth pair, `veth-a` in A and `veth-b` in B. For each rate:
//!
//! * a receiver runs in A: by default a real `udp_server` in this process
//!   (its threads entered A), or with `RST_LIVE_SINK=plain` a bare UDP socket
//!   drained by a thread (no ACKs: the daemon then holds the RTP it would
//!   forward, so it does less work);
//! * `tap_daemon --interface veth-a --receiver …` captures in A;
//! * `tcpreplay --pps=N` (or `--topspeed`) sends the capture out of `veth-b`
//!   in B; the daemon sees it promiscuously on `veth-a`;
//! * the daemon is stopped with SIGTERM and its last `pcap at the end
//!   received=… dropped=… if_dropped=…` line is read.
//!
//! Printed per rate: the rate tcpreplay reports ("Rated: … pps"), pcap's
//! received, dropped and interface drops, and the drop rate (dropped over
//! received: on Linux pcap's received counts the dropped packets too).
//!
//! The capture is built as `benches/pipeline.rs` builds its own: rounds of
//! the SIP + RTP captures of `../shared/captures` (`RST_BENCH_CAPTURES=DIR`)
//! until `RST_BENCH_PACKETS` packets (default 300,000). tcpreplay ignores its
//! timestamps (it sends at the fixed rate), so the rounds' calls, whose
//! Call-IDs repeat, overlap on the wire. The rates are `RST_LIVE_RATES`
//! (default `50000,100000,200000,300000`; `topspeed` for as fast as tcpreplay
//! can). The figures are kept with `rst_load::results` (`bench-results.jsonl`).
//!
//! Needs root (namespaces, raw sockets) and tcpreplay; prints SKIPPED and
//! does nothing without them.

#[path = "../tests/live/netns.rs"]
mod netns;
#[path = "support/mod.rs"]
mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netns::{enter, logged, Netns, Pair, Proc};
use support::{build, load, Frame};

use rst_load::results::{self, Figure};

use tokio_util::sync::CancellationToken;

/// Ethernet captures with SIP calls and their RTP (as `benches/pipeline.rs`).
const SOURCES: &[&str] = &[
    "derived-ipv4frag__SIP_CALL_RTP_G711.pcap",
    "derived-vlan100__rtp-protocol.pcap",
    "derived-qinq200-10__sip-over-tcp.pcap",
    "sip-rtp-g711.pcap",
    "sip-rtp-g722.pcap",
    "sip-rtp-g729a.pcap",
    "SIP_DTMF2.cap",
    "rtpproxy_lost.a.rtp.pcap",
    "b2bua-asterisk.pcapng",
    "invite-opus-bye.pcap",
    "Asterisk_ZFONE_XLITE.pcap",
];

const A_ADDR: &str = "169.254.78.1";
const B_ADDR: &str = "169.254.78.2";

/// Set by SIGINT / SIGTERM: the run stops at the next check and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

// ---------------------------------------------------------------- the capture

// ---------------------------------------------------------------- namespaces

fn pair() -> Result<Pair, String> {
    let tag = format!("rst-bench-live-{}", std::process::id());
    Pair::new(&tag, A_ADDR, B_ADDR).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------- processes

/// The tap_daemon binary: the one cargo built for this bench, else the
/// release one next to this executable (a bench binary run by hand).
fn daemon_binary() -> Result<PathBuf, String> {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_tap_daemon"));
    if built.is_file() {
        return Ok(built);
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("tap_daemon"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "no tap_daemon binary at {} or next to this bench: run it with \
                 `cargo bench -p tap_daemon --bench live`, or `cargo build --release -p tap_daemon` first",
                built.display()
            )
        })
}

// ---------------------------------------------------------------- receivers

/// What the daemon sends its calls to, inside A, stopped when dropped.
struct Sink {
    addr: SocketAddr,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("addr", &self.addr).finish()
    }
}

impl Sink {
    /// A real udp_server on 127.0.0.1 in `ns`, its threads all in `ns`.
    fn udp_server(ns: &Netns) -> Result<Sink, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let settings = udp_server::Settings {
            listen: Some("127.0.0.1:0".parse().expect("an address")),
            record_dir: Some(dir.path().to_owned()),
            rtp_ports: Some("20000-29999".parse().expect("a port range")),
            ..udp_server::Settings::default()
        };
        let config = settings.resolve().map_err(|e| format!("{e:#}"))?;
        let metrics = Arc::new(udp_server::Metrics::default());
        let shutdown = CancellationToken::new();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let name = ns.name.clone();
        let stop = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let run = || -> anyhow::Result<()> {
                enter(&name)?;
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let socket = udp_server::bind(config.listen)?;
                    addr_tx.send(socket.local_addr()?)?;
                    udp_server::run(socket, config, metrics, stop).await
                })
            };
            if let Err(e) = run() {
                eprintln!("udp_server: {e:#}");
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "udp_server did not start".to_owned())?;
        Ok(Sink {
            addr,
            shutdown,
            thread: Some(thread),
            _dir: Some(dir),
        })
    }

    /// A bare UDP socket on 127.0.0.1 in `ns`, drained by a thread.
    fn plain(ns: &Netns) -> Result<Sink, String> {
        let shutdown = CancellationToken::new();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let name = ns.name.clone();
        let stop = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let socket = match enter(&name)
                .and_then(|()| UdpSocket::bind("127.0.0.1:0"))
                .and_then(|s| {
                    s.set_read_timeout(Some(Duration::from_millis(100)))
                        .map(|()| s)
                }) {
                Ok(socket) => socket,
                Err(e) => {
                    eprintln!("sink: {e}");
                    return;
                }
            };
            let _ = addr_tx.send(socket.local_addr().expect("an address"));
            let mut buf = [0u8; 65536];
            while !stop.is_cancelled() {
                let _ = socket.recv(&mut buf);
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "the sink did not start".to_owned())?;
        Ok(Sink {
            addr,
            shutdown,
            thread: Some(thread),
            _dir: None,
        })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------- one run

/// A rate for tcpreplay: packets per second, or as fast as it can.
#[derive(Debug, Clone, Copy)]
enum Rate {
    Pps(u64),
    Top,
}

impl Rate {
    fn parse(text: &str) -> Option<Rate> {
        match text.trim() {
            "topspeed" | "top" => Some(Rate::Top),
            n => n.parse().ok().filter(|n| *n > 0).map(Rate::Pps),
        }
    }

    fn arg(self) -> String {
        match self {
            Rate::Pps(n) => format!("--pps={n}"),
            Rate::Top => "--topspeed".to_owned(),
        }
    }
}

/// What one run measured.
#[derive(Debug)]
struct Outcome {
    rated_pps: Option<f64>,
    sent: Option<u64>,
    failed: Option<u64>,
    seconds: Option<f64>,
    received: Option<u64>,
    dropped: Option<u64>,
    if_dropped: Option<u64>,
    frames: Option<u64>,
    rtp_forwarded: Option<u64>,
}

/// A number in the line of tcpreplay's output that starts with `line` (`Rated: 1.0 Bps, 2 Mbps,
/// 3.00 pps`: the word after the number picks which).
fn tcpreplay_number(log: &str, line: &str, unit: &str) -> Option<f64> {
    let text = log.lines().find(|l| l.trim_start().starts_with(line))?;
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
        .filter(|w| !w.is_empty())
        .collect();
    words
        .windows(2)
        .find(|w| w[1] == unit)
        .and_then(|w| w[0].parse().ok())
}

fn run(
    net: &Pair,
    daemon_bin: &Path,
    capture: &Path,
    rate: Rate,
    plain: bool,
) -> Result<Outcome, String> {
    let work = tempfile::Builder::new()
        .prefix("rst-bench-live-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let sink = if plain {
        Sink::plain(&net.a)?
    } else {
        Sink::udp_server(&net.a)?
    };
    let mut daemon = Proc::spawn(
        &net.a,
        "tap_daemon",
        daemon_bin,
        &[
            "--interface".into(),
            "veth-a".into(),
            "--receiver".into(),
            sink.addr.to_string(),
        ],
        work.path(),
    );
    daemon.wait_for_log("capture open", Duration::from_secs(15), interrupted)?;

    let mut replay = Proc::spawn(
        &net.b,
        "tcpreplay",
        Path::new("tcpreplay"),
        &[
            "-i".into(),
            "veth-b".into(),
            rate.arg(),
            capture.display().to_string(),
        ],
        work.path(),
    );
    let status = loop {
        if let Some(status) = replay.wait(Duration::from_millis(200)) {
            break status;
        }
        if interrupted() {
            return Err("interrupted".to_owned());
        }
    };
    if !status.success() {
        return Err(format!("tcpreplay: {status}\n{}", replay.tail()));
    }
    let replayed = replay.log();

    // Let the daemon catch up with its ring before stopping it.
    std::thread::sleep(Duration::from_millis(500));
    daemon.terminate();
    let mut status = daemon.wait(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    while status.is_none() && Instant::now() < deadline {
        net.poke();
        status = daemon.wait(Duration::from_millis(200));
    }
    let Some(status) = status else {
        return Err(format!(
            "tap_daemon still running 20 s after SIGTERM\n{}",
            daemon.tail()
        ));
    };
    let log = daemon.log();
    if !status.success() {
        return Err(format!("tap_daemon: {status}\n{}", daemon.tail()));
    }
    drop(sink);
    let end = "pcap at the end";
    if !log.contains(end) {
        return Err(format!("tap_daemon logged no {end:?}\n{}", daemon.tail()));
    }
    Ok(Outcome {
        rated_pps: tcpreplay_number(&replayed, "Rated:", "pps"),
        sent: tcpreplay_number(&replayed, "Actual:", "packets").map(|n| n as u64),
        failed: replayed
            .lines()
            .find(|l| l.trim_start().starts_with("Failed packets:"))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|n| n.trim().parse().ok()),
        seconds: tcpreplay_number(&replayed, "Actual:", "seconds"),
        received: logged(&log, end, "received"),
        dropped: logged(&log, end, "dropped"),
        if_dropped: logged(&log, end, "if_dropped"),
        frames: logged(&log, "counters", "frames"),
        rtp_forwarded: logged(&log, "counters", "rtp_forwarded"),
    })
}

fn show(n: Option<u64>) -> String {
    n.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and
    // then there is nothing to check beyond the build.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: needs root (network namespaces, live capture)");
        return;
    }
    let tcpreplay = Command::new("tcpreplay")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if tcpreplay.is_err() {
        println!("SKIPPED: tcpreplay not found (apt-get install tcpreplay)");
        return;
    }
    let handler = on_signal as extern "C" fn(libc::c_int);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe {
            libc::signal(signal, handler as libc::sighandler_t);
        }
    }

    let dir = std::env::var_os("RST_BENCH_CAPTURES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/captures"),
        PathBuf::from,
    );
    let target: u64 = std::env::var("RST_BENCH_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let rates: Vec<Rate> = std::env::var("RST_LIVE_RATES")
        .unwrap_or_else(|_| "50000,100000,200000,300000".to_owned())
        .split(',')
        .filter_map(Rate::parse)
        .collect();
    let plain = std::env::var("RST_LIVE_SINK").is_ok_and(|v| v == "plain");

    let sources: Vec<Vec<Frame>> = SOURCES
        .iter()
        .filter_map(|name| load(&dir.join(name)))
        .filter(|frames| !frames.is_empty())
        .collect();
    if sources.is_empty() {
        println!(
            "SKIPPED: no captures in {} (set RST_BENCH_CAPTURES)",
            dir.display()
        );
        return;
    }
    let daemon_bin = match daemon_binary() {
        Ok(path) => path,
        Err(e) => {
            println!("SKIPPED: no tap_daemon binary: {e}");
            return;
        }
    };
    let began = Instant::now();
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let file = tmp.path().join("large.pcap");
    let written = build(&sources, target, &file);
    let size = std::fs::metadata(&file).map_or(0, |m| m.len());
    println!(
        "capture: {written} packets, {:.0} MB, from {} captures of {} ({:.1} s to write)",
        size as f64 / 1e6,
        sources.len(),
        dir.display(),
        began.elapsed().as_secs_f64()
    );
    println!(
        "tap_daemon: {}; receiver: {}",
        daemon_bin.display(),
        if plain {
            "plain UDP sink (no ACKs)"
        } else {
            "udp_server in-process"
        }
    );

    let net = match pair() {
        Ok(net) => net,
        Err(e) => {
            println!("SKIPPED: cannot make the namespaces: {e}");
            return;
        }
    };
    let mut failures = Vec::new();
    let mut figures = vec![Figure::new("packets", written as f64, "packets")];
    for rate in rates {
        if interrupted() {
            break;
        }
        match run(&net, &daemon_bin, &file, rate, plain) {
            Ok(o) => {
                let rate_text = o
                    .rated_pps
                    .map_or_else(|| "?".to_owned(), |r| format!("{r:.0}"));
                let dropped = match (o.received, o.dropped) {
                    (Some(r), Some(d)) if r > 0 => Some(100.0 * d as f64 / r as f64),
                    _ => None,
                };
                let drop_rate = dropped.map_or_else(|| "?".to_owned(), |d| format!("{d:.3} %"));
                let name = rate.arg().trim_start_matches("--").replace('=', "_");
                figures.push(Figure::new(
                    format!("{name}_offered"),
                    o.rated_pps.unwrap_or(f64::NAN),
                    "packets/s",
                ));
                figures.push(Figure::new(
                    format!("{name}_dropped"),
                    dropped.unwrap_or(f64::NAN),
                    "% of pcap received",
                ));
                println!(
                    "tcpreplay {:<14} offered {rate_text:>7} pps ({} sent, {} failed, {:.2} s) | \
                     pcap received {}, dropped {}, if_dropped {} | drop rate {drop_rate} | \
                     daemon frames {}, rtp forwarded {}",
                    rate.arg(),
                    show(o.sent),
                    show(o.failed),
                    o.seconds.unwrap_or(f64::NAN),
                    show(o.received),
                    show(o.dropped),
                    show(o.if_dropped),
                    show(o.frames),
                    show(o.rtp_forwarded),
                );
            }
            Err(e) => {
                println!("tcpreplay {}: FAILED: {e}", rate.arg());
                failures.push(rate.arg());
            }
        }
    }
    println!("live bench: {:.1} s in all", began.elapsed().as_secs_f64());
    if figures.len() > 1 {
        match results::record("tap_daemon/live", &figures) {
            Ok(path) => println!("figures appended to {}", path.display()),
            Err(error) => println!("figures not kept: {error}"),
        }
    }
    drop(net);
    if interrupted() {
        println!("interrupted: namespaces deleted");
    }
    assert!(failures.is_empty(), "runs failed: {failures:?}");
}
