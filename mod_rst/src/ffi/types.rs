//! FreeSWITCH 1.10.x types, exactly as in its headers (`switch_types.h`,
//! `switch_module_interfaces.h`, `switch_frame.h`, `switch_xml.h`): only what
//! mod_rst touches. Sizes and offsets are asserted against
//! `shared/freeswitch-abi.md` (measured on a real 1.10.12 build) in the tests.
//! Shared with the test host, which implements the functions these types go with.
#![allow(non_camel_case_types, dead_code, missing_debug_implementations)]

use std::ffi::{c_char, c_int, c_void};

pub type switch_status_t = u32;
pub type switch_bool_t = u32;
pub type switch_abc_type_t = u32;
pub type switch_media_bug_flag_t = u32;
pub type switch_log_level_t = i32;
pub type switch_text_channel_t = u32;
pub type switch_module_interface_name_t = u32;
pub type switch_event_types_t = u32;
pub type switch_stack_t = u32;
pub type switch_payload_t = u8;
pub type switch_size_t = usize;
pub type switch_time_t = i64;

pub const SWITCH_API_VERSION: c_int = 5;

pub const SWITCH_STATUS_SUCCESS: switch_status_t = 0;
pub const SWITCH_STATUS_FALSE: switch_status_t = 1;
pub const SWITCH_STATUS_MEMERR: switch_status_t = 6;
pub const SWITCH_STATUS_GENERR: switch_status_t = 9;
pub const SWITCH_STATUS_NOTFOUND: switch_status_t = 14;

pub const SWITCH_FALSE: switch_bool_t = 0;
pub const SWITCH_TRUE: switch_bool_t = 1;

pub const SWITCH_ABC_TYPE_INIT: switch_abc_type_t = 0;
pub const SWITCH_ABC_TYPE_READ: switch_abc_type_t = 1;
pub const SWITCH_ABC_TYPE_WRITE: switch_abc_type_t = 2;
pub const SWITCH_ABC_TYPE_WRITE_REPLACE: switch_abc_type_t = 3;
pub const SWITCH_ABC_TYPE_READ_PING: switch_abc_type_t = 5;
pub const SWITCH_ABC_TYPE_TAP_NATIVE_READ: switch_abc_type_t = 6;
pub const SWITCH_ABC_TYPE_TAP_NATIVE_WRITE: switch_abc_type_t = 7;
pub const SWITCH_ABC_TYPE_CLOSE: switch_abc_type_t = 8;

pub const SMBF_READ_STREAM: switch_media_bug_flag_t = 1;
pub const SMBF_WRITE_STREAM: switch_media_bug_flag_t = 2;
pub const SMBF_WRITE_REPLACE: switch_media_bug_flag_t = 4;
pub const SMBF_READ_PING: switch_media_bug_flag_t = 0x10;
pub const SMBF_STEREO: switch_media_bug_flag_t = 0x20;
pub const SMBF_NO_PAUSE: switch_media_bug_flag_t = 0x400;
pub const SMBF_TAP_NATIVE_READ: switch_media_bug_flag_t = 0x2000;
pub const SMBF_TAP_NATIVE_WRITE: switch_media_bug_flag_t = 0x4000;
pub const SMBF_ONE_ONLY: switch_media_bug_flag_t = 0x8000;
pub const SMBF_FIRST: switch_media_bug_flag_t = 0x0400_0000;

pub const SWITCH_LOG_DEBUG: switch_log_level_t = 7;
pub const SWITCH_LOG_INFO: switch_log_level_t = 6;
pub const SWITCH_LOG_NOTICE: switch_log_level_t = 5;
pub const SWITCH_LOG_WARNING: switch_log_level_t = 4;
pub const SWITCH_LOG_ERROR: switch_log_level_t = 3;

pub const SWITCH_CHANNEL_ID_LOG: switch_text_channel_t = 0;
pub const SWITCH_CHANNEL_ID_SESSION: switch_text_channel_t = 3;

pub const SWITCH_APPLICATION_INTERFACE: switch_module_interface_name_t = 4;
pub const SWITCH_API_INTERFACE: switch_module_interface_name_t = 5;

pub const SAF_MEDIA_TAP: u32 = 4;

pub const SWITCH_EVENT_CUSTOM: switch_event_types_t = 0;
pub const SWITCH_STACK_BOTTOM: switch_stack_t = 1;

