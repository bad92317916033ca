//! A receiver on a thread and runtime of its own, for programs (and tests) that
//! embed one: start it, read its address, stop it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::{Config, Metrics};

/// A running receiver; dropping it stops it (as SIGTERM would) and waits.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    http: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Binds `config.listen` (port 0 picks one) and runs the receiver.
    pub fn start(config: Config) -> anyhow::Result<Running> {
        let metrics = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        let (bound, address) = std::sync::mpsc::channel();
        let thread = {
            let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
            std::thread::Builder::new()
                .name("rst-receiver".into())
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()?;
                    runtime.block_on(async move {
                        let socket = crate::bind(config.listen)?;
                        let http = match config.http {
                            Some(addr) => Some(crate::server::bind_http(addr).await?),
                            None => None,
                        };
                        let http_addr = http.as_ref().map(|l| l.local_addr()).transpose()?;
                        let _ = bound.send((socket.local_addr()?, http_addr));
                        crate::server::run_with(socket, http, config, metrics, shutdown).await
                    })
                })?
        };
        let (addr, http) = match address.recv_timeout(Duration::from_secs(10)) {
            Ok(addrs) => addrs,
            Err(_) => {
                let error = thread
                    .join()
                    .map_err(|_| anyhow::anyhow!("the receiver panicked"))?;
                return Err(error
                    .err()
                    .unwrap_or_else(|| anyhow::anyhow!("the receiver did not start")));
            }
        };
        Ok(Running {
            addr,
            http,
            metrics,
            shutdown,
            thread: Some(thread),
        })
    }

    /// The UDP address the receiver listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HTTP port's address, when it has one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Ends every call as `shutdown` and waits until the files are complete.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("the receiver panicked"))?
                .context("the receiver failed"),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
