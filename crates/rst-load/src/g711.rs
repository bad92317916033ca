//! The test tones the load generator sends, and the G.711 encoders (rst-codec's)
//! that make them payloads.

use std::f64::consts::PI;

/// Sample rate of every payload rst-load sends (PCMU, PCMA and PT 10 without a
/// `rate` extension are all 8 kHz).
pub const SAMPLE_RATE: u32 = 8000;

/// Samples in one 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;

/// Tone sent on `R` (what the channel's far end says).
pub const TONE_HZ_READ: u32 = 1000;

/// Tone sent on `W` (what the far end hears): a different pitch, so a recording
/// checker can tell the directions apart.
pub const TONE_HZ_WRITE: u32 = 500;

/// Peak amplitude of the tones: half of full scale (-6 dBFS).
pub const TONE_AMPLITUDE: f64 = 16384.0;

/// One 20 ms frame (160 samples) of a sine tone at `hz`. 1000 Hz and 500 Hz fit a
/// whole number of periods into a frame, so repeating the frame gives a clean tone.
pub fn tone_frame(hz: u32) -> [i16; FRAME_SAMPLES] {
    let mut frame = [0i16; FRAME_SAMPLES];
    for (n, sample) in frame.iter_mut().enumerate() {
        let phase = 2.0 * PI * f64::from(hz) * n as f64 / f64::from(SAMPLE_RATE);
        *sample = (TONE_AMPLITUDE * phase.sin()).round() as i16;
    }
    frame
}

pub use rst_codec::{linear_to_alaw, linear_to_ulaw};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_round_trips_within_quantisation() {
        for sample in (i16::MIN..=i16::MAX).step_by(7) {
            let decoded = rst_codec::g711::ulaw_to_linear(linear_to_ulaw(sample));
            let error = (i32::from(decoded) - i32::from(sample)).abs();
            // Half a quantisation step (at most 1/32 of the value, and 1024 near
            // full scale, where µ-law clips at 32124), plus rounding.
            let allowed = (i32::from(sample).abs() / 16).max(16)
                + 1024 * i32::from(sample.unsigned_abs() > 32000);
            assert!(error <= allowed, "{sample} -> {decoded}");
        }
        assert_eq!(linear_to_ulaw(0), 0xFF);
    }

    #[test]
    fn alaw_round_trips_within_quantisation() {
        for sample in (i16::MIN..=i16::MAX).step_by(7) {
            let decoded = rst_codec::g711::alaw_to_linear(linear_to_alaw(sample));
            let error = (i32::from(decoded) - i32::from(sample)).abs();
            let allowed = (i32::from(sample).abs() / 16).max(16);
            assert!(error <= allowed, "{sample} -> {decoded}");
        }
        assert_eq!(linear_to_alaw(0), 0xD5);
    }

    #[test]
    fn tones_repeat_per_frame() {
        for hz in [TONE_HZ_READ, TONE_HZ_WRITE] {
            let frame = tone_frame(hz);
            let period = (SAMPLE_RATE / hz) as usize;
            assert_eq!(FRAME_SAMPLES % period, 0);
            assert_eq!(frame[0], 0);
            assert!(frame.iter().any(|&s| s > 16000));
        }
    }
}
