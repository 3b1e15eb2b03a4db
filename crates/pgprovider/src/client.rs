//! [`Client`]: the query surface every shared handle offers, so code written against it runs
//! on any of them: the [`Provider`](crate::provider::Provider) and its
//! [`Routed`](crate::provider::Routed) handles (read, primary, after a token), a
//! [`Pool`](crate::Pool), a transaction ([`Tx`](crate::Tx)) and a tenant
//! ([`Tenant`](crate::tenant::Tenant)). A checked-out connection offers the same methods
//! through [`Queries`](crate::Queries) (with `&mut self`: it is one session).
//!
//! ```no_run
//! use pgprovider::{Client, Result};
//!
//! /// Runs on a provider, a read handle, a pool, a transaction or a tenant.
//! async fn count_orders<C: Client>(db: &C) -> Result<u64> {
//!     db.execute("UPDATE orders SET seen = true WHERE NOT seen", &[]).await
//! }
//! ```

use crate::rows::{at_most_one, one, rows_as};
use crate::{FromRow, Result};
use std::future::Future;

/// The query surface of a shared handle; see the [module docs](self).
pub trait Client: Sync {
    /// A result row (the driver's own).
    type Row: Send + 'static;
    /// A parameter value (the driver's own), such as `dyn ToSql + Sync`.
    type Param<'a>: ?Sized + Sync + 'a;

    /// Runs `sql` and collects every row.
    ///
    /// # Errors
    /// The server's error, a routing or checkout error, a refusal of a layer.
    fn query<'p>(
        &self,
        sql: &str,
        params: &[&'p Self::Param<'p>],
    ) -> impl Future<Output = Result<Vec<Self::Row>>> + Send;

    /// Runs `sql` and returns the number of rows it affected.
    ///
    /// # Errors
    /// As [`query`](Client::query).
    fn execute<'p>(
        &self,
        sql: &str,
        params: &[&'p Self::Param<'p>],
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Runs `sql`, which must return exactly one row.
    ///
    /// # Errors
    /// [`ErrorKind::RowCount`](crate::ErrorKind::RowCount) when it returns none or several;
    /// otherwise as [`query`](Client::query).
    fn query_one<'p>(
        &self,
        sql: &str,
        params: &[&'p Self::Param<'p>],
    ) -> impl Future<Output = Result<Self::Row>> + Send {
        async move { one(self.query(sql, params).await?) }
    }

    /// Runs `sql`, which must return at most one row.
    ///
    /// # Errors
    /// [`ErrorKind::RowCount`](crate::ErrorKind::RowCount) when it returns several;
    /// otherwise as [`query`](Client::query).
    fn query_opt<'p>(
        &self,
        sql: &str,
        params: &[&'p Self::Param<'p>],
    ) -> impl Future<Output = Result<Option<Self::Row>>> + Send {
        async move { at_most_one(self.query(sql, params).await?) }
    }

    /// Runs `sql` and reads every row as a `T`.
    ///
    /// # Errors
    /// As [`query`](Client::query), or [`ErrorKind::Decode`](crate::ErrorKind::Decode).
    fn query_as<'p, T: FromRow<Self::Row> + Send>(
        &self,
        sql: &str,
        params: &[&'p Self::Param<'p>],
    ) -> impl Future<Output = Result<Vec<T>>> + Send {
        async move { rows_as(self.query(sql, params).await?) }
    }
}

/// Implements [`Client`] for a handle by delegating to its inherent methods of the same
/// names.
macro_rules! delegate_client {
    ($ty:ident, $($bound:tt)*) => {
        impl<D: $crate::Driver + $($bound)*> $crate::Client for $ty<D>
        where
            D::Connection: $crate::Queries,
        {
            type Row = <D::Connection as $crate::Queries>::Row;
            type Param<'a> = <D::Connection as $crate::Queries>::Param<'a>;

            fn query<'p>(
                &self,
                sql: &str,
                params: &[&'p Self::Param<'p>],
            ) -> impl ::std::future::Future<Output = $crate::Result<Vec<Self::Row>>> + Send {
                $ty::query(self, sql, params)
            }

            fn execute<'p>(
                &self,
                sql: &str,
                params: &[&'p Self::Param<'p>],
            ) -> impl ::std::future::Future<Output = $crate::Result<u64>> + Send {
                $ty::execute(self, sql, params)
            }
        }
    };
}
pub(crate) use delegate_client;
