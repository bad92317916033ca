//! RTP mode end to end over real UDP on 127.0.0.1: port allocation, then RTP
//! with loss, reordering, duplicates, an SSRC change, a timestamp jump and DTMF,
//! checked sample by sample in the WAV and figure by figure in the record.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use rst_proto::TelephoneEvent;
use udp_server::config::PortRange;
use udp_server::Settings;

fn settings(ports: &str) -> Settings {
    Settings {
        rtp_ports: Some(ports.parse::<PortRange>().unwrap()),
        ..Settings::default()
    }
}

#[test]
fn an_rtp_mode_inv_gets_two_ports_and_a_repeat_gets_the_same() {
    let mut receiver = Receiver::with(settings("21000-21003"));
    let mut first = RtpSender::new(receiver.addr);
    let mut second = RtpSender::new(receiver.addr);
    let a = first.inv(&uuid(1), "").unwrap();
    assert_eq!(
        first.inv(&uuid(1), ""),
        Some(a),
        "a repeated INV got other ports"
    );
    let b = second.inv(&uuid(2), "").unwrap();
    let mut all = [a.0, a.1, b.0, b.1];
    all.sort();
    assert_eq!(all, [21000, 21001, 21002, 21003]);

    // The range is exhausted: the third call gets no answer at all, never a broken one.
    let mut third = RtpSender::new(receiver.addr);
    assert_eq!(third.inv(&uuid(3), ""), None);
    // Unanswered for 5 s is not judged yet on a stalled machine.
    wait_counter(&receiver, "rst_refused_total{reason=\"no_ports\"}", 1);
    assert_eq!(
        receiver.counter("rst_refused_total{reason=\"no_ports\"}"),
        1
    );

    // Ports come back when a call ends (its BYE lingers a moment for RTP in flight).
    first.control.bye(&uuid(1));
    wait_counter(&receiver, "rst_calls_ended_total{reason=\"bye\"}", 1);
    let c = third.inv(&uuid(3), "").unwrap();
    let mut freed = [c.0, c.1];
    freed.sort();
    assert_eq!(freed, [a.0.min(a.1), a.0.max(a.1)]);
    receiver.stop();
    let records = receiver.wait_records(3);
    assert!(records.iter().all(|r| r["mode"] == "rtp"));
}

