//! The checked-out connection and what happens when it comes back.

use super::stats::CloseReason;
use super::{Inner, Slot, lock};
use pgprovider_core::{Connection, Driver};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::time::Instant;

/// A checked-out connection. Derefs to the driver's connection; dropping it returns the
/// connection to the pool (or closes it when it is broken, expired, or the pool is closed
/// or shrinking). Helpers are associated functions ([`Pooled::detach`],
/// [`Pooled::discard`]) so they never shadow the connection's own methods.
pub struct Pooled<D: Driver> {
    pub(super) slot: Option<Box<Slot<D::Connection>>>,
    /// Whether this guard still owes the semaphore its permit.
    permit: bool,
    lease: Option<u64>,
    pub(super) pool: Arc<Inner<D>>,
}

/// How long a reset on return may take before the connection is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

impl<D: Driver> Pooled<D> {
    pub(super) fn new(
        slot: Box<Slot<D::Connection>>,
        lease: Option<u64>,
        pool: Arc<Inner<D>>,
    ) -> Self {
        Pooled {
            slot: Some(slot),
            permit: true,
            lease,
            pool,
        }
    }

    /// The node this connection belongs to.
    pub fn node(this: &Self) -> &crate::config::Node {
        &this.pool.node
    }

    /// Takes the connection out of the pool for good; the pool opens another in its place.
    pub fn detach(mut this: Self) -> D::Connection {
        let slot = this.take();
        this.pool.counters.size.fetch_sub(1, Relaxed);
        slot.conn
    }

    /// Records that a transaction begun at `at` is open on this checkout (for leak reports).
    pub(crate) fn in_transaction(this: &Self, at: &'static std::panic::Location<'static>) {
        if let (Some(id), Some(leases)) = (this.lease, &this.pool.leases) {
            if let Some(l) = lock(leases).open.get_mut(&id) {
                l.transaction = Some(at);
            }
        }
    }

    /// Counts a transaction dropped without commit or rollback (the return rolls it back).
    pub(crate) fn abandoned(this: &Self) {
        this.pool.counters.abandoned.fetch_add(1, Relaxed);
    }

    /// Closes the connection instead of returning it, for example after an error that
    /// leaves its state unknown.
    pub fn discard(mut this: Self) {
        let slot = this.take();
        this.pool.close_conn(slot.conn, CloseReason::Error);
    }

    /// Takes the connection out of the guard, ending the checkout's accounting.
    fn take(&mut self) -> Box<Slot<D::Connection>> {
        let slot = self.slot.take().expect("connection present until drop");
        self.pool.counters.in_use.fetch_sub(1, Relaxed);
        if let (Some(id), Some(leases)) = (self.lease.take(), &self.pool.leases) {
            lock(leases).open.remove(&id);
        }
        slot
    }
}

impl<D: Driver> Deref for Pooled<D> {
    type Target = D::Connection;
    fn deref(&self) -> &D::Connection {
        &self
            .slot
            .as_ref()
            .expect("connection present until drop")
            .conn
    }
}

