//! The whole daemon on the real captures in `shared/captures/`, into a real
//! receiver (udp_server) started in this process, checked against tshark:
//! the calls, their parties and Call-IDs, per direction the RTP packet count
//! of `tshark -z rtp,streams`, and the recorded WAV sample for sample against
//! the RTP payloads tshark extracts, decoded with rst-codec and placed by
//! their timestamps (loss = silence), as the receiver places them.
//!
//! Needs tshark and the captures; without them each test prints SKIPPED.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tap_daemon::capture::{self, Summary};
use tap_daemon::config::Settings;
use tokio_util::sync::CancellationToken;
use udp_server::Metrics;

// ---------------------------------------------------------------- receiver

/// A real receiver on 127.0.0.1 in a background runtime (the harness of
/// udp_server's own tests).
struct Receiver {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Receiver {
    fn start(rtp_ports: &str) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let settings = udp_server::Settings {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            record_dir: Some(dir.path().to_owned()),
            rtp_ports: Some(rtp_ports.parse().unwrap()),
            ..udp_server::Settings::default()
        };
        let config = settings.resolve().unwrap();
        let metrics = std::sync::Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = {
            let shutdown = shutdown.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let socket = udp_server::bind(config.listen)?;
                    addr_tx.send(socket.local_addr()?).unwrap();
                    udp_server::run(socket, config, metrics, shutdown).await
                })
            })
        };
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("receiver did not start");
        Receiver {
            addr,
            dir,
            shutdown,
            thread: Some(thread),
        }
    }

    /// Waits until `count` records exist, stops the receiver, returns them
    /// keyed by Call-ID (or UUID when there is none).
    fn records(&mut self, count: usize) -> HashMap<String, serde_json::Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while records_in(self.dir.path()).len() < count && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // A moment for a record beyond the expected count to show up.
        std::thread::sleep(Duration::from_millis(300));
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap().unwrap();
        }
        let records = records_in(self.dir.path());
        assert_eq!(
            records.len(),
            count,
            "records in {}",
            self.dir.path().display()
        );
        records
            .into_iter()
            .map(|r| {
                let key = r["call_id"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| r["uuid"].as_str().unwrap().to_owned());
                (key, r)
            })
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn records_in(dir: &Path) -> Vec<serde_json::Value> {
    let mut found = Vec::new();
    for day in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !day.path().is_dir() {
            continue;
        }
        for file in std::fs::read_dir(day.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = file.path();
            if path.extension().is_some_and(|e| e == "json") {
                found.push(serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap());
            }
        }
    }
    found
}

// ---------------------------------------------------------------- captures and tshark

fn capture(name: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/captures")
        .join(name);
    if !path.is_file() {
        eprintln!("SKIPPED: {} not found", path.display());
        return None;
    }
    if Command::new("tshark").arg("-v").output().is_err() {
        eprintln!("SKIPPED: tshark is not installed (apt-get install tshark)");
        return None;
    }
    Some(path)
}

fn tshark(args: &[&str]) -> String {
    let out = Command::new("tshark")
        .args(args)
        .output()
        .expect("tshark runs");
    assert!(
        out.status.success(),
        "tshark {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `tshark -z rtp,streams`: packets per (source, destination).
fn stream_packets(file: &Path) -> HashMap<(String, String), u64> {
    let text = tshark(&[
        "-n",
        "-r",
        file.to_str().unwrap(),
        "-q",
        "-z",
        "rtp,streams",
    ]);
    let mut streams = HashMap::new();
    for line in text.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        let Some(pct) = t
            .iter()
            .position(|w| w.starts_with('(') && w.ends_with("%)"))
        else {
            continue;
        };
        let packets: u64 = t[pct - 2].parse().unwrap();
        let key = (format!("{}:{}", t[2], t[3]), format!("{}:{}", t[4], t[5]));
        *streams.entry(key).or_default() += packets;
    }
    streams
}

#[derive(Debug, Clone)]
struct RtpRow {
    seq: u16,
    ts: u32,
    pt: u8,
    payload: Vec<u8>,
}

/// The RTP packets tshark decodes, per (source, destination), in capture order.
fn rtp_packets(file: &Path) -> HashMap<(String, String), Vec<RtpRow>> {
    let text = tshark(&[
        "-n",
        "-r",
        file.to_str().unwrap(),
        "-Y",
        "rtp",
        "-T",
        "fields",
        "-e",
        "ip.src",
        "-e",
        "udp.srcport",
        "-e",
        "ip.dst",
        "-e",
        "udp.dstport",
        "-e",
        "rtp.seq",
        "-e",
        "rtp.timestamp",
        "-e",
        "rtp.p_type",
        "-e",
        "rtp.payload",
    ]);
    let mut flows: HashMap<(String, String), Vec<RtpRow>> = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 8 || f[4].is_empty() {
            continue; // a datagram tshark marks as RTP but cannot decode (4 bytes)
        }
        let hex: String = f[7].chars().filter(char::is_ascii_hexdigit).collect();
        let payload = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        flows
            .entry((format!("{}:{}", f[0], f[1]), format!("{}:{}", f[2], f[3])))
            .or_default()
            .push(RtpRow {
                seq: f[4].parse().unwrap(),
                ts: f[5].parse().unwrap(),
                pt: f[6].parse().unwrap(),
                payload,
            });
    }
    flows
}

