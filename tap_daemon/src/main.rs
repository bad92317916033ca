//! The `tap_daemon` binary: flags and config file in, a capture run out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use tap_daemon::capture;
use tap_daemon::config::{self, Settings};
use tap_daemon::control::ControlConfig;

fn main() -> anyhow::Result<()> {
    let _log = rst_log::init();
    let flags = Settings::parse();
    let file = match &flags.config {
        Some(path) => config::load(path).context("configuration file")?,
        None => Settings::default(),
    };
    let settings = flags.over(file);
    let shutdown = Arc::new(AtomicBool::new(false));
    if let Some(control) = ControlConfig::from_settings(&settings) {
        // Controlled: nothing is captured until a client says start.
        let bound = tap_daemon::control::bind(&control).context("control plane sockets")?;
        watch_signals(shutdown.clone())?;
        return tap_daemon::control::serve(bound, control, &shutdown).context("control plane");
    }
    tracing::info!(
        "control disabled (no `secret` in the configuration file): the configured capture runs"
    );
    let run = settings.resolve()?;
    watch_signals(shutdown.clone())?;
    let summary = capture::run(&run, &shutdown).context("capture")?;
    tracing::info!(
        frames = summary.frames,
        calls = summary.pipeline.calls_started,
        rtp_sent = summary.output.rtp_sent,
        "done"
    );
    Ok(())
}

/// Ctrl-C (and SIGTERM on Unix) set `shutdown`; the capture then ends every
/// call with a BYE before the process exits. The handlers are installed
/// before this returns: a signal sent the moment the tap says it started is
/// never missed.
fn watch_signals(shutdown: Arc<AtomicBool>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("signal runtime")?;
    #[cfg(unix)]
    let (mut interrupt, mut terminate) = {
        use tokio::signal::unix::{signal, SignalKind};
        let _runtime = runtime.enter();
        (
            signal(SignalKind::interrupt()).context("installing a SIGINT handler")?,
            signal(SignalKind::terminate()).context("installing a SIGTERM handler")?,
        )
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async {
                #[cfg(unix)]
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
                #[cfg(not(unix))]
                let _ = tokio::signal::ctrl_c().await;
            });
            tracing::info!("signal received: ending every call");
            shutdown.store(true, Ordering::Relaxed);
        })
        .context("signal thread")?;
    Ok(())
}
