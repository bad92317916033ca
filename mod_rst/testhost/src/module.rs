//! Loading and unloading the module the way FreeSWITCH's
//! switch_loadable_module.c does, and calling its applications and APIs.

use std::collections::HashSet;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::state::*;
use crate::types::*;

extern "C" {
    fn fs_host_stream_new() -> *mut c_void;
    fn fs_host_stream_close(handle: *mut c_void, writes: *mut u32) -> *mut c_char;
    fn fs_host_stream_write(handle: *mut c_void, fmt: *const c_char, ...) -> c_int;
}

#[derive(Clone, Debug)]
pub(crate) struct App {
    pub(crate) name: String,
    pub(crate) function: switch_application_function_t,
    pub(crate) syntax: Option<String>,
    pub(crate) short_desc: Option<String>,
    pub(crate) flags: u32,
}

#[derive(Clone, Debug)]
pub(crate) struct Api {
    pub(crate) name: String,
    pub(crate) function: switch_api_function_t,
    pub(crate) syntax: Option<String>,
    pub(crate) desc: Option<String>,
}

struct Loaded {
    handle: usize,
    path: PathBuf,
    dir: PathBuf,
    shutdown: switch_module_shutdown_t,
    apps: Vec<App>,
    apis: Vec<Api>,
    tids_before: HashSet<i64>,
    runtime: Option<std::thread::JoinHandle<()>>,
}

static LOADED: Mutex<Option<Loaded>> = Mutex::new(None);

/// Module interfaces made by `switch_loadable_module_create_module_interface`
/// (addresses of leaked boxes: the host reads them after the module is gone).
static INTERFACES: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// A fake memory pool: the module only hands it back to us.
static POOL: u64 = 0x504f_4f4c;

fn pool() -> *mut switch_memory_pool_t {
    ptr::addr_of!(POOL) as *mut switch_memory_pool_t
}

pub(crate) fn create_module_interface(
    pool_arg: *mut switch_memory_pool_t,
    name: Option<String>,
) -> *mut switch_loadable_module_interface_t {
    if pool_arg != pool() {
        violation(
            None,
            "switch_loadable_module_create_module_interface: not the pool passed to load()",
        );
    }
    let Some(name) = name else {
        violation(
            None,
            "switch_loadable_module_create_module_interface: NULL name",
        );
        return ptr::null_mut();
    };
    // SAFETY: an all-zero interface is valid (NULL pointers, zero refs).
    let mut iface: switch_loadable_module_interface_t = unsafe { std::mem::zeroed() };
    iface.module_name = CString::new(name).unwrap_or_default().into_raw();
    iface.pool = pool_arg;
    let pointer = Box::into_raw(Box::new(iface));
    lock(&INTERFACES).push(pointer as usize);
    pointer
}

pub(crate) fn create_interface(
    module: *mut switch_loadable_module_interface_t,
    iname: switch_module_interface_name_t,
) -> *mut c_void {
    if !lock(&INTERFACES).contains(&(module as usize)) {
        violation(
            None,
            format!(
                "switch_loadable_module_create_interface: {module:p} is not a module interface"
            ),
        );
        return ptr::null_mut();
    }
    // SAFETY: `module` is one of our live boxes (checked above).
    let module_ref = unsafe { &mut *module };
    match iname {
        SWITCH_APPLICATION_INTERFACE => {
            // SAFETY: an all-zero interface is valid (None functions, NULL pointers).
            let mut app: switch_application_interface_t = unsafe { std::mem::zeroed() };
            app.parent = module;
            let pointer = Box::into_raw(Box::new(app));
            let mut slot = &mut module_ref.application_interface;
            // SAFETY: the list holds only our boxes.
            unsafe {
                while !slot.is_null() {
                    slot = &mut (**slot).next;
                }
            }
            *slot = pointer;
            pointer.cast()
        }
        SWITCH_API_INTERFACE => {
            // SAFETY: as above.
            let mut api: switch_api_interface_t = unsafe { std::mem::zeroed() };
            api.parent = module;
            let pointer = Box::into_raw(Box::new(api));
            let mut slot = &mut module_ref.api_interface;
            // SAFETY: the list holds only our boxes.
            unsafe {
                while !slot.is_null() {
                    slot = &mut (**slot).next;
                }
            }
            *slot = pointer;
            pointer.cast()
        }
        other => {
            violation(
                None,
                format!("switch_loadable_module_create_interface: interface type {other} is not simulated"),
            );
            ptr::null_mut()
        }
    }
}

