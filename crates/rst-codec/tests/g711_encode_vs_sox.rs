//! The G.711 encoders against sox's, for every 16-bit sample.

use std::process::Command;

#[test]
fn every_sample_encodes_as_sox_encodes_it() {
    if Command::new("sox").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED every_sample_encodes_as_sox_encodes_it: sox not found (apt-get install sox)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("all.s16");
    let all: Vec<i16> = (i16::MIN..=i16::MAX).collect();
    std::fs::write(
        &input,
        all.iter()
            .flat_map(|s| s.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    for (kind, encode) in [
        ("ul", rst_codec::linear_to_ulaw as fn(i16) -> u8),
        ("al", rst_codec::linear_to_alaw),
    ] {
        let output = dir.path().join(format!("all.{kind}"));
        // -D: no dither, which sox would otherwise add when the depth changes.
        let status = Command::new("sox")
            .args(["-D", "-t", "s16", "-r", "8000", "-c", "1"])
            .arg(&input)
            .args(["-t", kind, "-r", "8000", "-c", "1"])
            .arg(&output)
            .status()
            .unwrap();
        assert!(status.success());
        let sox = std::fs::read(&output).unwrap();
        assert_eq!(sox.len(), all.len());
        let differing = all
            .iter()
            .zip(&sox)
            .filter(|(&sample, &code)| encode(sample) != code)
            .count();
        assert_eq!(
            differing, 0,
            "{kind}: {differing} samples encode differently from sox"
        );
    }
}
