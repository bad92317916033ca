//! Batched datagram I/O for the receiver and the load generator: plain
//! sockets with large buffers ([`bind`], [`connect`]), `recvmmsg` into a
//! [`RecvBatch`], `sendmmsg` on a connected socket ([`send_batch`]). One
//! system call moves up to [`BATCH`] datagrams, which is most of what a
//! receiver or a load generator at a few hundred thousand datagrams a second
//! spends per datagram. No protocol here.
//!
//! Hand-written on `libc` rather than taken from `quinn-udp`: quinn-udp is made
//! for QUIC and sets its options on every socket it reads (don't-fragment,
//! which would make the receiver's large PLAY datagrams fail instead of
//! fragmenting, and UDP GRO everywhere). The receiver and rst-load need plain
//! datagrams, sockets changed only where asked, and one place that does it:
//! here.
//!
//! UDP GRO ([`enable_gro`]) is asked for on the receiver's own port: the
//! senders group their datagrams with GSO (one message of up to 64 equal
//! datagrams), and with GRO the kernel hands such a message over whole (on
//! loopback, and coalesced by the NIC's GRO across a network) instead of
//! cutting it into one buffer, one socket enqueue and one wake-up per
//! datagram, work the sending process pays for on loopback. [`RecvBatch`]
//! gives the datagrams back one by one ([`RecvBatch::datagrams`]).
//!
//! The senders' [`Outbox`](crate::Outbox) is the other way out: it carries a
//! destination per datagram and groups them with UDP GSO; [`send_batch`]
//! sends on a connected socket, as fast as the kernel takes them.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd as _};

use crate::{sys, BATCH};

/// Requested socket buffer size (the kernel caps it at `net.core.[rw]mem_max`):
/// the receiver's, and rst-load's, so the ceiling is measured like for like.
pub const SOCKET_BUFFER: usize = 8 << 20;

/// A UDP socket with enlarged buffers, bound to `addr`.
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort, as in udp_server.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Asks the kernel for UDP GRO on `socket` (Linux 5.0): datagrams of one
/// sender may come coalesced into one message, cut apart again by
/// [`RecvBatch::datagrams`]. A message is then up to 64 KiB: read such a
/// socket with a [`RecvBatch`] of 64 KiB buffers.
pub fn enable_gro(socket: &impl AsFd) -> io::Result<()> {
    sys::set_udp_gro(socket.as_fd().as_raw_fd())
}

/// A UDP socket on an ephemeral port, connected to `target`.
pub fn connect(target: SocketAddr) -> io::Result<UdpSocket> {
    let socket = bind(crate::any_for(target))?;
    socket.connect(target)?;
    Ok(socket)
}

/// What happened to a batch: how many datagrams the kernel took, from the front,
/// and how many were dropped after a send error.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    pub sent: usize,
    pub errors: usize,
}

/// Sends every datagram in `batch` on the connected `socket`, in order. A datagram
/// whose send fails is retried once (a connected UDP socket reports an earlier ICMP
/// "port unreachable" on the next send, which does not concern the datagram itself),
/// then dropped and counted as an error. `on_sent(i)` is called for each datagram
/// the kernel accepted.
pub fn send_batch(socket: &UdpSocket, batch: &[&[u8]], mut on_sent: impl FnMut(usize)) -> Sent {
    let mut result = Sent::default();
    let mut next = 0;
    let mut retried = false;
    while next < batch.len() {
        match send_some(socket, &batch[next..]) {
            Ok(n) => {
                for i in next..next + n {
                    on_sent(i);
                }
                result.sent += n;
                next += n;
                retried = false;
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                result.errors += 1;
                if retried {
                    next += 1;
                    retried = false;
                } else {
                    retried = true;
                }
            }
        }
    }
    result
}

fn send_some(socket: &UdpSocket, datagrams: &[&[u8]]) -> io::Result<usize> {
    let count = datagrams.len().min(BATCH);
    // SAFETY: iovec and mmsghdr are plain C structs for which all-zero bytes are a
    // valid (empty) value.
    let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..count {
        iovecs[i].iov_base = datagrams[i].as_ptr() as *mut libc::c_void;
        iovecs[i].iov_len = datagrams[i].len();
        headers[i].msg_hdr.msg_iov = &mut iovecs[i];
        headers[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `headers[..count]` point at `iovecs`, which point at live slices; the
    // socket is connected so no address is needed; the kernel only reads the
    // payloads and writes `msg_len`.
    let sent = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            headers.as_mut_ptr(),
            count as libc::c_uint,
            0,
        )
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// Whether a receive waits for its first datagram.
#[derive(Debug, Clone, Copy)]
enum Wait {
    ForOne,
    No,
}

/// Receive buffers for up to [`BATCH`] messages of up to `capacity` bytes each,
/// with their senders' addresses. A message is one datagram, or, on a socket
/// with [`enable_gro`], several of one sender. The `recvmmsg` headers are made
/// once, here, pointing at the buffers: a receive that takes one datagram (a
/// real-time call's pace) costs no more than `recvfrom`.
pub struct RecvBatch {
    buffers: Vec<u8>,
    capacity: usize,
    lens: [usize; BATCH],
    /// Each message's datagram size when GRO coalesced it (0: one datagram).
    segments: [usize; BATCH],
    /// Room for each message's control message (the GRO segment size).
    controls: Box<[sys::Control; BATCH]>,
    addrs: Box<[libc::sockaddr_storage; BATCH]>,
    iovecs: Box<[libc::iovec; BATCH]>,
    headers: Box<[libc::mmsghdr; BATCH]>,
    count: usize,
}

// SAFETY: the raw pointers in `iovecs` and `headers` point only into this
// value's own heap blocks (`buffers`, `addrs`, `iovecs`), which move with it
// and are never reallocated; nothing else holds them.
unsafe impl Send for RecvBatch {}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("capacity", &self.capacity)
            .field("count", &self.count)
            .finish()
    }
}

