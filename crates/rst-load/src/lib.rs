//! rst-load: plays N concurrent calls to an rst receiver the way FreeSWITCH's
//! mod_rst does, and measures what the receiver acknowledged.
//!
//! Per call: a random 36-character UUID; `INV :UUID:CALLER:CALLEE`, retransmitted
//! with exponential backoff until `ACK :UUID` comes back (bounded); then one DATA
//! frame per direction (`R` and `W`) every 20 ms, paced in real time (calls are
//! spread evenly over the frame interval, as independent calls would be) or, with
//! [`Config::fast`], as fast as possible (optionally capped at [`Config::rate`]
//! datagrams per second in total); at the end `BYE :UUID`, retransmitted until
//! ACKed (bounded). The payload is a real tone, so recordings can be checked:
//! 1 kHz on `R` and 500 Hz on `W` (see [`g711`]).
//!
//! One UDP socket, connected to the receiver, serves every call: the sender is the
//! calling thread (datagrams go out in `sendmmsg` batches), ACKs are read on a
//! second thread and matched to calls by UUID. An ACK carries only the UUID, so an
//! ACK is credited to the INV until the call's BYE has been sent, and to the BYE
//! after; a call's BYE is only sent once its INV was ACKed or given up on.
//!
//! [`ceiling`] holds a bare counting receiver (`recvmmsg`, batches of 64) and a
//! blaster, for the loopback ceiling; [`prom`] reads a receiver's Prometheus
//! metrics and memory use.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use rst_proto::{Bye, Data, Direction, Extensions, Inv, Message, PayloadType, Uuid};

pub mod ceiling;
pub mod g711;
mod net;
pub mod prom;

/// The audio codec of every DATA frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Codec {
    /// G.711 µ-law, PT 00, 160 bytes per 20 ms.
    #[default]
    Pcmu,
    /// G.711 A-law, PT 08, 160 bytes per 20 ms.
    Pcma,
    /// 16-bit linear PCM at 8 kHz, little-endian, PT 10, 320 bytes per 20 ms.
    L16,
}

impl Codec {
    pub fn payload_type(self) -> PayloadType {
        match self {
            Codec::Pcmu => PayloadType::PCMU,
            Codec::Pcma => PayloadType::PCMA,
            Codec::L16 => PayloadType::L16,
        }
    }

    /// Payload bytes of one 20 ms frame.
    pub fn frame_bytes(self) -> usize {
        match self {
            Codec::Pcmu | Codec::Pcma => g711::FRAME_SAMPLES,
            Codec::L16 => 2 * g711::FRAME_SAMPLES,
        }
    }

    /// One 20 ms frame of a `hz` tone in this codec.
    pub fn frame(self, hz: u32) -> Vec<u8> {
        let tone = g711::tone_frame(hz);
        match self {
            Codec::Pcmu => tone.iter().map(|&s| g711::linear_to_ulaw(s)).collect(),
            Codec::Pcma => tone.iter().map(|&s| g711::linear_to_alaw(s)).collect(),
            Codec::L16 => tone.iter().flat_map(|s| s.to_le_bytes()).collect(),
        }
    }
}

/// What to play.
#[derive(Debug, Clone)]
pub struct Config {
    /// The receiver.
    pub target: SocketAddr,
    /// Concurrent calls.
    pub calls: usize,
    /// How long the calls send audio: in real time, `duration / interval` frames
    /// per direction; with `fast`, the wall-clock time spent sending.
    pub duration: Duration,
    /// Frames per direction per call, instead of what `duration` gives.
    pub frames: Option<u64>,
    /// Time between a call's frames in real time (20 ms, as FreeSWITCH sends).
    pub interval: Duration,
    /// Send as fast as possible instead of in real time.
    pub fast: bool,
    /// With `fast`: at most this many datagrams per second in total.
    pub rate: Option<u64>,
    pub codec: Codec,
    /// First INV/BYE retransmission timeout; it doubles on each retransmission.
    pub rto: Duration,
    /// Retransmissions of an INV or BYE before it counts as lost.
    pub retries: u32,
    /// Print a progress line to stderr every second.
    pub progress: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            target: (std::net::Ipv4Addr::LOCALHOST, rst_proto::DEFAULT_PORT).into(),
            calls: 10,
            duration: Duration::from_secs(10),
            frames: None,
            interval: Duration::from_millis(20),
            fast: false,
            rate: None,
            codec: Codec::Pcmu,
            rto: Duration::from_millis(200),
            retries: 4,
            progress: false,
        }
    }
}

