//! The parts of an SDP session description (RFC 4566, RFC 3264 offer/answer)
//! that tell a recorder where a party wants to receive media and what the
//! payload type numbers mean: `c=`, `m=`, `a=rtpmap`, `a=fmtp`, and the
//! direction attributes.
//!
//! Every other line is skipped, so new SDP extensions never break parsing;
//! malformed `c=` or `m=` lines are errors, because guessing an address would
//! send someone else's audio into the wrong recording. Counts are bounded
//! ([`MAX_MEDIA`], [`MAX_FORMATS`]) so a hostile body costs little.

use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

use super::{fields, split_at_byte, trim, trim_end};

/// Most `m=` sections kept. Real offers have one to three (audio, video,
/// image); more are refused.
pub const MAX_MEDIA: usize = 16;

/// Most payload formats (and rtpmap/fmtp lines) kept per `m=` section.
pub const MAX_FORMATS: usize = 64;

/// Why a body is not an SDP this parser accepts.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SdpError {
    /// The body is not UTF-8 text, or does not start with `v=`.
    #[error("not an SDP body")]
    NotSdp,
    /// A `c=` line is not `IN IP4|IP6 ADDRESS`.
    #[error("malformed connection line {line:?}")]
    BadConnection { line: String },
    /// An `m=` line is not `MEDIA PORT[/N] PROTO FMT...`.
    #[error("malformed media line {line:?}")]
    BadMedia { line: String },
    /// More than [`MAX_MEDIA`] media sections or [`MAX_FORMATS`] formats.
    #[error("too many {what}")]
    TooMany { what: &'static str },
}

impl SdpError {
    /// Every value [`SdpError::kind`] returns.
    pub const KINDS: [&'static str; 4] = [
        "sdp_not_sdp",
        "sdp_bad_connection",
        "sdp_bad_media",
        "sdp_too_many",
    ];

    /// A short stable name for counters.
    pub fn kind(&self) -> &'static str {
        match self {
            SdpError::NotSdp => "sdp_not_sdp",
            SdpError::BadConnection { .. } => "sdp_bad_connection",
            SdpError::BadMedia { .. } => "sdp_bad_media",
            SdpError::TooMany { .. } => "sdp_too_many",
        }
    }
}

/// The media direction attribute (RFC 3264 5.1). Defaults to `SendRecv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MediaDirection {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl MediaDirection {
    fn parse(attr: &str) -> Option<MediaDirection> {
        // Case-insensitive: X-Lite writes `a=SendRecv`. Compared in place:
        // every `a=` line comes here, and a lowercase copy of each was the
        // dearest part of an SDP.
        const NAMES: [(&str, MediaDirection); 4] = [
            ("sendrecv", MediaDirection::SendRecv),
            ("sendonly", MediaDirection::SendOnly),
            ("recvonly", MediaDirection::RecvOnly),
            ("inactive", MediaDirection::Inactive),
        ];
        NAMES
            .iter()
            .find(|(name, _)| attr.eq_ignore_ascii_case(name))
            .map(|&(_, direction)| direction)
    }
}

/// What an `m=` section carries. Only `Audio` becomes recorded samples;
/// `Image` (T.38 fax) and `Video` are recognised so that they never are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Audio,
    Video,
    /// `m=image`: T.38 fax (`udptl t38`).
    Image,
    Application,
    Text,
    Message,
    Other(String),
}

impl MediaKind {
    fn parse(s: &str) -> MediaKind {
        const NAMES: [(&str, MediaKind); 6] = [
            ("audio", MediaKind::Audio),
            ("video", MediaKind::Video),
            ("image", MediaKind::Image),
            ("application", MediaKind::Application),
            ("text", MediaKind::Text),
            ("message", MediaKind::Message),
        ];
        match NAMES.iter().find(|(name, _)| s.eq_ignore_ascii_case(name)) {
            Some((_, kind)) => kind.clone(),
            None => MediaKind::Other(first_chars(s, 32).to_owned()),
        }
    }
}

/// An `a=rtpmap:PT NAME/CLOCK[/CHANNELS]` line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RtpMap<'a> {
    pub payload_type: u8,
    /// The encoding name as written (`PCMA`, `pcma`, `telephone-event`...).
    pub encoding: &'a str,
    pub clock_rate: u32,
    pub channels: Option<u8>,
}

