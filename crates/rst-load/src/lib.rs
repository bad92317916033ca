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
//! In RTP mode ([`Mode::Rtp`]) each call also has two UDP sockets of its own, R
//! and W; its INV names their ports (`INV :UUID:CALLER:CALLEE:READ_PORT:WRITE_PORT`)
//! and the receiver's `ACK :UUID:SERVER_READ_PORT:SERVER_WRITE_PORT` says where the
//! audio goes. Every INV is sent (and retransmitted) first; once each is answered
//! or given up on, the audio starts: RFC 3550 RTP, one SSRC per direction (random,
//! as are the first sequence number and timestamp), the sequence number +1 and the
//! timestamp +160 per 20 ms frame, from the R socket to SERVER_READ_PORT and from
//! the W socket to SERVER_WRITE_PORT (in fast mode a few frames per socket go in
//! one `sendmmsg`). BYE as in DATA mode. Two sockets per call need file
//! descriptors: [`run`] raises the soft `RLIMIT_NOFILE` to the hard limit first.
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
use rst_net::batch as net;
use rst_proto::{
    rtp::RTP_HEADER_LEN, Bye, Data, Direction, Extensions, Inv, Message, PayloadType, RtpPacket,
    RtpPorts, Uuid,
};

pub mod ceiling;
pub mod g711;
pub mod prom;
pub mod results;

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

    /// The RTP payload type: PCMU 0 and PCMA 8 (static), L16 the dynamic 96,
    /// declared in the INV by [`Codec::rtp_extensions`].
    pub fn rtp_payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
            Codec::L16 => rst_proto::stream::RTP_L16_PAYLOAD_TYPE,
        }
    }

    /// The INV extension an RTP-mode call needs for this codec (empty for static types).
    pub fn rtp_extensions(self) -> String {
        match self {
            Codec::Pcmu | Codec::Pcma => String::new(),
            Codec::L16 => rst_proto::ExtensionsBuilder::new()
                .payload_type(self.rtp_payload_type(), "L16", 8000)
                .build(),
        }
    }

    /// One 20 ms RTP payload of a `hz` tone: as [`Codec::frame`], but L16 is
    /// big-endian in RTP (RFC 3551).
    pub fn rtp_frame(self, hz: u32) -> Vec<u8> {
        match self {
            Codec::L16 => g711::tone_frame(hz)
                .iter()
                .flat_map(|s| s.to_be_bytes())
                .collect(),
            _ => self.frame(hz),
        }
    }
}

/// How the audio travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// `DATA` datagrams on the control socket.
    #[default]
    Data,
    /// RFC 3550 RTP from two sockets per call to the ports the receiver's ACK names.
    Rtp,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Data => "data",
            Mode::Rtp => "rtp",
        })
    }
}

/// RTP frames per socket in one `sendmmsg` in fast mode: fewer system calls
/// per packet, so that the receiver, not rst-load, is what a benchmark finds
/// the limit of.
const RTP_BURST: usize = 32;

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
    /// DATA datagrams or RTP.
    pub mode: Mode,
    /// RTP mode: leave out every Nth frame of each direction (frames N-1,
    /// 2N-1, ...), as a lossy network would; the receiver counts them lost.
    pub drop_every: Option<u64>,
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
            mode: Mode::Data,
            drop_every: None,
            rto: Duration::from_millis(200),
            retries: 4,
            progress: false,
        }
    }
}

