//! Configuration: a frozen [`Config`] built by [`ConfigBuilder`], from `with_*` calls, a
//! connection URL ([`Config::from_url`]) or the environment ([`Config::from_env`]).
//!
//! Every path ends in [`ConfigBuilder::build`], which checks every rule and returns all
//! problems at once in a [`ConfigError`]; nothing is validated late, at first connect.
//!
//! # Connection URL reference
//!
//! `postgres[ql]://[user[:password]@][host[:port][,host[:port]…]][/dbname][?key=value&…]`
//! follows libpq. Hosts may be names, IPv4, `[IPv6]`, or percent-encoded unix-socket
//! directories (`%2Fvar%2Frun%2Fpostgresql`). Query keys:
//!
//! | key | meaning | default |
//! | --- | --- | --- |
//! | `host`, `port` | comma-separated hosts (or socket directories) and ports; one port applies to every host | `localhost`, `5432` |
//! | `user`, `password`, `dbname` | credentials and database | `postgres`, none, the user name |
//! | `passfile` | a libpq password file (`host:port:db:user:password` lines) | none |
//! | `password_file` | a file whose whole content (trimmed) is the password, such as a mounted secret | none |
//! | `password_command` | a shell command that prints the password; run for each new connection | none |
//! | `sslmode` | `disable`, `allow`, `prefer`, `require`, `verify-ca`, `verify-full` | `prefer` |
//! | `sslrootcert`, `sslcert`, `sslkey` | PEM files: trusted roots, client certificate and key | none |
//! | `target_session_attrs` | `any`, `read-write`, `read-only`, `primary`, `standby`, `prefer-standby` | `any` |
//! | `load_balance_hosts` | `disable` (try hosts in order) or `random` | `disable` |
//! | `application_name` | reported in `pg_stat_activity` | none |
//! | `connect_timeout` | seconds (or a duration such as `500ms`) per connection attempt | `10s` |
//! | `options` | startup options, such as `-c statement_timeout=5s` | none |
//! | `pool_max_size` | most connections per node | `10` |
//! | `pool_min_idle` | idle connections kept ready per node | `0` |
//! | `pool_acquire_timeout` | longest wait for a connection | `30s` |
//! | `pool_idle_timeout` | close connections idle this long (`off` to keep them) | `10m` |
//! | `pool_max_lifetime` | close connections this old, with jitter (`off` to keep them) | `30m` |
//! | `pool_validation` | `always`, `never`, or a duration: ping at checkout when idle longer than it | `30s` |
//! | `pool_leak_detection_threshold` | report a connection held longer than this (`off` to disable) | `off` |
//! | `pool_max_waiters` | callers that may wait for a connection at once; more fail at once with `Overloaded` (`off` for no bound) | `10000` |
//! | `pool_pipeline` | adaptive pipelining: when every connection is busy, up to this many plain reads per connection are pipelined onto connections running harmless statements (`off`, `on` for a depth of 32, or a depth from 1 to 256; see [the pool](crate::pool#adaptive-pipelining)) | `off` |
//! | `pool_autoscale` | `on`: the pool's size moves between `pool_min_idle` (at least 1) and `pool_max_size`, growing when checkouts wait and shrinking when connections sit idle ([`Autoscale`]) | `off` |
//! | `pool_autoscale_wait` | the mean checkout wait over a round (10 ms) that grows the pool | `5ms` |
//! | `pool_autoscale_step` | most connections added or removed at once | `4` |
//! | `pool_autoscale_cooldown` | least time between two growths | `50ms` |
//! | `pool_autoscale_idle` | connections idle for this whole window shrink the pool (and no growth in it) | `30s` |
//! | `statement_cache_capacity` | prepared statements kept per connection; `0` for unnamed statements only (PgBouncer transaction mode) | `256` |
//! | `query_timeout` | cancel a statement on the server after this long (a `COMMIT` never is) | `off` |
//! | `statement_timeout` | the server's `statement_timeout`, sent at startup (behind a pooler: `SET LOCAL` in every transaction, or `SET` per session) | server's |
//! | `pooler` | `none`, `session` or `transaction`: what sits between the application and the server ([`PoolerMode`]); `transaction` for PgBouncer's (and pgcat's, RDS Proxy's, Supavisor's) transaction pooling | `none` |
//!
//! Durations are a whole number with an optional unit: `ms`, `s` (the default), `m`, `h`.

