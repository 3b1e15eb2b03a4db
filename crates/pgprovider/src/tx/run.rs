//! The transaction loop: begin, run the closure, commit or roll back, and run it again after
//! a lost conflict or a node lost before `COMMIT` was sent.

use super::{Tx, TxOptions, deadline_error};
use crate::pool::{Pool, Pooled};
use crate::retry::{fresh_seed, later};
use pgprovider_core::{Driver, Error, ErrorKind, Queries, Result};
use std::future::Future;
use std::panic::Location;
use std::time::Duration;
use tokio::time::Instant;

impl<D: Driver> Pool<D>
where
    D::Connection: Queries,
{
    /// Checks out a connection and begins a transaction on it. Prefer
    /// [`transaction`](Pool::transaction), which also commits and retries.
    ///
    /// # Errors
    /// As [`get`](Pool::get), or the server's error for `BEGIN`.
    #[track_caller]
    pub fn begin(&self, opts: &TxOptions) -> impl Future<Output = Result<Tx<D>>> + Send {
        let origin = Location::caller();
        async move {
            let deadline = opts.timeout.map(later);
            Tx::begin(self.get().await?, opts, deadline, origin).await
        }
    }

    /// Runs `f` in a transaction: commits when it returns `Ok`, rolls back when it returns
    /// `Err`, and runs it again after a serialization failure or deadlock. See the table in
    /// the [`tx` module docs](crate::tx).
    ///
    /// # Errors
    /// `f`'s error; [`ErrorKind::Timeout`] past the deadline; the commit's error
    /// ([`ErrorKind::OutcomeUnknown`] when its reply is lost); checkout errors.
    #[track_caller]
    pub fn transaction<T, E, F, Fut>(
        &self,
        opts: &TxOptions,
        f: F,
    ) -> impl Future<Output = Result<T, E>>
    where
        F: FnMut(Tx<D>) -> Fut + Send,
        Fut: Future<Output = Result<T, E>> + Send,
        E: From<Error> + Send,
        T: Send,
    {
        let origin = Location::caller();
        async move {
            // One node: a transaction whose connection was lost is not run again (a multi-host
            // pool reconnects to another node, so it is, within the acquire timeout).
            let failover = if self.hosts() > 1 {
                self.config().pool().acquire_timeout()
            } else {
                Duration::ZERO
            };
            let follow = Follow {
                failover,
                read_only_moves: false,
            };
            run_transaction(opts, follow, |_| self.get(), f, origin).await
        }
    }
}

/// When a transaction whose node failed runs again elsewhere.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Follow {
    /// How long after the first attempt a transaction may still move (zero: never).
    pub(crate) failover: Duration,
    /// Whether a refusal as read-only (`25006`) moves it (its route can reach a primary,
    /// and the transaction itself is not read-only).
    pub(crate) read_only_moves: bool,
}

/// The pause before a transaction moves again: 10 ms doubling to 250 ms, so a node that
/// keeps failing at once is not hammered.
fn move_pause(moves: u32) -> Duration {
    (Duration::from_millis(10) * 2u32.saturating_pow(moves.min(5))).min(Duration::from_millis(250))
}

