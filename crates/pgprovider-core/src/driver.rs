//! The traits a driver implements.

use crate::{ConnectParams, Result};
use crate::{Error, ErrorKind};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A PostgreSQL driver: opens [`Connection`]s to one node.
///
/// Implement it to plug a driver into the provider; the pool, policies and topology use
/// only this trait. Futures are `Send` so pools can run on multi-threaded runtimes.
pub trait Driver: Send + Sync + 'static {
    /// The connection type.
    type Connection: Connection;

    /// The driver's registry name, such as `"tokio-postgres"`.
    fn name(&self) -> &'static str;

    /// Opens one connection to the node described by `params`.
    ///
    /// # Errors
    /// [`ErrorKind::Connect`](crate::ErrorKind::Connect), `Tls` or `Auth` (with the node named)
    /// when the connection cannot be made.
    fn connect(
        &self,
        params: &ConnectParams,
    ) -> impl Future<Output = Result<Self::Connection>> + Send;
}

/// One open connection, as the pool sees it.
///
/// The split follows bb8: [`is_broken`](Connection::is_broken) is a cheap synchronous check
/// made when a connection is returned, [`ping`](Connection::ping) an async round trip made
/// at checkout when validation asks for it.
pub trait Connection: Send + 'static {
    /// Whether the connection is known to be unusable (closed socket, desynchronised
    /// protocol). Must not block or do I/O.
    fn is_broken(&self) -> bool;

    /// Checks the connection with a round trip.
    ///
    /// # Errors
    /// When the server does not answer correctly; the connection should then be discarded.
    fn ping(&mut self) -> impl Future<Output = Result<()>> + Send;

    /// Whether the session may carry state that the next user must not inherit (an open
    /// transaction, changed settings, locks, temporary tables). The pool calls
    /// [`reset`](Connection::reset) on return when this is true.
    ///
    /// The default, `true`, is always safe; drivers that track what ran on the session
    /// return `false` when nothing could have changed it, saving a round trip per checkout.
    fn needs_reset(&self) -> bool {
        true
    }

    /// Puts the session back into a clean state before the connection is reused: rolls
    /// back an open transaction and resets session settings.
    ///
    /// # Errors
    /// When the reset fails; the connection should then be discarded.
    fn reset(&mut self) -> impl Future<Output = Result<()>> + Send;

    /// Called when the connection goes back to the pool's idle queue, to restore
    /// per-checkout settings (such as a query timeout the last user changed). Synchronous
    /// and without I/O; the default does nothing.
    fn recycled(&mut self) {}

    /// Told at checkout when requests of others (reads the pool pipelined onto this
    /// connection) may still be queued ahead of the new holder's first statement. Until a
    /// reply arrives, a query timeout must not send a cancel request (it could stop one of
    /// them): the driver gives up on the statement and marks the connection broken instead.
    /// The default does nothing (drivers that do not pipeline are never told).
    fn queued_ahead(&mut self) {}

    /// Whether a statement on this connection was refused because the server is read-only
    /// (SQLSTATE `25006`) since it was last [`recycled`](Connection::recycled). The pool
    /// reports it when the connection comes back, so the topology rechecks the node's role
    /// at once (a demoted primary) instead of at its next probe. The default is `false`.
    fn refused_read_only(&self) -> bool {
        false
    }

    /// Whether a statement was abandoned mid-flight (its future dropped, as a caller's
    /// deadline does) and its replies may still be on the way, on a connection that is
    /// otherwise sound. The pool then calls [`recover`](Connection::recover) instead of
    /// closing the connection. Must not block or do I/O. The default, `false`, leaves such
    /// a connection to [`is_broken`](Connection::is_broken), which closes it.
    fn interrupted(&self) -> bool {
        false
    }

    /// For an [`interrupted`](Connection::interrupted) connection: when the abandoned
    /// statement can have changed nothing on the session (a plain read or write outside a
    /// transaction) and the driver reads and discards its replies by itself, in order,
    /// before those of the next statement (tokio-postgres does), forgets it and returns
    /// `true`: the connection goes straight back to the idle queue and the next statement
    /// simply queues behind the abandoned one, with no round trip. Synchronous, no I/O.
    /// The default, `false`, has the pool [`recover`](Connection::recover) it.
    fn release_in_place(&mut self) -> bool {
        false
    }

    /// Brings an [`interrupted`](Connection::interrupted) connection back to an idle,
    /// clean protocol state: reads and discards the replies still in flight and rolls back
    /// any transaction the abandoned statement may have opened. Session settings are left
    /// to [`reset`](Connection::reset), which the pool runs next when
    /// [`needs_reset`](Connection::needs_reset) says so.
    ///
    /// The pool bounds it: past a short grace it sends a cancel request (the abandoned
    /// statement may be a long one), past a longer one it closes the connection.
    ///
    /// # Errors
    /// When the connection cannot be recovered; it is then closed. An error with SQLSTATE
    /// `57014` (query cancelled) means the pool's cancel request hit this call's own
    /// statement: the pool calls it once more.
    fn recover(&mut self) -> impl Future<Output = Result<()>> + Send {
        async {
            Err(Error::new(
                ErrorKind::Other,
                "this driver cannot recover a connection whose statement was abandoned",
            ))
        }
    }

    /// Runs one or more statements with the simple query protocol and returns their rows
    /// as text. For administration (health checks, session setup), not for application data.
    ///
    /// # Errors
    /// The server's error, with its SQLSTATE.
    fn simple_query(&mut self, sql: &str) -> impl Future<Output = Result<Vec<SimpleRow>>> + Send;

    /// A token that cancels whatever this connection is running, from another task.
    fn cancel_token(&self) -> CancelToken;

    /// Closes the connection politely (sends Terminate). Dropping it also closes it.
    fn close(self) -> impl Future<Output = ()> + Send
    where
        Self: Sized;
}

