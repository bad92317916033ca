//! The checksum an S3-compatible store gives back as an object's ETag, as we
//! expect it from what we sent: the MD5 of the bytes for a single upload, and
//! for a multipart upload the MD5 of the parts' MD5s followed by `-N`. It is
//! how S3, MinIO, Ceph and SeaweedFS answer (not for objects encrypted with
//! SSE-KMS, whose ETag is opaque: see [`Verdict::Opaque`]).

use md5::{Digest as _, Md5};

/// Parts of a multipart upload. S3 asks at least 5 MiB for every part but the last.
pub const PART_SIZE: usize = 8 << 20;

/// MD5s of the parts of one object as they are uploaded.
#[derive(Debug, Default)]
pub struct Expected {
    parts: Vec<[u8; 16]>,
}

/// What a store's ETag says of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The checksum matches what was sent.
    Verified,
    /// The checksum names other bytes: the upload is not stored.
    Mismatch,
    /// Not an MD5-style ETag (SSE-KMS, or no ETag at all): only the size can be checked.
    Opaque,
}

impl Expected {
    /// One more part (the whole object, for a single upload).
    pub fn part(&mut self, bytes: &[u8]) {
        self.parts.push(Md5::digest(bytes).into());
    }

    /// The ETag expected for a single upload (`multipart: false`) or a multipart one.
    pub fn etag(&self, multipart: bool) -> String {
        if !multipart {
            return self
                .parts
                .first()
                .map(hex)
                .unwrap_or_else(|| hex(&Md5::digest([]).into()));
        }
        let mut all = Md5::new();
        for part in &self.parts {
            all.update(part);
        }
        format!("{}-{}", hex(&all.finalize().into()), self.parts.len())
    }

    /// Compares the store's ETag with what was sent.
    pub fn check(&self, etag: Option<&str>, multipart: bool) -> Verdict {
        let Some(etag) = etag.map(|e| e.trim_matches('"').to_ascii_lowercase()) else {
            return Verdict::Opaque;
        };
        let md5_like = etag
            .split('-')
            .next()
            .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !md5_like {
            return Verdict::Opaque;
        }
        if etag == self.etag(multipart) {
            Verdict::Verified
        } else {
            Verdict::Mismatch
        }
    }
}

fn hex(digest: &[u8; 16]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multipart_etags_are_as_s3_gives_them() {
        let mut single = Expected::default();
        single.part(b"hello");
        // `echo -n hello | md5sum`
        assert_eq!(single.etag(false), "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(
            single.check(Some("\"5D41402ABC4B2A76B9719D911017C592\""), false),
            Verdict::Verified
        );
        assert_eq!(
            single.check(Some("\"00000000000000000000000000000000\""), false),
            Verdict::Mismatch
        );
        assert_eq!(single.check(Some("opaque-kms-tag"), false), Verdict::Opaque);
        assert_eq!(single.check(None, false), Verdict::Opaque);
        let mut multi = Expected::default();
        multi.part(b"hello");
        multi.part(b"world");
        // md5(md5("hello") ++ md5("world")), as `aws s3` documents it.
        let mut both = Md5::new();
        both.update(Md5::digest(b"hello"));
        both.update(Md5::digest(b"world"));
        let expected = format!("{}-2", hex(&both.finalize().into()));
        assert_eq!(multi.etag(true), expected);
        assert_eq!(multi.check(Some(&expected), true), Verdict::Verified);
    }
}
