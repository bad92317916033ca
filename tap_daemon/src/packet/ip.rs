//! IPv4 and IPv6 headers, up to the upper-layer protocol.
//!
//! Header checksums are not verified: captures taken on the sending host carry
//! whatever the NIC's checksum offload left there, usually garbage, and a tap
//! that dropped those packets would lose the calls it exists to record.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::error::{be16, be32, take, DecodeError, Layer};

/// IP protocol numbers the decoder acts on.
pub mod proto {
    pub const HOP_BY_HOP: u8 = 0;
    pub const IPV4: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const IPV6: u8 = 41;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const GRE: u8 = 47;
    pub const AH: u8 = 51;
    pub const NO_NEXT: u8 = 59;
    pub const DEST_OPTS: u8 = 60;
    pub const MOBILITY: u8 = 135;
    pub const HIP: u8 = 139;
    pub const SHIM6: u8 = 140;
}

/// Most IPv6 extension headers walked in one packet. RFC 8200 recommends each
/// at most once (destination options twice); the bound stops a chain of
/// thousands of tiny headers.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// Where this packet sits in its original datagram, when it is a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// IPv4 identification (16 bits) or IPv6 fragment identification.
    pub id: u32,
    /// Offset of this fragment's data in the original payload, in bytes.
    pub offset: usize,
    /// More fragments follow (MF / M flag).
    pub more: bool,
}

/// An IP packet, borrowed: addresses, the upper-layer protocol and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpPacket<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Upper-layer protocol: for IPv6, the one after the extension headers
    /// (for a fragment, the one the fragment header names).
    pub protocol: u8,
    /// The upper-layer bytes, trimmed to the length the IP header gives (link
    /// padding removed). For a fragment: this fragment's piece of them.
    pub payload: &'a [u8],
    /// Set when the packet is a fragment that needs reassembly; `None` for a
    /// whole datagram (including IPv6 atomic fragments, RFC 6946).
    pub fragment: Option<Fragment>,
}

/// Parse an IPv4 header at the start of `data`. Options are skipped by the
/// header length: none of them changes how the payload is found.
///
/// Inlined: it runs for nearly every frame, and inlined its result is not
/// moved through a `Result` of the size of an IP header's fields.
#[inline]
pub fn parse_ipv4(data: &[u8]) -> Result<IpPacket<'_>, DecodeError> {
    let h = take(data, 0, 20, Layer::Ipv4)?;
    if h[0] >> 4 != 4 {
        return Err(DecodeError::BadIpv4("version is not 4"));
    }
    let header_len = usize::from(h[0] & 0x0f) * 4;
    if header_len < 20 {
        return Err(DecodeError::BadIpv4("header length below 20"));
    }
    let total_len = usize::from(be16(h, 2, Layer::Ipv4)?);
    if total_len < header_len {
        return Err(DecodeError::BadIpv4("total length below header length"));
    }
    // A total length beyond the capture is a snap-length cut (or a lie):
    // either way the payload is not all here.
    let packet = take(data, 0, total_len, Layer::Ipv4)?;
    take(packet, 0, header_len, Layer::Ipv4)?;
    let flags_offset = be16(h, 6, Layer::Ipv4)?;
    let more = flags_offset & 0x2000 != 0;
    let offset = usize::from(flags_offset & 0x1fff) * 8;
    let fragment = (more || offset != 0).then_some(Fragment {
        id: u32::from(be16(h, 4, Layer::Ipv4)?),
        offset,
        more,
    });
    Ok(IpPacket {
        src: IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15])),
        dst: IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])),
        protocol: h[9],
        payload: &packet[header_len..],
        fragment,
    })
}

