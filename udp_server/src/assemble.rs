//! `udp_server assemble UUID --from DIR... --out DIR`: the parts of a call
//! recorded on several receivers of a pool, joined into one set of files.
//!
//! A sender that fails over (see `rst_proto::stream`) starts a new part on
//! the next receiver, whose INV says `part=N:offset-ms=MS`: where the part's
//! audio begins on the call's media clock. Each receiver's record carries
//! `part` and `offset_ms`; here every record of the UUID found under the
//! given folders is read, and each direction's audio is laid out at its
//! offset: silence where nothing was recorded (the audio the dead receiver
//! never got, up to the failover's detection), every sample of a part where
//! it is (sample-exact where parts do not overlap; where they do, the later
//! part wins, and the overlap is reported). What was filled with silence is
//! written down in `UUID.assembled.json`, so a joined call never loses
//! words without saying so.
//!
//! The parts may also be in object storage ([`Source::Store`], `--from
//! s3://BUCKET/PREFIX`): the records of the UUID found there and the WAVs they
//! name are downloaded into a folder in `out` (removed afterwards) and joined
//! like local ones; see [`store`] for how they are found. Folders and stores
//! mix; a part found twice (a local record whose call was also stored) is
//! joined once.
//!
//! The joining ([`join`]) is sans-IO: samples and offsets in, samples and
//! gaps out. The shell ([`assemble`], [`assemble_from`]) finds the records
//! and reads and writes WAV files.

mod store;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::Date;

use crate::storage::StorageConfig;

/// One part's audio of one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartAudio {
    pub part: u32,
    pub offset_ms: u64,
    pub rate: u32,
    pub samples: Vec<i16>,
}

/// A stretch of the joined audio, in samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Span {
    pub start: u64,
    pub samples: u64,
}

/// One direction joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub rate: u32,
    pub samples: Vec<i16>,
    /// Filled with silence: no part had audio there.
    pub gaps: Vec<Span>,
    /// Where a later part overwrote the end of an earlier one.
    pub overlaps: Vec<Span>,
}

/// Why parts cannot be joined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// Parts at different sample rates (resampling is not done here).
    #[error("part {part} is at {rate} Hz, the call's first part at {first} Hz")]
    MixedRates { part: u32, rate: u32, first: u32 },
    /// A part whose offset lies absurdly far (over a day) into the call.
    #[error("part {part} begins {offset_ms} ms into the call, past any call's length")]
    OffsetTooLarge { part: u32, offset_ms: u64 },
}

/// Lays the parts out at their offsets (in the order of their offsets,
/// then of their numbers).
pub fn join(mut parts: Vec<PartAudio>) -> Result<Joined, JoinError> {
    const MAX_OFFSET_MS: u64 = 24 * 3600 * 1000;
    parts.sort_by_key(|p| (p.offset_ms, p.part));
    let rate = parts.first().map_or(8000, |p| p.rate);
    let mut joined = Joined {
        rate,
        samples: Vec::new(),
        gaps: Vec::new(),
        overlaps: Vec::new(),
    };
    for part in parts {
        if part.rate != rate {
            return Err(JoinError::MixedRates {
                part: part.part,
                rate: part.rate,
                first: rate,
            });
        }
        if part.offset_ms > MAX_OFFSET_MS {
            return Err(JoinError::OffsetTooLarge {
                part: part.part,
                offset_ms: part.offset_ms,
            });
        }
        let at = (part.offset_ms * u64::from(rate) / 1000) as usize;
        let end = joined.samples.len();
        if at > end {
            joined.gaps.push(Span {
                start: end as u64,
                samples: (at - end) as u64,
            });
            joined.samples.resize(at, 0);
        } else if at < end {
            joined.overlaps.push(Span {
                start: at as u64,
                samples: (end - at).min(part.samples.len()) as u64,
            });
        }
        let overwrite = (joined.samples.len() - at).min(part.samples.len());
        joined.samples[at..at + overwrite].copy_from_slice(&part.samples[..overwrite]);
        joined.samples.extend_from_slice(&part.samples[overwrite..]);
    }
    Ok(joined)
}

