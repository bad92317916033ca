//! Audio back into the call: what the receiver sends (PLAY, CLR, MARK) is
//! played into what FreeSWITCH writes to the channel, the caller hears it.
//!
//! Two sides share one call's playback, with no lock between them:
//! * [`PlayFeed`], on the sender thread: puts PLAY audio (in sequence order,
//!   a gap as silence) and marks into a bounded single-producer ring
//!   (`rtrb`, a real-time ring made for audio threads), raises a clear, and
//!   turns what the media thread reports into MARK datagrams and events;
//! * [`PlayTap`], on FreeSWITCH's media thread (the `rst_play` bug's
//!   WRITE_REPLACE callback): takes at most one frame's worth of audio off
//!   the ring into the frame being written, mixed or replacing. It never
//!   blocks, never allocates; an underrun leaves the channel's own audio.
//!
//! A clear is a generation counter the media thread checks each frame: it
//! takes effect on the next frame written.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use rst_codec::Resampler;
use rst_proto::{PayloadType, Play};

/// Most samples in one PLAY: 20 ms at 48 kHz.
pub const MAX_PLAY_SAMPLES: usize = 960;
/// PLAY frames the ring holds: the receiver sends a few frames ahead; this
/// absorbs its jitter with room to spare.
const RING_FRAMES: usize = 32;
/// Notices the media thread can leave before the sender thread reads them.
const NOTICES: usize = 64;
/// A gap in PLAY sequence numbers is filled with at most this many frames of silence.
const MAX_GAP_FRAMES: u32 = 10;

/// How played audio meets what the channel would have heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayMode {
    /// Added to it, saturating (no wrap-around clicks).
    Mix,
    /// Instead of it.
    Replace,
}

/// A call's playback before anything came back: no bug on the channel yet.
/// The `rst_play` bug (WRITE_REPLACE) costs FreeSWITCH a copy of every frame
/// written, in and out of the bug, for every call; most calls never hear
/// anything back, so the sender thread attaches it at the first PLAY, CLR or
/// MARK of the call.
#[derive(Debug, Clone)]
pub struct PlayLater {
    pub mode: PlayMode,
    /// The rate of the call's 16-bit linear PLAY audio (the rate its INV declared).
    pub rate: u32,
    /// Set when the call's stream stops (its recording bug's CLOSE), before
    /// the playback bug is removed: a bug the sender thread attached after
    /// that is removed again by the sender thread itself.
    pub stopped: Arc<AtomicBool>,
}

/// One slot of the ring.
#[derive(Debug)]
enum Item {
    Audio {
        len: u16,
        samples: Box<[i16; MAX_PLAY_SAMPLES]>,
    },
    Mark(u32),
}

/// What the media thread tells the sender thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Notice {
    Started,
    /// The mark's audio was played, or a clear dropped it.
    Played(u32),
    MarkCleared(u32),
    /// Playing stopped: nothing more to play, or a clear.
    Drained,
    Cleared,
}

/// What the sender thread makes of the notices: MARK datagrams and events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlayEvent {
    Started,
    /// Why: `drained`, `cleared` or `hangup`.
    Stopped(&'static str),
    Mark {
        name: String,
        cleared: bool,
    },
}

/// Counters of the module's playback, for `rst_status`.
#[derive(Debug, Default)]
pub struct PlayCounters {
    pub frames_played: AtomicU64,
    pub frames_late: AtomicU64,
    pub gap_frames: AtomicU64,
    pub frames_dropped_full: AtomicU64,
    pub frames_unsupported: AtomicU64,
    pub clears: AtomicU64,
    pub marks: AtomicU64,
    /// PLAY, CLR or MARK from another address than the call's receiver: ignored.
    pub foreign: AtomicU64,
    /// Calls whose playback bug FreeSWITCH refused (another module's
    /// WRITE_REPLACE bug on the channel, say): their audio back is dropped.
    pub bugs_refused: AtomicU64,
}

