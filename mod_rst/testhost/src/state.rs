//! The simulated FreeSWITCH core: sessions, channels, codecs, media bugs,
//! events, logs, XML documents, and the record of everything the module did
//! wrong (`violations`). The `switch_*` functions in `exports.rs` are thin
//! shells over this.
//!
//! Nothing handed to the module is ever freed while the process runs
//! (sessions, bugs, XML nodes, streams stay allocated, marked dead), so a
//! module that uses a stale pointer is reported instead of crashing the host.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::{c_char, c_void, CString};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::Instant;

use rst_net::thread_cpu_ns;
use serde_json::{json, Value};

use crate::types::*;
use crate::xml::XmlDoc;

/// Locks a mutex, ignoring poisoning (a panic elsewhere must not cascade).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The whole host state.
#[derive(Default)]
pub(crate) struct Host {
    /// Live sessions by UUID: what `switch_core_session_perform_locate` finds.
    pub(crate) by_uuid: Mutex<HashMap<String, Arc<Session>>>,
    /// Every session ever created, by the address handed to the module.
    pub(crate) by_ptr: RwLock<HashMap<usize, Arc<Session>>>,
    /// Every session ever created, by its channel's address.
    pub(crate) by_channel: RwLock<HashMap<usize, Arc<Session>>>,
    /// Every media bug ever created, by address.
    pub(crate) bugs: RwLock<HashMap<usize, Arc<Bug>>>,
    /// Sessions in creation order (for reports).
    pub(crate) order: Mutex<Vec<Arc<Session>>>,
    pub(crate) next_id: AtomicU64,
    pub(crate) violations: Mutex<Violations>,
    pub(crate) logs: Mutex<Logs>,
    pub(crate) events: Mutex<Events>,
    pub(crate) xml: Mutex<XmlRegistry>,
    pub(crate) conf_dir: Mutex<Option<std::path::PathBuf>>,
    /// Thread ids of every thread the host itself started.
    pub(crate) host_tids: Mutex<HashSet<i64>>,
    /// `SWITCH_API_VERSION` checks and the like are reported here too.
    pub(crate) verbose: AtomicBool,
}

// SAFETY: every field is itself Sync (raw pointers live only inside types that
// declare their own Send/Sync with a reason).
unsafe impl Sync for Host {}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Host")
    }
}

static HOST: OnceLock<Host> = OnceLock::new();

pub(crate) fn host() -> &'static Host {
    HOST.get_or_init(Host::default)
}

thread_local! {
    /// Set while this thread is inside a media bug callback: (session id, bug id, abc type).
    pub(crate) static IN_CALLBACK: Cell<Option<(u64, u64, u32)>> = const { Cell::new(None) };
    /// Set while this thread runs a module entry point (load, shutdown, app, api).
    pub(crate) static IN_MODULE: Cell<Option<&'static str>> = const { Cell::new(None) };
    /// `bench`: while set, every callback this thread runs adds its wall
    /// nanoseconds here (the same figure `stats` accumulates).
    pub(crate) static BENCH_SAMPLES: RefCell<Option<Vec<u64>>> = const { RefCell::new(None) };
}

// ---------------------------------------------------------------------------
// Violations and logs

#[derive(Default, Debug)]
pub(crate) struct Violations {
    pub(crate) all: Vec<Value>,
    pub(crate) reported: usize,
}

/// Records something the module did that FreeSWITCH would not survive (or would
/// log as an error). Never panics.
pub(crate) fn violation(uuid: Option<&str>, what: impl Into<String>) {
    let what = what.into();
    let context = IN_CALLBACK
        .with(|c| c.get())
        .map(|(_, _, abc)| abc_name(abc));
    let entry = json!({"uuid": uuid, "what": what, "in_callback": context});
    if host().verbose.load(Ordering::Relaxed) {
        eprintln!("fs-testhost VIOLATION: {entry}");
    }
    let mut violations = lock(&host().violations);
    if violations.all.len() < 10_000 {
        violations.all.push(entry);
    }
}

/// The violations recorded since the last call.
pub(crate) fn new_violations() -> Vec<Value> {
    let mut violations = lock(&host().violations);
    let fresh = violations.all[violations.reported..].to_vec();
    violations.reported = violations.all.len();
    fresh
}

#[derive(Default, Debug)]
pub(crate) struct Logs {
    pub(crate) entries: Vec<Value>,
    pub(crate) dropped: u64,
    pub(crate) by_level: BTreeMap<i32, u64>,
}

pub(crate) const MAX_LOGS: usize = 200_000;

