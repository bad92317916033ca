//! Keeps the two directions of a call aligned in time for the stereo file.
//!
//! DATA carries no timestamps, so the only clock is arrival time. A direction
//! that falls silent (hold, a dead leg, lost datagrams) would otherwise slide the
//! other channel out of step; instead its channel gets silence for as long as it
//! was quiet. Sans-IO: samples and elapsed time in, interleaved frames out.

use std::cell::Cell;
use std::collections::VecDeque;
use std::time::Duration;

use rst_proto::Direction;

/// How far a direction's audio may arrive behind its place in time before the
/// gap is filled with silence. Jitter below this is absorbed, not reproduced.
const GAP_TOLERANCE: Duration = Duration::from_millis(200);
/// How much audio one direction may hold waiting for the other before the quiet
/// one is given silence; bounds memory per call.
const MAX_WAIT: Duration = Duration::from_secs(2);
/// Samples of room a lane keeps while some still wait: a silence padded in
/// one go (a direction quiet for a second) should not keep its size in every
/// call. A lane with nothing waiting keeps no room at all.
const KEEP_PENDING: usize = 1024;
/// The same for live streams, where waiting is latency.
const LIVE_MAX_WAIT: Duration = Duration::from_millis(300);

#[derive(Debug, Default)]
struct Lane {
    pending: VecDeque<i16>,
    /// Samples placed on this lane so far, pending ones included.
    cursor: u64,
    /// Set when silence was added while the lane was quiet: its next audio is a
    /// resumption and goes exactly where its arrival time says.
    resuming: bool,
    /// Position in the source stream when resampling, in source samples.
    resample_phase: u64,
}

thread_local! {
    /// Resampled audio on its way into a lane: one buffer per thread rather
    /// than one per call, since it holds nothing between two pushes.
    static RESAMPLED: Cell<Vec<i16>> = const { Cell::new(Vec::new()) };
}

/// Interleaves R (left) and W (right) at one sample rate.
#[derive(Debug)]
pub struct StereoAligner {
    rate: u32,
    max_wait: Duration,
    lanes: [Lane; 2],
}

impl StereoAligner {
    pub fn new(rate: u32) -> Self {
        StereoAligner {
            rate,
            max_wait: MAX_WAIT,
            lanes: Default::default(),
        }
    }

    /// An aligner for a live stream: a quiet direction is given silence
    /// after a short wait, since the other direction's audio waits with it.
    pub fn live(rate: u32) -> Self {
        StereoAligner {
            max_wait: LIVE_MAX_WAIT,
            ..StereoAligner::new(rate)
        }
    }

    /// Places `samples` (at `source_rate`) of `direction` that arrived `elapsed`
    /// after the call started, and appends to `out` the interleaved frames that
    /// are now complete.
    pub fn push(
        &mut self,
        direction: Direction,
        samples: &[i16],
        source_rate: u32,
        elapsed: Duration,
        out: &mut Vec<i16>,
    ) {
        let own = lane_index(direction);
        let mut resampled = RESAMPLED.take();
        resampled.clear();
        resample(
            samples,
            source_rate,
            self.rate,
            &mut self.lanes[own].resample_phase,
            &mut resampled,
        );

        let now = self.position(elapsed);
        let tolerance = self.position(GAP_TOLERANCE);
        let lane = &mut self.lanes[own];
        let start = now.saturating_sub(resampled.len() as u64);
        if start > lane.cursor && (lane.resuming || start - lane.cursor > tolerance) {
            pad(lane, start - lane.cursor);
        }
        lane.resuming = false;
        lane.pending.extend(&resampled);
        lane.cursor += resampled.len() as u64;
        RESAMPLED.set(resampled);

        self.bound_wait(own);
        self.drain(out);
    }

    /// Gives a quiet other direction silence once `own` is far ahead of it.
    fn bound_wait(&mut self, own: usize) {
        let max_wait = self.position(self.max_wait);
        let own_cursor = self.lanes[own].cursor;
        let other = &mut self.lanes[1 - own];
        if own_cursor > other.cursor + max_wait {
            pad(other, own_cursor - max_wait / 2 - other.cursor);
            other.resuming = true;
        }
    }

