//! The daemon live, on a real interface: two network namespaces made for the
//! test, joined by a veth pair (`veth-a` in A, `veth-b` in B, link-local
//! addresses; nothing leaves the host). The `tap_daemon` binary captures on
//! `veth-a` inside A (`ip netns exec`) and sends every call to a real
//! receiver (udp_server, in this process) whose thread has entered A, on
//! 127.0.0.1 there. `dumpcap` records `veth-a` beside it: what was on the
//! wire, read back with tshark, is what the recordings are checked against.
//!
//! * `live_sipp_calls_are_recorded`: a sipp UAS in A (tests/live/uas.xml), the
//!   built-in `uac_pcap` UAC in B places 3 calls that play sipp's g711a.pcap
//!   and a DTMF '1' (RFC 4733) from B to A.
//! * `live_tcpreplay_of_a_capture_is_recorded`: tcpreplay sends a capture
//!   out of `veth-b`; the daemon captures it promiscuously on `veth-a` (the
//!   frames' MACs and addresses are not A's).
//!
//! They need root (namespaces, raw sockets) and print SKIPPED without it, or
//! without sipp, tshark/dumpcap, tcpreplay or the captures. The namespaces
//! are named after the test and this process's id and are deleted at the
//! end, also on failure (a Drop guard), as is every child process.

mod common;
#[path = "live/netns.rs"]
mod netns;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    capture, dtmf_digits, expected_samples, read_wav, rtp_packets, stream_packets, RtpRow,
};
use netns::{logged, Netns, Pair, Proc, Unmade};

/// The two ends of the veth pair (the namespaces are the test's own, so the
/// addresses cannot clash with anything).
const A_ADDR: &str = "169.254.77.1";
const B_ADDR: &str = "169.254.77.2";

// ---------------------------------------------------------------- namespaces

/// The pair, named after `tag` and this process, or None (after a loud
/// SKIPPED for `test`) without the right to make it.
fn pair(test: &str, tag: &str) -> Option<Pair> {
    let tag = format!("rst-live-{}-{tag}", std::process::id());
    match Pair::new(&tag, A_ADDR, B_ADDR) {
        Ok(pair) => Some(pair),
        Err(Unmade::NoRight(e)) => {
            eprintln!("SKIPPED {test}: needs root (CI runs as root): {e}");
            None
        }
        Err(e @ Unmade::Failed(_)) => panic!("{test}: {e}"),
    }
}

/// The first tool of `tools` that cannot be started.
fn missing(tools: &[&str]) -> Option<String> {
    tools
        .iter()
        .find(|tool| {
            Command::new(tool)
                .arg(if **tool == "tcpreplay" { "-V" } else { "-v" })
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        })
        .map(|tool| tool.to_string())
}

