//! Audio back into the call through the real `mod_rst.so` in the test host:
//! a bot (a real WebSocket server, `twilio` format) answers a call the
//! receiver streams to it; the receiver paces its audio to the module as
//! PLAY; the module plays it into what the channel writes. What the caller
//! heard (the host's write path after WRITE_REPLACE) is checked sample by
//! sample, and so is the recording's W.

mod common;

use std::time::Duration;

use common::*;
use udp_server::stream::{CallsSpec, Format, ProfileSpec, Tracks};
use udp_server::Settings;

fn receiver_for(url: String) -> Receiver {
    Receiver::with(Settings {
        stream: vec![ProfileSpec {
            name: "bot".into(),
            format: Some(Format::Twilio),
            tracks: Some(Tracks::Inbound),
            calls: Some(CallsSpec::Word("all".into())),
            ..ProfileSpec::simple(url)
        }],
        ..Settings::default()
    })
}

/// `samples` of 700 Hz in µ-law: what the bots say. The first two bytes of
/// each 20 ms frame number it, so no two frames are alike and each frame
/// heard says which it was.
fn speech(samples: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..samples)
        .map(|n| {
            ulaw((7000.0 * (2.0 * std::f64::consts::PI * 700.0 * n as f64 / 8000.0).sin()) as i16)
        })
        .collect();
    for (k, frame) in bytes.chunks_mut(160).enumerate() {
        frame[0] = (k % 120) as u8 + 1;
        frame[1] = (k / 120) as u8 + 1;
    }
    bytes
}

/// A loaded host with one call `u` streaming to `receiver`, its media running
/// for `seconds` with the channel's own 500 Hz written.
fn call(receiver: &Receiver, play_mode: &str, u: &str, seconds: u32) -> (Host, tempfile::TempDir) {
    let conf = conf_for(receiver, &[("play-mode", play_mode)]);
    let mut host = Host::start();
    host.load(conf.path());
    session(&mut host, u);
    host.ok(&format!("app {u} rst"));
    host.ok(&format!("media {u} {seconds} write_hz=500"));
    (host, conf)
}

/// How many of the bot's 20 ms frames (`expected`, decoded) the caller heard.
/// They must come in order, each once, whole; between them the channel's own
/// audio may come (an underrun on a loaded machine plays it for a frame).
fn bot_frames_heard(caller_heard: &[i16], expected: &[i16]) -> usize {
    let frames: Vec<&[i16]> = expected.chunks(160).collect();
    let mut next = 0;
    for (i, heard) in caller_heard.chunks(160).enumerate() {
        if let Some(k) = frames.iter().position(|frame| *frame == heard) {
            assert_eq!(
                k, next,
                "the bot's frame {k} came when {next} was due (heard frame {i})"
            );
            next += 1;
        }
    }
    next
}

/// Where `run` starts in `samples`, if it is there whole.
fn find(samples: &[i16], run: &[i16]) -> Option<usize> {
    samples.windows(run.len()).position(|w| w == run)
}

fn heard(host: &mut Host, u: &str) -> Vec<i16> {
    serde_json::from_value(host.ok(&format!("heard {u}"))["samples"].clone()).unwrap()
}

#[test]
fn a_bot_speaks_into_a_mod_rst_call_the_caller_hears_it_and_w_records_it() {
    let speech = speech(8000);
    let (url, got) = bot(Script {
        say: speech.clone(),
        mark: Some("said it"),
        clear_after: None,
    });
    let receiver = receiver_for(url);
    let u = uuid(0x900);
    let (mut host, _conf) = call(&receiver, "replace", &u, 6);
    host.ok("wait");
    let caller_heard = heard(&mut host, &u);
    let events = host.ok("events");
    host.ok(&format!("hangup {u}"));
    let record = receiver.record(&u);
    finish(host);

    // The bot's second, exactly (µ-law in, µ-law out: no requantization).
    let expected: Vec<i16> = speech
        .iter()
        .map(|&b| rst_codec::ulaw_to_linear(b))
        .collect();
    assert_eq!(
        bot_frames_heard(&caller_heard, &expected),
        50,
        "every frame of the bot's second, in order"
    );
    // Before it, the channel's own 500 Hz.
    assert!(find(&caller_heard, &expected[..160]).is_some_and(|at| at > 0));
    // The recording's W is what the caller heard.
    let (_, w) = direction_wav(&record, "W");
    assert!(
        find(&w, &expected[..160]).is_some(),
        "W has the bot's voice"
    );
    // The mark came back to the bot, as Twilio says it, after its audio.
    let streams = wait_for("the bot's stream to end", || {
        got.lock().unwrap().first().cloned()
    });
    let marks: Vec<_> = streams.iter().filter(|m| m["event"] == "mark").collect();
    assert_eq!(marks.len(), 1, "{marks:?}");
    assert_eq!(marks[0]["mark"]["name"], "said it");
    let fired: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subclass"].as_str().unwrap_or(""))
        .collect();
    for subclass in ["rst::play_start", "rst::mark", "rst::play_stop"] {
        assert!(fired.contains(&subclass), "{subclass} in {fired:?}");
    }
}

