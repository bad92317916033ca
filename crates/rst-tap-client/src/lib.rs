//! The client side of the tap control plane (the messages are
//! [`rst_control`]'s), over blocking std sockets: find taps by broadcast
//! ([`discover`]) and talk to one ([`Connection`]). `tapctl` and the
//! receiver's tap links (`udp_server`) are thin shells over it.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use rst_control::control::{Failure, MessageError, Reply, Request, Response, Secret};
use rst_control::discovery::{Nonce, Reply as Here, Request as Who};
use rst_control::line::MAX_LINE;
use thiserror::Error;

/// Why talking to a tap failed.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot resolve {tap:?}: {reason}")]
    Resolve { tap: String, reason: String },
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connection to the tap failed: {0}")]
    Io(#[from] io::Error),
    #[error("the tap closed the connection")]
    Closed,
    #[error("the tap's answer is not understood: {0}")]
    NotAnAnswer(#[from] MessageError),
    #[error("the tap refused: {0}")]
    Refused(#[from] Failure),
}

impl ClientError {
    /// The tap's refusal, when it answered with one.
    pub fn refusal(&self) -> Option<&Failure> {
        match self {
            ClientError::Refused(failure) => Some(failure),
            _ => None,
        }
    }
}

/// A tap's control address from `HOST`, `HOST:PORT`, `IP` or `IP:PORT`
/// (IPv6 with a port in brackets); the port defaults to
/// [`rst_control::CONTROL_PORT`].
pub fn resolve(tap: &str) -> Result<SocketAddr, ClientError> {
    if let Ok(addr) = tap.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = tap.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, rst_control::CONTROL_PORT));
    }
    let with_port = if tap.contains(':') {
        tap.to_owned()
    } else {
        format!("{tap}:{}", rst_control::CONTROL_PORT)
    };
    let failed = |reason: String| ClientError::Resolve {
        tap: tap.to_owned(),
        reason,
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| failed(e.to_string()))?
        .next()
        .ok_or_else(|| failed("no address".to_owned()))
}

/// A shared secret from its file: the whole content but a final line end.
pub fn read_secret(path: &std::path::Path) -> io::Result<Secret> {
    let text = std::fs::read_to_string(path)?;
    Ok(Secret(text.trim_end_matches(['\r', '\n']).to_owned()))
}

/// A tap that answered a discovery request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its answer.
    pub here: Here,
    /// Where its control server listens: the answer's source address with
    /// the control port it names.
    pub control: SocketAddr,
}

/// One line for people: name, id, control address, versions, interfaces.
impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let here = &self.here;
        write!(
            f,
            "{}\tid {}\tcontrol {}\tversion {}\tsoftware {}\tinterfaces {}",
            here.name,
            here.id,
            self.control,
            here.version,
            here.software,
            here.interfaces.join(",")
        )
    }
}

/// Sends one "who is there" to `to` (a broadcast or unicast address and the
/// discovery port) and collects the distinct answers for `wait`.
pub fn discover(to: SocketAddr, wait: Duration) -> io::Result<Vec<Found>> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.set_broadcast(true)?;
    let nonce = Nonce::from_u64(random());
    socket.send_to(&Who::new(nonce.clone()).encode(), to)?;
    let deadline = Instant::now() + wait;
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    let mut buf = vec![0u8; rst_control::discovery::MAX_REPLY + 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        socket.set_read_timeout(Some(left))?;
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(received) => received,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(e),
        };
        // Another client's round, or not a tap: not ours to list.
        let Ok(here) = Here::decode(&buf[..len]) else {
            continue;
        };
        if here.nonce != nonce || !seen.insert((here.id.clone(), from.ip())) {
            continue;
        }
        let control = SocketAddr::new(from.ip(), here.control_port);
        found.push(Found { here, control });
    }
    Ok(found)
}

/// An unpredictable enough nonce: a discovery round only needs to tell its
/// answers from another client's round.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish()
}

/// An authenticated control connection to one tap.
#[derive(Debug)]
pub struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    hello: Reply,
}

impl Connection {
    /// Connects to `addr` and says hello with `secret`; every read and write
    /// waits at most `timeout`. `client` names the caller in the tap's log.
    pub fn open(
        addr: SocketAddr,
        secret: &str,
        client: &str,
        timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|source| ClientError::Connect { addr, source })?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let mut connection = Connection {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            hello: Reply::Close {},
        };
        connection.hello = connection.ask(&Request::Hello {
            version: rst_control::VERSION,
            secret: Secret(secret.to_owned()),
            client: Some(client.to_owned()),
        })?;
        Ok(connection)
    }

    /// The tap's answer to `hello` (its name, id and this connection's role).
    pub fn hello(&self) -> &Reply {
        &self.hello
    }

    /// This end's address: the one the tap sees this host by.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.writer.local_addr()
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.writer.peer_addr()
    }

    /// Sends one request and reads its one answer.
    pub fn ask(&mut self, request: &Request) -> Result<Reply, ClientError> {
        let mut line = request.encode();
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        let mut answer = String::new();
        let read = (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_line(&mut answer)?;
        if read == 0 {
            return Err(ClientError::Closed);
        }
        Ok(Response::decode(answer.trim_end())?.into_result()?)
    }

    /// Says `close` (the tap keeps capturing) and drops the connection.
    pub fn close(mut self) {
        let _ = self.ask(&Request::Close);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tap_address_defaults_to_the_control_port() {
        assert_eq!(
            resolve("10.0.0.7").unwrap(),
            "10.0.0.7:9531".parse().unwrap()
        );
        assert_eq!(
            resolve("10.0.0.7:77").unwrap(),
            "10.0.0.7:77".parse().unwrap()
        );
        assert_eq!(
            resolve("fd00::7").unwrap(),
            "[fd00::7]:9531".parse().unwrap()
        );
        assert_eq!(
            resolve("[fd00::7]:77").unwrap(),
            "[fd00::7]:77".parse().unwrap()
        );
        assert_eq!(resolve("localhost").unwrap().port(), 9531);
        assert!(matches!(
            resolve("no such host.invalid"),
            Err(ClientError::Resolve { .. })
        ));
    }

    #[test]
    fn a_closed_port_is_a_connect_error_naming_it() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let error = Connection::open(addr, "s", "test", Duration::from_secs(2)).unwrap_err();
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
    }

    #[test]
    fn a_peer_that_is_not_a_tap_gives_a_typed_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(stream.try_clone().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert!(line.contains(r#""cmd":"hello""#), "{line}");
            stream.write_all(b"HTTP/1.1 400 Bad Request\r\n").unwrap();
        });
        let error = Connection::open(addr, "s", "test", Duration::from_secs(5)).unwrap_err();
        peer.join().unwrap();
        assert!(matches!(error, ClientError::NotAnAnswer(_)), "{error}");
    }
}
