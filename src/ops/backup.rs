//! The backup file (docs/operations/backup-restore.md: `backup FILE`, `restore FILE`): JSON Lines, a
//! versioned header first, one [`Record`] per line, and an end line with the record
//! count so a truncated file is refused instead of half-restored. The header names the
//! build that wrote it (`writerVersion`, `writerRevision`; absent in backups written
//! before they existed, which stay readable: unknown header fields are ignored):
//!
//! ```text
//! {"format":"fleetgroups-backup","version":1,"storeFormat":1,"created":"2026-11-26T10:01:42.123Z","writerVersion":"0.1.0","writerRevision":"893333f1c2ab","storeId":"3f0c…"}
//! {"type":"sequences","nextGroup":4,"nextChange":5}
//! {"type":"user","name":"admin",…}
//! {"type":"group","account":"default","id":1,…}
//! {"type":"end","records":3}
//! ```
//!
//! Writing goes to a temporary file (mode 0600) beside the target, which is fsynced and
//! renamed over it, then the directory is fsynced: a crash leaves the old file or the
//! new one, never a torn one. The snapshot itself comes from `Store::export` (the
//! consistency argument is there). Restore only fills an empty data directory and
//! removes what it created when anything is wrong.
//!
//! Compression: a file whose name ends in `.gz` is written gzip-compressed (flate2's
//! pure-Rust miniz_oxide backend, so no C library on the gateway); reading detects
//! gzip by its magic bytes, never by the name, so a renamed file still restores. The
//! gzip trailer's CRC-32 and length are checked at the end of the stream, which is why
//! restore and `--check` always read to the end, past the end line.
//!
//! Scheduled backups (`backup --dir DIR --keep N`, [`write_to_dir`]) write
//! `fleetgroups-YYYYMMDDTHHMMSSZ.jsonl.gz` (UTC; `_2`, `_3`, … when that second is
//! taken) and only then, once the new file is complete, fsynced and renamed into
//! place, remove the oldest files of exactly that name pattern beyond N — never any
//! other file, never the one just written. `restore --check` ([`check`]) runs every
//! check restore runs, on a records-only importer that writes nothing.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::store::export::{Counts, ExportError, ImportError, Importer, Record};
use crate::store::{OpenError, Store, StoreOptions, FORMAT_VERSION, RESTORE_MARKER};
use crate::time::Clock;

/// The log target, kept from before the module moved into a folder: `log.level`
/// directives name it (`fleetgroups::backup=debug`), so a move must not change it.
const LOG: &str = "fleetgroups::backup";

/// The `format` value of the header line.
pub const FORMAT: &str = "fleetgroups-backup";
/// The backup format this binary writes and reads.
pub const VERSION: u64 = 1;

