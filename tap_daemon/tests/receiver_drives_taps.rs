//! The receiver (udp_server) as the taps' client, over loopback with real
//! sockets: from its configuration it finds a tap (by address or by
//! discovery), configures it to send here, starts it, records what the tap
//! captures (a real capture file the tap replays), reconnects when the tap
//! restarts, and stops the tap when the receiver stops. A wrong secret and a
//! second receiver racing for the same tap are refused without harm.

mod control_support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use control_support::{captures, ok, wait_records_in, Client, Tap, SECRET};
use rst_control::control::Secret;
use rst_test_support::wait_for;
use serde_json::Value;
use tap_daemon::config::Settings;
use udp_server::taps::TapSpec;

fn file_tap(capture: &str, control: Option<SocketAddr>, name: &str) -> Option<Tap> {
    let path = captures().join(capture);
    if !path.exists() {
        println!("SKIPPED: {} is missing", path.display());
        return None;
    }
    Some(Tap::start(Settings {
        pcap: Some(path),
        control_listen: control,
        name: Some(name.to_owned()),
        ..Settings::default()
    }))
}

/// A receiver on 127.0.0.1 driving `taps`, recording into `dir`.
fn receiver(
    dir: &Path,
    rtp_ports: &str,
    taps: Vec<TapSpec>,
    discovery: Option<SocketAddr>,
) -> udp_server::Running {
    let settings = udp_server::Settings {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        record_dir: Some(dir.to_owned()),
        rtp_ports: Some(rtp_ports.parse().unwrap()),
        tap: taps,
        tap_discovery: discovery,
        tap_poll_interval: Some(1),
        ..udp_server::Settings::default()
    };
    udp_server::Running::start(settings.resolve().unwrap()).unwrap()
}

fn tap_at(address: SocketAddr, secret: &str) -> TapSpec {
    TapSpec {
        address: Some(address.to_string()),
        secret: Some(Secret(secret.to_owned())),
        ..TapSpec::default()
    }
}

