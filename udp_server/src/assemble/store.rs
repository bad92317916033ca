//! A call's parts in object storage, found and downloaded for joining.
//!
//! Receivers store a part's files as `PREFIX/YYYY/MM/DD/<name>`, the day
//! being the part's start (UTC) and the names beginning with the UUID
//! (`UUID.json`, `UUID.R.wav`; `UUID.part2.json`... for the parts after a
//! failover, see [`crate::storage::object_name`]). So the keys of one call
//! on one day sit together in the bucket's order, and one listing request
//! per day finds them: S3's `start-after=PREFIX/YYYY/MM/DD/UUID`, read only
//! while the names begin with the UUID. Listing the whole prefix instead
//! would read every key of every call ever stored.
//!
//! Which days: the ones given (`--day`) and those of the parts found in
//! local folders, each with its neighbours (the parts of a call begin within
//! a day of each other: [`super::join`] refuses offsets past 24 h, and a
//! call crosses midnight). Failing that, every day folder, newest first
//! (one request per year, month and day folder visited), until a day has a
//! record of the call; then its neighbours too. A call assembled soon after
//! it ended costs a handful of requests.
//!
//! Each record found is downloaded and checked (it is the call's, it names
//! its objects, it is stored where it says), then each WAV it names, whose
//! size is checked against the record's; the record is written beside them
//! with its WAV paths pointing at the downloads, for the joining.

use std::collections::BTreeSet;
use std::path::Path;

use futures_util::StreamExt as _;
use object_store::path::Path as Key;
use object_store::ObjectStore as _;
use time::{Date, Month};
use tokio::io::AsyncWriteExt as _;

use super::{AssembleError, Found, RecordFile};
use crate::storage::{object_name, StorageConfig};

/// A record is a few kilobytes; anything this large is not one.
const MAX_RECORD_BYTES: u64 = 16 << 20;

/// The records of `uuid` in the store, downloaded with their WAVs into `into`.
pub(super) async fn fetch(
    config: &StorageConfig,
    uuid: &str,
    days: &BTreeSet<Date>,
    into: &Path,
) -> Result<Vec<(Found, RecordFile)>, AssembleError> {
    let mut keys = records_around(config, uuid, days).await?;
    if keys.is_empty() {
        if let Some(day) = newest_day_with(config, uuid, days).await? {
            keys = records_around(config, uuid, &BTreeSet::from([day])).await?;
        }
    }
    tracing::info!(bucket = %config.bucket, records = keys.len(), "parts found in the store");
    let mut found = Vec::new();
    for (n, key) in keys.iter().enumerate() {
        let dir = into.join(n.to_string());
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(super::io_error(&dir))?;
        found.push(download_part(config, uuid, key, &dir).await?);
    }
    Ok(found)
}

fn location(config: &StorageConfig, key: &Key) -> String {
    format!("s3://{}/{key}", config.bucket)
}

fn day_key(config: &StorageConfig, day: Date) -> Key {
    config.under(&format!(
        "{:04}/{:02}/{:02}",
        day.year(),
        u8::from(day.month()),
        day.day()
    ))
}

/// The record keys of `uuid` on `days` and the days beside them.
async fn records_around(
    config: &StorageConfig,
    uuid: &str,
    days: &BTreeSet<Date>,
) -> Result<Vec<Key>, AssembleError> {
    let around: BTreeSet<Date> = days
        .iter()
        .flat_map(|day| [day.previous_day(), Some(*day), day.next_day()])
        .flatten()
        .collect();
    let mut keys = Vec::new();
    for day in around {
        keys.extend(records_on(config, uuid, day).await?);
    }
    Ok(keys)
}

/// The record keys of `uuid` on `day`: one listing request, from just
/// before the UUID's names to their end.
async fn records_on(
    config: &StorageConfig,
    uuid: &str,
    day: Date,
) -> Result<Vec<Key>, AssembleError> {
    let folder = day_key(config, day);
    let mut listing = config
        .store
        .list_with_offset(Some(&folder), &folder.child(uuid));
    let mut keys = Vec::new();
    while let Some(object) = listing.next().await {
        let object = object.map_err(|error| AssembleError::Store {
            location: location(config, &folder),
            error,
        })?;
        let name = object.location.filename().unwrap_or_default();
        if !name.starts_with(uuid) {
            break;
        }
        if name.ends_with(".json") && !name.contains(".assembled.") {
            keys.push(object.location);
        }
    }
    Ok(keys)
}

/// The newest day folder with a record of `uuid` (the days already looked
/// at skipped), walking `YYYY/MM/DD` down from the newest.
async fn newest_day_with(
    config: &StorageConfig,
    uuid: &str,
    seen: &BTreeSet<Date>,
) -> Result<Option<Date>, AssembleError> {
    let root = (!config.prefix.is_empty()).then(|| Key::from(config.prefix.as_str()));
    for (year, year_key) in numbered(config, root.as_ref()).await? {
        for (month, month_key) in numbered(config, Some(&year_key)).await? {
            for (day, _) in numbered(config, Some(&month_key)).await? {
                let Ok(month) = Month::try_from(month as u8) else {
                    continue;
                };
                let Ok(date) = Date::from_calendar_date(year as i32, month, day as u8) else {
                    continue;
                };
                if !seen.contains(&date) && !records_on(config, uuid, date).await?.is_empty() {
                    return Ok(Some(date));
                }
            }
        }
    }
    Ok(None)
}

