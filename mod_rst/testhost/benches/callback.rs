//! The media thread's cost per frame in mod_rst's bug callback, against a bare
//! non-blocking `sendto` of the same datagram, measured in the same run:
//!
//! ```sh
//! cargo bench -p mod_rst_testhost --bench callback
//! ```
//!
//! The release `libmod_rst.so` runs in fs-testhost (one PCMU call, native tap,
//! DATA mode); `bench UUID FRAMES` runs its media ticks back to back
//! (TAP_NATIVE_READ + TAP_NATIVE_WRITE each), timing every callback as the host
//! always does (`Instant::now` before, `elapsed` after). The bare `sendto` is
//! timed the same way, here, from a non-blocking socket bound as the module's
//! (0.0.0.0:0), to the same receiver (a UDP socket on 127.0.0.1), with the
//! very bytes of a DATA datagram the module sent. The callback only queues the
//! frame for the module's sender thread; bursts stay under half the queue and
//! the run waits (untimed) for that thread between them, so no frame is
//! dropped and the figure is not flattered by drops: `rst_status` is reported.
//!
//! Environment: `RST_BENCH_MODULE` (a .so to use instead of building the
//! release one), `RST_BENCH_FRAMES` (default 200000), `RST_BENCH_QUEUE`
//! (queue-frames, default 4096, the module's default), `RST_BENCH_DRAIN=1` (a
//! thread reads the receiver; by default nobody does, and the kernel drops
//! what overflows its buffer, for the module's sends and the bare ones alike).

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "../tests/common/mod.rs"]
mod common;

