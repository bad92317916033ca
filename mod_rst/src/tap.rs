//! The media bug: what runs on FreeSWITCH's media threads. It copies each frame
//! into the sender's queue and returns; it never blocks, locks, allocates or
//! panics into C.

use std::ffi::c_void;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use rst_net::thread_context_switches;

use rst_proto::{Direction, PayloadType};

use crate::config::Audio;
use crate::ffi::*;
use crate::fs::SessionRef;
use crate::sender::{Sender, StreamId, CALLBACK_SAMPLE, MAX_FRAME_BYTES};

/// The buffer `switch_core_media_bug_read` fills: FreeSWITCH's recommended size.
const READ_BUFFER_BYTES: usize = 8192;

/// Everything a bug callback needs; boxed as the bug's user data and freed on CLOSE.
#[allow(missing_debug_implementations)]
pub struct Tap {
    pub stream: StreamId,
    pub uuid: String,
    pub audio: Audio,
    pub sender: Sender,
    /// Set at CLOSE: the call's playback bug must not be attached after it.
    pub stopped: Arc<AtomicBool>,
    /// Callbacks since the last timed one ([`Tap::sampled`]).
    callbacks: u32,
    read_buffer: Box<[u8; READ_BUFFER_BYTES]>,
    left: Box<[u8; MAX_FRAME_BYTES]>,
    right: Box<[u8; MAX_FRAME_BYTES]>,
}

impl Tap {
    pub fn new(
        stream: StreamId,
        uuid: String,
        audio: Audio,
        sender: Sender,
        stopped: Arc<AtomicBool>,
    ) -> Box<Tap> {
        Box::new(Tap {
            stream,
            uuid,
            audio,
            sender,
            stopped,
            callbacks: 0,
            read_buffer: Box::new([0; READ_BUFFER_BYTES]),
            left: Box::new([0; MAX_FRAME_BYTES]),
            right: Box::new([0; MAX_FRAME_BYTES]),
        })
    }

    /// Runs one media-bug callback's `work`, timing one in
    /// [`CALLBACK_SAMPLE`] for `rst_status` (what rst costs the media
    /// threads' CPU).
    ///
    /// The clock is the TSC's (`Instant`, a few ns, no system call); a
    /// sample during which the thread left the CPU (its context switches,
    /// read before and after, outside the timed part) is counted but not
    /// timed: its wall time would hold another thread's work. The thread's
    /// own CPU clock cannot serve here: it is a system call, whose entry and
    /// exit inside the timed part doubled a callback's figure in FreeSWITCH.
    pub fn sampled(&mut self, work: impl FnOnce(&mut Tap)) {
        self.callbacks += 1;
        if self.callbacks < CALLBACK_SAMPLE {
            work(self);
            return;
        }
        self.callbacks = 0;
        let switches = thread_context_switches();
        let started = Instant::now();
        work(self);
        let took = started.elapsed();
        let preempted = thread_context_switches() != switches;
        self.sender.counters.callback_sampled(took, preempted);
    }

    /// The media bug flags for this tap's audio. ONE_ONLY: FreeSWITCH itself
    /// refuses a second `rst` bug on a channel, whatever races above it.
    pub fn flags(audio: Audio) -> switch_media_bug_flag_t {
        SMBF_ONE_ONLY
            | match audio {
                // Native frames as they cross the wire; combining these with the
                // stream flags silences the stream callbacks (freeswitch-abi.md).
                Audio::Native => SMBF_TAP_NATIVE_READ | SMBF_TAP_NATIVE_WRITE | SMBF_NO_PAUSE,
                // Both directions, linear, interleaved: left is read, right is write.
                Audio::L16 => {
                    SMBF_READ_STREAM
                        | SMBF_WRITE_STREAM
                        | SMBF_READ_PING
                        | SMBF_STEREO
                        | SMBF_NO_PAUSE
                }
            }
    }

    /// A native frame of `direction` is available from `bug`.
    ///
    /// # Safety
    /// `bug` is the live bug this tap belongs to, inside its callback.
    pub unsafe fn native_frame(&self, bug: *mut switch_media_bug_t, direction: Direction) {
        // SAFETY: inside the bug's callback the bug, its session and its frames are live.
        let (frame, session) = unsafe {
            let frame = match direction {
                Direction::Read => switch_core_media_bug_get_native_read_frame(bug),
                Direction::Write => switch_core_media_bug_get_native_write_frame(bug),
            };
            (
                frame,
                SessionRef::new(switch_core_media_bug_get_session(bug)),
            )
        };
        if frame.is_null() {
            return;
        }
        // SAFETY: a live frame for the duration of the callback.
        let frame = unsafe { &*frame };
        if frame.data.is_null() || frame.datalen == 0 {
            return;
        }
        // The payload type is the frame's own codec's, else this direction's
        // session codec (the original sent the read codec's for W too).
        // SAFETY: a live frame's codec is NULL or live for the callback.
        let codec = unsafe { crate::fs::payload_type_of(frame.codec) }.or_else(|| {
            session.and_then(|s| match direction {
                Direction::Read => s.read_codec_payload_type(),
                Direction::Write => s.write_codec_payload_type(),
            })
        });
        let payload_type = codec.map_or(frame.payload, |(pt, _)| pt);
        // SAFETY: `data` holds `datalen` bytes (bytes, not samples: the original's bug).
        let payload =
            unsafe { std::slice::from_raw_parts(frame.data as *const u8, frame.datalen as usize) };
        let rtp_clock_samples = rtp_clock_samples(payload_type, frame.samples, payload.len());
        self.sender.try_frame(
            self.stream,
            direction,
            payload_type,
            rtp_clock_samples,
            payload,
        );
    }

