//! The shared secret, compared without leaking where it differs.

/// Whether `given` equals `expected`, in time that depends only on the length
/// of `expected` (never on where the two first differ, nor on `given`'s
/// length), so a client cannot guess the secret byte by byte from the timing.
pub fn matches(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = u64::from(expected.len() != given.len());
    for (i, &e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(0);
        diff |= u64::from(e ^ g);
    }
    // Keeps the compiler from turning the loop into an early-exit compare.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn equal_only_when_equal() {
        assert!(matches(b"s3cret", b"s3cret"));
        assert!(!matches(b"s3cret", b"s3creT"));
        assert!(!matches(b"s3cret", b"s3cre"));
        assert!(!matches(b"s3cret", b"s3cret\0"));
        assert!(!matches(b"s3cret", b""));
        assert!(matches(b"", b""));
    }
}