#[test]
fn a_bots_clear_stops_its_audio_at_once_and_its_mark_is_reported_cleared() {
    let speech = speech(8000 * 4);
    let (url, got) = bot(Script {
        say: speech.clone(),
        mark: Some("end of sentence"),
        clear_after: Some(Duration::from_secs(1)),
    });
    let receiver = receiver_for(url);
    let u = uuid(0x901);
    let (mut host, _conf) = call(&receiver, "replace", &u, 6);
    host.ok("wait");
    let caller_heard = heard(&mut host, &u);
    host.ok(&format!("hangup {u}"));
    finish(host);
    let expected: Vec<i16> = speech
        .iter()
        .map(|&b| rst_codec::ulaw_to_linear(b))
        .collect();
    // The clear came a second into the 4 s sentence: the rest is never heard.
    let played = bot_frames_heard(&caller_heard, &expected);
    assert!(
        (1..100).contains(&played),
        "the clear cut the sentence ({played} of 200 frames played)"
    );
    let streams = wait_for("the bot's stream to end", || {
        got.lock().unwrap().first().cloned()
    });
    let marks: Vec<_> = streams.iter().filter(|m| m["event"] == "mark").collect();
    assert_eq!(marks.len(), 1, "the cleared mark is reported: {marks:?}");
}

#[test]
fn unloading_while_audio_is_queued_is_clean() {
    let speech = vec![ulaw(3000); 8000 * 10];
    let (url, _got) = bot(Script {
        say: speech,
        mark: Some("never"),
        clear_after: None,
    });
    let receiver = receiver_for(url);
    let conf = conf_for(&receiver, &[]);
    let mut host = Host::start();
    host.load(conf.path());
    let u = uuid(0x902);
    session(&mut host, &u);
    host.ok(&format!("app {u} rst"));
    host.ok(&format!("media {u} 30"));
    // Unload once the bot's audio is being played.
    wait_for("the bot's audio in the call", || {
        let status = host.ok("api rst_status");
        let text = status["output"].as_str().unwrap_or("").to_owned();
        (!text.contains("\"frames_played\":0,")).then_some(())
    });
    finish(host);
    let record = receiver.record(&u);
    assert_eq!(record["end_reason"], "bye", "{record}");
}

/// The receiver stops mid-sentence: the module plays out the little it holds
/// (a few frames) and the caller hears the channel again; the call goes on.
#[test]
fn the_receiver_vanishing_mid_sentence_leaves_the_call_its_own_audio() {
    let speech = speech(8000 * 3);
    let (url, _got) = bot(Script {
        say: speech.clone(),
        mark: None,
        clear_after: None,
    });
    let mut receiver = receiver_for(url);
    let u = uuid(0x903);
    let (mut host, _conf) = call(&receiver, "replace", &u, 4);
    wait_for("the bot's audio in the call", || {
        let status = host.ok("api rst_status");
        let text = status["output"].as_str().unwrap_or("").to_owned();
        (!text.contains("\"frames_played\":0,")).then_some(())
    });
    receiver.stop();
    host.ok("wait");
    let caller_heard = heard(&mut host, &u);
    let stats = host.ok(&format!("stats {u}"));
    assert_eq!(stats["hung_up"], false, "the call goes on");
    host.ok(&format!("hangup {u}"));
    finish(host);
    let expected: Vec<i16> = speech
        .iter()
        .map(|&b| rst_codec::ulaw_to_linear(b))
        .collect();
    let played = bot_frames_heard(&caller_heard, &expected);
    assert!(
        (1..150).contains(&played),
        "the sentence stopped with the receiver ({played} of 150 frames)"
    );
    // The call went on: the channel's own audio after the bot's last frame.
    let last = find(&caller_heard, &expected[(played - 1) * 160..played * 160]).unwrap();
    assert!(caller_heard.len() > last + 160 + 800, "the call went on");
}