/// Why a backup, a restore or a check failed. The messages are what the CLI prints
/// after `backup failed:`, `restore failed:` and `not a valid backup:`.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file or directory could not be used: what was being done, to which path.
    #[error("cannot {doing} {}: {source}", path.display())]
    Io {
        doing: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot rename {} to {}: {source}", from.display(), to.display())]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing the backup file failed.
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a file name", .0.display())]
    NotAFileName(PathBuf),
    #[error("the clock reads {0} ms, outside the years 0-9999")]
    ClockOutOfRange(i64),
    #[error("{0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error("another restore into {} is running; nothing was changed. Wait for it to finish, then start the server on what it restored", .0.display())]
    RestoreRunning(PathBuf),
    #[error("the data directory {} is not empty; restore only fills an empty one (nothing was changed)", .0.display())]
    NotEmpty(PathBuf),
    #[error("cannot write the restore marker in {}: {source}", path.display())]
    Marker {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove the restore marker: {0}")]
    MarkerRemove(#[source] std::io::Error),
    #[error("{0}")]
    Open(#[from] OpenError),
    /// The restored store's close (last flush, marks, seal) failed.
    #[error("{}", .0.chain())]
    Close(#[source] crate::store::Error),
    #[error("{0}")]
    Sync(#[source] std::io::Error),
    #[error("{} is empty; it is not a fleetgroups backup", .0.display())]
    Empty(PathBuf),
    #[error("{} is not a fleetgroups backup (its first line is not the backup header)", .0.display())]
    NoHeader(PathBuf),
    #[error("{} is not a fleetgroups backup (format {format:?})", path.display())]
    Format { path: PathBuf, format: String },
    #[error("{} has backup format version {found}, but this binary reads version {VERSION}; nothing was restored", path.display())]
    Version { path: PathBuf, found: u64 },
    /// A line of the file is refused.
    #[error("{} line {line}: {why}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        why: LineError,
    },
    #[error("{} has no end line: the backup is truncated; nothing was restored", .0.display())]
    Truncated(PathBuf),
}

/// What is wrong with one line of a backup file.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("{0}")]
    Read(std::io::Error),
    #[error("text after the end line")]
    AfterEnd,
    #[error("{0}")]
    Record(ImportError),
    #[error("{0}")]
    Json(serde_json::Error),
    #[error("the end line counts {expected} records but {found} came before it")]
    Count { expected: u64, found: u64 },
}

/// A failed file or directory operation: `doing` (e.g. "create") on `path`.
fn io_error(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.to_path_buf();
    move |source| BackupError::Io {
        doing,
        path,
        source,
    }
}

/// The first line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    format: String,
    version: u64,
    store_format: u64,
    created: String,
    /// The writer's crate version and git revision (`build_info`). Optional for
    /// reading: older binaries wrote no such fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    writer_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    writer_revision: Option<String>,
    /// The identity of the store the backup was taken from (absent in backups made
    /// before it existed). A restore does not take it over: the restored store gets a
    /// new one, so a replica sees that its history restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    store_id: Option<String>,
}

/// The last line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
enum Trailer {
    End { records: u64 },
}

/// How the body of a backup file is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Plain,
    Gzip,
}

impl Encoding {
    /// The encoding `backup FILE` writes: gzip when the name ends in `.gz` (what `gzip`
    /// itself and every tool that reads the name expect), plain otherwise, as before.
    pub fn for_name(path: &Path) -> Encoding {
        if path.extension().is_some_and(|e| e == "gz") {
            Encoding::Gzip
        } else {
            Encoding::Plain
        }
    }
}

/// gzip level 1. The export runs under the store's writer mutex (writes wait for it),
/// so compression speed matters more than the last bytes: on 50 MB of backup lines
/// for 100 000 groups (x86-64, one core, miniz_oxide) level 1 took 56 ms for 11.7×,
/// the default level 6 took 433 ms for 16.2×.
const GZIP_LEVEL: u32 = 1;

/// Backups of this process run one at a time: two through the admin socket at once
/// would race for the temporary file, the name of the second and the rotation. (A
/// process-wide lock carries no configuration; offline, the store lock already makes
/// a CLI the only one.)
static RUNNING: Mutex<()> = Mutex::new(());

/// Writes a backup of `store` to `path` atomically (temp file, fsync, rename), gzip
/// when the name ends in `.gz`. An existing file at `path` is replaced.
pub fn write(store: &Store, path: &Path, clock: &Clock) -> Result<Counts, BackupError> {
    let _one = crate::sync::lock(&RUNNING);
    write_as(store, path, Encoding::for_name(path), true, clock)
}

/// [`write`] with an explicit encoding; with `replace` false an existing file at
/// `path` is an error instead of being replaced (`rename` would replace it silently).
fn write_as(
    store: &Store,
    path: &Path,
    encoding: Encoding,
    replace: bool,
    clock: &Clock,
) -> Result<Counts, BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .ok_or_else(|| BackupError::NotAFileName(path.to_path_buf()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_error("create", &tmp))?;
    let result = write_into(store, file, &tmp, encoding, clock).and_then(|counts| {
        rename(&tmp, path, replace).map_err(|source| BackupError::Rename {
            from: tmp.clone(),
            to: path.to_path_buf(),
            source,
        })?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("sync", &dir))?;
        Ok(counts)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `rename`, or with `replace` false a rename that fails when `to` exists
/// (`RENAME_NOREPLACE`; on a filesystem without it, a check just before the rename).
fn rename(from: &Path, to: &Path, replace: bool) -> std::io::Result<()> {
    if replace {
        return std::fs::rename(from, to);
    }
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            if std::fs::symlink_metadata(to).is_ok() {
                return Err(std::io::ErrorKind::AlreadyExists.into());
            }
            std::fs::rename(from, to)
        }
        Err(e) => Err(e.into()),
    }
}

fn write_into(
    store: &Store,
    file: File,
    tmp: &Path,
    encoding: Encoding,
    clock: &Clock,
) -> Result<Counts, BackupError> {
    let io = |source: std::io::Error| BackupError::Write {
        path: tmp.to_path_buf(),
        source,
    };
    // serde_json writes a record in many small pieces; the buffer in front of the
    // encoder hands it large ones.
    const BUFFER: usize = 256 * 1024;
    let (counts, file) = match encoding {
        Encoding::Plain => {
            let mut out = BufWriter::with_capacity(BUFFER, file);
            let counts = write_lines(store, &mut out, tmp, clock)?;
            (counts, out.into_inner().map_err(|e| io(e.into_error()))?)
        }
        Encoding::Gzip => {
            let gz = flate2::write::GzEncoder::new(file, flate2::Compression::new(GZIP_LEVEL));
            let mut out = BufWriter::with_capacity(BUFFER, gz);
            let counts = write_lines(store, &mut out, tmp, clock)?;
            let gz = out.into_inner().map_err(|e| io(e.into_error()))?;
            // `finish` writes the trailer (CRC-32, length) a reader checks.
            (counts, gz.finish().map_err(io)?)
        }
    };
    file.sync_all().map_err(io)?;
    Ok(counts)
}

/// The header, every record and the end line.
fn write_lines(
    store: &Store,
    out: &mut impl Write,
    tmp: &Path,
    clock: &Clock,
) -> Result<Counts, BackupError> {
    let io = |source: std::io::Error| BackupError::Write {
        path: tmp.to_path_buf(),
        source,
    };
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        store_format: FORMAT_VERSION,
        created: crate::time::rfc3339_ms(clock.wall_ms()),
        writer_version: Some(crate::build_info::VERSION.into()),
        writer_revision: Some(crate::build_info::REVISION.into()),
        store_id: Some(store.store_id().to_string()),
    };
    serde_json::to_writer(&mut *out, &header)?;
    out.write_all(b"\n").map_err(io)?;
    let counts = store.export(&mut |rec| {
        serde_json::to_writer(&mut *out, rec).map_err(std::io::Error::other)?;
        out.write_all(b"\n")
    })?;
    serde_json::to_writer(
        &mut *out,
        &Trailer::End {
            records: counts.records,
        },
    )?;
    out.write_all(b"\n").map_err(io)?;
    Ok(counts)
}

