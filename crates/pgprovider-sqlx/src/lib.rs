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
//! | session state | tracked from the SQL text as the tokio-postgres driver does ([`pgprovider_core::kit::sql`]); reset with [`RESET_RECIPE`] on return |
//! | TLS | rustls (ring, webpki roots plus `sslrootcert`) for every `sslmode` |
//! | hooks | query, execute, simple queries and transaction control through [`ConnectParams::hooks`] |
//! | LISTEN/NOTIFY | not offered by this driver (use `sqlx::postgres::PgListener`, or the tokio-postgres driver's `Listener`) |
//!
//! What runs through [`SqlxConnection::raw`] is not tracked: taking it marks the session
//! for a reset on return.
#![deny(missing_docs)]

use futures_util::TryStreamExt;
use pgprovider_core::kit::sql::{RESET_RECIPE, SessionState, may_change_session};
use pgprovider_core::kit::{Bounded, query_timeout_error, run_bounded};
use pgprovider_core::observe::{Operation, OperationKind};
use pgprovider_core::{
    CancelToken, Column, ConnectParams, Connection, DbErrorFields, Driver, Error, ErrorKind, Host,
    Queries, Result, SimpleRow, SqlState, SslMode, Value, ValueQueries, ValueRow,
};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgDatabaseError, PgRow, PgSslMode};
use sqlx::query::Query;
use sqlx::{Connection as _, Postgres, Row as _, ValueRef as _};
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
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
        o = o.options(startup_options(opts));
    }
    o
}

/// `-c name=value` / `--name=value` pairs of a libpq `options` string.
fn startup_options(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut words = s.split_whitespace();
    while let Some(w) = words.next() {
        let pair = if w == "-c" {
            words.next()
        } else if let Some(rest) = w.strip_prefix("--") {
            Some(rest)
        } else {
            w.strip_prefix("-c")
        };
        if let Some((k, v)) = pair.and_then(|p| p.split_once('=')) {
            out.push((k.to_owned(), v.to_owned()));
        }
    }
    out
}

impl Driver for SqlxDriver {
    type Connection = SqlxConnection;

    fn name(&self) -> &'static str {
        "sqlx"
    }

    async fn connect(&self, params: &ConnectParams) -> Result<SqlxConnection> {
        let node = params.node_name();
        let opts = options(params);
        let attempt = async {
            let mut conn = sqlx::PgConnection::connect_with(&opts)
                .await
                .map_err(|e| connect_error(e, &node))?;
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut conn)
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
        Ok(SqlxConnection {
            conn,
            st: State {
                node,
                cancel: cancel_token(opts, pid),
                in_flight: false,
                cancel_at: None,
                broken: false,
                read_only: false,
                timeout: params.query_timeout,
            },
            unnamed: params.statement_cache_capacity == 0,
            session: SessionState::default(),
            default_timeout: params.query_timeout,
            hooks: params.hooks.clone(),
        })
    }
}

/// One sqlx connection, as the pool holds it. [`raw`](Self::raw) gives sqlx's own
/// connection for sqlx code.
pub struct SqlxConnection {
    conn: sqlx::PgConnection,
    st: State,
    unnamed: bool,
    session: SessionState,
    default_timeout: Option<Duration>,
    hooks: pgprovider_core::observe::Hooks,
}

/// What a running statement updates, apart from sqlx's connection (so both can be borrowed
/// at once).
struct State {
    node: String,
    cancel: CancelToken,
    in_flight: bool,
    /// When the running statement's query timeout sends its cancel.
    cancel_at: Option<std::time::Instant>,
    broken: bool,
    read_only: bool,
    timeout: Option<Duration>,
}

impl fmt::Debug for SqlxConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlxConnection")
            .field("node", &self.st.node)
            .field("in_transaction", &self.session.in_tx)
            .finish()
    }
}

