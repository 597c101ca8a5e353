//! Owner-only files. The data directory holds argon2 hashes, token hashes and the
//! initial API key, so it is 0700 and everything in it 0600 whatever umask the process
//! was started with (systemd's `UMask=0077` covers the unit, not a shell or a container).
//! Two parts: `restrict_umask` makes every file this process creates from then on
//! private (sled creates snapshot and blob files on its own, long after start-up, so
//! a chmod after the fact would leave windows), and `tighten` repairs a data directory
//! made earlier under a looser umask. Also who owns the data directory, when it is not
//! this process's user, and the command that runs as the owner instead.

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

/// A data directory owned by another user than this process's: who owns it, who we
/// are, and the command line that runs this same command as the owner. The CLI refuses
/// to write there (`cli.rs`), and `serve` says it when the store cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignOwner {
    /// `fleetgroups (uid 998)`, or `uid 998` without a name.
    pub owner: String,
    /// This process's user, the same way.
    pub me: String,
    /// This process's command line as the owner would run it: `runuser -u …` as root,
    /// `sudo -u …` otherwise, numeric forms when the owner has no name.
    pub run_as_owner: String,
    /// The other way out, when this process's user is the right one (a service whose
    /// directory root created): `chown -R <me>: <dir>`.
    pub chown_to_me: String,
}

/// The owner is that of `<data_dir>/store` when there is one (what the server
/// created), else of the data directory itself; a directory that does not exist yet
/// has no owner to mind (the command creates it, as its user).
pub fn foreign_owner(data_dir: &Path) -> Option<ForeignOwner> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(data_dir.join("store"))
        .or_else(|_| std::fs::metadata(data_dir))
        .ok()?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() == me {
        return None;
    }
    let owner = user_name(meta.uid());
    let command = shell_words(std::env::args_os());
    let run_as_owner = match (&owner, me) {
        (Some(name), 0) => format!("runuser -u {name} -- {command}"),
        (None, 0) => format!(
            "setpriv --reuid={} --regid={} --clear-groups -- {command}",
            meta.uid(),
            meta.gid()
        ),
        (Some(name), _) => format!("sudo -u {name} -- {command}"),
        (None, _) => format!("sudo -u '#{}' -- {command}", meta.uid()),
    };
    let my_name = user_name(me);
    let chown_to_me = format!(
        "chown -R {} {}",
        my_name.as_ref().map_or_else(
            || format!("{me}:{}", rustix::process::getegid().as_raw()),
            |n| format!("{n}:")
        ),
        shell_words(std::iter::once(data_dir.as_os_str().to_owned()))
    );
    Some(ForeignOwner {
        owner: named(owner.as_deref(), meta.uid()),
        me: named(my_name.as_deref(), me),
        run_as_owner,
        chown_to_me,
    })
}

/// A uid as people read it: `fleetgroups (uid 998)`, or `uid 998` without a name.
pub fn who(uid: u32) -> String {
    named(user_name(uid).as_deref(), uid)
}

fn named(name: Option<&str>, uid: u32) -> String {
    match name {
        Some(n) => format!("{n} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// The name of `uid` from `/etc/passwd`, if it is there (a systemd `DynamicUser` is
/// not; then the hint uses numbers).
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id = fields.nth(1)?;
        (id.parse::<u32>().ok()? == uid && !name.is_empty()).then(|| name.to_string())
    })
}

/// The command line as a shell would need it typed again.
fn shell_words(args: impl Iterator<Item = std::ffi::OsString>) -> String {
    args.map(|a| {
        let a = a.to_string_lossy().into_owned();
        let plain = !a.is_empty()
            && a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-./:=@%+,".contains(&b));
        if plain {
            a
        } else {
            format!("'{}'", a.replace('\'', "'\\''"))
        }
    })
    .collect::<Vec<_>>()
    .join(" ")
}