/// One `m=` section with what applies to it, borrowed from the body: an
/// SDP is read for each message that carries one, and most repeat the
/// media already known, so copies of its text were allocations for nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media<'a> {
    pub kind: MediaKind,
    /// The port; 0 means the stream is rejected or disabled (RFC 3264 6).
    pub port: u16,
    /// The transport, e.g. `RTP/AVP`, `RTP/SAVP`, `udptl`.
    pub proto: &'a str,
    /// RTP payload type numbers, in preference order. Formats that are not
    /// numbers (T.38's `t38`) are left out.
    pub payload_types: Vec<u8>,
    /// The media-level `c=` address, overriding the session's.
    pub connection: Option<IpAddr>,
    pub rtpmaps: Vec<RtpMap<'a>>,
    /// `a=fmtp:PT PARAMS` lines.
    pub fmtps: Vec<(u8, &'a str)>,
    /// The media-level direction attribute, if any.
    pub direction: Option<MediaDirection>,
    /// An `a=crypto:` line (SDES keys, RFC 4568): with it, even an `RTP/AVP`
    /// section ("best-effort SRTP") carries SRTP once answered likewise.
    pub crypto: bool,
}

impl Media<'_> {
    /// Whether its RTP is SRTP: a secure profile (`RTP/SAVP`, `RTP/SAVPF`,
    /// DTLS-SRTP's `UDP/TLS/RTP/SAVPF`) or SDES keys.
    pub fn is_encrypted(&self) -> bool {
        self.crypto
            || self
                .proto
                .as_bytes()
                .windows(4)
                .any(|w| w.eq_ignore_ascii_case(b"SAVP"))
    }
}

/// A parsed session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp<'a> {
    /// The session-level `c=` address.
    pub connection: Option<IpAddr>,
    /// The session-level direction attribute, if any.
    pub direction: Option<MediaDirection>,
    pub media: Vec<Media<'a>>,
}

impl<'a> Sdp<'a> {
    /// Parses an SDP body. Accepts CRLF or LF line ends and lines in any
    /// order after `v=` (strict ordering would lose real calls for nothing).
    pub fn parse(body: &'a [u8]) -> Result<Sdp<'a>, SdpError> {
        let text = std::str::from_utf8(body).map_err(|_| SdpError::NotSdp)?;
        let text = text.trim_start();
        if !text.starts_with("v=") {
            return Err(SdpError::NotSdp);
        }
        let mut sdp = Sdp {
            connection: None,
            direction: None,
            media: Vec::new(),
        };
        let mut rest = text;
        while !rest.is_empty() {
            let line;
            (line, rest) = match memchr::memchr(b'\n', rest.as_bytes()) {
                Some(nl) => (&rest[..nl], &rest[nl + 1..]),
                None => (rest, ""),
            };
            // Only `c=`, `m=` and `a=` lines are read: the rest (`o=`,
            // `s=`, `t=`...) is passed over without being trimmed or cut.
            // Trimming the value trims the line's end, its CR included.
            let kind = match line.as_bytes() {
                [kind @ (b'c' | b'm' | b'a'), b'=', ..] => *kind,
                _ => continue,
            };
            let value = trim_end(&line[2..]);
            match kind {
                b'c' => {
                    let addr = parse_connection(value)?;
                    match sdp.media.last_mut() {
                        Some(m) => m.connection = Some(addr),
                        None => sdp.connection = Some(addr),
                    }
                }
                b'm' => {
                    if sdp.media.len() >= MAX_MEDIA {
                        return Err(SdpError::TooMany {
                            what: "media sections",
                        });
                    }
                    sdp.media.push(parse_media(value)?);
                }
                b'a' => sdp.attribute(value)?,
                _ => {}
            }
        }
        Ok(sdp)
    }

    fn attribute(&mut self, value: &'a str) -> Result<(), SdpError> {
        let (name, arg) = split_at_byte(value, b':').unwrap_or((value, ""));
        if let Some(dir) = MediaDirection::parse(trim(name)) {
            match self.media.last_mut() {
                Some(m) => m.direction = Some(dir),
                None => self.direction = Some(dir),
            }
            return Ok(());
        }
        let Some(media) = self.media.last_mut() else {
            return Ok(());
        };
        if name.eq_ignore_ascii_case("rtpmap") {
            if media.rtpmaps.len() >= MAX_FORMATS {
                return Err(SdpError::TooMany { what: "rtpmaps" });
            }
            // A malformed rtpmap is skipped, not fatal: the static payload
            // types still work without it.
            if let Some(map) = parse_rtpmap(arg) {
                media.rtpmaps.push(map);
            }
        } else if name.eq_ignore_ascii_case("crypto") {
            media.crypto = true;
        } else if name.eq_ignore_ascii_case("fmtp") {
            if media.fmtps.len() >= MAX_FORMATS {
                return Err(SdpError::TooMany { what: "fmtps" });
            }
            let (pt, params) = split_at_byte(arg, b' ').unwrap_or((arg, ""));
            if let Ok(pt) = trim(pt).parse::<u8>() {
                media.fmtps.push((pt, first_chars(trim(params), 256)));
            }
        }
        Ok(())
    }

    /// The first audio section with a non-zero port: the one a call's voice
    /// uses. (A second audio stream is rare enough to ignore.)
    pub fn audio(&self) -> Option<&Media<'a>> {
        self.media
            .iter()
            .find(|m| m.kind == MediaKind::Audio && m.port != 0)
    }