#[derive(Debug, Default)]
struct Shared {
    clear_generation: AtomicU64,
    /// The rate of the frames the channel writes, as the media thread last
    /// saw it (0 until the first frame).
    write_rate: AtomicU32,
}

/// Makes the two sides of one call's playback. `call_rate` is the rate of
/// the call's 16-bit linear PLAY audio (the rate its INV declared).
pub fn channel(mode: PlayMode, call_rate: u32, counters: Arc<PlayCounters>) -> (PlayFeed, PlayTap) {
    let (items, items_out) = rtrb::RingBuffer::new(RING_FRAMES);
    let (notices_in, notices) = rtrb::RingBuffer::new(NOTICES);
    let shared = Arc::new(Shared::default());
    // The media thread swaps spent buffers back instead of freeing them.
    let (spares_in, spares) = rtrb::RingBuffer::new(RING_FRAMES + 2);
    let feed = PlayFeed {
        items,
        notices,
        spares,
        shared: shared.clone(),
        call_rate,
        resampler: None,
        scratch: Vec::with_capacity(MAX_PLAY_SAMPLES),
        resampled: Vec::with_capacity(2 * MAX_PLAY_SAMPLES),
        expected: None,
        marks: HashMap::new(),
        next_mark: 0,
        counters,
        playing: false,
    };
    let tap = PlayTap {
        items: items_out,
        notices: notices_in,
        spares: spares_in,
        counters: feed.counters.clone(),
        shared,
        generation: 0,
        offset: 0,
        playing: false,
        mode,
    };
    (feed, tap)
}

/// The sender thread's side of a call's playback.
#[derive(Debug)]
pub struct PlayFeed {
    items: rtrb::Producer<Item>,
    notices: rtrb::Consumer<Notice>,
    spares: rtrb::Consumer<Box<[i16; MAX_PLAY_SAMPLES]>>,
    shared: Arc<Shared>,
    call_rate: u32,
    /// From the PLAY audio's rate to the rate the channel writes at, while
    /// they differ (µ-law PLAY on a wideband call, or a channel whose write
    /// codec runs at another rate than its read codec).
    resampler: Option<Resampler>,
    /// One PLAY's samples, decoded.
    scratch: Vec<i16>,
    /// Resampled audio not yet a whole frame.
    resampled: Vec<i16>,
    /// The next PLAY sequence number expected.
    expected: Option<u32>,
    marks: HashMap<u32, String>,
    next_mark: u32,
    counters: Arc<PlayCounters>,
    /// The media thread is playing (since its last Started).
    playing: bool,
}

