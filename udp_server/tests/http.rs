//! The HTTP port over real TCP on 127.0.0.1: metrics and health without a
//! token, the calls API and `listen` with one, refusals counted.

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use futures_util::StreamExt as _;
use rst_proto::Direction;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest as _, Message};
use tokio_util::sync::CancellationToken;
use udp_server::Settings;

const TOKEN: &str = "0123456789abcdef-listen";

/// `GET path` with an optional bearer token: the status and the body.
fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: rst\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn http_receiver(token: bool) -> (Receiver, SocketAddr, Option<tempfile::TempDir>) {
    let secrets = token.then(|| tempfile::tempdir().unwrap());
    let token_file = secrets.as_ref().map(|dir| {
        let path = dir.path().join("http.token");
        std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        path
    });
    let receiver = Receiver::with(Settings {
        http: Some("127.0.0.1:0".parse().unwrap()),
        http_token_file: token_file,
        ..Settings::default()
    });
    let addr = receiver.http_addr().expect("the HTTP port is bound");
    (receiver, addr, secrets)
}

#[test]
fn metrics_and_health_need_no_token_and_the_api_is_off_without_one() {
    let (mut receiver, http, _) = http_receiver(false);
    let mut sender = Sender::new(receiver.addr);
    sender.inv(&uuid(40), "a", "b");
    sender.send_raw(b"garbage");
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (status, body) = get(http, "/metrics", None);
        assert_eq!(status, 200);
        if metric(&body, "rst_malformed_total{kind=\"unknown_command\"}") == 1 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the garbage was not counted:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(metric(&metrics, "rst_messages_total{command=\"inv\"}"), 1);
    assert_eq!(metric(&metrics, "rst_calls_active"), 1);
    assert_eq!(get(http, "/health", None), (200, "ok\n".to_owned()));
    let (status, body) = get(http, "/api/calls", Some(TOKEN));
    assert_eq!(status, 403);
    assert!(body.contains("http-token-file"), "{body}");
    assert_eq!(get(http, "/nowhere", None).0, 404);
    receiver.stop();
}

/// Sends a call in real time on a thread of its own: 1 kHz µ-law on R, 400 Hz on W.
fn call_in_progress(
    receiver: &Receiver,
    id: &str,
    seconds: f64,
) -> (std::thread::JoinHandle<()>, Vec<u8>) {
    let r: Vec<u8> = tone(1000.0, 9000.0, 8000, seconds)
        .into_iter()
        .map(ulaw)
        .collect();
    let w: Vec<u8> = tone(400.0, 6000.0, 8000, seconds)
        .into_iter()
        .map(ulaw)
        .collect();
    let mut sender = Sender::new(receiver.addr);
    let id = id.to_owned();
    sender.inv(&id, "+15551230001", "+15559870002");
    let sent = r.clone();
    let thread = std::thread::spawn(move || {
        let start = Instant::now();
        for (k, (a, b)) in r.chunks(160).zip(w.chunks(160)).enumerate() {
            let due = start + Duration::from_millis(20 * k as u64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            sender.data(&id, Direction::Read, 0, a);
            sender.data(&id, Direction::Write, 0, b);
        }
        sender.bye(&id);
    });
    (thread, sent)
}

/// Waits until the receiver lists call `id` as in progress: its ACK leaves
/// before the recorder has opened the call, so a client asking at once may
/// be early.
fn wait_listed(http: SocketAddr, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(http, &format!("/api/calls/{id}"), Some(TOKEN)).0 != 200 {
        assert!(Instant::now() < deadline, "call {id} was never listed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the API counts `count` listeners on call `id`.
fn wait_listeners(http: SocketAddr, id: &str, count: usize) {
    let listeners = || {
        let (_, body) = get(http, &format!("/api/calls/{id}"), Some(TOKEN));
        let info: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        (info["listeners"].clone(), body)
    };
    wait_until(
        || format!("{count} listeners on {id}: {}", listeners().1),
        || listeners().0 == count,
    );
}

/// A `listen` client: every message until the receiver closes.
fn listen(http: SocketAddr, path: &str, token: &str) -> std::thread::JoinHandle<Vec<Message>> {
    listen_until(http, path, token, CancellationToken::new())
}

/// A `listen` client that leaves when `leave` is cancelled.
fn listen_until(
    http: SocketAddr,
    path: &str,
    token: &str,
    leave: CancellationToken,
) -> std::thread::JoinHandle<Vec<Message>> {
    let url = format!("ws://{http}{path}");
    let token = token.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut request = url.into_client_request().unwrap();
            request
                .headers_mut()
                .insert("Authorization", format!("Bearer {token}").parse().unwrap());
            let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
            let mut messages = Vec::new();
            loop {
                let message = tokio::select! {
                    () = leave.cancelled() => {
                        socket.close(None).await.ok();
                        break;
                    }
                    message = socket.next() => message,
                };
                match message {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(message)) => messages.push(message),
                }
            }
            messages
        })
    })
}

