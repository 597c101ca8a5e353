//! The backup file (operations.md "CLI": `backup FILE`, `restore FILE`): JSON Lines, a
//! versioned header first, one [`Record`] per line, and an end line with the record
//! count so a truncated file is refused instead of half-restored. The header names the
//! build that wrote it (`writerVersion`, `writerRevision`; absent in backups written
//! before they existed, which stay readable: unknown header fields are ignored):
//!
//! ```text
//! {"format":"fleetgroups-backup","version":1,"storeFormat":1,"created":"2026-11-26T10:01:42.123Z","writerVersion":"0.1.0","writerRevision":"893333f1c2ab"}
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

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::export::{Counts, Record};
use crate::store::{Store, StoreOptions, FORMAT_VERSION};

/// The `format` value of the header line.
pub const FORMAT: &str = "fleetgroups-backup";
/// The backup format this binary writes and reads.
pub const VERSION: u64 = 1;

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
}

/// The last line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
enum Trailer {
    End { records: u64 },
}

/// Writes a backup of `store` to `path` atomically (temp file, fsync, rename).
pub fn write(store: &Store, path: &Path) -> Result<Counts, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} is not a file name", path.display()))?;
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
        .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let result = write_into(store, file, &tmp).and_then(|counts| {
        std::fs::rename(&tmp, path)
            .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), path.display()))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("cannot sync {}: {e}", dir.display()))?;
        Ok(counts)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_into(store: &Store, file: File, tmp: &Path) -> Result<Counts, String> {
    let io = |e: std::io::Error| format!("writing {}: {e}", tmp.display());
    let mut out = BufWriter::with_capacity(256 * 1024, file);
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        store_format: FORMAT_VERSION,
        created: crate::time::rfc3339_ms(crate::time::now_ms()),
        writer_version: Some(crate::build_info::VERSION.into()),
        writer_revision: Some(crate::build_info::REVISION.into()),
    };
    serde_json::to_writer(&mut out, &header).map_err(|e| e.to_string())?;
    out.write_all(b"\n").map_err(io)?;
    let counts = store.export(&mut |rec| {
        serde_json::to_writer(&mut out, rec).map_err(std::io::Error::other)?;
        out.write_all(b"\n")
    })?;
    serde_json::to_writer(
        &mut out,
        &Trailer::End {
            records: counts.records,
        },
    )
    .map_err(|e| e.to_string())?;
    out.write_all(b"\n").map_err(io)?;
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(counts)
}

/// Loads the backup at `file` into `data_dir`, which must be missing or empty. On any
/// error everything restore created is removed again.
pub fn restore(data_dir: &Path, options: &StoreOptions, file: &Path) -> Result<Counts, String> {
    let existed = data_dir.exists();
    if existed {
        let mut entries = std::fs::read_dir(data_dir)
            .map_err(|e| format!("cannot read {}: {e}", data_dir.display()))?;
        if entries.next().is_some() {
            return Err(format!(
                "the data directory {} is not empty; restore only fills an empty one (nothing was changed)",
                data_dir.display()
            ));
        }
    }
    let input = File::open(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?;
    let mut lines = BufReader::with_capacity(256 * 1024, input).lines();
    check_header(lines.next(), file)?;
    let result = (|| {
        let store = Store::open(data_dir, options).map_err(|e| e.to_string())?;
        let counts = load(&store, lines, file)?;
        store.close()?;
        drop(store);
        crate::store::sync_dir(data_dir).map_err(|e| e.to_string())?;
        if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::store::sync_dir(parent).map_err(|e| e.to_string())?;
        }
        Ok(counts)
    })();
    if result.is_err() {
        // The directory was empty (or missing): everything in it is ours to remove.
        if existed {
            if let Ok(entries) = std::fs::read_dir(data_dir) {
                for e in entries.flatten() {
                    let p = e.path();
                    let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(data_dir);
        }
    }
    result
}

fn check_header(first: Option<std::io::Result<String>>, file: &Path) -> Result<(), String> {
    let line = match first {
        Some(Ok(l)) => l,
        Some(Err(e)) => return Err(format!("cannot read {}: {e}", file.display())),
        None => {
            return Err(format!(
                "{} is empty; it is not a fleetgroups backup",
                file.display()
            ))
        }
    };
    let header: Header = serde_json::from_str(&line).map_err(|_| {
        format!(
            "{} is not a fleetgroups backup (its first line is not the backup header)",
            file.display()
        )
    })?;
    if header.format != FORMAT {
        return Err(format!(
            "{} is not a fleetgroups backup (format {:?})",
            file.display(),
            header.format
        ));
    }
    if header.version != VERSION {
        return Err(format!(
            "{} has backup format version {}, but this binary reads version {VERSION}; nothing was restored",
            file.display(),
            header.version
        ));
    }
    Ok(())
}

fn load(
    store: &Store,
    lines: impl Iterator<Item = std::io::Result<String>>,
    file: &Path,
) -> Result<Counts, String> {
    let mut importer = store.importer()?;
    let mut ended: Option<u64> = None;
    let mut records = 0u64;
    for (i, line) in lines.enumerate() {
        let n = i + 2;
        let at = |why: String| format!("{} line {n}: {why}", file.display());
        let line = line.map_err(|e| at(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        if ended.is_some() {
            return Err(at("text after the end line".into()));
        }
        match serde_json::from_str::<Record>(&line) {
            Ok(rec) => {
                importer.add(rec).map_err(at)?;
                records += 1;
            }
            Err(record_err) => match serde_json::from_str::<Trailer>(&line) {
                Ok(Trailer::End { records: expected }) => {
                    if expected != records {
                        return Err(at(format!(
                            "the end line counts {expected} records but {records} came before it"
                        )));
                    }
                    ended = Some(expected);
                }
                Err(_) => return Err(at(record_err.to_string())),
            },
        }
    }
    if ended.is_none() {
        return Err(format!(
            "{} has no end line: the backup is truncated; nothing was restored",
            file.display()
        ));
    }
    importer.finish()
}
