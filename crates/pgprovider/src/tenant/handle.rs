//! [`Tenant`]: one tenant's handle, its statements and transactions run in its scope,
//! through the statement guard and the tenant's limits.

use super::*;
use crate::tx::{Follow, Tx, run_transaction};

/// One tenant's handle: the query and transaction API, bound to the tenant; see the
/// [module docs](crate::tenant). Cheap to clone.
pub struct Tenant<D: Driver> {
    pub(super) name: Arc<str>,
    /// The tenant's own schema (schema and role strategies): names qualified with another
    /// schema are refused.
    pub(super) schema: Option<Arc<str>>,
    /// The server-side scope check run after each statement.
    pub(super) check: Arc<str>,
    pub(super) strategy: Strategy,
    pub(super) tenancy: Tenancy<D>,
    pub(super) state: Arc<TenantState>,
    pub(super) prologue: Option<Arc<str>>,
}

impl<D: Driver> Clone for Tenant<D> {
    fn clone(&self) -> Self {
        Tenant {
            name: self.name.clone(),
            schema: self.schema.clone(),
            check: self.check.clone(),
            strategy: self.strategy,
            tenancy: self.tenancy.clone(),
            state: self.state.clone(),
            prologue: self.prologue.clone(),
        }
    }
}

impl<D: Driver> std::fmt::Debug for Tenant<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("name", &self.name)
            .field("strategy", &self.strategy)
            .finish()
    }
}

/// A connection a tenant holds: the pool's guard and the tenant's connection permit.
struct Held<D: Driver> {
    conn: Pooled<D>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<D: Driver + Clone> Tenant<D>
where
    D::Connection: Queries,
{
    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tenant's strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    fn limit_error(&self, what: String) -> Error {
        Error::new(ErrorKind::Rejected, format!("tenant {}: {what}", self.name))
            .with_tenant(self.name.to_string())
            .with_hint("the tenant is over its limit; retry later or raise the tenant's limit")
    }

    /// One operation's admission: the rate limit.
    fn admit(&self) -> Result<()> {
        if let Some((limiter, n)) = &self.state.rate {
            if limiter.check().is_err() {
                return Err(
                    self.limit_error(format!("over its limit of {n} operations per second"))
                );
            }
        }
        Ok(())
    }

    /// The tenant's connection permit (when it has a connection limit).
    fn permit(&self) -> Result<Option<OwnedSemaphorePermit>> {
        match &self.state.connections {
            None => Ok(None),
            Some(s) => s.clone().try_acquire_owned().map(Some).map_err(|_| {
                self.limit_error(format!(
                    "at its limit of {} concurrent connections",
                    self.state.max_connections
                ))
            }),
        }
    }

    /// A connection for the tenant: its permit, then a checkout.
    async fn get(&self) -> Result<Held<D>> {
        let permit = self.permit()?;
        let conn = match self.strategy {
            Strategy::Database => {
                let pool = Box::pin(self.tenancy.database_pool(&self.name)).await?;
                pool.get().await?
            }
            _ => Box::pin(self.tenancy.provider.write()).await?,
        };
        Ok(Held {
            conn,
            _permit: permit,
        })
    }

    /// The statement guard, with the tenant's own schema.
    fn check(&self, sql: &str) -> Result<()> {
        crate::guard::check(&self.name, self.schema.as_deref(), sql)
    }

    fn tx_options(&self, opts: &TxOptions) -> TxOptions {
        let mut o = opts.clone();
        o.tenant = Some(self.name.clone());
        o.tenant_schema = self.schema.clone();
        o.tenant_check = Some(self.check.clone());
        o.prologue = self.prologue.clone();
        o
    }

    /// Runs `f` in a transaction in the tenant's scope, as
    /// [`Pool::transaction`](crate::Pool::transaction) does (commit, rollback, re-runs).
    /// Statements through the [`Tx`] are checked against the tenant's scope too.
    ///
    /// # Errors
    /// As [`Pool::transaction`](crate::Pool::transaction); [`ErrorKind::Rejected`] for a
    /// limit or a refused statement.
    #[track_caller]
    pub fn transaction<T, E, F, Fut>(
        &self,
        opts: &TxOptions,
        f: F,
    ) -> impl Future<Output = Result<T, E>>
    where
        F: FnMut(Tx<D>) -> Fut + Send,
        Fut: Future<Output = Result<T, E>> + Send,
        E: From<Error> + Send,
        T: Send,
    {
        let origin = std::panic::Location::caller();
        async move {
            self.admit()?;
            let opts = self.tx_options(opts);
            // Each attempt holds the tenant's permit while it runs; an attempt starts only after
            // the previous one gave its connection back, so its permit goes first.
            let held: Mutex<Option<OwnedSemaphorePermit>> = Mutex::new(None);
            let get = |_| async {
                lock(&held).take();
                let h = self.get().await?;
                *lock(&held) = h._permit;
                Ok(h.conn)
            };
            // Boxed: the nested futures are large, and debug builds copy them on the stack.
            Box::pin(crate::observe::with_tenant(
                self.name.clone(),
                run_transaction(
                    &opts,
                    Follow {
                        failover: self.tenancy.provider.failover_timeout(),
                        read_only_moves: !opts.is_read_only(),
                    },
                    get,
                    f,
                    origin,
                ),
            ))
            .await
        }
    }

