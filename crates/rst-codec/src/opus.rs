//! Opus decoding through the system libopus (Debian `libopus-dev`).
//!
//! RFC 7587: an opus RTP stream's clock is always 48000, whatever the audio
//! bandwidth, and its SDP always says `opus/48000/2`, even for mono. The
//! decoder here always produces mono at 48 kHz: libopus downmixes a stereo
//! stream itself, and 48 kHz keeps RTP timestamps and sample positions in a
//! 1:1 ratio, so a lost packet becomes exactly its timestamp span of silence.

use std::ffi::c_int;
use std::fmt;
use std::ptr::NonNull;

use crate::DecodeError;

/// Output (and RTP clock) rate in Hz.
pub const SAMPLE_RATE: u32 = 48_000;
/// The longest packet RFC 6716 allows, 120 ms, in samples at 48 kHz.
pub const MAX_PACKET_SAMPLES: usize = 5760;

mod ffi {
    use std::ffi::{c_int, c_uchar};

    /// Opaque libopus decoder state.
    #[repr(C)]
    pub struct OpusDecoder {
        _private: [u8; 0],
    }

    #[link(name = "opus")]
    extern "C" {
        pub fn opus_decoder_create(fs: i32, channels: c_int, error: *mut c_int)
            -> *mut OpusDecoder;
        pub fn opus_decode(
            st: *mut OpusDecoder,
            data: *const c_uchar,
            len: i32,
            pcm: *mut i16,
            frame_size: c_int,
            decode_fec: c_int,
        ) -> c_int;
        pub fn opus_decoder_destroy(st: *mut OpusDecoder);
    }
}

/// libopus's error codes (`opus_defines.h`), as text for [`DecodeError::Corrupt`].
fn error_text(code: c_int) -> &'static str {
    match code {
        -1 => "bad argument",
        -2 => "buffer too small",
        -3 => "internal error",
        -4 => "invalid packet",
        -5 => "unimplemented",
        -6 => "invalid state",
        -7 => "allocation failure",
        _ => "unknown error",
    }
}

/// A libopus decoder: decodes the opus RTP payloads of one stream to mono
/// 48 kHz samples.
///
/// Opus is stateful (its prediction carries across packets), so feed it one
/// stream's packets in order. It owns its libopus state and frees it once,
/// when dropped.
pub struct OpusDecoder {
    state: NonNull<ffi::OpusDecoder>,
    /// Room for the longest packet; boxed so the decoder moves cheaply.
    pcm: Box<[i16; MAX_PACKET_SAMPLES]>,
}

// SAFETY: the state is heap memory owned by this value alone (it is not Clone
// and never hands the pointer out), and libopus keeps all of a decoder's state
// in it, with no thread-local or shared mutable state, so moving the owner to
// another thread is sound. Not Sync: decoding needs `&mut self`.
unsafe impl Send for OpusDecoder {}

impl fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpusDecoder").finish_non_exhaustive()
    }
}

impl OpusDecoder {
    /// Creates a mono 48 kHz decoder. Fails only if libopus cannot allocate it.
    pub fn new() -> Result<Self, DecodeError> {
        let mut error: c_int = 0;
        // SAFETY: 48000 and 1 channel are arguments libopus accepts, `error`
        // is a valid place for it to write its status, and the result is
        // either a fresh decoder or null, handled below.
        let raw = unsafe { ffi::opus_decoder_create(SAMPLE_RATE as i32, 1, &mut error) };
        match NonNull::new(raw) {
            Some(state) if error == 0 => Ok(OpusDecoder {
                state,
                pcm: Box::new([0; MAX_PACKET_SAMPLES]),
            }),
            Some(state) => {
                // Not expected (a non-null state comes with OPUS_OK), but if it
                // happens the state is freed here, once, and never used.
                // SAFETY: `state` came from opus_decoder_create and nothing else holds it.
                unsafe { ffi::opus_decoder_destroy(state.as_ptr()) };
                Err(DecodeError::CodecInit { codec: "opus" })
            }
            None => Err(DecodeError::CodecInit { codec: "opus" }),
        }
    }

