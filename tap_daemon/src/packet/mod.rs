//! Packet decoding, sans-IO: captured frames in, UDP datagrams and ordered TCP
//! bytes out.
//!
//! A tap sees other people's traffic exactly as the wire (or the mirror that
//! ships it) framed it, so this layer peels whatever it finds: Ethernet with
//! VLAN/QinQ tags, PPPoE, MPLS, Linux cooked headers, raw IP, loopback; IP-in-IP
//! and GRE (bridged Ethernet, ERSPAN I/II/III); IPv4 options and IPv6 extension
//! headers; IPv4 and IPv6 fragments (reassembled); UDP; and TCP, whose streams
//! are reassembled per direction so that SIP over TCP reaches the SIP layer as
//! ordered bytes.
//!
//! Nothing here opens a socket, starts a thread or reads a clock: the capture
//! time is an argument, which makes the decoder deterministic, testable with
//! simulated time, and fuzzable ([`Decoder::decode`] over arbitrary bytes never
//! panics). Every piece of state is bounded ([`Limits`]) and every reason a
//! frame yields nothing has a counter ([`ErrorKind`], [`Counters`]). Checksums
//! are deliberately not verified: in captures taken on a host, checksum
//! offload leaves them wrong on every outgoing packet.
//!
//! ```
//! use std::time::Duration;
//! use tap_daemon::packet::{Decoder, LinkType, Transport};
//!
//! // Ethernet / IPv4 / UDP 5060 -> 5060, payload "OPTIONS".
//! let mut frame = vec![0u8; 12];
//! frame.extend_from_slice(&[0x08, 0x00]);
//! frame.extend_from_slice(&[0x45, 0, 0, 35, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
//! frame.extend_from_slice(&[0x13, 0xc4, 0x13, 0xc4, 0, 15, 0, 0]);
//! frame.extend_from_slice(b"OPTIONS");
//!
//! let mut decoder = Decoder::default();
//! let mut out = Vec::new();
//! decoder.decode(LinkType::ETHERNET, Duration::from_secs(1), &frame, &mut out).unwrap();
//! assert_eq!(out.len(), 1);
//! assert_eq!(out[0].transport, Transport::Udp);
//! assert_eq!(out[0].src.to_string(), "10.0.0.1:5060");
//! assert_eq!(&*out[0].payload, b"OPTIONS");
//! ```

mod decoder;
mod error;
mod frag;
mod ip;
mod link;
mod stream;
mod transport;
mod tunnel;

pub use decoder::{fuzz_frames, Counters, Datagram, Decoder, Limits, Sink, Transport};
pub use error::{DecodeError, ErrorKind, Layer};
pub use frag::{FragmentLimits, Reassembled, Reassembler};
pub use ip::{
    parse_ipv4, parse_ipv6, proto, skip_extensions, Fragment, IpPacket, MAX_EXTENSION_HEADERS,
};
pub use link::{LinkType, MAX_VLAN_DEPTH};
pub use stream::{Chunk, FlowKey, StreamEnd, StreamLimits, StreamReassembler};
pub use transport::{parse_tcp, parse_udp, TcpFlags, TcpSegment, UdpPacket};
pub use tunnel::{parse_gre, GreInner};

#[cfg(test)]
mod tests;
