//! A call's live events turned into the WebSocket messages of one stream
//! format. Sans-IO: [`LiveEvent`]s in, [`Outgoing`] messages out.
//!
//! * `twilio`: Twilio Media Streams' messages, as Twilio documents them
//!   (<https://www.twilio.com/docs/voice/media-streams/websocket-messages>):
//!   `connected`, `start`, `media` (20 ms of µ-law 8 kHz, base64, per track),
//!   `dtmf`, `stop`; every message but `connected` has a `sequenceNumber`,
//!   counted as a string from "1", and the `streamSid`. A PCMU call's bytes go
//!   out as they came; other codecs are decoded, resampled and µ-law encoded.
//! * `raw`: one JSON text message with the call and the audio format
//!   (`{"event":"start",...}`), then binary frames of 20 ms of 16-bit
//!   little-endian PCM at the stream's rate (interleaved stereo, R left and W
//!   right, for both tracks), `{"event":"dtmf",...}` and `{"event":"stop"}`
//!   as text: what mod_audio_fork and mod_audio_stream consumers read.

use std::collections::BTreeMap;

use base64::Engine as _;
use rst_proto::Direction;
use serde_json::json;

use super::{Format, Tracks};
use crate::align::StereoAligner;
use crate::live::{AudioFrame, CallInfo, LiveEvent, Timing};
use crate::record::DtmfRecord;
use rst_codec::Resampler;

/// Milliseconds of audio per media message or binary frame.
pub const FRAME_MS: u32 = 20;
/// A direction whose audio comes later than this after where its previous
/// audio ended starts a new run of timestamps (a gap: loss, or silence the
/// sender did not send).
const GAP_MS: u64 = 60;

/// One WebSocket message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    Text(String),
    /// A text message that carries audio (a `twilio` `media` message).
    Media(String),
    Binary(Vec<u8>),
}

impl Outgoing {
    /// Whether the message carries audio (a frame, for the counters).
    pub fn is_audio(&self) -> bool {
        matches!(self, Outgoing::Media(_) | Outgoing::Binary(_))
    }
}

/// What a stream sends: its format, tracks and rate, and what its `start` says.
#[derive(Debug, Clone)]
pub struct StreamShape {
    pub format: Format,
    pub tracks: Tracks,
    /// Sample rate of `raw` audio (a `twilio` stream is always 8000).
    pub rate: u32,
    /// The profile's `params`, handed to the consumer.
    pub params: BTreeMap<String, String>,
}

impl StreamShape {
    /// The rate the audio goes out at.
    pub fn rate(&self) -> u32 {
        match self.format {
            Format::Twilio => 8000,
            Format::Raw => self.rate,
        }
    }
}

/// One direction's audio on its way out.
#[derive(Debug, Default)]
struct Lane {
    resampler: Option<Resampler>,
    /// Samples (raw) or µ-law bytes (twilio) not yet a whole frame.
    pcm: Vec<i16>,
    ulaw: Vec<u8>,
    /// Twilio `chunk` numbers, per track, from 1.
    chunks: u64,
    /// Where the lane's next sample belongs on the call's timeline, in ms
    /// times the rate (to stay exact): start of the current run and samples since.
    run_start_ms: u64,
    run_samples: u64,
    started: bool,
}

/// Where a stream's timestamps are, per direction: the start of its current
/// run and the samples sent in it (a reconnected stream goes on from there).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeline {
    lanes: [Option<(u64, u64)>; 2],
}

/// Encodes one stream of one call.
#[derive(Debug)]
pub struct Encoder {
    shape: StreamShape,
    stream_sid: String,
    call: CallInfo,
    sequence: u64,
    lanes: [Lane; 2],
    stereo: Option<StereoAligner>,
    stereo_out: Vec<i16>,
    scratch: Vec<i16>,
}