/// What `assemble` reads of a record.
#[derive(Debug, Deserialize)]
struct RecordFile {
    uuid: String,
    #[serde(default = "first_part")]
    part: u32,
    #[serde(default)]
    offset_ms: u64,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    directions: BTreeMap<String, DirectionFile>,
    /// RFC 3339: its day is where the store keeps the part.
    #[serde(default)]
    start: Option<String>,
    /// Set once the receiver stored the call.
    #[serde(default)]
    stored: Option<StoredFile>,
}

#[derive(Debug, Deserialize)]
struct StoredFile {
    record_key: String,
    #[serde(default)]
    objects: Vec<StoredObjectFile>,
}

#[derive(Debug, Deserialize)]
struct StoredObjectFile {
    key: String,
    size: Option<u64>,
}

impl RecordFile {
    /// How long `direction`'s audio began after the part's first audio (of
    /// either direction), in seconds: a part's offset is where its first
    /// audio is. RTP only, whose audio the receiver placed by timestamps
    /// (a tap's two directions seldom begin together); DATA frames begin
    /// together, and their arrival says nothing finer.
    fn lead(&self, direction: &DirectionFile) -> f64 {
        if self.mode.as_deref() != Some("rtp") {
            return 0.0;
        }
        let first = self
            .directions
            .values()
            .filter_map(|d| d.begins)
            .fold(f64::INFINITY, f64::min);
        direction
            .begins
            .map_or(0.0, |begins| (begins - first).max(0.0))
    }

    /// The day the part started (UTC), from `start`.
    fn day(&self) -> Option<Date> {
        let start = self.start.as_deref()?;
        time::OffsetDateTime::parse(start, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|at| at.to_offset(time::UtcOffset::UTC).date())
    }
}

fn first_part() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
struct DirectionFile {
    #[serde(default)]
    wav: Vec<PathBuf>,
    #[serde(default)]
    begins: Option<f64>,
}

/// What `assemble` wrote and found.
#[derive(Debug, Serialize)]
pub struct Assembled {
    pub uuid: String,
    /// The records joined, with their parts and offsets.
    pub parts: Vec<AssembledPart>,
    /// Per direction: the file, its rate and length, and where silence was put.
    pub directions: BTreeMap<String, AssembledDirection>,
    pub stereo: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct AssembledPart {
    pub part: u32,
    pub offset_ms: u64,
    /// The record's path, or `s3://BUCKET/KEY`.
    pub record: String,
}

#[derive(Debug, Serialize)]
pub struct AssembledDirection {
    pub wav: PathBuf,
    pub rate: u32,
    pub samples: u64,
    pub gaps: Vec<Span>,
    pub overlaps: Vec<Span>,
}

/// Why a call cannot be assembled.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// No record of the UUID under the folders or in the stores.
    #[error("no record of call {0} under the given folders or in the given stores")]
    NotFound(String),
    /// A store that could not be listed or read (down, refusing, unknown bucket).
    #[error("{location}: {error}")]
    Store {
        location: String,
        error: object_store::Error,
    },
    /// An object a stored record names is not in the store.
    #[error("{location} is not in the store, though the record {record} names it")]
    MissingObject { location: String, record: String },
    /// A stored record that does not say what it should: another call's, no
    /// objects named, an object of another size than it says.
    #[error("{record}: {why}")]
    RecordLies { record: String, why: String },
    /// Not a UUID (it becomes a file name).
    #[error("{0:?} is not a call UUID")]
    BadUuid(String),
    /// A record or a WAV file could not be read, or the output written.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    /// A record that is not a record.
    #[error("{path}: {error}")]
    BadRecord {
        path: PathBuf,
        error: serde_json::Error,
    },
    /// A WAV file that is not 16-bit mono PCM.
    #[error("{path}: not a 16-bit mono PCM WAV file ({why})")]
    BadWav { path: PathBuf, why: &'static str },
    #[error("direction {direction}: {error}")]
    Join { direction: String, error: JoinError },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> AssembleError + '_ {
    move |error| AssembleError::Io {
        path: path.to_owned(),
        error,
    }
}

/// Where `assemble` looks for a call's parts.
#[derive(Debug, Clone)]
pub enum Source {
    /// A receiver's record folder (or a copy of it).
    Dir(PathBuf),
    /// A bucket the receivers store their calls in, under its prefix.
    Store(StorageConfig),
}

/// A `--from` as given: a folder, or `s3://BUCKET[/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Dir(PathBuf),
    /// `s3://BUCKET/PREFIX`; `None` for `s3://` alone: the bucket and prefix
    /// of the `[storage]` settings.
    Store(Option<(String, String)>),
}

