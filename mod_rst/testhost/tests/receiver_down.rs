//! The receiver down for part of a call: the module keeps the call going,
//! never stalls a media thread, counts what happened, and whatever receiver is
//! listening records what reached it (DATA without INV starts a call there).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use udp_server::Settings;

/// A loopback address nothing listens on (bound, then released).
fn free_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A receiver on exactly `addr`.
fn receiver_on(addr: SocketAddr) -> Receiver {
    let receiver = Receiver::with(Settings {
        listen: Some(addr),
        ..Settings::default()
    });
    assert_eq!(receiver.addr, addr);
    receiver
}

/// Stops a receiver (it ends its calls as `shutdown`) and keeps its recordings.
fn stop_keeping_files(mut receiver: Receiver) -> tempfile::TempDir {
    let dir = std::mem::replace(&mut receiver.dir, tempfile::tempdir().unwrap());
    drop(receiver);
    dir
}

fn counters(host: &mut Host) -> Value {
    let status = host.ok("api rst_status");
    serde_json::from_str(status["output"].as_str().unwrap().trim()).unwrap()
}

/// Waits until rst_status's `key` reaches `value` (the sender thread's timers).
fn wait_counter(host: &mut Host, key: &str, value: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counters = counters(host);
        if counters[key] == value || Instant::now() > deadline {
            assert_eq!(counters[key], value, "{key}: {counters}");
            return counters;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// No callback held up the media thread: FreeSWITCH's frame is 20 ms, and a
/// receiver that is down must cost the call nothing.
fn assert_no_stall(stats: &Value) {
    for (kind, timing) in stats["callbacks"].as_object().unwrap() {
        let cpu_max = timing["cpu_max_ns"].as_u64().unwrap();
        let mean = timing["mean_ns"].as_u64().unwrap();
        let max = timing["max_ns"].as_u64().unwrap();
        assert!(cpu_max < 2_000_000, "{kind}: {cpu_max} ns of CPU: {stats}");
        assert!(mean < 1_000_000, "{kind}: mean {mean} ns: {stats}");
        assert!(
            max < 20_000_000,
            "{kind}: a callback took {max} ns: {stats}"
        );
    }
    assert_eq!(stats["media"]["late_ticks"], 0, "{stats}");
}

/// `samples` is the tone of `hz` (in PCMU) from frame `total - len` to frame `total`:
/// the end of the call, whole frames, exact. Returns the first frame recorded.
fn assert_tail(what: &str, samples: &[i16], hz: f64, total: usize) -> usize {
    assert_eq!(samples.len() % 160, 0, "{what}: not whole frames");
    let frames = samples.len() / 160;
    assert!(frames <= total, "{what}: {frames} frames of {total}");
    let first = total - frames;
    let expected = heard(
        "PCMU",
        &tone(hz, 8000.0, 8000, (first * 160) as u64, frames * 160),
    );
    assert_samples(what, samples, &expected);
    first
}

/// `samples` is the tone of `hz` (in PCMU) from frame 0 on, exact.
fn assert_head(what: &str, samples: &[i16], hz: f64) -> usize {
    assert_eq!(samples.len() % 160, 0, "{what}: not whole frames");
    let expected = heard("PCMU", &tone(hz, 8000.0, 8000, 0, samples.len()));
    assert_samples(what, samples, &expected);
    samples.len() / 160
}

fn start_call(host: &mut Host, u: &str, seconds: u32) {
    session(host, u);
    let started = Instant::now();
    host.ok(&format!("app {u} rst"));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the application took {:?} with no receiver",
        started.elapsed()
    );
    host.ok(&format!(
        "media {u} {seconds} read_hz={READ_HZ} write_hz={WRITE_HZ}"
    ));
}

/// DATA mode, no receiver at the start: the INV's retransmissions give up, the
/// DATA keeps going (to nobody), and a receiver started two seconds in records
/// the rest of the call, which its first DATA starts, and the BYE ends.
#[test]
fn receiver_started_mid_call_records_the_rest_from_data_without_inv() {
    let addr = free_addr();
    let conf = conf_for_addr(addr, &[("retransmit-ms", "50"), ("retransmit-tries", "3")]);
    let mut host = Host::start();
    host.load(conf.path());
    let u = uuid(0x301);
    start_call(&mut host, &u, 5);
    // INV at 0, 50 and 150 ms, given up at 350 ms.
    wait_counter(&mut host, "invs_unacknowledged", 1);
    host.ok("sleep 1500");
    let receiver = receiver_on(addr);
    host.ok("wait");
    let hangup_started = Instant::now();
    host.ok(&format!("hangup {u}"));
    assert!(hangup_started.elapsed() < Duration::from_millis(500));
    let record = receiver.record(&u);
    let stats = host.ok(&format!("stats {u}"));
    assert_no_stall(&stats);
    assert_eq!(record["end_reason"], "bye", "{record}");
    // Started by DATA: nobody told the receiver who was calling.
    assert!(record["caller"].is_null(), "{record}");
    assert!(record["callee"].is_null(), "{record}");
    for (dir, hz) in [("R", READ_HZ), ("W", WRITE_HZ)] {
        let (_, samples) = direction_wav(&record, dir);
        let first = assert_tail(&format!("{u} {dir}"), &samples, hz, 250);
        // Two seconds of the five were sent to nobody.
        assert!(
            (80..=125).contains(&first),
            "{dir}: from frame {first}: {record}"
        );
    }
    let counters = wait_counter(&mut host, "streams_active", 0);
    for (key, value) in [
        ("streams_started", 1),
        ("frames_queued", 500),
        ("frames_sent", 500),
        ("frames_dropped_queue_full", 0),
        ("send_errors", 0),
        ("invs_unacknowledged", 1),
        ("byes_unacknowledged", 0),
        ("acks_received", 1),
    ] {
        assert_eq!(counters[key], value, "{key}: {counters}");
    }
    let events = host.ok("events");
    let errors: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["subclass"] == "rst::error")
        .collect();
    assert_eq!(errors.len(), 1, "{events}");
    assert_eq!(errors[0]["headers"]["Unique-ID"], u.as_str(), "{events}");
    finish(host);
}