    /// Linear audio of both directions is ready to be read from `bug`.
    ///
    /// # Safety
    /// As for [`Tap::native_frame`].
    pub unsafe fn linear_frames(&mut self, bug: *mut switch_media_bug_t) {
        // A few frames at most per ping; more would mean FreeSWITCH is far behind.
        for _ in 0..4 {
            // SAFETY: all-zero is a valid switch_frame_t (pointers NULL, numbers 0).
            let mut frame: switch_frame_t = unsafe { std::mem::zeroed() };
            frame.data = self.read_buffer.as_mut_ptr() as *mut c_void;
            frame.buflen = READ_BUFFER_BYTES as u32;
            // SAFETY: a live bug; the frame points at our buffer of `buflen` bytes.
            // fill=TRUE: FreeSWITCH waits until both sides have a frame instead of
            // padding the missing one, so R and W stay aligned.
            if unsafe { switch_core_media_bug_read(bug, &mut frame, SWITCH_TRUE) }
                != SWITCH_STATUS_SUCCESS
            {
                return;
            }
            let bytes = (frame.datalen as usize).min(READ_BUFFER_BYTES);
            let interleaved = &self.read_buffer[..bytes];
            let per_direction = bytes / 2;
            if per_direction > MAX_FRAME_BYTES {
                self.sender
                    .counters
                    .frames_too_big
                    .fetch_add(2, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            for (i, sample) in interleaved.chunks_exact(4).enumerate() {
                self.left[2 * i..2 * i + 2].copy_from_slice(&sample[..2]);
                self.right[2 * i..2 * i + 2].copy_from_slice(&sample[2..]);
            }
            let samples = (per_direction / 2) as u32;
            self.sender.try_frame(
                self.stream,
                Direction::Read,
                PayloadType::L16.number(),
                samples,
                &self.left[..per_direction],
            );
            self.sender.try_frame(
                self.stream,
                Direction::Write,
                PayloadType::L16.number(),
                samples,
                &self.right[..per_direction],
            );
        }
    }
}

/// How far the RTP timestamp advances for a frame: its samples, except G.722,
/// whose RTP clock runs at 8000 though it samples at 16 kHz (RFC 3551).
fn rtp_clock_samples(payload_type: u8, samples: u32, bytes: usize) -> u32 {
    let samples = if samples > 0 {
        samples
    } else {
        match PayloadType::new(payload_type) {
            Some(PayloadType::PCMU | PayloadType::PCMA) => bytes as u32,
            Some(PayloadType::L16) => bytes as u32 / 2,
            _ => 0,
        }
    };
    if PayloadType::new(payload_type) == Some(PayloadType::G722) {
        samples / 2
    } else {
        samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    /// A run of [`CALLBACK_SAMPLE`] callbacks, the last of which is the
    /// timed one, with `last` as its work.
    fn run(tap: &mut Tap, last: impl FnOnce()) {
        for _ in 1..CALLBACK_SAMPLE {
            tap.sampled(|_| {});
        }
        tap.sampled(|_| last());
    }

    #[test]
    fn a_sampled_callback_whose_thread_left_the_cpu_is_counted_but_not_timed() {
        let (sender, _commands) = crate::sender::channel(16);
        let counters = sender.counters.clone();
        let stopped = Arc::new(AtomicBool::new(false));
        let mut tap = Tap::new(1, "a".into(), Audio::Native, sender, stopped);
        let counted = |c: &crate::sender::Counters| {
            (
                c.callbacks.load(Relaxed),
                c.callbacks_timed.load(Relaxed),
                c.callbacks_preempted.load(Relaxed),
            )
        };
        // A sampled callback that sleeps leaves the CPU for certain.
        run(&mut tap, || std::thread::sleep(Duration::from_millis(1)));
        let (callbacks, timed, preempted) = counted(&counters);
        assert_eq!((callbacks, timed, preempted), (64, 0, 1));
        assert_eq!(counters.callback_ns_timed.load(Relaxed), 0);
        // One that does not is timed, unless this thread happened to be
        // preempted meanwhile (a busy machine): then it is not timed either.
        run(&mut tap, || {});
        let (callbacks, timed, preempted) = counted(&counters);
        assert_eq!(callbacks, 128);
        assert_eq!(timed + preempted, 2);
    }
}
