use std::net::{IpAddr, SocketAddr};

use super::*;

#[derive(Debug, Default)]
struct Collect {
    started: Vec<CallStart>,
    updated: Vec<CallStart>,
    rtp: Vec<(CallKey, Direction, Vec<u8>)>,
    ended: Vec<CallKey>,
}

impl Output for Collect {
    fn call_started(&mut self, call: &CallStart) {
        self.started.push(call.clone());
    }
    fn rtp(&mut self, key: CallKey, direction: Direction, packet: &[u8], _at: Duration) {
        self.rtp.push((key, direction, packet.to_vec()));
    }
    fn call_updated(&mut self, call: &CallStart) {
        self.updated.push(call.clone());
    }
    fn call_ended(&mut self, key: CallKey) {
        self.ended.push(key);
    }
}

/// Raw IPv4 / UDP frame.
fn udp(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    let src: SocketAddr = src.parse().unwrap();
    let dst: SocketAddr = dst.parse().unwrap();
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("v4 only")
    };
    let total = 20 + 8 + payload.len();
    let mut f = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0,
        0,
        64,
        17,
        0,
        0,
    ];
    f.extend_from_slice(&s.octets());
    f.extend_from_slice(&d.octets());
    f.extend_from_slice(&src.port().to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    RtpPacket {
        marker: false,
        payload_type: pt,
        sequence: seq,
        timestamp: ts,
        ssrc,
        payload,
    }
    .encode(&mut v);
    v
}

fn sip(first: &str, from: &str, to: &str, cseq: &str, sdp: Option<&str>) -> Vec<u8> {
    let body = sdp.unwrap_or("");
    let ctype = if sdp.is_some() {
        "Content-Type: application/sdp\r\n"
    } else {
        ""
    };
    format!(
        "{first}\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: abc:1@10.0.0.1\r\nCSeq: {cseq}\r\n{ctype}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn sdp(ip: &str, port: u16, pts: &str, maps: &str) -> String {
    format!("v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {pts}\r\n{maps}")
}

const A: &str = "<sip:1001@10.0.0.1>;tag=a";
const B: &str = "<sip:1002@10.0.0.2>";
const B_TAG: &str = "<sip:1002@10.0.0.2>;tag=b";

fn call_setup(p: &mut Pipeline, out: &mut Collect, answer: bool) {
    let offer = sdp(
        "10.0.0.1",
        4000,
        "8 13 101",
        "a=rtpmap:8 PCMA/8000\r\na=rtpmap:13 CN/8000\r\na=rtpmap:101 telephone-event/8000\r\n",
    );
    let answer_sdp = sdp(
        "10.0.0.2",
        6000,
        "8 13 101",
        "a=rtpmap:8 PCMA/8000\r\na=rtpmap:13 CN/8000\r\na=rtpmap:101 telephone-event/8000\r\n",
    );
    let t = Duration::from_secs(1);
    let inv = sip(
        "INVITE sip:1002@10.0.0.2 SIP/2.0",
        A,
        B,
        "1 INVITE",
        Some(&offer),
    );
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.1:5060", "10.0.0.2:5060", &inv),
        out,
    );
    let status = if answer {
        "SIP/2.0 200 OK"
    } else {
        "SIP/2.0 183 Session Progress"
    };
    let resp = sip(status, A, B_TAG, "1 INVITE", Some(&answer_sdp));
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.2:5060", "10.0.0.1:5060", &resp),
        out,
    );
}

/// One call offered and answered with `offer` / `answer` as the audio
/// m= line's profile and attributes; then one RTP packet each way.
fn srtp_call(offer: (&str, &str), answer: (&str, &str)) -> (Collect, PipelineStats) {
    let mut p = Pipeline::new(PipelineConfig::default());
    let mut out = Collect::default();
    let sdp_with = |ip: &str, port: u16, (proto, attrs): (&str, &str)| {
        sdp(ip, port, "0", attrs).replace("RTP/AVP", proto)
    };
    let t = Duration::from_secs(1);
    let inv = sip(
        "INVITE sip:1002@10.0.0.2 SIP/2.0",
        A,
        B,
        "1 INVITE",
        Some(&sdp_with("10.0.0.1", 4000, offer)),
    );
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.1:5060", "10.0.0.2:5060", &inv),
        &mut out,
    );
    let ok = sip(
        "SIP/2.0 200 OK",
        A,
        B_TAG,
        "1 INVITE",
        Some(&sdp_with("10.0.0.2", 6000, answer)),
    );
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.2:5060", "10.0.0.1:5060", &ok),
        &mut out,
    );
    for (from, to, ssrc) in [
        ("10.0.0.1:4000", "10.0.0.2:6000", 7),
        ("10.0.0.2:6000", "10.0.0.1:4000", 9),
    ] {
        let packet = rtp(0, 1, 160, ssrc, &[0x5a; 170]);
        p.frame(LinkType::RAW, t, &udp(from, to, &packet), &mut out);
    }
    let stats = p.stats().clone();
    (out, stats)
}

