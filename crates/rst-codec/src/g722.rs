//! G.722 decoder, 64 kbit/s mode (mode 1), 16 kHz output.
//!
//! A port of the public-domain decoder by Steve Underwood (spandsp
//! `g722_decode.c`, itself based on the CMU 1993 implementation by Chengxiang
//! Lu and Alex Hauptmann), restricted to what RTP payload type 9 uses: one
//! unpacked 8-bit code word per input byte (6 bits low band, 2 bits high band)
//! and two output samples per code word. The block names in the comments are
//! those of ITU-T G.722, so the code can be checked against the standard.
//!
//! All arithmetic stays within `i32` for any input: every product is of two
//! values bounded by the saturation to 16 bits, and the per-tap shifts keep the
//! sums small, so there is no overflow to guard against.

/// Low-band log-scale factor increments, indexed by the 4-bit magnitude class (Table 14/G.722).
const WL: [i32; 8] = [-60, -30, 58, 172, 334, 538, 1198, 3042];
/// Maps the 4-bit low-band code to its magnitude class for the scale-factor adaptation.
const RL42: [i32; 16] = [0, 7, 6, 5, 4, 3, 2, 1, 7, 6, 5, 4, 3, 2, 1, 0];
/// Inverse log table for the scale factor (Table 15/G.722).
const ILB: [i32; 32] = [
    2048, 2093, 2139, 2186, 2233, 2282, 2332, 2383, 2435, 2489, 2543, 2599, 2656, 2714, 2774, 2834,
    2896, 2960, 3025, 3091, 3158, 3228, 3298, 3371, 3444, 3520, 3597, 3676, 3756, 3838, 3922, 4008,
];
/// High-band log-scale factor increments.
const WH: [i32; 3] = [0, -214, 798];
/// Maps the 2-bit high-band code to its magnitude class.
const RH2: [i32; 4] = [2, 1, 2, 1];
/// High-band inverse quantiser (2 bits).
const QM2: [i32; 4] = [-7408, -1616, 7408, 1616];
/// Low-band inverse quantiser, 4 bits: the predictor adapts on this truncated
/// value so that encoder and decoder stay in step whatever the bit rate.
const QM4: [i32; 16] = [
    0, -20456, -12896, -8968, -6288, -4240, -2584, -1200, 20456, 12896, 8968, 6288, 4240, 2584,
    1200, 0,
];
/// Low-band inverse quantiser, 6 bits (64 kbit/s): used only for the output signal.
const QM6: [i32; 64] = [
    -136, -136, -136, -136, -24808, -21904, -19008, -16704, -14984, -13512, -12280, -11192, -10232,
    -9360, -8576, -7856, -7192, -6576, -6000, -5456, -4944, -4464, -4008, -3576, -3168, -2776,
    -2400, -2032, -1688, -1360, -1040, -728, 24808, 21904, 19008, 16704, 14984, 13512, 12280,
    11192, 10232, 9360, 8576, 7856, 7192, 6576, 6000, 5456, 4944, 4464, 4008, 3576, 3168, 2776,
    2400, 2032, 1688, 1360, 1040, 728, 432, 136, -432, -136,
];
/// Receive QMF coefficients; the 24-tap filter is symmetric, so 12 suffice.
const QMF_COEFFS: [i32; 12] = [3, -11, 12, 32, -210, 951, 3876, -805, 362, -156, 53, -11];

#[inline]
fn saturate(amp: i32) -> i32 {
    amp.clamp(i32::from(i16::MIN), i32::from(i16::MAX))
}

/// ADPCM state of one sub-band.
#[derive(Debug, Clone, Default)]
struct Band {
    /// Predicted signal (pole + zero sections).
    s: i32,
    /// Zero-section prediction.
    sz: i32,
    /// Reconstructed signal, current and two past.
    r: [i32; 3],
    /// Pole predictor coefficients (index 0 unused).
    a: [i32; 3],
    /// Partially reconstructed signal, current and two past.
    p: [i32; 3],
    /// Quantised difference signal, current and six past.
    d: [i32; 7],
    /// Zero predictor coefficients (index 0 unused).
    b: [i32; 7],
    /// Logarithmic scale factor.
    nb: i32,
    /// Linear scale factor (quantiser step).
    det: i32,
}

