//! Argon2id key verification on a fixed pool of dedicated threads, each reusing one
//! memory buffer while logins keep coming. Why not `spawn_blocking` with argon2's own
//! allocation: every verification allocates ~19 MiB, and glibc keeps freed blocks of
//! that size in the arena of whichever blocking-pool thread ran it, so a login burst
//! spread over many threads grew the RSS by hundreds of MiB. Here memory is bounded by
//! `auth.hash_concurrency` buffers, allocated on a worker's first job (so an idle server
//! holds none), and a burst of logins queues on the pool instead of on the async workers.
//!
//! A worker gives its buffer back [`KEEP_BUFFER`] after its last job. Kept for the life
//! of the process, one login made the 19 MiB part of every later figure: bench/run.sh
//! logs in before it seeds, and the buffer was a fifth of the peak RSS while writing
//! (issue 10). A buffer that large is its own mapping, unmapped when it is dropped,
//! because `main.rs` fixes glibc's mmap threshold at 128 KiB (without that, freeing it
//! once would raise the threshold past 19 MiB and the next buffer would stay resident
//! in the worker's arena after it is freed).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use argon2::password_hash::Output;
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::key_hash::within_bounds;

/// The log target, kept from before the module moved into a folder: `log.level`
/// directives name it (`fleetgroups::hashing=debug`), so a move must not change it.
const LOG: &str = "fleetgroups::hashing";

struct Job {
    phc: String,
    key: String,
    done: oneshot::Sender<bool>,
}

/// The jobs waiting for a worker; `closed` once the verifier is dropped or the last
/// worker has ended (a panic), so that no job waits for a worker that is gone.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
    workers: usize,
    /// How many times an idle worker has given its buffer back: what a test waits on
    /// instead of guessing how long the idle wait takes.
    freed: u64,
}

type Shared = Arc<(Mutex<Queue>, Condvar)>;

/// How long a worker keeps its buffer after a verification. Logins in a burst (or a
/// steady 20/s) reuse it; an idle server goes back to holding none. Freeing and
/// touching the buffer again costs ~5 ms of page faults per login after a pause,
/// against ~25 ms of argon2.
pub const KEEP_BUFFER: Duration = Duration::from_secs(2);

/// The verification pool.
pub struct Verifier {
    shared: Shared,
}

impl Verifier {
    /// Starts `threads` workers.
    pub fn start(threads: usize) -> Result<Verifier, ApiError> {
        let shared: Shared = Arc::default();
        for i in 0..threads.max(1) {
            let theirs = Arc::clone(&shared);
            crate::sync::lock(&shared.0).workers += 1;
            std::thread::Builder::new()
                .name(format!("fg-argon2-{i}"))
                .spawn(move || worker(&theirs, KEEP_BUFFER))
                .map_err(|e| {
                    crate::sync::lock(&shared.0).workers -= 1;
                    ApiError::Internal(format!("cannot start hashing thread: {e}"))
                })?;
        }
        Ok(Verifier { shared })
    }

    /// Whether `key` matches the argon2 PHC string `phc`. A malformed PHC never matches.
    pub async fn verify(&self, phc: String, key: String) -> Result<bool, ApiError> {
        let (done, answer) = oneshot::channel();
        {
            let (queue, ready) = &*self.shared;
            let mut q = crate::sync::lock(queue);
            if q.closed {
                return Err(ApiError::Unavailable("the hashing pool has stopped".into()));
            }
            q.jobs.push_back(Job { phc, key, done });
            ready.notify_one();
        }
        answer
            .await
            .map_err(|_| ApiError::Internal("a hashing thread ended without an answer".into()))
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        // The workers end once the queue is empty.
        let (queue, ready) = &*self.shared;
        crate::sync::lock(queue).closed = true;
        ready.notify_all();
    }
}

/// The nice value of the hashing threads. An argon2 verification is ~25 ms of CPU and
/// ~19 MiB of memory traffic; at the default priority a steady trickle of logins takes
/// whole time slices from the async workers, and on a 2-core gateway GET latency
/// (p99) doubled at 20 logins a second. A lower priority lets the scheduler run request
/// work first and the hashing in the gaps: logins take a little longer under load, the
/// parameters stay as they are.
const HASHING_NICE: i32 = 10;

fn worker(shared: &Shared, keep: Duration) {
    // Per thread on Linux (setpriority on the thread's own ID). Raising one's own nice
    // value needs no privilege; if the system refuses anyway, hashing runs as before.
    let me = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(me), HASHING_NICE) {
        tracing::debug!(target: LOG, error = %e, "could not lower the hashing thread's priority");
    }
    let _running = Running(shared);
    let mut blocks: Vec<Block> = Vec::new();
    while let Some(job) = next_job(shared, &mut blocks, keep) {
        let ok = verify_with(&mut blocks, &job.phc, job.key.as_bytes()).unwrap_or(false);
        let _ = job.done.send(ok);
    }
}

/// A worker's place in `Queue::workers`; the last one to end closes the queue and
/// drops the jobs still in it, whose callers then get an error instead of waiting.
struct Running<'a>(&'a Shared);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut q = crate::sync::lock(&self.0 .0);
        q.workers -= 1;
        if q.workers == 0 {
            q.closed = true;
            q.jobs.clear();
        }
    }
}

