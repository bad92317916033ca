//! The module's settings, from `rst.conf.xml`'s `<param name=... value=...>`
//! pairs. Sans-IO: [`Settings::from_params`] takes the pairs, the FFI shell
//! walks the XML.

use std::time::Duration;

pub use crate::play::PlayMode;
pub use rst_proto::stream::Mode;

/// Which audio is tapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audio {
    /// The channel's own codec frames, as they cross the wire (the original's way).
    Native,
    /// 16-bit linear frames at the channel's rate, whatever the codec.
    L16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub mode: Mode,
    pub audio: Audio,
    /// First INV/BYE retransmission delay; doubles each time.
    pub retransmit: Duration,
    /// Sends of an INV or BYE before giving up (the first included).
    pub retransmit_tries: u32,
    /// How often a call's INV is sent again once answered, so that a receiver
    /// that restarted mid-call learns the call again; `None`: never.
    pub refresh: Option<Duration>,
    /// RTP mode: frames kept while waiting for the ACK's ports; more are dropped and counted.
    pub rtp_buffer_frames: usize,
    /// Frames queued between the media threads and the sender thread (a frame
    /// over 320 bytes, L16 above 8 kHz, takes a place per 320 bytes).
    pub queue_frames: usize,
    /// The original's debug dump: every datagram sent, in hex, one file per call.
    pub write_hex: bool,
    pub hex_dir: String,
    /// Audio a bot sends back (PLAY from the receiver): mixed into what the
    /// caller hears, instead of it, or not at all (the INV then does not
    /// say `play=1`).
    pub play: Option<PlayMode>,
    /// Several receivers (`receivers`): each call goes to the one its UUID
    /// hashes to and fails over along its order; `None`: `host`/`port` only.
    pub receivers: Option<rst_proto::Pool>,
    /// With several receivers: how long an INV may go unanswered before the
    /// call moves to the next receiver.
    pub failover: Duration,
    /// DATA mode: frames of a direction sent as one datagram (1 to 5). More
    /// costs FreeSWITCH and the receiver fewer datagrams and delays the
    /// audio by up to that many frames less one: for recording, not for
    /// live bots.
    pub frames_per_datagram: u32,
    /// `frames-per-datagram = auto` (the default): [`AUTO_FRAMES`] while
    /// nobody hears the call live, each frame at once while the receiver
    /// says someone does (LIVE).
    pub live: bool,
}

/// Frames per datagram of `frames-per-datagram = auto` while nobody hears a call.
pub const AUTO_FRAMES: u32 = 3;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            host: "127.0.0.1".to_owned(),
            port: rst_proto::DEFAULT_PORT,
            mode: Mode::Data,
            audio: Audio::Native,
            retransmit: Duration::from_millis(200),
            retransmit_tries: 6,
            refresh: Some(Duration::from_secs(10)),
            rtp_buffer_frames: 50,
            queue_frames: 4096,
            write_hex: false,
            hex_dir: "/opt/nway/records".to_owned(),
            play: Some(PlayMode::Mix),
            receivers: None,
            failover: Duration::from_millis(500),
            frames_per_datagram: AUTO_FRAMES,
            live: true,
        }
    }
}

impl Settings {
    /// Reads `<param>` pairs over the defaults. Unknown names and bad values are
    /// reported in the second return value (to be logged) and otherwise ignored,
    /// so a typo never keeps the module from loading.
    pub fn from_params<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> (Settings, Vec<String>) {
        let mut settings = Settings::default();
        let mut problems = Vec::new();
        for (name, value) in params {
            let value = value.trim();
            let mut bad = || {
                problems.push(format!(
                    "rst.conf: {name}={value:?} is not valid; the default is kept"
                ))
            };
            match name {
                "udp-server-ip" | "host" => {
                    if value.is_empty() {
                        bad();
                    } else {
                        settings.host = value.to_owned();
                    }
                }
                "udp-server-port" | "port" => match value.parse() {
                    Ok(port) if port != 0 => settings.port = port,
                    _ => bad(),
                },
                "mode" => match value.to_ascii_lowercase().as_str() {
                    "data" => settings.mode = Mode::Data,
                    "rtp" => settings.mode = Mode::Rtp,
                    _ => bad(),
                },
                "audio" => match value.to_ascii_lowercase().as_str() {
                    "native" => settings.audio = Audio::Native,
                    "l16" => settings.audio = Audio::L16,
                    _ => bad(),
                },
                "retransmit-ms" => match value.parse() {
                    Ok(ms) if (10..=10_000).contains(&ms) => {
                        settings.retransmit = Duration::from_millis(ms)
                    }
                    _ => bad(),
                },
                "retransmit-tries" => match value.parse() {
                    Ok(tries) if (1..=20).contains(&tries) => settings.retransmit_tries = tries,
                    _ => bad(),
                },
                "refresh-ms" => match value.parse() {
                    Ok(0) => settings.refresh = None,
                    Ok(ms) if (100..=3_600_000).contains(&ms) => {
                        settings.refresh = Some(Duration::from_millis(ms))
                    }
                    _ => bad(),
                },
                "rtp-buffer-frames" => match value.parse() {
                    Ok(frames) if frames <= 1000 => settings.rtp_buffer_frames = frames,
                    _ => bad(),
                },
                "queue-frames" => match value.parse() {
                    Ok(frames) if (16..=65536).contains(&frames) => settings.queue_frames = frames,
                    _ => bad(),
                },
                "write-hex" => match parse_bool(value) {
                    Some(on) => settings.write_hex = on,
                    None => bad(),
                },
                "hex-dir" => {
                    if value.is_empty() {
                        bad();
                    } else {
                        settings.hex_dir = value.to_owned();
                    }
                }
                "play-mode" => match value.to_ascii_lowercase().as_str() {
                    "mix" => settings.play = Some(PlayMode::Mix),
                    "replace" => settings.play = Some(PlayMode::Replace),
                    "off" => settings.play = None,
                    _ => bad(),
                },
                "receivers" => match rst_proto::Pool::parse(value) {
                    Ok(pool) => settings.receivers = Some(pool),
                    Err(error) => problems.push(format!(
                        "rst.conf: receivers={value:?}: {error}; host and port are used"
                    )),
                },
                "failover-ms" => match value.parse() {
                    Ok(ms) if (50..=60_000).contains(&ms) => {
                        settings.failover = Duration::from_millis(ms)
                    }
                    _ => bad(),
                },
                "frames-per-datagram" => match value.parse() {
                    Ok(frames) if (1..=5).contains(&frames) => {
                        settings.frames_per_datagram = frames;
                        settings.live = false;
                    }
                    _ if value.eq_ignore_ascii_case("auto") => {
                        settings.frames_per_datagram = AUTO_FRAMES;
                        settings.live = true;
                    }
                    _ => bad(),
                },
                _ => problems.push(format!("rst.conf: unknown parameter {name:?} ignored")),
            }
        }
        (settings, problems)
    }
}

