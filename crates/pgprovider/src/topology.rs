//! Nodes and their roles: a health monitor that learns, for every node of a configuration,
//! whether it is reachable, primary or standby, its WAL position and its replay lag.
//!
//! Each node has a task of its own with a dedicated connection (outside the pools), probing
//! every interval (default 1 s); [`HealthMonitor::recheck`] probes at once (call it when a
//! connection to the node fails, instead of waiting for the next tick), and
//! [`HealthMonitor::wait_for_primary`] waits until some node is primary, which is how writes
//! ride out a failover: the promoted standby is found with no configuration change.
//!
//! ```no_run
//! # async fn run() -> pgprovider::Result<()> {
//! use pgprovider::topology::HealthMonitor;
//! use std::time::Duration;
//! let config = pgprovider::Config::from_url("postgres://app@db1,db2,db3/app")?;
//! let monitor = HealthMonitor::start(pgprovider_tokio_postgres::TokioPostgres::new(), &config, Duration::from_secs(1));
//! let primary = monitor.wait_for_primary(Duration::from_secs(10)).await?;
//! for s in monitor.statuses() {
//!     println!("{}: {:?}, lag {:?} bytes", s.node, s.role, s.replay_lag_bytes);
//! }
//! # Ok(()) }
//! ```
//!
//! This is the first part of the topology layer (routing, failover, replicas and breakers
//! build on it).

use crate::config::{Config, Node};
use crate::{Connection, Driver, Error, ErrorKind, Result};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// A node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// Accepts writes (`pg_is_in_recovery()` is false).
    Primary,
    /// A hot standby, replaying WAL.
    Standby,
    /// Not known: never reached, or unreachable now.
    Unknown,
}

/// What the monitor knows of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStatus {
    /// The node, `host:port`.
    pub node: String,
    /// Whether the last probe succeeded.
    pub reachable: bool,
    /// The role found by the last successful probe (`Unknown` while unreachable).
    pub role: Role,
    /// The WAL position: written (primary) or replayed (standby).
    pub lsn: Option<u64>,
    /// On a standby, received but not yet replayed WAL, in bytes.
    pub replay_lag_bytes: Option<u64>,
    /// The server's version string.
    pub server_version: Option<String>,
    /// The last probe's error, if it failed.
    pub last_error: Option<String>,
    /// Successful probes so far.
    pub probes: u64,
}

impl NodeStatus {
    fn unknown(node: &Node) -> Self {
        NodeStatus {
            node: node.to_string(),
            reachable: false,
            role: Role::Unknown,
            lsn: None,
            replay_lag_bytes: None,
            server_version: None,
            last_error: None,
            probes: 0,
        }
    }
}

/// Probes every node of a configuration; see the [module docs](self). Cheap to clone; the
/// probing tasks end when the last clone is dropped.
#[derive(Clone)]
pub struct HealthMonitor {
    shared: Arc<Shared>,
}

struct Shared {
    nodes: Vec<Node>,
    statuses: RwLock<Vec<NodeStatus>>,
    wakes: Vec<Arc<Notify>>,
    changed: watch::Sender<u64>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Wake every probing task so it sees the monitor is gone and closes its connection
        // now, not at its next tick.
        for w in &self.wakes {
            w.notify_one();
        }
    }
}

impl std::fmt::Debug for HealthMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthMonitor")
            .field("statuses", &self.statuses())
            .finish()
    }
}

impl HealthMonitor {
    /// Starts probing every node of `config` every `interval` (must be called inside a
    /// tokio runtime).
    pub fn start<D: Driver + Clone>(driver: D, config: &Config, interval: Duration) -> Self {
        let nodes = config.nodes().to_vec();
        let shared = Arc::new(Shared {
            statuses: RwLock::new(nodes.iter().map(NodeStatus::unknown).collect()),
            wakes: nodes.iter().map(|_| Arc::new(Notify::new())).collect(),
            changed: watch::channel(0).0,
            nodes,
        });
        for i in 0..shared.nodes.len() {
            tokio::spawn(probe_loop(
                Arc::downgrade(&shared),
                shared.wakes[i].clone(),
                driver.clone(),
                config.clone(),
                i,
                interval,
            ));
        }
        HealthMonitor { shared }
    }

