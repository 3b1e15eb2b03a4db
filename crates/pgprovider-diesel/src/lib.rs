//! diesel-async support for pgprovider: a diesel team gets pooled, routed, observed
//! [`AsyncPgConnection`]s from the provider.
//!
//! Built on the tokio-postgres driver, the cleanest path: diesel-async's
//! `AsyncPgConnection` runs on a tokio-postgres client, so connections are opened by
//! `pgprovider_tokio_postgres::connect_client` (same TLS, timeouts and startup options)
//! and handed to diesel-async. The provider's own needs (session tracking and reset,
//! timeouts with a server-side cancel, hooks, typed queries for its generic layers) are met
//! on top of diesel-async's API.
//!
//! ```no_run
//! # async fn run() -> pgprovider_core::Result<()> {
//! use diesel_async::RunQueryDsl;
//! use pgprovider_diesel::DieselDriver;
//! # let pool: pgprovider::Pool<DieselDriver> = todo!();
//! let mut conn = pool.get().await?;
//! // diesel's own API on the pooled connection:
//! diesel::sql_query("CREATE TEMPORARY TABLE t (id int)")
//!     .execute(conn.diesel())
//!     .await
//!     .unwrap();
//! // or the provider's (what its transactions, tenancy and migrations use):
//! use pgprovider_core::Queries;
//! let rows = conn.query("SELECT $1::int4 * 2", &[&21i32]).await?;
//! let n: i32 = pgprovider_core::Column::column(&rows[0], 0)?;
//! # Ok(()) }
//! ```
//!
//! | what | how |
//! | --- | --- |
//! | statements | `diesel::sql_query` with binds: diesel-async does not cache them (each is parsed by the server), so nothing goes stale; behind a transaction pooler each one outside a transaction runs in one of its own (diesel-async prepares and executes in two exchanges), and diesel's own statement cache is off |
//! | SQLSTATE | read off the protocol stream ([`connect_client_with_error_codes`](pgprovider_tokio_postgres::connect_client_with_error_codes)): diesel-async keeps only the message, and a message is never guessed from |
//! | parameters | `&dyn DieselParam`: `i16`, `i32`, `i64`, `f32`, `f64`, `bool`, `String`, `&str`, `Vec<u8>`, and `Option`s of them |
//! | rows | [`DieselRow`], read through pgprovider's `Column` for the same types |
//! | simple queries | row-returning single statements (`SELECT`, `WITH`, `VALUES`, `TABLE`) run wrapped in `row_to_json` and come back as text (booleans as `t`/`f`); other statements run as a batch and return no rows |
//! | cancel and timeouts | tokio-postgres cancel requests; a timed-out statement's reply is awaited so the connection stays usable |
//! | LISTEN/NOTIFY | not offered (diesel-async has its own `notifications_stream`) |
//!
//! What runs through [`DieselConnection::diesel`] is not tracked: taking it marks the
//! session for a reset on return.
#![deny(missing_docs)]

use diesel::connection::CacheSize;
use diesel::pg::Pg;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::row::{Field, Row as _};
use diesel::sql_types::{BigInt, Binary, Bool, Double, Float, Integer, Nullable, SmallInt, Text};
use diesel_async::{
    AsyncConnection, AsyncConnectionCore, AsyncPgConnection, SimpleAsyncConnection,
};
use futures_util::TryStreamExt;
use pgprovider_core::kit::sql::{may_change_session, transaction_effect};
use pgprovider_core::kit::{DriverErrors, Session};
use pgprovider_core::observe::OperationKind;
use pgprovider_core::{
    CancelToken, Column, ConnectParams, Connection, Driver, Error, ErrorKind, PoolerMode, Queries,
    Result, SimpleRow, SqlState, Value, ValueQueries, ValueRow,
};
use pgprovider_tokio_postgres::LastError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The driver; its registry name is `diesel`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DieselDriver;

impl DieselDriver {
    /// The driver.
    pub fn new() -> Self {
        DieselDriver
    }
}

impl Driver for DieselDriver {
    type Connection = DieselConnection;

