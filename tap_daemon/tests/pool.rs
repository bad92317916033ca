//! A pool of three real receivers (udp_server on 127.0.0.1): calls spread
//! over them by their UUIDs; one receiver goes away mid-call and its calls
//! fail over to their next receiver; `assemble` joins each call's parts
//! with at most two seconds missing around the failure; the receiver back
//! on its address gets new calls again.

mod control_support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rst_proto::rtp::RtpPacket;
use rst_proto::{Direction, Pool};
use rst_test_support::wait_for;
use tap_daemon::output::{OutputConfig, UdpOutput};
use tap_daemon::pipeline::{CallStart, Output};
use tap_daemon::sip::CallKey;

fn receiver(listen: SocketAddr, dir: &std::path::Path, rtp_ports: &str) -> udp_server::Running {
    let settings = udp_server::Settings {
        listen: Some(listen),
        record_dir: Some(dir.to_owned()),
        rtp_ports: Some(rtp_ports.parse().unwrap()),
        ..udp_server::Settings::default()
    };
    udp_server::Running::start(settings.resolve().unwrap()).unwrap()
}

fn start(output: &mut UdpOutput, key: CallKey) {
    output.call_started(&CallStart {
        key,
        call_id: Some(key.as_str().to_owned()),
        caller: "1001".into(),
        callee: "1002".into(),
        payload_types: Vec::new(),
        fax: false,
        at: Duration::ZERO,
        clock_rate: 8000,
    });
}

/// `frames` 20 ms PCMU packets of both directions for each call, in real
/// time, from frame `first` on (a constant, loud payload: silence in the
/// recording is loss).
fn talk(output: &mut UdpOutput, keys: &[CallKey], first: u32, frames: u32) {
    let began = Instant::now();
    for f in 0..frames {
        let due = began + Duration::from_millis(20 * u64::from(f));
        while Instant::now() < due {
            output.service();
            std::thread::sleep(Duration::from_millis(2));
        }
        for (n, key) in keys.iter().enumerate() {
            for direction in [Direction::Read, Direction::Write] {
                let mut packet = Vec::new();
                let seq = first + f;
                RtpPacket {
                    marker: false,
                    payload_type: 0,
                    sequence: seq as u16,
                    timestamp: seq * 160,
                    ssrc: 0x1000 + n as u32 * 2 + direction as u32,
                    payload: &[0x10; 160],
                }
                .encode(&mut packet);
                output.rtp(*key, direction, &packet, Duration::ZERO);
            }
        }
        output.service();
    }
}

#[test]
fn a_receiver_lost_mid_call_costs_each_call_at_most_two_seconds() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let ports = ["44000-44099", "44100-44199", "44200-44299"];
    let mut running: Vec<Option<udp_server::Running>> = (0..3)
        .map(|i| Some(receiver(any, dirs[i].path(), ports[i])))
        .collect();
    let addrs: Vec<SocketAddr> = running.iter().map(|r| r.as_ref().unwrap().addr()).collect();
    let pool = Pool::new(addrs.clone()).unwrap();
    let mut config = OutputConfig::new(addrs[0], false);
    config.pool = Some(pool.clone());
    config.failover = Duration::from_millis(300);
    let mut output = UdpOutput::new(config).unwrap();

    let keys: Vec<CallKey> = (0..12)
        .map(|n| CallKey::from_call_id(&format!("pool-{n}@example.org")))
        .collect();
    let first_choice = |key: &CallKey| pool.order(key.as_str()).next().unwrap();
    // The receiver that goes away: the one with the most calls.
    let victim = (0..3)
        .max_by_key(|&i| keys.iter().filter(|k| first_choice(k) == addrs[i]).count())
        .unwrap();
    let moved = keys
        .iter()
        .filter(|k| first_choice(k) == addrs[victim])
        .count();
    assert!(moved > 0);
    for key in &keys {
        start(&mut output, *key);
    }
    talk(&mut output, &keys, 0, 50);
    running[victim].take().unwrap().stop().unwrap();
    talk(&mut output, &keys, 50, 150);
    for key in &keys {
        output.call_ended(*key);
    }
    output.close(Duration::from_secs(5));
    assert_eq!(
        output.stats().failovers,
        moved as u64,
        "{:?}",
        output.stats()
    );
    let down: Vec<_> = output.stats().receivers.iter().filter(|r| !r.up).collect();
    assert_eq!(down.len(), 1, "{:?}", output.stats().receivers);
    assert_eq!(down[0].address, addrs[victim]);

    let survivors: usize = keys.len() + moved;
    wait_for("every part's record", || {
        let n: usize = dirs
            .iter()
            .map(|d| control_support::records_in(d.path()).len())
            .sum();
        (n >= survivors).then_some(())
    });
    let from: Vec<PathBuf> = dirs.iter().map(|d| d.path().to_owned()).collect();
    for key in &keys {
        let out = tempfile::tempdir().unwrap();
        let assembled = udp_server::assemble::assemble(key.as_str(), &from, out.path()).unwrap();
        let was_moved = first_choice(key) == addrs[victim];
        assert_eq!(
            assembled.parts.len(),
            1 + usize::from(was_moved),
            "{assembled:?}"
        );
        for direction in ["R", "W"] {
            let joined = &assembled.directions[direction];
            let samples: Vec<i16> = hound::WavReader::open(&joined.wav)
                .unwrap()
                .into_samples::<i16>()
                .map(Result::unwrap)
                .collect();
            let silent = samples.iter().filter(|s| **s == 0).count();
            // 200 frames sent; the last few may still be in the jitter buffer's hold.
            assert!(
                samples.len() >= 190 * 160,
                "{key:?} {direction}: {}",
                samples.len()
            );
            let limit = if was_moved { 16_000 } else { 160 * 5 };
            assert!(
                silent <= limit,
                "{key:?} {direction}: {silent} samples lost: {assembled:?}"
            );
        }
    }

    // The receiver back on its address gets new calls again.
    let back_dir = tempfile::tempdir().unwrap();
    let _back = receiver(addrs[victim], back_dir.path(), "44300-44399");
    let mut m = 0u32;
    wait_for("a new call at the receiver that came back", || {
        let key = loop {
            m += 1;
            let key = CallKey::from_call_id(&format!("again-{m}@example.org"));
            if first_choice(&key) == addrs[victim] {
                break key;
            }
        };
        start(&mut output, key);
        talk(&mut output, &[key], 0, 5);
        output.call_ended(key);
        output.close(Duration::from_secs(2));
        (!control_support::records_in(back_dir.path()).is_empty()).then_some(())
    });
    for r in running.iter_mut().flatten() {
        r.stop().unwrap();
    }
}
