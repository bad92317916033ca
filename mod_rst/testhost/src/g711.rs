//! G.711 µ-law and A-law, the classic Sun reference (what FreeSWITCH's g711.h
//! does), and the deterministic test tone the media threads send.

/// Linear to µ-law.
pub(crate) fn ulaw_encode(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    let mut pcm = i32::from(sample);
    let mask = if pcm < 0 {
        pcm = -pcm;
        0x7F
    } else {
        0xFF
    };
    pcm = (pcm + BIAS).min(32635 + BIAS);
    let segment = (0..8).find(|&s| pcm <= (0xFF << s)).unwrap_or(7);
    let byte = ((segment << 4) | ((pcm >> (segment + 3)) & 0xF)) as u8;
    byte ^ mask
}

/// µ-law to linear.
pub(crate) fn ulaw_decode(byte: u8) -> i16 {
    let u = !byte;
    let mut t = ((i32::from(u) & 0x0F) << 3) + 0x84;
    t <<= (i32::from(u) & 0x70) >> 4;
    (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
}

/// Linear to A-law.
pub(crate) fn alaw_encode(sample: i16) -> u8 {
    let mut pcm = i32::from(sample) >> 3;
    let mask = if pcm >= 0 {
        0xD5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    let segment = (0..8)
        .find(|&s| pcm <= (0x1F << s) | ((1 << s) - 1))
        .unwrap_or(8);
    let byte = if segment >= 8 {
        0x7F
    } else if segment < 2 {
        ((segment << 4) | ((pcm >> 1) & 0xF)) as u8
    } else {
        ((segment << 4) | ((pcm >> segment) & 0xF)) as u8
    };
    byte ^ mask
}

/// A-law to linear.
pub(crate) fn alaw_decode(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let mut t = (i32::from(a) & 0x0F) << 4;
    let segment = (i32::from(a) & 0x70) >> 4;
    match segment {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= segment - 1;
        }
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

/// Sample `n` (counted from the direction's first sample) of the test tone:
/// `round(amplitude * sin(2π·hz·(n mod P)/rate))`, where P is the tone's exact
/// period in samples, `rate / gcd(rate, hz)`, for a whole `hz` (P = ∞ otherwise).
/// A pure function, so a test can compute every sample the host sent. Pick a
/// frequency whose period is not a divisor of the 20 ms frame (1013 Hz: one
/// second) so that a lost, repeated or reordered frame shows.
pub(crate) fn tone_sample(hz: f64, amplitude: f64, rate: u32, n: u64) -> i16 {
    let n = match tone_period(hz, rate) {
        Some(period) => n % period,
        None => n,
    };
    let phase = 2.0 * std::f64::consts::PI * hz * (n as f64) / f64::from(rate);
    (amplitude * phase.sin()).round() as i16
}

/// The exact period in samples of a whole-Hz tone at `rate`.
pub(crate) fn tone_period(hz: f64, rate: u32) -> Option<u64> {
    if hz <= 0.0 || hz.fract() != 0.0 || hz > 1e9 {
        return None;
    }
    let (mut a, mut b) = (u64::from(rate), hz as u64);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    Some(u64::from(rate) / a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_are_stable() {
        for byte in 0..=255u8 {
            // µ-law 0x7F is "negative zero", which encodes back as 0xFF.
            if byte != 0x7F {
                assert_eq!(ulaw_encode(ulaw_decode(byte)), byte, "ulaw {byte:#x}");
            }
            assert_eq!(alaw_encode(alaw_decode(byte)), byte, "alaw {byte:#x}");
        }
    }

    #[test]
    fn tone_periods() {
        assert_eq!(tone_period(1000.0, 8000), Some(8));
        assert_eq!(tone_period(1013.0, 8000), Some(8000));
        assert_eq!(tone_period(0.0, 8000), None);
        assert_eq!(tone_period(440.5, 8000), None);
        assert_eq!(tone_sample(1000.0, 8000.0, 8000, 2), 8000);
        assert_eq!(
            tone_sample(1013.0, 8000.0, 8000, 8001),
            tone_sample(1013.0, 8000.0, 8000, 1)
        );
    }

    #[test]
    fn known_values() {
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(alaw_decode(0xD5), 8);
    }
}
