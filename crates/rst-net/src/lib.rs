//! The I/O shell around [`rst_proto::stream::Stream`] that rst's two senders
//! share (mod_rst's sender thread and tap_daemon's output): which socket a
//! datagram leaves from, the two RTP sockets of a call, the control socket
//! that hears ICMP errors, and sends batched with `sendmmsg`. And, in
//! [`batch`], the receiver's and the load generator's batched UDP I/O
//! (`recvmmsg`, `sendmmsg` on a connected socket).
//!
//! The protocol (what to send, when, to whom, and failover) stays in the
//! sans-IO [`Stream`](rst_proto::stream::Stream); this crate only moves bytes.
//! Blocking std sockets and `libc` system calls: no async runtime, so mod_rst
//! can use it inside FreeSWITCH.
//!
//! Also the calling thread's CPU clock ([`thread_cpu_ns`]) and its count of
//! context switches ([`thread_context_switches`]), which mod_rst's callback
//! sampling, its test host and its benchmarks read.
//!
//! Linux only: `sendmmsg`, `IP_RECVERR` and `MSG_ERRQUEUE` are Linux's.

pub mod batch;
mod sys;

pub use sys::gso_in_use;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use rst_proto::stream::Via;
use rst_proto::{Direction, RtpPorts};

/// Datagrams handed to the kernel in one system call (`sendmmsg`,
/// `recvmmsg`): the kernel takes up to 1024; the send paths' arrays live on
/// the stack, and 64 keeps them at a few KiB.
pub const BATCH: usize = 64;

/// The calling thread's CPU time in ns (`CLOCK_THREAD_CPUTIME_ID`): unlike
/// wall time, not inflated while the thread is preempted on a busy machine.
/// A system call (the vDSO does not serve this clock), so a few hundred ns.
pub fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// How many times the calling thread has left the CPU, by choice or
/// preempted (`getrusage(RUSAGE_THREAD)`: `ru_nvcsw + ru_nivcsw`). A system
/// call; 0 if it fails.
pub fn thread_context_switches() -> u64 {
    // SAFETY: all-zero is a valid `rusage` (integers and timevals).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes the rusage we pass.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return 0;
    }
    (usage.ru_nvcsw as u64).wrapping_add(usage.ru_nivcsw as u64)
}

/// The wildcard address of `target`'s family, port 0.
pub fn any_for(target: SocketAddr) -> SocketAddr {
    if target.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    }
}

/// A control socket for receivers of `target`'s family: bound to an
/// ephemeral port, non-blocking, and hearing ICMP errors (see [`ErrorQueue`]).
pub fn control_socket(target: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(any_for(target))?;
    socket.set_nonblocking(true)?;
    sys::enable_recverr(socket.as_raw_fd(), target.is_ipv6())?;
    Ok(socket)
}

/// The two RTP sockets of a call (R, W) and their ports: the receiver tells a
/// call's RTP apart by its source port. `blocking`: a full send buffer waits
/// rather than drops (a capture file read offline).
pub fn bind_rtp_pair(target: SocketAddr, blocking: bool) -> io::Result<([UdpSocket; 2], RtpPorts)> {
    let read = UdpSocket::bind(any_for(target))?;
    let write = UdpSocket::bind(any_for(target))?;
    read.set_nonblocking(!blocking)?;
    write.set_nonblocking(!blocking)?;
    let ports = RtpPorts {
        read: read.local_addr()?.port(),
        write: write.local_addr()?.port(),
    };
    Ok(([read, write], ports))
}

/// The socket a datagram of `via` leaves from: the control socket, or the
/// call's RTP socket of the direction (when the call has RTP sockets).
pub fn route<'a>(
    via: Via,
    control: &'a UdpSocket,
    rtp: Option<&'a [UdpSocket; 2]>,
) -> &'a UdpSocket {
    match (via, rtp) {
        (Via::Rtp(Direction::Read), Some([read, _])) => read,
        (Via::Rtp(Direction::Write), Some([_, write])) => write,
        _ => control,
    }
}

/// Sends one datagram at once. On a socket made by [`control_socket`], a
/// send can fail with an ICMP error of an earlier datagram (to another
/// receiver, perhaps): the datagram at hand did not go, and is sent once more.
pub fn send_now(socket: &UdpSocket, to: SocketAddr, bytes: &[u8]) -> io::Result<usize> {
    match socket.send_to(bytes, to) {
        Err(e) if e.raw_os_error().is_some_and(sys::is_earlier_error) => socket.send_to(bytes, to),
        result => result,
    }
}

/// An ICMP error a receiver's host sent back: `to` was where the datagram
/// went (the receiver), `error` what came back (port unreachable is
/// `ConnectionRefused`).
#[derive(Debug)]
pub struct IcmpError {
    pub to: SocketAddr,
    pub error: io::Error,
}

/// Reads the ICMP errors queued on a socket made by [`control_socket`].
///
/// A UDP socket that is not connected drops ICMP errors unless `IP_RECVERR`
/// is on; with it on, each error is queued with the destination of the
/// datagram that caused it, and read with `MSG_ERRQUEUE`. Read them before
/// sending: a pending error also fails the next send on the socket once.
#[derive(Debug)]
pub struct ErrorQueue;

