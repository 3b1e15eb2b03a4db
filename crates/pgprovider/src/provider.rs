//! The provider: one pool per node, writes routed to the primary (found again after a
//! failover), reads balanced over healthy standbys within a lag bound, with the primary as
//! fallback.
//!
//! ```no_run
//! # async fn run() -> pgprovider::Result<()> {
//! use pgprovider::{Config, Queries};
//! use pgprovider::provider::{Provider, TopologyOptions};
//! let config = Config::from_url("postgres://app@db1,db2,db3/app")?;
//! let provider = Provider::new(pgprovider_tokio_postgres::TokioPostgres::new(), &config, TopologyOptions::default());
//! provider.write().await?.execute("INSERT INTO events (kind) VALUES ('signup')", &[]).await?;
//! let rows = provider.read().await?.query("SELECT count(*) FROM events", &[]).await?;
//! # Ok(()) }
//! ```
//!
//! - **Writes** ([`Provider::write`]) check out from the node the [`HealthMonitor`] knows as
//!   primary. With none (a failover in progress), they wait up to
//!   [`TopologyOptions::failover_timeout`] for the monitor to find one (or fail at once with
//!   [`ErrorKind::Connect`] when the timeout is zero), then go there: no configuration change.
//!   A checkout that fails asks the monitor to recheck the node at once.
//! - **Reads** ([`Provider::read`]) go round-robin over reachable standbys whose replay lag is
//!   within [`TopologyOptions::max_replica_lag_bytes`]; with none, to the primary when
//!   [`TopologyOptions::read_from_primary`] allows it. A standby whose checkout fails is
//!   skipped for that read and rechecked.
//!
//! - **Read-your-writes**: [`Provider::consistency_token`] after a write, then
//!   [`Provider::read_after`] reads only from a node that has replayed it (waiting a bounded
//!   time for a standby, else the primary).
//! - **Breakers**: reads skip a node whose circuit breaker is open and try the next;
//!   [`Provider::read_query`] also retries a read on the next node when one fails.
//!
//! Still to come in the topology layer: breakers on the write path, evicting pooled
//! connections when a node's role changes, timelines against split brains, and balancing
//! policies besides round-robin. `pgprovider drill failover` exercises what is here.

use crate::breaker::{BreakerConfig, CircuitBreaker};
use crate::config::{Config, Node};
use crate::pool::{Pool, Pooled};
use crate::topology::{HealthMonitor, Role, parse_lsn};
use crate::{Connection, Driver, Error, ErrorKind, Queries, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;
use tokio::time::Instant;

/// How the provider routes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopologyOptions {
    /// How long a write waits for a primary during a failover (zero: fail at once).
    pub failover_timeout: Duration,
    /// Standbys further behind than this (received but not replayed WAL, bytes) get no
    /// reads; `None` for no bound.
    pub max_replica_lag_bytes: Option<u64>,
    /// Whether reads go to the primary when no standby qualifies.
    pub read_from_primary: bool,
    /// How often the monitor probes each node.
    pub monitor_interval: Duration,
    /// The circuit breakers of the nodes (reads skip a node whose breaker is open).
    pub breaker: BreakerConfig,
}

impl Default for TopologyOptions {
    /// Wait 30 s for a primary; 16 MiB lag bound; reads fall back to the primary; probe every
    /// second.
    fn default() -> Self {
        TopologyOptions {
            failover_timeout: Duration::from_secs(30),
            max_replica_lag_bytes: Some(16 << 20),
            read_from_primary: true,
            monitor_interval: Duration::from_secs(1),
            breaker: BreakerConfig::default(),
        }
    }
}

