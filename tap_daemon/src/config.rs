//! The daemon's configuration: flags, and a TOML file whose keys are the
//! flags' names; flags win. [`parse`] is pure, [`load`] reads the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use thiserror::Error;

use crate::capture::{RunConfig, Source};
use crate::output::OutputConfig;
use crate::pipeline::{Filter, Pattern, PipelineConfig};
use crate::sip::TrackerConfig;

/// Why a configuration is refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("bad configuration: {0}")]
    Toml(#[from] toml::de::Error),
    /// A number pattern is not a valid glob or regular expression.
    #[error("bad number pattern {pattern:?}: {source}")]
    Pattern {
        pattern: String,
        #[source]
        source: regex::Error,
    },
    /// A stream profile name the INV cannot carry.
    #[error("bad stream name {0:?}: letters, digits, '-', '_' and '.', at most 64")]
    StreamName(String),
    /// A list of receivers that is not a pool (the same one twice).
    #[error("bad receivers: {0}")]
    Receivers(#[from] rst_proto::PoolError),
    /// Neither or both of `pcap` and `interface`.
    #[error("give exactly one of --pcap FILE and --interface IF")]
    Source,
}

/// Flags, and the keys of the configuration file.
#[derive(Debug, Clone, Default, Parser, Deserialize)]
#[command(
    name = "tap_daemon",
    version,
    about = "Captures SIP calls (libpcap) and sends their audio to an rst receiver"
)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// Read this capture file (pcap or pcapng) instead of an interface
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Capture live on this interface (promiscuous)
    #[arg(long, value_name = "IF")]
    pub interface: Option<String>,
    /// BPF capture filter, e.g. "udp or tcp port 5060"
    #[arg(long, value_name = "BPF")]
    pub filter: Option<String>,
    /// Bytes kept of each packet (a jumbo frame fits; smaller slots fit more packets in the kernel ring) [default: 9216]
    #[arg(long, value_name = "BYTES")]
    pub snaplen: Option<i32>,
    /// Kernel capture buffer [default: 33554432]
    #[arg(long, value_name = "BYTES")]
    pub buffer_size: Option<i32>,
    /// The rst receiver [default: 127.0.0.1:9527]
    #[arg(long, value_name = "ADDR:PORT")]
    pub receiver: Option<SocketAddr>,
    /// Several receivers (comma-separated): each call goes to the one its
    /// UUID hashes to and fails over to the next when it stops answering
    #[arg(long, value_name = "ADDR:PORT,...", value_delimiter = ',')]
    #[serde(default)]
    pub receivers: Vec<SocketAddr>,
    /// With receivers: milliseconds an INV may go unanswered before the call
    /// moves to the next receiver [default: 500]
    #[arg(long, value_name = "MS")]
    pub failover_ms: Option<u64>,
    /// TOML file with these settings (keys = flag names)
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Also record RTP flows that match no SIP call, as calls of their own
    #[arg(long)]
    #[serde(default)]
    pub rtp_without_sip: bool,
    /// Record only calls with an address in these networks (CIDR; repeatable)
    #[arg(long, value_name = "CIDR")]
    #[serde(default)]
    pub networks: Vec<ipnet::IpNet>,
    /// Record only calls whose caller or callee matches (glob, or re:REGEX; repeatable)
    #[arg(long, value_name = "PATTERN")]
    #[serde(default)]
    pub numbers: Vec<String>,
    /// Never record calls whose caller or callee matches (glob, or re:REGEX; repeatable)
    #[arg(long, value_name = "PATTERN")]
    #[serde(default)]
    pub skip_numbers: Vec<String>,
    /// Seconds between counter summaries in the log [default: 60]
    #[arg(long, value_name = "SECONDS")]
    pub stats_interval: Option<u64>,
    /// Calls sent to the receiver at once [default: 4000]
    #[arg(long, value_name = "N")]
    pub max_calls: Option<usize>,
    /// Seconds an answered call may go without SIP or RTP before it ends (its
    /// BYE was not seen, or a long hold) [default: 60]
    #[arg(long, value_name = "SECONDS")]
    pub call_idle_timeout: Option<u64>,
    /// Shared secret of the control plane (file only, never a flag: flags
    /// show in `ps`). Without one, discovery and control are off.
    #[arg(skip)]
    pub secret: Option<String>,
    /// The tap's name in discovery replies [default: the host name]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// TCP address of the control server [default: 0.0.0.0:9531]
    #[arg(long, value_name = "ADDR:PORT")]
    pub control_listen: Option<SocketAddr>,
    /// UDP address of the discovery responder [default: 0.0.0.0:9530]
    #[arg(long, value_name = "ADDR:PORT")]
    pub discovery_listen: Option<SocketAddr>,
    /// Seconds a control connection may stay silent [default: 60]
    #[arg(long, value_name = "SECONDS")]
    pub control_idle_timeout: Option<u64>,
    /// Ask the receiver to stream every call live to its stream profile NAME
    /// (repeatable; the receiver's [[stream]] tables name them) [default: none]
    #[arg(long, value_name = "NAME")]
    #[serde(default)]
    pub stream: Vec<String>,
}

