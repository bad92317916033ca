//! Recordings to S3-compatible object storage (AWS S3, MinIO, SeaweedFS,
//! Ceph...): "record locally, upload, then say it is stored".
//!
//! When a call's record is written, the recorder thread puts a job in the
//! upload queue on disk ([`queue`]); the uploader task takes the jobs in
//! order and stores each call's files under `PREFIX/YYYY/MM/DD/<file name>`
//! (a continuation part's with `.partN` after the UUID: [`object_name`]),
//! the WAVs and raw payloads first, multipart above [`etag::PART_SIZE`], each
//! verified against the checksum the store gives back ([`etag`]). Then the
//! JSON record, with a `stored` section naming the objects, is written again
//! locally and stored last; the job goes, the feed says `recording_stored`,
//! and the local audio is removed if `keep-local = false` (the record stays:
//! it says where the audio is now). A store that is down or refuses means a
//! growing backlog (metrics: files and bytes waiting, the oldest's age),
//! tried again with backoff (1 s doubling to 30 s) in the same order; a
//! receiver killed meanwhile resumes from the queue, storing again under the
//! same keys what it may already have stored. A job waits for its call's
//! record (a full disk can hold it back) before the uploader takes it, and
//! one a full disk keeps in memory has a marker on disk for the next start
//! ([`queue::Queue::mark`]); one
//! whose record is then not on disk (lost, or never written and not
//! recoverable) can never be stored: it is set aside as `.failed`, with an
//! error, so that it does not hold the calls after it.
//!
//! The client is the `object_store` crate (the Apache Arrow project's, used
//! by DataFusion and delta-rs): a small async API over S3 that also speaks
//! GCS and Azure, with multipart uploads, where the AWS SDK would bring a far
//! larger dependency tree for the three calls this needs.

pub mod etag;
pub mod queue;

use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ObjectStore, PutPayload, RetryConfig};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::feed::Feed;
use crate::files::write_whole;
use crate::metrics::Metrics;
use crate::record::CallRecord;
use etag::{Expected, Verdict, PART_SIZE};
use queue::{Job, Queue, Queued};

/// How keys reach the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Addressing {
    /// `https://endpoint/bucket/key`: MinIO, SeaweedFS, Ceph.
    Path,
    /// `https://bucket.endpoint/key`: AWS S3.
    VirtualHost,
}

/// `[storage]` in the file; the same names with `storage-` before them as flags.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StorageSettings {
    /// Bucket the recordings go to; without one nothing is uploaded [default: off]
    #[arg(long = "storage-bucket", id = "storage-bucket", value_name = "BUCKET")]
    pub bucket: Option<String>,
    /// S3-compatible endpoint (MinIO, SeaweedFS, Ceph...) [default: AWS S3]
    #[arg(long = "storage-endpoint", id = "storage-endpoint", value_name = "URL")]
    pub endpoint: Option<String>,
    /// Region of the bucket [default: us-east-1]
    #[arg(long = "storage-region", id = "storage-region", value_name = "REGION")]
    pub region: Option<String>,
    /// Key prefix: keys are PREFIX/YYYY/MM/DD/<file name> [default: none]
    #[arg(long = "storage-prefix", id = "storage-prefix", value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// path or virtual-host [default: path with an endpoint, virtual-host without]
    #[arg(
        long = "storage-addressing",
        id = "storage-addressing",
        value_name = "STYLE"
    )]
    pub addressing: Option<Addressing>,
    /// File holding the access key id [default: AWS_ACCESS_KEY_ID]
    #[arg(
        long = "storage-access-key-id-file",
        id = "storage-access-key-id-file",
        value_name = "FILE"
    )]
    pub access_key_id_file: Option<PathBuf>,
    /// File holding the secret access key [default: AWS_SECRET_ACCESS_KEY]
    #[arg(
        long = "storage-secret-access-key-file",
        id = "storage-secret-access-key-file",
        value_name = "FILE"
    )]
    pub secret_access_key_file: Option<PathBuf>,
    /// Keep the local audio after a verified upload [default: true]
    #[arg(
        long = "storage-keep-local",
        id = "storage-keep-local",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub keep_local: Option<bool>,
}

impl StorageSettings {
    /// `self` over `base`, setting by setting.
    pub fn over(self, base: StorageSettings) -> StorageSettings {
        StorageSettings {
            bucket: self.bucket.or(base.bucket),
            endpoint: self.endpoint.or(base.endpoint),
            region: self.region.or(base.region),
            prefix: self.prefix.or(base.prefix),
            addressing: self.addressing.or(base.addressing),
            access_key_id_file: self.access_key_id_file.or(base.access_key_id_file),
            secret_access_key_file: self.secret_access_key_file.or(base.secret_access_key_file),
            keep_local: self.keep_local.or(base.keep_local),
        }
    }

