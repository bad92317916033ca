//! One test per defect of the original C module (issue 4), each named after it.

mod common;

use std::net::UdpSocket;

use common::*;
use serde_json::Value;

fn output(answer: &Value) -> &str {
    answer["output"].as_str().unwrap()
}

/// A native channel in `codec` at `rate` for one second; the receiver's record.
fn native_call(codec: &str, rate: u32, u: &str) -> (Receiver, Value) {
    let (receiver, _conf, mut host) = setup(&[]);
    host.ok(&format!(
        "session {u} caller_id_number=1001 destination_number=1002 codec={codec} rate={rate}"
    ));
    host.ok(&format!("app {u} rst"));
    host.ok(&format!(
        "media {u} 1 read_hz={READ_HZ} write_hz={WRITE_HZ}"
    ));
    host.ok("wait");
    host.ok(&format!("hangup {u}"));
    let record = receiver.record(u);
    finish(host);
    (receiver, record)
}

/// Payload types other than 0, 8 and 10 left the length unset, and copying
/// used the sample count as the byte count: right only for 8-bit codecs. An L16
/// channel has 2 bytes a sample: 320 bytes a frame at 8 kHz, 640 at 16 kHz.
fn length_is_bytes_not_samples(rate: u32, u: &str) {
    let (_receiver, record) = native_call("L16", rate, u);
    let samples = u64::from(rate);
    assert_eq!(record["malformed"], 0, "{record}");
    for (dir, hz) in [("R", READ_HZ), ("W", WRITE_HZ)] {
        let direction = &record["directions"][dir];
        assert_eq!(
            direction["payload_types"],
            serde_json::json!([10]),
            "{record}"
        );
        assert_eq!(
            direction["packets"],
            datagrams_by_default(50, 2 * rate as usize / 50),
            "{record}"
        );
        assert_eq!(direction["bytes"], 2 * samples, "{dir} bytes: {record}");
        assert_eq!(direction["samples"], samples, "{dir} samples: {record}");
        assert_eq!(direction["decode_errors"], 0, "{record}");
        let (spec, wav) = direction_wav(&record, dir);
        assert_eq!(spec.sample_rate, rate);
        assert_samples(dir, &wav, &tone(hz, 8000.0, rate, 0, rate as usize));
    }
}

#[test]
fn original_defect_byte_count_was_the_sample_count_l16_8khz() {
    length_is_bytes_not_samples(8000, &uuid(0x401));
}

#[test]
fn original_defect_byte_count_was_the_sample_count_l16_16khz() {
    length_is_bytes_not_samples(16000, &uuid(0x402));
}

/// The W direction reported the read codec: read PCMU and write PCMA at once.
#[test]
fn original_defect_w_direction_reported_the_read_codec() {
    let u = uuid(0x403);
    let (receiver, _conf, mut host) = setup(&[]);
    let session = host.ok(&format!(
        "session {u} caller_id_number=1001 destination_number=1002 codec=PCMU write_codec=PCMA"
    ));
    assert_eq!(session["write_codec"], "PCMA", "{session}");
    host.ok(&format!("app {u} rst"));
    host.ok(&format!(
        "media {u} 1 read_hz={READ_HZ} write_hz={WRITE_HZ}"
    ));
    host.ok("wait");
    let stats = host.ok(&format!("stats {u}"));
    host.ok(&format!("hangup {u}"));
    let record = receiver.record(&u);
    finish(host);
    assert_eq!(
        stats["media"]["write"]["segments"][0]["codec"], "PCMA",
        "{stats}"
    );
    for (dir, hz, codec, pt) in [("R", READ_HZ, "PCMU", 0), ("W", WRITE_HZ, "PCMA", 8)] {
        let direction = &record["directions"][dir];
        assert_eq!(
            direction["codecs"],
            serde_json::json!([codec]),
            "{dir}: {record}"
        );
        assert_eq!(
            direction["payload_types"],
            serde_json::json!([pt]),
            "{dir}: {record}"
        );
        assert_eq!(
            direction["packets"],
            datagrams_by_default(50, 160),
            "{record}"
        );
        assert_eq!(direction["bytes"], 8000, "{record}");
        let (_, samples) = direction_wav(&record, dir);
        assert_samples(
            &format!("{dir} in {codec}"),
            &samples,
            &heard(codec, &tone(hz, 8000.0, 8000, 0, 8000)),
        );
    }
}

