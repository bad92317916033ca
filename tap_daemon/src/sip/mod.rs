//! SIP, SDP and call tracking, sans-IO: bytes in, typed values out; the
//! tracker takes the time as an argument and never reads a clock, so every
//! behaviour (expiry, floods) is testable with simulated time.
//!
//! * [`message`]: one SIP message (RFC 3261) from a datagram or a framed
//!   stream message.
//! * [`framer`]: cuts a TCP byte stream into messages by Content-Length.
//! * [`sdp`]: the parts of an SDP body (RFC 4566) a recorder needs.
//! * [`tracker`]: follows INVITE dialogs by Call-ID and maps RTP flows to
//!   their call and direction.
//! * [`call_key`]: the stable 36-character call id derived from a Call-ID.

pub mod call_key;
pub mod framer;
pub mod message;
pub mod sdp;
pub mod tracker;

/// Where the ASCII `byte` first is in `s`: `s.find(char)` as a plain scan.
/// SIP and SDP pieces are short and their separators come within a few
/// bytes (`a=`, `sip:`, `tag=`), where the general character search costs
/// more to set up than the scan does.
pub(crate) fn find_byte(s: &str, byte: u8) -> Option<usize> {
    debug_assert!(byte.is_ascii());
    s.bytes().position(|b| b == byte)
}

/// `s.split_once(char)` for an ASCII `byte`, by [`find_byte`]. The byte
/// being ASCII, both sides are cut at character boundaries.
pub(crate) fn split_at_byte(s: &str, byte: u8) -> Option<(&str, &str)> {
    let at = find_byte(s, byte)?;
    Some((&s[..at], &s[at + 1..]))
}

/// `s.trim()`, with no character decoded when `s` begins and ends with
/// ASCII that is not whitespace, as header values and SDP fields nearly
/// always do.
pub(crate) fn trim(s: &str) -> &str {
    let plain = |b: &u8| b.is_ascii_graphic();
    let bytes = s.as_bytes();
    if bytes.first().is_some_and(plain) && bytes.last().is_some_and(plain) {
        return s;
    }
    s.trim()
}

/// `s.trim_end()`, with no character decoded when `s` ends with ASCII that
/// is not whitespace.
pub(crate) fn trim_end(s: &str) -> &str {
    if s.as_bytes().last().is_some_and(u8::is_ascii_graphic) {
        return s;
    }
    s.trim_end()
}

/// `s.split_whitespace()`, cut by a byte scan while the text is ASCII (as
/// SDP lines are): whitespace there is what `char::is_whitespace` says of
/// ASCII (tab to carriage return, space). From a byte that is not ASCII
/// on, the rest goes the general way, so other whitespace still separates.
pub(crate) fn fields(s: &str) -> Fields<'_> {
    Fields { rest: s }
}

/// See [`fields`].
pub(crate) struct Fields<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Fields<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let space = |b: u8| matches!(b, b'\t'..=b'\r' | b' ');
        let bytes = self.rest.as_bytes();
        let start = bytes.iter().position(|&b| !space(b))?;
        let len = bytes[start..]
            .iter()
            .position(|&b| space(b) || !b.is_ascii())
            .unwrap_or(bytes.len() - start);
        let end = start + len;
        if bytes[start].is_ascii() && bytes.get(end).map_or(true, |b| b.is_ascii()) {
            let field = &self.rest[start..end];
            self.rest = &self.rest[end..];
            return Some(field);
        }
        // Text that is not ASCII: the field as `split_whitespace` cuts it,
        // and the rest after it.
        let field = self.rest.split_whitespace().next()?;
        let end = field.as_ptr() as usize - self.rest.as_ptr() as usize + field.len();
        self.rest = &self.rest[end..];
        Some(field)
    }
}

pub use call_key::CallKey;
pub use framer::{frame, Frame, FrameError, SipStream};
pub use message::{CSeq, Header, Method, NameAddr, SipError, SipMessage, StartLine};
pub use sdp::{Media, MediaDirection, MediaKind, RtpMap, Sdp, SdpError};
pub use tracker::{
    CallEvent, CallInfo, Classified, EndReason, MediaDesc, PayloadMapping, Side, Tracker,
    TrackerConfig, TrackerStats,
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Text the byte-scan shortcuts must read as the general `str` methods do.
    const SAMPLES: &[&str] = &[
        "",
        " ",
        "a",
        "IN IP4 10.0.0.1",
        "  audio 4000  RTP/AVP 0 8\t101 ",
        "audio\u{0b}4000\u{0c}RTP/AVP\r",
        "IN\u{a0}IP4 10.0.0.1",
        "\u{a0}audio 4000\u{2003}x\u{3000}",
        "caf\u{e9} 4000 \u{e9}t\u{e9}",
        "\u{1c}x\u{1f} y",
        "x\u{85}",
        "\u{85}",
        " \t\r\n",
    ];

    #[test]
    fn fields_cut_as_split_whitespace_does() {
        for s in SAMPLES {
            let ours: Vec<&str> = fields(s).collect();
            let theirs: Vec<&str> = s.split_whitespace().collect();
            assert_eq!(ours, theirs, "{s:?}");
        }
    }

    #[test]
    fn trims_as_str_does() {
        for s in SAMPLES {
            assert_eq!(trim(s), s.trim(), "{s:?}");
            assert_eq!(trim_end(s), s.trim_end(), "{s:?}");
        }
    }
}
