//! `udp_server assemble --from s3://...`: a call that failed over from one
//! receiver to another, both storing into one bucket of a real SeaweedFS
//! with `keep-local = false`, joined from the store by the real command and
//! checked sample by sample; then what goes wrong (an unknown call, a store
//! that is down, a missing object, a record that lies) is a clear error.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::seaweed::*;
use common::*;
use object_store::path::Path as Key;
use object_store::{ObjectStore as _, PutPayload};
use rst_proto::{Extensions, ExtensionsBuilder};
use udp_server::Settings;

/// The real command, with the store's settings as flags after `assemble`.
/// It must end by itself: one still running after two minutes (a store
/// that is down must give an error, not a hang) is killed, and the test fails.
fn assemble(args: &[&str], store: &Store) -> Output {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_udp_server"))
        .arg("assemble")
        .args(args)
        .arg("--storage-endpoint")
        .arg(store.ports.endpoint())
        .arg("--storage-access-key-id-file")
        .arg(&store.id_file)
        .arg("--storage-secret-access-key-file")
        .arg(&store.secret_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    match finished.recv_timeout(Duration::from_secs(120)) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("udp_server assemble {args:?} hung: still running after 120 s");
        }
    }
}

fn succeeded(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Failed with a message containing `says`, and without a panic.
fn failed(output: &Output, says: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "succeeded: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(says), "expected {says:?} in: {stderr}");
}

/// The joined files as [`assert_joined_ramp`] wants them, and the downloads gone.
fn check_joined(summary: &serde_json::Value, out: &Path, id: &str) {
    assert_joined_ramp(summary, out, id);
    assert!(
        !out.join(format!(".{id}.download")).exists(),
        "the downloads are removed"
    );
}

#[test]
fn a_call_whose_parts_are_stored_by_two_receivers_is_joined_from_the_store() {
    if !have_weed() {
        return;
    }
    let store = Store::start();
    let with_storage = || Settings {
        storage: store.settings(false),
        ..Settings::default()
    };
    let (a, b) = (
        Receiver::with(with_storage()),
        Receiver::with(with_storage()),
    );

    // Part 1 on a; frames 50..75 go nowhere; part 2 on b from 1500 ms.
    let id = uuid(41);
    let mut to_a = Sender::new(a.addr);
    to_a.inv(&id, "alice", "bob");
    send_ramp(&mut to_a, &id, 0, 50);
    to_a.bye(&id);
    let mut to_b = Sender::new(b.addr);
    let ext = ExtensionsBuilder::new()
        .continuation(&rst_proto::Continuation::new(2, 1500))
        .build();
    to_b.inv_with(&id, "alice", "bob", Extensions::parse(&ext).unwrap());
    send_ramp(&mut to_b, &id, 75, 50);
    to_b.bye(&id);
    // Another call on b, stored beside the parts.
    let other = uuid(42);
    to_b.inv(&other, "carol", "dave");
    send_ramp(&mut to_b, &other, 0, 10);
    to_b.bye(&other);
    wait_counter(&a, "rst_storage_calls_stored_total", 1);
    wait_counter(&b, "rst_storage_calls_stored_total", 2);

    // Both parts in the bucket under their own keys; no audio left locally.
    let records: Vec<serde_json::Value> = [&a, &b]
        .iter()
        .flat_map(|r| records_in(r.dir.path()))
        .filter(|r| r["uuid"] == id.as_str())
        .collect();
    assert_eq!(records.len(), 2);
    let keys: Vec<&str> = records
        .iter()
        .map(|r| r["stored"]["record_key"].as_str().unwrap())
        .collect();
    assert_ne!(keys[0], keys[1], "the two parts are two objects");
    assert!(
        keys.iter()
            .any(|k| k.ends_with(&format!("/{id}.part2.json"))),
        "{keys:?}"
    );
    for record in &records {
        let wav = path_of(record, "/directions/R/wav/0");
        assert!(!wav.exists(), "keep-local = false: {} went", wav.display());
    }
    for receiver in [&a, &b] {
        assert!(files_in(receiver.dir.path(), ".wav").is_empty());
    }

    // From the store alone, its day found by walking the date folders.
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().to_str().unwrap();
    let summary = succeeded(&assemble(
        &[&id, "--from", "s3://calls/recordings", "--out", out_dir],
        &store,
    ));
    check_joined(&summary, out.path(), &id);
    let origins: Vec<&str> = summary["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["record"].as_str().unwrap())
        .collect();
    assert_eq!(
        origins,
        keys.iter()
            .map(|k| format!("s3://calls/{k}"))
            .collect::<Vec<_>>()
    );

    // Folders and the store mixed: the local records (audio gone) are the
    // stored ones, joined once, from the store; their day is where it looks.
    let mixed = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (
        a.dir.path().to_str().unwrap(),
        b.dir.path().to_str().unwrap(),
    );
    let summary = succeeded(&assemble(
        &[
            &id,
            "--from",
            a_dir,
            "s3://calls/recordings/",
            b_dir,
            "--out",
            mixed.path().to_str().unwrap(),
        ],
        &store,
    ));
    check_joined(&summary, mixed.path(), &id);

    // An unknown call, on a given day and on every day.
    let day = &records[0]["start"].as_str().unwrap()[..10];
    for extra in [&["--day", day][..], &[]] {
        let mut args = vec![
            uuid(43),
            "--from".into(),
            "s3://calls/recordings".into(),
            "--out".into(),
            out_dir.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = assemble(&args, &store);
        failed(&output, "no record of call");
    }

    // A missing object: the part 2's W.wav deleted.
    let reader = store.reader();
    let part2 = records.iter().find(|r| r["part"] == 2).unwrap();
    let w_key = part2["stored"]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .find(|k| k.ends_with(".W.wav"))
        .unwrap()
        .to_owned();
    assert!(w_key.ends_with(&format!("{id}.part2.W.wav")), "{w_key}");
    let w = reader.get(&w_key);
    reader
        .runtime
        .block_on(reader.store.delete(&Key::from(w_key.as_str())))
        .unwrap();
    let args = [
        id.as_str(),
        "--from",
        "s3://calls/recordings",
        "--out",
        out_dir,
        "--day",
        day,
    ];
    failed(
        &assemble(&args, &store),
        &format!("s3://calls/{w_key} is not in the store"),
    );
    // Put back shorter than the record says.
    reader
        .runtime
        .block_on(reader.store.put(
            &Key::from(w_key.as_str()),
            PutPayload::from(w[..w.len() - 2].to_vec()),
        ))
        .unwrap();
    failed(
        &assemble(&args, &store),
        "bytes in the store, the record says",
    );

    // A record that lies: another call's record under this call's name.
    let record_key = part2["stored"]["record_key"].as_str().unwrap();
    let other_record = records_in(b.dir.path())
        .into_iter()
        .find(|r| r["uuid"] == other.as_str())
        .unwrap();
    reader
        .runtime
        .block_on(reader.store.put(
            &Key::from(record_key),
            PutPayload::from(serde_json::to_vec(&other_record).unwrap()),
        ))
        .unwrap();
    failed(
        &assemble(&args, &store),
        &format!("it is the record of call {other}"),
    );

    // A store that is down: a clear error, not a hang (see `assemble`).
    let output = assemble(&args, &Store::down());
    failed(&output, "s3://calls/recordings/");
}
