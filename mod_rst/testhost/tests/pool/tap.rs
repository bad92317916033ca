//! The tap's half of the pool test: thirty calls a real `tap_daemon`
//! captures live, made from one real call of the shared captures.
//!
//! `SIP_CALL_RTP_G711.pcap` (one SIP call, PCMU both ways; see SOURCES.md)
//! is copied thirty times into one capture whose calls run at once: copy
//! `n` has `200.57.` turned into `200.{10 + n}.` in its IPv4 addresses and
//! in its SIP and SDP text (the same length, so nothing else moves), so each
//! copy is its own call with its own Call-ID and media addresses. Its eight
//! seconds of ringing are squeezed into 100 ms, and it stops 12 s into the
//! audio. `tcpreplay` sends it in real time out of one end of a veth pair
//! made for the test; `tap_daemon` captures the other end promiscuously
//! (the frames are nobody's on this host, so the kernel drops them after
//! the capture) and sends the calls to the pool.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::common::*;

pub const CALLS: usize = 30;
/// The tap's name, which every call's record must carry (`tap`).
pub const NAME: &str = "pool-tap";
const CAPTURE: &str = "SIP_CALL_RTP_G711.pcap";
/// Seconds of the capture: its call is answered at 8.48 s.
const RINGING_ENDS: f64 = 8.4;
const KEEP_UNTIL: f64 = RINGING_ENDS + 12.0;

pub struct Tap {
    work: tempfile::TempDir,
    veth: Veth,
    daemon: Child,
    replay: Option<Child>,
}

impl Tap {
    /// The daemon started on a fresh veth pair, sending to `receivers`; or
    /// why not (not root, or a tool or the capture missing).
    pub fn start(receivers: &str) -> Result<Tap, String> {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root (a veth pair is needed)".into());
        }
        for tool in ["ip", "tcpreplay"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                return Err(format!(
                    "{tool} not found (apt-get install iproute2 tcpreplay)"
                ));
            }
        }
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/captures")
            .join(CAPTURE);
        let original = std::fs::read(&source).map_err(|e| {
            format!(
                "{}: {e} (../shared/captures beside the project)",
                source.display()
            )
        })?;
        let work = tempfile::tempdir().unwrap();
        std::fs::write(work.path().join("pool.pcap"), thirty_calls(&original)).unwrap();
        let veth = Veth::create()?;
        let daemon = Command::new(workspace_binary("tap_daemon"))
            .args(["--interface", &veth.capture, "--receivers", receivers])
            .args(["--failover-ms", "300", "--name", NAME])
            // `capture open` (info) says frames from now on are seen.
            .env("RUST_LOG", "warn,tap_daemon::capture=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join("tap_daemon.log")).unwrap())
            .spawn()
            .expect("tap_daemon starts");
        let mut tap = Tap {
            work,
            veth,
            daemon,
            replay: None,
        };
        // Frames sent before the capture is open are never seen.
        wait_for("tap_daemon to open its capture", || {
            if let Some(status) = tap.daemon.try_wait().unwrap() {
                panic!("tap_daemon: {status}: {}", tap.log("tap_daemon.log"));
            }
            tap.log("tap_daemon.log")
                .contains("capture open")
                .then_some(())
        });
        Ok(tap)
    }

    /// tcpreplay starts sending the thirty calls, in real time.
    pub fn replay(&mut self) {
        let replay = Command::new("tcpreplay")
            .args(["-i", &self.veth.send, "-q"])
            .arg(self.work.path().join("pool.pcap"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.work.path().join("tcpreplay.log")).unwrap())
            .spawn()
            .expect("tcpreplay starts");
        self.replay = Some(replay);
    }

    /// Waits for the replay's end, then stops the daemon (SIGTERM), which
    /// ends the calls still open: the capture stops mid-call.
    pub fn finish(mut self) {
        let mut replay = self.replay.take().expect("replay() was called");
        let status = wait_for("tcpreplay to send the capture", || {
            replay.try_wait().unwrap()
        });
        assert!(
            status.success(),
            "tcpreplay: {status}: {}",
            self.log("tcpreplay.log")
        );
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.daemon.id() as i32, libc::SIGTERM) };
        let status = wait_for("tap_daemon to stop", || self.daemon.try_wait().unwrap());
        assert!(
            status.success(),
            "tap_daemon: {status}: {}",
            self.log("tap_daemon.log")
        );
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.work.path().join(name)).unwrap_or_default()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        for child in self.replay.iter_mut().chain([&mut self.daemon]) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A veth pair in this namespace, deleted on drop.
struct Veth {
    send: String,
    capture: String,
}

