//! Decodes arbitrary bytes as a sequence of captured frames, twice: through
//! the packet decoder alone ([`tap_daemon::packet::fuzz_frames`]: link layers,
//! IP fragments, TCP stream reassembly, with small limits so that the fuzzer
//! reaches them), and through the whole capture pipeline (SIP over UDP and
//! TCP, the call tracker, RTP matching and deduplication) with an output that
//! only checks what it is told. Nothing may panic.
//!
//! Input layout (the same as `fuzz_frames`): a link-type selector byte, then
//! records of a one-byte time step (milliseconds; 255 means a 10 s jump, so
//! that the pipeline's timers fire), a two-byte big-endian length and that
//! many frame bytes.
#![no_main]

use std::collections::HashSet;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rst_proto::Direction;
use tap_daemon::packet::{fuzz_frames, LinkType};
use tap_daemon::pipeline::{CallStart, Output, Pipeline, PipelineConfig};
use tap_daemon::sip::CallKey;

/// The link types `fuzz_frames` picks from, in its order.
const LINKS: [LinkType; 8] = [
    LinkType::ETHERNET,
    LinkType::RAW,
    LinkType::LINUX_SLL,
    LinkType::LINUX_SLL2,
    LinkType::NULL,
    LinkType::LOOP,
    LinkType::IPV4,
    LinkType::IPV6,
];

/// Checks the pipeline's promises to its output: RTP and ends only for calls
/// it started, and no call started twice while open.
#[derive(Default)]
struct Checked {
    open: HashSet<CallKey>,
}

impl Output for Checked {
    fn call_started(&mut self, call: &CallStart) {
        assert!(self.open.insert(call.key), "{call:?} started twice");
        assert!(!call.caller.is_empty() && !call.caller.contains(':'));
        assert!(!call.callee.is_empty() && !call.callee.contains(':'));
        let _ = call.extensions(&[], Some("fuzz"));
    }

    fn rtp(&mut self, key: CallKey, _direction: Direction, packet: &[u8], _at: Duration) {
        assert!(self.open.contains(&key), "RTP for {key} not started");
        assert!(packet.len() >= 12, "forwarded {packet:?} is not RTP");
    }

    fn call_ended(&mut self, key: CallKey) {
        assert!(self.open.remove(&key), "{key} ended but not started");
    }
}

fn pipeline(data: &[u8]) {
    let Some((&selector, mut rest)) = data.split_first() else {
        return;
    };
    let link = LINKS[usize::from(selector) % LINKS.len()];
    let mut config = PipelineConfig {
        // Odd bits of the selector turn on calls made of RTP alone.
        rtp_without_sip: selector & 0x80 != 0,
        max_tcp_flows: 4,
        max_sipless_calls: 4,
        ..PipelineConfig::default()
    };
    config.tracker.max_dialogs = 8;
    let mut pipeline = Pipeline::new(config);
    let mut out = Checked::default();
    let mut now = Duration::from_secs(1_000_000);
    while let [step, hi, lo, tail @ ..] = rest {
        now += match *step {
            255 => Duration::from_secs(10),
            step => Duration::from_millis(u64::from(step)),
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (frame, next) = tail.split_at(len);
        pipeline.frame(link, now, frame, &mut out);
        rest = next;
    }
    pipeline.finish(now, &mut out);
    assert!(out.open.is_empty(), "calls left open after finish");
    assert_eq!(pipeline.recording(), 0);
}

fuzz_target!(|data: &[u8]| {
    fuzz_frames(data);
    pipeline(data);
});
