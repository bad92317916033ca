//! The loopback ceiling: a bare receiver that only counts datagrams (optionally
//! answering INV and BYE with ACK, to stand in for a receiver in tests), and a
//! blaster that sends one DATA datagram over and over as fast as it can.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rst_proto::{Ack, Data, Direction, Message, PayloadType, Uuid};

use rst_net::batch::{self as net, RecvBatch};

/// What the bare receiver counted, by the first five bytes of each datagram.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub datagrams: u64,
    pub bytes: u64,
    pub inv: u64,
    pub data: u64,
    pub bye: u64,
    pub ack: u64,
    /// Datagrams that start with none of the four commands.
    pub other: u64,
    /// ACKs sent back (only with [`Options::ack`]).
    pub acks_sent: u64,
}

/// How the bare receiver behaves.
#[derive(Debug, Default, Clone, Copy)]
pub struct Options {
    /// Answer every well-formed INV and BYE with `ACK :UUID`, as a real receiver does.
    pub ack: bool,
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    counters: [AtomicU64; 8],
}

impl Shared {
    fn add(&self, counts: &Counts) {
        let values = [
            counts.datagrams,
            counts.bytes,
            counts.inv,
            counts.data,
            counts.bye,
            counts.ack,
            counts.other,
            counts.acks_sent,
        ];
        for (counter, value) in self.counters.iter().zip(values) {
            if value != 0 {
                counter.fetch_add(value, Relaxed);
            }
        }
    }

    fn snapshot(&self) -> Counts {
        let v = |i: usize| self.counters[i].load(Relaxed);
        Counts {
            datagrams: v(0),
            bytes: v(1),
            inv: v(2),
            data: v(3),
            bye: v(4),
            ack: v(5),
            other: v(6),
            acks_sent: v(7),
        }
    }
}

/// A counting receiver running on its own thread until [`stop`](Receiver::stop).
#[derive(Debug)]
pub struct Receiver {
    local: SocketAddr,
    shared: Arc<Shared>,
    thread: JoinHandle<io::Result<()>>,
}

impl Receiver {
    /// Binds `addr` (port 0 for any free port) and starts counting.
    pub fn bind(addr: SocketAddr, options: Options) -> anyhow::Result<Receiver> {
        let socket = net::bind(addr).with_context(|| format!("cannot bind UDP {addr}"))?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let local = socket.local_addr()?;
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("rst-load-receiver".into())
            .spawn({
                let shared = shared.clone();
                move || receive(&socket, options, &shared)
            })?;
        Ok(Receiver {
            local,
            shared,
            thread,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// What has been counted so far (updated once per batch of up to 64 datagrams).
    pub fn counts(&self) -> Counts {
        self.shared.snapshot()
    }

    /// Stops the receiver (within about 50 ms) and returns the final counts.
    pub fn stop(self) -> anyhow::Result<Counts> {
        self.shared.stop.store(true, Relaxed);
        match self.thread.join() {
            Ok(result) => result.context("receiver failed")?,
            Err(_) => anyhow::bail!("receiver thread panicked"),
        }
        Ok(self.shared.snapshot())
    }
}

fn receive(socket: &UdpSocket, options: Options, shared: &Shared) -> io::Result<()> {
    let mut batch = RecvBatch::new(2048);
    let mut ack = Vec::with_capacity(128);
    while !shared.stop.load(Relaxed) {
        let count = match batch.recv(socket) {
            Ok(count) => count,
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionRefused
                ) =>
            {
                continue
            }
            Err(error) => return Err(error),
        };
        let mut counts = Counts {
            datagrams: count as u64,
            ..Counts::default()
        };
        for i in 0..count {
            // No GRO on this socket (`net::bind` does not ask for it): a
            // message is one datagram, as `datagrams: count` above counts.
            let datagram = batch.message(i);
            counts.bytes += datagram.len() as u64;
            let kind = match datagram.get(..5) {
                Some(b"DATA:") => &mut counts.data,
                Some(b"INV :") => &mut counts.inv,
                Some(b"BYE :") => &mut counts.bye,
                Some(b"ACK :") => &mut counts.ack,
                _ => &mut counts.other,
            };
            *kind += 1;
            if options.ack && matches!(datagram.get(..5), Some(b"INV :" | b"BYE :")) {
                if let (Ok(message), Some(from)) = (Message::parse(datagram), batch.sender(i)) {
                    ack.clear();
                    let reply = Message::Ack(Ack {
                        uuid: message.uuid(),
                        rtp_ports: None,
                    });
                    if reply.encode(&mut ack).is_ok() && socket.send_to(&ack, from).is_ok() {
                        counts.acks_sent += 1;
                    }
                }
            }
        }
        shared.add(&counts);
    }
    Ok(())
}

/// What [`blast`] sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct Blast {
    pub sent: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl Blast {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// One `DATA` datagram (PCMU, direction R, a fixed UUID) of exactly `len` bytes,
/// or the shortest possible if `len` is smaller than the header.
pub fn data_datagram(len: usize) -> Vec<u8> {
    const UUID: &str = "00000000-0000-4000-8000-000000000000";
    let uuid = Uuid::new(UUID).expect("valid uuid");
    let header = |payload: usize| {
        let mut out = Vec::new();
        Data::encode_header(uuid, Direction::Read, PayloadType::PCMU, payload, &mut out);
        out
    };
    // The length field's digits depend on the payload length: settle it.
    let mut payload = len.saturating_sub(header(0).len());
    while payload > 0 && header(payload).len() + payload > len {
        payload -= 1;
    }
    let mut datagram = header(payload);
    let tone = crate::g711::tone_frame(crate::g711::TONE_HZ_READ);
    datagram.extend((0..payload).map(|i| crate::g711::linear_to_ulaw(tone[i % tone.len()])));
    datagram
}

/// Sends one `datagram_len`-byte DATA datagram to `target` over and over, in
/// batches of 64, as fast as possible until `duration` has passed or `stop` is set.
pub fn blast(
    target: SocketAddr,
    datagram_len: usize,
    duration: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<Blast> {
    let socket = net::connect(target).with_context(|| format!("cannot reach UDP {target}"))?;
    let datagram = data_datagram(datagram_len);
    let batch = vec![datagram.as_slice(); rst_net::BATCH];
    let start = Instant::now();
    let mut report = Blast::default();
    while start.elapsed() < duration && !stop.load(Relaxed) {
        let sent = net::send_batch(&socket, &batch, |_| {});
        report.sent += sent.sent as u64;
        report.errors += sent.errors as u64;
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_datagrams_have_the_asked_length_and_parse() {
        for len in [60, 100, 180, 211, 1000] {
            let datagram = data_datagram(len);
            assert_eq!(datagram.len(), len);
            assert!(matches!(Message::parse(&datagram), Ok(Message::Data(_))));
        }
    }
}
