//! The call table: which calls exist, who sent them, when they were last heard
//! from. Sans-IO: datagrams and the time come in, [`Output`]s go out through a
//! callback; no sockets, files or clocks in here.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use rst_proto::{Ack, Direction, Message, ParseError, PayloadType, RtpPacket, RtpPorts, Uuid};

use crate::end::EndReason;
use crate::metrics::{Metrics, Refusal};

/// The receiver's own number for a call, unique for the life of the process
/// (a UUID can be reused: `uuid_rst stop`, then start again).
pub type CallId = u64;

/// What the table asks the shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<'a> {
    /// Send this ACK back to the datagram's sender.
    Reply(Ack<'a>),
    /// A new call: open its recording.
    Start(CallStart),
    /// An INV arrived for a call that DATA had already started: caller and callee are now known.
    Identify {
        call: CallId,
        caller: &'a str,
        callee: &'a str,
    },
    /// An INV arrived again for a call, with extensions: payload types it
    /// declares that the call did not know are added (a re-INVITE brought a
    /// new codec in mid-call).
    Declare { call: CallId, extensions: &'a str },
    /// Audio for a call: borrowed from the datagram, or owned when it was
    /// held while the call proved itself.
    Audio {
        call: CallId,
        direction: Direction,
        payload_type: PayloadType,
        payload: Cow<'a, [u8]>,
    },
    /// An RTP packet for a call, from its sender.
    Rtp {
        call: CallId,
        direction: Direction,
        packet: RtpPacket<'a>,
    },
    /// A key press the sender saw (a DTMF datagram; RTP mode has telephone-events instead).
    Dtmf {
        call: CallId,
        direction: Direction,
        sequence: u32,
        digit: char,
        duration_ms: u32,
    },
    /// The call's sender played (or, `cleared`, dropped) a point a consumer marked.
    Mark {
        call: CallId,
        name: String,
        cleared: bool,
    },
    /// A malformed datagram that names one of this call's UUID.
    Malformed { call: CallId },
    /// The call is over: finish its recording.
    End { call: CallId, reason: EndReason },
}

/// Everything known when a call starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallStart {
    pub call: CallId,
    /// Validated by [`Uuid::new`]: safe in a file name.
    pub uuid: String,
    /// `None` when the call was started by DATA whose INV was lost.
    pub caller: Option<String>,
    pub callee: Option<String>,
    pub sender: SocketAddr,
    /// Sample rate of PT 10 audio for this call.
    pub l16_rate: u32,
    /// RTP mode: the sender's ports, R and W.
    pub sender_rtp_ports: Option<RtpPorts>,
    /// The INV's `key=value` extensions (declared payload types, say).
    pub extensions: String,
}

#[derive(Debug)]
struct Call {
    id: CallId,
    last_heard: Instant,
    has_inv: bool,
    sender: SocketAddr,
    rtp: Option<RtpBinding>,
    /// RTP mode: when the BYE came. The call ends [`BYE_LINGER`] later, so RTP
    /// sent just before the BYE, which travels another way, is still recorded.
    bye_at: Option<Instant>,
    /// The part of the call this recording is (`part=N` in its INV; 1 when
    /// none said): a pool's sender that failed over here, away and back
    /// again starts a new part, which is a recording of its own.
    part: u32,
}

impl Call {
    /// Whether a datagram from `from` may act on this call: from its sender
    /// (the address of the INV or DATA that started it), unless `bind-sender`
    /// is off, where a sender's address may change mid-call.
    fn accepts(&self, from: SocketAddr, bind_sender: bool) -> bool {
        !bind_sender || same_address(from, self.sender)
    }
}

/// The same IP (an IPv4-mapped IPv6 address is its IPv4 one) and port.
fn same_address(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip().to_canonical() == b.ip().to_canonical() && a.port() == b.port()
}

/// How long an RTP-mode call keeps recording after its BYE.
pub const BYE_LINGER: Duration = Duration::from_millis(250);

