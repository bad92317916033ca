//! The receiver's tokio shell: the UDP receive loop around the [`CallTable`],
//! the RTP sockets of RTP-mode calls, the recorder threads, the metrics
//! endpoint, the metadata feed and the periodic summary.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use rst_net::batch::RecvBatch;
use rst_proto::{Direction, RtpPorts};
use time::OffsetDateTime;
use tokio::io::Interest;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::calls::{CallId, CallTable, Limits, Output, RtpBinder};
use crate::config::Config;
use crate::end::EndReason;
use crate::feed::Feed;
use crate::http::HttpState;
use crate::live::LiveCalls;
use crate::metrics::Metrics;
use crate::record::RecordOptions;
use crate::recorder::{self, Batch, Command, Event, RtpHeader};
use crate::stream::Streams;
use crate::taps::TapLinks;

/// `recvmmsg` calls (of [`rst_net::BATCH`] datagrams each) per wake-up at most,
/// before the batches go to the recorders: bounds the work per wake-up, and
/// so the size of a recorder batch.
const RECEIVES_PER_WAKE_UP: usize = 4;
/// At a stop, the most `recvmmsg` batches read from the main port for what the
/// kernel already holds (its buffer holds fewer; the bound only keeps a sender
/// that never stops from holding the stop up).
const DRAIN_BATCHES: usize = 1024;
/// The largest datagram the receiver's port takes (the UDP maximum).
const MAX_DATAGRAM: usize = 65_536;
/// The largest RTP packet a call's port takes; longer ones are cut (and fail to parse).
const MAX_RTP_PACKET: usize = 4096;
/// Batches queued for each recorder thread; when the disk is slower than the
/// network the receive loop waits here and the socket buffer absorbs the burst.
const RECORDER_QUEUE: usize = 1024;
/// How often idle calls and lingering BYEs are looked at.
const TICK: Duration = Duration::from_millis(100);
/// Headers and buffers go to disk once a second: what a `kill -9` can lose.
const FLUSH_EVERY_TICKS: u32 = 10;

