//! Locking helpers shared by every layer. Lives apart from the store so that the HTTP
//! layer, auth, usage and metrics need not import `store` to lock their own mutexes.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks a mutex, recovering from poisoning: the data behind these mutexes stays
/// consistent even if a holder panicked (counters, tables replaced whole, queues).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
