//! The pieces every mod_rst test needs: the module built, a real receiver
//! (udp_server) on 127.0.0.1, an rst.conf.xml pointing at it, and fs-testhost
//! driven one command at a time.
#![allow(dead_code)]

pub mod freeswitch;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver as Channel};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use udp_server::{Metrics, Settings};

/// The workspace's target folder: `CARGO_TARGET_DIR` (relative to the
/// workspace when relative) or `target/`.
pub fn target_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_relative() {
                workspace.join(dir)
            } else {
                dir
            }
        })
        .unwrap_or_else(|| workspace.join("target"))
}

/// `cargo build --quiet ARGS` in the workspace (a no-op when fresh); the
/// test fails with cargo's errors when it does.
pub fn cargo_build(args: &[&str]) {
    cargo(&[&["build", "--quiet"], args].concat());
}

/// A binary of the workspace (`udp_server`, `tap_daemon`), built as
/// `cargo test --workspace` builds it: after that command (CI's) a no-op. A
/// narrower `cargo build -p udp_server` resolves other features for the
/// dependencies it shares with the rest (the tests' dev-dependencies add
/// some), so it rebuilt them all (CI: two and a half minutes in the first
/// test that asked, and again for tap_daemon).
pub fn workspace_binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| cargo(&["test", "--workspace", "--no-run", "--quiet"]));
    target_dir().join("debug").join(name)
}

/// `cargo ARGS` in the workspace; the test fails with cargo's errors when it does.
fn cargo(args: &[&str]) {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut cargo = Command::new(env!("CARGO"));
    // Without what cargo set for this test (`CARGO_MANIFEST_DIR`, `OUT_DIR`,
    // `CARGO_PKG_*`, ...): `ring`'s build script reruns when those change, so
    // a build with them rebuilt ring and everything above it (udp_server too),
    // and the next plain `cargo` rebuilt them again: 40 s each time.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_by_cargo = ["CARGO_PKG_", "CARGO_BIN_EXE_", "CARGO_MANIFEST_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&&*name);
        if set_by_cargo {
            cargo.env_remove(&*name);
        }
    }
    let output = cargo
        .args(args)
        .current_dir(&workspace)
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Builds mod_rst once per test binary and returns the path of the cdylib.
pub fn module_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        cargo_build(&["-p", "mod_rst"]);
        let target = target_dir();
        let path = target.join("debug").join("libmod_rst.so");
        assert!(path.exists(), "{} was not built", path.display());
        path.canonicalize().unwrap()
    })
    .clone()
}

/// Builds the release cdylib for benchmarks (a no-op when fresh) and finds
/// it next to fs-testhost (the bench profile builds into the release
/// directory); `RST_BENCH_MODULE=PATH` uses that .so instead, unbuilt.
pub fn release_module_path() -> PathBuf {
    if let Some(path) = std::env::var_os("RST_BENCH_MODULE") {
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "RST_BENCH_MODULE={}: no such file",
            path.display()
        );
        return path.canonicalize().unwrap();
    }
    cargo_build(&["--release", "-p", "mod_rst"]);
    let beside_host = Path::new(env!("CARGO_BIN_EXE_fs-testhost"))
        .parent()
        .map(|dir| dir.join("libmod_rst.so"));
    let target = target_dir();
    let candidates: Vec<PathBuf> = beside_host
        .into_iter()
        .chain([target.join("release/libmod_rst.so")])
        .collect();
    let found = candidates
        .iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("libmod_rst.so not found in {candidates:?}"));
    found.canonicalize().unwrap()
}

/// A real receiver on 127.0.0.1 on a thread of its own (`udp_server::Running`).
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

    pub fn with(settings: Settings) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
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

    /// Waits until `count` records exist, then returns them, sorted by path.
    pub fn wait_records(&self, count: usize) -> Vec<Value> {
        wait_records(self.dir.path(), count)
    }

    /// The record of `uuid` (waits for it).
    pub fn record(&self, uuid: &str) -> Value {
        wait_for(&format!("the record of {uuid}"), || {
            records_in(self.dir.path())
                .into_iter()
                .find(|r| r["uuid"] == uuid)
        })
    }
}

impl Receiver {
    /// Stops the receiver (every open call ends as `shutdown`) and waits.
    pub fn stop(&mut self) {
        self.running.stop().unwrap();
    }
}

