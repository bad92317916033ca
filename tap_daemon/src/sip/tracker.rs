//! Following calls from the SIP seen on the wire, and mapping RTP flows to
//! them.
//!
//! The tracker is a sans-IO state machine: [`Tracker::handle`] takes one
//! parsed SIP message with the time it was seen and the addresses it
//! travelled between, and returns what changed ([`CallEvent`]s);
//! [`Tracker::handle_timeout`] expires what went quiet; [`Tracker::classify`]
//! answers, for an RTP packet's source and destination, which call and which
//! direction it belongs to. Time is whatever the caller says (capture
//! timestamps, or a monotonic clock live), so replaying a capture behaves
//! exactly like seeing it live.
//!
//! A dialog is keyed by Call-ID alone, not by the full (Call-ID, from-tag,
//! to-tag) triple: a tap sees the same INVITE on both sides of a proxy (same
//! Call-ID, same tags), and forked early dialogs end in one call anyway.
//! Caller and callee are the From and To of the first INVITE; which side sent
//! a later message is told by its From tag, so a BYE or re-INVITE from the
//! callee (with From and To swapped) is understood.
//!
//! Every SDP a party sends says where *that party* receives media; offer or
//! answer does not matter for that. So each side's last SDP gives its
//! endpoint, and a packet sent to the caller's endpoint is callee-to-caller
//! (`W`), one sent to the callee's endpoint caller-to-callee (`R`).
//!
//! State is bounded: at most [`TrackerConfig::max_dialogs`] dialogs; when full,
//! ended dialogs kept for retransmissions go first, then the oldest
//! unanswered one (an INVITE flood never displaces answered calls), and only
//! when every slot holds an answered call is a new INVITE refused.

use std::collections::VecDeque;

use crate::FastMap;
use std::net::SocketAddr;
use std::time::Duration;

use rst_proto::Direction;

use super::call_key::CallKey;
use super::message::{Method, NameAddr, SipMessage, StartLine};
use super::sdp::{MediaDirection, MediaKind, Sdp};

/// Limits and timeouts of a [`Tracker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerConfig {
    /// Most dialogs held at once, ended ones kept for `linger` included.
    pub max_dialogs: usize,
    /// An unanswered dialog with no SIP for this long ends as `Timeout`.
    /// RFC 3261 Timer C (a proxy's INVITE timeout) is over 3 minutes.
    pub setup_timeout: Duration,
    /// An answered dialog with neither SIP nor [`Tracker::touch`] (its RTP)
    /// for this long ends as `Timeout`: a BYE the tap never saw.
    pub idle_timeout: Duration,
    /// How long an ended dialog is remembered, so that retransmitted BYEs,
    /// late responses and straggling INVITEs do not start a new call.
    /// 32 s is RFC 3261 Timer J/H (64*T1).
    pub linger: Duration,
    /// RTP still matches a dialog that SIP ended (BYE, CANCEL) for this long
    /// of capture time: the last words of a call often arrive after its BYE,
    /// which travels another way.
    pub rtp_linger: Duration,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            max_dialogs: 10_000,
            setup_timeout: Duration::from_secs(180),
            idle_timeout: Duration::from_secs(60),
            linger: Duration::from_secs(32),
            rtp_linger: Duration::from_millis(300),
        }
    }
}

/// Which party of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The From of the first INVITE.
    Caller,
    /// The To of the first INVITE.
    Callee,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Caller => Side::Callee,
            Side::Callee => Side::Caller,
        }
    }
}

/// What a new call is known by: enough for a filter to decide on (numbers,
/// addresses) and for the recording to name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallInfo {
    pub key: CallKey,
    /// The raw Call-ID, for the record.
    pub call_id: String,
    /// The From of the first INVITE seen.
    pub caller: NameAddr<'static>,
    /// The To of the first INVITE seen.
    pub callee: NameAddr<'static>,
    /// Where that INVITE came from and went to (signalling, not media).
    pub caller_signalling: SocketAddr,
    pub callee_signalling: SocketAddr,
    /// When that INVITE was seen.
    pub started: Duration,
}

