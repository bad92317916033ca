//! One call's recording: a mono WAV per direction, the stereo WAV, raw payload
//! files for what cannot be decoded, and the JSON record that describes them.

use std::cell::Cell;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rst_codec::{Codec, Decoder};
use rst_proto::{Direction, Extensions, PayloadType, RtpPacket, RtpPorts, TelephoneEvent};
use serde::Serialize;
use time::OffsetDateTime;

use crate::align::StereoAligner;
use crate::calls::CallStart;
use crate::end::EndReason;
use crate::files::{part_path, write_whole, RawFile, WavFile};
use crate::jitter::{JitterBuffer, RtpStats, Timeline};
use crate::live::{AudioFrame, LiveCall, LiveEvent, Timing};
use crate::metrics::Metrics;
use crate::stream::{StreamRecord, StreamStats};

/// The JSON record of a call, written beside its audio.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    pub uuid: String,
    pub caller: Option<String>,
    pub callee: Option<String>,
    /// The SIP Call-ID, when the sender gave it (tap_daemon does, `call-id=` in the INV).
    pub call_id: Option<String>,
    /// The tap that captured the call, when the sender is one and names
    /// itself (`tap=` in the INV).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    pub sender: String,
    /// `data` (DATA datagrams) or `rtp` (RTP per direction).
    pub mode: &'static str,
    /// RTP mode: the ports the sender sends R and W from.
    pub sender_rtp_ports: Option<PortsRecord>,
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub end: Option<OffsetDateTime>,
    pub end_reason: Option<EndReason>,
    /// What went wrong, when `end_reason` is `error`.
    pub error: Option<String>,
    /// Malformed datagrams that named this call.
    pub malformed: u64,
    /// Per direction, `R` and `W`.
    pub directions: PerDirection<DirectionRecord>,
    /// RFC 4733 telephone-events, in the order they started.
    pub dtmf: Vec<DtmfRecord>,
    /// The call had a fax (T.38) phase, whose media is not in the audio
    /// (the sender said so: `fax=1` in its INV).
    pub fax: bool,
    /// Left R, right W, aligned by arrival time (RTP mode: by timestamps).
    pub stereo: Option<PathBuf>,
    /// Which part of the call this is: 1, or 2 and more for the parts a
    /// pool's sender recorded on another receiver after a failover
    /// (`part=N` in the INV). `udp_server assemble` joins them.
    pub part: u32,
    /// Where this part's audio begins in the call, in milliseconds from the
    /// call's start on the sender's media clock (`offset-ms=` in the INV).
    pub offset_ms: u64,
    /// Live streams of the call, when it had any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<StreamRecord>,
    /// This record's own path.
    pub record: PathBuf,
}

/// One value per direction, written as a map of `R` and `W` (as a
/// `BTreeMap` by name would be), without a map's room for eleven entries:
/// every call in progress holds two of these.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PerDirection<T>([T; 2]);

impl<T> PerDirection<T> {
    /// The value of the direction named `name` (`R` or `W`).
    pub fn get(&self, name: &str) -> Option<&T> {
        Some(&self.0[slot(name)?])
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut T> {
        Some(&mut self.0[slot(name)?])
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }

    /// Each direction's name and value, `R` first.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &T)> {
        self.into_iter()
    }
}

/// Where the direction named `name` is in a [`PerDirection`].
fn slot(name: &str) -> Option<usize> {
    Direction::BOTH.iter().position(|d| d.as_str() == name)
}

impl<'a, T> IntoIterator for &'a PerDirection<T> {
    type Item = (&'static str, &'a T);
    type IntoIter = std::iter::Zip<
        std::iter::Map<std::slice::Iter<'static, Direction>, fn(&Direction) -> &'static str>,
        std::slice::Iter<'a, T>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        let name: fn(&Direction) -> &'static str = |d| d.as_str();
        Direction::BOTH.iter().map(name).zip(&self.0)
    }
}

impl<T: Serialize> Serialize for PerDirection<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(Some(2))?;
        for (name, value) in self {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// What one direction of a call carried and where it went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DirectionRecord {
    /// Codec names in the order they appeared (`PCMU`, `G722`, `raw`, ...).
    pub codecs: Vec<String>,
    pub payload_types: Vec<u8>,
    pub packets: u64,
    pub bytes: u64,
    /// Samples written to this direction's WAV files.
    pub samples: u64,
    pub decode_errors: u64,
    /// WAV files, one per sample rate the direction used, in order.
    pub wav: Vec<PathBuf>,
    /// Where the first WAV file begins on the call's timeline, in seconds
    /// from the call's start (its INV): RTP mode by the timestamps, from
    /// the first packet's arrival; DATA by arrival. A tap's two directions
    /// seldom begin together: this is how far apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub begins: Option<f64>,
    /// Payloads kept as they came because they could not be decoded.
    pub raw: Vec<RawRecord>,
    /// The bare payload of every DATA, when the `raw` option is on.
    pub bare: Option<PathBuf>,
    /// RTP mode: loss, reordering and jitter.
    pub rtp: Option<RtpStats>,
    /// RTP mode: where the lost packets were, as silence in this direction's
    /// audio. DATA carries no sequence numbers, so DATA mode knows no loss.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gaps: Option<Gaps>,
}

/// Where a direction lost audio: the first [`MAX_GAPS`] gaps, and how many
/// there were, so that a terrible call does not bloat its record.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Gaps {
    /// Gaps in all, the ones not in `first` included.
    pub count: u64,
    /// Packets lost in all (the `rtp` figures' `lost`, as placed in the audio).
    pub packets: u64,
    pub first: Vec<GapRecord>,
}

