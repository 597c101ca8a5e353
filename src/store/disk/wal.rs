//! The write-ahead log: the store's commit point (issue 21). A group commit is one
//! *frame* appended to a preallocated segment file with one `pwrite` and one
//! `fdatasync`; the engine applies it to sled afterwards and, at a checkpoint, records
//! here that every frame up to a sequence is in sled, which lets whole segments be
//! recycled. This file knows nothing of sled: a payload is opaque bytes, and the log
//! only promises to give back, after any crash, exactly the frames that were durable —
//! every acknowledged one, in order, and nothing torn.
//!
//! Files in the log directory (all integers little-endian):
//!
//! | file | bytes | content |
//! |---|---|---|
//! | `checkpoint` | 0..8 | magic `FGWALCKP` |
//! | | 8..12 | format version (1) |
//! | | 12..16 | CRC-32 of the 40 bytes with this field zeroed |
//! | | 16..24 | checkpoint: every frame with `last` ≤ it is in the store |
//! | | 24..32 | generation floor: every generation ever used is below it |
//! | | 32..40 | salt: random, fixed when the log is created |
//! | `NNNNNNNNNNNNNNNNNNNN.log` (segment, header) | 0..8 | magic `FGWALSEG` (all zeros: a spare) |
//! | | 8..12 | format version (1) |
//! | | 12..16 | CRC-32 of salt ‖ the 32 bytes with this field zeroed |
//! | | 16..24 | generation of this use of the file |
//! | | 24..32 | zero |
//! | segment, frames from byte 32, each at an 8-byte boundary | +0..4 | magic `WALF` |
//! | | +4..8 | CRC-32 of salt ‖ the 40 header bytes with this field zeroed ‖ payload |
//! | | +8..16 | generation (the segment's) |
//! | | +16..24 | `first` sequence |
//! | | +24..32 | `last` sequence (≥ `first`) |
//! | | +32..36 | payload length |
//! | | +36..40 | zero |
//! | | +40.. | payload, then zeros to the next 8-byte boundary |
//!
//! Why each rule holds:
//! - *Segments are zero-filled and synced before use* (file, then directory), so an
//!   append's `fdatasync` writes data blocks only — no allocation, no length change, no
//!   journal commit — and the segment cannot vanish with the directory entry.
//! - *Every use of a segment gets a new generation*, strictly increasing over the
//!   log's life (the floor is in the checkpoint file, so even a recycled newest segment
//!   cannot hand its generation out twice). A recycled segment keeps its old frames;
//!   they carry an older generation, so they end the log instead of being read as new.
//! - *A frame is appended only after the previous one was `fdatasync`ed*, so at most
//!   one frame — the last — can be torn by a crash, and it was never acknowledged. The
//!   first frame that fails its checks (magic, generation, CRC, length within the
//!   segment, sequence continuing) therefore ends the segment; a valid frame of the
//!   segment's generation after that point cannot come from a crash and is damage
//!   (`LogError::Damaged`, the store refuses to open).
//! - *Sequences are contiguous*: the frames after the checkpoint, read across segments
//!   in generation order, must run from checkpoint+1 without a gap, so a lost segment
//!   or a damaged frame with acknowledged frames behind it is found, not skipped. A
//!   segment moves on to the next one only when a frame does not fit, so a segment's
//!   unused tail is normal and only the sequence decides.
//! - *The salt* is in every CRC, so a payload holding bytes that look like a frame (a
//!   client can choose its values) can never pass as one.
//! - *The checkpoint file is replaced atomically* (temporary file, `fsync`, rename,
//!   directory `fsync`) and carries a CRC: it is the old one or the new one, and a bad
//!   one is damage. It is durable before any segment it frees is recycled.
//! - *Recycling zeroes the header* (and syncs it) before the file becomes a spare, so a
//!   crash while the spare is being reused can never leave the old header in front of
//!   a half-overwritten body.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const CHECKPOINT_MAGIC: [u8; 8] = *b"FGWALCKP";
const SEGMENT_MAGIC: [u8; 8] = *b"FGWALSEG";
const FRAME_MAGIC: [u8; 4] = *b"WALF";
const VERSION: u32 = 1;
const CHECKPOINT_LEN: usize = 40;
const SEGMENT_HEADER: u64 = 32;
const FRAME_HEADER: u64 = 40;
const CHECKPOINT_FILE: &str = "checkpoint";
const CHECKPOINT_TMP: &str = "checkpoint.tmp";
/// How much of a segment is read at once when scanning past the end of the log.
const SCAN_CHUNK: u64 = 1 << 20;
/// The smallest segment: its header and one frame of up to 56 payload bytes.
const MIN_SEGMENT: u64 = 128;

