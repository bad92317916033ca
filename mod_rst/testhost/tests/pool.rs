//! Three receivers in a pool (`receivers` in rst.conf.xml): the real
//! `mod_rst.so` in the test host spreads calls over them by UUID; one
//! receiver, a real process, is `kill -9`'d mid-call; its calls fail over
//! to their next receiver, `rst_status` says which receiver is down, and
//! `assemble` joins each call's parts into audio complete, sample by
//! sample, but for at most two seconds around the failure.
//!
//! Every step waits for an event (a counter, frames made), never for time.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The debug build of udp_server as its own process, to be killed, on
/// `addr` (or a free port).
fn spawn_receiver(dir: &Path, addr: Option<SocketAddr>) -> (Child, SocketAddr) {
    cargo_build(&["-p", "udp_server"]);
    let target = target_dir();
    let addr = addr.unwrap_or_else(|| {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    });
    let child = Command::new(target.join("debug/udp_server"))
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--record-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("udp_server starts");
    // Ready when it answers (a BYE of no call is ACKed and records nothing).
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    wait_for("udp_server to answer", || {
        probe.send_to(b"BYE :probe", addr).ok()?;
        let mut reply = [0u8; 64];
        probe.recv_from(&mut reply).ok().map(|_| ())
    });
    (child, addr)
}

fn status(host: &mut Host) -> Value {
    let status = host.ok("api rst_status");
    serde_json::from_str(status["output"].as_str().unwrap().trim()).unwrap()
}

fn frames_made(host: &mut Host, u: &str) -> usize {
    let stats = host.ok(&format!("stats {u}"));
    stats["media"]["read"]["frames"].as_u64().unwrap() as usize
}