#[test]
fn the_api_lists_calls_and_two_clients_listen_at_once_and_bad_tokens_are_refused() {
    let (receiver, http, _secrets) = http_receiver(true);
    let id = uuid(41);
    let (call, sent) = call_in_progress(&receiver, &id, 8.0);
    wait_listed(http, &id);

    assert_eq!(get(http, "/api/calls", None).0, 401);
    assert_eq!(
        get(http, "/api/calls", Some("0123456789abcdef-wrong")).0,
        401
    );
    assert_eq!(get(http, "/api/calls?token=nope", None).0, 401);
    let (status, body) = get(http, "/api/calls", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let calls: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(calls[0]["uuid"], id.as_str());
    assert_eq!(calls[0]["caller"], "+15551230001");
    assert_eq!(calls[0]["mode"], "data");
    let (status, body) = get(http, &format!("/api/calls/{id}?token={TOKEN}"), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        get(http, &format!("/api/calls/{}", uuid(99)), Some(TOKEN)).0,
        404
    );

    let raw = listen(
        http,
        &format!("/api/calls/{id}/listen?format=raw&rate=16000&tracks=both"),
        TOKEN,
    );
    let twilio = listen(
        http,
        &format!("/api/calls/{id}/listen?format=twilio&tracks=inbound"),
        TOKEN,
    );
    // Both are counted on the call while they listen.
    wait_listeners(http, &id, 2);
    call.join().unwrap();
    let raw = raw.join().unwrap();
    let twilio = twilio.join().unwrap();

    let Message::Text(start) = &raw[0] else {
        panic!("{:?}", raw[0])
    };
    let start: serde_json::Value = serde_json::from_str(start).unwrap();
    assert_eq!(start["format"]["sampleRate"], 16000);
    assert_eq!(start["format"]["channels"], 2);
    let pcm: Vec<i16> = raw
        .iter()
        .filter_map(|m| match m {
            Message::Binary(bytes) => Some(bytes.to_vec()),
            _ => None,
        })
        .flatten()
        .collect::<Vec<u8>>()
        .chunks(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let left: Vec<i16> = pcm.iter().step_by(2).copied().collect();
    assert!(
        left.len() > 16000,
        "more than a second of audio: {}",
        left.len()
    );
    let share = tone_share(1000.0, 16000, &left[4000..left.len() - 4000]);
    assert!(share > 0.8, "1 kHz on the left, {share:.3} of the energy");

    // The twilio listener joined mid-call: its bytes are a run of the sent ones.
    let bytes: Vec<u8> = twilio
        .iter()
        .filter_map(|m| match m {
            Message::Text(text) => serde_json::from_str::<serde_json::Value>(text).ok(),
            _ => None,
        })
        .filter(|m| m["event"] == "media")
        .flat_map(|m| {
            base64::engine::general_purpose::STANDARD
                .decode(m["media"]["payload"].as_str().unwrap())
                .unwrap()
        })
        .collect();
    assert!(bytes.len() >= 8000, "{} bytes", bytes.len());
    let offset = (0..sent.len() - 160)
        .find(|&k| sent[k..k + 160] == bytes[..160])
        .expect("the first frame is one the sender sent");
    assert_eq!(
        &sent[offset..offset + bytes.len()],
        &bytes[..],
        "the rest follows without a gap"
    );

    assert_eq!(receiver.counter("rst_http_refused_total"), 3);
    receiver.wait_records(1);
}

#[test]
fn listening_is_logged_to_the_metadata_feed() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let feed = probe.local_addr().unwrap();
    drop(probe);
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("http.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let receiver = Receiver::with(Settings {
        http: Some("127.0.0.1:0".parse().unwrap()),
        http_token_file: Some(token_file),
        feed: Some(feed),
        ..Settings::default()
    });
    let http = receiver.http_addr().unwrap();
    // The feed's port opens as the receiver starts: try until it does.
    let deadline = Instant::now() + Duration::from_secs(30);
    let console = loop {
        match std::net::TcpStream::connect(feed) {
            Ok(console) => break console,
            Err(error) => assert!(Instant::now() < deadline, "no feed at {feed}: {error}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    console
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut lines = BufReader::new(console).lines();
    let id = uuid(42);
    let (call, _) = call_in_progress(&receiver, &id, 8.0);
    wait_listed(http, &id);
    let listener = listen(http, &format!("/api/calls/{id}/listen"), TOKEN);
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|e: &serde_json::Value| e["event"] == "listen_end")
    {
        let line = lines.next().expect("the feed goes on").unwrap();
        seen.push(serde_json::from_str(&line).unwrap());
    }
    let start = seen.iter().find(|e| e["event"] == "listen_start").unwrap();
    assert_eq!(start["uuid"], id.as_str());
    assert!(start["listener"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(start["time"].is_string());
    call.join().unwrap();
    listener.join().unwrap();
}

/// A sender that gathers frames until someone hears the call (`live=1`)
/// hears LIVE from the receiver as a client starts to listen, and again
/// every second while it does; after the client leaves, no more (at most
/// one already on its way). A sender that did not ask hears none.
#[test]
fn a_sender_that_gathers_frames_hears_live_while_a_client_listens() {
    let (receiver, http, _secrets) = http_receiver(true);
    let (id, quiet_id) = (uuid(43), uuid(44));
    let mut gathers = Sender::new(receiver.addr);
    let live = rst_proto::ExtensionsBuilder::new().live().build();
    gathers.inv_with(&id, "a", "b", rst_proto::Extensions::parse(&live).unwrap());
    let mut quiet = Sender::new(receiver.addr);
    quiet.inv(&quiet_id, "a", "b");
    gathers.data(&id, Direction::Read, 0, &[0xFF; 160]);
    quiet.data(&quiet_id, Direction::Read, 0, &[0xFF; 160]);
    wait_listed(http, &id);
    wait_listed(http, &quiet_id);
    let live_datagram = format!("LIVE:{id}").into_bytes();

    // A listener of each call, for as long as `leave` is not cancelled.
    let leave = CancellationToken::new();
    let clients: Vec<_> = [&id, &quiet_id]
        .into_iter()
        .map(|id| {
            listen_until(
                http,
                &format!("/api/calls/{id}/listen"),
                TOKEN,
                leave.clone(),
            )
        })
        .collect();

    let first = gathers.receive_within(Duration::from_secs(30));
    assert_eq!(
        first.as_deref(),
        Some(&live_datagram[..]),
        "LIVE as the listening starts"
    );
    let second = gathers.receive_within(Duration::from_secs(30));
    assert_eq!(
        second.as_deref(),
        Some(&live_datagram[..]),
        "LIVE again while it goes on"
    );
    // Counted as it leaves: the count may come a moment after the datagram.
    wait_counter(&receiver, "rst_lives_sent_total", 2);

    leave.cancel();
    for client in clients {
        client.join().unwrap();
    }
    wait_listeners(http, &id, 0);
    // Three LIVE periods: at most the one a tick had under way.
    let mut after = 0;
    while let Some(datagram) = gathers.receive_within(3 * rst_proto::LIVE_EVERY) {
        assert_eq!(datagram, live_datagram);
        after += 1;
        assert!(after <= 1, "LIVE went on after the listener left");
    }
    assert_eq!(
        quiet.receive(),
        None,
        "a sender without live=1 hears no LIVE"
    );
    gathers.bye(&id);
    quiet.bye(&quiet_id);
}
