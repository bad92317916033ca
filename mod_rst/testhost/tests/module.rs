//! mod_rst loaded into fs-testhost, streaming simulated calls to a real
//! udp_server; what the receiver recorded is checked sample by sample.

mod common;

use common::*;

#[test]
fn loads_lists_its_interfaces_and_unloads() {
    let conf = conf_dir(&[]);
    let mut host = Host::start();
    assert_eq!(host.ok("selftest")["missing"], serde_json::json!([]));
    let loaded = host.load(conf.path());
    let apps: Vec<&str> = loaded["applications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    let apis: Vec<&str> = loaded["apis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(apps.contains(&"rst"), "{loaded}");
    assert!(
        apis.contains(&"uuid_rst") && apis.contains(&"rst_stop"),
        "{loaded}"
    );
    let events = host.ok("events");
    for subclass in ["rst::start", "rst::stop", "rst::error"] {
        assert!(events["reserved"].get(subclass).is_some(), "{events}");
    }
    let unloaded = host.ok("unload");
    assert_eq!(unloaded["status"], 0);
    assert_eq!(
        unloaded["threads_left"],
        serde_json::json!([]),
        "{unloaded}"
    );
    assert_eq!(unloaded["dlclosed"], true);
    let summary = host.ok("summary");
    assert_eq!(summary["xml_opened"], summary["xml_freed"], "{summary}");
    assert_eq!(host.ok("events")["reserved"], serde_json::json!({}));
    // Loaded again after an unload, as `reload mod_rst` does.
    host.load(conf.path());
    host.ok("unload");
    assert_eq!(host.quit()["violations"], serde_json::json!([]));
}

/// Codec name, payload type.
fn payload_type(codec: &str) -> u64 {
    match codec {
        "PCMU" => 0,
        "PCMA" => 8,
        _ => 10,
    }
}

/// One call in `codec`, one second of READ_HZ read and WRITE_HZ write, streamed
/// with the configured `audio`; returns the receiver (it owns the files), the
/// record and the host's stats.
fn one_call(
    audio: &str,
    codec: &str,
    rate: u32,
) -> (Receiver, serde_json::Value, serde_json::Value) {
    let receiver = Receiver::start();
    let conf = conf_for(&receiver, &[("audio", audio)]);
    let mut host = Host::start();
    host.load(conf.path());
    let u = uuid(1);
    host.ok(&format!(
        "session {u} caller_id_number=1001 destination_number=1002 codec={codec} rate={rate}"
    ));
    host.ok(&format!("app {u} rst"));
    host.ok(&format!(
        "media {u} 1 read_hz={READ_HZ} write_hz={WRITE_HZ}"
    ));
    host.ok("wait");
    let hangup = host.ok(&format!("hangup {u}"));
    // The recording bug only: with play-mode mix (the default) the playback
    // bug waits for audio back, and none came.
    assert_eq!(hangup["bugs_closed"], 1, "{hangup}");
    let record = receiver.record(&u);
    let stats = host.ok(&format!("stats {u}"));
    let events = host.ok("events");
    let names: Vec<(&str, &str)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["subclass"].as_str().unwrap_or(""),
                e["headers"]["Unique-ID"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        names,
        [("rst::start", u.as_str()), ("rst::stop", u.as_str())],
        "{events}"
    );
    finish(host);
    assert_eq!(record["caller"], "1001", "{record}");
    assert_eq!(record["callee"], "1002", "{record}");
    assert_eq!(record["end_reason"], "bye", "{record}");
    (receiver, record, stats)
}

fn native_tone_recorded_exactly(codec: &str) {
    let (_receiver, record, stats) = one_call("native", codec, 8000);
    for (dir, hz, key) in [
        ("R", READ_HZ, "TAP_NATIVE_READ"),
        ("W", WRITE_HZ, "TAP_NATIVE_WRITE"),
    ] {
        let direction = &record["directions"][dir];
        assert_eq!(direction["codecs"], serde_json::json!([codec]), "{record}");
        assert_eq!(
            direction["payload_types"],
            serde_json::json!([payload_type(codec)])
        );
        assert_eq!(
            direction["packets"],
            datagrams_by_default(50, 160),
            "{record}"
        );
        let (spec, samples) = direction_wav(&record, dir);
        assert_eq!(spec.sample_rate, 8000);
        let expected = heard(codec, &tone(hz, 8000.0, 8000, 0, 8000));
        assert_samples(&format!("{codec} {dir}"), &samples, &expected);
        assert_eq!(stats["callbacks"][key]["count"], 50, "{stats}");
    }
    // The recording bug's only: nothing came back, so no playback bug (it
    // would see every frame written).
    assert_eq!(stats["callbacks"]["INIT"]["count"], 1, "{stats}");
    assert_eq!(stats["callbacks"]["CLOSE"]["count"], 1, "{stats}");
    assert_eq!(
        stats["callbacks"]["WRITE_REPLACE"]["count"],
        serde_json::Value::Null,
        "{stats}"
    );
}

#[test]
fn native_pcmu_tone_is_recorded_exactly() {
    native_tone_recorded_exactly("PCMU");
}

#[test]
fn native_pcma_tone_is_recorded_exactly() {
    native_tone_recorded_exactly("PCMA");
}

/// Strips leading frames of FreeSWITCH's fill (0xFFFF samples: a side with no
/// frame yet when switch_core_media_bug_read is called without `fill`).
fn without_fill(samples: &[i16], frame: usize) -> (usize, &[i16]) {
    let mut start = 0;
    while start + frame <= samples.len() && samples[start..start + frame].iter().all(|&s| s == -1) {
        start += frame;
    }
    (start / frame, &samples[start..])
}

fn l16_recorded_exactly(codec: &str, rate: u32) {
    let (_receiver, record, stats) = one_call("l16", codec, rate);
    let frame = (rate / 50) as usize;
    for (dir, hz) in [("R", READ_HZ), ("W", WRITE_HZ)] {
        let direction = &record["directions"][dir];
        assert_eq!(
            direction["payload_types"],
            serde_json::json!([10]),
            "{record}"
        );
        let (spec, samples) = direction_wav(&record, dir);
        assert_eq!(spec.sample_rate, rate, "{dir}: {record}");
        let (fill_frames, audio) = without_fill(&samples, frame);
        assert!(fill_frames <= 1, "{dir}: {fill_frames} frames of fill");
        assert!(
            audio.len() >= (rate as usize) - 2 * frame,
            "{dir}: only {} samples: {record}",
            audio.len()
        );
        let expected = heard(codec, &tone(hz, 8000.0, rate, 0, audio.len()));
        assert_samples(&format!("L16 from {codec}/{rate} {dir}"), audio, &expected);
    }
    for key in ["READ", "WRITE", "READ_PING"] {
        assert_eq!(stats["callbacks"][key]["count"], 50, "{key}: {stats}");
    }
}

#[test]
fn l16_mode_records_pcmu_channel_as_linear() {
    l16_recorded_exactly("PCMU", 8000);
}

#[test]
fn l16_mode_records_16khz_channel_at_16khz() {
    l16_recorded_exactly("L16", 16000);
}

/// 20 ms of 48 kHz L16 is 1,920 bytes a direction: each frame crosses the
/// module's queue in six pieces (16 kHz: two) and is put together again.
#[test]
fn l16_mode_records_48khz_channel_at_48khz() {
    l16_recorded_exactly("L16", 48000);
}

#[test]
fn native_l16_16khz_channel_is_recorded_at_16khz() {
    let (_receiver, record, _) = one_call("native", "L16", 16000);
    for (dir, hz) in [("R", READ_HZ), ("W", WRITE_HZ)] {
        let (spec, samples) = direction_wav(&record, dir);
        assert_eq!(spec.sample_rate, 16000, "{dir}: {record}");
        assert_samples(dir, &samples, &tone(hz, 8000.0, 16000, 0, 16000));
    }
}

#[test]
fn uuid_rst_with_an_unknown_uuid_is_a_clear_error() {
    let (_receiver, _conf, mut host) = setup(&[]);
    let answer = host.ok("api uuid_rst 00000000-0000-0000-0000-00000000dead");
    let output = answer["output"].as_str().unwrap();
    assert!(output.starts_with("-ERR"), "{answer}");
    assert!(
        output.contains("00000000-0000-0000-0000-00000000dead"),
        "{answer}"
    );
    for command in [
        "api uuid_rst",
        "api_null uuid_rst",
        "api rst_stop",
        "api rst_stop nope",
        "api uuid_rst a b c d",
    ] {
        let answer = host.ok(command);
        assert!(
            answer["output"].as_str().unwrap().starts_with("-ERR"),
            "{command}: {answer}"
        );
    }
    // A hung-up channel cannot be found any more.
    let u = uuid(7);
    session(&mut host, &u);
    host.ok(&format!("hangup {u}"));
    let answer = host.ok(&format!("api uuid_rst {u}"));
    assert!(
        answer["output"].as_str().unwrap().starts_with("-ERR"),
        "{answer}"
    );
    finish(host);
}

#[test]
fn bad_application_arguments_attach_nothing() {
    let (mut receiver, _conf, mut host) = setup(&[]);
    let u = uuid(8);
    session(&mut host, &u);
    host.ok(&format!("app {u} rst 127.0.0.1 notaport"));
    host.ok(&format!("app {u} rst a b c"));
    assert_eq!(host.ok(&format!("stats {u}"))["bugs_added"], 0);
    let logs = host.ok("logs");
    let errors = logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["level"] == 3 && l["uuid"] == u.as_str())
        .count();
    assert_eq!(errors, 2, "{logs}");
    host.ok(&format!("hangup {u}"));
    // Unloaded, the module has sent all it will; the stop reads what arrived
    // and ends any call it started, which would leave a record.
    finish(host);
    receiver.stop();
    assert!(records_in(receiver.dir.path()).is_empty());
}

