//! Recording files that are valid at every moment: written under a `.part` name,
//! their WAV header refreshed on every flush, renamed to the final name when the
//! call ends, and repaired at start-up if the receiver died first.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The name a file has while it is being written.
pub fn part_path(final_path: &Path) -> PathBuf {
    let mut name = final_path.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// Bytes a file buffers before they go to the kernel. Small, because every
/// active call holds three (its two directions and the stereo file) and
/// memory per call is what bounds how many calls one receiver records; 4 KiB
/// still makes a real-time call's writes a few a second per file.
const FILE_BUFFER: usize = 4096;
/// Samples hound is handed at once: its sample buffer grows to the largest
/// write and stays, so a long silence written in one go would keep tens of KiB
/// per call.
const WRITE_CHUNK: usize = 1024;

/// A 16-bit PCM WAV file being written.
pub struct WavFile {
    final_path: PathBuf,
    writer: hound::WavWriter<BufWriter<File>>,
    rate: u32,
}

impl std::fmt::Debug for WavFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavFile")
            .field("path", &self.final_path)
            .field("rate", &self.rate)
            .finish()
    }
}

impl WavFile {
    pub fn create(final_path: PathBuf, channels: u16, rate: u32) -> io::Result<Self> {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let file = File::create(part_path(&final_path))?;
        let writer = hound::WavWriter::new(BufWriter::with_capacity(FILE_BUFFER, file), spec)
            .map_err(io_error)?;
        Ok(WavFile {
            final_path,
            writer,
            rate,
        })
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    pub fn write(&mut self, samples: &[i16]) -> io::Result<()> {
        for chunk in samples.chunks(WRITE_CHUNK) {
            let mut writer = self.writer.get_i16_writer(chunk.len() as u32);
            for &sample in chunk {
                writer.write_sample(sample);
            }
            writer.flush().map_err(io_error)?;
        }
        Ok(())
    }

    /// Brings the header up to date and pushes buffered samples to the file, so a
    /// crash from here on loses nothing written so far.
    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush().map_err(io_error)
    }

    /// Completes the file and gives it its final name.
    pub fn finish(self) -> io::Result<PathBuf> {
        let result = self.writer.finalize().map_err(io_error);
        // Rename even when the last write failed: what is in the file is valid.
        std::fs::rename(part_path(&self.final_path), &self.final_path)?;
        result.map(|()| self.final_path)
    }
}

/// A file of bare payload bytes being written.
#[derive(Debug)]
pub struct RawFile {
    final_path: PathBuf,
    writer: BufWriter<File>,
}

impl RawFile {
    pub fn create(final_path: PathBuf) -> io::Result<Self> {
        let file = File::create(part_path(&final_path))?;
        Ok(RawFile {
            final_path,
            writer: BufWriter::with_capacity(FILE_BUFFER, file),
        })
    }

    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }

    pub fn finish(mut self) -> io::Result<PathBuf> {
        let result = self.writer.flush();
        std::fs::rename(part_path(&self.final_path), &self.final_path)?;
        result.map(|()| self.final_path)
    }
}

fn io_error(error: hound::Error) -> io::Error {
    match error {
        hound::Error::IoError(error) => error,
        other => io::Error::other(other),
    }
}

/// Makes a WAV file cut short by a crash valid: the RIFF and data sizes are set
/// from the bytes actually present, trimmed to whole sample frames. Returns the
/// number of audio bytes kept.
pub fn repair_wav(path: &Path) -> io::Result<u64> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let file_len = file.metadata()?.len();
    let mut header = [0u8; 12];
    file.read_exact(&mut header)?;
    if &header[0..4] != b"RIFF" || &header[8..12] != b"WAVE" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a RIFF/WAVE file",
        ));
    }
    let mut block_align = 1u64;
    let mut offset = 12u64;
    loop {
        let mut chunk = [0u8; 8];
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut chunk)?;
        let size = u64::from(u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]));
        match &chunk[0..4] {
            b"fmt " => {
                let mut fmt = [0u8; 16];
                file.read_exact(&mut fmt)?;
                block_align = u64::from(u16::from_le_bytes([fmt[12], fmt[13]])).max(1);
            }
            b"data" => {
                let data_start = offset + 8;
                let present = file_len.saturating_sub(data_start);
                let data_len = (present - present % block_align).min(u64::from(u32::MAX) - 64);
                file.set_len(data_start + data_len)?;
                file.seek(SeekFrom::Start(4))?;
                file.write_all(&((data_start + data_len - 8) as u32).to_le_bytes())?;
                file.seek(SeekFrom::Start(offset + 4))?;
                file.write_all(&(data_len as u32).to_le_bytes())?;
                file.sync_all()?;
                return Ok(data_len);
            }
            _ => {}
        }
        offset += 8 + size + size % 2;
        if offset + 8 > file_len {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "no data chunk"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wav_cut_mid_sample_is_repaired_to_whole_frames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.wav");
        let mut wav = WavFile::create(path.clone(), 2, 8000).unwrap();
        wav.write(&[1, 2, 3, 4, 5, 6]).unwrap();
        wav.flush().unwrap();
        drop(wav);
        let part = part_path(&path);
        // Simulate a crash: stale header sizes and a torn last frame.
        let mut bytes = std::fs::read(&part).unwrap();
        bytes.extend_from_slice(&[7, 0, 8, 0, 9]);
        bytes[40..44].copy_from_slice(&0u32.to_le_bytes());
        std::fs::write(&part, &bytes).unwrap();

        assert_eq!(repair_wav(&part).unwrap(), 16);
        let reader = hound::WavReader::open(&part).unwrap();
        let samples: Vec<i16> = reader.into_samples().map(Result::unwrap).collect();
        assert_eq!(samples, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn a_file_that_is_not_wav_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.wav.part");
        std::fs::write(&path, b"hello, this is not a wav file at all").unwrap();
        assert!(repair_wav(&path).is_err());
    }
}
