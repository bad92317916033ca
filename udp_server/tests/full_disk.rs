//! A full disk: the call that hits it is marked failed with what it had written
//! kept valid, the receiver keeps answering, and calls record again once there is
//! room. Needs root (it mounts a small tmpfs); CI runs as root.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use rst_proto::Direction::{Read, Write};
use udp_server::Settings;

struct Tmpfs(tempfile::TempDir);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_fails_the_call_and_spares_the_receiver() {
    let mount = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(mount.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED a_full_disk_fails_the_call_and_spares_the_receiver: mounting a tmpfs needs root (run the tests as root, as CI does)");
        return;
    }
    let mount = Tmpfs(mount);
    let filler = mount.0.path().join("filler");
    // Leave about 64 KiB free.
    std::fs::write(&filler, vec![0u8; 448 * 1024]).unwrap();

    let dir = tempfile::TempDir::new_in(mount.0.path()).unwrap();
    let mut receiver = Receiver::in_dir(Settings::default(), dir);
    let mut sender = Sender::new(receiver.addr);
    let id = uuid(1);
    sender.inv(&id, "alice", "bob");
    // About 1 KiB of files per frame pair: 200 frames overflow 64 KiB.
    for _ in 0..200 {
        sender.data(&id, Read, 0, &[0xFF; 160]);
        sender.data(&id, Write, 0, &[0xFF; 160]);
        std::thread::sleep(Duration::from_millis(1));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while receiver.counter("rst_write_errors_total") == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        receiver.counter("rst_write_errors_total") > 0,
        "the full disk went unnoticed"
    );

    // Room again: the failed call finishes with its record, and a new call records whole.
    std::fs::remove_file(&filler).unwrap();
    sender.bye(&id);
    let failed = receiver.wait_records(1).pop().unwrap();
    assert_eq!(failed["end_reason"], "error");
    assert!(
        failed["error"].as_str().unwrap().contains("No space left"),
        "{}",
        failed["error"]
    );
    assert_eq!(failed["directions"]["R"]["packets"], 200);
    let path = path_of(&failed, "/directions/R/wav/0");
    assert_sox_accepts(&path);
    let (_, samples) = read_wav(&path);
    assert!(!samples.is_empty() && samples.len() < 200 * 160);

    let id = uuid(2);
    sender.inv(&id, "carol", "dave");
    for _ in 0..10 {
        sender.data(&id, Read, 0, &[0xFF; 160]);
    }
    sender.bye(&id);
    let records = receiver.wait_records(2);
    let ok = records.iter().find(|r| r["uuid"] == id.as_str()).unwrap();
    assert_eq!(ok["end_reason"], "bye");
    assert_eq!(ok["directions"]["R"]["samples"], 1600);
    receiver.stop();
}
