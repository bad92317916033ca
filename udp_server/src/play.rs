//! Audio back into a call: what a consumer (a voice bot, a text-to-speech
//! service) sends to be heard, paced out to the call's sender as PLAY
//! datagrams, with CLR (barge-in) and MARK (tell me when this point played).
//!
//! A bot may send a 10 s sentence in 200 ms; the receiver keeps it and sends
//! it in real time, a few frames ahead (`play-lead`, [`LEAD_FRAMES`] unless
//! configured), so the sender needs
//! only a small jitter buffer and a burst never overflows a socket. Only a
//! sender whose INV said `play=1` (mod_rst) gets any of it; a tapped call is
//! passive.
//!
//! [`Pacer`] is the sans-IO core (time in, datagrams out); [`Player`] is the
//! tokio task around it, one per call, started by the call's first consumer
//! that speaks.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rst_proto::{Clear, Extensions, Mark, Message, PayloadType, Play, Uuid};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::live::{LiveCall, LiveEvent};
use crate::metrics::Metrics;
use rst_codec::Resampler;

/// Frames sent ahead of real time by default: what the sender's jitter
/// buffer absorbs.
pub const LEAD_FRAMES: u32 = 3;
/// The most lead allowed: half of mod_rst's ring of 32 frames, so a lead
/// never fills it.
pub const MAX_LEAD_FRAMES: u32 = 16;
/// Audio a call keeps queued to be played; past it a consumer's audio is
/// dropped and counted (a consumer should not send minutes ahead).
pub const MAX_QUEUED: Duration = Duration::from_secs(60);
const FRAME: Duration = Duration::from_millis(20);

/// Where a call's audio back goes: its sender, which said `play=1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayTarget {
    pub to: SocketAddr,
    /// The call's rate: PLAY carries 16-bit linear audio at it.
    pub rate: u32,
}

/// What a consumer asks of a call's player.
#[derive(Debug)]
pub enum PlayCommand {
    /// Audio to be heard, 16-bit linear at `rate`.
    Audio { rate: u32, samples: Vec<i16> },
    /// Tell when everything before this point has been played.
    Mark(String),
    /// Drop everything not yet played.
    Clear,
}

#[derive(Debug)]
enum Item {
    Frame(Vec<i16>),
    Mark(String),
}

/// One call's queue of audio to play, paced in real time. Sans-IO.
#[derive(Debug)]
pub struct Pacer {
    uuid: String,
    rate: u32,
    queue: VecDeque<Item>,
    queued_frames: usize,
    /// The part of a frame not yet whole.
    partial: Vec<i16>,
    resampler: Option<Resampler>,
    scratch: Vec<i16>,
    /// Frames sent ahead of real time.
    lead: u32,
    /// When the current run of frames began, and frames sent in it: frame
    /// `n` of a run is due `n - lead` frames after its start.
    run: Option<(Instant, u32)>,
    /// The queue ran empty since the last frame went out.
    starved: bool,
    sequence: u32,
    /// Milliseconds of audio dropped because the queue was full.
    pub dropped_ms: u64,
    /// Frames sent.
    pub frames_sent: u64,
}

/// What the pacer asks its shell to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Paced {
    /// Send this datagram to the call's sender.
    Send(Vec<u8>),
    /// A mark that never reached the sender (a clear dropped it here): tell
    /// the consumer it was cleared.
    MarkCleared(String),
}

impl Pacer {
    pub fn new(uuid: &str, rate: u32, lead: u32) -> Pacer {
        Pacer {
            uuid: uuid.to_owned(),
            lead,
            rate: rate.max(8000),
            queue: VecDeque::new(),
            queued_frames: 0,
            partial: Vec::new(),
            resampler: None,
            scratch: Vec::new(),
            run: None,
            starved: false,
            sequence: 0,
            dropped_ms: 0,
            frames_sent: 0,
        }
    }

    fn frame_samples(&self) -> usize {
        (self.rate / 50) as usize
    }

