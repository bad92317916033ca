//! mod_rst: a FreeSWITCH module that streams both directions of a call, live,
//! to an rst receiver (`udp_server`), as DATA datagrams or RTP.
//!
//! Layers, one direction: [`ffi`] (raw declarations) → [`fs`] (safe layer) →
//! this file (the module: load, shutdown, application, APIs) with [`tap`] (the
//! media bug, on FreeSWITCH's media threads) feeding [`sender`] (one thread that
//! owns every socket and timer) and its per-call state machine
//! [`rst_proto::stream`], shared with tap_daemon.
//! Every `extern "C"` entry is a trampoline that catches panics.

pub mod args;
pub mod config;
pub mod ffi;
pub mod fs;
pub mod play;
mod queue;
mod sender;
pub mod tap;

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::net::{SocketAddr, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use args::{ApiCommand, Target};
use config::{Mode, Settings};
use ffi::*;
use fs::{LocatedSession, SessionRef};
use play::{PlayCounters, PlayEvent, PlayFeed, PlayLater, PlayTap};
use rst_proto::stream::{StreamStart, Trouble, RTP_EVENT_PAYLOAD_TYPE, RTP_L16_PAYLOAD_TYPE};
use rst_proto::ExtensionsBuilder;
use sender::{Command, Sender, StreamId};
use tap::Tap;

/// What FreeSWITCH looks up after `dlopen("mod_rst.so")`: `<file name>_module_interface`.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mod_rst_module_interface: switch_loadable_module_function_table_t =
    switch_loadable_module_function_table_t {
        switch_api_version: SWITCH_API_VERSION,
        load: Some(module_load),
        shutdown: Some(module_shutdown),
        runtime: None,
        flags: 0,
    };

/// The channel private that holds a channel's bug: one stream per channel.
const PRIVATE_KEY: &CStr = c"rst";
const EVENT_START: &CStr = c"rst::start";
const EVENT_STOP: &CStr = c"rst::stop";
const EVENT_ERROR: &CStr = c"rst::error";
const EVENT_PLAY_START: &CStr = c"rst::play_start";
const EVENT_PLAY_STOP: &CStr = c"rst::play_stop";
const EVENT_MARK: &CStr = c"rst::mark";
const EVENTS: [&CStr; 6] = [
    EVENT_START,
    EVENT_STOP,
    EVENT_ERROR,
    EVENT_PLAY_START,
    EVENT_PLAY_STOP,
    EVENT_MARK,
];

struct Module {
    settings: Settings,
    sender: Sender,
    thread: Option<JoinHandle<()>>,
    /// Streams in progress, by channel UUID: what unload must stop.
    active: HashMap<String, StreamId>,
    next_stream: StreamId,
}

static MODULE: Mutex<Option<Module>> = Mutex::new(None);

fn module() -> MutexGuard<'static, Option<Module>> {
    // A panic while holding the lock must not take the module down with it.
    MODULE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `body`, turning a panic into `on_panic` and a log line: nothing unwinds into C.
fn guarded<T>(what: &str, on_panic: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(_) => {
            fs::log(
                SWITCH_LOG_ERROR,
                None,
                &format!("mod_rst: internal error in {what}; the call is not affected"),
            );
            on_panic
        }
    }
}

