//! The recovery guard: after a crash (no seal, `seal.rs`), a copy of sled's files as
//! they were found, taken before sled's recovery may rewrite them, and put back when
//! the open then refuses the store.
//!
//! sled's recovery writes whenever it opens a store that did not stop cleanly: it
//! zeroes the log past the last valid message, zeroes torn segments, writes a new
//! snapshot and removes blob files it no longer finds referenced. After a crash that
//! is also how damage looks (a truncated log, a zeroed tail), and it is only found
//! once sled has run (the high-water marks, the fast check). Without the guard the
//! refusal said "nothing was changed" over files sled had already rewritten, and the
//! operator's copy of the damage was gone. With it, a refused store is left exactly
//! as found (contents and modification times); a store that passes keeps what sled
//! recovered, and the copy is dropped.
//!
//! The copy: every regular file at the top of the store directory (the log `db`,
//! `conf`, `snap.*`, ours) is copied (`copy_file_range`, a reflink where the file
//! system has them), and the blob files are hard-linked (sled never changes a blob,
//! only removes it). It is written to `recovery-guard.tmp`, fsynced, and renamed to
//! `recovery-guard` before sled opens, so a guard that exists is complete. A start
//! that finds one was cut off (kill -9, power cut) while sled recovered or the checks
//! ran: the files are put back from it before anything else, and the open starts over.
//! Only the process holding the store directory's lock (`Store::open`) touches it.
//! The copy costs the log's size on disk, at starts after a crash only; when it
//! cannot be made (a full disk) the start goes on without it, and says so.

use std::collections::BTreeSet;
use std::fs::{File, FileTimes};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The complete guard, in the store directory.
pub const DIR: &str = "recovery-guard";
/// Where it is written before it is complete.
const TMP: &str = "recovery-guard.tmp";
/// The modification times of the store and blob directories, in the guard.
const TIMES: &str = "dir-times";

/// A guard taken for one open: [`Guard::restore`] puts the files back, dropping it
/// (after a successful open) removes the copy.
pub struct Guard {
    store: PathBuf,
}

/// The regular files at the top of `dir` (not the guard's own directories).
fn top_files(dir: &Path) -> std::io::Result<BTreeSet<std::ffi::OsString>> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            out.insert(entry.file_name());
        }
    }
    Ok(out)
}

/// The blob files in `dir` (empty when it does not exist).
fn blob_files(dir: &Path) -> std::io::Result<BTreeSet<std::ffi::OsString>> {
    match top_files(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        other => other,
    }
}

fn modified(path: &Path) -> std::io::Result<SystemTime> {
    std::fs::metadata(path)?.modified()
}

fn set_modified(path: &Path, when: SystemTime) -> std::io::Result<()> {
    File::open(path)?.set_times(FileTimes::new().set_modified(when))
}

