//! The whole capture path, sans-IO: captured frames in, calls out.
//!
//! [`Pipeline::frame`] runs the packet decoder on one frame, hands SIP (over
//! UDP, or framed out of TCP streams) to the call [`Tracker`], maps RTP to its
//! call and direction, and tells an [`Output`] what to do: start a call,
//! forward an RTP packet unchanged, end a call. The capture time is an
//! argument, so a capture file replays exactly as the wire was seen live.
//!
//! What is forwarded, and what is refused (each refusal has a counter in
//! [`PipelineStats`]):
//!
//! * A SIP call is recorded from its answer (`200 OK`) or its first audio
//!   packet, whichever comes first, so early media (a `183` with SDP) is kept
//!   and a call rejected without media (`403`, `603`) is not a recording.
//! * Only RTP whose payload type the call's SDP lists as audio is forwarded:
//!   comfort noise (PT 13, `CN`), RTCP, and whatever reaches an audio port with
//!   a payload type the SDP does not offer (a T.38 switch, video) is dropped.
//!   RFC 4733 telephone-events are forwarded (the receiver turns them into
//!   DTMF entries).
//! * SRTP is not audio this tap can decode, and is dropped (`rtp_encrypted`)
//!   rather than recorded as noise: all of a call's RTP when its SDP answer
//!   is SRTP (`RTP/SAVP`, `RTP/SAVPF`, DTLS, or SDES `a=crypto` keys), and,
//!   once a ZRTP handshake (RFC 6189) on a media flow completes (its
//!   `Conf2ACK`), RTP on that flow pair; what went before the handshake, in
//!   the clear, is recorded. The call itself still reaches the receiver.
//! * A packet seen twice (a tap at two points of the path, a SPAN of both
//!   ports) is forwarded once: per call direction, the same SSRC, sequence
//!   number, timestamp and payload within [`PipelineConfig::dedup_window`].
//! * With [`PipelineConfig::rtp_without_sip`], an RTP flow no SIP call claims
//!   (SIP over TLS, a capture started mid-call) becomes a call of its own,
//!   keyed by its two endpoints; both directions are one call, `R` being the
//!   direction seen first. A flow must show two packets of one SSRC with close
//!   sequence numbers before it counts as RTP, so that DNS and the like,
//!   whose first byte sometimes looks like RTP version 2, do not become calls;
//!   the few packets of that SSRC seen before (loss can part them by more
//!   than that) are forwarded too once it does.
//! * [`Filter`]: which networks and which numbers to record or skip.
//!
//! All state is bounded: the decoder's and tracker's own limits, at most
//! [`PipelineConfig::max_tcp_flows`] SIP-over-TCP buffers, at most
//! [`PipelineConfig::max_sipless_calls`] calls without SIP and twice as many
//! candidate flows.

mod call;
mod filter;
mod route;
mod sipless;
mod sniff;
#[cfg(test)]
mod tests;

pub use filter::{Filter, Pattern};
pub use sniff::looks_like_sip;

use call::{pair, parties, Call, FlowPair, Recording, MAX_ENCRYPTED_FLOWS};
use route::Routes;
use sipless::Candidate;
use sniff::{find, is_rtcp_range, looks_like_rtp, static_audio, zrtp_message};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use rst_proto::{Direction, RtpPacket};

use crate::packet::{Datagram, Decoder, Limits, LinkType, Sink, Transport};
use crate::sip::{CallEvent, CallKey, SipMessage, SipStream, Tracker, TrackerConfig};
use crate::FastMap;

/// Where a pipeline's decisions go: the real one sends them to a receiver
/// ([`crate::output::UdpOutput`]); tests collect them.
pub trait Output {
    /// A call is to be recorded from now on.
    fn call_started(&mut self, call: &CallStart);
    /// One captured RTP packet of a started call, unchanged, captured at
    /// `at` (the capture's clock: since the Unix epoch, for a live one).
    fn rtp(&mut self, key: CallKey, direction: Direction, packet: &[u8], at: Duration);
    /// A started call's SDP declared dynamic payload types it had not (a
    /// re-INVITE switching to another codec): `call` is the call as it now
    /// stands, every declaration included. The real output sends the INV
    /// again so the receiver can decode the new codec; outputs that do not
    /// care need not implement it.
    fn call_updated(&mut self, call: &CallStart) {
        let _ = call;
    }
    /// A started call is over.
    fn call_ended(&mut self, key: CallKey);
}

