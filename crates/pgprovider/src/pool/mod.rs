//! The connection pool: one per node.
//!
//! A FIFO-fair [`tokio::sync::Semaphore`] bounds the connections; idle connections wait in
//! a short-locked queue (never locked across an await). A checkout takes a permit, reuses
//! the most recently returned idle connection (so surplus ones age out) or opens a new one,
//! and returns a [`Pooled`] guard. A connection is opened only under a permit with the idle
//! queue empty, so open connections never exceed the maximum size.
//!
//! Dropping the guard returns the connection, unless it is broken, past its lifetime, or
//! the pool is closed or shrinking, in which case it is closed. A returned connection whose
//! session may carry state (an open transaction, changed settings: see
//! [`Connection::needs_reset`]) is reset first, in a task of its own, and closed if the
//! reset fails; the next user never inherits it.
//!
//! Deadlines without collapse. Callers give up (`tokio::time::timeout`, a dropped request),
//! and a pool that closed every connection whose statement was abandoned, and abandoned
//! every connection it was opening for a caller who left, would empty itself under a burst
//! of short deadlines and never refill: each replacement must be opened within somebody's
//! deadline (measured before this design: 64 callers with 1 ms deadlines on a warm pool of
//! 8 got 7 successes in 5 s and ended with no connection). So:
//! - an [interrupted](Connection::interrupted) connection whose abandoned statement was
//!   harmless (no setting, no transaction) goes straight back to the idle queue when the
//!   driver discards the replies itself ([`Connection::release_in_place`]: no round trip,
//!   the next statement queues behind it, as with deadpool); any other is
//!   [recovered](Connection::recover) in the return task: its replies drained and any
//!   transaction rolled back, then reset as usual. Past 100 ms the abandoned statement is
//!   cancelled on the server; the connection is then kept only if the cancel is seen to
//!   land (a cancel still on its way would hit the next user's statement), and closed past
//!   5 s;
//! - a connection is opened in a task of its own that holds the checkout's permit: handed
//!   to the caller if still there, else added to the idle queue (`adopted`), so the pool
//!   refills under any deadline. At most four attempts run at once per pool, so a storm
//!   of checkouts is not a storm of connection attempts; failed attempts back off.
//!
//! One deadline covers the whole checkout: waiting for a permit, validating idle
//! connections and opening new ones, with backoff between failed connection attempts. A
//! timeout error names the node, the pool's state and the last connection error.
//!
//! A background task (started when the pool is made inside a tokio runtime) keeps
//! `min_idle` connections ready, closes idle connections past the idle timeout (down to
//! `min_idle`) or their lifetime, applies a shrinking [`resize`](Pool::resize), and reports
//! leaks. It holds only a weak reference, so it ends when the pool is dropped.
//!
//! Why hand-written and not deadpool or bb8: the pool is the heart of the provider (per-node
//! pools, tenant quotas, leak detection, multiplexing), and DESIGN.md requires it to beat both.
//!
//! # Several hosts
//!
//! [`Pool::from_config`] makes one pool over every host of a URL such as
//! `postgres://db1,db2/app?target_session_attrs=read-write`: each new connection tries the
//! hosts in order (`load_balance_hosts=random`: from a random one) and keeps the first whose
//! session matches `target_session_attrs` (`any`, `read-write`, `read-only`, `primary`,
//! `standby`, `prefer-standby`, checked on the server as libpq does). After a failover the
//! old primary's connections break and new ones go to the host that matches now. For routing
//! that knows every node's role, lag and health, use the
//! [`Provider`](crate::provider::Provider).
//!
//! # Adaptive pipelining
//!
//! With `pool_pipeline=on` (a depth of 32) or `pool_pipeline=N`, a plain read run through
//! [`Pool::query`] (and `query_one`, `query_opt`, `query_as`, the provider's reads) that
//! finds every connection checked out does not wait for one: it is sent on a busy
//! connection, behind the statement its holder runs, as tokio-postgres pipelines
//! concurrent requests. Replies come back in order; each read gets its own.
//!
//! What may share, and when:
//! - a connection takes pipelined reads while its holder runs, through the pool's or the
//!   provider's `query`/`execute`, a statement that changes neither the session nor the
//!   transaction, on a connection outside a transaction with nothing to reset; and, once
//!   such a holder gives it back clean, on its way back and while idle. The next checkout
//!   closes it (under the connection's own lock) before its holder can send anything, so a
//!   pipelined read never runs inside a transaction or after a `SET`; connections held
//!   through [`Pool::get`] take none while held. Reads still in flight when a connection
//!   is checked out are queued ahead of its holder's first statement: until that
//!   statement's reply, a query timeout closes the connection rather than sending a
//!   cancel that could stop someone else's read ([`Connection::queued_ahead`]);
//! - only plain reads are pipelined (`SELECT`, `WITH`, `VALUES`, `TABLE`, `SHOW`,
//!   `EXPLAIN`; no data-modifying `WITH`, `EXPLAIN ANALYZE`, `INTO`, row locks, sequence
//!   functions, `set_config` or advisory locks), one statement at a time, each a
//!   transaction of its own, and only statements the connection's holders have prepared
//!   (a prepare may take several exchanges). Writes wait for a connection: a pipelined
//!   write would be safe as a transaction of its own, but its outcome would hang on the
//!   statement ahead of it;
//! - at most `N` per connection; room is handed out in arrival order (a FIFO semaphore of
//!   `N` × `pool_max_size` permits; those waiting for it count as waiters for
//!   `pool_max_waiters`), so no read starves while later ones pipeline, and checkouts of
//!   whole connections keep their own FIFO queue;
//! - head-of-line blocking is limited twice: a connection that has finished nothing for
//!   1 ms while work is outstanding gets no more reads, and a statement whose time on the
//!   server averages more than 5 ms (measured per connection and statement text, from the
//!   reply before it to its own) is neither pipelined nor shared.
//!
//! A pipelined read past the query timeout is given up (its reply discarded) but not
//! cancelled on the server: a cancel request would hit whichever statement the shared
//! session runs. A stale statement, a lost connection or a cancel meant for the holder
//! sends the read to a connection of its own instead (reads are safe to repeat; a read
//! that writes through a function would run twice). Pools with operation hooks pipeline
//! nothing yet (hooks see every statement on the connection that runs it); a warning says
//! so. `PoolStats::pipelined` and `pipeline_fallbacks` count what happened.
//!
//! **Off by default.** Pipelining changes what a read waits for: behind someone else's
//! statement rather than in the queue. In `pgprovider bench` (docs/PERFORMANCE.md) it ran
//! reads at 1.3–2.0× deadpool (and the classic pool) with 64 tasks on 8 connections and at
//! 1.9–2.3× with 1,000 tasks, with a p99.9 below the classic pool's at 1,000 tasks and
//! within 1.3× of it with slow statements in the mix. It needs the tokio-postgres driver
//! (sqlx and diesel-async pools ignore it), cannot run behind a transaction-mode pooler,
//! and does not cancel pipelined reads on the server; a service whose reads dominate and
//! whose pool is often saturated should turn it on.
//!
//! # Auto-scaling
//!
//! With `pool_autoscale=on` the pool starts at `pool_min_idle` connections (at least one)
//! and its size ([`PoolStats::max_size`]) follows the load up to `pool_max_size`: it
//! grows by `pool_autoscale_step` when the mean checkout wait of a 10 ms round reaches
//! `pool_autoscale_wait` (or callers wait through a round served by nobody), at most once
//! per `pool_autoscale_cooldown`, and shrinks by at most a step once connections stayed
//! idle through a whole `pool_autoscale_idle` window without growth. Without it the pool
//! opens connections whenever a checkout finds none idle, up to `pool_max_size` at once:
//! auto-scaling keeps the server from a burst of connections that a short wait would have
//! served. `PoolStats::autoscale_grows` and `autoscale_shrinks` count the changes;
//! `pgprovider bench --autoscale` measures how fast the size follows a step in load and
//! that an oscillating load does not make it thrash.
//!
//! (This file is long by choice: checkout, return and their counters are one state machine
//! whose invariants — permits, `size`, the idle queue, shrink debt — are read together; the
//! parts that stand alone are in `deadline`, `guard`, `hooks`, `hosts`, `maintain`, `open`
//! and `stats`.)