#[test]
fn the_application_run_twice_gives_one_stream() {
    let (receiver, _conf, mut host) = setup(&[]);
    let u = uuid(2);
    session(&mut host, &u);
    host.ok(&format!("app {u} rst"));
    host.ok(&format!("app {u} rst"));
    let answer = host.ok(&format!("api uuid_rst {u}"));
    assert!(
        answer["output"].as_str().unwrap().starts_with("+OK"),
        "{answer}"
    );
    host.ok(&format!("media {u} 0.5"));
    host.ok("wait");
    let stats = host.ok(&format!("stats {u}"));
    // One recording bug (the playback bug waits for audio back): one stream.
    assert_eq!(stats["bugs_added"], 1, "{stats}");
    assert_eq!(
        stats["callbacks"]["TAP_NATIVE_READ"]["count"], 25,
        "{stats}"
    );
    host.ok(&format!("hangup {u}"));
    let records = receiver.wait_records(1);
    assert_eq!(
        records[0]["directions"]["R"]["packets"],
        datagrams_by_default(25, 160),
        "{}",
        records[0]
    );
    finish(host);
}

#[test]
fn uuid_rst_stop_and_rst_stop_end_the_stream_while_the_call_goes_on() {
    let (receiver, _conf, mut host) = setup(&[]);
    let (u1, u2) = (uuid(3), uuid(4));
    for u in [&u1, &u2] {
        session(&mut host, u);
        let answer = host.ok(&format!("api uuid_rst {u}"));
        assert!(
            answer["output"].as_str().unwrap().starts_with("+OK"),
            "{answer}"
        );
        host.ok(&format!("media {u} 2"));
    }
    host.ok("sleep 600");
    let answer = host.ok(&format!("api uuid_rst {u1} stop"));
    assert!(
        answer["output"].as_str().unwrap().starts_with("+OK"),
        "{answer}"
    );
    let answer = host.ok(&format!("api rst_stop {u2}"));
    assert!(
        answer["output"].as_str().unwrap().starts_with("+OK"),
        "{answer}"
    );
    // Both records end with BYE while the calls are still up.
    for u in [&u1, &u2] {
        let record = receiver.record(u);
        assert_eq!(record["end_reason"], "bye", "{record}");
        let stats = host.ok(&format!("stats {u}"));
        assert_eq!(stats["hung_up"], false);
        // The recording bug's (no audio came back: no playback bug).
        assert_eq!(stats["callbacks"]["CLOSE"]["count"], 1, "{stats}");
        assert_eq!(stats["bugs"], serde_json::json!([]), "{stats}");
    }
    // Stopping again is an error, not a crash; starting again is a new stream.
    let answer = host.ok(&format!("api rst_stop {u1}"));
    assert!(
        answer["output"].as_str().unwrap().starts_with("-ERR"),
        "{answer}"
    );
    let answer = host.ok(&format!("api uuid_rst {u1}"));
    assert!(
        answer["output"].as_str().unwrap().starts_with("+OK"),
        "{answer}"
    );
    host.ok("wait");
    host.ok(&format!("hangup {u1}"));
    host.ok(&format!("hangup {u2}"));
    let records = receiver.wait_records(3);
    assert!(
        records.iter().all(|r| r["end_reason"] == "bye"),
        "{records:?}"
    );
    let events = host.ok("events");
    let stops = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["subclass"] == "rst::stop")
        .count();
    assert_eq!(stops, 3, "{events}");
    finish(host);
}

