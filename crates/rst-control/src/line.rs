//! Cutting a TCP byte stream into bounded lines.

use thiserror::Error;

/// Longest request or response line, without its `\n`.
pub const MAX_LINE: usize = 16 * 1024;

/// Why a line is not a line of text.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum LineError {
    /// Longer than the limit; the rest of it, up to its `\n`, is skipped.
    #[error("line longer than {max} bytes")]
    TooLong { max: usize },
    /// Not UTF-8.
    #[error("line is not UTF-8 text")]
    NotUtf8,
}

/// Bytes in, complete lines out, never holding more than `max` bytes.
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    max: usize,
    /// Inside an over-long line: skipping to its end.
    skipping: bool,
}

impl Default for LineBuffer {
    fn default() -> Self {
        LineBuffer::new(MAX_LINE)
    }
}

impl LineBuffer {
    pub fn new(max: usize) -> LineBuffer {
        LineBuffer {
            buf: Vec::new(),
            max,
            skipping: false,
        }
    }

    /// Feeds `bytes`; each complete line (without `\r\n`), or the error of
    /// one, is appended to `out`. An over-long line gives one
    /// [`LineError::TooLong`] as soon as it exceeds the limit.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<Result<String, LineError>>) {
        while !bytes.is_empty() {
            let end = bytes.iter().position(|&b| b == b'\n');
            let part = &bytes[..end.unwrap_or(bytes.len())];
            if !self.skipping {
                if self.buf.len() + part.len() > self.max {
                    self.buf.clear();
                    self.skipping = true;
                    out.push(Err(LineError::TooLong { max: self.max }));
                } else {
                    self.buf.extend_from_slice(part);
                }
            }
            match end {
                Some(i) => {
                    if !self.skipping {
                        out.push(self.take());
                    }
                    self.skipping = false;
                    bytes = &bytes[i + 1..];
                }
                None => return,
            }
        }
    }

    /// Bytes of an unfinished line held.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    fn take(&mut self) -> Result<String, LineError> {
        let mut line = std::mem::take(&mut self.buf);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        String::from_utf8(line).map_err(|_| LineError::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(buffer: &mut LineBuffer, chunks: &[&[u8]]) -> Vec<Result<String, LineError>> {
        let mut out = Vec::new();
        for chunk in chunks {
            buffer.push(chunk, &mut out);
        }
        out
    }

    #[test]
    fn lines_across_chunks_with_crlf() {
        let mut b = LineBuffer::new(100);
        let out = feed(
            &mut b,
            &[b"{\"cmd\":", b"\"start\"}\r\n{\"cmd\"", b":\"stop\"}\n\n"],
        );
        assert_eq!(
            out,
            vec![
                Ok("{\"cmd\":\"start\"}".into()),
                Ok("{\"cmd\":\"stop\"}".into()),
                Ok(String::new())
            ]
        );
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn an_over_long_line_is_one_error_and_the_next_line_is_fine() {
        let mut b = LineBuffer::new(8);
        let out = feed(&mut b, &[b"12345", b"67890", b"abcdef", b"gh\nok\n"]);
        assert_eq!(
            out,
            vec![Err(LineError::TooLong { max: 8 }), Ok("ok".into())]
        );
        assert!(b.pending() <= 8);
    }

    #[test]
    fn binary_is_not_text() {
        let mut b = LineBuffer::new(100);
        let out = feed(&mut b, &[b"\xff\xfe\x00\n"]);
        assert_eq!(out, vec![Err(LineError::NotUtf8)]);
    }
}
