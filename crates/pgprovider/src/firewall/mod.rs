//! A SQL firewall on the request path: the shapes of the statements an application runs
//! (PostgreSQL's fingerprint of the parse tree, literals removed) are learned per
//! application, role and tenant into an allowlist; anything else reaching the database is a
//! bug or an injection, and is logged or refused before it is sent.
//!
//! ```no_run
//! # async fn run(provider: pgprovider::provider::Provider<pgprovider_tokio_postgres::TokioPostgres>) -> pgprovider::Result<()> {
//! use pgprovider::firewall::{FirewallOptions, Mode};
//! // In staging: learn, then save the allowlist (also saved by `Provider::close`).
//! let options = FirewallOptions::new(Mode::Learn).with_allowlist("firewall.json");
//! // In production: `FirewallOptions::new(Mode::Enforce).with_allowlist("firewall.json")`,
//! // given to `ProviderBuilder::firewall`.
//! if let Some(firewall) = provider.firewall() {
//!     firewall.save()?;
//! }
//! # Ok(()) }
//! ```
//!
//! - **Modes** ([`Mode`]): `Off`; `Learn` records every shape with its count, the first
//!   call site and when it was first seen; `Warn` logs (target `pgprovider::firewall`) and
//!   counts unknown shapes; `Enforce` refuses them with [`ErrorKind::Rejected`] naming the
//!   fingerprint, the normalized statement and how to allow it. A tenant may have its own
//!   mode ([`FirewallOptions::with_tenant_mode`]).
//! - **Keys**: shapes are kept per application (`application_name`, or
//!   [`FirewallOptions::with_application`]), per acting role (see
//!   [`access`](crate::access)) and, with [`FirewallOptions::per_tenant`], per tenant.
//! - **Independent of the allowlist** (in every mode but `Off`, each a switch):
//!   several statements in one string ([`single_statement`](FirewallOptions::single_statement),
//!   on); string or number literals where parameters are required
//!   ([`parameters_only`](FirewallOptions::parameters_only), off; `LIMIT` and `OFFSET`,
//!   `NULL` and booleans excepted); and classic injection shapes
//!   ([`injection_shapes`](FirewallOptions::injection_shapes), on): an `OR` whose arm is made
//!   of constants alone (`OR 1=1`, `OR 'a'='a'`, `OR true`), a `--` comment that cuts off
//!   the rest of the statement, and a `UNION` (or other set operation) reading catalogs.
//!   A statement PostgreSQL's parser rejects is refused in `Enforce` mode (it cannot be
//!   fingerprinted) and passed to the server otherwise.
//! - **Cost**: the parse happens once per statement text (cached); a decision on a cached
//!   text is a hash lookup and an allowlist probe (`pgprovider-bench firewall` measures it).
//! - The library's own statements (a tenant's prologue, transaction control) pass.
//!
//! [`ErrorKind::Rejected`]: crate::ErrorKind::Rejected

mod allowlist;
mod site;

pub use allowlist::Shape;

use crate::shape;
use crate::{Error, ErrorKind, Result};
use allowlist::Allowlist;
use pgprovider_core::observe::{Hook, Operation, Verdict};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What the firewall does with a statement whose shape is not in the allowlist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mode {
    /// Nothing is checked.
    #[default]
    Off,
    /// Every shape is recorded into the allowlist.
    Learn,
    /// Unknown shapes are logged and counted, and run.
    Warn,
    /// Unknown shapes are refused before they are sent.
    Enforce,
}

impl Mode {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Learn => "learn",
            Mode::Warn => "warn",
            Mode::Enforce => "enforce",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "off" => Mode::Off,
            "learn" => Mode::Learn,
            "warn" => Mode::Warn,
            "enforce" => Mode::Enforce,
            _ => {
                return Err(
                    Error::new(ErrorKind::Config, format!("unknown firewall mode {s:?}"))
                        .with_hint("use off, learn, warn or enforce"),
                );
            }
        })
    }
}

/// How the firewall works; see the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FirewallOptions {
    /// The mode.
    pub mode: Mode,
    /// Modes of single tenants.
    pub tenant_modes: HashMap<String, Mode>,
    /// The allowlist file, loaded at start (when it exists) and written by
    /// [`Firewall::save`].
    pub allowlist: Option<PathBuf>,
    /// Refuse several statements in one string (on by default).
    pub single_statement: bool,
    /// Refuse string and number literals: values must be parameters (off by default).
    pub parameters_only: bool,
    /// Refuse classic injection shapes (on by default).
    pub injection_shapes: bool,
    /// Shapes are kept per tenant (off by default: shared by every tenant).
    pub per_tenant: bool,
    /// The application the shapes belong to (by default the configuration's
    /// `application_name`).
    pub application: Option<String>,
}

