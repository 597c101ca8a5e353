//! Per-user usage counters and limits (docs/api/http.md "Usage counters and limits"). Counters live in memory and are
//! written to the store in batches every second and at shutdown, which is what §3
//! allows (a crash may lose the last second of counts, never group data). Limits are
//! checked and counted under one mutex, so they hold exactly under concurrency.
//!
//! Clocks (see `time.rs`): the per-minute window is measured on the monotonic clock, so
//! a wall-clock step neither extends nor ends it. The daily counter follows the UTC day
//! of the wall clock forwards (a new day starts at 00:00 UTC), but a backward step never
//! starts a new day: it goes on counting the day it was counting, until the wall clock
//! moves past that day or a whole day has elapsed on the monotonic clock since the count
//! began. So the daily budget refills at most once per wall-clock midnight crossed
//! forwards, never because the clock went back, and a clock that was years ahead cannot
//! freeze the count for years either.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ApiError;
use crate::store::users::UsageRecord;
use crate::sync::lock;
use crate::time::{day_of, Now};

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);
const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Default)]
struct Entry {
    rec: UsageRecord,
    dirty: bool,
    /// When (monotonic) the count of `rec.day` began in this process; None until the
    /// first request after a start (a count loaded from the store began at the latest
    /// then).
    day_started: Option<Instant>,
    /// Start (monotonic) and count of the current one-minute rate window.
    window: Option<(Instant, u64)>,
}

impl Entry {
    /// Whether the daily count starts over at `now`: the wall clock is on a later UTC
    /// day than the one counted, or a whole day has passed on the monotonic clock since
    /// that count began (the wall clock was stepped back, or stands still).
    fn new_day(&self, today: i64, now: Instant) -> bool {
        today > self.rec.day
            || self
                .day_started
                .is_some_and(|t| now.saturating_duration_since(t) >= DAY)
    }

    /// Seconds until the daily count starts over (`Retry-After`): the next 00:00 UTC
    /// after the day counted, or a day after the count began, whichever comes first.
    fn secs_until_new_day(&self, now: Now) -> u64 {
        let wall_ms = (self.rec.day.saturating_add(1))
            .saturating_mul(DAY_MS)
            .saturating_sub(now.wall_ms);
        let wall = Duration::from_millis(u64::try_from(wall_ms).unwrap_or(0));
        let mono = self.day_started.map_or(DAY, |t| {
            DAY.saturating_sub(now.mono.saturating_duration_since(t))
        });
        ceil_secs(wall.min(mono))
    }
}

/// Whole seconds, rounded up, at least 1 (`Retry-After`).
fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

/// The counters of every user.
#[derive(Default)]
pub struct Usage {
    entries: Mutex<HashMap<String, Entry>>,
}

/// Limits that apply to one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub daily: Option<u64>,
    pub per_minute: u64,
}

impl Usage {
    /// Starts from persisted counters.
    pub fn load(records: Vec<(String, UsageRecord)>) -> Usage {
        let entries = records
            .into_iter()
            .map(|(name, rec)| {
                (
                    name,
                    Entry {
                        rec,
                        ..Entry::default()
                    },
                )
            })
            .collect();
        Usage {
            entries: Mutex::new(entries),
        }
    }

    /// Counts one authenticated request, or refuses it for a limit (not counted).
    /// Returns the counters to report as (apiUsage, apiDailyUsage).
    pub fn count(
        &self,
        user: &str,
        limits: Limits,
        now: Now,
    ) -> Result<(u64, u64), (ApiError, u64, u64)> {
        let mut map = lock(&self.entries);
        // Look up before inserting so the common case does not allocate a key.
        if !map.contains_key(user) {
            map.insert(user.to_string(), Entry::default());
        }
        let Some(e) = map.get_mut(user) else {
            return Err((ApiError::Internal("usage entry vanished".into()), 0, 0));
        };
        let today = day_of(now.wall_ms);
        if e.new_day(today, now.mono) {
            e.rec.day = today;
            e.rec.daily = 0;
            e.day_started = Some(now.mono);
            e.dirty = true;
        }
        e.day_started.get_or_insert(now.mono);
        if let Some(limit) = limits.daily {
            if e.rec.daily >= limit {
                let err = ApiError::DailyLimitExceeded {
                    retry_after: e.secs_until_new_day(now),
                };
                return Err((err, e.rec.total, e.rec.daily));
            }
        }
        if limits.per_minute > 0 {
            let (start, count) = match e.window {
                Some((start, count)) if now.mono.saturating_duration_since(start) < MINUTE => {
                    (start, count)
                }
                _ => (now.mono, 0),
            };
            if count >= limits.per_minute {
                let left = MINUTE.saturating_sub(now.mono.saturating_duration_since(start));
                let err = ApiError::RateLimited {
                    retry_after: ceil_secs(left),
                };
                return Err((err, e.rec.total, e.rec.daily));
            }
            e.window = Some((start, count + 1));
        }
        e.rec.total += 1;
        e.rec.daily += 1;
        e.rec.last_used = now.wall_ms;
        e.dirty = true;
        Ok((e.rec.total, e.rec.daily))
    }

