//! Routing decisions on snapshots made by hand: every target, the lag bounds, balancing.

use super::{Candidate, Target, balance, candidates};
use crate::Host;
use crate::config::{LoadBalanceHosts, Node, TargetSessionAttrs as T};
use crate::provider::{ConsistencyToken, ReadBalancing, TopologyOptions};
use crate::topology::{NodeStatus, Role, Snapshot};
use std::time::Duration;

fn node(i: usize, role: Role) -> NodeStatus {
    let mut s = NodeStatus::unknown(&Node::new(Host::Tcp(format!("n{i}")), 5432));
    s.reachable = role != Role::Unknown;
    s.role = role;
    s.read_only = role == Role::Standby;
    s.replay_lag_bytes = (role == Role::Standby).then_some(0);
    s
}

/// n0 standby, n1 primary, n2 standby, n3 unreachable.
fn cluster() -> Vec<NodeStatus> {
    vec![
        node(0, Role::Standby),
        node(1, Role::Primary),
        node(2, Role::Standby),
        node(3, Role::Unknown),
    ]
}

fn route(
    snap: &Snapshot,
    target: Target,
    opts: &TopologyOptions,
    lb: LoadBalanceHosts,
    start: usize,
) -> Vec<usize> {
    candidates(snap, target, opts, lb, &|_| 0, start)
}

#[test]
fn every_target_session_attrs_value_on_a_cluster_whose_first_host_is_a_standby() {
    let snap = Snapshot::of(cluster(), Some(1));
    let o = TopologyOptions::default();
    let d = LoadBalanceHosts::Disable;
    let r = |t| route(&snap, Target::Attrs(t), &o, d, 0);
    assert_eq!(r(T::Any), vec![0, 1, 2], "host order, reachable nodes");
    assert_eq!(r(T::ReadWrite), vec![1]);
    assert_eq!(r(T::Primary), vec![1]);
    assert_eq!(r(T::ReadOnly), vec![0, 2]);
    assert_eq!(r(T::Standby), vec![0, 2]);
    assert_eq!(r(T::PreferStandby), vec![0, 2, 1]);
    assert_eq!(route(&snap, Target::Primary, &o, d, 0), vec![1]);
    // A primary read-only by default is not read-write, but is read-only.
    let mut ro = cluster();
    ro[1].read_only = true;
    let snap = Snapshot::of(ro, Some(1));
    assert!(route(&snap, Target::Attrs(T::ReadWrite), &o, d, 0).is_empty());
    assert_eq!(
        route(&snap, Target::Attrs(T::ReadOnly), &o, d, 0),
        vec![0, 1, 2]
    );
    assert_eq!(route(&snap, Target::Attrs(T::Primary), &o, d, 0), vec![1]);
    // No primary: the primary targets are empty (the path waits), standbys still serve.
    let snap = Snapshot::of(cluster(), None);
    assert!(route(&snap, Target::Attrs(T::Primary), &o, d, 0).is_empty());
    assert_eq!(
        route(&snap, Target::Attrs(T::PreferStandby), &o, d, 0),
        vec![0, 2]
    );
    // An untrusted (fenced) primary gets nothing, even under `any`.
    let mut split = cluster();
    split[0] = node(0, Role::Primary);
    split[0].fenced = true;
    let snap = Snapshot::of(split, Some(1));
    assert_eq!(route(&snap, Target::Attrs(T::Any), &o, d, 0), vec![1, 2]);
}

#[test]
fn random_load_balancing_starts_anywhere_and_covers_every_node() {
    let snap = Snapshot::of(cluster(), Some(1));
    let o = TopologyOptions::default();
    let mut first = [0; 4];
    for start in 0..300 {
        let order = route(
            &snap,
            Target::Attrs(T::Any),
            &o,
            LoadBalanceHosts::Random,
            start,
        );
        assert_eq!(order.len(), 3);
        first[order[0]] += 1;
    }
    assert_eq!(first, [100, 100, 100, 0]);
    // Disabled: always host order, whatever the start.
    assert_eq!(
        route(
            &snap,
            Target::Attrs(T::Standby),
            &o,
            LoadBalanceHosts::Disable,
            7
        ),
        vec![0, 2]
    );
}

#[test]
fn lag_bounds_in_bytes_and_time_exclude_standbys_behind_the_primary() {
    let mut nodes = cluster();
    nodes[0].replay_lag_bytes = Some(1 << 20);
    nodes[0].replay_lag = Some(Duration::from_millis(100));
    nodes[2].replay_lag_bytes = Some(10);
    nodes[2].replay_lag = Some(Duration::from_secs(5));
    let snap = Snapshot::of(nodes, Some(1));
    let d = LoadBalanceHosts::Disable;
    let bytes = TopologyOptions::default().with_max_replica_lag_bytes(Some(64 << 10));
    assert_eq!(route(&snap, Target::Read, &bytes, d, 0), vec![2, 1]);
    let time = TopologyOptions::default()
        .with_max_replica_lag_bytes(None)
        .with_max_replica_lag(Some(Duration::from_secs(1)));
    assert_eq!(route(&snap, Target::Read, &time, d, 0), vec![0, 1]);
    let both = bytes
        .clone()
        .with_max_replica_lag(Some(Duration::from_secs(1)));
    assert_eq!(route(&snap, Target::Read, &both, d, 0), vec![1]);
    let no_fallback = both.with_read_from_primary(false);
    assert!(route(&snap, Target::Read, &no_fallback, d, 0).is_empty());
    assert_eq!(
        route(
            &snap,
            Target::After(ConsistencyToken(1), Duration::ZERO),
            &bytes,
            d,
            0
        ),
        vec![2, 1]
    );
}

#[test]
fn targets_say_what_they_allow() {
    assert!(Target::Primary.is_primary() && Target::Primary.may_write());
    assert!(Target::Attrs(T::ReadWrite).is_primary());
    assert!(!Target::Attrs(T::Any).is_primary() && Target::Attrs(T::Any).may_write());
    assert!(!Target::Attrs(T::Standby).may_write() && !Target::Attrs(T::Standby).is_read());
    assert!(Target::Read.is_read() && !Target::Read.may_write());
    assert!(Target::After(ConsistencyToken(0), Duration::ZERO).is_read());
}

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
