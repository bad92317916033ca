//! The recording console in a real browser: Debian's chromium, headless,
//! driven over WebDriver (chromedriver) with fantoccini. Needs `chromium` and
//! `chromium-driver` (`scripts/setup.sh --test` installs them).
//!
//! One walk through every page, as an operator would: a wrong token sees
//! nothing; signed in, three calls appear live (DATA from a mod_rst-like
//! sender, DATA from a tap that names itself in its INV, RTP from rst-load
//! with every 50th packet left out), the meters move, the RTP call shows its
//! loss and jitter, the tap's call its tap; listening plays non-silent audio
//! through the page's own analyser; ended, a call is found by the search, its
//! waveform draws, it plays in stereo with a cursor that moves (the page's
//! analysers, one per channel), its files download byte for byte, and the
//! RTP call's waveform marks its loss where the record says it was.
//! Screenshots of each page go to the test's temporary folder under `target/`,
//! or, with `RST_SCREENSHOTS=docs`, to `docs/console/` (the README's pictures;
//! a plain test run leaves the tree as it was).

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
use rst_proto::{Direction, Extensions};
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
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: rst\r\n{headers}Connection: close\r\n\r\n"),
    )
    .0
}

/// Sends `text` as one HTTP request: the status and the whole response.
fn request(addr: SocketAddr, text: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(text.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

/// Runs `script` until it returns true, or fails after [`DEADLINE`].
async fn until(browser: &Client, what: &str, script: &str) -> Duration {
    let started = Instant::now();
    until_some(
        browser,
        what,
        &format!("return ((() => {{ {script} }})()) === true || null;"),
    )
    .await;
    started.elapsed()
}

/// Runs `script` until it returns something other than null (or false), which
/// it gives back; fails after [`DEADLINE`].
async fn until_some(browser: &Client, what: &str, script: &str) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let value = browser.execute(script, vec![]).await.unwrap();
        if !value.is_null() && value != json!(false) {
            return value;
        }
        assert!(started.elapsed() < DEADLINE, "{what}: never true: {script}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Searches the recordings for `number` until the call `uuid` is among the
/// results, and opens it.
async fn open_found(browser: &Client, number: &str, uuid: &str) {
    until(
        browser,
        "the search finds the call",
        &format!(
            "document.querySelector('#search [name=number]').value = '{number}'; window.rstConsole.search(); \
             return !!document.querySelector('#results tr[data-uuid=\"{uuid}\"]');"
        ),
    )
    .await;
    click(browser, &format!("#results tr[data-uuid=\"{uuid}\"]")).await;
}

/// Clicks what `css` selects, again if a search replaced it between finding
/// and clicking (the search results are redrawn as answers come).
async fn click(browser: &Client, css: &str) {
    let started = Instant::now();
    loop {
        let clicked = match browser.find(Locator::Css(css)).await {
            Ok(element) => element.click().await.map(drop),
            Err(error) => Err(error),
        };
        match clicked {
            Ok(()) => return,
            Err(error) => assert!(started.elapsed() < DEADLINE, "cannot click {css}: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    let dir = if std::env::var("RST_SCREENSHOTS").as_deref() == Ok("docs") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("console")
    };
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// A call in real time: a tone each way in 20 ms µ-law frames until `stop`,
/// from `caller` to `callee`, its INV with `extensions`.
fn call(
    addr: SocketAddr,
    uuid: String,
    (caller, callee): (&'static str, &'static str),
    extensions: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut sender = Sender::new(addr);
        sender.inv_with(
            &uuid,
            caller,
            callee,
            Extensions::parse(&extensions).unwrap(),
        );
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
        rtp_ports: Some("25600-25609".parse().unwrap()),
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
    let token = token_field(&browser).await;
    screenshot(&browser, "login").await;
    token.send_keys("not-the-token").await.unwrap();
    click(&browser, "#signin").await;
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
    click(&browser, "#signin").await;
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

    // Three calls: DATA as mod_rst sends it, DATA from a tap that names
    // itself, and RTP from rst-load that loses every 50th packet.
    let uuid = uuid(1601);
    let stop = Arc::new(AtomicBool::new(false));
    let caller = call(
        receiver.addr,
        uuid.clone(),
        ("+4930111222", "+4940333444"),
        String::new(),
        stop.clone(),
    );
    let row = format!("return !!document.querySelector('#calls tr[data-uuid=\"{uuid}\"]');");
    let appeared = until(&browser, "the call appears", &row).await;
    eprintln!("the call appeared in the live table after {appeared:?} (goal: within a second)");
    let tapped_uuid = common::uuid(1602);
    let tapped = call(
        receiver.addr,
        tapped_uuid.clone(),
        ("+4930555666", "+4940777888"),
        rst_proto::ExtensionsBuilder::new()
            .call_id("a84b4c76e66710@pc33.example.com")
            .tap("edge-berlin")
            .build(),
        stop.clone(),
    );
    let load = Arc::new(rst_load::Live::default());
    let rtp_call = {
        let load = load.clone();
        let config = rst_load::Config {
            target: receiver.addr,
            calls: 1,
            // Until `load.stop()`.
            duration: Duration::from_secs(600),
            mode: rst_load::Mode::Rtp,
            drop_every: Some(50),
            ..rst_load::Config::default()
        };
        std::thread::spawn(move || rst_load::run_with(&config, &load).unwrap())
    };
    until(
        &browser,
        "the tap's call shows its tap",
        &format!(
            "const row = document.querySelector('#calls tr[data-uuid=\"{tapped_uuid}\"]'); \
                  return !!row && row.cells[3].textContent === 'tap edge-berlin (data)' \
                  && row.cells[2].textContent === 'a84b4c76e66710@pc33.example.com';"
        ),
    )
    .await;
    // rst-load's call is from 1000 to 500000: loss above 0 % each way, and jitter.
    let rtp_uuid = until_some(
        &browser,
        "the RTP call shows loss and jitter",
        r"const row = [...document.querySelectorAll('#calls tbody tr')].find((r) => r.cells[0].textContent === '1000');
          if (!row || !row.cells[3].textContent.endsWith('(rtp)')) return null;
          const shown = [...row.cells[6].textContent.matchAll(/([RW]) ([\d.]+)% · ([\d.]+) ms/g)];
          return shown.length === 2 && shown.every((m) => parseFloat(m[2]) > 0) ? row.dataset.uuid : null;",
    )
    .await;
    let rtp_uuid = rtp_uuid.as_str().unwrap().to_owned();
    let source_of_first = browser
        .execute(
            &format!("return document.querySelector('#calls tr[data-uuid=\"{uuid}\"]').cells[3].textContent;"),
            vec![],
        )
        .await
        .unwrap();
    assert!(
        source_of_first
            .as_str()
            .unwrap()
            .starts_with("mod_rst 127.0.0.1:"),
        "{source_of_first}"
    );
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
    click(
        &browser,
        &format!("#calls tr[data-uuid=\"{uuid}\"] button.listen-both"),
    )
    .await;
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

    // Away from the live table the page asks for no meters, and the
    // receiver sends none (it stops hearing the calls for it); back, they
    // are metered again.
    browser
        .execute("location.hash = '#recordings';", vec![])
        .await
        .unwrap();
    until(
        &browser,
        "no meters off the live table",
        "return !window.rstConsole.metering() && window.rstConsole.unmeteredCalls() === 3;",
    )
    .await;
    browser
        .execute("location.hash = '#live';", vec![])
        .await
        .unwrap();
    until(
        &browser,
        "meters again on the live table",
        "return window.rstConsole.metering() && window.rstConsole.unmeteredCalls() === 0;",
    )
    .await;

    // The calls end; the first is found by the search.
    stop.store(true, Ordering::Relaxed);
    load.stop();
    caller.join().unwrap();
    tapped.join().unwrap();
    let report = rtp_call.join().unwrap();
    assert_eq!((report.inv_acked, report.bye_acked), (1, 1), "{report}");
    until(
        &browser,
        "the calls leave the live table",
        "return document.querySelectorAll('#calls tbody tr').length === 0;",
    )
    .await;
    let records = receiver.wait_records(3);
    let find = |id: &str| {
        records
            .iter()
            .find(|r| r["uuid"] == id)
            .unwrap_or_else(|| panic!("no record of {id}: {records:?}"))
    };
    let record = find(&uuid);
    assert_eq!(find(&tapped_uuid)["tap"], "edge-berlin");
    assert!(record.get("tap").is_none(), "{record}");
    browser
        .goto(&format!("{base}/console/#recordings"))
        .await
        .unwrap();
    open_found(&browser, "40333", &uuid).await;
    until(
        &browser,
        "the waveform draws",
        "return window.rstConsole.waveformDrawn() && window.rstConsole.waveformInk() > 1000;",
    )
    .await;

    // It plays: two channels, both heard by the page's analysers, the cursor
    // and the time shown moving on.
    click(&browser, "#play").await;
    let first = until_some(
        &browser,
        "playback starts and the cursor is drawn",
        "const p = window.rstConsole.playback(); return p.playing && p.state === 'running' && p.position > 0.2 && p.cursorX > 0 ? p : null;",
    )
    .await;
    assert_eq!(first["channels"], 2, "{first}");
    until(
        &browser,
        "the cursor moves on",
        &format!(
            "const p = window.rstConsole.playback(); return p.playing && p.position > {} + 0.3 && p.cursorX > {} && p.shown !== '{}';",
            first["position"], first["cursorX"], first["shown"].as_str().unwrap()
        ),
    )
    .await;
    until(
        &browser,
        "both channels play",
        "const p = window.rstConsole.playback(); return p.playing && p.levels[0] > 0.05 && p.levels[1] > 0.03;",
    )
    .await;
    screenshot(&browser, "recordings").await;
    click(&browser, "#play").await;
    until(
        &browser,
        "playback stops",
        "return !window.rstConsole.playback().playing;",
    )
    .await;

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

    // The RTP call's recording marks its loss where the record says.
    let rtp_record = find(&rtp_uuid);
    let mut gaps = 0;
    for direction in ["R", "W"] {
        let d = &rtp_record["directions"][direction];
        let lost = d["rtp"]["lost"].as_u64().unwrap();
        assert!(lost > 0, "{d}");
        assert_eq!(d["gaps"]["packets"], lost, "{d}");
        let first = d["gaps"]["first"].as_array().unwrap();
        assert!(!first.is_empty() && first.len() <= 100, "{d}");
        // One packet per gap as sent; fewer gaps if the kernel also dropped a neighbour.
        let count = d["gaps"]["count"].as_u64().unwrap();
        assert!(count >= 1 && count <= lost, "{d}");
        gaps += first.len();
    }
    open_found(&browser, "500000", &rtp_uuid).await;
    // Every gap of the record marked, in time order per direction, each
    // mark red on the canvas.
    let marks = until_some(
        &browser,
        "the loss is marked on the waveform",
        &format!(
            "if (!window.rstConsole.waveformDrawn()) return null; \
             const marks = window.rstConsole.lossMarks(); \
             if (marks.length !== {gaps}) return null; \
             const g = document.querySelector('#waveform').getContext('2d'); \
             const red = marks.every((m) => {{ const [r, gr, b] = g.getImageData(Math.floor(m.x) + 1, m.direction === 'R' ? 2 : 112, 1, 1).data; return r > 150 && gr < 80 && b < 80; }}); \
             return red ? marks : null;"
        ),
    )
    .await;
    let envelope_duration = browser
        .execute_async(
            &format!("const done = arguments[0]; fetch('/console/api/recordings/{rtp_uuid}/envelope?buckets=1000').then((r) => r.json()).then((e) => done(e.duration));"),
            vec![],
        )
        .await
        .unwrap()
        .as_f64()
        .unwrap();
    for direction in ["R", "W"] {
        let xs: Vec<f64> = marks
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["direction"] == direction)
            .map(|m| m["x"].as_f64().unwrap())
            .collect();
        let expected: Vec<f64> = rtp_record["directions"][direction]["gaps"]["first"]
            .as_array()
            .unwrap()
            .iter()
            .map(|gap| gap["offset"].as_f64().unwrap() / envelope_duration * 1000.0)
            .collect();
        assert_eq!(xs.len(), expected.len(), "{direction}: {marks}");
        for (x, want) in xs.iter().zip(&expected) {
            assert!(
                (x - want).abs() < 0.5,
                "{direction}: mark at {x}, gap at {want}"
            );
        }
    }
    screenshot(&browser, "loss").await;

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
    click(&browser, "header form button").await;
    token_field(&browser).await;
    assert_eq!(status_of(http, "/console/api/recordings", &session), 401);

    // Guessing the token: after five wrong ones from an address, its
    // sign-ins are refused unchecked, the right token too, and counted.
    for _ in 0..5 {
        assert_eq!(sign_in(http, "guess").0, 401);
    }
    let (status, response) = sign_in(http, TOKEN);
    assert_eq!(status, 429, "{response}");
    assert!(
        response.contains("Retry-After: ") || response.contains("retry-after: "),
        "{response}"
    );
    token_field(&browser).await.send_keys(TOKEN).await.unwrap();
    click(&browser, "#signin").await;
    let refused = browser
        .wait()
        .at_most(DEADLINE)
        .for_element(Locator::Id("throttled"))
        .await
        .unwrap();
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("Too many wrong tokens"));
    assert!(browser.find(Locator::Id("calls")).await.is_err());
    assert_eq!(
        receiver.counter("rst_console_sign_in_throttled_total"),
        2,
        "the right token and the browser's try"
    );
    browser.close().await.unwrap();
}

/// The token field of the sign-in page, once it shows.
async fn token_field(browser: &Client) -> fantoccini::elements::Element {
    browser
        .wait()
        .at_most(DEADLINE)
        .for_element(Locator::Id("token"))
        .await
        .unwrap()
}

/// Posts `token` to the sign-in form: the status and the whole response.
fn sign_in(addr: SocketAddr, token: &str) -> (u16, String) {
    let body = format!("token={token}");
    request(
        addr,
        &format!(
            "POST /console/login HTTP/1.1\r\nHost: rst\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}