mod deadline;
mod guard;
mod hooks;
mod hosts;
mod maintain;
mod open;
pub(crate) mod pipeline;
mod scale;
mod stats;

pub use guard::Pooled;
pub use hooks::{BoxFuture, LeakReport};
use stats::{CloseReason, Counters};
pub use stats::{PoolStats, WAIT_BUCKETS};

use crate::config::{Config, Node, ValidationPolicy};
use hooks::{CatchUnwind, Hooks, guarded};
use open::{MAX_CONNECTING, Opened, Pinging, open_for_checkout};
use pgprovider_core::kit::StatementCaches;
use pgprovider_core::observe::{Hooks as Observe, Operation, OperationKind, Outcome};
use pgprovider_core::{Connection, Driver, Error, ErrorKind, Result};
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, TryAcquireError};
use tokio::time::Instant;

/// A pool of connections to one node.
///
/// Cloning is cheap and shares the pool.
///
/// ```no_run
/// # async fn run() -> Result<(), pgprovider::Error> {
/// use pgprovider::{Config, Connection, Pool};
/// let config = Config::from_url("postgres://app@localhost/app?pool_max_size=8")?;
/// let pool = Pool::new(pgprovider_tokio_postgres::TokioPostgres::new(), &config, &config.nodes()[0]);
/// let mut conn = pool.get().await?;
/// conn.simple_query("SELECT 1").await?;
/// drop(conn); // back to the pool
/// println!("{:?}", pool.stats());
/// pool.close().await;
/// # Ok(()) }
/// ```
pub struct Pool<D: Driver> {
    inner: Arc<Inner<D>>,
}

impl<D: Driver> Clone for Pool<D> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
        }
    }
}

pub(crate) struct Inner<D: Driver> {
    driver: D,
    config: Config,
    node: Node,
    /// Several hosts, picked per connection as libpq does ([`Pool::from_config`]).
    hosts: Option<hosts::Hosts>,
    hooks: Hooks<D::Connection>,
    semaphore: Semaphore,
    /// Turns to open a connection for a checkout ([`MAX_CONNECTING`]).
    connecting: Semaphore,
    max: AtomicUsize,
    /// Permits still to remove after a shrink; `shrinking` mirrors `debt > 0` so the
    /// return path checks one atomic.
    debt: Mutex<usize>,
    shrinking: AtomicBool,
    idle: Mutex<VecDeque<Box<Slot<D::Connection>>>>,
    counters: Counters,
    /// Shared by the statement caches of this pool's connections.
    statements: StatementCaches,
    last_error: Mutex<Option<String>>,
    closed: AtomicBool,
    jitter: (RandomState, AtomicU64),
    /// Returned connections being reset.
    resetting: AtomicU64,
    /// Signalled when a reset ends, and on every return once the pool is closing.
    settled: Notify,
    /// Wakes the maintenance task (resize, close); shared with it so it can wait without
    /// holding the pool.
    wake: Arc<Notify>,
    /// Open checkouts, tracked only when leak detection is on.
    leases: Option<Mutex<Leases>>,
    /// Acquire deadlines of waiting checkouts; `None` when built outside a runtime (a timer
    /// per waiter then).
    deadlines: Option<Arc<deadline::Deadlines>>,
    /// Bumped by [`Pool::retire`]: connections of an older generation are closed when they
    /// come back.
    generation: AtomicU64,
    /// [`Pool::recycle_within`]: connections opened before `epoch + recycle_before` ns go
    /// at a time spread over `recycle_window` ns (0: nothing to recycle).
    epoch: Instant,
    recycle_before: AtomicU64,
    recycle_window: AtomicU64,
    /// The operation hooks, handed to every connection and told of the lifecycle.
    pub(crate) observe: Observe,
    /// `host:port`, for hooks.
    pub(crate) node_name: Arc<str>,
    /// Adaptive pipelining, when `pool_pipeline` is set.
    pub(crate) pipes: Option<pipeline::Pipes>,
    /// Auto-scaling, when `pool_autoscale` is on.
    scale: Option<scale::Scaler>,
    /// New connections' server processes are learned (see `PoolBuilder::track_sessions`).
    track_sessions: bool,
}

