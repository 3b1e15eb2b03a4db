//! The provider: the application's one front door. It runs every statement, transaction and
//! tenant operation itself, through one request path:
//!
//! ```text
//! Provider / Routed handle ─ query, query_one, query_opt, query_as, execute, transaction, tenant
//!   → hooks (observe, on every pool)       → statement guard and limits (tenant handles)
//!   → retry (policy::retry)                 → routing (route.rs, on the monitor's snapshot)
//!   → circuit breaker (policy::breaker)     → pool (one per node)  → driver
//! ```
//!
//! ```no_run
//! # async fn run() -> pgprovider::Result<()> {
//! use pgprovider::provider::Provider;
//! use pgprovider::TxOptions;
//! let provider = Provider::from_url(
//!     pgprovider_tokio_postgres::TokioPostgres::new(),
//!     "postgres://app@db1,db2,db3/app?target_session_attrs=read-write",
//! )?;
//! provider.execute("INSERT INTO events (kind) VALUES ($1)", &[&"signup"]).await?;
//! let n: i64 = provider.read().query_one("SELECT count(*) FROM events", &[]).await?.get(0);
//! provider
//!     .transaction(&TxOptions::new(), |tx| async move {
//!         tx.execute("UPDATE counters SET n = n + 1", &[]).await
//!     })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! - **Where statements go.** The provider's own methods follow the URL's
//!   `target_session_attrs` (libpq's meaning, on the monitor's view of the nodes: `any` is
//!   the first reachable node in host order, `read-write` and `primary` the primary, `standby`
//!   and `read-only` the standbys, `prefer-standby` a standby else the primary), with
//!   `load_balance_hosts=random` starting from a random node. [`Provider::primary`],
//!   [`Provider::read`] and [`Provider::read_after`] give handles ([`Routed`]) with the same
//!   methods for a given route.
//! - **Writes** go to the node the [`HealthMonitor`] knows as primary. With none (a failover
//!   in progress), they wait up to [`TopologyOptions::failover_timeout`] for the monitor to
//!   find one (or fail at once with [`ErrorKind::Connect`](crate::ErrorKind::Connect) when
//!   the timeout is zero), then go there: no configuration change. A checkout that fails asks
//!   the monitor to recheck the node at once.
//! - **Retries** ([`retry`](crate::retry)): a statement that never reached a server, or that
//!   a read-only node refused (`25006`: it goes to the primary instead), is run again; one
//!   that may have run (the connection broke) only on an [`idempotent`](Routed::idempotent)
//!   handle or a read handle. A transaction whose connection is lost before `COMMIT` was
//!   sent is run again on the new primary; a lost `COMMIT` reply is
//!   [`ErrorKind::OutcomeUnknown`](crate::ErrorKind::OutcomeUnknown) and never re-run.
//! - **Reads** ([`Provider::read`]) go to reachable standbys within the lag bounds
//!   ([`TopologyOptions::max_replica_lag_bytes`], [`TopologyOptions::max_replica_lag`], lag
//!   measured against the primary, see [`topology`](crate::topology#replica-lag)), in the
//!   order of the [`ReadBalancing`] policy, the next one when a node fails; with none, to the
//!   primary when [`TopologyOptions::read_from_primary`] allows it.
//! - **Read-your-writes**: [`Provider::consistency_token`] after a write, then
//!   [`Provider::read_after`] reads only from a node that has replayed it (waiting a bounded
//!   time for a standby, else the primary).
//! - **Breakers**: reads skip a node whose circuit breaker is open and try the next. A write
//!   finding the primary's breaker open does not hammer it: it waits (within the failover
//!   timeout) for the monitor to find a primary it can use, and fails with
//!   [`ErrorKind::CircuitOpen`](crate::ErrorKind::CircuitOpen) when none appears.
//! - **Role changes**: when the monitor sees a node change role (a primary demoted, a
//!   standby promoted) or fenced in a split brain, the node's pool is
//!   [retired](Pool::retire): no session from before the change is reused. A connection
//!   of this provider that breaks, or meets a statement refused as read-only (`25006`),
//!   makes the monitor probe that node at once.
//! - **Split brain**: only the primary on the newest timeline gets writes or reads; see the
//!   [`topology`](crate::topology) module.
//! - **Overload**: every wait is bounded (the failover timeout, the pool's acquire timeout,
//!   `pool_max_waiters` callers at most per node, then
//!   [`ErrorKind::Overloaded`](crate::ErrorKind::Overloaded) at once).
//!
//! `pgprovider drill failover` runs its writers and readers through this API against a real
//! primary and standby.