/// What a receiver needs to open a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallStart {
    pub key: CallKey,
    /// The SIP Call-ID; `None` for a call made of RTP alone.
    pub call_id: Option<String>,
    /// The From user part (or the first RTP source), without `:`.
    pub caller: String,
    /// The To user part (or the first RTP destination), without `:`.
    pub callee: String,
    /// Payload types the receiver cannot know by number (dynamic ones), with
    /// the encoding name and clock rate the SDP gave them.
    pub payload_types: Vec<(u8, String, u32)>,
    /// SDP moved the call to fax (T.38) at some point: the receiver's
    /// record says so (`fax=1`).
    pub fax: bool,
    /// Capture time of the start (of the update, for [`Output::call_updated`]).
    pub at: Duration,
    /// The clock rate of the call's RTP timestamps: of the first audio codec
    /// its SDP answer lists (of the offer before an answer; of the first
    /// packet's static payload type for a call of RTP alone), 8000 when none
    /// is known. A stream's media clock counts in it (the pool failover
    /// offset, `part=N:offset-ms=MS`): 48000 for opus, 16000 for L16/16000,
    /// 8000 for G.711 and, by RFC 3551's rule, G.722.
    pub clock_rate: u32,
}

impl CallStart {
    /// The INV's extension fields: `ptN=NAME/CLOCK` for each declared payload
    /// type, `call-id=` when there is one, `fax=1` once the call had a fax
    /// phase, `stream=` for the receiver's stream profiles `streams`.
    /// The INV's extensions: payload types, Call-ID, fax, the stream profiles
    /// asked for and the tap's name (`tap=`, shown by the receiver's console).
    pub fn extensions(&self, streams: &[String], tap: Option<&str>) -> String {
        let mut fields = rst_proto::ExtensionsBuilder::new();
        if let Some(tap) = tap {
            fields = fields.tap(tap);
        }
        for (pt, name, clock) in &self.payload_types {
            fields = fields.payload_type(*pt, name, *clock);
        }
        if let Some(call_id) = &self.call_id {
            fields = fields.call_id(call_id);
        }
        if self.fax {
            fields = fields.fax();
        }
        fields.streams(streams.iter().map(String::as_str)).build()
    }
}

/// A caller or callee label safe for the INV: no `:`, no control characters,
/// at most 64 characters; never empty.
fn clean_party(label: &str) -> String {
    let text: String = label
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| if c == ':' { '.' } else { c })
        .take(64)
        .collect();
    if text.is_empty() {
        "unknown".to_owned()
    } else {
        text
    }
}

/// Settings of a [`Pipeline`].
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub filter: Filter,
    /// Record RTP flows that no SIP call claims, as calls of their own.
    pub rtp_without_sip: bool,
    /// UDP and TCP ports always treated as SIP.
    pub sip_ports: Vec<u16>,
    pub tracker: TrackerConfig,
    pub decoder: Limits,
    /// SIP-over-TCP directions buffered at once.
    pub max_tcp_flows: usize,
    /// Calls made of RTP alone held at once.
    pub max_sipless_calls: usize,
    /// A call made of RTP alone ends after this long without a packet.
    pub sipless_idle: Duration,
    /// How close in capture time a repeat of a packet must be to count as the
    /// same packet seen twice.
    pub dedup_window: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            filter: Filter::default(),
            rtp_without_sip: false,
            sip_ports: vec![5060, 5061],
            tracker: TrackerConfig::default(),
            decoder: Limits::default(),
            max_tcp_flows: 4096,
            max_sipless_calls: 1000,
            sipless_idle: Duration::from_secs(15),
            dedup_window: Duration::from_millis(500),
        }
    }
}