/// What one payload type number carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PayloadMapping {
    pub payload_type: u8,
    /// Encoding name as the SDP wrote it (or RFC 3551's for static types);
    /// `None` for a dynamic type with no rtpmap.
    pub encoding: Option<String>,
    pub clock_rate: Option<u32>,
}

/// One party's media, from the last SDP it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDesc {
    /// Where this party receives audio. `None` when its last SDP has no
    /// active audio stream (a switch to T.38 fax, say): then nothing sent
    /// there is audio, even on the port that was audio before.
    pub audio: Option<SocketAddr>,
    /// The audio payload types it offered or accepted, in its order.
    pub payload_types: Vec<PayloadMapping>,
    /// The RFC 4733 telephone-event payload type, if any.
    pub telephone_event: Option<u8>,
    pub direction: MediaDirection,
    /// Non-audio streams (video, T.38 image) and where they go, so that a
    /// capture can recognise and skip them.
    pub non_audio: Vec<(MediaKind, SocketAddr)>,
    /// Its audio is SRTP ([`crate::sip::sdp::Media::is_encrypted`]).
    pub encrypted: bool,
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// A BYE from either side.
    Bye,
    /// A CANCEL before the call was answered.
    Cancelled,
    /// A final failure response (3xx to 6xx) to the INVITE.
    Failed(u16),
    /// No SIP (and no RTP touch) within the configured timeout.
    Timeout,
    /// Pushed out to make room under `max_dialogs`.
    Evicted,
}

impl EndReason {
    /// A short stable name for counters and records.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Bye => "bye",
            EndReason::Cancelled => "cancel",
            EndReason::Failed(_) => "failed",
            EndReason::Timeout => "timeout",
            EndReason::Evicted => "evicted",
        }
    }
}

/// What a message (or the passing of time) changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// The first INVITE of a Call-ID.
    CallStarted(CallInfo),
    /// The first 2xx to the INVITE.
    CallAnswered {
        key: CallKey,
        at: Duration,
    },
    /// Either party's media changed (offer, answer, early media, re-INVITE,
    /// UPDATE). Each side is `None` until that party has sent an SDP.
    MediaUpdated {
        key: CallKey,
        caller: Option<MediaDesc>,
        callee: Option<MediaDesc>,
    },
    CallEnded {
        key: CallKey,
        reason: EndReason,
    },
}

/// Counters of what the tracker saw and refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Messages handled.
    pub messages: u64,
    /// Messages outside any INVITE dialog (REGISTER, OPTIONS, SUBSCRIBE...,
    /// or for a dialog already forgotten).
    pub not_in_call: u64,
    /// SDP bodies that did not parse (the message was otherwise used).
    pub sdp_errors: u64,
    /// INVITEs refused because every slot held an answered call.
    pub refused: u64,
    /// Unanswered dialogs evicted to make room.
    pub evicted: u64,
    /// Dialogs ended by timeout.
    pub timed_out: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// INVITE sent, no response with a To tag yet.
    Calling,
    /// A provisional response with a To tag.
    Early,
    /// A 2xx seen.
    Confirmed,
}

/// Old endpoints of a side kept after a re-INVITE moves media, so packets
/// still in flight to the old address are not lost.
const OLD_ENDPOINTS: usize = 4;

#[derive(Debug)]
struct Dialog {
    info: CallInfo,
    caller_tag: Option<String>,
    callee_tag: Option<String>,
    state: State,
    invite_cseq: u32,
    caller_media: Option<MediaDesc>,
    callee_media: Option<MediaDesc>,
    old_endpoints: VecDeque<(Side, SocketAddr)>,
    last_activity: Duration,
    ended_at: Option<Duration>,
    /// Tracker-wide order of the last media change: the tie-break when two
    /// calls claim one endpoint (a port reused by a later call, B2BUA legs).
    media_seq: u64,
}

impl Dialog {
    fn media(&self, side: Side) -> Option<&MediaDesc> {
        match side {
            Side::Caller => self.caller_media.as_ref(),
            Side::Callee => self.callee_media.as_ref(),
        }
    }