    fn name(&self) -> &'static str {
        "diesel"
    }

    async fn connect(&self, params: &ConnectParams) -> Result<DieselConnection> {
        let node = params.node_name();
        let (client, cancel, codes) =
            pgprovider_tokio_postgres::connect_client_with_error_codes(params).await?;
        let behind_transaction_pooler = params.pooler == PoolerMode::Transaction;
        let failed = |e: &dyn fmt::Display| {
            Error::new(
                ErrorKind::Connect,
                format!("diesel-async could not set up the connection: {e}"),
            )
            .with_node(node.clone())
        };
        if behind_transaction_pooler {
            // diesel-async's setup sets the time zone and encoding for the session with
            // prepared (named) statements: behind a transaction pooler they would land on
            // server sessions other clients use. In a transaction that is rolled back, the
            // settings are undone and the statements closed on the session that made them.
            client
                .batch_execute("BEGIN")
                .await
                .map_err(|e| failed(&e))?;
        }
        let mut conn = AsyncPgConnection::try_from(client)
            .await
            .map_err(|e| failed(&e))?;
        if behind_transaction_pooler {
            conn.batch_execute("ROLLBACK")
                .await
                .map_err(|e| failed(&e))?;
            // diesel's cached statements are named: they would outlive the transaction on
            // a server session the pooler hands to others.
            conn.set_prepared_statement_cache_size(CacheSize::Disabled);
        }
        Ok(DieselConnection {
            conn,
            s: Session::new(params, cancel),
            errors: DieselErrors(codes),
        })
    }
}

/// One diesel-async connection, as the pool holds it; [`diesel`](Self::diesel) gives it to
/// diesel code.
pub struct DieselConnection {
    conn: AsyncPgConnection,
    s: Session,
    errors: DieselErrors,
}

impl fmt::Debug for DieselConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DieselConnection")
            .field("node", &self.s.node())
            .field("in_transaction", &self.s.in_transaction())
            .finish()
    }
}

/// How diesel's errors are judged ([`DriverErrors`]): diesel-async keeps an error's
/// message but not its SQLSTATE, so the code comes from the protocol stream
/// ([`LastError`]): the `ErrorResponse` of a failed statement is read (and its code kept)
/// before diesel-async hands the error over, and statements run one at a time.
struct DieselErrors(LastError);

impl DieselErrors {
    /// The server's code for `e`, when the server sent it.
    fn code(&self, e: &diesel::result::Error) -> Option<String> {
        use diesel::result::{DatabaseErrorKind as K, Error as D};
        match e {
            D::DatabaseError(K::ClosedConnection | K::UnableToSendCommand, _) => None,
            D::DatabaseError(..) => self.0.code(),
            _ => None,
        }
    }
}

impl DriverErrors for DieselErrors {
    type Error = diesel::result::Error;
    fn is_cancel_reply(&self, e: &diesel::result::Error) -> bool {
        self.code(e).as_deref() == Some("57014")
    }
    fn breaks_connection(&self, e: &diesel::result::Error) -> bool {
        use diesel::result::{DatabaseErrorKind as K, Error as D};
        matches!(
            e,
            D::DatabaseError(K::ClosedConnection | K::UnableToSendCommand, _)
        )
    }
    fn convert(&self, e: diesel::result::Error) -> Error {
        let code = self.code(&e);
        map_error_with(e, code)
    }
}

impl DieselConnection {
    /// diesel-async's connection, for diesel's query builder and `RunQueryDsl`. What runs
    /// through it is not tracked, so the session is reset when it goes back to the pool.
    ///
    /// Behind a transaction pooler (`pooler=transaction`), run diesel code inside a
    /// transaction: diesel prepares and executes a statement in two exchanges, which the
    /// pooler may otherwise hand to two server sessions.
    pub fn diesel(&mut self) -> &mut AsyncPgConnection {
        self.s.untracked();
        &mut self.conn
    }

    /// `host:port` of the node.
    pub fn node(&self) -> &str {
        self.s.node()
    }

