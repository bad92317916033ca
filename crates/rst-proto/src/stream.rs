//! The sending side of one call, as a state machine (sans-IO): INV until ACKed,
//! then audio (DATA datagrams, or RTP once the ACK names the ports), BYE until
//! ACKed. Mid-call, [`Stream::declare`] sends the INV again with payload types
//! learnt since (a re-INVITE's new codec), until ACKed, while audio goes on.
//! Time comes in as an argument; datagrams go out through `emit`. Shared
//! by mod_rst (which makes RTP from frames) and tap_daemon (which forwards the
//! RTP it captured, so the wire's loss and jitter reach the recording).
//!
//! Failover (a pool of receivers, [`crate::pool`]): a stream given
//! [`StreamStart::fallbacks`] moves to the next receiver of the call's order
//! when the current one leaves an INV (the first, a refresh or a
//! declaration) unacknowledged for [`StreamStart::failover_after`], or when
//! the shell reports an ICMP error from it ([`Stream::unreachable`]). It
//! sends the INV there with `part=N:offset-ms=MS` (the part's number and
//! where its audio begins on the call's media clock: the samples of R
//! handed to the stream so far), and the audio follows: DATA at once, RTP
//! once the new receiver's ACK names its ports. Frames held for the old
//! receiver are dropped (counted), and ACKs from it are ignored from then
//! on; it gets one BYE, so a receiver that was only slow closes its part at
//! once. A refresh is retransmitted like any INV, so one lost datagram does
//! not look like a dead receiver. After the last receiver of the order comes
//! the first again. What a
//! failover costs: the audio between the receiver's death and its
//! detection (up to the refresh interval plus `failover_after`), plus in
//! RTP mode the new receiver's round trip.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::{
    Bye, Continuation, Data, Direction, Dtmf, Extensions, Inv, Message, PayloadType, RtpPacket,
    RtpPorts, TelephoneEvent, Uuid, MAX_DATA_HEADER_LEN,
};

/// How audio goes to the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `DATA` datagrams (the original protocol).
    Data,
    /// RTP per direction, to the two ports the receiver's ACK names.
    Rtp,
}

/// The dynamic RTP payload type L16 (big-endian) goes out on in RTP mode.
pub const RTP_L16_PAYLOAD_TYPE: u8 = 96;

/// The dynamic RTP payload type RFC 4733 telephone-events go out on in RTP
/// mode (declared in the INV, `pt101=telephone-event/CLOCK`).
pub const RTP_EVENT_PAYLOAD_TYPE: u8 = 101;
/// Copies of a key press sent: RFC 4733 repeats an event's end packet three
/// times; a DTMF datagram is sent as often.
const DTMF_COPIES: u32 = 3;

/// Which socket a datagram leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The module's control socket (INV, DATA, BYE).
    Control,
    /// The stream's RTP socket of that direction.
    Rtp(Direction),
}

/// What a stream reports once, for the log and an `rst::error` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trouble {
    /// The INV was never acknowledged: in DATA mode audio still goes (the receiver
    /// records DATA without INV), in RTP mode it cannot. Also reported when the
    /// INV of a [`Stream::declare`] goes unanswered: audio goes on then, but
    /// the receiver may not decode the newly declared payload types.
    NoAckForInv {
        tries: u32,
    },
    NoAckForBye {
        tries: u32,
    },
    /// The call moved to another receiver of its pool: `from` left an INV
    /// unanswered (or was reported unreachable), `to` records part `part`
    /// from `offset_ms` on.
    FailedOver {
        from: SocketAddr,
        to: SocketAddr,
        part: u32,
        offset_ms: u64,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub frames_sent: u64,
    /// The datagrams they went in: as many in RTP mode, fewer in DATA mode
    /// with `frames_per_datagram` above 1.
    pub datagrams_sent: u64,
    /// RTP mode: frames that arrived while no ports were known and did not
    /// fit the buffer, or were held for a receiver the call failed over from;
    /// any mode: frames of a direction that lagged the other when the call
    /// failed over (they belong before the new part's start).
    pub frames_dropped_waiting: u64,
    /// Moves to another receiver of the pool.
    pub failovers: u64,
    /// Times the receiver said that someone began to hear the call
    /// ([`Stream::live_from`]), while it gathered frames.
    pub heard: u64,
}

#[derive(Debug)]
enum State {
    Inviting {
        sent: u32,
        next: Instant,
    },
    /// The INV was acknowledged, or its retransmissions gave up.
    Open,
    /// Open, and the INV of [`Stream::declare`] is sent until ACKed.
    Updating {
        sent: u32,
        next: Instant,
    },
    Closing {
        sent: u32,
        next: Instant,
        /// The BYE went while an INV was unanswered: the first ACK may be
        /// that INV's (an ACK does not say what it answers), so it takes a
        /// second to close. Should the first have been the BYE's, the BYE
        /// goes again and the receiver answers it again (it answers every BYE).
        inv_unanswered: bool,
    },
    Closed,
}

#[derive(Debug)]
struct Leg {
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    /// Telephone-events sent at the leg's current timestamp: each event needs
    /// a timestamp of its own (RFC 4733 2.5.1.1), so the next is one later.
    events_at: (u32, u32),
}

/// A frame held in RTP mode until the ports are known.
#[derive(Debug)]
struct Pending {
    direction: Direction,
    /// `None`: `payload` is a whole RTP packet to forward as it is.
    frame: Option<(u8, u32)>,
    payload: Vec<u8>,
}

#[derive(Debug)]
pub struct Stream {
    /// Checked as a [`Uuid`] by `start` (the INV's encoding), so each
    /// datagram after it uses it unchecked ([`Uuid::trusted`]).
    uuid: String,
    /// The INV's fields, `:` removed, for [`Stream::declare`] to send it again.
    caller: String,
    callee: String,
    local_ports: Option<RtpPorts>,
    /// The call's receivers in order of preference; `targets[current]` has it.
    targets: Vec<SocketAddr>,
    current: usize,
    /// The extensions the sender gave (the last [`Stream::declare`]'s), without `part`.
    extensions: String,
    /// The part of the call the current receiver records (1: the first),
    /// where it begins, and the forwarded RTP's timestamps there.
    part: Continuation,
    failover_after: Duration,
    /// The first INV the current receiver has not acknowledged yet.
    unacked_since: Option<Instant>,
    /// Samples of R handed to the stream as frames: the call's media
    /// clock, at `event_clock`.
    media_samples: u64,
    /// Samples of W handed to the stream as frames ([`Stream::frame`]).
    write_samples: u64,
    /// Where the current part begins on the media clock, in samples: frames
    /// of a direction still short of it when the call moved are dropped, so
    /// that both directions of the new part begin at its offset.
    part_start: u64,
    /// Forwarded RTP: when the first packet came, and per direction the
    /// newest timestamp and when it came. Forwarded audio keeps time by
    /// the clock: its silences (packets not sent) are real time too.
    first_forwarded: Option<Instant>,
    last_forwarded: [Option<(u32, Instant)>; 2],
    started_at: Instant,
    mode: Mode,
    inv: Vec<u8>,
    state: State,
    retransmit: Duration,
    tries: u32,
    server_ports: Option<RtpPorts>,
    pending: VecDeque<Pending>,
    max_pending: usize,
    legs: [Leg; 2],
    pub stats: StreamStats,
    buffer: Vec<u8>,
    refresh: Option<Duration>,
    /// RTP mode: the clock of the telephone-events [`Stream::dtmf`] sends.
    event_clock: u32,
    /// Key presses sent so far (the DTMF datagram's SEQ).
    dtmf_sent: u32,
    /// When the INV was last sent.
    inv_sent_at: Instant,
    /// DATA mode: frames per datagram (1: each frame at once).
    frames_per_datagram: u32,
    /// DATA frames of each direction held to go as one datagram.
    gathered: [Gathered; 2],
    /// Until when someone hears the call live, as its receiver last said
    /// ([`Stream::live_from`]): frames go one to a datagram till then.
    heard_until: Option<Instant>,
    /// The INV said `live=1`: LIVE is taken ([`StreamStart::live`]).
    live: bool,
}

/// Payload bytes one gathered DATA datagram carries at most: with its
/// headers it stays inside a 1500-byte Ethernet frame, so it is never
/// fragmented on its way to a receiver on another host.
pub const MAX_GATHERED_PAYLOAD: usize = 1400;

/// Room for the longest DATA header in front of gathered frames.
const HEADER_ROOM: usize = MAX_DATA_HEADER_LEN;

/// DATA frames of one direction held back to go as one datagram
/// ([`StreamStart::frames_per_datagram`]): the same payload type, back to back.
/// They are held behind [`HEADER_ROOM`] bytes, where the header is written
/// when they go: the datagram leaves from here, not copied once more into
/// another buffer of the call's (the sender's cost is mostly copies of
/// memory not in its cache: `perf` put a tenth of it on the first write to
/// the call's other buffer, the header's).
#[derive(Debug, Default)]
struct Gathered {
    payload_type: Option<PayloadType>,
    frames: u32,
    /// [`HEADER_ROOM`] bytes (once a frame came), then the frames.
    datagram: Vec<u8>,
}

impl Gathered {
    fn payload_len(&self) -> usize {
        self.datagram.len().saturating_sub(HEADER_ROOM)
    }

    fn push(&mut self, payload: &[u8]) {
        if self.datagram.len() < HEADER_ROOM {
            self.datagram.resize(HEADER_ROOM, 0);
        }
        self.datagram.extend_from_slice(payload);
    }
}

