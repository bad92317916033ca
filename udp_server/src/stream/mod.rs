//! Live streams: the receiver dials a WebSocket per call and stream profile
//! and sends the call's audio as it is recorded, in a format speech and
//! voice-AI services already read ([`encode`]).
//!
//! A profile (`[[stream]]` in the config) says where (`url`), how (`format`,
//! `tracks`, `rate`), for which calls (`calls`, or a call's own `stream=NAME`
//! INV extension), and how much audio to keep while the consumer is away
//! (`buffer-seconds`). Each stream is a task of its own ([`dial`]): a slow or
//! absent consumer never slows recording, other calls or other consumers.

pub mod dial;
pub mod encode;
pub mod inbound;
pub mod tls;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rst_control::Pattern;
use rst_proto::Direction;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::live::{LiveCall, LiveCalls};
use crate::metrics::Metrics;
pub use dial::{StreamRecord, StreamStats};

/// The message format of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Twilio Media Streams: JSON messages, µ-law 8 kHz in base64.
    Twilio,
    /// A JSON start message, then binary 16-bit little-endian PCM frames.
    Raw,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Twilio => "twilio",
            Format::Raw => "raw",
        }
    }
}

/// Which directions a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tracks {
    /// R: what the caller side says.
    Inbound,
    /// W: what the caller side hears.
    Outbound,
    Both,
}

impl Tracks {
    pub fn has(self, direction: Direction) -> bool {
        matches!(
            (self, direction),
            (Tracks::Both, _)
                | (Tracks::Inbound, Direction::Read)
                | (Tracks::Outbound, Direction::Write)
        )
    }

    pub fn channels(self) -> usize {
        match self {
            Tracks::Both => 2,
            _ => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Tracks::Inbound => "inbound",
            Tracks::Outbound => "outbound",
            Tracks::Both => "both",
        }
    }

    /// Twilio's name of a direction's track.
    pub fn twilio_name(direction: Direction) -> &'static str {
        match direction {
            Direction::Read => "inbound",
            Direction::Write => "outbound",
        }
    }

    /// The `tracks` of a Twilio `start` message.
    pub fn twilio_names(self) -> Vec<&'static str> {
        Direction::BOTH
            .into_iter()
            .filter(|d| self.has(*d))
            .map(Tracks::twilio_name)
            .collect()
    }
}

/// Which calls a profile streams.
#[derive(Debug, Clone, Default)]
pub enum Calls {
    /// Every call.
    #[default]
    All,
    /// Only calls that ask for it (`stream=NAME` in their INV).
    Asked,
    /// Calls whose caller matches one of `caller` and whose callee matches
    /// one of `callee` (an empty list matches any).
    Numbers {
        caller: Vec<Pattern>,
        callee: Vec<Pattern>,
    },
}

impl PartialEq for Calls {
    fn eq(&self, other: &Self) -> bool {
        let texts = |patterns: &[Pattern]| {
            patterns
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        match (self, other) {
            (Calls::All, Calls::All) | (Calls::Asked, Calls::Asked) => true,
            (
                Calls::Numbers { caller, callee },
                Calls::Numbers {
                    caller: c2,
                    callee: e2,
                },
            ) => texts(caller) == texts(c2) && texts(callee) == texts(e2),
            _ => false,
        }
    }
}

impl Calls {
    fn matches(&self, caller: Option<&str>, callee: Option<&str>) -> bool {
        let one_of = |patterns: &[Pattern], number: Option<&str>| {
            patterns.is_empty() || number.is_some_and(|n| patterns.iter().any(|p| p.matches(n)))
        };
        match self {
            Calls::All => true,
            Calls::Asked => false,
            Calls::Numbers {
                caller: c,
                callee: e,
            } => one_of(c, caller) && one_of(e, callee),
        }
    }
}

/// TLS settings of a `wss://` profile.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsFiles {
    /// CA certificates (PEM) to verify the consumer with, instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key (PEM), for mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// A stream profile, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub url: String,
    pub format: Format,
    pub tracks: Tracks,
    /// Sample rate of `raw` audio.
    pub rate: u32,
    /// Sent with the WebSocket upgrade (an `Authorization` bearer token, say).
    pub headers: Vec<(String, String)>,
    /// Handed to the consumer in the start message.
    pub params: BTreeMap<String, String>,
    pub calls: Calls,
    /// Audio kept per call while the consumer is away or slow.
    pub buffer: Duration,
    pub tls: TlsFiles,
}

