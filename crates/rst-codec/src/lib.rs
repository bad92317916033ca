//! Audio payload decoders for rst recordings, and a streaming resampler
//! ([`Resampler`]) for audio that must change rate on its way.
//!
//! Sans-IO: payload bytes in, 16-bit linear samples out. Nothing here opens a
//! socket or file or starts a thread, so the receiver decides where audio
//! comes from and where it goes.
//!
//! | codec | payload type | output rate | how |
//! |---|---|---|---|
//! | PCMU (G.711 µ-law) | 0 | 8000 | [`g711`] tables |
//! | PCMA (G.711 A-law) | 8 | 8000 | [`g711`] tables |
//! | G.722 | 9 | 16000 | [`g722`], Rust port of the public-domain spandsp decoder |
//! | G.729 / A / B | 18 | 8000 | [`g729`], bcg729 through FFI (feature `g729`) |
//! | opus | dynamic (`opus/48000/2`) | 48000, mono | [`opus`], libopus through FFI (feature `opus`) |
//! | L16 (rst protocol) | 10 | given by the caller | little-endian `i16`, passed through |
//! | anything else (G.723 = 4 included) | | | [`Codec::Raw`]: kept as bytes, not decoded |
//!
//! # Features
//!
//! * `g729` (default): G.729 decoding. Links the system library `libbcg729`
//!   (Debian/Ubuntu: `apt-get install libbcg729-dev`). Without it, payload
//!   type 18 maps to [`Codec::Raw`].
//! * `opus` (default): opus decoding. Links the system library `libopus`
//!   (Debian/Ubuntu: `apt-get install libopus-dev`). Without it, the encoding
//!   name `opus` maps to [`Codec::Raw`].
//!
//! # Example
//!
//! ```
//! use rst_codec::{Codec, Decoder};
//!
//! let mut decoder = Decoder::new(Codec::for_payload_type(0, 8000));
//! let mut samples = Vec::new();
//! decoder.decode(&[0xFF, 0x00, 0x80], &mut samples).unwrap();
//! assert_eq!(samples, [0, -32124, 32124]);
//! ```

#![warn(missing_docs)]

use std::fmt;

pub mod g711;
pub mod g722;
#[cfg(feature = "g729")]
pub mod g729;
#[cfg(feature = "opus")]
pub mod opus;
pub mod resample;

pub use g711::{alaw_to_linear, linear_to_alaw, linear_to_ulaw, ulaw_to_linear};
pub use g722::G722Decoder;
#[cfg(feature = "g729")]
pub use g729::G729Decoder;
#[cfg(feature = "opus")]
pub use opus::OpusDecoder;
pub use resample::Resampler;

/// Why a payload could not be decoded, or not completely.
///
/// Whatever part of the payload could be decoded has still been appended to
/// the output when one of these is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload length is not a whole number of the codec's units (a G.729
    /// frame, an L16 sample); the whole units were decoded, these bytes were not.
    #[error("{codec}: {bytes} trailing byte(s) do not form a whole frame or sample")]
    TrailingBytes {
        /// [`Codec::name`] of the codec.
        codec: &'static str,
        /// Number of bytes at the end of the payload that were skipped.
        bytes: usize,
    },
    /// The codec is not decoded by this build ([`Codec::Raw`], or G.729
    /// without the `g729` feature); the payload should be kept as bytes.
    #[error("{codec}: payload is not decodable by this build")]
    Unsupported {
        /// [`Codec::name`] of the codec.
        codec: &'static str,
    },
    /// The codec library could not create its decoder state (out of memory).
    #[error("{codec}: decoder could not be initialised")]
    CodecInit {
        /// [`Codec::name`] of the codec.
        codec: &'static str,
    },
    /// The codec library rejected the payload as a whole (an opus packet
    /// whose framing is invalid, say); nothing was decoded.
    #[error("{codec}: corrupt payload ({reason})")]
    Corrupt {
        /// [`Codec::name`] of the codec.
        codec: &'static str,
        /// What the library said.
        reason: &'static str,
    },
}

