//! How tenants are isolated (strategies), limited, and named.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

/// How tenants are kept apart; see the [module docs](crate::tenant).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Strategy {
    /// A schema per tenant, as the `search_path`.
    Schema,
    /// A schema and a role per tenant.
    Role,
    /// Shared tables with row-level security keyed on `app.tenant_id`.
    RowLevel,
    /// A database per tenant, with a pool each.
    Database,
}

/// Per-tenant limits (`None`: no limit).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TenantLimits {
    /// Connections the tenant may hold at once.
    pub max_connections: Option<usize>,
    /// Operations (statements or transactions) per second, with bursts of the same size.
    pub ops_per_second: Option<NonZeroU32>,
    /// The server's `statement_timeout` for the tenant's statements.
    pub statement_timeout: Option<Duration>,
}

impl TenantLimits {
    /// Sets the connection limit.
    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.max_connections = Some(n);
        self
    }
    /// Sets the rate limit (0 is taken as 1).
    pub fn with_ops_per_second(mut self, n: u32) -> Self {
        self.ops_per_second = Some(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        self
    }
    /// Sets the statement timeout.
    pub fn with_statement_timeout(mut self, t: Duration) -> Self {
        self.statement_timeout = Some(t);
        self
    }
}

/// How a [`Tenancy`](super::Tenancy) works.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TenancyOptions {
    /// The strategy for tenants without an override.
    pub strategy: Strategy,
    /// Per-tenant strategy overrides.
    pub overrides: HashMap<String, Strategy>,
    /// Limits for tenants without their own.
    pub limits: TenantLimits,
    /// Per-tenant limits.
    pub tenant_limits: HashMap<String, TenantLimits>,
    /// Prefix of tenant schemas (default none: the schema is the tenant's name).
    pub schema_prefix: String,
    /// Prefix of tenant roles (default `tenant_`).
    pub role_prefix: String,
    /// Prefix of tenant databases (default `tenant_`).
    pub database_prefix: String,
    /// The shared role of the row-level strategy (default `pgprovider_tenant`).
    pub row_level_role: String,
    /// Tenant database pools kept open at most (least recently used closed first).
    pub max_open_databases: usize,
    /// Tenant database pools unused this long are closed.
    pub database_idle_timeout: Duration,
}

impl TenancyOptions {
    /// Options with `strategy` and the defaults.
    pub fn new(strategy: Strategy) -> Self {
        TenancyOptions {
            strategy,
            overrides: HashMap::new(),
            limits: TenantLimits::default(),
            tenant_limits: HashMap::new(),
            schema_prefix: String::new(),
            role_prefix: "tenant_".into(),
            database_prefix: "tenant_".into(),
            row_level_role: "pgprovider_tenant".into(),
            max_open_databases: 50,
            database_idle_timeout: Duration::from_secs(300),
        }
    }
    /// Uses `strategy` for `tenant`.
    pub fn with_override(mut self, tenant: &str, strategy: Strategy) -> Self {
        self.overrides.insert(tenant.to_owned(), strategy);
        self
    }
    /// Sets the default limits.
    pub fn with_limits(mut self, limits: TenantLimits) -> Self {
        self.limits = limits;
        self
    }
    /// Sets `tenant`'s limits.
    pub fn with_tenant_limits(mut self, tenant: &str, limits: TenantLimits) -> Self {
        self.tenant_limits.insert(tenant.to_owned(), limits);
        self
    }
    /// Caps the open tenant database pools.
    pub fn with_max_open_databases(mut self, n: usize) -> Self {
        self.max_open_databases = n.max(1);
        self
    }
    /// Sets how long an unused tenant database pool stays open.
    pub fn with_database_idle_timeout(mut self, t: Duration) -> Self {
        self.database_idle_timeout = t;
        self
    }
    /// Sets the role prefix.
    pub fn with_role_prefix(mut self, p: impl Into<String>) -> Self {
        self.role_prefix = p.into();
        self
    }
    /// Sets the schema prefix.
    pub fn with_schema_prefix(mut self, p: impl Into<String>) -> Self {
        self.schema_prefix = p.into();
        self
    }
    /// Sets the database prefix.
    pub fn with_database_prefix(mut self, p: impl Into<String>) -> Self {
        self.database_prefix = p.into();
        self
    }
}