mod builder;
mod dsn;
mod env;
mod password;
pub use password::PasswordSource;
mod problem;

pub use builder::{
    ConfigBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_HOST, DEFAULT_MAX_WAITERS,
    DEFAULT_PIPELINE_DEPTH, DEFAULT_PORT, DEFAULT_USER, MAX_PIPELINE_DEPTH, MAX_POOL_SIZE,
};
pub use problem::{ConfigError, Problem};

use pgprovider_core::{ConnectParams, Error, Host, PoolerMode, SslMode, TlsParams};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// libpq's `target_session_attrs`: which kind of server a connection must reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum TargetSessionAttrs {
    /// Any server.
    #[default]
    Any,
    /// A server that accepts writes by default (`transaction_read_only` off).
    ReadWrite,
    /// A server where sessions are read-only by default.
    ReadOnly,
    /// The primary (not in recovery).
    Primary,
    /// A standby (in recovery).
    Standby,
    /// A standby if one is reachable, else any server.
    PreferStandby,
}

impl TargetSessionAttrs {
    /// Every value, in libpq's spelling.
    pub const ALL: [(&'static str, TargetSessionAttrs); 6] = [
        ("any", TargetSessionAttrs::Any),
        ("read-write", TargetSessionAttrs::ReadWrite),
        ("read-only", TargetSessionAttrs::ReadOnly),
        ("primary", TargetSessionAttrs::Primary),
        ("standby", TargetSessionAttrs::Standby),
        ("prefer-standby", TargetSessionAttrs::PreferStandby),
    ];

    /// Parses libpq's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, v)| *v)
    }
}

/// libpq's `load_balance_hosts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum LoadBalanceHosts {
    /// Try hosts in the order given.
    #[default]
    Disable,
    /// Try hosts in random order.
    Random,
}

impl LoadBalanceHosts {
    /// Every value, in libpq's spelling.
    pub const ALL: [(&'static str, LoadBalanceHosts); 2] = [
        ("disable", LoadBalanceHosts::Disable),
        ("random", LoadBalanceHosts::Random),
    ];

    /// Parses libpq's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, v)| *v)
    }
}

/// When the pool checks a connection with a round trip before handing it out.
///
/// Why the default is `WhenIdleFor(30s)` and not `Always`: each ping is a round trip
/// (about 20 µs of CPU on a small machine), and a connection used a moment ago is almost
/// never dead; broken sockets are caught on return by the cheap `is_broken` check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ValidationPolicy {
    /// Ping at every checkout.
    Always,
    /// Ping at checkout when the connection has been idle longer than this.
    WhenIdleFor(Duration),
    /// Never ping.
    Never,
}

impl Default for ValidationPolicy {
    fn default() -> Self {
        ValidationPolicy::WhenIdleFor(Duration::from_secs(30))
    }
}

/// The pool's knobs, per node. See the table in the [module docs](self) for defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    pub(crate) min_idle: usize,
    pub(crate) max_size: usize,
    pub(crate) acquire_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) validation: ValidationPolicy,
    pub(crate) leak_detection_threshold: Option<Duration>,
    pub(crate) max_waiters: Option<usize>,
    pub(crate) pipeline: Option<usize>,
    pub(crate) autoscale: Option<Autoscale>,
}

/// Auto-scaling of a pool (`pool_autoscale=on`): its size moves between `pool_min_idle`
/// (at least 1) and `pool_max_size`. See the [pool docs](crate::pool#auto-scaling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Autoscale {
    pub(crate) wait: Duration,
    pub(crate) step: usize,
    pub(crate) cooldown: Duration,
    pub(crate) idle: Duration,
}

impl Default for Autoscale {
    fn default() -> Self {
        Autoscale {
            wait: Duration::from_millis(5),
            step: 4,
            cooldown: Duration::from_millis(50),
            idle: Duration::from_secs(30),
        }
    }
}

