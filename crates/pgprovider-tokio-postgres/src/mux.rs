//! Multiplexed mode: a few connections shared by many tasks at once, for read-only work.
//!
//! tokio-postgres pipelines concurrent requests on one connection, so many tasks can use a
//! connection at the same time without a checkout. That is safe only for work that leaves
//! nothing on the session: no transactions, no `SET`, no temporary tables, no advisory
//! locks, no `LISTEN`. [`Multiplexed`] makes the unsafe uses impossible or an error:
//!
//! - it has no checkout and no transaction API, only queries;
//! - each statement is checked before it is sent: only a plain read (`SELECT`, `WITH`,
//!   `VALUES`, `TABLE`, `SHOW`, `EXPLAIN`) that calls no `set_config` or advisory-lock
//!   function passes; anything else fails with [`ErrorKind::Rejected`] and reaches no server;
//! - every connection is opened with `default_transaction_read_only = on`, so a write hidden
//!   in a read (a data-modifying `WITH`, a volatile function) fails at the server with
//!   SQLSTATE 25006.
//!
//! Use the pool for writes, transactions and anything that sets session state.
//!
//! Each connection caches its prepared statements, so a query is one pipelined round trip;
//! a statement invalidated by a schema change (0A000, 26000) is re-prepared and the query
//! run again once. A lost connection is replaced and the read retried once (reads are safe
//! to repeat). Dropping a query future never desynchronises the shared connection: the
//! reply is read and discarded by the connection task, though the server still runs the
//! statement to its end (bound it with `statement_timeout` in `options`).

use crate::error::map_error;
use pgprovider_core::kit::sql::may_change_session;
use pgprovider_core::{ConnectParams, Driver, Error, ErrorKind, Result, SqlState};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

/// Prepared statements kept per connection; beyond this, statements are prepared per use.
const STATEMENT_CACHE: usize = 256;

const READ_LEADING_WORDS: [&str; 6] = ["SELECT", "WITH", "VALUES", "TABLE", "SHOW", "EXPLAIN"];

/// Connections shared by many tasks at once for read-only queries. Cheap to clone.
///
/// ```no_run
/// # async fn run() -> Result<(), pgprovider::Error> {
/// use pgprovider::Config;
/// use pgprovider_tokio_postgres::Multiplexed;
/// let config = Config::from_url("postgres://app@replica1/app")?;
/// let params = config.connect_params(&config.nodes()[0]).await?;
/// let mux = Multiplexed::connect(params, 2).await?;
/// let rows = mux.query("SELECT id, name FROM users WHERE id = $1", &[&42_i64]).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Multiplexed {
    inner: Arc<Inner>,
}

struct Inner {
    params: ConnectParams,
    conns: Vec<Shared>,
    next: AtomicUsize,
    queries: AtomicU64,
    rejected: AtomicU64,
    reconnects: AtomicU64,
}

struct Shared {
    current: RwLock<Arc<Session>>,
    in_flight: AtomicUsize,
    reconnecting: tokio::sync::Mutex<()>,
}

struct Session {
    client: Arc<Client>,
    statements: Mutex<HashMap<String, Statement>>,
}

/// Counters of a [`Multiplexed`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MuxStats {
    /// Shared connections.
    pub connections: usize,
    /// Queries in flight now, over all connections.
    pub in_flight: usize,
    /// Queries run (successful or not) since creation.
    pub queries: u64,
    /// Statements refused before reaching the server.
    pub rejected: u64,
    /// Connections replaced after being lost.
    pub reconnects: u64,
}