impl PlayFeed {
    /// One PLAY from the receiver: µ-law at 8 kHz (PT 00) or 16-bit linear at
    /// the call's rate (PT 10), at most 20 ms at 48 kHz.
    pub fn play(&mut self, play: &Play<'_>) {
        let (rate, samples) = match play.payload_type {
            PayloadType::PCMU => (8000, play.payload.len()),
            PayloadType::L16 if play.payload.len() % 2 == 0 => {
                (self.call_rate, play.payload.len() / 2)
            }
            _ => (0, 0),
        };
        if samples == 0 || samples > MAX_PLAY_SAMPLES {
            self.counters.frames_unsupported.fetch_add(1, Relaxed);
            return;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        if let Some(expected) = self.expected {
            let ahead = play.sequence.wrapping_sub(expected);
            if ahead > u32::MAX / 2 {
                // Behind what was already played: late or repeated.
                self.counters.frames_late.fetch_add(1, Relaxed);
                self.scratch = scratch;
                return;
            }
            // A gap (PLAY lost): silence where it was, so what follows stays in time.
            scratch.clear();
            scratch.resize(samples, 0);
            for _ in 0..ahead.min(MAX_GAP_FRAMES) {
                self.counters.gap_frames.fetch_add(1, Relaxed);
                self.audio(rate, &scratch);
            }
        }
        self.expected = Some(play.sequence.wrapping_add(1));
        scratch.clear();
        if play.payload_type == PayloadType::PCMU {
            scratch.extend(play.payload.iter().map(|&b| rst_codec::ulaw_to_linear(b)));
        } else {
            scratch.extend(
                play.payload
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]])),
            );
        }
        self.audio(rate, &scratch);
        self.scratch = scratch;
    }

    /// Audio at `rate` into the ring, at the rate the channel writes at.
    fn audio(&mut self, rate: u32, samples: &[i16]) {
        let to = match self.shared.write_rate.load(Relaxed) {
            0 => self.call_rate, // Nothing written yet: the call's rate.
            written => written,
        };
        let same = self
            .resampler
            .as_ref()
            .is_some_and(|r| r.from_rate() == rate && r.to_rate() == to);
        if !same {
            self.flush();
            if rate != to {
                self.resampler = Some(Resampler::new(rate, to));
            }
        }
        let Some(resampler) = &mut self.resampler else {
            self.push(samples);
            return;
        };
        let mut resampled = std::mem::take(&mut self.resampled);
        resampler.push(samples, &mut resampled);
        // Whole 20 ms frames at the write rate; the rest waits for more.
        let frame = (to as usize / 50).clamp(1, MAX_PLAY_SAMPLES);
        let whole = resampled.len() / frame * frame;
        for chunk in resampled[..whole].chunks(frame) {
            self.push(chunk);
        }
        resampled.drain(..whole);
        self.resampled = resampled;
    }

    /// What the resampler still holds goes into the ring: at a mark (so the
    /// mark follows all of its audio) and when the rates change.
    fn flush(&mut self) {
        let Some(mut resampler) = self.resampler.take() else {
            return;
        };
        let mut resampled = std::mem::take(&mut self.resampled);
        resampler.finish(&mut resampled);
        for chunk in resampled.chunks(MAX_PLAY_SAMPLES) {
            self.push(chunk);
        }
        resampled.clear();
        self.resampled = resampled;
    }

    /// One item of audio (at most [`MAX_PLAY_SAMPLES`]) into the ring, in a
    /// buffer the media thread gave back when there is one.
    fn push(&mut self, samples: &[i16]) {
        if self.items.is_full() {
            self.counters.frames_dropped_full.fetch_add(1, Relaxed);
            return;
        }
        let mut buffer = self
            .spares
            .pop()
            .unwrap_or_else(|_| Box::new([0; MAX_PLAY_SAMPLES]));
        let len = samples.len().min(MAX_PLAY_SAMPLES);
        buffer[..len].copy_from_slice(&samples[..len]);
        let _ = self.items.push(Item::Audio {
            len: len as u16,
            samples: buffer,
        });
    }

    /// A CLR: everything not yet played goes, on the next frame written.
    pub fn clear(&mut self) {
        self.counters.clears.fetch_add(1, Relaxed);
        self.resampler = None;
        self.resampled.clear();
        self.shared.clear_generation.fetch_add(1, Relaxed);
        // What follows a clear starts a new sequence run.
        self.expected = None;
    }

    /// A MARK: reported once the audio before it has been played. When the
    /// ring is full it cannot wait in it: it is reported cleared at once.
    pub fn mark(&mut self, name: String, events: &mut impl FnMut(PlayEvent)) {
        self.counters.marks.fetch_add(1, Relaxed);
        self.flush();
        let id = self.next_mark;
        self.next_mark = self.next_mark.wrapping_add(1);
        if self.items.push(Item::Mark(id)).is_err() {
            events(PlayEvent::Mark {
                name,
                cleared: true,
            });
            return;
        }
        self.marks.insert(id, name);
    }

    /// Turns what the media thread reported into events, in order.
    pub fn poll(&mut self, events: &mut impl FnMut(PlayEvent)) {
        while let Ok(notice) = self.notices.pop() {
            match notice {
                Notice::Started => {
                    self.playing = true;
                    events(PlayEvent::Started)
                }
                Notice::Drained => {
                    self.playing = false;
                    events(PlayEvent::Stopped("drained"))
                }
                Notice::Cleared => {
                    self.playing = false;
                    events(PlayEvent::Stopped("cleared"))
                }
                Notice::Played(id) | Notice::MarkCleared(id) => {
                    if let Some(name) = self.marks.remove(&id) {
                        events(PlayEvent::Mark {
                            name,
                            cleared: matches!(notice, Notice::MarkCleared(_)),
                        });
                    }
                }
            }
        }
    }

    /// Nothing in flight: no audio or mark waiting, no notice unread, not
    /// playing. (In this order: the media thread leaves its notice before it
    /// takes the item, so an empty ring seen here means its notice is seen.)
    pub fn is_idle(&self) -> bool {
        self.items.slots() == self.items.buffer().capacity()
            && self.notices.is_empty()
            && !self.playing
            && self.marks.is_empty()
    }

    /// The call is over: playing stops, marks never played are reported cleared.
    pub fn finish(&mut self, events: &mut impl FnMut(PlayEvent)) {
        self.poll(events);
        if std::mem::take(&mut self.playing) {
            events(PlayEvent::Stopped("hangup"));
        }
        let mut left: Vec<(u32, String)> = self.marks.drain().collect();
        left.sort_by_key(|(id, _)| *id);
        for (_, name) in left {
            events(PlayEvent::Mark {
                name,
                cleared: true,
            });
        }
    }
}