impl<D: Driver> DerefMut for Pooled<D> {
    fn deref_mut(&mut self) -> &mut D::Connection {
        &mut self
            .slot
            .as_mut()
            .expect("connection present until drop")
            .conn
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
        if self.slot.is_some() {
            let mut slot = self.take();
            let pool = &self.pool;
            let now = Instant::now();
            if !pool.observe.is_empty() {
                pool.lifecycle(
                    pgprovider_core::observe::OperationKind::Return,
                    Duration::ZERO,
                );
            }
            // An abandoned statement (a caller's deadline) says nothing about the node:
            // the connection is recovered, not suspected.
            let mut interrupted = slot.conn.interrupted();
            if interrupted && !slot.conn.needs_reset() && slot.conn.release_in_place() {
                // Nothing left behind but replies the driver discards itself.
                pool.counters.recovered.fetch_add(1, Relaxed);
                interrupted = false;
            }
            let broken = !interrupted && slot.conn.is_broken();
            if broken || slot.conn.refused_read_only() {
                if let Some(hook) = &pool.hooks.on_suspect {
                    super::hooks::guarded("on_suspect", &pool.node.to_string(), || hook());
                }
            }
            if pool.closed.load(Relaxed) {
                pool.close_conn(slot.conn, CloseReason::Pool);
            } else if broken {
                pool.close_conn(slot.conn, CloseReason::Error);
            } else if pool.due(&slot, now) {
                pool.close_conn(slot.conn, CloseReason::Lifetime);
            } else if pool.take_debt() {
                // The pool shrank: this connection and its permit go.
                self.permit = false;
                pool.close_conn(slot.conn, CloseReason::Resize);
            } else if interrupted || slot.conn.needs_reset() {
                match tokio::runtime::Handle::try_current() {
                    Ok(h) => {
                        // Recovered and reset in a task of its own (drop never blocks),
                        // which gives the permit back once the connection is idle again.
                        self.permit = false;
                        pool.resetting.fetch_add(1, Relaxed);
                        h.spawn(settle_and_return(pool.clone(), slot, interrupted));
                    }
                    Err(_) => pool.close_conn(slot.conn, CloseReason::Error),
                }
            } else {
                pool.return_idle(slot, now);
            }
        }
        // The permit goes back after the connection is idle, so the next waiter finds it.
        if self.permit {
            self.pool.semaphore.add_permits(1);
        }
        self.pool.signal_if_closing();
    }
}

/// Past this, the statement an interrupted connection abandoned is cancelled on the server
/// (it may be a long one nobody waits for any more).
pub(super) const RECOVER_GRACE: Duration = Duration::from_millis(100);
/// Past this, an interrupted connection is closed instead of recovered.
pub(super) const RECOVER_LIMIT: Duration = Duration::from_secs(5);

/// Brings an interrupted connection back (see [`Connection::recover`]): waits for the
/// abandoned replies for [`RECOVER_GRACE`], then sends a cancel request and waits up to
/// [`RECOVER_LIMIT`]. True when the connection is clean and idle.
///
/// After a cancel the connection is kept only when the cancel is known to have landed
/// (it hit recovery's own statement, which then runs again): a cancel request still on its
/// way would otherwise hit the next user's statement.
pub(super) async fn recover<C: Connection>(conn: &mut C) -> bool {
    let limit = Instant::now() + RECOVER_LIMIT;
    let token = conn.cancel_token();
    let after_cancel = {
        let mut attempt = std::pin::pin!(conn.recover());
        match tokio::time::timeout(RECOVER_GRACE, &mut attempt).await {
            Ok(r) => return r.is_ok(),
            Err(_) => {
                let _ = tokio::time::timeout_at(limit, token.cancel()).await;
                tokio::time::timeout_at(limit, attempt).await
            }
        }
    };
    match after_cancel {
        Ok(Err(e)) if e.sql_state() == Some(pgprovider_core::SqlState::QUERY_CANCELED) => matches!(
            tokio::time::timeout_at(limit, conn.recover()).await,
            Ok(Ok(()))
        ),
        _ => false,
    }
}

async fn settle_and_return<D: Driver>(
    pool: Arc<Inner<D>>,
    mut slot: Box<Slot<D::Connection>>,
    interrupted: bool,
) {
    let recovered = !interrupted || recover(&mut slot.conn).await;
    if interrupted && recovered {
        pool.counters.recovered.fetch_add(1, Relaxed);
    }
    let ok = recovered
        && (!slot.conn.needs_reset() || {
            pool.counters.resets.fetch_add(1, Relaxed);
            matches!(
                tokio::time::timeout(RESET_TIMEOUT, slot.conn.reset()).await,
                Ok(Ok(()))
            )
        });
    if !ok || slot.conn.is_broken() {
        pool.close_conn(slot.conn, CloseReason::Error);
    } else if pool.closed.load(Relaxed) {
        pool.close_conn(slot.conn, CloseReason::Pool);
    } else {
        pool.return_idle(slot, Instant::now());
    }
    pool.semaphore.add_permits(1);
    pool.resetting.fetch_sub(1, Relaxed);
    pool.settled.notify_waiters();
}

impl<D: Driver> Inner<D> {
    /// Wakes a graceful close waiting for returns.
    pub(super) fn signal_if_closing(&self) {
        if self.closed.load(Relaxed) {
            self.settled.notify_waiters();
        }
    }
}
