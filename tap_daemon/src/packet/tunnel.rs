//! GRE (RFC 2784/2890) and what it carries for a tap: IP, bridged Ethernet
//! (0x6558) and ERSPAN mirror sessions (types I, II, III), the usual way a
//! switch ships a SPAN port's traffic to a remote capture box.

use super::error::{be16, take, DecodeError, Layer};

/// What a GRE packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GreInner<'a> {
    /// An IPv4 packet.
    Ipv4(&'a [u8]),
    /// An IPv6 packet.
    Ipv6(&'a [u8]),
    /// A whole Ethernet frame (transparent Ethernet bridging or ERSPAN).
    Ethernet(&'a [u8]),
}

const GRE_C: u16 = 0x8000;
const GRE_R: u16 = 0x4000;
const GRE_K: u16 = 0x2000;
const GRE_S: u16 = 0x1000;

/// Peel a GRE header (and an ERSPAN header behind it).
pub fn parse_gre(data: &[u8]) -> Result<GreInner<'_>, DecodeError> {
    let flags = be16(data, 0, Layer::Tunnel)?;
    let ty = be16(data, 2, Layer::Tunnel)?;
    if flags & 0x0007 != 0 {
        // Version 1 is PPTP's enhanced GRE, carrying PPP: not a mirror.
        return Err(DecodeError::UnsupportedTunnel("GRE version is not 0"));
    }
    if flags & GRE_R != 0 {
        return Err(DecodeError::UnsupportedTunnel("GRE source routing"));
    }
    let mut at = 4;
    for bit in [GRE_C, GRE_K, GRE_S] {
        if flags & bit != 0 {
            at += 4;
        }
    }
    let rest = take(data, at, data.len().saturating_sub(at), Layer::Tunnel)?;
    match ty {
        0x0800 => Ok(GreInner::Ipv4(rest)),
        0x86dd => Ok(GreInner::Ipv6(rest)),
        0x6558 => Ok(GreInner::Ethernet(rest)),
        // ERSPAN type I has no header and no sequence number; type II sets S
        // and has an 8-byte header whose version nibble is 1.
        0x88be if flags & GRE_S == 0 => Ok(GreInner::Ethernet(rest)),
        0x88be => {
            let h = take(rest, 0, 8, Layer::Tunnel)?;
            if h[0] >> 4 != 1 {
                return Err(DecodeError::UnsupportedTunnel("ERSPAN II version"));
            }
            Ok(GreInner::Ethernet(&rest[8..]))
        }
        // ERSPAN type III: 12 bytes, plus an 8-byte platform sub-header when
        // the O flag (last bit) is set; frame type 0 is Ethernet.
        0x22eb => {
            let h = take(rest, 0, 12, Layer::Tunnel)?;
            if h[0] >> 4 != 2 {
                return Err(DecodeError::UnsupportedTunnel("ERSPAN III version"));
            }
            let frame_type = (h[10] >> 2) & 0x1f;
            let len = if h[11] & 1 != 0 { 20 } else { 12 };
            let inner = take(rest, len, rest.len().saturating_sub(len), Layer::Tunnel)?;
            match frame_type {
                0 => Ok(GreInner::Ethernet(inner)),
                _ => Err(DecodeError::UnsupportedTunnel("ERSPAN III frame type")),
            }
        }
        _ => Err(DecodeError::UnsupportedTunnel("GRE protocol type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::error::ErrorKind;

    #[test]
    fn gre_plain_and_keyed() {
        assert_eq!(
            parse_gre(&[0, 0, 0x08, 0x00, 0x45]).unwrap(),
            GreInner::Ipv4(&[0x45])
        );
        assert_eq!(
            parse_gre(&[0x20, 0, 0x65, 0x58, 1, 2, 3, 4, 0xaa]).unwrap(),
            GreInner::Ethernet(&[0xaa])
        );
        assert_eq!(
            parse_gre(&[0, 1, 0x88, 0x0b]).unwrap_err().kind(),
            ErrorKind::UnsupportedTunnel
        );
    }

    #[test]
    fn erspan_types() {
        // type II: S set, 4-byte sequence, 8-byte ERSPAN header with version 1.
        let mut f = vec![0x10, 0, 0x88, 0xbe, 0, 0, 0, 1];
        f.extend_from_slice(&[0x10, 0x64, 0, 1, 0, 0, 0, 0, 0xee]);
        assert_eq!(parse_gre(&f).unwrap(), GreInner::Ethernet(&[0xee]));
        // type I: no S, no header.
        assert_eq!(
            parse_gre(&[0, 0, 0x88, 0xbe, 0xee]).unwrap(),
            GreInner::Ethernet(&[0xee])
        );
        // type III with the optional sub-header.
        let mut f = vec![0x10, 0, 0x22, 0xeb, 0, 0, 0, 1];
        f.extend_from_slice(&[0x20, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0; 8]);
        f.push(0xee);
        assert_eq!(parse_gre(&f).unwrap(), GreInner::Ethernet(&[0xee]));
        for len in 0..f.len() {
            let _ = parse_gre(&f[..len]);
        }
    }
}
