//! What the per-connection prepared-statement caches of one pool share: hit/miss counters and
//! a log of statements that went stale.
//!
//! Each connection keeps its own cache (prepared statements belong to a server session), but
//! when one connection learns that a statement went stale (`cached plan must not change
//! result type` after an `ALTER TABLE`, or `prepared statement … does not exist`), every other
//! connection's copy is stale too. The connection that hit the error records the SQL here;
//! the others drop their copy the next time they look something up, before using it, so the
//! first failure heals the whole pool.
//!
//! Why a log and not a broadcast: connections are owned by whoever holds them and cannot be
//! reached from outside; a generation number lets each one catch up in one atomic load on
//! the hot path, and a lock only when something actually went stale.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// How many stale statements the log keeps; a connection further behind clears its whole
/// cache instead.
const LOG_LEN: usize = 256;

/// State shared by the statement caches of one pool. Cheap to clone (one `Arc`); two values
/// are equal when they are the same shared state.
#[derive(Clone, Default)]
pub struct StatementCaches(Arc<Shared>);

#[derive(Default)]
struct Shared {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    invalidations: AtomicU64,
    generation: AtomicU64,
    log: Mutex<VecDeque<(u64, Arc<str>)>>,
}

/// Counters of a pool's statement caches (approximate: read without a lock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatementCacheStats {
    /// Lookups that found a prepared statement.
    pub hits: u64,
    /// Lookups that had to prepare (one extra round trip each).
    pub misses: u64,
    /// Statements closed to keep a cache within its capacity.
    pub evictions: u64,
    /// Statements found stale on the server and dropped from every connection's cache.
    pub invalidations: u64,
}

/// What a connection must drop from its cache to catch up with the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Stale {
    /// Nothing went stale since the connection last looked.
    Nothing,
    /// These statements went stale.
    Some(Vec<Arc<str>>),
    /// The connection fell too far behind: drop everything.
    All,
}

impl StatementCaches {
    /// New shared state with zero counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a cache hit.
    pub fn hit(&self) {
        self.0.hits.fetch_add(1, Relaxed);
    }

    /// Counts a cache miss.
    pub fn miss(&self) {
        self.0.misses.fetch_add(1, Relaxed);
    }

    /// Counts an eviction.
    pub fn evicted(&self) {
        self.0.evictions.fetch_add(1, Relaxed);
    }

    /// The current generation: a connection that has caught up with it has nothing to drop.
    pub fn generation(&self) -> u64 {
        self.0.generation.load(Relaxed)
    }

    /// Records that `sql` went stale on the server, so every cache drops it.
    pub fn invalidate(&self, sql: &str) {
        let mut log = self.0.log.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.0.generation.load(Relaxed) + 1;
        if log.len() == LOG_LEN {
            log.pop_front();
        }
        log.push_back((generation, Arc::from(sql)));
        self.0.invalidations.fetch_add(1, Relaxed);
        // Published after the entry is in the log, under the same lock.
        self.0.generation.store(generation, Relaxed);
    }

    /// What went stale after generation `seen`, and the generation to remember next.
    pub fn stale_since(&self, seen: u64) -> (Stale, u64) {
        let now = self.generation();
        if now == seen {
            return (Stale::Nothing, now);
        }
        let log = self.0.log.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.0.generation.load(Relaxed);
        match log.front() {
            Some((oldest, _)) if *oldest <= seen + 1 => {
                let sqls = log
                    .iter()
                    .filter(|(g, _)| *g > seen)
                    .map(|(_, s)| s.clone())
                    .collect();
                (Stale::Some(sqls), now)
            }
            _ => (Stale::All, now),
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> StatementCacheStats {
        StatementCacheStats {
            hits: self.0.hits.load(Relaxed),
            misses: self.0.misses.load(Relaxed),
            evictions: self.0.evictions.load(Relaxed),
            invalidations: self.0.invalidations.load(Relaxed),
        }
    }
}

impl PartialEq for StatementCaches {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for StatementCaches {}

impl fmt::Debug for StatementCaches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.stats(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_equality() {
        let c = StatementCaches::new();
        c.hit();
        c.hit();
        c.miss();
        c.evicted();
        assert_eq!(
            c.stats(),
            StatementCacheStats {
                hits: 2,
                misses: 1,
                evictions: 1,
                invalidations: 0
            }
        );
        assert_eq!(c, c.clone());
        assert_ne!(c, StatementCaches::new());
        assert!(format!("{c:?}").contains("hits: 2"));
    }

    #[test]
    fn connections_catch_up_with_the_log() {
        let c = StatementCaches::new();
        let (stale, seen) = c.stale_since(0);
        assert_eq!((stale, seen), (Stale::Nothing, 0));
        c.invalidate("SELECT a");
        c.invalidate("SELECT b");
        let (stale, seen) = c.stale_since(0);
        assert_eq!(
            stale,
            Stale::Some(vec!["SELECT a".into(), "SELECT b".into()])
        );
        assert_eq!(seen, 2);
        c.invalidate("SELECT c");
        assert_eq!(c.stale_since(seen).0, Stale::Some(vec!["SELECT c".into()]));
        assert_eq!(c.stats().invalidations, 3);
    }

    #[test]
    fn a_connection_far_behind_drops_everything() {
        let c = StatementCaches::new();
        for i in 0..LOG_LEN + 5 {
            c.invalidate(&format!("SELECT {i}"));
        }
        assert_eq!(c.stale_since(0).0, Stale::All);
        let recent = c.generation() - 3;
        match c.stale_since(recent).0 {
            Stale::Some(v) => assert_eq!(v.len(), 3),
            other => panic!("{other:?}"),
        }
    }
}
