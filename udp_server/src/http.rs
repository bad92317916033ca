//! The HTTP port (`http`): everything a person or a program asks the
//! receiver. axum on hyper.
//!
//! * `GET /metrics` (Prometheus text) and `GET /health`: always, no token.
//! * With a token (`http-token-file`), given as `Authorization: Bearer TOKEN`
//!   or `?token=TOKEN`: `GET /api/calls` (the calls in progress), `GET
//!   /api/calls/{uuid}` (one), and `GET /api/calls/{uuid}/listen` upgraded to
//!   a WebSocket carrying the call's live audio, `?format=raw|twilio`,
//!   `&rate=8000|16000|24000|48000`, `&tracks=inbound|outbound|both`. Who
//!   listened to which call, and when, goes to the log and the metadata feed:
//!   listening to calls is regulated. Without a token the API is off.
//! * The recording console under `/console/` ([`crate::console`]): its session
//!   cookie opens the API too.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::feed::{Feed, FeedStats};
use crate::live::{LiveCalls, LiveEvent};
use crate::metrics::Metrics;
use crate::stream::encode::{Encoder, Outgoing, StreamShape, FRAME_MS};
use crate::stream::inbound::{Incoming, Speaker};
use crate::stream::{Format, Tracks, RATES};

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub feed_stats: Arc<FeedStats>,
    pub feed: Feed,
    pub live: Arc<LiveCalls>,
    /// The API's token; `None` turns the API off.
    pub token: Option<Arc<str>>,
    pub console: Arc<crate::console::Console>,
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState")
            .field("api", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

/// Serves the HTTP port until `shutdown`.
pub async fn serve(listener: TcpListener, state: HttpState) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok\n" }))
        .route("/api/calls", get(calls))
        .route("/api/calls/{uuid}", get(call))
        .route("/api/calls/{uuid}/listen", get(listen))
        .merge(crate::console::routes())
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /health or /api/calls\n",
            )
        })
        .with_state(state);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let mut text = state.metrics.render();
    state.feed_stats.render_prometheus(&mut text);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// The API's refusal, when the request does not carry the token.
fn refusal(
    state: &HttpState,
    headers: &HeaderMap,
    query: &BTreeMap<String, String>,
) -> Option<Response> {
    let Some(token) = &state.token else {
        return Some(
            (
                StatusCode::FORBIDDEN,
                "the HTTP API is off: give the receiver an http-token-file\n",
            )
                .into_response(),
        );
    };
    if crate::console::session_cookie(headers)
        .is_some_and(|id| state.console.sessions.check(id, std::time::Instant::now()))
    {
        return None;
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .or(query.get("token").map(String::as_str));
    match given {
        Some(given) if rst_control::secret::matches(token.as_bytes(), given.as_bytes()) => None,
        _ => {
            state.metrics.http_refused.fetch_add(1, Relaxed);
            Some(
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    "a valid token is needed: Authorization: Bearer TOKEN, or ?token=TOKEN\n",
                )
                    .into_response(),
            )
        }
    }
}

async fn calls(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    if let Some(refused) = refusal(&state, &headers, &query) {
        return refused;
    }
    Json(state.live.list()).into_response()
}

async fn call(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(uuid): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    if let Some(refused) = refusal(&state, &headers, &query) {
        return refused;
    }
    match state.live.find(&uuid) {
        Some(live) => Json(live.info()).into_response(),
        None => (StatusCode::NOT_FOUND, "no call in progress has this uuid\n").into_response(),
    }
}

/// How a listener wants the audio.
#[derive(Debug, Deserialize)]
struct ListenQuery {
    format: Option<Format>,
    rate: Option<u32>,
    tracks: Option<Tracks>,
}

