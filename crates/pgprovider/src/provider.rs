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
//! - **Reads** ([`Provider::read`]) go to reachable standbys whose replay lag is within
//!   [`TopologyOptions::max_replica_lag_bytes`], in the order of the
//!   [`ReadBalancing`] policy; with none, to the primary when
//!   [`TopologyOptions::read_from_primary`] allows it. A standby whose checkout fails is
//!   skipped for that read and rechecked.
//!
//! - **Read-your-writes**: [`Provider::consistency_token`] after a write, then
//!   [`Provider::read_after`] reads only from a node that has replayed it (waiting a bounded
//!   time for a standby, else the primary).
//! - **Breakers**: reads skip a node whose circuit breaker is open and try the next;
//!   [`Provider::read_query`] also retries a read on the next node when one fails. A write
//!   finding the primary's breaker open does not hammer it: it waits (within the failover
//!   timeout) for the monitor to find a primary it can use, and fails with
//!   [`ErrorKind::CircuitOpen`] when none appears.
//! - **Role changes**: when the monitor sees a node change role (a primary demoted, a
//!   standby promoted) or fenced in a split brain, the node's pool is
//!   [retired](Pool::retire): no session from before the change is reused. A connection
//!   of this provider that breaks, or meets a statement refused as read-only (`25006`),
//!   makes the monitor probe that node at once, and a write finding no primary has every
//!   node probed at once: writes stop going to a demoted primary after one error, not after
//!   the next probe, and when a recovered node is primary again, writes follow it.
//! - **Split brain**: only the primary on the newest timeline gets writes or reads; see the
//!   [`topology`](crate::topology) module.
//! - **Overload**: every wait is bounded (the failover timeout, the pool's acquire timeout,
//!   `pool_max_waiters` callers at most per node, then [`ErrorKind::Overloaded`] at once).
//!
//! `pgprovider drill failover` exercises all of it against a real primary and standby.

use crate::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use crate::config::{Config, Node};
use crate::health::{HealthReport, NodeHealth};
use crate::observe::Hooks;
use crate::pool::{Pool, Pooled};
use crate::topology::{HealthMonitor, Role, parse_lsn};
use crate::{Connection, Driver, Error, ErrorKind, Queries, Result};
use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
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
    /// How reads are spread over the standbys.
    pub read_balancing: ReadBalancing,
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
            read_from_primary: true,
            monitor_interval: Duration::from_secs(1),
            breaker: BreakerConfig::default(),
            read_balancing: ReadBalancing::RoundRobin,
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
    random: RandomState,
    driver: D,
    config: Config,
    hooks: Hooks,
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
        Self::with_hooks(driver, config, options, Hooks::default())
    }

    /// As [`new`](Self::new), with every operation of every pool running through `hooks`
    /// (see [`observe`](crate::observe)).
    pub fn with_hooks(driver: D, config: &Config, options: TopologyOptions, hooks: Hooks) -> Self {
        let nodes = config.nodes().to_vec();
        let monitor = HealthMonitor::start(driver.clone(), config, options.monitor_interval);
        let pools = nodes
            .iter()
            .map(|n| {
                Pool::builder(driver.clone(), config, n)
                    .on_suspect(monitor.rechecker(n))
                    .observe(hooks.clone())
                    .build()
            })
            .collect();
        let breakers = nodes
            .iter()
            .map(|n| CircuitBreaker::new(n.to_string(), options.breaker))
            .collect();
        let inner = Arc::new(Inner {
            nodes,
            pools,
            breakers,
            monitor,
            options,
            next_read: AtomicUsize::new(0),
            random: RandomState::new(),
            driver: driver.clone(),
            config: config.clone(),
            hooks: hooks.clone(),
        });
        tokio::spawn(retire_on_role_change(
            Arc::downgrade(&inner),
            inner.monitor.changes(),
        ));
        Provider { inner }
    }
}

