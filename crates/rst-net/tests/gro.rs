//! A receiving socket with UDP GRO takes a sender's GSO message whole, and
//! `RecvBatch::datagrams` gives back every datagram, whole and in order, with
//! the last one of a message shorter than the rest, among datagrams that
//! came one by one.

use std::time::{Duration, Instant};

use rst_net::batch::{bind, enable_gro, RecvBatch};
use rst_net::{control_socket, gso_in_use, Outbox};

#[test]
fn a_gso_message_comes_whole_to_a_gro_socket_and_is_cut_into_its_datagrams() {
    let receiver = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    enable_gro(&receiver).unwrap();
    receiver.set_nonblocking(true).unwrap();
    let to = receiver.local_addr().unwrap();
    let sender = control_socket(to).unwrap();

    // 100 datagrams of 211 bytes (GSO runs of 64 and 36), one of 90 (ends
    // the second run), 10 of 211 again, then 5 of assorted lengths.
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut outbox = Outbox::new();
    let mut push = |outbox: &mut Outbox, len: usize| {
        let n = sent.len() as u16;
        let mut datagram = vec![n as u8; len];
        datagram[..2].copy_from_slice(&n.to_be_bytes());
        outbox.push(&sender, to, &datagram);
        sent.push(datagram);
    };
    for len in std::iter::repeat_n(211, 100)
        .chain([90])
        .chain(std::iter::repeat_n(211, 10))
        .chain([2, 3, 300, 7, 1400])
    {
        push(&mut outbox, len);
    }
    assert_eq!(outbox.flush().sent, sent.len() as u64);

    let mut batch = RecvBatch::new(65_536);
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut coalesced = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < sent.len() && Instant::now() < deadline {
        let Ok(count) = batch.try_recv(&receiver) else {
            std::thread::yield_now();
            continue;
        };
        for i in 0..count {
            let from = batch.sender(i).expect("a sender");
            assert_eq!(from.port(), sender.local_addr().unwrap().port());
            let datagrams: Vec<&[u8]> = batch.datagrams(i).collect();
            if datagrams.len() > 1 {
                coalesced += 1;
            }
            got.extend(datagrams.into_iter().map(<[u8]>::to_vec));
        }
    }
    assert_eq!(got.len(), sent.len(), "every datagram, no more");
    for (n, (got, sent)) in got.iter().zip(&sent).enumerate() {
        assert_eq!(got, sent, "datagram {n} whole and in order");
    }
    if gso_in_use() {
        assert!(
            coalesced > 0,
            "GSO messages arrived cut apart: no GRO on this kernel's loopback?"
        );
    }
}
