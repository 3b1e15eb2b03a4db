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
//! // Typed queries through the statement cache (the `Queries` trait):
//! use pgprovider::Queries;
//! let n: i32 = conn.query_one("SELECT $1::int4 + 1", &[&41_i32]).await?.get(0);
//! assert_eq!(n, 42);
//! // The driver's own client is one call away, for the rest:
//! let n: i32 = conn.client().query_one("SELECT 1", &[]).await.map_err(pgprovider_tokio_postgres::map_error)?.get(0);
//! # Ok(()) }
//! ```
//!
//! [`PgConnection`] implements [`Queries`](pgprovider_core::Queries) and adds row streams
//! ([`PgConnection::query_stream`]), pipelined batches ([`PgConnection::batch`]) and binary
//! COPY ([`PgConnection::copy_in`], [`PgConnection::copy_out`]).
//!
//! Statements go through a per-connection cache of prepared statements. A cached statement
//! the server rejects as stale (`0A000` cached plan must not change result type, `26000`)
//! is dropped from every connection's cache in the pool and, outside a transaction,
//! prepared again and run once more, invisibly. With `statement_cache_capacity=0` only
//! unnamed statements are used (for PgBouncer in transaction mode); parameter types then
//! come from the Rust values (`i32` is `int4`, `String` is `text`, …): cast in SQL where a
//! column's type differs.
//!
//! TLS is rustls for every libpq `sslmode` (disable, allow, prefer, require, verify-ca,
//! verify-full), with a custom root CA (`sslrootcert`, or `system`) and client certificates
//! (`sslcert`/`sslkey`); see the table in the `tls` module's docs, repeated here:
//!
//! | sslmode | encrypted | chain checked | host name checked |
//! | --- | --- | --- | --- |
//! | disable | never | - | - |
//! | allow | only if the server insists | no | no |
//! | prefer | if the server offers it | no | no |
//! | require | always | only if `sslrootcert` is set (libpq's rule) | no |
//! | verify-ca | always | yes | no |
//! | verify-full | always | yes | yes |
//!
//! No mode falls back to plaintext unless it allows it.
#![deny(missing_docs)]

mod cache;
mod cancel;
mod conn;
mod copy;
mod error;
mod listen;
mod mux;
mod pipe;
#[cfg(feature = "provider")]
mod provider;
mod query;
mod raw;
mod sniff;
mod tls;
mod value;

pub use conn::PgConnection;
pub use copy::CopyRow;
pub use error::map_error;
pub use listen::{Event, Listener, ListenerBuilder, ListenerStats, SlowSubscriber, Subscription};
pub use mux::{Multiplexed, MuxStats};
pub use pgprovider_core::Notification;
pub use pgprovider_core::kit::sql::RESET_RECIPE;
pub use pipe::PgPipeline;
#[cfg(feature = "provider")]
pub use provider::ProviderExt;
pub use query::{BatchResult, Param, PgRow, PgRowStream};
pub use sniff::LastError;
pub use tls::SYSTEM_ROOTS;
pub use tokio_postgres::types;

use conn::Cancel;
use pgprovider_core::{ConnectParams, Driver, Error, ErrorKind, Host, Result, SslMode};
use tokio_postgres::Socket;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};

/// The tokio-postgres driver. Registered under the name `"tokio-postgres"`.
#[derive(Clone, Debug, Default)]
pub struct TokioPostgres {
    /// Where the connections' notifications go (the listener's connection); `None` drops
    /// them, as pooled connections do.
    notifications: Option<tokio::sync::mpsc::UnboundedSender<pgprovider_core::Notification>>,
    /// Follows the stream for the SQLSTATE of each error (see [`LastError`]).
    error_codes: Option<LastError>,
}

impl TokioPostgres {
    /// The driver's registry name.
    pub const NAME: &'static str = "tokio-postgres";

    /// A new driver.
    pub fn new() -> Self {
        Self::default()
    }

    /// A driver whose connections forward LISTEN notifications to `tx` (used by
    /// [`Listener`]).
    pub(crate) fn with_notifications(
        tx: tokio::sync::mpsc::UnboundedSender<pgprovider_core::Notification>,
    ) -> Self {
        TokioPostgres {
            notifications: Some(tx),
            error_codes: None,
        }
    }
}

/// Opens a connection as the driver does (TLS, connect timeout, startup options) and hands
/// over the bare tokio-postgres client (its connection driven by a task of its own), with a
/// cancel token for it: for crates that build on tokio-postgres clients, such as
/// `pgprovider-diesel` (diesel-async's `AsyncPgConnection::try_from`).
///
/// # Errors
/// As [`Driver::connect`].
pub async fn connect_client(
    params: &ConnectParams,
) -> Result<(tokio_postgres::Client, pgprovider_core::CancelToken)> {
    let conn = TokioPostgres::new().connect(params).await?;
    let cancel = pgprovider_core::Connection::cancel_token(&conn);
    Ok((conn.into_client(), cancel))
}

