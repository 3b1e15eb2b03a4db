//! Pool statistics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Buckets of the acquire-wait histogram: bucket `i` counts waits under `2^i` µs
/// (and at least `2^(i-1)` µs), the last one everything longer.
pub const WAIT_BUCKETS: usize = 28;

/// A snapshot of a pool's state and counters.
///
/// The figures are read one by one without a lock, so under load they are approximate:
/// `idle + in_use` may briefly differ from `size`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// The current maximum size (see [`Pool::resize`](super::Pool::resize)).
    pub max_size: u64,
    /// Open connections (idle, in use, being reset or opened).
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
    /// Checkouts reported as leaks (held longer than the threshold).
    pub leaks: u64,
    /// Transactions whose every handle was dropped without commit or rollback (the pool
    /// rolled them back); each is logged with where it began.
    pub abandoned_transactions: u64,
    /// Total time callers waited in checkouts.
    pub acquire_wait_total: Duration,
    /// The longest wait of a checkout.
    pub acquire_wait_max: Duration,
    /// Checkout waits by bucket; see [`WAIT_BUCKETS`] and [`PoolStats::acquire_wait_quantile`].
    pub acquire_wait_histogram: [u64; WAIT_BUCKETS],
    /// Connections opened.
    pub created: u64,
    /// Connection attempts that failed.
    pub connect_errors: u64,
    /// Connections closed because they were broken or failed a reset or hook.
    pub closed_error: u64,
    /// Connections closed at the end of their lifetime.
    pub closed_lifetime: u64,
    /// Connections closed after idling too long.
    pub closed_idle: u64,
    /// Connections closed because a checkout ping or `before_checkout` rejected them.
    pub closed_validation: u64,
    /// Connections closed because the pool shrank.
    pub closed_resize: u64,
    /// Connections closed because the pool was closed.
    pub closed_pool: u64,
    /// Connections closed because the pool was retired (the node changed role).
    pub closed_retired: u64,
    /// Checkouts refused at once because `max_waiters` callers were already waiting.
    pub rejected: u64,
    /// Connections whose statement was abandoned mid-flight (a caller's deadline dropped
    /// it) that were drained and put back into use instead of being closed.
    pub recovered: u64,
    /// Connections opened for a checkout whose caller had given up by the time they were
    /// ready: they joined the idle queue instead of being thrown away.
    pub adopted: u64,
    /// The prepared-statement caches of this pool's connections.
    pub statement_cache: pgprovider_core::StatementCacheStats,
    /// Reads run pipelined on a busy connection (adaptive pipelining, `pool_pipeline`).
    pub pipelined: u64,
    /// Reads that tried to pipeline and went to a checkout after all (a stale statement,
    /// a lost connection, or the connection's holder moved on before it was sent).
    pub pipeline_fallbacks: u64,
    /// Times auto-scaling grew the pool (`pool_autoscale`).
    pub autoscale_grows: u64,
    /// Times auto-scaling shrank the pool.
    pub autoscale_shrinks: u64,
}

impl PoolStats {
    /// An upper bound of the `q` quantile (0.0 to 1.0) of checkout waits, from the
    /// histogram (so within a factor of two); zero when nothing was acquired.
    pub fn acquire_wait_quantile(&self, q: f64) -> Duration {
        let total: u64 = self.acquire_wait_histogram.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let want = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.acquire_wait_histogram.iter().enumerate() {
            seen += n;
            if seen >= want {
                return bucket_bound(i);
            }
        }
        self.acquire_wait_max
    }
}

fn bucket_bound(i: usize) -> Duration {
    Duration::from_micros(1u64 << i)
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) size: AtomicU64,
    pub(crate) in_use: AtomicU64,
    pub(crate) waiters: AtomicU64,
    pub(crate) acquired: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) resets: AtomicU64,
    pub(crate) leaks: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    pub(crate) wait_total_ns: AtomicU64,
    pub(crate) wait_max_ns: AtomicU64,
    pub(crate) wait_buckets: [AtomicU64; WAIT_BUCKETS],
    pub(crate) created: AtomicU64,
    pub(crate) connect_errors: AtomicU64,
    pub(crate) closed_error: AtomicU64,
    pub(crate) closed_lifetime: AtomicU64,
    pub(crate) closed_idle: AtomicU64,
    pub(crate) closed_validation: AtomicU64,
    pub(crate) closed_resize: AtomicU64,
    pub(crate) closed_pool: AtomicU64,
    pub(crate) closed_retired: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) recovered: AtomicU64,
    pub(crate) adopted: AtomicU64,
}

