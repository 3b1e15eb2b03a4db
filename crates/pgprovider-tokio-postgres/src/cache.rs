//! The per-connection prepared-statement cache: bounded, least recently used out first.
//!
//! Why not the `lru` crate: besides get/put the cache must drop entries named by the pool's
//! stale-statement log ([`StatementCaches`]) and count into the pool's shared counters; with
//! a capacity in the hundreds an eviction that scans for the oldest entry costs about a
//! microsecond and happens only when a workload has more distinct statements than the cap.

use pgprovider_core::kit::sql::{may_change_session, transaction_effect};
use pgprovider_core::kit::{Stale, StatementCaches};
use std::collections::HashMap;
use tokio_postgres::Statement;

/// What running a statement does to the session, worked out once per statement (the SQL
/// scan costs more than the rest of a cached lookup).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SqlTraits {
    /// May leave state on the session: reset on return.
    pub(crate) changes_session: bool,
    /// Opens (`Some(true)`) or ends (`Some(false)`) a transaction block when it succeeds.
    pub(crate) tx_effect: Option<bool>,
}

impl SqlTraits {
    /// Changes neither the session nor the transaction state (so, abandoned, it leaves
    /// nothing behind but its replies).
    pub(crate) fn harmless(self) -> bool {
        !self.changes_session && self.tx_effect.is_none()
    }

    pub(crate) fn of(sql: &str) -> Self {
        SqlTraits {
            changes_session: may_change_session(sql),
            tx_effect: transaction_effect(sql),
        }
    }
}

pub(crate) struct StatementCache {
    map: HashMap<Box<str>, (Statement, SqlTraits, u64)>,
    capacity: usize,
    tick: u64,
    seen: u64,
    shared: StatementCaches,
}

impl StatementCache {
    pub(crate) fn new(capacity: usize, shared: StatementCaches) -> Self {
        let seen = shared.generation();
        StatementCache {
            map: HashMap::with_capacity(capacity.min(64)),
            capacity,
            tick: 0,
            seen,
            shared,
        }
    }

    /// Whether named statements are cached at all (`false`: unnamed statements only).
    pub(crate) fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The cached statement for `sql`, after dropping whatever the pool marked stale.
    pub(crate) fn get(&mut self, sql: &str) -> Option<(Statement, SqlTraits)> {
        self.catch_up();
        self.tick += 1;
        match self.map.get_mut(sql) {
            Some((stmt, traits, used)) => {
                *used = self.tick;
                self.shared.hit();
                Some((stmt.clone(), *traits))
            }
            None => {
                self.shared.miss();
                None
            }
        }
    }

    /// Keeps `stmt` for `sql`, evicting the least recently used entry when full. Dropping an
    /// evicted statement makes tokio-postgres close it on the server.
    pub(crate) fn put(&mut self, sql: &str, stmt: Statement, traits: SqlTraits) {
        if self.map.len() >= self.capacity && !self.map.contains_key(sql) {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.map.remove(&k);
                self.shared.evicted();
            }
        }
        self.tick += 1;
        self.map.insert(sql.into(), (stmt, traits, self.tick));
    }

    /// Drops `sql` here and, through the shared log, from every connection of the pool.
    pub(crate) fn invalidate(&mut self, sql: &str) {
        self.map.remove(sql);
        self.shared.invalidate(sql);
        self.seen = self.shared.generation();
    }

    fn catch_up(&mut self) {
        if self.shared.generation() == self.seen {
            return;
        }
        let (stale, seen) = self.shared.stale_since(self.seen);
        self.seen = seen;
        match stale {
            Stale::Nothing => {}
            Stale::Some(sqls) => {
                for s in sqls {
                    self.map.remove(&*s);
                }
            }
            Stale::All => self.map.clear(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}