/// What a run sent and what came back.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Report {
    pub mode: Mode,
    pub calls: u64,
    /// INV datagrams sent, retransmissions included.
    pub inv_sent: u64,
    pub data_sent: u64,
    /// RTP packets sent (RTP mode), both directions.
    pub rtp_sent: u64,
    /// RTP mode: calls whose INV was answered by an ACK without ports (a receiver
    /// that does not do RTP mode); they send no audio.
    pub rtp_no_ports: u64,
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
    /// Every datagram: INV, DATA, RTP and BYE.
    pub fn datagrams_sent(&self) -> u64 {
        self.inv_sent + self.data_sent + self.rtp_sent + self.bye_sent
    }

    /// Audio datagrams: DATA or RTP packets.
    pub fn audio_sent(&self) -> u64 {
        self.data_sent + self.rtp_sent
    }

    /// Unacknowledged INVs and BYEs.
    pub fn lost(&self) -> u64 {
        self.inv_lost + self.bye_lost
    }

    /// Audio datagrams (DATA or RTP) per second while the audio was flowing.
    pub fn data_rate(&self) -> f64 {
        self.audio_sent() as f64 / self.data_elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "calls             : {} ({} mode)", self.calls, self.mode)?;
        let audio = match self.mode {
            Mode::Data => format!("DATA {}", self.data_sent),
            Mode::Rtp => format!("RTP {}", self.rtp_sent),
        };
        writeln!(
            f,
            "datagrams sent    : {} (INV {}, {audio}, BYE {})",
            self.datagrams_sent(),
            self.inv_sent,
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
        if self.mode == Mode::Rtp {
            writeln!(f, "ACKs without ports: {}", self.rtp_no_ports)?;
        }
        writeln!(f, "send errors       : {}", self.send_errors)?;
        writeln!(
            f,
            "audio rate        : {:.0} datagrams/s over {:.3} s",
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
    rtp_sent: AtomicU64,
    rtp_no_ports: AtomicU64,
    rtp_mode: AtomicBool,
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
    /// Set by [`Live::stop`]: the calls stop sending and say BYE.
    stop: AtomicBool,
}

impl Live {
    /// Ends the run early: no more audio, every call says BYE (real-time
    /// runs whose length a test cannot know in advance).
    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
    }

    /// The counters now (`elapsed` and `data_elapsed` left at zero).
    pub fn snapshot(&self) -> Report {
        Report {
            mode: if self.rtp_mode.load(Relaxed) {
                Mode::Rtp
            } else {
                Mode::Data
            },
            calls: self.calls.load(Relaxed),
            inv_sent: self.inv_sent.load(Relaxed),
            data_sent: self.data_sent.load(Relaxed),
            rtp_sent: self.rtp_sent.load(Relaxed),
            rtp_no_ports: self.rtp_no_ports.load(Relaxed),
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

    live.rtp_mode.store(config.mode == Mode::Rtp, Relaxed);
    if config.mode == Mode::Rtp {
        // Two sockets per call, plus the control socket and a few spare.
        let needed = 2 * config.calls as u64 + 64;
        let limit = raise_fd_limit().context("cannot read RLIMIT_NOFILE")?;
        anyhow::ensure!(
            limit >= needed,
            "{} RTP-mode calls need about {needed} file descriptors, but the limit is {limit} \
             (raise the hard limit, e.g. `ulimit -Hn`, or play fewer calls)",
            config.calls
        );
    }
    let calls: Vec<Call> = (0..config.calls)
        .map(|i| Call::new(i, config))
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

/// Raises the limit on open files to at least `wanted` where allowed (root may
/// raise the hard limit too), else as [`raise_fd_limit`]; returns the soft
/// limit now in force. Children started afterwards inherit it.
#[cfg(unix)]
pub fn raise_fd_limit_to(wanted: u64) -> std::io::Result<u64> {
    let wanted = wanted as libc::rlim_t;
    // SAFETY: rlimit is a plain C struct; all-zero is a valid value.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_max < wanted {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: wanted,
        };
        // SAFETY: `raised` is a valid rlimit; setrlimit only reads it. Without
        // the privilege it is refused, and the hard limit stays.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(wanted as u64);
        }
    }
    raise_fd_limit()
}

/// Raises the limit on open files: nothing to do off Unix.
#[cfg(not(unix))]
pub fn raise_fd_limit_to(_wanted: u64) -> std::io::Result<u64> {
    Ok(u64::MAX)
}

/// Raises the soft limit on open files (`RLIMIT_NOFILE`) to the hard limit, and
/// returns the soft limit now in force.
#[cfg(unix)]
pub fn raise_fd_limit() -> std::io::Result<u64> {
    // SAFETY: rlimit is a plain C struct; all-zero is a valid value.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; setrlimit only reads it. A refusal
        // (an unlimited hard limit above the kernel's nr_open) leaves the old limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Ok(limit.rlim_cur as u64)
}

/// Raises the soft limit on open files: nothing to do off Unix.
#[cfg(not(unix))]
pub fn raise_fd_limit() -> std::io::Result<u64> {
    Ok(u64::MAX)
}

/// One call's datagrams, built once: the audio repeats every frame.
struct Call {
    uuid: String,
    inv: Vec<u8>,
    bye: Vec<u8>,
    /// DATA for R and W (DATA mode only).
    frames: [Vec<u8>; 2],
    /// RTP mode: the R and W sockets and their packets.
    legs: Option<[Leg; 2]>,
}

/// One direction of an RTP-mode call.
#[derive(Debug)]
struct Leg {
    socket: UdpSocket,
    /// The first packet (marker unset); later ones differ only in their sequence
    /// number and timestamp.
    packet: Vec<u8>,
    sequence: u16,
    timestamp: u32,
}

