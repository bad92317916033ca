//! fs-testhost: loads a FreeSWITCH module (mod_rst) the way FreeSWITCH 1.10
//! does, provides every `switch_*` function it imports, and drives simulated
//! calls through it. It reads a script on stdin, one command a line, and
//! answers each with one JSON object on stdout. See README.md.

#[path = "../../src/ffi/types.rs"]
mod types;

mod bench;
mod exports;
mod g711;
mod media;
mod module;
mod state;
mod xml;

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Map, Value};

use state::{host, lock, CodecKind};

fn main() {
    if std::env::var_os("FS_TESTHOST_VERBOSE").is_some() {
        host().verbose.store(true, Ordering::Relaxed);
    }
    module::register_host_thread();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let line = line.trim_end_matches(['\r', '\n']);
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (cmd, rest) = split_word(trimmed);
        if cmd == "quit" || cmd == "exit" {
            break;
        }
        let mut out = Map::new();
        out.insert("cmd".into(), json!(cmd));
        match command(cmd, rest) {
            Ok(Value::Object(fields)) => {
                out.insert("ok".into(), json!(true));
                out.extend(fields);
            }
            Ok(other) => {
                out.insert("ok".into(), json!(true));
                out.insert("result".into(), other);
            }
            Err(error) => {
                out.insert("ok".into(), json!(false));
                out.insert("error".into(), json!(error));
            }
        }
        let fresh = state::new_violations();
        if !fresh.is_empty() {
            out.insert("violations".into(), json!(fresh));
        }
        let _ = writeln!(stdout, "{}", Value::Object(out));
        let _ = stdout.flush();
    }
    quit(&mut stdout);
}

/// Stops every media thread, reports, and leaves without running exit
/// handlers: a module still loaded keeps its threads, which must not race the
/// process's teardown.
fn quit(stdout: &mut std::io::Stdout) -> ! {
    let sessions: Vec<_> = lock(&host().order).clone();
    for session in &sessions {
        session.stop_media.store(true, Ordering::SeqCst);
    }
    for session in &sessions {
        media::join(session);
    }
    module::remove_copy();
    let fresh = state::new_violations();
    let _ = writeln!(
        stdout,
        "{}",
        json!({"cmd": "quit", "ok": true, "module_loaded": module::is_loaded(), "violations": fresh})
    );
    let _ = stdout.flush();
    // SAFETY: _exit ends the process at once; stdout is flushed.
    unsafe { libc::_exit(0) }
}

/// The first word of `text` and the rest with its leading whitespace removed.
fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(i) => (&text[..i], text[i..].trim_start()),
        None => (text, ""),
    }
}