/// Binds the receiver's UDP socket with a large receive buffer.
pub fn bind(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    let socket = bind_udp(addr)
        .with_context(|| format!("cannot listen on UDP {addr}: is another receiver running?"))?;
    // Senders' GSO messages arrive whole (see rst_net::batch), read in 64 KiB
    // buffers. Only here: a call's RTP ports read packets one by one, into
    // small buffers. Best effort.
    if let Err(error) = rst_net::batch::enable_gro(&socket) {
        tracing::debug!(%error, "no UDP GRO: datagrams arrive one by one");
    }
    Ok(UdpSocket::from_std(socket)?)
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // A large receive buffer, so bursts are not dropped while the loop is
    // busy. Best effort: the kernel caps it at net.core.rmem_max.
    if let Err(error) = socket.set_recv_buffer_size(rst_net::batch::SOCKET_BUFFER) {
        tracing::debug!(%error, "cannot enlarge the receive buffer");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Files a call holds open at most: each direction's WAV and the stereo WAV
/// (a codec without a decoder or `raw` adds one more each, rarely all at once).
const FILES_PER_CALL: u64 = 3;

/// Raises the soft limit of open files to the hard one, and warns when even
/// that cannot hold `max_calls` calls: past it a call's files cannot be
/// created (its record is still written, its audio is lost).
fn check_open_file_limit(max_calls: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the rlimit we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the rlimit we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    let needed = (max_calls as u64).saturating_mul(FILES_PER_CALL) + 256;
    if limit.rlim_cur < needed {
        tracing::warn!(
            open_files = limit.rlim_cur,
            max_calls,
            needed,
            "the open file limit cannot hold max-calls calls' files: raise it (ulimit -n, LimitNOFILE= in systemd) or lower max-calls; calls past it record no audio"
        );
    }
}

/// Warns, loudly, when anyone who can reach the port can start calls.
fn warn_of_exposure(config: &Config) {
    if !config.listen.ip().is_loopback() && config.allow.is_empty() {
        tracing::warn!(
            listen = %config.listen,
            "listening beyond loopback with an empty allow list: ANY host that reaches this port can start calls and fill the disk; set allow = [\"10.0.0.0/8\", ...] to the senders' networks"
        );
    }
}

/// Runs the receiver on `socket` until `shutdown` is cancelled, then ends every
/// call as `shutdown` and returns once all files are complete.
pub async fn run(
    socket: UdpSocket,
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let http = match config.http {
        Some(addr) => Some(bind_http(addr).await?),
        None => None,
    };
    run_with(socket, http, config, metrics, shutdown).await
}

/// Binds the HTTP port.
pub async fn bind_http(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve HTTP on {addr}: is another receiver running?"))
}

/// [`run`] with the HTTP port already bound (`config.http` is then ignored).
pub async fn run_with(
    socket: UdpSocket,
    http: Option<TcpListener>,
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.record_dir).with_context(|| {
        format!(
            "cannot create the record folder {}",
            config.record_dir.display()
        )
    })?;
    let record_dir = config.record_dir.canonicalize()?;
    warn_of_exposure(&config);
    check_open_file_limit(config.max_calls);
    let recovered = recorder::recover(&record_dir, &metrics);
    if !recovered.is_empty() {
        tracing::warn!(
            recovered = recovered.len(),
            "completed files left unfinished by an earlier run"
        );
    }

    let (feed, feed_server) = Feed::new();
    // Call events on the message bus and webhooks: every feed event also goes
    // to the bus's outboxes (under the record folder).
    let bus = crate::bus::Bus::start(&config.bus, &record_dir, &metrics.bus)
        .context("cannot start the message bus and webhook targets")?;
    let feed = match &bus {
        Some(bus) => feed.with_bus(bus.sink()),
        None => feed,
    };
    // PLAY datagrams leave from the socket the calls' INVs came to.
    let socket = Arc::new(socket);
    let live_calls = Arc::new(LiveCalls::new(
        socket.clone(),
        metrics.clone(),
        config.play_lead,
    ));
    // Streams outlive the receive loop a little: they deliver what the calls
    // ended by shutdown still hold, then stop.
    let streams_shutdown = CancellationToken::new();
    let streams = Streams::new(
        &config.streams,
        live_calls.clone(),
        tokio::runtime::Handle::current(),
        streams_shutdown.clone(),
        metrics.clone(),
    )?;
    for profile in &config.streams {
        tracing::info!(
            profile = %profile.name,
            url = crate::stream::redact_url(&profile.url),
            format = profile.format.name(),
            tracks = profile.tracks.name(),
            "streaming calls live"
        );
    }
    // The console's recordings index and taps board, with the HTTP port.
    let tap_board = Arc::new(crate::taps::TapBoard::default());
    let console = http
        .is_some()
        .then(|| crate::console::Console::start(record_dir.clone(), tap_board.clone()));
    let http_shutdown = CancellationToken::new();
    let http_task = match http {
        Some(listener) => {
            let local = listener.local_addr()?;
            tracing::info!(addr = %local, api = config.http_token.is_some(), "serving HTTP: /metrics, /health{}", if config.http_token.is_some() { ", /api/calls" } else { " (no http-token-file: the API is off)" });
            let state = HttpState {
                metrics: metrics.clone(),
                feed_stats: feed.stats().clone(),
                feed: feed.clone(),
                live: live_calls.clone(),
                token: config.http_token.as_ref().map(|t| Arc::from(t.0.as_str())),
                console: console.clone().expect("made with the HTTP port"),
                shutdown: http_shutdown.clone(),
            };
            Some(tokio::spawn(crate::http::serve(listener, state)))
        }
        None => None,
    };
    // Senders that gather frames (`live=1`) hear LIVE while anyone hears their calls.
    tokio::spawn(live_calls.clone().tell_heard(shutdown.clone()));
    let stats_task = tokio::spawn(log_stats(
        config.stats_interval,
        metrics.clone(),
        shutdown.clone(),
    ));
    // The feed stops after the recorder, so consoles get the call_end lines of
    // the calls that shutdown ends.
    let feed_shutdown = CancellationToken::new();
    let feed_task = match config.feed {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot serve the metadata feed on {addr}"))?;
            tracing::info!(addr = %listener.local_addr()?, "serving the metadata feed");
            Some(tokio::spawn(
                feed_server.run(listener, feed_shutdown.clone()),
            ))
        }
        None => {
            // Nobody serves the feed: its events must not queue up unread
            // (every call's start and end, for as long as the receiver runs).
            drop(feed_server);
            None
        }
    };

    // Recordings to object storage: queued on disk as calls end, stored by
    // one task in order. It stops with the receiver; what it had not stored
    // yet waits in the queue for the next start.
    let uploads = match &config.storage {
        Some(storage) => {
            let uploads = crate::storage::Uploads::open(&record_dir, metrics.clone())?;
            // Calls a crash ended were never queued: their records, just
            // completed, are stored like any other.
            uploads.enqueue_recovered(&recovered);
            tracing::info!(endpoint = %storage.endpoint, bucket = %storage.bucket, prefix = %storage.prefix, keep_local = storage.keep_local, "storing recordings in object storage");
            Some(uploads)
        }
        None => None,
    };
    let storage_shutdown = CancellationToken::new();
    let storage_task = config
        .storage
        .clone()
        .zip(uploads.clone())
        .map(|(storage, uploads)| {
            tokio::spawn(crate::storage::run(
                storage,
                uploads,
                feed.clone(),
                storage_shutdown.clone(),
            ))
        });

    let options = RecordOptions {
        record_dir,
        bare_payload: config.raw,
        jitter_packets: config.jitter_packets,
        default_payload_types: config.payload_types.clone().into(),
    };
    // Several recorder threads, each owning the calls whose id maps to it: a slow
    // disk operation (creating a file can take milliseconds) stalls only its share.
    let mut batches = Vec::new();
    let mut recorders = Vec::new();
    for shard in 0..config.recorder_threads {
        let (sender, queue) = mpsc::channel(RECORDER_QUEUE);
        let (options, metrics, feed, uploads, console) = (
            options.clone(),
            metrics.clone(),
            feed.clone(),
            uploads.clone(),
            console.clone(),
        );
        let live = recorder::Live {
            calls: live_calls.clone(),
            streams: streams.clone(),
        };
        batches.push(sender);
        recorders.push(
            std::thread::Builder::new()
                .name(format!("rst-recorder-{shard}"))
                .spawn(move || {
                    recorder::run(queue, options, live, metrics, |event| {
                        if let (Some(console), Event::Ended(record)) = (&console, &event) {
                            console.index.add(record);
                        }
                        publish(&feed, uploads.as_ref(), event)
                    })
                })?,
        );
    }

    let limits = Limits {
        idle_timeout: config.idle_timeout,
        max_calls: config.max_calls,
        allow: config.allow.clone(),
        default_l16_rate: config.l16_rate,
        rtp_ports: config.rtp_ports.0.clone(),
        bind_sender: config.bind_sender,
        new_calls_per_second: config.new_calls_per_second,
    };
    let mut receiver = Receiver {
        socket,
        table: CallTable::new(limits, metrics.clone()),
        metrics,
        ack: Vec::new(),
        rtp: RtpSockets {
            ip: config.listen.ip(),
            open: HashMap::new(),
            ready: FuturesUnordered::new(),
        },
        ended: Vec::new(),
    };
    // Taps are stopped before the receive loop ends, so that the BYEs of the
    // calls they end still arrive.
    let receive_stop = CancellationToken::new();
    let taps = (!config.taps.links.is_empty()).then(|| {
        TapLinks::start_with(
            &config.taps,
            receiver.socket.local_addr().unwrap_or(config.listen),
            receiver.metrics.clone(),
            tap_board,
        )
    });
    let taps_task = tokio::spawn({
        let (shutdown, receive_stop) = (shutdown.clone(), receive_stop.clone());
        async move {
            shutdown.cancelled().await;
            if let Some(taps) = taps {
                tracing::info!("stopping the taps");
                let _ = tokio::task::spawn_blocking(move || taps.stop()).await;
            }
            receive_stop.cancel();
        }
    });
    let result = receiver.receive(&batches, &receive_stop).await;
    shutdown.cancel();
    taps_task.await?;

    let mut outbox = Outbox::new(batches.len());
    let now = Instant::now();
    receiver
        .table
        .end_all(now, EndReason::Shutdown, &mut |output| {
            outbox.push(output, now)
        });
    receiver.rtp.close_all();
    let _ = outbox.send(&batches).await;
    drop(batches);
    streams_shutdown.cancel();
    for recorder in recorders {
        tokio::task::spawn_blocking(move || recorder.join())
            .await?
            .map_err(|_| anyhow::anyhow!("a recorder thread panicked"))?;
    }
    stats_task.await?;
    storage_shutdown.cancel();
    if let Some(task) = storage_task {
        task.await?;
    }
    http_shutdown.cancel();
    if let Some(task) = http_task {
        if let Err(error) = task.await? {
            tracing::warn!(%error, "the HTTP port failed");
        }
    }
    drop(feed);
    feed_shutdown.cancel();
    if let Some(task) = feed_task {
        task.await?;
    }
    if let Some(bus) = bus {
        bus.stop().await;
    }
    result
}

