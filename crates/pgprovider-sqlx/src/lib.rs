//! The sqlx PostgreSQL driver for pgprovider: a team on sqlx gets the provider's pool,
//! routing, failover, retry, hooks, tenancy and metrics, and keeps running its sqlx code on
//! a checked-out connection.
//!
//! ```no_run
//! # async fn run() -> pgprovider_core::Result<()> {
//! use pgprovider_core::Queries;
//! use pgprovider_sqlx::SqlxDriver;
//! # let pool: pgprovider::Pool<SqlxDriver> = todo!();
//! // Through the provider's API (parameters as `&dyn SqlxParam`):
//! let mut conn = pool.get().await?;
//! let rows = conn.query("SELECT $1::int4 + 1", &[&41i32]).await?;
//! let n: i32 = rows[0].get(0);
//! // Or sqlx's own API on the same pooled connection:
//! let one: (i64,) = sqlx::query_as("SELECT 1::int8").fetch_one(conn.raw()).await.unwrap();
//! # Ok(()) }
//! ```
//!
//! | what | how |
//! | --- | --- |
//! | statements | sqlx's persistent prepared statements (`statement_cache_capacity`), or unnamed ones when it is 0; a statement made stale by a schema change is re-prepared and run once more outside a transaction |
//! | cancel and query timeouts | sqlx has no cancel request: the driver remembers the backend's pid and asks the server with `pg_cancel_backend` on a short-lived side connection; the timed-out statement's reply is then awaited, so the connection stays usable |
//! | bookkeeping | the driver kit's [`Session`]: timeouts, flags, session state tracked from the SQL text, hooks, reset with [`RESET_RECIPE`](pgprovider_core::kit::sql::RESET_RECIPE) on return |
//! | behind a transaction pooler (`pooler=transaction`) | sqlx prepares and executes in two exchanges, which the pooler may hand to two server sessions: a statement outside a transaction runs in one of its own (`BEGIN` with the settings' `SET LOCAL`s, the statement, `COMMIT`); transaction control goes in one simple-protocol exchange; the backend pid is read again as each transaction begins, so a cancel reaches the statement's own backend |
//! | TLS | rustls (ring, webpki roots plus `sslrootcert`) for every `sslmode` |
//! | hooks | query, execute, simple queries and transaction control through [`ConnectParams::hooks`] |
//! | LISTEN/NOTIFY | not offered by this driver (use `sqlx::postgres::PgListener`, or the tokio-postgres driver's `Listener`) |
//!
//! What runs through [`SqlxConnection::raw`] is not tracked: taking it marks the session
//! for a reset on return.
#![deny(missing_docs)]

use futures_util::TryStreamExt;
use pgprovider_core::kit::pooler::is_settings_row;
use pgprovider_core::kit::pooler::startup_settings;
use pgprovider_core::kit::sql::{may_change_session, transaction_effect};
use pgprovider_core::kit::{DriverErrors, Session, pooler_startup_refusal, session_settings};
use pgprovider_core::observe::OperationKind;
use pgprovider_core::{
    CancelToken, Column, ConnectParams, Connection, DbErrorFields, Driver, Error, ErrorKind, Host,
    PoolerMode, Queries, Result, SimpleRow, SqlState, SslMode, Value, ValueQueries, ValueRow,
};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgDatabaseError, PgRow, PgSslMode};
use sqlx::query::Query;
use sqlx::{Connection as _, Postgres, Row as _, ValueRef as _};
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering::Relaxed};
use std::time::Duration;

/// The driver; its registry name is `sqlx`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SqlxDriver;

impl SqlxDriver {
    /// The driver.
    pub fn new() -> Self {
        SqlxDriver
    }
}