/// The media thread's side of a call's playback.
#[derive(Debug)]
pub struct PlayTap {
    items: rtrb::Consumer<Item>,
    notices: rtrb::Producer<Notice>,
    spares: rtrb::Producer<Box<[i16; MAX_PLAY_SAMPLES]>>,
    counters: Arc<PlayCounters>,
    shared: Arc<Shared>,
    generation: u64,
    /// Samples of the front item already played.
    offset: usize,
    playing: bool,
    mode: PlayMode,
}

impl PlayTap {
    /// Plays into `frame`, the linear samples at `rate` FreeSWITCH is about
    /// to write to the channel. Returns whether anything was played into it.
    pub fn fill(&mut self, frame: &mut [i16], rate: u32) -> bool {
        if rate != 0 {
            self.shared.write_rate.store(rate, Relaxed);
        }
        let generation = self.shared.clear_generation.load(Relaxed);
        if generation != self.generation {
            self.generation = generation;
            while let Ok(item) = self.items.pop() {
                self.retire(item, true);
            }
            self.offset = 0;
            if self.playing {
                self.playing = false;
                let _ = self.notices.push(Notice::Cleared);
            }
        }
        let mut filled = 0;
        while let Ok(front) = self.items.peek() {
            match front {
                Item::Mark(_) => {
                    if let Ok(item) = self.items.pop() {
                        self.retire(item, false);
                    }
                }
                Item::Audio { len, samples } => {
                    if filled == frame.len() {
                        break;
                    }
                    if !self.playing {
                        self.playing = true;
                        let _ = self.notices.push(Notice::Started);
                    }
                    let len = usize::from(*len);
                    let take = (len - self.offset).min(frame.len() - filled);
                    let source = &samples[self.offset..self.offset + take];
                    let target = &mut frame[filled..filled + take];
                    match self.mode {
                        PlayMode::Replace => target.copy_from_slice(source),
                        PlayMode::Mix => {
                            for (out, &add) in target.iter_mut().zip(source) {
                                *out = out.saturating_add(add);
                            }
                        }
                    }
                    self.offset += take;
                    filled += take;
                    if self.offset == len {
                        self.offset = 0;
                        self.counters.frames_played.fetch_add(1, Relaxed);
                        if let Ok(item) = self.items.pop() {
                            self.retire(item, false);
                        }
                    }
                }
            }
        }
        if filled < frame.len() && self.playing && self.items.is_empty() {
            self.playing = false;
            let _ = self.notices.push(Notice::Drained);
        }
        filled > 0
    }

