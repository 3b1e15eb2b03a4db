//! Queries on the pool, with the checkout handled: each call checks out a connection, runs
//! one statement, and returns the connection.
//!
//! ```no_run
//! # async fn run(pool: pgprovider::Pool<pgprovider_tokio_postgres::TokioPostgres>) -> pgprovider::Result<()> {
//! let name: Option<(String,)> = pool
//!     .query_opt("SELECT name FROM users WHERE id = $1", &[&42_i64])
//!     .await?
//!     .map(|row| row.to())
//!     .transpose()?;
//! let n = pool.execute("DELETE FROM sessions WHERE expires < now()", &[]).await?;
//! # Ok(()) }
//! ```

use crate::pool::Pool;
use pgprovider_core::{Driver, FromRow, Queries, Result, row_count_error};

type Param<'p, D> = <<D as Driver>::Connection as Queries>::Param<'p>;
type Row<D> = <<D as Driver>::Connection as Queries>::Row;

impl<D: Driver> Pool<D>
where
    D::Connection: Queries,
{
    /// Runs a statement on a pooled connection and returns its rows.
    ///
    /// # Errors
    /// Checkout errors (see [`get`](Pool::get)) or the statement's (see [`Queries::query`]).
    ///
    /// With [adaptive pipelining](crate::pool#adaptive-pipelining) on (`pool_pipeline`), a
    /// plain read that finds every connection busy runs pipelined on one of them instead
    /// of waiting for a checkout.
    pub async fn query<'p>(&self, sql: &str, params: &[&'p Param<'p, D>]) -> Result<Vec<Row<D>>> {
        if !self.pipelines() {
            return self.get().await?.query(sql, params).await;
        }
        self.query_adaptive(sql, params).await
    }

    /// Runs a statement that returns exactly one row.
    ///
    /// # Errors
    /// As [`query`](Pool::query), or [`ErrorKind::RowCount`](crate::ErrorKind::RowCount).
    pub async fn query_one<'p>(&self, sql: &str, params: &[&'p Param<'p, D>]) -> Result<Row<D>> {
        let mut rows = self.query(sql, params).await?;
        match rows.len() {
            1 => Ok(rows.pop().expect("one row")),
            n => Err(row_count_error(n, "exactly one")),
        }
    }

    /// Runs a statement that returns at most one row.
    ///
    /// # Errors
    /// As [`query`](Pool::query), or [`ErrorKind::RowCount`](crate::ErrorKind::RowCount).
    pub async fn query_opt<'p>(
        &self,
        sql: &str,
        params: &[&'p Param<'p, D>],
    ) -> Result<Option<Row<D>>> {
        let mut rows = self.query(sql, params).await?;
        match rows.len() {
            0 | 1 => Ok(rows.pop()),
            n => Err(row_count_error(n, "at most one")),
        }
    }

    /// Runs a statement and reads every row as a `T` (a tuple, or a struct deriving
    /// `FromRow`).
    ///
    /// # Errors
    /// As [`query`](Pool::query), or [`ErrorKind::Decode`](crate::ErrorKind::Decode).
    pub async fn query_as<'p, T: FromRow<Row<D>>>(
        &self,
        sql: &str,
        params: &[&'p Param<'p, D>],
    ) -> Result<Vec<T>> {
        crate::rows::rows_as(self.query(sql, params).await?)
    }

    /// Runs a statement and returns the number of rows it affected.
    ///
    /// # Errors
    /// As [`query`](Pool::query).
    pub async fn execute<'p>(&self, sql: &str, params: &[&'p Param<'p, D>]) -> Result<u64> {
        // Reads may be pipelined behind an autocommit write that leaves nothing on the
        // session.
        let conn = self.get().await?;
        crate::Pooled::shared(conn, sql, async |c| c.execute(sql, params).await).await
    }
}

crate::client::delegate_client!(Pool, Sync);