/// The next job, or `None` once the verifier is gone and the queue is empty. Waiting
/// longer than `keep` ([`KEEP_BUFFER`]) frees `blocks`.
fn next_job(shared: &Shared, blocks: &mut Vec<Block>, keep: Duration) -> Option<Job> {
    let (queue, ready) = &**shared;
    let mut q = crate::sync::lock(queue);
    loop {
        if let Some(job) = q.jobs.pop_front() {
            return Some(job);
        }
        if q.closed {
            return None;
        }
        q = if blocks.capacity() == 0 {
            ready
                .wait(q)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        } else {
            let (mut q, waited) = ready
                .wait_timeout(q, keep)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if waited.timed_out() && q.jobs.is_empty() {
                *blocks = Vec::new();
                q.freed += 1;
            }
            q
        };
    }
}

/// Recomputes the hash of `key` with the parameters and salt of `phc` into the reused
/// `blocks` and compares in constant time (`Output`'s equality is constant-time).
fn verify_with(blocks: &mut Vec<Block>, phc: &str, key: &[u8]) -> Option<bool> {
    let hash = PasswordHash::new(phc).ok()?;
    let algorithm = Algorithm::try_from(hash.algorithm).ok()?;
    let version = match hash.version {
        Some(v) => Version::try_from(v).ok()?,
        None => Version::default(),
    };
    let params = Params::try_from(&hash).ok()?;
    if let Err(why) = within_bounds(algorithm, hash.version, &params) {
        tracing::warn!(target: LOG,
            "a stored key hash {why}; it is not computed and the login fails (rotate the user's key)"
        );
        return None;
    }
    let expected = hash.hash?;
    let mut salt_buf = [0u8; 64];
    let salt = hash.salt?.decode_b64(&mut salt_buf).ok()?;
    if blocks.len() != params.block_count() {
        blocks.clear();
        blocks.resize(params.block_count(), Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(key, salt, &mut out, &mut blocks[..])
        .ok()?;
    Some(Output::new(&out).ok()? == expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_hash::check_key_hash;

    #[test]
    fn verifies_what_argon2_hashed() {
        let phc = crate::auth::hash_key("fgk_secret").unwrap();
        let mut blocks = Vec::new();
        assert_eq!(verify_with(&mut blocks, &phc, b"fgk_secret"), Some(true));
        assert_eq!(verify_with(&mut blocks, &phc, b"fgk_other"), Some(false));
        assert_eq!(verify_with(&mut blocks, "garbage", b"x"), None);
        // Costlier than this binary's own keys: not computed, whatever the key.
        let costly = phc.replace("m=19456,t=2,p=1", "m=2097152,t=10,p=1");
        assert_ne!(costly, phc);
        assert_eq!(verify_with(&mut blocks, &costly, b"fgk_secret"), None);
        assert!(check_key_hash(&phc).is_ok());
        let why = check_key_hash(&costly).unwrap_err().to_string();
        assert!(why.contains("m=2097152 KiB, t=10, p=1"), "{why}");
        let cheaper = phc.replace("m=19456,t=2,p=1", "m=8192,t=1,p=1");
        assert!(check_key_hash(&cheaper).is_ok());
        assert!(check_key_hash(&phc.replace("argon2id", "argon2i")).is_err());
        assert!(check_key_hash("$argon2id$nonsense").is_err());
    }

    #[test]
    fn an_idle_worker_frees_its_buffer_and_a_busy_one_keeps_it() {
        let shared: Shared = Arc::default();
        let waiter = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let mut blocks = vec![Block::default(); 4];
                let job = next_job(&shared, &mut blocks, Duration::from_millis(20));
                (job.is_none(), blocks.capacity())
            })
        };
        // Close the queue only once the worker has given its buffer back, so the
        // close cannot wake it before its idle wait ends (however slow the machine).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (queue, ready) = &*shared;
            let mut q = crate::sync::lock(queue);
            if q.freed == 1 {
                q.closed = true;
                ready.notify_all();
                break;
            }
            drop(q);
            assert!(
                std::time::Instant::now() < deadline,
                "the idle worker kept its buffer"
            );
            std::thread::yield_now();
        }
        assert_eq!(waiter.join().unwrap(), (true, 0));

        // A job already waiting is taken at once, and the buffer stays.
        let shared: Shared = Arc::default();
        let (done, _answer) = oneshot::channel();
        crate::sync::lock(&shared.0).jobs.push_back(Job {
            phc: String::new(),
            key: String::new(),
            done,
        });
        let mut blocks = vec![Block::default(); 4];
        assert!(next_job(&shared, &mut blocks, Duration::from_millis(20)).is_some());
        assert_eq!(blocks.len(), 4);
    }

    #[tokio::test]
    async fn pool_answers() {
        let v = Verifier::start(1).unwrap();
        let phc = crate::auth::hash_key("k").unwrap();
        assert!(v.verify(phc.clone(), "k".into()).await.unwrap());
        assert!(!v.verify(phc, "j".into()).await.unwrap());
    }
}
