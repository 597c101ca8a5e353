//! Connection bookkeeping for the accept loop. Every connection registers here and
//! says when a request starts and ends, so that:
//!
//! - at `limits.max_connections`, a new client does not wait behind connections that
//!   are doing nothing: the connection idle the longest (no request in progress — a
//!   keep-alive connection between requests, or one that has not finished sending a
//!   request head, as a slowloris client never does) is closed to make room, the way
//!   nginx reuses idle keep-alive connections when it runs out. Connections inside a
//!   request are never cut; when every connection is busy, new clients queue in the
//!   listen backlog until one finishes.
//! - at shutdown, connections that never started a request close at once, and the
//!   others finish their current request and close (hyper's graceful shutdown).
//!
//! Closing is safe for a connection that never started a request (nothing can be in
//! flight); for one that has served requests, hyper's `graceful_shutdown` closes it only
//! if it is idle and otherwise lets the current exchange finish, so no answer is cut.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hyper::body::{Body, Incoming};
use hyper::rt::{Read, Write};
use hyper::server::conn::http1;
use hyper::service::HttpService;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit};

use crate::store::lock;

/// Every open connection of one server.
pub struct Conns {
    table: Mutex<HashMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
    epoch: Instant,
}

/// What the accept loop knows about one connection.
#[derive(Default)]
pub struct ConnState {
    /// Requests in progress (a handler running).
    busy: AtomicU64,
    /// Requests started on this connection.
    served: AtomicU64,
    /// Last accept, request start or request end (ms since `Conns::epoch`).
    last_active: AtomicU64,
    /// Asks the connection to close (eviction).
    evict: Notify,
    /// Already asked; not picked again.
    evicting: std::sync::atomic::AtomicBool,
}

/// A registered connection; leaves the table when dropped, and only then gives its
/// connection permit back. (In the other order, the accept loop could take the freed
/// permit, find the same connection still in the table, pick it as the next victim and
/// wait for a permit that never comes.)
pub struct ConnHandle {
    conns: Arc<Conns>,
    id: u64,
    pub state: Arc<ConnState>,
    _permit: OwnedSemaphorePermit,
}

/// Marks a request in progress until dropped (also when hyper drops the handler
/// because the client went away).
pub struct RequestGuard {
    conns: Arc<Conns>,
    state: Arc<ConnState>,
}

impl Conns {
    pub fn new() -> Arc<Conns> {
        Arc::new(Conns {
            table: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Registers a newly accepted connection holding `permit`.
    pub fn register(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> ConnHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::default());
        state.last_active.store(self.now(), Ordering::Relaxed);
        lock(&self.table).insert(id, Arc::clone(&state));
        ConnHandle {
            conns: Arc::clone(self),
            id,
            state,
            _permit: permit,
        }
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        lock(&self.table).len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks the connection idle the longest to close. False when every connection is
    /// inside a request.
    pub fn evict_idle(&self) -> bool {
        let table = lock(&self.table);
        let victim = table
            .values()
            .filter(|c| c.busy.load(Ordering::Relaxed) == 0 && !c.evicting.load(Ordering::Relaxed))
            .min_by_key(|c| c.last_active.load(Ordering::Relaxed));
        match victim {
            Some(c) => {
                c.evicting.store(true, Ordering::Relaxed);
                c.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        lock(&self.conns.table).remove(&self.id);
    }
}

impl ConnState {
    /// Resolves when the connection is asked to close to make room.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl ConnHandle {
    /// Call when a request's head has arrived and its handler starts.
    pub fn begin_request(&self) -> RequestGuard {
        self.state.busy.fetch_add(1, Ordering::Relaxed);
        self.state.served.fetch_add(1, Ordering::Relaxed);
        self.state
            .last_active
            .store(self.conns.now(), Ordering::Relaxed);
        RequestGuard {
            conns: Arc::clone(&self.conns),
            state: Arc::clone(&self.state),
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.state
            .last_active
            .store(self.conns.now(), Ordering::Relaxed);
        self.state.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Drives one HTTP/1 connection until it ends, closing it early when it is evicted or
/// the server shuts down (see the module comment for why that is safe).
pub async fn run<I, S, B>(
    conn: http1::Connection<I, S>,
    state: &ConnState,
    mut shutdown: watch::Receiver<bool>,
) -> hyper::Result<()>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    I: Read + Write + Unpin,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    http1::Connection<I, S>: Future<Output = hyper::Result<()>>,
{
    tokio::pin!(conn);
    let mut closing = *shutdown.borrow();
    if closing {
        return Ok(());
    }
    loop {
        tokio::select! {
            r = conn.as_mut() => return r,
            () = state.evict.notified(), if !closing => {}
            changed = shutdown.changed(), if !closing => {
                if changed.is_ok() && !*shutdown.borrow() {
                    continue;
                }
            }
        }
        // Evicted, or the server is stopping.
        if state.served.load(Ordering::Relaxed) == 0 && state.busy.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        conn.as_mut().graceful_shutdown();
        closing = true;
    }
}
