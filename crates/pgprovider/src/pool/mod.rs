//! The connection pool: one per node.
//!
//! A FIFO-fair [`tokio::sync::Semaphore`] bounds the connections; idle connections wait in
//! a short-locked queue (never locked across an await). A checkout takes a permit, reuses
//! the most recently returned idle connection (so surplus ones age out) or opens a new one,
//! and returns a [`Pooled`] guard. Dropping the guard returns the connection, unless it is
//! broken, past its lifetime, or the pool is closed, in which case it is closed.
//!
//! A returned connection whose session may carry state (an open transaction, changed
//! settings: see [`Connection::needs_reset`]) is reset first, in a task of its own, and
//! closed if the reset fails; the next user never inherits it.
//!
//! Why hand-written and not deadpool or bb8: the pool is the heart of the provider (per-node
//! pools, tenant quotas, leak detection, multiplexing), and DESIGN.md requires it to beat both.
//!
//! One deadline covers the whole checkout: waiting for a permit, validating idle
//! connections and opening new ones, with backoff between failed connection attempts. A
//! timeout error names the node, the pool's state and the last connection error.

mod stats;

pub use stats::PoolStats;
use stats::{CloseReason, Counters};

use crate::config::{Config, Node, ValidationPolicy};
use pgprovider_core::{Connection, Driver, Error, ErrorKind, Result};
use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// A pool of connections to one node.
///
/// Cloning is cheap and shares the pool.
///
/// ```no_run
/// # async fn run() -> Result<(), pgprovider::Error> {
/// use pgprovider::{Config, Connection, Pool};
/// let config = Config::from_url("postgres://app@localhost/app?pool_max_size=8")?;
/// let pool = Pool::new(pgprovider_tokio_postgres::TokioPostgres::new(), &config, &config.nodes()[0]);
/// let mut conn = pool.get().await?;
/// conn.simple_query("SELECT 1").await?;
/// drop(conn); // back to the pool
/// println!("{:?}", pool.stats());
/// pool.close().await;
/// # Ok(()) }
/// ```
pub struct Pool<D: Driver> {
    inner: Arc<Inner<D>>,
}

impl<D: Driver> Clone for Pool<D> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<D: Driver> {
    driver: D,
    config: Config,
    node: Node,
    semaphore: Arc<Semaphore>,
    idle: Mutex<VecDeque<(D::Connection, Meta)>>,
    counters: Counters,
    last_error: Mutex<Option<String>>,
    closed: AtomicBool,
    jitter: (RandomState, AtomicU64),
    /// Returned connections being reset, and a signal each time one is done.
    resetting: AtomicU64,
    settled: tokio::sync::Notify,
}

#[derive(Clone, Copy, Debug)]
struct Meta {
    expires: Option<Instant>,
    idle_since: Instant,
}

impl<D: Driver> fmt::Debug for Pool<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("driver", &self.inner.driver.name())
            .field("node", &self.inner.node.to_string())
            .field("stats", &self.stats())
            .finish()
    }
}

const BACKOFF_START: Duration = Duration::from_millis(25);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