/// What a run sent and what came back.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Report {
    pub calls: u64,
    /// INV datagrams sent, retransmissions included.
    pub inv_sent: u64,
    pub data_sent: u64,
    /// BYE datagrams sent, retransmissions included.
    pub bye_sent: u64,
    pub inv_retransmits: u64,
    pub bye_retransmits: u64,
    /// Calls whose INV was acknowledged.
    pub inv_acked: u64,
    /// Calls whose BYE was acknowledged.
    pub bye_acked: u64,
    /// Calls whose INV was never acknowledged despite every retransmission.
    pub inv_lost: u64,
    /// Calls whose BYE was never acknowledged despite every retransmission.
    pub bye_lost: u64,
    /// Every datagram that came back.
    pub acks_received: u64,
    /// ACKs for an INV or BYE already acknowledged (answers to retransmissions).
    pub acks_duplicate: u64,
    /// Datagrams that came back but are no ACK for one of our calls.
    pub acks_unexpected: u64,
    /// Datagrams the kernel refused to send.
    pub send_errors: u64,
    /// The whole run, first INV to last ACK (or giving up).
    pub elapsed: Duration,
    /// First to last DATA.
    pub data_elapsed: Duration,
}

impl Report {
    pub fn datagrams_sent(&self) -> u64 {
        self.inv_sent + self.data_sent + self.bye_sent
    }

    /// Unacknowledged INVs and BYEs.
    pub fn lost(&self) -> u64 {
        self.inv_lost + self.bye_lost
    }

    /// DATA datagrams per second while the audio was flowing.
    pub fn data_rate(&self) -> f64 {
        self.data_sent as f64 / self.data_elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "calls             : {}", self.calls)?;
        writeln!(
            f,
            "datagrams sent    : {} (INV {}, DATA {}, BYE {})",
            self.datagrams_sent(),
            self.inv_sent,
            self.data_sent,
            self.bye_sent
        )?;
        writeln!(
            f,
            "retransmissions   : INV {}, BYE {}",
            self.inv_retransmits, self.bye_retransmits
        )?;
        writeln!(
            f,
            "acknowledged      : INV {}/{}, BYE {}/{}",
            self.inv_acked, self.calls, self.bye_acked, self.calls
        )?;
        writeln!(
            f,
            "lost (no ACK)     : {} (INV {}, BYE {})",
            self.lost(),
            self.inv_lost,
            self.bye_lost
        )?;
        writeln!(
            f,
            "datagrams back    : {} ({} duplicate ACKs, {} unexpected)",
            self.acks_received, self.acks_duplicate, self.acks_unexpected
        )?;
        writeln!(f, "send errors       : {}", self.send_errors)?;
        writeln!(
            f,
            "data rate         : {:.0} datagrams/s over {:.3} s",
            self.data_rate(),
            self.data_elapsed.as_secs_f64()
        )?;
        write!(f, "elapsed           : {:.3} s", self.elapsed.as_secs_f64())
    }
}

/// Counters of a run in progress, readable from other threads (for progress
/// reports, or to measure the receiver while the calls are up).
#[derive(Debug, Default)]
pub struct Live {
    inv_sent: AtomicU64,
    data_sent: AtomicU64,
    bye_sent: AtomicU64,
    inv_retransmits: AtomicU64,
    bye_retransmits: AtomicU64,
    inv_acked: AtomicU64,
    bye_acked: AtomicU64,
    inv_lost: AtomicU64,
    bye_lost: AtomicU64,
    acks_received: AtomicU64,
    acks_duplicate: AtomicU64,
    acks_unexpected: AtomicU64,
    send_errors: AtomicU64,
    calls: AtomicU64,
}