impl Leg {
    fn new(target: SocketAddr, codec: Codec, hz: u32, seed: &mut u64) -> anyhow::Result<Leg> {
        let socket =
            UdpSocket::bind(rst_net::any_for(target)).context("cannot open an RTP socket")?;
        let random = splitmix64(seed);
        let sequence = random as u16;
        let timestamp = (random >> 16) as u32;
        let ssrc = splitmix64(seed) as u32;
        let payload = codec.rtp_frame(hz);
        let mut packet = Vec::with_capacity(RTP_HEADER_LEN + payload.len());
        RtpPacket {
            marker: false,
            payload_type: codec.rtp_payload_type(),
            sequence,
            timestamp,
            ssrc,
            payload: &payload,
        }
        .encode(&mut packet);
        Ok(Leg {
            socket,
            packet,
            sequence,
            timestamp,
        })
    }

    fn port(&self) -> anyhow::Result<u16> {
        Ok(self.socket.local_addr()?.port())
    }

    /// Frame `k` (from 0) into `out`: sequence + k, timestamp + 160 k, the marker
    /// on the first (the start of a talkspurt, RFC 3551).
    fn frame(&self, k: u64, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.packet);
        if k == 0 {
            out[1] |= 0x80;
        }
        let sequence = self.sequence.wrapping_add(k as u16);
        let timestamp = self
            .timestamp
            .wrapping_add((k as u32).wrapping_mul(g711::FRAME_SAMPLES as u32));
        out[2..4].copy_from_slice(&sequence.to_be_bytes());
        out[4..8].copy_from_slice(&timestamp.to_be_bytes());
    }

    /// Sends frames `k .. k + count` (at most [`RTP_BURST`]); returns how many the
    /// kernel took and how many failed.
    fn send(
        &self,
        k: u64,
        count: usize,
        drop_every: Option<u64>,
        scratch: &mut [Vec<u8>; RTP_BURST],
    ) -> net::Sent {
        let count = count.min(RTP_BURST);
        let dropped = |k: u64| drop_every.is_some_and(|n| n > 0 && (k + 1) % n == 0);
        if count == 1 {
            if dropped(k) {
                return net::Sent { sent: 0, errors: 0 };
            }
            self.frame(k, &mut scratch[0]);
            return match self.socket.send(&scratch[0]) {
                Ok(_) => net::Sent { sent: 1, errors: 0 },
                // A connected UDP socket reports an earlier ICMP error on the next
                // send: once more, as `send_batch` does.
                Err(_) => match self.socket.send(&scratch[0]) {
                    Ok(_) => net::Sent { sent: 1, errors: 1 },
                    Err(_) => net::Sent { sent: 0, errors: 2 },
                },
            };
        }
        let kept: Vec<u64> = (k..k + count as u64).filter(|&k| !dropped(k)).collect();
        for (&k, buffer) in kept.iter().zip(scratch.iter_mut()) {
            self.frame(k, buffer);
        }
        let mut batch: [&[u8]; RTP_BURST] = [&[]; RTP_BURST];
        for (slot, buffer) in batch.iter_mut().zip(scratch.iter()) {
            *slot = buffer;
        }
        net::send_batch(&self.socket, &batch[..kept.len()], |_| {})
    }
}

