//! The receiver as a process: `kill -9` mid-call loses at most the last second,
//! and the next start completes what was left.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use rst_proto::Direction::{Read, Write};

fn spawn_receiver(dir: &std::path::Path) -> (Process, SocketAddr) {
    spawn_receiver_process(dir, &[], None)
}

#[test]
fn kill_9_mid_call_leaves_valid_files_that_the_next_start_completes() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_metrics_addr();
    let (mut child, addr) =
        spawn_receiver_process(dir.path(), &["--metrics", &metrics.to_string()], None);
    let mut sender = Sender::new(addr);
    let id = uuid(1);
    sender.inv(&id, "alice", "bob");
    // 3 s of audio in real time, then the receiver dies without warning.
    let started = Instant::now();
    for i in 0..150u32 {
        let due = started + Duration::from_millis(20 * u64::from(i + 1));
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        sender.data(&id, Read, 0, &[0xFF; 160]);
        sender.data(&id, Write, 0, &[0x7F; 160]);
    }
    // Every datagram (the INV and 300 DATA) has reached the receiver.
    wait_scraped(metrics, "rst_datagrams_total", 301);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // Before any repair the files are already valid, short of the last second.
    let parts = files_in(dir.path(), ".wav.part");
    assert_eq!(parts.len(), 3, "{parts:?}");
    for part in &parts {
        let (spec, samples) = read_wav(part);
        let per_second = spec.sample_rate as usize * spec.channels as usize;
        assert!(
            samples.len() >= 2 * per_second - 160 * spec.channels as usize,
            "{}: {} samples",
            part.display(),
            samples.len()
        );
    }

    let (child, _) = spawn_receiver(dir.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !files_in(dir.path(), ".part").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop(child);

    assert!(files_in(dir.path(), ".part").is_empty());
    let records = records_in(dir.path());
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record["end_reason"], "error");
    assert_eq!(record["caller"], "alice");
    for dir in ["R", "W"] {
        let path = path_of(record, &format!("/directions/{dir}/wav/0"));
        assert_sox_accepts(&path);
        let (_, samples) = read_wav(&path);
        assert!(
            samples.len() >= 2 * 8000,
            "{dir}: {} samples",
            samples.len()
        );
        assert!(samples.len() <= 150 * 160);
        let expected = if dir == "R" { 0 } else { ulaw_decoded(0x7F) };
        assert!(samples.iter().all(|&s| s == expected));
    }
    assert_sox_accepts(&path_of(record, "/stereo"));
}

#[test]
fn sigterm_finishes_open_calls() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = spawn_receiver(dir.path());
    let mut sender = Sender::new(addr);
    sender.inv(&uuid(2), "alice", "bob");
    sender.data(&uuid(2), Read, 0, &[0xFF; 160]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while files_in(dir.path(), ".part").is_empty() {
        assert!(Instant::now() < deadline, "the call's files never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(child);
    let records = records_in(dir.path());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["end_reason"], "shutdown");
    assert!(files_in(dir.path(), ".part").is_empty());
}

/// More calls than the receiver may open files for (the outside test's
/// flood met `ulimit -n` 20000 at 10,000 calls, 2 files each): the calls whose
/// files cannot be created record no audio, but every call started gets its
/// record, none vanishes.
#[test]
fn calls_beyond_the_open_file_limit_still_get_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = spawn_receiver_process(dir.path(), &[], Some(64));
    let mut sender = Sender::new(addr);
    let calls: Vec<String> = (0..40).map(|n| uuid(300 + n)).collect();
    for id in &calls {
        sender.inv(id, "alice", "bob");
        sender.data(id, Read, 0, &[0xFF; 160]);
        sender.data(id, Write, 0, &[0xFF; 160]);
    }
    // Every call is known (its INV answered); end half of them, stop the rest.
    for id in &calls[..20] {
        sender.bye(id);
    }
    stop(child);
    let records = records_in(dir.path());
    let unrecorded = records
        .iter()
        .filter(|r| {
            r["error"]
                .as_str()
                .is_some_and(|e| e.contains("cannot create the call's files"))
        })
        .count();
    assert!(
        unrecorded > 0,
        "the file limit was never met: the test proves nothing"
    );
    assert_eq!(records.len(), calls.len(), "records of calls vanished");
    for id in &calls {
        let record = records.iter().find(|r| r["uuid"] == id.as_str());
        let record = record.unwrap_or_else(|| panic!("no record for {id}"));
        assert_eq!(record["caller"], "alice", "{record}");
    }
}

/// SIGTERM, then the receiver's exit: it must finish its calls and exit
/// cleanly within a generous deadline (killed, and the test failed, if not).
fn stop(mut child: Process) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "the receiver exited with {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the receiver did not stop within 120 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ulaw_decoded(byte: u8) -> i16 {
    sox_decode("ul", &[byte])[0]
}

/// A receiver open to every host with no `allow` list says so at start, and
/// one whose open file limit cannot hold `max-calls` calls says that.
#[test]
fn risky_settings_are_warned_of_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (child, rx) = spawn_process(
        &["--listen", "0.0.0.0:0", "--max-calls", "1000"],
        dir.path(),
        Some(64),
    );
    let mut said = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(said.contains("empty allow list") && said.contains("open file limit")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => said.push_str(&line),
            Err(_) => break,
        }
    }
    stop(child);
    assert!(said.contains("empty allow list"), "{said}");
    assert!(said.contains("open file limit"), "{said}");
}
