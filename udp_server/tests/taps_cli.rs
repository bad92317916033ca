//! `udp_server taps …`, the binary, against real sockets on 127.0.0.1: a
//! discovery answer from a tap-like responder is listed; a configured tap
//! that cannot be reached is reported and fails the command. (The receiver
//! driving a real tap is tested in tap_daemon's tests/receiver_drives_taps.rs.)

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use rst_control::discovery::{Reply, Request};

#[test]
fn taps_discover_lists_who_answers() {
    let tap = UdpSocket::bind("127.0.0.1:0").unwrap();
    tap.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let to = tap.local_addr().unwrap();
    let answering = std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        let (len, from) = tap.recv_from(&mut buf).unwrap();
        let who = Request::decode(&buf[..len]).expect("a discovery request");
        // Another client's round first: not to be listed.
        let mut stray = Reply {
            version: rst_control::VERSION,
            nonce: rst_control::discovery::Nonce::from_u64(1),
            name: "someone-elses".into(),
            id: "0000000000000000".into(),
            software: "0.1.0".into(),
            control_port: 9531,
            interfaces: vec![],
        };
        tap.send_to(&stray.encode(), from).unwrap();
        stray.nonce = who.nonce;
        stray.name = "floor-3".into();
        stray.id = "a41c9e07d2b85f13".into();
        stray.interfaces = vec!["eth1".into()];
        tap.send_to(&stray.encode(), from).unwrap();
    });
    let out = Command::new(env!("CARGO_BIN_EXE_udp_server"))
        // A configured tap without its secret yet does not stop discovery.
        .args(["--tap", "10.9.9.9", "taps", "discover", "--wait", "1"])
        .args(["--to", &to.to_string()])
        .output()
        .unwrap();
    answering.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("floor-3"), "{stdout}");
    assert!(stdout.contains("control 127.0.0.1:9531"), "{stdout}");
    assert!(stdout.contains("interfaces eth1"), "{stdout}");
}

#[test]
fn taps_status_reports_an_unreachable_tap_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s").unwrap();
    // A port nobody listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_udp_server"))
        .args(["--tap", &format!("127.0.0.1:{port}"), "--tap-secret-file"])
        .arg(&secret)
        .args(["taps", "status"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("unreachable") && stdout.contains("cannot connect"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not answer"));
}
