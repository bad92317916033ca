//! Every capture in `shared/captures/` that carries RTP, through the whole
//! daemon into a real receiver (udp_server) in this process, every recorded
//! direction checked against tshark:
//!
//! * RTP received = the packets of tshark's `rtp,streams` for the direction's
//!   flows, less what the daemon rightly never forwards, each counted from
//!   tshark's own packet list: comfort noise (PT 13), SRTP, and repeats of a
//!   sequence number (tshark's negative loss);
//! * every WAV file of the direction (a codec change to another rate starts
//!   another) at the codec's rate, sample for sample equal to tshark's RTP
//!   payloads decoded with rst-codec and placed by their timestamps, loss as
//!   silence (`common::expected_segments`, the receiver's rules);
//! * the payload types recorded as audio (never CN, never telephone-event),
//!   and the DTMF digits, against the RFC 4733 packets tshark shows.
//!
//! Which tshark flows make a call's R (caller to callee) and W is what the
//! SDP of each call says (SOURCES.md's per-stream table lists them); that
//! and the Call-IDs are all this file states by hand. Needs tshark and the
//! captures; without them each test prints SKIPPED.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use common::*;
use serde_json::Value;
use tap_daemon::capture::Summary;

/// One recorded call and where, in tshark's flows, its two directions are.
struct Call {
    /// The SIP Call-ID; `None` for a call of RTP alone.
    call_id: Option<&'static str>,
    /// The record's caller: how a call of RTP alone is found.
    caller: &'static str,
    /// tshark flows (source, destination) of caller-to-callee audio.
    r: &'static [(&'static str, &'static str)],
    /// And of callee-to-caller audio.
    w: &'static [(&'static str, &'static str)],
}

struct Case {
    file: &'static str,
    /// The receiver's RTP ports: a range of its own, so tests run in parallel.
    ports: &'static str,
    /// More daemon options.
    args: &'static [&'static str],
    /// Every record the capture must give, no more.
    calls: &'static [Call],
}

/// What a checked case leaves for a test's own assertions.
struct Checked {
    file: std::path::PathBuf,
    summary: Summary,
    records: HashMap<String, Value>,
    /// tshark's RTP packets per flow, as the case read them.
    packets: HashMap<(String, String), Vec<RtpRow>>,
}

fn key((src, dst): &(&str, &str)) -> (String, String) {
    ((*src).to_owned(), (*dst).to_owned())
}

fn record_of<'a>(records: &'a HashMap<String, Value>, call: &Call) -> &'a Value {
    match call.call_id {
        Some(id) => records
            .get(id)
            .unwrap_or_else(|| panic!("no record for {id} in {:?}", records.keys())),
        None => records
            .values()
            .find(|r| r["caller"] == call.caller)
            .unwrap_or_else(|| panic!("no record with caller {}", call.caller)),
    }
}

/// RFC 4733 events of `rows` (payload types `events`) whose end was seen, as
/// digits, in the order they began.
fn ended_digits(rows: &[RtpRow], events: &[u8]) -> String {
    let mut order: Vec<(u32, u32, u8)> = Vec::new();
    let mut ended: HashSet<(u32, u32)> = HashSet::new();
    for row in rows.iter().filter(|r| events.contains(&r.pt)) {
        let (Some(&event), Some(&flags)) = (row.payload.first(), row.payload.get(1)) else {
            continue;
        };
        if !order.iter().any(|(s, t, _)| (*s, *t) == (row.ssrc, row.ts)) {
            order.push((row.ssrc, row.ts, event));
        }
        if flags & 0x80 != 0 {
            ended.insert((row.ssrc, row.ts));
        }
    }
    order
        .into_iter()
        .filter(|(s, t, _)| ended.contains(&(*s, *t)))
        .map(|(.., event)| match event {
            0..=9 => char::from(b'0' + event),
            10 => '*',
            11 => '#',
            12..=15 => char::from(b'A' + event - 12),
            16 => '!',
            _ => '?',
        })
        .collect()
}

/// The record's DTMF entries of `direction` whose end arrived.
fn recorded_digits(record: &Value, direction: &str) -> String {
    record["dtmf"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["direction"] == direction && !d["duration_ms"].is_null())
        .map(|d| d["digit"].as_str().unwrap().to_owned())
        .collect()
}

