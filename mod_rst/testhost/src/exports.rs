//! Every `switch_*` function mod_rst imports (mod_rst/src/ffi/functions.rs),
//! defined with the same signature and FreeSWITCH 1.10's semantics. The
//! variadic `switch_log_printf` is in shim.c; it forwards to `fs_host_log`.
//!
//! The module is untrusted: every pointer it passes is looked up in the host's
//! registries first, and misuse is recorded as a violation, never a crash.

use std::ffi::{c_char, c_int, c_void};
use std::ptr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::json;

use crate::module;
use crate::state::*;
use crate::types::*;
use crate::xml::XmlDoc;

// ---------------------------------------------------------------------------
// Loadable modules

/// # Safety
/// `name` must be NULL or a C string.
#[no_mangle]
pub unsafe extern "C" fn switch_loadable_module_create_module_interface(
    pool: *mut switch_memory_pool_t,
    name: *const c_char,
) -> *mut switch_loadable_module_interface_t {
    // SAFETY: C string from the module (or NULL).
    let name = unsafe { c_text(name) };
    module::create_module_interface(pool, name)
}

/// # Safety
/// `module` must be a pointer returned by `switch_loadable_module_create_module_interface`.
#[no_mangle]
pub unsafe extern "C" fn switch_loadable_module_create_interface(
    module: *mut switch_loadable_module_interface_t,
    iname: switch_module_interface_name_t,
) -> *mut c_void {
    module::create_interface(module, iname)
}

// ---------------------------------------------------------------------------
// Sessions and channels

/// # Safety
/// `uuid` must be NULL or a C string.
#[no_mangle]
pub unsafe extern "C" fn switch_core_session_perform_locate(
    uuid: *const c_char,
    _file: *const c_char,
    _func: *const c_char,
    _line: c_int,
) -> *mut switch_core_session_t {
    // SAFETY: C string from the module (or NULL).
    let Some(uuid) = (unsafe { c_text(uuid) }) else {
        return ptr::null_mut();
    };
    let session = lock(&host().by_uuid).get(&uuid).cloned();
    match session {
        Some(session) if !session.hung_up.load(Ordering::SeqCst) => {
            session.locks.fetch_add(1, Ordering::SeqCst);
            session.locates.fetch_add(1, Ordering::SeqCst);
            // Hangup may have raced the lock: FreeSWITCH's read lock fails then.
            if session.hung_up.load(Ordering::SeqCst) {
                session.locks.fetch_sub(1, Ordering::SeqCst);
                session.locates.fetch_sub(1, Ordering::SeqCst);
                session.failed_locates.fetch_add(1, Ordering::SeqCst);
                session.maybe_destroy();
                return ptr::null_mut();
            }
            session.pointer()
        }
        Some(session) => {
            session.failed_locates.fetch_add(1, Ordering::SeqCst);
            ptr::null_mut()
        }
        None => ptr::null_mut(),
    }
}

/// # Safety
/// `session` must be a session pointer.
#[no_mangle]
pub unsafe extern "C" fn switch_core_session_rwunlock(session: *mut switch_core_session_t) {
    let Some(session) = session_of(session, "switch_core_session_rwunlock") else {
        return;
    };
    let before = session.locks.fetch_sub(1, Ordering::SeqCst);
    if before <= 0 {
        session.locks.fetch_add(1, Ordering::SeqCst);
        session.bad_unlocks.fetch_add(1, Ordering::SeqCst);
        violation(
            Some(&session.uuid),
            "switch_core_session_rwunlock without a matching read lock (unbalanced unlock)",
        );
        return;
    }
    session.unlocks.fetch_add(1, Ordering::SeqCst);
    session.maybe_destroy();
}

/// # Safety
/// `session` must be a session pointer.
#[no_mangle]
pub unsafe extern "C" fn switch_core_session_get_channel(
    session: *mut switch_core_session_t,
) -> *mut switch_channel_t {
    match session_of(session, "switch_core_session_get_channel") {
        Some(session) => session.channel(),
        None => ptr::null_mut(),
    }
}

/// # Safety
/// `session` must be a session pointer.
#[no_mangle]
pub unsafe extern "C" fn switch_core_session_get_uuid(
    session: *mut switch_core_session_t,
) -> *mut c_char {
    match session_of(session, "switch_core_session_get_uuid") {
        Some(session) => session.uuid_c.as_ptr() as *mut c_char,
        None => ptr::null_mut(),
    }
}

/// # Safety
/// `session` must be a session pointer.
#[no_mangle]
pub unsafe extern "C" fn switch_core_session_get_read_codec(
    session: *mut switch_core_session_t,
) -> *mut switch_codec_t {
    match session_of(session, "switch_core_session_get_read_codec") {
        Some(session) => session.read_codec.pointer(),
        None => ptr::null_mut(),
    }
}

/// # Safety
/// `session` must be a session pointer.
#[no_mangle]
pub unsafe extern "C" fn switch_core_session_get_write_codec(
    session: *mut switch_core_session_t,
) -> *mut switch_codec_t {
    match session_of(session, "switch_core_session_get_write_codec") {
        Some(session) => session.write_codec.pointer(),
        None => ptr::null_mut(),
    }
}

