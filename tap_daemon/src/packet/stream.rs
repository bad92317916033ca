//! TCP stream reassembly: the in-order bytes of each direction of a TCP
//! connection, from segments that a tap may see out of order, twice
//! (retransmissions, a SPAN of both directions) or overlapping.
//!
//! SIP over TCP needs only that: the SIP layer frames messages by
//! Content-Length over the ordered bytes. Nothing here acknowledges anything or
//! models the endpoints' windows; what the tap missed is skipped (and said so
//! with `gap`) after a bounded wait, because a tap cannot ask for it again.
//! State is bounded: flows, bytes held per flow, idle time.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::FastMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::error::DecodeError;
use super::transport::TcpSegment;

/// Bounds for [`StreamReassembler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Directions of TCP connections followed at once (each direction of a
    /// connection counts once). A segment that would start another is dropped.
    pub max_flows: usize,
    /// Bytes held behind a hole in one direction (each held segment also
    /// costs [`SEGMENT_COST`], so a flood of 1-byte segments is bounded too).
    /// Past this the hole is given up on: a tap that missed a segment will
    /// never see it.
    pub max_buffered: usize,
    /// Bytes held behind holes in all flows together. Past this, a flow that
    /// gets another out-of-order segment gives up its hole at once, so a
    /// flood of half-open streams degrades reassembly instead of memory.
    pub max_total_buffered: usize,
    /// How long bytes wait behind a hole before it is skipped. Longer than a
    /// few retransmission timeouts: a retransmission the tap does see fills it.
    pub hole_timeout: Duration,
    /// A direction with no segment for this long is dropped (its end reported
    /// as [`StreamEnd::Expired`]). SIP keeps TCP connections open between
    /// calls, with keep-alives every 30 s or so at most; a closed direction
    /// lingers this long too, so its late retransmissions are recognised.
    pub idle_timeout: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_flows: 16384,
            max_buffered: 256 * 1024,
            max_total_buffered: 64 * 1024 * 1024,
            hole_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Bookkeeping cost charged per held out-of-order segment, on top of its bytes.
pub const SEGMENT_COST: usize = 64;

/// One direction of a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// An address and port as one word each (two for IPv6), instead of the
/// derived hash's variant tag, length-prefixed octets and port written one
/// by one: a segment looks its flow up three times. Equal keys hash
/// equally, as `Eq` requires (IPv6 flow info and scope only narrow equality).
impl std::hash::Hash for FlowKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for addr in [&self.src, &self.dst] {
            match addr {
                SocketAddr::V4(a) => {
                    state.write_u64(u64::from(a.ip().to_bits()) << 16 | u64::from(a.port()));
                }
                SocketAddr::V6(a) => {
                    state.write_u128(a.ip().to_bits());
                    state.write_u16(a.port());
                }
            }
        }
    }
}

/// Why a direction of a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// FIN, after all bytes before it.
    Fin,
    /// RST.
    Reset,
    /// No segment for the idle timeout.
    Expired,
    /// A SYN with a new initial sequence number: the port pair was reused.
    Replaced,
    /// [`StreamReassembler::finish`]: the capture ended.
    Finished,
}

/// In-order bytes of one direction (or its end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk<'a> {
    pub key: FlowKey,
    /// The next bytes of the stream; may be empty when only `end` is news.
    /// Borrowed from the segment when it arrived in order.
    pub data: Cow<'a, [u8]>,
    /// Bytes were skipped just before `data` (a hole that never filled): a
    /// framer must resynchronise rather than glue the two sides together.
    pub gap: bool,
    /// Set on the last chunk of a direction.
    pub end: Option<StreamEnd>,
}

#[derive(Debug)]
struct Flow {
    /// Sequence number of the next byte to deliver.
    next_seq: u32,
    /// Stream offset of the next byte to deliver (64-bit, so wrap-around of
    /// the 32-bit sequence space does not matter past this point).
    delivered: u64,
    /// Out-of-order bytes by stream offset.
    pending: BTreeMap<u64, Vec<u8>>,
    buffered: usize,
    /// When the current hole appeared.
    hole_since: Option<Duration>,
    /// Stream offset of the FIN, once seen.
    fin_at: Option<u64>,
    last_seen: Duration,
    /// Closed (FIN done or RST): late segments are ignored until expiry.
    closed: bool,
}

