//! Role-based access: application roles (`reader`, `writer`, `admin`, or your own) with
//! permissions per statement kind and per table or schema pattern, checked on PostgreSQL's
//! parse tree before anything is sent.
//!
//! ```no_run
//! # async fn run(provider: pgprovider::provider::Provider<pgprovider_tokio_postgres::TokioPostgres>) -> pgprovider::Result<()> {
//! use pgprovider::access::{AccessPolicy, AppRole, Kind};
//! let policy = AccessPolicy::new()
//!     .role("analyst", AppRole::new().allow(&[Kind::Select], "reports.*"))
//!     .role("writer", AppRole::writer("public.*").with_server_role("app_writer"));
//! // Installed with `ProviderBuilder::access(policy)`; then:
//! let rows = provider.as_role("analyst").query("SELECT * FROM reports.daily", &[]).await?;
//! // Refused before sending: analyst may not read public.users.
//! assert!(provider.as_role("analyst").query("SELECT * FROM public.users", &[]).await.is_err());
//! # Ok(()) }
//! ```
//!
//! - **The acting role** comes from a handle ([`Provider::as_role`]) or the task-local
//!   context ([`with_role`], like the correlation id), so it reaches every statement run
//!   inside: transactions, batches, COPY, tenant handles. Statements with no acting role run
//!   as the [default role](AccessPolicy::with_default_role), or are refused when there is
//!   none.
//! - **What is checked**: every table, view or sequence a statement touches, wherever it is
//!   in the tree (subqueries, CTEs, `UNION` arms, `RETURNING`, data-changing CTEs), with
//!   its kind: [`Kind::Select`] for reads, [`Kind::Insert`], [`Kind::Update`] (also
//!   `SELECT … FOR UPDATE` and `ON CONFLICT DO UPDATE`), [`Kind::Delete`],
//!   [`Kind::Truncate`], [`Kind::Copy`], [`Kind::Ddl`] on the objects created, altered or
//!   dropped, and [`Kind::Other`] for every other statement (`SET`, `LISTEN`, `DO`, `CALL`,
//!   grants…). A statement with no object (`SELECT now()`) needs its kind on some pattern.
//!   Transaction control always passes. A statement the parser rejects is refused.
//! - **Patterns** are `schema.table`, `schema.*`, `*.table`, `table` or `*`, with `*`
//!   matching any run of characters, compared with names as PostgreSQL folds them
//!   (unquoted: lowercase; `"Quoted"`: as written). A name the statement leaves unqualified
//!   is taken to be in the [default schema](AccessPolicy::with_default_schema) (`public`),
//!   and unqualified `pg_*` names in `pg_catalog`, as the server resolves them with the
//!   default `search_path`; `SET search_path` is [`Kind::Other`], which roles do not have
//!   unless granted.
//! - **Denials** are [`ErrorKind::Rejected`] naming the role, the kind and the object; the
//!   [audit log](crate::observe::AuditLog) writes each statement with its `role` and an
//!   `outcome` of `ok`, `error` or `denied`.
//! - **Server roles**: [`AppRole::with_server_role`] runs the role's statements as that
//!   PostgreSQL role (`SET LOCAL ROLE` inside the statement's own transaction), so the
//!   server enforces its grants as well, and [`Provider::check_grants`] verifies at start-up
//!   that the server grants what every role needs, reporting every gap at once.
//! - Functions are not checked by name (a function that writes runs with the caller's
//!   rights on the server: map roles to server roles for that), and views are checked as
//!   the objects named, not the tables behind them.
//!
//! [`Provider::as_role`]: crate::provider::Provider::as_role
//! [`Provider::check_grants`]: crate::provider::Provider::check_grants
//! [`ErrorKind::Rejected`]: crate::ErrorKind::Rejected

mod grants;

pub use crate::shape::Kind;
pub(crate) use grants::check as check_grants;
pub use grants::{Gap, GrantReport};
pub use pgprovider_core::observe::{current_role, with_role};

use crate::shape::{self, Access};
use crate::{Error, ErrorKind, Result};
use pgprovider_core::observe::{Hook, Operation, Verdict};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One application role: what it may do, and the server role it may run as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppRole {
    grants: Vec<(Vec<Kind>, String)>,
    server_role: Option<String>,
}

