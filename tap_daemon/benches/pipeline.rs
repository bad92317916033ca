//! Offline throughput of the whole capture pipeline, against a bare libpcap
//! read of the same file and against tshark's RTP stream analysis of it.
//!
//!     cargo bench -p tap_daemon --bench pipeline
//!
//! Builds a large capture in a temporary directory from the SIP + RTP
//! captures in `../shared/captures` (override with `RST_BENCH_CAPTURES=DIR`):
//! each round plays every capture once, all starting within a few seconds of
//! each other (so a round holds a dozen concurrent calls; the same
//! round repeated), with the capture
//! times shifted so that rounds follow each other with a pause longer than
//! every timeout, until at least `RST_BENCH_PACKETS` packets (default
//! 500,000). Then, in one run:
//!
//! * (a) a bare libpcap loop: `next_packet` until the end of the file;
//! * (b) the same loop feeding every frame to [`Pipeline::frame`] with an
//!   output that only counts, so (b) is the whole daemon minus its sockets;
//! * (c) `tshark -n -q -r FILE -z rtp,streams`, wall time.
//!
//! (a) and (b) run in turns, five of each, and the best of each counts: a
//! busy stretch of the machine slows both alike instead of one of them; (c)
//! runs once, process start included. Without the captures the benchmark says so and does nothing.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{build, load, timestamp, Frame};

use rst_load::results::{self, Figure};
use rst_proto::Direction;
use tap_daemon::packet::LinkType;
use tap_daemon::pipeline::{CallStart, Output, Pipeline, PipelineConfig};
use tap_daemon::sip::CallKey;

/// Ethernet captures with SIP calls and their RTP (one of RTP alone, one of
/// SIP over TCP), none holding the same call as another: VLAN and QinQ
/// tags, IPv4 fragments, G.711, G.722, G.729, opus, ZRTP, RFC 2833 DTMF,
/// comfort noise, heavy loss.
const SOURCES: &[&str] = &[
    "derived-ipv4frag__SIP_CALL_RTP_G711.pcap",
    "derived-vlan100__rtp-protocol.pcap",
    "derived-qinq200-10__sip-over-tcp.pcap",
    "sip-rtp-g711.pcap",
    "sip-rtp-g722.pcap",
    "sip-rtp-g729a.pcap",
    "SIP_DTMF2.cap",
    "rtpproxy_lost.a.rtp.pcap",
    "b2bua-asterisk.pcapng",
    "invite-opus-bye.pcap",
    "Asterisk_ZFONE_XLITE.pcap",
];

/// Runs of (a) and (b), in turns; the best of each counts.
const RUNS: usize = 5;

/// An output that only counts what the pipeline tells it.
#[derive(Debug, Default)]
struct Count {
    started: u64,
    rtp: u64,
    rtp_bytes: u64,
    ended: u64,
}

impl Output for Count {
    fn call_started(&mut self, _call: &CallStart) {
        self.started += 1;
    }
    fn rtp(&mut self, _key: CallKey, _direction: Direction, packet: &[u8], _at: Duration) {
        self.rtp += 1;
        self.rtp_bytes += packet.len() as u64;
    }
    fn call_ended(&mut self, _key: CallKey) {
        self.ended += 1;
    }
}

/// (a): read every packet, touch its bytes, nothing else.
fn bare_read(path: &Path) -> (u64, Duration) {
    let started = Instant::now();
    let mut cap = pcap::Capture::from_file(path).expect("open the capture");
    let mut packets = 0u64;
    let mut bytes = 0u64;
    loop {
        match cap.next_packet() {
            Ok(packet) => {
                packets += 1;
                bytes += u64::from(packet.header.caplen) + u64::from(packet.data[0]);
            }
            Err(pcap::Error::NoMorePackets) => break,
            Err(e) => panic!("reading the capture: {e}"),
        }
    }
    std::hint::black_box(bytes);
    (packets, started.elapsed())
}

/// (b): the offline capture loop of `capture::replay`, minus the sockets.
fn pipeline(path: &Path) -> (u64, Duration, Count, Pipeline) {
    let started = Instant::now();
    let mut cap = pcap::Capture::from_file(path).expect("open the capture");
    let link = LinkType(cap.get_datalink().0 as u32);
    let mut pipeline = Pipeline::new(PipelineConfig::default());
    let mut out = Count::default();
    let mut packets = 0u64;
    let mut last = Duration::ZERO;
    loop {
        match cap.next_packet() {
            Ok(packet) => {
                packets += 1;
                last = timestamp(packet.header);
                pipeline.frame(link, last, packet.data, &mut out);
            }
            Err(pcap::Error::NoMorePackets) => break,
            Err(e) => panic!("reading the capture: {e}"),
        }
    }
    pipeline.finish(last, &mut out);
    (packets, started.elapsed(), out, pipeline)
}