    /// The store, when a bucket is given. Credentials come from the files
    /// named, else from the environment (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`); never from the file itself.
    pub fn resolve(self) -> anyhow::Result<Option<StorageConfig>> {
        let Some(bucket) = self.bucket else {
            anyhow::ensure!(
                self.endpoint.is_none() && self.prefix.is_none(),
                "[storage] has no bucket: set storage bucket, or remove the section"
            );
            return Ok(None);
        };
        let region = self.region.unwrap_or_else(|| "us-east-1".to_owned());
        let addressing = self.addressing.unwrap_or(match self.endpoint {
            Some(_) => Addressing::Path,
            None => Addressing::VirtualHost,
        });
        // Our own loop retries, with its backlog and metrics: the client
        // gives up soon so that a store that is down shows at once.
        let retry = RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
            ..RetryConfig::default()
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_region(&region)
            .with_virtual_hosted_style_request(addressing == Addressing::VirtualHost)
            .with_retry(retry)
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(120)),
            );
        if let Some(endpoint) = &self.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        for (file, is_key_id) in [
            (&self.access_key_id_file, true),
            (&self.secret_access_key_file, false),
        ] {
            let Some(file) = file else { continue };
            let secret = rst_tap_client::read_secret(file).with_context(|| {
                format!("cannot read the storage credentials in {}", file.display())
            })?;
            builder = if is_key_id {
                builder.with_access_key_id(secret.0)
            } else {
                builder.with_secret_access_key(secret.0)
            };
        }
        let store = builder
            .build()
            .with_context(|| format!("cannot set up the storage of bucket {bucket}"))?;
        Ok(Some(StorageConfig {
            store: Arc::new(store),
            bucket,
            endpoint: self.endpoint.unwrap_or_else(|| "AWS S3".to_owned()),
            prefix: self
                .prefix
                .map(|p| p.trim_matches('/').to_owned())
                .unwrap_or_default(),
            keep_local: self.keep_local.unwrap_or(true),
        }))
    }
}

/// Where recordings are stored, resolved.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub store: Arc<dyn ObjectStore>,
    pub bucket: String,
    /// For the logs (no credentials in it).
    pub endpoint: String,
    pub prefix: String,
    pub keep_local: bool,
}

/// Equal when they name the same place (the client is not compared).
impl PartialEq for StorageConfig {
    fn eq(&self, other: &Self) -> bool {
        (&self.bucket, &self.endpoint, &self.prefix, self.keep_local)
            == (
                &other.bucket,
                &other.endpoint,
                &other.prefix,
                other.keep_local,
            )
    }
}

impl StorageConfig {
    fn key(&self, job: &Job, file: &FsPath) -> Key {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.under(&format!(
            "{}/{}",
            job.day,
            object_name(&job.uuid, job.part, &name)
        ))
    }

    /// `PREFIX/rest`, or `rest` without a prefix.
    pub fn under(&self, rest: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(rest)
        } else {
            Key::from(format!("{}/{rest}", self.prefix))
        }
    }
}

/// The object name of a call's local file `name`: the same, except for the
/// parts 2 and more of a call that failed over, whose files `.partN` follows
/// the UUID in (`UUID.part2.R.wav`). Each receiver of a pool names its part
/// `UUID.*` locally; in a bucket the pool shares, the parts would otherwise
/// overwrite each other.
pub fn object_name(uuid: &str, part: u32, name: &str) -> String {
    if part <= 1 {
        return name.to_owned();
    }
    match name.strip_prefix(uuid) {
        Some(rest) => format!("{uuid}.part{part}{rest}"),
        None => format!("part{part}.{name}"),
    }
}

/// Why a call could not be stored (this time: it is tried again, but for
/// [`StoreError::RecordMissing`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A local file of the call (audio, record or job) could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The record (with where the audio went) or a job could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Never tried again: see [`run`].
    #[error("the record {0} is not on disk")]
    RecordMissing(PathBuf),
    /// The record is there but is not JSON (cut short, or not ours).
    #[error("the record {0} is not JSON")]
    RecordUnreadable(PathBuf),
    /// The object store did not take an object (down, refused, credentials).
    #[error("the store refused {key}: {source}")]
    Store {
        key: String,
        source: object_store::Error,
    },
    /// The stored object is not what was sent (by its ETag, or by its size
    /// where the ETag tells nothing): not verified, so the local audio stays.
    #[error("{key} was stored with other bytes than sent (ETag {got}, expected {expected})")]
    Mismatch {
        key: String,
        got: String,
        expected: String,
    },
}

/// One object stored, as the record names it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredObject {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
}

/// The recorder threads' side: puts ended calls in the queue.
#[derive(Debug, Clone)]
pub struct Uploads {
    queue: Arc<Queue>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    /// Jobs prepared for calls whose records are being written, by record.
    prepared: Arc<std::sync::Mutex<std::collections::HashMap<PathBuf, Prepared>>>,
    /// Jobs of ended calls whose records are not written yet (kept by the
    /// recorder and tried again: a full disk), oldest first; the uploader
    /// takes each once its record is there ([`Uploads::commit_written`]).
    unwritten: Arc<std::sync::Mutex<std::collections::VecDeque<Unwritten>>>,
}

