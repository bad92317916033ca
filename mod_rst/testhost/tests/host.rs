//! The host itself: it exports every function the module imports, and it
//! answers script errors with JSON, not a crash.

mod common;

use common::*;

/// Every `pub fn switch_*` declared in mod_rst/src/ffi/functions.rs.
fn imported_names() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../src/ffi/functions.rs");
    let text = std::fs::read_to_string(path).unwrap();
    text.split("pub fn ")
        .skip(1)
        .filter_map(|rest| rest.split('(').next())
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with("switch_"))
        .collect()
}

#[test]
fn exports_every_function_the_module_imports() {
    let names = imported_names();
    assert!(names.len() >= 20, "{names:?}");
    let mut host = Host::start();
    let answer = host.ok(&format!("selftest {}", names.join(" ")));
    assert_eq!(answer["checked"], names.len());
    assert_eq!(answer["missing"], serde_json::json!([]), "{answer}");
    host.quit();
}

#[test]
fn script_errors_are_answered_not_fatal() {
    let mut host = Host::start();
    for command in [
        "frobnicate",
        "load /nonexistent/libmod_rst.so /tmp",
        "app nobody rst",
        "api uuid_rst x",
        "media nobody 1",
        "session",
        "hangup nobody",
        "unload",
        "codec nobody PCMU",
    ] {
        let answer = host.cmd(command);
        assert_eq!(answer["ok"], false, "{command}: {answer}");
        assert!(answer["error"].is_string(), "{command}: {answer}");
    }
    let u = uuid(1);
    for command in [
        format!("session {u} codec=G729"),
        format!("session {u} codec=PCMU rate=16000"),
    ] {
        let answer = host.cmd(&command);
        assert_eq!(answer["ok"], false, "{command}: {answer}");
    }
    host.ok(&format!("session {u} codec=L16 rate=16000"));
    let answer = host.cmd(&format!("session {u}"));
    assert_eq!(answer["ok"], false, "a second session {u}: {answer}");
    assert_eq!(host.ok(&format!("stats {u}"))["rate"], 16000);
    assert_eq!(host.quit()["ok"], true);
}