/// FreeSWITCH's notion of true (`switch_true`).
fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" | "enabled" | "active" | "allow" => Some(true),
        "false" | "no" | "off" | "0" | "disabled" | "inactive" | "deny" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receivers_are_a_list_of_addresses_beside_host_and_port() {
        let (settings, problems) = Settings::from_params([
            ("receivers", "127.0.0.1:9527, 127.0.0.1:9528"),
            ("failover-ms", "300"),
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(settings.receivers.unwrap().len(), 2);
        assert_eq!(settings.failover, Duration::from_millis(300));
        let (settings, problems) =
            Settings::from_params([("receivers", "10.0.0.1:9527,rec2"), ("failover-ms", "5")]);
        assert_eq!((settings.receivers, problems.len()), (None, 2));
        assert_eq!(settings.failover, Duration::from_millis(500));
    }

    #[test]
    fn frames_per_datagram_is_1_to_5_or_auto() {
        let auto = (AUTO_FRAMES, true, 0);
        let default = Settings::default();
        assert_eq!((default.frames_per_datagram, default.live, 0), auto);
        for (value, expected) in [("3", (3, false, 0)), ("1", (1, false, 0)), ("AUTO", auto)] {
            let (settings, problems) = Settings::from_params([("frames-per-datagram", value)]);
            let got = (settings.frames_per_datagram, settings.live, problems.len());
            assert_eq!(got, expected, "{value}");
        }
        for bad in ["0", "6", "x"] {
            let (settings, problems) = Settings::from_params([("frames-per-datagram", bad)]);
            let got = (settings.frames_per_datagram, settings.live, problems.len());
            assert_eq!(got, (AUTO_FRAMES, true, 1), "{bad}");
        }
    }

    #[test]
    fn play_mode_is_mix_replace_or_off() {
        assert_eq!(Settings::default().play, Some(PlayMode::Mix));
        for (value, play) in [
            ("replace", Some(PlayMode::Replace)),
            ("OFF", None),
            ("mix", Some(PlayMode::Mix)),
        ] {
            let (settings, problems) = Settings::from_params([("play-mode", value)]);
            assert_eq!(settings.play, play);
            assert!(problems.is_empty());
        }
        let (settings, problems) = Settings::from_params([("play-mode", "loud")]);
        assert_eq!(settings.play, Some(PlayMode::Mix), "the default is kept");
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn no_params_gives_the_original_defaults() {
        let (settings, problems) = Settings::from_params([]);
        assert_eq!((settings.host.as_str(), settings.port), ("127.0.0.1", 9527));
        assert_eq!((settings.mode, settings.audio), (Mode::Data, Audio::Native));
        assert!(problems.is_empty());
    }

    #[test]
    fn the_original_names_keep_working() {
        let (settings, problems) = Settings::from_params([
            ("udp-server-ip", "10.0.0.7"),
            ("udp-server-port", "9600"),
            ("write-hex", "true"),
        ]);
        assert_eq!(
            (settings.host.as_str(), settings.port, settings.write_hex),
            ("10.0.0.7", 9600, true)
        );
        assert!(problems.is_empty());
    }

    #[test]
    fn bad_values_and_unknown_names_are_reported_not_fatal() {
        let (settings, problems) = Settings::from_params([
            ("udp-server-port", "99999"),
            ("mode", "carrier-pigeon"),
            ("colour", "blue"),
            ("audio", "L16"),
            ("mode", "rtp"),
        ]);
        assert_eq!(settings.port, 9527);
        assert_eq!((settings.mode, settings.audio), (Mode::Rtp, Audio::L16));
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn refresh_is_ten_seconds_zero_turns_it_off() {
        assert_eq!(Settings::default().refresh, Some(Duration::from_secs(10)));
        let (settings, problems) = Settings::from_params([("refresh-ms", "0")]);
        assert_eq!((settings.refresh, problems.len()), (None, 0));
        let (settings, problems) = Settings::from_params([("refresh-ms", "2500")]);
        assert_eq!(settings.refresh, Some(Duration::from_millis(2500)));
        assert!(problems.is_empty());
        let (settings, problems) = Settings::from_params([("refresh-ms", "5")]);
        assert_eq!(settings.refresh, Settings::default().refresh);
        assert_eq!(problems.len(), 1);
    }
}