/// The sqlx options for `p`.
fn options(p: &ConnectParams) -> PgConnectOptions {
    let mut o = PgConnectOptions::new_without_pgpass()
        .port(p.port)
        .username(&p.user)
        .database(&p.dbname)
        .statement_cache_capacity(p.statement_cache_capacity.max(1));
    o = match &p.host {
        Host::Tcp(h) => o.host(h),
        Host::Unix(dir) => o.socket(dir),
    };
    if let Some(pw) = &p.password {
        o = o.password(pw.expose());
    }
    if let Some(app) = &p.application_name {
        o = o.application_name(app);
    }
    let mode = match p.tls.mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Allow => PgSslMode::Allow,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require => PgSslMode::Require,
        SslMode::VerifyCa => PgSslMode::VerifyCa,
        SslMode::VerifyFull => PgSslMode::VerifyFull,
        _ => PgSslMode::Prefer,
    };
    o = o.ssl_mode(mode);
    if let Some(root) = &p.tls.root_cert {
        o = o.ssl_root_cert(root);
    }
    if let Some(cert) = &p.tls.client_cert {
        o = o.ssl_client_cert(cert);
    }
    if let Some(key) = &p.tls.client_key {
        o = o.ssl_client_key(key);
    }
    if let Some(opts) = &p.options {
        // Word by word: one that is not a setting is skipped, not the whole string.
        let pairs = opts
            .split_whitespace()
            .scan(None::<&str>, |flag, w| {
                Some(match (flag.take(), w) {
                    (None, "-c") => {
                        *flag = Some(w);
                        None
                    }
                    (Some(f), w) => startup_settings(&format!("{f} {w}")).ok(),
                    (None, w) => startup_settings(w).ok(),
                })
            })
            .flatten()
            .flatten();
        o = o.options(pairs);
    }
    if p.pooler != PoolerMode::None {
        // Poolers refuse startup parameters they do not know (PgBouncer by default).
        o = o.extra_float_digits(None);
    }
    o
}

/// The backend pid through the simple protocol (a prepared statement would be named, and
/// survive on a pooler's server session), after `prologue` (settings) in the same exchange.
async fn backend_pid(conn: &mut sqlx::PgConnection, prologue: &str) -> sqlx::Result<i32> {
    let sql = if prologue.is_empty() {
        "SELECT pg_backend_pid()::text".to_owned()
    } else {
        format!("{prologue}; SELECT pg_backend_pid()::text")
    };
    let rows: Vec<PgRow> = sqlx::raw_sql(&sql).fetch(conn).try_collect().await?;
    let pid = rows
        .last()
        .and_then(|r| r.try_get_raw(0).ok()?.as_str().ok()?.parse().ok());
    pid.ok_or_else(|| sqlx::Error::Protocol("pg_backend_pid() returned no row".into()))
}

impl Driver for SqlxDriver {
    type Connection = SqlxConnection;

    fn name(&self) -> &'static str {
        "sqlx"
    }

    async fn connect(&self, params: &ConnectParams) -> Result<SqlxConnection> {
        let node = params.node_name();
        let opts = options(params);
        let setup = session_settings(params).unwrap_or_default();
        let attempt = async {
            let mut conn = sqlx::PgConnection::connect_with(&opts)
                .await
                .map_err(|e| pooler_startup_refusal(connect_error(e, &node), params.pooler))?;
            let pid = backend_pid(&mut conn, &setup)
                .await
                .map_err(|e| map_error(e).with_node(node.clone()))?;
            Ok::<_, Error>((conn, pid))
        };
        let (conn, pid) = match params.connect_timeout {
            Some(t) => tokio::time::timeout(t, attempt).await.map_err(|_| {
                Error::new(
                    ErrorKind::Connect,
                    format!("cannot connect: no answer within {t:?}"),
                )
                .with_node(node.clone())
                .with_hint("check that the server is running and reachable at this address")
            })??,
            None => attempt.await?,
        };
        let pid = Arc::new(AtomicI32::new(pid));
        Ok(SqlxConnection {
            conn,
            s: Session::new(params, cancel_token(opts, pid.clone())),
            unnamed: params.statement_cache_capacity == 0
                || params.pooler == PoolerMode::Transaction,
            pid,
        })
    }
}

/// One sqlx connection, as the pool holds it. [`raw`](Self::raw) gives sqlx's own
/// connection for sqlx code.
pub struct SqlxConnection {
    conn: sqlx::PgConnection,
    s: Session,
    unnamed: bool,
    /// The backend the cancel token signals: behind a transaction pooler, the one serving
    /// the current transaction (read again as each one begins).
    pid: Arc<AtomicI32>,
}

impl fmt::Debug for SqlxConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlxConnection")
            .field("node", &self.s.node())
            .field("in_transaction", &self.s.in_transaction())
            .finish()
    }
}

/// How sqlx's errors are judged ([`DriverErrors`]).
struct SqlxErrors;

