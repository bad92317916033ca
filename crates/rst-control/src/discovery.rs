//! Discovery datagrams: "who is there" ([`Request`]) and "here I am"
//! ([`Reply`]). See the crate documentation for the wire form.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{PROTO, VERSION};

/// Longest request datagram a tap looks at; longer ones are ignored.
pub const MAX_REQUEST: usize = 512;

/// Longest reply datagram (a tap's interfaces are cut to fit).
pub const MAX_REPLY: usize = 4096;

/// Why a discovery datagram was not understood.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DiscoveryError {
    /// Longer than the limit.
    #[error("datagram of {len} bytes, more than {max}")]
    TooLong { len: usize, max: usize },
    /// Not a JSON object of the expected shape.
    #[error("not a discovery message: {0}")]
    Malformed(String),
    /// Another protocol's datagram on our port.
    #[error("proto is {0:?}, not \"rst-tap\"")]
    Proto(String),
    /// A request where a reply was expected or the other way round.
    #[error("type is {found:?}, expected {expected:?}")]
    Type {
        found: String,
        expected: &'static str,
    },
    /// Version 0, which no one speaks.
    #[error("version {0} is not supported")]
    Version(u32),
    /// The nonce is empty, too long or has characters outside `[A-Za-z0-9_-]`.
    #[error("bad nonce")]
    Nonce,
}

/// The token a client picks per discovery round, echoed by the taps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Nonce(String);

impl Nonce {
    /// 16 hex digits of `value`.
    pub fn from_u64(value: u64) -> Nonce {
        Nonce(format!("{value:016x}"))
    }

    /// Checks the form: 8–64 characters of `[A-Za-z0-9_-]`.
    pub fn parse(text: &str) -> Result<Nonce, DiscoveryError> {
        let ok = (8..=64).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Nonce(text.to_owned()))
        } else {
            Err(DiscoveryError::Nonce)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// "Who is there": broadcast by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The client's control-plane version.
    pub version: u32,
    pub nonce: Nonce,
}

/// "Here I am": a tap's unicast answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The tap's control-plane version.
    pub version: u32,
    /// The request's nonce.
    pub nonce: Nonce,
    /// For people: the tap's configured name (its host name by default).
    pub name: String,
    /// Stable across restarts: how a client recognises a tap it knew.
    pub id: String,
    /// The tap_daemon version.
    pub software: String,
    /// The TCP port of its control server.
    pub control_port: u16,
    /// What it can capture on.
    pub interfaces: Vec<String>,
}

/// The envelope every datagram shares.
#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    proto: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(flatten)]
    body: T,
}

#[derive(Serialize, Deserialize)]
struct RequestBody {
    version: u32,
    nonce: String,
}

fn envelope<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
    max: usize,
    expected: &'static str,
) -> Result<T, DiscoveryError> {
    if bytes.len() > max {
        return Err(DiscoveryError::TooLong {
            len: bytes.len(),
            max,
        });
    }
    // The envelope first, so another protocol's JSON gets a precise error.
    #[derive(Deserialize)]
    struct Head {
        proto: String,
        #[serde(rename = "type")]
        kind: String,
    }
    let head: Head =
        serde_json::from_slice(bytes).map_err(|e| DiscoveryError::Malformed(e.to_string()))?;
    if head.proto != PROTO {
        return Err(DiscoveryError::Proto(head.proto));
    }
    if head.kind != expected {
        return Err(DiscoveryError::Type {
            found: head.kind,
            expected,
        });
    }
    let envelope: Envelope<T> =
        serde_json::from_slice(bytes).map_err(|e| DiscoveryError::Malformed(e.to_string()))?;
    Ok(envelope.body)
}

fn encode<T: Serialize>(kind: &str, body: T) -> Vec<u8> {
    let envelope = Envelope {
        proto: PROTO.to_owned(),
        kind: kind.to_owned(),
        body,
    };
    // Serializing plain structs of strings and numbers cannot fail.
    serde_json::to_vec(&envelope).unwrap_or_default()
}

