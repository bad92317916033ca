//! libpcap around the pipeline: a capture file read to its end, or a live
//! interface read on its own thread into a bounded channel, until shutdown.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::output::{OutputConfig, OutputStats, UdpOutput};
use crate::packet::{Counters, LinkType};
use crate::pipeline::{Output, Pipeline, PipelineConfig, PipelineStats};
use crate::sip::TrackerStats;

/// Why a capture could not run.
#[derive(Debug, Error)]
pub enum CaptureError {
    /// The file or interface could not be opened, or the filter compiled.
    #[error("{what}: {source}")]
    Pcap {
        what: String,
        #[source]
        source: pcap::Error,
    },
    /// The sockets to the receiver could not be made.
    #[error("cannot open a socket to the receiver: {0}")]
    Socket(#[from] std::io::Error),
}

/// Where packets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A pcap or pcapng file, read as fast as possible.
    File(PathBuf),
    /// A live interface, promiscuous.
    Live {
        interface: String,
        snaplen: i32,
        /// Kernel buffer, bytes.
        buffer_size: i32,
    },
}

/// Everything a capture run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub source: Source,
    /// A BPF filter applied by libpcap.
    pub filter: Option<String>,
    pub pipeline: PipelineConfig,
    pub output: OutputConfig,
    /// How often counters are logged (live: with libpcap's statistics).
    pub stats_interval: Duration,
    /// Longest wait for the receiver to acknowledge the BYEs at the end.
    pub close_grace: Duration,
}

/// libpcap's own counters of a live capture.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PcapStats {
    pub received: u32,
    pub dropped: u32,
    pub if_dropped: u32,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub frames: u64,
    pub decoder: Counters,
    pub tracker: TrackerStats,
    pub pipeline: PipelineStats,
    pub output: OutputStats,
    pub pcap: Option<PcapStats>,
}

/// Packets per batch from the capture thread, and batches in flight.
const BATCH: usize = 64;
const CHANNEL_BATCHES: usize = 256;
/// Longest a captured packet waits in a partial batch.
const FLUSH_AFTER: Duration = Duration::from_millis(20);

/// Runs a capture until the file ends or `shutdown` is set, then ends every
/// call and waits (bounded) for the receiver to acknowledge.
pub fn run(config: &RunConfig, shutdown: &AtomicBool) -> Result<Summary, CaptureError> {
    match &config.source {
        Source::File(path) => replay(path, config, shutdown),
        Source::Live {
            interface,
            snaplen,
            buffer_size,
        } => live(interface, *snaplen, *buffer_size, config, shutdown),
    }
}

fn pcap_error(what: String) -> impl FnOnce(pcap::Error) -> CaptureError {
    move |source| CaptureError::Pcap { what, source }
}

/// A pcap timestamp as time since the epoch (the C field types differ by
/// platform, hence the casts).
#[allow(clippy::unnecessary_cast)]
pub(crate) fn timestamp(header: &pcap::PacketHeader) -> Duration {
    let (sec, usec) = (header.ts.tv_sec as i64, header.ts.tv_usec as i64);
    Duration::from_secs(sec.max(0) as u64) + Duration::from_micros(usec.clamp(0, 999_999) as u64)
}

/// Reads a capture file through the pipeline into the receiver.
pub fn replay(
    path: &Path,
    config: &RunConfig,
    shutdown: &AtomicBool,
) -> Result<Summary, CaptureError> {
    let mut cap = pcap::Capture::from_file(path)
        .map_err(pcap_error(format!("cannot read {}", path.display())))?;
    if let Some(filter) = &config.filter {
        cap.filter(filter, true)
            .map_err(pcap_error(format!("bad filter {filter:?}")))?;
    }
    let link = LinkType(cap.get_datalink().0 as u32);
    let mut pipeline = Pipeline::new(config.pipeline.clone());
    let mut output = UdpOutput::new(config.output.clone())?;
    let mut frames = 0u64;
    let mut last = Duration::ZERO;
    let mut last_log = Instant::now();
    loop {
        let packet = match cap.next_packet() {
            Ok(packet) => packet,
            Err(pcap::Error::NoMorePackets) => break,
            Err(error) => {
                // A truncated or corrupt file: what was read so far still counts.
                tracing::warn!(%error, frames, "capture file ends early");
                break;
            }
        };
        frames += 1;
        let now = timestamp(packet.header);
        last = now;
        pipeline.frame(link, now, packet.data, &mut output);
        output.service();
        if frames % 1024 == 0 {
            if shutdown.load(Ordering::Relaxed) {
                tracing::info!("stopping early");
                break;
            }
            if last_log.elapsed() >= config.stats_interval {
                last_log = Instant::now();
                log_counters(frames, &pipeline, &output, None);
            }
        }
    }
    pipeline.finish(last, &mut output);
    output.close(config.close_grace);
    let summary = summary(frames, &pipeline, &output, None);
    log_counters(frames, &pipeline, &output, None);
    Ok(summary)
}