/// A list given as flags replaces the file's.
fn list<T>(flags: Vec<T>, file: Vec<T>) -> Vec<T> {
    if flags.is_empty() {
        file
    } else {
        flags
    }
}

impl Settings {
    /// `self` (flags) over `base` (the file).
    pub fn over(self, base: Settings) -> Settings {
        Settings {
            pcap: self.pcap.or(base.pcap),
            interface: self.interface.or(base.interface),
            filter: self.filter.or(base.filter),
            snaplen: self.snaplen.or(base.snaplen),
            buffer_size: self.buffer_size.or(base.buffer_size),
            receiver: self.receiver.or(base.receiver),
            receivers: list(self.receivers, base.receivers),
            failover_ms: self.failover_ms.or(base.failover_ms),
            config: self.config.or(base.config),
            rtp_without_sip: self.rtp_without_sip || base.rtp_without_sip,
            networks: list(self.networks, base.networks),
            numbers: list(self.numbers, base.numbers),
            skip_numbers: list(self.skip_numbers, base.skip_numbers),
            stats_interval: self.stats_interval.or(base.stats_interval),
            max_calls: self.max_calls.or(base.max_calls),
            call_idle_timeout: self.call_idle_timeout.or(base.call_idle_timeout),
            secret: self.secret.or(base.secret),
            name: self.name.or(base.name),
            control_listen: self.control_listen.or(base.control_listen),
            discovery_listen: self.discovery_listen.or(base.discovery_listen),
            control_idle_timeout: self.control_idle_timeout.or(base.control_idle_timeout),
            stream: list(self.stream, base.stream),
        }
    }

    /// The run these settings describe.
    pub fn resolve(self) -> Result<RunConfig, ConfigError> {
        let source = match (self.pcap, self.interface) {
            (Some(path), None) => Source::File(path),
            (None, Some(interface)) => Source::Live {
                interface,
                snaplen: self.snaplen.unwrap_or(9216),
                buffer_size: self.buffer_size.unwrap_or(32 << 20),
            },
            _ => return Err(ConfigError::Source),
        };
        let patterns = |list: Vec<String>| {
            list.into_iter()
                .map(|p| {
                    Pattern::parse(&p).map_err(|source| ConfigError::Pattern { pattern: p, source })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let filter = Filter {
            networks: self.networks,
            numbers: patterns(self.numbers)?,
            skip_numbers: patterns(self.skip_numbers)?,
        };
        let offline = matches!(source, Source::File(_));
        let pool = match self.receivers.is_empty() {
            true => None,
            false => Some(rst_proto::Pool::new(self.receivers.clone())?),
        };
        let receiver = pool
            .as_ref()
            .map(|pool| pool.receivers()[0])
            .or(self.receiver)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], rst_proto::DEFAULT_PORT)));
        let mut output = OutputConfig::new(receiver, offline);
        output.pool = pool;
        if let Some(ms) = self.failover_ms {
            output.failover = Duration::from_millis(ms.clamp(50, 60_000));
        }
        if let Some(max) = self.max_calls {
            output.max_streams = max;
        }
        if let Some(bad) = self
            .stream
            .iter()
            .find(|name| !rst_proto::is_stream_name(name))
        {
            return Err(ConfigError::StreamName(bad.clone()));
        }
        output.streams = self.stream;
        output.tap = Some(self.name.clone().unwrap_or_else(crate::control::hostname));
        Ok(RunConfig {
            source,
            filter: self.filter,
            pipeline: PipelineConfig {
                filter,
                rtp_without_sip: self.rtp_without_sip,
                tracker: TrackerConfig {
                    idle_timeout: Duration::from_secs(self.call_idle_timeout.unwrap_or(60).max(1)),
                    ..TrackerConfig::default()
                },
                ..PipelineConfig::default()
            },
            output,
            stats_interval: Duration::from_secs(self.stats_interval.unwrap_or(60).max(1)),
            close_grace: Duration::from_secs(3),
        })
    }
}