/// Runs the daemon on the case's capture and checks every record and
/// direction as the module documentation says. `None` when skipped.
fn check(case: &Case) -> Option<Checked> {
    let file = capture(case.file)?;
    let mut receiver = Receiver::start(case.ports);
    let summary = run(&file, &receiver, case.args);
    let records = receiver.records(case.calls.len());
    // RTP that no SDP announces is found by tshark's heuristics only, as by
    // the daemon's `--rtp-without-sip`.
    let tshark_options: &[&str] = if case.args.contains(&"--rtp-without-sip") {
        &["-o", "rtp.heuristic_rtp:TRUE"]
    } else {
        &[]
    };
    let streams = stream_packets(&file, tshark_options);
    let packets = rtp_packets(&file, tshark_options);
    let sdp = sdp_payload_types(&file);
    for call in case.calls {
        let record = record_of(&records, call);
        let name = call.call_id.unwrap_or(call.caller);
        assert_eq!(record["caller"], call.caller, "{name}");
        assert_eq!(record["mode"], "rtp", "{name}");
        assert_eq!(record["end_reason"], "bye", "{name}");
        let maps = call
            .call_id
            .and_then(|id| sdp.get(id))
            .cloned()
            .unwrap_or_default();
        let events: Vec<u8> = maps
            .iter()
            .filter(|(_, encoding, _)| encoding.eq_ignore_ascii_case("telephone-event"))
            .map(|(pt, ..)| *pt)
            .collect();
        for (dir, flows) in [("R", call.r), ("W", call.w)] {
            let d = &record["directions"][dir];
            let what = format!("{} {name} {dir}", case.file);
            if flows.is_empty() {
                assert_eq!(d["packets"], 0, "{what}");
                assert_eq!(d["wav"], serde_json::json!([]), "{what}");
                continue;
            }
            let mut rows: Vec<RtpRow> = flows
                .iter()
                .flat_map(|flow| packets.get(&key(flow)).cloned().unwrap_or_default())
                .collect();
            rows.sort_by_key(|r| r.frame);
            let in_streams: u64 = flows
                .iter()
                .map(|flow| {
                    *streams
                        .get(&key(flow))
                        .unwrap_or_else(|| panic!("{what}: {flow:?} not in rtp,streams"))
                })
                .sum();
            assert_eq!(
                rows.len() as u64,
                in_streams,
                "{what}: tshark's packets vs its rtp,streams"
            );
            // What the daemon never forwards, as tshark sees it.
            let comfort_noise = rows.iter().filter(|r| r.pt == 13 || r.pt == 19).count() as u64;
            let encrypted = rows.iter().filter(|r| r.srtp).count() as u64;
            let mut seen = HashSet::new();
            let repeats = rows
                .iter()
                .filter(|r| !seen.insert((r.ssrc, r.seq)))
                .count() as u64;
            rows.retain(|r| r.pt != 13 && r.pt != 19 && !r.srtp);
            let rtp = &d["rtp"];
            assert_eq!(
                rtp["received"].as_u64().unwrap(),
                in_streams - comfort_noise - encrypted - repeats,
                "{what}: received vs rtp,streams {in_streams} less {comfort_noise} CN, {encrypted} SRTP, {repeats} repeats"
            );
            assert_eq!(rtp["duplicates"], 0, "{what}");
            assert_eq!(rtp["late"], 0, "{what}");

            let expected = expected_segments(&rows, &events, |pt| codec_of(pt, &maps));
            let wavs = d["wav"].as_array().unwrap();
            assert_eq!(wavs.len(), expected.len(), "{what}: WAV files");
            let mut total = 0;
            for (i, (wav, segment)) in wavs.iter().zip(&expected).enumerate() {
                let (rate, samples) = read_wav(wav.as_str().unwrap());
                assert_eq!(rate, segment.rate, "{what} segment {i}: rate");
                assert_eq!(
                    samples.len(),
                    segment.samples.len(),
                    "{what} segment {i}: sample count"
                );
                assert!(
                    samples == segment.samples,
                    "{what} segment {i}: samples differ"
                );
                total += samples.len() as u64;
            }
            assert_eq!(d["samples"].as_u64().unwrap(), total, "{what}");

            let mut audio_pts: Vec<u8> = Vec::new();
            for row in rows.iter().filter(|r| !events.contains(&r.pt)) {
                if !audio_pts.contains(&row.pt) {
                    audio_pts.push(row.pt);
                }
            }
            assert_eq!(d["payload_types"], serde_json::json!(audio_pts), "{what}");
            assert_eq!(
                recorded_digits(record, dir),
                ended_digits(&rows, &events),
                "{what}: DTMF"
            );
            let rates: Vec<u32> = expected.iter().map(|s| s.rate).collect();
            eprintln!(
                "{what}: {in_streams} packets in rtp,streams ({comfort_noise} CN, {encrypted} SRTP, {repeats} repeats), {} samples at {rates:?} Hz: equal",
                total
            );
        }
    }
    Some(Checked {
        file,
        summary,
        records,
        packets,
    })
}

