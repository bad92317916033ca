//! The upload queue, on disk: one small JSON file per ended call whose files
//! are still to be stored, named by a sequence number so that they go out in
//! the order the calls ended. A job file is written whole or not at all (a
//! temporary file renamed), before anything is uploaded, and removed only once
//! every object of the call is stored and verified: a receiver killed at any
//! point finds its jobs again at the next start and stores them again under
//! the same keys, with the same content. A job a full disk keeps from being
//! written leaves an empty marker file instead, naming the call's record
//! ([`Queue::mark`]), which the next start turns into the job.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

use crate::files::write_whole;

/// One ended call to store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub uuid: String,
    /// The call's JSON record: stored last, naming the objects.
    pub record: PathBuf,
    /// The call's other files (WAVs, raw payloads).
    pub files: Vec<PathBuf>,
    /// `YYYY/MM/DD` of the call's start (UTC): part of every key.
    pub day: String,
    /// The call's part (a pool's failover): 2 and more go under their own
    /// names (see [`super::object_name`]). Jobs queued before parts existed are part 1.
    #[serde(default = "first_part")]
    pub part: u32,
}

fn first_part() -> u32 {
    1
}

impl Job {
    /// The job of the call whose record is at `record`: every job is made
    /// here, from the record in memory or, at a start, from one on disk, so
    /// both give the same keys.
    pub fn new(
        uuid: String,
        record: PathBuf,
        files: Vec<PathBuf>,
        start: time::OffsetDateTime,
        part: u32,
    ) -> Job {
        let start = start.to_offset(time::UtcOffset::UTC);
        Job {
            uuid,
            record,
            files,
            day: format!(
                "{:04}/{:02}/{:02}",
                start.year(),
                u8::from(start.month()),
                start.day()
            ),
            part,
        }
    }
}

/// A job waiting in the queue, with its file.
#[derive(Debug, Clone)]
pub struct Queued {
    pub path: PathBuf,
    pub job: Job,
}

/// A marker ([`Queue::mark`]) and the record it names.
pub type Marked = (PathBuf, PathBuf);

/// The queue's folder (`<record-dir>/.upload`).
#[derive(Debug)]
pub struct Queue {
    dir: PathBuf,
    /// The record folder the queue's folder is in: every marker names a
    /// record under it ([`Queue::mark`]).
    records: PathBuf,
    next: AtomicU64,
}

const SUFFIX: &str = ".job";
/// A job whose call's record was being written, or is kept to be written
/// (a full disk): the uploader does not take it until the record is there,
/// and the next start does.
const PREPARED: &str = "next";
/// A job given up on ([`Queue::fail`]): kept for a person to look at.
const FAILED: &str = "failed";
/// An empty file standing for a job that could not be written (a full
/// disk): its name says which record to queue ([`Queue::mark`]).
const MARKER: &str = ".unqueued";

