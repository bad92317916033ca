//! Fixed byte vectors: the examples of DESIGN.md ("The rst datagram protocol"),
//! other accepted forms, and a table of malformed datagrams with the exact error.

use std::collections::BTreeSet;

use rst_proto::{
    Ack, Bye, Data, Direction, Extensions, Inv, Message, ParseError, PayloadType, RtpPorts, Uuid,
    MAX_DATAGRAM_LEN,
};

const UUID: &str = "478525a8-8263-4550-b18c-d027d11c9865";

fn uuid() -> Uuid<'static> {
    Uuid::new(UUID).unwrap()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// 160 bytes of µ-law-looking noise with `:` and line ends in it.
fn payload_160() -> Vec<u8> {
    (0..160u32)
        .map(|i| match i % 7 {
            0 => b':',
            1 => b'\n',
            2 => 0,
            _ => (i * 37 % 256) as u8,
        })
        .collect()
}

/// Parses `wire`, checks it against `expected`, and checks that encoding gives
/// back exactly `wire` (every example here is in canonical form).
fn assert_canonical(wire: &[u8], expected: Message<'_>) {
    assert_eq!(Message::parse(wire), Ok(expected), "parsing {wire:?}");
    assert_eq!(
        expected.to_vec().unwrap(),
        wire,
        "encoding {expected:?} gives {:?}",
        String::from_utf8_lossy(&expected.to_vec().unwrap())
    );
}

#[test]
fn design_data_example() {
    let payload = payload_160();
    let wire = cat(&[
        b"DATA:478525a8-8263-4550-b18c-d027d11c9865:R:00:160:",
        &payload,
    ]);
    assert_canonical(
        &wire,
        Message::Data(Data {
            uuid: uuid(),
            direction: Direction::Read,
            payload_type: PayloadType::PCMU,
            payload: &payload,
        }),
    );
}

#[test]
fn design_inv_example() {
    assert_canonical(
        b"INV :478525a8-8263-4550-b18c-d027d11c9865:18621575908:02131570530",
        Message::Inv(Inv {
            uuid: uuid(),
            caller: "18621575908",
            callee: "02131570530",
            rtp_ports: None,
            extensions: Extensions::NONE,
        }),
    );
}

#[test]
fn design_inv_rtp_mode() {
    assert_canonical(
        b"INV :478525a8-8263-4550-b18c-d027d11c9865:18621575908:02131570530:5004:5005",
        Message::Inv(Inv {
            uuid: uuid(),
            caller: "18621575908",
            callee: "02131570530",
            rtp_ports: Some(RtpPorts {
                read: 5004,
                write: 5005,
            }),
            extensions: Extensions::NONE,
        }),
    );
}

#[test]
fn design_ack_rtp_mode() {
    assert_canonical(
        b"ACK :478525a8-8263-4550-b18c-d027d11c9865:6004:6005",
        Message::Ack(Ack {
            uuid: uuid(),
            rtp_ports: Some(RtpPorts {
                read: 6004,
                write: 6005,
            }),
        }),
    );
}

#[test]
fn design_ack() {
    assert_canonical(
        b"ACK :478525a8-8263-4550-b18c-d027d11c9865",
        Message::Ack(Ack {
            uuid: uuid(),
            rtp_ports: None,
        }),
    );
}

#[test]
fn design_bye() {
    assert_canonical(
        b"BYE :478525a8-8263-4550-b18c-d027d11c9865",
        Message::Bye(Bye { uuid: uuid() }),
    );
}

