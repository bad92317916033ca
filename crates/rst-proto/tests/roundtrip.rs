//! Property tests: every valid message survives encode → parse unchanged, `parse`
//! never panics, and whatever `parse` accepts re-encodes to the same message.

use proptest::collection::vec;
use proptest::prelude::*;
use rst_proto::{
    Ack, Bye, Data, Direction, EncodeError, Extensions, Inv, Message, ParseError, PayloadType,
    RtpPorts, Uuid, MAX_DATAGRAM_LEN,
};

/// What the parser strips from the end of a control message (`control_text`):
/// the trailing NUL or line end that C senders sometimes include.
fn is_stripped(c: char) -> bool {
    matches!(c, '\0' | '\r' | '\n')
}

fn uuid_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9][A-Za-z0-9_-]{0,63}",
        // FreeSWITCH-shaped, 36 characters.
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    ]
}

/// Any UTF-8 without `:`, with the characters the parser treats specially
/// (NUL, CR, LF, `=`) made frequent.
fn field_text() -> impl Strategy<Value = String> {
    let special = prop::sample::select(vec!['\0', '\r', '\n', '=', ' ', '/', '.', 'é', '中']);
    let any_char = any::<char>().prop_filter("no colon", |&c| c != ':');
    vec(prop_oneof![3 => any_char, 1 => special], 0..24)
        .prop_map(|chars| chars.into_iter().collect())
}

/// Phone-number-like or arbitrary text without `:`.
fn party_text() -> impl Strategy<Value = String> {
    prop_oneof!["[0-9+*#]{0,16}", field_text()]
}

fn ports() -> impl Strategy<Value = Option<RtpPorts>> {
    prop::option::of(
        (1..=u16::MAX, 1..=u16::MAX).prop_map(|(read, write)| RtpPorts { read, write }),
    )
}

/// `key=value:key=value` text that `Extensions::parse` accepts and whose last
/// character is not stripped by the parser.
fn extensions_text() -> impl Strategy<Value = String> {
    let key = field_text().prop_filter_map("key non-empty, no '='", |k| {
        let k: String = k.chars().filter(|&c| c != '=').collect();
        (!k.is_empty()).then_some(k)
    });
    let pair = prop_oneof![
        Just(("rate".to_owned(), "16000".to_owned())),
        (key, field_text()),
    ];
    let extensions = vec(pair, 1..4).prop_map(|pairs| {
        let text = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(":");
        text.trim_end_matches(is_stripped).to_owned()
    });
    // Empty half the time: the common case, and the one where the callee is last.
    prop_oneof![Just(String::new()), extensions]
}

fn direction() -> impl Strategy<Value = Direction> {
    prop::sample::select(Direction::BOTH.to_vec())
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..400),
        // Colon-heavy, and bytes that look like more header.
        vec(prop::sample::select(b":DATAR00\0\r\n".to_vec()), 0..64),
        vec(any::<u8>(), 1000..2000),
    ]
}

/// Owned inputs for one message; `message()` borrows them.
#[derive(Debug, Clone)]
enum Spec {
    Inv {
        uuid: String,
        caller: String,
        callee: String,
        rtp_ports: Option<RtpPorts>,
        extensions: String,
    },
    Data {
        uuid: String,
        direction: Direction,
        pt: u8,
        payload: Vec<u8>,
    },
    Bye {
        uuid: String,
    },
    Ack {
        uuid: String,
        rtp_ports: Option<RtpPorts>,
    },
}

impl Spec {
    fn message(&self) -> Message<'_> {
        match self {
            Spec::Inv {
                uuid,
                caller,
                callee,
                rtp_ports,
                extensions,
            } => Message::Inv(Inv {
                uuid: Uuid::new(uuid).unwrap(),
                caller,
                callee,
                rtp_ports: *rtp_ports,
                extensions: Extensions::parse(extensions).unwrap(),
            }),
            Spec::Data {
                uuid,
                direction,
                pt,
                payload,
            } => Message::Data(Data {
                uuid: Uuid::new(uuid).unwrap(),
                direction: *direction,
                payload_type: PayloadType::new(*pt).unwrap(),
                payload,
            }),
            Spec::Bye { uuid } => Message::Bye(Bye {
                uuid: Uuid::new(uuid).unwrap(),
            }),
            Spec::Ack { uuid, rtp_ports } => Message::Ack(Ack {
                uuid: Uuid::new(uuid).unwrap(),
                rtp_ports: *rtp_ports,
            }),
        }
    }
}

fn inv_spec() -> impl Strategy<Value = Spec> {
    (
        uuid_text(),
        party_text(),
        party_text(),
        ports(),
        extensions_text(),
    )
        .prop_map(|(uuid, caller, callee, rtp_ports, extensions)| Spec::Inv {
            uuid,
            caller,
            callee,
            rtp_ports,
            extensions,
        })
}

fn data_spec() -> impl Strategy<Value = Spec> {
    (uuid_text(), direction(), 0..=127u8, payload()).prop_map(|(uuid, direction, pt, payload)| {
        Spec::Data {
            uuid,
            direction,
            pt,
            payload,
        }
    })
}

