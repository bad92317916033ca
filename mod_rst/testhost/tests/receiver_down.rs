//! The receiver down for part of a call: the module keeps the call going,
//! loses no frame of it, counts what happened, and whatever receiver is
//! listening records what reached it (DATA without INV starts a call there).
//!
//! Every step waits for an event (a counter, audio arriving, an INV seen on a
//! socket), never for time: calls are long and hung up once the receivers have
//! seen what the test needs, so a busy machine changes how much is recorded,
//! never whether the test passes. What a callback costs the media thread is
//! measured by `cargo bench -p mod_rst_testhost --bench callback` (its
//! "receiver down" row), not asserted here.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

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
    wait_for(&format!("rst_status {key} = {value}"), || {
        let counters = counters(host);
        (counters[key] == value).then_some(counters)
    })
}

/// Frames the host's media thread produced for the call, each direction.
fn frames_made(host: &mut Host, u: &str) -> usize {
    let stats = host.ok(&format!("stats {u}"));
    let frames = stats["media"]["read"]["frames"].as_u64().unwrap();
    assert_eq!(stats["media"]["write"]["frames"], frames, "{stats}");
    frames as usize
}

/// Waits until the media thread has made `more` frames beyond `from` and the
/// sender thread has sent every frame made so far: audio that went out while
/// the receiver was (still) down. Returns how many frames that is, each
/// direction. (Frames made but still in the sender's queue would reach a
/// receiver started next.)
fn wait_frames(host: &mut Host, u: &str, from: usize, more: usize) -> usize {
    wait_for(&format!("{more} more frames of {u}, all sent"), || {
        let frames = frames_made(host, u);
        let sent = counters(host)["frames_sent"].as_u64().unwrap_or(0);
        (frames >= from + more && sent >= 2 * frames as u64).then_some(frames)
    })
}

/// Waits until `receiver` has taken `frames` frames (both directions) of audio.
fn wait_audio(receiver: &Receiver, frames: u64) {
    wait_for(&format!("{frames} frames at {}", receiver.addr), || {
        let bytes = receiver.metrics.audio_bytes.load(Relaxed);
        let packets = receiver.metrics.rtp_packets.load(Relaxed);
        (bytes >= frames * 160 || packets >= frames).then_some(())
    });
}

/// The call lost nothing to the receiver's absence inside the module: every
/// frame the media thread made went into the sender's queue, none was dropped
/// there, and each went out (to whoever listened).
fn assert_unhurt(counters: &Value, frames: usize) {
    for (key, value) in [
        ("frames_queued", 2 * frames),
        ("frames_dropped_queue_full", 0),
        ("frames_sent", 2 * frames),
        ("send_errors", 0),
    ] {
        assert_eq!(counters[key], value, "{key}: {counters}");
    }
}

