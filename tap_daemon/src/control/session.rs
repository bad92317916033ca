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
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rst_control::control::{Counters, Drops, PcapCounters, ReceiverStatus};
use rst_proto::Direction;

use crate::capture::{
    self, CaptureError, LiveTimes, PcapStats, RunConfig, Serviced, Source, Summary,
};
use crate::output::{OutputConfig, OutputStats, UdpOutput};
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
                let cap =
                    capture::open_live(&interface, snaplen, buffer_size, run.filter.as_deref())?;
                let output = Routed::new(run.output.clone())?;
                tracing::info!(interface, "capture open (control)");
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

/// A control client's capture: [`capture::live_loop`] with its updates
/// applied between batches and its counters published.
fn live(
    cap: pcap::Capture<pcap::Active>,
    run: RunConfig,
    mut output: Routed,
    stop: &AtomicBool,
    inbox: Receiver<Update>,
    counters: &Mutex<Counters>,
) -> Ended {
    let mut pipeline = Pipeline::new(run.pipeline.clone());
    let ended = capture::live_loop(
        cap,
        &mut pipeline,
        &mut output,
        stop,
        LiveTimes {
            idle_wait: IDLE_WAIT,
            report_every: PUBLISH_EVERY,
        },
        |pipeline, output, _| {
            let mut bpf = None;
            while let Ok(update) = inbox.try_recv() {
                match update {
                    Update::Filter(filter) => pipeline.set_filter(filter),
                    Update::Receiver(receiver, pool) => output.switch(receiver, pool),
                    Update::Bpf(filter) => bpf = Some(filter),
                }
            }
            bpf
        },
        |frames, pipeline, output, pcap| {
            *lock(counters) = publish(frames, pipeline, output, pcap_counters(pcap));
        },
    );
    output.close(run.close_grace);
    let pcap = ended.pcap;
    *lock(counters) = publish(ended.frames, &pipeline, &output, pcap_counters(pcap));
    tracing::info!(
        frames = ended.frames,
        received = pcap.received,
        dropped = pcap.dropped,
        if_dropped = pcap.if_dropped,
        "capture stopped (control)"
    );
    match ended.failure {
        Some(error) => {
            tracing::error!(%error, "capture failed");
            Ended::Failed(error)
        }
        None => Ended::Stopped,
    }
}

fn pcap_counters(s: PcapStats) -> PcapCounters {
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

    fn service_all(&mut self) {
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

impl Serviced for Routed {
    fn service(&mut self) {
        self.service_all();
    }
}

impl Output for Routed {
    fn call_started(&mut self, call: &CallStart) {
        self.current.1.insert(call.key);
        self.current.0.call_started(call);
    }

    fn rtp(&mut self, key: CallKey, direction: Direction, packet: &[u8], at: Duration) {
        self.owner(key).rtp(key, direction, packet, at);
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