/// Parse an IPv6 header and its extension headers at the start of `data`,
/// stopping at the upper-layer protocol or at a fragment header (the rest of
/// the chain is inside the fragmentable part and is walked after reassembly,
/// with [`skip_extensions`]).
pub fn parse_ipv6(data: &[u8]) -> Result<IpPacket<'_>, DecodeError> {
    let h = take(data, 0, 40, Layer::Ipv6)?;
    if h[0] >> 4 != 6 {
        return Err(DecodeError::BadIpv6("version is not 6"));
    }
    let payload_len = usize::from(be16(h, 4, Layer::Ipv6)?);
    if payload_len == 0 && h[6] == proto::HOP_BY_HOP {
        // Jumbograms (RFC 2675) never cross a capture link we care about.
        return Err(DecodeError::BadIpv6("jumbogram"));
    }
    let packet = take(data, 40, payload_len, Layer::Ipv6)?;
    let mut src = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&h[24..40]);
    let mut next = h[6];
    let mut at = 0;
    let mut fragment = None;
    for _ in 0..=MAX_EXTENSION_HEADERS {
        match next {
            proto::FRAGMENT => {
                let f = take(packet, at, 8, Layer::Ipv6)?;
                let off_flags = be16(f, 2, Layer::Ipv6)?;
                let frag = Fragment {
                    id: be32(f, 4, Layer::Ipv6)?,
                    offset: usize::from(off_flags >> 3) * 8,
                    more: off_flags & 1 != 0,
                };
                next = f[0];
                at += 8;
                if frag.offset == 0 && !frag.more {
                    // Atomic fragment: the whole datagram, go on walking.
                    continue;
                }
                fragment = Some(frag);
                break;
            }
            n if is_extension(n) => {
                let (n2, len) = extension(n, packet, at)?;
                next = n2;
                at += len;
            }
            _ => break,
        }
    }
    if fragment.is_none() && is_extension(next) {
        return Err(DecodeError::TooDeep {
            layer: Layer::Ipv6,
            max: MAX_EXTENSION_HEADERS,
        });
    }
    Ok(IpPacket {
        src: IpAddr::V6(Ipv6Addr::from(src)),
        dst: IpAddr::V6(Ipv6Addr::from(dst)),
        protocol: next,
        payload: take(packet, at, packet.len().saturating_sub(at), Layer::Ipv6)?,
        fragment,
    })
}

/// Walk IPv6 extension headers that start `data` (after reassembly: those in
/// the fragmentable part), returning the upper-layer protocol and its bytes.
/// A second fragment header there is refused: nested fragmentation is not
/// something any stack sends.
pub fn skip_extensions(mut next: u8, data: &[u8]) -> Result<(u8, &[u8]), DecodeError> {
    let mut at = 0;
    for _ in 0..MAX_EXTENSION_HEADERS {
        if next == proto::FRAGMENT {
            return Err(DecodeError::BadFragment(
                "fragment header inside a fragment",
            ));
        }
        if !is_extension(next) {
            return Ok((
                next,
                take(data, at, data.len().saturating_sub(at), Layer::Ipv6)?,
            ));
        }
        let (n2, len) = extension(next, data, at)?;
        next = n2;
        at += len;
    }
    Err(DecodeError::TooDeep {
        layer: Layer::Ipv6,
        max: MAX_EXTENSION_HEADERS,
    })
}

fn is_extension(next: u8) -> bool {
    matches!(
        next,
        proto::HOP_BY_HOP
            | proto::ROUTING
            | proto::DEST_OPTS
            | proto::AH
            | proto::MOBILITY
            | proto::HIP
            | proto::SHIM6
            | proto::FRAGMENT
    )
}

