//! RTP (RFC 3550) headers and RFC 4733 telephone-events: parsed by borrowing,
//! written into a caller's buffer. Shared by the receiver and the senders.

use thiserror::Error;

/// Why bytes are not an RTP packet this crate accepts.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RtpError {
    /// Fewer bytes than the fixed header, its CSRCs, extension or padding claim.
    #[error("RTP packet of {len} bytes is truncated ({needed} needed)")]
    Truncated { len: usize, needed: usize },
    /// Version is not 2.
    #[error("RTP version {version}, expected 2")]
    BadVersion { version: u8 },
    /// The padding count is zero or larger than the payload.
    #[error("RTP padding of {padding} bytes does not fit")]
    BadPadding { padding: usize },
}

impl RtpError {
    /// A short stable name for counters.
    pub fn kind(&self) -> &'static str {
        match self {
            RtpError::Truncated { .. } => "rtp_truncated",
            RtpError::BadVersion { .. } => "rtp_bad_version",
            RtpError::BadPadding { .. } => "rtp_bad_padding",
        }
    }
}

/// One RTP packet, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// The payload, without header, CSRCs, extension or padding.
    pub payload: &'a [u8],
}

/// Length of the fixed RTP header.
pub const RTP_HEADER_LEN: usize = 12;

impl<'a> RtpPacket<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, RtpError> {
        let truncated = |needed| RtpError::Truncated {
            len: bytes.len(),
            needed,
        };
        let Some(header) = bytes.first_chunk::<RTP_HEADER_LEN>() else {
            return Err(truncated(RTP_HEADER_LEN));
        };
        let version = header[0] >> 6;
        if version != 2 {
            return Err(RtpError::BadVersion { version });
        }
        let has_padding = header[0] & 0x20 != 0;
        let has_extension = header[0] & 0x10 != 0;
        let csrc_count = usize::from(header[0] & 0x0F);
        let mut start = RTP_HEADER_LEN + 4 * csrc_count;
        if has_extension {
            let extension = bytes.get(start..start + 4).ok_or(truncated(start + 4))?;
            let words = usize::from(u16::from_be_bytes([extension[2], extension[3]]));
            start += 4 + 4 * words;
        }
        let mut end = bytes.len();
        if start > end {
            return Err(truncated(start));
        }
        if has_padding {
            let padding = usize::from(bytes[end - 1]);
            if padding == 0 || padding > end - start {
                return Err(RtpError::BadPadding { padding });
            }
            end -= padding;
        }
        Ok(RtpPacket {
            marker: header[1] & 0x80 != 0,
            payload_type: header[1] & 0x7F,
            sequence: u16::from_be_bytes([header[2], header[3]]),
            timestamp: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
            ssrc: u32::from_be_bytes([header[8], header[9], header[10], header[11]]),
            payload: &bytes[start..end],
        })
    }

    /// Appends the packet (fixed header, no CSRC, extension or padding) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(0x80);
        out.push(u8::from(self.marker) << 7 | (self.payload_type & 0x7F));
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(self.payload);
    }
}

/// An RFC 4733 telephone-event payload (DTMF digits and other tones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// 0-9, 10 = `*`, 11 = `#`, 12-15 = A-D, 16 = flash.
    pub event: u8,
    /// Set on the last packets of the event.
    pub end: bool,
    pub volume: u8,
    /// In timestamp units, from the event's start.
    pub duration: u16,
}

impl TelephoneEvent {
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let bytes = payload.first_chunk::<4>()?;
        Some(TelephoneEvent {
            event: bytes[0],
            end: bytes[1] & 0x80 != 0,
            volume: bytes[1] & 0x3F,
            duration: u16::from_be_bytes([bytes[2], bytes[3]]),
        })
    }

    pub fn encode(&self) -> [u8; 4] {
        let duration = self.duration.to_be_bytes();
        [
            self.event,
            u8::from(self.end) << 7 | (self.volume & 0x3F),
            duration[0],
            duration[1],
        ]
    }

    /// The DTMF key, for events 0 to 16.
    pub fn digit(&self) -> Option<char> {
        EVENT_KEYS
            .get(usize::from(self.event))
            .map(|&b| char::from(b))
    }

    /// The event code of a DTMF key (`'#'` is 11), the inverse of [`TelephoneEvent::digit`].
    pub fn event_of(digit: char) -> Option<u8> {
        EVENT_KEYS
            .iter()
            .position(|&key| char::from(key) == digit)
            .map(|i| i as u8)
    }
}

/// RFC 4733's events 0 to 16, as keys.
const EVENT_KEYS: &[u8; 17] = b"0123456789*#ABCD!";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_round_trips() {
        let packet = RtpPacket {
            marker: true,
            payload_type: 0,
            sequence: 65535,
            timestamp: 0xDEAD_BEEF,
            ssrc: 0x1234_5678,
            payload: &[1, 2, 3],
        };
        let mut bytes = Vec::new();
        packet.encode(&mut bytes);
        assert_eq!(bytes.len(), RTP_HEADER_LEN + 3);
        assert_eq!(RtpPacket::parse(&bytes), Ok(packet));
    }

    #[test]
    fn csrcs_extension_and_padding_are_skipped() {
        let mut bytes = vec![0xB1, 8, 0, 1, 0, 0, 0, 160, 0, 0, 0, 9];
        bytes.extend([0xAA; 4]); // one CSRC
        bytes.extend([0xBE, 0xDE, 0, 1, 1, 2, 3, 4]); // extension of one word
        bytes.extend([7, 7]); // payload
        bytes.extend([0, 0, 3]); // three bytes of padding
        let packet = RtpPacket::parse(&bytes).unwrap();
        assert_eq!(
            (packet.payload_type, packet.sequence, packet.timestamp),
            (8, 1, 160)
        );
        assert_eq!(packet.payload, &[7, 7]);
    }

    #[test]
    fn lying_lengths_are_errors_not_panics() {
        assert!(matches!(
            RtpPacket::parse(&[0x80; 5]),
            Err(RtpError::Truncated { .. })
        ));
        assert_eq!(
            RtpPacket::parse(&[0x40; 12]),
            Err(RtpError::BadVersion { version: 1 })
        );
        let mut many_csrcs = vec![0x8F, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        many_csrcs.extend([0; 8]);
        assert!(matches!(
            RtpPacket::parse(&many_csrcs),
            Err(RtpError::Truncated { .. })
        ));
        let mut huge_extension = vec![0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF];
        huge_extension.extend([0; 4]);
        assert!(matches!(
            RtpPacket::parse(&huge_extension),
            Err(RtpError::Truncated { .. })
        ));
        let bad_padding = [0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 200];
        assert_eq!(
            RtpPacket::parse(&bad_padding),
            Err(RtpError::BadPadding { padding: 200 })
        );
        let zero_padding = [0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(
            RtpPacket::parse(&zero_padding),
            Err(RtpError::BadPadding { padding: 0 })
        );
    }

    #[test]
    fn telephone_events_parse() {
        let event = TelephoneEvent {
            event: 11,
            end: true,
            volume: 10,
            duration: 800,
        };
        assert_eq!(TelephoneEvent::parse(&event.encode()), Some(event));
        assert_eq!(event.digit(), Some('#'));
        assert_eq!(TelephoneEvent::parse(&[1, 2]), None);
        assert_eq!(
            TelephoneEvent {
                event: 200,
                ..event
            }
            .digit(),
            None
        );
    }
}