/// What the pipeline did and refused, beyond the decoder's and tracker's own
/// counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// SIP messages handed to the tracker.
    pub sip_messages: u64,
    /// UDP payloads or framed TCP messages that looked like SIP but did not parse.
    pub sip_malformed: u64,
    /// TCP stream messages the framer refused (lying lengths, endless headers).
    pub sip_stream_errors: u64,
    /// SIP-over-TCP flows not buffered because `max_tcp_flows` were.
    pub tcp_flows_refused: u64,
    /// UDP datagrams that were neither SIP nor RTP.
    pub udp_other: u64,
    /// RTP packets that belong to no call (and were not made one).
    pub rtp_unmatched: u64,
    /// RTP packets forwarded.
    pub rtp_forwarded: u64,
    /// Of those, packets that came after SIP ended their call, within the
    /// tracker's `rtp_linger` (the end of what was said).
    pub rtp_after_bye: u64,
    /// RTP packets dropped as repeats of one already forwarded.
    pub rtp_duplicates: u64,
    /// RTP packets of a call with a payload type its SDP does not list as audio.
    pub rtp_not_audio: u64,
    /// Of those, comfort noise (PT 13, or 19 as older senders use it).
    pub rtp_comfort_noise: u64,
    /// Packets of a call's media while its SDP says fax (T.38 `m=image`),
    /// dropped even on the audio's own addresses and ports.
    pub fax_packets: u64,
    /// RTP packets whose direction was swapped because another stream of
    /// the call already held the one the SDP suggested.
    pub rtp_direction_swapped: u64,
    /// RTCP (payload types 72 to 76 with the marker bit).
    pub rtcp: u64,
    /// RTP packets of calls the filter refused.
    pub rtp_filtered: u64,
    /// ZRTP packets (RFC 6189), on media flows of calls or not.
    pub zrtp: u64,
    /// RTP packets dropped as SRTP: of a call whose SDP answer is SRTP, or on
    /// a flow pair whose ZRTP handshake completed.
    pub rtp_encrypted: u64,
    /// Calls started (SIP or RTP alone).
    pub calls_started: u64,
    /// Of those, calls made of RTP alone.
    pub sipless_calls: u64,
    /// Calls the filter refused.
    pub calls_filtered: u64,
    /// Calls without SIP not made because `max_sipless_calls` were held.
    pub sipless_refused: u64,
    /// Calls ended.
    pub calls_ended: u64,
}

/// The capture pipeline. See the module documentation.
#[derive(Debug)]
pub struct Pipeline {
    decoder: Decoder,
    /// Apart from the decoder, so that the decoder can hand it each datagram
    /// as it is decoded ([`Handler`]).
    core: Core,
}

/// Everything of a [`Pipeline`] but its packet decoder: what handles the
/// decoded datagrams.
#[derive(Debug)]
struct Core {
    config: PipelineConfig,
    tracker: Tracker,
    /// The tracker's answers per RTP flow.
    routes: Routes,
    calls: FastMap<CallKey, Call>,
    sipless: FastMap<FlowPair, CallKey>,
    candidates: FastMap<(SocketAddr, SocketAddr), Candidate>,
    tcp: FastMap<(SocketAddr, SocketAddr), SipStream>,
    /// Calls SIP ended, in end order, with when their RTP linger is over.
    lingering: VecDeque<(Duration, CallKey)>,
    last_tick: Option<Duration>,
    stats: PipelineStats,
}

/// The decoder's [`Sink`] while it decodes for a pipeline: each datagram
/// goes to [`Core::datagram`] at once.
struct Handler<'p, O> {
    core: &'p mut Core,
    out: &'p mut O,
}

impl<O: Output> Sink<'_> for Handler<'_, O> {
    fn datagram(&mut self, datagram: Datagram<'_>) {
        self.core.datagram(&datagram, self.out);
    }
}