unsafe extern "C" fn module_load(
    module_interface: *mut *mut switch_loadable_module_interface_t,
    pool: *mut switch_memory_pool_t,
) -> switch_status_t {
    guarded("load", SWITCH_STATUS_GENERR, || {
        if module_interface.is_null() {
            return SWITCH_STATUS_GENERR;
        }
        // SAFETY: FreeSWITCH passes its pool; the interface lives as long as the module.
        let interface = unsafe {
            switch_loadable_module_create_module_interface(pool, fs::MODULE_NAME.as_ptr())
        };
        if interface.is_null() {
            return SWITCH_STATUS_MEMERR;
        }
        let settings = load_settings();
        let (sender, commands) = sender::channel(settings.queue_frames);
        if let Some(pool) = &settings.receivers {
            sender.counters.set_pool(pool.clone());
        }
        let counters = sender.counters.clone();
        let hex_dir = settings.write_hex.then(|| settings.hex_dir.clone());
        let queue_frames = settings.queue_frames;
        if let Some(dir) = &hex_dir {
            if let Err(error) = std::fs::create_dir_all(dir) {
                fs::log(
                    SWITCH_LOG_WARNING,
                    None,
                    &format!("mod_rst: write-hex folder {dir}: {error}"),
                );
            }
        }
        let thread = match std::thread::Builder::new()
            .name("rst-sender".into())
            .spawn(move || sender::run(commands, queue_frames, counters, hex_dir, FreeSwitch))
        {
            Ok(thread) => thread,
            Err(error) => {
                fs::log(
                    SWITCH_LOG_ERROR,
                    None,
                    &format!("mod_rst: cannot start the sender thread: {error}"),
                );
                return SWITCH_STATUS_GENERR;
            }
        };
        fs::log(
            SWITCH_LOG_INFO,
            None,
            &format!(
                "mod_rst: default receiver {}:{}, mode {:?}, audio {:?}",
                settings.host, settings.port, settings.mode, settings.audio
            ),
        );
        *module() = Some(Module {
            settings,
            sender,
            thread: Some(thread),
            active: HashMap::new(),
            next_stream: 1,
        });
        for subclass in EVENTS {
            fs::reserve_event(subclass);
        }
        // SAFETY: `interface` is live; the registered strings and functions are 'static.
        unsafe {
            add_application(interface, c"rst", app_rst);
            // `execute_on_answer='rst host port'` reaches FreeSWITCH 1.10.10+ with the
            // quote still on the name: answer to it as well.
            add_application(interface, c"'rst", app_rst);
            add_api(
                interface,
                c"uuid_rst",
                c"Stream a channel's audio to an rst receiver",
                c"<uuid> [host] [port] | <uuid> stop",
                api_uuid_rst,
            );
            add_api(
                interface,
                c"rst_stop",
                c"Stop a channel's rst stream",
                c"<uuid>",
                api_rst_stop,
            );
            add_api(
                interface,
                c"rst_status",
                c"mod_rst counters, as JSON",
                c"",
                api_rst_status,
            );
            *module_interface = interface;
        }
        SWITCH_STATUS_SUCCESS
    })
}

unsafe extern "C" fn module_shutdown() -> switch_status_t {
    guarded("shutdown", SWITCH_STATUS_SUCCESS, || {
        // Stop every stream first: FreeSWITCH unloads the .so right after, and a
        // bug left behind would call into freed code.
        let active: Vec<String> = module()
            .as_ref()
            .map(|m| m.active.keys().cloned().collect())
            .unwrap_or_default();
        for uuid in active {
            if let Some(located) = LocatedSession::locate(&uuid) {
                let _ = stop_stream(located.session());
            }
        }
        let taken = module().take();
        if let Some(mut module) = taken {
            module.sender.control(Command::Shutdown);
            if let Some(thread) = module.thread.take() {
                let _ = thread.join();
            }
            fs::log(
                SWITCH_LOG_INFO,
                None,
                &format!(
                    "mod_rst: unloaded; counters {}",
                    module.sender.counters.to_json()
                ),
            );
        }
        for subclass in EVENTS {
            fs::free_event(subclass);
        }
        SWITCH_STATUS_SUCCESS
    })
}

fn load_settings() -> Settings {
    match fs::config_params(c"rst.conf") {
        Some(params) => {
            let (settings, problems) =
                Settings::from_params(params.iter().map(|(n, v)| (n.as_str(), v.as_str())));
            for problem in problems {
                fs::log(SWITCH_LOG_WARNING, None, &problem);
            }
            settings
        }
        None => {
            fs::log(
                SWITCH_LOG_WARNING,
                None,
                "mod_rst: no rst.conf found; using the defaults (127.0.0.1:9527)",
            );
            Settings::default()
        }
    }
}

