//! Typed queries on a [`PgConnection`]: the [`Queries`] trait, row streams and pipelined
//! batches, all through the prepared-statement cache.
//!
//! A cached statement that the server rejects as stale (`0A000` cached plan must not change
//! result type, `26000` prepared statement does not exist) is dropped from every cache of
//! the pool and, outside a transaction, prepared again and run once more; the caller sees
//! nothing. Inside a transaction the transaction is already aborted by the error, so the
//! error is returned, saying so (the provider's transaction closure re-runs it).
//!
//! With a statement-cache capacity of `0`, and always behind a transaction pooler
//! (`pooler=transaction`), only unnamed statements are used (one round trip, nothing left on
//! the server session). The
//! parameter types are then taken from the Rust values (`i32` is `int4`, `String` is
//! `text`, …), not asked of the server: cast in SQL where the column's type differs.

use crate::cache::SqlTraits;
use crate::conn::PgConnection;
use crate::error::map_error;
use futures_util::{Stream, StreamExt, TryStreamExt};
use pgprovider_core::kit::sql::may_change_session;
use pgprovider_core::observe::{Operation, OperationKind};
use pgprovider_core::{Column, Error, ErrorKind, FromRow, Queries, Result, Scope};
use std::fmt;
use std::ops::Deref;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_postgres::types::{FromSqlOwned, ToSql, Type};
use tokio_postgres::{Client, Row, RowStream, Statement};

/// A parameter: any value tokio-postgres can send.
pub type Param<'a> = dyn ToSql + Sync + 'a;

/// A result row. Derefs to tokio-postgres's [`Row`] (`row.get(0)`, `row.try_get("id")`);
/// implements [`Column`] so [`FromRow`] types and tuples can be read from it.
pub struct PgRow(pub(crate) Row);

impl PgRow {
    /// The driver's row.
    pub fn into_inner(self) -> Row {
        self.0
    }

    /// Reads the row as a [`FromRow`] type (a tuple, or a struct deriving `FromRow`).
    ///
    /// # Errors
    /// [`ErrorKind::Decode`] when a column is missing or has another type.
    pub fn to<T: FromRow<PgRow>>(&self) -> Result<T> {
        T::from_row(self)
    }
}

impl Deref for PgRow {
    type Target = Row;
    fn deref(&self) -> &Row {
        &self.0
    }
}

impl fmt::Debug for PgRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<T: FromSqlOwned> Column<T> for PgRow {
    fn column(&self, idx: usize) -> Result<T> {
        self.0.try_get(idx).map_err(decode_error)
    }
    fn column_named(&self, name: &str) -> Result<T> {
        self.0.try_get(name).map_err(decode_error)
    }
}

fn decode_error(e: tokio_postgres::Error) -> Error {
    Error::new(ErrorKind::Decode, format!("cannot read the row: {e}"))
        .with_hint("check the column names and that the Rust types match the SQL types")
        .with_source(e)
}

impl Queries for PgConnection {
    type Row = PgRow;
    type Param<'a> = Param<'a>;
    type Pipeline = crate::PgPipeline;

    /// `None` behind a transaction pooler: its statements must not outlive a transaction.
    fn pipeline(&self) -> Option<crate::PgPipeline> {
        if self.s.pooler() == pgprovider_core::PoolerMode::Transaction {
            return None;
        }
        Some(
            self.pipe
                .get_or_init(|| crate::PgPipeline::new(&self.client, self.s.node_shared()))
                .clone(),
        )
    }