/// Turns the recorder's events into metadata feed lines; a call's end also
/// queues its upload.
fn publish(feed: &Feed, uploads: Option<&crate::storage::Uploads>, event: Event<'_>) {
    match event {
        Event::Started(record) => feed.call_started(
            &record.uuid,
            serde_json::json!({
                "event": "call_start",
                "uuid": record.uuid,
                "caller": record.caller,
                "callee": record.callee,
                "call_id": record.call_id,
                "sender": record.sender,
                "time": record.start.format(&time::format_description::well_known::Rfc3339).ok(),
                "mode": record.mode,
                "part": record.part,
                "offset_ms": record.offset_ms,
            }),
        ),
        Event::Dtmf(record, dtmf) => {
            let mut line = serde_json::to_value(dtmf).unwrap_or_default();
            line["event"] = "dtmf".into();
            line["uuid"] = record.uuid.clone().into();
            feed.publish(line);
        }
        Event::Ending(record) => {
            if let Some(uploads) = uploads {
                uploads.prepare(record);
            }
        }
        Event::Ended(record) => {
            if let Some(uploads) = uploads {
                uploads.enqueue(record);
            }
            let mut line = serde_json::to_value(record).unwrap_or_default();
            line["event"] = "call_end".into();
            feed.call_ended(&record.uuid, line);
        }
    }
}

