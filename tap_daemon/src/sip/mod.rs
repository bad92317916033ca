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

pub use call_key::CallKey;
pub use framer::{frame, Frame, FrameError, SipStream};
pub use message::{CSeq, Header, Method, NameAddr, SipError, SipMessage, StartLine};
pub use sdp::{Media, MediaDirection, MediaKind, RtpMap, Sdp, SdpError};
pub use tracker::{
    CallEvent, CallInfo, Classified, EndReason, MediaDesc, PayloadMapping, Side, Tracker,
    TrackerConfig, TrackerStats,
};