/// Opaque handles: only ever used behind pointers.
#[repr(C)]
pub struct switch_core_session_t {
    _private: [u8; 0],
}
#[repr(C)]
pub struct switch_channel_t {
    _private: [u8; 0],
}
#[repr(C)]
pub struct switch_media_bug_t {
    _private: [u8; 0],
}
#[repr(C)]
pub struct switch_memory_pool_t {
    _private: [u8; 0],
}
#[repr(C)]
pub struct switch_event_t {
    _private: [u8; 0],
}
#[repr(C)]
pub struct switch_mutex_t {
    _private: [u8; 0],
}
#[repr(C)]
pub struct switch_thread_rwlock_t {
    _private: [u8; 0],
}

pub type switch_dtmf_direction_t = u32;
pub const SWITCH_DTMF_RECV: switch_dtmf_direction_t = 0;
pub const SWITCH_DTMF_SEND: switch_dtmf_direction_t = 1;

/// A DTMF digit (`switch_types.h`); `duration` is in samples of 8 kHz.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct switch_dtmf_t {
    pub digit: c_char,
    pub duration: u32,
    pub flags: i32,
    /// `switch_dtmf_source_t`.
    pub source: u32,
}

/// `switch_core_event_hook.h`: called for every digit a session receives.
pub type switch_recv_dtmf_hook_t = Option<
    unsafe extern "C" fn(
        *mut switch_core_session_t,
        *const switch_dtmf_t,
        switch_dtmf_direction_t,
    ) -> switch_status_t,
>;

pub type switch_media_bug_callback_t = Option<
    unsafe extern "C" fn(*mut switch_media_bug_t, *mut c_void, switch_abc_type_t) -> switch_bool_t,
>;
pub type switch_application_function_t =
    Option<unsafe extern "C" fn(*mut switch_core_session_t, *const c_char)>;
pub type switch_api_function_t = Option<
    unsafe extern "C" fn(
        *const c_char,
        *mut switch_core_session_t,
        *mut switch_stream_handle_t,
    ) -> switch_status_t,
>;
pub type switch_module_load_t = Option<
    unsafe extern "C" fn(
        *mut *mut switch_loadable_module_interface_t,
        *mut switch_memory_pool_t,
    ) -> switch_status_t,
>;
pub type switch_module_shutdown_t = Option<unsafe extern "C" fn() -> switch_status_t>;
pub type switch_module_runtime_t = Option<unsafe extern "C" fn() -> switch_status_t>;
pub type switch_stream_handle_write_function_t = Option<
    unsafe extern "C" fn(*mut switch_stream_handle_t, *const c_char, ...) -> switch_status_t,
>;

#[repr(C)]
pub struct switch_loadable_module_function_table_t {
    pub switch_api_version: c_int,
    pub load: switch_module_load_t,
    pub shutdown: switch_module_shutdown_t,
    pub runtime: switch_module_runtime_t,
    pub flags: u32,
}

#[repr(C)]
pub struct switch_loadable_module_interface_t {
    pub module_name: *const c_char,
    pub endpoint_interface: *mut c_void,
    pub timer_interface: *mut c_void,
    pub dialplan_interface: *mut c_void,
    pub codec_interface: *mut c_void,
    pub application_interface: *mut switch_application_interface_t,
    pub chat_application_interface: *mut c_void,
    pub api_interface: *mut switch_api_interface_t,
    pub json_api_interface: *mut c_void,
    pub file_interface: *mut c_void,
    pub speech_interface: *mut c_void,
    pub directory_interface: *mut c_void,
    pub chat_interface: *mut c_void,
    pub say_interface: *mut c_void,
    pub asr_interface: *mut c_void,
    pub management_interface: *mut c_void,
    pub limit_interface: *mut c_void,
    pub database_interface: *mut c_void,
    pub rwlock: *mut switch_thread_rwlock_t,
    pub refs: c_int,
    pub pool: *mut switch_memory_pool_t,
}

#[repr(C)]
pub struct switch_application_interface_t {
    pub interface_name: *const c_char,
    pub application_function: switch_application_function_t,
    pub long_desc: *const c_char,
    pub short_desc: *const c_char,
    pub syntax: *const c_char,
    pub flags: u32,
    pub rwlock: *mut switch_thread_rwlock_t,
    pub refs: c_int,
    pub reflock: *mut switch_mutex_t,
    pub parent: *mut switch_loadable_module_interface_t,
    pub next: *mut switch_application_interface_t,
}

