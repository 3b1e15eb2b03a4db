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
//! **Split brain.** A crashed primary that is restarted after a standby was promoted comes
//! back read-write on the old timeline: two nodes then claim to be primary. The monitor reads
//! each primary's timeline (the timeline of its current WAL file) and trusts only the one on
//! the newest timeline; the other is *fenced*: no writes and no reads go to it. It raises an
//! alarm once per episode (the same primaries seen disagreeing again within 30 s are the same
//! episode): an `error` log, [`HealthMonitor::split_brains`] counts it, and
//! [`HealthMonitor::split_brain`] describes it (health reports show it as degraded). When two
//! primaries share a timeline nothing tells them apart: neither is trusted.
//!
//! # Replica lag
//!
//! A standby's lag is measured against the primary, not by the standby alone (which sees no
//! lag when its WAL stream is cut): the trusted primary's WAL position at its last probe
//! before the standby's probe, minus the standby's replayed position, in bytes
//! ([`NodeStatus::replay_lag_bytes`]), and for how long the standby has lacked WAL the
//! primary had ([`NodeStatus::replay_lag`]). Both are lower bounds, so healthy standbys are
//! not excluded for the age of a probe; a standby cut off from its primary is seen falling
//! behind within about a probe interval of the primary writing past it, and comes back once
//! it has caught up. During a failover (no primary trusted) standbys stay compared with the
//! last primary's positions; only before the first primary probe is a standby's own figure
//! (received minus replayed) used. Timelines are not compared: a standby that replayed past
//! the promoted node's position shows no lag.
//!
//! Each probe publishes a new [`Snapshot`]; readers ([`HealthMonitor::snapshot`]) share it
//! without copying.

mod lag;
mod probe;

use crate::config::{Config, Node};
use crate::{Driver, Error, ErrorKind, Result};
use lag::PrimaryWal;
use probe::probe_loop;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
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
    /// On a standby, how far its replayed position is behind the primary's WAL position, in
    /// bytes (see [`lag`](self#replica-lag)); with no primary to compare with, its received
    /// but not yet replayed WAL.
    pub replay_lag_bytes: Option<u64>,
    /// On a standby, for how long it has lacked WAL the primary had (see
    /// [`lag`](self#replica-lag)); `None` with no primary to compare with.
    pub replay_lag: Option<std::time::Duration>,
    /// Whether new transactions are read-only by default (`default_transaction_read_only`,
    /// or a standby): libpq's `read-write` / `read-only` session attributes.
    pub read_only: bool,
    /// The server's version string.
    pub server_version: Option<String>,
    /// The last probe's error, if it failed.
    pub last_error: Option<String>,
    /// Successful probes so far.
    pub probes: u64,
    /// The timeline: of the current WAL file on a primary, of the last checkpoint on a
    /// standby.
    pub timeline: Option<u32>,
    /// How long the last successful probe took (a smoothed round trip: the latency-aware
    /// read balancing uses it).
    pub probe_rtt: Option<Duration>,
    /// A primary on an older timeline than another primary (see the module docs): nothing
    /// is routed to it.
    pub fenced: bool,
    /// When the last successful probe was sent.
    pub(crate) probed_at: Option<Instant>,
}

/// Two or more nodes claiming to be primary at once; see the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SplitBrain {
    /// Every reachable primary, `host:port`, with its timeline.
    pub primaries: Vec<(String, Option<u32>)>,
    /// The one trusted (on the newest timeline), if the timelines tell them apart.
    pub chosen: Option<String>,
}

impl NodeStatus {
    pub(crate) fn unknown(node: &Node) -> Self {
        NodeStatus {
            node: node.to_string(),
            reachable: false,
            role: Role::Unknown,
            lsn: None,
            replay_lag_bytes: None,
            replay_lag: None,
            read_only: false,
            server_version: None,
            last_error: None,
            probes: 0,
            timeline: None,
            probe_rtt: None,
            fenced: false,
            probed_at: None,
        }
    }
}

