//! Transactions: options, the [`Tx`] handle, and the closure API that commits, rolls back
//! and re-runs on conflicts.
//!
//! ```no_run
//! # async fn run(pool: pgprovider::Pool<pgprovider_tokio_postgres::TokioPostgres>) -> pgprovider::Result<()> {
//! use pgprovider::{IsolationLevel, TxOptions};
//! let opts = TxOptions::new().with_isolation(IsolationLevel::Serializable);
//! let moved: u64 = pool
//!     .transaction(&opts, |tx| async move {
//!         tx.execute("UPDATE accounts SET balance = balance - 10 WHERE id = $1", &[&1_i64]).await?;
//!         tx.execute("UPDATE accounts SET balance = balance + 10 WHERE id = $1", &[&2_i64]).await
//!     })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! What happens when:
//!
//! | the closure… | then |
//! | --- | --- |
//! | returns `Ok` | `COMMIT`; its result is returned |
//! | returns `Err` | `ROLLBACK`; the error is returned, unless the transaction lost a conflict (below) |
//! | lost a conflict (`40001` serialization failure, `40P01` deadlock, a statement gone stale) | rolled back and run again from the start, up to the [`Backoff`](crate::retry::Backoff)'s attempts, waiting with jitter between them |
//! | returned `Ok` although a statement failed (its error swallowed) | rolled back; an error names the failed statement's message |
//! | panics, or its future is dropped | the connection goes back to the pool, which rolls the transaction back (a statement in flight is drained first, or cancelled past a short grace; see the pool docs) |
//! | runs past the deadline ([`TxOptions::with_timeout`]) | the running statement is cancelled on the server, the transaction rolled back, and [`ErrorKind::Timeout`] returned |
//!
//! `COMMIT` itself is never cancelled and never retried: with a synchronous standby, a
//! cancelled commit may still be committed locally. A commit whose reply is lost (the
//! connection drops, or the deadline passes) fails with [`ErrorKind::OutcomeUnknown`]: the
//! transaction may or may not have committed, and the caller must check.

use crate::pool::Pooled;
use pgprovider_core::{Connection, Driver, Error, ErrorKind, FromRow, Queries, Result, SqlState};
use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, MutexGuard};
use tokio::time::Instant;

mod options;

pub use options::{IsolationLevel, TxOptions};

/// An open transaction. Cheap to clone: clones share it. See the [module docs](self).
///
/// Dropping every handle without [`commit`](Tx::commit) rolls it back (the pool resets
/// the connection), logs a warning naming where the transaction began, and counts it
/// ([`PoolStats::abandoned_transactions`](crate::PoolStats::abandoned_transactions)). Once committed or rolled back, further calls fail with
/// [`ErrorKind::Other`] saying the transaction has ended.
pub struct Tx<D: Driver> {
    shared: Arc<Mutex<State<D>>>,
}

impl<D: Driver> Clone for Tx<D> {
    fn clone(&self) -> Self {
        Tx {
            shared: self.shared.clone(),
        }
    }
}

impl<D: Driver> fmt::Debug for Tx<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tx")
    }
}

struct State<D: Driver> {
    conn: Option<Pooled<D>>,
    deadline: Option<Instant>,
    base_timeout: Option<Duration>,
    savepoints: u32,
    /// The first statement that failed outside a savepoint that was rolled back.
    failed: Option<(Option<SqlState>, String)>,
    /// Whether a failure means the whole transaction may succeed when run again.
    conflict: bool,
    /// A statement failed for its node (connection lost, refused as read-only): nothing was
    /// committed, and the transaction may run again on another node (the new primary).
    node_lost: Option<Error>,
    /// A savepoint's future was dropped half-way: its statements' fate is unknown.
    poisoned: bool,
    /// The tenant whose scope statements must stay in (tenant handles), and its schema.
    tenant: Option<(Arc<str>, Option<Arc<str>>)>,
    /// The tenant's server-side scope check, run after each statement.
    check: Option<Arc<str>>,
    /// Where the transaction began (the `begin` or `transaction` call).
    origin: &'static Location<'static>,
}

