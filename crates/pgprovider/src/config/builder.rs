//! The consuming builder behind every way of making a [`Config`].
//!
//! (This file is long by choice: one documented `with_*` method per configuration key, next
//! to the validation that reports every problem at once.)

use super::problem::{Problem, did_you_mean};
use super::{
    Config, ConfigError, LoadBalanceHosts, Node, PasswordSource, PoolConfig, TargetSessionAttrs,
    ValidationPolicy,
};
use pgprovider_core::{Host, PoolerMode, Secret, SslMode, TlsParams};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Builds a [`Config`]. Setters take and return the builder; [`build`](Self::build) checks
/// every rule and reports all problems together.
///
/// Problems met while reading a URL or the environment are kept and reported by `build`
/// along with the rest, so one run shows everything to fix.
#[must_use]
#[derive(Clone, Debug, Default)]
pub struct ConfigBuilder {
    pub(super) nodes: Vec<(Host, Option<u16>)>,
    pub(super) default_port: Option<u16>,
    pub(super) user: Option<String>,
    pub(super) password: Option<PasswordSource>,
    pub(super) password_conflict: Vec<&'static str>,
    pub(super) passfile: Option<PathBuf>,
    pub(super) dbname: Option<String>,
    pub(super) application_name: Option<String>,
    pub(super) connect_timeout: Option<Duration>,
    pub(super) options: Option<String>,
    pub(super) ssl_mode: Option<SslMode>,
    pub(super) ssl_root_cert: Option<PathBuf>,
    pub(super) ssl_cert: Option<PathBuf>,
    pub(super) ssl_key: Option<PathBuf>,
    pub(super) target_session_attrs: Option<TargetSessionAttrs>,
    pub(super) load_balance_hosts: Option<LoadBalanceHosts>,
    pub(super) min_idle: Option<usize>,
    pub(super) max_size: Option<usize>,
    pub(super) acquire_timeout: Option<Duration>,
    pub(super) idle_timeout: Option<Option<Duration>>,
    pub(super) max_lifetime: Option<Option<Duration>>,
    pub(super) validation: Option<ValidationPolicy>,
    pub(super) leak_detection_threshold: Option<Option<Duration>>,
    pub(super) max_waiters: Option<Option<usize>>,
    pub(super) pipeline: Option<Option<usize>>,
    pub(super) autoscale: Option<Option<super::Autoscale>>,
    /// `pool_autoscale_*` keys of the URL, applied to `autoscale` at build.
    pub(super) autoscale_keys: Vec<(&'static str, AutoscaleKey)>,
    pub(super) statement_cache_capacity: Option<usize>,
    pub(super) query_timeout: Option<Option<Duration>>,
    pub(super) statement_timeout: Option<Option<Duration>>,
    pub(super) pooler: Option<PoolerMode>,
    pub(super) problems: Vec<Problem>,
}

/// The default host when none is given.
pub const DEFAULT_HOST: &str = "localhost";
/// The default port.
pub const DEFAULT_PORT: u16 = 5432;
/// The default user when none is given.
pub const DEFAULT_USER: &str = "postgres";
/// A `pool_autoscale_*` URL key's value.
#[derive(Clone, Copy, Debug)]
pub(super) enum AutoscaleKey {
    Wait(Duration),
    Step(usize),
    Cooldown(Duration),
    Idle(Duration),
}

/// The depth of `pool_pipeline=on`: in `pgprovider bench`, 32 reached 2.1–2.3× the
/// classic pool at 1,000 tasks over 8 connections with its p99 below the classic pool's,
/// where 8 reached 1.2× and 128 pushed the p99.9 to 4× the classic pool's.
pub const DEFAULT_PIPELINE_DEPTH: usize = 32;
/// The deepest adaptive pipelining allowed (`pool_pipeline`).
pub const MAX_PIPELINE_DEPTH: usize = 256;
/// The largest pool: PostgreSQL's own upper limit on `max_connections`.
pub const MAX_POOL_SIZE: usize = 262_143;
/// The default bound on callers waiting for a connection, per node.
pub const DEFAULT_MAX_WAITERS: usize = 10_000;
/// The default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ConfigBuilder {
    /// A builder with every default.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a host: a name, an IP address, or a unix-socket directory (starting with `/`).
    /// Call it once per node for several hosts; each uses [`with_port`](Self::with_port)'s
    /// port unless added with [`with_node`](Self::with_node).
    pub fn with_host(mut self, host: impl AsRef<str>) -> Self {
        self.nodes.push((host_from_str(host.as_ref()), None));
        self
    }