/// Follows many TCP flows and hands out their ordered bytes.
#[derive(Debug)]
pub struct StreamReassembler {
    limits: StreamLimits,
    flows: FastMap<FlowKey, Flow>,
    /// Sum of `buffered` over all flows.
    total_buffered: usize,
    /// No flow is due to expire, nor hole to be skipped, at or before this
    /// capture time: [`StreamReassembler::expire`] has nothing to do until
    /// then and does not walk the flows (it is called every second; a tap
    /// follows hundreds of SIP connections idle for minutes).
    next_due: Duration,
    gaps: u64,
    retransmitted: u64,
}

impl StreamReassembler {
    pub fn new(limits: StreamLimits) -> Self {
        StreamReassembler {
            limits,
            flows: FastMap::default(),
            total_buffered: 0,
            next_due: Duration::MAX,
            gaps: 0,
            retransmitted: 0,
        }
    }

    /// Directions followed (closed ones included until they expire).
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is followed.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Holes skipped (bytes the tap never saw).
    pub fn gaps(&self) -> u64 {
        self.gaps
    }

    /// Segments that carried only bytes already delivered.
    pub fn retransmitted(&self) -> u64 {
        self.retransmitted
    }

    /// Add a segment seen at `now`; ordered bytes that it makes available are
    /// pushed to `out`.
    pub fn segment<'a>(
        &mut self,
        now: Duration,
        key: FlowKey,
        seg: &TcpSegment<'a>,
        out: &mut Vec<Chunk<'a>>,
    ) -> Result<(), DecodeError> {
        let flags = seg.flags;
        if let Some(flow) = self.flows.get(&key) {
            // A SYN that does not repeat the one we know starts a new
            // connection on the same port pair.
            let fresh =
                flow.closed || flow.delivered != 0 || seg.seq.wrapping_add(1) != flow.next_seq;
            if flags.syn() && fresh {
                if !flow.closed {
                    out.push(end_chunk(key, StreamEnd::Replaced));
                }
                self.total_buffered -= flow.buffered;
                self.flows.remove(&key);
            }
        }
        if !self.flows.contains_key(&key) {
            // Pure ACKs create no state: only a direction that carries data
            // (or opens with SYN) is worth following.
            if seg.payload.is_empty() && !flags.syn() {
                return Ok(());
            }
            if flags.rst() {
                return Ok(());
            }
            if self.flows.len() >= self.limits.max_flows {
                self.expire(now, out);
            }
            if self.flows.len() >= self.limits.max_flows {
                return Err(DecodeError::TcpFlowTableFull {
                    max: self.limits.max_flows,
                });
            }
            let next_seq = if flags.syn() {
                seg.seq.wrapping_add(1)
            } else {
                seg.seq
            };
            self.flows.insert(
                key,
                Flow {
                    next_seq,
                    delivered: 0,
                    pending: BTreeMap::new(),
                    buffered: 0,
                    hole_since: None,
                    fin_at: None,
                    last_seen: now,
                    closed: false,
                },
            );
        }
        let Some(flow) = self.flows.get_mut(&key) else {
            return Ok(());
        };
        flow.last_seen = now;
        // Due no later than from now (capture time may have gone backwards).
        self.next_due = self
            .next_due
            .min(now.saturating_add(self.limits.idle_timeout));
        let held_before = flow.buffered;
        if flow.closed {
            self.retransmitted += 1;
            return Ok(());
        }
        // Where this segment's data starts, as a stream offset. The signed
        // distance from the next expected sequence number handles wrap-around.
        let data_seq = if flags.syn() {
            seg.seq.wrapping_add(1)
        } else {
            seg.seq
        };
        let distance = i64::from(data_seq.wrapping_sub(flow.next_seq) as i32);
        let start = i64::try_from(flow.delivered)
            .unwrap_or(i64::MAX)
            .saturating_add(distance);
        let len = seg.payload.len() as i64;
        let end = start.saturating_add(len);
        if flags.fin() && end >= 0 {
            flow.fin_at.get_or_insert(end as u64);
        }
        let delivered = flow.delivered as i64;
        let mut progressed = false;
        if len > 0 {
            if end <= delivered {
                self.retransmitted += 1;
            } else if start <= delivered {
                // In order (possibly overlapping what we have): hand out the
                // new part straight from the segment, no copy.
                let skip = (delivered - start) as usize;
                let data = &seg.payload[skip..];
                flow.delivered += data.len() as u64;
                flow.next_seq = flow.next_seq.wrapping_add(data.len() as u32);
                out.push(Chunk {
                    key,
                    data: Cow::Borrowed(data),
                    gap: false,
                    end: None,
                });
                progressed = true;
            } else {
                let offset = start as u64;
                let held = flow.pending.get(&offset).map_or(0, Vec::len);
                if seg.payload.len() > held {
                    let held_cost = if held > 0 { held + SEGMENT_COST } else { 0 };
                    flow.buffered = flow.buffered - held_cost + seg.payload.len() + SEGMENT_COST;
                    flow.pending.insert(offset, seg.payload.to_vec());
                    flow.hole_since.get_or_insert(now);
                } else {
                    self.retransmitted += 1;
                }
            }
        }
        if progressed {
            Self::drain(now, key, flow, out, false);
        }
        // Give up on a hole when too much waits behind it, or for too long.
        let stale = flow
            .hole_since
            .is_some_and(|t| now.saturating_sub(t) > self.limits.hole_timeout);
        if stale {
            self.gaps += 1;
            Self::drain(now, key, flow, out, true);
        }
        let over_total =
            self.total_buffered - held_before + flow.buffered > self.limits.max_total_buffered;
        while flow.buffered > self.limits.max_buffered || over_total && !flow.pending.is_empty() {
            self.gaps += 1;
            Self::drain(now, key, flow, out, true);
        }
        if flags.rst() {
            if !flow.pending.is_empty() {
                self.gaps += 1;
                Self::drain(now, key, flow, out, true);
            }
            flow.closed = true;
            out.push(end_chunk(key, StreamEnd::Reset));
        } else {
            Self::check_fin(key, flow, out);
        }
        self.total_buffered = self.total_buffered - held_before + flow.buffered;
        // A new hole may be due sooner than any flow.
        self.next_due = self.next_due.min(Self::due(&self.limits, flow));
        Ok(())
    }

    /// When `flow` is due to expire, or its hole to be skipped, whichever
    /// comes first: [`StreamReassembler::expire`] acts only after it.
    fn due(limits: &StreamLimits, flow: &Flow) -> Duration {
        let idle = flow.last_seen.saturating_add(limits.idle_timeout);
        flow.hole_since
            .map_or(idle, |t| idle.min(t.saturating_add(limits.hole_timeout)))
    }

    /// Drop directions idle past the timeout (reporting their end, after any
    /// bytes they still held) and skip holes that waited too long.
    pub fn expire<'a>(&mut self, now: Duration, out: &mut Vec<Chunk<'a>>) {
        if now <= self.next_due {
            return;
        }
        let limits = self.limits;
        let mut gaps = 0;
        let mut total = 0;
        let mut next_due = Duration::MAX;
        self.flows.retain(|key, flow| {
            let idle = now.saturating_sub(flow.last_seen) > limits.idle_timeout;
            let stale = flow
                .hole_since
                .is_some_and(|t| now.saturating_sub(t) > limits.hole_timeout);
            if (idle || stale) && !flow.pending.is_empty() {
                gaps += 1;
                Self::drain(now, *key, flow, out, true);
                Self::check_fin(*key, flow, out);
            }
            if idle && !flow.closed {
                out.push(end_chunk(*key, StreamEnd::Expired));
            }
            if !idle {
                total += flow.buffered;
                next_due = next_due.min(Self::due(&limits, flow));
            }
            !idle
        });
        self.gaps += gaps;
        self.total_buffered = total;
        self.next_due = next_due;
    }

    /// The capture ended: deliver everything still held, past any hole, and
    /// end every open direction.
    pub fn finish<'a>(&mut self, out: &mut Vec<Chunk<'a>>) {
        self.total_buffered = 0;
        let mut flows: Vec<_> = self.flows.drain().collect();
        flows.sort_by_key(|(k, _)| *k);
        for (key, mut flow) in flows {
            if !flow.pending.is_empty() {
                self.gaps += 1;
                Self::drain(Duration::MAX, key, &mut flow, out, true);
            }
            if !flow.closed {
                out.push(end_chunk(key, StreamEnd::Finished));
            }
        }
    }

    /// Deliver pending bytes that are now in order. With `skip`, first jump
    /// over the hole to the earliest pending byte (marking the chunk `gap`).
    fn drain<'a>(
        now: Duration,
        key: FlowKey,
        flow: &mut Flow,
        out: &mut Vec<Chunk<'a>>,
        skip: bool,
    ) {
        let mut gap = false;
        let before = flow.delivered;
        if skip {
            if let Some((&first, _)) = flow.pending.iter().next() {
                if first > flow.delivered {
                    let jump = first - flow.delivered;
                    flow.delivered = first;
                    flow.next_seq = flow.next_seq.wrapping_add(jump as u32);
                    gap = true;
                }
            }
        }
        while let Some(entry) = flow.pending.first_entry() {
            let offset = *entry.key();
            if offset > flow.delivered {
                break;
            }
            let data = entry.remove();
            flow.buffered -= data.len() + SEGMENT_COST;
            let end = offset + data.len() as u64;
            if end <= flow.delivered {
                continue;
            }
            let skip_bytes = (flow.delivered - offset) as usize;
            let mut data = data;
            data.drain(..skip_bytes);
            flow.delivered = end;
            flow.next_seq = flow.next_seq.wrapping_add(data.len() as u32);
            out.push(Chunk {
                key,
                data: Cow::Owned(data),
                gap,
                end: None,
            });
            gap = false;
        }
        // What is left waits behind a new hole, which gets its own time.
        if flow.pending.is_empty() {
            flow.hole_since = None;
        } else if flow.delivered != before {
            flow.hole_since = Some(now);
        }
    }

    fn check_fin<'a>(key: FlowKey, flow: &mut Flow, out: &mut Vec<Chunk<'a>>) {
        if !flow.closed && flow.fin_at.is_some_and(|f| flow.delivered >= f) {
            flow.closed = true;
            flow.pending.clear();
            flow.buffered = 0;
            flow.hole_since = None;
            out.push(end_chunk(key, StreamEnd::Fin));
        }
    }
}

