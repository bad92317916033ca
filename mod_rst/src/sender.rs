//! The sender thread: every socket, every timer and every wait of the module
//! lives here, so the media threads only copy a frame into a queue. One thread
//! serves all calls; [`Stream`] holds each call's protocol state.

use foldhash::{HashMap, HashSet};
use std::io::{self, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rst_proto::{Direction, Health, Message, Pool, RtpPorts};

use crate::config::Mode;
use crate::play::{PlayCounters, PlayEvent, PlayFeed, PlayLater};
use crate::queue::{Consumer, OwnLine, Producer};
use rst_proto::stream::{Stream, StreamStart, Trouble, Via};

/// Largest frame a media thread hands over: 20 ms of 48 kHz L16.
pub const MAX_FRAME_BYTES: usize = 1920;

/// Frames up to this size travel whole inside the queue's command: 20 ms of
/// G.711, G.722, G.729, opus at up to 128 kbit/s, and L16 at 8 kHz; a larger
/// one goes in pieces of this size, put together again by the sender thread
/// ([`Pieces`]). Every command is as large as its largest kind and is copied
/// into and out of the queue: commands sized for [`MAX_FRAME_BYTES`] cost the
/// media thread and the sender a 1.9 KiB copy each for a 160-byte PCMU frame
/// (`perf`: half of the sender thread's own time).
pub const INLINE_FRAME_BYTES: usize = 320;

/// The module's own number for a stream (a channel can be started, stopped and
/// started again under one UUID).
pub type StreamId = u64;

/// A frame, or a piece of one, copied off the media thread, inline so that
/// queueing allocates nothing. It is written and read where it lies in the
/// queue ([`crate::queue`]): only its header and its `len` bytes are touched.
pub struct Frame {
    pub stream: StreamId,
    pub direction: Direction,
    pub payload_type: u8,
    pub rtp_clock_samples: u32,
    /// Where this piece starts in its frame, and the frame's whole length.
    offset: u16,
    total: u16,
    len: u16,
    bytes: [u8; INLINE_FRAME_BYTES],
}

impl Frame {
    /// What a free slot of the queue holds to begin with: stream 0 is never
    /// a live one.
    const EMPTY: Frame = Frame {
        stream: 0,
        direction: Direction::Read,
        payload_type: 0,
        rtp_clock_samples: 0,
        offset: 0,
        total: 0,
        len: 0,
        bytes: [0; INLINE_FRAME_BYTES],
    };

    /// The pieces `payload` goes in, with where each starts: one when it
    /// fits [`INLINE_FRAME_BYTES`], one empty piece when it is empty.
    fn pieces(payload: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
        let pieces = payload.len().div_ceil(INLINE_FRAME_BYTES).max(1);
        (0..pieces).map(move |i| {
            let start = i * INLINE_FRAME_BYTES;
            (
                start,
                &payload[start..payload.len().min(start + INLINE_FRAME_BYTES)],
            )
        })
    }

    /// Makes this the piece of `total` bytes starting at `offset`, copying
    /// only the piece's bytes. `piece` is at most [`INLINE_FRAME_BYTES`]
    /// long and `total` at most [`MAX_FRAME_BYTES`] ([`Frame::pieces`]).
    #[allow(clippy::too_many_arguments)]
    fn set(
        &mut self,
        stream: StreamId,
        direction: Direction,
        payload_type: u8,
        rtp_clock_samples: u32,
        offset: usize,
        total: usize,
        piece: &[u8],
    ) {
        let len = piece.len().min(INLINE_FRAME_BYTES);
        self.stream = stream;
        self.direction = direction;
        self.payload_type = payload_type;
        self.rtp_clock_samples = rtp_clock_samples;
        self.offset = offset as u16;
        self.total = total as u16;
        self.len = len as u16;
        self.bytes[..len].copy_from_slice(&piece[..len]);
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    fn is_whole(&self) -> bool {
        self.len == self.total
    }
}

/// A stream's frames coming in pieces, put together again, per direction.
/// A piece whose earlier pieces were dropped (a full queue) is dropped too;
/// the next frame starts afresh.
#[derive(Debug, Default)]
struct Pieces {
    frames: [Vec<u8>; 2],
}

impl Pieces {
    /// The whole frame once `piece` completes it.
    fn add(&mut self, piece: &Frame) -> Option<&[u8]> {
        let frame = &mut self.frames[usize::from(piece.direction == Direction::Write)];
        if piece.offset == 0 {
            frame.clear();
        }
        if usize::from(piece.offset) != frame.len() {
            return None;
        }
        frame.extend_from_slice(piece.bytes());
        (frame.len() == usize::from(piece.total)).then_some(&frame[..])
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("stream", &self.stream)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

// Frames travel inline, on purpose: the queue is preallocated, so a media
// thread queueing one allocates nothing (see [`INLINE_FRAME_BYTES`]).
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Command {
    Start {
        stream: StreamId,
        start: Box<StreamStart>,
        /// How to start the call's playback, when it can play.
        play: Option<PlayLater>,
    },
    /// A frame or a piece of one: see [`Sender::try_frame`].
    Frame(Frame),
    /// A key press the channel received, `duration_ms` long.
    Dtmf {
        stream: StreamId,
        direction: Direction,
        digit: char,
        duration_ms: u32,
    },
    Stop {
        stream: StreamId,
    },
    /// Stop every stream, wait (bounded) for their BYEs to be acknowledged, exit.
    Shutdown,
}

/// What a free slot of the queue holds (see [`crate::queue`]): frames are
/// written over it in place.
impl Default for Command {
    fn default() -> Self {
        Command::Frame(Frame::EMPTY)
    }
}

impl Command {
    /// Lets `write` make this free slot a frame, over the frame it holds
    /// (a slot the sender left holding something else, which it never does,
    /// is replaced whole).
    fn write_frame(&mut self, write: impl FnOnce(&mut Frame)) {
        match self {
            Command::Frame(frame) => write(frame),
            other => {
                let mut frame = Frame::EMPTY;
                write(&mut frame);
                *other = Command::Frame(frame);
            }
        }
    }
}

/// Counters of the whole module, for `rst_status` and the log.
#[derive(Debug, Default)]
pub struct Counters {
    pub streams_started: AtomicU64,
    pub streams_active: AtomicU64,
    /// Written by every media thread for every frame: on a cache line of its
    /// own, away from the sender thread's counters.
    pub frames_queued: OwnLine,
    /// The queue to the sender thread was full: the media thread dropped the frame.
    pub frames_dropped_queue_full: AtomicU64,
    pub frames_too_big: AtomicU64,
    /// Key presses queued for the receiver, and those a full queue dropped.
    pub dtmf_queued: AtomicU64,
    pub dtmf_dropped: AtomicU64,
    pub frames_sent: AtomicU64,
    /// The audio datagrams they went in (fewer with `frames-per-datagram`).
    pub datagrams_sent: AtomicU64,
    pub frames_dropped_waiting: AtomicU64,
    pub send_errors: AtomicU64,
    pub invs_unacknowledged: AtomicU64,
    pub byes_unacknowledged: AtomicU64,
    pub acks_received: AtomicU64,
    /// LIVE for a call of this module (someone hears the call: its frames go
    /// one to a datagram while `frames-per-datagram` is `auto`; taken only
    /// from the call's receiver).
    pub lives_received: AtomicU64,
    /// Calls moved to another receiver of the pool.
    pub failovers: AtomicU64,
    /// ICMP errors from receivers (port unreachable and the like).
    pub icmp_errors: AtomicU64,
    /// Audio back into calls (PLAY, CLR, MARK).
    pub play: Arc<PlayCounters>,
    /// What the media bug's callbacks cost the media threads, sampled (see
    /// [`Counters::callback_sampled`]): callbacks counted, those timed, and
    /// their time in ns. Touched once every [`CALLBACK_SAMPLE`] callbacks.
    pub callbacks: AtomicU64,
    pub callbacks_timed: AtomicU64,
    pub callback_ns_timed: AtomicU64,
    /// Sampled callbacks not timed: their thread left the CPU meanwhile.
    pub callbacks_preempted: AtomicU64,
    /// The pool of receivers' health (`receivers` in rst.conf), when there is
    /// one: written by the sender thread, read by `rst_status`. Never touched
    /// by a media thread.
    pub receivers: Mutex<Option<Health>>,
}

/// One media-bug callback in this many is timed, and the callbacks are
/// counted in runs of this many: what rst costs FreeSWITCH's media threads,
/// measured inside a real FreeSWITCH (its benchmark reads it from
/// `rst_status`) for two clock reads and two `getrusage` per run.
pub const CALLBACK_SAMPLE: u32 = 64;

/// A receiver that failed is left out of new calls' first choice this long.
const RECEIVER_RETRY: Duration = Duration::from_secs(5);

impl Counters {
    /// A stream's run of [`CALLBACK_SAMPLE`] callbacks, the last of them
    /// timed at `took`, unless its thread was `preempted` meanwhile.
    pub fn callback_sampled(&self, took: Duration, preempted: bool) {
        self.callbacks
            .fetch_add(u64::from(CALLBACK_SAMPLE), Relaxed);
        if preempted {
            self.callbacks_preempted.fetch_add(1, Relaxed);
            return;
        }
        self.callbacks_timed.fetch_add(1, Relaxed);
        self.callback_ns_timed
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Calls go to this pool of receivers.
    pub fn set_pool(&self, pool: Pool) {
        if let Ok(mut receivers) = self.receivers.lock() {
            *receivers = Some(Health::new(pool, RECEIVER_RETRY));
        }
    }

    /// Runs `action` on the pool's health, if there is a pool.
    fn with_health<R>(&self, action: impl FnOnce(&mut Health) -> R) -> Option<R> {
        let mut receivers = self.receivers.lock().ok()?;
        receivers.as_mut().map(action)
    }

    /// `,"failovers":N,"icmp_errors":N,"gso":BOOL,"receivers":[{"address":..,"up":..,"failures":..,"acks":..}]`:
    /// `gso` is false once the kernel refused a UDP GSO send (then every
    /// datagram is its own message).
    fn receivers_json(&self) -> String {
        let now = Instant::now();
        let list = self
            .with_health(|health| {
                health
                    .receivers(now)
                    .iter()
                    .map(|r| {
                        format!(
                            "{{\"address\":\"{}\",\"up\":{},\"failures\":{},\"acks\":{}}}",
                            r.address, r.up, r.failures, r.acks
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        format!(
            ",\"lives_received\":{},\"failovers\":{},\"icmp_errors\":{},\"gso\":{},\"receivers\":[{list}]",
            self.lives_received.load(Relaxed),
            self.failovers.load(Relaxed),
            self.icmp_errors.load(Relaxed),
            rst_net::gso_in_use()
        )
    }

    pub fn to_json(&self) -> String {
        let c = |counter: &AtomicU64| counter.load(Relaxed);
        format!(
            "{{\"streams_started\":{},\"streams_active\":{},\"frames_queued\":{},\"frames_dropped_queue_full\":{},\"frames_too_big\":{},\"dtmf_queued\":{},\"dtmf_dropped\":{},\"frames_sent\":{},\"datagrams_sent\":{},\"frames_dropped_waiting\":{},\"send_errors\":{},\"invs_unacknowledged\":{},\"byes_unacknowledged\":{},\"acks_received\":{},\"callbacks\":{},\"callbacks_timed\":{},\"callback_ns_timed\":{},\"callbacks_preempted\":{}",
            c(&self.streams_started),
            c(&self.streams_active),
            c(&self.frames_queued),
            c(&self.frames_dropped_queue_full),
            c(&self.frames_too_big),
            c(&self.dtmf_queued),
            c(&self.dtmf_dropped),
            c(&self.frames_sent),
            c(&self.datagrams_sent),
            c(&self.frames_dropped_waiting),
            c(&self.send_errors),
            c(&self.invs_unacknowledged),
            c(&self.byes_unacknowledged),
            c(&self.acks_received),
            c(&self.callbacks),
            c(&self.callbacks_timed),
            c(&self.callback_ns_timed),
            c(&self.callbacks_preempted),
        ) + &self.receivers_json()
            + &self.play_json()
    }

    /// `,"play":{...}}`: the playback counters, closing the object.
    fn play_json(&self) -> String {
        let p = &self.play;
        let c = |counter: &AtomicU64| counter.load(Relaxed);
        format!(
            ",\"play\":{{\"frames_played\":{},\"frames_late\":{},\"gap_frames\":{},\"frames_dropped_full\":{},\"frames_unsupported\":{},\"clears\":{},\"marks\":{},\"foreign\":{},\"bugs_refused\":{}}}}}",
            c(&p.frames_played),
            c(&p.frames_late),
            c(&p.gap_frames),
            c(&p.frames_dropped_full),
            c(&p.frames_unsupported),
            c(&p.clears),
            c(&p.marks),
            c(&p.foreign),
            c(&p.bugs_refused),
        )
    }
}

/// What the sender thread needs of the module: reports (log lines and
/// events), and the playback bug, which only FreeSWITCH can attach.
pub trait Host: Send + 'static {
    fn trouble(&self, uuid: &str, trouble: &Trouble);
    fn socket_error(&self, uuid: &str, error: &io::Error);
    /// Playback started or stopped, or a mark was played (or cleared).
    fn play(&self, uuid: &str, event: &PlayEvent);
    /// Attaches the call's playback bug (its first audio back came): the
    /// sender thread's side of the playback, or `None` (counted, logged)
    /// when the call is gone or FreeSWITCH refuses the bug.
    fn attach_play(
        &self,
        uuid: &str,
        later: &PlayLater,
        counters: &Arc<PlayCounters>,
    ) -> Option<Box<PlayFeed>>;
}

/// The media threads' side: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct Sender {
    queue: Producer<Command>,
    pub counters: Arc<Counters>,
}

impl Sender {
    /// Copies `payload` and queues it; a full queue or an oversize frame drops it
    /// and counts. Never blocks, never allocates.
    pub fn try_frame(
        &self,
        stream: StreamId,
        direction: Direction,
        payload_type: u8,
        rtp_clock_samples: u32,
        payload: &[u8],
    ) {
        if payload.len() > MAX_FRAME_BYTES {
            self.counters.frames_too_big.fetch_add(1, Relaxed);
            return;
        }
        for (offset, piece) in Frame::pieces(payload) {
            let queued = self.queue.try_push_with(|slot| {
                slot.write_frame(|frame| {
                    frame.set(
                        stream,
                        direction,
                        payload_type,
                        rtp_clock_samples,
                        offset,
                        payload.len(),
                        piece,
                    )
                })
            });
            if !queued {
                // Full: the frame is lost, and with it any pieces already
                // queued (the sender drops them).
                self.counters
                    .frames_dropped_queue_full
                    .fetch_add(1, Relaxed);
                return;
            }
        }
        self.counters.frames_queued.fetch_add(1, Relaxed);
    }

    /// Queues a key press; a full queue drops it and counts. Never blocks.
    pub fn try_dtmf(&self, stream: StreamId, direction: Direction, digit: char, duration_ms: u32) {
        let command = Command::Dtmf {
            stream,
            direction,
            digit,
            duration_ms,
        };
        match self.queue.try_push(command) {
            Ok(()) => self.counters.dtmf_queued.fetch_add(1, Relaxed),
            Err(_) => self.counters.dtmf_dropped.fetch_add(1, Relaxed),
        };
    }

    /// Queues a control command (start, stop, shutdown) and wakes the sender
    /// thread: not on a media thread, so it may wait briefly for room.
    /// `false` when there is none, or the sender thread is gone.
    pub fn control(&self, command: Command) -> bool {
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut command = command;
        loop {
            if self.queue.is_closed() {
                return false;
            }
            match self.queue.try_push(command) {
                Ok(()) => {
                    self.queue.wake();
                    return true;
                }
                Err(back) if Instant::now() < deadline => {
                    command = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        }
    }
}

/// Creates the queue and its sending side; [`run`] drains the other side.
pub fn channel(queue_frames: usize) -> (Sender, Consumer<Command>) {
    let (queue, commands) = crate::queue::queue(queue_frames);
    (
        Sender {
            queue,
            counters: Arc::new(Counters::default()),
        },
        commands,
    )
}

struct Live {
    stream: Stream,
    rtp: Option<[UdpSocket; 2]>,
    hex: Option<io::BufWriter<std::fs::File>>,
    /// The call's playback once its bug is on the channel.
    play: Option<Box<PlayFeed>>,
    /// Until then: how to attach it (`None` once tried, or when the call
    /// cannot play).
    play_later: Option<PlayLater>,
    /// Frames larger than [`INLINE_FRAME_BYTES`], as their pieces come.
    pieces: Pieces,
}

/// Longest sleep of the sender thread while calls are open but none had
/// audio in its last wake-up: how late an ACK, a PLAY or the calls' next
/// audio is noticed then.
const IDLE_WAIT: Duration = Duration::from_millis(20);

/// While calls have audio, the sender wakes this often (not on every frame):
/// each wake-up drains the queue and sends its datagrams with one `sendmmsg`
/// per socket. A wake-up per frame cost most of the thread's time (a futex
/// wake on the media thread, a context switch, a `sendto` each). The audio is
/// at most this much later at the receiver, well within its jitter buffer.
const BATCH_WINDOW: Duration = Duration::from_millis(10);

/// A frame's time at the usual 20 ms packetization: a gathering stream's
/// frames come about this far apart.
const FRAME_TIME: Duration = Duration::from_millis(20);

/// How long the sender sleeps while audio flows. While a stream sends each
/// frame at once, [`BATCH_WINDOW`]. While every stream gathers frames
/// ([`Stream::gathers`]), as long as the fewest frames any of them puts in a
/// datagram take (60 ms at 3): their audio waits that long anyway, and each
/// wake-up then finds each call's frames together, so the call's state is
/// fetched into the cache once per datagram instead of once per frame (the
/// sender's cost is mostly such fetches: `perf` puts a fifth of its time in
/// the first copy of a frame, another fifth in the first writes of the call's
/// datagram). Never longer than fills half the queue at the rate of the last
/// wake-up: the queue is sized for frames, not for time (`queue-frames`).
/// Only a rate that more than doubles within one window (more new calls
/// in 60 ms than were live, far beyond FreeSWITCH's `sessions-per-second`)
/// could fill it; that is counted (`frames_dropped_queue_full`), and at 1
/// frame per datagram the window stays [`BATCH_WINDOW`].
fn batch_window(
    fewest_frames: u32,
    queued_last: usize,
    since_last: Duration,
    capacity: usize,
) -> Duration {
    if fewest_frames <= 1 {
        return BATCH_WINDOW;
    }
    let gathering = FRAME_TIME * fewest_frames;
    if queued_last == 0 {
        return gathering;
    }
    // Half the queue at the last wake-up's rate.
    let half = since_last.mul_f64((capacity / 2) as f64 / queued_last as f64);
    gathering.min(half).max(Duration::from_millis(1))
}

/// The live streams by the frames each puts in a datagram (1: each frame at
/// once): the fewest set the sender's wake-ups ([`batch_window`]).
#[derive(Debug, Default)]
struct Gathering(std::collections::BTreeMap<u32, usize>);

impl Gathering {
    /// A stream of `frames` per datagram ([`Stream::frames_per_datagram`]) starts.
    fn add(&mut self, frames: u32) {
        *self.0.entry(frames).or_default() += 1;
    }

    fn remove(&mut self, frames: u32) {
        if let Some(count) = self.0.get_mut(&frames) {
            *count -= 1;
            if *count == 0 {
                self.0.remove(&frames);
            }
        }
    }

    /// The fewest frames a live stream puts in a datagram (1 with none).
    fn fewest(&self) -> u32 {
        self.0.keys().next().copied().unwrap_or(1)
    }
}

/// How the sender thread waits before its next wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Audio flows: sleep the batch window (or less, when a timer is due).
    Batch,
    /// Calls are open but quiet: wait for a control command, at most `IDLE_WAIT`.
    Quiet,
    /// No call: wait for a command, or for a timer of a closing stream only.
    Idle,
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// How long shutdown waits for BYEs to be acknowledged.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// The thread body: runs until [`Command::Shutdown`] (or every sender is gone).
pub fn run(
    mut commands: Consumer<Command>,
    capacity: usize,
    counters: Arc<Counters>,
    hex_dir: Option<String>,
    host: impl Host,
) {
    let mut control = Control::default();
    let mut live: HashMap<StreamId, Live> = HashMap::default();
    let mut by_uuid: HashMap<String, StreamId> = HashMap::default();
    // Streams whose playback has something in flight (audio, marks, notices).
    let mut playing: HashSet<StreamId> = HashSet::default();
    let mut shutdown_deadline: Option<Instant> = None;
    let mut ack_buffer = [0u8; 2048];
    let mut acks: Vec<(StreamId, SocketAddr, Option<RtpPorts>)> = Vec::new();
    // LIVE from receivers this wake-up: (stream, from).
    let mut heard: Vec<(StreamId, SocketAddr)> = Vec::new();
    // The earliest retransmission due, so the streams are walked only when one
    // is (a walk per wake-up costs too much with hundreds of calls).
    let mut next_due: Option<Instant> = None;
    let mut wait = Wait::Idle;
    // The last wake-up: when it began, the frames (pieces) it took, and how
    // long they had been coming (since the wake-up before).
    let mut last_wake = Instant::now();
    let mut frames = 0usize;
    let mut interval = Duration::ZERO;
    loop {
        let window = batch_window(control.gathering.fewest(), frames, interval, capacity);
        wait_for_work(&commands, wait, window, next_due);
        let now = Instant::now();
        interval = now.saturating_duration_since(std::mem::replace(&mut last_wake, now));
        frames = 0;
        // Every module handle is gone (it never is while FreeSWITCH runs the
        // module, whose unload sends `Shutdown`): shut down after the queue.
        let mut gone = commands.is_disconnected() && shutdown_deadline.is_none();
        // Bounded work per wake-up (the queue's size at most), so timers and
        // ACKs are never starved.
        for _ in 0..MAX_COMMANDS {
            // A frame is delivered where it lies in the queue; anything else
            // is taken out of its slot.
            let popped = commands.try_pop_with(|command| match command {
                Command::Frame(frame) => {
                    frames += 1;
                    deliver(&mut live, &mut control, &counters, frame);
                    None
                }
                other => Some(std::mem::take(other)),
            });
            let command = match popped {
                Some(Some(command)) => command,
                Some(None) => continue,
                None if std::mem::take(&mut gone) => Command::Shutdown,
                None => break,
            };
            match command {
                Command::Start {
                    stream: id,
                    start,
                    play,
                } => {
                    let uuid = start.uuid.clone();
                    let mut start = *start;
                    if !start.fallbacks.is_empty() {
                        // The pool's order, with receivers that failed lately last.
                        if let Some(order) = counters.with_health(|h| h.order(&uuid, now)) {
                            if let Some((first, rest)) = order.split_first() {
                                start.target = *first;
                                start.fallbacks = rest.to_vec();
                            }
                        }
                    }
                    let rtp = if start.mode == Mode::Rtp {
                        match rst_net::bind_rtp_pair(start.target, false) {
                            Ok((sockets, ports)) => {
                                start.local_ports = Some(ports);
                                Some(sockets)
                            }
                            Err(error) => {
                                host.socket_error(&uuid, &error);
                                continue;
                            }
                        }
                    } else {
                        None
                    };
                    let mut hex = hex_dir.as_deref().and_then(|dir| open_hex(dir, &uuid));
                    let started = Stream::start(start, now, &mut |via, to, bytes| {
                        send(&mut control, None, &mut hex, &counters, via, to, bytes)
                    });
                    match started {
                        Ok(stream) => {
                            next_due = earliest(next_due, stream.next_timeout());
                            counters.streams_started.fetch_add(1, Relaxed);
                            counters.streams_active.fetch_add(1, Relaxed);
                            control.gathering.add(stream.frames_per_datagram());
                            by_uuid.insert(uuid, id);
                            live.insert(
                                id,
                                Live {
                                    stream,
                                    rtp,
                                    hex,
                                    play: None,
                                    play_later: play,
                                    pieces: Pieces::default(),
                                },
                            );
                        }
                        Err(error) => host.socket_error(&uuid, &io::Error::other(error)),
                    }
                }
                // Delivered in place above.
                Command::Frame(_) => {}
                Command::Dtmf {
                    stream,
                    direction,
                    digit,
                    duration_ms,
                } => {
                    if let Some(entry) = live.get_mut(&stream) {
                        drive(entry, &mut control, &counters, |stream, emit| {
                            stream.dtmf(direction, digit, duration_ms, emit)
                        });
                    }
                }
                Command::Stop { stream } => {
                    if let Some(entry) = live.get_mut(&stream) {
                        finish_play(entry, &mut control, &counters, &host);
                        drive(entry, &mut control, &counters, |stream, emit| {
                            stream.stop(now, emit)
                        });
                        next_due = earliest(next_due, entry.stream.next_timeout());
                    }
                }
                Command::Shutdown => {
                    for entry in live.values_mut() {
                        finish_play(entry, &mut control, &counters, &host);
                        drive(entry, &mut control, &counters, |stream, emit| {
                            stream.stop(now, emit)
                        });
                        next_due = earliest(next_due, entry.stream.next_timeout());
                    }
                    shutdown_deadline.get_or_insert(now + SHUTDOWN_GRACE);
                }
            }
        }

        // ICMP errors first: a receiver with nothing listening moves its calls
        // on at once, without waiting `failover-ms` for an ACK.
        let mut unreachable = Vec::new();
        for socket in control.sockets() {
            rst_net::ErrorQueue::drain(socket, |error| unreachable.push(error));
        }
        for error in unreachable {
            counters.icmp_errors.fetch_add(1, Relaxed);
            for entry in live.values_mut() {
                let trouble = drive(entry, &mut control, &counters, |stream, emit| {
                    stream.unreachable(error.to, now, emit)
                });
                if let Some(trouble) = trouble {
                    count_trouble(&counters, &host, entry, &trouble, now);
                }
                next_due = earliest(next_due, entry.stream.next_timeout());
            }
        }

        // ACKs, and audio back, from the receiver(s).
        acks.clear();
        heard.clear();
        let mut marked = Vec::new();
        for socket in control.sockets() {
            let mut errors = 0;
            loop {
                let (len, from) = match socket.recv_from(&mut ack_buffer) {
                    Ok(received) => received,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // An ICMP error come since the error queue was read: the
                    // datagrams behind it are still there.
                    Err(_) if errors < 16 => {
                        errors += 1;
                        continue;
                    }
                    Err(_) => break,
                };
                let Ok(message) = Message::parse(&ack_buffer[..len]) else {
                    continue;
                };
                let Some(&id) = by_uuid.get(message.uuid().as_str()) else {
                    continue;
                };
                let audio_back = matches!(
                    message,
                    Message::Play(_) | Message::Clear(_) | Message::Mark(_)
                );
                if audio_back {
                    if live.get(&id).is_some_and(|e| e.stream.target() != from) {
                        // Only the call's receiver may speak into it.
                        counters.play.foreign.fetch_add(1, Relaxed);
                        continue;
                    }
                    if let Some(entry) = live.get_mut(&id) {
                        if let Some(later) = entry.play_later.take() {
                            entry.play =
                                host.attach_play(entry.stream.uuid(), &later, &counters.play);
                        }
                    }
                    playing.insert(id);
                }
                match message {
                    Message::Ack(ack) => {
                        counters.acks_received.fetch_add(1, Relaxed);
                        counters.with_health(|h| h.answered(from));
                        acks.push((id, from, ack.rtp_ports));
                    }
                    Message::Live(_) => {
                        counters.lives_received.fetch_add(1, Relaxed);
                        heard.push((id, from));
                    }
                    Message::Play(play) => {
                        if let Some(feed) = live.get_mut(&id).and_then(|e| e.play.as_mut()) {
                            feed.play(&play);
                        }
                    }
                    Message::Clear(_) => {
                        if let Some(feed) = live.get_mut(&id).and_then(|e| e.play.as_mut()) {
                            feed.clear();
                        }
                    }
                    Message::Mark(mark) => {
                        if let Some(feed) = live.get_mut(&id).and_then(|e| e.play.as_mut()) {
                            feed.mark(mark.name(), &mut |event| marked.push((id, event)));
                        }
                    }
                    _ => {}
                }
            }
        }
        // What the media threads played: MARKs back to the receiver, events.
        // Only the calls with audio back in flight are looked at.
        playing.retain(|id| {
            let Some(entry) = live.get_mut(id) else {
                return false;
            };
            let mut events: Vec<PlayEvent> = marked
                .iter()
                .filter(|(of, _)| of == id)
                .map(|(_, event)| event.clone())
                .collect();
            let busy = entry.play.as_mut().is_some_and(|feed| {
                feed.poll(&mut |event| events.push(event));
                !feed.is_idle()
            });
            if !events.is_empty() {
                play_events(entry, &mut control, &counters, &host, events);
            }
            busy
        });
        let mut closed = Vec::new();
        for &(id, from, ports) in &acks {
            if let Some(entry) = live.get_mut(&id) {
                drive(entry, &mut control, &counters, |stream, emit| {
                    stream.ack_from(from, ports, emit)
                });
                if entry.stream.is_closed() {
                    closed.push(id);
                }
            }
        }
        for &(id, from) in &heard {
            if let Some(entry) = live.get_mut(&id) {
                drive(entry, &mut control, &counters, |stream, emit| {
                    stream.live_from(from, now, emit)
                });
                next_due = earliest(next_due, entry.stream.next_timeout());
            }
        }

        let now = Instant::now();
        if next_due.is_some_and(|due| now >= due) {
            next_due = None;
            for (&id, entry) in live.iter_mut() {
                let trouble = drive(entry, &mut control, &counters, |stream, emit| {
                    stream.poll(now, emit)
                });
                if let Some(trouble) = trouble {
                    count_trouble(&counters, &host, entry, &trouble, now);
                }
                if entry.stream.is_closed() {
                    closed.push(id);
                }
                next_due = earliest(next_due, entry.stream.next_timeout());
            }
        }
        // Before any stream (and its RTP sockets) goes: what it queued leaves.
        flush(&mut control, &counters);
        for id in closed {
            if let Some(entry) = live.remove(&id) {
                counters
                    .frames_dropped_waiting
                    .fetch_add(entry.stream.stats.frames_dropped_waiting, Relaxed);
                counters.streams_active.fetch_sub(1, Relaxed);
                control.gathering.remove(entry.stream.frames_per_datagram());
                by_uuid.remove(entry.stream.uuid());
            }
        }
        if let Some(deadline) = shutdown_deadline {
            if live.is_empty() || Instant::now() >= deadline {
                return;
            }
        }
        wait = match (frames, live.is_empty()) {
            (_, true) => Wait::Idle,
            (0, false) => Wait::Quiet,
            _ => Wait::Batch,
        };
    }
}

/// Commands drained per wake-up at most.
const MAX_COMMANDS: usize = 8192;

/// Waits as `wait` says before the next wake-up: until the batch `window`
/// is over, a timer is due, or (when quiet or idle) a control command comes.
/// Frames never wake the thread ([`crate::queue`]): while calls are quiet,
/// one that comes waits [`IDLE_WAIT`] at most.
fn wait_for_work(
    commands: &Consumer<Command>,
    wait: Wait,
    window: Duration,
    next_due: Option<Instant>,
) {
    let until_due = next_due.map(|due| due.saturating_duration_since(Instant::now()));
    match wait {
        // Sleep, whatever comes: each wake-up drains what the window gathered.
        Wait::Batch => std::thread::sleep(until_due.map_or(window, |d| d.min(window))),
        Wait::Quiet => commands.park(Some(until_due.map_or(IDLE_WAIT, |d| d.min(IDLE_WAIT)))),
        // Between calls nothing is due: the thread sleeps until a call starts.
        Wait::Idle => commands.park(until_due),
    }
}

/// Counts a stream's trouble and reports it.
fn count_trouble(
    counters: &Counters,
    host: &impl Host,
    entry: &Live,
    trouble: &Trouble,
    now: Instant,
) {
    match *trouble {
        Trouble::NoAckForInv { .. } => counters.invs_unacknowledged.fetch_add(1, Relaxed),
        Trouble::NoAckForBye { .. } => counters.byes_unacknowledged.fetch_add(1, Relaxed),
        Trouble::FailedOver { from, .. } => {
            counters.with_health(|h| h.failed(from, now));
            counters.failovers.fetch_add(1, Relaxed)
        }
    };
    host.trouble(entry.stream.uuid(), trouble);
}

/// Sends what this wake-up queued, and counts it.
fn flush(control: &mut Control, counters: &Counters) {
    let flushed = control.outbox.flush();
    if flushed.failed > 0 {
        counters.send_errors.fetch_add(flushed.failed, Relaxed);
    }
    let (frames, datagrams) = std::mem::take(&mut control.sent);
    if frames > 0 || datagrams > 0 {
        counters.frames_sent.fetch_add(frames, Relaxed);
        counters.datagrams_sent.fetch_add(datagrams, Relaxed);
    }
}

/// A stream's playback ends: marks never played are reported cleared,
/// before its BYE.
fn finish_play(entry: &mut Live, control: &mut Control, counters: &Counters, host: &impl Host) {
    if let Some(mut feed) = entry.play.take() {
        let mut events = Vec::new();
        feed.finish(&mut |event| events.push(event));
        play_events(entry, control, counters, host, events);
    }
}

/// Playback events of one stream: a mark goes back to the receiver, and
/// every event is reported (log and FreeSWITCH event).
fn play_events(
    entry: &mut Live,
    control: &mut Control,
    counters: &Counters,
    host: &impl Host,
    events: Vec<PlayEvent>,
) {
    for event in events {
        if let PlayEvent::Mark { name, cleared } = &event {
            let wire_name = rst_proto::Extensions::escape(name);
            drive(entry, control, counters, |stream, emit| {
                stream.mark(&wire_name, *cleared, emit)
            });
        }
        host.play(entry.stream.uuid(), &event);
    }
}

fn deliver(
    live: &mut HashMap<StreamId, Live>,
    control: &mut Control,
    counters: &Counters,
    frame: &Frame,
) {
    let Some(entry) = live.get_mut(&frame.stream) else {
        return;
    };
    let mut pieces = std::mem::take(&mut entry.pieces);
    let payload = if frame.is_whole() {
        Some(frame.bytes())
    } else {
        pieces.add(frame)
    };
    if let Some(payload) = payload {
        drive(entry, control, counters, |stream, emit| {
            stream.frame(
                frame.direction,
                frame.payload_type,
                frame.rtp_clock_samples,
                payload,
                emit,
            )
        });
    }
    entry.pieces = pieces;
}

/// Runs `action` on a stream with an `emit` that sends through the right socket.
fn drive<R>(
    entry: &mut Live,
    control: &mut Control,
    counters: &Counters,
    action: impl FnOnce(&mut Stream, &mut dyn FnMut(Via, SocketAddr, &[u8])) -> R,
) -> R {
    let Live {
        stream, rtp, hex, ..
    } = entry;
    // Frames go out from `frame` and, in RTP mode, from `ack` (those held until then).
    let before = (stream.stats.frames_sent, stream.stats.datagrams_sent);
    let gathered = stream.frames_per_datagram();
    let mut emit =
        |via, to, bytes: &[u8]| send(control, rtp.as_ref(), hex, counters, via, to, bytes);
    let result = action(stream, &mut emit);
    control.sent.0 += stream.stats.frames_sent - before.0;
    control.sent.1 += stream.stats.datagrams_sent - before.1;
    let gathers = stream.frames_per_datagram();
    if gathers != gathered {
        control.gathering.remove(gathered);
        control.gathering.add(gathers);
    }
    result
}

/// The module's control sockets, one per address family, made on first use
/// (hearing ICMP errors), and the datagrams queued for this wake-up.
#[derive(Default)]
struct Control {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    outbox: rst_net::Outbox,
    /// Frames and audio datagrams sent this wake-up, counted at its [`flush`]
    /// (an atomic add per frame cost more than the frame's send).
    sent: (u64, u64),
    /// The live streams' frames per datagram, kept in step by [`drive`] (a
    /// LIVE, or the end of its hold, changes a stream's): how long the
    /// thread may sleep.
    gathering: Gathering,
}

impl Control {
    fn sockets(&self) -> impl Iterator<Item = &UdpSocket> {
        self.v4.iter().chain(self.v6.iter())
    }
}

/// Queues a datagram on its socket (sent at the wake-up's end, see
/// [`BATCH_WINDOW`]); with `hex-dir`, writes it to the call's hex file.
fn send(
    control: &mut Control,
    rtp: Option<&[UdpSocket; 2]>,
    hex: &mut Option<io::BufWriter<std::fs::File>>,
    counters: &Counters,
    via: Via,
    to: SocketAddr,
    bytes: &[u8],
) {
    let Control { v4, v6, outbox, .. } = control;
    let slot = if to.is_ipv4() { v4 } else { v6 };
    if slot.is_none() {
        match rst_net::control_socket(to) {
            Ok(socket) => *slot = Some(socket),
            Err(_) => {
                counters.send_errors.fetch_add(1, Relaxed);
                return;
            }
        }
    }
    let Some(control_socket) = slot.as_ref() else {
        return;
    };
    outbox.push(rst_net::route(via, control_socket, rtp), to, bytes);
    if let Some(file) = hex {
        if write_hex(file, bytes).is_err() {
            *hex = None;
        }
    }
}

fn write_hex(file: &mut io::BufWriter<std::fs::File>, bytes: &[u8]) -> io::Result<()> {
    for byte in bytes {
        write!(file, "{byte:02x}")?;
    }
    file.write_all(b"\n")
}

fn open_hex(dir: &str, uuid: &str) -> Option<io::BufWriter<std::fs::File>> {
    // The UUID was validated as a file-name-safe token by Stream::start's checks
    // (rst_proto::Uuid); refuse anything else here too.
    rst_proto::Uuid::new(uuid).ok()?;
    let path = std::path::Path::new(dir).join(format!("{uuid}.hex"));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .ok()
        .map(io::BufWriter::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(commands: &mut Consumer<Command>) -> Vec<Frame> {
        std::iter::from_fn(|| commands.try_pop_with(std::mem::take))
            .map(|command| match command {
                Command::Frame(frame) => frame,
                other => panic!("not a frame: {other:?}"),
            })
            .collect()
    }

    /// What the sender thread makes of queued frames: whole ones as they are,
    /// pieces put together.
    fn whole(frames: &[Frame], pieces: &mut Pieces) -> Vec<Vec<u8>> {
        frames
            .iter()
            .filter_map(|frame| {
                if frame.is_whole() {
                    Some(frame.bytes().to_vec())
                } else {
                    pieces.add(frame).map(<[u8]>::to_vec)
                }
            })
            .collect()
    }

    fn big(seed: u8) -> Vec<u8> {
        (0..MAX_FRAME_BYTES)
            .map(|i| (i % 251) as u8 ^ seed)
            .collect()
    }

    #[test]
    fn the_sender_wakes_as_often_as_the_most_prompt_stream_needs_and_before_the_queue_half_fills() {
        let ms = Duration::from_millis;
        // A stream that sends each frame at once (or none live): the batch window.
        assert_eq!(batch_window(1, 0, ms(10), 4096), BATCH_WINDOW);
        // Every stream gathers three frames: three frames' time.
        assert_eq!(batch_window(3, 0, ms(60), 4096), ms(60));
        assert_eq!(batch_window(3, 600, ms(60), 4096), ms(60));
        // 3,000 frames came in the last 60 ms: half the queue fills in 41 ms.
        let window = batch_window(3, 3000, ms(60), 4096);
        assert!(window < ms(42) && window > ms(40), "{window:?}");
        // The queue was full: wake within half the time it took.
        assert_eq!(batch_window(5, 4096, ms(20), 4096), ms(10));
        // Never a busy loop.
        assert_eq!(batch_window(3, 4096, Duration::ZERO, 4096), ms(1));
    }

    #[test]
    fn the_fewest_frames_per_datagram_of_the_live_streams_are_followed() {
        let mut gathering = Gathering::default();
        assert_eq!(gathering.fewest(), 1, "no stream");
        gathering.add(5);
        gathering.add(3);
        gathering.add(3);
        assert_eq!(gathering.fewest(), 3);
        gathering.remove(3);
        assert_eq!(gathering.fewest(), 3, "one stream of three is still live");
        gathering.remove(3);
        assert_eq!(gathering.fewest(), 5);
        gathering.add(1);
        assert_eq!(gathering.fewest(), 1);
    }

    /// A stream of `frames-per-datagram = auto` goes from three frames a
    /// datagram to one at its receiver's LIVE and back when that ends: the
    /// thread's sleep (`Gathering`) follows, through `drive`.
    #[test]
    fn the_sleep_follows_a_stream_that_its_receiver_says_is_heard() {
        let now = Instant::now();
        let receiver: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let start = StreamStart {
            uuid: "478525a8-8263-4550-b18c-d027d11c9865".into(),
            caller: "1001".into(),
            callee: "1002".into(),
            target: receiver,
            mode: Mode::Data,
            local_ports: None,
            extensions: String::new(),
            fallbacks: Vec::new(),
            failover_after: Duration::from_millis(500),
            retransmit: Duration::from_millis(200),
            tries: 6,
            max_pending: 50,
            seed: 1,
            refresh: None,
            event_clock: 8000,
            frames_per_datagram: crate::config::AUTO_FRAMES,
            live: true,
        };
        let stream = Stream::start(start, now, &mut |_, _, _| {}).unwrap();
        let mut control = Control::default();
        control.gathering.add(stream.frames_per_datagram());
        let mut entry = Live {
            stream,
            rtp: None,
            hex: None,
            play: None,
            play_later: None,
            pieces: Pieces::default(),
        };
        let counters = Counters::default();
        assert_eq!(control.gathering.fewest(), 3);
        drive(&mut entry, &mut control, &counters, |stream, emit| {
            stream.live_from(receiver, now, emit)
        });
        assert_eq!(control.gathering.fewest(), 1, "heard: each frame at once");
        let ended = now + rst_proto::LIVE_HOLDS;
        drive(&mut entry, &mut control, &counters, |stream, emit| {
            stream.poll(ended, emit)
        });
        assert_eq!(
            control.gathering.fewest(),
            3,
            "no LIVE for a while: gathers"
        );
    }

    #[test]
    fn a_frame_over_the_inline_size_goes_in_pieces_and_comes_back_whole() {
        let (sender, mut commands) = channel(16);
        let small = [7u8; 160];
        sender.try_frame(1, Direction::Read, 11, 960, &big(0));
        sender.try_frame(1, Direction::Write, 0, 160, &small);
        sender.try_frame(1, Direction::Write, 11, 960, &big(1));
        let queued = frames(&mut commands);
        assert_eq!(queued.len(), 6 + 1 + 6, "1920 bytes go as 6 pieces of 320");
        assert!(queued.iter().all(|f| f.len as usize <= INLINE_FRAME_BYTES));
        let got = whole(&queued, &mut Pieces::default());
        assert_eq!(got, vec![big(0), small.to_vec(), big(1)]);
        assert_eq!(sender.counters.frames_queued.load(Relaxed), 3);
    }

    #[test]
    fn a_frame_whose_piece_found_the_queue_full_is_lost_whole_and_the_next_is_not() {
        // Room for a small frame and five pieces: the sixth piece is refused.
        let (sender, mut commands) = channel(6);
        sender.try_frame(1, Direction::Read, 0, 160, &[1; 160]);
        sender.try_frame(1, Direction::Read, 11, 960, &big(0));
        assert_eq!(sender.counters.frames_dropped_queue_full.load(Relaxed), 1);
        assert_eq!(sender.counters.frames_queued.load(Relaxed), 1);
        let mut pieces = Pieces::default();
        let first = frames(&mut commands);
        assert_eq!(first.len(), 6);
        assert_eq!(whole(&first, &mut pieces), vec![vec![1; 160]]);
        sender.try_frame(1, Direction::Read, 11, 960, &big(2));
        assert_eq!(whole(&frames(&mut commands), &mut pieces), vec![big(2)]);
    }

    /// `payload`'s pieces, as the queue holds them.
    fn pieces_of(direction: Direction, payload: &[u8]) -> Vec<Frame> {
        Frame::pieces(payload)
            .map(|(offset, piece)| {
                let mut frame = Frame::EMPTY;
                frame.set(1, direction, 11, 960, offset, payload.len(), piece);
                frame
            })
            .collect()
    }

    #[test]
    fn a_piece_after_a_missing_one_is_dropped_and_the_directions_keep_apart() {
        let read = pieces_of(Direction::Read, &big(0));
        let write = pieces_of(Direction::Write, &big(1));
        assert!(read.len() > 2);
        let mut pieces = Pieces::default();
        // Read's second piece is missing; Write's pieces come between Read's.
        let mut whole = Vec::new();
        for (i, (read, write)) in read.iter().zip(&write).enumerate() {
            if i != 1 {
                whole.extend(pieces.add(read).map(<[u8]>::to_vec));
            }
            whole.extend(pieces.add(write).map(<[u8]>::to_vec));
        }
        assert_eq!(whole, vec![big(1)], "Read had a gap: not a frame");
        let again = pieces_of(Direction::Read, &big(3));
        let whole: Vec<Vec<u8>> = again
            .iter()
            .filter_map(|piece| pieces.add(piece).map(<[u8]>::to_vec))
            .collect();
        assert_eq!(whole, vec![big(3)], "the next frame starts afresh");
    }
}