#[test]
fn loss_reordering_duplicates_ssrc_change_timestamp_jump_and_dtmf_are_recorded_exactly() {
    let mut receiver = Receiver::with(Settings {
        jitter_packets: Some(5),
        ..settings("21100-21199")
    });
    let mut sender = RtpSender::new(receiver.addr);
    let id = uuid(10);
    let (server_read, _) = sender.inv(&id, "pt101=telephone-event/8000").unwrap();
    let to = SocketAddr::from(([127, 0, 0, 1], server_read));
    let sent = std::cell::Cell::new(0);
    let send = |bytes: &[u8]| {
        sender.read.send_to(bytes, to).unwrap();
        sent.set(sent.get() + 1);
    };
    let audio = |k: u8| vec![0x80 + k; 160];
    let (ssrc_a, ssrc_b) = (0x1111_1111, 0x2222_2222);

    // SSRC A: packets 0..14, then a '5' held 60 ms, then 15..19.
    let ts = |k: u32| {
        if k < 15 {
            50_000 + 160 * k
        } else {
            50_000 + 160 * 15 + 480 + 160 * (k - 15)
        }
    };
    let a = |k: u8| rtp(1000 + u16::from(k), ts(u32::from(k)), ssrc_a, 0, &audio(k));
    for k in 0..15u8 {
        match k {
            5 => {} // lost
            8 => {} // sent after 9
            9 => {
                send(&a(9));
                send(&a(8));
            }
            12 => {
                send(&a(12));
                send(&a(12));
            } // duplicate
            _ => send(&a(k)),
        }
    }
    let event = |seq: u16, duration: u16, end: bool| {
        let payload = TelephoneEvent {
            event: 5,
            end,
            volume: 10,
            duration,
        }
        .encode();
        rtp(seq, ts(15) - 480, ssrc_a, 101, &payload)
    };
    send(&event(1015, 160, false));
    send(&event(1016, 320, false));
    send(&event(1017, 480, true));
    send(&event(1017, 480, true)); // RFC 4733 end retransmissions
    send(&event(1017, 480, true));
    for k in 15..20u8 {
        send(&rtp(
            1003 + u16::from(k),
            ts(u32::from(k)),
            ssrc_a,
            0,
            &audio(k),
        ));
    }
    send(&a(5)); // the lost one, far too late
                 // SSRC B (a re-INVITE upstream, say), then a timestamp jump of 100 s.
    for i in 0..10u8 {
        let jump = if i >= 5 { 8000 * 100 } else { 0 };
        let timestamp = 999_999 + 160 * u32::from(i) + jump;
        send(&rtp(7 + u16::from(i), timestamp, ssrc_b, 0, &audio(20 + i)));
    }
    // Every packet in before the BYE (they come on another socket).
    wait_counter(&receiver, "rst_rtp_packets_total", sent.get());
    sender.control.bye(&id);

    let record = receiver.wait_records(1).pop().unwrap();
    let block = |k: u8| vec![sox_decode("ul", &[0x80 + k])[0]; 160];
    let mut expected = Vec::new();
    for k in 0..30u8 {
        match k {
            5 => expected.extend([0i16; 160]),
            15 => {
                expected.extend([0i16; 480]); // the DTMF's time is silence, never its tones
                expected.extend(block(k));
            }
            _ => expected.extend(block(k)),
        }
    }
    let (spec, samples) = read_wav(&path_of(&record, "/directions/R/wav/0"));
    assert_eq!(spec.sample_rate, 8000);
    assert_eq!(samples.len(), expected.len());
    assert!(
        samples == expected,
        "the R recording differs from what was sent"
    );
    assert_sox_accepts(&path_of(&record, "/directions/R/wav/0"));
    assert_sox_accepts(&path_of(&record, "/stereo"));

    let stats = &record["directions"]["R"]["rtp"];
    assert_eq!(stats["expected"], 23 + 10, "{stats}");
    assert_eq!(stats["received"], 22 + 10, "{stats}");
    assert_eq!(stats["lost"], 1, "{stats}");
    assert_eq!(stats["late"], 1, "{stats}");
    assert_eq!(stats["duplicates"], 3, "{stats}");
    assert_eq!(stats["ssrc_changes"], 1, "{stats}");
    assert_eq!(stats["timestamp_jumps"], 1, "{stats}");
    // Sent back to back while the timestamps step 20 ms (and jump once): the
    // RFC 3550 estimate is above zero. Its exact value is jitter.rs's tests'.
    let jitter = stats["jitter_ms"].as_f64().unwrap();
    assert!(jitter > 0.0 && jitter.is_finite(), "{stats}");

    let dtmf = &record["dtmf"];
    assert_eq!(dtmf.as_array().unwrap().len(), 1, "{dtmf}");
    assert_eq!(dtmf[0]["digit"], "5");
    assert_eq!(dtmf[0]["direction"], "R");
    assert_eq!(dtmf[0]["duration_ms"], 60);
    assert_eq!(
        record["directions"]["R"]["codecs"],
        serde_json::json!(["PCMU"])
    );
    // Where the loss was: packet 5's 160 samples, 0.2 s before the key press.
    let gaps = &record["directions"]["R"]["gaps"];
    assert_eq!(gaps["count"], 1, "{gaps}");
    assert_eq!(gaps["packets"], 1, "{gaps}");
    let gap = &gaps["first"][0];
    assert_eq!(
        (
            &gap["sample"],
            &gap["samples"],
            &gap["rate"],
            &gap["packets"]
        ),
        (
            &serde_json::json!(800),
            &serde_json::json!(160),
            &serde_json::json!(8000),
            &serde_json::json!(1)
        ),
        "{gap}"
    );
    let before_key = dtmf[0]["offset"].as_f64().unwrap() - gap["offset"].as_f64().unwrap();
    assert!((before_key - 0.2).abs() < 1e-6, "{gap} {dtmf}");
    assert_eq!(record["directions"]["W"]["gaps"]["count"], 0, "{record}");
    receiver.stop();
}