/// One of an RTP-mode call's two ports.
#[derive(Debug)]
struct RtpPort {
    call: CallId,
    direction: Direction,
    /// Shared with [`RtpSockets::open`], which reads what is left at a stop.
    socket: Arc<UdpSocket>,
}

/// An [`RtpPort`] that has packets to read, or `None` once its call closed it.
type RtpReady = Pin<Box<dyn Future<Output = Option<RtpPort>> + Send>>;

/// The receive ports of RTP-mode calls, read by the receive loop itself: each
/// port waits for packets in `ready`, and the loop reads what came with one
/// `recvmmsg` into its own buffer (no task, copy or channel per packet).
struct RtpSockets {
    ip: IpAddr,
    /// Cancelled when the call ends: its ports close. With the two ports, for
    /// what is left in them at a stop.
    open: HashMap<CallId, (CancellationToken, [Arc<UdpSocket>; 2])>,
    ready: FuturesUnordered<RtpReady>,
}

impl RtpBinder for RtpSockets {
    fn open(&mut self, call: CallId, ports: RtpPorts) -> bool {
        match self.bind(call, ports) {
            Ok(()) => true,
            Err(error) => {
                tracing::debug!(read = ports.read, write = ports.write, %error, "cannot bind an RTP port pair; trying another");
                false
            }
        }
    }
}

