//! Calls in progress, and their audio as it is recorded, for whoever wants it
//! now: the stream profiles that dial out (`stream`) and the clients of the
//! HTTP port (`/api/calls`, `listen`).
//!
//! The recorder threads publish and never wait: a call's audio goes out on a
//! `tokio::sync::broadcast` channel, bounded, which a subscriber that falls
//! behind loses the oldest frames of (and is told how many). Nothing is built
//! for a call nobody listens to.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use rst_proto::Direction;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::broadcast;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::calls::CallId;
use crate::metrics::Metrics;
use crate::play::{PlayTarget, Player};
use crate::record::{CallRecord, DtmfRecord};

/// Events a call's channel holds for a subscriber that is behind: about five
/// seconds of both directions in 20 ms frames.
const EVENTS_PER_CALL: usize = 512;

/// When audio belongs on the call's timeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Timing {
    /// DATA: only its arrival, this long after the call started.
    Arrival(Duration),
    /// RTP: its media time, from the timestamps.
    Media(Duration),
}

impl Timing {
    pub fn at(self) -> Duration {
        match self {
            Timing::Arrival(at) | Timing::Media(at) => at,
        }
    }
}

/// One decoded frame of one direction.
#[derive(Debug)]
pub struct AudioFrame {
    pub direction: Direction,
    pub timing: Timing,
    /// Sample rate of `samples`.
    pub rate: u32,
    pub samples: Vec<i16>,
    /// The payload as it came when it is G.711 µ-law (PCMU), so that µ-law
    /// consumers get the sender's bytes, not a re-encoding.
    pub ulaw: Option<Vec<u8>>,
}

impl AudioFrame {
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.samples.len() as f64 / f64::from(self.rate.max(1)))
    }
}

/// What a call's subscribers hear.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    Audio(Arc<AudioFrame>),
    Dtmf(Arc<DtmfRecord>),
    /// A point a consumer marked in the audio it sent was played by the
    /// call's sender (or, `cleared`, dropped by a clear).
    Mark {
        name: Arc<str>,
        cleared: bool,
    },
    /// The call ended; nothing follows.
    End,
}

/// What `/api/calls` and a stream's start message say about a call.
#[derive(Debug, Clone, Serialize)]
pub struct CallInfo {
    pub uuid: String,
    pub caller: Option<String>,
    pub callee: Option<String>,
    pub call_id: Option<String>,
    /// The tap that captured the call, when its INV says (`tap=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    pub sender: String,
    pub mode: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    /// Stream profiles the call goes to.
    pub streams: Vec<String>,
    /// `listen` clients connected now.
    pub listeners: usize,
    /// Seconds since the call started.
    pub duration: f64,
}

impl CallInfo {
    pub fn of(record: &CallRecord) -> CallInfo {
        CallInfo {
            uuid: record.uuid.clone(),
            caller: record.caller.clone(),
            callee: record.callee.clone(),
            call_id: record.call_id.clone(),
            tap: record.tap.clone(),
            sender: record.sender.clone(),
            mode: record.mode,
            start: record.start,
            streams: Vec::new(),
            listeners: 0,
            duration: 0.0,
        }
    }
}

/// What the console shows of a call's media while it is recorded: codecs,
/// RTP loss and jitter, the DTMF keys so far. Updated by the recorder at each
/// flush and key press.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LiveMedia {
    /// Per direction, `R` and `W`.
    pub directions: crate::record::PerDirection<LiveDirection>,
    /// The keys pressed so far, in order.
    pub dtmf: String,
}

/// One direction of [`LiveMedia`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct LiveDirection {
    pub codecs: Vec<String>,
    pub packets: u64,
    /// RTP mode only.
    pub lost: Option<u64>,
    pub expected: Option<u64>,
    pub jitter_ms: Option<f64>,
}

