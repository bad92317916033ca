//! SIP messages (RFC 3261 section 7): the start line, the headers a call
//! tracker needs, and the body, parsed from one datagram or one framed stream
//! message.
//!
//! The parser borrows from the input wherever it can and allocates only for
//! folded header lines and non-UTF-8 text. It is deliberately lenient where
//! real equipment is sloppy (bare LF line ends, odd whitespace around the
//! colon, header names in any case, compact forms) and strict where a lenient
//! reading would let a hostile packet confuse the tracker: a message over
//! [`MAX_MESSAGE_LEN`], more than [`MAX_HEADERS`] headers, a header line over
//! [`MAX_HEADER_LEN`], a Content-Length larger than the body, or two
//! different values for Call-ID, CSeq, From, To or Content-Length.

use std::borrow::Cow;
use std::fmt;

use thiserror::Error;

use super::{find_byte, split_at_byte, trim};

/// Largest SIP message accepted, in bytes: the largest UDP payload. A SIP
/// message over TCP may in theory be larger, but no real signalling is, and a
/// bound is what keeps a stream buffer from growing without end.
pub const MAX_MESSAGE_LEN: usize = 65_535;

/// Most header lines (after unfolding) accepted in one message. Real INVITEs
/// carry 10 to 40; SBC traces with long Record-Route sets stay under 100.
pub const MAX_HEADERS: usize = 256;

/// Longest single header (name, colon and unfolded value) accepted, in bytes.
/// Long enough for any real Via, Route or P- header; short enough that one
/// header cannot hide a whole message.
pub const MAX_HEADER_LEN: usize = 8_192;

/// Why bytes are not a SIP message this parser accepts.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SipError {
    /// Nothing but whitespace, or bytes ending before the start line does.
    #[error("empty or truncated SIP message")]
    Empty,
    /// The message is longer than [`MAX_MESSAGE_LEN`].
    #[error("SIP message of {len} bytes exceeds the {max}-byte limit")]
    TooLong { len: usize, max: usize },
    /// The first line is neither `METHOD URI SIP/2.0` nor `SIP/2.0 CODE REASON`.
    #[error("malformed start line {line:?}")]
    BadStartLine { line: String },
    /// The start line names a SIP version other than 2.0.
    #[error("unsupported SIP version {version:?}")]
    BadVersion { version: String },
    /// The status code is not three digits from 100 to 699.
    #[error("bad status code {code:?}")]
    BadStatus { code: String },
    /// No empty line ends the header section.
    #[error("header section not terminated by an empty line")]
    UnterminatedHeaders,
    /// A header line has no colon or an empty or invalid name.
    #[error("malformed header line {line:?}")]
    BadHeader { line: String },
    /// More than [`MAX_HEADERS`] headers.
    #[error("more than {max} headers")]
    TooManyHeaders { max: usize },
    /// A header longer than [`MAX_HEADER_LEN`] bytes.
    #[error("header {name:?} of {len} bytes exceeds the {max}-byte limit")]
    HeaderTooLong {
        name: String,
        len: usize,
        max: usize,
    },
    /// A header the tracker relies on (Call-ID, CSeq, From, To) is absent.
    #[error("missing {name} header")]
    MissingHeader { name: &'static str },
    /// A header the tracker relies on appears twice with different values.
    #[error("conflicting {name} headers")]
    ConflictingHeader { name: &'static str },
    /// The CSeq header is not `NUMBER METHOD`.
    #[error("malformed CSeq {value:?}")]
    BadCSeq { value: String },
    /// From or To is not a name-addr or addr-spec.
    #[error("malformed {name} header {value:?}")]
    BadAddress { name: &'static str, value: String },
    /// Content-Length is not a decimal number.
    #[error("malformed Content-Length {value:?}")]
    BadContentLength { value: String },
    /// Content-Length announces more body bytes than the message carries
    /// (RFC 3261 18.3: such a datagram is discarded).
    #[error("Content-Length says {declared} bytes but {actual} follow")]
    BodyTruncated { declared: usize, actual: usize },
}

impl SipError {
    /// Every value [`SipError::kind`] returns, for counters labelled by kind.
    pub const KINDS: [&'static str; 15] = [
        "sip_empty",
        "sip_too_long",
        "sip_bad_start_line",
        "sip_bad_version",
        "sip_bad_status",
        "sip_unterminated_headers",
        "sip_bad_header",
        "sip_too_many_headers",
        "sip_header_too_long",
        "sip_missing_header",
        "sip_conflicting_header",
        "sip_bad_cseq",
        "sip_bad_address",
        "sip_bad_content_length",
        "sip_body_truncated",
    ];

    /// A short stable name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            SipError::Empty => "sip_empty",
            SipError::TooLong { .. } => "sip_too_long",
            SipError::BadStartLine { .. } => "sip_bad_start_line",
            SipError::BadVersion { .. } => "sip_bad_version",
            SipError::BadStatus { .. } => "sip_bad_status",
            SipError::UnterminatedHeaders => "sip_unterminated_headers",
            SipError::BadHeader { .. } => "sip_bad_header",
            SipError::TooManyHeaders { .. } => "sip_too_many_headers",
            SipError::HeaderTooLong { .. } => "sip_header_too_long",
            SipError::MissingHeader { .. } => "sip_missing_header",
            SipError::ConflictingHeader { .. } => "sip_conflicting_header",
            SipError::BadCSeq { .. } => "sip_bad_cseq",
            SipError::BadAddress { .. } => "sip_bad_address",
            SipError::BadContentLength { .. } => "sip_bad_content_length",
            SipError::BodyTruncated { .. } => "sip_body_truncated",
        }
    }
}

