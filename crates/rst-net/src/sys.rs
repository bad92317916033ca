//! The system calls std does not wrap, each behind a safe function.
//!
//! Hand-written rather than with socket2 or nix: socket2 0.5 has neither
//! `sendmmsg` nor the error queue, and the three calls here are short.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::BATCH;

/// A socket address as the kernel takes it.
#[derive(Clone, Copy)]
pub struct Address {
    storage: libc::sockaddr_in6,
    len: libc::socklen_t,
    /// The same address, to compare (libc's structs are not `PartialEq`).
    address: SocketAddr,
}

impl Address {
    /// Whether `self` and `other` are the same destination.
    fn same(&self, other: &Address) -> bool {
        self.address == other.address
    }
}

impl std::fmt::Debug for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Address").field("len", &self.len).finish()
    }
}

impl From<SocketAddr> for Address {
    fn from(address: SocketAddr) -> Address {
        // SAFETY: all-zero is a valid sockaddr_in6 (plain integers).
        let mut storage: libc::sockaddr_in6 = unsafe { zeroed() };
        let len = match address {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_in (16 bytes) fits in sockaddr_in6 (28);
                // both are plain data.
                unsafe {
                    std::ptr::write(
                        (&mut storage as *mut libc::sockaddr_in6).cast::<libc::sockaddr_in>(),
                        sin,
                    )
                };
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                storage.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                storage.sin6_port = v6.port().to_be();
                storage.sin6_flowinfo = v6.flowinfo();
                storage.sin6_addr = libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                };
                storage.sin6_scope_id = v6.scope_id();
                size_of::<libc::sockaddr_in6>()
            }
        };
        Address {
            storage,
            len: len as libc::socklen_t,
            address,
        }
    }
}

