//! High-water marks kept outside the log: the next group number, the next change
//! sequence and the number of users, in a small text file beside sled's files
//! (`store/highwater`), replaced atomically and fsynced. sled's log is where every
//! acknowledged write lives, so a log that lost data (a zero-length file after a power
//! cut, a zeroed block, garbage) opens as a smaller or even empty store, and the next
//! create would hand out an ID a client has already seen, or a first start would make
//! a new `admin`. At open the log's own marks are compared with these: a log that ends
//! before them is damaged, and the store is refused.
//!
//! The marks are written at every clean close and, while serving, within a second of a
//! change (`App`'s upkeep), so damage is detected for everything but the last second
//! before it. (Keeping them exact would cost a second fsync per group commit.)
//!
//! IDs are protected exactly, the way database sequences are: the file also holds a
//! *reservation* — group numbers and change sequences below `reserved_*` may have been
//! handed out — and a writer extends it durably (by [`RESERVE`]) before it hands out a
//! number at or past it. A start continues from the reservation, so even a log that
//! lost its last writes without a trace never hands out a number a client has seen. A
//! crash therefore skips up to `RESERVE` numbers (harmless: IDs only have to grow); a
//! clean close records the reservation at the marks, so a restart skips none.

use std::path::Path;

/// The file's name in the store directory.
pub const FILE: &str = "highwater";

/// How far a reservation reaches past the number that needed it: one fsync of this file
/// per this many creates (or changes), and at most this many numbers skipped by a crash.
pub const RESERVE: u64 = 128;

/// What the file records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HighWater {
    pub next_group: u64,
    pub next_change: u64,
    pub users: u64,
    /// No group number at or above this has been handed out.
    pub reserved_group: u64,
    /// No change sequence at or above this has been written.
    pub reserved_change: u64,
}

impl HighWater {
    /// Reads the file: `None` when there is none (a store made before it existed, or a
    /// new one), Err when it cannot be read or parsed (itself damage).
    pub fn read(store_dir: &Path) -> Result<Option<HighWater>, String> {
        let path = store_dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let mut hw = HighWater::default();
        let mut seen = 0;
        for line in text.lines() {
            let Some((k, v)) = line.split_once(' ') else {
                continue;
            };
            let slot = match k {
                "next_group" => &mut hw.next_group,
                "next_change" => &mut hw.next_change,
                "users" => &mut hw.users,
                "reserved_group" => &mut hw.reserved_group,
                "reserved_change" => &mut hw.reserved_change,
                _ => continue,
            };
            *slot = v
                .trim()
                .parse()
                .map_err(|_| format!("{} holds {line:?}, not a number", path.display()))?;
            seen += 1;
        }
        if seen != 5 {
            return Err(format!("{} is incomplete", path.display()));
        }
        Ok(Some(hw))
    }

    /// Replaces the file durably: temp file, fsync, rename, fsync the directory.
    pub fn write(&self, store_dir: &Path) -> std::io::Result<()> {
        let text = format!(
            "next_group {}\nnext_change {}\nusers {}\nreserved_group {}\nreserved_change {}\n",
            self.next_group,
            self.next_change,
            self.users,
            self.reserved_group,
            self.reserved_change
        );
        crate::perms::replace_private(store_dir, FILE, text.as_bytes())
    }

    /// What is wrong when a log with marks `log` is behind these, if it is.
    pub fn behind(&self, log: &HighWater) -> Option<String> {
        if log.next_group < self.next_group {
            return Some(format!(
                "its log ends before the recorded high-water mark (group numbers up to grp-{} were handed out, the log knows of grp-{} at most)",
                self.next_group - 1,
                log.next_group.saturating_sub(1)
            ));
        }
        if log.next_change < self.next_change {
            return Some(format!(
                "its log ends before the recorded high-water mark (change {} was written, the log ends at change {})",
                self.next_change - 1,
                log.next_change.saturating_sub(1)
            ));
        }
        if self.users > 0 && log.users == 0 {
            return Some(format!(
                "its log holds no users, but {} were recorded",
                self.users
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_behind() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(HighWater::read(dir.path()).unwrap(), None);
        let hw = HighWater {
            next_group: 10,
            next_change: 20,
            users: 2,
            reserved_group: 138,
            reserved_change: 148,
        };
        hw.write(dir.path()).unwrap();
        assert_eq!(HighWater::read(dir.path()).unwrap(), Some(hw));
        assert_eq!(hw.behind(&hw), None);
        let ahead = HighWater {
            next_group: 11,
            ..hw
        };
        assert_eq!(hw.behind(&ahead), None);
        for log in [
            HighWater {
                next_group: 9,
                ..hw
            },
            HighWater {
                next_change: 1,
                ..hw
            },
            HighWater { users: 0, ..hw },
        ] {
            assert!(hw.behind(&log).is_some(), "{log:?}");
        }
        std::fs::write(dir.path().join(FILE), "next_group x\n").unwrap();
        assert!(HighWater::read(dir.path()).is_err());
    }
}