/// Retires a node's pool when the node changes role (between known roles: a spell of
/// unreachability in between does not hide a demotion) or becomes fenced. Ends with the
/// provider.
async fn retire_on_role_change<D: Driver>(
    inner: std::sync::Weak<Inner<D>>,
    mut changes: tokio::sync::watch::Receiver<u64>,
) {
    let mut known: Vec<(Role, bool)> = Vec::new();
    loop {
        {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let statuses = inner.monitor.statuses();
            known.resize(statuses.len(), (Role::Unknown, false));
            for (i, s) in statuses.iter().enumerate() {
                if s.role == Role::Unknown {
                    continue;
                }
                let (role, fenced) = known[i];
                let changed = (role != Role::Unknown && role != s.role) || (s.fenced && !fenced);
                if changed {
                    let closed = inner.pools[i].retire();
                    tracing::warn!(node = %s.node, from = ?role, to = ?s.role, fenced = s.fenced, closed, "node changed role: its pooled connections are retired");
                }
                known[i] = (s.role, s.fenced);
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

impl<D: Driver> Provider<D> {
    /// The health monitor.
    pub fn monitor(&self) -> &HealthMonitor {
        &self.inner.monitor
    }

    /// The configuration the provider was made with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The driver.
    pub fn driver(&self) -> &D {
        &self.inner.driver
    }

    /// The hooks every pool of the provider runs operations through.
    pub fn hooks(&self) -> &Hooks {
        &self.inner.hooks
    }

    /// How long writes wait for a primary.
    pub fn failover_timeout(&self) -> Duration {
        self.inner.options.failover_timeout
    }

    /// Every node's health and the overall verdict; see [`health`](crate::health).
    pub fn health(&self) -> HealthReport {
        let monitor = &self.inner.monitor;
        let nodes = monitor
            .statuses()
            .into_iter()
            .zip(&self.inner.pools)
            .map(|(s, pool)| {
                let p = pool.stats();
                let mut n = NodeHealth::new(s.node, s.reachable, s.role);
                n.fenced = s.fenced;
                n.replay_lag_bytes = s.replay_lag_bytes;
                n.pool_in_use = p.in_use;
                n.pool_max = p.max_size;
                n.pool_waiters = p.waiters;
                n.last_error = if s.reachable { None } else { s.last_error };
                n
            })
            .collect();
        HealthReport::new(
            nodes,
            monitor.primary().map(|n| n.to_string()),
            monitor.split_brain().is_some(),
        )
    }

    /// Publishes every pool's figures (labelled with the node's role) and the split-brain
    /// count to the `metrics` recorder; see [`observe`](crate::observe).
    pub fn record_metrics(&self) {
        for (s, pool) in self.inner.monitor.statuses().iter().zip(&self.inner.pools) {
            let role = match s.role {
                Role::Primary if s.fenced => "fenced",
                Role::Primary => "primary",
                Role::Standby => "standby",
                _ => "unknown",
            };
            crate::observe::record_pool_metrics(&s.node, role, &pool.stats());
        }
        metrics::counter!("pgprovider_split_brains_total")
            .absolute(self.inner.monitor.split_brains());
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
            if self.inner.monitor.primary_index().is_none() {
                // The monitor's view may be a probe interval old: look again everywhere.
                self.inner.monitor.recheck_all();
            }
            let node = self.inner.monitor.wait_for_primary(left).await?;
            let monitor = &self.inner.monitor;
            let i = monitor
                .nodes()
                .iter()
                .position(|n| *n == node)
                .expect("the monitor's nodes are the provider's");
            let probes = monitor.statuses()[i].probes;
            let permit = match self.inner.breakers[i].try_acquire() {
                Ok(p) => p,
                Err(e) => {
                    // Do not hammer a failing primary: wait for the monitor to trust
                    // another node (or this one's breaker to let a probe through).
                    monitor.recheck(&node);
                    let moved = monitor
                        .wait_for(left, |_| {
                            monitor.primary_index() != Some(i)
                                || self.inner.breakers[i].state() != BreakerState::Open
                        })
                        .await;
                    if moved.is_err() {
                        return Err(e);
                    }
                    continue;
                }
            };
            // The checkout races the monitor: when the node stops being the trusted primary
            // (crashed, demoted, fenced), the write re-routes at once instead of waiting out
            // the pool's connect retries.
            let demoted = monitor.wait_for(left, |_| monitor.primary_index() != Some(i));
            let checkout = tokio::time::timeout(
                left.max(Duration::from_millis(1)),
                self.inner.pools[i].get(),
            );
            let outcome = tokio::select! {
                r = checkout => r,
                Ok(_) = demoted => continue,
            };
            if let Ok(got) = &outcome {
                permit.record(got);
            }
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
    /// (ordered by the balancing policy), then the trusted primary when allowed.
    fn read_candidates(&self) -> Vec<usize> {
        let statuses = self.inner.monitor.statuses();
        let bound = self.inner.options.max_replica_lag_bytes;
        let standbys: Vec<Candidate> = statuses
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.reachable
                    && s.role == Role::Standby
                    && bound.is_none_or(|b| s.replay_lag_bytes.unwrap_or(0) <= b)
            })
            .map(|(i, s)| Candidate {
                index: i,
                outstanding: self.inner.pools[i].in_use(),
                rtt: s.probe_rtt.unwrap_or(Duration::MAX),
            })
            .collect();
        let policy = self.inner.options.read_balancing;
        let n = self.inner.next_read.fetch_add(1, Relaxed);
        let start = match policy {
            ReadBalancing::Random => self.inner.random.hash_one(n) as usize,
            _ => n,
        };
        let mut order = balance(policy, standbys, start);
        if self.inner.options.read_from_primary {
            order.extend(self.inner.monitor.primary_index());
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
        self.read_with(|conn| std::future::ready(Ok(conn))).await
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
        self.read_with(|mut conn| async move { conn.query(sql, params).await })
            .await
    }

    /// The read loop: each candidate in turn (skipping open breakers), a checkout that
    /// gives up as soon as the monitor sees the node unreachable, then `run`; a node failure
    /// moves on to the next candidate. When a round ends with nothing served while some node
    /// failed or is unreachable (a failure in progress), every node is probed and the round
    /// runs again, within the failover timeout; with every node reachable and none
    /// qualifying (or only open breakers), it fails at once.
    pub(crate) async fn read_with<T, F, Fut>(&self, run: F) -> Result<T>
    where
        F: Fn(Pooled<D>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let monitor = &self.inner.monitor;
        let deadline = Instant::now() + self.inner.options.failover_timeout;
        loop {
            let mut errors = Vec::new();
            let mut node_failed = false;
            for i in self.read_candidates() {
                let Ok(permit) = self.inner.breakers[i].try_acquire() else {
                    errors.push(format!("{}: circuit breaker open", self.inner.nodes[i]));
                    continue;
                };
                let attempt = async {
                    let conn = self.inner.pools[i].get().await?;
                    run(conn).await
                };
                let gone = monitor.wait_for(self.inner.config.pool().acquire_timeout(), |s| {
                    !s[i].reachable
                });
                let r = tokio::select! {
                    r = attempt => r,
                    Ok(_) = gone => Err(Error::new(
                        ErrorKind::Connect,
                        "the node became unreachable during the read",
                    )
                    .with_node(self.inner.nodes[i].to_string())),
                };
                permit.record(&r);
                match r {
                    Ok(v) => return Ok(v),
                    Err(e) if e.is_node_failure() => {
                        node_failed = true;
                        monitor.recheck(&self.inner.nodes[i]);
                        errors.push(format!("{}: {e}", self.inner.nodes[i]));
                    }
                    Err(e) => return Err(e),
                }
            }
            // Open breakers fail fast (that is their point); a node failing or unreachable
            // now is worth another look.
            let settled = !node_failed && monitor.statuses().iter().all(|s| s.reachable);
            let left = deadline.saturating_duration_since(Instant::now());
            if settled || left.is_zero() {
                return Err(self.no_reader(&errors));
            }
            // A failure in progress: look again once every node has been probed anew.
            monitor.recheck_all();
            let probed = monitor.wait_round(left).await;
            if probed.is_err() {
                return Err(self.no_reader(&errors));
            }
        }
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

/// A standby a read may go to, with what the balancing policies weigh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Candidate {
    index: usize,
    outstanding: u64,
    rtt: Duration,
}

/// Orders `standbys` for one read: rotated to start at `start` (modulo their number), then,
/// for the weighing policies, stably sorted by their weight (so ties keep the rotation).
fn balance(policy: ReadBalancing, mut standbys: Vec<Candidate>, start: usize) -> Vec<usize> {
    if !standbys.is_empty() {
        let k = start % standbys.len();
        standbys.rotate_left(k);
    }
    match policy {
        ReadBalancing::RoundRobin | ReadBalancing::Random => {}
        ReadBalancing::LeastOutstanding => standbys.sort_by_key(|c| c.outstanding),
        ReadBalancing::LatencyAware => {
            standbys.sort_by_key(|c| c.rtt.saturating_mul(c.outstanding.saturating_add(1) as u32))
        }
    }
    standbys.into_iter().map(|c| c.index).collect()
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

#[cfg(test)]
mod tests {
    use super::{Candidate, ReadBalancing, balance};
    use std::time::Duration;

    fn c(index: usize, outstanding: u64, rtt_ms: u64) -> Candidate {
        Candidate {
            index,
            outstanding,
            rtt: Duration::from_millis(rtt_ms),
        }
    }

    #[test]
    fn balancing_policies_order_the_standbys() {
        let three = vec![c(0, 5, 1), c(2, 0, 9), c(3, 2, 2)];
        let rr = |start| balance(ReadBalancing::RoundRobin, three.clone(), start);
        assert_eq!(rr(0), vec![0, 2, 3]);
        assert_eq!(rr(1), vec![2, 3, 0]);
        assert_eq!(rr(5), vec![3, 0, 2]);
        assert_eq!(
            balance(ReadBalancing::Random, three.clone(), 7),
            vec![2, 3, 0]
        );
        assert_eq!(
            balance(ReadBalancing::LeastOutstanding, three.clone(), 0),
            vec![2, 3, 0]
        );
        // Latency × (outstanding + 1): 6 ms, 9 ms, 6 ms; ties keep the rotation.
        assert_eq!(
            balance(ReadBalancing::LatencyAware, three.clone(), 0),
            vec![0, 3, 2]
        );
        assert_eq!(
            balance(ReadBalancing::LatencyAware, three.clone(), 2),
            vec![3, 0, 2]
        );
        // A node never probed has no latency: last.
        let unknown = vec![c(0, 0, 1), c(1, 0, 1)]
            .into_iter()
            .chain([Candidate {
                index: 2,
                outstanding: 0,
                rtt: Duration::MAX,
            }])
            .collect();
        assert_eq!(
            balance(ReadBalancing::LatencyAware, unknown, 2),
            vec![0, 1, 2]
        );
        for p in [
            ReadBalancing::RoundRobin,
            ReadBalancing::Random,
            ReadBalancing::LeastOutstanding,
            ReadBalancing::LatencyAware,
        ] {
            assert!(balance(p, Vec::new(), 3).is_empty());
        }
    }

    #[test]
    fn round_robin_spreads_evenly() {
        let mut first = [0usize; 4];
        for start in 0..400 {
            let order = balance(
                ReadBalancing::RoundRobin,
                (0..4).map(|i| c(i, 0, 1)).collect(),
                start,
            );
            first[order[0]] += 1;
        }
        assert_eq!(first, [100; 4]);
    }
}
