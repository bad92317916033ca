//! What a UDP payload looks like: SIP, ZRTP, RTP; which payload types are
//! RTCP or static audio.

use crate::sip::sdp::static_payload_type;

/// Payload type numbers that, with the marker bit, are RTCP packet types
/// 200 to 204 (RFC 5761).
#[inline]
pub(super) fn is_rtcp_range(pt: u8) -> bool {
    (72..=76).contains(&pt)
}

/// RFC 3551's static audio payload types, comfort noise excluded: what a flow
/// without SDP may carry.
pub(super) fn static_audio(pt: u8) -> bool {
    pt != 13 && pt != 19 && static_payload_type(pt).is_some()
}

/// A UDP flow that looked like RTP, waiting for a packet close enough in
/// Whether bytes start like a SIP request or response line: `SIP/2.0 ` or an
/// upper-case method token followed by ` sip:`, ` sips:` or ` tel:`. RTP
/// starts with a byte of 0x80 or more, so it never passes.
///
/// Both start with an upper-case letter, which RTP's first byte never is:
/// that test is inlined where every datagram is sniffed, the rest is not.
#[inline]
pub fn looks_like_sip(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(u8::is_ascii_uppercase) && sip_start_line(bytes)
}

/// [`looks_like_sip`] past its first byte.
fn sip_start_line(bytes: &[u8]) -> bool {
    if bytes.starts_with(b"SIP/2.0 ") {
        return true;
    }
    let method = bytes.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method == 0 || method > 16 {
        return false;
    }
    let after = &bytes[method..];
    [&b" sip:"[..], b" sips:", b" tel:"]
        .iter()
        .any(|p| after.len() >= p.len() && after[..p.len()].eq_ignore_ascii_case(p))
}

/// The message type of a ZRTP packet (RFC 6189 section 5): first nibble
/// 0001 (an RTP version of 0, so never taken for RTP), the magic cookie
/// `ZRTP` at bytes 4..8, then the message: preamble 0x505a, length, and the
/// 8-byte type block (`Hello   `, `Commit  `, ..., `Conf2ACK`).
#[inline]
pub(super) fn zrtp_message(bytes: &[u8]) -> Option<&[u8]> {
    let fixed = bytes.get(..24)?;
    (fixed[0] >> 4 == 1 && &fixed[4..8] == b"ZRTP" && fixed[12..14] == [0x50, 0x5a])
        .then(|| &fixed[16..24])
}

/// Version 2 in the first byte and at least a fixed header.
pub(super) fn looks_like_rtp(bytes: &[u8]) -> bool {
    bytes.len() >= 12 && bytes[0] >> 6 == 2
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}
