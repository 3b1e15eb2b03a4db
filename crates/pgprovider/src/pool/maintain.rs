//! The pool's background task: warm-up to `min_idle`, reaping, shrinking, leak reports.

use super::hooks::{LeakReport, guarded};
use super::stats::CloseReason;
use super::{Inner, lock};
use pgprovider_core::Driver;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// The longest pause between rounds; also how soon a resize or a new `min_idle` shows.
const TICK: Duration = Duration::from_secs(1);
const MIN_TICK: Duration = Duration::from_millis(10);

/// Starts the task when there is a runtime to run it on. Without one, the pool still
/// works; it only lacks warm-up, proactive reaping and leak reports.
pub(super) fn start<D: Driver>(inner: &Arc<Inner<D>>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        tracing::debug!(node = %inner.node, "no tokio runtime: pool maintenance is off");
        return;
    };
    let pool = inner.config.pool();
    let tick = [
        Some(TICK),
        pool.leak_detection_threshold().map(|t| t / 4),
        pool.idle_timeout().map(|t| t / 2),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(TICK)
    .max(MIN_TICK);
    rt.spawn(run(Arc::downgrade(inner), inner.wake.clone(), tick));
}

async fn run<D: Driver>(pool: Weak<Inner<D>>, wake: Arc<tokio::sync::Notify>, tick: Duration) {
    // Auto-scaling looks every 10 ms; the rest keeps its own pace (and warm-up does not
    // retry a failing server at auto-scaling's rate).
    let round = match pool.upgrade().and_then(|p| p.config.pool().autoscale()) {
        Some(_) => super::scale::ROUND.min(tick),
        None => tick,
    };
    let mut full_at: Option<Instant> = None;
    loop {
        {
            // Hold the pool only for one round, so dropping it ends the task.
            let Some(inner) = pool.upgrade() else { return };
            if inner.closed.load(Relaxed) {
                return;
            }
            inner.scale();
            inner.absorb_debt();
            inner.trim_to_max();
            let now = Instant::now();
            if full_at.is_none_or(|t| now.saturating_duration_since(t) >= tick) {
                full_at = Some(now);
                inner.reap_idle();
                inner.report_leaks();
                inner.warm_up().await;
            }
        }
        let _ = tokio::time::timeout(round, wake.notified()).await;
    }
}

impl<D: Driver> Inner<D> {
    /// Closes idle connections past their lifetime, and those idle past the idle timeout
    /// while more than `min_idle` are open.
    fn reap_idle(&self) {
        let now = Instant::now();
        let min_idle = self.config.pool().min_idle() as u64;
        let idle_timeout = self.config.pool().idle_timeout();
        let mut doomed = Vec::new();
        {
            let mut idle = lock(&self.idle);
            let mut keep = std::collections::VecDeque::with_capacity(idle.len());
            let mut open = self.counters.size.load(Relaxed);
            // Oldest first, so the warmest connections are the ones kept.
            while let Some(slot) = idle.pop_front() {
                let expired = self.due(&slot, now);
                let idle_for = now.saturating_duration_since(slot.idle_since);
                let stale = idle_timeout.is_some_and(|t| idle_for >= t) && open > min_idle;
                if expired || stale {
                    open -= 1;
                    let reason = if expired {
                        CloseReason::Lifetime
                    } else {
                        CloseReason::Idle
                    };
                    doomed.push((slot, reason));
                } else {
                    keep.push_back(slot);
                }
            }
            *idle = keep;
        }
        for (slot, reason) in doomed {
            self.close_conn(slot.conn, reason);
        }
    }

    /// Reports each checkout held past the threshold, once.
    fn report_leaks(&self) {
        let (Some(leases), Some(threshold)) =
            (&self.leases, self.config.pool().leak_detection_threshold())
        else {
            return;
        };
        let now = Instant::now();
        let found: Vec<LeakReport> = lock(leases)
            .open
            .values_mut()
            .filter(|l| !l.reported && now - l.since >= threshold)
            .map(|l| {
                l.reported = true;
                LeakReport {
                    node: self.node.to_string(),
                    location: l.location,
                    held_for: now - l.since,
                    transaction: l.transaction,
                }
            })
            .collect();
        for leak in found {
            self.counters.leaks.fetch_add(1, Relaxed);
            match leak.transaction {
                Some(begun) => tracing::warn!(
                    node = %leak.node,
                    location = %leak.location,
                    transaction = %begun,
                    held_for = ?leak.held_for,
                    "connection held in an open transaction longer than the leak-detection threshold"
                ),
                None => tracing::warn!(
                    node = %leak.node,
                    location = %leak.location,
                    held_for = ?leak.held_for,
                    "connection held longer than the leak-detection threshold"
                ),
            }
            if let Some(hook) = &self.hooks.on_leak {
                guarded("on_leak", &leak.node, || hook(&leak));
            }
        }
    }

    /// Opens connections until `min_idle` are idle (within the maximum size), each under a
    /// permit so checkouts and warm-up together never exceed the maximum.
    async fn warm_up(&self) {
        let want = self.config.pool().min_idle().min(self.max.load(Relaxed));
        while lock(&self.idle).len() < want && !self.closed.load(Relaxed) {
            let Ok(permit) = self.semaphore.try_acquire() else {
                return;
            };
            // Counting the connections in use and those being opened (for checkouts whose
            // callers may be gone: they join the idle queue), not only the idle ones.
            let Some(reservation) =
                super::CountGuard::below(&self.counters.size, self.max.load(Relaxed) as u64)
            else {
                return;
            };
            let timeout = self.config.pool().acquire_timeout();
            let opened = tokio::time::timeout(timeout, self.connect_once()).await;
            if matches!(opened, Ok(Ok(_))) {
                reservation.keep();
            } else {
                drop(reservation);
            }
            match opened {
                Ok(Ok((conn, _))) if self.closed.load(Relaxed) => {
                    self.close_conn(conn, CloseReason::Pool)
                }
                Ok(Ok((conn, birth))) => {
                    let slot = self.new_slot(conn, birth);
                    self.return_idle(slot, Instant::now());
                }
                // Failures were counted and logged; the next round tries again.
                Ok(Err(_)) | Err(_) => return,
            }
            drop(permit);
        }
    }
}