impl FirewallOptions {
    /// Options with `mode` and the defaults.
    pub fn new(mode: Mode) -> Self {
        FirewallOptions {
            mode,
            tenant_modes: HashMap::new(),
            allowlist: None,
            single_statement: true,
            parameters_only: false,
            injection_shapes: true,
            per_tenant: false,
            application: None,
        }
    }
    /// Sets the allowlist file.
    pub fn with_allowlist(mut self, path: impl Into<PathBuf>) -> Self {
        self.allowlist = Some(path.into());
        self
    }
    /// Sets `tenant`'s own mode.
    pub fn with_tenant_mode(mut self, tenant: &str, mode: Mode) -> Self {
        self.tenant_modes.insert(tenant.to_owned(), mode);
        self
    }
    /// Whether several statements in one string are refused.
    pub fn single_statement(mut self, on: bool) -> Self {
        self.single_statement = on;
        self
    }
    /// Whether literals are refused.
    pub fn parameters_only(mut self, on: bool) -> Self {
        self.parameters_only = on;
        self
    }
    /// Whether classic injection shapes are refused.
    pub fn injection_shapes(mut self, on: bool) -> Self {
        self.injection_shapes = on;
        self
    }
    /// Whether shapes are kept per tenant.
    pub fn per_tenant(mut self, on: bool) -> Self {
        self.per_tenant = on;
        self
    }
    /// Sets the application the shapes belong to.
    pub fn with_application(mut self, name: &str) -> Self {
        self.application = Some(name.to_owned());
        self
    }
}

/// What the firewall has decided so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FirewallStats {
    /// Statements whose shape was in the allowlist.
    pub allowed: u64,
    /// Shapes learned (first sight, in learn mode).
    pub learned: u64,
    /// Unknown shapes that ran (warn mode).
    pub warned: u64,
    /// Statements refused (unknown shape in enforce mode, or a structural rule).
    pub refused: u64,
}

/// The firewall of a provider; see the [module docs](self).
pub struct Firewall {
    options: FirewallOptions,
    application: String,
    list: Allowlist,
    allowed: AtomicU64,
    learned: AtomicU64,
    warned: AtomicU64,
    refused: AtomicU64,
}

impl std::fmt::Debug for Firewall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Firewall")
            .field("mode", &self.options.mode)
            .field("application", &self.application)
            .field("shapes", &self.list.len())
            .finish()
    }
}