/// A call's job before the uploader may take it.
#[derive(Debug)]
enum Prepared {
    /// Written as `.next` ([`Queue::prepare`]).
    OnDisk(PathBuf),
    /// Not written: the disk was full. Written once its record is, which
    /// means there is room again; until then the marker, an empty file,
    /// tells the next start to queue the call ([`Queue::mark`]), should this
    /// run stop or be killed first (`None`: not even the marker could be made).
    InMemory(Job, Option<PathBuf>),
}

/// A prepared job waiting for its call's record.
#[derive(Debug)]
struct Unwritten {
    uuid: String,
    record: PathBuf,
    job: Prepared,
}

/// Jobs waiting for their records at once; past it the oldest is left to the
/// next start (its job stays prepared on disk, as for a receiver killed; one
/// only in memory by its marker, or, without a marker, is not stored, logged
/// and counted).
const MAX_UNWRITTEN: usize = 10_000;

impl Uploads {
    /// The queue in `<record_dir>/.upload`, with whatever an earlier run left there.
    pub fn open(record_dir: &FsPath, metrics: Arc<Metrics>) -> anyhow::Result<Uploads> {
        let dir = record_dir.join(".upload");
        let queue = Queue::open(&dir)
            .with_context(|| format!("cannot open the upload queue {}", dir.display()))?;
        Ok(Uploads {
            queue: Arc::new(queue),
            wake: Arc::new(Notify::new()),
            metrics,
            prepared: Arc::default(),
            unwritten: Arc::default(),
        })
    }

    /// A call's record is about to be written: its job is written first,
    /// for the uploader to take once the record is ([`Uploads::enqueue`]).
    /// Never waits on the network; a job that cannot be written (a full
    /// disk) is kept in memory, logged, and written after its record; an
    /// empty marker file stands for it on disk meanwhile ([`Queue::mark`]).
    pub fn prepare(&self, record: &CallRecord) {
        let job = Job::new(
            record.uuid.clone(),
            record.record.clone(),
            record.files(),
            record.start,
            record.part,
        );
        let prepared = match self.queue.prepare(&job) {
            Ok(path) => Prepared::OnDisk(path),
            Err(error) => {
                tracing::warn!(uuid = %record.uuid, %error, "cannot write the call's upload job yet; it waits in memory for its record");
                let marker = self.mark(&record.uuid, &record.record);
                Prepared::InMemory(job, marker)
            }
        };
        let mut jobs = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
        jobs.insert(record.record.clone(), prepared);
    }

    /// A call's record is written (or kept to be written later): the
    /// uploader takes its job, prepared by [`Uploads::prepare`], once the
    /// record is on disk. A job taken before would wait for a record that
    /// may come only at the next start, and the calls after it with it.
    pub fn enqueue(&self, record: &CallRecord) {
        let job = {
            let mut prepared = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
            prepared.remove(&record.record)
        };
        // None: never prepared (not a call of this run).
        let Some(job) = job else { return };
        let waiting = Unwritten {
            uuid: record.uuid.clone(),
            record: record.record.clone(),
            job,
        };
        if !record.record.exists() {
            tracing::info!(uuid = %record.uuid, record = %record.record.display(), "the call's record is not written yet; its upload waits for it");
            self.wait(waiting);
            return;
        }
        if let Some(waiting) = self.commit(waiting) {
            self.wait(waiting);
        }
    }

    /// Leaves a marker that tells the next start to queue the call whose
    /// record is `record`, its job being only in memory. `None`, logged and
    /// counted, when not even that can be made: then the call is stored only
    /// if this run writes its job.
    fn mark(&self, uuid: &str, record: &FsPath) -> Option<PathBuf> {
        match self.queue.mark(record) {
            Ok(marker) => {
                tracing::info!(%uuid, marker = %marker.display(), "the call's upload job is kept in memory; a marker on disk stands for it until it is written");
                Some(marker)
            }
            Err(error) => {
                self.metrics.storage_failures.fetch_add(1, Relaxed);
                tracing::error!(%uuid, record = %record.display(), %error, "cannot leave a marker for the call's upload job either: the call is stored only if this run can write its job");
                None
            }
        }
    }

    /// Keeps `job` until its record is written (and its job can be).
    fn wait(&self, job: Unwritten) {
        let mut unwritten = self.unwritten.lock().unwrap_or_else(|e| e.into_inner());
        if unwritten.len() >= MAX_UNWRITTEN {
            match unwritten.pop_front() {
                Some(Unwritten {
                    uuid,
                    job: Prepared::InMemory(_, Some(marker)),
                    ..
                }) => {
                    tracing::warn!(%uuid, marker = %marker.display(), "too many uploads wait for room on the disk: this call's is left to the next start, by its marker");
                }
                Some(Unwritten {
                    uuid,
                    job: Prepared::InMemory(_, None),
                    ..
                }) => {
                    self.metrics.storage_failures.fetch_add(1, Relaxed);
                    tracing::error!(%uuid, "too many uploads wait for room on the disk: this call's is dropped, and its files stay local only");
                }
                _ => {}
            }
        }
        unwritten.push_back(job);
    }

