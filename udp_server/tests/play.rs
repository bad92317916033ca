//! Audio back into a call, at the receiver: a real WebSocket consumer (a bot)
//! speaks, clears and marks; a sender on a real UDP socket, playing mod_rst
//! (`play=1` in its INV), receives PLAY, CLR and MARK and answers marks.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::consumer::{Behaviour, Consumer};
use common::*;
use rst_proto::{Direction, Extensions, Inv, Mark, Message, Uuid};
use tokio_tungstenite::tungstenite::Message as Ws;
use udp_server::stream::{Format, ProfileSpec, Tracks};
use udp_server::Settings;

/// A sender that plays mod_rst's part: INV (with `play=1` when it can play),
/// DATA in real time on a thread, and what the receiver sends back.
struct PlayingSender {
    socket: UdpSocket,
    uuid: String,
}

/// What the receiver sent to the sender.
#[derive(Debug, Default)]
struct Heard {
    plays: Vec<(u32, u8, Vec<u8>)>,
    clears: usize,
    marks: Vec<String>,
}

impl PlayingSender {
    fn call(receiver: SocketAddr, uuid: &str, extensions: &str, seconds: u64) -> PlayingSender {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(receiver).unwrap();
        let inv = Message::Inv(Inv {
            uuid: Uuid::new(uuid).unwrap(),
            caller: "1001",
            callee: "1002",
            rtp_ports: None,
            extensions: Extensions::parse(extensions).unwrap(),
        })
        .to_vec()
        .unwrap();
        socket.send(&inv).unwrap();
        // The call's audio goes on in real time from a second handle.
        let data = socket.try_clone().unwrap();
        let id = uuid.to_owned();
        std::thread::spawn(move || {
            let mut datagram = Vec::new();
            let start = Instant::now();
            for k in 0..seconds * 50 {
                let due = start + Duration::from_millis(20 * k);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                datagram.clear();
                rst_proto::Data::encode_header(
                    Uuid::new(&id).unwrap(),
                    Direction::Read,
                    rst_proto::PayloadType::PCMU,
                    160,
                    &mut datagram,
                );
                datagram.extend_from_slice(&[0xFF; 160]);
                if data.send(&datagram).is_err() {
                    return;
                }
            }
        });
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        PlayingSender {
            socket,
            uuid: uuid.to_owned(),
        }
    }

    /// Reads what the receiver sends until `done` says so (answering marks
    /// as played, as mod_rst does once their audio has been heard).
    fn hear_until(&self, heard: &mut Heard, mut done: impl FnMut(&Heard) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buffer = [0u8; 4096];
        while !done(heard) {
            assert!(
                Instant::now() < deadline,
                "waited in vain; heard {} plays, {} clears, marks {:?}",
                heard.plays.len(),
                heard.clears,
                heard.marks
            );
            let Ok(len) = self.socket.recv(&mut buffer) else {
                continue;
            };
            match Message::parse(&buffer[..len]) {
                Ok(Message::Play(play)) => {
                    assert_eq!(play.uuid.as_str(), self.uuid);
                    heard.plays.push((
                        play.sequence,
                        play.payload_type.number(),
                        play.payload.to_vec(),
                    ));
                }
                Ok(Message::Clear(_)) => heard.clears += 1,
                Ok(Message::Mark(mark)) => {
                    heard.marks.push(mark.name());
                    let back = Message::Mark(Mark {
                        uuid: mark.uuid,
                        wire_name: mark.wire_name,
                        cleared: false,
                    });
                    self.socket.send(&back.to_vec().unwrap()).unwrap();
                }
                _ => {}
            }
        }
    }
}

fn bot(consumer: &Consumer, format: Format, rate: Option<u32>) -> Settings {
    Settings {
        stream: vec![ProfileSpec {
            name: "bot".into(),
            format: Some(format),
            tracks: Some(Tracks::Inbound),
            rate,
            ..ProfileSpec::simple(consumer.url("ws"))
        }],
        ..Settings::default()
    }
}

fn media(ulaw: &[u8]) -> Ws {
    let payload = base64::engine::general_purpose::STANDARD.encode(ulaw);
    Ws::text(format!(
        r#"{{"event":"media","streamSid":"MZ","media":{{"payload":"{payload}"}}}}"#
    ))
}