const KEYS: &str =
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n";

#[test]
fn srtp_negotiated_in_sdp_is_never_recorded_as_audio() {
    for (offer, answer) in [
        (("RTP/SAVP", KEYS), ("RTP/SAVP", KEYS)),
        (("UDP/TLS/RTP/SAVPF", ""), ("UDP/TLS/RTP/SAVPF", "")),
        // Best effort: keys on RTP/AVP, taken up by the answer.
        (("RTP/AVP", KEYS), ("RTP/AVP", KEYS)),
    ] {
        let (out, stats) = srtp_call(offer, answer);
        assert!(out.rtp.is_empty(), "{offer:?} {answer:?}: {:?}", out.rtp);
        assert_eq!(stats.rtp_encrypted, 2, "{offer:?} {answer:?}");
        assert_eq!(out.started.len(), 1, "the call itself is still recorded");
    }
    // Best effort declined: the answer has no keys, the audio is clear.
    let (out, stats) = srtp_call(("RTP/AVP", KEYS), ("RTP/AVP", ""));
    assert_eq!(out.rtp.len(), 2);
    assert_eq!(stats.rtp_encrypted, 0);
}

#[test]
fn answered_call_forwards_audio_and_dtmf_not_comfort_noise_or_repeats() {
    let mut p = Pipeline::new(PipelineConfig::default());
    let mut out = Collect::default();
    call_setup(&mut p, &mut out, true);
    assert_eq!(out.started.len(), 1);
    let start = &out.started[0];
    assert_eq!(start.caller, "1001");
    assert_eq!(start.callee, "1002");
    assert_eq!(
        start.extensions(&[], None),
        "pt101=telephone-event/8000:call-id=abc%3A1@10.0.0.1"
    );
    let key = start.key;
    let t = Duration::from_secs(2);
    let a = rtp(8, 1, 160, 7, &[0xd5; 160]);
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.1:4000", "10.0.0.2:6000", &a),
        &mut out,
    );
    // Seen again at a second tap point.
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.1:4000", "10.0.0.2:6000", &a),
        &mut out,
    );
    let cn = rtp(13, 2, 320, 7, &[0x40]);
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.1:4000", "10.0.0.2:6000", &cn),
        &mut out,
    );
    let ev = rtp(101, 1, 900, 9, &[1, 0x80, 0, 160]);
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.2:6000", "10.0.0.1:4000", &ev),
        &mut out,
    );
    let video = rtp(97, 3, 480, 7, &[1, 2, 3]);
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.1:4000", "10.0.0.2:6000", &video),
        &mut out,
    );
    assert_eq!(
        out.rtp,
        vec![
            (key, Direction::Read, a.clone()),
            (key, Direction::Write, ev)
        ]
    );
    assert_eq!(p.stats().rtp_duplicates, 1);
    assert_eq!(p.stats().rtp_comfort_noise, 1);
    assert_eq!(p.stats().rtp_not_audio, 2);

    let bye = sip("BYE sip:1002@10.0.0.2 SIP/2.0", A, B_TAG, "2 BYE", None);
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.1:5060", "10.0.0.2:5060", &bye),
        &mut out,
    );
    p.tick(t + Duration::from_secs(1), &mut out);
    assert_eq!(out.ended, vec![key]);
}