impl Autoscale {
    /// The defaults (see the key table in the [module docs](self)).
    pub fn new() -> Self {
        Self::default()
    }
    /// The mean checkout wait over a round that grows the pool.
    pub fn wait(&self) -> Duration {
        self.wait
    }
    /// Most connections added or removed at once.
    pub fn step(&self) -> usize {
        self.step
    }
    /// Least time between two growths.
    pub fn cooldown(&self) -> Duration {
        self.cooldown
    }
    /// Connections idle for this whole window (with no growth in it) shrink the pool.
    pub fn idle(&self) -> Duration {
        self.idle
    }
    /// With `wait` as the growth threshold.
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }
    /// With `step` connections at most per change.
    pub fn with_step(mut self, step: usize) -> Self {
        self.step = step;
        self
    }
    /// With `cooldown` between growths.
    pub fn with_cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }
    /// With `idle` as the shrinking window.
    pub fn with_idle(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            min_idle: 0,
            max_size: 10,
            acquire_timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            validation: ValidationPolicy::default(),
            leak_detection_threshold: None,
            max_waiters: Some(DEFAULT_MAX_WAITERS),
            pipeline: None,
            autoscale: None,
        }
    }
}

impl PoolConfig {
    /// Idle connections kept ready.
    pub fn min_idle(&self) -> usize {
        self.min_idle
    }
    /// Most connections open at once.
    pub fn max_size(&self) -> usize {
        self.max_size
    }
    /// Longest wait for a connection.
    pub fn acquire_timeout(&self) -> Duration {
        self.acquire_timeout
    }
    /// Idle connections older than this are closed; `None` keeps them.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }
    /// Connections older than this (plus jitter) are closed; `None` keeps them.
    pub fn max_lifetime(&self) -> Option<Duration> {
        self.max_lifetime
    }
    /// When connections are pinged at checkout.
    pub fn validation(&self) -> ValidationPolicy {
        self.validation
    }
    /// Connections held longer than this are reported as leaks; `None` disables it.
    pub fn leak_detection_threshold(&self) -> Option<Duration> {
        self.leak_detection_threshold
    }
    /// Most callers waiting for a connection at once; `None` for no bound.
    pub fn max_waiters(&self) -> Option<usize> {
        self.max_waiters
    }
    /// Adaptive pipelining's depth per connection; `None` when it is off.
    pub fn pipeline(&self) -> Option<usize> {
        self.pipeline
    }
    /// Auto-scaling; `None` when it is off.
    pub fn autoscale(&self) -> Option<Autoscale> {
        self.autoscale
    }
}

/// One node (server) of the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    host: Host,
    port: u16,
}

impl Node {
    /// A node at `host:port`.
    pub fn new(host: Host, port: u16) -> Self {
        Node { host, port }
    }
    /// The host or socket directory.
    pub fn host(&self) -> &Host {
        &self.host
    }
    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A validated, frozen configuration. Build one with [`Config::builder`],
/// [`Config::from_url`] or [`Config::from_env`].
///
/// ```
/// use pgprovider::Config;
/// use std::time::Duration;
///
/// let config = Config::builder()
///     .with_host("db1.internal")
///     .with_port(5433)
///     .with_user("app")
///     .with_dbname("orders")
///     .with_max_connections(20)
///     .with_acquire_timeout(Duration::from_secs(5))
///     .build()?;
/// assert_eq!(config.nodes()[0].to_string(), "db1.internal:5433");
/// assert_eq!(config.pool().max_size(), 20);
/// # Ok::<(), pgprovider::ConfigError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub(crate) nodes: Vec<Node>,
    pub(crate) user: String,
    pub(crate) password: PasswordSource,
    pub(crate) passfile: Option<PathBuf>,
    pub(crate) dbname: String,
    pub(crate) application_name: Option<String>,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) options: Option<String>,
    pub(crate) statement_cache_capacity: usize,
    pub(crate) query_timeout: Option<Duration>,
    pub(crate) statement_timeout: Option<Duration>,
    pub(crate) pooler: PoolerMode,
    pub(crate) tls: TlsParams,
    pub(crate) target_session_attrs: TargetSessionAttrs,
    pub(crate) load_balance_hosts: LoadBalanceHosts,
    pub(crate) pool: PoolConfig,
}

