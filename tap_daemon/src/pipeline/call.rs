//! One call as the pipeline holds it: whether it is recorded, which payload
//! types are its audio, the direction of each flow, repeats seen.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rst_proto::{Direction, RtpPacket};

use super::clean_party;
use super::sniff::is_rtcp_range;
use crate::sip::sdp::{static_payload_type, MediaKind};
use crate::sip::{CallInfo, MediaDesc};

/// One direction's recently forwarded packets, for spotting repeats.
#[derive(Debug)]
pub(super) struct Dedup {
    /// Per slot: SSRC, sequence number and the timestamp's low bits packed,
    /// so that a scan compares one word a slot.
    ids: [u64; DEDUP_SLOTS],
    /// Per slot: the whole timestamp, the payload's fingerprint, when seen.
    rest: [(u32, u64, Duration); DEDUP_SLOTS],
    /// How many of the filled slots hold a sequence number of each bucket
    /// ([`bucket`]): a packet whose bucket is empty is in no slot, and that
    /// is nearly every packet, told without a scan of the slots.
    buckets: [u8; DEDUP_BUCKETS],
    next: usize,
    filled: usize,
}

pub(super) const DEDUP_SLOTS: usize = 32;

/// Twice the slots: the last [`DEDUP_SLOTS`] packets of one stream, of
/// consecutive sequence numbers, leave the next one's bucket empty.
const DEDUP_BUCKETS: usize = 2 * DEDUP_SLOTS;

/// The bucket of a packed id: its sequence number's low bits.
#[inline]
fn bucket(id: u64) -> usize {
    (id >> 16) as usize % DEDUP_BUCKETS
}

impl Default for Dedup {
    fn default() -> Self {
        Dedup {
            ids: [0; DEDUP_SLOTS],
            rest: [(0, 0, Duration::ZERO); DEDUP_SLOTS],
            buckets: [0; DEDUP_BUCKETS],
            next: 0,
            filled: 0,
        }
    }
}

impl Dedup {
    /// True if this packet was already seen within `window`; remembers it
    /// otherwise. Inlined into the pipeline's RTP path, like the route
    /// cache's hit: it runs once for every packet forwarded.
    #[inline]
    pub(super) fn seen(&mut self, packet: &RtpPacket<'_>, now: Duration, window: Duration) -> bool {
        let id = u64::from(packet.ssrc) << 32
            | u64::from(packet.sequence) << 16
            | u64::from(packet.timestamp & 0xffff);
        let hash = fingerprint(packet.payload);
        let repeat = self.buckets[bucket(id)] != 0
            && self.ids[..self.filled].iter().zip(&self.rest).any(
                |(&slot, &(timestamp, h, at))| {
                    slot == id
                        && (timestamp, h) == (packet.timestamp, hash)
                        && now.saturating_sub(at) <= window
                        && at.saturating_sub(now) <= window
                },
            );
        if !repeat {
            if self.filled == DEDUP_SLOTS {
                self.buckets[bucket(self.ids[self.next])] -= 1;
            } else {
                self.filled += 1;
            }
            self.buckets[bucket(id)] += 1;
            self.ids[self.next] = id;
            self.rest[self.next] = (packet.timestamp, hash, now);
            self.next = (self.next + 1) % DEDUP_SLOTS;
        }
        repeat
    }
}