/// A connection and its timestamps, boxed once for its whole life so that checkouts and
/// returns move a pointer, not the driver's (large) connection.
pub(crate) struct Slot<C> {
    conn: C,
    expires: Option<Instant>,
    idle_since: Instant,
    /// When its connection attempt began (a secret rotation recycles the connections
    /// begun before it).
    born: Instant,
    generation: u64,
    /// The connection's adaptive-pipelining entry, once it has shared.
    pipe: Option<pipeline::Registered>,
    /// The server process serving it, when the pool tracks sessions.
    pid: Option<i32>,
}

/// How a new connection came to be: its server process (when the pool tracks sessions)
/// and when its connection attempt began (what a recycling compares: the secret it used
/// was read then).
pub(crate) struct Birth {
    pid: Option<i32>,
    at: Instant,
}

/// A permit taken from the semaphore and forgotten, so that no `Arc` is cloned per
/// checkout; given back on drop unless disarmed (then its owner gives it back).
struct Permit<'a>(Option<&'a Semaphore>);

impl Permit<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.0 {
            s.add_permits(1);
        }
    }
}

#[derive(Default)]
pub(crate) struct Leases {
    next: u64,
    open: HashMap<u64, Lease>,
}

pub(crate) struct Lease {
    since: Instant,
    location: &'static Location<'static>,
    reported: bool,
    /// A transaction is open on it, begun at this location.
    transaction: Option<&'static Location<'static>>,
    /// The server process of the connection (pools that track sessions).
    pid: Option<i32>,
    /// The tenant the checkout was for (the task's, see `observe::with_tenant`).
    tenant: Option<Arc<str>>,
}

/// A checkout open now, as the safety monitor joins it to the server's sessions.
#[derive(Clone, Debug)]
pub(crate) struct OpenCheckout {
    /// The server process of its connection.
    pub(crate) pid: i32,
    /// Where it was checked out.
    pub(crate) location: &'static Location<'static>,
    /// Where the transaction open on it began.
    pub(crate) transaction: Option<&'static Location<'static>>,
    /// How long it has been held.
    pub(crate) held_for: Duration,
    /// The tenant it was checked out for.
    pub(crate) tenant: Option<Arc<str>>,
}

impl<D: Driver> fmt::Debug for Pool<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("driver", &self.inner.driver.name())
            .field("node", &self.inner.node.to_string())
            .field("hooks", &self.inner.hooks)
            .field("stats", &self.stats())
            .finish()
    }
}

const BACKOFF_START: Duration = Duration::from_millis(25);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Builds a [`Pool`] with lifecycle hooks; see the table in the `hooks` docs for when each
/// runs and what its failure does.
///
/// ```no_run
/// # async fn run() -> Result<(), pgprovider::Error> {
/// use pgprovider::{Config, Connection, Pool};
/// use pgprovider_tokio_postgres::TokioPostgres;
/// let config = Config::from_url("postgres://app@localhost/app")?;
/// let pool = Pool::builder(TokioPostgres::new(), &config, &config.nodes()[0])
///     .after_connect(|conn| Box::pin(async move {
///         conn.simple_query("SET application_name = 'worker'").await.map(|_| ())
///     }))
///     .on_leak(|leak| eprintln!("connection from {} held for {:?}", leak.location, leak.held_for))
///     .build();
/// # Ok(()) }
/// ```
#[must_use]
pub struct PoolBuilder<D: Driver> {
    driver: D,
    config: Config,
    node: Node,
    hosts: bool,
    hooks: Hooks<D::Connection>,
    observe: Observe,
    track_sessions: bool,
}

impl<D: Driver> fmt::Debug for PoolBuilder<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("node", &self.node.to_string())
            .field("hooks", &self.hooks)
            .finish()
    }
}

