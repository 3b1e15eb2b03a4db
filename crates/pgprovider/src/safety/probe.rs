//! The probe: one round trip of catalog reads, parsed into [`Findings`]; and the policies'
//! actions, each decided and done by one statement on the server.

use super::{
    ActionTaken, Blocking, Connections, Deadlocks, Findings, Policy, Prepared, ReplicationSlot,
    SafetyOptions, Session, Trigger, Wraparound,
};
use crate::migrate::literal;
use pgprovider_core::observe::{fingerprint, normalize};
use pgprovider_core::{Connection, Error, ErrorKind, Result, SimpleRow};
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

/// Milliseconds since a timestamp column, or -1.
macro_rules! ms_since {
    ($col:literal) => {
        concat!(
            "coalesce((extract(epoch FROM now() - ",
            $col,
            ") * 1000)::bigint, -1)"
        )
    };
}

/// The probe's statements, each row tagged with its kind in the first column.
const PROBE: &str = concat!(
    // Bounds every statement of the probe (local to its implicit transaction, so nothing
    // stays behind on a connection a pooler shares).
    "SELECT 'timeout', set_config('statement_timeout', '10s', true);",
    // Sessions in a transaction or running a statement (never the probe's own).
    "SELECT 'session', pid, coalesce(usename, ''), coalesce(application_name, ''), coalesce(datname, ''), coalesce(state, ''), ",
    ms_since!("xact_start"),
    ", ",
    ms_since!("query_start"),
    ", ",
    ms_since!("state_change"),
    ", coalesce(wait_event_type, ''), query FROM pg_stat_activity \
     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
     AND (xact_start IS NOT NULL OR state = 'active');",
    // Who waits for whom: pg_blocking_pids only for sessions waiting on a lock.
    "SELECT 'blocking', a.pid, b.pid, coalesce(l.locktype, ''), coalesce(l.mode, ''), \
     coalesce(CASE WHEN l.relation IS NULL THEN NULL \
       WHEN l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) THEN l.relation::regclass::text \
       ELSE l.relation::text END, ''), \
     coalesce((extract(epoch FROM now() - coalesce(l.waitstart, a.state_change)) * 1000)::bigint, -1) \
     FROM pg_stat_activity a CROSS JOIN LATERAL unnest(pg_blocking_pids(a.pid)) AS b(pid) \
     LEFT JOIN LATERAL (SELECT x.locktype, x.mode, x.relation, x.database, \
       (to_jsonb(x) ->> 'waitstart')::timestamptz AS waitstart \
       FROM pg_locks x WHERE x.pid = a.pid AND NOT x.granted LIMIT 1) l ON true \
     WHERE a.wait_event_type = 'Lock' AND a.pid <> pg_backend_pid();",
    "SELECT 'deadlocks', coalesce(sum(deadlocks), 0)::bigint FROM pg_stat_database;",
    "SELECT 'connections', (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), \
     current_setting('max_connections'), current_setting('superuser_reserved_connections'), \
     coalesce(current_setting('reserved_connections', true), '0'), \
     pg_has_role('pg_read_all_stats', 'MEMBER') OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user);",
    "SELECT 'prepared', gid, owner::text, database::text, ",
    ms_since!("prepared"),
    " FROM pg_prepared_xacts;",
    "SELECT 'slot', slot_name::text, slot_type, active, \
     coalesce(pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, restart_lsn), 0)::bigint, \
     coalesce(wal_status, '') FROM pg_replication_slots;",
    "SELECT 'wraparound', datname::text, age(datfrozenxid), mxid_age(datminmxid) FROM pg_database \
     ORDER BY greatest(age(datfrozenxid), mxid_age(datminmxid)) DESC LIMIT 1"
);

/// Statements in [`PROBE`].
const PROBE_QUERIES: u32 = 9;

/// The statement counting this application's sessions (`{app}`: its name as a literal).
const OURS: &str = "SELECT 'ours', count(*) FROM pg_stat_activity \
     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
     AND {app} <> '' AND application_name = {app}";