/// A receiver that comes up while the INV is still being retransmitted gets
/// the INV (so the parties), and everything sent from then on.
#[test]
fn receiver_started_during_inv_retransmission_gets_the_inv() {
    let addr = free_addr();
    // Default backoff: INV at 0, 0.2, 0.6, 1.4, 3.0 s...
    let conf = conf_for_addr(addr, &[]);
    let mut host = Host::start();
    host.load(conf.path());
    let u = uuid(0x302);
    start_call(&mut host, &u, 3);
    host.ok("sleep 800");
    let receiver = receiver_on(addr);
    host.ok("wait");
    host.ok(&format!("hangup {u}"));
    let record = receiver.record(&u);
    assert_no_stall(&host.ok(&format!("stats {u}")));
    assert_eq!(record["end_reason"], "bye", "{record}");
    assert_eq!(record["caller"], "1001", "{record}");
    assert_eq!(record["callee"], "1002", "{record}");
    for (dir, hz) in [("R", READ_HZ), ("W", WRITE_HZ)] {
        let (_, samples) = direction_wav(&record, dir);
        let first = assert_tail(&format!("{u} {dir}"), &samples, hz, 150);
        assert!(
            (30..=60).contains(&first),
            "{dir}: from frame {first}: {record}"
        );
    }
    let counters = wait_counter(&mut host, "streams_active", 0);
    for (key, value) in [
        ("frames_sent", 300),
        ("send_errors", 0),
        ("invs_unacknowledged", 0),
        ("byes_unacknowledged", 0),
    ] {
        assert_eq!(counters[key], value, "{key}: {counters}");
    }
    finish(host);
}