// ---------------------------------------------------------------------------------
// Scheduled backups: a directory of timestamped, compressed files, rotated.

/// What [`write_to_dir`] did.
#[derive(Debug)]
pub struct DirBackup {
    /// The file written.
    pub file: PathBuf,
    pub counts: Counts,
    /// Older backups removed by `--keep`.
    pub removed: Vec<PathBuf>,
    /// Why removing old backups failed, if it did (the new backup is complete anyway).
    pub rotate_error: Option<BackupError>,
}

/// The name of a scheduled backup taken at `ms` (the `seq`-th in that second).
fn dir_backup_name(ms: i64, seq: u32) -> String {
    // `2026-12-01T08:53:00.123Z` → `20261201T085300Z`: digits only, so it sorts.
    let digits: String = crate::time::rfc3339_ms(ms)
        .chars()
        .filter(char::is_ascii_digit)
        .take(14)
        .collect();
    let (date, time) = digits.split_at(digits.len().min(8));
    match seq {
        0 | 1 => format!("fleetgroups-{date}T{time}Z.jsonl.gz"),
        n => format!("fleetgroups-{date}T{time}Z_{n}.jsonl.gz"),
    }
}

/// The sort key of a file name [`dir_backup_name`] makes (time, then the number in
/// the second); `None` for every other name, which rotation therefore never touches.
fn parse_dir_backup_name(name: &str) -> Option<(String, u32)> {
    let rest = name
        .strip_prefix("fleetgroups-")?
        .strip_suffix(".jsonl.gz")?;
    let (stamp, seq) = match rest.split_once('_') {
        Some((stamp, n)) => {
            // Exactly as written: no leading zeros, at least 2.
            let seq = n
                .parse::<u32>()
                .ok()
                .filter(|s| *s >= 2 && n == s.to_string())?;
            (stamp, seq)
        }
        None => (rest, 1),
    };
    let b = stamp.as_bytes();
    let shape = b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 8 | 15) || c.is_ascii_digit());
    shape.then(|| (stamp.to_string(), seq))
}