/// Where a call's RTP comes from and goes to.
#[derive(Debug, Clone, Copy)]
struct RtpBinding {
    server: RtpPorts,
    sender: RtpPorts,
}

/// Opens a call's two RTP receive ports: the shell binds sockets (a port can be
/// taken by another program), tests can pretend.
pub trait RtpBinder {
    /// `false` when the ports cannot be used; the table then tries others.
    fn open(&mut self, call: CallId, ports: RtpPorts) -> bool;
}

/// Port pairs tried for one INV before it is left unanswered.
const BIND_ATTEMPTS: usize = 8;

/// The limits the table enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub idle_timeout: Duration,
    pub max_calls: usize,
    pub allow: Vec<IpNet>,
    pub default_l16_rate: u32,
    pub rtp_ports: RangeInclusive<u16>,
    /// A call's datagrams are taken only from the address that started it.
    pub bind_sender: bool,
    /// New calls a second from one sender address; 0: no limit.
    pub new_calls_per_second: u32,
}

/// Frames in a row from one sender that make a call no INV announced real
/// (one stray datagram must not cost a file; a lost INV must not cost audio).
pub const PROOF_FRAMES: usize = 3;
/// Calls without INV held unproven at once; more are refused.
const MAX_UNPROVEN: usize = 1024;
/// An unproven call forgotten after this long without proving itself.
const UNPROVEN_TIMEOUT: Duration = Duration::from_secs(2);

/// DATA of a call that no INV announced, held in memory until it proves itself.
#[derive(Debug)]
struct Unproven {
    sender: SocketAddr,
    first_heard: Instant,
    frames: Vec<(Direction, PayloadType, Vec<u8>)>,
}

/// New calls started by one sender address in the current second.
#[derive(Debug, Clone, Copy)]
struct NewCalls {
    second: Instant,
    count: u32,
}