/// udp_server as its own process ([`workspace_binary`]),
/// recording into `dir`, on `addr` or a free port, with `args` added;
/// returned once it answers. The caller kills it.
pub fn spawn_udp_server(
    dir: &Path,
    addr: Option<SocketAddr>,
    args: &[&str],
) -> (Child, SocketAddr) {
    let udp_server = workspace_binary("udp_server");
    // A free port: bound and released (a tiny race, fine on a test machine).
    let addr = addr.unwrap_or_else(|| {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    });
    let child = Command::new(udp_server)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--record-dir")
        .arg(dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("udp_server starts");
    // Ready when it answers an INV... of a call that must not be recorded:
    // so probe with a BYE, which is ACKed without creating anything.
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    wait_for("udp_server to answer", || {
        probe.send_to(b"BYE :probe", addr).ok()?;
        let mut reply = [0u8; 64];
        // Only udp_server's answer: a stray datagram to a reused port is not it.
        let (_, from) = probe.recv_from(&mut reply).ok()?;
        (from == addr).then_some(())
    });
    (child, addr)
}

/// udp_server as its own process: what a load test sends to (a receiver in
/// the test's process would share its threads with the simulated calls). The
/// debug build, as the other tests': it kept all 60,000 frames of the 200-call
/// test, and a release build for it alone took CI five minutes.
pub struct ExternalReceiver {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl ExternalReceiver {
    pub fn start() -> ExternalReceiver {
        let dir = tempfile::tempdir().unwrap();
        let (child, addr) = spawn_udp_server(dir.path(), None, &[]);
        ExternalReceiver { addr, dir, child }
    }

    pub fn wait_records(&self, count: usize) -> Vec<Value> {
        wait_records(self.dir.path(), count)
    }
}

impl Drop for ExternalReceiver {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

pub use rst_test_support::wait_for;

/// Waits until `count` records exist under `dir`, then returns them, sorted by path.
pub fn wait_records(dir: &Path, count: usize) -> Vec<Value> {
    let records = wait_for(&format!("{count} records in {}", dir.display()), || {
        let records = records_in(dir);
        (records.len() >= count).then_some(records)
    });
    assert_eq!(records.len(), count, "records in {}", dir.display());
    records
}

/// Every finished JSON record under `dir`, sorted by path.
pub fn records_in(dir: &Path) -> Vec<Value> {
    let mut paths = files_in(dir, ".json");
    paths.sort();
    paths
        .iter()
        .filter_map(|p| serde_json::from_slice(&std::fs::read(p).ok()?).ok())
        .collect()
}

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

/// A CONF_DIR with `autoload_configs/rst.conf.xml` holding `params`.
pub fn conf_dir(params: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("autoload_configs")).unwrap();
    let mut xml =
        String::from("<configuration name=\"rst.conf\" description=\"rst test\">\n  <settings>\n");
    for (name, value) in params {
        xml.push_str(&format!("    <param name=\"{name}\" value=\"{value}\"/>\n"));
    }
    xml.push_str("  </settings>\n</configuration>\n");
    std::fs::write(dir.path().join("autoload_configs/rst.conf.xml"), xml).unwrap();
    dir
}

/// The configuration for `receiver`, with `extra` params.
pub fn conf_for(receiver: &Receiver, extra: &[(&str, &str)]) -> tempfile::TempDir {
    conf_for_addr(receiver.addr, extra)
}

pub fn conf_for_addr(addr: SocketAddr, extra: &[(&str, &str)]) -> tempfile::TempDir {
    let ip = addr.ip().to_string();
    let port = addr.port().to_string();
    let mut params = vec![
        ("udp-server-ip", ip.as_str()),
        ("udp-server-port", port.as_str()),
    ];
    params.extend_from_slice(extra);
    conf_dir(&params)
}

/// fs-testhost, driven a command at a time.
pub struct Host {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Channel<String>,
    /// Every answer so far (printed if a test fails).
    pub transcript: Vec<String>,
}

impl Host {
    pub fn start() -> Host {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fs-testhost"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("fs-testhost starts");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Host {
            child,
            stdin,
            lines,
            transcript: Vec::new(),
        }
    }

    /// Sends one command and returns its answer (waits up to 120 s: a hung
    /// module fails the test instead of hanging it).
    pub fn cmd(&mut self, command: &str) -> Value {
        let stdin = self.stdin.as_mut().expect("host running");
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        let line = match self.lines.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => line,
            Err(_) => {
                let _ = self.child.kill();
                panic!(
                    "fs-testhost gave no answer to {command:?} (hung or crashed: {:?})\ntranscript:\n{}",
                    self.child.try_wait(),
                    self.transcript.join("\n")
                );
            }
        };
        self.transcript.push(format!("> {command}\n{line}"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// Sends a command that must succeed and must not add violations.
    pub fn ok(&mut self, command: &str) -> Value {
        let answer = self.cmd(command);
        assert_eq!(answer["ok"], true, "{command}: {answer}");
        assert!(
            answer.get("violations").is_none(),
            "{command}: the module misbehaved: {}",
            answer["violations"]
        );
        answer
    }

    pub fn load(&mut self, conf: &Path) -> Value {
        let command = format!("load {} {}", module_path().display(), conf.display());
        self.ok(&command)
    }

    /// Ends the host; returns its last line (`quit`).
    pub fn quit(mut self) -> Value {
        let answer = self.cmd("quit");
        self.stdin.take();
        let _ = self.child.wait();
        answer
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ends a test: unload must be clean, no lock left, no callback after CLOSE,
/// no violation recorded at any point.
pub fn finish(mut host: Host) {
    let unloaded = host.ok("unload");
    assert_eq!(
        unloaded["orphaned_bugs"],
        serde_json::json!([]),
        "{unloaded}"
    );
    assert_eq!(
        unloaded["threads_left"],
        serde_json::json!([]),
        "{unloaded}"
    );
    let summary = host.ok("summary");
    assert_eq!(summary["locks_held"], 0, "{summary}");
    assert_eq!(summary["bad_unlocks"], 0, "{summary}");
    assert_eq!(summary["callbacks_after_close"], 0, "{summary}");
    assert_eq!(summary["events_unfired"], 0, "{summary}");
    assert_eq!(summary["xml_opened"], summary["xml_freed"], "{summary}");
    assert_eq!(summary["violation_count"], 0, "{summary}");
    assert_eq!(host.quit()["violations"], serde_json::json!([]));
}

/// A loaded host streaming to a fresh receiver.
pub fn setup(extra: &[(&str, &str)]) -> (Receiver, tempfile::TempDir, Host) {
    let receiver = Receiver::start();
    let conf = conf_for(&receiver, extra);
    let mut host = Host::start();
    host.load(conf.path());
    (receiver, conf, host)
}

pub fn session(host: &mut Host, u: &str) {
    host.ok(&format!(
        "session {u} caller_id_number=1001 destination_number=1002 codec=PCMU"
    ));
}

/// The host's test tone (src/g711.rs): sample `n` of a `hz` sine at `rate`,
/// computed over the tone's exact period for a whole `hz`.
pub fn tone_sample(hz: f64, amplitude: f64, rate: u32, n: u64) -> i16 {
    let n = if hz > 0.0 && hz.fract() == 0.0 {
        let (mut a, mut b) = (u64::from(rate), hz as u64);
        while b != 0 {
            (a, b) = (b, a % b);
        }
        n % (u64::from(rate) / a)
    } else {
        n
    };
    let phase = 2.0 * std::f64::consts::PI * hz * (n as f64) / f64::from(rate);
    (amplitude * phase.sin()).round() as i16
}

/// The tones the tests send: whole periods of one second, so that every frame
/// of a second differs and a lost, repeated or reordered frame shows.
/// The DATA datagrams `frames` frames of `bytes` each go in at the module's
/// default `frames-per-datagram` (`auto`, nobody listening): three to a
/// datagram (mod_rst's `config::AUTO_FRAMES`), as many as fit in
/// `MAX_GATHERED_PAYLOAD` bytes.
pub fn datagrams_by_default(frames: u64, bytes: usize) -> u64 {
    let fit = (rst_proto::stream::MAX_GATHERED_PAYLOAD / bytes).clamp(1, 3);
    frames.div_ceil(fit as u64)
}

pub const READ_HZ: f64 = 1013.0;
pub const WRITE_HZ: f64 = 487.0;

pub fn tone(hz: f64, amplitude: f64, rate: u32, first: u64, count: usize) -> Vec<i16> {
    (0..count as u64)
        .map(|i| tone_sample(hz, amplitude, rate, first + i))
        .collect()
}

/// G.711 µ-law encoding (the classic Sun reference).
pub fn ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    let mut pcm = i32::from(sample);
    let mask = if pcm < 0 {
        pcm = -pcm;
        0x7F
    } else {
        0xFF
    };
    pcm = (pcm + BIAS).min(32635 + BIAS);
    let segment = (0..8).find(|&s| pcm <= (0xFF << s)).unwrap_or(7);
    let byte = ((segment << 4) | ((pcm >> (segment + 3)) & 0xF)) as u8;
    byte ^ mask
}

/// G.711 A-law encoding (the classic Sun reference).
pub fn alaw(sample: i16) -> u8 {
    let mut pcm = i32::from(sample) >> 3;
    let mask = if pcm >= 0 {
        0xD5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    let segment = (0..8)
        .find(|&s| pcm <= (0x1F << s) | ((1 << s) - 1))
        .unwrap_or(8);
    let byte = if segment >= 8 {
        0x7F
    } else if segment < 2 {
        ((segment << 4) | ((pcm >> 1) & 0xF)) as u8
    } else {
        ((segment << 4) | ((pcm >> segment) & 0xF)) as u8
    };
    byte ^ mask
}

/// What a receiver decodes from the host's tone sent in `codec`.
pub fn heard(codec: &str, samples: &[i16]) -> Vec<i16> {
    match codec {
        "PCMU" => samples
            .iter()
            .map(|&s| rst_codec::g711::ulaw_to_linear(ulaw(s)))
            .collect(),
        "PCMA" => samples
            .iter()
            .map(|&s| rst_codec::g711::alaw_to_linear(alaw(s)))
            .collect(),
        _ => samples.to_vec(),
    }
}

/// The samples of a WAV, with its spec.
pub fn read_wav(path: &Path) -> (hound::WavSpec, Vec<i16>) {
    let reader = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let spec = reader.spec();
    (spec, reader.into_samples().map(Result::unwrap).collect())
}

/// The first WAV of direction `dir` ("R" or "W") of a record.
pub fn direction_wav(record: &Value, dir: &str) -> (hound::WavSpec, Vec<i16>) {
    let path = record["directions"][dir]["wav"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no {dir} wav in {record}"));
    read_wav(Path::new(path))
}

pub fn uuid(n: u32) -> String {
    format!("6f1c2a3b-8263-4550-b18c-{n:012x}")
}

/// Asserts `got` equals `expected` sample for sample, saying where it first differs.
pub fn assert_samples(what: &str, got: &[i16], expected: &[i16]) {
    if let Some(i) = got.iter().zip(expected).position(|(a, b)| a != b) {
        let from = i.saturating_sub(3);
        panic!(
            "{what}: first difference at sample {i}: got {:?}, expected {:?}",
            &got[from..(i + 5).min(got.len())],
            &expected[from..(i + 5).min(expected.len())]
        );
    }
    assert_eq!(got.len(), expected.len(), "{what}: length");
}

/// A WebSocket server that keeps every text message of every connection.
pub fn consumer() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<Vec<serde_json::Value>>>>,
) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("ws://{}/media", listener.local_addr().unwrap());
    let connections: std::sync::Arc<std::sync::Mutex<Vec<Vec<serde_json::Value>>>> =
        Default::default();
    let shared = connections.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let shared = shared.clone();
                tokio::spawn(async move {
                    use futures_util::StreamExt as _;
                    let mut socket = tokio_tungstenite::accept_async(tcp).await.unwrap();
                    let mut messages = Vec::new();
                    while let Some(Ok(message)) = socket.next().await {
                        if let Ok(text) = message.to_text() {
                            if let Ok(value) = serde_json::from_str(text) {
                                messages.push(value);
                            }
                        }
                    }
                    shared.lock().unwrap().push(messages);
                });
            }
        });
    });
    (url, connections)
}

