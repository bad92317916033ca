//! The README's minimal bot (`examples/twilio_bot.py`, Python `websockets`)
//! against a real receiver: it gets the call's start, digits and audio, and
//! the bytes it saves are the bytes the sender sent.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use common::*;
use rst_proto::Direction;
use udp_server::Settings;

#[test]
fn the_readme_bot_gets_the_call_as_sent() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/twilio_bot.py");
    let mut bot = Command::new("python3")
        .arg(&script)
        .arg(port.to_string())
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs (scripts/setup.sh --test installs its websockets package)");
    let mut lines = BufReader::new(bot.stdout.take().unwrap()).lines();
    let first = lines.next().expect("the bot says it listens").unwrap();
    assert_eq!(
        first,
        format!("listening {port}"),
        "is `websockets` installed? pip install websockets"
    );

    let receiver = Receiver::with(Settings {
        stream_url: Some(format!("ws://127.0.0.1:{port}/media")),
        stream_format: Some(udp_server::stream::Format::Twilio),
        ..Settings::default()
    });
    let id = uuid(77);
    let r: Vec<u8> = tone(700.0, 9000.0, 8000, 1.0)
        .into_iter()
        .map(ulaw)
        .collect();
    let mut sender = Sender::new(receiver.addr);
    sender.inv(&id, "1001", "1002");
    for frame in r.chunks(160) {
        sender.data(&id, Direction::Read, 0, frame);
    }
    let dtmf = rst_proto::Message::Dtmf(rst_proto::Dtmf {
        uuid: rst_proto::Uuid::new(&id).unwrap(),
        direction: Direction::Read,
        sequence: 0,
        digit: '7',
        duration_ms: 120,
    });
    sender.send(dtmf);
    sender.bye(&id);

    let said: Vec<String> = lines.by_ref().take(3).map(Result::unwrap).collect();
    assert!(said[0].starts_with(&format!("start {id} ")), "{said:?}");
    assert!(said[0].contains("\"caller\": \"1001\""), "{said:?}");
    assert_eq!(said[1], format!("dtmf {id} 7"));
    assert_eq!(said[2], format!("stop {id} {}", r.len()));
    let saved = std::fs::read(dir.path().join(format!("{id}.ulaw"))).unwrap();
    assert_eq!(saved, r, "the bot saved the sender's bytes");
    receiver.wait_records(1);
    let _ = bot.kill();
    let _ = bot.wait();
}