#[test]
fn rtp_from_anyone_but_the_calls_sender_is_ignored_and_counted() {
    let mut receiver = Receiver::with(settings("21200-21209"));
    let mut sender = RtpSender::new(receiver.addr);
    let id = uuid(20);
    let (server_read, server_write) = sender.inv(&id, "").unwrap();
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger
        .send_to(&rtp(1, 0, 9, 0, &[0x00; 160]), ("127.0.0.1", server_read))
        .unwrap();
    // The sender's R socket sending to the W port is not the announced W source either.
    sender
        .read
        .send_to(&rtp(1, 0, 9, 0, &[0x00; 160]), ("127.0.0.1", server_write))
        .unwrap();
    sender
        .write
        .send_to(&rtp(1, 0, 9, 0, &[0xFF; 160]), ("127.0.0.1", server_write))
        .unwrap();
    sender
        .read
        .send_to(b"not rtp", ("127.0.0.1", server_read))
        .unwrap();
    // All four judged before the BYE.
    wait_counter(&receiver, "rst_refused_total{reason=\"wrong_source\"}", 2);
    wait_counter(&receiver, "rst_rtp_packets_total", 1);
    wait_counter(&receiver, "rst_rtp_malformed_total", 1);
    sender.control.bye(&id);
    let record = receiver.wait_records(1).pop().unwrap();
    assert_eq!(
        receiver.counter("rst_refused_total{reason=\"wrong_source\"}"),
        2
    );
    assert_eq!(receiver.counter("rst_rtp_malformed_total"), 1);
    assert_eq!(record["malformed"], 1);
    assert_eq!(record["directions"]["R"]["rtp"]["received"], 0);
    let (_, samples) = read_wav(&path_of(&record, "/directions/W/wav/0"));
    assert_eq!(samples, vec![0i16; 160]);
    receiver.stop();
}

#[test]
fn an_idle_rtp_call_times_out_and_frees_its_ports() {
    let mut receiver = Receiver::with(Settings {
        idle_timeout: Some(1),
        ..settings("21300-21301")
    });
    let mut sender = RtpSender::new(receiver.addr);
    let (read, _) = sender.inv(&uuid(30), "").unwrap();
    sender
        .read
        .send_to(&rtp(1, 0, 9, 8, &[0xD5; 160]), ("127.0.0.1", read))
        .unwrap();
    let record = receiver.wait_records(1).pop().unwrap();
    assert_eq!(record["end_reason"], "timeout");
    assert_eq!(record["directions"]["R"]["samples"], 160);
    // The only port pair is free again.
    let mut next = RtpSender::new(receiver.addr);
    assert!(next.inv(&uuid(31), "").is_some());
    receiver.stop();
}

#[test]
fn a_port_taken_by_another_program_is_skipped() {
    let squatter = UdpSocket::bind("127.0.0.1:21400").expect("port 21400 is free for the test");
    let mut receiver = Receiver::with(settings("21400-21405"));
    let mut sender = RtpSender::new(receiver.addr);
    let (read, write) = sender.inv(&uuid(40), "").expect("another pair is tried");
    assert!(read != 21400 && write != 21400, "{read} {write}");
    assert_eq!(receiver.counter("rst_rtp_open_failures_total"), 1);
    drop(squatter);
    receiver.stop();
}

/// RTP travels apart from the BYE: packets sent just before it (or overtaken by
/// it) are still recorded.
#[test]
fn rtp_sent_around_the_bye_is_still_recorded() {
    let mut receiver = Receiver::with(settings("21500-21509"));
    let mut sender = RtpSender::new(receiver.addr);
    let id = uuid(50);
    let (read, _) = sender.inv(&id, "").unwrap();
    for sequence in 0..5u16 {
        sender
            .read
            .send_to(
                &rtp(sequence, u32::from(sequence) * 160, 7, 0, &[0xFF; 160]),
                ("127.0.0.1", read),
            )
            .unwrap();
    }
    sender.control.bye(&id);
    sender
        .read
        .send_to(&rtp(5, 800, 7, 0, &[0xFF; 160]), ("127.0.0.1", read))
        .unwrap();
    let record = receiver.wait_records(1).pop().unwrap();
    assert_eq!(record["end_reason"], "bye");
    assert_eq!(record["directions"]["R"]["rtp"]["received"], 6);
    assert_eq!(record["directions"]["R"]["samples"], 6 * 160);
    receiver.stop();
}