impl SqlxConnection {
    /// sqlx's connection, for `sqlx::query!` and the rest of sqlx. What runs through it is
    /// not tracked, so the session is reset when the connection goes back to the pool.
    pub fn raw(&mut self) -> &mut sqlx::PgConnection {
        self.session.dirty = true;
        &mut self.conn
    }

    /// `host:port` of the node.
    pub fn node(&self) -> &str {
        &self.st.node
    }

    /// Notes what a statement did to the session and the transaction.
    fn track<T>(&mut self, sql: &str, r: &Result<T>) {
        self.session.track(sql, r.is_ok());
    }

    async fn statement(&mut self, sql: &str, params: &[&dyn SqlxParam], rows: bool) -> Result<Out> {
        self.session.before(sql);
        let unnamed = self.unnamed;
        let mut retried = false;
        loop {
            let mut q = sqlx::query(sql).persistent(!unnamed);
            for p in params {
                q = p.bind_to(q);
            }
            let c = &mut self.conn;
            let r = if rows {
                self.st
                    .run(async move { q.fetch_all(c).await.map(Out::Rows) })
                    .await
            } else {
                self.st
                    .run(async move { q.execute(c).await.map(|d| Out::Count(d.rows_affected())) })
                    .await
            };
            match r {
                Err(e) if e.is_stale_statement() && !self.session.in_tx && !retried && !unnamed => {
                    // sqlx keeps its statements by SQL text: forget them and prepare anew.
                    retried = true;
                    let _ = self.st.run(self.conn.clear_cached_statements()).await;
                }
                r => {
                    self.track(sql, &r);
                    return r;
                }
            }
        }
    }

    async fn observed(
        &mut self,
        default: OperationKind,
        sql: &str,
        params: &[&dyn SqlxParam],
        rows: bool,
    ) -> Result<Out> {
        if self.hooks.is_empty() {
            return self.statement(sql, params, rows).await;
        }
        let (hooks, node) = (self.hooks.clone(), self.st.node.clone());
        let op = Operation::new(OperationKind::of_sql(sql, default), &node).with_sql(sql);
        hooks
            .observe(&op, Out::rows, self.statement(sql, params, rows))
            .await
    }