impl Pipeline {
    pub fn new(config: PipelineConfig) -> Pipeline {
        Pipeline {
            decoder: Decoder::new(config.decoder),
            core: Core {
                tracker: Tracker::new(config.tracker.clone()),
                config,
                routes: Routes::default(),
                calls: FastMap::default(),
                sipless: FastMap::default(),
                candidates: FastMap::default(),
                tcp: FastMap::default(),
                lingering: VecDeque::new(),
                last_tick: None,
                stats: PipelineStats::default(),
            },
        }
    }

    pub fn stats(&self) -> &PipelineStats {
        &self.core.stats
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    pub fn tracker(&self) -> &Tracker {
        &self.core.tracker
    }

    /// Replaces the filter (a control client's new config): calls already
    /// being recorded go on; calls not started yet are judged by the new one.
    pub fn set_filter(&mut self, filter: Filter) {
        self.core.config.filter = filter;
    }

    /// Calls being recorded now.
    pub fn recording(&self) -> usize {
        self.core
            .calls
            .values()
            .filter(|c| c.recording == Recording::Started)
            .count()
    }

    /// One captured frame of link type `link`, captured at `now`.
    pub fn frame(&mut self, link: LinkType, now: Duration, bytes: &[u8], out: &mut impl Output) {
        // A frame that does not decode is counted by the decoder; what it
        // yielded before the error (idle stream ends) is still handled.
        let _ = self.decoder.decode(
            link,
            now,
            bytes,
            &mut Handler {
                core: &mut self.core,
                out: &mut *out,
            },
        );
        self.tick(now, out);
    }

    /// Timers: call it when no frame came for a while (live capture), with the
    /// current time. Does its work at most once a second of `now`.
    pub fn tick(&mut self, now: Duration, out: &mut impl Output) {
        self.core.end_lingered(now, out);
        if !self.core.tick_due(now) {
            return;
        }
        self.decoder.expire(
            now,
            &mut Handler {
                core: &mut self.core,
                out,
            },
        );
        self.core.timeouts(now, out);
    }

    /// The capture is over at `now`: TCP bytes still held are delivered and
    /// every call still recording ends.
    pub fn finish(&mut self, now: Duration, out: &mut impl Output) {
        self.decoder.finish(
            now,
            &mut Handler {
                core: &mut self.core,
                out,
            },
        );
        self.core.finish(out);
    }
}

impl Core {
    /// Whether the once-a-second timers are due at `now`. Asked after
    /// every frame: inlined.
    #[inline]
    fn tick_due(&mut self, now: Duration) -> bool {
        let due = match self.last_tick {
            None => {
                self.last_tick = Some(now);
                false
            }
            Some(last) if now < last => {
                self.last_tick = Some(now);
                false
            }
            Some(last) => now - last >= Duration::from_secs(1),
        };
        if due {
            self.last_tick = Some(now);
        }
        due
    }

    /// The once-a-second timers, after the decoder's: SIP dialogs, calls
    /// without SIP gone quiet, candidate flows.
    fn timeouts(&mut self, now: Duration, out: &mut impl Output) {
        let events = self.tracker.handle_timeout(now);
        self.events(now, events, out);
        let idle: Vec<CallKey> = self
            .calls
            .iter()
            .filter(|(_, c)| {
                c.sipless.is_some() && now.saturating_sub(c.last_packet) >= self.config.sipless_idle
            })
            .map(|(k, _)| *k)
            .collect();
        for key in idle {
            self.end(key, out);
        }
        let window = self.config.sipless_idle;
        self.candidates
            .retain(|_, c| now.saturating_sub(c.seen) < window);
    }

    /// Every call still recording ends; the rest is forgotten.
    fn finish(&mut self, out: &mut impl Output) {
        let keys: Vec<CallKey> = self.calls.keys().copied().collect();
        for key in keys {
            self.end(key, out);
        }
        self.candidates.clear();
        self.routes.clear();
        self.tcp.clear();
        self.lingering.clear();
    }

    fn datagram(&mut self, d: &Datagram<'_>, out: &mut impl Output) {
        match d.transport {
            Transport::Udp => self.udp(d, out),
            Transport::Tcp => self.tcp(d, out),
        }
    }