impl<D: Driver> Pool<D> {
    /// A pool of connections to `node`, with the pool knobs of `config`. No connection is
    /// opened until the first checkout.
    pub fn new(driver: D, config: &Config, node: &Node) -> Self {
        let max = config.pool().max_size();
        Pool {
            inner: Arc::new(Inner {
                driver,
                config: config.clone(),
                node: node.clone(),
                semaphore: Arc::new(Semaphore::new(max)),
                idle: Mutex::new(VecDeque::with_capacity(max)),
                counters: Counters::default(),
                last_error: Mutex::new(None),
                closed: AtomicBool::new(false),
                jitter: (RandomState::new(), AtomicU64::new(0)),
                resetting: AtomicU64::new(0),
                settled: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The node this pool connects to.
    pub fn node(&self) -> &Node {
        &self.inner.node
    }

    /// A snapshot of the pool's state and counters.
    pub fn stats(&self) -> PoolStats {
        let idle = lock(&self.inner.idle).len() as u64;
        self.inner.counters.snapshot(idle)
    }

    /// Checks out a connection, waiting in FIFO order when all are in use.
    ///
    /// Cancel-safe: dropping the future while it waits or connects leaves the pool's counts
    /// right and any half-made connection closed.
    ///
    /// # Errors
    /// - [`ErrorKind::PoolTimeout`] when no connection is ready within the acquire timeout;
    ///   the error names the node, the pool's state and the last connection error.
    /// - [`ErrorKind::PoolClosed`] once [`close`](Self::close) was called.
    /// - A connection error that retrying cannot fix (authentication, configuration).
    pub async fn get(&self) -> Result<Pooled<D>> {
        let inner = &self.inner;
        if inner.closed.load(Relaxed) {
            return Err(inner.closed_error());
        }
        let start = Instant::now();
        let deadline = start + inner.config.pool().acquire_timeout();
        let permit = {
            let _waiting = CountGuard::new(&inner.counters.waiters);
            match tokio::time::timeout_at(deadline, inner.semaphore.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => return Err(inner.closed_error()),
                Err(_) => return Err(inner.timeout_error(start)),
            }
        };
        loop {
            let idle = lock(&inner.idle).pop_back();
            let Some((mut conn, meta)) = idle else { break };
            let now = Instant::now();
            if meta.expires.is_some_and(|e| now >= e) {
                inner.close_conn(conn, CloseReason::Lifetime);
                continue;
            }
            let idle_for = now - meta.idle_since;
            if inner
                .config
                .pool()
                .idle_timeout()
                .is_some_and(|t| idle_for >= t)
            {
                inner.close_conn(conn, CloseReason::Idle);
                continue;
            }
            let validate = match inner.config.pool().validation() {
                ValidationPolicy::Always => true,
                ValidationPolicy::WhenIdleFor(t) => idle_for >= t,
                _ => false,
            };
            if validate {
                let ok = matches!(
                    tokio::time::timeout_at(deadline, conn.ping()).await,
                    Ok(Ok(()))
                );
                if !ok {
                    inner.close_conn(conn, CloseReason::Validation);
                    continue;
                }
            }
            return Ok(self.hand_out(conn, meta, permit, start));
        }
        let conn = self.connect_until(deadline, start).await?;
        let meta = Meta {
            expires: inner.expiry(),
            idle_since: Instant::now(),
        };
        Ok(self.hand_out(conn, meta, permit, start))
    }

    fn hand_out(
        &self,
        conn: D::Connection,
        meta: Meta,
        permit: OwnedSemaphorePermit,
        start: Instant,
    ) -> Pooled<D> {
        let c = &self.inner.counters;
        c.acquired.fetch_add(1, Relaxed);
        c.in_use.fetch_add(1, Relaxed);
        c.waited(start.elapsed());
        Pooled {
            conn: Some((conn, meta)),
            _permit: Some(permit),
            pool: self.inner.clone(),
        }
    }

    async fn connect_until(&self, deadline: Instant, start: Instant) -> Result<D::Connection> {
        let inner = &self.inner;
        let mut backoff = BACKOFF_START;
        loop {
            let params = inner.config.connect_params(&inner.node).await?;
            let err = match tokio::time::timeout_at(deadline, inner.driver.connect(&params)).await {
                Ok(Ok(conn)) => {
                    inner.counters.created.fetch_add(1, Relaxed);
                    inner.counters.size.fetch_add(1, Relaxed);
                    return Ok(conn);
                }
                Ok(Err(e)) => e,
                Err(_) => return Err(inner.timeout_error(start)),
            };
            inner.counters.connect_errors.fetch_add(1, Relaxed);
            *lock(&inner.last_error) = Some(match err.sql_state() {
                Some(code) => format!("{} (SQLSTATE {code})", err.message()),
                None => err.message().to_owned(),
            });
            tracing::debug!(node = %inner.node, error = %err, "connection attempt failed");
            if !err.is_retryable() {
                return Err(if err.node().is_some() {
                    err
                } else {
                    err.with_node(inner.node.to_string())
                });
            }
            if tokio::time::timeout_at(deadline, tokio::time::sleep(backoff))
                .await
                .is_err()
            {
                return Err(inner.timeout_error(start));
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Stops handing out connections and closes the idle ones; connections in use are
    /// closed as they are returned. Waiting checkouts fail with [`ErrorKind::PoolClosed`].
    /// Returns once every connection the pool holds (idle, or being reset after a return)
    /// is closed.
    pub async fn close(&self) {
        let inner = &self.inner;
        inner.closed.store(true, Relaxed);
        inner.semaphore.close();
        loop {
            let settled = inner.settled.notified();
            let mut settled = std::pin::pin!(settled);
            settled.as_mut().enable();
            let idle: Vec<_> = lock(&inner.idle).drain(..).collect();
            for (conn, _) in idle {
                inner.counters.closed(CloseReason::Pool);
                conn.close().await;
            }
            if inner.resetting.load(Relaxed) == 0 {
                return;
            }
            settled.await;
        }
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Relaxed)
    }
}

impl<D: Driver> Inner<D> {
    fn closed_error(&self) -> Error {
        Error::new(ErrorKind::PoolClosed, "the pool is closed")
            .with_node(self.node.to_string())
            .with_hint("the application closed this pool; make a new one to connect again")
    }

    fn timeout_error(&self, start: Instant) -> Error {
        self.counters.timeouts.fetch_add(1, Relaxed);
        let s = self.counters.snapshot(lock(&self.idle).len() as u64);
        let last = lock(&self.last_error)
            .clone()
            .unwrap_or_else(|| "none".to_owned());
        Error::new(
            ErrorKind::PoolTimeout,
            format!(
                "timed out after {:?} waiting for a connection (pool: size {}, idle {}, in use {}, waiters {}, max {}; last connection error: {last})",
                start.elapsed(),
                s.size,
                s.idle,
                s.in_use,
                s.waiters,
                self.config.pool().max_size()
            ),
        )
        .with_node(self.node.to_string())
        .with_hint("check that the node is reachable, raise pool_max_size or pool_acquire_timeout, or look for connections held too long")
    }

    fn expiry(&self) -> Option<Instant> {
        let lifetime = self.config.pool().max_lifetime()?;
        let n = self.jitter.1.fetch_add(1, Relaxed);
        let r = self.jitter.0.hash_one(n);
        // Up to 1/8 earlier, so connections made together do not expire together.
        let span = (lifetime.as_nanos() / 8).max(1);
        let jitter = Duration::from_nanos((u128::from(r) % span) as u64);
        Some(Instant::now() + lifetime - jitter)
    }

    fn return_idle(&self, conn: D::Connection, meta: Meta) {
        let meta = Meta {
            idle_since: Instant::now(),
            ..meta
        };
        lock(&self.idle).push_back((conn, meta));
    }

    fn close_conn(&self, conn: D::Connection, reason: CloseReason) {
        self.counters.closed(reason);
        tracing::debug!(node = %self.node, ?reason, "closing connection");
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(conn.close());
            }
            Err(_) => drop(conn),
        }
    }
}

/// A checked-out connection. Derefs to the driver's connection; dropping it returns the
/// connection to the pool (or closes it when it is broken or expired).
pub struct Pooled<D: Driver> {
    conn: Option<(D::Connection, Meta)>,
    // Released after the connection is back in the idle queue (fields drop in order), so
    // the next waiter finds it there.
    _permit: Option<OwnedSemaphorePermit>,
    pool: Arc<Inner<D>>,
}

impl<D: Driver> Pooled<D> {
    /// Takes the connection out of the pool for good; the pool opens another in its place.
    pub fn detach(mut this: Self) -> D::Connection {
        let (conn, _) = this.conn.take().expect("connection present until drop");
        this.pool.counters.in_use.fetch_sub(1, Relaxed);
        this.pool.counters.size.fetch_sub(1, Relaxed);
        conn
    }

    /// Closes the connection instead of returning it, for example after an error that
    /// leaves its state unknown.
    pub fn discard(mut this: Self) {
        let (conn, _) = this.conn.take().expect("connection present until drop");
        this.pool.counters.in_use.fetch_sub(1, Relaxed);
        this.pool.close_conn(conn, CloseReason::Error);
    }
}

impl<D: Driver> Deref for Pooled<D> {
    type Target = D::Connection;
    fn deref(&self) -> &D::Connection {
        &self.conn.as_ref().expect("connection present until drop").0
    }
}

impl<D: Driver> DerefMut for Pooled<D> {
    fn deref_mut(&mut self) -> &mut D::Connection {
        &mut self.conn.as_mut().expect("connection present until drop").0
    }
}

impl<D: Driver> fmt::Debug for Pooled<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pooled")
            .field("node", &self.pool.node.to_string())
            .finish()
    }
}

impl<D: Driver> Drop for Pooled<D> {
    fn drop(&mut self) {
        let Some((conn, meta)) = self.conn.take() else {
            return;
        };
        let pool = &self.pool;
        pool.counters.in_use.fetch_sub(1, Relaxed);
        if pool.closed.load(Relaxed) {
            pool.close_conn(conn, CloseReason::Pool);
        } else if conn.is_broken() {
            pool.close_conn(conn, CloseReason::Error);
        } else if meta.expires.is_some_and(|e| Instant::now() >= e) {
            pool.close_conn(conn, CloseReason::Lifetime);
        } else if conn.needs_reset() {
            // Reset in a task of its own (drop never blocks), holding the permit so the
            // connection still counts against max size until it is idle again.
            let permit = self._permit.take();
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    pool.resetting.fetch_add(1, Relaxed);
                    h.spawn(reset_and_return(pool.clone(), conn, meta, permit));
                }
                Err(_) => pool.close_conn(conn, CloseReason::Error),
            }
        } else {
            pool.return_idle(conn, meta);
        }
    }
}

/// How long a reset on return may take before the connection is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

async fn reset_and_return<D: Driver>(
    pool: Arc<Inner<D>>,
    mut conn: D::Connection,
    meta: Meta,
    _permit: Option<OwnedSemaphorePermit>,
) {
    pool.counters.resets.fetch_add(1, Relaxed);
    let ok = matches!(
        tokio::time::timeout(RESET_TIMEOUT, conn.reset()).await,
        Ok(Ok(()))
    );
    if !ok || conn.is_broken() {
        pool.close_conn(conn, CloseReason::Error);
    } else if pool.closed.load(Relaxed) {
        pool.close_conn(conn, CloseReason::Pool);
    } else {
        pool.return_idle(conn, meta);
    }
    pool.resetting.fetch_sub(1, Relaxed);
    pool.settled.notify_waiters();
    // The permit drops here, after the connection is idle, so the next waiter finds it.
}

/// Counts itself in while alive (waiters), out when dropped, also on cancellation.
struct CountGuard<'a>(&'a AtomicU64);

impl<'a> CountGuard<'a> {
    fn new(c: &'a AtomicU64) -> Self {
        c.fetch_add(1, Relaxed);
        CountGuard(c)
    }
}

impl Drop for CountGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the queue inconsistent (push/pop only).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