impl Call {
    fn new(i: usize, config: &Config) -> anyhow::Result<Call> {
        let codec = config.codec;
        let uuid = random_uuid();
        let id = Uuid::new(&uuid)?;
        let caller = format!("{}", 1000 + i);
        let callee = format!("{}", 500_000 + i);
        let legs = match config.mode {
            Mode::Data => None,
            Mode::Rtp => {
                // SSRCs, first sequence numbers and timestamps from the (random) UUID.
                let mut seed = uuid.bytes().fold(0xCBF2_9CE4_8422_2325, |hash, byte| {
                    (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01B3)
                });
                Some([
                    Leg::new(config.target, codec, g711::TONE_HZ_READ, &mut seed)?,
                    Leg::new(config.target, codec, g711::TONE_HZ_WRITE, &mut seed)?,
                ])
            }
        };
        let rtp_ports = match &legs {
            Some([read, write]) => Some(RtpPorts {
                read: read.port()?,
                write: write.port()?,
            }),
            None => None,
        };
        let declared = codec.rtp_extensions();
        let extensions = match legs {
            Some(_) => Extensions::parse(&declared)?,
            None => Extensions::NONE,
        };
        let inv = Message::Inv(Inv {
            uuid: id,
            caller: &caller,
            callee: &callee,
            rtp_ports,
            extensions,
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
        let frames = match legs {
            Some(_) => [Vec::new(), Vec::new()],
            None => [
                frame(Direction::Read, g711::TONE_HZ_READ),
                frame(Direction::Write, g711::TONE_HZ_WRITE),
            ],
        };
        Ok(Call {
            uuid,
            inv,
            bye,
            frames,
            legs,
        })
    }
}

#[derive(Debug, Default)]
struct CallState {
    /// RTP mode: the receiver's ports from the INV's ACK (read << 16 | write), set
    /// before `inv_acked`; 0 if the ACK named none.
    rtp_ports: std::sync::atomic::AtomicU32,
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
            Ok(Message::Ack(ack)) => index
                .get(ack.uuid.as_str())
                .map(|&i| (&state[i], ack.rtp_ports)),
            _ => None,
        };
        let Some((call, ports)) = call else {
            live.acks_unexpected.fetch_add(1, Relaxed);
            continue;
        };
        let (flag, counter) = if call.bye_sent.load(SeqCst) {
            (&call.bye_acked, &live.bye_acked)
        } else {
            if let Some(ports) = ports {
                if !call.inv_acked.load(SeqCst) {
                    let packed = u32::from(ports.read) << 16 | u32::from(ports.write);
                    call.rtp_ports.store(packed, SeqCst);
                }
            }
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
            "rst-load {:>4.0}s: INV acked {}/{}  {} {} (+{}/s)  BYE acked {}/{}  lost {}  send errors {}",
            start.elapsed().as_secs_f64(),
            r.inv_acked,
            r.calls,
            match r.mode {
                Mode::Data => "DATA",
                Mode::Rtp => "RTP",
            },
            r.audio_sent(),
            r.audio_sent() - last_data,
            r.bye_acked,
            r.calls,
            r.lost(),
            r.send_errors
        );
        last_data = r.audio_sent();
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
        if self.pending.len() >= rst_net::BATCH {
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
            burst: Duration::from_secs_f64(per_datagram * rst_net::BATCH as f64)
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

/// RTP mode, before the audio: every INV, retransmitted until each is ACKed or
/// given up on; then each answered call's sockets are connected to the ports its
/// ACK names. Returns which calls send audio.
fn set_up_rtp<'a>(
    target: SocketAddr,
    calls: &'a [Call],
    state: &[CallState],
    out: &mut Out<'a>,
    control: &mut Control,
) -> Vec<bool> {
    let pacer = out.pacer.take();
    let now = Instant::now();
    for (i, call) in calls.iter().enumerate() {
        out.push(&call.inv, Kind::Inv);
        control.sent(now, i, Kind::Inv);
    }
    out.flush();
    let settled =
        |control: &Control, i: usize| state[i].inv_acked.load(SeqCst) || control.inv_lost[i];
    while !(0..calls.len()).all(|i| settled(control, i)) {
        control.service(Instant::now(), out, calls, state);
        out.flush();
        std::thread::sleep(Duration::from_millis(1));
    }
    out.pacer = pacer;
    let live = out.live;
    calls
        .iter()
        .zip(state)
        .map(|(call, state)| {
            let Some(legs) = &call.legs else { return false };
            if !state.inv_acked.load(SeqCst) {
                return false;
            }
            let ports = state.rtp_ports.load(SeqCst);
            let (read, write) = ((ports >> 16) as u16, ports as u16);
            if read == 0 || write == 0 {
                live.rtp_no_ports.fetch_add(1, Relaxed);
                return false;
            }
            let connected = legs[0].socket.connect((target.ip(), read)).is_ok()
                && legs[1].socket.connect((target.ip(), write)).is_ok();
            if !connected {
                live.send_errors.fetch_add(1, Relaxed);
            }
            connected
        })
        .collect()
}

/// The sender: INVs, paced DATA (or RTP), BYEs, retransmissions.
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
        pending: Vec::with_capacity(rst_net::BATCH),
        kinds: Vec::with_capacity(rst_net::BATCH),
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
    let rtp = config.mode == Mode::Rtp;
    let audio = if rtp {
        set_up_rtp(config.target, calls, state, &mut out, &mut control)
    } else {
        vec![true; n]
    };
    // In RTP mode the audio starts once every INV is settled.
    let start = if rtp { Instant::now() } else { start };
    // Frames per visit to a call: RTP in fast mode goes in bursts per socket.
    let step = if rtp && config.fast { RTP_BURST } else { 1 };
    let mut scratch: [Vec<u8>; RTP_BURST] = std::array::from_fn(|_| Vec::new());
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

    let mut k = 0u64;
    'frames: loop {
        if frames.is_some_and(|frames| k >= frames) || live.stop.load(Relaxed) {
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
            match &call.legs {
                None => {
                    if k == 0 {
                        out.push(&call.inv, Kind::Inv);
                        control.sent(now, i, Kind::Inv);
                    }
                    out.push(&call.frames[0], Kind::Data);
                    out.push(&call.frames[1], Kind::Data);
                }
                Some(legs) if audio[i] => {
                    let count = frames.map_or(step, |frames| step.min((frames - k) as usize));
                    if let Some(pacer) = &mut out.pacer {
                        pacer.wait(2 * count as u64);
                    }
                    for leg in legs {
                        let result = leg.send(k, count, config.drop_every, &mut scratch);
                        live.rtp_sent.fetch_add(result.sent as u64, Relaxed);
                        if result.errors > 0 {
                            live.send_errors.fetch_add(result.errors as u64, Relaxed);
                        }
                    }
                    let sent_at = Instant::now();
                    out.first_data.get_or_insert(sent_at);
                    out.last_data = Some(sent_at);
                }
                Some(_) => {} // no ports: no audio
            }
            if frames.is_some_and(|frames| k + step as u64 >= frames) {
                control.waiting_for_bye.push(i);
            }
            if now >= next_service {
                next_service = now + service_every;
                control.service(now, &mut out, calls, state);
            }
        }
        k += step as u64;
    }
    out.flush();

