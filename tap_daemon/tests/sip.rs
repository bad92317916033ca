//! The SIP layer on fixed messages: RFC 3261 examples, RFC 4475-style torture
//! cases, hostile sizes, the tracker's state machine with simulated time, and
//! fuzz-like robustness (random bytes, truncations, mutations: no panic).

use std::net::SocketAddr;
use std::time::Duration;

use rst_proto::Direction;
use tap_daemon::sip::{
    frame, CallEvent, CallKey, EndReason, Frame, MediaDirection, MediaKind, Method, Sdp, SipError,
    SipMessage, SipStream, StartLine, Tracker, TrackerConfig,
};

/// RFC 3261 section 24.2, F1 (with its SDP).
const RFC3261_INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/TCP client.atlanta.example.com:5060;branch=z9hG4bK74bf9\r\n\
Max-Forwards: 70\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
Call-ID: 3848276298220188511@atlanta.example.com\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@client.atlanta.example.com;transport=tcp>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 151\r\n\
\r\n\
v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 client.atlanta.example.com\r\n\
s=-\r\n\
c=IN IP4 192.0.2.101\r\n\
t=0 0\r\n\
m=audio 49172 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

#[test]
fn rfc3261_invite() {
    let m = SipMessage::parse(RFC3261_INVITE.as_bytes()).unwrap();
    assert_eq!(
        m.start,
        StartLine::Request {
            method: Method::Invite,
            uri: "sip:bob@biloxi.example.com"
        }
    );
    assert_eq!(m.call_id, "3848276298220188511@atlanta.example.com");
    assert_eq!((m.cseq.number, &m.cseq.method), (1, &Method::Invite));
    assert_eq!(m.from.display_name.as_deref(), Some("Alice"));
    assert_eq!(m.from.user.as_deref(), Some("alice"));
    assert_eq!(m.from.host, "atlanta.example.com");
    assert_eq!(m.from.tag.as_deref(), Some("9fxced76sl"));
    assert_eq!(m.to.user.as_deref(), Some("bob"));
    assert_eq!(m.to.tag, None);
    assert_eq!(m.content_length, Some(151));
    assert_eq!(m.body.len(), 151);
    assert!(m.has_sdp());
    let sdp = Sdp::parse(m.sdp_body().unwrap()).unwrap();
    let audio = sdp.audio().unwrap();
    assert_eq!(
        sdp.endpoint(audio),
        Some("192.0.2.101:49172".parse().unwrap())
    );
    assert_eq!(
        m.header("via").unwrap(),
        "SIP/2.0/TCP client.atlanta.example.com:5060;branch=z9hG4bK74bf9"
    );
    assert_eq!(m.header("v"), m.header("Via"));
}

/// In the spirit of RFC 4475 3.1.1.1 "wsinv": compact forms, folding, odd
/// whitespace, escaped and quoted display names, mixed case names.
#[test]
fn torture_whitespace_compact_folding() {
    let msg = "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\n\
TO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n\
from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8\r\n\
MaX-fOrWaRdS: 0068\r\n\
Call-ID: wsinv.ndaksdj@192.0.2.1\r\n\
Content-Length   : 150\r\n\
cseq: 0009\r\n  INVITE\r\n\
Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw\r\n\
s :\r\n\
NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n\
UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n\
Content-Type: application/sdp\r\n\
Route:\r\n <sip:services.example.com;lr;unknownwith=value;unknown-no-value>\r\n\
v:  SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8  ,\r\n SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239\r\n\
m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\r\n      newvalue ;\r\n  secondparam ; q = 0.33\r\n\
\r\n\
v=0\r\n\
o=mhandley 29739 7272939 IN IP4 192.0.2.3\r\n\
s=-\r\n\
c=IN IP4 192.0.2.4\r\n\
t=0 0\r\n\
m=audio 49217 RTP/AVP 0 12\r\n\
m=video 3227 RTP/AVP 31\r\n\
a=rtpmap:31 LPC\r\n";
    let m = SipMessage::parse(msg.as_bytes()).unwrap();
    assert_eq!(m.call_id, "wsinv.ndaksdj@192.0.2.1");
    assert_eq!((m.cseq.number, &m.cseq.method), (9, &Method::Invite));
    assert_eq!(m.to.user.as_deref(), Some("vivekg"));
    assert_eq!(m.to.tag.as_deref(), Some("1918181833n"));
    assert_eq!(m.from.user.as_deref(), Some("jdrosen"));
    assert_eq!(m.from.display_name.as_deref(), Some("J Rosenberg \\\""));
    assert_eq!(m.from.tag.as_deref(), Some("98asjd8"));
    assert_eq!(m.header_all("Via").count(), 2);
    assert_eq!(
        m.header("NewFangledHeader").as_deref(),
        Some("newfangled value continued newfangled value")
    );
    assert_eq!(m.header("Subject").as_deref(), Some(""));
    assert_eq!(m.body.len(), 150);
    let sdp = Sdp::parse(m.body).unwrap();
    assert_eq!(sdp.media[1].kind, MediaKind::Video);
}