    /// What is known of every node, in configuration order.
    pub fn statuses(&self) -> Vec<NodeStatus> {
        self.shared
            .statuses
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The reachable primary, if there is exactly one (several claiming it is a split brain:
    /// none is returned, and a warning is logged).
    pub fn primary(&self) -> Option<Node> {
        let statuses = self.statuses();
        let primaries: Vec<usize> = statuses
            .iter()
            .enumerate()
            .filter(|(_, s)| s.reachable && s.role == Role::Primary)
            .map(|(i, _)| i)
            .collect();
        match primaries.as_slice() {
            [one] => Some(self.shared.nodes[*one].clone()),
            [] => None,
            many => {
                let names: Vec<&str> = many.iter().map(|i| statuses[*i].node.as_str()).collect();
                tracing::warn!(nodes = ?names, "several nodes claim to be primary");
                None
            }
        }
    }

    /// Probes `node` now instead of at its next tick (after a connection to it failed, or a
    /// write met a read-only node).
    pub fn recheck(&self, node: &Node) {
        if let Some(i) = self.shared.nodes.iter().position(|n| n == node) {
            self.shared.wakes[i].notify_one();
        }
    }

    /// Waits until `done` holds for the statuses (checked after every probe), up to
    /// `timeout`; returns the statuses then.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] with every node's state when it did not hold in time.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[NodeStatus]) -> bool,
    ) -> Result<Vec<NodeStatus>> {
        let mut changes = self.shared.changed.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.statuses();
            if done(&now) {
                return Ok(now);
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the nodes did not reach the awaited state within {timeout:?} ({})",
                        self.describe()
                    ),
                ));
            }
        }
    }

    /// Waits until exactly one node is a reachable primary, up to `timeout`.
    ///
    /// # Errors
    /// [`ErrorKind::Connect`] naming every node's state when none became primary in time.
    pub async fn wait_for_primary(&self, timeout: Duration) -> Result<Node> {
        let found = self.wait_for(timeout, |_| self.primary().is_some()).await;
        match (found, self.primary()) {
            (Ok(_), Some(p)) => Ok(p),
            _ => Err(Error::new(
                ErrorKind::Connect,
                format!("no primary within {timeout:?} ({})", self.describe()),
            )
            .with_hint("a failover may be in progress; check the nodes with `pgprovider health`")),
        }
    }

    fn describe(&self) -> String {
        let states: Vec<String> = self
            .statuses()
            .iter()
            .map(|s| match &s.last_error {
                Some(e) if !s.reachable => format!("{}: unreachable ({e})", s.node),
                _ => format!("{}: {:?}", s.node, s.role),
            })
            .collect();
        states.join("; ")
    }
}

/// One node's probing task: keeps a connection, probes every interval or when woken, and
/// publishes what it found. Ends when the monitor is dropped.
async fn probe_loop<D: Driver>(
    shared: Weak<Shared>,
    wake: Arc<Notify>,
    driver: D,
    config: Config,
    index: usize,
    interval: Duration,
) {
    let node = config.nodes()[index].clone();
    let mut conn: Option<D::Connection> = None;
    loop {
        // A hung node must not hold its probe for long: at least 1 s, at most 5 s.
        let limit = interval.clamp(Duration::from_secs(1), Duration::from_secs(5));
        let outcome = tokio::time::timeout(limit, async {
            if conn.as_ref().is_none_or(|c| c.is_broken()) {
                let params = config.connect_params(&node).await?;
                conn = Some(driver.connect(&params).await?);
            }
            probe(conn.as_mut().expect("connected above")).await
        })
        .await
        .unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Timeout,
                "the probe did not answer in time",
            ))
        });
        let Some(shared) = shared.upgrade() else {
            return;
        };
        {
            let mut statuses = shared.statuses.write().unwrap_or_else(|e| e.into_inner());
            let s = &mut statuses[index];
            match outcome {
                Ok(found) => {
                    if s.role != found.role {
                        tracing::info!(node = %s.node, from = ?s.role, to = ?found.role, "node role changed");
                    }
                    let probes = s.probes + 1;
                    *s = NodeStatus {
                        node: s.node.clone(),
                        probes,
                        ..found
                    };
                }
                Err(e) => {
                    conn = None;
                    s.reachable = false;
                    s.role = Role::Unknown;
                    s.last_error = Some(e.to_string());
                }
            }
        }
        shared.changed.send_modify(|g| *g += 1);
        drop(shared);
        let _ = tokio::time::timeout(interval, wake.notified()).await;
    }
}

/// One probe on `conn`.
async fn probe<C: Connection>(conn: &mut C) -> Result<NodeStatus> {
    let rows = conn
        .simple_query(
            "SELECT pg_is_in_recovery(), \
             CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, \
             CASE WHEN pg_is_in_recovery() THEN pg_wal_lsn_diff(coalesce(pg_last_wal_receive_lsn(), \
             pg_last_wal_replay_lsn()), pg_last_wal_replay_lsn()) END, current_setting('server_version')",
        )
        .await?;
    let r = rows
        .first()
        .ok_or_else(|| Error::new(ErrorKind::Other, "the probe returned no row"))?;
    Ok(NodeStatus {
        node: String::new(),
        reachable: true,
        role: if r.get(0) == Some("t") {
            Role::Standby
        } else {
            Role::Primary
        },
        lsn: r.get(1).and_then(parse_lsn),
        replay_lag_bytes: r
            .get(2)
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64),
        server_version: r.get(3).map(str::to_owned),
        last_error: None,
        probes: 0,
    })
}

/// Parses PostgreSQL's `X/Y` WAL position.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::parse_lsn;

    #[test]
    fn lsns_parse() {
        assert_eq!(parse_lsn("0/16B3748"), Some(0x16B3748));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(parse_lsn("G/0"), None);
    }
}
