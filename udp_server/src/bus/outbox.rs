//! One target's bounded on-disk outbox: the events waiting to be delivered,
//! oldest first.
//!
//! On disk, in the outbox's folder:
//! * segment files `NNNNNNNNNNNNNNNNNNNN.jsonl` (a 20-digit number), each a run
//!   of complete JSON lines `{"id":..,"at":..,"event":{..}}`, appended with one
//!   `write` each and never rewritten; a new segment begins when the last one
//!   has reached the segment size;
//! * `cursor`: `SEGMENT OFFSET`, where the first event not yet delivered
//!   starts, replaced whole (written aside, then renamed) after each delivery.
//!
//! Why this is crash-safe without an fsync per event: a `kill -9` loses nothing
//! the kernel already has, so the only damage it can do is a line cut short by
//! a write in progress, which [`Outbox::open`] cuts off; a cursor that lags
//! behind (the rename not yet done) means some events are delivered twice,
//! never that one is skipped. Delivered segments are deleted.
//!
//! Bounds: the segments' total size stays under the outbox's maximum by
//! deleting the oldest segment, whose waiting events are counted as dropped.
//! Memory holds one entry per segment (a segment is at least an eighth of the
//! maximum, or one event) and the event at the head, never the backlog.
//!
//! The outbox does plain file I/O and no networking: it is driven by
//! [`push`](Outbox::push), [`peek`](Outbox::peek) and [`ack`](Outbox::ack)
//! and unit-tested on a temporary folder.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::files::write_whole;

/// Segments an outbox is split into, at least (for dropping the oldest in
/// steps of about an eighth of the maximum).
const SEGMENTS: u64 = 8;
/// The largest segment file, whatever the maximum.
const MAX_SEGMENT_BYTES: u64 = 16 << 20;
const CURSOR: &str = "cursor";
const CURSOR_TMP: &str = "cursor.tmp";
const SUFFIX: &str = ".jsonl";

/// A failure of the outbox's files.
#[derive(Debug, thiserror::Error)]
#[error("outbox {}: {source}", path.display())]
pub struct OutboxError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> OutboxError + '_ {
    move |source| OutboxError {
        path: path.to_owned(),
        source,
    }
}

/// An event as it is stored: its id, when it entered the outbox (Unix
/// milliseconds) and the event itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    pub id: String,
    pub at: u64,
    pub event: serde_json::Value,
}

/// Where an event lies: its segment, its first byte, the byte after its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    segment: u64,
    offset: u64,
    next: u64,
}

/// The event at the head of the outbox, as [`Outbox::peek`] gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub stored: Stored,
    position: Position,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    number: u64,
    bytes: u64,
    lines: u64,
}

/// What a [`push`](Outbox::push) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Waiting events dropped (the oldest) to stay under the maximum.
    pub dropped: u64,
}