/// Probes one server: what is over `opts`' thresholds, sessions of `application` marked as
/// ours. One round trip; reads only. The deadlock counts it returns are the server's total
/// (the [`SafetyMonitor`](super::SafetyMonitor) fills in what is new).
///
/// ```no_run
/// # async fn run(conn: &mut impl pgprovider::Connection) -> pgprovider::Result<()> {
/// use pgprovider::safety::{probe, SafetyOptions};
/// let findings = probe(conn, "db1:5432", &SafetyOptions::new(), Some("orders")).await?;
/// for b in &findings.blocking {
///     println!("{} waits {:?} for {}", b.blocked_pid, b.wait, b.blocking_pid);
/// }
/// # Ok(()) }
/// ```
///
/// # Errors
/// The server's error (the connection's user lacks rights on a catalog view, …) naming
/// the node.
pub async fn probe<C: Connection>(
    conn: &mut C,
    node: &str,
    opts: &SafetyOptions,
    application: Option<&str>,
) -> Result<Findings> {
    let start = Instant::now();
    let sql = format!(
        "{PROBE}; {}",
        OURS.replace("{app}", &literal(application.unwrap_or("")))
    );
    let rows = conn.simple_query(&sql).await.map_err(|e| {
        e.context(format!("the safety probe of {node} failed"))
            .with_hint("the monitor's user needs pg_monitor (or superuser) to see other sessions and slots")
    })?;
    let probe_time = start.elapsed();
    let mut f = Findings {
        node: node.to_owned(),
        at: SystemTime::now(),
        blocking: Vec::new(),
        long_transactions: Vec::new(),
        long_statements: Vec::new(),
        idle_in_transaction: Vec::new(),
        deadlocks: Deadlocks::default(),
        connections: Connections::default(),
        connections_over: false,
        prepared_transactions: Vec::new(),
        replication_slots: Vec::new(),
        wraparound: Wraparound::default(),
        actions: Vec::new(),
        limited_view: false,
        probe_queries: PROBE_QUERIES,
        probe_time,
    };
    let ours = |app: &str| application.is_some_and(|a| !a.is_empty() && a == app);
    let mut sessions: HashMap<i32, Session> = HashMap::new();
    let mut waits = Vec::new();
    for r in &rows {
        let text = |i: usize| r.get(i).unwrap_or("").to_owned();
        match r.get(0) {
            Some("timeout") => {}
            Some("ours") => f.connections.ours = int(r, 1)? as u64,
            Some("session") => {
                let s = session(r, &ours)?;
                sessions.insert(s.pid, s);
            }
            Some("blocking") => waits.push((
                int(r, 1)? as i32,
                int(r, 2)? as i32,
                text(3),
                text(4),
                text(5),
                millis(int(r, 6)?),
            )),
            Some("deadlocks") => f.deadlocks.server_total = int(r, 1)? as u64,
            Some("connections") => {
                f.connections.used = int(r, 1)? as u64;
                f.connections.max = int(r, 2)? as u64;
                f.connections.reserved = int(r, 3)? as u64 + int(r, 4)? as u64;
                f.limited_view = r.get(5) != Some("t");
            }
            Some("prepared") => {
                let age = millis(int(r, 4)?).unwrap_or_default();
                if age >= opts.prepared_transaction {
                    f.prepared_transactions.push(Prepared {
                        gid: text(1),
                        owner: text(2),
                        database: text(3),
                        age,
                    });
                }
            }
            Some("slot") => {
                let s = ReplicationSlot {
                    name: text(1),
                    kind: text(2),
                    active: r.get(3) == Some("t"),
                    retained_bytes: int(r, 4)?.max(0) as u64,
                    wal_status: text(5),
                };
                if !s.active || s.retained_bytes > opts.slot_retained_bytes {
                    f.replication_slots.push(s);
                }
            }
            Some("wraparound") => {
                let (xid, mxid) = (int(r, 2)?.max(0) as u64, int(r, 3)?.max(0) as u64);
                f.wraparound = Wraparound {
                    database: text(1),
                    xid_age: xid,
                    mxid_age: mxid,
                    over: xid.max(mxid) > opts.wraparound_age,
                };
            }
            other => return Err(malformed(node, other.unwrap_or("nothing"))),
        }
    }
    let usable = f.connections.max.saturating_sub(f.connections.reserved);
    f.connections_over = f.connections.used as f64 >= opts.connections_ratio * usable as f64;
    for (blocked_pid, blocking_pid, lock_type, mode, relation, wait) in waits {
        let wait = wait.unwrap_or_default();
        let Some(blocked) = sessions.get(&blocked_pid) else {
            continue;
        };
        if wait < opts.blocked {
            continue;
        }
        f.blocking.push(Blocking {
            blocked: blocked.clone(),
            blocking: sessions.get(&blocking_pid).cloned(),
            blocked_pid,
            blocking_pid,
            wait,
            lock_type,
            mode,
            relation: (!relation.is_empty()).then_some(relation),
        });
    }
    f.blocking.sort_by_key(|b| std::cmp::Reverse(b.wait));
    let mut sessions: Vec<Session> = sessions.into_values().collect();
    sessions.sort_by_key(|s| s.pid);
    for s in sessions {
        if s.transaction_age
            .is_some_and(|a| a >= opts.long_transaction)
        {
            f.long_transactions.push(s.clone());
        }
        if s.state == "active" && s.statement_age.is_some_and(|a| a >= opts.long_statement) {
            f.long_statements.push(s.clone());
        }
        if s.state.starts_with("idle in transaction")
            && s.state_age.is_some_and(|a| a >= opts.idle_in_transaction)
        {
            f.idle_in_transaction.push(s);
        }
    }
    Ok(f)
}