/// Channel variables; like FreeSWITCH, a name not set as a variable is answered
/// from the caller profile (`caller_id_number`, `destination_number`, ...), and
/// the returned string stays valid for the session's life.
///
/// # Safety
/// `channel` must be a channel pointer, `name` NULL or a C string.
#[no_mangle]
pub unsafe extern "C" fn switch_channel_get_variable_dup(
    channel: *mut switch_channel_t,
    name: *const c_char,
    _dup: switch_bool_t,
    _idx: c_int,
) -> *const c_char {
    let Some(session) = session_of_channel(channel, "switch_channel_get_variable_dup") else {
        return ptr::null();
    };
    // SAFETY: C string from the module (or NULL).
    let Some(name) = (unsafe { c_text(name) }) else {
        violation(
            Some(&session.uuid),
            "switch_channel_get_variable_dup: NULL name",
        );
        return ptr::null();
    };
    let vars = lock(&session.vars);
    match vars.values.get(&name) {
        Some(value) => value.as_ptr(),
        None => ptr::null(),
    }
}

/// # Safety
/// `channel` must be a channel pointer, `key` NULL or a C string.
#[no_mangle]
pub unsafe extern "C" fn switch_channel_get_private(
    channel: *mut switch_channel_t,
    key: *const c_char,
) -> *mut c_void {
    let Some(session) = session_of_channel(channel, "switch_channel_get_private") else {
        return ptr::null_mut();
    };
    // SAFETY: C string from the module (or NULL).
    let Some(key) = (unsafe { c_text(key) }) else {
        violation(Some(&session.uuid), "switch_channel_get_private: NULL key");
        return ptr::null_mut();
    };
    let privates = lock(&session.privates);
    privates
        .get(&key)
        .map_or(ptr::null_mut(), |&p| p as *mut c_void)
}

/// # Safety
/// `channel` must be a channel pointer, `key` NULL or a C string.
#[no_mangle]
pub unsafe extern "C" fn switch_channel_set_private(
    channel: *mut switch_channel_t,
    key: *const c_char,
    private_info: *const c_void,
) -> switch_status_t {
    let Some(session) = session_of_channel(channel, "switch_channel_set_private") else {
        return SWITCH_STATUS_FALSE;
    };
    // SAFETY: C string from the module (or NULL).
    let Some(key) = (unsafe { c_text(key) }) else {
        violation(Some(&session.uuid), "switch_channel_set_private: NULL key");
        return SWITCH_STATUS_FALSE;
    };
    let mut privates = lock(&session.privates);
    if private_info.is_null() {
        privates.remove(&key);
    } else {
        privates.insert(key, private_info as usize);
    }
    SWITCH_STATUS_SUCCESS
}

// ---------------------------------------------------------------------------
// Event hooks

/// # Safety
/// `session` must be a session pointer.
#[no_mangle]
pub unsafe extern "C" fn switch_core_event_hook_add_recv_dtmf(
    session: *mut switch_core_session_t,
    hook: switch_recv_dtmf_hook_t,
) -> switch_status_t {
    let Some(session) = session_of(session, "switch_core_event_hook_add_recv_dtmf") else {
        return SWITCH_STATUS_FALSE;
    };
    let Some(hook) = hook else {
        violation(
            Some(&session.uuid),
            "switch_core_event_hook_add_recv_dtmf: NULL hook",
        );
        return SWITCH_STATUS_FALSE;
    };
    lock(&session.recv_dtmf_hooks).push(hook as usize);
    SWITCH_STATUS_SUCCESS
}

/// # Safety
/// `session` must be a session pointer.
#[no_mangle]
pub unsafe extern "C" fn switch_core_event_hook_remove_recv_dtmf(
    session: *mut switch_core_session_t,
    hook: switch_recv_dtmf_hook_t,
) -> switch_status_t {
    let Some(session) = session_of(session, "switch_core_event_hook_remove_recv_dtmf") else {
        return SWITCH_STATUS_FALSE;
    };
    let mut hooks = lock(&session.recv_dtmf_hooks);
    // As FreeSWITCH: the first matching hook goes; none is not an error.
    match hook.and_then(|h| hooks.iter().position(|&known| known == h as usize)) {
        Some(i) => {
            hooks.remove(i);
            SWITCH_STATUS_SUCCESS
        }
        None => SWITCH_STATUS_FALSE,
    }
}

// ---------------------------------------------------------------------------
// Media bugs