impl AppRole {
    /// A role that may do nothing (add permissions with [`allow`](Self::allow)).
    pub fn new() -> Self {
        AppRole::default()
    }

    /// Allows `kinds` on the objects matching `pattern` (see the [module docs](self)).
    pub fn allow(mut self, kinds: &[Kind], pattern: &str) -> Self {
        self.grants.push((kinds.to_vec(), pattern.to_owned()));
        self
    }

    /// Reads of the objects matching `pattern`.
    pub fn reader(pattern: &str) -> Self {
        AppRole::new().allow(&[Kind::Select], pattern)
    }

    /// Reads and data changes (`select`, `insert`, `update`, `delete`) on `pattern`.
    pub fn writer(pattern: &str) -> Self {
        AppRole::new().allow(
            &[Kind::Select, Kind::Insert, Kind::Update, Kind::Delete],
            pattern,
        )
    }

    /// Everything on everything.
    pub fn admin() -> Self {
        AppRole::new().allow(&Kind::ALL, "*")
    }

    /// Runs the role's statements as the server role `name` (`SET LOCAL ROLE`, in the
    /// statement's transaction); the login user must be a member of it.
    pub fn with_server_role(mut self, name: &str) -> Self {
        self.server_role = Some(name.to_owned());
        self
    }

    /// The server role, when mapped.
    pub fn server_role(&self) -> Option<&str> {
        self.server_role.as_deref()
    }

    /// The permissions: kinds and the pattern they apply to.
    pub fn grants(&self) -> impl Iterator<Item = (&[Kind], &str)> {
        self.grants.iter().map(|(k, p)| (k.as_slice(), p.as_str()))
    }

    fn allows(&self, kind: Kind, schema: &str, name: Option<&str>) -> bool {
        self.grants.iter().any(|(kinds, pattern)| {
            kinds.contains(&kind)
                && match name {
                    // A read of no table (`SELECT now()`) or a `COPY (query)` needs the
                    // kind somewhere (the tables inside are checked on their own); any
                    // other access to no object in particular (`SET`, `DROP SCHEMA`, a
                    // call of set_config, `CASCADE`) needs the kind on everything.
                    None => matches!(kind, Kind::Select | Kind::Copy) || pattern == "*",
                    Some(n) => matches_object(pattern, schema, n),
                }
        })
    }
}

/// Whether `pattern` (`schema.table`, `schema.*`, `table`, `*`) covers `schema.name`.
fn matches_object(pattern: &str, schema: &str, name: &str) -> bool {
    match pattern.split_once('.') {
        Some((s, t)) => glob(s, schema) && glob(t, name),
        None if pattern == "*" => true,
        // An unqualified pattern names objects of the default schema only.
        None => false,
    }
}

/// `*` matches any run of characters; everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// The application roles and how statements are checked; see the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessPolicy {
    roles: BTreeMap<String, AppRole>,
    default_role: Option<String>,
    default_schema: String,
    tenant_schema_prefix: Option<String>,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        AccessPolicy {
            roles: BTreeMap::new(),
            default_role: None,
            default_schema: "public".into(),
            tenant_schema_prefix: None,
        }
    }
}

impl AccessPolicy {
    /// No roles; statements without a role are refused.
    pub fn new() -> Self {
        AccessPolicy::default()
    }

    /// Adds (or replaces) the role `name`.
    pub fn role(mut self, name: &str, role: AppRole) -> Self {
        self.roles.insert(name.to_owned(), role);
        self
    }

    /// The role statements run as when no role is acting (none by default: refused).
    pub fn with_default_role(mut self, name: &str) -> Self {
        self.default_role = Some(name.to_owned());
        self
    }

    /// The schema unqualified names are taken to be in (`public` by default).
    pub fn with_default_schema(mut self, schema: &str) -> Self {
        self.default_schema = schema.to_owned();
        self
    }

    /// In a tenant's statements, unqualified names are in the tenant's own schema:
    /// `prefix` + the tenant's name (the tenancy's
    /// [`schema_prefix`](crate::tenant::TenancyOptions::schema_prefix), for the schema and
    /// role strategies). Patterns such as `*.orders` or `tenant_*.orders` then cover
    /// every tenant's `orders`.
    pub fn with_tenant_schemas(mut self, prefix: &str) -> Self {
        self.tenant_schema_prefix = Some(prefix.to_owned());
        self
    }