    /// Runs `sql` as a simple query (one exchange) and notes what it did; behind a
    /// transaction pooler, applies the settings to a transaction it opened.
    async fn batch(&mut self, sql: &str) -> Result<()> {
        let was_in_tx = self.s.in_transaction();
        // Behind a transaction pooler, the settings right after BEGIN, before the caller's.
        let with_settings = self.s.begin_with_settings(sql);
        let text = with_settings.as_deref().unwrap_or(sql);
        let r = self
            .s
            .run(&self.errors, self.conn.batch_execute(text))
            .await;
        self.s.track(sql, r.is_ok());
        r?;
        if with_settings.is_none() && self.s.opened_transaction(was_in_tx) {
            let local = self.s.local_settings().unwrap_or_default().to_owned();
            self.s
                .run(&self.errors, self.conn.batch_execute(&local))
                .await?;
        }
        Ok(())
    }

    async fn statement(
        &mut self,
        sql: &str,
        params: &[&(dyn DieselParam + '_)],
        rows: bool,
    ) -> Result<Out> {
        self.s.before(sql)?;
        if params.is_empty() && self.s.alone(sql) {
            // Transaction control (and what may not run in a transaction) in one exchange.
            Box::pin(self.batch(sql)).await?;
            return Ok(if rows {
                Out::Rows(Vec::new())
            } else {
                Out::Count(0)
            });
        }
        // diesel prepares and executes in two exchanges: behind a transaction pooler, both
        // in one transaction.
        let wrap = self.s.needs_wrap(false) && transaction_effect(sql).is_none();
        if wrap {
            Box::pin(self.batch("BEGIN")).await?;
        }
        let mut q: BoxedSqlQuery<'_, Pg, SqlQuery> = diesel::sql_query(sql).into_boxed();
        for p in params {
            q = p.bind_to(q);
        }
        let r = if rows {
            let fut = self.conn.load(q);
            self.s
                .run(&self.errors, async move {
                    let stream = fut.await?;
                    stream.try_collect::<Vec<_>>().await
                })
                .await
                // Copied before the statement's transaction ends (see `DieselRow`).
                .map(|rows| Out::Rows(DieselRow::all(&rows)))
        } else {
            let fut = self.conn.execute_returning_count(q);
            self.s
                .run(&self.errors, fut)
                .await
                .map(|n| Out::Count(n as u64))
        };
        self.s.track(sql, r.is_ok());
        if wrap {
            Box::pin(self.batch(if r.is_ok() { "COMMIT" } else { "ROLLBACK" })).await?;
        }
        r
    }

    async fn observed(
        &mut self,
        default: OperationKind,
        sql: &str,
        params: &[&(dyn DieselParam + '_)],
        rows: bool,
    ) -> Result<Out> {
        let observer = self.s.observer();
        observer
            .run(default, sql, Out::rows, self.statement(sql, params, rows))
            .await
    }

    async fn simple(&mut self, sql: &str) -> Result<Vec<SimpleRow>> {
        self.s.before(sql)?;
        let after = self.s.dirty() || may_change_session(sql);
        let trimmed = sql.trim().trim_end_matches(';');
        let single = !trimmed.contains(';');
        let first = trimmed
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let returns_rows =
            single && matches!(first.as_str(), "SELECT" | "WITH" | "VALUES" | "TABLE");
        if !returns_rows {
            let r = self.batch(sql).await;
            self.s.set_dirty(after);
            return r.map(|()| Vec::new());
        }
        // The alias must not be a column name of the statement (`row_to_json(q)` would then
        // take the column): a quoted name with spaces.
        let wrapped = format!(
            "SELECT row_to_json(\"pgprovider row\".*)::text FROM ({trimmed}) \"pgprovider row\""
        );
        let wrap = self.s.needs_wrap(false);
        if wrap {
            Box::pin(self.batch("BEGIN")).await?;
        }
        let q = diesel::sql_query(wrapped).into_boxed::<Pg>();
        let fut = self.conn.load(q);
        let r = self
            .s
            .run(&self.errors, async move {
                let stream = fut.await?;
                stream.try_collect::<Vec<_>>().await
            })
            .await
            .and_then(|rows| {
                rows.iter()
                    .map(|row| {
                        let json: String = DieselRow::owned(row, &mut None)
                            .decode::<String, Text>(0, TEXT_OIDS)?;
                        json_object(&json)
                    })
                    .collect::<Result<Vec<_>>>()
            });
        self.s.track(sql, r.is_ok());
        if wrap {
            Box::pin(self.batch(if r.is_ok() { "COMMIT" } else { "ROLLBACK" })).await?;
        }
        self.s.set_dirty(after);
        let objects = r?;
        let mut columns: Option<Arc<[String]>> = None;
        Ok(objects
            .into_iter()
            .map(|fields| {
                let names: Arc<[String]> = columns
                    .get_or_insert_with(|| fields.iter().map(|(k, _)| k.clone()).collect())
                    .clone();
                SimpleRow::new(names, fields.into_iter().map(|(_, v)| v).collect())
            })
            .collect())
    }
}

enum Out {
    Rows(Vec<DieselRow>),
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

/// diesel-async's row type.
type PgRow = <AsyncPgConnection as AsyncConnectionCore>::Row<'static, 'static>;

/// A result row, readable through pgprovider's [`Column`] for the types of
/// [`DieselParam`].
///
/// It owns its values: diesel-async's rows keep their prepared statement alive, and behind a
/// transaction pooler a statement must be closed before its transaction ends (later, the
/// pooler may have handed its server session to another client).
pub struct DieselRow {
    names: Arc<[String]>,
    /// Each column's value (`None` for NULL) and type OID.
    values: Vec<(Option<Vec<u8>>, std::num::NonZeroU32)>,
}

impl fmt::Debug for DieselRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DieselRow")
            .field("columns", &self.values.len())
            .finish()
    }
}

impl DieselRow {
    /// Copies diesel-async's row `row`, whose column names are `names` (read once per
    /// result, from its first row).
    fn owned(row: &PgRow, names: &mut Option<Arc<[String]>>) -> DieselRow {
        let names = names
            .get_or_insert_with(|| {
                (0..row.field_count())
                    .map(|i| {
                        row.get(i)
                            .and_then(|f| f.field_name().map(str::to_owned))
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .clone();
        let values = (0..row.field_count())
            .map(|i| {
                let field = row.get(i);
                let value = field.as_ref().and_then(|f| f.value());
                let oid = value
                    .as_ref()
                    .map_or(std::num::NonZeroU32::MIN, |v| v.get_oid());
                (value.map(|v| v.as_bytes().to_vec()), oid)
            })
            .collect();
        DieselRow { names, values }
    }

    /// Copies every row of a result.
    fn all(rows: &[PgRow]) -> Vec<DieselRow> {
        let mut names = None;
        rows.iter()
            .map(|r| DieselRow::owned(r, &mut names))
            .collect()
    }

    fn decode<T, ST>(&self, idx: usize, oids: &[u32]) -> Result<T>
    where
        T: diesel::deserialize::FromSql<ST, Pg>,
    {
        let (bytes, oid) = self
            .values
            .get(idx)
            .ok_or_else(|| Error::new(ErrorKind::Decode, format!("there is no column {idx}")))?;
        if bytes.is_some() && !oids.contains(&oid.get()) {
            return Err(Error::new(
                ErrorKind::Decode,
                format!(
                    "cannot read column {idx} as {}: its type has OID {oid}",
                    std::any::type_name::<T>()
                ),
            ));
        }
        let value = bytes
            .as_deref()
            .map(|b| diesel::pg::PgValue::new(b, oid as &dyn diesel::pg::TypeOidLookup));
        T::from_nullable_sql(value)
            .map_err(|e| Error::new(ErrorKind::Decode, format!("cannot read column {idx}: {e}")))
    }

    fn index_of(&self, name: &str) -> Result<usize> {
        self.names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| Error::new(ErrorKind::Decode, format!("there is no column {name}")))
    }
}

/// A Rust type with its diesel SQL type, for parameters and columns.
pub trait DieselType {
    /// The diesel SQL type.
    type Sql: diesel::sql_types::SqlType + diesel::sql_types::SingleValue + Send + 'static;
    /// The PostgreSQL type OIDs a column may have to be read as this type (diesel does not
    /// check them).
    const OIDS: &'static [u32];
}

macro_rules! diesel_types {
    ($($t:ty => $st:ty, $oids:expr);* $(;)?) => {
        $(impl DieselType for $t { type Sql = $st; const OIDS: &'static [u32] = $oids; })*
    };
}

/// text, varchar, name, bpchar.
const TEXT_OIDS: &[u32] = &[25, 1043, 19, 1042];

diesel_types! {
    i16 => SmallInt, &[21];
    i32 => Integer, &[23];
    i64 => BigInt, &[20];
    f32 => Float, &[700];
    f64 => Double, &[701];
    bool => Bool, &[16];
    String => Text, TEXT_OIDS;
    Vec<u8> => Binary, &[17];
}

impl DieselType for &str {
    type Sql = Text;
    const OIDS: &'static [u32] = TEXT_OIDS;
}

impl<T: DieselType> DieselType for Option<T>
where
    T::Sql: diesel::sql_types::SqlType<IsNull = diesel::sql_types::is_nullable::NotNull>,
{
    type Sql = Nullable<T::Sql>;
    const OIDS: &'static [u32] = T::OIDS;
}

impl<T> Column<T> for DieselRow
where
    T: DieselType + diesel::deserialize::FromSql<T::Sql, Pg>,
{
    fn column(&self, idx: usize) -> Result<T> {
        self.decode::<T, T::Sql>(idx, T::OIDS)
    }
    fn column_named(&self, name: &str) -> Result<T> {
        self.decode::<T, T::Sql>(self.index_of(name)?, T::OIDS)
    }
}

/// A parameter: a value of a [`DieselType`], taken by reference.
pub trait DieselParam: Sync {
    /// Binds the value to `q`.
    fn bind_to<'f>(&'f self, q: BoxedSqlQuery<'f, Pg, SqlQuery>)
    -> BoxedSqlQuery<'f, Pg, SqlQuery>;
}

impl<T> DieselParam for T
where
    T: DieselType + diesel::serialize::ToSql<T::Sql, Pg> + Sync,
    Pg: diesel::sql_types::HasSqlType<T::Sql>,
{
    fn bind_to<'f>(
        &'f self,
        q: BoxedSqlQuery<'f, Pg, SqlQuery>,
    ) -> BoxedSqlQuery<'f, Pg, SqlQuery> {
        q.bind::<T::Sql, &'f T>(self)
    }
}

impl Queries for DieselConnection {
    type Row = DieselRow;
    type Param<'a> = dyn DieselParam + 'a;
    type Pipeline = pgprovider_core::NoPipeline;

    async fn query<'p>(
        &mut self,
        sql: &str,
        params: &[&'p (dyn DieselParam + 'p)],
    ) -> Result<Vec<DieselRow>> {
        match self
            .observed(OperationKind::Query, sql, params, true)
            .await?
        {
            Out::Rows(r) => Ok(r),
            Out::Count(_) => unreachable!("a query returns rows"),
        }
    }

    async fn execute<'p>(
        &mut self,
        sql: &str,
        params: &[&'p (dyn DieselParam + 'p)],
    ) -> Result<u64> {
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

impl Connection for DieselConnection {
    fn is_broken(&self) -> bool {
        self.s.is_broken()
    }

    async fn ping(&mut self) -> Result<()> {
        let fut = self.conn.batch_execute("");
        self.s.run(&self.errors, fut).await
    }

    fn needs_reset(&self) -> bool {
        self.s.needs_reset()
    }

    async fn reset(&mut self) -> Result<()> {
        let timeout = self.s.take_timeout();
        let sql = self.s.reset_sql();
        let fut = self.conn.batch_execute(&sql);
        let r = self.s.run(&self.errors, fut).await;
        self.s.reset_done(timeout, r.is_ok());
        r
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
        self.s.cancel_before_close().await;
        // Dropping diesel-async's connection drops the client, which ends the session.
        drop(self.conn);
    }
}

/// Converts a diesel error into pgprovider's. The SQLSTATE is the one diesel's error kind
/// implies (unique, foreign-key, not-null and check violations, serialization failures,
/// read-only refusals); pooled connections know every code (read off the protocol).
pub fn map_error(e: diesel::result::Error) -> Error {
    map_error_with(e, None)
}

/// [`map_error`] with the server's `code` for it, when known.
fn map_error_with(e: diesel::result::Error, code: Option<String>) -> Error {
    use diesel::result::{DatabaseErrorKind as K, Error as D};
    match &e {
        D::DatabaseError(kind, info) => {
            let code = code.or(match kind {
                K::UniqueViolation => Some("23505".to_owned()),
                K::ForeignKeyViolation => Some("23503".to_owned()),
                K::NotNullViolation => Some("23502".to_owned()),
                K::CheckViolation => Some("23514".to_owned()),
                K::SerializationFailure => Some("40001".to_owned()),
                K::ReadOnlyTransaction => Some("25006".to_owned()),
                _ => None,
            });
            if matches!(kind, K::ClosedConnection | K::UnableToSendCommand) {
                return Error::new(ErrorKind::ConnectionLost, "the connection is closed")
                    .with_hint("the server closed the connection or the network dropped it; retry on a new connection");
            }
            let msg = info.message().to_owned();
            match code.as_deref().and_then(SqlState::new) {
                Some(state) => Error::database(state, msg),
                None => Error::new(ErrorKind::Database, msg),
            }
        }
        D::NotFound => Error::new(ErrorKind::RowCount, "no row was returned"),
        D::DeserializationError(d) => Error::new(ErrorKind::Decode, d.to_string()),
        _ => Error::new(ErrorKind::Other, e.to_string()),
    }
}

/// Parses a JSON object (as `row_to_json` writes it) into its fields, in order, as
/// PostgreSQL text: strings unescaped, numbers as written, booleans as `t`/`f`, nested
/// values as their JSON text, `null` as `None`. serde_json reads it; the fields keep their
/// order and raw text ([`RawValue`](serde_json::value::RawValue)).
fn json_object(s: &str) -> Result<Vec<(String, Option<String>)>> {
    use serde::de::{Deserializer as _, MapAccess, Visitor};
    use serde_json::value::RawValue;
    struct Fields;
    impl<'de> Visitor<'de> for Fields {
        type Value = Vec<(String, Option<String>)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((key, raw)) = map.next_entry::<String, &'de RawValue>()? {
                let text = match raw.get() {
                    "null" => None,
                    "true" => Some("t".to_owned()),
                    "false" => Some("f".to_owned()),
                    r if r.starts_with('"') => {
                        Some(serde_json::from_str::<String>(r).map_err(serde::de::Error::custom)?)
                    }
                    r => Some(r.to_owned()),
                };
                out.push((key, text));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(s);
    let fields = de
        .deserialize_map(Fields)
        .and_then(|f| de.end().map(|()| f));
    fields.map_err(|e| {
        Error::new(
            ErrorKind::Decode,
            format!("unexpected row_to_json output ({e}): {s}"),
        )
    })
}

/// A driver-neutral [`Value`] as a diesel parameter (`int8`, `float8`, `bool`, `text`,
/// `bytea`; NULL of an unspecified type, which the server infers).
struct DieselValue<'a>(&'a Value);

/// A parameter type left for the server to infer (OID 0), for NULLs.
#[derive(diesel::sql_types::SqlType, diesel::query_builder::QueryId)]
#[diesel(postgres_type(oid = 0, array_oid = 0))]
struct Unspecified;

/// The value of a NULL of [`Unspecified`] type (never sent: it is always `None`).
#[derive(Debug)]
struct NoValue;

impl diesel::serialize::ToSql<Unspecified, Pg> for NoValue {
    fn to_sql<'b>(
        &'b self,
        _: &mut diesel::serialize::Output<'b, '_, Pg>,
    ) -> diesel::serialize::Result {
        Ok(diesel::serialize::IsNull::Yes)
    }
}

impl DieselParam for DieselValue<'_> {
    fn bind_to<'f>(
        &'f self,
        q: BoxedSqlQuery<'f, Pg, SqlQuery>,
    ) -> BoxedSqlQuery<'f, Pg, SqlQuery> {
        match self.0 {
            Value::Int(i) => q.bind::<BigInt, i64>(*i),
            Value::Float(f) => q.bind::<Double, f64>(*f),
            Value::Bool(b) => q.bind::<Bool, bool>(*b),
            Value::Text(s) => q.bind::<Text, &'f str>(s.as_str()),
            Value::Bytes(b) => q.bind::<Binary, &'f [u8]>(b.as_slice()),
            _ => q.bind::<Nullable<Unspecified>, Option<NoValue>>(None),
        }
    }
}

