//! Arguments of the `rst` application and the `uuid_rst` / `rst_stop` APIs.

use std::fmt;

/// Where a stream goes; either part may be left to the configured default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub host: Option<String>,
    pub port: Option<u16>,
}

impl Target {
    pub fn resolve(&self, default_host: &str, default_port: u16) -> (String, u16) {
        (
            self.host.clone().unwrap_or_else(|| default_host.to_owned()),
            self.port.unwrap_or(default_port),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError(pub String);

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `rst [host] [port]`. Quotes around the whole (from
/// `execute_on_answer='rst host port'`) are dropped.
pub fn parse_app(data: &str) -> Result<Target, ArgError> {
    let words: Vec<&str> = unquote(data).split_whitespace().collect();
    match words.as_slice() {
        [] => Ok(Target::default()),
        [host] => Ok(Target {
            host: Some((*host).to_owned()),
            port: None,
        }),
        [host, port] => Ok(Target {
            host: Some((*host).to_owned()),
            port: Some(parse_port(port)?),
        }),
        _ => Err(ArgError(format!(
            "too many arguments {data:?}; usage: {APP_SYNTAX}"
        ))),
    }
}

/// What `uuid_rst` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiCommand {
    Start { uuid: String, target: Target },
    Stop { uuid: String },
}

pub const APP_SYNTAX: &str = "rst [host] [port]";
pub const UUID_RST_SYNTAX: &str = "<uuid> [host] [port] | <uuid> stop";
pub const RST_STOP_SYNTAX: &str = "<uuid>";

/// `uuid_rst <uuid> [host] [port]` or `uuid_rst <uuid> stop`.
pub fn parse_uuid_rst(cmd: &str) -> Result<ApiCommand, ArgError> {
    let words: Vec<&str> = unquote(cmd).split_whitespace().collect();
    let usage = || ArgError(format!("usage: uuid_rst {UUID_RST_SYNTAX}"));
    match words.as_slice() {
        [] => Err(usage()),
        [uuid, "stop"] => Ok(ApiCommand::Stop {
            uuid: (*uuid).to_owned(),
        }),
        [uuid, rest @ ..] if rest.len() <= 2 => {
            let target = parse_app(&rest.join(" "))?;
            Ok(ApiCommand::Start {
                uuid: (*uuid).to_owned(),
                target,
            })
        }
        _ => Err(usage()),
    }
}

/// `rst_stop <uuid>` (the original's API).
pub fn parse_rst_stop(cmd: &str) -> Result<String, ArgError> {
    match unquote(cmd)
        .split_whitespace()
        .collect::<Vec<_>>()
        .as_slice()
    {
        [uuid] => Ok((*uuid).to_owned()),
        _ => Err(ArgError(format!("usage: rst_stop {RST_STOP_SYNTAX}"))),
    }
}

fn parse_port(text: &str) -> Result<u16, ArgError> {
    text.parse()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| ArgError(format!("port {text:?} is not a number from 1 to 65535")))
}

fn unquote(text: &str) -> &str {
    text.trim().trim_matches(|c| c == '\'' || c == '"').trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_application_takes_host_and_port_with_or_without_quotes() {
        let expected = Target {
            host: Some("10.0.0.9".into()),
            port: Some(9600),
        };
        assert_eq!(parse_app("10.0.0.9 9600"), Ok(expected.clone()));
        assert_eq!(parse_app("'10.0.0.9 9600'"), Ok(expected.clone()));
        // What FreeSWITCH passes to an app named 'rst: the closing quote only.
        assert_eq!(parse_app("10.0.0.9 9600'"), Ok(expected));
        assert_eq!(parse_app(""), Ok(Target::default()));
        assert_eq!(
            parse_app("10.0.0.9"),
            Ok(Target {
                host: Some("10.0.0.9".into()),
                port: None
            })
        );
        assert!(parse_app("10.0.0.9 http").is_err());
        assert!(parse_app("a b c").is_err());
    }

    #[test]
    fn uuid_rst_starts_and_stops() {
        assert_eq!(
            parse_uuid_rst("abc 10.0.0.9 9600"),
            Ok(ApiCommand::Start {
                uuid: "abc".into(),
                target: Target {
                    host: Some("10.0.0.9".into()),
                    port: Some(9600)
                }
            })
        );
        assert_eq!(
            parse_uuid_rst("abc"),
            Ok(ApiCommand::Start {
                uuid: "abc".into(),
                target: Target::default()
            })
        );
        assert_eq!(
            parse_uuid_rst("abc stop"),
            Ok(ApiCommand::Stop { uuid: "abc".into() })
        );
        assert!(parse_uuid_rst("").is_err());
        assert!(parse_uuid_rst("abc 1 2 3").is_err());
        assert_eq!(parse_rst_stop(" abc "), Ok("abc".into()));
        assert!(parse_rst_stop("").is_err());
    }
}
