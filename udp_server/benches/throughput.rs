//! Throughput and memory of udp_server on loopback, in one run:
//!
//! ```text
//! cargo bench -p udp_server --bench throughput              # all four parts
//! cargo bench -p udp_server --bench throughput -- memory    # or: ceiling, lossless, rtp
//! ```
//!
//! (a) the loopback ceiling: datagrams/s a bare `recvmmsg` receiver counts while a
//!     blaster sends 180-byte DATA datagrams as fast as it can (each on its own thread);
//! (b) udp_server's highest lossless rate while recording: the real binary, 50 calls
//!     sent by rst-load in fast mode at a capped total rate, stepped up (doubling, then
//!     bisecting); a step is lossless when the server's `rst_messages_total{command="data"}`
//!     grew by exactly the DATA rst-load sent (a lossy step is run once more, and
//!     counts as lossy only if it loses again);
//! (c) memory per active call: VmRSS of a fresh udp_server before and while 1000
//!     calls are up (INV, then one frame per direction per call every second),
//!     divided by `rst_calls_active`: the most seen while all are up, and the first
//!     sample (right after every call sent two frames). The receiver allocates
//!     with mimalloc (linked in); the same is measured with glibc's malloc
//!     (`RST_ALLOCATOR=system`) and jemalloc's (that and `LD_PRELOAD`, when the
//!     system has it: `apt-get install libjemalloc2`), to keep the allocator
//!     chosen by measurement; then mimalloc with 10,000 calls. Each call holds
//!     three files open in the receiver: the bench raises its open-file limit
//!     (the hard one too, where it may: root with CAP_SYS_RESOURCE), and where
//!     the limit still cannot hold 10,000 calls' files it says so and measures
//!     the most calls that fit instead. A run in which any call could not create
//!     its files (`rst_write_errors_total` grew) prints no figure: those calls
//!     hold no buffers, and would make memory per call look smaller than it is;
//! (d) RTP mode's highest lossless rate while recording: as (b), but the 50 calls
//!     are RTP-mode calls (`--mode rtp`: each INV names two local ports, the ACK the
//!     receiver's, then RFC 3550 PCMU RTP from two sockets per call), and a step is
//!     lossless when `rst_rtp_packets_total` grew by exactly the RTP packets sent.
//!
//! Sender, receiver and recorder share the machine's cores: the figures are for
//! this machine as loaded, not absolute. Every figure also goes to
//! `bench-results.jsonl` ([`rst_load::results`]).

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rst_load::ceiling::{self, Options, Receiver};
use rst_load::results::{self, Figure};
use rst_load::{prom, Codec, Config, Live, Mode};

