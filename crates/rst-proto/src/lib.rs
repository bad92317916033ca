//! The rst datagram protocol, as specified in `DESIGN.md`: one message per UDP
//! datagram, a four-byte command, fields separated by `:`.
//!
//! This crate is sans-IO: [`Message::parse`] borrows a datagram and returns typed
//! values (no allocation, the DATA payload is a slice of the datagram), and
//! [`Message::encode`] appends the wire form to a caller-owned buffer.
//!
//! ```
//! use rst_proto::{Message, Direction};
//! let mut wire = b"DATA:478525a8-8263-4550-b18c-d027d11c9865:R:00:3:".to_vec();
//! wire.extend_from_slice(&[0xff, b':', 0x7f]);
//! let Message::Data(data) = Message::parse(&wire).unwrap() else { panic!() };
//! assert_eq!(data.direction, Direction::Read);
//! assert_eq!(data.payload, &[0xff, b':', 0x7f]);
//! ```

mod error;
mod message;
pub mod pool;
pub mod rtp;
pub mod stream;
mod types;

pub use error::{EncodeError, ParseError};
pub use message::{
    is_dtmf_digit, is_stream_name, parse_payload_type, Ack, Bye, Clear, Continuation, Data,
    DataHeader, Dtmf, Extensions, ExtensionsBuilder, Inv, Live, Mark, Message, Play, RtpPorts,
    LIVE_EVERY, LIVE_HOLDS, MAX_CALL_ID, MAX_DATA_HEADER_LEN, MAX_MARK_NAME, MAX_TAP_NAME,
};
pub use pool::{Health, Pool, PoolError, ReceiverHealth};
pub use rtp::{RtpError, RtpPacket, TelephoneEvent};
pub use types::{Direction, PayloadType, Uuid};

/// Datagrams longer than this are refused as oversize. The largest legitimate
/// DATA (60 ms of 48 kHz stereo L16 plus the header) is well under it.
pub const MAX_DATAGRAM_LEN: usize = 16 * 1024;

/// Port the original module and receiver used by default.
pub const DEFAULT_PORT: u16 = 9527;