    /// Takes one command; a clear answers at once.
    pub fn command(&mut self, command: PlayCommand, out: &mut Vec<Paced>) {
        match command {
            PlayCommand::Audio { rate, samples } => self.audio(rate, &samples),
            PlayCommand::Mark(name) => {
                self.flush_partial();
                self.queue.push_back(Item::Mark(name));
            }
            PlayCommand::Clear => {
                self.partial.clear();
                self.resampler = None;
                for item in self.queue.drain(..) {
                    if let Item::Mark(name) = item {
                        out.push(Paced::MarkCleared(name));
                    }
                }
                self.queued_frames = 0;
                self.run = None;
                if let Some(datagram) = self.encode(|uuid| Message::Clear(Clear { uuid })) {
                    out.push(Paced::Send(datagram));
                }
            }
        }
    }

    fn audio(&mut self, rate: u32, samples: &[i16]) {
        if self.resampler.as_ref().map(Resampler::from_rate) != Some(rate) {
            self.resampler = Some(Resampler::new(rate, self.rate));
        }
        self.scratch.clear();
        if let Some(resampler) = &mut self.resampler {
            resampler.push(samples, &mut self.scratch);
        }
        let max_frames = (MAX_QUEUED.as_millis() / FRAME.as_millis()) as usize;
        let frame = self.frame_samples();
        let mut fresh = std::mem::take(&mut self.scratch);
        let mut taken = 0;
        while taken < fresh.len() {
            let room = frame - self.partial.len();
            let part = &fresh[taken..(taken + room).min(fresh.len())];
            self.partial.extend_from_slice(part);
            taken += part.len();
            if self.partial.len() == frame {
                if self.queued_frames >= max_frames {
                    self.dropped_ms += FRAME.as_millis() as u64;
                    self.partial.clear();
                    continue;
                }
                self.queue
                    .push_back(Item::Frame(std::mem::take(&mut self.partial)));
                self.queued_frames += 1;
            }
        }
        fresh.clear();
        self.scratch = fresh;
    }

    /// A mark ends what came before it: a partial frame is padded with silence.
    fn flush_partial(&mut self) {
        if !self.partial.is_empty() {
            let frame = self.frame_samples();
            self.partial.resize(frame, 0);
            self.queue
                .push_back(Item::Frame(std::mem::take(&mut self.partial)));
            self.queued_frames += 1;
        }
    }

    /// Sends what is due at `now` and says when to call again.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Paced>) -> Option<Instant> {
        loop {
            match self.queue.front() {
                None => {
                    self.starved = true;
                    return None;
                }
                Some(Item::Mark(_)) => {
                    let Some(Item::Mark(name)) = self.queue.pop_front() else {
                        unreachable!("front is a mark")
                    };
                    let wire_name = Extensions::escape(&name);
                    if let Some(datagram) = self.encode(|uuid| {
                        Message::Mark(Mark {
                            uuid,
                            wire_name: &wire_name,
                            cleared: false,
                        })
                    }) {
                        out.push(Paced::Send(datagram));
                    }
                }
                Some(Item::Frame(_)) => {
                    // A run goes on while the sender still has audio of it to
                    // play (a consumer sends as it speaks: the queue is often
                    // empty for a moment); after that, new audio starts a new
                    // run, with its lead.
                    let (start, sent) = match self.run {
                        Some((start, sent)) if !self.starved || now <= start + FRAME * sent => {
                            (start, sent)
                        }
                        _ => (now, 0),
                    };
                    self.starved = false;
                    let due = start + FRAME * sent.saturating_sub(self.lead);
                    if due > now {
                        return Some(due);
                    }
                    let Some(Item::Frame(samples)) = self.queue.pop_front() else {
                        unreachable!("front is a frame")
                    };
                    self.queued_frames -= 1;
                    self.run = Some((start, sent + 1));
                    let payload: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
                    let sequence = self.sequence;
                    self.sequence = self.sequence.wrapping_add(1);
                    if let Some(datagram) = self.encode(|uuid| {
                        Message::Play(Play {
                            uuid,
                            sequence,
                            payload_type: PayloadType::L16,
                            payload: &payload,
                        })
                    }) {
                        out.push(Paced::Send(datagram));
                        self.frames_sent += 1;
                    }
                }
            }
        }
    }

    /// Audio queued and not yet sent.
    pub fn queued(&self) -> Duration {
        FRAME * self.queued_frames as u32
    }

    fn encode<'a>(&'a self, message: impl FnOnce(Uuid<'a>) -> Message<'a>) -> Option<Vec<u8>> {
        let uuid = Uuid::new(&self.uuid).ok()?;
        message(uuid).to_vec().ok()
    }
}