    /// An item leaves the ring: a mark is reported, a buffer goes back.
    fn retire(&mut self, item: Item, cleared: bool) {
        match item {
            Item::Mark(id) => {
                let _ = self.notices.push(if cleared {
                    Notice::MarkCleared(id)
                } else {
                    Notice::Played(id)
                });
            }
            Item::Audio { samples, .. } => {
                // Never freed here: the sender thread reuses it. (With the
                // spares ring full it would be freed: the ring is sized so it
                // never is.)
                let _ = self.spares.push(samples);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rst_proto::Uuid;

    fn play(sequence: u32, samples: &[i16]) -> Vec<u8> {
        let payload: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        rst_proto::Message::Play(Play {
            uuid: Uuid::new("u1").unwrap(),
            sequence,
            payload_type: PayloadType::L16,
            payload: &payload,
        })
        .to_vec()
        .unwrap()
    }

    fn feed(feed: &mut PlayFeed, wire: &[u8]) {
        let Ok(rst_proto::Message::Play(p)) = rst_proto::Message::parse(wire) else {
            panic!()
        };
        feed.play(&p);
    }

    fn events(feed: &mut PlayFeed) -> Vec<PlayEvent> {
        let mut out = Vec::new();
        feed.poll(&mut |e| out.push(e));
        out
    }

    #[test]
    fn frames_play_in_order_a_gap_is_silence_and_marks_follow_their_audio() {
        let counters = Arc::new(PlayCounters::default());
        let (mut sender, mut media) = channel(PlayMode::Replace, 8000, counters.clone());
        feed(&mut sender, &play(0, &[1; 160]));
        feed(&mut sender, &play(2, &[3; 160]));
        feed(&mut sender, &play(1, &[9; 160])); // late: dropped
        sender.mark("m".into(), &mut |_| panic!());
        let mut frame = [7i16; 160];
        assert!(media.fill(&mut frame, 8000));
        assert_eq!(frame, [1; 160]);
        media.fill(&mut frame, 8000);
        assert_eq!(frame, [0; 160], "the lost frame 1 is silence");
        media.fill(&mut frame, 8000);
        assert_eq!(frame, [3; 160]);
        assert_eq!(
            events(&mut sender),
            [
                PlayEvent::Started,
                PlayEvent::Mark {
                    name: "m".into(),
                    cleared: false
                }
            ]
        );
        let mut frame = [7i16; 160];
        assert!(
            !media.fill(&mut frame, 8000),
            "an underrun leaves the channel's audio"
        );
        assert_eq!(frame, [7; 160]);
        assert_eq!(events(&mut sender), [PlayEvent::Stopped("drained")]);
        assert_eq!(counters.frames_late.load(Relaxed), 1);
        assert_eq!(counters.gap_frames.load(Relaxed), 1);
    }

    #[test]
    fn frames_of_another_size_are_spread_over_the_frames_written() {
        let (mut sender, mut media) = channel(PlayMode::Mix, 8000, Arc::default());
        feed(&mut sender, &play(0, &[100; 160]));
        feed(&mut sender, &play(1, &[i16::MAX; 160]));
        // FreeSWITCH writes 10 ms frames here.
        let mut heard = Vec::new();
        for _ in 0..4 {
            let mut frame = [1000i16; 80];
            media.fill(&mut frame, 8000);
            heard.extend_from_slice(&frame);
        }
        assert!(heard[..160].iter().all(|&s| s == 1100), "mixed");
        assert!(
            heard[160..].iter().all(|&s| s == i16::MAX),
            "saturated, not wrapped"
        );
    }

    #[test]
    fn a_clear_drops_everything_on_the_next_frame_and_clears_the_marks() {
        let (mut sender, mut media) = channel(PlayMode::Replace, 8000, Arc::default());
        for k in 0..10 {
            feed(&mut sender, &play(k, &[5; 160]));
        }
        sender.mark("later".into(), &mut |_| panic!());
        let mut frame = [0i16; 160];
        media.fill(&mut frame, 8000);
        sender.clear();
        let mut frame = [-2i16; 160];
        assert!(!media.fill(&mut frame, 8000));
        assert_eq!(frame, [-2; 160], "the next frame is the channel's own");
        assert_eq!(
            events(&mut sender),
            [
                PlayEvent::Started,
                PlayEvent::Mark {
                    name: "later".into(),
                    cleared: true
                },
                PlayEvent::Stopped("cleared"),
            ]
        );
        // After a clear a new sequence starts wherever the receiver is.
        feed(&mut sender, &play(57, &[8; 160]));
        media.fill(&mut frame, 8000);
        assert_eq!(frame, [8; 160]);
    }

    #[test]
    fn marks_not_played_at_the_end_are_cleared() {
        let (mut sender, _media) = channel(PlayMode::Mix, 8000, Arc::default());
        sender.mark("a".into(), &mut |_| panic!());
        sender.mark("b".into(), &mut |_| panic!());
        let mut out = Vec::new();
        sender.finish(&mut |e| out.push(e));
        assert_eq!(
            out,
            [
                PlayEvent::Mark {
                    name: "a".into(),
                    cleared: true
                },
                PlayEvent::Mark {
                    name: "b".into(),
                    cleared: true
                },
            ]
        );
    }

    fn ulaw_play(sequence: u32, codes: &[u8]) -> Vec<u8> {
        rst_proto::Message::Play(Play {
            uuid: Uuid::new("u1").unwrap(),
            sequence,
            payload_type: PayloadType::PCMU,
            payload: codes,
        })
        .to_vec()
        .unwrap()
    }

    #[test]
    fn ulaw_is_decoded_exactly_at_8khz() {
        let (mut sender, mut media) = channel(PlayMode::Replace, 8000, Arc::default());
        let codes: Vec<u8> = (0..160).map(|i| i as u8).collect();
        feed(&mut sender, &ulaw_play(0, &codes));
        let mut frame = [0i16; 160];
        assert!(media.fill(&mut frame, 8000));
        let expected: Vec<i16> = codes
            .iter()
            .map(|&c| rst_codec::ulaw_to_linear(c))
            .collect();
        assert_eq!(frame.to_vec(), expected);
    }

    /// µ-law (8 kHz) on a channel that writes 16 kHz: resampled, the tone
    /// keeps its pitch, nothing is lost, and a mark comes after all of it.
    #[test]
    fn audio_at_another_rate_than_the_channel_writes_is_resampled() {
        let counters = Arc::new(PlayCounters::default());
        let (mut sender, mut media) = channel(PlayMode::Replace, 8000, counters.clone());
        // The media thread has written a frame: now the feed knows the rate.
        let mut frame = [0i16; 320];
        assert!(!media.fill(&mut frame, 16000));
        let tone: Vec<u8> = (0..8000)
            .map(|n| {
                let x = 8000.0 * (2.0 * std::f64::consts::PI * 500.0 * n as f64 / 8000.0).sin();
                rst_codec::linear_to_ulaw(x as i16)
            })
            .collect();
        let mut heard = Vec::new();
        let mut events = Vec::new();
        for (k, codes) in tone.chunks(160).enumerate() {
            feed(&mut sender, &ulaw_play(k as u32, codes));
            if k == 49 {
                sender.mark("end".into(), &mut |_| panic!());
            }
            while media.fill(&mut frame, 16000) {
                heard.extend_from_slice(&frame);
            }
            sender.poll(&mut |e| events.push(e));
        }
        let mark = PlayEvent::Mark {
            name: "end".into(),
            cleared: false,
        };
        assert_eq!(events.last(), Some(&PlayEvent::Stopped("drained")));
        assert_eq!(
            events[events.len() - 2],
            mark,
            "the mark after all the audio"
        );
        assert_eq!(counters.frames_unsupported.load(Relaxed), 0);
        // A second at 8 kHz is a second at 16 kHz (the last frame, partly
        // filled, counts whole here).
        assert!(
            (16000..16000 + 320).contains(&heard.len()),
            "{} samples",
            heard.len()
        );
        // 500 Hz at 16 kHz: a period of 32 samples; count the rising zero
        // crossings in the middle second's half.
        let middle = &heard[4000..12000];
        let crossings = middle.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
        assert!(
            (248..=252).contains(&crossings),
            "{crossings} periods in 0.5 s"
        );
    }
}
