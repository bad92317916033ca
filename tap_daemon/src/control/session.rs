//! One capture started by a control client: the pipeline and the output of
//! [`crate::capture`], on threads of their own, with counters the control
//! server can read at any time and a configuration that can change while
//! calls are in progress.
//!
//! A change while running keeps every call in progress:
//!
//! * new networks and numbers judge the calls that start from now on
//!   ([`Pipeline::set_filter`]); calls being recorded go on;
//! * a new capture filter replaces libpcap's on the open capture (calls
//!   whose packets it no longer matches stop receiving audio and end when
//!   the receiver's idle timeout says so);
//! * a new receiver gets the calls that start from now on; calls in
//!   progress go on to the receiver they started with until they end (each
//!   receiver was named by a client, so nothing goes anywhere unasked).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rst_control::control::{Counters, Drops, PcapCounters, ReceiverStatus};
use rst_proto::Direction;

use crate::capture::{self, CaptureError, RunConfig, Source, Summary, BATCH, CHANNEL_BATCHES};
use crate::output::{OutputConfig, OutputStats, UdpOutput};
use crate::packet::LinkType;
use crate::pipeline::{CallStart, Filter, Output, Pipeline, PipelineStats};
use crate::sip::CallKey;

/// A change to a running capture.
#[derive(Debug)]
pub enum Update {
    Filter(Filter),
    /// New calls go to this receiver, or this pool of receivers.
    Receiver(SocketAddr, Option<rst_proto::Pool>),
    /// libpcap's filter; `None` removes it.
    Bpf(Option<String>),
}

/// How a capture ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Stopped by a client or at shutdown.
    Stopped,
    /// A capture file read to its end.
    Finished,
    /// The capture failed.
    Failed(String),
}

/// A running capture.
#[derive(Debug)]
pub struct Session {
    stop: Arc<AtomicBool>,
    updates: Sender<Update>,
    counters: Arc<Mutex<Counters>>,
    thread: Option<JoinHandle<Ended>>,
}

/// Longest wait for packets on a quiet interface: a stop or a filter change
/// is looked at this often.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// How often the counters are published and pcap's statistics read.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

