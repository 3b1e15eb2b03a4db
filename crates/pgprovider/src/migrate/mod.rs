//! Versioned schema migrations: ordered SQL files applied once each, recorded in a history
//! table, safe with many instances starting at once, for one database or for every tenant
//! schema.
//!
//! ```no_run
//! # async fn run(pool: pgprovider::Pool<pgprovider_tokio_postgres::TokioPostgres>) -> pgprovider::Result<()> {
//! use pgprovider::migrate::{Migrations, Migrator};
//! let migrator = Migrator::new(Migrations::from_dir("migrations")?);
//! let report = migrator.up(&mut *pool.get().await?, None).await?;
//! println!("applied {} migration(s)", report.applied.len());
//! # Ok(()) }
//! ```
//!
//! - **Files**: `<version>_<name>.sql` (or `.up.sql`), optionally `<version>_<name>.down.sql`,
//!   read from a folder ([`Migrations::from_dir`]) or embedded in the binary
//!   (`pgprovider::embed_migrations!("migrations")`).
//! - **History**: table `pgprovider_migrations` (version, name, checksum, applied_at,
//!   duration_ms). An applied file whose checksum changed stops `up` before anything runs and
//!   shows in [`Migrator::status`].
//! - **Transactions**: each migration runs in a transaction of its own with its history row,
//!   so a failing one leaves the database at the previous version; a file whose first line is
//!   [`NO_TRANSACTION`] runs outside one (a single statement, such as `CREATE INDEX
//!   CONCURRENTLY`).
//! - **Many instances**: a session advisory lock (per history table) is held for the whole
//!   run; a concurrent run waits, then finds nothing left to do.
//! - **Tenants**: [`Migrator::with_schema`] keeps objects and history in one schema (created
//!   when missing; `search_path` set to it for each migration); [`up_tenants`] runs every
//!   tenant, a failure not stopping the others, and a re-run resumes.
//!
//! Cancel safety: dropping an `up`/`down` future mid-way leaves at most the running
//! migration's transaction open and the advisory lock held on that connection; returned to
//! a pool, the connection is reset (the transaction rolled back, the lock released) or, with
//! a statement in flight, closed, which does both. A non-transactional migration cut off this
//! way may have run without being recorded.
//!
//! Why not refinery or sqlx's migrator: both are tied to their own drivers' connections,
//! while this runs on any [`Connection`] through the provider (and its tenants); neither
//! applies one set of migrations across tenant schemas with a per-tenant report. The file
//! naming follows sqlx's, so existing folders can move over.

mod source;

pub use source::{Migration, Migrations, NO_TRANSACTION, checksum};

use crate::pool::Pool;
use crate::{Connection, Driver, Error, ErrorKind, Result};
use std::time::{Duration, Instant};

/// The default history table.
pub const DEFAULT_TABLE: &str = "pgprovider_migrations";

/// Applies [`Migrations`] to a database or a schema. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Migrator {
    migrations: Migrations,
    table: String,
    schema: Option<String>,
}

/// Where one migration stands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Applied, with its file unchanged.
    Applied {
        /// When, as the server printed it.
        applied_at: String,
        /// How long it took.
        duration_ms: i64,
    },
    /// Not applied yet.
    Pending,
    /// Applied, but the file changed since: an error for `up`.
    Changed {
        /// The checksum recorded when it was applied.
        applied_checksum: String,
    },
    /// Recorded as applied, but no file has its version (an older binary on a newer
    /// database, or a deleted file).
    Unknown,
}

/// One line of [`Migrator::status`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationStatus {
    /// The version.
    pub version: i64,
    /// The name.
    pub name: String,
    /// Where it stands.
    pub state: State,
}

/// What `up` or `down` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// The migrations applied (or reverted), in order, with their durations.
    pub applied: Vec<(i64, String, Duration)>,
}

impl Migrator {
    /// A migrator for `migrations`, with history in [`DEFAULT_TABLE`] of the default schema.
    pub fn new(migrations: Migrations) -> Self {
        Migrator {
            migrations,
            table: DEFAULT_TABLE.to_owned(),
            schema: None,
        }
    }