    /// Current counters of a user, with the daily one shown as 0 when the next request
    /// would start a new day.
    pub fn get(&self, user: &str, now: Now) -> UsageRecord {
        let map = lock(&self.entries);
        let Some(e) = map.get(user) else {
            return UsageRecord::default();
        };
        let mut rec = e.rec;
        if e.new_day(day_of(now.wall_ms), now.mono) {
            rec.daily = 0;
        }
        rec
    }

    /// Takes the counters changed since the last call, marking them clean.
    pub fn take_dirty(&self) -> Vec<(String, UsageRecord)> {
        let mut map = lock(&self.entries);
        map.iter_mut()
            .filter(|(_, e)| e.dirty)
            .map(|(name, e)| {
                e.dirty = false;
                (name.clone(), e.rec)
            })
            .collect()
    }

    /// Marks counters dirty again after a failed write so the next batch retries them.
    pub fn mark_dirty(&self, names: &[(String, UsageRecord)]) {
        let mut map = lock(&self.entries);
        for (name, _) in names {
            if let Some(e) = map.get_mut(name) {
                e.dirty = true;
            }
        }
    }

    /// Forgets a removed user.
    pub fn remove(&self, user: &str) {
        lock(&self.entries).remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock for tests: wall and monotonic time set independently, as a clock step
    /// does in the field.
    struct Clock {
        base: Instant,
    }

    impl Clock {
        fn new() -> Clock {
            Clock {
                base: Instant::now(),
            }
        }

        /// `wall_ms` on the wall clock, `mono_ms` after the start on the monotonic one.
        fn at(&self, wall_ms: i64, mono_ms: u64) -> Now {
            Now {
                wall_ms,
                mono: self.base + Duration::from_millis(mono_ms),
            }
        }
    }

    const NONE: Limits = Limits {
        daily: None,
        per_minute: 0,
    };

    #[test]
    fn counts_and_rolls_over_at_midnight() {
        let u = Usage::default();
        let c = Clock::new();
        let d = 10 * DAY_MS;
        assert_eq!(u.count("a", NONE, c.at(d + 5, 0)).unwrap(), (1, 1));
        assert_eq!(u.count("a", NONE, c.at(d + 6, 1)).unwrap(), (2, 2));
        assert_eq!(u.count("a", NONE, c.at(d + DAY_MS, 2)).unwrap(), (3, 1));
        assert_eq!(u.count("b", NONE, c.at(d + DAY_MS, 2)).unwrap(), (1, 1));
    }

    #[test]
    fn limits_refuse_without_counting() {
        let u = Usage::default();
        let c = Clock::new();
        let daily = Limits {
            daily: Some(2),
            per_minute: 0,
        };
        let t = 10 * DAY_MS;
        u.count("a", daily, c.at(t, 0)).unwrap();
        u.count("a", daily, c.at(t, 0)).unwrap();
        let (err, total, today) = u.count("a", daily, c.at(t + 1000, 1000)).unwrap_err();
        assert_eq!((err.code(), total, today), ("daily_limit_exceeded", 2, 2));
        assert_eq!(
            err,
            ApiError::DailyLimitExceeded {
                retry_after: 86_399
            }
        );
        let rpm = Limits {
            daily: None,
            per_minute: 1,
        };
        u.count("b", rpm, c.at(t, 0)).unwrap();
        let (err, ..) = u.count("b", rpm, c.at(t + 59_000, 59_000)).unwrap_err();
        assert_eq!(err, ApiError::RateLimited { retry_after: 1 });
        assert_eq!(u.count("b", rpm, c.at(t + 60_000, 60_000)).unwrap(), (2, 2));
    }

    /// The minute window is monotonic: a wall-clock step back by ten years neither
    /// stretches the wait (it was `Retry-After: 315360060`) nor does a step forward end
    /// it; a minute later on the monotonic clock the window opens whatever the wall says.
    #[test]
    fn rate_window_ignores_wall_clock_steps() {
        let u = Usage::default();
        let c = Clock::new();
        let rpm = Limits {
            daily: None,
            per_minute: 2,
        };
        let t = 20_000 * DAY_MS;
        let ten_years = 3650 * DAY_MS;
        u.count("a", rpm, c.at(t, 0)).unwrap();
        u.count("a", rpm, c.at(t, 10)).unwrap();
        for wall in [t - ten_years, t + 3_600_000, t + ten_years] {
            let (err, ..) = u.count("a", rpm, c.at(wall, 30_000)).unwrap_err();
            assert_eq!(
                err,
                ApiError::RateLimited { retry_after: 30 },
                "wall {wall}"
            );
        }
        // (The step forward by ten years did start a new UTC day: daily is 1.)
        assert_eq!(
            u.count("a", rpm, c.at(t - ten_years, 60_000)).unwrap(),
            (3, 1)
        );
    }

    /// A daily limit of 5 and a clock that crosses midnight forwards, then steps back
    /// across it: the step back does not start another day (it used to, admitting 15
    /// requests in one real day); the day that was counted goes on.
    #[test]
    fn a_backward_step_across_midnight_does_not_refill_the_daily_budget() {
        let u = Usage::default();
        let c = Clock::new();
        let five = Limits {
            daily: Some(5),
            per_minute: 0,
        };
        let midnight = 20_000 * DAY_MS;
        let mut admitted = Vec::new();
        for (wall, mono) in [
            (midnight - 10_000, 0),
            (midnight + 10_000, 5_000),
            (midnight - 5_000, 10_000),
        ] {
            let n = (0..10)
                .take_while(|_| u.count("a", five, c.at(wall, mono)).is_ok())
                .count();
            admitted.push(n);
        }
        assert_eq!(admitted, vec![5, 5, 0]);
        // Refused after the step back: the wait is for the day that is counted, which
        // began on the monotonic clock 5 s ago, so it ends a day after that at most.
        let (err, _, daily) = u
            .count("a", five, c.at(midnight - 5_000, 10_000))
            .unwrap_err();
        assert_eq!(daily, 5);
        assert_eq!(
            err,
            ApiError::DailyLimitExceeded {
                retry_after: 86_395
            }
        );
        assert_eq!(u.get("a", c.at(midnight - 5_000, 10_000)).daily, 5);
    }

    /// A clock that was years ahead and is then set right does not freeze the daily
    /// count until that future day: a day later on the monotonic clock it starts over.
    #[test]
    fn a_clock_set_back_by_years_refills_after_a_real_day() {
        let u = Usage::default();
        let c = Clock::new();
        let one = Limits {
            daily: Some(1),
            per_minute: 0,
        };
        let future = 30_000 * DAY_MS;
        let real = 20_000 * DAY_MS + 3_600_000;
        u.count("a", one, c.at(future, 0)).unwrap();
        let (err, ..) = u.count("a", one, c.at(real, 1_000)).unwrap_err();
        assert_eq!(
            err,
            ApiError::DailyLimitExceeded {
                retry_after: 86_399
            }
        );
        let day_ms = 86_400_000;
        assert!(u.count("a", one, c.at(real + 1_000, day_ms - 1)).is_err());
        assert_eq!(u.get("a", c.at(real + 1_000, day_ms)).daily, 0);
        assert_eq!(
            u.count("a", one, c.at(real + 1_000, day_ms)).unwrap(),
            (2, 1)
        );
        // From then on the wall clock's days count again.
        assert!(u.count("a", one, c.at(real + 2_000, day_ms + 1)).is_err());
        assert_eq!(
            u.count("a", one, c.at(real + DAY_MS, day_ms + 2)).unwrap(),
            (3, 1)
        );
    }

    /// Counts loaded from the store carry no monotonic start: the day counted goes on
    /// until the wall clock leaves it or a day after the first request of this run.
    #[test]
    fn loaded_counts_keep_their_day() {
        let day = 20_000;
        let u = Usage::load(vec![(
            "a".into(),
            UsageRecord {
                total: 7,
                day: day + 1,
                daily: 3,
                last_used: 0,
            },
        )]);
        let c = Clock::new();
        let three = Limits {
            daily: Some(3),
            per_minute: 0,
        };
        let wall = day * DAY_MS + 1_000;
        assert!(u.count("a", three, c.at(wall, 0)).is_err());
        assert_eq!(u.get("a", c.at(wall, 0)).daily, 3);
        assert_eq!(u.count("a", three, c.at(wall, 86_400_000)).unwrap(), (8, 1));
    }
}
