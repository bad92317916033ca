//! The tap's control plane over loopback, with real sockets: discovery, the
//! seed's whole conversation into a real receiver (a capture file replayed
//! by the tap), wrong secrets, garbage, two clients, a vanishing client, an
//! idle connection. The namespace and live-capture variant is in
//! `control_netns.rs`.

mod control_support;

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use control_support::{captures, ok, refused, Client, Receiver, Tap, SECRET};
use rst_control::discovery::{Nonce, Reply, Request};
use rst_test_support::wait_for;
use serde_json::Value;
use tap_daemon::config::Settings;

fn file_tap(capture: &str) -> Option<Tap> {
    let path = captures().join(capture);
    if !path.exists() {
        println!("SKIPPED: {} is missing", path.display());
        return None;
    }
    Some(Tap::start(Settings {
        pcap: Some(path),
        ..Settings::default()
    }))
}

fn status_of(client: &mut Client) -> Value {
    ok(client.ask(r#"{"cmd":"status"}"#))
}

#[test]
fn discovery_over_loopback_answers_requests_and_counts_garbage() {
    let Some(tap) = file_tap("sip-rtp-g722.pcap") else {
        return;
    };
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_broadcast(true).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let to = SocketAddr::from(([127, 0, 0, 1], tap.discovery.port()));
    // Garbage first: never answered, counted.
    socket.send_to(b"\x00\x01\x02", to).unwrap();
    socket
        .send_to(
            br#"{"proto":"rst-tap","type":"who","version":1,"nonce":"bad nonce!"}"#,
            to,
        )
        .unwrap();
    // Then a request, by loopback broadcast and unicast.
    for (i, to) in [
        SocketAddr::from(([127, 255, 255, 255], tap.discovery.port())),
        to,
    ]
    .into_iter()
    .enumerate()
    {
        let nonce = Nonce::from_u64(0xfeed_0000 + i as u64);
        socket
            .send_to(&Request::new(nonce.clone()).encode(), to)
            .unwrap();
        let mut buf = [0u8; 4096];
        // The tap's answer within 5 s: a stray datagram to a reused port
        // (another address, or another port) is skipped.
        let deadline = Instant::now() + Duration::from_secs(5);
        let (len, from) = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no answer from the tap's port");
            socket.set_read_timeout(Some(left)).unwrap();
            match socket.recv_from(&mut buf) {
                Ok((len, from))
                    if from.ip().is_loopback() && from.port() == tap.discovery.port() =>
                {
                    break (len, from)
                }
                Ok(_) => continue,
                Err(error) => panic!("no answer from the tap's port: {error}"),
            }
        };
        let reply = Reply::decode(&buf[..len]).unwrap();
        assert_eq!(
            reply.nonce, nonce,
            "the answer to this request, not to garbage"
        );
        assert_eq!(reply.name, "test-tap");
        assert_eq!(reply.version, 1);
        assert_eq!(reply.control_port, tap.control.port());
        assert_eq!(reply.id.len(), 16);
        assert_eq!(
            from.port(),
            tap.discovery.port(),
            "unicast from the tap's port"
        );
    }
    let mut client = Client::connect(tap.control);
    ok(client.hello(SECRET));
    let status = status_of(&mut client);
    assert_eq!(status["plane"]["discovery_requests"], 2, "{status}");
    assert_eq!(status["plane"]["discovery_ignored"], 2, "{status}");
}

/// Discover → connect → config → start → data flows → stop → close, the
/// tap replaying a capture file into a real receiver.
#[test]
fn seed_sequence_over_loopback_records_the_call() {
    let Some(tap) = file_tap("sip-rtp-g722.pcap") else {
        return;
    };
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap(), || {});
    let mut client = Client::connect(tap.control);
    let hello = ok(client.hello(SECRET));
    assert_eq!(hello["role"], "control");
    // Nothing goes anywhere until a client names the receiver.
    let error = refused(&client.ask(r#"{"cmd":"start"}"#), "state");
    assert!(error.contains("no receiver"), "{error}");
    let config = ok(client.ask(&format!(
        r#"{{"cmd":"config","receiver":"{}","mode":"rtp","filter":"udp"}}"#,
        receiver.addr
    )));
    assert_eq!(config["config"]["receiver"], receiver.addr.to_string());
    assert_eq!(ok(client.ask(r#"{"cmd":"start"}"#))["state"], "running");
    let records = receiver.wait_records(1, Duration::from_secs(20));
    assert_eq!(records.len(), 1, "one call recorded");
    let record = &records[0];
    assert_eq!(record["end_reason"], "bye", "{record}");
    assert_eq!(record["mode"], "rtp");
    // This capture's audio flows one way: 425 packets, all of them.
    let packets = |d: &str| record["directions"][d]["packets"].as_u64().unwrap_or(0);
    assert_eq!(packets("R") + packets("W"), 425, "{record}");
    // The file was read to its end.
    let status = wait_for("the capture to end", || {
        let status = status_of(&mut client);
        (status["state"] != "running").then_some(status)
    });
    assert_eq!(status["state"], "finished", "{status}");
    assert_eq!(status["counters"]["calls_started"], 1, "{status}");
    assert_eq!(status["counters"]["packets"], 433, "{status}");
    assert_eq!(ok(client.ask(r#"{"cmd":"stop"}"#))["state"], "stopped");
    ok(client.ask(r#"{"cmd":"close"}"#));
    assert!(client.read().is_none(), "closed after close");
}

#[test]
fn wrong_secret_is_refused_and_repeated_failures_are_slowed_down() {
    let Some(tap) = file_tap("sip-rtp-g722.pcap") else {
        return;
    };
    let mut times = Vec::new();
    for _ in 0..3 {
        let mut client = Client::connect(tap.control);
        let started = Instant::now();
        let response = client.hello("guess");
        times.push(started.elapsed());
        assert_eq!(refused(&response, "auth"), "wrong secret");
        assert!(client.read().is_none(), "closed after a wrong secret");
    }
    assert!(times[0] < Duration::from_millis(200), "{times:?}");
    assert!(times[1] >= Duration::from_millis(240), "{times:?}");
    assert!(times[2] >= Duration::from_millis(490), "{times:?}");
    // Even the right secret waits its turn, then the slate is clean.
    let mut client = Client::connect(tap.control);
    let started = Instant::now();
    ok(client.hello(SECRET));
    assert!(started.elapsed() >= Duration::from_millis(990));
    let status = status_of(&mut client);
    assert_eq!(status["plane"]["auth_failures"], 3, "{status}");
    let mut again = Client::connect(tap.control);
    let started = Instant::now();
    ok(again.hello(SECRET));
    assert!(started.elapsed() < Duration::from_millis(200));
}

#[test]
fn garbage_on_the_control_port_gets_clear_errors() {
    let Some(tap) = file_tap("sip-rtp-g722.pcap") else {
        return;
    };
    let mut client = Client::connect(tap.control);
    let error = refused(&client.ask("GET / HTTP/1.1"), "bad_request");
    assert!(error.starts_with("not JSON"), "{error}");
    refused(&client.ask("\u{1}\u{2}\u{3}"), "bad_request");
    client.send(b"\xff\xfe\xfd\n");
    let error = refused(&client.read().unwrap(), "bad_request");
    assert!(error.contains("UTF-8"), "{error}");
    let error = refused(&client.ask(r#"{"cmd":"status"}"#), "not_authenticated");
    assert!(error.contains("hello"), "{error}");
    let long = format!(r#"{{"cmd":"{}"}}"#, "x".repeat(20_000));
    let error = refused(&client.ask(&long), "too_long");
    assert!(error.contains("longer than"), "{error}");
    // The connection survived all that.
    ok(client.hello(SECRET));
    let error = refused(&client.ask(r#"{"cmd":"reboot"}"#), "bad_request");
    assert!(error.contains("unknown variant `reboot`"), "{error}");
    let error = refused(
        &client.ask(r#"{"cmd":"config","recever":"1.2.3.4:5"}"#),
        "bad_request",
    );
    assert!(error.contains("unknown field `recever`"), "{error}");
    let error = refused(
        &client.ask(r#"{"cmd":"config","numbers":["re:("]}"#),
        "invalid_config",
    );
    assert!(error.contains("re:("), "{error}");
    let error = refused(
        &client.ask(r#"{"cmd":"config","filter":"udp and and"}"#),
        "invalid_config",
    );
    assert!(error.contains("bad filter"), "{error}");
    refused(
        &client.ask(r#"{"cmd":"config","mode":"data"}"#),
        "invalid_config",
    );
    refused(
        &client.ask(r#"{"cmd":"config","interface":"eth9"}"#),
        "invalid_config",
    );
    // Nothing of that was applied.
    let status = status_of(&mut client);
    assert_eq!(status["config"]["filter"], Value::Null, "{status}");
    assert_eq!(status["plane"]["bad_requests"], 6, "{status}");
    // A client that only sends garbage is shown the door.
    for _ in 0..7 {
        refused(&client.ask("nonsense"), "bad_request");
    }
    let last = client.ask("nonsense");
    assert!(refused(&last, "bad_request").contains("too many bad requests"));
    assert!(client.read().is_none());
}

#[test]
fn two_clients_at_once_the_second_only_watches() {
    let Some(tap) = file_tap("sip-rtp-g722.pcap") else {
        return;
    };
    let mut first = Client::connect(tap.control);
    let mut second = Client::connect(tap.control);
    assert_eq!(ok(first.hello(SECRET))["role"], "control");
    assert_eq!(ok(second.hello(SECRET))["role"], "observer");
    let first_addr = first.stream.local_addr().unwrap().to_string();
    for request in [
        r#"{"cmd":"config","receiver":"127.0.0.1:9"}"#,
        r#"{"cmd":"start"}"#,
        r#"{"cmd":"stop"}"#,
    ] {
        let error = refused(&second.ask(request), "busy");
        assert!(error.contains(&first_addr), "{error}");
    }
    let status = status_of(&mut second);
    assert_eq!(status["controller"], first_addr.as_str());
    assert_eq!(status["clients"], 2);
    ok(first.ask(r#"{"cmd":"config","receiver":"127.0.0.1:9"}"#));
    ok(first.ask(r#"{"cmd":"close"}"#));
    assert!(first.read().is_none());
    // The control is free once the tap has seen the first client go; the
    // observer takes it by saying hello again.
    wait_for("the closed client no longer counted", || {
        (status_of(&mut second)["clients"] == 1).then_some(())
    });
    refused(&second.ask(r#"{"cmd":"start"}"#), "busy");
    assert_eq!(ok(second.hello(SECRET))["role"], "control");
    let status = status_of(&mut second);
    assert_eq!(status["clients"], 1);
    assert_eq!(
        status["config"]["receiver"], "127.0.0.1:9",
        "the config stays"
    );
}

/// A controller that vanishes mid-session (no close, socket just gone)
/// leaves the capture running with its config; the next client takes over.
#[test]
fn a_client_that_vanishes_mid_session_leaves_the_capture_running() {
    // Live on loopback: needs libpcap's access to `lo` (root).
    let tap = Tap::start(Settings {
        interface: Some("lo".into()),
        ..Settings::default()
    });
    let mut client = Client::connect(tap.control);
    ok(client.hello(SECRET));
    ok(client.ask(r#"{"cmd":"config","receiver":"127.0.0.1:9","filter":"udp port 7"}"#));
    let started = client.ask(r#"{"cmd":"start"}"#);
    if started["ok"] == false && started["code"] == "capture" {
        println!("SKIPPED: cannot capture on lo (needs root): {started}");
        return;
    }
    ok(started);
    // Gone without a word (both directions shut, then dropped).
    client.stream.shutdown(std::net::Shutdown::Both).unwrap();
    drop(client);
    // The tap notices the vanished client when its connection reads the end;
    // until then a newcomer only watches. Wait for that, not for time.
    let mut next = Client::connect(tap.control);
    wait_for("the vanished client's control to be free", || {
        (ok(next.hello(SECRET))["role"] == "control").then_some(())
    });
    // libpcap's statistics are read and published every 200 ms of the capture.
    let status = wait_for("libpcap's statistics", || {
        let status = status_of(&mut next);
        status["counters"]["pcap"].is_object().then_some(status)
    });
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["config"]["filter"], "udp port 7");
    assert_eq!(ok(next.ask(r#"{"cmd":"stop"}"#))["state"], "stopped");
}

#[test]
fn an_idle_connection_times_out() {
    let path = captures().join("sip-rtp-g722.pcap");
    let tap = Tap::start(Settings {
        pcap: Some(path),
        control_idle_timeout: Some(1),
        ..Settings::default()
    });
    let mut client = Client::connect(tap.control);
    ok(client.hello(SECRET));
    // Half a line, then silence: a client that hung mid-request.
    client.stream.write_all(b"{\"cmd\":").unwrap();
    let started = Instant::now();
    let response = client.read().unwrap();
    assert!(refused(&response, "timeout").contains("nothing received"));
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(client.read().is_none(), "closed");
    // The control was freed with it.
    let mut next = Client::connect(tap.control);
    assert_eq!(ok(next.hello(SECRET))["role"], "control");
}

/// `status` tells the operator how much RTP was SRTP (seen, not recorded):
/// Asterisk_ZFONE_XLITE's media after its ZRTP handshake.
#[test]
fn status_counts_encrypted_rtp() {
    let Some(tap) = file_tap("Asterisk_ZFONE_XLITE.pcap") else {
        return;
    };
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap(), || {});
    let mut client = Client::connect(tap.control);
    ok(client.hello(SECRET));
    ok(client.ask(&format!(
        r#"{{"cmd":"config","receiver":"{}"}}"#,
        receiver.addr
    )));
    ok(client.ask(r#"{"cmd":"start"}"#));
    let status = wait_for("the capture to end", || {
        let status = status_of(&mut client);
        (status["state"] != "running").then_some(status)
    });
    assert_eq!(status["state"], "finished", "{status}");
    let encrypted = status["counters"]["rtp_encrypted"].as_u64().unwrap();
    // Of its 997 RTP packets, those after the Conf2ACK are ciphertext.
    assert!((900..997).contains(&encrypted), "{status}");
    assert_eq!(
        status["counters"]["rtp_forwarded"].as_u64().unwrap() + encrypted,
        997,
        "every RTP packet either recorded or counted as SRTP: {status}"
    );
}