/// # Safety
/// Pointers as FreeSWITCH documents them: a session, C strings or NULL, a
/// writable `new_bug`.
#[no_mangle]
pub unsafe extern "C" fn switch_core_media_bug_add(
    session: *mut switch_core_session_t,
    function: *const c_char,
    target: *const c_char,
    callback: switch_media_bug_callback_t,
    user_data: *mut c_void,
    stop_time: i64,
    flags: switch_media_bug_flag_t,
    new_bug: *mut *mut switch_media_bug_t,
) -> switch_status_t {
    let Some(session) = session_of(session, "switch_core_media_bug_add") else {
        return SWITCH_STATUS_FALSE;
    };
    if new_bug.is_null() {
        violation(
            Some(&session.uuid),
            "switch_core_media_bug_add: new_bug is NULL",
        );
        return SWITCH_STATUS_FALSE;
    }
    if let Some((sid, _, abc)) = IN_CALLBACK.with(|c| c.get()) {
        if sid == session.id {
            violation(
                Some(&session.uuid),
                format!(
                    "switch_core_media_bug_add called inside a {} callback of the same session (deadlocks FreeSWITCH)",
                    abc_name(abc)
                ),
            );
            return SWITCH_STATUS_FALSE;
        }
    }
    // Held from the hangup check to the insertion (and so across INIT): a hangup
    // on another thread either came first (refused here) or closes this bug,
    // never misses it.
    let mut list = session.bug_list.write().unwrap_or_else(|e| e.into_inner());
    if session.hung_up.load(Ordering::SeqCst) {
        // FreeSWITCH: the channel has no media any more, pre_answer fails.
        lock(&host().logs).entries.push(json!({
            "level": 3, "level_name": "ERR", "uuid": session.uuid, "source": "host",
            "text": "Cannot establish media. Media bug add failed.",
        }));
        return SWITCH_STATUS_FALSE;
    }
    let mut flags = flags;
    if flags == 0 {
        flags = SMBF_READ_STREAM | SMBF_WRITE_STREAM;
    }
    let native = flags & (SMBF_TAP_NATIVE_READ | SMBF_TAP_NATIVE_WRITE) != 0;
    let stream = flags & (SMBF_READ_STREAM | SMBF_WRITE_STREAM | SMBF_READ_PING) != 0;
    if native && stream {
        violation(
            Some(&session.uuid),
            format!(
                "switch_core_media_bug_add: flags {flags:#x} combine TAP_NATIVE with READ/WRITE stream flags; \
                 on a live FreeSWITCH the stream callbacks then almost never come (the host sends none)"
            ),
        );
    }
    // SAFETY: C strings from the module (or NULL).
    let (function, target) = unsafe { (c_text(function), c_text(target)) };
    let host = host();
    let bug = Arc::new(Bug {
        id: host.next_id.fetch_add(1, Ordering::SeqCst) + 1,
        session: session.clone(),
        callback,
        user_data: user_data as usize,
        function: function.unwrap_or_else(|| "N/A".into()),
        target: target.unwrap_or_else(|| "N/A".into()),
        flags,
        stop_time,
        state: Default::default(),
        prune: Default::default(),
        native_read: Default::default(),
        native_write: Default::default(),
        write_replace: Default::default(),
        audio: Default::default(),
        callbacks_after_close: Default::default(),
        reads_ok: Default::default(),
        reads_false: Default::default(),
    });
    host.bugs
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(bug.pointer() as usize, bug.clone());
    // SAFETY: checked non-NULL; FreeSWITCH clears it before INIT.
    unsafe { *new_bug = ptr::null_mut() };
    if !bug.invoke(SWITCH_ABC_TYPE_INIT) {
        bug.state.store(BUG_REFUSED, Ordering::SeqCst);
        return SWITCH_STATUS_GENERR;
    }
    bug.state.store(BUG_READY, Ordering::SeqCst);
    session.bugs_added.fetch_add(1, Ordering::SeqCst);
    // SMBF_FIRST puts the bug at the head of the list, as FreeSWITCH does.
    if flags & SMBF_FIRST != 0 {
        list.insert(0, bug.clone());
    } else {
        list.push(bug.clone());
    }
    drop(list);
    // SAFETY: checked non-NULL above.
    unsafe { *new_bug = bug.pointer() };
    SWITCH_STATUS_SUCCESS
}

/// # Safety
/// `session` a session pointer, `bug` a writable pointer to a bug pointer.
#[no_mangle]
pub unsafe extern "C" fn switch_core_media_bug_remove(
    session: *mut switch_core_session_t,
    bug: *mut *mut switch_media_bug_t,
) -> switch_status_t {
    let Some(session) = session_of(session, "switch_core_media_bug_remove") else {
        return SWITCH_STATUS_FALSE;
    };
    if bug.is_null() {
        violation(
            Some(&session.uuid),
            "switch_core_media_bug_remove: bug is NULL",
        );
        return SWITCH_STATUS_FALSE;
    }
    // SAFETY: checked non-NULL; the module's pointer to its bug pointer.
    let pointer = unsafe { *bug };
    let Some(target) = bug_of(pointer, "switch_core_media_bug_remove") else {
        return SWITCH_STATUS_FALSE;
    };
    if !Arc::ptr_eq(&target.session, &session) {
        violation(
            Some(&session.uuid),
            format!(
                "switch_core_media_bug_remove: the bug belongs to session {}",
                target.session.uuid
            ),
        );
        return SWITCH_STATUS_FALSE;
    }
    if let Some((sid, _, abc)) = IN_CALLBACK.with(|c| c.get()) {
        if sid == session.id {
            violation(
                Some(&session.uuid),
                format!(
                    "switch_core_media_bug_remove called inside a {} callback of the same session \
                     (deadlocks FreeSWITCH: return FALSE from the callback instead)",
                    abc_name(abc)
                ),
            );
            target.prune.store(true, Ordering::SeqCst);
            return SWITCH_STATUS_FALSE;
        }
    }
    let found = {
        let mut list = session.bug_list.write().unwrap_or_else(|e| e.into_inner());
        let position = list.iter().position(|b| Arc::ptr_eq(b, &target));
        position.map(|i| list.remove(i))
    };
    match found {
        Some(found) => {
            found.close();
            // SAFETY: checked non-NULL above.
            unsafe { *bug = ptr::null_mut() };
            SWITCH_STATUS_SUCCESS
        }
        None => {
            violation(
                Some(&session.uuid),
                format!(
                    "switch_core_media_bug_remove of a bug that is not attached (state {}): double remove",
                    target.state_name()
                ),
            );
            SWITCH_STATUS_FALSE
        }
    }
}

