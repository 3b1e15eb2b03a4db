//! Connection lifecycle hooks, set on the [`PoolBuilder`](super::PoolBuilder).
//!
//! | hook | runs | on failure or panic |
//! | --- | --- | --- |
//! | `after_connect` | once per new connection, before its first use (checkout or warm-up) | the connection is closed; a checkout returns the error, not retried |
//! | `before_checkout` | on an idle connection about to be handed out | `false` or a panic: the connection is closed and another is taken |
//! | `after_return` | on a connection put back into the idle queue (after any reset) | a panic closes the connection |
//! | `on_leak` | once per checkout held longer than the leak-detection threshold (saying where a transaction open on it began) | a panic is logged |
//! | `on_suspect` | when a connection comes back broken, or after a statement was refused as read-only (`25006`, see [`Connection::refused_read_only`](pgprovider_core::Connection::refused_read_only)): the node may have failed or been demoted | a panic is logged |
//!
//! Hooks never run while the pool's locks are held. A panic in a hook is caught, logged at
//! `error` level with the node, and never poisons the pool.

use pgprovider_core::Result;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, Location};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// A boxed future, as returned by the `after_connect` hook.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub(crate) type AfterConnect<C> =
    Arc<dyn for<'a> Fn(&'a mut C) -> BoxFuture<'a, Result<()>> + Send + Sync>;

/// A checkout held longer than the leak-detection threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeakReport {
    /// The node of the pool.
    pub node: String,
    /// Where the connection was checked out (file:line:column of the `get` call).
    pub location: &'static Location<'static>,
    /// How long it had been held when reported.
    pub held_for: Duration,
    /// Where the transaction open on it began, when one is (`begin` or `transaction`
    /// call).
    pub transaction: Option<&'static Location<'static>>,
}

pub(crate) type BeforeCheckout<C> = Arc<dyn Fn(&C) -> bool + Send + Sync>;
pub(crate) type AfterReturn<C> = Arc<dyn Fn(&C) + Send + Sync>;
pub(crate) type OnLeak = Arc<dyn Fn(&LeakReport) + Send + Sync>;
pub(crate) type OnSuspect = Arc<dyn Fn() + Send + Sync>;

pub(crate) struct Hooks<C> {
    pub(crate) after_connect: Option<AfterConnect<C>>,
    pub(crate) before_checkout: Option<BeforeCheckout<C>>,
    pub(crate) after_return: Option<AfterReturn<C>>,
    pub(crate) on_leak: Option<OnLeak>,
    pub(crate) on_suspect: Option<OnSuspect>,
}

impl<C> Default for Hooks<C> {
    fn default() -> Self {
        Hooks {
            after_connect: None,
            before_checkout: None,
            after_return: None,
            on_leak: None,
            on_suspect: None,
        }
    }
}

impl<C> fmt::Debug for Hooks<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("after_connect", &self.after_connect.is_some())
            .field("before_checkout", &self.before_checkout.is_some())
            .field("after_return", &self.after_return.is_some())
            .field("on_leak", &self.on_leak.is_some())
            .field("on_suspect", &self.on_suspect.is_some())
            .finish()
    }
}

/// Runs a sync hook, containing a panic: `None` when it panicked (already logged).
pub(crate) fn guarded<T>(hook: &str, node: &str, f: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(p) => {
            tracing::error!(node, hook, panic = %panic_text(p.as_ref()), "pool hook panicked");
            None
        }
    }
}

pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".to_owned())
}

/// Polls a boxed future, turning a panic into `Err(message)`.
pub(crate) struct CatchUnwind<'a, T>(pub(crate) BoxFuture<'a, T>);

impl<T> Future for CatchUnwind<'_, T> {
    type Output = std::result::Result<T, String>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(p) => Poll::Ready(Err(panic_text(p.as_ref()))),
        }
    }
}

/// Runs a pipelined read (`None`: not sent, it takes the usual path) through `hooks`, an
/// operation like any other: the `before` hooks (firewall, access) may refuse it before it
/// is sent, the `after` hooks (audit, metrics) see its outcome.
pub(crate) async fn observed_read<T>(
    hooks: &pgprovider_core::observe::Hooks,
    node: &str,
    sql: &str,
    send: impl std::future::Future<Output = Option<crate::Result<Vec<T>>>>,
) -> Option<crate::Result<Vec<T>>> {
    use pgprovider_core::observe::{Operation, OperationKind, Outcome};
    if hooks.is_empty() {
        return send.await;
    }
    let op = Operation::new(OperationKind::Query, node).with_sql(sql);
    if let Err(e) = hooks.before(&op).await {
        hooks.after(
            &op,
            &Outcome::new(std::time::Duration::ZERO, None, Some(&e)),
        );
        return Some(Err(e));
    }
    let start = std::time::Instant::now();
    let r = send.await?;
    let rows = r.as_ref().ok().map(|r| r.len() as u64);
    hooks.after(&op, &Outcome::new(start.elapsed(), rows, r.as_ref().err()));
    Some(r)
}