impl ErrorQueue {
    /// Every error queued on `socket`, oldest first.
    pub fn drain(socket: &UdpSocket, mut each: impl FnMut(IcmpError)) {
        // Bounded: a flood of errors must not keep the thread here.
        for _ in 0..1024 {
            match sys::recv_error(socket.as_raw_fd()) {
                Ok(Some((to, errno))) => each(IcmpError {
                    to,
                    error: io::Error::from_raw_os_error(errno),
                }),
                Ok(None) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }
}

/// What a [`Outbox::flush`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    pub sent: u64,
    /// Not sent: a full send buffer (non-blocking sockets drop rather than
    /// wait) or an error of the network.
    pub failed: u64,
}

/// Datagrams gathered during one wake-up of a sender, sent at once with
/// `sendmmsg` (one system call per run of datagrams leaving one socket).
///
/// The datagrams are copied into buffers kept from flush to flush, so once
/// they have grown to the busiest wake-up's size, queueing allocates nothing;
/// a flush hands the kernel the datagrams where they lie, and allocates
/// nothing either.
/// The sockets must outlive the flush (the shell flushes before dropping any).
#[derive(Debug, Default)]
pub struct Outbox {
    bytes: Vec<u8>,
    items: Vec<sys::Queued>,
}

impl Outbox {
    pub fn new() -> Outbox {
        Outbox::default()
    }

    /// Queues `bytes` for `to` from `socket`.
    pub fn push(&mut self, socket: &UdpSocket, to: SocketAddr, bytes: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        self.items.push(sys::Queued {
            fd: socket.as_raw_fd(),
            to: sys::Address::from(to),
            start,
            end: self.bytes.len(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Sends everything queued, in order, and empties the outbox (keeping
    /// its buffers: the datagrams go to the kernel from where they were
    /// queued, nothing is gathered anew).
    pub fn flush(&mut self) -> Flushed {
        let mut flushed = Flushed::default();
        let mut first = 0;
        while first < self.items.len() {
            let fd = self.items[first].fd;
            let run = self.items[first..]
                .iter()
                .take(BATCH)
                .take_while(|item| item.fd == fd)
                .count();
            let sent = sys::send_batch(fd, &self.bytes, &self.items[first..first + run]);
            flushed.sent += sent as u64;
            flushed.failed += (run - sent) as u64;
            first += run;
        }
        self.items.clear();
        self.bytes.clear();
        flushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_flush_sends_every_datagram_in_order_from_its_socket() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let to = receiver.local_addr().unwrap();
        let a = control_socket(to).unwrap();
        let b = control_socket(to).unwrap();
        let mut outbox = Outbox::new();
        for n in 0..200u16 {
            let from = if n % 70 < 35 { &a } else { &b };
            outbox.push(from, to, &n.to_be_bytes());
        }
        assert_eq!(
            outbox.flush(),
            Flushed {
                sent: 200,
                failed: 0
            }
        );
        assert!(outbox.is_empty());
        let mut buffer = [0u8; 16];
        for n in 0..200u16 {
            let (len, from) = receiver.recv_from(&mut buffer).unwrap();
            assert_eq!(&buffer[..len], &n.to_be_bytes());
            let expected = if n % 70 < 35 { &a } else { &b };
            assert_eq!(from.port(), expected.local_addr().unwrap().port());
        }
    }

    #[test]
    fn datagrams_of_several_sizes_and_receivers_arrive_whole_and_in_order() {
        let receivers = [(); 2].map(|()| {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            socket
        });
        let to = receivers.each_ref().map(|r| r.local_addr().unwrap());
        let socket = control_socket(to[0]).unwrap();
        let mut outbox = Outbox::new();
        // Runs of equal datagrams (sent as one GSO message each), broken by
        // another size or another receiver, and more than a batch (not so
        // many that the receivers' buffers, read only afterwards, overflow).
        let datagram = |n: usize| -> (usize, Vec<u8>) {
            let receiver = usize::from(n % 50 >= 40);
            let len = if n % 7 == 6 { 300 } else { 211 };
            (receiver, vec![n as u8; len])
        };
        for n in 0..150 {
            let (receiver, bytes) = datagram(n);
            outbox.push(&socket, to[receiver], &bytes);
        }
        assert_eq!(outbox.flush().sent, 150);
        let mut buffer = [0u8; 2048];
        for (index, receiver) in receivers.iter().enumerate() {
            for n in (0..150).filter(|&n| datagram(n).0 == index) {
                let len = receiver.recv(&mut buffer).unwrap();
                assert_eq!(&buffer[..len], datagram(n).1, "datagram {n}");
            }
        }
    }

    #[test]
    fn a_port_with_nothing_listening_comes_back_as_an_icmp_error() {
        // A port just freed: nothing listens there.
        let gone = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let socket = control_socket(gone).unwrap();
        let mut outbox = Outbox::new();
        outbox.push(&socket, gone, b"INV");
        outbox.flush();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut errors = Vec::new();
        while errors.is_empty() && Instant::now() < deadline {
            ErrorQueue::drain(&socket, |e| errors.push(e));
            std::thread::yield_now();
        }
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].to, gone);
        assert_eq!(errors[0].error.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn ipv6_works_too() {
        let Ok(receiver) = UdpSocket::bind("[::1]:0") else {
            return; // no IPv6 here
        };
        receiver
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let to = receiver.local_addr().unwrap();
        let socket = control_socket(to).unwrap();
        let mut outbox = Outbox::new();
        outbox.push(&socket, to, b"hello");
        assert_eq!(outbox.flush().sent, 1);
        let mut buffer = [0u8; 16];
        let (len, _) = receiver.recv_from(&mut buffer).unwrap();
        assert_eq!(&buffer[..len], b"hello");
    }
}