impl RtpSockets {
    fn bind(&mut self, call: CallId, ports: RtpPorts) -> std::io::Result<()> {
        let read = UdpSocket::from_std(bind_udp(SocketAddr::new(self.ip, ports.read))?)?;
        let write = UdpSocket::from_std(bind_udp(SocketAddr::new(self.ip, ports.write))?)?;
        let sockets = [Arc::new(read), Arc::new(write)];
        let closed = CancellationToken::new();
        for (socket, direction) in sockets.iter().zip(Direction::BOTH) {
            self.wait(
                RtpPort {
                    call,
                    direction,
                    socket: socket.clone(),
                },
                closed.clone(),
            );
        }
        self.open.insert(call, (closed, sockets));
        Ok(())
    }

    /// Waits for `port`'s next packets (until its call closes it).
    fn wait(&self, port: RtpPort, closed: CancellationToken) {
        self.ready.push(Box::pin(async move {
            tokio::select! {
                biased;
                () = closed.cancelled() => None,
                readable = port.socket.readable() => match readable {
                    Ok(()) => Some(port),
                    Err(error) => {
                        tracing::warn!(%error, "an RTP port failed; the call's RTP on it is no longer read");
                        None
                    }
                },
            }
        }));
    }

    /// Waits for more of `port`'s packets, unless its call ended meanwhile.
    fn rearm(&self, port: RtpPort) {
        if let Some((closed, _)) = self.open.get(&port.call) {
            self.wait(port, closed.clone());
        }
    }

    fn close(&mut self, call: CallId) {
        if let Some((closed, _)) = self.open.remove(&call) {
            closed.cancel();
        }
    }

    fn close_all(&mut self) {
        for (_, (closed, _)) in self.open.drain() {
            closed.cancel();
        }
        self.ready.clear();
    }
}

struct Receiver {
    socket: Arc<UdpSocket>,
    table: CallTable,
    metrics: Arc<Metrics>,
    ack: Vec<u8>,
    rtp: RtpSockets,
    /// Calls a datagram ended, whose RTP sockets close once it is handled.
    ended: Vec<CallId>,
}