#[test]
fn escaped_user_tel_uri_bare_addr_spec_lf_only() {
    let msg = "OPTIONS sip:user@example.com SIP/2.0\n\
To: sip:sips%3Auser%40example.com@example.net;tag=x\n\
From: <tel:+1-201-555-0123;phone-context=example.com>;tag=y\n\
i: esc@example\n\
CSeq: 1 OPTIONS\n\
l: 0\n\
\n";
    let m = SipMessage::parse(msg.as_bytes()).unwrap();
    assert_eq!(m.to.user.as_deref(), Some("sips:user@example.com"));
    assert_eq!(m.to.host, "example.net");
    assert_eq!(m.to.tag.as_deref(), Some("x"));
    assert_eq!(m.from.user.as_deref(), Some("+1-201-555-0123"));
    assert_eq!(m.from.label(), "+1-201-555-0123");
    assert_eq!(m.call_id, "esc@example");
    assert_eq!(m.method(), Some(&Method::Options));
}

#[test]
fn response_and_ipv6_hosts() {
    let msg = "SIP/2.0 183 Session Progress\r\n\
f: <sip:[2001:db8::1]:5060>;tag=a\r\n\
t: \"Bob\" <sip:bob@[2001:db8::2]>;tag=b\r\n\
i: x@[2001:db8::1]\r\n\
CSeq: 4711 INVITE\r\n\
\r\n";
    let m = SipMessage::parse(msg.as_bytes()).unwrap();
    assert_eq!(m.status(), Some(183));
    assert_eq!(m.from.user, None);
    assert_eq!(m.from.host, "2001:db8::1");
    assert_eq!(m.from.label(), "2001:db8::1");
    assert_eq!(m.to.host, "2001:db8::2");
    assert_eq!(m.content_length, None);
    assert!(m.body.is_empty());
}

fn with_headers(extra: &str, body: &str) -> String {
    format!(
        "INVITE sip:a@b SIP/2.0\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n{extra}\r\n{body}"
    )
}

