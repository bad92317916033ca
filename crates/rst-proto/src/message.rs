use std::io::Write as _;

use crate::types::parse_decimal;
use crate::{Direction, EncodeError, ParseError, PayloadType, Uuid, MAX_DATAGRAM_LEN};

/// One rst datagram, borrowing from the bytes it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Inv(Inv<'a>),
    Data(Data<'a>),
    Bye(Bye<'a>),
    Ack(Ack<'a>),
    Dtmf(Dtmf<'a>),
    Play(Play<'a>),
    Clear(Clear<'a>),
    Mark(Mark<'a>),
    Live(Live<'a>),
}

/// `INV :UUID:CALLER:CALLEE[:LOCAL_READ_PORT:LOCAL_WRITE_PORT][:key=value...]`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inv<'a> {
    pub uuid: Uuid<'a>,
    /// May be empty when the sender does not know it.
    pub caller: &'a str,
    pub callee: &'a str,
    /// Present in RTP mode: the sender's ports for R and W.
    pub rtp_ports: Option<RtpPorts>,
    /// Optional `key=value` fields after the standard ones (an rst extension that a
    /// receiver implementing only the original table ignores).
    pub extensions: Extensions<'a>,
}

/// `DATA:UUID:FLAG:PT:LENGTH:` followed by exactly LENGTH payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Data<'a> {
    pub uuid: Uuid<'a>,
    pub direction: Direction,
    pub payload_type: PayloadType,
    /// The codec payload, any bytes (`:` included), borrowed from the datagram.
    pub payload: &'a [u8],
}

/// `BYE :UUID`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bye<'a> {
    pub uuid: Uuid<'a>,
}

/// `DTMF:UUID:FLAG:SEQ:DIGIT:DURATION_MS`: a key press the sender saw on the
/// call (an rst extension for DATA mode; RTP mode carries RFC 4733 events
/// instead). FLAG is the direction as in DATA (`R`: the channel received it,
/// the caller side pressed it). SEQ numbers the call's key presses from 0: a
/// sender sends each datagram three times, as RFC 4733 repeats an event's
/// end, and the receiver keeps one. A receiver that knows only the original
/// table ignores the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dtmf<'a> {
    pub uuid: Uuid<'a>,
    pub direction: Direction,
    pub sequence: u32,
    /// `0`-`9`, `*`, `#`, `A`-`D`.
    pub digit: char,
    pub duration_ms: u32,
}

/// `PLAY:UUID:SEQ:PT:LENGTH:` + exactly LENGTH payload bytes: audio for the
/// sender to play into the call (what the caller hears), from the receiver
/// to the address the call's INV came from, only when that INV said `play=1`
/// (an rst extension). PT is `00` (µ-law, 8 kHz) or `10` (16-bit linear,
/// little-endian, at the call's rate); SEQ counts the call's PLAY datagrams
/// from 0, so the sender puts them in order and plays a gap as silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Play<'a> {
    pub uuid: Uuid<'a>,
    pub sequence: u32,
    pub payload_type: PayloadType,
    pub payload: &'a [u8],
}

/// `CLR :UUID`: drop every PLAY not yet played (a caller barging in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clear<'a> {
    pub uuid: Uuid<'a>,
}

/// `LIVE:UUID` (receiver → sender): someone hears this call live, so its
/// frames should go one to a datagram, not gathered. It holds for
/// [`LIVE_HOLDS`]; the receiver says it again every [`LIVE_EVERY`] while
/// anyone hears, so a lost one costs nothing and a receiver that died stops
/// holding the call's audio to real time. Sent only to a sender whose INV
/// said `live=1` ([`Extensions::LIVE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live<'a> {
    pub uuid: Uuid<'a>,
}

/// How often a receiver says [`Live`] while anyone hears a call.
pub const LIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How long one [`Live`] holds: three of them, so two may be lost.
pub const LIVE_HOLDS: std::time::Duration = std::time::Duration::from_secs(3);

/// `MARK:UUID:NAME[:cleared]`. From the receiver: tell me once everything
/// played before this point has been played. From the sender back: that
/// point was played, or (`:cleared`) a CLR dropped it. NAME is percent-encoded
/// as an extension value is ([`Extensions::escape`]): `:` and `%` never appear raw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark<'a> {
    pub uuid: Uuid<'a>,
    /// As on the wire (escaped); [`Mark::name`] gives it back.
    pub wire_name: &'a str,
    pub cleared: bool,
}

impl Mark<'_> {
    /// The mark's name, unescaped.
    pub fn name(&self) -> String {
        Extensions::unescape(self.wire_name)
    }
}

/// Longest mark name a MARK carries, escaped.
pub const MAX_MARK_NAME: usize = 256;

/// Whether `digit` is a DTMF key.
pub fn is_dtmf_digit(digit: char) -> bool {
    matches!(digit, '0'..='9' | '*' | '#' | 'A'..='D')
}

/// `ACK :UUID[:SERVER_READ_PORT:SERVER_WRITE_PORT]`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack<'a> {
    pub uuid: Uuid<'a>,
    /// Present in RTP mode: the receiver's ports for R and W.
    pub rtp_ports: Option<RtpPorts>,
}

/// A pair of UDP ports, one per direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RtpPorts {
    pub read: u16,
    pub write: u16,
}

/// The `key=value` fields that may follow an INV's standard fields, kept as the
/// validated wire text (`key=value:key=value`) so parsing allocates nothing.
///
/// Known keys: `rate` (sample rate of PT 10 linear audio, default 8000),
/// `call-id` (the SIP Call-ID, escaped), `fax=1`, `stream=NAME[,NAME]` (stream
/// the call live to these profiles of the receiver) and
/// `ptNNN=NAME/RATE[/CHANNELS]` (what a dynamic RTP payload type carries in RTP
/// mode, as SDP's `a=rtpmap` says it: `pt101=telephone-event/8000`,
/// `pt96=PCMU/8000`, `pt111=opus/48000/2`), and `part=N:offset-ms=MS` (this
/// INV continues the call on another receiver of a pool: see
/// [`Extensions::continuation`] and [`crate::pool`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Extensions<'a>(&'a str);