#[test]
fn unload_with_calls_in_progress_ends_them_with_bye() {
    let (receiver, _conf, mut host) = setup(&[]);
    let calls: Vec<String> = (10..13).map(uuid).collect();
    for u in &calls {
        session(&mut host, u);
        host.ok(&format!("app {u} rst"));
        host.ok(&format!("media {u} 2"));
    }
    // Unloaded once every call has audio at the receiver.
    wait_for("audio of every call", || {
        let bytes = receiver
            .metrics
            .audio_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        (bytes >= 3 * 2 * 10 * 160).then_some(())
    });
    let unloaded = host.ok("unload");
    assert_eq!(unloaded["status"], 0, "{unloaded}");
    assert_eq!(
        unloaded["orphaned_bugs"],
        serde_json::json!([]),
        "{unloaded}"
    );
    assert_eq!(
        unloaded["threads_left"],
        serde_json::json!([]),
        "{unloaded}"
    );
    assert_eq!(unloaded["dlclosed"], true, "{unloaded}");
    for u in &calls {
        let record = receiver.record(u);
        assert_eq!(record["end_reason"], "bye", "{record}");
        let packets = record["directions"]["R"]["packets"].as_u64().unwrap();
        // A 2 s call: 100 frames a direction, the module unloaded within them.
        assert!((1..=100).contains(&packets), "{record}");
    }
    // The host (FreeSWITCH) carries on: media without the module, then hangup.
    host.ok("wait");
    for u in &calls {
        let hangup = host.ok(&format!("hangup {u}"));
        assert_eq!(hangup["bugs_closed"], 0, "{hangup}");
    }
    let summary = host.ok("summary");
    assert_eq!(summary["locks_held"], 0, "{summary}");
    assert_eq!(summary["callbacks_after_close"], 0, "{summary}");
    assert_eq!(summary["violation_count"], 0, "{summary}");
    assert_eq!(host.quit()["violations"], serde_json::json!([]));
}