/// A SIP method. Methods are case-sensitive (RFC 3261 7.1), so `invite` is
/// an extension method, not INVITE.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Subscribe,
    Notify,
    Publish,
    Info,
    Prack,
    Update,
    Refer,
    Message,
    /// Any other token.
    Other(String),
}

impl Method {
    /// Maps a method token to its variant.
    pub fn parse(token: &str) -> Method {
        match token {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "REGISTER" => Method::Register,
            "OPTIONS" => Method::Options,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "PUBLISH" => Method::Publish,
            "INFO" => Method::Info,
            "PRACK" => Method::Prack,
            "UPDATE" => Method::Update,
            "REFER" => Method::Refer,
            "MESSAGE" => Method::Message,
            other => Method::Other(other.to_owned()),
        }
    }

    /// The method token as on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Publish => "PUBLISH",
            Method::Info => "INFO",
            Method::Prack => "PRACK",
            Method::Update => "UPDATE",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Other(token) => token,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine<'a> {
    /// `METHOD Request-URI SIP/2.0`
    Request { method: Method, uri: &'a str },
    /// `SIP/2.0 Status-Code Reason-Phrase`
    Response { code: u16, reason: Cow<'a, str> },
}

/// The CSeq header: the transaction's sequence number and method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub number: u32,
    pub method: Method,
}

/// A From or To header: an optional display name, the URI and its parts a
/// recorder cares about, and the tag that identifies the dialog's side.
/// Borrowed from the message wherever the text is as written (nearly
/// always): parsing a message allocates no string for it. What the tracker
/// keeps beyond the packet, it copies ([`NameAddr::into_owned`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NameAddr<'a> {
    /// The display name, unquoted and unescaped; `None` when absent or empty.
    pub display_name: Option<Cow<'a, str>>,
    /// The URI as written, without angle brackets.
    pub uri: Cow<'a, str>,
    /// The user part of a `sip:`/`sips:` URI (percent-decoded, without a
    /// password), or the number of a `tel:` URI. `None` for `sip:host`.
    pub user: Option<Cow<'a, str>>,
    /// The host of the URI, without port or brackets; empty if the URI has none.
    pub host: Cow<'a, str>,
    /// The `tag` header parameter.
    pub tag: Option<Cow<'a, str>>,
}

impl NameAddr<'_> {
    /// Detached from the message.
    pub fn into_owned(self) -> NameAddr<'static> {
        let owned = |text: Cow<'_, str>| Cow::Owned(text.into_owned());
        NameAddr {
            display_name: self.display_name.map(owned),
            uri: owned(self.uri),
            user: self.user.map(owned),
            host: owned(self.host),
            tag: self.tag.map(owned),
        }
    }

    /// The best label for this party: the user part, else the display name,
    /// else the host. A From like `<sip:200.57.7.195:55061;user=phone>` has
    /// no user, and a recording still needs a name for the caller.
    pub fn label(&self) -> &str {
        if let Some(user) = self.user.as_deref().filter(|u| !u.is_empty()) {
            return user;
        }
        if let Some(name) = self.display_name.as_deref() {
            return name;
        }
        &self.host
    }
}

/// One header line, unfolded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    /// The name as written (any case, possibly a compact form).
    pub name: &'a str,
    /// The value with leading and trailing whitespace removed and folded
    /// continuation lines joined by a single space.
    pub value: Cow<'a, str>,
}