/// The tap's status as an observer sees it.
fn status(tap: &Tap) -> Value {
    let mut client = Client::connect(tap.control);
    ok(client.hello(SECRET));
    let status = ok(client.ask(r#"{"cmd":"status"}"#));
    ok(client.ask(r#"{"cmd":"close"}"#));
    status
}

fn call_ids(records: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = records
        .iter()
        .map(|r| r["call_id"].as_str().unwrap_or("?").to_owned())
        .collect();
    ids.sort();
    ids
}

#[test]
fn the_receiver_drives_a_tap_and_takes_it_back_after_a_restart() {
    // Both captures first, so that a missing one skips the whole test.
    if !captures().join("sip-rtp-g711.pcap").exists() {
        println!("SKIPPED: sip-rtp-g711.pcap is missing");
        return;
    }
    let Some(first) = file_tap("sip-rtp-g722.pcap", None, "restarting-tap") else {
        return;
    };
    let control = first.control;
    let dir = tempfile::tempdir().unwrap();
    let mut running = receiver(
        dir.path(),
        "43000-43099",
        vec![tap_at(control, SECRET)],
        None,
    );
    // The seed's sequence, driven by the receiver: the tap's one call arrives.
    let records = wait_records_in(dir.path(), 1, Duration::from_secs(20));
    assert_eq!(call_ids(&records), ["1-2161@10.0.2.20"], "{records:?}");
    assert_eq!(records[0]["end_reason"], "bye");
    assert_eq!(records[0]["directions"]["W"]["packets"], 425);
    let seen = status(&first);
    assert_eq!(
        seen["config"]["receiver"],
        running.addr().to_string(),
        "configured to send to the receiver: {seen}"
    );
    // The receiver's link holds the control (the observer asking is the other client).
    assert!(seen["controller"].is_string(), "{seen}");
    assert_eq!(seen["clients"], 2, "{seen}");
    assert_eq!(running.metrics().taps_running.load(Ordering::Relaxed), 1);

    // The tap restarts (same control port, another capture): the receiver
    // notices at its next status request, connects again, configures and
    // starts it, and records the new tap's calls.
    drop(first);
    let Some(second) = file_tap("sip-rtp-g711.pcap", Some(control), "restarting-tap") else {
        return;
    };
    let records = wait_records_in(dir.path(), 3, Duration::from_secs(30));
    assert_eq!(
        call_ids(&records),
        ["1-1966@10.0.2.20", "1-1968@10.0.2.20", "1-2161@10.0.2.20"],
        "{records:?}"
    );
    assert!(running.metrics().tap_link_failures.load(Ordering::Relaxed) >= 1);
    wait_for("the link up again", || {
        (running.metrics().taps_running.load(Ordering::Relaxed) == 1).then_some(())
    });
    let metrics = running.metrics().render();
    assert!(metrics.contains("rst_taps_running 1"), "{metrics}");

    // The receiver stops: it stops the tap and lets go of it.
    running.stop().unwrap();
    let seen = status(&second);
    assert_eq!(seen["state"], "stopped", "{seen}");
    // The receiver let go: this status request is the tap's only client.
    assert_eq!(seen["clients"], 1, "{seen}");
}

#[test]
fn a_tap_named_in_the_config_is_found_by_discovery() {
    let Some(tap) = file_tap("sip-rtp-g722.pcap", None, "tap-by-name") else {
        return;
    };
    // Loopback stands in for the broadcast domain; the tap listens on an
    // ephemeral discovery port (the broadcast variant between network
    // namespaces is control_netns.rs's).
    let discovery = SocketAddr::from(([127, 0, 0, 1], tap.discovery.port()));
    let found = rst_tap_client::discover(discovery, Duration::from_millis(500)).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].here.name, "tap-by-name");
    assert_eq!(found[0].control, tap.control);

    let dir = tempfile::tempdir().unwrap();
    let spec = TapSpec {
        secret: Some(Secret(SECRET.into())),
        ..("name=tap-by-name".parse().unwrap())
    };
    let running = receiver(dir.path(), "43100-43199", vec![spec], Some(discovery));
    let records = wait_records_in(dir.path(), 1, Duration::from_secs(20));
    assert_eq!(call_ids(&records), ["1-2161@10.0.2.20"]);
    // `udp_server taps status` says who sends where.
    let config = running_config(discovery);
    let line = udp_server::taps::status(&config.taps.links[0], discovery).unwrap();
    assert!(
        line.contains(&format!("receiver {}", running.addr())),
        "{line}"
    );
    assert!(line.contains(&tap.control.to_string()), "{line}");
}

fn running_config(discovery: SocketAddr) -> udp_server::Config {
    udp_server::Settings {
        tap: vec![TapSpec {
            secret: Some(Secret(SECRET.into())),
            ..("name=tap-by-name".parse().unwrap())
        }],
        tap_discovery: Some(discovery),
        ..udp_server::Settings::default()
    }
    .resolve()
    .unwrap()
}

#[test]
fn a_wrong_secret_records_nothing_and_a_second_receiver_only_waits() {
    let Some(tap) = file_tap("sip-rtp-g722.pcap", None, "contested-tap") else {
        return;
    };
    // A receiver with the wrong secret: refused, counted, retried with a
    // pause; the tap counts the failures and nothing is recorded.
    let wrong_dir = tempfile::tempdir().unwrap();
    let mut wrong = receiver(
        wrong_dir.path(),
        "43200-43299",
        vec![tap_at(tap.control, "not the secret")],
        None,
    );
    wait_for("the refusal counted", || {
        (wrong.metrics().tap_link_failures.load(Ordering::Relaxed) >= 1).then_some(())
    });
    assert_eq!(wrong.metrics().taps_running.load(Ordering::Relaxed), 0);
    let seen = status(&tap);
    assert!(
        seen["plane"]["auth_failures"].as_u64().unwrap() >= 1,
        "{seen}"
    );
    assert_eq!(seen["state"], "stopped", "{seen}");

    // The right receiver takes the tap; a second one with the right secret
    // finds it controlled and only waits.
    let dir = tempfile::tempdir().unwrap();
    let first = receiver(
        dir.path(),
        "43300-43399",
        vec![tap_at(tap.control, SECRET)],
        None,
    );
    wait_for("the first receiver to run the tap", || {
        (first.metrics().taps_running.load(Ordering::Relaxed) == 1).then_some(())
    });
    let second_dir = tempfile::tempdir().unwrap();
    let second = receiver(
        second_dir.path(),
        "43400-43499",
        vec![tap_at(tap.control, SECRET)],
        None,
    );
    wait_for("the second receiver to be turned away", || {
        (second.metrics().tap_link_failures.load(Ordering::Relaxed) >= 1).then_some(())
    });
    assert_eq!(second.metrics().taps_running.load(Ordering::Relaxed), 0);
    let records = wait_records_in(dir.path(), 1, Duration::from_secs(20));
    assert_eq!(call_ids(&records), ["1-2161@10.0.2.20"]);
    // A receiver in its pause between attempts still stops at once.
    let stopping = Instant::now();
    wrong.stop().unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "stop waited {:?}",
        stopping.elapsed()
    );
    assert!(control_support::records_in(wrong_dir.path()).is_empty());
    assert!(control_support::records_in(second_dir.path()).is_empty());
}