    /// Lets the uploader take the jobs whose records have been written since
    /// [`Uploads::enqueue`]; a job that still cannot be written waits on.
    fn commit_written(&self) {
        let written: std::collections::VecDeque<Unwritten> = {
            let mut unwritten = self.unwritten.lock().unwrap_or_else(|e| e.into_inner());
            let (written, waiting) = unwritten.drain(..).partition(|u| u.record.exists());
            *unwritten = waiting;
            written
        };
        for job in written {
            if let Some(job) = self.commit(job) {
                self.wait(job);
            }
        }
    }

    /// Lets the uploader take `job`, writing it first if it is only in
    /// memory; gives it back when it still cannot be written.
    fn commit(&self, job: Unwritten) -> Option<Unwritten> {
        let (path, marker) = match &job.job {
            Prepared::OnDisk(path) => (path.clone(), None),
            Prepared::InMemory(queued, marker) => match self.queue.prepare(queued) {
                Ok(path) => (path, marker.clone()),
                Err(error) => {
                    tracing::warn!(uuid = %job.uuid, %error, "cannot write the call's upload job yet; it waits in memory");
                    return Some(job);
                }
            },
        };
        match self.queue.commit(&path) {
            Ok(()) => self.wake.notify_one(),
            Err(error) => {
                self.metrics.storage_failures.fetch_add(1, Relaxed);
                tracing::error!(uuid = %job.uuid, %error, "cannot queue the call's upload; it is stored after the next start");
            }
        }
        // The job is on disk (prepared at worst, which the next start
        // queues): the marker has done its work. One left by a kill before
        // this is told from the job at the next start.
        if let Some(marker) = marker {
            if let Err(error) = std::fs::remove_file(&marker) {
                tracing::warn!(uuid = %job.uuid, marker = %marker.display(), %error, "cannot remove the marker of a call's upload job now written; the next start finds the call queued and removes it");
            }
        }
        None
    }
}

impl Uploads {
    /// At the receiver's stop, once every recorder thread is done: the jobs
    /// still waiting are written if they can be. One that stays only in
    /// memory (a full disk) is left to the next start by its marker
    /// ([`Uploads::enqueue_recovered`]), as after a kill; a record not
    /// written yet is completed and queued by the next start's recovery.
    /// Only a call whose record was written and whose job and marker both
    /// could not be stays local: logged and counted, as its marker's
    /// failure was.
    pub fn stop(&self) {
        self.commit_written();
        let unwritten =
            std::mem::take(&mut *self.unwritten.lock().unwrap_or_else(|e| e.into_inner()));
        for Unwritten { uuid, record, job } in unwritten {
            match job {
                Prepared::InMemory(_, Some(marker)) => {
                    tracing::warn!(%uuid, record = %record.display(), marker = %marker.display(), "the call's upload job could not be written (a full disk) before the receiver stopped: its marker tells the next start to store the call");
                }
                Prepared::InMemory(_, None) if record.exists() => {
                    self.metrics.storage_failures.fetch_add(1, Relaxed);
                    tracing::error!(%uuid, record = %record.display(), "the call's upload job and its marker could not be written (a full disk) before the receiver stopped: the call stays local only");
                }
                _ => {}
            }
        }
    }