impl fmt::Debug for Multiplexed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Multiplexed")
            .field("node", &self.inner.params.node_name())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Multiplexed {
    /// Opens `connections` shared, read-only connections to the node of `params`.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] for zero connections; otherwise the first connection error.
    pub async fn connect(mut params: ConnectParams, connections: usize) -> Result<Multiplexed> {
        if connections == 0 {
            return Err(Error::new(
                ErrorKind::Config,
                "multiplexed mode needs at least one connection",
            )
            .with_node(params.node_name()));
        }
        match params.pooler {
            pgprovider_core::PoolerMode::Transaction => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "multiplexed mode cannot run behind a transaction pooler: its connections share named prepared statements",
                )
                .with_node(params.node_name())
                .with_hint("connect it to the node directly, or through the pooler in session mode (pooler=session)"));
            }
            pgprovider_core::PoolerMode::Session => params
                .settings
                .push(("default_transaction_read_only".into(), "on".into())),
            _ => {
                let read_only = "-c default_transaction_read_only=on";
                params.options = Some(match params.options.take() {
                    Some(o) => format!("{o} {read_only}"),
                    None => read_only.to_owned(),
                });
            }
        }
        let mut conns = Vec::with_capacity(connections);
        for _ in 0..connections {
            conns.push(Shared {
                current: RwLock::new(open(&params).await?),
                in_flight: AtomicUsize::new(0),
                reconnecting: tokio::sync::Mutex::new(()),
            });
        }
        Ok(Multiplexed {
            inner: Arc::new(Inner {
                params,
                conns,
                next: AtomicUsize::new(0),
                queries: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                reconnects: AtomicU64::new(0),
            }),
        })
    }

    /// Runs a read-only query on the least busy connection.
    ///
    /// # Errors
    /// [`ErrorKind::Rejected`] for a statement that is not a plain read (nothing is sent);
    /// the server's error otherwise (SQLSTATE 25006 for a write hidden in a read).
    pub async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let shared = &self.inner.conns[self.pick()];
        shared.in_flight.fetch_add(1, Relaxed);
        let _done = InFlight(&shared.in_flight);
        let mut retried = false;
        loop {
            let session = shared.session();
            // A statement is checked once, before it is first prepared on a session: a
            // cached one has passed.
            let stmt = match session.cached(sql) {
                Some(stmt) => stmt,
                None => {
                    if let Err(why) = check_read_only(sql) {
                        self.inner.rejected.fetch_add(1, Relaxed);
                        return Err(Error::new(
                            ErrorKind::Rejected,
                            format!("multiplexed mode runs only plain reads: {why}"),
                        )
                        .with_node(self.inner.params.node_name())
                        .with_hint(
                            "run writes, transactions and session settings through the pool",
                        ));
                    }
                    match session.prepare(sql).await {
                        Ok(stmt) => stmt,
                        Err(e) => return Err(map_error(e).with_node(self.inner.params.node_name())),
                    }
                }
            };
            if !retried {
                self.inner.queries.fetch_add(1, Relaxed);
            }
            let err = match session.client.query(&stmt, params).await {
                Ok(rows) => return Ok(rows),
                Err(e) => map_error(e).with_node(self.inner.params.node_name()),
            };
            let state = err.sql_state();
            let stale = state == Some(SqlState::FEATURE_NOT_SUPPORTED)
                || state == Some(SqlState::INVALID_SQL_STATEMENT_NAME);
            if retried || !(session.client.is_closed() || err.is_connection_lost() || stale) {
                return Err(err);
            }
            retried = true;
            if stale {
                session.forget(sql);
            } else {
                self.reconnect(shared, &session).await?;
            }
        }
    }

    /// As [`query`](Self::query), for exactly one row.
    ///
    /// # Errors
    /// As `query`, and [`ErrorKind::Other`] when the query returns no row or several.
    pub async fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row> {
        let mut rows = self.query(sql, params).await?;
        if rows.len() != 1 {
            return Err(Error::new(
                ErrorKind::Other,
                format!("expected one row, got {}", rows.len()),
            )
            .with_node(self.inner.params.node_name()));
        }
        Ok(rows.remove(0))
    }

    /// Counters and the queries in flight.
    pub fn stats(&self) -> MuxStats {
        MuxStats {
            connections: self.inner.conns.len(),
            in_flight: self
                .inner
                .conns
                .iter()
                .map(|c| c.in_flight.load(Relaxed))
                .sum(),
            queries: self.inner.queries.load(Relaxed),
            rejected: self.inner.rejected.load(Relaxed),
            reconnects: self.inner.reconnects.load(Relaxed),
        }
    }

    /// The connection with the fewest queries in flight, starting the scan at a rotating
    /// index so ties are spread.
    fn pick(&self) -> usize {
        let n = self.inner.conns.len();
        let start = self.inner.next.fetch_add(1, Relaxed) % n;
        (0..n)
            .map(|k| (start + k) % n)
            .min_by_key(|&i| self.inner.conns[i].in_flight.load(Relaxed))
            .unwrap_or(0)
    }

    /// Replaces `stale` with a new connection, once even if many tasks saw it fail.
    async fn reconnect(&self, shared: &Shared, stale: &Arc<Session>) -> Result<()> {
        let _one = shared.reconnecting.lock().await;
        if !Arc::ptr_eq(&shared.session(), stale) {
            return Ok(()); // another task already replaced it
        }
        let fresh = open(&self.inner.params).await?;
        *shared.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        self.inner.reconnects.fetch_add(1, Relaxed);
        Ok(())
    }
}

