//! The provider's query surface, and [`Routed`] handles that offer it for one route.

use super::path::current_lsn;
use super::route::Target;
use super::{ConsistencyToken, Provider};
use crate::pool::Pooled;
use crate::rows::{at_most_one, one, rows_as};
use crate::tx::{Follow, Tx, TxOptions, run_transaction};
use crate::{Driver, Error, FromRow, Queries, Result};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

type Param<'p, D> = <<D as Driver>::Connection as Queries>::Param<'p>;
type Row<D> = <<D as Driver>::Connection as Queries>::Row;

/// The provider's surface for one route: statements, transactions and checkouts sent to the
/// primary ([`Provider::primary`]), to standbys ([`Provider::read`]), or to a node that has
/// seen a write ([`Provider::read_after`]), through the same layers as the provider's own
/// methods. Cheap to clone.
///
/// ```no_run
/// # async fn run(provider: pgprovider::provider::Provider<pgprovider_tokio_postgres::TokioPostgres>) -> pgprovider::Result<()> {
/// let rows = provider.read().query("SELECT id FROM items", &[]).await?;
/// // A statement that is safe to run twice may be retried after a broken connection.
/// provider.primary().idempotent().execute("UPDATE items SET seen = true WHERE id = $1", &[&1_i64]).await?;
/// # Ok(()) }
/// ```
pub struct Routed<D: Driver> {
    provider: Provider<D>,
    target: Target,
    idempotent: bool,
    /// The application role acting ([`Provider::as_role`]).
    role: Option<Arc<str>>,
}

impl<D: Driver> Clone for Routed<D> {
    fn clone(&self) -> Self {
        Routed {
            provider: self.provider.clone(),
            target: self.target,
            idempotent: self.idempotent,
            role: self.role.clone(),
        }
    }
}

impl<D: Driver> fmt::Debug for Routed<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Routed")
            .field("target", &self.target)
            .field("idempotent", &self.idempotent)
            .field("role", &self.role)
            .finish()
    }
}

impl<D: Driver> Routed<D> {
    /// The same route, for statements that are safe to run twice: one whose connection
    /// broke mid-way (it may or may not have run) is run again, on the new primary after a
    /// failover. Reads are always.
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// The same route, acting as the application role `role` (see
    /// [`access`](crate::access)): every statement, transaction and checkout-free
    /// operation of the handle is checked against the role's permissions, and runs as its
    /// server role when one is mapped.
    pub fn as_role(mut self, role: &str) -> Self {
        self.role = Some(Arc::from(role));
        self
    }

    /// A connection on this route, for the driver's own operations (batches, COPY,
    /// streams, LISTEN).
    ///
    /// # Errors
    /// As the route's checkout: no node qualifies within the failover timeout, or the pool's
    /// error.
    pub async fn conn(&self) -> Result<Pooled<D>> {
        self.provider.checkout(self.target).await
    }

    /// Runs `fut` with this handle's role acting (for the driver's own operations on a
    /// connection from [`conn`](Self::conn): batches, COPY, streams).
    pub async fn scope<F: Future>(&self, fut: F) -> F::Output {
        match &self.role {
            Some(r) => crate::access::with_role(r.clone(), fut).await,
            None => fut.await,
        }
    }
}