/// Waits until the capture has packets, at most `timeout`.
#[cfg(unix)]
pub(crate) fn wait_readable(cap: &pcap::Capture<pcap::Active>, timeout: Duration) {
    use std::os::fd::AsRawFd as _;
    let mut poll = libc::pollfd {
        fd: cap.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as libc::c_int) };
}

/// Npcap has no pollable descriptor: wait the timeout out.
#[cfg(not(unix))]
pub(crate) fn wait_readable(_cap: &pcap::Capture<pcap::Active>, timeout: Duration) {
    std::thread::sleep(timeout.min(Duration::from_millis(10)));
}

/// Opens `interface` for a live capture: promiscuous, non-blocking (libpcap's
/// read timeout does not fire on an idle interface on Linux, so a poll of
/// our own lets a stop be seen), with `filter` if any.
pub(crate) fn open_live(
    interface: &str,
    snaplen: i32,
    buffer_size: i32,
    filter: Option<&str>,
) -> Result<pcap::Capture<pcap::Active>, CaptureError> {
    let mut cap = pcap::Capture::from_device(interface)
        .map_err(pcap_error(format!("no interface {interface}")))?
        .promisc(true)
        .snaplen(snaplen)
        .buffer_size(buffer_size)
        .timeout(100)
        .immediate_mode(true)
        .open()
        .and_then(|cap| cap.setnonblock())
        .map_err(pcap_error(format!("cannot capture on {interface}")))?;
    if let Some(filter) = filter {
        cap.filter(filter, true)
            .map_err(pcap_error(format!("bad filter {filter:?}")))?;
    }
    Ok(cap)
}

/// Captures live on `interface` until `shutdown` is set.
pub fn live(
    interface: &str,
    snaplen: i32,
    buffer_size: i32,
    config: &RunConfig,
    shutdown: &AtomicBool,
) -> Result<Summary, CaptureError> {
    let cap = open_live(interface, snaplen, buffer_size, config.filter.as_deref())?;
    tracing::info!(interface, "capture open");
    let mut pipeline = Pipeline::new(config.pipeline.clone());
    let mut output = UdpOutput::new(config.output.clone())?;
    let ended = live_loop(
        cap,
        &mut pipeline,
        &mut output,
        shutdown,
        LiveTimes {
            idle_wait: Duration::from_millis(100),
            report_every: config.stats_interval,
        },
        |_, _, _| None,
        |frames, pipeline, output, pcap| {
            tracing::info!(
                received = pcap.received,
                dropped = pcap.dropped,
                if_dropped = pcap.if_dropped,
                "pcap"
            );
            log_counters(frames, pipeline, output, None);
        },
    );
    if let Some(error) = &ended.failure {
        tracing::error!(%error, "capture failed");
    }
    output.close(config.close_grace);
    let pcap_stats = ended.pcap;
    tracing::info!(
        received = pcap_stats.received,
        dropped = pcap_stats.dropped,
        if_dropped = pcap_stats.if_dropped,
        "pcap at the end"
    );
    log_counters(ended.frames, &pipeline, &output, Some(pcap_stats));
    Ok(summary(ended.frames, &pipeline, &output, Some(pcap_stats)))
}

/// An output the live loop drives: [`Output`], plus its own timers and
/// acknowledgements to see to between frames.
pub(crate) trait Serviced: Output {
    fn service(&mut self);
}