/// # Safety
/// `session` a session pointer.
#[no_mangle]
pub unsafe extern "C" fn switch_core_media_bug_remove_callback(
    session: *mut switch_core_session_t,
    callback: switch_media_bug_callback_t,
) -> switch_status_t {
    let Some(session) = session_of(session, "switch_core_media_bug_remove_callback") else {
        return SWITCH_STATUS_FALSE;
    };
    // Matched under the list's lock, as FreeSWITCH does: none is no error.
    let removed: Vec<Arc<Bug>> = {
        let mut list = session.bug_list.write().unwrap_or_else(|e| e.into_inner());
        let (matching, kept) = list
            .drain(..)
            .partition(|b| b.callback.map(|f| f as usize) == callback.map(|f| f as usize));
        *list = kept;
        matching
    };
    for bug in &removed {
        bug.close();
    }
    if removed.is_empty() {
        SWITCH_STATUS_FALSE
    } else {
        SWITCH_STATUS_SUCCESS
    }
}

/// # Safety
/// `bug` must be a bug pointer.
#[no_mangle]
pub unsafe extern "C" fn switch_core_media_bug_get_session(
    bug: *mut switch_media_bug_t,
) -> *mut switch_core_session_t {
    match bug_of(bug, "switch_core_media_bug_get_session") {
        Some(bug) => {
            if bug.state.load(Ordering::SeqCst) >= BUG_CLOSED {
                violation(
                    Some(&bug.session.uuid),
                    "switch_core_media_bug_get_session on a closed bug",
                );
            }
            bug.session.pointer()
        }
        None => ptr::null_mut(),
    }
}

fn native_frame(bug: *mut switch_media_bug_t, write: bool) -> *mut switch_frame_t {
    let function = if write {
        "switch_core_media_bug_get_native_write_frame"
    } else {
        "switch_core_media_bug_get_native_read_frame"
    };
    let Some(bug) = bug_of(bug, function) else {
        return ptr::null_mut();
    };
    if bug.state.load(Ordering::SeqCst) >= BUG_CLOSED {
        violation(
            Some(&bug.session.uuid),
            format!("{function} on a closed bug"),
        );
        return ptr::null_mut();
    }
    let frame = if write {
        bug.native_write.load(Ordering::SeqCst)
    } else {
        bug.native_read.load(Ordering::SeqCst)
    };
    if frame.is_null() {
        violation(
            Some(&bug.session.uuid),
            format!("{function} outside its TAP_NATIVE callback: FreeSWITCH returns NULL"),
        );
    }
    frame
}

/// # Safety
/// `bug` must be a bug pointer.
#[no_mangle]
pub unsafe extern "C" fn switch_core_media_bug_get_native_read_frame(
    bug: *mut switch_media_bug_t,
) -> *mut switch_frame_t {
    native_frame(bug, false)
}

/// # Safety
/// `bug` must be a bug pointer.
#[no_mangle]
pub unsafe extern "C" fn switch_core_media_bug_get_native_write_frame(
    bug: *mut switch_media_bug_t,
) -> *mut switch_frame_t {
    native_frame(bug, true)
}

/// # Safety
/// `bug` a bug pointer.
#[no_mangle]
pub unsafe extern "C" fn switch_core_media_bug_get_write_replace_frame(
    bug: *mut switch_media_bug_t,
) -> *mut switch_frame_t {
    let function = "switch_core_media_bug_get_write_replace_frame";
    let Some(bug) = bug_of(bug, function) else {
        return ptr::null_mut();
    };
    let frame = bug.write_replace.load(Ordering::SeqCst);
    if frame.is_null() {
        violation(
            Some(&bug.session.uuid),
            format!("{function} outside its WRITE_REPLACE callback: FreeSWITCH returns NULL"),
        );
    }
    frame
}

/// # Safety
/// `bug` a bug pointer, `frame` the frame its WRITE_REPLACE callback got.
#[no_mangle]
pub unsafe extern "C" fn switch_core_media_bug_set_write_replace_frame(
    bug: *mut switch_media_bug_t,
    frame: *mut switch_frame_t,
) {
    let function = "switch_core_media_bug_set_write_replace_frame";
    let Some(bug) = bug_of(bug, function) else {
        return;
    };
    let current = bug.write_replace.load(Ordering::SeqCst);
    if current.is_null() {
        violation(
            Some(&bug.session.uuid),
            format!("{function} outside its WRITE_REPLACE callback"),
        );
    } else if frame != current {
        // The host keeps it simple: the module changes the frame it got.
        violation(
            Some(&bug.session.uuid),
            format!("{function}: a frame other than the one the callback got"),
        );
    }
}

