//! The recorder thread: owns every open recording and does all file I/O, so the
//! receive loop never waits on the disk. Commands arrive in batches, one per
//! burst of datagrams, with the payloads packed in one buffer.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rst_proto::{Direction, Extensions, PayloadType, RtpPacket};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::calls::{CallId, CallStart};
use crate::end::EndReason;
use crate::files::{part_path, repair_wav, write_whole};
use crate::live::{CallInfo, LiveCalls, LiveEvent};
use crate::metrics::Metrics;
use crate::play::PlayTarget;
use crate::record::{
    write_final, write_record, CallRecord, CallRecording, DtmfRecord, Finished, OpenError,
    RecordOptions,
};
use crate::stream::{StreamStats, Streams};

/// What the receive loop asks of the recorder.
#[derive(Debug)]
pub enum Command {
    Start {
        start: CallStart,
        at: Instant,
        wall: OffsetDateTime,
    },
    Identify {
        call: CallId,
        caller: String,
        callee: String,
    },
    /// A repeated INV's extensions: payload types declared mid-call.
    Declare {
        call: CallId,
        extensions: String,
    },
    /// `payload` is a range of the batch's `bytes`.
    Audio {
        call: CallId,
        direction: Direction,
        payload_type: PayloadType,
        payload: Range<usize>,
        at: Instant,
    },
    /// An RTP packet; its payload is a range of the batch's `bytes`.
    Rtp {
        call: CallId,
        direction: Direction,
        header: RtpHeader,
        payload: Range<usize>,
        at: Instant,
    },
    /// A key press from a DTMF datagram.
    Dtmf {
        call: CallId,
        direction: Direction,
        sequence: u32,
        digit: char,
        duration_ms: u32,
        at: Instant,
    },
    /// The call's sender reported a consumer's mark played (or cleared).
    Mark {
        call: CallId,
        name: String,
        cleared: bool,
    },
    Malformed {
        call: CallId,
    },
    End {
        call: CallId,
        reason: EndReason,
        wall: OffsetDateTime,
    },
    /// Refresh headers and push buffers to disk (once a second).
    Flush,
}

/// An RTP header without its payload, to travel in a [`Command`].
#[derive(Debug, Clone, Copy)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

impl RtpHeader {
    pub fn of(packet: &RtpPacket<'_>) -> Self {
        RtpHeader {
            marker: packet.marker,
            payload_type: packet.payload_type,
            sequence: packet.sequence,
            timestamp: packet.timestamp,
            ssrc: packet.ssrc,
        }
    }

    fn with<'a>(&self, payload: &'a [u8]) -> RtpPacket<'a> {
        RtpPacket {
            marker: self.marker,
            payload_type: self.payload_type,
            sequence: self.sequence,
            timestamp: self.timestamp,
            ssrc: self.ssrc,
            payload,
        }
    }
}

/// What the recorder reports, for the metadata feed.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    Started(&'a CallRecord),
    Dtmf(&'a CallRecord, &'a DtmfRecord),
    /// The call's final record is about to be written: what must survive a
    /// kill between the two (its upload job) is made now.
    Ending(&'a CallRecord),
    Ended(&'a CallRecord),
}

/// Commands from one wake-up of the receive loop.
#[derive(Debug, Default)]
pub struct Batch {
    pub bytes: Vec<u8>,
    pub commands: Vec<Command>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }
}

/// Where calls go live: the registry of calls in progress and the stream profiles.
#[derive(Debug, Clone)]
pub struct Live {
    pub calls: Arc<LiveCalls>,
    pub streams: Streams,
}

/// How long a call's record waits for its streams to deliver what they
/// hold beyond the longest buffer (their own deadline comes first).
const STREAM_WAIT_MARGIN: Duration = Duration::from_secs(15);
/// At shutdown, how long the records of the calls it ends wait for their streams.
const SHUTDOWN_STREAM_WAIT: Duration = Duration::from_secs(5);

