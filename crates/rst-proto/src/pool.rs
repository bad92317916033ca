//! Several receivers: which one records a call, and which one takes over.
//!
//! A [`Pool`] is a list of receiver addresses. Each call goes to the receiver
//! with the highest *rendezvous weight* for its UUID (highest random weight
//! hashing, Thaler & Ravishankar 1998): every sender computes the same order
//! for a call without talking to anyone, calls spread evenly, and adding or
//! removing a receiver moves only the calls that must move (those of the
//! receiver removed, or those the new one wins). The rest of a call's order
//! ([`Pool::order`]) is where it goes when its receiver stops answering
//! ([`crate::stream::Stream`] fails over along it).
//!
//! The weight is FNV-1a (64 bit) over the UUID, a zero byte and the
//! receiver's address as text (`10.0.0.1:9527`, `[::1]:9527`), finished
//! with the SplitMix64 mixer. Why this one: it is stable, written down here
//! in full, so mod_rst, tap_daemon and any other sender (in any language)
//! agree on a call's order across versions and platforms, which std's
//! `DefaultHasher` does not promise; it needs no key and no dependency; and
//! the finishing mixer makes the weights of near-identical inputs (UUIDs
//! that differ in one digit, addresses that differ in the port) independent,
//! which plain FNV-1a does not. It is not meant to resist an adversary: a
//! sender picks its own UUIDs anyway.
//!
//! [`Health`] is the sender's view of which receivers answer: a receiver
//! that failed is put last in new calls' orders for a while, then tried
//! again in its place, so a receiver that comes back gets new calls again,
//! while calls in progress stay where they are.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The receivers calls are spread over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    receivers: Vec<SocketAddr>,
}

/// Why a list of receivers is not a pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// No receiver at all.
    #[error("a pool needs at least one receiver")]
    Empty,
    /// The same address twice (it would get twice the calls' second choices).
    #[error("receiver {0} is listed twice")]
    Duplicate(SocketAddr),
    /// An entry that is not `IP:PORT`.
    #[error("{0:?} is not a receiver address like 10.0.0.1:9527")]
    BadAddress(String),
}

impl Pool {
    /// A pool of these receivers (their order does not matter).
    pub fn new(receivers: Vec<SocketAddr>) -> Result<Pool, PoolError> {
        if receivers.is_empty() {
            return Err(PoolError::Empty);
        }
        for (i, address) in receivers.iter().enumerate() {
            if receivers[..i].contains(address) {
                return Err(PoolError::Duplicate(*address));
            }
        }
        Ok(Pool { receivers })
    }

    /// A pool from `IP:PORT,IP:PORT` (spaces allowed around entries).
    pub fn parse(list: &str) -> Result<Pool, PoolError> {
        let receivers = list
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse()
                    .map_err(|_| PoolError::BadAddress(entry.to_owned()))
            })
            .collect::<Result<Vec<SocketAddr>, _>>()?;
        Pool::new(receivers)
    }

    pub fn receivers(&self) -> &[SocketAddr] {
        &self.receivers
    }

    pub fn len(&self) -> usize {
        self.receivers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.receivers.is_empty()
    }

    /// The call's preference order: every receiver once, the one that
    /// records the call first, then where it fails over to.
    pub fn order(&self, uuid: &str) -> impl Iterator<Item = SocketAddr> {
        let mut weighted: Vec<(u64, SocketAddr)> = self
            .receivers
            .iter()
            .map(|&address| (weight(uuid, address), address))
            .collect();
        // Highest weight first; ties (never seen in practice) by address, so
        // the order is total and the same everywhere.
        weighted.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        weighted.into_iter().map(|(_, address)| address)
    }
}

/// The rendezvous weight of `receiver` for the call `uuid` (see the module docs).
pub fn weight(uuid: &str, receiver: SocketAddr) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for &byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    eat(uuid.as_bytes());
    eat(&[0]);
    eat(receiver.to_string().as_bytes());
    splitmix64(hash)
}

/// SplitMix64's finaliser (Steele, Lea & Flood 2014): every input bit
/// reaches every output bit.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One receiver as its senders see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverHealth {
    pub address: SocketAddr,
    /// Answering, as far as anyone knows (no failure since its last ACK, or
    /// its time out of new calls' way is over).
    pub up: bool,
    /// Calls that failed over away from it.
    pub failures: u64,
    /// ACKs it sent.
    pub acks: u64,
    /// When it last failed (to be put back in new calls' orders after the retry time).
    down_since: Option<Instant>,
}

/// Which receivers of a pool answer (sans-IO: the shell reports ACKs and
/// failovers with the time, and asks for new calls' orders).
#[derive(Debug, Clone)]
pub struct Health {
    pool: Pool,
    receivers: Vec<ReceiverHealth>,
    retry: Duration,
}