impl<'a> Extensions<'a> {
    pub const NONE: Extensions<'static> = Extensions("");

    /// Validates `text` as `key=value` fields joined by `:` (or empty).
    pub fn parse(text: &'a str) -> Result<Self, ParseError> {
        // The last field of an INV: a trailing NUL or line end would not survive
        // the wire (`control_text` strips it).
        if text.ends_with(is_stripped) {
            return Err(ParseError::BadExtension {
                field: text.rsplit(':').next().unwrap_or(text).to_owned(),
            });
        }
        if !text.is_empty() {
            for field in text.split(':') {
                match field.split_once('=') {
                    Some((key, _)) if !key.is_empty() => {}
                    _ => {
                        return Err(ParseError::BadExtension {
                            field: field.to_owned(),
                        })
                    }
                }
            }
        }
        Ok(Extensions(text))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_str(&self) -> &'a str {
        self.0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> {
        let text = self.0;
        text.split(':').filter_map(|field| field.split_once('='))
    }

    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// What the sender declared payload type `pt` to be: its encoding name and
    /// clock rate. A channel count after the rate (`opus/48000/2`, as RFC 7587
    /// has every opus rtpmap say) is allowed and not returned.
    pub fn payload_type(&self, pt: u8) -> Option<(&'a str, u32)> {
        self.payload_types()
            .find(|(number, ..)| *number == pt)
            .map(|(_, name, rate)| (name, rate))
    }

    /// Every payload type the extensions declare (`ptN=NAME/CLOCK[/CHANNELS]`),
    /// in the order given; malformed declarations are skipped.
    pub fn payload_types(&self) -> impl Iterator<Item = (u8, &'a str, u32)> {
        self.iter().filter_map(|(key, value)| {
            let number: u8 = key.strip_prefix("pt")?.parse().ok()?;
            let (name, rate) = rtpmap(value)?;
            (number <= 127).then_some((number, name, rate))
        })
    }
    /// A value that may contain `:` (a SIP Call-ID, say) made safe for an
    /// extension field: `%` and `:` percent-encoded, as `%25` and `%3A`.
    pub fn escape(value: &str) -> String {
        value.replace('%', "%25").replace(':', "%3A")
    }

    /// The inverse of [`Extensions::escape`].
    pub fn unescape(value: &str) -> String {
        value
            .replace("%3A", ":")
            .replace("%3a", ":")
            .replace("%25", "%")
    }

    /// The key of the `fax=1` extension: the call had a fax (T.38) phase,
    /// whose media was not recorded.
    pub const FAX: &'static str = "fax";

    /// Whether the call had a fax phase (`fax=1`).
    pub fn fax(&self) -> bool {
        self.get(Self::FAX) == Some("1")
    }

    /// The key of the `stream=NAME` extension: the sender asks the receiver
    /// to stream the call live to its stream profile `NAME` (a receiver that
    /// has no such profile, or knows no streams, ignores it).
    pub const STREAM: &'static str = "stream";

    /// The stream profiles the call asks for (`stream=NAME`, a comma-separated
    /// list of names), in the order given.
    pub fn streams(&self) -> impl Iterator<Item = &'a str> {
        self.get(Self::STREAM)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
    }

    /// The key of the `call-id=` extension: the SIP Call-ID, escaped.
    pub const CALL_ID: &'static str = "call-id";

    /// The SIP Call-ID (`call-id=`), unescaped.
    pub fn call_id(&self) -> Option<String> {
        self.get(Self::CALL_ID).map(Self::unescape)
    }

    /// The key of the `tap=NAME` extension: the call was captured off the
    /// network by the tap of this name (tap_daemon), escaped as a Call-ID is.
    pub const TAP: &'static str = "tap";

    /// The name of the tap that captured the call (`tap=`), unescaped; `None`
    /// when the sender is no tap, or says nothing printable.
    pub fn tap(&self) -> Option<String> {
        let name: String = Self::unescape(self.get(Self::TAP)?)
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_TAP_NAME)
            .collect();
        (!name.trim().is_empty()).then_some(name)
    }

    /// The key of the `play=1` extension: the sender can play audio into the
    /// call (PLAY, CLR and MARK); a receiver sends them to no other.
    pub const PLAY: &'static str = "play";

    /// Whether the sender can play into the call (`play=1`).
    pub fn play(&self) -> bool {
        self.get(Self::PLAY) == Some("1")
    }

    /// The key of the `live=1` extension: the sender gathers a direction's
    /// frames several to a datagram unless the receiver says that someone
    /// hears the call ([`Live`]); a receiver says so to no other sender.
    pub const LIVE: &'static str = "live";

    /// Whether the sender wants to be told when someone hears the call (`live=1`).
    pub fn live(&self) -> bool {
        self.get(Self::LIVE) == Some("1")
    }

    /// The key of the `part=N` extension: this INV continues a call that
    /// began on another receiver of a pool; `N` counts the call's parts from
    /// 1 (a first part says nothing). With [`Extensions::OFFSET_MS`].
    pub const PART: &'static str = "part";

    /// The key of the `offset-ms=MS` extension: where the audio that follows
    /// this INV begins in the call, in milliseconds from the call's start
    /// on the media clock (the samples sent before it), so that the parts
    /// of a call recorded on several receivers join with silence for what
    /// was lost in between.
    pub const OFFSET_MS: &'static str = "offset-ms";

    /// The keys of the `ts-r=T` and `ts-w=T` extensions of a continuation
    /// whose RTP is forwarded (a tap's): each direction's RTP timestamp at
    /// the part's offset, so the receiver places the part's packets by
    /// their timestamps from its start. Without them, the part's audio
    /// begins at its offset (a sender that makes its own frames).
    pub const TIMESTAMPS: [&'static str; 2] = ["ts-r", "ts-w"];

    /// The continuation this INV announces (`part=N:offset-ms=MS`), if any:
    /// the part's number (2 or more) and its offset. A `part` without a
    /// sane number, or of 1, is no continuation; a missing offset is 0.
    pub fn continuation(&self) -> Option<Continuation> {
        let part: u32 = self.get(Self::PART)?.parse().ok()?;
        if part < 2 {
            return None;
        }
        let offset_ms = self
            .get(Self::OFFSET_MS)
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0);
        let timestamps = Self::TIMESTAMPS.map(|key| self.get(key).and_then(|t| t.parse().ok()));
        Some(Continuation {
            part,
            offset_ms,
            timestamps,
        })
    }

    /// The `rate` extension: the sample rate of PT 10 audio, if given and sane.
    pub fn l16_rate(&self) -> Option<u32> {
        self.get("rate")?
            .parse()
            .ok()
            .filter(|rate| (8000..=192_000).contains(rate))
    }
}