impl Receiver {
    async fn receive(
        &mut self,
        batches: &[mpsc::Sender<Batch>],
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut datagrams = RecvBatch::new(MAX_DATAGRAM);
        let mut packets = RecvBatch::new(MAX_RTP_PACKET);
        let mut outbox = Outbox::new(batches.len());
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u32 = 0;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    self.drain(&mut datagrams, &mut packets, &mut outbox);
                    outbox.send(batches).await?;
                    return Ok(());
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    let Receiver { table, rtp, .. } = self;
                    table.expire(now, &mut |output| {
                        if let Output::End { call, .. } = output {
                            rtp.close(call);
                        }
                        outbox.push(output, now);
                    });
                    ticks = ticks.wrapping_add(1);
                    if ticks % FLUSH_EVERY_TICKS == 0 {
                        outbox.flush_all();
                    }
                }
                Some(ready) = self.rtp.ready.next() => {
                    // `None`: the port's call ended, and the port is closed.
                    let Some(port) = ready else { continue };
                    match port.socket.try_io(Interest::READABLE, || packets.try_recv(&*port.socket)) {
                        Ok(_) => self.handle_rtp(port.call, port.direction, &packets, &mut outbox),
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(error) => tracing::debug!(%error, "RTP receive error"),
                    }
                    self.rtp.rearm(port);
                }
                readable = self.socket.readable() => {
                    if let Err(error) = readable {
                        tracing::debug!(%error, "receive error");
                        continue;
                    }
                    // A few batches while they come full: the recorders are
                    // woken once for all of them, not once per `recvmmsg`.
                    for _ in 0..RECEIVES_PER_WAKE_UP {
                        match self.socket.try_io(Interest::READABLE, || datagrams.try_recv(&*self.socket)) {
                            Ok(count) => {
                                self.handle_all(&datagrams, &mut outbox);
                                if count < rst_net::BATCH {
                                    break; // the queue is empty (or nearly)
                                }
                            }
                            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                            // ICMP errors from earlier sends surface here on some systems.
                            Err(error) => {
                                tracing::debug!(%error, "receive error");
                                break;
                            }
                        }
                    }
                }
            }
            outbox.send(batches).await?;
        }
    }

    /// At a stop: handles what the kernel already holds for the main port and
    /// every call's RTP ports, so that a stop loses nothing already received.
    /// Reads the sockets directly: tokio may not have seen them readable yet.
    fn drain(&mut self, datagrams: &mut RecvBatch, packets: &mut RecvBatch, outbox: &mut Outbox) {
        for _ in 0..DRAIN_BATCHES {
            match datagrams.try_recv(&*self.socket) {
                Ok(count) => {
                    self.handle_all(datagrams, outbox);
                    if count < rst_net::BATCH {
                        break;
                    }
                }
                // WouldBlock: nothing left; any other error is the loop's too.
                Err(_) => break,
            }
        }
        let ports: Vec<(CallId, Direction, Arc<UdpSocket>)> = self
            .rtp
            .open
            .iter()
            .flat_map(|(&call, (_, sockets))| {
                sockets
                    .iter()
                    .zip(Direction::BOTH)
                    .map(move |(socket, direction)| (call, direction, socket.clone()))
            })
            .collect();
        for (call, direction, socket) in ports {
            while let Ok(count) = packets.try_recv(&*socket) {
                self.handle_rtp(call, direction, packets, outbox);
                if count < rst_net::BATCH {
                    break;
                }
            }
        }
    }

    /// Handles the datagrams of one `recvmmsg`, all taken at one instant.
    fn handle_all(&mut self, datagrams: &RecvBatch, outbox: &mut Outbox) {
        let now = Instant::now();
        for i in 0..datagrams.len() {
            if let Some(from) = datagrams.sender(i) {
                for datagram in datagrams.datagrams(i) {
                    self.handle(now, from, datagram, outbox);
                }
            }
        }
    }

    fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8], batch: &mut Outbox) {
        let Receiver {
            socket,
            table,
            metrics,
            ack,
            rtp,
            ended,
            ..
        } = self;
        table.handle(now, from, datagram, rtp, &mut |output| match output {
            Output::Reply(reply) => {
                ack.clear();
                if rst_proto::Message::Ack(reply).encode(ack).is_ok() {
                    // Never wait for the socket: a lost ACK is retransmitted by the sender.
                    match socket.try_send_to(ack, from) {
                        Ok(_) => metrics.acks_sent.fetch_add(1, Relaxed),
                        Err(_) => metrics.send_errors.fetch_add(1, Relaxed),
                    };
                }
            }
            Output::End { call, reason } => {
                ended.push(call);
                batch.push(Output::End { call, reason }, now);
            }
            other => batch.push(other, now),
        });
        for call in ended.drain(..) {
            rtp.close(call);
        }
    }

    /// Handles the packets one `recvmmsg` took from one of a call's RTP ports
    /// (they have no GRO, unlike the main port: each message is one packet).
    fn handle_rtp(
        &mut self,
        call: CallId,
        direction: Direction,
        packets: &RecvBatch,
        batch: &mut Outbox,
    ) {
        let at = Instant::now();
        for i in 0..packets.len() {
            let Some(from) = packets.sender(i) else {
                continue;
            };
            self.table.handle_rtp(
                at,
                call,
                direction,
                from,
                packets.message(i),
                &mut |output| batch.push(output, at),
            );
        }
    }
}

