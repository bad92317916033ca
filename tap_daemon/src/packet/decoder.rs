//! The top of the packet layer: a captured frame in, UDP datagrams and ordered
//! TCP bytes out, with a counter for every reason a frame gave nothing.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use super::error::{DecodeError, ErrorKind, Layer};
use super::frag::{FragmentLimits, Reassembler};
use super::ip::{parse_ipv4, parse_ipv6, proto, skip_extensions};
use super::link::{self, LinkType, Network};
use super::stream::{Chunk, FlowKey, StreamEnd, StreamLimits, StreamReassembler};
use super::transport::{parse_tcp, parse_udp};
use super::tunnel::{parse_gre, GreInner};

/// All the bounds of a [`Decoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub fragments: FragmentLimits,
    pub streams: StreamLimits,
    /// IP-in-IP / GRE / ERSPAN layers unwrapped in one frame. Real mirrors use
    /// one; the bound stops a packet that nests itself until the stack runs out.
    pub max_tunnel_depth: usize,
    /// How often (in capture time) idle fragments and streams are swept.
    pub sweep_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fragments: FragmentLimits::default(),
            streams: StreamLimits::default(),
            max_tunnel_depth: 4,
            sweep_interval: Duration::from_secs(1),
        }
    }
}

/// The transport a [`Datagram`] came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What the packet layer hands up: a UDP datagram's payload, or the next
/// ordered bytes of one direction of a TCP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// Capture time of the frame that made this available.
    pub time: Duration,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub transport: Transport,
    /// Borrowed from the frame when possible; owned after IP reassembly or
    /// when TCP bytes waited for an earlier segment.
    pub payload: Cow<'a, [u8]>,
    /// TCP only: bytes of this direction were skipped before `payload`.
    pub gap: bool,
    /// TCP only: this direction ended after `payload` (which may be empty).
    pub end: Option<StreamEnd>,
}

impl Datagram<'_> {
    /// Detach from the frame.
    pub fn into_owned(self) -> Datagram<'static> {
        Datagram {
            time: self.time,
            src: self.src,
            dst: self.dst,
            transport: self.transport,
            payload: Cow::Owned(self.payload.into_owned()),
            gap: self.gap,
            end: self.end,
        }
    }
}

/// Where a [`Decoder`] hands what it decodes, one [`Datagram`] at a time,
/// as soon as it is decoded: a vector collects them; the capture pipeline
/// handles each at once, with no vector to fill, walk and empty per frame.
pub trait Sink<'a> {
    fn datagram(&mut self, datagram: Datagram<'a>);
}

impl<'a> Sink<'a> for Vec<Datagram<'a>> {
    fn datagram(&mut self, datagram: Datagram<'a>) {
        self.push(datagram);
    }
}

/// What the decoder saw, for metrics. Errors are per [`ErrorKind`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames handed to [`Decoder::decode`].
    pub frames: u64,
    /// UDP datagrams delivered (a reassembled one counts once).
    pub udp_datagrams: u64,
    /// TCP segments decoded (with or without payload).
    pub tcp_segments: u64,
    /// Ordered TCP payload bytes delivered.
    pub tcp_bytes: u64,
    /// TCP segments that only repeated bytes already delivered.
    pub tcp_retransmitted: u64,
    /// Holes in TCP streams given up on.
    pub tcp_gaps: u64,
    /// IP fragments received.
    pub fragments: u64,
    /// Datagrams reassembled from fragments.
    pub reassembled: u64,
    /// Datagrams whose fragments never all arrived.
    pub fragments_expired: u64,
    /// Fragments that repeated bytes already held.
    pub fragment_duplicates: u64,
    /// Tunnel layers (IP-in-IP, GRE, ERSPAN) unwrapped.
    pub tunnels: u64,
    errors: [u64; ErrorKind::ALL.len()],
}

impl Counters {
    /// Frames (or fragments, segments) dropped for `kind`.
    pub fn error(&self, kind: ErrorKind) -> u64 {
        self.errors[kind as usize]
    }

    /// Every error kind with its count, zeros included, in a fixed order.
    pub fn errors(&self) -> impl Iterator<Item = (ErrorKind, u64)> + '_ {
        ErrorKind::ALL
            .iter()
            .map(|k| (*k, self.errors[*k as usize]))
    }

    fn count(&mut self, e: &DecodeError) {
        self.errors[e.kind() as usize] += 1;
    }
}

