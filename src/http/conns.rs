//! Connection bookkeeping for the accept loop. Every connection registers here, says
//! when a request starts and ends, and its socket is wrapped in [`Watched`], which sees
//! whether the client is taking our answers. So that:
//!
//! - every connection makes progress or goes: a write that the client does not take
//!   for `limits.write_timeout_secs` (it stopped reading; its socket buffers are full)
//!   ends the connection, the way a header or body timeout ends one that stopped
//!   sending. A client that reads, but slower than `limits.min_read_bytes_per_sec`
//!   while the server waits for it, is cut too: measured over `RATE_WINDOW` (or the
//!   write timeout, if shorter) of waiting, so a client that keeps up is never measured, and one that pauses a
//!   moment is not cut for it. (A slow reader of a 4 MiB page would otherwise hold it
//!   for as long as it liked; the answer budget bounds their sum, this frees it.)
//! - answers do not pile up for a client that does not read them: while the previous
//!   answer is stuck (a write blocked), the next pipelined request waits before it is
//!   handled, so what is answered but unread is bounded by the socket buffers plus one
//!   answer (itself bounded: pages stop at `limits.max_page_bytes`, long lists stream).
//! - at `limits.max_connections`, a new client does not wait behind connections that
//!   are doing nothing: first the connection idle the longest (no request in progress
//!   and nothing left to write — a keep-alive connection between requests, or one that
//!   has not finished sending a request head, as a slowloris client never does) is
//!   closed, the way nginx reuses idle keep-alive connections when it runs out; failing
//!   that, the connections whose writes have been blocked the longest (at least
//!   `STALLED_AFTER`) are cut, up to `CUT_BATCH` at once. Connections inside a request whose client reads are never
//!   cut; when every connection is busy, new clients queue in the listen backlog.
//! - at shutdown, connections that never started a request close at once, and the
//!   others finish their current request and close (hyper's graceful shutdown).
//!
//! Closing gracefully is safe for a connection that never started a request (nothing
//! can be in flight); for one that has served requests, hyper's `graceful_shutdown`
//! closes it only if it is idle and otherwise lets the current exchange finish, so no
//! answer is cut. A stalled connection is cut without that courtesy: its client has
//! stopped reading, so the exchange would never finish.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Incoming};
use hyper::rt::{Read, Write};
use hyper::server::conn::http1;
use hyper::service::HttpService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit};

use crate::metrics::ConnStats;
use crate::sync::lock;

/// A connection whose writes have been blocked this long is "stalled": at the
/// connection limit it may be cut to make room. Short enough that a new client is
/// answered within a second even when every other connection stalls; long enough that
/// a client that is merely slow for a moment (a full window on a busy link) is spared
/// while idle connections exist.
pub const STALLED_AFTER: Duration = Duration::from_millis(250);

/// Stalled connections cut at once when room is needed (see `Conns::make_room`).
pub const CUT_BATCH: usize = 16;

