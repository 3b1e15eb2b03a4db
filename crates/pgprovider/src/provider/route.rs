//! Routing: which nodes a statement may go to, in the order to try them, decided on one
//! [`Snapshot`] of the monitor (pure: no I/O, no locks, unit-tested here).
//!
//! | target | nodes, in order |
//! | --- | --- |
//! | [`Target::Primary`] | the trusted primary (the caller waits for one during a failover) |
//! | [`Target::Read`] | standbys within the lag bounds, ordered by [`ReadBalancing`]; then the primary when `read_from_primary` |
//! | [`Target::Attrs`] `any` | every reachable node that is not fenced, in host order (`load_balance_hosts=random`: from a random one) |
//! | `read-write` | the trusted primary unless it is read-only by default |
//! | `primary` | the trusted primary |
//! | `read-only` | standbys within the lag bounds and primaries read-only by default, in host order |
//! | `standby` | standbys within the lag bounds, in host order |
//! | `prefer-standby` | as `standby`, then the primary |
//! | [`Target::After`] | as [`Target::Read`] (the path then waits for the token's position) |

use super::{ConsistencyToken, ReadBalancing, TopologyOptions};
use crate::config::{LoadBalanceHosts, TargetSessionAttrs};
use crate::topology::{NodeStatus, Role, Snapshot};
use std::time::Duration;

/// Where a statement goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The trusted primary.
    Primary,
    /// Reads: standbys within the lag bounds, then the primary when allowed.
    Read,
    /// libpq's `target_session_attrs`, on the monitor's view.
    Attrs(TargetSessionAttrs),
    /// Reads that see everything before a token, waiting up to a time for a standby.
    After(ConsistencyToken, Duration),
}

impl Target {
    /// Whether the target is the primary alone, reached through the failover wait.
    pub(crate) fn is_primary(self) -> bool {
        matches!(
            self,
            Target::Primary
                | Target::Attrs(TargetSessionAttrs::Primary | TargetSessionAttrs::ReadWrite)
        )
    }

    /// Whether only reads go there (statements that may be run again on another node).
    pub(crate) fn is_read(self) -> bool {
        matches!(self, Target::Read | Target::After(..))
    }

    /// Whether a statement refused as read-only (`25006`) there may be sent to the primary
    /// instead: the target does not ask for a read-only server.
    pub(crate) fn may_write(self) -> bool {
        matches!(
            self,
            Target::Primary
                | Target::Attrs(
                    TargetSessionAttrs::Any
                        | TargetSessionAttrs::Primary
                        | TargetSessionAttrs::ReadWrite
                )
        )
    }
}

/// What the balancing weighs for one node: checked-out connections.
pub(crate) trait Load {
    fn outstanding(&self, node: usize) -> u64;
}

impl<F: Fn(usize) -> u64> Load for F {
    fn outstanding(&self, node: usize) -> u64 {
        self(node)
    }
}

/// The nodes `target` may use now, in the order to try them; `start` rotates the order
/// (the round-robin counter, or a random number).
pub(crate) fn candidates(
    snap: &Snapshot,
    target: Target,
    opts: &TopologyOptions,
    lb: LoadBalanceHosts,
    load: &impl Load,
    start: usize,
) -> Vec<usize> {
    let s = snap.statuses();
    let primary = snap.primary_index();
    let standbys = || {
        s.iter()
            .enumerate()
            .filter(|(_, n)| qualifies(n, opts))
            .map(|(i, _)| i)
    };
    let in_host_order = |mut nodes: Vec<usize>| {
        if lb == LoadBalanceHosts::Random && !nodes.is_empty() {
            let k = start % nodes.len();
            nodes.rotate_left(k);
        }
        nodes
    };
    match target {
        Target::Primary | Target::Attrs(TargetSessionAttrs::Primary) => {
            primary.into_iter().collect()
        }
        Target::Attrs(TargetSessionAttrs::ReadWrite) => {
            primary.filter(|&p| !s[p].read_only).into_iter().collect()
        }
        Target::Read | Target::After(..) => {
            let weighed = standbys()
                .map(|i| Candidate {
                    index: i,
                    outstanding: load.outstanding(i),
                    rtt: s[i].probe_rtt.unwrap_or(Duration::MAX),
                })
                .collect();
            let mut order = balance(opts.read_balancing, weighed, start);
            if opts.read_from_primary {
                order.extend(primary);
            }
            order
        }
        Target::Attrs(TargetSessionAttrs::Any) => in_host_order(
            s.iter()
                .enumerate()
                .filter(|(i, n)| {
                    n.reachable
                        && match n.role {
                            Role::Primary => Some(*i) == primary,
                            Role::Standby => true,
                            _ => false,
                        }
                })
                .map(|(i, _)| i)
                .collect(),
        ),
        Target::Attrs(TargetSessionAttrs::ReadOnly) => in_host_order(
            s.iter()
                .enumerate()
                .filter(|(i, n)| qualifies(n, opts) || (Some(*i) == primary && n.read_only))
                .map(|(i, _)| i)
                .collect(),
        ),
        Target::Attrs(TargetSessionAttrs::Standby) => in_host_order(standbys().collect()),
        Target::Attrs(TargetSessionAttrs::PreferStandby) => {
            let mut order = in_host_order(standbys().collect());
            order.extend(primary);
            order
        }
    }
}

/// Whether a node is a standby that may serve reads: reachable, within both lag bounds.
pub(crate) fn qualifies(n: &NodeStatus, opts: &TopologyOptions) -> bool {
    n.reachable
        && n.role == Role::Standby
        && opts
            .max_replica_lag_bytes
            .is_none_or(|b| n.replay_lag_bytes.unwrap_or(0) <= b)
        && opts
            .max_replica_lag
            .is_none_or(|t| n.replay_lag.unwrap_or(Duration::ZERO) <= t)
}

/// A standby a read may go to, with what the balancing policies weigh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) index: usize,
    pub(crate) outstanding: u64,
    pub(crate) rtt: Duration,
}

/// Orders `standbys` for one read: rotated to start at `start` (modulo their number), then,
/// for the weighing policies, stably sorted by their weight (so ties keep the rotation).
pub(crate) fn balance(
    policy: ReadBalancing,
    mut standbys: Vec<Candidate>,
    start: usize,
) -> Vec<usize> {
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

#[cfg(test)]
mod tests;