mod handle;
mod options;
mod path;
pub(crate) mod route;
mod security;
mod tasks;

pub use options::{ReadBalancing, TopologyOptions};

pub use handle::Routed;

use crate::access::{AccessHook, AccessPolicy};
use crate::breaker::CircuitBreaker;
use crate::config::{Config, LoadBalanceHosts, Node};
use crate::firewall::{Firewall, FirewallHook};
use crate::health::{HealthReport, NodeHealth};
use crate::observe::Hooks;
use crate::pool::{Pool, PoolStats};
use crate::retry::RetryPolicy;
use crate::safety::{SafetyMonitor, SafetyOptions};
use crate::secrets::Rotation;
use crate::topology::{HealthMonitor, Role};
use crate::{Driver, Result};
use route::Target;
use std::collections::hash_map::RandomState;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

/// Pools for every node of a configuration, with routing; see the [module docs](self).
/// Cheap to clone.
pub struct Provider<D: Driver> {
    inner: Arc<Inner<D>>,
}

impl<D: Driver> Clone for Provider<D> {
    fn clone(&self) -> Self {
        Provider {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<D: Driver> {
    nodes: Vec<Node>,
    pools: Vec<Pool<D>>,
    breakers: Vec<CircuitBreaker>,
    monitor: HealthMonitor,
    options: TopologyOptions,
    next_read: AtomicUsize,
    random: RandomState,
    driver: D,
    config: Config,
    hooks: Hooks,
    /// Where the provider's own statements go: `target_session_attrs`.
    default: Target,
    lb: LoadBalanceHosts,
    retry: RetryPolicy,
    /// The tenancy layer's state, attached by it ([`ProviderBuilder::tenancy`]): the
    /// provider does not know its type, so the layers below never depend on tenancy.
    pub(crate) tenancy: Option<Arc<dyn std::any::Any + Send + Sync>>,
    /// The safety monitor, when asked for ([`ProviderBuilder::safety`]).
    safety: Option<SafetyMonitor>,
    /// The SQL firewall ([`ProviderBuilder::firewall`]).
    firewall: Option<Arc<Firewall>>,
    /// Role-based access ([`ProviderBuilder::access`]).
    access: Option<Arc<AccessPolicy>>,
    /// The rotating secret ([`ProviderBuilder::secret`]).
    rotation: Option<Arc<Rotation>>,
}

/// What a [`ProviderBuilder`] adds beyond the topology and hooks.
#[derive(Default)]
struct Extras {
    tenancy: Option<Arc<dyn std::any::Any + Send + Sync>>,
    safety: Option<SafetyOptions>,
    firewall: Option<Arc<Firewall>>,
    access: Option<Arc<AccessPolicy>>,
    rotation: Option<Arc<Rotation>>,
}

/// The safety monitor's task ends with the provider (at once, not at its next round).
impl<D: Driver> Drop for Inner<D> {
    fn drop(&mut self) {
        if let Some(s) = &self.safety {
            s.stop();
        }
    }
}

impl<D: Driver> std::fmt::Debug for Provider<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("monitor", &self.inner.monitor)
            .finish()
    }
}

impl<D: Driver + Clone> Provider<D> {
    /// A pool per node of `config` and a monitor probing them (inside a tokio runtime).
    pub fn new(driver: D, config: &Config, options: TopologyOptions) -> Self {
        Self::with_hooks(driver, config, options, Hooks::default())
    }

    /// A provider for `url` (libpq's URL syntax, several hosts allowed) with the default
    /// topology options.
    ///
    /// # Errors
    /// Every problem of the URL at once ([`ConfigError`](crate::ConfigError)).
    pub fn from_url(driver: D, url: &str) -> Result<Self> {
        let config = Config::from_url(url)?;
        Ok(Self::new(driver, &config, TopologyOptions::default()))
    }

    /// A provider for the `PG*` environment variables (`PGHOST` with several hosts, …).
    ///
    /// # Errors
    /// Every problem of the environment at once.
    pub fn from_env(driver: D) -> Result<Self> {
        let config = Config::from_env()?;
        Ok(Self::new(driver, &config, TopologyOptions::default()))
    }

    /// A builder for the options, hooks and tenancy of a provider.
    pub fn builder(driver: D, config: &Config) -> ProviderBuilder<D> {
        ProviderBuilder {
            driver,
            config: config.clone(),
            options: TopologyOptions::default(),
            hooks: Hooks::default(),
            extras: Extras::default(),
        }
    }

    /// As [`new`](Self::new), with every operation of every pool running through `hooks`
    /// (see [`observe`](crate::observe)).
    pub fn with_hooks(driver: D, config: &Config, options: TopologyOptions, hooks: Hooks) -> Self {
        Self::build(driver, config, options, hooks, Extras::default())
    }