/// The last words of a call often arrive after its BYE (which travels
/// another way): RTP within the tracker's `rtp_linger` of the BYE is
/// forwarded and counted, then the call ends; later RTP matches nothing.
#[test]
fn rtp_in_flight_after_the_bye_is_forwarded_within_the_linger() {
    let mut p = Pipeline::new(PipelineConfig::default());
    let mut out = Collect::default();
    call_setup(&mut p, &mut out, true);
    let key = out.started[0].key;
    let t = Duration::from_secs(2);
    let bye = sip("BYE sip:1002@10.0.0.2 SIP/2.0", A, B_TAG, "2 BYE", None);
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.1:5060", "10.0.0.2:5060", &bye),
        &mut out,
    );
    assert!(out.ended.is_empty(), "ended before its RTP in flight");
    // 60 ms after the BYE, the caller's last packets.
    let mut late = Vec::new();
    for k in 0..3u16 {
        let packet = rtp(8, 10 + k, 160 * u32::from(10 + k), 7, &[0xd5; 160]);
        p.frame(
            LinkType::RAW,
            t + Duration::from_millis(20 + 20 * u64::from(k)),
            &udp("10.0.0.1:4000", "10.0.0.2:6000", &packet),
            &mut out,
        );
        late.push((key, Direction::Read, packet));
    }
    assert_eq!(out.rtp, late);
    assert_eq!(p.stats().rtp_after_bye, 3);
    assert!(out.ended.is_empty());
    // Past the linger: the call ends, and its RTP is no more its.
    let linger = PipelineConfig::default().tracker.rtp_linger;
    let after = rtp(8, 20, 3200, 7, &[0xd5; 160]);
    p.frame(
        LinkType::RAW,
        t + linger,
        &udp("10.0.0.1:4000", "10.0.0.2:6000", &after),
        &mut out,
    );
    assert_eq!(out.ended, vec![key]);
    assert_eq!(out.rtp.len(), 3, "RTP after the linger was forwarded");
    assert_eq!(p.stats().rtp_unmatched, 1);
    assert_eq!(p.stats().calls_ended, 1);
}

#[test]
fn early_media_starts_the_call() {
    let mut p = Pipeline::new(PipelineConfig::default());
    let mut out = Collect::default();
    call_setup(&mut p, &mut out, false);
    assert!(out.started.is_empty());
    let a = rtp(8, 1, 160, 7, &[0xd5; 160]);
    p.frame(
        LinkType::RAW,
        Duration::from_secs(2),
        &udp("10.0.0.2:6000", "10.0.0.1:4000", &a),
        &mut out,
    );
    assert_eq!(out.started.len(), 1);
    assert_eq!(out.rtp.len(), 1);
    assert_eq!(out.rtp[0].1, Direction::Write);
    p.finish(Duration::from_secs(3), &mut out);
    assert_eq!(out.ended.len(), 1);
}

#[test]
fn filters_refuse_numbers_and_networks() {
    for (filter, recorded) in [
        (
            Filter {
                skip_numbers: vec![Pattern::parse("10*").unwrap()],
                ..Filter::default()
            },
            false,
        ),
        (
            Filter {
                numbers: vec![Pattern::parse("re:^100[12]$").unwrap()],
                ..Filter::default()
            },
            true,
        ),
        (
            Filter {
                numbers: vec![Pattern::parse("2?0?").unwrap()],
                ..Filter::default()
            },
            false,
        ),
        (
            Filter {
                networks: vec!["10.0.0.0/30".parse().unwrap()],
                ..Filter::default()
            },
            true,
        ),
        (
            Filter {
                networks: vec!["192.168.0.0/16".parse().unwrap()],
                ..Filter::default()
            },
            false,
        ),
    ] {
        let mut p = Pipeline::new(PipelineConfig {
            filter,
            ..PipelineConfig::default()
        });
        let mut out = Collect::default();
        call_setup(&mut p, &mut out, true);
        let a = rtp(8, 1, 160, 7, &[0xd5; 160]);
        p.frame(
            LinkType::RAW,
            Duration::from_secs(2),
            &udp("10.0.0.1:4000", "10.0.0.2:6000", &a),
            &mut out,
        );
        assert_eq!(out.started.len(), usize::from(recorded));
        assert_eq!(out.rtp.len(), usize::from(recorded));
        assert_eq!(p.stats().rtp_filtered, u64::from(!recorded));
    }
}

#[test]
fn rtp_without_sip_needs_two_packets_and_pairs_directions() {
    let config = PipelineConfig {
        rtp_without_sip: true,
        ..PipelineConfig::default()
    };
    let mut p = Pipeline::new(config);
    let mut out = Collect::default();
    let t = Duration::from_secs(1);
    // One RTP-looking datagram alone is not a call.
    let dns_like = rtp(0, 9, 0, 1, &[0; 20]);
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.9:40000", "10.0.0.8:53", &dns_like),
        &mut out,
    );
    assert!(out.started.is_empty());
    let a1 = rtp(0, 100, 0, 5, &[0xff; 160]);
    let a2 = rtp(0, 101, 160, 5, &[0xff; 160]);
    let b1 = rtp(0, 7, 0, 6, &[0x7f; 160]);
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.1:7000", "10.0.0.2:8000", &a1),
        &mut out,
    );
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.1:7000", "10.0.0.2:8000", &a2),
        &mut out,
    );
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.2:8000", "10.0.0.1:7000", &b1),
        &mut out,
    );
    assert_eq!(out.started.len(), 1);
    assert_eq!(out.started[0].caller, "10.0.0.1-7000");
    let key = out.started[0].key;
    assert_eq!(
        out.rtp,
        vec![
            (key, Direction::Read, a1),
            (key, Direction::Read, a2),
            (key, Direction::Write, b1)
        ]
    );
    // Quiet for longer than sipless_idle: the call ends.
    p.tick(Duration::from_secs(2), &mut out);
    p.tick(Duration::from_secs(30), &mut out);
    assert_eq!(out.ended, vec![key]);
}

