//! RTP reordering and timing for one direction of a call (sans-IO).
//!
//! [`JitterBuffer`] puts packets back in sequence order, drops duplicates and
//! stragglers, and gives up on a missing packet once `depth` later ones wait
//! behind it. [`Timeline`] turns RTP timestamps into media time since the call
//! started, so a lost packet, or a silence the sender suppressed, becomes
//! silence of its length and both directions share one clock; SSRC changes
//! and timestamp jumps re-anchor it instead of inserting hours of silence.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use rst_proto::RtpPacket;
use serde::Serialize;

/// A packet waiting in, or released from, the buffer: its payload owned
/// while it waits, borrowed from the datagram when it goes straight through
/// ([`JitterBuffer::push_in_order`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held<P = Vec<u8>> {
    pub sequence: u64,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload_type: u8,
    pub payload: P,
    /// Packets given up on just before this one: where the loss is.
    pub lost_before: u64,
}

/// Per-direction RTP figures for the call's record.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RtpStats {
    /// Packets the sequence numbers say were sent.
    pub expected: u64,
    pub received: u64,
    /// Never arrived, or arrived after their place was given up on (`late`).
    pub lost: u64,
    /// Arrived after the buffer had moved past them; dropped.
    pub late: u64,
    pub duplicates: u64,
    /// RFC 3550 interarrival jitter, in milliseconds.
    pub jitter_ms: f64,
    pub ssrc_changes: u64,
    pub timestamp_jumps: u64,
}

#[derive(Debug)]
pub struct JitterBuffer {
    depth: usize,
    held: BTreeMap<u64, Held>,
    /// Released because the SSRC changed, waiting to be popped.
    ready: VecDeque<Held>,
    ssrc: Option<u32>,
    /// Next sequence number to release; `None` before the first packet.
    next: Option<u64>,
    /// First and highest extended sequence number of the current SSRC.
    first: u64,
    highest: u64,
    /// Expected packets of earlier SSRCs.
    expected_before: u64,
    /// The last sequence numbers released (of this SSRC), to tell a repeat
    /// from a late packet.
    recently_released: VecDeque<u64>,
    /// Previous packet's arrival and timestamp, for the jitter estimate.
    last_transit: Option<f64>,
    last_timestamp: Option<u32>,
    jitter: f64,
    jitter_clock: u32,
    pub stats: RtpStats,
}

const RECENT: usize = 64;

impl JitterBuffer {
    /// `depth`: packets held behind a hole before it is declared lost.
    pub fn new(depth: usize) -> Self {
        JitterBuffer {
            depth,
            held: BTreeMap::new(),
            ready: VecDeque::new(),
            ssrc: None,
            next: None,
            first: 0,
            highest: 0,
            expected_before: 0,
            recently_released: VecDeque::with_capacity(RECENT),
            last_transit: None,
            last_timestamp: None,
            jitter: 0.0,
            jitter_clock: 8000,
            stats: RtpStats::default(),
        }
    }

    /// Takes a packet that arrived `arrival` after the call started; `clock` is
    /// its payload type's RTP clock rate.
    pub fn push(&mut self, packet: &RtpPacket<'_>, arrival: Duration, clock: u32) {
        if self.ssrc.is_some_and(|ssrc| ssrc != packet.ssrc) {
            self.stats.ssrc_changes += 1;
            self.expected_before += self.highest - self.first + 1;
            self.drain_into_ready();
            self.next = None;
            self.last_transit = None;
            self.recently_released.clear();
        }
        let sequence = match self.next {
            None if self.held.is_empty() => {
                self.ssrc = Some(packet.ssrc);
                self.first = u64::from(packet.sequence) + (1 << 16);
                self.highest = self.first;
                self.first
            }
            _ => extend(self.highest, packet.sequence),
        };
        if self.next.is_some_and(|next| sequence < next) && !self.recently_released.is_empty() {
            if self.recently_released.contains(&sequence) {
                self.stats.duplicates += 1;
            } else {
                self.stats.late += 1;
            }
            return;
        }
        if self.held.contains_key(&sequence) {
            self.stats.duplicates += 1;
            return;
        }
        self.stats.received += 1;
        self.first = self.first.min(sequence);
        self.highest = self.highest.max(sequence);
        self.next = Some(self.next.map_or(sequence, |next| next.min(sequence)));
        self.update_jitter(packet.timestamp, arrival, clock);
        self.held.insert(
            sequence,
            Held {
                sequence,
                timestamp: packet.timestamp,
                ssrc: packet.ssrc,
                payload_type: packet.payload_type,
                payload: packet.payload.to_vec(),
                lost_before: 0,
            },
        );
        self.update_expected();
    }