/// One generic extension header at `at`: its next header and its length.
fn extension(next: u8, data: &[u8], at: usize) -> Result<(u8, usize), DecodeError> {
    let h = take(data, at, 2, Layer::Ipv6)?;
    let len = if next == proto::AH {
        // AH counts 4-byte words, minus 2 (RFC 4302).
        (usize::from(h[1]) + 2) * 4
    } else {
        (usize::from(h[1]) + 1) * 8
    };
    take(data, at, len, Layer::Ipv6)?;
    Ok((h[0], len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::error::ErrorKind;

    pub(crate) fn ipv4(proto: u8, id: u16, frag: u16, payload: &[u8]) -> Vec<u8> {
        let total = 20 + payload.len();
        let mut p = vec![0x45, 0];
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&frag.to_be_bytes());
        p.extend_from_slice(&[64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn ipv4_trims_padding_and_skips_options() {
        let mut p = ipv4(17, 1, 0, &[1, 2, 3]);
        p.extend_from_slice(&[0, 0, 0]); // Ethernet padding
        let ip = parse_ipv4(&p).unwrap();
        assert_eq!(ip.payload, &[1, 2, 3]);
        assert_eq!(ip.fragment, None);
        assert_eq!(ip.src, "10.0.0.1".parse::<IpAddr>().unwrap());

        let mut o = vec![
            0x46, 0, 0, 27, 0, 0, 0, 0, 64, 17, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
        ];
        o.extend_from_slice(&[1, 1, 1, 0, 9, 9, 9]);
        assert_eq!(parse_ipv4(&o).unwrap().payload, &[9, 9, 9]);
    }

    #[test]
    fn ipv4_bad_headers() {
        let mut p = ipv4(17, 1, 0, &[1, 2, 3]);
        p[0] = 0x44;
        assert_eq!(parse_ipv4(&p).unwrap_err().kind(), ErrorKind::BadIpv4);
        let mut p = ipv4(17, 1, 0, &[1, 2, 3]);
        p[3] = 10;
        assert_eq!(parse_ipv4(&p).unwrap_err().kind(), ErrorKind::BadIpv4);
        let mut p = ipv4(17, 1, 0, &[1, 2, 3]);
        p[3] = 200;
        assert_eq!(parse_ipv4(&p).unwrap_err().kind(), ErrorKind::Truncated);
        let mut p = ipv4(17, 1, 0, &[1, 2, 3]);
        p[0] = 0x4f; // header of 60 bytes in a 23-byte packet
        assert!(parse_ipv4(&p).is_err());
    }

    #[test]
    fn ipv4_fragment_fields() {
        let p = ipv4(17, 0x1234, 0x2000 | 32, &[0; 8]);
        let ip = parse_ipv4(&p).unwrap();
        assert_eq!(
            ip.fragment,
            Some(Fragment {
                id: 0x1234,
                offset: 256,
                more: true
            })
        );
        // DF alone is not a fragment.
        let p = ipv4(17, 1, 0x4000, &[0; 8]);
        assert_eq!(parse_ipv4(&p).unwrap().fragment, None);
    }

    fn ipv6(next: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[next, 64]);
        p.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn ipv6_walks_extension_headers() {
        // hop-by-hop (8) -> destination options (16) -> UDP
        let mut ext = vec![proto::DEST_OPTS, 0, 1, 4, 0, 0, 0, 0];
        ext.extend_from_slice(&[proto::UDP, 1]);
        ext.extend_from_slice(&[0; 14]);
        ext.extend_from_slice(&[7, 7]);
        let p = ipv6(proto::HOP_BY_HOP, &ext);
        let ip = parse_ipv6(&p).unwrap();
        assert_eq!(ip.protocol, proto::UDP);
        assert_eq!(ip.payload, &[7, 7]);
    }

    #[test]
    fn ipv6_fragment_and_atomic_fragment() {
        let frag = [proto::UDP, 0, 0x00, 0x21, 0, 0, 0, 9, 5, 5];
        let p = ipv6(proto::FRAGMENT, &frag);
        let ip = parse_ipv6(&p).unwrap();
        assert_eq!(
            ip.fragment,
            Some(Fragment {
                id: 9,
                offset: 32,
                more: true
            })
        );
        assert_eq!(ip.payload, &[5, 5]);
        let atomic = [proto::UDP, 0, 0, 0, 0, 0, 0, 9, 5, 5];
        let p = ipv6(proto::FRAGMENT, &atomic);
        let ip = parse_ipv6(&p).unwrap();
        assert_eq!(ip.fragment, None);
        assert_eq!(ip.protocol, proto::UDP);
    }

    #[test]
    fn ipv6_extension_loop_is_bounded() {
        let mut ext = Vec::new();
        for _ in 0..20 {
            ext.extend_from_slice(&[proto::DEST_OPTS, 0, 0, 0, 0, 0, 0, 0]);
        }
        let p = ipv6(proto::DEST_OPTS, &ext);
        assert_eq!(parse_ipv6(&p).unwrap_err().kind(), ErrorKind::TooDeep);
        assert_eq!(
            skip_extensions(proto::DEST_OPTS, &ext).unwrap_err().kind(),
            ErrorKind::TooDeep
        );
    }
}
