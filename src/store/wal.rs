//! Stand-in for the write-ahead log file (replaced by the segmented log): one file of
//! frames, each `magic, first, last, len, crc` then the payload, and a checkpoint file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: u32 = 0x4647_5741;

pub struct LogOptions {
    pub segment_bytes: u64,
}

pub struct Frame {
    pub first: u64,
    pub last: u64,
    pub payload: Vec<u8>,
}

pub struct Recovered {
    pub log: Log,
    pub checkpoint: u64,
    pub frames: Vec<Frame>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{during}: {source}")]
    Io {
        during: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Damaged(String),
}

pub struct Log {
    file: File,
    dir: PathBuf,
    end: u64,
    last: u64,
    checkpoint: u64,
    since: u64,
    broken: bool,
}

fn io(during: &'static str) -> impl Fn(std::io::Error) -> LogError {
    move |source| LogError::Io { during, source }
}

impl Log {
    pub fn open(dir: &Path, _options: LogOptions) -> Result<Recovered, LogError> {
        std::fs::create_dir_all(dir).map_err(io("creating the log directory"))?;
        let checkpoint = match std::fs::read(dir.join("checkpoint")) {
            Ok(b) if b.len() == 8 => u64::from_be_bytes(b.try_into().unwrap_or([0; 8])),
            _ => 0,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("log"))
            .map_err(io("opening the log"))?;
        let mut all = Vec::new();
        file.read_to_end(&mut all).map_err(io("reading the log"))?;
        let mut at = 0usize;
        let mut frames = Vec::new();
        let mut last = checkpoint;
        while at + 28 <= all.len() {
            let h = &all[at..at + 28];
            let magic = u32::from_be_bytes(h[0..4].try_into().unwrap_or_default());
            let first = u64::from_be_bytes(h[4..12].try_into().unwrap_or_default());
            let l = u64::from_be_bytes(h[12..20].try_into().unwrap_or_default());
            let len = u32::from_be_bytes(h[20..24].try_into().unwrap_or_default()) as usize;
            let crc = u32::from_be_bytes(h[24..28].try_into().unwrap_or_default());
            if magic != MAGIC || at + 28 + len > all.len() {
                break;
            }
            let payload = &all[at + 28..at + 28 + len];
            if crc32fast::hash(payload) != crc {
                break;
            }
            if l > checkpoint {
                frames.push(Frame {
                    first,
                    last: l,
                    payload: payload.to_vec(),
                });
            }
            last = last.max(l);
            at += 28 + len;
        }
        file.seek(SeekFrom::Start(at as u64))
            .map_err(io("seeking the log"))?;
        Ok(Recovered {
            log: Log {
                file,
                dir: dir.to_path_buf(),
                end: at as u64,
                last,
                checkpoint,
                since: 0,
                broken: false,
            },
            checkpoint,
            frames,
        })
    }

    pub fn append(&mut self, first: u64, last: u64, payload: &[u8]) -> std::io::Result<()> {
        if self.broken {
            return Err(std::io::Error::other("the log is broken"));
        }
        let mut buf = Vec::with_capacity(28 + payload.len());
        buf.extend_from_slice(&MAGIC.to_be_bytes());
        buf.extend_from_slice(&first.to_be_bytes());
        buf.extend_from_slice(&last.to_be_bytes());
        buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        buf.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
        buf.extend_from_slice(payload);
        let r = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if r.is_err() {
            self.broken = true;
        }
        r?;
        self.end += buf.len() as u64;
        self.since += buf.len() as u64;
        self.last = last;
        Ok(())
    }

    pub fn checkpoint(&mut self, seq: u64) -> std::io::Result<()> {
        let tmp = self.dir.join("checkpoint.tmp");
        std::fs::write(&tmp, seq.to_be_bytes())?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, self.dir.join("checkpoint"))?;
        File::open(&self.dir)?.sync_all()?;
        self.checkpoint = seq;
        self.since = 0;
        Ok(())
    }

    pub fn bytes_since_checkpoint(&self) -> u64 {
        self.since
    }

    pub fn last(&self) -> u64 {
        self.last
    }
}