    /// Queues the calls whose records the start's recovery completed (the
    /// receiver was killed before they ended, or between writing a record
    /// and queueing it), then those an earlier run left markers for (their
    /// jobs could not be written: [`Queue::mark`]): nothing received stays
    /// unstored. A call already in the queue is not queued twice. A marker
    /// goes once its call is queued, or when its record is not on disk (the
    /// call cannot be stored: logged and counted); a marker whose name does
    /// not name a record is set aside, logged and counted.
    pub fn enqueue_recovered(&self, recovered: &[PathBuf]) {
        let mut records: Vec<(PathBuf, Option<PathBuf>)> = recovered
            .iter()
            .filter(|path| path.extension().is_some_and(|e| e == "json"))
            .map(|path| (path.clone(), None))
            .collect();
        match self.queue.marked() {
            Ok((marked, bad)) => {
                for marker in bad {
                    self.metrics.storage_failures.fetch_add(1, Relaxed);
                    let aside = marker.with_extension("bad");
                    let moved = std::fs::rename(&marker, &aside);
                    tracing::error!(marker = %marker.display(), aside = %aside.display(), set_aside = moved.is_ok(), "an upload marker does not name a record in the record folder; set aside, nothing queued for it");
                }
                records.extend(marked.into_iter().map(|(m, r)| (r, Some(m))));
            }
            Err(error) => {
                self.metrics.storage_failures.fetch_add(1, Relaxed);
                tracing::error!(%error, "cannot read the upload markers; the calls they stand for are queued at a later start");
            }
        }
        if records.is_empty() {
            return;
        }
        let mut queued = match self.queue.pending() {
            Ok((jobs, _)) => jobs,
            Err(error) => {
                tracing::error!(%error, "cannot read the upload queue");
                Vec::new()
            }
        };
        let unmark = |marker: &Option<PathBuf>| {
            let Some(marker) = marker else { return };
            if let Err(error) = std::fs::remove_file(marker) {
                tracing::warn!(marker = %marker.display(), %error, "cannot remove an upload marker whose call is queued; the next start removes it");
            }
        };
        for (path, marker) in &records {
            let path = path.as_path();
            if queued.iter().any(|q| q.job.record == path) {
                unmark(marker);
                continue;
            }
            if marker.is_some() && !path.exists() {
                self.metrics.storage_failures.fetch_add(1, Relaxed);
                self.metrics.storage_calls_failed.fetch_add(1, Relaxed);
                tracing::error!(record = %path.display(), "an upload marker names a record that is not on disk: its call cannot be stored");
                unmark(marker);
                continue;
            }
            let job = std::fs::read(path)
                .ok()
                .and_then(|text| serde_json::from_slice(&text).ok())
                .and_then(|record| recovered_job(path, &record));
            let Some(job) = job else {
                self.metrics.storage_failures.fetch_add(1, Relaxed);
                tracing::error!(record = %path.display(), "a recovered record cannot be read; its call stays local only");
                continue;
            };
            match self.queue.push(&job) {
                Ok(()) => {
                    tracing::info!(uuid = %job.uuid, record = %path.display(), "a call the earlier run did not finish storing is queued for storage");
                    unmark(marker);
                    self.wake.notify_one();
                    queued.push(Queued {
                        path: PathBuf::new(),
                        job,
                    });
                }
                Err(error) => {
                    // Still a full disk: the job waits in memory, with a
                    // marker on disk (the earlier run's, else a new one)
                    // until this run can write it.
                    tracing::warn!(uuid = %job.uuid, %error, "cannot write the upload job of a recovered call; it waits in memory");
                    let marker = marker.clone().or_else(|| self.mark(&job.uuid, path));
                    self.wait(Unwritten {
                        uuid: job.uuid.clone(),
                        record: path.to_owned(),
                        job: Prepared::InMemory(job, marker),
                    });
                }
            }
        }
    }
}