/// Counts tshark's packets that match `filter`.
fn count(file: &Path, filter: &str) -> u64 {
    tshark(&["-n", "-r", file.to_str().unwrap(), "-Y", filter])
        .lines()
        .count() as u64
}

// ---------------------------------------------------------------- the captures

/// ZRTP-keyed SRTP (Wireshark's "SIP call with ZRTP protected media"). From
/// the packets: the first RTP of each direction is in the clear (tshark
/// decodes 12 PCMU payloads one way, 1 the other); then ZRTP's handshake
/// runs on the same ports (Hello ... Conf2ACK; RTP version 0, never audio);
/// from the Conf2ACK on, tshark takes every packet of that flow pair for
/// SRTP (each payload 4 bytes longer: the auth tag), which nobody without
/// the keys can decode. So the right recording is the clear audio, each
/// packet at its timestamp, and silence for the encrypted stretch: the
/// daemon drops SRTP rather than record ciphertext as noise. Asterisk's
/// closing re-INVITE moves the caller's audio to 192.168.10.2:18874, in the
/// clear again (same SSRC, its sequence numbers running on): those two
/// packets end R, after the silence.
#[test]
fn asterisk_zfone_xlite_records_the_clear_audio_not_srtp() {
    let Some(c) = check(&Case {
        file: "Asterisk_ZFONE_XLITE.pcap",
        ports: "23000-23049",
        args: &[],
        calls: &[Call {
            call_id: Some("ZDYzOWVlNjEwM2NjZTBjNzliNmM1ZTNiOGZjNWFhN2E."),
            caller: "10009",
            r: &[
                ("192.168.10.41:64508", "192.168.10.40:49848"),
                ("192.168.10.41:64508", "192.168.10.2:18874"),
            ],
            w: &[("192.168.10.40:49848", "192.168.10.41:64508")],
        }],
    }) else {
        return;
    };
    assert_eq!(c.summary.pipeline.zrtp, count(&c.file, "zrtp"));
    assert_eq!(
        c.summary.pipeline.rtp_encrypted,
        count(&c.file, "srtp.enc_payload")
    );
    let record = c.records.values().next().unwrap();
    // SOURCES.md: 1920 decoded samples from the clear packets of 40 -> 41.
    assert_eq!(record["directions"]["W"]["samples"], 1920);
}

#[test]
fn sip_call_rtp_g711() {
    check(&Case {
        file: "SIP_CALL_RTP_G711.pcap",
        ports: "23050-23099",
        args: &[],
        calls: &[G711_CALL],
    });
}

#[test]
fn derived_ipv4frag_sip_call_rtp_g711() {
    // SIP in IPv4 fragments, the first INVITE's out of order: the same call.
    check(&Case {
        file: "derived-ipv4frag__SIP_CALL_RTP_G711.pcap",
        ports: "23100-23149",
        args: &[],
        calls: &[G711_CALL],
    });
}

#[test]
fn sip_dtmf2() {
    check(&Case {
        file: "SIP_DTMF2.cap",
        ports: "23150-23199",
        args: &[],
        calls: &[DTMF_CALL],
    });
}

#[test]
fn derived_concurrent3() {
    check(&Case {
        file: "derived-concurrent3__SIP_CALL_RTP_G711+sip-rtp-g722+SIP_DTMF2.pcap",
        ports: "23200-23249",
        args: &[],
        calls: &[G711_CALL, DTMF_CALL, G722_CALL],
    });
}

/// Asterisk as a B2BUA with direct media: after its re-INVITEs both dialogs
/// (phone 1 to Asterisk, Asterisk to phone 2) describe the one flow between
/// the phones, 172.16.98.1:8000 <-> 172.16.98.145:8000. Both calls are
/// recorded, the audio once: in the first dialog, whose caller 172.16.98.1
/// sends R; the second dialog's record has none.
#[test]
fn b2bua_asterisk_records_the_direct_media_once() {
    check(&Case {
        file: "b2bua-asterisk.pcapng",
        ports: "23250-23299",
        args: &[],
        calls: &[
            Call {
                call_id: Some("M2Q0ZDc1ZGM1NzIyMTlhZTA3NDU3NTgzMzA5YmJmZWQ."),
                caller: "telephone1",
                r: &[("172.16.98.1:8000", "172.16.98.145:8000")],
                w: &[("172.16.98.145:8000", "172.16.98.1:8000")],
            },
            Call {
                call_id: Some("37686afc57ce24ac655742b3644a7bb8@172.16.98.101:5060"),
                caller: "telephone1",
                r: &[],
                w: &[],
            },
        ],
    });
}

