//! A WebSocket consumer on 127.0.0.1 (tokio-tungstenite, optionally over
//! rustls) that keeps every message of every connection: the bot or speech
//! service the receiver streams to, in the tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tokio_tungstenite::tungstenite::Message;

/// One WebSocket connection as the consumer saw it.
#[derive(Debug, Default, Clone)]
pub struct Connection {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub texts: Vec<serde_json::Value>,
    pub binaries: Vec<Vec<u8>>,
    /// The connection ended (the receiver closed it, or it broke).
    pub ended: bool,
}

/// How the consumer behaves.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Close the first connection after this many media messages, then stop
    /// listening for `away` before listening again.
    pub close_after_media: Option<usize>,
    pub away: Duration,
    /// Accept, then never read (and keep the receive buffer tiny).
    pub never_read: bool,
}

/// A WebSocket server on 127.0.0.1 playing a bot, on a runtime of its own.
pub struct Consumer {
    pub addr: SocketAddr,
    connections: Arc<Mutex<Vec<Connection>>>,
}

impl Consumer {
    pub fn start(behaviour: Behaviour) -> Consumer {
        Consumer::start_tls(behaviour, None)
    }

    pub fn start_tls(behaviour: Behaviour, tls: Option<Arc<rustls::ServerConfig>>) -> Consumer {
        let connections: Arc<Mutex<Vec<Connection>>> = Arc::default();
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if behaviour.never_read {
            // A tiny window from the start: the receiver meets back-pressure.
            socket.set_recv_buffer_size(4096).unwrap();
        }
        socket.set_reuse_address(true).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        socket.listen(16).unwrap();
        let listener: std::net::TcpListener = socket.into();
        let addr = listener.local_addr().unwrap();
        let shared = connections.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(serve(listener, addr, behaviour, tls, shared));
        });
        Consumer { addr, connections }
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}/media", self.addr.port())
    }

    pub fn connections(&self) -> Vec<Connection> {
        self.connections.lock().unwrap().clone()
    }

    /// Waits until `count` connections have ended.
    pub fn wait_ended(&self, count: usize) -> Vec<Connection> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let connections = self.connections();
            if connections.iter().filter(|c| c.ended).count() >= count {
                return connections;
            }
            assert!(
                Instant::now() < deadline,
                "{count} connections did not end: {:#?}",
                connections
                    .iter()
                    .map(|c| (c.texts.len(), c.ended))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    addr: SocketAddr,
    behaviour: Behaviour,
    tls: Option<Arc<rustls::ServerConfig>>,
    connections: Arc<Mutex<Vec<Connection>>>,
) {
    listener.set_nonblocking(true).unwrap();
    let mut listener = Some(tokio::net::TcpListener::from_std(listener).unwrap());
    let mut first = true;
    loop {
        let Some(bound) = &listener else {
            tokio::time::sleep(behaviour.away).await;
            listener = Some(tokio::net::TcpListener::bind(addr).await.unwrap());
            continue;
        };
        let (tcp, _) = bound.accept().await.unwrap();
        let close_after = if first {
            behaviour.close_after_media
        } else {
            None
        };
        first = false;
        let index = {
            let mut all = connections.lock().unwrap();
            all.push(Connection::default());
            all.len() - 1
        };
        let task = tokio::spawn(session(
            tcp,
            tls.clone(),
            close_after,
            behaviour.never_read,
            index,
            connections.clone(),
        ));
        if close_after.is_some() {
            // Away: the session closes, nobody listens for a while.
            let _ = task.await;
            listener = None;
        }
    }
}

async fn session(
    tcp: tokio::net::TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    close_after_media: Option<usize>,
    never_read: bool,
    index: usize,
    connections: Arc<Mutex<Vec<Connection>>>,
) {
    let stream: Box<dyn AsyncStream> = match tls {
        Some(config) => match tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
            Ok(stream) => Box::new(stream),
            Err(_) => {
                connections.lock().unwrap()[index].ended = true;
                return;
            }
        },
        None => Box::new(tcp),
    };
    let record = connections.clone();
    // The signature tungstenite's handshake callback has.
    #[allow(clippy::result_large_err)]
    let callback = move |request: &tokio_tungstenite::tungstenite::handshake::server::Request,
                         response| {
        let mut all = record.lock().unwrap();
        all[index].path = request.uri().path().to_owned();
        for (name, value) in request.headers() {
            all[index].headers.insert(
                name.as_str().to_owned(),
                value.to_str().unwrap_or("").to_owned(),
            );
        }
        Ok(response)
    };
    let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        connections.lock().unwrap()[index].ended = true;
        return;
    };
    if never_read {
        // Holds the connection open without reading, until the receiver gives up.
        tokio::time::sleep(Duration::from_secs(600)).await;
        return;
    }
    let mut media = 0;
    let mut closing = false;
    while let Some(message) = socket.next().await {
        let Ok(message) = message else { break };
        if matches!(message, Message::Close(_)) {
            break;
        }
        {
            let mut all = connections.lock().unwrap();
            match message {
                Message::Text(text) => {
                    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                    if value["event"] == "media" {
                        media += 1;
                    }
                    all[index].texts.push(value);
                }
                Message::Binary(bytes) => all[index].binaries.push(bytes.to_vec()),
                _ => {}
            }
        }
        if !closing && close_after_media.is_some_and(|n| media >= n) {
            // Goes away politely, and takes what was already on its way.
            closing = true;
            let _ = socket.close(None).await;
        }
    }
    connections.lock().unwrap()[index].ended = true;
}

trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AsyncStream for T {}
