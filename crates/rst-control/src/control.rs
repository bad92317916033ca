//! Control requests and responses, one JSON object per line. See the crate
//! documentation for the conversation.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::line::LineError;

/// The shared secret as sent in `hello`; never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Authenticate; must come first.
    Hello {
        version: u32,
        secret: Secret,
        /// Who is asking, for the tap's log (e.g. `"tapctl 0.1.0"`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
    },
    /// Change the fields named.
    Config(ConfigChange),
    /// Start capturing and sending.
    Start,
    /// Stop: every call ends (BYE), nothing more is sent.
    Stop,
    /// The state, the config and the counters.
    Status,
    /// End the session; the tap closes the connection after answering.
    Close,
}

/// How calls go to the receiver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Captured RTP forwarded unchanged, the receiver's RTP mode.
    #[default]
    Rtp,
    /// `DATA` datagrams (payloads without RTP headers); reserved.
    Data,
}

/// A `config` request: the fields present change, the others stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigChange {
    /// Which of the tap's interfaces to capture on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// BPF capture filter; `""` removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Record only calls with an address in these networks (empty: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<ipnet::IpNet>>,
    /// Record only calls whose caller or callee matches (empty: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numbers: Option<Vec<String>>,
    /// Never record calls whose caller or callee matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_numbers: Option<Vec<String>>,
    /// The rst receiver calls are sent to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver: Option<SocketAddr>,
    /// Several receivers: each call goes to the one its UUID hashes to and
    /// fails over along its order (`[]` goes back to `receiver` alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receivers: Option<Vec<SocketAddr>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
}

/// A tap's whole client-settable configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TapConfig {
    pub interface: Option<String>,
    pub filter: Option<String>,
    pub networks: Vec<ipnet::IpNet>,
    pub numbers: Vec<String>,
    pub skip_numbers: Vec<String>,
    /// `None` until a client names one: a tap sends nowhere by default.
    pub receiver: Option<SocketAddr>,
    /// A pool of receivers instead of `receiver` (empty: none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub receivers: Vec<SocketAddr>,
    pub mode: Mode,
}

impl TapConfig {
    /// This configuration with `change` applied.
    pub fn with(&self, change: &ConfigChange) -> TapConfig {
        let mut next = self.clone();
        if let Some(interface) = &change.interface {
            next.interface = Some(interface.clone());
        }
        if let Some(filter) = &change.filter {
            next.filter = (!filter.trim().is_empty()).then(|| filter.clone());
        }
        if let Some(networks) = &change.networks {
            next.networks = networks.clone();
        }
        if let Some(numbers) = &change.numbers {
            next.numbers = numbers.clone();
        }
        if let Some(skip) = &change.skip_numbers {
            next.skip_numbers = skip.clone();
        }
        if let Some(receiver) = change.receiver {
            next.receiver = Some(receiver);
        }
        if let Some(receivers) = &change.receivers {
            next.receivers = receivers.clone();
        }
        if let Some(mode) = change.mode {
            next.mode = mode;
        }
        next
    }
}

/// What a connection may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The one client that configures, starts and stops the tap.
    Control,
    /// Another client while one controls: status only.
    Observer,
}

/// Whether the tap captures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not capturing, nothing sent.
    #[default]
    Stopped,
    /// Capturing and sending.
    Running,
    /// The capture ended by itself (a capture file read to its end).
    Finished,
    /// The capture failed; `last_error` says why.
    Failed,
}

