//! The tokio-postgres driver for pgprovider.
//!
//! ```no_run
//! use pgprovider::{Config, Pool};
//! use pgprovider_tokio_postgres::TokioPostgres;
//!
//! # async fn run() -> Result<(), pgprovider::Error> {
//! let config = Config::from_url("postgres://postgres@127.0.0.1:5432/postgres")?;
//! let pool = Pool::new(TokioPostgres::new(), &config, &config.nodes()[0]);
//! let mut conn = pool.get().await?;
//! // The driver's own client is one call away, for typed queries:
//! let n: i32 = conn.client().query_one("SELECT 1", &[]).await.map_err(pgprovider_tokio_postgres::map_error)?.get(0);
//! assert_eq!(n, 1);
//! # Ok(()) }
//! ```
//!
//! TLS: this version connects in plaintext and honours `sslmode=disable`, `allow` and
//! `prefer` (which fall back to plaintext); `require`, `verify-ca` and `verify-full` are
//! refused with an [`ErrorKind::Tls`] error rather than silently sent in plaintext.
#![deny(missing_docs)]

mod conn;
mod error;

pub use conn::{PgConnection, RESET_RECIPE};
pub use error::map_error;

use pgprovider_core::{ConnectParams, Driver, Error, ErrorKind, Host, Result, SslMode};

/// The tokio-postgres driver. Registered under the name `"tokio-postgres"`.
#[derive(Clone, Debug, Default)]
pub struct TokioPostgres {
    _private: (),
}

impl TokioPostgres {
    /// The driver's registry name.
    pub const NAME: &'static str = "tokio-postgres";

    /// A new driver.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Driver for TokioPostgres {
    type Connection = PgConnection;

    fn name(&self) -> &'static str {
        Self::NAME
    }

    async fn connect(&self, params: &ConnectParams) -> Result<PgConnection> {
        let node = params.node_name();
        let mut cfg = tokio_postgres::Config::new();
        match &params.host {
            Host::Tcp(h) => cfg.host(h),
            Host::Unix(dir) => cfg.host_path(dir),
        };
        cfg.port(params.port)
            .user(&params.user)
            .dbname(&params.dbname);
        if let Some(pw) = &params.password {
            cfg.password(pw.expose());
        }
        if let Some(app) = &params.application_name {
            cfg.application_name(app);
        }
        if let Some(t) = params.connect_timeout {
            cfg.connect_timeout(t);
        }
        if let Some(o) = &params.options {
            cfg.options(o);
        }
        match params.tls.mode {
            SslMode::Disable | SslMode::Allow => {
                cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
            }
            SslMode::Prefer => {
                // With NoTls, tokio-postgres skips the TLS request: plaintext, as prefer allows.
                cfg.ssl_mode(tokio_postgres::config::SslMode::Prefer);
            }
            other => {
                return Err(Error::new(
                    ErrorKind::Tls,
                    format!("sslmode={} needs TLS, which this build of the tokio-postgres driver does not support yet", other.as_str()),
                )
                .with_node(node)
                .with_hint("use sslmode=disable or prefer for now; nothing was sent in plaintext"));
            }
        }
        // tokio-postgres's connect_timeout covers the TCP connect only; a hung server
        // accepts the socket and never answers the startup, so bound the whole handshake.
        let connecting = cfg.connect(tokio_postgres::NoTls);
        let result = match params.connect_timeout {
            Some(t) => tokio::time::timeout(t, connecting).await.map_err(|_| {
                Error::new(ErrorKind::Connect, format!("connection attempt timed out after {t:?}"))
                    .with_node(node.clone())
                    .with_hint("the server accepted the connection but did not answer: it may be overloaded or hung")
            })?,
            None => connecting.await,
        };
        let (client, connection) = result.map_err(|e| error::connect_error(e, &node))?;
        Ok(PgConnection::new(client, connection, node))
    }
}
