use thiserror::Error;

/// Which protocol layer an error was found in, so that "truncated" says where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// Ethernet, VLAN tags, PPPoE, MPLS, SLL/SLL2, loopback headers.
    Link,
    /// GRE, ERSPAN.
    Tunnel,
    /// IPv4 header and options.
    Ipv4,
    /// IPv6 fixed header and extension headers.
    Ipv6,
    /// UDP header.
    Udp,
    /// TCP header and options.
    Tcp,
}

impl Layer {
    /// Short lower-case name, for messages and log fields.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Link => "link",
            Layer::Tunnel => "tunnel",
            Layer::Ipv4 => "ipv4",
            Layer::Ipv6 => "ipv6",
            Layer::Udp => "udp",
            Layer::Tcp => "tcp",
        }
    }
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a frame (or a piece of one) yields no datagram.
///
/// Some variants are not faults of the capture (`NotIp`, `OtherProtocol`): a tap
/// sees ARP, STP and ICMP too. They are errors here only because the frame has
/// nothing for us, and counting them tells an operator what the tap is looking at.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The bytes end before a header (or the length a header claims) does:
    /// a snap length cut the frame, or a length field lies.
    #[error("{layer}: truncated, need {need} bytes, have {have}")]
    Truncated {
        layer: Layer,
        need: usize,
        have: usize,
    },
    /// The pcap link type is not one we decode.
    #[error("unsupported link type {0}")]
    UnsupportedLink(u32),
    /// The frame carries something other than IP (ARP, STP, LLC, ...).
    #[error("not IP: ethertype/protocol {0:#06x}")]
    NotIp(u16),
    /// The IP packet carries neither UDP, TCP nor a tunnel we unwrap (ICMP, VRRP, ESP, ...).
    #[error("IP protocol {0} is not decoded")]
    OtherProtocol(u8),
    /// A PPPoE header is not a version 1 type 1 session header.
    #[error("bad PPPoE session header")]
    BadPppoe,
    /// A GRE header of a version or with flags we do not unwrap, or an ERSPAN
    /// header of an unknown version or frame type.
    #[error("unsupported tunnel header: {0}")]
    UnsupportedTunnel(&'static str),
    /// More VLAN tags, MPLS labels, IPv6 extension headers or nested tunnels than
    /// the bound: a hostile frame would otherwise make us loop for long.
    #[error("{layer}: more than {max} nested headers")]
    TooDeep { layer: Layer, max: usize },
    /// IPv4 version, header length or total length is inconsistent.
    #[error("bad IPv4 header: {0}")]
    BadIpv4(&'static str),
    /// IPv6 version or payload length is inconsistent.
    #[error("bad IPv6 header: {0}")]
    BadIpv6(&'static str),
    /// The UDP length field is smaller than the header or larger than the IP payload.
    #[error("bad UDP length {length} for {available} bytes")]
    BadUdpLength { length: usize, available: usize },
    /// The TCP data offset is below 5 words or past the segment.
    #[error("bad TCP data offset {0}")]
    BadTcpOffset(usize),
    /// A fragment that is not the last has a length that is not a multiple of 8,
    /// or a fragment ends past 65535 bytes.
    #[error("bad fragment: {0}")]
    BadFragment(&'static str),
    /// A fragment overlaps data already received with different bytes, or
    /// claims a different end than another last fragment: the whole datagram is
    /// dropped (RFC 5722), since either copy could be the attack.
    #[error("overlapping fragments disagree")]
    FragmentOverlap,
    /// The reassembled datagram would exceed the per-datagram byte limit.
    #[error("reassembled datagram would exceed {max} bytes")]
    FragmentTooBig { max: usize },
    /// Too many datagrams are being reassembled at once; the fragment is dropped.
    #[error("too many datagrams in reassembly (max {max})")]
    FragmentTableFull { max: usize },
    /// Too many TCP flows are being followed at once; the segment is dropped.
    #[error("too many TCP flows (max {max})")]
    TcpFlowTableFull { max: usize },
}

/// A [`DecodeError`] without its details: a fixed, small set, to label counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ErrorKind {
    Truncated,
    UnsupportedLink,
    NotIp,
    OtherProtocol,
    BadPppoe,
    UnsupportedTunnel,
    TooDeep,
    BadIpv4,
    BadIpv6,
    BadUdp,
    BadTcp,
    BadFragment,
    FragmentOverlap,
    FragmentTooBig,
    FragmentTableFull,
    TcpFlowTableFull,
}

impl ErrorKind {
    /// Every kind, in counter order.
    pub const ALL: [ErrorKind; 16] = [
        ErrorKind::Truncated,
        ErrorKind::UnsupportedLink,
        ErrorKind::NotIp,
        ErrorKind::OtherProtocol,
        ErrorKind::BadPppoe,
        ErrorKind::UnsupportedTunnel,
        ErrorKind::TooDeep,
        ErrorKind::BadIpv4,
        ErrorKind::BadIpv6,
        ErrorKind::BadUdp,
        ErrorKind::BadTcp,
        ErrorKind::BadFragment,
        ErrorKind::FragmentOverlap,
        ErrorKind::FragmentTooBig,
        ErrorKind::FragmentTableFull,
        ErrorKind::TcpFlowTableFull,
    ];

    /// The label for a metric, e.g. `rst_tap_decode_errors_total{kind="truncated"}`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Truncated => "truncated",
            ErrorKind::UnsupportedLink => "unsupported_link",
            ErrorKind::NotIp => "not_ip",
            ErrorKind::OtherProtocol => "other_protocol",
            ErrorKind::BadPppoe => "bad_pppoe",
            ErrorKind::UnsupportedTunnel => "unsupported_tunnel",
            ErrorKind::TooDeep => "too_deep",
            ErrorKind::BadIpv4 => "bad_ipv4",
            ErrorKind::BadIpv6 => "bad_ipv6",
            ErrorKind::BadUdp => "bad_udp",
            ErrorKind::BadTcp => "bad_tcp",
            ErrorKind::BadFragment => "bad_fragment",
            ErrorKind::FragmentOverlap => "fragment_overlap",
            ErrorKind::FragmentTooBig => "fragment_too_big",
            ErrorKind::FragmentTableFull => "fragment_table_full",
            ErrorKind::TcpFlowTableFull => "tcp_flow_table_full",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl DecodeError {
    /// The counter this error goes to.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DecodeError::Truncated { .. } => ErrorKind::Truncated,
            DecodeError::UnsupportedLink(_) => ErrorKind::UnsupportedLink,
            DecodeError::NotIp(_) => ErrorKind::NotIp,
            DecodeError::OtherProtocol(_) => ErrorKind::OtherProtocol,
            DecodeError::BadPppoe => ErrorKind::BadPppoe,
            DecodeError::UnsupportedTunnel(_) => ErrorKind::UnsupportedTunnel,
            DecodeError::TooDeep { .. } => ErrorKind::TooDeep,
            DecodeError::BadIpv4(_) => ErrorKind::BadIpv4,
            DecodeError::BadIpv6(_) => ErrorKind::BadIpv6,
            DecodeError::BadUdpLength { .. } => ErrorKind::BadUdp,
            DecodeError::BadTcpOffset(_) => ErrorKind::BadTcp,
            DecodeError::BadFragment(_) => ErrorKind::BadFragment,
            DecodeError::FragmentOverlap => ErrorKind::FragmentOverlap,
            DecodeError::FragmentTooBig { .. } => ErrorKind::FragmentTooBig,
            DecodeError::FragmentTableFull { .. } => ErrorKind::FragmentTableFull,
            DecodeError::TcpFlowTableFull { .. } => ErrorKind::TcpFlowTableFull,
        }
    }
}

/// Borrow `len` bytes at `at`, or say how much was missing.
pub(crate) fn take(data: &[u8], at: usize, len: usize, layer: Layer) -> Result<&[u8], DecodeError> {
    let need = at.saturating_add(len);
    data.get(at..need).ok_or(DecodeError::Truncated {
        layer,
        need,
        have: data.len(),
    })
}

/// Big-endian u16 at `at`, bounds-checked.
pub(crate) fn be16(data: &[u8], at: usize, layer: Layer) -> Result<u16, DecodeError> {
    let b = take(data, at, 2, layer)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

/// Big-endian u32 at `at`, bounds-checked.
pub(crate) fn be32(data: &[u8], at: usize, layer: Layer) -> Result<u32, DecodeError> {
    let b = take(data, at, 4, layer)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_distinct_and_in_order() {
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
        let mut names: Vec<_> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::ALL.len());
    }

    #[test]
    fn take_reports_need_and_have() {
        let e = take(&[1, 2, 3], 2, 4, Layer::Udp).unwrap_err();
        assert_eq!(
            e,
            DecodeError::Truncated {
                layer: Layer::Udp,
                need: 6,
                have: 3
            }
        );
        assert_eq!(
            take(&[1, 2, 3], usize::MAX, 4, Layer::Udp)
                .unwrap_err()
                .kind(),
            ErrorKind::Truncated
        );
    }
}