/// A T.38 SDP on the audio's own address and port (`m=image ... udptl t38`).
fn t38_sdp(ip: &str, port: u16) -> String {
    format!(
        "v=0\r\no=- 1 2 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=image {port} udptl t38\r\na=T38FaxVersion:0\r\na=T38MaxBitRate:14400\r\na=T38FaxRateManagement:transferredTCF\r\na=T38FaxUdpEC:t38UDPRedundancy\r\n"
    )
}

/// Sends a re-INVITE from the callee with `offer` and the caller's 200
/// with `answer`, at `t`.
fn callee_reinvite(
    p: &mut Pipeline,
    out: &mut Collect,
    t: Duration,
    cseq: u32,
    offer: &str,
    answer: &str,
) {
    let reinvite = sip(
        "INVITE sip:1001@10.0.0.1 SIP/2.0",
        B_TAG,
        A,
        &format!("{cseq} INVITE"),
        Some(offer),
    );
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.2:5060", "10.0.0.1:5060", &reinvite),
        out,
    );
    let ok = sip(
        "SIP/2.0 200 OK",
        B_TAG,
        A,
        &format!("{cseq} INVITE"),
        Some(answer),
    );
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.1:5060", "10.0.0.2:5060", &ok),
        out,
    );
}

/// A fax: a re-INVITE moves the media to T.38 on the audio's own
/// addresses and ports. UDPTL that happens to parse as RTP with an audio
/// payload type (a sequence number of 0x80xx, then 8) never becomes
/// audio; a later re-INVITE back to audio brings the audio back.
#[test]
fn t38_on_the_audios_ports_never_becomes_audio_and_audio_comes_back() {
    let mut p = Pipeline::new(PipelineConfig::default());
    let mut out = Collect::default();
    call_setup(&mut p, &mut out, true);
    let key = out.started[0].key;
    let t = Duration::from_secs(2);
    let voice = |seq: u16| rtp(8, seq, 160 * u32::from(seq), 7, &[0xd5; 160]);
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.1:4000", "10.0.0.2:6000", &voice(1)),
        &mut out,
    );
    callee_reinvite(
        &mut p,
        &mut out,
        t,
        2,
        &t38_sdp("10.0.0.2", 6000),
        &t38_sdp("10.0.0.1", 4000),
    );
    // UDPTL: seq_number 0x8008 (looks like RTP v2, PT 8), then IFP bytes.
    let mut udptl = vec![
        0x80, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    udptl.extend([0x06, 0x82, 0x1a, 0x22, 0x44].repeat(20));
    for k in 0..5u64 {
        for (src, dst) in [
            ("10.0.0.1:4000", "10.0.0.2:6000"),
            ("10.0.0.2:6000", "10.0.0.1:4000"),
        ] {
            p.frame(
                LinkType::RAW,
                t + Duration::from_millis(20 * (k + 1)),
                &udp(src, dst, &udptl),
                &mut out,
            );
        }
    }
    assert_eq!(
        out.rtp,
        vec![(key, Direction::Read, voice(1))],
        "fax forwarded as audio"
    );
    // Both parties moved: the fax's endpoints are no call's audio any
    // more, so its packets match no call at all.
    assert_eq!(p.stats().rtp_unmatched, 10);
    // The receiver hears of the fax phase (its record says so).
    assert_eq!(out.updated.len(), 1);
    assert!(out.updated[0].fax);
    assert!(
        out.updated[0].extensions(&[], None).ends_with(":fax=1"),
        "{}",
        out.updated[0].extensions(&[], None)
    );
    // Back to audio.
    let back = Duration::from_secs(3);
    let offer = sdp("10.0.0.2", 6000, "8", "a=rtpmap:8 PCMA/8000\r\n");
    let answer = sdp("10.0.0.1", 4000, "8", "a=rtpmap:8 PCMA/8000\r\n");
    callee_reinvite(&mut p, &mut out, back, 3, &offer, &answer);
    p.frame(
        LinkType::RAW,
        back,
        &udp("10.0.0.1:4000", "10.0.0.2:6000", &voice(2)),
        &mut out,
    );
    assert_eq!(
        out.rtp.len(),
        2,
        "the audio after the fax was not forwarded"
    );
    assert_eq!(out.rtp[1], (key, Direction::Read, voice(2)));
}

