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

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rst_proto::{Direction, RtpPacket};

use crate::packet::{Datagram, Decoder, Limits, LinkType, Transport};
use crate::sip::sdp::{static_payload_type, MediaKind};
use crate::sip::{
    CallEvent, CallInfo, CallKey, MediaDesc, SipMessage, SipStream, Tracker, TrackerConfig,
};

/// Where a pipeline's decisions go: the real one sends them to a receiver
/// ([`crate::output::UdpOutput`]); tests collect them.
pub trait Output {
    /// A call is to be recorded from now on.
    fn call_started(&mut self, call: &CallStart);
    /// One captured RTP packet of a started call, unchanged.
    fn rtp(&mut self, key: CallKey, direction: Direction, packet: &[u8]);
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
}

impl CallStart {
    /// The INV's extension fields: `ptN=NAME/CLOCK` for each declared payload
    /// type, `call-id=` when there is one, `fax=1` once the call had a fax
    /// phase, `stream=` for the receiver's stream profiles `streams`.
    pub fn extensions(&self, streams: &[String]) -> String {
        let mut fields = rst_proto::ExtensionsBuilder::new();
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

pub use rst_control::Pattern;

/// Which calls to record. An empty list does not restrict.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Record a call only if one of its addresses (signalling or media, either
    /// party) is in one of these networks.
    pub networks: Vec<ipnet::IpNet>,
    /// Record a call only if its caller or callee matches one of these.
    pub numbers: Vec<Pattern>,
    /// Never record a call whose caller or callee matches one of these.
    pub skip_numbers: Vec<Pattern>,
}

impl Filter {
    /// Whether a call with these parties and addresses is recorded.
    pub fn allows(&self, caller: &str, callee: &str, addresses: &[IpAddr]) -> bool {
        if !self.networks.is_empty()
            && !addresses
                .iter()
                .any(|ip| self.networks.iter().any(|net| net.contains(ip)))
        {
            return false;
        }
        let either = |p: &Pattern| p.matches(caller) || p.matches(callee);
        if !self.numbers.is_empty() && !self.numbers.iter().any(either) {
            return false;
        }
        !self.skip_numbers.iter().any(either)
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

/// One direction's recently forwarded packets, for spotting repeats.
#[derive(Debug, Default)]
struct Dedup {
    recent: [(u32, u16, u32, u64, Duration); DEDUP_SLOTS],
    next: usize,
    filled: usize,
}

const DEDUP_SLOTS: usize = 32;

impl Dedup {
    /// True if this packet was already seen within `window`; remembers it otherwise.
    fn seen(&mut self, packet: &RtpPacket<'_>, now: Duration, window: Duration) -> bool {
        let hash = fnv1a(packet.payload);
        let key = (packet.ssrc, packet.sequence, packet.timestamp, hash);
        let repeat = self.recent[..self.filled].iter().any(|&(s, q, t, h, at)| {
            (s, q, t, h) == key
                && now.saturating_sub(at) <= window
                && at.saturating_sub(now) <= window
        });
        if !repeat {
            self.recent[self.next] = (key.0, key.1, key.2, key.3, now);
            self.next = (self.next + 1) % DEDUP_SLOTS;
            self.filled = (self.filled + 1).min(DEDUP_SLOTS);
        }
        repeat
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recording {
    /// Known, not yet started (unanswered, no audio yet).
    Pending,
    Started,
    /// The filter said no.
    Refused,
}

/// A pair of endpoints in a fixed order, so both directions find one entry.
type FlowPair = (SocketAddr, SocketAddr);

fn pair(a: SocketAddr, b: SocketAddr) -> FlowPair {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

#[derive(Debug)]
struct Call {
    recording: Recording,
    /// SIP calls: what the tracker said at the start.
    info: Option<CallInfo>,
    /// Payload types forwarded (audio per the SDP, and telephone-event).
    audio: [bool; 128],
    /// Payload types to declare in the INV.
    declared: Vec<(u8, String, u32)>,
    /// Addresses for the network filter.
    addresses: Vec<IpAddr>,
    dedup: [Dedup; 2],
    /// The flow each direction's audio comes from, see [`Call::direction`].
    owners: [Option<Owner>; 2],
    last_packet: Duration,
    /// Calls made of RTP alone: their flow pair and the first packet's source.
    sipless: Option<(FlowPair, SocketAddr)>,
    /// Media flow pairs whose ZRTP handshake completed: SRTP from then on.
    encrypted: Vec<FlowPair>,
    /// The SDP made the audio SRTP (SDES or DTLS): all of it is ciphertext.
    srtp: bool,
    /// SIP ended the call: its RTP is still forwarded for the tracker's
    /// `rtp_linger` (its end is due in [`Pipeline::lingering`]).
    sip_ended: bool,
    /// A party's current SDP has fax (T.38 `m=image`) and no audio: nothing
    /// of the call's media is audio now, whatever addresses it uses.
    fax: bool,
    /// The call was in a fax phase at some point.
    had_fax: bool,
}

/// Most flow pairs a call remembers as encrypted; a call has one or two
/// media flows, a few more after re-INVITEs.
const MAX_ENCRYPTED_FLOWS: usize = 16;

/// The flow (and SSRC) a call direction's audio currently comes from.
#[derive(Debug, Clone, Copy)]
struct Owner {
    flow: (SocketAddr, SocketAddr),
    ssrc: u32,
    last: Duration,
}

/// How long a direction's flow stays its owner without a packet.
const OWNER_IDLE: Duration = Duration::from_secs(1);

impl Call {
    /// The direction a packet of `flow` goes in, given the tracker's answer.
    ///
    /// SDP alone cannot always tell: behind some proxies both streams of a
    /// call match the same party's endpoint (one by destination, the other
    /// by source), and the tracker says R for both. Two streams with
    /// different SSRCs from different flows, both alive, are never one
    /// direction, so the newcomer takes the other direction if that one is
    /// free. The same SSRC on another flow is the same audio seen at a
    /// second point (deduplicated later), and a flow that takes over after
    /// the owner went quiet is media moved by a re-INVITE: both keep the
    /// tracker's direction.
    fn direction(
        &mut self,
        classified: Direction,
        flow: (SocketAddr, SocketAddr),
        ssrc: u32,
        now: Duration,
        swapped: &mut u64,
    ) -> Direction {
        let active = |o: &Option<Owner>| {
            o.filter(|o| {
                now.saturating_sub(o.last) < OWNER_IDLE && o.last.saturating_sub(now) < OWNER_IDLE
            })
        };
        let other = match classified {
            Direction::Read => Direction::Write,
            Direction::Write => Direction::Read,
        };
        let direction = match active(&self.owners[classified as usize]) {
            Some(owner)
                if owner.flow != flow
                    && owner.ssrc != ssrc
                    && active(&self.owners[other as usize]).map_or(true, |o| o.flow == flow) =>
            {
                *swapped += 1;
                other
            }
            _ => classified,
        };
        let copy = active(&self.owners[direction as usize])
            .is_some_and(|o| o.flow != flow && o.ssrc == ssrc);
        // A copy from a second tap point leaves the first flow the owner.
        if !copy {
            self.owners[direction as usize] = Some(Owner {
                flow,
                ssrc,
                last: now,
            });
        }
        direction
    }

    fn new(info: Option<CallInfo>, now: Duration) -> Call {
        Call {
            recording: Recording::Pending,
            info,
            audio: [false; 128],
            declared: Vec::new(),
            addresses: Vec::new(),
            dedup: Default::default(),
            owners: [None, None],
            last_packet: now,
            sipless: None,
            encrypted: Vec::new(),
            srtp: false,
            sip_ended: false,
            fax: false,
            had_fax: false,
        }
    }

    /// Applies both parties' current media: which payload types are audio,
    /// what the dynamic ones are, whether the call is in a fax phase. Returns
    /// whether the receiver must hear of it: a dynamic payload type declared
    /// that had not been, or the call's first fax phase.
    fn media(&mut self, caller: Option<&MediaDesc>, callee: Option<&MediaDesc>) -> bool {
        let declared_before = self.declared.len();
        // Either party moving to T.38 starts the fax, whether or not the
        // other's answer was seen: from then on no packet of the call is
        // audio, also on the audio's own addresses, until SDP brings audio back.
        let fax = |desc: Option<&MediaDesc>| {
            desc.is_some_and(|d| {
                d.audio.is_none()
                    && d.non_audio
                        .iter()
                        .any(|(kind, _)| *kind == MediaKind::Image)
            })
        };
        self.fax = fax(caller) || fax(callee);
        let first_fax = self.fax && !self.had_fax;
        self.had_fax |= self.fax;
        // The answer says whether the offer's SRTP was taken up (an offer may
        // propose keys on RTP/AVP, "best effort", and be answered in clear).
        if let Some(desc) = callee.or(caller) {
            self.srtp = desc.encrypted;
        }
        // The answer (callee) first: its mapping is the one agreed on.
        for desc in [callee, caller].into_iter().flatten() {
            if let Some(addr) = desc.audio {
                if !self.addresses.contains(&addr.ip()) {
                    self.addresses.push(addr.ip());
                }
            }
            for mapping in &desc.payload_types {
                let pt = mapping.payload_type;
                if pt > 127 {
                    continue;
                }
                let encoding = mapping
                    .encoding
                    .clone()
                    .or_else(|| static_payload_type(pt).map(|(name, _)| name.to_owned()));
                let comfort_noise = pt == 13
                    || pt == 19
                    || encoding
                        .as_deref()
                        .is_some_and(|e| e.eq_ignore_ascii_case("CN"));
                if comfort_noise || is_rtcp_range(pt) {
                    continue;
                }
                self.audio[usize::from(pt)] = true;
                // A number keeps its first mapping (RFC 3264 8.3.2: a session
                // never remaps a dynamic payload type), so the receiver, which
                // adds declarations and never replaces them, agrees.
                if pt >= 35 && !self.declared.iter().any(|(p, ..)| *p == pt) {
                    if let (Some(name), Some(clock)) = (encoding, mapping.clock_rate) {
                        self.declared.push((pt, name, clock));
                    }
                }
            }
            if let Some(pt) = desc.telephone_event.filter(|pt| *pt < 128) {
                self.audio[usize::from(pt)] = true;
            }
        }
        self.declared.len() > declared_before || first_fax
    }
}

/// Payload type numbers that, with the marker bit, are RTCP packet types
/// 200 to 204 (RFC 5761).
fn is_rtcp_range(pt: u8) -> bool {
    (72..=76).contains(&pt)
}

/// RFC 3551's static audio payload types, comfort noise excluded: what a flow
/// without SDP may carry.
fn static_audio(pt: u8) -> bool {
    pt != 13 && pt != 19 && static_payload_type(pt).is_some()
}

/// A UDP flow that looked like RTP, waiting for a packet close enough in
/// sequence to the last one to confirm it.
#[derive(Debug)]
struct Candidate {
    ssrc: u32,
    /// Sequence number of the last packet.
    sequence: u16,
    /// Capture time of the last packet.
    seen: Duration,
    /// The packets of this SSRC so far, with their capture times, oldest
    /// first; at most [`MAX_CANDIDATE_PACKETS`].
    packets: std::collections::VecDeque<(Duration, Vec<u8>)>,
}

/// Packets a candidate flow keeps while unconfirmed: enough for a stream
/// whose first packets are parted by loss, little for a flood of flows.
const MAX_CANDIDATE_PACKETS: usize = 4;

/// The capture pipeline. See the module documentation.
#[derive(Debug)]
pub struct Pipeline {
    config: PipelineConfig,
    decoder: Decoder,
    tracker: Tracker,
    calls: HashMap<CallKey, Call>,
    sipless: HashMap<FlowPair, CallKey>,
    candidates: HashMap<(SocketAddr, SocketAddr), Candidate>,
    tcp: HashMap<(SocketAddr, SocketAddr), SipStream>,
    /// Calls SIP ended, in end order, with when their RTP linger is over.
    lingering: VecDeque<(Duration, CallKey)>,
    last_tick: Option<Duration>,
    stats: PipelineStats,
}

impl Pipeline {
    pub fn new(config: PipelineConfig) -> Pipeline {
        Pipeline {
            decoder: Decoder::new(config.decoder),
            tracker: Tracker::new(config.tracker.clone()),
            config,
            calls: HashMap::new(),
            sipless: HashMap::new(),
            candidates: HashMap::new(),
            tcp: HashMap::new(),
            lingering: VecDeque::new(),
            last_tick: None,
            stats: PipelineStats::default(),
        }
    }

    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Replaces the filter (a control client's new config): calls already
    /// being recorded go on; calls not started yet are judged by the new one.
    pub fn set_filter(&mut self, filter: Filter) {
        self.config.filter = filter;
    }

    /// Calls being recorded now.
    pub fn recording(&self) -> usize {
        self.calls
            .values()
            .filter(|c| c.recording == Recording::Started)
            .count()
    }

    /// One captured frame of link type `link`, captured at `now`.
    pub fn frame(&mut self, link: LinkType, now: Duration, bytes: &[u8], out: &mut impl Output) {
        let mut datagrams = Vec::new();
        // A frame that does not decode is counted by the decoder; what it
        // yielded before the error (idle stream ends) is still handled.
        let _ = self.decoder.decode(link, now, bytes, &mut datagrams);
        for datagram in &datagrams {
            self.datagram(datagram, out);
        }
        self.tick(now, out);
    }

    /// Timers: call it when no frame came for a while (live capture), with the
    /// current time. Does its work at most once a second of `now`.
    pub fn tick(&mut self, now: Duration, out: &mut impl Output) {
        self.end_lingered(now, out);
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
        if !due {
            return;
        }
        self.last_tick = Some(now);
        let mut datagrams = Vec::new();
        self.decoder.expire(now, &mut datagrams);
        for datagram in &datagrams {
            self.datagram(datagram, out);
        }
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

    /// The capture is over at `now`: TCP bytes still held are delivered and
    /// every call still recording ends.
    pub fn finish(&mut self, now: Duration, out: &mut impl Output) {
        let mut datagrams = Vec::new();
        self.decoder.finish(now, &mut datagrams);
        for datagram in &datagrams {
            self.datagram(datagram, out);
        }
        let keys: Vec<CallKey> = self.calls.keys().copied().collect();
        for key in keys {
            self.end(key, out);
        }
        self.candidates.clear();
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
        if looks_like_sip(payload) || (self.is_sip_port(d) && !looks_like_rtp(payload)) {
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
            Ok(packet) => self.rtp(d.time, d.src, d.dst, payload, &packet, out),
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
        let Some((caller, callee, call_id)) = parties(call) else {
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
        out.call_started(&CallStart {
            key,
            call_id,
            caller,
            callee,
            payload_types: call.declared.clone(),
            fax: call.had_fax,
            at: now,
        });
        true
    }

    /// A started call as it stands, for [`Output::call_updated`].
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

    fn rtp(
        &mut self,
        now: Duration,
        src: SocketAddr,
        dst: SocketAddr,
        bytes: &[u8],
        packet: &RtpPacket<'_>,
        out: &mut impl Output,
    ) {
        if is_rtcp_range(packet.payload_type) && bytes.get(1).is_some_and(|b| b & 0x80 != 0) {
            self.stats.rtcp += 1;
            return;
        }
        let (key, direction) = match self.tracker.classify(now, src, dst) {
            Some((key, classified)) => {
                let Some(call) = self.calls.get_mut(&key) else {
                    self.stats.rtp_unmatched += 1;
                    return;
                };
                let direction = call.direction(
                    classified,
                    (src, dst),
                    packet.ssrc,
                    now,
                    &mut self.stats.rtp_direction_swapped,
                );
                (key, direction)
            }
            None => match self.sipless_call(now, src, dst, bytes, packet, out) {
                Some(found) => found,
                None => return,
            },
        };
        self.forward(now, key, direction, (src, dst), bytes, packet, out);
    }

    #[allow(clippy::too_many_arguments)] // the packet and everything known of it
    fn forward(
        &mut self,
        now: Duration,
        key: CallKey,
        direction: Direction,
        (src, dst): (SocketAddr, SocketAddr),
        bytes: &[u8],
        packet: &RtpPacket<'_>,
        out: &mut impl Output,
    ) {
        let Some(call) = self.calls.get_mut(&key) else {
            self.stats.rtp_unmatched += 1;
            return;
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
        if call.info.is_some() {
            self.tracker.touch(key, now);
        }
        let after_bye = call.sip_ended;
        // Still the call's media (it keeps the call alive), but ciphertext.
        if call.srtp || call.encrypted.contains(&pair(src, dst)) {
            self.stats.rtp_encrypted += 1;
            return;
        }
        // Early media: the first audio packet starts a call not yet answered.
        if !self.start(key, now, out) {
            self.stats.rtp_filtered += 1;
            return;
        }
        self.stats.rtp_forwarded += 1;
        if after_bye {
            self.stats.rtp_after_bye += 1;
        }
        out.rtp(key, direction, bytes);
    }

    /// The call of an RTP packet no SIP call claims, when such calls are
    /// recorded: an existing one of its flow pair, or a new one once the flow
    /// has shown itself to be RTP.
    fn sipless_call(
        &mut self,
        now: Duration,
        src: SocketAddr,
        dst: SocketAddr,
        bytes: &[u8],
        packet: &RtpPacket<'_>,
        out: &mut impl Output,
    ) -> Option<(CallKey, Direction)> {
        if !self.config.rtp_without_sip {
            self.stats.rtp_unmatched += 1;
            return None;
        }
        let flow = pair(src, dst);
        if let Some(&key) = self.sipless.get(&flow) {
            let first_src = self.calls.get(&key)?.sipless?.1;
            let direction = if src == first_src {
                Direction::Read
            } else {
                Direction::Write
            };
            return Some((key, direction));
        }
        if !static_audio(packet.payload_type) {
            self.stats.rtp_unmatched += 1;
            return None;
        }
        let confirmed = self.candidates.get(&(src, dst)).is_some_and(|c| {
            c.ssrc == packet.ssrc && {
                let step = packet.sequence.wrapping_sub(c.sequence);
                (1..=16).contains(&step)
            }
        });
        if !confirmed {
            match self.candidates.get_mut(&(src, dst)) {
                // The same SSRC further on than the window: RTP with loss as
                // likely as not. Its packets wait too, so that none is lost
                // once the flow confirms.
                Some(c) if c.ssrc == packet.ssrc => {
                    if c.packets.len() >= MAX_CANDIDATE_PACKETS {
                        c.packets.pop_front();
                    }
                    c.packets.push_back((now, bytes.to_vec()));
                    c.sequence = packet.sequence;
                    c.seen = now;
                }
                _ => {
                    if self.candidates.len() >= 2 * self.config.max_sipless_calls {
                        // Full of flows that never confirmed: start over rather than grow.
                        self.candidates.clear();
                    }
                    self.candidates.insert(
                        (src, dst),
                        Candidate {
                            ssrc: packet.ssrc,
                            sequence: packet.sequence,
                            seen: now,
                            packets: [(now, bytes.to_vec())].into(),
                        },
                    );
                }
            }
            self.stats.rtp_unmatched += 1;
            return None;
        }
        let first = self.candidates.remove(&(src, dst))?;
        if self.sipless.len() >= self.config.max_sipless_calls {
            self.stats.sipless_refused += 1;
            self.stats.rtp_unmatched += 1;
            return None;
        }
        // Counted unmatched while they waited; forwarded below.
        self.stats.rtp_unmatched = self
            .stats
            .rtp_unmatched
            .saturating_sub(first.packets.len() as u64);
        let key = CallKey::from_call_id(&format!("rtp {} {}", flow.0, flow.1));
        if self.calls.contains_key(&key) {
            return None;
        }
        let mut call = Call::new(None, now);
        call.sipless = Some((flow, src));
        call.addresses = vec![src.ip(), dst.ip()];
        self.calls.insert(key, call);
        self.sipless.insert(flow, key);
        // The packets that made the flow a candidate go first.
        for (seen, bytes) in &first.packets {
            if let Ok(held) = RtpPacket::parse(bytes) {
                self.forward(*seen, key, Direction::Read, (src, dst), bytes, &held, out);
            }
        }
        Some((key, Direction::Read))
    }
}

/// A call's caller, callee and Call-ID for the INV: from SIP, or for a call
/// of RTP alone its first packet's source and the other endpoint.
fn parties(call: &Call) -> Option<(String, String, Option<String>)> {
    match (&call.info, &call.sipless) {
        (Some(info), _) => Some((
            clean_party(info.caller.label()),
            clean_party(info.callee.label()),
            Some(info.call_id.clone()),
        )),
        (None, Some(((a, b), first_src))) => {
            let other = if a == first_src { b } else { a };
            Some((
                clean_party(&endpoint_label(*first_src)),
                clean_party(&endpoint_label(*other)),
                None,
            ))
        }
        (None, None) => None,
    }
}

/// `10.0.0.1-6000`, `fe80..1-6000`: an endpoint as a party label.
fn endpoint_label(addr: SocketAddr) -> String {
    format!("{}-{}", addr.ip(), addr.port())
}

/// Whether bytes start like a SIP request or response line: `SIP/2.0 ` or an
/// upper-case method token followed by ` sip:`, ` sips:` or ` tel:`. RTP
/// starts with a byte of 0x80 or more, so it never passes.
pub fn looks_like_sip(bytes: &[u8]) -> bool {
    if bytes.starts_with(b"SIP/2.0 ") {
        return true;
    }
    let method = bytes.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method == 0 || method > 16 {
        return false;
    }
    let after = &bytes[method..];
    [&b" sip:"[..], b" sips:", b" tel:"]
        .iter()
        .any(|p| after.len() >= p.len() && after[..p.len()].eq_ignore_ascii_case(p))
}

/// The message type of a ZRTP packet (RFC 6189 section 5): first nibble
/// 0001 (an RTP version of 0, so never taken for RTP), the magic cookie
/// `ZRTP` at bytes 4..8, then the message: preamble 0x505a, length, and the
/// 8-byte type block (`Hello   `, `Commit  `, ..., `Conf2ACK`).
fn zrtp_message(bytes: &[u8]) -> Option<&[u8]> {
    let fixed = bytes.get(..24)?;
    (fixed[0] >> 4 == 1 && &fixed[4..8] == b"ZRTP" && fixed[12..14] == [0x50, 0x5a])
        .then(|| &fixed[16..24])
}

/// Version 2 in the first byte and at least a fixed header.
fn looks_like_rtp(bytes: &[u8]) -> bool {
    bytes.len() >= 12 && bytes[0] >> 6 == 2
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Collect {
        started: Vec<CallStart>,
        updated: Vec<CallStart>,
        rtp: Vec<(CallKey, Direction, Vec<u8>)>,
        ended: Vec<CallKey>,
    }

    impl Output for Collect {
        fn call_started(&mut self, call: &CallStart) {
            self.started.push(call.clone());
        }
        fn rtp(&mut self, key: CallKey, direction: Direction, packet: &[u8]) {
            self.rtp.push((key, direction, packet.to_vec()));
        }
        fn call_updated(&mut self, call: &CallStart) {
            self.updated.push(call.clone());
        }
        fn call_ended(&mut self, key: CallKey) {
            self.ended.push(key);
        }
    }

    /// Raw IPv4 / UDP frame.
    fn udp(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
        let src: SocketAddr = src.parse().unwrap();
        let dst: SocketAddr = dst.parse().unwrap();
        let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
            panic!("v4 only")
        };
        let total = 20 + 8 + payload.len();
        let mut f = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            1,
            0,
            0,
            64,
            17,
            0,
            0,
        ];
        f.extend_from_slice(&s.octets());
        f.extend_from_slice(&d.octets());
        f.extend_from_slice(&src.port().to_be_bytes());
        f.extend_from_slice(&dst.port().to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        RtpPacket {
            marker: false,
            payload_type: pt,
            sequence: seq,
            timestamp: ts,
            ssrc,
            payload,
        }
        .encode(&mut v);
        v
    }

    fn sip(first: &str, from: &str, to: &str, cseq: &str, sdp: Option<&str>) -> Vec<u8> {
        let body = sdp.unwrap_or("");
        let ctype = if sdp.is_some() {
            "Content-Type: application/sdp\r\n"
        } else {
            ""
        };
        format!(
            "{first}\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: abc:1@10.0.0.1\r\nCSeq: {cseq}\r\n{ctype}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn sdp(ip: &str, port: u16, pts: &str, maps: &str) -> String {
        format!("v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {pts}\r\n{maps}")
    }

    const A: &str = "<sip:1001@10.0.0.1>;tag=a";
    const B: &str = "<sip:1002@10.0.0.2>";
    const B_TAG: &str = "<sip:1002@10.0.0.2>;tag=b";

    fn call_setup(p: &mut Pipeline, out: &mut Collect, answer: bool) {
        let offer = sdp(
            "10.0.0.1",
            4000,
            "8 13 101",
            "a=rtpmap:8 PCMA/8000\r\na=rtpmap:13 CN/8000\r\na=rtpmap:101 telephone-event/8000\r\n",
        );
        let answer_sdp = sdp(
            "10.0.0.2",
            6000,
            "8 13 101",
            "a=rtpmap:8 PCMA/8000\r\na=rtpmap:13 CN/8000\r\na=rtpmap:101 telephone-event/8000\r\n",
        );
        let t = Duration::from_secs(1);
        let inv = sip(
            "INVITE sip:1002@10.0.0.2 SIP/2.0",
            A,
            B,
            "1 INVITE",
            Some(&offer),
        );
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.1:5060", "10.0.0.2:5060", &inv),
            out,
        );
        let status = if answer {
            "SIP/2.0 200 OK"
        } else {
            "SIP/2.0 183 Session Progress"
        };
        let resp = sip(status, A, B_TAG, "1 INVITE", Some(&answer_sdp));
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.2:5060", "10.0.0.1:5060", &resp),
            out,
        );
    }

    /// One call offered and answered with `offer` / `answer` as the audio
    /// m= line's profile and attributes; then one RTP packet each way.
    fn srtp_call(offer: (&str, &str), answer: (&str, &str)) -> (Collect, PipelineStats) {
        let mut p = Pipeline::new(PipelineConfig::default());
        let mut out = Collect::default();
        let sdp_with = |ip: &str, port: u16, (proto, attrs): (&str, &str)| {
            sdp(ip, port, "0", attrs).replace("RTP/AVP", proto)
        };
        let t = Duration::from_secs(1);
        let inv = sip(
            "INVITE sip:1002@10.0.0.2 SIP/2.0",
            A,
            B,
            "1 INVITE",
            Some(&sdp_with("10.0.0.1", 4000, offer)),
        );
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.1:5060", "10.0.0.2:5060", &inv),
            &mut out,
        );
        let ok = sip(
            "SIP/2.0 200 OK",
            A,
            B_TAG,
            "1 INVITE",
            Some(&sdp_with("10.0.0.2", 6000, answer)),
        );
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.2:5060", "10.0.0.1:5060", &ok),
            &mut out,
        );
        for (from, to, ssrc) in [
            ("10.0.0.1:4000", "10.0.0.2:6000", 7),
            ("10.0.0.2:6000", "10.0.0.1:4000", 9),
        ] {
            let packet = rtp(0, 1, 160, ssrc, &[0x5a; 170]);
            p.frame(LinkType::RAW, t, &udp(from, to, &packet), &mut out);
        }
        let stats = p.stats().clone();
        (out, stats)
    }

    const KEYS: &str =
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n";

    #[test]
    fn srtp_negotiated_in_sdp_is_never_recorded_as_audio() {
        for (offer, answer) in [
            (("RTP/SAVP", KEYS), ("RTP/SAVP", KEYS)),
            (("UDP/TLS/RTP/SAVPF", ""), ("UDP/TLS/RTP/SAVPF", "")),
            // Best effort: keys on RTP/AVP, taken up by the answer.
            (("RTP/AVP", KEYS), ("RTP/AVP", KEYS)),
        ] {
            let (out, stats) = srtp_call(offer, answer);
            assert!(out.rtp.is_empty(), "{offer:?} {answer:?}: {:?}", out.rtp);
            assert_eq!(stats.rtp_encrypted, 2, "{offer:?} {answer:?}");
            assert_eq!(out.started.len(), 1, "the call itself is still recorded");
        }
        // Best effort declined: the answer has no keys, the audio is clear.
        let (out, stats) = srtp_call(("RTP/AVP", KEYS), ("RTP/AVP", ""));
        assert_eq!(out.rtp.len(), 2);
        assert_eq!(stats.rtp_encrypted, 0);
    }

    #[test]
    fn answered_call_forwards_audio_and_dtmf_not_comfort_noise_or_repeats() {
        let mut p = Pipeline::new(PipelineConfig::default());
        let mut out = Collect::default();
        call_setup(&mut p, &mut out, true);
        assert_eq!(out.started.len(), 1);
        let start = &out.started[0];
        assert_eq!(start.caller, "1001");
        assert_eq!(start.callee, "1002");
        assert_eq!(
            start.extensions(&[]),
            "pt101=telephone-event/8000:call-id=abc%3A1@10.0.0.1"
        );
        let key = start.key;
        let t = Duration::from_secs(2);
        let a = rtp(8, 1, 160, 7, &[0xd5; 160]);
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.1:4000", "10.0.0.2:6000", &a),
            &mut out,
        );
        // Seen again at a second tap point.
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.1:4000", "10.0.0.2:6000", &a),
            &mut out,
        );
        let cn = rtp(13, 2, 320, 7, &[0x40]);
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.1:4000", "10.0.0.2:6000", &cn),
            &mut out,
        );
        let ev = rtp(101, 1, 900, 9, &[1, 0x80, 0, 160]);
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.2:6000", "10.0.0.1:4000", &ev),
            &mut out,
        );
        let video = rtp(97, 3, 480, 7, &[1, 2, 3]);
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.1:4000", "10.0.0.2:6000", &video),
            &mut out,
        );
        assert_eq!(
            out.rtp,
            vec![
                (key, Direction::Read, a.clone()),
                (key, Direction::Write, ev)
            ]
        );
        assert_eq!(p.stats().rtp_duplicates, 1);
        assert_eq!(p.stats().rtp_comfort_noise, 1);
        assert_eq!(p.stats().rtp_not_audio, 2);

        let bye = sip("BYE sip:1002@10.0.0.2 SIP/2.0", A, B_TAG, "2 BYE", None);
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.1:5060", "10.0.0.2:5060", &bye),
            &mut out,
        );
        p.tick(t + Duration::from_secs(1), &mut out);
        assert_eq!(out.ended, vec![key]);
    }

