//! mod_rst in a real FreeSWITCH. Runs only when `FREESWITCH_PREFIX` names an
//! installed FreeSWITCH 1.10 (with bin/freeswitch, bin/fs_cli and mod/ with
//! mod_loopback, mod_tone_stream, mod_event_socket, mod_dptools, mod_commands,
//! mod_dialplan_xml); otherwise it says SKIPPED and passes. See the README for
//! building one from the public source.
//!
//! It starts that FreeSWITCH on loopback with a configuration of its own, loads
//! the built module, originates loopback calls that play tones, starts `rst`
//! from the dialplan (with and without the original README's quotes) and with
//! `uuid_rst` over the event socket, and checks that a real receiver recorded
//! each tone in the right direction; one call is on a 16 kHz L16 channel,
//! whose frames cross the module's queue in pieces. Then a real SIP call from sipp (its
//! `uac_pcap` scenario: PCMA audio, then an RFC 2833 digit 1) asks for a live
//! stream (`rst_stream`): the digit reaches the record and the stream's `dtmf`
//! message. Last, a bot answers a loopback call's stream with 3 s of 700 Hz
//! and a mark, and clears after 1 s: the call's W carries the bot's voice for
//! about a second, then the channel's own tone, and the mark comes back cleared.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::freeswitch::{free_port, start_freeswitch, Setup};
use common::Script;
use common::*;

/// The dialplan of the test's calls (see `Setup`): `1000` answers with rst
/// on answer and plays a tone, `1001` a tone without rst, `service` parks
/// a call streamed to the `bot` profile, `1003` streams to `playbot` while
/// a tone plays, `1002` starts rst with quoted arguments.
fn extensions(receiver_port: u16) -> String {
    format!(
        r#"<extension name="rst_on_answer">
        <condition field="destination_number" expression="^1000$">
          <action application="set" data="execute_on_answer=rst 127.0.0.1 {receiver_port}"/>
          <action application="answer"/>
          <action application="playback" data="tone_stream://%(3000,0,800)"/>
          <action application="hangup"/>
        </condition>
      </extension>
      <extension name="tone_only">
        <condition field="destination_number" expression="^1001$">
          <action application="answer"/>
          <action application="playback" data="tone_stream://%(4000,0,1200)"/>
          <action application="hangup"/>
        </condition>
      </extension>
      <extension name="sip_bot">
        <condition field="destination_number" expression="^service$">
          <action application="set" data="rst_stream=bot"/>
          <action application="set" data="execute_on_answer=rst 127.0.0.1 {receiver_port}"/>
          <action application="answer"/>
          <action application="park"/>
        </condition>
      </extension>
      <extension name="bot_talks">
        <condition field="destination_number" expression="^1003$">
          <action application="set" data="rst_stream=playbot"/>
          <action application="set" data="execute_on_answer=rst 127.0.0.1 {receiver_port}"/>
          <action application="answer"/>
          <action application="playback" data="tone_stream://%(6000,0,500)"/>
          <action application="hangup"/>
        </condition>
      </extension>
      <extension name="rst_on_answer_quoted">
        <condition field="destination_number" expression="^1002$">
          <action application="set" data="execute_on_answer='rst 127.0.0.1 {receiver_port}'"/>
          <action application="answer"/>
          <action application="playback" data="tone_stream://%(3000,0,600)"/>
          <action application="hangup"/>
        </condition>
      </extension>"#
    )
}

fn setup(receiver_port: u16, sip_port: u16, extensions: &str) -> Setup<'_> {
    Setup {
        receiver_port,
        sip_port,
        max_sessions: 100,
        loglevel: "debug",
        rtp_ports: (23000, 23999),
        sofia: &[
            ("inbound-codec-prefs", "PCMA,PCMU"),
            ("outbound-codec-prefs", "PCMA,PCMU"),
            ("dtmf-type", "rfc2833"),
            ("rfc2833-pt", "101"),
        ],
        extensions,
        rst: &[],
    }
}

/// Power of `hz` in `samples` (Goertzel), normalised by the signal's energy.
fn tone_share(samples: &[i16], rate: f64, hz: f64) -> f64 {
    let coefficient = 2.0 * (2.0 * std::f64::consts::PI * hz / rate).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut energy = 0.0;
    for &sample in samples {
        let x = f64::from(sample);
        let s0 = x + coefficient * s1 - s2;
        s2 = s1;
        s1 = s0;
        energy += x * x;
    }
    let power = s1 * s1 + s2 * s2 - coefficient * s1 * s2;
    if energy == 0.0 {
        0.0
    } else {
        power / (energy * samples.len() as f64 / 2.0)
    }
}

/// Asserts the direction carries mostly `hz` and the other does not.
fn assert_tone(record: &serde_json::Value, direction: &str, hz: f64) {
    let other = if direction == "R" { "W" } else { "R" };
    let (spec, samples) = direction_wav(record, direction);
    let rate = f64::from(spec.sample_rate);
    let share = tone_share(&samples, rate, hz);
    assert!(
        samples.len() as f64 > rate,
        "{direction}: only {} samples",
        samples.len()
    );
    assert!(
        share > 0.5,
        "{direction} of {}: {hz} Hz is only {share:.3} of the signal",
        record["uuid"]
    );
    if let Some(other_samples) = record["directions"][other]["wav"]
        .get(0)
        .map(|_| direction_wav(record, other).1)
    {
        let leak = tone_share(&other_samples, rate, hz);
        assert!(
            leak < 0.1,
            "{other} of {} also carries {hz} Hz ({leak:.3})",
            record["uuid"]
        );
    }
}

