//! Helpers shared by the integration tests: fixture files and external tools.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;

/// Path of a file in `tests/data/`.
pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Contents of a file in `tests/data/`.
pub fn read_data(name: &str) -> Vec<u8> {
    let path = data(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Parses native-endian (little-endian on every target we run) s16 samples.
pub fn s16le(bytes: &[u8]) -> Vec<i16> {
    assert_eq!(bytes.len() % 2, 0, "odd-sized s16 file");
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// A fresh scratch directory for one test, inside Cargo's per-target tmp dir.
pub fn scratch_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("rst-codec")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether an external program can be run. Live cross-checks against it are
/// skipped (loudly) when it is missing; the committed fixtures, which were
/// produced by the same programs, are checked regardless.
pub fn have_tool(tool: &str) -> bool {
    // Only whether it starts matters, not its exit status.
    let version_flag = match tool {
        "ffmpeg" => "-version",
        "tshark" => "-v",
        _ => "--version",
    };
    let found = Command::new(tool).arg(version_flag).output().is_ok();
    if !found {
        eprintln!("SKIPPED live cross-check: `{tool}` is not installed");
    }
    found
}

/// Runs a command and panics with its stderr if it fails.
pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// RTP payloads of one payload type in a capture, via tshark, in capture order.
pub fn tshark_payloads(pcap: &Path, pt: u8) -> Vec<Vec<u8>> {
    let stdout = run(Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args(["-Y", &format!("rtp.p_type == {pt}")])
        .args(["-T", "fields", "-e", "rtp.payload"]));
    String::from_utf8(stdout)
        .unwrap()
        .lines()
        .map(|line| hex(line.trim()))
        .collect()
}

fn hex(s: &str) -> Vec<u8> {
    // Older tshark prints payload bytes separated by colons.
    let digits: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    digits
        .chunks_exact(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// Directory of the shared real-world captures, if present on this machine.
pub fn captures_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/captures");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: shared/captures not found next to the work tree");
        None
    }
}

/// Index and values of the first differing sample, for a readable failure.
pub fn first_difference(a: &[i16], b: &[i16]) -> Option<(usize, i16, i16)> {
    a.iter()
        .zip(b)
        .enumerate()
        .find(|(_, (x, y))| x != y)
        .map(|(i, (x, y))| (i, *x, *y))
}