/// How the log lays out its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// Size of a segment file (rounded up to a multiple of 8, at least 128). A frame
    /// that does not fit in an empty segment gets a segment of its own size.
    pub segment_bytes: u64,
    /// Recycled segments kept as spares (the rest are deleted): enough to cover the
    /// segments written between two checkpoints means no allocation in steady state.
    pub max_spares: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: 16 << 20,
            max_spares: 4,
        }
    }
}

impl LogOptions {
    fn segment_bytes(&self) -> u64 {
        align8(self.segment_bytes.max(MIN_SEGMENT))
    }
}

/// One group commit: the payload covering log sequences `first..=last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub first: u64,
    pub last: u64,
    pub payload: Vec<u8>,
}

/// What `Log::open` found: the log ready for appends, its checkpoint, and every frame
/// after the checkpoint in order.
#[derive(Debug)]
pub struct Recovered {
    pub log: Log,
    pub checkpoint: u64,
    pub frames: Vec<Frame>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("write-ahead log: {during}: {source}")]
    Io {
        during: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("write-ahead log damaged: {0}")]
    Damaged(String),
}

fn io_err(during: &'static str) -> impl FnOnce(io::Error) -> LogError {
    move |source| LogError::Io { during, source }
}

/// A spare segment to be made off the append path: `Log::spare_wanted` reserves it,
/// `make_spare` fills it (any thread, no lock on the log), `Log::add_spare` hands it
/// over (or `Log::spare_abandoned` when making it failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpareJob {
    pub path: PathBuf,
    pub bytes: u64,
}

/// One segment file, open for reading and writing.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    file: File,
    size: u64,
    generation: u64,
    /// The last sequence of its frames (None: no frame yet).
    last: Option<u64>,
}

/// The write-ahead log of one store.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    options: LogOptions,
    salt: u64,
    checkpoint: u64,
    next_generation: u64,
    next_id: u64,
    /// The segment appends go to, and where its next frame starts.
    active: Option<Segment>,
    active_end: u64,
    /// Earlier segments still holding frames after the checkpoint, oldest first.
    sealed: VecDeque<Segment>,
    spares: Vec<Segment>,
    spare_job_out: bool,
    last: u64,
    /// (last sequence, frame bytes) of every frame after the checkpoint.
    pending: VecDeque<(u64, u64)>,
    pending_bytes: u64,
    /// Set by the first failed append or checkpoint; every later one fails with it.
    broken: Option<(io::ErrorKind, String)>,
    scratch: Vec<u8>,
}

fn align8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

