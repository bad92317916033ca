//! Counters of everything the receiver does and refuses, shared by its tasks,
//! rendered in the Prometheus text format and summarised in the log.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use rst_proto::ParseError;

use crate::record::EndReason;

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
}

impl Refusal {
    const ALL: [Refusal; 4] = [
        Refusal::NotAllowed,
        Refusal::MaxCalls,
        Refusal::AfterEnd,
        Refusal::UnexpectedAck,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Refusal::NotAllowed => "not_allowed",
            Refusal::MaxCalls => "max_calls",
            Refusal::AfterEnd => "after_end",
            Refusal::UnexpectedAck => "unexpected_ack",
        }
    }
}

const COMMANDS: [&str; 4] = ["inv", "data", "bye", "ack"];

/// Every counter of the receiver. All updates are relaxed atomics: they are
/// statistics, not synchronisation.
#[derive(Debug, Default)]
pub struct Metrics {
    pub datagrams: AtomicU64,
    messages: [AtomicU64; 4],
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
    pub acks_sent: AtomicU64,
    pub send_errors: AtomicU64,
}

impl Metrics {
    pub fn message(&self, command: &rst_proto::Message<'_>) {
        let index = match command {
            rst_proto::Message::Inv(_) => 0,
            rst_proto::Message::Data(_) => 1,
            rst_proto::Message::Bye(_) => 2,
            rst_proto::Message::Ack(_) => 3,
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
        let mut metric = |name: &str, kind: &str, help: &str, rows: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in rows {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let plain = |counter: &AtomicU64| vec![(String::new(), counter.load(Relaxed))];
        let labelled = |label: &str, names: &[&str], counters: &[AtomicU64]| {
            names
                .iter()
                .zip(counters)
                .map(|(name, c)| (format!("{{{label}=\"{name}\"}}"), c.load(Relaxed)))
                .collect::<Vec<_>>()
        };
        metric(
            "rst_datagrams_total",
            "counter",
            "Datagrams received.",
            &plain(&self.datagrams),
        );
        metric(
            "rst_messages_total",
            "counter",
            "Well-formed messages received, by command.",
            &labelled("command", &COMMANDS, &self.messages),
        );
        metric(
            "rst_malformed_total",
            "counter",
            "Datagrams refused as malformed, by kind.",
            &labelled("kind", &ParseError::KINDS, &self.malformed),
        );
        let refusals: Vec<&str> = Refusal::ALL.iter().map(|r| r.name()).collect();
        metric(
            "rst_refused_total",
            "counter",
            "Well-formed messages not recorded, by reason.",
            &labelled("reason", &refusals, &self.refused),
        );
        metric(
            "rst_calls_started_total",
            "counter",
            "Calls started.",
            &plain(&self.calls_started),
        );
        let active = self.calls_active.load(Relaxed).max(0) as u64;
        metric(
            "rst_calls_active",
            "gauge",
            "Calls being recorded.",
            &[(String::new(), active)],
        );
        let reasons: Vec<&str> = EndReason::ALL.iter().map(|r| r.name()).collect();
        metric(
            "rst_calls_ended_total",
            "counter",
            "Calls ended, by reason.",
            &labelled("reason", &reasons, &self.calls_ended),
        );
        metric(
            "rst_audio_bytes_total",
            "counter",
            "Payload bytes received in DATA.",
            &plain(&self.audio_bytes),
        );
        metric(
            "rst_samples_written_total",
            "counter",
            "Mono samples written to WAV files.",
            &plain(&self.samples_written),
        );
        metric(
            "rst_decode_errors_total",
            "counter",
            "Payloads that could not be fully decoded.",
            &plain(&self.decode_errors),
        );
        metric(
            "rst_write_errors_total",
            "counter",
            "Failed writes of recording files.",
            &plain(&self.write_errors),
        );
        metric(
            "rst_recovered_files_total",
            "counter",
            "Unfinished files repaired at start-up.",
            &plain(&self.recovered_files),
        );
        metric(
            "rst_acks_sent_total",
            "counter",
            "ACKs sent.",
            &plain(&self.acks_sent),
        );
        metric(
            "rst_send_errors_total",
            "counter",
            "Failed sends of ACKs.",
            &plain(&self.send_errors),
        );
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