impl Place {
    pub fn parse(from: &str) -> Place {
        let Some(rest) = from.strip_prefix("s3://") else {
            return Place::Dir(PathBuf::from(from));
        };
        let rest = rest.trim_matches('/');
        if rest.is_empty() {
            return Place::Store(None);
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        Place::Store(Some((
            bucket.to_owned(),
            prefix.trim_matches('/').to_owned(),
        )))
    }
}

/// `YYYY-MM-DD`.
pub fn parse_day(day: &str) -> Result<Date, String> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(day, &format).map_err(|error| format!("{day:?} is not a YYYY-MM-DD day: {error}"))
}

/// Finds every record of `uuid` under `from` (the receivers' record
/// folders), joins each direction's parts, and writes `UUID.R.wav`,
/// `UUID.W.wav`, `UUID.stereo.wav` (left R, right W) and
/// `UUID.assembled.json` into `out`.
pub fn assemble(uuid: &str, from: &[PathBuf], out: &Path) -> Result<Assembled, AssembleError> {
    check_uuid(uuid)?;
    let found = find_local(uuid, from)?;
    write_joined(uuid, found, out)
}

/// [`assemble`] from folders and stores. In a store, the parts are looked
/// for on `days` (and their neighbours) and on the days of the parts found
/// in the folders; when none is there, on every day, newest first (see
/// [`store`]). What a store has is downloaded into a folder in `out`,
/// removed once the call is joined.
pub async fn assemble_from(
    uuid: &str,
    from: &[Source],
    days: &[Date],
    out: &Path,
) -> Result<Assembled, AssembleError> {
    check_uuid(uuid)?;
    let dirs: Vec<PathBuf> = from
        .iter()
        .filter_map(|source| match source {
            Source::Dir(dir) => Some(dir.clone()),
            Source::Store(_) => None,
        })
        .collect();
    let mut found = find_local(uuid, &dirs)?;
    let mut hints: std::collections::BTreeSet<Date> = days.iter().copied().collect();
    hints.extend(found.iter().filter_map(|(_, record)| record.day()));
    std::fs::create_dir_all(out).map_err(io_error(out))?;
    let downloads = Downloads::new(out.join(format!(".{uuid}.download")))?;
    for (n, source) in from.iter().enumerate() {
        if let Source::Store(config) = source {
            let into = downloads.0.join(n.to_string());
            found.extend(store::fetch(config, uuid, &hints, &into).await?);
        }
    }
    write_joined(uuid, found, out)
}

fn check_uuid(uuid: &str) -> Result<(), AssembleError> {
    match rst_proto::Uuid::new(uuid) {
        Ok(_) => Ok(()),
        Err(_) => Err(AssembleError::BadUuid(uuid.to_owned())),
    }
}

/// A folder of downloads, removed with what is in it when dropped.
struct Downloads(PathBuf);

impl Downloads {
    fn new(dir: PathBuf) -> Result<Downloads, AssembleError> {
        // Left by a run that was killed.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        Ok(Downloads(dir))
    }
}

