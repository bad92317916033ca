//! The simulated media thread of a session: every 20 ms it makes one read and
//! one write frame of a deterministic tone in the session's current codec and
//! runs the media bugs the way FreeSWITCH's switch_core_io.c does.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use crate::g711;
use crate::state::*;
use crate::types::*;

#[derive(Clone, Copy, Debug)]
pub(crate) struct MediaSpec {
    pub(crate) seconds: f64,
    pub(crate) read_hz: f64,
    pub(crate) write_hz: f64,
    pub(crate) read_amp: f64,
    pub(crate) write_amp: f64,
}

/// One frame of the tone: the encoded (native) bytes and the linear audio a
/// bug reads (what FreeSWITCH's decoder makes of them).
struct Tone {
    encoded: Vec<u8>,
    linear: Vec<u8>,
}

type ToneKey = (CodecKind, u32, u64, u64, u64);

/// Frames of whole-Hz tones repeat with the tone's period: each distinct one
/// is computed once for all sessions (keeps the host light with 200 calls).
fn tone_frame(kind: CodecKind, rate: u32, hz: f64, amp: f64, first: u64) -> Arc<Tone> {
    static CACHE: OnceLock<RwLock<HashMap<ToneKey, Arc<Tone>>>> = OnceLock::new();
    let key = g711::tone_period(hz, rate)
        .map(|period| (kind, rate, hz.to_bits(), amp.to_bits(), first % period));
    let cache = CACHE.get_or_init(Default::default);
    if let Some(key) = key {
        if let Some(tone) = cache.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return tone.clone();
        }
    }
    let samples = u64::from(rate / 50);
    let mut tone = Tone {
        encoded: Vec::with_capacity(samples as usize * 2),
        linear: Vec::with_capacity(samples as usize * 2),
    };
    for i in 0..samples {
        let sample = g711::tone_sample(hz, amp, rate, first + i);
        let heard = match kind {
            CodecKind::Pcmu => {
                let byte = g711::ulaw_encode(sample);
                tone.encoded.push(byte);
                g711::ulaw_decode(byte)
            }
            CodecKind::Pcma => {
                let byte = g711::alaw_encode(sample);
                tone.encoded.push(byte);
                g711::alaw_decode(byte)
            }
            CodecKind::L16 => {
                tone.encoded.extend_from_slice(&sample.to_le_bytes());
                sample
            }
        };
        tone.linear.extend_from_slice(&heard.to_le_bytes());
    }
    let tone = Arc::new(tone);
    if let Some(key) = key {
        let mut cache = cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() < 100_000 {
            cache.insert(key, tone.clone());
        }
    }
    tone
}

/// One direction's frame as the media thread hands it to bugs.
pub(crate) struct Frame {
    encoded: Vec<u8>,
    tone: Option<Arc<Tone>>,
    /// The linear audio after WRITE_REPLACE bugs changed it, when they did.
    replaced: Option<Vec<u8>>,
    frame: Box<switch_frame_t>,
}

impl Frame {
    pub(crate) fn new() -> Frame {
        Frame {
            encoded: Vec::with_capacity(2048),
            tone: None,
            replaced: None,
            // SAFETY: an all-zero frame is valid (NULL pointers, zero numbers).
            frame: Box::new(unsafe { std::mem::zeroed() }),
        }
    }

    /// The `switch_frame_t` handed to the bugs.
    pub(crate) fn raw(&mut self) -> *mut switch_frame_t {
        &mut *self.frame
    }

    fn linear(&self) -> &[u8] {
        match &self.replaced {
            Some(linear) => linear,
            None => self.tone.as_ref().map_or(&[], |t| &t.linear),
        }
    }

    /// Runs the WRITE_REPLACE bugs on the frame's linear audio, as
    /// FreeSWITCH does before it encodes what it writes, and encodes what
    /// they leave; returns what the far end decodes (what the caller hears).
    fn write_replace(
        &mut self,
        bugs: &[Arc<Bug>],
        kind: CodecKind,
        codec: *mut switch_codec_t,
        run: &mut dyn FnMut(&Arc<Bug>, u32),
    ) -> Vec<i16> {
        let mut linear: Vec<i16> = self
            .linear()
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        if !bugs.is_empty() {
            // SAFETY: an all-zero frame is valid (NULL pointers, zero numbers).
            let mut frame: Box<switch_frame_t> = Box::new(unsafe { std::mem::zeroed() });
            frame.codec = codec;
            frame.data = linear.as_mut_ptr().cast();
            frame.datalen = (linear.len() * 2) as u32;
            frame.buflen = frame.datalen;
            frame.samples = linear.len() as u32;
            frame.rate = self.frame.rate;
            frame.channels = 1;
            for bug in bugs {
                bug.write_replace.store(&mut *frame, Ordering::SeqCst);
                run(bug, SWITCH_ABC_TYPE_WRITE_REPLACE);
                bug.write_replace
                    .store(std::ptr::null_mut(), Ordering::SeqCst);
            }
            // Encoded again: the native write tap sees the frame on the wire.
            self.encoded.clear();
            let mut replaced = Vec::with_capacity(linear.len() * 2);
            for sample in &mut linear {
                let heard = match kind {
                    CodecKind::Pcmu => {
                        let byte = g711::ulaw_encode(*sample);
                        self.encoded.push(byte);
                        g711::ulaw_decode(byte)
                    }
                    CodecKind::Pcma => {
                        let byte = g711::alaw_encode(*sample);
                        self.encoded.push(byte);
                        g711::alaw_decode(byte)
                    }
                    CodecKind::L16 => {
                        self.encoded.extend_from_slice(&sample.to_le_bytes());
                        *sample
                    }
                };
                *sample = heard;
                replaced.extend_from_slice(&heard.to_le_bytes());
            }
            self.frame.data = self.encoded.as_mut_ptr().cast();
            self.frame.datalen = self.encoded.len() as u32;
            self.replaced = Some(replaced);
        }
        linear
    }