/// The folders under `prefix` whose names are numbers, highest first.
async fn numbered(
    config: &StorageConfig,
    prefix: Option<&Key>,
) -> Result<Vec<(u32, Key)>, AssembleError> {
    let listing = config
        .store
        .list_with_delimiter(prefix)
        .await
        .map_err(|error| AssembleError::Store {
            location: location(config, prefix.unwrap_or(&Key::default())),
            error,
        })?;
    let mut folders: Vec<(u32, Key)> = listing
        .common_prefixes
        .into_iter()
        .filter_map(|folder| {
            let n = folder.filename()?.parse().ok()?;
            Some((n, folder))
        })
        .collect();
    folders.sort_by_key(|folder| std::cmp::Reverse(folder.0));
    Ok(folders)
}

/// Downloads the record at `key` and the WAVs it names into `dir`.
async fn download_part(
    config: &StorageConfig,
    uuid: &str,
    key: &Key,
    dir: &Path,
) -> Result<(Found, RecordFile), AssembleError> {
    let origin = location(config, key);
    let lie = |why: String| AssembleError::RecordLies {
        record: origin.clone(),
        why,
    };
    let store_error = |key: &Key| {
        let at = location(config, key);
        let record = origin.clone();
        move |error| match error {
            object_store::Error::NotFound { .. } => AssembleError::MissingObject {
                location: at,
                record,
            },
            error => AssembleError::Store {
                location: at,
                error,
            },
        }
    };
    let got = config.store.get(key).await.map_err(store_error(key))?;
    if got.meta.size > MAX_RECORD_BYTES {
        return Err(lie(format!("{} bytes: not a call record", got.meta.size)));
    }
    let bytes = got.bytes().await.map_err(store_error(key))?;
    let mut text: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|error| lie(format!("not a call record: {error}")))?;
    let record: RecordFile = serde_json::from_value(text.clone())
        .map_err(|error| lie(format!("not a call record: {error}")))?;
    if record.uuid != uuid {
        return Err(lie(format!("it is the record of call {}", record.uuid)));
    }
    let Some(stored) = &record.stored else {
        return Err(lie(
            "it names no stored objects (no `stored` section)".into()
        ));
    };
    if stored.record_key != key.as_ref() {
        return Err(lie(format!(
            "it says it is stored as {}",
            stored.record_key
        )));
    }
    let folder = Key::from_iter(key.parts().take(key.parts().count().saturating_sub(1)));
    for (direction, files) in &record.directions {
        for (i, wav) in files.wav.iter().enumerate() {
            let Some(name) = wav.file_name().and_then(|n| n.to_str()) else {
                return Err(lie(format!(
                    "{direction}: {} is not a file name",
                    wav.display()
                )));
            };
            let object = folder.child(object_name(uuid, record.part, name));
            let Some(named) = stored.objects.iter().find(|o| o.key == object.as_ref()) else {
                return Err(lie(format!(
                    "{direction}: {name} has no stored object ({object} expected)"
                )));
            };
            let path = dir.join(name);
            let size = download(config, &object, &path)
                .await
                .map_err(|error| match error {
                    Download::Store(error) => store_error(&object)(error),
                    Download::Write(error) => super::io_error(&path)(error),
                })?;
            if named.size.is_some_and(|expected| expected != size) {
                return Err(lie(format!(
                    "{object} has {size} bytes in the store, the record says {}",
                    named.size.unwrap_or_default()
                )));
            }
            text["directions"][direction]["wav"][i] = path.display().to_string().into();
        }
    }
    let path = dir.join(key.filename().unwrap_or("record.json"));
    let mut bytes = serde_json::to_vec_pretty(&text).unwrap_or_default();
    bytes.push(b'\n');
    tokio::fs::write(&path, bytes)
        .await
        .map_err(super::io_error(&path))?;
    let record: RecordFile =
        serde_json::from_value(text).map_err(|error| lie(format!("not a call record: {error}")))?;
    Ok((Found { path, origin }, record))
}

enum Download {
    Store(object_store::Error),
    Write(std::io::Error),
}

/// `key` into the file `path`, streamed; the bytes written.
async fn download(config: &StorageConfig, key: &Key, path: &Path) -> Result<u64, Download> {
    let got = config.store.get(key).await.map_err(Download::Store)?;
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(Download::Write)?;
    let mut stream = got.into_stream();
    let mut size = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(Download::Store)?;
        file.write_all(&chunk).await.map_err(Download::Write)?;
        size += chunk.len() as u64;
    }
    file.flush().await.map_err(Download::Write)?;
    Ok(size)
}