/// A parsed SIP request or response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipMessage<'a> {
    pub start: StartLine<'a>,
    /// The Call-ID, as written (it may contain `@`, `:` and more).
    pub call_id: Cow<'a, str>,
    pub cseq: CSeq,
    pub from: NameAddr<'a>,
    pub to: NameAddr<'a>,
    /// The Content-Type value as written, parameters included.
    pub content_type: Option<Cow<'a, str>>,
    /// The Content-Length value, when present.
    pub content_length: Option<usize>,
    /// The body: `content_length` bytes when given (RFC 3261 18.3: extra
    /// datagram bytes are ignored), else everything after the header section.
    pub body: &'a [u8],
    /// The header section, past the start line: read again for
    /// [`SipMessage::headers`], which few callers want.
    head: Head<'a>,
    header_lines: Lines<'a>,
}

impl<'a> SipMessage<'a> {
    /// Parses one complete message (a UDP payload, or one message cut from a
    /// stream by [`super::framer`]). Leading CRLFs (keep-alives) are skipped.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, SipError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(SipError::TooLong {
                len: bytes.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        let bytes = skip_leading_newlines(bytes);
        if bytes.is_empty() {
            return Err(SipError::Empty);
        }
        let (head_len, body_start) = find_header_end(bytes).ok_or(SipError::UnterminatedHeaders)?;
        let head = &bytes[..head_len];
        let rest = &bytes[body_start..];

        let mut header_lines = Lines { rest: head };
        let first_line = header_lines.next().ok_or(SipError::Empty)?;
        let start = parse_start_line(first_line)?;
        let head = Head::new(head);
        let mut wanted = Wanted::find(Headers::new(&head, header_lines))?;

        let call_id = wanted
            .single(CALL_ID)?
            .filter(|v| !v.is_empty())
            .ok_or(SipError::MissingHeader { name: "Call-ID" })?;
        let cseq = wanted
            .single(CSEQ)?
            .ok_or(SipError::MissingHeader { name: "CSeq" })?;
        let cseq = parse_cseq(&cseq)?;
        let from = wanted
            .single(FROM)?
            .ok_or(SipError::MissingHeader { name: "From" })?;
        let from = parse_name_addr(&from, "From")?;
        let to = wanted
            .single(TO)?
            .ok_or(SipError::MissingHeader { name: "To" })?;
        let to = parse_name_addr(&to, "To")?;
        let content_type = wanted.values[CONTENT_TYPE].take();
        let content_length = match wanted.single(CONTENT_LENGTH)? {
            None => None,
            Some(value) => Some(parse_content_length(&value)?),
        };
        let body = match content_length {
            Some(declared) if declared > rest.len() => {
                return Err(SipError::BodyTruncated {
                    declared,
                    actual: rest.len(),
                })
            }
            Some(declared) => &rest[..declared],
            None => rest,
        };
        Ok(SipMessage {
            start,
            call_id,
            cseq,
            from,
            to,
            content_type,
            content_length,
            body,
            head,
            header_lines,
        })
    }

    /// The method of a request, `None` for a response.
    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code of a response, `None` for a request.
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Request { .. } => None,
            StartLine::Response { code, .. } => Some(*code),
        }
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// Every header, in order, unfolded.
    pub fn headers(&self) -> impl Iterator<Item = Header<'a>> + '_ {
        // [`SipMessage::parse`] read them all without an error, so none
        // comes here; `map_while` stops there all the same.
        Headers::new(&self.head, self.header_lines).map_while(Result::ok)
    }

    /// The first value of header `name` (case-insensitive; a compact form and
    /// its long name are the same header).
    pub fn header(&self, name: &str) -> Option<Cow<'a, str>> {
        self.header_all(name).next()
    }

    /// Every value of header `name`, in order.
    pub fn header_all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = Cow<'a, str>> + 's {
        self.headers()
            .filter(move |h| same_header(h.name, name))
            .map(|h| h.value)
    }

    /// Whether the body is an SDP session description: Content-Type
    /// `application/sdp`, or no Content-Type and a body that starts `v=0`
    /// (seen from equipment that forgets the header).
    pub fn has_sdp(&self) -> bool {
        if self.body.is_empty() {
            return false;
        }
        match &self.content_type {
            Some(ct) => media_type(ct).eq_ignore_ascii_case("application/sdp"),
            None => self.body.starts_with(b"v=0"),
        }
    }

    /// The SDP body, also when it is one part of a `multipart/mixed` body
    /// (SIP-I and some SBCs attach ISUP beside the SDP).
    pub fn sdp_body(&self) -> Option<&'a [u8]> {
        if self.has_sdp() {
            return Some(self.body);
        }
        let ct = self.content_type.as_deref()?;
        if !media_type(ct)
            .to_ascii_lowercase()
            .starts_with("multipart/")
        {
            return None;
        }
        let boundary = param(ct, "boundary")?;
        multipart_sdp(self.body, boundary.trim_matches('"'))
    }
}