/// Where a part of a call begins: `part=N:offset-ms=MS` in its INV (see
/// [`Extensions::PART`] and [`Extensions::OFFSET_MS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Continuation {
    /// 2 for the first continuation, and so on.
    pub part: u32,
    /// Milliseconds from the call's start (media clock) to the part's first audio.
    pub offset_ms: u64,
    /// Forwarded RTP: each direction's (R, W) RTP timestamp at the offset
    /// (`ts-r=T:ts-w=T`), when that direction had any packet before it.
    pub timestamps: [Option<u32>; 2],
}

impl Continuation {
    /// Part `part` from `offset_ms`, its audio beginning there (frames).
    pub fn new(part: u32, offset_ms: u64) -> Self {
        Continuation {
            part,
            offset_ms,
            timestamps: [None; 2],
        }
    }
}

/// Whether `name` can be a stream profile's name (`stream=NAME`): letters,
/// digits, `-`, `_` and `.`, at most 64.
pub fn is_stream_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Longest Call-ID an INV carries; a longer one is cut.
pub const MAX_CALL_ID: usize = 512;

/// Longest tap name an INV carries (`tap=`), in characters; a longer one is cut.
pub const MAX_TAP_NAME: usize = 64;

/// Writes an INV's extension fields, each value made safe for the wire: the
/// one place senders (mod_rst, tap_daemon) spell the vocabulary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtensionsBuilder {
    fields: Vec<String>,
}

impl ExtensionsBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// `rate=HZ`: the sample rate of PT 10 linear audio.
    pub fn rate(mut self, hz: u32) -> Self {
        self.fields.push(format!("rate={hz}"));
        self
    }

    /// `ptN=NAME/CLOCK`: what dynamic payload type `pt` carries; characters
    /// an encoding name cannot have are left out.
    pub fn payload_type(mut self, pt: u8, name: &str, clock: u32) -> Self {
        let name: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .collect();
        if !name.is_empty() && pt <= 127 {
            self.fields.push(format!("pt{pt}={name}/{clock}"));
        }
        self
    }

    /// `call-id=`: the SIP Call-ID, escaped, without control characters,
    /// cut at [`MAX_CALL_ID`] bytes.
    pub fn call_id(mut self, call_id: &str) -> Self {
        let mut end = call_id.len().min(MAX_CALL_ID);
        while !call_id.is_char_boundary(end) {
            end -= 1;
        }
        let printable: String = call_id[..end].chars().filter(|c| !c.is_control()).collect();
        if !printable.is_empty() {
            self.fields.push(format!(
                "{}={}",
                Extensions::CALL_ID,
                Extensions::escape(&printable)
            ));
        }
        self
    }

    /// `tap=NAME`: the call was captured by the tap `name`; escaped, without
    /// control characters, cut at [`MAX_TAP_NAME`] characters.
    pub fn tap(mut self, name: &str) -> Self {
        let name: String = name
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_TAP_NAME)
            .collect();
        if !name.trim().is_empty() {
            self.fields
                .push(format!("{}={}", Extensions::TAP, Extensions::escape(&name)));
        }
        self
    }

    /// `play=1`: the sender can play audio into the call.
    pub fn play(mut self) -> Self {
        self.fields.push(format!("{}=1", Extensions::PLAY));
        self
    }

    /// `live=1`: tell this sender when someone hears the call ([`Live`]).
    pub fn live(mut self) -> Self {
        self.fields.push(format!("{}=1", Extensions::LIVE));
        self
    }

    /// `fax=1`: the call had a fax (T.38) phase.
    pub fn fax(mut self) -> Self {
        self.fields.push(format!("{}=1", Extensions::FAX));
        self
    }

    /// `stream=NAME[,NAME]`: stream profiles of the receiver the call asks
    /// for; names that are not [`is_stream_name`] are left out.
    pub fn streams<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        let names: Vec<&str> = names
            .into_iter()
            .map(str::trim)
            .filter(|n| is_stream_name(n))
            .collect();
        if !names.is_empty() {
            self.fields
                .push(format!("{}={}", Extensions::STREAM, names.join(",")));
        }
        self
    }

    /// `part=N:offset-ms=MS[:ts-r=T][:ts-w=T]`: the INV continues the call
    /// on another receiver (a first part, `part` 1 or less, writes nothing).
    pub fn continuation(mut self, continuation: &Continuation) -> Self {
        let Continuation {
            part,
            offset_ms,
            timestamps,
        } = continuation;
        if *part >= 2 {
            self.fields.push(format!(
                "{}={part}:{}={offset_ms}",
                Extensions::PART,
                Extensions::OFFSET_MS
            ));
            for (key, timestamp) in Extensions::TIMESTAMPS.iter().zip(timestamps) {
                if let Some(timestamp) = timestamp {
                    self.fields.push(format!("{key}={timestamp}"));
                }
            }
        }
        self
    }

    /// Fields already on the wire (`key=value:key=value`, as
    /// [`ExtensionsBuilder::build`] gave them), kept before those added next.
    pub fn raw(mut self, built: &str) -> Self {
        if !built.is_empty() {
            self.fields.push(built.to_owned());
        }
        self
    }

    /// The fields as the INV carries them, `key=value:key=value`.
    pub fn build(self) -> String {
        self.fields.join(":")
    }
}

/// `NAME/CLOCK[/CHANNELS]`, as SDP's `a=rtpmap` writes a payload type's
/// meaning: the encoding name and clock rate (a channel count is checked, not returned).
fn rtpmap(value: &str) -> Option<(&str, u32)> {
    let (name, rest) = value.split_once('/')?;
    let rate = match rest.split_once('/') {
        Some((rate, channels)) => {
            channels.parse::<u8>().ok()?;
            rate
        }
        None => rest,
    };
    (!name.is_empty()).then_some((name, rate.parse().ok()?))
}

