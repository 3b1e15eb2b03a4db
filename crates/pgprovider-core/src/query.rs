//! Typed queries, as the provider's generic layers (pool, transactions, retry) see them.
//!
//! Parameters and rows stay the driver's own types ([`Queries::Param`], [`Queries::Row`]):
//! each driver has a mature type system and re-inventing one would lose features. What the
//! provider needs to be generic over is small: run a statement, know whether a transaction
//! is open, and bound how long a statement may take.

use crate::{Connection, Error, ErrorKind, Result};
use std::future::Future;
use std::time::Duration;

/// A connection that runs typed, parameterised statements.
///
/// Statements go through the driver's prepared-statement cache (or unnamed statements when
/// the cache is off). A statement that runs past the [query timeout](Queries::query_timeout)
/// is cancelled on the server and fails with [`ErrorKind::Timeout`]; the connection is left
/// clean or marked broken, never half-way.
pub trait Queries: Connection {
    /// A result row.
    type Row: Send + 'static;
    /// A parameter value that borrows for `'a`, such as `dyn ToSql + Sync + 'a`.
    type Param<'a>: ?Sized + Sync + 'a;
    /// What runs plain reads on this connection while another task holds it (adaptive
    /// pipelining, see [`pipeline`](crate::pipeline)); [`NoPipeline`](crate::NoPipeline)
    /// for a driver that cannot.
    type Pipeline: crate::pipeline::Pipeline<Self>;

    /// This connection's pipeline, or `None` (the default) when statements cannot be
    /// pipelined on it (the driver cannot, or a transaction pooler is in front).
    fn pipeline(&self) -> Option<Self::Pipeline> {
        None
    }

    /// Runs `sql` and collects every row.
    ///
    /// # Errors
    /// The server's error (with SQLSTATE and fields), [`ErrorKind::Timeout`], or a
    /// connection error.
    fn query<'p>(
        &mut self,
        sql: &str,
        params: &[&'p Self::Param<'p>],
    ) -> impl Future<Output = Result<Vec<Self::Row>>> + Send;

    /// Runs `sql` and returns the number of rows it affected.
    ///
    /// # Errors
    /// As [`query`](Queries::query).
    fn execute<'p>(
        &mut self,
        sql: &str,
        params: &[&'p Self::Param<'p>],
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Runs `sql`, which must return at most one row.
    ///
    /// # Errors
    /// [`ErrorKind::RowCount`] when it returns more than one; otherwise as
    /// [`query`](Queries::query).
    fn query_opt<'p>(
        &mut self,
        sql: &str,
        params: &[&'p Self::Param<'p>],
    ) -> impl Future<Output = Result<Option<Self::Row>>> + Send {
        async move {
            let mut rows = self.query(sql, params).await?;
            match rows.len() {
                0 | 1 => Ok(rows.pop()),
                n => Err(row_count_error(n, "at most one")),
            }
        }
    }

    /// Runs `sql`, which must return exactly one row.
    ///
    /// # Errors
    /// [`ErrorKind::RowCount`] when it returns none or several; otherwise as
    /// [`query`](Queries::query).
    fn query_one<'p>(
        &mut self,
        sql: &str,
        params: &[&'p Self::Param<'p>],
    ) -> impl Future<Output = Result<Self::Row>> + Send {
        async move {
            let mut rows = self.query(sql, params).await?;
            match rows.len() {
                1 => Ok(rows.pop().expect("one row")),
                n => Err(row_count_error(n, "exactly one")),
            }
        }
    }

    /// Runs `sql` in a transaction of its own that first runs `scope.prologue` (settings
    /// such as `SET LOCAL search_path = …`; tenant handles use it), then `scope.check` (a
    /// statement that fails when the settings are no longer the prologue's), commits, and
    /// returns the rows, only once the check has passed. Nothing of the prologue outlives
    /// the transaction. The default takes four round trips; drivers that pipeline send all
    /// the parts at once.
    ///
    /// # Errors
    /// The first error of the prologue, the statement or the commit (the transaction is
    /// then rolled back); [`ErrorKind::Security`] when the check fails (rolled back too:
    /// close the connection); [`ErrorKind::Other`] inside an open transaction.
    fn query_scoped<'p>(
        &mut self,
        scope: Scope<'_>,
        sql: &str,
        params: &[&'p Self::Param<'p>],
    ) -> impl Future<Output = Result<Vec<Self::Row>>> + Send
    where
        Self: Sized,
    {
        async move {
            begin_scope(self, scope.prologue).await?;
            let r = self.query(sql, params).await;
            let r = check_scope(self, scope.check, r).await;
            end_scope(self, r).await
        }
    }

    /// As [`query_scoped`](Queries::query_scoped), returning the rows affected.
    ///
    /// # Errors
    /// As [`query_scoped`](Queries::query_scoped).
    fn execute_scoped<'p>(
        &mut self,
        scope: Scope<'_>,
        sql: &str,
        params: &[&'p Self::Param<'p>],
    ) -> impl Future<Output = Result<u64>> + Send
    where
        Self: Sized,
    {
        async move {
            begin_scope(self, scope.prologue).await?;
            let r = self.execute(sql, params).await;
            let r = check_scope(self, scope.check, r).await;
            end_scope(self, r).await
        }
    }

    /// How long one statement may run before it is cancelled; `None` for no limit.
    fn query_timeout(&self) -> Option<Duration>;

    /// Sets the limit for the statements that follow (the pool restores the configured
    /// default when the connection is returned).
    fn set_query_timeout(&mut self, timeout: Option<Duration>);

    /// Whether a transaction block is open (possibly failed) on this connection.
    fn in_transaction(&self) -> bool;
}

