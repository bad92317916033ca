//! SIP, SDP and call tracking (being written).