/// Everything a stream needs to begin.
#[derive(Debug, Clone)]
pub struct StreamStart {
    pub uuid: String,
    pub caller: String,
    pub callee: String,
    pub target: SocketAddr,
    pub mode: Mode,
    /// RTP mode: the local ports of the R and W sockets.
    pub local_ports: Option<RtpPorts>,
    /// INV extensions (`rate=16000`, `pt96=L16/16000`), possibly empty.
    pub extensions: String,
    /// Where the call goes when `target` stops answering, in order (the
    /// rest of [`crate::Pool::order`]); empty: no failover, as with one receiver.
    pub fallbacks: Vec<SocketAddr>,
    /// How long an INV may go unacknowledged before the call fails over
    /// (only with fallbacks).
    pub failover_after: Duration,
    pub retransmit: Duration,
    pub tries: u32,
    pub max_pending: usize,
    /// Seeds the SSRCs, sequence numbers and timestamps.
    pub seed: u64,
    /// [`Stream::poll`] sends the INV again this often once it was answered:
    /// the receiver's idle timeout then never ends a call that is only quiet
    /// (on hold, or silence-suppressed), and a receiver that restarted learns
    /// the call again, its ACK bringing the new RTP ports. `None`: never (a
    /// sender with a frame every 20 ms and DATA mode need none).
    pub refresh: Option<Duration>,
    /// RTP mode: the clock rate of the telephone-events [`Stream::dtmf`] sends
    /// on [`RTP_EVENT_PAYLOAD_TYPE`], the audio's own (RFC 4733 section 2.1);
    /// the INV declares it.
    pub event_clock: u32,
    /// DATA mode: consecutive frames of a direction (one payload type, at
    /// most [`MAX_GATHERED_PAYLOAD`] bytes) that go as one datagram; the
    /// wire format takes any `LENGTH`. 1: each frame at once. More costs
    /// the sender and the receiver fewer datagrams, and holds each frame
    /// back up to `frames_per_datagram - 1` frames' time (what a recording
    /// does not mind, a live bot does). Held frames go before a key press,
    /// a new INV, a failover and the BYE.
    pub frames_per_datagram: u32,
    /// With `frames_per_datagram` above 1 (DATA mode): gather only while
    /// nobody hears the call live. The INV says `live=1`, and while the
    /// receiver says LIVE ([`Stream::live_from`]) each frame goes at once:
    /// a recording costs the fewer datagrams, a listener or a bot gets
    /// audio in real time.
    pub live: bool,
}

