//! The tokio-postgres connection's [`Pipeline`]: plain reads sent on its session while
//! another task holds it (the pool's adaptive pipelining).
//!
//! tokio-postgres queues every request on the connection in the first poll of its future
//! (a cached statement's `Bind`/`Execute`/`Sync`, a `Parse`/`Describe`/`Sync` for a
//! prepare), which is what the [`Pipeline`] contract asks. Each request ends in its own
//! `Sync`, so a pipelined read is a transaction of its own: an error in it touches neither
//! the holder's statement nor the other reads.
//!
//! The pipeline runs the statements the connection's holders prepared (each statement the
//! connection runs from its cache is offered to it), never preparing one itself: a prepare
//! may look types up in further exchanges, which would be sent outside the pool's lock. It
//! remembers per statement text whether it is a plain read ([`accepts`](Pipeline::accepts))
//! and whether a holder running it may share the connection
//! ([`shares`](Pipeline::shares)), so each text is classified once. It holds the client
//! weakly: closing the connection ends the session even while its pool still lists the
//! pipeline.

use crate::PgConnection;
use crate::cache::SqlTraits;
use crate::error::map_error;
use crate::mux::check_read_only;
use crate::query::{Param, PgRow};
use pgprovider_core::{Pipeline, Result};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use tokio_postgres::{Client, Statement};

/// Statement texts a pipeline remembers; past this, texts are classified per use and not
/// prepared (a workload with unbounded distinct texts should not fill the session).
const KNOWN: usize = 256;

/// Runs plain reads on a [`PgConnection`]'s session while another task holds it (see
/// [`Queries::pipeline`](pgprovider_core::Queries::pipeline)). Cheap to clone.
#[derive(Clone)]
pub struct PgPipeline(Arc<Inner>);

struct Inner {
    client: Weak<Client>,
    node: Arc<str>,
    known: Mutex<HashMap<Box<str>, Known>>,
}

/// A statement whose time on the server averages more than this is slow: it is neither
/// pipelined nor shared, so no read waits behind it.
const SLOW_US: u32 = 5_000;

#[derive(Clone)]
struct Known {
    read: bool,
    shares: bool,
    stmt: Option<Statement>,
    /// Moving average of its time on the server, in µs (weight 1/4 to the newest).
    avg_us: u32,
}

/// Words that make a statement more than a read for pipelining (wherever they appear, in
/// literals too: a false alarm only means the statement waits for a connection of its own).
/// A data-modifying `WITH`, `EXPLAIN ANALYZE` of a write, `SELECT … INTO`, row locks
/// (`FOR UPDATE`, `FOR SHARE`) and sequence functions that would run twice if the read were
/// sent again after a lost connection.
const NOT_READ_WORDS: [&str; 12] = [
    "insert", "update", "delete", "merge", "into", "create", "analyze", "share", "nextval",
    "setval", "setseed", "lock",
];

/// Whether `sql` is a plain read that may be pipelined: multiplexed mode's check plus
/// [`NOT_READ_WORDS`] (pipelined statements have no read-only session to catch a write).
pub(crate) fn pipelinable(sql: &str) -> bool {
    check_read_only(sql).is_ok()
        && !sql
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|w| NOT_READ_WORDS.iter().any(|n| w.eq_ignore_ascii_case(n)))
}

impl Known {
    fn of(sql: &str) -> Self {
        Known {
            read: pipelinable(sql),
            shares: SqlTraits::of(sql).harmless(),
            stmt: None,
            avg_us: 0,
        }
    }

    fn fast(&self) -> bool {
        self.avg_us <= SLOW_US
    }
}

impl fmt::Debug for PgPipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgPipeline")
            .field("node", &self.0.node)
            .finish()
    }
}

impl PgPipeline {
    pub(crate) fn new(client: &Arc<Client>, node: Arc<str>) -> Self {
        PgPipeline(Arc::new(Inner {
            client: Arc::downgrade(client),
            node,
            known: Mutex::new(HashMap::new()),
        }))
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Known>> {
        self.0.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers the statement the connection's holder runs for `sql`.
    pub(crate) fn adopt(&self, sql: &str, stmt: &Statement) {
        let mut known = self.known();
        if let Some(k) = known.get_mut(sql) {
            if k.stmt.is_none() {
                k.stmt = Some(stmt.clone());
            }
        }
    }

    /// Whether `sql` may be pipelined and shared, classifying it the first time.
    fn class(&self, sql: &str) -> (bool, bool) {
        let mut known = self.known();
        if let Some(k) = known.get(sql) {
            return (k.read && k.fast(), k.shares && k.fast());
        }
        let k = Known::of(sql);
        let class = (k.read, k.shares);
        if known.len() < KNOWN {
            known.insert(sql.into(), k);
        }
        class
    }
}

impl Pipeline<PgConnection> for PgPipeline {
    type Statement = Statement;

    fn accepts(&self, sql: &str) -> bool {
        self.class(sql).0
    }

    fn shares(&self, sql: &str) -> bool {
        self.class(sql).1
    }

    fn statement(&self, sql: &str) -> Option<Statement> {
        self.known().get(sql).and_then(|k| k.stmt.clone())
    }

    async fn query<'a, 'p>(
        &'a self,
        stmt: &'a Statement,
        params: &'a [&'p Param<'p>],
    ) -> Result<Vec<PgRow>> {
        let Some(client) = self.0.client.upgrade() else {
            return Err(pgprovider_core::Error::new(
                pgprovider_core::ErrorKind::ConnectionLost,
                "the connection was closed",
            )
            .with_node(&*self.0.node));
        };
        match client.query(stmt, params).await {
            Ok(rows) => Ok(rows.into_iter().map(PgRow).collect()),
            Err(e) => Err(map_error(e).with_node(&*self.0.node)),
        }
    }

    fn forget(&self, sql: &str) {
        if let Some(k) = self.known().get_mut(sql) {
            k.stmt = None;
        }
    }

    fn note(&self, sql: &str, took: std::time::Duration) {
        let us = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        if let Some(k) = self.known().get_mut(sql) {
            k.avg_us = ((u64::from(k.avg_us) * 3 + u64::from(us)) / 4) as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pipelinable;

    #[test]
    fn only_plain_reads_are_pipelined() {
        for ok in [
            "SELECT 1",
            "SELECT abalance FROM accounts WHERE aid = $1",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            "SELECT updated_at, inserted_by FROM t",
            "EXPLAIN SELECT 1",
        ] {
            assert!(pipelinable(ok), "{ok}");
        }
        for bad in [
            "WITH i AS (INSERT INTO t VALUES (1) RETURNING id) SELECT id FROM i",
            "EXPLAIN ANALYZE DELETE FROM t",
            "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
            "SELECT * INTO TEMP t FROM u",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t FOR SHARE",
            "SELECT nextval('s')",
            "SELECT set_config('a.b', 'c', false)",
            "SELECT 1; SELECT 2",
            "UPDATE t SET a = 1",
            "SELECT 'insert'",
        ] {
            assert!(!pipelinable(bad), "{bad}");
        }
    }
}