impl DriverErrors for SqlxErrors {
    type Error = sqlx::Error;
    fn is_cancel_reply(&self, e: &sqlx::Error) -> bool {
        matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("57014"))
    }
    fn breaks_connection(&self, e: &sqlx::Error) -> bool {
        matches!(
            e,
            sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_)
        )
    }
    fn convert(&self, e: sqlx::Error) -> Error {
        map_error(e)
    }
}

impl SqlxConnection {
    /// sqlx's connection, for `sqlx::query!` and the rest of sqlx. What runs through it is
    /// not tracked, so the session is reset when the connection goes back to the pool.
    ///
    /// Behind a transaction pooler (`pooler=transaction`), run sqlx code inside a
    /// transaction: sqlx prepares and executes in two exchanges, which the pooler may hand
    /// to two server sessions. The named statements it keeps are closed before the
    /// transaction ends (when it ends through this driver).
    pub fn raw(&mut self) -> &mut sqlx::PgConnection {
        self.s.untracked();
        &mut self.conn
    }

    /// `host:port` of the node.
    pub fn node(&self) -> &str {
        self.s.node()
    }

    /// Behind a transaction pooler, once a transaction began (`begin` opens it, or `""`
    /// when it is already open, then with the settings unless `settings_applied`): learns
    /// which server backend serves it, for the cancel token.
    async fn serve_transaction(&mut self, begin: &str, settings_applied: bool) -> Result<()> {
        let sql = match (begin, self.s.local_settings()) {
            ("", Some(l)) if !settings_applied => l.to_owned(),
            ("", _) => String::new(),
            (b, _) => b.to_owned(),
        };
        let r = backend_pid(&mut self.conn, &sql);
        let pid = self.s.run(&SqlxErrors, r).await?;
        self.pid.store(pid, Relaxed);
        Ok(())
    }

    /// Behind a transaction pooler, before a statement ends the transaction: closes the
    /// named statements sqlx may hold (its type lookups, code run through [`raw`](Self::raw)),
    /// on the server session that has them.
    async fn close_named(&mut self) -> Result<()> {
        if self.s.pooler() != PoolerMode::Transaction || self.conn.cached_statements_size() == 0 {
            return Ok(());
        }
        let fut = self.conn.clear_cached_statements();
        self.s.run(&SqlxErrors, fut).await
    }

    /// Behind a transaction pooler, once no transaction is open: the backend that served
    /// the last one may serve another client now, so the cancel token forgets it.
    fn transaction_over(&self) {
        if self.s.pooler() == PoolerMode::Transaction && !self.s.in_transaction() {
            self.pid.store(0, Relaxed);
        }
    }

    async fn statement(&mut self, sql: &str, params: &[&dyn SqlxParam], rows: bool) -> Result<Out> {
        self.s.before(sql)?;
        if params.is_empty() && self.s.alone(sql) {
            // Transaction control (and what may not run in a transaction) in one exchange:
            // a prepared BEGIN could be parsed on one server session and run on another.
            if transaction_effect(sql) == Some(false) {
                self.close_named().await?;
            }
            let was_in_tx = self.s.in_transaction();
            let fut = sqlx::Executor::execute(&mut self.conn, sqlx::raw_sql(sql));
            let r = self.s.run(&SqlxErrors, fut).await;
            self.s.track(sql, r.is_ok());
            self.transaction_over();
            let n = r?.rows_affected();
            if !was_in_tx && self.s.in_transaction() {
                self.serve_transaction("", false).await?;
            }
            return Ok(if rows {
                Out::Rows(Vec::new())
            } else {
                Out::Count(n)
            });
        }
        // sqlx prepares and executes in two exchanges: behind a transaction pooler, both
        // in one transaction.
        let wrap = self.s.needs_wrap(false) && transaction_effect(sql).is_none();
        if wrap {
            let begin = self.s.wrap_begin().to_owned();
            let begun = self.serve_transaction(&begin, true).await;
            // Failed part-way, the transaction may be open (aborted): reset on return.
            self.s.track(&begin, begun.is_ok());
            begun?;
        }
        let unnamed = self.unnamed;
        let mut retried = false;
        let r = loop {
            let mut q = sqlx::query(sql).persistent(!unnamed);
            for p in params {
                q = p.bind_to(q);
            }
            let c = &mut self.conn;
            let r = if rows {
                let fut = async move { q.fetch_all(c).await.map(Out::Rows) };
                self.s.run(&SqlxErrors, fut).await
            } else {
                let fut = async move { q.execute(c).await.map(|d| Out::Count(d.rows_affected())) };
                self.s.run(&SqlxErrors, fut).await
            };
            match r {
                Err(e)
                    if e.is_stale_statement()
                        && !self.s.in_transaction()
                        && !retried
                        && !unnamed =>
                {
                    // sqlx keeps its statements by SQL text: forget them and prepare anew.
                    retried = true;
                    let fut = self.conn.clear_cached_statements();
                    let _ = self.s.run(&SqlxErrors, fut).await;
                }
                r => break r,
            }
        };
        self.s.track(sql, r.is_ok());
        if wrap {
            let closed = self.close_named().await;
            let end = if r.is_ok() && closed.is_ok() {
                "COMMIT"
            } else {
                "ROLLBACK"
            };
            let fut = sqlx::Executor::execute(&mut self.conn, sqlx::raw_sql(end));
            let done = self.s.run(&SqlxErrors, fut).await;
            self.s.track(end, done.is_ok());
            self.transaction_over();
            closed?;
            done?;
        }
        r
    }