    /// The last words of a call often arrive after its BYE (which travels
    /// another way): RTP within the tracker's `rtp_linger` of the BYE is
    /// forwarded and counted, then the call ends; later RTP matches nothing.
    #[test]
    fn rtp_in_flight_after_the_bye_is_forwarded_within_the_linger() {
        let mut p = Pipeline::new(PipelineConfig::default());
        let mut out = Collect::default();
        call_setup(&mut p, &mut out, true);
        let key = out.started[0].key;
        let t = Duration::from_secs(2);
        let bye = sip("BYE sip:1002@10.0.0.2 SIP/2.0", A, B_TAG, "2 BYE", None);
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.1:5060", "10.0.0.2:5060", &bye),
            &mut out,
        );
        assert!(out.ended.is_empty(), "ended before its RTP in flight");
        // 60 ms after the BYE, the caller's last packets.
        let mut late = Vec::new();
        for k in 0..3u16 {
            let packet = rtp(8, 10 + k, 160 * u32::from(10 + k), 7, &[0xd5; 160]);
            p.frame(
                LinkType::RAW,
                t + Duration::from_millis(20 + 20 * u64::from(k)),
                &udp("10.0.0.1:4000", "10.0.0.2:6000", &packet),
                &mut out,
            );
            late.push((key, Direction::Read, packet));
        }
        assert_eq!(out.rtp, late);
        assert_eq!(p.stats().rtp_after_bye, 3);
        assert!(out.ended.is_empty());
        // Past the linger: the call ends, and its RTP is no more its.
        let linger = PipelineConfig::default().tracker.rtp_linger;
        let after = rtp(8, 20, 3200, 7, &[0xd5; 160]);
        p.frame(
            LinkType::RAW,
            t + linger,
            &udp("10.0.0.1:4000", "10.0.0.2:6000", &after),
            &mut out,
        );
        assert_eq!(out.ended, vec![key]);
        assert_eq!(out.rtp.len(), 3, "RTP after the linger was forwarded");
        assert_eq!(p.stats().rtp_unmatched, 1);
        assert_eq!(p.stats().calls_ended, 1);
    }