impl RecvBatch {
    pub fn new(capacity: usize) -> RecvBatch {
        let mut batch = RecvBatch {
            buffers: vec![0; capacity * BATCH],
            capacity,
            lens: [0; BATCH],
            segments: [0; BATCH],
            controls: Box::new([sys::Control::default(); BATCH]),
            // SAFETY: sockaddr_storage is a plain C struct; all-zero is valid.
            addrs: Box::new(unsafe { std::mem::zeroed() }),
            // SAFETY: all-zero iovec/mmsghdr values are valid, as in `send_some`.
            iovecs: Box::new(unsafe { std::mem::zeroed() }),
            // SAFETY: as above.
            headers: Box::new(unsafe { std::mem::zeroed() }),
            count: 0,
        };
        for (i, chunk) in batch.buffers.chunks_exact_mut(capacity).enumerate() {
            batch.iovecs[i].iov_base = chunk.as_mut_ptr() as *mut libc::c_void;
            batch.iovecs[i].iov_len = chunk.len();
            batch.headers[i].msg_hdr.msg_iov = &mut batch.iovecs[i];
            batch.headers[i].msg_hdr.msg_iovlen = 1;
            batch.headers[i].msg_hdr.msg_name = &mut batch.addrs[i] as *mut _ as *mut libc::c_void;
        }
        batch
    }

    /// Waits (up to the socket's read timeout) for at least one datagram and takes
    /// every one already queued, up to [`BATCH`]. Returns how many.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.recv_with(socket, Wait::ForOne)
    }

    /// Takes the datagrams already queued on a non-blocking socket (a tokio
    /// one, say), up to [`BATCH`], without waiting: `WouldBlock` when there
    /// are none. Returns how many.
    pub fn try_recv(&mut self, socket: &impl AsFd) -> io::Result<usize> {
        self.recv_with(socket, Wait::No)
    }

    fn recv_with(&mut self, socket: &impl AsFd, wait: Wait) -> io::Result<usize> {
        self.count = 0;
        // The kernel shortened the address and control lengths of the last receive.
        for (header, control) in self.headers.iter_mut().zip(self.controls.iter_mut()) {
            header.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_control = control.as_mut_ptr().cast();
            header.msg_hdr.msg_controllen = control.len();
        }
        let flags = match wait {
            Wait::ForOne => libc::MSG_WAITFORONE,
            Wait::No => libc::MSG_DONTWAIT,
        };
        // SAFETY: every header points (since `new`) at a distinct buffer of
        // `capacity` bytes and a distinct sockaddr_storage of this value, and
        // (set above) at a distinct control buffer of its length, all alive
        // for the call; MSG_WAITFORONE makes the call return once at
        // least one datagram is in, MSG_DONTWAIT at once.
        let received = unsafe {
            libc::recvmmsg(
                socket.as_fd().as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        self.count = received as usize;
        for ((len, segment), header) in self
            .lens
            .iter_mut()
            .zip(self.segments.iter_mut())
            .zip(self.headers.iter())
            .take(self.count)
        {
            *len = header.msg_len as usize;
            *segment = sys::gro_segment(&header.msg_hdr).unwrap_or(0);
        }
        Ok(self.count)
    }

    /// How many messages the last receive took (datagrams, but for GRO).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The `i`th message of the last [`recv`](Self::recv), truncated to the
    /// capacity. On a socket without GRO it is one datagram; with GRO
    /// ([`enable_gro`]) it can hold several datagrams of one sender, back to
    /// back: read such a socket with [`datagrams`](Self::datagrams), which
    /// splits them.
    pub fn message(&self, i: usize) -> &[u8] {
        let start = i * self.capacity;
        &self.buffers[start..start + self.lens[i].min(self.capacity)]
    }

    /// The datagrams of the `i`th message, in the order they were sent: the
    /// message itself, or, when GRO coalesced it, its datagrams (all of the
    /// segment size but the last, which may be shorter).
    pub fn datagrams(&self, i: usize) -> impl Iterator<Item = &[u8]> {
        let message = self.message(i);
        let size = match self.segments[i] {
            // One datagram, an empty one too.
            0 => message.len().max(1),
            size => size,
        };
        message
            .chunks(size)
            .chain(message.is_empty().then_some(message))
    }

    /// Who sent the `i`th message.
    pub fn sender(&self, i: usize) -> Option<SocketAddr> {
        sys::to_socket_addr(&self.addrs[i], self.headers[i].msg_hdr.msg_namelen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_come_back_whole_with_their_senders_receive_after_receive() {
        let receiver = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        receiver.set_nonblocking(true).unwrap();
        let sender = connect(receiver.local_addr().unwrap()).unwrap();
        let mut batch = RecvBatch::new(64);
        assert!(batch.try_recv(&receiver).is_err(), "nothing sent yet");
        for round in 0..3u8 {
            let datagrams: Vec<Vec<u8>> = (0..5u8).map(|i| vec![round, i, 7]).collect();
            let slices: Vec<&[u8]> = datagrams.iter().map(Vec::as_slice).collect();
            assert_eq!(send_batch(&sender, &slices, |_| {}).sent, 5);
            // Loopback delivers at once; wait for the event, not a fixed time.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let mut got = Vec::new();
            while got.len() < 5 && std::time::Instant::now() < deadline {
                if let Ok(count) = batch.try_recv(&receiver) {
                    for i in 0..count {
                        assert_eq!(batch.sender(i), Some(sender.local_addr().unwrap()));
                        got.push(batch.message(i).to_vec());
                    }
                }
            }
            assert_eq!(got, datagrams);
        }
    }
}
