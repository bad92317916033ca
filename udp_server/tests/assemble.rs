//! `udp_server assemble`: the parts of a call that failed over from one
//! receiver to another, recorded by real receivers and joined by the real
//! command, checked sample by sample.

mod common;

use std::path::Path;

use common::*;
use rst_proto::{Extensions, ExtensionsBuilder};

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
        .continuation(&rst_proto::Continuation::new(part, offset_ms))
        .build()
}

#[test]
fn two_parts_on_two_receivers_join_with_silence_for_the_lost_half_second() {
    let a = Receiver::start();
    let b = Receiver::start();
    let id = uuid(17);
    let mut to_a = Sender::new(a.addr);
    to_a.inv(&id, "alice", "bob");
    send_ramp(&mut to_a, &id, 0, 50);
    to_a.bye(&id);
    // Frames 50..75 went nowhere; part 2 begins at 1500 ms.
    let mut to_b = Sender::new(b.addr);
    let ext = continuation(2, 1500);
    to_b.inv_with(&id, "alice", "bob", Extensions::parse(&ext).unwrap());
    send_ramp(&mut to_b, &id, 75, 50);
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
    assert_joined_ramp(&summary, out.path(), &id);
    assert!(out.path().join(format!("{id}.assembled.json")).exists());
}

#[test]
fn the_part_of_a_receiver_killed_mid_call_is_read_from_what_it_left() {
    let dead_dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_receiver_process(dead_dir.path(), &[], None);
    let id = uuid(18);
    let mut to_a = Sender::new(addr);
    to_a.inv(&id, "alice", "bob");
    send_ramp(&mut to_a, &id, 0, 100);
    child.kill().unwrap(); // SIGKILL: no BYE, no final record
    child.wait().unwrap();
    let b = Receiver::start();
    let mut to_b = Sender::new(b.addr);
    let ext = continuation(2, 2500);
    to_b.inv_with(&id, "alice", "bob", Extensions::parse(&ext).unwrap());
    send_ramp(&mut to_b, &id, 125, 25);
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
    assert!(r[..kept].iter().enumerate().all(|(i, s)| *s == ramp(i)));
    assert!(r[kept..20_000].iter().all(|s| *s == 0));
    assert!(r[20_000..]
        .iter()
        .enumerate()
        .all(|(i, s)| *s == ramp(20_000 + i)));
}
