//! RTP mode end to end (rst.conf.xml `mode=rtp`): the INV carries the module's
//! two local ports, the receiver's ACK names its two server ports, and the
//! module sends RFC 3550 RTP per leg. What the module sent is read back from
//! its own `write-hex` dump (every datagram, in order); what arrived is the
//! receiver's record (its jitter buffer's figures) and WAVs, sample by sample.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// One RTP packet as the module sent it.
#[derive(Debug, Clone)]
struct Rtp {
    payload_type: u8,
    marker: bool,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    payload: Vec<u8>,
}

fn unhex(line: &str) -> Vec<u8> {
    (0..line.len() / 2)
        .map(|i| u8::from_str_radix(&line[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Every datagram of the module's hex dump of `uuid`, once its BYE is there.
fn sent_datagrams(hex_dir: &Path, uuid: &str) -> Vec<Vec<u8>> {
    let path = hex_dir.join(format!("{uuid}.hex"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let datagrams: Vec<Vec<u8>> = text.lines().map(unhex).collect();
        if datagrams.iter().any(|d| d.starts_with(b"BYE ")) {
            return datagrams;
        }
        assert!(
            Instant::now() < deadline,
            "no BYE in {}: {} datagrams",
            path.display(),
            datagrams.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn parse_rtp(datagram: &[u8]) -> Option<Rtp> {
    // Version 2, no padding, no extension, no CSRC: what the module sends.
    if datagram.len() < 12 || datagram[0] != 0x80 {
        return None;
    }
    Some(Rtp {
        marker: datagram[1] & 0x80 != 0,
        payload_type: datagram[1] & 0x7F,
        sequence: u16::from_be_bytes([datagram[2], datagram[3]]),
        timestamp: u32::from_be_bytes(datagram[4..8].try_into().unwrap()),
        ssrc: u32::from_be_bytes(datagram[8..12].try_into().unwrap()),
        payload: datagram[12..].to_vec(),
    })
}

/// What one RTP call gives a test.
struct RtpCall {
    _receiver: Receiver,
    record: Value,
    stats: Value,
    counters: Value,
    datagrams: Vec<Vec<u8>>,
}

fn rtp_call(audio: &str, codec: &str, rate: u32, u: &str) -> RtpCall {
    let receiver = Receiver::start();
    let hex = tempfile::tempdir().unwrap();
    let hex_dir = hex.path().to_str().unwrap().to_owned();
    let conf = conf_for(
        &receiver,
        &[
            ("mode", "rtp"),
            ("audio", audio),
            ("write-hex", "true"),
            ("hex-dir", &hex_dir),
        ],
    );
    let mut host = Host::start();
    host.load(conf.path());
    host.ok(&format!(
        "session {u} caller_id_number=1001 destination_number=1002 codec={codec} rate={rate}"
    ));
    host.ok(&format!("app {u} rst"));
    host.ok(&format!(
        "media {u} 1 read_hz={READ_HZ} write_hz={WRITE_HZ}"
    ));
    host.ok("wait");
    let hangup = host.ok(&format!("hangup {u}"));
    // The recording bug (no audio came back, so no playback bug).
    assert_eq!(hangup["bugs_closed"], 1, "{hangup}");
    let record = receiver.record(u);
    let datagrams = sent_datagrams(hex.path(), u);
    let stats = host.ok(&format!("stats {u}"));
    let status = host.ok("api rst_status");
    let counters: Value = serde_json::from_str(status["output"].as_str().unwrap().trim()).unwrap();
    finish(host);
    assert_eq!(record["mode"], "rtp", "{record}");
    assert_eq!(record["end_reason"], "bye", "{record}");
    assert_eq!(record["caller"], "1001", "{record}");
    assert_eq!(record["callee"], "1002", "{record}");
    RtpCall {
        _receiver: receiver,
        record,
        stats,
        counters,
        datagrams,
    }
}

/// The INV names the two local ports the record saw the RTP come from; the
/// RTP goes out as two legs, each one SSRC with consecutive sequence numbers
/// and timestamps advancing by the frame's samples. Returns the legs, R first
/// (the leg whose first payload is `first_read_payload`).
fn check_wire(
    call: &RtpCall,
    u: &str,
    samples_per_frame: u32,
    first_read_payload: &[u8],
) -> [Vec<Rtp>; 2] {
    let record = &call.record;
    let first = String::from_utf8_lossy(&call.datagrams[0]).into_owned();
    let fields: Vec<&str> = first.split(':').collect();
    assert!(
        fields.len() >= 6 && fields[0] == "INV " && fields[1] == u,
        "first datagram: {first}"
    );
    let ports: (u64, u64) = (fields[4].parse().unwrap(), fields[5].parse().unwrap());
    assert_ne!(ports.0, ports.1, "{first}");
    assert_eq!(
        record["sender_rtp_ports"],
        serde_json::json!({"read": ports.0, "write": ports.1}),
        "the INV's ports are the ones the receiver took RTP from: {first}"
    );
    let last = call.datagrams.last().unwrap();
    assert_eq!(last, format!("BYE :{u}").as_bytes());
    // Nothing but INV(s), RTP, BYE(s): no DATA in RTP mode.
    let mut legs: BTreeMap<u32, Vec<Rtp>> = BTreeMap::new();
    for datagram in &call.datagrams {
        if let Some(packet) = parse_rtp(datagram) {
            legs.entry(packet.ssrc).or_default().push(packet);
        } else {
            assert!(
                datagram.starts_with(b"INV :") || datagram.starts_with(b"BYE :"),
                "not INV, RTP or BYE: {:?}",
                String::from_utf8_lossy(datagram)
            );
        }
    }
    assert_eq!(legs.len(), 2, "one SSRC per leg: {:?}", legs.keys());
    let mut legs: Vec<Vec<Rtp>> = legs.into_values().collect();
    if legs[1][0].payload == first_read_payload {
        legs.swap(0, 1);
    }
    assert_eq!(
        legs[0][0].payload, first_read_payload,
        "no leg starts with the read tone"
    );
    for (name, leg) in ["R", "W"].iter().zip(&legs) {
        for pair in leg.windows(2) {
            assert_eq!(
                pair[1].sequence,
                pair[0].sequence.wrapping_add(1),
                "{name}: sequence numbers"
            );
            assert_eq!(
                pair[1].timestamp,
                pair[0].timestamp.wrapping_add(samples_per_frame),
                "{name}: timestamps"
            );
            assert_eq!(pair[1].payload_type, pair[0].payload_type, "{name}");
        }
        assert!(
            leg.iter()
                .all(|p| !p.marker || p.sequence == leg[0].sequence),
            "{name}: marker"
        );
    }
    [legs.remove(0), legs.remove(0)]
}

/// The record's jitter-buffer figures of a direction: every packet sent arrived once.
fn check_rtp_figures(record: &Value, dir: &str, sent: usize) {
    let rtp = &record["directions"][dir]["rtp"];
    assert!(rtp.is_object(), "{dir}: no rtp figures: {record}");
    for (key, value) in [
        ("expected", sent as u64),
        ("received", sent as u64),
        ("lost", 0),
        ("late", 0),
        ("duplicates", 0),
        ("ssrc_changes", 0),
        ("timestamp_jumps", 0),
    ] {
        assert_eq!(rtp[key], value, "{dir} rtp.{key}: {record}");
    }
}

fn native_rtp(codec: &str, u: &str) {
    let call = rtp_call("native", codec, 8000, u);
    let encode = |s: i16| if codec == "PCMU" { ulaw(s) } else { alaw(s) };
    let first_read: Vec<u8> = tone(READ_HZ, 8000.0, 8000, 0, 160)
        .into_iter()
        .map(encode)
        .collect();
    let legs = check_wire(&call, u, 160, &first_read);
    let pt = if codec == "PCMU" { 0 } else { 8 };
    for (dir, hz, leg) in [("R", READ_HZ, &legs[0]), ("W", WRITE_HZ, &legs[1])] {
        assert_eq!(leg.len(), 50, "{dir}: packets sent");
        assert!(leg.iter().all(|p| p.payload_type == pt), "{dir}: PT");
        let sent: Vec<u8> = leg.iter().flat_map(|p| p.payload.clone()).collect();
        let expected: Vec<u8> = tone(hz, 8000.0, 8000, 0, 8000)
            .into_iter()
            .map(encode)
            .collect();
        assert_eq!(
            sent, expected,
            "{dir}: the payloads are the tone's frames in order"
        );
        check_rtp_figures(&call.record, dir, 50);
        let direction = &call.record["directions"][dir];
        assert_eq!(
            direction["codecs"],
            serde_json::json!([codec]),
            "{}",
            call.record
        );
        assert_eq!(
            direction["payload_types"],
            serde_json::json!([pt]),
            "{}",
            call.record
        );
        let (spec, samples) = direction_wav(&call.record, dir);
        assert_eq!(spec.sample_rate, 8000);
        assert_samples(
            &format!("RTP {codec} {dir}"),
            &samples,
            &heard(codec, &tone(hz, 8000.0, 8000, 0, 8000)),
        );
    }
    // Every frame queued went out (the wire above shows all 100); rst_status's
    // frames_sent itself misses frames held until the ACK: see
    // receiver_down.rs, rtp_frames_held_until_the_ack_count_as_sent.
    assert_eq!(call.counters["frames_queued"], 100, "{}", call.counters);
    assert_eq!(
        call.counters["frames_dropped_waiting"], 0,
        "{}",
        call.counters
    );
    assert_eq!(call.counters["send_errors"], 0, "{}", call.counters);
    assert_eq!(call.counters["invs_unacknowledged"], 0, "{}", call.counters);
    assert_eq!(
        call.stats["callbacks"]["TAP_NATIVE_READ"]["count"], 50,
        "{}",
        call.stats
    );
}

#[test]
fn rtp_mode_native_pcmu_end_to_end() {
    native_rtp("PCMU", &uuid(0x71));
}

#[test]
fn rtp_mode_native_pcma_end_to_end() {
    native_rtp("PCMA", &uuid(0x72));
}

fn l16_rtp(codec: &str, rate: u32, u: &str) {
    let call = rtp_call("l16", codec, rate, u);
    let frame = (rate / 50) as usize;
    let first_read: Vec<u8> = heard(codec, &tone(READ_HZ, 8000.0, rate, 0, frame))
        .into_iter()
        .flat_map(i16::to_be_bytes)
        .collect();
    let legs = check_wire(&call, u, frame as u32, &first_read);
    // Linear frames come in pairs (switch_core_media_bug_read with fill=TRUE
    // waits until both sides have one): as many R as W.
    let sent = legs[0].len();
    assert_eq!(legs[1].len(), sent);
    assert!(sent >= 48, "only {sent} frames per leg");
    assert_eq!(
        call.counters["frames_dropped_waiting"], 0,
        "{}",
        call.counters
    );
    for (dir, hz, leg) in [("R", READ_HZ, &legs[0]), ("W", WRITE_HZ, &legs[1])] {
        // RTP's L16 is big-endian on the dynamic payload type the INV declares.
        assert!(leg.iter().all(|p| p.payload_type == 96), "{dir}: PT");
        let expected = heard(codec, &tone(hz, 8000.0, rate, 0, sent * frame));
        let wire: Vec<i16> = leg
            .iter()
            .flat_map(|p| {
                p.payload
                    .chunks_exact(2)
                    .map(|b| i16::from_be_bytes([b[0], b[1]]))
            })
            .collect();
        assert_samples(&format!("{dir} on the wire"), &wire, &expected);
        check_rtp_figures(&call.record, dir, sent);
        let (spec, samples) = direction_wav(&call.record, dir);
        assert_eq!(spec.sample_rate, rate, "{dir}: {}", call.record);
        assert_samples(
            &format!("RTP L16 from {codec}/{rate} {dir}"),
            &samples,
            &expected,
        );
    }
    let inv = String::from_utf8_lossy(&call.datagrams[0]).into_owned();
    assert!(
        inv.ends_with(&format!(
            "pt96=L16/{rate}:pt101=telephone-event/{rate}:play=1"
        )),
        "{inv}"
    );
}

#[test]
fn rtp_mode_l16_from_a_pcmu_channel_end_to_end() {
    l16_rtp("PCMU", 8000, &uuid(0x73));
}

#[test]
fn rtp_mode_l16_from_a_16khz_channel_end_to_end() {
    l16_rtp("L16", 16000, &uuid(0x74));
}
