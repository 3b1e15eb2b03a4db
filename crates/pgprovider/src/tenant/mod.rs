//! Multi-tenancy: a handle per tenant with the query and transaction API, bound to the
//! tenant by one of four isolation strategies, with per-tenant limits and provisioning.
//!
//! ```no_run
//! # async fn run() -> pgprovider::Result<()> {
//! use pgprovider::Queries;
//! use pgprovider::provider::{Provider, TopologyOptions};
//! use pgprovider::tenant::{Strategy, Tenancy, TenancyOptions, TenantLimits};
//! let config = pgprovider::Config::from_url("postgres://app@db1,db2/app")?;
//! let provider = Provider::new(pgprovider_tokio_postgres::TokioPostgres::new(), &config, TopologyOptions::default());
//! let tenants = Tenancy::new(
//!     provider,
//!     TenancyOptions::new(Strategy::Role)
//!         .with_limits(TenantLimits::default().with_max_connections(4).with_ops_per_second(500)),
//! );
//! tenants.create_tenant("acme", None).await?;
//! let acme = tenants.tenant("acme")?;
//! acme.execute("INSERT INTO orders (item) VALUES ($1)", &[&"book"]).await?;
//! # Ok(()) }
//! ```
//!
//! ## Strategies, and what each protects against
//!
//! Every tenant operation runs in a transaction that first sets the tenant's scope with
//! `SET LOCAL` (so nothing of it can outlive the transaction, and a connection never goes
//! back to the pool carrying a tenant's settings). A single statement is sent together with
//! its `BEGIN` + settings, the server's scope check and its `COMMIT` in one pipelined window
//! ([`Queries::query_scoped`]): no extra round trip. In a transaction closure the settings
//! ride with its `BEGIN`, and each statement is followed by the scope check (one more round
//! trip per statement).
//!
//! | strategy | what is set (and checked by the server after each statement) | keeps apart | does **not** stop |
//! | --- | --- | --- | --- |
//! | [`Strategy::Schema`] | `search_path` = the tenant's schema; the role stays the login role | other tenants' tables, views, sequences and functions: names qualified with another schema are refused by the guard (the login role could read them: the boundary is the guard) | server-side code that already exists and reads other schemas (a function in `public` owned by the login role), and what a powerful login role can reach by other routes: the guard was hardened by two adversarial reviews, but with hostile tenants use the role strategy, and never a superuser login |
//! | [`Strategy::Role`] | as schema, plus `ROLE` = the tenant's role (owner of its schema, nothing else granted) | as schema, and by the server's permissions too | what the login role grants to `PUBLIC` |
//! | [`Strategy::RowLevel`] | `ROLE` = a shared unprivileged role, `app.tenant_id` = the tenant | rows of shared tables with the policy of [`Tenancy::enable_row_level`] (reads and writes) | tables without the policy |
//! | [`Strategy::Database`] | nothing: a pool per tenant database | everything: PostgreSQL has no cross-database queries | |
//!
//! **The tenant's own SQL cannot leave its scope**, in three layers:
//! 1. *The statement guard* decides on PostgreSQL's own parse tree (libpg_query), never on
//!    text, before anything is sent, for every tenant API ([`Tenant::query`],
//!    [`Tenant::execute`], [`Tenant::read_query`], statements of [`Tenant::transaction`]):
//!    one statement of an allowed kind (queries, data changes, DDL on tables, indexes, views
//!    and sequences, `COPY` to and from the client), no function that changes settings or
//!    reaches outside the database, however it is spelled, and (schema and role strategies)
//!    no other schema named. Everything else is refused with [`ErrorKind::Rejected`] naming
//!    the tenant, the statement kind and why: transaction control of every kind, `SET` /
//!    `RESET` / roles, `DISCARD`, `DO`, functions, procedures, triggers, rules, `PREPARE` /
//!    `EXECUTE`, `LISTEN` / `NOTIFY`, `LOAD`, `ALTER SYSTEM` / `ROLE`, files, programs, large
//!    objects, writes to `pg_settings`, and what the parser cannot parse. The list is in the
//!    `guard` module; decisions are cached per statement text. A tenant transaction does
//!    not hand out its bare connection ([`Tx::conn`](crate::Tx::conn) is refused).
//! 2. *The server checks the scope* after every statement, in the same round trip (the
//!    tokio-postgres driver pipelines it with the statement): the role, `search_path` and
//!    `app.tenant_id` must still be those the provider set, or the check fails, which aborts
//!    the transaction. The statement's rows reach the caller only once the check passed; on
//!    a failure nothing is committed, the connection is closed, the error is
//!    [`ErrorKind::Security`] (so audit logs record it) and an `error` event goes to target
//!    `pgprovider::security`. This catches what the guard cannot see: an existing function
//!    that changes settings inside the statement.
//! 3. *The server's permissions* (role and row-level strategies): a `SECURITY DEFINER`
//!    function the tenant did not create runs as its owner, so do not give tenants access to
//!    such functions owned by privileged roles. The login role should not be a superuser in
//!    production (superusers bypass row-level security; the row-level strategy switches to
//!    its unprivileged role for that reason).
//!
//! What the adversarial suite proves (`a_hostile_tenant_cannot_leave_its_scope_under_any_strategy`
//! and `the_server_catches_a_scope_change_the_guard_cannot_see` in the tokio-postgres
//! driver's tests): 94 attacks (quoted, escaped and qualified names; comments and dollar
//! quoting; transaction control and savepoints; settings and roles by statement, function
//! and `pg_settings`; server-side code, `COPY`, files, prepared statements, notifications;
//! catalog and grant changes) through `query`, `execute` and transactions, under each of the
//! four strategies, read and change none of another tenant's rows, and leave every pooled
//! connection in its default scope; two tenants taking turns on the same connections see
//! only their own rows; a scope change made by an allowed function is caught by the server
//! under the schema, role and row-level strategies.
//!
//! ## Limits
//! Per tenant ([`TenantLimits`], default and per-tenant overrides): concurrent connections
//! and operations per second (a token bucket, [`governor`]) fail at once with
//! [`ErrorKind::Rejected`] naming the tenant and the limit; `statement_timeout` is set for
//! the tenant's transactions (the server's `57014` when exceeded). A tenant at its
//! connection limit cannot take more of the shared pool: others keep being served.
//!
//! ## Provisioning
//! [`Tenancy::create_tenant`] and [`Tenancy::drop_tenant`] are idempotent; creation applies
//! the given migrations (to the tenant's schema, or its database). Names are lowercase
//! letters, digits and `_`, starting with a letter, at most 40 characters, not `pg_…`;
//! they are always quoted as identifiers.