/// The counters of the current (or last) capture, and of the control plane.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Frames captured.
    pub packets: u64,
    pub sip_messages: u64,
    pub calls_started: u64,
    pub calls_ended: u64,
    /// Calls being recorded now.
    pub calls_active: u64,
    /// Calls the networks and numbers filters left out.
    pub calls_filtered: u64,
    pub rtp_forwarded: u64,
    /// Of those, RTP that came after SIP ended its call (the end of what was said).
    pub rtp_after_bye: u64,
    pub rtp_sent: u64,
    /// RTP of calls whose media is SRTP (SDP or ZRTP): seen, not recorded.
    pub rtp_encrypted: u64,
    /// Packets of calls in a fax (T.38) phase on the audio's own ports: not recorded.
    pub fax_packets: u64,
    pub drops: Drops,
    /// libpcap's counters (live captures only).
    pub pcap: Option<PcapCounters>,
    /// Calls moved to another receiver of the pool.
    #[serde(skip_serializing_if = "is_zero")]
    pub failovers: u64,
    /// Each receiver of the pool, when there is one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub receivers: Vec<ReceiverStatus>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One receiver of a tap's pool, as the tap sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverStatus {
    pub address: SocketAddr,
    /// Answering, as far as the tap knows.
    pub up: bool,
    /// Calls that failed over away from it.
    pub failures: u64,
    pub acks: u64,
}

/// What was lost or refused, by cause.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Drops {
    /// Frames that did not decode.
    pub decode_errors: u64,
    pub sip_malformed: u64,
    /// Calls not sent (too many at once, no sockets).
    pub streams_refused: u64,
    pub send_errors: u64,
    /// RTP held for an unanswered INV that did not fit.
    pub rtp_dropped_waiting: u64,
}

/// libpcap's statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PcapCounters {
    pub received: u64,
    /// Dropped by the kernel for lack of buffer space.
    pub dropped: u64,
    /// Dropped by the interface or its driver.
    pub if_dropped: u64,
}

/// The control plane's own counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlaneCounters {
    pub discovery_requests: u64,
    /// Datagrams on the discovery port that were not requests.
    pub discovery_ignored: u64,
    /// Control lines that were not requests.
    pub bad_requests: u64,
    pub auth_failures: u64,
    /// Connections refused (too many) or timed out.
    pub connections_dropped: u64,
}

/// The answer to `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub state: State,
    pub config: TapConfig,
    pub counters: Counters,
    pub plane: PlaneCounters,
    /// The controlling client's address, if one is connected.
    pub controller: Option<String>,
    /// Authenticated connections now.
    pub clients: u32,
    pub last_error: Option<String>,
}

/// What a tap answers when it did what was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Reply {
    Hello {
        version: u32,
        name: String,
        id: String,
        role: Role,
    },
    /// The whole configuration after the change.
    Config {
        config: TapConfig,
    },
    Start {
        state: State,
    },
    Stop {
        state: State,
    },
    Status(Box<Status>),
    Close {},
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not a known `cmd`, a missing or unknown field.
    BadRequest,
    /// A line over the limit.
    TooLong,
    /// A `hello` of a version the tap does not speak.
    Version,
    /// Wrong secret.
    Auth,
    /// A request before `hello`.
    NotAuthenticated,
    /// Another client controls the tap.
    Busy,
    /// The configuration asked for is not valid (a pattern, a filter, an
    /// interface the tap does not have, mode `data`).
    InvalidConfig,
    /// Not possible in the current state (no receiver yet, interface change
    /// while running).
    State,
    /// The capture could not start.
    Capture,
    /// The tap has too many connections.
    TooManyConnections,
    /// Nothing received for too long.
    Timeout,
    /// Anything else.
    Internal,
}

/// A refusal: its code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub code: ErrorCode,
    pub error: String,
}

impl Failure {
    pub fn new(code: ErrorCode, error: impl Into<String>) -> Failure {
        Failure {
            code,
            error: error.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = serde_json::to_value(self.code).unwrap_or_default();
        write!(f, "{} ({})", self.error, code.as_str().unwrap_or("?"))
    }
}

impl std::error::Error for Failure {}

/// One response line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Ok(Reply),
    Err(Failure),
}

impl From<Result<Reply, Failure>> for Response {
    fn from(result: Result<Reply, Failure>) -> Self {
        match result {
            Ok(reply) => Response::Ok(reply),
            Err(failure) => Response::Err(failure),
        }
    }
}

