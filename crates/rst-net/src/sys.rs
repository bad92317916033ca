//! The system calls std does not wrap, each behind a safe function.
//!
//! Hand-written rather than with socket2 or nix: socket2 0.5 has neither
//! `sendmmsg` nor the error queue, and the three calls here are short.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per `sendmmsg` call (the kernel takes up to 1024; the arrays
/// live on the stack, 64 keeps them at a few KiB).
pub const BATCH: usize = 64;

/// A socket address as the kernel takes it.
#[derive(Clone, Copy)]
pub struct Address {
    storage: libc::sockaddr_in6,
    len: libc::socklen_t,
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
        }
    }
}

/// The address the kernel wrote into `storage` (`len` bytes), if IP.
fn to_socket_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
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

/// Sends `datagrams` (up to [`BATCH`]) from `fd` with `sendmmsg`; returns how
/// many went. A datagram that fails is counted and skipped (tried once more
/// first when the error was an earlier datagram's); a full buffer of a
/// non-blocking socket drops the rest.
pub fn send_batch<'a>(
    fd: RawFd,
    datagrams: impl Iterator<Item = (&'a Address, &'a [u8])>,
) -> usize {
    // SAFETY: all-zero iovec and mmsghdr are valid (null pointers, zero lengths).
    let mut iovecs: [libc::iovec; BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
    let mut count = 0;
    for (address, bytes) in datagrams.take(BATCH) {
        iovecs[count] = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        let header = &mut headers[count].msg_hdr;
        header.msg_name = (&address.storage as *const libc::sockaddr_in6) as *mut libc::c_void;
        header.msg_namelen = address.len;
        header.msg_iov = &mut iovecs[count];
        header.msg_iovlen = 1;
        count += 1;
    }
    let mut sent = 0;
    let mut next = 0;
    let mut retried = false;
    while next < count {
        // SAFETY: headers[next..count] point into `iovecs`, the addresses and
        // the byte slices, all alive until this function returns.
        let result = unsafe {
            libc::sendmmsg(
                fd,
                headers[next..].as_mut_ptr(),
                (count - next) as libc::c_uint,
                libc::MSG_NOSIGNAL,
            )
        };
        if result > 0 {
            sent += result as usize;
            next += result as usize;
            retried = false;
            continue;
        }
        let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        match errno {
            libc::EINTR => {}
            libc::EAGAIN | libc::ENOBUFS => break,
            errno if is_earlier_error(errno) && !retried => retried = true,
            _ => {
                next += 1;
                retried = false;
            }
        }
    }
    sent
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