/// Commands a call's player takes before a consumer's must wait (or drop).
const COMMANDS: usize = 512;

/// The handle consumers use to speak into a call.
#[derive(Debug, Clone)]
pub struct Player {
    commands: mpsc::Sender<PlayCommand>,
}

impl Player {
    /// Starts the player of `live` (the call's sender said `play=1`).
    pub fn start(
        live: Arc<LiveCall>,
        target: PlayTarget,
        lead: u32,
        socket: Arc<UdpSocket>,
        metrics: Arc<Metrics>,
        ended: CancellationToken,
    ) -> Player {
        let (commands, queue) = mpsc::channel(COMMANDS);
        tokio::spawn(run(live, target, lead, socket, metrics, queue, ended));
        Player { commands }
    }

    /// Queues a command without waiting; `false` when the player is gone
    /// (the call ended) or full.
    pub fn try_send(&self, command: PlayCommand) -> bool {
        self.commands.try_send(command).is_ok()
    }
}

async fn run(
    live: Arc<LiveCall>,
    target: PlayTarget,
    lead: u32,
    socket: Arc<UdpSocket>,
    metrics: Arc<Metrics>,
    mut commands: mpsc::Receiver<PlayCommand>,
    ended: CancellationToken,
) {
    let uuid = live.info().uuid;
    let mut pacer = Pacer::new(&uuid, target.rate, lead);
    let mut out = Vec::new();
    let mut wake: Option<Instant> = None;
    loop {
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = ended.cancelled() => break,
            command = commands.recv() => match command {
                Some(command) => pacer.command(command, &mut out),
                None => break,
            },
            () = sleep => {}
        }
        wake = pacer.poll(Instant::now(), &mut out);
        for paced in out.drain(..) {
            match paced {
                Paced::Send(datagram) => {
                    // Never wait for the socket: a frame it cannot take now is
                    // late already; the sender plays the gap as silence.
                    if socket.try_send_to(&datagram, target.to).is_err() {
                        metrics.send_errors.fetch_add(1, Relaxed);
                    }
                }
                Paced::MarkCleared(name) => live.publish(LiveEvent::Mark {
                    name: Arc::from(name),
                    cleared: true,
                }),
            }
        }
        metrics
            .play_dropped_ms
            .fetch_add(std::mem::take(&mut pacer.dropped_ms), Relaxed);
    }
    // The call ended: marks never played are cleared.
    let mut dropped = Vec::new();
    pacer.command(PlayCommand::Clear, &mut dropped);
    for paced in dropped {
        if let Paced::MarkCleared(name) = paced {
            live.publish(LiveEvent::Mark {
                name: Arc::from(name),
                cleared: true,
            });
        }
    }
    tracing::debug!(uuid = %uuid, frames = pacer.frames_sent, "player ended");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(out: &[Paced]) -> Vec<(u32, Vec<i16>)> {
        out.iter()
            .filter_map(|p| match p {
                Paced::Send(d) => match Message::parse(d) {
                    Ok(Message::Play(play)) => Some((
                        play.sequence,
                        play.payload
                            .chunks(2)
                            .map(|b| i16::from_le_bytes([b[0], b[1]]))
                            .collect(),
                    )),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_burst_is_paced_in_real_time_with_a_lead() {
        let mut pacer = Pacer::new("u1", 8000, LEAD_FRAMES);
        let mut out = Vec::new();
        // One second of audio at once.
        let samples: Vec<i16> = (0..8000).map(|i| i as i16).collect();
        pacer.command(
            PlayCommand::Audio {
                rate: 8000,
                samples: samples.clone(),
            },
            &mut out,
        );
        let t0 = Instant::now();
        let wake = pacer.poll(t0, &mut out);
        assert_eq!(
            frames(&out).len(),
            LEAD_FRAMES as usize + 1,
            "the lead, and the frame due now"
        );
        assert_eq!(wake, Some(t0 + FRAME));
        out.clear();
        // 100 ms later: five more.
        pacer.poll(t0 + 5 * FRAME, &mut out);
        assert_eq!(frames(&out).len(), 5);
        out.clear();
        pacer.poll(t0 + 60 * FRAME, &mut out);
        let all = frames(&out);
        assert_eq!(
            all.last().unwrap().0,
            49,
            "50 frames in all, numbered from 0"
        );
        assert_eq!(pacer.poll(t0 + 60 * FRAME, &mut out), None);
    }

    #[test]
    fn audio_that_comes_as_it_is_spoken_keeps_one_run() {
        // A consumer sending 20 ms every 20 ms, sometimes early: the queue
        // is empty between frames, yet the run goes on at real time.
        let mut pacer = Pacer::new("u1", 8000, LEAD_FRAMES);
        let mut out = Vec::new();
        let t0 = Instant::now();
        for k in 0..20u32 {
            pacer.command(
                PlayCommand::Audio {
                    rate: 8000,
                    samples: vec![1; 160],
                },
                &mut out,
            );
            pacer.poll(t0 + FRAME * k / 2, &mut out);
        }
        // Sent by t0 + 190 ms: the lead and ten frames of real time, no more.
        assert_eq!(frames(&out).len(), LEAD_FRAMES as usize + 10);
        // After a pause longer than what was sent, a new run starts at once.
        pacer.poll(t0 + Duration::from_secs(1), &mut out);
        out.clear();
        let later = t0 + Duration::from_secs(5);
        pacer.command(
            PlayCommand::Audio {
                rate: 8000,
                samples: vec![1; 160],
            },
            &mut out,
        );
        pacer.poll(later, &mut out);
        assert_eq!(frames(&out).len(), 1);
    }

    #[test]
    fn frames_carry_the_audio_in_order_and_a_mark_follows_its_audio() {
        let mut pacer = Pacer::new("u1", 8000, LEAD_FRAMES);
        let mut out = Vec::new();
        let samples: Vec<i16> = (0..400).map(|i| i as i16).collect();
        pacer.command(
            PlayCommand::Audio {
                rate: 8000,
                samples: samples.clone(),
            },
            &mut out,
        );
        pacer.command(PlayCommand::Mark("half".into()), &mut out);
        pacer.command(
            PlayCommand::Audio {
                rate: 8000,
                samples: vec![7; 160],
            },
            &mut out,
        );
        pacer.poll(Instant::now() + Duration::from_secs(1), &mut out);
        let sent: Vec<Message<'_>> = out
            .iter()
            .map(|p| match p {
                Paced::Send(d) => Message::parse(d).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        // 400 samples: two frames and a half, padded before the mark.
        assert!(matches!(sent[3], Message::Mark(ref m) if m.name() == "half" && !m.cleared));
        let played = frames(&out);
        assert_eq!(played.len(), 4);
        let audio: Vec<i16> = played[..3].iter().flat_map(|(_, s)| s.clone()).collect();
        assert_eq!(&audio[..400], &samples[..]);
        assert!(audio[400..].iter().all(|&s| s == 0));
        assert_eq!(played[3].1, vec![7; 160]);
    }

    #[test]
    fn a_clear_drops_the_queue_says_clr_and_clears_the_marks_not_yet_sent() {
        let mut pacer = Pacer::new("u1", 16000, LEAD_FRAMES);
        let mut out = Vec::new();
        pacer.command(
            PlayCommand::Audio {
                rate: 8000,
                samples: vec![100; 8000],
            },
            &mut out,
        );
        pacer.command(PlayCommand::Mark("end".into()), &mut out);
        let t0 = Instant::now();
        pacer.poll(t0, &mut out);
        let first = frames(&out);
        assert_eq!(first[0].1.len(), 320, "20 ms at the call's 16 kHz");
        out.clear();
        pacer.command(PlayCommand::Clear, &mut out);
        assert_eq!(out[0], Paced::MarkCleared("end".into()));
        assert!(matches!(&out[1], Paced::Send(d) if d.starts_with(b"CLR :u1")));
        out.clear();
        assert_eq!(pacer.poll(t0 + Duration::from_secs(5), &mut out), None);
        assert!(out.is_empty(), "nothing after a clear");
        assert_eq!(pacer.queued(), Duration::ZERO);
    }

    #[test]
    fn more_than_a_minute_queued_is_dropped_and_counted() {
        let mut pacer = Pacer::new("u1", 8000, LEAD_FRAMES);
        let mut out = Vec::new();
        pacer.command(
            PlayCommand::Audio {
                rate: 8000,
                samples: vec![1; 8000 * 61],
            },
            &mut out,
        );
        assert_eq!(pacer.queued(), MAX_QUEUED);
        assert_eq!(pacer.dropped_ms, 1000);
    }
}