/// The commands of one wake-up, one batch per recorder thread. Kept from
/// wake-up to wake-up; a recorder's batch grows only as its commands come (a
/// batch made with room for a full wake-up costs tens of KiB while it waits in
/// the recorder's queue, one per datagram when datagrams come one by one).
struct Outbox {
    batches: Vec<Batch>,
}

impl Outbox {
    fn new(shards: usize) -> Self {
        Outbox {
            batches: (0..shards).map(|_| Batch::default()).collect(),
        }
    }

    /// Routes `output` to the recorder thread that owns its call.
    fn push(&mut self, output: Output<'_>, now: Instant) {
        let call = match &output {
            Output::Reply(_) => return,
            Output::Start(start) => start.call,
            Output::Identify { call, .. }
            | Output::Declare { call, .. }
            | Output::Audio { call, .. }
            | Output::Rtp { call, .. }
            | Output::Dtmf { call, .. }
            | Output::Mark { call, .. }
            | Output::Malformed { call }
            | Output::End { call, .. } => *call,
        };
        let shard = (call % self.batches.len() as u64) as usize;
        push_output(&mut self.batches[shard], output, now);
    }

    fn flush_all(&mut self) {
        for batch in &mut self.batches {
            batch.commands.push(Command::Flush);
        }
    }

    /// Hands each recorder its batch, if it has one, and starts afresh.
    async fn send(&mut self, senders: &[mpsc::Sender<Batch>]) -> anyhow::Result<()> {
        for (batch, sender) in self.batches.iter_mut().zip(senders) {
            if !batch.is_empty() && sender.send(std::mem::take(batch)).await.is_err() {
                anyhow::bail!("a recorder thread stopped");
            }
        }
        Ok(())
    }
}

fn push_output(batch: &mut Batch, output: Output<'_>, now: Instant) {
    let command = match output {
        Output::Reply(_) => return,
        Output::Start(start) => Command::Start {
            start,
            at: now,
            wall: OffsetDateTime::now_utc(),
        },
        Output::Identify {
            call,
            caller,
            callee,
        } => Command::Identify {
            call,
            caller: caller.to_owned(),
            callee: callee.to_owned(),
        },
        Output::Declare { call, extensions } => Command::Declare {
            call,
            extensions: extensions.to_owned(),
        },
        Output::Audio {
            call,
            direction,
            payload_type,
            payload,
        } => {
            let start = batch.bytes.len();
            batch.bytes.extend_from_slice(&payload);
            Command::Audio {
                call,
                direction,
                payload_type,
                payload: start..batch.bytes.len(),
                at: now,
            }
        }
        Output::Rtp {
            call,
            direction,
            packet,
        } => {
            let start = batch.bytes.len();
            batch.bytes.extend_from_slice(packet.payload);
            Command::Rtp {
                call,
                direction,
                header: RtpHeader::of(&packet),
                payload: start..batch.bytes.len(),
                at: now,
            }
        }
        Output::Dtmf {
            call,
            direction,
            sequence,
            digit,
            duration_ms,
        } => Command::Dtmf {
            call,
            direction,
            sequence,
            digit,
            duration_ms,
            at: now,
        },
        Output::Mark {
            call,
            name,
            cleared,
        } => Command::Mark {
            call,
            name,
            cleared,
        },
        Output::Malformed { call } => Command::Malformed { call },
        Output::End { call, reason } => Command::End {
            call,
            reason,
            wall: OffsetDateTime::now_utc(),
        },
    };
    batch.commands.push(command);
}

async fn log_stats(interval: Duration, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => tracing::info!("counters: {}", metrics.summary()),
        }
    }
    tracing::info!("final counters: {}", metrics.summary());
}
