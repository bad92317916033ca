//! Real RTP from a real peer. sipp's built-in `uac_pcap` scenario places a SIP call
//! to a sipp UAS (tests/sipp/uas_rst.xml) whose SDP answer gives the receiver's
//! allocated RTP port as its media port, so sipp plays the PCMA capture shipped
//! with it (g711a.pcap, then the RFC 4733 DTMF '1' of dtmf_2833_1.pcap) straight
//! into an RTP-mode call. The WAV must be the capture's payloads decoded, sample for
//! sample (sox decodes them), and the record's figures must match what tshark finds
//! in the captures.
//!
//! What sipp does, as found with tshark and strace (sipp 3.6.1): `play_pcap_audio`
//! sends through a raw socket (so it needs root, or CAP_NET_RAW) and writes its own
//! UDP header: the source port is the call's media port, which for the first call
//! is `-mp`, whatever ports the capture itself has; the destination is the port of
//! the peer's SDP. The capture is paced by its own timestamps (about 7 s here).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rst_proto::{Extensions, Inv, Message, RtpPorts, Uuid};
use udp_server::Settings;

/// Where Debian's sip-tester puts the captures that `uac_pcap` plays as `pcap/*.pcap`.
const PCAP_DIR: &str = "/usr/share/sip-tester";
/// What `uac_pcap` plays: the audio, then (after an 8 s pause) a DTMF '1'.
const AUDIO_PCAP: &str = "g711a.pcap";
const DTMF_PCAP: &str = "dtmf_2833_1.pcap";
/// The receiver's RTP ports: above Linux's ephemeral ports (32768-60999), so that no
/// socket bound to port 0 anywhere (sipp's own, this test's) can be holding one.
const RTP_PORTS: (u16, u16) = (61500, 61599);
/// Bounds on the sipp runs (uac_pcap takes about 9 s).
const SIPP_TIMEOUT: Duration = Duration::from_secs(45);

