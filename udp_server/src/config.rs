//! Configuration: a TOML file plus command-line flags of the same names; flags win,
//! and every setting has a default that works.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use ipnet::IpNet;
use serde::Deserialize;

use rst_control::control::Secret;

use crate::record::DeclaredPayloadType;
use crate::storage::{StorageConfig, StorageSettings};
use crate::stream::{Format, Profile, ProfileSpec, Tracks};
use crate::taps::{TapLink, TapSpec, TapsConfig};

/// The receiver's settings, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// UDP address the rst datagrams arrive on.
    pub listen: SocketAddr,
    /// Folder the recordings go into (a subfolder per UTC day).
    pub record_dir: PathBuf,
    /// A call with no datagram for this long is ended as `timeout`.
    pub idle_timeout: Duration,
    /// Calls recorded at once; beyond it new calls are refused and counted.
    pub max_calls: usize,
    /// Optional HTTP port: `/metrics`, `/health`, and with a token the API
    /// (`/api/calls`, `listen`).
    pub http: Option<SocketAddr>,
    /// The HTTP API's token; without one the API is off.
    pub http_token: Option<Secret>,
    /// Live stream profiles: where calls' audio is streamed.
    pub streams: Vec<Profile>,
    /// How often the counters are logged.
    pub stats_interval: Duration,
    /// Also write each direction's bare payload (`UUID.R.raw`), as the original receiver did.
    pub raw: bool,
    /// Sender networks allowed; empty allows every sender.
    pub allow: Vec<IpNet>,
    /// Sample rate of PT 10 linear audio when the INV does not say (`rate=` extension).
    pub l16_rate: u32,
    /// UDP ports handed out to RTP-mode calls, two per call.
    pub rtp_ports: PortRange,
    /// RTP packets held behind a missing one before it is declared lost.
    pub jitter_packets: usize,
    /// Optional TCP address of the metadata feed for recording consoles.
    pub feed: Option<SocketAddr>,
    /// Threads writing recordings; calls are spread over them.
    pub recorder_threads: usize,
    /// Taps this receiver configures, starts and keeps running.
    pub taps: TapsConfig,
    /// What dynamic payload types mean when a call's INV does not declare them.
    pub payload_types: Vec<DeclaredPayloadType>,
    /// Datagrams for a call are taken only from the address that started it.
    pub bind_sender: bool,
    /// New calls a second from one sender address; 0: no limit.
    pub new_calls_per_second: u32,
    /// 20 ms frames of a consumer's audio sent ahead of real time to the
    /// call's sender (what its jitter buffer absorbs).
    pub play_lead: u32,
    /// Object storage the recordings are uploaded to; none by default.
    pub storage: Option<StorageConfig>,
    /// Call events on a message bus and webhooks (NATS, AMQP, HTTP).
    pub bus: crate::bus::BusConfig,
}

/// The default `payload-types`: RFC 4733 events on 101, as the original
/// mod_rst and most SIP equipment send them without saying so.
pub const DEFAULT_PAYLOAD_TYPES: &[&str] = &["101=telephone-event/8000"];

fn payload_types(texts: &[impl AsRef<str>]) -> anyhow::Result<Vec<DeclaredPayloadType>> {
    texts
        .iter()
        .map(|text| {
            let (pt, name, rate) = rst_proto::parse_payload_type(text.as_ref())
                .map_err(|e| anyhow::anyhow!("payload-types: {e}"))?;
            Ok((pt, name.to_owned(), rate))
        })
        .collect()
}

/// The `[[stream]]` profiles and the one `--stream-url` makes.
fn stream_profiles(
    specs: Vec<ProfileSpec>,
    url: Option<String>,
    format: Option<Format>,
    tracks: Option<Tracks>,
    rate: Option<u32>,
) -> anyhow::Result<Vec<Profile>> {
    let mut specs = specs;
    match url {
        Some(url) => specs.push(ProfileSpec {
            format,
            tracks,
            rate,
            ..ProfileSpec::simple(url)
        }),
        None => anyhow::ensure!(
            format.is_none() && tracks.is_none() && rate.is_none(),
            "stream-format, stream-tracks and stream-rate go with stream-url"
        ),
    }
    let profiles = specs
        .into_iter()
        .map(ProfileSpec::resolve)
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (i, profile) in profiles.iter().enumerate() {
        anyhow::ensure!(
            !profiles[..i].iter().any(|p| p.name == profile.name),
            "two stream profiles are named {}",
            profile.name
        );
    }
    Ok(profiles)
}

/// An inclusive range of UDP ports, written `40000-59999`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PortRange(pub std::ops::RangeInclusive<u16>);

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not a port range like 40000-59999");
        let (low, high) = text.split_once('-').ok_or_else(bad)?;
        let low: u16 = low.trim().parse().map_err(|_| bad())?;
        let high: u16 = high.trim().parse().map_err(|_| bad())?;
        if low == 0 || high < low.saturating_add(1) {
            return Err(format!(
                "{text:?}: the range needs at least two ports, none of them 0"
            ));
        }
        Ok(PortRange(low..=high))
    }
}

