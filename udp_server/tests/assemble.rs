//! `udp_server assemble`: the parts of a call that failed over from one
//! receiver to another, recorded by real receivers and joined by the real
//! command, checked sample by sample.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use rst_proto::Direction::{Read, Write};
use rst_proto::{Extensions, ExtensionsBuilder};

/// The sample the sender sends at a call's sample `i` (R; W is its negative).
fn sample(i: usize) -> i16 {
    (i % 20_000) as i16 + 1
}

/// `frames` 20 ms frames of L16 from the call's frame `first` on, in real time.
fn send_audio(sender: &mut Sender, id: &str, first: usize, frames: usize) {
    let started = Instant::now();
    for f in 0..frames {
        let due = started + Duration::from_millis(20 * (f as u64 + 1));
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let at = (first + f) * 160;
        let r: Vec<u8> = (at..at + 160)
            .flat_map(|i| sample(i).to_le_bytes())
            .collect();
        let w: Vec<u8> = (at..at + 160)
            .flat_map(|i| (-sample(i)).to_le_bytes())
            .collect();
        sender.data(id, Read, 10, &r);
        sender.data(id, Write, 10, &w);
    }
}

fn assemble(id: &str, from: &[&Path], out: &Path) -> serde_json::Value {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_udp_server"))
        .arg("assemble")
        .arg(id)
        .arg("--from")
        .args(from)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn continuation(part: u32, offset_ms: u64) -> String {
    ExtensionsBuilder::new()
        .continuation(part, offset_ms)
        .build()
}

#[test]
fn two_parts_on_two_receivers_join_with_silence_for_the_lost_half_second() {
    let a = Receiver::start();
    let b = Receiver::start();
    let id = uuid(17);
    let mut to_a = Sender::new(a.addr);
    to_a.inv(&id, "alice", "bob");
    send_audio(&mut to_a, &id, 0, 50);
    to_a.bye(&id);
    // Frames 50..75 went nowhere; part 2 begins at 1500 ms.
    let mut to_b = Sender::new(b.addr);
    let ext = continuation(2, 1500);
    to_b.inv_with(&id, "alice", "bob", Extensions::parse(&ext).unwrap());
    send_audio(&mut to_b, &id, 75, 50);
    to_b.bye(&id);
    let first = a.wait_records(1).pop().unwrap();
    let second = b.wait_records(1).pop().unwrap();
    assert_eq!(
        (first["part"].as_u64(), first["offset_ms"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(
        (second["part"].as_u64(), second["offset_ms"].as_u64()),
        (Some(2), Some(1500))
    );

    let out = tempfile::tempdir().unwrap();
    let summary = assemble(&id, &[a.dir.path(), b.dir.path()], out.path());
    assert_eq!(summary["parts"].as_array().unwrap().len(), 2);
    for (direction, sign) in [("R", 1i16), ("W", -1)] {
        let (spec, samples) = read_wav(&out.path().join(format!("{id}.{direction}.wav")));
        assert_eq!(spec.sample_rate, 8000);
        let mut expected: Vec<i16> = (0..8000).map(|i| sign * sample(i)).collect();
        expected.extend([0; 4000]);
        expected.extend((12_000..20_000).map(|i| sign * sample(i)));
        assert_eq!(samples.len(), expected.len(), "{direction}");
        let wrong = samples
            .iter()
            .zip(&expected)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(wrong, 0, "{direction}: {wrong} samples differ");
        assert_eq!(
            summary["directions"][direction]["gaps"],
            serde_json::json!([{"start": 8000, "samples": 4000}])
        );
    }
    let (spec, stereo) = read_wav(&out.path().join(format!("{id}.stereo.wav")));
    assert_eq!((spec.channels, stereo.len()), (2, 40_000));
    assert!(out.path().join(format!("{id}.assembled.json")).exists());
}

#[test]
fn the_part_of_a_receiver_killed_mid_call_is_read_from_what_it_left() {
    let dead_dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_receiver_process(dead_dir.path(), &[], None);
    let id = uuid(18);
    let mut to_a = Sender::new(addr);
    to_a.inv(&id, "alice", "bob");
    send_audio(&mut to_a, &id, 0, 100);
    child.kill().unwrap(); // SIGKILL: no BYE, no final record
    child.wait().unwrap();
    let b = Receiver::start();
    let mut to_b = Sender::new(b.addr);
    let ext = continuation(2, 2500);
    to_b.inv_with(&id, "alice", "bob", Extensions::parse(&ext).unwrap());
    send_audio(&mut to_b, &id, 125, 25);
    to_b.bye(&id);
    b.wait_records(1);

    let out = tempfile::tempdir().unwrap();
    let summary = assemble(&id, &[dead_dir.path(), b.dir.path()], out.path());
    assert_eq!(summary["parts"].as_array().unwrap().len(), 2);
    let (_, r) = read_wav(&out.path().join(format!("{id}.R.wav")));
    assert_eq!(r.len(), 20_000 + 4000);
    // What the dead receiver had on disk (all but at most its last second), exact.
    let kept = r[..16_000].iter().position(|s| *s == 0).unwrap_or(16_000);
    assert!(kept >= 8000, "only {kept} samples of part 1");
    assert!(r[..kept].iter().enumerate().all(|(i, s)| *s == sample(i)));
    assert!(r[kept..20_000].iter().all(|s| *s == 0));
    assert!(r[20_000..]
        .iter()
        .enumerate()
        .all(|(i, s)| *s == sample(20_000 + i)));
}
