//! The seed's whole conversation between two network namespaces joined by a
//! veth pair, as on a real network: the tap (the `tap_daemon` binary)
//! captures live on its end; on the other end `tapctl` discovers it by real
//! broadcast, configures it to send to a real receiver there, starts it,
//! tcpreplay puts a real call on the wire, and the receiver records it.
//! Then the receiver itself as the client (finding the tap by name), and a
//! config change in the middle of a call.
//!
//! Needs root (`ip netns`) and tcpreplay; without them it prints SKIPPED.
//! Run alone: `cargo test -p tap_daemon --test control_netns`.

mod control_support;
#[path = "live/netns.rs"]
mod netns;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use control_support::{captures, wait_records_in, Receiver, SECRET};
use netns::{enter, Netns, Pair, Unmade};
use rst_control::control::Secret;
use rst_control::discovery::{Nonce, Reply, Request};
use serde_json::Value;

/// The tap's namespace (A, 10.231.0.1, capturing on `veth-a`) and the
/// client's (B, 10.231.0.2, `veth-b`), joined by a veth; deleted on drop,
/// also when the test fails.
struct Net(Pair);

const TAP_IF: &str = "veth-a";
const CLIENT_IF: &str = "veth-b";

impl Net {
    /// `tag` (one letter) keeps the names of tests running at once apart;
    /// `None` without the right to make namespaces (not root).
    fn create(tag: char) -> Option<Net> {
        let name = format!("rstctl-{tag}{}", std::process::id() % 100_000);
        match Pair::new(&name, "10.231.0.1", "10.231.0.2") {
            Ok(pair) => Some(Net(pair)),
            Err(Unmade::NoRight(_)) => None,
            Err(Unmade::Failed(error)) => panic!("could not set up the namespaces: {error}"),
        }
    }

    fn client_ns(&self) -> String {
        self.0.b.name.clone()
    }

    /// `program` run in the tap's namespace.
    fn in_tap(&self, program: &str) -> Command {
        in_namespace(&self.0.a, program)
    }

    /// `program` run in the client's namespace.
    fn in_client(&self, program: &str) -> Command {
        in_namespace(&self.0.b, program)
    }
}

fn in_namespace(ns: &Netns, program: &str) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", &ns.name, program]);
    command
}

/// Moves the calling thread into namespace `ns` (threads it starts follow).
fn join(ns: &str) {
    enter(ns).unwrap_or_else(|e| panic!("setns into {ns}: {e}"));
}

/// The tap daemon, killed on drop.
struct Daemon(Child);