    async fn observed(
        &mut self,
        default: OperationKind,
        sql: &str,
        params: &[&dyn SqlxParam],
        rows: bool,
    ) -> Result<Out> {
        let observer = self.s.observer();
        observer
            .run(default, sql, Out::rows, self.statement(sql, params, rows))
            .await
    }

    async fn simple(&mut self, sql: &str) -> Result<Vec<SimpleRow>> {
        self.s.before(sql)?;
        if self.s.pooler() == PoolerMode::Transaction && transaction_effect(sql) == Some(false) {
            self.close_named().await?;
        }
        let after = self.s.dirty() || may_change_session(sql);
        let was_in_tx = self.s.in_transaction();
        // Behind a transaction pooler, the settings right after BEGIN, before the caller's.
        let with_settings = self.s.begin_with_settings(sql);
        let text = with_settings.as_deref().unwrap_or(sql);
        let fut = sqlx::raw_sql(text)
            .fetch(&mut self.conn)
            .try_collect::<Vec<PgRow>>();
        let r = self.s.run(&SqlxErrors, fut).await;
        self.s.track(sql, r.is_ok());
        self.s.set_dirty(after);
        self.transaction_over();
        let rows = r?;
        if self.s.pooler() == PoolerMode::Transaction && !was_in_tx && self.s.in_transaction() {
            self.serve_transaction("", with_settings.is_some()).await?;
        }
        let mut out = Vec::new();
        let mut columns: Option<Arc<[String]>> = None;
        for row in rows {
            if with_settings.is_some()
                && is_settings_row(row.columns().iter().map(sqlx::Column::name))
            {
                continue;
            }
            let names: Arc<[String]> = match &columns {
                Some(c)
                    if c.len() == row.len()
                        && row
                            .columns()
                            .iter()
                            .zip(c.iter())
                            .all(|(a, b)| sqlx::Column::name(a) == b) =>
                {
                    c.clone()
                }
                _ => {
                    let c: Arc<[String]> = row
                        .columns()
                        .iter()
                        .map(|c| sqlx::Column::name(c).to_owned())
                        .collect();
                    columns = Some(c.clone());
                    c
                }
            };
            let values = (0..row.len())
                .map(|i| {
                    let v = row.try_get_raw(i).ok()?;
                    if v.is_null() {
                        None
                    } else {
                        v.as_str().ok().map(str::to_owned)
                    }
                })
                .collect();
            out.push(SimpleRow::new(names, values));
        }
        Ok(out)
    }
}

/// A token asking the server to cancel what the backend in `pid` runs (see [`cancel`]).
fn cancel_token(opts: PgConnectOptions, pid: Arc<AtomicI32>) -> CancelToken {
    CancelToken::new(move || {
        let opts = opts.clone();
        let pid = pid.load(Relaxed);
        async move { cancel(&opts, pid).await }
    })
}

