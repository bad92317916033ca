//! The real [`Output`]: every call goes to an rst receiver in RTP mode, one
//! [`Stream`] per call, driven on the caller's thread.
//!
//! One control socket carries the INVs and BYEs and receives the ACKs; each
//! call has two RTP sockets of its own (R and W), because the receiver tells
//! a call's RTP apart by its source port. Captured RTP is forwarded unchanged,
//! so the wire's loss, reordering and jitter reach the recording as they were.
//!
//! Offline (a capture file read as fast as the disk allows) the output keeps
//! the file honest: it waits for each INV's ACK before the call's first
//! packet (the receiver answers within a millisecond, and RTP sent before the
//! ports are known would have to be held), paces the packets it sends so the
//! receiver's socket buffers are never overrun, waits likewise for the ACK of
//! an INV sent again mid-call to declare a re-INVITE's new codec (the new
//! codec's packets follow at once), and delays each BYE a little
//! so that the call's last packets, still in the receiver's queues, are
//! recorded before the call ends. Live, nothing waits: RTP that arrives
//! before the ACK is held by the stream (up to `max_pending` packets).

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rst_proto::stream::{Mode, Stream, StreamStart, Trouble, Via};
use rst_proto::{Direction, Health, Message, Pool, ReceiverHealth};

use crate::pipeline::{CallStart, Output};
use crate::sip::CallKey;

/// Settings of a [`UdpOutput`].
#[derive(Debug, Clone)]
pub struct OutputConfig {
    /// The receiver's control address.
    pub receiver: SocketAddr,
    /// Reading a file: wait for ACKs, pace the sending, delay BYEs.
    pub offline: bool,
    /// First retransmission of an unanswered INV or BYE (then backing off).
    pub retransmit: Duration,
    /// Sends of an INV or BYE before giving up.
    pub tries: u32,
    /// Packets a stream holds while its INV is unanswered.
    pub max_pending: usize,
    /// Calls sent at once (each costs two sockets); more are refused.
    pub max_streams: usize,
    /// Offline: most RTP packets sent per second (0: no pacing).
    pub pace: u32,
    /// How long after its end a call's BYE goes (offline).
    pub bye_delay: Duration,
    /// Each call sends its INV again this often: a call only quiet (on hold,
    /// silence suppression) is not ended by the receiver's idle timeout (30 s
    /// by default) while SIP says it goes on, and a receiver that restarted
    /// takes the calls in progress up again.
    pub refresh: Duration,
    /// Stream profiles of the receiver every call asks for (`stream=`).
    pub streams: Vec<String>,
    /// Several receivers: each call goes to its UUID's receiver and fails
    /// over along its order (`receiver` is then the pool's first, for the
    /// socket's address family). `None`: `receiver` alone.
    pub pool: Option<Pool>,
    /// With a pool: how long an INV may go unanswered before the call moves on.
    pub failover: Duration,
    /// The tap's name, in every call's INV (`tap=`): the receiver's records
    /// and console say which tap a call came from.
    pub tap: Option<String>,
}

impl OutputConfig {
    pub fn new(receiver: SocketAddr, offline: bool) -> OutputConfig {
        OutputConfig {
            receiver,
            offline,
            retransmit: Duration::from_millis(200),
            tries: 5,
            max_pending: 2000,
            max_streams: 4000,
            pace: if offline { 50_000 } else { 0 },
            bye_delay: if offline {
                Duration::from_millis(300)
            } else {
                Duration::ZERO
            },
            refresh: Duration::from_secs(10),
            streams: Vec::new(),
            pool: None,
            failover: Duration::from_millis(500),
            tap: None,
        }
    }
}

/// What the output did and refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputStats {
    pub streams_started: u64,
    /// Calls not sent: `max_streams` reached, or their sockets could not be made.
    pub streams_refused: u64,
    pub rtp_sent: u64,
    /// RTP for a call without a stream (refused, or already ended).
    pub rtp_no_stream: u64,
    /// RTP held while an INV was unanswered that did not fit, or was never sent.
    pub rtp_dropped_waiting: u64,
    pub send_errors: u64,
    pub acks: u64,
    pub invs_unacknowledged: u64,
    pub byes_unacknowledged: u64,
    /// Calls moved to another receiver of the pool.
    pub failovers: u64,
    /// The pool's receivers as last seen, when there is a pool.
    pub receivers: Vec<ReceiverHealth>,
}

struct Live {
    stream: Stream,
    rtp: [UdpSocket; 2],
    /// The call ended; its BYE goes at this time.
    stop_at: Option<Instant>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("uuid", &self.stream.uuid())
            .finish()
    }
}