/// One target's outbox; see the module documentation.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Oldest first; the last is the one appended to. Never empty.
    segments: VecDeque<Segment>,
    writer: File,
    /// The segment and offset of the first event not yet delivered.
    cursor: (u64, u64),
    /// Lines of the cursor's segment before the cursor.
    cursor_lines: u64,
    /// Reads the cursor's segment from the cursor on.
    reader: Option<(u64, BufReader<File>)>,
    head: Option<Entry>,
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}{SUFFIX}"))
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, holding at most about
    /// `max_bytes`: cuts off a line left half-written by a crash, forgets
    /// what was delivered and resumes at the cursor.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Outbox, OutboxError> {
        fs::create_dir_all(dir).map_err(at(dir))?;
        let mut numbers = Vec::new();
        for entry in fs::read_dir(dir).map_err(at(dir))? {
            let entry = entry.map_err(at(dir))?;
            let name = entry.file_name();
            let Some(number) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            numbers.push(number);
        }
        numbers.sort_unstable();
        let cursor = fs::read_to_string(dir.join(CURSOR))
            .ok()
            .and_then(|text| {
                let (segment, offset) = text.trim().split_once(' ')?;
                Some((segment.parse::<u64>().ok()?, offset.parse::<u64>().ok()?))
            })
            .filter(|(segment, _)| numbers.contains(segment));
        let mut cursor = cursor.unwrap_or((numbers.first().copied().unwrap_or(0), 0));
        let mut segments = VecDeque::new();
        let mut cursor_lines = 0;
        for number in numbers {
            let path = segment_path(dir, number);
            if number < cursor.0 {
                // Delivered before the crash; its deletion had not happened.
                fs::remove_file(&path).map_err(at(&path))?;
                continue;
            }
            let (bytes, lines, before) = scan(&path, (number == cursor.0).then_some(cursor.1))?;
            if number == cursor.0 {
                cursor.1 = cursor.1.min(bytes);
                cursor_lines = before;
            }
            segments.push_back(Segment {
                number,
                bytes,
                lines,
            });
        }
        if segments.is_empty() {
            segments.push_back(Segment {
                number: cursor.0,
                bytes: 0,
                lines: 0,
            });
        }
        let last = segments.back().map_or(0, |s| s.number);
        let path = segment_path(dir, last);
        let writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(at(&path))?;
        Ok(Outbox {
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes: (max_bytes / SEGMENTS).clamp(1, MAX_SEGMENT_BYTES),
            segments,
            writer,
            cursor,
            cursor_lines,
            reader: None,
            head: None,
        })
    }

    /// Events waiting.
    pub fn waiting(&self) -> u64 {
        let lines: u64 = self.segments.iter().map(|s| s.lines).sum();
        lines.saturating_sub(self.cursor_lines)
    }

    /// Bytes of the events waiting.
    pub fn waiting_bytes(&self) -> u64 {
        let bytes: u64 = self.segments.iter().map(|s| s.bytes).sum();
        bytes.saturating_sub(self.cursor.1)
    }

    /// Appends `stored`; drops the oldest waiting events if the outbox has
    /// grown past its maximum.
    pub fn push(&mut self, stored: &Stored) -> Result<Pushed, OutboxError> {
        let mut line = serde_json::to_vec(stored).map_err(|e| OutboxError {
            path: self.dir.clone(),
            source: e.into(),
        })?;
        line.push(b'\n');
        let last = self.last();
        if last.bytes >= self.segment_bytes {
            let number = last.number + 1;
            let path = segment_path(&self.dir, number);
            self.writer = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(at(&path))?;
            self.segments.push_back(Segment {
                number,
                bytes: 0,
                lines: 0,
            });
        }
        let number = self.last().number;
        self.writer
            .write_all(&line)
            .map_err(at(&segment_path(&self.dir, number)))?;
        if let Some(last) = self.segments.back_mut() {
            last.bytes += line.len() as u64;
            last.lines += 1;
        }
        let mut pushed = Pushed::default();
        while self.segments.len() > 1 && self.total_bytes() > self.max_bytes {
            pushed.dropped += self.drop_oldest()?;
        }
        Ok(pushed)
    }

    /// The oldest event waiting, if any; the same one until it is
    /// [`ack`](Outbox::ack)ed or dropped. A line that does not parse (which
    /// only a damaged disk makes) is skipped with a warning.
    pub fn peek(&mut self) -> Result<Option<Entry>, OutboxError> {
        if let Some(head) = &self.head {
            return Ok(Some(head.clone()));
        }
        let mut line = Vec::new();
        loop {
            let (segment, offset) = self.cursor;
            let path = segment_path(&self.dir, segment);
            let reader = match &mut self.reader {
                Some((number, reader)) if *number == segment => reader,
                _ => {
                    let mut file = File::open(&path).map_err(at(&path))?;
                    file.seek(SeekFrom::Start(offset)).map_err(at(&path))?;
                    &mut self.reader.insert((segment, BufReader::new(file))).1
                }
            };
            line.clear();
            let read = reader.read_until(b'\n', &mut line).map_err(at(&path))?;
            if read == 0 || line.last() != Some(&b'\n') {
                // The end of what is written (a part line cannot be seen: the
                // writer appends whole lines under the same lock).
                self.reader = None;
                if self.segments.len() > 1 && self.segments[0].number == segment {
                    self.forget_oldest()?;
                    continue;
                }
                return Ok(None);
            }
            let position = Position {
                segment,
                offset,
                next: offset + line.len() as u64,
            };
            match serde_json::from_slice::<Stored>(&line) {
                Ok(stored) => {
                    let entry = Entry { stored, position };
                    self.head = Some(entry.clone());
                    return Ok(Some(entry));
                }
                Err(error) => {
                    tracing::warn!(outbox = %self.dir.display(), segment, offset, %error, "outbox: skipping a damaged line");
                    self.advance(position)?;
                }
            }
        }
    }

    /// `entry` was delivered: the cursor moves past it. An entry that was
    /// dropped meanwhile changes nothing.
    pub fn ack(&mut self, entry: &Entry) -> Result<(), OutboxError> {
        if self.head.as_ref().map(|h| h.position) != Some(entry.position) {
            return Ok(());
        }
        self.head = None;
        self.advance(entry.position)
    }

    fn advance(&mut self, position: Position) -> Result<(), OutboxError> {
        self.cursor = (position.segment, position.next);
        self.cursor_lines += 1;
        self.write_cursor()
    }

    fn write_cursor(&self) -> Result<(), OutboxError> {
        let path = self.dir.join(CURSOR);
        let line = format!("{} {}\n", self.cursor.0, self.cursor.1);
        write_whole(&path, &self.dir.join(CURSOR_TMP), line.as_bytes()).map_err(at(&path))
    }

    fn last(&self) -> Segment {
        self.segments.back().copied().unwrap_or(Segment {
            number: 0,
            bytes: 0,
            lines: 0,
        })
    }

    fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Deletes the oldest segment, which is not the last; returns the waiting
    /// events it held.
    fn drop_oldest(&mut self) -> Result<u64, OutboxError> {
        let oldest = self.segments[0];
        let dropped = oldest.lines.saturating_sub(self.cursor_lines);
        self.head = None;
        self.forget_oldest()?;
        Ok(dropped)
    }

    /// Deletes the oldest segment (delivered or dropped) and moves the cursor
    /// to the start of the next.
    fn forget_oldest(&mut self) -> Result<(), OutboxError> {
        let Some(oldest) = self.segments.pop_front() else {
            return Ok(());
        };
        self.reader = None;
        let next = self
            .segments
            .front()
            .map_or(oldest.number + 1, |s| s.number);
        self.cursor = (next, 0);
        self.cursor_lines = 0;
        self.write_cursor()?;
        let path = segment_path(&self.dir, oldest.number);
        match fs::remove_file(&path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(at(&path)(error)),
            _ => Ok(()),
        }
    }
}