const UUID: &str = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b";
const UUID_DOWN: &str = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4c";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench` (and maybe a filter); nothing to parse.
    let frames = env_usize("RST_BENCH_FRAMES", 200_000).max(1000);
    let queue = env_usize("RST_BENCH_QUEUE", 4096).clamp(16, 65536);
    let drain = std::env::var("RST_BENCH_DRAIN").is_ok_and(|v| v == "1");
    let started = Instant::now();

    let module = common::release_module_path();
    let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind the receiver");
    let addr = receiver.local_addr().unwrap();
    let conf = conf_dir(addr, queue);

    let mut host = Host::start();
    host.ok(&format!(
        "load {} {}",
        module.display(),
        conf.path().display()
    ));
    host.ok(&format!(
        "session {UUID} codec=PCMU caller_id_number=1001 destination_number=1002"
    ));
    host.ok(&format!("app {UUID} rst"));
    // Half the queue per burst: the sender thread is never more than that behind.
    let burst = queue / 2;
    let bench = |host: &mut Host, n: usize| host.ok(&format!("bench {UUID} {n} burst={burst}"));

    // Warm-up (the module's queue slots, caches, the tone cache), then the
    // datagram the module sends for a frame, off the receiver's socket.
    bench(&mut host, 20_000.min(frames));
    let datagram = first_data(&receiver);
    let stop = Arc::new(AtomicBool::new(false));
    let drainer = drain.then(|| spawn_drain(receiver.try_clone().unwrap(), stop.clone()));

    let sender = UdpSocket::bind("0.0.0.0:0").expect("bind the sender");
    sender.set_nonblocking(true).unwrap();
    let mut sends = Sends::default();
    sends.run(&sender, &datagram, addr, 20_000.min(frames)); // warm-up
    sends = Sends::default();

    // sendto, callbacks, sendto: neither gets the machine in a better state.
    sends.run(&sender, &datagram, addr, frames / 2);
    let callback = bench(&mut host, frames);
    sends.run(&sender, &datagram, addr, frames - frames / 2);

    // The same callbacks for a call whose receiver is down (nothing listens
    // on its port; the INV goes unanswered): they must cost what they cost
    // with the receiver up. Tests assert what happens then, this how fast.
    let down_port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .port();
    host.ok(&format!(
        "session {UUID_DOWN} codec=PCMU caller_id_number=1001 destination_number=1002"
    ));
    host.ok(&format!("app {UUID_DOWN} rst 127.0.0.1 {down_port}"));
    let down = host.ok(&format!(
        "bench {UUID_DOWN} {} burst={burst}",
        (frames / 4).max(1000)
    ));

    let status = host.ok("api rst_status");
    let counters: Value = status["output"]
        .as_str()
        .and_then(|t| serde_json::from_str(t.trim()).ok())
        .unwrap_or(Value::Null);
    host.ok(&format!("hangup {UUID}"));
    host.ok(&format!("hangup {UUID_DOWN}"));
    host.ok("unload");
    host.quit();
    stop.store(true, Ordering::SeqCst);
    let drained = drainer.map(|t| t.join().unwrap_or(0));

    let send = percentiles(&mut sends.samples);
    let cb = &callback["callback_ns"];
    let cb_mean = callback["callback_mean_ns"].as_f64().unwrap_or(f64::NAN);
    let send_mean = send.mean;
    let n = callback["callbacks"].as_u64().unwrap_or(0);
    let dropped = counters["frames_dropped_queue_full"].as_u64();
    let standins = &callback["standins_ns"];
    let timer = &callback["timer_ns"];

    let cb_p50 = cb["p50"].as_f64().unwrap_or(f64::NAN);
    let row = |name: &str, p50: f64, mean: f64, p99: f64, max: f64| {
        println!("  {name:<23}: {p50:>6.0} {mean:>7.0} {p99:>7.0} {max:>10.0}  ns/frame");
    };
    println!();
    println!(
        "mod_rst media-thread cost per frame (PCMU 20 ms, N={n}, queue-frames={queue}, bursts of {burst})"
    );
    println!(
        "  {:<23}  {:>6} {:>7} {:>7} {:>10}",
        "", "p50", "mean", "p99", "max"
    );
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    row(
        "bug callback",
        cb_p50,
        cb_mean,
        f(&cb["p99"]),
        f(&cb["max"]),
    );
    row(
        &format!("bare sendto ({} B)", datagram.len()),
        send.p50 as f64,
        send_mean,
        send.p99 as f64,
        send.max as f64,
    );
    println!(
        "  {:<23}: {:>6.3} {:>7.3}",
        "ratio callback/sendto",
        cb_p50 / send.p50 as f64,
        cb_mean / send_mean
    );
    let down_cb = &down["callback_ns"];
    let down_p50 = f(&down_cb["p50"]);
    row(
        "callback, receiver down",
        down_p50,
        down["callback_mean_ns"].as_f64().unwrap_or(f64::NAN),
        f(&down_cb["p99"]),
        f(&down_cb["max"]),
    );
    println!("  {:<23}: {:>6.3}", "ratio down/up", down_p50 / cb_p50);
    println!(
        "  {:<23}: {}",
        "frames dropped (queue)",
        dropped.map_or("unknown".to_owned(), |d| d.to_string())
    );
    println!("  details:");
    println!(
        "    both timed alike: Instant::now .. elapsed per call; an empty interval costs p50 {} ns (included above)",
        timer["p50"]
    );
    println!(
        "    of each callback, ~{:.0} ns (p50) is fs-testhost's get_native_read_frame + get_session (locked-map lookups; a field read in FreeSWITCH)",
        f(&standins["p50"]) - f(&timer["p50"])
    );
    println!(
        "    p50 is the figure to read on a shared machine; the mean carries preemptions (see max)"
    );
    println!(
        "    host loop incl. frame making and bookkeeping: {:.0} ns per callback; waits for the sender thread (untimed): {:.0} ms, {} timed out",
        callback["loop_ns_per_callback"].as_f64().unwrap_or(f64::NAN),
        callback["paused_ms"].as_f64().unwrap_or(f64::NAN),
        callback["pause_timeouts"]
    );
    // DATA:<uuid>:<dir>:<pt>:<len>: then the payload.
    let header = datagram
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b':')
        .nth(4)
        .map_or(0, |(i, _)| i + 1);
    println!(
        "    datagram: {:?} + {} B of PCMU ({} B); sendto errors {} of {}",
        String::from_utf8_lossy(&datagram[..header]),
        datagram.len() - header,
        datagram.len(),
        sends.errors,
        sends.samples.len()
    );
    match drained {
        Some(count) => println!("    receiver: drained by a thread, {count} datagrams read"),
        None => println!("    receiver: never read (the kernel drops what overflows its buffer)"),
    }
    println!("    rst_status: {counters}");
    println!("    whole bench: {:.1} s", started.elapsed().as_secs_f64());
    if dropped != Some(0) || callback["pause_timeouts"] != 0 {
        println!("  WARNING: frames were dropped or the sender thread did not keep up; the callback figure covers drops too");
    }
}

