use thiserror::Error;

/// Why a datagram is not a valid rst message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// The datagram is shorter than a command and its colon.
    #[error("datagram of {len} bytes is too short for a command")]
    TooShort { len: usize },
    /// The datagram is longer than [`crate::MAX_DATAGRAM_LEN`].
    #[error("datagram of {len} bytes exceeds the {max}-byte limit")]
    Oversize { len: usize, max: usize },
    /// The first four bytes are not `INV `, `DATA`, `BYE ` or `ACK ` followed by `:`.
    #[error("unknown command {command:?}")]
    UnknownCommand { command: String },
    /// A required field is absent.
    #[error("{message}: missing field {field}")]
    MissingField {
        message: &'static str,
        field: &'static str,
    },
    /// A header field is not valid UTF-8.
    #[error("{message}: field {field} is not UTF-8")]
    NotUtf8 {
        message: &'static str,
        field: &'static str,
    },
    /// The UUID is empty, too long, or has characters outside `[A-Za-z0-9_-]`.
    #[error("invalid call UUID {uuid:?}")]
    BadUuid { uuid: String },
    /// The DATA flag is not `R` or `W`.
    #[error("DATA: flag {flag:?} is not R or W")]
    BadFlag { flag: String },
    /// The payload type is not one to three decimal digits up to 127.
    #[error("DATA: payload type {pt:?} is not a number from 0 to 127")]
    BadPayloadType { pt: String },
    /// The DATA LENGTH field is not a decimal number.
    #[error("DATA: length {length:?} is not a decimal number")]
    BadLength { length: String },
    /// The DATA LENGTH field does not match the bytes that follow the header.
    #[error("DATA: LENGTH says {declared} bytes but {actual} follow")]
    LengthMismatch { declared: usize, actual: usize },
    /// A port field is not a number from 1 to 65535.
    #[error("{message}: port {port:?} is not a number from 1 to 65535")]
    BadPort { message: &'static str, port: String },
    /// An INV extension field is not of the form `key=value`.
    #[error("INV: extension {field:?} is not key=value")]
    BadExtension { field: String },
    /// A numeric field is not a decimal number in range.
    #[error("{message}: {field} {value:?} is not a number")]
    BadNumber {
        message: &'static str,
        field: &'static str,
        value: String,
    },
    /// A DTMF digit is not one of `0-9 * # A-D`.
    #[error("DTMF: digit {digit:?} is not one of 0-9 * # A-D")]
    BadDigit { digit: String },
    /// More fields than the message has.
    #[error("{message}: unexpected trailing fields")]
    TrailingFields { message: &'static str },
}

impl ParseError {
    /// Every value [`ParseError::kind`] returns, for counters labelled by kind.
    pub const KINDS: [&'static str; 15] = [
        "too_short",
        "oversize",
        "unknown_command",
        "missing_field",
        "not_utf8",
        "bad_uuid",
        "bad_flag",
        "bad_payload_type",
        "bad_length",
        "length_mismatch",
        "bad_port",
        "bad_extension",
        "trailing_fields",
        "bad_number",
        "bad_digit",
    ];

    /// A short stable name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ParseError::TooShort { .. } => "too_short",
            ParseError::Oversize { .. } => "oversize",
            ParseError::UnknownCommand { .. } => "unknown_command",
            ParseError::MissingField { .. } => "missing_field",
            ParseError::NotUtf8 { .. } => "not_utf8",
            ParseError::BadUuid { .. } => "bad_uuid",
            ParseError::BadFlag { .. } => "bad_flag",
            ParseError::BadPayloadType { .. } => "bad_payload_type",
            ParseError::BadLength { .. } => "bad_length",
            ParseError::LengthMismatch { .. } => "length_mismatch",
            ParseError::BadPort { .. } => "bad_port",
            ParseError::BadExtension { .. } => "bad_extension",
            ParseError::TrailingFields { .. } => "trailing_fields",
            ParseError::BadNumber { .. } => "bad_number",
            ParseError::BadDigit { .. } => "bad_digit",
        }
    }
}

/// Why a message cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// A text field contains `:`, which would shift every field after it.
    #[error("field {field} contains ':'")]
    FieldContainsColon { field: &'static str },
    /// A DTMF digit that is not one of `0-9 * # A-D`.
    #[error("{digit:?} is not a DTMF digit")]
    BadDigit { digit: char },
    /// The encoded message would exceed [`crate::MAX_DATAGRAM_LEN`].
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    Oversize { len: usize, max: usize },
}