async fn listen(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(uuid): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    wanted: Result<Query<ListenQuery>, QueryRejection>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Some(refused) = refusal(&state, &headers, &query) {
        return refused;
    }
    let wanted = match wanted {
        Ok(Query(wanted)) => wanted,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "format is raw or twilio, tracks inbound, outbound or both: {}\n",
                    error.body_text()
                ),
            )
                .into_response()
        }
    };
    let format = wanted.format.unwrap_or(Format::Raw);
    let rate = match (format, wanted.rate) {
        (Format::Twilio, _) => 8000,
        (Format::Raw, Some(rate)) if RATES.contains(&rate) => rate,
        (Format::Raw, None) => 16000,
        (Format::Raw, Some(rate)) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("rate is one of {RATES:?}, not {rate}\n"),
            )
                .into_response()
        }
    };
    let Some(live) = state.live.find(&uuid) else {
        return (StatusCode::NOT_FOUND, "no call in progress has this uuid\n").into_response();
    };
    let shape = StreamShape {
        format,
        tracks: wanted.tracks.unwrap_or(Tracks::Both),
        rate,
        params: BTreeMap::new(),
    };
    // Subscribed before the upgrade completes: the audio from now on.
    let events = live.subscribe();
    let guard = live.listener();
    let info = live.info();
    // Who listens: the console's session, when it is one, and the address.
    let who = match crate::console::session_cookie(&headers) {
        Some(id) => format!("{} from {peer}", crate::console::session_label(id)),
        None => peer.to_string(),
    };
    upgrade.on_upgrade(move |socket| async move {
        let _guard = guard;
        tracing::info!(uuid = %info.uuid, listener = %who, format = format.name(), "a client is listening to the call");
        state.feed.publish(serde_json::json!({
            "event": "listen_start",
            "uuid": info.uuid,
            "listener": who,
            "format": format.name(),
            "time": now(),
        }));
        state.metrics.listeners.fetch_add(1, Relaxed);
        let speaker = Speaker::new(
            live.clone(),
            state.live.clone(),
            state.metrics.clone(),
            format,
            rate,
        );
        let encoder = Encoder::new(shape, format!("listen-{}", info.uuid), info.clone());
        let outcome = relay(socket, events, encoder, speaker, &state).await;
        state.metrics.listeners.fetch_sub(1, Relaxed);
        tracing::info!(uuid = %info.uuid, listener = %who, outcome, "a client stopped listening to the call");
        state.feed.publish(serde_json::json!({
            "event": "listen_end",
            "uuid": info.uuid,
            "listener": who,
            "time": now(),
        }));
    })
}

fn ws_message(message: Outgoing) -> Message {
    match message {
        Outgoing::Text(text) | Outgoing::Media(text) => Message::Text(text.into()),
        Outgoing::Binary(bytes) => Message::Binary(bytes.into()),
    }
}

pub(crate) fn now() -> Option<String> {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// Relays a call's events to one listener until the call ends or the
/// listener leaves. A listener that reads slowly falls behind the call's
/// channel and loses the oldest audio, counted; it slows nothing else.
async fn relay(
    mut socket: WebSocket,
    mut events: broadcast::Receiver<LiveEvent>,
    mut encoder: Encoder,
    mut speaker: Speaker,
    state: &HttpState,
) -> &'static str {
    let mut out = Vec::new();
    encoder.start(&mut out);
    loop {
        for message in out.drain(..) {
            if socket.send(ws_message(message)).await.is_err() {
                return "the listener went away";
            }
        }
        tokio::select! {
            event = events.recv() => match event {
                Ok(LiveEvent::End) | Err(broadcast::error::RecvError::Closed) => {
                    encoder.event(&LiveEvent::End, &mut out);
                    for message in out.drain(..) {
                        let _ = socket.send(ws_message(message)).await;
                    }
                    let _ = socket.send(Message::Close(None)).await;
                    return "the call ended";
                }
                // Another consumer's mark.
                Ok(LiveEvent::Mark { name, .. }) if !speaker.owns(&name) => {}
                Ok(event) => encoder.event(&event, &mut out),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    state.metrics.stream_dropped_ms.fetch_add(missed * u64::from(FRAME_MS), Relaxed);
                }
            },
            message = socket.recv() => match message {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return "the listener went away",
                // A listener may speak too, in its format.
                Some(Ok(Message::Text(text))) => out.extend(speaker.heard(Incoming::Text(&text))),
                Some(Ok(Message::Binary(bytes))) => out.extend(speaker.heard(Incoming::Binary(&bytes))),
                Some(Ok(_)) => {}
            },
            () = state.shutdown.cancelled() => return "the receiver stopped",
        }
    }
}