    async fn simple(&mut self, sql: &str) -> Result<Vec<SimpleRow>> {
        let after = self.session.dirty || may_change_session(sql);
        self.session.before(sql);
        let r = self
            .st
            .run(
                sqlx::raw_sql(sql)
                    .fetch(&mut self.conn)
                    .try_collect::<Vec<PgRow>>(),
            )
            .await;
        self.track(sql, &r);
        self.session.dirty = after;
        let mut out = Vec::new();
        let mut columns: Option<Arc<[String]>> = None;
        for row in r? {
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

impl State {
    /// Awaits `fut` (a statement on sqlx's connection), bounded by the query timeout (a
    /// cancel through `pg_cancel_backend` on expiry, then the reply awaited) and tracked for
    /// cancel safety: dropped half-way, the connection stays marked in flight (broken).
    async fn run<T>(
        &mut self,
        fut: impl Future<Output = std::result::Result<T, sqlx::Error>>,
    ) -> Result<T> {
        self.in_flight = true;
        self.cancel_at = self.timeout.map(|t| std::time::Instant::now() + t);
        let r = match run_bounded(
            self.timeout,
            &self.cancel,
            fut,
            |e| matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("57014")),
        )
        .await
        {
            Bounded::Finished(r) => r,
            Bounded::TimedOut { clean } => {
                self.in_flight = !clean;
                // The cancel may still hit the next statement: not recoverable.
                self.broken |= !clean;
                let t = self.timeout.unwrap_or_default();
                return Err(query_timeout_error(t, clean, &self.node));
            }
        };
        self.in_flight = false;
        self.cancel_at = None;
        r.map_err(|e| {
            if matches!(
                e,
                sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_)
            ) {
                self.broken = true;
            }
            let e = map_error(e).with_node(self.node.clone());
            self.read_only |= e.is_read_only();
            e
        })
    }
}

/// A token asking the server to cancel what backend `pid` runs (see [`cancel`]).
fn cancel_token(opts: PgConnectOptions, pid: i32) -> CancelToken {
    CancelToken::new(move || {
        let opts = opts.clone();
        async move { cancel(&opts, pid).await }
    })
}

/// Asks the server to cancel what backend `pid` runs, from a side connection.
async fn cancel(opts: &PgConnectOptions, pid: i32) -> Result<()> {
    let attempt = async {
        let mut side = sqlx::PgConnection::connect_with(opts).await?;
        sqlx::query("SELECT pg_cancel_backend($1)")
            .bind(pid)
            .execute(&mut side)
            .await?;
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
        self.st.in_flight || self.st.broken
    }

    fn interrupted(&self) -> bool {
        // Abandoned after its query timeout's cancel may have been sent: not recoverable
        // (the cancel could hit the next statement).
        self.st.in_flight
            && !self.st.broken
            && self
                .st
                .cancel_at
                .is_none_or(|t| std::time::Instant::now() < t)
    }

    /// sqlx reads the replies of an abandoned statement itself before the next one (it
    /// counts the `ReadyForQuery` messages it still owes); `ROLLBACK` queued behind them
    /// also ends a transaction the abandoned statement may have begun.
    async fn recover(&mut self) -> Result<()> {
        let fut = sqlx::Executor::execute(&mut self.conn, sqlx::raw_sql("ROLLBACK"));
        match fut.await {
            Ok(_) => {
                self.st.in_flight = false;
                self.session.in_tx = false;
                Ok(())
            }
            Err(e) => Err(map_error(e).with_node(self.st.node.clone())),
        }
    }

    async fn ping(&mut self) -> Result<()> {
        self.st.run(self.conn.ping()).await
    }

    fn needs_reset(&self) -> bool {
        self.session.needs_reset()
    }

    async fn reset(&mut self) -> Result<()> {
        let timeout = self.st.timeout.take();
        // Through the `Executor` trait (a boxed future): `RawSql::execute`'s generic future
        // trips the compiler's `Send` check of this trait method (rust-lang/rust#96865).
        let fut = sqlx::Executor::execute(&mut self.conn, sqlx::raw_sql(RESET_RECIPE));
        let r = self.st.run(fut).await;
        self.st.timeout = timeout;
        r?;
        self.session.dirty = false;
        self.session.in_tx = false;
        Ok(())
    }

    fn recycled(&mut self) {
        self.st.timeout = self.default_timeout;
        self.st.read_only = false;
    }

    fn refused_read_only(&self) -> bool {
        self.st.read_only
    }

    async fn simple_query(&mut self, sql: &str) -> Result<Vec<SimpleRow>> {
        if self.hooks.is_empty() {
            return self.simple(sql).await;
        }
        let (hooks, node) = (self.hooks.clone(), self.st.node.clone());
        let op =
            Operation::new(OperationKind::of_sql(sql, OperationKind::Execute), &node).with_sql(sql);
        hooks
            .observe(
                &op,
                |r: &Vec<SimpleRow>| Some(r.len() as u64),
                self.simple(sql),
            )
            .await
    }

    fn cancel_token(&self) -> CancelToken {
        self.st.cancel.clone()
    }

    async fn close(self) {
        let SqlxConnection { conn, st, .. } = self;
        if st.in_flight {
            let _ = st.cancel.cancel().await;
        }
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
        self.st.timeout
    }

    fn set_query_timeout(&mut self, timeout: Option<Duration>) {
        self.st.timeout = timeout;
    }

    fn in_transaction(&self) -> bool {
        self.session.in_tx
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
    use super::{connect_error, map_error, startup_options};
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

    #[test]
    fn startup_options_are_parsed() {
        assert_eq!(
            startup_options("-c statement_timeout=5000ms --search_path=a,b -cwork_mem=4MB junk"),
            vec![
                ("statement_timeout".into(), "5000ms".into()),
                ("search_path".into(), "a,b".into()),
                ("work_mem".into(), "4MB".into()),
            ]
        );
    }
}
