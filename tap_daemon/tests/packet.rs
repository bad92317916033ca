//! The packet layer against the real captures in `../shared/captures/`, read
//! with real libpcap, checked against tshark's own analysis.
//!
//! Per capture: the number of UDP datagrams (tshark: frames matching
//! `udp and not icmp and not icmpv6`, a reassembled datagram counted once) and
//! the number of SIP messages (tshark: occurrences of `sip.CSeq.method`; here:
//! UDP payloads that start with a SIP start line, plus start lines in each
//! reassembled TCP byte stream). The numbers are hard-coded below and, when
//! tshark is installed, recomputed by tshark and compared too.
//!
//! The captures live outside the repository (`../shared/captures`, or
//! `$RST_CAPTURES`); without them every test here says SKIPPED and passes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tap_daemon::packet::{Counters, Datagram, Decoder, ErrorKind, LinkType, Transport};

/// tshark's numbers per capture: (file, UDP datagrams, SIP messages over UDP,
/// SIP messages over TCP). Port 6060 of `sip_ipv4_tcp_fragmented.pcap` is
/// decoded as SIP (`-d tcp.port==6060,sip`), as SOURCES.md says.
const EXPECTED: &[(&str, usize, usize, usize)] = &[
    ("Asterisk_ZFONE_XLITE.pcap", 1042, 27, 0),
    ("DTMFsipinfo.pcap", 32, 32, 0),
    ("SIP_CALL_RTP_G711.pcap", 3583, 14, 0),
    ("SIP_DTMF2.cap", 1360, 29, 0),
    ("b2bua-asterisk.pcapng", 416, 60, 0),
    (
        "derived-concurrent3__SIP_CALL_RTP_G711+sip-rtp-g722+SIP_DTMF2.pcap",
        5363,
        36,
        0,
    ),
    ("derived-ipv4frag__SIP_CALL_RTP_G711.pcap", 3583, 14, 0),
    ("derived-qinq200-10__sip-over-tcp.pcap", 68, 0, 7),
    ("derived-vlan100__rtp-protocol.pcap", 259, 9, 0),
    ("erspan_sip_ipv4_udp.pcapng", 140, 140, 0),
    (
        "generated-sipp-uac_pcap-vs-uas-rtp_echo-loopback.pcapng",
        498,
        6,
        0,
    ),
    ("invite-opus-bye.pcap", 311, 7, 0),
    ("ipip.pcap", 0, 0, 4),
    ("ipip0.pcap", 8, 8, 0),
    ("ipv6frag.pcap", 32, 32, 0),
    ("register-invite-reinvite-bye.pcap", 230, 12, 0),
    ("rtp-protocol.pcap", 259, 9, 0),
    ("rtpproxy_lost.a.rtp.pcap", 244, 0, 0),
    ("sip-over-tcp.pcap", 68, 0, 7),
    ("sip-rtp-g711.pcap", 852, 10, 0),
    ("sip-rtp-g722.pcap", 433, 6, 0),
    ("sip-rtp-g729a.pcap", 433, 6, 0),
    ("sip_ipv4_tcp_fragmented.pcap", 0, 0, 406),
    ("sip_ipv4_tcp_retrans.pcap", 4, 4, 4),
    ("sip_ipv6_udp.pcap", 6, 6, 0),
    ("sipp-branch-scenario.pcapng", 8989, 8989, 0),
    ("speech_8k_ulaw.pcap", 835, 0, 0),
];

fn captures_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("RST_CAPTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/captures"));
    if dir.join("SOURCES.md").exists() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: no captures at {} (set RST_CAPTURES)",
            dir.display()
        );
        None
    }
}

struct Capture {
    link: LinkType,
    frames: Vec<(Duration, Vec<u8>)>,
}

