//! The whole daemon on the real captures in `shared/captures/`, into a real
//! receiver (udp_server) started in this process, checked against tshark:
//! the calls, their parties and Call-IDs, per direction the RTP packet count
//! of `tshark -z rtp,streams`, and the recorded WAV sample for sample against
//! the RTP payloads tshark extracts, decoded with rst-codec and placed by
//! their timestamps (loss = silence), as the receiver places them.
//!
//! Needs tshark and the captures; without them each test prints SKIPPED.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use common::{
    capture, dtmf_digits, expected_samples, read_wav, rtp_packets, run, stream_packets, Receiver,
};

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
    let streams = stream_packets(file, &[]);
    let packets = rtp_packets(file, &[]);
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