impl Drop for Downloads {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), %error, "cannot remove the downloaded parts");
        }
    }
}

/// One record of the call, read, with where it was found.
struct Found {
    /// The record's file here (a download's, for a store's).
    path: PathBuf,
    /// Where it was found, as the summary says it.
    origin: String,
}

/// The records of `uuid` under the folders, read.
fn find_local(uuid: &str, from: &[PathBuf]) -> Result<Vec<(Found, RecordFile)>, AssembleError> {
    let mut records = Vec::new();
    for dir in from {
        find_records(dir, uuid, 0, &mut records)?;
    }
    records.sort();
    records.dedup();
    let mut found = Vec::new();
    for path in records {
        let record = read_record(&path)?;
        if record.uuid == uuid {
            let origin = path.display().to_string();
            found.push((Found { path, origin }, record));
        }
    }
    Ok(found)
}

fn read_record(path: &Path) -> Result<RecordFile, AssembleError> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    serde_json::from_str(&text).map_err(|error| AssembleError::BadRecord {
        path: path.to_owned(),
        error,
    })
}

/// Whether every WAV the record names is at hand.
fn audio_at_hand(found: &Found, record: &RecordFile) -> bool {
    record
        .directions
        .values()
        .flat_map(|files| &files.wav)
        .all(|wav| locate(wav, &found.path).exists())
}

/// A part found twice (a receiver's local record, and the same record in
/// the store: the same `stored.record_key`) is joined once, from where its
/// audio is (the local audio goes with `keep-local = false`).
fn once_each(found: Vec<(Found, RecordFile)>) -> Vec<(Found, RecordFile)> {
    let mut kept: Vec<(Found, RecordFile)> = Vec::new();
    for (found, record) in found {
        let key = record.stored.as_ref().map(|s| s.record_key.clone());
        let twin = key.and_then(|key| {
            kept.iter().position(|(_, k)| {
                k.stored
                    .as_ref()
                    .is_some_and(|stored| stored.record_key == key)
            })
        });
        match twin {
            None => kept.push((found, record)),
            Some(i) => {
                let (first, first_record) = &kept[i];
                if !audio_at_hand(first, first_record) && audio_at_hand(&found, &record) {
                    kept[i] = (found, record);
                }
            }
        }
    }
    kept
}

/// The most silence put before a direction that began after the other
/// (see [`RecordFile::lead`]): a record cannot make a call absurdly long.
const MAX_LEAD_SECONDS: usize = 3600;

