//! 200 simulated calls at once through mod_rst to a real udp_server. In its own
//! test binary so that it does not share the two cores with the other tests.

mod common;

use common::*;

const CALLS: u32 = 200;

/// Then the same calls with their audio gathered three frames to a
/// datagram, started at once: the sender, waking every 60 ms then, must not
/// let the burst fill its queue (it wakes sooner when half of it would fill
/// at the last rate). One after the other, not 400 calls at once.
#[test]
fn two_hundred_concurrent_calls() {
    two_hundred_calls(1, 1000);
    two_hundred_calls(3, 2000);
}

/// `CALLS` calls from UUID number `first` on, three seconds of audio each,
/// `frames_per_datagram` frames to a DATA datagram.
fn two_hundred_calls(frames_per_datagram: u32, first: u32) {
    let receiver = ExternalReceiver::start();
    let frames = frames_per_datagram.to_string();
    let conf = conf_for_addr(receiver.addr, &[("frames-per-datagram", &frames)]);
    let mut host = Host::start();
    host.load(conf.path());
    let calls: Vec<String> = (first..first + CALLS).map(uuid).collect();
    for u in &calls {
        session(&mut host, u);
        host.ok(&format!("app {u} rst"));
    }
    for u in &calls {
        host.ok(&format!(
            "media {u} 3 read_hz={READ_HZ} write_hz={WRITE_HZ}"
        ));
    }
    host.ok("wait");
    for u in &calls {
        host.ok(&format!("hangup {u}"));
    }
    let summary = host.ok("summary");
    eprintln!(
        "200 calls, {frames_per_datagram} frames a datagram, callbacks: {}",
        summary["callbacks"]
    );
    // The module's side, exactly: every frame the host gave it was queued
    // and sent (once every stream closed: the sender thread may still be
    // sending when the hangups return), none dropped.
    let counters = wait_for("every stream closed", || {
        let status = host.ok("api rst_status");
        let counters: serde_json::Value =
            serde_json::from_str(status["output"].as_str()?.trim()).ok()?;
        (counters["streams_active"] == 0).then_some(counters)
    });
    eprintln!("rst_status: {counters}");
    assert_eq!(counters["frames_sent"], 2 * 150 * CALLS, "{counters}");
    assert_eq!(
        counters["datagrams_sent"],
        2 * (150 / frames_per_datagram) * CALLS,
        "{counters}"
    );
    assert_eq!(counters["frames_dropped_queue_full"], 0, "{counters}");
    assert_eq!(counters["send_errors"], 0, "{counters}");
    // The module's own sample of what its callbacks cost: counted in runs of
    // CALLBACK_SAMPLE (64), one timed a run; short of the host's count only
    // by each call's unfinished run (the CLOSE callback is not counted).
    let hosted = summary["callbacks"]["count"].as_u64().unwrap();
    let counted = counters["callbacks"].as_u64().unwrap();
    let timed = counters["callbacks_timed"].as_u64().unwrap();
    let preempted = counters["callbacks_preempted"].as_u64().unwrap();
    assert_eq!(counted, 64 * (timed + preempted), "{counters}");
    assert!(
        counted <= hosted && hosted - counted < 64 * u64::from(CALLS) + u64::from(CALLS),
        "{counted} counted of {hosted} callbacks: {counters}"
    );
    assert!(
        timed > 0 && counters["callback_ns_timed"].as_u64().unwrap() > 0,
        "{counters}"
    );
    let records = receiver.wait_records(CALLS as usize);
    let expected_r = heard("PCMU", &tone(READ_HZ, 8000.0, 8000, 0, 24000));
    let expected_w = heard("PCMU", &tone(WRITE_HZ, 8000.0, 8000, 0, 24000));
    let mut lost = 0;
    for record in &records {
        assert_eq!(record["end_reason"], "bye", "{record}");
        for (dir, expected) in [("R", &expected_r), ("W", &expected_w)] {
            let (_, samples) = direction_wav(record, dir);
            let what = format!("{} {dir}", record["uuid"]);
            lost += 150 - in_order_frames(&what, &samples, expected, 160);
        }
    }
    // UDP has no flow control: on a loaded two-core machine the receiver's
    // socket buffer overflows. Every frame that arrived must be exact and in
    // order; the loss is reported, and must be zero with RST_STRICT_LOAD=1.
    eprintln!(
        "200 calls: {lost} of {} frames lost on the way to the receiver",
        2 * 150 * CALLS
    );
    if std::env::var_os("RST_STRICT_LOAD").is_some() {
        assert_eq!(lost, 0);
    }
    // What a callback costs the media thread is the callback bench's figure;
    // on a quiet machine, RST_STRICT_LOAD=1 also holds it to a frame time here.
    if std::env::var_os("RST_STRICT_LOAD").is_some() {
        let max_ns = summary["callbacks"]["max_ns"].as_u64().unwrap();
        assert!(
            max_ns < 20_000_000,
            "a callback took {max_ns} ns: {summary}"
        );
    }
    finish(host);
}

/// Checks that `samples` is whole frames of `expected`, in order, some perhaps
/// missing; returns how many arrived.
fn in_order_frames(what: &str, samples: &[i16], expected: &[i16], frame: usize) -> usize {
    assert_eq!(samples.len() % frame, 0, "{what}: not whole frames");
    let mut next = 0;
    for (n, got) in samples.chunks(frame).enumerate() {
        let found = (next..expected.len() / frame)
            .find(|&k| &expected[k * frame..(k + 1) * frame] == got)
            .unwrap_or_else(|| panic!("{what}: frame {n} is not a later frame of the tone"));
        next = found + 1;
    }
    samples.len() / frame
}