impl TopologyOptions {
    /// Sets the failover timeout.
    pub fn with_failover_timeout(mut self, t: Duration) -> Self {
        self.failover_timeout = t;
        self
    }
    /// Sets the lag bound.
    pub fn with_max_replica_lag_bytes(mut self, bytes: Option<u64>) -> Self {
        self.max_replica_lag_bytes = bytes;
        self
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
    /// Sets the probe interval.
    pub fn with_monitor_interval(mut self, interval: Duration) -> Self {
        self.monitor_interval = interval;
        self
    }
}

/// Pools for every node of a configuration, with routing; see the [module docs](self).
/// Cheap to clone.
pub struct Provider<D: Driver> {
    inner: Arc<Inner<D>>,
}

impl<D: Driver> Clone for Provider<D> {
    fn clone(&self) -> Self {
        Provider {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<D: Driver> {
    nodes: Vec<Node>,
    pools: Vec<Pool<D>>,
    breakers: Vec<CircuitBreaker>,
    monitor: HealthMonitor,
    options: TopologyOptions,
    next_read: AtomicUsize,
}

impl<D: Driver> std::fmt::Debug for Provider<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("monitor", &self.inner.monitor)
            .finish()
    }
}

impl<D: Driver + Clone> Provider<D> {
    /// A pool per node of `config` and a monitor probing them (inside a tokio runtime).
    pub fn new(driver: D, config: &Config, options: TopologyOptions) -> Self {
        let nodes = config.nodes().to_vec();
        let pools = nodes
            .iter()
            .map(|n| Pool::new(driver.clone(), config, n))
            .collect();
        let monitor = HealthMonitor::start(driver, config, options.monitor_interval);
        let breakers = nodes
            .iter()
            .map(|n| CircuitBreaker::new(n.to_string(), options.breaker))
            .collect();
        Provider {
            inner: Arc::new(Inner {
                nodes,
                pools,
                breakers,
                monitor,
                options,
                next_read: AtomicUsize::new(0),
            }),
        }
    }
}

impl<D: Driver> Provider<D> {
    /// The health monitor.
    pub fn monitor(&self) -> &HealthMonitor {
        &self.inner.monitor
    }

    /// The pool of `node`.
    pub fn pool(&self, node: &Node) -> Option<&Pool<D>> {
        let i = self.inner.nodes.iter().position(|n| n == node)?;
        Some(&self.inner.pools[i])
    }

