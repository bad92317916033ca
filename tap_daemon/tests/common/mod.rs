//! What the capture-to-recording tests share: a real receiver (udp_server) in
//! this process, the daemon's capture loop on a capture file, tshark's view of
//! the same file, and the model of what the receiver must have written for a
//! direction, computed from tshark's RTP payloads.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use rst_codec::Codec;
use tap_daemon::capture::{self, Summary};
use tap_daemon::config::Settings;

// ---------------------------------------------------------------- receiver

/// A real receiver on 127.0.0.1, on a thread and runtime of its own.
pub struct Receiver {
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    running: udp_server::Running,
}

impl Receiver {
    /// `rtp_ports`: the receiver's RTP port range, distinct per test so tests
    /// run in parallel.
    pub fn start(rtp_ports: &str) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let settings = udp_server::Settings {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            record_dir: Some(dir.path().to_owned()),
            rtp_ports: Some(rtp_ports.parse().unwrap()),
            ..udp_server::Settings::default()
        };
        let running = udp_server::Running::start(settings.resolve().unwrap()).unwrap();
        Receiver {
            addr: running.addr(),
            dir,
            running,
        }
    }

    /// Waits until `count` records exist, stops the receiver, returns them
    /// keyed by Call-ID (or UUID when there is none).
    pub fn records(&mut self, count: usize) -> HashMap<String, serde_json::Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while records_in(self.dir.path()).len() < count && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // The stop reads what the tap sent before it and ends every call still
        // open: a call beyond the expected count has its record too.
        self.running.stop().unwrap();
        let records = records_in(self.dir.path());
        assert_eq!(
            records.len(),
            count,
            "records in {}",
            self.dir.path().display()
        );
        records
            .into_iter()
            .map(|r| {
                let key = r["call_id"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| r["uuid"].as_str().unwrap().to_owned());
                (key, r)
            })
            .collect()
    }
}

fn records_in(dir: &Path) -> Vec<serde_json::Value> {
    let mut found = Vec::new();
    for day in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !day.path().is_dir() {
            continue;
        }
        for file in std::fs::read_dir(day.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = file.path();
            if path.extension().is_some_and(|e| e == "json") {
                found.push(serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap());
            }
        }
    }
    found
}

// ---------------------------------------------------------------- captures and tshark

/// The capture `name` in `shared/captures/`, or `None` (and SKIPPED printed)
/// when it or tshark is missing.
pub fn capture(name: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/captures")
        .join(name);
    if !path.is_file() {
        eprintln!("SKIPPED: {} not found", path.display());
        return None;
    }
    if Command::new("tshark").arg("-v").output().is_err() {
        eprintln!("SKIPPED: tshark is not installed (apt-get install tshark)");
        return None;
    }
    Some(path)
}