fn samples(payload: &[u8]) -> Vec<i16> {
    payload
        .chunks(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

#[test]
fn a_twilio_bot_speaks_into_the_call_and_its_mark_comes_back_when_played() {
    let consumer = Consumer::start(Behaviour::default());
    let receiver = Receiver::with(bot(&consumer, Format::Twilio, None));
    let id = uuid(1);
    let sender = PlayingSender::call(receiver.addr, &id, "play=1", 4);
    consumer.wait_open(1);
    // One second of 700 Hz, in one burst, then a mark.
    let speech: Vec<u8> = tone(700.0, 9000.0, 8000, 1.0)
        .into_iter()
        .map(ulaw)
        .collect();
    let mut messages: Vec<Ws> = speech.chunks(160).map(media).collect();
    messages.push(Ws::text(
        r#"{"event":"mark","streamSid":"MZ","mark":{"name":"said hello"}}"#,
    ));
    consumer.send(0, messages);

    let mut heard = Heard::default();
    sender.hear_until(&mut heard, |h| !h.marks.is_empty());
    let sequences: Vec<u32> = heard.plays.iter().map(|p| p.0).collect();
    assert_eq!(
        sequences,
        (0..50).collect::<Vec<_>>(),
        "50 frames, in order, then the mark"
    );
    assert!(
        heard.plays.iter().all(|p| p.1 == 10),
        "16-bit linear at the call's rate"
    );
    let played: Vec<i16> = heard.plays.iter().flat_map(|p| samples(&p.2)).collect();
    let expected: Vec<i16> = speech
        .iter()
        .map(|&u| rst_codec::ulaw_to_linear(u))
        .collect();
    assert_eq!(played, expected, "the bot's audio, sample for sample");
    assert_eq!(heard.marks, ["said hello"]);
    // The sender said it played: the bot hears its mark back, as Twilio says it.
    let mark = consumer.wait_text(0, "the mark", |m| m["event"] == "mark");
    assert_eq!(mark["mark"]["name"], "said hello");
    assert!(mark["sequenceNumber"].is_string() && mark["streamSid"].is_string());
}

#[test]
fn a_clear_stops_the_bot_mid_sentence_and_its_mark_is_cleared() {
    let consumer = Consumer::start(Behaviour::default());
    let receiver = Receiver::with(bot(&consumer, Format::Twilio, None));
    let id = uuid(2);
    let sender = PlayingSender::call(receiver.addr, &id, "play=1", 6);
    consumer.wait_open(1);
    let speech: Vec<u8> = tone(700.0, 9000.0, 8000, 3.0)
        .into_iter()
        .map(ulaw)
        .collect();
    let mut messages: Vec<Ws> = speech.chunks(160).map(media).collect();
    messages.push(Ws::text(
        r#"{"event":"mark","mark":{"name":"end of sentence"}}"#,
    ));
    consumer.send(0, messages);
    let mut heard = Heard::default();
    sender.hear_until(&mut heard, |h| h.plays.len() >= 20);
    consumer.send(0, [Ws::text(r#"{"event":"clear","streamSid":"MZ"}"#)]);
    sender.hear_until(&mut heard, |h| h.clears == 1);
    let before_clear = heard.plays.len();
    assert!(
        before_clear < 150,
        "the clear came mid-sentence ({before_clear} frames)"
    );
    // The mark never reached the sender: the bot is told it was cleared.
    consumer.wait_text(0, "the cleared mark", |m| {
        m["event"] == "mark" && m["mark"]["name"] == "end of sentence"
    });
    // Nothing more is played after the clear: new audio starts a new run.
    consumer.send(0, [media(&[0x55; 160])]);
    sender.hear_until(&mut heard, |h| h.plays.len() > before_clear);
    assert_eq!(
        heard.plays.last().unwrap().2,
        samples_bytes(&[rst_codec::ulaw_to_linear(0x55); 160])
    );
    assert!(heard.marks.is_empty());
}

fn samples_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

#[test]
fn raw_frames_at_16k_are_played_sample_for_sample_into_a_16k_call() {
    let consumer = Consumer::start(Behaviour::default());
    let receiver = Receiver::with(bot(&consumer, Format::Raw, Some(16000)));
    let id = uuid(3);
    let sender = PlayingSender::call(receiver.addr, &id, "rate=16000:play=1", 3);
    consumer.wait_open(1);
    let speech = tone(440.0, 7000.0, 16000, 0.5);
    let mut messages: Vec<Ws> = speech
        .chunks(320)
        .map(|frame| Ws::binary(samples_bytes(frame)))
        .collect();
    messages.push(Ws::text(r#"{"event":"mark","name":"m"}"#));
    consumer.send(0, messages);
    let mut heard = Heard::default();
    sender.hear_until(&mut heard, |h| !h.marks.is_empty());
    let played: Vec<i16> = heard.plays.iter().flat_map(|p| samples(&p.2)).collect();
    assert_eq!(played, speech);
    assert!(
        heard.plays.iter().all(|p| p.2.len() == 640),
        "20 ms at 16 kHz"
    );
    let mark = consumer.wait_text(0, "the mark", |m| m["event"] == "mark");
    assert_eq!(mark["name"], "m");
    assert_eq!(mark["cleared"], false);
}

#[test]
fn a_call_that_cannot_play_tells_the_bot_once_and_sends_nothing() {
    let consumer = Consumer::start(Behaviour::default());
    let receiver = Receiver::with(bot(&consumer, Format::Twilio, None));
    let id = uuid(4);
    // No play=1: a tap, or an old sender.
    let sender = PlayingSender::call(receiver.addr, &id, "", 2);
    consumer.wait_open(1);
    consumer.send(0, (0..10).map(|_| media(&[0x11; 160])));
    let deadline = Instant::now() + Duration::from_secs(60);
    let errors = loop {
        let errors: Vec<_> = consumer.connections()[0]
            .texts
            .iter()
            .filter(|m| m["event"] == "error")
            .cloned()
            .collect();
        if receiver.counter("rst_play_refused_total") == 10 {
            break errors;
        }
        assert!(Instant::now() < deadline, "the refusals were not counted");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(errors.len(), 1, "said once: {errors:?}");
    assert!(errors[0]["message"]
        .as_str()
        .unwrap()
        .contains("cannot be spoken into"));
    let mut buffer = [0u8; 2048];
    // Only ACKs ever reach a sender that cannot play.
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        if let Ok(len) = sender.socket.recv(&mut buffer) {
            assert!(
                buffer[..len].starts_with(b"ACK :"),
                "{:?}",
                String::from_utf8_lossy(&buffer[..len])
            );
        }
    }
}

/// A person (or an agent's console) on the `listen` WebSocket of the HTTP
/// port speaks too: the `raw` format's binary frames are played into the
/// call, and its mark comes back once played.
#[test]
fn a_listen_client_speaks_into_the_call() {
    const TOKEN: &str = "0123456789abcdef-speak";
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("http.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let receiver = Receiver::with(Settings {
        http: Some("127.0.0.1:0".parse().unwrap()),
        http_token_file: Some(token_file),
        ..Settings::default()
    });
    let http = receiver.http_addr().expect("the HTTP port is bound");
    let id = uuid(5);
    let sender = PlayingSender::call(receiver.addr, &id, "play=1", 4);
    let speech = tone(600.0, 5000.0, 8000, 0.4);
    let frames: Vec<Vec<u8>> = speech.chunks(160).map(samples_bytes).collect();
    let url = format!("ws://{http}/api/calls/{id}/listen?format=raw&rate=8000&token={TOKEN}");
    let client = std::thread::spawn(move || {
        use futures_util::{SinkExt as _, StreamExt as _};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            // The call may not be known the instant its INV left.
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut socket = loop {
                match tokio_tungstenite::connect_async(url.as_str()).await {
                    Ok((socket, _)) => break socket,
                    Err(error) => {
                        assert!(Instant::now() < deadline, "cannot listen: {error}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            };
            for frame in frames {
                socket.send(Ws::binary(frame)).await.unwrap();
            }
            socket
                .send(Ws::text(r#"{"event":"mark","name":"spoken"}"#))
                .await
                .unwrap();
            // Until the mark comes back.
            while let Some(Ok(message)) = socket.next().await {
                if let Ws::Text(text) = message {
                    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                    if value["event"] == "mark" {
                        return value;
                    }
                }
            }
            panic!("the listen socket closed before the mark came back");
        })
    });
    let mut heard = Heard::default();
    sender.hear_until(&mut heard, |h| !h.marks.is_empty());
    let played: Vec<i16> = heard.plays.iter().flat_map(|p| samples(&p.2)).collect();
    assert_eq!(played, speech, "the listener's voice, sample for sample");
    let mark = client.join().unwrap();
    assert_eq!(mark["name"], "spoken");
    assert_eq!(mark["cleared"], false);
}