/// The upload job of a call from its record as written on disk (what
/// [`Uploads::prepare`] makes from the record in memory).
fn recovered_job(path: &FsPath, record: &serde_json::Value) -> Option<Job> {
    let path_of = |value: &serde_json::Value| value.as_str().map(PathBuf::from);
    let mut files = Vec::new();
    for direction in record["directions"].as_object()?.values() {
        let wavs = direction["wav"].as_array().into_iter().flatten();
        files.extend(wavs.filter_map(path_of));
        let raws = direction["raw"].as_array().into_iter().flatten();
        files.extend(raws.filter_map(|raw| path_of(&raw["path"])));
        files.extend(path_of(&direction["bare"]));
    }
    files.extend(path_of(&record["stereo"]));
    let start = time::OffsetDateTime::parse(
        record["start"].as_str()?,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    Some(Job::new(
        record["uuid"].as_str()?.to_owned(),
        path.to_owned(),
        files,
        start,
        record["part"].as_u64().map_or(1, |p| p as u32),
    ))
}

/// The uploader: stores the queued calls in order until `shutdown`; then
/// says which calls' jobs could only be kept in memory ([`Uploads::stop`]).
pub async fn run(config: StorageConfig, uploads: Uploads, feed: Feed, shutdown: CancellationToken) {
    store_until(&config, &uploads, &feed, &shutdown).await;
    uploads.stop();
}

async fn store_until(
    config: &StorageConfig,
    uploads: &Uploads,
    feed: &Feed,
    shutdown: &CancellationToken,
) {
    let metrics = uploads.metrics.clone();
    let mut backoff = Duration::from_secs(1);
    loop {
        uploads.commit_written();
        let jobs = match uploads.queue.pending() {
            Ok((jobs, bad)) => {
                for path in bad {
                    metrics.storage_failures.fetch_add(1, Relaxed);
                    tracing::error!(job = %path.display(), "an upload job cannot be read; set aside");
                }
                jobs
            }
            Err(error) => {
                tracing::error!(%error, "cannot read the upload queue");
                Vec::new()
            }
        };
        show_backlog(&jobs, &metrics);
        if jobs.is_empty() {
            tokio::select! {
                _ = uploads.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        for (done, queued) in jobs.iter().enumerate() {
            let result = tokio::select! {
                result = store_call(config, &queued.job) => result,
                _ = shutdown.cancelled() => return,
            };
            let error = match result {
                Ok((record_key, objects)) => {
                    backoff = Duration::from_secs(1);
                    metrics.storage_calls_stored.fetch_add(1, Relaxed);
                    if let Err(error) = uploads.queue.done(queued) {
                        tracing::warn!(%error, job = %queued.path.display(), "cannot remove a finished upload job; it will be stored again");
                    }
                    tracing::info!(uuid = %queued.job.uuid, bucket = %config.bucket, record = %record_key, objects = objects.len() + 1, "call stored");
                    feed.publish(serde_json::json!({
                        "event": "recording_stored",
                        "uuid": queued.job.uuid,
                        "bucket": config.bucket,
                        "record_key": record_key,
                        "objects": objects,
                    }));
                    show_backlog(&jobs[done + 1..], &metrics);
                    continue;
                }
                // Jobs wait for their records before the uploader takes
                // them: this one will not come (lost, or never written and
                // not recoverable from the provisional one). Tried again, it
                // would hold the calls after it for good.
                Err(StoreError::RecordMissing(record)) => match uploads.queue.fail(queued) {
                    Ok(aside) => {
                        metrics.storage_failures.fetch_add(1, Relaxed);
                        metrics.storage_calls_failed.fetch_add(1, Relaxed);
                        tracing::error!(uuid = %queued.job.uuid, record = %record.display(), job = %aside.display(), "the call's record is not on disk, so the call cannot be stored; its upload job is set aside and the calls after it go on. To store it, put its record back and rename the job to .job");
                        show_backlog(&jobs[done + 1..], &metrics);
                        continue;
                    }
                    Err(source) => {
                        tracing::error!(uuid = %queued.job.uuid, record = %record.display(), job = %queued.path.display(), error = %source, "the call's record is not on disk, so the call cannot be stored, and its upload job cannot be set aside: remove the job by hand, or the calls after it wait");
                        StoreError::Write {
                            path: queued.path.clone(),
                            source,
                        }
                    }
                },
                Err(error) => error,
            };
            metrics.storage_failures.fetch_add(1, Relaxed);
            tracing::warn!(uuid = %queued.job.uuid, endpoint = %config.endpoint, bucket = %config.bucket, %error, retry_in_s = backoff.as_secs(), "cannot store the call yet; it waits, with the calls after it");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
            break;
        }
    }
}

/// Files and bytes waiting, and the oldest job's age, into the metrics.
fn show_backlog(jobs: &[Queued], metrics: &Metrics) {
    let mut files = 0u64;
    let mut bytes = 0;
    for queued in jobs {
        for path in queued.job.files.iter().chain([&queued.job.record]) {
            if let Ok(meta) = std::fs::metadata(path) {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    let oldest = jobs
        .first()
        .and_then(|q| std::fs::metadata(&q.path).ok())
        .and_then(|meta| meta.modified().ok())
        .and_then(|at| SystemTime::now().duration_since(at).ok())
        .map_or(0, |age| age.as_secs());
    metrics.storage_files_waiting.store(files as i64, Relaxed);
    metrics.storage_bytes_waiting.store(bytes as i64, Relaxed);
    metrics.storage_oldest_seconds.store(oldest as i64, Relaxed);
}

/// Stores one call: its files, then its record naming them. Returns the
/// record's key and the objects.
async fn store_call(
    config: &StorageConfig,
    job: &Job,
) -> Result<(String, Vec<StoredObject>), StoreError> {
    // Before any audio: without its record a call is not stored at all.
    if let Err(error) = tokio::fs::metadata(&job.record).await {
        if error.kind() == std::io::ErrorKind::NotFound {
            return Err(StoreError::RecordMissing(job.record.clone()));
        }
    }
    let mut objects = Vec::new();
    for file in &job.files {
        match tokio::fs::metadata(file).await {
            Ok(_) => objects.push(put_file(config, &config.key(job, file), file).await?),
            // Removed by hand, or by an earlier run of this very job.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(uuid = %job.uuid, file = %file.display(), "a file of the call is gone; stored without it");
            }
            Err(source) => {
                return Err(StoreError::Read {
                    path: file.clone(),
                    source,
                })
            }
        }
    }
    let text = match tokio::fs::read(&job.record).await {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::RecordMissing(job.record.clone()));
        }
        Err(source) => {
            return Err(StoreError::Read {
                path: job.record.clone(),
                source,
            })
        }
    };
    let mut record: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|_| StoreError::RecordUnreadable(job.record.clone()))?;
    let record_key = config.key(job, &job.record);
    // An earlier run may have stored objects this one found gone: keep them.
    let earlier: Vec<serde_json::Value> = record["stored"]["objects"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut named: Vec<serde_json::Value> = objects
        .iter()
        .map(|o| serde_json::to_value(o).unwrap_or_default())
        .collect();
    for object in earlier {
        if !named.iter().any(|n| n["key"] == object["key"]) {
            named.push(object);
        }
    }
    record["stored"] = serde_json::json!({
        "bucket": config.bucket,
        "record_key": record_key.as_ref(),
        "objects": named,
    });
    let mut text = serde_json::to_vec_pretty(&record).unwrap_or_default();
    text.push(b'\n');
    let (path, temporary) = (job.record.clone(), job.record.with_extension("json.tmp"));
    tokio::task::spawn_blocking(move || write_whole(&path, &temporary, &text))
        .await
        .unwrap_or_else(|joined| Err(std::io::Error::other(joined)))
        .map_err(|source| StoreError::Write {
            path: job.record.clone(),
            source,
        })?;
    put_file(config, &record_key, &job.record).await?;
    if !config.keep_local {
        for file in &job.files {
            if let Err(error) = tokio::fs::remove_file(file).await {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(file = %file.display(), %error, "stored, but the local copy cannot be removed");
                }
            }
        }
    }
    Ok((record_key.to_string(), objects))
}

/// Stores one file under `key` and checks what the store says it got.
async fn put_file(
    config: &StorageConfig,
    key: &Key,
    path: &FsPath,
) -> Result<StoredObject, StoreError> {
    let read_error = |source| StoreError::Read {
        path: path.to_owned(),
        source,
    };
    let store_error = |source| StoreError::Store {
        key: key.to_string(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(read_error)?;
    let size = file.metadata().await.map_err(read_error)?.len();
    let mut expected = Expected::default();
    let multipart = size > PART_SIZE as u64;
    let result = if multipart {
        let mut upload = config.store.put_multipart(key).await.map_err(store_error)?;
        let parts = async {
            let mut left = size;
            while left > 0 {
                let length = left.min(PART_SIZE as u64) as usize;
                let mut part = vec![0; length];
                file.read_exact(&mut part).await.map_err(read_error)?;
                left -= length as u64;
                expected.part(&part);
                upload.put_part(part.into()).await.map_err(store_error)?;
            }
            Ok::<(), StoreError>(())
        };
        if let Err(error) = parts.await {
            let _ = upload.abort().await;
            return Err(error);
        }
        upload.complete().await.map_err(store_error)?
    } else {
        let mut bytes = Vec::with_capacity(size as usize);
        file.read_to_end(&mut bytes).await.map_err(read_error)?;
        expected.part(&bytes);
        config
            .store
            .put(key, PutPayload::from(bytes))
            .await
            .map_err(store_error)?
    };
    match expected.check(result.e_tag.as_deref(), multipart) {
        Verdict::Verified => {}
        Verdict::Mismatch => {
            return Err(StoreError::Mismatch {
                key: key.to_string(),
                got: result.e_tag.unwrap_or_default(),
                expected: expected.etag(multipart),
            })
        }
        Verdict::Opaque => {
            // Only the size can be compared.
            let meta = config.store.head(key).await.map_err(store_error)?;
            if meta.size != size {
                return Err(StoreError::Mismatch {
                    key: key.to_string(),
                    got: format!("{} bytes", meta.size),
                    expected: format!("{size} bytes"),
                });
            }
        }
    }
    Ok(StoredObject {
        key: key.to_string(),
        size,
        etag: result.e_tag,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call_record(record: PathBuf) -> CallRecord {
        CallRecord {
            uuid: "478525a8-8263-4550-b18c-000000000001".into(),
            caller: None,
            callee: None,
            call_id: None,
            tap: None,
            sender: "127.0.0.1:5000".into(),
            mode: "data",
            sender_rtp_ports: None,
            start: time::OffsetDateTime::UNIX_EPOCH,
            end: None,
            end_reason: None,
            error: None,
            malformed: 0,
            directions: Default::default(),
            dtmf: Vec::new(),
            fax: false,
            stereo: None,
            part: 1,
            offset_ms: 0,
            streams: Vec::new(),
            record,
        }
    }

    /// A call ended on a full disk: its record is kept to be written, and
    /// its job waits out of the uploader's sight (a job taken without its
    /// record is given up on) until the record is on disk.
    #[test]
    fn a_job_waits_for_its_record_before_the_uploader_takes_it() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = Uploads::open(dir.path(), Arc::default()).unwrap();
        let record = call_record(dir.path().join("call.json"));
        uploads.prepare(&record);
        uploads.enqueue(&record);
        uploads.commit_written();
        assert!(uploads.queue.pending().unwrap().0.is_empty());

        std::fs::write(&record.record, b"{}").unwrap();
        uploads.commit_written();
        let (pending, _) = uploads.queue.pending().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].job.record, record.record);
        assert_eq!(pending[0].job.day, "1970/01/01");
    }

    /// A start's recovery makes the same job from a record on disk as the
    /// call's end made from it in memory: the same files, day and part, so
    /// the objects go under the same keys either way.
    #[test]
    fn a_record_read_back_gives_the_job_its_call_gave() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = call_record(dir.path().join("call.json"));
        // 23:30 at UTC-2 is the next day in UTC, the day of the keys.
        record.start = time::macros::datetime!(2026-11-23 23:30 -2);
        record.part = 2;
        record.stereo = Some(dir.path().join("call.stereo.wav"));
        let read = record.directions.get_mut("R").unwrap();
        read.wav = vec![
            dir.path().join("call.R.wav"),
            dir.path().join("call.R.2.wav"),
        ];
        read.raw = vec![crate::record::RawRecord {
            payload_type: 4,
            path: dir.path().join("call.R.pt04.raw"),
            reason: "no decoder",
        }];
        record.directions.get_mut("W").unwrap().bare = Some(dir.path().join("call.W.raw"));
        crate::record::write_record(&record).unwrap();

        let from_memory = Job::new(
            record.uuid.clone(),
            record.record.clone(),
            record.files(),
            record.start,
            record.part,
        );
        let on_disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&record.record).unwrap()).unwrap();
        let recovered = recovered_job(&record.record, &on_disk).unwrap();
        assert_eq!(recovered, from_memory);
        assert_eq!(recovered.day, "2026/11/24");
        assert_eq!(recovered.files.len(), 5);
    }

    /// A 512 KiB tmpfs, unmounted on drop; `None` (and SKIPPED) without root.
    struct Tmpfs(tempfile::TempDir);

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.0.path())
                .status();
        }
    }

    fn small_tmpfs(test: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!(
                "SKIPPED {test}: mounting a tmpfs needs root (run the tests as root, as CI does)"
            );
            return None;
        }
        Some(Tmpfs(dir))
    }

    /// The case a receiver's stop could not save before markers: the call's
    /// record is on disk, its job cannot be written (a real full tmpfs).
    /// The marker, an empty file, still can; the next start, with room,
    /// queues the call from it and removes it. Dropped without `stop`, as a
    /// kill -9 would, the same.
    #[test]
    fn a_call_whose_job_did_not_fit_is_queued_by_the_next_start() {
        let Some(disk) = small_tmpfs("a_call_whose_job_did_not_fit") else {
            return;
        };
        let records = disk.0.path();
        let metrics = Arc::new(Metrics::default());
        for (n, stop) in [(1, true), (2, false)] {
            let uploads = Uploads::open(records, metrics.clone()).unwrap();
            let mut record = call_record(records.join(format!("2026-12-05/call{n}.json")));
            record.uuid = format!("478525a8-8263-4550-b18c-00000000000{n}");
            std::fs::create_dir_all(record.record.parent().unwrap()).unwrap();
            crate::record::write_record(&record).unwrap();
            let filler = records.join("filler");
            let mut file = std::fs::File::create(&filler).unwrap();
            while std::io::Write::write_all(&mut file, &[0u8; 512]).is_ok() {}
            drop(file);

            uploads.prepare(&record);
            uploads.enqueue(&record);
            uploads.commit_written();
            assert!(
                uploads.queue.pending().unwrap().0.is_empty(),
                "the disk is full"
            );
            let (marked, bad) = uploads.queue.marked().unwrap();
            assert_eq!((marked.len(), bad.len()), (1, 0));
            assert_eq!(marked[0].1, record.record);
            if stop {
                uploads.stop();
            }
            drop(uploads);
            assert_eq!(metrics.storage_failures.load(Relaxed), 0);

            std::fs::remove_file(&filler).unwrap();
            let restarted = Uploads::open(records, metrics.clone()).unwrap();
            restarted.enqueue_recovered(&[]);
            let (pending, _) = restarted.queue.pending().unwrap();
            assert_eq!(pending.len(), 1, "{pending:?}");
            assert_eq!(pending[0].job.record, record.record);
            assert_eq!(pending[0].job.uuid, record.uuid);
            assert!(
                restarted.queue.marked().unwrap().0.is_empty(),
                "the marker went"
            );
            restarted.queue.done(&pending[0]).unwrap();
        }
        assert_eq!(metrics.storage_failures.load(Relaxed), 0);
    }

    /// A marker whose call is queued already (a kill between writing the job
    /// and removing the marker) queues nothing twice; one whose record is
    /// gone is counted; one whose name is crafted is set aside, counted.
    #[test]
    fn markers_queue_each_call_once_and_bad_ones_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let uploads = Uploads::open(dir.path(), metrics.clone()).unwrap();
        let record = call_record(dir.path().join("2026-12-05/call.json"));
        std::fs::create_dir_all(record.record.parent().unwrap()).unwrap();
        crate::record::write_record(&record).unwrap();
        uploads.prepare(&record);
        uploads.enqueue(&record);
        uploads.queue.mark(&record.record).unwrap();
        uploads
            .queue
            .mark(&dir.path().join("2026-12-05/gone.json"))
            .unwrap();
        let crafted = dir.path().join(".upload/2026-12-05.a\\..\\b.json.unqueued");
        std::fs::write(&crafted, b"").unwrap();
        uploads.enqueue_recovered(std::slice::from_ref(&record.record));
        assert_eq!(uploads.queue.pending().unwrap().0.len(), 1);
        assert!(uploads.queue.marked().unwrap().0.is_empty());
        assert!(!crafted.exists() && crafted.with_extension("bad").exists());
        assert_eq!(metrics.storage_failures.load(Relaxed), 2);
        assert_eq!(metrics.storage_calls_failed.load(Relaxed), 1);
    }
}
