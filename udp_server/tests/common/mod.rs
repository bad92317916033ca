//! A real receiver on 127.0.0.1 in a background runtime, a sender that speaks the
//! protocol over a real UDP socket, and readers for what lands on disk.
#![allow(dead_code)]

pub mod consumer;
pub mod seaweed;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rst_proto::{Data, Direction, Extensions, Inv, Message, PayloadType, RtpPacket, Uuid};
use udp_server::{Metrics, Settings};

pub struct Receiver {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub metrics: Arc<Metrics>,
    running: udp_server::Running,
}

impl Receiver {
    pub fn start() -> Receiver {
        Receiver::with(Settings::default())
    }

    /// A receiver with `settings` over the test defaults (port 0, a fresh folder).
    pub fn with(settings: Settings) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        Receiver::in_dir(settings, dir)
    }

    pub fn in_dir(settings: Settings, dir: tempfile::TempDir) -> Receiver {
        let base = Settings {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            record_dir: Some(dir.path().to_owned()),
            ..Settings::default()
        };
        let running = udp_server::Running::start(settings.over(base).resolve().unwrap())
            .expect("the receiver starts");
        Receiver {
            addr: running.addr(),
            metrics: running.metrics().clone(),
            dir,
            running,
        }
    }

    /// Stops the receiver the way SIGTERM does and waits until its files are complete.
    pub fn stop(&mut self) {
        self.running.stop().unwrap();
    }

    /// Waits until `count` records exist, then returns them, sorted by path.
    pub fn wait_records(&self, count: usize) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let records = records_in(self.dir.path());
            if records.len() >= count || std::time::Instant::now() > deadline {
                assert_eq!(
                    records.len(),
                    count,
                    "records in {}",
                    self.dir.path().display()
                );
                return records;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The HTTP port's address, when `http` was set.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.running.http_addr()
    }

    pub fn counter(&self, line_start: &str) -> u64 {
        metric(&self.metrics.render(), line_start)
    }
}

/// The value of the first line of a Prometheus text that starts with `line_start`.
pub fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|line| {
            line.starts_with(line_start) && line.as_bytes().get(line_start.len()) == Some(&b' ')
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_start} in\n{text}"))
}

/// Every finished JSON record under `dir`, sorted by path.
pub fn records_in(dir: &Path) -> Vec<serde_json::Value> {
    let mut paths = files_in(dir, ".json");
    paths.sort();
    paths
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

/// Every file under `dir` (one level of day folders) whose name ends with `suffix`.
pub fn files_in(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_in(&path, suffix));
        } else if path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    found
}

pub struct Sender {
    pub socket: UdpSocket,
    target: SocketAddr,
    buffer: Vec<u8>,
}

impl Sender {
    pub fn new(target: SocketAddr) -> Sender {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        Sender {
            socket,
            target,
            buffer: Vec::new(),
        }
    }

    pub fn send_raw(&self, datagram: &[u8]) {
        self.socket.send_to(datagram, self.target).unwrap();
    }

    pub fn send(&mut self, message: Message<'_>) {
        self.buffer.clear();
        message.encode(&mut self.buffer).unwrap();
        self.socket.send_to(&self.buffer, self.target).unwrap();
    }

    pub fn inv(&mut self, uuid: &str, caller: &str, callee: &str) {
        self.inv_with(uuid, caller, callee, Extensions::NONE)
    }

    pub fn inv_with(&mut self, uuid: &str, caller: &str, callee: &str, extensions: Extensions<'_>) {
        let uuid = Uuid::new(uuid).unwrap();
        self.send(Message::Inv(Inv {
            uuid,
            caller,
            callee,
            rtp_ports: None,
            extensions,
        }));
        self.expect_ack(uuid.as_str());
    }

    pub fn data(&mut self, uuid: &str, direction: Direction, pt: u8, payload: &[u8]) {
        let uuid = Uuid::new(uuid).unwrap();
        let payload_type = PayloadType::new(pt).unwrap();
        self.send(Message::Data(Data {
            uuid,
            direction,
            payload_type,
            payload,
        }));
    }

