//! A WebSocket consumer on 127.0.0.1 (tokio-tungstenite, optionally over
//! rustls) that keeps every message of every connection: the bot or speech
//! service the receiver streams to, in the tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
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
    /// What the test has the consumer send on this connection.
    pub outbox: Option<tokio::sync::mpsc::UnboundedSender<Message>>,
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

    /// Has connection `index` send `messages` (the bot speaking).
    pub fn send(&self, index: usize, messages: impl IntoIterator<Item = Message>) {
        let connections = self.connections.lock().unwrap();
        let outbox = connections[index]
            .outbox
            .as_ref()
            .expect("the connection is open");
        for message in messages {
            outbox.send(message).unwrap();
        }
    }

    /// Waits until connection `index` got a text message that `wanted`
    /// accepts, and returns it.
    pub fn wait_text(
        &self,
        index: usize,
        what: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(text) = self.connections()[index].texts.iter().find(|t| wanted(t)) {
                return text.clone();
            }
            assert!(Instant::now() < deadline, "{what} never came");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `count` connections are open and have said something.
    pub fn wait_open(&self, count: usize) -> Vec<Connection> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let connections = self.connections();
            let open = connections
                .iter()
                .filter(|c| c.outbox.is_some() && (!c.texts.is_empty() || !c.binaries.is_empty()))
                .count();
            if open >= count {
                return connections;
            }
            assert!(
                Instant::now() < deadline,
                "{count} connections did not open"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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
    let (outbox, mut to_send) = tokio::sync::mpsc::unbounded_channel();
    connections.lock().unwrap()[index].outbox = Some(outbox);
    let mut media = 0;
    let mut closing = false;
    loop {
        let message = tokio::select! {
            message = socket.next() => message,
            Some(reply) = to_send.recv() => {
                if socket.send(reply).await.is_err() {
                    break;
                }
                continue;
            }
        };
        let Some(Ok(message)) = message else { break };
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
