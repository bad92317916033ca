//! Decoder tests over hand-built frames: each encapsulation end to end, and
//! fragments and TCP through the whole pipeline.

use std::borrow::Cow;
use std::time::Duration;

use super::*;

fn ipv4(proto: u8, id: u16, frag: u16, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&frag.to_be_bytes());
    p.extend_from_slice(&[64, proto, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2]);
    p.extend_from_slice(payload);
    p
}

fn ipv6(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next, 64]);
    p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    p.extend_from_slice(payload);
    p
}

fn udp(payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0x13, 0xc4, 0x13, 0xc5];
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn tcp(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0x13, 0xc4, 0x9c, 0x40];
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

fn eth(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ty.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn decode_all(d: &mut Decoder, link: LinkType, frames: &[Vec<u8>]) -> Vec<Datagram<'static>> {
    let mut all = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let mut out = Vec::new();
        let _ = d.decode(link, Duration::from_millis(i as u64), f, &mut out);
        all.extend(out.into_iter().map(Datagram::into_owned));
    }
    all
}

#[test]
fn udp_payload_is_borrowed_from_the_frame() {
    let f = eth(0x0800, &ipv4(17, 1, 0, &udp(b"INVITE")));
    let mut d = Decoder::default();
    let mut out = Vec::new();
    d.decode(LinkType::ETHERNET, Duration::ZERO, &f, &mut out)
        .unwrap();
    assert!(matches!(out[0].payload, Cow::Borrowed(b"INVITE")));
    assert_eq!(out[0].dst.to_string(), "192.0.2.2:5061");
    assert_eq!(d.counters().udp_datagrams, 1);
}

#[test]
fn every_encapsulation_reaches_the_same_datagram() {
    let inner4 = ipv4(17, 1, 0, &udp(b"SIP"));
    let inner6 = ipv6(17, &udp(b"SIP"));
    let vlan = {
        let mut p = vec![0x00, 0x64, 0x81, 0x00, 0x00, 0x0a, 0x08, 0x00];
        p.extend_from_slice(&inner4);
        eth(0x88a8, &p)
    };
    let pppoe = {
        let mut p = vec![0x11, 0, 0, 1];
        p.extend_from_slice(&((inner6.len() + 2) as u16).to_be_bytes());
        p.extend_from_slice(&[0x00, 0x57]);
        p.extend_from_slice(&inner6);
        p.extend_from_slice(&[0; 6]); // padding
        eth(0x8864, &p)
    };
    let ipip = eth(0x0800, &ipv4(4, 2, 0, &inner4));
    let six_in_four = eth(0x0800, &ipv4(41, 2, 0, &inner6));
    let gre_teb = {
        let mut g = vec![0, 0, 0x65, 0x58];
        g.extend_from_slice(&eth(0x0800, &inner4));
        eth(0x0800, &ipv4(47, 3, 0, &g))
    };
    let erspan2 = {
        let mut g = vec![
            0x10, 0, 0x88, 0xbe, 0, 0, 0, 7, 0x10, 0x01, 0, 1, 0, 0, 0, 0,
        ];
        g.extend_from_slice(&eth(0x86dd, &inner6));
        eth(0x0800, &ipv4(47, 3, 0, &g))
    };
    let cases: Vec<(LinkType, Vec<u8>)> = vec![
        (LinkType::ETHERNET, vlan),
        (LinkType::ETHERNET, pppoe),
        (LinkType::ETHERNET, ipip),
        (LinkType::ETHERNET, six_in_four),
        (LinkType::ETHERNET, gre_teb),
        (LinkType::ETHERNET, erspan2),
        (LinkType::RAW, inner4.clone()),
        (LinkType::RAW_12, inner6.clone()),
        (LinkType::NULL, [vec![2, 0, 0, 0], inner4.clone()].concat()),
        (
            LinkType::LINUX_SLL,
            [vec![0; 14], vec![0x08, 0x00], inner4.clone()].concat(),
        ),
        (
            LinkType::LINUX_SLL2,
            [vec![0x86, 0xdd], vec![0; 18], inner6.clone()].concat(),
        ),
    ];
    for (i, (link, frame)) in cases.iter().enumerate() {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        d.decode(*link, Duration::ZERO, frame, &mut out)
            .unwrap_or_else(|e| panic!("case {i}: {e}"));
        assert_eq!(out.len(), 1, "case {i}");
        assert_eq!(&*out[0].payload, b"SIP", "case {i}");
        assert_eq!(out[0].src.port(), 5060);
    }
}