/// The address the kernel wrote into `storage` (`len` bytes), if IP.
pub fn to_socket_addr(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    let len = len as usize;
    match i32::from(storage.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says sockaddr_in, and it was written whole.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says sockaddr_in6, and it was written whole.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// `IP_RECVERR` (and `IPV6_RECVERR` on an IPv6 socket): ICMP errors are
/// queued on the socket instead of dropped.
pub fn enable_recverr(fd: RawFd, ipv6: bool) -> io::Result<()> {
    let on: libc::c_int = 1;
    let (level, name) = if ipv6 {
        (libc::SOL_IPV6, libc::IPV6_RECVERR)
    } else {
        (libc::SOL_IP, libc::IP_RECVERR)
    };
    // SAFETY: `on` is a c_int that outlives the call; the size is its own.
    let result = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Errors that a send reports for an earlier datagram (an ICMP error queued
/// on the socket): the datagram at hand was not sent, and may be sent again.
pub fn is_earlier_error(errno: i32) -> bool {
    matches!(
        errno,
        libc::ECONNREFUSED
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::EHOSTDOWN
            | libc::ENETDOWN
    )
}

/// A datagram queued to be sent: the socket it leaves from, where it goes,
/// and where its bytes are in the queue's buffer (`start..end`).
#[derive(Debug)]
pub struct Queued {
    pub fd: RawFd,
    pub to: Address,
    pub start: usize,
    pub end: usize,
}

impl Queued {
    /// The datagram's bytes, in the `buffer` it was queued in.
    fn bytes<'a>(&self, buffer: &'a [u8]) -> &'a [u8] {
        &buffer[self.start..self.end]
    }

    /// The datagram's length.
    fn size(&self) -> usize {
        self.end - self.start
    }
}

/// Whether the kernel takes UDP generic segmentation offload (`UDP_SEGMENT`,
/// Linux 4.18): cleared, for good, by the first GSO send it refuses.
static GSO_WORKS: AtomicBool = AtomicBool::new(true);

/// Whether sends still group equal datagrams into UDP GSO messages: false
/// once the kernel refused one (for the rest of the process).
pub fn gso_in_use() -> bool {
    GSO_WORKS.load(Relaxed)
}

/// Datagrams one GSO send carries at most (the kernel's `UDP_MAX_SEGMENTS`),
/// and their bytes (under an IP packet's 64 KiB).
const GSO_SEGMENTS: usize = 64;
const GSO_BYTES: usize = 60_000;

/// Sends `datagrams` (up to [`BATCH`], their bytes in `buffer`) from `fd`
/// with `sendmmsg`; returns how many went. Consecutive datagrams of the same
/// length to the same address go as one message with `UDP_SEGMENT` (the
/// kernel cuts it into datagrams): one trip through the network stack for a
/// wake-up's frames of every call, where each datagram was one before. A datagram that fails is counted and
/// skipped (tried once more first when the error was an earlier datagram's);
/// a full buffer of a non-blocking socket drops the rest.
pub fn send_batch(fd: RawFd, buffer: &[u8], datagrams: &[Queued]) -> usize {
    let datagrams = &datagrams[..datagrams.len().min(BATCH)];
    let mut sent = 0;
    let mut next = 0;
    // Off for the rest of the batch once a message of several failed.
    let mut grouping = true;
    while next < datagrams.len() {
        let gso = grouping && GSO_WORKS.load(Relaxed);
        let (count, refused) = match send_messages(fd, buffer, &datagrams[next..], gso) {
            Ok(count) => (count, None),
            Err((count, refused)) => (count, Some(refused)),
        };
        sent += count;
        next += count;
        match refused {
            None => {}
            Some(Refused::Gso) => GSO_WORKS.store(false, Relaxed),
            Some(Refused::Split) => grouping = false,
            Some(Refused::Stop) => break,
            Some(Refused::Skip) => next += 1,
        }
    }
    sent
}

/// Why [`send_messages`] stopped before the end (after the datagrams it
/// says it sent).
enum Refused {
    /// A GSO message was refused as such: the kernel cannot do it.
    Gso,
    /// A message of several failed otherwise (a receiver's ICMP error, say):
    /// its datagrams go again one by one, so that only the failing one is lost.
    Split,
    /// The socket's buffer is full: the rest is dropped.
    Stop,
    /// The next datagram failed on its own: skip it.
    Skip,
}

/// One `sendmmsg` loop over `datagrams`, grouped into GSO messages when
/// `gso`: the datagrams sent, or those sent and why it stopped.
fn send_messages(
    fd: RawFd,
    buffer: &[u8],
    datagrams: &[Queued],
    gso: bool,
) -> Result<usize, (usize, Refused)> {
    // SAFETY: all-zero iovec, mmsghdr and control room are valid (null
    // pointers, zero lengths).
    let mut iovecs: [libc::iovec; BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
    let mut controls = [Control::default(); BATCH];
    // Datagrams in each message, in order.
    let mut sizes = [0usize; BATCH];
    let mut messages = 0;
    let mut first = 0;
    for (i, datagram) in datagrams.iter().enumerate() {
        let bytes = datagram.bytes(buffer);
        iovecs[i] = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
    }
    while first < datagrams.len() {
        let address = &datagrams[first].to;
        let len = datagrams[first].size();
        let run = if gso {
            datagrams[first..]
                .iter()
                .take(GSO_SEGMENTS.min(GSO_BYTES / len.max(1)))
                .take_while(|d| d.size() == len && d.to.same(address))
                .count()
                .max(1)
        } else {
            1
        };
        let header = &mut headers[messages].msg_hdr;
        header.msg_name = (&address.storage as *const libc::sockaddr_in6) as *mut libc::c_void;
        header.msg_namelen = address.len;
        header.msg_iov = &mut iovecs[first];
        header.msg_iovlen = run as _;
        if run > 1 {
            segment_size(header, &mut controls[messages], len as u16);
        }
        sizes[messages] = run;
        messages += 1;
        first += run;
    }
    let mut sent = 0;
    let mut next = 0;
    let mut retried = false;
    while next < messages {
        // SAFETY: headers[next..messages] point into `iovecs`, `controls`,
        // the addresses in `datagrams` and the bytes in `buffer`, all alive
        // (and borrowed) until this returns.
        let result = unsafe {
            libc::sendmmsg(
                fd,
                headers[next..messages].as_mut_ptr(),
                (messages - next) as libc::c_uint,
                libc::MSG_NOSIGNAL,
            )
        };
        if result > 0 {
            sent += sizes[next..next + result as usize].iter().sum::<usize>();
            next += result as usize;
            retried = false;
            continue;
        }
        let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        match errno {
            libc::EINTR => {}
            libc::EAGAIN | libc::ENOBUFS => return Err((sent, Refused::Stop)),
            errno if is_earlier_error(errno) && !retried => retried = true,
            libc::EINVAL | libc::EIO | libc::EOPNOTSUPP | libc::ENOPROTOOPT if sizes[next] > 1 => {
                return Err((sent, Refused::Gso))
            }
            _ if sizes[next] > 1 => return Err((sent, Refused::Split)),
            _ => return Err((sent, Refused::Skip)),
        }
    }
    Ok(sent)
}

/// Room for one small control message (a GSO or GRO segment size), aligned
/// for `cmsghdr`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Control([u64; 4]);

impl Control {
    pub fn as_mut_ptr(&mut self) -> *mut u64 {
        self.0.as_mut_ptr()
    }

    pub fn len(&self) -> usize {
        size_of_val(&self.0)
    }
}

/// Turns UDP GRO on for `fd`.
pub fn set_udp_gro(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a plain setsockopt with a c_int value that lives for the call.
    let result = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The GRO segment size a received message carries: present when the kernel
/// coalesced several datagrams into it.
pub fn gro_segment(header: &libc::msghdr) -> Option<usize> {
    let mut size = None;
    // SAFETY: the kernel filled the header's control buffer up to
    // msg_controllen (0 when it put nothing there); the CMSG macros walk it
    // within that length. The GRO value is an int.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            let c = &*cmsg;
            if c.cmsg_level == libc::SOL_UDP && c.cmsg_type == libc::UDP_GRO {
                let value = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                size = usize::try_from(value).ok().filter(|&size| size > 0);
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    size
}

/// Puts `UDP_SEGMENT = size` in `header`'s control room `control`.
fn segment_size(header: &mut libc::msghdr, control: &mut Control, size: u16) {
    header.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a length.
    header.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
    // SAFETY: msg_control points to `control`, which has room for one
    // control message with a u16 (CMSG_SPACE(2) <= 32 bytes), aligned to u64.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(header);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), size);
    }
}

/// One error off `fd`'s error queue: the destination of the datagram that
/// caused it and its errno; `None` when the queue is empty.
pub fn recv_error(fd: RawFd) -> io::Result<Option<(SocketAddr, i32)>> {
    // SAFETY: all-zero is valid for these plain C structs.
    let mut name: libc::sockaddr_storage = unsafe { zeroed() };
    let mut payload = [0u8; 64];
    // u64s, so the control buffer is aligned for cmsghdr.
    let mut control = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: as above.
    let mut header: libc::msghdr = unsafe { zeroed() };
    header.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    header.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = size_of_val(&control);
    // SAFETY: every pointer in `header` points to locals alive for the call.
    let result = unsafe { libc::recvmsg(fd, &mut header, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
    if result < 0 {
        let error = io::Error::last_os_error();
        return match error.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(error),
        };
    }
    let mut errno = libc::EHOSTUNREACH;
    // SAFETY: the kernel filled `control` up to msg_controllen; the CMSG
    // macros walk it within that length.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&header);
        while !cmsg.is_null() {
            let c = &*cmsg;
            if (c.cmsg_level == libc::SOL_IP && c.cmsg_type == libc::IP_RECVERR)
                || (c.cmsg_level == libc::SOL_IPV6 && c.cmsg_type == libc::IPV6_RECVERR)
            {
                let error = std::ptr::read_unaligned(
                    libc::CMSG_DATA(cmsg).cast::<libc::sock_extended_err>(),
                );
                errno = error.ee_errno as i32;
            }
            cmsg = libc::CMSG_NXTHDR(&header, cmsg);
        }
    }
    Ok(to_socket_addr(&name, header.msg_namelen).map(|to| (to, errno)))
}
