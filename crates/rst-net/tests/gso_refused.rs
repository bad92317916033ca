//! The kernel refuses UDP GSO (here because the socket asks for no UDP
//! checksum, `SO_NO_CHECK`, which GSO needs; elsewhere a device without
//! checksum offload, or a kernel before 4.18): nothing is lost, every
//! datagram still arrives whole and in order, and the process stops trying
//! GSO. A file of its own: GSO's state is the process's.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::Duration;

use rst_net::{control_socket, gso_in_use, Flushed, Outbox};

#[test]
fn a_refused_gso_message_goes_again_one_datagram_at_a_time() {
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let to = receiver.local_addr().unwrap();
    let sender = control_socket(to).unwrap();
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and option value.
    let set = unsafe {
        libc::setsockopt(
            sender.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NO_CHECK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
    assert!(gso_in_use(), "GSO is tried first");

    let mut outbox = Outbox::new();
    // Two flushes of 100 equal datagrams (one GSO run each, where it works).
    for round in 0..2u16 {
        for n in 0..100u16 {
            let mut datagram = [0u8; 160];
            datagram[..2].copy_from_slice(&(round * 100 + n).to_be_bytes());
            outbox.push(&sender, to, &datagram);
        }
        assert_eq!(
            outbox.flush(),
            Flushed {
                sent: 100,
                failed: 0
            },
            "round {round}"
        );
    }
    assert!(!gso_in_use(), "the kernel refused GSO: it is off");
    let mut buffer = [0u8; 2048];
    for n in 0..200u16 {
        let len = receiver.recv(&mut buffer).unwrap();
        assert_eq!(len, 160, "datagram {n} whole");
        assert_eq!(&buffer[..2], &n.to_be_bytes(), "datagram {n} in order");
    }
}
