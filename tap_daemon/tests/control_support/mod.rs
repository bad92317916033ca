//! Shared by the control-plane tests: a real receiver, an in-process tap
//! control plane, and a line-speaking client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tap_daemon::config::Settings;
use tap_daemon::control::{self, ControlConfig};

pub fn captures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/captures")
}

/// A real receiver (udp_server) on `listen`. `before` runs first on a
/// thread that then starts it, so that a namespace it enters is the
/// receiver's too (threads inherit their creator's network namespace).
pub struct Receiver {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    /// Stops (as SIGTERM would) when dropped.
    pub running: udp_server::Running,
}

impl Receiver {
    pub fn start(listen: SocketAddr, before: impl FnOnce() + Send + 'static) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let settings = udp_server::Settings {
            listen: Some(listen),
            record_dir: Some(dir.path().to_owned()),
            rtp_ports: Some("41000-41999".parse().unwrap()),
            ..udp_server::Settings::default()
        };
        let config = settings.resolve().unwrap();
        let running = std::thread::spawn(move || {
            before();
            udp_server::Running::start(config)
        })
        .join()
        .unwrap()
        .expect("the receiver starts");
        Receiver {
            addr: running.addr(),
            dir,
            running,
        }
    }

    /// The call records written so far.
    pub fn records(&self) -> Vec<Value> {
        records_in(self.dir.path())
    }

    /// Waits (bounded) until `count` records exist.
    pub fn wait_records(&self, count: usize, within: Duration) -> Vec<Value> {
        wait_records_in(self.dir.path(), count, within)
    }
}

/// The call records (`*.json`) written so far under a record folder.
pub fn records_in(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for day in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for file in std::fs::read_dir(day.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = file.path();
            if path.extension().is_some_and(|e| e == "json") {
                // A record being renamed into place is read next time.
                if let Ok(text) = std::fs::read_to_string(&path) {
                    if let Ok(value) = serde_json::from_str(&text) {
                        out.push(value);
                    }
                }
            }
        }
    }
    out
}

/// Waits (bounded) until `count` records exist under `dir`.
pub fn wait_records_in(dir: &Path, count: usize, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let records = records_in(dir);
        if records.len() >= count || Instant::now() > deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tap's control plane in this process, on loopback ports chosen by the
/// system.
pub struct Tap {
    pub control: SocketAddr,
    pub discovery: SocketAddr,
    shutdown: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

pub const SECRET: &str = "correct horse battery staple";

impl Tap {
    /// `settings` gets the secret and loopback addresses unless it has them.
    pub fn start(mut settings: Settings) -> Tap {
        settings.secret.get_or_insert_with(|| SECRET.to_owned());
        settings
            .control_listen
            .get_or_insert("127.0.0.1:0".parse().unwrap());
        settings
            .discovery_listen
            .get_or_insert("0.0.0.0:0".parse().unwrap());
        settings.name.get_or_insert_with(|| "test-tap".to_owned());
        let config = ControlConfig::from_settings(&settings).expect("a secret");
        let bound = control::bind(&config).unwrap();
        let control = bound.control.local_addr().unwrap();
        let discovery = bound.discovery.as_ref().unwrap().local_addr().unwrap();
        let shutdown = Arc::new(AtomicBool::new(false));
        let thread = {
            let shutdown = shutdown.clone();
            std::thread::spawn(move || control::serve(bound, config, &shutdown))
        };
        Tap {
            control,
            discovery,
            shutdown,
            thread: Some(thread),
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One control connection, speaking lines.
pub struct Client {
    reader: BufReader<TcpStream>,
    pub stream: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        }
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next response line, or `None` when the tap closed the connection.
    pub fn read(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("a JSON response line")),
        }
    }

    /// Sends one request line and reads its response.
    pub fn ask(&mut self, request: &str) -> Value {
        self.send(format!("{request}\n").as_bytes());
        self.read().expect("a response")
    }

    pub fn hello(&mut self, secret: &str) -> Value {
        self.ask(&format!(
            r#"{{"cmd":"hello","version":1,"secret":{}}}"#,
            Value::from(secret)
        ))
    }
}

/// Asserts `response` is ok and returns it.
#[track_caller]
pub fn ok(response: Value) -> Value {
    assert_eq!(response["ok"], true, "{response}");
    response
}

/// Asserts `response` is a refusal with `code`; returns its error sentence.
#[track_caller]
pub fn refused(response: &Value, code: &str) -> String {
    assert_eq!(response["ok"], false, "{response}");
    assert_eq!(response["code"], code, "{response}");
    response["error"].as_str().unwrap().to_owned()
}