#[test]
fn nested_tunnels_are_bounded() {
    let mut p = ipv4(17, 1, 0, &udp(b"x"));
    for _ in 0..10 {
        p = ipv4(4, 1, 0, &p);
    }
    let mut d = Decoder::default();
    let mut out = Vec::new();
    let e = d
        .decode(LinkType::RAW, Duration::ZERO, &p, &mut out)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooDeep);
    assert_eq!(d.counters().error(ErrorKind::TooDeep), 1);
}

#[test]
fn ipv4_fragments_out_of_order_through_the_decoder() {
    let body: Vec<u8> = (0..600u32).map(|i| (i % 256) as u8).collect();
    let whole = udp(&body);
    let mut frames = Vec::new();
    for (i, chunk) in whole.chunks(256).enumerate() {
        let more = (i + 1) * 256 < whole.len();
        let frag = ((i * 256 / 8) as u16) | if more { 0x2000 } else { 0 };
        frames.push(eth(0x0800, &ipv4(17, 77, frag, chunk)));
    }
    frames.reverse();
    let mut d = Decoder::default();
    let got = decode_all(&mut d, LinkType::ETHERNET, &frames);
    assert_eq!(got.len(), 1);
    assert_eq!(&*got[0].payload, &body[..]);
    assert_eq!(d.counters().fragments, 3);
    assert_eq!(d.counters().reassembled, 1);
}

#[test]
fn ipv6_fragments_with_destination_options_after_reassembly() {
    // Fragmentable part: destination options (8 bytes), then UDP.
    let mut fragmentable = vec![17, 0, 1, 4, 0, 0, 0, 0];
    fragmentable.extend_from_slice(&udp(&[0x55; 100]));
    let (a, b) = fragmentable.split_at(64);
    let f1 = [vec![60, 0, 0, 1, 0, 0, 0, 42], a.to_vec()].concat();
    let f2 = [vec![60, 0, 0, 64, 0, 0, 0, 42], b.to_vec()].concat();
    let frames = vec![eth(0x86dd, &ipv6(44, &f2)), eth(0x86dd, &ipv6(44, &f1))];
    let mut d = Decoder::default();
    let got = decode_all(&mut d, LinkType::ETHERNET, &frames);
    assert_eq!(got.len(), 1);
    assert_eq!(&*got[0].payload, &[0x55; 100][..]);
}

#[test]
fn missing_fragment_expires_by_capture_time() {
    let whole = udp(&[1; 40]);
    let f = eth(0x0800, &ipv4(17, 5, 0x2000, &whole[..24]));
    let mut d = Decoder::default();
    let mut out = Vec::new();
    d.decode(LinkType::ETHERNET, Duration::from_secs(10), &f, &mut out)
        .unwrap();
    let other = eth(0x0806, &[0; 28]);
    let _ = d.decode(
        LinkType::ETHERNET,
        Duration::from_secs(45),
        &other,
        &mut out,
    );
    assert!(out.is_empty());
    assert_eq!(d.counters().fragments_expired, 1);
    assert_eq!(d.counters().error(ErrorKind::NotIp), 1);
}