/// Sends calls to an rst receiver. See the module documentation.
#[derive(Debug)]
pub struct UdpOutput {
    config: OutputConfig,
    control: UdpSocket,
    streams: HashMap<String, Live>,
    seed: u64,
    stats: OutputStats,
    ack_buffer: Vec<u8>,
    /// Pacing: when sending began, and packets sent since.
    pace_start: Option<Instant>,
    paced: u64,
    last_service: Instant,
    /// Which receivers of the pool answer, when there is a pool.
    health: Option<Health>,
}

/// A receiver that failed is left out of new calls' first choice this long.
const RECEIVER_RETRY: Duration = Duration::from_secs(5);

/// With a pool, a call's INV is refreshed at least this often: a receiver's
/// death costs up to this plus the failover time.
const POOL_REFRESH: Duration = Duration::from_millis(500);

/// How often [`UdpOutput::service`] really looks at the sockets and timers.
const SERVICE_EVERY: Duration = Duration::from_millis(2);

impl UdpOutput {
    pub fn new(config: OutputConfig) -> io::Result<UdpOutput> {
        let control = rst_net::control_socket(config.receiver)?;
        let health = config
            .pool
            .clone()
            .map(|pool| Health::new(pool, RECEIVER_RETRY));
        Ok(UdpOutput {
            config,
            control,
            streams: HashMap::new(),
            seed: std::process::id().into(),
            stats: OutputStats::default(),
            ack_buffer: vec![0; 2048],
            pace_start: None,
            paced: 0,
            last_service: Instant::now(),
            health,
        })
    }

    pub fn stats(&self) -> &OutputStats {
        &self.stats
    }