/// Only the T.38 offer seen (its answer lost, or not yet come): the fax
/// has begun, and its packets on the audio's 5-tuple, which the other
/// party's SDP still calls audio, are dropped and counted.
#[test]
fn a_t38_offer_alone_stops_the_audio_on_the_same_ports() {
    let mut p = Pipeline::new(PipelineConfig::default());
    let mut out = Collect::default();
    call_setup(&mut p, &mut out, true);
    let t = Duration::from_secs(2);
    let reinvite = sip(
        "INVITE sip:1001@10.0.0.1 SIP/2.0",
        B_TAG,
        A,
        "2 INVITE",
        Some(&t38_sdp("10.0.0.2", 6000)),
    );
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.2:5060", "10.0.0.1:5060", &reinvite),
        &mut out,
    );
    let udptl = rtp(8, 0x8008, 0, 0, &[0x06, 0x82, 0x1a, 0x22]);
    for (src, dst) in [
        ("10.0.0.1:4000", "10.0.0.2:6000"),
        ("10.0.0.2:6000", "10.0.0.1:4000"),
    ] {
        p.frame(LinkType::RAW, t, &udp(src, dst, &udptl), &mut out);
    }
    assert!(out.rtp.is_empty(), "fax forwarded as audio: {:?}", out.rtp);
    assert_eq!(p.stats().fax_packets, 2);
}

#[test]
fn a_reinvite_to_a_new_dynamic_codec_declares_it_to_the_output() {
    let mut p = Pipeline::new(PipelineConfig::default());
    let mut out = Collect::default();
    call_setup(&mut p, &mut out, true);
    assert_eq!(out.started.len(), 1);
    assert!(out.updated.is_empty());
    let key = out.started[0].key;
    // The caller moves the call to opus (as register-invite-reinvite-bye.pcap does).
    let t = Duration::from_secs(2);
    let offer = sdp("10.0.0.1", 4000, "96", "a=rtpmap:96 opus/48000/2\r\n");
    let reinvite = sip(
        "INVITE sip:1002@10.0.0.2 SIP/2.0",
        A,
        B_TAG,
        "2 INVITE",
        Some(&offer),
    );
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.1:5060", "10.0.0.2:5060", &reinvite),
        &mut out,
    );
    assert_eq!(out.updated.len(), 1);
    let update = &out.updated[0];
    assert_eq!(update.key, key);
    assert_eq!(
        update.extensions(&[], None),
        "pt101=telephone-event/8000:pt96=opus/48000:call-id=abc%3A1@10.0.0.1"
    );
    // Its answer declares nothing new: no second update.
    let answer = sdp("10.0.0.2", 6000, "96", "a=rtpmap:96 opus/48000/2\r\n");
    let ok = sip("SIP/2.0 200 OK", A, B_TAG, "2 INVITE", Some(&answer));
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.2:5060", "10.0.0.1:5060", &ok),
        &mut out,
    );
    assert_eq!(out.updated.len(), 1);
    let opus = rtp(96, 10, 960, 7, &[0xfc, 0xff, 0xfe]);
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.1:4000", "10.0.0.2:6000", &opus),
        &mut out,
    );
    assert_eq!(out.rtp, vec![(key, Direction::Read, opus)]);
}

/// A ZRTP packet of `message` type (RFC 6189 section 5; CRC not checked).
fn zrtp(message: &[u8; 8]) -> Vec<u8> {
    let mut packet = vec![0x10, 0, 0, 1];
    packet.extend_from_slice(b"ZRTP");
    packet.extend_from_slice(&7u32.to_be_bytes());
    packet.extend_from_slice(&[0x50, 0x5a, 0, 3]);
    packet.extend_from_slice(message);
    packet.extend_from_slice(&[0; 4]);
    packet
}