impl Request {
    /// A request of this crate's version.
    pub fn new(nonce: Nonce) -> Request {
        Request {
            version: VERSION,
            nonce,
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Request, DiscoveryError> {
        let body: RequestBody = envelope(bytes, MAX_REQUEST, "who")?;
        if body.version == 0 {
            return Err(DiscoveryError::Version(0));
        }
        Ok(Request {
            version: body.version,
            nonce: Nonce::parse(&body.nonce)?,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        encode(
            "who",
            RequestBody {
                version: self.version,
                nonce: self.nonce.0.clone(),
            },
        )
    }
}

impl Reply {
    pub fn decode(bytes: &[u8]) -> Result<Reply, DiscoveryError> {
        let reply: Reply = envelope(bytes, MAX_REPLY, "here")?;
        if reply.version == 0 {
            return Err(DiscoveryError::Version(0));
        }
        Nonce::parse(reply.nonce.as_str())?;
        Ok(reply)
    }

    /// The datagram; interfaces that would make it longer than
    /// [`MAX_REPLY`] are left out.
    pub fn encode(&self) -> Vec<u8> {
        let mut reply = self.clone();
        loop {
            let bytes = encode("here", &reply);
            if bytes.len() <= MAX_REPLY || reply.interfaces.is_empty() {
                return bytes;
            }
            reply.interfaces.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply() -> Reply {
        Reply {
            version: VERSION,
            nonce: Nonce::from_u64(0x6b1f_3c0a_9d2e_4f57),
            name: "tap-1".into(),
            id: "a41c9e07d2b85f13".into(),
            software: "0.1.0".into(),
            control_port: 9531,
            interfaces: vec!["eth1".into()],
        }
    }

    #[test]
    fn request_wire_form_and_round_trip() {
        let request = Request::new(Nonce::from_u64(0x6b1f_3c0a_9d2e_4f57));
        let bytes = request.encode();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"proto":"rst-tap","type":"who","version":1,"nonce":"6b1f3c0a9d2e4f57"}"#
        );
        assert_eq!(Request::decode(&bytes).unwrap(), request);
    }

    #[test]
    fn reply_round_trip_and_newer_versions() {
        let r = reply();
        assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
        // A future client's request, with fields we do not know, is still a request.
        let future = br#"{"proto":"rst-tap","type":"who","version":7,"nonce":"abcdefgh","x":[1]}"#;
        assert_eq!(Request::decode(future).unwrap().version, 7);
    }

    #[test]
    fn garbage_is_refused_precisely() {
        assert!(matches!(
            Request::decode(b"\x00\x01garbage"),
            Err(DiscoveryError::Malformed(_))
        ));
        assert_eq!(
            Request::decode(br#"{"proto":"ssdp","type":"who"}"#),
            Err(DiscoveryError::Proto("ssdp".into()))
        );
        assert!(matches!(
            Request::decode(&reply().encode()),
            Err(DiscoveryError::Type { .. })
        ));
        assert_eq!(
            Request::decode(br#"{"proto":"rst-tap","type":"who","version":1,"nonce":"a b/c../d"}"#),
            Err(DiscoveryError::Nonce)
        );
        assert_eq!(
            Request::decode(br#"{"proto":"rst-tap","type":"who","version":0,"nonce":"abcdefgh"}"#),
            Err(DiscoveryError::Version(0))
        );
        assert!(matches!(
            Request::decode(&[b' '; MAX_REQUEST + 1]),
            Err(DiscoveryError::TooLong { .. })
        ));
        assert!(matches!(
            Request::decode(br#"{"proto":"rst-tap","type":"who","nonce":"abcdefgh"}"#),
            Err(DiscoveryError::Malformed(_))
        ));
    }

    #[test]
    fn a_reply_never_outgrows_a_datagram() {
        let mut r = reply();
        r.interfaces = (0..1000).map(|i| format!("veth{i:05}")).collect();
        let bytes = r.encode();
        assert!(bytes.len() <= MAX_REPLY);
        assert!(!Reply::decode(&bytes).unwrap().interfaces.is_empty());
    }
}