/// What the receiver must have written for one direction: packets put in
/// sequence order (repeats dropped), each placed by its timestamp so that a
/// lost packet is silence of its length; a timestamp that goes backwards or
/// jumps by more than a second per packet continues where the audio ended
/// (the receiver's rule). `events` are payload types that are DTMF, not audio.
fn expected_samples(rows: &[RtpRow], events: &[u8]) -> (u32, Vec<i16>) {
    let mut sorted: Vec<(u64, &RtpRow)> = Vec::new();
    let mut highest: Option<u64> = None;
    for row in rows {
        let ext = match highest {
            None => u64::from(row.seq) + (1 << 16),
            Some(h) => {
                let c = (h & !0xFFFF) | u64::from(row.seq);
                [c.wrapping_sub(1 << 16), c, c + (1 << 16)]
                    .into_iter()
                    .min_by_key(|&x| x.abs_diff(h))
                    .unwrap()
            }
        };
        highest = Some(highest.map_or(ext, |h| h.max(ext)));
        sorted.push((ext, row));
    }
    sorted.sort_by_key(|(ext, _)| *ext);
    sorted.dedup_by_key(|(ext, _)| *ext);

    let audio_pt = rows
        .iter()
        .find(|r| !events.contains(&r.pt))
        .map(|r| r.pt)
        .unwrap();
    let codec = rst_codec::Codec::for_payload_type(audio_pt, 8000);
    let rate = codec.sample_rate().unwrap();
    let clock = codec.rtp_clock_rate().unwrap();
    let mut decoder = rst_codec::Decoder::new(codec);
    let mut out: Vec<i16> = Vec::new();
    // Media time (seconds) of the anchor, its timestamp, the last packet's.
    let (mut anchor_at, mut anchor_ts, mut last_ts, mut last_seq) = (0.0f64, 0i64, 0i64, 0u64);
    let mut started = false;
    let mut segment_start: Option<f64> = None;
    let mut media_end = 0.0f64;
    for (ext, row) in sorted {
        let ts = i64::from(row.ts);
        let at = if !started {
            started = true;
            (anchor_at, anchor_ts, last_ts, last_seq) = (0.0, ts, ts, ext);
            0.0
        } else {
            let c = (last_ts & !0xFFFF_FFFF) | ts;
            let ts = [c - (1 << 32), c, c + (1 << 32)]
                .into_iter()
                .min_by_key(|x| x.abs_diff(last_ts))
                .unwrap();
            let packets = ext.saturating_sub(last_seq).max(1);
            let step = ts - last_ts;
            if step < 0 || step as f64 > f64::from(clock) * packets as f64 {
                (anchor_at, anchor_ts, last_ts, last_seq) = (media_end, ts, ts, ext);
                media_end
            } else {
                last_ts = ts;
                last_seq = ext;
                anchor_at + (ts - anchor_ts) as f64 / f64::from(clock)
            }
        };
        if events.contains(&row.pt) {
            continue;
        }
        let mut samples = Vec::new();
        decoder.decode(&row.payload, &mut samples).unwrap();
        let start = *segment_start.get_or_insert(at);
        let position = ((at - start) * f64::from(rate)).round() as usize;
        if position > out.len() {
            out.resize(position, 0);
        }
        out.extend_from_slice(&samples);
        media_end = at + samples.len() as f64 / f64::from(rate);
    }
    (rate, out)
}

fn read_wav(path: &str) -> (u32, Vec<i16>) {
    let reader = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let rate = reader.spec().sample_rate;
    (rate, reader.into_samples().map(Result::unwrap).collect())
}

// ---------------------------------------------------------------- running