#[test]
fn rtp_after_a_completed_zrtp_handshake_is_dropped_as_srtp() {
    let mut p = Pipeline::new(PipelineConfig::default());
    let mut out = Collect::default();
    call_setup(&mut p, &mut out, true);
    let key = out.started[0].key;
    let t = Duration::from_secs(2);
    let send = |p: &mut Pipeline, out: &mut Collect, src: &str, dst: &str, bytes: &[u8]| {
        p.frame(LinkType::RAW, t, &udp(src, dst, bytes), out);
    };
    let (a, b) = ("10.0.0.1:4000", "10.0.0.2:6000");
    let clear = rtp(8, 1, 160, 7, &[0xd5; 160]);
    send(&mut p, &mut out, a, b, &clear);
    // The handshake: nothing is recorded of it, and until its last
    // message the media is still in the clear.
    for message in [b"Hello   ", b"HelloACK", b"Commit  ", b"Confirm2"] {
        send(&mut p, &mut out, b, a, &zrtp(message));
    }
    let still_clear = rtp(8, 2, 320, 7, &[0xd5; 160]);
    send(&mut p, &mut out, a, b, &still_clear);
    send(&mut p, &mut out, a, b, &zrtp(b"Conf2ACK"));
    // SRTP: an RTP header with 160 bytes of ciphertext and a 4-byte tag.
    let srtp_a = rtp(8, 3, 480, 7, &[0x5a; 164]);
    let srtp_b = rtp(8, 70, 480, 9, &[0xa5; 164]);
    send(&mut p, &mut out, a, b, &srtp_a);
    send(&mut p, &mut out, b, a, &srtp_b);
    assert_eq!(
        out.rtp,
        vec![
            (key, Direction::Read, clear),
            (key, Direction::Read, still_clear)
        ]
    );
    assert_eq!(p.stats().zrtp, 5);
    assert_eq!(p.stats().rtp_encrypted, 2);
    assert_eq!(p.stats().udp_other, 0);
    // Media moved elsewhere by a re-INVITE, without ZRTP: in the clear.
    let moved = sdp("10.0.0.2", 6002, "8", "a=rtpmap:8 PCMA/8000\r\n");
    let reinvite = sip(
        "INVITE sip:1001@10.0.0.1 SIP/2.0",
        B_TAG,
        A,
        "1 INVITE",
        Some(&moved),
    );
    send(
        &mut p,
        &mut out,
        "10.0.0.2:5060",
        "10.0.0.1:5060",
        &reinvite,
    );
    let elsewhere = rtp(8, 4, 640, 7, &[0xd5; 160]);
    send(&mut p, &mut out, a, "10.0.0.2:6002", &elsewhere);
    assert_eq!(out.rtp.len(), 3, "{:?}", p.stats());
    assert_eq!(p.stats().rtp_encrypted, 2);
}

#[test]
fn zrtp_is_never_rtp() {
    assert_eq!(zrtp_message(&zrtp(b"Conf2ACK")), Some(&b"Conf2ACK"[..]));
    assert!(RtpPacket::parse(&zrtp(b"Hello   ")).is_err());
    // An RTP packet that happens to carry "ZRTP" is not ZRTP.
    let mut fake = rtp(0, 1, 2, 3, &[0; 20]);
    fake[4..8].copy_from_slice(b"ZRTP");
    assert_eq!(zrtp_message(&fake), None);
    assert_eq!(zrtp_message(&zrtp(b"Conf2ACK")[..23]), None);
}

#[test]
fn rtp_without_sip_keeps_the_packets_loss_parted_from_the_confirming_one() {
    let config = PipelineConfig {
        rtp_without_sip: true,
        ..PipelineConfig::default()
    };
    let mut p = Pipeline::new(config);
    let mut out = Collect::default();
    let t = Duration::from_secs(1);
    // As in rtpproxy_lost.a.rtp.pcap: 400, then 22 lost, then 423, 424.
    let packets: Vec<Vec<u8>> = [400u16, 423, 424]
        .iter()
        .map(|&seq| rtp(18, seq, u32::from(seq) * 80, 5, &[0x11; 10]))
        .collect();
    for packet in &packets {
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.1:7000", "10.0.0.2:8000", packet),
            &mut out,
        );
    }
    assert_eq!(out.started.len(), 1);
    let key = out.started[0].key;
    let forwarded: Vec<_> = packets
        .into_iter()
        .map(|packet| (key, Direction::Read, packet))
        .collect();
    assert_eq!(out.rtp, forwarded);
    assert_eq!(p.stats().rtp_forwarded, 3);
    assert_eq!(p.stats().rtp_unmatched, 0);
    // Another SSRC on the flow starts over: one packet waits, no call.
    let mut p = Pipeline::new(PipelineConfig {
        rtp_without_sip: true,
        ..PipelineConfig::default()
    });
    let mut out = Collect::default();
    for (seq, ssrc) in [
        (1u16, 1u32),
        (2, 2),
        (40, 2),
        (80, 2),
        (120, 2),
        (160, 2),
        (200, 2),
    ] {
        let packet = rtp(0, seq, 0, ssrc, &[0; 160]);
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.1:7000", "10.0.0.2:8000", &packet),
            &mut out,
        );
    }
    assert!(out.started.is_empty());
    // ...at most MAX_CANDIDATE_PACKETS of them: 160 and 200 and two before.
    let confirm = rtp(0, 201, 0, 2, &[0; 160]);
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.1:7000", "10.0.0.2:8000", &confirm),
        &mut out,
    );
    let sequences: Vec<u16> = out
        .rtp
        .iter()
        .map(|(_, _, bytes)| RtpPacket::parse(bytes).unwrap().sequence)
        .collect();
    assert_eq!(sequences, [80, 120, 160, 200, 201]);
    assert_eq!(p.stats().rtp_unmatched, 3);
}

