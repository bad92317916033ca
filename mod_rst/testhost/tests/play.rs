//! Audio back into the call through the real `mod_rst.so` in the test host:
//! a bot (a real WebSocket server, `twilio` format) answers a call the
//! receiver streams to it; the receiver paces its audio to the module as
//! PLAY; the module plays it into what the channel writes. What the caller
//! heard (the host's write path after WRITE_REPLACE) is checked sample by
//! sample, and so is the recording's W.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use rst_proto::{Ack, Mark, Message, PayloadType, Play, Uuid};
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
    call_with(receiver, &[("play-mode", play_mode)], u, seconds)
}

/// [`call`], with the module's parameters given.
fn call_with(
    receiver: &Receiver,
    params: &[(&str, &str)],
    u: &str,
    seconds: u32,
) -> (Host, tempfile::TempDir) {
    let conf = conf_for(receiver, params);
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
    bot_speaks("1", 0x900);
}

/// The same with the call's audio gathered three frames to a datagram: the
/// bot hears it later, in bigger pieces; what it says back is paced as before.
#[test]
fn a_bot_speaks_into_a_call_that_gathers_frames() {
    bot_speaks("3", 0x908);
}

fn bot_speaks(frames_per_datagram: &str, n: u32) {
    let speech = speech(8000);
    let (url, got) = bot(Script {
        say: speech.clone(),
        mark: Some("said it"),
        clear_after: None,
    });
    let receiver = receiver_for(url);
    let u = uuid(n);
    let params = [
        ("play-mode", "replace"),
        ("frames-per-datagram", frames_per_datagram),
    ];
    let (mut host, _conf) = call_with(&receiver, &params, &u, 6);
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
    // The call's audio went as many frames to a datagram as asked (the
    // last datagram of a direction may hold fewer).
    let frames = record["directions"]["R"]["samples"].as_u64().unwrap() / 160;
    let per_datagram: u64 = frames_per_datagram.parse().unwrap();
    assert_eq!(
        record["directions"]["R"]["packets"],
        frames.div_ceil(per_datagram),
        "{record}"
    );
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

/// A bare rst peer in the receiver's place: a UDP socket speaking the
/// protocol through rst-proto, so that every datagram is the test's own.
struct BarePeer {
    socket: UdpSocket,
    /// Where the module's INV came from: where audio back goes.
    module: SocketAddr,
    uuid: String,
}

impl BarePeer {
    /// A loaded host (`play-mode = replace`) with call `u` (made with
    /// `session_options`) streaming to the peer, its INV acknowledged.
    fn call(u: &str, session_options: &str) -> (BarePeer, Host, tempfile::TempDir) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let conf = conf_for_addr(socket.local_addr().unwrap(), &[("play-mode", "replace")]);
        let mut host = Host::start();
        host.load(conf.path());
        host.ok(&format!("session {u} {session_options}"));
        host.ok(&format!("app {u} rst"));
        let mut buf = [0u8; 2048];
        let module = wait_for("the INV", || {
            let (n, from) = socket.recv_from(&mut buf).ok()?;
            match Message::parse(&buf[..n]).ok()? {
                // This call's: another test's module may still send to a reused port.
                Message::Inv(inv) if inv.uuid.as_str() == u => {
                    assert!(inv.extensions.play(), "the module says it can play");
                    Some(from)
                }
                _ => None,
            }
        });
        let peer = BarePeer {
            socket,
            module,
            uuid: u.to_owned(),
        };
        peer.send_from(&peer.socket, |uuid| {
            Message::Ack(Ack {
                uuid,
                rtp_ports: None,
            })
        });
        (peer, host, conf)
    }

    fn send_from<'a>(&'a self, socket: &UdpSocket, message: impl FnOnce(Uuid<'a>) -> Message<'a>) {
        let datagram = message(Uuid::new(&self.uuid).unwrap()).to_vec().unwrap();
        socket.send_to(&datagram, self.module).unwrap();
    }

    fn play_from(&self, socket: &UdpSocket, sequence: u32, ulaw: &[u8]) {
        self.send_from(socket, |uuid| {
            Message::Play(Play {
                uuid,
                sequence,
                payload_type: PayloadType::PCMU,
                payload: ulaw,
            })
        });
    }

    fn play(&self, sequence: u32, ulaw: &[u8]) {
        self.play_from(&self.socket, sequence, ulaw);
    }

    fn mark(&self, name: &str) {
        self.send_from(&self.socket, |uuid| {
            Message::Mark(Mark {
                uuid,
                wire_name: name,
                cleared: false,
            })
        });
    }

    /// MARKs the module sends back, until there are `count`.
    fn marks(&self, count: usize) -> Vec<(String, bool)> {
        let mut marks = Vec::new();
        let mut buf = [0u8; 2048];
        wait_for("the marks back", || {
            // Only the module's: a stray datagram to a reused port is skipped.
            if let Ok((n, from)) = self.socket.recv_from(&mut buf) {
                if let (true, Ok(Message::Mark(mark))) =
                    (from == self.module, Message::parse(&buf[..n]))
                {
                    marks.push((mark.name(), mark.cleared));
                }
            }
            (marks.len() == count).then_some(())
        });
        marks
    }
}