/// A stop reads what the kernel already holds before it ends the calls: the
/// datagrams and RTP packets sent just before it are all in the records, with
/// no wait between the last send and the stop.
#[test]
fn a_stop_records_everything_sent_before_it_on_every_port() {
    let mut receiver = Receiver::with(settings("21510-21519"));
    let mut rtp_call = RtpSender::new(receiver.addr);
    let rtp_id = uuid(51);
    let (read, _) = rtp_call.inv(&rtp_id, "").unwrap();
    let mut data_call = Sender::new(receiver.addr);
    let data_id = uuid(52);
    data_call.inv(&data_id, "alice", "bob");
    for sequence in 0..200u16 {
        rtp_call
            .read
            .send_to(
                &rtp(sequence, u32::from(sequence) * 160, 7, 0, &[0xFF; 160]),
                ("127.0.0.1", read),
            )
            .unwrap();
        data_call.data(&data_id, rst_proto::Direction::Read, 0, &[0xFF; 160]);
    }
    receiver.stop();
    let records = records_in(receiver.dir.path());
    assert_eq!(records.len(), 2, "{records:?}");
    for record in records {
        assert_eq!(record["end_reason"], "shutdown", "{record}");
        assert_eq!(record["directions"]["R"]["samples"], 200 * 160, "{record}");
    }
}

/// A re-INVITE moving a call to opus: the sender (tap_daemon) sends the INV
/// again declaring the new payload type, and the receiver decodes what
/// follows at 48 kHz into a second WAV segment, while a number it already
/// knew keeps its first meaning.
#[test]
fn a_payload_type_declared_by_a_repeated_inv_is_decoded_from_then_on() {
    let mut receiver = Receiver::with(settings("21600-21609"));
    let mut sender = RtpSender::new(receiver.addr);
    let id = uuid(60);
    let ports = sender.inv(&id, "pt101=telephone-event/8000").unwrap();
    let to = SocketAddr::from(([127, 0, 0, 1], ports.0));
    let socket = sender.read.try_clone().unwrap();
    let send = |bytes: &[u8]| {
        socket.send_to(bytes, to).unwrap();
    };
    for k in 0..5u16 {
        send(&rtp(k, u32::from(k) * 160, 1, 0, &[0xFF; 160]));
    }
    // CELT fullband 20 ms (TOC 0xfc) with bits that are not its silence flag.
    let opus: Vec<Vec<u8>> = (0..10u8)
        .map(|k| {
            let mut payload = vec![0xfc];
            payload.extend((0..79u8).map(|i| i.wrapping_mul(37) ^ k.wrapping_mul(101)));
            payload
        })
        .collect();
    // Before the declaration, PT 96 is nothing the receiver can decode.
    send(&rtp(100, 0, 2, 96, &opus[0]));
    wait_counter(&receiver, "rst_rtp_packets_total", 6);
    assert_eq!(
        sender.inv(&id, "pt101=telephone-event/8000:pt96=opus/48000/2"),
        Some(ports),
        "a repeated INV keeps the call's ports"
    );
    // Remapping a known number is ignored (RFC 3264 8.3.2).
    sender.inv(&id, "pt101=PCMA/8000").unwrap();
    for (k, payload) in opus.iter().enumerate().skip(1) {
        send(&rtp(100 + k as u16, 960 * k as u32, 2, 96, payload));
    }
    let event = TelephoneEvent {
        event: 1,
        end: true,
        volume: 10,
        duration: 800,
    }
    .encode();
    send(&rtp(110, 960 * 10, 2, 101, &event));
    wait_counter(&receiver, "rst_rtp_packets_total", 6 + 9 + 1);
    sender.control.bye(&id);

    let record = receiver.wait_records(1).pop().unwrap();
    let r = &record["directions"]["R"];
    assert_eq!(r["codecs"], serde_json::json!(["PCMU", "opus"]), "{r}");
    assert_eq!(r["payload_types"], serde_json::json!([0, 96]));
    // The packet that came before the declaration was kept raw.
    assert_eq!(r["raw"][0]["payload_type"], 96);
    assert_eq!(
        std::fs::read(path_of(&record, "/directions/R/raw/0/path")).unwrap(),
        opus[0]
    );
    let (spec, pcmu) = read_wav(&path_of(&record, "/directions/R/wav/0"));
    assert_eq!((spec.sample_rate, pcmu.len()), (8000, 5 * 160));
    let (spec, decoded) = read_wav(&path_of(&record, "/directions/R/wav/1"));
    assert_eq!(spec.sample_rate, 48000);
    // The segment starts at its first packet (PT 96, timestamp 960): 9
    // packets of 20 ms, each decoded in order by one decoder.
    let mut decoder = rst_codec::Decoder::new(rst_codec::Codec::Opus);
    let mut expected = Vec::new();
    for payload in &opus[1..] {
        decoder.decode(payload, &mut expected).unwrap();
    }
    assert_eq!(expected.len(), 9 * 960);
    assert!(
        expected.iter().any(|&s| s != 0),
        "the payloads are not silence"
    );
    assert!(decoded == expected, "the opus segment differs");
    // PT 101 stayed a telephone-event: a DTMF entry, no audio.
    assert_eq!(record["dtmf"][0]["digit"], "1");
    receiver.stop();
}

