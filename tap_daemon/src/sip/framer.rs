//! Cutting SIP messages out of a stream transport (TCP, RFC 3261 18.3).
//!
//! On a stream, a message ends where its Content-Length says, so the header
//! section must be read first. A segment may hold several messages, or part
//! of one; [`frame`] looks at the bytes at hand and says which, and
//! [`SipStream`] keeps the partial tail of one TCP direction between
//! segments, bounded so that a peer that never ends its headers cannot make
//! it grow without end.

use thiserror::Error;

use super::message::{find_header_end, MAX_MESSAGE_LEN};

/// Why the bytes at the head of a stream cannot be a SIP message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// [`MAX_MESSAGE_LEN`] bytes arrived without the empty line that ends a
    /// header section.
    #[error("no end of SIP headers within {max} bytes")]
    HeadersTooLong { max: usize },
    /// Content-Length is missing a number, has junk, or two values disagree.
    #[error("malformed Content-Length in a stream message")]
    BadContentLength,
    /// The header section plus Content-Length exceeds [`MAX_MESSAGE_LEN`].
    #[error("stream message of {len} bytes exceeds the {max}-byte limit")]
    TooLong { len: usize, max: usize },
}

impl FrameError {
    /// Every value [`FrameError::kind`] returns.
    pub const KINDS: [&'static str; 3] = [
        "sip_stream_headers_too_long",
        "sip_stream_bad_content_length",
        "sip_stream_too_long",
    ];

    /// A short stable name for counters.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::HeadersTooLong { .. } => "sip_stream_headers_too_long",
            FrameError::BadContentLength => "sip_stream_bad_content_length",
            FrameError::TooLong { .. } => "sip_stream_too_long",
        }
    }
}

/// What the head of a stream buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete message; `consumed` bytes (leading keep-alive CRLFs, the
    /// message) can be dropped from the buffer.
    Message { message: &'a [u8], consumed: usize },
    /// Only keep-alive CRLFs so far (RFC 5626 `CRLFCRLF` ping, `CRLF` pong):
    /// `consumed` bytes can be dropped.
    KeepAlive { consumed: usize },
    /// Not a whole message yet; keep the bytes and wait for more.
    Incomplete,
}

/// Looks at the start of `buf` and finds the first complete message, by
/// the header section's end and Content-Length (a missing Content-Length
/// means no body: RFC 3261 requires it on streams, and a message without one
/// is more likely a bodiless request from a sloppy client than the start of
/// an unbounded body).
pub fn frame(buf: &[u8]) -> Result<Frame<'_>, FrameError> {
    let skip = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let rest = &buf[skip..];
    if rest.is_empty() {
        return Ok(if skip > 0 {
            Frame::KeepAlive { consumed: skip }
        } else {
            Frame::Incomplete
        });
    }
    let Some((head_len, body_start)) = find_header_end(rest) else {
        if rest.len() > MAX_MESSAGE_LEN {
            return Err(FrameError::HeadersTooLong {
                max: MAX_MESSAGE_LEN,
            });
        }
        return Ok(Frame::Incomplete);
    };
    let body_len = content_length(&rest[..head_len])?.unwrap_or(0);
    let len = body_start.saturating_add(body_len);
    if len > MAX_MESSAGE_LEN {
        return Err(FrameError::TooLong {
            len,
            max: MAX_MESSAGE_LEN,
        });
    }
    if rest.len() < len {
        return Ok(Frame::Incomplete);
    }
    Ok(Frame::Message {
        message: &rest[..len],
        consumed: skip + len,
    })
}

/// The Content-Length of a header section, without parsing anything else:
/// `Content-Length` or its compact form `l`, any case, folded or not.
fn content_length(head: &[u8]) -> Result<Option<usize>, FrameError> {
    let mut found: Option<usize> = None;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = trim(&line[..colon]);
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        let value = trim(&line[colon + 1..]);
        if value.is_empty() || value.len() > 10 || !value.iter().all(u8::is_ascii_digit) {
            return Err(FrameError::BadContentLength);
        }
        let n = value
            .iter()
            .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
        match found {
            Some(prev) if prev != n => return Err(FrameError::BadContentLength),
            _ => found = Some(n),
        }
    }
    Ok(found)
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// The reassembly buffer of one direction of one TCP connection: push the
/// segment payloads in order, take out whole messages.
///
/// After a framing error the stream is out of step (a lying Content-Length
/// means we no longer know where the next message starts); it then skips to
/// the next line that looks like a SIP start line rather than give up on the
/// connection.
#[derive(Debug, Default)]
pub struct SipStream {
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already handed out.
    start: usize,
    /// Set after an error: the next message starts at a start line, not here.
    resync: bool,
}

impl SipStream {
    pub fn new() -> SipStream {
        SipStream::default()
    }