    fn build(
        driver: D,
        config: &Config,
        options: TopologyOptions,
        hooks: Hooks,
        extras: Extras,
    ) -> Self {
        let Extras {
            tenancy,
            safety,
            firewall,
            access,
            rotation,
        } = extras;
        let mut config = config.clone();
        if let Some(r) = &rotation {
            config.set_rotation(r.clone());
        }
        let config = &config;
        let safety = safety.map(SafetyMonitor::new);
        // The monitor counts the application's deadlocks with a hook of its own, first.
        let hooks = match &safety {
            Some(s) => hooks.with_hook(i32::MIN, s.deadlock_hook()),
            None => hooks,
        };
        // Access, then the firewall, before every other hook: nothing refused is seen
        // as sent.
        let hooks = match &access {
            Some(a) => hooks.with_hook(i32::MIN + 1, Arc::new(AccessHook(a.clone()))),
            None => hooks,
        };
        let hooks = match &firewall {
            Some(f) => hooks.with_hook(i32::MIN + 2, Arc::new(FirewallHook(f.clone()))),
            None => hooks,
        };
        let nodes = config.nodes().to_vec();
        let monitor = HealthMonitor::start(driver.clone(), config, options.monitor_interval);
        let pools = nodes
            .iter()
            .map(|n| {
                Pool::builder(driver.clone(), config, n)
                    .track_sessions(safety.is_some())
                    .on_suspect(monitor.rechecker(n))
                    .observe(hooks.clone())
                    .build()
            })
            .collect();
        let breakers = nodes
            .iter()
            .map(|n| CircuitBreaker::new(n.to_string(), options.breaker))
            .collect();
        let inner = Arc::new(Inner {
            nodes,
            pools,
            breakers,
            monitor,
            next_read: AtomicUsize::new(0),
            random: RandomState::new(),
            driver: driver.clone(),
            config: config.clone(),
            hooks: hooks.clone(),
            default: Target::Attrs(config.target_session_attrs()),
            lb: config.load_balance_hosts(),
            retry: options.retry_policy(),
            tenancy,
            options,
            safety,
            firewall,
            access,
            rotation,
        });
        tasks::start_safety(&inner, driver);
        tasks::start_rotation(&inner);
        tokio::spawn(tasks::retire_on_role_change(
            Arc::downgrade(&inner),
            inner.monitor.changes(),
        ));
        Provider { inner }
    }
}

/// Builds a [`Provider`] with options, hooks and tenancy.
///
/// ```no_run
/// # async fn run() -> pgprovider::Result<()> {
/// use pgprovider::provider::{Provider, TopologyOptions};
/// use pgprovider::tenant::{Strategy, TenancyOptions};
/// let config = pgprovider::Config::from_url("postgres://app@db1,db2/app?target_session_attrs=read-write")?;
/// let provider = Provider::builder(pgprovider_tokio_postgres::TokioPostgres::new(), &config)
///     .topology(TopologyOptions::default().with_max_replica_lag(Some(std::time::Duration::from_secs(2))))
///     .tenancy(TenancyOptions::new(Strategy::Schema))
///     .build();
/// provider.tenant("acme")?.execute("INSERT INTO notes (body) VALUES ($1)", &[&"hi"]).await?;
/// # Ok(()) }
/// ```
pub struct ProviderBuilder<D: Driver> {
    driver: D,
    config: Config,
    options: TopologyOptions,
    hooks: Hooks,
    extras: Extras,
}

impl<D: Driver> std::fmt::Debug for ProviderBuilder<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderBuilder")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<D: Driver + Clone> ProviderBuilder<D> {
    /// Routing, lag bounds, failover timeout, breakers, retries.
    pub fn topology(mut self, options: TopologyOptions) -> Self {
        self.options = options;
        self
    }
    /// Hooks every operation runs through.
    pub fn hooks(mut self, hooks: Hooks) -> Self {
        self.hooks = hooks;
        self
    }
    /// Starts a [safety monitor](crate::safety) with the provider: blocking chains, long
    /// and idle transactions, deadlocks, connection headroom, prepared transactions, slots
    /// and wraparound, probed on the primary (and the standbys, when asked) at
    /// `options.interval`, as hook events, metrics and lines of the health report. It adds a
    /// hook of its own (counting the application's `40P01`s) to every operation.
    pub fn safety(mut self, options: SafetyOptions) -> Self {
        self.extras.safety = Some(options);
        self
    }

