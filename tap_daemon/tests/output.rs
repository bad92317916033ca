//! The daemon's output into a real receiver (udp_server on 127.0.0.1) over
//! time: a call that goes quiet for longer than the receiver's idle timeout
//! (on hold, with SIP still up) is kept alive by the repeated INV, and its
//! audio after the pause is recorded in the same call.

mod control_support;

use std::time::{Duration, Instant};

use rst_proto::rtp::RtpPacket;
use rst_proto::Direction;
use tap_daemon::output::{OutputConfig, UdpOutput};
use tap_daemon::pipeline::{CallStart, Output};
use tap_daemon::sip::CallKey;

fn receiver(dir: &std::path::Path, rtp_ports: &str) -> udp_server::Running {
    let settings = udp_server::Settings {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        record_dir: Some(dir.to_owned()),
        rtp_ports: Some(rtp_ports.parse().unwrap()),
        idle_timeout: Some(1),
        ..udp_server::Settings::default()
    };
    udp_server::Running::start(settings.resolve().unwrap()).unwrap()
}

/// Services `output` for `pause` as the capture loop does when no packet comes.
fn quiet(output: &mut UdpOutput, pause: Duration) {
    let until = Instant::now() + pause;
    while Instant::now() < until {
        output.service();
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ten PCMU packets, 20 ms apart on the RTP clock, from `first_seq`.
fn talk(output: &mut UdpOutput, key: CallKey, first_seq: u16) {
    for i in 0..10u16 {
        let mut packet = Vec::new();
        RtpPacket {
            marker: false,
            payload_type: 0,
            sequence: first_seq + i,
            timestamp: u32::from(first_seq + i) * 160,
            ssrc: 0x1234,
            payload: &[0xFF; 160],
        }
        .encode(&mut packet);
        output.rtp(key, Direction::Read, &packet);
        output.service();
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A call that talks, is quiet for 2.5 s (the receiver's idle timeout is
/// 1 s), talks again and ends; returns its records.
fn call_with_a_pause(keepalive: Duration, rtp_ports: &str) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let mut running = receiver(dir.path(), rtp_ports);
    let mut config = OutputConfig::new(running.addr(), false);
    config.keepalive = keepalive;
    let mut output = UdpOutput::new(config).unwrap();
    let key = CallKey::from_call_id("on-hold@example.org");
    output.call_started(&CallStart {
        key,
        call_id: Some("on-hold@example.org".into()),
        caller: "1001".into(),
        callee: "1002".into(),
        payload_types: Vec::new(),
        at: Duration::ZERO,
    });
    quiet(&mut output, Duration::from_millis(100));
    talk(&mut output, key, 1);
    quiet(&mut output, Duration::from_millis(2500));
    talk(&mut output, key, 11);
    output.call_ended(key);
    output.close(Duration::from_secs(2));
    running.stop().unwrap();
    control_support::records_in(dir.path())
}

#[test]
fn a_quiet_call_is_kept_alive_past_the_receivers_idle_timeout() {
    let records = call_with_a_pause(Duration::from_millis(300), "43600-43699");
    assert_eq!(records.len(), 1, "one call: {records:?}");
    let record = &records[0];
    assert_eq!(record["end_reason"], "bye", "{record}");
    assert_eq!(record["directions"]["R"]["packets"], 20, "{record}");
}

/// The same call without the keepalive: the receiver ends it during the
/// pause, so the keepalive above is what kept it.
#[test]
fn without_the_keepalive_the_receiver_ends_the_quiet_call() {
    let records = call_with_a_pause(Duration::from_secs(3600), "43700-43799");
    let first = records
        .iter()
        .find(|r| r["directions"]["R"]["packets"] == 10)
        .unwrap_or_else(|| panic!("{records:?}"));
    assert_eq!(first["end_reason"], "timeout", "{first}");
}