/// Every call in progress, by UUID.
#[derive(Debug)]
pub struct CallTable {
    calls: HashMap<Box<str>, Call>,
    /// UUIDs ended recently, so that DATA straggling in after the BYE does not start
    /// a one-frame call of its own. Forgotten after the idle timeout.
    recently_ended: HashMap<Box<str>, Instant>,
    /// UUID of each call, by id, for the RTP sockets that know only the id.
    uuids: HashMap<CallId, Box<str>>,
    /// Calls no INV announced, not yet proven, by UUID.
    unproven: HashMap<Box<str>, Unproven>,
    /// New calls per sender address in the current second.
    new_calls: HashMap<IpAddr, NewCalls>,
    ports: PortPool,
    next_id: CallId,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl CallTable {
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Self {
        CallTable {
            calls: HashMap::new(),
            recently_ended: HashMap::new(),
            uuids: HashMap::new(),
            unproven: HashMap::new(),
            new_calls: HashMap::new(),
            ports: PortPool::new(limits.rtp_ports.clone()),
            next_id: 1,
            limits,
            metrics,
        }
    }

    /// Handles one datagram received at `now` from `from`.
    pub fn handle<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &'a [u8],
        binder: &mut impl RtpBinder,
        emit: &mut impl FnMut(Output<'a>),
    ) {
        self.metrics.datagrams.fetch_add(1, Relaxed);
        if !self.allowed(from) {
            self.metrics.refused(Refusal::NotAllowed);
            tracing::debug!(%from, "datagram from a sender outside the allowed networks");
            return;
        }
        let message = match Message::parse(datagram) {
            Ok(message) => message,
            Err(error) => return self.malformed(from, datagram, &error, emit),
        };
        self.metrics.message(&message);
        match message {
            Message::Inv(inv) => {
                let uuid = inv.uuid;
                let bind_sender = self.limits.bind_sender;
                let part = inv.extensions.continuation().map_or(1, |c| c.part);
                let new_part = self.calls.get(uuid.as_str()).is_some_and(|call| {
                    call.has_inv && call.part != part && call.accepts(from, bind_sender)
                });
                if new_part {
                    if let Some((key, call)) = self.calls.remove_entry(uuid.as_str()) {
                        tracing::debug!(%uuid, part, "a new part of the call begins here");
                        self.end(now, key, call, EndReason::Bye, emit);
                    }
                }
                let id = match self.calls.get_mut(uuid.as_str()) {
                    Some(call) if !call.accepts(from, bind_sender) => {
                        return self.wrong_source(from, "INV");
                    }
                    Some(call) => {
                        call.last_heard = now;
                        if !call.has_inv {
                            call.has_inv = true;
                            call.part = part;
                            emit(Output::Identify {
                                call: call.id,
                                caller: inv.caller,
                                callee: inv.callee,
                            });
                        }
                        if !inv.extensions.is_empty() {
                            emit(Output::Declare {
                                call: call.id,
                                extensions: inv.extensions.as_str(),
                            });
                        }
                        call.id
                    }
                    None => {
                        // Ports first, so an INV that cannot get any leaves nothing behind.
                        let server_ports = match inv.rtp_ports {
                            Some(_) if self.calls.len() >= self.limits.max_calls => {
                                self.metrics.refused(Refusal::MaxCalls);
                                return;
                            }
                            Some(_) => match self.allocate_rtp(uuid.as_str(), self.next_id, binder)
                            {
                                Some(ports) => Some(ports),
                                None => return,
                            },
                            None => None,
                        };
                        let l16_rate = inv
                            .extensions
                            .l16_rate()
                            .unwrap_or(self.limits.default_l16_rate);
                        let start = |call| CallStart {
                            call,
                            uuid: uuid.as_str().to_owned(),
                            caller: Some(inv.caller.to_owned()),
                            callee: Some(inv.callee.to_owned()),
                            sender: from,
                            l16_rate,
                            sender_rtp_ports: inv.rtp_ports,
                            extensions: inv.extensions.as_str().to_owned(),
                        };
                        let held = match self.unproven.remove(uuid.as_str()) {
                            Some(held)
                                if !same_address(held.sender, from) && self.limits.bind_sender =>
                            {
                                // Another sender's DATA held under this UUID is not this call's.
                                self.refuse_unproven(&held);
                                None
                            }
                            held => held,
                        };
                        let Some(id) = self.start(now, uuid, from, true, start, emit) else {
                            return;
                        };
                        if let Some(call) = self.calls.get_mut(uuid.as_str()) {
                            call.part = part;
                        }
                        if let Some(held) = held {
                            self.replay(id, held, emit);
                        }
                        if let (Some(server), Some(sender)) = (server_ports, inv.rtp_ports) {
                            if let Some(call) = self.calls.get_mut(uuid.as_str()) {
                                call.rtp = Some(RtpBinding { server, sender });
                            }
                        }
                        id
                    }
                };
                let rtp_ports = match inv.rtp_ports {
                    Some(sender_ports) => {
                        match self.bind_rtp(uuid.as_str(), id, sender_ports, binder) {
                            Some(server) => Some(server),
                            None => return,
                        }
                    }
                    None => None,
                };
                emit(Output::Reply(Ack { uuid, rtp_ports }));
            }
            Message::Data(data) => {
                let uuid = data.uuid;
                let bind_sender = self.limits.bind_sender;
                let id = match self.calls.get_mut(uuid.as_str()) {
                    Some(call) if !call.accepts(from, bind_sender) => {
                        return self.wrong_source(from, "DATA");
                    }
                    Some(call) => {
                        call.last_heard = now;
                        call.id
                    }
                    None if self.recently_ended.contains_key(uuid.as_str()) => {
                        self.metrics.refused(Refusal::AfterEnd);
                        return;
                    }
                    None => {
                        if !self.hold_unproven(now, uuid, from, &data) {
                            return;
                        }
                        // Proven: the call starts, with the frames it was held for.
                        let held = self.unproven.remove(uuid.as_str()).expect("held above");
                        self.start_unannounced(now, uuid, held, emit);
                        return;
                    }
                };
                self.metrics
                    .audio_bytes
                    .fetch_add(data.payload.len() as u64, Relaxed);
                emit(Output::Audio {
                    call: id,
                    direction: data.direction,
                    payload_type: data.payload_type,
                    payload: Cow::Borrowed(data.payload),
                });
            }
            Message::Bye(bye) => {
                // A BYE for a call already ended (by timeout, or a retransmission)
                // is still answered, or the sender would retransmit it in vain.
                match self.calls.get_mut(bye.uuid.as_str()) {
                    // Not answered either: only the call's sender may end it.
                    Some(call) if !call.accepts(from, self.limits.bind_sender) => {
                        return self.wrong_source(from, "BYE");
                    }
                    Some(call) if call.rtp.is_some() => {
                        call.bye_at.get_or_insert(now);
                    }
                    Some(_) => {
                        if let Some((uuid, call)) = self.calls.remove_entry(bye.uuid.as_str()) {
                            self.end(now, uuid, call, EndReason::Bye, emit);
                        }
                    }
                    None => {
                        // The BYE of the sender of an unproven call proves it: what
                        // it sent is recorded, and the call ends at once.
                        let uuid = bye.uuid;
                        match self.unproven.remove(uuid.as_str()) {
                            Some(held)
                                if !self.limits.bind_sender || same_address(held.sender, from) =>
                            {
                                self.start_unannounced(now, uuid, held, emit);
                                if let Some((uuid, call)) = self.calls.remove_entry(uuid.as_str()) {
                                    self.end(now, uuid, call, EndReason::Bye, emit);
                                }
                            }
                            Some(held) => {
                                self.unproven.insert(uuid.as_str().into(), held);
                                return self.wrong_source(from, "BYE");
                            }
                            None => {}
                        }
                    }
                }
                emit(Output::Reply(Ack {
                    uuid: bye.uuid,
                    rtp_ports: None,
                }));
            }
            Message::Ack(_) => self.metrics.refused(Refusal::UnexpectedAck),
            Message::Dtmf(dtmf) => match self.calls.get_mut(dtmf.uuid.as_str()) {
                Some(call) if !call.accepts(from, self.limits.bind_sender) => {
                    self.wrong_source(from, "DTMF")
                }
                Some(call) => {
                    call.last_heard = now;
                    emit(Output::Dtmf {
                        call: call.id,
                        direction: dtmf.direction,
                        sequence: dtmf.sequence,
                        digit: dtmf.digit,
                        duration_ms: dtmf.duration_ms,
                    });
                }
                // A key press starts no call.
                None if self.recently_ended.contains_key(dtmf.uuid.as_str()) => {
                    self.metrics.refused(Refusal::AfterEnd)
                }
                None => self.metrics.refused(Refusal::Unproven),
            },
            Message::Mark(mark) => match self.calls.get_mut(mark.uuid.as_str()) {
                Some(call) if !call.accepts(from, self.limits.bind_sender) => {
                    self.wrong_source(from, "MARK")
                }
                Some(call) => emit(Output::Mark {
                    call: call.id,
                    name: mark.name(),
                    cleared: mark.cleared,
                }),
                // The call ended before its sender reported the mark: its
                // player already told the consumer it was cleared.
                None => self.metrics.refused(Refusal::AfterEnd),
            },
            Message::Play(_) | Message::Clear(_) | Message::Live(_) => {
                self.metrics.refused(Refusal::Unexpected)
            }
        }
    }

    /// Ends the calls not heard from for the idle timeout, and forgets old ended UUIDs.
    /// Also ends RTP-mode calls whose BYE has lingered long enough.
    pub fn expire<'a>(&mut self, now: Instant, emit: &mut impl FnMut(Output<'a>)) {
        let timeout = self.limits.idle_timeout;
        let over: Vec<(Box<str>, EndReason)> = self
            .calls
            .iter()
            .filter_map(|(uuid, call)| {
                let reason = match call.bye_at {
                    Some(bye) if now.saturating_duration_since(bye) >= BYE_LINGER => EndReason::Bye,
                    _ if now.saturating_duration_since(call.last_heard) >= timeout => {
                        EndReason::Timeout
                    }
                    _ => return None,
                };
                Some((uuid.clone(), reason))
            })
            .collect();
        for (uuid, reason) in over {
            if let Some((uuid, call)) = self.calls.remove_entry(&uuid) {
                self.end(now, uuid, call, reason, emit);
            }
        }
        self.recently_ended
            .retain(|_, ended| now.saturating_duration_since(*ended) < timeout);
        let stale: Vec<Box<str>> = self
            .unproven
            .iter()
            .filter(|(_, held)| now.saturating_duration_since(held.first_heard) >= UNPROVEN_TIMEOUT)
            .map(|(uuid, _)| uuid.clone())
            .collect();
        for uuid in stale {
            if let Some(held) = self.unproven.remove(&uuid) {
                self.refuse_unproven(&held);
            }
        }
        self.new_calls.retain(|_, calls| {
            now.saturating_duration_since(calls.second) < Duration::from_secs(1)
        });
    }

    /// Ends every call (the receiver is shutting down).
    pub fn end_all<'a>(
        &mut self,
        now: Instant,
        reason: EndReason,
        emit: &mut impl FnMut(Output<'a>),
    ) {
        for (uuid, call) in std::mem::take(&mut self.calls) {
            // A call whose BYE came (its late RTP was still being waited
            // for) ended by that BYE, whatever ends the rest.
            let reason = if call.bye_at.is_some() {
                EndReason::Bye
            } else {
                reason
            };
            self.end(now, uuid, call, reason, emit);
        }
    }

    /// Holds DATA of a call no INV announced; true once it has proven itself
    /// (`PROOF_FRAMES` in a row from one sender), its frames then in `unproven`.
    fn hold_unproven(
        &mut self,
        now: Instant,
        uuid: Uuid<'_>,
        from: SocketAddr,
        data: &rst_proto::Data<'_>,
    ) -> bool {
        let frame = (data.direction, data.payload_type, data.payload.to_vec());
        let full = self.unproven.len() >= MAX_UNPROVEN;
        let bind_sender = self.limits.bind_sender;
        match self.unproven.get_mut(uuid.as_str()) {
            Some(held) if bind_sender && !same_address(held.sender, from) => {
                // A second sender for one unannounced UUID: neither proves anything.
                self.metrics.refused(Refusal::WrongSource);
                false
            }
            Some(held) => {
                held.frames.push(frame);
                held.frames.len() >= PROOF_FRAMES
            }
            None if full => {
                self.metrics.refused(Refusal::Unproven);
                tracing::debug!(%from, "DATA without INV refused: too many unproven calls held");
                false
            }
            None => {
                self.unproven.insert(
                    uuid.as_str().into(),
                    Unproven {
                        sender: from,
                        first_heard: now,
                        frames: vec![frame],
                    },
                );
                PROOF_FRAMES <= 1
            }
        }
    }

    /// Starts a call that no INV announced, which proved itself, with the
    /// frames it was held for (caller and callee unknown until an INV comes).
    fn start_unannounced<'a>(
        &mut self,
        now: Instant,
        uuid: Uuid<'a>,
        held: Unproven,
        emit: &mut impl FnMut(Output<'a>),
    ) -> Option<CallId> {
        let sender = held.sender;
        let l16_rate = self.limits.default_l16_rate;
        let start = |call| CallStart {
            call,
            uuid: uuid.as_str().to_owned(),
            caller: None,
            callee: None,
            sender,
            l16_rate,
            sender_rtp_ports: None,
            extensions: String::new(),
        };
        let id = self.start(now, uuid, sender, false, start, emit)?;
        self.replay(id, held, emit);
        Some(id)
    }

    /// The frames a call was held for, in the order they came.
    fn replay<'a>(&self, call: CallId, held: Unproven, emit: &mut impl FnMut(Output<'a>)) {
        for (direction, payload_type, payload) in held.frames {
            self.metrics
                .audio_bytes
                .fetch_add(payload.len() as u64, Relaxed);
            emit(Output::Audio {
                call,
                direction,
                payload_type,
                payload: Cow::Owned(payload),
            });
        }
    }

    /// An unproven call given up: each of its frames is counted.
    fn refuse_unproven(&self, held: &Unproven) {
        for _ in &held.frames {
            self.metrics.refused(Refusal::Unproven);
        }
        tracing::debug!(sender = %held.sender, frames = held.frames.len(), "DATA without INV that never proved itself dropped");
    }

    /// Counts a new call from `sender` against `new-calls-per-second`.
    fn within_rate(&mut self, now: Instant, sender: SocketAddr) -> bool {
        let limit = self.limits.new_calls_per_second;
        if limit == 0 {
            return true;
        }
        let calls = self
            .new_calls
            .entry(sender.ip().to_canonical())
            .or_insert(NewCalls {
                second: now,
                count: 0,
            });
        if now.saturating_duration_since(calls.second) >= Duration::from_secs(1) {
            *calls = NewCalls {
                second: now,
                count: 0,
            };
        }
        if calls.count >= limit {
            return false;
        }
        calls.count += 1;
        true
    }

    /// Refuses a datagram for a call from another address than its sender's.
    fn wrong_source(&self, from: SocketAddr, command: &str) {
        self.metrics.refused(Refusal::WrongSource);
        tracing::debug!(%from, command, "datagram for a call from an address other than its sender's");
    }

    fn allowed(&self, from: SocketAddr) -> bool {
        let ip = from.ip().to_canonical();
        self.limits.allow.is_empty() || self.limits.allow.iter().any(|net| net.contains(&ip))
    }

    fn start<'a>(
        &mut self,
        now: Instant,
        uuid: Uuid<'a>,
        sender: SocketAddr,
        has_inv: bool,
        start: impl FnOnce(CallId) -> CallStart,
        emit: &mut impl FnMut(Output<'a>),
    ) -> Option<CallId> {
        if self.calls.len() >= self.limits.max_calls {
            self.metrics.refused(Refusal::MaxCalls);
            tracing::debug!(%uuid, max_calls = self.limits.max_calls, "call refused: at max-calls");
            return None;
        }
        if !self.within_rate(now, sender) {
            self.metrics.refused(Refusal::RateLimited);
            tracing::debug!(%uuid, %sender, "call refused: new-calls-per-second from this sender");
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.recently_ended.remove(uuid.as_str());
        self.calls.insert(
            uuid.as_str().into(),
            Call {
                id,
                last_heard: now,
                has_inv,
                sender,
                rtp: None,
                bye_at: None,
                part: 1,
            },
        );
        self.uuids.insert(id, uuid.as_str().into());
        self.metrics.calls_started.fetch_add(1, Relaxed);
        self.metrics.calls_active.fetch_add(1, Relaxed);
        emit(Output::Start(start(id)));
        Some(id)
    }

    /// The call's server ports, allocated on its first RTP-mode INV. `None` when
    /// the port range is exhausted: the INV goes unanswered rather than half-answered.
    /// The call's server ports: those it has, or new ones (an RTP-mode INV for
    /// a call that DATA started).
    fn bind_rtp(
        &mut self,
        uuid: &str,
        id: CallId,
        sender_ports: RtpPorts,
        binder: &mut impl RtpBinder,
    ) -> Option<RtpPorts> {
        if let Some(binding) = self.calls.get(uuid)?.rtp {
            return Some(binding.server);
        }
        let server = self.allocate_rtp(uuid, id, binder)?;
        self.calls.get_mut(uuid)?.rtp = Some(RtpBinding {
            server,
            sender: sender_ports,
        });
        Some(server)
    }

    /// Takes a port pair from the pool and has the shell open it. `None` when the
    /// range is exhausted or nothing could be opened: the INV is then not answered.
    fn allocate_rtp(
        &mut self,
        uuid: &str,
        id: CallId,
        binder: &mut impl RtpBinder,
    ) -> Option<RtpPorts> {
        for _ in 0..BIND_ATTEMPTS {
            let Some(server) = self.ports.take_pair() else {
                self.metrics.refused(Refusal::NoPorts);
                tracing::warn!(
                    %uuid,
                    range = ?self.limits.rtp_ports,
                    "no free RTP port pair: the INV is not answered; widen rtp-ports or lower max-calls"
                );
                return None;
            };
            if binder.open(id, server) {
                return Some(server);
            }
            // Taken by another program: back to the pool, which moves on round robin.
            self.metrics.rtp_open_failures.fetch_add(1, Relaxed);
            self.ports.give_back(server);
        }
        tracing::warn!(%uuid, "cannot bind any RTP port pair: the INV is not answered; is rtp-ports used by another program?");
        None
    }

    /// Handles an RTP packet that arrived on `call`'s port for `direction`.
    pub fn handle_rtp<'a>(
        &mut self,
        now: Instant,
        call: CallId,
        direction: Direction,
        from: SocketAddr,
        datagram: &'a [u8],
        emit: &mut impl FnMut(Output<'a>),
    ) {
        let Some(entry) = self
            .uuids
            .get(&call)
            .and_then(|uuid| self.calls.get_mut(uuid))
        else {
            return;
        };
        let Some(binding) = entry.rtp else { return };
        let expected_port = match direction {
            Direction::Read => binding.sender.read,
            Direction::Write => binding.sender.write,
        };
        if from.ip().to_canonical() != entry.sender.ip().to_canonical()
            || from.port() != expected_port
        {
            self.metrics.refused(Refusal::WrongSource);
            tracing::debug!(%from, "RTP from an address other than the call's sender");
            return;
        }
        match RtpPacket::parse(datagram) {
            Ok(packet) => {
                entry.last_heard = now;
                self.metrics.rtp_packets.fetch_add(1, Relaxed);
                emit(Output::Rtp {
                    call,
                    direction,
                    packet,
                });
            }
            Err(error) => {
                self.metrics.rtp_malformed.fetch_add(1, Relaxed);
                tracing::debug!(%from, %error, "malformed RTP");
                emit(Output::Malformed { call });
            }
        }
    }

    fn end<'a>(
        &mut self,
        now: Instant,
        uuid: Box<str>,
        call: Call,
        reason: EndReason,
        emit: &mut impl FnMut(Output<'a>),
    ) {
        self.metrics.call_ended(reason);
        self.uuids.remove(&call.id);
        if let Some(binding) = call.rtp {
            self.ports.give_back(binding.server);
        }
        emit(Output::End {
            call: call.id,
            reason,
        });
        tracing::debug!(uuid = &*uuid, ?reason, "call ended");
        self.recently_ended.insert(uuid, now);
    }

    fn malformed<'a>(
        &mut self,
        from: SocketAddr,
        datagram: &'a [u8],
        error: &ParseError,
        emit: &mut impl FnMut(Output<'a>),
    ) {
        self.metrics.malformed(error);
        tracing::debug!(%from, %error, "malformed datagram");
        // Attribute it to its call when the UUID field is readable, so the
        // call's record shows it.
        let uuid = datagram
            .get(5..)
            .and_then(|rest| rest.split(|&b| b == b':').next())
            .and_then(|field| std::str::from_utf8(field).ok());
        if let Some(call) = uuid.and_then(|uuid| self.calls.get(uuid)) {
            emit(Output::Malformed { call: call.id });
        }
    }
}

