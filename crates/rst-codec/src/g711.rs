//! G.711 µ-law (PCMU) and A-law (PCMA) expansion to 16-bit linear PCM.
//!
//! The values are those of the classic Sun/CCITT `g711.c` (and of sox, which
//! uses the same expansion), so a recording decoded here is bit-identical to
//! one decoded by the usual telephony tools.

/// µ-law bias added before the segment shift (ITU-T G.711 encodes `|x| + 0x84`).
const ULAW_BIAS: i32 = 0x84;

const fn ulaw_expand(code: u8) -> i16 {
    // µ-law codes are transmitted with every bit inverted.
    let u = !code;
    let mantissa = (u & 0x0F) as i32;
    let segment = ((u & 0x70) >> 4) as u32;
    let magnitude = ((mantissa << 3) + ULAW_BIAS) << segment;
    if u & 0x80 != 0 {
        (ULAW_BIAS - magnitude) as i16
    } else {
        (magnitude - ULAW_BIAS) as i16
    }
}

const fn alaw_expand(code: u8) -> i16 {
    // A-law inverts the even bits on the wire so that idle lines carry transitions.
    let a = code ^ 0x55;
    let mantissa = ((a & 0x0F) as i32) << 4;
    let segment = ((a & 0x70) >> 4) as u32;
    // Segment 0 has no implicit leading one; the +8 / +0x108 put the
    // reconstruction level in the middle of the quantisation interval.
    let magnitude = match segment {
        0 => mantissa + 8,
        1 => mantissa + 0x108,
        _ => (mantissa + 0x108) << (segment - 1),
    };
    // After the XOR a set sign bit means positive, unlike µ-law.
    if a & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

// `const fn` cannot call through a function pointer, hence two builders.
const fn build_ulaw_table() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = ulaw_expand(i as u8);
        i += 1;
    }
    table
}

const fn build_alaw_table() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = alaw_expand(i as u8);
        i += 1;
    }
    table
}

/// µ-law code → linear sample, built at compile time.
pub static ULAW_TO_LINEAR: [i16; 256] = build_ulaw_table();

/// A-law code → linear sample, built at compile time.
pub static ALAW_TO_LINEAR: [i16; 256] = build_alaw_table();

/// Expands one µ-law (PCMU, RTP payload type 0) byte to a 16-bit sample.
///
/// `0xFF` and `0x7F` are the two zeros, `0x00` is -32124 and `0x80` is 32124.
#[inline]
pub fn ulaw_to_linear(code: u8) -> i16 {
    ULAW_TO_LINEAR[usize::from(code)]
}

/// Expands one A-law (PCMA, RTP payload type 8) byte to a 16-bit sample.
///
/// `0xD5` is 8 and `0x55` is -8 (A-law has no exact zero).
#[inline]
pub fn alaw_to_linear(code: u8) -> i16 {
    ALAW_TO_LINEAR[usize::from(code)]
}

/// Appends the expansion of every µ-law byte of `payload` to `out`.
pub fn decode_ulaw(payload: &[u8], out: &mut Vec<i16>) {
    out.extend(payload.iter().map(|&b| ulaw_to_linear(b)));
}

/// Appends the expansion of every A-law byte of `payload` to `out`.
pub fn decode_alaw(payload: &[u8], out: &mut Vec<i16>) {
    out.extend(payload.iter().map(|&b| alaw_to_linear(b)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ulaw_values() {
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0xFE), 8);
        assert_eq!(ulaw_to_linear(0x7E), -8);
        assert_eq!(ulaw_to_linear(0xEF), 132);
    }

    #[test]
    fn known_alaw_values() {
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        assert_eq!(alaw_to_linear(0x80), 5504);
        assert_eq!(alaw_to_linear(0x00), -5504);
    }

    #[test]
    fn tables_are_odd_symmetric() {
        // Both laws are sign-magnitude codes: flipping the sign bit negates the sample.
        for code in 0..=255u8 {
            assert_eq!(ulaw_to_linear(code), -ulaw_to_linear(code ^ 0x80));
            assert_eq!(alaw_to_linear(code), -alaw_to_linear(code ^ 0x80));
        }
    }
}