impl<D: Driver> PoolBuilder<D> {
    /// Runs `f` on every new connection before its first use, such as to set session
    /// defaults. (Settings it makes survive the pool's reset on return only if they are
    /// connection defaults: prefer the `options` URL key for `SET`s.)
    pub fn after_connect<F>(mut self, f: F) -> Self
    where
        F: for<'a> Fn(&'a mut D::Connection) -> BoxFuture<'a, Result<()>> + Send + Sync + 'static,
    {
        self.hooks.after_connect = Some(Arc::new(f));
        self
    }

    /// Asks `f` before an idle connection is handed out; `false` closes it and another is
    /// taken.
    pub fn before_checkout(
        mut self,
        f: impl Fn(&D::Connection) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.hooks.before_checkout = Some(Arc::new(f));
        self
    }

    /// Calls `f` on each connection put back into the idle queue.
    pub fn after_return(mut self, f: impl Fn(&D::Connection) + Send + Sync + 'static) -> Self {
        self.hooks.after_return = Some(Arc::new(f));
        self
    }

    /// Runs every operation of the pool's connections, and its connection lifecycle
    /// (connect, checkout, return, close), through `hooks` (see
    /// [`observe`](crate::observe)).
    pub fn observe(mut self, hooks: Observe) -> Self {
        self.observe = hooks;
        self
    }

    /// Calls `f` when a connection comes back broken, or after the server refused a
    /// statement on it as read-only (`25006`): the node may have failed or been demoted.
    /// The provider uses it to have the node probed at once.
    pub fn on_suspect(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.hooks.on_suspect = Some(Arc::new(f));
        self
    }

    /// Has the pool learn each new connection's server process (one round trip) and keep
    /// every checkout's location and tenant, so the [safety monitor](crate::safety) can say
    /// which of the server's sessions is which checkout. The provider sets it when it has a
    /// safety monitor.
    pub(crate) fn track_sessions(mut self, on: bool) -> Self {
        self.track_sessions = on;
        self
    }

    /// Calls `f` once for each checkout held longer than the leak-detection threshold
    /// (besides the `warn` event and the `leaks` count, which happen anyway).
    pub fn on_leak(mut self, f: impl Fn(&LeakReport) + Send + Sync + 'static) -> Self {
        self.hooks.on_leak = Some(Arc::new(f));
        self
    }

    /// Makes the pool. Inside a tokio runtime this also starts its maintenance task.
    pub fn build(self) -> Pool<D> {
        let ceiling = self.config.pool().max_size();
        // Auto-scaling starts at its floor and grows under load.
        let max = match self.config.pool().autoscale() {
            Some(_) => scale::floor(&self.config),
            None => ceiling,
        };
        // Behind a transaction pooler the server process changes from statement to
        // statement: nothing to join.
        let track_sessions =
            self.track_sessions && self.config.pooler() != pgprovider_core::PoolerMode::Transaction;
        let leases = (self.config.pool().leak_detection_threshold().is_some() || track_sessions)
            .then(|| Mutex::new(Leases::default()));
        let observe = self.observe.for_database(self.config.dbname());
        let hosts =
            (self.hosts && self.config.nodes().len() > 1).then(|| hosts::Hosts::new(&self.config));
        let node_name = match &hosts {
            Some(h) => Arc::from(
                h.nodes
                    .iter()
                    .map(Node::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            None => Arc::from(self.node.to_string()),
        };
        // Refused by validation behind a transaction pooler; a config made otherwise still
        // never pipelines there.
        let mut pipes = self
            .config
            .pool()
            .pipeline()
            .filter(|_| self.config.pooler() != pgprovider_core::PoolerMode::Transaction)
            .map(|depth| pipeline::Pipes::new(depth, ceiling));
        if pipes.is_some() && !self.observe.is_empty() {
            // Hooks see each statement on the connection that runs it; a pipelined read
            // has none of its own yet.
            tracing::warn!(
                node = %self.node,
                "pool_pipeline is ignored for a pool with operation hooks: its reads are not pipelined"
            );
            pipes = None;
        }
        let scale = self.config.pool().autoscale().map(scale::Scaler::new);
        let inner = Arc::new(Inner {
            driver: self.driver,
            config: self.config,
            node: self.node,
            hosts,
            hooks: self.hooks,
            semaphore: Semaphore::new(max),
            connecting: Semaphore::new(MAX_CONNECTING),
            max: AtomicUsize::new(max),
            debt: Mutex::new(0),
            shrinking: AtomicBool::new(false),
            idle: Mutex::new(VecDeque::with_capacity(ceiling)),
            counters: Counters::default(),
            statements: StatementCaches::new(),
            last_error: Mutex::new(None),
            closed: AtomicBool::new(false),
            jitter: (RandomState::new(), AtomicU64::new(0)),
            resetting: AtomicU64::new(0),
            settled: Notify::new(),
            wake: Arc::new(Notify::new()),
            leases,
            deadlines: deadline::Deadlines::start(),
            generation: AtomicU64::new(0),
            epoch: Instant::now(),
            recycle_before: AtomicU64::new(0),
            recycle_window: AtomicU64::new(0),
            scale,
            pipes,
            observe,
            node_name,
            track_sessions,
        });
        maintain::start(&inner);
        Pool { inner }
    }
}

impl<D: Driver> Pool<D> {
    /// A pool of connections to `node`, with the pool knobs of `config` and no hooks.
    pub fn new(driver: D, config: &Config, node: &Node) -> Self {
        Self::builder(driver, config, node).build()
    }

    /// A builder, to add lifecycle hooks.
    pub fn builder(driver: D, config: &Config, node: &Node) -> PoolBuilder<D> {
        PoolBuilder {
            driver,
            config: config.clone(),
            node: node.clone(),
            hosts: false,
            hooks: Hooks::default(),
            observe: Observe::default(),
            track_sessions: false,
        }
    }

    /// A pool over every host of `config`, each new connection going to a host picked as
    /// libpq does: in order (`load_balance_hosts=random`: from a random one), the first
    /// whose session matches `target_session_attrs` (see [several hosts](crate::pool#several-hosts)).
    /// With one host, as [`new`](Self::new).
    ///
    /// ```no_run
    /// # async fn run() -> pgprovider::Result<()> {
    /// let config = pgprovider::Config::from_url("postgres://app@db1,db2/app?target_session_attrs=read-write")?;
    /// let pool = pgprovider::Pool::from_config(pgprovider_tokio_postgres::TokioPostgres::new(), &config);
    /// pool.execute("INSERT INTO t VALUES (1)", &[]).await?; // on whichever host is the primary
    /// # Ok(()) }
    /// ```
    pub fn from_config(driver: D, config: &Config) -> Self {
        Self::builder_from_config(driver, config).build()
    }

    /// A builder for [`from_config`](Self::from_config).
    pub fn builder_from_config(driver: D, config: &Config) -> PoolBuilder<D> {
        let mut b = Self::builder(driver, config, &config.nodes()[0]);
        b.hosts = true;
        b
    }

    /// How many hosts the pool picks from.
    pub(crate) fn hosts(&self) -> usize {
        self.inner.hosts.as_ref().map_or(1, |h| h.nodes.len())
    }

    /// The configuration the pool was built with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The node this pool connects to (for a pool over several hosts, the first).
    pub fn node(&self) -> &Node {
        &self.inner.node
    }

    /// A snapshot of the pool's state and counters.
    pub fn stats(&self) -> PoolStats {
        self.inner.stats()
    }

    /// The checkouts open now whose server process is known (pools that track sessions).
    pub(crate) fn open_checkouts(&self) -> Vec<OpenCheckout> {
        self.inner.open_checkouts()
    }

    /// Checks out a connection, waiting in FIFO order when all are in use. The caller's
    /// location is kept for leak reports.
    ///
    /// Cancel-safe: dropping the future while it waits or connects leaves the pool's counts
    /// right and any half-made connection closed.
    ///
    /// # Errors
    /// - [`ErrorKind::PoolTimeout`] when no connection is ready within the acquire timeout;
    ///   the error names the node, the pool's state and the last connection error.
    /// - [`ErrorKind::PoolClosed`] once [`close`](Self::close) was called.
    /// - A connection error that retrying cannot fix (authentication, configuration), or
    ///   the error of the `after_connect` hook.
    #[track_caller]
    pub fn get(&self) -> impl Future<Output = Result<Pooled<D>>> + Send + '_ {
        let at = Location::caller();
        self.checkout(at)
    }

    async fn checkout(&self, at: &'static Location<'static>) -> Result<Pooled<D>> {
        let inner = &self.inner;
        if inner.closed.load(Relaxed) {
            return Err(inner.closed_error());
        }
        // Fast path: a free permit, no clock, no timer. Slow path: wait in FIFO order
        // under the acquire deadline, counted as a waiter.
        let mut start = None;
        let permit = match inner.semaphore.try_acquire() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => return Err(inner.closed_error()),
            Err(TryAcquireError::NoPermits) => {
                if let Some(max) = inner.config.pool().max_waiters() {
                    if inner.counters.waiters.load(Relaxed) >= max as u64 {
                        return Err(inner.overloaded_error(max));
                    }
                }
                let now = Instant::now();
                start = Some(now);
                let _waiting = CountGuard::new(&inner.counters.waiters);
                let deadline = now + inner.config.pool().acquire_timeout();
                let acquired = match &inner.deadlines {
                    Some(d) => {
                        let registration = d.register(deadline);
                        let acquire = std::pin::pin!(inner.semaphore.acquire());
                        registration.bound(acquire).await
                    }
                    None => tokio::time::timeout_at(deadline, inner.semaphore.acquire())
                        .await
                        .ok(),
                };
                match acquired {
                    Some(Ok(p)) => p,
                    Some(Err(_)) => return Err(inner.closed_error()),
                    None => return Err(inner.timeout_error(now)),
                }
            }
        };
        permit.forget();
        let permit = Permit(Some(&inner.semaphore));
        let mut now = Instant::now();
        let deadline = start.unwrap_or(now) + inner.config.pool().acquire_timeout();
        while let Some(mut slot) = inner.pop_idle() {
            // Closed to pipelined reads before anything is sent on it (the ping too); the
            // connection is told when reads may still be queued ahead.
            if slot.pipe.as_ref().is_some_and(|p| p.checked_out()) {
                slot.conn.queued_ahead();
            }
            // Closed while idle (the server ended the session, the network reset it): a
            // synchronous check, no round trip.
            if slot.conn.is_broken() {
                inner.close_conn(slot.conn, CloseReason::Error);
                continue;
            }
            if inner.due(&slot, now) {
                inner.close_conn(slot.conn, CloseReason::Lifetime);
                continue;
            }
            let idle_for = now.saturating_duration_since(slot.idle_since);
            if inner
                .config
                .pool()
                .idle_timeout()
                .is_some_and(|t| idle_for >= t)
            {
                inner.close_conn(slot.conn, CloseReason::Idle);
                continue;
            }
            let validate = match inner.config.pool().validation() {
                ValidationPolicy::Always => true,
                ValidationPolicy::WhenIdleFor(t) => idle_for >= t,
                _ => false,
            };
            if validate {
                // Closed (and counted) if the caller gives up mid-ping.
                let mut pinging = Pinging {
                    slot: Some(slot),
                    pool: inner,
                };
                let conn = &mut pinging.slot.as_mut().expect("present until taken").conn;
                let ok = matches!(
                    tokio::time::timeout_at(deadline, conn.ping()).await,
                    Ok(Ok(()))
                );
                slot = pinging.slot.take().expect("present until taken");
                now = Instant::now();
                if !ok {
                    inner.close_conn(slot.conn, CloseReason::Validation);
                    continue;
                }
            }
            if let Some(check) = &inner.hooks.before_checkout {
                let node = inner.node.to_string();
                if guarded("before_checkout", &node, || check(&slot.conn)) != Some(true) {
                    inner.close_conn(slot.conn, CloseReason::Validation);
                    continue;
                }
            }
            return Ok(self.hand_out(slot, permit, start, now, at));
        }
        let slot = match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                // Opened in a task of its own that owns the permit meanwhile: if this caller
                // gives up (a deadline), the connection still joins the pool, so the pool
                // refills under any deadline.
                let (tx, rx) = tokio::sync::oneshot::channel();
                permit.disarm();
                // Counted like a reset, so that `close` waits for it, and in `size` from now
                // on, so that warm-up sees it (the task's `Opener` gives both back).
                inner.resetting.fetch_add(1, Relaxed);
                inner.counters.size.fetch_add(1, Relaxed);
                rt.spawn(open_for_checkout(
                    self.inner.clone(),
                    deadline,
                    start.unwrap_or(now),
                    tx,
                ));
                let opened = rx.await.map_err(|_| {
                    Error::new(
                        ErrorKind::Other,
                        "the task opening a connection ended early",
                    )
                    .with_node(inner.node.to_string())
                    .with_hint("the tokio runtime is shutting down")
                })??;
                if inner.closed.load(Relaxed) {
                    drop(opened); // closes it
                    return Err(inner.closed_error());
                }
                let slot = Opened::take(opened);
                // The permit came back with the connection.
                let permit = Permit(Some(&inner.semaphore));
                let now = Instant::now();
                return Ok(self.hand_out(slot, permit, start, now, at));
            }
            Err(_) => {
                let reservation = CountGuard::new(&inner.counters.size);
                let (conn, birth) = inner.connect_until(deadline, start.unwrap_or(now)).await?;
                reservation.keep();
                inner.new_slot(conn, birth)
            }
        };
        Ok(self.hand_out(slot, permit, start, Instant::now(), at))
    }

    fn hand_out(
        &self,
        slot: Box<Slot<D::Connection>>,
        permit: Permit<'_>,
        start: Option<Instant>,
        now: Instant,
        at: &'static Location<'static>,
    ) -> Pooled<D> {
        let c = &self.inner.counters;
        c.acquired.fetch_add(1, Relaxed);
        c.in_use.fetch_add(1, Relaxed);
        match start {
            Some(s) => c.waited(now.saturating_duration_since(s)),
            None => c.waited_none(),
        }
        if !self.inner.observe.is_empty() {
            let waited = start.map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
            self.inner.lifecycle(OperationKind::Checkout, waited);
        }
        let lease = self.inner.leases.as_ref().map(|l| {
            let mut l = lock(l);
            l.next += 1;
            let id = l.next;
            l.open.insert(
                id,
                Lease {
                    since: now,
                    location: at,
                    reported: false,
                    transaction: None,
                    pid: slot.pid,
                    // Only the safety monitor's join reads it.
                    tenant: if self.inner.track_sessions {
                        pgprovider_core::observe::current_tenant()
                    } else {
                        None
                    },
                },
            );
            id
        });
        // From here the guard gives the permit back.
        permit.disarm();
        Pooled::new(slot, lease, self.inner.clone())
    }

    /// Changes the maximum size at run time. Growing takes effect at once; shrinking closes
    /// surplus idle connections at once and surplus busy ones as they are returned. With
    /// [auto-scaling](crate::pool#auto-scaling) on, it sets the ceiling the pool grows to
    /// (above `pool_max_size` too), shrinking at once only a pool above it.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] for a size of zero.
    pub fn resize(&self, max_size: usize) -> Result<()> {
        if max_size == 0 || max_size > crate::config::MAX_POOL_SIZE {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "a pool size must be between 1 and {}",
                    crate::config::MAX_POOL_SIZE
                ),
            )
            .with_node(self.inner.node.to_string())
            .with_hint("give a size the server's max_connections can hold"));
        }
        if let Some(sc) = &self.inner.scale {
            // Auto-scaling: the new ceiling; the size follows the load below it.
            sc.ceiling.store(max_size, Relaxed);
            if self.inner.max.load(Relaxed) > max_size {
                self.inner.resize_to(max_size);
            }
            return Ok(());
        }
        self.inner.resize_to(max_size);
        Ok(())
    }

    /// Stops handing out connections and closes the idle ones; connections in use are
    /// closed as they are returned. Waiting checkouts fail with [`ErrorKind::PoolClosed`].
    /// Returns once every connection the pool holds (idle, or being reset after a return)
    /// is closed; see [`close_graceful`](Self::close_graceful) to also wait for busy ones.
    pub async fn close(&self) {
        self.close_within(Duration::ZERO).await;
    }

    /// As [`close`](Self::close), and waits up to `deadline` for checked-out connections to
    /// come back. Returns how many were still out when it gave up (they are closed when
    /// returned).
    pub async fn close_graceful(&self, deadline: Duration) -> usize {
        self.close_within(deadline).await
    }

    async fn close_within(&self, wait: Duration) -> usize {
        let inner = &self.inner;
        inner.closed.store(true, Relaxed);
        inner.semaphore.close();
        inner.connecting.close();
        inner.wake.notify_one();
        let until = Instant::now() + wait;
        loop {
            let settled = inner.settled.notified();
            let mut settled = std::pin::pin!(settled);
            settled.as_mut().enable();
            let idle: Vec<_> = lock(&inner.idle).drain(..).collect();
            for slot in idle {
                inner.counters.closed(CloseReason::Pool);
                slot.conn.close().await;
            }
            let out = inner.counters.in_use.load(Relaxed) as usize;
            let resetting = inner.resetting.load(Relaxed);
            if resetting == 0 && (out == 0 || Instant::now() >= until) {
                return out;
            }
            if resetting == 0 {
                let _ = tokio::time::timeout_at(until, settled).await;
            } else {
                settled.await;
            }
        }
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Relaxed)
    }

    /// Closes every idle connection now and every checked-out one when it comes back; new
    /// checkouts open fresh connections. The topology calls it when the node changes role
    /// (a primary demoted, a standby promoted), so no session from before the change is
    /// reused. Returns how many idle connections were closed.
    pub fn retire(&self) -> usize {
        let inner = &self.inner;
        inner.generation.fetch_add(1, Relaxed);
        // Under the idle lock: a return racing this either sees the new generation or
        // lands before the drain.
        let idle: Vec<_> = lock(&inner.idle).drain(..).collect();
        let n = idle.len();
        for slot in idle {
            inner.close_conn(slot.conn, CloseReason::Retired);
        }
        inner.wake.notify_one();
        n
    }

    /// Replaces every connection open now, gradually: each is closed at a time spread over
    /// the next `window` (when it is idle, or when it comes back), and new ones are opened
    /// as needed, so a pool under load never drains at once. A secret rotation calls it, so
    /// that no session authenticated with the old secret outlives `window` by more than
    /// one checkout.
    pub fn recycle_within(&self, window: Duration) {
        let inner = &self.inner;
        let now = inner.epoch.elapsed().as_nanos() as u64;
        inner
            .recycle_window
            .store(window.as_nanos().max(1) as u64, Relaxed);
        inner.recycle_before.store(now.max(1), Relaxed);
        inner.wake.notify_one();
    }

    /// Connections checked out now (cheaper than [`stats`](Self::stats)).
    pub fn in_use(&self) -> u64 {
        self.inner.counters.in_use.load(Relaxed)
    }
}

