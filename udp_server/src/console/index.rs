//! The recordings index: one compact row per ended call, kept in memory so
//! that the console searches 100,000 calls by linear scan in milliseconds.
//! Rebuilt at start from the JSON records on disk (in a background task,
//! [`load`]), added to as calls end ([`Index::add`]). Sans-IO apart from
//! [`load`]: search and parsing are plain functions over rows.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{PoisonError, RwLock};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::end::EndReason;
use crate::record::CallRecord;

/// Rows a search answers at most.
pub const MAX_RESULTS: usize = 500;
/// Records between two progress lines in the log while loading.
const PROGRESS_EVERY: u64 = 10_000;

/// One ended call, as the search sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Unix seconds.
    pub start: i64,
    pub duration_ms: u32,
    /// Index in [`EndReason::ALL`], or `u8::MAX` when the record has none.
    pub end_reason: u8,
    pub uuid: Box<str>,
    pub caller: Box<str>,
    pub callee: Box<str>,
    pub call_id: Box<str>,
    pub sender: Box<str>,
    /// The record's own path: the only way to a call's files.
    pub record: Box<Path>,
}

/// What a search asks; every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Query {
    /// Part of the caller or the callee.
    pub number: Option<String>,
    /// Part of the SIP Call-ID or of the UUID.
    pub call_id: Option<String>,
    /// First day, `YYYY-MM-DD` (UTC).
    pub from: Option<String>,
    /// Last day, `YYYY-MM-DD` (UTC), included.
    pub to: Option<String>,
    /// `bye`, `timeout`, `shutdown` or `error`.
    pub reason: Option<String>,
    /// Seconds.
    pub min_duration: Option<f64>,
    pub max_duration: Option<f64>,
}

/// Why a query cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A date that is not `YYYY-MM-DD`.
    #[error("a date is YYYY-MM-DD, not {0:?}")]
    Date(String),
    /// An end reason this receiver does not write.
    #[error("the end reason is bye, timeout, shutdown or error, not {0:?}")]
    Reason(String),
}

/// A row as the console gets it.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    pub uuid: String,
    pub caller: String,
    pub callee: String,
    pub call_id: String,
    pub sender: String,
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    pub duration: f64,
    pub end_reason: Option<&'static str>,
}

/// A query made ready to test rows: dates as seconds, text lowercased.
#[derive(Debug, Default)]
struct Filter {
    number: Option<String>,
    call_id: Option<String>,
    from: Option<i64>,
    until: Option<i64>,
    reason: Option<u8>,
    min_ms: Option<u64>,
    max_ms: Option<u64>,
}

impl Filter {
    fn of(query: &Query) -> Result<Filter, QueryError> {
        let text = |value: &Option<String>| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_lowercase)
        };
        let day = |value: &Option<String>| -> Result<Option<i64>, QueryError> {
            match value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(day) => day_start(day)
                    .map(Some)
                    .ok_or_else(|| QueryError::Date(day.to_owned())),
            }
        };
        let reason = match query.reason.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(name) => Some(
                EndReason::ALL
                    .iter()
                    .position(|reason| reason.name() == name)
                    .ok_or_else(|| QueryError::Reason(name.to_owned()))? as u8,
            ),
        };
        let ms = |seconds: Option<f64>| {
            seconds
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| (s * 1000.0) as u64)
        };
        Ok(Filter {
            number: text(&query.number),
            call_id: text(&query.call_id),
            from: day(&query.from)?,
            until: day(&query.to)?.map(|day| day + 86_400),
            reason,
            min_ms: ms(query.min_duration),
            max_ms: ms(query.max_duration),
        })
    }

    fn matches(&self, row: &Row) -> bool {
        let contains = |haystack: &str, needle: &str| {
            haystack.len() >= needle.len() && haystack.to_lowercase().contains(needle)
        };
        self.from.map_or(true, |from| row.start >= from)
            && self.until.map_or(true, |until| row.start < until)
            && self.reason.map_or(true, |reason| row.end_reason == reason)
            && self
                .min_ms
                .map_or(true, |min| u64::from(row.duration_ms) >= min)
            && self
                .max_ms
                .map_or(true, |max| u64::from(row.duration_ms) <= max)
            && self.number.as_deref().map_or(true, |number| {
                contains(&row.caller, number) || contains(&row.callee, number)
            })
            && self.call_id.as_deref().map_or(true, |id| {
                contains(&row.call_id, id) || contains(&row.uuid, id)
            })
    }
}