/// Why a line is not a request (or a response).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum MessageError {
    /// Not a line of text.
    #[error(transparent)]
    Line(#[from] LineError),
    /// Not JSON.
    #[error("not JSON: {0}")]
    Json(String),
    /// JSON, but not a known message: says which field is wrong.
    #[error("{0}")]
    Invalid(String),
}

impl MessageError {
    /// The refusal to send for this error.
    pub fn failure(&self) -> Failure {
        let code = match self {
            MessageError::Line(LineError::TooLong { .. }) => ErrorCode::TooLong,
            _ => ErrorCode::BadRequest,
        };
        Failure::new(code, self.to_string())
    }
}

impl Request {
    /// Parses one line (without its newline).
    pub fn decode(line: &str) -> Result<Request, MessageError> {
        let value: Value =
            serde_json::from_str(line).map_err(|e| MessageError::Json(e.to_string()))?;
        let Value::Object(object) = &value else {
            return Err(MessageError::Invalid("a request is a JSON object".into()));
        };
        match object.get("cmd") {
            None => return Err(MessageError::Invalid("missing \"cmd\"".into())),
            Some(Value::String(_)) => {}
            Some(_) => return Err(MessageError::Invalid("\"cmd\" is not a string".into())),
        }
        serde_json::from_value(value).map_err(|e| MessageError::Invalid(e.to_string()))
    }

    /// The line, without its newline.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl Response {
    /// The line, without its newline: `ok` first.
    pub fn encode(&self) -> String {
        let mut object = Map::new();
        match self {
            Response::Ok(reply) => {
                object.insert("ok".into(), Value::Bool(true));
                if let Ok(Value::Object(fields)) = serde_json::to_value(reply) {
                    object.extend(fields);
                }
            }
            Response::Err(failure) => {
                object.insert("ok".into(), Value::Bool(false));
                if let Ok(Value::Object(fields)) = serde_json::to_value(failure) {
                    object.extend(fields);
                }
            }
        }
        Value::Object(object).to_string()
    }

    /// Parses one response line.
    pub fn decode(line: &str) -> Result<Response, MessageError> {
        let value: Value =
            serde_json::from_str(line).map_err(|e| MessageError::Json(e.to_string()))?;
        let Value::Object(mut object) = value else {
            return Err(MessageError::Invalid("a response is a JSON object".into()));
        };
        let invalid = |e: serde_json::Error| MessageError::Invalid(e.to_string());
        match object.remove("ok") {
            Some(Value::Bool(true)) => Ok(Response::Ok(
                serde_json::from_value(Value::Object(object)).map_err(invalid)?,
            )),
            Some(Value::Bool(false)) => Ok(Response::Err(
                serde_json::from_value(Value::Object(object)).map_err(invalid)?,
            )),
            _ => Err(MessageError::Invalid("missing boolean \"ok\"".into())),
        }
    }