/// Size of the blaster's datagrams for the ceiling.
const CEILING_DATAGRAM: usize = 180;
const CEILING_SECS: f64 = 3.0;
/// Calls per rate step, and how long each step sends.
const STEP_CALLS: usize = 50;
const STEP_SECS: f64 = 3.0;
const FIRST_RATE: u64 = 20_000;
const MAX_STEPS: usize = 14;
/// Bisection stops when the lossy rate is within this factor of the lossless one.
const PRECISION: f64 = 1.05;
const MEMORY_CALLS: usize = 1000;
/// The second, larger measure of memory per call.
const MANY_CALLS: usize = 10_000;
/// Files a call holds open in the receiver: a WAV per direction and the stereo WAV.
const FILES_PER_CALL: u64 = 3;
/// Descriptors the receiver needs besides its calls' files (sockets, the
/// record being rewritten, the metrics and console listeners, libraries).
const FILES_SPARE: u64 = 1024;
/// Other allocators than the receiver's own (mimalloc): glibc's malloc, and
/// jemalloc's put in front of it, where installed.
const ALLOCATORS: [(&str, Option<&str>); 2] = [
    ("glibc", None),
    (
        "jemalloc",
        Some("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
    ),
];
/// Keep-alive frames per direction per call, one a second.
const MEMORY_FRAMES: u64 = 6;
const DATA_SERIES: &str = "rst_messages_total{command=\"data\"}";
const RTP_SERIES: &str = "rst_rtp_packets_total";
/// Files the receiver could not create or write.
const WRITE_ERRORS: &str = "rst_write_errors_total";

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`. Other arguments pick parts: `ceiling`,
    // `lossless`, `memory` (default: all); one naming none of them (a filter meant
    // for another bench) skips this one.
    const PARTS: [&str; 4] = ["ceiling", "lossless", "memory", "rtp"];
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let wanted = |part: &str| {
        filters.is_empty()
            || filters
                .iter()
                .any(|f| part.contains(f.as_str()) || "throughput".contains(f.as_str()))
    };
    if !PARTS.iter().any(|part| wanted(part)) {
        return Ok(());
    }
    let started = Instant::now();
    // RTP mode takes two sockets per call, in rst-load and in the server it
    // starts; the memory part's MANY_CALLS calls three files each in the server.
    let files = rst_load::raise_fd_limit_to(4 * MANY_CALLS as u64 + FILES_SPARE)?;
    let many_calls = calls_that_fit(files);
    if many_calls < MANY_CALLS {
        println!(
            "(open files limited to {files}, and the hard limit cannot be raised here (it takes root with \
             CAP_SYS_RESOURCE): {MANY_CALLS} calls need {} in the receiver; the memory part measures \
             {many_calls} calls instead. Raise it before the bench, e.g. `ulimit -Hn {}` as root or \
             `docker run --ulimit nofile={}`)",
            FILES_PER_CALL * MANY_CALLS as u64 + FILES_SPARE,
            4 * MANY_CALLS as u64 + FILES_SPARE,
            4 * MANY_CALLS as u64 + FILES_SPARE,
        );
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "udp_server throughput bench ({cores} cores; sender, receiver and recorder share them)\n"
    );

    let mut ceiling = None;
    if wanted("ceiling") {
        println!("(a) loopback ceiling: bare recvmmsg receiver, {CEILING_DATAGRAM}-byte DATA blasted for {CEILING_SECS} s");
        ceiling = Some(loopback_ceiling()?);
    }
    let mut lossless = None;
    if wanted("lossless") {
        println!("\n(b) udp_server recording, {STEP_CALLS} calls per step, {STEP_SECS} s per step, PCMU (211-byte DATA)");
        lossless = Some(lossless_rate(ceiling, Mode::Data)?);
    }
    let mut memory = None;
    let mut many = None;
    let mut allocators = Vec::new();
    if wanted("memory") {
        println!("\n(c) memory: {MEMORY_CALLS} active calls on a fresh udp_server (mimalloc)");
        memory = Some(memory_per_call(MEMORY_CALLS, Malloc::Own)?);
        for (name, library) in ALLOCATORS {
            if let Some(library) = library.filter(|l| !std::path::Path::new(l).exists()) {
                println!("    ({name}: {library} is not installed; skipped)");
                continue;
            }
            println!(
                "    the same with {name} (RST_ALLOCATOR=system{}):",
                library.map_or(String::new(), |l| format!(", LD_PRELOAD={l}"))
            );
            allocators.push((
                name,
                memory_per_call(MEMORY_CALLS, Malloc::System(library))?,
            ));
        }
        println!("    {many_calls} active calls (mimalloc):");
        many = Some(memory_per_call(many_calls, Malloc::Own)?);
    }
    let mut rtp = None;
    if wanted("rtp") {
        println!("\n(d) udp_server recording RTP mode, {STEP_CALLS} calls per step, {STEP_SECS} s per step, PCMU (172-byte RTP)");
        rtp = Some(lossless_rate(ceiling, Mode::Rtp)?);
    }

    println!("\nsummary ({:.0} s)", started.elapsed().as_secs_f64());
    if let Some(ceiling) = ceiling {
        println!("loopback ceiling                : {ceiling:.0} datagrams/s");
    }
    let ratio = |rate: f64| {
        ceiling.map_or(String::new(), |ceiling| {
            format!(" = {:.2} x ceiling", rate / ceiling)
        })
    };
    let bound = |lossless: &Lossless| if lossless.sender_bound { ">= " } else { "" };
    if let Some(lossless) = &lossless {
        println!(
            "udp_server lossless (record)    : {}{:.0} datagrams/s{}",
            bound(lossless),
            lossless.rate,
            ratio(lossless.rate)
        );
    }
    if let Some(memory) = &memory {
        println!(
            "memory per active call          : {}   ({MEMORY_CALLS} calls, mimalloc)",
            memory.summary()
        );
    }
    for (name, memory) in &allocators {
        println!("  with {name:<27}: {}", memory.summary());
    }
    if let Some(many) = &many {
        println!(
            "memory per active call          : {}   ({} calls, mimalloc)",
            many.summary(),
            many.calls
        );
    }
    if let Some(rtp) = &rtp {
        println!(
            "udp_server lossless RTP (record): {}{:.0} packets/s{}",
            bound(rtp),
            rtp.rate,
            ratio(rtp.rate)
        );
    }
    if [&lossless, &rtp]
        .into_iter()
        .flatten()
        .any(|lossless| lossless.sender_bound)
    {
        println!("(a figure with >= is a lower bound: rst-load could not send faster)");
    }

    let mut figures = Vec::new();
    if let Some(ceiling) = ceiling {
        figures.push(Figure::new("loopback_ceiling", ceiling, "datagrams/s"));
    }
    for (name, lossless) in [("lossless_data", &lossless), ("lossless_rtp", &rtp)] {
        let Some(lossless) = lossless else { continue };
        let unit = if lossless.sender_bound {
            "datagrams/s (at least: sender-bound)"
        } else {
            "datagrams/s"
        };
        figures.push(Figure::new(name, lossless.rate, unit));
        if let Some(ceiling) = ceiling {
            figures.push(Figure::new(
                format!("{name}_ratio"),
                lossless.rate / ceiling,
                "x ceiling",
            ));
        }
    }
    let memory_figures = [(String::new(), memory)]
        .into_iter()
        .chain(
            allocators
                .into_iter()
                .map(|(name, memory)| (format!("_{name}"), Some(memory))),
        )
        .chain([(String::new(), many)]);
    for (allocator, memory) in memory_figures {
        // A figure with calls that had no files is not one.
        let Some(memory) = memory.filter(|memory| memory.file_errors == 0) else {
            continue;
        };
        let name = format!("memory_per_call_{}{allocator}", memory.calls);
        figures.push(Figure::new(&name, memory.peak_kib, "KiB"));
        figures.push(Figure::new(
            format!("{name}_opened"),
            memory.opened_kib,
            "KiB",
        ));
    }
    match results::record("udp_server/throughput", &figures) {
        Ok(path) => println!("\nfigures appended to {}", path.display()),
        Err(error) => println!("\ncannot append the figures to the results file: {error}"),
    }
    Ok(())
}

/// (a): datagrams/s the bare receiver counts in the steady middle of a blast.
fn loopback_ceiling() -> anyhow::Result<f64> {
    let receiver = Receiver::bind("127.0.0.1:0".parse()?, Options::default())?;
    let target = receiver.local_addr();
    let stop = AtomicBool::new(false);
    let (blast, first, last) = std::thread::scope(|scope| {
        let blaster = scope.spawn(|| {
            ceiling::blast(
                target,
                CEILING_DATAGRAM,
                Duration::from_secs_f64(CEILING_SECS),
                &stop,
            )
        });
        // Skip the ramp-up and the tail: count over the middle of the blast.
        std::thread::sleep(Duration::from_millis(500));
        let first = (Instant::now(), receiver.counts());
        std::thread::sleep(Duration::from_secs_f64(CEILING_SECS - 1.0));
        let last = (Instant::now(), receiver.counts());
        let blast = blaster.join().expect("blaster panicked");
        (blast, first, last)
    });
    let blast = blast?;
    std::thread::sleep(Duration::from_millis(100));
    let total = receiver.stop()?;
    let rate = (last.1.datagrams - first.1.datagrams) as f64 / (last.0 - first.0).as_secs_f64();
    println!(
        "    blaster sent {} ({:.0}/s), receiver counted {} ({:.1}% dropped by the kernel)",
        blast.sent,
        blast.rate(),
        total.datagrams,
        100.0 * blast.sent.saturating_sub(total.datagrams) as f64 / blast.sent.max(1) as f64
    );
    println!("    ceiling: {rate:.0} datagrams/s counted");
    Ok(rate)
}

struct Lossless {
    /// The highest achieved DATA (or RTP) rate of a lossless step.
    rate: f64,
    /// No step lost anything, and rst-load could not offer more: the sender, not
    /// the server, was the limit.
    sender_bound: bool,
}

struct Step {
    mode: Mode,
    offered: u64,
    achieved: f64,
    sent: u64,
    counted: u64,
    /// Datagrams the kernel dropped on the server's socket (receive queue full);
    /// DATA mode only (RTP arrives on per-call sockets that close with the call).
    kernel_drops: Option<u64>,
    lost_control: u64,
}

impl Step {
    fn lossless(&self) -> bool {
        self.counted == self.sent
    }

    /// rst-load fell short of the offered rate.
    fn sender_bound(&self) -> bool {
        self.achieved < 0.95 * self.offered as f64
    }
}

/// (b) and (d): steps the offered rate up (doubling) until audio (DATA or RTP) is
/// lost, then bisects between the best lossless and the lowest lossy rate actually
/// sent.
fn lossless_rate(ceiling: Option<f64>, mode: Mode) -> anyhow::Result<Lossless> {
    let what = match mode {
        Mode::Data => "DATA",
        Mode::Rtp => "RTP",
    };
    let server = Server::start(&format!("recording-{mode}"))?;
    let mut best: Option<Step> = None;
    // The lowest rate actually sent at which DATA was lost (twice in a row).
    let mut lossy: Option<f64> = None;
    let mut rate = FIRST_RATE;
    // Offered rates tried, in thousands.
    let mut tried = std::collections::HashSet::from([rate / 1000]);
    let mut steps = 0;
    while steps < MAX_STEPS {
        // A loss counts only if it happens again at the same rate: one stall of a
        // shared machine (another process, disk writeback) should not decide.
        let mut step = server.step(rate, mode)?;
        steps += 1;
        print_step(&step, !step.lossless());
        if !step.lossless() && steps < MAX_STEPS {
            step = server.step(rate, mode)?;
            steps += 1;
            print_step(&step, false);
        }
        // The search moves on the rates actually sent (rst-load may fall short of
        // the offer when it shares the cores with the server).
        if step.lossless() {
            let previous = best.as_ref().map_or(0.0, |best| best.achieved);
            // rst-load fell short and sent no more than at the previous step: it
            // cannot offer more, so going higher is pointless.
            let saturated = step.sender_bound() && step.achieved < 1.05 * previous;
            if step.achieved > previous {
                best = Some(step);
            }
            if saturated && lossy.is_none() {
                break;
            }
        } else {
            lossy = Some(lossy.map_or(step.achieved, |high: f64| high.min(step.achieved)));
        }
        let low = best.as_ref().map_or(0.0, |best| best.achieved);
        let next = match lossy {
            None => (rate * 2).min(ceiling.map_or(u64::MAX, |c| (c * 2.0) as u64)),
            Some(high) if low > 0.0 && high / low <= PRECISION => break,
            Some(high) => ((low + high) / 2.0) as u64,
        };
        if next < 1000 || !tried.insert(next / 1000) {
            break; // nothing new to learn
        }
        rate = next;
    }
    let Some(best) = best else {
        let log = server.stop();
        anyhow::bail!("udp_server lost {what} at every rate tried; its log:\n{log}");
    };
    match lossy {
        Some(high) if high <= best.achieved => println!(
            "    highest lossless {:.0}/s; but {what} was lost at {high:.0}/s: the machine is noisy, rerun when it is idle",
            best.achieved
        ),
        Some(high) => println!(
            "    highest lossless {:.0}/s; lost {what} at {high:.0}/s",
            best.achieved
        ),
        None => println!("    highest lossless {:.0}/s; no loss seen", best.achieved),
    }
    Ok(Lossless {
        rate: best.achieved,
        sender_bound: best.sender_bound() && lossy.is_none(),
    })
}

/// Per-call memory: (VmRSS with the calls up - VmRSS before) / active calls.
#[derive(Debug, Clone, Copy)]
struct Memory {
    calls: usize,
    /// Right after every call has sent its INV and two frames per direction.
    opened_kib: f64,
    /// The most seen while every call was still up (before the first BYE).
    peak_kib: f64,
    /// Files the receiver could not create or write during the run
    /// (`rst_write_errors_total`): each is a call without its buffers.
    file_errors: u64,
}

impl Memory {
    fn summary(&self) -> String {
        if self.file_errors > 0 {
            return format!(
                "not measured: {} file errors (calls without their files; open-file limit?)",
                self.file_errors
            );
        }
        format!(
            "{:.1} KiB ({:.1} KiB just after opening)",
            self.peak_kib, self.opened_kib
        )
    }
}

/// The most calls (in whole thousands, at most MANY_CALLS) whose files the
/// receiver can hold open under an open-file limit of `files`.
fn calls_that_fit(files: u64) -> usize {
    let calls = files.saturating_sub(FILES_SPARE) / FILES_PER_CALL;
    let calls = (calls as usize).min(MANY_CALLS);
    if calls >= 1000 {
        calls - calls % 1000
    } else {
        calls
    }
}

fn print_step(step: &Step, retrying: bool) {
    println!(
        "    offered {:>7}/s  sent {:>7.0}/s  {} {:>8} sent {:>8} counted  {}{}{}{}",
        step.offered,
        step.achieved,
        match step.mode {
            Mode::Data => "DATA",
            Mode::Rtp => "RTP ",
        },
        step.sent,
        step.counted,
        if step.lossless() {
            "lossless".to_owned()
        } else {
            format!(
                "LOST {}{}",
                step.sent.saturating_sub(step.counted),
                step.kernel_drops
                    .map_or(String::new(), |drops| format!(" (kernel drops {drops})"))
            )
        },
        if step.sender_bound() {
            " (sender-bound)"
        } else {
            ""
        },
        if step.lost_control > 0 {
            format!(" ({} INV/BYE unacknowledged)", step.lost_control)
        } else {
            String::new()
        },
        if retrying { "; once more" } else { "" }
    );
}

/// Which malloc the receiver uses.
#[derive(Debug, Clone, Copy)]
enum Malloc {
    /// Its own (mimalloc).
    Own,
    /// The system's (`RST_ALLOCATOR=system`), with this library in front of
    /// glibc's (`LD_PRELOAD`), if any.
    System(Option<&'static str>),
}

/// (c): memory per active call, with `calls` calls kept alive by one frame per
/// direction per second.
fn memory_per_call(calls: usize, malloc: Malloc) -> anyhow::Result<Memory> {
    let server = Server::start_with("memory", malloc)?;
    // One short call first, so what the first call initialises once is not counted.
    let warm_up = rst_load::run(&Config {
        target: server.listen,
        calls: 1,
        frames: Some(3),
        ..Config::default()
    })?;
    anyhow::ensure!(
        warm_up.lost() == 0,
        "warm-up call not acknowledged:\n{warm_up}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let before = server.rss_kib()?;
    let errors_before = server.value(WRITE_ERRORS)?;

    let config = Config {
        target: server.listen,
        calls,
        // One frame per direction per call every second, calls spread over the second.
        interval: Duration::from_secs(1),
        frames: Some(MEMORY_FRAMES),
        ..Config::default()
    };
    let wanted = calls;
    let calls = calls as u64;
    let live = Live::default();
    // (VmRSS KiB, rst_calls_active) samples while every call is up.
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let report = std::thread::scope(|scope| -> anyhow::Result<_> {
        let load = scope.spawn(|| rst_load::run_with(&config, &live));
        while !load.is_finished() {
            let now = live.snapshot();
            if now.bye_sent > 0 {
                break; // calls are ending
            }
            if now.inv_acked == calls && now.data_sent >= 2 * 2 * calls {
                samples.push((server.rss_kib()?, server.value("rst_calls_active")?));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        load.join().expect("load generator panicked")
    })?;
    let file_errors = server.value(WRITE_ERRORS)?.saturating_sub(errors_before);
    let log = server.stop();
    let (Some(&opened), Some(&peak)) = (samples.first(), samples.iter().max()) else {
        anyhow::bail!("the {calls} calls never all came up:\n{report}\n{log}");
    };
    let per_call =
        |(rss, active): (u64, u64)| rss.saturating_sub(before) as f64 / active.max(1) as f64;
    println!(
        "    VmRSS {before} KiB before; with the calls up: {} KiB ({} active) first, {} KiB ({} active) at most",
        opened.0, opened.1, peak.0, peak.1
    );
    println!(
        "    INV acked {}/{}, BYE acked {}/{}, DATA sent {}",
        report.inv_acked, report.calls, report.bye_acked, report.calls, report.data_sent
    );
    if file_errors > 0 {
        println!("    {file_errors} file errors: some calls could not create their files; no figure from this run. The receiver's log:");
        for line in log.lines().filter(|line| line.contains("cannot")).take(3) {
            println!("      {line}");
        }
    }
    anyhow::ensure!(opened.1 > 0, "udp_server reports no active call");
    Ok(Memory {
        calls: wanted,
        opened_kib: per_call(opened),
        peak_kib: per_call(peak),
        file_errors,
    })
}

/// The real udp_server binary, recording into a temporary folder.
struct Server {
    child: Child,
    listen: SocketAddr,
    metrics: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(name: &str) -> anyhow::Result<Server> {
        Server::start_with(name, Malloc::Own)
    }

    fn start_with(name: &str, malloc: Malloc) -> anyhow::Result<Server> {
        let (system, preload) = match malloc {
            Malloc::Own => (false, None),
            Malloc::System(preload) => (true, preload),
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("rst-bench-{name}-"))
            .tempdir()?;
        let listen = free_udp_port()?;
        let metrics = free_tcp_port()?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_udp_server"))
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--record-dir")
            .arg(dir.path())
            .arg("--metrics")
            .arg(metrics.to_string())
            .arg("--max-calls")
            .arg((2 * MANY_CALLS).to_string())
            // The memory part opens MANY_CALLS calls as fast as it can.
            .arg("--new-calls-per-second")
            .arg("0")
            .envs(system.then_some(("RST_ALLOCATOR", "system")))
            .envs(preload.map(|library| ("LD_PRELOAD", library)))
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start udp_server")?;
        // Keep draining its log, so it never blocks on a full pipe.
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready, listening) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        std::thread::spawn({
            let log = log.clone();
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("listening on") {
                        let _ = ready.send(());
                    }
                    let mut log = log.lock().expect("log lock");
                    if log.len() < 10_000 {
                        log.push(line);
                    }
                }
            }
        });
        let server = Server {
            child,
            listen,
            metrics,
            log,
            dir,
        };
        if listening.recv_timeout(Duration::from_secs(10)).is_err() {
            let log = server.stop();
            anyhow::bail!("udp_server did not log `listening on`; its log:\n{log}");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(error) = prom::scrape(metrics) {
            if Instant::now() > deadline {
                let log = server.stop();
                anyhow::bail!("no metrics at {metrics}: {error:#}; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    fn value(&self, series: &str) -> anyhow::Result<u64> {
        prom::scrape_value(self.metrics, series)
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        prom::vm_rss_kib(self.child.id())
    }

    /// One rate step: STEP_CALLS calls in fast mode capped at `rate` audio
    /// datagrams/s (DATA, or RTP packets in RTP mode).
    fn step(&self, rate: u64, mode: Mode) -> anyhow::Result<Step> {
        let series = match mode {
            Mode::Data => DATA_SERIES,
            Mode::Rtp => RTP_SERIES,
        };
        let before = self.value(series)?;
        let drops_before = prom::udp_drops(self.listen.port()).unwrap_or(0);
        let report = rst_load::run(&Config {
            target: self.listen,
            calls: STEP_CALLS,
            duration: Duration::from_secs_f64(STEP_SECS),
            fast: true,
            rate: Some(rate),
            codec: Codec::Pcmu,
            mode,
            ..Config::default()
        })?;
        anyhow::ensure!(
            report.rtp_no_ports == 0,
            "udp_server answered RTP-mode INVs without ports:\n{report}"
        );
        // Settle: wait until the count reaches what was sent or stops moving.
        let sent = report.audio_sent();
        let expected = before + sent;
        let mut counted = self.value(series)?;
        let mut still = 0;
        let deadline = Instant::now() + Duration::from_secs(3);
        while counted < expected && still < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.value(series)?;
            still = if now == counted { still + 1 } else { 0 };
            counted = now;
        }
        let kernel_drops = (mode == Mode::Data).then(|| {
            prom::udp_drops(self.listen.port())
                .unwrap_or(0)
                .saturating_sub(drops_before)
        });
        if mode == Mode::Rtp {
            // The calls end (and free their ports) a moment after their BYE.
            std::thread::sleep(Duration::from_millis(300));
        }
        self.clear_recordings();
        Ok(Step {
            mode,
            offered: rate,
            achieved: report.data_rate(),
            sent,
            counted: counted - before,
            kernel_drops,
            lost_control: report.lost(),
        })
    }

    /// Deletes what the finished calls recorded, so steps do not fill the disk.
    fn clear_recordings(&self) {
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for entry in entries.flatten() {
                let path = entry.path();
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            }
        }
    }

    /// Kills the server and returns the tail of its log.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(50));
        let log = self.log.lock().expect("log lock");
        let tail = log.len().saturating_sub(40);
        log[tail..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> anyhow::Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

fn free_tcp_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}
