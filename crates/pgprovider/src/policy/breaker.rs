//! A circuit breaker per node: after enough consecutive node failures it opens and callers
//! fail fast with [`ErrorKind::CircuitOpen`] instead of waiting on a node that is down; after
//! a pause it lets a probe through (half-open) and closes again when the probe succeeds.
//!
//! ```
//! use pgprovider::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
//! use pgprovider::{Error, ErrorKind};
//! let breaker = CircuitBreaker::new("db1:5432", BreakerConfig::default());
//! for _ in 0..5 {
//!     let permit = breaker.try_acquire().unwrap();
//!     permit.record(&Err::<(), _>(Error::new(ErrorKind::ConnectionLost, "reset")));
//! }
//! assert_eq!(breaker.state(), BreakerState::Open);
//! assert_eq!(breaker.try_acquire().unwrap_err().kind(), ErrorKind::CircuitOpen);
//! ```
//!
//! Only failures of the node count ([`Error::is_node_failure`]: it could not be reached,
//! the connection broke, a statement timed out); a constraint violation or a syntax error is
//! the application's, and a success resets the count. Shared by clones.

use crate::{Error, ErrorKind, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// When a breaker opens and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Consecutive node failures that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before letting a probe through.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    /// 5 failures; open for 5 s.
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(5),
        }
    }
}

impl BreakerConfig {
    /// A configuration with these values (at least one failure, a positive pause).
    pub fn new(failure_threshold: u32, open_for: Duration) -> Self {
        BreakerConfig {
            failure_threshold: failure_threshold.max(1),
            open_for: open_for.max(Duration::from_millis(1)),
        }
    }
}

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail fast.
    Open,
    /// One probe is allowed through; its outcome closes or re-opens the breaker.
    HalfOpen,
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// A circuit breaker; see the [module docs](self). Cheap to clone.
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    node: Box<str>,
    config: BreakerConfig,
    inner: Mutex<Inner>,
    /// Mirrors `inner == Closed { failures: 0 }`: the hot path (a healthy node, a call that
    /// succeeds) reads this and takes no lock.
    healthy: AtomicBool,
}

/// Leave to make one call; report its outcome with [`record`](BreakerPermit::record).
/// Dropped without a report (the call was cancelled), it counts as neither.
#[derive(Debug)]
#[must_use = "report the call's outcome with record()"]
pub struct BreakerPermit {
    breaker: CircuitBreaker,
    probe: bool,
    done: bool,
}

impl CircuitBreaker {
    /// A closed breaker for `node`.
    pub fn new(node: impl Into<String>, config: BreakerConfig) -> Self {
        CircuitBreaker {
            shared: Arc::new(Shared {
                node: node.into().into_boxed_str(),
                config,
                inner: Mutex::new(Inner::Closed { failures: 0 }),
                healthy: AtomicBool::new(true),
            }),
        }
    }