#[test]
fn a_real_freeswitch_streams_its_calls_to_the_receiver() {
    let Some(prefix) = std::env::var_os("FREESWITCH_PREFIX").map(PathBuf::from) else {
        eprintln!("SKIPPED a_real_freeswitch_streams_its_calls_to_the_receiver: set FREESWITCH_PREFIX to an installed FreeSWITCH 1.10 (see README)");
        return;
    };
    assert!(
        prefix.join("bin/freeswitch").exists(),
        "no bin/freeswitch under FREESWITCH_PREFIX={}",
        prefix.display()
    );
    let (bot, connections) = consumer();
    let speech: Vec<u8> = (0..8000 * 3)
        .map(|n| {
            ulaw(
                (7000.0 * (2.0 * std::f64::consts::PI * 700.0 * f64::from(n) / 8000.0).sin())
                    as i16,
            )
        })
        .collect();
    let (playbot, spoken_to) = common::bot(Script {
        say: speech,
        mark: Some("reply"),
        clear_after: Some(Duration::from_secs(1)),
    });
    let profile = |name: &str, url: String| udp_server::stream::ProfileSpec {
        name: name.into(),
        format: Some(udp_server::stream::Format::Twilio),
        calls: Some(udp_server::stream::CallsSpec::Word("asked".into())),
        ..udp_server::stream::ProfileSpec::simple(url)
    };
    let receiver = Receiver::with(udp_server::Settings {
        stream: vec![profile("bot", bot), profile("playbot", playbot)],
        ..udp_server::Settings::default()
    });
    let sip_port = free_port();
    let extensions = extensions(receiver.addr.port());
    let setup = setup(receiver.addr.port(), sip_port, &extensions);
    let fs = start_freeswitch(&prefix, &module_path(), &|esl_port, logfile| {
        setup.xml(esl_port, logfile)
    });
    assert_eq!(
        fs.cli("module_exists mod_rst"),
        "true",
        "mod_rst did not load"
    );
    assert!(fs.cli("show application rst").contains("rst"));

    // 1. The dialplan starts rst on answer; the called leg plays 800 Hz: what it
    //    writes to the channel is W.
    assert!(fs
        .cli("originate loopback/1000/default &park")
        .starts_with("+OK"));
    // 2. uuid_rst over the event socket on a parked leg that hears 1200 Hz: R.
    let parked = "4f8e0b8a-8d1c-4c57-9a6b-3a2f7f0e1d20";
    assert!(fs
        .cli(&format!(
            "originate {{origination_uuid={parked}}}loopback/1001/default &park"
        ))
        .starts_with("+OK"));
    common::wait_for("the parked leg", || {
        (fs.cli(&format!("uuid_exists {parked}")) == "true").then_some(())
    });
    let reply = fs.cli(&format!(
        "uuid_rst {parked} 127.0.0.1 {}",
        receiver.addr.port()
    ));
    assert!(reply.starts_with("+OK"), "uuid_rst: {reply}");
    assert!(fs
        .cli("uuid_rst 00000000-0000-0000-0000-000000000000")
        .starts_with("-ERR no such channel"));
    // 3. The original README's quoted form: 600 Hz on W.
    assert!(fs
        .cli("originate loopback/1002/default &park")
        .starts_with("+OK"));
    // 4. As 1, on a 16 kHz L16 channel: its 640-byte frames go through the
    //    queue in pieces (320 bytes a slot) and must come out whole.
    //    mod_loopback reads `loopback_initial_codec` before it sets the
    //    originate's variables on the channel: a global it is, for this call
    //    alone (then back to mod_loopback's own default).
    fs.cli("global_setvar loopback_initial_codec=L16@16000h@20i");
    let wideband = fs.cli("originate loopback/1000/default &park");
    fs.cli("global_setvar loopback_initial_codec=L16@8000h@20i");
    assert!(wideband.starts_with("+OK"), "{wideband}");

    let records = receiver.wait_records(4);
    let by_tone = |direction: &str, hz: f64, rate: u32| {
        records
            .iter()
            .find(|r| {
                r["directions"][direction]["wav"].get(0).is_some() && {
                    let (spec, samples) = direction_wav(r, direction);
                    spec.sample_rate == rate
                        && tone_share(&samples, f64::from(spec.sample_rate), hz) > 0.5
                }
            })
            .unwrap_or_else(|| {
                panic!("no record with {hz} Hz at {rate} Hz on {direction}: {records:#?}")
            })
    };
    assert_tone(by_tone("W", 800.0, 8000), "W", 800.0);
    let heard = by_tone("R", 1200.0, 8000);
    assert_eq!(heard["uuid"], parked);
    assert_tone(heard, "R", 1200.0);
    assert_tone(by_tone("W", 600.0, 8000), "W", 600.0);
    let wideband = by_tone("W", 800.0, 16000);
    assert_tone(wideband, "W", 800.0);
    // Whole 20 ms frames of 16 kHz L16 (640 bytes, two to a datagram at the
    // default `frames-per-datagram`, nobody listening).
    let w = &wideband["directions"]["W"];
    let bytes = w["bytes"].as_u64().unwrap();
    assert_eq!(bytes % 640, 0, "{wideband:#}");
    assert_eq!(
        w["packets"],
        datagrams_by_default(bytes / 640, 640),
        "two whole frames a datagram: {wideband:#}"
    );
    for record in &records {
        assert_eq!(record["end_reason"], "bye", "{record:#}");
        assert!(record["caller"].is_string() && record["callee"].is_string());
    }
    let status = fs.cli("rst_status");
    assert!(status.contains("\"streams_started\":4"), "{status}");
    assert!(
        connections.lock().unwrap().is_empty(),
        "no call above asked for a stream"
    );

    // 4. A real SIP call with an RFC 2833 digit, streamed to the bot.
    let scenario = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/usr/share/sip-tester", scenario.path().join("pcap")).unwrap();
    let sipp = Command::new("sipp")
        .current_dir(scenario.path())
        .args([
            "-sn",
            "uac_pcap",
            "-s",
            "service",
            "-m",
            "1",
            "-i",
            "127.0.0.1",
        ])
        .args([
            "-p",
            &free_port().to_string(),
            "-mp",
            &free_port().to_string(),
        ])
        .args(["-timeout", "60s", "-nostdin", "-trace_err"])
        .arg(format!("127.0.0.1:{sip_port}"))
        .output()
        .expect("sipp runs (apt-get install sip-tester)");
    assert!(
        sipp.status.success(),
        "sipp: {}\n{}",
        String::from_utf8_lossy(&sipp.stdout),
        String::from_utf8_lossy(&sipp.stderr)
    );
    let record = wait_for("the SIP call's record", || {
        records_in(receiver.dir.path())
            .into_iter()
            .find(|r| r["caller"] == "sipp")
    });
    let digits: Vec<&str> = record["dtmf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digit"].as_str().unwrap())
        .collect();
    assert_eq!(digits, ["1"], "{record:#}");
    assert_eq!(record["dtmf"][0]["direction"], "R");
    assert_eq!(record["streams"][0]["profile"], "bot", "{record:#}");
    let messages = wait_for("the bot's connection to end", || {
        connections.lock().unwrap().first().cloned()
    });
    let dtmf: Vec<_> = messages.iter().filter(|m| m["event"] == "dtmf").collect();
    assert_eq!(dtmf.len(), 1, "{dtmf:?}");
    assert_eq!(dtmf[0]["dtmf"]["digit"], "1");
    assert_eq!(messages.last().unwrap()["event"], "stop");

    // 5. A bot talks into a call, and barges in on itself after a second.
    assert!(fs
        .cli("originate loopback/1003/default &park")
        .starts_with("+OK"));
    let record = wait_for("the talking bot's call", || {
        records_in(receiver.dir.path())
            .into_iter()
            .find(|r| r["streams"][0]["profile"] == "playbot")
    });
    let (spec, w) = direction_wav(&record, "W");
    let rate = f64::from(spec.sample_rate);
    // 20 ms windows: where the bot's 700 Hz is, and where the channel's 500 Hz.
    let window = (rate / 50.0) as usize;
    let bot_windows: Vec<bool> = w
        .chunks(window)
        .map(|c| tone_share(c, rate, 700.0) > 0.3)
        .collect();
    let first = bot_windows
        .iter()
        .position(|&b| b)
        .expect("the bot's voice is in W");
    let spoken = bot_windows[first..].iter().take_while(|&&b| b).count();
    let after = &w[(first + spoken) * window..];
    eprintln!(
        "the bot's voice in W: {} ms from {} ms into the call; after it, 500 Hz holds {:.2} of the first 200 ms",
        spoken * 20,
        first * 20,
        tone_share(&after[..(rate / 5.0) as usize], rate, 500.0)
    );
    assert!(
        (40..=75).contains(&spoken),
        "about a second of the bot (cleared after 1 s of 3): {} ms",
        spoken * 20
    );
    assert!(
        bot_windows[first + spoken..].iter().all(|&b| !b),
        "nothing of the bot after the clear"
    );
    assert!(
        tone_share(&after[..(rate / 5.0) as usize], rate, 500.0) > 0.5,
        "then the channel's own tone"
    );
    let got = wait_for("the talking bot's stream to end", || {
        spoken_to.lock().unwrap().first().cloned()
    });
    let marks: Vec<_> = got.iter().filter(|m| m["event"] == "mark").collect();
    assert_eq!(marks.len(), 1, "the mark, reported cleared: {marks:?}");
    assert_eq!(marks[0]["mark"]["name"], "reply");
    let status = fs.cli("rst_status");
    assert!(status.contains("\"clears\":1"), "{status}");
    fs.cli("shutdown");
}