    fn is_sip_port(&self, d: &Datagram<'_>) -> bool {
        self.config.sip_ports.contains(&d.src.port())
            || self.config.sip_ports.contains(&d.dst.port())
    }

    fn udp(&mut self, d: &Datagram<'_>, out: &mut impl Output) {
        let payload: &[u8] = &d.payload;
        // RTP is nearly every packet: its first byte settles both tests
        // before the port list is looked at.
        if looks_like_sip(payload) || (!looks_like_rtp(payload) && self.is_sip_port(d)) {
            if payload.iter().all(|b| matches!(b, b'\r' | b'\n' | 0)) {
                return; // keep-alive
            }
            self.sip(d.time, d.src, d.dst, payload, out);
            return;
        }
        if let Some(message) = zrtp_message(payload) {
            self.stats.zrtp += 1;
            // The handshake's last message: SRTP from here on (tshark, too,
            // sets its SRTP stream up at the Conf2ACK).
            if message == b"Conf2ACK" {
                self.encrypted(d.time, d.src, d.dst);
            }
            return;
        }
        match RtpPacket::parse(payload) {
            Ok(packet) => self.rtp(d, &packet, out),
            Err(_) => self.stats.udp_other += 1,
        }
    }

    /// Marks the flow pair of `src` and `dst` encrypted in the call it belongs to.
    fn encrypted(&mut self, now: Duration, src: SocketAddr, dst: SocketAddr) {
        let flow = pair(src, dst);
        let key = match self.tracker.classify(now, src, dst) {
            Some((key, _)) => key,
            None => match self.sipless.get(&flow) {
                Some(&key) => key,
                None => return,
            },
        };
        if let Some(call) = self.calls.get_mut(&key) {
            if !call.encrypted.contains(&flow) && call.encrypted.len() < MAX_ENCRYPTED_FLOWS {
                call.encrypted.push(flow);
            }
        }
    }

    fn tcp(&mut self, d: &Datagram<'_>, out: &mut impl Output) {
        let key = (d.src, d.dst);
        if !self.tcp.contains_key(&key) {
            let sip = self.is_sip_port(d) || find(&d.payload, b"SIP/2.0").is_some();
            if sip && !d.payload.is_empty() && d.end.is_none() {
                if self.tcp.len() >= self.config.max_tcp_flows {
                    self.stats.tcp_flows_refused += 1;
                    return;
                }
                let mut stream = SipStream::new();
                if !looks_like_sip(&d.payload) {
                    // Joined mid-message: skip to the next start line.
                    stream.reset();
                }
                self.tcp.insert(key, stream);
            }
        }
        let Some(stream) = self.tcp.get_mut(&key) else {
            return;
        };
        if d.gap {
            stream.reset();
        }
        stream.push(&d.payload);
        let mut messages = Vec::new();
        while let Some(next) = stream.next_message() {
            match next {
                Ok(message) => messages.push(message.to_vec()),
                Err(_) => self.stats.sip_stream_errors += 1,
            }
        }
        if d.end.is_some() {
            self.tcp.remove(&key);
        }
        for message in messages {
            self.sip(d.time, d.src, d.dst, &message, out);
        }
    }

    fn sip(
        &mut self,
        now: Duration,
        src: SocketAddr,
        dst: SocketAddr,
        bytes: &[u8],
        out: &mut impl Output,
    ) {
        let message = match SipMessage::parse(bytes) {
            Ok(message) => message,
            Err(_) => {
                self.stats.sip_malformed += 1;
                return;
            }
        };
        self.stats.sip_messages += 1;
        let events = self.tracker.handle(now, src, dst, &message);
        self.events(now, events, out);
    }