pub(crate) fn level_name(level: i32) -> &'static str {
    match level {
        0 => "CONSOLE",
        1 => "ALERT",
        2 => "CRIT",
        3 => "ERR",
        4 => "WARNING",
        5 => "NOTICE",
        6 => "INFO",
        7 => "DEBUG",
        101..=110 => "DEBUGn",
        _ => "INVALID",
    }
}

pub(crate) fn abc_name(abc: u32) -> &'static str {
    match abc {
        SWITCH_ABC_TYPE_INIT => "INIT",
        SWITCH_ABC_TYPE_READ => "READ",
        SWITCH_ABC_TYPE_WRITE => "WRITE",
        SWITCH_ABC_TYPE_WRITE_REPLACE => "WRITE_REPLACE",
        SWITCH_ABC_TYPE_READ_PING => "READ_PING",
        SWITCH_ABC_TYPE_TAP_NATIVE_READ => "TAP_NATIVE_READ",
        SWITCH_ABC_TYPE_TAP_NATIVE_WRITE => "TAP_NATIVE_WRITE",
        SWITCH_ABC_TYPE_CLOSE => "CLOSE",
        _ => "OTHER",
    }
}

// ---------------------------------------------------------------------------
// Codecs

/// A codec the simulated channels can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum CodecKind {
    Pcmu,
    Pcma,
    L16,
}

impl CodecKind {
    pub(crate) fn parse(name: &str) -> Option<CodecKind> {
        match name.to_ascii_uppercase().as_str() {
            "PCMU" => Some(CodecKind::Pcmu),
            "PCMA" => Some(CodecKind::Pcma),
            "L16" => Some(CodecKind::L16),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            CodecKind::Pcmu => "PCMU",
            CodecKind::Pcma => "PCMA",
            CodecKind::L16 => "L16",
        }
    }

    pub(crate) fn ianacode(self) -> u8 {
        match self {
            CodecKind::Pcmu => 0,
            CodecKind::Pcma => 8,
            CodecKind::L16 => 10,
        }
    }
}

/// The codec implementations, one per (codec, rate), allocated once and never
/// freed (FreeSWITCH's live in the codec module for the process's life).
struct Implementation(*const switch_codec_implementation_t);
// SAFETY: points to a leaked, never mutated implementation.
unsafe impl Send for Implementation {}

pub(crate) fn implementation(kind: CodecKind, rate: u32) -> *const switch_codec_implementation_t {
    static IMPLS: OnceLock<Mutex<HashMap<(CodecKind, u32), Implementation>>> = OnceLock::new();
    let mut impls = lock(IMPLS.get_or_init(Default::default));
    let next_id = impls.len() as u32 + 1;
    impls
        .entry((kind, rate))
        .or_insert_with(|| {
            let samples = rate / 50;
            let encoded = match kind {
                CodecKind::L16 => samples * 2,
                _ => samples,
            };
            // SAFETY: an all-zero implementation is valid (null pointers, zero numbers).
            let mut imp: switch_codec_implementation_t = unsafe { std::mem::zeroed() };
            imp.codec_type = 0; // SWITCH_CODEC_TYPE_AUDIO
            imp.ianacode = kind.ianacode();
            imp.iananame = CString::new(kind.name()).unwrap().into_raw();
            imp.samples_per_second = rate;
            imp.actual_samples_per_second = rate;
            imp.bits_per_second = (encoded * 8 * 50) as i32;
            imp.microseconds_per_packet = 20_000;
            imp.samples_per_packet = samples;
            imp.decoded_bytes_per_packet = samples * 2;
            imp.encoded_bytes_per_packet = encoded;
            imp.number_of_channels = 1;
            imp.codec_frames_per_packet = 1;
            imp.codec_id = u32::from(kind.ianacode());
            imp.impl_id = next_id;
            imp.modname = CString::new("fs-testhost").unwrap().into_raw();
            Implementation(Box::into_raw(Box::new(imp)))
        })
        .0
}

/// A `switch_codec_t` at a fixed address, changed in place on a re-INVITE
/// (as FreeSWITCH re-initialises its media handle's codec).
pub(crate) struct CodecCell(pub(crate) UnsafeCell<switch_codec_t>);
// SAFETY: the host writes the codec only under the session's codec mutex; the
// module reads it the way it would read FreeSWITCH's (unsynchronised, as there).
unsafe impl Sync for CodecCell {}
// SAFETY: see above.
unsafe impl Send for CodecCell {}