impl Serviced for UdpOutput {
    fn service(&mut self) {
        UdpOutput::service(self);
    }
}

/// The live loop's pace: the longest wait on a quiet interface (a stop or a
/// change is seen this often), and how often its owner reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LiveTimes {
    pub idle_wait: Duration,
    pub report_every: Duration,
}

/// How a live loop ended.
#[derive(Debug, Clone, Default)]
pub(crate) struct LiveEnd {
    pub frames: u64,
    pub pcap: PcapStats,
    /// libpcap failed (the interface went away, say).
    pub failure: Option<String>,
}

/// A libpcap filter change for the capture thread: `Some(None)` removes it.
type BpfChange = Option<Option<String>>;

/// The one live capture loop, for a daemon started with an interface
/// ([`live`]) and for a capture a control client started
/// ([`crate::control::session`]). A capture thread reads libpcap
/// (non-blocking, polled) into batches; this thread runs them through the
/// pipeline into `output` until `stop` is set, then ends every call.
///
/// Between batches `between` may change the pipeline and the output (a
/// control client's new filter or receiver) and return a new libpcap filter
/// for the capture thread; every `report_every`, `report` hears the frames
/// so far and libpcap's statistics.
///
/// Batches carry their frames in one buffer and go back to the capture
/// thread once read: in a steady flow no packet costs an allocation.
pub(crate) fn live_loop<O: Serviced>(
    mut cap: pcap::Capture<pcap::Active>,
    pipeline: &mut Pipeline,
    output: &mut O,
    stop: &AtomicBool,
    times: LiveTimes,
    mut between: impl FnMut(&mut Pipeline, &mut O, u64) -> BpfChange,
    mut report: impl FnMut(u64, &Pipeline, &O, PcapStats),
) -> LiveEnd {
    let link = LinkType(cap.get_datalink().0 as u32);
    let (batches, queue) = sync_channel::<Batch>(CHANNEL_BATCHES);
    let (spares, spare) = sync_channel::<Batch>(CHANNEL_BATCHES + 1);
    let bpf: Mutex<BpfChange> = Mutex::new(None);
    let pcap_stats: Mutex<PcapStats> = Mutex::new(PcapStats::default());
    let failure: Mutex<Option<String>> = Mutex::new(None);
    let mut frames = 0u64;
    std::thread::scope(|scope| {
        let (bpf, pcap_stats, failure) = (&bpf, &pcap_stats, &failure);
        scope.spawn(move || {
            let fresh = || spare.try_recv().unwrap_or_default();
            let mut batch = fresh();
            let mut last_send = Instant::now();
            let mut last_stats = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(filter) = lock(bpf).take() {
                    match cap.filter(filter.as_deref().unwrap_or(""), true) {
                        Ok(()) => tracing::info!(filter = ?filter, "capture filter changed"),
                        Err(error) => tracing::warn!(%error, "capture filter not changed"),
                    }
                }
                // Non-blocking: a blocking read on a quiet interface can wait
                // forever (TPACKET_V3 ignores the timeout), and stop must not.
                match cap.next_packet() {
                    Ok(packet) => batch.push(timestamp(packet.header), packet.data),
                    Err(pcap::Error::TimeoutExpired) => wait_readable(&cap, times.idle_wait),
                    Err(error) => {
                        *lock(failure) = Some(format!("capture failed: {error}"));
                        break;
                    }
                }
                // A full batch, or what came within the last moments: packets
                // travel in batches, never one by one, and never wait long.
                if batch.len() >= BATCH || (!batch.is_empty() && last_send.elapsed() > FLUSH_AFTER)
                {
                    last_send = Instant::now();
                    let full = std::mem::replace(&mut batch, fresh());
                    // Blocking: when the pipeline falls behind, the kernel's
                    // buffer fills and libpcap counts the drops.
                    if batches.send(full).is_err() {
                        break;
                    }
                }
                if last_stats.elapsed() >= times.report_every.min(PCAP_STATS_EVERY) {
                    last_stats = Instant::now();
                    if let Ok(s) = cap.stats() {
                        *lock(pcap_stats) = PcapStats::from(s);
                    }
                }
            }
            if !batch.is_empty() {
                let _ = batches.send(batch);
            }
            if let Ok(s) = cap.stats() {
                *lock(pcap_stats) = PcapStats::from(s);
            }
        });
        let mut now = wall_clock();
        let mut last_report = Instant::now();
        loop {
            match queue.recv_timeout(times.idle_wait.max(Duration::from_millis(50))) {
                Ok(mut batch) => {
                    for (at, frame) in batch.frames() {
                        frames += 1;
                        now = at;
                        pipeline.frame(link, at, frame, output);
                        output.service();
                    }
                    batch.clear();
                    // Back to the capture thread; dropped if it has enough.
                    let _ = spares.try_send(batch);
                }
                Err(RecvTimeoutError::Timeout) => {
                    now = now.max(wall_clock());
                    pipeline.tick(now, output);
                    output.service();
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if let Some(filter) = between(pipeline, output, frames) {
                *lock(bpf) = Some(filter);
            }
            if last_report.elapsed() >= times.report_every {
                last_report = Instant::now();
                report(frames, pipeline, output, *lock(pcap_stats));
            }
        }
        pipeline.finish(now.max(wall_clock()), output);
    });
    let pcap = *lock(&pcap_stats);
    let failure = lock(&failure).take();
    LiveEnd {
        frames,
        pcap,
        failure,
    }
}

/// How often the capture thread reads libpcap's statistics at most.
const PCAP_STATS_EVERY: Duration = Duration::from_millis(200);

impl From<pcap::Stat> for PcapStats {
    fn from(s: pcap::Stat) -> Self {
        PcapStats {
            received: s.received,
            dropped: s.dropped,
            if_dropped: s.if_dropped,
        }
    }
}

/// Frames from the capture thread: their bytes end to end in one buffer,
/// each frame its capture time and where its bytes end.
#[derive(Debug, Default)]
struct Batch {
    bytes: Vec<u8>,
    frames: Vec<(Duration, usize)>,
}

impl Batch {
    fn push(&mut self, at: Duration, frame: &[u8]) {
        self.bytes.extend_from_slice(frame);
        self.frames.push((at, self.bytes.len()));
    }

    fn len(&self) -> usize {
        self.frames.len()
    }

    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.frames.clear();
    }

    fn frames(&self) -> impl Iterator<Item = (Duration, &[u8])> + '_ {
        let mut start = 0;
        self.frames.iter().map(move |&(at, end)| {
            let frame = &self.bytes[start..end];
            start = end;
            (at, frame)
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn wall_clock() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn summary(
    frames: u64,
    pipeline: &Pipeline,
    output: &UdpOutput,
    pcap: Option<PcapStats>,
) -> Summary {
    Summary {
        frames,
        decoder: pipeline.decoder().counters().clone(),
        tracker: pipeline.tracker().stats().clone(),
        pipeline: pipeline.stats().clone(),
        output: output.stats().clone(),
        pcap,
    }
}

fn log_counters(frames: u64, pipeline: &Pipeline, output: &UdpOutput, pcap: Option<PcapStats>) {
    let p = pipeline.stats();
    let o = output.stats();
    let d = pipeline.decoder().counters();
    let errors: u64 = d.errors().map(|(_, n)| n).sum();
    tracing::info!(
        frames,
        decode_errors = errors,
        sip = p.sip_messages,
        sip_malformed = p.sip_malformed,
        calls_started = p.calls_started,
        calls_ended = p.calls_ended,
        calls_filtered = p.calls_filtered,
        recording = pipeline.recording(),
        rtp_forwarded = p.rtp_forwarded,
        rtp_after_bye = p.rtp_after_bye,
        rtp_duplicates = p.rtp_duplicates,
        rtp_not_audio = p.rtp_not_audio,
        rtp_encrypted = p.rtp_encrypted,
        fax_packets = p.fax_packets,
        rtp_unmatched = p.rtp_unmatched,
        rtp_sent = o.rtp_sent,
        send_errors = o.send_errors,
        streams_refused = o.streams_refused,
        pcap_dropped = pcap.map(|s| s.dropped),
        "counters"
    );
}