/// Writes a compressed backup into `dir` (created 0700 when missing) under a new
/// timestamped name, then keeps the `keep` newest of the backups there (None: all).
/// Rotation runs only after the new file is complete, fsynced and in place, and never
/// removes it; a failure there is reported in [`DirBackup::rotate_error`].
pub fn write_to_dir(
    store: &Store,
    dir: &Path,
    keep: Option<u64>,
    clock: &Clock,
) -> Result<DirBackup, BackupError> {
    let _one = crate::sync::lock(&RUNNING);
    if !dir.exists() {
        crate::perms::create_private_dir(dir).map_err(io_error("create", dir))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::store::sync_dir(parent).map_err(io_error("sync", parent))?;
        }
    }
    let now = clock.wall_ms();
    // Another backup in the same second gets the next number after the highest there,
    // not the first free one: after a rotation removed `…Z.jsonl.gz`, reusing that
    // name would make the newest backup sort as the oldest of its second.
    let (stamp, _) =
        parse_dir_backup_name(&dir_backup_name(now, 1)).ok_or(BackupError::ClockOutOfRange(now))?;
    let listing = std::fs::read_dir(dir).map_err(io_error("list", dir))?;
    let mut seq = 1;
    for entry in listing {
        let entry = entry.map_err(io_error("list", dir))?;
        if let Some((s, n)) = entry.file_name().to_str().and_then(parse_dir_backup_name) {
            if s == stamp {
                seq = seq.max(n + 1);
            }
        }
    }
    let file = dir.join(dir_backup_name(now, seq));
    // Without replacing: a file that appeared since the check above is never overwritten.
    let counts = write_as(store, &file, Encoding::Gzip, false, clock)?;
    let (removed, rotate_error) = match keep {
        Some(keep) => rotate(dir, keep, &file),
        None => (Vec::new(), None),
    };
    Ok(DirBackup {
        file,
        counts,
        removed,
        rotate_error,
    })
}

/// Removes the oldest scheduled backups in `dir` beyond the `keep` newest, by the time
/// in their names (the clock's, like the names: a clock set back makes new backups
/// look old; the one just written, `written`, stays regardless).
fn rotate(dir: &Path, keep: u64, written: &Path) -> (Vec<PathBuf>, Option<BackupError>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return (Vec::new(), Some(io_error("list", dir)(e))),
    };
    let mut ours = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => return (Vec::new(), Some(io_error("list", dir)(e))),
        };
        let Some(key) = entry.file_name().to_str().and_then(parse_dir_backup_name) else {
            continue;
        };
        // Only regular files: a directory or a symlink of that name is not a backup
        // this command wrote.
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            ours.push((key, entry.path()));
        }
    }
    ours.sort_by(|a, b| b.0.cmp(&a.0));
    let keep = usize::try_from(keep).unwrap_or(usize::MAX);
    let mut removed = Vec::new();
    let mut error = None;
    for (_, path) in ours.into_iter().skip(keep) {
        if path == written {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            // Gone already (another rotation): nothing to do.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                error.get_or_insert(io_error("remove", &path)(e));
            }
        }
    }
    if !removed.is_empty() {
        if let Err(e) = crate::store::sync_dir(dir) {
            error.get_or_insert(io_error("sync", dir)(e));
        }
    }
    (removed, error)
}

