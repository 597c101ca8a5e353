//! Byte budgets shared by every client: what all request bodies together
//! (`limits.body_budget_bytes`) and all answers waiting for their clients together
//! (`limits.answer_budget_bytes`) may hold at once. A budget is a semaphore counted in
//! bytes: a request takes its share before the bytes exist (a body, from its declared
//! length or chunk by chunk as it arrives) or as soon as their size is known (an
//! answer), and gives it back when they are gone — so a thousand clients sending large
//! bodies, or reading large answers slowly, cost at most the budget, not a thousand
//! times a body or a page. A share that cannot be had is refused (`server_busy`, 503
//! with `Retry-After`), after a short wait for a body; the refusals are counted for
//! `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One budget of bytes.
pub struct Budget {
    sem: Arc<Semaphore>,
    total: u64,
    refused: AtomicU64,
}

/// A share of a budget, given back when dropped. Empty shares (nothing held) exist so
/// callers need no `Option`.
#[derive(Default)]
pub struct Share {
    permit: Option<OwnedSemaphorePermit>,
}

impl Budget {
    /// A budget of `total` bytes (at most what a semaphore can count).
    pub fn new(total: u64) -> Budget {
        let total = total.min(Semaphore::MAX_PERMITS as u64);
        Budget {
            sem: Arc::new(Semaphore::new(usize::try_from(total).unwrap_or(usize::MAX))),
            total,
            refused: AtomicU64::new(0),
        }
    }

    /// `n` bytes at once, if they are free now; else None (counted as refused).
    pub fn try_take(&self, n: u64) -> Option<Share> {
        match Arc::clone(&self.sem).try_acquire_many_owned(permits(n)) {
            Ok(p) => Some(Share { permit: Some(p) }),
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// `n` bytes, waiting up to `wait` for them to be given back; None (counted as
    /// refused) when they were not. More than the whole budget is never had.
    pub async fn take(&self, n: u64, wait: Duration) -> Option<Share> {
        if n > self.total {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let acquire = Arc::clone(&self.sem).acquire_many_owned(permits(n));
        match tokio::time::timeout(wait, acquire).await {
            Ok(Ok(p)) => Some(Share { permit: Some(p) }),
            _ => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Adds `n` bytes to `share`, waiting up to `wait`; false (counted) when refused.
    pub async fn grow(&self, share: &mut Share, n: u64, wait: Duration) -> bool {
        match self.take(n, wait).await {
            Some(more) => {
                share.merge(more);
                true
            }
            None => false,
        }
    }

    /// The budget's size in bytes.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes held now.
    pub fn in_use(&self) -> u64 {
        self.total
            .saturating_sub(self.sem.available_permits() as u64)
    }

    /// Bytes free now.
    pub fn free(&self) -> u64 {
        self.sem.available_permits() as u64
    }

    /// Counts a refusal made without asking for a share (`free` said there was no room).
    pub fn refuse(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Shares refused since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Share {
    /// Bytes this share holds.
    pub fn bytes(&self) -> u64 {
        self.permit.as_ref().map_or(0, |p| p.num_permits() as u64)
    }

    fn merge(&mut self, other: Share) {
        match (&mut self.permit, other.permit) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }
}

/// Semaphore permits for `n` bytes: a semaphore takes at most `u32::MAX` at once, and
/// nothing a budget admits is that large (bodies and pages are limited far below).
fn permits(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shares_are_held_until_dropped_and_refusals_counted() {
        let b = Budget::new(100);
        let a = b.try_take(60).unwrap();
        assert_eq!((b.in_use(), a.bytes()), (60, 60));
        assert!(b.try_take(50).is_none());
        assert!(b.take(50, Duration::from_millis(10)).await.is_none());
        assert!(b.take(101, Duration::from_secs(60)).await.is_none());
        assert_eq!(b.refused(), 3);
        let mut c = b.take(40, Duration::from_millis(10)).await.unwrap();
        assert!(!b.grow(&mut c, 1, Duration::from_millis(10)).await);
        drop(a);
        assert!(b.grow(&mut c, 50, Duration::from_millis(10)).await);
        assert_eq!((b.in_use(), c.bytes()), (90, 90));
        drop(c);
        assert_eq!(b.in_use(), 0);
    }

    #[tokio::test]
    async fn a_waiting_share_gets_what_is_given_back() {
        let b = Arc::new(Budget::new(10));
        let held = b.try_take(10).unwrap();
        let waiter = {
            let b = Arc::clone(&b);
            tokio::spawn(async move { b.take(5, Duration::from_secs(30)).await.map(|s| s.bytes()) })
        };
        drop(held);
        assert_eq!(waiter.await.unwrap(), Some(5));
    }
}