impl Live {
    /// The counters now (`elapsed` and `data_elapsed` left at zero).
    pub fn snapshot(&self) -> Report {
        Report {
            calls: self.calls.load(Relaxed),
            inv_sent: self.inv_sent.load(Relaxed),
            data_sent: self.data_sent.load(Relaxed),
            bye_sent: self.bye_sent.load(Relaxed),
            inv_retransmits: self.inv_retransmits.load(Relaxed),
            bye_retransmits: self.bye_retransmits.load(Relaxed),
            inv_acked: self.inv_acked.load(Relaxed),
            bye_acked: self.bye_acked.load(Relaxed),
            inv_lost: self.inv_lost.load(Relaxed),
            bye_lost: self.bye_lost.load(Relaxed),
            acks_received: self.acks_received.load(Relaxed),
            acks_duplicate: self.acks_duplicate.load(Relaxed),
            acks_unexpected: self.acks_unexpected.load(Relaxed),
            send_errors: self.send_errors.load(Relaxed),
            elapsed: Duration::ZERO,
            data_elapsed: Duration::ZERO,
        }
    }
}

/// A random RFC 4122 version 4 style id: 36 characters, lowercase hex and dashes.
pub fn random_uuid() -> String {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut state = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ SEQUENCE.fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed);
    let high = splitmix64(&mut state);
    let low = splitmix64(&mut state);
    let bits =
        (u128::from(high) << 64 | u128::from(low)) & !(0xF000u128 << 64) | (0x4000u128 << 64); // version 4
    let bits = bits & !(0xC000u128 << 48) | (0x8000u128 << 48); // RFC 4122 variant
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Plays the calls `config` describes and reports.
pub fn run(config: &Config) -> anyhow::Result<Report> {
    run_with(config, &Live::default())
}

/// Like [`run`], updating `live` as it goes.
pub fn run_with(config: &Config, live: &Live) -> anyhow::Result<Report> {
    anyhow::ensure!(config.calls > 0, "at least one call is needed");
    anyhow::ensure!(!config.interval.is_zero(), "the frame interval must be > 0");
    anyhow::ensure!(
        !config.rto.is_zero(),
        "the retransmission timeout must be > 0"
    );
    if let Some(rate) = config.rate {
        anyhow::ensure!(rate > 0, "the rate must be > 0");
        anyhow::ensure!(config.fast, "a rate cap only applies to fast mode");
    }

    let calls: Vec<Call> = (0..config.calls)
        .map(|i| Call::new(i, config.codec))
        .collect::<anyhow::Result<_>>()?;
    let index: HashMap<&str, usize> = calls
        .iter()
        .enumerate()
        .map(|(i, call)| (call.uuid.as_str(), i))
        .collect();
    anyhow::ensure!(index.len() == calls.len(), "duplicate call ids generated");
    let state: Vec<CallState> = (0..calls.len()).map(|_| CallState::default()).collect();
    live.calls.store(calls.len() as u64, Relaxed);

    let socket = net::connect(config.target)
        .with_context(|| format!("cannot open a UDP socket to {}", config.target))?;
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    let finished = AtomicBool::new(false);
    let start = Instant::now();

    let timing = std::thread::scope(|scope| {
        scope.spawn(|| receive_acks(&socket, &index, &state, live, &finished));
        if config.progress {
            scope.spawn(|| progress(start, live, &finished));
        }
        let timing = play(config, &calls, &state, &socket, live, start);
        finished.store(true, Relaxed);
        timing
    });

    let mut report = live.snapshot();
    report.elapsed = start.elapsed();
    report.data_elapsed = timing.data_elapsed;
    Ok(report)
}

/// One call's datagrams, built once: the audio repeats every frame.
struct Call {
    uuid: String,
    inv: Vec<u8>,
    bye: Vec<u8>,
    /// DATA for R and W.
    frames: [Vec<u8>; 2],
}

impl Call {
    fn new(i: usize, codec: Codec) -> anyhow::Result<Call> {
        let uuid = random_uuid();
        let id = Uuid::new(&uuid)?;
        let caller = format!("{}", 1000 + i);
        let callee = format!("{}", 500_000 + i);
        let inv = Message::Inv(Inv {
            uuid: id,
            caller: &caller,
            callee: &callee,
            rtp_ports: None,
            extensions: Extensions::NONE,
        })
        .to_vec()?;
        let bye = Message::Bye(Bye { uuid: id }).to_vec()?;
        let frame = |direction: Direction, hz: u32| {
            let payload = codec.frame(hz);
            let mut datagram = Vec::with_capacity(64 + payload.len());
            Data::encode_header(
                id,
                direction,
                codec.payload_type(),
                payload.len(),
                &mut datagram,
            );
            datagram.extend_from_slice(&payload);
            datagram
        };
        let frames = [
            frame(Direction::Read, g711::TONE_HZ_READ),
            frame(Direction::Write, g711::TONE_HZ_WRITE),
        ];
        Ok(Call {
            uuid,
            inv,
            bye,
            frames,
        })
    }
}

