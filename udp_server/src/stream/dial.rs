//! One stream of one call: a task that dials the profile's consumer and sends
//! the call's events as they come. While the consumer is away (down, or the
//! connection broke) or slow, the task keeps up to `buffer-seconds` of audio
//! and reconnects with backoff (1 s doubling to 30 s); a reconnected stream
//! starts afresh (`connected`, `start`) and its timestamps say where the
//! audio belongs. What cannot be delivered is counted, never lost silently:
//! the call's record gets the figures ([`StreamRecord`]).
//!
//! The WebSocket is tokio-tungstenite's; TLS is rustls ([`super::tls`]).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _, Message};
use tokio_util::sync::CancellationToken;

use super::encode::{Encoder, Outgoing, StreamShape, Timeline, FRAME_MS};
use super::inbound::{Incoming, Speaker};
use super::{redact_url, Format, Profile};
use crate::live::{CallInfo, LiveCall, LiveCalls, LiveEvent};
use crate::metrics::Metrics;

/// First wait before a reconnection, doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A consumer that has not answered the upgrade by then is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// After the call ends, how long a stream may take to deliver what it holds
/// when the receiver is stopping (otherwise: the profile's buffer).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// A profile ready to dial: its TLS settings read.
#[derive(Debug)]
pub struct Dialer {
    profile: Arc<Profile>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Dialer {
    pub fn new(profile: Profile) -> anyhow::Result<Dialer> {
        let tls =
            if profile.url.starts_with("wss://") {
                Some(super::tls::client_config(&profile.tls).map_err(|error| {
                    anyhow::anyhow!("stream profile {}: {error:#}", profile.name)
                })?)
            } else {
                None
            };
        Ok(Dialer {
            profile: Arc::new(profile),
            tls,
        })
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Starts the stream of `live` to this profile; its figures are returned
    /// at once and complete (`is_done`) when the task ends.
    pub fn spawn(
        &self,
        live: &Arc<LiveCall>,
        calls: &Arc<LiveCalls>,
        runtime: &tokio::runtime::Handle,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Arc<StreamStats> {
        let stats = Arc::new(StreamStats {
            profile: self.profile.name.clone(),
            format: Some(self.profile.format),
            buffer: self.profile.buffer,
            ..StreamStats::default()
        });
        metrics.streams_started.fetch_add(1, Relaxed);
        metrics.streams_active.fetch_add(1, Relaxed);
        // Subscribed here, before the recorder publishes the call's first frame.
        let stream = Stream {
            profile: self.profile.clone(),
            tls: self.tls.clone(),
            call: live.info(),
            events: live.subscribe(),
            speaker: Speaker::new(
                live.clone(),
                calls.clone(),
                metrics.clone(),
                self.profile.format,
                self.profile.rate,
            ),
            buffer: VecDeque::new(),
            ended: None,
            stats: stats.clone(),
            metrics,
            shutdown,
            stream_sid: stream_sid(),
            failures_in_a_row: 0,
            timeline: None,
        };
        runtime.spawn(stream.run());
        stats
    }
}

/// A stream's figures, shared by its task and the call's recorder.
#[derive(Debug, Default)]
pub struct StreamStats {
    pub profile: String,
    format: Option<Format>,
    buffer: Duration,
    connected_ms: AtomicU64,
    connects: AtomicU64,
    frames_sent: AtomicU64,
    dropped_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
    done: AtomicBool,
}

impl StreamStats {
    /// The task ended: everything was delivered or counted as dropped.
    pub fn is_done(&self) -> bool {
        self.done.load(Relaxed)
    }

    /// The profile's `buffer-seconds`: how long after the call's end the
    /// stream may still be delivering.
    pub fn buffer(&self) -> Duration {
        self.buffer
    }

    pub fn record(&self) -> StreamRecord {
        let connects = self.connects.load(Relaxed);
        StreamRecord {
            profile: self.profile.clone(),
            format: self.format.map_or("?", Format::name),
            connected_ms: self.connected_ms.load(Relaxed),
            connects,
            reconnects: connects.saturating_sub(1),
            frames_sent: self.frames_sent.load(Relaxed),
            dropped_ms: self.dropped_ms.load(Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            complete: self.is_done(),
        }
    }

    fn error(&self, error: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error);
    }
}

/// What a call's record says of one of its streams.
#[derive(Debug, Clone, Serialize)]
pub struct StreamRecord {
    pub profile: String,
    pub format: &'static str,
    /// Time connected to the consumer, in all.
    pub connected_ms: u64,
    pub connects: u64,
    pub reconnects: u64,
    /// Media messages (`twilio`) or binary frames (`raw`) sent.
    pub frames_sent: u64,
    /// Audio that could not be delivered, in ms summed over the tracks.
    pub dropped_ms: u64,
    pub last_error: Option<String>,
    /// False when the record was written before the stream ended (it took too long).
    pub complete: bool,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How a connection ended.
enum Ended {
    /// Everything, `stop` included, was delivered (or given up on at the deadline).
    Finished,
    /// The consumer went away; reconnect.
    Lost(String),
}

struct Stream {
    profile: Arc<Profile>,
    tls: Option<Arc<rustls::ClientConfig>>,
    call: CallInfo,
    events: broadcast::Receiver<LiveEvent>,
    /// What the consumer sends back goes into the call through it.
    speaker: Speaker,
    /// Events not yet encoded, oldest first.
    buffer: VecDeque<LiveEvent>,
    /// When the call ended, if it did.
    ended: Option<Instant>,
    stats: Arc<StreamStats>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    stream_sid: String,
    /// Connection attempts that failed since the last success.
    failures_in_a_row: u32,
    /// Where the last connection's timestamps were.
    timeline: Option<Timeline>,
}

impl Stream {
    async fn run(mut self) {
        let mut backoff = FIRST_BACKOFF;
        let mut wait = Duration::ZERO;
        loop {
            if self.past_deadline() {
                self.drop_buffer();
                break;
            }
            if !wait.is_zero() {
                // A receiver that stops cuts the wait short: what is held gets
                // one more try within the shutdown grace.
                let shutdown = self.shutdown.clone();
                let sleep = tokio::time::sleep(wait.min(self.time_left()));
                let pause = async move {
                    tokio::select! {
                        () = sleep => {}
                        () = shutdown.cancelled() => {}
                    }
                };
                self.collect_while(pause).await;
                if self.past_deadline() {
                    self.drop_buffer();
                    break;
                }
            }
            let profile = self.profile.clone();
            let connect = connect(&profile, self.tls.clone());
            let socket = match self.collect_while(connect).await {
                Ok(socket) => socket,
                Err(error) => {
                    self.failed(format!("cannot connect: {error}"));
                    wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            self.stats.connects.fetch_add(1, Relaxed);
            self.metrics.stream_connects.fetch_add(1, Relaxed);
            self.failures_in_a_row = 0;
            tracing::info!(uuid = %self.call.uuid, profile = %self.profile.name, "stream connected");
            let connected = Instant::now();
            let ended = self.send(socket).await;
            self.stats
                .connected_ms
                .fetch_add(connected.elapsed().as_millis() as u64, Relaxed);
            match ended {
                Ended::Finished => break,
                Ended::Lost(error) => {
                    self.failed(error);
                    // A connection that worked for a while is retried at once.
                    let worked = connected.elapsed() > MAX_BACKOFF;
                    backoff = if worked { FIRST_BACKOFF } else { backoff };
                    wait = if worked { Duration::ZERO } else { backoff };
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        tracing::info!(
            uuid = %self.call.uuid,
            profile = %self.profile.name,
            frames = self.stats.frames_sent.load(Relaxed),
            dropped_ms = self.stats.dropped_ms.load(Relaxed),
            "stream ended"
        );
        self.metrics.streams_active.fetch_sub(1, Relaxed);
        self.stats.done.store(true, Relaxed);
    }

    /// A connection failed or broke. Logged once per outage as a warning
    /// (a consumer down for a thousand calls must not flood the log), the
    /// retries after it at debug level; every one is counted.
    fn failed(&mut self, error: String) {
        self.metrics.stream_connect_failures.fetch_add(1, Relaxed);
        self.failures_in_a_row += 1;
        if self.failures_in_a_row == 1 {
            tracing::warn!(
                uuid = %self.call.uuid,
                profile = %self.profile.name,
                url = redact_url(&self.profile.url),
                %error,
                "stream consumer unreachable; keeping up to {} s of audio and retrying",
                self.profile.buffer.as_secs()
            );
        } else {
            tracing::debug!(uuid = %self.call.uuid, profile = %self.profile.name, %error, tries = self.failures_in_a_row, "stream consumer still unreachable");
        }
        self.stats.error(error);
    }

    /// Once the call has ended, how long is left to deliver what is held.
    fn time_left(&self) -> Duration {
        match self.ended {
            None => Duration::MAX,
            Some(ended) => {
                let grace = if self.shutdown.is_cancelled() {
                    SHUTDOWN_GRACE
                } else {
                    self.profile.buffer.max(SHUTDOWN_GRACE)
                };
                grace.saturating_sub(ended.elapsed())
            }
        }
    }

    fn past_deadline(&self) -> bool {
        self.time_left().is_zero()
    }

    /// Runs `work` while taking the call's events into the buffer.
    async fn collect_while<T>(&mut self, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                event = self.events.recv(), if self.ended.is_none() => self.take(event),
                done = &mut work => return done,
            }
        }
    }

    /// Keeps one event from the call; past `buffer-seconds` of audio, the oldest goes.
    fn take(&mut self, event: Result<LiveEvent, broadcast::error::RecvError>) {
        let event = match event {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                // This task fell behind the call (a starved runtime): frames lost.
                self.dropped(missed * u64::from(FRAME_MS));
                return;
            }
            Err(broadcast::error::RecvError::Closed) => LiveEvent::End,
        };
        match &event {
            LiveEvent::Audio(frame) if !self.profile.tracks.has(frame.direction) => return,
            // Another consumer's mark.
            LiveEvent::Mark { name, .. } if !self.speaker.owns(name) => return,
            LiveEvent::End => self.ended = Some(Instant::now()),
            _ => {}
        }
        let newest = match &event {
            LiveEvent::Audio(frame) => Some(frame.timing.at()),
            _ => None,
        };
        self.buffer.push_back(event);
        if let Some(newest) = newest {
            while let Some(LiveEvent::Audio(oldest)) = self.buffer.front() {
                if newest.saturating_sub(oldest.timing.at()) <= self.profile.buffer {
                    break;
                }
                let lost = oldest.duration().as_millis() as u64;
                self.buffer.pop_front();
                self.dropped(lost);
            }
        }
    }

    fn dropped(&self, ms: u64) {
        self.stats.dropped_ms.fetch_add(ms, Relaxed);
        self.metrics.stream_dropped_ms.fetch_add(ms, Relaxed);
    }

    /// Gives up on what is held (the call ended long ago, or the receiver stops).
    fn drop_buffer(&mut self) {
        let lost: u64 = self
            .buffer
            .drain(..)
            .map(|event| match event {
                LiveEvent::Audio(frame) => frame.duration().as_millis() as u64,
                _ => 0,
            })
            .sum();
        if lost > 0 {
            self.dropped(lost);
            tracing::warn!(uuid = %self.call.uuid, profile = %self.profile.name, lost_ms = lost, "stream gave up on audio it could not deliver");
        }
    }

    /// Sends on one connection until the call's end is delivered or the consumer goes away.
    async fn send(&mut self, socket: Socket) -> Ended {
        let (mut sink, mut incoming) = socket.split();
        let shape = StreamShape {
            format: self.profile.format,
            tracks: self.profile.tracks,
            rate: self.profile.rate,
            params: self.profile.params.clone(),
        };
        let mut encoder = Encoder::new(shape, self.stream_sid.clone(), self.call.clone());
        // A reconnected stream's timestamps go on where the last left off.
        if let Some(previous) = self.timeline {
            encoder.continue_timeline(previous);
        }
        self.speaker.reconnected();
        let mut encoded = Vec::new();
        encoder.start(&mut encoded);
        let mut ahead: VecDeque<Outgoing> = encoded.drain(..).collect();
        // The event whose messages are in `ahead`: if the connection breaks
        // before they are all out, it goes back to the buffer, to be sent
        // whole on the next connection. One event at a time is encoded, so
        // that what waits is events, which a new connection can encode afresh.
        let mut current: Option<LiveEvent> = None;
        let mut unflushed = false;
        loop {
            if ahead.is_empty() {
                if let Some(LiveEvent::End) = current {
                    if !unflushed {
                        let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
                        return Ended::Finished;
                    }
                } else if let Some(event) = self.buffer.pop_front() {
                    encoder.event(&event, &mut encoded);
                    ahead.extend(encoded.drain(..));
                    current = Some(event);
                    if ahead.is_empty() {
                        // Held by the encoder until a whole frame is there.
                        continue;
                    }
                }
            }
            let deadline = tokio::time::sleep(self.time_left());
            let sending = !ahead.is_empty();
            tokio::select! {
                biased;
                event = self.events.recv(), if self.ended.is_none() => self.take(event),
                // Ready for the next message when one is waiting, else flushed.
                ready = std::future::poll_fn(|cx| if sending {
                    sink.poll_ready_unpin(cx)
                } else {
                    sink.poll_flush_unpin(cx)
                }), if sending || unflushed => {
                    if let Err(error) = ready {
                        return self.lost(&mut current, &ahead, &encoder, error);
                    }
                    if !sending {
                        unflushed = false;
                        continue;
                    }
                    let message = ahead.pop_front().expect("not empty");
                    let frame = message.is_audio();
                    if let Err(error) = sink.start_send_unpin(to_message(message)) {
                        return self.lost(&mut current, &ahead, &encoder, error);
                    }
                    if frame {
                        self.stats.frames_sent.fetch_add(1, Relaxed);
                        self.metrics.stream_frames_sent.fetch_add(1, Relaxed);
                    }
                    unflushed = true;
                }
                message = incoming.next() => match message {
                    None => return self.lost(&mut current, &ahead, &encoder, "the consumer closed the connection"),
                    Some(Err(error)) => return self.lost(&mut current, &ahead, &encoder, error),
                    Some(Ok(Message::Close(frame))) => {
                        let why = frame.map(|f| format!(" ({} {})", f.code, f.reason)).unwrap_or_default();
                        return self.lost(&mut current, &ahead, &encoder, format!("the consumer closed the connection{why}"));
                    }
                    Some(Ok(Message::Text(text))) => {
                        if let Some(answer) = self.speaker.heard(Incoming::Text(&text)) {
                            ahead.push_back(answer);
                        }
                    }
                    Some(Ok(Message::Binary(bytes))) => {
                        if let Some(answer) = self.speaker.heard(Incoming::Binary(&bytes)) {
                            ahead.push_back(answer);
                        }
                    }
                    // Pings are answered by tungstenite.
                    Some(Ok(_)) => {}
                },
                () = deadline => {
                    // The call ended long ago and the consumer still does not take it.
                    let lost = ahead.iter().filter(|m| m.is_audio()).count() as u64;
                    self.dropped(lost * u64::from(FRAME_MS) + encoder.held_ms());
                    self.drop_buffer();
                    return Ended::Finished;
                }
            }
        }
    }

    /// The connection broke: the event being sent goes back to the buffer;
    /// what the encoder held of a partial frame is counted as dropped.
    fn lost(
        &mut self,
        current: &mut Option<LiveEvent>,
        ahead: &VecDeque<Outgoing>,
        encoder: &Encoder,
        error: impl std::fmt::Display,
    ) -> Ended {
        self.timeline = Some(encoder.timeline());
        if let Some(event) = current.take().filter(|_| !ahead.is_empty()) {
            if matches!(event, LiveEvent::End) {
                self.ended.get_or_insert_with(Instant::now);
            }
            self.buffer.push_front(event);
        }
        self.dropped(encoder.held_ms());
        Ended::Lost(error.to_string())
    }
}

async fn connect(
    profile: &Profile,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Socket, String> {
    let mut request = profile
        .url
        .as_str()
        .into_client_request()
        .map_err(|error| format!("bad url: {error}"))?;
    for (name, value) in &profile.headers {
        let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("bad header name {name:?}"))?;
        let value = tungstenite::http::HeaderValue::from_str(value)
            .map_err(|_| format!("bad value of header {name}"))?;
        request.headers_mut().insert(name, value);
    }
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    let connecting = async {
        let tcp = open_tcp(request.uri())
            .await
            .map_err(|error| error.to_string())?;
        tokio_tungstenite::client_async_tls_with_config(request, tcp, None, connector)
            .await
            .map_err(describe)
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())),
    }
}

/// Bytes the kernel may hold for one stream's connection: a consumer that
/// reads slowly meets the stream's own bounded buffer soon, not after
/// megabytes of kernel memory per call.
const SOCKET_SEND_BUFFER: u32 = 64 * 1024;

/// The TCP connection under a stream's WebSocket, with a bounded send buffer.
async fn open_tcp(uri: &tungstenite::http::Uri) -> std::io::Result<tokio::net::TcpStream> {
    let host = uri
        .host()
        .ok_or_else(|| std::io::Error::other("the url has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("wss") {
            443
        } else {
            80
        });
    let mut last = std::io::Error::other(format!("{host} has no address"));
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = match addr {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_send_buffer_size(SOCKET_SEND_BUFFER)?;
        match socket.connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(error) => last = error,
        }
    }
    Err(last)
}

/// A connection error said plainly, with what to check for TLS.
fn describe(error: tungstenite::Error) -> String {
    match error {
        tungstenite::Error::Tls(error) => {
            format!("TLS: {error} (check the consumer's certificate and the profile's ca-file)")
        }
        tungstenite::Error::Io(error) => {
            // rustls reports a refused certificate as an I/O error.
            format!("{error}")
        }
        tungstenite::Error::Http(response) => {
            format!(
                "the consumer refused the upgrade: HTTP {}",
                response.status()
            )
        }
        other => other.to_string(),
    }
}

fn to_message(message: Outgoing) -> Message {
    match message {
        Outgoing::Text(text) | Outgoing::Media(text) => Message::text(text),
        Outgoing::Binary(bytes) => Message::binary(bytes),
    }
}

/// A stream id in Twilio's shape: `MZ` and 32 hex digits.
fn stream_sid() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut text = String::from("MZ");
    for _ in 0..2 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        text.push_str(&format!("{:016x}", hasher.finish()));
    }
    text
}
