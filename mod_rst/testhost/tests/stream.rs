//! A call from mod_rst (in fs-testhost) that asks for a live stream by its
//! channel variable `rst_stream`: the receiver streams it to a real WebSocket
//! consumer in the `twilio` format, and what the consumer decodes is what
//! the receiver recorded, sample for sample. With the module's default
//! `frames-per-datagram` (`auto`) the streamed call's frames go one to a
//! datagram once the receiver says LIVE, the call nobody hears three.

mod common;

use base64::Engine as _;
use common::*;
use udp_server::stream::{CallsSpec, Format, ProfileSpec, Tracks};
use udp_server::Settings;

#[test]
fn a_call_with_rst_stream_reaches_a_twilio_consumer_as_recorded() {
    let (url, connections) = consumer();
    let receiver = Receiver::with(Settings {
        stream: vec![ProfileSpec {
            name: "bot".into(),
            format: Some(Format::Twilio),
            tracks: Some(Tracks::Both),
            calls: Some(CallsSpec::Word("asked".into())),
            ..ProfileSpec::simple(url)
        }],
        ..Settings::default()
    });
    let conf = conf_for(&receiver, &[]);
    let mut host = Host::start();
    host.load(conf.path());
    let (streamed, plain) = (uuid(0x510), uuid(0x511));
    for u in [&streamed, &plain] {
        session(&mut host, u);
    }
    host.ok(&format!("var {streamed} rst_stream=bot"));
    for u in [&streamed, &plain] {
        host.ok(&format!("app {u} rst"));
    }
    // The consumer took the streamed call: the receiver said LIVE to the module.
    wait_for("a LIVE from the receiver", || {
        let status = host.ok("api rst_status");
        let counters: serde_json::Value =
            serde_json::from_str(status["output"].as_str()?.trim()).ok()?;
        (counters["lives_received"].as_u64()? >= 1).then_some(())
    });
    for u in [&streamed, &plain] {
        host.ok(&format!("media {u} 1 read_hz=1000 write_hz=500"));
    }
    host.ok("wait");
    for u in [&streamed, &plain] {
        host.ok(&format!("hangup {u}"));
    }
    let record = receiver.record(&streamed);
    assert!(
        receiver.record(&plain).get("streams").is_none(),
        "only the call that asked"
    );
    let plain = receiver.record(&plain);
    finish(host);
    for dir in ["R", "W"] {
        let datagrams = |record: &serde_json::Value| record["directions"][dir]["packets"].clone();
        assert_eq!(
            datagrams(&record),
            50,
            "heard: a frame a datagram: {record}"
        );
        let gathered = datagrams_by_default(50, 160);
        assert_eq!(datagrams(&plain), gathered, "unheard: three: {plain}");
    }
    let stream = &record["streams"][0];
    assert_eq!(stream["profile"], "bot", "{record}");
    assert_eq!(stream["dropped_ms"], 0, "{record}");
    let messages = wait_for("the consumer's connection to end", || {
        connections.lock().unwrap().first().cloned()
    });
    assert_eq!(messages[0]["event"], "connected");
    assert_eq!(messages[1]["start"]["callSid"], streamed.as_str());
    assert_eq!(messages[1]["start"]["customParameters"]["caller"], "1001");
    assert_eq!(messages.last().unwrap()["event"], "stop");
    for (track, dir) in [("inbound", "R"), ("outbound", "W")] {
        let decoded: Vec<i16> = messages
            .iter()
            .filter(|m| m["event"] == "media" && m["media"]["track"] == track)
            .flat_map(|m| {
                base64::engine::general_purpose::STANDARD
                    .decode(m["media"]["payload"].as_str().unwrap())
                    .unwrap()
            })
            .map(rst_codec::ulaw_to_linear)
            .collect();
        let (_, recorded) = direction_wav(&record, dir);
        assert_samples(&format!("{track} as streamed"), &decoded, &recorded);
    }
}