impl DieselRow {
    fn names(&self) -> Arc<[String]> {
        self.names.clone()
    }
}

impl ValueQueries for DieselConnection {
    async fn query_values(&mut self, sql: &str, params: &[Value]) -> Result<Vec<ValueRow>> {
        let wrapped: Vec<DieselValue<'_>> = params.iter().map(DieselValue).collect();
        let refs: Vec<&dyn DieselParam> = wrapped.iter().map(|v| v as &dyn DieselParam).collect();
        let rows = self.query(sql, &refs).await?;
        let Some(first) = rows.first() else {
            return Ok(Vec::new());
        };
        let names = first.names();
        rows.iter()
            .map(|r| ValueRow::read(r, names.clone()))
            .collect()
    }

    async fn execute_values(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        let wrapped: Vec<DieselValue<'_>> = params.iter().map(DieselValue).collect();
        let refs: Vec<&dyn DieselParam> = wrapped.iter().map(|v| v as &dyn DieselParam).collect();
        self.execute(sql, &refs).await
    }
}

#[cfg(test)]
mod tests {
    use super::{json_object, map_error};
    use diesel::result::{DatabaseErrorKind as K, Error as D};
    use pgprovider_core::ErrorKind;

    #[test]
    fn diesel_errors_map_to_kinds_and_states() {
        let db = |kind, msg: &str| D::DatabaseError(kind, Box::new(msg.to_owned()));
        for (e, kind, code) in [
            (
                db(K::UniqueViolation, "duplicate key"),
                ErrorKind::Database,
                Some("23505"),
            ),
            (
                db(K::ForeignKeyViolation, "fk"),
                ErrorKind::Database,
                Some("23503"),
            ),
            (
                db(K::NotNullViolation, "null"),
                ErrorKind::Database,
                Some("23502"),
            ),
            (
                db(K::CheckViolation, "check"),
                ErrorKind::Database,
                Some("23514"),
            ),
            (
                db(K::SerializationFailure, "could not serialize"),
                ErrorKind::Database,
                Some("40001"),
            ),
            (
                db(K::ReadOnlyTransaction, "read-only"),
                ErrorKind::Database,
                Some("25006"),
            ),
            // Without the protocol's code, a message is never guessed from.
            (
                db(K::Unknown, "relation \"t\" does not exist"),
                ErrorKind::Database,
                None,
            ),
            (db(K::Unknown, "something new"), ErrorKind::Database, None),
            (
                db(K::ClosedConnection, "closed"),
                ErrorKind::ConnectionLost,
                None,
            ),
            (
                db(K::UnableToSendCommand, "connection closed"),
                ErrorKind::ConnectionLost,
                None,
            ),
            (D::NotFound, ErrorKind::RowCount, None),
            (D::RollbackTransaction, ErrorKind::Other, None),
        ] {
            let m = map_error(e);
            assert_eq!(m.kind(), kind, "{m}");
            assert_eq!(m.sql_state().as_ref().map(|s| s.code()), code, "{m}");
        }
        let decode = map_error(D::DeserializationError("bad bytes".into()));
        assert_eq!(decode.kind(), ErrorKind::Decode);
    }

    #[test]
    fn row_to_json_objects_become_text_fields() {
        let f = json_object(
            r#"{"a":1,"b":"x\"y\\n\u00e9","c":true,"d":null,"e":{"k":[1,"}"]},"f":false,"g":-2.5e3}"#,
        )
        .unwrap();
        let v: Vec<(&str, Option<&str>)> =
            f.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
        assert_eq!(
            v,
            [
                ("a", Some("1")),
                ("b", Some("x\"y\\né")),
                ("c", Some("t")),
                ("d", None),
                ("e", Some(r#"{"k":[1,"}"]}"#)),
                ("f", Some("f")),
                ("g", Some("-2.5e3")),
            ]
        );
        assert!(json_object("{}").unwrap().is_empty());
        for bad in ["", "[1]", r#"{"a" 1}"#, r#"{"a":1"#, r#"{"a":"x"#] {
            assert!(json_object(bad).is_err(), "{bad}");
        }
    }
}
