//! The seed's whole conversation between two network namespaces joined by a
//! veth pair, as on a real network: the tap (the `tap_daemon` binary)
//! captures live on its end; on the other end `tapctl` discovers it by real
//! broadcast, configures it to send to a real receiver there, starts it,
//! tcpreplay puts a real call on the wire, and the receiver records it.
//!
//! Needs root (`ip netns`) and tcpreplay; without them it prints SKIPPED.
//! Run alone: `cargo test -p tap_daemon --test control_netns`.

mod control_support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use control_support::{captures, Receiver, SECRET};
use rst_control::discovery::{Nonce, Reply, Request};
use serde_json::Value;

/// Two namespaces and a veth between them; deleted on drop, also when the
/// test fails.
struct Net {
    tap_ns: String,
    client_ns: String,
    tap_if: String,
    client_if: String,
}

impl Net {
    fn create() -> Option<Net> {
        let id = std::process::id() % 100_000;
        let net = Net {
            tap_ns: format!("rstctl-tap-{id}"),
            client_ns: format!("rstctl-cli-{id}"),
            tap_if: format!("rcta{id}"),
            client_if: format!("rctb{id}"),
        };
        if !ip(&["netns", "add", &net.tap_ns]) {
            return None;
        }
        // From here on, drop cleans up.
        let ok = ip(&["netns", "add", &net.client_ns])
            && ip(&[
                "link",
                "add",
                &net.tap_if,
                "type",
                "veth",
                "peer",
                "name",
                &net.client_if,
            ])
            && ip(&["link", "set", &net.tap_if, "netns", &net.tap_ns])
            && ip(&["link", "set", &net.client_if, "netns", &net.client_ns])
            && net.exec_ip(
                &net.tap_ns,
                &[
                    "addr",
                    "add",
                    "10.231.0.1/24",
                    "brd",
                    "+",
                    "dev",
                    &net.tap_if,
                ],
            )
            && net.exec_ip(
                &net.client_ns,
                &[
                    "addr",
                    "add",
                    "10.231.0.2/24",
                    "brd",
                    "+",
                    "dev",
                    &net.client_if,
                ],
            )
            && net.exec_ip(&net.tap_ns, &["link", "set", &net.tap_if, "up"])
            && net.exec_ip(&net.client_ns, &["link", "set", &net.client_if, "up"])
            && net.exec_ip(&net.tap_ns, &["link", "set", "lo", "up"])
            && net.exec_ip(&net.client_ns, &["link", "set", "lo", "up"]);
        assert!(ok, "could not set up the namespaces");
        Some(net)
    }

    fn exec_ip(&self, ns: &str, args: &[&str]) -> bool {
        let mut all = vec!["netns", "exec", ns, "ip"];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command run in namespace `ns`.
    fn command(&self, ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and so the pair.
        ip(&["netns", "del", &self.tap_ns]);
        ip(&["netns", "del", &self.client_ns]);
    }
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Moves the calling thread into namespace `ns` (threads it starts follow).
fn enter(ns: &str) {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: setns on a valid namespace file descriptor only changes this
    // thread's network namespace; the file outlives the call.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// The tap daemon, killed on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tapctl(net: &Net, args: &[&str]) -> (bool, String, String) {
    let out = net
        .command(&net.client_ns, env!("CARGO_BIN_EXE_tapctl"))
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
    let Some(net) = Net::create() else {
        println!("SKIPPED: needs root (ip netns add failed)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tap.toml");
    std::fs::write(
        &config,
        format!(
            "secret = \"{SECRET}\"\nname = \"veth-tap\"\ninterface = \"{}\"\n",
            net.tap_if
        ),
    )
    .unwrap();
    let _daemon = Daemon(
        net.command(&net.tap_ns, env!("CARGO_BIN_EXE_tap_daemon"))
            .arg("--config")
            .arg(&config)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );

    // 1. Who is there: a real broadcast from the client's namespace, by the
    // library (with the default port) ...
    let client_ns = net.client_ns.clone();
    let receiver = Receiver::start("10.231.0.2:0".parse().unwrap(), move || enter(&client_ns));
    let found = {
        let client_ns = net.client_ns.clone();
        std::thread::spawn(move || {
            enter(&client_ns);
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
    assert_eq!(reply.interfaces, vec![net.tap_if.clone()]);

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
    let replay = net
        .command(&net.client_ns, "tcpreplay")
        .args(["-q", "-x", "4", "-i", &net.client_if])
        .arg(&capture)
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
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