/// A payload type declaration outside an INV, `N=NAME/CLOCK[/CHANNELS]` (the
/// INV's `ptN=` grammar without the `pt`): the receiver's default map of
/// dynamic payload types is written so. Returns the number, name and clock.
pub fn parse_payload_type(text: &str) -> Result<(u8, &str, u32), String> {
    let bad = || format!("{text:?} is not a payload type like 101=telephone-event/8000");
    let (number, value) = text.split_once('=').ok_or_else(bad)?;
    let number: u8 = number.trim().parse().map_err(|_| bad())?;
    if number > 127 {
        return Err(format!("{text:?}: a payload type is 0-127"));
    }
    let (name, rate) = rtpmap(value.trim()).ok_or_else(bad)?;
    Ok((number, name, rate))
}

const INV: &[u8; 5] = b"INV :";
const DATA: &[u8; 5] = b"DATA:";
const BYE: &[u8; 5] = b"BYE :";
const ACK: &[u8; 5] = b"ACK :";
const DTMF: &[u8; 5] = b"DTMF:";
const PLAY: &[u8; 5] = b"PLAY:";
const CLR: &[u8; 5] = b"CLR :";
const MARK: &[u8; 5] = b"MARK:";
const LIVE: &[u8; 5] = b"LIVE:";

impl<'a> Message<'a> {
    /// Parses one datagram. Never panics, never allocates on success.
    pub fn parse(datagram: &'a [u8]) -> Result<Self, ParseError> {
        if datagram.len() > MAX_DATAGRAM_LEN {
            return Err(ParseError::Oversize {
                len: datagram.len(),
                max: MAX_DATAGRAM_LEN,
            });
        }
        let Some((command, rest)) = datagram.split_first_chunk::<5>() else {
            return Err(ParseError::TooShort {
                len: datagram.len(),
            });
        };
        match command {
            DATA => Data::parse_body(rest).map(Message::Data),
            INV => Inv::parse_body(control_text("INV", rest)?).map(Message::Inv),
            BYE => Bye::parse_body(control_text("BYE", rest)?).map(Message::Bye),
            ACK => Ack::parse_body(control_text("ACK", rest)?).map(Message::Ack),
            DTMF => Dtmf::parse_body(control_text("DTMF", rest)?).map(Message::Dtmf),
            PLAY => Play::parse_body(rest).map(Message::Play),
            CLR => Clear::parse_body(control_text("CLR", rest)?).map(Message::Clear),
            MARK => Mark::parse_body(control_text("MARK", rest)?).map(Message::Mark),
            LIVE => Live::parse_body(control_text("LIVE", rest)?).map(Message::Live),
            other => Err(ParseError::UnknownCommand {
                command: String::from_utf8_lossy(&other[..4]).into_owned(),
            }),
        }
    }

    pub fn uuid(&self) -> Uuid<'a> {
        match self {
            Message::Inv(m) => m.uuid,
            Message::Data(m) => m.uuid,
            Message::Bye(m) => m.uuid,
            Message::Ack(m) => m.uuid,
            Message::Dtmf(m) => m.uuid,
            Message::Play(m) => m.uuid,
            Message::Clear(m) => m.uuid,
            Message::Mark(m) => m.uuid,
            Message::Live(m) => m.uuid,
        }
    }

    /// Appends the wire form of this message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        match self {
            Message::Inv(inv) => inv.encode(out)?,
            Message::Data(data) => {
                Data::encode_header(
                    data.uuid,
                    data.direction,
                    data.payload_type,
                    data.payload.len(),
                    out,
                );
                out.extend_from_slice(data.payload);
            }
            Message::Bye(bye) => {
                out.extend_from_slice(BYE);
                out.extend_from_slice(bye.uuid.as_str().as_bytes());
            }
            Message::Dtmf(dtmf) => {
                if !is_dtmf_digit(dtmf.digit) {
                    return Err(EncodeError::BadDigit { digit: dtmf.digit });
                }
                out.extend_from_slice(DTMF);
                // Writing into a Vec cannot fail.
                let _ = write!(
                    out,
                    "{}:{}:{}:{}:{}",
                    dtmf.uuid,
                    dtmf.direction.flag() as char,
                    dtmf.sequence,
                    dtmf.digit,
                    dtmf.duration_ms
                );
            }
            Message::Play(play) => {
                Play::encode_header(
                    play.uuid,
                    play.sequence,
                    play.payload_type,
                    play.payload.len(),
                    out,
                );
                out.extend_from_slice(play.payload);
            }
            Message::Clear(clear) => {
                out.extend_from_slice(CLR);
                out.extend_from_slice(clear.uuid.as_str().as_bytes());
            }
            Message::Live(live) => {
                out.extend_from_slice(LIVE);
                out.extend_from_slice(live.uuid.as_str().as_bytes());
            }
            Message::Mark(mark) => {
                if mark.wire_name.contains(':') || mark.wire_name.len() > MAX_MARK_NAME {
                    return Err(EncodeError::FieldContainsColon { field: "mark name" });
                }
                out.extend_from_slice(MARK);
                out.extend_from_slice(mark.uuid.as_str().as_bytes());
                out.push(b':');
                out.extend_from_slice(mark.wire_name.as_bytes());
                if mark.cleared {
                    out.extend_from_slice(b":cleared");
                }
            }
            Message::Ack(ack) => {
                out.extend_from_slice(ACK);
                out.extend_from_slice(ack.uuid.as_str().as_bytes());
                if let Some(ports) = ack.rtp_ports {
                    ports.encode(out);
                }
            }
        }
        let len = out.len() - start;
        if len > MAX_DATAGRAM_LEN {
            out.truncate(start);
            return Err(EncodeError::Oversize {
                len,
                max: MAX_DATAGRAM_LEN,
            });
        }
        Ok(())
    }

    /// The encoded message in a new buffer.
    pub fn to_vec(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }
}

