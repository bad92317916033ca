//! Build script of mod_rst.
//!
//! Without the `bindgen-check` feature it does nothing: the module's FreeSWITCH
//! declarations are hand-written (`src/ffi/types.rs`) and need no headers.
//!
//! With `--features bindgen-check` it runs bindgen on the installed FreeSWITCH
//! headers and writes `$OUT_DIR/freeswitch_bindgen.rs`, which
//! `tests/bindgen_layout.rs` compares with the hand-written declarations. The
//! headers are found through, in this order:
//!
//! - `FREESWITCH_INCLUDE_DIR`: the directory holding `switch.h`
//!   (e.g. `/usr/local/freeswitch/include/freeswitch`);
//! - `pkg-config freeswitch` (set `PKG_CONFIG_PATH` to the directory of
//!   `freeswitch.pc`, e.g. `/usr/local/freeswitch/lib/pkgconfig`).
//!
//! `FREESWITCH_EXTRA_INCLUDE_DIRS` (colon-separated) adds include directories
//! for headers that `switch.h` includes from elsewhere, in either case.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "bindgen-check")]
    bindgen_check::generate();
}

#[cfg(feature = "bindgen-check")]
mod bindgen_check {
    use std::env;
    use std::path::{Path, PathBuf};

    const INCLUDE_DIR_VAR: &str = "FREESWITCH_INCLUDE_DIR";
    const EXTRA_DIRS_VAR: &str = "FREESWITCH_EXTRA_INCLUDE_DIRS";

    /// The structs the module touches (`src/ffi/types.rs`).
    const TYPES: &[&str] = &[
        "switch_frame_t",
        "switch_frame_geometry_t",
        "switch_codec_t",
        "switch_codec_implementation_t",
        "switch_loadable_module_interface_t",
        "switch_loadable_module_function_table_t",
        "switch_application_interface_t",
        "switch_api_interface_t",
        "switch_stream_handle_t",
        "switch_xml",
        // Scalar typedefs the declarations use.
        "switch_media_bug_flag_t",
        "switch_payload_t",
        "switch_size_t",
        "switch_time_t",
    ];

    /// The enums whose values the module passes or matches on.
    const ENUMS: &[&str] = &[
        "switch_status_t",
        "switch_bool_t",
        "switch_abc_type_t",
        "switch_media_bug_flag_enum_t",
        "switch_log_level_t",
        "switch_text_channel_t",
        "switch_module_interface_name_t",
        "switch_event_types_t",
        "switch_stack_t",
        "switch_application_flag_enum_t",
    ];

    /// `#define`d constants.
    const VARS: &[&str] = &["SWITCH_API_VERSION"];

    pub fn generate() {
        println!("cargo:rerun-if-env-changed={INCLUDE_DIR_VAR}");
        println!("cargo:rerun-if-env-changed={EXTRA_DIRS_VAR}");

        let mut include_dirs = find_headers();
        if let Some(extra) = env::var_os(EXTRA_DIRS_VAR) {
            include_dirs.extend(env::split_paths(&extra).filter(|p| !p.as_os_str().is_empty()));
        }

        let mut builder = bindgen::Builder::default()
            .header_contents("mod_rst_bindgen_check.h", "#include <switch.h>\n")
            .clang_args(include_dirs.iter().map(|d| format!("-I{}", d.display())))
            // Enumerators as plain constants under their C names
            // (`SWITCH_STATUS_SUCCESS`, not `switch_status_t_SWITCH_STATUS_SUCCESS`),
            // as the hand-written declarations name them.
            .prepend_enum_name(false)
            // The test compares with the hand-written declarations; bindgen's own
            // layout tests would only check bindgen against the compiler.
            .layout_tests(false)
            .derive_debug(false)
            .derive_default(false)
            .generate_comments(false)
            .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
        for ty in TYPES.iter().chain(ENUMS) {
            builder = builder.allowlist_type(format!("^{ty}$"));
        }
        for var in VARS {
            builder = builder.allowlist_var(format!("^{var}$"));
        }

        let bindings = builder.generate().unwrap_or_else(|e| {
            panic!(
                "bindgen-check: bindgen failed on <switch.h> with include directories {include_dirs:?}: {e}\n\
                 If a header that switch.h includes is missing, add its directory to \
                 {EXTRA_DIRS_VAR} (colon-separated). bindgen needs libclang \
                 (Debian/Ubuntu: apt-get install libclang-dev; or set LIBCLANG_PATH)."
            )
        });
        let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"))
            .join("freeswitch_bindgen.rs");
        bindings
            .write_to_file(&out)
            .unwrap_or_else(|e| panic!("bindgen-check: cannot write {}: {e}", out.display()));
    }

    /// The include directories holding `switch.h`: `FREESWITCH_INCLUDE_DIR`, else
    /// pkg-config's; panics with what to set when neither gives one.
    fn find_headers() -> Vec<PathBuf> {
        if let Some(dir) = env::var_os(INCLUDE_DIR_VAR).filter(|d| !d.is_empty()) {
            let dir = PathBuf::from(dir);
            if !dir.join("switch.h").is_file() {
                panic!(
                    "bindgen-check: {INCLUDE_DIR_VAR}={} has no switch.h; set it to the directory \
                     of FreeSWITCH's headers (e.g. /usr/local/freeswitch/include/freeswitch)",
                    dir.display()
                );
            }
            return vec![dir];
        }

        let pkg = pkg_config::Config::new()
            // Only the headers are wanted: the module never links libfreeswitch.
            .cargo_metadata(false)
            .env_metadata(true)
            .probe("freeswitch");
        match pkg {
            Ok(lib) if lib.include_paths.iter().any(|d| has_switch_h(d)) => lib.include_paths,
            Ok(lib) => panic!(
                "bindgen-check: `pkg-config freeswitch` gives include directories {:?}, none with \
                 switch.h; set {INCLUDE_DIR_VAR} to the directory of FreeSWITCH's headers",
                lib.include_paths
            ),
            Err(e) => panic!(
                "bindgen-check: cannot find FreeSWITCH's headers. Set {INCLUDE_DIR_VAR} to the \
                 directory holding switch.h (e.g. /usr/local/freeswitch/include/freeswitch), or \
                 make `pkg-config freeswitch` work (PKG_CONFIG_PATH=<prefix>/lib/pkgconfig).\n\
                 pkg-config said: {e}"
            ),
        }
    }

    fn has_switch_h(dir: &Path) -> bool {
        dir.join("switch.h").is_file()
    }
}