/// Nanoseconds since the epoch, for the times file.
fn to_nanos(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn from_nanos(n: u128) -> SystemTime {
    let secs = u64::try_from(n / 1_000_000_000).unwrap_or(u64::MAX);
    let nanos = u32::try_from(n % 1_000_000_000).unwrap_or(0);
    SystemTime::UNIX_EPOCH + std::time::Duration::new(secs, nanos)
}

impl Guard {
    /// Copies the store's files into a new guard (see the module). On error nothing
    /// of it is left.
    pub fn take(store: &Path) -> std::io::Result<Guard> {
        let tmp = store.join(TMP);
        // The directory's own time, before the guard changes it.
        let store_time = modified(store)?;
        let blobs = store.join("blobs");
        let blobs_time = modified(&blobs).ok();
        let made = (|| {
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp)?;
            }
            crate::perms::create_private_dir(&tmp)?;
            for name in top_files(store)? {
                let from = store.join(&name);
                let to = tmp.join(&name);
                std::fs::copy(&from, &to)?;
                let copy = File::options().write(true).open(&to)?;
                copy.set_times(FileTimes::new().set_modified(modified(&from)?))?;
                copy.sync_all()?;
            }
            if blobs_time.is_some() {
                let kept = tmp.join("blobs");
                crate::perms::create_private_dir(&kept)?;
                for name in blob_files(&blobs)? {
                    match std::fs::hard_link(blobs.join(&name), kept.join(&name)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                crate::store::sync_dir(&kept)?;
            }
            let times = format!(
                "store {}\nblobs {}\n",
                to_nanos(store_time),
                blobs_time.map_or_else(|| "-".to_string(), |t| to_nanos(t).to_string())
            );
            crate::perms::write_private(&tmp.join(TIMES), times.as_bytes())?;
            crate::store::sync_dir(&tmp)?;
            std::fs::rename(&tmp, store.join(DIR))?;
            crate::store::sync_dir(store)
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        Ok(Guard {
            store: store.to_path_buf(),
        })
    }

    /// The guard a cut-off open left in `store`, if there is one (an incomplete one
    /// is removed: the files were not touched yet when it was being written).
    pub fn leftover(store: &Path) -> std::io::Result<Option<Guard>> {
        let tmp = store.join(TMP);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        Ok(store.join(DIR).is_dir().then(|| Guard {
            store: store.to_path_buf(),
        }))
    }

    /// Puts every file back as the guard found it: the copies over the files, the
    /// blobs sled removed linked back, files that were not there removed, and the
    /// directories' modification times as they were. Then the guard goes.
    pub fn restore(self) -> std::io::Result<()> {
        let guard = self.store.join(DIR);
        let times = std::fs::read_to_string(guard.join(TIMES))?;
        let time_of = |what: &str| {
            times
                .lines()
                .find_map(|l| l.strip_prefix(what)?.strip_prefix(' '))
                .and_then(|n| n.parse::<u128>().ok())
                .map(from_nanos)
        };
        let kept = top_files(&guard)?;
        for name in top_files(&self.store)? {
            if !kept.contains(&name) {
                std::fs::remove_file(self.store.join(&name))?;
            }
        }
        for name in &kept {
            if name != TIMES {
                // Copied, not renamed: the guard stays complete until it is retired
                // below, so a restore cut off half-way is simply done again.
                let from = guard.join(name);
                let to = self.store.join(name);
                std::fs::copy(&from, &to)?;
                let restored = File::options().write(true).open(&to)?;
                restored.set_times(FileTimes::new().set_modified(modified(&from)?))?;
                restored.sync_all()?;
            }
        }
        let blobs = self.store.join("blobs");
        let kept_blobs_dir = guard.join("blobs");
        if kept_blobs_dir.is_dir() {
            crate::perms::create_private_dir(&blobs)?;
            let kept_blobs = blob_files(&kept_blobs_dir)?;
            for name in blob_files(&blobs)? {
                if !kept_blobs.contains(&name) {
                    std::fs::remove_file(blobs.join(&name))?;
                }
            }
            for name in &kept_blobs {
                if !blobs.join(name).exists() {
                    std::fs::hard_link(kept_blobs_dir.join(name), blobs.join(name))?;
                }
            }
            crate::store::sync_dir(&blobs)?;
        } else if blobs.exists() {
            std::fs::remove_dir_all(&blobs)?;
        }
        retire(&self.store)?;
        if let Some(t) = time_of("blobs") {
            set_modified(&blobs, t)?;
        }
        if let Some(t) = time_of("store") {
            set_modified(&self.store, t)?;
        }
        Ok(())
    }

    /// The open succeeded: the copy is no longer needed. An error here must fail the
    /// open: a complete guard left behind would be put back at the next start, over
    /// everything written meanwhile.
    pub fn discard(self) -> std::io::Result<()> {
        retire(&self.store)
    }
}

/// Takes the guard out of use — renamed to the temporary name, which a later open
/// only ever removes, durably — and then removes it. Once the rename is on disk no
/// start can put it back, whatever happens to the removal.
fn retire(store: &Path) -> std::io::Result<()> {
    let tmp = store.join(TMP);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::rename(store.join(DIR), &tmp)?;
    crate::store::sync_dir(store)?;
    std::fs::remove_dir_all(&tmp)?;
    crate::store::sync_dir(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever happens to the files after the guard is taken — rewritten, cut short,
    /// removed, added — `restore` leaves them as they were, times included.
    #[test]
    fn restore_puts_back_exactly_what_was_found() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path();
        std::fs::write(s.join("db"), vec![3u8; 50_000]).unwrap();
        std::fs::write(s.join("conf"), b"conf").unwrap();
        std::fs::create_dir(s.join("blobs")).unwrap();
        std::fs::write(s.join("blobs/7"), b"blob seven").unwrap();
        let old = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        for p in ["db", "conf", "blobs/7", "blobs", ""] {
            set_modified(&s.join(p), old).unwrap();
        }
        let picture = |s: &Path| {
            let mut out = Vec::new();
            for p in ["db", "conf", "blobs/7", "blobs", ""] {
                let m = std::fs::metadata(s.join(p)).ok();
                let bytes = if m.as_ref().is_some_and(|m| m.is_file()) {
                    std::fs::read(s.join(p)).ok()
                } else {
                    None
                };
                out.push((p, m.map(|m| m.modified().unwrap()), bytes));
            }
            out.push((
                "ls",
                None,
                Some(format!("{:?}", top_files(s).unwrap()).into_bytes()),
            ));
            out
        };
        let before = picture(s);
        let guard = Guard::take(s).unwrap();
        std::fs::write(s.join("db"), b"rewritten").unwrap();
        std::fs::write(s.join("snap.0001"), b"new snapshot").unwrap();
        std::fs::remove_file(s.join("blobs/7")).unwrap();
        std::fs::write(s.join("blobs/9"), b"new blob").unwrap();
        // A start cut off here finds the guard and puts the files back.
        drop(guard);
        let guard = Guard::leftover(s).unwrap().expect("a complete guard");
        guard.restore().unwrap();
        assert_eq!(picture(s), before);
        assert!(!s.join(DIR).exists());
        // A restore cut off after putting some files back finds the guard complete
        // and does it all again.
        let guard = Guard::take(s).unwrap();
        std::fs::write(s.join("db"), b"rewritten again").unwrap();
        std::fs::copy(s.join(DIR).join("db"), s.join("db")).unwrap();
        drop(guard);
        Guard::leftover(s)
            .unwrap()
            .expect("still complete")
            .restore()
            .unwrap();
        assert_eq!(picture(s), before);
        // A guard half removed (retired to the temporary name) is never put back.
        let guard = Guard::take(s).unwrap();
        std::fs::rename(s.join(DIR), s.join(TMP)).unwrap();
        drop(guard);
        assert!(Guard::leftover(s).unwrap().is_none());
        assert!(!s.join(TMP).exists());
        // Taken and discarded, nothing changes but the guard's coming and going.
        Guard::take(s).unwrap().discard().unwrap();
        assert!(Guard::leftover(s).unwrap().is_none());
        assert_eq!(std::fs::read(s.join("db")).unwrap(), vec![3u8; 50_000]);
    }
}