/// An audio payload format the receiver may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 µ-law, 8 kHz.
    Pcmu,
    /// G.711 A-law, 8 kHz.
    Pcma,
    /// G.722 at 64 kbit/s, 16 kHz audio (even though RTP's clock says 8000).
    G722,
    /// G.729, G.729A or G.729B (with SID frames), 8 kHz.
    G729,
    /// Opus (RFC 7587), decoded to mono at 48 kHz, its RTP clock.
    Opus,
    /// Signed 16-bit little-endian linear PCM at `rate` Hz (rst protocol PT 10).
    L16 {
        /// Sample rate in Hz; 0 means unknown.
        rate: u32,
    },
    /// Signed 16-bit big-endian linear PCM at `rate` Hz: RTP's L16 (RFC 3551),
    /// as a sender declares it for a dynamic payload type in RTP mode.
    L16Network {
        /// Sample rate in Hz; 0 means unknown.
        rate: u32,
    },
    /// Not decoded: G.723, unknown payload types, or G.729 or opus without
    /// their feature. The bytes should be stored as received.
    Raw,
}

impl Codec {
    /// Maps an rst/RTP payload type to a codec.
    ///
    /// 0 → PCMU, 8 → PCMA, 9 → G.722, 18 → G.729 (Raw without the `g729`
    /// feature), 10 → L16 at `l16_rate` Hz, everything else (4 = G.723
    /// included) → Raw.
    pub fn for_payload_type(pt: u8, l16_rate: u32) -> Codec {
        match pt {
            0 => Codec::Pcmu,
            8 => Codec::Pcma,
            9 => Codec::G722,
            10 => Codec::L16 { rate: l16_rate },
            #[cfg(feature = "g729")]
            18 => Codec::G729,
            _ => Codec::Raw,
        }
    }

    /// Maps an SDP/`a=rtpmap` encoding name and clock rate (what a sender declares
    /// for a dynamic payload type) to a codec, ignoring case; unknown names are Raw.
    ///
    /// `opus` is opus whatever the clock says: RFC 7587 fixes it at 48000.
    pub fn from_encoding_name(name: &str, clock_rate: u32) -> Codec {
        // Per RTP packet of a declared payload type: compared in place, no
        // uppercased copy.
        let is = |known: &str| name.eq_ignore_ascii_case(known);
        if is("PCMU") {
            Codec::Pcmu
        } else if is("PCMA") {
            Codec::Pcma
        } else if is("G722") {
            Codec::G722
        } else if cfg!(feature = "g729") && (is("G729") || is("G729A")) {
            Codec::G729
        } else if cfg!(feature = "opus") && is("OPUS") {
            Codec::Opus
        } else if is("L16") {
            Codec::L16Network { rate: clock_rate }
        } else {
            Codec::Raw
        }
    }

    /// The RTP timestamp clock of the codec: 8000 for G.722 too (RFC 3551's
    /// historical quirk), 48000 for opus (RFC 7587), the sample rate for L16;
    /// `None` for Raw.
    pub fn rtp_clock_rate(&self) -> Option<u32> {
        match *self {
            Codec::Pcmu | Codec::Pcma | Codec::G722 | Codec::G729 => Some(8000),
            Codec::Opus => Some(48000),
            Codec::L16 { rate } | Codec::L16Network { rate } => Some(rate).filter(|&r| r > 0),
            Codec::Raw => None,
        }
    }

    /// Sample rate of the decoded audio in Hz; `None` for [`Codec::Raw`] and
    /// for L16 with rate 0.
    pub fn sample_rate(&self) -> Option<u32> {
        match *self {
            Codec::Pcmu | Codec::Pcma | Codec::G729 => Some(8000),
            Codec::G722 => Some(16000),
            Codec::Opus => Some(48000),
            Codec::L16 { rate: 0 } | Codec::L16Network { rate: 0 } | Codec::Raw => None,
            Codec::L16 { rate } | Codec::L16Network { rate } => Some(rate),
        }
    }