    /// Attaches the tenancy layer's state.
    pub(crate) fn attach_tenancy(mut self, state: Arc<dyn std::any::Any + Send + Sync>) -> Self {
        self.extras.tenancy = Some(state);
        self
    }

    /// The provider (inside a tokio runtime: it starts the monitor).
    pub fn build(self) -> Provider<D> {
        Provider::build(
            self.driver,
            &self.config,
            self.options,
            self.hooks,
            self.extras,
        )
    }
}

impl<D: Driver> Provider<D> {
    /// The health monitor.
    pub fn monitor(&self) -> &HealthMonitor {
        &self.inner.monitor
    }

    /// The safety monitor, when one was asked for ([`ProviderBuilder::safety`]).
    pub fn safety(&self) -> Option<&SafetyMonitor> {
        self.inner.safety.as_ref()
    }

    /// The configuration the provider was made with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The driver.
    pub fn driver(&self) -> &D {
        &self.inner.driver
    }

    /// The hooks every pool of the provider runs operations through.
    pub fn hooks(&self) -> &Hooks {
        &self.inner.hooks
    }

    /// How long writes wait for a primary.
    pub fn failover_timeout(&self) -> Duration {
        self.inner.options.failover_timeout
    }

    /// Every node's health and the overall verdict; see [`health`](crate::health).
    pub fn health(&self) -> HealthReport {
        let monitor = &self.inner.monitor;
        let nodes = monitor
            .statuses()
            .into_iter()
            .zip(&self.inner.pools)
            .map(|(s, pool)| {
                let p = pool.stats();
                let mut n = NodeHealth::new(s.node, s.reachable, s.role);
                n.fenced = s.fenced;
                n.replay_lag_bytes = s.replay_lag_bytes;
                n.pool_in_use = p.in_use;
                n.pool_max = p.max_size;
                n.pool_waiters = p.waiters;
                n.last_error = if s.reachable { None } else { s.last_error };
                n
            })
            .collect();
        HealthReport::new(
            nodes,
            monitor.primary().map(|n| n.to_string()),
            monitor.split_brain().is_some(),
        )
        .with_safety(
            self.inner
                .safety
                .as_ref()
                .map(SafetyMonitor::problems)
                .unwrap_or_default(),
        )
    }

    /// Publishes every pool's figures (labelled with the node's role) and the split-brain
    /// count to the `metrics` recorder; see [`observe`](crate::observe).
    pub fn record_metrics(&self) {
        for (s, pool) in self.inner.monitor.statuses().iter().zip(&self.inner.pools) {
            let role = match s.role {
                Role::Primary if s.fenced => "fenced",
                Role::Primary => "primary",
                Role::Standby => "standby",
                _ => "unknown",
            };
            crate::observe::record_pool_metrics(&s.node, role, &pool.stats());
        }
        metrics::counter!("pgprovider_split_brains_total")
            .absolute(self.inner.monitor.split_brains());
    }

    /// The pool of `node`.
    pub fn pool(&self, node: &Node) -> Option<&Pool<D>> {
        let i = self.inner.nodes.iter().position(|n| n == node)?;
        Some(&self.inner.pools[i])
    }

    /// Every node's pool statistics, in configuration order.
    pub fn stats(&self) -> Vec<(Node, PoolStats)> {
        self.inner
            .nodes
            .iter()
            .cloned()
            .zip(self.inner.pools.iter().map(Pool::stats))
            .collect()
    }

    /// Closes every pool: checkouts fail from now on, idle connections are closed, and
    /// checked-out ones when they come back. The monitor stops with the last clone.
    pub async fn close(&self) {
        if let Some(s) = &self.inner.safety {
            s.stop();
        }
        // What learn mode learned is kept.
        if let Some(f) = &self.inner.firewall {
            if f.options().mode == crate::firewall::Mode::Learn && f.options().allowlist.is_some() {
                if let Err(e) = f.save() {
                    tracing::error!(target: "pgprovider::firewall", error = %e, "cannot save the learned allowlist");
                }
            }
        }
        for pool in &self.inner.pools {
            pool.close().await;
        }
    }

    /// The tenancy layer's state, if one was attached.
    pub(crate) fn attached_tenancy(&self) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        self.inner.tenancy.clone()
    }

    /// The circuit breaker of `node`.
    pub fn breaker(&self, node: &Node) -> Option<&CircuitBreaker> {
        let i = self.inner.nodes.iter().position(|n| n == node)?;
        Some(&self.inner.breakers[i])
    }
}

/// A WAL position: reads given it see every write committed before it was taken
/// ([`Provider::consistency_token`], [`Provider::read_after`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConsistencyToken(pub u64);
