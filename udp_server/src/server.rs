//! The receiver's tokio shell: the UDP receive loop around the [`CallTable`],
//! the recorder thread, the metrics endpoint and the periodic summary.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::calls::{CallTable, Limits, Output};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::record::{EndReason, RecordOptions};
use crate::recorder::{self, Batch, Command};

/// Datagrams handled per wake-up before the batch goes to the recorder; bounds
/// the work per wake-up and the batch size.
const BATCH_DATAGRAMS: usize = 64;
/// Batches queued for the recorder; when the disk is slower than the network the
/// receive loop waits here and the socket buffer absorbs the burst.
const RECORDER_QUEUE: usize = 1024;
/// Receive buffer asked of the kernel, so bursts are not dropped while the loop is busy.
const SOCKET_RECEIVE_BUFFER: usize = 8 << 20;

/// Binds the receiver's UDP socket with a large receive buffer.
pub fn bind(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    if let Err(error) = socket.set_recv_buffer_size(SOCKET_RECEIVE_BUFFER) {
        tracing::debug!(%error, "cannot enlarge the receive buffer");
    }
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot listen on UDP {addr}: is another receiver running?"))?;
    Ok(UdpSocket::from_std(socket.into())?)
}

/// Runs the receiver on `socket` until `shutdown` is cancelled, then ends every
/// call as `shutdown` and returns once all files are complete.
pub async fn run(
    socket: UdpSocket,
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.record_dir).with_context(|| {
        format!(
            "cannot create the record folder {}",
            config.record_dir.display()
        )
    })?;
    let record_dir = config.record_dir.canonicalize()?;
    let recovered = recorder::recover(&record_dir, &metrics);
    if recovered > 0 {
        tracing::warn!(
            recovered,
            "completed files left unfinished by an earlier run"
        );
    }

    let metrics_task = match config.metrics {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
            tracing::info!(addr = %listener.local_addr()?, "serving Prometheus metrics at /metrics");
            Some(tokio::spawn(serve_metrics(
                listener,
                metrics.clone(),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let stats_task = tokio::spawn(log_stats(
        config.stats_interval,
        metrics.clone(),
        shutdown.clone(),
    ));

    let (batches, queue) = mpsc::channel(RECORDER_QUEUE);
    let options = RecordOptions {
        record_dir,
        bare_payload: config.raw,
    };
    let recorder = {
        let metrics = metrics.clone();
        std::thread::Builder::new()
            .name("rst-recorder".into())
            .spawn(move || recorder::run(queue, options, metrics, |_| {}))?
    };

    let limits = Limits {
        idle_timeout: config.idle_timeout,
        max_calls: config.max_calls,
        allow: config.allow.clone(),
        default_l16_rate: config.l16_rate,
    };
    let mut receiver = Receiver {
        socket,
        table: CallTable::new(limits, metrics.clone()),
        metrics,
        ack: Vec::new(),
    };
    let result = receiver.receive(&batches, &shutdown).await;

    let mut batch = Batch::default();
    receiver
        .table
        .end_all(Instant::now(), EndReason::Shutdown, &mut |output| {
            receiver.ack.clear();
            push_output(&mut batch, output, Instant::now());
        });
    let _ = batches.send(batch).await;
    drop(batches);
    tokio::task::spawn_blocking(move || recorder.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the recorder thread panicked"))?;
    shutdown.cancel();
    stats_task.await?;
    if let Some(task) = metrics_task {
        task.await?;
    }
    result
}

struct Receiver {
    socket: UdpSocket,
    table: CallTable,
    metrics: Arc<Metrics>,
    ack: Vec<u8>,
}

impl Receiver {
    async fn receive(
        &mut self,
        batches: &mpsc::Sender<Batch>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut buffer = vec![0u8; 65536];
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut batch = Batch::default();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.table.expire(now, &mut |output| push_output(&mut batch, output, now));
                    batch.commands.push(Command::Flush);
                }
                received = self.socket.recv_from(&mut buffer) => {
                    let (len, from) = match received {
                        Ok(received) => received,
                        Err(error) => {
                            // ICMP errors from earlier sends surface here on some systems.
                            tracing::debug!(%error, "receive error");
                            continue;
                        }
                    };
                    self.handle(from, &buffer[..len], &mut batch);
                    for _ in 1..BATCH_DATAGRAMS {
                        match self.socket.try_recv_from(&mut buffer) {
                            Ok((len, from)) => self.handle(from, &buffer[..len], &mut batch),
                            Err(_) => break,
                        }
                    }
                }
            }
            if !batch.is_empty() && batches.send(batch).await.is_err() {
                anyhow::bail!("the recorder thread stopped");
            }
        }
    }

    fn handle(&mut self, from: SocketAddr, datagram: &[u8], batch: &mut Batch) {
        let now = Instant::now();
        let Receiver {
            socket,
            table,
            metrics,
            ack,
        } = self;
        table.handle(now, from, datagram, &mut |output| match output {
            Output::Reply(reply) => {
                ack.clear();
                if rst_proto::Message::Ack(reply).encode(ack).is_ok() {
                    // Never wait for the socket: a lost ACK is retransmitted by the sender.
                    match socket.try_send_to(ack, from) {
                        Ok(_) => metrics.acks_sent.fetch_add(1, Relaxed),
                        Err(_) => metrics.send_errors.fetch_add(1, Relaxed),
                    };
                }
            }
            other => push_output(batch, other, now),
        });
    }
}

fn push_output(batch: &mut Batch, output: Output<'_>, now: Instant) {
    let command = match output {
        Output::Reply(_) => return,
        Output::Start(start) => Command::Start {
            start,
            at: now,
            wall: OffsetDateTime::now_utc(),
        },
        Output::Identify {
            call,
            caller,
            callee,
        } => Command::Identify {
            call,
            caller: caller.to_owned(),
            callee: callee.to_owned(),
        },
        Output::Audio {
            call,
            direction,
            payload_type,
            payload,
        } => {
            let start = batch.bytes.len();
            batch.bytes.extend_from_slice(payload);
            Command::Audio {
                call,
                direction,
                payload_type,
                payload: start..batch.bytes.len(),
                at: now,
            }
        }
        Output::Malformed { call } => Command::Malformed { call },
        Output::End { call, reason } => Command::End {
            call,
            reason,
            wall: OffsetDateTime::now_utc(),
        },
    };
    batch.commands.push(command);
}

async fn log_stats(interval: Duration, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => tracing::info!("counters: {}", metrics.summary()),
        }
    }
    tracing::info!("final counters: {}", metrics.summary());
}

/// A minimal HTTP/1.0 responder for `GET /metrics`; anything else gets 404.
async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    loop {
        let (mut stream, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 2048];
            let read =
                tokio::time::timeout(Duration::from_secs(5), stream.read(&mut request)).await;
            let Ok(Ok(len)) = read else { return };
            let (status, body) = if request[..len].starts_with(b"GET /metrics") {
                ("200 OK", metrics.render())
            } else {
                ("404 Not Found", "not found: try /metrics\n".to_owned())
            };
            let response = format!(
                "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}