/// How long the server must have waited for a client's reads before their rate is
/// judged against `limits.min_read_bytes_per_sec`: this, or the write timeout when
/// that is shorter.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Every open connection of one server.
pub struct Conns {
    table: Mutex<HashMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
    epoch: Instant,
    stats: Arc<ConnStats>,
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
    /// 1 + the ms (since `Conns::epoch`) at which a write started to wait for the
    /// client; 0 while nothing waits.
    blocked_since: AtomicU64,
    /// Woken when a blocked write makes progress.
    drained: Notify,
    /// Asks the connection to close (eviction).
    evict: Notify,
    /// Already asked; not picked again.
    evicting: AtomicBool,
    /// The eviction is a cut (the client stopped reading), not a graceful close.
    cut: AtomicBool,
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
    pub fn new(stats: Arc<ConnStats>) -> Arc<Conns> {
        Arc::new(Conns {
            table: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
            stats,
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
        self.stats.open.fetch_add(1, Ordering::Relaxed);
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

    /// Asks one connection to close to make room: the one idle the longest, else the
    /// ones stalled the longest — up to `CUT_BATCH` of them at once, since clients that
    /// stopped reading rarely come alone, and each cut frees its permit only once its
    /// task has run: one at a time, a new client queued in the backlog behind a few
    /// dozen others waited seconds for its turn. False when every connection is inside
    /// a request or writing to a client that reads.
    pub fn make_room(&self) -> bool {
        let now = self.now();
        let stalled_ms = u64::try_from(STALLED_AFTER.as_millis()).unwrap_or(u64::MAX);
        let table = lock(&self.table);
        let idle = table
            .values()
            .filter(|c| {
                !c.evicting.load(Ordering::Relaxed)
                    && c.busy.load(Ordering::Relaxed) == 0
                    && c.blocked_since() == 0
            })
            .min_by_key(|c| c.last_active.load(Ordering::Relaxed));
        if let Some(victim) = idle {
            victim.cut.store(false, Ordering::Relaxed);
            victim.evicting.store(true, Ordering::Relaxed);
            victim.evict.notify_one();
            self.stats.evicted_idle.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        // One asked to close gracefully may have stalled since: it can be cut.
        let mut stalled: Vec<&Arc<ConnState>> = table
            .values()
            .filter(|c| !c.cut.load(Ordering::Relaxed))
            .filter(|c| {
                let since = c.blocked_since();
                since != 0 && now.saturating_sub(since - 1) >= stalled_ms
            })
            .collect();
        stalled.sort_by_key(|c| c.blocked_since());
        for victim in stalled.iter().take(CUT_BATCH) {
            victim.cut.store(true, Ordering::Relaxed);
            victim.evicting.store(true, Ordering::Relaxed);
            victim.evict.notify_one();
            self.stats.evicted_stalled.fetch_add(1, Ordering::Relaxed);
        }
        !stalled.is_empty()
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        lock(&self.conns.table).remove(&self.id);
        self.conns.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnState {
    /// Resolves when the connection is asked to close to make room.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }

    fn blocked_since(&self) -> u64 {
        self.blocked_since.load(Ordering::Relaxed)
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

    /// Resolves once no write of this connection waits for the client: a pipelined
    /// request is handled only when the answers before it are moving.
    pub async fn drained(&self) {
        loop {
            let woken = self.state.drained.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.state.blocked_since() == 0 {
                return;
            }
            woken.await;
        }
    }

    /// Wraps the connection's socket so that its writes are watched (see [`Watched`]):
    /// cut after `timeout` without progress, or when it reads slower than `min_rate`
    /// bytes a second while writes wait for it (0: never).
    pub fn watch<S>(&self, io: S, timeout: Duration, min_rate: u64) -> Watched<S> {
        Watched {
            io,
            state: Arc::clone(&self.state),
            conns: Arc::clone(&self.conns),
            timeout,
            stall: None,
            min_rate,
            blocked_at: None,
            window: None,
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

/// A socket whose writes are watched: when the kernel will not take more bytes (the
/// client is not reading), the connection is marked blocked, and if that lasts for the
/// write timeout without any progress, the write fails with `TimedOut`, which ends the
/// connection; so does a client that takes its answers slower than the least rate.
/// Reads pass through untouched (hyper times those itself).
pub struct Watched<S> {
    io: S,
    state: Arc<ConnState>,
    conns: Arc<Conns>,
    timeout: Duration,
    /// Armed when a write first waits; cleared on progress.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// `limits.min_read_bytes_per_sec` (0: not measured).
    min_rate: u64,
    /// When the current wait for the client began.
    blocked_at: Option<Instant>,
    /// Since the first wait of the current measurement: (time spent waiting, bytes the
    /// client took).
    window: Option<(Duration, u64)>,
}

impl<S> Watched<S> {
    fn watch<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                if self.stall.take().is_some() {
                    if let (Some(at), Some((waited, _))) =
                        (self.blocked_at.take(), &mut self.window)
                    {
                        *waited += at.elapsed();
                    }
                    self.state.blocked_since.store(0, Ordering::Relaxed);
                    self.conns.stats.blocked.fetch_sub(1, Ordering::Relaxed);
                    self.state.drained.notify_waiters();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let stall = match &mut self.stall {
                    Some(s) => s,
                    None => {
                        self.state
                            .blocked_since
                            .store(self.conns.now() + 1, Ordering::Relaxed);
                        self.blocked_at = Some(Instant::now());
                        if self.min_rate > 0 {
                            self.window.get_or_insert((Duration::ZERO, 0));
                        }
                        self.conns.stats.blocked.fetch_add(1, Ordering::Relaxed);
                        self.stall
                            .insert(Box::pin(tokio::time::sleep(self.timeout)))
                    }
                };
                match stall.as_mut().poll(cx) {
                    Poll::Ready(()) => cut(
                        &self.conns.stats.write_timeouts,
                        "the client took none of the answer within limits.write_timeout_secs",
                    ),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S> Watched<S> {
    /// Counts `n` bytes taken by the client; once the server has waited `RATE_WINDOW`
    /// for it, judges the rate (bytes taken over time waited) and starts over, or cuts
    /// the connection when it is below `min_rate`.
    fn took(&mut self, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        let (Poll::Ready(Ok(n)), Some((waited, bytes))) = (&r, &mut self.window) else {
            return r;
        };
        *bytes = bytes.saturating_add(*n as u64);
        if *waited < RATE_WINDOW.min(self.timeout) {
            return r;
        }
        let least = u128::from(self.min_rate) * waited.as_millis() / 1000;
        if u128::from(*bytes) >= least {
            self.window = None;
            return r;
        }
        cut(
            &self.conns.stats.slow_readers,
            "the client took its answer slower than limits.min_read_bytes_per_sec",
        )
    }
}

/// Ends a write that the client does not take: counted in `counter`, and the error
/// hyper sees (`TimedOut`) closes the connection.
fn cut<T>(counter: &AtomicU64, why: &'static str) -> Poll<io::Result<T>> {
    counter.fetch_add(1, Ordering::Relaxed);
    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
}

impl<S> Drop for Watched<S> {
    fn drop(&mut self) {
        if self.stall.is_some() {
            self.conns.stats.blocked.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        let r = self.watch(cx, r);
        self.took(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        let r = self.watch(cx, r);
        self.took(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, r)
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
            // Listened to also while closing: an idle connection asked to close
            // gracefully may have stalled since, and then it is cut.
            () = state.evict.notified() => {
                if state.cut.load(Ordering::Relaxed) {
                    return Ok(());
                }
            }
            changed = shutdown.changed(), if !closing => {
                if changed.is_ok() && !*shutdown.borrow() {
                    continue;
                }
            }
        }
        if closing {
            continue;
        }
        // Evicted, or the server is stopping.
        if state.served.load(Ordering::Relaxed) == 0 && state.busy.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        conn.as_mut().graceful_shutdown();
        closing = true;
    }
}