#[test]
fn hostile_and_malformed_messages_are_refused_with_a_kind() {
    let huge = "X-Big: ".to_owned() + &"a".repeat(10_000) + "\r\n";
    let many: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    let folded: String = "X-Fold: a\r\n".to_owned() + &" b\r\n".repeat(5000);
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "sip_empty"),
        ("\r\n\r\n".into(), "sip_empty"),
        ("x".repeat(70_000), "sip_too_long"),
        ("INVITE sip:a@b SIP/2.0\r\nCall-ID: x\r\n".into(), "sip_unterminated_headers"),
        ("HELLO\r\n\r\n".into(), "sip_bad_start_line"),
        ("INVITE sip:a@b SIP/7.0\r\n\r\n".into(), "sip_bad_version"),
        // A character across the fourth byte of the version or first word.
        ("INVITE sip:a@b S\u{f1}\u{e9}/2.0\r\n\r\n".into(), "sip_bad_start_line"),
        ("S\u{f1}\u{e9}/2.0 200 OK\r\n\r\n".into(), "sip_bad_start_line"),
        ("SIP/2.0 20 OK\r\n\r\n".into(), "sip_bad_status"),
        ("SIP/2.0 999 OK\r\n\r\n".into(), "sip_bad_status"),
        (with_headers(&huge, ""), "sip_header_too_long"),
        (with_headers(&folded, ""), "sip_header_too_long"),
        (with_headers(&many, ""), "sip_too_many_headers"),
        (with_headers("NoColonHere\r\n", ""), "sip_bad_header"),
        (with_headers("Content-Length: 5\r\nl: 6\r\n", "123456"), "sip_conflicting_header"),
        (with_headers("Call-ID: y\r\n", ""), "sip_conflicting_header"),
        (with_headers("Content-Length: -1\r\n", ""), "sip_bad_content_length"),
        (with_headers("Content-Length: 99999999999999999999\r\n", ""), "sip_bad_content_length"),
        (with_headers("Content-Length: 100\r\n", "short"), "sip_body_truncated"),
        (
            "INVITE sip:a@b SIP/2.0\r\nFrom: <sip:a@b>\r\nTo: <sip:c@d>\r\nCSeq: 1 INVITE\r\n\r\n".into(),
            "sip_missing_header",
        ),
        (
            "INVITE sip:a@b SIP/2.0\r\nFrom: <sip:a@b>\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: one INVITE\r\n\r\n".into(),
            "sip_bad_cseq",
        ),
        (
            "INVITE sip:a@b SIP/2.0\r\nFrom: \"unterminated <sip:a@b>\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n".into(),
            "sip_bad_address",
        ),
    ];
    for (msg, kind) in cases {
        let err = SipMessage::parse(msg.as_bytes()).expect_err(&msg[..msg.len().min(60)]);
        assert_eq!(err.kind(), kind, "{err}");
        assert!(SipError::KINDS.contains(&err.kind()));
        assert!(!err.to_string().is_empty());
    }
    // Extra datagram bytes after Content-Length are ignored (RFC 3261 18.3).
    let extra = with_headers("Content-Length: 2\r\n", "abcdef");
    let m = SipMessage::parse(extra.as_bytes()).unwrap();
    assert_eq!(m.body, b"ab");
    // Non-UTF-8 display names survive as replacement characters.
    let latin1 = with_headers("", "").replace("<sip:a@b>", "\"Jos\u{e9}\" <sip:a@b>");
    let bytes = latin1.replace('\u{e9}', "\u{1}").into_bytes();
    let bytes: Vec<u8> = bytes
        .into_iter()
        .map(|b| if b == 1 { 0xe9 } else { b })
        .collect();
    let m = SipMessage::parse(&bytes).unwrap();
    assert_eq!(m.from.display_name.as_deref(), Some("Jos\u{fffd}"));
}

#[test]
fn multipart_sdp() {
    let body = "--b1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\nc=IN IP4 10.1.1.1\r\nm=audio 4000 RTP/AVP 8\r\n\r\n--b1\r\nContent-Type: application/isup\r\n\r\nxx\r\n--b1--\r\n";
    let msg = with_headers(
        &format!(
            "Content-Type: multipart/mixed;boundary=b1\r\nContent-Length: {}\r\n",
            body.len()
        ),
        body,
    );
    let m = SipMessage::parse(msg.as_bytes()).unwrap();
    assert!(!m.has_sdp());
    let sdp = Sdp::parse(m.sdp_body().unwrap()).unwrap();
    assert_eq!(
        sdp.endpoint(sdp.audio().unwrap()),
        Some("10.1.1.1:4000".parse().unwrap())
    );
}

#[test]
fn framer_on_segment_boundaries_everywhere() {
    let a = RFC3261_INVITE.as_bytes();
    let b = b"SIP/2.0 100 Trying\r\nCall-ID: x\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let mut stream = a.to_vec();
    stream.extend_from_slice(b"\r\n\r\n"); // keep-alive between messages
    stream.extend_from_slice(b);
    stream.extend_from_slice(a);
    // Every split point of the stream into two segments gives the same messages.
    for cut in 0..=stream.len() {
        let mut s = SipStream::new();
        let mut got = Vec::new();
        for part in [&stream[..cut], &stream[cut..]] {
            s.push(part);
            while let Some(m) = s.next_message() {
                got.push(m.unwrap().to_vec());
            }
        }
        assert_eq!(got, [a.to_vec(), b.to_vec(), a.to_vec()], "cut at {cut}");
        assert_eq!(s.buffered(), 0);
        for m in &got {
            SipMessage::parse(m).unwrap();
        }
    }
    assert_eq!(frame(&a[..a.len() - 1]), Ok(Frame::Incomplete));
}

// ---- tracker -------------------------------------------------------------

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const CALLER_SIG: &str = "10.0.0.1:5060";
const CALLEE_SIG: &str = "10.0.0.2:5060";

fn sdp(ip: &str, port: u16, extra: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n{extra}"
    )
}