/// Runs until the sending side of `batches` is dropped, then finishes whatever
/// is still open as `shutdown`. `on_event` hears of every call start, DTMF and end.
pub fn run(
    mut batches: mpsc::Receiver<Batch>,
    options: RecordOptions,
    live: Live,
    metrics: Arc<Metrics>,
    mut on_event: impl FnMut(Event<'_>),
) {
    // Boxed: a map keeps room for more entries than it holds (up to twice as
    // many), and a recording is large; the room costs a pointer each so.
    let mut calls: HashMap<CallId, Box<CallRecording>> = HashMap::new();
    let mut pending = PendingRecords::default();
    let mut streaming = StreamingRecords::default();
    // Calls whose files could not be created: no audio, but a record at their end.
    let mut unrecorded: HashMap<CallId, CallRecord> = HashMap::new();
    while let Some(batch) = batches.blocking_recv() {
        for command in batch.commands {
            match command {
                Command::Start { start, at, wall } => {
                    match CallRecording::open(&start, wall, at, &options) {
                        Ok(mut recording) => {
                            tracing::info!(uuid = %start.uuid, record = %recording.record().record.display(), "call started");
                            go_live(&live, &start, &mut recording);
                            on_event(Event::Started(recording.record()));
                            calls.insert(start.call, Box::new(recording));
                        }
                        Err(OpenError { error, mut record }) => {
                            metrics.write_errors.fetch_add(1, Relaxed);
                            tracing::error!(uuid = %start.uuid, dir = %options.record_dir.display(), %error, "cannot create the call's files; its audio is not recorded, its record is written when it ends");
                            record.error = Some(format!("cannot create the call's files: {error}"));
                            on_event(Event::Started(&record));
                            unrecorded.insert(start.call, *record);
                        }
                    }
                }
                Command::Identify {
                    call,
                    caller,
                    callee,
                } => {
                    if let Some(recording) = calls.get_mut(&call) {
                        recording.identify(&caller, &callee);
                        if let Some(live_call) = recording.live().cloned() {
                            live_call.update(|info| {
                                info.caller = Some(caller.clone());
                                info.callee = Some(callee.clone());
                            });
                            // Profiles that pick calls by number can tell now.
                            if !recording.has_streams() {
                                let streams = live.streams.start(&live_call, std::iter::empty());
                                recording.add_streams(streams);
                            }
                        }
                        // Consoles (and the snapshot) get the call with its parties named.
                        on_event(Event::Started(recording.record()));
                    } else if let Some(record) = unrecorded.get_mut(&call) {
                        record.caller = Some(caller);
                        record.callee = Some(callee);
                        on_event(Event::Started(record));
                    }
                }
                Command::Declare { call, extensions } => {
                    if let Some(recording) = calls.get_mut(&call) {
                        recording.declare(&extensions);
                    }
                }
                Command::Audio {
                    call,
                    direction,
                    payload_type,
                    payload,
                    at,
                } => {
                    if let Some(recording) = calls.get_mut(&call) {
                        recording.audio(
                            direction,
                            payload_type,
                            &batch.bytes[payload],
                            at,
                            &metrics,
                        );
                    }
                }
                Command::Rtp {
                    call,
                    direction,
                    header,
                    payload,
                    at,
                } => {
                    if let Some(recording) = calls.get_mut(&call) {
                        recording.rtp(direction, &header.with(&batch.bytes[payload]), at, &metrics);
                        publish_dtmf(recording, &mut on_event);
                    }
                }
                Command::Dtmf {
                    call,
                    direction,
                    sequence,
                    digit,
                    duration_ms,
                    at,
                } => {
                    if let Some(recording) = calls.get_mut(&call) {
                        recording.dtmf(direction, sequence, digit, duration_ms, at);
                        publish_dtmf(recording, &mut on_event);
                    }
                }
                Command::Mark {
                    call,
                    name,
                    cleared,
                } => {
                    if let Some(live) = calls.get(&call).and_then(|recording| recording.live()) {
                        live.publish(LiveEvent::Mark {
                            name: Arc::from(name),
                            cleared,
                        });
                    }
                }
                Command::Malformed { call } => {
                    if let Some(recording) = calls.get_mut(&call) {
                        recording.malformed();
                    }
                }
                Command::End { call, reason, wall } => {
                    if let Some(recording) = calls.remove(&call) {
                        live.calls.close(call);
                        if let Some(finished) = finish(
                            *recording,
                            reason,
                            wall,
                            &metrics,
                            &mut streaming,
                            &mut on_event,
                        ) {
                            pending.keep(finished, &metrics);
                        }
                    } else if let Some(record) = unrecorded.remove(&call) {
                        let finished = finish_unrecorded(record, wall, &mut on_event);
                        pending.keep(finished, &metrics);
                    }
                }
                Command::Flush => {
                    for recording in calls.values_mut() {
                        recording.flush(&metrics);
                        if let Some(live) = recording.live() {
                            live.set_media(recording.media());
                        }
                    }
                    pending.retry(&metrics);
                }
            }
        }
        for finished in streaming.ready(Instant::now(), Wait::Bounded, &metrics, &mut on_event) {
            pending.keep(finished, &metrics);
        }
    }
    let wall = OffsetDateTime::now_utc();
    for (call, recording) in calls.drain() {
        live.calls.close(call);
        if let Some(finished) = finish(
            *recording,
            EndReason::Shutdown,
            wall,
            &metrics,
            &mut streaming,
            &mut on_event,
        ) {
            pending.keep(finished, &metrics);
        }
    }
    // The streams of the calls just ended deliver what they hold (briefly:
    // the receiver is stopping), then their records are written.
    let give_up = Instant::now() + SHUTDOWN_STREAM_WAIT;
    while !streaming.is_empty() {
        // Past the bound every record is written, its streams' figures as they are.
        let now = Instant::now();
        let wait = if now >= give_up {
            Wait::No
        } else {
            Wait::Bounded
        };
        for finished in streaming.ready(now, wait, &metrics, &mut on_event) {
            pending.keep(finished, &metrics);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (_, record) in unrecorded.drain() {
        let finished = finish_unrecorded(record, wall, &mut on_event);
        pending.keep(finished, &metrics);
    }
    // A last try; what still cannot be written is left to the next start,
    // whose recovery completes each call from its provisional record.
    pending.retry(&metrics);
    pending.defer_all(&metrics);
}

/// Makes a call that starts live: listed for the HTTP port, its audio
/// published, its stream profiles started (those its INV asks for by name
/// too), and a way back into it when its sender can play (`play=1`).
fn go_live(live: &Live, start: &CallStart, recording: &mut CallRecording) {
    let extensions = Extensions::parse(&start.extensions).ok();
    let play = extensions
        .as_ref()
        .filter(|e| e.play())
        .map(|_| PlayTarget {
            to: start.sender,
            rate: start.l16_rate,
        });
    let gathers = extensions
        .as_ref()
        .filter(|e| e.live())
        .map(|_| start.sender);
    let call = live
        .calls
        .open(start.call, CallInfo::of(recording.record()), play, gathers);
    let streams = live
        .streams
        .start(&call, extensions.iter().flat_map(Extensions::streams));
    recording.go_live(call);
    recording.add_streams(streams);
}

/// Records of ended calls that could not be written (a full disk): kept and
/// retried every second, so who called whom, when, and why the recording
/// stopped survive the disk filling up.
#[derive(Debug, Default)]
struct PendingRecords {
    /// Oldest first.
    records: VecDeque<CallRecord>,
}

/// Records kept waiting at once; past it the oldest is left to the next
/// start's recovery (its provisional record is on disk).
const MAX_PENDING_RECORDS: usize = 10_000;

impl PendingRecords {
    fn keep(&mut self, finished: Finished, metrics: &Metrics) {
        if finished.written {
            return;
        }
        if self.records.len() >= MAX_PENDING_RECORDS {
            if let Some(oldest) = self.records.pop_front() {
                metrics.records_pending.fetch_sub(1, Relaxed);
                defer(&oldest, metrics);
            }
        }
        tracing::warn!(uuid = %finished.record.uuid, record = %finished.record.record.display(), "the call's record cannot be written now; it is kept and tried again every second");
        metrics.records_pending.fetch_add(1, Relaxed);
        self.records.push_back(finished.record);
    }

    /// Writes what it can, oldest first; the first failure ends the round
    /// (the disk is still full: the others would fail the same way).
    fn retry(&mut self, metrics: &Metrics) {
        while let Some(record) = self.records.front() {
            if write_record(record).is_err() {
                return;
            }
            metrics.records_pending.fetch_sub(1, Relaxed);
            metrics.records_retried.fetch_add(1, Relaxed);
            tracing::info!(uuid = %record.uuid, record = %record.record.display(), "the call's record was written after all");
            self.records.pop_front();
        }
    }

    fn defer_all(&mut self, metrics: &Metrics) {
        for record in self.records.drain(..) {
            metrics.records_pending.fetch_sub(1, Relaxed);
            defer(&record, metrics);
        }
    }
}

fn defer(record: &CallRecord, metrics: &Metrics) {
    metrics.records_deferred.fetch_add(1, Relaxed);
    tracing::error!(uuid = %record.uuid, record = %record.record.display(), "the call's record cannot be written; the next start completes it from its provisional record (.json.part)");
}

/// Ends a recording. Its record is written now, or, when the call had
/// live streams, once they have delivered what they hold (`None` now).
fn finish(
    mut recording: CallRecording,
    reason: EndReason,
    wall: OffsetDateTime,
    metrics: &Metrics,
    streaming: &mut StreamingRecords,
    on_event: &mut impl FnMut(Event<'_>),
) -> Option<Finished> {
    recording.drain_rtp(metrics);
    publish_dtmf(&mut recording, on_event);
    let (record, streams) = recording.complete(reason, wall, metrics);
    if streams.is_empty() {
        return Some(record_ended(record, Vec::new(), metrics, on_event));
    }
    streaming.wait(record, streams);
    None
}

/// Writes a completed call's record and tells the feed.
fn record_ended(
    mut record: CallRecord,
    streams: Vec<Arc<StreamStats>>,
    metrics: &Metrics,
    on_event: &mut impl FnMut(Event<'_>),
) -> Finished {
    record.streams = streams.iter().map(|s| s.record()).collect();
    on_event(Event::Ending(&record));
    let finished = write_final(record, metrics);
    let record = &finished.record;
    tracing::info!(
        uuid = %record.uuid,
        reason = record.end_reason.map_or("?", EndReason::name),
        record = %record.record.display(),
        "call recorded"
    );
    // Events whose end packet never came were not published yet.
    for dtmf in record.dtmf.iter().filter(|d| d.duration_ms.is_none()) {
        on_event(Event::Dtmf(record, dtmf));
    }
    on_event(Event::Ended(record));
    finished
}

/// Whether a record still waits for its streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Until they are done, or the record's deadline.
    Bounded,
    /// Not at all (the receiver is stopping and waited long enough).
    No,
}

/// Records of ended calls whose streams are still delivering: written once
/// the streams are done, or at the latest after the wait bound.
#[derive(Debug, Default)]
struct StreamingRecords {
    waiting: Vec<(CallRecord, Vec<Arc<StreamStats>>, Instant)>,
}

impl StreamingRecords {
    fn wait(&mut self, record: CallRecord, streams: Vec<Arc<StreamStats>>) {
        let longest = streams.iter().map(|s| s.buffer()).max().unwrap_or_default();
        self.waiting.push((
            record,
            streams,
            Instant::now() + longest + STREAM_WAIT_MARGIN,
        ));
    }

    fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Writes the records whose streams are done (or waited long enough).
    fn ready(
        &mut self,
        now: Instant,
        wait: Wait,
        metrics: &Metrics,
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Vec<Finished> {
        let mut finished = Vec::new();
        let mut i = 0;
        while i < self.waiting.len() {
            let (_, streams, deadline) = &self.waiting[i];
            if wait == Wait::No || streams.iter().all(|s| s.is_done()) || now >= *deadline {
                let (record, streams, _) = self.waiting.swap_remove(i);
                finished.push(record_ended(record, streams, metrics, on_event));
            } else {
                i += 1;
            }
        }
        finished
    }
}

/// Ends a call whose files could not be created: its record says so.
fn finish_unrecorded(
    mut record: CallRecord,
    wall: OffsetDateTime,
    on_event: &mut impl FnMut(Event<'_>),
) -> Finished {
    record.end = Some(wall);
    record.end_reason = Some(EndReason::Error);
    on_event(Event::Ending(&record));
    let written = write_record(&record).is_ok();
    tracing::info!(uuid = %record.uuid, record = %record.record.display(), written, "call ended unrecorded");
    on_event(Event::Ended(&record));
    Finished { record, written }
}

fn publish_dtmf(recording: &mut CallRecording, on_event: &mut impl FnMut(Event<'_>)) {
    let fresh: Vec<DtmfRecord> = recording.take_new_dtmf().cloned().collect();
    if fresh.is_empty() {
        return;
    }
    for dtmf in fresh {
        on_event(Event::Dtmf(recording.record(), &dtmf));
        if let Some(live) = recording.live() {
            live.publish(LiveEvent::Dtmf(Arc::new(dtmf)));
        }
    }
    if let Some(live) = recording.live() {
        live.set_media(recording.media());
    }
}

/// Completes the files a previous run left unfinished (`.part`), so that a crash
/// of the receiver costs at most the audio it had not yet flushed. Returns the
/// files recovered, under their final names (the records among them are calls
/// the crash ended: still to be stored, when the receiver stores recordings).
pub fn recover(record_dir: &Path, metrics: &Metrics) -> Vec<std::path::PathBuf> {
    let mut parts = Vec::new();
    collect_parts(record_dir, 2, &mut parts);
    // Audio first, so a record is completed only after its files are.
    parts.sort_by_key(|path| path.to_string_lossy().ends_with(".json.part"));
    let mut recovered = Vec::new();
    for part in parts {
        let final_path = part.with_extension("");
        let result = if part.to_string_lossy().ends_with(".wav.part") {
            repair_wav(&part).map(drop)
        } else if part.to_string_lossy().ends_with(".json.part") {
            // Written whole, or empty: a name reserved by a run killed
            // before it wrote the call's first provisional record (nothing
            // of the call was recorded then).
            let reserved_only = std::fs::metadata(&part).is_ok_and(|m| m.len() == 0);
            if final_path.exists() || reserved_only {
                remove_leftover_record(&part);
                continue;
            }
            complete_record(&part)
        } else {
            Ok(())
        };
        match result.and_then(|()| std::fs::rename(&part, &final_path)) {
            Ok(()) => {
                metrics.recovered_files.fetch_add(1, Relaxed);
                tracing::info!(path = %final_path.display(), "recovered a file left unfinished by an earlier run");
                recovered.push(final_path);
            }
            Err(error) => {
                metrics.recovery_failures.fetch_add(1, Relaxed);
                tracing::warn!(path = %part.display(), %error, "cannot recover a file left unfinished by an earlier run; left as it is for the next start (is the disk full?)");
            }
        }
    }
    recovered
}

/// A provisional record not to complete: that of a call whose record was
/// written (the run was killed between writing the record, whole, by a
/// rename, and removing this; completing it would put an `error` ending over
/// the record, whose upload job is committed when the queue opens), or an
/// empty one, a name reserved by a run killed before it wrote anything in it.
fn remove_leftover_record(part: &Path) {
    match std::fs::remove_file(part) {
        Ok(()) => {
            tracing::info!(path = %part.display(), "removed a provisional record left by an earlier run: its call's record is written, or it was empty")
        }
        Err(error) => {
            tracing::warn!(path = %part.display(), %error, "cannot remove a provisional record left by an earlier run: its call's record is written, or it was empty")
        }
    }
}

fn collect_parts(dir: &Path, depth: u32, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(kind) if kind.is_dir() && depth > 0 => collect_parts(&path, depth - 1, out),
            Ok(kind) if kind.is_file() && path.extension().is_some_and(|e| e == "part") => {
                out.push(path)
            }
            _ => {}
        }
    }
}

/// Marks a provisional record as ended by the crash, at the time the record
/// was last written (its start, its parties, or a new WAV segment: the audio
/// files' own times are gone once they are repaired).
fn complete_record(part: &Path) -> std::io::Result<()> {
    let text = std::fs::read(part)?;
    let mut record: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let ended = std::fs::metadata(part)?
        .modified()
        .unwrap_or_else(|_| SystemTime::now());
    let ended = OffsetDateTime::from(ended)
        .format(&time::format_description::well_known::Rfc3339)
        .ok();
    let fields = record
        .as_object_mut()
        .ok_or_else(|| std::io::Error::other("record is not an object"))?;
    forget_files_never_made(fields, part.parent().unwrap_or(Path::new(".")));
    fields.insert("end".into(), ended.into());
    fields.insert("end_reason".into(), "error".into());
    fields.insert(
        "error".into(),
        "the receiver stopped before the call ended; files recovered at the next start".into(),
    );
    let mut text = serde_json::to_vec_pretty(&record).map_err(std::io::Error::other)?;
    text.push(b'\n');
    write_whole(part, &part.with_extension("tmp"), &text)
}

/// Takes out of a provisional record the names of files that are not in its
/// folder: a call names each file before it makes it (see
/// `CallRecording::create_first_files`), so a run killed in between left a
/// name without a file. A file is looked for by its name in the record's own
/// folder (a call's files are all there), so a record dir given as a relative
/// path from another working folder does not matter.
fn forget_files_never_made(record: &mut serde_json::Map<String, serde_json::Value>, folder: &Path) {
    use serde_json::Value;
    let made = |name: &Value| {
        let file = name.as_str().and_then(|path| Path::new(path).file_name());
        file.is_some_and(|file| {
            let path = folder.join(file);
            path.exists() || part_path(&path).exists()
        })
    };
    let forget = |name: Option<&mut Value>| {
        if let Some(name) = name.filter(|name| !name.is_null() && !made(name)) {
            *name = Value::Null;
        }
    };
    forget(record.get_mut("stereo"));
    let directions = record.get_mut("directions").and_then(Value::as_object_mut);
    for direction in directions.into_iter().flat_map(|d| d.values_mut()) {
        forget(direction.get_mut("bare"));
        if let Some(wav) = direction.get_mut("wav").and_then(Value::as_array_mut) {
            wav.retain(made);
        }
        if let Some(raw) = direction.get_mut("raw").and_then(Value::as_array_mut) {
            raw.retain(|raw| raw.get("path").is_some_and(made));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as a call writes it: provisional while it lasts, final at its end.
    fn record_text(uuid: &str, end_reason: Option<&str>) -> Vec<u8> {
        let mut record = serde_json::json!({
            "uuid": uuid,
            "caller": "alice",
            "callee": "bob",
            "start": "2026-12-04T21:00:00Z",
            "directions": {},
        });
        if let Some(reason) = end_reason {
            record["end"] = "2026-12-04T21:01:00Z".into();
            record["end_reason"] = reason.into();
        }
        serde_json::to_vec_pretty(&record).unwrap()
    }

    /// The receiver killed after a call's record was written but before its
    /// provisional record was removed: the next start keeps the record as it
    /// was and removes the leftover. A call the kill ended, beside it, is
    /// still completed from its provisional record.
    #[test]
    fn recovery_keeps_a_written_record_and_removes_leftover_and_empty_provisional_ones() {
        let dir = tempfile::tempdir().unwrap();
        let day = dir.path().join("2026-12-04");
        std::fs::create_dir(&day).unwrap();
        let ended = day.join("ended.json");
        let written = String::from_utf8(record_text("ended", Some("hangup"))).unwrap();
        std::fs::write(&ended, &written).unwrap();
        std::fs::write(crate::files::part_path(&ended), record_text("ended", None)).unwrap();
        let cut = day.join("cut.json");
        std::fs::write(crate::files::part_path(&cut), record_text("cut", None)).unwrap();
        // A name reserved (the empty provisional record) by a run killed
        // before it wrote the call's first provisional record.
        let reserved = crate::files::part_path(&day.join("reserved.json"));
        std::fs::write(&reserved, b"").unwrap();

        let metrics = Metrics::default();
        let recovered = recover(dir.path(), &metrics);

        assert_eq!(
            std::fs::read_to_string(&ended).unwrap(),
            written,
            "the written record is kept as it was"
        );
        assert!(
            !crate::files::part_path(&ended).exists(),
            "the leftover goes"
        );
        assert_eq!(recovered, [cut.as_path()], "only the call the kill ended");
        assert!(!reserved.exists(), "an empty reservation goes");
        assert!(!day.join("reserved.json").exists());
        assert!(!crate::files::part_path(&cut).exists());
        let cut: serde_json::Value = serde_json::from_slice(&std::fs::read(&cut).unwrap()).unwrap();
        assert_eq!(cut["end_reason"], "error");
        assert_eq!(metrics.recovered_files.load(Relaxed), 1);
    }

    /// A run killed between naming a call's files and making them: the
    /// completed record keeps only the names of files that are there.
    #[test]
    fn recovery_forgets_the_names_of_files_never_made() {
        let dir = tempfile::tempdir().unwrap();
        let day = dir.path().join("2026-12-04");
        std::fs::create_dir(&day).unwrap();
        // Named from another working folder: only the file name counts.
        let named = |file: &str| format!("elsewhere/2026-12-04/cut.{file}");
        std::fs::write(day.join("cut.R.wav"), b"RIFF").unwrap();
        std::fs::write(day.join("cut.R.raw.part"), b"").unwrap();
        let mut record: serde_json::Value =
            serde_json::from_slice(&record_text("cut", None)).unwrap();
        record["stereo"] = named("stereo.wav").into();
        record["directions"] = serde_json::json!({
            "R": {
                "wav": [named("R.wav"), named("R.2.wav")],
                "bare": named("R.raw"),
                "raw": [{"payload_type": 99, "path": named("R.pt99.raw"), "reason": "no decoder"}],
            },
            "W": {"wav": [named("W.wav")], "bare": named("W.raw"), "raw": []},
        });
        let cut = day.join("cut.json");
        std::fs::write(part_path(&cut), serde_json::to_vec(&record).unwrap()).unwrap();

        recover(dir.path(), &Metrics::default());

        let cut: serde_json::Value = serde_json::from_slice(&std::fs::read(&cut).unwrap()).unwrap();
        assert_eq!(cut["end_reason"], "error");
        assert_eq!(cut["stereo"], serde_json::Value::Null);
        let (r, w) = (&cut["directions"]["R"], &cut["directions"]["W"]);
        assert_eq!(r["wav"], serde_json::json!([named("R.wav")]));
        assert_eq!(r["bare"], named("R.raw"), "made: recovered under its name");
        assert_eq!(r["raw"], serde_json::json!([]));
        assert_eq!(w["wav"], serde_json::json!([]));
        assert_eq!(w["bare"], serde_json::Value::Null);
    }
}