    /// Streams open or closing.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// ACKs, retransmissions, delayed BYEs. Cheap to call often: it does its
    /// work at most every couple of milliseconds.
    pub fn service(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_service) < SERVICE_EVERY {
            return;
        }
        self.service_now(now);
    }

    fn service_now(&mut self, now: Instant) {
        self.last_service = now;
        self.read_icmp_errors(now);
        self.read_acks();
        let mut closed = Vec::new();
        let UdpOutput {
            streams,
            control,
            stats,
            health,
            ..
        } = self;
        for (uuid, live) in streams.iter_mut() {
            if live.stop_at.is_some_and(|at| now >= at) {
                live.stop_at = None;
                drive(live, control, stats, |s, emit| s.stop(now, emit));
            }
            let trouble = drive(live, control, stats, |s, emit| s.poll(now, emit));
            if let Some(trouble) = trouble {
                count_trouble(uuid, &trouble, stats, health, now);
            }
            if live.stream.is_closed() {
                closed.push(uuid.clone());
            }
        }
        for uuid in closed {
            self.remove(&uuid);
        }
    }

    fn remove(&mut self, uuid: &str) {
        if let Some(live) = self.streams.remove(uuid) {
            self.stats.rtp_dropped_waiting += live.stream.stats.frames_dropped_waiting;
        }
    }

    /// A receiver with nothing listening (ICMP port unreachable) moves its
    /// calls on at once, without waiting `failover` for an ACK.
    fn read_icmp_errors(&mut self, now: Instant) {
        let mut unreachable = Vec::new();
        rst_net::ErrorQueue::drain(&self.control, |error| unreachable.push(error));
        let UdpOutput {
            streams,
            control,
            stats,
            health,
            ..
        } = self;
        for error in unreachable {
            tracing::debug!(to = %error.to, error = %error.error, "ICMP error from a receiver");
            for (uuid, live) in streams.iter_mut() {
                let trouble = drive(live, control, stats, |s, emit| {
                    s.unreachable(error.to, now, emit)
                });
                if let Some(trouble) = trouble {
                    count_trouble(uuid, &trouble, stats, health, now);
                }
            }
        }
    }

    fn read_acks(&mut self) {
        loop {
            let (len, from) = match self.control.recv_from(&mut self.ack_buffer) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // An ICMP error come since the error queue was read
                // (read_icmp_errors): the datagrams behind it are still there.
                Err(_) => continue,
            };
            let Ok(Message::Ack(ack)) = Message::parse(&self.ack_buffer[..len]) else {
                continue;
            };
            self.stats.acks += 1;
            if let Some(health) = self.health.as_mut() {
                health.answered(from);
            }
            let ports = ack.rtp_ports;
            let uuid = ack.uuid.as_str().to_owned();
            let closed = match self.streams.get_mut(&uuid) {
                Some(live) => {
                    drive(live, &self.control, &mut self.stats, |s, emit| {
                        s.ack_from(from, ports, emit)
                    });
                    live.stream.is_closed()
                }
                None => false,
            };
            if closed {
                self.remove(&uuid);
            }
        }
    }

    /// Ends every call (BYE) and waits, at most `grace`, until the receiver
    /// has acknowledged them all.
    pub fn close(&mut self, grace: Duration) {
        let now = Instant::now();
        // The last packets sent are still in the receiver's queues.
        if self.config.bye_delay > Duration::ZERO && !self.streams.is_empty() {
            std::thread::sleep(self.config.bye_delay);
        }
        let UdpOutput {
            streams,
            control,
            stats,
            ..
        } = self;
        for live in streams.values_mut() {
            live.stop_at = None;
            drive(live, control, stats, |s, emit| s.stop(now, emit));
        }
        let deadline = now + grace;
        while !self.streams.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
            self.service_now(Instant::now());
        }
        self.stats.byes_unacknowledged += self.streams.len() as u64;
        let left: Vec<String> = self.streams.keys().cloned().collect();
        for uuid in left {
            self.remove(&uuid);
        }
    }

    /// Offline: waits until `uuid`'s INV is answered (or given up on).
    fn wait_for_ack(&mut self, uuid: &str) {
        loop {
            let now = Instant::now();
            self.service_now(now);
            let waiting = self
                .streams
                .get(uuid)
                .is_some_and(|l| l.stream.is_awaiting_ack());
            if !waiting {
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn pace(&mut self) {
        if self.config.pace == 0 {
            return;
        }
        let start = *self.pace_start.get_or_insert_with(Instant::now);
        self.paced += 1;
        let due = start + Duration::from_secs_f64(self.paced as f64 / f64::from(self.config.pace));
        let now = Instant::now();
        if due > now + Duration::from_millis(1) {
            std::thread::sleep(due - now);
        } else if now > due + Duration::from_millis(100) {
            // Idle for a while (the file had a quiet stretch): no burst to make up.
            self.pace_start = Some(now);
            self.paced = 0;
        }
    }
}

impl Output for UdpOutput {
    fn call_started(&mut self, call: &CallStart) {
        let uuid = call.key.as_str().to_owned();
        if let Some(old) = self.streams.get(&uuid) {
            if !old.stream.is_closing() && old.stop_at.is_none() {
                return;
            }
            // The same call again while its last stream closes: start afresh.
            self.remove(&uuid);
        }
        if self.streams.len() >= self.config.max_streams {
            self.stats.streams_refused += 1;
            tracing::warn!(
                uuid,
                max = self.config.max_streams,
                "too many calls at once; call not recorded"
            );
            return;
        }
        let (rtp, ports) = match rst_net::bind_rtp_pair(self.config.receiver, self.config.offline) {
            Ok(pair) => pair,
            Err(error) => {
                self.stats.streams_refused += 1;
                tracing::warn!(uuid, %error, "cannot open the call's RTP sockets; call not recorded");
                return;
            }
        };
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let now = Instant::now();
        let (target, fallbacks) = match self.health.as_mut() {
            Some(health) => {
                let order = health.order(&uuid, now);
                self.stats.receivers = health.receivers(now).to_vec();
                (order[0], order[1..].to_vec())
            }
            None => (self.config.receiver, Vec::new()),
        };
        let refresh = match fallbacks.is_empty() {
            true => self.config.refresh,
            false => self.config.refresh.min(POOL_REFRESH),
        };
        let start = StreamStart {
            uuid: uuid.clone(),
            caller: call.caller.clone(),
            callee: call.callee.clone(),
            target,
            mode: Mode::Rtp,
            local_ports: Some(ports),
            extensions: call.extensions(&self.config.streams, self.config.tap.as_deref()),
            fallbacks,
            failover_after: self.config.failover,
            retransmit: self.config.retransmit,
            tries: self.config.tries,
            max_pending: self.config.max_pending,
            seed: self.seed,
            refresh: Some(refresh),
            // Captured RTP carries its own telephone-events (none is made
            // here): this is the media clock of failover offsets, the rate of
            // the call's audio codec.
            event_clock: call.clock_rate,
            // RTP mode: captured packets go as they came.
            frames_per_datagram: 1,
            live: false,
        };
        let control = &self.control;
        let stats = &mut self.stats;
        let started = Stream::start(start, Instant::now(), &mut |via, to, bytes| {
            send(control, &rtp, stats, via, to, bytes)
        });
        match started {
            Ok(stream) => {
                self.stats.streams_started += 1;
                tracing::debug!(uuid, "call started");
                self.streams.insert(
                    uuid.clone(),
                    Live {
                        stream,
                        rtp,
                        stop_at: None,
                    },
                );
                if self.config.offline {
                    self.wait_for_ack(&uuid);
                }
            }
            Err(error) => {
                self.stats.streams_refused += 1;
                tracing::warn!(uuid, %error, "cannot start the call's stream");
            }
        }
    }

    fn rtp(&mut self, key: CallKey, direction: Direction, packet: &[u8], at: Duration) {
        let Some(live) = self.streams.get_mut(key.as_str()) else {
            self.stats.rtp_no_stream += 1;
            return;
        };
        let before = live.stream.stats.frames_sent;
        // The stream keeps a forwarded call's time by the clock (see
        // `Stream::forward_rtp`): the capture's, not when this thread got
        // to the packet, which a busy machine delays by tens of ms.
        let now = captured_at(at);
        drive(live, &self.control, &mut self.stats, |s, emit| {
            s.forward_rtp(direction, packet, now, emit)
        });
        if live.stream.stats.frames_sent > before {
            self.pace();
        }
    }

    fn call_updated(&mut self, call: &CallStart) {
        let uuid = call.key.as_str();
        let Some(live) = self.streams.get_mut(uuid) else {
            return;
        };
        let extensions = call.extensions(&self.config.streams, self.config.tap.as_deref());
        let declared = drive(live, &self.control, &mut self.stats, |s, emit| {
            s.declare(&extensions, Instant::now(), emit)
        });
        match declared {
            Ok(()) => {
                tracing::debug!(uuid, extensions, "payload types declared mid-call");
                // Offline, the new codec's first packets come right after:
                // they must reach the receiver after the declaration does.
                if self.config.offline {
                    self.wait_for_ack(uuid);
                }
            }
            Err(error) => tracing::warn!(uuid, %error, "cannot declare payload types mid-call"),
        }
    }

    fn call_ended(&mut self, key: CallKey) {
        let now = Instant::now();
        let Some(live) = self.streams.get_mut(key.as_str()) else {
            return;
        };
        if self.config.bye_delay > Duration::ZERO {
            live.stop_at = Some(now + self.config.bye_delay);
        } else {
            drive(live, &self.control, &mut self.stats, |s, emit| {
                s.stop(now, emit)
            });
        }
        tracing::debug!(uuid = key.as_str(), "call ended");
    }
}

/// Counts a stream's trouble and logs it.
fn count_trouble(
    uuid: &str,
    trouble: &Trouble,
    stats: &mut OutputStats,
    health: &mut Option<Health>,
    now: Instant,
) {
    match *trouble {
        Trouble::NoAckForInv { tries } => {
            stats.invs_unacknowledged += 1;
            tracing::warn!(uuid, tries, "the receiver did not answer the INV");
        }
        Trouble::NoAckForBye { tries } => {
            stats.byes_unacknowledged += 1;
            tracing::warn!(uuid, tries, "the receiver did not answer the BYE");
        }
        Trouble::FailedOver {
            from,
            to,
            part,
            offset_ms,
        } => {
            if let Some(health) = health.as_mut() {
                health.failed(from, now);
                stats.receivers = health.receivers(now).to_vec();
            }
            stats.failovers += 1;
            tracing::warn!(uuid, %from, %to, part, offset_ms, "the receiver did not answer; the call failed over");
        }
    }
}

/// Runs `action` on a stream with an `emit` that sends on the right socket.
fn drive<R>(
    live: &mut Live,
    control: &UdpSocket,
    stats: &mut OutputStats,
    action: impl FnOnce(&mut Stream, &mut dyn FnMut(Via, SocketAddr, &[u8])) -> R,
) -> R {
    let Live { stream, rtp, .. } = live;
    // RTP leaves from `forward_rtp` and, for packets held until then, from `ack`.
    let before = stream.stats.frames_sent;
    let result = {
        let mut emit = |via, to, bytes: &[u8]| send(control, rtp, stats, via, to, bytes);
        action(stream, &mut emit)
    };
    stats.rtp_sent += stream.stats.frames_sent - before;
    result
}

/// Sends at once (a packet is forwarded as it is captured; offline, the
/// pacing is per packet).
fn send(
    control: &UdpSocket,
    rtp: &[UdpSocket; 2],
    stats: &mut OutputStats,
    via: Via,
    to: SocketAddr,
    bytes: &[u8],
) {
    if rst_net::send_now(rst_net::route(via, control, Some(rtp)), to, bytes).is_err() {
        stats.send_errors += 1;
    }
}

/// A live capture's time of a packet (since the Unix epoch) on this
/// process's monotonic clock. A time not from the last minute (a capture
/// file's) is taken as now: a file's call keeps the time it is sent in.
fn captured_at(at: Duration) -> Instant {
    let now = Instant::now();
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    match wall.checked_sub(at) {
        Some(ago) if ago < Duration::from_secs(60) => now.checked_sub(ago).unwrap_or(now),
        _ => now,
    }
}