fn session(r: &SimpleRow, ours: &impl Fn(&str) -> bool) -> Result<Session> {
    let text = |i: usize| r.get(i).unwrap_or("").to_owned();
    let query = r.get(10).filter(|q| !q.is_empty());
    let statement = query.map(|q| {
        let n = normalize(q);
        match n.char_indices().nth(200) {
            Some((at, _)) => format!("{}…", &n[..at]),
            None => n,
        }
    });
    let wait = text(9);
    Ok(Session {
        pid: int(r, 1)? as i32,
        user: text(2),
        application: text(3),
        ours: ours(r.get(3).unwrap_or("")),
        database: text(4),
        state: text(5),
        transaction_age: millis(int(r, 6)?),
        statement_age: millis(int(r, 7)?),
        state_age: millis(int(r, 8)?),
        wait_event_type: (!wait.is_empty()).then_some(wait),
        fingerprint: query.map(fingerprint),
        statement,
        checkout: None,
    })
}

fn millis(ms: i64) -> Option<Duration> {
    (ms >= 0).then(|| Duration::from_millis(ms as u64))
}

fn int(r: &SimpleRow, i: usize) -> Result<i64> {
    let v = r.get(i).unwrap_or("");
    v.parse()
        .map_err(|_| malformed("the server", &format!("{v:?} in column {i}")))
}

fn malformed(node: &str, what: &str) -> Error {
    Error::new(
        ErrorKind::Other,
        format!("the safety probe of {node} read something unexpected: {what}"),
    )
    .with_hint("a pooler or proxy may answer for the server: probe the server directly")
}