/// Header names that mean the same header: (compact form, long name), RFC 3261
/// 7.3.3 and the IANA registry.
const COMPACT: [(&str, &str); 20] = [
    ("i", "Call-ID"),
    ("m", "Contact"),
    ("e", "Content-Encoding"),
    ("l", "Content-Length"),
    ("c", "Content-Type"),
    ("f", "From"),
    ("s", "Subject"),
    ("k", "Supported"),
    ("t", "To"),
    ("v", "Via"),
    ("o", "Event"),
    ("r", "Refer-To"),
    ("b", "Referred-By"),
    ("u", "Allow-Events"),
    ("x", "Session-Expires"),
    ("y", "Identity"),
    ("a", "Accept-Contact"),
    ("j", "Reject-Contact"),
    ("d", "Request-Disposition"),
    ("n", "Identity-Info"),
];

/// The long name of a header, whatever form it was written in.
fn canonical(name: &str) -> &str {
    if name.len() == 1 {
        for (short, long) in COMPACT {
            if name.eq_ignore_ascii_case(short) {
                return long;
            }
        }
    }
    name
}

fn same_header(written: &str, wanted: &str) -> bool {
    canonical(written).eq_ignore_ascii_case(canonical(wanted))
}

/// The headers [`SipMessage::parse`] reads itself, by their index in
/// [`WANTED`].
const CALL_ID: usize = 0;
const CSEQ: usize = 1;
const FROM: usize = 2;
const TO: usize = 3;
const CONTENT_TYPE: usize = 4;
const CONTENT_LENGTH: usize = 5;
const WANTED: [&str; 6] = [
    "Call-ID",
    "CSeq",
    "From",
    "To",
    "Content-Type",
    "Content-Length",
];

/// Which of [`WANTED`] header `name` is, in any case or compact form: what
/// `WANTED.iter().position(|w| w.eq_ignore_ascii_case(canonical(name)))`
/// says, told by the name's length first, since every header of every
/// message comes here and most are none of them.
fn wanted_index(name: &str) -> Option<usize> {
    let is = |i: usize| name.eq_ignore_ascii_case(WANTED[i]).then_some(i);
    match name.len() {
        // The compact forms (see [`COMPACT`]): `i`, `f`, `t`, `c`, `l`.
        1 => match name.as_bytes()[0].to_ascii_lowercase() {
            b'i' => Some(CALL_ID),
            b'f' => Some(FROM),
            b't' => Some(TO),
            b'c' => Some(CONTENT_TYPE),
            b'l' => Some(CONTENT_LENGTH),
            _ => None,
        },
        2 => is(TO),
        4 => is(CSEQ).or_else(|| is(FROM)),
        7 => is(CALL_ID),
        12 => is(CONTENT_TYPE),
        14 => is(CONTENT_LENGTH),
        _ => None,
    }
}

/// The first value of each [`WANTED`] header, and whether a later one
/// differed: found in one pass over the headers rather than one per name.
#[derive(Debug)]
struct Wanted<'a> {
    values: [Option<Cow<'a, str>>; WANTED.len()],
    conflicts: [bool; WANTED.len()],
}

impl<'a> Wanted<'a> {
    /// Reads every header, keeping the wanted ones: the first error of any
    /// header comes before what the wanted ones say.
    fn find(mut headers: Headers<'_, 'a>) -> Result<Wanted<'a>, SipError> {
        let mut wanted = Wanted {
            values: Default::default(),
            conflicts: [false; WANTED.len()],
        };
        while let Some(h) = headers.read()? {
            let Some(i) = wanted_index(h.name) else {
                continue;
            };
            match &wanted.values[i] {
                None => wanted.values[i] = Some(h.value),
                Some(prev) if *prev == h.value => {}
                Some(_) => wanted.conflicts[i] = true,
            }
        }
        Ok(wanted)
    }

    /// The value of a header that must not appear twice with different
    /// values: two Call-IDs or two Content-Lengths are how a hostile message
    /// would make the tap and the phone disagree about what it says.
    fn single(&mut self, i: usize) -> Result<Option<Cow<'a, str>>, SipError> {
        if self.conflicts[i] {
            return Err(SipError::ConflictingHeader { name: WANTED[i] });
        }
        Ok(self.values[i].take())
    }
}

fn skip_leading_newlines(mut bytes: &[u8]) -> &[u8] {
    while let [b'\r' | b'\n', rest @ ..] = bytes {
        bytes = rest;
    }
    bytes
}