impl Firewall {
    /// A firewall for `application` (loading the allowlist file when it exists).
    ///
    /// # Errors
    /// [`ErrorKind::Config`] when the allowlist file exists but cannot be read or parsed.
    pub fn new(options: FirewallOptions, application: &str) -> Result<Self> {
        let application = options
            .application
            .clone()
            .unwrap_or_else(|| application.to_owned());
        let list = match &options.allowlist {
            Some(p) if p.exists() => Allowlist::load(p, &application)?,
            _ => Allowlist::default(),
        };
        Ok(Firewall {
            options,
            application,
            list,
            allowed: AtomicU64::new(0),
            learned: AtomicU64::new(0),
            warned: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// The options.
    pub fn options(&self) -> &FirewallOptions {
        &self.options
    }

    /// The decisions so far.
    pub fn stats(&self) -> FirewallStats {
        FirewallStats {
            allowed: self.allowed.load(Relaxed),
            learned: self.learned.load(Relaxed),
            warned: self.warned.load(Relaxed),
            refused: self.refused.load(Relaxed),
        }
    }

    /// Every shape in the allowlist.
    pub fn shapes(&self) -> Vec<Shape> {
        self.list.shapes(&self.application)
    }

    /// Adds the shape of `sql` for `role` and `tenant` to the allowlist.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] when PostgreSQL's parser rejects `sql`.
    pub fn allow(&self, role: Option<&str>, tenant: Option<&str>, sql: &str) -> Result<()> {
        let s = shape::of(sql);
        if let Some(e) = &s.error {
            return Err(Error::new(
                ErrorKind::Config,
                format!("cannot allow a statement PostgreSQL's parser rejects: {e}"),
            ));
        }
        let tenant = tenant.filter(|_| self.options.per_tenant);
        self.list
            .learn(role, tenant, &s, "allowed by Firewall::allow");
        Ok(())
    }

    /// Writes the allowlist to its file (atomically: a temporary file renamed over it).
    ///
    /// # Errors
    /// [`ErrorKind::Config`] without an allowlist file; [`ErrorKind::Other`] when it cannot
    /// be written.
    pub fn save(&self) -> Result<()> {
        let Some(path) = &self.options.allowlist else {
            return Err(Error::new(
                ErrorKind::Config,
                "the firewall has no allowlist file to save to",
            )
            .with_hint("set one with FirewallOptions::with_allowlist"));
        };
        self.list.save(path, &self.application)
    }

    /// The decision on `sql` run as `role` for `tenant`: `Ok` to send it, or the reason it
    /// is refused. Learns it in learn mode.
    ///
    /// # Errors
    /// [`ErrorKind::Rejected`] with the reason.
    pub fn check(&self, role: Option<&str>, tenant: Option<&str>, sql: &str) -> Result<()> {
        self.decide(role, tenant, sql)
            .map_err(|reason| Error::new(ErrorKind::Rejected, reason))
    }

    fn mode_of(&self, tenant: Option<&str>) -> Mode {
        tenant
            .and_then(|t| self.options.tenant_modes.get(t))
            .copied()
            .unwrap_or(self.options.mode)
    }

    fn decide(
        &self,
        role: Option<&str>,
        tenant: Option<&str>,
        sql: &str,
    ) -> std::result::Result<(), String> {
        let mode = self.mode_of(tenant);
        if mode == Mode::Off {
            return Ok(());
        }
        let s = shape::of(sql);
        if s.transaction_control {
            return Ok(());
        }
        if let Some(e) = &s.error {
            if mode == Mode::Enforce {
                return Err(self.refuse(format!(
                    "firewall: a statement PostgreSQL's parser rejects cannot be checked ({e})"
                )));
            }
            return Ok(());
        }
        let o = &self.options;
        if o.single_statement && s.statements > 1 {
            return Err(self.refuse(format!(
                "firewall: {} statements in one string (send one statement per call)",
                s.statements
            )));
        }
        if o.injection_shapes {
            if let Some(what) = &s.injection {
                return Err(self.refuse(format!(
                    "firewall: an injection shape: {what} (statement {:?})",
                    s.normalized
                )));
            }
        }
        if o.parameters_only && s.literals > 0 {
            return Err(self.refuse(format!(
                "firewall: {} literal(s) where parameters are required (statement {:?}): pass values as $n parameters",
                s.literals, s.normalized
            )));
        }
        let key_tenant = tenant.filter(|_| o.per_tenant);
        if self.list.hit(role, key_tenant, s.fingerprint) {
            self.allowed.fetch_add(1, Relaxed);
            return Ok(());
        }
        match mode {
            Mode::Learn => {
                let site = site::call_site();
                if self.list.learn(role, key_tenant, &s, &site) {
                    self.learned.fetch_add(1, Relaxed);
                    metrics::counter!("pgprovider_firewall_learned_total").increment(1);
                }
                Ok(())
            }
            Mode::Warn => {
                self.warned.fetch_add(1, Relaxed);
                metrics::counter!("pgprovider_firewall_unknown_total").increment(1);
                tracing::warn!(
                    target: "pgprovider::firewall",
                    application = %self.application,
                    role,
                    tenant,
                    fingerprint = %s.hex(),
                    statement = %s.normalized,
                    "a statement shape not in the allowlist ran"
                );
                Ok(())
            }
            _ => Err(self.refuse(format!(
                "firewall: statement shape {} ({:?}) is not in the allowlist of application {:?}, role {}, tenant {}: \
                 if the application means to run it, learn it (Mode::Learn, then Firewall::save) or add it \
                 (Firewall::allow, or a line in the allowlist file)",
                s.hex(),
                s.normalized,
                self.application,
                role.map_or_else(|| "(none)".to_owned(), |r| format!("{r:?}")),
                key_tenant.map_or_else(|| "(any)".to_owned(), |t| format!("{t:?}")),
            ))),
        }
    }

    fn refuse(&self, reason: String) -> String {
        self.refused.fetch_add(1, Relaxed);
        metrics::counter!("pgprovider_firewall_refused_total").increment(1);
        tracing::warn!(target: "pgprovider::firewall", application = %self.application, %reason, "statement refused");
        reason
    }
}

/// The hook on every operation of the provider's pools.
pub(crate) struct FirewallHook(pub(crate) Arc<Firewall>);

impl Hook for FirewallHook {
    fn name(&self) -> &str {
        "firewall"
    }

    /// Fails closed: a panic while deciding (or logging) refuses the statement.
    fn before(&self, op: &Operation<'_>) -> Verdict {
        let (role, tenant) = (op.role.as_deref(), op.tenant.as_deref());
        crate::shape::verdict(op, "the firewall", |sql| self.0.decide(role, tenant, sql))
    }
}

#[cfg(test)]
mod tests;
