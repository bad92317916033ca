//! The safe layer over [`crate::ffi`]: sessions that unlock on drop, channel
//! variables, media bugs, logging, events and the XML configuration. Every
//! `unsafe` of the module outside the trampolines is here.

use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr;

use crate::ffi::*;

const FILE: &CStr = c"mod_rst.rs";
const FUNC: &CStr = c"mod_rst";
pub const MODULE_NAME: &CStr = c"mod_rst";

/// Turns text from FreeSWITCH into a `&str`, lossily; `None` for NULL.
///
/// # Safety
/// `text` is NULL or a NUL-terminated string that outlives `'a`.
pub unsafe fn text<'a>(text: *const c_char) -> Option<std::borrow::Cow<'a, str>> {
    // SAFETY: the caller guarantees a valid C string or NULL.
    (!text.is_null()).then(|| unsafe { CStr::from_ptr(text) }.to_string_lossy())
}

/// Logs `message` tagged with `uuid` (FreeSWITCH's `SWITCH_CHANNEL_UUID_LOG`),
/// usable from any thread. The message is an argument of a fixed `"%s"` format,
/// never the format itself.
pub fn log(level: switch_log_level_t, uuid: Option<&str>, message: &str) {
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    let uuid = uuid.and_then(|u| CString::new(u).ok());
    // SAFETY: every pointer is a valid NUL-terminated string for the call's
    // duration; "%s" consumes exactly the one vararg passed.
    unsafe {
        switch_log_printf(
            SWITCH_CHANNEL_ID_LOG,
            FILE.as_ptr(),
            FUNC.as_ptr(),
            0,
            uuid.as_ref().map_or(ptr::null(), |u| u.as_ptr()),
            level,
            c"%s\n".as_ptr(),
            message.as_ptr(),
        );
    }
}

/// A session this module found by UUID and holds a read lock on; the lock is
/// released on drop, and nothing can use the session after that.
#[derive(Debug)]
pub struct LocatedSession {
    session: SessionRef,
}

impl LocatedSession {
    pub fn locate(uuid: &str) -> Option<LocatedSession> {
        let uuid = CString::new(uuid).ok()?;
        // SAFETY: a valid C string; a non-NULL result carries a read lock we release in Drop.
        let session = unsafe {
            switch_core_session_perform_locate(uuid.as_ptr(), FILE.as_ptr(), FUNC.as_ptr(), 0)
        };
        (!session.is_null()).then(|| LocatedSession {
            session: SessionRef(session),
        })
    }

    pub fn session(&self) -> &SessionRef {
        &self.session
    }
}

impl Drop for LocatedSession {
    fn drop(&mut self) {
        // SAFETY: the session was located (read-locked) in `locate` and is unlocked exactly once.
        unsafe { switch_core_session_rwunlock(self.session.0) }
    }
}

/// A session FreeSWITCH handed us (application or bug callback), valid for
/// that call only.
#[derive(Debug, Clone, Copy)]
pub struct SessionRef(*mut switch_core_session_t);

/// A codec as the module needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecInfo {
    pub payload_type: u8,
    pub name: String,
    pub rate: u32,
}

impl SessionRef {
    /// # Safety
    /// `session` is a live session for as long as the `SessionRef` is used.
    pub unsafe fn new(session: *mut switch_core_session_t) -> Option<SessionRef> {
        (!session.is_null()).then_some(SessionRef(session))
    }

    pub fn as_ptr(&self) -> *mut switch_core_session_t {
        self.0
    }

    fn channel(&self) -> *mut switch_channel_t {
        // SAFETY: a live session always has a channel.
        unsafe { switch_core_session_get_channel(self.0) }
    }

    pub fn uuid(&self) -> String {
        // SAFETY: a live session; the uuid string lives as long as the session.
        unsafe { text(switch_core_session_get_uuid(self.0)) }
            .map(|u| u.into_owned())
            .unwrap_or_default()
    }

    /// A channel variable, or a caller-profile field such as `caller_id_number`.
    pub fn variable(&self, name: &str) -> Option<String> {
        let name = CString::new(name).ok()?;
        // SAFETY: dup=TRUE returns a copy in the session's pool, valid while the session is.
        let value = unsafe {
            switch_channel_get_variable_dup(self.channel(), name.as_ptr(), SWITCH_TRUE, -1)
        };
        // SAFETY: NULL or a valid C string.
        unsafe { text(value) }
            .map(|v| v.into_owned())
            .filter(|v| !v.is_empty())
    }

    pub fn private(&self, key: &CStr) -> *mut c_void {
        // SAFETY: a live channel and a valid key.
        unsafe { switch_channel_get_private(self.channel(), key.as_ptr()) }
    }