    pub fn bye(&mut self, uuid: &str) {
        let uuid = Uuid::new(uuid).unwrap();
        self.send(Message::Bye(rst_proto::Bye { uuid }));
        self.expect_ack(uuid.as_str());
    }

    /// Waits for the ACK, as long as a busy machine may need.
    pub fn expect_ack(&self, uuid: &str) {
        let reply = self
            .receive_within(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no ACK for {uuid}"));
        assert_eq!(reply, format!("ACK :{uuid}").into_bytes());
    }

    /// A datagram from the receiver, or `None` after half a second: for
    /// checking that nothing comes (a refusal is silent).
    pub fn receive(&self) -> Option<Vec<u8>> {
        self.receive_within(Duration::from_millis(500))
    }

    /// A datagram from the receiver within `timeout`. Datagrams from
    /// elsewhere are skipped: tests run side by side, and one test's RTP
    /// sent to a port its receiver has closed reaches whichever socket
    /// binds that port next, such as this one (CI saw one in place of an ACK).
    pub fn receive_within(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut reply = [0u8; 2048];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            self.socket
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.socket.recv_from(&mut reply) {
                Ok((len, from)) if from == self.target => return Some(reply[..len].to_vec()),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}

/// `seconds` of a sine at `frequency` Hz, amplitude `amplitude`, at `rate` Hz.
pub fn tone(frequency: f64, amplitude: f64, rate: u32, seconds: f64) -> Vec<i16> {
    let count = (f64::from(rate) * seconds).round() as usize;
    (0..count)
        .map(|n| {
            (amplitude
                * (2.0 * std::f64::consts::PI * frequency * n as f64 / f64::from(rate)).sin())
            .round() as i16
        })
        .collect()
}

/// The share of `samples`' energy at `hz` (Goertzel): near 1 for a pure tone.
pub fn tone_share(hz: f64, rate: u32, samples: &[i16]) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / f64::from(rate);
    let (mut s1, mut s2, mut energy) = (0.0f64, 0.0f64, 0.0f64);
    for &x in samples {
        let x = f64::from(x);
        energy += x * x;
        let s = x + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2) / (energy * samples.len() as f64 / 2.0)
}

#[allow(unused_imports)] // not every test binary encodes
pub use rst_codec::{linear_to_alaw as alaw, linear_to_ulaw as ulaw};

/// The samples of a mono or stereo WAV, with its spec.
pub fn read_wav(path: &Path) -> (hound::WavSpec, Vec<i16>) {
    let reader = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let spec = reader.spec();
    (spec, reader.into_samples().map(Result::unwrap).collect())
}

/// `sox --i` must accept the file: the independent check that it is a valid WAV.
pub fn assert_sox_accepts(path: &Path) {
    let output = Command::new("sox")
        .arg("--i")
        .arg(path)
        .output()
        .expect("sox is installed (apt-get install sox)");
    assert!(
        output.status.success(),
        "sox --i {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// What sox makes of raw G.711 bytes: the independent decoder for expected samples.
pub fn sox_decode(kind: &str, bytes: &[u8]) -> Vec<i16> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.raw");
    let output = dir.path().join("out.raw");
    std::fs::write(&input, bytes).unwrap();
    let status = Command::new("sox")
        .args(["-t", kind, "-r", "8000", "-c", "1"])
        .arg(&input)
        .args(["-t", "s16", "-r", "8000", "-c", "1"])
        .arg(&output)
        .status()
        .expect("sox is installed");
    assert!(status.success());
    std::fs::read(&output)
        .unwrap()
        .chunks(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// The sample a ramp call sends at the call's sample `i` (R; W is its negative):
/// every sample of a joined call can be told from its place.
pub fn ramp(i: usize) -> i16 {
    (i % 20_000) as i16 + 1
}

/// `frames` 20 ms frames of the L16 ramp from the call's frame `first` on, in real time.
pub fn send_ramp(sender: &mut Sender, id: &str, first: usize, frames: usize) {
    let started = std::time::Instant::now();
    for f in 0..frames {
        let due = started + Duration::from_millis(20 * (f as u64 + 1));
        std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        let at = (first + f) * 160;
        let r: Vec<u8> = (at..at + 160).flat_map(|i| ramp(i).to_le_bytes()).collect();
        let w: Vec<u8> = (at..at + 160)
            .flat_map(|i| (-ramp(i)).to_le_bytes())
            .collect();
        sender.data(id, Direction::Read, 10, &r);
        sender.data(id, Direction::Write, 10, &w);
    }
}

/// A call of two ramp parts joined by `assemble`: frames 0..50 and 75..125
/// (part 2 at 1500 ms), 0.5 s of silence between, in R, W (negated) and
/// stereo; the summary lists two parts and the gap.
pub fn assert_joined_ramp(summary: &serde_json::Value, out: &Path, id: &str) {
    assert_eq!(summary["parts"].as_array().unwrap().len(), 2, "{summary}");
    for (direction, sign) in [("R", 1i16), ("W", -1)] {
        let (spec, samples) = read_wav(&out.join(format!("{id}.{direction}.wav")));
        assert_eq!(spec.sample_rate, 8000);
        let mut expected: Vec<i16> = (0..8000).map(|i| sign * ramp(i)).collect();
        expected.extend([0; 4000]);
        expected.extend((12_000..20_000).map(|i| sign * ramp(i)));
        assert_eq!(samples.len(), expected.len(), "{direction}");
        let wrong = samples
            .iter()
            .zip(&expected)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(wrong, 0, "{direction}: {wrong} samples differ");
        assert_eq!(
            summary["directions"][direction]["gaps"],
            serde_json::json!([{"start": 8000, "samples": 4000}])
        );
    }
    let (spec, stereo) = read_wav(&out.join(format!("{id}.stereo.wav")));
    assert_eq!((spec.channels, stereo.len()), (2, 40_000));
}

/// Waits (120 s at most) until `done` holds; fails with `what()`, which
/// says what did not happen (read when it fails, so it can show the state).
pub fn wait_until(what: impl Fn() -> String, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{}", what());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (120 s at most) until the receiver's counter `metric` reaches `at_least`.
pub fn wait_counter(receiver: &Receiver, metric: &str, at_least: u64) {
    let what = || {
        format!(
            "{metric} stayed below {at_least}: {}",
            receiver.counter(metric)
        )
    };
    wait_until(what, || receiver.counter(metric) >= at_least);
}

/// Waits (120 s at most) until the receiver's gauge `metric` falls to `at_most`.
pub fn wait_gauge_at_most(receiver: &Receiver, metric: &str, at_most: u64) {
    let what = || {
        format!(
            "{metric} stayed above {at_most}: {}",
            receiver.counter(metric)
        )
    };
    wait_until(what, || receiver.counter(metric) <= at_most);
}

/// A free TCP port on 127.0.0.1 for a receiver process's `--metrics`.
pub fn free_metrics_addr() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

/// The Prometheus text at `addr` (`--metrics`), or `None` while nothing answers there.
pub fn try_scrape(addr: SocketAddr) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The Prometheus text at `addr` (`--metrics`).
pub fn scrape(addr: SocketAddr) -> String {
    try_scrape(addr).unwrap_or_else(|| panic!("no metrics at {addr}"))
}

/// Waits (120 s at most) until a receiver process's counter `metric`, scraped
/// from `addr`, reaches `at_least`.
pub fn wait_scraped(addr: SocketAddr, metric: &str, at_least: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let now = try_scrape(addr).map(|text| self::metric(&text, metric));
        if now.is_some_and(|value| value >= at_least) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{metric} at {addr} stayed below {at_least}: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn uuid(n: u32) -> String {
    format!("478525a8-8263-4550-b18c-{n:012x}")
}

pub fn path_of(record: &serde_json::Value, pointer: &str) -> PathBuf {
    PathBuf::from(
        record
            .pointer(pointer)
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("{pointer} in {record}")),
    )
}

/// A sender in RTP mode: the control socket plus one socket per direction.
pub struct RtpSender {
    pub control: Sender,
    pub read: UdpSocket,
    pub write: UdpSocket,
}

impl RtpSender {
    pub fn new(target: SocketAddr) -> Self {
        RtpSender {
            control: Sender::new(target),
            read: UdpSocket::bind("127.0.0.1:0").unwrap(),
            write: UdpSocket::bind("127.0.0.1:0").unwrap(),
        }
    }

    /// Sends the RTP-mode INV; returns the server's ports from the ACK, if answered.
    pub fn inv(&mut self, uuid: &str, extensions: &str) -> Option<(u16, u16)> {
        let ports = rst_proto::RtpPorts {
            read: self.read.local_addr().unwrap().port(),
            write: self.write.local_addr().unwrap().port(),
        };
        self.control.send(Message::Inv(Inv {
            uuid: Uuid::new(uuid).unwrap(),
            caller: "alice",
            callee: "bob",
            rtp_ports: Some(ports),
            extensions: Extensions::parse(extensions).unwrap(),
        }));
        let reply = self.control.receive_within(Duration::from_secs(5))?;
        let Ok(Message::Ack(ack)) = Message::parse(&reply) else {
            panic!("not an ACK: {reply:?}")
        };
        assert_eq!(ack.uuid.as_str(), uuid);
        let server = ack
            .rtp_ports
            .expect("an RTP-mode INV is answered with ports");
        Some((server.read, server.write))
    }
}

pub fn rtp(sequence: u16, timestamp: u32, ssrc: u32, payload_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    RtpPacket {
        marker: false,
        payload_type,
        sequence,
        timestamp,
        ssrc,
        payload,
    }
    .encode(&mut bytes);
    bytes
}

/// The receiver binary with `args`, recording into `dir`, at most `max_files`
/// open files (`ulimit -n`) when given: its child (the caller waits for it)
/// and its log lines, through the channel as it writes them.
#[allow(clippy::zombie_processes)]
pub fn spawn_process(
    args: &[&str],
    dir: &Path,
    max_files: Option<u32>,
) -> (Process, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead as _;
    let limit = max_files.map_or(String::from("true"), |n| format!("ulimit -n {n}"));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("{limit} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_udp_server"))
        .args(args)
        .arg("--record-dir")
        .arg(dir)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    (Process(child), rx)
}

/// A child process that is killed when dropped: a test that fails midway
/// leaves no receiver behind (holding its ports, or the pipe of whoever ran
/// the suite).
pub struct Process(pub std::process::Child);

impl std::ops::Deref for Process {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The receiver binary on a free loopback port, with `args` (see
/// [`spawn_process`]): its child and the address it said it listens on.
pub fn spawn_receiver_process(
    dir: &Path,
    args: &[&str],
    max_files: Option<u32>,
) -> (Process, SocketAddr) {
    let (child, addr, _, _) = spawn_receiver_process_logged(dir, args, max_files);
    (child, addr)
}

/// [`spawn_receiver_process`], with the receiver's log: the lines up to its
/// address, and the others as they come.
pub fn spawn_receiver_process_logged(
    dir: &Path,
    args: &[&str],
    max_files: Option<u32>,
) -> (
    Process,
    SocketAddr,
    Vec<String>,
    std::sync::mpsc::Receiver<String>,
) {
    let mut all = vec!["--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let (child, lines) = spawn_process(&all, dir, max_files);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines
            .recv_timeout(left)
            .expect("the receiver printed its address");
        if let Some(rest) = line.split("listening on ").nth(1) {
            let addr = rest.split(' ').next().unwrap().parse().unwrap();
            seen.push(line);
            return (child, addr, seen, lines);
        }
        seen.push(line);
    }
}

/// The path of `program` (on `PATH`, or one of `candidates`), or `None` when
/// it is not installed: the test then says SKIPPED and why, except under CI
/// (`CI` set, as `.ci/run` does), where it fails instead.
pub fn installed(program: &str, candidates: &[&str]) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(program))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let found = candidates
        .iter()
        .map(PathBuf::from)
        .chain(on_path)
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        let why = format!("{program} is not installed (scripts/setup.sh --test installs it)");
        assert!(std::env::var_os("CI").is_none(), "{why}: CI must not skip");
        eprintln!("SKIPPED: {why}");
    }
    found
}