/// One call in progress.
#[derive(Debug)]
pub struct LiveCall {
    info: Mutex<CallInfo>,
    media: Mutex<LiveMedia>,
    started: Instant,
    /// Made by the first subscriber: its slots (`EVENTS_PER_CALL` of them,
    /// some 30 KiB) would otherwise be most of an unheard call's memory.
    events: OnceLock<broadcast::Sender<LiveEvent>>,
    listeners: std::sync::atomic::AtomicUsize,
    /// Subscribers that only meter the call's levels (the console's list):
    /// they need no real time, so they do not make the call heard.
    meters: std::sync::atomic::AtomicUsize,
    /// Where audio back goes, when the call's sender can play (`play=1`).
    play: Option<PlayTarget>,
    /// Started by the first consumer that speaks.
    player: OnceLock<Player>,
    /// Cancelled when the call ends: its player stops.
    ended: CancellationToken,
    /// How its sender is told that someone hears the call, when it gathers
    /// frames until then (`live=1`).
    tell_live: Option<TellLive>,
}

/// LIVE to a call's sender, which gathers the call's frames several to a
/// datagram unless someone hears it (`live=1` in its INV): said at once by
/// the first subscriber, and again every [`rst_proto::LIVE_EVERY`] while
/// anyone hears ([`LiveCalls::tell_heard`]). A listener gets real time, an
/// unheard recording costs the sender a third of the datagrams.
#[derive(Debug)]
struct TellLive {
    to: SocketAddr,
    datagram: Box<[u8]>,
    socket: Arc<UdpSocket>,
    metrics: Arc<Metrics>,
}

impl TellLive {
    fn new(
        uuid: &str,
        to: SocketAddr,
        socket: Arc<UdpSocket>,
        metrics: Arc<Metrics>,
    ) -> Option<Self> {
        let uuid = rst_proto::Uuid::new(uuid).ok()?;
        let datagram = rst_proto::Message::Live(rst_proto::Live { uuid })
            .to_vec()
            .ok()?;
        Some(TellLive {
            to,
            datagram: datagram.into(),
            socket,
            metrics,
        })
    }

    /// Never waits: a LIVE the socket cannot take now goes with the next.
    fn send(&self) {
        let counter = match self.socket.try_send_to(&self.datagram, self.to) {
            Ok(_) => &self.metrics.lives_sent,
            Err(_) => &self.metrics.send_errors,
        };
        counter.fetch_add(1, Relaxed);
    }
}

/// Why a consumer's audio cannot go into a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlayRefused {
    /// The call's sender cannot play (a tap, or a sender without `play=1`).
    #[error("this call cannot be spoken into: its sender only listens (a tapped call, or a sender without play=1)")]
    Passive,
    /// The call is over.
    #[error("the call has ended")]
    Ended,
    /// The call's player is gone or full.
    #[error("the call's playback queue is full; the audio was dropped")]
    Busy,
}

impl LiveCall {
    pub fn info(&self) -> CallInfo {
        let mut info = self
            .info
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        info.duration = self.started.elapsed().as_secs_f64();
        info.listeners = self.listeners.load(std::sync::atomic::Ordering::Relaxed);
        info
    }

