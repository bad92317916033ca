//! The load generator against the bare counting receiver over real UDP on
//! 127.0.0.1: what it reports sending must be what the receiver counted.

use std::time::Duration;

use rst_load::ceiling::{Options, Receiver};
use rst_load::{Codec, Config};

fn receiver(ack: bool) -> Receiver {
    Receiver::bind("127.0.0.1:0".parse().unwrap(), Options { ack }).unwrap()
}

#[test]
fn real_time_calls_are_counted_and_acknowledged() {
    let receiver = receiver(true);
    let calls = 20;
    let frames = 25; // 0.5 s of audio
    let config = Config {
        target: receiver.local_addr(),
        calls,
        frames: Some(frames),
        codec: Codec::Pcma,
        ..Config::default()
    };
    let report = rst_load::run(&config).unwrap();
    let counts = receiver.stop().unwrap();

    let calls = calls as u64;
    assert_eq!(report.calls, calls);
    assert_eq!(report.data_sent, calls * 2 * frames, "{report}");
    assert_eq!(
        (report.inv_acked, report.bye_acked),
        (calls, calls),
        "{report}"
    );
    assert_eq!(report.lost(), 0, "{report}");
    assert_eq!(report.send_errors, 0, "{report}");

    assert_eq!(counts.inv, report.inv_sent, "{report}\n{counts:?}");
    assert_eq!(counts.data, report.data_sent, "{report}\n{counts:?}");
    assert_eq!(counts.bye, report.bye_sent, "{report}\n{counts:?}");
    assert_eq!(counts.other + counts.ack, 0);
    assert_eq!(counts.datagrams, report.datagrams_sent());
    assert_eq!(
        counts.acks_sent, report.acks_received,
        "{report}\n{counts:?}"
    );
    // PCMA frames: 51-byte header + 160 bytes.
    assert!(counts.bytes > report.data_sent * 211);
    // Real time: 25 frames 20 ms apart take about half a second.
    assert!(
        report.data_elapsed >= Duration::from_millis(460),
        "{report}"
    );
}

#[test]
fn fast_mode_respects_the_rate_cap_and_counts_match() {
    let receiver = receiver(true);
    let config = Config {
        target: receiver.local_addr(),
        calls: 10,
        duration: Duration::from_millis(500),
        fast: true,
        rate: Some(20_000),
        codec: Codec::L16,
        ..Config::default()
    };
    let report = rst_load::run(&config).unwrap();
    let counts = receiver.stop().unwrap();

    assert_eq!(report.lost(), 0, "{report}");
    assert_eq!((report.inv_acked, report.bye_acked), (10, 10), "{report}");
    assert_eq!(counts.data, report.data_sent, "{report}\n{counts:?}");
    assert_eq!(counts.inv, report.inv_sent);
    assert_eq!(counts.bye, report.bye_sent);
    // About 0.5 s at 20 000/s, never much faster than the cap.
    assert!(report.data_sent > 5_000, "{report}");
    assert!(report.data_rate() < 22_000.0, "{report}");
    // L16: 51-byte header + 320 bytes.
    assert!(counts.bytes >= report.data_sent * 371);
}

#[test]
fn unanswered_inv_and_bye_are_retransmitted_then_counted_lost() {
    let receiver = receiver(false);
    let config = Config {
        target: receiver.local_addr(),
        calls: 3,
        frames: Some(2),
        rto: Duration::from_millis(20),
        retries: 2,
        ..Config::default()
    };
    let report = rst_load::run(&config).unwrap();
    let counts = receiver.stop().unwrap();

    assert_eq!((report.inv_acked, report.bye_acked), (0, 0), "{report}");
    assert_eq!((report.inv_lost, report.bye_lost), (3, 3), "{report}");
    // Each sent once and retransmitted twice.
    assert_eq!((report.inv_sent, report.bye_sent), (9, 9), "{report}");
    assert_eq!((report.inv_retransmits, report.bye_retransmits), (6, 6));
    assert_eq!((counts.inv, counts.bye, counts.data), (9, 9, 12));
    // Backoff 20 + 40 + 80 ms for the INV, then the same for the BYE.
    assert!(report.elapsed >= Duration::from_millis(280), "{report}");
}

#[test]
fn blaster_datagrams_reach_the_counting_receiver() {
    let receiver = receiver(false);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let blast = rst_load::ceiling::blast(
        receiver.local_addr(),
        180,
        Duration::from_millis(200),
        &stop,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let counts = receiver.stop().unwrap();
    assert!(blast.sent > 0);
    // Loopback may drop when the receiver falls behind, never invent.
    assert!(
        counts.data <= blast.sent && counts.data > 0,
        "{blast:?} {counts:?}"
    );
    assert_eq!(counts.bytes, counts.data * 180);
}