impl<D: Driver> Inner<D> {
    /// Sets the maximum size (see [`Pool::resize`]).
    pub(crate) fn resize_to(&self, max_size: usize) {
        {
            let mut debt = lock(&self.debt);
            let old = self.max.swap(max_size, Relaxed);
            if max_size >= old {
                let grow = max_size - old;
                let cancelled = grow.min(*debt);
                *debt -= cancelled;
                self.semaphore.add_permits(grow - cancelled);
            } else {
                *debt += old - max_size;
                *debt -= self.semaphore.forget_permits(*debt);
            }
            self.shrinking.store(*debt > 0, Relaxed);
        }
        self.trim_to_max();
        self.wake.notify_one();
    }

    fn new_slot(&self, conn: D::Connection, birth: Birth) -> Box<Slot<D::Connection>> {
        Box::new(Slot {
            conn,
            expires: self.expiry(),
            idle_since: Instant::now(),
            born: birth.at,
            generation: self.generation.load(Relaxed),
            pipe: None,
            pid: birth.pid,
        })
    }

    fn stats(&self) -> PoolStats {
        let idle = lock(&self.idle).len() as u64;
        let mut s = self.counters.snapshot(idle, self.max.load(Relaxed) as u64);
        s.statement_cache = self.statements.stats();
        if let Some(p) = &self.pipes {
            s.pipelined = p.sent.load(Relaxed);
            s.pipeline_fallbacks = p.fell_back.load(Relaxed);
        }
        if let Some(a) = &self.scale {
            (s.autoscale_grows, s.autoscale_shrinks) = a.changes();
        }
        s
    }