impl Session {
    /// Opens the capture (so that a bad interface is an error here, not
    /// later) and starts it on its own threads.
    pub fn start(run: RunConfig) -> Result<Session, CaptureError> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Mutex::new(Counters::default()));
        let (updates, inbox) = std::sync::mpsc::channel();
        let thread = match run.source.clone() {
            Source::File(_) => {
                let (stop, counters) = (stop.clone(), counters.clone());
                std::thread::Builder::new()
                    .name("tap-replay".into())
                    .spawn(move || {
                        // A file replays quickly: its counters come at the end
                        // and changes wait for the next start.
                        drop(inbox);
                        match capture::run(&run, &stop) {
                            Ok(summary) => {
                                *lock(&counters) = from_summary(&summary);
                                if stop.load(Ordering::Relaxed) {
                                    Ended::Stopped
                                } else {
                                    Ended::Finished
                                }
                            }
                            Err(error) => Ended::Failed(error.to_string()),
                        }
                    })?
            }
            Source::Live {
                interface,
                snaplen,
                buffer_size,
            } => {
                let mut cap = pcap::Capture::from_device(interface.as_str())
                    .map_err(pcap_error(format!("no interface {interface}")))?
                    .promisc(true)
                    .snaplen(snaplen)
                    .buffer_size(buffer_size)
                    .timeout(100)
                    .immediate_mode(true)
                    .open()
                    .and_then(|cap| cap.setnonblock())
                    .map_err(pcap_error(format!("cannot capture on {interface}")))?;
                if let Some(filter) = &run.filter {
                    cap.filter(filter, true)
                        .map_err(pcap_error(format!("bad filter {filter:?}")))?;
                }
                let output = Routed::new(run.output.clone())?;
                tracing::info!(interface, "capturing (control)");
                let (stop, counters) = (stop.clone(), counters.clone());
                std::thread::Builder::new()
                    .name("tap-live".into())
                    .spawn(move || live(cap, run, output, &stop, inbox, &counters))?
            }
        };
        Ok(Session {
            stop,
            updates,
            counters,
            thread: Some(thread),
        })
    }

    /// Sends a change to the running capture.
    pub fn update(&self, update: Update) {
        let _ = self.updates.send(update);
    }

    pub fn counters(&self) -> Counters {
        lock(&self.counters).clone()
    }

    /// Whether the capture ended by itself (file read, or failure).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().map_or(true, |t| t.is_finished())
    }

    /// Stops the capture: every call ends with a BYE, the receiver gets a
    /// bounded time to acknowledge. Blocks until done.
    pub fn stop(mut self) -> (Ended, Counters) {
        self.stop.store(true, Ordering::Relaxed);
        let ended = match self.thread.take().map(|t| t.join()) {
            Some(Ok(ended)) => ended,
            Some(Err(_)) => Ended::Failed("the capture thread panicked".into()),
            None => Ended::Stopped,
        };
        (ended, self.counters())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn pcap_error(what: String) -> impl FnOnce(pcap::Error) -> CaptureError {
    move |source| CaptureError::Pcap { what, source }
}

fn timestamp(header: &pcap::PacketHeader) -> Duration {
    #[allow(clippy::unnecessary_cast)]
    let (sec, usec) = (header.ts.tv_sec as i64, header.ts.tv_usec as i64);
    Duration::from_secs(sec.max(0) as u64) + Duration::from_micros(usec.clamp(0, 999_999) as u64)
}

fn wall_clock() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

type Batch = Vec<(Duration, Vec<u8>)>;

/// The live loop of [`capture::live`], plus updates and published counters.
fn live(
    mut cap: pcap::Capture<pcap::Active>,
    run: RunConfig,
    mut output: Routed,
    stop: &AtomicBool,
    inbox: Receiver<Update>,
    counters: &Mutex<Counters>,
) -> Ended {
    let link = LinkType(cap.get_datalink().0 as u32);
    let mut pipeline = Pipeline::new(run.pipeline.clone());
    let (batches, queue) = sync_channel::<Batch>(CHANNEL_BATCHES);
    let bpf: Mutex<Option<Option<String>>> = Mutex::new(None);
    let pcap_stats: Mutex<PcapCounters> = Mutex::new(PcapCounters::default());
    let failure: Mutex<Option<String>> = Mutex::new(None);
    let mut frames = 0u64;
    std::thread::scope(|scope| {
        let (bpf, pcap_stats, failure) = (&bpf, &pcap_stats, &failure);
        scope.spawn(move || {
            let mut batch = Vec::with_capacity(BATCH);
            let mut last_send = Instant::now();
            let mut last_stats = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(filter) = lock(bpf).take() {
                    let result = match &filter {
                        Some(f) => cap.filter(f, true),
                        None => cap.filter("", true),
                    };
                    match result {
                        Ok(()) => tracing::info!(filter = ?filter, "capture filter changed"),
                        Err(error) => tracing::warn!(%error, "capture filter not changed"),
                    }
                }
                // Non-blocking: a blocking read on a quiet interface can wait
                // forever (TPACKET_V3 ignores the timeout), and stop must not.
                match cap.next_packet() {
                    Ok(packet) => batch.push((timestamp(packet.header), packet.data.to_vec())),
                    Err(pcap::Error::TimeoutExpired) => capture::wait_readable(&cap, IDLE_WAIT),
                    Err(error) => {
                        tracing::error!(%error, "capture failed");
                        *lock(failure) = Some(format!("capture failed: {error}"));
                        break;
                    }
                }
                if batch.len() >= BATCH
                    || (!batch.is_empty() && last_send.elapsed() > capture::FLUSH_AFTER)
                {
                    last_send = Instant::now();
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    if batches.send(full).is_err() {
                        break;
                    }
                }
                if last_stats.elapsed() >= PUBLISH_EVERY {
                    last_stats = Instant::now();
                    if let Ok(s) = cap.stats() {
                        *lock(pcap_stats) = pcap_counters(s);
                    }
                }
            }
            if !batch.is_empty() {
                let _ = batches.send(batch);
            }
            if let Ok(s) = cap.stats() {
                *lock(pcap_stats) = pcap_counters(s);
            }
        });
        let mut now = wall_clock();
        let mut last_publish = Instant::now();
        loop {
            match queue.recv_timeout(Duration::from_millis(50)) {
                Ok(batch) => {
                    for (at, frame) in batch {
                        frames += 1;
                        now = at;
                        pipeline.frame(link, at, &frame, &mut output);
                        output.service();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    now = now.max(wall_clock());
                    pipeline.tick(now, &mut output);
                    output.service();
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while let Ok(update) = inbox.try_recv() {
                match update {
                    Update::Filter(filter) => pipeline.set_filter(filter),
                    Update::Receiver(receiver, pool) => output.switch(receiver, pool),
                    Update::Bpf(filter) => *lock(bpf) = Some(filter),
                }
            }
            if last_publish.elapsed() >= PUBLISH_EVERY {
                last_publish = Instant::now();
                *lock(counters) = publish(frames, &pipeline, &output, *lock(pcap_stats));
            }
        }
        pipeline.finish(now.max(wall_clock()), &mut output);
    });
    output.close(run.close_grace);
    let pcap = *lock(&pcap_stats);
    *lock(counters) = publish(frames, &pipeline, &output, pcap);
    tracing::info!(
        frames,
        received = pcap.received,
        dropped = pcap.dropped,
        if_dropped = pcap.if_dropped,
        "capture stopped (control)"
    );
    let failed = lock(&failure).take();
    match failed {
        Some(error) => Ended::Failed(error),
        None => Ended::Stopped,
    }
}

fn pcap_counters(s: pcap::Stat) -> PcapCounters {
    PcapCounters {
        received: s.received.into(),
        dropped: s.dropped.into(),
        if_dropped: s.if_dropped.into(),
    }
}

fn publish(frames: u64, pipeline: &Pipeline, output: &Routed, pcap: PcapCounters) -> Counters {
    let decode_errors = pipeline.decoder().counters().errors().map(|(_, n)| n).sum();
    let active = pipeline.recording() as u64;
    counters(
        frames,
        pipeline.stats(),
        &output.stats(),
        decode_errors,
        active,
        Some(pcap),
    )
}

/// The counters of a finished file replay.
pub fn from_summary(s: &Summary) -> Counters {
    let decode_errors = s.decoder.errors().map(|(_, n)| n).sum();
    let pcap = s.pcap.map(|p| PcapCounters {
        received: p.received.into(),
        dropped: p.dropped.into(),
        if_dropped: p.if_dropped.into(),
    });
    counters(s.frames, &s.pipeline, &s.output, decode_errors, 0, pcap)
}

fn counters(
    frames: u64,
    p: &PipelineStats,
    o: &OutputStats,
    decode_errors: u64,
    calls_active: u64,
    pcap: Option<PcapCounters>,
) -> Counters {
    Counters {
        packets: frames,
        sip_messages: p.sip_messages,
        calls_started: p.calls_started,
        calls_ended: p.calls_ended,
        calls_active,
        calls_filtered: p.calls_filtered,
        rtp_forwarded: p.rtp_forwarded,
        rtp_after_bye: p.rtp_after_bye,
        rtp_sent: o.rtp_sent,
        rtp_encrypted: p.rtp_encrypted,
        fax_packets: p.fax_packets,
        drops: Drops {
            decode_errors,
            sip_malformed: p.sip_malformed,
            streams_refused: o.streams_refused,
            send_errors: o.send_errors,
            rtp_dropped_waiting: o.rtp_dropped_waiting,
        },
        pcap,
        failovers: o.failovers,
        receivers: o
            .receivers
            .iter()
            .map(|r| ReceiverStatus {
                address: r.address,
                up: r.up,
                failures: r.failures,
                acks: r.acks,
            })
            .collect(),
    }
}

/// One [`UdpOutput`] per receiver: new calls go to the newest, calls in
/// progress stay with the one they started on until they end.
#[derive(Debug)]
struct Routed {
    config: OutputConfig,
    current: (UdpOutput, HashSet<CallKey>),
    /// Outputs of earlier receivers, still carrying calls or their BYEs;
    /// dropped once empty or after a deadline.
    draining: Vec<(UdpOutput, HashSet<CallKey>, Instant)>,
    /// Counters of outputs already dropped.
    retired: OutputStats,
}

/// Longest a replaced receiver's output is kept once its calls ended.
const DRAIN: Duration = Duration::from_secs(5);

impl Routed {
    fn new(config: OutputConfig) -> std::io::Result<Routed> {
        Ok(Routed {
            current: (UdpOutput::new(config.clone())?, HashSet::new()),
            config,
            draining: Vec::new(),
            retired: OutputStats::default(),
        })
    }

    fn switch(&mut self, receiver: SocketAddr, pool: Option<rst_proto::Pool>) {
        if receiver == self.config.receiver && pool == self.config.pool {
            return;
        }
        let mut config = self.config.clone();
        config.receiver = receiver;
        config.pool = pool;
        match UdpOutput::new(config.clone()) {
            Ok(output) => {
                let old = std::mem::replace(&mut self.current, (output, HashSet::new()));
                tracing::info!(
                    calls_in_progress = old.1.len(),
                    "receiver changed; calls in progress stay with the old one"
                );
                self.draining.push((old.0, old.1, Instant::now()));
                self.config = config;
            }
            Err(error) => tracing::warn!(%error, "receiver not changed: no socket"),
        }
    }

    /// The output a call goes to: the one it started on (the current one, or
    /// one draining after a receiver change); the current one for a call it
    /// does not know (its stream then counts the packet as without a call).
    fn owner(&mut self, key: CallKey) -> &mut UdpOutput {
        // Nothing drains but for a few seconds after a receiver change.
        if !self.draining.is_empty() && !self.current.1.contains(&key) {
            if let Some((output, _, _)) = self
                .draining
                .iter_mut()
                .find(|(_, keys, _)| keys.contains(&key))
            {
                return output;
            }
        }
        &mut self.current.0
    }

    fn service(&mut self) {
        self.current.0.service();
        let now = Instant::now();
        let retired = &mut self.retired;
        self.draining.retain_mut(|(output, keys, since)| {
            output.service();
            if !keys.is_empty() {
                *since = now;
                return true;
            }
            let keep = output.streams() > 0 && now.duration_since(*since) < DRAIN;
            if !keep {
                add(retired, output.stats());
            }
            keep
        });
    }

    fn close(&mut self, grace: Duration) {
        self.current.0.close(grace);
        for (output, _, _) in &mut self.draining {
            output.close(grace);
        }
    }

    fn stats(&self) -> OutputStats {
        let mut total = self.retired.clone();
        add(&mut total, self.current.0.stats());
        for (output, _, _) in &self.draining {
            add(&mut total, output.stats());
        }
        // The pool's health is the current output's view.
        total.receivers = self.current.0.stats().receivers.clone();
        total
    }
}

fn add(total: &mut OutputStats, s: &OutputStats) {
    total.streams_started += s.streams_started;
    total.streams_refused += s.streams_refused;
    total.rtp_sent += s.rtp_sent;
    total.rtp_no_stream += s.rtp_no_stream;
    total.rtp_dropped_waiting += s.rtp_dropped_waiting;
    total.send_errors += s.send_errors;
    total.acks += s.acks;
    total.invs_unacknowledged += s.invs_unacknowledged;
    total.byes_unacknowledged += s.byes_unacknowledged;
    total.failovers += s.failovers;
}

impl Output for Routed {
    fn call_started(&mut self, call: &CallStart) {
        self.current.1.insert(call.key);
        self.current.0.call_started(call);
    }

    fn rtp(&mut self, key: CallKey, direction: Direction, packet: &[u8]) {
        self.owner(key).rtp(key, direction, packet);
    }

    /// A re-INVITE's new codec is declared to the receiver the call goes to.
    fn call_updated(&mut self, call: &CallStart) {
        self.owner(call.key).call_updated(call);
    }

    fn call_ended(&mut self, key: CallKey) {
        if self.current.1.remove(&key) {
            self.current.0.call_ended(key);
            return;
        }
        for (output, keys, _) in &mut self.draining {
            if keys.remove(&key) {
                output.call_ended(key);
                return;
            }
        }
    }
}
