//! What a consumer sends back on its WebSocket: audio for the caller to
//! hear, `clear` (barge-in) and `mark`, in the stream's format.
//!
//! * `twilio`, as Twilio's bidirectional Media Streams take them: `media`
//!   (`media.payload`: base64 µ-law, 8 kHz), `clear`, `mark` (`mark.name`).
//! * `raw`: binary frames of 16-bit little-endian PCM at the stream's rate;
//!   `{"event":"clear"}` and `{"event":"mark","name":...}` as text.
//!
//! [`parse`] is sans-IO; [`Speaker`] hands what it parsed to the call's player.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use base64::Engine as _;

use super::encode::Outgoing;
use super::Format;
use crate::live::{LiveCall, LiveCalls};
use crate::metrics::Metrics;
use crate::play::PlayCommand;

/// One message from a consumer.
#[derive(Debug, Clone, Copy)]
pub enum Incoming<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// What `message` asks, in a stream of `format` at `rate`; `None` for what
/// is not for the call (Twilio's own `connected`, say); an error says what
/// was wrong with it.
pub fn parse(
    format: Format,
    rate: u32,
    message: Incoming<'_>,
) -> Result<Option<PlayCommand>, String> {
    match (format, message) {
        (Format::Raw, Incoming::Binary(bytes)) => {
            if bytes.len() % 2 != 0 {
                return Err(format!(
                    "a raw frame of {} bytes: 16-bit samples come in pairs of bytes",
                    bytes.len()
                ));
            }
            let samples = bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
            Ok(Some(PlayCommand::Audio { rate, samples }))
        }
        (Format::Twilio, Incoming::Binary(_)) => {
            Err("twilio streams take JSON text messages, not binary ones".into())
        }
        (format, Incoming::Text(text)) => {
            let value: serde_json::Value =
                serde_json::from_str(text).map_err(|error| format!("not JSON: {error}"))?;
            match value["event"].as_str() {
                Some("clear") => Ok(Some(PlayCommand::Clear)),
                Some("mark") => {
                    let name = match format {
                        Format::Twilio => value["mark"]["name"].as_str(),
                        Format::Raw => value["name"].as_str(),
                    };
                    let name = name.ok_or("a mark without a name")?;
                    if name.len() > rst_proto::MAX_MARK_NAME / 3 {
                        return Err(format!(
                            "a mark name longer than {} bytes",
                            rst_proto::MAX_MARK_NAME / 3
                        ));
                    }
                    Ok(Some(PlayCommand::Mark(name.to_owned())))
                }
                Some("media") if format == Format::Twilio => {
                    let payload = value["media"]["payload"]
                        .as_str()
                        .ok_or("a media message without media.payload")?;
                    let ulaw = base64::engine::general_purpose::STANDARD
                        .decode(payload)
                        .map_err(|error| format!("media.payload is not base64: {error}"))?;
                    let samples = ulaw.into_iter().map(rst_codec::ulaw_to_linear).collect();
                    Ok(Some(PlayCommand::Audio {
                        rate: 8000,
                        samples,
                    }))
                }
                _ => Ok(None),
            }
        }
    }
}

/// A consumer's way back into its call.
#[derive(Debug)]
pub struct Speaker {
    live: Arc<LiveCall>,
    calls: Arc<LiveCalls>,
    metrics: Arc<Metrics>,
    format: Format,
    rate: u32,
    /// Marks this consumer sent that have not come back yet.
    marks: HashSet<String>,
    /// Refusals said once per connection, not once per frame.
    told: bool,
}

impl Speaker {
    pub fn new(
        live: Arc<LiveCall>,
        calls: Arc<LiveCalls>,
        metrics: Arc<Metrics>,
        format: Format,
        rate: u32,
    ) -> Speaker {
        Speaker {
            live,
            calls,
            metrics,
            format,
            rate,
            marks: HashSet::new(),
            told: false,
        }
    }

    /// A new connection: a refusal is said again on it.
    pub fn reconnected(&mut self) {
        self.told = false;
    }