    /// Places `samples` (at `source_rate`) of `direction` at media time `at` since
    /// the call started, as RTP timestamps say: a gap before it becomes silence.
    /// Audio that overlaps what the direction already has is appended, not
    /// dropped (clock drift between sender and receiver).
    pub fn place(
        &mut self,
        direction: Direction,
        samples: &[i16],
        source_rate: u32,
        at: Duration,
        out: &mut Vec<i16>,
    ) {
        let own = lane_index(direction);
        let position = self.position(at);
        let mut resampled = RESAMPLED.take();
        resampled.clear();
        let lane = &mut self.lanes[own];
        resample(
            samples,
            source_rate,
            self.rate,
            &mut lane.resample_phase,
            &mut resampled,
        );
        if position > lane.cursor {
            pad(lane, position - lane.cursor);
        }
        lane.resuming = false;
        lane.pending.extend(&resampled);
        lane.cursor += resampled.len() as u64;
        RESAMPLED.set(resampled);
        self.bound_wait(own);
        self.drain(out);
    }

    /// Pads both directions to the same length and appends every remaining frame.
    pub fn finish(&mut self, out: &mut Vec<i16>) {
        let end = self.lanes.iter().map(|l| l.cursor).max().unwrap_or(0);
        for lane in &mut self.lanes {
            pad(lane, end - lane.cursor);
        }
        self.drain(out);
    }

    fn drain(&mut self, out: &mut Vec<i16>) {
        let [left, right] = &mut self.lanes;
        let ready = left.pending.len().min(right.pending.len());
        if ready == 0 {
            return;
        }
        // Interleaved over plain slices, not sample by sample through the
        // queues: this loop is most of the stereo file's cost.
        let start = out.len();
        out.resize(start + 2 * ready, 0);
        let (l, r) = (
            left.pending.make_contiguous(),
            right.pending.make_contiguous(),
        );
        for (frame, (&l, &r)) in out[start..].chunks_exact_mut(2).zip(l.iter().zip(r.iter())) {
            frame[0] = l;
            frame[1] = r;
        }
        left.pending.drain(..ready);
        right.pending.drain(..ready);
        for lane in &mut self.lanes {
            if lane.pending.is_empty() {
                // Most of the time one lane has just been emptied: between two
                // frames of a call it holds nothing, and keeps no room.
                lane.pending = VecDeque::new();
            } else if lane.pending.capacity() > KEEP_PENDING
                && lane.pending.len() <= KEEP_PENDING / 2
            {
                lane.pending.shrink_to(KEEP_PENDING);
            }
        }
    }

    fn position(&self, elapsed: Duration) -> u64 {
        (elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000) as u64
    }
}

fn lane_index(direction: Direction) -> usize {
    match direction {
        Direction::Read => 0,
        Direction::Write => 1,
    }
}

fn pad(lane: &mut Lane, silence: u64) {
    lane.pending
        .resize(lane.pending.len() + silence as usize, 0);
    lane.cursor += silence;
}