impl TryFrom<String> for PortRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], rst_proto::DEFAULT_PORT)),
            record_dir: PathBuf::from("./recordings"),
            idle_timeout: Duration::from_secs(30),
            max_calls: 10_000,
            http: None,
            http_token: None,
            streams: Vec::new(),
            stats_interval: Duration::from_secs(60),
            raw: false,
            allow: Vec::new(),
            l16_rate: 8000,
            rtp_ports: PortRange(10000..=19999),
            jitter_packets: 5,
            feed: None,
            recorder_threads: 2,
            taps: TapsConfig::default(),
            payload_types: payload_types(DEFAULT_PAYLOAD_TYPES)
                .expect("the default payload types parse"),
            bind_sender: true,
            new_calls_per_second: 1000,
            play_lead: crate::play::LEAD_FRAMES,
            storage: None,
            bus: crate::bus::BusConfig::default(),
        }
    }
}

/// Settings as given in a file or on the command line: everything optional, named
/// alike in both (`record-dir` in TOML is `--record-dir` on the command line).
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// UDP address to receive rst datagrams on [default: 127.0.0.1:9527]
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Folder for recordings [default: ./recordings]
    #[arg(long, value_name = "DIR")]
    pub record_dir: Option<PathBuf>,
    /// Seconds without a datagram after which a call is ended [default: 30]
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,
    /// Most calls recorded at once [default: 10000]
    #[arg(long, value_name = "N")]
    pub max_calls: Option<usize>,
    /// Serve the HTTP port on this address: /metrics, /health, and with
    /// http-token-file the API (/api/calls, listen) [default: off]
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Option<SocketAddr>,
    /// The same as http (its former name, when it served only /metrics)
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
    /// File holding the HTTP API's token (Authorization: Bearer TOKEN, or
    /// ?token=TOKEN); without it the API is off [default: none]
    #[arg(long, value_name = "FILE")]
    pub http_token_file: Option<PathBuf>,
    /// Stream every call live to this WebSocket consumer (ws:// or wss://);
    /// in the file, [[stream]] tables name profiles [default: none]
    #[arg(long, value_name = "URL")]
    pub stream_url: Option<String>,
    /// Message format of --stream-url [default: twilio]
    #[arg(long, value_name = "FORMAT")]
    pub stream_format: Option<Format>,
    /// Directions --stream-url carries: inbound (R), outbound (W) or both [default: inbound]
    #[arg(long, value_name = "TRACKS")]
    pub stream_tracks: Option<Tracks>,
    /// Sample rate of --stream-url's raw audio: 8000, 16000, 24000 or 48000 [default: 16000]
    #[arg(long, value_name = "HZ")]
    pub stream_rate: Option<u32>,
    /// Stream profiles (file only).
    #[arg(skip)]
    #[serde(default)]
    pub stream: Vec<ProfileSpec>,
    /// Seconds between counter summaries in the log [default: 60]
    #[arg(long, value_name = "SECS")]
    pub stats_interval: Option<u64>,
    /// Also write each direction's bare payload, as the original receiver did
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub raw: Option<bool>,
    /// Sender network allowed to send (CIDR, repeatable) [default: any]
    #[arg(long, value_name = "CIDR")]
    #[serde(default)]
    pub allow: Vec<IpNet>,
    /// Sample rate of PT 10 linear audio when the INV does not say [default: 8000]
    #[arg(long, value_name = "HZ")]
    pub l16_rate: Option<u32>,
    /// UDP ports for RTP-mode calls, two per call [default: 10000-19999]
    #[arg(long, value_name = "LOW-HIGH")]
    pub rtp_ports: Option<PortRange>,
    /// RTP packets held behind a missing one before it counts as lost [default: 5]
    #[arg(long, value_name = "N")]
    pub jitter_packets: Option<usize>,
    /// Serve the metadata feed (JSON lines) to TCP clients on this address [default: off]
    #[arg(long, value_name = "ADDR:PORT")]
    pub feed: Option<SocketAddr>,
    /// Threads writing recordings (calls are spread over them) [default: 2]
    #[arg(long, value_name = "N")]
    pub recorder_threads: Option<usize>,
    /// A tap to drive: HOST[:PORT] or name=NAME, repeatable; in the file also a
    /// [[tap]] table with its capture settings [default: none]
    #[arg(long, value_name = "TAP")]
    #[serde(default, deserialize_with = "crate::taps::deserialize_taps")]
    pub tap: Vec<TapSpec>,
    /// File holding the taps' shared secret
    #[arg(long, value_name = "FILE")]
    pub tap_secret_file: Option<PathBuf>,
    /// Where requests to find taps go [default: 255.255.255.255:9530]
    #[arg(long, value_name = "ADDR:PORT")]
    pub tap_discovery: Option<SocketAddr>,
    /// Seconds between status requests (the heartbeat) to each tap [default: 5]
    #[arg(long, value_name = "SECS")]
    pub tap_poll_interval: Option<u64>,
    /// What a dynamic payload type means when a call's INV does not declare it:
    /// N=NAME/CLOCK, repeatable (in the file, [] for none) [default: 101=telephone-event/8000]
    #[arg(long, value_name = "N=NAME/CLOCK")]
    pub payload_types: Option<Vec<String>>,
    /// Take a call's datagrams only from the address that started it; false
    /// where a sender's address may change mid-call (NAT rebinding) [default: true]
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub bind_sender: Option<bool>,
    /// New calls a second from one sender address, beyond which they are
    /// refused and counted; 0 for no limit [default: 1000]
    #[arg(long, value_name = "N")]
    pub new_calls_per_second: Option<u32>,
    /// 20 ms frames of a consumer's audio sent ahead of real time to mod_rst:
    /// more rides out a busier network or machine, fewer answers sooner;
    /// 1 to 16 [default: 3]
    #[arg(long, value_name = "FRAMES")]
    pub play_lead: Option<u32>,
    /// Object storage for the recordings: `[storage]` in the file.
    #[command(flatten)]
    #[serde(default)]
    pub storage: StorageSettings,

    // --- Call events on a message bus and webhooks ---
    /// NATS JetStream target (in the file, a [nats] table)
    #[command(flatten)]
    #[serde(default)]
    pub nats: NatsSettings,
    /// AMQP 0-9-1 (RabbitMQ) target (in the file, an [amqp] table)
    #[command(flatten)]
    #[serde(default)]
    pub amqp: AmqpSettings,
    /// POST every call event, signed, to this URL; in the file, [[webhook]]
    /// tables name several [default: none]
    #[arg(long, value_name = "URL")]
    pub webhook_url: Option<String>,
    /// File holding --webhook-url's HMAC-SHA256 signing secret
    #[arg(long, value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Webhook endpoints (file only).
    #[arg(skip)]
    #[serde(default)]
    pub webhook: Vec<WebhookSpec>,
    /// Bytes each bus or webhook target's on-disk outbox holds while it is
    /// down; past it the oldest events are dropped [default: 268435456]
    #[arg(long, value_name = "BYTES")]
    pub outbox_max_bytes: Option<u64>,
}

