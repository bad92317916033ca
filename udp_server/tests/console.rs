//! The recording console in a real browser: Debian's chromium, headless,
//! driven over WebDriver (chromedriver) with fantoccini. Needs `chromium` and
//! `chromium-driver` (`scripts/setup.sh --test` installs them).
//!
//! One walk through every page, as an operator would: a wrong token sees
//! nothing; signed in, a call appears live, its meters move, listening to it
//! plays non-silent audio through the page's own analyser; ended, it is found
//! by the search, its waveform draws, and its files download byte for byte.
//! Screenshots of each page go to `docs/console/`.

mod common;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use rst_proto::Direction;
use serde_json::json;
use udp_server::Settings;

const TOKEN: &str = "console-test-token-0123456789";
/// Generous: the machine is shared with other builds.
const DEADLINE: Duration = Duration::from_secs(90);

/// chromedriver on a free port, killed (with its browsers) on drop.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: dropping kills chromium with it.
            .process_group(0)
            .spawn()
            .expect("chromedriver runs: scripts/setup.sh --test installs chromium-driver");
        let deadline = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver {
            child,
            port,
            _profile: tempfile::tempdir().unwrap(),
        }
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--autoplay-policy=no-user-gesture-required",
                    "--window-size=1400,1000",
                    format!("--user-data-dir={}", self._profile.path().display()),
                ],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test started.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` with headers: the status.
fn status_of(addr: SocketAddr, path: &str, headers: &str) -> u16 {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: rst\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Runs `script` until it returns true, or fails after [`DEADLINE`].
async fn until(browser: &Client, what: &str, script: &str) -> Duration {
    let started = Instant::now();
    loop {
        let value = browser.execute(script, vec![]).await.unwrap();
        if value.as_bool() == Some(true) {
            return started.elapsed();
        }
        assert!(started.elapsed() < DEADLINE, "{what}: never true: {script}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// A call in real time: a tone each way in 20 ms µ-law frames until `stop`.
fn call(addr: SocketAddr, uuid: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut sender = Sender::new(addr);
        sender.inv(&uuid, "+4930111222", "+4940333444");
        let r = tone(440.0, 12000.0, 8000, 1.0);
        let w = tone(660.0, 8000.0, 8000, 1.0);
        let started = Instant::now();
        let mut frame = 0usize;
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(240) {
            let at = (frame * 160) % r.len();
            let ulaw = |s: &[i16]| -> Vec<u8> {
                s.iter().map(|&x| rst_codec::linear_to_ulaw(x)).collect()
            };
            sender.data(&uuid, Direction::Read, 0, &ulaw(&r[at..at + 160]));
            sender.data(&uuid, Direction::Write, 0, &ulaw(&w[at..at + 160]));
            if frame == 25 {
                sender.send_raw(format!("DTMF:{uuid}:R:1:5:120").as_bytes());
            }
            frame += 1;
            let next = started + Duration::from_millis(20 * frame as u64);
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        sender.bye(&uuid);
    })
}

/// The metadata feed's events, read as they come by a thread.
fn feed_events(addr: SocketAddr) -> Arc<std::sync::Mutex<Vec<serde_json::Value>>> {
    let deadline = Instant::now() + DEADLINE;
    let stream = loop {
        match std::net::TcpStream::connect(addr) {
            Ok(stream) => break stream,
            Err(error) => assert!(Instant::now() < deadline, "no feed at {addr}: {error}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = events.clone();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Ok(event) = serde_json::from_str(&line) {
                sink.lock().unwrap().push(event);
            }
        }
    });
    events
}

/// The page's fetch of `url`, as base64.
async fn fetched(browser: &Client, url: &str) -> Vec<u8> {
    let script = r#"
        const [url, done] = arguments;
        fetch(url).then((r) => r.arrayBuffer()).then((buffer) => {
            const bytes = new Uint8Array(buffer);
            let text = '';
            for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
            done(btoa(text));
        }, (error) => done('error: ' + error));
    "#;
    let value = browser
        .execute_async(script, vec![json!(url)])
        .await
        .unwrap();
    base64::engine::general_purpose::STANDARD
        .decode(value.as_str().unwrap())
        .unwrap_or_else(|_| panic!("the page fetched {url}: {value}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("http.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let tap_secret = secrets.path().join("tap.secret");
    std::fs::write(&tap_secret, "tap-secret-0123456789abcdef\n").unwrap();
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let feed = probe.local_addr().unwrap();
    drop(probe);
    let receiver = Receiver::with(Settings {
        http: Some("127.0.0.1:0".parse().unwrap()),
        http_token_file: Some(token_file),
        feed: Some(feed),
        // A tap nobody answers at: the taps page shows it down.
        tap: vec!["127.0.0.1:9".parse().unwrap()],
        tap_secret_file: Some(tap_secret),
        ..Settings::default()
    });
    let http = receiver.http_addr().unwrap();
    let feed = feed_events(feed);
    let base = format!("http://{http}");
    let driver = Driver::start();
    let browser = driver.browser().await;

    // Nothing without signing in; a wrong token is refused.
    for path in [
        "/console/api/recordings",
        "/console/api/live",
        "/api/calls",
        "/console/console.js",
    ] {
        assert_eq!(status_of(http, path, ""), 401, "{path}");
        assert_eq!(
            status_of(
                http,
                path,
                "Authorization: Bearer wrong\r\nCookie: rst_session=forged\r\n"
            ),
            401,
            "{path}"
        );
    }
    browser.goto(&format!("{base}/console/")).await.unwrap();
    let token = browser
        .wait()
        .at_most(DEADLINE)
        .for_element(Locator::Id("token"))
        .await
        .unwrap();
    screenshot(&browser, "login").await;
    token.send_keys("not-the-token").await.unwrap();
    browser
        .find(Locator::Id("signin"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .at_most(DEADLINE)
        .for_element(Locator::Id("refused"))
        .await
        .unwrap();
    assert!(
        browser.find(Locator::Id("calls")).await.is_err(),
        "a wrong token sees no calls"
    );

    // Signed in.
    let token = browser.find(Locator::Id("token")).await.unwrap();
    token.send_keys(TOKEN).await.unwrap();
    browser
        .find(Locator::Id("signin"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .at_most(DEADLINE)
        .for_element(Locator::Id("calls"))
        .await
        .unwrap();
    until(
        &browser,
        "the live view connects",
        "return document.querySelector('#status').textContent.startsWith('live');",
    )
    .await;

    // A call appears, its meters move.
    let uuid = uuid(1601);
    let stop = Arc::new(AtomicBool::new(false));
    let caller = call(receiver.addr, uuid.clone(), stop.clone());
    let row = format!("return !!document.querySelector('#calls tr[data-uuid=\"{uuid}\"]');");
    let appeared = until(&browser, "the call appears", &row).await;
    eprintln!("the call appeared in the live table after {appeared:?} (goal: within a second)");
    until(
        &browser,
        "the meters move",
        &format!("const p = window.rstConsole.meterPeaks('{uuid}'); return !!p && p.R > 0.05 && p.W > 0.03;"),
    )
    .await;
    until(
        &browser,
        "the DTMF key shows",
        &format!("return document.querySelector('#calls tr[data-uuid=\"{uuid}\"]').cells[7].textContent.includes('5');"),
    )
    .await;
    screenshot(&browser, "live").await;

    // Listen-in: non-silent audio through the page's analyser.
    browser
        .find(Locator::Css(&format!(
            "#calls tr[data-uuid=\"{uuid}\"] button.listen-both"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &browser,
        "listen-in hears the call",
        "return window.rstConsole.listenLevel() > 0.02;",
    )
    .await;
    screenshot(&browser, "listen").await;
    browser
        .execute("window.rstConsole.stopListening();", vec![])
        .await
        .unwrap();

    // The call ends, and is found by the search.
    stop.store(true, Ordering::Relaxed);
    caller.join().unwrap();
    until(
        &browser,
        "the call leaves the live table",
        &format!("return !document.querySelector('#calls tr[data-uuid=\"{uuid}\"]');"),
    )
    .await;
    let records = receiver.wait_records(1);
    let record = &records[0];
    browser
        .goto(&format!("{base}/console/#recordings"))
        .await
        .unwrap();
    until(
        &browser,
        "the search finds the call",
        &format!(
            "document.querySelector('#search [name=number]').value = '40333'; window.rstConsole.search(); \
             return !!document.querySelector('#results tr[data-uuid=\"{uuid}\"]');"
        ),
    )
    .await;
    // Clicked from the page itself: each poll above started a search whose
    // results may replace the row between a WebDriver find and its click
    // (a stale element).
    until(
        &browser,
        "the call's row is clicked",
        &format!(
            "const row = document.querySelector('#results tr[data-uuid=\"{uuid}\"]'); \
             if (!row) return false; row.click(); return true;"
        ),
    )
    .await;
    until(
        &browser,
        "the waveform draws",
        "return window.rstConsole.waveformDrawn() && window.rstConsole.waveformInk() > 1000;",
    )
    .await;
    screenshot(&browser, "recordings").await;

    // Downloads are the files on disk, byte for byte.
    let files: [(&str, PathBuf); 4] = [
        ("json", path_of(record, "/record")),
        ("stereo", path_of(record, "/stereo")),
        ("R", path_of(record, "/directions/R/wav/0")),
        ("W", path_of(record, "/directions/W/wav/0")),
    ];
    for (kind, path) in files {
        let bytes = fetched(
            &browser,
            &format!("/console/api/recordings/{uuid}/files/{kind}"),
        )
        .await;
        assert!(
            bytes == std::fs::read(&path).unwrap(),
            "{kind} downloads as {}",
            path.display()
        );
    }
    // Only what a record names: no path from the client.
    for path in [
        format!("/console/api/recordings/{uuid}/files/..%2F..%2Fetc%2Fpasswd"),
        "/console/api/recordings/..%2F..%2Fetc%2Fpasswd/files/json".to_owned(),
    ] {
        let status = browser
            .execute_async(
                "const [u, done] = arguments; fetch(u).then((r) => done(r.status));",
                vec![json!(path)],
            )
            .await
            .unwrap();
        assert_eq!(status, json!(404), "{path}");
    }

    // Who listened and downloaded, and when, on the metadata feed.
    let logged = |event: &str, file: Option<&str>| {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let events = feed.lock().unwrap().clone();
            if let Some(found) = events.iter().find(|e| {
                e["event"] == event
                    && e["uuid"] == uuid.as_str()
                    && file.map_or(true, |f| e["file"] == f)
            }) {
                return found.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {event} on the feed: {events:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    for (event, file) in [
        ("listen_start", None),
        ("download", Some("stereo")),
        ("download", Some("json")),
    ] {
        let found = logged(event, file);
        let who = found["listener"].as_str().unwrap();
        assert!(
            who.starts_with("session ") && who.contains(" from 127.0.0.1:"),
            "{found}"
        );
        assert!(found["time"].is_string(), "{found}");
    }
    browser
        .goto(&format!("{base}/console/#taps"))
        .await
        .unwrap();
    browser
        .wait()
        .at_most(DEADLINE)
        .for_element(Locator::Css("#taps tbody tr"))
        .await
        .unwrap();
    until(
        &browser,
        "the tap shows down",
        "const row = document.querySelector('#taps tbody tr'); return !!row && row.cells[0].textContent.includes('127.0.0.1:9') && row.cells[1].textContent === 'down';",
    )
    .await;
    screenshot(&browser, "taps").await;

    // Signed out, the session opens nothing.
    browser.goto(&format!("{base}/console/")).await.unwrap();
    let cookie = browser.get_named_cookie("rst_session").await.unwrap();
    let session = format!("Cookie: rst_session={}\r\n", cookie.value());
    assert_eq!(status_of(http, "/console/api/recordings", &session), 200);
    assert_eq!(status_of(http, "/api/calls", &session), 200);
    browser
        .find(Locator::Css("header form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .at_most(DEADLINE)
        .for_element(Locator::Id("token"))
        .await
        .unwrap();
    assert_eq!(status_of(http, "/console/api/recordings", &session), 401);
    browser.close().await.unwrap();
}