/// The test's folder (logs, the wire capture): removed at the end, unless
/// RST_LIVE_KEEP is set (its path is printed then).
#[derive(Debug)]
struct Work {
    _temp: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Work {
    fn path(&self) -> &Path {
        &self.path
    }
}

fn workdir() -> Work {
    let dir = tempfile::Builder::new()
        .prefix("rst-live-")
        .tempdir()
        .unwrap();
    let path = dir.path().to_owned();
    if std::env::var_os("RST_LIVE_KEEP").is_some() {
        eprintln!("keeping {}", path.display());
        let _ = dir.keep();
        return Work { _temp: None, path };
    }
    Work {
        _temp: Some(dir),
        path,
    }
}

// ---------------------------------------------------------------- processes

/// Whether the process `pid` sees UDP `port` bound (in its own namespace).
fn udp_port_bound(pid: u32, port: u16) -> bool {
    let needle = format!(":{port:04X}");
    std::fs::read_to_string(format!("/proc/{pid}/net/udp"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|line| {
            line.split_whitespace()
                .nth(1)
                .is_some_and(|local| local.ends_with(&needle))
        })
}

/// dumpcap on an interface of a namespace, into `dir/wire.pcapng`.
fn dumpcap(ns: &Netns, interface: &str, dir: &Path) -> (Proc, PathBuf) {
    let file = dir.join("wire.pcapng");
    let mut proc = Proc::spawn(
        ns,
        "dumpcap",
        "dumpcap",
        &[
            "-i".into(),
            interface.into(),
            "-w".into(),
            file.display().to_string(),
        ],
        dir,
    );
    proc.wait_for_log("Capturing on", Duration::from_secs(15), || false)
        .unwrap_or_else(|e| panic!("{e}"));
    (proc, file)
}

/// The tap_daemon binary capturing on veth-a inside A.
fn tap_daemon(ns: &Netns, receiver: SocketAddr, dir: &Path) -> Proc {
    let mut proc = Proc::spawn(
        ns,
        "tap_daemon",
        env!("CARGO_BIN_EXE_tap_daemon"),
        &[
            "--interface".into(),
            "veth-a".into(),
            "--receiver".into(),
            receiver.to_string(),
            "--stats-interval".into(),
            "1".into(),
        ],
        dir,
    );
    proc.wait_for_log("capture open", Duration::from_secs(15), || false)
        .unwrap_or_else(|e| panic!("{e}"));
    proc
}

/// How long the daemon may take to end after SIGTERM (it sends a BYE for
/// every call still open and waits for the ACKs).
const STOP_WITHIN: Duration = Duration::from_secs(5);

/// Stops the daemon with SIGTERM (it ends every call) and returns its log.
/// The wire is quiet by then; a daemon still running after [`STOP_WITHIN`]
/// is a defect (noted in `defects`), and it is then woken by datagrams sent
/// across the veth from B, so that the rest of the test still runs.
fn stop_daemon(daemon: &mut Proc, net: &Pair, defects: &mut Vec<String>) -> String {
    daemon.terminate();
    let asked = Instant::now();
    let mut status = daemon.wait(STOP_WITHIN);
    if status.is_none() {
        defects.push(format!(
            "tap_daemon did not exit within {STOP_WITHIN:?} of SIGTERM on a quiet interface \
             (it went on only once a packet arrived: its capture thread stays blocked in \
             pcap's next_packet, whose 100 ms read timeout never fires)"
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while status.is_none() && Instant::now() < deadline {
            net.poke();
            status = daemon.wait(Duration::from_millis(200));
        }
    }
    let Some(status) = status else {
        panic!(
            "tap_daemon still running 15 s after SIGTERM\n{}",
            daemon.tail()
        );
    };
    eprintln!("tap_daemon exited {:.1?} after SIGTERM", asked.elapsed());
    let log = daemon.log();
    assert!(status.success(), "tap_daemon: {status}\n{}", daemon.tail());
    for line in log.lines() {
        if line.contains("pcap at the end") || line.contains(" done") {
            eprintln!("tap_daemon: {}", line.trim());
        }
    }
    if let Some(last) = log.lines().rev().find(|l| l.contains("counters")) {
        eprintln!("tap_daemon: {}", last.trim());
    }
    assert!(
        !log.contains("ERROR") && !log.contains("panicked"),
        "tap_daemon logged an error\n{}",
        daemon.tail()
    );
    // What the daemon forwarded it sent: its own counters must agree.
    let forwarded = logged(&log, "counters", "rtp_forwarded");
    let sent = logged(&log, "counters", "rtp_sent");
    if forwarded != sent {
        defects.push(format!(
            "tap_daemon's final rtp_sent ({sent:?}) is not its rtp_forwarded ({forwarded:?}), \
             though the receiver got every forwarded packet (RTP held until the INV's ACK \
             is sent uncounted)"
        ));
    }
    log
}

/// Fails with every defect found, once everything else has been checked.
fn assert_no_defects(name: &str, defects: &[String]) {
    assert!(
        defects.is_empty(),
        "{name}: everything else passed, but:\n- {}",
        defects.join("\n- ")
    );
}

// ---------------------------------------------------------------- receiver

/// A real receiver, on 127.0.0.1 inside a namespace: started from a thread
/// in that namespace, so every thread it makes lives there too.
#[derive(Debug)]
struct Receiver {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    running: udp_server::Running,
}

impl Receiver {
    fn start_in(ns: &Netns, rtp_ports: &str) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let settings = udp_server::Settings {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            record_dir: Some(dir.path().to_owned()),
            rtp_ports: Some(rtp_ports.parse().unwrap()),
            ..udp_server::Settings::default()
        };
        let config = settings.resolve().unwrap();
        let name = ns.name.clone();
        let running = std::thread::spawn(move || {
            netns::enter(&name)?;
            udp_server::Running::start(config)
        })
        .join()
        .unwrap()
        .expect("the receiver starts in the namespace");
        Receiver {
            addr: running.addr(),
            dir,
            running,
        }
    }

    /// Every record that reads as JSON (one being written is skipped).
    fn records(&self) -> Vec<serde_json::Value> {
        let mut found = Vec::new();
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
                let path = file.path();
                if path.extension().is_some_and(|e| e == "json") {
                    if let Ok(value) = serde_json::from_slice(&std::fs::read(&path).unwrap()) {
                        found.push(value);
                    }
                }
            }
        }
        found
    }

    /// Waits (bounded) until `count` records exist.
    fn wait_records(&self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.records().len() < count && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) for the `expected` records (the daemon's BYEs at its
    /// stop end the calls still open), stops the receiver and returns its
    /// records keyed by Call-ID.
    fn finish(&mut self, expected: usize) -> HashMap<String, serde_json::Value> {
        self.wait_records(expected, Duration::from_secs(10));
        self.running.stop().unwrap();
        self.records()
            .into_iter()
            .map(|r| {
                let key = r["call_id"]
                    .as_str()
                    .or(r["uuid"].as_str())
                    .unwrap()
                    .to_owned();
                (key, r)
            })
            .collect()
    }
}

// ---------------------------------------------------------------- tshark

/// A SIP dialog with SDP on both sides, as tshark reads it.
#[derive(Debug, Clone, Default)]
struct Dialog {
    caller: String,
    callee: String,
    /// The offer's media address (the INVITE's SDP), `ip:port`.
    offer: String,
    /// The answer's (the 200 OK's).
    answer: String,
}

fn dialogs(file: &Path) -> HashMap<String, Dialog> {
    let text = common::tshark(&[
        "-n",
        "-r",
        file.to_str().unwrap(),
        "-Y",
        "sdp",
        "-T",
        "fields",
        "-E",
        "occurrence=f",
        "-e",
        "sip.Call-ID",
        "-e",
        "sip.Method",
        "-e",
        "sip.Status-Code",
        "-e",
        "sip.from.user",
        "-e",
        "sip.to.user",
        "-e",
        "sdp.connection_info.address",
        "-e",
        "sdp.media.port",
    ]);
    let mut dialogs: HashMap<String, Dialog> = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 7 {
            continue;
        }
        let d = dialogs.entry(f[0].to_owned()).or_default();
        let media = format!("{}:{}", f[5], f[6]);
        if f[1] == "INVITE" && d.offer.is_empty() {
            d.caller = f[3].to_owned();
            d.callee = f[4].to_owned();
            d.offer = media;
        } else if f[2] == "200" && d.answer.is_empty() {
            d.answer = media;
        }
    }
    dialogs
}

// ---------------------------------------------------------------- expected audio

/// Distinct (SSRC, sequence number) pairs: the packets a receiver counts.
fn distinct(rows: &[&RtpRow]) -> usize {
    let mut keys: Vec<(u32, u16)> = rows.iter().map(|r| (r.ssrc, r.seq)).collect();
    keys.sort_unstable();
    keys.dedup();
    keys.len()
}

// ---------------------------------------------------------------- sipp

/// Where Debian's sip-tester keeps the captures `uac_pcap` plays as `pcap/*`.
const SIPP_PCAPS: &str = "/usr/share/sip-tester";
/// Calls the UAC places (one a second).
const CALLS: usize = 3;

fn sipp(ns: &Netns, name: &str, dir: &Path, args: &[String]) -> Proc {
    let mut all: Vec<String> = args.to_vec();
    all.extend(
        ["-nostdin", "-timeout", "40s", "-trace_err", "-trace_screen"]
            .iter()
            .map(|s| s.to_string()),
    );
    Proc::spawn(ns, name, "sipp", &all, dir)
}

/// The live tests run one at a time: each has real-time captures (the tap's and
/// a reference one) that lose packets when they compete for two cores.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn live_sipp_calls_are_recorded() {
    const NAME: &str = "live_sipp_calls_are_recorded";
    let _one_at_a_time = one_at_a_time();
    if let Some(tool) = missing(&["sipp", "tshark", "dumpcap"]) {
        eprintln!("SKIPPED {NAME}: {tool} not found (apt-get install sip-tester tshark)");
        return;
    }
    let audio_pcap = Path::new(SIPP_PCAPS).join("g711a.pcap");
    if !audio_pcap.exists() {
        eprintln!(
            "SKIPPED {NAME}: no {} (apt-get install sip-tester)",
            audio_pcap.display()
        );
        return;
    }
    let began = Instant::now();
    let Some(net) = pair(NAME, "sipp") else {
        return;
    };
    let work = workdir();
    std::os::unix::fs::symlink(SIPP_PCAPS, work.path().join("pcap")).unwrap();