    /// Where `media` is to be received: its own `c=` or the session's, and
    /// its port. `None` when the port is 0 or no address is given.
    pub fn endpoint(&self, media: &Media<'_>) -> Option<SocketAddr> {
        if media.port == 0 {
            return None;
        }
        let ip = media.connection.or(self.connection)?;
        Some(SocketAddr::new(ip, media.port))
    }

    /// The direction in force for `media`: its own attribute, else the
    /// session's, else sendrecv; a `0.0.0.0` connection address (RFC 2543
    /// hold) counts as inactive.
    pub fn direction_of(&self, media: &Media<'_>) -> MediaDirection {
        let held = media
            .connection
            .or(self.connection)
            .is_some_and(|ip| ip.is_unspecified());
        if held {
            return MediaDirection::Inactive;
        }
        media.direction.or(self.direction).unwrap_or_default()
    }
}

impl Media<'_> {
    /// The encoding name and clock rate of payload type `pt`: from `a=rtpmap`
    /// when given, else the static table of RFC 3551.
    pub fn encoding(&self, pt: u8) -> Option<(&str, u32)> {
        if let Some(map) = self.rtpmaps.iter().find(|m| m.payload_type == pt) {
            return Some((map.encoding, map.clock_rate));
        }
        static_payload_type(pt)
    }

    /// The payload type of RFC 4733 telephone-events (DTMF), if offered.
    pub fn telephone_event(&self) -> Option<u8> {
        self.rtpmaps
            .iter()
            .find(|m| m.encoding.eq_ignore_ascii_case("telephone-event"))
            .map(|m| m.payload_type)
    }

    /// The `a=fmtp` parameters of payload type `pt`.
    pub fn fmtp(&self, pt: u8) -> Option<&str> {
        self.fmtps.iter().find(|(p, _)| *p == pt).map(|&(_, s)| s)
    }
}

/// RFC 3551 table 4 and 5: the static audio payload types.
pub fn static_payload_type(pt: u8) -> Option<(&'static str, u32)> {
    Some(match pt {
        0 => ("PCMU", 8000),
        3 => ("GSM", 8000),
        4 => ("G723", 8000),
        5 => ("DVI4", 8000),
        6 => ("DVI4", 16000),
        7 => ("LPC", 8000),
        8 => ("PCMA", 8000),
        9 => ("G722", 8000),
        10 => ("L16", 44100),
        11 => ("L16", 44100),
        12 => ("QCELP", 8000),
        13 => ("CN", 8000),
        14 => ("MPA", 90000),
        15 => ("G728", 8000),
        16 => ("DVI4", 11025),
        17 => ("DVI4", 22050),
        18 => ("G729", 8000),
        _ => return None,
    })
}

fn parse_connection(value: &str) -> Result<IpAddr, SdpError> {
    let bad = || SdpError::BadConnection {
        line: value.chars().take(80).collect(),
    };
    let mut parts = fields(value);
    let (net, family, addr) = (
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
    );
    if !net.eq_ignore_ascii_case("IN") {
        return Err(bad());
    }
    // Multicast addresses carry `/ttl[/count]`.
    let addr = addr.split('/').next().unwrap_or("");
    let ip: IpAddr = if family.eq_ignore_ascii_case("IP4") {
        IpAddr::V4(addr.parse().map_err(|_| bad())?)
    } else if family.eq_ignore_ascii_case("IP6") {
        IpAddr::V6(addr.parse().map_err(|_| bad())?)
    } else {
        return Err(bad());
    };
    Ok(ip)
}