/// The receiver's RTP ports. Handed out round-robin, so a port just released is
/// the last to be reused and late packets of an old call miss the new one.
#[derive(Debug)]
struct PortPool {
    free: BTreeSet<u16>,
    cursor: u16,
}

impl PortPool {
    fn new(range: RangeInclusive<u16>) -> Self {
        let cursor = *range.start();
        PortPool {
            free: range.filter(|&port| port != 0).collect(),
            cursor,
        }
    }

    fn take_pair(&mut self) -> Option<RtpPorts> {
        let read = self.take()?;
        let Some(write) = self.take() else {
            self.free.insert(read);
            return None;
        };
        Some(RtpPorts { read, write })
    }

    fn take(&mut self) -> Option<u16> {
        let port = self
            .free
            .range(self.cursor..)
            .next()
            .or_else(|| self.free.iter().next())
            .copied()?;
        self.free.remove(&port);
        self.cursor = port.wrapping_add(1);
        Some(port)
    }

    fn give_back(&mut self, ports: RtpPorts) {
        self.free.insert(ports.read);
        self.free.insert(ports.write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_go_round_robin_and_come_back() {
        let mut pool = PortPool::new(40000..=40005);
        let first = pool.take_pair().unwrap();
        assert_eq!((first.read, first.write), (40000, 40001));
        let second = pool.take_pair().unwrap();
        pool.give_back(first);
        let third = pool.take_pair().unwrap();
        assert_eq!((third.read, third.write), (40004, 40005));
        // Wraps to the ports given back; then the range is exhausted.
        assert_eq!(pool.take_pair(), Some(first));
        assert_eq!(pool.take_pair(), None);
        pool.give_back(second);
        assert_eq!(pool.take_pair(), Some(second));
    }

    struct AnyPort;

    impl RtpBinder for AnyPort {
        fn open(&mut self, _: CallId, _: RtpPorts) -> bool {
            true
        }
    }

    #[test]
    fn a_call_whose_bye_came_ends_as_bye_even_when_shutdown_cuts_its_linger() {
        let mut table = CallTable::new(
            Limits {
                idle_timeout: Duration::from_secs(30),
                max_calls: 10,
                allow: Vec::new(),
                default_l16_rate: 8000,
                rtp_ports: 40000..=40009,
                bind_sender: true,
                new_calls_per_second: 0,
            },
            Arc::new(Metrics::default()),
        );
        let from: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let now = Instant::now();
        let mut ends = Vec::new();
        let mut emit = |output: Output<'_>| {
            if let Output::End { reason, .. } = output {
                ends.push(reason);
            }
        };
        for datagram in [
            &b"INV :11111111-1111-1111-1111-111111111111:1001:1002:6000:6001"[..],
            b"INV :22222222-2222-2222-2222-222222222222:1001:1003:6002:6003",
            b"BYE :11111111-1111-1111-1111-111111111111",
        ] {
            table.handle(now, from, datagram, &mut AnyPort, &mut emit);
        }
        table.end_all(now, EndReason::Shutdown, &mut emit);
        ends.sort_by_key(|reason| reason.name());
        assert_eq!(ends, [EndReason::Bye, EndReason::Shutdown]);
    }

    #[test]
    fn a_call_that_comes_back_as_another_part_starts_a_new_recording() {
        let mut table = CallTable::new(
            Limits {
                idle_timeout: Duration::from_secs(30),
                max_calls: 10,
                allow: Vec::new(),
                default_l16_rate: 8000,
                rtp_ports: 40000..=40009,
                bind_sender: true,
                new_calls_per_second: 0,
            },
            Arc::new(Metrics::default()),
        );
        let from: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let now = Instant::now();
        let mut seen = Vec::new();
        let mut emit = |output: Output<'_>| match output {
            Output::Start(start) => seen.push(format!("start {}", start.extensions)),
            Output::End { reason, .. } => seen.push(format!("end {}", reason.name())),
            _ => {}
        };
        for datagram in [
            &b"INV :11111111-1111-1111-1111-111111111111:1001:1002"[..],
            // A refresh of the same part changes nothing.
            b"INV :11111111-1111-1111-1111-111111111111:1001:1002",
            // The sender failed over away and back: part 3 is a recording of its own.
            b"INV :11111111-1111-1111-1111-111111111111:1001:1002:part=3:offset-ms=4000",
            b"INV :11111111-1111-1111-1111-111111111111:1001:1002:part=3:offset-ms=4000",
        ] {
            table.handle(now, from, datagram, &mut AnyPort, &mut emit);
        }
        assert_eq!(seen, ["start ", "end bye", "start part=3:offset-ms=4000"]);
    }
}