/// Finds the empty line that ends the header section: returns the length of
/// the header section (without its final line end) and where the body starts.
/// CRLFCRLF per RFC 3261; bare LFs are accepted too.
pub(crate) fn find_header_end(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(off) = memchr(b'\n', &bytes[i..]) {
        let nl = i + off;
        let next = nl + 1;
        if bytes.get(next) == Some(&b'\n') {
            return Some((nl, next + 1));
        }
        if bytes.get(next) == Some(&b'\r') && bytes.get(next + 1) == Some(&b'\n') {
            return Some((nl, next + 2));
        }
        i = next;
    }
    None
}

/// Line ends are found a vector at a time: a SIP message is hundreds of
/// bytes of headers, and a byte-at-a-time scan was the dearest part of parsing it.
fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    memchr::memchr(needle, hay)
}

/// Lines of the header section, split on LF with a trailing CR removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lines<'a> {
    rest: &'a [u8],
}

impl Lines<'_> {
    /// Whether the next line starts with whitespace: a folded continuation.
    fn continues(&self) -> bool {
        matches!(self.rest, [b' ' | b'\t', ..])
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let (line, rest) = match memchr(b'\n', self.rest) {
            Some(nl) => (&self.rest[..nl], &self.rest[nl + 1..]),
            None => (self.rest, &self.rest[self.rest.len()..]),
        };
        self.rest = rest;
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }
}

/// The text of `bytes`, borrowed when it is UTF-8 (nearly always: SIP
/// headers are ASCII); `from_utf8`'s ASCII fast path is several times
/// cheaper than the lossy conversion's chunk walk.
/// The header section of a message, and its text when all of it is UTF-8
/// (nearly always: SIP headers are ASCII), validated once: each header's
/// name and value are then slices of that text, with no check of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head<'a> {
    bytes: &'a [u8],
    text: Option<&'a str>,
}

impl<'a> Head<'a> {
    fn new(bytes: &'a [u8]) -> Head<'a> {
        Head {
            bytes,
            text: std::str::from_utf8(bytes).ok(),
        }
    }

    /// `part`, a slice of the section, as text when it is UTF-8.
    #[inline]
    fn str(&self, part: &'a [u8]) -> Option<&'a str> {
        let start = (part.as_ptr() as usize).wrapping_sub(self.bytes.as_ptr() as usize);
        let within = start <= self.bytes.len() && part.len() <= self.bytes.len() - start;
        match self.text {
            // Parts are cut at ASCII bytes, so at character boundaries;
            // `get` checks that anyway.
            Some(text) if within => text.get(start..start + part.len()),
            _ => std::str::from_utf8(part).ok(),
        }
    }

    /// `part` as text, invalid UTF-8 replaced.
    #[inline]
    fn text(&self, part: &'a [u8]) -> Cow<'a, str> {
        self.str(part).map_or_else(|| lossy(part), Cow::Borrowed)
    }
}

fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

fn shorten(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(80)];
    lossy(cut).into_owned()
}

fn parse_start_line(line: &[u8]) -> Result<StartLine<'_>, SipError> {
    let bad = || SipError::BadStartLine {
        line: shorten(line),
    };
    let text = std::str::from_utf8(line).map_err(|_| bad())?;
    let mut parts = text.splitn(3, ' ');
    let a = parts.next().ok_or_else(bad)?;
    let b = parts.next().ok_or_else(bad)?;
    let c = parts.next().ok_or_else(bad)?;
    if starts_with_sip_slash(a) {
        if !a.eq_ignore_ascii_case("SIP/2.0") {
            return Err(SipError::BadVersion {
                version: a.chars().take(16).collect(),
            });
        }
        if b.len() != 3 || !b.bytes().all(|d| d.is_ascii_digit()) {
            return Err(SipError::BadStatus {
                code: b.chars().take(16).collect(),
            });
        }
        let code: u16 = b
            .parse()
            .map_err(|_| SipError::BadStatus { code: b.into() })?;
        if !(100..=699).contains(&code) {
            return Err(SipError::BadStatus { code: b.into() });
        }
        return Ok(StartLine::Response {
            code,
            reason: Cow::Borrowed(c),
        });
    }
    if a.is_empty() || !a.bytes().all(is_token_char) || b.is_empty() || b.contains(' ') {
        return Err(bad());
    }
    let version = c.trim_end();
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        if starts_with_sip_slash(version) {
            return Err(SipError::BadVersion {
                version: version.chars().take(16).collect(),
            });
        }
        return Err(bad());
    }
    Ok(StartLine::Request {
        method: Method::parse(a),
        uri: b,
    })
}