/// A payload's fingerprint for [`Dedup`]. A repeat already has the packet's
/// SSRC, sequence number and timestamp, seen within the window; the
/// fingerprint only has to tell the same payload from another one under
/// the same header (two senders that chose one SSRC). So instead of a hash
/// that mixes every byte in turn (foldhash was half of forwarding a
/// packet), it adds up the payload's eight-byte words, which the compiler
/// does several at a time, and mixes the sum with the length and the last
/// few bytes: any change to a byte changes it; only the same words in
/// another order would not. Fixed: a fingerprint is only compared within
/// the process.
#[inline]
pub(super) fn fingerprint(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mix = |h: u64, word: u64| (h ^ word).wrapping_mul(K).rotate_left(29);
    let words = bytes.chunks_exact(8);
    let tail = words
        .remainder()
        .iter()
        .fold(0u64, |w, &b| w << 8 | u64::from(b));
    let sum = words
        .map(|w| <[u8; 8]>::try_from(w).map_or(0, u64::from_le_bytes))
        .fold(0u64, u64::wrapping_add);
    mix(mix(mix(0, bytes.len() as u64), sum), tail)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recording {
    /// Known, not yet started (unanswered, no audio yet).
    Pending,
    Started,
    /// The filter said no.
    Refused,
}

/// A pair of endpoints in a fixed order, so both directions find one entry.
pub(super) type FlowPair = (SocketAddr, SocketAddr);

pub(super) fn pair(a: SocketAddr, b: SocketAddr) -> FlowPair {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

#[derive(Debug)]
pub(super) struct Call {
    pub(super) recording: Recording,
    /// SIP calls: what the tracker said at the start.
    pub(super) info: Option<CallInfo>,
    /// Payload types forwarded (audio per the SDP, and telephone-event).
    pub(super) audio: [bool; 128],
    /// The clock of the call's RTP timestamps, once its SDP (or first
    /// packet) said: see [`super::CallStart::clock_rate`]. The answer's
    /// codec until the call starts, then fixed: the receiver's stream
    /// counts its media clock in one rate.
    pub(super) clock_rate: Option<u32>,
    /// Payload types to declare in the INV.
    pub(super) declared: Vec<(u8, String, u32)>,
    /// Addresses for the network filter.
    pub(super) addresses: Vec<IpAddr>,
    pub(super) dedup: [Dedup; 2],
    /// The flow each direction's audio comes from, see [`Call::direction`].
    pub(super) owners: [Option<Owner>; 2],
    pub(super) last_packet: Duration,
    /// When the tracker was last told of a packet ([`super::TOUCH_EVERY`]).
    pub(super) touched: Duration,
    /// Calls made of RTP alone: their flow pair and the first packet's source.
    pub(super) sipless: Option<(FlowPair, SocketAddr)>,
    /// Media flow pairs whose ZRTP handshake completed: SRTP from then on.
    pub(super) encrypted: Vec<FlowPair>,
    /// The SDP made the audio SRTP (SDES or DTLS): all of it is ciphertext.
    pub(super) srtp: bool,
    /// SIP ended the call: its RTP is still forwarded for the tracker's
    /// `rtp_linger` (its end is due in [`super::Core::lingering`]).
    pub(super) sip_ended: bool,
    /// A party's current SDP has fax (T.38 `m=image`) and no audio: nothing
    /// of the call's media is audio now, whatever addresses it uses.
    pub(super) fax: bool,
    /// The call was in a fax phase at some point.
    pub(super) had_fax: bool,
}

/// Most flow pairs a call remembers as encrypted; a call has one or two
/// media flows, a few more after re-INVITEs.
pub(super) const MAX_ENCRYPTED_FLOWS: usize = 16;

/// The flow (and SSRC) a call direction's audio currently comes from.
#[derive(Debug, Clone, Copy)]
pub(super) struct Owner {
    pub(super) flow: (SocketAddr, SocketAddr),
    pub(super) ssrc: u32,
    pub(super) last: Duration,
}

/// How long a direction's flow stays its owner without a packet.
pub(super) const OWNER_IDLE: Duration = Duration::from_secs(1);

impl Owner {
    /// Whether the owner had a packet within [`OWNER_IDLE`] of `now`.
    #[inline]
    fn is_active(&self, now: Duration) -> bool {
        now.saturating_sub(self.last) < OWNER_IDLE && self.last.saturating_sub(now) < OWNER_IDLE
    }
}

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
    ///
    /// Inlined into the pipeline's RTP path (see [`super::route`]): the
    /// common case, a flow that keeps its direction, is a few compares; the
    /// rest is [`Call::redirect`], out of line.
    #[inline]
    pub(super) fn direction(
        &mut self,
        classified: Direction,
        (src, dst): (&SocketAddr, &SocketAddr),
        ssrc: u32,
        now: Duration,
        swapped: &mut u64,
    ) -> Direction {
        // Nearly every packet: its flow already owns the direction the
        // tracker said, and stays its owner.
        if let Some(owner) = &mut self.owners[classified as usize] {
            if owner.flow.0 == *src && owner.flow.1 == *dst && owner.is_active(now) {
                owner.ssrc = ssrc;
                owner.last = now;
                return classified;
            }
        }
        self.redirect(classified, (src, dst), ssrc, now, swapped)
    }

    /// [`Call::direction`] for a flow that does not own the direction the
    /// tracker said, or whose ownership lapsed.
    #[inline(never)]
    fn redirect(
        &mut self,
        classified: Direction,
        (src, dst): (&SocketAddr, &SocketAddr),
        ssrc: u32,
        now: Duration,
        swapped: &mut u64,
    ) -> Direction {
        let of_flow = |o: &Owner| o.flow.0 == *src && o.flow.1 == *dst;
        // The owners are looked at in place: copying one out (two socket
        // addresses) at each question cost more than the rest together, on
        // the one packet in ten that comes here.
        let owners = &self.owners;
        let active = |d: Direction| owners[d as usize].as_ref().filter(|o| o.is_active(now));
        let other = match classified {
            Direction::Read => Direction::Write,
            Direction::Write => Direction::Read,
        };
        let direction = match active(classified) {
            Some(owner)
                if !of_flow(owner) && owner.ssrc != ssrc && active(other).map_or(true, of_flow) =>
            {
                *swapped += 1;
                other
            }
            _ => classified,
        };
        let copy = active(direction).is_some_and(|o| !of_flow(o) && o.ssrc == ssrc);
        // A copy from a second tap point leaves the first flow the owner.
        if !copy {
            self.owners[direction as usize] = Some(Owner {
                flow: (*src, *dst),
                ssrc,
                last: now,
            });
        }
        direction
    }

    pub(super) fn new(info: Option<CallInfo>, now: Duration) -> Call {
        Call {
            recording: Recording::Pending,
            info,
            audio: [false; 128],
            clock_rate: None,
            declared: Vec::new(),
            addresses: Vec::new(),
            dedup: Default::default(),
            owners: [None, None],
            last_packet: now,
            touched: Duration::ZERO,
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
    pub(super) fn media(&mut self, caller: Option<&MediaDesc>, callee: Option<&MediaDesc>) -> bool {
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
        // The first audio codec of the answer, else of the offer.
        let mut clock = None;
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
                let event = encoding
                    .as_deref()
                    .is_some_and(|e| e.eq_ignore_ascii_case("telephone-event"));
                if clock.is_none() && !event && desc.telephone_event != Some(pt) {
                    clock = mapping
                        .clock_rate
                        .or_else(|| static_payload_type(pt).map(|(_, clock)| clock))
                        .filter(|clock| *clock > 0);
                }
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
        // Until the call starts: the receiver's stream counts in one clock.
        if self.recording != Recording::Started && clock.is_some() {
            self.clock_rate = clock;
        }
        self.declared.len() > declared_before || first_fax
    }
}

/// A call's caller, callee and Call-ID for the INV: from SIP, or for a call
/// of RTP alone its first packet's source and the other endpoint.
pub(super) fn parties(call: &Call) -> Option<(String, String, Option<String>)> {
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
pub(super) fn endpoint_label(addr: SocketAddr) -> String {
    format!("{}-{}", addr.ip(), addr.port())
}
