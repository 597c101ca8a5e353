//! The seal: the length and CRC-32 of sled's data files (`db` and every blob file),
//! written at a clean close, checked at the next open *before sled runs*.
//!
//! sled has no way to say "this log lost data": a zeroed block or a damaged blob opens
//! as a smaller store, a flipped byte can panic, and its recovery rewrites files, so the
//! operator's copy of the damage is gone after the first start. After a clean stop no
//! byte of these files may change until the next open, so the seal detects any change
//! — zeroed, flipped, truncated, removed — and the store is refused with the files as
//! they were found. The seal is removed (durably) before sled opens, since sled may
//! write from then on; only the next clean close writes a new one.
//!
//! After a crash there is no seal (the files legitimately changed since the last
//! one): sled's recovery runs, and the open runs the fast check (`Store::fast_check`)
//! instead. `conf` and `snap.*` are not sealed: sled rewrites or regenerates them from
//! the log on its own (an empty `conf` after a power cut is normal, ARCHITECTURE.md).

use std::io::Read;
use std::path::{Path, PathBuf};

/// The file's name in the store directory.
pub const FILE: &str = "seal";

/// The files sealed, relative to the store directory, in a stable order.
fn sealed_files(store_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = vec![PathBuf::from("db")];
    match std::fs::read_dir(store_dir.join("blobs")) {
        Ok(entries) => {
            let mut blobs = Vec::new();
            for entry in entries {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    blobs.push(PathBuf::from("blobs").join(entry.file_name()));
                }
            }
            blobs.sort();
            files.extend(blobs);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(files)
}

/// Length and CRC-32 of a file, read in 1 MiB steps.
fn digest(path: &Path) -> std::io::Result<(u64, u32)> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        len += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((len, hasher.finalize()))
}

/// Writes the seal of the files as they are now (sled closed or idle: nothing more
/// may be written to them). Temp file, fsync, rename, fsync the directory.
pub fn write(store_dir: &Path) -> std::io::Result<()> {
    let mut text = String::new();
    for rel in sealed_files(store_dir)? {
        let (len, crc) = digest(&store_dir.join(&rel))?;
        text.push_str(&format!("{len} {crc:08x} {}\n", rel.display()));
    }
    crate::perms::replace_private(store_dir, FILE, text.as_bytes())
}

/// Whether the last stop was clean, after checking its seal: `Ok(true)` when a seal
/// was there and every file matches it (the seal is then removed, durably, so that
/// sled may write), `Ok(false)` when there is no seal, `Err(what)` when a sealed file
/// changed (nothing is touched).
pub fn check_and_remove(store_dir: &Path) -> Result<bool, String> {
    let path = store_dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut sealed = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(len), Some(crc), Some(rel)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("{} holds {line:?}", path.display()));
        };
        let (Ok(len), Ok(crc)) = (len.parse::<u64>(), u32::from_str_radix(crc, 16)) else {
            return Err(format!("{} holds {line:?}", path.display()));
        };
        sealed.push((rel.to_string(), len, crc));
    }
    for (rel, len, crc) in &sealed {
        let file = store_dir.join(rel);
        match digest(&file) {
            Ok((l, c)) if l == *len && c == *crc => {}
            Ok((l, _)) if l != *len => {
                return Err(format!(
                    "{} changed since the last clean stop: {l} bytes, {len} were written",
                    file.display()
                ))
            }
            Ok(_) => {
                return Err(format!(
                    "{} changed since the last clean stop: its content differs (CRC-32) from what was written",
                    file.display()
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!(
                    "{} is missing; it was there at the last clean stop",
                    file.display()
                ))
            }
            Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
        }
    }
    std::fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
    super::sync_dir(store_dir).map_err(|e| format!("cannot sync {}: {e}", store_dir.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_file_that_changes_in_any_way_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("db"), vec![7u8; 10_000]).unwrap();
        std::fs::create_dir(d.join("blobs")).unwrap();
        std::fs::write(d.join("blobs/1"), b"blob").unwrap();
        assert_eq!(check_and_remove(d), Ok(false), "no seal: not a clean stop");
        write(d).unwrap();
        assert_eq!(check_and_remove(d), Ok(true));
        assert!(!d.join(FILE).exists(), "removed before sled may write");
        type Damage = fn(&Path);
        let damages: [(Damage, &str); 4] = [
            (
                |d| {
                    let mut b = std::fs::read(d.join("db")).unwrap();
                    b[5000] ^= 1;
                    std::fs::write(d.join("db"), b).unwrap();
                },
                "content differs",
            ),
            (
                |d| {
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(d.join("db"))
                        .unwrap();
                    f.set_len(4096).unwrap();
                },
                "4096 bytes, 10000 were written",
            ),
            (
                |d| std::fs::remove_file(d.join("blobs/1")).unwrap(),
                "is missing",
            ),
            (
                |d| std::fs::write(d.join("blobs/1"), b"blub").unwrap(),
                "content differs",
            ),
        ];
        for (damage, want) in damages {
            std::fs::write(d.join("db"), vec![7u8; 10_000]).unwrap();
            std::fs::write(d.join("blobs/1"), b"blob").unwrap();
            write(d).unwrap();
            damage(d);
            let e = check_and_remove(d).unwrap_err();
            assert!(e.contains(want), "{e}");
            assert!(d.join(FILE).exists(), "a refused store keeps its seal");
        }
    }
}