/// Unix seconds at the start of `YYYY-MM-DD`, UTC.
fn day_start(day: &str) -> Option<i64> {
    let mut parts = day.splitn(3, '-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let date: u8 = parts.next()?.parse().ok()?;
    let month = time::Month::try_from(month).ok()?;
    let date = time::Date::from_calendar_date(year, month, date).ok()?;
    Some(date.midnight().assume_utc().unix_timestamp())
}

/// The rows of every ended call this receiver knows.
#[derive(Debug, Default)]
pub struct Index {
    rows: RwLock<Rows>,
    /// Set once the records on disk are all read.
    loaded: AtomicBool,
    /// Records read from disk so far.
    read: AtomicU64,
}

#[derive(Debug, Default)]
struct Rows {
    rows: Vec<Row>,
    /// UUID to its latest row.
    by_uuid: HashMap<Box<str>, usize>,
}

impl Rows {
    /// Adds `row`, or replaces the row of the same UUID when `replace`.
    fn put(&mut self, row: Row, replace: bool) {
        match self.by_uuid.get(&row.uuid) {
            Some(&at) if replace => self.rows[at] = row,
            Some(_) => {}
            None => {
                self.by_uuid.insert(row.uuid.clone(), self.rows.len());
                self.rows.push(row);
            }
        }
    }
}

impl Index {
    /// A call that just ended.
    pub fn add(&self, record: &CallRecord) {
        if let Some(row) = row_of_record(record) {
            self.write().put(row, true);
        }
    }

    /// A row read from disk: a call that ended since the load began wins.
    pub fn load_row(&self, row: Row) {
        self.write().put(row, false);
        self.read.fetch_add(1, Relaxed);
    }

    pub fn len(&self) -> usize {
        self.rows
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .rows
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn loaded(&self) -> bool {
        self.loaded.load(Relaxed)
    }

    /// The record of the call with this UUID.
    pub fn record_of(&self, uuid: &str) -> Option<PathBuf> {
        let rows = self.rows.read().unwrap_or_else(PoisonError::into_inner);
        let at = *rows.by_uuid.get(uuid)?;
        Some(rows.rows[at].record.to_path_buf())
    }

    /// The calls `query` matches, newest first, at most [`MAX_RESULTS`]; and
    /// how many matched in all.
    pub fn search(&self, query: &Query) -> Result<(Vec<Found>, usize), QueryError> {
        let filter = Filter::of(query)?;
        let rows = self.rows.read().unwrap_or_else(PoisonError::into_inner);
        let mut hits: Vec<&Row> = rows.rows.iter().filter(|row| filter.matches(row)).collect();
        let total = hits.len();
        hits.sort_unstable_by(|a, b| b.start.cmp(&a.start).then_with(|| b.uuid.cmp(&a.uuid)));
        hits.truncate(MAX_RESULTS);
        Ok((hits.into_iter().map(found).collect(), total))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Rows> {
        self.rows.write().unwrap_or_else(PoisonError::into_inner)
    }
}

fn found(row: &Row) -> Found {
    Found {
        uuid: row.uuid.to_string(),
        caller: row.caller.to_string(),
        callee: row.callee.to_string(),
        call_id: row.call_id.to_string(),
        sender: row.sender.to_string(),
        start: OffsetDateTime::from_unix_timestamp(row.start).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        duration: f64::from(row.duration_ms) / 1000.0,
        end_reason: EndReason::ALL
            .get(usize::from(row.end_reason))
            .map(|reason| reason.name()),
    }
}

fn duration_ms(start: OffsetDateTime, end: OffsetDateTime) -> u32 {
    let ms = (end - start).whole_milliseconds().max(0);
    u32::try_from(ms).unwrap_or(u32::MAX)
}

fn reason_index(name: Option<&str>) -> u8 {
    name.and_then(|name| EndReason::ALL.iter().position(|r| r.name() == name))
        .map_or(u8::MAX, |at| at as u8)
}

fn row_of_record(record: &CallRecord) -> Option<Row> {
    let end = record.end?;
    Some(Row {
        start: record.start.unix_timestamp(),
        duration_ms: duration_ms(record.start, end),
        end_reason: reason_index(record.end_reason.map(EndReason::name)),
        uuid: record.uuid.as_str().into(),
        caller: record.caller.as_deref().unwrap_or("").into(),
        callee: record.callee.as_deref().unwrap_or("").into(),
        call_id: record.call_id.as_deref().unwrap_or("").into(),
        sender: record.sender.as_str().into(),
        record: record.record.clone().into_boxed_path(),
    })
}

/// The fields of a record on disk the index keeps.
#[derive(Debug, Deserialize)]
struct Head {
    uuid: String,
    caller: Option<String>,
    callee: Option<String>,
    call_id: Option<String>,
    #[serde(default)]
    sender: String,
    #[serde(with = "time::serde::rfc3339")]
    start: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    end: Option<OffsetDateTime>,
    end_reason: Option<String>,
}

/// The row of a record read from `path`; `None` for anything that is not the
/// record of an ended call.
pub fn parse_row(bytes: &[u8], path: &Path) -> Option<Row> {
    let head: Head = serde_json::from_slice(bytes).ok()?;
    let end = head.end?;
    Some(Row {
        start: head.start.unix_timestamp(),
        duration_ms: duration_ms(head.start, end),
        end_reason: reason_index(head.end_reason.as_deref()),
        uuid: head.uuid.into(),
        caller: head.caller.unwrap_or_default().into(),
        callee: head.callee.unwrap_or_default().into(),
        call_id: head.call_id.unwrap_or_default().into(),
        sender: head.sender.into(),
        record: path.to_path_buf().into_boxed_path(),
    })
}

/// Whether a folder under the record folder holds a day's records.
fn is_day(name: &str) -> bool {
    name.len() == 10 && day_start(name).is_some()
}

/// Reads every record under `record_dir` (`YYYY-MM-DD/<uuid>.json`) into
/// `index`, logging progress. Blocking: run it on a blocking thread.
pub fn load(record_dir: &Path, index: &Index) {
    let started = std::time::Instant::now();
    tracing::info!(dir = %record_dir.display(), "indexing the recordings for the console");
    let mut days: Vec<PathBuf> = match std::fs::read_dir(record_dir) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(is_day))
            .map(|e| e.path())
            .collect(),
        Err(error) => {
            tracing::warn!(dir = %record_dir.display(), %error, "cannot index the recordings");
            Vec::new()
        }
    };
    days.sort();
    let mut read = 0u64;
    for day in days {
        let Ok(entries) = std::fs::read_dir(&day) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().map_or(true, |ext| ext != "json") {
                continue;
            }
            let Some(row) = std::fs::read(&path)
                .ok()
                .and_then(|bytes| parse_row(&bytes, &path))
            else {
                continue;
            };
            index.load_row(row);
            read += 1;
            if read % PROGRESS_EVERY == 0 {
                tracing::info!(records = read, "indexing the recordings");
            }
        }
    }
    index.loaded.store(true, Relaxed);
    tracing::info!(
        records = read,
        calls = index.len(),
        secs = started.elapsed().as_secs_f64(),
        "recordings indexed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: u32, start: i64, caller: &str, reason: u8, ms: u32) -> Row {
        Row {
            start,
            duration_ms: ms,
            end_reason: reason,
            uuid: format!("00000000-0000-4000-8000-{n:012}").into(),
            caller: caller.into(),
            callee: "2000".into(),
            call_id: format!("call-{n}@pbx").into(),
            sender: "127.0.0.1:5000".into(),
            record: PathBuf::from(format!("/r/{n}.json")).into_boxed_path(),
        }
    }

    #[test]
    fn a_record_on_disk_becomes_a_row() {
        let json = br#"{"uuid":"u1","caller":"100","callee":"200","call_id":"abc","sender":"1.2.3.4:5","mode":"data",
            "start":"2026-12-04T10:00:00Z","end":"2026-12-04T10:00:03.5Z","end_reason":"timeout","directions":{}}"#;
        let row = parse_row(json, Path::new("/r/u1.json")).unwrap();
        assert_eq!(row.duration_ms, 3500);
        assert_eq!(row.end_reason, 1);
        assert_eq!(&*row.caller, "100");
        assert_eq!(row.start, day_start("2026-12-04").unwrap() + 36_000);
        // In progress (no end), or not a record at all.
        assert!(parse_row(
            br#"{"uuid":"u","start":"2026-12-04T10:00:00Z","end":null}"#,
            Path::new("x")
        )
        .is_none());
        assert!(parse_row(b"\xff not json", Path::new("x")).is_none());
    }

    #[test]
    fn search_filters_by_each_field_newest_first() {
        let index = Index::default();
        let day = day_start("2026-12-04").unwrap();
        index.load_row(row(1, day + 10, "+4930123", 0, 5_000));
        index.load_row(row(2, day + 20, "+4930999", 1, 65_000));
        index.load_row(row(3, day - 10, "+4930123", 0, 1_000));
        let search = |query: Query| -> Vec<String> {
            index
                .search(&query)
                .unwrap()
                .0
                .into_iter()
                .map(|f| f.call_id)
                .collect()
        };
        assert_eq!(
            search(Query::default()),
            ["call-2@pbx", "call-1@pbx", "call-3@pbx"]
        );
        let by_number = Query {
            number: Some("30123".into()),
            ..Query::default()
        };
        assert_eq!(search(by_number), ["call-1@pbx", "call-3@pbx"]);
        let by_day = Query {
            from: Some("2026-12-04".into()),
            to: Some("2026-12-04".into()),
            ..Query::default()
        };
        assert_eq!(search(by_day), ["call-2@pbx", "call-1@pbx"]);
        let by_reason = Query {
            reason: Some("timeout".into()),
            ..Query::default()
        };
        assert_eq!(search(by_reason), ["call-2@pbx"]);
        let by_length = Query {
            min_duration: Some(2.0),
            max_duration: Some(60.0),
            ..Query::default()
        };
        assert_eq!(search(by_length), ["call-1@pbx"]);
        let by_id = Query {
            call_id: Some("CALL-3".into()),
            ..Query::default()
        };
        assert_eq!(search(by_id), ["call-3@pbx"]);
        let bad = Query {
            from: Some("04.12.2026".into()),
            ..Query::default()
        };
        assert!(matches!(index.search(&bad), Err(QueryError::Date(_))));
        let bad = Query {
            reason: Some("hangup".into()),
            ..Query::default()
        };
        assert!(matches!(index.search(&bad), Err(QueryError::Reason(_))));
    }

    #[test]
    fn a_call_that_ends_replaces_its_row_from_disk_but_not_the_reverse() {
        let index = Index::default();
        index.load_row(row(1, 100, "a", 0, 1));
        let mut newer = row(1, 100, "b", 0, 1);
        index.write().put(newer.clone(), true);
        newer.caller = "c".into();
        index.load_row(newer);
        assert_eq!(index.len(), 1);
        assert_eq!(index.search(&Query::default()).unwrap().0[0].caller, "b");
        assert_eq!(
            index
                .record_of("00000000-0000-4000-8000-000000000001")
                .unwrap(),
            Path::new("/r/1.json")
        );
        assert!(index.record_of("../../etc/passwd").is_none());
    }

    #[test]
    fn the_index_is_rebuilt_from_the_records_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let day = dir.path().join("2026-12-04");
        std::fs::create_dir_all(&day).unwrap();
        let record = |uuid: &str, end: &str| {
            format!(
                r#"{{"uuid":"{uuid}","caller":"100","callee":"200","sender":"s","start":"2026-12-04T10:00:00Z","end":{end},"end_reason":"bye"}}"#
            )
        };
        std::fs::write(day.join("a.json"), record("a", r#""2026-12-04T10:00:01Z""#)).unwrap();
        std::fs::write(day.join("b.json"), record("b", r#""2026-12-04T10:00:02Z""#)).unwrap();
        // In progress, broken, not a record, not a day's folder.
        std::fs::write(day.join("c.json"), record("c", "null")).unwrap();
        std::fs::write(day.join("d.json"), b"{").unwrap();
        std::fs::write(day.join("a.wav"), b"RIFF").unwrap();
        std::fs::create_dir_all(dir.path().join("outbox")).unwrap();
        std::fs::write(
            dir.path().join("outbox/e.json"),
            record("e", r#""2026-12-04T10:00:02Z""#),
        )
        .unwrap();
        let index = Index::default();
        assert!(!index.loaded());
        load(dir.path(), &index);
        assert!(index.loaded());
        assert_eq!(index.len(), 2);
        assert_eq!(index.record_of("b").unwrap(), day.join("b.json"));
        assert!(index.record_of("e").is_none());
    }

    /// The issue's size: 100,000 records searched by linear scan. Measured
    /// and logged, not asserted (the machine is shared).
    #[test]
    fn a_hundred_thousand_rows_are_searched() {
        let index = Index::default();
        for n in 0..100_000u32 {
            index.load_row(row(
                n,
                i64::from(n),
                &format!("+49{n:08}"),
                (n % 4) as u8,
                n,
            ));
        }
        let started = std::time::Instant::now();
        let query = Query {
            number: Some("4900012".into()),
            reason: Some("bye".into()),
            ..Query::default()
        };
        let (found, total) = index.search(&query).unwrap();
        let all = index.search(&Query::default()).unwrap();
        eprintln!("two searches over 100,000 rows: {:?}", started.elapsed());
        assert_eq!(total, 250, "n = 12000..12999, every fourth");
        assert_eq!(found.len(), 250);
        assert_eq!(all.1, 100_000);
        assert_eq!(all.0.len(), MAX_RESULTS);
    }
}