impl<'a> Inv<'a> {
    fn parse_body(text: &'a str) -> Result<Self, ParseError> {
        let missing = |field| ParseError::MissingField {
            message: "INV",
            field,
        };
        let mut fields = text.splitn(4, ':');
        let uuid = Uuid::new(fields.next().ok_or(missing("uuid"))?)?;
        let caller = fields.next().ok_or(missing("caller"))?;
        let callee = fields.next().ok_or(missing("callee"))?;
        let rest = fields.next().unwrap_or("");

        // After the callee: either two ports (RTP mode) or straight to extensions.
        let (rtp_ports, extensions) = match rest.split_once(':') {
            _ if rest.is_empty() || first_field(rest).contains('=') => (None, rest),
            Some((read, tail)) => {
                let (write, extensions) = tail.split_once(':').unwrap_or((tail, ""));
                (Some(RtpPorts::parse("INV", read, write)?), extensions)
            }
            None => return Err(missing("local_write_port")),
        };
        Ok(Inv {
            uuid,
            caller,
            callee,
            rtp_ports,
            extensions: Extensions::parse(extensions)?,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        for (field, value) in [("caller", self.caller), ("callee", self.callee)] {
            if value.contains(':') {
                return Err(EncodeError::FieldContainsColon { field });
            }
        }
        out.extend_from_slice(INV);
        out.extend_from_slice(self.uuid.as_str().as_bytes());
        for value in [self.caller, self.callee] {
            out.push(b':');
            out.extend_from_slice(value.as_bytes());
        }
        if let Some(ports) = self.rtp_ports {
            ports.encode(out);
        }
        if !self.extensions.is_empty() {
            out.push(b':');
            out.extend_from_slice(self.extensions.as_str().as_bytes());
        } else if self.rtp_ports.is_none() && self.callee.ends_with(is_stripped) {
            // The callee is the last field and `control_text` would strip its
            // end: close it with an empty field, which parses back to no ports.
            out.push(b':');
        }
        Ok(())
    }
}

impl<'a> Dtmf<'a> {
    fn parse_body(text: &'a str) -> Result<Self, ParseError> {
        let missing = |field| ParseError::MissingField {
            message: "DTMF",
            field,
        };
        let mut fields = text.split(':');
        let uuid = Uuid::new(fields.next().ok_or(missing("uuid"))?)?;
        let direction = Direction::from_flag(fields.next().ok_or(missing("flag"))?.as_bytes())?;
        let number = |field: &'static str, text: Option<&str>| {
            let text = text.ok_or(missing(field))?;
            text.parse::<u32>().map_err(|_| ParseError::BadNumber {
                message: "DTMF",
                field,
                value: text.chars().take(16).collect(),
            })
        };
        let sequence = number("seq", fields.next())?;
        let digit_text = fields.next().ok_or(missing("digit"))?;
        let digit = match digit_text.chars().collect::<Vec<_>>()[..] {
            [digit] if is_dtmf_digit(digit) => digit,
            _ => {
                return Err(ParseError::BadDigit {
                    digit: digit_text.chars().take(16).collect(),
                })
            }
        };
        let duration_ms = number("duration_ms", fields.next())?;
        if fields.next().is_some() {
            return Err(ParseError::TrailingFields { message: "DTMF" });
        }
        Ok(Dtmf {
            uuid,
            direction,
            sequence,
            digit,
            duration_ms,
        })
    }
}

impl<'a> Data<'a> {
    fn parse_body(body: &'a [u8]) -> Result<Self, ParseError> {
        let missing = |field| ParseError::MissingField {
            message: "DATA",
            field,
        };
        let (uuid, rest) = split_field(body).ok_or(missing("uuid"))?;
        let (flag, rest) = split_field(rest).ok_or(missing("flag"))?;
        let uuid = Uuid::from_bytes(uuid)?;
        let direction = Direction::from_flag(flag)?;
        let (payload_type, payload) = payload_tail("DATA", rest)?;
        Ok(Data {
            uuid,
            direction,
            payload_type,
            payload,
        })
    }

    /// Appends `DATA:UUID:FLAG:PT:LENGTH:` to `out`; the caller appends the
    /// `payload_len` payload bytes. Lets a sender build datagrams in a reused buffer.
    pub fn encode_header(
        uuid: Uuid<'_>,
        direction: Direction,
        payload_type: PayloadType,
        payload_len: usize,
        out: &mut Vec<u8>,
    ) {
        out.extend_from_slice(&Self::header(uuid, direction, payload_type, payload_len));
    }

    /// `DATA:UUID:FLAG:PT:LENGTH:`, on the stack: for a sender that puts it
    /// in front of a payload already in place.
    pub fn header(
        uuid: Uuid<'_>,
        direction: Direction,
        payload_type: PayloadType,
        payload_len: usize,
    ) -> DataHeader {
        let mut out = DataHeader {
            bytes: [0; MAX_DATA_HEADER_LEN],
            len: 0,
        };
        out.put(DATA);
        out.put(uuid.as_str().as_bytes());
        out.put(&[b':', direction.flag(), b':']);
        push_payload_type(&mut out, payload_type);
        out.put(b":");
        push_decimal(&mut out, payload_len);
        out.put(b":");
        out
    }
}

/// The longest DATA header: `DATA:`, the longest UUID, `:F:`, a payload
/// type (up to 127), `:`, a length (up to 20 digits), `:`.
pub const MAX_DATA_HEADER_LEN: usize = DATA.len() + Uuid::MAX_LEN + 3 + 3 + 1 + 20 + 1;

/// A DATA header ([`Data::header`]), as bytes.
#[derive(Debug, Clone, Copy)]
pub struct DataHeader {
    bytes: [u8; MAX_DATA_HEADER_LEN],
    len: usize,
}

impl std::ops::Deref for DataHeader {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Where the encoders write: a growing buffer, or a header on the stack.
trait Out {
    fn put(&mut self, bytes: &[u8]);
}

impl Out for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Out for DataHeader {
    /// Never past [`MAX_DATA_HEADER_LEN`]: a `Uuid` is at most
    /// `Uuid::MAX_LEN` long and the numbers have their widest digits.
    fn put(&mut self, bytes: &[u8]) {
        let end = (self.len + bytes.len()).min(MAX_DATA_HEADER_LEN);
        self.bytes[self.len..end].copy_from_slice(&bytes[..end - self.len]);
        self.len = end;
    }
}

impl<'a> Play<'a> {
    fn parse_body(body: &'a [u8]) -> Result<Self, ParseError> {
        let missing = |field| ParseError::MissingField {
            message: "PLAY",
            field,
        };
        let (uuid, rest) = split_field(body).ok_or(missing("uuid"))?;
        let (sequence, rest) = split_field(rest).ok_or(missing("seq"))?;
        let uuid = Uuid::from_bytes(uuid)?;
        let sequence = parse_decimal(sequence, 10)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| ParseError::BadNumber {
                message: "PLAY",
                field: "seq",
                value: String::from_utf8_lossy(sequence).chars().take(16).collect(),
            })?;
        let (payload_type, payload) = payload_tail("PLAY", rest)?;
        Ok(Play {
            uuid,
            sequence,
            payload_type,
            payload,
        })
    }