/// One stretch of lost packets, filled with silence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GapRecord {
    /// Seconds from the call's start, on the call's media clock (as DTMF
    /// `offset`, and as the stereo file's time).
    pub offset: f64,
    /// Where the silence starts in this direction's audio, in samples from
    /// the start of its first WAV (segments follow one another), at `rate`.
    pub sample: u64,
    /// Samples of silence; 0 when the stream jumped and the loss has no length.
    pub samples: u64,
    pub rate: u32,
    /// Packets lost here.
    pub packets: u64,
}

/// Gaps a direction's record lists; the rest are only counted.
pub const MAX_GAPS: usize = 100;

impl Gaps {
    fn add(&mut self, gap: GapRecord) {
        self.count += 1;
        self.packets += gap.packets;
        if self.first.len() < MAX_GAPS {
            self.first.push(gap);
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct PortsRecord {
    pub read: u16,
    pub write: u16,
}

/// One DTMF key press (or other RFC 4733 event).
#[derive(Debug, Clone, Serialize)]
pub struct DtmfRecord {
    pub direction: &'static str,
    /// `0`-`9`, `*`, `#`, `A`-`D`, `!` (flash), or `?` for other events.
    pub digit: char,
    pub event: u8,
    /// Seconds from the call's start to the key press, on the call's media clock.
    pub offset: f64,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Known once the event's end packet arrives.
    pub duration_ms: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RawRecord {
    pub payload_type: u8,
    pub path: PathBuf,
    pub reason: &'static str,
}

#[derive(Debug)]
struct Lane {
    direction: Direction,
    payload_type: Option<PayloadType>,
    decoder: Option<Decoder>,
    wav: Option<WavFile>,
    /// Media time at which the current WAV segment starts, and its length so far.
    segment_start: Duration,
    segment_samples: u64,
    raw: Vec<(u8, RawFile)>,
    bare: Option<RawFile>,
    rtp: Option<RtpLane>,
}

/// RTP mode state of one direction.
#[derive(Debug)]
struct RtpLane {
    jitter: JitterBuffer,
    timeline: Timeline,
    /// Media time where this direction's audio so far ends.
    media_end: Duration,
    /// The telephone-event being received: its SSRC, start timestamp and record index.
    event: Option<(u32, u32, usize)>,
    /// Packets given up on since this direction's audio was last written:
    /// the silence before its next audio is their gap.
    pending_loss: u64,
    /// The direction's audio is placed from the part's start (its timeline
    /// [`Timeline::starting_at`] the sender's timestamp there), so its file
    /// begins there too, with silence until its first audio.
    from_part_start: bool,
}

impl RtpLane {
    /// `preset`: the direction's RTP timestamp at the start of the part of
    /// the call (a pool's continuation of forwarded RTP), if the INV said.
    fn new(jitter_packets: usize, preset: Option<u32>) -> RtpLane {
        RtpLane {
            jitter: JitterBuffer::new(jitter_packets),
            timeline: preset.map_or_else(Timeline::default, Timeline::starting_at),
            media_end: Duration::ZERO,
            event: None,
            pending_loss: 0,
            from_part_start: preset.is_some(),
        }
    }
}

/// Key presses a call's record keeps: a hostile sender cannot grow a call's
/// memory (and record) without bound.
const MAX_DTMF_PER_CALL: usize = 10_000;

/// What an RTP payload type means to a call, for each of its packets.
#[derive(Debug, Clone, Copy)]
struct PayloadFacts {
    clock: u32,
    event: bool,
}

/// Samples of room the recorder thread keeps for stereo frames between
/// writes (20 ms of 16 kHz stereo).
const STEREO_FRAMES_KEPT: usize = 640;

thread_local! {
    /// A payload's decoded samples, and the stereo frames they complete: they
    /// live only while one payload is written, so the recorder thread keeps
    /// one of each rather than every call its own.
    static DECODED: Cell<Vec<i16>> = const { Cell::new(Vec::new()) };
    static STEREO_FRAMES: Cell<Vec<i16>> = const { Cell::new(Vec::new()) };
}

/// Options that apply to every recording.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    pub record_dir: PathBuf,
    pub bare_payload: bool,
    /// RTP packets held behind a missing one before it counts as lost.
    pub jitter_packets: usize,
    /// What dynamic payload types mean when a call's INV does not say
    /// (`payload-types`): number, encoding name, clock. An INV's own wins.
    pub default_payload_types: Arc<[DeclaredPayloadType]>,
}

/// A dynamic payload type's meaning: number, encoding name, clock rate.
pub type DeclaredPayloadType = (u8, String, u32);

/// The files of one call being recorded.
#[derive(Debug)]
pub struct CallRecording {
    record: CallRecord,
    /// Path prefix of every file of the call: `<dir>/<day>/<uuid>`.
    base: PathBuf,
    started: Instant,
    started_wall: OffsetDateTime,
    l16_rate: u32,
    /// Depth of the jitter buffer of an RTP lane.
    jitter_packets: usize,
    /// Payload types the sender declared in its INV: number, encoding name, clock.
    declared: Vec<DeclaredPayloadType>,
    /// The receiver's defaults, for numbers the INV does not declare.
    default_payload_types: Arc<[DeclaredPayloadType]>,
    lanes: [Lane; 2],
    /// DTMF records completed since the last [`CallRecording::take_new_dtmf`].
    new_dtmf: Vec<usize>,
    /// DTMF datagrams taken (direction, sequence): each comes three times.
    dtmf_seen: Vec<(Direction, u32)>,
    stereo: Option<(StereoAligner, WavFile)>,
    /// What the last RTP payload type met means, so that a packet does not
    /// search the declarations (and parse encoding names) again and again.
    payload_facts: Option<(u8, PayloadFacts)>,
    /// Once a write fails the call stops writing; what was written stays valid.
    failed: bool,
    /// Where the call's audio goes live, and the streams that take it.
    live: Option<Arc<LiveCall>>,
    streams: Vec<Arc<StreamStats>>,
}

impl CallRecording {
    /// Creates the call's folder and its provisional record.
    pub fn open(
        start: &CallStart,
        wall: OffsetDateTime,
        now: Instant,
        options: &RecordOptions,
    ) -> Result<Self, OpenError> {
        let day = options.record_dir.join(format!(
            "{:04}-{:02}-{:02}",
            wall.year(),
            u8::from(wall.month()),
            wall.day()
        ));
        let base = match std::fs::create_dir_all(&day).and_then(|()| unique_base(&day, &start.uuid))
        {
            Ok(base) => base,
            Err(error) => {
                return Err(OpenError {
                    record: Box::new(new_record(start, wall, &day.join(&start.uuid))),
                    error,
                })
            }
        };
        let rtp_mode = start.sender_rtp_ports.is_some();
        let presets = Extensions::parse(&start.extensions)
            .ok()
            .and_then(|e| e.continuation())
            .map_or([None; 2], |c| c.timestamps);
        let lane = |direction: Direction| Lane {
            direction,
            payload_type: None,
            decoder: None,
            wav: None,
            segment_start: Duration::ZERO,
            segment_samples: 0,
            raw: Vec::new(),
            bare: None,
            rtp: rtp_mode
                .then(|| RtpLane::new(options.jitter_packets, presets[direction as usize])),
        };
        let mut recording = CallRecording {
            record: new_record(start, wall, &base),
            base,
            started: now,
            started_wall: wall,
            l16_rate: start.l16_rate,
            jitter_packets: options.jitter_packets,
            declared: declared_payload_types(&start.extensions),
            default_payload_types: options.default_payload_types.clone(),
            lanes: [lane(Direction::Read), lane(Direction::Write)],
            new_dtmf: Vec::new(),
            dtmf_seen: Vec::new(),
            stereo: None,
            payload_facts: None,
            failed: false,
            live: None,
            streams: Vec::new(),
        };
        if let Err(error) = recording.create_first_files(options.bare_payload) {
            return Err(OpenError {
                record: Box::new(recording.record),
                error,
            });
        }
        Ok(recording)
    }

    /// Writes the first provisional record, naming the bare payload files
    /// (the `raw` option) before they are created, as every file of a call is
    /// named before it exists: a receiver killed in between leaves a name
    /// that recovery drops, never a file that no record names.
    fn create_first_files(&mut self, bare_payload: bool) -> io::Result<()> {
        if bare_payload {
            for lane in &self.lanes {
                let name = lane.direction.as_str();
                let path = with_suffix(&self.base, &format!("{name}.raw"));
                self.record
                    .directions
                    .get_mut(name)
                    .expect("both directions")
                    .bare = Some(path);
            }
        }
        let mut result = self.record.write_provisional();
        for lane in &mut self.lanes {
            let stats = self.record.directions.get_mut(lane.direction.as_str());
            let stats = stats.expect("both directions");
            // The name is kept only for a file made.
            let Some(path) = stats.bare.take().filter(|_| result.is_ok()) else {
                continue;
            };
            match RawFile::create(path.clone()) {
                Ok(file) => {
                    lane.bare = Some(file);
                    stats.bare = Some(path);
                }
                Err(error) => result = Err(error),
            }
        }
        result
    }

    pub fn record(&self) -> &CallRecord {
        &self.record
    }

    /// Publishes the call's audio on `live` from now on; `streams` take it.
    pub fn go_live(&mut self, live: Arc<LiveCall>) {
        self.live = Some(live);
    }

    pub fn live(&self) -> Option<&Arc<LiveCall>> {
        self.live.as_ref()
    }

    pub fn add_streams(&mut self, streams: Vec<Arc<StreamStats>>) {
        self.streams.extend(streams);
    }

    pub fn has_streams(&self) -> bool {
        !self.streams.is_empty()
    }

    /// Payload types a repeated INV declares (a re-INVITE's new codec, sent
    /// mid-call): those the call did not know are added. A known number keeps
    /// its first meaning, as RFC 3264 section 8.3.2 has a session keep its
    /// payload type mappings, so a stale or forged repeat changes nothing.
    pub fn declare(&mut self, extensions: &str) {
        if Extensions::parse(extensions).is_ok_and(|e| e.fax()) {
            self.record.fax = true;
        }
        // A call DATA started names its tap once its INV comes.
        if self.record.tap.is_none() {
            self.record.tap = Extensions::parse(extensions).ok().and_then(|e| e.tap());
        }
        // A continuation whose DATA came before its INV: the INV says which part.
        if let Some(c) = Extensions::parse(extensions)
            .ok()
            .and_then(|e| e.continuation())
        {
            if self.record.part == 1 {
                self.record.part = c.part;
                self.record.offset_ms = c.offset_ms;
            }
        }
        for (pt, name, rate) in declared_payload_types(extensions) {
            if self.declared.iter().any(|(known, ..)| *known == pt) {
                continue;
            }
            tracing::debug!(uuid = %self.record.uuid, pt, name, rate, "payload type declared mid-call");
            self.declared.push((pt, name, rate));
            self.payload_facts = None;
            // A lane that already met this payload type, undeclared then,
            // picks the declared codec for its next packet.
            for lane in &mut self.lanes {
                if lane.payload_type.map(PayloadType::number) == Some(pt) {
                    lane.payload_type = None;
                }
            }
        }
    }

    /// Caller and callee learnt from an INV that came after the call's first DATA.
    pub fn identify(&mut self, caller: &str, callee: &str) {
        self.record.caller = Some(caller.to_owned());
        self.record.callee = Some(callee.to_owned());
        let result = self.record.write_provisional();
        self.check(result, "update the record", None);
    }

    pub fn malformed(&mut self) {
        self.record.malformed += 1;
    }

    /// Records one DATA payload that arrived at `now`.
    pub fn audio(
        &mut self,
        direction: Direction,
        payload_type: PayloadType,
        payload: &[u8],
        now: Instant,
        metrics: &Metrics,
    ) {
        let index = direction as usize;
        let stats = self
            .record
            .directions
            .get_mut(direction.as_str())
            .expect("both directions");
        stats.packets += 1;
        stats.bytes += payload.len() as u64;
        if let Some(bare) = self.lanes[index].bare.as_mut().filter(|_| !self.failed) {
            let result = bare.write(payload);
            self.check(result, "write audio", Some(metrics));
        }
        let timing = Timing::Arrival(now.saturating_duration_since(self.started));
        let result = self.write_audio(index, payload_type, payload, timing, metrics);
        self.check(result, "write audio", Some(metrics));
    }

    /// Records one RTP packet of `direction` that arrived at `now`: reordered by
    /// the jitter buffer, then placed by its timestamp.
    pub fn rtp(
        &mut self,
        direction: Direction,
        packet: &RtpPacket<'_>,
        now: Instant,
        metrics: &Metrics,
    ) {
        let index = direction as usize;
        let arrival = now.saturating_duration_since(self.started);
        let clock = self.payload_facts(packet.payload_type).clock;
        // A call DATA started that an RTP-mode INV then gave ports to.
        let jitter_packets = self.jitter_packets;
        let rtp = self.lanes[index]
            .rtp
            .get_or_insert_with(|| RtpLane::new(jitter_packets, None));
        self.record.mode = "rtp";
        if let Some(held) = rtp.jitter.push_in_order(packet, arrival, clock) {
            self.play(index, held, arrival, metrics);
        }
        while let Some(held) = self.lanes[index]
            .rtp
            .as_mut()
            .and_then(|rtp| rtp.jitter.pop())
        {
            self.play(index, held, arrival, metrics);
        }
    }

    /// A key press from a DTMF datagram that arrived at `now` (its copies
    /// are ignored).
    pub fn dtmf(
        &mut self,
        direction: Direction,
        sequence: u32,
        digit: char,
        duration_ms: u32,
        now: Instant,
    ) {
        if self.dtmf_seen.contains(&(direction, sequence))
            || self.record.dtmf.len() >= MAX_DTMF_PER_CALL
        {
            return;
        }
        self.dtmf_seen.push((direction, sequence));
        // The datagram comes when the key is released: it was pressed this long before.
        let at = now
            .saturating_duration_since(self.started)
            .saturating_sub(Duration::from_millis(u64::from(duration_ms)));
        self.record.dtmf.push(DtmfRecord {
            direction: direction.as_str(),
            digit,
            event: TelephoneEvent::event_of(digit).unwrap_or(u8::MAX),
            offset: at.as_secs_f64(),
            time: self.started_wall + at,
            duration_ms: Some(duration_ms),
        });
        self.new_dtmf.push(self.record.dtmf.len() - 1);
    }

    /// DTMF records completed since the last call, for the metadata feed.
    pub fn take_new_dtmf(&mut self) -> impl Iterator<Item = &DtmfRecord> {
        let indices = std::mem::take(&mut self.new_dtmf);
        indices.into_iter().filter_map(|i| self.record.dtmf.get(i))
    }

    fn play<P: AsRef<[u8]>>(
        &mut self,
        index: usize,
        held: crate::jitter::Held<P>,
        arrival: Duration,
        metrics: &Metrics,
    ) {
        let direction = self.lanes[index].direction;
        let stats = self
            .record
            .directions
            .get_mut(direction.as_str())
            .expect("both directions");
        stats.packets += 1;
        stats.bytes += held.payload.as_ref().len() as u64;
        let PayloadFacts {
            clock,
            event: is_event,
        } = self.payload_facts(held.payload_type);
        let Some(rtp) = &mut self.lanes[index].rtp else {
            return;
        };
        rtp.pending_loss += held.lost_before;
        let (at, jumped) = rtp.timeline.place(&held, clock, arrival, rtp.media_end);
        if jumped {
            rtp.jitter.stats.timestamp_jumps += 1;
        }
        if is_event {
            self.telephone_event(index, &held, at, clock);
            return;
        }
        let Some(payload_type) = PayloadType::new(held.payload_type) else {
            return;
        };
        let result = self.write_audio(
            index,
            payload_type,
            held.payload.as_ref(),
            Timing::Media(at),
            metrics,
        );
        self.check(result, "write audio", Some(metrics));
    }

    fn telephone_event<P: AsRef<[u8]>>(
        &mut self,
        index: usize,
        held: &crate::jitter::Held<P>,
        at: Duration,
        clock: u32,
    ) {
        let Some(event) = TelephoneEvent::parse(held.payload.as_ref()) else {
            return;
        };
        let direction = self.lanes[index].direction;
        let Some(rtp) = &mut self.lanes[index].rtp else {
            return;
        };
        let record_index = match rtp.event {
            Some((ssrc, timestamp, i)) if ssrc == held.ssrc && timestamp == held.timestamp => i,
            _ if self.record.dtmf.len() >= MAX_DTMF_PER_CALL => return,
            _ => {
                self.record.dtmf.push(DtmfRecord {
                    direction: direction.as_str(),
                    digit: event.digit().unwrap_or('?'),
                    event: event.event,
                    offset: at.as_secs_f64(),
                    time: self.started_wall + at,
                    duration_ms: None,
                });
                let i = self.record.dtmf.len() - 1;
                rtp.event = Some((held.ssrc, held.timestamp, i));
                i
            }
        };
        let record = &mut self.record.dtmf[record_index];
        if event.end && record.duration_ms.is_none() {
            record.duration_ms =
                Some((u64::from(event.duration) * 1000 / u64::from(clock.max(1))) as u32);
            self.new_dtmf.push(record_index);
        }
    }

    /// `pt`'s RTP clock and whether it is a telephone-event, looked up once
    /// for a run of packets of one payload type.
    fn payload_facts(&mut self, pt: u8) -> PayloadFacts {
        if let Some((_, facts)) = self.payload_facts.filter(|(known, _)| *known == pt) {
            return facts;
        }
        let facts = PayloadFacts {
            clock: self.clock_rate(pt),
            event: self
                .declared(pt)
                .is_some_and(|(name, _)| name.eq_ignore_ascii_case("telephone-event")),
        };
        self.payload_facts = Some((pt, facts));
        facts
    }

    /// What the sender declared `pt` to be, in its INV, or else what the
    /// receiver's `payload-types` say it is.
    fn declared(&self, pt: u8) -> Option<(&str, u32)> {
        self.declared
            .iter()
            .chain(self.default_payload_types.iter())
            .find(|(number, ..)| *number == pt)
            .map(|(_, name, rate)| (name.as_str(), *rate))
    }

    fn codec_for(&self, pt: u8) -> Codec {
        match self.declared(pt) {
            Some((name, rate)) => Codec::from_encoding_name(name, rate),
            None => Codec::for_payload_type(pt, self.l16_rate),
        }
    }

    fn clock_rate(&self, pt: u8) -> u32 {
        match self.declared(pt) {
            // A codec whose RTP clock is fixed (opus: 48000, RFC 7587) keeps
            // it whatever the declaration says; others take the declared one.
            Some((name, rate)) => Codec::from_encoding_name(name, rate)
                .rtp_clock_rate()
                .unwrap_or(rate),
            None => self.codec_for(pt).rtp_clock_rate().unwrap_or(8000),
        }
    }

    /// The call's media so far, for the console's live view.
    pub fn media(&self) -> crate::live::LiveMedia {
        let mut media = crate::live::LiveMedia {
            dtmf: self.record.dtmf.iter().map(|key| key.digit).collect(),
            ..Default::default()
        };
        for lane in &self.lanes {
            let name = lane.direction.as_str();
            let Some(stats) = self.record.directions.get(name) else {
                continue;
            };
            let rtp = lane.rtp.as_ref().map(|rtp| &rtp.jitter.stats);
            let Some(live) = media.directions.get_mut(name) else {
                continue;
            };
            *live = crate::live::LiveDirection {
                codecs: stats.codecs.clone(),
                packets: stats.packets,
                lost: rtp.map(|rtp| rtp.lost),
                expected: rtp.map(|rtp| rtp.expected),
                jitter_ms: rtp.map(|rtp| rtp.jitter_ms),
            };
        }
        media
    }

    /// Pushes buffered audio and fresh headers to disk.
    pub fn flush(&mut self, metrics: &Metrics) {
        if self.failed {
            return;
        }
        let mut result = Ok(());
        for lane in &mut self.lanes {
            result = result
                .and(lane.wav.as_mut().map_or(Ok(()), WavFile::flush))
                .and(lane.bare.as_mut().map_or(Ok(()), RawFile::flush));
            for (_, raw) in &mut lane.raw {
                result = result.and(raw.flush());
            }
        }
        if let Some((_, wav)) = &mut self.stereo {
            result = result.and(wav.flush());
        }
        self.check(result, "flush", Some(metrics));
    }

    /// RTP mode: plays what the jitter buffers still hold (the call is ending)
    /// and puts the RTP figures in the record. Before [`CallRecording::finish`].
    pub fn drain_rtp(&mut self, metrics: &Metrics) {
        for index in 0..2 {
            let Some(rtp) = &mut self.lanes[index].rtp else {
                continue;
            };
            let arrival = rtp.media_end;
            let rest: Vec<_> = rtp.jitter.finish().collect();
            for held in rest {
                self.play(index, held, arrival, metrics);
            }
            if let Some(rtp) = &self.lanes[index].rtp {
                let direction = self.lanes[index].direction.as_str();
                let stats = self
                    .record
                    .directions
                    .get_mut(direction)
                    .expect("both directions");
                stats.rtp = Some(rtp.jitter.stats.clone());
                // An RTP direction says where its loss was, even when it had none.
                stats.gaps.get_or_insert_with(Gaps::default);
            }
        }
    }

    /// Completes every file and the record, without writing the record:
    /// the call's streams may still be delivering (their figures go in the
    /// record once they are done, [`write_final`]). The caller has drained
    /// the jitter buffers ([`CallRecording::drain_rtp`]) first, so that the
    /// last DTMF events could be published. Ends the call for its live
    /// subscribers.
    pub fn complete(
        mut self,
        reason: EndReason,
        wall: OffsetDateTime,
        metrics: &Metrics,
    ) -> (CallRecord, Vec<Arc<StreamStats>>) {
        if let Some(live) = self.live.take() {
            live.publish(LiveEvent::End);
        }
        if let Some((mut aligner, mut wav)) = self.stereo.take() {
            let mut frames = Vec::new();
            aligner.finish(&mut frames);
            if !self.failed {
                let result = wav.write(&frames);
                self.check(result, "write the stereo file", Some(metrics));
            }
            let result = wav.finish();
            self.check(result.map(drop), "complete the stereo file", Some(metrics));
        }
        for index in 0..2 {
            let lane = &mut self.lanes[index];
            let mut results = Vec::new();
            if let Some(wav) = lane.wav.take() {
                results.push(wav.finish().map(drop));
            }
            for (_, raw) in lane.raw.drain(..) {
                results.push(raw.finish().map(drop));
            }
            if let Some(bare) = lane.bare.take() {
                results.push(bare.finish().map(drop));
            }
            for result in results {
                self.check(result, "complete a file", Some(metrics));
            }
        }
        self.record.end = Some(wall);
        self.record.end_reason = Some(if self.failed {
            EndReason::Error
        } else {
            reason
        });
        (self.record, self.streams)
    }

    fn write_audio(
        &mut self,
        index: usize,
        payload_type: PayloadType,
        payload: &[u8],
        timing: Timing,
        metrics: &Metrics,
    ) -> io::Result<()> {
        let mut samples = DECODED.take();
        samples.clear();
        let result =
            self.write_decoded(index, payload_type, payload, timing, metrics, &mut samples);
        DECODED.set(samples);
        result
    }

    /// [`CallRecording::write_audio`], with `samples` (empty) to decode into.
    fn write_decoded(
        &mut self,
        index: usize,
        payload_type: PayloadType,
        payload: &[u8],
        timing: Timing,
        metrics: &Metrics,
        samples: &mut Vec<i16>,
    ) -> io::Result<()> {
        if self.lanes[index].payload_type != Some(payload_type) {
            let codec = self.codec_for(payload_type.number());
            let lane = &mut self.lanes[index];
            let stats = self
                .record
                .directions
                .get_mut(lane.direction.as_str())
                .expect("both directions");
            lane.payload_type = Some(payload_type);
            lane.decoder = Some(Decoder::new(codec));
            match stats
                .payload_types
                .iter()
                .position(|&pt| pt == payload_type.number())
            {
                // Declared since it was last seen (raw then): its codec now.
                Some(i) => codec.name().clone_into(&mut stats.codecs[i]),
                None => {
                    stats.payload_types.push(payload_type.number());
                    stats.codecs.push(codec.name().to_owned());
                }
            }
        }
        let lane = &mut self.lanes[index];
        let stats = self
            .record
            .directions
            .get_mut(lane.direction.as_str())
            .expect("both directions");
        let decoder = lane.decoder.as_mut().expect("set above");
        let Some(rate) = decoder.codec().sample_rate() else {
            if self.failed {
                return Ok(());
            }
            return write_raw(
                lane,
                &self.base,
                &mut self.record,
                payload_type,
                payload,
                "no decoder for this payload type",
            );
        };
        if decoder.decode(payload, samples).is_err() {
            stats.decode_errors += 1;
            metrics.decode_errors.fetch_add(1, Relaxed);
            if samples.is_empty() {
                if self.failed {
                    return Ok(());
                }
                return write_raw(
                    lane,
                    &self.base,
                    &mut self.record,
                    payload_type,
                    payload,
                    "payload could not be decoded",
                );
            }
        }
        if let Some(live) = self.live.as_ref().filter(|live| live.wanted()) {
            live.publish(LiveEvent::Audio(Arc::new(AudioFrame {
                direction: lane.direction,
                timing,
                rate,
                samples: samples.clone(),
                ulaw: (decoder.codec() == Codec::Pcmu).then(|| payload.to_vec()),
            })));
        }
        // A call whose files failed (a full disk) writes nothing more, but its
        // live audio goes on.
        if self.failed {
            return Ok(());
        }
        if lane.wav.as_ref().is_some_and(|wav| wav.rate() != rate) {
            // A codec change to another sample rate starts a new segment file.
            lane.wav.take().expect("checked").finish()?;
        }
        let at = timing.at();
        if lane.wav.is_none() {
            let segment = stats.wav.len() + 1;
            let suffix = match segment {
                1 => format!("{}.wav", lane.direction.as_str()),
                n => format!("{}.{n}.wav", lane.direction.as_str()),
            };
            let path = with_suffix(&self.base, &suffix);
            // A continued call's first file begins at the part's start when
            // its audio is placed from there; any other file at its audio.
            let from_part_start =
                segment == 1 && lane.rtp.as_ref().is_some_and(|rtp| rtp.from_part_start);
            lane.segment_start = if from_part_start { Duration::ZERO } else { at };
            stats.begins.get_or_insert(lane.segment_start.as_secs_f64());
            lane.segment_samples = 0;
            // Named before they are created ([`CallRecording::create_first_files`]):
            // this file, and the stereo file with the call's first. A name
            // whose file could not be made is taken back.
            stats.wav.push(path.clone());
            let stereo = self.record.stereo.is_none().then(|| {
                let path = with_suffix(&self.base, "stereo.wav");
                self.record.stereo = Some(path.clone());
                path
            });
            let created = self
                .record
                .write_provisional()
                .and_then(|()| WavFile::create(path, 1, rate));
            match created {
                Ok(wav) => lane.wav = Some(wav),
                Err(error) => {
                    let stats = self.record.directions.get_mut(lane.direction.as_str());
                    stats.expect("both directions").wav.pop();
                    if stereo.is_some() {
                        self.record.stereo = None;
                    }
                    return Err(error);
                }
            }
            if let Some(path) = stereo {
                match WavFile::create(path, 2, rate) {
                    Ok(wav) => self.stereo = Some((StereoAligner::new(rate), wav)),
                    Err(error) => {
                        self.record.stereo = None;
                        return Err(error);
                    }
                }
            }
        }
        let lane = &mut self.lanes[index];
        let wav = lane.wav.as_mut().expect("opened above");
        let mut written = samples.len() as u64;
        if let Timing::Media(at) = timing {
            // A lost packet, or the other side's silence: fill to where this audio belongs.
            let position = (at.saturating_sub(lane.segment_start).as_secs_f64() * f64::from(rate))
                .round() as u64;
            let gap = position.saturating_sub(lane.segment_samples);
            write_silence(wav, gap)?;
            written += gap;
            if let Some(rtp) = lane.rtp.as_mut().filter(|rtp| rtp.pending_loss > 0) {
                let stats = self
                    .record
                    .directions
                    .get_mut(lane.direction.as_str())
                    .expect("both directions");
                let starts = lane.segment_start
                    + Duration::from_secs_f64(lane.segment_samples as f64 / f64::from(rate));
                stats.gaps.get_or_insert_with(Gaps::default).add(GapRecord {
                    offset: starts.as_secs_f64(),
                    sample: stats.samples,
                    samples: gap,
                    rate,
                    packets: std::mem::take(&mut rtp.pending_loss),
                });
            }
        }
        wav.write(samples)?;
        lane.segment_samples += written;
        if let (Timing::Media(at), Some(rtp)) = (timing, &mut lane.rtp) {
            rtp.media_end = at + Duration::from_secs_f64(samples.len() as f64 / f64::from(rate));
        }
        self.record
            .directions
            .get_mut(lane.direction.as_str())
            .expect("both directions")
            .samples += written;
        metrics.samples_written.fetch_add(written, Relaxed);

        let Some((aligner, wav)) = self.stereo.as_mut() else {
            // Made with the call's first WAV file: the call failed if it could not be.
            return Ok(());
        };
        let mut frames = STEREO_FRAMES.take();
        frames.clear();
        match timing {
            Timing::Arrival(at) => aligner.push(lane.direction, samples, rate, at, &mut frames),
            Timing::Media(at) => aligner.place(lane.direction, samples, rate, at, &mut frames),
        }
        let result = wav.write(&frames);
        // A long silence comes out in one go: its room is not kept.
        frames.clear();
        frames.shrink_to(STEREO_FRAMES_KEPT);
        STEREO_FRAMES.set(frames);
        result
    }

    fn check(&mut self, result: io::Result<()>, what: &str, metrics: Option<&Metrics>) {
        let Err(error) = result else { return };
        if let Some(metrics) = metrics {
            metrics.write_errors.fetch_add(1, Relaxed);
        }
        tracing::warn!(uuid = %self.record.uuid, base = %self.base.display(), %error, "cannot {what}; the call is marked failed, what was written is kept");
        if !self.failed {
            self.failed = true;
            self.record.error = Some(format!("cannot {what}: {error}"));
        }
    }
}

fn declared_payload_types(extensions: &str) -> Vec<DeclaredPayloadType> {
    let Ok(extensions) = Extensions::parse(extensions) else {
        return Vec::new();
    };
    let mut declared: Vec<DeclaredPayloadType> = Vec::new();
    for (pt, name, rate) in extensions.payload_types() {
        // The first declaration of a number is its meaning.
        if !declared.iter().any(|(known, ..)| *known == pt) {
            declared.push((pt, name.to_owned(), rate));
        }
    }
    declared
}

fn write_silence(wav: &mut WavFile, mut samples: u64) -> io::Result<()> {
    const ZEROS: [i16; 1024] = [0; 1024];
    while samples > 0 {
        let chunk = samples.min(ZEROS.len() as u64) as usize;
        wav.write(&ZEROS[..chunk])?;
        samples -= chunk as u64;
    }
    Ok(())
}

fn write_raw(
    lane: &mut Lane,
    base: &Path,
    record: &mut CallRecord,
    payload_type: PayloadType,
    payload: &[u8],
    reason: &'static str,
) -> io::Result<()> {
    let pt = payload_type.number();
    let position = match lane.raw.iter().position(|(p, _)| *p == pt) {
        Some(position) => position,
        None => {
            let direction = lane.direction.as_str();
            let path = with_suffix(base, &format!("{direction}.pt{pt:02}.raw"));
            let stats = record
                .directions
                .get_mut(direction)
                .expect("both directions");
            stats.raw.push(RawRecord {
                payload_type: pt,
                path: path.clone(),
                reason,
            });
            // Named before it is made ([`CallRecording::create_first_files`]).
            let created = record
                .write_provisional()
                .and_then(|()| RawFile::create(path));
            match created {
                Ok(file) => lane.raw.push((pt, file)),
                Err(error) => {
                    let stats = record.directions.get_mut(direction);
                    stats.expect("both directions").raw.pop();
                    return Err(error);
                }
            }
            lane.raw.len() - 1
        }
    };
    lane.raw[position].1.write(payload)
}

/// `<uuid>`, or `<uuid>.2`, `<uuid>.3`... when a call with that UUID was already
/// recorded that day (a stream stopped and started again on one channel).
fn unique_base(day: &Path, uuid: &str) -> io::Result<PathBuf> {
    // The provisional record is created exclusively: that is the reservation, so
    // two recorder threads starting calls of one UUID never pick the same name.
    for n in 1..=10_000u32 {
        let base = match n {
            1 => day.join(uuid),
            n => day.join(format!("{uuid}.{n}")),
        };
        let record = with_suffix(&base, "json");
        if record.exists() {
            continue;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(part_path(&record))
        {
            // A call of this name that ended between the check above and the
            // reservation wrote its record before it removed its reservation:
            // seen now, so its files are never taken over.
            Ok(_) if record.exists() => {
                std::fs::remove_file(part_path(&record))?;
                continue;
            }
            Ok(_) => return Ok(base),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error),
        }
    }
    Err(io::Error::other(format!(
        "10000 recordings of {uuid} in {}",
        day.display()
    )))
}

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// A call's files could not be created (a full disk, say): its audio is not
/// recorded, but its record still is, once the call ends.
#[derive(Debug)]
pub struct OpenError {
    pub error: io::Error,
    /// The record as the call started, to be finished and written at its end.
    pub record: Box<CallRecord>,
}

/// The record of a call as it starts, its files named after `base`.
fn new_record(start: &CallStart, wall: OffsetDateTime, base: &Path) -> CallRecord {
    let extensions = Extensions::parse(&start.extensions).ok();
    let continuation = extensions.as_ref().and_then(Extensions::continuation);
    CallRecord {
        uuid: start.uuid.clone(),
        caller: start.caller.clone(),
        callee: start.callee.clone(),
        call_id: extensions.as_ref().and_then(Extensions::call_id),
        tap: extensions.as_ref().and_then(Extensions::tap),
        sender: start.sender.to_string(),
        mode: if start.sender_rtp_ports.is_some() {
            "rtp"
        } else {
            "data"
        },
        sender_rtp_ports: start
            .sender_rtp_ports
            .map(|RtpPorts { read, write }| PortsRecord { read, write }),
        start: wall,
        end: None,
        end_reason: None,
        error: None,
        malformed: 0,
        directions: PerDirection::default(),
        dtmf: Vec::new(),
        fax: extensions.as_ref().is_some_and(Extensions::fax),
        part: continuation.map_or(1, |c| c.part),
        offset_ms: continuation.map_or(0, |c| c.offset_ms),
        stereo: None,
        streams: Vec::new(),
        record: with_suffix(base, "json"),
    }
}

/// A call's record once its files are complete.
#[derive(Debug)]
pub struct Finished {
    pub record: CallRecord,
    /// The record is on disk; if not, the provisional one still is.
    pub written: bool,
}

/// Writes a completed call's record ([`CallRecording::complete`]).
pub fn write_final(mut record: CallRecord, metrics: &Metrics) -> Finished {
    let result = write_record(&record);
    let written = result.is_ok();
    if let Err(error) = result {
        metrics.write_errors.fetch_add(1, Relaxed);
        tracing::warn!(uuid = %record.uuid, record = %record.record.display(), %error, "cannot write the record");
        record
            .error
            .get_or_insert_with(|| format!("cannot write the record: {error}"));
        // Said in the record itself, when it is written after all.
        record.end_reason = Some(EndReason::Error);
    }
    Finished { record, written }
}

impl CallRecord {
    /// The call's files other than its record: WAVs, raw payloads, the stereo file.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for direction in self.directions.values() {
            files.extend(direction.wav.iter().cloned());
            files.extend(direction.raw.iter().map(|raw| raw.path.clone()));
            files.extend(direction.bare.iter().cloned());
        }
        files.extend(self.stereo.iter().cloned());
        files
    }
}

/// Writes a call's final record and removes its provisional one.
pub fn write_record(record: &CallRecord) -> io::Result<()> {
    write_json(&record.record, record)?;
    match std::fs::remove_file(part_path(&record.record)) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

impl CallRecord {
    /// Writes the record as it stands beside the call's files (`.json.part`),
    /// whole or not at all: what the next start completes should the
    /// receiver die first.
    fn write_provisional(&self) -> io::Result<()> {
        write_json(&part_path(&self.record), self)
    }
}

/// Writes the record whole or not at all ([`write_whole`]).
fn write_json(path: &Path, record: &CallRecord) -> io::Result<()> {
    let mut text = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    text.push(b'\n');
    write_whole(path, &with_suffix(path, "tmp"), &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of a call is named in its provisional record before it is
    /// made, so a receiver killed at any moment leaves no file that no record
    /// names (recovery drops a name whose file was never made instead).
    #[test]
    fn a_call_names_each_file_in_its_provisional_record_before_it_makes_it() {
        let dir = tempfile::tempdir().unwrap();
        let options = RecordOptions {
            record_dir: dir.path().to_owned(),
            bare_payload: true,
            jitter_packets: 4,
            default_payload_types: Arc::from([]),
        };
        let start = CallStart {
            call: 1,
            uuid: "named-first".into(),
            caller: Some("alice".into()),
            callee: Some("bob".into()),
            sender: "127.0.0.1:5000".parse().unwrap(),
            l16_rate: 8000,
            sender_rtp_ports: None,
            extensions: String::new(),
        };
        let now = Instant::now();
        let mut call = CallRecording::open(&start, OffsetDateTime::now_utc(), now, &options)
            .map_err(|e| e.error)
            .unwrap();
        // The files in the call's folder that its provisional record does not name.
        let unnamed = |call: &CallRecording| -> Vec<String> {
            let part = part_path(&call.record().record);
            let text = std::fs::read_to_string(&part).unwrap();
            let files = std::fs::read_dir(part.parent().unwrap()).unwrap();
            let names = files.map(|file| file.unwrap().file_name().into_string().unwrap());
            names
                .filter(|name| !name.ends_with(".json.part"))
                .filter(|name| {
                    let name = name.strip_suffix(".part").unwrap_or(name);
                    !text.contains(&format!("/{name}\""))
                })
                .collect()
        };
        assert_eq!(unnamed(&call), Vec::<String>::new(), "at the call's start");
        let undeclared = PayloadType::new(99).unwrap();
        for (direction, payload_type) in [
            (Direction::Read, PayloadType::PCMU),
            (Direction::Read, undeclared),
            (Direction::Write, PayloadType::PCMA),
            // Another sample rate: a second WAV file.
            (Direction::Read, PayloadType::G722),
        ] {
            call.audio(
                direction,
                payload_type,
                &[0x55; 160],
                now,
                &Metrics::default(),
            );
            assert_eq!(
                unnamed(&call),
                Vec::<String>::new(),
                "after {direction:?} audio of payload type {}",
                payload_type.number()
            );
        }
        let record = call.record();
        let (r, w) = (
            &record.directions.get("R").unwrap(),
            &record.directions.get("W").unwrap(),
        );
        assert_eq!((r.wav.len(), r.raw.len(), w.wav.len()), (2, 1, 1));
        assert!(record.stereo.is_some() && r.bare.is_some() && w.bare.is_some());
        assert!(record.error.is_none(), "{:?}", record.error);
    }

    #[test]
    fn directions_are_written_as_the_map_of_r_and_w_they_were() {
        let mut directions = PerDirection::<DirectionRecord>::default();
        directions.get_mut("W").unwrap().packets = 7;
        assert!(directions.get("X").is_none());
        let map: std::collections::BTreeMap<&str, DirectionRecord> = directions
            .iter()
            .map(|(name, d)| (name, d.clone()))
            .collect();
        assert_eq!(
            serde_json::to_string(&directions).unwrap(),
            serde_json::to_string(&map).unwrap()
        );
        assert_eq!(map["W"].packets, 7);
        assert_eq!(map["R"].packets, 0);
    }
}
