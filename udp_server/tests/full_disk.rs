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
    let Some((mount, filler)) = small_disk("a_full_disk_fails_the_call_and_spares_the_receiver")
    else {
        return;
    };
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

/// Mounts a 512 KiB tmpfs with a filler file that leaves about 64 KiB free;
/// `None` (and SKIPPED) where mounting needs root.
fn small_disk(test: &str) -> Option<(Tmpfs, std::path::PathBuf)> {
    let mount = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(mount.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!(
            "SKIPPED {test}: mounting a tmpfs needs root (run the tests as root, as CI does)"
        );
        return None;
    }
    let filler = mount.path().join("filler");
    std::fs::write(&filler, vec![0u8; 448 * 1024]).unwrap();
    Some((Tmpfs(mount), filler))
}

/// Calls that fill the disk, then end while it is still full: their records
/// cannot be written then (a call's own files may free a page as they close,
/// so one may fit). Returns their UUIDs and how many records the receiver
/// holds pending, once every call is either recorded or pending.
fn fill_and_end(receiver: &Receiver, sender: &mut Sender, calls: u32) -> (Vec<String>, u64) {
    let ids: Vec<String> = (0..calls).map(|n| uuid(100 + n)).collect();
    for id in &ids {
        sender.inv(id, "alice", "bob");
    }
    // About 1 KiB of files per frame pair and call: this overflows 64 KiB.
    for _ in 0..200 {
        for id in &ids {
            sender.data(id, Read, 0, &[0xFF; 160]);
            sender.data(id, Write, 0, &[0xFF; 160]);
        }
    }
    wait_for_counter(receiver, "rst_write_errors_total", |n| n > 0);
    // Whatever blocks are left (the calls' files hold some back) are taken too.
    fill_up(&receiver.dir.path().join("../topping"));
    for id in &ids {
        sender.bye(id);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let pending = receiver.counter("rst_records_pending");
        let written = records_in(receiver.dir.path()).len() as u64;
        if pending + written == u64::from(calls) {
            assert!(pending > 0, "every record fit on the full disk");
            return (ids, pending);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pending} pending and {written} written of {calls} calls; files {:?}; {}",
            files_in(receiver.dir.path(), ""),
            receiver.metrics.render()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `path` until the disk is full.
fn fill_up(path: &std::path::Path) {
    let mut file = std::fs::File::create(path).unwrap();
    while std::io::Write::write_all(&mut file, &[0u8; 512]).is_ok() {}
}

fn wait_for_counter(receiver: &Receiver, name: &str, done: impl Fn(u64) -> bool) {
    let what = || {
        format!(
            "{name} = {}; files: {:?}",
            receiver.counter(name),
            files_in(receiver.dir.path(), "")
        )
    };
    wait_until(what, || done(receiver.counter(name)));
}

/// Each of the `calls` records, read again once stored, says where it went,
/// and the object there is the record as on disk.
fn assert_records_stored(receiver: &Receiver, store: &common::seaweed::Store, calls: usize) {
    let reader = store.reader();
    for record in receiver.wait_records(calls) {
        let key = record["stored"]["record_key"]
            .as_str()
            .unwrap_or_else(|| panic!("the record says where it is stored: {record}"));
        assert_eq!(
            reader.get(key),
            std::fs::read(record["record"].as_str().unwrap()).unwrap(),
            "{key}: the record, as stored"
        );
    }
}

/// Each record says who called whom, when, and that the recording failed
/// (`because` in its error).
fn assert_failed_records(records: &[serde_json::Value], ids: &[String], because: &str) {
    assert_eq!(records.len(), ids.len(), "{records:?}");
    for record in records {
        assert!(
            ids.iter().any(|id| record["uuid"] == id.as_str()),
            "{record}"
        );
        assert_eq!(record["end_reason"], "error", "{record}");
        assert_eq!(record["caller"], "alice", "{record}");
        assert_eq!(record["callee"], "bob", "{record}");
        assert!(record["end"].is_string(), "{record}");
        assert!(
            record["error"].as_str().unwrap().contains(because),
            "{record}"
        );
    }
}

/// The disk is still full when the calls end: their records wait in memory,
/// counted, and are written once there is room again.
#[test]
fn records_of_calls_ended_on_a_full_disk_are_written_when_room_returns() {
    let Some((mount, filler)) = small_disk("records_of_calls_ended_on_a_full_disk") else {
        return;
    };
    let dir = tempfile::TempDir::new_in(mount.0.path()).unwrap();
    let mut receiver = Receiver::in_dir(Settings::default(), dir);
    let mut sender = Sender::new(receiver.addr);
    let (ids, pending) = fill_and_end(&receiver, &mut sender, 3);
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(mount.0.path().join("topping")).unwrap();
    let records = receiver.wait_records(3);
    assert_failed_records(&records, &ids, "No space left");
    wait_for_counter(&receiver, "rst_records_pending", |n| n == 0);
    // Counted retried just after no longer pending.
    wait_for_counter(&receiver, "rst_records_retried_total", |n| n >= pending);
    assert_eq!(receiver.counter("rst_records_retried_total"), pending);
    receiver.stop();
}

/// Calls that end while the disk is full are stored once room returns:
/// their upload jobs, which could not be written then either, wait in memory
/// with their records and reach the store after them.
#[test]
fn calls_ended_on_a_full_disk_are_stored_once_room_returns() {
    if !common::seaweed::have_weed() {
        return;
    }
    let Some((mount, filler)) = small_disk("calls_ended_on_a_full_disk_are_stored") else {
        return;
    };
    let store = common::seaweed::Store::start();
    let dir = tempfile::TempDir::new_in(mount.0.path()).unwrap();
    let settings = Settings {
        storage: store.settings(true),
        ..Settings::default()
    };
    let mut receiver = Receiver::in_dir(settings, dir);
    let mut sender = Sender::new(receiver.addr);
    let (ids, _) = fill_and_end(&receiver, &mut sender, 3);
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(mount.0.path().join("topping")).unwrap();
    let records = receiver.wait_records(3);
    assert_failed_records(&records, &ids, "No space left");
    wait_for_counter(&receiver, "rst_storage_calls_stored_total", |n| n == 3);
    assert_records_stored(&receiver, &store, 3);
    assert_eq!(receiver.counter("rst_storage_calls_failed_total"), 0);
    let torn = files_in(receiver.dir.path(), ".tmp");
    assert!(
        torn.is_empty(),
        "job files the full disk cut short: {torn:?}"
    );
    receiver.stop();
}

/// Still full when a storing receiver stops, with the calls' upload jobs
/// waiting in memory: the next start, with room again, stores every call,
/// those whose records were left to it (completed by its recovery) and those
/// whose record fit but whose job did not (queued from the marker the full
/// disk still had room for). Each is read back from the store; the restarted
/// receiver counts no failure.
#[test]
fn calls_waiting_on_a_full_disk_at_a_stop_are_stored_by_the_next_start() {
    if !common::seaweed::have_weed() {
        return;
    }
    let Some((mount, filler)) = small_disk("calls_waiting_on_a_full_disk_at_a_stop") else {
        return;
    };
    let store = common::seaweed::Store::start();
    let dir = tempfile::TempDir::new_in(mount.0.path()).unwrap();
    let settings = || Settings {
        storage: store.settings(true),
        recorder_threads: Some(1),
        ..Settings::default()
    };
    let mut receiver = Receiver::in_dir(settings(), dir);
    let mut sender = Sender::new(receiver.addr);
    let (ids, _) = fill_and_end(&receiver, &mut sender, 3);
    let written = records_in(receiver.dir.path()).len();
    receiver.stop();
    assert_eq!(receiver.counter("rst_storage_calls_stored_total"), 0);
    let markers = files_in(&receiver.dir.path().join(".upload"), ".unqueued");
    eprintln!(
        "{written} records written and {} markers at the stop",
        markers.len()
    );
    let dir = std::mem::replace(&mut receiver.dir, tempfile::tempdir().unwrap());
    drop(receiver);
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(mount.0.path().join("topping")).unwrap();

    let mut restarted = Receiver::in_dir(settings(), dir);
    let records = restarted.wait_records(3);
    assert_failed_records(&records, &ids, "");
    wait_for_counter(&restarted, "rst_storage_calls_stored_total", |n| n == 3);
    assert_records_stored(&restarted, &store, 3);
    assert_eq!(restarted.counter("rst_storage_failures_total"), 0);
    let left = files_in(&restarted.dir.path().join(".upload"), ".unqueued");
    assert!(left.is_empty(), "markers left: {left:?}");
    restarted.stop();
}

/// Still full when the receiver stops: the records are left to the next
/// start, which completes them from their provisional records.
#[test]
fn records_still_pending_at_shutdown_are_completed_by_the_next_start() {
    let Some((mount, filler)) = small_disk("records_still_pending_at_shutdown") else {
        return;
    };
    let dir = tempfile::TempDir::new_in(mount.0.path()).unwrap();
    // One recorder thread: both calls' files exist before the disk fills
    // (with two, a call's start may come after another filled it), so the
    // next start has their provisional records to complete.
    let settings = Settings {
        recorder_threads: Some(1),
        ..Settings::default()
    };
    let mut receiver = Receiver::in_dir(settings, dir);
    let mut sender = Sender::new(receiver.addr);
    let (ids, pending) = fill_and_end(&receiver, &mut sender, 2);
    let written = records_in(receiver.dir.path()).len();
    receiver.stop();
    assert_eq!(receiver.counter("rst_records_deferred_total"), pending);
    assert_eq!(records_in(receiver.dir.path()).len(), written);
    let dir = std::mem::replace(&mut receiver.dir, tempfile::tempdir().unwrap());
    drop(receiver);
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(mount.0.path().join("topping")).unwrap();
    let mut restarted = Receiver::in_dir(Settings::default(), dir);
    // The ones left to this start say so; each record has its parties.
    let records = restarted.wait_records(2);
    assert_failed_records(&records, &ids, "");
    restarted.stop();
}

/// The disk is full before the call starts: none of its files can be
/// created, so none of its audio is recorded, but its record is not lost:
/// it is written once there is room, saying why.
#[test]
fn a_call_whose_files_cannot_be_created_still_gets_its_record() {
    let Some((mount, filler)) = small_disk("a_call_whose_files_cannot_be_created") else {
        return;
    };
    let dir = tempfile::TempDir::new_in(mount.0.path()).unwrap();
    let mut receiver = Receiver::in_dir(Settings::default(), dir);
    let topping = mount.0.path().join("topping");
    fill_up(&topping);
    let mut sender = Sender::new(receiver.addr);
    let id = uuid(200);
    sender.inv(&id, "alice", "bob");
    sender.data(&id, Read, 0, &[0xFF; 160]);
    sender.bye(&id);
    wait_for_counter(&receiver, "rst_records_pending", |n| n == 1);
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(&topping).unwrap();
    let records = receiver.wait_records(1);
    assert_failed_records(&records, &[id], "cannot create the call's files");
    receiver.stop();
}

/// A full disk stops a call's files, not its live stream: the consumer gets
/// every frame, also those after the disk filled.
#[test]
fn a_full_disk_does_not_stop_a_live_stream() {
    let Some((mount, filler)) = small_disk("a_full_disk_does_not_stop_a_live_stream") else {
        return;
    };
    let consumer = common::consumer::Consumer::start(Default::default());
    let dir = tempfile::TempDir::new_in(mount.0.path()).unwrap();
    let receiver = Receiver::in_dir(
        Settings {
            stream_url: Some(consumer.url("ws")),
            ..Settings::default()
        },
        dir,
    );
    let mut sender = Sender::new(receiver.addr);
    let id = uuid(3);
    sender.inv(&id, "alice", "bob");
    let payload = |k: u32| -> Vec<u8> { (0..160).map(|i| ((k * 7 + i) % 251) as u8).collect() };
    for k in 0..200 {
        sender.data(&id, Read, 0, &payload(k));
        sender.data(&id, Write, 0, &[0xFF; 160]);
        std::thread::sleep(Duration::from_millis(1));
    }
    wait_for_counter(&receiver, "rst_write_errors_total", |n| n > 0);
    sender.bye(&id);
    let connection = &consumer.wait_ended(1)[0];
    let streamed: Vec<u8> = connection
        .texts
        .iter()
        .filter(|m| m["event"] == "media")
        .flat_map(|m| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(m["media"]["payload"].as_str().unwrap())
                .unwrap()
        })
        .collect();
    let sent: Vec<u8> = (0..200).flat_map(payload).collect();
    assert_eq!(streamed, sent, "every frame streamed, the disk full or not");
    std::fs::remove_file(&filler).unwrap();
    let record = receiver.wait_records(1).pop().unwrap();
    assert_eq!(record["end_reason"], "error");
    assert_eq!(record["streams"][0]["dropped_ms"], 0, "{record}");
}

/// The receiver killed mid-call (`kill -9`), then started again on a disk
/// that is still full: it starts and answers; its audio files are repaired
/// in place, but the call's record cannot be completed (that needs a new
/// file), so it is left as it was, counted, for the next start, which
/// completes it once there is room. Nothing the crash left is lost.
#[test]
fn a_start_on_a_still_full_disk_leaves_what_it_cannot_recover_for_the_next() {
    let Some((mount, filler)) = small_disk("a_start_on_a_still_full_disk") else {
        return;
    };
    let dir = tempfile::TempDir::new_in(mount.0.path()).unwrap();
    let metrics = free_metrics_addr();
    let (mut child, addr) =
        spawn_receiver_process(dir.path(), &["--metrics", &metrics.to_string()], None);
    let mut sender = Sender::new(addr);
    let id = uuid(300);
    sender.inv(&id, "alice", "bob");
    for _ in 0..50 {
        sender.data(&id, Read, 0, &[0xFF; 160]);
        sender.data(&id, Write, 0, &[0x7F; 160]);
    }
    wait_scraped(metrics, "rst_datagrams_total", 101);
    // Killed once the call's audio files are made (its provisional record
    // names each a moment before it makes it).
    let audio_made = || {
        let part = files_in(dir.path(), ".json.part").pop()?;
        let record: serde_json::Value = serde_json::from_slice(&std::fs::read(part).ok()?).ok()?;
        let made = |d: &str| {
            let path = record
                .pointer(&format!("/directions/{d}/wav/0"))?
                .as_str()?;
            Some(std::path::Path::new(&format!("{path}.part")).exists())
        };
        Some(made("R")? && made("W")?)
    };
    wait_until(
        || {
            format!(
                "the audio files its provisional record names: {:?}",
                files_in(dir.path(), "")
            )
        },
        || audio_made() == Some(true),
    );
    child.kill().unwrap(); // SIGKILL: no BYE, no final record
    child.wait().unwrap();
    let record_part = files_in(dir.path(), ".json.part");
    assert_eq!(record_part.len(), 1, "{:?}", files_in(dir.path(), ""));
    let left = std::fs::read(&record_part[0]).unwrap();
    let topping = mount.0.path().join("topping");
    fill_up(&topping);

    let mut full = Receiver::in_dir(Settings::default(), dir);
    wait_for_counter(&full, "rst_recovery_failures_total", |n| n >= 1);
    // It answers (a BYE of no call is acknowledged, and creates nothing).
    Sender::new(full.addr).bye(&uuid(301));
    assert_eq!(
        std::fs::read(&record_part[0]).unwrap(),
        left,
        "the provisional record is left as it was"
    );
    full.stop();
    let dir = std::mem::replace(&mut full.dir, tempfile::tempdir().unwrap());
    drop(full);

    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(&topping).unwrap();
    let mut roomy = Receiver::in_dir(Settings::default(), dir);
    let records = roomy.wait_records(1);
    let record = &records[0];
    assert_eq!(record["uuid"], id.as_str(), "{record}");
    assert_eq!(record["end_reason"], "error", "{record}");
    assert_eq!(record["caller"], "alice", "{record}");
    for direction in ["R", "W"] {
        let path = path_of(record, &format!("/directions/{direction}/wav/0"));
        assert_sox_accepts(&path);
    }
    assert!(files_in(roomy.dir.path(), ".part").is_empty());
    roomy.stop();
}