/// The application ignored its host and port arguments: every call went to
/// the configured default. Two receivers; only the one named records.
#[test]
fn original_defect_application_ignored_host_and_port() {
    let (mut default, _conf, mut host) = setup(&[]);
    let named = Receiver::start();
    let (a, b, c) = (uuid(0x404), uuid(0x405), uuid(0x406));
    for u in [&a, &b, &c] {
        session(&mut host, u);
    }
    let port = named.addr.port();
    host.ok(&format!("app {a} rst 127.0.0.1 {port}"));
    // As `execute_on_answer='rst 127.0.0.1 PORT'` reaches FreeSWITCH 1.10.10+.
    host.ok(&format!("app {b} 'rst 127.0.0.1 {port}'"));
    let answer = host.ok(&format!("api uuid_rst {c} 127.0.0.1 {port}"));
    assert!(output(&answer).starts_with("+OK"), "{answer}");
    for u in [&a, &b, &c] {
        // One stream each: its recording bug (no audio came back).
        assert_eq!(host.ok(&format!("stats {u}"))["bugs_added"], 1);
        host.ok(&format!("media {u} 0.5"));
    }
    host.ok("wait");
    for u in [&a, &b, &c] {
        host.ok(&format!("hangup {u}"));
    }
    let records = named.wait_records(3);
    for record in &records {
        assert_eq!(record["end_reason"], "bye", "{record}");
        let datagrams = datagrams_by_default(25, 160);
        assert_eq!(record["directions"]["R"]["packets"], datagrams, "{record}");
    }
    let events = host.ok("events");
    let targets: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["subclass"] == "rst::start")
        .map(|e| &e["headers"]["rst-target"])
        .collect();
    assert_eq!(targets.len(), 3, "{events}");
    assert!(
        targets
            .iter()
            .all(|t| *t == named.addr.to_string().as_str()),
        "{events}"
    );
    // Unloaded, the module has sent all it will; the stop reads what arrived
    // and ends any call it started, which would leave a record.
    finish(host);
    default.stop();
    assert!(
        records_in(default.dir.path()).is_empty(),
        "the default receiver recorded"
    );
}

/// Lock accounting of one session: every locate unlocked, nothing held.
fn assert_balanced(host: &mut Host, u: &str) -> Value {
    let stats = host.ok(&format!("stats {u}"));
    assert_eq!(stats["locks_held"], 0, "{stats}");
    assert_eq!(stats["bad_unlocks"], 0, "{stats}");
    assert_eq!(stats["locates"], stats["unlocks"], "{stats}");
    stats
}

/// uuid_rst touched the session after releasing its read lock (a use after
/// free once the call hangs up). The host counts locates and unlocks and
/// reports any use of a session after it was hung up and unlocked; a hangup is
/// raced against uuid_rst start and stop, at many offsets.
#[test]
fn original_defect_uuid_rst_used_the_session_after_unlocking_it() {
    let (receiver, _conf, mut host) = setup(&[]);
    // Start, start again, stop, stop again, rst_stop, unknown uuid: balanced.
    let u = uuid(0x410);
    session(&mut host, &u);
    for (command, ok) in [
        (format!("api uuid_rst {u}"), true),
        (format!("api uuid_rst {u}"), true),
        (format!("api uuid_rst {u} stop"), true),
        (format!("api uuid_rst {u} stop"), false),
        (format!("api uuid_rst {u}"), true),
        (format!("api rst_stop {u}"), true),
        (
            "api uuid_rst 00000000-0000-0000-0000-0000000dead0".to_owned(),
            false,
        ),
        (
            "api uuid_rst 00000000-0000-0000-0000-0000000dead0 stop".to_owned(),
            false,
        ),
        (
            "api rst_stop 00000000-0000-0000-0000-0000000dead0".to_owned(),
            false,
        ),
    ] {
        let answer = host.ok(&command);
        assert_eq!(
            output(&answer).starts_with("+OK"),
            ok,
            "{command}: {answer}"
        );
    }
    let stats = assert_balanced(&mut host, &u);
    assert!(stats["locates"].as_u64().unwrap() >= 6, "{stats}");
    host.ok(&format!("hangup {u}"));
    // A hung-up channel: not found, nothing locked.
    let answer = host.ok(&format!("api uuid_rst {u}"));
    assert!(output(&answer).starts_with("-ERR"), "{answer}");
    let stats = assert_balanced(&mut host, &u);
    assert_eq!(stats["destroyed"], true, "{stats}");

    // A hangup racing uuid_rst start (and stop of a running stream).
    let mut started = 0;
    for round in 0..40u32 {
        let u = uuid(0x500 + round);
        session(&mut host, &u);
        let stop = round % 2 == 1;
        if stop {
            let answer = host.ok(&format!("api uuid_rst {u}"));
            assert!(output(&answer).starts_with("+OK"), "{answer}");
            host.ok(&format!("media {u} 1"));
        }
        let delay_us = (round / 2) * 25;
        host.ok(&format!("hangup_async {u} delay_us={delay_us}"));
        let command = if stop {
            format!("api uuid_rst {u} stop")
        } else {
            format!("api uuid_rst {u}")
        };
        let answer = host.ok(&command);
        let text = output(&answer);
        assert!(
            text.starts_with("+OK") || text.starts_with("-ERR"),
            "{answer}"
        );
        if !stop && text.starts_with("+OK") {
            started += 1;
        }
        host.ok("wait_hangups");
        let stats = assert_balanced(&mut host, &u);
        assert_eq!(stats["destroyed"], true, "{stats}");
        assert_eq!(stats["bugs"], serde_json::json!([]), "{stats}");
    }
    eprintln!("uuid_rst won the race against hangup {started} times of 20");
    let violations = host.ok("violations");
    assert_eq!(violations["all"], serde_json::json!([]), "{violations}");
    finish(host);
    drop(receiver);
}