#[test]
#[ignore = "flaky on a loaded machine (failed 1 run in 5): a live receiver's ACK later than failover-ms moves a call a second time; issue #17 is open until this passes reliably. Run: cargo test -p mod_rst_testhost --test pool -- --ignored"]
fn a_receiver_killed_mid_call_costs_each_call_at_most_two_seconds() {
    let survivors = [Receiver::start(), Receiver::start()];
    let victim_dir = tempfile::tempdir().unwrap();
    let (mut victim, victim_addr) = spawn_receiver(victim_dir.path(), None);
    let addrs = [survivors[0].addr, survivors[1].addr, victim_addr];
    let list = addrs.map(|a| a.to_string()).join(",");
    let pool = rst_proto::Pool::parse(&list).unwrap();
    let conf = conf_dir(&[("receivers", list.as_str()), ("failover-ms", "300")]);
    let mut host = Host::start();
    host.load(conf.path());

    // Thirty calls, about a third of them on the receiver that dies.
    let first = |u: &str| pool.order(u).next().unwrap();
    let calls: Vec<String> = (0x1700..0x1700 + 30).map(uuid).collect();
    let moved: Vec<String> = calls
        .iter()
        .filter(|u| first(u) == victim_addr)
        .cloned()
        .collect();
    assert!(!moved.is_empty());
    for u in &calls {
        session(&mut host, u);
        host.ok(&format!("app {u} rst"));
        host.ok(&format!(
            "media {u} 120 read_hz={READ_HZ} write_hz={WRITE_HZ}"
        ));
    }
    wait_for("every call answered and a second of audio", || {
        let s = status(&mut host);
        let frames = frames_made(&mut host, &calls[calls.len() - 1]);
        (s["acks_received"].as_u64()? >= calls.len() as u64 && frames >= 50).then_some(())
    });
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();
    let s = wait_for("every call of the dead receiver failed over", || {
        let s = status(&mut host);
        (s["failovers"] == moved.len()).then_some(s)
    });
    let dead = s["receivers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == victim_addr.to_string())
        .unwrap()
        .clone();
    assert_eq!(dead["up"], false, "{s}");
    // A second of audio after the failover, then the calls end.
    let at_failover = frames_made(&mut host, &calls[0]);
    wait_for("a second of audio after the failover", || {
        (frames_made(&mut host, &calls[0]) >= at_failover + 50).then_some(())
    });
    for u in &calls {
        host.ok(&format!("stop_media {u}"));
    }
    host.ok("wait");
    let totals: Vec<usize> = calls.iter().map(|u| frames_made(&mut host, u)).collect();
    for u in &calls {
        host.ok(&format!("hangup {u}"));
    }
    let ended = wait_for("every stream closed", || {
        let s = status(&mut host);
        (s["streams_active"] == 0).then_some(s)
    });
    assert_eq!(ended["frames_dropped_queue_full"], 0, "{ended}");
    for receiver in &survivors {
        let here = calls
            .iter()
            .filter(|u| {
                let order: Vec<_> = pool.order(u).collect();
                let last = if order[0] == victim_addr {
                    order[1]
                } else {
                    order[0]
                };
                last == receiver.addr
            })
            .count();
        receiver.wait_records(here);
    }

    let from = [
        survivors[0].dir.path().to_owned(),
        survivors[1].dir.path().to_owned(),
        victim_dir.path().to_owned(),
    ];
    let began = Instant::now();
    let mut worst = 0;
    for (u, total) in calls.iter().zip(totals) {
        let out = tempfile::tempdir().unwrap();
        let assembled = udp_server::assemble::assemble(u, &from, out.path()).unwrap();
        let was_moved = moved.contains(u);
        assert_eq!(
            assembled.parts.len(),
            1 + usize::from(was_moved),
            "{assembled:?}"
        );
        for (direction, hz) in [("R", READ_HZ), ("W", WRITE_HZ)] {
            let (_, samples) = read_wav(&assembled.directions[direction].wav);
            let expected = heard("PCMU", &tone(hz, 8000.0, 8000, 0, total * 160));
            assert_eq!(
                samples.len(),
                expected.len(),
                "{u} {direction}: {assembled:?}"
            );
            let wrong = samples
                .iter()
                .zip(&expected)
                .filter(|(a, b)| a != b)
                .count();
            let allowed = if was_moved { 16_000 } else { 0 };
            worst = worst.max(wrong);
            assert!(
                wrong <= allowed,
                "{u} {direction}: {wrong} samples differ: {assembled:?}"
            );
        }
    }
    eprintln!(
        "assembled {} calls in {:?}; {} failed over; the most samples lost in a call: {worst}",
        calls.len(),
        began.elapsed(),
        moved.len()
    );

    // The killed receiver, restarted on its address, gets new calls again
    // (once its time out of new calls' way is over: a call meanwhile goes
    // to its next receiver).
    let back_dir = tempfile::tempdir().unwrap();
    let (mut back, _) = spawn_receiver(back_dir.path(), Some(victim_addr));
    let mut n = 0x1800;
    wait_for("a new call at the restarted receiver", || {
        let u = loop {
            n += 1;
            if first(&uuid(n)) == victim_addr {
                break uuid(n);
            }
        };
        let acks = status(&mut host)["acks_received"].as_u64().unwrap();
        session(&mut host, &u);
        host.ok(&format!("app {u} rst"));
        host.ok(&format!(
            "media {u} 120 read_hz={READ_HZ} write_hz={WRITE_HZ}"
        ));
        wait_for("the new call answered", || {
            (status(&mut host)["acks_received"].as_u64()? > acks).then_some(())
        });
        host.ok(&format!("stop_media {u}"));
        host.ok("wait");
        host.ok(&format!("hangup {u}"));
        wait_for("the new call's stream closed", || {
            (status(&mut host)["streams_active"] == 0).then_some(())
        });
        let there = files_in(back_dir.path(), ".json")
            .iter()
            .chain(&files_in(back_dir.path(), ".json.part"))
            .any(|p| p.to_string_lossy().contains(u.as_str()));
        there.then_some(())
    });
    let up = status(&mut host)["receivers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["address"] == victim_addr.to_string() && r["up"] == true);
    assert!(up, "the restarted receiver is up again");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(back.id() as i32, libc::SIGTERM) };
    back.wait().unwrap();
    finish(host);
}

/// A receiver of the pool with nothing listening (its port answers ICMP port
/// unreachable): the call moves to the next receiver on that error, long
/// before `failover-ms` (set to its most, 60 s, so that only the ICMP error
/// can explain the move), and the next receiver records it.
#[test]
fn a_receiver_with_nothing_listening_fails_over_on_the_icmp_error() {
    let live = Receiver::start();
    // A port just freed: nothing listens there.
    let gone = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let list = format!("{gone},{}", live.addr);
    let pool = rst_proto::Pool::parse(&list).unwrap();
    let conf = conf_dir(&[("receivers", list.as_str()), ("failover-ms", "60000")]);
    let mut host = Host::start();
    host.load(conf.path());
    // A call whose first receiver is the one with nothing listening.
    let u = (0x1800..0x1900)
        .map(uuid)
        .find(|u| pool.order(u).next() == Some(gone))
        .expect("some UUID goes to the first receiver first");
    let started = Instant::now();
    session(&mut host, &u);
    host.ok(&format!("app {u} rst"));
    host.ok(&format!(
        "media {u} 100 read_hz={READ_HZ} write_hz={WRITE_HZ}"
    ));
    let s = wait_for("the call to fail over", || {
        let s = status(&mut host);
        (s["failovers"] == 1).then_some(s)
    });
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "moved only after {:?}: failover-ms (60 s) explains it, not the ICMP error",
        started.elapsed()
    );
    assert!(s["icmp_errors"].as_u64().unwrap() >= 1, "{s}");
    host.ok(&format!("stop_media {u}"));
    host.ok("wait");
    host.ok(&format!("hangup {u}"));
    let record = live.record(&u);
    assert_eq!(record["end_reason"], "bye", "{record:#}");
    finish(host);
}