#[test]
fn sipp_uac_pcap_rtp_is_recorded_sample_for_sample() {
    const NAME: &str = "sipp_uac_pcap_rtp_is_recorded_sample_for_sample";
    for tool in ["sipp", "tshark", "sox"] {
        if !runs(tool) {
            eprintln!("SKIPPED {NAME}: {tool} not found (apt-get install sip-tester tshark sox)");
            return;
        }
    }
    for pcap in [AUDIO_PCAP, DTMF_PCAP] {
        if !Path::new(PCAP_DIR).join(pcap).exists() {
            eprintln!("SKIPPED {NAME}: no {PCAP_DIR}/{pcap} (apt-get install sip-tester)");
            return;
        }
    }
    if !has_cap_net_raw() {
        eprintln!(
            "SKIPPED {NAME}: sipp plays pcaps through a raw socket, which needs root \
             (CAP_NET_RAW); run the tests as root, as CI does"
        );
        return;
    }

    // What sipp will send, read independently of the receiver: tshark on the captures.
    let audio = rtp_in(&Path::new(PCAP_DIR).join(AUDIO_PCAP));
    let dtmf = rtp_in(&Path::new(PCAP_DIR).join(DTMF_PCAP));
    assert_eq!(audio.len(), 236, "RTP packets in {AUDIO_PCAP}");
    assert!(audio
        .iter()
        .all(|p| p.payload_type == 8 && p.event.is_none()));
    assert!(!dtmf.is_empty() && dtmf.iter().all(|p| p.payload_type == 101));

    let receiver = Receiver::with(Settings {
        rtp_ports: Some(format!("{}-{}", RTP_PORTS.0, RTP_PORTS.1).parse().unwrap()),
        ..Settings::default()
    });

    // The UAC's media port is the source of its RTP, so the INV's local read port.
    let [uac_media, uas_media, uas_sip] = free_port_pairs();
    let write = UdpSocket::bind("127.0.0.1:0").unwrap(); // local write port: nothing sends W
    let write_port = write.local_addr().unwrap().port();

    let id = uuid(0x5199);
    let mut control = Sender::new(receiver.addr);
    let inv = Message::Inv(Inv {
        uuid: Uuid::new(&id).unwrap(),
        caller: "sipp",
        callee: "service",
        rtp_ports: Some(RtpPorts {
            read: uac_media,
            write: write_port,
        }),
        // What the UAC's SDP offer declares besides PCMA.
        extensions: Extensions::parse("pt101=telephone-event/8000").unwrap(),
    });
    // Sent again while unanswered, as a sender does: a port pair of the range that
    // another program holds is not answered, and the next INV gets the next pair.
    let mut unanswered = 0;
    let reply = loop {
        control.send(inv);
        if let Some(reply) = control.receive() {
            break reply;
        }
        unanswered += 1;
        assert!(unanswered < 60, "no ACK for the RTP-mode INV");
    };
    if unanswered > 0 {
        // A slow receiver answers each copy: leave no stale ACK for the BYE's.
        while control.receive().is_some() {}
    }
    let Ok(Message::Ack(ack)) = Message::parse(&reply) else {
        panic!("not an ACK: {reply:?}")
    };
    let server = ack
        .rtp_ports
        .expect("an RTP-mode INV is answered with ports");

    // sipp runs in a folder of its own: uac_pcap plays `pcap/g711a.pcap`, relative to
    // it, and the -trace_* logs land there.
    let work = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(PCAP_DIR, work.path().join("pcap")).unwrap();
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp/uas_rst.xml");
    let started = Instant::now();
    let mut uas = Sipp::spawn(
        "uas",
        work.path(),
        &[
            "-sf".into(),
            scenario.display().to_string(),
            "-key".into(),
            "rst_port".into(),
            server.read.to_string(),
            "-i".into(),
            "127.0.0.1".into(),
            "-mi".into(),
            "127.0.0.1".into(),
            "-p".into(),
            uas_sip.to_string(),
            "-mp".into(),
            uas_media.to_string(),
        ],
    );
    uas.wait_listening(uas_sip, work.path());
    let mut uac = Sipp::spawn(
        "uac",
        work.path(),
        &[
            "-sn".into(),
            "uac_pcap".into(),
            format!("127.0.0.1:{uas_sip}"),
            "-i".into(),
            "127.0.0.1".into(),
            "-mi".into(),
            "127.0.0.1".into(),
            "-mp".into(),
            uac_media.to_string(),
        ],
    );
    let status = uac.wait(SIPP_TIMEOUT, work.path());
    assert!(
        status.success(),
        "sipp uac_pcap: {status}\n{}",
        sipp_logs(work.path())
    );
    let status = uas.wait(Duration::from_secs(10), work.path());
    assert!(
        status.success(),
        "sipp uas: {status}\n{}",
        sipp_logs(work.path())
    );
    let sipp_took = started.elapsed();
    control.bye(&id);
    let record = answered_call_record(&receiver, unanswered);
    eprintln!(
        "sipp call took {sipp_took:.1?}; R: {}",
        record["directions"]["R"]["rtp"]
    );

    // The WAV: every audio payload decoded, in order, a timestamp gap as silence
    // (g711a.pcap has none); the DTMF packets add no audio.
    let all: Vec<u8> = audio.iter().flat_map(|p| p.payload.clone()).collect();
    let decoded = sox_decode("al", &all);
    assert_eq!(decoded.len(), all.len());
    let mut expected: Vec<i16> = Vec::new();
    let mut at = 0;
    for (i, packet) in audio.iter().enumerate() {
        if i > 0 {
            let previous = &audio[i - 1];
            let end = previous
                .timestamp
                .wrapping_add(previous.payload.len() as u32);
            let gap = packet.timestamp.wrapping_sub(end);
            assert!(gap < 8000 * 60, "a timestamp jump in {AUDIO_PCAP}");
            expected.extend(std::iter::repeat(0).take(gap as usize));
        }
        expected.extend(&decoded[at..at + packet.payload.len()]);
        at += packet.payload.len();
    }
    // Speech, not silence: a recording of nothing could not pass by accident.
    assert!(expected.iter().any(|&s| s.unsigned_abs() > 10_000));
    let wav = path_of(&record, "/directions/R/wav/0");
    let (spec, samples) = read_wav(&wav);
    assert_eq!((spec.channels, spec.sample_rate), (1, 8000));
    assert_eq!(
        samples.len(),
        expected.len(),
        "samples in {}",
        wav.display()
    );
    if let Some(i) = samples.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!(
            "the R recording differs from {AUDIO_PCAP} first at sample {i}: {} != {}",
            samples[i], expected[i]
        );
    }
    assert_sox_accepts(&wav);
    assert_sox_accepts(&path_of(&record, "/stereo"));
    assert_eq!(
        record["directions"]["R"]["wav"].as_array().unwrap().len(),
        1
    );

    // The figures: two streams (audio, then the DTMF's own SSRC), nothing lost; the
    // DTMF's end packet is sent three times (RFC 4733), the two repeats are duplicates.
    let streams = [&audio, &dtmf];
    let expected_packets: usize = streams.iter().map(|s| span(s)).sum();
    let distinct: usize = streams.iter().map(|s| distinct_sequences(s)).sum();
    let sent: usize = streams.iter().map(|s| s.len()).sum();
    assert_eq!((expected_packets, distinct, sent), (244, 244, 246));
    let stats = &record["directions"]["R"]["rtp"];
    assert_eq!(stats["expected"], expected_packets, "{stats}");
    assert_eq!(stats["received"], distinct, "{stats}");
    assert_eq!(stats["lost"], 0, "{stats}");
    assert_eq!(stats["late"], 0, "{stats}");
    assert_eq!(stats["duplicates"], sent - distinct, "{stats}");
    assert_eq!(stats["ssrc_changes"], 1, "{stats}");
    assert_eq!(stats["timestamp_jumps"], 0, "{stats}");
    let jitter = stats["jitter_ms"].as_f64().unwrap();
    assert!((0.0..30.0).contains(&jitter), "{stats}");

    let r = &record["directions"]["R"];
    assert_eq!(r["codecs"], serde_json::json!(["PCMA"]), "{r}");
    assert_eq!(r["samples"], expected.len(), "{r}");
    assert_eq!(r["decode_errors"], 0, "{r}");
    assert_eq!(record["directions"]["W"]["rtp"]["received"], 0);
    assert_eq!(record["mode"], "rtp");
    assert_eq!(record["end_reason"], "bye");
    assert_eq!(record["malformed"], 0);
    assert_eq!(
        record["sender_rtp_ports"],
        serde_json::json!({ "read": uac_media, "write": write_port })
    );

    // The DTMF as tshark reads it: one event, its duration from the end packet.
    let end = dtmf
        .iter()
        .find(|p| p.event.is_some_and(|e| e.end))
        .and_then(|p| p.event)
        .expect("an end packet in the DTMF capture");
    assert_eq!(end.id, 1);
    let dtmf_record = record["dtmf"].as_array().unwrap();
    assert_eq!(dtmf_record.len(), 1, "{}", record["dtmf"]);
    assert_eq!(dtmf_record[0]["digit"], "1");
    assert_eq!(dtmf_record[0]["direction"], "R");
    assert_eq!(dtmf_record[0]["duration_ms"], u64::from(end.duration) / 8);

    // Everything came from the announced source.
    assert_eq!(
        receiver.counter("rst_refused_total{reason=\"wrong_source\"}"),
        0
    );
    assert_eq!(receiver.counter("rst_rtp_malformed_total"), 0);
    drop(write);
}