/// # Safety
/// `interface` is a live module interface.
unsafe fn add_application(
    interface: *mut switch_loadable_module_interface_t,
    name: &'static CStr,
    function: unsafe extern "C" fn(*mut switch_core_session_t, *const c_char),
) {
    // SAFETY: FreeSWITCH returns a zeroed application interface owned by the module interface.
    let app =
        unsafe { switch_loadable_module_create_interface(interface, SWITCH_APPLICATION_INTERFACE) }
            as *mut switch_application_interface_t;
    if app.is_null() {
        return;
    }
    // SAFETY: `app` is live and ours to fill; the strings are 'static.
    unsafe {
        (*app).interface_name = name.as_ptr();
        (*app).application_function = Some(function);
        (*app).short_desc = c"Stream the call's audio to an rst receiver".as_ptr();
        (*app).long_desc =
            c"Stream both directions of the call, live, to an rst receiver (udp_server)".as_ptr();
        (*app).syntax = c"[host] [port]".as_ptr();
        (*app).flags = SAF_MEDIA_TAP;
    }
}

/// # Safety
/// `interface` is a live module interface.
unsafe fn add_api(
    interface: *mut switch_loadable_module_interface_t,
    name: &'static CStr,
    description: &'static CStr,
    syntax: &'static CStr,
    function: unsafe extern "C" fn(
        *const c_char,
        *mut switch_core_session_t,
        *mut switch_stream_handle_t,
    ) -> switch_status_t,
) {
    // SAFETY: as in add_application.
    let api = unsafe { switch_loadable_module_create_interface(interface, SWITCH_API_INTERFACE) }
        as *mut switch_api_interface_t;
    if api.is_null() {
        return;
    }
    // SAFETY: `api` is live and ours to fill; the strings are 'static.
    unsafe {
        (*api).interface_name = name.as_ptr();
        (*api).desc = description.as_ptr();
        (*api).function = Some(function);
        (*api).syntax = syntax.as_ptr();
    }
}

/// The dialplan application: `rst [host] [port]`.
unsafe extern "C" fn app_rst(session: *mut switch_core_session_t, data: *const c_char) {
    guarded("the rst application", (), || {
        // SAFETY: FreeSWITCH passes the running session and its argument string.
        let (Some(session), data) = (unsafe { SessionRef::new(session) }, unsafe {
            fs::text(data)
        }) else {
            return;
        };
        let uuid = session.uuid();
        let result = args::parse_app(data.as_deref().unwrap_or(""))
            .map_err(|e| e.to_string())
            .and_then(|target| start_stream(&session, &target));
        match result {
            Ok(message) => fs::log(SWITCH_LOG_INFO, Some(&uuid), &format!("rst: {message}")),
            Err(message) => fs::log(SWITCH_LOG_ERROR, Some(&uuid), &format!("rst: {message}")),
        }
    })
}

/// `uuid_rst <uuid> [host] [port]` / `uuid_rst <uuid> stop`.
unsafe extern "C" fn api_uuid_rst(
    cmd: *const c_char,
    _session: *mut switch_core_session_t,
    stream: *mut switch_stream_handle_t,
) -> switch_status_t {
    guarded("uuid_rst", SWITCH_STATUS_SUCCESS, || {
        // SAFETY: FreeSWITCH passes the argument string (or NULL).
        let cmd = unsafe { fs::text(cmd) }.unwrap_or_default();
        let reply = match args::parse_uuid_rst(&cmd) {
            Err(error) => format!("-ERR {error}\n"),
            Ok(ApiCommand::Start { uuid, target }) => {
                with_session(&uuid, |session| start_stream(session, &target))
            }
            Ok(ApiCommand::Stop { uuid }) => with_session(&uuid, stop_stream),
        };
        // SAFETY: the stream FreeSWITCH passed.
        unsafe { fs::stream_write(stream, &reply) };
        SWITCH_STATUS_SUCCESS
    })
}

