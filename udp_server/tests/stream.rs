//! Live streams end to end: a real receiver on 127.0.0.1 dials a real
//! WebSocket consumer (tokio-tungstenite, in this test) for each call, and
//! the consumer checks what it gets against Twilio's published message
//! reference (<https://www.twilio.com/docs/voice/media-streams/websocket-messages>)
//! and, sample for sample, against what the sender sent.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::consumer::{Behaviour, Connection, Consumer};
use common::*;
use rst_proto::{Direction, Extensions};
use udp_server::stream::{Format, ProfileSpec, Tracks};
use udp_server::Settings;

fn profile(name: &str, url: String, format: Format, tracks: Tracks) -> ProfileSpec {
    ProfileSpec {
        name: name.into(),
        format: Some(format),
        tracks: Some(tracks),
        ..ProfileSpec::simple(url)
    }
}

fn streaming(profiles: Vec<ProfileSpec>) -> Settings {
    Settings {
        stream: profiles,
        ..Settings::default()
    }
}

/// Sends a DATA call: an INV with a Call-ID, `frames` 20 ms frames per
/// direction (paced in real time when `paced`), then BYE.
fn send_call(receiver: &Receiver, id: &str, extensions: &str, frames: &[Frame], paced: bool) {
    let mut sender = Sender::new(receiver.addr);
    sender.inv_with(
        id,
        "+15551230001",
        "+15559870002",
        Extensions::parse(extensions).unwrap(),
    );
    let start = Instant::now();
    for (i, (direction, pt, payload)) in frames.iter().enumerate() {
        if paced {
            // Both directions' frame k go out at k * 20 ms, as a call's would.
            let due = start + Duration::from_millis(20 * (i as u64 / 2));
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        sender.data(id, *direction, *pt, payload);
    }
    sender.bye(id);
}

/// One DATA frame to send: direction, payload type, payload.
type Frame = (Direction, u8, Vec<u8>);

/// A tone as 20 ms frames of `encode`d bytes, R and W interleaved.
fn g711_frames(seconds: f64, encode: fn(i16) -> u8, pt: u8) -> (Vec<Frame>, Vec<u8>, Vec<u8>) {
    let r: Vec<u8> = tone(1000.0, 9000.0, 8000, seconds)
        .into_iter()
        .map(encode)
        .collect();
    let w: Vec<u8> = tone(400.0, 6000.0, 8000, seconds)
        .into_iter()
        .map(encode)
        .collect();
    let mut frames = Vec::new();
    for (a, b) in r.chunks(160).zip(w.chunks(160)) {
        frames.push((Direction::Read, pt, a.to_vec()));
        frames.push((Direction::Write, pt, b.to_vec()));
    }
    (frames, r, w)
}

/// Checks one `twilio` connection against Twilio's reference and returns
/// each track's payload bytes and first media timestamp.
fn check_twilio(connection: &Connection, uuid: &str) -> BTreeMap<String, (Vec<u8>, u64)> {
    let texts = &connection.texts;
    assert!(
        texts.len() >= 3,
        "connected, start, stop at least: {texts:?}"
    );
    assert_eq!(
        texts[0],
        serde_json::json!({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    );
    let start = &texts[1];
    assert_eq!(start["event"], "start");
    let sid = start["streamSid"].as_str().unwrap();
    assert!(sid.starts_with("MZ") && sid.len() == 34, "{sid}");
    assert_eq!(start["start"]["streamSid"], sid);
    assert_eq!(start["start"]["callSid"], uuid);
    assert_eq!(
        start["start"]["mediaFormat"],
        serde_json::json!({"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1})
    );
    let last = texts.last().unwrap();
    assert_eq!(last["event"], "stop", "stop comes last");
    assert_eq!(last["stop"]["callSid"], uuid);
    let mut tracks: BTreeMap<String, (Vec<u8>, u64)> = BTreeMap::new();
    let mut chunks: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_timestamp: BTreeMap<String, u64> = BTreeMap::new();
    for (i, message) in texts.iter().enumerate().skip(1) {
        // Every message but `connected` counts from "1", as a string.
        assert_eq!(message["sequenceNumber"], i.to_string(), "{message}");
        assert_eq!(message["streamSid"], sid);
        if message["event"] != "media" {
            continue;
        }
        let media = &message["media"];
        let track = media["track"].as_str().unwrap().to_owned();
        assert!(track == "inbound" || track == "outbound", "{track}");
        let chunk: u64 = media["chunk"].as_str().unwrap().parse().unwrap();
        let expected_chunk = chunks.entry(track.clone()).or_insert(0);
        *expected_chunk += 1;
        assert_eq!(chunk, *expected_chunk, "chunks count from 1 per track");
        let timestamp: u64 = media["timestamp"].as_str().unwrap().parse().unwrap();
        if let Some(previous) = last_timestamp.insert(track.clone(), timestamp) {
            assert!(
                timestamp >= previous + 20,
                "timestamps go forward by 20 ms: {previous} then {timestamp}"
            );
        }
        let payload = base64::engine::general_purpose::STANDARD
            .decode(media["payload"].as_str().unwrap())
            .unwrap();
        let entry = tracks.entry(track).or_insert((Vec::new(), timestamp));
        entry.0.extend_from_slice(&payload);
    }
    tracks
}

fn stream_record(record: &serde_json::Value, profile: &str) -> serde_json::Value {
    record["streams"]
        .as_array()
        .unwrap_or_else(|| panic!("no streams in {record}"))
        .iter()
        .find(|s| s["profile"] == profile)
        .unwrap_or_else(|| panic!("no stream {profile} in {record}"))
        .clone()
}

#[test]
fn a_pcmu_call_reaches_a_twilio_bot_byte_for_byte_with_its_headers_and_parameters() {
    std::env::set_var("RST_TEST_BOT_TOKEN", "s3cr3t-b0t");
    let consumer = Consumer::start(Behaviour::default());
    let mut spec = profile("bot", consumer.url("ws"), Format::Twilio, Tracks::Both);
    spec.headers.insert(
        "Authorization".into(),
        "Bearer ${RST_TEST_BOT_TOKEN}".into(),
    );
    spec.params.insert("tenant".into(), "acme".into());
    let receiver = Receiver::with(streaming(vec![spec]));
    let id = uuid(1);
    let (frames, r, w) = g711_frames(1.0, ulaw, 0);
    send_call(
        &receiver,
        &id,
        "call-id=a84b4c76e66710%3A5060",
        &frames,
        false,
    );

    let connections = consumer.wait_ended(1);
    assert_eq!(connections.len(), 1);
    let connection = &connections[0];
    assert_eq!(connection.path, "/media");
    assert_eq!(connection.headers["authorization"], "Bearer s3cr3t-b0t");
    let start = &connection.texts[1]["start"];
    assert_eq!(start["tracks"], serde_json::json!(["inbound", "outbound"]));
    assert_eq!(
        start["customParameters"],
        serde_json::json!({
            "tenant": "acme",
            "caller": "+15551230001",
            "callee": "+15559870002",
            "sipCallId": "a84b4c76e66710:5060",
        })
    );
    let tracks = check_twilio(connection, &id);
    // µ-law in, µ-law out: the sender's very bytes.
    assert_eq!(tracks["inbound"].0, r, "inbound bytes");
    assert_eq!(tracks["outbound"].0, w, "outbound bytes");
    let media = connection
        .texts
        .iter()
        .filter(|m| m["event"] == "media")
        .count();
    assert_eq!(media, 100, "50 frames of 20 ms per track");

    let record = &receiver.wait_records(1)[0];
    let stream = stream_record(record, "bot");
    assert_eq!(stream["frames_sent"], 100);
    assert_eq!(stream["dropped_ms"], 0);
    assert_eq!(stream["connects"], 1);
    assert_eq!(stream["complete"], true);
    assert_eq!(receiver.counter("rst_stream_frames_sent_total"), 100);
}

#[test]
fn a_pcma_call_is_transcoded_to_mulaw_and_an_l16_16k_call_resampled() {
    let consumer = Consumer::start(Behaviour::default());
    let receiver = Receiver::with(streaming(vec![profile(
        "asr",
        consumer.url("ws"),
        Format::Twilio,
        Tracks::Inbound,
    )]));
    // A-law: decoded, then µ-law encoded, at the same rate.
    let (frames, r, _) = g711_frames(0.5, alaw, 8);
    send_call(&receiver, &uuid(2), "", &frames, false);
    // L16 at 16 kHz: 1 kHz on R, resampled to 8 kHz.
    let l16 = tone(1000.0, 8000.0, 16000, 1.0);
    let frames: Vec<_> = l16
        .chunks(320)
        .map(|chunk| {
            let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
            (Direction::Read, 10, bytes)
        })
        .collect();
    send_call(&receiver, &uuid(3), "rate=16000", &frames, false);

    let connections = consumer.wait_ended(2);
    let by_call = |id: &str| {
        connections
            .iter()
            .find(|c| c.texts.get(1).is_some_and(|s| s["start"]["callSid"] == id))
            .unwrap_or_else(|| panic!("no stream of {id}"))
    };
    let pcma = check_twilio(by_call(&uuid(2)), &uuid(2));
    assert_eq!(
        by_call(&uuid(2)).texts[1]["start"]["tracks"],
        serde_json::json!(["inbound"])
    );
    assert!(!pcma.contains_key("outbound"), "inbound only");
    let expected: Vec<u8> = r
        .iter()
        .map(|&a| ulaw(rst_codec::alaw_to_linear(a)))
        .collect();
    assert_eq!(
        pcma["inbound"].0, expected,
        "A-law decoded and µ-law encoded"
    );

    let l16 = check_twilio(by_call(&uuid(3)), &uuid(3));
    let decoded: Vec<i16> = l16["inbound"]
        .0
        .iter()
        .map(|&u| rst_codec::ulaw_to_linear(u))
        .collect();
    assert_eq!(decoded.len(), 8000, "one second at 8 kHz");
    let share = tone_share(1000.0, 8000, &decoded[1000..7000]);
    assert!(share > 0.9, "the 1 kHz tone holds {share:.3} of the energy");
    receiver.wait_records(2);
}

#[test]
fn raw_at_16k_stereo_carries_both_directions_sample_for_sample() {
    let consumer = Consumer::start(Behaviour::default());
    let mut spec = profile("fork", consumer.url("ws"), Format::Raw, Tracks::Both);
    spec.rate = Some(16000);
    let receiver = Receiver::with(streaming(vec![spec]));
    let r = tone(1000.0, 8000.0, 16000, 1.0);
    let w = tone(500.0, 5000.0, 16000, 1.0);
    let bytes = |samples: &[i16]| {
        samples
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect::<Vec<u8>>()
    };
    let frames: Vec<_> = r
        .chunks(320)
        .zip(w.chunks(320))
        .flat_map(|(a, b)| {
            [
                (Direction::Read, 10, bytes(a)),
                (Direction::Write, 10, bytes(b)),
            ]
        })
        .collect();
    let id = uuid(4);
    send_call(&receiver, &id, "rate=16000", &frames, false);

    let connection = &consumer.wait_ended(1)[0];
    let start = &connection.texts[0];
    assert_eq!(start["event"], "start");
    assert_eq!(start["uuid"], id.as_str());
    assert_eq!(
        start["format"],
        serde_json::json!({"encoding": "audio/l16", "byteOrder": "little-endian", "sampleRate": 16000, "channels": 2, "frameMs": 20})
    );
    assert_eq!(connection.texts.last().unwrap()["event"], "stop");
    for frame in &connection.binaries[..connection.binaries.len() - 1] {
        assert_eq!(frame.len(), 320 * 2 * 2, "20 ms of 16 kHz stereo");
    }
    let samples: Vec<i16> = connection
        .binaries
        .concat()
        .chunks(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
    let right: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();
    assert!(left.len() >= r.len(), "{} samples", left.len());
    assert_eq!(&left[..r.len()], &r[..], "left is R");
    assert_eq!(&right[..w.len()], &w[..], "right is W");
    receiver.wait_records(1);
}

#[test]
fn a_consumer_away_for_5_s_gets_the_buffered_audio_when_it_comes_back() {
    let consumer = Consumer::start(Behaviour {
        close_after_media: Some(50),
        away: Duration::from_secs(5),
        ..Behaviour::default()
    });
    let receiver = Receiver::with(streaming(vec![profile(
        "bot",
        consumer.url("ws"),
        Format::Twilio,
        Tracks::Inbound,
    )]));
    let id = uuid(5);
    // 12 s of call in real time: the consumer leaves after 1 s, for 5 s.
    let (frames, r, _) = g711_frames(12.0, ulaw, 0);
    send_call(&receiver, &id, "", &frames, true);

    let record = &receiver.wait_records(1)[0];
    let connections = consumer.wait_ended(2);
    assert_eq!(connections.len(), 2, "one reconnection");
    let first = check_twilio_open(&connections[0], &id);
    let second = check_twilio(&connections[1], &id);
    let (first_bytes, _) = &first["inbound"];
    let (second_bytes, second_start) = &second["inbound"];
    // The second connection starts where the first left off: the audio of
    // the outage was kept and comes first, its timestamps going on from the
    // first connection's. (DATA carries no timestamps: a sender stalled for
    // more than 60 ms, on a loaded machine, shifts them by its stall.)
    let expected = first_bytes.len() as u64 / 8;
    assert!(
        (expected..expected + 1000).contains(second_start),
        "timestamps say where the audio belongs: {second_start} ms, {expected} expected"
    );
    let mut all = first_bytes.clone();
    all.extend_from_slice(second_bytes);
    assert_eq!(all, r, "every byte arrived, in order");
    let stream = stream_record(record, "bot");
    assert_eq!(stream["dropped_ms"], 0);
    assert_eq!(stream["connects"], 2);
    assert_eq!(stream["reconnects"], 1);
    // The last thing that went wrong: the consumer's refusals while it was away.
    assert!(
        stream["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{stream}"
    );
    assert!(
        receiver.counter("rst_stream_connect_failures_total") >= 2,
        "the close and a refusal"
    );
}

/// A connection the consumer closed mid-call: no `stop` at its end.
fn check_twilio_open(connection: &Connection, uuid: &str) -> BTreeMap<String, (Vec<u8>, u64)> {
    let mut closed = connection.clone();
    let sequence = closed.texts.len();
    closed.texts.push(serde_json::json!({
        "event": "stop",
        "sequenceNumber": sequence.to_string(),
        "streamSid": closed.texts[1]["streamSid"],
        "stop": {"callSid": uuid},
    }));
    check_twilio(&closed, uuid)
}

#[test]
fn a_consumer_that_never_reads_slows_neither_the_recording_nor_another_consumer() {
    let stuck = Consumer::start(Behaviour {
        never_read: true,
        ..Behaviour::default()
    });
    let good = Consumer::start(Behaviour::default());
    let mut stuck_spec = profile("stuck", stuck.url("ws"), Format::Raw, Tracks::Both);
    stuck_spec.rate = Some(48000);
    stuck_spec.buffer_seconds = Some(1);
    let receiver = Receiver::with(streaming(vec![
        stuck_spec,
        profile("good", good.url("ws"), Format::Twilio, Tracks::Both),
    ]));
    let id = uuid(6);
    let (frames, r, w) = g711_frames(6.0, ulaw, 0);
    send_call(&receiver, &id, "", &frames, true);

    // The good consumer has everything.
    let tracks = check_twilio(&good.wait_ended(1)[0], &id);
    assert_eq!(tracks["inbound"].0, r);
    assert_eq!(tracks["outbound"].0, w);
    // The recording is whole.
    let record = &receiver.wait_records(1)[0];
    let (_, samples) = read_wav(&path_of(record, "/directions/R/wav/0"));
    assert_eq!(samples.len(), r.len());
    // The stuck one lost audio, and says how much.
    let stuck_stream = stream_record(record, "stuck");
    let dropped = stuck_stream["dropped_ms"].as_u64().unwrap();
    assert!(dropped > 0, "{stuck_stream}");
    assert!(receiver.counter("rst_stream_dropped_ms_total") >= dropped);
    assert_eq!(stream_record(record, "good")["dropped_ms"], 0);
}

#[test]
fn a_call_asks_for_its_stream_by_name() {
    let consumer = Consumer::start(Behaviour::default());
    let mut spec = profile(
        "on-demand",
        consumer.url("ws"),
        Format::Twilio,
        Tracks::Inbound,
    );
    spec.calls = Some(udp_server::stream::CallsSpec::Word("asked".into()));
    let receiver = Receiver::with(streaming(vec![spec]));
    let (frames, _, _) = g711_frames(0.2, ulaw, 0);
    send_call(&receiver, &uuid(7), "", &frames, false);
    send_call(&receiver, &uuid(8), "stream=on-demand", &frames, false);
    send_call(&receiver, &uuid(9), "stream=nobody", &frames, false);
    let records = receiver.wait_records(3);
    let connections = consumer.wait_ended(1);
    assert_eq!(connections.len(), 1, "only the call that asked");
    assert_eq!(
        connections[0].texts[1]["start"]["callSid"],
        uuid(8).as_str()
    );
    let streamed: Vec<_> = records
        .iter()
        .filter(|r| r.get("streams").is_some())
        .collect();
    assert_eq!(streamed.len(), 1);
    assert_eq!(streamed[0]["uuid"], uuid(8).as_str());
}

#[test]
fn a_consumer_that_is_down_costs_the_audio_it_missed_counted_in_the_record() {
    // Nobody listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut spec = profile(
        "down",
        format!("ws://127.0.0.1:{port}/media"),
        Format::Twilio,
        Tracks::Inbound,
    );
    spec.buffer_seconds = Some(1);
    let receiver = Receiver::with(streaming(vec![spec]));
    let (frames, _, _) = g711_frames(2.0, ulaw, 0);
    send_call(&receiver, &uuid(10), "", &frames, true);
    let record = &receiver.wait_records(1)[0];
    let stream = stream_record(record, "down");
    assert_eq!(stream["connects"], 0);
    assert_eq!(stream["frames_sent"], 0);
    assert_eq!(stream["dropped_ms"], 2000, "every inbound frame, counted");
    assert!(
        stream["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{stream}"
    );
    assert!(receiver.counter("rst_stream_connect_failures_total") >= 1);
    // The recording is unaffected.
    let (_, samples) = read_wav(&path_of(record, "/directions/R/wav/0"));
    assert_eq!(samples.len(), 16000);
}

/// A private CA in `dir`, issuing certificates for the tests' TLS.
struct Pki {
    ca_key: rcgen::KeyPair,
    ca_params: rcgen::CertificateParams,
    ca_file: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Pki {
    fn new(dir: &std::path::Path) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Pki {
            ca_key,
            ca_params,
            ca_file,
            dir: dir.to_owned(),
        }
    }

    /// A certificate for `name` signed by the CA, and its key.
    fn issue(&self, name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.into()]).unwrap();
        let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
        (params.signed_by(&key, &issuer).unwrap(), key)
    }

    /// A client certificate and key as PEM files.
    fn client_files(&self) -> (std::path::PathBuf, std::path::PathBuf) {
        let (cert, key) = self.issue("rst-receiver");
        let (cert_file, key_file) = (self.dir.join("client.pem"), self.dir.join("client.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    /// A server for 127.0.0.1; with `clients`, it asks for a client
    /// certificate that this CA signed, and refuses a connection without one.
    fn server(&self, clients: bool) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if clients {
            let mut roots = rustls::RootCertStore::empty();
            let ca = self.ca_params.self_signed(&self.ca_key).unwrap();
            roots.add(ca.der().clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let (cert, key) = self.issue("127.0.0.1");
        let config = builder
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        Arc::new(config)
    }
}

#[test]
fn wss_with_a_private_ca_works_and_a_certificate_that_does_not_verify_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let other_ca = Pki::new(&other).ca_file;
    let consumer = Consumer::start_tls(Behaviour::default(), Some(pki.server(false)));
    let ca_file = pki.ca_file.clone();
    let mut trusted = profile(
        "trusted",
        consumer.url("wss"),
        Format::Twilio,
        Tracks::Inbound,
    );
    trusted.ca_file = Some(ca_file);
    let mut wrong = profile(
        "wrong",
        consumer.url("wss"),
        Format::Twilio,
        Tracks::Inbound,
    );
    wrong.ca_file = Some(other_ca);
    wrong.buffer_seconds = Some(1);
    let receiver = Receiver::with(streaming(vec![trusted, wrong]));
    let id = uuid(11);
    let (frames, r, _) = g711_frames(1.0, ulaw, 0);
    send_call(&receiver, &id, "", &frames, true);
    let record = &receiver.wait_records(1)[0];
    let connections = consumer.connections();
    let good: Vec<_> = connections.iter().filter(|c| !c.texts.is_empty()).collect();
    assert_eq!(good.len(), 1, "only the trusted profile got through");
    assert_eq!(check_twilio(good[0], &id)["inbound"].0, r);
    let wrong = stream_record(record, "wrong");
    assert_eq!(wrong["connects"], 0);
    let error = wrong["last_error"].as_str().unwrap();
    assert!(
        error.contains("certificate") || error.contains("UnknownIssuer"),
        "{error}"
    );
}

#[test]
fn a_digit_of_an_rtp_call_reaches_the_stream_as_a_dtmf_message() {
    let consumer = Consumer::start(Behaviour::default());
    let mut settings = streaming(vec![
        profile("bot", consumer.url("ws"), Format::Twilio, Tracks::Inbound),
        profile("fork", consumer.url("ws"), Format::Raw, Tracks::Inbound),
    ]);
    settings.rtp_ports = Some("31000-31099".parse().unwrap());
    let receiver = Receiver::with(settings);
    let mut sender = RtpSender::new(receiver.addr);
    let id = uuid(12);
    let (read_port, _) = sender
        .inv(&id, "pt101=telephone-event/8000")
        .expect("an ACK with ports");
    let to = SocketAddr::from(([127, 0, 0, 1], read_port));
    let audio: Vec<u8> = tone(1000.0, 9000.0, 8000, 0.2)
        .into_iter()
        .map(ulaw)
        .collect();
    for (k, frame) in audio.chunks(160).enumerate() {
        let k = k as u16;
        sender
            .read
            .send_to(&rtp(k, u32::from(k) * 160, 7, 0, frame), to)
            .unwrap();
    }
    // Digit 1, its start and its end (sent three times, as RFC 4733 says).
    let digit = |end, duration| {
        rst_proto::TelephoneEvent {
            event: 1,
            end,
            volume: 10,
            duration,
        }
        .encode()
    };
    sender
        .read
        .send_to(&rtp(10, 1600, 7, 101, &digit(false, 160)), to)
        .unwrap();
    for k in 0..3 {
        sender
            .read
            .send_to(&rtp(11 + k, 1600, 7, 101, &digit(true, 800)), to)
            .unwrap();
    }
    for k in 14..20u16 {
        sender
            .read
            .send_to(
                &rtp(k, 2400 + u32::from(k - 14) * 160, 7, 0, &audio[..160]),
                to,
            )
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.counter("rst_rtp_packets_total") < 20 {
        assert!(Instant::now() < deadline, "the RTP did not arrive");
        std::thread::sleep(Duration::from_millis(20));
    }
    sender.control.bye(&id);
    let connections = consumer.wait_ended(2);
    let twilio = connections
        .iter()
        .find(|c| c.texts[0]["event"] == "connected")
        .unwrap();
    check_twilio(twilio, &id);
    let dtmf: Vec<_> = twilio
        .texts
        .iter()
        .filter(|m| m["event"] == "dtmf")
        .collect();
    assert_eq!(dtmf.len(), 1, "one key press");
    assert_eq!(
        dtmf[0]["dtmf"],
        serde_json::json!({"track": "inbound_track", "digit": "1"})
    );
    let raw = connections
        .iter()
        .find(|c| c.texts[0]["event"] == "start")
        .unwrap();
    let dtmf: Vec<_> = raw.texts.iter().filter(|m| m["event"] == "dtmf").collect();
    assert_eq!(dtmf.len(), 1);
    assert_eq!(dtmf[0]["digit"], "1");
    assert_eq!(dtmf[0]["duration_ms"], 100);
    let record = &receiver.wait_records(1)[0];
    assert_eq!(record["dtmf"][0]["digit"], "1");
}

#[test]
fn a_dtmf_datagram_reaches_the_record_and_the_stream_once() {
    let consumer = Consumer::start(Behaviour::default());
    let receiver = Receiver::with(streaming(vec![profile(
        "bot",
        consumer.url("ws"),
        Format::Twilio,
        Tracks::Both,
    )]));
    let id = uuid(13);
    let mut sender = Sender::new(receiver.addr);
    sender.inv(&id, "1001", "1002");
    let frame: Vec<u8> = tone(1000.0, 9000.0, 8000, 0.02)
        .into_iter()
        .map(ulaw)
        .collect();
    let dtmf = |sequence, digit, direction| {
        rst_proto::Message::Dtmf(rst_proto::Dtmf {
            uuid: rst_proto::Uuid::new(&id).unwrap(),
            direction,
            sequence,
            digit,
            duration_ms: 280,
        })
        .to_vec()
        .unwrap()
    };
    for k in 0..10 {
        sender.data(&id, Direction::Read, 0, &frame);
        if k == 5 {
            // Three copies, as senders send it; then another key, on W.
            for _ in 0..3 {
                sender.send_raw(&dtmf(0, '1', Direction::Read));
            }
            sender.send_raw(&dtmf(1, '#', Direction::Write));
        }
    }
    sender.bye(&id);
    let record = &receiver.wait_records(1)[0];
    let digits: Vec<_> = record["dtmf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["digit"].as_str().unwrap().to_owned(),
                d["direction"].as_str().unwrap().to_owned(),
                d["duration_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        digits,
        [("1".into(), "R".into(), 280), ("#".into(), "W".into(), 280)]
    );
    assert_eq!(record["dtmf"][1]["event"], 11);
    assert_eq!(receiver.counter("rst_messages_total{command=\"dtmf\"}"), 4);
    let connection = &consumer.wait_ended(1)[0];
    let dtmf: Vec<_> = connection
        .texts
        .iter()
        .filter(|m| m["event"] == "dtmf")
        .map(|m| m["dtmf"].clone())
        .collect();
    assert_eq!(
        dtmf,
        [
            serde_json::json!({"track": "inbound_track", "digit": "1"}),
            serde_json::json!({"track": "outbound_track", "digit": "#"})
        ]
    );
}

/// Calls from rst-load, the project's load generator (real time, both
/// directions: 1 kHz on R, 500 Hz on W), in each of its codecs and in both
/// modes: every stream is Twilio's shape, every frame of both tracks is there,
/// and each track carries its tone; PCMU's bytes are rst-load's own.
#[test]
fn calls_from_rst_load_reach_a_twilio_bot_in_every_codec_and_mode() {
    use rst_load::{Codec, Mode};
    let consumer = Consumer::start(Behaviour::default());
    let mut settings = streaming(vec![profile(
        "bot",
        consumer.url("ws"),
        Format::Twilio,
        Tracks::Both,
    )]);
    settings.rtp_ports = Some("32000-32099".parse().unwrap());
    let receiver = Receiver::with(settings);
    let runs = [
        (Codec::Pcmu, Mode::Data),
        (Codec::Pcma, Mode::Data),
        (Codec::L16, Mode::Data),
        (Codec::Pcmu, Mode::Rtp),
        (Codec::L16, Mode::Rtp),
    ];
    for (codec, mode) in runs {
        let report = rst_load::run(&rst_load::Config {
            target: receiver.addr,
            calls: 2,
            frames: Some(50),
            codec,
            mode,
            ..rst_load::Config::default()
        })
        .unwrap();
        assert_eq!(report.lost(), 0, "{codec:?} {mode:?}: {report}");
    }
    let calls = runs.len() * 2;
    let records = receiver.wait_records(calls);
    let connections = consumer.wait_ended(calls);
    assert_eq!(connections.len(), calls);
    for connection in &connections {
        let uuid = connection.texts[1]["start"]["callSid"]
            .as_str()
            .unwrap()
            .to_owned();
        let record = records.iter().find(|r| r["uuid"] == uuid.as_str()).unwrap();
        let codec = record["directions"]["R"]["codecs"][0].as_str().unwrap();
        let tracks = check_twilio(connection, &uuid);
        for (track, hz) in [("inbound", 1000), ("outbound", 500)] {
            // What µ-law carries of rst-load's tone: its own bytes for PCMU, the
            // same samples encoded for L16, A-law's samples encoded for PCMA.
            let tone = Codec::Pcmu.frame(hz);
            let frame: Vec<u8> = match codec {
                "PCMA" => Codec::Pcma
                    .frame(hz)
                    .iter()
                    .map(|&a| ulaw(rst_codec::alaw_to_linear(a)))
                    .collect(),
                "PCMU" | "L16" => tone,
                other => panic!("{other}"),
            };
            let (bytes, _) = &tracks[track];
            assert_eq!(bytes.len(), 50 * 160, "{uuid} {codec} {track}: every frame");
            assert!(
                bytes.chunks(160).all(|f| f == frame.as_slice()),
                "{uuid} {codec} {track}: sample for sample"
            );
        }
    }
}

#[test]
fn mutual_tls_sends_the_client_certificate_and_without_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (cert_file, key_file) = pki.client_files();
    let consumer = Consumer::start_tls(Behaviour::default(), Some(pki.server(true)));
    let mut with_cert = profile("mtls", consumer.url("wss"), Format::Twilio, Tracks::Inbound);
    with_cert.ca_file = Some(pki.ca_file.clone());
    with_cert.cert_file = Some(cert_file);
    with_cert.key_file = Some(key_file);
    let mut without = profile(
        "anonymous",
        consumer.url("wss"),
        Format::Twilio,
        Tracks::Inbound,
    );
    without.ca_file = Some(pki.ca_file.clone());
    without.buffer_seconds = Some(1);
    let receiver = Receiver::with(streaming(vec![with_cert, without]));
    let id = uuid(14);
    let (frames, r, _) = g711_frames(0.5, ulaw, 0);
    send_call(&receiver, &id, "", &frames, true);
    let record = &receiver.wait_records(1)[0];
    let good: Vec<_> = consumer
        .connections()
        .into_iter()
        .filter(|c| !c.texts.is_empty())
        .collect();
    assert_eq!(
        good.len(),
        1,
        "only the profile with a certificate got through"
    );
    assert_eq!(check_twilio(&good[0], &id)["inbound"].0, r);
    assert_eq!(stream_record(record, "mtls")["dropped_ms"], 0);
    let refused = stream_record(record, "anonymous");
    assert_eq!(refused["connects"], 0, "{refused}");
    assert!(refused["last_error"].is_string(), "{refused}");
}
