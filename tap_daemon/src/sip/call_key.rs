//! The stable call id a tapped call is recorded under.
//!
//! A Call-ID may contain `@`, `:`, `/`, `.` and up to hundreds of characters,
//! none of which the rst protocol or a file name tolerates. The id is instead
//! an RFC 4122 version 5 UUID (SHA-1 of a fixed namespace and the Call-ID):
//! the same Call-ID always gives the same id, across restarts and across taps,
//! so a call seen by two taps, or replayed from a capture, lands in the same
//! recording name. The raw Call-ID is kept beside it for the record.

use std::fmt;

/// The namespace of tap_daemon call ids, 583518c6-c306-54e7-8c69-3174b16c6256: the UUIDv5 of the name
/// `urn:rst:tap_daemon:call-id` in the RFC 4122 URL namespace. Fixed forever:
/// changing it would rename every future recording of the same Call-ID.
const NAMESPACE: [u8; 16] = [
    0x58, 0x35, 0x18, 0xc6, 0xc3, 0x06, 0x54, 0xe7, 0x8c, 0x69, 0x31, 0x74, 0xb1, 0x6c, 0x62, 0x56,
];

/// A call's stable id: 36 characters `xxxxxxxx-xxxx-5xxx-yxxx-xxxxxxxxxxxx`,
/// lowercase hex, valid as an [`rst_proto::Uuid`]. `Copy`, so it can key maps
/// and travel in events without allocation.
#[derive(Clone, Copy, Eq, PartialOrd, Ord)]
pub struct CallKey([u8; 36]);

/// Byte for byte, as three words compared inline: every RTP packet's call
/// look-up compares a key, and the derived compare of 36 bytes was a call
/// to `memcmp`.
impl PartialEq for CallKey {
    #[inline]
    fn eq(&self, other: &CallKey) -> bool {
        self.words() == other.words()
    }
}

/// A key is 32 hex digits of SHA-1: its first eight characters and its last
/// eight (64 of its bits) are as good a hash input as all 36 bytes, and the
/// maps of every RTP packet's look-ups hash it for a fraction of the cost.
/// Equal keys hash equally, as `Eq` requires.
impl std::hash::Hash for CallKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (head, tail) = (self.0.first_chunk::<8>(), self.0.last_chunk::<8>());
        if let (Some(head), Some(tail)) = (head, tail) {
            state.write_u64(u64::from_le_bytes(*head));
            state.write_u64(u64::from_le_bytes(*tail));
        }
    }
}

impl CallKey {
    /// The 36 bytes as words, for [`CallKey::eq`].
    #[inline]
    fn words(&self) -> (u128, u128, u32) {
        let (mut head, mut middle, mut tail) = ([0u8; 16], [0u8; 16], [0u8; 4]);
        head.copy_from_slice(&self.0[..16]);
        middle.copy_from_slice(&self.0[16..32]);
        tail.copy_from_slice(&self.0[32..]);
        (
            u128::from_ne_bytes(head),
            u128::from_ne_bytes(middle),
            u32::from_ne_bytes(tail),
        )
    }

    /// Derives the id of a Call-ID (compared byte for byte, as RFC 3261 8.1.1.4
    /// says Call-IDs are).
    pub fn from_call_id(call_id: &str) -> CallKey {
        let mut hasher = sha1_smol::Sha1::new();
        hasher.update(&NAMESPACE);
        hasher.update(call_id.as_bytes());
        let digest = hasher.digest().bytes();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        bytes[6] = (bytes[6] & 0x0f) | 0x50; // version 5
        bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
        CallKey(format_uuid(&bytes))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits and '-' are ever written into the array.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// The id as the rst protocol's UUID type.
    pub fn uuid(&self) -> rst_proto::Uuid<'_> {
        rst_proto::Uuid::new(self.as_str())
            .expect("a formatted UUID is 36 characters of hex digits and '-'")
    }
}

fn format_uuid(bytes: &[u8; 16]) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 36];
    let mut pos = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            pos += 1; // leave the '-'
        }
        out[pos] = HEX[usize::from(b >> 4)];
        out[pos + 1] = HEX[usize::from(b & 0x0f)];
        pos += 2;
    }
    out
}

impl fmt::Display for CallKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CallKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallKey({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_valid_and_distinct() {
        let ids = [
            "12013223@200.57.7.195",
            "c3eF6f58-363323Cd-8058EB88-10300252@fe80:0:0:0:21a:a0ff:fe07:32e0",
            "",
            "a:b:c/../..\0",
        ];
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            let key = CallKey::from_call_id(id);
            assert_eq!(key, CallKey::from_call_id(id));
            let s = key.as_str();
            assert_eq!(s.len(), 36);
            assert_eq!(&s[14..15], "5", "version nibble in {s}");
            assert!(
                matches!(&s[19..20], "8" | "9" | "a" | "b"),
                "variant in {s}"
            );
            assert_eq!(
                [8, 13, 18, 23].map(|i| s.as_bytes()[i]),
                [b'-'; 4],
                "dashes in {s}"
            );
            assert_eq!(key.uuid().as_str(), s);
            assert!(seen.insert(key));
        }
    }

    #[test]
    fn known_value() {
        // Pinned (Python: uuid.uuid5(NAMESPACE, "12013223@200.57.7.195")):
        // a change here renames every recording of this Call-ID.
        assert_eq!(
            CallKey::from_call_id("12013223@200.57.7.195").as_str(),
            "e8b69d22-572b-536b-8d76-a89d250806d8"
        );
        let a = CallKey::from_call_id("a@b");
        let b = CallKey::from_call_id("A@b");
        assert_ne!(a, b, "Call-IDs are case-sensitive");
    }
}