    /// Every endpoint that maps to this dialog: (side, address, current?).
    fn endpoints(&self) -> impl Iterator<Item = (Side, SocketAddr, bool)> + '_ {
        let current = [Side::Caller, Side::Callee]
            .into_iter()
            .filter_map(|s| Some((s, self.media(s)?.audio?, true)));
        let old = self.old_endpoints.iter().map(|&(s, a)| (s, a, false));
        current.chain(old)
    }

    /// Which party sent a request, by its From tag (the caller's tag was the
    /// From tag of the first INVITE); without tags, by the From URI.
    fn request_sender(&self, msg: &SipMessage<'_>) -> Side {
        match (&msg.from.tag, &self.caller_tag, &self.callee_tag) {
            (Some(t), Some(c), _) if t == c => Side::Caller,
            (Some(t), _, Some(c)) if t == c => Side::Callee,
            (Some(_), Some(_), _) => Side::Callee,
            _ if msg.from.uri == self.info.caller.uri => Side::Caller,
            _ => Side::Callee,
        }
    }
}

/// The call tracker. See the module documentation.
#[derive(Debug)]
pub struct Tracker {
    config: TrackerConfig,
    dialogs: FastMap<CallKey, Dialog>,
    /// Call-ID -> key of every dialog held: a message of a known call finds
    /// it without the SHA-1 of [`CallKey::from_call_id`].
    keys: FastMap<String, CallKey>,
    /// Audio endpoint -> dialogs and the side that receives there.
    endpoints: FastMap<SocketAddr, Vec<(CallKey, Side)>>,
    /// Unanswered dialogs in creation order (stale entries skipped lazily).
    unanswered: VecDeque<CallKey>,
    /// Ended dialogs in end order (stale entries skipped lazily).
    ended: VecDeque<CallKey>,
    media_seq: u64,
    /// Bumped whenever [`Tracker::classify`]'s answer may change other than
    /// by the passing of time: a dialog added, removed or ended, a party's
    /// media changed. Callers caching answers compare it ([`Tracker::generation`]).
    generation: u64,
    stats: TrackerStats,
}

/// [`Tracker::classify_until`]'s answer and how long it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    /// The call and direction, as [`Tracker::classify`] gives them.
    pub call: Option<(CallKey, Direction)>,
    /// While [`Tracker::generation`] stays the same, the answer holds from
    /// the `now` it was asked at until (not including) this capture time:
    /// the end of the `rtp_linger` of an ended dialog it took into account.
    /// `None`: no such end.
    pub until: Option<Duration>,
}

impl Tracker {
    pub fn new(config: TrackerConfig) -> Tracker {
        Tracker {
            config,
            dialogs: FastMap::default(),
            keys: FastMap::default(),
            endpoints: FastMap::default(),
            unanswered: VecDeque::new(),
            ended: VecDeque::new(),
            media_seq: 0,
            generation: 0,
            stats: TrackerStats::default(),
        }
    }