    // What sipp plays, read independently: g711a.pcap's RTP.
    let played = rtp_packets(&audio_pcap, &["-o", "rtp.heuristic_rtp:TRUE"]);
    assert_eq!(played.len(), 1, "RTP flows in {}", audio_pcap.display());
    let played: Vec<RtpRow> = played.into_values().flatten().collect();
    assert_eq!(played.len(), 236, "RTP packets in {}", audio_pcap.display());

    let mut receiver = Receiver::start_in(&net.a, "20000-20099");
    let (mut wire, wire_file) = dumpcap(&net.a, "veth-a", work.path());
    let mut daemon = tap_daemon(&net.a, receiver.addr, work.path());

    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/live/uas.xml");
    let mut uas = sipp(
        &net.a,
        "uas",
        work.path(),
        &[
            "-sf".into(),
            scenario.display().to_string(),
            "-i".into(),
            A_ADDR.into(),
            "-mi".into(),
            A_ADDR.into(),
            "-p".into(),
            "5060".into(),
            "-m".into(),
            CALLS.to_string(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !udp_port_bound(uas.pid(), 5060) {
        if let Some(status) = uas.wait(Duration::ZERO) {
            panic!("sipp uas exited: {status}\n{}", uas.tail());
        }
        assert!(
            Instant::now() < deadline,
            "sipp uas: 5060 not bound\n{}",
            uas.tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sipp_start = Instant::now();
    let mut uac = sipp(
        &net.b,
        "uac",
        work.path(),
        &[
            "-sn".into(),
            "uac_pcap".into(),
            format!("{A_ADDR}:5060"),
            "-i".into(),
            B_ADDR.into(),
            "-mi".into(),
            B_ADDR.into(),
            "-m".into(),
            CALLS.to_string(),
            "-r".into(),
            "1".into(),
        ],
    );
    let status = uac.finish(Duration::from_secs(60));
    assert!(
        status.success(),
        "sipp uac: {status}\n{}\n{}",
        uac.tail(),
        uas.tail()
    );
    let status = uas.finish(Duration::from_secs(15));
    assert!(status.success(), "sipp uas: {status}\n{}", uas.tail());
    eprintln!("sipp: {CALLS} calls took {:.1?}", sipp_start.elapsed());

    // Every call ended by its SIP BYE: the records appear without stopping
    // the daemon.
    receiver.wait_records(CALLS, Duration::from_secs(10));
    let mut defects = Vec::new();
    let before_stop = receiver.records().len();
    if before_stop != CALLS {
        defects.push(format!(
            "{before_stop} of {CALLS} calls recorded before the daemon stopped: \
             a SIP BYE did not end its call"
        ));
    }
    let log = stop_daemon(&mut daemon, &net, &mut defects);
    wire.stop(Duration::from_secs(10));
    let records = receiver.finish(CALLS);

    // The wire, as tshark reads it.
    let dialogs = dialogs(&wire_file);
    let rtp = rtp_packets(&wire_file, &[]);
    let flow_of = |src: &str, dst: &str| -> Vec<&RtpRow> {
        rtp.get(&(src.to_owned(), dst.to_owned()))
            .into_iter()
            .flatten()
            .collect()
    };
    assert_eq!(dialogs.len(), CALLS, "dialogs on the wire: {dialogs:?}");
    assert_eq!(
        records.len(),
        CALLS,
        "records: {:?}\n{}",
        records.keys(),
        daemon.tail()
    );
    let mut flows = std::collections::HashSet::new();
    for (call_id, dialog) in &dialogs {
        let record = records
            .get(call_id)
            .unwrap_or_else(|| panic!("no record of {call_id} in {:?}", records.keys()));
        assert_eq!(record["caller"], dialog.caller.as_str(), "{call_id}");
        assert_eq!(record["callee"], dialog.callee.as_str(), "{call_id}");
        assert_eq!(
            (dialog.caller.as_str(), dialog.callee.as_str()),
            ("sipp", "service")
        );
        assert_eq!(record["mode"], "rtp", "{call_id}");
        assert_eq!(record["end_reason"], "bye", "{call_id}");
        assert!(
            flows.insert((dialog.offer.clone(), dialog.answer.clone())),
            "two calls with the same media endpoints: {dialogs:?}"
        );

        // R: the caller's (UAC's) RTP to the callee: the audio, then the DTMF.
        let flow = flow_of(&dialog.offer, &dialog.answer);
        let audio: Vec<&RtpRow> = flow.iter().copied().filter(|r| r.pt == 8).collect();
        let events: Vec<&RtpRow> = flow.iter().copied().filter(|r| r.pt == 101).collect();
        assert_eq!(
            audio.len(),
            played.len(),
            "{call_id}: audio packets on the wire ({} -> {})",
            dialog.offer,
            dialog.answer
        );
        assert!(
            audio
                .iter()
                .zip(&played)
                .all(|(a, p)| a.payload == p.payload),
            "{call_id}: the wire's payloads are not g711a.pcap's"
        );
        assert!(
            events.iter().any(|r| r.event == Some((1, true))),
            "{call_id}: no end of DTMF '1' on the wire"
        );
        let r = &record["directions"]["R"];
        eprintln!(
            "{call_id}: wire {} -> {}: {} packets ({} audio, {} DTMF), {} distinct; record R rtp {}",
            dialog.offer,
            dialog.answer,
            flow.len(),
            audio.len(),
            events.len(),
            distinct(&flow),
            r["rtp"]
        );
        assert_eq!(
            r["rtp"]["received"].as_u64().unwrap() as usize,
            distinct(&flow),
            "{call_id}: R RTP received vs the wire"
        );
        assert_eq!(r["rtp"]["lost"], 0, "{call_id}");
        assert_eq!(r["rtp"]["late"], 0, "{call_id}");

        // The audio: the wire's payloads placed by timestamp, and the same
        // as g711a.pcap's payloads decoded one after the other (it has no gaps).
        let audio_rows: Vec<RtpRow> = audio.iter().map(|r| (*r).clone()).collect();
        let (rate, expected) = expected_samples(&audio_rows, &[101]);
        let mut decoder = rst_codec::Decoder::new(rst_codec::Codec::for_payload_type(8, 8000));
        let mut from_pcap = Vec::new();
        for p in &played {
            let mut samples = Vec::new();
            decoder.decode(&p.payload, &mut samples).unwrap();
            from_pcap.extend(samples);
        }
        assert_eq!(expected, from_pcap, "g711a.pcap has timestamp gaps?");
        assert!(expected.iter().any(|s| s.unsigned_abs() > 10_000), "speech");
        let wav = r["wav"][0].as_str().unwrap();
        let (wav_rate, samples) = read_wav(wav);
        assert_eq!(wav_rate, rate, "{call_id}");
        assert_eq!(samples.len(), expected.len(), "{call_id}: samples in {wav}");
        if let Some(i) = samples.iter().zip(&expected).position(|(a, b)| a != b) {
            panic!(
                "{call_id}: R differs from g711a.pcap first at sample {i}: {} != {}",
                samples[i], expected[i]
            );
        }
        assert_eq!(
            dtmf_digits(record, "R"),
            "1",
            "{call_id}: {}",
            record["dtmf"]
        );
        assert_eq!(dtmf_digits(record, "W"), "", "{call_id}");

        // W: the UAS sends no RTP.
        let back = flow_of(&dialog.answer, &dialog.offer).len();
        assert_eq!(back, 0);
        assert_eq!(record["directions"]["W"]["packets"], 0, "{call_id}");
    }
    assert_eq!(
        logged(&log, "pcap at the end", "dropped"),
        Some(0),
        "pcap drops"
    );
    eprintln!("{NAME}: {:.1?} in all", began.elapsed());
    assert_no_defects(NAME, &defects);
}

// ---------------------------------------------------------------- tcpreplay

/// One recorded direction's source: the tshark stream (source, destination).
#[derive(Debug)]
struct Expect {
    call_id: &'static str,
    caller: &'static str,
    callee: &'static str,
    r: Option<(&'static str, &'static str)>,
    w: Option<(&'static str, &'static str)>,
}

#[test]
fn live_tcpreplay_of_a_capture_is_recorded() {
    let _one_at_a_time = one_at_a_time();
    const NAME: &str = "live_tcpreplay_of_a_capture_is_recorded";
    // sip-rtp-g711.pcap: SIPp calling FreeSWITCH twice (PCMU, then PCMA);
    // the audio flows from FreeSWITCH (the callee) to SIPp: W.
    const FILE: &str = "sip-rtp-g711.pcap";
    const EXPECT: [Expect; 2] = [
        Expect {
            call_id: "1-1966@10.0.2.20",
            caller: "sipp",
            callee: "test",
            r: None,
            w: Some(("10.0.2.15:27942", "10.0.2.20:6000")),
        },
        Expect {
            call_id: "1-1968@10.0.2.20",
            caller: "sipp",
            callee: "test",
            r: None,
            w: Some(("10.0.2.15:28102", "10.0.2.20:6000")),
        },
    ];
    /// tcpreplay's speed: a 17 s capture in about 4 s, its packets still
    /// 5 ms apart.
    const MULTIPLIER: &str = "4";
    if let Some(tool) = missing(&["tcpreplay", "tshark", "dumpcap"]) {
        eprintln!("SKIPPED {NAME}: {tool} not found (apt-get install tcpreplay tshark)");
        return;
    }
    // None: `capture` said SKIPPED.
    let Some(file) = capture(FILE) else {
        return;
    };
    let began = Instant::now();
    let Some(net) = pair(NAME, "replay") else {
        return;
    };
    let work = workdir();
    let mut receiver = Receiver::start_in(&net.a, "20000-20099");
    let (mut wire, wire_file) = dumpcap(&net.a, "veth-a", work.path());
    let mut daemon = tap_daemon(&net.a, receiver.addr, work.path());

    let replay_start = Instant::now();
    let mut replay = Proc::spawn(
        &net.b,
        "tcpreplay",
        "tcpreplay",
        &[
            "-i".into(),
            "veth-b".into(),
            "-x".into(),
            MULTIPLIER.into(),
            file.display().to_string(),
        ],
        work.path(),
    );
    let status = replay.finish(Duration::from_secs(60));
    assert!(status.success(), "tcpreplay: {status}\n{}", replay.tail());
    eprintln!("tcpreplay -x {MULTIPLIER}: {:.1?}", replay_start.elapsed());
    for line in replay
        .log()
        .lines()
        .filter(|l| l.contains("Actual") || l.contains("Failed"))
    {
        eprintln!("tcpreplay: {}", line.trim());
    }

    // The first call's BYE is in the capture, and ends it; the second's is
    // not (the capture stops mid-call): it ends when the daemon stops.
    receiver.wait_records(1, Duration::from_secs(10));
    let mut defects = Vec::new();
    let before_stop = receiver.records();
    if before_stop.len() != 1 || before_stop[0]["call_id"] != EXPECT[0].call_id {
        defects.push(format!(
            "before the daemon stopped, the records were of {:?}, not of the one call \
             whose BYE is in the capture",
            before_stop
                .iter()
                .map(|r| r["call_id"].clone())
                .collect::<Vec<_>>()
        ));
    }
    let log = stop_daemon(&mut daemon, &net, &mut defects);
    wire.stop(Duration::from_secs(10));
    let records = receiver.finish(EXPECT.len());

    // The reference capture on the wire is a second capture point competing
    // for the CPU: when it misses packets it says so, but the recording is
    // checked against the file, which tcpreplay sent whole.
    let streams = stream_packets(&file, &[]);
    let on_wire = stream_packets(&wire_file, &[]);
    if on_wire != streams {
        eprintln!("note: the reference capture saw {on_wire:?} of the file's {streams:?}");
    }
    let packets = rtp_packets(&file, &[]);

    assert_eq!(
        records.len(),
        EXPECT.len(),
        "records: {:?}\n{}",
        records.keys(),
        daemon.tail()
    );
    let mut recorded = 0;
    for e in &EXPECT {
        let record = records
            .get(e.call_id)
            .unwrap_or_else(|| panic!("no record for {} in {:?}", e.call_id, records.keys()));
        assert_eq!(record["caller"], e.caller, "{}", e.call_id);
        assert_eq!(record["callee"], e.callee, "{}", e.call_id);
        assert_eq!(record["mode"], "rtp");
        assert_eq!(record["end_reason"], "bye", "{}", e.call_id);
        for (dir, source) in [("R", e.r), ("W", e.w)] {
            let d = &record["directions"][dir];
            let Some((src, dst)) = source else {
                assert_eq!(d["packets"], 0, "{} {dir}", e.call_id);
                continue;
            };
            let key = (src.to_owned(), dst.to_owned());
            let tshark_count = streams[&key];
            eprintln!(
                "{} {dir}: tshark {tshark_count} packets; record rtp {}",
                e.call_id, d["rtp"]
            );
            assert_eq!(
                d["rtp"]["received"].as_u64().unwrap(),
                tshark_count,
                "{} {dir}: RTP received vs tshark rtp,streams",
                e.call_id
            );
            recorded += tshark_count;
            assert_eq!(d["rtp"]["duplicates"], 0);
            assert_eq!(d["rtp"]["late"], 0);
            assert_eq!(d["rtp"]["lost"], 0);
            let (rate, expected) = expected_samples(&packets[&key], &[101]);
            let wav = d["wav"][0].as_str().unwrap();
            let (wav_rate, samples) = read_wav(wav);
            assert_eq!(wav_rate, rate, "{} {dir}", e.call_id);
            assert_eq!(
                samples.len(),
                expected.len(),
                "{} {dir}: sample count",
                e.call_id
            );
            if let Some(i) = samples.iter().zip(&expected).position(|(a, b)| a != b) {
                panic!(
                    "{} {dir}: differs from tshark's payloads first at sample {i}: {} != {}",
                    e.call_id, samples[i], expected[i]
                );
            }
        }
    }
    // Every stream tshark finds belongs to a recorded call.
    assert_eq!(recorded, streams.values().sum::<u64>());
    assert_eq!(
        logged(&log, "pcap at the end", "dropped"),
        Some(0),
        "pcap drops"
    );
    eprintln!("{NAME}: {:.1?} in all", began.elapsed());
    assert_no_defects(NAME, &defects);
}