/// A transaction whose every handle is dropped while its connection is still held was
/// neither committed nor rolled back: the connection's return rolls it back; say so, and
/// where it began.
impl<D: Driver> Drop for State<D> {
    fn drop(&mut self) {
        if let Some(conn) = &self.conn {
            Pooled::abandoned(conn);
            tracing::warn!(
                node = %Pooled::node(conn),
                begun_at = %self.origin,
                tenant = self.tenant.as_ref().map(|(t, _)| &**t),
                "a transaction was dropped without commit or rollback (a panic, a dropped future, or a Tx never ended): the pool rolls it back"
            );
        }
    }
}

/// The connection of a transaction, for the driver's own operations (batches, COPY,
/// streams). Errors of what runs through it are not seen by the transaction: return them
/// from the closure so it rolls back.
pub type TxConn<'a, D> = tokio::sync::MappedMutexGuard<'a, <D as Driver>::Connection>;

impl<D: Driver> Tx<D>
where
    D::Connection: Queries,
{
    /// Begins a transaction on `conn` with `opts`.
    ///
    /// # Errors
    /// The server's error for `BEGIN`.
    pub(crate) async fn begin(
        mut conn: Pooled<D>,
        opts: &TxOptions,
        deadline: Option<Instant>,
        origin: &'static Location<'static>,
    ) -> Result<Self> {
        let base_timeout = conn.query_timeout();
        match &opts.prologue {
            // Through the statement cache: after the first time, no parsing on either side.
            None => {
                conn.execute(opts.begin_sql(), &[]).await?;
            }
            // A tenant's settings in the same round trip.
            // The library's own statement: the firewall and role checks let it through.
            Some(p) => {
                let begin = format!("{}; {p}", opts.begin_sql());
                pgprovider_core::observe::internal(conn.simple_query(&begin)).await?;
            }
        }
        Pooled::in_transaction(&conn, origin);
        Ok(Tx {
            shared: Arc::new(Mutex::new(State {
                origin,
                conn: Some(conn),
                deadline,
                base_timeout,
                savepoints: 0,
                failed: None,
                conflict: false,
                node_lost: None,
                poisoned: false,
                tenant: opts.tenant.clone().map(|t| (t, opts.tenant_schema.clone())),
                check: opts.tenant_check.clone(),
            })),
        })
    }

    /// Locks the transaction for one statement `sql` (checked against the tenant's scope),
    /// bounding it by the deadline.
    async fn lock_for(&self, sql: &str) -> Result<MutexGuard<'_, State<D>>> {
        let st = self.lock().await?;
        if let Some((t, schema)) = &st.tenant {
            crate::guard::check(t, schema.as_deref(), sql)?;
        }
        Ok(st)
    }

    /// Locks the transaction, bounding the next statement by the deadline.
    async fn lock(&self) -> Result<MutexGuard<'_, State<D>>> {
        let mut st = self.shared.lock().await;
        let timeout = match st.deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(deadline_error());
                }
                Some(st.base_timeout.map_or(left, |b| b.min(left)))
            }
            None => st.base_timeout,
        };
        let conn = st.conn.as_mut().ok_or_else(ended_error)?;
        conn.set_query_timeout(timeout);
        Ok(st)
    }

    /// Runs a statement and returns its rows.
    ///
    /// # Errors
    /// As [`Queries::query`].
    pub async fn query<'p>(
        &self,
        sql: &str,
        params: &[&'p <D::Connection as Queries>::Param<'p>],
    ) -> Result<Vec<<D::Connection as Queries>::Row>> {
        let mut st = self.lock_for(sql).await?;
        let r = st.conn_mut().query(sql, params).await;
        let r = st.checked(r).await;
        st.note(r)
    }

    /// Runs a statement that returns exactly one row.
    ///
    /// # Errors
    /// As [`Queries::query_one`].
    pub async fn query_one<'p>(
        &self,
        sql: &str,
        params: &[&'p <D::Connection as Queries>::Param<'p>],
    ) -> Result<<D::Connection as Queries>::Row> {
        let mut st = self.lock_for(sql).await?;
        let r = st.conn_mut().query_one(sql, params).await;
        let r = st.checked(r).await;
        st.note(r)
    }

    /// Runs a statement that returns at most one row.
    ///
    /// # Errors
    /// As [`Queries::query_opt`].
    pub async fn query_opt<'p>(
        &self,
        sql: &str,
        params: &[&'p <D::Connection as Queries>::Param<'p>],
    ) -> Result<Option<<D::Connection as Queries>::Row>> {
        let mut st = self.lock_for(sql).await?;
        let r = st.conn_mut().query_opt(sql, params).await;
        let r = st.checked(r).await;
        st.note(r)
    }

    /// Runs a statement and reads every row as a `T`.
    ///
    /// # Errors
    /// As [`query`](Tx::query), or [`ErrorKind::Decode`].
    pub async fn query_as<'p, T>(
        &self,
        sql: &str,
        params: &[&'p <D::Connection as Queries>::Param<'p>],
    ) -> Result<Vec<T>>
    where
        T: FromRow<<D::Connection as Queries>::Row>,
    {
        crate::rows::rows_as(self.query(sql, params).await?)
    }

    /// Runs a statement and returns the number of rows it affected.
    ///
    /// # Errors
    /// As [`Queries::execute`].
    pub async fn execute<'p>(
        &self,
        sql: &str,
        params: &[&'p <D::Connection as Queries>::Param<'p>],
    ) -> Result<u64> {
        let mut st = self.lock_for(sql).await?;
        let r = st.conn_mut().execute(sql, params).await;
        let r = st.checked(r).await;
        st.note(r)
    }

    /// The connection, for the driver's own operations; see [`TxConn`].
    ///
    /// # Errors
    /// When the transaction has ended or its deadline has passed; [`ErrorKind::Rejected`]
    /// in a tenant's transaction (its statements must go through the tenant's guard).
    pub async fn conn(&self) -> Result<TxConn<'_, D>> {
        let st = self.lock().await?;
        if let Some((t, _)) = &st.tenant {
            // What runs on the bare connection would bypass the tenant's statement guard.
            return Err(Error::new(
                ErrorKind::Rejected,
                format!("tenant {t}: the transaction's connection is not handed out in a tenant transaction"),
            )
            .with_tenant(t.to_string())
            .with_hint("use tx.query / tx.execute, which are checked against the tenant's scope"));
        }
        Ok(MutexGuard::map(st, |s| {
            &mut **s.conn.as_mut().expect("checked by lock")
        }))
    }

    /// Runs `f` inside a savepoint: released when `f` returns `Ok`, rolled back to when it
    /// returns `Err` (the transaction then goes on as before the savepoint). Savepoints
    /// nest. Dropping the returned future half-way makes the transaction fail at commit.
    ///
    /// # Errors
    /// `f`'s error, or the server's for the savepoint commands.
    pub async fn savepoint<T, E, F, Fut>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(Tx<D>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        let (name, saved_failed) = {
            let mut st = self.lock().await?;
            st.savepoints += 1;
            let name = format!("pgprovider_sp_{}", st.savepoints);
            let r = st
                .conn_mut()
                .simple_query(&format!("SAVEPOINT {name}"))
                .await;
            st.note(r)?;
            (name, (st.failed.take(), st.conflict, st.node_lost.take()))
        };
        let (saved_failed, saved_conflict, saved_lost) = saved_failed;
        let mut guard = PoisonOnDrop(Some(self.shared.clone()));
        let r = f(self.clone()).await;
        let mut st = self.lock().await?;
        guard.0 = None;
        let sql = match r {
            Ok(_) => format!("RELEASE SAVEPOINT {name}"),
            Err(_) => format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"),
        };
        let done = st.conn_mut().simple_query(&sql).await;
        if r.is_err() && done.is_ok() {
            // What failed inside the savepoint is undone: its failure, a conflict or a
            // refusal it met no longer decide the transaction's fate.
            st.failed = saved_failed;
            st.conflict = saved_conflict;
            st.node_lost = saved_lost;
        } else {
            if st.failed.is_none() {
                st.failed = saved_failed;
            }
            st.conflict |= saved_conflict;
            if st.node_lost.is_none() {
                st.node_lost = saved_lost;
            }
        }
        st.note(done)?;
        r
    }

    /// Commits. Never cancelled; see the [module docs](self) for what a lost reply means.
    ///
    /// # Errors
    /// - The server's error (a deferred constraint, a serialization failure at commit):
    ///   the transaction did not commit.
    /// - A statement in the transaction failed earlier: it is rolled back instead, and the
    ///   error says which failure.
    /// - [`ErrorKind::OutcomeUnknown`] when the reply to `COMMIT` is lost.
    pub async fn commit(&self) -> Result<()> {
        let mut st = self.shared.lock().await;
        let mut conn = st.conn.take().ok_or_else(ended_error)?;
        if let Some((state, msg)) = st.failed.take() {
            let _ = conn.simple_query("ROLLBACK").await;
            let e = match state {
                Some(s) => Error::database(s, msg),
                None => Error::new(ErrorKind::Other, msg),
            };
            return Err(e
                .context("the transaction was rolled back, not committed, because a statement in it failed")
                .with_hint("return the statement's error from the transaction closure, or run it in a savepoint"));
        }
        if st.poisoned {
            let _ = conn.simple_query("ROLLBACK").await;
            return Err(Error::new(
                ErrorKind::Other,
                "the transaction was rolled back, not committed: a savepoint inside it was abandoned half-way",
            )
            .with_hint("await savepoint futures to the end"));
        }
        let wait = st.deadline.map(|d| {
            d.saturating_duration_since(Instant::now())
                .max(MIN_COMMIT_WAIT)
        });
        conn.set_query_timeout(None);
        let reply = match wait {
            Some(w) => tokio::time::timeout(w, conn.execute("COMMIT", &[])).await,
            None => Ok(conn.execute("COMMIT", &[]).await),
        };
        let node = || Pooled::node(&conn).to_string();
        match reply {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.is_connection_lost() || e.kind() == ErrorKind::Other => {
                // The cause's own words (and SQLSTATE), not its node and hint again.
                let state = e
                    .sql_state()
                    .map(|s| format!(" (SQLSTATE {s})"))
                    .unwrap_or_default();
                Err(outcome_unknown(
                    format!(
                        "the connection failed while committing: {}{state}",
                        e.message()
                    ),
                    node(),
                ))
            }
            Ok(Err(e)) => Err(e.context("COMMIT failed; the transaction was rolled back")),
            Err(_) => {
                // The connection still has COMMIT in flight: it is broken and the pool
                // closes it when `conn` drops.
                Err(outcome_unknown(
                    format!("no reply to COMMIT within {:?}", wait.unwrap_or_default()),
                    node(),
                ))
            }
        }
    }

    /// Rolls back.
    ///
    /// # Errors
    /// The server's error; the connection is then closed, which rolls back too.
    pub async fn rollback(&self) -> Result<()> {
        let mut st = self.shared.lock().await;
        let mut conn = st.conn.take().ok_or_else(ended_error)?;
        conn.set_query_timeout(st.base_timeout);
        let r = conn.simple_query("ROLLBACK").await.map(|_| ());
        if r.is_err() {
            Pooled::discard(conn);
        }
        r
    }

    /// Ends the transaction after its deadline passed: a statement still running is
    /// cancelled and the connection closed; otherwise the transaction is rolled back.
    async fn abandon(&self) {
        let mut st = self.shared.lock().await;
        if st.conn.as_ref().is_some_and(|c| c.is_broken()) {
            let conn = st.conn.take().expect("checked above");
            drop(st);
            let _ = conn.cancel_token().cancel().await;
            Pooled::discard(conn);
        } else {
            drop(st);
            // Nothing in flight: roll back (a transaction already ended is no error here).
            let _ = self.rollback().await;
        }
    }

    /// Whether the transaction lost a conflict that running it again may win.
    async fn lost_conflict(&self) -> bool {
        self.shared.lock().await.conflict
    }

    /// Whether the transaction has already ended (the closure committed or rolled it back
    /// itself).
    async fn has_ended(&self) -> bool {
        self.shared.lock().await.conn.is_none()
    }

    /// Whether [`commit`](Self::commit) will roll back instead of sending `COMMIT` (a
    /// statement failed, or a savepoint was abandoned).
    async fn commit_refused(&self) -> bool {
        let st = self.shared.lock().await;
        st.failed.is_some() || st.poisoned
    }

    /// The error of a statement that failed for its node (before `COMMIT` was sent).
    async fn lost_node(&self) -> Option<Error> {
        self.shared.lock().await.node_lost.as_ref().map(copy_of)
    }
}