/// # Safety
/// `bug` a bug pointer; `frame` a writable frame whose data holds buflen bytes.
#[no_mangle]
pub unsafe extern "C" fn switch_core_media_bug_read(
    bug: *mut switch_media_bug_t,
    frame: *mut switch_frame_t,
    fill: switch_bool_t,
) -> switch_status_t {
    let Some(bug) = bug_of(bug, "switch_core_media_bug_read") else {
        return SWITCH_STATUS_FALSE;
    };
    if bug.state.load(Ordering::SeqCst) >= BUG_CLOSED {
        violation(
            Some(&bug.session.uuid),
            "switch_core_media_bug_read on a closed bug",
        );
        return SWITCH_STATUS_FALSE;
    }
    if frame.is_null() {
        violation(
            Some(&bug.session.uuid),
            "switch_core_media_bug_read: NULL frame",
        );
        return SWITCH_STATUS_FALSE;
    }
    // SAFETY: non-NULL frame from the module, used as FreeSWITCH uses it.
    unsafe { bug.read(frame, fill != SWITCH_FALSE) }
}

// ---------------------------------------------------------------------------
// Logging (the variadic front is in shim.c)

/// Called by shim.c's `switch_log_printf` with the formatted text.
///
/// # Safety
/// C strings or NULL; `userdata` a session pointer when `channel` is SESSION.
#[no_mangle]
pub unsafe extern "C" fn fs_host_log(
    channel: c_int,
    file: *const c_char,
    func: *const c_char,
    line: c_int,
    userdata: *const c_char,
    level: c_int,
    text: *const c_char,
    fmt_null: c_int,
) {
    // SAFETY: C strings from the module / shim (or NULL).
    let (file, func, text) =
        unsafe { (c_text(file), c_text(func), c_text(text).unwrap_or_default()) };
    if fmt_null != 0 {
        violation(None, "switch_log_printf with a NULL format");
    }
    let uuid = if channel == SWITCH_CHANNEL_ID_SESSION as c_int {
        session_of(
            userdata as *mut switch_core_session_t,
            "switch_log_printf(SWITCH_CHANNEL_SESSION_LOG)",
        )
        .map(|s| s.uuid.clone())
    } else {
        // SAFETY: SWITCH_CHANNEL_UUID_LOG passes a C string (or NULL).
        unsafe { c_text(userdata) }
    };
    if host().verbose.load(Ordering::Relaxed) {
        eprintln!(
            "fs-testhost LOG [{}] {}",
            level_name(level),
            text.trim_end()
        );
    }
    let mut logs = lock(&host().logs);
    *logs.by_level.entry(level).or_default() += 1;
    if logs.entries.len() >= MAX_LOGS {
        logs.dropped += 1;
        return;
    }
    logs.entries.push(json!({
        "level": level, "level_name": level_name(level), "channel": channel,
        "uuid": uuid, "file": file, "func": func, "line": line, "text": text,
    }));
}

/// Called by shim.c when a stream is misused.
///
/// # Safety
/// `what` must be a C string.
#[no_mangle]
pub unsafe extern "C" fn fs_host_stream_violation(what: *const c_char) {
    // SAFETY: a C string literal from shim.c.
    let what = unsafe { c_text(what) }.unwrap_or_default();
    violation(None, what);
}

// ---------------------------------------------------------------------------
// XML configuration

/// Reads `CONF_DIR/autoload_configs/<file_path>.xml` and returns the document
/// root, with `*node` set to its `<configuration name="<file_path>">`.
///
/// # Safety
/// `file_path` a C string, `node` writable (or NULL).
#[no_mangle]
pub unsafe extern "C" fn switch_xml_open_cfg(
    file_path: *const c_char,
    node: *mut switch_xml_t,
    _params: *mut switch_event_t,
) -> switch_xml_t {
    if !node.is_null() {
        // SAFETY: writable per the caller.
        unsafe { *node = ptr::null_mut() };
    }
    // SAFETY: C string from the module (or NULL).
    let Some(name) = (unsafe { c_text(file_path) }) else {
        violation(None, "switch_xml_open_cfg: NULL file_path");
        return ptr::null_mut();
    };
    let conf_dir = lock(&host().conf_dir).clone();
    let log_error = |text: String| {
        lock(&host().logs).entries.push(json!({
            "level": 3, "level_name": "ERR", "uuid": null, "source": "host", "text": text,
        }));
    };
    let Some(conf_dir) = conf_dir else {
        log_error(format!("open of {name} failed: no CONF_DIR"));
        return ptr::null_mut();
    };
    if name.contains('/') || name.contains("..") {
        violation(None, format!("switch_xml_open_cfg: odd file_path {name:?}"));
    }
    let path = conf_dir
        .join("autoload_configs")
        .join(format!("{name}.xml"));
    let Ok(text) = std::fs::read_to_string(&path) else {
        log_error(format!("open of {name} failed"));
        return ptr::null_mut();
    };
    let doc = match XmlDoc::parse(&text) {
        Ok(doc) => doc,
        Err(e) => {
            log_error(format!("open of {name} failed: {}: {e}", path.display()));
            return ptr::null_mut();
        }
    };
    // FreeSWITCH finds the configuration by its name attribute.
    // SAFETY: doc.config is a live node of doc.
    let config_name = unsafe { xml_attr(doc.config, "name") };
    if config_name.as_deref() != Some(name.as_str()) {
        log_error(format!(
            "open of {name} failed: {} has <configuration name={config_name:?}>",
            path.display()
        ));
        return ptr::null_mut();
    }
    let (root, config) = (doc.root, doc.config);
    let mut registry = lock(&host().xml);
    registry.live_nodes.extend(doc.node_addresses());
    registry.open.insert(root as usize, doc);
    registry.opened += 1;
    if !node.is_null() {
        // SAFETY: writable per the caller.
        unsafe { *node = config };
    }
    root
}

