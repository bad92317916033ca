//! Two network namespaces made for a live test or bench, joined by a veth
//! pair (`veth-a` in A, `veth-b` in B, link-local addresses, no IPv6:
//! nothing leaves the host, and the wire carries only what the run sends),
//! deleted when dropped; and what runs there: a thread entering a namespace,
//! the logs of the programs started in it.
//!
//! Shared by tests/live.rs and benches/live.rs (`#[path]`).
//! Needs root.

use std::fs::File;
use std::net::UdpSocket;
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `ip args`; its error output on failure.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
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
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ns.ip(&["link", "set", dev, "up"])?;
        }
        Ok(())
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
