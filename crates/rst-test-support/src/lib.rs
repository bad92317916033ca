//! What the tests of several rst crates share (a dev-dependency only).
//!
//! A test never sleeps a fixed time hoping something happened: it waits for
//! the event ([`wait_for`]), with a deadline generous enough for a machine
//! whose cores are all busy.

use std::process::Command;
use std::time::{Duration, Instant};

/// How long [`wait_for`] waits at most.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `check` until it gives a value; panics naming `what` after
/// [`PATIENCE`].
pub fn wait_for<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    wait_for_within(what, PATIENCE, check)
}

/// [`wait_for`], giving up after `patience` (for what may take longer to
/// start than a test's own work: a message broker, say).
pub fn wait_for_within<T>(
    what: &str,
    patience: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the network device `dev` (in namespace `netns`, or this
/// one) carries frames: its state UP and its queueing discipline attached.
///
/// A device just set up is not ready at once: until the kernel's link watch
/// runs (a work queue, later under load) it keeps the `noop` discipline,
/// which drops what is sent through it and reports success, so a
/// `tcpreplay` started then loses its first packets without a word.
pub fn wait_link_ready(netns: Option<&str>, dev: &str) -> Result<(), String> {
    let mut args = Vec::new();
    if let Some(netns) = netns {
        args.extend(["-n", netns]);
    }
    args.extend(["-o", "link", "show", dev]);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = Command::new("ip")
            .args(&args)
            .output()
            .map_err(|e| format!("ip {args:?}: {e}"))?;
        let shown = String::from_utf8_lossy(&out.stdout);
        if shown.contains("state UP") && !shown.contains("qdisc noop") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{dev} not ready after {PATIENCE:?}: {shown}{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
