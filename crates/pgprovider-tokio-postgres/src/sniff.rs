//! The SQLSTATE of the last error the server sent, read off the protocol stream.
//!
//! For libraries built on tokio-postgres that drop the code (diesel-async keeps only the
//! message): [`connect_client_with_error_codes`](crate::connect_client_with_error_codes)
//! wraps the connection's stream in [`Sniff`], which follows the server's messages (a
//! 5-byte header, then the body) and keeps the `C` field of each `ErrorResponse`. Exact
//! whatever the server's `lc_messages`, unlike guessing from the message text.
//!
//! The stream is wrapped below TLS (the socket) and above it (the decrypted stream): the
//! socket-level reader watches the client's `SSLRequest` and stands down when the server
//! answers `S`, leaving the messages to the reader inside TLS.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

/// The SQLSTATE of the last `ErrorResponse` a connection received. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct LastError(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    code: Mutex<Option<[u8; 5]>>,
    /// TLS was negotiated: the socket-level reader stands down.
    encrypted: AtomicBool,
}

impl LastError {
    /// Forgets the last code (before a new statement).
    pub fn clear(&self) {
        *self.lock() = None;
    }

    /// The last code received, if any since [`clear`](Self::clear).
    pub fn code(&self) -> Option<String> {
        self.lock()
            .and_then(|c| std::str::from_utf8(&c).ok().map(str::to_owned))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<[u8; 5]>> {
        self.0.code.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `SSLRequest` a client sends first when it asks for TLS.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

/// Where the reader is in the server's message stream.
#[derive(Debug)]
enum Read {
    /// Collecting a header (type byte and length) of which `n` bytes are in.
    Header { buf: [u8; 5], n: usize },
    /// Skipping a body.
    Skip(usize),
    /// Collecting an `ErrorResponse` body of this many more bytes.
    Error(usize, Vec<u8>),
    /// The next byte answers an `SSLRequest`.
    SslAnswer,
    /// Not reading (TLS below, or a stream it cannot follow).
    Off,
}

/// A stream whose reads are followed for `ErrorResponse` messages.
#[derive(Debug)]
pub(crate) struct Sniff<S> {
    inner: S,
    read: Read,
    last: LastError,
    /// Below TLS: watches writes for an `SSLRequest`.
    socket_level: bool,
    written: usize,
}

impl<S> Sniff<S> {
    /// Wraps the socket (below any TLS).
    pub(crate) fn socket(inner: S, last: LastError) -> Self {
        Sniff {
            inner,
            read: Read::Header { buf: [0; 5], n: 0 },
            last,
            socket_level: true,
            written: 0,
        }
    }

    fn follow(&mut self, mut data: &[u8]) {
        if self.socket_level && self.last.0.encrypted.load(Ordering::Relaxed) {
            self.read = Read::Off;
        }
        while !data.is_empty() {
            match &mut self.read {
                Read::Off => return,
                Read::SslAnswer => {
                    if data[0] == b'S' {
                        self.read = Read::Off;
                        return;
                    }
                    data = &data[1..];
                    self.read = Read::Header { buf: [0; 5], n: 0 };
                }
                Read::Header { buf, n } => {
                    let take = (5 - *n).min(data.len());
                    buf[*n..*n + take].copy_from_slice(&data[..take]);
                    *n += take;
                    data = &data[take..];
                    if *n == 5 {
                        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                        let body = len.saturating_sub(4);
                        self.read = if buf[0] == b'E' {
                            Read::Error(body, Vec::with_capacity(body.min(4096)))
                        } else {
                            Read::Skip(body)
                        };
                        self.end_of_body();
                    }
                }
                Read::Skip(left) => {
                    let take = (*left).min(data.len());
                    *left -= take;
                    data = &data[take..];
                    self.end_of_body();
                }
                Read::Error(left, body) => {
                    let take = (*left).min(data.len());
                    body.extend_from_slice(&data[..take]);
                    *left -= take;
                    data = &data[take..];
                    self.end_of_body();
                }
            }
        }
    }

    /// At the end of a body: keeps an error's code, then expects the next header.
    fn end_of_body(&mut self) {
        match &self.read {
            Read::Skip(0) => {}
            Read::Error(0, body) => {
                if let Some(code) = sqlstate_field(body) {
                    *self.last.lock() = Some(code);
                }
            }
            _ => return,
        }
        self.read = Read::Header { buf: [0; 5], n: 0 };
    }
}

/// The `C` field of an `ErrorResponse` body (fields: a type byte, then a C string).
fn sqlstate_field(body: &[u8]) -> Option<[u8; 5]> {
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            return None;
        }
        let end = tail.iter().position(|b| *b == 0)?;
        if kind == b'C' {
            return tail[..end].try_into().ok();
        }
        rest = &tail[end + 1..];
    }
    None
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniff<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.follow(&buf.filled()[before..]);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniff<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = r
            && self.socket_level
            && self.written == 0
        {
            self.written = n;
            if data[..n].starts_with(&SSL_REQUEST) {
                self.read = Read::SslAnswer;
            }
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: TlsStream + Unpin> TlsStream for Sniff<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

/// A TLS connector whose streams are followed too (see the module docs).
pub(crate) struct SniffTls<C> {
    pub(crate) inner: C,
    pub(crate) last: LastError,
}

impl<S, C> TlsConnect<S> for SniffTls<C>
where
    C: TlsConnect<S>,
    C::Future: Send + 'static,
{
    type Stream = Sniff<C::Stream>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Sniff<C::Stream>, C::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let last = self.last;
        last.0.encrypted.store(true, Ordering::Relaxed);
        let fut = self.inner.connect(stream);
        Box::pin(async move {
            let s = fut.await?;
            Ok(Sniff {
                inner: s,
                read: Read::Header { buf: [0; 5], n: 0 },
                last,
                socket_level: false,
                written: 0,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn error_codes_are_read_across_any_split() {
        let mut stream = message(b'Z', b"I");
        stream.extend(message(
            b'E',
            b"SERROR\0C42P01\0Mla relation \"t\" n'existe pas\0\0",
        ));
        stream.extend(message(b'Z', b"I"));
        for chunk in [1, 2, 3, 7, 64] {
            let last = LastError::default();
            let mut s = Sniff::socket((), last.clone());
            for part in stream.chunks(chunk) {
                s.follow(part);
            }
            assert_eq!(last.code().as_deref(), Some("42P01"), "chunks of {chunk}");
            last.clear();
            assert_eq!(last.code(), None);
        }
    }

    #[test]
    fn the_ssl_answer_is_skipped_or_hands_over() {
        let last = LastError::default();
        let mut s = Sniff::socket((), last.clone());
        s.read = Read::SslAnswer;
        let mut stream = vec![b'N'];
        stream.extend(message(b'E', b"C28000\0\0"));
        s.follow(&stream);
        assert_eq!(last.code().as_deref(), Some("28000"));
        let mut tls = Sniff::socket((), LastError::default());
        tls.read = Read::SslAnswer;
        tls.follow(b"S\x16\x03\x01garbage");
        assert!(matches!(tls.read, Read::Off));
        assert_eq!(sqlstate_field(b"Mno code\0\0"), None);
        assert_eq!(sqlstate_field(b"Cbroken"), None);
    }
}