    // The pointer is stored by FreeSWITCH, never dereferenced.
    #[allow(clippy::not_unsafe_ptr_arg_deref)]
    pub fn set_private(&self, key: &CStr, value: *const c_void) {
        // SAFETY: a live channel and a valid key; FreeSWITCH stores the pointer only.
        unsafe { switch_channel_set_private(self.channel(), key.as_ptr(), value) };
    }

    /// Has FreeSWITCH call `hook` for every digit the session receives.
    pub fn add_recv_dtmf_hook(&self, hook: switch_recv_dtmf_hook_t) -> bool {
        // SAFETY: a live session; the hook is a function of this module,
        // removed before the module unloads (at the stream's CLOSE).
        unsafe { switch_core_event_hook_add_recv_dtmf(self.0, hook) == SWITCH_STATUS_SUCCESS }
    }

    pub fn remove_recv_dtmf_hook(&self, hook: switch_recv_dtmf_hook_t) {
        // SAFETY: a live session; removing a hook it does not have is a no-op.
        unsafe { switch_core_event_hook_remove_recv_dtmf(self.0, hook) };
    }

    /// The read codec's payload type and rate, without allocating (media thread).
    pub fn read_codec_payload_type(&self) -> Option<(u8, u32)> {
        // SAFETY: a live session's codec, if any, is live.
        unsafe { payload_type_of(switch_core_session_get_read_codec(self.0)) }
    }

    /// As [`SessionRef::read_codec_payload_type`] for the write codec.
    pub fn write_codec_payload_type(&self) -> Option<(u8, u32)> {
        // SAFETY: as above.
        unsafe { payload_type_of(switch_core_session_get_write_codec(self.0)) }
    }

    pub fn read_codec(&self) -> Option<CodecInfo> {
        // SAFETY: a live session; the codec, if any, is owned by it.
        codec_info(unsafe { switch_core_session_get_read_codec(self.0) })
    }

    pub fn write_codec(&self) -> Option<CodecInfo> {
        // SAFETY: as for read_codec.
        codec_info(unsafe { switch_core_session_get_write_codec(self.0) })
    }

    /// Attaches a media bug whose callback gets `user_data`.
    ///
    /// # Safety
    /// `user_data` must stay valid until the callback's CLOSE, and the callback
    /// must free it exactly then.
    pub unsafe fn add_bug(
        &self,
        function: &CStr,
        callback: switch_media_bug_callback_t,
        user_data: *mut c_void,
        flags: switch_media_bug_flag_t,
    ) -> Result<*mut switch_media_bug_t, switch_status_t> {
        let mut bug = ptr::null_mut();
        // SAFETY: valid session and strings; the contract on user_data is the caller's.
        let status = unsafe {
            switch_core_media_bug_add(
                self.0,
                function.as_ptr(),
                ptr::null(),
                callback,
                user_data,
                0,
                flags,
                &mut bug,
            )
        };
        if status == SWITCH_STATUS_SUCCESS && !bug.is_null() {
            Ok(bug)
        } else {
            Err(status)
        }
    }

    /// Removes the session's bugs that have `callback`, if any: matched under
    /// FreeSWITCH's bug lock, so a hangup removing them at the same time is
    /// no double removal.
    pub fn remove_bugs_with(&self, callback: switch_media_bug_callback_t) -> bool {
        // SAFETY: a live session; only pointers are compared.
        unsafe { switch_core_media_bug_remove_callback(self.0, callback) == SWITCH_STATUS_SUCCESS }
    }

    /// Removes a bug of this session; its CLOSE callback runs before this returns.
    ///
    /// # Safety
    /// `bug` is a bug of this session that has not been removed.
    pub unsafe fn remove_bug(&self, bug: *mut switch_media_bug_t) -> switch_status_t {
        let mut bug = bug;
        // SAFETY: per the contract.
        unsafe { switch_core_media_bug_remove(self.0, &mut bug) }
    }
}

/// The payload type and rate of `codec` (NULL allowed), without allocating.
///
/// # Safety
/// `codec` is NULL or a live codec whose implementation is NULL or live.
pub unsafe fn payload_type_of(codec: *mut switch_codec_t) -> Option<(u8, u32)> {
    if codec.is_null() {
        return None;
    }
    // SAFETY: a non-NULL codec of a live session (the caller's contract).
    let implementation = unsafe { (*codec).implementation };
    if implementation.is_null() {
        return None;
    }
    // SAFETY: NULL-checked; the implementation outlives the codec.
    let implementation = unsafe { &*implementation };
    // FreeSWITCH gives linear audio a dynamic IANA code (100 on a 1.10.12
    // loopback channel); the rst protocol's linear payload type is 10.
    // SAFETY: iananame is NULL or a C string owned by the codec module.
    let is_linear = !implementation.iananame.is_null()
        && unsafe { CStr::from_ptr(implementation.iananame) }
            .to_bytes()
            .eq_ignore_ascii_case(b"L16");
    let payload_type = if is_linear {
        rst_proto::PayloadType::L16.number()
    } else {
        implementation.ianacode
    };
    Some((payload_type, implementation.actual_samples_per_second))
}

