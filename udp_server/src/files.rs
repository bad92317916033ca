//! Recording files that are valid at every moment: written under a `.part` name,
//! their WAV header refreshed on every flush, renamed to the final name when the
//! call ends, and repaired at start-up if the receiver died first.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The name a file has while it is being written.
pub fn part_path(final_path: &Path) -> PathBuf {
    let mut name = final_path.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// Writes `bytes` to `path` whole or not at all: into `temporary`, then
/// renamed over `path`, so whoever watches the folder never reads half a
/// file. A write that fails (a full disk) removes what it left of
/// `temporary`: a torn temporary is nobody's file.
pub fn write_whole(path: &Path, temporary: &Path, bytes: &[u8]) -> io::Result<()> {
    let written = std::fs::write(temporary, bytes).and_then(|()| std::fs::rename(temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(temporary);
    }
    written
}

/// Bytes a WAV file buffers per channel before they go to the kernel. Small,
/// because every active call holds three files (its two directions and the
/// stereo file) and memory per call is what bounds how many calls one receiver
/// records; 2 KiB is still six 20 ms frames per write, about eight writes a
/// second per file of a real-time call. A buffer is only as large as what it
/// holds, and is freed at each flush ([`Pending`]).
const FILE_BUFFER_PER_CHANNEL: usize = 2048;
/// Bytes of the canonical PCM WAV header: RIFF, `fmt ` (16 bytes) and `data`.
const HEADER_BYTES: u64 = 44;
/// The most audio a WAV file holds: its sizes are 32-bit.
const MAX_DATA_BYTES: u64 = u32::MAX as u64 - HEADER_BYTES;
/// Samples converted to bytes at once, on the stack: as many as a stereo
/// file's buffer holds (two channels' bytes, two bytes a sample), so that a
/// write that goes past the buffer takes as few system calls as a
/// `BufWriter` would.
const SAMPLES_PER_COPY: usize = FILE_BUFFER_PER_CHANNEL;

/// A 16-bit PCM WAV file being written.
///
/// Written here rather than with hound's writer (which the tests still read
/// with): hound takes one sample per call, a tenth of the recorder's time,
/// and keeps a sample buffer as large as the largest write in every file.
/// Here samples go to the file's buffer in stack-sized runs, and the header's
/// two sizes are rewritten in place (`pwrite`) at each flush.
pub struct WavFile {
    final_path: PathBuf,
    writer: Pending,
    rate: u32,
    /// Audio bytes written so far: the data chunk's size.
    data_bytes: u64,
}

impl std::fmt::Debug for WavFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavFile")
            .field("path", &self.final_path)
            .field("rate", &self.rate)
            .field("data_bytes", &self.data_bytes)
            .finish()
    }
}

