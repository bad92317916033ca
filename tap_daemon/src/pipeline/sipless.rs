//! Calls without SIP: an RTP flow no SIP call claims becomes a call of its
//! own once two packets of one SSRC show it is RTP.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Duration;

use rst_proto::{Direction, RtpPacket};

use super::call::{pair, Call};
use super::sniff::static_audio;
use super::{Core, Leg, Output};
use crate::packet::{Datagram, Transport};
use crate::sip::sdp::static_payload_type;
use crate::sip::CallKey;

/// sequence to the last one to confirm it.
#[derive(Debug)]
pub(super) struct Candidate {
    pub(super) ssrc: u32,
    /// Sequence number of the last packet.
    pub(super) sequence: u16,
    /// Capture time of the last packet.
    pub(super) seen: Duration,
    /// The packets of this SSRC so far, with their capture times, oldest
    /// first; at most [`MAX_CANDIDATE_PACKETS`].
    pub(super) packets: std::collections::VecDeque<(Duration, Vec<u8>)>,
}

/// Packets a candidate flow keeps while unconfirmed: enough for a stream
/// whose first packets are parted by loss, little for a flood of flows.
pub(super) const MAX_CANDIDATE_PACKETS: usize = 4;

impl Core {
    /// The call of an RTP packet no SIP call claims, when such calls are
    /// recorded: an existing one of its flow pair, or a new one once the flow
    /// has shown itself to be RTP.
    pub(super) fn sipless_call(
        &mut self,
        now: Duration,
        src: SocketAddr,
        dst: SocketAddr,
        bytes: &[u8],
        packet: &RtpPacket<'_>,
        out: &mut impl Output,
    ) -> Option<(CallKey, Direction)> {
        if !self.config.rtp_without_sip {
            self.stats.rtp_unmatched += 1;
            return None;
        }
        let flow = pair(src, dst);
        if let Some(&key) = self.sipless.get(&flow) {
            let first_src = self.calls.get(&key)?.sipless?.1;
            let direction = if src == first_src {
                Direction::Read
            } else {
                Direction::Write
            };
            return Some((key, direction));
        }
        if !static_audio(packet.payload_type) {
            self.stats.rtp_unmatched += 1;
            return None;
        }
        let confirmed = self.candidates.get(&(src, dst)).is_some_and(|c| {
            c.ssrc == packet.ssrc && {
                let step = packet.sequence.wrapping_sub(c.sequence);
                (1..=16).contains(&step)
            }
        });
        if !confirmed {
            match self.candidates.get_mut(&(src, dst)) {
                // The same SSRC further on than the window: RTP with loss as
                // likely as not. Its packets wait too, so that none is lost
                // once the flow confirms.
                Some(c) if c.ssrc == packet.ssrc => {
                    if c.packets.len() >= MAX_CANDIDATE_PACKETS {
                        c.packets.pop_front();
                    }
                    c.packets.push_back((now, bytes.to_vec()));
                    c.sequence = packet.sequence;
                    c.seen = now;
                }
                _ => {
                    if self.candidates.len() >= 2 * self.config.max_sipless_calls {
                        // Full of flows that never confirmed: start over rather than grow.
                        self.candidates.clear();
                    }
                    self.candidates.insert(
                        (src, dst),
                        Candidate {
                            ssrc: packet.ssrc,
                            sequence: packet.sequence,
                            seen: now,
                            packets: [(now, bytes.to_vec())].into(),
                        },
                    );
                }
            }
            self.stats.rtp_unmatched += 1;
            return None;
        }
        let first = self.candidates.remove(&(src, dst))?;
        if self.sipless.len() >= self.config.max_sipless_calls {
            self.stats.sipless_refused += 1;
            self.stats.rtp_unmatched += 1;
            return None;
        }
        // Counted unmatched while they waited; forwarded below.
        self.stats.rtp_unmatched = self
            .stats
            .rtp_unmatched
            .saturating_sub(first.packets.len() as u64);
        let key = CallKey::from_call_id(&format!("rtp {} {}", flow.0, flow.1));
        if self.calls.contains_key(&key) {
            return None;
        }
        let mut call = Call::new(None, now);
        call.sipless = Some((flow, src));
        call.clock_rate = static_payload_type(packet.payload_type).map(|(_, clock)| clock);
        call.addresses = vec![src.ip(), dst.ip()];
        self.calls.insert(key, call);
        self.sipless.insert(flow, key);
        // The packets that made the flow a candidate go first.
        for (seen, bytes) in &first.packets {
            if let Ok(held) = RtpPacket::parse(bytes) {
                let d = Datagram {
                    time: *seen,
                    src,
                    dst,
                    transport: Transport::Udp,
                    payload: Cow::Borrowed(bytes),
                    gap: false,
                    end: None,
                };
                self.forward(key, Leg::Known(Direction::Read), &d, &held, out);
            }
        }
        Some((key, Direction::Read))
    }
}
