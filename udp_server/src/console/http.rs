//! The console's routes on the HTTP port: thin handlers over [`super`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Form, Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::broadcast::{self, error::TryRecvError};

use super::audio::{envelope, Meter};
use super::index::Query as Search;
use super::{session_cookie, session_label, COOKIE, SESSION_MAX};
use crate::http::HttpState;
use crate::live::{LiveCall, LiveCalls, LiveEvent, MeterGuard};

const INDEX_HTML: &str = include_str!("../../console/index.html");
const LOGIN_HTML: &str = include_str!("../../console/login.html");
const CONSOLE_JS: &str = include_str!("../../console/console.js");
const CONSOLE_CSS: &str = include_str!("../../console/console.css");

/// How often the live view is sent: the meters move this often.
const LIVE_TICK: Duration = Duration::from_millis(200);
/// Envelope buckets when the page does not say.
const DEFAULT_BUCKETS: usize = 1000;
/// Calls one console meters at most (the first in start order): each metered
/// call's audio is decoded and copied for the console, so a page open on a
/// busy receiver must not cost a subscription per call.
const MAX_METERED_CALLS: usize = 50;

#[derive(Deserialize)]
struct LiveOptions {
    /// `0`: no meters (the page is not showing the live table).
    meters: Option<u8>,
}

/// The console's routes, under `/console`.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(page))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", axum::routing::post(logout))
        .route("/console/console.css", get(css))
        .route("/console/console.js", get(js))
        .route("/console/api/live", get(live))
        .route("/console/api/recordings", get(search))
        .route("/console/api/recordings/{uuid}", get(recording))
        .route("/console/api/recordings/{uuid}/envelope", get(waveform))
        .route("/console/api/recordings/{uuid}/files/{kind}", get(download))
}

/// Who asks, when they may: a session or the bearer token. Logged as such.
fn who(state: &HttpState, headers: &HeaderMap, peer: SocketAddr) -> Option<String> {
    if let Some(id) = session_cookie(headers) {
        if state.console.sessions.check(id, Instant::now()) {
            return Some(format!("{} from {peer}", session_label(id)));
        }
    }
    let token = state.token.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    rst_control::secret::matches(token.as_bytes(), given.as_bytes())
        .then(|| format!("token from {peer}"))
}

fn unauthorized(state: &HttpState) -> Response {
    state.metrics.http_refused.fetch_add(1, Relaxed);
    (
        StatusCode::UNAUTHORIZED,
        "sign in at /console/login, or give Authorization: Bearer TOKEN\n",
    )
        .into_response()
}

macro_rules! signed_in {
    ($state:expr, $headers:expr, $peer:expr) => {
        match who(&$state, &$headers, $peer) {
            Some(who) => who,
            None => return unauthorized(&$state),
        }
    };
}

fn html(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn page(
    State(state): State<HttpState>,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    match who(&state, &headers, peer) {
        Some(_) => html(INDEX_HTML.to_owned()),
        None => Redirect::to("/console/login").into_response(),
    }
}

async fn login_page() -> Response {
    html(LOGIN_HTML.replace("<!--message-->", ""))
}

#[derive(Deserialize)]
struct SignIn {
    token: String,
}

async fn login(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Form(form): Form<SignIn>,
) -> Response {
    let sign_ins = &state.console.sign_ins;
    if let Err(wait) = sign_ins.check(peer.ip(), Instant::now()) {
        state
            .metrics
            .console_sign_in_throttled
            .fetch_add(1, Relaxed);
        tracing::warn!(%peer, "console sign-in refused unchecked: too many wrong tokens from this address");
        let seconds = wait.as_secs() + 1;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, seconds.to_string())],
            html(LOGIN_HTML.replace(
                "<!--message-->",
                &format!("<p class=error id=throttled>Too many wrong tokens from your address: try again in {seconds} s.</p>"),
            )),
        )
            .into_response();
    }
    let Some(token) = &state.token else {
        return (
            StatusCode::FORBIDDEN,
            html(LOGIN_HTML.replace(
                "<!--message-->",
                "<p class=error>The console is off: give the receiver an http-token-file.</p>",
            )),
        )
            .into_response();
    };
    if !rst_control::secret::matches(token.as_bytes(), form.token.trim().as_bytes()) {
        state.metrics.http_refused.fetch_add(1, Relaxed);
        sign_ins.failed(peer.ip(), Instant::now());
        tracing::warn!(%peer, "console sign-in refused: wrong token");
        return (
            StatusCode::UNAUTHORIZED,
            html(LOGIN_HTML.replace(
                "<!--message-->",
                "<p class=error id=refused>Wrong token.</p>",
            )),
        )
            .into_response();
    }
    sign_ins.succeeded(peer.ip());
    let id = state.console.sessions.open(Instant::now());
    tracing::info!(%peer, session = %session_label(&id), "console sign-in");
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_MAX.as_secs()
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/console/".into()),
        ],
    )
        .into_response()
}