/// Asks the server to cancel what backend `pid` runs, from a side connection (`0`: no
/// backend is known to run anything of this connection's).
async fn cancel(opts: &PgConnectOptions, pid: i32) -> Result<()> {
    if pid == 0 {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "no backend to cancel: behind a transaction pooler, a statement is cancelled only inside a transaction",
        )
        .with_hint("run long statements inside a transaction, or set statement_timeout in the URL"));
    }
    let attempt = async {
        let mut side = sqlx::PgConnection::connect_with(opts).await?;
        let sql = format!("SELECT pg_cancel_backend({pid})");
        sqlx::Executor::execute(&mut side, sqlx::raw_sql(&sql)).await?;
        side.close().await
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .map_err(|_| Error::new(ErrorKind::Timeout, "the cancel request got no answer"))?
        .map_err(map_error)
}

enum Out {
    Rows(Vec<PgRow>),
    Count(u64),
}

impl Out {
    fn rows(&self) -> Option<u64> {
        match self {
            Out::Rows(r) => Some(r.len() as u64),
            Out::Count(n) => Some(*n),
        }
    }
}

impl Connection for SqlxConnection {
    fn is_broken(&self) -> bool {
        self.s.is_broken()
    }

    fn interrupted(&self) -> bool {
        self.s.interrupted()
    }

    /// sqlx reads the replies of an abandoned statement itself before the next one (it
    /// counts the `ReadyForQuery` messages it still owes); `ROLLBACK` queued behind them
    /// also ends a transaction the abandoned statement may have begun.
    async fn recover(&mut self) -> Result<()> {
        // Behind a transaction pooler, sqlx's named statements go before the transaction.
        self.close_named().await?;
        let fut = sqlx::Executor::execute(&mut self.conn, sqlx::raw_sql("ROLLBACK"));
        match fut.await {
            Ok(_) => {
                self.s.recovered();
                self.transaction_over();
                Ok(())
            }
            Err(e) => Err(map_error(e).with_node(self.s.node())),
        }
    }

    async fn ping(&mut self) -> Result<()> {
        self.s.run(&SqlxErrors, self.conn.ping()).await
    }

    fn needs_reset(&self) -> bool {
        self.s.needs_reset()
    }

    async fn reset(&mut self) -> Result<()> {
        self.close_named().await?;
        let timeout = self.s.take_timeout();
        // Through the `Executor` trait (a boxed future): `RawSql::execute`'s generic future
        // trips the compiler's `Send` check of this trait method (rust-lang/rust#96865).
        let sql = self.s.reset_sql();
        let fut = sqlx::Executor::execute(&mut self.conn, sqlx::raw_sql(&sql));
        let r = self.s.run(&SqlxErrors, fut).await;
        self.s.reset_done(timeout, r.is_ok());
        self.transaction_over();
        r.map(|_| ())
    }

    fn recycled(&mut self) {
        self.s.recycled();
    }

    fn refused_read_only(&self) -> bool {
        self.s.refused_read_only()
    }

    async fn simple_query(&mut self, sql: &str) -> Result<Vec<SimpleRow>> {
        let observer = self.s.observer();
        let rows = |r: &Vec<SimpleRow>| Some(r.len() as u64);
        observer
            .run(OperationKind::Execute, sql, rows, self.simple(sql))
            .await
    }

    fn cancel_token(&self) -> CancelToken {
        self.s.cancel_token()
    }

    async fn close(self) {
        let SqlxConnection { conn, s, .. } = self;
        s.cancel_before_close().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
    }
}

/// A parameter: any value sqlx can encode for PostgreSQL (`&1i32`, `&"text"`, `&Some(2.5)`,
/// …), taken by reference.
pub trait SqlxParam: Sync {
    /// Binds the value to `q`.
    fn bind_to<'q>(
        &'q self,
        q: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments>;
}

impl<T> SqlxParam for T
where
    T: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Sync,
{
    fn bind_to<'q>(
        &'q self,
        q: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        q.bind(self)
    }
}

/// A result row: sqlx's [`PgRow`] (it derefs to it), readable through pgprovider's
/// [`Column`] and [`FromRow`](pgprovider_core::FromRow).
pub struct SqlxRow(PgRow);

impl SqlxRow {
    /// The value of column `idx`.
    ///
    /// # Panics
    /// When there is no such column or it is not a `T` (see [`Column::column`] for a
    /// `Result`).
    pub fn get<T>(&self, idx: usize) -> T
    where
        T: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
    {
        self.0.get(idx)
    }

