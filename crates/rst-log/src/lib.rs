//! How rst's daemons (udp_server, tap_daemon) log: `tracing` events to
//! stderr, filtered by `RUST_LOG` (default `info`), written by a thread of
//! their own from a bounded queue that drops lines when full.
//!
//! Why not write stderr directly: a pipe nobody reads (a supervisor that
//! stopped reading, an orphaned child of a test) fills in 64 KiB, and every
//! thread that logs then blocks in `write`: a receiver stopped recording
//! calls and would not even exit on SIGTERM. A lost log line is the lesser
//! harm; [`lines_dropped`] counts them (udp_server's metrics show it).

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Lines queued for stderr at most (about a MiB of text): a burst is
/// written late, a stderr that stopped taking them costs this much.
const QUEUED_LINES: usize = 4096;

/// Installs the logger. Keep the guard until the process ends: dropping it
/// writes what is queued (waiting at most about a second for a stderr
/// nobody reads).
pub fn init() -> WorkerGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("rst-log")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(writer)
        .init();
    guard
}

/// Log lines dropped because stderr was not taking them (0 before [`init`]).
pub fn lines_dropped() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}
