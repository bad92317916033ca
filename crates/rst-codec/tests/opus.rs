//! Opus decoding through libopus, checked against ffmpeg on a real opus
//! stream and on the opus payloads of the real captures.
//!
//! Fixtures in `tests/data/`:
//! * `tone-sweep.opus`: ffmpeg's libopus encoding (Ogg, mono, 48 kbit/s, 20 ms
//!   frames) of 1.5 s of 440 Hz + a 300 Hz..7.8 kHz sweep + 12 kHz (fullband):
//!   `ffmpeg -f lavfi -i "aevalsrc=0.45*sin(2*PI*440*t)+0.45*sin(2*PI*(300+5000*t)*t)*gte(t\,0.4)+0.3*sin(2*PI*12000*t)*gte(t\,1.0):s=48000:d=1.5" -ac 1 -c:a libopus -b:a 48k -frame_duration 20 tone-sweep.opus`
//! * `tone-sweep.libopus.s16le`: ffmpeg decoding it through libopus, which
//!   drops the stream's pre-skip and trims the end to the last granule position:
//!   `ffmpeg -c:a libopus -i tone-sweep.opus -f s16le -acodec pcm_s16le tone-sweep.libopus.s16le`
//!   (ffmpeg 5.1.9, libopus 1.3.1, Debian 12).

#![cfg(feature = "opus")]

mod common;

use std::process::Command;

use common::{
    captures_dir, first_difference, have_tool, read_data, run, s16le, scratch_dir, tshark_payloads,
};
use rst_codec::{Codec, DecodeError, Decoder};

/// The packets of an Ogg Opus file (RFC 7845) and its pre-skip: pages are
/// `OggS` + 27-byte header + segment table; a packet is a run of lacing
/// values ending with one below 255. The first two packets are the headers.
fn ogg_opus_packets(file: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let mut packets = Vec::new();
    let mut partial = Vec::new();
    let mut at = 0;
    while at < file.len() {
        assert_eq!(&file[at..at + 4], b"OggS", "page at {at}");
        let segments = usize::from(file[at + 26]);
        let table = &file[at + 27..at + 27 + segments];
        let mut body = at + 27 + segments;
        for &lace in table {
            partial.extend_from_slice(&file[body..body + usize::from(lace)]);
            body += usize::from(lace);
            if lace < 255 {
                packets.push(std::mem::take(&mut partial));
            }
        }
        at = body;
    }
    let head = packets.remove(0);
    assert_eq!(&head[..8], b"OpusHead");
    assert_eq!(head[9], 1, "mono");
    let pre_skip = usize::from(u16::from_le_bytes([head[10], head[11]]));
    let tags = packets.remove(0);
    assert_eq!(&tags[..8], b"OpusTags");
    (packets, pre_skip)
}