async fn logout(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        state.console.sessions.close(id);
    }
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
            ),
            (header::LOCATION, "/console/login".into()),
        ],
    )
        .into_response()
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css")], CONSOLE_CSS).into_response()
}

async fn js(
    State(state): State<HttpState>,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    signed_in!(state, headers, peer);
    ([(header::CONTENT_TYPE, "text/javascript")], CONSOLE_JS).into_response()
}

/// The live view as Server-Sent Events: every [`LIVE_TICK`], the calls in
/// progress with their levels and media, the taps, the index's size.
async fn live(
    State(state): State<HttpState>,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(options): Query<LiveOptions>,
) -> Response {
    signed_in!(state, headers, peer);
    let mut tick = tokio::time::interval(LIVE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let watch = Watch {
        live: state.live.clone(),
        calls: HashMap::new(),
        metered: if options.meters == Some(0) {
            0
        } else {
            MAX_METERED_CALLS
        },
    };
    let stream = futures_util::stream::unfold(
        (watch, tick, state),
        |(mut watch, mut tick, state)| async move {
            tokio::select! {
                _ = tick.tick() => {}
                () = state.shutdown.cancelled() => return None,
            }
            let view = serde_json::json!({
                "calls": watch.look(),
                "taps": state.console.taps.list(),
                "recordings": state.console.index.len(),
                "indexed": state.console.index.loaded(),
            });
            let event = Event::default().data(view.to_string());
            Some((Ok::<_, Infallible>(event), (watch, tick, state)))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// One console's view of the calls in progress: it hears the audio of the
/// first `metered` calls to move their meters.
struct Watch {
    live: Arc<LiveCalls>,
    calls: HashMap<String, Watched>,
    metered: usize,
}

struct Watched {
    call: Arc<LiveCall>,
    /// The call's audio and its meters, when this console meters it.
    heard: Option<(broadcast::Receiver<LiveEvent>, [Meter; 2], MeterGuard)>,
}

impl Watch {
    fn look(&mut self) -> Vec<serde_json::Value> {
        let infos = self.live.list();
        self.calls
            .retain(|uuid, _| infos.iter().any(|info| info.uuid == *uuid));
        let mut view = Vec::with_capacity(infos.len());
        for (n, info) in infos.into_iter().enumerate() {
            if !self.calls.contains_key(&info.uuid) {
                let Some(call) = self.live.find(&info.uuid) else {
                    continue;
                };
                self.calls
                    .insert(info.uuid.clone(), Watched { call, heard: None });
            }
            let Some(watched) = self.calls.get_mut(&info.uuid) else {
                continue;
            };
            // Calls ending make room for later ones.
            if n < self.metered && watched.heard.is_none() {
                let (events, guard) = watched.call.subscribe_to_meter();
                watched.heard = Some((events, [Meter::default(); 2], guard));
            }
            let mut call = serde_json::to_value(&info).unwrap_or_default();
            call["media"] = serde_json::to_value(watched.call.media()).unwrap_or_default();
            call["levels"] = match &mut watched.heard {
                Some((events, meters, _)) => {
                    loop {
                        match events.try_recv() {
                            Ok(LiveEvent::Audio(frame)) => {
                                meters[frame.direction as usize].add(&frame.samples)
                            }
                            Ok(_) | Err(TryRecvError::Lagged(_)) => {}
                            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                        }
                    }
                    serde_json::json!({ "R": meters[0].take(), "W": meters[1].take() })
                }
                None => serde_json::Value::Null,
            };
            view.push(call);
        }
        view
    }
}

async fn search(
    State(state): State<HttpState>,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    query: Result<Query<Search>, QueryRejection>,
) -> Response {
    signed_in!(state, headers, peer);
    let query = match query {
        Ok(Query(query)) => query,
        Err(error) => return (StatusCode::BAD_REQUEST, error.body_text()).into_response(),
    };
    match state.console.index.search(&query) {
        Ok((rows, total)) => Json(serde_json::json!({
            "total": total,
            "indexed": state.console.index.loaded(),
            "rows": rows,
        }))
        .into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response(),
    }
}

/// Why a recording's file is not served.
#[derive(Debug, thiserror::Error)]
enum FileError {
    /// No ended call with this UUID is indexed.
    #[error("no recording has this uuid")]
    Unknown,
    /// The record names no such file.
    #[error("this recording has no such file (json, stereo, R or W)")]
    NoSuchFile,
    /// The file is missing, unreadable, or not under the record folder.
    #[error("the file cannot be read")]
    Unreadable,
}

impl IntoResponse for FileError {
    fn into_response(self) -> Response {
        let status = match self {
            FileError::Unknown | FileError::NoSuchFile => StatusCode::NOT_FOUND,
            FileError::Unreadable => StatusCode::GONE,
        };
        (status, format!("{self}\n")).into_response()
    }
}

/// The record of `uuid`, read from disk, and its path.
async fn record_of(
    state: &HttpState,
    uuid: &str,
) -> Result<(serde_json::Value, PathBuf), FileError> {
    let path = state
        .console
        .index
        .record_of(uuid)
        .ok_or(FileError::Unknown)?;
    let path = inside(&state.console.record_dir, &path).ok_or(FileError::Unreadable)?;
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|_| FileError::Unreadable)?;
    let record = serde_json::from_slice(&bytes).map_err(|_| FileError::Unreadable)?;
    Ok((record, path))
}

/// `path`, canonical, if it is a file under `dir` (canonical already).
fn inside(dir: &Path, path: &Path) -> Option<PathBuf> {
    let path = path.canonicalize().ok()?;
    (path.starts_with(dir) && path.is_file()).then_some(path)
}

/// The file of a recording a `kind` names: only paths its record gives.
fn file_of(record: &serde_json::Value, record_path: &Path, kind: &str) -> Option<PathBuf> {
    let named = |pointer: &str| record.pointer(pointer)?.as_str().map(PathBuf::from);
    match kind {
        "json" => Some(record_path.to_owned()),
        "stereo" => named("/stereo"),
        "R" => named("/directions/R/wav/0"),
        "W" => named("/directions/W/wav/0"),
        _ => None,
    }
}

async fn recording(
    State(state): State<HttpState>,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath(uuid): UrlPath<String>,
) -> Response {
    signed_in!(state, headers, peer);
    match record_of(&state, &uuid).await {
        Ok((record, _)) => Json(record).into_response(),
        Err(error) => error.into_response(),
    }
}

#[derive(Deserialize)]
struct Buckets {
    buckets: Option<usize>,
}

async fn waveform(
    State(state): State<HttpState>,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath(uuid): UrlPath<String>,
    Query(wanted): Query<Buckets>,
) -> Response {
    signed_in!(state, headers, peer);
    let (record, path) = match record_of(&state, &uuid).await {
        Ok(found) => found,
        Err(error) => return error.into_response(),
    };
    let Some(stereo) =
        file_of(&record, &path, "stereo").and_then(|file| inside(&state.console.record_dir, &file))
    else {
        return FileError::NoSuchFile.into_response();
    };
    let buckets = wanted.buckets.unwrap_or(DEFAULT_BUCKETS);
    let drawn = tokio::task::spawn_blocking(move || {
        let reader = hound::WavReader::open(&stereo).ok()?;
        let spec = reader.spec();
        let samples: Vec<i16> = reader.into_samples::<i16>().map_while(Result::ok).collect();
        Some(envelope(
            &samples,
            usize::from(spec.channels),
            spec.sample_rate,
            buckets,
        ))
    })
    .await;
    match drawn {
        Ok(Some(envelope)) => Json(envelope).into_response(),
        _ => FileError::Unreadable.into_response(),
    }
}

#[derive(Deserialize)]
struct Purpose {
    play: Option<u8>,
}

/// A recording's file, byte for byte as on disk; logged with who and when.
async fn download(
    State(state): State<HttpState>,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath((uuid, kind)): UrlPath<(String, String)>,
    Query(purpose): Query<Purpose>,
) -> Response {
    let who = signed_in!(state, headers, peer);
    let (record, path) = match record_of(&state, &uuid).await {
        Ok(found) => found,
        Err(error) => return error.into_response(),
    };
    let Some(file) = file_of(&record, &path, &kind) else {
        return FileError::NoSuchFile.into_response();
    };
    let Some(file) = inside(&state.console.record_dir, &file) else {
        return FileError::Unreadable.into_response();
    };
    let Ok(bytes) = tokio::fs::read(&file).await else {
        return FileError::Unreadable.into_response();
    };
    let event = if purpose.play == Some(1) {
        "recording_play"
    } else {
        "download"
    };
    tracing::info!(uuid = %uuid, file = %kind, %who, event, "a recording was fetched from the console");
    state.feed.publish(serde_json::json!({
        "event": event,
        "uuid": uuid,
        "file": kind,
        "listener": who,
        "time": crate::http::now(),
    }));
    let name = file
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("recording")
        .replace('"', "");
    let content_type = if kind == "json" {
        "application/json"
    } else {
        "audio/wav"
    };
    (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_console_hears_only_the_calls_it_meters() {
        let socket = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let live = Arc::new(LiveCalls::new(
            socket,
            Arc::new(crate::metrics::Metrics::default()),
            0,
        ));
        let info = |n: u64| crate::live::CallInfo {
            uuid: format!("call-{n}"),
            caller: None,
            callee: None,
            call_id: None,
            tap: None,
            sender: "127.0.0.1:1".into(),
            mode: "data",
            start: time::OffsetDateTime::UNIX_EPOCH,
            streams: Vec::new(),
            listeners: 0,
            duration: 0.0,
        };
        let calls: Vec<_> = (0..MAX_METERED_CALLS as u64 + 10)
            .map(|n| live.open(n, info(n), None, None))
            .collect();
        let watch = |metered| Watch {
            live: live.clone(),
            calls: HashMap::new(),
            metered,
        };
        let metered = |view: &[serde_json::Value]| {
            view.iter().filter(|call| !call["levels"].is_null()).count()
        };
        let mut unmetered = watch(0);
        let view = unmetered.look();
        assert_eq!((view.len(), metered(&view)), (calls.len(), 0));
        assert!(
            calls.iter().all(|call| !call.wanted()),
            "nobody hears a call"
        );

        let mut console = watch(MAX_METERED_CALLS);
        let view = console.look();
        assert_eq!(metered(&view), MAX_METERED_CALLS);
        assert!(calls[..MAX_METERED_CALLS].iter().all(|call| call.wanted()));
        assert!(!calls[MAX_METERED_CALLS].wanted());
        // A call ends: the next one is metered.
        live.close(0);
        let view = console.look();
        assert_eq!(metered(&view), MAX_METERED_CALLS);
        assert!(calls[MAX_METERED_CALLS].wanted());
        assert!(!calls[MAX_METERED_CALLS + 1].wanted());
        drop(console);
        assert!(
            calls.iter().all(|call| !call.wanted()),
            "a closed page hears nothing"
        );
    }

    #[test]
    fn only_files_a_record_names_are_served() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let day = root.join("2026-12-04");
        std::fs::create_dir_all(&day).unwrap();
        let record_path = day.join("u.json");
        let stereo = day.join("u.wav");
        std::fs::write(&stereo, b"RIFF").unwrap();
        std::fs::write(&record_path, b"{}").unwrap();
        let outside = dir.path().parent().unwrap().join("secret");
        let record = serde_json::json!({
            "stereo": stereo,
            "directions": {"R": {"wav": ["../../etc/passwd"]}, "W": {"wav": [outside]}},
        });
        assert_eq!(
            file_of(&record, &record_path, "json"),
            Some(record_path.clone())
        );
        let served = |kind| file_of(&record, &record_path, kind).and_then(|f| inside(&root, &f));
        assert_eq!(served("stereo"), Some(stereo));
        assert_eq!(served("R"), None, "a relative path that leaves the folder");
        assert_eq!(served("W"), None, "a path outside the folder");
        assert_eq!(served("../u.json"), None);
        assert_eq!(
            inside(&root, &root.join("2026-12-04/../2026-12-04/u.json")),
            Some(record_path)
        );
        assert_eq!(inside(&root, &root), None, "a folder is not a file");
    }
}