const TCP_CALL: Call = Call {
    call_id: Some("158936656982201062716@10.33.6.100"),
    caller: "101",
    r: &[("10.33.6.100:6000", "10.33.6.101:6050")],
    w: &[("10.33.6.101:6050", "10.33.6.100:6000")],
};

#[test]
fn sip_over_tcp_with_comfort_noise() {
    check(&Case {
        file: "sip-over-tcp.pcap",
        ports: "23300-23349",
        args: &[],
        calls: &[TCP_CALL],
    });
}

#[test]
fn derived_qinq200_10_sip_over_tcp() {
    check(&Case {
        file: "derived-qinq200-10__sip-over-tcp.pcap",
        ports: "23350-23399",
        args: &[],
        calls: &[TCP_CALL],
    });
}

const RTP_PROTOCOL_CALL: Call = Call {
    call_id: Some("1907983263271201083544@10.33.6.101"),
    caller: "MP114.FXS1",
    r: &[("10.33.6.101:6040", "10.33.6.100:6020")],
    w: &[("10.33.6.100:6020", "10.33.6.101:6040")],
};

#[test]
fn rtp_protocol_with_comfort_noise() {
    check(&Case {
        file: "rtp-protocol.pcap",
        ports: "23400-23449",
        args: &[],
        calls: &[RTP_PROTOCOL_CALL],
    });
}

#[test]
fn derived_vlan100_rtp_protocol() {
    check(&Case {
        file: "derived-vlan100__rtp-protocol.pcap",
        ports: "23450-23499",
        args: &[],
        calls: &[RTP_PROTOCOL_CALL],
    });
}

/// SIPp's echo: the UAS sends back PCMA with the caller's own SSRC, though
/// its SDP answer says PCMU, and RFC 4733 digit 1 each way (on an SSRC of
/// its own, the end packet sent three times: tshark's -2 lost).
#[test]
fn generated_sipp_echo() {
    let Some(c) = check(&Case {
        file: "generated-sipp-uac_pcap-vs-uas-rtp_echo-loopback.pcapng",
        ports: "23500-23549",
        args: &[],
        calls: &[Call {
            call_id: Some("1-11553@127.0.0.1"),
            caller: "sipp",
            r: &[("127.0.0.1:7000", "127.0.0.1:6000")],
            w: &[("127.0.0.1:6000", "127.0.0.1:7000")],
        }],
    }) else {
        return;
    };
    let record = c.records.values().next().unwrap();
    assert_eq!(recorded_digits(record, "R"), "1");
    assert_eq!(recorded_digits(record, "W"), "1");
}

/// Opus, both ways on one SSRC, PT 96 declared `opus/48000`: mono WAVs at
/// 48 kHz, 960 samples per 20 ms packet.
#[test]
fn invite_opus_bye_decodes_opus_at_48_khz() {
    let Some(c) = check(&Case {
        file: "invite-opus-bye.pcap",
        ports: "23550-23599",
        args: &[],
        calls: &[Call {
            call_id: Some("1-3811003@127.0.0.1"),
            caller: "alice",
            r: &[("127.0.0.1:5084", "127.0.0.1:5094")],
            w: &[("127.0.0.1:5094", "127.0.0.1:5084")],
        }],
    }) else {
        return;
    };
    let record = c.records.values().next().unwrap();
    for dir in ["R", "W"] {
        let d = &record["directions"][dir];
        assert_eq!(d["codecs"], serde_json::json!(["opus"]), "{dir}");
        assert_eq!(d["raw"], serde_json::json!([]), "{dir}");
        let packets = c.packets[&key(&if dir == "R" {
            ("127.0.0.1:5084", "127.0.0.1:5094")
        } else {
            ("127.0.0.1:5094", "127.0.0.1:5084")
        })]
            .len() as u64;
        assert_eq!(d["samples"].as_u64().unwrap(), packets * 960, "{dir}");
    }
}