/// An attribute of a host-built node.
///
/// # Safety
/// `xml` must be a live node built by `XmlDoc`.
unsafe fn xml_attr(xml: switch_xml_t, name: &str) -> Option<String> {
    // SAFETY: the node and its attribute list are live (caller).
    unsafe {
        let mut attr = (*xml).attr;
        while !attr.is_null() && !(*attr).is_null() {
            let key = std::ffi::CStr::from_ptr(*attr);
            let value = *attr.add(1);
            if key.to_bytes() == name.as_bytes() {
                return c_text(value);
            }
            attr = attr.add(2);
        }
    }
    None
}

/// Whether `xml` is a node of an open document (reports it otherwise).
fn live_node(xml: switch_xml_t, function: &str) -> bool {
    if xml.is_null() {
        return false;
    }
    let registry = lock(&host().xml);
    if registry.live_nodes.contains(&(xml as usize)) {
        return true;
    }
    if registry.dead_nodes.contains(&(xml as usize)) {
        violation(
            None,
            format!("{function}: node of a freed XML document (use after switch_xml_free)"),
        );
    } else {
        violation(None, format!("{function}: {xml:p} is not an XML node"));
    }
    false
}

/// # Safety
/// `xml` a node or NULL, `name` a C string.
#[no_mangle]
pub unsafe extern "C" fn switch_xml_child(xml: switch_xml_t, name: *const c_char) -> switch_xml_t {
    if !live_node(xml, "switch_xml_child") {
        return ptr::null_mut();
    }
    // SAFETY: C string from the module (or NULL).
    let Some(name) = (unsafe { c_text(name) }) else {
        return ptr::null_mut();
    };
    // SAFETY: a live node; its child/sibling links stay inside the document.
    unsafe {
        let mut child = (*xml).child;
        while !child.is_null() {
            if std::ffi::CStr::from_ptr((*child).name).to_bytes() == name.as_bytes() {
                return child;
            }
            child = (*child).sibling;
        }
    }
    ptr::null_mut()
}

/// # Safety
/// `xml` a node or NULL, `attr` a C string.
#[no_mangle]
pub unsafe extern "C" fn switch_xml_attr_soft(
    xml: switch_xml_t,
    attr: *const c_char,
) -> *const c_char {
    static EMPTY: &[u8; 1] = b"\0";
    if !live_node(xml, "switch_xml_attr_soft") {
        return EMPTY.as_ptr().cast();
    }
    // SAFETY: C string from the module (or NULL).
    let Some(attr) = (unsafe { c_text(attr) }) else {
        return EMPTY.as_ptr().cast();
    };
    // SAFETY: a live node; attribute list is name/value pairs ending in NULL.
    unsafe {
        let mut list = (*xml).attr;
        while !list.is_null() && !(*list).is_null() {
            if std::ffi::CStr::from_ptr(*list).to_bytes() == attr.as_bytes() {
                let value = *list.add(1);
                return if value.is_null() {
                    EMPTY.as_ptr().cast()
                } else {
                    value
                };
            }
            list = list.add(2);
        }
    }
    EMPTY.as_ptr().cast()
}

/// # Safety
/// `xml` must be a root returned by `switch_xml_open_cfg` (or NULL).
#[no_mangle]
pub unsafe extern "C" fn switch_xml_free(xml: switch_xml_t) {
    if xml.is_null() {
        return;
    }
    let mut registry = lock(&host().xml);
    if let Some(doc) = registry.open.remove(&(xml as usize)) {
        for address in doc.node_addresses() {
            registry.live_nodes.remove(&address);
            registry.dead_nodes.insert(address);
        }
        registry.freed.push(doc);
        registry.freed_count += 1;
        return;
    }
    let inner = registry.open.values().any(|doc| doc.contains(xml));
    let dead = registry.dead_nodes.contains(&(xml as usize));
    drop(registry);
    if inner {
        violation(
            None,
            "switch_xml_free of a node inside a document, not its root (free what switch_xml_open_cfg returned)",
        );
    } else if dead {
        violation(
            None,
            "switch_xml_free of an already freed document (double free)",
        );
    } else {
        violation(
            None,
            format!("switch_xml_free: {xml:p} is not an XML document"),
        );
    }
}

