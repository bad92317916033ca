//! RTP mode against the real receiver (udp_server, in-process on 127.0.0.1, as its
//! own tests start it): every RTP packet rst-load reports sending is counted in
//! `rst_rtp_packets_total`, none comes from a wrong source, and each call's record
//! has every packet of each direction.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rst_load::{Codec, Config, Mode, Report};
use udp_server::config::PortRange;
use udp_server::{Metrics, Settings};

struct Receiver {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    metrics: Arc<Metrics>,
    running: udp_server::Running,
}

impl Receiver {
    fn start(rtp_ports: &str) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let config = Settings {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            record_dir: Some(dir.path().to_owned()),
            rtp_ports: Some(rtp_ports.parse::<PortRange>().unwrap()),
            ..Settings::default()
        }
        .resolve()
        .unwrap();
        let running = udp_server::Running::start(config).expect("the receiver starts");
        Receiver {
            addr: running.addr(),
            metrics: running.metrics().clone(),
            dir,
            running,
        }
    }

    fn counter(&self, series: &str) -> u64 {
        rst_load::prom::value(&self.metrics.render(), series)
            .unwrap_or_else(|| panic!("no {series} in the metrics")) as u64
    }

    /// Waits (60 s at most) until the counter `series` reaches `at_least`.
    fn wait_counter(&self, series: &str, at_least: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.counter(series) < at_least {
            assert!(
                Instant::now() < deadline,
                "{series} stayed at {}, below {at_least}",
                self.counter(series)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `count` records exist (the calls end a moment after their BYE).
    fn wait_records(&self, count: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let records = records_in(self.dir.path());
            if records.len() >= count || Instant::now() > deadline {
                assert_eq!(records.len(), count, "records in {:?}", self.dir.path());
                return records;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        self.running.stop().unwrap();
    }
}

fn records_in(dir: &Path) -> Vec<serde_json::Value> {
    let mut records = Vec::new();
    for day in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for file in std::fs::read_dir(day.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = file.path();
            if path.to_string_lossy().ends_with(".json") {
                records.push(serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap());
            }
        }
    }
    records
}

/// Plays `config` to a fresh receiver and checks what it counted and recorded;
/// returns the report and the records.
fn play_and_check(receiver: &mut Receiver, config: &Config) -> (Report, Vec<serde_json::Value>) {
    let report = rst_load::run(config).unwrap();
    let calls = config.calls as u64;
    assert_eq!(report.mode, Mode::Rtp);
    assert_eq!(
        (report.inv_acked, report.bye_acked, report.lost()),
        (calls, calls, 0),
        "{report}"
    );
    assert_eq!(
        (report.send_errors, report.rtp_no_ports),
        (0, 0),
        "{report}"
    );
    assert_eq!(report.data_sent, 0, "{report}");
    assert!(report.rtp_sent > 0, "{report}");

    let records = receiver.wait_records(config.calls);
    receiver.stop();
    assert_eq!(
        receiver.counter("rst_rtp_packets_total"),
        report.rtp_sent,
        "{report}"
    );
    assert_eq!(
        receiver.counter("rst_refused_total{reason=\"wrong_source\"}"),
        0
    );
    assert_eq!(receiver.counter("rst_rtp_malformed_total"), 0);
    assert_eq!(receiver.counter("rst_messages_total{command=\"data\"}"), 0);
    for record in &records {
        assert_eq!(record["mode"], "rtp", "{record}");
        assert_eq!(record["end_reason"], "bye", "{record}");
    }
    (report, records)
}

#[test]
fn real_time_rtp_calls_are_counted_and_recorded_per_direction() {
    let mut receiver = Receiver::start("24000-24099");
    let frames = 25; // 0.5 s of audio
    let config = Config {
        target: receiver.addr,
        calls: 10,
        frames: Some(frames),
        mode: Mode::Rtp,
        ..Config::default()
    };
    let (report, records) = play_and_check(&mut receiver, &config);
    assert_eq!(report.rtp_sent, 10 * 2 * frames, "{report}");
    // Real time: 25 frames 20 ms apart take about half a second.
    assert!(
        report.data_elapsed >= Duration::from_millis(460),
        "{report}"
    );
    for record in &records {
        for direction in ["R", "W"] {
            let d = &record["directions"][direction];
            assert_eq!(d["rtp"]["received"], frames, "{direction}: {record}");
            assert_eq!(d["rtp"]["expected"], frames, "{direction}: {record}");
            assert_eq!(d["rtp"]["lost"], 0, "{direction}: {record}");
            assert_eq!(d["rtp"]["duplicates"], 0, "{direction}: {record}");
            assert_eq!(d["rtp"]["ssrc_changes"], 0, "{direction}: {record}");
            assert_eq!(d["rtp"]["timestamp_jumps"], 0, "{direction}: {record}");
            assert_eq!(d["codecs"][0], "PCMU", "{direction}: {record}");
            assert_eq!(d["samples"], frames * 160, "{direction}: {record}");
        }
    }
}

#[test]
fn fast_rtp_with_a_rate_cap_loses_nothing() {
    let mut receiver = Receiver::start("24100-24199");
    let config = Config {
        target: receiver.addr,
        calls: 20,
        duration: Duration::from_millis(500),
        fast: true,
        rate: Some(20_000),
        codec: Codec::Pcma,
        mode: Mode::Rtp,
        ..Config::default()
    };
    let (report, records) = play_and_check(&mut receiver, &config);
    // About 0.5 s at 20 000/s, never much faster than the cap.
    assert!(report.rtp_sent > 5_000, "{report}");
    assert!(report.data_rate() < 22_000.0, "{report}");
    let received: u64 = records
        .iter()
        .flat_map(|record| {
            ["R", "W"].map(|d| record["directions"][d]["rtp"]["received"].as_u64().unwrap())
        })
        .sum();
    assert_eq!(received, report.rtp_sent, "{report}");
    for record in &records {
        let [r, w] = ["R", "W"].map(|d| &record["directions"][d]);
        // Each call's two directions get the same number of frames (bursts per socket).
        assert_eq!(r["rtp"]["received"], w["rtp"]["received"], "{record}");
        assert_eq!(r["rtp"]["lost"], 0, "{record}");
        assert_eq!(r["codecs"][0], "PCMA", "{record}");
    }
}

#[test]
fn an_exhausted_port_range_leaves_the_call_unanswered_and_silent() {
    // Two ports: one RTP-mode call. The second INV is never answered.
    let mut receiver = Receiver::start("24200-24201");
    let config = Config {
        target: receiver.addr,
        calls: 2,
        frames: Some(5),
        mode: Mode::Rtp,
        rto: Duration::from_millis(20),
        retries: 2,
        ..Config::default()
    };
    let report = rst_load::run(&config).unwrap();
    assert_eq!((report.inv_acked, report.inv_lost), (1, 1), "{report}");
    assert_eq!(report.rtp_sent, 2 * 5, "{report}");
    receiver.wait_counter("rst_rtp_packets_total", 2 * 5);
    receiver.stop();
    assert_eq!(receiver.counter("rst_rtp_packets_total"), 2 * 5);
    assert!(receiver.counter("rst_refused_total{reason=\"no_ports\"}") >= 1);
}

#[test]
fn left_out_frames_are_lost_where_they_were_left_out() {
    let mut receiver = Receiver::start("24300-24399");
    // Every tenth frame left out: 9, 19, 29 and 39 of 41 (the 41st shows the last hole).
    let config = Config {
        target: receiver.addr,
        calls: 1,
        frames: Some(41),
        fast: true,
        mode: Mode::Rtp,
        drop_every: Some(10),
        ..Config::default()
    };
    let (report, records) = play_and_check(&mut receiver, &config);
    assert_eq!(report.rtp_sent, 2 * 37, "{report}");
    for direction in ["R", "W"] {
        let d = &records[0]["directions"][direction];
        assert_eq!(d["rtp"]["expected"], 41, "{direction}: {d}");
        assert_eq!(d["rtp"]["lost"], 4, "{direction}: {d}");
        assert_eq!(d["samples"], 41 * 160, "{direction}: {d}");
        assert_eq!(d["gaps"]["count"], 4, "{direction}: {d}");
        let at: Vec<(u64, u64)> = d["gaps"]["first"]
            .as_array()
            .unwrap()
            .iter()
            .map(|gap| {
                (
                    gap["sample"].as_u64().unwrap(),
                    gap["samples"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            at,
            [9, 19, 29, 39].map(|k| (k * 160, 160)),
            "{direction}: {d}"
        );
    }
}
