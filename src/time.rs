//! Wall-clock time as the API shows it: milliseconds since the Unix epoch inside the
//! program, RFC 3339 UTC with millisecond precision and a `Z` suffix on the wire
//! (`2026-11-26T10:01:42.123Z`). Hand-rolled because it is one small, fully tested
//! function and the only date arithmetic the server needs.
//!
//! Two clocks: the wall clock (`SystemTime`) for what the API shows as a date and for
//! the UTC day, and the monotonic clock (`Instant`) for every duration the server
//! enforces (rate windows, failed-login lockouts, change-feed age). A gateway without a
//! battery-backed clock boots at a wrong date and is stepped by NTP later, by years;
//! the monotonic clock never moves with such a step, so durations stay true.
//!
//! [`Clock`] is where the server reads both: the app holds one and hands it to auth,
//! usage, user management, backups and replication, so a test can move time (a token
//! expiring, a login window passing, a wall-clock step) without waiting for it.
//! `now_ms` stays for the store, which does not take a clock yet.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// One reading of both clocks, taken together so a decision that needs both (the
/// daily counter: the UTC day from the wall, the time it has been counting from the
/// monotonic clock) sees one moment.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Milliseconds since the Unix epoch (`now_ms`).
    pub wall_ms: i64,
    pub mono: Instant,
}

impl Now {
    /// Both clocks, now.
    pub fn read() -> Now {
        Now {
            wall_ms: now_ms(),
            mono: Instant::now(),
        }
    }
}

/// The source of [`Now`]: the system clocks, or a manual clock that moves only when a
/// test says so. Cheap to clone; clones of a manual clock share its time.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// `None`: the system clocks.
    manual: Option<Arc<Mutex<Now>>>,
}

impl Clock {
    /// The system's wall and monotonic clocks.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    #[cfg(test)]
    /// A clock that stands still at `wall_ms` (and the monotonic time of its creation)
    /// until [`advance`](Clock::advance) or [`step_wall`](Clock::step_wall) move it.
    pub fn manual(wall_ms: i64) -> Clock {
        Clock {
            manual: Some(Arc::new(Mutex::new(Now {
                wall_ms,
                mono: Instant::now(),
            }))),
        }
    }

    /// Both clocks, now.
    pub fn now(&self) -> Now {
        match &self.manual {
            None => Now::read(),
            Some(m) => *crate::sync::lock(m),
        }
    }

    /// The wall clock: milliseconds since the Unix epoch.
    pub fn wall_ms(&self) -> i64 {
        self.now().wall_ms
    }

    /// The monotonic clock.
    pub fn mono(&self) -> Instant {
        self.now().mono
    }

    #[cfg(test)]
    /// Lets `by` pass on both clocks of a manual clock; the system clock moves by
    /// itself, so there this does nothing.
    pub fn advance(&self, by: std::time::Duration) {
        if let Some(m) = &self.manual {
            let mut now = crate::sync::lock(m);
            now.mono += by;
            now.wall_ms = now
                .wall_ms
                .saturating_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX));
        }
    }

    #[cfg(test)]
    /// Steps the wall clock of a manual clock by `ms` (negative: back), as NTP does to
    /// a gateway that booted at a wrong date; the monotonic clock does not move.
    pub fn step_wall(&self, ms: i64) {
        if let Some(m) = &self.manual {
            let mut now = crate::sync::lock(m);
            now.wall_ms = now.wall_ms.saturating_add(ms);
        }
    }
}

/// Milliseconds since the Unix epoch, now. A clock before 1970 reads as 0 rather than
/// failing: the only effect is odd timestamps, never a crash.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Day number since the epoch (UTC) for a millisecond timestamp; usage counters roll
/// over when it changes.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

/// Formats a millisecond timestamp as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_ms(ms: i64) -> String {
    let mut out = String::with_capacity(24);
    write_rfc3339_ms(&mut out, ms);
    out
}

/// Appends the RFC 3339 form of `ms` to `out` (no allocation beyond `out`'s growth).
pub fn write_rfc3339_ms(out: &mut String, ms: i64) {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss, milli) = (
        rem / 3_600_000,
        (rem / 60_000) % 60,
        (rem / 1000) % 60,
        rem % 1000,
    );
    use std::fmt::Write;
    // Writing into a String cannot fail.
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{milli:03}Z"
    );
}

/// Parses exactly what `rfc3339_ms` writes (`YYYY-MM-DDTHH:MM:SS.mmmZ`): None for
/// anything else, impossible dates included (the result must format back to `s`).
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 24 {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = s.get(from..to)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hh, mm, ss, milli) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 23)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    let ms = days * 86_400_000 + hh * 3_600_000 + mm * 60_000 + ss * 1000 + milli;
    (rfc3339_ms(ms) == s).then_some(ms)
}

/// Howard Hinnant's `days_from_civil`: the day number of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Howard Hinnant's `civil_from_days`: proleptic Gregorian date of a day number.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_685_620_800_000), "2023-06-01T12:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_687_302_123), "2026-11-26T10:01:42.123Z");
        // Leap day and the last millisecond of a year.
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_704_067_199_999), "2023-12-31T23:59:59.999Z");
    }

    #[test]
    fn parses_what_it_formats_and_nothing_else() {
        for ms in [0, 951_782_400_000, 1_704_067_199_999, 1_795_687_302_123, -1] {
            assert_eq!(parse_rfc3339_ms(&rfc3339_ms(ms)), Some(ms));
        }
        for bad in [
            "2023-02-30T00:00:00.000Z",
            "2023-13-01T00:00:00.000Z",
            "2023-01-01T24:00:00.000Z",
            "2023-01-01T00:00:00.000",
            "2023-01-01 00:00:00.000Z",
            "+023-01-01T00:00:00.000Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = Clock::manual(1_000);
        let copy = clock.clone();
        let t0 = clock.now();
        assert_eq!(t0.wall_ms, 1_000);
        clock.advance(Duration::from_millis(1_500));
        assert_eq!(copy.wall_ms(), 2_500);
        assert_eq!(copy.mono() - t0.mono, Duration::from_millis(1_500));
        clock.step_wall(-10_000);
        assert_eq!(copy.wall_ms(), -7_500);
        assert_eq!(copy.mono() - t0.mono, Duration::from_millis(1_500));
        // The system clock ignores both.
        let system = Clock::system();
        system.step_wall(-1_000_000);
        assert!(system.wall_ms() >= t0.wall_ms);
    }

    #[test]
    fn days_start_at_midnight_utc() {
        let midnight = 1_795_651_200_000; // 2026-11-26T00:00:00Z
        assert_eq!(day_of(midnight + 1), day_of(midnight));
        assert_eq!(day_of(midnight - 1), day_of(midnight) - 1);
        assert_eq!(day_of(-1), -1);
    }
}