impl Queue {
    /// Opens (creates) the queue in `dir`; new jobs are numbered after those there.
    pub fn open(dir: &Path) -> io::Result<Queue> {
        std::fs::create_dir_all(dir)?;
        // Prepared by a run killed, or stopped, before its record was
        // written: the start's recovery has completed the record by now (or
        // it was written; or it cannot be, and the uploader gives up on it).
        // A `.tmp` is a job a run was killed writing: never a whole one.
        for entry in std::fs::read_dir(dir)?.flatten() {
            let path = entry.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some(PREPARED) => std::fs::rename(&path, path.with_extension(&SUFFIX[1..]))?,
                Some("tmp") => std::fs::remove_file(&path)?,
                _ => {}
            }
        }
        let queue = Queue {
            dir: dir.to_owned(),
            records: dir.parent().unwrap_or(dir).to_owned(),
            next: AtomicU64::new(0),
        };
        // After the jobs set aside too (`.bad`, `.failed`): one set aside
        // again under its number would take the place of the first.
        let last = std::fs::read_dir(dir)?
            .flatten()
            .filter_map(|entry| entry.path().file_stem()?.to_str()?.parse::<u64>().ok())
            .max();
        queue.next.store(last.map_or(0, |n| n + 1), Relaxed);
        Ok(queue)
    }

    /// Adds a job (from any thread).
    pub fn push(&self, job: &Job) -> io::Result<()> {
        let prepared = self.prepare(job)?;
        self.commit(&prepared)
    }

    /// Writes a job the uploader does not take until [`Queue::commit`]
    /// (or the next start): made before the call's record is written, so
    /// that a kill between the two still leaves the call queued. Returns its file.
    pub fn prepare(&self, job: &Job) -> io::Result<PathBuf> {
        let n = self.next.fetch_add(1, Relaxed);
        let path = self.dir.join(format!("{n:020}.{PREPARED}"));
        let temporary = self.dir.join(format!("{n:020}.tmp"));
        let bytes = serde_json::to_vec(job).map_err(io::Error::other)?;
        write_whole(&path, &temporary, &bytes)?;
        Ok(path)
    }

    /// The prepared job's record is written: the uploader may take it.
    pub fn commit(&self, prepared: &Path) -> io::Result<()> {
        std::fs::rename(prepared, prepared.with_extension(&SUFFIX[1..]))
    }

    /// The jobs waiting, oldest first. A job file that cannot be read as a
    /// job (a damaged disk) is set aside as `.bad`, and its path returned in
    /// the second list, so that one bad file never stops the queue.
    pub fn pending(&self) -> io::Result<(Vec<Queued>, Vec<PathBuf>)> {
        let mut jobs = Vec::new();
        let mut bad = Vec::new();
        for path in self.files()? {
            match std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Job>(&bytes).ok())
            {
                Some(job) => jobs.push(Queued { path, job }),
                None => {
                    let aside = path.with_extension("bad");
                    std::fs::rename(&path, &aside)?;
                    bad.push(aside);
                }
            }
        }
        Ok((jobs, bad))
    }

    /// The job can never be done (its record is not on disk): set aside as
    /// `.failed`, out of the queue, so that the jobs after it go on. Returns
    /// where it is now.
    pub fn fail(&self, queued: &Queued) -> io::Result<PathBuf> {
        let aside = queued.path.with_extension(FAILED);
        std::fs::rename(&queued.path, &aside)?;
        Ok(aside)
    }

    /// The job is done: its file goes.
    pub fn done(&self, queued: &Queued) -> io::Result<()> {
        match std::fs::remove_file(&queued.path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    /// The job of the call whose record is (or will be) `record` cannot be
    /// written (a full disk): an empty file named after the record stands
    /// for it, which takes an inode and a directory entry but no data block,
    /// so it can be made where the job could not. The next start queues
    /// the record it names ([`Queue::marked`]). Returns the marker.
    pub fn mark(&self, record: &Path) -> io::Result<PathBuf> {
        let name = marker_name(&self.records, record).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is not a record under {}",
                    record.display(),
                    self.records.display()
                ),
            )
        })?;
        let path = self.dir.join(name);
        std::fs::File::create(&path)?;
        Ok(path)
    }

    /// The markers left ([`Queue::mark`]), oldest first, each with the
    /// record it names; a marker whose name does not name a record in the
    /// record folder (damaged, or crafted to reach out of it) is in the
    /// second list, untouched.
    pub fn marked(&self) -> io::Result<(Vec<Marked>, Vec<PathBuf>)> {
        let mut markers: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(MARKER))
            })
            .collect();
        markers.sort();
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for marker in markers {
            let record = marker
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| record_of_marker(&self.records, n));
            match record {
                Some(record) => good.push((marker, record)),
                None => bad.push(marker),
            }
        }
        Ok((good, bad))
    }

    /// The job files, in sequence order.
    fn files(&self) -> io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| sequence_of(path).is_some())
            .collect();
        files.sort();
        Ok(files)
    }
}

fn sequence_of(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_suffix(SUFFIX)?
        .parse()
        .ok()
}

/// `<day>.<record file name>.unqueued` for the record
/// `<records>/<day>/<record file name>`: `None` for a record elsewhere.
fn marker_name(records: &Path, record: &Path) -> Option<String> {
    let relative = record.strip_prefix(records).ok()?;
    let mut parts = relative.components();
    let (Some(day), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let (day, name) = (day.as_os_str().to_str()?, name.as_os_str().to_str()?);
    (is_day(day) && is_record_name(name)).then(|| format!("{day}.{name}{MARKER}"))
}

/// The record a marker's name stands for, only if it is a plain file name
/// in a day folder of `records`: what [`marker_name`] makes, and nothing
/// that could lead out of the folder (`..`, `/`, a drive or a NUL).
fn record_of_marker(records: &Path, marker: &str) -> Option<PathBuf> {
    let rest = marker.strip_suffix(MARKER)?;
    let (day, name) = rest.split_once('.')?;
    (is_day(day) && is_record_name(name)).then(|| records.join(day).join(name))
}

/// `YYYY-MM-DD`, the name of a day's folder.
fn is_day(day: &str) -> bool {
    let bytes = day.as_bytes();
    bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            _ => b.is_ascii_digit(),
        })
}

