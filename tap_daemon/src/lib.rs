//! tap_daemon: sees phone calls on a network (libpcap), follows their SIP
//! dialogs and SDP, and feeds each call's RTP to an rst receiver.
//!
//! Sans-IO layers: [`packet`] (link, IP, UDP, TCP, reassembly) and [`sip`]
//! (SIP, SDP, the call tracker). Being built (issue #5).

pub mod packet;
pub mod sip;