/// CONF_DIR with an rst.conf.xml: DATA mode, native audio, to `addr`.
fn conf_dir(addr: SocketAddr, queue: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("autoload_configs")).unwrap();
    let xml = format!(
        "<configuration name=\"rst.conf\" description=\"rst bench\">\n  <settings>\n\
         \x20   <param name=\"udp-server-ip\" value=\"{}\"/>\n\
         \x20   <param name=\"udp-server-port\" value=\"{}\"/>\n\
         \x20   <param name=\"mode\" value=\"data\"/>\n\
         \x20   <param name=\"audio\" value=\"native\"/>\n\
         \x20   <param name=\"queue-frames\" value=\"{queue}\"/>\n\
         \x20 </settings>\n</configuration>\n",
        addr.ip(),
        addr.port()
    );
    std::fs::write(dir.path().join("autoload_configs/rst.conf.xml"), xml).unwrap();
    dir
}

/// The first DATA datagram of the read direction waiting on `receiver`.
fn first_data(receiver: &UdpSocket) -> Vec<u8> {
    receiver
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match receiver.recv_from(&mut buffer) {
            Ok((len, _)) => {
                let datagram = &buffer[..len];
                if datagram.starts_with(format!("DATA:{UUID}:R:").as_bytes()) {
                    return datagram.to_vec();
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("receiver: {e}"),
        }
    }
    panic!("the module sent no DATA datagram to the receiver");
}

fn spawn_drain(socket: UdpSocket, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        let mut count = 0u64;
        while !stop.load(Ordering::SeqCst) {
            if socket.recv_from(&mut buffer).is_ok() {
                count += 1;
            }
        }
        count
    })
}

#[derive(Default)]
struct Sends {
    samples: Vec<u64>,
    errors: u64,
}

impl Sends {
    /// `n` non-blocking sends of `datagram`, each timed as the host times a callback.
    fn run(&mut self, socket: &UdpSocket, datagram: &[u8], to: SocketAddr, n: usize) {
        self.samples.reserve(n);
        for _ in 0..n {
            let started = Instant::now();
            let sent = socket.send_to(std::hint::black_box(datagram), to);
            self.samples.push(started.elapsed().as_nanos() as u64);
            if sent.is_err() {
                self.errors += 1;
            }
        }
    }
}

struct Summary {
    mean: f64,
    p50: u64,
    p99: u64,
    max: u64,
}

fn percentiles(samples: &mut [u64]) -> Summary {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Summary {
        mean: samples.iter().map(|&s| s as f64).sum::<f64>() / samples.len() as f64,
        p50: at(0.5),
        p99: at(0.99),
        max: samples[samples.len() - 1],
    }
}

/// fs-testhost, a command at a time.
struct Host {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Host {
    fn start() -> Host {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fs-testhost"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("fs-testhost starts");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Host {
            child,
            stdin,
            stdout,
        }
    }

    fn cmd(&mut self, command: &str) -> Value {
        let stdin = self.stdin.as_mut().expect("host running");
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        let read = self.stdout.read_line(&mut line).unwrap_or(0);
        assert!(read > 0, "fs-testhost died at {command:?}");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// A command that must succeed; violations by the module are shown, not fatal.
    fn ok(&mut self, command: &str) -> Value {
        let answer = self.cmd(command);
        assert_eq!(answer["ok"], true, "{command}: {answer}");
        if let Some(violations) = answer.get("violations") {
            eprintln!("fs-testhost: the module misbehaved at {command:?}: {violations}");
        }
        answer
    }

    fn quit(mut self) {
        let _ = self.cmd("quit");
        self.stdin.take();
        let _ = self.child.wait();
    }
}