/// Commit replies get at least this long, even when the deadline is (nearly) up.
const MIN_COMMIT_WAIT: Duration = Duration::from_secs(1);

impl<D: Driver> State<D> {
    fn conn_mut(&mut self) -> &mut D::Connection {
        self.conn.as_mut().expect("checked by lock")
    }

    /// In a tenant's transaction, has the server confirm after a statement that the scope
    /// is still the one the prologue set; when not, the transaction is dead (the check's
    /// failure aborted it) and its connection is closed, and the statement's rows never
    /// reach the caller.
    async fn checked<T>(&mut self, r: Result<T>) -> Result<T> {
        let (Some(check), Ok(_)) = (&self.check, &r) else {
            return r;
        };
        let check = check.clone();
        let failed = pgprovider_core::observe::internal(self.conn_mut().simple_query(&check))
            .await
            .is_err();
        if !failed {
            return r;
        }
        let conn = self.conn.take().expect("checked by lock");
        let e = pgprovider_core::scope_changed_error(&Pooled::node(&conn).to_string());
        Pooled::discard(conn);
        if let Some((t, _)) = &self.tenant {
            crate::guard::scope_breach(t, &e);
        }
        Err(e)
    }

    /// Records a failure so commit can refuse, and whether it is worth a re-run.
    fn note<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if e.is_transaction_conflict() || e.is_stale_statement() {
                self.conflict = true;
            }
            if (e.is_connection_lost() || e.is_read_only()) && self.node_lost.is_none() {
                self.node_lost = Some(copy_of(e));
            }
            // Client-side errors (row counts, decoding) leave the server's transaction
            // intact; anything the server or the network said does not.
            let server_side =
                e.sql_state().is_some() || e.is_connection_lost() || e.kind() == ErrorKind::Timeout;
            if self.failed.is_none() && server_side {
                self.failed = Some((e.sql_state(), e.message().to_owned()));
            }
        }
        r
    }
}

struct PoisonOnDrop<D: Driver>(Option<Arc<Mutex<State<D>>>>);

impl<D: Driver> Drop for PoisonOnDrop<D> {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            let locked = shared.try_lock().map(|mut st| st.poisoned = true).is_ok();
            if !locked {
                // Someone holds the lock (a statement of the abandoned savepoint was
                // dropped with it, so nobody does for long): poison it from a task.
                if let Ok(h) = tokio::runtime::Handle::try_current() {
                    h.spawn(async move { shared.lock().await.poisoned = true });
                }
            }
        }
    }
}

mod errors;

use errors::{copy_of, deadline_error, ended_error, outcome_unknown};

mod run;

pub(crate) use run::{Follow, run_transaction};

crate::client::delegate_client!(Tx, Sync);