/// Joins each direction of the records' parts and writes the files.
fn write_joined(
    uuid: &str,
    found: Vec<(Found, RecordFile)>,
    out: &Path,
) -> Result<Assembled, AssembleError> {
    let mut parts = Vec::new();
    let mut by_direction: BTreeMap<String, Vec<PartAudio>> = BTreeMap::new();
    for (found, record) in once_each(found) {
        let path = found.path;
        for (direction, files) in &record.directions {
            let mut audio: Option<PartAudio> = None;
            for wav in &files.wav {
                let wav = locate(wav, &path);
                let (rate, samples) = read_wav(&wav)?;
                match &mut audio {
                    Some(a) if a.rate == rate => a.samples.extend(samples),
                    Some(_) => {
                        tracing::warn!(wav = %wav.display(), "a part changed its sample rate; the rest of it is left out");
                        break;
                    }
                    None => {
                        let lead = (record.lead(files) * f64::from(rate)).round() as usize;
                        let mut placed = vec![0; lead.min(MAX_LEAD_SECONDS * rate as usize)];
                        placed.extend(samples);
                        audio = Some(PartAudio {
                            part: record.part,
                            offset_ms: record.offset_ms,
                            rate,
                            samples: placed,
                        })
                    }
                }
            }
            if let Some(audio) = audio {
                by_direction
                    .entry(direction.clone())
                    .or_default()
                    .push(audio);
            }
        }
        parts.push(AssembledPart {
            part: record.part,
            offset_ms: record.offset_ms,
            record: found.origin,
        });
    }
    if parts.is_empty() {
        return Err(AssembleError::NotFound(uuid.to_owned()));
    }
    parts.sort_by_key(|p| (p.offset_ms, p.part));
    std::fs::create_dir_all(out).map_err(io_error(out))?;
    let mut directions = BTreeMap::new();
    let mut joined_all = BTreeMap::new();
    for (direction, audio) in by_direction {
        let joined = join(audio).map_err(|error| AssembleError::Join {
            direction: direction.clone(),
            error,
        })?;
        let wav = out.join(format!("{uuid}.{direction}.wav"));
        write_wav(&wav, joined.rate, 1, &joined.samples)?;
        directions.insert(
            direction.clone(),
            AssembledDirection {
                wav,
                rate: joined.rate,
                samples: joined.samples.len() as u64,
                gaps: joined.gaps.clone(),
                overlaps: joined.overlaps.clone(),
            },
        );
        joined_all.insert(direction, joined);
    }
    let stereo = match (joined_all.get("R"), joined_all.get("W")) {
        (Some(r), Some(w)) if r.rate == w.rate => {
            let len = r.samples.len().max(w.samples.len());
            let at = |s: &[i16], i: usize| s.get(i).copied().unwrap_or(0);
            let frames: Vec<i16> = (0..len)
                .flat_map(|i| [at(&r.samples, i), at(&w.samples, i)])
                .collect();
            let path = out.join(format!("{uuid}.stereo.wav"));
            write_wav(&path, r.rate, 2, &frames)?;
            Some(path)
        }
        _ => None,
    };
    let assembled = Assembled {
        uuid: uuid.to_owned(),
        parts,
        directions,
        stereo,
    };
    let summary = out.join(format!("{uuid}.assembled.json"));
    let text = serde_json::to_string_pretty(&assembled).unwrap_or_default();
    std::fs::write(&summary, text).map_err(io_error(&summary))?;
    Ok(assembled)
}

/// Records of `uuid` under `dir` (its day folders included): `UUID*.json`,
/// and the provisional `UUID*.json.part` of a receiver that died, when
/// its final record is not there (yet).
fn find_records(
    dir: &Path,
    uuid: &str,
    depth: u32,
    found: &mut Vec<PathBuf>,
) -> Result<(), AssembleError> {
    let entries = std::fs::read_dir(dir).map_err(io_error(dir))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if depth < 3 {
                find_records(&path, uuid, depth + 1, found)?;
            }
            continue;
        }
        if !name.starts_with(uuid) || name.contains(".assembled.") {
            continue;
        }
        if name.ends_with(".json") {
            found.push(path);
        } else if let Some(record) = name.strip_suffix(".part") {
            if record.ends_with(".json") && !path.with_file_name(record).exists() {
                found.push(path);
            }
        }
    }
    Ok(())
}

/// A record's WAV path as written (absolute, or relative to where the
/// receiver ran), or failing that the file of that name beside the record
/// (a folder copied elsewhere), or either with `.part` after it.
fn locate(wav: &Path, record: &Path) -> PathBuf {
    let beside = match (wav.file_name(), record.parent()) {
        (Some(name), Some(dir)) => dir.join(name),
        _ => wav.to_owned(),
    };
    // A call in progress (or whose receiver died) writes `NAME.wav.part`.
    let in_progress = |path: &Path| {
        let mut name = path.as_os_str().to_owned();
        name.push(".part");
        PathBuf::from(name)
    };
    [
        wav.to_owned(),
        beside.clone(),
        in_progress(wav),
        in_progress(&beside),
    ]
    .into_iter()
    .find(|path| path.exists())
    .unwrap_or(beside)
}