// ---------------------------------------------------------------------------------
// The last successful backup, for `fleetgroups_backup_last_success_timestamp_seconds`.

/// The file in the data directory that remembers the last successful backup, so the
/// metric survives a restart and covers backups the CLI made with the server stopped:
/// `{"ms":1796114000123,"time":"2026-12-01T08:53:20.123Z","file":"/…/fleetgroups-….jsonl.gz"}`.
pub const LAST_SUCCESS_FILE: &str = "last-backup";

/// Remembers that a backup to `file` has just succeeded; returns its time (ms).
pub fn record_success(data_dir: &Path, file: &Path, clock: &Clock) -> Result<i64, BackupError> {
    let _one = crate::sync::lock(&RUNNING);
    let ms = clock.wall_ms();
    let line = serde_json::json!({
        "ms": ms,
        "time": crate::time::rfc3339_ms(ms),
        "file": file.to_string_lossy(),
    });
    let path = data_dir.join(LAST_SUCCESS_FILE);
    let written =
        crate::perms::replace_private(data_dir, LAST_SUCCESS_FILE, format!("{line}\n").as_bytes());
    written.map_err(io_error("record the backup in", &path))?;
    Ok(ms)
}

/// The time (ms) of the last successful backup recorded in `data_dir`, if any.
pub fn last_success(data_dir: &Path) -> Option<i64> {
    let text = std::fs::read_to_string(data_dir.join(LAST_SUCCESS_FILE)).ok()?;
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()?
        .get("ms")?
        .as_i64()
}