    /// Adds a host with its own port.
    pub fn with_node(mut self, host: impl AsRef<str>, port: u16) -> Self {
        self.nodes.push((host_from_str(host.as_ref()), Some(port)));
        self
    }

    /// The port of every host added without one (default 5432).
    pub fn with_port(mut self, port: u16) -> Self {
        self.default_port = Some(port);
        self
    }

    /// The database user (default `postgres`).
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// A fixed password.
    pub fn with_password(self, password: impl Into<Secret>) -> Self {
        self.set_password("password", PasswordSource::Literal(password.into()))
    }

    /// A file whose whole content (trimmed) is the password, read at each new connection
    /// so rotated secrets are picked up.
    pub fn with_password_file(self, path: impl Into<PathBuf>) -> Self {
        self.set_password("password_file", PasswordSource::File(path.into()))
    }

    /// A shell command (`sh -c`) that prints the password, run at each new connection.
    pub fn with_password_command(self, command: impl Into<String>) -> Self {
        self.set_password("password_command", PasswordSource::Command(command.into()))
    }

    /// A libpq password file (`hostname:port:database:username:password` lines), used when
    /// no other password source is set.
    pub fn with_passfile(mut self, path: impl Into<PathBuf>) -> Self {
        self.passfile = Some(path.into());
        self
    }

    /// The database name (default: the user name).
    pub fn with_dbname(mut self, dbname: impl Into<String>) -> Self {
        self.dbname = Some(dbname.into());
        self
    }

    /// The `application_name` shown in `pg_stat_activity`.
    pub fn with_application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// How long one connection attempt may take (default 10 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Startup options, such as `-c statement_timeout=5s`.
    pub fn with_options(mut self, options: impl Into<String>) -> Self {
        self.options = Some(options.into());
        self
    }

    /// The `sslmode` (default `prefer`).
    pub fn with_ssl_mode(mut self, mode: SslMode) -> Self {
        self.ssl_mode = Some(mode);
        self
    }

