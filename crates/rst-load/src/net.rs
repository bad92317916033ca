//! Batched datagram I/O, shared with the receiver: see the `rst-udp` crate.

pub use rst_udp::*;