/// Loads the backup at `file` into `data_dir`, which must be missing or empty. The
/// directory is locked first (`store::lock_for_restore`): a second restore into it
/// is refused while this one runs, and touches nothing. On any error everything
/// restore created is removed again.
// Long because every step (lock, marker, load, close, unmark) says what it undoes.
pub fn restore(
    data_dir: &Path,
    options: &StoreOptions,
    file: &Path,
) -> Result<Counts, BackupError> {
    let existed = data_dir.exists();
    if !existed {
        // The lock is on the directory itself, so it must exist first. Two restores
        // may both create it; only the one that gets the lock ever removes it.
        crate::perms::create_private_dir(data_dir).map_err(io_error("create", data_dir))?;
    }
    let _lock = match crate::store::lock_for_restore(data_dir) {
        Ok(Some(lock)) => lock,
        Ok(None) => return Err(BackupError::RestoreRunning(data_dir.to_path_buf())),
        Err(e) => return Err(io_error("lock", data_dir)(e)),
    };
    let mut entries = std::fs::read_dir(data_dir).map_err(io_error("read", data_dir))?;
    if entries.next().is_some() {
        if !data_dir.join(RESTORE_MARKER).exists() {
            return Err(BackupError::NotEmpty(data_dir.to_path_buf()));
        }
        // The marker, and no restore holds the lock: an interrupted restore left it,
        // and everything here is its half-done work, ours to remove.
        tracing::warn!(target: LOG,
            data_dir = %data_dir.display(),
            "an earlier restore into this directory was interrupted; removing what it left and restoring again"
        );
        empty_dir(data_dir)?;
    }
    let result = (|| {
        let (input, _) = open(file)?;
        let mut lines = input.lines();
        check_header(lines.next(), file)?;
        // The marker goes first and durably, and comes off last: a kill at any moment
        // in between leaves a directory that the server refuses and a second restore
        // redoes, never a half-restored store that starts.
        crate::perms::write_private(
            &data_dir.join(RESTORE_MARKER),
            format!(
                "restoring {} (pid {})\n",
                file.display(),
                std::process::id()
            )
            .as_bytes(),
        )
        .map_err(|source| BackupError::Marker {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let options = StoreOptions {
            restoring: true,
            ..options.clone()
        };
        let store = Store::open(data_dir, &options)?;
        let counts = load(store.importer()?, lines, file)?;
        store.close().map_err(BackupError::Close)?;
        drop(store);
        std::fs::remove_file(data_dir.join(RESTORE_MARKER)).map_err(BackupError::MarkerRemove)?;
        crate::store::sync_dir(data_dir).map_err(BackupError::Sync)?;
        if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::store::sync_dir(parent).map_err(BackupError::Sync)?;
        }
        Ok(counts)
    })();
    if result.is_err() {
        // The directory was empty (or missing): everything in it is ours to remove.
        if existed {
            let _ = empty_dir(data_dir);
        } else {
            let _ = std::fs::remove_dir_all(data_dir);
        }
    }
    result
}

/// Removes everything inside `dir`.
fn empty_dir(dir: &Path) -> Result<(), BackupError> {
    let entries = std::fs::read_dir(dir).map_err(io_error("read", dir))?;
    for e in entries.flatten() {
        let p = e.path();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        let r = if is_dir {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(io_error("remove", &p))?;
    }
    Ok(())
}

/// What `restore --check` found in a valid backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub encoding: Encoding,
    /// The header's `created` and `storeFormat`.
    pub created: String,
    pub store_format: u64,
    pub counts: Counts,
}

/// Verifies the backup at `file` end to end without writing anything anywhere: the
/// header, every record with the checks restore makes (on an importer that keeps
/// only what the checks need), the end line, the sequences, and for gzip the
/// stream's CRC-32 and length.
pub fn check(file: &Path, max_devices: usize) -> Result<Checked, BackupError> {
    let (input, encoding) = open(file)?;
    let mut lines = input.lines();
    let header = check_header(lines.next(), file)?;
    let counts = load(Importer::check_only(max_devices), lines, file)?;
    Ok(Checked {
        encoding,
        created: header.created,
        store_format: header.store_format,
        counts,
    })
}

/// Opens a backup file for reading, plain or gzip (by its first two bytes, the gzip
/// magic `1f 8b`: a backup's plain text starts with `{`).
fn open(file: &Path) -> Result<(Box<dyn BufRead>, Encoding), BackupError> {
    const BUFFER: usize = 256 * 1024;
    let mut input = File::open(file).map_err(io_error("open", file))?;
    // Read the two bytes and put them back in front: a pipe (`/dev/stdin`) may hand
    // them over one at a time, so `fill_buf` alone could see only one.
    let mut magic = [0u8; 2];
    let mut got = 0;
    while got < magic.len() {
        match input.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error("read", file)(e)),
        }
    }
    let gzip = magic == [0x1f, 0x8b];
    let stream = std::io::Cursor::new(magic).take(got as u64).chain(input);
    let raw = BufReader::with_capacity(BUFFER, stream);
    if gzip {
        // Multi-member, as gzip(1) reads: bytes after the first member are decoded
        // (and refused when they are not gzip) instead of being ignored.
        let gz = flate2::bufread::MultiGzDecoder::new(raw);
        Ok((
            Box::new(BufReader::with_capacity(BUFFER, gz)),
            Encoding::Gzip,
        ))
    } else {
        Ok((Box::new(raw), Encoding::Plain))
    }
}

fn check_header(
    first: Option<std::io::Result<String>>,
    file: &Path,
) -> Result<Header, BackupError> {
    let line = match first {
        Some(Ok(l)) => l,
        Some(Err(e)) => return Err(io_error("read", file)(e)),
        None => return Err(BackupError::Empty(file.to_path_buf())),
    };
    let header: Header =
        serde_json::from_str(&line).map_err(|_| BackupError::NoHeader(file.to_path_buf()))?;
    if header.format != FORMAT {
        return Err(BackupError::Format {
            path: file.to_path_buf(),
            format: header.format,
        });
    }
    if header.version != VERSION {
        return Err(BackupError::Version {
            path: file.to_path_buf(),
            found: header.version,
        });
    }
    Ok(header)
}