impl CodecCell {
    fn new(kind: CodecKind, rate: u32) -> Box<CodecCell> {
        // SAFETY: an all-zero switch_codec_t is valid.
        let mut codec: switch_codec_t = unsafe { std::mem::zeroed() };
        codec.implementation = implementation(kind, rate);
        codec.agreed_pt = kind.ianacode();
        codec.flags = 1 << 0 | 1 << 1; // ENCODE | DECODE
        Box::new(CodecCell(UnsafeCell::new(codec)))
    }

    pub(crate) fn pointer(&self) -> *mut switch_codec_t {
        self.0.get()
    }

    fn set(&self, kind: CodecKind, rate: u32) {
        let codec = self.0.get();
        // SAFETY: the codec box is live; single aligned pointer-sized stores.
        unsafe {
            ptr::write_volatile(
                ptr::addr_of_mut!((*codec).implementation),
                implementation(kind, rate),
            );
            ptr::write_volatile(ptr::addr_of_mut!((*codec).agreed_pt), kind.ianacode());
        }
    }
}

// ---------------------------------------------------------------------------
// Sessions

#[derive(Default, Debug)]
pub(crate) struct Vars {
    pub(crate) values: HashMap<String, CString>,
    /// Values replaced: kept, as FreeSWITCH keeps dup'ed strings in the session pool.
    pub(crate) retired: Vec<CString>,
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Timing {
    pub(crate) count: u64,
    pub(crate) total_ns: u128,
    pub(crate) max_ns: u64,
    pub(crate) over_1ms: u64,
    /// CPU time of the calling thread: unlike wall time, not inflated when the
    /// machine is overloaded and the thread is preempted.
    pub(crate) cpu_total_ns: u128,
    pub(crate) cpu_max_ns: u64,
}

impl Timing {
    pub(crate) fn add(&mut self, ns: u64, cpu_ns: u64) {
        self.count += 1;
        self.total_ns += u128::from(ns);
        self.max_ns = self.max_ns.max(ns);
        if ns > 1_000_000 {
            self.over_1ms += 1;
        }
        self.cpu_total_ns += u128::from(cpu_ns);
        self.cpu_max_ns = self.cpu_max_ns.max(cpu_ns);
    }

    pub(crate) fn merge(&mut self, other: &Timing) {
        self.count += other.count;
        self.total_ns += other.total_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
        self.over_1ms += other.over_1ms;
        self.cpu_total_ns += other.cpu_total_ns;
        self.cpu_max_ns = self.cpu_max_ns.max(other.cpu_max_ns);
    }

    pub(crate) fn to_json(self) -> Value {
        let mean = |total: u128| {
            if self.count == 0 {
                0
            } else {
                (total / u128::from(self.count)) as u64
            }
        };
        json!({
            "count": self.count, "mean_ns": mean(self.total_ns), "max_ns": self.max_ns,
            "over_1ms": self.over_1ms,
            "cpu_mean_ns": mean(self.cpu_total_ns), "cpu_max_ns": self.cpu_max_ns,
        })
    }
}

/// A run of frames sent with the same codec and tone.
#[derive(Clone, Debug)]
pub(crate) struct Segment {
    pub(crate) codec: CodecKind,
    pub(crate) rate: u32,
    pub(crate) hz: f64,
    pub(crate) amp: f64,
    pub(crate) first_sample: u64,
    pub(crate) first_frame: u64,
    pub(crate) frames: u64,
}

impl Segment {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "codec": self.codec.name(), "rate": self.rate, "hz": self.hz, "amp": self.amp,
            "first_sample": self.first_sample, "first_frame": self.first_frame, "frames": self.frames,
        })
    }
}

/// One direction's sent audio, as segments of constant codec.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sent {
    /// Samples sent so far (the tone's sample index of the next frame).
    pub(crate) next_sample: u64,
    pub(crate) frames: u64,
    pub(crate) segments: Vec<Segment>,
}

impl Sent {
    fn to_json(&self) -> Value {
        let segments: Vec<Value> = self.segments.iter().map(Segment::to_json).collect();
        json!({"frames": self.frames, "samples": self.next_sample, "segments": segments})
    }
}

#[derive(Debug, Default)]
pub(crate) struct MediaState {
    pub(crate) read: Sent,
    pub(crate) write: Sent,
    /// What the channel wrote after the WRITE_REPLACE bugs (what the caller
    /// heard), linear, decoded as the far end decodes it; bounded.
    pub(crate) heard: Vec<i16>,
    /// Per frame written: when (CLOCK_MONOTONIC, ns), its first sample, and
    /// whether all its samples were that one (how benchmarks tag audio).
    pub(crate) heard_frames: Vec<(u64, i16, bool)>,
    pub(crate) running: bool,
    pub(crate) thread: Option<std::thread::JoinHandle<()>>,
    pub(crate) late_ticks: u64,
}