/// `[nats]`: publish every call event with JetStream to subject `PREFIX.EVENT`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, clap::Args)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NatsSettings {
    /// Publish call events to this NATS server with JetStream (nats://HOST:4222) [default: off]
    #[arg(id = "nats-url", long = "nats-url", value_name = "URL")]
    pub url: Option<String>,
    /// Subjects are PREFIX.EVENT (rst.call_start, ...) [default: rst]
    #[arg(
        id = "nats-subject-prefix",
        long = "nats-subject-prefix",
        value_name = "PREFIX"
    )]
    pub subject_prefix: Option<String>,
    /// JetStream stream keeping the events, created with subjects PREFIX.> when missing [default: rst]
    #[arg(id = "nats-stream", long = "nats-stream", value_name = "NAME")]
    pub stream: Option<String>,
    /// NATS credentials file (.creds) [default: none]
    #[arg(
        id = "nats-credentials-file",
        long = "nats-credentials-file",
        value_name = "FILE"
    )]
    pub credentials_file: Option<PathBuf>,
}

impl NatsSettings {
    fn over(self, base: NatsSettings) -> NatsSettings {
        NatsSettings {
            url: self.url.or(base.url),
            subject_prefix: self.subject_prefix.or(base.subject_prefix),
            stream: self.stream.or(base.stream),
            credentials_file: self.credentials_file.or(base.credentials_file),
        }
    }
}

/// `[amqp]`: publish every call event to a topic exchange, routing key `PREFIX.EVENT`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, clap::Args)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AmqpSettings {
    /// Publish call events to this AMQP 0-9-1 broker (amqp://USER:PASS@HOST:5672/VHOST) [default: off]
    #[arg(id = "amqp-url", long = "amqp-url", value_name = "URL")]
    pub url: Option<String>,
    /// File holding the AMQP URL, credentials and all (instead of amqp-url)
    #[arg(id = "amqp-url-file", long = "amqp-url-file", value_name = "FILE")]
    pub url_file: Option<PathBuf>,
    /// Topic exchange the events go to, declared durable [default: rst]
    #[arg(id = "amqp-exchange", long = "amqp-exchange", value_name = "NAME")]
    pub exchange: Option<String>,
    /// Routing keys are PREFIX.EVENT (rst.call_end, ...) [default: rst]
    #[arg(
        id = "amqp-routing-prefix",
        long = "amqp-routing-prefix",
        value_name = "PREFIX"
    )]
    pub routing_prefix: Option<String>,
}

impl AmqpSettings {
    fn over(self, base: AmqpSettings) -> AmqpSettings {
        AmqpSettings {
            url: self.url.or(base.url),
            url_file: self.url_file.or(base.url_file),
            exchange: self.exchange.or(base.exchange),
            routing_prefix: self.routing_prefix.or(base.routing_prefix),
        }
    }
}

/// A `[[webhook]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct WebhookSpec {
    /// Its outbox's folder and metrics label [default: webhook-N, N from 1]
    pub name: Option<String>,
    pub url: String,
    pub secret_file: PathBuf,
}