    /// sqlx's row.
    pub fn into_inner(self) -> PgRow {
        self.0
    }
}

impl Deref for SqlxRow {
    type Target = PgRow;
    fn deref(&self) -> &PgRow {
        &self.0
    }
}

impl fmt::Debug for SqlxRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlxRow")
            .field("columns", &self.0.len())
            .finish()
    }
}

impl<T> Column<T> for SqlxRow
where
    T: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    fn column(&self, idx: usize) -> Result<T> {
        self.0.try_get(idx).map_err(decode_error)
    }
    fn column_named(&self, name: &str) -> Result<T> {
        self.0.try_get(name).map_err(decode_error)
    }
}

fn decode_error(e: sqlx::Error) -> Error {
    Error::new(ErrorKind::Decode, format!("cannot read the column: {e}")).with_source(e)
}

impl Queries for SqlxConnection {
    type Row = SqlxRow;
    type Param<'a> = dyn SqlxParam + 'a;
    type Pipeline = pgprovider_core::NoPipeline;

    async fn query<'p>(
        &mut self,
        sql: &str,
        params: &[&'p (dyn SqlxParam + 'p)],
    ) -> Result<Vec<SqlxRow>> {
        let params: Vec<&dyn SqlxParam> = params.iter().map(|p| *p as &dyn SqlxParam).collect();
        match self
            .observed(OperationKind::Query, sql, &params, true)
            .await?
        {
            Out::Rows(r) => Ok(r.into_iter().map(SqlxRow).collect()),
            Out::Count(_) => unreachable!("a query returns rows"),
        }
    }

    async fn execute<'p>(&mut self, sql: &str, params: &[&'p (dyn SqlxParam + 'p)]) -> Result<u64> {
        match self
            .observed(OperationKind::Execute, sql, params, false)
            .await?
        {
            Out::Count(n) => Ok(n),
            Out::Rows(_) => unreachable!("an execute returns a count"),
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

/// Converts a sqlx error: server errors keep their SQLSTATE and fields; I/O failures are
/// [`ErrorKind::ConnectionLost`].
pub fn map_error(e: sqlx::Error) -> Error {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let state = SqlState::new(&code).unwrap_or(SqlState::new("XX000").expect("valid"));
            let mut fields = DbErrorFields::default();
            if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
                fields.detail = pg.detail().map(str::to_owned);
                fields.hint = pg.hint().map(str::to_owned);
                fields.schema = pg.schema().map(str::to_owned);
                fields.table = pg.table().map(str::to_owned);
                fields.column = pg.column().map(str::to_owned);
                fields.constraint = pg.constraint().map(str::to_owned);
                fields.severity = Some(format!("{:?}", pg.severity()).to_uppercase());
            }
            let msg = db.message().to_owned();
            Error::database(state, msg).with_db_fields(fields)
        }
        sqlx::Error::Io(io) => Error::new(
            ErrorKind::ConnectionLost,
            format!("the connection is lost: {io}"),
        )
        .with_hint(
            "the server closed the connection or the network dropped it; retry on a new connection",
        )
        .with_source(io),
        sqlx::Error::Tls(t) => Error::new(ErrorKind::Tls, format!("TLS failed: {t}")).with_hint(
            "check sslrootcert, the server's certificate and the host name it was issued for",
        ),
        sqlx::Error::RowNotFound => Error::new(ErrorKind::RowCount, "no row was returned"),
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::Decode(_) => Error::new(ErrorKind::Decode, e.to_string()).with_source(e),
        sqlx::Error::Configuration(c) => Error::new(
            ErrorKind::Config,
            format!("invalid connection settings: {c}"),
        ),
        other => Error::new(ErrorKind::Other, other.to_string()).with_source(other),
    }
}

/// Converts an error met while connecting to `node`.
fn connect_error(e: sqlx::Error, node: &str) -> Error {
    let err = map_error(e);
    match err.kind() {
        ErrorKind::Database | ErrorKind::Auth => {
            let hint = if err.kind() == ErrorKind::Auth {
                "check the user name and password"
            } else if err.sql_state() == Some(SqlState::INVALID_CATALOG_NAME) {
                "check the database name, or create the database"
            } else {
                "see the server's message"
            };
            err.with_node(node).with_hint(hint)
        }
        ErrorKind::Tls => err.with_node(node),
        _ => Error::new(
            ErrorKind::Connect,
            format!("cannot connect: {}", err.message()),
        )
        .with_node(node)
        .with_hint("check that the server is running and reachable at this address"),
    }
}