    /// The in-order fast path. When `packet` is the very one due next and
    /// nothing waits (a healthy stream, nearly every packet), it is counted
    /// exactly as [`push`](Self::push) then [`pop`](Self::pop) would, and
    /// handed straight back with its payload borrowed: no copy, no map.
    /// Otherwise it is pushed, `None` comes back, and `pop` releases what can go.
    pub fn push_in_order<'a>(
        &mut self,
        packet: &RtpPacket<'a>,
        arrival: Duration,
        clock: u32,
    ) -> Option<Held<&'a [u8]>> {
        let due = self.next.filter(|_| {
            self.held.is_empty() && self.ready.is_empty() && self.ssrc == Some(packet.ssrc)
        });
        match due {
            Some(next) if extend(self.highest, packet.sequence) == next => {
                self.stats.received += 1;
                self.highest = self.highest.max(next);
                self.update_jitter(packet.timestamp, arrival, clock);
                self.update_expected();
                self.released(next);
                Some(Held {
                    sequence: next,
                    timestamp: packet.timestamp,
                    ssrc: packet.ssrc,
                    payload_type: packet.payload_type,
                    payload: packet.payload,
                    lost_before: 0,
                })
            }
            _ => {
                self.push(packet, arrival, clock);
                None
            }
        }
    }

    /// The next packet in order, if it can be released now.
    pub fn pop(&mut self) -> Option<Held> {
        if let Some(held) = self.ready.pop_front() {
            return Some(held);
        }
        let next = self.next?;
        if let Some(held) = self.held.remove(&next) {
            return Some(self.release(held));
        }
        if self.held.len() > self.depth {
            let (&sequence, _) = self.held.first_key_value()?;
            self.stats.lost += sequence - next;
            let mut held = self.held.remove(&sequence)?;
            held.lost_before = sequence - next;
            return Some(self.release(held));
        }
        None
    }

    /// Releases everything still held, in order (the call is ending).
    pub fn finish(&mut self) -> impl Iterator<Item = Held> + '_ {
        self.drain_into_ready();
        self.ready.drain(..)
    }

    fn release(&mut self, held: Held) -> Held {
        self.released(held.sequence);
        held
    }

    fn released(&mut self, sequence: u64) {
        self.next = Some(sequence + 1);
        if self.recently_released.len() == RECENT {
            self.recently_released.pop_front();
        }
        self.recently_released.push_back(sequence);
    }

    fn drain_into_ready(&mut self) {
        while let Some((sequence, mut held)) = self.held.pop_first() {
            if let Some(next) = self.next {
                held.lost_before = sequence.saturating_sub(next);
                self.stats.lost += held.lost_before;
            }
            self.next = Some(sequence + 1);
            self.ready.push_back(held);
        }
    }

    fn update_expected(&mut self) {
        self.stats.expected = self.expected_before + (self.highest - self.first + 1);
    }

    /// RFC 3550 section 6.4.1: J += (|D| - J) / 16, in timestamp units.
    fn update_jitter(&mut self, timestamp: u32, arrival: Duration, clock: u32) {
        // Packets that share a timestamp (an RFC 4733 event's updates, a frame
        // split in two) say nothing about network jitter.
        if self.last_timestamp == Some(timestamp) {
            return;
        }
        self.last_timestamp = Some(timestamp);
        self.jitter_clock = clock.max(1);
        let transit = arrival.as_secs_f64() * f64::from(self.jitter_clock) - f64::from(timestamp);
        if let Some(last) = self.last_transit {
            let mut d = (transit - last).abs();
            // A timestamp wrap between the two packets is not jitter.
            if d > f64::from(u32::MAX / 2) {
                d = (d - f64::from(u32::MAX) - 1.0).abs();
            }
            self.jitter += (d - self.jitter) / 16.0;
            self.stats.jitter_ms = self.jitter * 1000.0 / f64::from(self.jitter_clock);
        }
        self.last_transit = Some(transit);
    }
}