type CancelFn = dyn Fn() -> Pin<Box<dyn Future<Output = Result<()>> + Send>> + Send + Sync;

/// Cancels the query running on a connection (a PostgreSQL cancel request on a separate
/// socket). Cheap to clone; usable after the connection was moved elsewhere.
#[derive(Clone)]
pub struct CancelToken(Arc<CancelFn>);

impl CancelToken {
    /// Builds a token from a function that sends the cancel request.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        CancelToken(Arc::new(move || Box::pin(f())))
    }

    /// Sends the cancel request. The server may or may not still be running the query.
    ///
    /// # Errors
    /// When the cancel request cannot be delivered.
    pub async fn cancel(&self) -> Result<()> {
        (self.0)().await
    }
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CancelToken")
    }
}

/// One row of a [`Connection::simple_query`] result, every value as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimpleRow {
    columns: Arc<[String]>,
    values: Vec<Option<String>>,
}

impl SimpleRow {
    /// A row with the given column names and values (same length).
    pub fn new(columns: Arc<[String]>, values: Vec<Option<String>>) -> Self {
        debug_assert_eq!(columns.len(), values.len());
        SimpleRow { columns, values }
    }

    /// The value of column `idx`; `None` for SQL NULL or a column that does not exist.
    pub fn get(&self, idx: usize) -> Option<&str> {
        self.values.get(idx).and_then(|v| v.as_deref())
    }

    /// The value of the column named `name`.
    pub fn get_by_name(&self, name: &str) -> Option<&str> {
        let idx = self.columns.iter().position(|c| c == name)?;
        self.get(idx)
    }

    /// The column names.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_row_access() {
        let cols: Arc<[String]> = vec!["a".to_string(), "b".to_string()].into();
        let row = SimpleRow::new(cols, vec![Some("1".into()), None]);
        assert_eq!(row.get(0), Some("1"));
        assert_eq!(row.get(1), None);
        assert_eq!(row.get(2), None);
        assert_eq!(row.get_by_name("a"), Some("1"));
        assert_eq!(row.get_by_name("zz"), None);
        assert_eq!(row.columns().len(), 2);
        assert_eq!(row.len(), 2);
        assert!(!row.is_empty());
    }

    #[test]
    fn cancel_token_runs_its_function() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let token = CancelToken::new(move || {
            h.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        });
        let clone = token.clone();
        let mut fut = std::pin::pin!(clone.cancel());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(matches!(
            fut.as_mut().poll(&mut cx),
            std::task::Poll::Ready(Ok(()))
        ));
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert_eq!(format!("{token:?}"), "CancelToken");
    }
}