#[test]
fn inv_with_extensions() {
    let expected = |rtp_ports, extensions| {
        Message::Inv(Inv {
            uuid: uuid(),
            caller: "1001",
            callee: "1002",
            rtp_ports,
            extensions: Extensions::parse(extensions).unwrap(),
        })
    };
    let ports = Some(RtpPorts {
        read: 5004,
        write: 5005,
    });
    assert_canonical(
        b"INV :478525a8-8263-4550-b18c-d027d11c9865:1001:1002:rate=16000",
        expected(None, "rate=16000"),
    );
    assert_canonical(
        b"INV :478525a8-8263-4550-b18c-d027d11c9865:1001:1002:5004:5005:rate=16000:x=y=z",
        expected(ports, "rate=16000:x=y=z"),
    );

    let wire = b"INV :478525a8-8263-4550-b18c-d027d11c9865:1001:1002:5004:5005:rate=16000:x=y=z";
    let Ok(Message::Inv(inv)) = Message::parse(wire) else {
        panic!()
    };
    assert_eq!(inv.extensions.l16_rate(), Some(16000));
    assert_eq!(inv.extensions.get("x"), Some("y=z"));
    assert_eq!(
        inv.extensions.iter().collect::<Vec<_>>(),
        [("rate", "16000"), ("x", "y=z")]
    );
    assert_eq!(Extensions::NONE.l16_rate(), None);
    assert_eq!(Extensions::parse("rate=1").unwrap().l16_rate(), None);
}

#[test]
fn other_accepted_forms() {
    let inv = |caller, callee, rtp_ports| {
        Message::Inv(Inv {
            uuid: uuid(),
            caller,
            callee,
            rtp_ports,
            extensions: Extensions::NONE,
        })
    };
    let data = |direction, pt, payload| {
        Message::Data(Data {
            uuid: uuid(),
            direction,
            payload_type: PayloadType::new(pt).unwrap(),
            payload,
        })
    };
    let bye = Message::Bye(Bye { uuid: uuid() });
    let cases: Vec<(Vec<u8>, Message<'_>)> = vec![
        // A C sender's trailing NUL or line end on control messages.
        (cat(&[b"BYE :", UUID.as_bytes(), b"\0"]), bye),
        (cat(&[b"BYE :", UUID.as_bytes(), b"\r\n"]), bye),
        (
            cat(&[b"INV :", UUID.as_bytes(), b":1001:1002\0"]),
            inv("1001", "1002", None),
        ),
        (
            cat(&[b"ACK :", UUID.as_bytes(), b":6004:6005\n"]),
            Message::Ack(Ack {
                uuid: uuid(),
                rtp_ports: Some(RtpPorts {
                    read: 6004,
                    write: 6005,
                }),
            }),
        ),
        // Unknown caller and callee.
        (cat(&[b"INV :", UUID.as_bytes(), b"::"]), inv("", "", None)),
        // Any UTF-8 but ':' in caller and callee.
        (
            cat(&[
                b"INV :",
                UUID.as_bytes(),
                ":\"Zhang San\" <sip 1001@pbx>:张三".as_bytes(),
            ]),
            inv("\"Zhang San\" <sip 1001@pbx>", "张三", None),
        ),
        // Extreme ports; a redundant trailing separator after the ports.
        (
            cat(&[b"INV :", UUID.as_bytes(), b":a:b:1:65535"]),
            inv(
                "a",
                "b",
                Some(RtpPorts {
                    read: 1,
                    write: 65535,
                }),
            ),
        ),
        (
            cat(&[b"INV :", UUID.as_bytes(), b":a:b:05004:5005:"]),
            inv(
                "a",
                "b",
                Some(RtpPorts {
                    read: 5004,
                    write: 5005,
                }),
            ),
        ),
        // PT as one to three digits; LENGTH with leading zeros; empty payload.
        (
            cat(&[b"DATA:", UUID.as_bytes(), b":W:8:3:abc"]),
            data(Direction::Write, 8, b"abc"),
        ),
        (
            cat(&[b"DATA:", UUID.as_bytes(), b":W:018:003:abc"]),
            data(Direction::Write, 18, b"abc"),
        ),
        (
            cat(&[b"DATA:", UUID.as_bytes(), b":R:127:0:"]),
            data(Direction::Read, 127, b""),
        ),
        // The payload is taken by position: separators, NUL and line ends in it stay.
        (
            cat(&[b"DATA:", UUID.as_bytes(), b":R:10:6:\0:R:\r\n"]),
            data(Direction::Read, 10, b"\0:R:\r\n"),
        ),
        // tap_daemon-style derived ids and the longest accepted id.
        (
            b"BYE :tap_0001-a".to_vec(),
            Message::Bye(Bye {
                uuid: Uuid::new("tap_0001-a").unwrap(),
            }),
        ),
    ];
    for (wire, expected) in &cases {
        assert_eq!(
            Message::parse(wire).as_ref(),
            Ok(expected),
            "parsing {:?}",
            String::from_utf8_lossy(wire)
        );
    }

    let longest = "a".repeat(Uuid::MAX_LEN);
    let wire = format!("BYE :{longest}");
    assert_eq!(
        Message::parse(wire.as_bytes()).map(|m| m.uuid().as_str()),
        Ok(longest.as_str())
    );
}