/// The caller was parsed out of the channel name, so only some endpoint types
/// worked: caller and callee are the channel's caller_id_number and
/// destination_number whatever its name, and rst_caller / rst_callee win.
#[test]
fn original_defect_caller_was_parsed_from_the_channel_name() {
    let (receiver, _conf, mut host) = setup(&[]);
    let (a, b) = (uuid(0x420), uuid(0x421));
    for u in [&a, &b] {
        host.ok(&format!(
            "session {u} channel_name=sofia/external/9999@10.0.0.1 caller_id_number=18621575908 destination_number=02131570530"
        ));
    }
    host.ok(&format!("var {b} rst_caller=alice rst_callee=bob"));
    for u in [&a, &b] {
        host.ok(&format!("app {u} rst"));
        host.ok(&format!("media {u} 0.2"));
    }
    host.ok("wait");
    for u in [&a, &b] {
        host.ok(&format!("hangup {u}"));
    }
    let record = receiver.record(&a);
    assert_eq!(record["caller"], "18621575908", "{record}");
    assert_eq!(record["callee"], "02131570530", "{record}");
    let record = receiver.record(&b);
    assert_eq!(record["caller"], "alice", "{record}");
    assert_eq!(record["callee"], "bob", "{record}");
    finish(host);
}

/// The INIT callback opened files, sent and busy-waited up to 5 s for the ACK
/// (then closed the socket DATA used). With no receiver at all (a socket that
/// reads and never answers) the application returns before the INV's first
/// retransmission, 3 s later; the hangup before the BYE's; DATA still goes
/// out for the whole call. (What a callback costs is the callback bench's.)
#[test]
fn original_defect_init_callback_waited_for_the_ack() {
    let nobody = UdpSocket::bind("127.0.0.1:0").unwrap();
    nobody.set_nonblocking(true).unwrap();
    // INV (and BYE) at 0 and 3 s, given up at 9 s.
    let conf = conf_for_addr(
        nobody.local_addr().unwrap(),
        &[("retransmit-ms", "3000"), ("retransmit-tries", "2")],
    );
    let u = uuid(0x430);
    let mut heard: Vec<Vec<u8>> = Vec::new();
    let mut count_heard = |command: &[u8]| {
        let mut buf = [0u8; 2048];
        while let Ok(n) = nobody.recv(&mut buf) {
            heard.push(buf[..n].to_vec());
        }
        // This call's only: another test's module may still send to a reused port.
        let named = |d: &[u8]| d.windows(u.len()).any(|w| w == u.as_bytes());
        heard
            .iter()
            .filter(|d| d.starts_with(command) && named(d))
            .count()
    };
    let mut host = Host::start();
    host.load(conf.path());
    session(&mut host, &u);
    host.ok(&format!("app {u} rst"));
    let stats = host.ok(&format!("stats {u}"));
    // The recording bug's (the playback bug waits for audio back).
    assert_eq!(stats["callbacks"]["INIT"]["count"], 1, "{stats}");
    let invs = wait_for("the first INV", || {
        let invs = count_heard(b"INV ");
        (invs > 0).then_some(invs)
    });
    assert_eq!(
        invs, 1,
        "the application waited for the INV's retransmission"
    );
    host.ok(&format!("media {u} 1"));
    host.ok("wait");
    host.ok(&format!("hangup {u}"));
    let byes = wait_for("the first BYE", || {
        let byes = count_heard(b"BYE ");
        (byes > 0).then_some(byes)
    });
    assert_eq!(byes, 1, "the hangup waited for the BYE's retransmission");
    assert_eq!(
        count_heard(b"DATA") as u64,
        2 * datagrams_by_default(50, 160)
    );
    let stats = host.ok(&format!("stats {u}"));
    assert_eq!(
        stats["callbacks"]["TAP_NATIVE_READ"]["count"], 50,
        "{stats}"
    );
    let counters = wait_for("the stream's end", || {
        let status = host.ok("api rst_status");
        let counters: Value = serde_json::from_str(output(&status).trim()).unwrap();
        (counters["streams_active"] == 0).then_some(counters)
    });
    for (key, value) in [
        ("frames_queued", 100),
        ("frames_sent", 100),
        ("frames_dropped_queue_full", 0),
        // The hangup came while the INV was still unanswered: its BYE took over.
        ("byes_unacknowledged", 1),
        ("acks_received", 0),
    ] {
        assert_eq!(counters[key], value, "{key}: {counters}");
    }
    // This kernel (4.18 and later) takes UDP GSO: the sends still group.
    assert_eq!(counters["gso"], true, "{counters}");
    finish(host);
}