use crate::config::Config;
use crate::migrate::Migrator;
use crate::pool::{Pool, Pooled};
use crate::provider::Provider;
use crate::tx::TxOptions;
use crate::{Connection, Driver, Error, ErrorKind, FromRow, Queries, Result, Scope};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

mod options;

pub use options::{Strategy, TenancyOptions, TenantLimits};

/// A tenant's runtime state: its limiters.
struct TenantState {
    connections: Option<Arc<Semaphore>>,
    max_connections: usize,
    rate: Option<(DefaultDirectRateLimiter, u32)>,
}

struct DbPool<D: Driver> {
    pool: Pool<D>,
    last_used: Instant,
}

/// The state of a tenancy, apart from its provider (so a provider can hold it).
pub(crate) struct Shared<D: Driver> {
    options: TenancyOptions,
    states: Mutex<HashMap<String, Arc<TenantState>>>,
    databases: Mutex<HashMap<String, DbPool<D>>>,
}

/// Tenant handles over a provider; see the [module docs](self). Cheap to clone.
pub struct Tenancy<D: Driver> {
    provider: Provider<D>,
    inner: Arc<Shared<D>>,
}

impl<D: Driver> Shared<D> {
    pub(crate) fn new(options: TenancyOptions) -> Self {
        Shared {
            options,
            states: Mutex::new(HashMap::new()),
            databases: Mutex::new(HashMap::new()),
        }
    }
}

