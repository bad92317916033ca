//! G.711 expansion checked against sox for all 256 code words.

mod common;

use std::process::Command;

use common::{first_difference, have_tool, read_data, run, s16le, scratch_dir};
use rst_codec::{alaw_to_linear, ulaw_to_linear, Codec, Decoder};

fn all_codes() -> Vec<u8> {
    (0..=255).collect()
}

fn ours(expand: fn(u8) -> i16) -> Vec<i16> {
    all_codes().into_iter().map(expand).collect()
}

/// `tests/data/{ulaw,alaw}-all.sox.s16` are sox's decoding of the bytes 0..=255:
/// `sox -t ul -r 8000 -c 1 all256.raw -t s16 -r 8000 -c 1 ulaw-all.sox.s16` (and `-t al`).
#[test]
fn matches_committed_sox_output() {
    for (fixture, expand) in [
        ("ulaw-all.sox.s16", ulaw_to_linear as fn(u8) -> i16),
        ("alaw-all.sox.s16", alaw_to_linear),
    ] {
        let sox = s16le(&read_data(fixture));
        assert_eq!(sox.len(), 256);
        assert_eq!(first_difference(&ours(expand), &sox), None, "{fixture}");
    }
}

#[test]
fn matches_live_sox() {
    if !have_tool("sox") {
        return;
    }
    let dir = scratch_dir("g711-sox");
    let input = dir.join("all256.raw");
    std::fs::write(&input, all_codes()).unwrap();
    for (sox_type, codec, expand) in [
        ("ul", Codec::Pcmu, ulaw_to_linear as fn(u8) -> i16),
        ("al", Codec::Pcma, alaw_to_linear),
    ] {
        let output = dir.join(format!("{sox_type}.s16"));
        run(Command::new("sox")
            .args(["-t", sox_type, "-r", "8000", "-c", "1"])
            .arg(&input)
            .args(["-t", "s16", "-r", "8000", "-c", "1"])
            .arg(&output));
        let sox = s16le(&std::fs::read(&output).unwrap());
        assert_eq!(sox.len(), 256);
        assert_eq!(first_difference(&ours(expand), &sox), None, "{sox_type}");

        // The front door must give the same as the table functions.
        let mut decoded = Vec::new();
        Decoder::new(codec)
            .decode(&all_codes(), &mut decoded)
            .unwrap();
        assert_eq!(decoded, sox);
    }
}
