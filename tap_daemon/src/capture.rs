//! libpcap around the pipeline: a capture file read to its end, or a live
//! interface read on its own thread into a bounded channel, until shutdown.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::output::{OutputConfig, OutputStats, UdpOutput};
use crate::packet::{Counters, LinkType};
use crate::pipeline::{Pipeline, PipelineConfig, PipelineStats};
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
pub(crate) const BATCH: usize = 64;
pub(crate) const CHANNEL_BATCHES: usize = 256;
/// Longest a captured packet waits in a partial batch.
pub(crate) const FLUSH_AFTER: Duration = Duration::from_millis(20);

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
fn timestamp(header: &pcap::PacketHeader) -> Duration {
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

/// One batch of packets from the capture thread: (capture time, frame).
type Batch = Vec<(Duration, Vec<u8>)>;

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

/// Captures live on `interface` until `shutdown` is set.
pub fn live(
    interface: &str,
    snaplen: i32,
    buffer_size: i32,
    config: &RunConfig,
    shutdown: &AtomicBool,
) -> Result<Summary, CaptureError> {
    let mut cap = pcap::Capture::from_device(interface)
        .map_err(pcap_error(format!("no interface {interface}")))?
        .promisc(true)
        .snaplen(snaplen)
        .buffer_size(buffer_size)
        .timeout(100)
        .immediate_mode(true)
        .open()
        .map_err(pcap_error(format!("cannot capture on {interface}")))?
        // libpcap's read timeout does not fire on an idle interface on Linux:
        // non-blocking reads and a poll of our own let shutdown be seen.
        .setnonblock()
        .map_err(pcap_error(format!("cannot capture on {interface}")))?;
    if let Some(filter) = &config.filter {
        cap.filter(filter, true)
            .map_err(pcap_error(format!("bad filter {filter:?}")))?;
    }
    let link = LinkType(cap.get_datalink().0 as u32);
    tracing::info!(interface, link = link.0, "capturing");
    let mut pipeline = Pipeline::new(config.pipeline.clone());
    let mut output = UdpOutput::new(config.output.clone())?;
    let (batches, queue) = sync_channel::<Batch>(CHANNEL_BATCHES);
    let stats_interval = config.stats_interval;
    let mut frames = 0u64;
    let pcap_stats = std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let mut batch = Vec::with_capacity(BATCH);
            let mut last_send = Instant::now();
            let mut last_stats = Instant::now();
            let mut stats = PcapStats::default();
            while !shutdown.load(Ordering::Relaxed) {
                match cap.next_packet() {
                    Ok(packet) => {
                        let at = timestamp(packet.header);
                        batch.push((at, packet.data.to_vec()));
                    }
                    Err(pcap::Error::TimeoutExpired) => {
                        wait_readable(&cap, Duration::from_millis(100))
                    }
                    Err(error) => {
                        tracing::error!(%error, "capture failed");
                        break;
                    }
                }
                // A full batch, or what came within the last moments: packets
                // travel in batches, never one by one, and never wait long.
                if batch.len() >= BATCH || (!batch.is_empty() && last_send.elapsed() > FLUSH_AFTER)
                {
                    last_send = Instant::now();
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    // Blocking: when the pipeline falls behind, the kernel's
                    // buffer fills and libpcap counts the drops.
                    if batches.send(full).is_err() {
                        break;
                    }
                }
                if last_stats.elapsed() >= stats_interval {
                    last_stats = Instant::now();
                    if let Ok(s) = cap.stats() {
                        stats = PcapStats {
                            received: s.received,
                            dropped: s.dropped,
                            if_dropped: s.if_dropped,
                        };
                        tracing::info!(
                            received = s.received,
                            dropped = s.dropped,
                            if_dropped = s.if_dropped,
                            "pcap"
                        );
                    }
                }
            }
            if !batch.is_empty() {
                let _ = batches.send(batch);
            }
            if let Ok(s) = cap.stats() {
                stats = PcapStats {
                    received: s.received,
                    dropped: s.dropped,
                    if_dropped: s.if_dropped,
                };
            }
            stats
        });
        let mut last_log = Instant::now();
        let mut now = wall_clock();
        loop {
            match queue.recv_timeout(Duration::from_millis(100)) {
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
            if last_log.elapsed() >= stats_interval {
                last_log = Instant::now();
                log_counters(frames, &pipeline, &output, None);
            }
        }
        pipeline.finish(now.max(wall_clock()), &mut output);
        reader.join().unwrap_or_default()
    });
    output.close(config.close_grace);
    tracing::info!(
        received = pcap_stats.received,
        dropped = pcap_stats.dropped,
        if_dropped = pcap_stats.if_dropped,
        "pcap at the end"
    );
    log_counters(frames, &pipeline, &output, Some(pcap_stats));
    Ok(summary(frames, &pipeline, &output, Some(pcap_stats)))
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