    /// Fills the frame with the tone from sample index `first`.
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &mut self,
        kind: CodecKind,
        rate: u32,
        hz: f64,
        amp: f64,
        first: u64,
        codec: *mut switch_codec_t,
        seq: u16,
    ) {
        let tone = tone_frame(kind, rate, hz, amp, first);
        self.replaced = None;
        // The module gets a private copy, as a real frame buffer would be.
        self.encoded.clear();
        self.encoded.extend_from_slice(&tone.encoded);
        self.tone = Some(tone);
        let frame = &mut *self.frame;
        frame.codec = codec;
        frame.data = self.encoded.as_mut_ptr().cast();
        frame.datalen = self.encoded.len() as u32;
        frame.buflen = self.encoded.capacity() as u32;
        frame.samples = rate / 50;
        frame.rate = rate;
        frame.channels = 1;
        frame.payload = kind.ianacode();
        frame.timestamp = first as u32;
        frame.seq = seq;
        frame.ssrc = 0x7465_7374;
        frame.m = SWITCH_FALSE;
        frame.flags = 0;
    }
}

/// Starts the media thread (refused while one is running for the session).
pub(crate) fn start(session: Arc<Session>, spec: MediaSpec) -> Result<u64, String> {
    if session.hung_up.load(Ordering::SeqCst) {
        return Err(format!("session {} is hung up", session.uuid));
    }
    let mut media = lock(&session.media);
    if media.running {
        return Err(format!("media already running on {}", session.uuid));
    }
    if let Some(old) = media.thread.take() {
        let _ = old.join();
    }
    let frames = (spec.seconds * 50.0).round().max(0.0) as u64;
    media.running = true;
    session.stop_media.store(false, Ordering::SeqCst);
    let thread_session = session.clone();
    let handle = std::thread::Builder::new()
        .name(format!("media-{}", session.id))
        .spawn(move || {
            crate::module::register_host_thread();
            run(&thread_session, spec, frames);
            lock(&thread_session.media).running = false;
        })
        .map_err(|e| e.to_string())?;
    media.thread = Some(handle);
    Ok(frames)
}

/// Waits for the session's media thread, if any.
pub(crate) fn join(session: &Session) {
    let handle = lock(&session.media).thread.take();
    if let Some(handle) = handle {
        let _ = handle.join();
    }
}

fn run(session: &Arc<Session>, spec: MediaSpec, frames: u64) {
    let mut read = Frame::new();
    let mut write = Frame::new();
    let started = Instant::now();
    for k in 0..frames {
        let deadline = started + Duration::from_millis(20 * k);
        let now = Instant::now();
        if deadline > now {
            std::thread::sleep(deadline - now);
        } else if now - deadline > Duration::from_millis(20) {
            lock(&session.media).late_ticks += 1;
        }
        if session.hung_up.load(Ordering::SeqCst) || session.stop_media.load(Ordering::SeqCst) {
            break;
        }
        tick(session, &spec, &mut read, &mut write, k);
    }
}

fn note(sent: &mut Sent, kind: CodecKind, rate: u32, hz: f64, amp: f64) -> u64 {
    let first = sent.next_sample;
    match sent.segments.last_mut() {
        Some(last)
            if last.codec == kind && last.rate == rate && last.hz == hz && last.amp == amp =>
        {
            last.frames += 1;
        }
        _ => sent.segments.push(Segment {
            codec: kind,
            rate,
            hz,
            amp,
            first_sample: first,
            first_frame: sent.frames,
            frames: 1,
        }),
    }
    sent.next_sample += u64::from(rate / 50);
    sent.frames += 1;
    first
}