    /// Decodes one RTP opus payload (one opus packet, RFC 7587 section 4.2)
    /// and appends its samples, mono at 48 kHz, to `out`: 2.5 to 120 ms.
    ///
    /// An empty payload appends nothing (it carries no audio; a lost packet
    /// is the receiver's to place as silence). A payload libopus rejects
    /// appends nothing and is [`DecodeError::Corrupt`].
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<(), DecodeError> {
        if payload.is_empty() {
            // libopus takes a zero length as "packet lost" and invents audio.
            return Ok(());
        }
        let Ok(len) = i32::try_from(payload.len()) else {
            return Err(DecodeError::Corrupt {
                codec: "opus",
                reason: "payload too long",
            });
        };
        // SAFETY: `state` is a live decoder owned by `self` (freed only in
        // Drop) and `&mut self` rules out concurrent use. libopus reads at
        // most `len` bytes from `payload`, which has exactly that many, and
        // writes at most `frame_size` (mono) samples into `pcm`, which has
        // room for exactly that many.
        let decoded = unsafe {
            ffi::opus_decode(
                self.state.as_ptr(),
                payload.as_ptr(),
                len,
                self.pcm.as_mut_ptr(),
                MAX_PACKET_SAMPLES as c_int,
                0,
            )
        };
        match usize::try_from(decoded) {
            Ok(samples) => {
                out.extend_from_slice(&self.pcm[..samples.min(MAX_PACKET_SAMPLES)]);
                Ok(())
            }
            Err(_) => Err(DecodeError::Corrupt {
                codec: "opus",
                reason: error_text(decoded),
            }),
        }
    }
}

impl Drop for OpusDecoder {
    fn drop(&mut self) {
        // SAFETY: `state` came from opus_decoder_create, is owned by this
        // value only, and Drop runs once, so it is freed exactly once and
        // never used afterwards.
        unsafe { ffi::opus_decoder_destroy(self.state.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The opus payload every packet of `invite-opus-bye.pcap` carries: TOC
    /// 0xfc (config 31, CELT fullband 20 ms, stereo, one frame), then 79
    /// bytes of the capture harness's filler.
    fn capture_payload() -> Vec<u8> {
        let mut payload = vec![0xfc, 0xff, 0xfe];
        payload.resize(80, 0xa5);
        payload
    }

    #[test]
    fn decoder_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<OpusDecoder>();
    }

    #[test]
    fn a_20_ms_packet_is_960_samples() {
        let mut dec = OpusDecoder::new().unwrap();
        let mut out = vec![7];
        dec.decode(&capture_payload(), &mut out).unwrap();
        assert_eq!(out.len(), 1 + 960);
        assert_eq!(out[0], 7, "appends, never overwrites");
    }

    #[test]
    fn empty_payload_appends_nothing() {
        let mut dec = OpusDecoder::new().unwrap();
        let mut out = Vec::new();
        dec.decode(&[], &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn corrupt_payloads_are_errors() {
        let mut dec = OpusDecoder::new().unwrap();
        let mut out = Vec::new();
        // Code 3 (a frame count follows) with no count byte.
        // Code 3 asking for 63 frames of 20 ms: 1.26 s, over the 120 ms limit.
        // Code 1 (two frames of equal size) with an odd number of bytes left.
        for payload in [&[0x03][..], &[0x03, 0x3f, 0, 0], &[0x01, 0, 0, 0]] {
            let err = dec.decode(payload, &mut out).unwrap_err();
            assert_eq!(
                err,
                DecodeError::Corrupt {
                    codec: "opus",
                    reason: "invalid packet"
                },
                "{payload:?}"
            );
        }
        assert!(out.is_empty());
        // The decoder still works afterwards.
        dec.decode(&capture_payload(), &mut out).unwrap();
        assert_eq!(out.len(), 960);
    }

    #[test]
    fn many_decoders_create_and_drop() {
        for _ in 0..100 {
            let mut dec = OpusDecoder::new().unwrap();
            let mut out = Vec::new();
            dec.decode(&capture_payload(), &mut out).unwrap();
        }
    }

    #[test]
    fn decoder_moves_across_threads() {
        let mut dec = OpusDecoder::new().unwrap();
        let mut out = Vec::new();
        dec.decode(&capture_payload(), &mut out).unwrap();
        let handle = std::thread::spawn(move || {
            let mut out = Vec::new();
            dec.decode(&capture_payload(), &mut out).unwrap();
            out.len()
        });
        assert_eq!(handle.join().unwrap(), 960);
    }
}
