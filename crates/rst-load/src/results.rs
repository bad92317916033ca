//! The one place every benchmark of the workspace keeps its figures, so a change in
//! speed is seen over time: one JSON line per figure, appended to
//! `bench-results.jsonl` at the workspace root (or the file `RST_BENCH_RESULTS`
//! names), with the date, the commit and the machine.
//!
//! ```text
//! {"at":"2026-12-04T09:50:00Z","commit":"397e95e","dirty":false,"cores":2,
//!  "cpu":"AMD EPYC ...","bench":"udp_server/throughput","figure":"lossless_ratio",
//!  "value":0.91,"unit":"x ceiling"}
//! ```
//!
//! Written by hand rather than with serde: the line is flat and its strings are
//! escaped below, and rst-load stays free of serde for the load generator's sake.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// One measured figure: a name within its bench, a value and its unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
}

impl Figure {
    pub fn new(name: impl Into<String>, value: f64, unit: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value,
            unit: unit.into(),
        }
    }
}

/// Appends `figures` of `bench` (for example `"udp_server/throughput"`) to the
/// results file and returns its path. A bench calls this once, at its end; a
/// failure to write is returned for the bench to print, never to abort on.
pub fn record(bench: &str, figures: &[Figure]) -> std::io::Result<PathBuf> {
    let path = results_path();
    let machine = Machine::here();
    let at = utc_now();
    let mut text = String::new();
    for figure in figures {
        text.push_str(&line(&at, &machine, bench, figure));
        text.push('\n');
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?
        .write_all(text.as_bytes())?;
    Ok(path)
}

/// `RST_BENCH_RESULTS`, else `bench-results.jsonl` in the workspace root (the
/// nearest ancestor of the current folder with a `Cargo.lock`; cargo runs benches
/// from their package's folder).
pub fn results_path() -> PathBuf {
    if let Some(path) = std::env::var_os("RST_BENCH_RESULTS") {
        return PathBuf::from(path);
    }
    let here = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let root = here
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .unwrap_or(&here);
    root.join("bench-results.jsonl")
}

/// What a figure was measured on.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    pub commit: String,
    pub dirty: bool,
    pub cores: usize,
    pub cpu: String,
}

impl Machine {
    pub fn here() -> Self {
        let git = |args: &[&str]| {
            Command::new("git")
                .args(args)
                .output()
                .ok()
                .filter(|out| out.status.success())
                .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        Self {
            commit: git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into()),
            dirty: git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|status| !status.is_empty()),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu: cpu_model(Path::new("/proc/cpuinfo")).unwrap_or_else(|| "unknown".into()),
        }
    }
}

fn cpu_model(cpuinfo: &Path) -> Option<String> {
    let text = std::fs::read_to_string(cpuinfo).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
}

fn line(at: &str, machine: &Machine, bench: &str, figure: &Figure) -> String {
    // JSON has no NaN or infinity: a figure that is not a number is written as null.
    let value = if figure.value.is_finite() {
        format!("{}", figure.value)
    } else {
        "null".to_owned()
    };
    format!(
        "{{\"at\":{},\"commit\":{},\"dirty\":{},\"cores\":{},\"cpu\":{},\"bench\":{},\"figure\":{},\"value\":{},\"unit\":{}}}",
        quote(at),
        quote(&machine.commit),
        machine.dirty,
        machine.cores,
        quote(&machine.cpu),
        quote(bench),
        quote(&figure.name),
        value,
        quote(&figure.unit),
    )
}

fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The current time as RFC 3339 UTC, to the second (civil date from days since
/// 1970 by Howard Hinnant's algorithm; no date crate for one timestamp).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_376_645), "2026-12-04T09:30:45Z");
    }

    #[test]
    fn a_line_is_json_with_every_field() {
        let machine = Machine {
            commit: "abc1234".into(),
            dirty: true,
            cores: 2,
            cpu: "Some \"quoted\" CPU".into(),
        };
        let text = line(
            "2026-12-04T09:30:45Z",
            &machine,
            "udp_server/throughput",
            &Figure::new("lossless_ratio", 0.91, "x ceiling"),
        );
        assert_eq!(
            text,
            "{\"at\":\"2026-12-04T09:30:45Z\",\"commit\":\"abc1234\",\"dirty\":true,\"cores\":2,\
             \"cpu\":\"Some \\\"quoted\\\" CPU\",\"bench\":\"udp_server/throughput\",\
             \"figure\":\"lossless_ratio\",\"value\":0.91,\"unit\":\"x ceiling\"}"
        );
        let nan = line("t", &machine, "b", &Figure::new("f", f64::NAN, "u"));
        assert!(nan.contains("\"value\":null"), "{nan}");
    }

    #[test]
    fn figures_are_appended_to_the_named_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.jsonl");
        // Only this test sets the variable or records.
        std::env::set_var("RST_BENCH_RESULTS", &path);
        record(
            "a/b",
            &[Figure::new("x", 1.0, "u"), Figure::new("y", 2.5, "v")],
        )
        .unwrap();
        record("a/b", &[Figure::new("z", 3.0, "w")]).unwrap();
        std::env::remove_var("RST_BENCH_RESULTS");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains("\"figure\":\"x\"") && lines[0].contains("\"value\":1,"));
        assert!(lines[2].contains("\"figure\":\"z\""));
    }
}
