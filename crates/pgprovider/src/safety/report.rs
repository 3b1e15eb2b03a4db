//! Findings as lines (logs, the health report), kinds (hook events) and JSON (the keys
//! `pgprovider inspect --json` promises).

use super::{Findings, Session};
use crate::observe::Json;
use std::time::Duration;

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "null".to_owned(), ms)
}

fn bool(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

fn session(j: &mut Json, s: &Session) {
    j.raw("pid", &s.pid.to_string());
    j.str("user", &s.user);
    j.str("application", &s.application);
    j.str("database", &s.database);
    j.str("state", &s.state);
    j.raw("ours", bool(s.ours));
    j.raw("transaction_ms", &opt_ms(s.transaction_age));
    j.raw("statement_ms", &opt_ms(s.statement_age));
    j.raw("state_ms", &opt_ms(s.state_age));
    j.opt("wait_event_type", s.wait_event_type.as_deref());
    j.opt("fingerprint", s.fingerprint.as_deref());
    j.opt("statement", s.statement.as_deref());
    match &s.checkout {
        None => j.raw("checkout", "null"),
        Some(c) => {
            let mut cj = Json::default();
            cj.str("location", &c.location);
            cj.opt("transaction", c.transaction.as_deref());
            cj.raw("held_ms", &ms(c.held_for));
            cj.opt("tenant", c.tenant.as_deref());
            j.raw("checkout", &cj.finish());
        }
    }
}

fn list<T>(items: &[T], f: impl Fn(&mut Json, &T)) -> String {
    let v: Vec<String> = items
        .iter()
        .map(|i| {
            let mut j = Json::default();
            f(&mut j, i);
            j.finish()
        })
        .collect();
    format!("[{}]", v.join(","))
}

impl Findings {
    /// The findings as a JSON object: `node`, `clear`, `problems`, `blocking` (objects with
    /// `blocked_pid`, `blocking_pid`, `wait_ms`, …), `idle_in_transaction` (`pid`,
    /// `idle_ms`, …), `long_transactions` (`pid`, `age_ms`, …), `long_statements`,
    /// `deadlocks`, `connections` (`used`, `max`, …), `prepared_transactions`,
    /// `replication_slots`, `wraparound`, `actions`, `probe` (`queries`, `ms`).
    pub fn to_json(&self) -> String {
        let mut j = Json::default();
        j.str("node", &self.node);
        let problems = self.problems();
        j.raw("clear", bool(problems.is_empty()));
        j.raw(
            "problems",
            &list(&problems, |j, p| {
                j.str("text", p);
            }),
        );
        j.raw(
            "blocking",
            &list(&self.blocking, |j, b| {
                j.raw("blocked_pid", &b.blocked_pid.to_string());
                j.raw("blocking_pid", &b.blocking_pid.to_string());
                j.raw("wait_ms", &ms(b.wait));
                j.str("lock_type", &b.lock_type);
                j.str("mode", &b.mode);
                j.opt("relation", b.relation.as_deref());
                j.raw("blocked_ours", bool(b.blocked.ours));
                j.opt("blocked_fingerprint", b.blocked.fingerprint.as_deref());
                j.opt("blocked_statement", b.blocked.statement.as_deref());
                j.raw(
                    "blocking_ours",
                    bool(b.blocking.as_ref().is_some_and(|s| s.ours)),
                );
                j.opt(
                    "blocking_state",
                    b.blocking.as_ref().map(|s| s.state.as_str()),
                );
                j.opt(
                    "blocking_fingerprint",
                    b.blocking.as_ref().and_then(|s| s.fingerprint.as_deref()),
                );
                j.opt(
                    "blocking_statement",
                    b.blocking.as_ref().and_then(|s| s.statement.as_deref()),
                );
            }),
        );
        j.raw(
            "idle_in_transaction",
            &list(&self.idle_in_transaction, |j, s| {
                j.raw("idle_ms", &opt_ms(s.state_age));
                session(j, s);
            }),
        );
        j.raw(
            "long_transactions",
            &list(&self.long_transactions, |j, s| {
                j.raw("age_ms", &opt_ms(s.transaction_age));
                session(j, s);
            }),
        );
        j.raw(
            "long_statements",
            &list(&self.long_statements, |j, s| {
                j.raw("age_ms", &opt_ms(s.statement_age));
                session(j, s);
            }),
        );
        let d = &self.deadlocks;
        j.raw(
            "deadlocks",
            &format!(
                r#"{{"server_total":{},"server_new":{},"ours_total":{},"ours_new":{}}}"#,
                d.server_total, d.server_new, d.ours_total, d.ours_new
            ),
        );
        let c = &self.connections;
        j.raw(
            "connections",
            &format!(
                r#"{{"used":{},"max":{},"reserved":{},"ours":{},"over":{}}}"#,
                c.used,
                c.max,
                c.reserved,
                c.ours,
                bool(self.connections_over)
            ),
        );
        j.raw(
            "prepared_transactions",
            &list(&self.prepared_transactions, |j, p| {
                j.str("gid", &p.gid);
                j.str("owner", &p.owner);
                j.str("database", &p.database);
                j.raw("age_ms", &ms(p.age));
            }),
        );
        j.raw(
            "replication_slots",
            &list(&self.replication_slots, |j, s| {
                j.str("name", &s.name);
                j.str("type", &s.kind);
                j.raw("active", bool(s.active));
                j.raw("retained_bytes", &s.retained_bytes.to_string());
                j.str("wal_status", &s.wal_status);
            }),
        );
        let w = &self.wraparound;
        let mut wj = Json::default();
        wj.str("database", &w.database);
        wj.raw("xid_age", &w.xid_age.to_string());
        wj.raw("mxid_age", &w.mxid_age.to_string());
        wj.raw("over", bool(w.over));
        j.raw("wraparound", &wj.finish());
        j.raw(
            "actions",
            &list(&self.actions, |j, a| {
                j.raw("pid", &a.pid.to_string());
                j.str("action", a.action.as_str());
                j.str("reason", a.trigger.as_str());
                j.raw("dry_run", bool(a.dry_run));
                j.raw("done", bool(a.done));
                j.raw("ours", bool(a.ours));
            }),
        );
        j.raw("limited_view", bool(self.limited_view));
        j.raw(
            "probe",
            &format!(
                r#"{{"queries":{},"ms":{:.3}}}"#,
                self.probe_queries,
                self.probe_time.as_secs_f64() * 1e3
            ),
        );
        j.finish()
    }
}

impl Findings {
    /// Nothing over a threshold (new deadlocks count; the server's total does not).
    pub fn is_clear(&self) -> bool {
        self.problems().is_empty()
    }

    /// One line per kind of finding, for logs and the health report.
    pub fn problems(&self) -> Vec<String> {
        let n = &self.node;
        let mut out = Vec::new();
        let ours = |s: &[Session]| s.iter().filter(|s| s.ours).count();
        if let Some(b) = self.blocking.iter().max_by_key(|b| b.wait) {
            out.push(format!(
                "{n}: {} session(s) blocked on locks (longest: pid {} waits {} ms for pid {})",
                self.blocking.len(),
                b.blocked_pid,
                b.wait.as_millis(),
                b.blocking_pid
            ));
        }
        for (list, what) in [
            (&self.long_transactions, "long transaction(s)"),
            (&self.long_statements, "long statement(s)"),
            (&self.idle_in_transaction, "session(s) idle in transaction"),
        ] {
            if !list.is_empty() {
                out.push(format!(
                    "{n}: {} {what}, {} of them ours",
                    list.len(),
                    ours(list)
                ));
            }
        }
        let d = &self.deadlocks;
        if d.server_new > 0 || d.ours_new > 0 {
            out.push(format!(
                "{n}: {} new deadlock(s) on the server, {} received by this application",
                d.server_new, d.ours_new
            ));
        }
        if self.connections_over {
            let c = &self.connections;
            out.push(format!(
                "{n}: {} of {} connections used ({} reserved, {} ours)",
                c.used, c.max, c.reserved, c.ours
            ));
        }
        if !self.prepared_transactions.is_empty() {
            out.push(format!(
                "{n}: {} orphaned prepared transaction(s)",
                self.prepared_transactions.len()
            ));
        }
        if !self.replication_slots.is_empty() {
            out.push(format!(
                "{n}: {} replication slot(s) inactive or retaining too much WAL",
                self.replication_slots.len()
            ));
        }
        if self.limited_view {
            out.push(format!(
                "{n}: the monitor's user cannot see other users' sessions: grant it pg_monitor"
            ));
        }
        if self.wraparound.over {
            let w = &self.wraparound;
            out.push(format!(
                "{n}: database {} has transaction ID age {} (multixact {})",
                w.database, w.xid_age, w.mxid_age
            ));
        }
        out
    }

    /// The finding kinds present, as the hook events' suffixes (`blocking`, …).
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut k = Vec::new();
        let mut add = |on: bool, name| {
            if on {
                k.push(name);
            }
        };
        add(!self.blocking.is_empty(), "blocking");
        add(!self.long_transactions.is_empty(), "long_transaction");
        add(!self.long_statements.is_empty(), "long_statement");
        add(!self.idle_in_transaction.is_empty(), "idle_in_transaction");
        add(
            self.deadlocks.server_new > 0 || self.deadlocks.ours_new > 0,
            "deadlock",
        );
        add(self.connections_over, "connections");
        add(
            !self.prepared_transactions.is_empty(),
            "prepared_transaction",
        );
        add(!self.replication_slots.is_empty(), "replication_slot");
        add(self.wraparound.over, "wraparound");
        k
    }
}

impl Findings {
    /// Joins the sessions to the pools' open checkouts by server process: those found are
    /// ours, with where they were checked out, the transaction's origin and the tenant.
    pub(crate) fn attach(&mut self, checkouts: &[crate::pool::OpenCheckout]) {
        if checkouts.is_empty() {
            return;
        }
        let by_pid: std::collections::HashMap<i32, &crate::pool::OpenCheckout> =
            checkouts.iter().map(|c| (c.pid, c)).collect();
        let join = |s: &mut Session| {
            if let Some(c) = by_pid.get(&s.pid) {
                s.ours = true;
                s.checkout = Some(super::Checkout {
                    location: c.location.to_string(),
                    transaction: c.transaction.map(ToString::to_string),
                    held_for: c.held_for,
                    tenant: c.tenant.as_deref().map(str::to_owned),
                });
            }
        };
        for b in &mut self.blocking {
            join(&mut b.blocked);
            if let Some(s) = &mut b.blocking {
                join(s);
            }
        }
        for list in [
            &mut self.long_transactions,
            &mut self.long_statements,
            &mut self.idle_in_transaction,
        ] {
            list.iter_mut().for_each(join);
        }
    }
}