    /// Short name: `"PCMU"`, `"PCMA"`, `"G722"`, `"G729"`, `"opus"`, `"L16"`
    /// or `"raw"` (the encoding names of RFC 3551 and RFC 7587).
    pub fn name(&self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
            Codec::G729 => "G729",
            Codec::Opus => "opus",
            Codec::L16 { .. } | Codec::L16Network { .. } => "L16",
            Codec::Raw => "raw",
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Per-codec decoder state.
#[derive(Debug)]
enum State {
    /// G.711, L16 and Raw need no state.
    Stateless,
    /// Boxed so that the stateless codecs do not carry its 300 bytes.
    G722(Box<G722Decoder>),
    /// `None` if bcg729 could not allocate its context.
    #[cfg(feature = "g729")]
    G729(Option<G729Decoder>),
    /// `None` if libopus could not allocate its state.
    #[cfg(feature = "opus")]
    Opus(Option<OpusDecoder>),
}

/// Decodes the payloads of one audio stream (one call leg, one direction).
///
/// G.722, G.729 and opus are adaptive: give each stream its own `Decoder` and
/// feed it the payloads in order. Decoding allocates nothing beyond growing
/// the output vector.
#[derive(Debug)]
pub struct Decoder {
    codec: Codec,
    state: State,
}

impl Decoder {
    /// Creates a decoder for `codec` in its initial state.
    pub fn new(codec: Codec) -> Decoder {
        let state = match codec {
            Codec::G722 => State::G722(Box::default()),
            #[cfg(feature = "g729")]
            Codec::G729 => State::G729(G729Decoder::new().ok()),
            #[cfg(feature = "opus")]
            Codec::Opus => State::Opus(OpusDecoder::new().ok()),
            _ => State::Stateless,
        };
        Decoder { codec, state }
    }

    /// The codec this decoder was created for.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Appends the samples decoded from `payload` to `out`.
    ///
    /// Returns `Err` for a payload it could not fully decode (what could be
    /// decoded is still appended): trailing bytes that do not form a whole
    /// G.729 frame or L16 sample, an opus packet libopus rejects, or a codec
    /// this build does not decode ([`Codec::Raw`]); in the last two cases
    /// nothing is appended.
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<(), DecodeError> {
        match (&mut self.state, self.codec) {
            (State::G722(dec), _) => {
                dec.decode(payload, out);
                Ok(())
            }
            #[cfg(feature = "g729")]
            (State::G729(Some(dec)), _) => dec.decode(payload, out),
            #[cfg(feature = "g729")]
            (State::G729(None), codec) => Err(DecodeError::CodecInit {
                codec: codec.name(),
            }),
            #[cfg(feature = "opus")]
            (State::Opus(Some(dec)), _) => dec.decode(payload, out),
            #[cfg(feature = "opus")]
            (State::Opus(None), codec) => Err(DecodeError::CodecInit {
                codec: codec.name(),
            }),
            (State::Stateless, Codec::Pcmu) => {
                g711::decode_ulaw(payload, out);
                Ok(())
            }
            (State::Stateless, Codec::Pcma) => {
                g711::decode_alaw(payload, out);
                Ok(())
            }
            (State::Stateless, codec @ Codec::L16 { .. }) => {
                decode_l16(payload, out, codec, i16::from_le_bytes)
            }
            (State::Stateless, codec @ Codec::L16Network { .. }) => {
                decode_l16(payload, out, codec, i16::from_be_bytes)
            }
            (State::Stateless, codec) => Err(DecodeError::Unsupported {
                codec: codec.name(),
            }),
        }
    }
}

/// The rst protocol's PT 10 carries the sender's native (little-endian)
/// samples, unlike RTP's big-endian L16: `sample` says which.
fn decode_l16(
    payload: &[u8],
    out: &mut Vec<i16>,
    codec: Codec,
    sample: fn([u8; 2]) -> i16,
) -> Result<(), DecodeError> {
    let samples = payload.chunks_exact(2);
    let rest = samples.remainder().len();
    out.extend(samples.map(|b| sample([b[0], b[1]])));
    if rest == 0 {
        Ok(())
    } else {
        Err(DecodeError::TrailingBytes {
            codec: codec.name(),
            bytes: rest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_type_mapping() {
        assert_eq!(Codec::for_payload_type(0, 8000), Codec::Pcmu);
        assert_eq!(Codec::for_payload_type(8, 8000), Codec::Pcma);
        assert_eq!(Codec::for_payload_type(9, 8000), Codec::G722);
        assert_eq!(
            Codec::for_payload_type(10, 16000),
            Codec::L16 { rate: 16000 }
        );
        assert_eq!(Codec::for_payload_type(4, 8000), Codec::Raw);
        assert_eq!(Codec::for_payload_type(3, 8000), Codec::Raw);
        assert_eq!(Codec::for_payload_type(13, 8000), Codec::Raw);
        assert_eq!(Codec::for_payload_type(96, 8000), Codec::Raw);
        assert_eq!(Codec::for_payload_type(255, 8000), Codec::Raw);
        let g729 = Codec::for_payload_type(18, 8000);
        if cfg!(feature = "g729") {
            assert_eq!(g729, Codec::G729);
        } else {
            assert_eq!(g729, Codec::Raw);
        }
    }

    #[test]
    fn names_and_rates() {
        let cases = [
            (Codec::Pcmu, "PCMU", Some(8000)),
            (Codec::Pcma, "PCMA", Some(8000)),
            (Codec::G722, "G722", Some(16000)),
            (Codec::G729, "G729", Some(8000)),
            (Codec::Opus, "opus", Some(48000)),
            (Codec::L16 { rate: 48000 }, "L16", Some(48000)),
            (Codec::L16 { rate: 0 }, "L16", None),
            (Codec::Raw, "raw", None),
        ];
        for (codec, name, rate) in cases {
            assert_eq!(codec.name(), name);
            assert_eq!(codec.to_string(), name);
            assert_eq!(codec.sample_rate(), rate);
        }
    }

    #[test]
    fn encoding_names_ignore_case() {
        let opus = if cfg!(feature = "opus") {
            Codec::Opus
        } else {
            Codec::Raw
        };
        // RFC 7587 writes `opus/48000/2`; some SDPs say `OPUS`, and the clock
        // is 48000 whatever a sender claims.
        for name in ["opus", "OPUS", "Opus"] {
            assert_eq!(Codec::from_encoding_name(name, 48000), opus, "{name}");
        }
        assert_eq!(Codec::from_encoding_name("opus", 16000), opus);
        assert_eq!(Codec::Opus.rtp_clock_rate(), Some(48000));
        assert_eq!(Codec::from_encoding_name("pcma", 8000), Codec::Pcma);
        assert_eq!(Codec::from_encoding_name("g722", 8000), Codec::G722);
        assert_eq!(
            Codec::from_encoding_name("l16", 16000),
            Codec::L16Network { rate: 16000 }
        );
        assert_eq!(
            Codec::from_encoding_name("telephone-event", 8000),
            Codec::Raw
        );
        // Opus has no static payload type: a bare 96 stays undecoded.
        assert_eq!(Codec::for_payload_type(96, 8000), Codec::Raw);
    }

    #[test]
    fn l16_is_little_endian_and_reports_odd_byte() {
        let mut dec = Decoder::new(Codec::L16 { rate: 8000 });
        let mut out = vec![7];
        dec.decode(&[0x01, 0x00, 0xFF, 0x7F, 0x00, 0x80], &mut out)
            .unwrap();
        assert_eq!(out, [7, 1, i16::MAX, i16::MIN]);
        let err = dec.decode(&[0x34, 0x12, 0x99], &mut out).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TrailingBytes {
                codec: "L16",
                bytes: 1
            }
        );
        assert_eq!(out, [7, 1, i16::MAX, i16::MIN, 0x1234]);
    }

    #[test]
    fn raw_is_not_decoded() {
        let mut dec = Decoder::new(Codec::Raw);
        let mut out = Vec::new();
        assert_eq!(
            dec.decode(&[1, 2, 3], &mut out),
            Err(DecodeError::Unsupported { codec: "raw" })
        );
        assert!(out.is_empty());
    }

    #[test]
    fn g711_through_front_door() {
        let mut out = Vec::new();
        Decoder::new(Codec::Pcmu)
            .decode(&[0xFF, 0x00], &mut out)
            .unwrap();
        Decoder::new(Codec::Pcma)
            .decode(&[0xD5, 0x55], &mut out)
            .unwrap();
        assert_eq!(out, [0, -32124, 8, -8]);
    }

    #[test]
    fn decoder_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Decoder>();
    }

    #[test]
    fn empty_payloads_are_fine() {
        for codec in [
            Codec::Pcmu,
            Codec::Pcma,
            Codec::G722,
            Codec::G729,
            Codec::Opus,
            Codec::L16 { rate: 8000 },
        ] {
            let mut out = Vec::new();
            let res = Decoder::new(codec).decode(&[], &mut out);
            if (codec == Codec::G729 && !cfg!(feature = "g729"))
                || (codec == Codec::Opus && !cfg!(feature = "opus"))
            {
                assert!(res.is_err());
            } else {
                assert_eq!(res, Ok(()), "{codec}");
            }
            assert!(out.is_empty());
        }
    }
}
