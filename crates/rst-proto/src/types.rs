use std::fmt;

use crate::ParseError;

/// A call identifier that is safe to use as a file name: 1 to 64 characters of
/// `[A-Za-z0-9_-]`, starting with a letter or digit. FreeSWITCH session UUIDs
/// (36 characters) and tap_daemon's derived ids fit; `/`, `..`, NUL and spaces never do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid<'a>(&'a str);

impl<'a> Uuid<'a> {
    /// Longest accepted identifier.
    pub const MAX_LEN: usize = 64;

    /// Validates `text` as a call identifier.
    pub fn new(text: &'a str) -> Result<Self, ParseError> {
        if Self::is_valid(text.as_bytes()) {
            Ok(Uuid(text))
        } else {
            Err(ParseError::BadUuid {
                uuid: text.escape_debug().to_string(),
            })
        }
    }

    /// An identifier checked before: a [`crate::stream::Stream`] checks its
    /// UUID once, at its start, so the per-frame path does not scan it again.
    pub(crate) fn trusted(text: &'a str) -> Self {
        debug_assert!(Self::is_valid(text.as_bytes()), "{text:?}");
        Uuid(text)
    }

    pub(crate) fn from_bytes(bytes: &'a [u8]) -> Result<Self, ParseError> {
        if Self::is_valid(bytes) {
            // Validity implies ASCII, so this cannot fail.
            Ok(Uuid(
                std::str::from_utf8(bytes).map_err(|_| bad_uuid(bytes))?,
            ))
        } else {
            Err(bad_uuid(bytes))
        }
    }

    fn is_valid(bytes: &[u8]) -> bool {
        matches!(bytes.first(), Some(b) if b.is_ascii_alphanumeric())
            && bytes.len() <= Self::MAX_LEN
            && bytes
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

fn bad_uuid(bytes: &[u8]) -> ParseError {
    ParseError::BadUuid {
        uuid: String::from_utf8_lossy(bytes).escape_debug().to_string(),
    }
}

impl fmt::Display for Uuid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Which way the audio went through FreeSWITCH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// `R`: read from the channel, what the channel's far end says
    /// (for a tapped call: caller to callee).
    Read,
    /// `W`: written to the channel, what the far end hears
    /// (for a tapped call: callee to caller).
    Write,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Read, Direction::Write];

    pub fn flag(self) -> u8 {
        match self {
            Direction::Read => b'R',
            Direction::Write => b'W',
        }
    }

    /// `"R"` or `"W"`, as on the wire and in file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Read => "R",
            Direction::Write => "W",
        }
    }

    pub(crate) fn from_flag(flag: &[u8]) -> Result<Self, ParseError> {
        match flag {
            b"R" => Ok(Direction::Read),
            b"W" => Ok(Direction::Write),
            other => Err(ParseError::BadFlag {
                flag: String::from_utf8_lossy(other).into_owned(),
            }),
        }
    }
}

/// An RTP payload type number (0 to 127), as the DATA message's PT field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PayloadType(u8);

impl PayloadType {
    pub const PCMU: PayloadType = PayloadType(0);
    pub const G723: PayloadType = PayloadType(4);
    pub const PCMA: PayloadType = PayloadType(8);
    pub const G722: PayloadType = PayloadType(9);
    /// In the rst protocol, 16-bit linear PCM in the sender's byte order (little-endian).
    pub const L16: PayloadType = PayloadType(10);
    pub const G729: PayloadType = PayloadType(18);

    /// `None` above 127, the largest RTP payload type.
    pub const fn new(pt: u8) -> Option<Self> {
        if pt <= 127 {
            Some(PayloadType(pt))
        } else {
            None
        }
    }

    pub const fn number(self) -> u8 {
        self.0
    }

    /// Accepts one to three ASCII digits (the protocol sends two, `00`).
    pub(crate) fn from_digits(digits: &[u8]) -> Result<Self, ParseError> {
        let bad = || ParseError::BadPayloadType {
            pt: String::from_utf8_lossy(digits).into_owned(),
        };
        let number = parse_decimal(digits, 3).ok_or_else(bad)?;
        u8::try_from(number)
            .ok()
            .and_then(PayloadType::new)
            .ok_or_else(bad)
    }
}

impl fmt::Display for PayloadType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}", self.0)
    }
}

/// A decimal number of 1 to `max_digits` ASCII digits, no sign, no spaces.
pub(crate) fn parse_decimal(digits: &[u8], max_digits: usize) -> Option<u64> {
    if digits.is_empty() || digits.len() > max_digits {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        d.is_ascii_digit().then(|| acc * 10 + u64::from(d - b'0'))
    })
}
