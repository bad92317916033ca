//! The metadata feed of a real receiver: consoles connected over TCP get
//! call_start, dtmf and call_end lines for real calls, a late console gets the
//! calls in progress first, and a stalled one harms nobody.

mod common;

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use common::*;
use rst_proto::Direction::Read;
use rst_proto::{Extensions, Inv, Message, RtpPacket, RtpPorts, TelephoneEvent, Uuid};
use udp_server::Settings;

fn free_tcp_port() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

struct Console(BufReader<TcpStream>);

impl Console {
    fn connect(addr: SocketAddr) -> Console {
        // The receiver opens its feed port just after its UDP port.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let stream = loop {
            match TcpStream::connect(addr) {
                Ok(stream) => break stream,
                Err(error) if std::time::Instant::now() > deadline => {
                    panic!("feed at {addr}: {error}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Console(BufReader::new(stream))
    }

    fn next(&mut self) -> serde_json::Value {
        self.try_next().expect("a feed line within 10 s")
    }

    fn try_next(&mut self) -> Option<serde_json::Value> {
        let mut line = String::new();
        self.0.read_line(&mut line).ok()?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
    }
}

#[test]
fn consoles_follow_real_calls() {
    let feed = free_tcp_port();
    let mut receiver = Receiver::with(Settings {
        feed: Some(feed),
        rtp_ports: Some("21700-21799".parse().unwrap()),
        ..Settings::default()
    });
    let mut console = Console::connect(feed);
    // A console that connects and never reads. The hub accepts in order, so it
    // is registered once `late` (below) has had its snapshot.
    let stalled = Console::connect(feed);

    let mut sender = Sender::new(receiver.addr);
    let data_call = uuid(1);
    sender.inv(&data_call, "alice", "bob");
    let start = console.next();
    assert_eq!(start["event"], "call_start");
    assert_eq!(start["uuid"], data_call.as_str());
    assert_eq!(start["caller"], "alice");
    assert_eq!(start["mode"], "data");
    assert!(start["time"].as_str().unwrap().contains('T'));

    // A console that connects now first gets the call in progress.
    let mut late = Console::connect(feed);
    let snapshot = late.next();
    assert_eq!(
        (snapshot["event"].as_str(), snapshot["uuid"].as_str()),
        (Some("call_start"), Some(data_call.as_str()))
    );

    // An RTP-mode call with a DTMF digit.
    let rtp_call = uuid(2);
    let media = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = RtpPorts {
        read: media.local_addr().unwrap().port(),
        write: 9,
    };
    sender.send(Message::Inv(Inv {
        uuid: Uuid::new(&rtp_call).unwrap(),
        caller: "carol",
        callee: "dave",
        rtp_ports: Some(local),
        extensions: Extensions::parse("pt101=telephone-event/8000").unwrap(),
    }));
    let ack = sender.receive_within(Duration::from_secs(30)).unwrap();
    let Ok(Message::Ack(ack)) = Message::parse(&ack) else {
        panic!()
    };
    let server = ack.rtp_ports.unwrap();
    for (sequence, end) in [(1u16, false), (2, true)] {
        let payload = TelephoneEvent {
            event: 11,
            end,
            volume: 10,
            duration: 800,
        }
        .encode();
        let mut packet = Vec::new();
        RtpPacket {
            marker: false,
            payload_type: 101,
            sequence,
            timestamp: 0,
            ssrc: 5,
            payload: &payload,
        }
        .encode(&mut packet);
        media.send_to(&packet, ("127.0.0.1", server.read)).unwrap();
    }
    for _ in 0..5 {
        sender.data(&data_call, Read, 0, &[0xFF; 160]);
    }
    sender.bye(&data_call);
    sender.bye(&rtp_call);

    for console in [&mut console, &mut late] {
        let mut events: Vec<serde_json::Value> = Vec::new();
        while events.len() < 4 {
            match console.try_next() {
                Some(event) => events.push(event),
                None => panic!("only {} of 4 events within 10 s: {events:?}", events.len()),
            }
        }
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds.iter().filter(|k| **k == "call_end").count(),
            2,
            "{kinds:?}"
        );
        let start = events
            .iter()
            .find(|e| e["event"] == "call_start")
            .expect("the RTP call's start");
        assert_eq!(start["mode"], "rtp");
        let dtmf = events
            .iter()
            .find(|e| e["event"] == "dtmf")
            .expect("the DTMF line");
        assert_eq!(
            (dtmf["uuid"].as_str(), dtmf["digit"].as_str()),
            (Some(rtp_call.as_str()), Some("#"))
        );
        assert_eq!(dtmf["duration_ms"], 100);
        let end = events
            .iter()
            .find(|e| e["event"] == "call_end" && e["uuid"] == data_call.as_str())
            .unwrap();
        assert_eq!(end["end_reason"], "bye");
        assert_eq!(end["directions"]["R"]["samples"], 800);
        let wav = path_of(end, "/directions/R/wav/0");
        assert!(
            wav.exists(),
            "the call_end line names the real file: {}",
            wav.display()
        );
    }
    drop(stalled);
    receiver.stop();
}

#[test]
fn shutdown_call_ends_reach_the_consoles() {
    let feed = free_tcp_port();
    let mut receiver = Receiver::with(Settings {
        feed: Some(feed),
        ..Settings::default()
    });
    // Connected before or after the INV, the console gets the call_start (live or
    // in its snapshot), and once it has, the call_end too.
    let mut console = Console::connect(feed);
    let mut sender = Sender::new(receiver.addr);
    sender.inv(&uuid(3), "a", "b");
    assert_eq!(console.next()["event"], "call_start");
    receiver.stop();
    let end = console.next();
    assert_eq!(
        (end["event"].as_str(), end["end_reason"].as_str()),
        (Some("call_end"), Some("shutdown"))
    );
}
