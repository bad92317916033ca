//! G.722 decoder checked sample for sample against ffmpeg's independent
//! implementation (`adpcm_g722`), on a real capture and on a synthetic signal.
//!
//! Fixtures in `tests/data/`:
//! * `sip-rtp-g722.payloads.g722`: the 425 RTP payloads (160 bytes each) of
//!   `shared/captures/sip-rtp-g722.pcap`, concatenated:
//!   `tshark -r sip-rtp-g722.pcap -Y rtp.p_type==9 -T fields -e rtp.payload | tr -d '\n' | xxd -r -p`
//! * `tone-sweep.g722`: ffmpeg's G.722 encoding of 2 s of 440 Hz + a 300 Hz..7.3 kHz
//!   sweep + 6 kHz (the last two exercise the high band):
//!   `ffmpeg -f lavfi -i "aevalsrc=0.45*sin(2*PI*440*t)+0.45*sin(2*PI*(300+3500*t)*t)*gte(t\,0.5)+0.3*sin(2*PI*6000*t)*gte(t\,1.2):s=16000:d=2" -c:a g722 -f g722 tone-sweep.g722`
//! * `*.ffmpeg.s16le`: `ffmpeg -f g722 -i X.g722 -f s16le -acodec pcm_s16le X.ffmpeg.s16le`
//!   (ffmpeg 5.1.9, Debian 12).

mod common;

use std::process::Command;

use common::{
    captures_dir, first_difference, have_tool, read_data, run, s16le, scratch_dir, tshark_payloads,
};
use rst_codec::{Codec, Decoder};

/// Decodes through the front door in `packet`-byte pieces, as the receiver
/// would, so state must carry across calls.
fn decode_in_packets(input: &[u8], packet: usize) -> Vec<i16> {
    let mut decoder = Decoder::new(Codec::G722);
    let mut out = Vec::new();
    for chunk in input.chunks(packet) {
        decoder.decode(chunk, &mut out).unwrap();
    }
    out
}

fn assert_same(ours: &[i16], reference: &[i16], what: &str) {
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    assert_eq!(
        first_difference(ours, reference),
        None,
        "{what}: (index, ours, ffmpeg)"
    );
}

#[test]
fn capture_matches_committed_ffmpeg_output() {
    let input = read_data("sip-rtp-g722.payloads.g722");
    assert_eq!(input.len(), 425 * 160);
    let reference = s16le(&read_data("sip-rtp-g722.ffmpeg.s16le"));
    let ours = decode_in_packets(&input, 160);
    assert_eq!(ours.len(), 2 * input.len());
    assert_same(&ours, &reference, "sip-rtp-g722");
    // Real speech, not silence: the comparison above is not trivially true.
    assert!(ours.iter().any(|s| s.unsigned_abs() > 1000));
}

#[test]
fn tone_sweep_matches_committed_ffmpeg_output() {
    let input = read_data("tone-sweep.g722");
    let reference = s16le(&read_data("tone-sweep.ffmpeg.s16le"));
    // An odd packet size makes sure nothing depends on packet boundaries.
    assert_same(&decode_in_packets(&input, 333), &reference, "tone-sweep");
}

#[test]
fn fixture_equals_payloads_in_capture() {
    let Some(captures) = captures_dir() else {
        return;
    };
    if !have_tool("tshark") {
        return;
    }
    let payloads = tshark_payloads(&captures.join("sip-rtp-g722.pcap"), 9);
    assert_eq!(payloads.len(), 425);
    assert!(payloads.iter().all(|p| p.len() == 160));
    assert_eq!(payloads.concat(), read_data("sip-rtp-g722.payloads.g722"));
}

#[test]
fn matches_live_ffmpeg() {
    if !have_tool("ffmpeg") {
        return;
    }
    let dir = scratch_dir("g722-ffmpeg");
    // A fresh encoding with a different signal than the committed one:
    // white noise at two levels drives both bands and the scale factors hard.
    let encoded = dir.join("noise.g722");
    run(Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg("aevalsrc=(0.9*gte(mod(t\\,1)\\,0.5)+0.05)*(random(0)*2-1):s=16000:d=3")
        .args(["-c:a", "g722", "-f", "g722"])
        .arg(&encoded));
    for input in [encoded, common::data("sip-rtp-g722.payloads.g722")] {
        let decoded = dir.join("decoded.s16le");
        run(Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "g722",
                "-i",
            ])
            .arg(&input)
            .args(["-f", "s16le", "-acodec", "pcm_s16le"])
            .arg(&decoded));
        let reference = s16le(&std::fs::read(&decoded).unwrap());
        let bytes = std::fs::read(&input).unwrap();
        assert_same(
            &decode_in_packets(&bytes, 160),
            &reference,
            &input.display().to_string(),
        );
    }
}