#[test]
fn known_payload_types() {
    for (pt, number) in [
        (PayloadType::PCMU, 0),
        (PayloadType::G723, 4),
        (PayloadType::PCMA, 8),
        (PayloadType::G722, 9),
        (PayloadType::L16, 10),
        (PayloadType::G729, 18),
    ] {
        assert_eq!(pt.number(), number);
        assert_eq!(PayloadType::new(number), Some(pt));
        assert_eq!(pt.to_string(), format!("{number:02}"));
    }
    assert_eq!(
        PayloadType::new(127).map(|pt| pt.to_string()),
        Some("127".into())
    );
    assert_eq!(PayloadType::new(128), None);
    assert_eq!(PayloadType::new(255), None);
}

/// `DATA:<UUID>:R:00:` + `length` field + `:` + `actual` bytes.
fn data_with(length: &str, actual: usize) -> Vec<u8> {
    let mut wire = format!("DATA:{UUID}:R:00:{length}:").into_bytes();
    wire.resize(wire.len() + actual, b'x');
    wire
}

fn bad_uuid(uuid: &str) -> ParseError {
    ParseError::BadUuid { uuid: uuid.into() }
}

fn missing(message: &'static str, field: &'static str) -> ParseError {
    ParseError::MissingField { message, field }
}

fn bad_port(message: &'static str, port: &str) -> ParseError {
    ParseError::BadPort {
        message,
        port: port.into(),
    }
}

fn bad_pt(pt: &str) -> ParseError {
    ParseError::BadPayloadType { pt: pt.into() }
}