/// A receiver that stops 1.5 s into a call records the beginning (ended as
/// `shutdown`); one started on the same port 1.5 s later records the end,
/// started by DATA, ended by the BYE. The call never notices.
#[test]
fn receiver_stopping_mid_call_then_coming_back() {
    let first = Receiver::start();
    let addr = first.addr;
    let conf = conf_for(&first, &[]);
    let mut host = Host::start();
    host.load(conf.path());
    let u = uuid(0x303);
    start_call(&mut host, &u, 5);
    host.ok("sleep 1500");
    let first_dir = stop_keeping_files(first);
    host.ok("sleep 1500");
    let second = receiver_on(addr);
    host.ok("wait");
    host.ok(&format!("hangup {u}"));
    let ended = second.record(&u);
    let began = records_in(first_dir.path());
    assert_eq!(began.len(), 1, "{began:?}");
    let began = &began[0];
    assert_no_stall(&host.ok(&format!("stats {u}")));
    assert_eq!(began["end_reason"], "shutdown", "{began}");
    assert_eq!(began["caller"], "1001", "{began}");
    assert_eq!(ended["end_reason"], "bye", "{ended}");
    assert!(ended["caller"].is_null(), "{ended}");
    for (dir, hz) in [("R", READ_HZ), ("W", WRITE_HZ)] {
        let (_, head) = direction_wav(began, dir);
        let head = assert_head(&format!("{u} {dir}, first receiver"), &head, hz);
        let (_, tail) = direction_wav(&ended, dir);
        let tail_from = assert_tail(&format!("{u} {dir}, second receiver"), &tail, hz, 250);
        assert!(
            (60..=90).contains(&head),
            "{dir}: {head} frames before the stop"
        );
        assert!(
            (140..=190).contains(&tail_from),
            "{dir}: from frame {tail_from}"
        );
    }
    let counters = wait_counter(&mut host, "streams_active", 0);
    for (key, value) in [
        ("frames_sent", 500),
        ("send_errors", 0),
        ("invs_unacknowledged", 0),
        ("byes_unacknowledged", 0),
    ] {
        assert_eq!(counters[key], value, "{key}: {counters}");
    }
    finish(host);
}

/// A receiver that stops mid-call and never comes back: the hangup is as quick
/// as ever, the BYE's retransmissions give up and are counted.
#[test]
fn receiver_stopping_mid_call_for_good_costs_the_hangup_nothing() {
    let receiver = Receiver::start();
    let conf = conf_for(
        &receiver,
        &[("retransmit-ms", "50"), ("retransmit-tries", "3")],
    );
    let mut host = Host::start();
    host.load(conf.path());
    let u = uuid(0x304);
    start_call(&mut host, &u, 2);
    host.ok("sleep 1000");
    let dir = stop_keeping_files(receiver);
    host.ok("wait");
    let hangup_started = Instant::now();
    host.ok(&format!("hangup {u}"));
    assert!(
        hangup_started.elapsed() < Duration::from_millis(500),
        "hangup took {:?}",
        hangup_started.elapsed()
    );
    let stats = host.ok(&format!("stats {u}"));
    assert_no_stall(&stats);
    let counters = wait_counter(&mut host, "byes_unacknowledged", 1);
    assert_eq!(counters["frames_sent"], 200, "{counters}");
    assert_eq!(counters["invs_unacknowledged"], 0, "{counters}");
    wait_counter(&mut host, "streams_active", 0);
    let records = records_in(dir.path());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["end_reason"], "shutdown", "{}", records[0]);
    for (d, hz) in [("R", READ_HZ), ("W", WRITE_HZ)] {
        let (_, samples) = direction_wav(&records[0], d);
        let frames = assert_head(d, &samples, hz);
        assert!((35..=60).contains(&frames), "{d}: {frames} frames");
    }
    finish(host);
}

/// RTP mode with the receiver coming up after the first INV: the frames held
/// while waiting for the ACK's ports (rtp-buffer-frames) go out once it
/// comes, in order, and the recording is the whole call.
fn rtp_receiver_late(u: &str) -> (Receiver, Value, Value, Value) {
    let addr = free_addr();
    let conf = conf_for_addr(addr, &[("mode", "rtp"), ("rtp-buffer-frames", "200")]);
    let mut host = Host::start();
    host.load(conf.path());
    start_call(&mut host, u, 2);
    // INV at 0 and 200 ms go to nobody; the one at 600 ms is answered.
    host.ok("sleep 300");
    let receiver = receiver_on(addr);
    host.ok("wait");
    host.ok(&format!("hangup {u}"));
    let record = receiver.record(u);
    let stats = host.ok(&format!("stats {u}"));
    let counters = wait_counter(&mut host, "streams_active", 0);
    finish(host);
    (receiver, record, stats, counters)
}