    pub fn into_result(self) -> Result<Reply, Failure> {
        match self {
            Response::Ok(reply) => Ok(reply),
            Response::Err(failure) => Err(failure),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_wire_form() {
        let hello = Request::Hello {
            version: 1,
            secret: Secret("s3cret".into()),
            client: None,
        };
        assert_eq!(
            hello.encode(),
            r#"{"cmd":"hello","version":1,"secret":"s3cret"}"#
        );
        assert!(!format!("{hello:?}").contains("s3cret"));
        let config = Request::decode(
            r#"{"cmd":"config","receiver":"10.0.0.20:9527","networks":["10.1.0.0/16"],"numbers":["1001*"],"filter":"udp","mode":"rtp"}"#,
        )
        .unwrap();
        let Request::Config(change) = &config else {
            panic!("{config:?}")
        };
        assert_eq!(change.receiver, Some("10.0.0.20:9527".parse().unwrap()));
        assert_eq!(change.mode, Some(Mode::Rtp));
        assert_eq!(Request::decode(&config.encode()).unwrap(), config);
        for (line, request) in [
            (r#"{"cmd":"start"}"#, Request::Start),
            (r#"{"cmd":"stop"}"#, Request::Stop),
            (r#"{"cmd":"status"}"#, Request::Status),
            (r#"{"cmd":"close"}"#, Request::Close),
        ] {
            assert_eq!(Request::decode(line).unwrap(), request);
            assert_eq!(request.encode(), line);
        }
    }

    #[test]
    fn garbage_gets_a_sentence() {
        let err = |line: &str| Request::decode(line).unwrap_err().to_string();
        assert!(err("hello").starts_with("not JSON"));
        assert_eq!(err("[1,2]"), "a request is a JSON object");
        assert_eq!(err(r#"{"command":"start"}"#), "missing \"cmd\"");
        assert!(err(r#"{"cmd":"reboot"}"#).contains("unknown variant `reboot`"));
        assert!(
            err(r#"{"cmd":"config","recever":"1.2.3.4:5"}"#).contains("unknown field `recever`")
        );
        assert!(err(r#"{"cmd":"config","receiver":"nowhere"}"#).contains("invalid socket address"));
        assert!(err(r#"{"cmd":"config","mode":"mp3"}"#).contains("unknown variant `mp3`"));
        assert!(err(r#"{"cmd":"hello","version":1}"#).contains("missing field `secret`"));
        assert_eq!(
            MessageError::Line(LineError::TooLong { max: 9 })
                .failure()
                .code,
            ErrorCode::TooLong
        );
    }

    #[test]
    fn responses_round_trip_with_ok_first() {
        let ok = Response::Ok(Reply::Start {
            state: State::Running,
        });
        assert_eq!(
            ok.encode(),
            r#"{"ok":true,"cmd":"start","state":"running"}"#
        );
        assert_eq!(Response::decode(&ok.encode()).unwrap(), ok);
        let err = Response::Err(Failure::new(ErrorCode::Auth, "wrong secret"));
        assert_eq!(
            err.encode(),
            r#"{"ok":false,"code":"auth","error":"wrong secret"}"#
        );
        assert_eq!(Response::decode(&err.encode()).unwrap(), err);
        let status = Response::Ok(Reply::Status(Box::new(Status {
            state: State::Running,
            counters: Counters {
                packets: 7,
                pcap: Some(PcapCounters {
                    received: 7,
                    ..PcapCounters::default()
                }),
                ..Counters::default()
            },
            ..Status::default()
        })));
        assert!(status
            .encode()
            .starts_with(r#"{"ok":true,"cmd":"status","state":"running""#));
        assert_eq!(Response::decode(&status.encode()).unwrap(), status);
        let close = Response::Ok(Reply::Close {});
        assert_eq!(close.encode(), r#"{"ok":true,"cmd":"close"}"#);
        assert_eq!(Response::decode(&close.encode()).unwrap(), close);
    }

    #[test]
    fn config_changes_only_what_it_names() {
        let base = TapConfig {
            filter: Some("udp".into()),
            numbers: vec!["1*".into()],
            ..TapConfig::default()
        };
        let next = base.with(&ConfigChange {
            receiver: Some("127.0.0.1:9527".parse().unwrap()),
            ..ConfigChange::default()
        });
        assert_eq!(next.filter.as_deref(), Some("udp"));
        assert_eq!(next.numbers, vec!["1*".to_owned()]);
        let cleared = next.with(&ConfigChange {
            filter: Some(String::new()),
            numbers: Some(vec![]),
            ..ConfigChange::default()
        });
        assert_eq!(cleared.filter, None);
        assert!(cleared.numbers.is_empty());
        assert_eq!(cleared.receiver, next.receiver);
    }

    #[test]
    fn a_config_can_name_a_pool_of_receivers() {
        let Request::Config(change) =
            Request::decode(r#"{"cmd":"config","receivers":["10.0.0.20:9527","10.0.0.21:9527"]}"#)
                .unwrap()
        else {
            panic!()
        };
        let next = TapConfig::default().with(&change);
        assert_eq!(next.receivers.len(), 2);
        assert_eq!(next.receiver, None);
        let cleared = next.with(&ConfigChange {
            receivers: Some(Vec::new()),
            ..ConfigChange::default()
        });
        assert!(cleared.receivers.is_empty());
    }
}