/// A 16-bit mono PCM WAV's rate and samples. Forgiving about the data
/// chunk's length, which a receiver killed mid-call never wrote: what is
/// in the file is read.
pub fn read_wav(path: &Path) -> Result<(u32, Vec<i16>), AssembleError> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    let bad = |why| AssembleError::BadWav {
        path: path.to_owned(),
        why,
    };
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(bad("no RIFF/WAVE header"));
    }
    let mut at = 12;
    let mut rate = None;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]])
            as usize;
        let body = at + 8;
        if id == b"fmt " {
            let fmt = bytes.get(body..body + 16).ok_or_else(|| bad("short fmt"))?;
            let format = u16::from_le_bytes([fmt[0], fmt[1]]);
            let channels = u16::from_le_bytes([fmt[2], fmt[3]]);
            let bits = u16::from_le_bytes([fmt[14], fmt[15]]);
            // 0xFFFE: WAVE_FORMAT_EXTENSIBLE, as hound writes some files.
            if !matches!(format, 1 | 0xFFFE) || channels != 1 || bits != 16 {
                return Err(bad("not 16-bit mono PCM"));
            }
            rate = Some(u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]));
        } else if id == b"data" {
            let rate = rate.ok_or_else(|| bad("data before fmt"))?;
            let available = bytes.len() - body;
            let len = if len == 0 || len > available {
                available
            } else {
                len
            };
            let samples = bytes[body..body + len - len % 2]
                .chunks_exact(2)
                .map(|s| i16::from_le_bytes([s[0], s[1]]))
                .collect();
            return Ok((rate, samples));
        }
        at = body.saturating_add(len + len % 2);
    }
    Err(bad("no data chunk"))
}

