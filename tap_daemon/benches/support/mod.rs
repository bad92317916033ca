//! The large capture both benchmarks replay: rounds of the project's Ethernet
//! captures, staggered, written into one file.

use std::path::Path;
use std::time::Duration;

/// Between rounds: longer than the tracker's linger and idle timeouts, so a
/// round's calls are over before the next round replays the same Call-IDs.
pub const ROUND_GAP: Duration = Duration::from_secs(120);
/// Offset between the captures within a round.
pub const STAGGER: Duration = Duration::from_millis(250);

/// A pcap timestamp as time since the epoch (as `capture::replay` reads it).
#[allow(clippy::unnecessary_cast)]
pub fn timestamp(header: &pcap::PacketHeader) -> Duration {
    let (sec, usec) = (header.ts.tv_sec as i64, header.ts.tv_usec as i64);
    Duration::from_secs(sec.max(0) as u64) + Duration::from_micros(usec.clamp(0, 999_999) as u64)
}

/// One frame of a source capture: time from the capture's first packet, its
/// pcap header (reused when writing), its bytes.
pub type Frame = (Duration, pcap::PacketHeader, Vec<u8>);

/// The frames of one Ethernet capture.
pub fn load(path: &Path) -> Option<Vec<Frame>> {
    let mut cap = pcap::Capture::from_file(path).ok()?;
    if cap.get_datalink() != pcap::Linktype::ETHERNET {
        return None;
    }
    let mut frames = Vec::new();
    let mut first = None;
    while let Ok(packet) = cap.next_packet() {
        let at = timestamp(packet.header);
        let first = *first.get_or_insert(at);
        frames.push((
            at.saturating_sub(first),
            *packet.header,
            packet.data.to_vec(),
        ));
    }
    Some(frames)
}

/// Writes rounds of `sources` to `out` until `target` packets; returns how
/// many were written.
#[allow(clippy::unnecessary_cast)]
pub fn build(sources: &[Vec<Frame>], target: u64, out: &Path) -> u64 {
    let mut round: Vec<(Duration, &pcap::PacketHeader, &[u8])> = sources
        .iter()
        .enumerate()
        .flat_map(|(i, frames)| {
            let start = STAGGER * i as u32;
            frames
                .iter()
                .map(move |(t, h, f)| (start + *t, h, f.as_slice()))
        })
        .collect();
    round.sort_by_key(|(t, _, _)| *t);
    let span = round.last().map_or(Duration::ZERO, |(t, _, _)| *t) + ROUND_GAP;
    let dead = pcap::Capture::dead(pcap::Linktype::ETHERNET).expect("a pcap handle");
    let mut file = dead.savefile(out).expect("create the capture file");
    let mut start = Duration::from_secs(1_700_000_000);
    let mut written = 0u64;
    while written < target {
        for (t, header, data) in &round {
            let at = start + *t;
            let mut header = **header;
            header.ts.tv_sec = at.as_secs() as _;
            header.ts.tv_usec = at.subsec_micros() as _;
            file.write(&pcap::Packet::new(&header, data));
            written += 1;
        }
        start += span;
    }
    file.flush().expect("write the capture file");
    written
}
