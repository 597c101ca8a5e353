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

/// How many times [`write`] lists and digests the files before it gives up on a set
/// that keeps changing.
const ATTEMPTS: usize = 5;

/// Writes the seal of the files as they are now (sled closed or idle: nothing more
/// may be written to them). Temp file, fsync, rename, fsync the directory.
///
/// sled removes a replaced blob file when the segment that replaced it settles, which
/// can come just after the last flush: a blob listed may be gone when it is read, and
/// one may go while the others are read. A file gone when read is left out; the
/// listing is taken again after the digests, and the seal is written only when it is
/// still the same set (else all over again, up to `ATTEMPTS` times). A seal that names
/// a blob sled has since removed would make the next start refuse a healthy store.
pub fn write(store_dir: &Path) -> std::io::Result<()> {
    for _ in 0..ATTEMPTS {
        let (text, sealed) = digest_all(store_dir, &sealed_files(store_dir)?)?;
        if sealed_files(store_dir)? == sealed {
            return crate::perms::replace_private(store_dir, FILE, text.as_bytes());
        }
    }
    Err(std::io::Error::other(format!(
        "sled's blob files kept changing while they were sealed ({ATTEMPTS} attempts)"
    )))
}

/// The seal's text for the files `listed`, and the files it covers: those of them
/// still there when read (`db` must be).
fn digest_all(store_dir: &Path, listed: &[PathBuf]) -> std::io::Result<(String, Vec<PathBuf>)> {
    let mut text = String::new();
    let mut sealed = Vec::new();
    for rel in listed {
        match digest(&store_dir.join(rel)) {
            Ok((len, crc)) => {
                text.push_str(&format!("{len} {crc:08x} {}\n", rel.display()));
                sealed.push(rel.clone());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && rel != Path::new("db") => {}
            Err(e) => return Err(e),
        }
    }
    Ok((text, sealed))
}

/// Removes a seal, durably (a seal that may no longer match must not be trusted by the
/// next start). Absent already is fine.
pub fn remove(store_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(store_dir.join(FILE)) {
        Ok(()) => crate::store::sync_dir(store_dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
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
    crate::store::sync_dir(store_dir)
        .map_err(|e| format!("cannot sync {}: {e}", store_dir.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob that is gone by the time it is read is left out of the seal (sled
    /// removed it), instead of failing the seal and with it the clean stop.
    #[test]
    fn a_blob_gone_before_it_is_read_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("db"), b"log").unwrap();
        std::fs::create_dir(d.join("blobs")).unwrap();
        std::fs::write(d.join("blobs/1"), b"kept").unwrap();
        // As listed just before sled removed blob 2.
        let listed = [
            PathBuf::from("db"),
            PathBuf::from("blobs/1"),
            PathBuf::from("blobs/2"),
        ];
        let (text, sealed) = digest_all(d, &listed).unwrap();
        assert_eq!(sealed, sealed_files(d).unwrap());
        assert!(
            text.contains("blobs/1") && !text.contains("blobs/2"),
            "{text}"
        );
        // The log itself gone is an error, not something to leave out.
        std::fs::remove_file(d.join("db")).unwrap();
        assert!(digest_all(d, &listed).is_err());
    }

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