/// Why a connection was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseReason {
    Error,
    Lifetime,
    Idle,
    Validation,
    Resize,
    Pool,
    Retired,
}

impl Counters {
    pub(crate) fn closed(&self, reason: CloseReason) {
        self.size.fetch_sub(1, Relaxed);
        let c = match reason {
            CloseReason::Error => &self.closed_error,
            CloseReason::Lifetime => &self.closed_lifetime,
            CloseReason::Idle => &self.closed_idle,
            CloseReason::Validation => &self.closed_validation,
            CloseReason::Resize => &self.closed_resize,
            CloseReason::Pool => &self.closed_pool,
            CloseReason::Retired => &self.closed_retired,
        };
        c.fetch_add(1, Relaxed);
    }

    pub(crate) fn waited(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.wait_total_ns.fetch_add(ns, Relaxed);
        self.wait_max_ns.fetch_max(ns, Relaxed);
        let us = ns / 1000;
        let bucket = (u64::BITS - us.leading_zeros()) as usize;
        self.wait_buckets[bucket.min(WAIT_BUCKETS - 1)].fetch_add(1, Relaxed);
    }

    /// A checkout that did not wait (fast path): no clock read.
    pub(crate) fn waited_none(&self) {
        self.wait_buckets[0].fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self, idle: u64, max_size: u64) -> PoolStats {
        PoolStats {
            max_size,
            size: self.size.load(Relaxed),
            idle,
            in_use: self.in_use.load(Relaxed),
            waiters: self.waiters.load(Relaxed),
            acquired: self.acquired.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            resets: self.resets.load(Relaxed),
            leaks: self.leaks.load(Relaxed),
            abandoned_transactions: self.abandoned.load(Relaxed),
            acquire_wait_total: Duration::from_nanos(self.wait_total_ns.load(Relaxed)),
            acquire_wait_max: Duration::from_nanos(self.wait_max_ns.load(Relaxed)),
            acquire_wait_histogram: std::array::from_fn(|i| self.wait_buckets[i].load(Relaxed)),
            created: self.created.load(Relaxed),
            connect_errors: self.connect_errors.load(Relaxed),
            closed_error: self.closed_error.load(Relaxed),
            closed_lifetime: self.closed_lifetime.load(Relaxed),
            closed_idle: self.closed_idle.load(Relaxed),
            closed_validation: self.closed_validation.load(Relaxed),
            closed_resize: self.closed_resize.load(Relaxed),
            closed_pool: self.closed_pool.load(Relaxed),
            closed_retired: self.closed_retired.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            recovered: self.recovered.load(Relaxed),
            adopted: self.adopted.load(Relaxed),
            statement_cache: Default::default(),
            pipelined: 0,
            pipeline_fallbacks: 0,
            autoscale_grows: 0,
            autoscale_shrinks: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_land_in_power_of_two_buckets() {
        let c = Counters::default();
        c.waited(Duration::from_nanos(500)); // < 1 µs: bucket 0
        c.waited(Duration::from_micros(3)); // [2, 4) µs: bucket 2
        c.waited(Duration::from_millis(10)); // 10_000 µs: bucket 14
        c.waited(Duration::from_secs(3600)); // past the last bucket
        let s = c.snapshot(0, 1);
        assert_eq!(s.acquire_wait_histogram[0], 1);
        assert_eq!(s.acquire_wait_histogram[2], 1);
        assert_eq!(s.acquire_wait_histogram[14], 1);
        assert_eq!(s.acquire_wait_histogram[WAIT_BUCKETS - 1], 1);
        assert_eq!(s.acquire_wait_quantile(0.25), Duration::from_micros(1));
        assert_eq!(s.acquire_wait_quantile(0.5), Duration::from_micros(4));
        assert_eq!(s.acquire_wait_quantile(0.75), Duration::from_micros(16_384));
        assert_eq!(
            PoolStats::default().acquire_wait_quantile(0.5),
            Duration::ZERO
        );
    }
}