/// Read a capture with libpcap (pcap or pcapng, by content).
fn read(path: &Path) -> Capture {
    let mut cap =
        pcap::Capture::from_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let link = LinkType(cap.get_datalink().0 as u32);
    let mut frames = Vec::new();
    loop {
        match cap.next_packet() {
            Ok(p) => {
                let ts = Duration::from_secs(p.header.ts.tv_sec.max(0) as u64)
                    + Duration::from_micros(p.header.ts.tv_usec.clamp(0, 999_999) as u64);
                frames.push((ts, p.data.to_vec()));
            }
            Err(pcap::Error::NoMorePackets) => break,
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }
    Capture { link, frames }
}

#[derive(Debug, Default)]
struct Summary {
    udp: usize,
    udp_sip: usize,
    tcp_sip: usize,
    tcp_streams: BTreeMap<(SocketAddr, SocketAddr), Vec<u8>>,
    counters: Counters,
}

fn decode(cap: &Capture) -> Summary {
    let mut decoder = Decoder::default();
    let mut s = Summary::default();
    let take = |d: &Datagram<'_>, s: &mut Summary| match d.transport {
        Transport::Udp => {
            s.udp += 1;
            if starts_sip(&d.payload) {
                s.udp_sip += 1;
            }
        }
        Transport::Tcp => s
            .tcp_streams
            .entry((d.src, d.dst))
            .or_default()
            .extend_from_slice(&d.payload),
    };
    let mut last = Duration::ZERO;
    for (ts, frame) in &cap.frames {
        let mut out = Vec::new();
        let _ = decoder.decode(cap.link, *ts, frame, &mut out);
        for d in &out {
            take(d, &mut s);
        }
        last = *ts;
    }
    let mut out = Vec::new();
    decoder.finish(last, &mut out);
    for d in &out {
        take(d, &mut s);
    }
    s.tcp_sip = s.tcp_streams.values().map(|b| sip_start_lines(b)).sum();
    s.counters = decoder.counters().clone();
    s
}

/// A SIP request line (`METHOD uri SIP/2.0`) or status line (`SIP/2.0 NNN ...`).
fn is_start_line(line: &[u8]) -> bool {
    if let Some(rest) = line.strip_prefix(b"SIP/2.0 ") {
        return rest.len() >= 3 && rest[..3].iter().all(u8::is_ascii_digit);
    }
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !method.is_empty()
        && method.iter().all(u8::is_ascii_uppercase)
        && !uri.is_empty()
        && version == b"SIP/2.0"
}

fn starts_sip(payload: &[u8]) -> bool {
    let line = payload.split(|&b| b == b'\n').next().unwrap_or_default();
    is_start_line(line.strip_suffix(b"\r").unwrap_or(line))
}

fn sip_start_lines(stream: &[u8]) -> usize {
    stream
        .split(|&b| b == b'\n')
        .filter(|l| is_start_line(l.strip_suffix(b"\r").unwrap_or(l)))
        .count()
}

/// tshark's counts for one capture, or None when tshark is not installed.
fn tshark_counts(path: &Path) -> Option<(usize, usize, usize)> {
    let extra: &[&str] = if path.ends_with("sip_ipv4_tcp_fragmented.pcap") {
        &["-d", "tcp.port==6060,sip"]
    } else {
        &[]
    };
    let run = |filter: &str, field: &str| -> Option<usize> {
        let out = Command::new("tshark")
            .args(["-n", "-r"])
            .arg(path)
            .args(extra)
            .args([
                "-Y",
                filter,
                "-T",
                "fields",
                "-e",
                field,
                "-E",
                "occurrence=a",
                "-E",
                "aggregator=,",
            ])
            .output()
            .ok()?;
        assert!(out.status.success(), "tshark failed on {}", path.display());
        let text = String::from_utf8_lossy(&out.stdout);
        Some(
            text.lines()
                .flat_map(|l| l.split(','))
                .filter(|f| !f.is_empty())
                .count(),
        )
    };
    let udp = run("udp and not icmp and not icmpv6", "frame.number")?;
    let udp_sip = run("sip and udp", "sip.CSeq.method")?;
    let tcp_sip = run("sip and tcp", "sip.CSeq.method")?;
    Some((udp, udp_sip, tcp_sip))
}