impl Veth {
    fn create() -> Result<Veth, String> {
        let id = std::process::id() % 100_000;
        let veth = Veth {
            send: format!("rstp{id}s"),
            capture: format!("rstp{id}c"),
        };
        let ip = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| e.to_string())?;
            out.status
                .success()
                .then_some(())
                .ok_or_else(|| format!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr)))
        };
        let _ = ip(&["link", "del", &veth.send]);
        ip(&[
            "link",
            "add",
            &veth.send,
            "type",
            "veth",
            "peer",
            "name",
            &veth.capture,
        ])?;
        ip(&["link", "set", &veth.send, "up"])?;
        ip(&["link", "set", &veth.capture, "up"])?;
        // Before tcpreplay, or it could lose its first frames without a word.
        for dev in [&veth.send, &veth.capture] {
            rst_test_support::wait_link_ready(None, dev)?;
        }
        Ok(veth)
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.send])
            .output();
    }
}

/// The capture file of the thirty calls (classic pcap, as the source).
fn thirty_calls(original: &[u8]) -> Vec<u8> {
    let (header, packets) = pcap_packets(original);
    let mut out = header.to_vec();
    for (at, frame) in packets {
        let at = if at < RINGING_ENDS {
            at * 0.1 / RINGING_ENDS
        } else if at < KEEP_UNTIL {
            at - RINGING_ENDS + 0.1
        } else {
            continue;
        };
        for n in 0..CALLS {
            let frame = copy_of(frame, 10 + n as u8);
            let secs = at.floor();
            out.extend_from_slice(&(secs as u32).to_le_bytes());
            out.extend_from_slice(&(((at - secs) * 1e6) as u32).to_le_bytes());
            out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            out.extend_from_slice(&frame);
        }
    }
    out
}

/// The global header and each packet (seconds, Ethernet frame) of a
/// little-endian, microsecond pcap with whole frames.
fn pcap_packets(file: &[u8]) -> (&[u8], Vec<(f64, &[u8])>) {
    assert_eq!(
        file[..4],
        [0xd4, 0xc3, 0xb2, 0xa1],
        "{CAPTURE}: a little-endian pcap"
    );
    let word = |at: usize| u32::from_le_bytes(file[at..at + 4].try_into().unwrap());
    let mut packets = Vec::new();
    let mut at = 24;
    while at + 16 <= file.len() {
        let len = word(at + 8) as usize;
        assert_eq!(len, word(at + 12) as usize, "{CAPTURE}: whole frames");
        let when = f64::from(word(at)) + f64::from(word(at + 4)) / 1e6;
        packets.push((when, &file[at + 16..at + 16 + len]));
        at += 16 + len;
    }
    let first = packets[0].0;
    let packets = packets.into_iter().map(|(t, f)| (t - first, f)).collect();
    (&file[..24], packets)
}

/// `frame` with `200.57.` made `200.{octet}.` in its IPv4 header (its
/// checksum made again, the UDP checksum cleared, which IPv4 allows) and
/// in its payload's text.
fn copy_of(frame: &[u8], octet: u8) -> Vec<u8> {
    let mut frame = frame.to_vec();
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return frame;
    }
    let ip = 14;
    let header_len = usize::from(frame[ip] & 0x0f) * 4;
    for address in [ip + 12, ip + 16] {
        if frame[address..address + 2] == [200, 57] {
            frame[address + 1] = octet;
        }
    }
    frame[ip + 10..ip + 12].fill(0);
    let sum = checksum(&frame[ip..ip + header_len]);
    frame[ip + 10..ip + 12].copy_from_slice(&sum.to_be_bytes());
    if frame[ip + 9] == 17 && frame.len() >= ip + header_len + 8 {
        frame[ip + header_len + 6..ip + header_len + 8].fill(0);
    }
    let text = format!("200.{octet}.");
    let payload = ip + header_len + 8;
    let mut i = payload;
    while i + 7 <= frame.len() {
        if &frame[i..i + 7] == b"200.57." {
            frame[i..i + 7].copy_from_slice(text.as_bytes());
            i += 7;
        } else {
            i += 1;
        }
    }
    frame
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The UUIDs of the tap's calls found in `dirs` (their records, final or
/// provisional, name a Call-ID of the copies).
pub fn uuids_in(dirs: &[PathBuf]) -> std::collections::BTreeSet<String> {
    dirs.iter()
        .flat_map(|dir| {
            files_in(dir, ".json")
                .into_iter()
                .chain(files_in(dir, ".json.part"))
        })
        .filter_map(|path| {
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(path).ok()?).ok()
        })
        .filter(|record| {
            record["call_id"]
                .as_str()
                .is_some_and(|id| id.contains("@200."))
        })
        .filter_map(|record| record["uuid"].as_str().map(str::to_owned))
        .collect()
}

/// Bytes of audio the receiver at `dir` has flushed for `uuid` (both directions).
pub fn flushed(dir: &Path, uuid: &str) -> u64 {
    files_in(dir, ".wav.part")
        .into_iter()
        .chain(files_in(dir, ".wav"))
        .filter(|p| p.to_string_lossy().contains(uuid))
        .filter_map(|p| p.metadata().ok())
        .map(|m| m.len())
        .sum()
}