    /// Appends the next in-order bytes of the stream.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Forgets everything buffered: for a gap in the TCP sequence (a lost
    /// segment) after which the old partial message can never complete.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.resync = true;
    }

    /// Bytes held waiting for the rest of a message.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete message, an error (after which the stream resyncs
    /// by itself), or `None` when more bytes are needed.
    pub fn next_message(&mut self) -> Option<Result<&[u8], FrameError>> {
        loop {
            if self.resync {
                // Position 0 of the search counts as a line start only if it
                // follows a line end (or a reset): after an error we stepped
                // one byte into the bad message, into the middle of a line.
                let at_line_start = self.start == 0 || self.buf[self.start - 1] == b'\n';
                match find_start_line(&self.buf[self.start..], at_line_start) {
                    Some(off) => {
                        self.start += off;
                        self.resync = false;
                    }
                    None => {
                        // Keep a short tail: a start line may straddle segments.
                        let keep = self.buffered().min(64);
                        self.start = self.buf.len() - keep;
                        return None;
                    }
                }
            }
            match frame(&self.buf[self.start..]) {
                Ok(Frame::Message { consumed, message }) => {
                    let from = self.start + consumed - message.len();
                    self.start += consumed;
                    return Some(Ok(&self.buf[from..self.start]));
                }
                Ok(Frame::KeepAlive { consumed }) => {
                    self.start += consumed;
                }
                Ok(Frame::Incomplete) => return None,
                Err(e) => {
                    // Step past the bad start so the resync finds the next one.
                    self.start += 1;
                    self.resync = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Where the next line that starts like a SIP request or response begins:
/// `SIP/2.0 ` or an upper-case method token followed by ` sip:`, ` sips:`
/// or ` tel:`.
fn find_start_line(buf: &[u8], at_line_start: bool) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        let line_start = if i == 0 {
            at_line_start
        } else {
            buf[i - 1] == b'\n'
        };
        if line_start && looks_like_start(&buf[i..]) {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn looks_like_start(line: &[u8]) -> bool {
    if line.starts_with(b"SIP/2.0 ") {
        return true;
    }
    let method_len = line.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method_len == 0 || method_len > 16 {
        return false;
    }
    let after = &line[method_len..];
    [&b" sip:"[..], b" sips:", b" tel:"]
        .iter()
        .any(|p| after.len() >= p.len() && after[..p.len()].eq_ignore_ascii_case(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 4\r\n\r\nbody";
    const B: &[u8] = b"SIP/2.0 200 OK\r\nl: 0\r\n\r\n";

    #[test]
    fn two_in_one_segment_and_one_over_many() {
        let mut s = SipStream::new();
        let mut all = A.to_vec();
        all.extend_from_slice(B);
        all.extend_from_slice(A);
        // First segment: A, B and half of the third.
        s.push(&all[..A.len() + B.len() + 10]);
        assert_eq!(s.next_message(), Some(Ok(A)));
        assert_eq!(s.next_message(), Some(Ok(B)));
        assert_eq!(s.next_message(), None);
        // The rest, one byte at a time.
        for (i, byte) in all[A.len() + B.len() + 10..].iter().enumerate() {
            s.push(std::slice::from_ref(byte));
            let last = i == all.len() - (A.len() + B.len() + 10) - 1;
            if last {
                assert_eq!(s.next_message(), Some(Ok(A)));
            } else {
                assert_eq!(s.next_message(), None);
            }
        }
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn keepalives_are_skipped() {
        let mut s = SipStream::new();
        s.push(b"\r\n\r\n");
        assert_eq!(s.next_message(), None);
        s.push(B);
        assert_eq!(s.next_message(), Some(Ok(B)));
    }

    #[test]
    fn lying_length_resyncs_at_next_start_line() {
        let mut s = SipStream::new();
        s.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 99999999\r\n\r\n");
        s.push(B);
        assert!(matches!(
            s.next_message(),
            Some(Err(FrameError::TooLong { .. }))
        ));
        assert_eq!(s.next_message(), Some(Ok(B)));
    }

    #[test]
    fn endless_headers_are_refused_and_bounded() {
        let mut s = SipStream::new();
        s.push(b"INVITE sip:x SIP/2.0\r\n");
        let junk = vec![b'a'; 1024];
        let mut errors = 0;
        for _ in 0..200 {
            s.push(&junk);
            while let Some(r) = s.next_message() {
                assert!(r.is_err());
                errors += 1;
            }
            assert!(s.buffered() <= MAX_MESSAGE_LEN + junk.len());
        }
        assert_eq!(errors, 1);
        s.push(b"\n");
        s.push(B);
        assert_eq!(s.next_message(), Some(Ok(B)));
    }

    #[test]
    fn conflicting_lengths() {
        let m = b"SIP/2.0 200 OK\r\nContent-Length: 1\r\nl: 2\r\n\r\nxx";
        assert_eq!(frame(m), Err(FrameError::BadContentLength));
    }
}