/// The monitor's whole view at one moment: published whole after each probe and never
/// changed after, so routing reads it without locks held or data copied
/// ([`HealthMonitor::snapshot`]).
#[derive(Debug)]
pub struct Snapshot {
    statuses: Vec<NodeStatus>,
    primary: Option<usize>,
    split_brain: Option<SplitBrain>,
}

impl Snapshot {
    /// A snapshot of `statuses` with the primary at `primary` (routing tests).
    #[cfg(test)]
    pub(crate) fn of(statuses: Vec<NodeStatus>, primary: Option<usize>) -> Self {
        Snapshot {
            statuses,
            primary,
            split_brain: None,
        }
    }

    /// Every node's status, in configuration order.
    pub fn statuses(&self) -> &[NodeStatus] {
        &self.statuses
    }

    /// The index (configuration order) of the trusted primary.
    pub fn primary_index(&self) -> Option<usize> {
        self.primary
    }

    /// The split brain going on, if any.
    pub fn split_brain(&self) -> Option<&SplitBrain> {
        self.split_brain.as_ref()
    }
}

/// Sets every standby's lag from the primary's recent positions (see the module docs);
/// keeps the standby's own figure when there is nothing to compare with.
fn measure_lag(statuses: &mut [NodeStatus], wal: &PrimaryWal) {
    for s in statuses.iter_mut() {
        if !(s.reachable && s.role == Role::Standby) {
            continue;
        }
        let (Some(replayed), Some(at)) = (s.lsn, s.probed_at) else {
            continue;
        };
        if let Some((bytes, time)) = wal.lag(replayed, at) {
            s.replay_lag_bytes = Some(bytes);
            s.replay_lag = Some(time);
        }
    }
}