/// Reads a segment: cuts off a last line without its newline (a write cut
/// short by a crash) and returns its bytes, its lines and the lines before
/// `cursor`.
fn scan(path: &Path, cursor: Option<u64>) -> Result<(u64, u64, u64), OutboxError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(at(path))?;
    let (mut bytes, mut lines, mut before, mut complete) = (0u64, 0u64, 0u64, 0u64);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buffer).map_err(at(path))?;
        if n == 0 {
            break;
        }
        for (i, byte) in buffer[..n].iter().enumerate() {
            if *byte == b'\n' {
                lines += 1;
                complete = bytes + i as u64 + 1;
                if cursor.is_some_and(|c| complete <= c) {
                    before += 1;
                }
            }
        }
        bytes += n as u64;
    }
    if complete < bytes {
        tracing::warn!(path = %path.display(), cut = bytes - complete, "outbox: cutting off a line a crash left unfinished");
        file.set_len(complete).map_err(at(path))?;
    }
    Ok((complete, lines, before))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(n: u64) -> Stored {
        Stored {
            id: format!("id-{n}"),
            at: n,
            event: serde_json::json!({"event": "dtmf", "n": n, "pad": "x".repeat(40)}),
        }
    }

    fn drain(outbox: &mut Outbox) -> Vec<u64> {
        let mut seen = Vec::new();
        while let Some(entry) = outbox.peek().unwrap() {
            seen.push(entry.stored.at);
            outbox.ack(&entry).unwrap();
        }
        seen
    }

    #[test]
    fn events_come_out_in_order_once_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(outbox.peek().unwrap(), None);
        for n in 0..5 {
            assert_eq!(outbox.push(&stored(n)).unwrap().dropped, 0);
        }
        assert_eq!(outbox.waiting(), 5);
        let first = outbox.peek().unwrap().unwrap();
        assert_eq!(first.stored, stored(0));
        assert_eq!(
            outbox.peek().unwrap().unwrap(),
            first,
            "the same until acked"
        );
        outbox.ack(&first).unwrap();
        outbox.ack(&first).unwrap();
        assert_eq!(outbox.waiting(), 4);
        assert_eq!(drain(&mut outbox), [1, 2, 3, 4]);
        assert_eq!((outbox.waiting(), outbox.waiting_bytes()), (0, 0));
        outbox.push(&stored(5)).unwrap();
        assert_eq!(drain(&mut outbox), [5]);
    }

    #[test]
    fn a_reopened_outbox_resumes_at_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        // Small segments, so the cursor crosses several.
        let mut outbox = Outbox::open(dir.path(), 2000).unwrap();
        for n in 0..12 {
            outbox.push(&stored(n)).unwrap();
        }
        for _ in 0..7 {
            let entry = outbox.peek().unwrap().unwrap();
            outbox.ack(&entry).unwrap();
        }
        // Peeked but not acked: delivered again after a restart.
        assert_eq!(outbox.peek().unwrap().unwrap().stored.at, 7);
        drop(outbox);
        let mut outbox = Outbox::open(dir.path(), 2000).unwrap();
        assert_eq!(outbox.waiting(), 5);
        outbox.push(&stored(12)).unwrap();
        assert_eq!(drain(&mut outbox), [7, 8, 9, 10, 11, 12]);
        drop(outbox);
        let mut outbox = Outbox::open(dir.path(), 2000).unwrap();
        assert_eq!(drain(&mut outbox), Vec::<u64>::new());
        let files = fs::read_dir(dir.path()).unwrap().count();
        assert!(files <= 2, "delivered segments are deleted: {files} files");
    }

    #[test]
    fn a_line_cut_short_by_a_crash_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        outbox.push(&stored(0)).unwrap();
        outbox.push(&stored(1)).unwrap();
        drop(outbox);
        let path = segment_path(dir.path(), 0);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"id\":\"id-2\",\"at\":2,\"ev").unwrap();
        drop(file);
        let mut outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(outbox.waiting(), 2);
        outbox.push(&stored(3)).unwrap();
        assert_eq!(drain(&mut outbox), [0, 1, 3]);
    }

    #[test]
    fn a_damaged_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        outbox.push(&stored(0)).unwrap();
        drop(outbox);
        let path = segment_path(dir.path(), 0);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"not json\n").unwrap();
        drop(file);
        let mut outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        outbox.push(&stored(1)).unwrap();
        assert_eq!(drain(&mut outbox), [0, 1]);
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let line = serde_json::to_vec(&stored(0)).unwrap().len() as u64 + 1;
        let max = line * 10;
        let mut outbox = Outbox::open(dir.path(), max).unwrap();
        let mut dropped = 0;
        for n in 0..100 {
            dropped += outbox.push(&stored(n)).unwrap().dropped;
            assert!(outbox.waiting_bytes() <= max, "{}", outbox.waiting_bytes());
        }
        assert_eq!(dropped + outbox.waiting(), 100);
        assert!(dropped >= 90, "{dropped}");
        let left = drain(&mut outbox);
        assert_eq!(left.len() as u64 + dropped, 100);
        assert_eq!(*left.last().unwrap(), 99, "the newest are kept");
        assert!(left.windows(2).all(|w| w[1] == w[0] + 1), "{left:?}");
    }

    #[test]
    fn dropping_the_head_in_flight_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let line = serde_json::to_vec(&stored(0)).unwrap().len() as u64 + 1;
        let mut outbox = Outbox::open(dir.path(), line * 3).unwrap();
        outbox.push(&stored(0)).unwrap();
        let in_flight = outbox.peek().unwrap().unwrap();
        let mut dropped = 0;
        for n in 1..10 {
            dropped += outbox.push(&stored(n)).unwrap().dropped;
        }
        assert!(dropped > 0);
        outbox.ack(&in_flight).unwrap();
        let left = drain(&mut outbox);
        assert_eq!(left.len() as u64 + dropped, 10);
        assert_eq!(*left.last().unwrap(), 9);
    }

    #[test]
    fn a_dropped_count_survives_a_restart_of_a_partly_delivered_segment() {
        let dir = tempfile::tempdir().unwrap();
        let line = serde_json::to_vec(&stored(0)).unwrap().len() as u64 + 1;
        // Segments of about two lines.
        let mut outbox = Outbox::open(dir.path(), line * 16).unwrap();
        for n in 0..4 {
            outbox.push(&stored(n)).unwrap();
        }
        let entry = outbox.peek().unwrap().unwrap();
        outbox.ack(&entry).unwrap();
        drop(outbox);
        let mut outbox = Outbox::open(dir.path(), line * 16).unwrap();
        assert_eq!(outbox.waiting(), 3);
        let mut dropped = 0;
        for n in 4..40 {
            dropped += outbox.push(&stored(n)).unwrap().dropped;
        }
        assert_eq!(dropped + outbox.waiting(), 39);
    }
}