/// Binds `addr` with a bare socket until the module's first INV reaches it,
/// then frees the address: the module is now retransmitting its INV to a
/// receiver that is down.
fn catch_first_inv(addr: SocketAddr, u: &str) {
    let socket = UdpSocket::bind(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let inv = format!("INV :{u}:");
    wait_for("the first INV", || {
        let mut buf = [0u8; 2048];
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        buf[..n].starts_with(inv.as_bytes()).then_some(())
    });
}

/// Stops the call's media and waits for its thread: the frames the host
/// counts as sent are then exactly those the module was given.
fn end_media(host: &mut Host, u: &str) {
    host.ok(&format!("stop_media {u}"));
    host.ok("wait");
}

/// A call long enough for any test here: each is hung up once the receivers
/// have seen what the test needs.
const LONG: u32 = 120;

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

/// Starts the stream and the call's media. That the application does not wait
/// for a receiver is `regressions::original_defect_init_callback_waited_for_the_ack`'s.
fn start_call(host: &mut Host, u: &str, seconds: u32) {
    session(host, u);
    host.ok(&format!("app {u} rst"));
    host.ok(&format!(
        "media {u} {seconds} read_hz={READ_HZ} write_hz={WRITE_HZ}"
    ));
}

/// DATA mode, no receiver at the start: the INV's retransmissions give up, the
/// DATA keeps going (to nobody), and a receiver started after that records the
/// rest of the call, which its first DATA starts, and the BYE ends.
#[test]
fn receiver_started_mid_call_records_the_rest_from_data_without_inv() {
    let addr = free_addr();
    let conf = conf_for_addr(addr, &[("retransmit-ms", "50"), ("retransmit-tries", "3")]);
    let mut host = Host::start();
    host.load(conf.path());
    let u = uuid(0x301);
    start_call(&mut host, &u, LONG);
    wait_counter(&mut host, "invs_unacknowledged", 1);
    let nobody_heard = wait_frames(&mut host, &u, 0, 25);
    let receiver = receiver_on(addr);
    wait_audio(&receiver, 100);
    end_media(&mut host, &u);
    host.ok(&format!("hangup {u}"));
    let record = receiver.record(&u);
    assert_eq!(record["end_reason"], "bye", "{record}");
    // Started by DATA: nobody told the receiver who was calling.
    assert!(record["caller"].is_null(), "{record}");
    assert!(record["callee"].is_null(), "{record}");
    let total = frames_made(&mut host, &u);
    for (dir, hz) in [("R", READ_HZ), ("W", WRITE_HZ)] {
        let (_, samples) = direction_wav(&record, dir);
        let first = assert_tail(&format!("{u} {dir}"), &samples, hz, total);
        assert!(first >= nobody_heard, "{dir}: from frame {first}: {record}");
    }
    let counters = wait_counter(&mut host, "streams_active", 0);
    assert_unhurt(&counters, total);
    for (key, value) in [
        ("streams_started", 1),
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
    // Default backoff: INV at 0, 0.2, 0.6, 1.4, 3.0 s... for about 12 s.
    let conf = conf_for_addr(addr, &[]);
    let mut host = Host::start();
    host.load(conf.path());
    let u = uuid(0x302);
    start_call(&mut host, &u, LONG);
    catch_first_inv(addr, &u);
    let receiver = receiver_on(addr);
    wait_counter(&mut host, "acks_received", 1);
    wait_audio(&receiver, 100);
    end_media(&mut host, &u);
    host.ok(&format!("hangup {u}"));
    let record = receiver.record(&u);
    assert_eq!(record["end_reason"], "bye", "{record}");
    assert_eq!(record["caller"], "1001", "{record}");
    assert_eq!(record["callee"], "1002", "{record}");
    let total = frames_made(&mut host, &u);
    for (dir, hz) in [("R", READ_HZ), ("W", WRITE_HZ)] {
        let (_, samples) = direction_wav(&record, dir);
        assert_tail(&format!("{u} {dir}"), &samples, hz, total);
    }
    let counters = wait_counter(&mut host, "streams_active", 0);
    assert_unhurt(&counters, total);
    assert_eq!(counters["invs_unacknowledged"], 0, "{counters}");
    assert_eq!(counters["byes_unacknowledged"], 0, "{counters}");
    finish(host);
}

/// A receiver that stops mid-call records the beginning (ended as
/// `shutdown`); one started on the same port after some audio went to nobody
/// records the end, started by DATA, ended by the BYE. The call never notices.
#[test]
fn receiver_stopping_mid_call_then_coming_back() {
    let first = Receiver::start();
    let addr = first.addr;
    let conf = conf_for(&first, &[]);
    let mut host = Host::start();
    host.load(conf.path());
    let u = uuid(0x303);
    start_call(&mut host, &u, LONG);
    wait_audio(&first, 200);
    let first_dir = stop_keeping_files(first);
    let stopped_at = frames_made(&mut host, &u);
    let nobody_heard = wait_frames(&mut host, &u, stopped_at, 25);
    let second = receiver_on(addr);
    wait_audio(&second, 200);
    end_media(&mut host, &u);
    host.ok(&format!("hangup {u}"));
    let ended = second.record(&u);
    let began = records_in(first_dir.path());
    assert_eq!(began.len(), 1, "{began:?}");
    let began = &began[0];
    assert_eq!(began["end_reason"], "shutdown", "{began}");
    assert_eq!(began["caller"], "1001", "{began}");
    assert_eq!(ended["end_reason"], "bye", "{ended}");
    assert!(ended["caller"].is_null(), "{ended}");
    let total = frames_made(&mut host, &u);
    for (dir, hz) in [("R", READ_HZ), ("W", WRITE_HZ)] {
        let (_, head) = direction_wav(began, dir);
        let head = assert_head(&format!("{u} {dir}, first receiver"), &head, hz);
        let (_, tail) = direction_wav(&ended, dir);
        let tail_from = assert_tail(&format!("{u} {dir}, second receiver"), &tail, hz, total);
        assert!(
            (50..=stopped_at).contains(&head),
            "{dir}: {head} frames before the stop at {stopped_at}"
        );
        assert!(
            tail_from >= nobody_heard,
            "{dir}: from frame {tail_from}, nobody listened from {stopped_at} to {nobody_heard}"
        );
    }
    let counters = wait_counter(&mut host, "streams_active", 0);
    assert_unhurt(&counters, total);
    assert_eq!(counters["invs_unacknowledged"], 0, "{counters}");
    assert_eq!(counters["byes_unacknowledged"], 0, "{counters}");
    finish(host);
}

/// A receiver that stops mid-call and never comes back: the hangup does not
/// wait for the BYE's answer; its retransmissions give up later and are counted.
#[test]
fn receiver_stopping_mid_call_for_good_costs_the_hangup_nothing() {
    let receiver = Receiver::start();
    // BYE at 0, 2 and 6 s, given up at 14 s: long after any hangup returns.
    let conf = conf_for(
        &receiver,
        &[("retransmit-ms", "2000"), ("retransmit-tries", "3")],
    );
    let mut host = Host::start();
    host.load(conf.path());
    let u = uuid(0x304);
    start_call(&mut host, &u, LONG);
    wait_audio(&receiver, 200);
    let dir = stop_keeping_files(receiver);
    let stopped_at = frames_made(&mut host, &u);
    wait_frames(&mut host, &u, stopped_at, 10);
    end_media(&mut host, &u);
    host.ok(&format!("hangup {u}"));
    // The hangup is back while the BYE is still being retransmitted.
    let counters = counters(&mut host);
    assert_eq!(counters["byes_unacknowledged"], 0, "{counters}");
    let counters = wait_counter(&mut host, "byes_unacknowledged", 1);
    let total = frames_made(&mut host, &u);
    assert_unhurt(&counters, total);
    assert_eq!(counters["invs_unacknowledged"], 0, "{counters}");
    wait_counter(&mut host, "streams_active", 0);
    let records = records_in(dir.path());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["end_reason"], "shutdown", "{}", records[0]);
    for (d, hz) in [("R", READ_HZ), ("W", WRITE_HZ)] {
        let (_, samples) = direction_wav(&records[0], d);
        let frames = assert_head(d, &samples, hz);
        assert!(
            (50..=stopped_at).contains(&frames),
            "{d}: {frames} frames, stopped at {stopped_at}"
        );
    }
    finish(host);
}

/// RTP mode with the receiver coming up after the first INV: the frames held
/// while waiting for the ACK's ports (rtp-buffer-frames, here the whole
/// 2 s call) go out once it comes, in order, and the recording is the whole call.
fn rtp_receiver_late(u: &str) -> (Receiver, Value, Value) {
    let addr = free_addr();
    let conf = conf_for_addr(addr, &[("mode", "rtp"), ("rtp-buffer-frames", "200")]);
    let mut host = Host::start();
    host.load(conf.path());
    start_call(&mut host, u, 2);
    catch_first_inv(addr, u);
    let receiver = receiver_on(addr);
    wait_counter(&mut host, "acks_received", 1);
    host.ok("wait");
    host.ok(&format!("hangup {u}"));
    let record = receiver.record(u);
    let counters = wait_counter(&mut host, "streams_active", 0);
    finish(host);
    (receiver, record, counters)
}

#[test]
fn rtp_mode_receiver_started_after_the_inv_gets_the_held_frames() {
    let (_receiver, record, counters) = rtp_receiver_late(&uuid(0x305));
    assert_unhurt(&counters, 100);
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
    assert_eq!(counters["frames_dropped_waiting"], 0, "{counters}");
    assert_eq!(counters["invs_unacknowledged"], 0, "{counters}");
}

/// rst_status's frames_sent counts the frames held for the ACK and sent when it
/// comes too (it once missed them: frames_sent < frames_queued with nothing
/// dropped, and the host's `bench` timed out in RTP mode).
#[test]
fn rtp_frames_held_until_the_ack_count_as_sent() {
    let (_receiver, record, counters) = rtp_receiver_late(&uuid(0x306));
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
    let u = uuid(0x307);
    start_call(&mut host, &u, LONG);
    wait_audio(&first, 200);
    let first_dir = stop_keeping_files(first);
    let second = with_ports(Some(addr), "44050-44099");
    wait_audio(&second, 200);
    end_media(&mut host, &u);
    host.ok(&format!("hangup {u}"));
    let ended = second.record(&u);
    let began = records_in(first_dir.path());
    assert_eq!(began.len(), 1, "{began:?}");
    assert_eq!(began[0]["mode"], "rtp", "{}", began[0]);
    assert_eq!(ended["mode"], "rtp", "{ended}");
    assert_eq!(ended["end_reason"], "bye", "{ended}");
    // Learnt from the refreshed INV, not guessed.
    assert_eq!(ended["caller"], "1001", "{ended}");
    assert_eq!(ended["callee"], "1002", "{ended}");
    let total = frames_made(&mut host, &u) as u64;
    for dir in ["R", "W"] {
        let before = began[0]["directions"][dir]["packets"].as_u64().unwrap();
        let after = ended["directions"][dir]["packets"].as_u64().unwrap();
        // Each receiver has its part; what went out between the two is lost.
        assert!(before >= 25, "{dir}: {before} before: {}", began[0]);
        assert!(after >= 25, "{dir}: {after} after: {ended}");
        assert!(
            before + after <= total,
            "{dir}: {before} + {after} of {total}"
        );
    }
    let counters = wait_counter(&mut host, "streams_active", 0);
    assert_unhurt(&counters, total as usize);
    finish(host);
}