/// The transaction loop of [`Pool::transaction`], with connections from `get` (a pool, a
/// provider's route, a tenant's pool), given the error that ended the previous attempt when
/// it failed for its node. Such an attempt (connection lost or refused as read-only before
/// `COMMIT` was sent: nothing was committed) runs again until `failover` has passed since
/// the first; `get` routes it (to the new primary).
pub(crate) async fn run_transaction<D, T, E, F, Fut, G, GFut>(
    opts: &TxOptions,
    follow: Follow,
    get: G,
    mut f: F,
    origin: &'static Location<'static>,
) -> Result<T, E>
where
    D: Driver,
    D::Connection: Queries,
    F: FnMut(Tx<D>) -> Fut + Send,
    Fut: Future<Output = Result<T, E>> + Send,
    E: From<Error> + Send,
    T: Send,
    G: Fn(Option<Error>) -> GFut,
    GFut: Future<Output = Result<Pooled<D>>>,
{
    {
        let deadline = opts.timeout.map(later);
        let failover_until = later(follow.failover);
        let may_move = |e: &Error| {
            (e.is_connection_lost()
                || (e.is_read_only() && follow.read_only_moves)
                || e.kind() == ErrorKind::Connect)
                && e.kind() != ErrorKind::OutcomeUnknown
                && Instant::now() < failover_until
                && deadline.is_none_or(|d| Instant::now() < d)
        };
        // Drawn only when a first retry needs it (a seed costs a clock read and a hash).
        let mut delays = None;
        let mut moved: Option<Error> = None;
        let mut moves = 0;
        loop {
            if moved.is_some() {
                // Never past the failover window or the deadline.
                let pause =
                    move_pause(moves).min(failover_until.saturating_duration_since(Instant::now()));
                tokio::time::sleep(pause).await;
                moves += 1;
            }
            let run = async {
                let conn = get(moved.take()).await?;
                let tx = Tx::begin(conn, opts, deadline, origin).await?;
                Ok::<_, Error>(tx)
            };
            let begun = match deadline {
                Some(d) => tokio::time::timeout_at(d, run)
                    .await
                    .map_err(|_| deadline_error())?,
                None => run.await,
            };
            let tx = match begun {
                Ok(tx) => tx,
                Err(e) if may_move(&e) => {
                    tracing::debug!(error = %e, "transaction could not begin on its node; running it on another");
                    moved = Some(e);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let body = f(tx.clone());
            let outcome = match deadline {
                Some(d) => match tokio::time::timeout_at(d, body).await {
                    Ok(r) => r,
                    Err(_) => {
                        tx.abandon().await;
                        return Err(deadline_error().into());
                    }
                },
                None => body.await,
            };
            // Lost before COMMIT was sent (commit refuses to send it after a failed
            // statement): nothing was committed, run it again on another node.
            let node_lost = tx.lost_node().await.filter(&may_move);
            let lost: Result<Error, E> = match outcome {
                Ok(value) => {
                    // Decided before COMMIT: whether commit will refuse to send it, and
                    // whether the closure ended the transaction itself (then it is never run
                    // again: it may have committed).
                    let refused = tx.commit_refused().await;
                    if tx.has_ended().await {
                        return match tx.commit().await {
                            Ok(()) => Ok(value),
                            Err(e) => Err(e.into()),
                        };
                    }
                    match tx.commit().await {
                        Ok(()) => return Ok(value),
                        // A COMMIT whose reply was lost may have been applied: never again.
                        Err(e) if e.kind() == ErrorKind::OutcomeUnknown => {
                            return Err(e.into());
                        }
                        Err(e) if e.is_transaction_conflict() || tx.lost_conflict().await => Ok(e),
                        Err(_) if refused && node_lost.is_some() => {
                            moved = node_lost;
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => {
                    let conflict = tx.lost_conflict().await;
                    let _ = tx.rollback().await;
                    if node_lost.is_some() {
                        tracing::debug!(
                            "transaction lost its node before COMMIT; running it again"
                        );
                        moved = node_lost;
                        continue;
                    }
                    if !conflict {
                        return Err(e);
                    }
                    Err(e)
                }
            };
            let wait = delays
                .get_or_insert_with(|| opts.backoff.delays(opts.seed.unwrap_or_else(fresh_seed)))
                .next();
            let Some(wait) = wait else {
                return Err(match lost {
                    Ok(ours) => ours
                        .context(format!(
                            "the transaction lost a conflict on each of its {} attempts",
                            opts.backoff.max_attempts()
                        ))
                        .into(),
                    Err(theirs) => theirs,
                });
            };
            tracing::debug!(?wait, "transaction lost a conflict; running it again");
            match deadline {
                Some(d) if later(wait) >= d => return Err(deadline_error().into()),
                _ => tokio::time::sleep(wait).await,
            }
        }
    }
}