/// Whether `part` begins `SIP/` in any case. Compared as bytes: cutting
/// the text at its fourth byte panics when that falls inside a character
/// (`S\u{f1}\u{e9}/2.0` on the wire).
fn starts_with_sip_slash(part: &str) -> bool {
    part.as_bytes()
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"))
}

/// RFC 3261 25.1 `token` characters.
fn is_token_char(b: u8) -> bool {
    TOKEN[usize::from(b)]
}

/// [`is_token_char`] of every byte: one load per byte of every header name.
const TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        b += 1;
    }
    table
};

/// The header lines of a section, unfolded: each item is a header with its
/// continuation lines joined. Read once by [`SipMessage::parse`] without
/// keeping them (a vector of every header was an allocation per message),
/// and again by [`SipMessage::headers`] for a caller that asks.
struct Headers<'h, 'a> {
    head: &'h Head<'a>,
    lines: Lines<'a>,
    count: usize,
}

impl<'h, 'a> Headers<'h, 'a> {
    fn new(head: &'h Head<'a>, lines: Lines<'a>) -> Headers<'h, 'a> {
        Headers {
            head,
            lines,
            count: 0,
        }
    }

    /// The next header, or the error that ends the section.
    #[inline]
    fn read(&mut self) -> Result<Option<Header<'a>>, SipError> {
        let Some(line) = self.lines.next() else {
            return Ok(None);
        };
        if let [b' ' | b'\t', ..] = line {
            // A continuation with no header before it.
            return Err(SipError::BadHeader {
                line: shorten(line),
            });
        }
        let mut header = self.header(line)?;
        // Folded continuations (RFC 3261 7.3.1): joined with one space.
        while self.lines.continues() {
            let Some(line) = self.lines.next() else {
                break;
            };
            let more = self.head.text(line);
            let more = more.trim();
            let len = header.name.len() + 2 + header.value.len() + 1 + more.len();
            if len > MAX_HEADER_LEN {
                return Err(SipError::HeaderTooLong {
                    name: header.name.chars().take(64).collect(),
                    len,
                    max: MAX_HEADER_LEN,
                });
            }
            if !more.is_empty() {
                let value = header.value.to_mut();
                if !value.is_empty() {
                    value.push(' ');
                }
                value.push_str(more);
            }
        }
        Ok(Some(header))
    }

    /// A header line that is not a continuation.
    #[inline]
    fn header(&mut self, line: &'a [u8]) -> Result<Header<'a>, SipError> {
        if line.len() > MAX_HEADER_LEN {
            let name_end = memchr(b':', line).unwrap_or(0).min(64);
            return Err(SipError::HeaderTooLong {
                name: shorten(&line[..name_end]),
                len: line.len(),
                max: MAX_HEADER_LEN,
            });
        }
        if self.count >= MAX_HEADERS {
            return Err(SipError::TooManyHeaders { max: MAX_HEADERS });
        }
        self.count += 1;
        // `token [SP/HTAB] ":"`, the name read in the same pass that finds
        // the colon (the line does not start with whitespace: that is a
        // continuation, above).
        let name_len = line.iter().take_while(|&&b| is_token_char(b)).count();
        let colon = name_len
            + line[name_len..]
                .iter()
                .take_while(|&&b| matches!(b, b' ' | b'\t'))
                .count();
        if name_len == 0 || line.get(colon) != Some(&b':') {
            return Err(SipError::BadHeader {
                line: shorten(line),
            });
        }
        let name = &line[..name_len];
        // Token characters are ASCII, so this cannot fail.
        let name = self.head.str(name).ok_or_else(|| SipError::BadHeader {
            line: shorten(line),
        })?;
        let value = self.head.text(trim_ws(&line[colon + 1..]));
        Ok(Header { name, value })
    }
}

impl<'a> Iterator for Headers<'_, 'a> {
    type Item = Result<Header<'a>, SipError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.read().transpose()
    }
}