/// Builds a message; `from_caller` decides which way From/To point.
fn msg(
    start: &str,
    call_id: &str,
    cseq: &str,
    to_tag: Option<&str>,
    from_caller: bool,
    body: &str,
) -> Vec<u8> {
    let caller = "\"Alice\" <sip:1001@pbx>;tag=ftag";
    let callee = match to_tag {
        Some(t) => format!("<sip:1002@pbx>;tag={t}"),
        None => "<sip:1002@pbx>".to_owned(),
    };
    let (from, to) = if from_caller {
        (caller.to_owned(), callee)
    } else {
        (callee, caller.to_owned())
    };
    let ct = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    format!(
        "{start}\r\nVia: SIP/2.0/UDP x;branch=z9hG4bK1\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

struct Harness {
    t: Tracker,
    now: Duration,
}

impl Harness {
    fn new(config: TrackerConfig) -> Harness {
        Harness {
            t: Tracker::new(config),
            now: Duration::from_secs(1000),
        }
    }

    /// Sends `bytes` from caller to callee signalling address or back.
    fn send(&mut self, bytes: &[u8], from_caller: bool) -> Vec<CallEvent> {
        self.now += Duration::from_millis(10);
        let m = SipMessage::parse(bytes).unwrap();
        let (src, dst) = if from_caller {
            (addr(CALLER_SIG), addr(CALLEE_SIG))
        } else {
            (addr(CALLEE_SIG), addr(CALLER_SIG))
        };
        self.t.handle(self.now, src, dst, &m)
    }

    fn classify(&self, src: &str, dst: &str) -> Option<(CallKey, Direction)> {
        self.t.classify(self.now, addr(src), addr(dst))
    }
}

fn ended(events: &[CallEvent]) -> Vec<EndReason> {
    events
        .iter()
        .filter_map(|e| match e {
            CallEvent::CallEnded { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

#[test]
fn call_with_early_media_reinvite_move_and_bye_from_callee() {
    let mut h = Harness::new(TrackerConfig::default());
    let id = "abc:def@host";
    let key = CallKey::from_call_id(id);
    let ev = h.send(
        &msg(
            "INVITE sip:1002@pbx SIP/2.0",
            id,
            "1 INVITE",
            None,
            true,
            &sdp("192.0.2.1", 4000, ""),
        ),
        true,
    );
    let CallEvent::CallStarted(info) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(info.key, key);
    assert_eq!(info.call_id, id);
    assert_eq!((info.caller.label(), info.callee.label()), ("1001", "1002"));
    assert_eq!(info.caller_signalling, addr(CALLER_SIG));
    assert!(matches!(ev[1], CallEvent::MediaUpdated { .. }));
    rst_proto::Uuid::new(key.as_str()).unwrap();

    // Before any answer the callee's RTP to the caller's endpoint is known.
    assert_eq!(
        h.classify("198.51.100.9:9", "192.0.2.1:4000"),
        Some((key, Direction::Write))
    );
    // The caller's RTP to an unknown callee endpoint: by its source.
    assert_eq!(
        h.classify("192.0.2.1:4000", "198.51.100.9:9"),
        Some((key, Direction::Read))
    );

    // 183 with SDP: early media from the callee's endpoint.
    h.send(
        &msg(
            "SIP/2.0 183 Session Progress",
            id,
            "1 INVITE",
            Some("tt"),
            true,
            &sdp("192.0.2.2", 5000, ""),
        ),
        false,
    );
    assert_eq!(
        h.classify("192.0.2.1:4000", "192.0.2.2:5000"),
        Some((key, Direction::Read))
    );
    assert_eq!(
        h.classify("192.0.2.2:5000", "192.0.2.1:4000"),
        Some((key, Direction::Write))
    );
    // NAT rewrote the callee's source: the destination still decides.
    assert_eq!(
        h.classify("203.0.113.7:31000", "192.0.2.1:4000"),
        Some((key, Direction::Write))
    );

    let ev = h.send(
        &msg(
            "SIP/2.0 200 OK",
            id,
            "1 INVITE",
            Some("tt"),
            true,
            &sdp("192.0.2.2", 5000, ""),
        ),
        false,
    );
    assert_eq!(
        ev,
        [CallEvent::CallAnswered { key, at: h.now }],
        "same SDP, no media event"
    );
    h.send(
        &msg(
            "ACK sip:1002@pbx SIP/2.0",
            id,
            "1 ACK",
            Some("tt"),
            true,
            "",
        ),
        true,
    );

    // The callee re-INVITEs (From/To swapped) and moves its media.
    let ev = h.send(
        &msg(
            "INVITE sip:1001@pbx SIP/2.0",
            id,
            "7 INVITE",
            Some("tt"),
            false,
            &sdp("192.0.2.3", 6000, "a=sendonly\r\n"),
        ),
        false,
    );
    let Some(CallEvent::MediaUpdated { caller, callee, .. }) = ev.first() else {
        panic!("{ev:?}")
    };
    let callee = callee.as_ref().unwrap();
    assert_eq!(callee.audio, Some(addr("192.0.2.3:6000")));
    assert_eq!(callee.direction, MediaDirection::SendOnly);
    assert_eq!(callee.telephone_event, Some(101));
    assert_eq!(caller.as_ref().unwrap().audio, Some(addr("192.0.2.1:4000")));
    assert_eq!(
        h.classify("192.0.2.1:4000", "192.0.2.3:6000"),
        Some((key, Direction::Read))
    );
    // Packets still in flight to the old endpoint are kept.
    assert_eq!(
        h.classify("192.0.2.9:1", "192.0.2.2:5000"),
        Some((key, Direction::Read))
    );

    let ev = h.send(
        &msg(
            "BYE sip:1001@pbx SIP/2.0",
            id,
            "8 BYE",
            Some("tt"),
            false,
            "",
        ),
        false,
    );
    assert_eq!(ended(&ev), [EndReason::Bye]);
    // RTP still in flight after the BYE matches for the linger, then nothing.
    assert_eq!(
        h.classify("192.0.2.1:4000", "192.0.2.3:6000"),
        Some((key, Direction::Read))
    );
    h.now += TrackerConfig::default().rtp_linger;
    assert_eq!(h.classify("192.0.2.1:4000", "192.0.2.3:6000"), None);
    // Retransmitted BYE, and the 200 to it: nothing new.
    assert!(h
        .send(
            &msg(
                "BYE sip:1001@pbx SIP/2.0",
                id,
                "8 BYE",
                Some("tt"),
                false,
                ""
            ),
            false
        )
        .is_empty());
    assert!(h
        .send(
            &msg("SIP/2.0 200 OK", id, "8 BYE", Some("tt"), false, ""),
            true
        )
        .is_empty());
    // After linger the dialog is forgotten.
    h.now += Duration::from_secs(40);
    assert!(h.t.handle_timeout(h.now).is_empty());
    assert!(h.t.is_empty());
}

#[test]
fn cancel_failure_auth_retry_and_non_calls() {
    let mut h = Harness::new(TrackerConfig::default());
    // CANCEL before an answer ends the call; the 487 adds nothing.
    h.send(
        &msg(
            "INVITE sip:1002@pbx SIP/2.0",
            "c1",
            "1 INVITE",
            None,
            true,
            &sdp("192.0.2.1", 4000, ""),
        ),
        true,
    );
    h.send(
        &msg("SIP/2.0 180 Ringing", "c1", "1 INVITE", Some("t"), true, ""),
        false,
    );
    let ev = h.send(
        &msg(
            "CANCEL sip:1002@pbx SIP/2.0",
            "c1",
            "1 CANCEL",
            None,
            true,
            "",
        ),
        true,
    );
    assert_eq!(ended(&ev), [EndReason::Cancelled]);
    assert!(h
        .send(
            &msg(
                "SIP/2.0 487 Request Terminated",
                "c1",
                "1 INVITE",
                Some("t"),
                true,
                ""
            ),
            false
        )
        .is_empty());

    // 407 then a retry with the same Call-ID: one call, answered.
    let ev = h.send(
        &msg(
            "INVITE sip:1002@pbx SIP/2.0",
            "c2",
            "1 INVITE",
            None,
            true,
            "",
        ),
        true,
    );
    assert_eq!(ev.len(), 1);
    assert!(ended(&h.send(
        &msg(
            "SIP/2.0 407 Proxy Authentication Required",
            "c2",
            "1 INVITE",
            Some("p"),
            true,
            ""
        ),
        false
    ))
    .is_empty());
    let ev = h.send(
        &msg(
            "INVITE sip:1002@pbx SIP/2.0",
            "c2",
            "2 INVITE",
            None,
            true,
            "",
        ),
        true,
    );
    assert!(ev.is_empty(), "{ev:?}");
    let ev = h.send(
        &msg("SIP/2.0 200 OK", "c2", "2 INVITE", Some("q"), true, ""),
        false,
    );
    assert!(matches!(ev[..], [CallEvent::CallAnswered { .. }]));

    // 486 Busy ends an unanswered call as failed.
    h.send(
        &msg(
            "INVITE sip:1002@pbx SIP/2.0",
            "c3",
            "1 INVITE",
            None,
            true,
            "",
        ),
        true,
    );
    let ev = h.send(
        &msg(
            "SIP/2.0 486 Busy Here",
            "c3",
            "1 INVITE",
            Some("b"),
            true,
            "",
        ),
        false,
    );
    assert_eq!(ended(&ev), [EndReason::Failed(486)]);

    // A failed re-INVITE leaves an answered call alone.
    h.send(
        &msg(
            "INVITE sip:1002@pbx SIP/2.0",
            "c2",
            "3 INVITE",
            Some("q"),
            true,
            "",
        ),
        true,
    );
    assert!(ended(&h.send(
        &msg(
            "SIP/2.0 488 Not Acceptable Here",
            "c2",
            "3 INVITE",
            Some("q"),
            true,
            ""
        ),
        false
    ))
    .is_empty());

    // REGISTER, OPTIONS, SUBSCRIBE: not calls.
    for m in [
        "REGISTER sip:pbx SIP/2.0",
        "OPTIONS sip:pbx SIP/2.0",
        "SUBSCRIBE sip:pbx SIP/2.0",
    ] {
        let method = m.split(' ').next().unwrap();
        assert!(h
            .send(
                &msg(
                    m,
                    &format!("n-{method}"),
                    &format!("1 {method}"),
                    None,
                    true,
                    ""
                ),
                true
            )
            .is_empty());
    }
    assert_eq!(h.t.calls().count(), 1);
    assert!(h.t.stats().not_in_call >= 3);
}

#[test]
fn t38_switch_is_not_audio() {
    let mut h = Harness::new(TrackerConfig::default());
    let key = CallKey::from_call_id("fax");
    h.send(
        &msg(
            "INVITE sip:1002@pbx SIP/2.0",
            "fax",
            "1 INVITE",
            None,
            true,
            &sdp("192.0.2.1", 4000, ""),
        ),
        true,
    );
    h.send(
        &msg(
            "SIP/2.0 200 OK",
            "fax",
            "1 INVITE",
            Some("t"),
            true,
            &sdp("192.0.2.2", 5000, ""),
        ),
        false,
    );
    assert!(h.classify("192.0.2.2:5000", "192.0.2.1:4000").is_some());
    // Re-INVITE to T.38 on the same ports: audio port 0, image on 4000.
    let t38 = "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 0 RTP/AVP 8\r\nm=image 4000 udptl t38\r\n";
    let ev = h.send(
        &msg(
            "INVITE sip:1002@pbx SIP/2.0",
            "fax",
            "2 INVITE",
            Some("t"),
            true,
            t38,
        ),
        true,
    );
    let Some(CallEvent::MediaUpdated { caller, .. }) = ev.first() else {
        panic!("{ev:?}")
    };
    let caller = caller.as_ref().unwrap();
    assert_eq!(caller.audio, None);
    assert_eq!(
        caller.non_audio,
        [(MediaKind::Image, addr("192.0.2.1:4000"))]
    );
    // Fax packets to the caller's old audio port are not audio of the call.
    assert_eq!(h.classify("192.0.2.9:9", "192.0.2.1:4000"), None);
    // The callee still receives audio at its endpoint until it answers.
    assert_eq!(
        h.classify("192.0.2.1:4000", "192.0.2.2:5000"),
        Some((key, Direction::Read))
    );
}

#[test]
fn hold_keeps_the_endpoint() {
    let mut h = Harness::new(TrackerConfig::default());
    let key = CallKey::from_call_id("hold");
    h.send(
        &msg(
            "INVITE sip:1002@pbx SIP/2.0",
            "hold",
            "1 INVITE",
            None,
            true,
            &sdp("192.0.2.1", 4000, ""),
        ),
        true,
    );
    h.send(
        &msg(
            "SIP/2.0 200 OK",
            "hold",
            "1 INVITE",
            Some("t"),
            true,
            &sdp("192.0.2.2", 5000, ""),
        ),
        false,
    );
    let held = sdp("0.0.0.0", 4000, "");
    let ev = h.send(
        &msg(
            "INVITE sip:1002@pbx SIP/2.0",
            "hold",
            "2 INVITE",
            Some("t"),
            true,
            &held,
        ),
        true,
    );
    let Some(CallEvent::MediaUpdated { caller, .. }) = ev.first() else {
        panic!("{ev:?}")
    };
    let caller = caller.as_ref().unwrap();
    assert_eq!(caller.audio, Some(addr("192.0.2.1:4000")));
    assert_eq!(caller.direction, MediaDirection::Inactive);
    assert_eq!(
        h.classify("192.0.2.2:5000", "192.0.2.1:4000"),
        Some((key, Direction::Write))
    );
}

#[test]
fn invite_flood_is_bounded_and_expires() {
    let config = TrackerConfig {
        max_dialogs: 100,
        setup_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(60),
        linger: Duration::from_secs(5),
        ..TrackerConfig::default()
    };
    let mut h = Harness::new(config);
    // One real call, answered.
    h.send(
        &msg(
            "INVITE sip:1002@pbx SIP/2.0",
            "real",
            "1 INVITE",
            None,
            true,
            &sdp("192.0.2.1", 4000, ""),
        ),
        true,
    );
    h.send(
        &msg(
            "SIP/2.0 200 OK",
            "real",
            "1 INVITE",
            Some("t"),
            true,
            &sdp("192.0.2.2", 5000, ""),
        ),
        false,
    );
    let real = CallKey::from_call_id("real");
    // 10,000 INVITEs that never end.
    let mut evicted = 0;
    for i in 0..10_000 {
        let ev = h.send(
            &msg(
                "INVITE sip:1002@pbx SIP/2.0",
                &format!("flood-{i}"),
                "1 INVITE",
                None,
                true,
                "",
            ),
            true,
        );
        evicted += ended(&ev)
            .iter()
            .filter(|r| **r == EndReason::Evicted)
            .count();
        assert!(h.t.len() <= 100);
        // The RTP of the real call keeps it alive.
        h.t.touch(real, h.now);
    }
    assert_eq!(evicted, 10_000 - 99);
    assert_eq!(h.t.stats().evicted, 10_000 - 99);
    assert!(
        h.t.call(real).is_some(),
        "an answered call is never evicted"
    );
    // Quiet for the setup timeout: the flood expires, the touched call stays.
    h.now += Duration::from_secs(31);
    h.t.touch(real, h.now);
    let ev = h.t.handle_timeout(h.now);
    assert_eq!(ended(&ev).len(), 99);
    assert!(ended(&ev).iter().all(|r| *r == EndReason::Timeout));
    h.now += Duration::from_secs(6);
    h.t.touch(real, h.now);
    h.t.handle_timeout(h.now);
    assert_eq!(h.t.len(), 1);
    // Without RTP or SIP the answered call times out too.
    h.now += Duration::from_secs(61);
    assert_eq!(ended(&h.t.handle_timeout(h.now)), [EndReason::Timeout]);

    // Full of answered calls: a new INVITE is refused, not an answered call dropped.
    let mut h = Harness::new(TrackerConfig {
        max_dialogs: 3,
        ..TrackerConfig::default()
    });
    for i in 0..3 {
        let id = format!("ans-{i}");
        h.send(
            &msg(
                "INVITE sip:1002@pbx SIP/2.0",
                &id,
                "1 INVITE",
                None,
                true,
                "",
            ),
            true,
        );
        h.send(
            &msg("SIP/2.0 200 OK", &id, "1 INVITE", Some("t"), true, ""),
            false,
        );
    }
    assert!(h
        .send(
            &msg(
                "INVITE sip:1002@pbx SIP/2.0",
                "late",
                "1 INVITE",
                None,
                true,
                ""
            ),
            true
        )
        .is_empty());
    assert_eq!(h.t.stats().refused, 1);
    // Time going backwards (a broken capture clock) is no panic.
    h.now = Duration::ZERO;
    h.t.handle_timeout(h.now);
    h.send(
        &msg(
            "BYE sip:1002@pbx SIP/2.0",
            "ans-0",
            "2 BYE",
            Some("t"),
            true,
            "",
        ),
        true,
    );
}

// ---- robustness ------------------------------------------------------------

/// xorshift64*: deterministic, dependency-free randomness for fuzz-like loops.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Runs every layer on `bytes`; none may panic.
fn exercise(t: &mut Tracker, now: Duration, bytes: &[u8]) {
    if let Ok(m) = SipMessage::parse(bytes) {
        let _ = m.header("Via");
        let _ = m.sdp_body();
        t.handle(now, addr("10.0.0.1:5060"), addr("10.0.0.2:5060"), &m);
    }
    let _ = Sdp::parse(bytes);
    let _ = frame(bytes);
    let mut s = SipStream::new();
    s.push(bytes);
    while s.next_message().is_some() {}
}

#[test]
fn random_truncated_and_mutated_input_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut t = Tracker::new(TrackerConfig {
        max_dialogs: 50,
        ..TrackerConfig::default()
    });
    let seeds: Vec<Vec<u8>> = vec![
        RFC3261_INVITE.as_bytes().to_vec(),
        msg(
            "SIP/2.0 200 OK",
            "x",
            "1 INVITE",
            Some("t"),
            true,
            &sdp("192.0.2.2", 5000, "a=recvonly\r\n"),
        ),
        with_headers(
            "Content-Type: multipart/mixed;boundary=q\r\nContent-Length: 40\r\n",
            "--q\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n--q--",
        )
        .into_bytes(),
    ];
    let mut now = Duration::ZERO;
    // Every truncation of every seed.
    for seed in &seeds {
        for cut in 0..=seed.len() {
            exercise(&mut t, now, &seed[..cut]);
        }
    }
    // Random bytes, and seeds with random bytes flipped, inserted, deleted.
    let alphabet = b"\r\n :;<>\"@=/\\%0123456789vmcaSIPINVITE\t,";
    for round in 0..20_000 {
        now += Duration::from_millis(rng.below(2000) as u64);
        let mut bytes = if round % 4 == 0 {
            (0..rng.below(600)).map(|_| rng.next() as u8).collect()
        } else {
            seeds[rng.below(seeds.len())].clone()
        };
        for _ in 0..rng.below(8) {
            let pos = rng.below(bytes.len() + 1);
            let b = if rng.below(2) == 0 {
                alphabet[rng.below(alphabet.len())]
            } else {
                rng.next() as u8
            };
            match rng.below(3) {
                0 if pos < bytes.len() => bytes[pos] = b,
                1 => bytes.insert(pos, b),
                _ if pos < bytes.len() => {
                    bytes.remove(pos);
                }
                _ => {}
            }
        }
        exercise(&mut t, now, &bytes);
        if round % 100 == 0 {
            t.handle_timeout(now);
            let _ = t.classify(now, addr("192.0.2.2:5000"), addr("192.0.2.1:4000"));
        }
        assert!(t.len() <= 50);
    }
}

#[test]
fn huge_inputs_are_refused_quickly() {
    // A 60 KB header value, a 60 KB Call-ID, 60 KB of folding, and a body
    // that claims more than it has: all refused or bounded, no panic.
    let big = "a".repeat(60_000);
    for msg in [
        with_headers(&format!("X-Huge: {big}\r\n"), ""),
        with_headers("", "").replace("Call-ID: x", &format!("Call-ID: {big}")),
        with_headers(&format!("X-Fold: a\r\n{}", " b\r\n".repeat(15_000)), ""),
        with_headers("Content-Length: 4294967295\r\n", &big),
    ] {
        let err = SipMessage::parse(msg.as_bytes()).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                "sip_header_too_long" | "sip_too_long" | "sip_body_truncated"
            ),
            "{err}"
        );
    }
    let mut s = SipStream::new();
    s.push(with_headers("Content-Length: 4294967295\r\n", "").as_bytes());
    assert!(matches!(s.next_message(), Some(Err(_))));
    let sdp_bomb = format!("v=0\r\n{}", "a=rtpmap:96 x/8000\r\n".repeat(10_000));
    let sdp_bomb = format!(
        "{sdp_bomb}m=audio 1 RTP/AVP 0\r\n{}",
        "a=rtpmap:96 x/8000\r\n".repeat(100)
    );
    assert!(Sdp::parse(sdp_bomb.as_bytes()).is_err());
}