    /// A PEM file of trusted root certificates.
    pub fn with_ssl_root_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.ssl_root_cert = Some(path.into());
        self
    }

    /// A PEM client certificate and its key.
    pub fn with_ssl_client_cert(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.ssl_cert = Some(cert.into());
        self.ssl_key = Some(key.into());
        self
    }

    /// Which kind of server a connection must reach (default `any`).
    pub fn with_target_session_attrs(mut self, attrs: TargetSessionAttrs) -> Self {
        self.target_session_attrs = Some(attrs);
        self
    }

    /// Whether hosts are tried in random order (default: in order).
    pub fn with_load_balance_hosts(mut self, lb: LoadBalanceHosts) -> Self {
        self.load_balance_hosts = Some(lb);
        self
    }

    /// The most connections per node (default 10).
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_size = Some(max);
        self
    }

    /// Idle connections kept ready per node (default 0).
    pub fn with_min_idle(mut self, min: usize) -> Self {
        self.min_idle = Some(min);
        self
    }

    /// The longest wait for a connection (default 30 s).
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = Some(timeout);
        self
    }

    /// Close connections idle this long; `None` keeps them (default 10 min).
    pub fn with_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Close connections this old (plus up to 1/8 jitter so they do not all expire
    /// together); `None` keeps them (default 30 min).
    pub fn with_max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.max_lifetime = Some(lifetime);
        self
    }

    /// When connections are pinged at checkout (default: when idle for 30 s).
    pub fn with_validation(mut self, policy: ValidationPolicy) -> Self {
        self.validation = Some(policy);
        self
    }

    /// How many prepared statements each connection keeps, least recently used closed
    /// first (default 256). `0` uses unnamed statements only, for PgBouncer in transaction
    /// mode: parameter types then come from the Rust values, not from the server.
    pub fn with_statement_cache_capacity(mut self, capacity: usize) -> Self {
        self.statement_cache_capacity = Some(capacity);
        self
    }

    /// How long one statement may run before the client cancels it on the server and
    /// reports [`ErrorKind::Timeout`](pgprovider_core::ErrorKind::Timeout) (`None`, the
    /// default, for no limit). A `COMMIT` is never cancelled.
    pub fn with_query_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.query_timeout = Some(timeout);
        self
    }

    /// The server's own `statement_timeout` for every session, sent at startup (it also
    /// guards against clients that vanish mid-query). `None`, the default, keeps the
    /// server's setting.
    pub fn with_statement_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.statement_timeout = Some(timeout);
        self
    }

    /// What sits between the application and the server (default
    /// [`PoolerMode::None`]): behind PgBouncer and other poolers, [`PoolerMode::Transaction`]
    /// or [`PoolerMode::Session`] as the pooler runs. Startup options and
    /// `statement_timeout` are then applied with `SET LOCAL` in every transaction (or `SET`
    /// once per session), and in transaction mode statements are unnamed (the statement cache
    /// is off) and session state (`SET`, advisory locks, temp tables, `LISTEN`) is refused.
    ///
    /// ```
    /// use pgprovider::{Config, PoolerMode};
    /// let config = Config::from_url("postgres://app@pgbouncer:6432/orders?pooler=transaction&statement_timeout=5s")?;
    /// assert_eq!(config.pooler(), PoolerMode::Transaction);
    /// assert_eq!(config.statement_cache_capacity(), 0);
    /// # Ok::<(), pgprovider::ConfigError>(())
    /// ```
    pub fn with_pooler(mut self, mode: PoolerMode) -> Self {
        self.pooler = Some(mode);
        self
    }

    /// Report connections held longer than this; `None` disables it (the default).
    pub fn with_leak_detection_threshold(mut self, threshold: Option<Duration>) -> Self {
        self.leak_detection_threshold = Some(threshold);
        self
    }

    /// How many callers may wait for a connection at once (default 10,000); past it a
    /// checkout fails at once with [`ErrorKind::Overloaded`](pgprovider_core::ErrorKind::Overloaded)
    /// instead of queueing. `None` for no bound (waits are still bounded by the acquire
    /// timeout).
    pub fn with_max_waiters(mut self, max: Option<usize>) -> Self {
        self.max_waiters = Some(max);
        self
    }

    /// Adaptive pipelining (default off): when every connection is busy, up to `depth`
    /// plain reads per connection are pipelined onto connections whose holders run
    /// statements that leave nothing on the session, instead of waiting for a checkout
    /// (see the [pool docs](crate::pool#adaptive-pipelining)). `None` turns it off.
    pub fn with_pipeline(mut self, depth: Option<usize>) -> Self {
        self.pipeline = Some(depth);
        self
    }

    /// Auto-scaling (default off): the pool's size moves between `pool_min_idle` (at least
    /// 1) and `pool_max_size` as [`Autoscale`](super::Autoscale) says. `None` turns it off.
    pub fn with_autoscale(mut self, autoscale: Option<super::Autoscale>) -> Self {
        self.autoscale = Some(autoscale);
        // The builder's word is the last: the URL's `pool_autoscale_*` keys go.
        self.autoscale_keys.clear();
        self
    }

    fn set_password(mut self, field: &'static str, source: PasswordSource) -> Self {
        if self.password.is_some() && !self.password_conflict.contains(&field) {
            self.password_conflict.push(field);
        }
        self.password = Some(source);
        self
    }

    pub(super) fn problem(&mut self, field: &str, value: Option<&str>, message: &str, hint: &str) {
        self.problems.push(Problem::new(
            field,
            value,
            message.to_owned(),
            hint.to_owned(),
        ));
    }

    /// Checks every rule and freezes the configuration.
    ///
    /// # Errors
    /// A [`ConfigError`] listing every problem: those met while parsing a URL or the
    /// environment, and the cross-field rules (min idle above max size, zero timeouts,
    /// unreadable password files, incomplete client certificates, …).
    pub fn build(self) -> Result<Config, ConfigError> {
        let mut problems = self.problems.clone();
        let mut p = |field: &str, value: Option<String>, message: &str, hint: &str| {
            problems.push(Problem::new(field, value.as_deref(), message, hint));
        };

        let default_port = self.default_port.unwrap_or(DEFAULT_PORT);
        let mut nodes = Vec::new();
        let default_node = [(Host::Tcp(DEFAULT_HOST.into()), None)];
        let given: &[(Host, Option<u16>)] = if self.nodes.is_empty() {
            &default_node
        } else {
            &self.nodes
        };
        for (host, port) in given {
            let port = port.unwrap_or(default_port);
            match host {
                Host::Tcp(h) if h.is_empty() => p(
                    "host",
                    Some(String::new()),
                    "host name is empty",
                    "give a host name, an IP address or a socket directory",
                ),
                Host::Unix(d) if !d.is_absolute() => p(
                    "host",
                    Some(d.display().to_string()),
                    "socket directory must be an absolute path",
                    "write it starting with /",
                ),
                _ => {}
            }
            if port == 0 {
                p(
                    "port",
                    Some("0".into()),
                    "port must be between 1 and 65535",
                    "PostgreSQL listens on 5432 by default",
                );
            }
            nodes.push(Node::new(host.clone(), port));
        }

        if !self.password_conflict.is_empty() {
            p(
                "password",
                None,
                &format!(
                    "more than one password source is set (also {})",
                    self.password_conflict.join(", ")
                ),
                "keep one of password, password_file and password_command",
            );
        }
        match &self.password {
            Some(PasswordSource::File(path)) => {
                check_readable(&mut p, "password_file", path);
            }
            Some(PasswordSource::Command(cmd)) if cmd.trim().is_empty() => p(
                "password_command",
                Some(String::new()),
                "password command is empty",
                "give a command that prints the password, or remove the setting",
            ),
            _ => {}
        }
        if let Some(path) = &self.passfile {
            check_readable(&mut p, "passfile", path);
        }

        let ssl_mode = self.ssl_mode.unwrap_or_default();
        match &self.ssl_root_cert {
            Some(path) if path.as_os_str() != "system" => {
                check_readable(&mut p, "sslrootcert", path)
            }
            Some(_) => {}
            None if matches!(ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) => p(
                "sslrootcert",
                None,
                &format!(
                    "sslmode={} needs trusted roots to check the server's certificate",
                    ssl_mode.as_str()
                ),
                "set sslrootcert to a PEM file of the CA that signed the server's certificate, or sslrootcert=system for the system's roots",
            ),
            None => {}
        }
        match (&self.ssl_cert, &self.ssl_key) {
            (Some(_), None) => p(
                "sslkey",
                None,
                "a client certificate needs its private key",
                "set sslkey to the PEM key of sslcert",
            ),
            (None, Some(_)) => p(
                "sslcert",
                None,
                "a client key needs its certificate",
                "set sslcert to the PEM certificate of sslkey",
            ),
            (Some(c), Some(k)) => {
                check_readable(&mut p, "sslcert", c);
                check_readable(&mut p, "sslkey", k);
            }
            (None, None) => {}
        }
        if ssl_mode == SslMode::Disable && (self.ssl_root_cert.is_some() || self.ssl_cert.is_some())
        {
            p(
                "sslmode",
                Some("disable".into()),
                "certificates are set but TLS is disabled",
                "use sslmode=require, verify-ca or verify-full, or remove the certificates",
            );
        }

        let connect_timeout = self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        if connect_timeout.is_zero() {
            p(
                "connect_timeout",
                Some("0".into()),
                "timeout must be positive",
                "give a duration such as 10s",
            );
        }

        let defaults = PoolConfig::default();
        let max_size = self.max_size.unwrap_or(defaults.max_size);
        let min_idle = self.min_idle.unwrap_or(defaults.min_idle);
        if max_size == 0 {
            p(
                "pool_max_size",
                Some("0".into()),
                "the pool needs at least one connection",
                "set pool_max_size to 1 or more",
            );
        }
        if max_size > MAX_POOL_SIZE {
            p(
                "pool_max_size",
                Some(max_size.to_string()),
                &format!("more connections than a PostgreSQL server accepts ({MAX_POOL_SIZE})"),
                "give a size the server's max_connections can hold, such as 10 to 100",
            );
        }
        if min_idle > max_size {
            p(
                "pool_min_idle",
                Some(min_idle.to_string()),
                &format!("min idle ({min_idle}) is above max size ({max_size})"),
                "lower pool_min_idle or raise pool_max_size",
            );
        }
        let acquire_timeout = self.acquire_timeout.unwrap_or(defaults.acquire_timeout);
        if acquire_timeout.is_zero() {
            p(
                "pool_acquire_timeout",
                Some("0".into()),
                "timeout must be positive",
                "give a duration such as 30s",
            );
        }
        let idle_timeout = self.idle_timeout.unwrap_or(defaults.idle_timeout);
        let max_lifetime = self.max_lifetime.unwrap_or(defaults.max_lifetime);
        let leak = self
            .leak_detection_threshold
            .unwrap_or(defaults.leak_detection_threshold);
        for (field, value) in [
            ("pool_idle_timeout", idle_timeout),
            ("pool_max_lifetime", max_lifetime),
            ("pool_leak_detection_threshold", leak),
        ] {
            if value.is_some_and(|d| d.is_zero()) {
                p(
                    field,
                    Some("0".into()),
                    "duration must be positive",
                    "give a duration such as 10m, or off to disable it",
                );
            }
        }
        let query_timeout = self.query_timeout.flatten();
        let statement_timeout = self.statement_timeout.flatten();
        for (field, value) in [
            ("query_timeout", query_timeout),
            ("statement_timeout", statement_timeout),
        ] {
            if value.is_some_and(|d| d.is_zero()) {
                p(
                    field,
                    Some("0".into()),
                    "timeout must be positive",
                    "give a duration such as 5s, or off for no limit",
                );
            }
        }
        let pooler = self.pooler.unwrap_or_default();
        if pooler != PoolerMode::None
            && let Some(o) = &self.options
            && let Err(e) = pgprovider_core::kit::pooler::startup_settings(o)
        {
            p(
                "options",
                Some(o.clone()),
                &format!("behind a pooler options are applied with SET, and {e}"),
                "give only -c name=value settings, or pooler=none to send them at startup",
            );
        }
        if pooler == PoolerMode::Transaction
            && let Some(n) = self.statement_cache_capacity.filter(|n| *n > 0)
        {
            p(
                "statement_cache_capacity",
                Some(n.to_string()),
                "named prepared statements do not survive a transaction behind a transaction-mode pooler",
                "leave statement_cache_capacity out (it is 0 with pooler=transaction), or use pooler=session",
            );
        }
        let max_waiters = self.max_waiters.unwrap_or(defaults.max_waiters);
        if max_waiters == Some(0) {
            p(
                "pool_max_waiters",
                Some("0".into()),
                "no caller could ever wait for a connection",
                "give a bound such as 10000, or off for none",
            );
        }
        let pipeline = self.pipeline.unwrap_or(defaults.pipeline);
        match pipeline {
            Some(0) => p(
                "pool_pipeline",
                Some("0".into()),
                "a depth of zero pipelines nothing",
                "write pool_pipeline=off, or a depth such as 32 (pool_pipeline=on)",
            ),
            Some(n) if n > MAX_PIPELINE_DEPTH => p(
                "pool_pipeline",
                Some(n.to_string()),
                &format!("deeper than {MAX_PIPELINE_DEPTH} statements per connection"),
                "a slow statement holds up every one queued behind it: give a depth such as 32 (pool_pipeline=on)",
            ),
            Some(n) if pooler == PoolerMode::Transaction => p(
                "pool_pipeline",
                Some(n.to_string()),
                "pipelined statements are prepared on the session, which a transaction-mode pooler shares",
                "leave pool_pipeline out behind pooler=transaction",
            ),
            _ => {}
        }
        let mut autoscale = self.autoscale.unwrap_or(defaults.autoscale);
        for (key, value) in &self.autoscale_keys {
            match autoscale.as_mut() {
                None => p(
                    key,
                    None,
                    "auto-scaling is off, so this key would do nothing",
                    "add pool_autoscale=on, or leave the key out",
                ),
                Some(a) => match *value {
                    AutoscaleKey::Wait(d) => a.wait = d,
                    AutoscaleKey::Step(n) => a.step = n,
                    AutoscaleKey::Cooldown(d) => a.cooldown = d,
                    AutoscaleKey::Idle(d) => a.idle = d,
                },
            }
        }
        if let Some(a) = autoscale {
            if a.step == 0 || a.step > MAX_POOL_SIZE {
                p(
                    "pool_autoscale_step",
                    Some(a.step.to_string()),
                    &format!("a step must be between 1 and {MAX_POOL_SIZE}"),
                    "give a step such as 4",
                );
            }
            for (key, d, example) in [
                ("pool_autoscale_wait", a.wait, "5ms"),
                ("pool_autoscale_idle", a.idle, "30s"),
            ] {
                if d.is_zero() {
                    p(
                        key,
                        Some("0".into()),
                        "zero would resize the pool on every round",
                        &format!("give a duration above zero, such as {example}"),
                    );
                }
            }
        }
        let validation = self.validation.unwrap_or(defaults.validation);
        if validation == ValidationPolicy::WhenIdleFor(Duration::ZERO) {
            p(
                "pool_validation",
                Some("0".into()),
                "an idle threshold of zero means always",
                "write pool_validation=always, or give a positive duration",
            );
        }

        if !problems.is_empty() {
            return Err(ConfigError::new(problems));
        }
        let user = self.user.unwrap_or_else(|| DEFAULT_USER.to_owned());
        Ok(Config {
            nodes,
            dbname: self.dbname.unwrap_or_else(|| user.clone()),
            user,
            password: self.password.unwrap_or(PasswordSource::None),
            passfile: self.passfile,
            application_name: self.application_name,
            connect_timeout: Some(connect_timeout),
            options: self.options,
            statement_cache_capacity: self.statement_cache_capacity.unwrap_or(
                if pooler == PoolerMode::Transaction {
                    0
                } else {
                    pgprovider_core::DEFAULT_STATEMENT_CACHE_CAPACITY
                },
            ),
            pooler,
            query_timeout,
            statement_timeout,
            tls: {
                let mut t = TlsParams::default();
                t.mode = ssl_mode;
                t.root_cert = self.ssl_root_cert;
                t.client_cert = self.ssl_cert;
                t.client_key = self.ssl_key;
                t
            },
            target_session_attrs: self.target_session_attrs.unwrap_or_default(),
            load_balance_hosts: self.load_balance_hosts.unwrap_or_default(),
            pool: PoolConfig {
                min_idle,
                max_size,
                acquire_timeout,
                idle_timeout,
                max_lifetime,
                validation,
                leak_detection_threshold: leak,
                max_waiters,
                pipeline,
                autoscale,
            },
        })
    }
}