/// The record of the call the ACK answered. An INV the receiver could not answer
/// (a port pair of its range held by another program) leaves a record of its own:
/// an empty call that ended in `error`; there can be one per unanswered INV.
fn answered_call_record(receiver: &Receiver, unanswered: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // Read here rather than with records_in: the receiver writes the final
        // `<uuid>.json` in place, so it can be caught half-written; that is a retry.
        let Some(records) = files_in(receiver.dir.path(), ".json")
            .iter()
            .map(|path| serde_json::from_slice(&std::fs::read(path).ok()?).ok())
            .collect::<Option<Vec<serde_json::Value>>>()
        else {
            assert!(Instant::now() < deadline, "a record stays unreadable");
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let (answered, others): (Vec<_>, Vec<_>) =
            records.into_iter().partition(|r| r["end_reason"] == "bye");
        if let [record] = answered.as_slice() {
            assert!(
                others.len() <= unanswered,
                "records besides the call: {others:?}"
            );
            assert!(
                others
                    .iter()
                    .all(|r| r["end_reason"] == "error" && r["directions"]["R"]["packets"] == 0),
                "records besides the call: {others:?}"
            );
            return record.clone();
        }
        assert!(
            answered.len() < 2 && Instant::now() < deadline,
            "no single record of the call in {}: {answered:?} {others:?}",
            receiver.dir.path().display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One RTP packet of a capture, as tshark dissects it.
#[derive(Debug)]
struct Packet {
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    payload_type: u8,
    payload: Vec<u8>,
    event: Option<Event>,
}

#[derive(Debug, Clone, Copy)]
struct Event {
    id: u8,
    end: bool,
    duration: u16,
}

/// The RTP packets of `pcap`, in capture order.
fn rtp_in(pcap: &Path) -> Vec<Packet> {
    let output = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args(["-o", "rtp.heuristic_rtp:TRUE", "-Y", "rtp", "-T", "fields"])
        .args(["-e", "rtp.seq", "-e", "rtp.timestamp", "-e", "rtp.ssrc"])
        .args(["-e", "rtp.p_type", "-e", "rtp.payload"])
        .args(["-e", "rtpevent.event_id", "-e", "rtpevent.end_of_event"])
        .args(["-e", "rtpevent.duration"])
        .stdin(Stdio::null())
        .output()
        .expect("tshark runs");
    assert!(
        output.status.success(),
        "tshark -r {}: {}",
        pcap.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 8, "tshark line {line:?}");
            let hex: String = f[4].chars().filter(|c| *c != ':').collect();
            let payload = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            let event = (!f[5].is_empty()).then(|| Event {
                id: f[5].parse().unwrap(),
                end: f[6] == "1" || f[6].eq_ignore_ascii_case("true"),
                duration: f[7].parse().unwrap(),
            });
            Packet {
                sequence: f[0].parse().unwrap(),
                timestamp: f[1].parse().unwrap(),
                ssrc: u32::from_str_radix(f[2].trim_start_matches("0x"), 16).unwrap(),
                payload_type: f[3].parse().unwrap(),
                payload,
                event,
            }
        })
        .collect()
}

/// Packets the sequence numbers of one stream say were sent (no wrap in these captures).
fn span(stream: &[Packet]) -> usize {
    assert!(stream.windows(2).all(|w| w[0].ssrc == w[1].ssrc));
    let first = stream.iter().map(|p| p.sequence).min().unwrap();
    let last = stream.iter().map(|p| p.sequence).max().unwrap();
    assert!(last - first < 10_000, "a sequence wrap in a test capture");
    usize::from(last - first) + 1
}

fn distinct_sequences(stream: &[Packet]) -> usize {
    let mut sequences: Vec<u16> = stream.iter().map(|p| p.sequence).collect();
    sequences.sort_unstable();
    sequences.dedup();
    sequences.len()
}

/// A sipp process, killed if the test ends before it does.
struct Sipp {
    name: &'static str,
    child: Child,
}

impl Sipp {
    fn spawn(name: &'static str, dir: &Path, args: &[String]) -> Sipp {
        let log =
            |suffix: &str| std::fs::File::create(dir.join(format!("{name}.{suffix}"))).unwrap();
        let child = Command::new("sipp")
            .args(args)
            .args(["-m", "1", "-nostdin", "-timeout", "40s"])
            .args(["-trace_err", "-trace_screen"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log("stdout"))
            .stderr(log("stderr"))
            .spawn()
            .expect("sipp runs");
        Sipp { name, child }
    }

    /// Waits until sipp has bound its SIP port (sipp exiting first is a failure).
    fn wait_listening(&mut self, port: u16, dir: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !udp_port_bound(port) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("sipp {} exited: {status}\n{}", self.name, sipp_logs(dir));
            }
            assert!(
                Instant::now() < deadline,
                "sipp {} did not bind 127.0.0.1:{port}\n{}",
                self.name,
                sipp_logs(dir)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait(&mut self, timeout: Duration, dir: &Path) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "sipp {} still running after {timeout:?}\n{}",
                    self.name,
                    sipp_logs(dir)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The end of every sipp output and log in `dir`, for a failure message.
fn sipp_logs(dir: &Path) -> String {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.retain(|p| p.is_file());
    paths.sort();
    let mut out = String::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let start = text.len().saturating_sub(3000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        out += &format!("--- {}\n{}\n", path.display(), &text[start..]);
    }
    out
}

/// Whether `tool` can be started at all.
fn runs(tool: &str) -> bool {
    Command::new(tool)
        .arg("-v")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Whether this process may open raw sockets, as sipp's pcap play does.
fn has_cap_net_raw() -> bool {
    const CAP_NET_RAW: u32 = 13;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
            u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_NET_RAW) != 0)
}

/// Three distinct ports P on 127.0.0.1 with P and P + 2 free (sipp's -mp binds both),
/// outside the receiver's RTP range: free when checked; sipp binds them a moment later.
fn free_port_pairs() -> [u16; 3] {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..100 {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        held.push(socket);
        if port > 65533 || (RTP_PORTS.0 - 2..=RTP_PORTS.1).contains(&port) {
            continue;
        }
        let Ok(second) = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], port + 2))) else {
            continue;
        };
        held.push(second);
        ports.push(port);
        if let Ok(ports) = <[u16; 3]>::try_from(ports.as_slice()) {
            return ports;
        }
    }
    panic!("no free UDP port pairs on 127.0.0.1");
}

/// Whether some socket has bound UDP `port` (Linux: /proc/net/udp).
fn udp_port_bound(port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|line| {
            line.split_whitespace()
                .nth(1)
                .is_some_and(|local| format!("{local} ").ends_with(&needle))
        })
}