/// Waits until the module has taken `marks` MARKs (and so the PLAYs sent
/// before them): everything is queued before the call's media starts, so
/// nothing can underrun between them.
fn wait_taken(host: &mut Host, marks: u32) {
    let counted = format!("\"marks\":{marks},");
    wait_for("the module to take the PLAYs", || {
        let status = host.ok("api rst_status");
        let text = status["output"].as_str().unwrap_or("").to_owned();
        text.contains(&counted).then_some(())
    });
}

/// µ-law PLAY (PT 00) with one datagram lost, two marks, and a stranger's
/// PLAY. The caller hears the frames in order with a frame of silence for
/// the lost one; the marks come back in order, each after its audio; the
/// stranger is ignored and counted.
#[test]
fn ulaw_play_with_a_gap_and_marks_in_order_through_the_module() {
    let u = uuid(0x904);
    let (peer, mut host, _conf) = BarePeer::call(&u, "");
    // Ten numbered frames; the fifth (sequence 4) is lost on the way.
    let frames: Vec<Vec<u8>> = (0..10u8)
        .map(|k| {
            (0..160)
                .map(|n| ulaw(((n as i16 % 40) - 20) * 200 + i16::from(k) * 16 + 8))
                .collect()
        })
        .collect();
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.play_from(&stranger, 4, &frames[4]);
    for sequence in 0..4 {
        peer.play(sequence, &frames[sequence as usize]);
    }
    peer.mark("first");
    for sequence in 5..10 {
        peer.play(sequence, &frames[sequence as usize]);
    }
    peer.mark("second");
    wait_taken(&mut host, 2);
    host.ok(&format!("media {u} 2 write_hz=500"));
    assert_eq!(
        peer.marks(2),
        [("first".to_owned(), false), ("second".to_owned(), false)],
        "in order, played"
    );
    host.ok("wait");
    let caller_heard = heard(&mut host, &u);
    let status = host.ok("api rst_status");
    let counters: serde_json::Value =
        serde_json::from_str(status["output"].as_str().unwrap().trim()).unwrap();
    host.ok(&format!("hangup {u}"));
    finish(host);

    let decoded: Vec<Vec<i16>> = frames
        .iter()
        .map(|f| f.iter().map(|&b| rst_codec::ulaw_to_linear(b)).collect())
        .collect();
    let start = find(&caller_heard, &decoded[0]).expect("the first frame is heard");
    let mut expected = Vec::new();
    for (k, frame) in decoded.iter().enumerate() {
        if k == 4 {
            expected.extend_from_slice(&[0; 160]);
        } else {
            expected.extend_from_slice(frame);
        }
    }
    assert_samples(
        "the ten frames, the lost one as silence",
        &caller_heard[start..start + expected.len()],
        &expected,
    );
    let play = &counters["play"];
    assert_eq!(play["gap_frames"], 1, "{counters}");
    assert_eq!(play["foreign"], 1, "{counters}");
    assert_eq!(play["frames_played"], 10, "{counters}");
}