/// A name, prefix, stream or exchange: letters, digits, `_`, `-` (and `.`
/// where `dots` allows it, as in a subject prefix).
fn check_token(what: &str, text: &str, dots: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        !text.is_empty()
            && !text.starts_with('.')
            && !text.ends_with('.')
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || (dots && c == '.')),
        "{what} {text:?}: use letters, digits, _ and -{}",
        if dots { " (and . between words)" } else { "" }
    );
    Ok(())
}

fn read_secret(what: &str, path: &Path) -> anyhow::Result<Secret> {
    let secret = rst_tap_client::read_secret(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    anyhow::ensure!(
        !secret.0.is_empty(),
        "the {what} {} is empty",
        path.display()
    );
    Ok(secret)
}

/// The bus targets of `settings`.
fn bus_config(settings: &Settings) -> anyhow::Result<crate::bus::BusConfig> {
    use crate::bus::{
        AmqpTarget, NatsTarget, WebhookTarget, DEFAULT_EXCHANGE, DEFAULT_PREFIX, DEFAULT_STREAM,
    };
    let nats = &settings.nats;
    let nats = match &nats.url {
        Some(url) => {
            let target = NatsTarget {
                url: Secret(url.clone()),
                subject_prefix: nats
                    .subject_prefix
                    .clone()
                    .unwrap_or_else(|| DEFAULT_PREFIX.into()),
                stream: nats.stream.clone().unwrap_or_else(|| DEFAULT_STREAM.into()),
                credentials_file: nats.credentials_file.clone(),
            };
            check_token("nats subject-prefix", &target.subject_prefix, true)?;
            check_token("nats stream", &target.stream, false)?;
            Some(target)
        }
        None => {
            anyhow::ensure!(
                nats.subject_prefix.is_none()
                    && nats.stream.is_none()
                    && nats.credentials_file.is_none(),
                "the nats settings need a nats url"
            );
            None
        }
    };
    let amqp = &settings.amqp;
    let url = match (&amqp.url, &amqp.url_file) {
        (Some(_), Some(_)) => anyhow::bail!("give amqp url or amqp url-file, not both"),
        (Some(url), None) => Some(Secret(url.clone())),
        (None, Some(path)) => Some(read_secret("amqp url-file", path)?),
        (None, None) => None,
    };
    let amqp = match url {
        Some(url) => {
            let target = AmqpTarget {
                url,
                exchange: amqp
                    .exchange
                    .clone()
                    .unwrap_or_else(|| DEFAULT_EXCHANGE.into()),
                routing_prefix: amqp
                    .routing_prefix
                    .clone()
                    .unwrap_or_else(|| DEFAULT_PREFIX.into()),
            };
            check_token("amqp exchange", &target.exchange, true)?;
            check_token("amqp routing-prefix", &target.routing_prefix, true)?;
            Some(target)
        }
        None => {
            anyhow::ensure!(
                amqp.exchange.is_none() && amqp.routing_prefix.is_none(),
                "the amqp settings need an amqp url or url-file"
            );
            None
        }
    };
    let mut specs = settings.webhook.clone();
    match (&settings.webhook_url, &settings.webhook_secret_file) {
        (Some(url), Some(secret_file)) => specs.push(WebhookSpec {
            name: None,
            url: url.clone(),
            secret_file: secret_file.clone(),
        }),
        (None, None) => {}
        _ => anyhow::bail!("webhook-url and webhook-secret-file go together"),
    }
    let mut webhooks: Vec<WebhookTarget> = Vec::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let name = spec.name.unwrap_or_else(|| format!("webhook-{}", i + 1));
        check_token("webhook name", &name, false)?;
        anyhow::ensure!(
            name != "nats" && name != "amqp" && !webhooks.iter().any(|w| w.name == name),
            "two bus targets are named {name}"
        );
        anyhow::ensure!(
            spec.url.starts_with("http://") || spec.url.starts_with("https://"),
            "webhook {name}: the url must be http:// or https://"
        );
        webhooks.push(WebhookTarget {
            secret: read_secret(&format!("secret-file of webhook {name}"), &spec.secret_file)?,
            name,
            url: Secret(spec.url),
        });
    }
    Ok(crate::bus::BusConfig {
        nats,
        amqp,
        webhooks,
        outbox_max_bytes: settings
            .outbox_max_bytes
            .unwrap_or(crate::bus::DEFAULT_OUTBOX_MAX_BYTES),
    })
}

