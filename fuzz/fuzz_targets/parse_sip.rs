//! Parses arbitrary bytes as SIP, the way tap_daemon meets it: one message as
//! a UDP payload (`SipMessage::parse`, then `Sdp::parse` of its body), the
//! same bytes as a TCP stream cut into messages by `SipStream` after arriving
//! in two segments split at a point the fuzzer picks, and every message that
//! parses fed to a call `Tracker` with fixed addresses. Nothing may panic.
//!
//! Input layout: two bytes (big-endian) choosing the split point, modulo the
//! length of the rest; the rest is the SIP bytes.
#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tap_daemon::sip::message::MAX_MESSAGE_LEN;
use tap_daemon::sip::{
    frame, CallKey, Frame, Sdp, Side, SipMessage, SipStream, Tracker, TrackerConfig,
};

fuzz_target!(|data: &[u8]| {
    let [hi, lo, bytes @ ..] = data else {
        return;
    };
    let split = usize::from(u16::from_be_bytes([*hi, *lo])) % (bytes.len() + 1);

    // Bytes on their own, as SDP (a body without its message).
    if let Ok(sdp) = Sdp::parse(bytes) {
        check_sdp(&sdp);
    }

    // As one datagram.
    let datagram = SipMessage::parse(bytes).ok();
    if let Some(msg) = &datagram {
        check_message(msg);
    }

    // As a stream, whole and in two segments.
    let (whole, whole_errors) = stream(&[bytes]);
    let (split_messages, split_errors) = stream(&[&bytes[..split], &bytes[split..]]);
    if whole_errors == 0 && split_errors == 0 {
        // Without a framing error (after which the framer resynchronises
        // on what it has buffered) the cut cannot matter.
        assert_eq!(whole, split_messages, "split at {split}");
    }
    check_frame(bytes);

    // The tracker: the datagram, then what the stream framed.
    let mut tracker = Tracker::new(TrackerConfig {
        max_dialogs: 4,
        ..TrackerConfig::default()
    });
    let caller: SocketAddr = "192.0.2.1:5060".parse().unwrap();
    let callee: SocketAddr = "198.51.100.2:5060".parse().unwrap();
    let mut now = Duration::from_secs(1_000);
    let parsed: Vec<SipMessage<'_>> = split_messages
        .iter()
        .filter_map(|m| SipMessage::parse(m).ok())
        .collect();
    for msg in datagram.iter().chain(parsed.iter()) {
        check_message(msg);
        let (src, dst) = if msg.is_request() {
            (caller, callee)
        } else {
            (callee, caller)
        };
        let _ = tracker.handle(now, src, dst, msg);
        assert!(tracker.len() <= 4, "{} dialogs held", tracker.len());
        // RTP between the addresses the SDP gave.
        if let Some(sdp) = msg.sdp_body().and_then(|b| Sdp::parse(b).ok()) {
            for media in &sdp.media {
                if let Some(at) = sdp.endpoint(media) {
                    let _ = tracker.classify(now, at, caller);
                    let _ = tracker.classify(now, caller, at);
                }
            }
        }
        let keys: Vec<CallKey> = tracker.calls().map(|c| c.key).collect();
        for key in keys {
            let _ = tracker.media(key, Side::Caller);
            let _ = tracker.media(key, Side::Callee);
            tracker.touch(key, now);
        }
        now += Duration::from_millis(700);
        let _ = tracker.handle_timeout(now);
    }
    let _ = tracker.handle_timeout(now + Duration::from_secs(3600));
    let _ = tracker.handle_timeout(now + Duration::from_secs(7200));
    assert_eq!(tracker.calls().count(), 0, "calls left after every timeout");
});

/// Pushes `segments` into one stream; the messages framed and the errors.
fn stream(segments: &[&[u8]]) -> (Vec<Vec<u8>>, usize) {
    let mut stream = SipStream::new();
    let mut messages = Vec::new();
    let mut errors = 0;
    for segment in segments {
        stream.push(segment);
        while let Some(next) = stream.next_message() {
            match next {
                Ok(message) => {
                    assert!(message.len() <= MAX_MESSAGE_LEN);
                    messages.push(message.to_vec());
                }
                Err(error) => {
                    let _ = error.kind();
                    errors += 1;
                }
            }
        }
    }
    (messages, errors)
}

fn check_frame(bytes: &[u8]) {
    match frame(bytes) {
        Ok(Frame::Message { message, consumed }) => {
            assert!(consumed <= bytes.len());
            assert!(message.len() <= consumed);
            assert!(message.len() <= MAX_MESSAGE_LEN);
        }
        Ok(Frame::KeepAlive { consumed }) => assert!(consumed <= bytes.len()),
        Ok(Frame::Incomplete) | Err(_) => {}
    }
}

fn check_message(msg: &SipMessage<'_>) {
    let _ = (msg.method(), msg.status(), msg.is_request());
    for header in msg.headers() {
        let _ = header;
    }
    let _ = msg.header("Via");
    let _ = msg.header_all("Via").count();
    let _ = msg.header("Content-Length");
    let _ = (msg.from.label(), msg.to.label());
    if let Some(length) = msg.content_length {
        assert_eq!(msg.body.len(), length);
    }
    let key = CallKey::from_call_id(&msg.call_id);
    assert_eq!(key.as_str().len(), 36);
    assert_eq!(key, CallKey::from_call_id(&msg.call_id.clone()));
    let _ = key.uuid();
    if msg.has_sdp() {
        assert!(msg.sdp_body().is_some());
    }
    if let Some(body) = msg.sdp_body() {
        if let Ok(sdp) = Sdp::parse(body) {
            check_sdp(&sdp);
        }
    }
}

fn check_sdp(sdp: &Sdp<'_>) {
    if let Some(audio) = sdp.audio() {
        assert_ne!(audio.port, 0);
    }
    for media in &sdp.media {
        if let Some(at) = sdp.endpoint(media) {
            assert_eq!(at.port(), media.port);
        }
        let _ = sdp.direction_of(media);
        let _ = media.telephone_event();
        for &pt in &media.payload_types {
            let _ = media.encoding(pt);
            let _ = media.fmtp(pt);
        }
    }
}