    // Every call not ended yet (fast mode on a deadline, or stopped) ends now.
    let ended: Vec<bool> = {
        let mut ended = vec![false; n];
        for &call in &control.waiting_for_bye {
            ended[call] = true;
        }
        ended
    };
    if frames.is_none() || live.stop.load(Relaxed) {
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
            let config = Config {
                codec,
                ..Config::default()
            };
            let call = Call::new(0, &config).unwrap();
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
    fn rtp_calls_name_their_ports_and_number_their_packets() {
        for codec in [Codec::Pcmu, Codec::Pcma, Codec::L16] {
            let config = Config {
                codec,
                mode: Mode::Rtp,
                ..Config::default()
            };
            let call = Call::new(0, &config).unwrap();
            let legs = call.legs.as_ref().unwrap();
            let Ok(Message::Inv(inv)) = Message::parse(&call.inv) else {
                panic!("not an INV");
            };
            let ports = inv.rtp_ports.unwrap();
            assert_eq!(ports.read, legs[0].port().unwrap());
            assert_eq!(ports.write, legs[1].port().unwrap());
            assert_eq!(
                inv.extensions.payload_type(96).is_some(),
                codec == Codec::L16
            );
            assert!(call.frames.iter().all(Vec::is_empty));

            let mut bytes = Vec::new();
            let packet = |leg: &Leg, k: u64, bytes: &mut Vec<u8>| {
                leg.frame(k, bytes);
                let p = RtpPacket::parse(bytes).unwrap();
                (p.marker, p.payload_type, p.sequence, p.timestamp, p.ssrc)
            };
            let first = packet(&legs[0], 0, &mut bytes);
            assert!(first.0, "the first packet has the marker");
            assert_eq!(first.1, codec.rtp_payload_type());
            assert_eq!(bytes.len(), 12 + codec.frame_bytes());
            assert_eq!(&bytes[12..], codec.rtp_frame(g711::TONE_HZ_READ));
            for k in [1u64, 2, 70_000] {
                let next = packet(&legs[0], k, &mut bytes);
                assert!(!next.0);
                assert_eq!(next.2, first.2.wrapping_add(k as u16));
                assert_eq!(next.3, first.3.wrapping_add(160 * k as u32));
                assert_eq!(next.4, first.4, "one SSRC per leg");
            }
            let other = packet(&legs[1], 0, &mut bytes);
            assert_ne!(other.4, first.4, "the legs have their own SSRCs");
            assert_eq!(&bytes[12..], codec.rtp_frame(g711::TONE_HZ_WRITE));
        }
        let frame = Codec::L16.rtp_frame(g711::TONE_HZ_READ);
        let tone = g711::tone_frame(g711::TONE_HZ_READ);
        assert_eq!(i16::from_be_bytes([frame[2], frame[3]]), tone[1]);
    }

    #[test]
    fn the_file_limit_can_be_raised() {
        assert!(raise_fd_limit().unwrap() >= 64);
    }

    #[test]
    fn l16_is_little_endian() {
        let frame = Codec::L16.frame(g711::TONE_HZ_READ);
        let tone = g711::tone_frame(g711::TONE_HZ_READ);
        assert_eq!(i16::from_le_bytes([frame[2], frame[3]]), tone[1]);
    }
}