#[repr(C)]
pub struct switch_api_interface_t {
    pub interface_name: *const c_char,
    pub desc: *const c_char,
    pub function: switch_api_function_t,
    pub syntax: *const c_char,
    pub rwlock: *mut switch_thread_rwlock_t,
    pub refs: c_int,
    pub reflock: *mut switch_mutex_t,
    pub parent: *mut switch_loadable_module_interface_t,
    pub next: *mut switch_api_interface_t,
}

#[repr(C)]
pub struct switch_stream_handle_t {
    pub read_function: *mut c_void,
    pub write_function: switch_stream_handle_write_function_t,
    pub raw_write_function: *mut c_void,
    pub data: *mut c_void,
    pub end: *mut c_void,
    pub data_size: switch_size_t,
    pub data_len: switch_size_t,
    pub alloc_len: switch_size_t,
    pub alloc_chunk: switch_size_t,
    pub param_event: *mut switch_event_t,
}

#[repr(C)]
pub struct switch_frame_geometry_t {
    pub w: i32,
    pub h: i32,
    pub x: i32,
    pub y: i32,
    pub z: i32,
    pub m: i32,
    pub big_x: i32,
}

#[repr(C)]
pub struct switch_frame_t {
    pub codec: *mut switch_codec_t,
    pub source: *const c_char,
    pub packet: *mut c_void,
    pub packetlen: u32,
    pub extra_data: *mut c_void,
    pub data: *mut c_void,
    pub datalen: u32,
    pub buflen: u32,
    pub samples: u32,
    pub rate: u32,
    pub channels: u32,
    pub payload: switch_payload_t,
    pub timestamp: u32,
    pub seq: u16,
    pub ssrc: u32,
    pub m: switch_bool_t,
    pub flags: u32,
    pub user_data: *mut c_void,
    pub pmap: *mut c_void,
    pub img: *mut c_void,
    pub geometry: switch_frame_geometry_t,
}

#[repr(C)]
pub struct switch_codec_t {
    pub codec_interface: *mut c_void,
    pub implementation: *const switch_codec_implementation_t,
    pub fmtp_in: *mut c_char,
    pub fmtp_out: *mut c_char,
    pub flags: u32,
    pub memory_pool: *mut switch_memory_pool_t,
    pub private_info: *mut c_void,
    pub agreed_pt: switch_payload_t,
    pub mutex: *mut switch_mutex_t,
    pub next: *mut switch_codec_t,
    pub session: *mut switch_core_session_t,
    pub cur_frame: *mut switch_frame_t,
}

#[repr(C)]
pub struct switch_codec_implementation_t {
    pub codec_type: u32,
    pub ianacode: switch_payload_t,
    pub iananame: *mut c_char,
    pub fmtp: *mut c_char,
    pub samples_per_second: u32,
    pub actual_samples_per_second: u32,
    pub bits_per_second: c_int,
    pub microseconds_per_packet: c_int,
    pub samples_per_packet: u32,
    pub decoded_bytes_per_packet: u32,
    pub encoded_bytes_per_packet: u32,
    pub number_of_channels: u8,
    pub codec_frames_per_packet: c_int,
    pub init: *mut c_void,
    pub encode: *mut c_void,
    pub decode: *mut c_void,
    pub encode_video: *mut c_void,
    pub decode_video: *mut c_void,
    pub codec_control: *mut c_void,
    pub destroy: *mut c_void,
    pub codec_id: u32,
    pub impl_id: u32,
    pub modname: *mut c_char,
    pub next: *mut switch_codec_implementation_t,
}

/// `struct switch_xml`; `switch_xml_t` is a pointer to it.
#[repr(C)]
pub struct switch_xml {
    pub name: *mut c_char,
    pub attr: *mut *mut c_char,
    pub txt: *mut c_char,
    pub free_path: *mut c_char,
    pub off: switch_size_t,
    pub next: *mut switch_xml,
    pub sibling: *mut switch_xml,
    pub ordered: *mut switch_xml,
    pub child: *mut switch_xml,
    pub parent: *mut switch_xml,
    pub flags: u32,
    pub is_switch_xml_root_t: switch_bool_t,
    pub refs: u32,
    pub open: *const c_char,
    pub close: *const c_char,
}
pub type switch_xml_t = *mut switch_xml;