fn trim_ws(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

fn parse_cseq(value: &str) -> Result<CSeq, SipError> {
    let bad = || SipError::BadCSeq {
        value: value.chars().take(64).collect(),
    };
    // `NUMBER SP METHOD`, as nearly every CSeq is written, is cut where
    // its one space is; anything else goes the general way.
    let simple = match split_at_byte(value, b' ') {
        Some((number, method))
            if !number.is_empty()
                && !method.is_empty()
                && number.bytes().all(|b| b.is_ascii_digit())
                && method.bytes().all(is_token_char) =>
        {
            Some((number, method))
        }
        _ => None,
    };
    let (number, method) = match simple {
        Some(parts) => parts,
        None => {
            let mut parts = value.split_whitespace();
            let number = parts.next().ok_or_else(bad)?;
            let method = parts.next().ok_or_else(bad)?;
            if parts.next().is_some() {
                return Err(bad());
            }
            (number, method)
        }
    };
    if number.len() > 10
        || !number.bytes().all(|b| b.is_ascii_digit())
        || !method.bytes().all(is_token_char)
    {
        return Err(bad());
    }
    let number: u32 = number.parse().map_err(|_| bad())?;
    Ok(CSeq {
        number,
        method: Method::parse(method),
    })
}

fn parse_content_length(value: &str) -> Result<usize, SipError> {
    let bad = || SipError::BadContentLength {
        value: value.chars().take(32).collect(),
    };
    let v = value.trim();
    if v.is_empty() || v.len() > 10 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    v.parse().map_err(|_| bad())
}

/// Parses `"Name" <uri>;params`, `Name <uri>;params`, `<uri>;params` or a
/// bare `uri;params` (where, per RFC 3261 20.10, everything after the first
/// `;` is a header parameter).
fn parse_name_addr<'a>(value: &Cow<'a, str>, name: &'static str) -> Result<NameAddr<'a>, SipError> {
    match value {
        Cow::Borrowed(text) => parse_name_addr_text(text, name),
        // A folded header: its parts are copied out of the unfolded value.
        Cow::Owned(text) => parse_name_addr_text(text, name).map(NameAddr::into_owned),
    }
}

fn parse_name_addr_text<'a>(value: &'a str, name: &'static str) -> Result<NameAddr<'a>, SipError> {
    let bad = || SipError::BadAddress {
        name,
        value: value.chars().take(80).collect(),
    };
    let value = trim(value);
    let (display, uri, params) = if let Some(lt) = find_unquoted(value, b'<') {
        let display = trim(&value[..lt]);
        let after = &value[lt + 1..];
        let gt = find_byte(after, b'>').ok_or_else(bad)?;
        let display = if let Some(inner) = display.strip_prefix('"') {
            let inner = inner.strip_suffix('"').ok_or_else(bad)?;
            Some(unescape_quoted(inner))
        } else {
            Some(Cow::Borrowed(display))
        };
        (display, trim(&after[..gt]), &after[gt + 1..])
    } else {
        if value.starts_with('"') {
            return Err(bad());
        }
        match find_byte(value, b';') {
            Some(semi) => (None, trim(&value[..semi]), &value[semi..]),
            None => (None, value, ""),
        }
    };
    if uri.is_empty() || has_whitespace(uri) {
        return Err(bad());
    }
    let colon = find_byte(uri, b':').ok_or_else(bad)?;
    let scheme = &uri[..colon];
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return Err(bad());
    }
    let (user, host) = uri_user_host(scheme, &uri[colon + 1..]);
    Ok(NameAddr {
        display_name: display.filter(|d| !d.is_empty()),
        uri: Cow::Borrowed(uri),
        user,
        host: Cow::Borrowed(host),
        tag: header_param(params, "tag").map(Cow::Borrowed),
    })
}

/// Whether `s` has a whitespace character (Unicode's, as
/// `char::is_whitespace` says). A pass over the bytes settles it for ASCII
/// text, which URIs nearly always are; only other text is decoded.
fn has_whitespace(s: &str) -> bool {
    let suspect = s
        .bytes()
        .any(|b| matches!(b, b'\t'..=b'\r' | b' ') || !b.is_ascii());
    suspect && s.contains(char::is_whitespace)
}

/// `s` up to the first byte that is a `stop` (which only ASCII bytes may
/// be), or all of it. A predicate rather than a list of stops:
/// `list.contains(&b)` for each byte was a call to the general byte search.
fn until(s: &str, stop: impl Fn(u8) -> bool) -> &str {
    // An ASCII byte is always a character boundary (and `&s[..end]`
    // checks it).
    let end = s.bytes().position(stop);
    end.map_or(s, |end| &s[..end])
}

fn find_unquoted(s: &str, wanted: u8) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, b) in s.bytes().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if in_quotes => escaped = true,
            b'"' => in_quotes = !in_quotes,
            _ if b == wanted && !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

/// The text of a quoted string, borrowed when it has no escapes.
fn unescape_quoted(s: &str) -> Cow<'_, str> {
    if find_byte(s, b'\\').is_none() {
        return Cow::Borrowed(trim(s));
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out.trim().to_owned())
}