pub(crate) struct Session {
    pub(crate) id: u64,
    pub(crate) uuid: String,
    pub(crate) uuid_c: CString,
    /// Its address is the `switch_channel_t *`.
    pub(crate) channel_tag: Box<u64>,
    pub(crate) vars: Mutex<Vars>,
    pub(crate) privates: Mutex<HashMap<String, usize>>,
    /// `switch_recv_dtmf_hook_t`s the module added, as addresses.
    pub(crate) recv_dtmf_hooks: Mutex<Vec<usize>>,
    pub(crate) read_codec: Box<CodecCell>,
    pub(crate) write_codec: Box<CodecCell>,
    pub(crate) codec: Mutex<(CodecKind, u32)>,
    /// The write codec when it differs from the read codec (same rate): set by
    /// `session ... write_codec=`, cleared by a re-INVITE (`codec`).
    pub(crate) write_kind: Mutex<Option<CodecKind>>,
    /// Held by the media thread for a whole tick and by a codec change, as
    /// FreeSWITCH's codec_read/write mutexes: a re-INVITE never lands mid-frame.
    pub(crate) codec_io: Mutex<()>,
    /// Read locks the module holds now.
    pub(crate) locks: AtomicI64,
    pub(crate) locates: AtomicU64,
    pub(crate) failed_locates: AtomicU64,
    pub(crate) unlocks: AtomicU64,
    pub(crate) bad_unlocks: AtomicU64,
    pub(crate) locks_at_hangup: AtomicI64,
    pub(crate) hung_up: AtomicBool,
    /// Hangup is still closing the bugs (FreeSWITCH's session thread still owns
    /// the session then, whatever the read locks).
    pub(crate) hanging_up: AtomicBool,
    /// Hung up and every read lock released: any use now is a use after free.
    pub(crate) destroyed: AtomicBool,
    pub(crate) stop_media: AtomicBool,
    /// The session's bug list; the media thread holds it for reading during a tick.
    pub(crate) bug_list: RwLock<Vec<Arc<Bug>>>,
    pub(crate) bugs_added: AtomicU64,
    pub(crate) timings: Mutex<BTreeMap<&'static str, Timing>>,
    pub(crate) media: Mutex<MediaState>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("uuid", &self.uuid).finish()
    }
}

impl Session {
    pub(crate) fn pointer(self: &Arc<Self>) -> *mut switch_core_session_t {
        Arc::as_ptr(self) as *mut switch_core_session_t
    }

    pub(crate) fn channel(&self) -> *mut switch_channel_t {
        &*self.channel_tag as *const u64 as *mut switch_channel_t
    }

    pub(crate) fn set_var(&self, name: &str, value: &str) {
        let value = CString::new(value.replace('\0', "")).unwrap_or_default();
        let mut vars = lock(&self.vars);
        if let Some(old) = vars.values.insert(name.to_owned(), value) {
            vars.retired.push(old);
        }
    }

    pub(crate) fn set_codec(&self, kind: CodecKind, rate: u32) {
        let _io = lock(&self.codec_io);
        let mut codec = lock(&self.codec);
        self.read_codec.set(kind, rate);
        self.write_codec.set(kind, rate);
        *codec = (kind, rate);
        *lock(&self.write_kind) = None;
    }

    /// Gives the write direction its own codec, at the read codec's rate.
    pub(crate) fn set_write_codec(&self, kind: CodecKind) {
        let _io = lock(&self.codec_io);
        let (_, rate) = *lock(&self.codec);
        self.write_codec.set(kind, rate);
        *lock(&self.write_kind) = Some(kind);
    }

    pub(crate) fn time(&self, abc: u32, ns: u64, cpu_ns: u64) {
        let mut timings = lock(&self.timings);
        timings.entry(abc_name(abc)).or_default().add(ns, cpu_ns);
        timings.entry("ALL").or_default().add(ns, cpu_ns);
    }

    /// Marks the session destroyed once it is hung up and unlocked.
    pub(crate) fn maybe_destroy(&self) {
        if self.hung_up.load(Ordering::SeqCst)
            && !self.hanging_up.load(Ordering::SeqCst)
            && self.locks.load(Ordering::SeqCst) <= 0
        {
            self.destroyed.store(true, Ordering::SeqCst);
        }
    }