    fn events(&mut self, now: Duration, events: Vec<CallEvent>, out: &mut impl Output) {
        let mut answered = Vec::new();
        for event in events {
            match event {
                CallEvent::CallStarted(info) => {
                    let key = info.key;
                    let mut call = Call::new(Some(info.clone()), now);
                    for ip in [info.caller_signalling.ip(), info.callee_signalling.ip()] {
                        if !call.addresses.contains(&ip) {
                            call.addresses.push(ip);
                        }
                    }
                    self.calls.insert(key, call);
                }
                CallEvent::MediaUpdated {
                    key,
                    caller,
                    callee,
                } => {
                    let declared = self
                        .calls
                        .get_mut(&key)
                        .is_some_and(|call| call.media(caller.as_ref(), callee.as_ref()));
                    // Started already: the INV went out without these.
                    if declared {
                        if let Some(update) = self.call_start(key, now) {
                            out.call_updated(&update);
                        }
                    }
                }
                CallEvent::CallAnswered { key, .. } => answered.push(key),
                CallEvent::CallEnded { key, .. } => self.sip_ended(now, key, out),
            }
        }
        // After the batch: the 200's own SDP is applied before the start, so
        // the INV declares the payload types it agreed on.
        for key in answered {
            self.start(key, now, out);
        }
    }

    /// Starts recording a known call, unless it already is or was refused.
    fn start(&mut self, key: CallKey, now: Duration, out: &mut impl Output) -> bool {
        let Some(call) = self.calls.get_mut(&key) else {
            return false;
        };
        match call.recording {
            Recording::Started => return true,
            Recording::Refused => return false,
            Recording::Pending => {}
        }
        let Some((caller, callee, _)) = parties(call) else {
            return false;
        };
        if !self.config.filter.allows(&caller, &callee, &call.addresses) {
            call.recording = Recording::Refused;
            self.stats.calls_filtered += 1;
            return false;
        }
        call.recording = Recording::Started;
        self.stats.calls_started += 1;
        if call.sipless.is_some() {
            self.stats.sipless_calls += 1;
        }
        if let Some(start) = self.call_start(key, now) {
            out.call_started(&start);
        }
        true
    }

    /// A started call as it stands, for [`Output::call_started`] and
    /// [`Output::call_updated`].
    fn call_start(&self, key: CallKey, now: Duration) -> Option<CallStart> {
        let call = self.calls.get(&key)?;
        if call.recording != Recording::Started {
            return None;
        }
        let (caller, callee, call_id) = parties(call)?;
        Some(CallStart {
            key,
            call_id,
            caller,
            callee,
            payload_types: call.declared.clone(),
            fax: call.had_fax,
            at: now,
            clock_rate: call.clock_rate.unwrap_or(DEFAULT_CLOCK_RATE),
        })
    }

    /// SIP ended a call: one being recorded ends once the RTP still in flight
    /// (`rtp_linger` of capture time) is forwarded; any other at once.
    fn sip_ended(&mut self, now: Duration, key: CallKey, out: &mut impl Output) {
        let linger = self.config.tracker.rtp_linger;
        match self.calls.get_mut(&key) {
            Some(call) if call.recording == Recording::Started && !linger.is_zero() => {
                if !call.sip_ended {
                    call.sip_ended = true;
                    self.lingering.push_back((now + linger, key));
                }
            }
            _ => self.end(key, out),
        }
    }

    /// Ends the calls whose linger after SIP's end is over at `now`.
    fn end_lingered(&mut self, now: Duration, out: &mut impl Output) {
        while let Some(&(due, key)) = self.lingering.front() {
            if due > now {
                break;
            }
            self.lingering.pop_front();
            // Only the call SIP ended: never a later one under the same key.
            if self.calls.get(&key).is_some_and(|call| call.sip_ended) {
                self.end(key, out);
            }
        }
    }

    fn end(&mut self, key: CallKey, out: &mut impl Output) {
        let Some(call) = self.calls.remove(&key) else {
            return;
        };
        if let Some((flow, _)) = call.sipless {
            self.sipless.remove(&flow);
        }
        if call.recording == Recording::Started {
            self.stats.calls_ended += 1;
            out.call_ended(key);
        }
    }