impl Config {
    /// A builder with every default.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::new()
    }

    /// Parses and validates a `postgres://` or `postgresql://` URL (see the
    /// [module docs](self) for the keys).
    ///
    /// # Errors
    /// Every problem of the URL, at once.
    pub fn from_url(url: &str) -> Result<Config, ConfigError> {
        ConfigBuilder::from_url(url).build()
    }

    /// Reads `DATABASE_URL` and the libpq `PG*` variables from the process environment.
    /// Values in `DATABASE_URL` win; `PG*` variables fill what it leaves out.
    ///
    /// # Errors
    /// Every problem found, at once.
    pub fn from_env() -> Result<Config, ConfigError> {
        ConfigBuilder::from_env().build()
    }

    /// The nodes, in the order given.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    /// The database user.
    pub fn user(&self) -> &str {
        &self.user
    }
    /// Where the password comes from.
    pub fn password_source(&self) -> &PasswordSource {
        &self.password
    }
    /// The libpq password file, if one is set.
    pub fn passfile(&self) -> Option<&std::path::Path> {
        self.passfile.as_deref()
    }
    /// The database name.
    pub fn dbname(&self) -> &str {
        &self.dbname
    }
    /// The `application_name`.
    pub fn application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }
    /// The timeout of one connection attempt.
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }
    /// Startup `options`.
    pub fn options(&self) -> Option<&str> {
        self.options.as_deref()
    }
    /// Prepared statements kept per connection (`0`: unnamed statements only).
    pub fn statement_cache_capacity(&self) -> usize {
        self.statement_cache_capacity
    }
    /// The client-side limit on one statement.
    pub fn query_timeout(&self) -> Option<Duration> {
        self.query_timeout
    }
    /// What sits between the application and the server.
    pub fn pooler(&self) -> PoolerMode {
        self.pooler
    }

    /// The server-side `statement_timeout` sent at startup.
    pub fn statement_timeout(&self) -> Option<Duration> {
        self.statement_timeout
    }
    /// TLS settings.
    pub fn tls(&self) -> &TlsParams {
        &self.tls
    }
    /// The `sslmode`.
    pub fn ssl_mode(&self) -> SslMode {
        self.tls.mode
    }
    /// The `target_session_attrs`.
    pub fn target_session_attrs(&self) -> TargetSessionAttrs {
        self.target_session_attrs
    }
    /// The `load_balance_hosts` setting.
    pub fn load_balance_hosts(&self) -> LoadBalanceHosts {
        self.load_balance_hosts
    }
    /// The pool's knobs.
    pub fn pool(&self) -> &PoolConfig {
        &self.pool
    }

    /// A URL for logs and messages: the password is never included.
    pub fn redacted_url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(|n| n.to_string()).collect();
        let pw = if matches!(self.password, PasswordSource::None) {
            ""
        } else {
            ":***"
        };
        // Percent-encoded, so a user or database named with `@`, `:` or `/` reads back as
        // the same place.
        const PART: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'_')
            .remove(b'.')
            .remove(b'~');
        format!(
            "postgres://{}{pw}@{}/{}",
            percent_encoding::utf8_percent_encode(&self.user, PART),
            hosts.join(","),
            percent_encoding::utf8_percent_encode(&self.dbname, PART)
        )
    }

    /// The parameters a driver needs to reach `node`, with the password resolved from its
    /// source (reading the password file or running the password command now).
    ///
    /// # Errors
    /// [`ErrorKind::Config`](pgprovider_core::ErrorKind::Config) when the password cannot
    /// be obtained; the message never contains the password.
    pub async fn connect_params(&self, node: &Node) -> Result<ConnectParams, Error> {
        let password = password::resolve(self, node).await?;
        let mut p = ConnectParams::new(
            node.host.clone(),
            node.port,
            self.user.clone(),
            self.dbname.clone(),
        );
        p.password = password;
        p.application_name = self.application_name.clone();
        p.connect_timeout = self.connect_timeout;
        let options = match (self.options.as_deref(), self.statement_timeout) {
            (o, None) => o.map(str::to_owned),
            (None, Some(t)) => Some(format!("-c statement_timeout={}", t.as_millis())),
            (Some(o), Some(t)) => Some(format!("{o} -c statement_timeout={}", t.as_millis())),
        };
        p.pooler = self.pooler;
        if self.pooler == PoolerMode::None {
            p.options = options;
        } else if let Some(o) = options {
            // Validated when the configuration was built.
            p.settings = pgprovider_core::kit::pooler::startup_settings(&o).unwrap_or_default();
        }
        p.statement_cache_capacity = self.statement_cache_capacity;
        p.query_timeout = self.query_timeout;
        p.tls = self.tls.clone();
        Ok(p)
    }
}

/// Parses a duration: a whole number with an optional unit (`ms`, `s`, `m`, `h`; seconds
/// when none is given, as libpq's `connect_timeout`).
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    match unit.trim() {
        "" | "s" => Some(Duration::from_secs(n)),
        "ms" => Some(Duration::from_millis(n)),
        "m" | "min" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