/// The surface, once for the provider (its default route) and its handles.
macro_rules! surface {
    ($ty:ident, $doc:literal) => {
        impl<D: Driver> $ty<D>
        where
            D::Connection: Queries,
        {
            #[doc = concat!("Runs a statement ", $doc, " and returns its rows.")]
            ///
            /// # Errors
            /// The statement's error (after the retries the [retry layer](crate::retry)
            /// allows), or a routing error naming every node's state.
            pub async fn query<'p>(
                &self,
                sql: &str,
                params: &[&'p Param<'p, D>],
            ) -> Result<Vec<Row<D>>> {
                if let Some(role) = self.acting() {
                    if self.provider().server_role(&role).is_some() {
                        return self
                            .transaction(&TxOptions::new(), |tx| async move { tx.query(sql, params).await })
                            .await;
                    }
                    return crate::access::with_role(role, self.plain_query(sql, params)).await;
                }
                self.plain_query(sql, params).await
            }

            async fn plain_query<'p>(
                &self,
                sql: &str,
                params: &[&'p Param<'p, D>],
            ) -> Result<Vec<Row<D>>> {
                let (target, idempotent) = self.route();
                if let Some(r) = self.provider().pipelined_read(target, sql, params).await {
                    return r;
                }
                self.provider()
                    .run(target, idempotent, |c| {
                        Pooled::shared(c, sql, async |c| c.query(sql, params).await)
                    })
                    .await
            }

            #[doc = concat!("Runs a statement ", $doc, " and returns the rows it affected.")]
            ///
            /// # Errors
            /// As `query`.
            pub async fn execute<'p>(&self, sql: &str, params: &[&'p Param<'p, D>]) -> Result<u64> {
                if let Some(role) = self.acting() {
                    if self.provider().server_role(&role).is_some() {
                        return self
                            .transaction(&TxOptions::new(), |tx| async move { tx.execute(sql, params).await })
                            .await;
                    }
                    return crate::access::with_role(role, self.plain_execute(sql, params)).await;
                }
                self.plain_execute(sql, params).await
            }

            async fn plain_execute<'p>(&self, sql: &str, params: &[&'p Param<'p, D>]) -> Result<u64> {
                let (target, idempotent) = self.route();
                self.provider()
                    .run(target, idempotent, |c| {
                        Pooled::shared(c, sql, async |c| c.execute(sql, params).await)
                    })
                    .await
            }

            #[doc = concat!("Runs a statement ", $doc, " that returns exactly one row.")]
            ///
            /// # Errors
            /// As `query`, or [`ErrorKind::RowCount`](crate::ErrorKind::RowCount).
            pub async fn query_one<'p>(
                &self,
                sql: &str,
                params: &[&'p Param<'p, D>],
            ) -> Result<Row<D>> {
                one(self.query(sql, params).await?)
            }

            #[doc = concat!("Runs a statement ", $doc, " that returns at most one row.")]
            ///
            /// # Errors
            /// As `query`, or [`ErrorKind::RowCount`](crate::ErrorKind::RowCount).
            pub async fn query_opt<'p>(
                &self,
                sql: &str,
                params: &[&'p Param<'p, D>],
            ) -> Result<Option<Row<D>>> {
                at_most_one(self.query(sql, params).await?)
            }

            #[doc = concat!("Runs a statement ", $doc, " and reads every row as a `T`.")]
            ///
            /// # Errors
            /// As `query`, or [`ErrorKind::Decode`](crate::ErrorKind::Decode).
            pub async fn query_as<'p, T: FromRow<Row<D>>>(
                &self,
                sql: &str,
                params: &[&'p Param<'p, D>],
            ) -> Result<Vec<T>> {
                rows_as(self.query(sql, params).await?)
            }

            #[doc = concat!("Runs `f` in a transaction ", $doc, ": commits when it returns `Ok`, rolls back when it returns `Err`, and runs it again after a conflict (`40001`, `40P01`) or when its connection was lost before `COMMIT` was sent (on the new primary, within the failover timeout). A `COMMIT` whose reply is lost is never run again: [`ErrorKind::OutcomeUnknown`](crate::ErrorKind::OutcomeUnknown). See [`tx`](crate::tx).")]
            ///
            /// # Errors
            /// `f`'s error; the commit's; [`ErrorKind::Timeout`](crate::ErrorKind::Timeout)
            /// past the deadline; routing errors.
            #[track_caller]
            pub fn transaction<T, E, F, Fut>(&self, opts: &TxOptions, f: F) -> impl Future<Output = Result<T, E>>
            where
                F: FnMut(Tx<D>) -> Fut + Send,
                Fut: Future<Output = Result<T, E>> + Send,
                E: From<Error> + Send,
                T: Send,
            {
                let origin = std::panic::Location::caller();
                let role = self.acting();
                // A mapped server role is taken inside the transaction (SET LOCAL ROLE).
                let mut opts = opts.clone();
                if let Some(server) = role.as_deref().and_then(|r| self.provider().server_role(r)) {
                    opts.prologue = Some(Arc::from(format!("SET LOCAL ROLE {}", crate::migrate::ident(&server))));
                    // After every statement the server must still run as that role (a
                    // statement that left it, or ended the transaction, kills it).
                    opts.tenant_check = Some(Arc::from(format!(
                        "SELECT CASE WHEN current_user = {} THEN true ELSE pg_catalog.current_setting('pgprovider.role_changed')::bool END",
                        crate::migrate::literal(&server)
                    )));
                }
                let run = async move {
                let opts = &opts;
                let (target, _) = self.route();
                let provider = self.provider();
                // After a refusal as read-only, the primary for the attempts that follow.
                let to_primary = std::sync::atomic::AtomicBool::new(false);
                let to_primary = &to_primary;
                let get = |moved: Option<Error>| async move {
                    use std::sync::atomic::Ordering::Relaxed;
                    if let Some(e) = moved {
                        provider.fresh_look(&e, provider.look_limit()).await;
                        if e.is_read_only() {
                            if provider.refused_by_primary(&e) {
                                return Err(super::path::primary_refused(e));
                            }
                            to_primary.store(true, Relaxed);
                        }
                    }
                    let t = if to_primary.load(Relaxed) && !target.is_primary() {
                        Target::Primary
                    } else {
                        target
                    };
                    provider.checkout(t).await
                };
                let follow = Follow {
                    failover: provider.failover_timeout(),
                    read_only_moves: target.may_write() && !opts.is_read_only(),
                };
                Box::pin(run_transaction(opts, follow, get, f, origin)).await
                };
                async move {
                    match role {
                        Some(r) => crate::access::with_role(r, run).await,
                        None => run.await,
                    }
                }
            }
        }
    };
}