/// The statement that finds the sessions `policy` is for and, unless in dry-run mode, acts
/// on them, in one step on the server: a session that moved on is not matched.
fn policy_sql(policy: &Policy, application: Option<&str>) -> String {
    let call = if policy.dry_run {
        "false".to_owned()
    } else {
        format!("pg_{}_backend(pid)", policy.action.as_str())
    };
    // Only sessions this user may signal (the functions raise an error for the others,
    // which would end the whole statement), and for a cancel only sessions running a
    // statement (a cancel does nothing to an idle one).
    let mut only = String::from(
        " AND ((SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
         OR pg_has_role(usesysid, 'MEMBER') \
         OR (pg_has_role('pg_signal_backend', 'MEMBER') \
             AND NOT coalesce((SELECT rolsuper FROM pg_roles r WHERE r.oid = usesysid), true)))",
    );
    if policy.action == super::Action::Cancel {
        only.push_str(" AND state = 'active'");
    }
    let app = literal(application.unwrap_or(""));
    let ours = format!("({app} <> '' AND application_name = {app})");
    let only_ours = if policy.foreign {
        String::new()
    } else {
        format!(" AND {ours}")
    };
    let ms = policy.after.as_millis();
    match policy.trigger {
        Trigger::IdleInTransaction => format!(
            "SELECT pid, {ours}, {call} FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
             AND state IN ('idle in transaction', 'idle in transaction (aborted)') \
             AND now() - state_change >= interval '{ms} milliseconds'{only_ours}{only}"
        ),
        Trigger::Blocking => format!(
            "SELECT pid, {ours}, {call} FROM pg_stat_activity WHERE pid IN (\
             SELECT b.pid FROM pg_stat_activity a CROSS JOIN LATERAL unnest(pg_blocking_pids(a.pid)) AS b(pid) \
             LEFT JOIN LATERAL (SELECT (to_jsonb(x) ->> 'waitstart')::timestamptz AS waitstart \
               FROM pg_locks x WHERE x.pid = a.pid AND NOT x.granted LIMIT 1) l ON true \
             WHERE a.wait_event_type = 'Lock' \
             AND now() - coalesce(l.waitstart, a.state_change) >= interval '{ms} milliseconds') \
             AND backend_type = 'client backend' AND pid <> pg_backend_pid() \
             AND wait_event_type IS DISTINCT FROM 'Lock'{only_ours}{only}"
        ),
    }
}

/// Runs `opts`' policies on the server `conn` is connected to, and returns what they did;
/// each is logged (`warn`, target `pgprovider::safety`). Sessions of `application` are
/// ours; the others are touched only by policies [`with_foreign`](Policy::with_foreign).
///
/// # Errors
/// The server's error (the user may not signal other users' sessions without
/// `pg_signal_backend`).
pub async fn act<C: Connection>(
    conn: &mut C,
    node: &str,
    opts: &SafetyOptions,
    application: Option<&str>,
) -> Result<Vec<ActionTaken>> {
    let mut taken = Vec::new();
    for policy in &opts.policies {
        let rows = conn
            .simple_query(&policy_sql(policy, application))
            .await
            .map_err(|e| e.context(format!("a safety policy on {node} failed")))?;
        for r in rows {
            let a = ActionTaken {
                pid: int(&r, 0)? as i32,
                action: policy.action,
                trigger: policy.trigger,
                dry_run: policy.dry_run,
                done: r.get(2) == Some("t"),
                ours: r.get(1) == Some("t"),
            };
            tracing::warn!(
                target: "pgprovider::safety",
                node,
                pid = a.pid,
                action = a.action.as_str(),
                reason = a.trigger.as_str(),
                after_ms = policy.after.as_millis() as u64,
                ours = a.ours,
                dry_run = a.dry_run,
                done = a.done,
                "{}",
                if a.dry_run { "a safety policy would act on a session (dry run)" } else { "a safety policy acted on a session" }
            );
            taken.push(a);
        }
    }
    Ok(taken)
}

#[cfg(test)]
pub(super) mod unit {
    use super::*;

    #[test]
    fn literals_and_policy_statements() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\\b'"), "E'a\\\\b'''");
        let p = Policy::idle_in_transaction(
            Duration::from_millis(1500),
            super::super::Action::Terminate,
        );
        let sql = policy_sql(&p, Some("app"));
        assert!(sql.contains("pg_terminate_backend(pid)"), "{sql}");
        assert!(sql.contains("interval '1500 milliseconds'"), "{sql}");
        assert!(
            sql.contains("AND ('app' <> '' AND application_name = 'app')"),
            "{sql}"
        );
        let dry = policy_sql(&p.clone().with_dry_run(true).with_foreign(true), None);
        assert!(!dry.contains("_backend(pid)"), "{dry}");
        assert!(!dry.contains("AND (''"), "{dry}");
        // The probe's statements, and the one counting ours.
        assert_eq!(PROBE.matches(';').count() as u32 + 2, PROBE_QUERIES);
        let cancel = policy_sql(
            &Policy::blocking(Duration::ZERO, super::super::Action::Cancel),
            Some("app"),
        );
        assert!(cancel.contains("AND state = 'active'"), "{cancel}");
        assert!(
            cancel.contains("wait_event_type IS DISTINCT FROM 'Lock'"),
            "{cancel}"
        );
    }
}