/// A call that DATA started and an RTP-mode INV then gave ports to: the RTP
/// that follows is recorded (the call becomes an RTP-mode one), not counted
/// and thrown away.
#[test]
fn rtp_for_a_call_that_data_started_is_recorded() {
    let mut receiver = Receiver::with(settings("21700-21709"));
    let mut sender = RtpSender::new(receiver.addr);
    let u = uuid(70);
    sender
        .control
        .data(&u, rst_proto::Direction::Read, 0, &[0xFF; 160]);
    let (read_port, _) = sender.inv(&u, "").unwrap();
    let to = SocketAddr::from(([127, 0, 0, 1], read_port));
    for i in 0..10u16 {
        let packet = rtp(i + 1, u32::from(i) * 160, 0x77, 0, &[0xFF; 160]);
        sender.read.send_to(&packet, to).unwrap();
    }
    wait_counter(&receiver, "rst_rtp_packets_total", 10);
    sender.control.bye(&u);
    let records = receiver.wait_records(1);
    receiver.stop();
    let record = &records[0];
    assert_eq!(record["mode"], "rtp", "{record}");
    assert_eq!(record["directions"]["R"]["rtp"]["received"], 10, "{record}");
}

/// Sends PCMU then an RFC 4733 digit on PT 101 that the INV (`extensions`)
/// may or may not declare, waits until the receiver has every packet, ends
/// the call and returns its record.
fn call_with_digit_on_101(receiver: &Receiver, id: &str, extensions: &str) -> serde_json::Value {
    let mut sender = RtpSender::new(receiver.addr);
    let ports = sender.inv(id, extensions).unwrap();
    let to = SocketAddr::from(([127, 0, 0, 1], ports.0));
    let before = receiver.counter("rst_rtp_packets_total");
    for k in 0..5u16 {
        let packet = rtp(k, u32::from(k) * 160, 7, 0, &[0xFF; 160]);
        sender.read.send_to(&packet, to).unwrap();
    }
    let event = TelephoneEvent {
        event: 5,
        end: true,
        volume: 10,
        duration: 800,
    }
    .encode();
    sender
        .read
        .send_to(&rtp(5, 800, 7, 101, &event), to)
        .unwrap();
    wait_counter(receiver, "rst_rtp_packets_total", before + 6);
    sender.control.bye(id);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(record) = records_in(receiver.dir.path())
            .into_iter()
            .find(|r| r["uuid"] == id)
        {
            return record;
        }
        assert!(std::time::Instant::now() < deadline, "no record for {id}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The original mod_rst and most SIP equipment send RFC 4733 digits on PT 101
/// without declaring it: the receiver's `payload-types` default takes it for
/// telephone-event, an INV's own declaration wins, and an empty map keeps it raw.
#[test]
fn undeclared_payload_type_101_is_taken_for_telephone_events() {
    let mut receiver = Receiver::with(settings("21800-21809"));
    let record = call_with_digit_on_101(&receiver, &uuid(80), "");
    assert_eq!(record["dtmf"][0]["digit"], "5", "{record}");
    assert_eq!(
        record["directions"]["R"]["payload_types"],
        serde_json::json!([0])
    );
    assert_eq!(
        record["directions"]["R"]["raw"],
        serde_json::json!([]),
        "{record}"
    );

    // Declared otherwise by the INV: its declaration, not the default.
    let record = call_with_digit_on_101(&receiver, &uuid(81), "pt101=PCMA/8000");
    assert_eq!(record["dtmf"], serde_json::json!([]), "{record}");
    assert_eq!(
        record["directions"]["R"]["codecs"],
        serde_json::json!(["PCMU", "PCMA"]),
        "{record}"
    );
    receiver.stop();

    // No default map: an undeclared 101 is kept raw, as before.
    let mut receiver = Receiver::with(Settings {
        payload_types: Some(Vec::new()),
        ..settings("21810-21819")
    });
    let record = call_with_digit_on_101(&receiver, &uuid(82), "");
    assert_eq!(record["dtmf"], serde_json::json!([]), "{record}");
    assert_eq!(
        record["directions"]["R"]["raw"][0]["payload_type"], 101,
        "{record}"
    );
    receiver.stop();
}