fn write_wav(path: &Path, rate: u32, channels: u16, samples: &[i16]) -> Result<(), AssembleError> {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let wrap = |error: hound::Error| AssembleError::Io {
        path: path.to_owned(),
        error: match error {
            hound::Error::IoError(error) => error,
            other => io::Error::other(other.to_string()),
        },
    };
    let mut writer = hound::WavWriter::create(path, spec).map_err(wrap)?;
    for &sample in samples {
        writer.write_sample(sample).map_err(wrap)?;
    }
    writer.finalize().map_err(wrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(part: u32, offset_ms: u64, samples: Vec<i16>) -> PartAudio {
        PartAudio {
            part,
            offset_ms,
            rate: 8000,
            samples,
        }
    }

    #[test]
    fn parts_are_laid_at_their_offsets_with_silence_between() {
        let joined = join(vec![
            part(2, 10, vec![2; 40]),
            part(1, 0, vec![1; 50]),
            part(3, 20, vec![3; 8]),
        ])
        .unwrap();
        // Part 1: samples 0..50; part 2 at 80; part 3 at 160 (after part 2's end at 120).
        let mut expected = vec![1; 50];
        expected.extend([0; 30]);
        expected.extend([2; 40]);
        expected.extend([0; 40]);
        expected.extend([3; 8]);
        assert_eq!(joined.samples, expected);
        assert_eq!(
            joined.gaps,
            [
                Span {
                    start: 50,
                    samples: 30
                },
                Span {
                    start: 120,
                    samples: 40
                }
            ]
        );
        assert!(joined.overlaps.is_empty());
    }

    #[test]
    fn parts_that_meet_join_sample_exactly_and_an_overlap_goes_to_the_later_part() {
        let joined = join(vec![part(1, 0, vec![1; 80]), part(2, 10, vec![2; 80])]).unwrap();
        assert_eq!(joined.samples.len(), 160);
        assert!(joined.gaps.is_empty() && joined.overlaps.is_empty());
        assert!(joined.samples[..80].iter().all(|s| *s == 1));
        assert!(joined.samples[80..].iter().all(|s| *s == 2));

        let joined = join(vec![part(1, 0, vec![1; 100]), part(2, 10, vec![2; 10])]).unwrap();
        assert_eq!(joined.samples.len(), 100);
        assert_eq!(
            &joined.samples[78..92],
            &[1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1]
        );
        assert_eq!(
            joined.overlaps,
            [Span {
                start: 80,
                samples: 10
            }]
        );
    }

    #[test]
    fn an_rtp_direction_that_began_later_is_laid_that_much_later() {
        let record = |mode: &str| -> RecordFile {
            serde_json::from_value(serde_json::json!({
                "uuid": "u", "mode": mode,
                "directions": {
                    "R": { "wav": ["u.R.wav"], "begins": 0.06 },
                    "W": { "wav": ["u.W.wav"], "begins": 0.01 }
                }
            }))
            .unwrap()
        };
        let rtp = record("rtp");
        let lead = |r: &RecordFile, d: &str| (r.lead(&r.directions[d]) * 8000.0).round();
        assert_eq!((lead(&rtp, "R"), lead(&rtp, "W")), (400.0, 0.0));
        // DATA frames begin together: arrival says nothing finer.
        let data = record("data");
        assert_eq!((lead(&data, "R"), lead(&data, "W")), (0.0, 0.0));
    }

    #[test]
    fn a_lost_first_part_is_silence_from_the_start_and_rates_must_agree() {
        let joined = join(vec![part(2, 1000, vec![5; 3])]).unwrap();
        assert_eq!(joined.samples.len(), 8003);
        assert_eq!(
            joined.gaps,
            [Span {
                start: 0,
                samples: 8000
            }]
        );
        let mut wide = part(2, 20, vec![1; 3]);
        wide.rate = 16000;
        assert_eq!(
            join(vec![part(1, 0, vec![1; 3]), wide]),
            Err(JoinError::MixedRates {
                part: 2,
                rate: 16000,
                first: 8000
            })
        );
        assert!(join(vec![part(2, u64::MAX, vec![1])]).is_err());
    }

    #[test]
    fn a_wav_whose_length_was_never_written_is_read_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        write_wav(&path, 8000, 1, &[1, -2, 3]).unwrap();
        assert_eq!(read_wav(&path).unwrap(), (8000, vec![1, -2, 3]));
        let mut bytes = std::fs::read(&path).unwrap();
        let data = bytes.windows(4).position(|w| w == b"data").unwrap();
        bytes[data + 4..data + 8].copy_from_slice(&0u32.to_le_bytes());
        bytes.extend([4, 0, 9]); // one more sample and half of another
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_wav(&path).unwrap(), (8000, vec![1, -2, 3, 4]));
        std::fs::write(&path, b"RIFF\0\0\0\0WAVEdata").unwrap();
        assert!(read_wav(&path).is_err());
    }

    #[test]
    fn from_is_a_folder_or_a_bucket_and_its_prefix() {
        assert_eq!(Place::parse("/rec/a"), Place::Dir("/rec/a".into()));
        assert_eq!(
            Place::parse("s3://calls/recordings/pool/"),
            Place::Store(Some(("calls".into(), "recordings/pool".into())))
        );
        assert_eq!(
            Place::parse("s3://calls"),
            Place::Store(Some(("calls".into(), String::new())))
        );
        assert_eq!(Place::parse("s3://"), Place::Store(None));
        assert_eq!(
            parse_day("2026-12-04"),
            Ok(Date::from_calendar_date(2026, time::Month::December, 4).unwrap())
        );
        assert!(parse_day("2026-13-04").is_err() && parse_day("04/12/2026").is_err());
    }

    #[test]
    fn the_parts_after_the_first_have_their_own_object_names() {
        use crate::storage::object_name;
        let uuid = "478525a8-8263-4550-b18c-000000000011";
        let name = |part, file: &str| object_name(uuid, part, &format!("{uuid}{file}"));
        assert_eq!(name(1, ".R.wav"), format!("{uuid}.R.wav"));
        assert_eq!(name(2, ".json"), format!("{uuid}.part2.json"));
        assert_eq!(name(3, ".2.W.wav"), format!("{uuid}.part3.2.W.wav"));
        assert_eq!(object_name(uuid, 2, "x.wav"), "part2.x.wav");
    }
}