impl Settings {
    /// Parses the TOML text of a configuration file.
    pub fn parse(text: &str) -> anyhow::Result<Settings> {
        Ok(toml::from_str(text)?)
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Settings> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Settings::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// `self` over `base`: every setting given here replaces the one in `base`.
    pub fn over(self, base: Settings) -> Settings {
        Settings {
            listen: self.listen.or(base.listen),
            record_dir: self.record_dir.or(base.record_dir),
            idle_timeout: self.idle_timeout.or(base.idle_timeout),
            max_calls: self.max_calls.or(base.max_calls),
            http: self.http.or(base.http),
            metrics: self.metrics.or(base.metrics),
            http_token_file: self.http_token_file.or(base.http_token_file),
            stream_url: self.stream_url.or(base.stream_url),
            stream_format: self.stream_format.or(base.stream_format),
            stream_tracks: self.stream_tracks.or(base.stream_tracks),
            stream_rate: self.stream_rate.or(base.stream_rate),
            stream: if self.stream.is_empty() {
                base.stream
            } else {
                self.stream
            },
            stats_interval: self.stats_interval.or(base.stats_interval),
            raw: self.raw.or(base.raw),
            allow: if self.allow.is_empty() {
                base.allow
            } else {
                self.allow
            },
            l16_rate: self.l16_rate.or(base.l16_rate),
            rtp_ports: self.rtp_ports.or(base.rtp_ports),
            jitter_packets: self.jitter_packets.or(base.jitter_packets),
            feed: self.feed.or(base.feed),
            recorder_threads: self.recorder_threads.or(base.recorder_threads),
            tap: if self.tap.is_empty() {
                base.tap
            } else {
                self.tap
            },
            tap_secret_file: self.tap_secret_file.or(base.tap_secret_file),
            tap_discovery: self.tap_discovery.or(base.tap_discovery),
            tap_poll_interval: self.tap_poll_interval.or(base.tap_poll_interval),
            payload_types: self.payload_types.or(base.payload_types),
            bind_sender: self.bind_sender.or(base.bind_sender),
            new_calls_per_second: self.new_calls_per_second.or(base.new_calls_per_second),
            play_lead: self.play_lead.or(base.play_lead),
            storage: self.storage.over(base.storage),
            nats: self.nats.over(base.nats),
            amqp: self.amqp.over(base.amqp),
            webhook_url: self.webhook_url.or(base.webhook_url),
            webhook_secret_file: self.webhook_secret_file.or(base.webhook_secret_file),
            webhook: if self.webhook.is_empty() {
                base.webhook
            } else {
                self.webhook
            },
            outbox_max_bytes: self.outbox_max_bytes.or(base.outbox_max_bytes),
        }
    }

    /// Fills what is not given with defaults and checks the values.
    pub fn resolve(self) -> anyhow::Result<Config> {
        let default = Config::default();
        let bus = bus_config(&self)?;
        let config = Config {
            bus,
            listen: self.listen.unwrap_or(default.listen),
            record_dir: self.record_dir.unwrap_or(default.record_dir),
            idle_timeout: self
                .idle_timeout
                .map_or(default.idle_timeout, Duration::from_secs),
            max_calls: self.max_calls.unwrap_or(default.max_calls),
            http: match (self.http, self.metrics) {
                (Some(http), Some(metrics)) if http != metrics => anyhow::bail!(
                    "http ({http}) and metrics ({metrics}) differ: metrics is the old name of http, give one"
                ),
                (http, metrics) => http.or(metrics),
            },
            http_token: match &self.http_token_file {
                Some(path) => {
                    let token = rst_tap_client::read_secret(path).with_context(|| {
                        format!("cannot read the http-token-file {}", path.display())
                    })?;
                    anyhow::ensure!(
                        token.0.len() >= 16,
                        "the token in {} is shorter than 16 characters: too easy to guess",
                        path.display()
                    );
                    Some(token)
                }
                None => None,
            },
            streams: stream_profiles(
                self.stream,
                self.stream_url,
                self.stream_format,
                self.stream_tracks,
                self.stream_rate,
            )?,
            stats_interval: self
                .stats_interval
                .map_or(default.stats_interval, Duration::from_secs),
            raw: self.raw.unwrap_or(default.raw),
            allow: self.allow,
            l16_rate: self.l16_rate.unwrap_or(default.l16_rate),
            rtp_ports: self.rtp_ports.unwrap_or(default.rtp_ports),
            jitter_packets: self.jitter_packets.unwrap_or(default.jitter_packets),
            feed: self.feed.or(default.feed),
            recorder_threads: self.recorder_threads.unwrap_or(default.recorder_threads),
            taps: TapsConfig {
                links: self
                    .tap
                    .into_iter()
                    .map(|spec| TapLink::resolve(spec, self.tap_secret_file.as_ref()))
                    .collect::<anyhow::Result<_>>()?,
                discovery: self.tap_discovery.unwrap_or(default.taps.discovery),
                poll_interval: self
                    .tap_poll_interval
                    .map_or(default.taps.poll_interval, Duration::from_secs),
            },
            payload_types: match &self.payload_types {
                Some(texts) => payload_types(texts)?,
                None => default.payload_types,
            },
            bind_sender: self.bind_sender.unwrap_or(default.bind_sender),
            new_calls_per_second: self
                .new_calls_per_second
                .unwrap_or(default.new_calls_per_second),
            play_lead: self.play_lead.unwrap_or(default.play_lead),
            storage: self.storage.resolve()?,
        };
        anyhow::ensure!(
            (1..=crate::play::MAX_LEAD_FRAMES).contains(&config.play_lead),
            "play-lead must be from 1 to {} frames",
            crate::play::MAX_LEAD_FRAMES
        );
        anyhow::ensure!(
            !config.taps.poll_interval.is_zero(),
            "tap-poll-interval must be at least 1 second"
        );
        anyhow::ensure!(
            (1..=64).contains(&config.recorder_threads),
            "recorder-threads must be from 1 to 64"
        );
        anyhow::ensure!(
            !config.idle_timeout.is_zero(),
            "idle-timeout must be at least 1 second"
        );
        anyhow::ensure!(config.max_calls > 0, "max-calls must be at least 1");
        anyhow::ensure!(
            !config.stats_interval.is_zero(),
            "stats-interval must be at least 1 second"
        );
        anyhow::ensure!(
            (8000..=192_000).contains(&config.l16_rate),
            "l16-rate must be between 8000 and 192000"
        );
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::taps::TapTarget;
    use rst_control::control::Secret;

    #[test]
    fn empty_file_gives_the_defaults() {
        assert_eq!(
            Settings::parse("").unwrap().resolve().unwrap(),
            Config::default()
        );
    }

    #[test]
    fn file_keys_are_the_flag_names() {
        let file = Settings::parse(
            r#"
            listen = "0.0.0.0:9000"
            record-dir = "/var/rec"
            idle-timeout = 5
            max-calls = 7
            metrics = "127.0.0.1:9100"
            stats-interval = 10
            raw = true
            allow = ["10.0.0.0/8", "::1/128"]
            l16-rate = 16000
            rtp-ports = "30000-30009"
            jitter-packets = 3
            feed = "127.0.0.1:9529"
            payload-types = ["96=telephone-event/16000", "101=PCMU/8000"]
            bind-sender = false
            "#,
        )
        .unwrap();
        let config = file.resolve().unwrap();
        assert_eq!(config.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(config.record_dir, PathBuf::from("/var/rec"));
        assert_eq!(config.idle_timeout, Duration::from_secs(5));
        assert_eq!(config.max_calls, 7);
        assert_eq!(config.http, Some("127.0.0.1:9100".parse().unwrap()));
        assert!(config.raw);
        assert_eq!(config.allow.len(), 2);
        assert_eq!(config.l16_rate, 16000);
        assert_eq!(config.rtp_ports, PortRange(30000..=30009));
        assert_eq!(config.jitter_packets, 3);
        assert_eq!(config.feed, Some("127.0.0.1:9529".parse().unwrap()));
        assert_eq!(
            config.payload_types,
            [
                (96, "telephone-event".to_owned(), 16000),
                (101, "PCMU".to_owned(), 8000)
            ]
        );
        assert!(!config.bind_sender);
        let none = Settings::parse("payload-types = []")
            .unwrap()
            .resolve()
            .unwrap();
        assert!(none.payload_types.is_empty());
    }

    #[test]
    fn the_shipped_config_file_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/udp_server.toml");
        let config = Settings::load(&path).unwrap().resolve().unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn storage_is_a_table_in_the_file_and_storage_flags_on_the_command_line() {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            settings: Settings,
        }
        let file = Settings::parse(
            r#"
            [storage]
            bucket = "calls"
            endpoint = "http://127.0.0.1:8333"
            prefix = "/recordings/"
            keep-local = false
            "#,
        )
        .unwrap();
        let flags = <Flags as clap::Parser>::try_parse_from([
            "udp_server",
            "--storage-bucket",
            "other",
            "--storage-keep-local",
        ])
        .unwrap()
        .settings;
        let storage = flags.over(file).resolve().unwrap().storage.unwrap();
        assert_eq!(storage.bucket, "other", "a flag wins over the file");
        assert_eq!(storage.prefix, "recordings");
        assert!(storage.keep_local);
        assert_eq!(storage.endpoint, "http://127.0.0.1:8333");
        let error = Settings::parse("[storage]\nendpoint = \"http://x\"")
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(error.to_string().contains("no bucket"), "{error}");
        assert!(Settings::parse("[storage]\nbuckett = \"x\"").is_err());
    }

    #[test]
    fn stream_profiles_come_from_tables_or_the_simple_flags() {
        std::env::set_var("RST_CONFIG_TEST_TOKEN", "t0k3n");
        let file = Settings::parse(
            r#"
            [[stream]]
            name = "bot"
            url = "wss://bot.example.com/media?key=${RST_CONFIG_TEST_TOKEN}"
            format = "raw"
            tracks = "both"
            rate = 24000
            headers = { Authorization = "Bearer ${RST_CONFIG_TEST_TOKEN}" }
            params = { tenant = "acme" }
            calls = { caller = ["1001*"] }
            buffer-seconds = 3

            [[stream]]
            name = "asr"
            url = "ws://127.0.0.1:8080/"
            calls = "asked"
            "#,
        )
        .unwrap();
        let config = file.clone().resolve().unwrap();
        let [bot, asr] = &config.streams[..] else {
            panic!("{:?}", config.streams)
        };
        assert_eq!(bot.url, "wss://bot.example.com/media?key=t0k3n");
        assert_eq!(
            (bot.format, bot.tracks, bot.rate),
            (Format::Raw, Tracks::Both, 24000)
        );
        assert_eq!(
            bot.headers,
            [("Authorization".to_owned(), "Bearer t0k3n".to_owned())]
        );
        assert_eq!(bot.params["tenant"], "acme");
        assert_eq!(bot.buffer, Duration::from_secs(3));
        assert_eq!(
            (asr.format, asr.tracks, asr.rate),
            (Format::Twilio, Tracks::Inbound, 8000)
        );
        assert_eq!(asr.calls, crate::stream::Calls::Asked);

        let flags = Settings {
            stream_url: Some("ws://10.0.0.9/media".into()),
            stream_format: Some(Format::Raw),
            ..Settings::default()
        };
        let config = flags.resolve().unwrap();
        assert_eq!(config.streams.len(), 1);
        assert_eq!(config.streams[0].name, "default");
        assert_eq!(config.streams[0].rate, 16000);
    }

    #[test]
    fn bad_stream_profiles_are_refused_with_what_to_fix() {
        for (bad, says) in [
            ("url = \"http://x/\"", "ws:// or wss://"),
            (
                "url = \"ws://x/\"\nformat = \"twilio\"\nrate = 16000",
                "8000 Hz",
            ),
            (
                "url = \"ws://x/\"\nformat = \"raw\"\nrate = 11025",
                "rate must be one of",
            ),
            (
                "url = \"ws://x/${RST_NOT_SET_ANYWHERE}\"",
                "RST_NOT_SET_ANYWHERE",
            ),
            ("url = \"ws://x/\"\ncalls = \"some\"", "asked"),
            ("url = \"ws://x/\"\ncert-file = \"/c.pem\"", "go together"),
        ] {
            let text = format!("[[stream]]\nname = \"p\"\n{bad}");
            let error = Settings::parse(&text).unwrap().resolve().unwrap_err();
            assert!(format!("{error:#}").contains(says), "{bad}: {error:#}");
        }
        let twice = "[[stream]]\nname = \"p\"\nurl = \"ws://x/\"\n[[stream]]\nname = \"p\"\nurl = \"ws://y/\"";
        assert!(Settings::parse(twice).unwrap().resolve().is_err());
        assert!(
            Settings::parse("[[stream]]\nname = \"p\"\nurl = \"ws://x/\"\nformt = \"raw\"")
                .is_err()
        );
        let lonely = Settings {
            stream_format: Some(Format::Raw),
            ..Settings::default()
        };
        assert!(
            lonely.resolve().is_err(),
            "stream-format without stream-url"
        );
        let different = Settings {
            http: Some("127.0.0.1:1".parse().unwrap()),
            metrics: Some("127.0.0.1:2".parse().unwrap()),
            ..Settings::default()
        };
        assert!(
            different.resolve().is_err(),
            "http and its old name disagree"
        );
    }

    #[test]
    fn a_short_http_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "short\n").unwrap();
        let settings = Settings {
            http_token_file: Some(path.clone()),
            ..Settings::default()
        };
        assert!(format!("{:#}", settings.resolve().unwrap_err()).contains("16 characters"));
        std::fs::write(&path, "0123456789abcdef\n").unwrap();
        let settings = Settings {
            http_token_file: Some(path),
            ..Settings::default()
        };
        assert_eq!(
            settings.resolve().unwrap().http_token.unwrap().0,
            "0123456789abcdef"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let file = Settings::parse("idle-timeout = 5\nmax-calls = 7").unwrap();
        let flags = Settings {
            idle_timeout: Some(9),
            ..Settings::default()
        };
        let config = flags.over(file).resolve().unwrap();
        assert_eq!(config.idle_timeout, Duration::from_secs(9));
        assert_eq!(config.max_calls, 7);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(Settings::parse("idle_timeout = 5").is_err());
        assert!(Settings::parse("allow = [\"10.0.0.0/33\"]").is_err());
        assert!(Settings::parse("rtp-ports = \"5000\"").is_err());
        assert!(Settings::parse("rtp-ports = \"5000-5000\"").is_err());
        for bad in ["101", "101=telephone-event", "200=PCMU/8000", "x=PCMU/8000"] {
            let settings = Settings::parse(&format!("payload-types = [{bad:?}]")).unwrap();
            assert!(settings.resolve().is_err(), "{bad}");
        }
        assert!(Settings {
            idle_timeout: Some(0),
            ..Settings::default()
        }
        .resolve()
        .is_err());
    }

    #[test]
    fn bus_targets_are_nested_tables_and_flags_of_the_same_names() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("hook.secret");
        std::fs::write(&secret, "k3y\n").unwrap();
        let amqp_url = dir.path().join("amqp.url");
        std::fs::write(&amqp_url, "amqp://u:p@mq:5672/%2f\n").unwrap();
        let file = Settings::parse(&format!(
            r#"
            outbox-max-bytes = 1000000
            [nats]
            url = "nats://127.0.0.1:4222"
            subject-prefix = "pbx.rst"
            [amqp]
            url-file = "{}"
            exchange = "calls"
            [[webhook]]
            name = "crm"
            url = "https://crm.example.com/hook"
            secret-file = "{}"
            "#,
            amqp_url.display(),
            secret.display()
        ))
        .unwrap();
        let config = file.clone().resolve().unwrap();
        let nats = config.bus.nats.as_ref().unwrap();
        assert_eq!(nats.url.0, "nats://127.0.0.1:4222");
        assert_eq!(
            (nats.subject_prefix.as_str(), nats.stream.as_str()),
            ("pbx.rst", "rst")
        );
        let amqp = config.bus.amqp.as_ref().unwrap();
        assert_eq!(amqp.url.0, "amqp://u:p@mq:5672/%2f");
        assert_eq!(
            (amqp.exchange.as_str(), amqp.routing_prefix.as_str()),
            ("calls", "rst")
        );
        assert_eq!(config.bus.webhooks[0].name, "crm");
        assert_eq!(config.bus.webhooks[0].secret.0, "k3y");
        assert_eq!(config.bus.outbox_max_bytes, 1_000_000);
        assert!(
            !format!("{config:?}").contains("k3y"),
            "secrets stay out of Debug"
        );

        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            settings: Settings,
        }
        let flags = <Cli as clap::Parser>::try_parse_from([
            "udp_server",
            "--nats-subject-prefix",
            "x",
            "--webhook-url",
            "http://127.0.0.1:1/",
            "--webhook-secret-file",
            secret.to_str().unwrap(),
        ])
        .unwrap()
        .settings;
        let config = flags.over(file).resolve().unwrap();
        assert_eq!(config.bus.nats.unwrap().subject_prefix, "x");
        assert_eq!(config.bus.webhooks.len(), 2);
        assert_eq!(config.bus.webhooks[1].name, "webhook-2");