    /// Another history table name.
    pub fn with_table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Applies to `schema` (a tenant): created when missing, set as `search_path` for each
    /// migration, and holding its own history table.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// The migrations.
    pub fn migrations(&self) -> &Migrations {
        &self.migrations
    }

    fn history(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", ident(s), ident(&self.table)),
            None => ident(&self.table),
        }
    }

    /// The advisory-lock key of this history table.
    fn lock_key(&self) -> i64 {
        let scope = format!(
            "pgprovider.migrate:{}:{}",
            self.schema.as_deref().unwrap_or(""),
            self.table
        );
        // The 64 bits of the checksum, reinterpreted as PostgreSQL's bigint.
        u64::from_str_radix(&checksum(&scope), 16).map_or(0, |v| v as i64)
    }

    /// Every migration (files and history) and where it stands.
    ///
    /// # Errors
    /// The server's error reading the history.
    pub async fn status<C: Connection>(&self, conn: &mut C) -> Result<Vec<MigrationStatus>> {
        let applied = self.applied(conn).await?;
        let mut out: Vec<MigrationStatus> = self
            .migrations
            .iter()
            .map(|m| {
                let state = match applied.iter().find(|a| a.version == m.version()) {
                    None => State::Pending,
                    Some(a) if a.checksum != m.checksum() => State::Changed {
                        applied_checksum: a.checksum.clone(),
                    },
                    Some(a) => State::Applied {
                        applied_at: a.applied_at.clone(),
                        duration_ms: a.duration_ms,
                    },
                };
                MigrationStatus {
                    version: m.version(),
                    name: m.name().to_owned(),
                    state,
                }
            })
            .collect();
        for a in &applied {
            if self.migrations.get(a.version).is_none() {
                out.push(MigrationStatus {
                    version: a.version,
                    name: a.name.clone(),
                    state: State::Unknown,
                });
            }
        }
        out.sort_by_key(|s| s.version);
        Ok(out)
    }

    /// Applies every pending migration up to `to` (all when `None`), in version order, each
    /// in its own transaction, holding the advisory lock throughout.
    ///
    /// # Errors
    /// - [`ErrorKind::Config`] when an applied file changed (nothing is applied then).
    /// - The failing migration's server error, naming the file; the migrations before it
    ///   stay applied, it and the ones after do not.
    pub async fn up<C: Connection>(&self, conn: &mut C, to: Option<i64>) -> Result<Report> {
        self.locked(conn, async |conn: &mut C| {
            let applied = self.applied(conn).await?;
            let changed: Vec<String> = applied
                .iter()
                .filter_map(|a| {
                    let m = self.migrations.get(a.version)?;
                    (m.checksum() != a.checksum).then(|| m.label())
                })
                .collect();
            if !changed.is_empty() {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "applied migration file(s) changed since they were applied: {}; nothing was applied",
                        changed.join(", ")
                    ),
                )
                .with_hint("restore the applied files and put the change in a new migration"));
            }
            let mut report = Report::default();
            for m in self.migrations.iter() {
                if to.is_some_and(|t| m.version() > t) || applied.iter().any(|a| a.version == m.version()) {
                    continue;
                }
                let took = self.apply(conn, m, m.up(), Direction::Up).await?;
                report.applied.push((m.version(), m.name().to_owned(), took));
            }
            Ok(report)
        })
        .await
    }

    /// Reverts applied migrations newer than `to`, newest first, with their down files.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] when one of them has no down file (nothing is reverted then),
    /// or the failing down migration's server error.
    pub async fn down<C: Connection>(&self, conn: &mut C, to: i64) -> Result<Report> {
        self.locked(conn, async |conn: &mut C| {
            let applied = self.applied(conn).await?;
            let mut todo = Vec::new();
            for a in applied.iter().rev().filter(|a| a.version > to) {
                match self
                    .migrations
                    .get(a.version)
                    .and_then(|m| m.down().map(|d| (m, d)))
                {
                    Some(pair) => todo.push(pair),
                    None => {
                        return Err(Error::new(
                            ErrorKind::Config,
                            format!(
                                "migration {}_{} has no down file; nothing was reverted",
                                a.version, a.name
                            ),
                        )
                        .with_hint(
                            "add a <version>_<name>.down.sql file, or revert by a new migration",
                        ));
                    }
                }
            }
            let mut report = Report::default();
            for (m, sql) in todo {
                let took = self.apply(conn, m, sql, Direction::Down).await?;
                report
                    .applied
                    .push((m.version(), m.name().to_owned(), took));
            }
            Ok(report)
        })
        .await
    }

    /// Runs `f` holding the advisory lock, after making the schema and history table.
    async fn locked<C: Connection, T>(
        &self,
        conn: &mut C,
        f: impl AsyncFnOnce(&mut C) -> Result<T>,
    ) -> Result<T> {
        conn.simple_query(&format!("SELECT pg_advisory_lock({})", self.lock_key()))
            .await
            .map_err(|e| {
                let hint = (e.kind() == pgprovider_core::ErrorKind::Unsupported).then_some(
                    "migrations hold a session advisory lock: run them on a direct connection to the primary (pooler=none) or through the pooler in session mode",
                );
                let e = e.context("cannot take the migration lock");
                match hint {
                    Some(h) => e.with_hint(h),
                    None => e,
                }
            })?;
        let r = async {
            let mut ddl = String::new();
            if let Some(s) = &self.schema {
                ddl.push_str(&format!("CREATE SCHEMA IF NOT EXISTS {}; ", ident(s)));
            }
            ddl.push_str(&format!(
                "CREATE TABLE IF NOT EXISTS {} (version bigint PRIMARY KEY, name text NOT NULL, \
                 checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), duration_ms bigint NOT NULL)",
                self.history()
            ));
            conn.simple_query(&ddl)
                .await
                .map_err(|e| e.context("cannot create the migration history table"))?;
            f(conn).await
        }
        .await;
        let unlocked = conn
            .simple_query(&format!("SELECT pg_advisory_unlock({})", self.lock_key()))
            .await;
        let value = r?;
        unlocked.map_err(|e| e.context("cannot release the migration lock"))?;
        Ok(value)
    }

    async fn applied<C: Connection>(&self, conn: &mut C) -> Result<Vec<Applied>> {
        let sql = format!(
            "SELECT version, name, checksum, applied_at::text, duration_ms FROM {} ORDER BY version",
            self.history()
        );
        let rows = match conn.simple_query(&sql).await {
            Ok(rows) => rows,
            // No history table yet: nothing applied.
            Err(e) if e.sql_state().is_some_and(|s| s.code() == "42P01") => return Ok(Vec::new()),
            Err(e) => return Err(e.context("cannot read the migration history")),
        };
        Ok(rows
            .iter()
            .map(|r| Applied {
                version: r.get(0).and_then(|v| v.parse().ok()).unwrap_or_default(),
                name: r.get(1).unwrap_or_default().to_owned(),
                checksum: r.get(2).unwrap_or_default().to_owned(),
                applied_at: r.get(3).unwrap_or_default().to_owned(),
                duration_ms: r.get(4).and_then(|v| v.parse().ok()).unwrap_or_default(),
            })
            .collect())
    }

    /// Runs one migration (up or down) with its history change.
    async fn apply<C: Connection>(
        &self,
        conn: &mut C,
        m: &Migration,
        sql: &str,
        dir: Direction,
    ) -> Result<Duration> {
        let start = Instant::now();
        let search_path = self
            .schema
            .as_ref()
            .map(|s| format!("{}, public", ident(s)));
        let file = match dir {
            Direction::Up => format!("{}.sql", m.label()),
            Direction::Down => format!("{}.down.sql", m.label()),
        };
        let failed = |e: Error, note: &str| {
            let mut e = e.context(format!("migration {file} failed{note}"));
            if let Some(s) = &self.schema {
                e = e.with_tenant(s.clone());
            }
            e
        };
        if m.transactional() || dir == Direction::Down {
            let mut begin = String::from("BEGIN");
            if let Some(p) = &search_path {
                begin.push_str(&format!("; SET LOCAL search_path TO {p}"));
            }
            conn.simple_query(&begin).await?;
            if let Err(e) = conn.simple_query(sql).await {
                let _ = conn.simple_query("ROLLBACK").await;
                return Err(failed(
                    e,
                    "; it was rolled back and the database stays at the previous version",
                ));
            }
            let record = self.record_sql(m, dir, start.elapsed());
            if let Err(e) = conn.simple_query(&format!("{record}; COMMIT")).await {
                let _ = conn.simple_query("ROLLBACK").await;
                return Err(failed(e, " while recording it; it was rolled back"));
            }
        } else {
            if let Some(p) = &search_path {
                conn.simple_query(&format!("SET search_path TO {p}"))
                    .await?;
            }
            let ran = conn.simple_query(sql).await;
            if search_path.is_some() {
                let _ = conn.simple_query("RESET search_path").await;
            }
            if let Err(e) = ran {
                return Err(failed(
                    e,
                    " (outside a transaction: check what it left behind before running it again)",
                ));
            }
            conn.simple_query(&self.record_sql(m, dir, start.elapsed()))
                .await
                .map_err(|e| failed(e, " while recording it (its statement did run)"))?;
        }
        Ok(start.elapsed())
    }

    fn record_sql(&self, m: &Migration, dir: Direction, took: Duration) -> String {
        match dir {
            Direction::Up => format!(
                "INSERT INTO {} (version, name, checksum, duration_ms) VALUES ({}, {}, {}, {})",
                self.history(),
                m.version(),
                literal(m.name()),
                literal(m.checksum()),
                took.as_millis()
            ),
            Direction::Down => format!(
                "DELETE FROM {} WHERE version = {}",
                self.history(),
                m.version()
            ),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

struct Applied {
    version: i64,
    name: String,
    checksum: String,
    applied_at: String,
    duration_ms: i64,
}

/// What [`up_tenants`] did for every tenant.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct TenantReport {
    /// Tenants migrated, with what was applied to each.
    pub succeeded: Vec<(String, Report)>,
    /// Tenants that failed, with why (the others went on).
    pub failed: Vec<(String, Error)>,
}

/// Applies `migrator`'s migrations to every schema in `tenants`, up to `concurrency` at a
/// time, each on its own pooled connection. A failing tenant does not stop the others; a
/// re-run resumes where each tenant stands. `on_done` is called as each tenant finishes.
pub async fn up_tenants<D: Driver>(
    pool: &Pool<D>,
    migrator: &Migrator,
    tenants: &[String],
    concurrency: usize,
    on_done: impl Fn(&str, &Result<Report>),
) -> TenantReport {
    use futures_like::run_limited;
    let results = run_limited(tenants, concurrency.max(1), async |tenant: &String| {
        let m = migrator.clone().with_schema(tenant.clone());
        let r = async {
            let mut conn = pool.get().await?;
            m.up(&mut *conn, None).await
        }
        .await;
        on_done(tenant, &r);
        (tenant.clone(), r)
    })
    .await;
    let mut report = TenantReport::default();
    for (tenant, r) in results {
        match r {
            Ok(rep) => report.succeeded.push((tenant, rep)),
            Err(e) => {
                let e = e.with_tenant(tenant.clone());
                report.failed.push((tenant, e));
            }
        }
    }
    report
}

mod futures_like {
    /// Runs `f` over `items`, at most `limit` at once, on the current task; results in
    /// input order.
    pub(super) async fn run_limited<'a, T, R>(
        items: &'a [T],
        limit: usize,
        f: impl AsyncFn(&'a T) -> R,
    ) -> Vec<R> {
        let f = &f;
        let mut out: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
        let mut next = 0;
        let mut running = Vec::new();
        loop {
            while running.len() < limit && next < items.len() {
                let i = next;
                next += 1;
                running.push(Box::pin(async move { (i, f(&items[i]).await) }));
            }
            if running.is_empty() {
                break;
            }
            let ((i, r), idx) = std::future::poll_fn(|cx| {
                for (k, fut) in running.iter_mut().enumerate() {
                    if let std::task::Poll::Ready(v) = fut.as_mut().poll(cx) {
                        return std::task::Poll::Ready((v, k));
                    }
                }
                std::task::Poll::Pending
            })
            .await;
            drop(running.swap_remove(idx));
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|r| r.expect("every item ran"))
            .collect()
    }
}

/// A quoted identifier: any name is safe.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A quoted string literal, right whatever `standard_conforming_strings` says (an `E''`
/// literal when the text has a backslash).
pub(crate) fn literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

#[cfg(test)]
mod tests;