fn dlerror_text() -> String {
    // SAFETY: dlerror returns NULL or a C string valid until the next dl call.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

/// Thread ids of this process, with their names.
pub(crate) fn threads() -> Vec<(i64, String)> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc/self/task") {
        for entry in entries.flatten() {
            let Ok(tid) = entry.file_name().to_string_lossy().parse::<i64>() else {
                continue;
            };
            let name = std::fs::read_to_string(entry.path().join("comm"))
                .unwrap_or_default()
                .trim()
                .to_owned();
            found.push((tid, name));
        }
    }
    found
}

pub(crate) fn register_host_thread() {
    // SAFETY: gettid has no preconditions.
    let tid = i64::from(unsafe { libc::gettid() });
    lock(&host().host_tids).insert(tid);
}

/// Runs `f` marked as inside a module entry point.
fn entry<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    let previous = IN_MODULE.with(|c| c.replace(Some(name)));
    let result = f();
    IN_MODULE.with(|c| c.set(previous));
    result
}

/// `load SO_PATH CONF_DIR`.
pub(crate) fn load(so_path: &Path, conf_dir: &Path) -> Result<Value, String> {
    let mut loaded = lock(&LOADED);
    if loaded.is_some() {
        return Err("a module is already loaded".into());
    }
    *lock(&host().conf_dir) = Some(conf_dir.to_owned());
    // FreeSWITCH cuts the file name at its first '.' and looks up
    // `<that>_module_interface`; cargo's cdylib is lib<name>.so.
    let file = so_path
        .file_name()
        .ok_or("SO_PATH has no file name")?
        .to_string_lossy()
        .into_owned();
    let stem = file.split('.').next().unwrap_or_default();
    let name = stem.strip_prefix("lib").unwrap_or(stem).to_owned();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "fs-testhost-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(format!("{name}.so"));
    if let Err(e) = std::fs::copy(so_path, &path) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(format!("copy {}: {e}", so_path.display()));
    }
    let tids_before: HashSet<i64> = threads().into_iter().map(|(t, _)| t).collect();
    let c_path = CString::new(path.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: dlopen of a file we just copied; the module's initialisers run.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(format!("dlopen: {}", dlerror_text()));
    }
    let symbol = format!("{name}_module_interface");
    let c_symbol = CString::new(symbol.clone()).unwrap_or_default();
    // SAFETY: dlsym on a live handle.
    let table = unsafe { libc::dlsym(handle, c_symbol.as_ptr()) }
        as *const switch_loadable_module_function_table_t;
    let fail = |message: String| {
        // SAFETY: the handle is live; nothing of the module is referenced any more.
        unsafe { libc::dlclose(handle) };
        let _ = std::fs::remove_dir_all(&dir);
        Err(message)
    };
    if table.is_null() {
        return fail(format!("undefined symbol: {symbol} ({})", dlerror_text()));
    }
    // SAFETY: the symbol is the module's function table (FreeSWITCH's contract).
    let (version, load_fn, shutdown, runtime, flags) = unsafe {
        (
            (*table).switch_api_version,
            (*table).load,
            (*table).shutdown,
            (*table).runtime,
            (*table).flags,
        )
    };
    if version != SWITCH_API_VERSION {
        return fail(format!(
            "Trying to load {name} with wrong API version: {version} (expected {SWITCH_API_VERSION})"
        ));
    }
    let Some(load_fn) = load_fn else {
        return fail("the function table has no load function".into());
    };
    let mut iface: *mut switch_loadable_module_interface_t = ptr::null_mut();
    let started = Instant::now();
    // SAFETY: called as FreeSWITCH calls it: a pointer to receive the interface and a pool.
    let status = entry("load", || unsafe { load_fn(&mut iface, pool()) });
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    if status != SWITCH_STATUS_SUCCESS {
        return fail(format!("load returned status {status}"));
    }
    if iface.is_null() {
        return fail("load returned SUCCESS but no module interface".into());
    }
    if !lock(&INTERFACES).contains(&(iface as usize)) {
        return fail(
            "load returned an interface not made by switch_loadable_module_create_module_interface"
                .into(),
        );
    }
    let mut apps = Vec::new();
    let mut apis = Vec::new();
    // SAFETY: the lists hold our boxes, filled by the module with its strings.
    unsafe {
        let module_name = c_text((*iface).module_name);
        if module_name.as_deref() != Some(name.as_str()) {
            violation(
                None,
                format!("module interface named {module_name:?}, file is {name}.so"),
            );
        }
        let mut app = (*iface).application_interface;
        while !app.is_null() {
            match c_text((*app).interface_name) {
                Some(app_name) if (*app).application_function.is_some() => apps.push(App {
                    name: app_name,
                    function: (*app).application_function,
                    syntax: c_text((*app).syntax),
                    short_desc: c_text((*app).short_desc),
                    flags: (*app).flags,
                }),
                other => violation(
                    None,
                    format!("application interface {other:?} without a name or function"),
                ),
            }
            app = (*app).next;
        }
        let mut api = (*iface).api_interface;
        while !api.is_null() {
            match c_text((*api).interface_name) {
                Some(api_name) if (*api).function.is_some() => apis.push(Api {
                    name: api_name,
                    function: (*api).function,
                    syntax: c_text((*api).syntax),
                    desc: c_text((*api).desc),
                }),
                other => violation(
                    None,
                    format!("API interface {other:?} without a name or function"),
                ),
            }
            api = (*api).next;
        }
    }
    // FreeSWITCH runs `runtime` in its own thread until it stops returning SUCCESS.
    let runtime_thread = runtime.map(|runtime| {
        std::thread::spawn(move || {
            register_host_thread();
            // SAFETY: the module's runtime function, called as FreeSWITCH does.
            while entry("runtime", || unsafe { runtime() }) == SWITCH_STATUS_SUCCESS {}
        })
    });
    let result = json!({
        "module": name,
        "path": path,
        "api_version": version,
        "flags": flags,
        "load_ms": load_ms,
        "has_shutdown": shutdown.is_some(),
        "has_runtime": runtime.is_some(),
        "applications": apps.iter().map(|a| json!({
            "name": a.name, "syntax": a.syntax, "short_desc": a.short_desc, "flags": a.flags,
        })).collect::<Vec<_>>(),
        "apis": apis.iter().map(|a| json!({
            "name": a.name, "syntax": a.syntax, "desc": a.desc,
        })).collect::<Vec<_>>(),
    });
    *loaded = Some(Loaded {
        handle: handle as usize,
        path,
        dir,
        shutdown,
        apps,
        apis,
        tids_before,
        runtime: runtime_thread,
    });
    Ok(result)
}

