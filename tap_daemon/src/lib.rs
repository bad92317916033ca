//! tap_daemon: sees phone calls on a network (libpcap), follows their SIP
//! dialogs and SDP, and feeds each call's RTP to an rst receiver.
//!
//! Sans-IO layers: [`packet`] (link, IP, UDP, TCP, reassembly), [`sip`]
//! (SIP, SDP, the call tracker) and [`pipeline`] (frames in, call starts,
//! RTP and call ends out). The I/O around them: [`output`] (the sockets to
//! the receiver, one [`rst_proto::stream::Stream`] per call) and [`capture`]
//! (libpcap, live or from a file). [`config`] is the daemon's configuration;
//! [`control`] the discovery responder and control server (`rst-control`).

pub mod capture;
pub mod config;
pub mod control;
pub mod output;
pub mod packet;
pub mod pipeline;
pub mod sip;

/// The hash map of the per-packet look-ups (calls, dialogs, media endpoints,
/// TCP flows, IP fragments):
/// foldhash rather than std's SipHash, several times cheaper on a
/// `SocketAddr` or a 36-byte call id, with a per-process random seed so that
/// crafted addresses cannot aim at one bucket.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