        for bad in [
            "[nats]\nsubject-prefix = \"x\"",
            "[nats]\nurl = \"nats://h\"\nsubject-prefix = \"a.*\"",
            "[amqp]\nurl = \"amqp://h\"\nurl-file = \"/f\"",
            "webhook-url = \"http://h/\"",
        ] {
            assert!(Settings::parse(bad).unwrap().resolve().is_err(), "{bad}");
        }
        assert!(Settings::parse("[nats]\nurll = \"nats://h\"").is_err());
    }

    #[test]
    fn taps_are_strings_or_tables_and_flags_replace_them() {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("tap.secret");
        std::fs::write(&secret_file, "s3cret\n").unwrap();
        let file = Settings::parse(&format!(
            r#"
            tap-secret-file = "{}"
            tap-discovery = "10.0.0.255:9530"
            tap-poll-interval = 2
            tap = [
                "10.0.0.7",
                "name=iptap-giga-1",
                {{ address = "[fd00::7]:9999", secret = "own", networks = ["10.1.0.0/16"], numbers = ["1001*"] }},
            ]
            "#,
            secret_file.display()
        ))
        .unwrap();
        let config = file.clone().resolve().unwrap();
        let links = &config.taps.links;
        assert_eq!(links.len(), 3);
        assert_eq!(links[0].target, TapTarget::Address("10.0.0.7".into()));
        assert_eq!(
            links[0].secret,
            Secret("s3cret".into()),
            "the shared file, newline cut"
        );
        assert_eq!(links[1].target, TapTarget::Name("iptap-giga-1".into()));
        assert_eq!(links[2].secret, Secret("own".into()));
        assert_eq!(links[2].capture.numbers, Some(vec!["1001*".to_owned()]));
        assert_eq!(links[2].capture.networks.as_ref().map(Vec::len), Some(1));
        assert_eq!(links[0].capture.networks, None, "left as the tap has it");
        assert_eq!(config.taps.discovery, "10.0.0.255:9530".parse().unwrap());
        assert_eq!(config.taps.poll_interval, Duration::from_secs(2));

        let flags = Settings {
            tap: vec!["10.0.0.8:9531".parse().unwrap()],
            ..Settings::default()
        };
        let config = flags.over(file).resolve().unwrap();
        assert_eq!(config.taps.links.len(), 1);
        assert_eq!(config.taps.links[0].secret, Secret("s3cret".into()));
    }

    #[test]
    fn a_tap_without_a_secret_or_with_unknown_keys_is_refused() {
        let error = Settings::parse(r#"tap = ["10.0.0.7"]"#)
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(format!("{error:#}").contains("no secret"), "{error:#}");
        let error = Settings::parse("tap-secret-file = \"/nonexistent/x\"\ntap = [\"h\"]")
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(format!("{error:#}").contains("/nonexistent/x"), "{error:#}");
        assert!(Settings::parse(r#"tap = [{ address = "h", secrte = "x" }]"#).is_err());
        assert!(Settings::parse(r#"tap = [{ address = "h", name = "n" }]"#).is_err());
        assert!(Settings::parse(r#"tap = [""]"#).is_err());
        assert!("name=".parse::<TapSpec>().is_err());
    }
}