impl WavFile {
    pub fn create(final_path: PathBuf, channels: u16, rate: u32) -> io::Result<Self> {
        let mut file = File::create(part_path(&final_path))?;
        // Straight to the file: a buffer held from here to the first flush
        // would be held by every call that has not spoken yet.
        file.write_all(&header(channels, rate, 0))?;
        let capacity = FILE_BUFFER_PER_CHANNEL * usize::from(channels.max(1));
        let writer = Pending::new(file, capacity);
        Ok(WavFile {
            final_path,
            writer,
            rate,
            data_bytes: 0,
        })
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    pub fn write(&mut self, samples: &[i16]) -> io::Result<()> {
        let total = self.data_bytes + 2 * samples.len() as u64;
        if total > MAX_DATA_BYTES {
            return Err(io::Error::other("the WAV file is full (4 GiB)"));
        }
        // A write as large as the buffer (the silence before a quiet
        // direction's audio, say) goes straight to the file, all of it: its
        // tail would otherwise wait in a buffer grown to full size.
        let through = 2 * samples.len() >= self.writer.capacity;
        let mut bytes = [0u8; 2 * SAMPLES_PER_COPY];
        for run in samples.chunks(SAMPLES_PER_COPY) {
            let bytes = &mut bytes[..2 * run.len()];
            for (pair, sample) in bytes.chunks_exact_mut(2).zip(run) {
                pair.copy_from_slice(&sample.to_le_bytes());
            }
            if through {
                self.writer.write_through(bytes)?;
            } else {
                self.writer.write(bytes)?;
            }
        }
        self.data_bytes = total;
        Ok(())
    }

    /// Brings the header up to date and pushes buffered samples to the file, so a
    /// crash from here on loses nothing written so far.
    pub fn flush(&mut self) -> io::Result<()> {
        use std::os::unix::fs::FileExt as _;

        self.writer.flush()?;
        let data = self.data_bytes as u32;
        let file = self.writer.file();
        file.write_all_at(&(data + 36).to_le_bytes(), 4)?;
        file.write_all_at(&data.to_le_bytes(), 40)
    }

    /// Completes the file and gives it its final name.
    pub fn finish(mut self) -> io::Result<PathBuf> {
        let result = self.flush();
        // Rename even when the last write failed: what is in the file is valid.
        std::fs::rename(part_path(&self.final_path), &self.final_path)?;
        result.map(|()| self.final_path)
    }
}

/// The canonical 44-byte header of 16-bit PCM with `data_bytes` of audio.
fn header(channels: u16, rate: u32, data_bytes: u32) -> [u8; HEADER_BYTES as usize] {
    let block_align = channels * 2;
    let mut header = [0u8; HEADER_BYTES as usize];
    header[0..4].copy_from_slice(b"RIFF");
    header[4..8].copy_from_slice(&(data_bytes + 36).to_le_bytes());
    header[8..12].copy_from_slice(b"WAVE");
    header[12..16].copy_from_slice(b"fmt ");
    header[16..20].copy_from_slice(&16u32.to_le_bytes());
    header[20..22].copy_from_slice(&1u16.to_le_bytes()); // WAVE_FORMAT_PCM
    header[22..24].copy_from_slice(&channels.to_le_bytes());
    header[24..28].copy_from_slice(&rate.to_le_bytes());
    header[28..32].copy_from_slice(&(rate * u32::from(block_align)).to_le_bytes());
    header[32..34].copy_from_slice(&block_align.to_le_bytes());
    header[34..36].copy_from_slice(&16u16.to_le_bytes());
    header[36..40].copy_from_slice(b"data");
    header[40..44].copy_from_slice(&data_bytes.to_le_bytes());
    header
}

/// A file of bare payload bytes being written.
#[derive(Debug)]
pub struct RawFile {
    final_path: PathBuf,
    writer: Pending,
}

impl RawFile {
    pub fn create(final_path: PathBuf) -> io::Result<Self> {
        let file = File::create(part_path(&final_path))?;
        Ok(RawFile {
            final_path,
            writer: Pending::new(file, FILE_BUFFER_PER_CHANNEL),
        })
    }

    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write(bytes)
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

/// A file and the bytes written to it that have not reached the kernel yet.
///
/// Unlike a `BufWriter`, which keeps its whole capacity from the file's creation
/// to its end, the buffer grows with what is pending (up to `capacity`) and is
/// freed at each flush: a quiet call, or one between its first flush and its
/// next audio, holds no buffer at all; a real-time call fills its buffer within
/// the second, and writes in `capacity` runs as a `BufWriter` would.
#[derive(Debug)]
struct Pending {
    file: File,
    buffer: Vec<u8>,
    /// The most bytes held before they are written.
    capacity: usize,
}

impl Pending {
    fn new(file: File, capacity: usize) -> Self {
        Pending {
            file,
            buffer: Vec::new(),
            capacity,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.buffer.len() + bytes.len() > self.capacity {
            self.write_out()?;
        }
        if bytes.len() >= self.capacity {
            return self.file.write_all(bytes);
        }
        let needed = self.buffer.len() + bytes.len();
        if needed > self.buffer.capacity() {
            // Doubling as a Vec would, but never past `capacity`.
            let room = (2 * self.buffer.capacity()).clamp(needed, self.capacity);
            self.buffer.reserve_exact(room - self.buffer.len());
        }
        self.buffer.extend_from_slice(bytes);
        Ok(())
    }

    /// Writes `bytes` to the file after what is pending, holding none of them.
    fn write_through(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_out()?;
        self.file.write_all(bytes)
    }

    /// Hands what is pending to the kernel, keeping the buffer's room. After a
    /// failure, what the kernel took is gone from the buffer and the rest
    /// stays, for the last flush to try again (as a `BufWriter` does).
    fn write_out(&mut self) -> io::Result<()> {
        let mut written = 0;
        let result = loop {
            if written == self.buffer.len() {
                break Ok(());
            }
            match self.file.write(&self.buffer[written..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => break Err(error),
            }
        };
        self.buffer.drain(..written);
        result
    }

    /// Hands what is pending to the kernel and frees the buffer.
    fn flush(&mut self) -> io::Result<()> {
        self.write_out()?;
        self.buffer = Vec::new();
        Ok(())
    }

    fn file(&self) -> &File {
        &self.file
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
    fn a_whole_write_leaves_the_file_or_nothing_and_never_its_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let (path, temporary) = (dir.path().join("a.json"), dir.path().join("a.json.tmp"));
        write_whole(&path, &temporary, b"one").unwrap();
        write_whole(&path, &temporary, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!temporary.exists());
        // The rename fails (a folder is in the way), after the temporary
        // was written whole: it goes too, and the error says why.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join("inside")).unwrap();
        let error = write_whole(&blocked, &temporary, b"three").unwrap_err();
        assert!(!temporary.exists(), "{error}");
        assert!(blocked.join("inside").is_dir());
    }

    #[test]
    fn a_wav_reads_back_after_each_flush_and_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tone.wav");
        let mut wav = WavFile::create(path.clone(), 2, 16000).unwrap();
        let samples: Vec<i16> = (0..1000).map(|i| (i * 37 - 18000) as i16).collect();
        wav.write(&samples[..600]).unwrap();
        wav.flush().unwrap();
        let read = |path: &Path| {
            let reader = hound::WavReader::open(path).unwrap();
            let spec = reader.spec();
            assert_eq!(
                (spec.channels, spec.sample_rate, spec.bits_per_sample),
                (2, 16000, 16)
            );
            reader
                .into_samples()
                .map(Result::unwrap)
                .collect::<Vec<i16>>()
        };
        assert_eq!(read(&part_path(&path)), samples[..600]);
        wav.write(&samples[600..]).unwrap();
        assert_eq!(wav.finish().unwrap(), path);
        assert_eq!(read(&path), samples);
    }

    #[test]
    fn a_file_buffers_only_what_is_pending_and_frees_it_at_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pending.raw");
        let mut pending = Pending::new(File::create(&path).unwrap(), 1000);
        assert_eq!(pending.buffer.capacity(), 0, "no buffer before any write");
        pending.write(&[1; 300]).unwrap();
        assert!(pending.buffer.capacity() < 1000, "sized to what is pending");
        pending.write(&[2; 600]).unwrap();
        // Past the capacity: what was pending goes out first, in order.
        pending.write(&[3; 200]).unwrap();
        assert!(pending.buffer.capacity() <= 1000);
        // As large as the capacity: straight to the file.
        pending.write(&[4; 1000]).unwrap();
        pending.write(&[5; 10]).unwrap();
        pending.write_through(&[6; 20]).unwrap();
        assert!(pending.buffer.is_empty());
        pending.flush().unwrap();
        assert_eq!(pending.buffer.capacity(), 0, "freed at the flush");
        let expected: Vec<u8> = [(1, 300), (2, 600), (3, 200), (4, 1000), (5, 10), (6, 20)]
            .iter()
            .flat_map(|&(byte, n)| std::iter::repeat_n(byte, n))
            .collect();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    #[test]
    fn a_long_write_leaves_nothing_in_the_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silence.wav");
        let mut wav = WavFile::create(path.clone(), 2, 8000).unwrap();
        wav.write(&[7; 100]).unwrap();
        // A second of stereo silence after it: past the buffer, all written.
        wav.write(&[0; 16000]).unwrap();
        assert!(wav.writer.buffer.is_empty());
        wav.write(&[9; 100]).unwrap();
        wav.finish().unwrap();
        let samples: Vec<i16> = hound::WavReader::open(&path)
            .unwrap()
            .into_samples()
            .map(Result::unwrap)
            .collect();
        let expected: Vec<i16> = [(7, 100), (0, 16000), (9, 100)]
            .iter()
            .flat_map(|&(sample, n)| std::iter::repeat_n(sample, n))
            .collect();
        assert_eq!(samples, expected);
    }

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