#[test]
fn tcp_stream_through_the_decoder() {
    let frames = vec![
        eth(0x0800, &ipv4(6, 1, 0, &tcp(1000, 0x02, b""))),
        eth(0x0800, &ipv4(6, 2, 0, &tcp(1011, 0x18, b"0 OK\r\n"))),
        eth(0x0800, &ipv4(6, 3, 0, &tcp(1001, 0x18, b"SIP/2.0 20"))),
        eth(0x0800, &ipv4(6, 4, 0, &tcp(1001, 0x18, b"SIP/2.0 20"))),
        eth(0x0800, &ipv4(6, 5, 0, &tcp(1017, 0x11, b""))),
    ];
    let mut d = Decoder::default();
    let got = decode_all(&mut d, LinkType::ETHERNET, &frames);
    let bytes: Vec<u8> = got.iter().flat_map(|g| g.payload.iter().copied()).collect();
    assert_eq!(bytes, b"SIP/2.0 200 OK\r\n");
    assert!(got.iter().all(|g| g.transport == Transport::Tcp && !g.gap));
    assert_eq!(got.last().unwrap().end, Some(StreamEnd::Fin));
    assert_eq!(d.counters().tcp_retransmitted, 1);
    assert_eq!(d.counters().tcp_bytes, 16);
}

#[test]
fn idle_tcp_stream_ends_on_expire() {
    let f = eth(0x0800, &ipv4(6, 1, 0, &tcp(1, 0x18, b"REGISTER")));
    let mut d = Decoder::default();
    let mut out = Vec::new();
    d.decode(LinkType::ETHERNET, Duration::ZERO, &f, &mut out)
        .unwrap();
    let mut later = Vec::new();
    d.expire(Duration::from_secs(1000), &mut later);
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].end, Some(StreamEnd::Expired));
}

#[test]
fn cuts_and_flips_never_panic() {
    let frames = vec![
        eth(0x0800, &ipv4(17, 1, 0, &udp(b"INVITE sip:a@b SIP/2.0\r\n"))),
        eth(
            0x86dd,
            &ipv6(
                0,
                &[
                    17, 0, 1, 4, 0, 0, 0, 0, 0x13, 0xc4, 0x13, 0xc4, 0, 9, 0, 0, 1,
                ],
            ),
        ),
        eth(
            0x0800,
            &ipv4(
                47,
                3,
                0,
                &[
                    0x10, 0, 0x22, 0xeb, 0, 0, 0, 1, 0x20, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1,
                ],
            ),
        ),
        eth(0x0800, &ipv4(6, 1, 0x2001, &tcp(5, 0x18, b"abcdefgh"))),
    ];
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut d = Decoder::default();
    for f in &frames {
        for len in 0..=f.len() {
            let mut out = Vec::new();
            for link in [0, 1, 12, 101, 113, 276] {
                let _ = d.decode(LinkType(link), Duration::ZERO, &f[..len], &mut out);
            }
        }
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut g = f.clone();
            let i = (seed as usize) % g.len();
            g[i] ^= (seed >> 32) as u8 | 1;
            let mut out = Vec::new();
            let _ = d.decode(
                LinkType::ETHERNET,
                Duration::from_millis(seed % 100_000),
                &g,
                &mut out,
            );
        }
    }
}

#[test]
fn fuzz_entry_point_handles_anything() {
    assert_eq!(fuzz_frames(&[]), 0);
    let frame = eth(0x0800, &ipv4(17, 1, 0, &udp(b"x")));
    let mut input = vec![0u8, 1];
    input.extend_from_slice(&(frame.len() as u16).to_be_bytes());
    input.extend_from_slice(&frame);
    assert_eq!(fuzz_frames(&input), 1);
    let mut seed = 7u64;
    for _ in 0..2000 {
        let mut g = input.clone();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let at = (seed >> 33) as usize % g.len();
        g[at] = (seed >> 17) as u8;
        g.truncate((seed >> 40) as usize % (g.len() + 1));
        fuzz_frames(&g);
    }
}