impl Shared {
    fn session(&self) -> Arc<Session> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Session {
    fn cached(&self, sql: &str) -> Option<Statement> {
        self.cache().get(sql).cloned()
    }

    async fn prepare(&self, sql: &str) -> std::result::Result<Statement, tokio_postgres::Error> {
        let stmt = self.client.prepare(sql).await?;
        let mut cache = self.cache();
        if cache.len() < STATEMENT_CACHE {
            cache.insert(sql.to_owned(), stmt.clone());
        }
        Ok(stmt)
    }

    fn forget(&self, sql: &str) {
        self.cache().remove(sql);
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Statement>> {
        self.statements.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

async fn open(params: &ConnectParams) -> Result<Arc<Session>> {
    let conn = crate::TokioPostgres::new().connect(params).await?;
    Ok(Arc::new(Session {
        client: Arc::new(conn.into_client()),
        statements: Mutex::new(HashMap::new()),
    }))
}

/// Whether `sql` is a single plain read; the reason when not.
pub(crate) fn check_read_only(sql: &str) -> std::result::Result<(), String> {
    let trimmed = sql.trim().trim_end_matches(';');
    if trimmed.contains(';') {
        return Err("one statement at a time".to_owned());
    }
    let word: String = trimmed
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect::<String>()
        .to_ascii_uppercase();
    if !READ_LEADING_WORDS.contains(&word.as_str()) {
        let shown = if word.is_empty() {
            "(no keyword)".to_owned()
        } else {
            word
        };
        return Err(format!("{shown} is not a read"));
    }
    if may_change_session(trimmed) {
        return Err("it may change session state".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_read_only;

    #[test]
    fn only_plain_reads_pass() {
        for ok in [
            "SELECT 1",
            "  with a as (select 1) select * from a;",
            "VALUES (1)",
            "TABLE t",
            "SHOW work_mem",
            "EXPLAIN SELECT 1",
        ] {
            assert!(check_read_only(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("INSERT INTO t VALUES (1)", "INSERT is not a read"),
            ("BEGIN", "BEGIN is not a read"),
            ("SET work_mem = '1MB'", "SET is not a read"),
            ("SELECT 1; SELECT 2", "one statement at a time"),
            (
                "SELECT set_config('a.b', 'c', false)",
                "it may change session state",
            ),
            ("SELECT pg_advisory_lock(1)", "it may change session state"),
            ("/* hi */ SELECT 1", "(no keyword) is not a read"),
        ] {
            assert_eq!(check_read_only(bad).unwrap_err(), why, "{bad}");
        }
    }
}