/// Runs the daemon's capture loop on `file` into `receiver`.
fn run(file: &Path, receiver: &Receiver, extra: &[&str]) -> Summary {
    use clap::Parser as _;
    let mut args = vec![
        "tap_daemon".to_owned(),
        "--pcap".to_owned(),
        file.to_str().unwrap().to_owned(),
        "--receiver".to_owned(),
        receiver.addr.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let config = Settings::parse_from(args).resolve().unwrap();
    capture::run(&config, &AtomicBool::new(false)).unwrap()
}

/// One recorded direction's source: the tshark stream (source, destination).
struct Expect {
    call_id: &'static str,
    caller: &'static str,
    callee: &'static str,
    r: Option<(&'static str, &'static str)>,
    w: Option<(&'static str, &'static str)>,
}

/// Checks every expected call: parties, Call-ID, end by BYE, per direction
/// the packets received against `rtp,streams` and the WAV against tshark's
/// payloads. Returns the records.
fn check(
    file: &Path,
    records: &HashMap<String, serde_json::Value>,
    expects: &[Expect],
    events: &[u8],
) {
    let streams = stream_packets(file);
    let packets = rtp_packets(file);
    for e in expects {
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
            assert_eq!(
                d["rtp"]["received"].as_u64().unwrap(),
                tshark_count,
                "{} {dir}: RTP received vs tshark rtp,streams",
                e.call_id
            );
            assert_eq!(d["rtp"]["duplicates"], 0);
            assert_eq!(d["rtp"]["late"], 0);
            let (rate, expected) = expected_samples(&packets[&key], events);
            let wav = d["wav"][0].as_str().unwrap();
            let (wav_rate, samples) = read_wav(wav);
            assert_eq!(wav_rate, rate, "{} {dir}", e.call_id);
            assert_eq!(
                samples.len(),
                expected.len(),
                "{} {dir}: sample count",
                e.call_id
            );
            assert!(samples == expected, "{} {dir}: samples differ", e.call_id);
            eprintln!(
                "{} {dir}: {tshark_count} packets, {} samples at {rate} Hz: equal",
                e.call_id,
                samples.len()
            );
        }
    }
}

const G711_CALL: Expect = Expect {
    call_id: "12013223@200.57.7.195",
    caller: "200.57.7.195",
    callee: "francisco",
    r: Some(("200.57.7.196:40376", "200.57.7.204:8000")),
    w: Some(("200.57.7.204:8000", "200.57.7.196:40376")),
};
const DTMF_CALL: Expect = Expect {
    call_id: "25672@192.168.105.110",
    caller: "2502",
    callee: "2504",
    r: Some(("192.168.105.110:4374", "192.168.105.172:4376")),
    w: Some(("192.168.105.172:4376", "192.168.105.110:4376")),
};
const G722_CALL: Expect = Expect {
    call_id: "1-2161@10.0.2.20",
    caller: "sipp",
    callee: "test",
    r: None,
    w: Some(("10.0.2.15:17472", "10.0.2.20:6000")),
};
const SIPP_PCMU: Expect = Expect {
    call_id: "1-1966@10.0.2.20",
    caller: "sipp",
    callee: "test",
    r: None,
    w: Some(("10.0.2.15:27942", "10.0.2.20:6000")),
};
const SIPP_PCMA: Expect = Expect {
    call_id: "1-1968@10.0.2.20",
    caller: "sipp",
    callee: "test",
    r: None,
    w: Some(("10.0.2.15:28102", "10.0.2.20:6000")),
};