/// `rst_stop <uuid>`, the original module's API.
unsafe extern "C" fn api_rst_stop(
    cmd: *const c_char,
    _session: *mut switch_core_session_t,
    stream: *mut switch_stream_handle_t,
) -> switch_status_t {
    guarded("rst_stop", SWITCH_STATUS_SUCCESS, || {
        // SAFETY: as in api_uuid_rst.
        let cmd = unsafe { fs::text(cmd) }.unwrap_or_default();
        let reply = match args::parse_rst_stop(&cmd) {
            Err(error) => format!("-ERR {error}\n"),
            Ok(uuid) => with_session(&uuid, stop_stream),
        };
        // SAFETY: the stream FreeSWITCH passed.
        unsafe { fs::stream_write(stream, &reply) };
        SWITCH_STATUS_SUCCESS
    })
}

/// `rst_status`: the module's counters.
unsafe extern "C" fn api_rst_status(
    _cmd: *const c_char,
    _session: *mut switch_core_session_t,
    stream: *mut switch_stream_handle_t,
) -> switch_status_t {
    guarded("rst_status", SWITCH_STATUS_SUCCESS, || {
        let reply = match module().as_ref() {
            Some(module) => format!("{}\n", module.sender.counters.to_json()),
            None => "-ERR mod_rst is not loaded\n".to_owned(),
        };
        // SAFETY: the stream FreeSWITCH passed.
        unsafe { fs::stream_write(stream, &reply) };
        SWITCH_STATUS_SUCCESS
    })
}

/// Runs `action` on the session `uuid` while holding its read lock; the lock is
/// released when this returns and the session is not touched after (the
/// original's use-after-free).
fn with_session(uuid: &str, action: impl FnOnce(&SessionRef) -> Result<String, String>) -> String {
    let Some(located) = LocatedSession::locate(uuid) else {
        return format!("-ERR no such channel {uuid}\n");
    };
    match action(located.session()) {
        Ok(message) => format!("+OK {message}\n"),
        Err(message) => format!("-ERR {message}\n"),
    }
}

/// How often a call's INV is refreshed at least when it has receivers to
/// fail over to: a receiver's death costs up to this plus `failover-ms`.
const POOL_REFRESH: std::time::Duration = std::time::Duration::from_millis(500);

