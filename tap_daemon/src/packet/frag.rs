//! IPv4 and IPv6 fragment reassembly, bounded.
//!
//! SIP over UDP is fragmented more often than one would hope: an INVITE with a
//! rich SDP easily passes a 1500-byte MTU, and on IPv6 or tunnels even smaller
//! ones do. Reassembly holds state on behalf of whoever sends packets, so every
//! dimension is bounded (datagrams in progress, bytes each, time) and the
//! classic attacks are refused: overlapping fragments that disagree, two
//! different "last" fragments, pieces past the end. Time is an argument; this
//! module never reads a clock.

use crate::FastMap;
use std::net::IpAddr;
use std::time::Duration;

use super::error::DecodeError;
use super::ip::Fragment;

/// Bounds for [`Reassembler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentLimits {
    /// Datagrams being reassembled at once; a fragment of a new one past this
    /// is dropped ([`DecodeError::FragmentTableFull`]).
    pub max_datagrams: usize,
    /// Largest reassembled payload. 65535 is the IPv4 maximum; nothing a SIP
    /// stack sends comes near it.
    pub max_bytes: usize,
    /// How long the first fragment waits for the rest: Linux's default
    /// `ipfrag_time` (30 s). Longer only holds memory for lost causes.
    pub timeout: Duration,
}