    /// See [`Classified`]: changes whenever the dialogs or their media do.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn stats(&self) -> &TrackerStats {
        &self.stats
    }

    /// Dialogs held, ended ones still lingering included.
    pub fn len(&self) -> usize {
        self.dialogs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dialogs.is_empty()
    }

    /// The calls in progress (not ended).
    pub fn calls(&self) -> impl Iterator<Item = &CallInfo> + '_ {
        self.dialogs
            .values()
            .filter(|d| d.ended_at.is_none())
            .map(|d| &d.info)
    }

    /// A call's start information, while it is held.
    pub fn call(&self, key: CallKey) -> Option<&CallInfo> {
        self.dialogs.get(&key).map(|d| &d.info)
    }

    /// A party's current media, while the call is held.
    pub fn media(&self, key: CallKey, side: Side) -> Option<&MediaDesc> {
        self.dialogs.get(&key)?.media(side)
    }

    /// Handles one SIP message seen at `now` travelling from `src` to `dst`.
    pub fn handle(
        &mut self,
        now: Duration,
        src: SocketAddr,
        dst: SocketAddr,
        msg: &SipMessage<'_>,
    ) -> Vec<CallEvent> {
        self.stats.messages += 1;
        let mut events = Vec::new();
        let Some(&key) = self.keys.get(msg.call_id.as_ref()) else {
            // Not a call held (a key held under another Call-ID is another
            // call's, whose key this one's collides with). Only an INVITE
            // can start one: the SHA-1 of the key is not worked out for the
            // rest (a third of the messages in the benchmark's captures).
            if msg.method() != Some(&Method::Invite) {
                self.stats.not_in_call += 1;
                return events;
            }
            let key = CallKey::from_call_id(&msg.call_id);
            if self.dialogs.contains_key(&key) {
                self.stats.not_in_call += 1;
            } else {
                self.start(now, src, dst, key, msg, &mut events);
            }
            return events;
        };
        let Some(dialog) = self.dialogs.get_mut(&key) else {
            return events;
        };
        if dialog.ended_at.is_some() {
            // Retransmissions and late responses of a finished call.
            return events;
        }
        dialog.last_activity = now;
        match &msg.start {
            StartLine::Request { method, .. } => self.request(now, key, method, msg, &mut events),
            StartLine::Response { code, .. } => self.response(now, key, *code, msg, &mut events),
        }
        events
    }

    /// Marks a call as alive at `now` (call it for the call's RTP), so an
    /// answered call whose BYE is far away does not time out.
    pub fn touch(&mut self, key: CallKey, now: Duration) {
        if let Some(d) = self.dialogs.get_mut(&key) {
            if d.ended_at.is_none() && now > d.last_activity {
                d.last_activity = now;
            }
        }
    }

    /// Ends dialogs idle past their timeout and forgets ended ones past
    /// `linger`. Call it about once a second; it walks every dialog.
    pub fn handle_timeout(&mut self, now: Duration) -> Vec<CallEvent> {
        let mut events = Vec::new();
        let mut forget = Vec::new();
        let mut expire = Vec::new();
        for (key, d) in &self.dialogs {
            match d.ended_at {
                Some(at) if now.saturating_sub(at) >= self.config.linger => forget.push(*key),
                Some(_) => {}
                None => {
                    let limit = match d.state {
                        State::Confirmed => self.config.idle_timeout,
                        State::Calling | State::Early => self.config.setup_timeout,
                    };
                    if now.saturating_sub(d.last_activity) >= limit {
                        expire.push(*key);
                    }
                }
            }
        }
        for key in expire {
            self.stats.timed_out += 1;
            self.end(now, key, EndReason::Timeout, &mut events);
        }
        for key in forget {
            self.remove(key);
        }
        self.compact_queues();
        events
    }

    /// Drops stale queue entries so the queues stay within the dialog bound
    /// (entries are removed lazily; without this, a tracker whose driver
    /// never calls `handle_timeout` would grow one entry per call).
    fn compact_queues(&mut self) {
        let dialogs = &self.dialogs;
        self.unanswered.retain(|k| {
            dialogs
                .get(k)
                .is_some_and(|d| d.ended_at.is_none() && d.state != State::Confirmed)
        });
        self.ended
            .retain(|k| dialogs.get(k).is_some_and(|d| d.ended_at.is_some()));
    }

    /// The call and direction of an RTP packet from `src` to `dst`: `R` if
    /// it goes to the callee's endpoint (or, failing that, comes from the
    /// caller's), `W` the other way round. The destination decides first
    /// because NAT rewrites sources, not the addresses SDP announced as
    /// receive endpoints. Only audio endpoints of calls not ended match, and
    /// those of calls ended less than `rtp_linger` before `now`, after every
    /// call in progress (a new call on the same ports wins).
    pub fn classify(
        &self,
        now: Duration,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Option<(CallKey, Direction)> {
        self.classify_until(now, src, dst).call
    }

    /// [`Tracker::classify`], and until when its answer holds for the same
    /// flow, so that a caller can keep it per flow instead of asking again
    /// for every packet.
    pub fn classify_until(&self, now: Duration, src: SocketAddr, dst: SocketAddr) -> Classified {
        // In progress, score, current endpoint, media order: higher is better.
        type Rank = (bool, u8, bool, u64);
        let mut best: Option<(Rank, CallKey, Direction)> = None;
        let linger = self.config.rtp_linger;
        // The earliest end of an ended dialog's linger that counted: from
        // then on the answer may be another. Dialogs already past theirs
        // stay out as time goes forward.
        let mut until: Option<Duration> = None;
        // Every RTP packet comes here: one look-up per address and one per
        // dialog considered.
        let mut consider = |key: CallKey, side: Side, addr: SocketAddr, direction, score: u8| {
            let Some(d) = self.dialogs.get(&key) else {
                return;
            };
            if let Some(ended) = d.ended_at {
                if now.saturating_sub(ended) >= linger {
                    return;
                }
                if let Some(end) = ended.checked_add(linger) {
                    until = Some(until.map_or(end, |u| u.min(end)));
                }
            }
            let current = d.media(side).is_some_and(|m| m.audio == Some(addr));
            let rank = (d.ended_at.is_none(), score, current, d.media_seq);
            if best.as_ref().map_or(true, |(r, _, _)| rank > *r) {
                best = Some((rank, key, direction));
            }
        };
        let from = self.endpoints.get(&src);
        if let Some(list) = self.endpoints.get(&dst) {
            for &(key, side) in list {
                // Sent to the callee: caller to callee, R.
                let direction = match side {
                    Side::Callee => Direction::Read,
                    Side::Caller => Direction::Write,
                };
                let from_other = from.is_some_and(|from| {
                    from.iter()
                        .find(|(k, _)| *k == key)
                        .is_some_and(|&(_, s)| s == side.other())
                });
                consider(key, side, dst, direction, if from_other { 3 } else { 2 });
            }
        }
        if let Some(list) = from {
            for &(key, side) in list {
                let direction = match side {
                    Side::Caller => Direction::Read,
                    Side::Callee => Direction::Write,
                };
                consider(key, side, src, direction, 1);
            }
        }
        Classified {
            call: best.map(|(_, key, direction)| (key, direction)),
            until,
        }
    }

    fn start(
        &mut self,
        now: Duration,
        src: SocketAddr,
        dst: SocketAddr,
        key: CallKey,
        msg: &SipMessage<'_>,
        events: &mut Vec<CallEvent>,
    ) {
        if self.dialogs.len() >= self.config.max_dialogs && !self.make_room(now, events) {
            self.stats.refused += 1;
            return;
        }
        let info = CallInfo {
            key,
            call_id: msg.call_id.to_string(),
            caller: msg.from.clone().into_owned(),
            callee: msg.to.clone().into_owned(),
            caller_signalling: src,
            callee_signalling: dst,
            started: now,
        };
        // An INVITE that already has a To tag is a re-INVITE of a call whose
        // start the tap missed; it is followed from here on.
        let dialog = Dialog {
            info: info.clone(),
            caller_tag: msg.from.tag.as_deref().map(str::to_owned),
            callee_tag: msg.to.tag.as_deref().map(str::to_owned),
            state: State::Calling,
            invite_cseq: msg.cseq.number,
            caller_media: None,
            callee_media: None,
            old_endpoints: VecDeque::new(),
            last_activity: now,
            ended_at: None,
            media_seq: 0,
        };
        self.dialogs.insert(key, dialog);
        self.keys.insert(msg.call_id.to_string(), key);
        self.generation += 1;
        self.unanswered.push_back(key);
        let bound = 2 * self.config.max_dialogs + 16;
        if self.unanswered.len() > bound || self.ended.len() > bound {
            self.compact_queues();
        }
        events.push(CallEvent::CallStarted(info));
        self.sdp(key, Side::Caller, msg, events);
    }

    /// Frees one slot: the oldest ended dialog, else the oldest unanswered
    /// one. False when every dialog is an answered call in progress.
    fn make_room(&mut self, now: Duration, events: &mut Vec<CallEvent>) -> bool {
        while let Some(key) = self.ended.pop_front() {
            if self.dialogs.get(&key).is_some_and(|d| d.ended_at.is_some()) {
                self.remove(key);
                return true;
            }
        }
        while let Some(key) = self.unanswered.pop_front() {
            let unanswered = self
                .dialogs
                .get(&key)
                .is_some_and(|d| d.ended_at.is_none() && d.state != State::Confirmed);
            if unanswered {
                self.stats.evicted += 1;
                self.end(now, key, EndReason::Evicted, events);
                self.ended.retain(|k| *k != key);
                self.remove(key);
                return true;
            }
        }
        false
    }

    fn request(
        &mut self,
        now: Duration,
        key: CallKey,
        method: &Method,
        msg: &SipMessage<'_>,
        events: &mut Vec<CallEvent>,
    ) {
        let Some(dialog) = self.dialogs.get_mut(&key) else {
            return;
        };
        let sender = dialog.request_sender(msg);
        match method {
            Method::Bye => self.end(now, key, EndReason::Bye, events),
            Method::Cancel => {
                if dialog.state != State::Confirmed {
                    self.end(now, key, EndReason::Cancelled, events);
                }
            }
            Method::Invite => {
                // A higher CSeq is a new transaction (re-INVITE, or the
                // retry after a 401/407); the same CSeq is a retransmission
                // or the same INVITE seen again on the far side of a proxy.
                if msg.cseq.number > dialog.invite_cseq || sender == Side::Callee {
                    dialog.invite_cseq = msg.cseq.number;
                }
                self.sdp(key, sender, msg, events);
            }
            // ACK carries the answer of a delayed offer; UPDATE and PRACK
            // may carry offers and answers (RFC 3311, RFC 3262).
            _ => self.sdp(key, sender, msg, events),
        }
    }

    fn response(
        &mut self,
        now: Duration,
        key: CallKey,
        code: u16,
        msg: &SipMessage<'_>,
        events: &mut Vec<CallEvent>,
    ) {
        let Some(dialog) = self.dialogs.get_mut(&key) else {
            return;
        };
        // The response comes from the party the request went to.
        let responder = dialog.request_sender(msg).other();
        if msg.cseq.method != Method::Invite {
            // 200 to UPDATE/PRACK may carry an answer.
            if (200..300).contains(&code) {
                self.sdp(key, responder, msg, events);
            }
            return;
        }
        match code {
            100 => {}
            101..=199 => {
                if dialog.state == State::Calling && msg.to.tag.is_some() {
                    dialog.state = State::Early;
                }
                // 183 Session Progress with SDP: early media.
                self.sdp(key, responder, msg, events);
            }
            200..=299 => {
                if dialog.state != State::Confirmed {
                    dialog.state = State::Confirmed;
                    if dialog.callee_tag.is_none() {
                        dialog.callee_tag = msg.to.tag.as_deref().map(str::to_owned);
                    }
                    events.push(CallEvent::CallAnswered { key, at: now });
                }
                self.sdp(key, responder, msg, events);
            }
            _ => {
                // A failed re-INVITE leaves the call as it was; a failure of
                // the initial INVITE ends it, except the challenges and
                // "try again" answers after which the caller retries with
                // the same Call-ID (401, 407, 422 interval too brief, 491
                // request pending).
                let retry = matches!(code, 401 | 407 | 422 | 491);
                if dialog.state != State::Confirmed && !retry {
                    self.end(now, key, EndReason::Failed(code), events);
                }
            }
        }
    }

    /// Applies the SDP of a message, if any, as `side`'s media.
    fn sdp(&mut self, key: CallKey, side: Side, msg: &SipMessage<'_>, events: &mut Vec<CallEvent>) {
        let Some(body) = msg.sdp_body() else {
            return;
        };
        let sdp = match Sdp::parse(body) {
            Ok(sdp) => sdp,
            Err(_) => {
                self.stats.sdp_errors += 1;
                return;
            }
        };
        let Some(dialog) = self.dialogs.get_mut(&key) else {
            return;
        };
        // Compared with the media in place: a copy of it for each SDP
        // (retransmissions and the far side of a proxy repeat most) cost
        // more than the comparison.
        let previous = dialog.media(side);
        let desc = media_desc(&sdp, previous);
        if previous == Some(&desc) {
            return;
        }
        let old_audio = previous.and_then(|m| m.audio);
        if desc.audio.is_none() {
            // No audio any more (T.38 switch): nothing at the old ports is
            // audio now, even if the fax reuses them.
            dialog.old_endpoints.retain(|(s, _)| *s != side);
        } else if let Some(old) = old_audio.filter(|old| Some(*old) != desc.audio) {
            dialog.old_endpoints.retain(|e| *e != (side, old));
            dialog.old_endpoints.push_back((side, old));
            while dialog.old_endpoints.len() > OLD_ENDPOINTS {
                dialog.old_endpoints.pop_front();
            }
        }
        match side {
            Side::Caller => dialog.caller_media = Some(desc),
            Side::Callee => dialog.callee_media = Some(desc),
        }
        self.media_seq += 1;
        dialog.media_seq = self.media_seq;
        self.generation += 1;
        events.push(CallEvent::MediaUpdated {
            key,
            caller: dialog.caller_media.clone(),
            callee: dialog.callee_media.clone(),
        });
        self.reindex(key);
    }

    /// Rebuilds the endpoint index entries of one dialog.
    fn reindex(&mut self, key: CallKey) {
        self.unindex(key);
        let Some(dialog) = self.dialogs.get(&key) else {
            return;
        };
        for (side, addr, _) in dialog.endpoints() {
            let list = self.endpoints.entry(addr).or_default();
            if !list.contains(&(key, side)) {
                list.push((key, side));
            }
        }
    }

    fn unindex(&mut self, key: CallKey) {
        self.endpoints.retain(|_, list| {
            list.retain(|(k, _)| *k != key);
            !list.is_empty()
        });
    }

    fn end(&mut self, now: Duration, key: CallKey, reason: EndReason, events: &mut Vec<CallEvent>) {
        let Some(dialog) = self.dialogs.get_mut(&key) else {
            return;
        };
        if dialog.ended_at.is_some() {
            return;
        }
        dialog.ended_at = Some(now);
        self.generation += 1;
        self.ended.push_back(key);
        events.push(CallEvent::CallEnded { key, reason });
    }

    fn remove(&mut self, key: CallKey) {
        if let Some(dialog) = self.dialogs.remove(&key) {
            self.keys.remove(&dialog.info.call_id);
            self.generation += 1;
            for (_, addr, _) in dialog.endpoints() {
                if let Some(list) = self.endpoints.get_mut(&addr) {
                    list.retain(|(k, _)| *k != key);
                    if list.is_empty() {
                        self.endpoints.remove(&addr);
                    }
                }
            }
        }
    }
}