impl<D: Driver> Clone for Tenancy<D> {
    fn clone(&self) -> Self {
        Tenancy {
            provider: self.provider.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<D: Driver> std::fmt::Debug for Tenancy<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenancy")
            .field("strategy", &self.inner.options.strategy)
            .finish()
    }
}

/// Checks a tenant name; see the [module docs](self).
///
/// # Errors
/// [`ErrorKind::Config`] saying what is wrong with it.
pub fn check_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::new(
            ErrorKind::Config,
            format!("invalid tenant name {name:?}: {why}"),
        )
        .with_hint(
            "use lowercase letters, digits and _, starting with a letter, at most 40 characters",
        ))
    };
    if name.is_empty() || name.len() > 40 {
        return bad("it must have 1 to 40 characters");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return bad("it must start with a lowercase letter");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return bad("only lowercase letters, digits and _ are allowed");
    }
    if name.starts_with("pg_") {
        return bad("names starting with pg_ are reserved by PostgreSQL");
    }
    Ok(())
}

/// `name` quoted as an identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Refuses statements that would leave `tenant`'s scope, deciding on PostgreSQL's parse
/// tree (see the [module docs](self)); decisions are cached per statement text. Tenant
/// handles also refuse names qualified with another schema under the schema and role
/// strategies.
///
/// # Errors
/// [`ErrorKind::Rejected`] naming the tenant, the statement kind and why.
pub fn check_statement(tenant: &str, sql: &str) -> Result<()> {
    crate::guard::check(tenant, None, sql)
}

impl<D: Driver + Clone> Tenancy<D> {
    /// Tenancy over `provider` (its primary for the shared strategies; tenant databases on
    /// the primary's node).
    pub fn new(provider: Provider<D>, options: TenancyOptions) -> Self {
        Self::from_parts(provider, Arc::new(Shared::new(options)))
    }

    pub(crate) fn from_parts(provider: Provider<D>, inner: Arc<Shared<D>>) -> Self {
        Tenancy { provider, inner }
    }

    /// The provider the tenants' statements run on.
    pub fn provider(&self) -> &Provider<D> {
        &self.provider
    }

    /// The strategy for `tenant`.
    pub fn strategy_of(&self, tenant: &str) -> Strategy {
        let o = &self.inner.options;
        o.overrides.get(tenant).copied().unwrap_or(o.strategy)
    }

    fn limits_of(&self, tenant: &str) -> &TenantLimits {
        let o = &self.inner.options;
        o.tenant_limits.get(tenant).unwrap_or(&o.limits)
    }