fn frame_len(payload: u64) -> u64 {
    align8(FRAME_HEADER + payload)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn segment_name(id: u64) -> String {
    format!("{id:020}.log")
}

fn segment_id(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn invalid_input(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

// ---- encoding ----

fn checkpoint_bytes(seq: u64, floor: u64, salt: u64) -> [u8; CHECKPOINT_LEN] {
    let mut b = [0u8; CHECKPOINT_LEN];
    b[0..8].copy_from_slice(&CHECKPOINT_MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    b[24..32].copy_from_slice(&floor.to_le_bytes());
    b[32..40].copy_from_slice(&salt.to_le_bytes());
    let crc = crc32fast::hash(&b);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b
}

/// (checkpoint, generation floor, salt) when the bytes are a valid checkpoint.
fn parse_checkpoint(b: &[u8]) -> Option<(u64, u64, u64)> {
    if b.len() != CHECKPOINT_LEN || b[0..8] != CHECKPOINT_MAGIC || u32_at(b, 8) != VERSION {
        return None;
    }
    let mut copy = [0u8; CHECKPOINT_LEN];
    copy.copy_from_slice(b);
    copy[12..16].fill(0);
    (crc32fast::hash(&copy) == u32_at(b, 12)).then(|| (u64_at(b, 16), u64_at(b, 24), u64_at(b, 32)))
}

fn push_segment_header(out: &mut Vec<u8>, generation: u64, salt: u64) {
    let start = out.len();
    out.extend_from_slice(&SEGMENT_MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    let mut h = crc32fast::Hasher::new();
    h.update(&salt.to_le_bytes());
    h.update(&out[start..]);
    let crc = h.finalize();
    out[start + 12..start + 16].copy_from_slice(&crc.to_le_bytes());
}

/// The generation in a valid segment header.
fn parse_segment_header(b: &[u8], salt: u64) -> Option<u64> {
    if b.len() != SEGMENT_HEADER as usize
        || b[0..8] != SEGMENT_MAGIC
        || u32_at(b, 8) != VERSION
        || u64_at(b, 24) != 0
    {
        return None;
    }
    let mut copy = [0u8; SEGMENT_HEADER as usize];
    copy.copy_from_slice(b);
    copy[12..16].fill(0);
    let mut h = crc32fast::Hasher::new();
    h.update(&salt.to_le_bytes());
    h.update(&copy);
    (h.finalize() == u32_at(b, 12)).then(|| u64_at(b, 16))
}

fn push_frame(
    out: &mut Vec<u8>,
    salt: u64,
    generation: u64,
    first: u64,
    last: u64,
    payload: &[u8],
) {
    let start = out.len();
    out.extend_from_slice(&FRAME_MAGIC);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&last.to_le_bytes());
    // The caller has checked that the length fits in u32.
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let mut h = crc32fast::Hasher::new();
    h.update(&salt.to_le_bytes());
    h.update(&out[start..]);
    h.update(payload);
    let crc = h.finalize();
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    let padded = start + frame_len(payload.len() as u64) as usize;
    out.resize(padded, 0);
}

/// A frame read and checked in a segment.
#[derive(Debug, Clone, Copy)]
struct FrameHead {
    first: u64,
    last: u64,
    generation: u64,
    len: u64,
}

/// Reads the frame at `off` into `payload`; None when it fails any check. With
/// `generation` None any generation is accepted (to look into a headerless segment).
fn read_frame(
    file: &File,
    size: u64,
    off: u64,
    salt: u64,
    generation: Option<u64>,
    payload: &mut Vec<u8>,
) -> io::Result<Option<FrameHead>> {
    if !matches!(off.checked_add(FRAME_HEADER), Some(end) if end <= size) {
        return Ok(None);
    }
    let mut head = [0u8; FRAME_HEADER as usize];
    file.read_exact_at(&mut head, off)?;
    let frame_generation = u64_at(&head, 8);
    let (first, last) = (u64_at(&head, 16), u64_at(&head, 24));
    let length = u64::from(u32_at(&head, 32));
    if head[0..4] != FRAME_MAGIC
        || u32_at(&head, 36) != 0
        || generation.is_some_and(|g| g != frame_generation)
        || first > last
        || frame_len(length) > size - off
    {
        return Ok(None);
    }
    // Bounded by the segment's size, checked just above.
    payload.resize(length as usize, 0);
    file.read_exact_at(payload, off + FRAME_HEADER)?;
    let stored = u32_at(&head, 4);
    head[4..8].fill(0);
    let mut h = crc32fast::Hasher::new();
    h.update(&salt.to_le_bytes());
    h.update(&head);
    h.update(payload);
    if h.finalize() != stored {
        return Ok(None);
    }
    Ok(Some(FrameHead {
        first,
        last,
        generation: frame_generation,
        len: frame_len(length),
    }))
}

/// The offset of a valid frame of `generation` after `from` in the segment, if any:
/// past the end of the log there must be none.
fn scan_for_frame(
    file: &File,
    size: u64,
    from: u64,
    salt: u64,
    generation: u64,
    payload: &mut Vec<u8>,
) -> io::Result<Option<u64>> {
    let want = generation.to_le_bytes();
    let mut chunk = Vec::new();
    let mut base = align8(from);
    while base.saturating_add(FRAME_HEADER) <= size {
        // Overlap by one header so a header across the chunk boundary is seen whole.
        let end = (base + SCAN_CHUNK + FRAME_HEADER).min(size);
        chunk.resize((end - base) as usize, 0);
        file.read_exact_at(&mut chunk, base)?;
        let mut i = 0usize;
        while (i as u64) < SCAN_CHUNK && i + FRAME_HEADER as usize <= chunk.len() {
            if chunk[i..i + 4] == FRAME_MAGIC && chunk[i + 8..i + 16] == want {
                let off = base + i as u64;
                if read_frame(file, size, off, salt, Some(generation), payload)?.is_some() {
                    return Ok(Some(off));
                }
            }
            i += 8;
        }
        base += SCAN_CHUNK;
    }
    Ok(None)
}

/// Writes the checkpoint file atomically: temporary file, fsync, rename, fsync dir.
fn write_checkpoint(dir: &Path, seq: u64, floor: u64, salt: u64) -> io::Result<()> {
    let tmp = dir.join(CHECKPOINT_TMP);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    f.write_all(&checkpoint_bytes(seq, floor, salt))?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(CHECKPOINT_FILE))?;
    sync_dir(dir)
}

/// Makes a spare segment: a zero-filled file of `job.bytes`, synced, under its final
/// name, with the directory synced. Runs on any thread; leaves nothing behind on error.
pub fn make_spare(job: &SpareJob) -> io::Result<()> {
    let mut tmp = job.path.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let made = fill_zeros(&tmp, job.bytes).and_then(|()| fs::rename(&tmp, &job.path));
    if let Err(e) = made {
        // Best effort: the error that matters is the one returned.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    match job.path.parent() {
        Some(dir) => sync_dir(dir),
        None => sync_dir(Path::new(".")),
    }
}

fn fill_zeros(path: &Path, bytes: u64) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    let zeros = vec![0u8; (bytes.min(1 << 20)) as usize];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

impl Log {
    /// Opens the log in `dir` (creates it, empty, checkpoint 0, when missing). Returns
    /// the checkpoint (every frame with last <= checkpoint is in the store durably) and
    /// every frame after it, in order.
    // Long because the log is assembled field by field from what the recovery found.
    pub fn open(dir: &Path, options: LogOptions) -> Result<Recovered, LogError> {
        fs::create_dir_all(dir).map_err(io_err("creating the log directory"))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent).map_err(io_err("syncing the log directory's parent"))?;
        }
        let ids = list_segments(dir)?;
        let (checkpoint, floor, salt) = read_checkpoint(dir, &ids)?;
        let (mut live, headerless) = load_segments(dir, &ids, salt)?;
        let next_generation = live.last().map_or(floor, |s| floor.max(s.generation + 1));
        let mut payload = Vec::new();
        let Walk {
            frames,
            pending,
            pending_bytes,
            last_seen,
            active,
        } = walk(&mut live, salt, checkpoint, &mut payload)?;
        let last = last_seen.unwrap_or(checkpoint);
        if last < checkpoint {
            return Err(LogError::Damaged(format!(
                "{}: the log ends at sequence {last}, before its checkpoint {checkpoint}: segments are missing",
                dir.display()
            )));
        }
        check_headerless(&headerless, salt, checkpoint, &mut payload)?;

        // Build the log: the active segment, the sealed ones still needed, the rest spare.
        let mut log = Log {
            dir: dir.to_path_buf(),
            options,
            salt,
            checkpoint,
            next_generation,
            next_id: ids.last().map_or(1, |id| id + 1),
            active: None,
            active_end: 0,
            sealed: VecDeque::new(),
            spares: Vec::new(),
            spare_job_out: false,
            last,
            pending,
            pending_bytes,
            broken: None,
            scratch: Vec::new(),
        };
        let mut recycle = Vec::new();
        for (index, segment) in live.into_iter().enumerate() {
            match active {
                Some((a, end)) if a == index => {
                    log.active = Some(segment);
                    log.active_end = end;
                }
                _ if segment.last.is_some_and(|l| l > checkpoint) => log.sealed.push_back(segment),
                _ => recycle.push(segment),
            }
        }
        if !recycle.is_empty() && floor < next_generation {
            // The recycled headers may hold the newest generation: keep it used.
            write_checkpoint(dir, checkpoint, next_generation, salt)
                .map_err(io_err("writing the checkpoint"))?;
        }
        let mut removed = false;
        for segment in recycle {
            removed |= log
                .recycle(segment)
                .map_err(io_err("recycling a segment"))?;
        }
        for segment in headerless {
            removed |= log
                .keep_or_remove(segment)
                .map_err(io_err("removing a segment"))?;
        }
        if removed {
            sync_dir(dir).map_err(io_err("syncing the log directory"))?;
        }
        Ok(Recovered {
            log,
            checkpoint,
            frames,
        })
    }

    /// Appends one frame covering sequences first..=last (first == previous last + 1,
    /// else an error): one pwrite of the frame (plus a segment header when it starts a
    /// segment), then one fdatasync. Returns only when durable. After any error the log
    /// is broken: every later append fails (sticky) — the caller fails the store.
    pub fn append(&mut self, first: u64, last: u64, payload: &[u8]) -> io::Result<()> {
        self.check_usable()?;
        let result = self.append_inner(first, last, payload);
        self.note(&result);
        result
    }

    fn append_inner(&mut self, first: u64, last: u64, payload: &[u8]) -> io::Result<()> {
        if first != self.last + 1 || last < first {
            return Err(invalid_input(format!(
                "log append of sequences {first}..={last} after {}",
                self.last
            )));
        }
        let length = u32::try_from(payload.len())
            .map_err(|_| invalid_input(format!("log frame of {} bytes", payload.len())))?;
        let len = frame_len(u64::from(length));
        let fits = self.active.as_ref().is_some_and(|a| {
            self.active_end
                .checked_add(len)
                .is_some_and(|end| end <= a.size)
        });
        let mut buffer = std::mem::take(&mut self.scratch);
        buffer.clear();
        let result = if fits {
            let (generation, off) = match &self.active {
                Some(a) => (a.generation, self.active_end),
                None => return Err(io::Error::other("no active segment")),
            };
            push_frame(&mut buffer, self.salt, generation, first, last, payload);
            let written = match &self.active {
                Some(a) => a
                    .file
                    .write_all_at(&buffer, off)
                    .and_then(|()| a.file.sync_data()),
                None => Err(io::Error::other("no active segment")),
            };
            written.map(|()| {
                self.active_end += len;
                if let Some(a) = &mut self.active {
                    a.last = Some(last);
                }
            })
        } else {
            self.start_segment(&mut buffer, first, last, payload, len)
        };
        self.scratch = buffer;
        result?;
        self.last = last;
        self.pending.push_back((last, len));
        self.pending_bytes += len;
        Ok(())
    }

    /// Writes the frame as the first of a spare segment, which becomes the active one.
    fn start_segment(
        &mut self,
        buffer: &mut Vec<u8>,
        first: u64,
        last: u64,
        payload: &[u8],
        len: u64,
    ) -> io::Result<()> {
        let need = SEGMENT_HEADER + len;
        let mut segment = match self.spares.iter().position(|s| s.size >= need) {
            Some(i) => self.spares.swap_remove(i),
            None => {
                // No spare ready (or none large enough): make one here, on the append path.
                let job = SpareJob {
                    path: self.dir.join(segment_name(self.next_id)),
                    bytes: self.options.segment_bytes().max(align8(need)),
                };
                self.next_id += 1;
                make_spare(&job)?;
                Segment {
                    file: open_rw(&job.path)?,
                    path: job.path,
                    size: job.bytes,
                    generation: 0,
                    last: None,
                }
            }
        };
        // Used up even if the write fails: never hand a generation out twice.
        let generation = self.next_generation;
        self.next_generation += 1;
        push_segment_header(buffer, generation, self.salt);
        push_frame(buffer, self.salt, generation, first, last, payload);
        segment.file.write_all_at(buffer, 0)?;
        segment.file.sync_data()?;
        segment.generation = generation;
        segment.last = Some(last);
        if let Some(previous) = self.active.replace(segment) {
            self.sealed.push_back(previous);
        }
        self.active_end = need;
        Ok(())
    }

    /// Records durably that every frame with last <= seq is in the store (seq is always
    /// some frame's last, or the checkpoint already held), then recycles every segment
    /// whose frames all lie at or below it. After an error the log is broken.
    pub fn checkpoint(&mut self, seq: u64) -> io::Result<()> {
        self.check_usable()?;
        let result = self.checkpoint_inner(seq);
        self.note(&result);
        result
    }

    fn checkpoint_inner(&mut self, seq: u64) -> io::Result<()> {
        if seq == self.checkpoint {
            return Ok(());
        }
        if seq < self.checkpoint || !self.pending.iter().any(|(l, _)| *l == seq) {
            return Err(invalid_input(format!(
                "log checkpoint at {seq}: not the last sequence of a frame after the checkpoint {}",
                self.checkpoint
            )));
        }
        write_checkpoint(&self.dir, seq, self.next_generation, self.salt)?;
        self.checkpoint = seq;
        while let Some((last, len)) = self.pending.front().copied() {
            if last > seq {
                break;
            }
            self.pending.pop_front();
            self.pending_bytes -= len;
        }
        let mut removed = false;
        while self
            .sealed
            .front()
            .is_some_and(|s| s.last.map_or(true, |l| l <= seq))
        {
            if let Some(segment) = self.sealed.pop_front() {
                removed |= self.recycle(segment)?;
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Zeroes a segment's header (synced) and keeps it as a spare, or deletes it when
    /// enough spares are kept or its size is not the standard one. True when deleted.
    fn recycle(&mut self, segment: Segment) -> io::Result<bool> {
        segment
            .file
            .write_all_at(&[0u8; SEGMENT_HEADER as usize], 0)?;
        segment.file.sync_data()?;
        self.keep_or_remove(segment)
    }

    fn keep_or_remove(&mut self, mut segment: Segment) -> io::Result<bool> {
        if segment.size == self.options.segment_bytes()
            && self.spares.len() < self.options.max_spares
        {
            segment.generation = 0;
            segment.last = None;
            self.spares.push(segment);
            Ok(false)
        } else {
            fs::remove_file(&segment.path)?;
            Ok(true)
        }
    }

    /// Bytes of frames appended after the checkpoint (headers and padding included).
    #[cfg(test)]
    pub fn bytes_since_checkpoint(&self) -> u64 {
        self.pending_bytes
    }

    /// The last sequence appended or recovered (the checkpoint when there is none).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The checkpoint held now.
    #[cfg(test)]
    pub fn checkpoint_seq(&self) -> u64 {
        self.checkpoint
    }

    /// A spare segment to make off the append path, when none is ready and none is
    /// being made; the caller runs `make_spare(&job)` without holding the log, then
    /// `add_spare` (or `spare_abandoned` when it failed).
    pub fn spare_wanted(&mut self) -> Option<SpareJob> {
        if self.broken.is_some() || self.spare_job_out || !self.spares.is_empty() {
            return None;
        }
        self.spare_job_out = true;
        let job = SpareJob {
            path: self.dir.join(segment_name(self.next_id)),
            bytes: self.options.segment_bytes(),
        };
        self.next_id += 1;
        Some(job)
    }

    /// Takes over a spare made by `make_spare`.
    pub fn add_spare(&mut self, job: SpareJob) -> io::Result<()> {
        self.spare_job_out = false;
        let file = open_rw(&job.path)?;
        self.spares.push(Segment {
            path: job.path,
            file,
            size: job.bytes,
            generation: 0,
            last: None,
        });
        Ok(())
    }

    /// Forgets a spare job whose `make_spare` failed (a later append makes its own).
    pub fn spare_abandoned(&mut self, _job: SpareJob) {
        self.spare_job_out = false;
    }

    /// The error that broke the log, if one did.
    pub fn broken(&self) -> Option<io::Error> {
        self.broken.as_ref().map(|(kind, message)| {
            io::Error::new(*kind, format!("write-ahead log broken earlier: {message}"))
        })
    }

    fn check_usable(&self) -> io::Result<()> {
        match self.broken() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn note(&mut self, result: &io::Result<()>) {
        if let Err(e) = result {
            self.broken = Some((e.kind(), e.to_string()));
        }
    }
}

/// The segment files in `dir` by number, oldest first; temporary files a crash left
/// (a checkpoint or spare being made) are removed: they were never used.
fn list_segments(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("listing the log directory"))? {
        let entry = entry.map_err(io_err("listing the log directory"))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = segment_id(name) {
            ids.push(id);
        } else if name == CHECKPOINT_TMP || (name.ends_with(".log.tmp")) {
            // A checkpoint or spare that was being made at a crash: never used.
            fs::remove_file(entry.path()).map_err(io_err("removing a leftover temporary file"))?;
        }
    }
    ids.sort_unstable();
    ids.sort_unstable();
    Ok(ids)
}

/// The checkpoint, the generation floor and the salt from the checkpoint file; a new
/// log (no segment) gets one. Segments without it are damage.
fn read_checkpoint(dir: &Path, ids: &[u64]) -> Result<(u64, u64, u64), LogError> {
    let checkpoint_path = dir.join(CHECKPOINT_FILE);
    match fs::read(&checkpoint_path) {
        Ok(bytes) => parse_checkpoint(&bytes).ok_or_else(|| {
            LogError::Damaged(format!(
                "{} is not a valid checkpoint",
                checkpoint_path.display()
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(id) = ids.first() {
                return Err(LogError::Damaged(format!(
                    "{} has segments ({}) but no checkpoint file",
                    dir.display(),
                    segment_name(*id)
                )));
            }
            let salt = rand::random::<u64>();
            write_checkpoint(dir, 0, 1, salt).map_err(io_err("creating the checkpoint"))?;
            Ok((0, 1, salt))
        }
        Err(e) => Err(io_err("reading the checkpoint")(e)),
    }
}

/// The segments of `ids`: those with a valid header (live), in generation order, and
/// those without (spares, or headers zeroed for reuse). Two live segments of one
/// generation are damage.
fn load_segments(
    dir: &Path,
    ids: &[u64],
    salt: u64,
) -> Result<(Vec<Segment>, Vec<Segment>), LogError> {
    // Sort the files into live segments (valid header) and spares.
    let mut live = Vec::new();
    let mut headerless = Vec::new();
    for id in ids {
        let path = dir.join(segment_name(*id));
        let file = open_rw(&path).map_err(io_err("opening a segment"))?;
        let size = file
            .metadata()
            .map_err(io_err("reading a segment's size"))?
            .len();
        let mut head = [0u8; SEGMENT_HEADER as usize];
        let generation = if size >= SEGMENT_HEADER {
            file.read_exact_at(&mut head, 0)
                .map_err(io_err("reading a segment header"))?;
            parse_segment_header(&head, salt)
        } else {
            None
        };
        let segment = Segment {
            path,
            file,
            size,
            generation: generation.unwrap_or(0),
            last: None,
        };
        match generation {
            Some(_) => live.push(segment),
            None => headerless.push(segment),
        }
    }
    live.sort_by_key(|s| s.generation);
    for pair in live.windows(2) {
        if pair[0].generation == pair[1].generation {
            return Err(LogError::Damaged(format!(
                "{} and {} have the same generation {}",
                pair[0].path.display(),
                pair[1].path.display(),
                pair[0].generation
            )));
        }
    }
    Ok((live, headerless))
}

/// What the walk over the live segments found.
struct Walk {
    frames: Vec<Frame>,
    pending: VecDeque<(u64, u64)>,
    pending_bytes: u64,
    last_seen: Option<u64>,
    /// The segment appends continue in, and the offset they continue at.
    active: Option<(usize, u64)>,
}

/// Reads the frames of `live` in generation order: the frames after the checkpoint,
/// contiguous; the first frame that fails its checks ends a segment, and a valid frame
/// after that end is damage.
// Long because each check names the damage it finds where it finds it.
fn walk(
    live: &mut [Segment],
    salt: u64,
    checkpoint: u64,
    payload: &mut Vec<u8>,
) -> Result<Walk, LogError> {
    let mut frames = Vec::new();
    let mut pending = VecDeque::new();
    let mut pending_bytes = 0;
    let mut expected = checkpoint + 1;
    let mut last_seen: Option<u64> = None;
    let mut active: Option<(usize, u64)> = None;
    for (index, segment) in live.iter_mut().enumerate() {
        let mut off = SEGMENT_HEADER;
        let mut segment_last: Option<u64> = None;
        while let Some(head) = read_frame(
            &segment.file,
            segment.size,
            off,
            salt,
            Some(segment.generation),
            payload,
        )
        .map_err(io_err("reading a frame"))?
        {
            let at = || format!("{} at offset {off}", segment.path.display());
            if segment_last.is_some_and(|l| head.first != l + 1) {
                return Err(LogError::Damaged(format!(
                    "{}: frame {}..={} does not follow {} in the same segment",
                    at(),
                    head.first,
                    head.last,
                    segment_last.unwrap_or_default()
                )));
            }
            if head.last > checkpoint {
                if head.first != expected {
                    return Err(LogError::Damaged(format!(
                            "{}: frame {}..={} where sequence {expected} was due (checkpoint {checkpoint}): frames are missing",
                            at(),
                            head.first,
                            head.last
                        )));
                }
                expected = head.last + 1;
                frames.push(Frame {
                    first: head.first,
                    last: head.last,
                    payload: std::mem::take(payload),
                });
                pending.push_back((head.last, head.len));
                pending_bytes += head.len;
            } else if expected > checkpoint + 1 {
                return Err(LogError::Damaged(format!(
                    "{}: frame {}..={} after frames up to {}",
                    at(),
                    head.first,
                    head.last,
                    expected - 1
                )));
            }
            segment_last = Some(head.last);
            last_seen = Some(head.last);
            off += head.len;
        }
        if let Some(found) = scan_for_frame(
            &segment.file,
            segment.size,
            off + 8,
            salt,
            segment.generation,
            payload,
        )
        .map_err(io_err("scanning a segment's tail"))?
        {
            return Err(LogError::Damaged(format!(
                    "{} at offset {found}: a valid frame after the segment's frames ended at offset {off}",
                    segment.path.display()
                )));
        }
        segment.last = segment_last;
        if segment_last.is_some() {
            active = Some((index, off));
        }
    }
    Ok(Walk {
        frames,
        pending,
        pending_bytes,
        last_seen,
        active,
    })
}

/// A segment whose header is damaged but that holds a frame after the checkpoint is
/// damage (a spare's zeroed header is not: its frames are all below it).
fn check_headerless(
    headerless: &[Segment],
    salt: u64,
    checkpoint: u64,
    payload: &mut Vec<u8>,
) -> Result<(), LogError> {
    for segment in headerless {
        if let Some(head) = read_frame(
            &segment.file,
            segment.size,
            SEGMENT_HEADER,
            salt,
            None,
            payload,
        )
        .map_err(io_err("reading a frame"))?
        {
            if head.last > checkpoint {
                return Err(LogError::Damaged(format!(
                        "{}: the segment header is damaged but it holds frame {}..={} (generation {}) after the checkpoint {checkpoint}",
                        segment.path.display(),
                        head.first,
                        head.last,
                        head.generation
                    )));
            }
        }
    }

    Ok(())
}

#[cfg(test)]
mod tests;