#[test]
fn a_codec_change_mid_call_is_followed() {
    let (receiver, _conf, mut host) = setup(&[]);
    let u = uuid(20);
    session(&mut host, &u);
    host.ok(&format!("app {u} rst"));
    // A long call, changed and stopped on events, not on time.
    host.ok(&format!(
        "media {u} 120 read_hz={READ_HZ} write_hz={WRITE_HZ}"
    ));
    let frames = |host: &mut Host| {
        host.ok(&format!("stats {u}"))["media"]["read"]["frames"]
            .as_u64()
            .unwrap()
    };
    wait_for("PCMU frames", || (frames(&mut host) >= 25).then_some(()));
    host.ok(&format!("codec {u} PCMA"));
    let changed_at = frames(&mut host);
    wait_for("PCMA frames", || {
        (frames(&mut host) >= changed_at + 25).then_some(())
    });
    host.ok(&format!("stop_media {u}"));
    host.ok("wait");
    let stats = host.ok(&format!("stats {u}"));
    host.ok(&format!("hangup {u}"));
    let record = receiver.record(&u);
    assert_eq!(
        record["directions"]["R"]["codecs"],
        serde_json::json!(["PCMU", "PCMA"]),
        "{record}"
    );
    assert_eq!(
        record["directions"]["W"]["payload_types"],
        serde_json::json!([0, 8]),
        "{record}"
    );
    // Sample for sample, segment by segment, as the host sent them.
    for (dir, key, hz) in [("R", "read", READ_HZ), ("W", "write", WRITE_HZ)] {
        let mut expected = Vec::new();
        for segment in stats["media"][key]["segments"].as_array().unwrap() {
            let first = segment["first_sample"].as_u64().unwrap();
            let count = segment["frames"].as_u64().unwrap() as usize * 160;
            let codec = segment["codec"].as_str().unwrap();
            expected.extend(heard(codec, &tone(hz, 8000.0, 8000, first, count)));
        }
        let (_, samples) = direction_wav(&record, dir);
        assert_samples(dir, &samples, &expected);
    }
    finish(host);
}