#[test]
fn rtp_mode_receiver_started_after_the_inv_gets_the_held_frames() {
    let (_receiver, record, stats, counters) = rtp_receiver_late(&uuid(0x305));
    assert_no_stall(&stats);
    assert_eq!(record["mode"], "rtp", "{record}");
    assert_eq!(record["end_reason"], "bye", "{record}");
    assert_eq!(record["caller"], "1001", "{record}");
    for (dir, hz) in [("R", READ_HZ), ("W", WRITE_HZ)] {
        let rtp = &record["directions"][dir]["rtp"];
        for (key, value) in [
            ("expected", 100),
            ("received", 100),
            ("lost", 0),
            ("duplicates", 0),
            ("ssrc_changes", 0),
        ] {
            assert_eq!(rtp[key], value, "{dir} rtp.{key}: {record}");
        }
        let (_, samples) = direction_wav(&record, dir);
        assert_eq!(assert_head(dir, &samples, hz), 100);
    }
    assert_eq!(counters["frames_queued"], 200, "{counters}");
    assert_eq!(counters["frames_dropped_waiting"], 0, "{counters}");
    assert_eq!(counters["invs_unacknowledged"], 0, "{counters}");
    assert_eq!(counters["send_errors"], 0, "{counters}");
}

/// rst_status's frames_sent counts the frames held for the ACK and sent when it
/// comes too (it once missed them: frames_sent < frames_queued with nothing
/// dropped, and the host's `bench` timed out in RTP mode).
#[test]
fn rtp_frames_held_until_the_ack_count_as_sent() {
    let (_receiver, record, _, counters) = rtp_receiver_late(&uuid(0x306));
    let received: u64 = ["R", "W"]
        .iter()
        .map(|d| record["directions"][d]["rtp"]["received"].as_u64().unwrap())
        .sum();
    assert_eq!(received, 200, "{record}");
    assert_eq!(counters["frames_sent"], 200, "{counters}");
}

/// RTP mode, the receiver restarting mid-call on its address: the INV's
/// refresh (`refresh-ms`) gives the new receiver the call, parties included;
/// its ACK brings new RTP ports, and the audio follows them to the end of the
/// call, which the BYE ends there.
#[test]
fn a_restarted_receiver_learns_the_rtp_call_from_the_refreshed_inv() {
    let with_ports = |listen: Option<SocketAddr>, ports: &str| {
        Receiver::with(Settings {
            listen,
            rtp_ports: Some(ports.parse().unwrap()),
            ..Settings::default()
        })
    };
    let first = with_ports(None, "44000-44049");
    let addr = first.addr;
    let conf = conf_for(&first, &[("mode", "rtp"), ("refresh-ms", "300")]);
    let mut host = Host::start();
    host.load(conf.path());
    let u = uuid(0x305);
    start_call(&mut host, &u, 4);
    host.ok("sleep 1500");
    let first_dir = stop_keeping_files(first);
    let second = with_ports(Some(addr), "44050-44099");
    host.ok("wait");
    host.ok(&format!("hangup {u}"));
    let ended = second.record(&u);
    let began = records_in(first_dir.path());
    assert_eq!(began.len(), 1, "{began:?}");
    assert_no_stall(&host.ok(&format!("stats {u}")));
    assert_eq!(began[0]["mode"], "rtp", "{}", began[0]);
    assert_eq!(ended["mode"], "rtp", "{ended}");
    assert_eq!(ended["end_reason"], "bye", "{ended}");
    // Learnt from the refreshed INV, not guessed.
    assert_eq!(ended["caller"], "1001", "{ended}");
    assert_eq!(ended["callee"], "1002", "{ended}");
    for dir in ["R", "W"] {
        let before = began[0]["directions"][dir]["packets"].as_u64().unwrap();
        let after = ended["directions"][dir]["packets"].as_u64().unwrap();
        // 200 frames a direction: 1.5 s before the restart, then at most a
        // refresh interval (and a little) lost, the rest recorded anew.
        assert!((60..=90).contains(&before), "{dir}: {before} before");
        assert!((90..=125).contains(&after), "{dir}: {after} after: {ended}");
    }
    finish(host);
}