fn parse_media(value: &str) -> Result<Media<'_>, SdpError> {
    let bad = || SdpError::BadMedia {
        line: value.chars().take(80).collect(),
    };
    let mut parts = fields(value);
    let kind = MediaKind::parse(parts.next().ok_or_else(bad)?);
    let port = parts.next().ok_or_else(bad)?;
    let port: u16 = port
        .split('/')
        .next()
        .unwrap_or("")
        .parse()
        .map_err(|_| bad())?;
    let proto = first_chars(parts.next().ok_or_else(bad)?, 32);
    let mut payload_types = Vec::new();
    for fmt in parts {
        if payload_types.len() >= MAX_FORMATS {
            return Err(SdpError::TooMany { what: "formats" });
        }
        if let Ok(pt) = fmt.parse::<u8>() {
            if pt < 128 {
                payload_types.push(pt);
            }
        }
    }
    Ok(Media {
        kind,
        port,
        proto,
        payload_types,
        connection: None,
        rtpmaps: Vec::new(),
        fmtps: Vec::new(),
        direction: None,
        crypto: false,
    })
}

/// The first `n` characters of `s` (all of it when shorter): what
/// `s.chars().take(n).collect()` keeps, without building it a character at
/// a time.
fn first_chars(s: &str, n: usize) -> &str {
    if s.len() <= n {
        // No more characters than bytes.
        return s;
    }
    match s.char_indices().nth(n) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

fn parse_rtpmap(arg: &str) -> Option<RtpMap<'_>> {
    let (pt, rest) = trim(arg).split_once(char::is_whitespace)?;
    let payload_type: u8 = pt.parse().ok().filter(|pt| *pt < 128)?;
    let mut parts = trim(rest).split('/');
    let encoding = first_chars(trim(parts.next()?), 32);
    let clock_rate: u32 = trim(parts.next()?).parse().ok()?;
    let channels = parts.next().and_then(|c| trim(c).parse().ok());
    if encoding.is_empty() {
        return None;
    }
    Some(RtpMap {
        payload_type,
        encoding,
        clock_rate,
        channels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\n\
        o=- 1 1 IN IP4 10.0.0.1\r\n\
        s=-\r\n\
        c=IN IP4 10.0.0.1\r\n\
        t=0 0\r\n\
        m=audio 4000 RTP/AVP 8 0 101\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-15\r\n\
        a=sendonly\r\n\
        m=video 5000 RTP/AVP 96\r\n\
        c=IN IP6 2001:db8::1\r\n\
        a=rtpmap:96 H264/90000\r\n\
        m=image 0 udptl t38\r\n";

    #[test]
    fn offer() {
        let sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
        let audio = sdp.audio().unwrap();
        assert_eq!(sdp.endpoint(audio), Some("10.0.0.1:4000".parse().unwrap()));
        assert_eq!(audio.payload_types, [8, 0, 101]);
        assert_eq!(audio.encoding(0), Some(("PCMU", 8000)));
        assert_eq!(audio.encoding(8), Some(("PCMA", 8000)));
        assert_eq!(audio.telephone_event(), Some(101));
        assert_eq!(audio.fmtp(101), Some("0-15"));
        assert_eq!(sdp.direction_of(audio), MediaDirection::SendOnly);
        let video = &sdp.media[1];
        assert_eq!(video.kind, MediaKind::Video);
        assert_eq!(
            sdp.endpoint(video),
            Some("[2001:db8::1]:5000".parse().unwrap())
        );
        let image = &sdp.media[2];
        assert_eq!(image.kind, MediaKind::Image);
        assert_eq!(sdp.endpoint(image), None);
        assert!(image.payload_types.is_empty());
    }

    #[test]
    fn hold_and_errors() {
        let sdp = Sdp::parse(b"v=0\nc=IN IP4 0.0.0.0\nm=audio 4000 RTP/AVP 0\n").unwrap();
        assert_eq!(sdp.direction_of(&sdp.media[0]), MediaDirection::Inactive);
        assert_eq!(Sdp::parse(b"hello").unwrap_err(), SdpError::NotSdp);
        assert!(matches!(
            Sdp::parse(b"v=0\nc=IN IP4 999.1.1.1\n"),
            Err(SdpError::BadConnection { .. })
        ));
        assert!(matches!(
            Sdp::parse(b"v=0\nm=audio 70000 RTP/AVP 0\n"),
            Err(SdpError::BadMedia { .. })
        ));
        let many = format!("v=0\n{}", "m=audio 1 RTP/AVP 0\n".repeat(MAX_MEDIA + 1));
        assert!(matches!(
            Sdp::parse(many.as_bytes()),
            Err(SdpError::TooMany { .. })
        ));
    }
}
