//! The control plane of an rst tap (`tap_daemon`), as messages: what a tap
//! and its clients (`tapctl`, `udp_server taps`) say to each other. Bytes in,
//! typed values out, and back; no sockets, no threads, no clocks.
//!
//! The conversation follows the IPTap-Giga design: a client asks "who is
//! there" by UDP broadcast, each tap answers unicast, the client connects
//! over TCP, authenticates, configures the tap, starts it, watches, stops it
//! and closes.
//!
//! # Discovery (UDP, port [`DISCOVERY_PORT`] = 9530)
//!
//! One JSON object per datagram, UTF-8, no trailing newline needed.
//!
//! The request, broadcast by a client (at most [`discovery::MAX_REQUEST`]
//! bytes):
//!
//! ```json
//! {"proto":"rst-tap","type":"who","version":1,"nonce":"6b1f3c0a9d2e4f57"}
//! ```
//!
//! The reply, sent by each tap to the request's source address and port:
//!
//! ```json
//! {"proto":"rst-tap","type":"here","version":1,"nonce":"6b1f3c0a9d2e4f57",
//!  "name":"tap-3rd-floor","id":"a41c9e07d2b85f13","software":"0.1.0",
//!  "control_port":9531,"interfaces":["eth1"]}
//! ```
//!
//! * `version` is the control plane's version, [`VERSION`] (1). A tap
//!   answers a request of any version ≥ 1 with the version it speaks; a
//!   client that speaks an older one only lists it.
//! * `nonce` (8–64 characters of `[A-Za-z0-9_-]`) is echoed, so a client
//!   tells its answers from another client's.
//! * `id` is stable across restarts of the tap; `name` is for people.
//! * Anything else (not JSON, another `proto` or `type`, a missing field,
//!   an oversize datagram) is not answered; the tap counts it.
//!
//! # Control (TCP, port [`CONTROL_PORT`] = 9531): JSON lines
//!
//! Each request is one JSON object on one line (`\n`; a `\r` before it is
//! allowed), at most [`line::MAX_LINE`] bytes; each gets exactly one response
//! line, in order. Responses are `{"ok":true,"cmd":…,…}` or
//! `{"ok":false,"code":…,"error":"…"}` ([`control::ErrorCode`] lists the
//! codes). Empty lines are ignored.
//!
//! | request | response when ok |
//! |---|---|
//! | `{"cmd":"hello","version":1,"secret":"…"}` | `{"ok":true,"cmd":"hello","version":1,"name":…,"id":…,"role":"control"}` |
//! | `{"cmd":"config","receiver":"10.0.0.20:9527","networks":["10.1.0.0/16"],"numbers":["1001*"],"filter":"udp","mode":"rtp"}` | `{"ok":true,"cmd":"config","config":{…the whole config now…}}` |
//! | `{"cmd":"start"}` | `{"ok":true,"cmd":"start","state":"running"}` |
//! | `{"cmd":"stop"}` | `{"ok":true,"cmd":"stop","state":"stopped"}` |
//! | `{"cmd":"status"}` | `{"ok":true,"cmd":"status","state":…,"config":{…},"counters":{…},…}` |
//! | `{"cmd":"close"}` | `{"ok":true,"cmd":"close"}`, then the tap closes the connection |
//!
//! * `hello` comes first; anything else before it is refused
//!   (`not_authenticated`). The secret is compared in constant time
//!   ([`secret::matches`]). A wrong secret is answered `auth` and the
//!   connection closed.
//! * `config` changes only the fields it names (a list given replaces the
//!   list; `"filter":""` removes the capture filter). Fields: `interface`,
//!   `filter` (BPF), `networks` (CIDR list), `numbers` and `skip_numbers`
//!   (globs, or `re:REGEX`), `receiver` (`ADDR:PORT` of the rst receiver),
//!   `mode` (`"rtp"`: captured RTP forwarded unchanged; `"data"` is reserved).
//!   Unknown fields are refused, so a typo is never silently ignored.
//! * `start` and `stop` answer once the capture really started or stopped
//!   (every call ended with a BYE).
//!
//! Requests and responses are [`control::Request`] and [`control::Response`];
//! [`line::LineBuffer`] cuts a byte stream into bounded lines.

pub mod control;
pub mod discovery;
pub mod line;
pub mod pattern;
pub mod secret;

pub use pattern::Pattern;

/// The control plane's version, in discovery datagrams and `hello`.
pub const VERSION: u32 = 1;

/// The `proto` field of every discovery datagram.
pub const PROTO: &str = "rst-tap";

/// The UDP port taps listen on for discovery requests.
pub const DISCOVERY_PORT: u16 = 9530;

/// The TCP port of a tap's control server.
pub const CONTROL_PORT: u16 = 9531;