/// Turns a host string into a [`Host`]: a leading `/` means a unix-socket directory.
pub(super) fn host_from_str(s: &str) -> Host {
    if s.starts_with('/') || s.starts_with('.') {
        Host::Unix(PathBuf::from(s))
    } else {
        Host::Tcp(s.trim_start_matches('[').trim_end_matches(']').to_owned())
    }
}

fn check_readable(p: &mut impl FnMut(&str, Option<String>, &str, &str), field: &str, path: &Path) {
    if let Err(e) = std::fs::File::open(path) {
        p(
            field,
            Some(path.display().to_string()),
            &format!("cannot read the file: {e}"),
            "check that the path exists and is readable by this process",
        );
    }
}

/// Parses an enum-like value, recording a problem with a suggestion when it is unknown.
pub(super) fn parse_choice<T: Copy>(
    b: &mut ConfigBuilder,
    field: &str,
    value: &str,
    all: &[(&'static str, T)],
) -> Option<T> {
    if let Some((_, v)) = all.iter().find(|(n, _)| *n == value) {
        return Some(*v);
    }
    let names: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
    let hint = match did_you_mean(value, &names) {
        Some(s) => format!("did you mean {s}? valid values: {}", names.join(", ")),
        None => format!("valid values: {}", names.join(", ")),
    };
    b.problem(field, Some(value), "unknown value", &hint);
    None
}