    /// Appends `PLAY:UUID:SEQ:PT:LENGTH:` to `out`; the caller appends the payload.
    pub fn encode_header(
        uuid: Uuid<'_>,
        sequence: u32,
        payload_type: PayloadType,
        payload_len: usize,
        out: &mut Vec<u8>,
    ) {
        out.extend_from_slice(PLAY);
        out.extend_from_slice(uuid.as_str().as_bytes());
        out.push(b':');
        push_decimal(out, sequence as usize);
        out.push(b':');
        push_payload_type(out, payload_type);
        out.push(b':');
        push_decimal(out, payload_len);
        out.push(b':');
    }
}

/// `n` in decimal: what `write!(out, "{n}")` writes, without the formatting
/// machinery (a DATA header is written per frame, in FreeSWITCH's process).
fn push_decimal(out: &mut impl Out, n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.put(&digits[at..]);
}

/// A payload type as the wire has it: two digits at least (`{:02}`, see
/// [`PayloadType`]'s `Display`).
fn push_payload_type(out: &mut impl Out, payload_type: PayloadType) {
    let number = payload_type.number();
    if number < 10 {
        out.put(b"0");
    }
    push_decimal(out, usize::from(number));
}

/// The body of a message that is a UUID alone (`BYE`, `CLR`, `LIVE`).
fn uuid_alone<'a>(text: &'a str, message: &'static str) -> Result<Uuid<'a>, ParseError> {
    if text.contains(':') {
        return Err(ParseError::TrailingFields { message });
    }
    Uuid::new(text)
}

impl<'a> Clear<'a> {
    fn parse_body(text: &'a str) -> Result<Self, ParseError> {
        uuid_alone(text, "CLR").map(|uuid| Clear { uuid })
    }
}

impl<'a> Live<'a> {
    fn parse_body(text: &'a str) -> Result<Self, ParseError> {
        uuid_alone(text, "LIVE").map(|uuid| Live { uuid })
    }
}

impl<'a> Mark<'a> {
    fn parse_body(text: &'a str) -> Result<Self, ParseError> {
        let missing = |field| ParseError::MissingField {
            message: "MARK",
            field,
        };
        let mut fields = text.split(':');
        let uuid = Uuid::new(fields.next().ok_or(missing("uuid"))?)?;
        let wire_name = fields.next().ok_or(missing("name"))?;
        if wire_name.len() > MAX_MARK_NAME {
            return Err(ParseError::BadNumber {
                message: "MARK",
                field: "name length",
                value: wire_name.len().to_string(),
            });
        }
        let cleared = match fields.next() {
            None => false,
            Some("cleared") => true,
            Some(_) => return Err(ParseError::TrailingFields { message: "MARK" }),
        };
        if fields.next().is_some() {
            return Err(ParseError::TrailingFields { message: "MARK" });
        }
        Ok(Mark {
            uuid,
            wire_name,
            cleared,
        })
    }
}

impl<'a> Bye<'a> {
    fn parse_body(text: &'a str) -> Result<Self, ParseError> {
        uuid_alone(text, "BYE").map(|uuid| Bye { uuid })
    }
}

impl<'a> Ack<'a> {
    fn parse_body(text: &'a str) -> Result<Self, ParseError> {
        let mut fields = text.split(':');
        let uuid = Uuid::new(fields.next().unwrap_or(""))?;
        let rtp_ports = match (fields.next(), fields.next()) {
            (None, _) => None,
            (Some(read), Some(write)) => Some(RtpPorts::parse("ACK", read, write)?),
            (Some(_), None) => {
                return Err(ParseError::MissingField {
                    message: "ACK",
                    field: "server_write_port",
                })
            }
        };
        if fields.next().is_some() {
            return Err(ParseError::TrailingFields { message: "ACK" });
        }
        Ok(Ack { uuid, rtp_ports })
    }
}

impl RtpPorts {
    fn parse(message: &'static str, read: &str, write: &str) -> Result<Self, ParseError> {
        let port = |text: &str| {
            parse_decimal(text.as_bytes(), 5)
                .and_then(|n| u16::try_from(n).ok())
                .filter(|&n| n != 0)
                .ok_or_else(|| ParseError::BadPort {
                    message,
                    port: text.to_owned(),
                })
        };
        Ok(RtpPorts {
            read: port(read)?,
            write: port(write)?,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let _ = write!(out, ":{}:{}", self.read, self.write);
    }
}

/// What [`control_text`] strips from the end of a control message.
fn is_stripped(c: char) -> bool {
    matches!(c, '\0' | '\r' | '\n')
}

/// The header of a control message as text, without the trailing NUL or line
/// end that C senders sometimes include.
fn control_text<'a>(message: &'static str, body: &'a [u8]) -> Result<&'a str, ParseError> {
    let end = body
        .iter()
        .rposition(|b| !matches!(b, b'\0' | b'\r' | b'\n'))
        .map_or(0, |i| i + 1);
    std::str::from_utf8(&body[..end]).map_err(|_| ParseError::NotUtf8 {
        message,
        field: "header",
    })
}

fn first_field(text: &str) -> &str {
    text.split(':').next().unwrap_or("")
}

/// `PT:LENGTH:` and exactly LENGTH payload bytes, the tail DATA and PLAY share.
fn payload_tail<'a>(
    message: &'static str,
    rest: &'a [u8],
) -> Result<(PayloadType, &'a [u8]), ParseError> {
    let missing = |field| ParseError::MissingField { message, field };
    let (pt, rest) = split_field(rest).ok_or(missing("payload_type"))?;
    let (length, payload) = split_field(rest).ok_or(missing("length"))?;
    let payload_type = PayloadType::from_digits(pt)?;
    let declared = parse_decimal(length, 5).ok_or_else(|| ParseError::BadLength {
        length: String::from_utf8_lossy(length).into_owned(),
    })? as usize;
    if declared != payload.len() {
        return Err(ParseError::LengthMismatch {
            declared,
            actual: payload.len(),
        });
    }
    Ok((payload_type, payload))
}

/// Splits at the first `:`, returning the field and what follows the colon.
fn split_field(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = bytes.iter().position(|&b| b == b':')?;
    Some((&bytes[..colon], &bytes[colon + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header on the stack is the one a buffer gets, whole even at its
    /// longest.
    #[test]
    fn the_longest_data_header_fits_its_stack_buffer_and_matches_the_encoded_one() {
        let uuid = "u".repeat(Uuid::MAX_LEN);
        let uuid = Uuid::new(&uuid).unwrap();
        let pt = PayloadType::new(127).unwrap();
        let longest = Data::header(uuid, Direction::Write, pt, usize::MAX);
        assert_eq!(longest.len(), MAX_DATA_HEADER_LEN);
        assert!(longest.ends_with(format!(":127:{}:", usize::MAX).as_bytes()));
        let mut encoded = Vec::new();
        let short = Uuid::new("a1").unwrap();
        Data::encode_header(short, Direction::Read, PayloadType::PCMU, 160, &mut encoded);
        assert_eq!(encoded, b"DATA:a1:R:00:160:");
        assert_eq!(
            &*Data::header(short, Direction::Read, PayloadType::PCMU, 160),
            &encoded[..]
        );
    }

    #[test]
    fn headers_written_by_hand_are_what_the_formatter_writes() {
        let uuid = Uuid::new("6f1c2a3b-8263-4550-b18c-000000000001").unwrap();
        for number in 0..=127u8 {
            let payload_type = PayloadType::new(number).unwrap();
            for len in [0usize, 1, 9, 10, 99, 100, 160, 1400, 65_535, usize::MAX] {
                let mut data = Vec::new();
                Data::encode_header(uuid, Direction::Write, payload_type, len, &mut data);
                assert_eq!(
                    String::from_utf8(data).unwrap(),
                    format!("DATA:{}:W:{payload_type}:{len}:", uuid.as_str())
                );
                for sequence in [0u32, 7, 4_294_967_295] {
                    let mut play = Vec::new();
                    Play::encode_header(uuid, sequence, payload_type, len, &mut play);
                    assert_eq!(
                        String::from_utf8(play).unwrap(),
                        format!("PLAY:{}:{sequence}:{payload_type}:{len}:", uuid.as_str())
                    );
                }
            }
        }
    }

    #[test]
    fn declared_payload_types_are_found() {
        let extensions =
            Extensions::parse("rate=16000:pt101=telephone-event/8000:pt96=PCMA/8000").unwrap();
        assert_eq!(
            extensions.payload_type(101),
            Some(("telephone-event", 8000))
        );
        assert_eq!(extensions.payload_type(96), Some(("PCMA", 8000)));
        assert_eq!(extensions.payload_type(97), None);
        assert_eq!(extensions.l16_rate(), Some(16000));
    }

    #[test]
    fn a_channel_count_after_the_rate_is_allowed() {
        let extensions = Extensions::parse("pt111=opus/48000/2:pt97=L16/16000/x").unwrap();
        assert_eq!(extensions.payload_type(111), Some(("opus", 48000)));
        // Not a channel count: not a declaration this receiver can trust.
        assert_eq!(extensions.payload_type(97), None);
    }

    #[test]
    fn escaped_values_survive_the_field_separator() {
        let call_id = "a84b4c76e66710@pc33.atlanta.com:5060%x";
        let text = format!("call-id={}", Extensions::escape(call_id));
        let extensions = Extensions::parse(&text).unwrap();
        assert_eq!(
            Extensions::unescape(extensions.get("call-id").unwrap()),
            call_id
        );
    }

    #[test]
    fn a_tap_names_itself_safely() {
        let text = ExtensionsBuilder::new()
            .call_id("x@y")
            .tap("edge:1 \u{7}Berlin%")
            .build();
        let extensions = Extensions::parse(&text).unwrap();
        assert_eq!(extensions.tap().as_deref(), Some("edge:1 Berlin%"));
        assert_eq!(extensions.call_id().as_deref(), Some("x@y"));
        assert_eq!(ExtensionsBuilder::new().tap(" \n").build(), "");
        let long = "t".repeat(100);
        let text = ExtensionsBuilder::new().tap(&long).build();
        assert_eq!(
            Extensions::parse(&text).unwrap().tap().map(|n| n.len()),
            Some(MAX_TAP_NAME)
        );
        // A forged, over-long or control-laden value is cut and cleaned on reading too.
        let forged = format!("tap={}%07", "u".repeat(200));
        let tap = Extensions::parse(&forged).unwrap().tap().unwrap();
        assert_eq!(tap, "u".repeat(MAX_TAP_NAME));
        assert_eq!(Extensions::parse("tap=").unwrap().tap(), None);
        assert_eq!(Extensions::parse("rate=8000").unwrap().tap(), None);
    }

    #[test]
    fn the_builder_writes_what_the_reader_reads() {
        let text = ExtensionsBuilder::new()
            .rate(16000)
            .payload_type(101, "telephone-event", 8000)
            .payload_type(96, "op:us", 48000)
            .call_id("a84b@pc33:5060\r\n")
            .fax()
            .streams(["bot", "bad:name", " asr "])
            .build();
        let extensions = Extensions::parse(&text).unwrap();
        assert_eq!(extensions.l16_rate(), Some(16000));
        assert_eq!(
            extensions.payload_type(101),
            Some(("telephone-event", 8000))
        );
        assert_eq!(extensions.payload_type(96), Some(("opus", 48000)));
        assert_eq!(extensions.call_id().unwrap(), "a84b@pc33:5060");
        assert!(extensions.fax());
        assert_eq!(extensions.streams().collect::<Vec<_>>(), ["bot", "asr"]);
        assert_eq!(ExtensionsBuilder::new().streams(["a:b"]).build(), "");
        let long = "x".repeat(MAX_CALL_ID + 10);
        let text = ExtensionsBuilder::new().call_id(&long).build();
        assert_eq!(text.len(), "call-id=".len() + MAX_CALL_ID);
    }

    #[test]
    fn a_dtmf_round_trips_and_bad_ones_are_refused() {
        let dtmf = Message::Dtmf(Dtmf {
            uuid: Uuid::new("478525a8-8263-4550-b18c-d027d11c9865").unwrap(),
            direction: Direction::Read,
            sequence: 3,
            digit: '#',
            duration_ms: 280,
        });
        let wire = dtmf.to_vec().unwrap();
        assert_eq!(wire, b"DTMF:478525a8-8263-4550-b18c-d027d11c9865:R:3:#:280");
        assert_eq!(Message::parse(&wire).unwrap(), dtmf);
        for bad in [
            &b"DTMF:478525a8:R:3:x:280"[..],
            b"DTMF:478525a8:R:3:12:280",
            b"DTMF:478525a8:X:3:1:280",
            b"DTMF:478525a8:R:-1:1:280",
            b"DTMF:478525a8:R:3:1",
            b"DTMF:478525a8:R:3:1:280:9",
        ] {
            assert!(
                Message::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn play_clear_and_mark_round_trip() {
        let uuid = Uuid::new("478525a8-8263-4550-b18c-d027d11c9865").unwrap();
        let payload = [0u8, b':', 0xFF, 10];
        let play = Message::Play(Play {
            uuid,
            sequence: 4_000_000_000,
            payload_type: PayloadType::L16,
            payload: &payload,
        });
        let wire = play.to_vec().unwrap();
        assert!(wire.starts_with(b"PLAY:478525a8-8263-4550-b18c-d027d11c9865:4000000000:10:4:"));
        assert_eq!(Message::parse(&wire).unwrap(), play);
        let clear = Message::Clear(Clear { uuid });
        assert_eq!(
            clear.to_vec().unwrap(),
            b"CLR :478525a8-8263-4550-b18c-d027d11c9865"
        );
        assert_eq!(Message::parse(&clear.to_vec().unwrap()).unwrap(), clear);
        let live = Message::Live(Live { uuid });
        assert_eq!(
            live.to_vec().unwrap(),
            b"LIVE:478525a8-8263-4550-b18c-d027d11c9865"
        );
        assert_eq!(Message::parse(&live.to_vec().unwrap()).unwrap(), live);
        let name = Extensions::escape("end of: greeting 100%");
        for cleared in [false, true] {
            let mark = Message::Mark(Mark {
                uuid,
                wire_name: &name,
                cleared,
            });
            let wire = mark.to_vec().unwrap();
            let Message::Mark(back) = Message::parse(&wire).unwrap() else {
                panic!()
            };
            assert_eq!(
                (back.name().as_str(), back.cleared),
                ("end of: greeting 100%", cleared)
            );
        }
        for bad in [
            &b"PLAY:478525a8:x:00:1:a"[..],
            b"PLAY:478525a8:1:00:2:a",
            b"CLR :478525a8:x",
            b"LIVE:478525a8:1",
            b"LIVE:",
            b"MARK:478525a8",
            b"MARK:478525a8:n:played",
            b"MARK:478525a8:n:cleared:x",
        ] {
            assert!(
                Message::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let text = ExtensionsBuilder::new().rate(16000).play().build();
        assert!(Extensions::parse(&text).unwrap().play());
        assert!(!Extensions::parse(&text).unwrap().live());
        let text = ExtensionsBuilder::new().live().build();
        assert!(Extensions::parse(&text).unwrap().live());
        assert!(!Extensions::NONE.play());
    }

    #[test]
    fn stream_names_are_a_list() {
        let extensions = Extensions::parse("rate=8000:stream=bot, asr,").unwrap();
        assert_eq!(extensions.streams().collect::<Vec<_>>(), ["bot", "asr"]);
        assert_eq!(Extensions::NONE.streams().count(), 0);
    }

    #[test]
    fn a_continuation_is_written_and_read_back() {
        let third = Continuation::new(3, 61_240);
        let built = ExtensionsBuilder::new()
            .raw("rate=16000")
            .continuation(&third)
            .build();
        assert_eq!(built, "rate=16000:part=3:offset-ms=61240");
        let extensions = Extensions::parse(&built).unwrap();
        assert_eq!(extensions.continuation(), Some(third));
        assert_eq!(extensions.l16_rate(), Some(16000));
        // A forwarding sender's timestamps, of the directions it has seen.
        let tapped = Continuation {
            timestamps: [None, Some(u32::MAX)],
            ..third
        };
        let built = ExtensionsBuilder::new().continuation(&tapped).build();
        assert_eq!(built, "part=3:offset-ms=61240:ts-w=4294967295");
        let extensions = Extensions::parse(&built).unwrap();
        assert_eq!(extensions.continuation(), Some(tapped));
        // A first part writes nothing; nonsense is no continuation.
        let first = Continuation {
            part: 1,
            offset_ms: 5,
            timestamps: [Some(1); 2],
        };
        assert_eq!(ExtensionsBuilder::new().continuation(&first).build(), "");
        for text in ["part=1:offset-ms=5", "part=x", "offset-ms=5", ""] {
            assert_eq!(Extensions::parse(text).unwrap().continuation(), None);
        }
        let no_offset = Extensions::parse("part=2:offset-ms=soon").unwrap();
        assert_eq!(no_offset.continuation().map(|c| c.offset_ms), Some(0));
    }
}