/// Decodes captured frames into [`Datagram`]s. Sans-IO: no sockets, threads or
/// clocks; the capture time of each frame is an argument, and all state
/// (fragments, TCP streams) is bounded by [`Limits`]. Feeding it arbitrary
/// bytes never panics: it is the fuzzing entry point of the packet layer.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    frags: Reassembler,
    streams: StreamReassembler,
    counters: Counters,
    last_sweep: Option<Duration>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(Limits::default())
    }
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            frags: Reassembler::new(limits.fragments),
            streams: StreamReassembler::new(limits.streams),
            counters: Counters::default(),
            last_sweep: None,
        }
    }

    /// Decode one frame of link type `link` captured at `now`, handing what
    /// it yields to `out` in order (nothing, a UDP datagram, TCP bytes — possibly
    /// several chunks, when a segment fills a hole — and the ends of streams
    /// that went idle). A frame that yields nothing because of `DecodeError`
    /// has it counted and returned, for logging; `out` may still have been
    /// given idle-stream ends.
    pub fn decode<'a>(
        &mut self,
        link: LinkType,
        now: Duration,
        frame: &'a [u8],
        out: &mut impl Sink<'a>,
    ) -> Result<(), DecodeError> {
        self.counters.frames += 1;
        self.sweep(now, out);
        let result = self.frame(link, now, frame, out);
        if let Err(e) = &result {
            self.counters.count(e);
        }
        // The reassemblers' own counters are copied where they may have
        // moved (after a fragment, a TCP segment, a sweep), not for every
        // frame.
        result
    }

    /// Sweep timed-out fragments and idle TCP streams at `now` (also done by
    /// [`Decoder::decode`] every `sweep_interval`; call this when no frames
    /// arrive, so that stream ends are still reported).
    pub fn expire<'a>(&mut self, now: Duration, out: &mut impl Sink<'a>) {
        self.frags.expire(now);
        let mut chunks = Vec::new();
        self.streams.expire(now, &mut chunks);
        push_chunks(&mut self.counters, now, chunks, out);
        self.last_sweep = Some(now);
        self.sync_counters();
    }

    /// The capture ended at `now`: deliver every byte still held behind a TCP
    /// hole and end every stream.
    pub fn finish<'a>(&mut self, now: Duration, out: &mut impl Sink<'a>) {
        let mut chunks = Vec::new();
        self.streams.finish(&mut chunks);
        push_chunks(&mut self.counters, now, chunks, out);
        self.sync_counters();
    }

    /// Counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    fn sweep<'a>(&mut self, now: Duration, out: &mut impl Sink<'a>) {
        let due = match self.last_sweep {
            None => {
                self.last_sweep = Some(now);
                false
            }
            // Capture time can jump backwards (merged files, broken clocks):
            // restart the interval rather than never sweep again.
            Some(last) if now < last => {
                self.last_sweep = Some(now);
                false
            }
            Some(last) => now - last >= self.limits.sweep_interval,
        };
        if due {
            self.expire(now, out);
        }
    }

    fn sync_counters(&mut self) {
        self.counters.fragments_expired = self.frags.expired();
        self.counters.fragment_duplicates = self.frags.duplicates();
        self.counters.tcp_gaps = self.streams.gaps();
        self.counters.tcp_retransmitted = self.streams.retransmitted();
    }

    fn frame<'a>(
        &mut self,
        link: LinkType,
        now: Duration,
        frame: &'a [u8],
        out: &mut impl Sink<'a>,
    ) -> Result<(), DecodeError> {
        // Untagged Ethernet carrying IPv4 is told here, without a call to
        // the link layer's general walk.
        let (net, ip) = match frame.get(12..) {
            Some([0x08, 0x00, ip @ ..]) if link == LinkType::ETHERNET => (Network::Ipv4, ip),
            _ => {
                let (net, range) = link::network(link, frame)?;
                (net, frame.get(range).unwrap_or_default())
            }
        };
        // Nearly every frame a tap sees is one whole IPv4 UDP datagram (RTP):
        // read straight off the header, it skips the general path's
        // `IpPacket` and `Result`s, which handle every address family,
        // fragments, TCP and tunnels.
        if net == Network::Ipv4 {
            if let Some((src, dst, payload)) = plain_udp(ip) {
                self.counters.udp_datagrams += 1;
                out.datagram(Datagram {
                    time: now,
                    src: SocketAddr::V4(src),
                    dst: SocketAddr::V4(dst),
                    transport: Transport::Udp,
                    payload: Cow::Borrowed(payload),
                    gap: false,
                    end: None,
                });
                return Ok(());
            }
        }
        self.network(now, net, ip, 0, out)
    }

    fn network<'b>(
        &mut self,
        now: Duration,
        net: Network,
        data: &'b [u8],
        depth: usize,
        out: &mut impl Sink<'b>,
    ) -> Result<(), DecodeError> {
        let ip = match net {
            Network::Ipv4 => parse_ipv4(data)?,
            Network::Ipv6 => parse_ipv6(data)?,
        };
        let Some(fragment) = ip.fragment else {
            return self.upper(now, ip.src, ip.dst, ip.protocol, ip.payload, depth, out);
        };
        self.counters.fragments += 1;
        let inserted = self
            .frags
            .insert(now, ip.src, ip.dst, ip.protocol, fragment, ip.payload);
        self.sync_counters();
        let Some(whole) = inserted? else {
            return Ok(());
        };
        self.counters.reassembled += 1;
        // The reassembled bytes live only in this frame: what they yield is
        // copied out of them.
        let mut local = Vec::new();
        let result = match net {
            Network::Ipv4 => self.upper(
                now,
                ip.src,
                ip.dst,
                whole.protocol,
                &whole.payload,
                depth,
                &mut local,
            ),
            Network::Ipv6 => match skip_extensions(whole.protocol, &whole.payload) {
                Ok((protocol, payload)) => {
                    self.upper(now, ip.src, ip.dst, protocol, payload, depth, &mut local)
                }
                Err(e) => Err(e),
            },
        };
        for datagram in local {
            out.datagram(datagram.into_owned());
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn upper<'b>(
        &mut self,
        now: Duration,
        src: IpAddr,
        dst: IpAddr,
        protocol: u8,
        data: &'b [u8],
        depth: usize,
        out: &mut impl Sink<'b>,
    ) -> Result<(), DecodeError> {
        match protocol {
            proto::UDP => {
                let udp = parse_udp(data)?;
                self.counters.udp_datagrams += 1;
                out.datagram(Datagram {
                    time: now,
                    src: SocketAddr::new(src, udp.src_port),
                    dst: SocketAddr::new(dst, udp.dst_port),
                    transport: Transport::Udp,
                    payload: Cow::Borrowed(udp.payload),
                    gap: false,
                    end: None,
                });
                Ok(())
            }
            proto::TCP => {
                let seg = parse_tcp(data)?;
                self.counters.tcp_segments += 1;
                let key = FlowKey {
                    src: SocketAddr::new(src, seg.src_port),
                    dst: SocketAddr::new(dst, seg.dst_port),
                };
                let mut chunks = Vec::new();
                let result = self.streams.segment(now, key, &seg, &mut chunks);
                self.sync_counters();
                push_chunks(&mut self.counters, now, chunks, out);
                result
            }
            proto::IPV4 | proto::IPV6 | proto::GRE => {
                if depth >= self.limits.max_tunnel_depth {
                    return Err(DecodeError::TooDeep {
                        layer: Layer::Tunnel,
                        max: self.limits.max_tunnel_depth,
                    });
                }
                self.counters.tunnels += 1;
                let (net, inner) = match protocol {
                    proto::IPV4 => (Network::Ipv4, data),
                    proto::IPV6 => (Network::Ipv6, data),
                    _ => match parse_gre(data)? {
                        GreInner::Ipv4(d) => (Network::Ipv4, d),
                        GreInner::Ipv6(d) => (Network::Ipv6, d),
                        GreInner::Ethernet(f) => {
                            let (net, range) = link::ethernet(f, 0)?;
                            (net, f.get(range).unwrap_or_default())
                        }
                    },
                };
                self.network(now, net, inner, depth + 1, out)
            }
            other => Err(DecodeError::OtherProtocol(other)),
        }
    }
}