/// Decodes packet by packet through the front door, as the receiver does.
fn decode(packets: &[Vec<u8>]) -> Vec<i16> {
    let mut decoder = Decoder::new(Codec::from_encoding_name("opus", 48000));
    assert_eq!(decoder.codec(), Codec::Opus);
    let mut out = Vec::new();
    for packet in packets {
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

/// Power of `samples` at `freq` Hz (Goertzel), relative to their total power.
fn tone_share(samples: &[i16], freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / 48000.0;
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
    let total: f64 = samples.iter().map(|&x| f64::from(x).powi(2)).sum();
    2.0 * power / (total * samples.len() as f64)
}

#[test]
fn tone_sweep_matches_committed_libopus_output() {
    let (packets, pre_skip) = ogg_opus_packets(&read_data("tone-sweep.opus"));
    assert_eq!(packets.len(), 76, "1.5 s plus pre-skip in 20 ms packets");
    let ours = decode(&packets);
    // Every packet is 20 ms: 960 samples at 48 kHz, nothing dropped.
    assert_eq!(ours.len(), packets.len() * 960);
    let reference = s16le(&read_data("tone-sweep.libopus.s16le"));
    assert_eq!(reference.len(), 72_000);
    let ours = &ours[pre_skip..pre_skip + reference.len()];
    assert_eq!(
        first_difference(ours, &reference),
        None,
        "(index, ours, ffmpeg)"
    );
    // A loud tone, not silence: the comparison above is not trivially true.
    assert!(rms(ours) > 3000.0, "rms {}", rms(ours));
    // 0.1..0.4 s is the 440 Hz tone alone.
    let tone = &ours[4800..19200];
    assert!(tone_share(tone, 440.0) > 0.9, "{}", tone_share(tone, 440.0));
    // 1.1..1.5 s carries the 12 kHz tone too: decoded at full band.
    let high = &ours[52_800..72_000];
    assert!(
        tone_share(high, 12000.0) > 0.1,
        "{}",
        tone_share(high, 12000.0)
    );
}

#[test]
fn decoder_state_carries_across_packets() {
    // A fresh decoder in the middle of the stream starts from another state
    // than one that decoded what came before: the receiver must keep one
    // decoder per stream, and does.
    let (packets, _) = ogg_opus_packets(&read_data("tone-sweep.opus"));
    let whole = decode(&packets);
    let tail = decode(&packets[40..]);
    assert_ne!(&whole[40 * 960..41 * 960], &tail[..960]);
}

#[test]
fn corrupt_and_truncated_packets_are_errors_never_panics() {
    let (packets, _) = ogg_opus_packets(&read_data("tone-sweep.opus"));
    let mut decoder = Decoder::new(Codec::Opus);
    let mut out = Vec::new();
    // Every cut of a real packet, and every single-byte corruption of its
    // TOC: each either decodes to whole 2.5 ms units or is a typed error
    // that appends nothing.
    let packet = &packets[30];
    let mut errors = 0;
    for cut in 0..packet.len() {
        let mut variants = vec![packet[..cut].to_vec()];
        for toc in [0x03u8, 0x0b, 0x7f, 0xff] {
            let mut v = packet[..cut.max(1)].to_vec();
            v[0] = toc;
            variants.push(v);
        }
        for v in variants {
            let before = out.len();
            match decoder.decode(&v, &mut out) {
                Ok(()) => assert_eq!((out.len() - before) % 120, 0, "{v:?}"),
                Err(error) => {
                    assert!(
                        matches!(error, DecodeError::Corrupt { codec: "opus", .. }),
                        "{error}"
                    );
                    assert_eq!(out.len(), before);
                    errors += 1;
                }
            }
        }
    }
    assert!(errors > 0, "some of these packets are invalid framing");
}

/// The payloads of both opus captures are one 80-byte packet repeated (the
/// sipnab harness's filler: TOC 0xfc = CELT fullband 20 ms stereo, then
/// 0xff 0xfe 0xa5...). Each decodes, downmixed to mono, to 960 samples at
/// 48 kHz, and those are digital silence: the range decoder reads CELT's
/// silence flag from the filler's first bits. ffmpeg's independent decoder
/// says the same (below), so a recording of these calls is rightly silent.
#[test]
fn capture_payloads_decode_to_20_ms_of_silence() {
    let Some(captures) = captures_dir() else {
        return;
    };
    if !have_tool("tshark") {
        return;
    }
    for (file, count) in [
        ("invite-opus-bye.pcap", 304),
        ("register-invite-reinvite-bye.pcap", 64),
    ] {
        let payloads = tshark_payloads(&captures.join(file), 96);
        assert_eq!(payloads.len(), count, "{file}");
        let mut decoder = Decoder::new(Codec::Opus);
        let mut out = Vec::new();
        for payload in &payloads {
            assert_eq!(payload.len(), 80, "{file}");
            assert_eq!(payload[0], 0xfc, "{file}: TOC");
            let before = out.len();
            decoder.decode(payload, &mut out).unwrap();
            assert_eq!(out.len() - before, 960, "{file}");
        }
        assert!(out.iter().all(|&s| s == 0), "{file}");
        if have_tool("ffmpeg") {
            let reference = ffmpeg_native(&payloads, "capture-payloads");
            assert_eq!(reference.len(), out.len(), "{file}: ffmpeg's length");
            assert!(reference.iter().all(|&s| s == 0), "{file}: ffmpeg");
        }
    }
}

/// Decodes packets (one 20 ms stream) with ffmpeg's own opus decoder, by
/// wrapping them in a minimal Ogg Opus file (RFC 7845: ID header, comment
/// header, then the audio pages; no pre-skip).
fn ffmpeg_native(packets: &[Vec<u8>], name: &str) -> Vec<i16> {
    fn crc(data: &[u8]) -> u32 {
        data.iter().fold(0u32, |mut crc, &b| {
            crc ^= u32::from(b) << 24;
            for _ in 0..8 {
                crc = if crc & 0x8000_0000 != 0 {
                    (crc << 1) ^ 0x04c1_1db7
                } else {
                    crc << 1
                };
            }
            crc
        })
    }
    fn page(out: &mut Vec<u8>, packets: &[Vec<u8>], granule: u64, sequence: u32, flags: u8) {
        let mut lacing = Vec::new();
        for p in packets {
            lacing.extend(std::iter::repeat(255u8).take(p.len() / 255));
            lacing.push((p.len() % 255) as u8);
        }
        assert!(lacing.len() <= 255);
        let start = out.len();
        out.extend_from_slice(b"OggS\0");
        out.push(flags);
        out.extend_from_slice(&granule.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&sequence.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.push(lacing.len() as u8);
        out.extend_from_slice(&lacing);
        for p in packets {
            out.extend_from_slice(p);
        }
        let sum = crc(&out[start..]);
        out[start + 22..start + 26].copy_from_slice(&sum.to_le_bytes());
    }
    let mut head = b"OpusHead\x01\x02".to_vec();
    head.extend_from_slice(&0u16.to_le_bytes()); // pre-skip
    head.extend_from_slice(&48000u32.to_le_bytes());
    head.extend_from_slice(&[0, 0, 0]); // gain, mapping family
    let mut tags = b"OpusTags".to_vec();
    tags.extend_from_slice(&[0; 8]);
    let mut file = Vec::new();
    page(&mut file, &[head], 0, 0, 2);
    page(&mut file, &[tags], 0, 1, 0);
    let mut granule = 0;
    for (n, chunk) in packets.chunks(50).enumerate() {
        granule += 960 * chunk.len() as u64;
        let last = (n + 1) * 50 >= packets.len();
        page(
            &mut file,
            chunk,
            granule,
            n as u32 + 2,
            if last { 4 } else { 0 },
        );
    }
    let dir = scratch_dir(name);
    let input = dir.join("packets.opus");
    let decoded = dir.join("native.s16le");
    std::fs::write(&input, file).unwrap();
    run(Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(["-c:a", "opus", "-i"])
        .arg(&input)
        .args(["-ac", "1", "-f", "s16le", "-acodec", "pcm_s16le"])
        .arg(&decoded));
    s16le(&std::fs::read(&decoded).unwrap())
}

/// ffmpeg's own opus decoder is an independent implementation (not bit-exact
/// with libopus, whose float build rounds differently); both must produce
/// the same signal.
#[test]
fn resembles_ffmpeg_native_opus_decoder() {
    if !have_tool("ffmpeg") {
        return;
    }
    let dir = scratch_dir("opus-ffmpeg");
    let decoded = dir.join("native.s16le");
    run(Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(["-c:a", "opus", "-i"])
        .arg(common::data("tone-sweep.opus"))
        .args(["-f", "s16le", "-acodec", "pcm_s16le"])
        .arg(&decoded));
    let reference = s16le(&std::fs::read(&decoded).unwrap());
    let (packets, pre_skip) = ogg_opus_packets(&read_data("tone-sweep.opus"));
    let ours = decode(&packets);
    assert_eq!(reference.len(), 72_000);
    let ours = &ours[pre_skip..pre_skip + reference.len()];
    let corr = correlation(ours, &reference);
    let level = rms(ours) / rms(&reference);
    eprintln!("libopus vs ffmpeg's opus: correlation {corr:.5}, level ratio {level:.4}");
    assert!(corr > 0.99, "correlation {corr}");
    assert!((0.95..1.05).contains(&level), "level ratio {level}");
    // The minimal Ogg writer the capture test relies on: the same packets
    // through it give ffmpeg the same signal, whole (no pre-skip there).
    let rewrapped = ffmpeg_native(&packets, "opus-rewrapped");
    let ours = decode(&packets);
    assert_eq!(rewrapped.len(), ours.len());
    let corr = correlation(&ours, &rewrapped);
    assert!(corr > 0.99, "rewrapped: correlation {corr}");
}

/// The committed reference, made again with the ffmpeg installed here.
#[test]
fn matches_live_ffmpeg_libopus() {
    if !have_tool("ffmpeg") {
        return;
    }
    let dir = scratch_dir("opus-libopus");
    let decoded = dir.join("libopus.s16le");
    run(Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(["-c:a", "libopus", "-i"])
        .arg(common::data("tone-sweep.opus"))
        .args(["-f", "s16le", "-acodec", "pcm_s16le"])
        .arg(&decoded));
    let reference = s16le(&std::fs::read(&decoded).unwrap());
    let (packets, pre_skip) = ogg_opus_packets(&read_data("tone-sweep.opus"));
    let ours = decode(&packets);
    assert_eq!(
        first_difference(&ours[pre_skip..pre_skip + reference.len()], &reference),
        None
    );
}