#[test]
fn every_capture_matches_tshark() {
    let Some(dir) = captures_dir() else { return };
    let mut tshark_seen = false;
    let mut failures = Vec::new();
    for &(file, udp, udp_sip, tcp_sip) in EXPECTED {
        let path = dir.join(file);
        let cap = read(&path);
        let s = decode(&cap);
        let got = (s.udp, s.udp_sip, s.tcp_sip);
        eprintln!(
            "{file}: link {} frames {} -> udp {} sip/udp {} sip/tcp {} (expected {udp} {udp_sip} {tcp_sip}); \
             fragments {} reassembled {} tunnels {} tcp bytes {} retransmitted {} gaps {}; errors {:?}",
            cap.link.0,
            cap.frames.len(),
            s.udp,
            s.udp_sip,
            s.tcp_sip,
            s.counters.fragments,
            s.counters.reassembled,
            s.counters.tunnels,
            s.counters.tcp_bytes,
            s.counters.tcp_retransmitted,
            s.counters.tcp_gaps,
            s.counters.errors().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>(),
        );
        if got != (udp, udp_sip, tcp_sip) {
            failures.push(format!(
                "{file}: got {got:?}, tshark says {:?}",
                (udp, udp_sip, tcp_sip)
            ));
        }
        // Nothing in these captures is malformed: every frame either decodes
        // or is something other than UDP/TCP over IP.
        for kind in [
            ErrorKind::Truncated,
            ErrorKind::UnsupportedLink,
            ErrorKind::BadIpv4,
            ErrorKind::BadIpv6,
            ErrorKind::BadUdp,
            ErrorKind::BadTcp,
            ErrorKind::BadFragment,
            ErrorKind::FragmentOverlap,
            ErrorKind::UnsupportedTunnel,
        ] {
            if s.counters.error(kind) != 0 {
                failures.push(format!("{file}: {} {kind} errors", s.counters.error(kind)));
            }
        }
        if let Some(t) = tshark_counts(&path) {
            tshark_seen = true;
            if t != (udp, udp_sip, tcp_sip) {
                failures.push(format!(
                    "{file}: table says {:?}, tshark now says {t:?}",
                    (udp, udp_sip, tcp_sip)
                ));
            }
        }
    }
    if !tshark_seen {
        eprintln!(
            "SKIPPED: tshark not installed, checked against the hard-coded tshark numbers only"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn summary_of(file: &str) -> Option<(Capture, Summary)> {
    let dir = captures_dir()?;
    let cap = read(&dir.join(file));
    let s = decode(&cap);
    Some((cap, s))
}

#[test]
fn ipv4_fragments_reassembled_out_of_order() {
    let Some((cap, s)) = summary_of("derived-ipv4frag__SIP_CALL_RTP_G711.pcap") else {
        return;
    };
    assert_eq!(cap.link, LinkType::ETHERNET);
    // 14 SIP datagrams split into 32 fragment frames; the first INVITE's in reverse.
    assert_eq!(s.counters.fragments, 32);
    assert_eq!(s.counters.reassembled, 14);
    assert_eq!(s.counters.fragments_expired, 0);
    assert_eq!(s.udp_sip, 14);
    // The same SIP payloads as the unfragmented original, in the same order.
    let (orig_cap, _) = summary_of("SIP_CALL_RTP_G711.pcap").unwrap();
    assert_eq!(sip_payloads(&cap), sip_payloads(&orig_cap));
}

fn sip_payloads(cap: &Capture) -> Vec<Vec<u8>> {
    let mut d = Decoder::default();
    let mut all = Vec::new();
    for (ts, f) in &cap.frames {
        let mut out = Vec::new();
        let _ = d.decode(cap.link, *ts, f, &mut out);
        all.extend(
            out.iter()
                .filter(|d| starts_sip(&d.payload))
                .map(|d| d.payload.to_vec()),
        );
    }
    all
}

#[test]
fn ipv6_fragments_over_linux_cooked() {
    let Some((cap, s)) = summary_of("ipv6frag.pcap") else {
        return;
    };
    assert_eq!(cap.link, LinkType::LINUX_SLL);
    assert_eq!(s.counters.fragments, 4);
    assert_eq!(s.counters.reassembled, 2);
    assert_eq!(s.udp_sip, 32);
}

#[test]
fn qinq_and_vlan() {
    let Some((_, s)) = summary_of("derived-qinq200-10__sip-over-tcp.pcap") else {
        return;
    };
    let Some((_, plain)) = summary_of("sip-over-tcp.pcap") else {
        return;
    };
    assert_eq!(s.tcp_sip, 7);
    assert_eq!(
        s.tcp_streams, plain.tcp_streams,
        "QinQ changes nothing above the link layer"
    );
    let Some((_, v)) = summary_of("derived-vlan100__rtp-protocol.pcap") else {
        return;
    };
    assert_eq!((v.udp, v.udp_sip), (259, 9));
}

#[test]
fn sip_over_tcp_segmented_on_port_6060() {
    let Some((_, s)) = summary_of("sip_ipv4_tcp_fragmented.pcap") else {
        return;
    };
    assert_eq!(s.tcp_sip, 406);
    assert!(s
        .tcp_streams
        .keys()
        .any(|(a, b)| a.port() == 6060 || b.port() == 6060));
    // Every message is whole: each stream parses as back-to-back messages
    // framed by Content-Length.
    for (key, bytes) in &s.tcp_streams {
        let n = frame_by_content_length(bytes).unwrap_or_else(|e| panic!("{key:?}: {e}"));
        assert_eq!(n, sip_start_lines(bytes), "{key:?}");
    }
}

/// A minimal SIP framer for the test: headers to a blank line, then
/// Content-Length bytes. Counts messages; fails on anything left over.
fn frame_by_content_length(mut b: &[u8]) -> Result<usize, String> {
    let mut n = 0;
    loop {
        while let Some(rest) = b.strip_prefix(b"\r\n") {
            b = rest; // keep-alives
        }
        if b.is_empty() {
            return Ok(n);
        }
        let end = b
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("no end of headers after {n} messages"))?;
        let head = String::from_utf8_lossy(&b[..end]);
        let len = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                let name = name.trim();
                (name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l"))
                    .then(|| value.trim().parse::<usize>().ok())
                    .flatten()
            })
            .unwrap_or(0);
        let total = end + 4 + len;
        if total > b.len() {
            return Err(format!(
                "message {n} claims {len} body bytes, {} left",
                b.len() - end - 4
            ));
        }
        b = &b[total..];
        n += 1;
    }
}

#[test]
fn sip_over_tcp_retransmitted_once_each() {
    let Some((cap, s)) = summary_of("sip_ipv4_tcp_retrans.pcap") else {
        return;
    };
    assert_eq!(cap.link, LinkType::LINUX_SLL);
    assert_eq!(s.tcp_sip, 4);
    assert!(
        s.counters.tcp_retransmitted > 0,
        "the capture has retransmissions"
    );
    // The SIP connection's two directions (the rest is TLS and other noise)
    // frame exactly: a retransmitted segment was not delivered twice.
    let sip: Vec<_> = s
        .tcp_streams
        .iter()
        .filter(|((a, b), _)| a.port() == 5060 || b.port() == 5060)
        .collect();
    assert_eq!(sip.len(), 2);
    for (key, bytes) in sip {
        let n = frame_by_content_length(bytes).unwrap_or_else(|e| panic!("{key:?}: {e}"));
        assert_eq!(n, 2, "{key:?}");
    }
}

#[test]
fn pppoe_ipip_raw_erspan_ipv6() {
    let Some((_, s)) = summary_of("DTMFsipinfo.pcap") else {
        return;
    };
    assert_eq!((s.udp, s.udp_sip), (32, 32));
    let Some((_, s)) = summary_of("ipip.pcap") else {
        return;
    };
    assert_eq!(s.tcp_sip, 4);
    assert_eq!(s.counters.tunnels, 2, "half of the frames are IP-in-IP");
    let Some((cap, s)) = summary_of("ipip0.pcap") else {
        return;
    };
    assert_eq!(
        cap.link,
        LinkType::RAW_12,
        "libpcap reports DLT_RAW as 12 here"
    );
    assert_eq!((s.udp, s.udp_sip), (8, 8));
    let Some((_, s)) = summary_of("erspan_sip_ipv4_udp.pcapng") else {
        return;
    };
    assert_eq!((s.udp, s.udp_sip), (140, 140));
    assert_eq!(s.counters.tunnels, 140);
    let Some((_, s)) = summary_of("sip_ipv6_udp.pcap") else {
        return;
    };
    assert_eq!((s.udp, s.udp_sip), (6, 6));
}

/// Every frame of every capture cut at every length, and with random byte
/// flips: decoding must never panic, whatever it makes of them. One decoder
/// per capture, so the damaged pieces also meet in the fragment and stream
/// tables.
#[test]
fn truncated_and_corrupted_frames_never_panic() {
    let Some(dir) = captures_dir() else { return };
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut decoded = 0u64;
    for &(file, ..) in EXPECTED {
        let cap = read(&dir.join(file));
        let mut d = Decoder::default();
        for (ts, frame) in &cap.frames {
            for len in 0..frame.len() {
                let mut out = Vec::new();
                let _ = d.decode(cap.link, *ts, &frame[..len], &mut out);
                decoded += 1;
            }
            for _ in 0..4 {
                let mut g = frame.clone();
                for _ in 0..=(rand() % 4) {
                    if g.is_empty() {
                        break;
                    }
                    let at = rand() as usize % g.len();
                    g[at] = rand() as u8;
                }
                let mut out = Vec::new();
                let _ = d.decode(cap.link, *ts, &g, &mut out);
                decoded += 1;
            }
        }
        let mut out = Vec::new();
        d.finish(Duration::MAX, &mut out);
    }
    eprintln!("{decoded} damaged frames decoded without a panic");
}