// ---------------------------------------------------------------------------
// Events

/// # Safety
/// C strings or NULL.
#[no_mangle]
pub unsafe extern "C" fn switch_event_reserve_subclass_detailed(
    owner: *const c_char,
    subclass: *const c_char,
) -> switch_status_t {
    // SAFETY: C strings from the module (or NULL).
    let (owner, subclass) = unsafe { (c_text(owner), c_text(subclass)) };
    let Some(subclass) = subclass else {
        violation(
            None,
            "switch_event_reserve_subclass_detailed: NULL subclass",
        );
        return SWITCH_STATUS_FALSE;
    };
    let mut events = lock(&host().events);
    if events.reserved.contains_key(&subclass) {
        return SWITCH_STATUS_INUSE;
    }
    events.reserved.insert(subclass, owner.unwrap_or_default());
    SWITCH_STATUS_SUCCESS
}

/// # Safety
/// C strings or NULL.
#[no_mangle]
pub unsafe extern "C" fn switch_event_free_subclass_detailed(
    owner: *const c_char,
    subclass: *const c_char,
) -> switch_status_t {
    // SAFETY: C strings from the module (or NULL).
    let (owner, subclass) = unsafe { (c_text(owner), c_text(subclass)) };
    let Some(subclass) = subclass else {
        return SWITCH_STATUS_FALSE;
    };
    let mut events = lock(&host().events);
    match events.reserved.get(&subclass) {
        Some(reserved_by) if owner.as_deref().map_or(true, |o| o == reserved_by) => {
            events.reserved.remove(&subclass);
            SWITCH_STATUS_SUCCESS
        }
        Some(_) => {
            drop(events);
            violation(
                None,
                format!("switch_event_free_subclass_detailed({subclass}): wrong owner"),
            );
            SWITCH_STATUS_FALSE
        }
        None => SWITCH_STATUS_FALSE,
    }
}

const SWITCH_STATUS_INUSE: switch_status_t = 10;

/// # Safety
/// `event` writable; C strings or NULL.
#[no_mangle]
pub unsafe extern "C" fn switch_event_create_subclass_detailed(
    file: *const c_char,
    func: *const c_char,
    line: c_int,
    event: *mut *mut switch_event_t,
    event_id: switch_event_types_t,
    subclass: *const c_char,
) -> switch_status_t {
    if event.is_null() {
        violation(None, "switch_event_create_subclass_detailed: event is NULL");
        return SWITCH_STATUS_FALSE;
    }
    // SAFETY: C strings from the module (or NULL).
    let (file, func, subclass) = unsafe { (c_text(file), c_text(func), c_text(subclass)) };
    if subclass.is_some() && event_id != SWITCH_EVENT_CUSTOM {
        // SAFETY: checked non-NULL.
        unsafe { *event = ptr::null_mut() };
        return SWITCH_STATUS_GENERR;
    }
    let mut events = lock(&host().events);
    if let Some(name) = &subclass {
        if !events.reserved.contains_key(name) {
            drop(events);
            violation(
                None,
                format!("event subclass {name} created without being reserved"),
            );
            events = lock(&host().events);
        }
    }
    let handle = Box::into_raw(Box::new(0x4556_454e_5400_0000u64)) as usize;
    events.live.insert(
        handle,
        LiveEvent {
            event_id,
            subclass,
            headers: Vec::new(),
            created_at: format!(
                "{}:{}:{line}",
                file.unwrap_or_default(),
                func.unwrap_or_default()
            ),
        },
    );
    // SAFETY: checked non-NULL.
    unsafe { *event = handle as *mut switch_event_t };
    SWITCH_STATUS_SUCCESS
}

/// # Safety
/// `event` an event pointer; C strings or NULL.
#[no_mangle]
pub unsafe extern "C" fn switch_event_add_header_string(
    event: *mut switch_event_t,
    stack: switch_stack_t,
    name: *const c_char,
    value: *const c_char,
) -> switch_status_t {
    // SAFETY: C strings from the module (or NULL).
    let (name, value) = unsafe { (c_text(name), c_text(value)) };
    let mut events = lock(&host().events);
    let Some(live) = events.live.get_mut(&(event as usize)) else {
        drop(events);
        violation(
            None,
            format!("switch_event_add_header_string: {event:p} is not a live event"),
        );
        return SWITCH_STATUS_FALSE;
    };
    let (Some(name), Some(value)) = (name, value) else {
        return SWITCH_STATUS_GENERR;
    };
    if stack & 2 != 0 {
        live.headers.insert(0, (name, value)); // SWITCH_STACK_TOP
    } else {
        live.headers.push((name, value));
    }
    SWITCH_STATUS_SUCCESS
}