/// Starts streaming `session` to `target` (or the configured receiver).
fn start_stream(session: &SessionRef, target: &Target) -> Result<String, String> {
    let uuid = session.uuid();
    if !session.private(PRIVATE_KEY).is_null() {
        return Ok(format!("{uuid} is already streaming"));
    }
    let (settings, sender, stream_id) = {
        let mut guard = module();
        let module = guard.as_mut().ok_or("mod_rst is not loaded")?;
        let id = module.next_stream;
        module.next_stream += 1;
        (module.settings.clone(), module.sender.clone(), id)
    };
    // A receiver named by the dialplan or the API wins over the pool.
    let pool = settings
        .receivers
        .as_ref()
        .filter(|_| target.host.is_none() && target.port.is_none());
    let (address, fallbacks) = match pool {
        // The sender thread puts the receivers that failed lately last.
        Some(pool) => {
            let mut order = pool.order(&uuid);
            let first = order.next().ok_or("the pool of receivers is empty")?;
            (first, order.collect())
        }
        None => {
            let (host, port) = target.resolve(&settings.host, settings.port);
            let address: SocketAddr = (host.as_str(), port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut addresses| addresses.next())
                .ok_or_else(|| format!("cannot resolve receiver {host}:{port}"))?;
            (address, Vec::new())
        }
    };
    // A dead receiver is noticed by its unanswered refresh: with a pool,
    // refresh at least every POOL_REFRESH, so a failover costs little.
    let refresh = match pool {
        Some(pool) if pool.len() > 1 => Some(
            settings
                .refresh
                .map_or(POOL_REFRESH, |r| r.min(POOL_REFRESH)),
        ),
        _ => settings.refresh,
    };
    let caller = session
        .variable("rst_caller")
        .or_else(|| session.variable("caller_id_number"))
        .unwrap_or_default();
    let callee = session
        .variable("rst_callee")
        .or_else(|| session.variable("destination_number"))
        .unwrap_or_default();
    let rate = session
        .read_codec_payload_type()
        .map_or(8000, |(_, rate)| rate);
    let extensions = match settings.mode {
        Mode::Rtp => ExtensionsBuilder::new()
            .payload_type(RTP_L16_PAYLOAD_TYPE, "L16", rate)
            .payload_type(RTP_EVENT_PAYLOAD_TYPE, "telephone-event", rate),
        // PT 10 frames (L16 mode, or a channel whose codec is L16) are at this rate.
        Mode::Data if rate != 8000 => ExtensionsBuilder::new().rate(rate),
        Mode::Data => ExtensionsBuilder::new(),
    };
    // The receiver's stream profiles the call goes to live (`rst_stream=bot,asr`).
    let streams = session.variable("rst_stream").unwrap_or_default();
    let extensions = extensions.streams(streams.split(','));
    // Audio back (a bot's voice) goes through a bug of its own, attached by
    // the sender thread when the first of it comes (PlayLater).
    let stopped = Arc::new(AtomicBool::new(false));
    let play = settings.play.map(|mode| PlayLater {
        mode,
        rate,
        stopped: stopped.clone(),
    });
    let extensions = match play {
        Some(_) => extensions.play(),
        None => extensions,
    }
    .build();
    let start = StreamStart {
        uuid: uuid.clone(),
        caller,
        callee,
        target: address,
        mode: settings.mode,
        local_ports: None,
        extensions,
        fallbacks,
        failover_after: settings.failover,
        retransmit: settings.retransmit,
        tries: settings.retransmit_tries,
        max_pending: settings.rtp_buffer_frames,
        seed: seed(&uuid, stream_id),
        refresh,
        event_clock: rate,
        frames_per_datagram: settings.frames_per_datagram,
        live: settings.live,
    };
    if !sender.control(Command::Start {
        stream: stream_id,
        start: Box::new(start),
        play,
    }) {
        return Err("the sender is not running".to_owned());
    }
    let tap = Box::into_raw(Tap::new(
        stream_id,
        uuid.clone(),
        settings.audio,
        sender.clone(),
        stopped.clone(),
    ));
    // Hooked before the bug goes on: the bug's CLOSE (a hangup may come the
    // moment it is on) unhooks, so no hook outlives its stream.
    if !session.add_recv_dtmf_hook(Some(recv_dtmf_hook)) {
        fs::log(
            SWITCH_LOG_WARNING,
            Some(&uuid),
            "rst: cannot hook the channel's DTMF; its digits are not sent",
        );
    }
    // SAFETY: `tap` stays valid until CLOSE, where bug_callback frees it exactly once.
    match unsafe {
        session.add_bug(
            c"rst",
            Some(bug_callback),
            tap as *mut c_void,
            Tap::flags(settings.audio),
        )
    } {
        Ok(bug) => {
            session.set_private(PRIVATE_KEY, bug as *const c_void);
            if let Some(module) = module().as_mut() {
                module.active.insert(uuid.clone(), stream_id);
            }
            let target = address.to_string();
            fs::fire_event(
                EVENT_START,
                &[("Unique-ID", &uuid), ("rst-target", &target)],
            );
            Ok(format!("{uuid} streaming to {target}"))
        }
        Err(status) => {
            // SAFETY: the bug was not added, so nothing else holds `tap`.
            drop(unsafe { Box::from_raw(tap) });
            session.remove_recv_dtmf_hook(Some(recv_dtmf_hook));
            stopped.store(true, SeqCst);
            remove_play_bug(session);
            sender.control(Command::Stop { stream: stream_id });
            let message = format!("cannot attach a media bug (status {status})");
            fs::fire_event(
                EVENT_ERROR,
                &[("Unique-ID", &uuid), ("rst-error", &message)],
            );
            Err(message)
        }
    }
}

