//! Link layers: from a captured frame to the IP packet inside it.
//!
//! A tap sees frames however the capture point framed them: plain Ethernet on a
//! SPAN port, VLAN-tagged (often twice, provider QinQ) on a trunk, PPPoE on a DSL
//! aggregation link, Linux "cooked" headers when capturing on `any`, or no link
//! header at all on tunnels and some BSD interfaces. Each is peeled here until an
//! IPv4 or IPv6 header starts; anything else is reported as [`DecodeError::NotIp`].

use std::ops::Range;

use super::error::{be16, be32, take, DecodeError, Layer};

/// A pcap link-layer header type (the `LINKTYPE_*` / `DLT_*` number a capture
/// file or live handle reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkType(pub u32);

impl LinkType {
    /// BSD loopback: a 4-byte address family in the capturing host's byte order.
    pub const NULL: LinkType = LinkType(0);
    /// Ethernet (`DLT_EN10MB`).
    pub const ETHERNET: LinkType = LinkType(1);
    /// Raw IP as some systems number it (`DLT_RAW` on most BSDs).
    pub const RAW_12: LinkType = LinkType(12);
    /// Raw IP as OpenBSD numbers it.
    pub const RAW_14: LinkType = LinkType(14);
    /// Raw IP, the portable `LINKTYPE_RAW`.
    pub const RAW: LinkType = LinkType(101);
    /// OpenBSD loopback: address family in network byte order.
    pub const LOOP: LinkType = LinkType(108);
    /// Linux cooked capture v1 (`any` interface).
    pub const LINUX_SLL: LinkType = LinkType(113);
    /// Raw IPv4 only.
    pub const IPV4: LinkType = LinkType(228);
    /// Raw IPv6 only.
    pub const IPV6: LinkType = LinkType(229);
    /// Linux cooked capture v2.
    pub const LINUX_SLL2: LinkType = LinkType(276);
}

/// The network protocol that starts where the link layer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Network {
    Ipv4,
    Ipv6,
}

/// Most VLAN tags (and MPLS labels) peeled from one frame. Real networks use
/// one or two; the bound only keeps a hostile frame from looping us.
pub const MAX_VLAN_DEPTH: usize = 8;

pub(crate) const ETHERTYPE_IPV4: u16 = 0x0800;
pub(crate) const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const ETHERTYPE_QINQ_OLD: u16 = 0x9100;
const ETHERTYPE_QINQ_OLD2: u16 = 0x9200;
const ETHERTYPE_PPPOE_SESSION: u16 = 0x8864;
const ETHERTYPE_MPLS: u16 = 0x8847;
const ETHERTYPE_MPLS_MC: u16 = 0x8848;

const ETHERNET_HEADER: usize = 14;

/// Find the IP packet inside a frame of link type `link`: which protocol it is
/// and the byte range it spans within `frame`.
pub(crate) fn network(
    link: LinkType,
    frame: &[u8],
) -> Result<(Network, Range<usize>), DecodeError> {
    match link {
        LinkType::ETHERNET => ethernet(frame, 0),
        LinkType::RAW | LinkType::RAW_12 | LinkType::RAW_14 => by_version(frame, 0),
        LinkType::IPV4 => Ok((Network::Ipv4, 0..frame.len())),
        LinkType::IPV6 => Ok((Network::Ipv6, 0..frame.len())),
        LinkType::LINUX_SLL => {
            // packet type, ARPHRD, address length, 8 address bytes, protocol.
            let proto = be16(frame, 14, Layer::Link)?;
            ethertype(proto, frame, 16)
        }
        LinkType::LINUX_SLL2 => {
            // protocol, reserved, ifindex, ARPHRD, packet type, address length, 8 address bytes.
            take(frame, 0, 20, Layer::Link)?;
            let proto = be16(frame, 0, Layer::Link)?;
            ethertype(proto, frame, 20)
        }
        LinkType::NULL => {
            let b = take(frame, 0, 4, Layer::Link)?;
            // The capturing host's byte order is not recorded: the family is a
            // small number, so whichever order gives one is the right one.
            let le = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let be = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            address_family(le.min(be), frame, 4)
        }
        LinkType::LOOP => {
            let family = be32(frame, 0, Layer::Link)?;
            address_family(family, frame, 4)
        }
        LinkType(other) => Err(DecodeError::UnsupportedLink(other)),
    }
}

