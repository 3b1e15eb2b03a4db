//! The provider's routing options.

use crate::breaker::BreakerConfig;
use crate::retry::{Backoff, RetryPolicy};
use std::time::Duration;

/// How the provider routes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopologyOptions {
    /// How long a write waits for a primary during a failover (zero: fail at once).
    pub failover_timeout: Duration,
    /// Standbys further behind the primary than this (bytes of WAL; see
    /// [`topology`](crate::topology#replica-lag)) get no reads; `None` for no bound.
    pub max_replica_lag_bytes: Option<u64>,
    /// Standbys that have lacked WAL the primary had for longer than this get no reads;
    /// `None` (the default) for no bound.
    pub max_replica_lag: Option<Duration>,
    /// Whether reads go to the primary when no standby qualifies.
    pub read_from_primary: bool,
    /// How often the monitor probes each node.
    pub monitor_interval: Duration,
    /// The circuit breakers of the nodes (reads skip a node whose breaker is open).
    pub breaker: BreakerConfig,
    /// How reads are spread over the standbys.
    pub read_balancing: ReadBalancing,
    /// The retry layer: what is retried (see [`RetryPolicy::is_safe`]), how often, and the
    /// time budget of one statement (by default 5 attempts within the failover timeout).
    pub retry: Option<RetryPolicy>,
}

/// How reads are spread over the standbys that qualify; the others are tried in turn when
/// the first fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadBalancing {
    /// Each read starts at the next standby (the default).
    #[default]
    RoundRobin,
    /// Each read starts at a standby picked at random.
    Random,
    /// The standby with the fewest checked-out connections first (ties in rotation).
    LeastOutstanding,
    /// The standby with the lowest score first, the score being the monitor's smoothed
    /// probe round trip times (outstanding connections + 1): fast nodes get more, but not
    /// all, of the reads.
    LatencyAware,
}

impl Default for TopologyOptions {
    /// Wait 30 s for a primary; 16 MiB lag bound; reads fall back to the primary; probe every
    /// second.
    fn default() -> Self {
        TopologyOptions {
            failover_timeout: Duration::from_secs(30),
            max_replica_lag_bytes: Some(16 << 20),
            max_replica_lag: None,
            read_from_primary: true,
            monitor_interval: Duration::from_secs(1),
            breaker: BreakerConfig::default(),
            read_balancing: ReadBalancing::RoundRobin,
            retry: None,
        }
    }
}

impl TopologyOptions {
    /// Sets the failover timeout.
    pub fn with_failover_timeout(mut self, t: Duration) -> Self {
        self.failover_timeout = t;
        self
    }
    /// Sets the lag bound in bytes.
    pub fn with_max_replica_lag_bytes(mut self, bytes: Option<u64>) -> Self {
        self.max_replica_lag_bytes = bytes;
        self
    }
    /// Sets the lag bound in time.
    pub fn with_max_replica_lag(mut self, lag: Option<Duration>) -> Self {
        self.max_replica_lag = lag;
        self
    }
    /// Sets the retry layer's policy.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }
    /// The retry policy in force: the one set, else 5 attempts within the failover
    /// timeout.
    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        self.retry
            .clone()
            .unwrap_or_else(|| RetryPolicy::new(Backoff::default(), self.failover_timeout))
    }
    /// Whether reads may fall back to the primary.
    pub fn with_read_from_primary(mut self, allowed: bool) -> Self {
        self.read_from_primary = allowed;
        self
    }
    /// Sets the circuit breakers' configuration.
    pub fn with_breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }
    /// Sets the read balancing policy.
    pub fn with_read_balancing(mut self, policy: ReadBalancing) -> Self {
        self.read_balancing = policy;
        self
    }
    /// Sets the probe interval.
    pub fn with_monitor_interval(mut self, interval: Duration) -> Self {
        self.monitor_interval = interval;
        self
    }
}