    /// The handle of `tenant`. Nothing is sent to the server.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] for an invalid name.
    pub fn tenant(&self, name: &str) -> Result<Tenant<D>> {
        check_name(name)?;
        let strategy = self.strategy_of(name);
        let limits = self.limits_of(name).clone();
        let state = {
            let mut states = lock(&self.inner.states);
            states
                .entry(name.to_owned())
                .or_insert_with(|| {
                    Arc::new(TenantState {
                        connections: limits.max_connections.map(|n| Arc::new(Semaphore::new(n))),
                        max_connections: limits.max_connections.unwrap_or(0),
                        rate: limits
                            .ops_per_second
                            .map(|n| (RateLimiter::direct(Quota::per_second(n)), n.get())),
                    })
                })
                .clone()
        };
        let o = &self.inner.options;
        let schema = format!("{}{name}", o.schema_prefix);
        let mut settings = Vec::new();
        match strategy {
            Strategy::Schema => {
                settings.push(format!("SET LOCAL search_path = {}", ident(&schema)))
            }
            Strategy::Role => {
                settings.push(format!("SET LOCAL search_path = {}", ident(&schema)));
                settings.push(format!(
                    "SET LOCAL ROLE {}",
                    ident(&format!("{}{name}", o.role_prefix))
                ));
            }
            Strategy::RowLevel => {
                settings.push(format!("SET LOCAL ROLE {}", ident(&o.row_level_role)));
                settings.push(format!("SET LOCAL app.tenant_id = '{name}'"));
            }
            Strategy::Database => {}
        }
        if let Some(t) = limits.statement_timeout {
            settings.push(format!(
                "SET LOCAL statement_timeout = {}",
                t.as_millis().max(1)
            ));
        }
        let prologue = (!settings.is_empty()).then(|| Arc::from(settings.join("; ")));
        // What the server must still see after each of the tenant's statements (defence in
        // depth behind the statement guard): the role, search_path and tenant setting the
        // prologue set. On any difference the check fails, which aborts the transaction.
        let literal = crate::migrate::literal;
        let path = format!(
            "pg_catalog.current_setting('search_path') = pg_catalog.quote_ident({})",
            literal(&schema)
        );
        let conditions = match strategy {
            Strategy::Schema => vec!["current_user = session_user".to_owned(), path],
            Strategy::Role => vec![
                format!(
                    "current_user = {}",
                    literal(&format!("{}{name}", o.role_prefix))
                ),
                path,
            ],
            Strategy::RowLevel => vec![
                format!("current_user = {}", literal(&o.row_level_role)),
                format!(
                    "pg_catalog.current_setting('app.tenant_id', true) = {}",
                    literal(name)
                ),
            ],
            Strategy::Database => vec!["current_user = session_user".to_owned()],
        };
        let check = Arc::from(format!(
            "SELECT CASE WHEN {} THEN true ELSE pg_catalog.current_setting('pgprovider.tenant_scope_changed')::bool END",
            conditions.join(" AND ")
        ));
        let own_schema = matches!(strategy, Strategy::Schema | Strategy::Role)
            .then(|| Arc::from(schema.as_str()));
        Ok(Tenant {
            name: Arc::from(name),
            schema: own_schema,
            check,
            strategy,
            tenancy: self.clone(),
            state,
            prologue,
        })
    }

    /// The pool of `tenant`'s database on the primary, opened on first use; closes pools
    /// unused past the idle timeout and, over the cap, the least recently used.
    async fn database_pool(&self, tenant: &str) -> Result<Pool<D>> {
        let provider = &self.provider;
        let node = match provider.monitor().primary() {
            Some(n) => n,
            None => {
                provider
                    .monitor()
                    .wait_for_primary(provider.failover_timeout())
                    .await?
            }
        };
        let o = &self.inner.options;
        let db = format!("{}{tenant}", o.database_prefix);
        let key = format!("{db}@{node}");
        let now = Instant::now();
        let mut closing = Vec::new();
        let pool = {
            let mut dbs = lock(&self.inner.databases);
            dbs.retain(|k, p| {
                let keep = *k == key || now.duration_since(p.last_used) < o.database_idle_timeout;
                if !keep {
                    closing.push(p.pool.clone());
                }
                keep
            });
            if !dbs.contains_key(&key) {
                while dbs.len() >= o.max_open_databases {
                    let oldest = dbs
                        .iter()
                        .min_by_key(|(_, p)| p.last_used)
                        .map(|(k, _)| k.clone())
                        .expect("not empty");
                    closing.extend(dbs.remove(&oldest).map(|p| p.pool));
                }
                let config = provider.config().for_database(&db);
                let pool = Pool::builder(provider.driver().clone(), &config, &node)
                    .observe(provider.hooks().clone())
                    .build();
                dbs.insert(
                    key.clone(),
                    DbPool {
                        pool,
                        last_used: now,
                    },
                );
            }
            let entry = dbs.get_mut(&key).expect("inserted");
            entry.last_used = now;
            entry.pool.clone()
        };
        for p in closing {
            tokio::spawn(async move { p.close_graceful(Duration::from_secs(30)).await });
        }
        Ok(pool)
    }