/// An IPv4 packet that is a whole UDP datagram, valid by the same checks
/// as [`parse_ipv4`] and [`parse_udp`]: its endpoints and payload. `None`
/// for anything else (a fragment, another protocol, a header either would
/// refuse), which the general path then decodes or refuses with its error.
#[inline]
fn plain_udp(ip: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4, &[u8])> {
    let h = ip.first_chunk::<20>()?;
    let header_len = usize::from(h[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    // Version 4; no more fragments and offset 0 (DF may be set); UDP.
    if h[0] >> 4 != 4
        || header_len < 20
        || total_len < header_len
        || total_len > ip.len()
        || u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0
        || h[9] != super::ip::proto::UDP
    {
        return None;
    }
    let udp = ip.get(header_len..total_len)?;
    let u = udp.first_chunk::<8>()?;
    let length = usize::from(u16::from_be_bytes([u[4], u[5]]));
    if length < 8 || length > udp.len() {
        return None;
    }
    let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
    let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
    Some((
        SocketAddrV4::new(src, u16::from_be_bytes([u[0], u[1]])),
        SocketAddrV4::new(dst, u16::from_be_bytes([u[2], u[3]])),
        udp.get(8..length)?,
    ))
}

fn push_chunks<'b>(
    counters: &mut Counters,
    now: Duration,
    chunks: Vec<Chunk<'b>>,
    out: &mut impl Sink<'b>,
) {
    for c in chunks {
        counters.tcp_bytes += c.data.len() as u64;
        out.datagram(Datagram {
            time: now,
            src: c.key.src,
            dst: c.key.dst,
            transport: Transport::Tcp,
            payload: c.data,
            gap: c.gap,
            end: c.end,
        });
    }
}

/// A fuzzing entry point: decode arbitrary bytes as a sequence of frames, so
/// that a fuzzer reaches the stateful parts (fragments, TCP streams) too.
/// Layout: a link-type selector byte, then repeated records of a one-byte time
/// step (milliseconds), a two-byte big-endian length and that many frame bytes.
/// Returns how many datagrams came out. Never panics, whatever the input.
pub fn fuzz_frames(data: &[u8]) -> usize {
    const LINKS: [LinkType; 8] = [
        LinkType::ETHERNET,
        LinkType::RAW,
        LinkType::LINUX_SLL,
        LinkType::LINUX_SLL2,
        LinkType::NULL,
        LinkType::LOOP,
        LinkType::IPV4,
        LinkType::IPV6,
    ];
    let Some((&selector, mut rest)) = data.split_first() else {
        return 0;
    };
    let link = LINKS[usize::from(selector) % LINKS.len()];
    // Small tables, so that a fuzzer reaches the limits quickly.
    let limits = Limits {
        fragments: FragmentLimits {
            max_datagrams: 8,
            max_bytes: 4096,
            timeout: Duration::from_millis(500),
        },
        streams: StreamLimits {
            max_flows: 8,
            max_buffered: 4096,
            max_total_buffered: 16384,
            hole_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_secs(2),
        },
        ..Limits::default()
    };
    let mut decoder = Decoder::new(limits);
    let mut now = Duration::ZERO;
    let mut count = 0;
    while let [step, hi, lo, tail @ ..] = rest {
        now += Duration::from_millis(u64::from(*step));
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (frame, next) = tail.split_at(len);
        let mut out = Vec::new();
        let _ = decoder.decode(link, now, frame, &mut out);
        count += out.len();
        rest = next;
    }
    let mut out = Vec::new();
    decoder.finish(now, &mut out);
    count + out.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the general path makes of an IPv4 packet, when it is a whole
    /// UDP datagram: the answer [`plain_udp`] must give.
    fn general(ip: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
        let packet = parse_ipv4(ip).ok()?;
        if packet.fragment.is_some() || packet.protocol != proto::UDP {
            return None;
        }
        let udp = parse_udp(packet.payload).ok()?;
        Some((
            SocketAddr::new(packet.src, udp.src_port),
            SocketAddr::new(packet.dst, udp.dst_port),
            udp.payload,
        ))
    }

    fn fast(ip: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
        plain_udp(ip).map(|(src, dst, payload)| (SocketAddr::V4(src), SocketAddr::V4(dst), payload))
    }

    /// Every byte of the IPv4 and UDP headers set to values that matter
    /// (lengths, version, flags, protocol), and every cut: the shortcut
    /// agrees with the general path, datagram for datagram.
    #[test]
    fn plain_udp_agrees_with_the_general_path() {
        let mut ip = vec![
            0x45, 0, 0, 32, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        ip.extend_from_slice(&[0x13, 0xc4, 0x27, 0x10, 0, 12, 0, 0, 1, 2, 3, 4]);
        ip.extend_from_slice(&[0xee; 6]); // link padding
        assert!(fast(&ip).is_some());
        let values = [
            0u8, 1, 4, 5, 6, 7, 8, 11, 12, 17, 20, 24, 32, 0x20, 0x3f, 0x40, 0x45, 0x46, 0x4f,
            0x55, 0x80, 0xff,
        ];
        for at in 0..28 {
            for &value in &values {
                let mut mutated = ip.clone();
                mutated[at] = value;
                assert_eq!(fast(&mutated), general(&mutated), "byte {at} = {value:#x}");
            }
        }
        for len in 0..ip.len() {
            assert_eq!(fast(&ip[..len]), general(&ip[..len]), "cut at {len}");
        }
    }
}