impl Encoder {
    pub fn new(shape: StreamShape, stream_sid: String, call: CallInfo) -> Encoder {
        let stereo = (shape.format == Format::Raw && shape.tracks == Tracks::Both)
            .then(|| StereoAligner::live(shape.rate));
        Encoder {
            shape,
            stream_sid,
            call,
            sequence: 0,
            lanes: Default::default(),
            stereo,
            stereo_out: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// The opening messages of a connection (each connection starts afresh:
    /// a reconnected stream says `connected` and `start` again).
    pub fn start(&mut self, out: &mut Vec<Outgoing>) {
        let call = self.call.clone();
        let mut parameters = serde_json::Map::new();
        for (key, value) in &self.shape.params {
            parameters.insert(key.clone(), value.clone().into());
        }
        let party = |value: &Option<String>| value.clone().unwrap_or_default();
        match self.shape.format {
            Format::Twilio => {
                parameters.insert("caller".into(), party(&call.caller).into());
                parameters.insert("callee".into(), party(&call.callee).into());
                parameters.insert("sipCallId".into(), party(&call.call_id).into());
                out.push(text(&json!({
                    "event": "connected",
                    "protocol": "Call",
                    "version": "1.0.0",
                })));
                let sequence = self.next_sequence();
                out.push(text(&json!({
                    "event": "start",
                    "sequenceNumber": sequence,
                    "start": {
                        "accountSid": "",
                        "streamSid": self.stream_sid,
                        "callSid": call.uuid,
                        "tracks": self.shape.tracks.twilio_names(),
                        "customParameters": parameters,
                        "mediaFormat": {
                            "encoding": "audio/x-mulaw",
                            "sampleRate": 8000,
                            "channels": 1,
                        },
                    },
                    "streamSid": self.stream_sid,
                })));
            }
            Format::Raw => out.push(text(&json!({
                "event": "start",
                "streamSid": self.stream_sid,
                "uuid": call.uuid,
                "caller": call.caller,
                "callee": call.callee,
                "call_id": call.call_id,
                "sender": call.sender,
                "mode": call.mode,
                "tracks": self.shape.tracks.name(),
                "params": parameters,
                "format": {
                    "encoding": "audio/l16",
                    "byteOrder": "little-endian",
                    "sampleRate": self.shape.rate,
                    "channels": self.shape.tracks.channels(),
                    "frameMs": FRAME_MS,
                },
            }))),
        }
    }

    /// Where this encoder's timestamps are.
    pub fn timeline(&self) -> Timeline {
        Timeline {
            lanes: [0, 1].map(|i| {
                let lane = &self.lanes[i];
                lane.started
                    .then_some((lane.run_start_ms, lane.run_samples))
            }),
        }
    }

    /// Goes on from another encoder's timestamps (a reconnection): audio
    /// that follows on without a gap keeps counting from there.
    pub fn continue_timeline(&mut self, timeline: Timeline) {
        for (lane, at) in self.lanes.iter_mut().zip(timeline.lanes) {
            if let Some((run_start_ms, run_samples)) = at {
                lane.started = true;
                lane.run_start_ms = run_start_ms;
                lane.run_samples = run_samples;
            }
        }
    }

    /// Audio held for a frame not yet whole, in ms summed over the tracks
    /// (what a broken connection loses with its encoder).
    pub fn held_ms(&self) -> u64 {
        let rate = u64::from(self.shape.rate());
        let lanes: usize = self.lanes.iter().map(|l| l.ulaw.len() + l.pcm.len()).sum();
        (lanes + self.stereo_out.len()) as u64 * 1000 / rate
    }

    /// Encodes one event; [`LiveEvent::End`] flushes and stops.
    pub fn event(&mut self, event: &LiveEvent, out: &mut Vec<Outgoing>) {
        match event {
            LiveEvent::Audio(frame) => self.audio(frame, out),
            LiveEvent::Dtmf(dtmf) => self.dtmf(dtmf, out),
            LiveEvent::Mark { name, cleared } => self.mark(name, *cleared, out),
            LiveEvent::End => self.stop(out),
        }
    }

    fn audio(&mut self, frame: &AudioFrame, out: &mut Vec<Outgoing>) {
        if !self.shape.tracks.has(frame.direction) {
            return;
        }
        let rate = self.shape.rate();
        let lane = &mut self.lanes[frame.direction as usize];
        // Twilio timestamps: a gap starts a new run, flushing the partial frame.
        let at_ms = frame.timing.at().as_millis() as u64;
        let held = (lane.ulaw.len() + lane.pcm.len()) as u64;
        let end_ms = lane.run_start_ms + (lane.run_samples + held) * 1000 / u64::from(rate);
        if !lane.started || at_ms > end_ms + GAP_MS {
            if lane.started && self.shape.format == Format::Twilio {
                self.flush_twilio(frame.direction, true, out);
            }
            let lane = &mut self.lanes[frame.direction as usize];
            lane.started = true;
            lane.run_start_ms = at_ms;
            lane.run_samples = 0;
        }
        let lane = &mut self.lanes[frame.direction as usize];
        let passthrough = self.shape.format == Format::Twilio && frame.rate == 8000;
        match (&frame.ulaw, passthrough) {
            (Some(ulaw), true) => lane.ulaw.extend_from_slice(ulaw),
            _ => {
                if lane.resampler.as_ref().map(Resampler::from_rate) != Some(frame.rate) {
                    lane.resampler = Some(Resampler::new(frame.rate, rate));
                }
                self.scratch.clear();
                let resampler = lane.resampler.as_mut().expect("set above");
                resampler.push(&frame.samples, &mut self.scratch);
                match self.shape.format {
                    Format::Twilio => lane
                        .ulaw
                        .extend(self.scratch.iter().map(|&s| rst_codec::linear_to_ulaw(s))),
                    Format::Raw => {
                        if let Some(stereo) = &mut self.stereo {
                            let timing = frame.timing;
                            match timing {
                                Timing::Arrival(at) => stereo.push(
                                    frame.direction,
                                    &self.scratch,
                                    rate,
                                    at,
                                    &mut self.stereo_out,
                                ),
                                Timing::Media(at) => stereo.place(
                                    frame.direction,
                                    &self.scratch,
                                    rate,
                                    at,
                                    &mut self.stereo_out,
                                ),
                            }
                        } else {
                            lane.pcm.extend_from_slice(&self.scratch);
                        }
                    }
                }
            }
        }
        match self.shape.format {
            Format::Twilio => self.flush_twilio(frame.direction, false, out),
            Format::Raw => self.flush_raw(frame.direction, false, out),
        }
    }

    fn dtmf(&mut self, dtmf: &DtmfRecord, out: &mut Vec<Outgoing>) {
        let direction = if dtmf.direction == Direction::Write.as_str() {
            Direction::Write
        } else {
            Direction::Read
        };
        if !self.shape.tracks.has(direction) {
            return;
        }
        match self.shape.format {
            Format::Twilio => {
                let sequence = self.next_sequence();
                out.push(text(&json!({
                    "event": "dtmf",
                    "streamSid": self.stream_sid,
                    "sequenceNumber": sequence,
                    "dtmf": {
                        "track": format!("{}_track", Tracks::twilio_name(direction)),
                        "digit": dtmf.digit.to_string(),
                    },
                })));
            }
            Format::Raw => out.push(text(&json!({
                "event": "dtmf",
                "track": Tracks::twilio_name(direction),
                "digit": dtmf.digit.to_string(),
                "offset": dtmf.offset,
                "duration_ms": dtmf.duration_ms,
            }))),
        }
    }

    /// A mark the consumer sent came back: played, or cleared. (Which marks
    /// are this consumer's own is the shell's to know.)
    fn mark(&mut self, name: &str, cleared: bool, out: &mut Vec<Outgoing>) {
        match self.shape.format {
            // As Twilio sends it for both: a played mark and a cleared one.
            Format::Twilio => {
                let sequence = self.next_sequence();
                out.push(text(&json!({
                    "event": "mark",
                    "sequenceNumber": sequence,
                    "streamSid": self.stream_sid,
                    "mark": {"name": name},
                })));
            }
            Format::Raw => out.push(text(&json!({
                "event": "mark",
                "name": name,
                "cleared": cleared,
            }))),
        }
    }

    /// Flushes what is held (a last, short frame) and says `stop`.
    pub fn stop(&mut self, out: &mut Vec<Outgoing>) {
        for direction in Direction::BOTH {
            if !self.shape.tracks.has(direction) {
                continue;
            }
            let lane = &mut self.lanes[direction as usize];
            if let Some(resampler) = &mut lane.resampler {
                self.scratch.clear();
                resampler.finish(&mut self.scratch);
                match self.shape.format {
                    Format::Twilio => lane
                        .ulaw
                        .extend(self.scratch.iter().map(|&s| rst_codec::linear_to_ulaw(s))),
                    Format::Raw if self.stereo.is_none() => {
                        lane.pcm.extend_from_slice(&self.scratch)
                    }
                    // Stereo: the aligner's tail is what is flushed below.
                    Format::Raw => {}
                }
            }
            match self.shape.format {
                Format::Twilio => self.flush_twilio(direction, true, out),
                Format::Raw => self.flush_raw(direction, true, out),
            }
        }
        if let Some(stereo) = &mut self.stereo {
            stereo.finish(&mut self.stereo_out);
            self.flush_raw(Direction::Read, true, out);
        }
        match self.shape.format {
            Format::Twilio => {
                let sequence = self.next_sequence();
                out.push(text(&json!({
                    "event": "stop",
                    "sequenceNumber": sequence,
                    "streamSid": self.stream_sid,
                    "stop": {"accountSid": "", "callSid": self.call.uuid},
                })));
            }
            Format::Raw => out.push(text(&json!({"event": "stop", "uuid": self.call.uuid}))),
        }
    }

    /// Whole 20 ms µ-law frames of `direction` as `media` messages (and, when
    /// `all`, what is left, shorter).
    fn flush_twilio(&mut self, direction: Direction, all: bool, out: &mut Vec<Outgoing>) {
        const FRAME: usize = 8 * FRAME_MS as usize;
        let mut taken = 0;
        loop {
            let lane = &self.lanes[direction as usize];
            let left = lane.ulaw.len() - taken;
            if left == 0 || (left < FRAME && !all) {
                break;
            }
            let len = left.min(FRAME);
            let sequence = self.next_sequence();
            let lane = &mut self.lanes[direction as usize];
            lane.chunks += 1;
            let timestamp = lane.run_start_ms + lane.run_samples / 8;
            let payload =
                base64::engine::general_purpose::STANDARD.encode(&lane.ulaw[taken..taken + len]);
            lane.run_samples += len as u64;
            // Written by hand, not through serde_json's value tree: this is
            // the message of every 20 ms of every stream, and every field is
            // a number, a track name, base64 or the stream id (all JSON-safe).
            out.push(Outgoing::Media(format!(
                r#"{{"event":"media","sequenceNumber":"{sequence}","media":{{"track":"{track}","chunk":"{chunk}","timestamp":"{timestamp}","payload":"{payload}"}},"streamSid":"{sid}"}}"#,
                track = Tracks::twilio_name(direction),
                chunk = lane.chunks,
                sid = self.stream_sid,
            )));
            taken += len;
        }
        self.lanes[direction as usize].ulaw.drain(..taken);
    }

    /// Whole 20 ms frames as binary messages: the stereo frames when both
    /// tracks go out, else `direction`'s.
    fn flush_raw(&mut self, direction: Direction, all: bool, out: &mut Vec<Outgoing>) {
        let channels = self.shape.tracks.channels();
        let frame = (self.shape.rate * FRAME_MS / 1000) as usize * channels;
        let samples = match &mut self.stereo {
            Some(_) => &mut self.stereo_out,
            None => &mut self.lanes[direction as usize].pcm,
        };
        let mut taken = 0;
        while samples.len() - taken >= frame || (all && samples.len() > taken) {
            let len = (samples.len() - taken).min(frame);
            let mut bytes = Vec::with_capacity(len * 2);
            for sample in &samples[taken..taken + len] {
                bytes.extend_from_slice(&sample.to_le_bytes());
            }
            out.push(Outgoing::Binary(bytes));
            taken += len;
        }
        samples.drain(..taken);
        let lane = &mut self.lanes[direction as usize];
        lane.run_samples += (taken / channels) as u64;
    }

    fn next_sequence(&mut self) -> String {
        self.sequence += 1;
        self.sequence.to_string()
    }
}

fn text(value: &serde_json::Value) -> Outgoing {
    Outgoing::Text(value.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn call() -> CallInfo {
        CallInfo {
            uuid: "u1".into(),
            caller: Some("1001".into()),
            callee: Some("1002".into()),
            call_id: None,
            tap: None,
            sender: "127.0.0.1:5000".into(),
            mode: "data",
            start: time::OffsetDateTime::UNIX_EPOCH,
            streams: Vec::new(),
            listeners: 0,
            duration: 0.0,
        }
    }

    fn encoder(format: Format, tracks: Tracks, rate: u32) -> Encoder {
        let shape = StreamShape {
            format,
            tracks,
            rate,
            params: BTreeMap::new(),
        };
        Encoder::new(shape, "MZ0".into(), call())
    }

    fn ulaw_frame(direction: Direction, at_ms: u64, byte: u8) -> LiveEvent {
        LiveEvent::Audio(Arc::new(AudioFrame {
            direction,
            timing: Timing::Arrival(Duration::from_millis(at_ms)),
            rate: 8000,
            samples: vec![rst_codec::ulaw_to_linear(byte); 160],
            ulaw: Some(vec![byte; 160]),
        }))
    }

    fn json(message: &Outgoing) -> serde_json::Value {
        match message {
            Outgoing::Text(text) | Outgoing::Media(text) => serde_json::from_str(text).unwrap(),
            Outgoing::Binary(_) => panic!("binary"),
        }
    }

    #[test]
    fn twilio_media_carries_the_bytes_and_a_gap_shows_in_the_timestamps() {
        let mut encoder = encoder(Format::Twilio, Tracks::Inbound, 8000);
        let mut out = Vec::new();
        encoder.start(&mut out);
        for (at, byte) in [(0, 0x11), (20, 0x22), (300, 0x33)] {
            encoder.event(&ulaw_frame(Direction::Read, at, byte), &mut out);
        }
        // W is not a track of this stream.
        encoder.event(&ulaw_frame(Direction::Write, 0, 0x44), &mut out);
        encoder.event(&LiveEvent::End, &mut out);
        let messages: Vec<_> = out.iter().map(json).collect();
        let media: Vec<_> = messages.iter().filter(|m| m["event"] == "media").collect();
        assert_eq!(media.len(), 3);
        for (m, (chunk, timestamp, byte)) in
            media
                .iter()
                .zip([("1", "0", 0x11u8), ("2", "20", 0x22), ("3", "300", 0x33)])
        {
            assert_eq!(m["media"]["chunk"], chunk);
            assert_eq!(m["media"]["timestamp"], timestamp);
            let payload = base64::engine::general_purpose::STANDARD
                .decode(m["media"]["payload"].as_str().unwrap())
                .unwrap();
            assert_eq!(payload, vec![byte; 160]);
        }
        let sequence: Vec<_> = messages[1..]
            .iter()
            .map(|m| m["sequenceNumber"].clone())
            .collect();
        assert_eq!(
            sequence,
            ["1", "2", "3", "4", "5"].map(serde_json::Value::from)
        );
        assert_eq!(messages.last().unwrap()["event"], "stop");
        assert!(out
            .iter()
            .filter(|m| m.is_audio())
            .all(|m| matches!(m, Outgoing::Media(_))));
    }

    #[test]
    fn a_reconnected_encoder_goes_on_with_the_timestamps() {
        let mut first = encoder(Format::Twilio, Tracks::Inbound, 8000);
        let mut out = Vec::new();
        for k in 0..5 {
            first.event(&ulaw_frame(Direction::Read, 20 * k, 0x11), &mut out);
        }
        let mut second = encoder(Format::Twilio, Tracks::Inbound, 8000);
        second.continue_timeline(first.timeline());
        out.clear();
        // Arrived a little late (jitter): still where it belongs, 100 ms.
        second.event(&ulaw_frame(Direction::Read, 107, 0x22), &mut out);
        let media: Vec<_> = out
            .iter()
            .map(json)
            .filter(|m| m["event"] == "media")
            .collect();
        assert_eq!(media[0]["media"]["timestamp"], "100");
        assert_eq!(
            media[0]["media"]["chunk"], "1",
            "chunks count per connection"
        );
    }

    #[test]
    fn raw_frames_are_20_ms_at_the_stream_rate_and_the_tail_is_flushed() {
        let mut encoder = encoder(Format::Raw, Tracks::Outbound, 16000);
        let mut out = Vec::new();
        encoder.start(&mut out);
        // 30 ms frames at 8 kHz: one and a half 20 ms frames each.
        for k in 0..3 {
            let frame = LiveEvent::Audio(Arc::new(AudioFrame {
                direction: Direction::Write,
                timing: Timing::Arrival(Duration::from_millis(30 * k)),
                rate: 8000,
                samples: vec![1000; 240],
                ulaw: None,
            }));
            encoder.event(&frame, &mut out);
        }
        encoder.event(&LiveEvent::End, &mut out);
        let binary: Vec<usize> = out
            .iter()
            .filter_map(|m| match m {
                Outgoing::Binary(bytes) => Some(bytes.len()),
                _ => None,
            })
            .collect();
        assert_eq!(
            binary.iter().sum::<usize>(),
            90 * 16 * 2,
            "90 ms at 16 kHz, every sample"
        );
        assert!(
            binary[..binary.len() - 1].iter().all(|&len| len == 640),
            "{binary:?}"
        );
        assert_eq!(json(&out[0])["format"]["sampleRate"], 16000);
        assert_eq!(json(out.last().unwrap())["event"], "stop");
    }
}