fn spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        inv_spec(),
        data_spec(),
        uuid_text().prop_map(|uuid| Spec::Bye { uuid }),
        (uuid_text(), ports()).prop_map(|(uuid, rtp_ports)| Spec::Ack { uuid, rtp_ports }),
    ]
}

/// Byte soup that often looks like a message: a real or near-real command, then
/// fields built from pieces the parser cares about.
fn message_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let command = prop_oneof![
        prop::sample::select(vec![
            b"INV :".to_vec(),
            b"DATA:".to_vec(),
            b"BYE :".to_vec(),
            b"ACK :".to_vec(),
            b"INV:".to_vec(),
            b"inv :".to_vec(),
        ]),
        vec(any::<u8>(), 0..6),
    ];
    let piece = prop_oneof![
        uuid_text().prop_map(String::into_bytes),
        "[0-9]{1,6}".prop_map(String::into_bytes),
        prop::sample::select(vec![
            b":".to_vec(),
            b"::".to_vec(),
            b"R".to_vec(),
            b"W".to_vec(),
            b"00".to_vec(),
            b"127".to_vec(),
            b"=".to_vec(),
            b"rate=16000".to_vec(),
            b"\0".to_vec(),
            b"\r\n".to_vec(),
            b"\n".to_vec(),
            b"\xff".to_vec(),
            b"\xc3\xa9".to_vec(),
        ]),
        vec(any::<u8>(), 0..8),
    ];
    (command, vec(piece, 0..12)).prop_map(|(command, pieces)| {
        let mut bytes = command;
        for piece in pieces {
            bytes.extend_from_slice(&piece);
        }
        bytes
    })
}

/// A valid encoding with a few bytes changed, inserted or removed.
fn mutated_message_bytes() -> impl Strategy<Value = Vec<u8>> {
    let edit = (any::<prop::sample::Index>(), 0..3u8, any::<u8>());
    (spec(), vec(edit, 1..4)).prop_map(|(spec, edits)| {
        let mut bytes = spec.message().to_vec().unwrap();
        for (at, kind, byte) in edits {
            let i = at.index(bytes.len() + 1);
            match kind {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ if i < bytes.len() => {
                    bytes.remove(i);
                }
                _ => bytes.push(byte),
            }
        }
        bytes
    })
}

/// A valid encoding with separators, line ends and fields appended.
fn extended_message_bytes() -> impl Strategy<Value = Vec<u8>> {
    let tail = prop::sample::select(vec![
        &b":"[..],
        b"\0",
        b"\r",
        b"\n",
        b"=",
        b"5004",
        b"rate=8000",
        b"\xff",
    ]);
    (spec(), vec(tail, 1..5)).prop_map(|(spec, tails)| {
        let mut bytes = spec.message().to_vec().unwrap();
        for tail in tails {
            bytes.extend_from_slice(tail);
        }
        bytes
    })
}