    #[test]
    fn early_media_starts_the_call() {
        let mut p = Pipeline::new(PipelineConfig::default());
        let mut out = Collect::default();
        call_setup(&mut p, &mut out, false);
        assert!(out.started.is_empty());
        let a = rtp(8, 1, 160, 7, &[0xd5; 160]);
        p.frame(
            LinkType::RAW,
            Duration::from_secs(2),
            &udp("10.0.0.2:6000", "10.0.0.1:4000", &a),
            &mut out,
        );
        assert_eq!(out.started.len(), 1);
        assert_eq!(out.rtp.len(), 1);
        assert_eq!(out.rtp[0].1, Direction::Write);
        p.finish(Duration::from_secs(3), &mut out);
        assert_eq!(out.ended.len(), 1);
    }

    #[test]
    fn filters_refuse_numbers_and_networks() {
        for (filter, recorded) in [
            (
                Filter {
                    skip_numbers: vec![Pattern::parse("10*").unwrap()],
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    numbers: vec![Pattern::parse("re:^100[12]$").unwrap()],
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    numbers: vec![Pattern::parse("2?0?").unwrap()],
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    networks: vec!["10.0.0.0/30".parse().unwrap()],
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    networks: vec!["192.168.0.0/16".parse().unwrap()],
                    ..Filter::default()
                },
                false,
            ),
        ] {
            let mut p = Pipeline::new(PipelineConfig {
                filter,
                ..PipelineConfig::default()
            });
            let mut out = Collect::default();
            call_setup(&mut p, &mut out, true);
            let a = rtp(8, 1, 160, 7, &[0xd5; 160]);
            p.frame(
                LinkType::RAW,
                Duration::from_secs(2),
                &udp("10.0.0.1:4000", "10.0.0.2:6000", &a),
                &mut out,
            );
            assert_eq!(out.started.len(), usize::from(recorded));
            assert_eq!(out.rtp.len(), usize::from(recorded));
            assert_eq!(p.stats().rtp_filtered, u64::from(!recorded));
        }
    }