/// An Ethernet II frame starting at `at` (also the inner frame of GRE bridging
/// and ERSPAN).
pub(crate) fn ethernet(frame: &[u8], at: usize) -> Result<(Network, Range<usize>), DecodeError> {
    let ty = be16(frame, at + 12, Layer::Link)?;
    // Untagged IPv4, most frames a tap sees: without the tag loop, which
    // was a fifth of decoding a frame.
    if ty == ETHERTYPE_IPV4 {
        return Ok((Network::Ipv4, at + ETHERNET_HEADER..frame.len()));
    }
    ethertype(ty, frame, at + ETHERNET_HEADER)
}

/// Dispatch on an ethertype whose payload starts at `at`, peeling VLAN tags,
/// PPPoE and MPLS on the way.
pub(crate) fn ethertype(
    mut ty: u16,
    frame: &[u8],
    mut at: usize,
) -> Result<(Network, Range<usize>), DecodeError> {
    for _ in 0..=MAX_VLAN_DEPTH {
        match ty {
            ETHERTYPE_IPV4 => return Ok((Network::Ipv4, at..frame.len())),
            ETHERTYPE_IPV6 => return Ok((Network::Ipv6, at..frame.len())),
            // 802.1Q, 802.1ad and the pre-standard QinQ TPIDs: 2 bytes of TCI,
            // then the next ethertype. Any order and depth is accepted, as
            // switches in the wild mix them.
            ETHERTYPE_VLAN | ETHERTYPE_QINQ | ETHERTYPE_QINQ_OLD | ETHERTYPE_QINQ_OLD2 => {
                ty = be16(frame, at + 2, Layer::Link)?;
                at += 4;
            }
            ETHERTYPE_PPPOE_SESSION => return pppoe(frame, at),
            ETHERTYPE_MPLS | ETHERTYPE_MPLS_MC => return mpls(frame, at),
            other => return Err(DecodeError::NotIp(other)),
        }
    }
    Err(DecodeError::TooDeep {
        layer: Layer::Link,
        max: MAX_VLAN_DEPTH,
    })
}

/// PPPoE session stage (RFC 2516): version/type 0x11, code 0, session id,
/// length, then PPP. The length bounds the payload: Ethernet padding follows.
fn pppoe(frame: &[u8], at: usize) -> Result<(Network, Range<usize>), DecodeError> {
    let h = take(frame, at, 6, Layer::Link)?;
    if h[0] != 0x11 || h[1] != 0 {
        return Err(DecodeError::BadPppoe);
    }
    let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let start = at + 6;
    let end = start + len;
    if end > frame.len() {
        return Err(DecodeError::Truncated {
            layer: Layer::Link,
            need: end,
            have: frame.len(),
        });
    }
    // PPP protocol field; with protocol field compression (RFC 1661 6.5) it is
    // one byte, recognisable by its low bit being set.
    let first = *take(frame, start, 1, Layer::Link)?.first().unwrap_or(&0);
    let (proto, hdr) = if first & 1 == 1 {
        (u16::from(first), 1)
    } else {
        (be16(frame, start, Layer::Link)?, 2)
    };
    let range = start + hdr..end;
    if range.start > range.end {
        return Err(DecodeError::BadPppoe);
    }
    match proto {
        0x0021 => Ok((Network::Ipv4, range)),
        0x0057 => Ok((Network::Ipv6, range)),
        other => Err(DecodeError::NotIp(other)),
    }
}

/// MPLS label stack: pop labels to the bottom of stack, then the payload has no
/// type field, so the IP version nibble decides (pseudowires carrying Ethernet
/// are not told apart from IP here and show as bad IP headers).
fn mpls(frame: &[u8], mut at: usize) -> Result<(Network, Range<usize>), DecodeError> {
    for _ in 0..MAX_VLAN_DEPTH {
        let label = be32(frame, at, Layer::Link)?;
        at += 4;
        if label & 0x100 != 0 {
            return by_version(frame, at);
        }
    }
    Err(DecodeError::TooDeep {
        layer: Layer::Link,
        max: MAX_VLAN_DEPTH,
    })
}

/// No type field at all: the first nibble of the IP header says which IP.
pub(crate) fn by_version(frame: &[u8], at: usize) -> Result<(Network, Range<usize>), DecodeError> {
    let b = take(frame, at, 1, Layer::Link)?;
    match b[0] >> 4 {
        4 => Ok((Network::Ipv4, at..frame.len())),
        6 => Ok((Network::Ipv6, at..frame.len())),
        v => Err(DecodeError::NotIp(u16::from(v))),
    }
}