impl Stream {
    /// Validates the start and sends the first INV.
    pub fn start(
        start: StreamStart,
        now: Instant,
        emit: &mut dyn FnMut(Via, SocketAddr, &[u8]),
    ) -> Result<Stream, String> {
        // `:` would shift the INV's fields; a caller id never needs one.
        let clean = |text: &str| text.replace(':', "");
        let (caller, callee) = (clean(&start.caller), clean(&start.callee));
        let frames_per_datagram = start.frames_per_datagram.max(1);
        let live = start.live && start.mode == Mode::Data && frames_per_datagram > 1;
        let extensions = match live {
            true => crate::ExtensionsBuilder::new()
                .raw(&start.extensions)
                .live()
                .build(),
            false => start.extensions,
        };
        let inv = encode_inv(
            &start.uuid,
            &caller,
            &callee,
            start.local_ports,
            &extensions,
        )?;
        let leg = |n: u64| {
            let bits =
                start.seed.rotate_left(n as u32 * 21) ^ (n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            Leg {
                ssrc: bits as u32,
                sequence: (bits >> 32) as u16,
                timestamp: (bits >> 16) as u32,
                events_at: (0, 0),
            }
        };
        let mut targets = vec![start.target];
        targets.extend(start.fallbacks.iter().filter(|a| **a != start.target));
        let stream = Stream {
            uuid: start.uuid,
            caller,
            callee,
            local_ports: start.local_ports,
            targets,
            current: 0,
            extensions,
            part: Continuation {
                part: 1,
                offset_ms: 0,
                timestamps: [None; 2],
            },
            write_samples: 0,
            part_start: 0,
            failover_after: start.failover_after,
            unacked_since: Some(now),
            media_samples: 0,
            first_forwarded: None,
            last_forwarded: [None; 2],
            started_at: now,
            mode: start.mode,
            inv,
            state: State::Inviting {
                sent: 1,
                next: now + start.retransmit,
            },
            retransmit: start.retransmit,
            tries: start.tries.max(1),
            server_ports: None,
            pending: VecDeque::new(),
            max_pending: start.max_pending,
            legs: [leg(1), leg(2)],
            stats: StreamStats::default(),
            buffer: Vec::with_capacity(2048),
            refresh: start.refresh,
            inv_sent_at: now,
            event_clock: start.event_clock.max(1),
            dtmf_sent: 0,
            frames_per_datagram,
            gathered: Default::default(),
            heard_until: None,
            live,
        };
        emit(Via::Control, stream.target(), &stream.inv);
        Ok(stream)
    }

    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// Whether frames wait for others to go with them (DATA mode with
    /// `frames_per_datagram` above 1, while nobody hears the call live): the
    /// call's audio is late by a frame's time or more anyway.
    pub fn gathers(&self) -> bool {
        self.mode == Mode::Data && self.frames_per_datagram > 1 && self.heard_until.is_none()
    }

    /// The receiver says someone hears the call live (`LIVE`, from `from`):
    /// a stream started with [`StreamStart::live`] sends what it holds now,
    /// and each frame at once for the next [`crate::LIVE_HOLDS`] (the
    /// receiver says it again before then while anyone hears). From another
    /// address, or to a stream that did not ask, it changes nothing.
    pub fn live_from(
        &mut self,
        from: SocketAddr,
        now: Instant,
        emit: &mut dyn FnMut(Via, SocketAddr, &[u8]),
    ) {
        if !self.live || !same_receiver(from, self.target()) || self.is_closing() {
            return;
        }
        if self.heard_until.is_none() {
            self.send_gathered(emit);
            self.stats.heard += 1;
        }
        self.heard_until = Some(now + crate::LIVE_HOLDS);
    }

    /// The frames this stream puts in a DATA datagram: 1 when it sends each
    /// frame at once (RTP mode too).
    pub fn frames_per_datagram(&self) -> u32 {
        if self.gathers() {
            self.frames_per_datagram
        } else {
            1
        }
    }

    /// The receiver's address: where the INV went, and the only address audio
    /// back (PLAY, CLR, MARK) is taken from.
    pub fn target(&self) -> SocketAddr {
        self.targets[self.current]
    }

    /// The call's receivers in order of preference, the first one first.
    pub fn targets(&self) -> &[SocketAddr] {
        &self.targets
    }

    /// The part of the call the current receiver records (1 until a failover).
    pub fn part(&self) -> u32 {
        self.part.part
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    pub fn is_closing(&self) -> bool {
        matches!(self.state, State::Closing { .. } | State::Closed)
    }

    /// One frame of audio. `rtp_clock_samples` advances the RTP timestamp.
    pub fn frame(
        &mut self,
        direction: Direction,
        payload_type: u8,
        rtp_clock_samples: u32,
        payload: &[u8],
        emit: &mut dyn FnMut(Via, SocketAddr, &[u8]),
    ) {
        if self.is_closing() {
            return;
        }
        let handed = match direction {
            Direction::Read => &mut self.media_samples,
            Direction::Write => &mut self.write_samples,
        };
        let position = *handed;
        *handed += u64::from(rtp_clock_samples);
        if position < self.part_start {
            self.stats.frames_dropped_waiting += 1;
            return;
        }
        match self.mode {
            Mode::Data => {
                if let Some(pt) = PayloadType::new(payload_type) {
                    self.gather(direction, pt, payload, emit);
                }
            }
            Mode::Rtp => match self.server_ports {
                Some(ports) => self.send_rtp(
                    ports,
                    direction,
                    payload_type,
                    rtp_clock_samples,
                    payload,
                    emit,
                ),
                None => self.hold(direction, Some((payload_type, rtp_clock_samples)), payload),
            },
        }
    }

    /// A key press seen on the call, just released after `duration_ms`: in
    /// DATA mode a DTMF datagram (three copies), in RTP mode three RFC 4733
    /// end packets on the direction's leg, at the leg's current timestamp.
    /// RTP mode before the ports are known: dropped (and counted).
    pub fn dtmf(
        &mut self,
        direction: Direction,
        digit: char,
        duration_ms: u32,
        emit: &mut dyn FnMut(Via, SocketAddr, &[u8]),
    ) {
        if self.is_closing() {
            return;
        }
        // The audio before the key press goes before it.
        self.send_gathered(emit);
        let sequence = self.dtmf_sent;
        self.dtmf_sent += 1;
        match self.mode {
            Mode::Data => {
                self.buffer.clear();
                let message = Message::Dtmf(Dtmf {
                    uuid: Uuid::trusted(&self.uuid),
                    direction,
                    sequence,
                    digit,
                    duration_ms,
                });
                if message.encode(&mut self.buffer).is_err() {
                    return;
                }
                for _ in 0..DTMF_COPIES {
                    emit(Via::Control, self.target(), &self.buffer);
                }
            }
            Mode::Rtp => {
                let (Some(ports), Some(event)) =
                    (self.server_ports, TelephoneEvent::event_of(digit))
                else {
                    self.stats.frames_dropped_waiting += 1;
                    return;
                };
                let duration = u64::from(duration_ms) * u64::from(self.event_clock) / 1000;
                let payload = TelephoneEvent {
                    event,
                    end: true,
                    volume: 10,
                    duration: duration.min(u64::from(u16::MAX)) as u16,
                }
                .encode();
                let to = SocketAddr::new(self.target().ip(), port_of(ports, direction));
                let leg = &mut self.legs[direction as usize];
                leg.events_at = match leg.events_at {
                    (at, n) if at == leg.timestamp => (at, n + 1),
                    _ => (leg.timestamp, 0),
                };
                let timestamp = leg.timestamp.wrapping_add(leg.events_at.1);
                for copy in 0..DTMF_COPIES {
                    self.buffer.clear();
                    RtpPacket {
                        marker: copy == 0,
                        payload_type: RTP_EVENT_PAYLOAD_TYPE,
                        sequence: leg.sequence,
                        timestamp,
                        ssrc: leg.ssrc,
                        payload: &payload,
                    }
                    .encode(&mut self.buffer);
                    leg.sequence = leg.sequence.wrapping_add(1);
                    emit(Via::Rtp(direction), to, &self.buffer);
                }
            }
        }
    }

    /// Tells the receiver a point it marked was played (or, `cleared`,
    /// dropped by a clear): `MARK:UUID:NAME[:cleared]`, `wire_name` as it came.
    pub fn mark(
        &mut self,
        wire_name: &str,
        cleared: bool,
        emit: &mut dyn FnMut(Via, SocketAddr, &[u8]),
    ) {
        self.buffer.clear();
        let mark = Message::Mark(crate::Mark {
            uuid: Uuid::trusted(&self.uuid),
            wire_name,
            cleared,
        });
        if mark.encode(&mut self.buffer).is_ok() {
            emit(Via::Control, self.target(), &self.buffer);
        }
    }

    /// RTP mode: forwards a captured RTP packet unchanged (its sequence numbers,
    /// timestamps and SSRC carry the wire's loss and jitter to the recording),
    /// captured at `now`.
    pub fn forward_rtp(
        &mut self,
        direction: Direction,
        packet: &[u8],
        now: Instant,
        emit: &mut dyn FnMut(Via, SocketAddr, &[u8]),
    ) {
        if self.is_closing() || self.mode != Mode::Rtp {
            return;
        }
        self.clock_rtp(direction, packet, now);
        match self.server_ports {
            Some(ports) => {
                emit(
                    Via::Rtp(direction),
                    SocketAddr::new(self.target().ip(), port_of(ports, direction)),
                    packet,
                );
                self.stats.frames_sent += 1;
                self.stats.datagrams_sent += 1;
            }
            None => self.hold(direction, None, packet),
        }
    }

    /// Keeps the newest timestamp of a direction's forwarded RTP and when it
    /// came: a failover tells the next receiver where each direction stood
    /// ([`Stream::timestamps_at`]). A late packet (less than a minute
    /// behind) changes nothing; any other step, a new SSRC's too, is news.
    fn clock_rtp(&mut self, direction: Direction, packet: &[u8], now: Instant) {
        let Ok(rtp) = RtpPacket::parse(packet) else {
            return;
        };
        self.first_forwarded.get_or_insert(now);
        let last = &mut self.last_forwarded[direction as usize];
        if let Some((timestamp, _)) = *last {
            let behind = timestamp.wrapping_sub(rtp.timestamp);
            if behind < self.event_clock.saturating_mul(60) {
                return; // this frame's timestamp again, or a late packet
            }
        }
        *last = Some((rtp.timestamp, now));
    }

    /// Each direction's forwarded RTP timestamp at `now`: its newest, moved
    /// on by the time since (a direction in silence keeps its clock).
    fn timestamps_at(&self, now: Instant) -> [Option<u32>; 2] {
        self.last_forwarded.map(|last| {
            let (timestamp, at) = last?;
            let since = now.saturating_duration_since(at).as_secs_f64();
            let step = (since * f64::from(self.event_clock)).round() as u64;
            Some(timestamp.wrapping_add(step as u32))
        })
    }

    /// Where the call stands on its media clock, in ms: the audio handed
    /// over so far (of the direction ahead) for frames; for forwarded RTP,
    /// the time since its first packet; before any audio, the time since
    /// the stream began.
    fn media_ms(&self, now: Instant) -> u64 {
        let samples = self.media_samples.max(self.write_samples);
        if samples > 0 {
            return samples * 1000 / u64::from(self.event_clock);
        }
        let since = self.first_forwarded.unwrap_or(self.started_at);
        now.saturating_duration_since(since).as_millis() as u64
    }

    fn hold(&mut self, direction: Direction, frame: Option<(u8, u32)>, payload: &[u8]) {
        if self.pending.len() < self.max_pending {
            self.pending.push_back(Pending {
                direction,
                frame,
                payload: payload.to_vec(),
            });
        } else {
            self.stats.frames_dropped_waiting += 1;
        }
    }

    /// The call's INV again with `extensions` (all of them, not only the new
    /// ones): the receiver adds the payload types it did not know, so audio
    /// of a codec a re-INVITE brought in is decoded. Audio goes on meanwhile;
    /// the INV is retransmitted until ACKed ([`Stream::next_timeout`] says
    /// when). A closing stream ignores it.
    pub fn declare(
        &mut self,
        extensions: &str,
        now: Instant,
        emit: &mut dyn FnMut(Via, SocketAddr, &[u8]),
    ) -> Result<(), String> {
        let inv = encode_inv(
            &self.uuid,
            &self.caller,
            &self.callee,
            self.local_ports,
            &with_continuation(extensions, &self.part),
        )?;
        match self.state {
            State::Closing { .. } | State::Closed => return Ok(()),
            // The first INV's retransmissions carry the new one from now on.
            State::Inviting { .. } => {}
            State::Open | State::Updating { .. } => {
                self.state = State::Updating {
                    sent: 1,
                    next: now + self.retransmit,
                };
            }
        }
        // The audio before the new INV (another rate, say) goes before it.
        self.send_gathered(emit);
        self.inv = inv;
        self.extensions = extensions.to_owned();
        emit(Via::Control, self.target(), &self.inv);
        self.inv_sent_at = now;
        self.unacked_since.get_or_insert(now);
        Ok(())
    }

    /// An ACK for this stream's UUID arrived from `from`: as [`Stream::ack`]
    /// when it is the current receiver; a late answer of a receiver the call
    /// failed over from is ignored.
    pub fn ack_from(
        &mut self,
        from: SocketAddr,
        ports: Option<RtpPorts>,
        emit: &mut dyn FnMut(Via, SocketAddr, &[u8]),
    ) {
        if same_receiver(from, self.target()) {
            self.ack(ports, emit);
        }
    }

    /// The shell learnt that `receiver` is unreachable (an ICMP error on
    /// sending to it): when it is this call's and there is another, the
    /// call fails over now.
    pub fn unreachable(
        &mut self,
        receiver: SocketAddr,
        now: Instant,
        emit: &mut dyn FnMut(Via, SocketAddr, &[u8]),
    ) -> Option<Trouble> {
        if !same_receiver(receiver, self.target()) || !self.can_fail_over() {
            return None;
        }
        Some(self.fail_over(now, emit))
    }

    fn can_fail_over(&self) -> bool {
        self.targets.len() > 1 && !self.is_closing()
    }

    /// Moves the call to the next receiver of its order: INV there with the
    /// part and its offset; the audio follows.
    fn fail_over(&mut self, now: Instant, emit: &mut dyn FnMut(Via, SocketAddr, &[u8])) -> Trouble {
        // What the old receiver's part holds still goes there, before its BYE.
        self.send_gathered(emit);
        let from = self.target();
        // A receiver that was only slow (alive, its ACK late) closes its
        // part now rather than when the call times out there; a dead one
        // never reads this. Sent once: its ACK is ignored like any other.
        self.send_bye(emit);
        self.current = (self.current + 1) % self.targets.len();
        self.part = Continuation {
            part: self.part.part + 1,
            offset_ms: self.media_ms(now),
            timestamps: self.timestamps_at(now),
        };
        self.part_start = self.media_samples.max(self.write_samples);
        self.stats.failovers += 1;
        self.stats.frames_dropped_waiting += self.pending.len() as u64;
        self.pending.clear();
        self.server_ports = None;
        // Who hears the call there, the new receiver says.
        self.heard_until = None;
        // The extensions were valid when given, and part/offset are digits:
        // the INV encodes; should it not, the last one stays (better than none).
        if let Ok(inv) = encode_inv(
            &self.uuid,
            &self.caller,
            &self.callee,
            self.local_ports,
            &with_continuation(&self.extensions, &self.part),
        ) {
            self.inv = inv;
        }
        self.state = State::Inviting {
            sent: 1,
            next: now + self.retransmit,
        };
        emit(Via::Control, self.target(), &self.inv);
        self.inv_sent_at = now;
        self.unacked_since = Some(now);
        Trouble::FailedOver {
            from,
            to: self.target(),
            part: self.part.part,
            offset_ms: self.part.offset_ms,
        }
    }

    /// An ACK for this stream's UUID arrived.
    pub fn ack(&mut self, ports: Option<RtpPorts>, emit: &mut dyn FnMut(Via, SocketAddr, &[u8])) {
        match self.state {
            State::Inviting { .. } | State::Updating { .. } | State::Open => {
                self.state = State::Open;
                self.unacked_since = None;
                // A repeated INV gets the ports of the first ACK. Others mean
                // the receiver took the call up anew (it restarted, or first
                // answered a refresh after the INV was given up on): the
                // audio follows, with what was held meanwhile.
                if self.mode == Mode::Rtp && ports.is_some() && ports != self.server_ports {
                    self.server_ports = ports;
                    self.flush_pending(emit);
                }
            }
            State::Closing {
                sent,
                next,
                inv_unanswered: true,
            } => {
                self.state = State::Closing {
                    sent,
                    next,
                    inv_unanswered: false,
                }
            }
            State::Closing { .. } => self.state = State::Closed,
            State::Closed => {}
        }
    }

    /// Sends what was held while no ports were known.
    fn flush_pending(&mut self, emit: &mut dyn FnMut(Via, SocketAddr, &[u8])) {
        let Some(ports) = self.server_ports else {
            return;
        };
        while let Some(held) = self.pending.pop_front() {
            match held.frame {
                Some((payload_type, samples)) => self.send_rtp(
                    ports,
                    held.direction,
                    payload_type,
                    samples,
                    &held.payload,
                    emit,
                ),
                None => {
                    let to = SocketAddr::new(self.target().ip(), port_of(ports, held.direction));
                    emit(Via::Rtp(held.direction), to, &held.payload);
                    self.stats.frames_sent += 1;
                    self.stats.datagrams_sent += 1;
                }
            }
        }
    }

    /// The call is over: BYE until ACKed.
    pub fn stop(&mut self, now: Instant, emit: &mut dyn FnMut(Via, SocketAddr, &[u8])) {
        if self.is_closing() {
            return;
        }
        self.send_gathered(emit);
        self.pending.clear();
        self.state = State::Closing {
            sent: 1,
            next: now + self.retransmit,
            inv_unanswered: matches!(self.state, State::Inviting { .. } | State::Updating { .. }),
        };
        self.send_bye(emit);
    }

    /// Retransmits what is due, and refreshes the INV when it is time;
    /// returns trouble to report, once.
    pub fn poll(
        &mut self,
        now: Instant,
        emit: &mut dyn FnMut(Via, SocketAddr, &[u8]),
    ) -> Option<Trouble> {
        if self.heard_until.is_some_and(|until| now >= until) {
            // Nobody heard of for a while: gather again.
            self.heard_until = None;
        }
        if self.can_fail_over()
            && self
                .unacked_since
                .is_some_and(|since| now.saturating_duration_since(since) >= self.failover_after)
        {
            return Some(self.fail_over(now, emit));
        }
        match self.state {
            State::Open
                if self.refresh.is_some_and(|every| {
                    now.saturating_duration_since(self.inv_sent_at) >= every
                }) =>
            {
                // Answered idempotently (same ports) by the receiver that has
                // the call. Retransmitted as a declaration is: one lost
                // datagram must not look like a dead receiver.
                emit(Via::Control, self.target(), &self.inv);
                self.inv_sent_at = now;
                self.unacked_since.get_or_insert(now);
                self.state = State::Updating {
                    sent: 1,
                    next: now + self.retransmit,
                };
            }
            State::Inviting { sent, next } if now >= next => {
                if sent >= self.tries {
                    self.state = State::Open;
                    self.stats.frames_dropped_waiting += self.pending.len() as u64;
                    self.pending.clear();
                    return Some(Trouble::NoAckForInv { tries: sent });
                }
                emit(Via::Control, self.target(), &self.inv);
                self.inv_sent_at = now;
                self.state = State::Inviting {
                    sent: sent + 1,
                    next: now + self.backoff(sent),
                };
            }
            State::Updating { sent, next } if now >= next => {
                if sent >= self.tries {
                    self.state = State::Open;
                    return Some(Trouble::NoAckForInv { tries: sent });
                }
                emit(Via::Control, self.target(), &self.inv);
                self.inv_sent_at = now;
                self.state = State::Updating {
                    sent: sent + 1,
                    next: now + self.backoff(sent),
                };
            }
            State::Closing {
                sent,
                next,
                inv_unanswered,
            } if now >= next => {
                if sent >= self.tries {
                    self.state = State::Closed;
                    return Some(Trouble::NoAckForBye { tries: sent });
                }
                self.send_bye(emit);
                self.state = State::Closing {
                    sent: sent + 1,
                    next: now + self.backoff(sent),
                    inv_unanswered,
                };
            }
            _ => {}
        }
        None
    }

    /// When [`Stream::poll`] next has something to do: a retransmission,
    /// the INV's refresh, or the end of a LIVE's hold.
    pub fn next_timeout(&self) -> Option<Instant> {
        let due = match self.state {
            State::Inviting { next, .. }
            | State::Updating { next, .. }
            | State::Closing { next, .. } => Some(next),
            State::Open => self.refresh.map(|every| self.inv_sent_at + every),
            State::Closed => None,
        };
        let failover = self
            .unacked_since
            .filter(|_| self.can_fail_over())
            .map(|since| since + self.failover_after);
        [due, failover, self.heard_until]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether an INV (the first, or a declaration) waits for its ACK.
    pub fn is_awaiting_ack(&self) -> bool {
        matches!(self.state, State::Inviting { .. } | State::Updating { .. })
    }

    fn backoff(&self, sent: u32) -> Duration {
        self.retransmit.saturating_mul(1 << sent.min(6))
    }

    /// A DATA frame joins the direction's held ones; they go as one datagram
    /// once there are `frames_per_datagram`, or before a frame that cannot
    /// join them (another payload type, or more bytes than
    /// [`MAX_GATHERED_PAYLOAD`]). A frame that is full alone (a frame per
    /// datagram, the default) goes at once, the same way.
    fn gather(
        &mut self,
        direction: Direction,
        payload_type: PayloadType,
        payload: &[u8],
        emit: &mut dyn FnMut(Via, SocketAddr, &[u8]),
    ) {
        // Full: as many frames as asked, or no room for another like it.
        let per_datagram = self.frames_per_datagram();
        let full = |frames: u32, bytes: usize| {
            frames >= per_datagram || bytes + payload.len() > MAX_GATHERED_PAYLOAD
        };
        let held = &self.gathered[direction as usize];
        if held.frames > 0
            && (held.payload_type != Some(payload_type)
                || held.payload_len() + payload.len() > MAX_GATHERED_PAYLOAD)
        {
            self.send_direction(direction, emit);
        }
        let held = &mut self.gathered[direction as usize];
        held.payload_type = Some(payload_type);
        held.push(payload);
        held.frames += 1;
        if full(held.frames, held.payload_len()) {
            self.send_direction(direction, emit);
        }
    }

    /// Sends the frames held back in both directions.
    fn send_gathered(&mut self, emit: &mut dyn FnMut(Via, SocketAddr, &[u8])) {
        for direction in Direction::BOTH {
            self.send_direction(direction, emit);
        }
    }

    /// Sends `direction`'s frames held back, as one DATA datagram.
    fn send_direction(
        &mut self,
        direction: Direction,
        emit: &mut dyn FnMut(Via, SocketAddr, &[u8]),
    ) {
        let target = self.target();
        let held = &mut self.gathered[direction as usize];
        let Some(payload_type) = held.payload_type.filter(|_| held.frames > 0) else {
            return;
        };
        let header = Data::header(
            Uuid::trusted(&self.uuid),
            direction,
            payload_type,
            held.payload_len(),
        );
        let start = HEADER_ROOM - header.len();
        held.datagram[start..HEADER_ROOM].copy_from_slice(&header);
        emit(Via::Control, target, &held.datagram[start..]);
        held.datagram.truncate(HEADER_ROOM);
        self.stats.frames_sent += u64::from(std::mem::take(&mut held.frames));
        self.stats.datagrams_sent += 1;
    }

    fn send_bye(&mut self, emit: &mut dyn FnMut(Via, SocketAddr, &[u8])) {
        self.buffer.clear();
        if Message::Bye(Bye {
            uuid: Uuid::trusted(&self.uuid),
        })
        .encode(&mut self.buffer)
        .is_ok()
        {
            emit(Via::Control, self.target(), &self.buffer);
        }
    }

    fn send_rtp(
        &mut self,
        ports: RtpPorts,
        direction: Direction,
        payload_type: u8,
        rtp_clock_samples: u32,
        payload: &[u8],
        emit: &mut dyn FnMut(Via, SocketAddr, &[u8]),
    ) {
        let port = port_of(ports, direction);
        let leg = &mut self.legs[direction as usize];
        self.buffer.clear();
        if payload_type == PayloadType::L16.number() {
            // FreeSWITCH's linear frames are little-endian; RTP's L16 is
            // big-endian on a dynamic payload type (the INV declares it).
            RtpPacket {
                marker: false,
                payload_type: RTP_L16_PAYLOAD_TYPE,
                sequence: leg.sequence,
                timestamp: leg.timestamp,
                ssrc: leg.ssrc,
                payload: &[],
            }
            .encode(&mut self.buffer);
            self.buffer
                .extend(payload.chunks_exact(2).flat_map(|s| [s[1], s[0]]));
        } else {
            RtpPacket {
                marker: false,
                payload_type: payload_type & 0x7F,
                sequence: leg.sequence,
                timestamp: leg.timestamp,
                ssrc: leg.ssrc,
                payload,
            }
            .encode(&mut self.buffer);
        }
        leg.sequence = leg.sequence.wrapping_add(1);
        leg.timestamp = leg.timestamp.wrapping_add(rtp_clock_samples);
        emit(
            Via::Rtp(direction),
            SocketAddr::new(self.target().ip(), port),
            &self.buffer,
        );
        self.stats.frames_sent += 1;
        self.stats.datagrams_sent += 1;
    }
}

fn encode_inv(
    uuid: &str,
    caller: &str,
    callee: &str,
    rtp_ports: Option<RtpPorts>,
    extensions: &str,
) -> Result<Vec<u8>, String> {
    let uuid = Uuid::new(uuid).map_err(|e| e.to_string())?;
    let extensions = Extensions::parse(extensions).map_err(|e| e.to_string())?;
    Message::Inv(Inv {
        uuid,
        caller,
        callee,
        rtp_ports,
        extensions,
    })
    .to_vec()
    .map_err(|e| e.to_string())
}

/// The sender's extensions with the continuation of part `part` after them.
fn with_continuation(extensions: &str, part: &Continuation) -> String {
    crate::ExtensionsBuilder::new()
        .raw(extensions)
        .continuation(part)
        .build()
}

/// Whether an answer from `from` is from `receiver` (an IPv4 receiver may
/// answer a dual-stack socket as `::ffff:a.b.c.d`).
fn same_receiver(from: SocketAddr, receiver: SocketAddr) -> bool {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    canonical(from) == canonical(receiver)
}

fn port_of(ports: RtpPorts, direction: Direction) -> u16 {
    match direction {
        Direction::Read => ports.read,
        Direction::Write => ports.write,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Sent = Vec<(Via, SocketAddr, Vec<u8>)>;

    const UUID: &str = "478525a8-8263-4550-b18c-d027d11c9865";

    fn start(mode: Mode, now: Instant) -> (Stream, Sent) {
        start_as(UUID, mode, now).unwrap()
    }

    fn start_as(uuid: &str, mode: Mode, now: Instant) -> Result<(Stream, Sent), String> {
        start_with(uuid, mode, now, |_| {})
    }

    fn start_with(
        uuid: &str,
        mode: Mode,
        now: Instant,
        change: impl FnOnce(&mut StreamStart),
    ) -> Result<(Stream, Sent), String> {
        let mut sent = Sent::new();
        let mut start = StreamStart {
            uuid: uuid.into(),
            caller: "1001".into(),
            callee: "sip:1002".into(),
            target: "127.0.0.1:9527".parse().unwrap(),
            mode,
            local_ports: (mode == Mode::Rtp).then_some(RtpPorts {
                read: 5004,
                write: 5005,
            }),
            extensions: String::new(),
            fallbacks: Vec::new(),
            failover_after: Duration::from_millis(500),
            retransmit: Duration::from_millis(100),
            tries: 3,
            max_pending: 2,
            seed: 42,
            refresh: None,
            event_clock: 8000,
            frames_per_datagram: 1,
            live: false,
        };
        change(&mut start);
        let stream = Stream::start(start, now, &mut |via, to, bytes| {
            sent.push((via, to, bytes.to_vec()))
        })?;
        Ok((stream, sent))
    }

    /// The UUID is checked once, here: every datagram after the INV uses it
    /// unchecked, so a start with one that is no safe file name must fail.
    #[test]
    fn a_uuid_that_is_no_safe_file_name_is_refused_at_the_start() {
        for uuid in ["../etc/passwd", "a b", "", "-x", &"a".repeat(65)] {
            assert!(
                start_as(uuid, Mode::Data, Instant::now()).is_err(),
                "{uuid:?}"
            );
        }
    }

    #[test]
    fn a_key_press_goes_three_times_as_a_datagram_or_as_rfc_4733_end_packets() {
        let now = Instant::now();
        let (mut stream, _) = start(Mode::Data, now);
        let mut sent = Sent::default();
        stream.dtmf(Direction::Read, '5', 280, &mut |via, to, bytes| {
            sent.push((via, to, bytes.to_vec()))
        });
        stream.dtmf(Direction::Read, '#', 100, &mut |via, to, bytes| {
            sent.push((via, to, bytes.to_vec()))
        });
        assert_eq!(sent.len(), 6);
        let Ok(Message::Dtmf(first)) = Message::parse(&sent[0].2) else {
            panic!("{:?}", sent[0])
        };
        assert_eq!(
            (first.sequence, first.digit, first.duration_ms),
            (0, '5', 280)
        );
        assert_eq!(sent[1].2, sent[0].2);
        let Ok(Message::Dtmf(second)) = Message::parse(&sent[3].2) else {
            panic!()
        };
        assert_eq!((second.sequence, second.digit), (1, '#'));

        let (mut stream, _) = start(Mode::Rtp, now);
        let ports = RtpPorts {
            read: 7000,
            write: 7002,
        };
        stream.ack(Some(ports), &mut |_, _, _| {});
        let mut sent = Sent::default();
        stream.frame(
            Direction::Write,
            0,
            160,
            &[0xFF; 160],
            &mut |via, to, bytes| sent.push((via, to, bytes.to_vec())),
        );
        stream.dtmf(Direction::Write, '5', 100, &mut |via, to, bytes| {
            sent.push((via, to, bytes.to_vec()))
        });
        assert_eq!(sent.len(), 4);
        let audio = RtpPacket::parse(&sent[0].2).unwrap();
        for (i, (via, to, bytes)) in sent[1..].iter().enumerate() {
            assert_eq!(*via, Via::Rtp(Direction::Write));
            assert_eq!(to.port(), 7002);
            let packet = RtpPacket::parse(bytes).unwrap();
            assert_eq!(packet.payload_type, RTP_EVENT_PAYLOAD_TYPE);
            assert_eq!(packet.marker, i == 0);
            assert_eq!(packet.ssrc, audio.ssrc);
            assert_eq!(packet.sequence, audio.sequence.wrapping_add(1 + i as u16));
            assert_eq!(packet.timestamp, audio.timestamp.wrapping_add(160));
            let event = TelephoneEvent::parse(packet.payload).unwrap();
            assert_eq!((event.event, event.end, event.duration), (5, true, 800));
        }
        // A second key before the next audio frame gets a timestamp of its own.
        let mut again = Sent::default();
        stream.dtmf(Direction::Write, '6', 100, &mut |via, to, bytes| {
            again.push((via, to, bytes.to_vec()))
        });
        let packet = RtpPacket::parse(&again[0].2).unwrap();
        assert_eq!(packet.timestamp, audio.timestamp.wrapping_add(161));
    }

    #[test]
    fn inv_is_retransmitted_with_backoff_until_acked() {
        let t0 = Instant::now();
        let (mut stream, mut sent) = start(Mode::Data, t0);
        assert_eq!(
            sent[0].2,
            b"INV :478525a8-8263-4550-b18c-d027d11c9865:1001:sip1002"
        );
        let mut emit = |via, to, bytes: &[u8]| sent.push((via, to, bytes.to_vec()));
        assert_eq!(stream.poll(t0 + Duration::from_millis(50), &mut emit), None);
        stream.poll(t0 + Duration::from_millis(100), &mut emit);
        // The second retransmission waits twice as long.
        stream.poll(t0 + Duration::from_millis(250), &mut emit);
        stream.poll(t0 + Duration::from_millis(300), &mut emit);
        stream.ack(None, &mut emit);
        stream.poll(t0 + Duration::from_secs(10), &mut emit);
        assert_eq!(sent.len(), 3);
    }

    #[test]
    fn an_unanswered_inv_is_reported_once_and_audio_still_goes_in_data_mode() {
        let t0 = Instant::now();
        let (mut stream, mut sent) = start(Mode::Data, t0);
        let mut emit = |via, to, bytes: &[u8]| sent.push((via, to, bytes.to_vec()));
        let mut troubles = Vec::new();
        for ms in (0..5000).step_by(10) {
            troubles.extend(stream.poll(t0 + Duration::from_millis(ms), &mut emit));
        }
        assert_eq!(troubles, [Trouble::NoAckForInv { tries: 3 }]);
        stream.frame(Direction::Read, 0, 160, &[0xFF; 160], &mut emit);
        let last = &sent.last().unwrap().2;
        assert!(last.starts_with(b"DATA:478525a8-8263-4550-b18c-d027d11c9865:R:00:160:"));
    }

    #[test]
    fn rtp_mode_holds_frames_until_the_ports_are_known() {
        let t0 = Instant::now();
        let (mut stream, mut sent) = start(Mode::Rtp, t0);
        assert!(sent[0].2.ends_with(b":5004:5005"));
        let mut emit = |via, to, bytes: &[u8]| sent.push((via, to, bytes.to_vec()));
        for _ in 0..3 {
            stream.frame(Direction::Read, 0, 160, &[1; 160], &mut emit);
        }
        assert_eq!(stream.stats.frames_dropped_waiting, 1);
        stream.ack(
            Some(RtpPorts {
                read: 6004,
                write: 6005,
            }),
            &mut emit,
        );
        stream.frame(Direction::Write, 8, 160, &[2; 160], &mut emit);
        let rtp: Vec<_> = sent
            .iter()
            .filter(|(via, ..)| *via != Via::Control)
            .collect();
        assert_eq!(rtp.len(), 3);
        let first = RtpPacket::parse(&rtp[0].2).unwrap();
        let second = RtpPacket::parse(&rtp[1].2).unwrap();
        assert_eq!(rtp[0].1.port(), 6004);
        assert_eq!(second.sequence, first.sequence.wrapping_add(1));
        assert_eq!(second.timestamp, first.timestamp.wrapping_add(160));
        assert_eq!(first.ssrc, second.ssrc);
        let write = RtpPacket::parse(&rtp[2].2).unwrap();
        assert_eq!((rtp[2].1.port(), write.payload_type), (6005, 8));
        assert_ne!(write.ssrc, first.ssrc);
    }

    #[test]
    fn captured_rtp_is_forwarded_unchanged_once_the_ports_are_known() {
        let t0 = Instant::now();
        let (mut stream, mut sent) = start(Mode::Rtp, t0);
        let mut emit = |via, to, bytes: &[u8]| sent.push((via, to, bytes.to_vec()));
        let mut packet = Vec::new();
        RtpPacket {
            marker: true,
            payload_type: 8,
            sequence: 7,
            timestamp: 99,
            ssrc: 5,
            payload: &[1, 2],
        }
        .encode(&mut packet);
        stream.forward_rtp(Direction::Write, &packet, t0, &mut emit);
        stream.ack(
            Some(RtpPorts {
                read: 6004,
                write: 6005,
            }),
            &mut emit,
        );
        stream.forward_rtp(Direction::Read, &packet, t0, &mut emit);
        let rtp: Vec<_> = sent
            .iter()
            .filter(|(via, ..)| *via != Via::Control)
            .collect();
        assert_eq!(rtp.len(), 2);
        assert_eq!((rtp[0].1.port(), &rtp[0].2), (6005, &packet));
        assert_eq!((rtp[1].1.port(), &rtp[1].2), (6004, &packet));
    }

    /// `start`, with what was sent in a cell that the emitter and the test share.
    fn start_shared(mode: Mode, now: Instant) -> (Stream, std::rc::Rc<std::cell::RefCell<Sent>>) {
        let (stream, sent) = start(mode, now);
        (stream, std::rc::Rc::new(std::cell::RefCell::new(sent)))
    }

    fn emitter(
        sent: &std::rc::Rc<std::cell::RefCell<Sent>>,
    ) -> impl FnMut(Via, SocketAddr, &[u8]) + '_ {
        move |via, to, bytes: &[u8]| sent.borrow_mut().push((via, to, bytes.to_vec()))
    }

    fn invs(sent: &std::cell::RefCell<Sent>) -> Vec<Vec<u8>> {
        sent.borrow()
            .iter()
            .filter(|s| s.2.starts_with(b"INV "))
            .map(|s| s.2.clone())
            .collect()
    }

    const PORTS: RtpPorts = RtpPorts {
        read: 6004,
        write: 6005,
    };

    #[test]
    fn an_answered_stream_refreshes_its_inv() {
        let t0 = Instant::now();
        let (mut stream, sent) = start_shared(Mode::Rtp, t0);
        stream.refresh = Some(Duration::from_secs(10));
        let mut emit = emitter(&sent);
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        stream.ack(Some(PORTS), &mut emit);
        // Every 10 s after the last INV, packets flowing or not.
        for second in [5, 9] {
            stream.frame(Direction::Read, 0, 160, &[0; 160], &mut emit);
            stream.poll(at(second), &mut emit);
        }
        assert_eq!(invs(&sent).len(), 1);
        stream.poll(at(10), &mut emit);
        assert_eq!(invs(&sent).len(), 2);
        assert!(stream.is_awaiting_ack());
        stream.ack(Some(PORTS), &mut emit);
        stream.poll(at(19), &mut emit);
        assert_eq!(invs(&sent).len(), 2);
        stream.poll(at(20), &mut emit);
        assert_eq!(invs(&sent).len(), 3);
        // A refresh not answered is sent again, as a first INV is.
        stream.poll(at(20) + Duration::from_millis(100), &mut emit);
        assert_eq!(invs(&sent).len(), 4);
        let all = invs(&sent);
        assert!(all.iter().all(|inv| *inv == all[0]));
        // The same ports back change nothing; a closing stream sends BYEs.
        stream.ack(Some(PORTS), &mut emit);
        assert!(!stream.is_awaiting_ack());
        assert_eq!(
            stream.next_timeout(),
            Some(at(30) + Duration::from_millis(100)),
            "the next refresh, 10 s after the last INV sent"
        );
        stream.stop(at(21), &mut emit);
        stream.poll(at(60), &mut emit);
        assert_eq!(invs(&sent).len(), 4);
    }

    #[test]
    fn without_refresh_an_answered_stream_sends_nothing_more() {
        let t0 = Instant::now();
        let (mut stream, sent) = start_shared(Mode::Rtp, t0);
        let mut emit = emitter(&sent);
        stream.ack(Some(PORTS), &mut emit);
        stream.poll(t0 + Duration::from_secs(3600), &mut emit);
        assert_eq!(sent.borrow().len(), 1, "only the first INV");
    }

    #[test]
    fn the_audio_follows_a_receiver_that_took_the_call_up_on_new_ports() {
        let t0 = Instant::now();
        let (mut stream, sent) = start_shared(Mode::Rtp, t0);
        let mut emit = emitter(&sent);
        let rtp_ports = |sent: &std::cell::RefCell<Sent>| -> Vec<u16> {
            sent.borrow()
                .iter()
                .filter(|s| s.0 != Via::Control)
                .map(|s| s.1.port())
                .collect()
        };
        stream.ack(Some(PORTS), &mut emit);
        stream.frame(Direction::Read, 0, 160, &[0; 160], &mut emit);
        let restarted = RtpPorts {
            read: 7004,
            write: 7005,
        };
        stream.ack(Some(restarted), &mut emit);
        stream.frame(Direction::Write, 0, 160, &[0; 160], &mut emit);
        assert_eq!(rtp_ports(&sent), [6004, 7005]);
    }

    #[test]
    fn a_late_answer_after_the_inv_was_given_up_brings_the_held_audio() {
        let t0 = Instant::now();
        let (mut stream, sent) = start_shared(Mode::Rtp, t0);
        let mut emit = emitter(&sent);
        // No answer: the INV is given up on, what was held is dropped.
        stream.frame(Direction::Read, 0, 160, &[0; 160], &mut emit);
        let mut at = t0;
        while stream.next_timeout().is_some() {
            at += Duration::from_secs(60);
            stream.poll(at, &mut emit);
        }
        assert_eq!(stream.stats.frames_dropped_waiting, 1);
        // Audio meanwhile is held; the receiver answers a refresh at last.
        stream.frame(Direction::Read, 0, 160, &[0; 160], &mut emit);
        stream.frame(Direction::Write, 0, 160, &[0; 160], &mut emit);
        assert_eq!(
            sent.borrow().iter().filter(|s| s.0 != Via::Control).count(),
            0
        );
        stream.ack(Some(PORTS), &mut emit);
        let rtp: Vec<u16> = sent
            .borrow()
            .iter()
            .filter(|s| s.0 != Via::Control)
            .map(|s| s.1.port())
            .collect();
        assert_eq!(rtp, [6004, 6005]);
    }

    #[test]
    fn declare_resends_the_inv_until_acked_while_rtp_goes_on() {
        let t0 = Instant::now();
        let (mut stream, sent) = start_shared(Mode::Rtp, t0);
        let mut emit = emitter(&sent);
        stream.ack(Some(PORTS), &mut emit);
        assert_eq!(stream.next_timeout(), None);
        stream
            .declare("pt96=opus/48000:call-id=x", t0, &mut emit)
            .unwrap();
        assert_eq!(
            invs(&sent).last().unwrap(),
            b"INV :478525a8-8263-4550-b18c-d027d11c9865:1001:sip1002:5004:5005:pt96=opus/48000:call-id=x"
        );
        assert!(stream.next_timeout().is_some());
        // RTP still flows while the INV is unanswered.
        stream.frame(Direction::Read, 96, 960, &[1; 80], &mut emit);
        assert_eq!(sent.borrow().last().unwrap().0, Via::Rtp(Direction::Read));
        stream.poll(t0 + Duration::from_millis(100), &mut emit);
        assert_eq!(invs(&sent).len(), 3);
        stream.ack(Some(PORTS), &mut emit);
        assert_eq!(stream.next_timeout(), None);
        stream.poll(t0 + Duration::from_secs(10), &mut emit);
        assert_eq!(invs(&sent).len(), 3);
        // Extensions that would break the INV are refused, nothing is sent.
        assert!(stream.declare("no-equals-sign", t0, &mut emit).is_err());
        assert_eq!(invs(&sent).len(), 3);
    }

    #[test]
    fn an_unanswered_declare_is_reported_once_and_the_stream_stays_open() {
        let t0 = Instant::now();
        let (mut stream, sent) = start_shared(Mode::Rtp, t0);
        let mut emit = emitter(&sent);
        stream.ack(Some(PORTS), &mut emit);
        stream.declare("pt96=opus/48000", t0, &mut emit).unwrap();
        let mut troubles = Vec::new();
        for ms in (0..5000).step_by(10) {
            troubles.extend(stream.poll(t0 + Duration::from_millis(ms), &mut emit));
        }
        assert_eq!(troubles, [Trouble::NoAckForInv { tries: 3 }]);
        assert!(!stream.is_closing());
        stream.frame(Direction::Write, 96, 960, &[1; 80], &mut emit);
        assert_eq!(sent.borrow().last().unwrap().0, Via::Rtp(Direction::Write));
        // After a BYE, a declaration is ignored.
        stream.stop(t0, &mut emit);
        let before = sent.borrow().len();
        stream.declare("pt97=PCMU/8000", t0, &mut emit).unwrap();
        assert_eq!(sent.borrow().len(), before);
    }

    #[test]
    fn declare_before_the_first_ack_replaces_the_inv_being_retransmitted() {
        let t0 = Instant::now();
        let (mut stream, sent) = start_shared(Mode::Rtp, t0);
        let mut emit = emitter(&sent);
        stream.declare("pt96=opus/48000", t0, &mut emit).unwrap();
        stream.poll(t0 + Duration::from_millis(100), &mut emit);
        let invs = invs(&sent);
        assert_eq!(invs.len(), 3);
        assert!(invs[1].ends_with(b":5004:5005:pt96=opus/48000"));
        assert_eq!(invs[1], invs[2]);
        stream.ack(Some(PORTS), &mut emit);
        stream.forward_rtp(Direction::Read, &[0x80; 12], t0, &mut emit);
        assert_eq!(sent.borrow().last().unwrap().1.port(), 6004);
    }

    #[test]
    fn bye_is_retransmitted_until_acked_and_ends_the_stream() {
        let t0 = Instant::now();
        let (mut stream, mut sent) = start(Mode::Data, t0);
        let mut emit = |via, to, bytes: &[u8]| sent.push((via, to, bytes.to_vec()));
        stream.ack(None, &mut emit);
        stream.stop(t0, &mut emit);
        stream.frame(Direction::Read, 0, 160, &[0; 160], &mut emit);
        stream.poll(t0 + Duration::from_millis(100), &mut emit);
        assert!(!stream.is_closed());
        stream.ack(None, &mut emit);
        assert!(stream.is_closed());
        let byes = sent.iter().filter(|s| s.2.starts_with(b"BYE :")).count();
        assert_eq!((byes, sent.len()), (2, 3));
    }

    /// Stopped while its INV was unanswered: the first ACK may be the
    /// INV's (an ACK does not say what it answers), so it does not end the
    /// stream; the BYE's does. Had the first been the BYE's, the BYE goes
    /// again and its second ACK ends the stream.
    #[test]
    fn an_ack_of_the_inv_coming_after_the_bye_does_not_end_the_stream() {
        let t0 = Instant::now();
        let (mut stream, mut sent) = start(Mode::Data, t0);
        let mut emit = |via, to, bytes: &[u8]| sent.push((via, to, bytes.to_vec()));
        stream.stop(t0, &mut emit);
        stream.ack(None, &mut emit); // The INV's, late.
        assert!(!stream.is_closed());
        stream.ack(None, &mut emit); // The BYE's.
        assert!(stream.is_closed());

        let (mut stream, mut sent) = start(Mode::Data, t0);
        let mut emit = |via, to, bytes: &[u8]| sent.push((via, to, bytes.to_vec()));
        stream.stop(t0, &mut emit);
        stream.ack(None, &mut emit); // The BYE's: the INV's was lost.
        stream.poll(t0 + Duration::from_millis(100), &mut emit);
        assert!(!stream.is_closed());
        stream.ack(None, &mut emit); // The repeated BYE's.
        assert!(stream.is_closed());
        let byes = sent.iter().filter(|s| s.2.starts_with(b"BYE :")).count();
        assert_eq!(byes, 2, "the BYE went again");
    }

    /// DATA frames gathered three to a datagram, per direction; a frame of
    /// another payload type, a key press and the BYE send what is held
    /// first, so nothing is lost and the order stays.
    #[test]
    fn data_frames_gathered_go_whole_in_order_before_what_follows_them() {
        let t0 = Instant::now();
        let (mut stream, _) = start(Mode::Data, t0);
        stream.frames_per_datagram = 3;
        let mut sent = Sent::new();
        let mut emit = |via, to, bytes: &[u8]| sent.push((via, to, bytes.to_vec()));
        stream.ack(None, &mut emit);
        for k in 0..4u8 {
            stream.frame(Direction::Read, 0, 160, &[k; 160], &mut emit);
            stream.frame(Direction::Write, 0, 160, &[100 + k; 160], &mut emit);
        }
        stream.frame(Direction::Read, 8, 160, &[9; 160], &mut emit); // PCMA
        stream.dtmf(Direction::Read, '5', 100, &mut emit);
        stream.frame(Direction::Write, 0, 160, &[104; 160], &mut emit);
        stream.stop(t0, &mut emit);
        let messages: Vec<String> = sent
            .iter()
            .map(|(_, _, bytes)| match Message::parse(bytes).unwrap() {
                Message::Data(data) => format!(
                    "{}{}:{}",
                    data.direction.as_str(),
                    data.payload_type.number(),
                    data.payload
                        .chunks(160)
                        .map(|frame| {
                            assert!(frame.iter().all(|&b| b == frame[0]), "a frame whole");
                            frame[0].to_string()
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Message::Dtmf(_) => "DTMF".into(),
                Message::Bye(_) => "BYE".into(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            messages,
            [
                "R0:0,1,2",
                "W0:100,101,102", // three each
                "R0:3",
                "R8:9", // another payload type: the held one first
                "W0:103",
                "DTMF", // a key press (three copies): every held frame first
                "DTMF",
                "DTMF",
                "W0:104",
                "BYE", // the BYE: the same
            ]
        );
        assert_eq!(stream.stats.frames_sent, 10);
        assert_eq!(stream.stats.datagrams_sent, 6);
    }

    /// A stream that gathers unless someone hears the call (`live`): its
    /// INV says `live=1`; a LIVE from its receiver sends what is held at
    /// once, then each frame alone, until LIVE_HOLDS pass with no other
    /// LIVE; then it gathers again. A LIVE from elsewhere changes nothing.
    #[test]
    fn a_live_stream_sends_each_frame_at_once_while_its_receiver_says_live() {
        let t0 = Instant::now();
        let (mut stream, inv) = start_with(UUID, Mode::Data, t0, |start| {
            start.frames_per_datagram = 3;
            start.live = true;
        })
        .unwrap();
        let inv = String::from_utf8(inv[0].2.clone()).unwrap();
        assert!(inv.ends_with(":live=1"), "{inv}");
        let receiver = stream.target();
        let sent = std::rc::Rc::new(std::cell::RefCell::new(Sent::new()));
        let mut emit = emitter(&sent);
        stream.ack(None, &mut emit);
        let frame = |stream: &mut Stream, k: u8, emit: &mut dyn FnMut(Via, SocketAddr, &[u8])| {
            stream.frame(Direction::Read, 0, 160, &[k; 160], emit)
        };
        for k in 0..2 {
            frame(&mut stream, k, &mut emit);
        }
        assert!(
            sent.borrow().is_empty() && stream.gathers(),
            "two of three held"
        );
        stream.live_from(addr("127.0.0.1:1"), t0, &mut emit);
        assert!(
            sent.borrow().is_empty() && stream.gathers(),
            "LIVE from elsewhere"
        );

        let t1 = t0 + Duration::from_millis(40);
        stream.live_from(receiver, t1, &mut emit);
        assert!(!stream.gathers());
        assert_eq!(stream.frames_per_datagram(), 1);
        frame(&mut stream, 2, &mut emit);
        frame(&mut stream, 3, &mut emit);
        // Renewed before it ends, then not: it holds LIVE_HOLDS from the last.
        let t2 = t1 + crate::LIVE_EVERY;
        stream.live_from(receiver, t2, &mut emit);
        assert_eq!(stream.next_timeout(), Some(t2 + crate::LIVE_HOLDS));
        stream.poll(t2 + crate::LIVE_HOLDS - Duration::from_millis(1), &mut emit);
        frame(&mut stream, 4, &mut emit);
        stream.poll(t2 + crate::LIVE_HOLDS, &mut emit);
        assert!(stream.gathers(), "gathers again");
        for k in 5..8 {
            frame(&mut stream, k, &mut emit);
        }
        let datagrams: Vec<Vec<u8>> = sent
            .borrow()
            .iter()
            .map(|(_, to, bytes)| {
                assert_eq!(*to, receiver);
                match Message::parse(bytes).unwrap() {
                    Message::Data(data) => data.payload.chunks(160).map(|f| f[0]).collect(),
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        assert_eq!(
            datagrams,
            [vec![0, 1], vec![2], vec![3], vec![4], vec![5, 6, 7]],
            "the held frames at the LIVE, then one a datagram, then three"
        );
        assert_eq!(stream.stats.heard, 1);
        assert_eq!(
            (stream.stats.frames_sent, stream.stats.datagrams_sent),
            (8, 5)
        );
    }

    /// Without `live`, an INV says nothing of it and a LIVE changes nothing.
    #[test]
    fn a_stream_that_did_not_ask_ignores_live() {
        let t0 = Instant::now();
        for (frames, live) in [(3, false), (1, true)] {
            let (mut stream, inv) = start_with(UUID, Mode::Data, t0, |start| {
                start.frames_per_datagram = frames;
                start.live = live;
            })
            .unwrap();
            assert!(!String::from_utf8_lossy(&inv[0].2).contains("live="));
            let gathers = stream.gathers();
            let receiver = stream.target();
            stream.live_from(receiver, t0, &mut |_, _, _| panic!("nothing to send"));
            assert_eq!(stream.gathers(), gathers);
            assert_eq!(stream.stats.heard, 0);
        }
    }

    #[test]
    fn only_a_data_stream_of_several_frames_per_datagram_gathers() {
        let t0 = Instant::now();
        for (mode, frames, gathers) in [
            (Mode::Data, 1, false),
            (Mode::Data, 3, true),
            (Mode::Rtp, 1, false),
            (Mode::Rtp, 3, false),
        ] {
            let (mut stream, _) = start(mode, t0);
            stream.frames_per_datagram = frames;
            assert_eq!(stream.gathers(), gathers, "{mode:?} {frames}");
        }
    }

    /// Frames gathered never make a datagram of more than
    /// MAX_GATHERED_PAYLOAD bytes (no IP fragments): 16 kHz L16 frames of
    /// 640 bytes go two to a datagram even when three are asked for.
    #[test]
    fn gathered_frames_stay_within_one_ethernet_frame() {
        let t0 = Instant::now();
        let (mut stream, _) = start(Mode::Data, t0);
        stream.frames_per_datagram = 3;
        let mut sent = Sent::new();
        let mut emit = |via, to, bytes: &[u8]| sent.push((via, to, bytes.to_vec()));
        for _ in 0..6 {
            stream.frame(Direction::Read, 10, 320, &[1; 640], &mut emit);
        }
        let sizes: Vec<usize> = sent
            .iter()
            .map(|(_, _, bytes)| match Message::parse(bytes).unwrap() {
                Message::Data(data) => data.payload.len(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sizes, [1280, 1280, 1280]);
        assert!(sent.iter().all(|(_, _, bytes)| bytes.len() < 1472));

        // A frame too big to be joined by another like it still goes after
        // the smaller ones held before it, with them.
        let mut later = Sent::new();
        let mut emit = |via, to, bytes: &[u8]| later.push((via, to, bytes.to_vec()));
        stream.frame(Direction::Write, 10, 50, &[2; 100], &mut emit);
        stream.frame(Direction::Write, 10, 400, &[3; 800], &mut emit);
        let datagrams: Vec<Vec<u8>> = later
            .iter()
            .map(|(_, _, bytes)| match Message::parse(bytes).unwrap() {
                Message::Data(data) => data.payload.to_vec(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(datagrams, [[[2; 100].as_slice(), &[3; 800]].concat()]);
    }

    const A: &str = "127.0.0.1:9527";
    const B: &str = "127.0.0.2:9527";
    const C: &str = "127.0.0.3:9527";

    /// A stream over a pool of A, B and C, refreshing every second.
    fn start_pooled(mode: Mode, now: Instant) -> (Stream, std::rc::Rc<std::cell::RefCell<Sent>>) {
        start_pooled_with(mode, now, |_| {})
    }

    fn start_pooled_with(
        mode: Mode,
        now: Instant,
        change: impl FnOnce(&mut StreamStart),
    ) -> (Stream, std::rc::Rc<std::cell::RefCell<Sent>>) {
        let sent = std::rc::Rc::new(std::cell::RefCell::new(Sent::new()));
        let mut start = StreamStart {
            uuid: "478525a8-8263-4550-b18c-d027d11c9865".into(),
            caller: "1001".into(),
            callee: "1002".into(),
            target: A.parse().unwrap(),
            mode,
            local_ports: (mode == Mode::Rtp).then_some(RtpPorts {
                read: 5004,
                write: 5005,
            }),
            extensions: "call-id=x".into(),
            fallbacks: vec![B.parse().unwrap(), C.parse().unwrap()],
            failover_after: Duration::from_millis(500),
            retransmit: Duration::from_millis(100),
            tries: 3,
            max_pending: 10,
            seed: 42,
            refresh: Some(Duration::from_secs(1)),
            event_clock: 8000,
            frames_per_datagram: 1,
            live: false,
        };
        change(&mut start);
        let stream = Stream::start(start, now, &mut emitter(&sent)).unwrap();
        (stream, sent)
    }

    /// Who hears a call is its receiver's to say: after a failover the old
    /// receiver's LIVE holds no more and is not taken; the new one's is.
    #[test]
    fn a_live_hold_ends_with_a_failover_and_only_the_new_receiver_renews_it() {
        let t0 = Instant::now();
        let (mut stream, sent) = start_pooled_with(Mode::Data, t0, |start| {
            start.frames_per_datagram = 3;
            start.live = true;
        });
        let mut emit = emitter(&sent);
        assert!(invs_to(&sent)[0].1.ends_with(":live=1"));
        stream.ack_from(addr(A), None, &mut emit);
        stream.live_from(addr(A), t0, &mut emit);
        assert!(!stream.gathers());
        stream
            .unreachable(addr(A), t0, &mut emit)
            .expect("failed over");
        assert_eq!(stream.target(), addr(B));
        assert!(stream.gathers(), "the new receiver has not said LIVE");
        let (_, inv) = invs_to(&sent).pop().unwrap();
        assert!(inv.contains(":live=1"), "{inv}");
        stream.live_from(addr(A), t0, &mut emit);
        assert!(stream.gathers(), "the old receiver's LIVE is not taken");
        stream.live_from(addr(B), t0, &mut emit);
        assert!(!stream.gathers());
        assert_eq!(stream.stats.heard, 2);
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// The INVs sent, as (to, text).
    fn invs_to(sent: &std::cell::RefCell<Sent>) -> Vec<(SocketAddr, String)> {
        sent.borrow()
            .iter()
            .filter(|s| s.2.starts_with(b"INV "))
            .map(|s| (s.1, String::from_utf8_lossy(&s.2).into_owned()))
            .collect()
    }

    #[test]
    fn an_unanswered_refresh_moves_the_call_to_the_next_receiver_with_its_offset() {
        let t0 = Instant::now();
        let (mut stream, sent) = start_pooled(Mode::Data, t0);
        let mut emit = emitter(&sent);
        stream.ack_from(addr(A), None, &mut emit);
        // Two seconds of audio (R and W, 20 ms frames at 8 kHz).
        let mut at = t0;
        for _ in 0..100 {
            stream.frame(Direction::Read, 0, 160, &[1; 160], &mut emit);
            stream.frame(Direction::Write, 0, 160, &[2; 160], &mut emit);
            at += Duration::from_millis(20);
            assert_eq!(stream.poll(at, &mut emit), None);
            if invs_to(&sent).len() == 2 {
                stream.ack_from(addr(A), None, &mut emit); // the refresh at 1 s, answered
            }
        }
        assert_eq!(invs_to(&sent).len(), 3, "refreshes at 1 s and 2 s");
        // A died: the refresh at 2 s goes unanswered; 499 ms later nothing moves.
        assert_eq!(
            stream.poll(at + Duration::from_millis(499), &mut emit),
            None
        );
        assert_eq!(stream.target(), addr(A));
        assert_eq!(stream.next_timeout(), Some(at + Duration::from_millis(500)));
        let trouble = stream.poll(at + Duration::from_millis(500), &mut emit);
        assert_eq!(
            trouble,
            Some(Trouble::FailedOver {
                from: addr(A),
                to: addr(B),
                part: 2,
                offset_ms: 2000,
            })
        );
        let (to, inv) = invs_to(&sent).pop().unwrap();
        assert_eq!(to, addr(B));
        // A, perhaps only slow, is told the call left it (once).
        let byes_to_a = sent
            .borrow()
            .iter()
            .filter(|(_, to, bytes)| *to == addr(A) && bytes.starts_with(b"BYE :"))
            .count();
        assert_eq!(byes_to_a, 1);
        assert_eq!(
            inv,
            "INV :478525a8-8263-4550-b18c-d027d11c9865:1001:1002:call-id=x:part=2:offset-ms=2000"
        );
        let Ok(Message::Inv(parsed)) = Message::parse(inv.as_bytes()) else {
            panic!()
        };
        assert_eq!(
            parsed.extensions.continuation(),
            Some(crate::Continuation {
                part: 2,
                offset_ms: 2000,
                timestamps: [None; 2],
            })
        );
        // DATA follows at once; a late ACK from A changes nothing, B's does.
        stream.frame(Direction::Read, 0, 160, &[1; 160], &mut emit);
        assert_eq!(sent.borrow().last().unwrap().1, addr(B));
        stream.ack_from(addr(A), None, &mut emit);
        assert!(stream.is_awaiting_ack());
        stream.ack_from(addr(B), None, &mut emit);
        assert!(!stream.is_awaiting_ack());
        assert_eq!((stream.part(), stream.stats.failovers), (2, 1));
        // Refreshes keep saying which part B has; BYE goes to B.
        stream.poll(at + Duration::from_secs(2), &mut emit);
        assert!(invs_to(&sent)
            .last()
            .unwrap()
            .1
            .ends_with(":part=2:offset-ms=2000"));
        stream.stop(at + Duration::from_secs(2), &mut emit);
        assert_eq!(sent.borrow().last().unwrap().1, addr(B));
        assert!(sent.borrow().last().unwrap().2.starts_with(b"BYE :"));
    }

    #[test]
    fn both_directions_of_the_new_part_begin_at_its_offset() {
        let t0 = Instant::now();
        let (mut stream, sent) = start_pooled(Mode::Data, t0);
        let mut emit = emitter(&sent);
        stream.ack_from(addr(A), None, &mut emit);
        for _ in 0..10 {
            stream.frame(Direction::Read, 0, 160, &[1; 160], &mut emit);
            stream.frame(Direction::Write, 0, 160, &[2; 160], &mut emit);
        }
        // The call moves after R's eleventh frame, before W's: W's eleventh
        // belongs before the new part (at 220 ms) and does not go to B.
        stream.frame(Direction::Read, 0, 160, &[1; 160], &mut emit);
        let moved = stream.unreachable(addr(A), t0, &mut emit);
        assert!(
            matches!(moved, Some(Trouble::FailedOver { offset_ms: 220, .. })),
            "{moved:?}"
        );
        let to_b = || {
            sent.borrow()
                .iter()
                .filter(|(_, to, bytes)| *to == addr(B) && bytes.starts_with(b"DATA"))
                .count()
        };
        stream.frame(Direction::Write, 0, 160, &[2; 160], &mut emit);
        assert_eq!((to_b(), stream.stats.frames_dropped_waiting), (0, 1));
        stream.frame(Direction::Read, 0, 160, &[1; 160], &mut emit);
        stream.frame(Direction::Write, 0, 160, &[2; 160], &mut emit);
        assert_eq!((to_b(), stream.stats.frames_dropped_waiting), (2, 1));
    }

    /// Frames gathered for a datagram when the call moves belong to the old
    /// receiver's part (the new part's offset counts them): they go there,
    /// before its BYE, and the new receiver's first datagram holds only
    /// frames handed after the move.
    #[test]
    fn frames_gathered_when_the_call_moves_go_to_the_old_receiver_before_its_bye() {
        let t0 = Instant::now();
        let (mut stream, sent) = start_pooled(Mode::Data, t0);
        stream.frames_per_datagram = 3;
        let mut emit = emitter(&sent);
        stream.ack_from(addr(A), None, &mut emit);
        // Five frames a direction: one datagram of three went, two are held.
        for k in 0..5u8 {
            stream.frame(Direction::Read, 0, 160, &[k; 160], &mut emit);
            stream.frame(Direction::Write, 0, 160, &[100 + k; 160], &mut emit);
        }
        let moved = stream.unreachable(addr(A), t0, &mut emit);
        assert!(
            matches!(moved, Some(Trouble::FailedOver { offset_ms: 100, .. })),
            "the new part begins after the five frames handed: {moved:?}"
        );
        for k in 5..8u8 {
            stream.frame(Direction::Read, 0, 160, &[k; 160], &mut emit);
            stream.frame(Direction::Write, 0, 160, &[100 + k; 160], &mut emit);
        }
        let to = |receiver: &str| -> Vec<String> {
            sent.borrow()
                .iter()
                .filter(|(_, to, _)| *to == addr(receiver))
                .filter_map(|(_, _, bytes)| match Message::parse(bytes).unwrap() {
                    Message::Data(data) => Some(format!(
                        "{}:{:?}",
                        data.direction.as_str(),
                        data.payload.chunks(160).map(|f| f[0]).collect::<Vec<_>>()
                    )),
                    Message::Bye(_) => Some("BYE".into()),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            to(A),
            [
                "R:[0, 1, 2]",
                "W:[100, 101, 102]",
                "R:[3, 4]",
                "W:[103, 104]",
                "BYE"
            ]
        );
        assert_eq!(to(B), ["R:[5, 6, 7]", "W:[105, 106, 107]"]);
        assert_eq!(stream.stats.frames_dropped_waiting, 0);
        assert_eq!(stream.stats.frames_sent, 16);
    }

    #[test]
    fn an_unanswered_first_inv_goes_round_the_order() {
        let t0 = Instant::now();
        let (mut stream, sent) = start_pooled(Mode::Data, t0);
        let mut emit = emitter(&sent);
        let mut moves = Vec::new();
        let mut at = t0;
        while moves.len() < 3 {
            at += Duration::from_millis(10);
            if let Some(Trouble::FailedOver { to, part, .. }) = stream.poll(at, &mut emit) {
                moves.push((to, part));
            }
        }
        assert_eq!(moves, [(addr(B), 2), (addr(C), 3), (addr(A), 4)]);
        // No audio of R yet: the offset is the time since the start.
        assert!(invs_to(&sent)
            .iter()
            .any(|(to, inv)| *to == addr(B) && inv.ends_with(":part=2:offset-ms=500")));
    }

    #[test]
    fn an_icmp_error_from_the_receiver_fails_over_at_once() {
        let t0 = Instant::now();
        let (mut stream, sent) = start_pooled(Mode::Data, t0);
        let mut emit = emitter(&sent);
        stream.ack_from(addr(A), None, &mut emit);
        assert_eq!(stream.unreachable(addr(C), t0, &mut emit), None);
        let moved = stream.unreachable(addr(A), t0, &mut emit);
        assert!(matches!(moved, Some(Trouble::FailedOver { part: 2, .. })));
        assert_eq!(stream.target(), addr(B));
        // Closing, a call stays where it is.
        stream.stop(t0, &mut emit);
        assert_eq!(stream.unreachable(addr(B), t0, &mut emit), None);
        assert_eq!(stream.poll(t0 + Duration::from_secs(5), &mut emit), None);
    }

    #[test]
    fn rtp_follows_the_new_receivers_ports_and_drops_what_was_held_for_the_old() {
        let t0 = Instant::now();
        let (mut stream, sent) = start_pooled(Mode::Rtp, t0);
        let mut emit = emitter(&sent);
        stream.ack_from(addr(A), Some(PORTS), &mut emit);
        for _ in 0..50 {
            stream.frame(Direction::Read, 0, 160, &[1; 160], &mut emit);
        }
        assert!(stream.unreachable(addr(A), t0, &mut emit).is_some());
        assert!(invs_to(&sent)
            .last()
            .unwrap()
            .1
            .contains(":5004:5005:call-id=x:part=2:offset-ms=1000"));
        stream.frame(Direction::Read, 0, 160, &[1; 160], &mut emit);
        stream.unreachable(addr(B), t0, &mut emit);
        assert_eq!(stream.stats.frames_dropped_waiting, 1);
        let rtp_before = sent.borrow().iter().filter(|s| s.0 != Via::Control).count();
        stream.frame(Direction::Read, 0, 160, &[1; 160], &mut emit);
        stream.ack_from(
            addr(C),
            Some(RtpPorts {
                read: 8000,
                write: 8001,
            }),
            &mut emit,
        );
        let last = sent.borrow().last().unwrap().clone();
        assert_eq!(
            (last.0, last.1),
            (Via::Rtp(Direction::Read), addr("127.0.0.3:8000"))
        );
        let rtp_after = sent.borrow().iter().filter(|s| s.0 != Via::Control).count();
        assert_eq!(rtp_after - rtp_before, 1);
        assert!(invs_to(&sent)
            .last()
            .unwrap()
            .1
            .ends_with(":part=3:offset-ms=1020"));
    }

    #[test]
    fn forwarded_rtp_keeps_time_by_the_clock_and_tells_the_next_receiver_its_timestamps() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let (mut stream, sent) = start_pooled(Mode::Rtp, t0);
        let mut emit = emitter(&sent);
        stream.ack_from(addr(A), Some(PORTS), &mut emit);
        let mut packet = Vec::new();
        let mut forward = |stream: &mut Stream, direction, sequence: u16, timestamp: u32, at| {
            packet.clear();
            RtpPacket {
                marker: false,
                payload_type: 0,
                sequence,
                timestamp,
                ssrc: 1,
                payload: &[0; 160],
            }
            .encode(&mut packet);
            stream.forward_rtp(direction, &packet, at, &mut emit);
        };
        // The first packet 100 ms in (after ringing), then R for 1 s across a
        // timestamp wrap, repeated and with one lost; W talks for 200 ms, its
        // last packet at 380 ms.
        for i in 0u32..50 {
            let at = ms(100 + 20 * u64::from(i));
            let timestamp = 0xFFFF_F000u32.wrapping_add(i * 160);
            if i != 20 {
                forward(&mut stream, Direction::Read, i as u16, timestamp, at);
                forward(&mut stream, Direction::Read, i as u16, timestamp, at);
            }
            if (5..15).contains(&i) {
                forward(&mut stream, Direction::Write, i as u16, 5000 + i * 160, at);
            }
        }
        // A late packet of W (behind its newest) changes nothing.
        forward(&mut stream, Direction::Write, 4, 5000 + 4 * 160, ms(1000));
        // R falls silent too; the receiver goes 400 ms after R's last packet.
        let moved = stream.unreachable(addr(A), ms(1480), &mut emit);
        assert!(
            matches!(
                moved,
                Some(Trouble::FailedOver {
                    offset_ms: 1380,
                    ..
                })
            ),
            "{moved:?}"
        );
        // Each direction's clock moved on through its silence: R 400 ms
        // (3200 samples) past its last packet, W 1100 ms (8800).
        let (_, inv) = invs_to(&sent).pop().unwrap();
        let r = 0xFFFF_F000u32.wrapping_add(49 * 160 + 3200);
        let w = 5000 + 14 * 160 + 8800;
        assert!(
            inv.ends_with(&format!(":part=2:offset-ms=1380:ts-r={r}:ts-w={w}")),
            "{inv}"
        );
    }

    #[test]
    fn a_declaration_keeps_the_part_and_can_fail_over_too() {
        let t0 = Instant::now();
        let (mut stream, sent) = start_pooled(Mode::Data, t0);
        let mut emit = emitter(&sent);
        stream.unreachable(addr(A), t0, &mut emit);
        stream.ack_from(addr(B), None, &mut emit);
        stream.declare("pt96=opus/48000", t0, &mut emit).unwrap();
        assert!(invs_to(&sent)
            .last()
            .unwrap()
            .1
            .ends_with(":pt96=opus/48000:part=2:offset-ms=0"));
        let moved = stream.poll(t0 + Duration::from_millis(500), &mut emit);
        assert!(matches!(moved, Some(Trouble::FailedOver { part: 3, .. })));
        assert!(invs_to(&sent)
            .last()
            .unwrap()
            .1
            .ends_with(":pt96=opus/48000:part=3:offset-ms=500"));
    }
}