fn malformed() -> Vec<(&'static str, Vec<u8>, ParseError)> {
    let u = UUID;
    let s = |text: String| text.into_bytes();
    let long_uuid = "a".repeat(Uuid::MAX_LEN + 1);
    let mut oversize = data_with("16384", MAX_DATAGRAM_LEN);
    oversize.truncate(MAX_DATAGRAM_LEN + 1);
    vec![
        // Too short, oversize.
        ("empty", b"".to_vec(), ParseError::TooShort { len: 0 }),
        (
            "bare BYE",
            b"BYE ".to_vec(),
            ParseError::TooShort { len: 4 },
        ),
        (
            "bare DATA",
            b"DATA".to_vec(),
            ParseError::TooShort { len: 4 },
        ),
        (
            "oversize",
            oversize,
            ParseError::Oversize {
                len: MAX_DATAGRAM_LEN + 1,
                max: MAX_DATAGRAM_LEN,
            },
        ),
        (
            "oversize garbage",
            vec![0xff; MAX_DATAGRAM_LEN * 2],
            ParseError::Oversize {
                len: MAX_DATAGRAM_LEN * 2,
                max: MAX_DATAGRAM_LEN,
            },
        ),
        // Unknown commands.
        (
            "unknown command",
            s(format!("FOO :{u}")),
            ParseError::UnknownCommand {
                command: "FOO ".into(),
            },
        ),
        (
            "lower case",
            s(format!("data:{u}:R:00:0:")),
            ParseError::UnknownCommand {
                command: "data".into(),
            },
        ),
        (
            "INV without padding",
            s(format!("INV:{u}:a:b")),
            ParseError::UnknownCommand {
                command: "INV:".into(),
            },
        ),
        (
            "no colon after command",
            s(format!("BYE  {u}")),
            ParseError::UnknownCommand {
                command: "BYE ".into(),
            },
        ),
        (
            "binary command",
            b"\xff\xfe\0\x01:rest".to_vec(),
            ParseError::UnknownCommand {
                command: "\u{fffd}\u{fffd}\0\u{1}".into(),
            },
        ),
        // Missing fields.
        ("DATA uuid", s(format!("DATA:{u}")), missing("DATA", "uuid")),
        (
            "DATA flag",
            s(format!("DATA:{u}:R")),
            missing("DATA", "flag"),
        ),
        (
            "DATA pt",
            s(format!("DATA:{u}:R:00")),
            missing("DATA", "payload_type"),
        ),
        (
            "DATA length",
            s(format!("DATA:{u}:R:00:160")),
            missing("DATA", "length"),
        ),
        (
            "INV caller",
            s(format!("INV :{u}")),
            missing("INV", "caller"),
        ),
        (
            "INV caller, line end",
            s(format!("INV :{u}\r\n")),
            missing("INV", "caller"),
        ),
        (
            "INV callee",
            s(format!("INV :{u}:1001")),
            missing("INV", "callee"),
        ),
        (
            "INV write port",
            s(format!("INV :{u}:a:b:5004")),
            missing("INV", "local_write_port"),
        ),
        (
            "ACK write port",
            s(format!("ACK :{u}:6004")),
            missing("ACK", "server_write_port"),
        ),
        // Flag.
        (
            "flag X",
            s(format!("DATA:{u}:X:00:0:")),
            ParseError::BadFlag { flag: "X".into() },
        ),
        (
            "flag lower case",
            s(format!("DATA:{u}:r:00:0:")),
            ParseError::BadFlag { flag: "r".into() },
        ),
        (
            "flag RW",
            s(format!("DATA:{u}:RW:00:0:")),
            ParseError::BadFlag { flag: "RW".into() },
        ),
        (
            "flag empty",
            s(format!("DATA:{u}::00:0:")),
            ParseError::BadFlag { flag: "".into() },
        ),
        // Payload type.
        ("PT 1a", s(format!("DATA:{u}:R:1a:0:")), bad_pt("1a")),
        ("PT 128", s(format!("DATA:{u}:R:128:0:")), bad_pt("128")),
        ("PT 0000", s(format!("DATA:{u}:R:0000:0:")), bad_pt("0000")),
        ("PT empty", s(format!("DATA:{u}:R::0:")), bad_pt("")),
        ("PT signed", s(format!("DATA:{u}:R:+8:0:")), bad_pt("+8")),
        ("PT space", s(format!("DATA:{u}:R: 8:0:")), bad_pt(" 8")),
        // Length.
        (
            "LENGTH short by one",
            data_with("160", 159),
            ParseError::LengthMismatch {
                declared: 160,
                actual: 159,
            },
        ),
        (
            "LENGTH long by one",
            data_with("160", 161),
            ParseError::LengthMismatch {
                declared: 160,
                actual: 161,
            },
        ),
        (
            "LENGTH without payload",
            data_with("160", 0),
            ParseError::LengthMismatch {
                declared: 160,
                actual: 0,
            },
        ),
        (
            "payload without LENGTH",
            data_with("0", 1),
            ParseError::LengthMismatch {
                declared: 0,
                actual: 1,
            },
        ),
        (
            "LENGTH hex",
            data_with("a0", 160),
            ParseError::BadLength {
                length: "a0".into(),
            },
        ),
        (
            "LENGTH empty",
            data_with("", 0),
            ParseError::BadLength { length: "".into() },
        ),
        (
            "LENGTH negative",
            data_with("-1", 0),
            ParseError::BadLength {
                length: "-1".into(),
            },
        ),
        (
            "LENGTH too many digits",
            data_with("000160", 160),
            ParseError::BadLength {
                length: "000160".into(),
            },
        ),
        // Not UTF-8.
        (
            "INV header not UTF-8",
            s(format!("INV :{u}:"))
                .into_iter()
                .chain(*b"\xff\xfe:1002")
                .collect(),
            ParseError::NotUtf8 {
                message: "INV",
                field: "header",
            },
        ),
        (
            "BYE header not UTF-8",
            b"BYE :\xc3".to_vec(),
            ParseError::NotUtf8 {
                message: "BYE",
                field: "header",
            },
        ),
        (
            "ACK header not UTF-8",
            cat(&[b"ACK :", u.as_bytes(), b":6004:6005\x80"]),
            ParseError::NotUtf8 {
                message: "ACK",
                field: "header",
            },
        ),
        // UUIDs that must never become file names.
        ("UUID with /", b"BYE :a/b".to_vec(), bad_uuid("a/b")),
        ("UUID ..", b"BYE :..".to_vec(), bad_uuid("..")),
        (
            "UUID ../etc/passwd",
            b"DATA:../etc/passwd:R:00:0:".to_vec(),
            bad_uuid("../etc/passwd"),
        ),
        ("UUID with NUL", b"BYE :a\0b".to_vec(), bad_uuid("a\\0b")),
        (
            "DATA UUID with NUL",
            b"DATA:a\0b:R:00:0:".to_vec(),
            bad_uuid("a\\0b"),
        ),
        ("UUID with space", b"INV :a b:1:2".to_vec(), bad_uuid("a b")),
        ("UUID leading space", b"BYE : ab".to_vec(), bad_uuid(" ab")),
        ("UUID empty BYE", b"BYE :".to_vec(), bad_uuid("")),
        ("UUID empty INV", b"INV ::a:b".to_vec(), bad_uuid("")),
        ("UUID empty ACK", b"ACK :".to_vec(), bad_uuid("")),
        ("UUID empty DATA", b"DATA::R:00:0:".to_vec(), bad_uuid("")),
        (
            "UUID of 65 characters",
            s(format!("BYE :{long_uuid}")),
            bad_uuid(&long_uuid),
        ),
        (
            "DATA UUID of 65 characters",
            s(format!("DATA:{long_uuid}:R:00:0:")),
            bad_uuid(&long_uuid),
        ),
        ("UUID leading -", b"BYE :-rf".to_vec(), bad_uuid("-rf")),
        ("UUID leading _", b"BYE :_a".to_vec(), bad_uuid("_a")),
        ("UUID non-ASCII", s("BYE :é".into()), bad_uuid("é")),
        (
            "DATA UUID not UTF-8",
            b"DATA:a\xffb:R:00:0:".to_vec(),
            bad_uuid("a\u{fffd}b"),
        ),
        // Ports.
        (
            "INV port 0",
            s(format!("INV :{u}:a:b:0:5005")),
            bad_port("INV", "0"),
        ),
        (
            "INV port 70000",
            s(format!("INV :{u}:a:b:5004:70000")),
            bad_port("INV", "70000"),
        ),
        (
            "INV port 65536",
            s(format!("INV :{u}:a:b:65536:5005")),
            bad_port("INV", "65536"),
        ),
        (
            "INV port abc",
            s(format!("INV :{u}:a:b:abc:5005")),
            bad_port("INV", "abc"),
        ),
        (
            "INV port empty",
            s(format!("INV :{u}:a:b:5004:")),
            bad_port("INV", ""),
        ),
        (
            "INV port 6 digits",
            s(format!("INV :{u}:a:b:005004:5005")),
            bad_port("INV", "005004"),
        ),
        (
            "ACK port 0",
            s(format!("ACK :{u}:6004:0")),
            bad_port("ACK", "0"),
        ),
        (
            "ACK port 70000",
            s(format!("ACK :{u}:70000:6005")),
            bad_port("ACK", "70000"),
        ),
        (
            "ACK port abc",
            s(format!("ACK :{u}:abc:6005")),
            bad_port("ACK", "abc"),
        ),
        (
            "ACK port signed",
            s(format!("ACK :{u}:+6004:6005")),
            bad_port("ACK", "+6004"),
        ),
        // Extensions.
        (
            "extension without =",
            s(format!("INV :{u}:a:b:rate=8000:junk")),
            ParseError::BadExtension {
                field: "junk".into(),
            },
        ),
        (
            "extension after ports without =",
            s(format!("INV :{u}:a:b:5004:5005:junk")),
            ParseError::BadExtension {
                field: "junk".into(),
            },
        ),
        (
            "extension with empty key",
            s(format!("INV :{u}:a:b:=8000")),
            ParseError::BadExtension {
                field: "=8000".into(),
            },
        ),
        (
            "empty extension field",
            s(format!("INV :{u}:a:b:rate=8000::x=1")),
            ParseError::BadExtension { field: "".into() },
        ),
        // Trailing fields.
        (
            "BYE trailing field",
            s(format!("BYE :{u}:extra")),
            ParseError::TrailingFields { message: "BYE" },
        ),
        (
            "BYE trailing separator",
            s(format!("BYE :{u}:")),
            ParseError::TrailingFields { message: "BYE" },
        ),
        (
            "BYE with ports",
            s(format!("BYE :{u}:6004:6005")),
            ParseError::TrailingFields { message: "BYE" },
        ),
        (
            "ACK trailing field",
            s(format!("ACK :{u}:6004:6005:7")),
            ParseError::TrailingFields { message: "ACK" },
        ),
        // DTMF (an rst extension).
        (
            "DTMF sequence not a number",
            s(format!("DTMF:{u}:R:x:1:100")),
            ParseError::BadNumber {
                message: "DTMF",
                field: "seq",
                value: "x".into(),
            },
        ),
        (
            "DTMF digit not a key",
            s(format!("DTMF:{u}:R:0:E:100")),
            ParseError::BadDigit { digit: "E".into() },
        ),
        (
            "DTMF without duration",
            s(format!("DTMF:{u}:R:0:1")),
            ParseError::MissingField {
                message: "DTMF",
                field: "duration_ms",
            },
        ),
        (
            "DTMF trailing field",
            s(format!("DTMF:{u}:W:0:1:100:x")),
            ParseError::TrailingFields { message: "DTMF" },
        ),
    ]
}