/// The 64-bit sequence number closest to `highest` whose low 16 bits are `sequence`.
fn extend(highest: u64, sequence: u16) -> u64 {
    let candidate = (highest & !0xFFFF) | u64::from(sequence);
    [
        candidate.wrapping_sub(1 << 16),
        candidate,
        candidate + (1 << 16),
    ]
    .into_iter()
    .filter(|&c| c >= 1 << 16)
    .min_by_key(|&c| c.abs_diff(highest))
    .unwrap_or(candidate)
}

/// How far a timestamp may move past what the sequence numbers explain
/// before the time it took is checked: one second per packet.
const MAX_TIMESTAMP_STEP_PER_PACKET: Duration = Duration::from_secs(1);

/// How far a longer step (a silence the sender suppressed: RFC 3551 section
/// 4.1 lets it send nothing) may differ from the time the packet took to
/// come before it is a jump instead: network jitter, plus a tenth of it.
fn silence_tolerance(silence: f64) -> f64 {
    0.25 + silence / 10.0
}

/// Media time of one direction's RTP timestamps.
#[derive(Debug, Default)]
pub struct Timeline {
    anchor: Option<Anchor>,
    /// Where the first packet's clock stands at media time zero, when the
    /// sender said (a pool's continuation: `ts-r`/`ts-w` in its INV).
    preset: Option<u32>,
}

#[derive(Debug)]
struct Anchor {
    ssrc: u32,
    clock: u32,
    /// Extended timestamp and media time of the anchor packet.
    timestamp: i64,
    at: Duration,
    last_timestamp: i64,
    last_sequence: u64,
    last_arrival: Duration,
}

impl Timeline {
    /// A timeline whose media time zero is RTP timestamp `timestamp`, in
    /// whichever SSRC comes first: the part of a call a pool's sender moved
    /// here, placed by its timestamps from the part's start.
    pub fn starting_at(timestamp: u32) -> Timeline {
        Timeline {
            anchor: None,
            preset: Some(timestamp),
        }
    }

    /// Media time of `packet`. `arrival` anchors a new stream; `end_of_audio` is
    /// where this direction's audio so far ends, where a jump re-anchors.
    /// Returns the time and whether the stream was re-anchored by a jump.
    ///
    /// A step of the timestamps longer than the packets in between explain
    /// is a silence when the packet took about as long to come, and a jump
    /// otherwise (a replay faster than real time squeezes its silences).
    pub fn place<P>(
        &mut self,
        packet: &Held<P>,
        clock: u32,
        arrival: Duration,
        end_of_audio: Duration,
    ) -> (Duration, bool) {
        let clock = clock.max(1);
        if self.anchor.is_none() {
            if let Some(timestamp) = self.preset.take() {
                self.anchor = Some(Anchor {
                    ssrc: packet.ssrc,
                    clock,
                    timestamp: i64::from(timestamp),
                    at: Duration::ZERO,
                    last_timestamp: i64::from(timestamp),
                    last_sequence: packet.sequence.saturating_sub(1),
                    last_arrival: Duration::ZERO,
                });
            }
        }
        let anchor = match &mut self.anchor {
            Some(anchor) if anchor.ssrc == packet.ssrc && anchor.clock == clock => anchor,
            _ => {
                return (
                    self.anchor_at(packet, clock, arrival, arrival.max(end_of_audio)),
                    false,
                );
            }
        };
        let timestamp = extend_timestamp(anchor.last_timestamp, packet.timestamp);
        let packets = packet.sequence.saturating_sub(anchor.last_sequence).max(1);
        let step = timestamp - anchor.last_timestamp;
        let max_step =
            MAX_TIMESTAMP_STEP_PER_PACKET.as_secs_f64() * f64::from(clock) * packets as f64;
        if step < 0 || step as f64 > max_step {
            let silence = step as f64 / f64::from(clock);
            let waited = arrival.saturating_sub(anchor.last_arrival).as_secs_f64();
            if step < 0 || (silence - waited).abs() > silence_tolerance(silence) {
                return (self.anchor_at(packet, clock, arrival, end_of_audio), true);
            }
        }
        anchor.last_timestamp = timestamp;
        anchor.last_sequence = packet.sequence;
        anchor.last_arrival = arrival;
        let offset = (timestamp - anchor.timestamp) as f64 / f64::from(clock);
        (anchor.at + Duration::from_secs_f64(offset.max(0.0)), false)
    }