/// Adds the playback bug (WRITE_REPLACE, first in the channel's list, so the
/// recording bug's W sees what the caller hears): returns the sender
/// thread's side of the playback, or `None` (logged, counted) when
/// FreeSWITCH refuses the bug; the call then goes on without audio back.
fn add_play_bug(
    session: &SessionRef,
    later: &PlayLater,
    counters: &Arc<PlayCounters>,
    uuid: &str,
) -> Option<Box<PlayFeed>> {
    let (feed, tap) = play::channel(later.mode, later.rate, counters.clone());
    let tap = Box::into_raw(Box::new(tap));
    // SAFETY: `tap` stays valid until CLOSE, where play_bug_callback frees it exactly once.
    match unsafe {
        session.add_bug(
            c"rst_play",
            Some(play_bug_callback),
            tap as *mut c_void,
            SMBF_WRITE_REPLACE | SMBF_FIRST | SMBF_NO_PAUSE | SMBF_ONE_ONLY,
        )
    } {
        Ok(_) => Some(Box::new(feed)),
        Err(status) => {
            // SAFETY: the bug was not added, so nothing else holds `tap`.
            drop(unsafe { Box::from_raw(tap) });
            counters
                .bugs_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            fs::log(
                SWITCH_LOG_WARNING,
                Some(uuid),
                &format!("rst: cannot attach the playback bug (status {status}); no audio can be played into this call"),
            );
            None
        }
    }
}

/// Removes the playback bug, if the channel has one (by its callback: a
/// hangup may be removing it right now).
fn remove_play_bug(session: &SessionRef) {
    session.remove_bugs_with(Some(play_bug_callback));
}

/// Stops `session`'s stream: removing the bug runs its CLOSE, which sends the BYE.
fn stop_stream(session: &SessionRef) -> Result<String, String> {
    let uuid = session.uuid();
    let bug = session.private(PRIVATE_KEY) as *mut switch_media_bug_t;
    if bug.is_null() {
        return Err(format!("{uuid} is not streaming"));
    }
    // SAFETY: the private holds this session's bug, cleared at its CLOSE.
    unsafe { session.remove_bug(bug) };
    // After the recording bug's CLOSE set `stopped`: no playback bug comes after this.
    remove_play_bug(session);
    Ok(format!("{uuid} stopped"))
}

/// The playback bug: on each frame FreeSWITCH is about to write to the
/// channel, plays what the receiver sent into it. Never blocks, never
/// allocates (`PlayTap::fill`).
unsafe extern "C" fn play_bug_callback(
    bug: *mut switch_media_bug_t,
    user_data: *mut c_void,
    kind: switch_abc_type_t,
) -> switch_bool_t {
    if user_data.is_null() {
        return SWITCH_FALSE;
    }
    let tap = user_data as *mut PlayTap;
    if kind == SWITCH_ABC_TYPE_CLOSE {
        // SAFETY: CLOSE is the last callback: reclaim the box leaked in add_play_bug, once.
        drop(unsafe { Box::from_raw(tap) });
        return SWITCH_TRUE;
    }
    guarded("the playback bug", SWITCH_TRUE, || {
        if kind != SWITCH_ABC_TYPE_WRITE_REPLACE {
            return SWITCH_TRUE;
        }
        // SAFETY: inside WRITE_REPLACE the bug's write frame is live.
        let frame = unsafe { switch_core_media_bug_get_write_replace_frame(bug) };
        if frame.is_null() {
            return SWITCH_TRUE;
        }
        // SAFETY: a live frame for the duration of the callback.
        let raw = unsafe { &mut *frame };
        let samples = (raw.datalen / 2) as usize;
        if raw.data.is_null() || samples == 0 || (raw.data as usize) % 2 != 0 {
            return SWITCH_TRUE;
        }
        // SAFETY: a write-replace frame is linear: `datalen` bytes of 16-bit
        // samples in FreeSWITCH's buffer, aligned (checked above), ours to
        // change during the callback.
        let audio = unsafe { std::slice::from_raw_parts_mut(raw.data as *mut i16, samples) };
        // SAFETY: between INIT and CLOSE the tap is live and only this bug's thread uses it.
        if unsafe { &mut *tap }.fill(audio, raw.rate) {
            // SAFETY: the frame FreeSWITCH handed us, changed in place.
            unsafe { switch_core_media_bug_set_write_replace_frame(bug, frame) };
        }
        SWITCH_TRUE
    })
}