    pub(crate) fn stats(&self) -> Value {
        let timings: serde_json::Map<String, Value> = lock(&self.timings)
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.to_json()))
            .collect();
        let media = lock(&self.media);
        let bugs: Vec<Value> = self
            .bug_list
            .try_read()
            .map(|list| list.iter().map(|b| b.describe()).collect())
            .unwrap_or_default();
        let (kind, rate) = *lock(&self.codec);
        let write_kind = lock(&self.write_kind).unwrap_or(kind);
        json!({
            "uuid": self.uuid,
            "codec": kind.name(), "rate": rate, "write_codec": write_kind.name(),
            "hung_up": self.hung_up.load(Ordering::SeqCst),
            "destroyed": self.destroyed.load(Ordering::SeqCst),
            "locks_held": self.locks.load(Ordering::SeqCst),
            "locates": self.locates.load(Ordering::SeqCst),
            "failed_locates": self.failed_locates.load(Ordering::SeqCst),
            "unlocks": self.unlocks.load(Ordering::SeqCst),
            "bad_unlocks": self.bad_unlocks.load(Ordering::SeqCst),
            "locks_at_hangup": self.locks_at_hangup.load(Ordering::SeqCst),
            "bugs": bugs,
            "bugs_added": self.bugs_added.load(Ordering::SeqCst),
            "callbacks": timings,
            "media": {
                "running": media.running,
                "late_ticks": media.late_ticks,
                "read": media.read.to_json(),
                "write": media.write.to_json(),
            },
        })
    }
}

/// Creates a session (a new answered channel) and registers it.
pub(crate) fn create_session(
    uuid: &str,
    vars: &[(String, String)],
    kind: CodecKind,
    rate: u32,
) -> Arc<Session> {
    let host = host();
    let session = Arc::new(Session {
        id: host.next_id.fetch_add(1, Ordering::SeqCst) + 1,
        uuid: uuid.to_owned(),
        uuid_c: CString::new(uuid).unwrap_or_default(),
        channel_tag: Box::new(0x4348_414e_4e45_4c00),
        vars: Mutex::default(),
        privates: Mutex::default(),
        recv_dtmf_hooks: Mutex::default(),
        read_codec: CodecCell::new(kind, rate),
        write_codec: CodecCell::new(kind, rate),
        codec: Mutex::new((kind, rate)),
        write_kind: Mutex::new(None),
        codec_io: Mutex::new(()),
        locks: AtomicI64::new(0),
        locates: AtomicU64::new(0),
        failed_locates: AtomicU64::new(0),
        unlocks: AtomicU64::new(0),
        bad_unlocks: AtomicU64::new(0),
        locks_at_hangup: AtomicI64::new(0),
        hung_up: AtomicBool::new(false),
        hanging_up: AtomicBool::new(false),
        destroyed: AtomicBool::new(false),
        stop_media: AtomicBool::new(false),
        bug_list: RwLock::new(Vec::new()),
        bugs_added: AtomicU64::new(0),
        timings: Mutex::default(),
        media: Mutex::default(),
    });
    for codec in [&session.read_codec, &session.write_codec] {
        // SAFETY: the codec box is live and not yet shared.
        unsafe { (*codec.pointer()).session = session.pointer() };
    }
    session.set_var("uuid", uuid);
    for (name, value) in vars {
        session.set_var(name, value);
    }
    let ptr = session.pointer() as usize;
    host.by_ptr
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(ptr, session.clone());
    host.by_channel
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(session.channel() as usize, session.clone());
    lock(&host.order).push(session.clone());
    lock(&host.by_uuid).insert(uuid.to_owned(), session.clone());
    session
}

/// The session behind a pointer the module passed, or a violation.
pub(crate) fn session_of(
    pointer: *mut switch_core_session_t,
    function: &str,
) -> Option<Arc<Session>> {
    if pointer.is_null() {
        violation(None, format!("{function}: NULL session"));
        return None;
    }
    let found = host()
        .by_ptr
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(pointer as usize))
        .cloned();
    match found {
        None => {
            violation(None, format!("{function}: {pointer:p} is not a session"));
            None
        }
        Some(session) => {
            if session.destroyed.load(Ordering::SeqCst) {
                violation(
                    Some(&session.uuid),
                    format!(
                        "{function}: session used after it was destroyed (hung up and unlocked)"
                    ),
                );
            }
            Some(session)
        }
    }
}

