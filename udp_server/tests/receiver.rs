//! End to end over real UDP on 127.0.0.1: datagrams in, WAV files and JSON records
//! read back from disk and checked sample by sample.

mod common;

use std::time::Duration;

use common::*;
use rst_proto::Direction::{Read, Write};
use udp_server::Settings;

/// Sends `frames` 20 ms frames of each direction, R and W interleaved.
fn send_frames(sender: &mut Sender, uuid: &str, pt: u8, r: &[Vec<u8>], w: &[Vec<u8>]) {
    for (read, write) in r.iter().zip(w) {
        sender.data(uuid, Read, pt, read);
        sender.data(uuid, Write, pt, write);
    }
}

fn frames(bytes: &[u8], size: usize) -> Vec<Vec<u8>> {
    bytes.chunks(size).map(<[u8]>::to_vec).collect()
}

#[test]
fn a_tone_in_pcmu_pcma_and_l16_is_recorded_sample_for_sample() {
    let mut receiver = Receiver::start();
    let mut sender = Sender::new(receiver.addr);
    let read_tone = tone(1000.0, 8000.0, 8000, 1.0);
    let write_tone = tone(440.0, 12000.0, 8000, 1.0);

    let cases: [(u8, &str); 3] = [(0, "ul"), (8, "al"), (10, "")];
    for (n, (pt, sox_kind)) in cases.iter().enumerate() {
        let id = uuid(n as u32);
        let encode = |samples: &[i16]| -> Vec<u8> {
            match pt {
                0 => samples.iter().map(|&s| ulaw(s)).collect(),
                8 => samples.iter().map(|&s| alaw(s)).collect(),
                _ => samples.iter().flat_map(|s| s.to_le_bytes()).collect(),
            }
        };
        let (read_bytes, write_bytes) = (encode(&read_tone), encode(&write_tone));
        let frame = if *pt == 10 { 320 } else { 160 };
        sender.inv(&id, "18621575908", "02131570530");
        send_frames(
            &mut sender,
            &id,
            *pt,
            &frames(&read_bytes, frame),
            &frames(&write_bytes, frame),
        );
        sender.bye(&id);

        let expected = |bytes: &[u8], samples: &[i16]| match pt {
            10 => samples.to_vec(),
            _ => sox_decode(sox_kind, bytes),
        };
        let record = receiver.wait_records(n + 1).pop().unwrap();
        for (dir, bytes, samples) in [
            ("R", &read_bytes, &read_tone),
            ("W", &write_bytes, &write_tone),
        ] {
            let path = path_of(&record, &format!("/directions/{dir}/wav/0"));
            assert_sox_accepts(&path);
            let (spec, recorded) = read_wav(&path);
            assert_eq!(
                (spec.channels, spec.sample_rate, spec.bits_per_sample),
                (1, 8000, 16)
            );
            assert_eq!(recorded, expected(bytes, samples), "PT {pt} {dir}");
            assert_eq!(
                record
                    .pointer(&format!("/directions/{dir}/packets"))
                    .unwrap(),
                50
            );
            assert_eq!(
                record.pointer(&format!("/directions/{dir}/bytes")).unwrap(),
                bytes.len()
            );
            assert_eq!(
                record
                    .pointer(&format!("/directions/{dir}/samples"))
                    .unwrap(),
                8000
            );
        }
        assert_eq!(record["uuid"], id);
        assert_eq!(record["caller"], "18621575908");
        assert_eq!(record["callee"], "02131570530");
        assert_eq!(record["end_reason"], "bye");
        assert_eq!(
            record["sender"],
            sender.socket.local_addr().unwrap().to_string()
        );
        let codec = ["PCMU", "PCMA", "L16"][n];
        assert_eq!(record["directions"]["R"]["codecs"][0], codec);
        let start = time::OffsetDateTime::parse(
            record["start"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let end = time::OffsetDateTime::parse(
            record["end"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert!(end >= start);

        let stereo = path_of(&record, "/stereo");
        assert_sox_accepts(&stereo);
        let (spec, interleaved) = read_wav(&stereo);
        assert_eq!(spec.channels, 2);
        let left: Vec<i16> = interleaved.iter().step_by(2).copied().collect();
        let right: Vec<i16> = interleaved.iter().skip(1).step_by(2).copied().collect();
        assert_eq!(left, expected(&read_bytes, &read_tone));
        assert_eq!(right, expected(&write_bytes, &write_tone));
    }
    receiver.stop();
    assert_eq!(receiver.counter("rst_calls_ended_total{reason=\"bye\"}"), 3);
    assert!(files_in(receiver.dir.path(), ".part").is_empty());
}

/// The original Go receiver prefixed every frame with a 0x00 byte, a 50 Hz click
/// in µ-law (0x00 decodes to -32124). Ours writes exactly the payload's audio.
#[test]
fn no_stray_byte_is_written_before_a_frame() {
    let mut receiver = Receiver::start();
    let mut sender = Sender::new(receiver.addr);
    let id = uuid(7);
    sender.inv(&id, "1", "2");
    let silence = vec![0xFFu8; 160];
    for _ in 0..10 {
        sender.data(&id, Read, 0, &silence);
    }
    sender.bye(&id);
    let record = receiver.wait_records(1).pop().unwrap();
    let (_, samples) = read_wav(&path_of(&record, "/directions/R/wav/0"));
    assert_eq!(samples.len(), 1600);
    assert!(
        samples.iter().all(|&s| s == 0),
        "a frame carried something besides its payload"
    );
    receiver.stop();
}

#[test]
fn data_before_its_inv_starts_the_call_and_the_late_inv_names_it() {
    let mut receiver = Receiver::start();
    let mut sender = Sender::new(receiver.addr);
    let id = uuid(8);
    let payload = vec![0x55u8; 160];
    sender.data(&id, Read, 8, &payload);
    sender.data(&id, Write, 8, &payload);
    // Both DATA are in before the INV comes.
    wait_counter(&receiver, "rst_datagrams_total", 2);
    sender.inv(&id, "alice", "bob");
    sender.data(&id, Read, 8, &payload);
    sender.bye(&id);
    let record = receiver.wait_records(1).pop().unwrap();
    assert_eq!(record["caller"], "alice");
    assert_eq!(record["callee"], "bob");
    assert_eq!(record["directions"]["R"]["packets"], 2);
    assert_eq!(record["directions"]["W"]["packets"], 1);
    assert_eq!(receiver.counter("rst_calls_started_total"), 1);
    receiver.stop();
}

#[test]
fn data_with_no_inv_at_all_is_still_recorded() {
    let mut receiver = Receiver::start();
    let mut sender = Sender::new(receiver.addr);
    let id = uuid(9);
    sender.data(&id, Read, 0, &[0xFFu8; 160]);
    sender.bye(&id);
    let record = receiver.wait_records(1).pop().unwrap();
    assert!(record["caller"].is_null() && record["callee"].is_null());
    assert_eq!(record["directions"]["R"]["samples"], 160);
    receiver.stop();
}

#[test]
fn a_repeated_inv_is_answered_again_and_changes_nothing() {
    let mut receiver = Receiver::start();
    let mut sender = Sender::new(receiver.addr);
    let id = uuid(10);
    sender.inv(&id, "alice", "bob");
    sender.data(&id, Read, 0, &[0xFFu8; 160]);
    sender.inv(&id, "mallory", "eve");
    sender.bye(&id);
    // The BYE of an ended call is answered too, so a retransmitting sender stops.
    sender.bye(&id);
    let record = receiver.wait_records(1).pop().unwrap();
    assert_eq!(record["caller"], "alice");
    assert_eq!(receiver.counter("rst_calls_started_total"), 1);
    // Counted once sent: the last ACK can reach the sender first.
    wait_counter(&receiver, "rst_acks_sent_total", 4);
    assert_eq!(receiver.counter("rst_acks_sent_total"), 4);
    receiver.stop();
}

#[test]
fn a_call_whose_bye_is_lost_ends_by_idle_timeout() {
    let mut receiver = Receiver::with(Settings {
        idle_timeout: Some(1),
        ..Settings::default()
    });
    let mut sender = Sender::new(receiver.addr);
    let id = uuid(11);
    sender.inv(&id, "alice", "bob");
    sender.data(&id, Read, 0, &[0xFFu8; 160]);
    let record = receiver.wait_records(1).pop().unwrap();
    assert_eq!(record["end_reason"], "timeout");
    assert_eq!(record["directions"]["R"]["samples"], 160);
    // A straggler after the end does not start a one-frame call of its own.
    sender.data(&id, Read, 0, &[0xFFu8; 160]);
    wait_counter(&receiver, "rst_refused_total{reason=\"after_end\"}", 1);
    assert_eq!(
        receiver.counter("rst_refused_total{reason=\"after_end\"}"),
        1
    );
    assert_eq!(receiver.counter("rst_calls_started_total"), 1);
    receiver.stop();
}

#[test]
fn the_stereo_file_stays_aligned_when_one_direction_has_a_gap() {
    let mut receiver = Receiver::start();
    let mut sender = Sender::new(receiver.addr);
    let id = uuid(12);
    sender.inv(&id, "alice", "bob");
    // 2 s in real time; W is silent (sends nothing) from 0.5 s to 1.5 s.
    let started = std::time::Instant::now();
    for i in 0..100u32 {
        let due = started + Duration::from_millis(20 * u64::from(i + 1));
        std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        sender.data(&id, Read, 10, &[0x10, 0x00].repeat(160));
        if !(25..75).contains(&i) {
            sender.data(&id, Write, 10, &[0x20, 0x00].repeat(160));
        }
    }
    sender.bye(&id);
    let record = receiver.wait_records(1).pop().unwrap();
    let (_, interleaved) = read_wav(&path_of(&record, "/stereo"));
    let right: Vec<i16> = interleaved.iter().skip(1).step_by(2).copied().collect();
    let left: Vec<i16> = interleaved.iter().step_by(2).copied().collect();
    // All of R, then at most the few samples W's arrival jitter adds at the end.
    let r_end = left.iter().rposition(|&s| s == 0x10).unwrap() + 1;
    assert_eq!(
        left[..r_end].iter().filter(|&&s| s == 0x10).count(),
        100 * 160,
        "R has a gap"
    );
    assert!(
        left[r_end..].iter().all(|&s| s == 0) && left.len() - r_end <= 800,
        "{} samples after R's end",
        left.len() - r_end
    );
    // The gap is silence of its length, give or take a few frames of scheduling jitter.
    let silent = right.iter().filter(|&&s| s == 0).count();
    assert!(
        (7200..=8800).contains(&silent),
        "{silent} samples of silence for a 1 s gap"
    );
    let resumed = right.iter().rposition(|&s| s == 0).unwrap() + 1;
    assert!(
        (11_600..=12_400).contains(&resumed),
        "W resumed at sample {resumed}, sent at 12000"
    );
    assert_eq!(right.iter().filter(|&&s| s == 0x20).count(), 50 * 160);
    receiver.stop();
}

#[test]
fn uuids_that_are_path_tricks_make_no_file() {
    let mut receiver = Receiver::start();
    let sender = Sender::new(receiver.addr);
    let tricks: [&[u8]; 7] = [
        b"INV :../../etc/passwd:1:2",
        b"INV :a/b:1:2",
        b"INV :..:1:2",
        b"INV :abc\0def:1:2",
        b"INV :/tmp/x:1:2",
        b"DATA:..%2f..:R:00:1:x",
        b"INV :.hidden:1:2",
    ];
    for trick in tricks {
        sender.send_raw(trick);
    }
    assert!(sender.receive().is_none(), "a path trick was answered");
    // Half a second of silence does not mean all were judged on a busy machine.
    wait_counter(
        &receiver,
        "rst_malformed_total{kind=\"bad_uuid\"}",
        tricks.len() as u64,
    );
    assert_eq!(
        receiver.counter("rst_malformed_total{kind=\"bad_uuid\"}"),
        tricks.len() as u64
    );
    receiver.stop();
    assert!(
        std::fs::read_dir(receiver.dir.path())
            .unwrap()
            .next()
            .is_none(),
        "a file was made"
    );
}

#[test]
fn malformed_datagrams_are_counted_by_kind_and_harm_no_call() {
    let mut receiver = Receiver::start();
    let mut sender = Sender::new(receiver.addr);
    let id = uuid(13);
    sender.inv(&id, "alice", "bob");
    let mut oversize = format!("DATA:{id}:R:00:20000:").into_bytes();
    oversize.resize(oversize.len() + 20000, 0xFF);
    let table: Vec<(Vec<u8>, &str)> = vec![
        (b"".to_vec(), "too_short"),
        (b"INV".to_vec(), "too_short"),
        (b"HELLO:world".to_vec(), "unknown_command"),
        (oversize, "oversize"),
        (format!("DATA:{id}:X:00:1:a").into_bytes(), "bad_flag"),
        (
            format!("DATA:{id}:R:1a:1:a").into_bytes(),
            "bad_payload_type",
        ),
        (
            format!("DATA:{id}:R:200:1:a").into_bytes(),
            "bad_payload_type",
        ),
        (format!("DATA:{id}:R:00:abc:a").into_bytes(), "bad_length"),
        (
            format!("DATA:{id}:R:00:5:abc").into_bytes(),
            "length_mismatch",
        ),
        (
            format!("DATA:{id}:R:00:1:abc").into_bytes(),
            "length_mismatch",
        ),
        (format!("DATA:{id}:R:00").into_bytes(), "missing_field"),
        (b"INV :\xff\xfe:1:2".to_vec(), "not_utf8"),
        (format!("INV :{id}").into_bytes(), "missing_field"),
        (format!("INV :{id}:1:2:0:5").into_bytes(), "bad_port"),
        (format!("BYE :{id}:extra").into_bytes(), "trailing_fields"),
    ];
    for (datagram, _) in &table {
        sender.send_raw(datagram);
    }
    sender.data(&id, Read, 0, &[0xFFu8; 160]);
    sender.bye(&id);
    let record = receiver.wait_records(1).pop().unwrap();
    assert_eq!(record["directions"]["R"]["samples"], 160);
    // The DATA ones that named the call are in its record.
    assert_eq!(record["malformed"], 11);
    let mut expected = std::collections::BTreeMap::new();
    for (_, kind) in &table {
        *expected.entry(*kind).or_insert(0u64) += 1;
    }
    for (kind, count) in expected {
        assert_eq!(
            receiver.counter(&format!("rst_malformed_total{{kind=\"{kind}\"}}")),
            count,
            "{kind}"
        );
    }
    receiver.stop();
}

/// What only a receiver sends (LIVE, PLAY, CLR) sent to it is refused,
/// counted, and harms no call.
#[test]
fn what_only_a_receiver_sends_is_refused_and_harms_no_call() {
    let mut receiver = Receiver::start();
    let mut sender = Sender::new(receiver.addr);
    let id = uuid(14);
    sender.inv(&id, "alice", "bob");
    sender.send_raw(format!("LIVE:{id}").as_bytes());
    sender.send_raw(format!("CLR :{id}").as_bytes());
    sender.send_raw(format!("PLAY:{id}:0:10:2:ab").as_bytes());
    sender.data(&id, Read, 0, &[0xFFu8; 160]);
    sender.bye(&id);
    let record = receiver.wait_records(1).pop().unwrap();
    assert_eq!(record["directions"]["R"]["samples"], 160, "{record}");
    assert_eq!(record["end_reason"], "bye", "{record}");
    assert_eq!(
        receiver.counter("rst_refused_total{reason=\"unexpected\"}"),
        3
    );
    assert_eq!(receiver.counter("rst_messages_total{command=\"live\"}"), 1);
    assert_eq!(sender.receive(), None, "nothing answers them");
    receiver.stop();
}

#[test]
fn a_flood_of_inv_stops_at_max_calls() {
    let mut receiver = Receiver::with(Settings {
        max_calls: Some(3),
        ..Settings::default()
    });
    let mut sender = Sender::new(receiver.addr);
    for n in 0..3 {
        sender.inv(&uuid(100 + n), "a", "b");
    }
    for n in 3..6 {
        let line = format!("INV :{}:a:b", uuid(100 + n));
        sender.send_raw(line.as_bytes());
    }
    assert!(
        sender.receive().is_none(),
        "a call over max-calls was accepted"
    );
    wait_counter(&receiver, "rst_refused_total{reason=\"max_calls\"}", 3);
    assert_eq!(
        receiver.counter("rst_refused_total{reason=\"max_calls\"}"),
        3
    );
    // Ending one makes room for another.
    sender.bye(&uuid(100));
    sender.inv(&uuid(200), "a", "b");
    receiver.stop();
    assert_eq!(receiver.wait_records(4).len(), 4);
}

#[test]
fn senders_outside_the_allowed_networks_are_ignored() {
    let mut receiver = Receiver::with(Settings {
        allow: vec!["10.0.0.0/8".parse().unwrap()],
        ..Settings::default()
    });
    let sender = Sender::new(receiver.addr);
    sender.send_raw(format!("INV :{}:a:b", uuid(14)).as_bytes());
    assert!(sender.receive().is_none());
    wait_counter(&receiver, "rst_refused_total{reason=\"not_allowed\"}", 1);
    assert_eq!(
        receiver.counter("rst_refused_total{reason=\"not_allowed\"}"),
        1
    );
    receiver.stop();
    assert!(records_in(receiver.dir.path()).is_empty());
}

#[test]
fn a_payload_type_change_mid_call_keeps_every_byte() {
    let mut receiver = Receiver::start();
    let mut sender = Sender::new(receiver.addr);
    let id = uuid(15);
    sender.inv(&id, "alice", "bob");
    sender.data(&id, Read, 0, &[0xFFu8; 160]); // PCMU, 8 kHz
    sender.data(&id, Read, 8, &[0xD5u8; 160]); // PCMA, 8 kHz: same file
    sender.data(&id, Read, 4, &[0xAB; 24]); // G.723: kept raw
    sender.data(&id, Read, 9, &[0xFF; 160]); // G.722, 16 kHz: a new segment
    sender.data(&id, Read, 99, &[1, 2, 3]); // unknown: kept raw
    sender.bye(&id);
    let record = receiver.wait_records(1).pop().unwrap();
    let read = &record["directions"]["R"];
    assert_eq!(
        read["codecs"],
        serde_json::json!(["PCMU", "PCMA", "raw", "G722", "raw"])
    );
    let (spec, first) = read_wav(&path_of(&record, "/directions/R/wav/0"));
    assert_eq!((spec.sample_rate, first.len()), (8000, 320));
    assert_eq!(&first[160..], &[8i16; 160][..]);
    let (spec, second) = read_wav(&path_of(&record, "/directions/R/wav/1"));
    assert_eq!((spec.sample_rate, second.len()), (16000, 320));
    assert_sox_accepts(&path_of(&record, "/directions/R/wav/1"));
    assert_eq!(
        std::fs::read(path_of(&record, "/directions/R/raw/0/path")).unwrap(),
        [0xAB; 24]
    );
    assert_eq!(read["raw"][0]["payload_type"], 4);
    assert_eq!(
        std::fs::read(path_of(&record, "/directions/R/raw/1/path")).unwrap(),
        [1, 2, 3]
    );
    receiver.stop();
}

#[test]
fn the_raw_option_writes_each_directions_bare_payload() {
    let mut receiver = Receiver::with(Settings {
        raw: Some(true),
        ..Settings::default()
    });
    let mut sender = Sender::new(receiver.addr);
    let id = uuid(16);
    sender.inv(&id, "alice", "bob");
    sender.data(&id, Read, 0, &[1u8; 160]);
    sender.data(&id, Read, 0, &[2u8; 160]);
    sender.data(&id, Write, 0, &[3u8; 160]);
    sender.bye(&id);
    let record = receiver.wait_records(1).pop().unwrap();
    let mut expected = vec![1u8; 160];
    expected.extend([2u8; 160]);
    assert_eq!(
        std::fs::read(path_of(&record, "/directions/R/bare")).unwrap(),
        expected
    );
    assert_eq!(
        std::fs::read(path_of(&record, "/directions/W/bare")).unwrap(),
        [3u8; 160]
    );
    receiver.stop();
}

#[test]
fn shutdown_finishes_every_open_call() {
    let mut receiver = Receiver::start();
    let mut sender = Sender::new(receiver.addr);
    for n in 0..3 {
        sender.inv(&uuid(20 + n), "a", "b");
        sender.data(&uuid(20 + n), Read, 0, &[0xFF; 160]);
    }
    wait_counter(&receiver, "rst_datagrams_total", 6);
    receiver.stop();
    let records = records_in(receiver.dir.path());
    assert_eq!(records.len(), 3);
    for record in records {
        assert_eq!(record["end_reason"], "shutdown");
        assert_sox_accepts(&path_of(&record, "/directions/R/wav/0"));
    }
    assert!(files_in(receiver.dir.path(), ".part").is_empty());
}

#[test]
fn a_uuid_reused_after_its_call_ended_gets_new_files() {
    let mut receiver = Receiver::start();
    let mut sender = Sender::new(receiver.addr);
    let id = uuid(30);
    for round in 0..2u8 {
        sender.inv(&id, "a", "b");
        sender.data(&id, Read, 0, &[round; 160]);
        sender.bye(&id);
    }
    let records = receiver.wait_records(2);
    assert_ne!(records[0]["record"], records[1]["record"]);
    assert_ne!(
        path_of(&records[0], "/directions/R/wav/0"),
        path_of(&records[1], "/directions/R/wav/0")
    );
    receiver.stop();
}

#[test]
fn a_call_id_given_in_the_inv_reaches_the_record() {
    let mut receiver = Receiver::start();
    let mut sender = Sender::new(receiver.addr);
    let id = uuid(60);
    let call_id = "a84b4c76e66710@pc33.atlanta.com:5060";
    let extensions = format!("call-id={}", rst_proto::Extensions::escape(call_id));
    sender.inv_with(
        &id,
        "alice",
        "bob",
        rst_proto::Extensions::parse(&extensions).unwrap(),
    );
    sender.bye(&id);
    let record = receiver.wait_records(1).pop().unwrap();
    assert_eq!(record["call_id"], call_id);
    receiver.stop();
}

/// A call is bound to the address that started it: a second socket on the same
/// host can neither speak into it nor end it (refused, counted, unanswered).
#[test]
fn datagrams_from_another_address_than_the_calls_sender_are_refused() {
    let mut receiver = Receiver::start();
    let mut owner = Sender::new(receiver.addr);
    let mut intruder = Sender::new(receiver.addr);
    let id = uuid(40);
    owner.inv(&id, "alice", "bob");
    let voice = [0xFFu8; 160];
    for _ in 0..5 {
        owner.data(&id, Read, 0, &voice);
    }
    for _ in 0..20 {
        intruder.data(&id, Read, 0, &[0x00u8; 160]);
    }
    intruder.send(rst_proto::Message::Bye(rst_proto::Bye {
        uuid: rst_proto::Uuid::new(&id).unwrap(),
    }));
    assert!(
        intruder.receive().is_none(),
        "the intruder's BYE was answered"
    );
    // A repeated INV from the intruder renames nobody and is not answered either.
    intruder.send(rst_proto::Message::Inv(rst_proto::Inv {
        uuid: rst_proto::Uuid::new(&id).unwrap(),
        caller: "mallory",
        callee: "eve",
        rtp_ports: None,
        extensions: rst_proto::Extensions::NONE,
    }));
    assert!(
        intruder.receive().is_none(),
        "the intruder's INV was answered"
    );
    for _ in 0..5 {
        owner.data(&id, Read, 0, &voice);
    }
    owner.bye(&id);
    let record = receiver.wait_records(1).pop().unwrap();
    assert_eq!(record["end_reason"], "bye", "{record}");
    assert_eq!(record["caller"], "alice", "{record}");
    assert_eq!(record["directions"]["R"]["packets"], 10, "{record}");
    let (_, samples) = read_wav(&path_of(&record, "/directions/R/wav/0"));
    assert!(
        samples.iter().all(|&s| s == samples[0]),
        "the intruder's audio is in the recording"
    );
    assert_eq!(
        receiver.counter("rst_refused_total{reason=\"wrong_source\"}"),
        22
    );
    receiver.stop();
}

/// `bind-sender = false`, for senders whose address may change mid-call: any
/// address may act on a call, as the original receiver allowed.
#[test]
fn with_bind_sender_off_a_call_takes_datagrams_from_any_address() {
    let mut receiver = Receiver::with(Settings {
        bind_sender: Some(false),
        ..Settings::default()
    });
    let mut first = Sender::new(receiver.addr);
    let mut moved = Sender::new(receiver.addr);
    let id = uuid(41);
    first.inv(&id, "alice", "bob");
    first.data(&id, Read, 0, &[0xFFu8; 160]);
    moved.data(&id, Read, 0, &[0xFFu8; 160]);
    moved.bye(&id);
    let record = receiver.wait_records(1).pop().unwrap();
    assert_eq!(record["end_reason"], "bye", "{record}");
    assert_eq!(record["directions"]["R"]["packets"], 2, "{record}");
    assert_eq!(
        receiver.counter("rst_refused_total{reason=\"wrong_source\"}"),
        0
    );
    receiver.stop();
}

/// A sender that saw the call move to fax (tap_daemon: a T.38 re-INVITE)
/// says so in a repeated INV (`fax=1`): the record says the call had a fax
/// phase, which its audio does not hold.
#[test]
fn a_fax_phase_declared_by_the_sender_reaches_the_record() {
    let mut receiver = Receiver::start();
    let mut sender = Sender::new(receiver.addr);
    let (fax, voice) = (uuid(42), uuid(43));
    for id in [&fax, &voice] {
        sender.inv(id, "alice", "bob");
        sender.data(id, Read, 0, &[0xFFu8; 160]);
    }
    sender.inv_with(
        &fax,
        "alice",
        "bob",
        rst_proto::Extensions::parse("fax=1").unwrap(),
    );
    for id in [&fax, &voice] {
        sender.bye(id);
    }
    let records = receiver.wait_records(2);
    for record in &records {
        let expected = record["uuid"] == fax.as_str();
        assert_eq!(record["fax"], expected, "{record}");
    }
    receiver.stop();
}

/// A flood of stray DATA with distinct UUIDs (the outside test's 20,000 made
/// 10,000 calls and 20,767 files): none proves itself, so no call starts and no
/// file is made; each is counted; a real call records meanwhile.
#[test]
fn a_flood_of_stray_data_makes_no_call_and_no_file() {
    let mut receiver = Receiver::start();
    let flooder = Sender::new(receiver.addr);
    let mut real = Sender::new(receiver.addr);
    let real_id = uuid(50);
    real.inv(&real_id, "alice", "bob");
    let mut datagram = Vec::new();
    for n in 0..2000u32 {
        datagram.clear();
        rst_proto::Message::Data(rst_proto::Data {
            uuid: rst_proto::Uuid::new(&format!("flood-{n:08}")).unwrap(),
            direction: Read,
            payload_type: rst_proto::PayloadType::new(0).unwrap(),
            payload: &[0xFF; 160],
        })
        .encode(&mut datagram)
        .unwrap();
        flooder.send_raw(&datagram);
        if n % 100 == 0 {
            real.data(&real_id, Read, 0, &[0xFF; 160]);
        }
    }
    real.bye(&real_id);
    // Every stray frame is refused as unproven, held ones once forgotten.
    wait_counter(&receiver, "rst_refused_total{reason=\"unproven\"}", 2000);
    let records = receiver.wait_records(1);
    assert_eq!(records[0]["uuid"], real_id.as_str());
    assert_eq!(records[0]["directions"]["R"]["packets"], 20);
    assert_eq!(receiver.counter("rst_calls_started_total"), 1);
    let files = files_in(receiver.dir.path(), "");
    assert!(
        files
            .iter()
            .all(|f| f.to_string_lossy().contains(real_id.as_str())),
        "files of stray DATA: {files:?}"
    );
    receiver.stop();
}

/// A lost INV loses no audio: a call that DATA alone starts is held until a
/// few frames prove it, then recorded from its first frame.
#[test]
fn a_call_whose_inv_was_lost_is_recorded_from_its_first_frame() {
    let mut receiver = Receiver::start();
    let mut sender = Sender::new(receiver.addr);
    let id = uuid(51);
    let frames: Vec<Vec<u8>> = (0..10u8).map(|k| vec![k; 160]).collect();
    for frame in &frames {
        sender.data(&id, Read, 0, frame);
    }
    sender.bye(&id);
    let record = receiver.wait_records(1).pop().unwrap();
    assert_eq!(record["directions"]["R"]["packets"], 10, "{record}");
    let bare: Vec<u8> = frames.concat();
    let (_, samples) = read_wav(&path_of(&record, "/directions/R/wav/0"));
    assert_eq!(samples, sox_decode("ul", &bare), "not the frames in order");
    receiver.stop();
}

/// `new-calls-per-second` bounds how fast one sender address starts calls.
#[test]
fn new_calls_beyond_the_rate_of_one_sender_are_refused() {
    let mut receiver = Receiver::with(Settings {
        new_calls_per_second: Some(3),
        ..Settings::default()
    });
    let mut sender = Sender::new(receiver.addr);
    for n in 0..10 {
        sender.send(rst_proto::Message::Inv(rst_proto::Inv {
            uuid: rst_proto::Uuid::new(&uuid(60 + n)).unwrap(),
            caller: "alice",
            callee: "bob",
            rtp_ports: None,
            extensions: rst_proto::Extensions::NONE,
        }));
    }
    // An INV is counted as a message before it is started or refused: wait
    // for the last one's outcome, not just for it to be seen.
    let judged = || {
        (
            receiver.counter("rst_calls_started_total"),
            receiver.counter("rst_refused_total{reason=\"rate_limited\"}"),
        )
    };
    wait_until(
        || format!("not all ten INVs judged: {:?}", judged()),
        || {
            let (started, limited) = judged();
            started + limited >= 10
        },
    );
    let (started, limited) = judged();
    // Ten INVs sent at once meet the limit, unless the machine stalled a second.
    assert!(
        started >= 3 && limited >= 1,
        "{started} started, {limited} limited"
    );
    assert_eq!(started + limited, 10);
    receiver.stop();
}