/// One 20 ms tick: makes the frames and runs the bugs (also `bench`'s loop).
pub(crate) fn tick(
    session: &Arc<Session>,
    spec: &MediaSpec,
    read: &mut Frame,
    write: &mut Frame,
    k: u64,
) {
    let io = lock(&session.codec_io);
    let (kind, rate) = *lock(&session.codec);
    let write_kind = lock(&session.write_kind).unwrap_or(kind);
    let (first_read, first_write) = {
        let mut media = lock(&session.media);
        let r = note(&mut media.read, kind, rate, spec.read_hz, spec.read_amp);
        let w = note(
            &mut media.write,
            write_kind,
            rate,
            spec.write_hz,
            spec.write_amp,
        );
        (r, w)
    };
    read.fill(
        kind,
        rate,
        spec.read_hz,
        spec.read_amp,
        first_read,
        session.read_codec.pointer(),
        k as u16,
    );
    write.fill(
        write_kind,
        rate,
        spec.write_hz,
        spec.write_amp,
        first_write,
        session.write_codec.pointer(),
        k as u16,
    );
    let now_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut prune = false;
    {
        let list = session.bug_list.read().unwrap_or_else(|e| e.into_inner());
        let ready = |b: &Bug| {
            b.state.load(Ordering::SeqCst) == BUG_READY && !b.prune.load(Ordering::SeqCst)
        };
        let native = |b: &Bug| b.has(SMBF_TAP_NATIVE_READ) || b.has(SMBF_TAP_NATIVE_WRITE);
        let mut run = |bug: &Arc<Bug>, abc: u32| {
            if !bug.invoke(abc) {
                bug.prune.store(true, Ordering::SeqCst);
                prune = true;
            }
        };
        // The read path: native tap, then the decoded stream, then the ping.
        for bug in list
            .iter()
            .filter(|b| ready(b) && b.has(SMBF_TAP_NATIVE_READ))
        {
            bug.native_read.store(&mut *read.frame, Ordering::SeqCst);
            run(bug, SWITCH_ABC_TYPE_TAP_NATIVE_READ);
            bug.native_read
                .store(std::ptr::null_mut(), Ordering::SeqCst);
        }
        for bug in list
            .iter()
            .filter(|b| ready(b) && !native(b) && b.has(SMBF_READ_STREAM))
        {
            bug.push_read(read.linear());
            run(bug, SWITCH_ABC_TYPE_READ);
        }
        for bug in list
            .iter()
            .filter(|b| ready(b) && !native(b) && b.has(SMBF_READ_PING))
        {
            run(bug, SWITCH_ABC_TYPE_READ_PING);
        }
        // The write path: the WRITE_REPLACE bugs first (SMBF_FIRST ones at the
        // head of the list), then what is written is what the others see.
        let replacing: Vec<Arc<Bug>> = list
            .iter()
            .filter(|b| ready(b) && b.has(SMBF_WRITE_REPLACE))
            .cloned()
            .collect();
        let heard = write.write_replace(
            &replacing,
            write_kind,
            session.write_codec.pointer(),
            &mut |bug, abc| run(bug, abc),
        );
        {
            let mut media = lock(&session.media);
            // At most ten minutes at 48 kHz.
            if media.heard.len() < 48_000 * 600 {
                media.heard.extend_from_slice(&heard);
                let first = heard.first().copied().unwrap_or(0);
                let flat = heard.iter().all(|&s| s == first);
                media.heard_frames.push((monotonic_ns(), first, flat));
            }
        }
        for bug in list
            .iter()
            .filter(|b| ready(b) && b.has(SMBF_TAP_NATIVE_WRITE))
        {
            bug.native_write.store(&mut *write.frame, Ordering::SeqCst);
            run(bug, SWITCH_ABC_TYPE_TAP_NATIVE_WRITE);
            bug.native_write
                .store(std::ptr::null_mut(), Ordering::SeqCst);
        }
        for bug in list
            .iter()
            .filter(|b| ready(b) && !native(b) && b.has(SMBF_WRITE_STREAM))
        {
            bug.push_write(write.linear());
            run(bug, SWITCH_ABC_TYPE_WRITE);
        }
        for bug in list.iter() {
            if bug.stop_time != 0 && bug.stop_time <= now_epoch {
                bug.prune.store(true, Ordering::SeqCst);
                prune = true;
            }
            if bug.prune.load(Ordering::SeqCst) {
                prune = true;
            }
        }
    }
    drop(io);
    if prune {
        prune_bugs(session);
    }
}

/// CLOCK_MONOTONIC in nanoseconds: a clock another process on this machine can read too.
pub(crate) fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Hangs a session up: no more locates, media stops, every bug gets CLOSE in
/// this thread.
pub(crate) fn hangup(session: &Arc<Session>) -> usize {
    session
        .locks_at_hangup
        .store(session.locks.load(Ordering::SeqCst), Ordering::SeqCst);
    session.hanging_up.store(true, Ordering::SeqCst);
    session.hung_up.store(true, Ordering::SeqCst);
    session.stop_media.store(true, Ordering::SeqCst);
    join(session);
    let closed = remove_all_bugs(session);
    session.hanging_up.store(false, Ordering::SeqCst);
    session.maybe_destroy();
    closed
}