unsafe extern "C" fn bug_callback(
    bug: *mut switch_media_bug_t,
    user_data: *mut c_void,
    kind: switch_abc_type_t,
) -> switch_bool_t {
    if user_data.is_null() {
        return SWITCH_FALSE;
    }
    let tap = user_data as *mut Tap;
    if kind == SWITCH_ABC_TYPE_CLOSE {
        // SAFETY: CLOSE is the last callback: reclaim the box leaked in start_stream, once.
        let tap = unsafe { Box::from_raw(tap) };
        guarded("the media bug's close", (), || close(bug, &tap));
        return SWITCH_TRUE;
    }
    guarded("the media bug", SWITCH_TRUE, || {
        // SAFETY: between INIT and CLOSE the tap is live and only this bug's thread uses it.
        let tap = unsafe { &mut *tap };
        tap.sampled(|tap| {
            // SAFETY: inside the bug's own callback.
            unsafe {
                match kind {
                    SWITCH_ABC_TYPE_TAP_NATIVE_READ => {
                        tap.native_frame(bug, rst_proto::Direction::Read)
                    }
                    SWITCH_ABC_TYPE_TAP_NATIVE_WRITE => {
                        tap.native_frame(bug, rst_proto::Direction::Write)
                    }
                    SWITCH_ABC_TYPE_READ_PING => tap.linear_frames(bug),
                    _ => {}
                }
            }
        });
        SWITCH_TRUE
    })
}

fn close(bug: *mut switch_media_bug_t, tap: &Tap) {
    // First: the sender thread attaches no playback bug after this (PlayLater).
    tap.stopped.store(true, SeqCst);
    tap.sender.control(Command::Stop { stream: tap.stream });
    // SAFETY: inside the bug's CLOSE its session is still live.
    if let Some(session) = unsafe { SessionRef::new(switch_core_media_bug_get_session(bug)) } {
        if session.private(PRIVATE_KEY) == bug as *mut c_void {
            session.set_private(PRIVATE_KEY, std::ptr::null());
        }
        // Before the module can unload: FreeSWITCH must never call into a
        // module that is gone.
        session.remove_recv_dtmf_hook(Some(recv_dtmf_hook));
    }
    if let Some(module) = module().as_mut() {
        if module.active.get(&tap.uuid) == Some(&tap.stream) {
            module.active.remove(&tap.uuid);
        }
    }
    fs::fire_event(EVENT_STOP, &[("Unique-ID", &tap.uuid)]);
    fs::log(SWITCH_LOG_INFO, Some(&tap.uuid), "rst: stream stopped");
}