/// Decides which reachable primary to trust: the only one, or the one on the strictly newest
/// timeline (the others are fenced). Marks `fenced` and returns the choice and, with several
/// primaries, the split brain.
fn decide(statuses: &mut [NodeStatus]) -> (Option<usize>, Option<SplitBrain>) {
    let primaries: Vec<usize> = statuses
        .iter()
        .enumerate()
        .filter(|(_, s)| s.reachable && s.role == Role::Primary)
        .map(|(i, _)| i)
        .collect();
    for s in statuses.iter_mut() {
        s.fenced = false;
    }
    match primaries.as_slice() {
        [] => (None, None),
        [one] => (Some(*one), None),
        many => {
            let newest = many.iter().map(|i| statuses[*i].timeline).max().flatten();
            let on_newest: Vec<usize> = many
                .iter()
                .copied()
                .filter(|i| newest.is_some() && statuses[*i].timeline == newest)
                .collect();
            let chosen = match on_newest.as_slice() {
                [one] => Some(*one),
                _ => None,
            };
            for i in many {
                statuses[*i].fenced = Some(*i) != chosen;
            }
            let report = SplitBrain {
                primaries: many
                    .iter()
                    .map(|i| (statuses[*i].node.clone(), statuses[*i].timeline))
                    .collect(),
                chosen: chosen.map(|i| statuses[i].node.clone()),
            };
            (chosen, Some(report))
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
    view: RwLock<Arc<Snapshot>>,
    /// Serialises updates of `view`, with the primary's WAL history they need.
    writer: Mutex<PrimaryWal>,
    wakes: Vec<Arc<Notify>>,
    changed: watch::Sender<u64>,
    split_brains: AtomicU64,
    /// The primaries of the last split brain seen, and when: the same split seen again soon
    /// after (a probe of one of them failed in between) is the same episode.
    last_split: Mutex<Option<(Vec<String>, std::time::Instant)>>,
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
            view: RwLock::new(Arc::new(Snapshot {
                statuses: nodes.iter().map(NodeStatus::unknown).collect(),
                primary: None,
                split_brain: None,
            })),
            writer: Mutex::new(PrimaryWal::default()),
            wakes: nodes.iter().map(|_| Arc::new(Notify::new())).collect(),
            changed: watch::channel(0).0,
            split_brains: AtomicU64::new(0),
            last_split: Mutex::new(None),
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

    /// The monitor's view now: immutable, shared (no copy is made), replaced whole by the
    /// next probe.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared
            .view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn view(&self) -> Arc<Snapshot> {
        self.snapshot()
    }

    /// What is known of every node, in configuration order (a copy; routing uses
    /// [`snapshot`](Self::snapshot)).
    pub fn statuses(&self) -> Vec<NodeStatus> {
        self.view().statuses.clone()
    }

    /// The trusted primary: the only reachable one, or during a split brain the one on the
    /// newest timeline (see the [module docs](self)).
    pub fn primary(&self) -> Option<Node> {
        self.primary_index().map(|i| self.shared.nodes[i].clone())
    }

    /// The index (configuration order) of [`primary`](Self::primary).
    pub(crate) fn primary_index(&self) -> Option<usize> {
        self.view().primary
    }

    /// The split brain going on now, if any.
    pub fn split_brain(&self) -> Option<SplitBrain> {
        self.view().split_brain.clone()
    }

    /// How many split-brain episodes were seen since the monitor started.
    pub fn split_brains(&self) -> u64 {
        self.shared.split_brains.load(Relaxed)
    }

    /// A receiver that changes after every probe.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// A function that asks for an immediate probe of `node`, holding the monitor only
    /// weakly (for pool hooks).
    pub(crate) fn rechecker(&self, node: &Node) -> impl Fn() + Send + Sync + 'static {
        let shared = Arc::downgrade(&self.shared);
        let i = self.shared.nodes.iter().position(|n| n == node);
        move || {
            if let (Some(shared), Some(i)) = (shared.upgrade(), i) {
                shared.wakes[i].notify_one();
            }
        }
    }

    /// Waits (up to `timeout`) until as many probes as there are nodes have ended since the
    /// call (successful or not): after [`recheck_all`](Self::recheck_all), a fresh look at
    /// every node.
    pub(crate) async fn wait_round(&self, timeout: Duration) -> Result<()> {
        let mut changes = self.shared.changed.subscribe();
        let start = *changes.borrow_and_update();
        let want = start + self.shared.nodes.len() as u64;
        let deadline = Instant::now() + timeout;
        while *changes.borrow_and_update() < want {
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return Err(Error::new(ErrorKind::Timeout, "no probe round in time"));
            }
        }
        Ok(())
    }

    /// Probes `node` now instead of at its next tick (after a connection to it failed, or a
    /// write met a read-only node).
    pub fn recheck(&self, node: &Node) {
        if let Some(i) = self.shared.nodes.iter().position(|n| n == node) {
            self.shared.wakes[i].notify_one();
        }
    }

    /// Probes every node now.
    pub fn recheck_all(&self) {
        for w in &self.shared.wakes {
            w.notify_one();
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
            let now = self.view();
            if done(&now.statuses) {
                return Ok(now.statuses.clone());
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

    /// Resolves once `done` holds for the statuses (checked now and after every probe); no
    /// timer, so it costs nothing while it waits (callers race it against their own work).
    pub(crate) async fn until(&self, done: impl Fn(&[NodeStatus]) -> bool) {
        let mut changes = self.shared.changed.subscribe();
        loop {
            if done(&self.view().statuses) {
                return;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Waits until a primary is trusted ([`primary`](Self::primary)), up to `timeout`.
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
                _ if s.fenced => format!(
                    "{}: fenced primary on old timeline {:?}",
                    s.node, s.timeline
                ),
                _ => format!("{}: {:?}", s.node, s.role),
            })
            .collect();
        states.join("; ")
    }
}

/// Parses PostgreSQL's `X/Y` WAL position.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    // Each half is 1 to 8 hexadecimal digits (`from_str_radix` alone would take a sign
    // and longer halves that overflow into the other).
    let half = |h: &str| {
        let ok = (1..=8).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| u32::from_str_radix(h, 16).ok()).flatten()
    };
    Some((u64::from(half(hi)?) << 32) | u64::from(half(lo)?))
}

#[cfg(test)]
mod tests;