fn end_chunk<'a>(key: FlowKey, end: StreamEnd) -> Chunk<'a> {
    Chunk {
        key,
        data: Cow::Borrowed(&[]),
        gap: false,
        end: Some(end),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::transport::TcpFlags;

    fn key() -> FlowKey {
        FlowKey {
            src: "10.0.0.1:5060".parse().unwrap(),
            dst: "10.0.0.2:40000".parse().unwrap(),
        }
    }

    fn seg(seq: u32, flags: u8, payload: &[u8]) -> TcpSegment<'_> {
        TcpSegment {
            src_port: 5060,
            dst_port: 40000,
            seq,
            ack: 0,
            flags: TcpFlags(flags),
            payload,
        }
    }

    const A: u8 = TcpFlags::ACK;

    fn feed(
        r: &mut StreamReassembler,
        now: u64,
        s: TcpSegment<'_>,
    ) -> (Vec<u8>, bool, Option<StreamEnd>) {
        let mut out = Vec::new();
        r.segment(Duration::from_secs(now), key(), &s, &mut out)
            .unwrap();
        collect(out)
    }

    fn collect(out: Vec<Chunk<'_>>) -> (Vec<u8>, bool, Option<StreamEnd>) {
        let mut bytes = Vec::new();
        let mut gap = false;
        let mut end = None;
        for c in out {
            bytes.extend_from_slice(&c.data);
            gap |= c.gap;
            end = end.or(c.end);
        }
        (bytes, gap, end)
    }

    #[test]
    fn in_order_borrowed_then_out_of_order_buffered() {
        let mut r = StreamReassembler::new(StreamLimits::default());
        assert_eq!(feed(&mut r, 0, seg(99, TcpFlags::SYN, b"")).0, b"");
        let mut out = Vec::new();
        let s = seg(100, A, b"abc");
        r.segment(Duration::ZERO, key(), &s, &mut out).unwrap();
        assert!(matches!(out[0].data, Cow::Borrowed(b"abc")));
        assert_eq!(feed(&mut r, 0, seg(106, A, b"ghi")).0, b"");
        assert_eq!(feed(&mut r, 0, seg(103, A, b"def")).0, b"defghi");
    }

    #[test]
    fn retransmissions_and_overlaps() {
        let mut r = StreamReassembler::new(StreamLimits::default());
        assert_eq!(feed(&mut r, 0, seg(1000, A, b"hello ")).0, b"hello ");
        assert_eq!(feed(&mut r, 0, seg(1000, A, b"hello ")).0, b"");
        assert_eq!(feed(&mut r, 0, seg(1003, A, b"lo wor")).0, b"wor");
        assert_eq!(feed(&mut r, 0, seg(1011, A, b"!!")).0, b"");
        assert_eq!(feed(&mut r, 0, seg(1011, A, b"!!")).0, b"");
        assert_eq!(feed(&mut r, 0, seg(1008, A, b"rld")).0, b"ld!!");
        assert_eq!(r.retransmitted(), 2);
    }

    #[test]
    fn sequence_wraps() {
        let mut r = StreamReassembler::new(StreamLimits::default());
        assert_eq!(feed(&mut r, 0, seg(u32::MAX - 1, A, b"ab")).0, b"ab");
        assert_eq!(feed(&mut r, 0, seg(2, A, b"ef")).0, b"");
        assert_eq!(feed(&mut r, 0, seg(0, A, b"cd")).0, b"cdef");
    }

    #[test]
    fn fin_after_all_bytes_and_late_retransmission_ignored() {
        let mut r = StreamReassembler::new(StreamLimits::default());
        feed(&mut r, 0, seg(0, A, b"ab"));
        let (b, _, end) = feed(&mut r, 0, seg(4, A | TcpFlags::FIN, b"ef"));
        assert_eq!((b.as_slice(), end), (&b""[..], None));
        let (b, _, end) = feed(&mut r, 0, seg(2, A, b"cd"));
        assert_eq!((b.as_slice(), end), (&b"cdef"[..], Some(StreamEnd::Fin)));
        assert_eq!(feed(&mut r, 1, seg(2, A, b"cd")), (vec![], false, None));
        // A new SYN on the same ports starts afresh.
        feed(&mut r, 2, seg(5000, TcpFlags::SYN, b""));
        assert_eq!(feed(&mut r, 2, seg(5001, A, b"new")).0, b"new");
    }

    #[test]
    fn rst_ends() {
        let mut r = StreamReassembler::new(StreamLimits::default());
        feed(&mut r, 0, seg(0, A, b"ab"));
        let (_, _, end) = feed(&mut r, 0, seg(2, TcpFlags::RST, b""));
        assert_eq!(end, Some(StreamEnd::Reset));
    }

    #[test]
    fn hole_skipped_after_timeout_or_buffer_limit() {
        let limits = StreamLimits {
            max_buffered: 3 * SEGMENT_COST,
            hole_timeout: Duration::from_secs(2),
            ..StreamLimits::default()
        };
        let mut r = StreamReassembler::new(limits);
        feed(&mut r, 0, seg(0, A, b"ab"));
        assert_eq!(feed(&mut r, 0, seg(4, A, b"ef")).0, b"");
        assert_eq!(feed(&mut r, 1, seg(8, A, b"ij")).0, b"");
        // Three seconds on, the next segment finds the hole stale.
        let (b, gap, _) = feed(&mut r, 3, seg(12, A, b"mn"));
        assert_eq!((b.as_slice(), gap), (&b"ef"[..], true));
        // Buffer limit: a third segment behind holes is one too many; the
        // oldest hole goes.
        let (b, gap, _) = feed(&mut r, 3, seg(30, A, b"0123456789"));
        assert_eq!((b.as_slice(), gap), (&b"ij"[..], true));
        assert_eq!(r.gaps(), 2);
    }

    #[test]
    fn one_byte_segment_flood_is_bounded() {
        let mut r = StreamReassembler::new(StreamLimits::default());
        feed(&mut r, 0, seg(0, A, b"a"));
        let mut delivered = 0;
        for i in 0..100_000u32 {
            delivered += feed(&mut r, 0, seg(2 + 2 * i, A, b"x")).0.len();
        }
        let max_held = StreamLimits::default().max_buffered / (1 + SEGMENT_COST);
        assert!(delivered >= 100_000 - max_held, "{delivered}");
    }

    #[test]
    fn total_buffer_bound_across_flows() {
        let limits = StreamLimits {
            max_total_buffered: 4 * SEGMENT_COST,
            ..StreamLimits::default()
        };
        let mut r = StreamReassembler::new(limits);
        let mut out = Vec::new();
        let mut delivered = 0;
        for port in 1..20u16 {
            let k = FlowKey {
                src: SocketAddr::from(([10, 0, 0, 1], port)),
                dst: SocketAddr::from(([10, 0, 0, 2], 5060)),
            };
            r.segment(Duration::ZERO, k, &seg(0, A, b"a"), &mut out)
                .unwrap();
            r.segment(Duration::ZERO, k, &seg(5, A, b"hole"), &mut out)
                .unwrap();
            delivered = out.iter().filter(|c| c.gap).count();
        }
        assert!(r.total_buffered <= 5 * SEGMENT_COST, "{}", r.total_buffered);
        assert!(delivered >= 14, "{delivered}");
    }

    #[test]
    fn expire_and_finish() {
        let mut r = StreamReassembler::new(StreamLimits::default());
        feed(&mut r, 0, seg(0, A, b"ab"));
        feed(&mut r, 0, seg(4, A, b"ef"));
        let mut out = Vec::new();
        r.expire(Duration::from_secs(301), &mut out);
        assert_eq!(
            collect(out),
            (b"ef".to_vec(), true, Some(StreamEnd::Expired))
        );
        assert!(r.is_empty());
        feed(&mut r, 400, seg(0, A, b"ab"));
        let mut out = Vec::new();
        r.finish(&mut out);
        assert_eq!(collect(out), (vec![], false, Some(StreamEnd::Finished)));
    }

    /// `expire` skips its walk until something is due, and is never late:
    /// a hole made after the last walk, a flow seen again (not expired on
    /// its old time), a flow seen at an earlier capture time (due sooner).
    #[test]
    fn expire_acts_exactly_when_something_is_due() {
        let expire = |r: &mut StreamReassembler, secs: u64| {
            let mut out = Vec::new();
            r.expire(Duration::from_secs(secs), &mut out);
            collect(out)
        };
        let mut r = StreamReassembler::new(StreamLimits::default());
        feed(&mut r, 100, seg(0, A, b"ab"));
        assert_eq!(expire(&mut r, 101), (vec![], false, None));
        // A hole at 102: skipped after 5 s, not before.
        feed(&mut r, 102, seg(4, A, b"ef"));
        assert_eq!(expire(&mut r, 107), (vec![], false, None));
        assert_eq!(expire(&mut r, 108), (b"ef".to_vec(), true, None));
        // Seen again at 300: not idle at 403 (its last sight before was at 102).
        feed(&mut r, 300, seg(6, A, b"gh"));
        assert_eq!(expire(&mut r, 403), (vec![], false, None));
        assert_eq!(r.len(), 1);
        // Capture time gone backwards: seen at 50, idle after 350.
        feed(&mut r, 50, seg(8, A, b"ij"));
        assert_eq!(
            expire(&mut r, 351),
            (vec![], false, Some(StreamEnd::Expired))
        );
        assert!(r.is_empty());
    }

    #[test]
    fn flow_table_bounded_and_acks_make_no_state() {
        let limits = StreamLimits {
            max_flows: 1,
            ..StreamLimits::default()
        };
        let mut r = StreamReassembler::new(limits);
        let mut out = Vec::new();
        let other = FlowKey {
            src: "10.0.0.3:1".parse().unwrap(),
            dst: "10.0.0.2:2".parse().unwrap(),
        };
        r.segment(Duration::ZERO, other, &seg(0, A, b""), &mut out)
            .unwrap();
        assert!(r.is_empty());
        r.segment(Duration::ZERO, key(), &seg(0, A, b"x"), &mut out)
            .unwrap();
        let e = r
            .segment(Duration::ZERO, other, &seg(0, A, b"x"), &mut out)
            .unwrap_err();
        assert_eq!(e.kind(), crate::packet::ErrorKind::TcpFlowTableFull);
    }
}
