//! Every struct the module touches, every field offset it uses and every value
//! it passes, against `shared/freeswitch-abi.md` (measured on FreeSWITCH 1.10.12,
//! x86_64). A FreeSWITCH that disagrees would be misread, so these must hold.

use std::mem::{align_of, offset_of, size_of};

use super::types::*;

macro_rules! layout {
    ($type:ty, size $size:expr, align $align:expr, { $($field:ident : $offset:expr),* $(,)? }) => {{
        assert_eq!(size_of::<$type>(), $size, "sizeof {}", stringify!($type));
        assert_eq!(align_of::<$type>(), $align, "alignof {}", stringify!($type));
        $(assert_eq!(offset_of!($type, $field), $offset, "{}.{}", stringify!($type), stringify!($field));)*
    }};
}

#[test]
fn basic_type_sizes() {
    assert_eq!(size_of::<switch_status_t>(), 4);
    assert_eq!(size_of::<switch_bool_t>(), 4);
    assert_eq!(size_of::<switch_payload_t>(), 1);
    assert_eq!(size_of::<switch_abc_type_t>(), 4);
    assert_eq!(size_of::<switch_media_bug_flag_t>(), 4);
    assert_eq!(size_of::<switch_log_level_t>(), 4);
    assert_eq!(size_of::<switch_text_channel_t>(), 4);
    assert_eq!(size_of::<switch_event_types_t>(), 4);
    assert_eq!(size_of::<switch_stack_t>(), 4);
    assert_eq!(size_of::<switch_size_t>(), 8);
    assert_eq!(size_of::<switch_time_t>(), 8);
}

#[test]
fn switch_dtmf_t_layout() {
    // Measured with offsetof against the 1.10.12 headers (switch_types.h).
    layout!(switch_dtmf_t, size 16, align 4, { digit: 0, duration: 4, flags: 8, source: 12 });
    assert_eq!(SWITCH_DTMF_RECV, 0);
    assert_eq!(SWITCH_DTMF_SEND, 1);
}

#[test]
fn switch_frame_t_layout() {
    layout!(switch_frame_t, size 152, align 8, {
        codec: 0, source: 8, packet: 16, packetlen: 24, extra_data: 32, data: 40, datalen: 48,
        buflen: 52, samples: 56, rate: 60, channels: 64, payload: 68, timestamp: 72, seq: 76,
        ssrc: 80, m: 84, flags: 88, user_data: 96, pmap: 104, img: 112, geometry: 120,
    });
    layout!(switch_frame_geometry_t, size 28, align 4, { w: 0, h: 4, x: 8, y: 12, z: 16, m: 20, big_x: 24 });
}

#[test]
fn module_table_and_interfaces_layout() {
    layout!(switch_loadable_module_function_table_t, size 40, align 8, {
        switch_api_version: 0, load: 8, shutdown: 16, runtime: 24, flags: 32,
    });
    layout!(switch_loadable_module_interface_t, size 168, align 8, {
        module_name: 0, endpoint_interface: 8, timer_interface: 16, dialplan_interface: 24,
        codec_interface: 32, application_interface: 40, chat_application_interface: 48,
        api_interface: 56, json_api_interface: 64, file_interface: 72, speech_interface: 80,
        directory_interface: 88, chat_interface: 96, say_interface: 104, asr_interface: 112,
        management_interface: 120, limit_interface: 128, database_interface: 136, rwlock: 144,
        refs: 152, pool: 160,
    });
    layout!(switch_application_interface_t, size 88, align 8, {
        interface_name: 0, application_function: 8, long_desc: 16, short_desc: 24, syntax: 32,
        flags: 40, rwlock: 48, refs: 56, reflock: 64, parent: 72, next: 80,
    });
    layout!(switch_api_interface_t, size 72, align 8, {
        interface_name: 0, desc: 8, function: 16, syntax: 24, rwlock: 32, refs: 40, reflock: 48,
        parent: 56, next: 64,
    });
    layout!(switch_stream_handle_t, size 80, align 8, {
        read_function: 0, write_function: 8, raw_write_function: 16, data: 24, end: 32,
        data_size: 40, data_len: 48, alloc_len: 56, alloc_chunk: 64, param_event: 72,
    });
}