/// As [`connect_client`], with the SQLSTATE of every error the server sends kept in a
/// [`LastError`], read off the protocol stream: for libraries that keep only an error's
/// message (diesel-async), so codes do not have to be guessed from text in the server's
/// language.
///
/// # Errors
/// As [`Driver::connect`].
pub async fn connect_client_with_error_codes(
    params: &ConnectParams,
) -> Result<(
    tokio_postgres::Client,
    pgprovider_core::CancelToken,
    LastError,
)> {
    let last = LastError::default();
    let driver = TokioPostgres {
        notifications: None,
        error_codes: Some(last.clone()),
    };
    let conn = driver.connect(params).await?;
    let cancel = pgprovider_core::Connection::cancel_token(&conn);
    Ok((conn.into_client(), cancel, last))
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
        if let Some(o) = &params.options {
            cfg.options(o);
        }
        // libpq ignores sslmode on unix sockets: the server never encrypts them.
        let mode = match params.host {
            Host::Unix(_) => SslMode::Disable,
            Host::Tcp(_) => params.tls.mode,
        };
        let Some(tls) = tls::connector(&params.tls, &node)?.filter(|_| mode != SslMode::Disable)
        else {
            cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
            return self.plain(&cfg, params, &node).await;
        };
        match mode {
            SslMode::Allow => {
                // Plaintext first; TLS only when the server refuses plaintext.
                cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                match self.plain(&cfg, params, &node).await {
                    Err(e) if refuses_plaintext(&e) => {
                        cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
                        self.tls(&cfg, tls, params, &node).await
                    }
                    other => other,
                }
            }
            SslMode::Prefer => {
                cfg.ssl_mode(tokio_postgres::config::SslMode::Prefer);
                self.tls(&cfg, tls, params, &node).await
            }
            _ => {
                cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
                self.tls(&cfg, tls, params, &node).await
            }
        }
    }
}

impl TokioPostgres {
    /// Opens a connection with TLS as `cfg`'s `sslmode` says.
    async fn tls(
        &self,
        cfg: &tokio_postgres::Config,
        tls: tokio_postgres_rustls::MakeRustlsConnect,
        params: &ConnectParams,
        node: &str,
    ) -> Result<PgConnection> {
        Box::pin(open(cfg, tls.clone(), Cancel::Tls(tls), params, node, self)).await
    }

    /// Opens a plaintext connection.
    async fn plain(
        &self,
        cfg: &tokio_postgres::Config,
        params: &ConnectParams,
        node: &str,
    ) -> Result<PgConnection> {
        // Boxed, as every `open`: connecting holds large futures (TLS, the sniffing path)
        // that would otherwise sit in every checkout's future and debug stack frame.
        Box::pin(open(
            cfg,
            tokio_postgres::NoTls,
            Cancel::Plain,
            params,
            node,
            self,
        ))
        .await
    }
}

/// The server's pg_hba.conf rejected an unencrypted connection (`hostssl` only).
fn refuses_plaintext(e: &Error) -> bool {
    e.sql_state() == Some(pgprovider_core::SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
        && e.message().contains("no encryption")
}

/// Opens one connection with `tls`, bounding the whole handshake by the connect timeout.
async fn open<T>(
    cfg: &tokio_postgres::Config,
    tls: T,
    cancel: Cancel,
    params: &ConnectParams,
    node: &str,
    driver: &TokioPostgres,
) -> Result<PgConnection>
where
    T: MakeTlsConnect<Socket> + MakeTlsConnect<sniff::Sniff<raw::RawSocket>> + Send,
    <T as MakeTlsConnect<Socket>>::Stream: Send + 'static,
    <T as MakeTlsConnect<Socket>>::TlsConnect: Send,
    <<T as MakeTlsConnect<Socket>>::TlsConnect as TlsConnect<Socket>>::Future: Send,
    <T as MakeTlsConnect<sniff::Sniff<raw::RawSocket>>>::Stream: Send + 'static,
    <T as MakeTlsConnect<sniff::Sniff<raw::RawSocket>>>::TlsConnect: Send,
    <<T as MakeTlsConnect<sniff::Sniff<raw::RawSocket>>>::TlsConnect as TlsConnect<
        sniff::Sniff<raw::RawSocket>,
    >>::Future: Send + 'static,
{
    if let Some(last) = &driver.error_codes {
        return Box::pin(raw::open(
            cfg,
            tls,
            cancel,
            params,
            node,
            driver,
            last.clone(),
        ))
        .await;
    }
    // tokio-postgres's connect_timeout covers the TCP connect only; a hung server
    // accepts the socket and never answers the startup, so bound the whole handshake.
    let connecting = cfg.connect(tls);
    let result = bounded(params, node, connecting).await?;
    finish(result, cancel, params, node, driver).await
}

/// `connecting` bounded by the connect timeout.
pub(crate) async fn bounded<R>(
    params: &ConnectParams,
    node: &str,
    connecting: impl std::future::Future<Output = R>,
) -> Result<R> {
    Ok(match params.connect_timeout {
        Some(t) => tokio::time::timeout(t, connecting).await.map_err(|_| {
            Error::new(
                ErrorKind::Connect,
                format!("connection attempt timed out after {t:?}"),
            )
            .with_node(node)
            .with_hint(
                "the server accepted the connection but did not answer: it may be overloaded or hung",
            )
        })?,
        None => connecting.await,
    })
}

/// The connection of a finished handshake, with the settings a session pooler refuses at
/// startup applied.
pub(crate) async fn finish<S, U>(
    result: std::result::Result<
        (tokio_postgres::Client, tokio_postgres::Connection<S, U>),
        tokio_postgres::Error,
    >,
    cancel: Cancel,
    params: &ConnectParams,
    node: &str,
    driver: &TokioPostgres,
) -> Result<PgConnection>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = result.map_err(|e| {
        pgprovider_core::kit::pooler_startup_refusal(error::connect_error(e, node), params.pooler)
    })?;
    let conn = PgConnection::new(
        client,
        connection,
        cancel,
        params,
        driver.notifications.clone(),
    );
    // Behind a session pooler, the settings it refuses at startup.
    if let Some(set) = pgprovider_core::kit::session_settings(params) {
        conn.client
            .batch_execute(&set)
            .await
            .map_err(|e| error::map_error(e).with_node(node))?;
    }
    Ok(conn)
}