/// Rates a `raw` stream may have.
pub const RATES: [u32; 4] = [8000, 16000, 24000, 48000];

/// A `[[stream]]` table as written in the config file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ProfileSpec {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub format: Option<Format>,
    #[serde(default)]
    pub tracks: Option<Tracks>,
    #[serde(default)]
    pub rate: Option<u32>,
    /// Values may name environment variables, `${NAME}`, so that secrets
    /// stay out of the file.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default)]
    pub calls: Option<CallsSpec>,
    #[serde(default)]
    pub buffer_seconds: Option<u64>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// `calls = "all"`, `calls = "asked"` or `calls = { caller = [...], callee = [...] }`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum CallsSpec {
    Word(String),
    Numbers {
        #[serde(default)]
        caller: Vec<String>,
        #[serde(default)]
        callee: Vec<String>,
    },
}

/// Audio a stream keeps while its consumer is away, unless the profile says.
pub const DEFAULT_BUFFER_SECONDS: u64 = 10;

impl ProfileSpec {
    /// The profile of the command line's `--stream-url` and its companions.
    pub fn simple(url: String) -> ProfileSpec {
        ProfileSpec {
            name: "default".into(),
            url,
            format: None,
            tracks: None,
            rate: None,
            headers: BTreeMap::new(),
            params: BTreeMap::new(),
            calls: None,
            buffer_seconds: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }

    /// Checks the values and fills in the defaults.
    pub fn resolve(self) -> anyhow::Result<Profile> {
        let name = self.name;
        anyhow::ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "stream profile {name:?}: a name is letters, digits, '-', '_' and '.'"
        );
        let url = expand_env(&self.url).with_context(|| format!("stream profile {name}: url"))?;
        anyhow::ensure!(
            url.starts_with("ws://") || url.starts_with("wss://"),
            "stream profile {name}: url must start with ws:// or wss://, not {:?}",
            redact_url(&url)
        );
        let format = self.format.unwrap_or(Format::Twilio);
        let rate = match (format, self.rate) {
            (Format::Twilio, None | Some(8000)) => 8000,
            (Format::Twilio, Some(rate)) => {
                anyhow::bail!("stream profile {name}: twilio streams are 8000 Hz µ-law, not {rate}")
            }
            (Format::Raw, rate) => rate.unwrap_or(16000),
        };
        anyhow::ensure!(
            RATES.contains(&rate),
            "stream profile {name}: rate must be one of {RATES:?}, not {rate}"
        );
        let headers = self
            .headers
            .into_iter()
            .map(|(key, value)| {
                let value = expand_env(&value)
                    .with_context(|| format!("stream profile {name}: header {key}"))?;
                Ok((key, value))
            })
            .collect::<anyhow::Result<_>>()?;
        let patterns = |texts: Vec<String>| {
            texts
                .iter()
                .map(|text| {
                    Pattern::parse(text)
                        .with_context(|| format!("stream profile {name}: calls pattern {text:?}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        };
        let calls = match self.calls {
            None => Calls::All,
            Some(CallsSpec::Word(word)) if word == "all" => Calls::All,
            Some(CallsSpec::Word(word)) if word == "asked" => Calls::Asked,
            Some(CallsSpec::Word(word)) => anyhow::bail!(
                "stream profile {name}: calls is \"all\", \"asked\" or {{ caller = [...], callee = [...] }}, not {word:?}"
            ),
            Some(CallsSpec::Numbers { caller, callee }) => Calls::Numbers {
                caller: patterns(caller)?,
                callee: patterns(callee)?,
            },
        };
        anyhow::ensure!(
            self.cert_file.is_some() == self.key_file.is_some(),
            "stream profile {name}: cert-file and key-file go together"
        );
        Ok(Profile {
            url,
            format,
            tracks: self.tracks.unwrap_or(Tracks::Inbound),
            rate,
            headers,
            params: self.params,
            calls,
            buffer: Duration::from_secs(self.buffer_seconds.unwrap_or(DEFAULT_BUFFER_SECONDS)),
            tls: TlsFiles {
                ca_file: self.ca_file,
                cert_file: self.cert_file,
                key_file: self.key_file,
            },
            name,
        })
    }
}

/// `${NAME}` replaced by the environment variable NAME.
fn expand_env(text: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| anyhow::anyhow!("an unclosed ${{ in {:?}", redact(text)))?;
        let name = &after[..end];
        let value = std::env::var(name)
            .map_err(|_| anyhow::anyhow!("the environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn redact(text: &str) -> String {
    format!("{}...", text.chars().take(8).collect::<String>())
}

pub use crate::bus::redact_url;

/// The stream profiles at work: start a call's streams.
#[derive(Debug, Clone)]
pub struct Streams {
    profiles: Arc<[dial::Dialer]>,
    calls: Arc<LiveCalls>,
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Streams {
    /// Prepares every profile (TLS settings are read now, so that a bad file
    /// stops the receiver at its start, not at the first call).
    pub fn new(
        profiles: &[Profile],
        calls: Arc<LiveCalls>,
        runtime: tokio::runtime::Handle,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Streams> {
        let profiles = profiles
            .iter()
            .map(|profile| dial::Dialer::new(profile.clone()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Streams {
            profiles: profiles.into(),
            calls,
            runtime,
            shutdown,
            metrics,
        })
    }

    /// Starts the streams `live` goes to: the profiles whose `calls` match it,
    /// and those it asks for by name (`asked`). Unknown names are ignored.
    pub fn start<'a>(
        &self,
        live: &Arc<LiveCall>,
        asked: impl Iterator<Item = &'a str>,
    ) -> Vec<Arc<StreamStats>> {
        let asked: Vec<&str> = asked.collect();
        let info = live.info();
        let mut started = Vec::new();
        for dialer in self.profiles.iter() {
            let profile = dialer.profile();
            let wanted = asked.contains(&profile.name.as_str())
                || profile
                    .calls
                    .matches(info.caller.as_deref(), info.callee.as_deref());
            if !wanted {
                continue;
            }
            started.push(dialer.spawn(
                live,
                &self.calls,
                &self.runtime,
                self.shutdown.clone(),
                self.metrics.clone(),
            ));
        }
        if !started.is_empty() {
            live.update(|info| {
                info.streams = started.iter().map(|s| s.profile.clone()).collect();
            });
        }
        started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(caller: &[&str], callee: &[&str]) -> Calls {
        let patterns = |texts: &[&str]| texts.iter().map(|t| Pattern::parse(t).unwrap()).collect();
        Calls::Numbers {
            caller: patterns(caller),
            callee: patterns(callee),
        }
    }

    #[test]
    fn calls_are_picked_by_caller_and_callee_patterns() {
        let support = numbers(&["1001*", "re:^\\+44"], &[]);
        assert!(support.matches(Some("10015"), Some("2000")));
        assert!(support.matches(Some("+4420"), None));
        assert!(
            !support.matches(Some("2002"), Some("1001")),
            "the callee is not the caller"
        );
        assert!(
            !support.matches(None, Some("1001")),
            "an unknown caller matches no pattern"
        );
        let both = numbers(&["1*"], &["9*"]);
        assert!(both.matches(Some("12"), Some("98")));
        assert!(
            !both.matches(Some("12"), Some("88")),
            "both lists must match"
        );
        assert!(Calls::All.matches(None, None));
        assert!(
            !Calls::Asked.matches(Some("1"), Some("2")),
            "only calls that ask"
        );
    }
}