/// FreeSWITCH calls this for every digit the channel receives (RFC 2833/4733,
/// SIP INFO, in-band once `start_dtmf` runs on the channel), on the
/// session's thread: the digit is queued for the sender thread, never waited
/// for. The module's lock is taken only to find the channel's stream.
unsafe extern "C" fn recv_dtmf_hook(
    session: *mut switch_core_session_t,
    dtmf: *const switch_dtmf_t,
    direction: switch_dtmf_direction_t,
) -> switch_status_t {
    guarded("the DTMF hook", SWITCH_STATUS_SUCCESS, || {
        if dtmf.is_null() || direction != SWITCH_DTMF_RECV {
            return SWITCH_STATUS_SUCCESS;
        }
        // SAFETY: FreeSWITCH passes a live digit for the call.
        let dtmf = unsafe { *dtmf };
        let digit = char::from(dtmf.digit as u8).to_ascii_uppercase();
        if !rst_proto::is_dtmf_digit(digit) {
            return SWITCH_STATUS_SUCCESS;
        }
        // SAFETY: the hook's session is live for the call.
        let Some(session) = (unsafe { SessionRef::new(session) }) else {
            return SWITCH_STATUS_SUCCESS;
        };
        let uuid = session.uuid();
        let found = module()
            .as_ref()
            .and_then(|module| Some((module.sender.clone(), *module.active.get(&uuid)?)));
        if let Some((sender, stream)) = found {
            // FreeSWITCH counts a digit's duration in samples of 8 kHz.
            sender.try_dtmf(stream, rst_proto::Direction::Read, digit, dtmf.duration / 8);
        }
        SWITCH_STATUS_SUCCESS
    })
}

/// A different seed per stream, for SSRCs and initial sequence numbers.
fn seed(uuid: &str, stream: StreamId) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    uuid.hash(&mut hasher);
    stream.hash(&mut hasher);
    hasher.finish()
}

/// The sender thread's troubles become log lines and `rst::error` events;
/// its playback bugs go on the channel here.
struct FreeSwitch;

impl sender::Host for FreeSwitch {
    fn attach_play(
        &self,
        uuid: &str,
        later: &PlayLater,
        counters: &Arc<PlayCounters>,
    ) -> Option<Box<PlayFeed>> {
        // Gone (hung up) is no error: nobody is left to hear it.
        let located = LocatedSession::locate(uuid)?;
        let feed = add_play_bug(located.session(), later, counters, uuid)?;
        // The stream stopped while the bug went on: close() set `stopped`
        // before stop_stream removes playback bugs, so either that removal
        // saw this bug or this sees `stopped` (a hangup removes every bug
        // under the lock this add took). The bug is removed by callback: a
        // hangup may be removing it right now.
        if later.stopped.load(SeqCst) {
            remove_play_bug(located.session());
            return None;
        }
        Some(feed)
    }

    fn trouble(&self, uuid: &str, trouble: &Trouble) {
        let message = match trouble {
            Trouble::NoAckForInv { tries } => {
                format!("the receiver did not acknowledge INV after {tries} tries; is it running?")
            }
            Trouble::NoAckForBye { tries } => {
                format!("the receiver did not acknowledge BYE after {tries} tries")
            }
            Trouble::FailedOver {
                from,
                to,
                part,
                offset_ms,
            } => format!(
                "receiver {from} did not answer; the call goes on at {to} (part {part} from {offset_ms} ms)"
            ),
        };
        fs::log(SWITCH_LOG_WARNING, Some(uuid), &format!("rst: {message}"));
        fs::fire_event(EVENT_ERROR, &[("Unique-ID", uuid), ("rst-error", &message)]);
    }

    fn play(&self, uuid: &str, event: &PlayEvent) {
        match event {
            PlayEvent::Started => fs::fire_event(EVENT_PLAY_START, &[("Unique-ID", uuid)]),
            PlayEvent::Stopped(why) => fs::fire_event(
                EVENT_PLAY_STOP,
                &[("Unique-ID", uuid), ("rst-play-stop-reason", why)],
            ),
            PlayEvent::Mark { name, cleared } => fs::fire_event(
                EVENT_MARK,
                &[
                    ("Unique-ID", uuid),
                    ("rst-mark-name", name),
                    ("rst-mark-cleared", if *cleared { "true" } else { "false" }),
                ],
            ),
        }
    }

    fn socket_error(&self, uuid: &str, error: &std::io::Error) {
        let message = format!("cannot open the stream: {error}");
        fs::log(SWITCH_LOG_ERROR, Some(uuid), &format!("rst: {message}"));
        fs::fire_event(EVENT_ERROR, &[("Unique-ID", uuid), ("rst-error", &message)]);
    }
}
