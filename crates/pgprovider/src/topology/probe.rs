//! One node's probing task: a connection of its own, a probe every interval or when woken,
//! and the new snapshot it publishes.

use super::{NodeStatus, Role, Shared, Snapshot, decide, measure_lag, parse_lsn};
use crate::config::Config;
use crate::{Connection, Driver, Error, ErrorKind, Result};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The shortest time between two probes of a node, however often rechecks are asked for.
const MIN_PROBE_GAP: Duration = Duration::from_millis(10);

/// How long after a split brain was last seen the same primaries disagreeing again count
/// as the same episode (one alarm).
const SPLIT_EPISODE: Duration = Duration::from_secs(30);

/// One node's probing task: keeps a connection, probes every interval or when woken, and
/// publishes what it found. Ends when the monitor is dropped.
pub(super) async fn probe_loop<D: Driver>(
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
        let started = Instant::now();
        // A hung node must not hold its probe for long: at least 1 s, at most 5 s.
        let limit = interval.clamp(Duration::from_secs(1), Duration::from_secs(5));
        let outcome = tokio::time::timeout(limit, async {
            if conn.as_ref().is_none_or(|c| c.is_broken()) {
                conn = Some(
                    config
                        .connect_with(&node, |p| {
                            let driver = &driver;
                            async move { driver.connect(&p).await }
                        })
                        .await?,
                );
            }
            let start = Instant::now();
            let mut found = probe(conn.as_mut().expect("connected above")).await?;
            found.probe_rtt = Some(start.elapsed());
            // A standby is dated by the probe's start (its position was at least that
            // by then), a primary by its answer (its position was reached by then): so a
            // standby's lag is never overstated.
            found.probed_at = Some(if found.role == Role::Primary {
                Instant::now()
            } else {
                start
            });
            Ok(found)
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
            let mut wal = shared.writer.lock().unwrap_or_else(|e| e.into_inner());
            let old = shared
                .view
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let mut view = Snapshot {
                statuses: old.statuses.clone(),
                primary: old.primary,
                split_brain: old.split_brain.clone(),
            };
            let s = &mut view.statuses[index];
            match outcome {
                Ok(found) => {
                    if s.role != found.role {
                        tracing::info!(node = %s.node, from = ?s.role, to = ?found.role, "node role changed");
                    }
                    // Smoothed, so one slow probe does not swing the read balancing.
                    let rtt = match (s.probe_rtt, found.probe_rtt) {
                        (Some(old), Some(new)) => Some((old * 7 + new * 3) / 10),
                        (_, new) => new,
                    };
                    *s = NodeStatus {
                        node: s.node.clone(),
                        probes: s.probes + 1,
                        probe_rtt: rtt,
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
            let (primary, split) = decide(&mut view.statuses);
            if let Some(split) = &split {
                let names: Vec<String> = split.primaries.iter().map(|(n, _)| n.clone()).collect();
                let mut last = shared.last_split.lock().unwrap_or_else(|e| e.into_inner());
                // Seen again within the flap window (one probe of a primary failed in
                // between): the same episode, not a new alarm.
                let same_episode =
                    matches!(&*last, Some((n, at)) if *n == names && at.elapsed() < SPLIT_EPISODE);
                *last = Some((names, std::time::Instant::now()));
                drop(last);
                if view.split_brain.is_none() && !same_episode {
                    shared.split_brains.fetch_add(1, Relaxed);
                    tracing::error!(
                        primaries = ?split.primaries,
                        trusted = ?split.chosen,
                        "split brain: several nodes claim to be primary; writes go only to the newest timeline"
                    );
                }
            }
            // With no primary trusted (a failover), standbys stay compared with the last
            // one's positions: a standby behind them still lacks those transactions.
            if let Some((p, s)) = primary.map(|p| (p, &view.statuses[p])) {
                if let (Some(at), Some(lsn)) = (s.probed_at, s.lsn) {
                    wal.record(p, at, lsn);
                }
            }
            measure_lag(&mut view.statuses, &wal);
            view.primary = primary;
            view.split_brain = split;
            *shared.view.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(view);
        }
        shared.changed.send_modify(|g| *g += 1);
        drop(shared);
        let _ = tokio::time::timeout(interval, wake.notified()).await;
        // Rechecks asked for by many callers at once (a failover under load) must not turn
        // into back-to-back probes.
        tokio::time::sleep_until(started + MIN_PROBE_GAP).await;
    }
}

/// One probe on `conn`.
async fn probe<C: Connection>(conn: &mut C) -> Result<NodeStatus> {
    let rows = conn
        .simple_query(
            "SELECT pg_is_in_recovery(), \
             CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, \
             CASE WHEN pg_is_in_recovery() THEN pg_wal_lsn_diff(coalesce(pg_last_wal_receive_lsn(), \
             pg_last_wal_replay_lsn()), pg_last_wal_replay_lsn()) END, current_setting('server_version'), \
             CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint()) \
             ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
             current_setting('default_transaction_read_only')",
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
        replay_lag: None,
        read_only: r.get(0) == Some("t") || r.get(5) == Some("on"),
        server_version: r.get(3).map(str::to_owned),
        last_error: None,
        probes: 0,
        timeline: r.get(4).and_then(|v| v.parse().ok()),
        probe_rtt: None,
        fenced: false,
        probed_at: None,
    })
}
