//! Counters of everything the receiver does and refuses, shared by its tasks,
//! rendered in the Prometheus text format and summarised in the log.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use rst_proto::ParseError;

use crate::end::EndReason;

/// Why a well-formed datagram was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The sender's address is outside the configured `allow` networks.
    NotAllowed,
    /// `max-calls` calls are already being recorded.
    MaxCalls,
    /// DATA for a call that already ended (a straggler after BYE or timeout).
    AfterEnd,
    /// An ACK sent to the receiver, which only sends them.
    UnexpectedAck,
    /// A PLAY, CLR or LIVE sent to the receiver, which only sends them.
    Unexpected,
    /// RTP mode: every port of the `rtp-ports` range is in use.
    NoPorts,
    /// A datagram for a call from an address other than the call's sender
    /// (RTP: other than its announced port).
    WrongSource,
    /// DATA of a call no INV announced that never proved itself (too few
    /// frames in a row from one sender before it was forgotten, or too many
    /// such calls held at once).
    Unproven,
    /// A new call beyond `new-calls-per-second` from one sender address.
    RateLimited,
}

impl Refusal {
    const ALL: [Refusal; 9] = [
        Refusal::NotAllowed,
        Refusal::MaxCalls,
        Refusal::AfterEnd,
        Refusal::UnexpectedAck,
        Refusal::Unexpected,
        Refusal::NoPorts,
        Refusal::WrongSource,
        Refusal::Unproven,
        Refusal::RateLimited,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Refusal::NotAllowed => "not_allowed",
            Refusal::MaxCalls => "max_calls",
            Refusal::AfterEnd => "after_end",
            Refusal::UnexpectedAck => "unexpected_ack",
            Refusal::Unexpected => "unexpected",
            Refusal::NoPorts => "no_ports",
            Refusal::WrongSource => "wrong_source",
            Refusal::Unproven => "unproven",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

const COMMANDS: [&str; 9] = [
    "inv", "data", "bye", "ack", "dtmf", "play", "clr", "mark", "live",
];

/// Every counter of the receiver. All updates are relaxed atomics: they are
/// statistics, not synchronisation.
#[derive(Debug, Default)]
pub struct Metrics {
    pub datagrams: AtomicU64,
    messages: [AtomicU64; COMMANDS.len()],
    malformed: [AtomicU64; ParseError::KINDS.len()],
    refused: [AtomicU64; Refusal::ALL.len()],
    pub calls_started: AtomicU64,
    pub calls_active: AtomicI64,
    calls_ended: [AtomicU64; EndReason::ALL.len()],
    pub audio_bytes: AtomicU64,
    pub samples_written: AtomicU64,
    /// Payloads a decoder could not (fully) decode; kept raw where possible.
    pub decode_errors: AtomicU64,
    /// Failed writes or renames of recording files (a full disk, say).
    pub write_errors: AtomicU64,
    /// Leftover `.part` files from an earlier run repaired at start-up.
    pub recovered_files: AtomicU64,
    /// Leftover `.part` files that start-up could not repair (a full disk,
    /// say): left as they are, for the next start.
    pub recovery_failures: AtomicU64,
    pub acks_sent: AtomicU64,
    pub rtp_packets: AtomicU64,
    /// RTP datagrams that are not valid RTP.
    pub rtp_malformed: AtomicU64,
    /// RTP port pairs that could not be bound (taken by another program).
    pub rtp_open_failures: AtomicU64,
    pub send_errors: AtomicU64,
    /// LIVE told to senders that gather frames: someone hears their call.
    pub lives_sent: AtomicU64,
    /// Taps configured, started and watched by this receiver right now.
    pub taps_running: AtomicI64,
    /// Tap link sessions that ended in an error (a tap restarted, say).
    pub tap_link_failures: AtomicU64,
    /// Records of ended calls not yet written (a full disk), retried every second.
    pub records_pending: AtomicI64,
    /// Records written on a retry, after their first write failed.
    pub records_retried: AtomicU64,
    /// Records given up on in this run (still pending at shutdown, or more
    /// pending than the bound): the next start completes them from their
    /// provisional records.
    pub records_deferred: AtomicU64,
    /// Streams (a call and a stream profile) started, and going on now.
    pub streams_started: AtomicU64,
    pub streams_active: AtomicI64,
    /// WebSocket connections to stream consumers made, and attempts that failed.
    pub stream_connects: AtomicU64,
    pub stream_connect_failures: AtomicU64,
    /// Media messages or binary frames sent to stream consumers.
    pub stream_frames_sent: AtomicU64,
    /// Milliseconds of audio (summed over tracks) a stream could not deliver.
    pub stream_dropped_ms: AtomicU64,
    /// `listen` clients connected now, and connections refused (a bad token).
    pub listeners: AtomicI64,
    pub http_refused: AtomicU64,
    /// Console sign-ins refused unchecked: too many wrong tokens from the address.
    pub console_sign_in_throttled: AtomicU64,
    /// Audio consumers sent to be played that was dropped (queue full), in ms.
    pub play_dropped_ms: AtomicU64,
    /// Consumers' audio, clears and marks refused (a passive call, one that ended).
    pub play_refused: AtomicU64,
    /// Ended calls' files waiting to be stored in object storage, their bytes,
    /// and the age of the oldest call waiting, in seconds.
    pub storage_files_waiting: AtomicI64,
    pub storage_bytes_waiting: AtomicI64,
    pub storage_oldest_seconds: AtomicI64,
    /// Calls whose files and record are stored and verified.
    pub storage_calls_stored: AtomicU64,
    /// Tries to store a call that failed (each is tried again), and queue errors.
    pub storage_failures: AtomicU64,
    /// Calls given up on: their record is not on disk, so their upload job
    /// is set aside (`.upload/*.failed`) rather than hold the queue.
    pub storage_calls_failed: AtomicU64,
    /// The message bus and webhook targets' counters.
    pub bus: crate::bus::BusStats,
}

impl Metrics {
    pub fn message(&self, command: &rst_proto::Message<'_>) {
        let index = match command {
            rst_proto::Message::Inv(_) => 0,
            rst_proto::Message::Data(_) => 1,
            rst_proto::Message::Bye(_) => 2,
            rst_proto::Message::Ack(_) => 3,
            rst_proto::Message::Dtmf(_) => 4,
            rst_proto::Message::Play(_) => 5,
            rst_proto::Message::Clear(_) => 6,
            rst_proto::Message::Mark(_) => 7,
            rst_proto::Message::Live(_) => 8,
        };
        self.messages[index].fetch_add(1, Relaxed);
    }

    pub fn malformed(&self, error: &ParseError) {
        let kind = error.kind();
        if let Some(index) = ParseError::KINDS.iter().position(|k| *k == kind) {
            self.malformed[index].fetch_add(1, Relaxed);
        }
    }

    pub fn refused(&self, refusal: Refusal) {
        self.refused[refusal as usize].fetch_add(1, Relaxed);
    }

    pub fn call_ended(&self, reason: EndReason) {
        self.calls_ended[reason as usize].fetch_add(1, Relaxed);
        self.calls_active.fetch_sub(1, Relaxed);
    }

    pub fn malformed_total(&self) -> u64 {
        self.malformed.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn refused_total(&self) -> u64 {
        self.refused.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn messages_of(&self, command: &str) -> u64 {
        COMMANDS
            .iter()
            .position(|c| *c == command)
            .map_or(0, |i| self.messages[i].load(Relaxed))
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut family =
            |name: &str, kind: &str, help: &str, rows: &mut dyn Iterator<Item = (String, u64)>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for (labels, value) in rows {
                    let _ = writeln!(out, "{name}{labels} {value}");
                }
            };
        let rows = |names: &[&str], label: &str, counters: &[AtomicU64]| -> Vec<(String, u64)> {
            names
                .iter()
                .zip(counters)
                .map(|(name, c)| (format!("{{{label}=\"{name}\"}}"), c.load(Relaxed)))
                .collect()
        };
        let refusals: Vec<&str> = Refusal::ALL.iter().map(|r| r.name()).collect();
        let reasons: Vec<&str> = EndReason::ALL.iter().map(|r| r.name()).collect();
        type Family<'a> = (&'a str, &'a str, Vec<(String, u64)>);
        let labelled_families: [Family; 4] = [
            (
                "rst_messages_total",
                "Well-formed messages received, by command.",
                rows(&COMMANDS, "command", &self.messages),
            ),
            (
                "rst_malformed_total",
                "Datagrams refused as malformed, by kind.",
                rows(&ParseError::KINDS, "kind", &self.malformed),
            ),
            (
                "rst_refused_total",
                "Well-formed messages not recorded, by reason.",
                rows(&refusals, "reason", &self.refused),
            ),
            (
                "rst_calls_ended_total",
                "Calls ended, by reason.",
                rows(&reasons, "reason", &self.calls_ended),
            ),
        ];
        for (name, help, rows) in labelled_families {
            family(name, "counter", help, &mut rows.into_iter());
        }
        let gauges: [(&str, &str, &AtomicI64); 8] = [
            (
                "rst_streams_active",
                "Live streams to consumers going on.",
                &self.streams_active,
            ),
            (
                "rst_listeners",
                "Clients listening to calls on the HTTP port.",
                &self.listeners,
            ),
            (
                "rst_calls_active",
                "Calls being recorded.",
                &self.calls_active,
            ),
            (
                "rst_taps_running",
                "Taps capturing for this receiver.",
                &self.taps_running,
            ),
            (
                "rst_records_pending",
                "Records of ended calls waiting for room on disk.",
                &self.records_pending,
            ),
            (
                "rst_storage_files_waiting",
                "Files of ended calls waiting to be stored in object storage.",
                &self.storage_files_waiting,
            ),
            (
                "rst_storage_bytes_waiting",
                "Bytes of ended calls waiting to be stored in object storage.",
                &self.storage_bytes_waiting,
            ),
            (
                "rst_storage_oldest_waiting_seconds",
                "Age of the oldest call waiting to be stored.",
                &self.storage_oldest_seconds,
            ),
        ];
        for (name, help, gauge) in gauges {
            let value = gauge.load(Relaxed).max(0) as u64;
            family(
                name,
                "gauge",
                help,
                &mut std::iter::once((String::new(), value)),
            );
        }
        let counters: [(&str, &str, &AtomicU64); 29] = [
            (
                "rst_storage_calls_stored_total",
                "Calls whose files and record are stored in object storage, verified.",
                &self.storage_calls_stored,
            ),
            (
                "rst_storage_failures_total",
                "Tries to store a call that failed (tried again), and upload queue errors.",
                &self.storage_failures,
            ),
            (
                "rst_storage_calls_failed_total",
                "Calls never stored: their record is not on disk; upload job set aside as .failed.",
                &self.storage_calls_failed,
            ),
            (
                "rst_play_dropped_ms_total",
                "Milliseconds of consumers' audio dropped before it was played (queue full).",
                &self.play_dropped_ms,
            ),
            (
                "rst_play_refused_total",
                "Consumers' audio, clears and marks refused (a passive or ended call).",
                &self.play_refused,
            ),
            (
                "rst_streams_started_total",
                "Live streams started (a call and a stream profile).",
                &self.streams_started,
            ),
            (
                "rst_stream_connects_total",
                "WebSocket connections made to stream consumers.",
                &self.stream_connects,
            ),
            (
                "rst_stream_connect_failures_total",
                "Connections to stream consumers that failed or broke.",
                &self.stream_connect_failures,
            ),
            (
                "rst_stream_frames_sent_total",
                "Audio frames sent to stream consumers.",
                &self.stream_frames_sent,
            ),
            (
                "rst_stream_dropped_ms_total",
                "Milliseconds of audio streams could not deliver.",
                &self.stream_dropped_ms,
            ),
            (
                "rst_http_refused_total",
                "HTTP requests refused for a missing or wrong token.",
                &self.http_refused,
            ),
            (
                "rst_console_sign_in_throttled_total",
                "Console sign-ins refused unchecked: too many wrong tokens from the address.",
                &self.console_sign_in_throttled,
            ),
            (
                "rst_datagrams_total",
                "Datagrams received on the rst port.",
                &self.datagrams,
            ),
            (
                "rst_calls_started_total",
                "Calls started.",
                &self.calls_started,
            ),
            (
                "rst_audio_bytes_total",
                "Payload bytes received in DATA.",
                &self.audio_bytes,
            ),
            (
                "rst_samples_written_total",
                "Mono samples written to WAV files.",
                &self.samples_written,
            ),
            (
                "rst_decode_errors_total",
                "Payloads that could not be fully decoded.",
                &self.decode_errors,
            ),
            (
                "rst_write_errors_total",
                "Failed writes of recording files.",
                &self.write_errors,
            ),
            (
                "rst_recovered_files_total",
                "Unfinished files repaired at start-up.",
                &self.recovered_files,
            ),
            (
                "rst_recovery_failures_total",
                "Unfinished files start-up could not repair, left for the next start.",
                &self.recovery_failures,
            ),
            ("rst_acks_sent_total", "ACKs sent.", &self.acks_sent),
            (
                "rst_lives_sent_total",
                "LIVE sent to senders that gather frames: someone hears the call.",
                &self.lives_sent,
            ),
            (
                "rst_send_errors_total",
                "Failed sends of ACKs, PLAYs and LIVEs.",
                &self.send_errors,
            ),
            (
                "rst_rtp_packets_total",
                "RTP packets accepted (RTP mode).",
                &self.rtp_packets,
            ),
            (
                "rst_rtp_malformed_total",
                "RTP datagrams that are not valid RTP.",
                &self.rtp_malformed,
            ),
            (
                "rst_rtp_open_failures_total",
                "RTP port pairs that could not be bound.",
                &self.rtp_open_failures,
            ),
            (
                "rst_records_retried_total",
                "Records written on a retry after a failed write.",
                &self.records_retried,
            ),
            (
                "rst_records_deferred_total",
                "Records left to the next start's recovery.",
                &self.records_deferred,
            ),
            (
                "rst_tap_link_failures_total",
                "Tap control connections that broke or could not be opened.",
                &self.tap_link_failures,
            ),
        ];
        for (name, help, counter) in counters {
            family(
                name,
                "counter",
                help,
                &mut std::iter::once((String::new(), counter.load(Relaxed))),
            );
        }
        family(
            "rst_log_lines_dropped_total",
            "counter",
            "Log lines dropped because stderr was not taking them (a pipe nobody reads).",
            &mut std::iter::once((String::new(), rst_log::lines_dropped())),
        );
        self.bus.render_prometheus(&mut out);
        out
    }

    /// One log line's worth of the counters that matter to an operator.
    pub fn summary(&self) -> String {
        format!(
            "datagrams={} data={} calls_active={} calls_started={} malformed={} refused={} decode_errors={} write_errors={}",
            self.datagrams.load(Relaxed),
            self.messages_of("data"),
            self.calls_active.load(Relaxed),
            self.calls_started.load(Relaxed),
            self.malformed_total(),
            self.refused_total(),
            self.decode_errors.load(Relaxed),
            self.write_errors.load(Relaxed),
        )
    }
}