#[test]
fn rtp_is_never_parsed_as_sip() {
    // An RTP payload full of "INVITE sip:" text is still RTP.
    let mut payload = b"INVITE sip:x SIP/2.0\r\n".to_vec();
    payload.resize(160, b' ');
    let packet = rtp(8, 1, 0, 1, &payload);
    assert!(!looks_like_sip(&packet));
    let mut p = Pipeline::new(PipelineConfig::default());
    let mut out = Collect::default();
    p.frame(
        LinkType::RAW,
        Duration::ZERO,
        &udp("10.0.0.1:4000", "10.0.0.2:6000", &packet),
        &mut out,
    );
    assert_eq!(p.stats().sip_malformed, 0);
    assert_eq!(p.stats().rtp_unmatched, 1);
}

/// The call's clock rate as the output hears it when the call starts, for
/// an offer and answer of these payload types and rtpmap lines.
fn clock_rate_of(offer: (&str, &str), answer: (&str, &str)) -> u32 {
    let mut p = Pipeline::new(PipelineConfig::default());
    let mut out = Collect::default();
    let t = Duration::from_secs(1);
    let inv = sip(
        "INVITE sip:1002@10.0.0.2 SIP/2.0",
        A,
        B,
        "1 INVITE",
        Some(&sdp("10.0.0.1", 4000, offer.0, offer.1)),
    );
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.1:5060", "10.0.0.2:5060", &inv),
        &mut out,
    );
    let ok = sip(
        "SIP/2.0 200 OK",
        A,
        B_TAG,
        "1 INVITE",
        Some(&sdp("10.0.0.2", 6000, answer.0, answer.1)),
    );
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.2:5060", "10.0.0.1:5060", &ok),
        &mut out,
    );
    assert_eq!(out.started.len(), 1);
    out.started[0].clock_rate
}

#[test]
fn a_call_starts_with_the_clock_rate_of_its_answered_codec() {
    const OPUS: &str = "a=rtpmap:96 opus/48000/2\r\na=rtpmap:101 telephone-event/48000\r\n";
    const BOTH: &str = "a=rtpmap:96 opus/48000/2\r\na=rtpmap:8 PCMA/8000\r\n";
    const EVENTS_FIRST: &str = "a=rtpmap:101 telephone-event/8000\r\na=rtpmap:97 L16/16000\r\n";
    // Opus: 48 kHz, not the 8 kHz the media clock used to assume.
    assert_eq!(clock_rate_of(("96 101", OPUS), ("96 101", OPUS)), 48000);
    // The answer's choice counts, not the offer's first codec.
    assert_eq!(clock_rate_of(("96 8", BOTH), ("8", "")), 8000);
    assert_eq!(clock_rate_of(("8 96", BOTH), ("96", BOTH)), 48000);
    // Static payload types by RFC 3551's table: G.722's RTP clock is 8000.
    assert_eq!(clock_rate_of(("9", ""), ("9", "")), 8000);
    // Telephone-events are never the call's clock.
    assert_eq!(
        clock_rate_of(("101 97", EVENTS_FIRST), ("101 97", EVENTS_FIRST)),
        16000
    );
    // A payload type nobody described: G.711's 8000.
    assert_eq!(clock_rate_of(("99", ""), ("99", "")), 8000);
}

#[test]
fn a_call_of_rtp_alone_takes_the_clock_of_its_static_payload_type() {
    let mut p = Pipeline::new(PipelineConfig {
        rtp_without_sip: true,
        ..PipelineConfig::default()
    });
    let mut out = Collect::default();
    for seq in 1..=2u16 {
        let packet = rtp(10, seq, u32::from(seq) * 882, 5, &[0; 40]);
        p.frame(
            LinkType::RAW,
            Duration::from_millis(u64::from(seq) * 20),
            &udp("10.0.0.1:7000", "10.0.0.2:8000", &packet),
            &mut out,
        );
    }
    assert_eq!(out.started.len(), 1);
    assert_eq!(out.started[0].clock_rate, 44100);
}