#[derive(Debug, Default)]
struct CallState {
    inv_acked: AtomicBool,
    /// Set just before the first BYE goes out: from then on an ACK is the BYE's.
    bye_sent: AtomicBool,
    bye_acked: AtomicBool,
}

fn receive_acks(
    socket: &UdpSocket,
    index: &HashMap<&str, usize>,
    state: &[CallState],
    live: &Live,
    finished: &AtomicBool,
) {
    let mut buffer = [0u8; 2048];
    while !finished.load(Relaxed) {
        let Ok(len) = socket.recv(&mut buffer) else {
            // Timeouts, and "connection refused" while nobody listens yet.
            continue;
        };
        live.acks_received.fetch_add(1, Relaxed);
        let call = match Message::parse(&buffer[..len]) {
            Ok(Message::Ack(ack)) => index.get(ack.uuid.as_str()).map(|&i| &state[i]),
            _ => None,
        };
        let Some(call) = call else {
            live.acks_unexpected.fetch_add(1, Relaxed);
            continue;
        };
        let (flag, counter) = if call.bye_sent.load(SeqCst) {
            (&call.bye_acked, &live.bye_acked)
        } else {
            (&call.inv_acked, &live.inv_acked)
        };
        if flag.swap(true, SeqCst) {
            live.acks_duplicate.fetch_add(1, Relaxed);
        } else {
            counter.fetch_add(1, Relaxed);
        }
    }
}

fn progress(start: Instant, live: &Live, finished: &AtomicBool) {
    let mut next = start + Duration::from_secs(1);
    let mut last_data = 0;
    while !finished.load(Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(100)));
            continue;
        }
        next += Duration::from_secs(1);
        let r = live.snapshot();
        eprintln!(
            "rst-load {:>4.0}s: INV acked {}/{}  DATA {} (+{}/s)  BYE acked {}/{}  lost {}  send errors {}",
            start.elapsed().as_secs_f64(),
            r.inv_acked,
            r.calls,
            r.data_sent,
            r.data_sent - last_data,
            r.bye_acked,
            r.calls,
            r.lost(),
            r.send_errors
        );
        last_data = r.data_sent;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Inv,
    Data,
    Bye,
}

/// Datagrams waiting for the next `sendmmsg`, with the rate cap.
struct Out<'a> {
    socket: &'a UdpSocket,
    live: &'a Live,
    pending: Vec<&'a [u8]>,
    kinds: Vec<Kind>,
    pacer: Option<Pacer>,
    first_data: Option<Instant>,
    last_data: Option<Instant>,
}

impl<'a> Out<'a> {
    fn push(&mut self, datagram: &'a [u8], kind: Kind) {
        self.pending.push(datagram);
        self.kinds.push(kind);
        if self.pending.len() >= net::BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if let Some(pacer) = &mut self.pacer {
            pacer.wait(self.pending.len() as u64);
        }
        let mut sent = [0u64; 3];
        let kinds = &self.kinds;
        let result = net::send_batch(self.socket, &self.pending, |i| {
            sent[kinds[i] as usize] += 1;
        });
        self.live.inv_sent.fetch_add(sent[0], Relaxed);
        self.live.data_sent.fetch_add(sent[1], Relaxed);
        self.live.bye_sent.fetch_add(sent[2], Relaxed);
        if result.errors > 0 {
            self.live
                .send_errors
                .fetch_add(result.errors as u64, Relaxed);
        }
        if sent[1] > 0 {
            let now = Instant::now();
            self.first_data.get_or_insert(now);
            self.last_data = Some(now);
        }
        self.pending.clear();
        self.kinds.clear();
    }
}

/// Spaces batches so the total rate stays at or below the cap, allowing a short
/// burst to catch up after a late wake-up but no more.
struct Pacer {
    per_datagram: f64,
    base: Instant,
    count: u64,
    burst: Duration,
}