    /// One RTP packet: `d` is its datagram, `packet` its parse. The
    /// datagram is passed by reference down to where its addresses are
    /// compared: copying two socket addresses at each call was a tenth of
    /// a packet's cost.
    fn rtp(&mut self, d: &Datagram<'_>, packet: &RtpPacket<'_>, out: &mut impl Output) {
        let bytes: &[u8] = &d.payload;
        if is_rtcp_range(packet.payload_type) && bytes.get(1).is_some_and(|b| b & 0x80 != 0) {
            self.stats.rtcp += 1;
            return;
        }
        let now = d.time;
        let (key, direction) = match self.routes.classify(&self.tracker, now, &d.src, &d.dst) {
            Some((key, classified)) => (key, Leg::Classified(classified)),
            None => match self.sipless_call(now, d.src, d.dst, bytes, packet, out) {
                Some((key, direction)) => (key, Leg::Known(direction)),
                None => return,
            },
        };
        self.forward(key, direction, d, packet, out);
    }

    /// Forwards one RTP packet of call `key` if it is the call's audio. The
    /// hot path: one look-up of the call, the tracker touched at most every
    /// [`TOUCH_EVERY`], nothing allocated.
    fn forward(
        &mut self,
        key: CallKey,
        leg: Leg,
        d: &Datagram<'_>,
        packet: &RtpPacket<'_>,
        out: &mut impl Output,
    ) {
        let (now, bytes): (Duration, &[u8]) = (d.time, &d.payload);
        let Some(call) = self.calls.get_mut(&key) else {
            self.stats.rtp_unmatched += 1;
            return;
        };
        let direction = match leg {
            Leg::Known(direction) => direction,
            Leg::Classified(classified) => call.direction(
                classified,
                (&d.src, &d.dst),
                packet.ssrc,
                now,
                &mut self.stats.rtp_direction_swapped,
            ),
        };
        if call.recording == Recording::Refused {
            self.stats.rtp_filtered += 1;
            return;
        }
        if call.fax {
            self.stats.fax_packets += 1;
            return;
        }
        let pt = packet.payload_type;
        let audio = if call.sipless.is_some() {
            static_audio(pt)
        } else {
            call.audio[usize::from(pt & 0x7f)]
        };
        if !audio {
            self.stats.rtp_not_audio += 1;
            if pt == 13 || pt == 19 {
                self.stats.rtp_comfort_noise += 1;
            }
            return;
        }
        if call.dedup[direction as usize].seen(packet, now, self.config.dedup_window) {
            self.stats.rtp_duplicates += 1;
            return;
        }
        call.last_packet = now;
        // The tracker's idle timeout counts in seconds: telling it of every
        // packet would cost a look-up each for nothing.
        if call.info.is_some() && (now < call.touched || now - call.touched >= TOUCH_EVERY) {
            call.touched = now;
            self.tracker.touch(key, now);
        }
        let after_bye = call.sip_ended;
        // Still the call's media (it keeps the call alive), but ciphertext.
        if call.srtp || (!call.encrypted.is_empty() && call.encrypted.contains(&pair(d.src, d.dst)))
        {
            self.stats.rtp_encrypted += 1;
            return;
        }
        // Early media: the first audio packet starts a call not yet answered.
        if call.recording != Recording::Started && !self.start(key, now, out) {
            self.stats.rtp_filtered += 1;
            return;
        }
        self.stats.rtp_forwarded += 1;
        if after_bye {
            self.stats.rtp_after_bye += 1;
        }
        out.rtp(key, direction, bytes, now);
    }
}

/// The direction of a packet about to be forwarded: known (a call without
/// SIP), or the tracker's answer, which the call may correct
/// ([`Call::direction`]).
#[derive(Debug, Clone, Copy)]
enum Leg {
    Known(Direction),
    Classified(Direction),
}

/// The clock of a call whose codec is not known: G.711's, 8 kHz.
const DEFAULT_CLOCK_RATE: u32 = 8000;

/// How often a forwarded packet tells the tracker its dialog is alive.
const TOUCH_EVERY: Duration = Duration::from_millis(250);