impl Band {
    fn with_det(det: i32) -> Self {
        Band {
            det,
            ..Band::default()
        }
    }

    /// Blocks 3L/3H, LOGSCL + SCALEL/SCALEH: adapts the quantiser step.
    /// `nb_max` and `shift_base` are the only differences between the bands.
    fn adapt_scale(&mut self, increment: i32, nb_max: i32, shift_base: i32) {
        // Leaky integration (factor 127/128) so that the step forgets old loudness.
        self.nb = ((self.nb * 127) >> 7) + increment;
        self.nb = self.nb.clamp(0, nb_max);

        let mantissa = ILB[((self.nb >> 6) & 31) as usize];
        let shift = shift_base - (self.nb >> 11);
        let step = if shift < 0 {
            mantissa << -shift
        } else {
            mantissa >> shift
        };
        self.det = step << 2;
    }

    /// Block 4 (RECONS, PARREC, UPPOL2, UPPOL1, UPZERO, DELAYA, FILTEP,
    /// FILTEZ, PREDIC): updates the adaptive predictor with the quantised
    /// difference `d` and computes the next prediction.
    fn update_predictor(&mut self, d: i32) {
        // RECONS, PARREC
        self.d[0] = d;
        self.r[0] = saturate(self.s + d);
        self.p[0] = saturate(self.sz + d);

        // Only the signs of p feed the gradient-sign adaptation below.
        let sg0 = self.p[0] >> 15;
        let sg1 = self.p[1] >> 15;
        let sg2 = self.p[2] >> 15;

        // UPPOL2
        let wd1 = saturate(self.a[1] << 2);
        let wd2 = if sg0 == sg1 { -wd1 } else { wd1 }.min(32767);
        let mut ap2 = (wd2 >> 7) + if sg0 == sg2 { 128 } else { -128 };
        ap2 += (self.a[2] * 32512) >> 15;
        let ap2 = ap2.clamp(-12288, 12288);

        // UPPOL1: the bound on a1 depends on the new a2 to keep the pole
        // section stable.
        let wd1 = if sg0 == sg1 { 192 } else { -192 };
        let wd2 = (self.a[1] * 32640) >> 15;
        let limit = saturate(15360 - ap2);
        let ap1 = saturate(wd1 + wd2).clamp(-limit, limit);

        // UPZERO: sign-sign LMS on the six zero-section taps, which leaks
        // (32640/32768) so a run of zero differences lets the taps decay.
        let step = if d == 0 { 0 } else { 128 };
        let sign_d = d >> 15;
        let mut bp = [0i32; 7];
        for ((bp, &b), &d_past) in bp.iter_mut().zip(&self.b).zip(&self.d).skip(1) {
            let wd2 = if (d_past >> 15) == sign_d {
                step
            } else {
                -step
            };
            *bp = saturate(wd2 + ((b * 32640) >> 15));
        }

        // DELAYA
        self.d.copy_within(0..6, 1);
        self.b[1..].copy_from_slice(&bp[1..]);
        self.r.copy_within(0..2, 1);
        self.p.copy_within(0..2, 1);
        self.a[1] = ap1;
        self.a[2] = ap2;

        // FILTEP
        let wd1 = (self.a[1] * saturate(self.r[1] + self.r[1])) >> 15;
        let wd2 = (self.a[2] * saturate(self.r[2] + self.r[2])) >> 15;
        let sp = saturate(wd1 + wd2);

        // FILTEZ
        let mut sz = 0;
        for i in (1..7).rev() {
            sz += (self.b[i] * saturate(self.d[i] + self.d[i])) >> 15;
        }
        self.sz = saturate(sz);

        // PREDIC
        self.s = saturate(sp + self.sz);
    }
}

/// Streaming G.722 decoder for 64 kbit/s (RTP payload type 9).
///
/// Each input byte yields two 16 kHz samples. The decoder is adaptive, so
/// feed it the packets of one stream in order: state is carried from one
/// call of [`G722Decoder::decode`] to the next. Note that RTP advertises an
/// 8000 Hz clock for G.722 for historical reasons; the audio is 16 kHz.
#[derive(Debug, Clone)]
pub struct G722Decoder {
    band: [Band; 2],
    /// QMF delay line: the last 12 (low + high, low - high) pairs.
    x: [i32; 24],
}