    /// Takes one message from the consumer; returns what to tell it, if anything.
    pub fn heard(&mut self, message: Incoming<'_>) -> Option<Outgoing> {
        let command = match parse(self.format, self.rate, message) {
            Ok(Some(command)) => command,
            Ok(None) => return None,
            Err(error) => {
                self.metrics.play_refused.fetch_add(1, Relaxed);
                return Some(error_message(&error));
            }
        };
        let mark = match &command {
            PlayCommand::Mark(name) => Some(name.clone()),
            _ => None,
        };
        let refused = match self.calls.player(&self.live) {
            Ok(player) if player.try_send(command) => None,
            Ok(_) => Some(crate::live::PlayRefused::Busy),
            Err(refused) => Some(refused),
        };
        match refused {
            None => {
                if let Some(name) = mark {
                    self.marks.insert(name);
                }
                None
            }
            Some(refused) => {
                self.metrics.play_refused.fetch_add(1, Relaxed);
                if self.told {
                    return None;
                }
                self.told = true;
                tracing::debug!(uuid = %self.live.info().uuid, %refused, "a consumer's audio was refused");
                Some(error_message(&refused.to_string()))
            }
        }
    }

    /// Whether the mark that came back is one this consumer sent (then it is
    /// told, once).
    pub fn owns(&mut self, name: &str) -> bool {
        self.marks.remove(name)
    }
}

fn error_message(text: &str) -> Outgoing {
    Outgoing::Text(serde_json::json!({"event": "error", "message": text}).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_and_raw_messages_become_play_commands() {
        let payload = base64::engine::general_purpose::STANDARD.encode([0xFFu8, 0x00]);
        let media =
            format!(r#"{{"event":"media","streamSid":"MZ1","media":{{"payload":"{payload}"}}}}"#);
        let Ok(Some(PlayCommand::Audio { rate, samples })) =
            parse(Format::Twilio, 8000, Incoming::Text(&media))
        else {
            panic!()
        };
        assert_eq!(rate, 8000);
        assert_eq!(
            samples,
            [
                rst_codec::ulaw_to_linear(0xFF),
                rst_codec::ulaw_to_linear(0x00)
            ]
        );
        assert!(matches!(
            parse(
                Format::Twilio,
                8000,
                Incoming::Text(r#"{"event":"clear","streamSid":"MZ1"}"#)
            ),
            Ok(Some(PlayCommand::Clear))
        ));
        assert!(matches!(
            parse(Format::Twilio, 8000, Incoming::Text(r#"{"event":"mark","mark":{"name":"m1"}}"#)),
            Ok(Some(PlayCommand::Mark(name))) if name == "m1"
        ));
        assert!(matches!(
            parse(
                Format::Twilio,
                8000,
                Incoming::Text(r#"{"event":"connected"}"#)
            ),
            Ok(None)
        ));
        let Ok(Some(PlayCommand::Audio { rate, samples })) =
            parse(Format::Raw, 16000, Incoming::Binary(&[1, 0, 0xFF, 0xFF]))
        else {
            panic!()
        };
        assert_eq!((rate, samples), (16000, vec![1, -1]));
        assert!(matches!(
            parse(Format::Raw, 16000, Incoming::Text(r#"{"event":"mark","name":"m2"}"#)),
            Ok(Some(PlayCommand::Mark(name))) if name == "m2"
        ));
        for bad in [
            parse(Format::Raw, 16000, Incoming::Binary(&[1, 2, 3])),
            parse(Format::Twilio, 8000, Incoming::Binary(&[1, 2])),
            parse(Format::Twilio, 8000, Incoming::Text("{")),
            parse(
                Format::Twilio,
                8000,
                Incoming::Text(r#"{"event":"media","media":{"payload":"!!"}}"#),
            ),
            parse(
                Format::Twilio,
                8000,
                Incoming::Text(r#"{"event":"mark","mark":{}}"#),
            ),
        ] {
            assert!(bad.is_err());
        }
    }
}