/// If `parse` accepts `bytes`, the message re-encodes, the encoding parses to the
/// same message, and encoding is then a fixed point.
fn check_reencode(bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(message) = Message::parse(bytes) else {
        return Ok(());
    };
    let wire = message
        .to_vec()
        .map_err(|e| TestCaseError::fail(format!("{message:?} parsed but does not encode: {e}")))?;
    prop_assert!(wire.len() <= MAX_DATAGRAM_LEN);
    let again = Message::parse(&wire);
    prop_assert_eq!(again.clone(), Ok(message), "re-encoded as {:?}", wire);
    prop_assert_eq!(again.unwrap().to_vec().unwrap(), wire);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn encode_then_parse_is_identity(spec in spec()) {
        let message = spec.message();
        let wire = message.to_vec().unwrap();
        prop_assert_eq!(Message::parse(&wire), Ok(message), "wire {:?}", wire);
        prop_assert_eq!(Message::parse(&wire).unwrap().uuid(), message.uuid());
    }

    #[test]
    fn encode_appends_after_existing_bytes(spec in spec(), prefix in vec(any::<u8>(), 0..16)) {
        let message = spec.message();
        let mut out = prefix.clone();
        message.encode(&mut out).unwrap();
        prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
        prop_assert_eq!(&out[prefix.len()..], &message.to_vec().unwrap()[..]);
    }

    #[test]
    fn data_encode_header_plus_payload_is_encode(spec in data_spec()) {
        let message = spec.message();
        let Message::Data(data) = message else { unreachable!() };
        let mut out = Vec::new();
        Data::encode_header(data.uuid, data.direction, data.payload_type, data.payload.len(), &mut out);
        out.extend_from_slice(data.payload);
        prop_assert_eq!(out, message.to_vec().unwrap());
    }

    #[test]
    fn data_payload_is_borrowed_from_the_datagram(spec in data_spec()) {
        let wire = spec.message().to_vec().unwrap();
        let Ok(Message::Data(data)) = Message::parse(&wire) else {
            return Err(TestCaseError::fail("DATA did not parse"));
        };
        let header = wire.len() - data.payload.len();
        prop_assert_eq!(data.payload.as_ptr(), wire[header..].as_ptr());
    }

    #[test]
    fn inv_caller_or_callee_with_colon_is_refused(
        uuid in uuid_text(),
        caller in field_text(),
        callee in field_text(),
        at in any::<prop::sample::Index>(),
        which in any::<bool>(),
    ) {
        let (mut caller, mut callee) = (caller, callee);
        let target = if which { &mut caller } else { &mut callee };
        let i = target.char_indices().map(|(i, _)| i).chain([target.len()]).nth(at.index(target.chars().count() + 1)).unwrap();
        target.insert(i, ':');
        let inv = Message::Inv(Inv {
            uuid: Uuid::new(&uuid).unwrap(),
            caller: &caller,
            callee: &callee,
            rtp_ports: None,
            extensions: Extensions::NONE,
        });
        let mut out = b"keep".to_vec();
        let field = if which { "caller" } else { "callee" };
        prop_assert_eq!(inv.encode(&mut out), Err(EncodeError::FieldContainsColon { field }));
        prop_assert_eq!(out, b"keep".to_vec());
    }

    #[test]
    fn parse_never_panics(bytes in vec(any::<u8>(), 0..600)) {
        let _ = Message::parse(&bytes);
    }

    #[test]
    fn parse_never_panics_on_message_like_bytes(bytes in message_like_bytes()) {
        let _ = Message::parse(&bytes);
    }

    #[test]
    fn accepted_arbitrary_bytes_reencode(bytes in vec(any::<u8>(), 0..600)) {
        check_reencode(&bytes)?;
    }

    #[test]
    fn accepted_message_like_bytes_reencode(bytes in message_like_bytes()) {
        check_reencode(&bytes)?;
    }

    #[test]
    fn accepted_mutated_messages_reencode(bytes in mutated_message_bytes()) {
        check_reencode(&bytes)?;
    }

    #[test]
    fn accepted_extended_messages_reencode(bytes in extended_message_bytes()) {
        check_reencode(&bytes)?;
    }

    #[test]
    fn control_messages_tolerate_trailing_nul_and_line_ends(
        spec in prop_oneof![
            inv_spec(),
            uuid_text().prop_map(|uuid| Spec::Bye { uuid }),
            (uuid_text(), ports()).prop_map(|(uuid, rtp_ports)| Spec::Ack { uuid, rtp_ports }),
        ],
        tail in prop::sample::select(vec!["\0", "\r\n", "\n", "\r", "\0\0", "\r\n\0"]),
    ) {
        let message = spec.message();
        let mut wire = message.to_vec().unwrap();
        wire.extend_from_slice(tail.as_bytes());
        prop_assert_eq!(Message::parse(&wire), Ok(message));
    }
}

/// Largest DATA that fits, and one byte more.
#[test]
fn data_at_the_size_limit() {
    let uuid = Uuid::new("478525a8-8263-4550-b18c-d027d11c9865").unwrap();
    let mut header = Vec::new();
    Data::encode_header(uuid, Direction::Write, PayloadType::L16, 16000, &mut header);
    let payload = vec![b':'; MAX_DATAGRAM_LEN - header.len()];
    let data = |payload| {
        Message::Data(Data {
            uuid,
            direction: Direction::Write,
            payload_type: PayloadType::L16,
            payload,
        })
    };
    let wire = data(&payload).to_vec().unwrap();
    assert_eq!(wire.len(), MAX_DATAGRAM_LEN);
    assert_eq!(Message::parse(&wire), Ok(data(&payload)));

    let bigger = vec![0u8; payload.len() + 1];
    let mut out = b"keep".to_vec();
    assert_eq!(
        data(&bigger).encode(&mut out),
        Err(EncodeError::Oversize {
            len: MAX_DATAGRAM_LEN + 1,
            max: MAX_DATAGRAM_LEN
        })
    );
    assert_eq!(out, b"keep", "a refused encode leaves the buffer as it was");
    let mut wire = wire;
    wire.push(0);
    assert_eq!(
        Message::parse(&wire),
        Err(ParseError::Oversize {
            len: MAX_DATAGRAM_LEN + 1,
            max: MAX_DATAGRAM_LEN
        })
    );
}

/// Found by the fuzz target: a callee ending in a line end, last on the line,
/// must not lose it to the stripping of C senders' trailing NUL/CR/LF.
#[test]
fn an_inv_callee_ending_in_a_line_end_round_trips() {
    let wire = b"INV :478525a8-8263-4550-b18c-d027d11c9865:1001:1002\n:";
    let message = Message::parse(wire).unwrap();
    let Message::Inv(inv) = message else { panic!() };
    assert_eq!(inv.callee, "1002\n");
    let again = message.to_vec().unwrap();
    assert_eq!(
        Message::parse(&again),
        Ok(message),
        "re-encoded as {again:?}"
    );
}