/// The pipeline's per-flow cache of the tracker's answers ([`Routes`])
/// answers as the tracker itself does: before and after a call's BYE,
/// within and past its `rtp_linger`, and when capture time goes backwards.
#[test]
fn cached_routes_answer_as_the_tracker_does() {
    let mut p = Pipeline::new(PipelineConfig::default());
    let mut out = Collect::default();
    call_setup(&mut p, &mut out, true);
    let flows: Vec<(SocketAddr, SocketAddr)> = [
        ("10.0.0.1:4000", "10.0.0.2:6000"),
        ("10.0.0.2:6000", "10.0.0.1:4000"),
        ("10.0.0.9:1000", "10.0.0.2:6000"),
        ("10.0.0.1:4000", "10.0.0.3:7000"),
    ]
    .iter()
    .map(|(s, d)| (s.parse().unwrap(), d.parse().unwrap()))
    .collect();
    let check = |p: &mut Pipeline, at: Duration| {
        let mut matched = 0;
        for &(src, dst) in &flows {
            let want = p.core.tracker.classify(at, src, dst);
            // Twice: the second answer comes from the cache.
            for _ in 0..2 {
                let got = p.core.routes.classify(&p.core.tracker, at, &src, &dst);
                assert_eq!(got, want, "{src} -> {dst} at {at:?}");
            }
            matched += usize::from(want.is_some());
        }
        matched
    };
    let t = Duration::from_secs(2);
    assert_eq!(check(&mut p, t), 4, "the call's flows before its BYE");
    let bye = sip("BYE sip:1002@10.0.0.2 SIP/2.0", A, B_TAG, "2 BYE", None);
    p.frame(
        LinkType::RAW,
        t,
        &udp("10.0.0.1:5060", "10.0.0.2:5060", &bye),
        &mut out,
    );
    let linger = PipelineConfig::default().tracker.rtp_linger;
    let ms = Duration::from_millis(1);
    let times = [
        t,
        t + linger / 2,
        t + linger - ms,
        t + linger,
        t + linger + ms,
        // Backwards: within the linger again, then before the BYE.
        t + linger / 2,
        t - ms,
        t + linger * 3,
    ];
    let matched: Vec<usize> = times.iter().map(|&at| check(&mut p, at)).collect();
    assert_eq!(matched, [4, 4, 4, 0, 0, 4, 4, 0]);
}

#[test]
fn dedup_tells_repeats_by_header_and_payload_and_forgets_the_oldest() {
    let mut dedup = call::Dedup::default();
    let window = Duration::from_millis(500);
    let t = Duration::from_secs(5);
    let a = rtp(0, 100, 16_000, 7, &[0xd5; 160]);
    let seen = |dedup: &mut call::Dedup, bytes: &[u8], at: Duration| {
        dedup.seen(&RtpPacket::parse(bytes).unwrap(), at, window)
    };
    assert!(!seen(&mut dedup, &a, t));
    assert!(seen(&mut dedup, &a, t + Duration::from_millis(10)));
    // Out of the window: new again (and remembered anew).
    assert!(!seen(&mut dedup, &a, t + Duration::from_secs(1)));
    // The same header with other audio, or another length, is not a repeat.
    let mut other = vec![0xd5; 160];
    other[80] = 0x55;
    assert!(!seen(
        &mut dedup,
        &rtp(0, 100, 16_000, 7, &other),
        t + Duration::from_secs(1)
    ));
    assert!(!seen(
        &mut dedup,
        &rtp(0, 100, 16_000, 7, &[0xd5; 80]),
        t + Duration::from_secs(1)
    ));
    // Short payloads (events) count every byte.
    let ev = rtp(101, 200, 16_000, 7, &[1, 0x80, 0, 160]);
    assert!(!seen(&mut dedup, &ev, t));
    assert!(!seen(
        &mut dedup,
        &rtp(101, 200, 16_000, 7, &[1, 0x80, 1, 64]),
        t
    ));
    assert!(seen(&mut dedup, &ev, t));
    // A stream's packets fill every slot, and several times over: the
    // oldest are forgotten, the last DEDUP_SLOTS are still told.
    for seq in 0..200u16 {
        let p = rtp(0, seq, u32::from(seq) * 160, 9, &[seq as u8; 160]);
        assert!(!seen(&mut dedup, &p, t), "{seq}");
    }
    let stream = |seq: u16| rtp(0, seq, u32::from(seq) * 160, 9, &[seq as u8; 160]);
    let recent = 200 - call::DEDUP_SLOTS as u16;
    // A repeat is not remembered again: the recent ones stay.
    for seq in recent..200 {
        assert!(seen(&mut dedup, &stream(seq), t), "{seq}");
    }
    assert!(!seen(&mut dedup, &stream(recent - 1), t));
    assert!(!seen(&mut dedup, &stream(0), t));
}
