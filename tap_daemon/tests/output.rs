//! The daemon's output into a real receiver (udp_server on 127.0.0.1) over
//! time, with each call's INV refreshed: a call that goes quiet for longer
//! than the receiver's idle timeout (on hold, with SIP still up) stays one
//! call, and a receiver that restarts mid-call takes the call up again.

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
        output.rtp(key, Direction::Read, &packet, Duration::ZERO);
        output.service();
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A call that talks, is quiet for 2.5 s (the receiver's idle timeout is
/// 1 s), talks again and ends; returns its records.
fn call_with_a_pause(refresh: Duration, rtp_ports: &str) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let mut running = receiver(dir.path(), rtp_ports);
    let mut config = OutputConfig::new(running.addr(), false);
    config.refresh = refresh;
    let mut output = UdpOutput::new(config).unwrap();
    let key = CallKey::from_call_id("on-hold@example.org");
    output.call_started(&CallStart {
        key,
        call_id: Some("on-hold@example.org".into()),
        caller: "1001".into(),
        callee: "1002".into(),
        payload_types: Vec::new(),
        fax: false,
        at: Duration::ZERO,
        clock_rate: 8000,
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
fn a_quiet_call_is_kept_past_the_receivers_idle_timeout() {
    let records = call_with_a_pause(Duration::from_millis(300), "43600-43699");
    assert_eq!(records.len(), 1, "one call: {records:?}");
    let record = &records[0];
    assert_eq!(record["end_reason"], "bye", "{record}");
    assert_eq!(record["directions"]["R"]["packets"], 20, "{record}");
}

/// The same call without the refresh: the receiver ends it during the
/// pause, so the refresh above is what kept it.
#[test]
fn without_the_refresh_the_receiver_ends_the_quiet_call() {
    let records = call_with_a_pause(Duration::from_secs(3600), "43700-43799");
    let first = records
        .iter()
        .find(|r| r["directions"]["R"]["packets"] == 10)
        .unwrap_or_else(|| panic!("{records:?}"));
    assert_eq!(first["end_reason"], "timeout", "{first}");
}

/// The receiver restarts mid-call (same address, new process state): the
/// next refresh gives it the call again, its ACK new RTP ports, and the rest
/// of the call is recorded there and ends with the BYE.
#[test]
fn a_restarted_receiver_takes_the_call_in_progress_up_again() {
    let first_dir = tempfile::tempdir().unwrap();
    let mut first = receiver(first_dir.path(), "43800-43849");
    let addr = first.addr();
    let mut config = OutputConfig::new(addr, false);
    config.refresh = Duration::from_millis(300);
    let mut output = UdpOutput::new(config).unwrap();
    let key = CallKey::from_call_id("restart@example.org");
    output.call_started(&CallStart {
        key,
        call_id: Some("restart@example.org".into()),
        caller: "1001".into(),
        callee: "1002".into(),
        payload_types: Vec::new(),
        fax: false,
        at: Duration::ZERO,
        clock_rate: 8000,
    });
    quiet(&mut output, Duration::from_millis(100));
    talk(&mut output, key, 1);
    first.stop().unwrap();

    // Another range of RTP ports: the new receiver's differ from the old.
    let second_dir = tempfile::tempdir().unwrap();
    let settings = udp_server::Settings {
        listen: Some(addr),
        record_dir: Some(second_dir.path().to_owned()),
        rtp_ports: Some("43850-43899".parse().unwrap()),
        ..udp_server::Settings::default()
    };
    let mut second = udp_server::Running::start(settings.resolve().unwrap()).unwrap();
    quiet(&mut output, Duration::from_millis(700));
    talk(&mut output, key, 11);
    output.call_ended(key);
    output.close(Duration::from_secs(2));
    second.stop().unwrap();

    let before = control_support::records_in(first_dir.path());
    assert_eq!(before.len(), 1);
    assert_eq!(before[0]["directions"]["R"]["packets"], 10, "{}", before[0]);
    let after = control_support::records_in(second_dir.path());
    assert_eq!(after.len(), 1, "{after:?}");
    let record = &after[0];
    assert_eq!(record["uuid"], before[0]["uuid"], "the same call");
    assert_eq!(record["caller"], "1001");
    assert_eq!(record["end_reason"], "bye", "{record}");
    assert_eq!(record["directions"]["R"]["packets"], 10, "{record}");
}