    fn anchor_at<P>(
        &mut self,
        packet: &Held<P>,
        clock: u32,
        arrival: Duration,
        at: Duration,
    ) -> Duration {
        let timestamp = i64::from(packet.timestamp);
        self.anchor = Some(Anchor {
            ssrc: packet.ssrc,
            clock,
            timestamp,
            at,
            last_timestamp: timestamp,
            last_sequence: packet.sequence,
            last_arrival: arrival,
        });
        at
    }
}

fn extend_timestamp(last: i64, timestamp: u32) -> i64 {
    let candidate = (last & !0xFFFF_FFFF) | i64::from(timestamp);
    [candidate - (1 << 32), candidate, candidate + (1 << 32)]
        .into_iter()
        .min_by_key(|&c| c.abs_diff(last))
        .unwrap_or(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(sequence: u16, timestamp: u32, ssrc: u32) -> (Vec<u8>, u16, u32, u32) {
        (vec![sequence as u8], sequence, timestamp, ssrc)
    }

    fn push(
        buffer: &mut JitterBuffer,
        (payload, sequence, timestamp, ssrc): &(Vec<u8>, u16, u32, u32),
    ) -> Vec<u16> {
        let rtp = RtpPacket {
            marker: false,
            payload_type: 0,
            sequence: *sequence,
            timestamp: *timestamp,
            ssrc: *ssrc,
            payload,
        };
        buffer.push(&rtp, Duration::from_millis(u64::from(*timestamp) / 8), 8000);
        std::iter::from_fn(|| buffer.pop())
            .map(|h| h.sequence as u16)
            .collect()
    }

    #[test]
    fn reorders_drops_duplicates_and_counts_loss() {
        let mut buffer = JitterBuffer::new(3);
        let mut released = Vec::new();
        for seq in [10u16, 12, 11, 11, 13, 15, 16, 17, 18, 14] {
            released.extend(push(&mut buffer, &packet(seq, u32::from(seq) * 160, 1)));
        }
        released.extend(buffer.finish().map(|h| h.sequence as u16));
        // 14 came after 15..18 had pushed the buffer past it: late, and lost.
        assert_eq!(released, [10, 11, 12, 13, 15, 16, 17, 18]);
        let stats = &buffer.stats;
        assert_eq!(
            (
                stats.expected,
                stats.received,
                stats.lost,
                stats.late,
                stats.duplicates
            ),
            (9, 8, 1, 1, 1)
        );
    }

    #[test]
    fn a_released_packet_says_how_many_were_given_up_before_it() {
        let mut buffer = JitterBuffer::new(2);
        let mut released = Vec::new();
        for seq in [1u16, 2, 5, 6, 7, 9] {
            let (payload, sequence, timestamp, ssrc) = packet(seq, u32::from(seq) * 160, 1);
            let rtp = RtpPacket {
                marker: false,
                payload_type: 0,
                sequence,
                timestamp,
                ssrc,
                payload: &payload,
            };
            buffer.push(&rtp, Duration::from_millis(u64::from(seq) * 20), 8000);
            released.extend(std::iter::from_fn(|| buffer.pop()));
        }
        released.extend(buffer.finish());
        let holes: Vec<(u16, u64)> = released
            .iter()
            .map(|h| (h.sequence as u16, h.lost_before))
            .collect();
        // 3 and 4 given up on when 7 arrived, 8 when the call ended.
        assert_eq!(holes, [(1, 0), (2, 0), (5, 2), (6, 0), (7, 0), (9, 1)]);
        assert_eq!(buffer.stats.lost, 3);
    }

    #[test]
    fn the_in_order_fast_path_releases_and_counts_as_push_and_pop() {
        let arrivals = [
            10u16, 11, 12, 14, 13, 13, 15, 20, 21, 22, 23, 24, 16, 25, 65535, 0,
        ];
        let (mut slow, mut fast) = (JitterBuffer::new(3), JitterBuffer::new(3));
        let (mut slow_out, mut fast_out) = (Vec::new(), Vec::new());
        for (i, &seq) in arrivals.iter().enumerate() {
            let ssrc = if i < 14 { 1 } else { 2 };
            let payload = [seq as u8];
            let rtp = RtpPacket {
                marker: false,
                payload_type: 0,
                sequence: seq,
                timestamp: u32::from(seq) * 160,
                ssrc,
                payload: &payload,
            };
            let arrival = Duration::from_millis(20 * i as u64);
            slow.push(&rtp, arrival, 8000);
            slow_out.extend(std::iter::from_fn(|| slow.pop()).map(|h| (h.sequence, h.payload)));
            if let Some(held) = fast.push_in_order(&rtp, arrival, 8000) {
                fast_out.push((held.sequence, held.payload.to_vec()));
            }
            fast_out.extend(std::iter::from_fn(|| fast.pop()).map(|h| (h.sequence, h.payload)));
        }
        slow_out.extend(slow.finish().map(|h| (h.sequence, h.payload)));
        fast_out.extend(fast.finish().map(|h| (h.sequence, h.payload)));
        assert_eq!(fast_out, slow_out);
        assert_eq!(fast.stats, slow.stats);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut buffer = JitterBuffer::new(3);
        let mut released = Vec::new();
        for seq in [65534u16, 65535, 1, 0, 2] {
            released.extend(push(&mut buffer, &packet(seq, 0, 1)));
        }
        released.extend(buffer.finish().map(|h| h.sequence as u16));
        assert_eq!(released, [65534, 65535, 0, 1, 2]);
        assert_eq!(buffer.stats.lost, 0);
        assert_eq!(buffer.stats.expected, 5);
    }

    #[test]
    fn an_ssrc_change_flushes_and_starts_a_new_stream() {
        let mut buffer = JitterBuffer::new(3);
        let mut released = Vec::new();
        for (seq, ssrc) in [(1u16, 7u32), (3, 7), (900, 8), (901, 8)] {
            released.extend(push(&mut buffer, &packet(seq, 0, ssrc)));
        }
        released.extend(buffer.finish().map(|h| h.sequence as u16));
        assert_eq!(released, [1, 3, 900, 901]);
        assert_eq!(buffer.stats.ssrc_changes, 1);
        assert_eq!(buffer.stats.expected, 5);
        assert_eq!(buffer.stats.lost, 1);
    }

    fn held(sequence: u64, timestamp: u32, ssrc: u32) -> Held {
        Held {
            sequence,
            timestamp,
            ssrc,
            payload_type: 0,
            payload: Vec::new(),
            lost_before: 0,
        }
    }

    #[test]
    fn the_timeline_follows_timestamps_and_reanchors_on_jumps() {
        let ms = Duration::from_millis;
        let mut timeline = Timeline::default();
        assert_eq!(
            timeline.place(&held(1, 1000, 1), 8000, ms(40), ms(0)),
            (ms(40), false)
        );
        // A lost packet: the timestamp says where the next one goes.
        assert_eq!(
            timeline.place(&held(3, 1320, 1), 8000, ms(85), ms(60)),
            (ms(80), false)
        );
        // A jump of an hour: continue where the audio ends.
        assert_eq!(
            timeline.place(&held(4, 1320 + 8000 * 3600, 1), 8000, ms(100), ms(100)),
            (ms(100), true)
        );
        assert_eq!(
            timeline.place(&held(5, 1480 + 8000 * 3600, 1), 8000, ms(120), ms(120)),
            (ms(120), false)
        );
        // A new SSRC anchors at its arrival (or the end of the audio, if later).
        assert_eq!(
            timeline.place(&held(9, 5, 2), 8000, ms(150), ms(140)),
            (ms(150), false)
        );
        // A silence the sender suppressed: 3 s of timestamps in one packet's
        // step, which took about as long to come, is kept.
        assert_eq!(
            timeline.place(&held(10, 5 + 8000 * 3, 2), 8000, ms(3200), ms(170)),
            (ms(3150), false)
        );
        // The same step coming at once (a replay faster than real time) is a
        // jump: the audio goes on where it ends.
        assert_eq!(
            timeline.place(&held(11, 5 + 8000 * 6, 2), 8000, ms(3220), ms(3170)),
            (ms(3170), true)
        );
        // Timestamps wrap.
        let mut timeline = Timeline::default();
        timeline.place(&held(1, u32::MAX - 79, 1), 8000, ms(0), ms(0));
        assert_eq!(
            timeline.place(&held(2, 80, 1), 8000, ms(20), ms(20)).0,
            ms(20)
        );
    }

    #[test]
    fn a_continued_call_is_placed_by_its_timestamps_from_the_parts_start() {
        let ms = Duration::from_millis;
        // The sender moved the call 2 s into a 3 s silence: the packet after
        // it belongs 1 s into the part, wherever it arrives (here at once,
        // held until the receiver answered).
        let mut timeline = Timeline::starting_at(u32::MAX - 3999);
        assert_eq!(
            timeline.place(&held(500, 4000, 7), 8000, ms(1005), ms(0)),
            (ms(1000), false)
        );
        assert_eq!(
            timeline.place(&held(501, 4160, 7), 8000, ms(1010), ms(1020)),
            (ms(1020), false)
        );
        // In speech, the next packet is about at the part's start.
        let mut timeline = Timeline::starting_at(8000);
        assert_eq!(
            timeline.place(&held(9, 8160, 7), 8000, ms(3), ms(0)),
            (ms(20), false)
        );
        // A packet from before the part's start goes at its start.
        let mut timeline = Timeline::starting_at(8000);
        assert_eq!(
            timeline.place(&held(9, 7840, 7), 8000, ms(3), ms(0)),
            (ms(0), true)
        );
    }

    #[test]
    fn jitter_follows_rfc_3550() {
        let mut buffer = JitterBuffer::new(3);
        // Every packet 20 ms apart in timestamp, arrivals alternating 10 ms early and late.
        for i in 0..200u32 {
            let arrival =
                Duration::from_millis(u64::from(i * 20 + if i % 2 == 0 { 0 } else { 10 }));
            let rtp = RtpPacket {
                marker: false,
                payload_type: 0,
                sequence: i as u16,
                timestamp: i * 160,
                ssrc: 1,
                payload: &[],
            };
            buffer.push(&rtp, arrival, 8000);
            while buffer.pop().is_some() {}
        }
        // |D| is 10 ms every packet, so J converges to 10 ms.
        assert!(
            (buffer.stats.jitter_ms - 10.0).abs() < 0.1,
            "{}",
            buffer.stats.jitter_ms
        );
    }
}
