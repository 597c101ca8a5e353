//! Argon2id key verification on a fixed pool of dedicated threads, each reusing one
//! memory buffer. Why not `spawn_blocking` with argon2's own allocation: every
//! verification allocates ~19 MiB, and glibc keeps freed blocks of that size in the
//! arena of whichever blocking-pool thread ran it, so a login burst spread over many
//! threads grew the RSS by hundreds of MiB. Here memory is bounded by
//! `auth.hash_concurrency` buffers, allocated on a worker's first job (so an idle server
//! holds none), and a burst of logins queues on the pool instead of on the async workers.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use argon2::password_hash::Output;
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use tokio::sync::oneshot;

use crate::error::ApiError;

struct Job {
    phc: String,
    key: String,
    done: oneshot::Sender<bool>,
}

/// The verification pool.
pub struct Verifier {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
}

impl Verifier {
    /// Starts `threads` workers.
    pub fn start(threads: usize) -> Result<Verifier, ApiError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("fg-argon2-{i}"))
                .spawn(move || worker(&rx))
                .map_err(|e| ApiError::Internal(format!("cannot start hashing thread: {e}")))?;
        }
        Ok(Verifier {
            jobs: Mutex::new(Some(tx)),
        })
    }

    /// Whether `key` matches the argon2 PHC string `phc`. A malformed PHC never matches.
    pub async fn verify(&self, phc: String, key: String) -> Result<bool, ApiError> {
        let (done, answer) = oneshot::channel();
        let sent = crate::sync::lock(&self.jobs)
            .as_ref()
            .map(|tx| tx.send(Job { phc, key, done }).is_ok())
            .unwrap_or(false);
        if !sent {
            return Err(ApiError::Unavailable("the hashing pool has stopped".into()));
        }
        answer
            .await
            .map_err(|_| ApiError::Internal("a hashing thread ended without an answer".into()))
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        // Dropping the sender ends the workers once the queue is empty.
        crate::sync::lock(&self.jobs).take();
    }
}

/// The nice value of the hashing threads. An argon2 verification is ~25 ms of CPU and
/// ~19 MiB of memory traffic; at the default priority a steady trickle of logins takes
/// whole time slices from the async workers, and on a 2-core gateway GET latency
/// (p99) doubled at 20 logins a second. A lower priority lets the scheduler run request
/// work first and the hashing in the gaps: logins take a little longer under load, the
/// parameters stay as they are.
const HASHING_NICE: i32 = 10;

fn worker(rx: &Mutex<mpsc::Receiver<Job>>) {
    // Per thread on Linux (setpriority on the thread's own ID). Raising one's own nice
    // value needs no privilege; if the system refuses anyway, hashing runs as before.
    let me = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(me), HASHING_NICE) {
        tracing::debug!(error = %e, "could not lower the hashing thread's priority");
    }
    let mut blocks: Vec<Block> = Vec::new();
    loop {
        let job = match crate::sync::lock(rx).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let ok = verify_with(&mut blocks, &job.phc, job.key.as_bytes()).unwrap_or(false);
        let _ = job.done.send(ok);
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

    #[test]
    fn verifies_what_argon2_hashed() {
        let phc = crate::auth::hash_key("fgk_secret").unwrap();
        let mut blocks = Vec::new();
        assert_eq!(verify_with(&mut blocks, &phc, b"fgk_secret"), Some(true));
        assert_eq!(verify_with(&mut blocks, &phc, b"fgk_other"), Some(false));
        assert_eq!(verify_with(&mut blocks, "garbage", b"x"), None);
    }

    #[tokio::test]
    async fn pool_answers() {
        let v = Verifier::start(1).unwrap();
        let phc = crate::auth::hash_key("k").unwrap();
        assert!(v.verify(phc.clone(), "k".into()).await.unwrap());
        assert!(!v.verify(phc, "j".into()).await.unwrap());
    }
}
