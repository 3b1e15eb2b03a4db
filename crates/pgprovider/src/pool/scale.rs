//! Auto-scaling (`pool_autoscale=on`): the pool's size follows its load between a floor
//! (`pool_min_idle`, at least 1) and a ceiling (`pool_max_size`, or what
//! [`resize`](super::Pool::resize) set since).
//!
//! The maintenance task runs a round every [`ROUND`] while auto-scaling is on:
//! - **grow** when callers wait: the mean checkout wait of the round's checkouts reached
//!   `pool_autoscale_wait`, or callers have waited that long with no checkout served; by at most `pool_autoscale_step` connections, at most once per
//!   `pool_autoscale_cooldown` (the new connections are opened by the waiting checkouts
//!   themselves, at most four at a time);
//! - **shrink** when connections sit idle: when fewer connections than the size were in use
//!   at once throughout a whole `pool_autoscale_idle` window with no growth in it, by the
//!   difference (at most a step), idle connections closed first.
//!
//! It does not grow again while the connections of the last growth are still being opened
//! (a slow connect would otherwise look like more waiting). With adaptive pipelining on,
//! reads that find the pool busy are pipelined rather than queued: the pool grows for the
//! checkouts that still wait.
//!
//! An oscillating load does not thrash: growth is fast and shrinking needs a whole quiet
//! window, so a load that comes back within the window finds its connections still there.

use super::{Inner, lock};
use crate::config::{Autoscale, Config};
use pgprovider_core::Driver;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;
use tokio::time::Instant;

/// How often the scaler looks.
pub(super) const ROUND: Duration = Duration::from_millis(10);

/// The smallest size auto-scaling goes down to.
pub(super) fn floor(config: &Config) -> usize {
    config
        .pool()
        .min_idle()
        .max(1)
        .min(config.pool().max_size())
}

pub(super) struct Scaler {
    settings: Autoscale,
    /// The largest size it grows to.
    pub(super) ceiling: AtomicUsize,
    grows: AtomicU64,
    shrinks: AtomicU64,
    state: Mutex<State>,
}

struct State {
    /// Counters at the last round.
    acquired: u64,
    wait_ns: u64,
    /// Since when callers have waited with none served (the first such round).
    starved_since: Option<Instant>,
    /// The last growth.
    grown_at: Option<Instant>,
    /// The current shrinking window: when it began and the most connections in use at once
    /// seen in it.
    window_at: Instant,
    busiest: usize,
}

impl Scaler {
    pub(super) fn new(settings: Autoscale) -> Self {
        let now = Instant::now();
        Scaler {
            settings,
            ceiling: AtomicUsize::new(usize::MAX),
            grows: AtomicU64::new(0),
            shrinks: AtomicU64::new(0),
            state: Mutex::new(State {
                acquired: 0,
                wait_ns: 0,
                starved_since: None,
                grown_at: None,
                window_at: now,
                busiest: 0,
            }),
        }
    }

    /// Growths and shrinks so far.
    pub(super) fn changes(&self) -> (u64, u64) {
        (self.grows.load(Relaxed), self.shrinks.load(Relaxed))
    }
}

impl<D: Driver> Inner<D> {
    /// One round of auto-scaling (see the module docs); nothing when it is off.
    pub(super) fn scale(&self) {
        let Some(sc) = &self.scale else { return };
        let a = sc.settings;
        let now = Instant::now();
        // `pool_max_size` until a resize sets another ceiling; the floor never above it.
        let ceiling = match sc.ceiling.load(Relaxed) {
            usize::MAX => self.config.pool().max_size(),
            c => c,
        };
        let floor = floor(&self.config).min(ceiling);
        let size = self.max.load(Relaxed);
        let (acquired, wait_ns, waiters, in_use, open) = (
            self.counters.acquired.load(Relaxed),
            self.counters.wait_total_ns.load(Relaxed),
            self.counters.waiters.load(Relaxed),
            self.counters.in_use.load(Relaxed) as usize,
            self.counters.size.load(Relaxed) as usize,
        );
        let target = {
            let mut st = lock(&sc.state);
            let served = acquired.saturating_sub(st.acquired);
            let waited = Duration::from_nanos(wait_ns.saturating_sub(st.wait_ns));
            (st.acquired, st.wait_ns) = (acquired, wait_ns);
            // Callers waiting with nobody served: since when.
            st.starved_since = match (served, waiters) {
                (0, 1..) => Some(st.starved_since.unwrap_or(now)),
                _ => None,
            };
            let slow = waiters > 0
                && match served {
                    0 => st
                        .starved_since
                        .is_some_and(|t| now.saturating_duration_since(t) >= a.wait),
                    n => waited / u32::try_from(n).unwrap_or(u32::MAX) >= a.wait,
                };
            let cooled = st
                .grown_at
                .is_none_or(|g| now.saturating_duration_since(g) >= a.cooldown);
            // The last growth's connections are still being opened: wait for them.
            let opening = open < size && waiters > 0;
            st.busiest = st.busiest.max(in_use);
            if slow && size < ceiling && cooled && !opening {
                st.grown_at = Some(now);
                st.window_at = now;
                st.busiest = in_use;
                Some(size.saturating_add(a.step).min(ceiling))
            } else if size > ceiling {
                Some(ceiling)
            } else if now.saturating_duration_since(st.window_at) >= a.idle {
                // Connections never in use together over the whole window are spare.
                let spare = size.saturating_sub(st.busiest);
                st.window_at = now;
                st.busiest = in_use;
                (spare > 0 && size > floor).then(|| size - spare.min(a.step).min(size - floor))
            } else {
                None
            }
        };
        if let Some(t) = target.filter(|t| *t != size) {
            if t > size {
                sc.grows.fetch_add(1, Relaxed);
            } else {
                sc.shrinks.fetch_add(1, Relaxed);
            }
            tracing::debug!(node = %self.node, from = size, to = t, "auto-scaling");
            self.resize_to(t);
        }
    }
}