fn codec_info(codec: *mut switch_codec_t) -> Option<CodecInfo> {
    if codec.is_null() {
        return None;
    }
    // SAFETY: a non-NULL codec of a live session; its implementation, if set, too.
    let implementation = unsafe { (*codec).implementation };
    if implementation.is_null() {
        return None;
    }
    // SAFETY: checked non-NULL above.
    let implementation = unsafe { &*implementation };
    Some(CodecInfo {
        payload_type: implementation.ianacode,
        // SAFETY: NULL or a valid C string owned by the codec module.
        name: unsafe { text(implementation.iananame) }
            .map(|n| n.into_owned())
            .unwrap_or_default(),
        rate: implementation.actual_samples_per_second,
    })
}

/// Fires a CUSTOM event `subclass` with `headers`, from any thread.
pub fn fire_event(subclass: &CStr, headers: &[(&str, &str)]) {
    let mut event = ptr::null_mut();
    // SAFETY: valid strings; on success `event` is ours until fired.
    let status = unsafe {
        switch_event_create_subclass_detailed(
            FILE.as_ptr(),
            FUNC.as_ptr(),
            0,
            &mut event,
            SWITCH_EVENT_CUSTOM,
            subclass.as_ptr(),
        )
    };
    if status != SWITCH_STATUS_SUCCESS || event.is_null() {
        return;
    }
    for (name, value) in headers {
        let (Ok(name), Ok(value)) = (CString::new(*name), CString::new(*value)) else {
            continue;
        };
        // SAFETY: a live event; FreeSWITCH copies both strings.
        unsafe {
            switch_event_add_header_string(
                event,
                SWITCH_STACK_BOTTOM,
                name.as_ptr(),
                value.as_ptr(),
            )
        };
    }
    // SAFETY: a live event, consumed (and freed) by firing.
    unsafe {
        switch_event_fire_detailed(FILE.as_ptr(), FUNC.as_ptr(), 0, &mut event, ptr::null_mut())
    };
}

pub fn reserve_event(subclass: &CStr) -> bool {
    // SAFETY: valid static strings.
    unsafe {
        switch_event_reserve_subclass_detailed(MODULE_NAME.as_ptr(), subclass.as_ptr())
            == SWITCH_STATUS_SUCCESS
    }
}

pub fn free_event(subclass: &CStr) {
    // SAFETY: valid static strings.
    unsafe { switch_event_free_subclass_detailed(MODULE_NAME.as_ptr(), subclass.as_ptr()) };
}

/// The `<param name value>` pairs of `<settings>` in configuration `name`
/// (`rst.conf`), or `None` when FreeSWITCH has no such configuration.
pub fn config_params(name: &CStr) -> Option<Vec<(String, String)>> {
    let mut configuration: switch_xml_t = ptr::null_mut();
    // SAFETY: a valid name; a non-NULL root is freed below.
    let root = unsafe { switch_xml_open_cfg(name.as_ptr(), &mut configuration, ptr::null_mut()) };
    if root.is_null() {
        return None;
    }
    let mut params = Vec::new();
    if !configuration.is_null() {
        // SAFETY: nodes of a live tree; `next` links siblings of the same name.
        unsafe {
            let settings = switch_xml_child(configuration, c"settings".as_ptr());
            let mut param = if settings.is_null() {
                ptr::null_mut()
            } else {
                switch_xml_child(settings, c"param".as_ptr())
            };
            while !param.is_null() {
                let name = text(switch_xml_attr_soft(param, c"name".as_ptr())).unwrap_or_default();
                let value =
                    text(switch_xml_attr_soft(param, c"value".as_ptr())).unwrap_or_default();
                params.push((name.into_owned(), value.into_owned()));
                param = (*param).next;
            }
        }
    }
    // SAFETY: the root returned by switch_xml_open_cfg, freed once.
    unsafe { switch_xml_free(root) };
    Some(params)
}

/// Writes `text` to an API call's output stream.
///
/// # Safety
/// `stream` is the live stream FreeSWITCH passed to the API function.
pub unsafe fn stream_write(stream: *mut switch_stream_handle_t, text: &str) {
    if stream.is_null() {
        return;
    }
    let Ok(text) = CString::new(text.replace('\0', " ")) else {
        return;
    };
    // SAFETY: a live stream; its write_function takes a printf format, given "%s".
    unsafe {
        if let Some(write) = (*stream).write_function {
            write(stream, c"%s".as_ptr(), text.as_ptr());
        }
    }
}
