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
    /// Command-line `options` sent at startup (`-c name=value …`).
    pub options: Option<String>,
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
    fn ssl_modes_round_trip() {
        for (name, mode) in SslMode::ALL {
            assert_eq!(SslMode::parse(name), Some(mode));
            assert_eq!(mode.as_str(), name);
        }
        assert_eq!(SslMode::parse("verify"), None);
    }
}