/// The user and host of a URI, given its scheme and what follows `scheme:`.
/// `sip:user:password@host:port;params?headers` gives the percent-decoded
/// user and the bare host; `tel:+123;phone-context=x` gives the number.
fn uri_user_host<'a>(scheme: &str, rest: &'a str) -> (Option<Cow<'a, str>>, &'a str) {
    if scheme.eq_ignore_ascii_case("tel") {
        let number = rest.split(';').next().unwrap_or("");
        return (Some(percent_decode(number)), "");
    }
    // The user part may itself contain ';' and '?' (RFC 3261 19.1.1 allows
    // them in `user`), so split on the last '@' before any URI parameter of
    // the host part: the first '@' is the one, a user never contains a raw '@'.
    let (user, hostport) = match find_byte(rest, b'@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = until(userinfo, |b| b == b':');
            (Some(percent_decode(user)), &rest[at + 1..])
        }
        None => (None, rest),
    };
    let hostport = until(hostport, |b| matches!(b, b';' | b'?'));
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        until(v6, |b| b == b']')
    } else {
        until(hostport, |b| b == b':')
    };
    (user, host)
}

/// Decodes `%XX` escapes (RFC 3261 25.1 `escaped`); anything malformed is kept
/// as written, and invalid UTF-8 becomes U+FFFD.
fn percent_decode(s: &str) -> Cow<'_, str> {
    if find_byte(s, b'%').is_none() {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The value of parameter `wanted` in `params` (`;name=value;...`; what
/// precedes the first `;` is not a parameter): what
/// `params.split(';').skip(1)` finds, cut by a plain byte scan.
fn header_param<'p>(params: &'p str, wanted: &str) -> Option<&'p str> {
    let (_, mut rest) = split_at_byte(params, b';')?;
    loop {
        let (p, next) = match split_at_byte(rest, b';') {
            Some((p, next)) => (p, Some(next)),
            None => (rest, None),
        };
        let (k, v) = split_at_byte(p, b'=').unwrap_or((p, ""));
        if trim(k).eq_ignore_ascii_case(wanted) {
            return Some(trim(v));
        }
        rest = next?;
    }
}

fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

fn param<'p>(content_type: &'p str, wanted: &str) -> Option<&'p str> {
    header_param(content_type, wanted)
}

/// The first `application/sdp` part of a multipart body (RFC 2046 5.1.1).
fn multipart_sdp<'b>(body: &'b [u8], boundary: &str) -> Option<&'b [u8]> {
    if boundary.is_empty() || boundary.len() > 70 {
        return None;
    }
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    let mut starts = Vec::new();
    let mut i = 0;
    while i + delim.len() <= body.len() && starts.len() < 16 {
        if &body[i..i + delim.len()] == delim && (i == 0 || body[i - 1] == b'\n') {
            starts.push(i);
            i += delim.len();
        } else {
            i += 1;
        }
    }
    for pair in starts.windows(2) {
        let part = &body[pair[0] + delim.len()..pair[1]];
        let part = skip_leading_newlines(part);
        let (head_len, body_start) = match find_header_end(part) {
            Some(found) => found,
            None => continue,
        };
        let head = lossy(&part[..head_len]);
        let is_sdp = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                same_header(k.trim(), "Content-Type")
                    && media_type(v).eq_ignore_ascii_case("application/sdp")
            })
        });
        if is_sdp {
            let mut content = &part[body_start..];
            while let [rest @ .., b'\r' | b'\n'] = content {
                content = rest;
            }
            return Some(content);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_headers_are_told_by_name_in_any_form() {
        let mut names: Vec<String> = Vec::new();
        for (short, long) in COMPACT {
            for name in [short, long] {
                names.push(name.to_owned());
                names.push(name.to_ascii_lowercase());
                names.push(name.to_ascii_uppercase());
            }
        }
        names.extend(
            [
                "Via", "CSeqs", "Fro", "Tom", "Call-IDs", "X", "To-", "cseq", "FROM",
            ]
            .map(String::from),
        );
        for name in &names {
            let general = WANTED
                .iter()
                .position(|w| w.eq_ignore_ascii_case(canonical(name)));
            assert_eq!(wanted_index(name), general, "{name:?}");
        }
    }

    #[test]
    fn header_params_are_found_as_split_finds_them() {
        let general = |params: &str, wanted: &str| -> Option<String> {
            params.split(';').skip(1).find_map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                k.trim()
                    .eq_ignore_ascii_case(wanted)
                    .then(|| v.trim().to_owned())
            })
        };
        for params in [
            "",
            "tag",
            ";tag=abc",
            " ; TAG = x ;tag=y",
            ";a=1;b;tag",
            ";a=1;;tag=;",
            "x;y=z",
            ";tag=a=b",
            ";\u{a0}tag=\u{e9}",
        ] {
            assert_eq!(
                header_param(params, "tag").map(str::to_owned),
                general(params, "tag"),
                "{params:?}"
            );
        }
    }
}