/// µ-law (8 kHz) PLAY into a 16 kHz call: the module resamples it to the
/// rate the channel writes; the caller hears the bot's 500 Hz as 500 Hz,
/// all of it, and the mark after it.
#[test]
fn ulaw_play_into_a_wideband_call_is_resampled() {
    let u = uuid(0x905);
    let (peer, mut host, _conf) = BarePeer::call(&u, "codec=L16 rate=16000");
    let tone: Vec<u8> = tone(500.0, 8000.0, 8000, 0, 4000)
        .into_iter()
        .map(ulaw)
        .collect();
    for (k, payload) in tone.chunks(160).enumerate() {
        peer.play(k as u32, payload);
    }
    peer.mark("done");
    wait_taken(&mut host, 1);
    host.ok(&format!("media {u} 2 write_hz=0 amp=0"));
    assert_eq!(peer.marks(1), [("done".to_owned(), false)]);
    host.ok("wait");
    let caller_heard = heard(&mut host, &u);
    host.ok(&format!("hangup {u}"));
    finish(host);
    // The channel's own audio is silence here: what is not silence is the bot.
    let first = caller_heard
        .iter()
        .position(|&s| s != 0)
        .expect("the bot is heard");
    let last = caller_heard.iter().rposition(|&s| s != 0).unwrap();
    let spoken = last + 1 - first;
    assert!(
        (7900..=8000).contains(&spoken),
        "half a second at 16 kHz: {spoken} samples"
    );
    let middle = &caller_heard[first + 2000..first + 6000];
    let periods = middle.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
    assert!(
        (124..=126).contains(&periods),
        "500 Hz: {periods} periods in a quarter second"
    );
}

/// The functions of the bugs on `u`'s channel, first to last.
fn bug_functions(host: &mut Host, u: &str) -> Vec<String> {
    let stats = host.ok(&format!("stats {u}"));
    stats["bugs"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|bug| bug["function"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// The playback bug costs FreeSWITCH a copy of every frame written, and most
/// calls never hear anything back: it goes on the channel at the call's
/// first audio back, not when the stream starts, and first in the list (so
/// the recording's W has what the caller hears).
#[test]
fn the_playback_bug_goes_on_at_the_first_audio_back() {
    let u = uuid(0x906);
    let (peer, mut host, _conf) = BarePeer::call(&u, "");
    host.ok(&format!("media {u} 0.5 write_hz=500"));
    host.ok("wait");
    assert_eq!(bug_functions(&mut host, &u), ["rst"], "no playback bug yet");
    let stats = host.ok(&format!("stats {u}"));
    let replaced = stats["callbacks"]["WRITE_REPLACE"]["count"].as_u64();
    assert_eq!(replaced.unwrap_or(0), 0, "{stats}");

    let frame = vec![ulaw(4000); 160];
    peer.play(0, &frame);
    wait_for("the playback bug", || {
        (bug_functions(&mut host, &u) == ["rst_play", "rst"]).then_some(())
    });
    host.ok(&format!("media {u} 0.5 write_hz=500"));
    host.ok("wait");
    let caller_heard = heard(&mut host, &u);
    let decoded: Vec<i16> = frame
        .iter()
        .map(|&b| rst_codec::ulaw_to_linear(b))
        .collect();
    assert!(
        find(&caller_heard, &decoded).is_some(),
        "the PLAY was heard"
    );
    host.ok(&format!("hangup {u}"));
    assert_eq!(host.ok(&format!("stats {u}"))["bugs_added"], 2);
    finish(host);
}

/// The first PLAY comes after the stream was stopped (the receiver did not
/// know yet): the sender thread attaches the playback bug, sees the stream
/// stopped, and takes it off again; nothing is left on the channel (an
/// orphaned bug would call into the module after unload: `finish` checks).
#[test]
fn a_play_after_the_stream_stopped_leaves_no_playback_bug() {
    let u = uuid(0x907);
    let (peer, mut host, _conf) = BarePeer::call(&u, "");
    // The INV's ACK taken first (an ACK while closing acknowledges the BYE).
    wait_for("the module to take the ACK", || {
        let status = host.ok("api rst_status");
        let text = status["output"].as_str().unwrap_or("").to_owned();
        text.contains("\"acks_received\":1,").then_some(())
    });
    let stopped = host.ok(&format!("api uuid_rst {u} stop"));
    assert!(
        stopped["output"].as_str().unwrap_or("").starts_with("+OK"),
        "{stopped}"
    );
    // The module's stream lives on until its BYE is acknowledged (never,
    // here), so the PLAY reaches it.
    peer.play(0, &[ulaw(4000); 160]);
    wait_for("the late playback bug added and taken off", || {
        let stats = host.ok(&format!("stats {u}"));
        (stats["bugs_added"] == 2 && stats["bugs"] == serde_json::json!([])).then_some(())
    });
    host.ok(&format!("hangup {u}"));
    finish(host);
}