    /// The current state (an open breaker whose pause is over shows as half-open).
    pub fn state(&self) -> BreakerState {
        match &*self.lock() {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } if Instant::now() >= *until => BreakerState::HalfOpen,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Leave for one call.
    ///
    /// # Errors
    /// [`ErrorKind::CircuitOpen`] while open, or while half-open with its probe in flight;
    /// the error names the node and when to expect a probe.
    pub fn try_acquire(&self) -> Result<BreakerPermit> {
        if self.shared.healthy.load(Ordering::Acquire) {
            return Ok(BreakerPermit {
                breaker: self.clone(),
                probe: false,
                done: false,
            });
        }
        let mut inner = self.lock();
        let now = Instant::now();
        let probe = match &*inner {
            Inner::Closed { .. } => false,
            Inner::Open { until } if now >= *until => {
                *inner = Inner::HalfOpen { probing: true };
                true
            }
            Inner::HalfOpen { probing: false } => {
                *inner = Inner::HalfOpen { probing: true };
                true
            }
            Inner::Open { until } => {
                let left = until.saturating_duration_since(now);
                return Err(self.open_error(&format!("a probe in {left:?}")));
            }
            Inner::HalfOpen { probing: true } => {
                return Err(self.open_error("a probe is in flight"));
            }
        };
        Ok(BreakerPermit {
            breaker: self.clone(),
            probe,
            done: false,
        })
    }

    fn open_error(&self, when: &str) -> Error {
        Error::new(
            ErrorKind::CircuitOpen,
            format!(
                "the circuit breaker of {} is open ({when})",
                self.shared.node
            ),
        )
        .with_node(self.shared.node.to_string())
        .with_hint("the node failed repeatedly; requests fail fast until a probe succeeds")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn outcome(&self, failed: bool, probe: bool) {
        if !failed && self.shared.healthy.load(Ordering::Acquire) {
            return;
        }
        let mut inner = self.lock();
        *inner = match (&*inner, failed) {
            (_, false) => Inner::Closed { failures: 0 },
            (Inner::Closed { failures }, true)
                if failures + 1 < self.shared.config.failure_threshold && !probe =>
            {
                Inner::Closed {
                    failures: failures + 1,
                }
            }
            (Inner::Open { until }, true) if !probe => Inner::Open { until: *until },
            (_, true) => {
                tracing::warn!(node = %self.shared.node, "circuit breaker opened");
                Inner::Open {
                    until: Instant::now() + self.shared.config.open_for,
                }
            }
        };
        let healthy = matches!(*inner, Inner::Closed { failures: 0 });
        self.shared.healthy.store(healthy, Ordering::Release);
    }
}

impl BreakerPermit {
    /// Reports the call's outcome: a node failure counts against the node, anything else
    /// (success, or the application's own error) closes the breaker.
    pub fn record<T>(mut self, outcome: &Result<T>) {
        self.done = true;
        let failed = matches!(outcome, Err(e) if e.is_node_failure());
        self.breaker.outcome(failed, self.probe);
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if !self.done && self.probe {
            // A cancelled probe: let the next caller probe instead.
            let mut inner = self.breaker.lock();
            if let Inner::HalfOpen { probing: true } = &*inner {
                *inner = Inner::HalfOpen { probing: false };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost() -> Result<()> {
        Err(Error::new(ErrorKind::ConnectionLost, "reset by peer"))
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_probes_and_closes() {
        let b = CircuitBreaker::new("db1:5432", BreakerConfig::new(3, Duration::from_secs(2)));
        // Application errors and successes do not trip it.
        b.try_acquire().unwrap().record(&lost());
        b.try_acquire()
            .unwrap()
            .record(&Err::<(), _>(Error::database(
                crate::SqlState::UNIQUE_VIOLATION,
                "duplicate",
            )));
        assert_eq!(b.state(), BreakerState::Closed);
        b.try_acquire().unwrap().record(&lost());
        b.try_acquire().unwrap().record(&lost());
        b.try_acquire().unwrap().record(&lost());
        assert_eq!(b.state(), BreakerState::Open);
        let e = b.try_acquire().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CircuitOpen);
        assert_eq!(e.node(), Some("db1:5432"));
        assert!(e.message().contains("a probe in"), "{e}");

        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.try_acquire().unwrap();
        assert!(
            b.try_acquire()
                .unwrap_err()
                .message()
                .contains("probe is in flight")
        );
        probe.record(&lost());
        assert_eq!(b.state(), BreakerState::Open, "a failed probe re-opens it");

        tokio::time::advance(Duration::from_secs(2)).await;
        // A cancelled probe hands the probe to the next caller.
        drop(b.try_acquire().unwrap());
        let probe = b.clone().try_acquire().unwrap();
        probe.record(&Ok(()));
        assert_eq!(b.state(), BreakerState::Closed);
        b.try_acquire().unwrap().record(&lost());
        assert_eq!(b.state(), BreakerState::Closed, "the count starts again");
    }

    #[test]
    fn configuration_is_kept_sane() {
        let c = BreakerConfig::new(0, Duration::ZERO);
        assert_eq!(c.failure_threshold, 1);
        assert!(c.open_for > Duration::ZERO);
        assert_eq!(BreakerConfig::default().failure_threshold, 5);
    }
}
