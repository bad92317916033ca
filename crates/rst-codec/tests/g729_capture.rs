//! G.729 decoding through bcg729 on the real capture `sip-rtp-g729a.pcap`.
//!
//! Fixture `tests/data/sip-rtp-g729a.payloads.g729`: its 425 RTP payloads
//! (20 bytes = two frames each), concatenated:
//! `tshark -r sip-rtp-g729a.pcap -Y rtp.p_type==18 -T fields -e rtp.payload | tr -d '\n' | xxd -r -p`

#![cfg(feature = "g729")]

mod common;

use std::process::Command;

use common::{captures_dir, have_tool, read_data, run, s16le, scratch_dir, tshark_payloads};
use rst_codec::{Codec, DecodeError, Decoder};

const PACKET: usize = 20;

fn decode_capture() -> Vec<i16> {
    let input = read_data("sip-rtp-g729a.payloads.g729");
    let mut decoder = Decoder::new(Codec::for_payload_type(18, 8000));
    assert_eq!(decoder.codec(), Codec::G729);
    let mut out = Vec::new();
    for packet in input.chunks(PACKET) {
        decoder.decode(packet, &mut out).unwrap();
    }
    out
}

fn rms(samples: &[i16]) -> f64 {
    let sum: f64 = samples.iter().map(|&s| f64::from(s).powi(2)).sum();
    (sum / samples.len() as f64).sqrt()
}

/// Normalised cross-correlation of two equally long signals.
fn correlation(a: &[i16], b: &[i16]) -> f64 {
    let dot = |x: &[i16], y: &[i16]| -> f64 {
        x.iter()
            .zip(y)
            .map(|(&p, &q)| f64::from(p) * f64::from(q))
            .sum()
    };
    dot(a, b) / (dot(a, a) * dot(b, b)).sqrt()
}

#[test]
fn capture_decodes_to_80_samples_per_frame_deterministically() {
    let input = read_data("sip-rtp-g729a.payloads.g729");
    assert_eq!(input.len(), 425 * PACKET);
    let first = decode_capture();
    assert_eq!(first.len(), input.len() / 10 * 80);
    // Speech, not silence or a constant.
    assert!(first.iter().any(|&s| s != 0));
    assert!(rms(&first) > 100.0, "rms {}", rms(&first));
    // A new decoder starts from the same state: same bytes, same samples.
    assert_eq!(first, decode_capture());
}

#[test]
fn whole_call_in_one_payload_equals_packet_by_packet() {
    // State carries across calls, so packet boundaries must not matter.
    let input = read_data("sip-rtp-g729a.payloads.g729");
    let mut whole = Vec::new();
    Decoder::new(Codec::G729)
        .decode(&input, &mut whole)
        .unwrap();
    assert_eq!(whole, decode_capture());
}

#[test]
fn truncated_packets_decode_whole_frames_and_report_the_rest() {
    let input = read_data("sip-rtp-g729a.payloads.g729");
    let mut decoder = Decoder::new(Codec::G729);
    for cut in 0..PACKET {
        let packet = &input[cut * PACKET..(cut + 1) * PACKET][..cut];
        let mut out = Vec::new();
        let result = decoder.decode(packet, &mut out);
        let rest = cut % 10;
        let sid = rest == 2;
        assert_eq!(out.len(), (cut / 10 + usize::from(sid)) * 80, "cut {cut}");
        if rest == 0 || sid {
            assert_eq!(result, Ok(()), "cut {cut}");
        } else {
            assert_eq!(
                result,
                Err(DecodeError::TrailingBytes {
                    codec: "G729",
                    bytes: rest
                }),
                "cut {cut}"
            );
        }
    }
}

#[test]
fn fixture_equals_payloads_in_capture() {
    let Some(captures) = captures_dir() else {
        return;
    };
    if !have_tool("tshark") {
        return;
    }
    let payloads = tshark_payloads(&captures.join("sip-rtp-g729a.pcap"), 18);
    assert_eq!(payloads.len(), 425);
    assert!(payloads.iter().all(|p| p.len() == PACKET));
    assert_eq!(payloads.concat(), read_data("sip-rtp-g729a.payloads.g729"));
}

/// ffmpeg has its own G.729 decoder (full G.729 post-filter, not Annex A's),
/// so the two are not bit-exact; they must still produce the same speech.
#[test]
fn resembles_ffmpeg_g729_decoder() {
    if !have_tool("ffmpeg") {
        return;
    }
    let dir = scratch_dir("g729-ffmpeg");
    let decoded = dir.join("decoded.s16le");
    run(Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "g729",
            "-i",
        ])
        .arg(common::data("sip-rtp-g729a.payloads.g729"))
        .args(["-f", "s16le", "-acodec", "pcm_s16le"])
        .arg(&decoded));
    let reference = s16le(&std::fs::read(&decoded).unwrap());
    let ours = decode_capture();
    assert_eq!(ours.len(), reference.len());
    let corr = correlation(&ours, &reference);
    let level = rms(&ours) / rms(&reference);
    eprintln!("bcg729 vs ffmpeg: correlation {corr:.4}, level ratio {level:.3}");
    assert!(corr > 0.98, "correlation {corr}");
    assert!((0.9..1.1).contains(&level), "level ratio {level}");
}