/// Runs tshark and returns its standard output; a missing tshark fails the
/// test loudly (`scripts/setup.sh --test` installs it).
pub fn tshark(args: &[&str]) -> String {
    let out = Command::new("tshark")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("tshark must be installed (scripts/setup.sh --test installs it)");
    assert!(
        out.status.success(),
        "tshark {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `tshark -z rtp,streams`: packets per (source, destination). `extra` are
/// more tshark options (`-o rtp.heuristic_rtp:TRUE` for RTP no SDP announced).
pub fn stream_packets(file: &Path, extra: &[&str]) -> HashMap<(String, String), u64> {
    let mut args = vec!["-n", "-r", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-q", "-z", "rtp,streams"]);
    let text = tshark(&args);
    let mut streams = HashMap::new();
    for line in text.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        let Some(pct) = t
            .iter()
            .position(|w| w.starts_with('(') && w.ends_with("%)"))
        else {
            continue;
        };
        let packets: u64 = t[pct - 2].parse().unwrap();
        let key = (format!("{}:{}", t[2], t[3]), format!("{}:{}", t[4], t[5]));
        *streams.entry(key).or_default() += packets;
    }
    streams
}

/// One RTP packet as tshark decodes it.
#[derive(Debug, Clone)]
pub struct RtpRow {
    /// Frame number in the capture.
    pub frame: u64,
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
    pub pt: u8,
    pub payload: Vec<u8>,
    /// tshark took it for SRTP (its stream was set up by a ZRTP handshake):
    /// `payload` is empty, the ciphertext is not audio.
    pub srtp: bool,
    /// RFC 4733: event id and end bit.
    pub event: Option<(u8, bool)>,
}

/// The RTP packets tshark decodes, per (source, destination), in capture
/// order. `extra` as for [`stream_packets`].
pub fn rtp_packets(file: &Path, extra: &[&str]) -> HashMap<(String, String), Vec<RtpRow>> {
    let mut args = vec!["-n", "-r", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-Y", "rtp", "-T", "fields"]);
    for field in [
        "frame.number",
        "ip.src",
        "udp.srcport",
        "ip.dst",
        "udp.dstport",
        "rtp.ssrc",
        "rtp.seq",
        "rtp.timestamp",
        "rtp.p_type",
        "rtp.payload",
        "srtp.enc_payload",
        "rtpevent.event_id",
        "rtpevent.end_of_event",
    ] {
        args.extend_from_slice(&["-e", field]);
    }
    let text = tshark(&args);
    let mut flows: HashMap<(String, String), Vec<RtpRow>> = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 13 || f[6].is_empty() {
            // A datagram tshark marks as RTP but cannot decode (4 bytes), or
            // ZRTP, which it dissects beneath RTP but is not.
            continue;
        }
        flows
            .entry((format!("{}:{}", f[1], f[2]), format!("{}:{}", f[3], f[4])))
            .or_default()
            .push(RtpRow {
                frame: f[0].parse().unwrap(),
                ssrc: u32::from_str_radix(f[5].trim_start_matches("0x"), 16).unwrap(),
                seq: f[6].parse().unwrap(),
                ts: f[7].parse().unwrap(),
                pt: f[8].parse().unwrap(),
                payload: hex(f[9]),
                srtp: !f[10].is_empty(),
                event: (!f[11].is_empty()).then(|| {
                    (
                        f[11].parse().unwrap(),
                        f[12] == "1" || f[12].eq_ignore_ascii_case("true"),
                    )
                }),
            });
    }
    flows
}

/// Per Call-ID, the payload types its SDPs map with `a=rtpmap`, in capture
/// order, the first mapping of a number winning (as a session keeps it,
/// RFC 3264 8.3.2): number, encoding name, clock rate.
pub fn sdp_payload_types(file: &Path) -> HashMap<String, Vec<(u8, String, u32)>> {
    let text = tshark(&[
        "-n",
        "-r",
        file.to_str().unwrap(),
        "-Y",
        "sdp",
        "-T",
        "fields",
        "-E",
        "aggregator=|",
        "-e",
        "sip.Call-ID",
        "-e",
        "sdp.media_attr",
    ]);
    let mut calls: HashMap<String, Vec<(u8, String, u32)>> = HashMap::new();
    for line in text.lines() {
        let Some((call_id, attributes)) = line.split_once('\t') else {
            continue;
        };
        let known = calls.entry(call_id.to_owned()).or_default();
        for attribute in attributes.split('|') {
            let Some(map) = attribute.strip_prefix("rtpmap:") else {
                continue;
            };
            let Some((pt, encoding)) = map.split_once(' ') else {
                continue;
            };
            let mut parts = encoding.split('/');
            let (Ok(pt), Some(name), Some(Ok(clock))) = (
                pt.parse::<u8>(),
                parts.next(),
                parts.next().map(str::parse::<u32>),
            ) else {
                continue;
            };
            if !known.iter().any(|(p, ..)| *p == pt) {
                known.push((pt, name.to_owned(), clock));
            }
        }
    }
    calls
}

/// Bytes of tshark's hex (with or without `:` separators).
pub fn hex(text: &str) -> Vec<u8> {
    let digits: String = text.chars().filter(char::is_ascii_hexdigit).collect();
    (0..digits.len() / 2)
        .map(|i| u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// The codec of a payload type as the receiver sees it: dynamic ones (35 and
/// up, those the daemon declares) from `sdp` (number, encoding name, clock,
/// as SDP's rtpmap says), static ones by number (RFC 3551).
pub fn codec_of(pt: u8, sdp: &[(u8, String, u32)]) -> Codec {
    match sdp.iter().find(|(p, ..)| *p == pt && pt >= 35) {
        Some((_, name, clock)) => Codec::from_encoding_name(name, *clock),
        None => Codec::for_payload_type(pt, 8000),
    }
}

/// One WAV file of a direction: its rate and samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub rate: u32,
    pub samples: Vec<i16>,
}

/// What the receiver must have written for one direction, one [`Segment`]
/// per WAV file, modelled on its rules:
///
/// * packets are put in sequence order per SSRC (repeats dropped); a new SSRC
///   starts a new run where the previous one's audio ended;
/// * each packet is placed by its timestamp, so that a lost packet is silence
///   of its length; a timestamp that goes backwards or jumps by more than a
///   second per packet continues where the audio ended;
/// * a change of payload type starts a fresh decoder; a change of sample rate
///   starts a new WAV file, whose time zero is its first packet.
///
/// `events` are payload types that are DTMF, not audio; `codec` names each
/// audio payload type's codec.
pub fn expected_segments(
    rows: &[RtpRow],
    events: &[u8],
    codec: impl Fn(u8) -> Codec,
) -> Vec<Segment> {
    // Runs of one SSRC, each in sequence order without repeats.
    let mut runs: Vec<Vec<(u64, &RtpRow)>> = Vec::new();
    let mut highest: Option<u64> = None;
    for row in rows {
        let new_run = runs
            .last()
            .map_or(true, |run| run.last().unwrap().1.ssrc != row.ssrc);
        if new_run {
            runs.push(Vec::new());
            highest = None;
        }
        let ext = match highest {
            None => u64::from(row.seq) + (1 << 16),
            Some(h) => {
                let c = (h & !0xFFFF) | u64::from(row.seq);
                [c.wrapping_sub(1 << 16), c, c + (1 << 16)]
                    .into_iter()
                    .min_by_key(|&x| x.abs_diff(h))
                    .unwrap()
            }
        };
        highest = Some(highest.map_or(ext, |h| h.max(ext)));
        runs.last_mut().unwrap().push((ext, row));
    }
    for run in &mut runs {
        run.sort_by_key(|(ext, _)| *ext);
        run.dedup_by_key(|(ext, _)| *ext);
    }

    let mut segments: Vec<Segment> = Vec::new();
    let mut decoder: Option<(u8, rst_codec::Decoder)> = None;
    // Media time (seconds) where this direction's audio ends, and where the
    // current segment starts.
    let mut media_end = 0.0f64;
    let mut segment_start = 0.0f64;
    for run in runs {
        // Anchor: media time and timestamp of the run's first packet (the
        // receiver replays a file far faster than real time, so a new SSRC
        // anchors where the audio so far ends, not at its arrival).
        let mut anchor: Option<(f64, i64, i64, u64, u32)> = None; // at, ts0, last ts, last seq, clock
        for (ext, row) in run {
            let clock = codec(row.pt).rtp_clock_rate().unwrap_or(8000);
            let ts = i64::from(row.ts);
            let at = match anchor {
                Some((at0, ts0, last_ts, last_seq, c)) if c == clock => {
                    let cand = (last_ts & !0xFFFF_FFFF) | ts;
                    let ts = [cand - (1 << 32), cand, cand + (1 << 32)]
                        .into_iter()
                        .min_by_key(|x| x.abs_diff(last_ts))
                        .unwrap();
                    let packets = ext.saturating_sub(last_seq).max(1);
                    let step = ts - last_ts;
                    if step < 0 || step as f64 > f64::from(clock) * packets as f64 {
                        anchor = Some((media_end, ts, ts, ext, clock));
                        media_end
                    } else {
                        anchor = Some((at0, ts0, ts, ext, clock));
                        at0 + ((ts - ts0) as f64 / f64::from(clock)).max(0.0)
                    }
                }
                _ => {
                    anchor = Some((media_end, ts, ts, ext, clock));
                    media_end
                }
            };
            if events.contains(&row.pt) {
                continue;
            }
            let codec = codec(row.pt);
            let rate = codec
                .sample_rate()
                .unwrap_or_else(|| panic!("PT {} ({codec}) is not decodable", row.pt));
            if decoder.as_ref().map_or(true, |(pt, _)| *pt != row.pt) {
                decoder = Some((row.pt, rst_codec::Decoder::new(codec)));
            }
            let mut samples = Vec::new();
            decoder
                .as_mut()
                .unwrap()
                .1
                .decode(&row.payload, &mut samples)
                .unwrap_or_else(|e| panic!("frame {}: {e}", row.frame));
            if segments.last().map_or(true, |s| s.rate != rate) {
                segments.push(Segment {
                    rate,
                    samples: Vec::new(),
                });
                segment_start = at;
            }
            let out = &mut segments.last_mut().unwrap().samples;
            let position = ((at - segment_start) * f64::from(rate)).round() as usize;
            if position > out.len() {
                out.resize(position, 0);
            }
            out.extend_from_slice(&samples);
            media_end = at + samples.len() as f64 / f64::from(rate);
        }
    }
    segments
}

/// [`expected_segments`] for a direction with one static audio payload type
/// (and telephone-events): its rate and samples.
pub fn expected_samples(rows: &[RtpRow], events: &[u8]) -> (u32, Vec<i16>) {
    let mut segments = expected_segments(rows, events, |pt| Codec::for_payload_type(pt, 8000));
    assert_eq!(segments.len(), 1, "one segment expected");
    let segment = segments.remove(0);
    (segment.rate, segment.samples)
}

pub fn read_wav(path: &str) -> (u32, Vec<i16>) {
    let reader = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let rate = reader.spec().sample_rate;
    (rate, reader.into_samples().map(Result::unwrap).collect())
}

// ---------------------------------------------------------------- running

/// Runs the daemon's capture loop on `file` into `receiver`.
pub fn run(file: &Path, receiver: &Receiver, extra: &[&str]) -> Summary {
    use clap::Parser as _;
    let mut args = vec![
        "tap_daemon".to_owned(),
        "--pcap".to_owned(),
        file.to_str().unwrap().to_owned(),
        "--receiver".to_owned(),
        receiver.addr.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let config = Settings::parse_from(args).resolve().unwrap();
    capture::run(&config, &AtomicBool::new(false)).unwrap()
}

pub fn dtmf_digits(record: &serde_json::Value, direction: &str) -> String {
    record["dtmf"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["direction"] == direction)
        .map(|d| d["digit"].as_str().unwrap().to_owned())
        .collect()
}