/// Parses a configuration file's text.
pub fn parse(text: &str) -> Result<Settings, ConfigError> {
    Ok(toml::from_str(text)?)
}

/// Reads and parses a configuration file.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_reach_the_output_and_bad_ones_are_refused() {
        let settings = parse("pcap = \"x.pcap\"\nstream = [\"bot\", \"asr\"]").unwrap();
        assert_eq!(settings.resolve().unwrap().output.streams, ["bot", "asr"]);
        let settings = parse("pcap = \"x.pcap\"\nstream = [\"a:b\"]").unwrap();
        assert!(matches!(
            settings.resolve(),
            Err(ConfigError::StreamName(_))
        ));
    }

    #[test]
    fn the_shipped_config_file_parses_and_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/tap_daemon.toml");
        let file = parse(&std::fs::read_to_string(path).unwrap()).unwrap();
        let flags = Settings::parse_from(["tap_daemon", "--pcap", "calls.pcap"]);
        let run = flags.over(file).resolve().unwrap();
        let default = PipelineConfig::default();
        assert_eq!(
            run.pipeline.tracker.idle_timeout,
            default.tracker.idle_timeout
        );
        assert_eq!(run.pipeline.rtp_without_sip, default.rtp_without_sip);
        assert_eq!(
            run.output.max_streams,
            OutputConfig::new(run.output.receiver, true).max_streams
        );
        assert_eq!(run.stats_interval, Duration::from_secs(60));
    }

    #[test]
    fn receivers_make_a_pool_from_the_file_or_the_flag() {
        let file = parse(
            r#"
            pcap = "x.pcap"
            receivers = ["127.0.0.1:9527", "127.0.0.1:9528"]
            failover-ms = 300
            "#,
        )
        .unwrap();
        let run = Settings::default().over(file).resolve().unwrap();
        let pool = run.output.pool.unwrap();
        assert_eq!(pool.len(), 2);
        assert_eq!(run.output.receiver, pool.receivers()[0]);
        assert_eq!(run.output.failover, Duration::from_millis(300));
        let flags = Settings::parse_from([
            "tap_daemon",
            "--pcap",
            "x.pcap",
            "--receivers",
            "127.0.0.1:1,127.0.0.1:1",
        ]);
        assert!(matches!(flags.resolve(), Err(ConfigError::Receivers(_))));
    }

    #[test]
    fn file_keys_are_flag_names_and_flags_win() {
        let file = parse(
            r#"
            interface = "eth1"
            filter = "udp"
            snaplen = 1500
            buffer-size = 1048576
            receiver = "10.0.0.20:9527"
            rtp-without-sip = true
            networks = ["10.0.0.0/8"]
            numbers = ["1001*"]
            skip-numbers = ["re:^9"]
            stats-interval = 10
            max-calls = 50
            call-idle-timeout = 300
            "#,
        )
        .unwrap();
        let flags = Settings::parse_from(["tap_daemon", "--receiver", "127.0.0.1:9000"]);
        let run = flags.over(file).resolve().unwrap();
        assert_eq!(
            run.source,
            Source::Live {
                interface: "eth1".into(),
                snaplen: 1500,
                buffer_size: 1 << 20
            }
        );
        assert_eq!(run.output.receiver, "127.0.0.1:9000".parse().unwrap());
        assert!(run.pipeline.rtp_without_sip);
        assert_eq!(run.pipeline.tracker.idle_timeout, Duration::from_secs(300));
        assert!(run
            .pipeline
            .filter
            .allows("1001", "2", &["10.1.2.3".parse().unwrap()]));
        assert!(!run
            .pipeline
            .filter
            .allows("1001", "9", &["10.1.2.3".parse().unwrap()]));
        assert!(!run.output.offline);
        assert_eq!(run.output.max_streams, 50);
    }

    #[test]
    fn refuses_unknown_keys_and_two_sources() {
        assert!(parse("recever = \"x\"").is_err());
        let both = Settings::parse_from(["tap_daemon", "--pcap", "a", "--interface", "b"]);
        assert!(matches!(both.resolve(), Err(ConfigError::Source)));
        let bad = Settings::parse_from(["tap_daemon", "--pcap", "a", "--numbers", "re:("]);
        assert!(matches!(bad.resolve(), Err(ConfigError::Pattern { .. })));
    }
}
