//! Pictures of audio for the console, sans-IO: the level of live audio (the
//! meters) and the min/max envelope of a recording (the waveform).

use serde::Serialize;

/// Buckets an envelope has at most, whatever the page asks.
pub const MAX_BUCKETS: usize = 4000;

/// The level of `samples`: RMS over full scale, 0 to 1.
pub fn level(samples: &[i16]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    ((sum / samples.len() as f64).sqrt() / 32768.0) as f32
}

/// Adds up a direction's audio between two looks of the meters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Meter {
    sum: f64,
    count: u64,
}

impl Meter {
    pub fn add(&mut self, samples: &[i16]) {
        self.sum += samples
            .iter()
            .map(|&s| f64::from(s) * f64::from(s))
            .sum::<f64>();
        self.count += samples.len() as u64;
    }

    /// The RMS level since the last take (0 to 1), and starts again.
    pub fn take(&mut self) -> f32 {
        let level = if self.count == 0 {
            0.0
        } else {
            ((self.sum / self.count as f64).sqrt() / 32768.0) as f32
        };
        *self = Meter::default();
        level
    }
}

/// A recording's waveform: per channel, the lowest and highest sample of
/// each bucket of time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope {
    pub rate: u32,
    /// Seconds the audio lasts.
    pub duration: f64,
    /// Samples (per channel) each bucket covers.
    pub bucket_samples: usize,
    /// Per channel (left R, right W), `[min, max]` per bucket.
    pub channels: Vec<Vec<[i16; 2]>>,
}

/// The envelope of interleaved `samples` of `channels` channels in at most
/// `buckets` buckets.
pub fn envelope(samples: &[i16], channels: usize, rate: u32, buckets: usize) -> Envelope {
    let channels = channels.max(1);
    let frames = samples.len() / channels;
    let buckets = buckets.clamp(1, MAX_BUCKETS);
    let bucket_samples = frames.div_ceil(buckets).max(1);
    let mut out = vec![Vec::with_capacity(frames.div_ceil(bucket_samples)); channels];
    for chunk in samples[..frames * channels].chunks(bucket_samples * channels) {
        for (channel, lane) in out.iter_mut().enumerate() {
            let (mut min, mut max) = (i16::MAX, i16::MIN);
            for &sample in chunk.iter().skip(channel).step_by(channels) {
                min = min.min(sample);
                max = max.max(sample);
            }
            lane.push([min, max]);
        }
    }
    Envelope {
        rate,
        duration: frames as f64 / f64::from(rate.max(1)),
        bucket_samples,
        channels: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_rms_over_full_scale() {
        assert_eq!(level(&[]), 0.0);
        assert_eq!(level(&[0; 160]), 0.0);
        let full = level(&[i16::MIN; 160]);
        assert!((full - 1.0).abs() < 1e-6);
        let mut meter = Meter::default();
        meter.add(&[16384; 80]);
        meter.add(&[-16384; 80]);
        assert!((meter.take() - 0.5).abs() < 1e-6);
        assert_eq!(meter.take(), 0.0, "a take starts again");
    }

    #[test]
    fn an_envelope_keeps_each_channels_extremes() {
        // Left: a ramp; right: silence but one click.
        let mut samples = Vec::new();
        for n in 0..1000i16 {
            samples.push(n);
            samples.push(if n == 555 { -3000 } else { 0 });
        }
        let env = envelope(&samples, 2, 8000, 10);
        assert_eq!(env.bucket_samples, 100);
        assert_eq!(env.channels.len(), 2);
        assert_eq!(env.channels[0].len(), 10);
        assert_eq!(env.channels[0][0], [0, 99]);
        assert_eq!(env.channels[0][9], [900, 999]);
        assert_eq!(env.channels[1][5], [-3000, 0]);
        assert_eq!(env.channels[1][4], [0, 0]);
        assert!((env.duration - 0.125).abs() < 1e-9);
    }

    #[test]
    fn an_envelope_of_little_or_odd_audio_does_not_panic() {
        assert_eq!(
            envelope(&[], 2, 8000, 100).channels,
            vec![Vec::<[i16; 2]>::new(); 2]
        );
        let env = envelope(&[1, 2, 3], 2, 0, 0);
        assert_eq!(env.channels, vec![vec![[1, 1]], vec![[2, 2]]]);
        let env = envelope(&[5; 7], 1, 8000, 1_000_000);
        assert_eq!(env.channels[0].len(), 7);
    }
}