/// What a scoped statement runs around it ([`Queries::query_scoped`]).
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    /// Run right after `BEGIN` (`SET LOCAL …`).
    pub prologue: &'a str,
    /// Run right after the statement; must fail (any error) when the settings of the
    /// prologue were changed. Empty for none.
    pub check: &'a str,
}

/// The error of a failed scope check: the statement changed what the prologue set.
pub fn scope_changed_error(node: &str) -> Error {
    Error::new(
        ErrorKind::Security,
        "the statement changed the scope it runs in (role, search_path or tenant setting); the transaction was rolled back and the connection is closed",
    )
    .with_node(node)
    .with_hint("a statement escaped the statement guard: report it; nothing it did was committed")
}

/// Runs the scope check after a statement that succeeded; its failure replaces the result.
async fn check_scope<C: Queries, T>(c: &mut C, check: &str, r: Result<T>) -> Result<T> {
    if r.is_err() || check.is_empty() {
        return r;
    }
    match crate::observe::internal(c.simple_query(check)).await {
        Ok(_) => r,
        Err(e) => Err(scope_changed_error(e.node().unwrap_or("?"))),
    }
}

/// `BEGIN` and the prologue of a scoped statement (rolled back if the prologue fails).
async fn begin_scope<C: Queries>(c: &mut C, prologue: &str) -> Result<()> {
    if c.in_transaction() {
        return Err(Error::new(
            ErrorKind::Other,
            "a scoped statement cannot run inside an open transaction",
        ));
    }
    let begin = format!("BEGIN; {prologue}");
    if let Err(e) = crate::observe::internal(c.simple_query(&begin)).await {
        let _ = crate::observe::internal(c.simple_query("ROLLBACK")).await;
        return Err(e);
    }
    Ok(())
}

/// Commits after a scoped statement that succeeded, rolls back after one that failed.
async fn end_scope<C: Queries, T>(c: &mut C, r: Result<T>) -> Result<T> {
    match r {
        Ok(v) => {
            crate::observe::internal(c.simple_query("COMMIT")).await?;
            Ok(v)
        }
        Err(e) => {
            let _ = crate::observe::internal(c.simple_query("ROLLBACK")).await;
            Err(e)
        }
    }
}

/// The error of a statement that returned `n` rows where `wanted` ("exactly one", "at most
/// one") were expected.
pub fn row_count_error(n: usize, wanted: &str) -> Error {
    Error::new(
        ErrorKind::RowCount,
        format!("query returned {n} rows, {wanted} expected"),
    )
    .with_hint(if n == 0 {
        "use query_opt when no row is a valid answer"
    } else {
        "add a WHERE clause on a unique key or LIMIT 1, or use query for many rows"
    })
}

/// Reads one column of a row as a `T`. Drivers implement it for their row type and every
/// type they can decode; [`FromRow`] builds on it.
pub trait Column<T> {
    /// The value of the column at `idx` (from 0).
    ///
    /// # Errors
    /// [`ErrorKind::Decode`] when there is no such column or its type does not match `T`.
    fn column(&self, idx: usize) -> Result<T>;

    /// The value of the column named `name`.
    ///
    /// # Errors
    /// As [`column`](Column::column).
    fn column_named(&self, name: &str) -> Result<T>;
}

/// Builds a value from a row. Implemented for tuples of up to 12 columns (by position), and
/// by `#[derive(FromRow)]` for structs (by field name; `pgprovider` re-exports the derive).
///
/// ```
/// use pgprovider_core::{Column, FromRow, Result};
/// struct User { id: i64, name: String }
/// impl<R: Column<i64> + Column<String>> FromRow<R> for User {
///     fn from_row(row: &R) -> Result<Self> {
///         Ok(User { id: row.column_named("id")?, name: row.column_named("name")? })
///     }
/// }
/// ```
pub trait FromRow<R>: Sized {
    /// Reads the row.
    ///
    /// # Errors
    /// [`ErrorKind::Decode`] when a column is missing or has another type.
    fn from_row(row: &R) -> Result<Self>;
}

macro_rules! tuple_from_row {
    ($($t:ident $i:tt),+) => {
        impl<R, $($t),+> FromRow<R> for ($($t,)+)
        where
            R: $(Column<$t> +)+,
        {
            fn from_row(row: &R) -> Result<Self> {
                Ok(($(<R as Column<$t>>::column(row, $i)?,)+))
            }
        }
    };
}

tuple_from_row!(A 0);
tuple_from_row!(A 0, B 1);
tuple_from_row!(A 0, B 1, C 2);
tuple_from_row!(A 0, B 1, C 2, D 3);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11);

#[cfg(test)]
mod tests {
    use super::*;

    struct Row(Vec<i64>);
    impl Column<i64> for Row {
        fn column(&self, idx: usize) -> Result<i64> {
            self.0
                .get(idx)
                .copied()
                .ok_or_else(|| Error::new(ErrorKind::Decode, format!("no column {idx}")))
        }
        fn column_named(&self, name: &str) -> Result<i64> {
            self.column(name.len())
        }
    }

    #[test]
    fn tuples_read_columns_by_position() {
        let row = Row(vec![1, 2, 3]);
        assert_eq!(<(i64,)>::from_row(&row).unwrap(), (1,));
        assert_eq!(<(i64, i64, i64)>::from_row(&row).unwrap(), (1, 2, 3));
        let e = <(i64, i64, i64, i64)>::from_row(&row).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Decode);
        assert_eq!(row.column_named("ab").unwrap(), 3);
    }

    #[test]
    fn row_count_errors_explain_themselves() {
        let e = row_count_error(0, "exactly one");
        assert_eq!(e.kind(), ErrorKind::RowCount);
        assert!(e.hint().unwrap().contains("query_opt"));
        assert!(row_count_error(2, "x").hint().unwrap().contains("LIMIT 1"));
    }
}