/// A record's file name: `*.json`, one component, no separator or NUL.
fn is_record_name(name: &str) -> bool {
    name.len() > ".json".len()
        && name.ends_with(".json")
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && !name.ends_with(MARKER)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(uuid: &str) -> Job {
        Job {
            part: 1,
            uuid: uuid.into(),
            record: format!("/r/{uuid}.json").into(),
            files: vec![format!("/r/{uuid}.R.wav").into()],
            day: "2026/12/04".into(),
        }
    }

    #[test]
    fn jobs_come_back_in_order_across_a_restart_and_a_bad_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path()).unwrap();
        for uuid in ["a", "b", "c"] {
            queue.push(&job(uuid)).unwrap();
        }
        let (pending, _) = queue.pending().unwrap();
        queue.done(&pending[0]).unwrap();
        std::fs::write(&pending[1].path, b"{not a job").unwrap();
        // A restart: numbering goes on after what is there.
        let queue = Queue::open(dir.path()).unwrap();
        queue.push(&job("d")).unwrap();
        let (pending, bad) = queue.pending().unwrap();
        let uuids: Vec<&str> = pending.iter().map(|q| q.job.uuid.as_str()).collect();
        assert_eq!(uuids, ["c", "d"]);
        assert_eq!(pending[0].job, job("c"));
        assert_eq!(bad.len(), 1);
        assert!(bad[0].exists(), "kept for a person to look at");
    }

    #[test]
    fn a_job_a_run_was_killed_writing_is_removed_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path()).unwrap();
        queue.push(&job("a")).unwrap();
        let torn = dir.path().join(format!("{:020}.tmp", 1));
        std::fs::write(&torn, b"{\"uuid\":\"b").unwrap();
        let queue = Queue::open(dir.path()).unwrap();
        assert!(!torn.exists());
        let (pending, bad) = queue.pending().unwrap();
        let uuids: Vec<&str> = pending.iter().map(|q| q.job.uuid.as_str()).collect();
        assert_eq!((uuids, bad.len()), (vec!["a"], 0));
    }

    #[test]
    fn a_failed_job_leaves_the_queue_and_stays_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path()).unwrap();
        for uuid in ["a", "b"] {
            queue.push(&job(uuid)).unwrap();
        }
        let (pending, _) = queue.pending().unwrap();
        let aside = queue.fail(&pending[0]).unwrap();
        assert!(aside.exists(), "kept for a person to look at");
        // Across a restart too.
        let queue = Queue::open(dir.path()).unwrap();
        let (pending, bad) = queue.pending().unwrap();
        let uuids: Vec<&str> = pending.iter().map(|q| q.job.uuid.as_str()).collect();
        assert_eq!(uuids, ["b"]);
        assert!(bad.is_empty());
        // The last one set aside too: new jobs are numbered after it.
        let again = queue.fail(&pending[0]).unwrap();
        let queue = Queue::open(dir.path()).unwrap();
        queue.push(&job("c")).unwrap();
        let (pending, _) = queue.pending().unwrap();
        assert!(queue.fail(&pending[0]).unwrap() != again);
        assert!(aside.exists() && again.exists());
    }

    #[test]
    fn a_marker_names_its_record_and_back() {
        let records = Path::new("/rec");
        let record = records.join("2026-12-05/478525a8-8263-4550-b18c-000000000001.json");
        let name = marker_name(records, &record).unwrap();
        assert_eq!(
            name,
            "2026-12-05.478525a8-8263-4550-b18c-000000000001.json.unqueued"
        );
        assert_eq!(record_of_marker(records, &name), Some(record));
        // A second record of the same UUID in a day.
        let again = records.join("2026-12-05/478525a8.2.json");
        let name = marker_name(records, &again).unwrap();
        assert_eq!(record_of_marker(records, &name), Some(again));
    }

    #[test]
    fn a_marker_cannot_name_a_file_out_of_the_record_folder() {
        let records = Path::new("/rec");
        for record in [
            "/elsewhere/2026-12-05/a.json",
            "/rec/a.json",
            "/rec/2026-12-05/deeper/a.json",
            "/rec/2026-12-05/a.wav",
            "/rec/.upload/a.json",
            "/rec/2026-12-05/../a.json",
        ] {
            assert_eq!(marker_name(records, Path::new(record)), None, "{record}");
        }
        for marker in [
            "2026-12-05.a.json",
            "2026-12-05..json.unqueued",
            "2026-12-05.../../etc/x.json.unqueued",
            "2026-12-05./etc/passwd.json.unqueued",
            "2026-12-05.a/../../b.json.unqueued",
            "2026-12-05.a\\b.json.unqueued",
            "2026-12-05.a\0.json.unqueued",
            "..-12-05.a.json.unqueued",
            "2026-12-0/.a.json.unqueued",
            "2026-12-05.a.wav.unqueued",
            ".unqueued",
            "x.unqueued",
        ] {
            assert_eq!(record_of_marker(records, marker), None, "{marker:?}");
        }
    }

    #[test]
    fn markers_come_back_with_their_records_and_bad_ones_apart() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(&dir.path().join(".upload")).unwrap();
        let record = dir.path().join("2026-12-05/a.json");
        let marker = queue.mark(&record).unwrap();
        assert_eq!(std::fs::metadata(&marker).unwrap().len(), 0);
        assert!(queue.mark(&dir.path().join("a.json")).is_err());
        let crafted = dir.path().join(".upload/2026-12-05..json.unqueued");
        std::fs::write(&crafted, b"").unwrap();
        // Not a job, and not in the jobs' numbering.
        let queue = Queue::open(&dir.path().join(".upload")).unwrap();
        assert!(queue.pending().unwrap().0.is_empty());
        let (marked, bad) = queue.marked().unwrap();
        assert_eq!(marked, vec![(marker, record)]);
        assert_eq!(bad, vec![crafted]);
    }
}
