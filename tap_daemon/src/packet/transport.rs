//! UDP and TCP headers. Checksums are not verified (see [`super::ip`]).

use super::error::{be16, be32, take, DecodeError, Layer};

/// A UDP datagram, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpPacket<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    /// The payload, trimmed to the UDP length field.
    pub payload: &'a [u8],
}

/// Parse a UDP header over the whole IP payload `data`. The length field must
/// fit: shorter than the IP payload is allowed (trailing bytes are dropped),
/// longer means the datagram was cut or lies.
#[inline]
pub fn parse_udp(data: &[u8]) -> Result<UdpPacket<'_>, DecodeError> {
    let h = take(data, 0, 8, Layer::Udp)?;
    let length = usize::from(be16(h, 4, Layer::Udp)?);
    if length < 8 || length > data.len() {
        return Err(DecodeError::BadUdpLength {
            length,
            available: data.len(),
        });
    }
    Ok(UdpPacket {
        src_port: be16(h, 0, Layer::Udp)?,
        dst_port: be16(h, 2, Layer::Udp)?,
        payload: &data[8..length],
    })
}

/// TCP control flags (the low byte of the flags field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;

    pub fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }
    pub fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }
    pub fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }
    pub fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }
}

/// A TCP segment, borrowed. Options are skipped: reassembly needs only the
/// sequence number (SACK and timestamps matter to the endpoints, not to us).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegment<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    pub payload: &'a [u8],
}

/// Parse a TCP header over the whole IP payload `data`.
pub fn parse_tcp(data: &[u8]) -> Result<TcpSegment<'_>, DecodeError> {
    let h = take(data, 0, 20, Layer::Tcp)?;
    let offset = usize::from(h[12] >> 4) * 4;
    if offset < 20 || offset > data.len() {
        return Err(DecodeError::BadTcpOffset(offset));
    }
    Ok(TcpSegment {
        src_port: be16(h, 0, Layer::Tcp)?,
        dst_port: be16(h, 2, Layer::Tcp)?,
        seq: be32(h, 4, Layer::Tcp)?,
        ack: be32(h, 8, Layer::Tcp)?,
        flags: TcpFlags(h[13]),
        payload: &data[offset..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::error::ErrorKind;

    #[test]
    fn udp_length_checks() {
        let d = [0x13, 0xc4, 0x13, 0xc4, 0, 10, 0, 0, b'h', b'i', 0, 0];
        let u = parse_udp(&d).unwrap();
        assert_eq!(
            (u.src_port, u.dst_port, u.payload),
            (5060, 5060, &b"hi"[..])
        );
        let mut bad = d;
        bad[5] = 20;
        assert_eq!(parse_udp(&bad).unwrap_err().kind(), ErrorKind::BadUdp);
        bad[5] = 4;
        assert_eq!(parse_udp(&bad).unwrap_err().kind(), ErrorKind::BadUdp);
        assert_eq!(parse_udp(&d[..7]).unwrap_err().kind(), ErrorKind::Truncated);
    }

    #[test]
    fn tcp_options_skipped() {
        let mut d = vec![
            0x13, 0xc4, 0x17, 0x70, 0, 0, 0, 7, 0, 0, 0, 9, 0x60, 0x18, 0, 0, 0, 0, 0, 0,
        ];
        d.extend_from_slice(&[1, 1, 1, 0]);
        d.extend_from_slice(b"SIP");
        let t = parse_tcp(&d).unwrap();
        assert_eq!((t.seq, t.ack, t.payload), (7, 9, &b"SIP"[..]));
        assert!(t.flags.ack() && !t.flags.syn());
        d[12] = 0xf0;
        assert_eq!(parse_tcp(&d).unwrap_err().kind(), ErrorKind::BadTcp);
        d[12] = 0x40;
        assert_eq!(parse_tcp(&d).unwrap_err().kind(), ErrorKind::BadTcp);
    }
}
