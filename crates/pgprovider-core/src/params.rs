//! What a driver needs to reach one node.

use crate::Secret;
use crate::kit::StatementCaches;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Where a node listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A TCP host name or IP address.
    Tcp(String),
    /// A directory holding the server's unix socket (`.s.PGSQL.<port>`).
    Unix(PathBuf),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(h) if h.contains(':') => write!(f, "[{h}]"),
            Host::Tcp(h) => f.write_str(h),
            Host::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// Plaintext first, TLS if the server insists.
    Allow,
    /// TLS if the server offers it, plaintext otherwise (libpq's default).
    #[default]
    Prefer,
    /// TLS, without checking the certificate.
    Require,
    /// TLS, certificate chain checked against the root CA.
    VerifyCa,
    /// TLS, certificate chain and host name checked.
    VerifyFull,
}

impl SslMode {
    /// Every mode, in libpq's spelling.
    pub const ALL: [(&'static str, SslMode); 6] = [
        ("disable", SslMode::Disable),
        ("allow", SslMode::Allow),
        ("prefer", SslMode::Prefer),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
        ("verify-full", SslMode::VerifyFull),
    ];

    /// The libpq spelling of this mode.
    pub fn as_str(self) -> &'static str {
        SslMode::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map(|(s, _)| *s)
            .unwrap_or("prefer")
    }

    /// Parses libpq's spelling.
    pub fn parse(s: &str) -> Option<SslMode> {
        SslMode::ALL.iter().find(|(n, _)| *n == s).map(|(_, m)| *m)
    }
}

/// What sits between the application and the server: nothing, or a connection pooler
/// (PgBouncer, pgcat, PgDog, RDS Proxy, Supavisor) in session or transaction mode.
///
/// | mode | server session | startup `options` | prepared statements | session state (`SET`, advisory locks, temp tables, `LISTEN`) |
/// | --- | --- | --- | --- | --- |
/// | `none` | one per connection | sent at startup | cached | reset on return to the pool |
/// | `session` | one per connection, held by the pooler | applied with `SET` after connecting (poolers refuse them at startup) | cached | reset on return to the pool |
/// | `transaction` | a different one for each transaction | applied with `SET LOCAL` in every transaction | unnamed, or closed in the transaction that made them | refused with an error that names the statement |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum PoolerMode {
    /// Connections go straight to the server (the default).
    #[default]
    None,
    /// A pooler that gives each client connection one server session for its lifetime.
    Session,
    /// A pooler that may hand each transaction (or statement outside one) to a different
    /// server session.
    Transaction,
}

impl PoolerMode {
    /// Every mode, as the URL's `pooler` key spells it.
    pub const ALL: [(&'static str, PoolerMode); 3] = [
        ("none", PoolerMode::None),
        ("session", PoolerMode::Session),
        ("transaction", PoolerMode::Transaction),
    ];

    /// The URL spelling of this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolerMode::None => "none",
            PoolerMode::Session => "session",
            PoolerMode::Transaction => "transaction",
        }
    }

    /// Parses the URL spelling.
    pub fn parse(s: &str) -> Option<PoolerMode> {
        PoolerMode::ALL
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, m)| *m)
    }
}

impl fmt::Display for PoolerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// TLS settings for one connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsParams {
    /// The `sslmode`.
    pub mode: SslMode,
    /// A PEM file of trusted root certificates (`sslrootcert`).
    pub root_cert: Option<PathBuf>,
    /// A PEM client certificate (`sslcert`).
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of the client certificate (`sslkey`).
    pub client_key: Option<PathBuf>,
}

/// Everything a [`Driver`](crate::Driver) needs to open a connection to one node.
///
/// The password is a [`Secret`], already resolved (from the URL, the environment, a file or a
/// command) by the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectParams {
    /// The node's host.
    pub host: Host,
    /// The node's port.
    pub port: u16,
    /// The database user.
    pub user: String,
    /// The password, if any.
    pub password: Option<Secret>,
    /// The database name.
    pub dbname: String,
    /// `application_name` reported to the server.
    pub application_name: Option<String>,
    /// How long one connection attempt may take.
    pub connect_timeout: Option<Duration>,
    /// Command-line `options` sent at startup (`-c name=value …`). Always `None` behind a
    /// pooler, which refuses them: see [`settings`](Self::settings).
    pub options: Option<String>,
    /// What sits between the client and the server.
    pub pooler: PoolerMode,
    /// Settings (`name`, `value`) that a pooler keeps from being sent at startup: applied
    /// with `SET` after connecting in [`PoolerMode::Session`], with `SET LOCAL` in every
    /// transaction in [`PoolerMode::Transaction`] (see [`kit::Session`](crate::kit::Session)).
    /// Empty without a pooler.
    pub settings: Vec<(String, String)>,
    /// TLS settings.
    pub tls: TlsParams,
    /// How many prepared statements each connection keeps (least recently used ones are
    /// closed). `0` uses only unnamed statements, for transaction-mode poolers such as
    /// PgBouncer.
    pub statement_cache_capacity: usize,
    /// State shared by the statement caches of every connection of one pool.
    pub statements: StatementCaches,
    /// How long one statement may run before it is cancelled; `None` for no limit.
    pub query_timeout: Option<Duration>,
    /// The hooks every operation on the connection runs through (none by default).
    pub hooks: crate::observe::Hooks,
}

/// The default [`ConnectParams::statement_cache_capacity`].
pub const DEFAULT_STATEMENT_CACHE_CAPACITY: usize = 256;

impl ConnectParams {
    /// Parameters for `host:port` with the given user and database, everything else default.
    pub fn new(host: Host, port: u16, user: impl Into<String>, dbname: impl Into<String>) -> Self {
        ConnectParams {
            host,
            port,
            user: user.into(),
            password: None,
            dbname: dbname.into(),
            application_name: None,
            connect_timeout: None,
            options: None,
            pooler: PoolerMode::None,
            settings: Vec::new(),
            tls: TlsParams::default(),
            statement_cache_capacity: DEFAULT_STATEMENT_CACHE_CAPACITY,
            statements: StatementCaches::new(),
            query_timeout: None,
            hooks: crate::observe::Hooks::default(),
        }
    }

    /// `host:port`, for messages (never includes the password).
    pub fn node_name(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_display_as_libpq_writes_them() {
        assert_eq!(Host::Tcp("db".into()).to_string(), "db");
        assert_eq!(Host::Tcp("::1".into()).to_string(), "[::1]");
        assert_eq!(Host::Unix("/run/pg".into()).to_string(), "/run/pg");
        let p = ConnectParams::new(Host::Tcp("::1".into()), 5433, "u", "d");
        assert_eq!(p.node_name(), "[::1]:5433");
        assert_eq!(p.tls.mode, SslMode::Prefer);
    }

    #[test]
    fn pooler_modes_round_trip() {
        for (name, mode) in PoolerMode::ALL {
            assert_eq!(PoolerMode::parse(name), Some(mode));
            assert_eq!(mode.to_string(), name);
        }
        assert_eq!(PoolerMode::parse("statement"), None);
        assert_eq!(PoolerMode::default(), PoolerMode::None);
    }

    #[test]
    fn ssl_modes_round_trip() {
        for (name, mode) in SslMode::ALL {
            assert_eq!(SslMode::parse(name), Some(mode));
            assert_eq!(mode.as_str(), name);
        }
        assert_eq!(SslMode::parse("verify"), None);
    }
}