    /// The role `name`, if configured.
    pub fn get(&self, name: &str) -> Option<&AppRole> {
        self.roles.get(name)
    }

    /// Every role, by name.
    pub fn roles(&self) -> impl Iterator<Item = (&str, &AppRole)> {
        self.roles.iter().map(|(n, r)| (n.as_str(), r))
    }

    /// Checks `sql` for the acting `role` (`None`: the default role).
    ///
    /// # Errors
    /// [`ErrorKind::Rejected`] naming the role, the statement kind and the object.
    pub fn check(&self, role: Option<&str>, sql: &str) -> Result<()> {
        self.check_for(role, None, sql)
    }

    /// As [`check`](Self::check), for a statement of `tenant` (see
    /// [`with_tenant_schemas`](Self::with_tenant_schemas)).
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub fn check_for(&self, role: Option<&str>, tenant: Option<&str>, sql: &str) -> Result<()> {
        self.decide(role, tenant, sql).map_err(|reason| {
            Error::new(ErrorKind::Rejected, reason).with_hint(
                "grant the role this kind on the object in its AccessPolicy, or run the statement as a role that has it",
            )
        })
    }

    fn decide(
        &self,
        role: Option<&str>,
        tenant: Option<&str>,
        sql: &str,
    ) -> std::result::Result<(), String> {
        let Some(name) = role.or(self.default_role.as_deref()) else {
            return Err(
                "no application role is acting (use provider.as_role(..) or access::with_role, or set a default role)"
                    .into(),
            );
        };
        let Some(app) = self.roles.get(name) else {
            return Err(format!("role {name:?} is not configured"));
        };
        let shape = shape::of(sql);
        if let Some(e) = &shape.error {
            return Err(format!(
                "role {name:?}: the statement cannot be checked: PostgreSQL's parser rejects it ({e})"
            ));
        }
        if shape.transaction_control {
            return Ok(());
        }
        for a in &shape.accesses {
            let (schema, object) = self.resolve(a, tenant);
            if !app.allows(a.kind, &schema, object) {
                return Err(match (object, a.kind) {
                    (None, Kind::Other | Kind::Ddl | Kind::Truncate) => {
                        format!(
                            "role {name:?} may not run {} (it needs {} on *)",
                            a.what, a.kind
                        )
                    }
                    (None, k) => format!("role {name:?} may not {k} (it has no {k} permission)"),
                    (Some(o), k) => format!("role {name:?} may not {k} {schema}.{o}"),
                });
            }
        }
        Ok(())
    }

    /// The schema an access's object is in, as the server resolves it with the default
    /// search path.
    fn resolve<'a>(
        &'a self,
        a: &'a Access,
        tenant: Option<&str>,
    ) -> (Cow<'a, str>, Option<&'a str>) {
        let schema = match (&a.schema, &a.name, tenant, &self.tenant_schema_prefix) {
            (Some(s), ..) => Cow::Borrowed(s.as_str()),
            (None, Some(n), ..) if n.starts_with("pg_") => Cow::Borrowed("pg_catalog"),
            (None, _, Some(t), Some(prefix)) => Cow::Owned(format!("{prefix}{t}")),
            _ => Cow::Borrowed(self.default_schema.as_str()),
        };
        (schema, a.name.as_deref())
    }
}

/// The hook that checks every statement of the provider's pools; installed by
/// `ProviderBuilder::access`.
pub(crate) struct AccessHook(pub(crate) Arc<AccessPolicy>);

impl Hook for AccessHook {
    fn name(&self) -> &str {
        "access"
    }

    /// Fails closed: a panic while deciding (or logging) refuses the statement.
    fn before(&self, op: &Operation<'_>) -> Verdict {
        let (role, tenant) = (op.role.as_deref(), op.tenant.as_deref());
        shape::verdict(op, "role-based access", |sql| {
            self.0.decide(role, tenant, sql).inspect_err(|reason| {
                tracing::warn!(target: "pgprovider::security", role, tenant, node = op.node, %reason, "statement denied");
                metrics::counter!("pgprovider_access_denied_total", "role" => role.unwrap_or("").to_owned()).increment(1);
            })
        })
    }
}

#[cfg(test)]
mod tests;