    async fn query<'p>(&mut self, sql: &str, params: &[&'p Param<'p>]) -> Result<Vec<PgRow>> {
        match self
            .observed(OperationKind::Query, sql, params, Op::Query)
            .await?
        {
            Out::Rows(rows) => Ok(rows.into_iter().map(PgRow).collect()),
            _ => unreachable!("a query returns rows"),
        }
    }

    async fn execute<'p>(&mut self, sql: &str, params: &[&'p Param<'p>]) -> Result<u64> {
        match self
            .observed(OperationKind::Execute, sql, params, Op::Execute)
            .await?
        {
            Out::Count(n) => Ok(n),
            _ => unreachable!("an execute returns a count"),
        }
    }

    /// Pipelined: `BEGIN` + prologue, the statement, the scope check and `COMMIT` leave in
    /// one window, so the scope costs no extra round trip once the statement is prepared.
    async fn query_scoped<'p>(
        &mut self,
        scope: Scope<'_>,
        sql: &str,
        params: &[&'p Param<'p>],
    ) -> Result<Vec<PgRow>> {
        match self.scoped(scope, sql, params, Op::Query).await? {
            Out::Rows(rows) => Ok(rows.into_iter().map(PgRow).collect()),
            _ => unreachable!("a query returns rows"),
        }
    }

    async fn execute_scoped<'p>(
        &mut self,
        scope: Scope<'_>,
        sql: &str,
        params: &[&'p Param<'p>],
    ) -> Result<u64> {
        match self.scoped(scope, sql, params, Op::Execute).await? {
            Out::Count(n) => Ok(n),
            _ => unreachable!("an execute returns a count"),
        }
    }

    fn query_timeout(&self) -> Option<Duration> {
        self.s.query_timeout()
    }

    fn set_query_timeout(&mut self, timeout: Option<Duration>) {
        self.s.set_query_timeout(timeout);
    }

    fn in_transaction(&self) -> bool {
        self.s.in_transaction()
    }
}

impl PgConnection {
    /// Runs `sql` and returns its rows as a stream, for results too large to collect. The
    /// connection is busy until the stream ends; dropping the stream early is safe (the
    /// pool drains the rest before reusing the connection, cancelling the statement on the
    /// server when that takes long).
    ///
    /// The query timeout bounds the wait for the first row, then each wait for the next
    /// one (a progress bound: a long stream is fine, a stalled one ends with
    /// [`ErrorKind::Timeout`](pgprovider::ErrorKind::Timeout) and its connection is closed).
    ///
    /// # Errors
    /// As [`Queries::query`]; each item may also carry an error.
    pub async fn query_stream(
        &mut self,
        sql: &str,
        params: &[&Param<'_>],
    ) -> Result<PgRowStream<'_>> {
        let Out::Stream(stream) = self
            .observed(OperationKind::Query, sql, params, Op::Stream)
            .await?
        else {
            unreachable!("a stream query returns a stream")
        };
        self.s.set_in_flight(true);
        let stall = self
            .s
            .query_timeout()
            .map(|t| (t, Box::pin(tokio::time::sleep(t))));
        Ok(PgRowStream {
            inner: Box::pin(stream),
            conn: self,
            stall,
            armed: false,
            stalled: false,
        })
    }