/// Nearest-neighbour conversion from `from` Hz to `to` Hz; exact for equal rates
/// and for whole ratios (8 kHz audio in a 16 kHz file, say). `phase` carries the
/// source position across calls.
fn resample(input: &[i16], from: u32, to: u32, phase: &mut u64, out: &mut Vec<i16>) {
    if from == to || from == 0 {
        out.extend_from_slice(input);
        return;
    }
    let (from, to) = (u64::from(from), u64::from(to));
    let first = *phase;
    let last = first + input.len() as u64;
    // Output sample k sits at source position k * from / to.
    let mut k = (first * to).div_ceil(from);
    while k * from / to < last {
        let index = (k * from / to - first) as usize;
        out.push(input[index]);
        k += 1;
    }
    *phase = last;
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn frame(value: i16) -> Vec<i16> {
        vec![value; 160]
    }

    #[test]
    fn steady_streams_interleave_sample_by_sample() {
        let mut aligner = StereoAligner::new(8000);
        let mut out = Vec::new();
        for i in 1..=50u32 {
            aligner.push(Direction::Read, &frame(1), 8000, MS * 20 * i, &mut out);
            aligner.push(Direction::Write, &frame(2), 8000, MS * 20 * i, &mut out);
        }
        aligner.finish(&mut out);
        assert_eq!(out.len(), 2 * 50 * 160);
        assert!(out.chunks(2).all(|f| f == [1, 2]));
    }

    #[test]
    fn a_gap_in_one_direction_becomes_silence_of_its_length() {
        let mut aligner = StereoAligner::new(8000);
        let mut out = Vec::new();
        // 2 s of R; W sends for the first 0.5 s and the last 0.5 s only.
        for i in 1..=100u32 {
            let at = MS * 20 * i;
            aligner.push(Direction::Read, &frame(1), 8000, at, &mut out);
            if i <= 25 || i > 75 {
                aligner.push(Direction::Write, &frame(2), 8000, at, &mut out);
            }
        }
        aligner.finish(&mut out);
        let right: Vec<i16> = out.chunks(2).map(|f| f[1]).collect();
        assert_eq!(right.len(), 100 * 160);
        assert!(right[..25 * 160].iter().all(|&s| s == 2));
        assert!(right[25 * 160..75 * 160].iter().all(|&s| s == 0));
        assert!(right[75 * 160..].iter().all(|&s| s == 2));
    }

    #[test]
    fn a_long_silence_is_bounded_in_memory_and_stays_aligned() {
        let mut aligner = StereoAligner::new(8000);
        let mut out = Vec::new();
        // W is quiet for 5 s, longer than MAX_WAIT, then comes back.
        for i in 1..=400u32 {
            let at = MS * 20 * i;
            aligner.push(Direction::Read, &frame(1), 8000, at, &mut out);
            if i <= 50 || i > 300 {
                aligner.push(Direction::Write, &frame(2), 8000, at, &mut out);
            }
            let held = aligner.lanes.iter().map(|l| l.pending.len()).max().unwrap();
            assert!(held <= 2 * 8000 + 160, "held {held} samples");
        }
        aligner.finish(&mut out);
        let right: Vec<i16> = out.chunks(2).map(|f| f[1]).collect();
        assert_eq!(right.len(), 400 * 160);
        assert!(right[50 * 160..300 * 160].iter().all(|&s| s == 0));
        assert!(right[300 * 160..].iter().all(|&s| s == 2));
    }

    #[test]
    fn lanes_with_nothing_waiting_keep_no_room() {
        let mut aligner = StereoAligner::new(8000);
        let mut out = Vec::new();
        // A quiet call: one frame a second per direction, so a second of
        // silence is padded before each.
        for i in 1..=3u32 {
            aligner.push(Direction::Read, &frame(1), 8000, MS * 1000 * i, &mut out);
            aligner.push(Direction::Write, &frame(2), 8000, MS * 1000 * i, &mut out);
            assert!(aligner.lanes.iter().all(|l| l.pending.capacity() == 0));
        }
        assert_eq!(out.len(), 2 * 3 * 8000);
    }

    #[test]
    fn jitter_below_the_tolerance_is_absorbed() {
        let mut aligner = StereoAligner::new(8000);
        let mut out = Vec::new();
        for i in 1..=50u32 {
            // W frames arrive in bursts of five, 80 ms late.
            let late = if i % 5 == 0 { 0 } else { 80 };
            aligner.push(Direction::Read, &frame(1), 8000, MS * 20 * i, &mut out);
            aligner.push(
                Direction::Write,
                &frame(2),
                8000,
                MS * (20 * i + late),
                &mut out,
            );
        }
        aligner.finish(&mut out);
        assert_eq!(out.len(), 2 * 50 * 160);
        assert!(out.chunks(2).all(|f| f == [1, 2]));
    }

    #[test]
    fn placed_audio_lands_at_its_media_time() {
        let mut aligner = StereoAligner::new(8000);
        let mut out = Vec::new();
        aligner.place(Direction::Read, &frame(1), 8000, Duration::ZERO, &mut out);
        aligner.place(Direction::Write, &frame(2), 8000, MS * 10, &mut out);
        // R loses a packet: 20 ms of silence before the next.
        aligner.place(Direction::Read, &frame(3), 8000, MS * 40, &mut out);
        aligner.finish(&mut out);
        let left: Vec<i16> = out.chunks(2).map(|f| f[0]).collect();
        let right: Vec<i16> = out.chunks(2).map(|f| f[1]).collect();
        assert_eq!(left.len(), 480);
        assert!(left[..160].iter().all(|&s| s == 1) && left[160..320].iter().all(|&s| s == 0));
        assert!(left[320..].iter().all(|&s| s == 3));
        assert!(right[..80].iter().all(|&s| s == 0) && right[80..240].iter().all(|&s| s == 2));
    }

    #[test]
    fn other_rates_are_resampled_to_the_file_rate() {
        let mut out = Vec::new();
        let mut phase = 0;
        resample(&[1, 2, 3, 4], 8000, 16000, &mut phase, &mut out);
        resample(&[5, 6], 8000, 16000, &mut phase, &mut out);
        assert_eq!(out, [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]);
        out.clear();
        phase = 0;
        resample(&[1, 2, 3], 16000, 8000, &mut phase, &mut out);
        resample(&[4, 5, 6], 16000, 8000, &mut phase, &mut out);
        assert_eq!(out, [1, 3, 5]);
    }
}
