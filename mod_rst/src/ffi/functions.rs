//! The FreeSWITCH functions mod_rst calls, as declared in its 1.10.x headers.
//! They resolve against the running FreeSWITCH (or the test host) at load time;
//! the module does not link libfreeswitch.

use std::ffi::{c_char, c_int, c_void};

use super::types::*;

extern "C" {
    pub fn switch_loadable_module_create_module_interface(
        pool: *mut switch_memory_pool_t,
        name: *const c_char,
    ) -> *mut switch_loadable_module_interface_t;
    pub fn switch_loadable_module_create_interface(
        module: *mut switch_loadable_module_interface_t,
        iname: switch_module_interface_name_t,
    ) -> *mut c_void;

    pub fn switch_core_session_perform_locate(
        uuid: *const c_char,
        file: *const c_char,
        func: *const c_char,
        line: c_int,
    ) -> *mut switch_core_session_t;
    pub fn switch_core_session_rwunlock(session: *mut switch_core_session_t);
    pub fn switch_core_session_get_channel(
        session: *mut switch_core_session_t,
    ) -> *mut switch_channel_t;
    pub fn switch_core_session_get_uuid(session: *mut switch_core_session_t) -> *mut c_char;
    pub fn switch_core_session_get_read_codec(
        session: *mut switch_core_session_t,
    ) -> *mut switch_codec_t;
    pub fn switch_core_session_get_write_codec(
        session: *mut switch_core_session_t,
    ) -> *mut switch_codec_t;

    pub fn switch_channel_get_variable_dup(
        channel: *mut switch_channel_t,
        name: *const c_char,
        dup: switch_bool_t,
        idx: c_int,
    ) -> *const c_char;
    pub fn switch_channel_get_private(
        channel: *mut switch_channel_t,
        key: *const c_char,
    ) -> *mut c_void;
    pub fn switch_channel_set_private(
        channel: *mut switch_channel_t,
        key: *const c_char,
        private_info: *const c_void,
    ) -> switch_status_t;

    pub fn switch_core_media_bug_add(
        session: *mut switch_core_session_t,
        function: *const c_char,
        target: *const c_char,
        callback: switch_media_bug_callback_t,
        user_data: *mut c_void,
        stop_time: i64,
        flags: switch_media_bug_flag_t,
        new_bug: *mut *mut switch_media_bug_t,
    ) -> switch_status_t;
    pub fn switch_core_media_bug_remove(
        session: *mut switch_core_session_t,
        bug: *mut *mut switch_media_bug_t,
    ) -> switch_status_t;
    pub fn switch_core_media_bug_remove_callback(
        session: *mut switch_core_session_t,
        callback: switch_media_bug_callback_t,
    ) -> switch_status_t;
    pub fn switch_core_media_bug_get_session(
        bug: *mut switch_media_bug_t,
    ) -> *mut switch_core_session_t;
    pub fn switch_core_media_bug_get_native_read_frame(
        bug: *mut switch_media_bug_t,
    ) -> *mut switch_frame_t;
    pub fn switch_core_media_bug_get_native_write_frame(
        bug: *mut switch_media_bug_t,
    ) -> *mut switch_frame_t;
    pub fn switch_core_media_bug_get_write_replace_frame(
        bug: *mut switch_media_bug_t,
    ) -> *mut switch_frame_t;
    pub fn switch_core_media_bug_set_write_replace_frame(
        bug: *mut switch_media_bug_t,
        frame: *mut switch_frame_t,
    );
    pub fn switch_core_media_bug_read(
        bug: *mut switch_media_bug_t,
        frame: *mut switch_frame_t,
        fill: switch_bool_t,
    ) -> switch_status_t;

    pub fn switch_core_event_hook_add_recv_dtmf(
        session: *mut switch_core_session_t,
        recv_dtmf: switch_recv_dtmf_hook_t,
    ) -> switch_status_t;
    pub fn switch_core_event_hook_remove_recv_dtmf(
        session: *mut switch_core_session_t,
        recv_dtmf: switch_recv_dtmf_hook_t,
    ) -> switch_status_t;

    pub fn switch_log_printf(
        channel: switch_text_channel_t,
        file: *const c_char,
        func: *const c_char,
        line: c_int,
        userdata: *const c_char,
        level: switch_log_level_t,
        fmt: *const c_char,
        ...
    );

    pub fn switch_xml_open_cfg(
        file_path: *const c_char,
        node: *mut switch_xml_t,
        params: *mut switch_event_t,
    ) -> switch_xml_t;
    pub fn switch_xml_child(xml: switch_xml_t, name: *const c_char) -> switch_xml_t;
    pub fn switch_xml_attr_soft(xml: switch_xml_t, attr: *const c_char) -> *const c_char;
    pub fn switch_xml_free(xml: switch_xml_t);

    pub fn switch_event_reserve_subclass_detailed(
        owner: *const c_char,
        subclass: *const c_char,
    ) -> switch_status_t;
    pub fn switch_event_free_subclass_detailed(
        owner: *const c_char,
        subclass: *const c_char,
    ) -> switch_status_t;
    pub fn switch_event_create_subclass_detailed(
        file: *const c_char,
        func: *const c_char,
        line: c_int,
        event: *mut *mut switch_event_t,
        event_id: switch_event_types_t,
        subclass: *const c_char,
    ) -> switch_status_t;
    pub fn switch_event_add_header_string(
        event: *mut switch_event_t,
        stack: switch_stack_t,
        name: *const c_char,
        value: *const c_char,
    ) -> switch_status_t;
    pub fn switch_event_fire_detailed(
        file: *const c_char,
        func: *const c_char,
        line: c_int,
        event: *mut *mut switch_event_t,
        user_data: *mut c_void,
    ) -> switch_status_t;
}