impl Default for FragmentLimits {
    fn default() -> Self {
        FragmentLimits {
            max_datagrams: 1024,
            max_bytes: 65535,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A datagram put back together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassembled {
    /// The upper-layer protocol (for IPv6: the fragment header's next header,
    /// which may still be an extension header).
    pub protocol: u8,
    /// The whole upper-layer payload.
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    /// IPv4 keys on the protocol too (RFC 791); IPv6 carries it per fragment.
    protocol: u8,
    id: u32,
}

#[derive(Debug)]
struct Partial {
    first_seen: Duration,
    protocol: u8,
    data: Vec<u8>,
    /// Received byte ranges, sorted, merged, non-overlapping.
    have: Vec<(usize, usize)>,
    /// The end given by the last fragment (the one without "more").
    total: Option<usize>,
    /// Refused (overlap, lie, too big): later fragments of it are dropped
    /// until it times out, rather than starting it afresh.
    poisoned: bool,
}

/// Reassembles fragments of IPv4 and IPv6 datagrams.
#[derive(Debug)]
pub struct Reassembler {
    limits: FragmentLimits,
    table: FastMap<Key, Partial>,
    expired: u64,
    duplicates: u64,
}

impl Reassembler {
    pub fn new(limits: FragmentLimits) -> Self {
        Reassembler {
            limits,
            table: FastMap::default(),
            expired: 0,
            duplicates: 0,
        }
    }

    /// Datagrams in progress.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no datagram is in progress.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Datagrams dropped because a piece did not arrive in time.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    /// Fragments that repeated bytes already held (harmless, ignored).
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Add one fragment received at `now`. Returns the datagram once it is
    /// complete. `protocol` is the IPv4 protocol or the IPv6 fragment header's
    /// next header.
    pub fn insert(
        &mut self,
        now: Duration,
        src: IpAddr,
        dst: IpAddr,
        protocol: u8,
        fragment: Fragment,
        data: &[u8],
    ) -> Result<Option<Reassembled>, DecodeError> {
        let start = fragment.offset;
        let end = start.saturating_add(data.len());
        if fragment.more && (data.is_empty() || data.len() % 8 != 0) {
            return Err(DecodeError::BadFragment(
                "non-final fragment length not a multiple of 8",
            ));
        }
        let key = Key {
            src,
            dst,
            protocol: if src.is_ipv4() { protocol } else { 0 },
            id: fragment.id,
        };
        if !self.table.contains_key(&key) {
            if self.table.len() >= self.limits.max_datagrams {
                self.expire(now);
            }
            if self.table.len() >= self.limits.max_datagrams {
                return Err(DecodeError::FragmentTableFull {
                    max: self.limits.max_datagrams,
                });
            }
            self.table.insert(
                key,
                Partial {
                    first_seen: now,
                    protocol,
                    data: Vec::new(),
                    have: Vec::new(),
                    total: None,
                    poisoned: false,
                },
            );
        }
        let Some(p) = self.table.get_mut(&key) else {
            return Ok(None);
        };
        if now.saturating_sub(p.first_seen) > self.limits.timeout {
            // Stale state for a reused id: start over rather than mix the two.
            if !p.poisoned {
                self.expired += 1;
            }
            *p = Partial {
                first_seen: now,
                protocol,
                data: Vec::new(),
                have: Vec::new(),
                total: None,
                poisoned: false,
            };
        }
        if p.poisoned {
            return Err(DecodeError::FragmentOverlap);
        }
        match Self::add(p, &self.limits, start, end, fragment.more, protocol, data) {
            Ok(true) => {
                self.duplicates += 1;
                Ok(None)
            }
            Ok(false) => {
                let complete =
                    matches!((p.total, p.have.as_slice()), (Some(t), [(0, e)]) if *e == t);
                if !complete {
                    return Ok(None);
                }
                let done = self.table.remove(&key);
                Ok(done.map(|p| Reassembled {
                    protocol: p.protocol,
                    payload: p.data,
                }))
            }
            Err(e) => {
                p.poisoned = true;
                p.data = Vec::new();
                p.have = Vec::new();
                Err(e)
            }
        }
    }

    /// Drop datagrams whose first fragment is older than the timeout; returns
    /// how many were dropped (also added to [`Reassembler::expired`]).
    pub fn expire(&mut self, now: Duration) -> usize {
        let timeout = self.limits.timeout;
        let before = self.table.len();
        let mut lost = 0u64;
        self.table.retain(|_, p| {
            let keep = now.saturating_sub(p.first_seen) <= timeout;
            if !keep && !p.poisoned {
                lost += 1;
            }
            keep
        });
        self.expired += lost;
        before - self.table.len()
    }

    /// Merge one fragment into `p`. Ok(true): nothing new (a duplicate).
    fn add(
        p: &mut Partial,
        limits: &FragmentLimits,
        start: usize,
        end: usize,
        more: bool,
        protocol: u8,
        data: &[u8],
    ) -> Result<bool, DecodeError> {
        if end > limits.max_bytes {
            return Err(DecodeError::FragmentTooBig {
                max: limits.max_bytes,
            });
        }
        if !more {
            match p.total {
                Some(t) if t != end => return Err(DecodeError::FragmentOverlap),
                _ => {}
            }
            if p.have.last().is_some_and(|&(_, e)| e > end) {
                return Err(DecodeError::FragmentOverlap);
            }
            p.total = Some(end);
        } else if p.total.is_some_and(|t| end > t) {
            return Err(DecodeError::FragmentOverlap);
        }
        if start == 0 {
            p.protocol = protocol;
        }
        // Bytes already held must agree with the new copy: a retransmission
        // or a doubled capture is fine, different bytes are an evasion attempt.
        let mut covered = 0;
        for &(a, b) in &p.have {
            let (s, e) = (a.max(start), b.min(end));
            if s < e {
                if p.data.get(s..e) != data.get(s - start..e - start) {
                    return Err(DecodeError::FragmentOverlap);
                }
                covered += e - s;
            }
        }
        if covered == end - start {
            return Ok(true);
        }
        if p.data.len() < end {
            p.data.resize(end, 0);
        }
        p.data[start..end].copy_from_slice(data);
        p.have.push((start, end));
        p.have.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(p.have.len());
        for &(a, b) in &p.have {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        p.have = merged;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::error::ErrorKind;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn frag(id: u32, offset: usize, more: bool) -> Fragment {
        Fragment { id, offset, more }
    }

    fn t(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn pieces(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn fresh() -> Reassembler {
        Reassembler::new(FragmentLimits::default())
    }

    #[test]
    fn in_order_and_out_of_order() {
        let d = pieces(40);
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]] {
            let mut r = fresh();
            let mut out = None;
            for (n, i) in order.iter().enumerate() {
                let (s, e) = (i * 16, (i * 16 + 16).min(40));
                let got = r
                    .insert(
                        t(0),
                        ip("1.1.1.1"),
                        ip("2.2.2.2"),
                        17,
                        frag(5, s, *i != 2),
                        &d[s..e],
                    )
                    .unwrap();
                if n < 2 {
                    assert!(got.is_none());
                } else {
                    out = got;
                }
            }
            assert_eq!(out.unwrap().payload, d);
            assert!(r.is_empty());
        }
    }

    #[test]
    fn duplicates_are_ignored() {
        let d = pieces(24);
        let mut r = fresh();
        let a = ip("1.1.1.1");
        let b = ip("2.2.2.2");
        assert!(r
            .insert(t(0), a, b, 17, frag(1, 0, true), &d[..16])
            .unwrap()
            .is_none());
        assert!(r
            .insert(t(0), a, b, 17, frag(1, 0, true), &d[..16])
            .unwrap()
            .is_none());
        assert!(r
            .insert(t(0), a, b, 17, frag(1, 8, true), &d[8..16])
            .unwrap()
            .is_none());
        assert_eq!(r.duplicates(), 2);
        let got = r
            .insert(t(0), a, b, 17, frag(1, 16, false), &d[16..])
            .unwrap()
            .unwrap();
        assert_eq!(got.payload, d);
    }

    #[test]
    fn overlap_with_different_bytes_poisons_the_datagram() {
        let d = pieces(24);
        let mut r = fresh();
        let a = ip("1.1.1.1");
        let b = ip("2.2.2.2");
        r.insert(t(0), a, b, 17, frag(1, 0, true), &d[..16])
            .unwrap();
        let mut evil = d[8..24].to_vec();
        evil[0] ^= 0xff;
        let e = r
            .insert(t(0), a, b, 17, frag(1, 8, false), &evil)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FragmentOverlap);
        // The honest last piece does not complete it any more.
        let e = r
            .insert(t(0), a, b, 17, frag(1, 16, false), &d[16..])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FragmentOverlap);
        // Until the timeout clears it; a poisoned datagram is not counted as expired.
        assert_eq!(r.expire(t(31)), 1);
        assert_eq!(r.expired(), 0);
    }

    #[test]
    fn lying_last_fragments() {
        let d = pieces(48);
        let a = ip("1.1.1.1");
        let b = ip("2.2.2.2");
        let mut r = fresh();
        r.insert(t(0), a, b, 17, frag(1, 16, false), &d[16..24])
            .unwrap();
        let e = r
            .insert(t(0), a, b, 17, frag(1, 32, false), &d[32..40])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FragmentOverlap);
        let mut r = fresh();
        r.insert(t(0), a, b, 17, frag(2, 16, false), &d[16..24])
            .unwrap();
        let e = r
            .insert(t(0), a, b, 17, frag(2, 24, true), &d[24..32])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FragmentOverlap);
        let mut r = fresh();
        r.insert(t(0), a, b, 17, frag(3, 32, true), &d[32..40])
            .unwrap();
        let e = r
            .insert(t(0), a, b, 17, frag(3, 0, false), &d[0..8])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FragmentOverlap);
        let e = fresh()
            .insert(t(0), a, b, 17, frag(4, 0, true), &d[0..7])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadFragment);
    }

    #[test]
    fn missing_piece_times_out() {
        let d = pieces(24);
        let a = ip("1.1.1.1");
        let b = ip("2.2.2.2");
        let mut r = fresh();
        r.insert(t(100), a, b, 17, frag(1, 0, true), &d[..16])
            .unwrap();
        assert_eq!(r.expire(t(129)), 0);
        assert_eq!(r.len(), 1);
        assert_eq!(r.expire(t(131)), 1);
        assert_eq!(r.expired(), 1);
        // A late last piece alone does not make a datagram.
        assert!(r
            .insert(t(131), a, b, 17, frag(1, 16, false), &d[16..])
            .unwrap()
            .is_none());
        // Nor does one arriving after the timeout without an expire() sweep.
        let mut r2 = Reassembler::new(FragmentLimits::default());
        r2.insert(t(0), a, b, 17, frag(1, 0, true), &d[..16])
            .unwrap();
        assert!(r2
            .insert(t(60), a, b, 17, frag(1, 16, false), &d[16..])
            .unwrap()
            .is_none());
    }

    #[test]
    fn bounded_table_and_size() {
        let limits = FragmentLimits {
            max_datagrams: 2,
            max_bytes: 64,
            timeout: Duration::from_secs(5),
        };
        let mut r = Reassembler::new(limits);
        let a = ip("1.1.1.1");
        let b = ip("2.2.2.2");
        let d = [0u8; 8];
        r.insert(t(0), a, b, 17, frag(1, 0, true), &d).unwrap();
        r.insert(t(0), a, b, 17, frag(2, 0, true), &d).unwrap();
        let e = r.insert(t(1), a, b, 17, frag(3, 0, true), &d).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FragmentTableFull);
        // Once the old ones time out there is room again.
        r.insert(t(6), a, b, 17, frag(3, 0, true), &d).unwrap();
        let e = r
            .insert(t(6), a, b, 17, frag(3, 64, false), &d)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FragmentTooBig);
        // The same id from another protocol (IPv4) or source is another datagram.
        assert_eq!(r.len(), 1);
    }
}
