//! A stderr nobody reads never stops the receiver: it fills (a pipe holds
//! 64 KiB), and the receiver goes on recording every call, counts the log
//! lines it dropped, and exits on SIGTERM.

mod common;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// About 7,500 lines at debug level: more than the pipe and the logger's
/// queue (4,096 lines) hold.
const CALLS: usize = 3000;

#[test]
fn a_stderr_nobody_reads_stops_no_call_and_no_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_metrics_addr();
    let mut child = Process(
        Command::new(env!("CARGO_BIN_EXE_udp_server"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--new-calls-per-second",
                "100000",
            ])
            .arg("--metrics")
            .arg(metrics.to_string())
            .arg("--record-dir")
            .arg(dir.path())
            // Every call logs several lines: the pipe is full within a few hundred.
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Read stderr up to the address, then never again (the pipe stays open).
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr: SocketAddr = loop {
        let mut line = String::new();
        assert_ne!(stderr.read_line(&mut line).unwrap(), 0, "no address logged");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split(' ').next().unwrap().trim().parse().unwrap();
        }
    };
    let mut sender = Sender::new(addr);
    for n in 0..CALLS {
        let id = uuid(n as u32);
        sender.inv(&id, "alice", "bob");
        sender.data(&id, rst_proto::Direction::Read, 0, &[0xFF; 160]);
        sender.bye(&id);
    }
    wait_for_records(dir.path(), CALLS);
    let dropped = metric(&scrape(metrics), "rst_log_lines_dropped_total");
    assert!(dropped > 0, "the pipe filled, yet no line was dropped");
    // SIGTERM: it ends, by itself (a hang is killed after a minute and fails).
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_for_exit(&mut child, Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    drop(stderr);
}

fn wait_for_records(dir: &std::path::Path, count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let found = records_in(dir).len();
        if found >= count {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{found} of {count} calls recorded: the receiver stopped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for_exit(child: &mut Process, within: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the receiver hung on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
