//! G.729 / G.729A / G.729B decoding through bcg729 (Debian `libbcg729-dev`).
//!
//! bcg729 is a G.729 Annex A decoder; Annex A and the full G.729 share one
//! bitstream, so it decodes both, and it implements the Annex B comfort noise
//! for SID frames.

use std::fmt;
use std::ptr::NonNull;

use crate::DecodeError;

/// Bytes in one G.729 speech frame (10 ms).
pub const FRAME_BYTES: usize = 10;
/// Bytes in one G.729 Annex B SID (comfort noise) frame.
pub const SID_BYTES: usize = 2;
/// Samples (8 kHz) produced by every frame, speech or SID.
pub const FRAME_SAMPLES: usize = 80;

mod ffi {
    /// Opaque bcg729 decoder channel context.
    #[repr(C)]
    pub struct Bcg729DecoderChannelContext {
        _private: [u8; 0],
    }

    #[link(name = "bcg729")]
    extern "C" {
        pub fn initBcg729DecoderChannel() -> *mut Bcg729DecoderChannelContext;
        pub fn closeBcg729DecoderChannel(ctx: *mut Bcg729DecoderChannelContext);
        pub fn bcg729Decoder(
            ctx: *mut Bcg729DecoderChannelContext,
            bit_stream: *const u8,
            bit_stream_length: u8,
            frame_erasure_flag: u8,
            sid_frame_flag: u8,
            rfc3389_payload_flag: u8,
            signal: *mut i16,
        );
    }
}

/// A bcg729 decoder channel: decodes the G.729 RTP payloads of one stream.
///
/// The channel keeps the speech model between packets, so feed it one
/// stream's packets in order. It owns its bcg729 context and frees it once,
/// when dropped.
pub struct G729Decoder {
    ctx: NonNull<ffi::Bcg729DecoderChannelContext>,
}

// SAFETY: the context is heap memory owned by this value alone (it is not
// Clone and never hands the pointer out), and bcg729 keeps all per-channel
// state in it, with no thread-local or shared mutable state, so moving the
// owner to another thread is sound. Not Sync: decoding needs `&mut self`.
unsafe impl Send for G729Decoder {}

impl fmt::Debug for G729Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("G729Decoder").finish_non_exhaustive()
    }
}

impl G729Decoder {
    /// Creates a decoder channel. Fails only if bcg729 cannot allocate its context.
    pub fn new() -> Result<Self, DecodeError> {
        // SAFETY: initBcg729DecoderChannel takes no arguments and returns
        // either a fresh context or null (malloc failure), handled below.
        let raw = unsafe { ffi::initBcg729DecoderChannel() };
        NonNull::new(raw)
            .map(|ctx| G729Decoder { ctx })
            .ok_or(DecodeError::CodecInit { codec: "G729" })
    }

    /// Decodes one RTP G.729 payload: any number of 10-byte frames, optionally
    /// followed by one 2-byte SID frame (RFC 3551 section 4.5.6). Appends 80
    /// samples at 8 kHz per frame to `out`.
    ///
    /// A payload of any other length has its whole frames decoded and appended,
    /// and the bytes left over are reported as [`DecodeError::TrailingBytes`].
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<(), DecodeError> {
        let frames = payload.chunks_exact(FRAME_BYTES);
        let rest = frames.remainder();
        let sid = rest.len() == SID_BYTES;
        out.reserve((payload.len() / FRAME_BYTES + usize::from(sid)) * FRAME_SAMPLES);

        for frame in frames {
            self.decode_frame(frame, false, out);
        }
        if sid {
            self.decode_frame(rest, true, out);
        } else if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes {
                codec: "G729",
                bytes: rest.len(),
            });
        }
        Ok(())
    }

    /// Decodes one speech frame (exactly [`FRAME_BYTES`]) or SID frame
    /// (exactly [`SID_BYTES`]) into [`FRAME_SAMPLES`] samples.
    fn decode_frame(&mut self, frame: &[u8], sid: bool, out: &mut Vec<i16>) {
        // bcg729 reads a fixed number of bytes that depends only on the SID
        // flag, so the length must be checked here, not trusted.
        let expected = if sid { SID_BYTES } else { FRAME_BYTES };
        debug_assert_eq!(frame.len(), expected);
        if frame.len() != expected {
            return;
        }
        let mut signal = [0i16; FRAME_SAMPLES];
        // SAFETY: `ctx` is a live context owned by `self` (freed only in Drop)
        // and `&mut self` rules out concurrent use. `frame` holds exactly the
        // bytes bcg729 reads for this kind of frame (10 for speech, 2 for a
        // G.729B SID when rfc3389PayloadFlag is 0), checked just above, and
        // bcg729 only reads it. `signal` has room for the 80 samples it writes.
        unsafe {
            ffi::bcg729Decoder(
                self.ctx.as_ptr(),
                frame.as_ptr(),
                frame.len() as u8,
                0,
                u8::from(sid),
                0,
                signal.as_mut_ptr(),
            );
        }
        out.extend_from_slice(&signal);
    }
}

impl Drop for G729Decoder {
    fn drop(&mut self) {
        // SAFETY: `ctx` came from initBcg729DecoderChannel, is owned by this
        // value only, and Drop runs once, so it is freed exactly once and never
        // used afterwards.
        unsafe { ffi::closeBcg729DecoderChannel(self.ctx.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<G729Decoder>();
    }

    #[test]
    fn frame_counts_and_leftovers() {
        let mut dec = G729Decoder::new().unwrap();
        let mut out = Vec::new();
        let payload = [0x55u8; 25];
        // 20 bytes of speech + 5 stray bytes: two frames decoded, then an error.
        let err = dec.decode(&payload[..25], &mut out).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TrailingBytes {
                codec: "G729",
                bytes: 5
            }
        );
        assert_eq!(out.len(), 160);
        // 10 bytes of speech + a 2-byte SID frame.
        dec.decode(&payload[..12], &mut out).unwrap();
        assert_eq!(out.len(), 320);
        // A lone SID frame.
        dec.decode(&payload[..2], &mut out).unwrap();
        assert_eq!(out.len(), 400);
        dec.decode(&[], &mut out).unwrap();
        assert_eq!(out.len(), 400);
        for len in [1, 3, 9] {
            let before = out.len();
            assert!(dec.decode(&payload[..len], &mut out).is_err());
            assert_eq!(out.len(), before);
        }
    }

    #[test]
    fn many_decoders_create_and_drop() {
        for _ in 0..100 {
            let mut dec = G729Decoder::new().unwrap();
            let mut out = Vec::new();
            dec.decode(&[0xA5; 10], &mut out).unwrap();
        }
    }

    #[test]
    fn decoder_moves_across_threads() {
        let mut dec = G729Decoder::new().unwrap();
        let mut out = Vec::new();
        dec.decode(&[0x12; 20], &mut out).unwrap();
        let handle = std::thread::spawn(move || {
            let mut out = Vec::new();
            dec.decode(&[0x34; 20], &mut out).unwrap();
            out.len()
        });
        assert_eq!(handle.join().unwrap(), 160);
    }
}