    /// Runs one statement in the tenant's scope and returns its rows.
    ///
    /// # Errors
    /// [`ErrorKind::Rejected`] for a refused statement or a limit; the server's error.
    pub async fn query<'p>(
        &self,
        sql: &str,
        params: &[&'p <D::Connection as Queries>::Param<'p>],
    ) -> Result<Vec<<D::Connection as Queries>::Row>> {
        self.check(sql)?;
        let scope = self.scope();
        self.one(|mut c: Pooled<D>| async move {
            let r = match scope {
                None => c.query(sql, params).await,
                Some(s) => c.query_scoped(s, sql, params).await,
            };
            self.after_scope(r, c)
        })
        .await
    }

    /// Runs one statement that returns exactly one row.
    ///
    /// # Errors
    /// As [`query`](Self::query), or [`ErrorKind::RowCount`].
    pub async fn query_one<'p>(
        &self,
        sql: &str,
        params: &[&'p <D::Connection as Queries>::Param<'p>],
    ) -> Result<<D::Connection as Queries>::Row> {
        let mut rows = self.query(sql, params).await?;
        match rows.len() {
            1 => Ok(rows.pop().expect("one row")),
            n => Err(Error::new(
                ErrorKind::RowCount,
                format!("query_one expected 1 row, got {n}"),
            )
            .with_tenant(self.name.to_string())),
        }
    }

    /// Runs one statement and reads every row as a `T`.
    ///
    /// # Errors
    /// As [`query`](Self::query), or [`ErrorKind::Decode`].
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

    /// Runs one statement in the tenant's scope and returns the rows it affected.
    ///
    /// # Errors
    /// As [`query`](Self::query).
    pub async fn execute<'p>(
        &self,
        sql: &str,
        params: &[&'p <D::Connection as Queries>::Param<'p>],
    ) -> Result<u64> {
        self.check(sql)?;
        let scope = self.scope();
        self.one(|mut c: Pooled<D>| async move {
            let r = match scope {
                None => c.execute(sql, params).await,
                Some(s) => c.execute_scoped(s, sql, params).await,
            };
            self.after_scope(r, c)
        })
        .await
    }

    /// The scope a statement of this tenant runs in, if its strategy sets one.
    fn scope(&self) -> Option<Scope<'_>> {
        self.prologue.as_deref().map(|p| Scope {
            prologue: p,
            check: &self.check,
        })
    }

    /// Gives `conn` back after a scoped statement, or closes it (and reports the breach)
    /// when the server found the scope changed.
    fn after_scope<T>(&self, r: Result<T>, conn: Pooled<D>) -> Result<T> {
        if let Err(e) = &r {
            if e.kind() == ErrorKind::Security {
                crate::guard::scope_breach(&self.name, e);
                Pooled::discard(conn);
            }
        }
        r
    }

    /// Runs a read-only statement in the tenant's scope on a node chosen by the provider's
    /// read routing (a standby within the lag bound, else the primary when allowed; the next
    /// candidate when a node fails), with the same statement guard and server-side scope
    /// check as [`query`](Self::query). Under the database strategy the tenant's database
    /// pool is on the primary, so this is [`query`](Self::query).
    ///
    /// # Errors
    /// As [`query`](Self::query); a write fails on a standby with SQLSTATE `25006`.
    pub async fn read_query<'p>(
        &self,
        sql: &str,
        params: &[&'p <D::Connection as Queries>::Param<'p>],
    ) -> Result<Vec<<D::Connection as Queries>::Row>> {
        if self.strategy == Strategy::Database {
            return self.query(sql, params).await;
        }
        self.check(sql)?;
        self.admit()?;
        let _permit = self.permit()?;
        let run = |mut conn: Pooled<D>| async move {
            let r = match self.prologue.as_deref() {
                None => conn.query(sql, params).await,
                Some(p) => {
                    let scope = Scope {
                        prologue: p,
                        check: &self.check,
                    };
                    conn.query_scoped(scope, sql, params).await
                }
            };
            self.after_scope(r, conn)
        };
        let fut =
            crate::observe::with_tenant(self.name.clone(), self.tenancy.provider.read_with(run));
        Box::pin(fut)
            .await
            .map_err(|e| e.with_tenant(self.name.to_string()))
    }

    /// One statement on a tenant connection (`run` gives the connection back or closes it):
    /// on the tenant's database pool under the database strategy, else through the
    /// provider's request path to the primary, retried as any statement is (a refusal as
    /// read-only or a statement never sent runs again on the new primary). The tenant's
    /// admission and connection permit hold across the attempts.
    async fn one<T, F, Fut>(&self, run: F) -> Result<T>
    where
        F: Fn(Pooled<D>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.admit()?;
        let name = self.name.clone();
        let fut = crate::observe::with_tenant(name, async {
            let _permit = self.permit()?;
            match self.strategy {
                Strategy::Database => {
                    let pool = Box::pin(self.tenancy.database_pool(&self.name)).await?;
                    let conn = pool.get().await?;
                    run(conn).await
                }
                _ => {
                    let primary = crate::provider::route::Target::Primary;
                    Box::pin(self.tenancy.provider.run(primary, false, run)).await
                }
            }
        });
        // Unoptimised builds copy this large future along the stack at every level of
        // nesting (enough to overflow a 2 MiB test thread); optimised builds do not, and a
        // box per statement would cost them ~5 µs (measured by the tenancy benchmark).
        #[cfg(debug_assertions)]
        let fut = Box::pin(fut);
        fut.await.map_err(|e| e.with_tenant(self.name.to_string()))
    }
}

crate::client::delegate_client!(Tenant, Clone + Sync);