impl Health {
    /// A receiver that failed is last in new calls' orders for `retry`,
    /// then in its place again: the next new call that prefers it finds out
    /// whether it is back (an ACK), or fails over from it once more.
    pub fn new(pool: Pool, retry: Duration) -> Health {
        let receivers = pool
            .receivers()
            .iter()
            .map(|&address| ReceiverHealth {
                address,
                up: true,
                failures: 0,
                acks: 0,
                down_since: None,
            })
            .collect();
        Health {
            pool,
            receivers,
            retry,
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A new call's order at `now`: the pool's order, with the receivers
    /// that failed within the retry time moved last (in their order).
    pub fn order(&mut self, uuid: &str, now: Instant) -> Vec<SocketAddr> {
        self.expire(now);
        let (mut up, down): (Vec<SocketAddr>, Vec<SocketAddr>) =
            self.pool.order(uuid).partition(|address| {
                !self
                    .receivers
                    .iter()
                    .any(|r| r.address == *address && !r.up)
            });
        up.extend(down);
        up
    }

    /// A call failed over away from `receiver` (no ACK in time, or an ICMP error).
    pub fn failed(&mut self, receiver: SocketAddr, now: Instant) {
        if let Some(r) = self.receivers.iter_mut().find(|r| r.address == receiver) {
            r.up = false;
            r.failures += 1;
            r.down_since = Some(now);
        }
    }

    /// `receiver` acknowledged something: it is up.
    pub fn answered(&mut self, receiver: SocketAddr) {
        if let Some(r) = self.receivers.iter_mut().find(|r| r.address == receiver) {
            r.up = true;
            r.acks += 1;
            r.down_since = None;
        }
    }

    /// Every receiver, in the pool's order, as of `now`.
    pub fn receivers(&mut self, now: Instant) -> &[ReceiverHealth] {
        self.expire(now);
        &self.receivers
    }

    fn expire(&mut self, now: Instant) {
        for r in &mut self.receivers {
            if r.down_since
                .is_some_and(|since| now.saturating_duration_since(since) >= self.retry)
            {
                r.up = true;
                r.down_since = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuids(n: usize) -> Vec<String> {
        // Deterministic, UUID-shaped, varied in every position.
        (0..n as u64)
            .map(|i| {
                let x = splitmix64(i);
                format!(
                    "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                    x as u32,
                    (x >> 32) as u16,
                    (x >> 48) & 0xfff,
                    (x >> 20) & 0xfff,
                    splitmix64(x) & 0xffff_ffff_ffff
                )
            })
            .collect()
    }

    fn three() -> Pool {
        Pool::parse("127.0.0.1:9527, 127.0.0.1:9528,127.0.0.1:9529").unwrap()
    }

    #[test]
    fn a_thousand_calls_spread_within_ten_percent_of_even() {
        let pool = three();
        let mut counts = [0usize; 3];
        for uuid in uuids(1000) {
            let first = pool.order(&uuid).next().unwrap();
            let i = pool.receivers().iter().position(|r| *r == first).unwrap();
            counts[i] += 1;
        }
        let even = 1000.0 / 3.0;
        for count in counts {
            let off = (count as f64 - even).abs() / even;
            assert!(off <= 0.10, "{counts:?}");
        }
    }

    #[test]
    fn removing_a_receiver_moves_only_its_calls_to_their_second_choice() {
        let pool = three();
        let gone = pool.receivers()[1];
        let smaller = Pool::new(
            pool.receivers()
                .iter()
                .copied()
                .filter(|r| *r != gone)
                .collect(),
        )
        .unwrap();
        let mut moved = 0;
        for uuid in uuids(1000) {
            let before: Vec<_> = pool.order(&uuid).collect();
            let after = smaller.order(&uuid).next().unwrap();
            if before[0] == gone {
                assert_eq!(after, before[1], "goes where it would fail over to");
                moved += 1;
            } else {
                assert_eq!(after, before[0], "{uuid} moved though its receiver stayed");
            }
        }
        assert!(moved > 250, "{moved}");
    }

    #[test]
    fn the_order_is_every_receiver_once_and_fixed_forever() {
        let pool = three();
        let uuid = "478525a8-8263-4550-b18c-d027d11c9865";
        let order: Vec<_> = pool.order(uuid).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, pool.receivers());
        // The same in any listing order.
        let reversed = Pool::new(pool.receivers().iter().rev().copied().collect()).unwrap();
        assert_eq!(reversed.order(uuid).collect::<Vec<_>>(), order);
        // Written down, so that a change of the hash is seen (it would move calls).
        assert_eq!(
            weight(uuid, "127.0.0.1:9527".parse().unwrap()),
            WEIGHT_OF_EXAMPLE
        );
    }
    /// Computed independently (a few lines of Python after the module docs).
    const WEIGHT_OF_EXAMPLE: u64 = 11_939_316_777_544_854_818;

    #[test]
    fn bad_lists_are_refused() {
        assert_eq!(Pool::parse(""), Err(PoolError::Empty));
        assert!(matches!(
            Pool::parse("127.0.0.1:1,127.0.0.1:1"),
            Err(PoolError::Duplicate(_))
        ));
        assert!(matches!(
            Pool::parse("127.0.0.1:1,host:2"),
            Err(PoolError::BadAddress(_))
        ));
    }

    #[test]
    fn a_failed_receiver_is_last_for_new_calls_then_tried_again() {
        let t0 = Instant::now();
        let mut health = Health::new(three(), Duration::from_secs(5));
        let uuid = "478525a8-8263-4550-b18c-d027d11c9865";
        let order = health.order(uuid, t0);
        health.failed(order[0], t0);
        let during = health.order(uuid, t0 + Duration::from_secs(1));
        assert_eq!(during, [order[1], order[2], order[0]]);
        assert!(!health.receivers(t0)[..].iter().all(|r| r.up));
        // An ACK from it, or the retry time over: back in its place.
        assert_eq!(health.order(uuid, t0 + Duration::from_secs(5)), order);
        health.failed(order[0], t0 + Duration::from_secs(6));
        health.answered(order[0]);
        assert_eq!(health.order(uuid, t0 + Duration::from_secs(6)), order);
        let first = health
            .receivers(t0)
            .iter()
            .find(|r| r.address == order[0])
            .unwrap()
            .clone();
        assert_eq!((first.up, first.failures, first.acks), (true, 2, 1));
    }
}
