//! Cross-checks the hand-written FreeSWITCH declarations (`src/ffi/types.rs`)
//! against bindgen's reading of the installed FreeSWITCH headers: for every
//! struct the module touches, size and alignment, and the offset and size of
//! every field the hand-written struct declares; for every enum value and
//! constant the module uses, its value.
//!
//! Only with `--features bindgen-check`; `build.rs` says how the headers are found:
//!
//! ```text
//! FREESWITCH_INCLUDE_DIR=/usr/local/freeswitch/include/freeswitch \
//!     cargo test -p mod_rst --features bindgen-check --test bindgen_layout
//! ```
#![cfg(feature = "bindgen-check")]

use std::mem::{align_of, offset_of, size_of, size_of_val};

use mod_rst::ffi::types as hand;

/// What bindgen generated from `<switch.h>` (see `build.rs`).
#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    unsafe_op_in_unsafe_fn,
    missing_debug_implementations,
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]
mod bg {
    include!(concat!(env!("OUT_DIR"), "/freeswitch_bindgen.rs"));
}

/// The size of the field that `_project` reaches, from a type that may not be
/// constructible.
fn field_size<T, F>(_project: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// One field: the same offset and size in both declarations. `hand => c` names
/// the C field where the hand-written one is renamed.
macro_rules! field {
    ($name:ident, $hand:ident) => {
        field!($name, $hand => $hand)
    };
    ($name:ident, $hand:ident => $c:ident) => {{
        assert_eq!(
            offset_of!(hand::$name, $hand),
            offset_of!(bg::$name, $c),
            "offset of {}.{} (C field {})",
            stringify!($name),
            stringify!($hand),
            stringify!($c),
        );
        assert_eq!(
            field_size(|s: &hand::$name| &s.$hand),
            field_size(|s: &bg::$name| &s.$c),
            "size of {}.{} (C field {})",
            stringify!($name),
            stringify!($hand),
            stringify!($c),
        );
    }};
}

/// A struct: size, alignment and every field of the hand-written declaration.
/// The list must name every hand-written field (the destructuring below has no
/// `..`, so a field added to `types.rs` and not here does not compile; rustc
/// words that as "pattern requires `..`").
macro_rules! same_layout {
    ($name:ident, [$($hand:ident $(=> $c:ident)?),* $(,)?]) => {{
        #[allow(dead_code)]
        fn every_field_listed(v: &hand::$name) {
            let hand::$name { $($hand: _),* } = v;
        }
        assert_eq!(
            size_of::<hand::$name>(),
            size_of::<bg::$name>(),
            "sizeof {}",
            stringify!($name)
        );
        assert_eq!(
            align_of::<hand::$name>(),
            align_of::<bg::$name>(),
            "alignof {}",
            stringify!($name)
        );
        $(field!($name, $hand $(=> $c)?);)*
    }};
}

/// Scalar typedefs: the same size and alignment (bindgen types enums as
/// `c_uint`/`c_int`; the ABI only sees the width).
macro_rules! same_scalar {
    ($($name:ident),* $(,)?) => {{
        $(
            assert_eq!(size_of::<hand::$name>(), size_of::<bg::$name>(), "sizeof {}", stringify!($name));
            assert_eq!(align_of::<hand::$name>(), align_of::<bg::$name>(), "alignof {}", stringify!($name));
        )*
    }};
}

/// Enumerators: the same value, and the same width.
macro_rules! same_enum_values {
    ($($name:ident),* $(,)?) => {{
        $(
            assert_eq!(hand::$name as i128, bg::$name as i128, "value of {}", stringify!($name));
            assert_eq!(
                size_of_val(&hand::$name),
                size_of_val(&bg::$name),
                "width of {}",
                stringify!($name)
            );
        )*
    }};
}

#[test]
fn frame_layout() {
    same_layout!(
        switch_frame_t,
        [
            codec, source, packet, packetlen, extra_data, data, datalen, buflen, samples, rate,
            channels, payload, timestamp, seq, ssrc, m, flags, user_data, pmap, img, geometry,
        ]
    );
    same_layout!(switch_frame_geometry_t, [w, h, x, y, z, m => M, big_x => X]);
}

#[test]
fn codec_layout() {
    same_layout!(
        switch_codec_t,
        [
            codec_interface,
            implementation,
            fmtp_in,
            fmtp_out,
            flags,
            memory_pool,
            private_info,
            agreed_pt,
            mutex,
            next,
            session,
            cur_frame,
        ]
    );
    same_layout!(
        switch_codec_implementation_t,
        [
            codec_type,
            ianacode,
            iananame,
            fmtp,
            samples_per_second,
            actual_samples_per_second,
            bits_per_second,
            microseconds_per_packet,
            samples_per_packet,
            decoded_bytes_per_packet,
            encoded_bytes_per_packet,
            number_of_channels,
            codec_frames_per_packet,
            init,
            encode,
            decode,
            encode_video,
            decode_video,
            codec_control,
            destroy,
            codec_id,
            impl_id,
            modname,
            next,
        ]
    );
}

#[test]
fn module_table_and_interfaces_layout() {
    same_layout!(
        switch_loadable_module_function_table_t,
        [switch_api_version, load, shutdown, runtime, flags]
    );
    same_layout!(
        switch_loadable_module_interface_t,
        [
            module_name,
            endpoint_interface,
            timer_interface,
            dialplan_interface,
            codec_interface,
            application_interface,
            chat_application_interface,
            api_interface,
            json_api_interface,
            file_interface,
            speech_interface,
            directory_interface,
            chat_interface,
            say_interface,
            asr_interface,
            management_interface,
            limit_interface,
            database_interface,
            rwlock,
            refs,
            pool,
        ]
    );
    same_layout!(
        switch_application_interface_t,
        [
            interface_name,
            application_function,
            long_desc,
            short_desc,
            syntax,
            flags,
            rwlock,
            refs,
            reflock,
            parent,
            next,
        ]
    );
    same_layout!(
        switch_api_interface_t,
        [
            interface_name,
            desc,
            function,
            syntax,
            rwlock,
            refs,
            reflock,
            parent,
            next,
        ]
    );
    same_layout!(
        switch_stream_handle_t,
        [
            read_function,
            write_function,
            raw_write_function,
            data,
            end,
            data_size,
            data_len,
            alloc_len,
            alloc_chunk,
            param_event,
        ]
    );
}

#[test]
fn xml_layout() {
    same_layout!(
        switch_xml,
        [
            name,
            attr,
            txt,
            free_path,
            off,
            next,
            sibling,
            ordered,
            child,
            parent,
            flags,
            is_switch_xml_root_t,
            refs,
            open,
            close,
        ]
    );
}

#[test]
fn scalar_types() {
    same_scalar!(
        switch_status_t,
        switch_bool_t,
        switch_abc_type_t,
        switch_media_bug_flag_t,
        switch_log_level_t,
        switch_text_channel_t,
        switch_module_interface_name_t,
        switch_event_types_t,
        switch_stack_t,
        switch_payload_t,
        switch_size_t,
        switch_time_t,
    );
}

#[test]
fn values_used() {
    // A `#define`: bindgen guesses its Rust type, so only the value is compared.
    assert_eq!(
        hand::SWITCH_API_VERSION as i128,
        bg::SWITCH_API_VERSION as i128,
        "value of SWITCH_API_VERSION"
    );
    same_enum_values!(
        SWITCH_STATUS_SUCCESS,
        SWITCH_STATUS_FALSE,
        SWITCH_STATUS_MEMERR,
        SWITCH_STATUS_GENERR,
        SWITCH_STATUS_NOTFOUND,
        SWITCH_FALSE,
        SWITCH_TRUE,
        SWITCH_ABC_TYPE_INIT,
        SWITCH_ABC_TYPE_READ,
        SWITCH_ABC_TYPE_WRITE,
        SWITCH_ABC_TYPE_READ_PING,
        SWITCH_ABC_TYPE_TAP_NATIVE_READ,
        SWITCH_ABC_TYPE_TAP_NATIVE_WRITE,
        SWITCH_ABC_TYPE_CLOSE,
        SMBF_READ_STREAM,
        SMBF_WRITE_STREAM,
        SMBF_READ_PING,
        SMBF_STEREO,
        SMBF_NO_PAUSE,
        SMBF_TAP_NATIVE_READ,
        SMBF_TAP_NATIVE_WRITE,
        SMBF_ONE_ONLY,
        SWITCH_LOG_DEBUG,
        SWITCH_LOG_INFO,
        SWITCH_LOG_NOTICE,
        SWITCH_LOG_WARNING,
        SWITCH_LOG_ERROR,
        SWITCH_CHANNEL_ID_LOG,
        SWITCH_CHANNEL_ID_SESSION,
        SWITCH_APPLICATION_INTERFACE,
        SWITCH_API_INTERFACE,
        SAF_MEDIA_TAP,
        SWITCH_EVENT_CUSTOM,
        SWITCH_STACK_BOTTOM,
    );
}
