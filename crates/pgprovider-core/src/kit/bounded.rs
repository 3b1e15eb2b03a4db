//! Query timeouts: the one place drivers bound a statement and cancel it on the server.

use crate::{CancelToken, Error, ErrorKind};
use std::future::Future;

/// How long drivers wait for the reply of a cancelled statement before giving up on the
/// connection.
pub const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How a statement bounded by a query timeout ended ([`run_bounded`]).
#[derive(Debug)]
pub enum Bounded<R> {
    /// It finished (successfully or not) within the timeout.
    Finished(R),
    /// It ran past the timeout and was cancelled. `clean` when the server confirmed the
    /// cancel (its reply was the "canceling statement" error), so the connection can be
    /// reused; otherwise the statement may have finished first and the cancel may still hit
    /// the next one: the connection must be discarded.
    TimedOut {
        /// Whether the connection is clean.
        clean: bool,
    },
}

/// Awaits `fut` (a statement) for at most `timeout`. On expiry sends `cancel`; when the
/// cancel got through, awaits the statement's reply for [`CANCEL_GRACE`] and judges it with
/// `is_cancel_reply` (when it did not, nothing more is awaited: the connection is not
/// clean). The one place drivers implement query timeouts.
pub async fn run_bounded<T, E>(
    timeout: Option<std::time::Duration>,
    cancel: &CancelToken,
    fut: impl Future<Output = std::result::Result<T, E>>,
    is_cancel_reply: impl Fn(&E) -> bool,
) -> Bounded<std::result::Result<T, E>> {
    let Some(t) = timeout else {
        return Bounded::Finished(fut.await);
    };
    let mut fut = std::pin::pin!(fut);
    match tokio::time::timeout(t, &mut fut).await {
        Ok(r) => Bounded::Finished(r),
        Err(_) => {
            let cancelled = cancel.cancel().await;
            if cancelled.is_err() {
                // The cancel never got through (a hung server or network): no reply is
                // coming either, so the connection is given up at once.
                return Bounded::TimedOut { clean: false };
            }
            let reply = tokio::time::timeout(CANCEL_GRACE, fut).await;
            let clean = matches!(&reply, Ok(Err(e)) if is_cancel_reply(e));
            Bounded::TimedOut { clean }
        }
    }
}

/// The error of a statement cancelled after the query timeout `t` on `node`.
pub fn query_timeout_error(t: std::time::Duration, clean: bool, node: &str) -> Error {
    Error::new(
        ErrorKind::Timeout,
        if clean {
            format!("statement cancelled after the query timeout of {t:?}")
        } else {
            format!("the query timeout of {t:?} expired and the cancel was not confirmed")
        },
    )
    .with_node(node)
    .with_hint(if clean {
        "the server stopped the statement; raise query_timeout or make it faster"
    } else {
        "the server did not confirm the cancel; the connection will be closed"
    })
}