/// `unload`: shutdown(), the checks FreeSWITCH cannot make, then dlclose.
pub(crate) fn unload() -> Result<Value, String> {
    let Some(mut loaded) = lock(&LOADED).take() else {
        return Err("no module loaded".into());
    };
    let started = Instant::now();
    let status = match loaded.shutdown {
        // SAFETY: the module's shutdown, called as FreeSWITCH calls it.
        Some(shutdown) => entry("shutdown", || unsafe { shutdown() }),
        None => SWITCH_STATUS_SUCCESS,
    };
    let shutdown_ms = started.elapsed().as_secs_f64() * 1000.0;
    let host = host();
    // Bugs still attached would call into unmapped code: detach them, silently.
    let mut orphaned = Vec::new();
    for session in lock(&host.order).iter() {
        let mut list = session.bug_list.write().unwrap_or_else(|e| e.into_inner());
        for bug in list.drain(..) {
            bug.state.store(BUG_ORPHANED, Ordering::SeqCst);
            orphaned.push(json!({"uuid": session.uuid, "bug": bug.id, "function": bug.function}));
        }
    }
    if !orphaned.is_empty() {
        violation(
            None,
            format!(
                "{} media bug(s) still attached after shutdown returned (FreeSWITCH would call into the unloaded module)",
                orphaned.len()
            ),
        );
    }
    let hooked: Vec<String> = lock(&host.order)
        .iter()
        .filter(|s| !lock(&s.recv_dtmf_hooks).is_empty())
        .map(|s| s.uuid.clone())
        .collect();
    if !hooked.is_empty() {
        violation(
            None,
            format!(
                "recv_dtmf hooks still set after shutdown returned on {hooked:?} (FreeSWITCH would call into the unloaded module)"
            ),
        );
    }
    let locks: Vec<Value> = lock(&host.order)
        .iter()
        .filter(|s| s.locks.load(Ordering::SeqCst) > 0)
        .map(|s| json!({"uuid": s.uuid, "locks": s.locks.load(Ordering::SeqCst)}))
        .collect();
    if !locks.is_empty() {
        violation(
            None,
            format!("session read locks still held after shutdown: {locks:?}"),
        );
    }
    let open_xml = lock(&host.xml).open.len();
    if open_xml > 0 {
        violation(
            None,
            format!("{open_xml} XML document(s) not freed with switch_xml_free"),
        );
    }
    let (reserved, live_events) = {
        let events = lock(&host.events);
        (
            events.reserved.keys().cloned().collect::<Vec<_>>(),
            events
                .live
                .values()
                .map(|e| e.created_at.clone())
                .collect::<Vec<_>>(),
        )
    };
    if !reserved.is_empty() {
        violation(
            None,
            format!("event subclasses still reserved after shutdown: {reserved:?}"),
        );
    }
    if !live_events.is_empty() {
        violation(
            None,
            format!("events created but never fired: {live_events:?}"),
        );
    }
    // Threads the module started and did not join.
    let deadline = Instant::now() + Duration::from_millis(1000);
    let left = loop {
        let host_tids = lock(&host.host_tids).clone();
        let left: Vec<(i64, String)> = threads()
            .into_iter()
            .filter(|(t, _)| !loaded.tids_before.contains(t) && !host_tids.contains(t))
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(runtime) = loaded.runtime.take() {
        if runtime.is_finished() {
            let _ = runtime.join();
        } else {
            violation(
                None,
                "the module's runtime function is still running after shutdown",
            );
        }
    }
    let mut dlclosed = false;
    let mut still_mapped = false;
    if left.is_empty() {
        // SAFETY: nothing of the module is referenced any more (bugs orphaned,
        // applications and APIs forgotten, no module thread left).
        unsafe { libc::dlclose(loaded.handle as *mut c_void) };
        dlclosed = true;
        let c_path = CString::new(loaded.path.to_string_lossy().as_bytes()).unwrap_or_default();
        // SAFETY: RTLD_NOLOAD only asks whether the object is still mapped.
        let again = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
        if !again.is_null() {
            still_mapped = true;
            // SAFETY: drops the reference RTLD_NOLOAD just took.
            unsafe { libc::dlclose(again) };
        }
    } else {
        violation(
            None,
            format!("module threads still running after shutdown: {left:?}; not unloading the .so"),
        );
    }
    let _ = std::fs::remove_dir_all(&loaded.dir);
    Ok(json!({
        "status": status,
        "shutdown_ms": shutdown_ms,
        "orphaned_bugs": orphaned,
        "threads_left": left.iter().map(|(t, n)| json!({"tid": t, "name": n})).collect::<Vec<_>>(),
        "dlclosed": dlclosed,
        "still_mapped": still_mapped,
    }))
}

/// Removes the temp copy of a module still loaded at exit (a mapped file may be unlinked).
pub(crate) fn remove_copy() {
    if let Some(loaded) = lock(&LOADED).as_ref() {
        let _ = std::fs::remove_dir_all(&loaded.dir);
    }
}

pub(crate) fn is_loaded() -> bool {
    lock(&LOADED).is_some()
}

/// `app UUID NAME [DATA]`: runs the application in this thread (FreeSWITCH
/// runs it in the session's thread).
pub(crate) fn run_app(uuid: &str, name: &str, data: Option<&str>) -> Result<Value, String> {
    let app = {
        let loaded = lock(&LOADED);
        let loaded = loaded.as_ref().ok_or("no module loaded")?;
        loaded
            .apps
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
            .cloned()
            .ok_or_else(|| format!("Invalid Application {name}"))?
    };
    let session = lock(&host().by_uuid)
        .get(uuid)
        .cloned()
        .ok_or_else(|| format!("no session {uuid}"))?;
    if session.hung_up.load(Ordering::SeqCst) {
        return Err(format!("session {uuid} is hung up"));
    }
    let data_c = data.map(|d| CString::new(d).unwrap_or_default());
    let data_ptr = data_c.as_ref().map_or(ptr::null(), |d| d.as_ptr());
    let function = app.function.ok_or("application without a function")?;
    let started = Instant::now();
    // SAFETY: called as FreeSWITCH calls an application: the session and its data.
    entry("application", || unsafe {
        function(session.pointer(), data_ptr)
    });
    Ok(json!({"duration_ms": started.elapsed().as_secs_f64() * 1000.0}))
}

/// `api NAME ARGS`: as switch_api_execute, with a standard stream and no session.
pub(crate) fn run_api(name: &str, cmd: Option<&str>) -> Result<Value, String> {
    let api = {
        let loaded = lock(&LOADED);
        let loaded = loaded.as_ref().ok_or("no module loaded")?;
        loaded
            .apis
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
            .cloned()
    };
    let Some(api) = api else {
        return Ok(json!({"status": SWITCH_STATUS_FALSE, "output": "INVALID COMMAND!\n"}));
    };
    let function = api.function.ok_or("API without a function")?;
    let cmd_c = cmd.map(|c| CString::new(c).unwrap_or_default());
    let cmd_ptr = cmd_c.as_ref().map_or(ptr::null(), |c| c.as_ptr());
    // SAFETY: a fresh host stream.
    let stream = unsafe { fs_host_stream_new() };
    if stream.is_null() {
        return Err("out of memory".into());
    }
    let started = Instant::now();
    // SAFETY: called as switch_api_execute calls it.
    let status = entry("api", || unsafe {
        function(
            cmd_ptr,
            ptr::null_mut(),
            stream.cast::<switch_stream_handle_t>(),
        )
    });
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    if status != SWITCH_STATUS_SUCCESS {
        // SAFETY: the stream is still open; a literal format without arguments.
        unsafe { fs_host_stream_write(stream, c"COMMAND RETURNED ERROR!\n".as_ptr()) };
    }
    let mut writes = 0u32;
    // SAFETY: closes our stream; the returned text is malloc'ed (or NULL).
    let text = unsafe { fs_host_stream_close(stream, &mut writes) };
    // SAFETY: NULL or a NUL-terminated buffer from shim.c.
    let output = unsafe { c_text(text) }.unwrap_or_default();
    // SAFETY: malloc'ed by shim.c, no longer referenced.
    unsafe { libc::free(text.cast()) };
    Ok(json!({"status": status, "output": output, "writes": writes, "duration_ms": duration_ms}))
}

pub(crate) fn interfaces() -> Value {
    let loaded = lock(&LOADED);
    match loaded.as_ref() {
        None => json!({"loaded": false}),
        Some(l) => json!({
            "loaded": true,
            "applications": l.apps.iter().map(|a| a.name.clone()).collect::<Vec<_>>(),
            "apis": l.apis.iter().map(|a| a.name.clone()).collect::<Vec<_>>(),
        }),
    }
}
