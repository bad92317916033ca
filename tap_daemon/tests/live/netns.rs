//! Two network namespaces made for a live test or bench, joined by a veth
//! pair (`veth-a` in A, `veth-b` in B, link-local addresses, no IPv6:
//! nothing leaves the host, and the wire carries only what the run sends),
//! deleted when dropped; and what runs there: a thread entering a namespace,
//! the logs of the programs started in it.
//!
//! Shared by tests/live.rs and benches/live.rs (`#[path]`).
//! Needs root.

#![allow(dead_code)] // each user takes a different part

use std::ffi::OsStr;
use std::fs::File;
use std::net::UdpSocket;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Runs `ip args`; its error output on failure.
pub fn ip(args: &[&str]) -> Result<(), String> {
    ip_output(args).map(drop)
}

/// Runs `ip args`: its output, or its error output on failure.
fn ip_output(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace, deleted (with its end of the veth) when dropped.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn add(name: String) -> Result<Netns, String> {
        ip(&["netns", "add", &name])?;
        Ok(Netns { name })
    }

    /// Runs `ip -n NS args`.
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Waits until `dev` in this namespace carries frames
    /// ([`rst_test_support::wait_link_ready`]).
    pub fn wait_up(&self, dev: &str) -> Result<(), String> {
        rst_test_support::wait_link_ready(Some(&self.name), dev)
            .map_err(|e| format!("in {}: {e}", self.name))
    }

    /// Runs `sysctl -qw settings` inside the namespace.
    pub fn sysctl(&self, settings: &[&str]) -> Result<(), String> {
        let status = Command::new("ip")
            .args(["netns", "exec", &self.name, "sysctl", "-qw"])
            .args(settings)
            .status()
            .map_err(|e| format!("sysctl: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("sysctl {settings:?} in {}: {status}", self.name))
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match ip(&["netns", "del", &self.name]) {
            Ok(()) => eprintln!("deleted namespace {}", self.name),
            Err(e) => eprintln!("cannot delete namespace {}: {e}", self.name),
        }
    }
}

/// Namespaces A and B joined by veth-a (`a_addr`) and veth-b (`b_addr`).
/// The fields drop in order, B after A, each deleting its namespace.
#[derive(Debug)]
pub struct Pair {
    pub a: Netns,
    pub b: Netns,
    pub a_addr: &'static str,
    pub b_addr: &'static str,
}

/// Why a [`Pair`] was not made.
#[derive(Debug)]
pub enum Unmade {
    /// Not even a namespace could be added: no right to (not root).
    NoRight(String),
    /// A later step failed.
    Failed(String),
}

impl std::fmt::Display for Unmade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unmade::NoRight(e) | Unmade::Failed(e) => f.write_str(e),
        }
    }
}

impl Pair {
    /// The namespaces `{tag}-a` and `{tag}-b`, with the veth between them up.
    pub fn new(tag: &str, a_addr: &'static str, b_addr: &'static str) -> Result<Pair, Unmade> {
        let a = Netns::add(format!("{tag}-a")).map_err(Unmade::NoRight)?;
        let b = Netns::add(format!("{tag}-b")).map_err(Unmade::Failed)?;
        let pair = Pair {
            a,
            b,
            a_addr,
            b_addr,
        };
        pair.link().map_err(Unmade::Failed)?;
        Ok(pair)
    }

    fn link(&self) -> Result<(), String> {
        // No IPv6: no router solicitations or MLD reports on the veth at
        // random moments.
        for ns in [&self.a, &self.b] {
            ns.sysctl(&[
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ])?;
        }
        ip(&[
            "link",
            "add",
            "veth-a",
            "netns",
            &self.a.name,
            "type",
            "veth",
            "peer",
            "name",
            "veth-b",
            "netns",
            &self.b.name,
        ])?;
        for (ns, dev, addr) in [
            (&self.a, "veth-a", self.a_addr),
            (&self.b, "veth-b", self.b_addr),
        ] {
            ns.ip(&["link", "set", "lo", "up"])?;
            ns.ip(&["addr", "add", &format!("{addr}/24"), "brd", "+", "dev", dev])?;
            ns.ip(&["link", "set", dev, "up"])?;
        }
        self.a.wait_up("veth-a")?;
        self.b.wait_up("veth-b")
    }

    /// One datagram from B to A across the veth (wakes a capture blocked
    /// on a quiet interface).
    pub fn poke(&self) {
        let (name, from, to) = (self.b.name.clone(), self.b_addr, self.a_addr);
        let _ = std::thread::spawn(move || -> std::io::Result<()> {
            enter(&name)?;
            let socket = UdpSocket::bind((from, 0))?;
            socket.send_to(b"poke", (to, 9))?;
            Ok(())
        })
        .join();
    }
}

/// `setns(2)`: the calling thread (and the threads it starts later) joins
/// the network namespace `name` made by `ip netns add`.
pub fn enter(name: &str) -> std::io::Result<()> {
    let file = File::open(Path::new("/var/run/netns").join(name))?;
    // SAFETY: setns reads a descriptor that `file` keeps open across the
    // call and changes only this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------- processes

/// A child run inside a namespace (`ip netns exec` execs it, so the child's
/// id is the program's), its stdout and stderr in `{name}.log` of its
/// folder; killed if still running when dropped.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(
        ns: &Netns,
        name: &str,
        program: impl AsRef<OsStr>,
        args: &[String],
        dir: &Path,
    ) -> Proc {
        let program = program.as_ref();
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).expect("a log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(program)
            .args(args)
            .current_dir(dir)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("a log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", program.to_string_lossy()));
        Proc {
            name: name.to_owned(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its output so far, ANSI colours removed.
    pub fn log(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(
            &std::fs::read(&self.log).unwrap_or_default(),
        ))
    }

    /// The end of the log, for a failure message.
    pub fn tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- {} (last lines)\n{}",
            self.name,
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }

    /// Waits until the log contains `text`; the process ending first,
    /// `timeout`, or `give_up()` turning true, is an error.
    pub fn wait_for_log(
        &mut self,
        text: &str,
        timeout: Duration,
        give_up: impl Fn() -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(text) {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Err(format!(
                    "{} exited ({status}) before {text:?}\n{}",
                    self.name,
                    self.tail()
                ));
            }
            if Instant::now() >= deadline || give_up() {
                return Err(format!(
                    "{}: no {text:?} after {timeout:?}\n{}",
                    self.name,
                    self.tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Waits (bounded) for the process to end.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to end by itself; `timeout` is a failure.
    pub fn finish(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait(timeout) {
            Some(status) => status,
            None => panic!(
                "{} still running after {timeout:?}\n{}",
                self.name,
                self.tail()
            ),
        }
    }

    /// SIGTERM.
    pub fn terminate(&self) {
        // SAFETY: kill(2) only sends a signal, to a child of ours that has
        // not been reaped (its id cannot have been reused).
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
    }

    /// SIGTERM, then waits (bounded) for the process to end.
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.child.try_wait().expect("wait") {
            return status;
        }
        self.terminate();
        self.finish(timeout)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `text` without its ANSI escapes (colours).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `key=N` in the last line of `log` that contains `marker`.
pub fn logged(log: &str, marker: &str, key: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains(marker))?;
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}