/// # Safety
/// `event` a writable pointer to an event pointer.
#[no_mangle]
pub unsafe extern "C" fn switch_event_fire_detailed(
    file: *const c_char,
    func: *const c_char,
    line: c_int,
    event: *mut *mut switch_event_t,
    _user_data: *mut c_void,
) -> switch_status_t {
    if event.is_null() {
        violation(None, "switch_event_fire_detailed: event is NULL");
        return SWITCH_STATUS_FALSE;
    }
    // SAFETY: checked non-NULL.
    let handle = unsafe { *event };
    let mut events = lock(&host().events);
    let Some(live) = events.live.remove(&(handle as usize)) else {
        drop(events);
        violation(
            None,
            format!("switch_event_fire_detailed: {handle:p} is not a live event (fired twice?)"),
        );
        return SWITCH_STATUS_FALSE;
    };
    // SAFETY: C strings from the module (or NULL).
    let (file, func) = unsafe { (c_text(file), c_text(func)) };
    let headers: serde_json::Map<String, serde_json::Value> = live
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let ordered: Vec<serde_json::Value> = live.headers.iter().map(|(k, v)| json!([k, v])).collect();
    events.fired.push(json!({
        "event_id": live.event_id,
        "event_name": if live.event_id == SWITCH_EVENT_CUSTOM { "CUSTOM" } else { "OTHER" },
        "subclass": live.subclass,
        "headers": headers,
        "header_list": ordered,
        "created_at": live.created_at,
        "fired_at": format!("{}:{}:{line}", file.unwrap_or_default(), func.unwrap_or_default()),
    }));
    // SAFETY: checked non-NULL; fired events are consumed.
    unsafe { *event = ptr::null_mut() };
    SWITCH_STATUS_SUCCESS
}

// ---------------------------------------------------------------------------

extern "C" {
    fn switch_log_printf(
        channel: switch_text_channel_t,
        file: *const c_char,
        func: *const c_char,
        line: c_int,
        userdata: *const c_char,
        level: switch_log_level_t,
        fmt: *const c_char,
        ...
    );
}

/// Holds a reference to every exported function, so neither the compiler nor
/// the linker drops one (the executable itself never calls most of them) and
/// shim.c's object is linked in.
#[used]
static KEEP: [unsafe extern "C" fn(); 34] = {
    macro_rules! keep {
        ($($f:path),* $(,)?) => {
            // SAFETY: only addresses are taken; these are never called through this type.
            [$(unsafe { std::mem::transmute::<*const (), unsafe extern "C" fn()>($f as *const ()) }),*]
        };
    }
    keep![
        switch_loadable_module_create_module_interface,
        switch_loadable_module_create_interface,
        switch_core_session_perform_locate,
        switch_core_session_rwunlock,
        switch_core_session_get_channel,
        switch_core_session_get_uuid,
        switch_core_session_get_read_codec,
        switch_core_session_get_write_codec,
        switch_channel_get_variable_dup,
        switch_channel_get_private,
        switch_channel_set_private,
        switch_core_event_hook_add_recv_dtmf,
        switch_core_event_hook_remove_recv_dtmf,
        switch_core_media_bug_add,
        switch_core_media_bug_remove,
        switch_core_media_bug_remove_callback,
        switch_core_media_bug_get_session,
        switch_core_media_bug_get_native_read_frame,
        switch_core_media_bug_get_native_write_frame,
        switch_core_media_bug_get_write_replace_frame,
        switch_core_media_bug_set_write_replace_frame,
        switch_core_media_bug_read,
        switch_log_printf,
        switch_xml_open_cfg,
        switch_xml_child,
        switch_xml_attr_soft,
        switch_xml_free,
        switch_event_reserve_subclass_detailed,
        switch_event_free_subclass_detailed,
        switch_event_create_subclass_detailed,
        switch_event_add_header_string,
        switch_event_fire_detailed,
        fs_host_log,
        fs_host_stream_violation,
    ]
};

/// The exported `switch_*` names (for `symbols` reports and tests).
pub(crate) const NAMES: &[&str] = &[
    "switch_loadable_module_create_module_interface",
    "switch_loadable_module_create_interface",
    "switch_core_session_perform_locate",
    "switch_core_session_rwunlock",
    "switch_core_session_get_channel",
    "switch_core_session_get_uuid",
    "switch_core_session_get_read_codec",
    "switch_core_session_get_write_codec",
    "switch_channel_get_variable_dup",
    "switch_channel_get_private",
    "switch_channel_set_private",
    "switch_core_event_hook_add_recv_dtmf",
    "switch_core_event_hook_remove_recv_dtmf",
    "switch_core_media_bug_add",
    "switch_core_media_bug_remove",
    "switch_core_media_bug_remove_callback",
    "switch_core_media_bug_get_session",
    "switch_core_media_bug_get_native_read_frame",
    "switch_core_media_bug_get_native_write_frame",
    "switch_core_media_bug_get_write_replace_frame",
    "switch_core_media_bug_set_write_replace_frame",
    "switch_core_media_bug_read",
    "switch_log_printf",
    "switch_xml_open_cfg",
    "switch_xml_child",
    "switch_xml_attr_soft",
    "switch_xml_free",
    "switch_event_reserve_subclass_detailed",
    "switch_event_free_subclass_detailed",
    "switch_event_create_subclass_detailed",
    "switch_event_add_header_string",
    "switch_event_fire_detailed",
];