    /// A connection to the primary, waiting for one during a failover.
    ///
    /// # Errors
    /// [`ErrorKind::Connect`] when no primary appeared within the failover timeout (naming
    /// every node's state); the pool's error when the primary's checkout fails past it.
    pub async fn write(&self) -> Result<Pooled<D>> {
        let deadline = Instant::now() + self.inner.options.failover_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let node = self.inner.monitor.wait_for_primary(left).await?;
            let i = self
                .inner
                .nodes
                .iter()
                .position(|n| *n == node)
                .expect("the monitor's nodes are the provider's");
            let probes = self.inner.monitor.statuses()[i].probes;
            // The checkout races the monitor: when the node stops being a reachable primary
            // (crashed, demoted), the write re-routes at once instead of waiting out the
            // pool's connect retries.
            let demoted = self
                .inner
                .monitor
                .wait_for(left, |s| !(s[i].reachable && s[i].role == Role::Primary));
            let checkout = tokio::time::timeout(
                left.max(Duration::from_millis(1)),
                self.inner.pools[i].get(),
            );
            let outcome = tokio::select! {
                r = checkout => r,
                Ok(_) = demoted => continue,
            };
            match outcome {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) if Instant::now() < deadline && e.is_node_failure() => {
                    // The primary just went away: have the monitor look again, wait for
                    // its verdict, then route by it.
                    self.inner.monitor.recheck(&node);
                    let _ = self
                        .inner
                        .monitor
                        .wait_for(deadline.saturating_duration_since(Instant::now()), |s| {
                            s[i].probes > probes || !s[i].reachable
                        })
                        .await;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::PoolTimeout,
                        format!("no connection to the primary {node} within the failover timeout"),
                    )
                    .with_node(node.to_string()));
                }
            }
        }
    }

    /// The circuit breaker of `node`.
    pub fn breaker(&self, node: &Node) -> Option<&CircuitBreaker> {
        let i = self.inner.nodes.iter().position(|n| n == node)?;
        Some(&self.inner.breakers[i])
    }

    /// The nodes a read may use, in the order to try them: standbys within the lag bound
    /// (rotating), then the primary when allowed.
    fn read_candidates(&self) -> Vec<usize> {
        let statuses = self.inner.monitor.statuses();
        let bound = self.inner.options.max_replica_lag_bytes;
        let standbys: Vec<usize> = statuses
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.reachable
                    && s.role == Role::Standby
                    && bound.is_none_or(|b| s.replay_lag_bytes.unwrap_or(0) <= b)
            })
            .map(|(i, _)| i)
            .collect();
        let start = self.inner.next_read.fetch_add(1, Relaxed);
        let mut order: Vec<usize> = (0..standbys.len())
            .map(|k| standbys[(start + k) % standbys.len()])
            .collect();
        if self.inner.options.read_from_primary {
            if let Some(i) = statuses
                .iter()
                .position(|s| s.reachable && s.role == Role::Primary)
            {
                order.push(i);
            }
        }
        order
    }

    fn no_reader(&self, errors: &[String]) -> Error {
        let states: Vec<String> = self
            .inner
            .monitor
            .statuses()
            .iter()
            .map(|s| format!("{} {:?} lag {:?}", s.node, s.role, s.replay_lag_bytes))
            .collect();
        let failed = if errors.is_empty() {
            String::new()
        } else {
            format!("; failed: {}", errors.join("; "))
        };
        Error::new(
            ErrorKind::Connect,
            format!("no node can serve the read ({}{failed})", states.join("; ")),
        )
        .with_hint(
            "standbys are down or too far behind; allow read_from_primary or raise max_replica_lag_bytes",
        )
    }

    /// A connection for reading: a standby within the lag bound (round-robin), else the
    /// primary when allowed.
    ///
    /// # Errors
    /// [`ErrorKind::Connect`] when no node qualifies (naming every node's state).
    pub async fn read(&self) -> Result<Pooled<D>> {
        let mut errors = Vec::new();
        for i in self.read_candidates() {
            let Ok(permit) = self.inner.breakers[i].try_acquire() else {
                errors.push(format!("{}: circuit breaker open", self.inner.nodes[i]));
                continue;
            };
            let got = self.inner.pools[i].get().await;
            permit.record(&got);
            match got {
                Ok(conn) => return Ok(conn),
                Err(e) => {
                    self.inner.monitor.recheck(&self.inner.nodes[i]);
                    errors.push(format!("{}: {e}", self.inner.nodes[i]));
                }
            }
        }
        Err(self.no_reader(&errors))
    }

    /// Runs a read-only statement on a node chosen as [`read`](Self::read) does, trying the
    /// next candidate when a node fails (reads are safe to repeat): a standby that dies under
    /// load costs its callers a retry, not an error. Nodes whose breaker is open are skipped.
    ///
    /// # Errors
    /// The statement's own error (a syntax error is not retried elsewhere), or
    /// [`ErrorKind::Connect`] when every candidate failed.
    pub async fn read_query<'p>(
        &self,
        sql: &str,
        params: &[&'p <D::Connection as Queries>::Param<'p>],
    ) -> Result<Vec<<D::Connection as Queries>::Row>>
    where
        D::Connection: Queries,
    {
        let mut errors = Vec::new();
        for i in self.read_candidates() {
            let Ok(permit) = self.inner.breakers[i].try_acquire() else {
                errors.push(format!("{}: circuit breaker open", self.inner.nodes[i]));
                continue;
            };
            let r = async {
                let mut conn = self.inner.pools[i].get().await?;
                conn.query(sql, params).await
            }
            .await;
            permit.record(&r);
            match r {
                Ok(rows) => return Ok(rows),
                Err(e) if e.is_node_failure() => {
                    self.inner.monitor.recheck(&self.inner.nodes[i]);
                    errors.push(format!("{}: {e}", self.inner.nodes[i]));
                }
                Err(e) => return Err(e),
            }
        }
        Err(self.no_reader(&errors))
    }

    /// The position a read must have seen to include everything committed so far on `conn`
    /// (a connection to the primary, after its writes committed).
    ///
    /// # Errors
    /// The server's error.
    pub async fn consistency_token(&self, conn: &mut Pooled<D>) -> Result<ConsistencyToken> {
        let rows = conn.simple_query("SELECT pg_current_wal_lsn()").await?;
        rows.first()
            .and_then(|r| r.get(0))
            .and_then(parse_lsn)
            .map(ConsistencyToken)
            .ok_or_else(|| Error::new(ErrorKind::Other, "the server returned no WAL position"))
    }

    /// A connection for reading that sees everything before `token`: a standby that has
    /// replayed it (waiting up to `wait` for one to catch up), else the primary. Never
    /// returns a node that is behind the token.
    ///
    /// # Errors
    /// As [`write`](Self::write) when the primary is needed and missing.
    pub async fn read_after(&self, token: ConsistencyToken, wait: Duration) -> Result<Pooled<D>> {
        let deadline = Instant::now() + wait;
        let statuses = self.inner.monitor.statuses();
        for i in self.read_candidates() {
            if statuses[i].role != Role::Standby {
                continue;
            }
            let Ok(mut conn) = self.inner.pools[i].get().await else {
                continue;
            };
            loop {
                match replayed(&mut *conn).await {
                    Some(lsn) if lsn >= token.0 => return Ok(conn),
                    Some(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    _ => break,
                }
            }
        }
        self.write().await
    }
}

/// A WAL position: reads given it see every write committed before it was taken
/// ([`Provider::consistency_token`], [`Provider::read_after`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConsistencyToken(pub u64);

/// The position a standby has replayed.
async fn replayed<C: Connection>(conn: &mut C) -> Option<u64> {
    let rows = conn
        .simple_query("SELECT pg_last_wal_replay_lsn()")
        .await
        .ok()?;
    rows.first()?.get(0).and_then(parse_lsn)
}