impl Pacer {
    fn new(rate: u64) -> Pacer {
        let per_datagram = 1.0 / rate as f64;
        Pacer {
            per_datagram,
            base: Instant::now(),
            count: 0,
            burst: Duration::from_secs_f64(per_datagram * net::BATCH as f64)
                .max(Duration::from_millis(1)),
        }
    }

    fn wait(&mut self, datagrams: u64) {
        let due = self.base + Duration::from_secs_f64(self.count as f64 * self.per_datagram);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > self.burst {
            // Fell behind: forget the credit beyond one burst.
            self.base += now - due - self.burst;
        }
        self.count += datagrams;
    }
}

/// INV/BYE retransmission with exponential backoff, and the calls waiting to send
/// their BYE until their INV is settled.
struct Control {
    rto: Duration,
    retries: u32,
    /// (due, call, kind, datagrams sent so far)
    timers: BinaryHeap<Reverse<(Instant, usize, Kind, u32)>>,
    inv_lost: Vec<bool>,
    waiting_for_bye: Vec<usize>,
}

impl Control {
    fn sent(&mut self, now: Instant, call: usize, kind: Kind) {
        self.timers.push(Reverse((now + self.rto, call, kind, 1)));
    }

    fn acked(&self, state: &[CallState], call: usize, kind: Kind) -> bool {
        match kind {
            Kind::Inv => state[call].inv_acked.load(SeqCst),
            Kind::Bye => state[call].bye_acked.load(SeqCst),
            Kind::Data => true,
        }
    }

    fn service<'a>(
        &mut self,
        now: Instant,
        out: &mut Out<'a>,
        calls: &'a [Call],
        state: &[CallState],
    ) {
        while let Some(&Reverse((due, call, kind, sends))) = self.timers.peek() {
            if due > now {
                break;
            }
            self.timers.pop();
            if self.acked(state, call, kind) {
                continue;
            }
            let live = out.live;
            if sends > self.retries {
                if kind == Kind::Inv {
                    self.inv_lost[call] = true;
                    live.inv_lost.fetch_add(1, Relaxed);
                } else {
                    live.bye_lost.fetch_add(1, Relaxed);
                }
                continue;
            }
            let (datagram, counter) = match kind {
                Kind::Inv => (&calls[call].inv, &live.inv_retransmits),
                _ => (&calls[call].bye, &live.bye_retransmits),
            };
            out.push(datagram, kind);
            counter.fetch_add(1, Relaxed);
            let backoff = self.rto.saturating_mul(1 << sends.min(16));
            self.timers
                .push(Reverse((now + backoff, call, kind, sends + 1)));
        }
        let mut waiting = std::mem::take(&mut self.waiting_for_bye);
        waiting.retain(|&call| {
            if !(state[call].inv_acked.load(SeqCst) || self.inv_lost[call]) {
                return true;
            }
            state[call].bye_sent.store(true, SeqCst);
            out.push(&calls[call].bye, Kind::Bye);
            self.sent(now, call, Kind::Bye);
            false
        });
        self.waiting_for_bye = waiting;
    }

    /// Nothing left to send or wait for.
    fn done(&self, state: &[CallState]) -> bool {
        self.waiting_for_bye.is_empty()
            && self
                .timers
                .iter()
                .all(|Reverse((_, call, kind, _))| self.acked(state, *call, *kind))
    }

    fn next_due(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((due, ..))| *due)
    }
}

struct Timing {
    data_elapsed: Duration,
}