    /// Tenant database pools open now.
    pub fn open_databases(&self) -> usize {
        lock(&self.inner.databases).len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<D: Driver + Clone> Provider<D> {
    /// Tenant handles over this provider; see the [`tenant`](crate::tenant) module.
    pub fn tenancy(&self, options: TenancyOptions) -> Tenancy<D> {
        Tenancy::new(self.clone(), options)
    }

    /// The tenant `name`, on a provider built with
    /// [`ProviderBuilder::tenancy`](crate::provider::ProviderBuilder::tenancy); see
    /// [`tenant`](crate::tenant).
    ///
    /// # Errors
    /// [`ErrorKind::Config`] when the provider has no tenancy; as [`Tenancy::tenant`] for a
    /// bad name.
    pub fn tenant(&self, name: &str) -> Result<Tenant<D>> {
        self.tenants()?.tenant(name)
    }

    /// The tenancy of a provider built with
    /// [`ProviderBuilder::tenancy`](crate::provider::ProviderBuilder::tenancy) (to create and
    /// drop tenants).
    ///
    /// # Errors
    /// [`ErrorKind::Config`] when the provider has no tenancy.
    pub fn tenants(&self) -> Result<Tenancy<D>> {
        let shared = self
            .attached_tenancy()
            .and_then(|t| t.downcast::<Shared<D>>().ok());
        match shared {
            Some(shared) => Ok(Tenancy::from_parts(self.clone(), shared)),
            None => Err(
                Error::new(ErrorKind::Config, "this provider has no tenancy").with_hint(
                    "build it with Provider::builder(..).tenancy(TenancyOptions::new(..))",
                ),
            ),
        }
    }
}

impl<D: Driver + Clone> crate::provider::ProviderBuilder<D> {
    /// Tenant handles ([`Provider::tenant`]) with `options`.
    pub fn tenancy(self, options: TenancyOptions) -> Self {
        self.attach_tenancy(Arc::new(Shared::<D>::new(options)))
    }
}

impl Config {
    /// This configuration with another database name (tenant databases).
    pub(crate) fn for_database(&self, dbname: &str) -> Config {
        let mut c = self.clone();
        c.dbname = dbname.to_owned();
        c
    }
}

mod admin;
mod handle;

pub use handle::Tenant;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["acme", "a1_b2", "x"] {
            check_name(ok).unwrap();
        }
        for (bad, why) in [
            ("", "1 to 40"),
            ("Acme", "start with a lowercase"),
            ("1a", "start with a lowercase"),
            ("a-b", "only lowercase"),
            ("a\"b", "only lowercase"),
            ("pg_x", "reserved"),
            (&"a".repeat(41), "1 to 40"),
        ] {
            let e = check_name(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config);
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn escapes_are_refused() {
        for sql in [
            "SET ROLE postgres",
            "set search_path = other",
            "RESET ROLE",
            "RESET ALL",
            "SET SESSION AUTHORIZATION postgres",
            "DISCARD ALL",
            "SELECT set_config('app.tenant_id', 'other', true)",
            "SELECT pg_catalog.SET_CONFIG('role', 'postgres', false)",
            "DO $$ BEGIN EXECUTE 'RESET ROLE'; END $$",
            "CREATE OR REPLACE FUNCTION f() RETURNS int AS 'SELECT 1' LANGUAGE sql",
            "create procedure p() language sql as 'select 1'",
            "PREPARE p AS SELECT 1",
            "EXECUTE p",
            "COPY t TO PROGRAM 'id'",
            "ALTER ROLE x SUPERUSER",
            "ALTER SYSTEM SET fsync = off",
            "SELECT 1; SET ROLE postgres",
            "LISTEN x",
            "LOAD 'x'",
        ] {
            let e = check_statement("acme", sql).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Rejected, "{sql}");
            assert_eq!(e.tenant(), Some("acme"));
            assert!(e.message().starts_with("tenant acme: "), "{e}");
        }
        for sql in [
            "SELECT * FROM items WHERE name = 'set role'",
            "INSERT INTO settings (k) VALUES ('reset')",
            "CREATE TABLE t (id int)",
            "UPDATE t SET a = 1",
            "COPY t FROM STDIN",
            "WITH x AS (SELECT 1) SELECT * FROM x",
        ] {
            check_statement("acme", sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }
}