#[test]
fn malformed_datagrams_give_the_exact_error() {
    let mut failures = Vec::new();
    for (name, wire, expected) in malformed() {
        let got = Message::parse(&wire);
        if got.as_ref() != Err(&expected) {
            failures.push(format!("{name}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_error_kind_is_covered_and_listed() {
    let kinds: BTreeSet<&str> = malformed().iter().map(|(_, _, e)| e.kind()).collect();
    let listed: BTreeSet<&str> = ParseError::KINDS.into_iter().collect();
    assert_eq!(
        listed.len(),
        ParseError::KINDS.len(),
        "KINDS has duplicates"
    );
    assert_eq!(kinds, listed);
    for (name, _, error) in malformed() {
        assert!(!error.to_string().is_empty(), "{name}");
    }
}

#[test]
fn uuid_new_validates_like_parse() {
    for good in [UUID, "a", "0", "tap_1-2", &"Z".repeat(64)] {
        assert_eq!(Uuid::new(good).map(|u| u.as_str()), Ok(good));
        assert_eq!(Uuid::new(good).unwrap().to_string(), good);
    }
    for bad in [
        "",
        "a/b",
        "..",
        "a\0b",
        "a b",
        "-a",
        "_a",
        "é",
        &"Z".repeat(65),
    ] {
        assert_eq!(
            Uuid::new(bad),
            Err(ParseError::BadUuid {
                uuid: bad.escape_debug().to_string()
            })
        );
    }
}

#[test]
fn data_payload_is_borrowed_from_the_datagram() {
    let payload = payload_160();
    let wire = cat(&[
        b"DATA:478525a8-8263-4550-b18c-d027d11c9865:R:00:160:",
        &payload,
    ]);
    let Ok(Message::Data(data)) = Message::parse(&wire) else {
        panic!("example DATA did not parse")
    };
    let header_len = wire.len() - 160;
    assert_eq!(data.payload.as_ptr(), wire[header_len..].as_ptr());
    assert_eq!(data.payload.len(), 160);
    assert_eq!(data.uuid.as_str().as_ptr(), wire[5..].as_ptr());

    let wire = b"INV :478525a8-8263-4550-b18c-d027d11c9865:1001:1002";
    let Ok(Message::Inv(inv)) = Message::parse(wire) else {
        panic!()
    };
    assert_eq!(inv.caller.as_ptr(), wire[wire.len() - 9..].as_ptr());
    assert_eq!(inv.callee.as_ptr(), wire[wire.len() - 4..].as_ptr());
}

#[test]
fn direction_flags() {
    assert_eq!(Direction::Read.flag(), b'R');
    assert_eq!(Direction::Write.flag(), b'W');
    assert_eq!(Direction::Read.as_str(), "R");
    assert_eq!(Direction::Write.as_str(), "W");
    assert_eq!(Direction::BOTH, [Direction::Read, Direction::Write]);
}