/// What the bot does once a call's stream starts.
#[derive(Clone)]
pub struct Script {
    /// µ-law audio to say (sent at once, as text-to-speech services do).
    pub say: Vec<u8>,
    pub mark: Option<&'static str>,
    /// Barge in this long after starting to speak.
    pub clear_after: Option<std::time::Duration>,
}

/// A bot on 127.0.0.1: runs `script` on each stream and keeps what it got.
pub fn bot(
    script: Script,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<Vec<serde_json::Value>>>>,
) {
    use base64::Engine as _;
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("ws://{}/bot", listener.local_addr().unwrap());
    let got: std::sync::Arc<std::sync::Mutex<Vec<Vec<serde_json::Value>>>> = Default::default();
    let shared = got.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (shared, script) = (shared.clone(), script.clone());
                tokio::spawn(async move {
                    let socket = tokio_tungstenite::accept_async(tcp).await.unwrap();
                    let (mut write, mut read) = socket.split();
                    let mut messages = Vec::new();
                    let mut clear_at = None;
                    loop {
                        let sleep = async {
                            match clear_at {
                                Some(at) => tokio::time::sleep_until(at).await,
                                None => std::future::pending().await,
                            }
                        };
                        let message = tokio::select! {
                            message = read.next() => message,
                            () = sleep => {
                                clear_at = None;
                                let _ = write.send(Message::text(r#"{"event":"clear","streamSid":"x"}"#)).await;
                                continue;
                            }
                        };
                        let Some(Ok(message)) = message else { break };
                        let Ok(text) = message.to_text() else { continue };
                        let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
                            continue;
                        };
                        if value["event"] == "start" {
                            for chunk in script.say.chunks(160) {
                                let payload = base64::engine::general_purpose::STANDARD.encode(chunk);
                                let media = format!(r#"{{"event":"media","media":{{"payload":"{payload}"}}}}"#);
                                write.send(Message::text(media)).await.unwrap();
                            }
                            if let Some(mark) = script.mark {
                                let mark = format!(r#"{{"event":"mark","mark":{{"name":"{mark}"}}}}"#);
                                write.send(Message::text(mark)).await.unwrap();
                            }
                            clear_at = script.clear_after.map(|d| tokio::time::Instant::now() + d);
                        }
                        messages.push(value);
                    }
                    shared.lock().unwrap().push(messages);
                });
            }
        });
    });
    (url, got)
}
