//! Slowing down secret guessing, sans-IO: per client address, each wrong
//! secret doubles the wait before that address's next `hello` is looked at.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failed `hello`s by address. Bounded: the oldest entry goes when full.
#[derive(Debug)]
pub struct Backoff {
    entries: HashMap<IpAddr, (u32, Instant)>,
    /// Wait after the first failure; doubled by each further one.
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
    /// An address quiet this long starts afresh.
    pub forget: Duration,
    /// Addresses remembered at once.
    pub capacity: usize,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            entries: HashMap::new(),
            base: Duration::from_millis(250),
            max: Duration::from_secs(10),
            forget: Duration::from_secs(600),
            capacity: 4096,
        }
    }
}

impl Backoff {
    /// How long a `hello` from `ip` waits before it is answered.
    pub fn delay(&mut self, ip: IpAddr, now: Instant) -> Duration {
        let Some(&(failures, last)) = self.entries.get(&ip) else {
            return Duration::ZERO;
        };
        if now.saturating_duration_since(last) >= self.forget {
            self.entries.remove(&ip);
            return Duration::ZERO;
        }
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// A wrong secret from `ip`; returns its failures in a row.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) -> u32 {
        if !self.entries.contains_key(&ip) && self.entries.len() >= self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, last))| *last)
                .map(|(ip, _)| *ip);
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        let entry = self.entries.entry(ip).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        entry.0
    }

    /// The right secret from `ip`: it starts afresh.
    pub fn succeeded(&mut self, ip: IpAddr) {
        self.entries.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_per_failure_up_to_the_cap_and_are_forgotten() {
        let mut b = Backoff::default();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let other: IpAddr = "10.0.0.10".parse().unwrap();
        let t = Instant::now();
        assert_eq!(b.delay(ip, t), Duration::ZERO);
        b.failed(ip, t);
        assert_eq!(b.delay(ip, t), Duration::from_millis(250));
        b.failed(ip, t);
        b.failed(ip, t);
        assert_eq!(b.delay(ip, t), Duration::from_millis(1000));
        assert_eq!(b.delay(other, t), Duration::ZERO);
        for _ in 0..40 {
            b.failed(ip, t);
        }
        assert_eq!(b.delay(ip, t), Duration::from_secs(10));
        assert_eq!(b.delay(ip, t + Duration::from_secs(601)), Duration::ZERO);
        b.failed(ip, t);
        b.succeeded(ip);
        assert_eq!(b.delay(ip, t), Duration::ZERO);
    }

    #[test]
    fn bounded() {
        let mut b = Backoff {
            capacity: 2,
            ..Backoff::default()
        };
        let t = Instant::now();
        for i in 0..10u8 {
            b.failed(
                IpAddr::from([10, 0, 0, i]),
                t + Duration::from_secs(i.into()),
            );
        }
        assert_eq!(b.entries.len(), 2);
        assert!(b.entries.contains_key(&IpAddr::from([10, 0, 0, 9])));
    }
}