    pub fn media(&self) -> LiveMedia {
        self.media
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_media(&self, media: LiveMedia) {
        *self.media.lock().unwrap_or_else(PoisonError::into_inner) = media;
    }

    pub fn update(&self, change: impl FnOnce(&mut CallInfo)) {
        change(&mut self.info.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Everything published from now on, as it comes: the first such
    /// subscriber tells a sender that gathers frames to send them at once
    /// ([`TellLive`]).
    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        let subscriber = self.events().subscribe();
        if self.hearers() == 1 {
            if let Some(tell) = &self.tell_live {
                tell.send();
            }
        }
        subscriber
    }

    /// Everything published from now on, for level meters, which do not
    /// mind audio that comes a few frames at a time: the call is not heard
    /// for it (no LIVE) while the guard lives.
    pub fn subscribe_to_meter(self: &Arc<Self>) -> (broadcast::Receiver<LiveEvent>, MeterGuard) {
        self.meters.fetch_add(1, Relaxed);
        (self.events().subscribe(), MeterGuard(self.clone()))
    }

    fn events(&self) -> &broadcast::Sender<LiveEvent> {
        self.events
            .get_or_init(|| broadcast::channel(EVENTS_PER_CALL).0)
    }

    /// Subscribers that hear the call as it comes (not only meter it).
    fn hearers(&self) -> usize {
        let subscribers = self.events.get().map_or(0, |e| e.receiver_count());
        subscribers.saturating_sub(self.meters.load(Relaxed))
    }

    /// Whether anyone hears the call as it comes: its sender, if it gathers
    /// frames, is told LIVE.
    fn heard(&self) -> bool {
        self.hearers() > 0
    }

    /// Whether anyone hears this call: frames are built only then.
    pub fn wanted(&self) -> bool {
        self.events
            .get()
            .is_some_and(|events| events.receiver_count() > 0)
    }

    pub fn publish(&self, event: LiveEvent) {
        // No subscriber is not an error: the call is simply not heard.
        if let Some(events) = self.events.get() {
            let _ = events.send(event);
        }
    }

    /// Counts a `listen` client for as long as the guard lives.
    pub fn listener(self: &Arc<Self>) -> ListenerGuard {
        self.listeners
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ListenerGuard(self.clone())
    }
}

#[derive(Debug)]
pub struct ListenerGuard(Arc<LiveCall>);

/// Counts a meter's subscription ([`LiveCall::subscribe_to_meter`]) for as
/// long as it lives: drop it with the subscription.
#[derive(Debug)]
pub struct MeterGuard(Arc<LiveCall>);

impl Drop for MeterGuard {
    fn drop(&mut self) {
        self.0.meters.fetch_sub(1, Relaxed);
    }
}

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.0
            .listeners
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Every call in progress, shared by the recorder threads and the HTTP port.
#[derive(Debug)]
pub struct LiveCalls {
    calls: Mutex<HashMap<CallId, Arc<LiveCall>>>,
    /// The receiver's socket, which PLAY datagrams leave from.
    socket: Arc<UdpSocket>,
    metrics: Arc<Metrics>,
    /// Frames a player sends ahead of real time (`play-lead`).
    play_lead: u32,
}

impl LiveCalls {
    pub fn new(socket: Arc<UdpSocket>, metrics: Arc<Metrics>, play_lead: u32) -> LiveCalls {
        LiveCalls {
            calls: Mutex::default(),
            socket,
            metrics,
            play_lead,
        }
    }

    /// A call in progress. `play`: where audio back goes, when its sender
    /// can play; `gathers`: its sender, when it gathers frames until told
    /// that someone hears the call (`live=1`).
    pub fn open(
        &self,
        call: CallId,
        info: CallInfo,
        play: Option<PlayTarget>,
        gathers: Option<SocketAddr>,
    ) -> Arc<LiveCall> {
        let tell_live = gathers.and_then(|to| {
            TellLive::new(&info.uuid, to, self.socket.clone(), self.metrics.clone())
        });
        let live = Arc::new(LiveCall {
            info: Mutex::new(info),
            media: Mutex::default(),
            started: Instant::now(),
            events: OnceLock::new(),
            listeners: Default::default(),
            meters: Default::default(),
            play,
            player: OnceLock::new(),
            ended: CancellationToken::new(),
            tell_live,
        });
        self.lock().insert(call, live.clone());
        live
    }

    /// Says LIVE again, every [`rst_proto::LIVE_EVERY`], to the senders of
    /// the calls someone hears whose senders gather frames, until `stop`.
    pub async fn tell_heard(self: Arc<Self>, stop: CancellationToken) {
        let mut every = tokio::time::interval(rst_proto::LIVE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let heard: Vec<Arc<LiveCall>> = self
                .lock()
                .values()
                .filter(|live| live.tell_live.is_some() && live.heard())
                .cloned()
                .collect();
            for live in heard {
                if let Some(tell) = &live.tell_live {
                    tell.send();
                }
            }
        }
    }

    /// Forgets the call: no new subscriber finds it, its player stops. (Its
    /// recording says [`LiveEvent::End`] to the subscribers it has, once its
    /// last audio is out.)
    pub fn close(&self, call: CallId) {
        if let Some(live) = self.lock().remove(&call) {
            live.ended.cancel();
        }
    }

    /// The player of `live`, started on first use (from a tokio task).
    pub fn player(&self, live: &Arc<LiveCall>) -> Result<Player, PlayRefused> {
        let target = live.play.ok_or(PlayRefused::Passive)?;
        if live.ended.is_cancelled() {
            return Err(PlayRefused::Ended);
        }
        Ok(live
            .player
            .get_or_init(|| {
                Player::start(
                    live.clone(),
                    target,
                    self.play_lead,
                    self.socket.clone(),
                    self.metrics.clone(),
                    live.ended.clone(),
                )
            })
            .clone())
    }

    /// The call in progress with this UUID (the latest, when one was reused).
    pub fn find(&self, uuid: &str) -> Option<Arc<LiveCall>> {
        self.lock()
            .iter()
            .filter(|(_, live)| live.info.lock().is_ok_and(|info| info.uuid == uuid))
            .max_by_key(|(call, _)| **call)
            .map(|(_, live)| live.clone())
    }

    /// Every call in progress, oldest first.
    pub fn list(&self) -> Vec<CallInfo> {
        let mut calls: Vec<_> = self
            .lock()
            .iter()
            .map(|(call, live)| (*call, live.clone()))
            .collect();
        calls.sort_by_key(|(call, _)| *call);
        calls.into_iter().map(|(_, live)| live.info()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CallId, Arc<LiveCall>>> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call whose sender gathers frames: a meter's subscription (the
    /// console's list) does not tell it LIVE, nor keep it heard; a
    /// subscriber that hears the call does, at once.
    #[tokio::test]
    async fn only_a_subscriber_that_hears_the_call_tells_its_sender_live() {
        let receiver = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        // As the receiver's socket is once it has run: known writable
        // (`try_send_to` sends only then).
        receiver.writable().await.unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let metrics = Arc::new(Metrics::default());
        let calls = LiveCalls::new(receiver, metrics.clone(), 0);
        let info = CallInfo {
            uuid: "478525a8-8263-4550-b18c-d027d11c9865".into(),
            caller: None,
            callee: None,
            call_id: None,
            tap: None,
            sender: sender.local_addr().unwrap().to_string(),
            mode: "data",
            start: OffsetDateTime::UNIX_EPOCH,
            streams: Vec::new(),
            listeners: 0,
            duration: 0.0,
        };
        let call = calls.open(1, info, None, Some(sender.local_addr().unwrap()));

        let meter = call.subscribe_to_meter();
        assert!(call.wanted(), "its frames are built for the meter");
        assert!(!call.heard());
        assert_eq!(metrics.lives_sent.load(Relaxed), 0);

        let hearer = call.subscribe();
        assert!(call.heard());
        let mut datagram = [0u8; 64];
        let wait = Duration::from_secs(30);
        let (len, _) = tokio::time::timeout(wait, sender.recv_from(&mut datagram))
            .await
            .expect("LIVE within 30 s")
            .unwrap();
        assert_eq!(
            &datagram[..len],
            b"LIVE:478525a8-8263-4550-b18c-d027d11c9865"
        );
        assert_eq!(metrics.lives_sent.load(Relaxed), 1);

        drop(hearer);
        assert!(!call.heard(), "the meter alone");
        drop(meter);
        assert!(!call.wanted());
    }
}
