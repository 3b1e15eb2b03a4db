//! Connections over a socket the driver opens itself, for [`Sniff`] to follow (see
//! [`connect_client_with_error_codes`](crate::connect_client_with_error_codes)).

use crate::conn::{Cancel, PgConnection};
use crate::sniff::{LastError, Sniff, SniffTls};
use crate::{TokioPostgres, bounded, finish};
use pgprovider_core::{ConnectParams, Error, ErrorKind, Host, Result};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};

/// A TCP or unix socket.
#[derive(Debug)]
pub(crate) enum RawSocket {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl AsyncRead for RawSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawSocket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            RawSocket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RawSocket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            RawSocket::Tcp(s) => Pin::new(s).poll_write(cx, b),
            RawSocket::Unix(s) => Pin::new(s).poll_write(cx, b),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawSocket::Tcp(s) => Pin::new(s).poll_flush(cx),
            RawSocket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawSocket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            RawSocket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Opens the connection over a socket of its own, followed by `last`.
pub(crate) async fn open<T>(
    cfg: &tokio_postgres::Config,
    mut tls: T,
    cancel: Cancel,
    params: &ConnectParams,
    node: &str,
    driver: &TokioPostgres,
    last: LastError,
) -> Result<PgConnection>
where
    T: MakeTlsConnect<Sniff<RawSocket>>,
    T::Stream: Send + 'static,
    <T::TlsConnect as TlsConnect<Sniff<RawSocket>>>::Future: Send + 'static,
{
    // One bound for the socket and the handshake, as tokio-postgres's own connect path.
    let attempt = async {
        let (socket, host) = match &params.host {
            Host::Tcp(h) => {
                let s = tokio::net::TcpStream::connect((h.as_str(), params.port))
                    .await
                    .map_err(|e| socket_error(e, node))?;
                let _ = s.set_nodelay(true);
                // As tokio-postgres's own connections: keepalives after 2 hours idle.
                let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(7200));
                let _ = socket2::SockRef::from(&s).set_tcp_keepalive(&keepalive);
                (RawSocket::Tcp(s), h.clone())
            }
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{}", params.port));
                let s = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| socket_error(e, node))?;
                (RawSocket::Unix(s), "localhost".to_owned())
            }
        };
        let connector = tls.make_tls_connect(&host).map_err(|e| {
            Error::new(ErrorKind::Tls, format!("cannot set up TLS: {}", e.into())).with_node(node)
        })?;
        let stream = Sniff::socket(socket, last.clone());
        let tls = SniffTls {
            inner: connector,
            last,
        };
        Ok::<_, Error>(cfg.connect_raw(stream, tls).await)
    };
    let result = bounded(params, node, attempt).await??;
    finish(result, cancel, params, node, driver).await
}

fn socket_error(e: io::Error, node: &str) -> Error {
    Error::new(ErrorKind::Connect, format!("cannot connect: {e}"))
        .with_node(node)
        .with_hint("check that the server is running and reachable at this address")
        .with_source(e)
}