/// Digits the channel receives (FreeSWITCH runs the module's recv_dtmf hook)
/// reach the record: as DTMF datagrams in DATA mode, as RFC 4733 events in
/// RTP mode; the hook is gone before the module unloads (`finish` checks).
#[test]
fn digits_the_channel_receives_reach_the_record_in_data_and_rtp_mode() {
    for mode in ["data", "rtp"] {
        let receiver = Receiver::start();
        let conf = conf_for(&receiver, &[("mode", mode)]);
        let mut host = Host::start();
        host.load(conf.path());
        let u = uuid(0x700);
        session(&mut host, &u);
        host.ok(&format!("app {u} rst"));
        host.ok(&format!("media {u} 3"));
        // Digits once the receiver has the call's audio (RTP mode needs its ports).
        wait_for("audio at the receiver", || {
            (receiver
                .metrics
                .samples_written
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0)
            .then_some(())
        });
        assert_eq!(host.ok(&format!("dtmf {u} 1 duration=2240"))["hooks"], 1);
        host.ok(&format!("dtmf {u} # duration=800"));
        host.ok("wait");
        let status = host.ok("api rst_status");
        host.ok(&format!("hangup {u}"));
        let record = receiver.record(&u);
        finish(host);
        let digits: Vec<(String, String, u64)> = record["dtmf"]
            .as_array()
            .unwrap_or_else(|| panic!("{mode}: {record}"))
            .iter()
            .map(|d| {
                (
                    d["digit"].as_str().unwrap().to_owned(),
                    d["direction"].as_str().unwrap().to_owned(),
                    d["duration_ms"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        assert_eq!(
            digits,
            [
                ("1".to_owned(), "R".to_owned(), 280),
                ("#".to_owned(), "R".to_owned(), 100)
            ],
            "{mode}: {record}"
        );
        assert!(
            status["output"]
                .as_str()
                .unwrap()
                .contains("\"dtmf_queued\":2"),
            "{status}"
        );
    }
}

/// `frames-per-datagram` 2 to 5: a datagram per so many frames (the last
/// few of each direction go before the BYE), and the same audio, sample by
/// sample. The sender's wake-up follows the setting (`batch_window`).
#[test]
fn two_to_five_frames_per_datagram_record_the_same_audio() {
    for frames in 2..=5u32 {
        let receiver = Receiver::start();
        let conf = conf_for(&receiver, &[("frames-per-datagram", &frames.to_string())]);
        let mut host = Host::start();
        host.load(conf.path());
        let u = uuid(0x30 + frames);
        host.ok(&format!("session {u} codec=PCMU rate=8000"));
        host.ok(&format!("app {u} rst"));
        host.ok(&format!(
            "media {u} 1 read_hz={READ_HZ} write_hz={WRITE_HZ}"
        ));
        host.ok("wait");
        host.ok(&format!("hangup {u}"));
        let record = receiver.record(&u);
        finish(host);
        assert_eq!(record["end_reason"], "bye", "{frames}: {record}");
        // One second: 50 frames of 20 ms a direction.
        let datagrams = 50u32.div_ceil(frames);
        for (dir, hz) in [("R", READ_HZ), ("W", WRITE_HZ)] {
            assert_eq!(
                record["directions"][dir]["packets"], datagrams,
                "{frames} frames a datagram: {record}"
            );
            let (_, samples) = direction_wav(&record, dir);
            let expected = heard("PCMU", &tone(hz, 8000.0, 8000, 0, 8000));
            assert_samples(
                &format!("PCMU {dir}, {frames} frames a datagram"),
                &samples,
                &expected,
            );
        }
    }
}