#[test]
fn codec_layout() {
    layout!(switch_codec_t, size 96, align 8, {
        codec_interface: 0, implementation: 8, fmtp_in: 16, fmtp_out: 24, flags: 32,
        memory_pool: 40, private_info: 48, agreed_pt: 56, mutex: 64, next: 72, session: 80,
        cur_frame: 88,
    });
    layout!(switch_codec_implementation_t, size 144, align 8, {
        codec_type: 0, ianacode: 4, iananame: 8, fmtp: 16, samples_per_second: 24,
        actual_samples_per_second: 28, bits_per_second: 32, microseconds_per_packet: 36,
        samples_per_packet: 40, decoded_bytes_per_packet: 44, encoded_bytes_per_packet: 48,
        number_of_channels: 52, codec_frames_per_packet: 56, init: 64, encode: 72, decode: 80,
        encode_video: 88, decode_video: 96, codec_control: 104, destroy: 112, codec_id: 120,
        impl_id: 124, modname: 128, next: 136,
    });
}

#[test]
fn xml_layout() {
    layout!(switch_xml, size 112, align 8, {
        name: 0, attr: 8, txt: 16, free_path: 24, off: 32, next: 40, sibling: 48, ordered: 56,
        child: 64, parent: 72, flags: 80, is_switch_xml_root_t: 84, refs: 88, open: 96, close: 104,
    });
}

#[test]
fn values_used() {
    assert_eq!(SWITCH_API_VERSION, 5);
    assert_eq!(
        (
            SWITCH_STATUS_SUCCESS,
            SWITCH_STATUS_FALSE,
            SWITCH_STATUS_MEMERR,
            SWITCH_STATUS_GENERR,
            SWITCH_STATUS_NOTFOUND
        ),
        (0, 1, 6, 9, 14)
    );
    assert_eq!((SWITCH_FALSE, SWITCH_TRUE), (0, 1));
    assert_eq!(
        (
            SWITCH_ABC_TYPE_INIT,
            SWITCH_ABC_TYPE_READ,
            SWITCH_ABC_TYPE_WRITE,
            SWITCH_ABC_TYPE_READ_PING
        ),
        (0, 1, 2, 5)
    );
    assert_eq!(
        (
            SWITCH_ABC_TYPE_TAP_NATIVE_READ,
            SWITCH_ABC_TYPE_TAP_NATIVE_WRITE,
            SWITCH_ABC_TYPE_CLOSE
        ),
        (6, 7, 8)
    );
    assert_eq!(
        (
            SMBF_READ_STREAM,
            SMBF_WRITE_STREAM,
            SMBF_READ_PING,
            SMBF_STEREO,
            SMBF_NO_PAUSE
        ),
        (1, 2, 0x10, 0x20, 0x400)
    );
    assert_eq!(
        (SMBF_TAP_NATIVE_READ, SMBF_TAP_NATIVE_WRITE),
        (0x2000, 0x4000)
    );
    // freeswitch-abi.md: SWITCH_ABC_TYPE_WRITE_REPLACE=3, SMBF_WRITE_REPLACE=4,
    // SMBF_FIRST=67108864.
    assert_eq!(
        (
            SWITCH_ABC_TYPE_WRITE_REPLACE,
            SMBF_WRITE_REPLACE,
            SMBF_FIRST
        ),
        (3, 4, 67_108_864)
    );
    assert_eq!(
        SMBF_READ_STREAM | SMBF_WRITE_STREAM | SMBF_READ_PING | SMBF_STEREO,
        0x33
    );
    assert_eq!(
        (
            SWITCH_LOG_DEBUG,
            SWITCH_LOG_INFO,
            SWITCH_LOG_NOTICE,
            SWITCH_LOG_WARNING,
            SWITCH_LOG_ERROR
        ),
        (7, 6, 5, 4, 3)
    );
    assert_eq!((SWITCH_CHANNEL_ID_LOG, SWITCH_CHANNEL_ID_SESSION), (0, 3));
    assert_eq!((SWITCH_APPLICATION_INTERFACE, SWITCH_API_INTERFACE), (4, 5));
    assert_eq!(SAF_MEDIA_TAP, 4);
    assert_eq!(SWITCH_STACK_BOTTOM, 1);
    // Not in the measured file: the first value of switch_event_types_t in switch_types.h.
    assert_eq!(SWITCH_EVENT_CUSTOM, 0);
}
