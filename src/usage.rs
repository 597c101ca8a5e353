//! Per-user usage counters and limits (api.md §3). Counters live in memory and are
//! written to the store in batches every second and at shutdown, which is what §3
//! allows (a crash may lose the last second of counts, never group data). Limits are
//! checked and counted under one mutex, so they hold exactly under concurrency.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::ApiError;
use crate::store::lock;
use crate::store::users::UsageRecord;
use crate::time::{day_of, secs_until_next_day};

#[derive(Debug, Default)]
struct Entry {
    rec: UsageRecord,
    dirty: bool,
    /// Start (ms) and count of the current one-minute rate window.
    window_start: i64,
    window_count: u64,
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
        now: i64,
    ) -> Result<(u64, u64), (ApiError, u64, u64)> {
        let mut map = lock(&self.entries);
        // Look up before inserting so the common case does not allocate a key.
        if !map.contains_key(user) {
            map.insert(user.to_string(), Entry::default());
        }
        let Some(e) = map.get_mut(user) else {
            return Err((ApiError::Internal("usage entry vanished".into()), 0, 0));
        };
        let today = day_of(now);
        if e.rec.day != today {
            e.rec.day = today;
            e.rec.daily = 0;
            e.dirty = true;
        }
        if let Some(limit) = limits.daily {
            if e.rec.daily >= limit {
                let err = ApiError::DailyLimitExceeded {
                    retry_after: secs_until_next_day(now),
                };
                return Err((err, e.rec.total, e.rec.daily));
            }
        }
        if limits.per_minute > 0 {
            if now - e.window_start >= 60_000 {
                e.window_start = now;
                e.window_count = 0;
            }
            if e.window_count >= limits.per_minute {
                let retry = (e.window_start + 60_000 - now + 999) / 1000;
                let err = ApiError::RateLimited {
                    retry_after: u64::try_from(retry).unwrap_or(1).max(1),
                };
                return Err((err, e.rec.total, e.rec.daily));
            }
            e.window_count += 1;
        }
        e.rec.total += 1;
        e.rec.daily += 1;
        e.rec.last_used = now;
        e.dirty = true;
        Ok((e.rec.total, e.rec.daily))
    }

    /// Current counters of a user, with the daily one reset if the day has changed.
    pub fn get(&self, user: &str, now: i64) -> UsageRecord {
        let map = lock(&self.entries);
        let mut rec = map.get(user).map(|e| e.rec).unwrap_or_default();
        if rec.day != day_of(now) {
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

    const DAY: i64 = 86_400_000;

    #[test]
    fn counts_and_rolls_over_at_midnight() {
        let u = Usage::default();
        let none = Limits {
            daily: None,
            per_minute: 0,
        };
        assert_eq!(u.count("a", none, 10 * DAY + 5).unwrap(), (1, 1));
        assert_eq!(u.count("a", none, 10 * DAY + 6).unwrap(), (2, 2));
        assert_eq!(u.count("a", none, 11 * DAY).unwrap(), (3, 1));
        assert_eq!(u.count("b", none, 11 * DAY).unwrap(), (1, 1));
    }

    #[test]
    fn limits_refuse_without_counting() {
        let u = Usage::default();
        let daily = Limits {
            daily: Some(2),
            per_minute: 0,
        };
        let t = 10 * DAY;
        u.count("a", daily, t).unwrap();
        u.count("a", daily, t).unwrap();
        let (err, total, today) = u.count("a", daily, t + 1000).unwrap_err();
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
        u.count("b", rpm, t).unwrap();
        let (err, ..) = u.count("b", rpm, t + 59_000).unwrap_err();
        assert_eq!(err, ApiError::RateLimited { retry_after: 1 });
        assert_eq!(u.count("b", rpm, t + 60_000).unwrap(), (2, 2));
    }
}