impl Daemon {
    /// The `tap_daemon` binary in the tap's namespace, capturing on its end of
    /// the veth once a client says start.
    fn start(net: &Net, dir: &Path, name: &str) -> Daemon {
        let config = dir.join("tap.toml");
        std::fs::write(
            &config,
            format!(
                "secret = \"{SECRET}\"\nname = \"{name}\"\ninterface = \"{}\"\n",
                TAP_IF
            ),
        )
        .unwrap();
        Daemon(
            net.in_tap(env!("CARGO_BIN_EXE_tap_daemon"))
                .arg("--config")
                .arg(&config)
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Puts `capture` on the wire from the client's end of the veth (4x speed).
fn replay(net: &Net, capture: &Path) {
    let replay = net
        .in_client("tcpreplay")
        .args(["-q", "-x", "4", "-i", CLIENT_IF])
        .arg(capture)
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
}

fn tapctl(net: &Net, args: &[&str]) -> (bool, String, String) {
    let out = net
        .in_client(env!("CARGO_BIN_EXE_tapctl"))
        .args(args)
        .env("TAPCTL_SECRET", SECRET)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn seed_sequence_between_namespaces_by_broadcast_and_live_capture() {
    let capture = captures().join("sip-rtp-g722.pcap");
    if !capture.exists() || Command::new("tcpreplay").arg("--version").output().is_err() {
        println!("SKIPPED: needs tcpreplay and {}", capture.display());
        return;
    }
    let Some(net) = Net::create('t') else {
        println!("SKIPPED: needs root (ip netns add failed)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let _daemon = Daemon::start(&net, dir.path(), "veth-tap");

    // 1. Who is there: a real broadcast from the client's namespace, by the
    // library (with the default port) ...
    let client_ns = net.client_ns();
    let receiver = Receiver::start("10.231.0.2:0".parse().unwrap(), move || join(&client_ns));
    let found = {
        let client_ns = net.client_ns();
        std::thread::spawn(move || {
            join(&client_ns);
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.set_broadcast(true).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let nonce = Nonce::from_u64(0x5eed);
            let deadline = Instant::now() + Duration::from_secs(10);
            // The daemon may still be starting: ask again until it answers.
            while Instant::now() < deadline {
                let to = SocketAddr::from(([10, 231, 0, 255], rst_control::DISCOVERY_PORT));
                socket
                    .send_to(&Request::new(nonce.clone()).encode(), to)
                    .unwrap();
                let mut buf = [0u8; 4096];
                if let Ok((len, from)) = socket.recv_from(&mut buf) {
                    let reply = Reply::decode(&buf[..len]).unwrap();
                    assert_eq!(reply.nonce, nonce);
                    return Some((reply, from));
                }
            }
            None
        })
        .join()
        .unwrap()
    };
    let (reply, from) = found.expect("the tap answered the broadcast");
    assert_eq!(from.ip().to_string(), "10.231.0.1", "unicast from the tap");
    assert_eq!(reply.name, "veth-tap");
    assert_eq!(reply.control_port, rst_control::CONTROL_PORT);
    assert_eq!(reply.interfaces, vec![TAP_IF.to_owned()]);

    // ... and by the operator's tool.
    let (ok, out, err) = tapctl(&net, &["discover", "--broadcast", "10.231.0.255"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("veth-tap") && out.contains("10.231.0.1:9531"),
        "{out}"
    );

    // 2–4. Connect, config, start.
    let tap = "10.231.0.1";
    let (ok, _, err) = tapctl(&net, &["status", "--tap", tap, "--secret", "wrong"]);
    assert!(!ok && err.contains("wrong secret"), "{err}");
    let receiver_addr = receiver.addr.to_string();
    let (ok, out, err) = tapctl(
        &net,
        &[
            "config",
            "--tap",
            tap,
            "--receiver",
            &receiver_addr,
            "--filter",
            "udp",
            "--mode",
            "rtp",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains(&receiver_addr), "{out}");
    let (ok, out, err) = tapctl(&net, &["start", "--tap", tap]);
    assert!(ok && out.contains("running"), "{out}{err}");

    // 5. Network data: a real call onto the wire, captured live by the tap.
    replay(&net, &capture);
    let records = receiver.wait_records(1, Duration::from_secs(20));
    assert_eq!(records.len(), 1, "the call was recorded");
    let record = &records[0];
    assert_eq!(record["end_reason"], "bye", "{record}");
    assert_eq!(record["caller"], "sipp");
    let packets = |d: &str| record["directions"][d]["packets"].as_u64().unwrap_or(0);
    assert_eq!(packets("R") + packets("W"), 425, "{record}");
    let (ok, out, err) = tapctl(&net, &["status", "--tap", tap]);
    assert!(ok, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["state"], "running");
    assert_eq!(status["counters"]["calls_started"], 1, "{status}");
    assert!(
        status["counters"]["pcap"]["received"].as_u64().unwrap() >= 433,
        "{status}"
    );
    assert_eq!(status["plane"]["auth_failures"], 1, "{status}");

    // 6–7. Stop (the close is each tapctl command's last line).
    let (ok, out, err) = tapctl(&net, &["stop", "--tap", tap]);
    assert!(ok && out.contains("stopped"), "{out}{err}");
}

/// The same sequence with the receiver as the client: it finds the tap by its
/// name through a real broadcast, tells it to send to the address it has
/// towards the tap (it listens on 0.0.0.0), starts it, records the call put
/// on the wire, and stops the tap when it stops.
#[test]
fn the_receiver_finds_the_tap_by_broadcast_and_drives_it() {
    let capture = captures().join("sip-rtp-g722.pcap");
    if !capture.exists() || Command::new("tcpreplay").arg("--version").output().is_err() {
        println!("SKIPPED: needs tcpreplay and {}", capture.display());
        return;
    }
    let Some(net) = Net::create('r') else {
        println!("SKIPPED: needs root (ip netns add failed)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let _daemon = Daemon::start(&net, dir.path(), "veth-tap-r");
    let settings = udp_server::Settings {
        listen: Some("0.0.0.0:0".parse().unwrap()),
        record_dir: Some(dir.path().join("recordings")),
        rtp_ports: Some("43500-43599".parse().unwrap()),
        tap: vec![udp_server::taps::TapSpec {
            secret: Some(Secret(SECRET.into())),
            ..("name=veth-tap-r".parse().unwrap())
        }],
        tap_discovery: Some(SocketAddr::from((
            [10, 231, 0, 255],
            rst_control::DISCOVERY_PORT,
        ))),
        tap_poll_interval: Some(1),
        ..udp_server::Settings::default()
    };
    let config = settings.resolve().unwrap();
    // Threads started from inside the namespace (the receiver's, its tap
    // link's) stay in it.
    let client_ns = net.client_ns();
    let running = std::thread::spawn(move || {
        join(&client_ns);
        udp_server::Running::start(config)
    })
    .join()
    .unwrap()
    .unwrap();
    // The daemon may still be starting: the link tries again (1 s, 2 s, 4 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    while running.metrics().taps_running.load(Ordering::Relaxed) != 1 {
        assert!(
            Instant::now() < deadline,
            "the receiver never started the tap"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, out, err) = tapctl(&net, &["status", "--tap", "10.231.0.1"]);
    assert!(ok, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(
        status["config"]["receiver"],
        format!("10.231.0.2:{}", running.addr().port()),
        "the receiver's address on the tap's network: {status}"
    );

    replay(&net, &capture);
    let records = wait_records_in(&dir.path().join("recordings"), 1, Duration::from_secs(20));
    assert_eq!(records.len(), 1, "the call was recorded");
    assert_eq!(records[0]["end_reason"], "bye", "{}", records[0]);
    assert_eq!(records[0]["call_id"], "1-2161@10.0.2.20");

    drop(running);
    let (ok, out, err) = tapctl(&net, &["status", "--tap", "10.231.0.1"]);
    assert!(ok, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        status["state"], "stopped",
        "the receiver stopped the tap: {status}"
    );
}

/// A config change while a call is in progress keeps that call: a new
/// receiver and a number filter that would refuse it arrive mid-call; the
/// call goes on to its first receiver whole and ends with its BYE, and only
/// calls that start afterwards are judged by the new config.
#[test]
fn a_config_change_mid_call_keeps_the_call_in_progress() {
    let capture = captures().join("sip-rtp-g722.pcap");
    if !capture.exists() || Command::new("tcpreplay").arg("--version").output().is_err() {
        println!("SKIPPED: needs tcpreplay and {}", capture.display());
        return;
    }
    let Some(net) = Net::create('c') else {
        println!("SKIPPED: needs root (ip netns add failed)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let _daemon = Daemon::start(&net, dir.path(), "veth-tap-c");
    let enter_client = |ns: String| move || join(&ns);
    let first = Receiver::start(
        "10.231.0.2:0".parse().unwrap(),
        enter_client(net.client_ns()),
    );
    let second = Receiver::start(
        "10.231.0.2:0".parse().unwrap(),
        enter_client(net.client_ns()),
    );
    let tap = "10.231.0.1";
    let deadline = Instant::now() + Duration::from_secs(10);
    // The daemon may still be starting.
    while !tapctl(&net, &["status", "--tap", tap]).0 {
        assert!(Instant::now() < deadline, "the tap never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let first_addr = first.addr.to_string();
    let (ok, _, err) = tapctl(
        &net,
        &[
            "config",
            "--tap",
            tap,
            "--receiver",
            &first_addr,
            "--filter",
            "udp",
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = tapctl(&net, &["start", "--tap", tap]);
    assert!(ok, "{err}");

    // The call (8.5 s on the wire) at twice its speed, in the background.
    let mut replaying = net
        .in_client("tcpreplay")
        .args(["-q", "-x", "2", "-i", CLIENT_IF])
        .arg(&capture)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Mid-call: the tap has seen the INVITE (the call lasts 4 s more).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out, err) = tapctl(&net, &["status", "--tap", tap]);
        assert!(ok, "{err}");
        let status: Value = serde_json::from_str(&out).unwrap();
        if status["counters"]["calls_active"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the tap never saw the call start: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second_addr = second.addr.to_string();
    let (ok, out, err) = tapctl(
        &net,
        &[
            "config",
            "--tap",
            tap,
            "--receiver",
            &second_addr,
            "--number",
            "nobody-here",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains(&second_addr), "{out}");
    assert!(replaying.wait().unwrap().success());

    let records = first.wait_records(1, Duration::from_secs(20));
    assert_eq!(records.len(), 1, "the call in progress was recorded");
    let record = &records[0];
    assert_eq!(record["end_reason"], "bye", "{record}");
    let packets = |d: &str| record["directions"][d]["packets"].as_u64().unwrap_or(0);
    assert_eq!(packets("R") + packets("W"), 425, "every packet: {record}");

    // Calls that start now are judged by the new config: refused by number.
    // (Another capture: the same Call-ID again would be taken for a
    // retransmission of the call that just ended.)
    let later = captures().join("sip-rtp-g711.pcap");
    replay(&net, &later);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let (ok, out, err) = tapctl(&net, &["status", "--tap", tap]);
        assert!(ok, "{err}");
        let status: Value = serde_json::from_str(&out).unwrap();
        if status["counters"]["calls_filtered"] == 2 || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["counters"]["calls_filtered"], 2, "{status}");
    assert_eq!(status["counters"]["calls_started"], 1, "{status}");
    assert!(
        second.records().is_empty(),
        "nothing went to the new receiver"
    );
    assert_eq!(first.records().len(), 1);
    let (ok, _, err) = tapctl(&net, &["stop", "--tap", tap]);
    assert!(ok, "{err}");
}
