//! Cancel requests that every server and pooler honours.
//!
//! tokio-postgres sends a cancel request and then shuts its side of the socket down at
//! once. PostgreSQL acts on the request anyway; PgBouncer (1.18, measured here) reads the
//! early end of stream as the client going away and drops the request without forwarding
//! it, so a query timeout behind PgBouncer never stopped anything. libpq instead waits for
//! the server to close the socket. [`Lingering`] gives tokio-postgres a socket whose
//! shutdown does that: it reads until the peer closes (bounded by [`CANCEL_TIMEOUT`]).

use crate::conn::Cancel;
use pgprovider_core::{CancelToken, Error, ErrorKind, Host};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::MakeTlsConnect;

/// The longest a cancel request may take, connection included; a shorter connect timeout
/// (at least 1 s) bounds it instead, so a hung server costs a timed-out statement no more
/// than a connection attempt would.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// A socket whose shutdown waits for the peer to close it (see the module docs).
struct Lingering<S>(S);

impl<S: AsyncRead + Unpin> AsyncRead for Lingering<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut scratch = [0u8; 64];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.0).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
                // Reset by the peer: it is done with the request too.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A token that cancels what the connection with tokio-postgres's `token` runs, reaching
/// `host:port` as the connection did (`tls`).
pub(crate) fn token(
    token: tokio_postgres::CancelToken,
    host: Host,
    port: u16,
    tls: Cancel,
    node: String,
    connect_timeout: Option<Duration>,
) -> CancelToken {
    let limit = connect_timeout.map_or(CANCEL_TIMEOUT, |t| {
        t.clamp(Duration::from_secs(1), CANCEL_TIMEOUT)
    });
    CancelToken::new(move || {
        let (token, host, tls, node) = (token.clone(), host.clone(), tls.clone(), node.clone());
        async move {
            let sent = tokio::time::timeout(limit, send(&token, &host, port, tls)).await;
            match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Error::new(
                    ErrorKind::Connect,
                    format!("cannot send the cancel request: {e}"),
                )
                .with_node(node)),
                Err(_) => Err(Error::new(
                    ErrorKind::Timeout,
                    format!("the cancel request got no answer within {limit:?}"),
                )
                .with_node(node)),
            }
        }
    })
}

async fn send(
    token: &tokio_postgres::CancelToken,
    host: &Host,
    port: u16,
    tls: Cancel,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match host {
        Host::Tcp(h) => {
            let stream = Lingering(tokio::net::TcpStream::connect((h.as_str(), port)).await?);
            match tls {
                Cancel::Plain => {
                    token
                        .cancel_query_raw(stream, tokio_postgres::NoTls)
                        .await?
                }
                Cancel::Tls(mut make) => {
                    let connect = <tokio_postgres_rustls::MakeRustlsConnect as MakeTlsConnect<
                        Lingering<tokio::net::TcpStream>,
                    >>::make_tls_connect(&mut make, h)?;
                    token.cancel_query_raw(stream, connect).await?
                }
            }
        }
        Host::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let stream = Lingering(tokio::net::UnixStream::connect(path).await?);
            token
                .cancel_query_raw(stream, tokio_postgres::NoTls)
                .await?
        }
    }
    Ok(())
}