    /// Sends every statement in one pipelined window (a single round trip when the
    /// statements are cached) and returns their results in order.
    ///
    /// Outside a transaction the batch runs in one (sent in the same window): it applies
    /// entirely or not at all. Inside a transaction it runs in it.
    ///
    /// ```no_run
    /// # async fn run(conn: &mut pgprovider_tokio_postgres::PgConnection) -> pgprovider::Result<()> {
    /// let results = conn.batch(&[
    ///     ("INSERT INTO t (id) VALUES ($1)", &[&1_i32]),
    ///     ("UPDATE t SET n = n + 1 WHERE id = $1", &[&1_i32]),
    ///     ("SELECT n FROM t WHERE id = $1", &[&1_i32]),
    /// ]).await?;
    /// assert_eq!(results[1].rows_affected(), 1);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The first failing statement's error, with its position ("batch statement 2 of 3
    /// failed: …"), its SQLSTATE and fields; nothing of the batch was applied (outside a
    /// transaction) or the transaction is aborted (inside one).
    pub async fn batch(
        &mut self,
        statements: &[(&str, &[&Param<'_>])],
    ) -> Result<Vec<BatchResult>> {
        if self.s.hooks().is_empty() {
            return self.batch_inner(statements).await;
        }
        let (hooks, node) = (self.s.hooks().clone(), self.s.node_shared());
        let texts: Vec<&str> = statements.iter().map(|(sql, _)| *sql).collect();
        let op = Operation::new(OperationKind::Batch, &node).with_batch(&texts);
        let rows = |r: &Vec<BatchResult>| Some(r.iter().map(BatchResult::rows_affected).sum());
        hooks.observe(&op, rows, self.batch_inner(statements)).await
    }

    async fn batch_inner(
        &mut self,
        statements: &[(&str, &[&Param<'_>])],
    ) -> Result<Vec<BatchResult>> {
        let n = statements.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        for (sql, _) in statements {
            self.s.refuse(sql)?;
            if may_change_session(sql) {
                self.s.untracked();
            }
        }
        let typed = match self.cache.enabled() {
            true => None,
            false => Some(
                statements
                    .iter()
                    .map(|(_, p)| typed(p))
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        let mut retried = false;
        loop {
            let prepared = self.prepare_all(statements).await?;
            let wrap = !self.s.in_transaction();
            let begin_sql = self.s.wrap_begin().to_owned();
            let begin_sql = wrap.then_some(begin_sql.as_str());
            let (begin, results, commit) = self
                .run(async |c| {
                    Ok(run_pipelined(
                        c,
                        statements,
                        prepared.as_deref(),
                        typed.as_deref(),
                        begin_sql,
                    )
                    .await)
                })
                .await?;
            begin.map_err(|e| map_error(e).with_node(self.s.node().to_owned()))?;
            let failed = results.iter().position(Result::is_err);
            let Some(i) = failed else {
                commit.map_err(|e| {
                    map_error(e)
                        .with_node(self.s.node().to_owned())
                        .context("the batch's COMMIT failed")
                })?;
                return Ok(results.into_iter().map(|r| r.expect("checked")).collect());
            };
            let err = results
                .into_iter()
                .nth(i)
                .and_then(Result::err)
                .map(|e| map_error(e).with_node(self.s.node().to_owned()))
                .expect("checked");
            if err.is_stale_statement() && self.cache.enabled() {
                self.cache.invalidate(statements[i].0);
                if wrap && !retried {
                    // The batch was rolled back as a whole: running it again is safe.
                    retried = true;
                    continue;
                }
            }
            let what = if wrap {
                "nothing of the batch was applied"
            } else {
                "the transaction is aborted"
            };
            return Err(err.context(format!("batch statement {} of {n} failed ({what})", i + 1)));
        }
    }

    /// The cached statements for a batch, preparing the missing ones in one pipelined round
    /// trip; `None` when only unnamed statements are used.
    async fn prepare_all(
        &mut self,
        statements: &[(&str, &[&Param<'_>])],
    ) -> Result<Option<Vec<Statement>>> {
        if !self.cache.enabled() {
            return Ok(None);
        }
        let mut out: Vec<Option<Statement>> = statements
            .iter()
            .map(|(s, _)| self.cache.get(s).map(|(st, _)| st))
            .collect();
        let missing: Vec<usize> = (0..out.len()).filter(|i| out[*i].is_none()).collect();
        if !missing.is_empty() {
            let prepared = self
                .run(async |c| {
                    Ok(futures_util::future::join_all(
                        missing.iter().map(|i| c.prepare(statements[*i].0)),
                    )
                    .await)
                })
                .await?;
            for (i, r) in missing.iter().zip(prepared) {
                let stmt = r.map_err(|e| {
                    map_error(e)
                        .with_node(self.s.node().to_owned())
                        .context(format!(
                            "batch statement {} of {} failed to prepare (nothing was run)",
                            i + 1,
                            statements.len()
                        ))
                })?;
                let sql = statements[*i].0;
                self.cache.put(sql, stmt.clone(), SqlTraits::of(sql));
                out[*i] = Some(stmt);
            }
        }
        Ok(Some(
            out.into_iter().map(|s| s.expect("prepared")).collect(),
        ))
    }

    /// Runs `op` through the connection's hooks (as `default`, or the transaction-control
    /// kind the statement is), with the sqlcommenter comment when one applies.
    pub(crate) async fn observed<'p>(
        &mut self,
        default: OperationKind,
        sql: &str,
        params: &[&'p Param<'p>],
        op: Op,
    ) -> Result<Out> {
        if self.s.pooler() == pgprovider_core::PoolerMode::Transaction {
            // Boxed: it holds the scoped and the plain paths, which would double the size of
            // every statement's future (and debug builds' stack frames).
            return Box::pin(self.behind_transaction_pooler(default, sql, params, op)).await;
        }
        self.observed_plain(default, sql, params, op).await
    }

    /// [`observed`](Self::observed) without the pooler's rules.
    async fn observed_plain<'p>(
        &mut self,
        default: OperationKind,
        sql: &str,
        params: &[&'p Param<'p>],
        op: Op,
    ) -> Result<Out> {
        if self.s.hooks().is_empty() {
            return self.exec(sql, params, op, false).await;
        }
        let (hooks, node) = (self.s.hooks().clone(), self.s.node_shared());
        let operation = Operation::new(OperationKind::of_sql(sql, default), &node).with_sql(sql);
        // A commented statement is unique to its correlation id: run it unprepared rather
        // than fill the statement cache with one-off statements.
        let commented = hooks.commented(sql);
        let text = commented.as_deref().unwrap_or(sql);
        let tx_started = self.tx_started;
        let r = hooks
            .observe_tx(
                &operation,
                Out::rows,
                tx_started,
                self.exec(text, params, op, commented.is_some()),
            )
            .await;
        // Hooks see how long transactions stay open: note when one begins.
        self.tx_started = match (self.s.in_transaction(), tx_started) {
            (true, None) => Some(std::time::Instant::now()),
            (true, t) => t,
            (false, _) => None,
        };
        r
    }

    /// A statement behind a transaction pooler: refused when it would leave session state;
    /// outside a transaction, with the settings' `SET LOCAL`s in one of its own (pipelined,
    /// one round trip); a transaction it opens gets them at once. Before a transaction ends,
    /// the types tokio-postgres looked up (with named statements, for columns of types it
    /// does not know) are forgotten, which closes those statements on their server session.
    async fn behind_transaction_pooler<'p>(
        &mut self,
        default: OperationKind,
        sql: &str,
        params: &[&'p Param<'p>],
        op: Op,
    ) -> Result<Out> {
        self.s.refuse(sql)?;
        if let Some(ending) = self.ending(sql) {
            // In one message with the DEALLOCATE, through the simple protocol.
            let r = self.run(async |c| c.batch_execute(&ending).await).await;
            self.s.track(sql, r.is_ok());
            r?;
            return Ok(match op {
                Op::Execute => Out::Count(0),
                _ => Out::Rows(Vec::new()),
            });
        }
        let alone = self.s.alone(sql);
        if let Some(local) = self
            .s
            .local_settings()
            .filter(|_| !self.s.in_transaction() && !alone)
        {
            let local = local.to_owned();
            let scope = Scope {
                prologue: &local,
                check: "",
            };
            if let Op::Stream = op {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "a row stream outside a transaction cannot carry the SET LOCAL settings behind a transaction pooler",
                )
                .with_node(self.s.node().to_owned())
                .with_hint("open a transaction first (a stream inside one gets its settings)"));
            }
            return self.scoped(scope, sql, params, op).await;
        }
        let was_in_tx = self.s.in_transaction();
        let out = Box::pin(self.observed_plain(default, sql, params, op)).await?;
        self.serve_transaction(was_in_tx).await?;
        Ok(out)
    }

    /// A scoped statement (see [`Queries::query_scoped`]), through the hooks as one
    /// operation of `op`'s kind.
    async fn scoped<'p>(
        &mut self,
        scope: Scope<'_>,
        sql: &str,
        params: &[&'p Param<'p>],
        op: Op,
    ) -> Result<Out> {
        if self.s.in_transaction() {
            return Err(Error::new(
                ErrorKind::Other,
                "a scoped statement cannot run inside an open transaction",
            )
            .with_node(self.s.node().to_owned()));
        }
        self.s.refuse(sql)?;
        if self.s.hooks().is_empty() {
            // Boxed: three pipelined requests make a large future, which debug builds
            // would otherwise copy along the stack of every caller.
            return Box::pin(self.scoped_inner(scope, sql, params, op)).await;
        }
        let (hooks, node) = (self.s.hooks().clone(), self.s.node_shared());
        let kind = match op {
            Op::Execute => OperationKind::Execute,
            _ => OperationKind::Query,
        };
        let operation = Operation::new(kind, &node).with_sql(sql);
        let inner = Box::pin(self.scoped_inner(scope, sql, params, op));
        hooks.observe(&operation, Out::rows, inner).await
    }

    async fn scoped_inner<'p>(
        &mut self,
        scope: Scope<'_>,
        sql: &str,
        params: &[&'p Param<'p>],
        op: Op,
    ) -> Result<Out> {
        // Behind a transaction pooler the settings come first, so the scope's own (a
        // tenant's statement_timeout) win.
        let begin = match self.s.local_settings() {
            Some(local) if local != scope.prologue => {
                format!("BEGIN; {local}; {}", scope.prologue)
            }
            _ => format!("BEGIN; {}", scope.prologue),
        };
        let typed = match self.cache.enabled() {
            true => None,
            false => Some(typed(params)?),
        };
        // The scope check: a cached statement when the cache is on (parsing and planning
        // it each time cost ~50 µs per operation here), pipelined before COMMIT. Without
        // the cache it rides in COMMIT's message, which a failed check stops before COMMIT
        // (the transaction stays aborted and open; the connection is closed, rolling it
        // back). Either way it fails with 42704 (its marker setting does not exist).
        let check = match (&typed, scope.check.is_empty()) {
            (None, false) => Some(match self.cache.get(scope.check) {
                Some((s, _)) => s,
                None => {
                    let s = self.run(async |c| c.prepare(scope.check).await).await?;
                    self.cache
                        .put(scope.check, s.clone(), SqlTraits::of(scope.check));
                    s
                }
            }),
            _ => None,
        };
        let end = match (&check, scope.check.is_empty()) {
            (None, false) => format!("{}; COMMIT", scope.check),
            _ => "COMMIT".to_owned(),
        };
        let checked_ok = || Ok(Out::Count(0));
        let mut retried = false;
        loop {
            let node = self.s.node_shared();
            let db = |e: tokio_postgres::Error| map_error(e).with_node(&*node);
            // What the statement may leave on the session beyond the transaction is reset
            // on return, as for any other statement.
            let cached = match &typed {
                Some(_) => {
                    self.s.dirty_if(SqlTraits::of(sql).changes_session);
                    None
                }
                None => self.cache.get(sql).map(|(s, traits)| {
                    self.s.dirty_if(traits.changes_session);
                    s
                }),
            };
            let run_check = async |c: &Client| match &check {
                Some(cs) => call(c, Op::Query, scope.check, Some(cs), &[], &[]).await,
                None => checked_ok(),
            };
            let (stmt, first, body, checked, commit) = match (&typed, cached) {
                (None, None) => {
                    // First use on this connection: prepare inside the scope (names resolve
                    // by the tenant's search_path), one step at a time.
                    let ready = self
                        .run(async |c| {
                            c.simple_query(&begin).await?;
                            c.prepare(sql).await
                        })
                        .await;
                    let s = match ready {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = self.run(async |c| c.simple_query("ROLLBACK").await).await;
                            return Err(e);
                        }
                    };
                    let traits = SqlTraits::of(sql);
                    self.s.dirty_if(traits.changes_session);
                    self.cache.put(sql, s.clone(), traits);
                    let (body, checked, commit) = self
                        .run(async |c| {
                            Ok(tokio::join!(
                                call(c, op, sql, Some(&s), params, &[]),
                                run_check(c),
                                c.simple_query(&end)
                            ))
                        })
                        .await?;
                    (Some(s), Ok(Vec::new()), body, checked, commit)
                }
                (_, stmt) => {
                    let (first, body, checked, commit) = self
                        .run(async |c| {
                            let unnamed: &[_] = typed.as_deref().unwrap_or(&[]);
                            Ok(tokio::join!(
                                c.simple_query(&begin),
                                call(c, op, sql, stmt.as_ref(), params, unnamed),
                                run_check(c),
                                c.simple_query(&end)
                            ))
                        })
                        .await?;
                    (stmt, first, body, checked, commit)
                }
            };
            // Every part ran to the end: no transaction is left open, whatever failed.
            first.map_err(db)?;
            match body.map_err(db) {
                Err(e) if e.is_stale_statement() && stmt.is_some() && !retried => {
                    // Rolled back as a whole: safe to run again with a fresh statement.
                    self.cache.invalidate(sql);
                    retried = true;
                }
                Err(e) => return Err(e),
                Ok(out) => {
                    let breached = |e: &Error| {
                        !scope.check.is_empty()
                            && e.sql_state() == Some(pgprovider_core::SqlState::UNDEFINED_OBJECT)
                    };
                    if checked.map_err(db).is_err_and(|e| breached(&e)) {
                        // Aborted by the check; COMMIT only rolled it back. Never reuse.
                        self.s.set_broken(true);
                        return Err(pgprovider_core::scope_changed_error(self.s.node()));
                    }
                    return match commit.map_err(db) {
                        Ok(_) => Ok(out),
                        Err(e) if breached(&e) => {
                            // The scope was changed under us: the transaction is aborted and
                            // open; closing the connection rolls it back.
                            self.s.set_broken(true);
                            Err(pgprovider_core::scope_changed_error(self.s.node()))
                        }
                        // The statement ran; whether its COMMIT did is unknown.
                        Err(e) if e.is_connection_lost() => Err(Error::new(
                            ErrorKind::OutcomeUnknown,
                            "the connection was lost while committing a scoped statement: it may or may not have taken effect",
                        )
                        .with_node(self.s.node().to_owned())),
                        Err(e) => Err(e.context("the scoped statement's COMMIT failed")),
                    };
                }
            }
        }
    }

    /// Runs `op` with the cached statement for `sql` (or an unnamed statement when the
    /// cache is off or `unnamed` asks for it), preparing it when missing and, outside a
    /// transaction, re-preparing and running again once when the server says it went stale.
    async fn exec<'p>(
        &mut self,
        sql: &str,
        params: &[&'p Param<'p>],
        op: Op,
        unnamed: bool,
    ) -> Result<Out> {
        if unnamed || !self.cache.enabled() {
            let traits = SqlTraits::of(sql);
            self.s.dirty_if(traits.changes_session);
            let typed = typed(params)?;
            self.s.set_harmless(traits.harmless());
            let r = self
                .run(async |c| call(c, op, sql, None, params, &typed).await)
                .await;
            if let Ok(Out::Rows(rows)) = &r {
                self.note_types(rows);
            }
            return self.track(traits, r);
        }
        let mut retried = false;
        loop {
            let (stmt, traits) = match self.cache.get(sql) {
                Some(found) => found,
                None => {
                    let s = self.run(async |c| c.prepare(sql).await).await?;
                    let traits = SqlTraits::of(sql);
                    self.cache.put(sql, s.clone(), traits);
                    (s, traits)
                }
            };
            self.s.dirty_if(traits.changes_session);
            self.s.set_harmless(traits.harmless());
            if let Some(pipe) = self.pipe.get() {
                pipe.adopt(sql, &stmt);
            }
            match self
                .run(async |c| call(c, op, sql, Some(&stmt), params, &[]).await)
                .await
            {
                Err(e) if e.is_stale_statement() => {
                    self.cache.invalidate(sql);
                    if self.s.in_transaction() {
                        return Err(e.with_hint(
                            "a table changed under this prepared statement inside a transaction, \
                             which is now aborted; the statement was dropped from every cache, so \
                             running the transaction again succeeds",
                        ));
                    }
                    if retried {
                        return Err(e);
                    }
                    retried = true;
                }
                r => return self.track(traits, r),
            }
        }
    }

    /// Notes a successful statement's effect on the transaction state.
    fn track<T>(&mut self, traits: SqlTraits, r: Result<T>) -> Result<T> {
        if let (Ok(_), Some(open)) = (&r, traits.tx_effect) {
            self.s.set_in_transaction(open);
        }
        r
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Op {
    Query,
    Execute,
    Stream,
}

pub(crate) enum Out {
    Rows(Vec<Row>),
    Count(u64),
    Stream(RowStream),
}

impl Out {
    /// Rows returned or affected, for hooks (unknown for a stream).
    fn rows(&self) -> Option<u64> {
        match self {
            Out::Rows(r) => Some(r.len() as u64),
            Out::Count(n) => Some(*n),
            Out::Stream(_) => None,
        }
    }
}

/// One statement on the client: the prepared `stmt`, or `sql` as an unnamed statement with
/// the `typed` parameters.
async fn call<'p>(
    c: &Client,
    op: Op,
    sql: &str,
    stmt: Option<&Statement>,
    params: &[&'p Param<'p>],
    typed: &[(&'p Param<'p>, Type)],
) -> Result<Out, tokio_postgres::Error> {
    let unnamed = || typed.iter().map(|(p, t)| (*p, t.clone()));
    Ok(match (op, stmt) {
        (Op::Query, Some(s)) => Out::Rows(c.query(s, params).await?),
        (Op::Execute, Some(s)) => Out::Count(c.execute(s, params).await?),
        (Op::Stream, Some(s)) => Out::Stream(c.query_raw(s, params.iter().copied()).await?),
        (Op::Query, None) => Out::Rows(c.query_typed(sql, typed).await?),
        (Op::Execute, None) => Out::Count(c.execute_typed(sql, typed).await?),
        (Op::Stream, None) => Out::Stream(c.query_typed_raw(sql, unnamed()).await?),
    })
}

/// BEGIN (when `wrap`), every statement and COMMIT, polled together so they leave in one
/// window and their replies are read in order.
async fn run_pipelined(
    c: &Client,
    statements: &[(&str, &[&Param<'_>])],
    prepared: Option<&[Statement]>,
    typed: Option<&[Vec<(&Param<'_>, Type)>]>,
    begin: Option<&str>,
) -> (
    Result<(), tokio_postgres::Error>,
    Vec<Result<BatchResult, tokio_postgres::Error>>,
    Result<(), tokio_postgres::Error>,
) {
    let wrap = begin.is_some();
    let begin = async {
        match begin {
            Some(b) => c.batch_execute(b).await,
            None => Ok(()),
        }
    };
    let each = statements
        .iter()
        .enumerate()
        .map(|(i, (sql, params))| async move {
            let stream = match prepared {
                Some(p) => c.query_raw(&p[i], params.iter().copied()).await?,
                None => {
                    let typed = typed.map(|t| &t[i][..]).unwrap_or_default();
                    let _ = params;
                    c.query_typed_raw(sql, typed.iter().map(|(p, t)| (*p, t.clone())))
                        .await?
                }
            };
            let mut stream = std::pin::pin!(stream);
            let mut rows = Vec::new();
            while let Some(row) = stream.try_next().await? {
                rows.push(PgRow(row));
            }
            Ok(BatchResult {
                rows_affected: stream.rows_affected().unwrap_or(0),
                rows,
            })
        });
    let all = futures_util::future::join_all(each);
    let commit = async {
        if wrap {
            c.batch_execute("COMMIT").await
        } else {
            Ok(())
        }
    };
    futures_util::future::join3(begin, all, commit).await
}

/// What one statement of a [`PgConnection::batch`] returned.
#[derive(Debug)]
pub struct BatchResult {
    rows: Vec<PgRow>,
    rows_affected: u64,
}

impl BatchResult {
    /// The rows it returned (none for a write without `RETURNING`).
    pub fn rows(&self) -> &[PgRow] {
        &self.rows
    }
    /// The rows, owned.
    pub fn into_rows(self) -> Vec<PgRow> {
        self.rows
    }
    /// The rows it inserted, updated, deleted or returned.
    pub fn rows_affected(&self) -> u64 {
        self.rows_affected
    }
}

/// Rows of [`PgConnection::query_stream`].
pub struct PgRowStream<'a> {
    inner: Pin<Box<RowStream>>,
    conn: &'a mut PgConnection,
    /// The query timeout as a progress bound: the next row must come within it of being
    /// asked for (the caller's own time between rows does not count).
    stall: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    /// The bound runs: armed at the first poll after a row, disarmed by the next row.
    armed: bool,
    stalled: bool,
}

impl PgRowStream<'_> {
    /// The rows affected, once the stream has ended.
    pub fn rows_affected(&self) -> Option<u64> {
        self.inner.rows_affected()
    }
}

impl fmt::Debug for PgRowStream<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgRowStream")
            .field("node", &self.conn.s.node())
            .finish()
    }
}

impl Stream for PgRowStream<'_> {
    type Item = Result<PgRow>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.stalled {
            return Poll::Ready(None);
        }
        if let Some((t, sleep)) = &mut this.stall {
            if !this.armed {
                sleep.as_mut().reset(tokio::time::Instant::now() + *t);
                this.armed = true;
            }
        }
        match this.inner.poll_next_unpin(cx) {
            Poll::Pending => {
                let Some((t, sleep)) = &mut this.stall else {
                    return Poll::Pending;
                };
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // No row within the bound: the stream ends here and the connection is
                // broken, so the pool closes it.
                let t = *t;
                this.stalled = true;
                this.conn.s.set_broken(true);
                Poll::Ready(Some(Err(crate::copy::stalled(
                    "the row stream",
                    t,
                    this.conn.s.node(),
                ))))
            }
            Poll::Ready(Some(Ok(row))) => {
                this.armed = false;
                Poll::Ready(Some(Ok(PgRow(row))))
            }
            Poll::Ready(Some(Err(e))) => {
                // The statement is over: the server sent its error.
                this.conn.s.set_in_flight(false);
                Poll::Ready(Some(Err(
                    map_error(e).with_node(this.conn.s.node().to_owned())
                )))
            }
            Poll::Ready(None) => {
                this.conn.s.set_in_flight(false);
                Poll::Ready(None)
            }
        }
    }
}

/// The types that unnamed statements declare for their parameters, first match wins: the
/// server is not asked (that would cost a round trip and a named statement).
const INFERRED: &[Type] = &[
    Type::BOOL,
    Type::INT2,
    Type::INT4,
    Type::INT8,
    Type::FLOAT4,
    Type::FLOAT8,
    Type::TEXT,
    Type::BYTEA,
    Type::CHAR,
    Type::OID,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMP,
    Type::DATE,
    Type::TIME,
    Type::UUID,
    Type::JSONB,
    Type::JSON,
    Type::NUMERIC,
    Type::INET,
    Type::BOOL_ARRAY,
    Type::INT2_ARRAY,
    Type::INT4_ARRAY,
    Type::INT8_ARRAY,
    Type::FLOAT4_ARRAY,
    Type::FLOAT8_ARRAY,
    Type::TEXT_ARRAY,
    Type::BYTEA_ARRAY,
    Type::UUID_ARRAY,
    Type::TIMESTAMPTZ_ARRAY,
    Type::JSONB_ARRAY,
];

/// A parameter type left for the server to infer (OID 0), for a NULL that accepts any
/// type (a driver-neutral `Value::Null`): typed as the first of [`INFERRED`] it would be
/// sent as `bool`, which the server refuses for a column of another type.
fn unspecified() -> Type {
    Type::new(
        "unspecified".into(),
        0,
        tokio_postgres::types::Kind::Pseudo,
        "pg_catalog".into(),
    )
}

/// Pairs each parameter with the first type of [`INFERRED`] it can be sent as (a NULL that
/// would take any type, with none: the server infers it).
fn typed<'a>(params: &[&'a Param<'a>]) -> Result<Vec<(&'a Param<'a>, Type)>> {
    let mut scratch = bytes::BytesMut::new();
    let any = unspecified();
    params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if matches!(
                p.to_sql_checked(&any, &mut scratch),
                Ok(tokio_postgres::types::IsNull::Yes)
            ) {
                return Ok((*p, any.clone()));
            }
            INFERRED
                .iter()
                .find(|t| {
                    scratch.clear();
                    p.to_sql_checked(t, &mut scratch).is_ok()
                })
                .map(|t| (*p, t.clone()))
                .ok_or_else(|| untyped_param(i))
        })
        .collect()
}

fn untyped_param(i: usize) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "parameter ${} has a type that unnamed statements cannot declare",
            i + 1
        ),
    )
    .with_hint(
        "statement_cache_capacity=0 sends parameter types taken from the Rust values; \
         pass a value of a common type (integers, floats, text, bytea, timestamps, uuid, json, \
         their arrays) and cast in SQL, or turn the statement cache on",
    )
}