/// (c): tshark's RTP stream analysis; its wall time and the streams it listed.
fn tshark(path: &Path) -> Option<(Duration, usize)> {
    let started = Instant::now();
    let output = Command::new("tshark")
        .args(["-n", "-q", "-r"])
        .arg(path)
        .args(["-z", "rtp,streams"])
        .output()
        .ok()?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        eprintln!(
            "tshark failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        return None;
    }
    // Stream lines carry the SSRC as 0x........
    let streams = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains(" 0x"))
        .count();
    Some((elapsed, streams))
}

fn rate(packets: u64, time: Duration) -> f64 {
    packets as f64 / time.as_secs_f64()
}

fn human(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2} M", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.0} k", rate / 1e3)
    } else {
        format!("{rate:.0} ")
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and
    // then there is nothing to check beyond the build.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = std::env::var_os("RST_BENCH_CAPTURES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/captures"),
        PathBuf::from,
    );
    let target: u64 = std::env::var("RST_BENCH_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let sources: Vec<Vec<Frame>> = SOURCES
        .iter()
        .filter_map(|name| load(&dir.join(name)))
        .filter(|frames| !frames.is_empty())
        .collect();
    if sources.is_empty() {
        println!(
            "no captures in {} (set RST_BENCH_CAPTURES): nothing to measure",
            dir.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let file = tmp.path().join("large.pcap");
    let started = Instant::now();
    let written = build(&sources, target, &file);
    let size = std::fs::metadata(&file).map_or(0, |m| m.len());
    println!(
        "capture: {written} packets, {:.0} MB, from {} captures of {} ({:.1} s to write)",
        size as f64 / 1e6,
        sources.len(),
        dir.display(),
        started.elapsed().as_secs_f64()
    );

    // Warm the page cache, then RUNS turns of (a) and (b), the best of each.
    bare_read(&file);
    let mut bare = Duration::MAX;
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..RUNS {
        let (packets, time) = bare_read(&file);
        assert_eq!(packets, written);
        bare = bare.min(time);
        let (packets, time, out, p) = pipeline(&file);
        assert_eq!(packets, written);
        best = best.min(time);
        last = Some((out, p));
    }
    let (out, p) = last.expect("at least one run");
    let s = p.stats();
    println!(
        "pipeline: {} calls started, {} ended, {} RTP packets forwarded ({:.0} MB), \
         {} SIP messages, {} RTP unmatched, {} duplicates, {} not audio",
        out.started,
        out.ended,
        out.rtp,
        out.rtp_bytes as f64 / 1e6,
        s.sip_messages,
        s.rtp_unmatched,
        s.rtp_duplicates,
        s.rtp_not_audio
    );
    assert!(
        out.rtp > 0,
        "the pipeline forwarded nothing: not a benchmark"
    );

    let (a, b) = (rate(written, bare), rate(written, best));
    println!(
        "(a) bare libpcap read:      {:>7.3} s  {}packets/s",
        bare.as_secs_f64(),
        human(a)
    );
    println!(
        "(b) tap_daemon pipeline:    {:>7.3} s  {}packets/s",
        best.as_secs_f64(),
        human(b)
    );
    let mut figures = vec![
        Figure::new("packets", written as f64, "packets"),
        Figure::new("bare_libpcap_read", a, "packets/s"),
        Figure::new("pipeline", b, "packets/s"),
        Figure::new("pipeline_ratio", b / a, "x bare libpcap read"),
    ];
    let tshark = tshark(&file);
    if let Some((time, _)) = tshark {
        figures.push(Figure::new(
            "tshark_rtp_streams",
            rate(written, time),
            "packets/s",
        ));
        figures.push(Figure::new(
            "tshark_ratio",
            b / rate(written, time),
            "x tshark",
        ));
    }
    match tshark {
        Some((time, streams)) => {
            let c = rate(written, time);
            println!(
                "(c) tshark -z rtp,streams:  {:>7.3} s  {}packets/s ({streams} RTP streams listed)",
                time.as_secs_f64(),
                human(c)
            );
            println!(
                "tap_daemon offline pipeline: {}packets/s = {:.2} x bare libpcap read ({}/s) = {:.0} x tshark rtp,streams ({}/s)",
                human(b),
                b / a,
                human(a).trim_end(),
                b / c,
                human(c).trim_end()
            );
        }
        None => {
            println!("(c) tshark not available: skipped");
            println!(
                "tap_daemon offline pipeline: {}packets/s = {:.2} x bare libpcap read ({}/s)",
                human(b),
                b / a,
                human(a).trim_end()
            );
        }
    }
    match results::record("tap_daemon/pipeline", &figures) {
        Ok(path) => println!("figures appended to {}", path.display()),
        Err(error) => println!("figures not kept: {error}"),
    }
}