/// `key=value` options.
fn options(words: &str) -> Vec<(String, String)> {
    words
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn option<T: std::str::FromStr>(
    opts: &[(String, String)],
    key: &str,
    default: T,
) -> Result<T, String> {
    match opts.iter().find(|(k, _)| k == key) {
        Some((_, v)) => v.parse().map_err(|_| format!("bad {key}={v}")),
        None => Ok(default),
    }
}

fn session(uuid: &str) -> Result<std::sync::Arc<state::Session>, String> {
    lock(&host().by_uuid)
        .get(uuid)
        .cloned()
        .ok_or_else(|| format!("no session {uuid}"))
}

fn any_session(uuid: &str) -> Result<std::sync::Arc<state::Session>, String> {
    lock(&host().order)
        .iter()
        .rev()
        .find(|s| s.uuid == uuid)
        .cloned()
        .ok_or_else(|| format!("no session {uuid}"))
}

fn command(cmd: &str, rest: &str) -> Result<Value, String> {
    match cmd {
        "load" => {
            let (so, rest) = split_word(rest);
            let (conf, _) = split_word(rest);
            if so.is_empty() || conf.is_empty() {
                return Err("usage: load SO_PATH CONF_DIR".into());
            }
            module::load(Path::new(so), Path::new(conf))
        }
        "unload" => module::unload(),
        "interfaces" => Ok(module::interfaces()),
        "session" => {
            let (uuid, rest) = split_word(rest);
            if uuid.is_empty() {
                return Err("usage: session UUID [codec=PCMU] [rate=8000] [var=value...]".into());
            }
            if lock(&host().by_uuid).contains_key(uuid) {
                return Err(format!("session {uuid} exists"));
            }
            let opts = options(rest);
            let kind_name: String = option(&opts, "codec", "PCMU".to_owned())?;
            let kind = CodecKind::parse(&kind_name).ok_or(format!("unknown codec {kind_name}"))?;
            let rate: u32 = option(&opts, "rate", 8000)?;
            check_codec(kind, rate)?;
            let write_kind = match opts.iter().find(|(k, _)| k == "write_codec") {
                Some((_, name)) => {
                    let write = CodecKind::parse(name).ok_or(format!("unknown codec {name}"))?;
                    check_codec(write, rate)?;
                    Some(write)
                }
                None => None,
            };
            let mut vars: Vec<(String, String)> = vec![
                ("caller_id_number".into(), "0000000000".into()),
                ("caller_id_name".into(), "FreeSWITCH".into()),
                ("destination_number".into(), String::new()),
                ("channel_name".into(), format!("loopback/{uuid}-a")),
            ];
            for (k, v) in opts
                .into_iter()
                .filter(|(k, _)| k != "codec" && k != "rate" && k != "write_codec")
            {
                vars.retain(|(old, _)| *old != k);
                vars.push((k, v));
            }
            let s = state::create_session(uuid, &vars, kind, rate);
            if let Some(write) = write_kind {
                s.set_write_codec(write);
            }
            let write = write_kind.unwrap_or(kind);
            Ok(
                json!({"uuid": s.uuid, "codec": kind.name(), "write_codec": write.name(), "rate": rate}),
            )
        }
        "var" => {
            let (uuid, rest) = split_word(rest);
            let s = session(uuid)?;
            for (k, v) in options(rest) {
                s.set_var(&k, &v);
            }
            Ok(json!({}))
        }
        "app" => {
            let (uuid, rest) = split_word(rest);
            let (name, data) = split_word(rest);
            if name.is_empty() {
                return Err("usage: app UUID NAME [DATA]".into());
            }
            let data = if data.is_empty() { None } else { Some(data) };
            module::run_app(uuid, name, data)
        }
        "api" => {
            let (name, args) = split_word(rest);
            module::run_api(name, Some(args.trim()))
        }
        "api_null" => {
            let (name, _) = split_word(rest);
            module::run_api(name, None)
        }
        "media" => {
            let (uuid, rest) = split_word(rest);
            let (seconds, rest) = split_word(rest);
            let seconds: f64 = seconds.parse().map_err(|_| {
                "usage: media UUID SECONDS [read_hz=1013] [write_hz=487] [amp=8000]"
            })?;
            let opts = options(rest);
            let amp: f64 = option(&opts, "amp", 8000.0)?;
            let spec = media::MediaSpec {
                seconds,
                read_hz: option(&opts, "read_hz", 1013.0)?,
                write_hz: option(&opts, "write_hz", 487.0)?,
                read_amp: option(&opts, "read_amp", amp)?,
                write_amp: option(&opts, "write_amp", amp)?,
            };
            let frames = media::start(session(uuid)?, spec)?;
            Ok(json!({"frames": frames}))
        }
        "codec" => {
            let (uuid, rest) = split_word(rest);
            let (name, rest) = split_word(rest);
            let kind = CodecKind::parse(name).ok_or(format!("unknown codec {name}"))?;
            let opts = options(rest);
            let bare_rate = split_word(rest).0.parse::<u32>().ok();
            let rate: u32 = option(&opts, "rate", bare_rate.unwrap_or(8000))?;
            check_codec(kind, rate)?;
            session(uuid)?.set_codec(kind, rate);
            Ok(json!({"codec": kind.name(), "rate": rate}))
        }
        "wait" => {
            let sessions: Vec<_> = lock(&host().order).clone();
            for s in &sessions {
                media::join(s);
            }
            Ok(json!({}))
        }
        "stop_media" => {
            let s = any_session(split_word(rest).0)?;
            s.stop_media.store(true, Ordering::SeqCst);
            media::join(&s);
            Ok(json!({}))
        }
        "heard" => {
            // What the caller heard so far (after WRITE_REPLACE bugs), as
            // 16-bit samples; `heard UUID clear` forgets them.
            let (uuid, rest) = split_word(rest);
            let s = any_session(uuid)?;
            let mut media = lock(&s.media);
            let samples = media.heard.clone();
            if split_word(rest).0 == "clear" {
                media.heard.clear();
            }
            Ok(json!({"samples": samples}))
        }
        "heard_frames" => {
            // Per frame written: [CLOCK_MONOTONIC ns, first sample, all samples equal].
            let s = any_session(split_word(rest).0)?;
            let media = lock(&s.media);
            Ok(json!({"frames": media.heard_frames}))
        }
        "dtmf" => {
            // A digit the channel receives: FreeSWITCH runs the session's
            // recv_dtmf hooks (switch_core_session_recv_dtmf), on its own thread.
            let (uuid, rest) = split_word(rest);
            let (digit, rest) = split_word(rest);
            let digit = match digit.as_bytes() {
                [digit] => *digit,
                _ => return Err("usage: dtmf UUID DIGIT [duration=SAMPLES]".into()),
            };
            let duration: u32 = option(&options(rest), "duration", 2240)?;
            let s = session(uuid)?;
            let hooks = lock(&s.recv_dtmf_hooks).clone();
            use crate::types::{
                switch_core_session_t, switch_dtmf_direction_t, switch_dtmf_t, switch_status_t,
                SWITCH_DTMF_RECV,
            };
            let dtmf = switch_dtmf_t {
                digit: digit as std::ffi::c_char,
                duration,
                flags: 0,
                source: 0,
            };
            for hook in &hooks {
                // SAFETY: an address the module registered as a switch_recv_dtmf_hook_t.
                let hook: unsafe extern "C" fn(
                    *mut switch_core_session_t,
                    *const switch_dtmf_t,
                    switch_dtmf_direction_t,
                ) -> switch_status_t = unsafe { std::mem::transmute(*hook) };
                // SAFETY: a live session and digit, as FreeSWITCH passes them.
                unsafe { hook(s.pointer(), &dtmf, SWITCH_DTMF_RECV) };
            }
            Ok(json!({"hooks": hooks.len()}))
        }
        "hangup" => {
            let (uuid, _) = split_word(rest);
            let s = session(uuid)?;
            lock(&host().by_uuid).remove(uuid);
            let closed = media::hangup(&s);
            Ok(
                json!({"bugs_closed": closed, "locks_at_hangup": s.locks_at_hangup.load(Ordering::SeqCst)}),
            )
        }
        "hangup_async" => {
            // A hangup on another thread after DELAY_US, to race the next command.
            let (uuid, rest) = split_word(rest);
            let delay_us: u64 = option(&options(rest), "delay_us", 0)?;
            let s = session(uuid)?;
            let handle = std::thread::Builder::new()
                .name(format!("hangup-{}", s.id))
                .spawn(move || {
                    module::register_host_thread();
                    std::thread::sleep(Duration::from_micros(delay_us));
                    lock(&host().by_uuid).remove(&s.uuid);
                    media::hangup(&s)
                })
                .map_err(|e| e.to_string())?;
            lock(&ASYNC_HANGUPS).push(handle);
            Ok(json!({}))
        }
        "wait_hangups" => {
            let handles: Vec<_> = lock(&ASYNC_HANGUPS).drain(..).collect();
            let closed: usize = handles.into_iter().filter_map(|h| h.join().ok()).sum();
            Ok(json!({"bugs_closed": closed}))
        }
        "sleep" => {
            let ms: u64 = split_word(rest).0.parse().map_err(|_| "usage: sleep MS")?;
            std::thread::sleep(Duration::from_millis(ms));
            Ok(json!({}))
        }
        "events" => {
            let mut events = lock(&host().events);
            let fired = events.fired.clone();
            if split_word(rest).0 == "clear" {
                events.fired.clear();
            }
            Ok(json!({"events": fired, "reserved": events.reserved, "unfired": events.live.len()}))
        }
        "logs" => {
            let mut logs = lock(&host().logs);
            let result =
                json!({"logs": logs.entries, "dropped": logs.dropped, "by_level": logs.by_level});
            if split_word(rest).0 == "clear" {
                logs.entries.clear();
            }
            Ok(result)
        }
        "stats" => {
            let (uuid, _) = split_word(rest);
            if uuid.is_empty() {
                let sessions: Vec<_> = lock(&host().order).iter().map(|s| s.stats()).collect();
                Ok(json!({"sessions": sessions}))
            } else {
                Ok(any_session(uuid)?.stats())
            }
        }
        "bench" => {
            let (uuid, rest) = split_word(rest);
            let (frames, rest) = split_word(rest);
            let frames: usize = frames
                .parse()
                .map_err(|_| "usage: bench UUID FRAMES [burst=FRAMES] [settle_ms=5000]")?;
            let opts = options(rest);
            let burst: usize = option(&opts, "burst", frames)?;
            let settle_ms: u64 = option(&opts, "settle_ms", 5000)?;
            let s = session(uuid)?;
            bench::run(&s, frames, burst, || {
                sender_caught_up(Duration::from_millis(settle_ms))
            })
        }
        "summary" => Ok(summary()),
        "violations" => Ok(json!({"all": lock(&host().violations).all})),
        "selftest" => Ok(selftest(rest)),
        _ => Err(format!("unknown command {cmd}")),
    }
}

/// `hangup_async` threads not yet joined by `wait_hangups`.
static ASYNC_HANGUPS: std::sync::Mutex<Vec<std::thread::JoinHandle<usize>>> =
    std::sync::Mutex::new(Vec::new());

/// Waits (at most `limit`) until the module's sender thread has sent every
/// frame queued to it, by its own `rst_status` counters; false on timeout or
/// when the module has no `rst_status`.
fn sender_caught_up(limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let Ok(answer) = module::run_api("rst_status", Some("")) else {
            return false;
        };
        let counters: Value = answer["output"]
            .as_str()
            .and_then(|text| serde_json::from_str(text.trim()).ok())
            .unwrap_or(Value::Null);
        let (Some(queued), Some(sent)) = (
            counters["frames_queued"].as_u64(),
            counters["frames_sent"].as_u64(),
        ) else {
            return false;
        };
        if sent >= queued {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn check_codec(kind: CodecKind, rate: u32) -> Result<(), String> {
    match (kind, rate) {
        (CodecKind::Pcmu | CodecKind::Pcma, 8000) | (CodecKind::L16, 8000 | 16000 | 48000) => {
            Ok(())
        }
        _ => Err(format!("{} at {rate} Hz is not simulated", kind.name())),
    }
}

/// Totals over every session: what a test checks at the end.
fn summary() -> Value {
    let host = host();
    let sessions: Vec<_> = lock(&host.order).clone();
    let mut total = state::Timing::default();
    let mut locks_held = 0;
    let mut bad_unlocks = 0;
    let mut attached = 0;
    for s in &sessions {
        if let Some(all) = lock(&s.timings).get("ALL") {
            total.merge(all);
        }
        locks_held += s.locks.load(Ordering::SeqCst);
        bad_unlocks += s.bad_unlocks.load(Ordering::SeqCst);
        attached += s.bug_list.read().map(|l| l.len()).unwrap_or(0);
    }
    let callbacks_after_close: u64 = host
        .bugs
        .read()
        .map(|b| {
            b.values()
                .map(|b| b.callbacks_after_close.load(Ordering::SeqCst))
                .sum()
        })
        .unwrap_or(0);
    let logs = lock(&host.logs);
    let events = lock(&host.events);
    let xml = lock(&host.xml);
    json!({
        "sessions": sessions.len(),
        "locks_held": locks_held,
        "bad_unlocks": bad_unlocks,
        "bugs_attached": attached,
        "callbacks_after_close": callbacks_after_close,
        "callbacks": total.to_json(),
        "violation_count": lock(&host.violations).all.len(),
        "logs_by_level": logs.by_level,
        "events_fired": events.fired.len(),
        "events_unfired": events.live.len(),
        "xml_opened": xml.opened,
        "xml_freed": xml.freed_count,
        "module_loaded": module::is_loaded(),
    })
}

/// Checks that every `switch_*` function (or each name given) resolves from
/// the executable, as the dlopen'ed module will need.
fn selftest(names: &str) -> Value {
    let mut missing = Vec::new();
    let given: Vec<&str> = names.split_whitespace().collect();
    let names: &[&str] = if given.is_empty() {
        exports::NAMES
    } else {
        &given
    };
    for name in names {
        let c_name = std::ffi::CString::new(*name).unwrap_or_default();
        // SAFETY: dlsym in the global scope for a plain symbol name.
        let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c_name.as_ptr()) };
        if found.is_null() {
            missing.push(*name);
        }
    }
    json!({"checked": names.len(), "missing": missing})
}