/// A driver-neutral [`Value`] as a sqlx parameter (`int8`, `float8`, `bool`, `text`,
/// `bytea`; NULL of an unspecified type, which the server infers).
struct SqlxValue<'a>(&'a Value);

/// A NULL whose type is left for the server to infer (OID 0).
struct UnspecifiedNull;

impl sqlx::Type<Postgres> for UnspecifiedNull {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        sqlx::postgres::PgTypeInfo::with_oid(sqlx::postgres::types::Oid(0))
    }
    fn compatible(_: &sqlx::postgres::PgTypeInfo) -> bool {
        true
    }
}

impl sqlx::Encode<'_, Postgres> for UnspecifiedNull {
    fn encode_by_ref(
        &self,
        _: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> std::result::Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Ok(sqlx::encode::IsNull::Yes)
    }
}

impl SqlxParam for SqlxValue<'_> {
    fn bind_to<'q>(
        &'q self,
        q: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        match self.0 {
            Value::Int(i) => q.bind(*i),
            Value::Float(f) => q.bind(*f),
            Value::Bool(b) => q.bind(*b),
            Value::Text(s) => q.bind(s.as_str()),
            Value::Bytes(b) => q.bind(b.as_slice()),
            _ => q.bind(UnspecifiedNull),
        }
    }
}

impl ValueQueries for SqlxConnection {
    async fn query_values(&mut self, sql: &str, params: &[Value]) -> Result<Vec<ValueRow>> {
        use sqlx::Column as _;
        let wrapped: Vec<SqlxValue<'_>> = params.iter().map(SqlxValue).collect();
        let refs: Vec<&dyn SqlxParam> = wrapped.iter().map(|v| v as &dyn SqlxParam).collect();
        let rows = self.query(sql, &refs).await?;
        let Some(first) = rows.first() else {
            return Ok(Vec::new());
        };
        let names: Arc<[String]> = first
            .0
            .columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        rows.iter()
            .map(|r| ValueRow::read(r, names.clone()))
            .collect()
    }

    async fn execute_values(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        let wrapped: Vec<SqlxValue<'_>> = params.iter().map(SqlxValue).collect();
        let refs: Vec<&dyn SqlxParam> = wrapped.iter().map(|v| v as &dyn SqlxParam).collect();
        self.execute(sql, &refs).await
    }
}

#[cfg(test)]
mod tests {
    use super::{connect_error, map_error};
    use pgprovider_core::ErrorKind;

    #[test]
    fn sqlx_errors_map_to_kinds_people_can_act_on() {
        let io = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let cases: Vec<(sqlx::Error, ErrorKind, &str)> = vec![
            (
                sqlx::Error::Io(io()),
                ErrorKind::ConnectionLost,
                "reset by peer",
            ),
            (
                sqlx::Error::Tls("bad certificate".into()),
                ErrorKind::Tls,
                "bad certificate",
            ),
            (sqlx::Error::RowNotFound, ErrorKind::RowCount, "no row"),
            (
                sqlx::Error::ColumnNotFound("x".into()),
                ErrorKind::Decode,
                "x",
            ),
            (
                sqlx::Error::Configuration("bad url".into()),
                ErrorKind::Config,
                "bad url",
            ),
            (
                sqlx::Error::Protocol("unexpected message".into()),
                ErrorKind::Other,
                "unexpected",
            ),
        ];
        for (e, kind, needle) in cases {
            let m = map_error(e);
            assert_eq!(m.kind(), kind, "{m}");
            assert!(m.to_string().contains(needle), "{m}");
        }
        // While connecting, anything not the server's or TLS is a connect error with a hint.
        let c = connect_error(sqlx::Error::Io(io()), "db:5432");
        assert_eq!(c.kind(), ErrorKind::Connect);
        assert_eq!(c.node(), Some("db:5432"));
        assert!(c.to_string().contains("reachable"), "{c}");
        let t = connect_error(sqlx::Error::Tls("handshake".into()), "db:5432");
        assert_eq!((t.kind(), t.node()), (ErrorKind::Tls, Some("db:5432")));
    }
}
