//! Pool statistics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A snapshot of a pool's state and counters.
///
/// The figures are read one by one without a lock, so under load they are approximate:
/// `idle + in_use` may briefly differ from `size`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Open connections (idle + in use + being opened).
    pub size: u64,
    /// Idle connections.
    pub idle: u64,
    /// Connections checked out.
    pub in_use: u64,
    /// Tasks waiting for a connection.
    pub waiters: u64,
    /// Successful checkouts since the pool was made.
    pub acquired: u64,
    /// Checkouts that timed out.
    pub timeouts: u64,
    /// Returned connections whose session was reset before reuse.
    pub resets: u64,
    /// Total time callers waited in checkouts.
    pub acquire_wait_total: Duration,
    /// The longest wait of a checkout.
    pub acquire_wait_max: Duration,
    /// Connections opened.
    pub created: u64,
    /// Connection attempts that failed.
    pub connect_errors: u64,
    /// Connections closed because they were broken or failed a reset.
    pub closed_error: u64,
    /// Connections closed at the end of their lifetime.
    pub closed_lifetime: u64,
    /// Connections closed after idling too long.
    pub closed_idle: u64,
    /// Connections closed because a checkout ping failed.
    pub closed_validation: u64,
    /// Connections closed because the pool was closed.
    pub closed_pool: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) size: AtomicU64,
    pub(crate) in_use: AtomicU64,
    pub(crate) waiters: AtomicU64,
    pub(crate) acquired: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) resets: AtomicU64,
    pub(crate) wait_total_ns: AtomicU64,
    pub(crate) wait_max_ns: AtomicU64,
    pub(crate) created: AtomicU64,
    pub(crate) connect_errors: AtomicU64,
    pub(crate) closed_error: AtomicU64,
    pub(crate) closed_lifetime: AtomicU64,
    pub(crate) closed_idle: AtomicU64,
    pub(crate) closed_validation: AtomicU64,
    pub(crate) closed_pool: AtomicU64,
}

/// Why a connection was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseReason {
    Error,
    Lifetime,
    Idle,
    Validation,
    Pool,
}

impl Counters {
    pub(crate) fn closed(&self, reason: CloseReason) {
        self.size.fetch_sub(1, Relaxed);
        let c = match reason {
            CloseReason::Error => &self.closed_error,
            CloseReason::Lifetime => &self.closed_lifetime,
            CloseReason::Idle => &self.closed_idle,
            CloseReason::Validation => &self.closed_validation,
            CloseReason::Pool => &self.closed_pool,
        };
        c.fetch_add(1, Relaxed);
    }

    pub(crate) fn waited(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.wait_total_ns.fetch_add(ns, Relaxed);
        self.wait_max_ns.fetch_max(ns, Relaxed);
    }

    pub(crate) fn snapshot(&self, idle: u64) -> PoolStats {
        PoolStats {
            size: self.size.load(Relaxed),
            idle,
            in_use: self.in_use.load(Relaxed),
            waiters: self.waiters.load(Relaxed),
            acquired: self.acquired.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            resets: self.resets.load(Relaxed),
            acquire_wait_total: Duration::from_nanos(self.wait_total_ns.load(Relaxed)),
            acquire_wait_max: Duration::from_nanos(self.wait_max_ns.load(Relaxed)),
            created: self.created.load(Relaxed),
            connect_errors: self.connect_errors.load(Relaxed),
            closed_error: self.closed_error.load(Relaxed),
            closed_lifetime: self.closed_lifetime.load(Relaxed),
            closed_idle: self.closed_idle.load(Relaxed),
            closed_validation: self.closed_validation.load(Relaxed),
            closed_pool: self.closed_pool.load(Relaxed),
        }
    }
}