fn load(
    mut importer: Importer<'_>,
    lines: impl Iterator<Item = std::io::Result<String>>,
    file: &Path,
) -> Result<Counts, BackupError> {
    let mut ended: Option<u64> = None;
    let mut records = 0u64;
    for (i, line) in lines.enumerate() {
        let n = i + 2;
        let at = |why: LineError| BackupError::Line {
            path: file.to_path_buf(),
            line: n,
            why,
        };
        let line = line.map_err(|e| at(LineError::Read(e)))?;
        if line.trim().is_empty() {
            continue;
        }
        if ended.is_some() {
            return Err(at(LineError::AfterEnd));
        }
        match serde_json::from_str::<Record>(&line) {
            Ok(rec) => {
                importer.add(rec).map_err(|e| at(LineError::Record(e)))?;
                records += 1;
            }
            Err(record_err) => match serde_json::from_str::<Trailer>(&line) {
                Ok(Trailer::End { records: expected }) => {
                    if expected != records {
                        return Err(at(LineError::Count {
                            expected,
                            found: records,
                        }));
                    }
                    ended = Some(expected);
                }
                Err(_) => return Err(at(LineError::Json(record_err))),
            },
        }
    }
    if ended.is_none() {
        return Err(BackupError::Truncated(file.to_path_buf()));
    }
    Ok(importer.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_names_sort_by_time_and_parse_back() {
        // 2026-12-01T08:53:00.123Z
        let ms = 1_796_115_180_123;
        assert_eq!(
            dir_backup_name(ms, 1),
            "fleetgroups-20261201T085300Z.jsonl.gz"
        );
        assert_eq!(
            dir_backup_name(ms, 2),
            "fleetgroups-20261201T085300Z_2.jsonl.gz"
        );
        let stamp = "20261201T085300Z".to_string();
        assert_eq!(
            parse_dir_backup_name(&dir_backup_name(ms, 1)),
            Some((stamp.clone(), 1))
        );
        assert_eq!(
            parse_dir_backup_name(&dir_backup_name(ms, 12)),
            Some((stamp, 12))
        );
        // Names this command never writes are never its backups.
        for other in [
            "fleetgroups-20261201T085300Z.jsonl",
            "fleetgroups-20261201T085300Z.jsonl.gz.tmp-1",
            ".fleetgroups-20261201T085300Z.jsonl.gz.tmp-7",
            "fleetgroups-20261201T085300Z_1.jsonl.gz",
            "fleetgroups-20261201T085300Z_02.jsonl.gz",
            "fleetgroups-20261201T085300Z_.jsonl.gz",
            "fleetgroups-2026-12-01T08:53:00Z.jsonl.gz",
            "fleetgroups-20261201X085300Z.jsonl.gz",
            "fleetgroups-20261201T0853000.jsonl.gz",
            "other-20261201T085300Z.jsonl.gz",
        ] {
            assert_eq!(parse_dir_backup_name(other), None, "{other}");
        }
        // Time order is name order; within a second, the number decides.
        let mut keys = [
            parse_dir_backup_name(&dir_backup_name(ms + 1000, 1)),
            parse_dir_backup_name(&dir_backup_name(ms, 10)),
            parse_dir_backup_name(&dir_backup_name(ms, 2)),
            parse_dir_backup_name(&dir_backup_name(ms, 1)),
        ];
        keys.sort();
        assert_eq!(
            keys.iter()
                .map(|k| k.as_ref().map(|(_, n)| *n))
                .collect::<Vec<_>>(),
            [Some(1), Some(2), Some(10), Some(1)]
        );
    }

    #[test]
    fn the_name_chooses_the_encoding_of_backup_file() {
        assert_eq!(
            Encoding::for_name(Path::new("/b/x.jsonl.gz")),
            Encoding::Gzip
        );
        assert_eq!(Encoding::for_name(Path::new("x.gz")), Encoding::Gzip);
        assert_eq!(Encoding::for_name(Path::new("x.jsonl")), Encoding::Plain);
        assert_eq!(Encoding::for_name(Path::new("x.gzip")), Encoding::Plain);
        assert_eq!(Encoding::for_name(Path::new("gz")), Encoding::Plain);
    }
}