impl Default for G722Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Decoder {
    /// Creates a decoder in the reset state of G.722 (DETL = 32, DETH = 8).
    pub fn new() -> Self {
        G722Decoder {
            band: [Band::with_det(32), Band::with_det(8)],
            x: [0; 24],
        }
    }

    /// Decodes `payload` (one code word per byte) and appends
    /// `2 * payload.len()` samples at 16 kHz to `out`.
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) {
        out.reserve(payload.len() * 2);
        for &code in payload {
            let (first, second) = self.decode_code(code);
            out.push(first);
            out.push(second);
        }
    }

    /// Decodes one 8-bit code word into two output samples.
    fn decode_code(&mut self, code: u8) -> (i16, i16) {
        let code = i32::from(code);
        let ilow = code & 0x3F;
        let ihigh = (code >> 6) & 0x03;

        // Low band.
        let low = &mut self.band[0];
        // INVQBL, RECONS, LIMIT: the output uses the full 6-bit code.
        let rlow = (low.s + ((low.det * QM6[ilow as usize]) >> 15)).clamp(-16384, 16383);
        // INVQAL: the predictor sees only the 4 most significant bits.
        let ilow4 = (ilow >> 2) as usize;
        let dlow = (low.det * QM4[ilow4]) >> 15;
        low.adapt_scale(WL[RL42[ilow4] as usize], 18432, 8);
        low.update_predictor(dlow);

        // High band.
        let high = &mut self.band[1];
        // INVQAH, RECONS, LIMIT
        let dhigh = (high.det * QM2[ihigh as usize]) >> 15;
        let rhigh = (dhigh + high.s).clamp(-16384, 16383);
        high.adapt_scale(WH[RH2[ihigh as usize] as usize], 22528, 10);
        high.update_predictor(dhigh);

        // Receive QMF: interleaves the two bands back into 16 kHz.
        self.x.copy_within(2.., 0);
        self.x[22] = rlow + rhigh;
        self.x[23] = rlow - rhigh;
        let mut xout1 = 0;
        let mut xout2 = 0;
        for i in 0..12 {
            xout2 += self.x[2 * i] * QMF_COEFFS[i];
            xout1 += self.x[2 * i + 1] * QMF_COEFFS[11 - i];
        }
        (saturate(xout1 >> 11) as i16, saturate(xout2 >> 11) as i16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic byte source so the stress test needs no dependency.
    fn xorshift_bytes(mut state: u64, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn silence_code_decodes_near_zero() {
        // 0xFF is the low-band "zero" code with the smallest high-band step.
        let mut dec = G722Decoder::new();
        let mut out = Vec::new();
        dec.decode(&[0xFF; 400], &mut out);
        assert_eq!(out.len(), 800);
        assert!(
            out[400..].iter().all(|s| s.unsigned_abs() < 64),
            "{:?}",
            &out[400..420]
        );
    }

    #[test]
    fn extreme_and_random_input_never_overflows() {
        // Tests run with overflow checks on, so this exercises the claim that
        // no intermediate value leaves i32 for any input.
        let mut inputs = vec![vec![0x00; 4000], vec![0x04; 4000], vec![0x20; 4000]];
        inputs.push(
            (0..4000)
                .map(|i| if i % 2 == 0 { 0x04 } else { 0xE0 })
                .collect(),
        );
        inputs.push(xorshift_bytes(0x9E37_79B9_7F4A_7C15, 200_000));
        for input in inputs {
            let mut dec = G722Decoder::new();
            let mut out = Vec::new();
            dec.decode(&input, &mut out);
            assert_eq!(out.len(), input.len() * 2);
        }
    }

    #[test]
    fn split_decoding_equals_whole() {
        let input = xorshift_bytes(42, 1000);
        let mut whole = Vec::new();
        G722Decoder::new().decode(&input, &mut whole);
        let mut dec = G722Decoder::new();
        let mut parts = Vec::new();
        for chunk in input.chunks(37) {
            dec.decode(chunk, &mut parts);
        }
        assert_eq!(whole, parts);
    }
}