surface!(Provider, "on the provider's route (`target_session_attrs`)");
surface!(Routed, "on this handle's route");

impl<D: Driver> Routed<D> {
    fn route(&self) -> (Target, bool) {
        (self.target, self.idempotent)
    }
    fn acting(&self) -> Option<Arc<str>> {
        self.role.clone().or_else(crate::access::current_role)
    }
    fn provider(&self) -> &Provider<D> {
        &self.provider
    }
}

impl<D: Driver> Provider<D> {
    fn route(&self) -> (Target, bool) {
        (self.inner.default, false)
    }
    fn acting(&self) -> Option<Arc<str>> {
        crate::access::current_role()
    }

    /// The server role mapped to the application role `role`, if any.
    fn server_role(&self, role: &str) -> Option<String> {
        self.inner
            .access
            .as_ref()?
            .get(role)?
            .server_role()
            .map(str::to_owned)
    }

    /// The provider's route, acting as the application role `role` (see
    /// [`access`](crate::access) and [`Routed::as_role`]); `provider.read().as_role(..)`
    /// for reads.
    ///
    /// ```no_run
    /// # async fn run(provider: pgprovider::provider::Provider<pgprovider_tokio_postgres::TokioPostgres>) -> pgprovider::Result<()> {
    /// let analyst = provider.as_role("analyst");
    /// let rows = analyst.query("SELECT * FROM reports.daily", &[]).await?;
    /// # Ok(()) }
    /// ```
    pub fn as_role(&self, role: &str) -> Routed<D> {
        self.routed(self.inner.default).as_role(role)
    }
    fn provider(&self) -> &Provider<D> {
        self
    }

    fn routed(&self, target: Target) -> Routed<D> {
        Routed {
            provider: self.clone(),
            target,
            idempotent: false,
            role: None,
        }
    }

    /// Statements to the primary, whatever `target_session_attrs` says (waiting for one
    /// during a failover).
    pub fn primary(&self) -> Routed<D> {
        self.routed(Target::Primary)
    }

    /// Reads: standbys within the lag bounds (balanced, the next one when a node fails),
    /// else the primary when allowed. Statements here are taken as reads: after a node
    /// failure they run again elsewhere (a timeout excepted), so send writes, and reads with
    /// side effects (`nextval`, functions that write), through the provider or
    /// [`primary`](Self::primary).
    pub fn read(&self) -> Routed<D> {
        self.routed(Target::Read)
    }

    /// Reads that see everything committed before `token` was taken
    /// ([`consistency_token`](Self::consistency_token)): a standby that has replayed it
    /// (waiting up to `wait` for one to catch up), else the primary. Never a node behind it.
    pub fn read_after(&self, token: ConsistencyToken, wait: Duration) -> Routed<D> {
        self.routed(Target::After(token, wait))
    }

    /// A connection on the provider's route (`target_session_attrs`), for the driver's own
    /// operations (batches, COPY, streams).
    ///
    /// # Errors
    /// As [`Routed::conn`].
    pub async fn conn(&self) -> Result<Pooled<D>> {
        self.checkout(self.inner.default).await
    }

    /// A connection to the primary, waiting for one during a failover (as
    /// `provider.primary().conn()`).
    ///
    /// # Errors
    /// [`ErrorKind::Connect`](crate::ErrorKind::Connect) when no primary appeared within
    /// the failover timeout (naming every node's state); the pool's error when the
    /// primary's checkout fails past it.
    pub async fn write(&self) -> Result<Pooled<D>> {
        self.checkout(Target::Primary).await
    }

    /// The position a read must have seen to include everything committed so far (on any
    /// connection): the primary's current WAL position.
    ///
    /// # Errors
    /// As [`write`](Self::write), or the server's error.
    pub async fn consistency_token(&self) -> Result<ConsistencyToken> {
        let mut conn = self.checkout(Target::Primary).await?;
        current_lsn(&mut *conn).await
    }
}

crate::client::delegate_client!(Provider, Sync);
crate::client::delegate_client!(Routed, Sync);
