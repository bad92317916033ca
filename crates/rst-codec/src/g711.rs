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

/// G.711 µ-law encoding of one 16-bit linear sample: the 16-bit value rounded
/// to the 14 bits µ-law quantises (as sox does), then the classic Sun/CCITT
/// `linear2ulaw`. For senders and test payloads; the receiver only decodes.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    const SEGMENT_ENDS: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
    const CLIP: i32 = 8159;
    let mut value = (i32::from(sample) + 2) >> 2;
    let mask = if value < 0 {
        value = -value;
        0x7F
    } else {
        0xFF
    };
    value = value.min(CLIP) + (ULAW_BIAS >> 2);
    let Some(segment) = SEGMENT_ENDS.iter().position(|&end| value <= end) else {
        return (0x7F ^ mask) as u8;
    };
    let segment = segment as i32;
    (((segment << 4) | ((value >> (segment + 1)) & 0x0F)) ^ mask) as u8
}

/// G.711 A-law encoding of one 16-bit linear sample: rounded to the 13 bits
/// A-law quantises (as sox does), then the classic Sun/CCITT `linear2alaw`.
pub fn linear_to_alaw(sample: i16) -> u8 {
    const SEGMENT_ENDS: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];
    let mut value = (i32::from(sample) + 4) >> 3;
    let mask = if value >= 0 {
        0xD5
    } else {
        value = -value - 1;
        0x55
    };
    let Some(segment) = SEGMENT_ENDS.iter().position(|&end| value <= end) else {
        return (0x7F ^ mask) as u8;
    };
    let segment = segment as i32;
    let mantissa = if segment < 2 {
        (value >> 1) & 0x0F
    } else {
        (value >> segment) & 0x0F
    };
    ((segment << 4 | mantissa) ^ mask) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_inverts_decoding_for_every_code() {
        for code in 0..=255u8 {
            // µ-law has two zeros (0x7F, 0xFF); the encoder picks 0xFF.
            let expected = if code == 0x7F { 0xFF } else { code };
            assert_eq!(
                linear_to_ulaw(ulaw_to_linear(code)),
                expected,
                "µ-law {code:#04x}"
            );
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "A-law {code:#04x}"
            );
        }
    }

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