pub(crate) fn session_of_channel(
    pointer: *mut switch_channel_t,
    function: &str,
) -> Option<Arc<Session>> {
    if pointer.is_null() {
        violation(None, format!("{function}: NULL channel"));
        return None;
    }
    let found = host()
        .by_channel
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(pointer as usize))
        .cloned();
    match found {
        None => {
            violation(None, format!("{function}: {pointer:p} is not a channel"));
            None
        }
        Some(session) => {
            if session.destroyed.load(Ordering::SeqCst) {
                violation(
                    Some(&session.uuid),
                    format!("{function}: channel used after its session was destroyed"),
                );
            }
            Some(session)
        }
    }
}

// ---------------------------------------------------------------------------
// Media bugs

pub(crate) const BUG_INIT: u8 = 0;
pub(crate) const BUG_READY: u8 = 1;
pub(crate) const BUG_CLOSED: u8 = 2;
/// INIT returned FALSE: destroyed without CLOSE.
pub(crate) const BUG_REFUSED: u8 = 3;
/// Still attached when the module was unloaded: detached without callbacks.
pub(crate) const BUG_ORPHANED: u8 = 4;

#[derive(Debug, Default)]
pub(crate) struct BugAudio {
    pub(crate) read: VecDeque<u8>,
    pub(crate) write: VecDeque<u8>,
    pub(crate) record_frame_size: usize,
}

/// FreeSWITCH's cap on a bug's buffers (MAX_BUG_BUFFER).
const MAX_BUG_BUFFER: usize = 1024 * 512;

pub(crate) struct Bug {
    pub(crate) id: u64,
    pub(crate) session: Arc<Session>,
    pub(crate) callback: switch_media_bug_callback_t,
    pub(crate) user_data: usize,
    pub(crate) function: String,
    pub(crate) target: String,
    pub(crate) flags: u32,
    pub(crate) stop_time: i64,
    pub(crate) state: AtomicU8,
    pub(crate) prune: AtomicBool,
    pub(crate) native_read: AtomicPtr<switch_frame_t>,
    pub(crate) native_write: AtomicPtr<switch_frame_t>,
    /// The linear frame of a WRITE_REPLACE callback, while it runs.
    pub(crate) write_replace: AtomicPtr<switch_frame_t>,
    pub(crate) audio: Mutex<BugAudio>,
    pub(crate) callbacks_after_close: AtomicU64,
    pub(crate) reads_ok: AtomicU64,
    pub(crate) reads_false: AtomicU64,
}

impl std::fmt::Debug for Bug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bug").field("id", &self.id).finish()
    }
}

impl Bug {
    pub(crate) fn pointer(self: &Arc<Self>) -> *mut switch_media_bug_t {
        Arc::as_ptr(self) as *mut switch_media_bug_t
    }

