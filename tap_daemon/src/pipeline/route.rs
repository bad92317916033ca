//! The tracker's answer per RTP flow, kept between packets.
//!
//! [`Tracker::classify`] looks up both addresses and every dialog they name,
//! for every RTP packet; the answer only changes when SIP changes a dialog
//! (the tracker's [`Tracker::generation`]) or when an ended dialog's
//! `rtp_linger` runs out ([`Classified::until`]). A flow's packets come in
//! runs of hundreds between such changes, so one look-up of the flow answers
//! nearly all of them.
//!
//! The cache is a fixed table indexed by a hash of the flow, each slot
//! holding the last flow that hashed there: no allocation, no bound to
//! enforce, and flows that collide (or a flood of them) only cost what they
//! would without the cache, a question to the tracker.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rst_proto::Direction;

use crate::sip::{CallKey, Classified, Tracker};

/// Slots of the table: well above the flows of the calls a tap follows at
/// once, so that they seldom evict each other.
const SLOTS: usize = 1024;
const _: () = assert!(SLOTS.is_power_of_two());

/// One direction of a UDP flow: source, destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flow(SocketAddr, SocketAddr);

impl Flow {
    /// The slot of the flow from `src` to `dst`: a multiplicative hash of its addresses and ports.
    #[inline]
    fn slot(src: &SocketAddr, dst: &SocketAddr) -> usize {
        let word = |addr: &SocketAddr| -> u64 {
            let ip = match addr.ip() {
                IpAddr::V4(ip) => u64::from(u32::from(ip)),
                IpAddr::V6(ip) => {
                    let bits = u128::from(ip);
                    (bits as u64) ^ ((bits >> 64) as u64)
                }
            };
            ip << 16 ^ u64::from(addr.port())
        };
        let mixed = (word(src).rotate_left(29) ^ word(dst)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // The high bits are the well-mixed ones.
        (mixed >> (64 - SLOTS.trailing_zeros())) as usize
    }
}

/// A remembered answer: valid while the tracker's generation is `generation`
/// and capture time is within `since..until`.
#[derive(Debug, Clone, Copy)]
struct Route {
    generation: u64,
    since: Duration,
    until: Option<Duration>,
    call: Option<(CallKey, Direction)>,
}

impl Route {
    #[inline]
    fn holds(&self, generation: u64, now: Duration) -> bool {
        // Time going backwards (merged captures) may bring an ended dialog
        // back within its linger: ask again.
        self.generation == generation && now >= self.since && self.until.map_or(true, |u| now < u)
    }
}

/// [`Tracker::classify`] with its answers kept per flow. See the module
/// documentation.
pub(super) struct Routes {
    slots: Box<[Option<(Flow, Route)>]>,
}

/// How many flows are held, not a thousand slots.
impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.slots.iter().filter(|slot| slot.is_some()).count();
        f.debug_struct("Routes").field("held", &held).finish()
    }
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            slots: vec![None; SLOTS].into_boxed_slice(),
        }
    }
}

impl Routes {
    /// What `tracker.classify(now, src, dst)` answers, from the cache when
    /// it still holds. Inlined into the pipeline's RTP path, which is
    /// generic over its output (so built in the crate that names it): the
    /// hit, nearly every packet, is a hash and two compares; the tracker is
    /// asked out of line.
    #[inline]
    pub(super) fn classify(
        &mut self,
        tracker: &Tracker,
        now: Duration,
        src: &SocketAddr,
        dst: &SocketAddr,
    ) -> Option<(CallKey, Direction)> {
        let generation = tracker.generation();
        let index = Flow::slot(src, dst);
        if let Some((held, route)) = &self.slots[index] {
            if held.0 == *src && held.1 == *dst && route.holds(generation, now) {
                return route.call;
            }
        }
        self.ask(tracker, now, src, dst, index)
    }

    /// A miss of [`Routes::classify`]: the tracker's answer, kept in slot `index`.
    #[inline(never)]
    fn ask(
        &mut self,
        tracker: &Tracker,
        now: Duration,
        src: &SocketAddr,
        dst: &SocketAddr,
        index: usize,
    ) -> Option<(CallKey, Direction)> {
        let Classified { call, until } = tracker.classify_until(now, *src, *dst);
        self.slots[index] = Some((
            Flow(*src, *dst),
            Route {
                generation: tracker.generation(),
                since: now,
                until,
                call,
            },
        ));
        call
    }

    /// Forgets every answer (the capture is over).
    pub(super) fn clear(&mut self) {
        self.slots.fill(None);
    }
}