/// The sender: INVs, paced DATA, BYEs, retransmissions.
fn play(
    config: &Config,
    calls: &[Call],
    state: &[CallState],
    socket: &UdpSocket,
    live: &Live,
    start: Instant,
) -> Timing {
    let n = calls.len();
    let mut out = Out {
        socket,
        live,
        pending: Vec::with_capacity(net::BATCH),
        kinds: Vec::with_capacity(net::BATCH),
        pacer: config.rate.filter(|_| config.fast).map(Pacer::new),
        first_data: None,
        last_data: None,
    };
    let mut control = Control {
        rto: config.rto,
        retries: config.retries,
        timers: BinaryHeap::new(),
        inv_lost: vec![false; n],
        waiting_for_bye: Vec::new(),
    };
    let frames = config.frames.or_else(|| {
        (!config.fast).then(|| {
            let frames = config
                .duration
                .as_nanos()
                .div_ceil(config.interval.as_nanos());
            (frames as u64).max(1)
        })
    });
    let deadline = start + config.duration;
    let service_every = Duration::from_millis(5);
    let mut next_service = start + service_every;
    let slack = Duration::from_millis(1);

    'frames: for k in 0u64.. {
        if frames.is_some_and(|frames| k >= frames) {
            break;
        }
        for (i, call) in calls.iter().enumerate() {
            let mut now = Instant::now();
            if config.fast {
                if frames.is_none() && now >= deadline {
                    break 'frames;
                }
            } else {
                // Call i's frames are due at start + phase_i + k * interval.
                let phase = config.interval.mul_f64(i as f64 / n as f64);
                let due = start + phase + config.interval.saturating_mul(k as u32);
                while due > now + slack {
                    out.flush();
                    control.service(now, &mut out, calls, state);
                    out.flush();
                    std::thread::sleep((due - now).min(service_every));
                    now = Instant::now();
                }
            }
            if k == 0 {
                out.push(&call.inv, Kind::Inv);
                control.sent(now, i, Kind::Inv);
            }
            out.push(&call.frames[0], Kind::Data);
            out.push(&call.frames[1], Kind::Data);
            if frames == Some(k + 1) {
                control.waiting_for_bye.push(i);
            }
            if now >= next_service {
                next_service = now + service_every;
                control.service(now, &mut out, calls, state);
            }
        }
    }
    out.flush();

    // Every call not ended yet (fast mode on a deadline) ends now.
    let ended: Vec<bool> = {
        let mut ended = vec![false; n];
        for &call in &control.waiting_for_bye {
            ended[call] = true;
        }
        ended
    };
    if frames.is_none() {
        control
            .waiting_for_bye
            .extend((0..n).filter(|&call| !ended[call]));
    }
    // The BYEs are not paced.
    out.pacer = None;
    loop {
        let now = Instant::now();
        control.service(now, &mut out, calls, state);
        out.flush();
        if control.done(state) {
            break;
        }
        let wake = control
            .next_due()
            .map_or(now + slack, |due| due.min(now + slack * 2));
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
    }
    // ACKs for the last BYEs may be a moment behind `done`, which only sees
    // acknowledged calls; nothing else to wait for.
    Timing {
        data_elapsed: match (out.first_data, out.last_data) {
            (Some(first), Some(last)) => last - first,
            _ => Duration::ZERO,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_look_like_freeswitch_ones() {
        let a = random_uuid();
        let b = random_uuid();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        for (i, c) in a.chars().enumerate() {
            if [8, 13, 18, 23].contains(&i) {
                assert_eq!(c, '-');
            } else {
                assert!(c.is_ascii_hexdigit() && !c.is_ascii_uppercase(), "{a}");
            }
        }
        assert_eq!(&a[14..15], "4");
        assert!(Uuid::new(&a).is_ok());
    }

    #[test]
    fn frames_have_the_codec_sizes_and_parse() {
        for (codec, len, pt) in [
            (Codec::Pcmu, 160, "00"),
            (Codec::Pcma, 160, "08"),
            (Codec::L16, 320, "10"),
        ] {
            let call = Call::new(0, codec).unwrap();
            for (datagram, flag) in call.frames.iter().zip([Direction::Read, Direction::Write]) {
                let Ok(Message::Data(data)) = Message::parse(datagram) else {
                    panic!("not DATA");
                };
                assert_eq!(data.payload.len(), len);
                assert_eq!(data.direction, flag);
                assert_eq!(data.payload_type.to_string(), pt);
                assert_eq!(data.uuid.as_str(), call.uuid);
            }
            assert!(matches!(Message::parse(&call.inv), Ok(Message::Inv(_))));
            assert!(matches!(Message::parse(&call.bye), Ok(Message::Bye(_))));
        }
    }

    #[test]
    fn l16_is_little_endian() {
        let frame = Codec::L16.frame(g711::TONE_HZ_READ);
        let tone = g711::tone_frame(g711::TONE_HZ_READ);
        assert_eq!(i16::from_le_bytes([frame[2], frame[3]]), tone[1]);
    }
}