/// PCMU, then a re-INVITE to opus (a new SSRC each way): the daemon declares
/// PT 96 to the receiver mid-call, and each direction is two WAV files, the
/// PCMU part at 8 kHz and the opus part at 48 kHz.
#[test]
fn register_invite_reinvite_bye_is_two_segments_per_direction() {
    let Some(c) = check(&Case {
        file: "register-invite-reinvite-bye.pcap",
        ports: "23600-23649",
        args: &[],
        calls: &[Call {
            call_id: Some("1-3812687@127.0.0.1"),
            caller: "alice",
            r: &[("127.0.0.1:5094", "127.0.0.1:5084")],
            w: &[("127.0.0.1:5084", "127.0.0.1:5094")],
        }],
    }) else {
        return;
    };
    let record = c.records.values().next().unwrap();
    for dir in ["R", "W"] {
        let d = &record["directions"][dir];
        assert_eq!(d["codecs"], serde_json::json!(["PCMU", "opus"]), "{dir}");
        assert_eq!(d["wav"].as_array().unwrap().len(), 2, "{dir}");
        assert_eq!(d["raw"], serde_json::json!([]), "{dir}");
    }
}

/// RTP alone, G.729, 244 of 565 packets (SOURCES.md): heavy real loss, all
/// of it silence at its place; the first packet, 23 sequence numbers before
/// the next, is recorded too.
#[test]
fn rtpproxy_lost_heavy_loss_is_silence() {
    let Some(c) = check(&Case {
        file: "rtpproxy_lost.a.rtp.pcap",
        ports: "23650-23699",
        args: &["--rtp-without-sip"],
        calls: &[Call {
            call_id: None,
            caller: "144.209.176.52-36778",
            r: &[("144.209.176.52:36778", "15.3.253.86:60060")],
            w: &[],
        }],
    }) else {
        return;
    };
    let rtp = &c.records.values().next().unwrap()["directions"]["R"]["rtp"];
    // tshark's rtp,streams: 321 lost.
    assert_eq!(rtp["lost"], 321, "{rtp}");
    assert_eq!(rtp["expected"], 565, "{rtp}");
}

#[test]
fn sip_over_udp_g711_two_calls() {
    check(&Case {
        file: "sip-rtp-g711.pcap",
        ports: "23700-23749",
        args: &[],
        calls: &[SIPP_PCMU, SIPP_PCMA],
    });
}

#[test]
fn sip_rtp_g722() {
    check(&Case {
        file: "sip-rtp-g722.pcap",
        ports: "23750-23799",
        args: &[],
        calls: &[G722_CALL],
    });
}

#[test]
fn sip_rtp_g729a_through_bcg729() {
    check(&Case {
        file: "sip-rtp-g729a.pcap",
        ports: "23800-23849",
        args: &[],
        calls: &[Call {
            call_id: Some("1-24411@10.0.2.20"),
            caller: "sipp",
            r: &[],
            w: &[("10.0.2.15:28120", "10.0.2.20:6000")],
        }],
    });
}

#[test]
fn speech_8k_ulaw_without_sip() {
    check(&Case {
        file: "speech_8k_ulaw.pcap",
        ports: "23850-23899",
        args: &["--rtp-without-sip"],
        calls: &[Call {
            call_id: None,
            caller: "10.0.0.60-6000",
            r: &[("10.0.0.60:6000", "172.20.0.30:6000")],
            w: &[],
        }],
    });
}

const G711_CALL: Call = Call {
    call_id: Some("12013223@200.57.7.195"),
    caller: "200.57.7.195",
    r: &[("200.57.7.196:40376", "200.57.7.204:8000")],
    w: &[("200.57.7.204:8000", "200.57.7.196:40376")],
};
const DTMF_CALL: Call = Call {
    call_id: Some("25672@192.168.105.110"),
    caller: "2502",
    r: &[("192.168.105.110:4374", "192.168.105.172:4376")],
    w: &[("192.168.105.172:4376", "192.168.105.110:4376")],
};
const G722_CALL: Call = Call {
    call_id: Some("1-2161@10.0.2.20"),
    caller: "sipp",
    r: &[],
    w: &[("10.0.2.15:17472", "10.0.2.20:6000")],
};
const SIPP_PCMU: Call = Call {
    call_id: Some("1-1966@10.0.2.20"),
    caller: "sipp",
    r: &[],
    w: &[("10.0.2.15:27942", "10.0.2.20:6000")],
};
const SIPP_PCMA: Call = Call {
    call_id: Some("1-1968@10.0.2.20"),
    caller: "sipp",
    r: &[],
    w: &[("10.0.2.15:28102", "10.0.2.20:6000")],
};
