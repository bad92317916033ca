use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use udp_server::{Metrics, Settings};

/// The rst receiver: records the calls that mod_rst and tap_daemon send.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file; its keys are the flags' names (record-dir = "...")
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let file = match &cli.config {
        Some(path) => Settings::load(path)?,
        None => Settings::default(),
    };
    let config = cli
        .settings
        .over(file)
        .resolve()
        .context("invalid configuration")?;

    let socket = udp_server::bind(config.listen)?;
    tracing::info!(
        "listening on {} and recording into {}",
        socket.local_addr()?,
        config.record_dir.display()
    );

    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    udp_server::run(socket, config, Arc::new(Metrics::default()), shutdown).await
}

/// SIGINT or SIGTERM: finish every call and exit.
async fn stop_on_signal(shutdown: CancellationToken) {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("stopping: finishing every call");
    shutdown.cancel();
}