/// BSD `AF_*` values: IPv4 is 2 everywhere, IPv6 differs per BSD (24, 28, 30).
fn address_family(
    family: u32,
    frame: &[u8],
    at: usize,
) -> Result<(Network, Range<usize>), DecodeError> {
    match family {
        2 => Ok((Network::Ipv4, at..frame.len())),
        24 | 28 | 30 => Ok((Network::Ipv6, at..frame.len())),
        other => Err(DecodeError::NotIp(u16::try_from(other).unwrap_or(u16::MAX))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::error::ErrorKind;

    fn eth(ty: u16, rest: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ty.to_be_bytes());
        f.extend_from_slice(rest);
        f
    }

    #[test]
    fn plain_ethernet() {
        let f = eth(0x0800, &[0x45, 0]);
        assert_eq!(
            network(LinkType::ETHERNET, &f).unwrap(),
            (Network::Ipv4, 14..16)
        );
    }

    #[test]
    fn vlan_tags_any_depth_up_to_bound() {
        let mut rest = Vec::new();
        for _ in 0..3 {
            rest.extend_from_slice(&[0x00, 0x0a, 0x81, 0x00]);
        }
        rest.extend_from_slice(&[0x00, 0x0a, 0x86, 0xdd, 0x60]);
        let f = eth(0x88a8, &rest);
        assert_eq!(
            network(LinkType::ETHERNET, &f).unwrap(),
            (Network::Ipv6, 30..31)
        );

        let mut deep = Vec::new();
        for _ in 0..20 {
            deep.extend_from_slice(&[0x00, 0x0a, 0x81, 0x00]);
        }
        let f = eth(0x8100, &deep);
        assert_eq!(
            network(LinkType::ETHERNET, &f).unwrap_err().kind(),
            ErrorKind::TooDeep
        );
    }

    #[test]
    fn pppoe_session_trims_padding() {
        let f = eth(
            0x8864,
            &[0x11, 0, 0x12, 0x34, 0, 4, 0x00, 0x21, 0x45, 0, 0xee, 0xee],
        );
        assert_eq!(
            network(LinkType::ETHERNET, &f).unwrap(),
            (Network::Ipv4, 22..24)
        );
        let f = eth(0x8864, &[0x11, 0, 0x12, 0x34, 0, 40, 0x00, 0x21]);
        assert_eq!(
            network(LinkType::ETHERNET, &f).unwrap_err().kind(),
            ErrorKind::Truncated
        );
        let f = eth(0x8864, &[0x11, 0, 0x12, 0x34, 0, 2, 0xc0, 0x21]);
        assert_eq!(
            network(LinkType::ETHERNET, &f).unwrap_err(),
            DecodeError::NotIp(0xc021)
        );
    }

    #[test]
    fn cooked_and_raw_and_null() {
        let mut sll = vec![0u8; 14];
        sll.extend_from_slice(&[0x08, 0x00, 0x45]);
        assert_eq!(
            network(LinkType::LINUX_SLL, &sll).unwrap(),
            (Network::Ipv4, 16..17)
        );
        let mut sll2 = vec![0x86, 0xdd];
        sll2.extend_from_slice(&[0u8; 18]);
        sll2.push(0x60);
        assert_eq!(
            network(LinkType::LINUX_SLL2, &sll2).unwrap(),
            (Network::Ipv6, 20..21)
        );
        assert_eq!(
            network(LinkType::RAW, &[0x60]).unwrap(),
            (Network::Ipv6, 0..1)
        );
        assert_eq!(
            network(LinkType::RAW_12, &[0x45]).unwrap(),
            (Network::Ipv4, 0..1)
        );
        assert_eq!(
            network(LinkType::NULL, &[2, 0, 0, 0, 0x45]).unwrap(),
            (Network::Ipv4, 4..5)
        );
        assert_eq!(
            network(LinkType::NULL, &[0, 0, 0, 30, 0x60]).unwrap(),
            (Network::Ipv6, 4..5)
        );
        assert_eq!(
            network(LinkType(9999), &[]).unwrap_err().kind(),
            ErrorKind::UnsupportedLink
        );
    }

    #[test]
    fn mpls_bottom_of_stack() {
        let f = eth(0x8847, &[0, 0, 0x10, 0x40, 0, 0, 0x21, 0x40, 0x45]);
        assert_eq!(
            network(LinkType::ETHERNET, &f).unwrap(),
            (Network::Ipv4, 22..23)
        );
    }

    #[test]
    fn every_cut_is_an_error_not_a_panic() {
        let f = eth(
            0x8100,
            &[0, 1, 0x88, 0x64, 0x11, 0, 0, 1, 0, 3, 0, 0x57, 0x60],
        );
        for len in 0..f.len() {
            let _ = network(LinkType::ETHERNET, &f[..len]);
        }
    }
}
