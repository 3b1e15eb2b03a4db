//! The checked-out connection and what happens when it comes back.

use super::stats::CloseReason;
use super::{Inner, Meta, lock};
use pgprovider_core::{Connection, Driver};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

/// A checked-out connection. Derefs to the driver's connection; dropping it returns the
/// connection to the pool (or closes it when it is broken, expired, or the pool is closed
/// or shrinking). Helpers are associated functions ([`Pooled::detach`],
/// [`Pooled::discard`]) so they never shadow the connection's own methods.
pub struct Pooled<D: Driver> {
    conn: Option<(D::Connection, Meta)>,
    permit: Option<OwnedSemaphorePermit>,
    lease: Option<u64>,
    pool: Arc<Inner<D>>,
}

/// How long a reset on return may take before the connection is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

impl<D: Driver> Pooled<D> {
    pub(super) fn new(
        conn: D::Connection,
        meta: Meta,
        permit: OwnedSemaphorePermit,
        lease: Option<u64>,
        pool: Arc<Inner<D>>,
    ) -> Self {
        Pooled {
            conn: Some((conn, meta)),
            permit: Some(permit),
            lease,
            pool,
        }
    }

    /// Takes the connection out of the pool for good; the pool opens another in its place.
    pub fn detach(mut this: Self) -> D::Connection {
        let (conn, _) = this.take();
        this.pool.counters.size.fetch_sub(1, Relaxed);
        conn
    }

    /// Closes the connection instead of returning it, for example after an error that
    /// leaves its state unknown.
    pub fn discard(mut this: Self) {
        let (conn, _) = this.take();
        this.pool.close_conn(conn, CloseReason::Error);
    }

    /// Takes the connection out of the guard, ending the checkout's accounting.
    fn take(&mut self) -> (D::Connection, Meta) {
        let taken = self.conn.take().expect("connection present until drop");
        self.pool.counters.in_use.fetch_sub(1, Relaxed);
        if let (Some(id), Some(leases)) = (self.lease.take(), &self.pool.leases) {
            lock(leases).open.remove(&id);
        }
        taken
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
        if self.conn.is_none() {
            self.pool.signal_if_closing();
            return;
        }
        let (conn, meta) = self.take();
        let pool = &self.pool;
        if pool.closed.load(Relaxed) {
            pool.close_conn(conn, CloseReason::Pool);
        } else if conn.is_broken() {
            pool.close_conn(conn, CloseReason::Error);
        } else if meta.expires.is_some_and(|e| Instant::now() >= e) {
            pool.close_conn(conn, CloseReason::Lifetime);
        } else if pool.take_debt() {
            // The pool shrank: this connection and its permit go.
            if let Some(p) = self.permit.take() {
                p.forget();
            }
            pool.close_conn(conn, CloseReason::Resize);
        } else if conn.needs_reset() {
            // Reset in a task of its own (drop never blocks), holding the permit so the
            // connection still counts against max size until it is idle again.
            let permit = self.permit.take();
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
        // The permit is released after the connection is idle, so the next waiter finds it.
        drop(self.permit.take());
        pool.signal_if_closing();
    }
}

async fn reset_and_return<D: Driver>(
    pool: Arc<Inner<D>>,
    mut conn: D::Connection,
    meta: Meta,
    permit: Option<OwnedSemaphorePermit>,
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
    drop(permit);
    pool.resetting.fetch_sub(1, Relaxed);
    pool.settled.notify_waiters();
}

impl<D: Driver> Inner<D> {
    /// Wakes a graceful close waiting for returns.
    fn signal_if_closing(&self) {
        if self.closed.load(Relaxed) {
            self.settled.notify_waiters();
        }
    }
}