fn dtmf_digits(record: &serde_json::Value, direction: &str) -> String {
    record["dtmf"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["direction"] == direction)
        .map(|d| d["digit"].as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------- tests

#[test]
fn sip_rtp_g711_two_calls_sample_for_sample() {
    let Some(file) = capture("sip-rtp-g711.pcap") else {
        return;
    };
    let mut receiver = Receiver::start("22000-22099");
    let summary = run(&file, &receiver, &[]);
    assert_eq!(summary.pipeline.calls_started, 2);
    assert_eq!(summary.pipeline.rtp_forwarded, 839);
    assert_eq!(summary.output.rtp_sent, 839);
    let records = receiver.records(2);
    check(&file, &records, &[SIPP_PCMU, SIPP_PCMA], &[101]);
}

#[test]
fn sip_call_rtp_g711_relay_sample_for_sample() {
    let Some(file) = capture("SIP_CALL_RTP_G711.pcap") else {
        return;
    };
    let mut receiver = Receiver::start("22100-22199");
    let summary = run(&file, &receiver, &[]);
    // The relay's other leg (196:40378 <-> 199:4800) is in no SDP, and the
    // unanswered second call's 6 packets go to a port its SDP does not name.
    assert_eq!(summary.pipeline.calls_started, 1);
    assert_eq!(summary.pipeline.rtp_forwarded, 548 + 891);
    let records = receiver.records(1);
    check(&file, &records, &[G711_CALL], &[101]);
}

#[test]
fn concurrent3_three_calls_sample_for_sample_with_dtmf_and_g722() {
    let Some(file) = capture("derived-concurrent3__SIP_CALL_RTP_G711+sip-rtp-g722+SIP_DTMF2.pcap")
    else {
        return;
    };
    let mut receiver = Receiver::start("22200-22299");
    let summary = run(&file, &receiver, &[]);
    assert_eq!(summary.pipeline.calls_started, 3);
    let records = receiver.records(3);
    check(
        &file,
        &records,
        &[G711_CALL, DTMF_CALL, G722_CALL],
        &[96, 101],
    );
    assert_eq!(dtmf_digits(&records[DTMF_CALL.call_id], "W"), "6789123");
}

#[test]
fn sip_dtmf2_digits_reach_the_record() {
    let Some(file) = capture("SIP_DTMF2.cap") else {
        return;
    };
    let mut receiver = Receiver::start("22300-22399");
    let summary = run(&file, &receiver, &[]);
    // The 603-declined call had no media: not a recording.
    assert_eq!(summary.pipeline.calls_started, 1);
    let records = receiver.records(1);
    check(&file, &records, &[DTMF_CALL], &[96]);
    let record = &records[DTMF_CALL.call_id];
    assert_eq!(dtmf_digits(record, "W"), "6789123");
    assert_eq!(dtmf_digits(record, "R"), "");
    for entry in record["dtmf"].as_array().unwrap() {
        assert!(entry["duration_ms"].as_u64().unwrap() > 0, "{entry}");
    }
}

#[test]
fn g722_decodes_at_16_khz() {
    let Some(file) = capture("sip-rtp-g722.pcap") else {
        return;
    };
    let mut receiver = Receiver::start("22400-22499");
    run(&file, &receiver, &[]);
    let records = receiver.records(1);
    check(&file, &records, &[G722_CALL], &[101]);
    let record = &records[G722_CALL.call_id];
    assert_eq!(record["directions"]["W"]["codecs"][0], "G722");
    // 425 packets of 20 ms: 8.5 s at 16 kHz.
    assert_eq!(record["directions"]["W"]["samples"], 425 * 320);
}

#[test]
fn comfort_noise_is_never_audio() {
    let Some(file) = capture("rtp-protocol.pcap") else {
        return;
    };
    let mut receiver = Receiver::start("22500-22599");
    let summary = run(&file, &receiver, &[]);
    // PT 13: 8 + 5 packets, per SOURCES.md.
    assert_eq!(summary.pipeline.rtp_comfort_noise, 13);
    assert_eq!(summary.pipeline.rtp_forwarded, 39 + 196);
    let records = receiver.records(1);
    let record = records.values().next().unwrap();
    for dir in ["R", "W"] {
        let pts = record["directions"][dir]["payload_types"]
            .as_array()
            .unwrap();
        assert_eq!(pts, &[serde_json::json!(8)], "{dir}");
    }
}

#[test]
fn rtp_without_sip_records_a_call_of_its_own() {
    let Some(file) = capture("speech_8k_ulaw.pcap") else {
        return;
    };
    // Without the option: nothing.
    let mut receiver = Receiver::start("22600-22649");
    let summary = run(&file, &receiver, &[]);
    assert_eq!(summary.pipeline.calls_started, 0);
    receiver.records(0);
    let mut receiver = Receiver::start("22650-22699");
    let summary = run(&file, &receiver, &["--rtp-without-sip"]);
    assert_eq!(summary.pipeline.sipless_calls, 1);
    let records = receiver.records(1);
    let record = records.values().next().unwrap();
    assert_eq!(record["caller"], "10.0.0.60-6000");
    assert_eq!(record["callee"], "172.20.0.30-6000");
    assert_eq!(record["directions"]["R"]["rtp"]["received"], 835);
    // SOURCES.md: 133600 decoded samples, no loss.
    assert_eq!(record["directions"]["R"]["samples"], 133_600);
}

#[test]
fn number_filters_skip_calls() {
    let Some(file) = capture("sip-rtp-g711.pcap") else {
        return;
    };
    let mut receiver = Receiver::start("22700-22799");
    let summary = run(&file, &receiver, &["--skip-numbers", "sip?"]);
    assert_eq!(summary.pipeline.calls_filtered, 2);
    assert_eq!(summary.pipeline.rtp_filtered, 839);
    receiver.records(0);
}

#[test]
fn the_binary_end_to_end() {
    let Some(file) = capture("sip-rtp-g711.pcap") else {
        return;
    };
    let mut receiver = Receiver::start("22800-22899");
    let status = Command::new(env!("CARGO_BIN_EXE_tap_daemon"))
        .arg("--pcap")
        .arg(&file)
        .arg("--receiver")
        .arg(receiver.addr.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let records = receiver.records(2);
    check(&file, &records, &[SIPP_PCMU, SIPP_PCMA], &[101]);
}
