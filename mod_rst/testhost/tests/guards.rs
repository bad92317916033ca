//! A deliberately misbehaving module (tests/evil/mod_evil.c): the host must
//! report each misuse and keep running.

mod common;

use std::process::Command;

use common::*;

#[test]
fn a_misbehaving_module_is_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let so = dir.path().join("mod_evil.so");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/evil/mod_evil.c"
        ))
        .status()
        .expect("a C compiler (cc)");
    assert!(status.success());
    let conf = conf_dir(&[]);
    let mut host = Host::start();
    host.ok(&format!("load {} {}", so.display(), conf.path().display()));
    let u = uuid(1);
    host.ok(&format!("session {u}"));
    let answer = host.cmd(&format!("app {u} evil"));
    assert_eq!(answer["ok"], true, "{answer}");
    let text = answer["violations"].to_string();
    for expected in [
        "unbalanced unlock",
        "is not a session",
        "outside its TAP_NATIVE callback",
        "double remove",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }
    host.ok(&format!("media {u} 0.2"));
    let answer = host.cmd("wait");
    assert!(
        answer["violations"]
            .to_string()
            .contains("deadlocks FreeSWITCH"),
        "{answer}"
    );
    // The bug left attached at shutdown is detached without a callback.
    let answer = host.cmd("unload");
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(
        answer["orphaned_bugs"].as_array().map(Vec::len),
        Some(1),
        "{answer}"
    );
    assert!(
        answer["violations"].to_string().contains("still attached"),
        "{answer}"
    );
    // ... and the host carries on.
    host.cmd(&format!("media {u} 0.2"));
    host.cmd("wait");
    let summary = host.cmd("summary");
    assert_eq!(summary["callbacks_after_close"], 0, "{summary}");
    assert_eq!(summary["locks_held"], 0, "{summary}");
    assert_eq!(host.quit()["ok"], true);
}
