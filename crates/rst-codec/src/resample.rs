//! Sample rate conversion for live audio, with a real band-limited resampler
//! (rubato's synchronous FFT resampler), never by dropping or repeating
//! samples. Streaming: audio goes in as it comes, in frames of any length;
//! what comes out is delayed by the filter only (its delay is cut from the
//! start, so the output lines up with the input's time).

use audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler as _};

/// Input frames the resampler works on at once: 20 ms at the input rate.
const CHUNK_MS: usize = 20;

/// Converts one mono stream from one rate to another.
pub struct Resampler {
    from: u32,
    to: u32,
    /// `None` when the rates are equal: a copy.
    fft: Option<Fft<f32>>,
    pending: Vec<f32>,
    output: Vec<f32>,
    /// Output samples still to be cut: the filter's delay.
    delay: usize,
    /// Input samples taken, output samples given: to end with exactly the right length.
    taken: u64,
    given: u64,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("from", &self.from)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

impl Resampler {
    /// Converts from `from` Hz to `to` Hz.
    pub fn new(from: u32, to: u32) -> Resampler {
        let chunk = from as usize * CHUNK_MS / 1000;
        let fft = (from != to)
            .then(|| {
                Fft::new(
                    from as usize,
                    to as usize,
                    chunk.max(1),
                    1,
                    1,
                    FixedSync::Input,
                )
            })
            // It fails only for a rate of zero, which no caller passes (rates
            // are checked where they are read): a copy is the safe fallback.
            .and_then(Result::ok);
        let delay = fft.as_ref().map_or(0, |fft| fft.output_delay());
        Resampler {
            from,
            to,
            output: vec![0.0; fft.as_ref().map_or(0, |fft| fft.output_frames_max())],
            fft,
            pending: Vec::new(),
            delay,
            taken: 0,
            given: 0,
        }
    }

    /// The input rate.
    pub fn from_rate(&self) -> u32 {
        self.from
    }

    /// The output rate.
    pub fn to_rate(&self) -> u32 {
        self.to
    }

    /// Takes `samples` at the input rate and appends to `out` what is ready at the output rate.
    pub fn push(&mut self, samples: &[i16], out: &mut Vec<i16>) {
        self.taken += samples.len() as u64;
        let Some(fft) = &mut self.fft else {
            out.extend_from_slice(samples);
            self.given += samples.len() as u64;
            return;
        };
        self.pending
            .extend(samples.iter().map(|&s| f32::from(s) / 32768.0));
        let chunk = fft.input_frames_next();
        let mut used = 0;
        while self.pending.len() - used >= chunk {
            let input = &self.pending[used..used + chunk];
            let Ok(input) = InterleavedSlice::new(input, 1, chunk) else {
                break;
            };
            let capacity = self.output.len();
            let Ok(mut output) = InterleavedSlice::new_mut(&mut self.output, 1, capacity) else {
                break;
            };
            let Ok((_, written)) = fft.process_into_buffer(&input, &mut output, None) else {
                break;
            };
            used += chunk;
            let skip = self.delay.min(written);
            self.delay -= skip;
            for &sample in &self.output[skip..written] {
                out.push((sample * 32768.0).round().clamp(-32768.0, 32767.0) as i16);
            }
            self.given += (written - skip) as u64;
        }
        self.pending.drain(..used);
    }

    /// Flushes what the filter still holds, so that the output is as long as
    /// the input (at the output rate).
    pub fn finish(&mut self, out: &mut Vec<i16>) {
        let Some(fft) = &self.fft else { return };
        let wanted = self.taken * u64::from(self.to) / u64::from(self.from);
        let chunk = fft.input_frames_next();
        let silence = vec![0i16; chunk];
        let mut rounds = 0;
        while self.given < wanted && rounds < 8 {
            let before = out.len();
            self.push(&silence, out);
            self.taken -= chunk as u64;
            let excess = self.given.saturating_sub(wanted) as usize;
            out.truncate(out.len() - excess.min(out.len() - before));
            self.given -= excess as u64;
            rounds += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f64, rate: u32, samples: usize) -> Vec<i16> {
        (0..samples)
            .map(|i| {
                (8000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate)).sin())
                    as i16
            })
            .collect()
    }

    /// Goertzel power of `hz` in `samples`, relative to the signal's energy.
    fn share_of(hz: f64, rate: u32, samples: &[i16]) -> f64 {
        let w = 2.0 * std::f64::consts::PI * hz / f64::from(rate);
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        let mut energy = 0.0;
        for &x in samples {
            let x = f64::from(x);
            energy += x * x;
            let s = x + 2.0 * w.cos() * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let power = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
        power / (energy * samples.len() as f64 / 2.0)
    }

    #[test]
    fn equal_rates_are_a_copy() {
        let input = tone(440.0, 16000, 333);
        let mut out = Vec::new();
        let mut resampler = Resampler::new(16000, 16000);
        resampler.push(&input, &mut out);
        resampler.finish(&mut out);
        assert_eq!(out, input);
    }

    #[test]
    fn a_tone_keeps_its_pitch_and_the_length_is_exact() {
        for (from, to) in [
            (8000, 16000),
            (16000, 8000),
            (8000, 48000),
            (48000, 24000),
            (16000, 24000),
        ] {
            let input = tone(1000.0, from, from as usize); // one second
            let mut out = Vec::new();
            let mut resampler = Resampler::new(from, to);
            // Odd-sized frames, as senders send them.
            for frame in input.chunks(77) {
                resampler.push(frame, &mut out);
            }
            resampler.finish(&mut out);
            assert_eq!(
                out.len(),
                to as usize,
                "{from} -> {to}: one second in, one second out"
            );
            let middle = &out[out.len() / 4..out.len() * 3 / 4];
            let share = share_of(1000.0, to, middle);
            assert!(
                share > 0.95,
                "{from} -> {to}: 1 kHz holds {share:.3} of the energy"
            );
        }
    }

    #[test]
    fn the_output_is_not_delayed() {
        // A click at 100 ms stays at 100 ms.
        let mut input = vec![0i16; 8000];
        input[800] = 20000;
        let mut out = Vec::new();
        let mut resampler = Resampler::new(8000, 16000);
        resampler.push(&input, &mut out);
        resampler.finish(&mut out);
        let peak = out
            .iter()
            .enumerate()
            .max_by_key(|(_, s)| s.unsigned_abs())
            .map(|(i, _)| i)
            .unwrap();
        assert!(
            (1598..=1602).contains(&peak),
            "the click is at sample {peak} of 16 kHz"
        );
    }
}