    fn pop_idle(&self) -> Option<Box<Slot<D::Connection>>> {
        lock(&self.idle).pop_back()
    }

    /// Opens a connection (with backoff on retryable failures) and runs `after_connect`;
    /// with its server process when the pool tracks sessions.
    async fn connect_until(
        &self,
        deadline: Instant,
        start: Instant,
    ) -> Result<(D::Connection, Birth)> {
        let mut backoff = BACKOFF_START;
        loop {
            if self.closed.load(Relaxed) {
                return Err(self.closed_error());
            }
            let err = match tokio::time::timeout_at(deadline, self.connect_once()).await {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) => e,
                Err(_) => return Err(self.timeout_error(start)),
            };
            if !err.is_retryable() {
                return Err(err);
            }
            if tokio::time::timeout_at(deadline, tokio::time::sleep(backoff))
                .await
                .is_err()
            {
                return Err(self.timeout_error(start));
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One attempt: connect, count it, run `after_connect`. Errors name the node.
    ///
    /// The caller has counted the connection in `size` before the attempt (a reservation
    /// it gives back when the attempt fails or is dropped), so that attempts under way are
    /// seen by [`warm_up`](Self::warm_up) and the pool never opens more than its maximum.
    async fn connect_once(&self) -> Result<(D::Connection, Birth)> {
        let started = Instant::now();
        let connect = |node: &Node| {
            let node = node.clone();
            async move {
                self.config
                    .connect_with(&node, |mut params| async move {
                        params.statements = self.statements.clone();
                        params.hooks = self.observe.clone();
                        // Boxed: a driver's connect future (TLS, handshakes, a library's
                        // own setup) is large, and would otherwise sit inside every
                        // checkout's future (and, in debug builds, in the stack frames
                        // that move it).
                        Box::pin(self.driver.connect(&params)).await
                    })
                    .await
            }
        };
        let attempt = async {
            match &self.hosts {
                None => connect(&self.node).await,
                Some(hosts) => hosts.connect::<D, _, _>(connect).await,
            }
        };
        let attempt = async {
            if self.observe.is_empty() {
                return attempt.await;
            }
            let op = Operation::new(OperationKind::Connect, &self.node_name);
            self.observe.observe(&op, |_| None, attempt).await
        };
        let mut conn = match attempt.await {
            Ok(conn) => conn,
            Err(e) => {
                self.counters.connect_errors.fetch_add(1, Relaxed);
                *lock(&self.last_error) = Some(match e.sql_state() {
                    Some(code) => format!("{} (SQLSTATE {code})", e.message()),
                    None => e.message().to_owned(),
                });
                tracing::debug!(node = %self.node, error = %e, "connection attempt failed");
                return Err(if e.node().is_some() {
                    e
                } else {
                    e.with_node(self.node.to_string())
                });
            }
        };
        self.counters.created.fetch_add(1, Relaxed);
        if let Some(hook) = &self.hooks.after_connect {
            let failed = match CatchUnwind(hook(&mut conn)).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{e}")),
                Err(panic) => Some(format!("panicked: {panic}")),
            };
            if let Some(why) = failed {
                // Closed without touching `size`: the caller's reservation is given back.
                self.counters.size.fetch_add(1, Relaxed);
                self.close_conn(conn, CloseReason::Error);
                *lock(&self.last_error) = Some(format!("after_connect hook failed: {why}"));
                return Err(Error::new(
                    ErrorKind::Other,
                    format!("the pool's after_connect hook failed: {why}"),
                )
                .with_node(self.node.to_string())
                .with_hint("fix the after_connect hook; the connection was closed"));
            }
        }
        let pid = if self.track_sessions {
            // One round trip per new connection, for pools of a provider with a safety
            // monitor: it joins the server's sessions to checkouts by it.
            match pgprovider_core::observe::internal(conn.simple_query("SELECT pg_backend_pid()"))
                .await
            {
                Ok(rows) => rows.first().and_then(|r| r.get(0)?.parse().ok()),
                Err(e) if conn.is_broken() => {
                    self.counters.connect_errors.fetch_add(1, Relaxed);
                    *lock(&self.last_error) = Some(e.message().to_owned());
                    self.counters.size.fetch_add(1, Relaxed);
                    self.close_conn(conn, CloseReason::Error);
                    return Err(e.with_node(self.node.to_string()));
                }
                // Only a diagnostic: the connection serves without it.
                Err(e) => {
                    tracing::debug!(node = %self.node, error = %e, "cannot learn the connection's server process");
                    None
                }
            }
        } else {
            None
        };
        Ok((conn, Birth { pid, at: started }))
    }

    /// The checkouts open now whose server process is known (pools that track sessions).
    pub(crate) fn open_checkouts(&self) -> Vec<OpenCheckout> {
        let Some(leases) = &self.leases else {
            return Vec::new();
        };
        let now = Instant::now();
        lock(leases)
            .open
            .values()
            .filter_map(|l| {
                Some(OpenCheckout {
                    pid: l.pid?,
                    location: l.location,
                    transaction: l.transaction,
                    held_for: now.saturating_duration_since(l.since),
                    tenant: l.tenant.clone(),
                })
            })
            .collect()
    }

    fn closed_error(&self) -> Error {
        Error::new(ErrorKind::PoolClosed, "the pool is closed")
            .with_node(self.node.to_string())
            .with_hint("the application closed this pool; make a new one to connect again")
    }

    fn timeout_error(&self, start: Instant) -> Error {
        self.counters.timeouts.fetch_add(1, Relaxed);
        let s = self.stats();
        let last = lock(&self.last_error)
            .clone()
            .unwrap_or_else(|| "none".to_owned());
        Error::new(
            ErrorKind::PoolTimeout,
            format!(
                "timed out after {:?} waiting for a connection (pool: size {}, idle {}, in use {}, waiters {}, max {}; last connection error: {last})",
                start.elapsed(),
                s.size,
                s.idle,
                s.in_use,
                s.waiters,
                s.max_size
            ),
        )
        .with_node(self.node.to_string())
        .with_hint("check that the node is reachable, raise pool_max_size or pool_acquire_timeout, or look for connections held too long")
    }

    fn overloaded_error(&self, max: usize) -> Error {
        self.counters.rejected.fetch_add(1, Relaxed);
        Error::new(
            ErrorKind::Overloaded,
            format!("{max} callers are already waiting for a connection; refused at once"),
        )
        .with_node(self.node.to_string())
        .with_hint("the node is overloaded: shed load, retry later, or raise pool_max_size or pool_max_waiters")
    }

    /// Whether `slot` has reached its end: its lifetime, or its turn in a recycling
    /// ([`Pool::recycle_within`]).
    pub(crate) fn due(&self, slot: &Slot<D::Connection>, now: Instant) -> bool {
        if slot.expires.is_some_and(|e| now >= e) {
            return true;
        }
        let before = self.recycle_before.load(Relaxed);
        if before == 0 {
            return false;
        }
        let born = slot.born.saturating_duration_since(self.epoch).as_nanos() as u64;
        if born >= before {
            return false;
        }
        // A point in the window picked by the connection's birth, so they do not all go
        // together.
        let window = self.recycle_window.load(Relaxed);
        let turn = self.jitter.0.hash_one(born) % window.max(1);
        now.saturating_duration_since(self.epoch).as_nanos() as u64 >= before + turn
    }

    fn expiry(&self) -> Option<Instant> {
        let lifetime = self.config.pool().max_lifetime()?;
        let n = self.jitter.1.fetch_add(1, Relaxed);
        let r = self.jitter.0.hash_one(n);
        // Up to 1/8 earlier, so connections made together do not expire together.
        let span = (lifetime.as_nanos() / 8).max(1);
        let jitter = Duration::from_nanos((u128::from(r) % span) as u64);
        Some(Instant::now() + lifetime - jitter)
    }

    /// Removes one permit owed by a shrink, if any; true when the caller's permit and
    /// connection must go.
    fn take_debt(&self) -> bool {
        if !self.shrinking.load(Relaxed) {
            return false;
        }
        let mut debt = lock(&self.debt);
        let owed = *debt > 0;
        if owed {
            *debt -= 1;
        }
        self.shrinking.store(*debt > 0, Relaxed);
        owed
    }

    /// Forgets available permits owed by a shrink.
    fn absorb_debt(&self) {
        let mut debt = lock(&self.debt);
        if *debt > 0 {
            *debt -= self.semaphore.forget_permits(*debt);
            self.shrinking.store(*debt > 0, Relaxed);
        }
    }

    /// Closes idle connections while there are more open than the maximum.
    fn trim_to_max(&self) {
        let max = self.max.load(Relaxed) as u64;
        while self.counters.size.load(Relaxed) > max {
            let Some(slot) = lock(&self.idle).pop_front() else {
                break;
            };
            self.close_conn(slot.conn, CloseReason::Resize);
        }
    }

    /// Puts a connection back into the idle queue, as idle since `now`.
    fn return_idle(&self, mut slot: Box<Slot<D::Connection>>, now: Instant) {
        if let Some(hook) = &self.hooks.after_return {
            if guarded("after_return", &self.node.to_string(), || hook(&slot.conn)).is_none() {
                self.close_conn(slot.conn, CloseReason::Error);
                return;
            }
        }
        slot.idle_since = now;
        slot.conn.recycled();
        let mut idle = lock(&self.idle);
        if slot.generation != self.generation.load(Relaxed) {
            drop(idle);
            self.close_conn(slot.conn, CloseReason::Retired);
            return;
        }
        idle.push_back(slot);
    }

    /// Tells the hooks of a lifecycle event (checkout, return, close).
    pub(crate) fn lifecycle(&self, kind: OperationKind, duration: Duration) {
        let op = Operation::new(kind, &self.node_name);
        self.observe.after(&op, &Outcome::new(duration, None, None));
    }

    fn close_conn(&self, conn: D::Connection, reason: CloseReason) {
        if !self.observe.is_empty() {
            self.lifecycle(OperationKind::Close, Duration::ZERO);
        }
        self.counters.closed(reason);
        tracing::debug!(node = %self.node, ?reason, "closing connection");
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(conn.close());
            }
            Err(_) => drop(conn),
        }
    }
}

/// Counts itself in while alive (waiters), out when dropped, also on cancellation.
pub(super) struct CountGuard<'a>(&'a AtomicU64);

impl<'a> CountGuard<'a> {
    fn new(c: &'a AtomicU64) -> Self {
        c.fetch_add(1, Relaxed);
        CountGuard(c)
    }
}

impl<'a> CountGuard<'a> {
    /// Counts one in if that keeps the count below `max`.
    pub(super) fn below(c: &'a AtomicU64, max: u64) -> Option<Self> {
        c.fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| CountGuard(c))
    }

    /// Keeps the count: it is no longer this guard's to take back.
    pub(super) fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for CountGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a lock cannot leave these structures inconsistent: every
    // critical section is a single push, pop, insert or arithmetic step, and hooks never
    // run under a lock.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
