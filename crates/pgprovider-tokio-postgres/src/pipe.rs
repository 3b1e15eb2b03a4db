//! The tokio-postgres connection's [`Pipeline`]: plain reads sent on its session while
//! another task holds it (the pool's adaptive pipelining).
//!
//! tokio-postgres queues every request on the connection in the first poll of its future
//! (a cached statement's `Bind`/`Execute`/`Sync`, a `Parse`/`Describe`/`Sync` for a
//! prepare), which is what the [`Pipeline`] contract asks. Each request ends in its own
//! `Sync`, so a pipelined read is a transaction of its own: an error in it touches neither
//! the holder's statement nor the other reads.
//!
//! The pipeline keeps its own prepared statements (the connection's cache belongs to its
//! holder, who has it mutably), and remembers per statement text whether it is a plain
//! read ([`accepts`](Pipeline::accepts)) and whether a holder running it may share the
//! connection ([`shares`](Pipeline::shares)), so each text is classified once.

use crate::PgConnection;
use crate::cache::SqlTraits;
use crate::error::map_error;
use crate::mux::check_read_only;
use crate::query::{Param, PgRow};
use pgprovider_core::{Pipeline, Result};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use tokio_postgres::{Client, Statement};

/// Statement texts a pipeline remembers; past this, texts are classified per use and not
/// prepared (a workload with unbounded distinct texts should not fill the session).
const KNOWN: usize = 256;

/// Runs plain reads on a [`PgConnection`]'s session while another task holds it (see
/// [`Queries::pipeline`](pgprovider_core::Queries::pipeline)). Cheap to clone.
#[derive(Clone)]
pub struct PgPipeline(Arc<Inner>);

struct Inner {
    client: Arc<Client>,
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

impl Known {
    fn of(sql: &str) -> Self {
        Known {
            read: check_read_only(sql).is_ok(),
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
    pub(crate) fn new(client: Arc<Client>, node: Arc<str>) -> Self {
        PgPipeline(Arc::new(Inner {
            client,
            node,
            known: Mutex::new(HashMap::new()),
        }))
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Known>> {
        self.0.known.lock().unwrap_or_else(|e| e.into_inner())
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

    async fn prepare<'a>(&'a self, sql: &'a str) -> Result<Statement> {
        let stmt = self
            .0
            .client
            .prepare(sql)
            .await
            .map_err(|e| map_error(e).with_node(&*self.0.node))?;
        let mut known = self.known();
        if let Some(k) = known.get_mut(sql) {
            k.stmt = Some(stmt.clone());
        }
        Ok(stmt)
    }

    async fn query<'a, 'p>(
        &'a self,
        stmt: &'a Statement,
        params: &'a [&'p Param<'p>],
    ) -> Result<Vec<PgRow>> {
        match self.0.client.query(stmt, params).await {
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
