//! Change-feed retention [ext]: which entries are older than `retention.changes_days`,
//! decided by sequence and elapsed time together, never by an entry's wall-clock `time`.
//!
//! Why not the wall clock: a gateway without a battery-backed clock writes entries
//! dated years back until NTP steps its clock, and those fresh entries then looked
//! ten years old and were purged at the next pass; one entry written while the clock
//! was ahead looked young and, because a purge stops at an account's first young entry,
//! kept every later entry of its account forever.
//!
//! How instead: the store keeps an *elapsed clock*, milliseconds of running time that
//! advance only with the monotonic clock (`Instant`) and survive restarts (persisted in
//! `meta/retention` at every pass and at close). Each pass records a *mark*: "at elapsed
//! time T, every entry written so far has `seq` below S". An entry is old enough once
//! a mark that covers it is `changes_days` of elapsed time old; sequence numbers are
//! store-wide and increasing, so the purge removes, per account, the key range below S.
//!
//! Consequences, chosen: a wall-clock step, either way and of any size, neither purges
//! nor keeps anything; time while the server is stopped does not count (nothing is
//! written then, and a clock read at boot is exactly what cannot be trusted), so after a
//! long stop entries are kept longer, never shorter. Losing the last persisted clock in
//! a crash also only keeps entries longer. An entry is removed between `changes_days`
//! and `changes_days` + two passes (+ the mark spacing, `changes_days`/1024) after it was
//! written. A store from before this module, or restored from a backup, has no marks:
//! its entries are kept for `changes_days` from its first pass.

use std::time::Instant;

/// Key of the elapsed clock and the marks in the `meta` tree.
pub(super) const META_RETENTION: &[u8] = b"retention";

/// At most this many marks are younger than the retention period: the spacing of marks
/// is at least `keep / MAX_MARKS`, so the value stays small (16 bytes a mark).
const MAX_MARKS: u64 = 1024;

/// "When the elapsed clock read `at_ms`, every entry written had `seq < below`."
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    at_ms: u64,
    below: u64,
}

/// The elapsed clock and its marks.
#[derive(Debug)]
pub(super) struct Retention {
    /// The elapsed clock when this process opened the store.
    base_ms: u64,
    opened: Instant,
    /// Oldest first; `at_ms` and `below` both non-decreasing.
    marks: Vec<Mark>,
}

impl Retention {
    /// From the stored value: the elapsed clock (8 bytes) then marks (8 + 8 bytes each),
    /// all big-endian. A missing or unreadable value starts afresh, which can only keep
    /// entries longer.
    pub(super) fn load(value: Option<&[u8]>) -> Retention {
        let fresh = Retention {
            base_ms: 0,
            opened: Instant::now(),
            marks: Vec::new(),
        };
        let Some(v) = value else { return fresh };
        if v.len() < 8 || (v.len() - 8) % 16 != 0 {
            return fresh;
        }
        let num = |b: &[u8]| b.try_into().map(u64::from_be_bytes).unwrap_or(0);
        let marks: Vec<Mark> = v[8..]
            .chunks_exact(16)
            .map(|c| Mark {
                at_ms: num(&c[..8]),
                below: num(&c[8..]),
            })
            .collect();
        let ordered = marks
            .windows(2)
            .all(|w| w[0].at_ms <= w[1].at_ms && w[0].below <= w[1].below);
        if !ordered {
            return fresh;
        }
        Retention {
            base_ms: num(&v[..8]),
            marks,
            ..fresh
        }
    }

    /// The stored value for the clock reading `now_ms`.
    pub(super) fn encode(&self, now_ms: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + 16 * self.marks.len());
        v.extend_from_slice(&now_ms.to_be_bytes());
        for m in &self.marks {
            v.extend_from_slice(&m.at_ms.to_be_bytes());
            v.extend_from_slice(&m.below.to_be_bytes());
        }
        v
    }

    /// The elapsed clock now: running time of this store, in ms.
    pub(super) fn elapsed_ms(&self) -> u64 {
        let run = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.base_ms.saturating_add(run)
    }

    /// One pass at `now_ms` on the elapsed clock, with `next_seq` the sequence number
    /// the next entry will get: records a mark and returns the `seq` below which
    /// entries are at least `keep_ms` old (0: none).
    pub(super) fn pass(&mut self, now_ms: u64, next_seq: u64, keep_ms: u64) -> u64 {
        let spacing = (keep_ms / MAX_MARKS).max(1);
        match self.marks.last() {
            // Nothing written since the last mark: it covers everything.
            Some(m) if m.below >= next_seq => {}
            // Too soon after the last mark: the next one will cover these entries,
            // which keeps them a little longer, never shorter.
            Some(m) if now_ms.saturating_sub(m.at_ms) < spacing => {}
            _ => self.marks.push(Mark {
                at_ms: now_ms,
                below: next_seq,
            }),
        }
        let Some(i) = self
            .marks
            .iter()
            .rposition(|m| now_ms.saturating_sub(m.at_ms) >= keep_ms)
        else {
            return 0;
        };
        // Older marks say less than this one; it stays so the cutoff never goes back.
        self.marks.drain(..i);
        self.marks[0].below
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    #[test]
    fn entries_are_old_after_keep_of_elapsed_time_only() {
        let mut r = Retention::load(None);
        let keep = 30 * DAY;
        // Entries 1..=9 written before the first pass, 10..=19 before an hour later.
        assert_eq!(r.pass(0, 10, keep), 0);
        assert_eq!(r.pass(3_600_000, 20, keep), 0);
        assert_eq!(r.pass(keep - 1, 20, keep), 0);
        assert_eq!(r.pass(keep, 25, keep), 10);
        assert_eq!(r.pass(keep + 3_599_999, 25, keep), 10);
        assert_eq!(r.pass(keep + 3_600_000, 25, keep), 20);
        // The mark of entries 20..=24 was made at `keep`.
        assert_eq!(r.pass(2 * keep, 30, keep), 25);
        assert_eq!(r.marks.len(), 2);
    }

    #[test]
    fn marks_stay_few_whatever_the_pass_rate() {
        let mut r = Retention::load(None);
        let keep = DAY;
        let mut seq = 1;
        // A pass and a write every 5 s for two retention periods.
        for t in (0..2 * keep).step_by(5000) {
            seq += 1;
            r.pass(t, seq, keep);
            assert!(r.marks.len() as u64 <= MAX_MARKS + 2, "{}", r.marks.len());
        }
        // A quiet store adds none.
        let n = r.marks.len();
        for t in 0..100 {
            r.pass(2 * keep + t * DAY, seq, keep);
        }
        assert!(r.marks.len() <= n);
    }

    #[test]
    fn the_clock_and_marks_survive_a_restart() {
        let mut r = Retention::load(None);
        let keep = DAY;
        r.pass(5_000, 7, keep);
        let stored = r.encode(9_000);
        let again = Retention::load(Some(&stored));
        assert!(again.elapsed_ms() >= 9_000);
        assert_eq!(again.marks, r.marks);
        let mut again = again;
        assert_eq!(again.pass(5_000 + keep, 7, keep), 7);
        // Garbage starts afresh rather than guessing.
        for bad in [
            &b"x"[..],
            &[0u8; 12][..],
            &[[0u8; 8], [0, 0, 0, 0, 0, 0, 0, 9], [0; 8], [0; 8], [0; 8]].concat()[..],
        ] {
            let r = Retention::load(Some(bad));
            assert!(r.marks.is_empty() && r.base_ms == 0, "{bad:?}");
        }
    }
}
