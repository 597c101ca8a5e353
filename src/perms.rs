//! Owner-only files. The data directory holds argon2 hashes, token hashes and the
//! initial API key, so it is 0700 and everything in it 0600 whatever umask the process
//! was started with (systemd's `UMask=0077` covers the unit, not a shell or a container).
//! Two parts: `restrict_umask` makes every file this process creates from then on
//! private (sled creates snapshot and blob files on its own, long after start-up, so
//! a chmod after the fact would leave windows), and `tighten` repairs a data directory
//! made earlier under a looser umask.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Sets the process umask to 0077. Called first thing by every command.
pub fn restrict_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Creates `dir` (and missing parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes a file only its owner can read, durably: mode 0600 (also when it existed
/// with another), the contents fsynced, and its directory entry fsynced too, so a
/// crash leaves either no file or the whole one.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode on open; make sure it is 0600 regardless.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(contents)?;
    f.sync_all()?;
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => std::fs::File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}

/// Replaces `dir/name` atomically and durably with `contents`, owner-only: a temp file
/// beside it written with `write_private` (0600, fsynced), renamed over the old one,
/// then the directory fsynced. A crash leaves the old file or the new one, whole.
pub fn replace_private(dir: &Path, name: &str, contents: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    write_private(&tmp, contents)?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Makes `dir` 0700 and every file and directory below it owner-only (files keep
/// their owner bits, so nothing becomes executable). Symlinks and sockets are left
/// alone: the admin socket sets its own mode, and a symlink's target is not ours.
/// Returns how many entries were changed.
pub fn tighten(dir: &Path) -> std::io::Result<usize> {
    let mut changed = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        changed += restrict(&d, 0o700)?;
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                changed += restrict(&entry.path(), 0o600)?;
            }
        }
    }
    Ok(changed)
}

/// Clears the group and other bits (and, for files, any execute bit) of one path.
fn restrict(path: &Path, max: u32) -> std::io::Result<usize> {
    let mode = std::fs::symlink_metadata(path)?.permissions().mode() & 0o7777;
    let wanted = mode & max;
    if wanted == mode {
        return Ok(0);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted))?;
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tighten_leaves_owner_only_modes() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        let file = sub.join("f");
        std::fs::write(&file, b"x").unwrap();
        for p in [dir.path(), &dir.path().join("a"), &sub] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o664)).unwrap();
        assert_eq!(tighten(dir.path()).unwrap(), 4);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&sub), 0o700);
        assert_eq!(mode(&file), 0o600);
        assert_eq!(
            tighten(dir.path()).unwrap(),
            0,
            "a second pass changes nothing"
        );
    }
}