    pub(crate) fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    pub(crate) fn state_name(&self) -> &'static str {
        match self.state.load(Ordering::SeqCst) {
            BUG_INIT => "init",
            BUG_READY => "ready",
            BUG_CLOSED => "closed",
            BUG_REFUSED => "refused",
            _ => "orphaned",
        }
    }

    pub(crate) fn describe(&self) -> Value {
        json!({
            "id": self.id, "function": self.function, "target": self.target,
            "flags": format!("{:#x}", self.flags), "state": self.state_name(),
            "reads_ok": self.reads_ok.load(Ordering::SeqCst),
            "reads_false": self.reads_false.load(Ordering::SeqCst),
        })
    }

    /// Calls the module's callback, timing it. Never for a closed bug.
    pub(crate) fn invoke(self: &Arc<Self>, abc: u32) -> bool {
        let state = self.state.load(Ordering::SeqCst);
        let allowed = match abc {
            SWITCH_ABC_TYPE_INIT => state == BUG_INIT,
            _ => state == BUG_READY,
        };
        if !allowed {
            self.callbacks_after_close.fetch_add(1, Ordering::SeqCst);
            return false;
        }
        let Some(callback) = self.callback else {
            return true;
        };
        let previous = IN_CALLBACK.with(|c| c.replace(Some((self.session.id, self.id, abc))));
        let cpu_started = thread_cpu_ns();
        let started = Instant::now();
        // SAFETY: the module gave us this callback and user_data for this bug;
        // it is called exactly as FreeSWITCH calls it.
        let result = unsafe { callback(self.pointer(), self.user_data as *mut c_void, abc) };
        let ns = started.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        let cpu_ns = thread_cpu_ns().saturating_sub(cpu_started);
        IN_CALLBACK.with(|c| c.set(previous));
        BENCH_SAMPLES.with(|samples| {
            if let Some(samples) = samples.borrow_mut().as_mut() {
                samples.push(ns);
            }
        });
        self.session.time(abc, ns, cpu_ns);
        result != SWITCH_FALSE
    }

    /// CLOSE, then the bug is gone (FreeSWITCH's switch_core_media_bug_close + destroy).
    pub(crate) fn close(self: &Arc<Self>) {
        if self.state.load(Ordering::SeqCst) != BUG_READY {
            return;
        }
        self.invoke(SWITCH_ABC_TYPE_CLOSE);
        self.state.store(BUG_CLOSED, Ordering::SeqCst);
        let mut audio = lock(&self.audio);
        audio.read.clear();
        audio.write.clear();
    }

    /// The media thread's read-side frame of linear audio.
    pub(crate) fn push_read(&self, linear: &[u8]) {
        let mut audio = lock(&self.audio);
        push_capped(&mut audio.read, linear);
    }

    pub(crate) fn push_write(&self, linear: &[u8]) {
        let mut audio = lock(&self.audio);
        push_capped(&mut audio.write, linear);
    }

    /// `switch_core_media_bug_read`, after FreeSWITCH 1.10's algorithm.
    ///
    /// # Safety
    /// `frame` must be a valid, writable `switch_frame_t` whose `data` holds `buflen` bytes.
    pub(crate) unsafe fn read(&self, frame: *mut switch_frame_t, fill: bool) -> switch_status_t {
        let (_, rate) = *lock(&self.session.codec);
        let bytes = (rate / 50 * 2) as usize;
        // SAFETY: the caller guarantees `frame` is valid.
        let frame = unsafe { &mut *frame };
        let stereo = self.has(SMBF_STEREO);
        let out_bytes = if stereo { bytes * 2 } else { bytes };
        if frame.data.is_null() {
            violation(
                Some(&self.session.uuid),
                "switch_core_media_bug_read: frame->data is NULL",
            );
            return SWITCH_STATUS_FALSE;
        }
        if (frame.buflen as usize) < bytes {
            violation(
                Some(&self.session.uuid),
                format!(
                    "switch_core_media_bug_read: frame buffer too small ({} < {bytes})",
                    frame.buflen
                ),
            );
            return SWITCH_STATUS_FALSE;
        }
        if (frame.buflen as usize) < out_bytes {
            // FreeSWITCH checks only `bytes` and then writes 2*bytes for stereo.
            violation(
                Some(&self.session.uuid),
                format!(
                    "switch_core_media_bug_read: stereo writes {out_bytes} bytes but buflen is {} (FreeSWITCH would overflow)",
                    frame.buflen
                ),
            );
            return SWITCH_STATUS_FALSE;
        }
        let has_read = self.has(SMBF_READ_STREAM);
        let has_write = self.has(SMBF_WRITE_STREAM);
        if !has_read && !has_write {
            violation(
                Some(&self.session.uuid),
                "switch_core_media_bug_read on a bug without READ_STREAM or WRITE_STREAM (FreeSWITCH: Buffer Error)",
            );
            return SWITCH_STATUS_FALSE;
        }
        frame.flags = 0;
        frame.datalen = 0;
        let mut audio = lock(&self.audio);
        audio.record_frame_size = bytes;
        let mut do_read = if has_read { audio.read.len() } else { 0 };
        let mut do_write = if has_write { audio.write.len() } else { 0 };
        if do_write > do_read && do_write > bytes * 2 {
            let n = bytes.min(audio.write.len());
            audio.write.drain(..n);
            do_write = audio.write.len();
        }
        let fill_read = has_read && do_read == 0;
        let fill_write = has_write && do_write == 0;
        if (do_read != 0 && do_read < bytes) || (do_write != 0 && do_write < bytes) {
            self.reads_false.fetch_add(1, Ordering::SeqCst);
            return SWITCH_STATUS_FALSE;
        }
        do_read = do_read.min(bytes);
        do_write = do_write.min(bytes);
        if (fill_read && fill_write) || (fill && (fill_read || fill_write)) {
            self.reads_false.fetch_add(1, Ordering::SeqCst);
            return SWITCH_STATUS_FALSE;
        }
        let take = |queue: &mut VecDeque<u8>, n: usize| -> Vec<i16> {
            let raw: Vec<u8> = queue.drain(..n).collect();
            raw.chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect()
        };
        // FreeSWITCH fills a missing side with 0xFF bytes (samples of -1).
        let read: Vec<i16> = if do_read > 0 {
            take(&mut audio.read, do_read)
        } else if fill_read {
            vec![-1; bytes / 2]
        } else {
            Vec::new()
        };
        let write: Vec<i16> = if do_write > 0 {
            take(&mut audio.write, do_write)
        } else if fill_write {
            vec![-1; bytes / 2]
        } else {
            Vec::new()
        };
        drop(audio);
        let samples = bytes / 2;
        let mut out: Vec<i16> = Vec::with_capacity(out_bytes / 2);
        for x in 0..samples {
            let r = read.get(x).copied().unwrap_or(0);
            let w = write.get(x).copied().unwrap_or(0);
            if stereo {
                out.push(r);
                out.push(w);
            } else {
                let (r, w) = (i32::from(r), i32::from(w));
                let mut z = r + w;
                if z > i32::from(i16::MAX) || z < i32::from(i16::MIN) {
                    if r != 0 {
                        z += r / 2;
                    }
                    if w != 0 {
                        z += w / 2;
                    }
                }
                out.push(z.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16);
            }
        }
        // SAFETY: `data` holds at least `buflen >= out_bytes` bytes (checked above).
        unsafe {
            ptr::copy_nonoverlapping(
                out.as_ptr().cast::<u8>(),
                frame.data.cast::<u8>(),
                out_bytes,
            );
        }
        frame.datalen = out_bytes as u32;
        frame.samples = samples as u32;
        frame.rate = rate;
        frame.channels = if stereo { 2 } else { 1 };
        frame.codec = ptr::null_mut();
        self.reads_ok.fetch_add(1, Ordering::SeqCst);
        SWITCH_STATUS_SUCCESS
    }
}