/// A party's media from its SDP. A hold to `0.0.0.0` keeps the previous
/// endpoint (the port is still the one the call used) and marks it inactive.
fn media_desc(sdp: &Sdp<'_>, previous: Option<&MediaDesc>) -> MediaDesc {
    let non_audio = sdp
        .media
        .iter()
        .filter(|m| m.kind != MediaKind::Audio)
        .filter_map(|m| Some((m.kind.clone(), sdp.endpoint(m)?)))
        .collect();
    let Some(audio) = sdp.audio() else {
        return MediaDesc {
            audio: None,
            payload_types: Vec::new(),
            telephone_event: None,
            direction: MediaDirection::Inactive,
            non_audio,
            encrypted: false,
        };
    };
    let mut endpoint = sdp.endpoint(audio);
    if endpoint.is_some_and(|e| e.ip().is_unspecified()) {
        endpoint = previous.and_then(|p| p.audio);
    }
    let payload_types = audio
        .payload_types
        .iter()
        .map(|&pt| {
            let enc = audio.encoding(pt);
            PayloadMapping {
                payload_type: pt,
                encoding: enc.map(|(name, _)| name.to_owned()),
                clock_rate: enc.map(|(_, clock)| clock),
            }
        })
        .collect();
    MediaDesc {
        audio: endpoint,
        payload_types,
        telephone_event: audio.telephone_event(),
        direction: sdp.direction_of(audio),
        non_audio,
        encrypted: audio.is_encrypted(),
    }
}