    #[test]
    fn rtp_without_sip_needs_two_packets_and_pairs_directions() {
        let config = PipelineConfig {
            rtp_without_sip: true,
            ..PipelineConfig::default()
        };
        let mut p = Pipeline::new(config);
        let mut out = Collect::default();
        let t = Duration::from_secs(1);
        // One RTP-looking datagram alone is not a call.
        let dns_like = rtp(0, 9, 0, 1, &[0; 20]);
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.9:40000", "10.0.0.8:53", &dns_like),
            &mut out,
        );
        assert!(out.started.is_empty());
        let a1 = rtp(0, 100, 0, 5, &[0xff; 160]);
        let a2 = rtp(0, 101, 160, 5, &[0xff; 160]);
        let b1 = rtp(0, 7, 0, 6, &[0x7f; 160]);
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.1:7000", "10.0.0.2:8000", &a1),
            &mut out,
        );
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.1:7000", "10.0.0.2:8000", &a2),
            &mut out,
        );
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.2:8000", "10.0.0.1:7000", &b1),
            &mut out,
        );
        assert_eq!(out.started.len(), 1);
        assert_eq!(out.started[0].caller, "10.0.0.1-7000");
        let key = out.started[0].key;
        assert_eq!(
            out.rtp,
            vec![
                (key, Direction::Read, a1),
                (key, Direction::Read, a2),
                (key, Direction::Write, b1)
            ]
        );
        // Quiet for longer than sipless_idle: the call ends.
        p.tick(Duration::from_secs(2), &mut out);
        p.tick(Duration::from_secs(30), &mut out);
        assert_eq!(out.ended, vec![key]);
    }

    /// A T.38 SDP on the audio's own address and port (`m=image ... udptl t38`).
    fn t38_sdp(ip: &str, port: u16) -> String {
        format!(
            "v=0\r\no=- 1 2 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=image {port} udptl t38\r\na=T38FaxVersion:0\r\na=T38MaxBitRate:14400\r\na=T38FaxRateManagement:transferredTCF\r\na=T38FaxUdpEC:t38UDPRedundancy\r\n"
        )
    }

    /// Sends a re-INVITE from the callee with `offer` and the caller's 200
    /// with `answer`, at `t`.
    fn callee_reinvite(
        p: &mut Pipeline,
        out: &mut Collect,
        t: Duration,
        cseq: u32,
        offer: &str,
        answer: &str,
    ) {
        let reinvite = sip(
            "INVITE sip:1001@10.0.0.1 SIP/2.0",
            B_TAG,
            A,
            &format!("{cseq} INVITE"),
            Some(offer),
        );
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.2:5060", "10.0.0.1:5060", &reinvite),
            out,
        );
        let ok = sip(
            "SIP/2.0 200 OK",
            B_TAG,
            A,
            &format!("{cseq} INVITE"),
            Some(answer),
        );
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.1:5060", "10.0.0.2:5060", &ok),
            out,
        );
    }

    /// A fax: a re-INVITE moves the media to T.38 on the audio's own
    /// addresses and ports. UDPTL that happens to parse as RTP with an audio
    /// payload type (a sequence number of 0x80xx, then 8) never becomes
    /// audio; a later re-INVITE back to audio brings the audio back.
    #[test]
    fn t38_on_the_audios_ports_never_becomes_audio_and_audio_comes_back() {
        let mut p = Pipeline::new(PipelineConfig::default());
        let mut out = Collect::default();
        call_setup(&mut p, &mut out, true);
        let key = out.started[0].key;
        let t = Duration::from_secs(2);
        let voice = |seq: u16| rtp(8, seq, 160 * u32::from(seq), 7, &[0xd5; 160]);
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.1:4000", "10.0.0.2:6000", &voice(1)),
            &mut out,
        );
        callee_reinvite(
            &mut p,
            &mut out,
            t,
            2,
            &t38_sdp("10.0.0.2", 6000),
            &t38_sdp("10.0.0.1", 4000),
        );
        // UDPTL: seq_number 0x8008 (looks like RTP v2, PT 8), then IFP bytes.
        let mut udptl = vec![
            0x80, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        udptl.extend([0x06, 0x82, 0x1a, 0x22, 0x44].repeat(20));
        for k in 0..5u64 {
            for (src, dst) in [
                ("10.0.0.1:4000", "10.0.0.2:6000"),
                ("10.0.0.2:6000", "10.0.0.1:4000"),
            ] {
                p.frame(
                    LinkType::RAW,
                    t + Duration::from_millis(20 * (k + 1)),
                    &udp(src, dst, &udptl),
                    &mut out,
                );
            }
        }
        assert_eq!(
            out.rtp,
            vec![(key, Direction::Read, voice(1))],
            "fax forwarded as audio"
        );
        // Both parties moved: the fax's endpoints are no call's audio any
        // more, so its packets match no call at all.
        assert_eq!(p.stats().rtp_unmatched, 10);
        // The receiver hears of the fax phase (its record says so).
        assert_eq!(out.updated.len(), 1);
        assert!(out.updated[0].fax);
        assert!(
            out.updated[0].extensions(&[]).ends_with(":fax=1"),
            "{}",
            out.updated[0].extensions(&[])
        );
        // Back to audio.
        let back = Duration::from_secs(3);
        let offer = sdp("10.0.0.2", 6000, "8", "a=rtpmap:8 PCMA/8000\r\n");
        let answer = sdp("10.0.0.1", 4000, "8", "a=rtpmap:8 PCMA/8000\r\n");
        callee_reinvite(&mut p, &mut out, back, 3, &offer, &answer);
        p.frame(
            LinkType::RAW,
            back,
            &udp("10.0.0.1:4000", "10.0.0.2:6000", &voice(2)),
            &mut out,
        );
        assert_eq!(
            out.rtp.len(),
            2,
            "the audio after the fax was not forwarded"
        );
        assert_eq!(out.rtp[1], (key, Direction::Read, voice(2)));
    }

    /// Only the T.38 offer seen (its answer lost, or not yet come): the fax
    /// has begun, and its packets on the audio's 5-tuple, which the other
    /// party's SDP still calls audio, are dropped and counted.
    #[test]
    fn a_t38_offer_alone_stops_the_audio_on_the_same_ports() {
        let mut p = Pipeline::new(PipelineConfig::default());
        let mut out = Collect::default();
        call_setup(&mut p, &mut out, true);
        let t = Duration::from_secs(2);
        let reinvite = sip(
            "INVITE sip:1001@10.0.0.1 SIP/2.0",
            B_TAG,
            A,
            "2 INVITE",
            Some(&t38_sdp("10.0.0.2", 6000)),
        );
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.2:5060", "10.0.0.1:5060", &reinvite),
            &mut out,
        );
        let udptl = rtp(8, 0x8008, 0, 0, &[0x06, 0x82, 0x1a, 0x22]);
        for (src, dst) in [
            ("10.0.0.1:4000", "10.0.0.2:6000"),
            ("10.0.0.2:6000", "10.0.0.1:4000"),
        ] {
            p.frame(LinkType::RAW, t, &udp(src, dst, &udptl), &mut out);
        }
        assert!(out.rtp.is_empty(), "fax forwarded as audio: {:?}", out.rtp);
        assert_eq!(p.stats().fax_packets, 2);
    }

    #[test]
    fn a_reinvite_to_a_new_dynamic_codec_declares_it_to_the_output() {
        let mut p = Pipeline::new(PipelineConfig::default());
        let mut out = Collect::default();
        call_setup(&mut p, &mut out, true);
        assert_eq!(out.started.len(), 1);
        assert!(out.updated.is_empty());
        let key = out.started[0].key;
        // The caller moves the call to opus (as register-invite-reinvite-bye.pcap does).
        let t = Duration::from_secs(2);
        let offer = sdp("10.0.0.1", 4000, "96", "a=rtpmap:96 opus/48000/2\r\n");
        let reinvite = sip(
            "INVITE sip:1002@10.0.0.2 SIP/2.0",
            A,
            B_TAG,
            "2 INVITE",
            Some(&offer),
        );
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.1:5060", "10.0.0.2:5060", &reinvite),
            &mut out,
        );
        assert_eq!(out.updated.len(), 1);
        let update = &out.updated[0];
        assert_eq!(update.key, key);
        assert_eq!(
            update.extensions(&[]),
            "pt101=telephone-event/8000:pt96=opus/48000:call-id=abc%3A1@10.0.0.1"
        );
        // Its answer declares nothing new: no second update.
        let answer = sdp("10.0.0.2", 6000, "96", "a=rtpmap:96 opus/48000/2\r\n");
        let ok = sip("SIP/2.0 200 OK", A, B_TAG, "2 INVITE", Some(&answer));
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.2:5060", "10.0.0.1:5060", &ok),
            &mut out,
        );
        assert_eq!(out.updated.len(), 1);
        let opus = rtp(96, 10, 960, 7, &[0xfc, 0xff, 0xfe]);
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.1:4000", "10.0.0.2:6000", &opus),
            &mut out,
        );
        assert_eq!(out.rtp, vec![(key, Direction::Read, opus)]);
    }

    /// A ZRTP packet of `message` type (RFC 6189 section 5; CRC not checked).
    fn zrtp(message: &[u8; 8]) -> Vec<u8> {
        let mut packet = vec![0x10, 0, 0, 1];
        packet.extend_from_slice(b"ZRTP");
        packet.extend_from_slice(&7u32.to_be_bytes());
        packet.extend_from_slice(&[0x50, 0x5a, 0, 3]);
        packet.extend_from_slice(message);
        packet.extend_from_slice(&[0; 4]);
        packet
    }

    #[test]
    fn rtp_after_a_completed_zrtp_handshake_is_dropped_as_srtp() {
        let mut p = Pipeline::new(PipelineConfig::default());
        let mut out = Collect::default();
        call_setup(&mut p, &mut out, true);
        let key = out.started[0].key;
        let t = Duration::from_secs(2);
        let send = |p: &mut Pipeline, out: &mut Collect, src: &str, dst: &str, bytes: &[u8]| {
            p.frame(LinkType::RAW, t, &udp(src, dst, bytes), out);
        };
        let (a, b) = ("10.0.0.1:4000", "10.0.0.2:6000");
        let clear = rtp(8, 1, 160, 7, &[0xd5; 160]);
        send(&mut p, &mut out, a, b, &clear);
        // The handshake: nothing is recorded of it, and until its last
        // message the media is still in the clear.
        for message in [b"Hello   ", b"HelloACK", b"Commit  ", b"Confirm2"] {
            send(&mut p, &mut out, b, a, &zrtp(message));
        }
        let still_clear = rtp(8, 2, 320, 7, &[0xd5; 160]);
        send(&mut p, &mut out, a, b, &still_clear);
        send(&mut p, &mut out, a, b, &zrtp(b"Conf2ACK"));
        // SRTP: an RTP header with 160 bytes of ciphertext and a 4-byte tag.
        let srtp_a = rtp(8, 3, 480, 7, &[0x5a; 164]);
        let srtp_b = rtp(8, 70, 480, 9, &[0xa5; 164]);
        send(&mut p, &mut out, a, b, &srtp_a);
        send(&mut p, &mut out, b, a, &srtp_b);
        assert_eq!(
            out.rtp,
            vec![
                (key, Direction::Read, clear),
                (key, Direction::Read, still_clear)
            ]
        );
        assert_eq!(p.stats().zrtp, 5);
        assert_eq!(p.stats().rtp_encrypted, 2);
        assert_eq!(p.stats().udp_other, 0);
        // Media moved elsewhere by a re-INVITE, without ZRTP: in the clear.
        let moved = sdp("10.0.0.2", 6002, "8", "a=rtpmap:8 PCMA/8000\r\n");
        let reinvite = sip(
            "INVITE sip:1001@10.0.0.1 SIP/2.0",
            B_TAG,
            A,
            "1 INVITE",
            Some(&moved),
        );
        send(
            &mut p,
            &mut out,
            "10.0.0.2:5060",
            "10.0.0.1:5060",
            &reinvite,
        );
        let elsewhere = rtp(8, 4, 640, 7, &[0xd5; 160]);
        send(&mut p, &mut out, a, "10.0.0.2:6002", &elsewhere);
        assert_eq!(out.rtp.len(), 3, "{:?}", p.stats());
        assert_eq!(p.stats().rtp_encrypted, 2);
    }

    #[test]
    fn zrtp_is_never_rtp() {
        assert_eq!(zrtp_message(&zrtp(b"Conf2ACK")), Some(&b"Conf2ACK"[..]));
        assert!(RtpPacket::parse(&zrtp(b"Hello   ")).is_err());
        // An RTP packet that happens to carry "ZRTP" is not ZRTP.
        let mut fake = rtp(0, 1, 2, 3, &[0; 20]);
        fake[4..8].copy_from_slice(b"ZRTP");
        assert_eq!(zrtp_message(&fake), None);
        assert_eq!(zrtp_message(&zrtp(b"Conf2ACK")[..23]), None);
    }

    #[test]
    fn rtp_without_sip_keeps_the_packets_loss_parted_from_the_confirming_one() {
        let config = PipelineConfig {
            rtp_without_sip: true,
            ..PipelineConfig::default()
        };
        let mut p = Pipeline::new(config);
        let mut out = Collect::default();
        let t = Duration::from_secs(1);
        // As in rtpproxy_lost.a.rtp.pcap: 400, then 22 lost, then 423, 424.
        let packets: Vec<Vec<u8>> = [400u16, 423, 424]
            .iter()
            .map(|&seq| rtp(18, seq, u32::from(seq) * 80, 5, &[0x11; 10]))
            .collect();
        for packet in &packets {
            p.frame(
                LinkType::RAW,
                t,
                &udp("10.0.0.1:7000", "10.0.0.2:8000", packet),
                &mut out,
            );
        }
        assert_eq!(out.started.len(), 1);
        let key = out.started[0].key;
        let forwarded: Vec<_> = packets
            .into_iter()
            .map(|packet| (key, Direction::Read, packet))
            .collect();
        assert_eq!(out.rtp, forwarded);
        assert_eq!(p.stats().rtp_forwarded, 3);
        assert_eq!(p.stats().rtp_unmatched, 0);
        // Another SSRC on the flow starts over: one packet waits, no call.
        let mut p = Pipeline::new(PipelineConfig {
            rtp_without_sip: true,
            ..PipelineConfig::default()
        });
        let mut out = Collect::default();
        for (seq, ssrc) in [
            (1u16, 1u32),
            (2, 2),
            (40, 2),
            (80, 2),
            (120, 2),
            (160, 2),
            (200, 2),
        ] {
            let packet = rtp(0, seq, 0, ssrc, &[0; 160]);
            p.frame(
                LinkType::RAW,
                t,
                &udp("10.0.0.1:7000", "10.0.0.2:8000", &packet),
                &mut out,
            );
        }
        assert!(out.started.is_empty());
        // ...at most MAX_CANDIDATE_PACKETS of them: 160 and 200 and two before.
        let confirm = rtp(0, 201, 0, 2, &[0; 160]);
        p.frame(
            LinkType::RAW,
            t,
            &udp("10.0.0.1:7000", "10.0.0.2:8000", &confirm),
            &mut out,
        );
        let sequences: Vec<u16> = out
            .rtp
            .iter()
            .map(|(_, _, bytes)| RtpPacket::parse(bytes).unwrap().sequence)
            .collect();
        assert_eq!(sequences, [80, 120, 160, 200, 201]);
        assert_eq!(p.stats().rtp_unmatched, 3);
    }

    #[test]
    fn rtp_is_never_parsed_as_sip() {
        // An RTP payload full of "INVITE sip:" text is still RTP.
        let mut payload = b"INVITE sip:x SIP/2.0\r\n".to_vec();
        payload.resize(160, b' ');
        let packet = rtp(8, 1, 0, 1, &payload);
        assert!(!looks_like_sip(&packet));
        let mut p = Pipeline::new(PipelineConfig::default());
        let mut out = Collect::default();
        p.frame(
            LinkType::RAW,
            Duration::ZERO,
            &udp("10.0.0.1:4000", "10.0.0.2:6000", &packet),
            &mut out,
        );
        assert_eq!(p.stats().sip_malformed, 0);
        assert_eq!(p.stats().rtp_unmatched, 1);
    }
}
