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