fn push_capped(queue: &mut VecDeque<u8>, data: &[u8]) {
    queue.extend(data);
    if queue.len() > MAX_BUG_BUFFER {
        let excess = queue.len() - MAX_BUG_BUFFER;
        queue.drain(..excess);
    }
}

pub(crate) fn bug_of(pointer: *mut switch_media_bug_t, function: &str) -> Option<Arc<Bug>> {
    if pointer.is_null() {
        violation(None, format!("{function}: NULL media bug"));
        return None;
    }
    let found = host()
        .bugs
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(pointer as usize))
        .cloned();
    if found.is_none() {
        violation(None, format!("{function}: {pointer:p} is not a media bug"));
    }
    found
}

/// Removes every bug of a session and CLOSEs each, in this thread (hangup,
/// FreeSWITCH's switch_core_media_bug_remove_all).
pub(crate) fn remove_all_bugs(session: &Arc<Session>) -> usize {
    let removed: Vec<Arc<Bug>> = {
        let mut list = session.bug_list.write().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *list)
    };
    for bug in &removed {
        bug.close();
    }
    removed.len()
}

/// Removes the bugs marked for pruning (a callback returned FALSE) and CLOSEs them.
pub(crate) fn prune_bugs(session: &Arc<Session>) {
    let pruned: Vec<Arc<Bug>> = {
        let mut list = session.bug_list.write().unwrap_or_else(|e| e.into_inner());
        let (gone, kept): (Vec<_>, Vec<_>) =
            list.drain(..).partition(|b| b.prune.load(Ordering::SeqCst));
        *list = kept;
        gone
    };
    for bug in &pruned {
        bug.close();
    }
}

// ---------------------------------------------------------------------------
// Events

#[derive(Debug)]
pub(crate) struct LiveEvent {
    pub(crate) event_id: u32,
    pub(crate) subclass: Option<String>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) created_at: String,
}

#[derive(Default, Debug)]
pub(crate) struct Events {
    /// Created and not fired yet, by address (each a leaked Box<u64>).
    pub(crate) live: HashMap<usize, LiveEvent>,
    pub(crate) fired: Vec<Value>,
    /// Reserved subclasses and their owners.
    pub(crate) reserved: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------
// XML

#[derive(Default, Debug)]
pub(crate) struct XmlRegistry {
    /// Open documents, by root address.
    pub(crate) open: HashMap<usize, XmlDoc>,
    /// Freed documents: kept allocated so late use is reported, not a crash.
    pub(crate) freed: Vec<XmlDoc>,
    /// Addresses of nodes of open documents.
    pub(crate) live_nodes: HashSet<usize>,
    /// Addresses of nodes of freed documents.
    pub(crate) dead_nodes: HashSet<usize>,
    pub(crate) opened: u64,
    pub(crate) freed_count: u64,
}

/// A pointer into a C string the module gave us, read with a length cap.
///
/// # Safety
/// `text` must be NULL or a NUL-terminated string.
pub(crate) unsafe fn c_text(text: *const c_char) -> Option<String> {
    if text.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees a NUL-terminated string.
    let text = unsafe { std::ffi::CStr::from_ptr(text) };
    Some(text.to_string_lossy().into_owned())
}
