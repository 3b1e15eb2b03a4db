//! The request path under the provider's surface: retry → routing → circuit breaker → pool.
//! Every statement, transaction and tenant operation of the provider comes through
//! [`Provider::run`] or [`Provider::checkout`]; nothing else routes or retries.

use super::route::{self, Target};
use super::{ConsistencyToken, Provider};
use crate::breaker::BreakerState;
use crate::config::LoadBalanceHosts;
use crate::pool::Pooled;
use crate::retry::later;
use crate::topology::{Role, parse_lsn};
use crate::{Connection, Driver, Error, ErrorKind, Result};
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::time::Instant;

impl<D: Driver> Provider<D> {
    /// Runs `f` on a connection for `target` through the retry layer: an attempt that failed
    /// in a way [safe to repeat](crate::retry::RetryPolicy::is_safe) (`idempotent` widens
    /// it; reads always are) runs again after the policy's wait, once the monitor has had a
    /// fresh look at the node that failed. A statement refused as read-only (`25006`) goes to
    /// the primary next when the target allows writes.
    pub(crate) async fn run<T, F, Fut>(&self, target: Target, idempotent: bool, f: F) -> Result<T>
    where
        F: Fn(Pooled<D>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempts = self.inner.retry.attempts();
        let mut target = target;
        loop {
            let deadline = later(attempts.time_left());
            let r = match target {
                t if t.is_primary() => match self.primary_until(t, deadline).await {
                    Ok(conn) => f(conn).await,
                    Err(e) => Err(e),
                },
                Target::After(token, wait) => match self.after(token, wait).await {
                    Ok(conn) => f(conn).await,
                    Err(e) => Err(e),
                },
                t => self.on_candidates(t, deadline, &f).await,
            };
            let err = match r {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if err.is_read_only() && target.may_write() {
                if self.refused_by_primary(&err) {
                    return Err(attempts.give_up(primary_refused(err)));
                }
                target = Target::Primary;
            }
            // Reads are safe to repeat, except one that ran out of time: it would only run
            // out of time again, on every node.
            let read = target.is_read() && err.kind() != ErrorKind::Timeout;
            let Some(wait) = attempts.retry_after(&err, idempotent || read) else {
                return Err(attempts.give_up(err));
            };
            tracing::debug!(error = %err, ?wait, attempt = attempts.number(), "retrying");
            self.fresh_look(&err, attempts.time_left().min(self.look_limit()))
                .await;
            tokio::time::sleep(wait).await;
        }
    }

    /// Runs a read (`run` on a connection) on the read route, through the retry layer.
    pub(crate) async fn read_with<T, F, Fut>(&self, run: F) -> Result<T>
    where
        F: Fn(Pooled<D>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.run(Target::Read, true, run).await
    }

    /// A connection for `target` (no statement run; no retry beyond the failover wait).
    pub(crate) async fn checkout(&self, target: Target) -> Result<Pooled<D>> {
        let deadline = later(self.inner.options.failover_timeout);
        match target {
            t if t.is_primary() => self.primary_until(t, deadline).await,
            Target::After(token, wait) => self.after(token, wait).await,
            t => {
                self.on_candidates(t, deadline, &|conn| std::future::ready(Ok(conn)))
                    .await
            }
        }
    }

    /// After `err` from a node, has the monitor probe it and waits (up to `limit`) for the
    /// verdict, so the next attempt routes on fresh knowledge rather than the view that
    /// sent it there.
    pub(super) async fn fresh_look(&self, err: &Error, limit: Duration) {
        if !(err.is_node_failure() || err.is_read_only()) {
            return;
        }
        let monitor = &self.inner.monitor;
        let Some(i) = err.node().and_then(|n| self.node_index(n)) else {
            monitor.recheck_all();
            let _ = monitor.wait_round(limit).await;
            return;
        };
        let probes = monitor.snapshot().statuses()[i].probes;
        monitor.recheck(&self.inner.nodes[i]);
        let _ = monitor
            .wait_for(limit, |s| s[i].probes > probes || !s[i].reachable)
            .await;
    }

    /// Whether `err` is a refusal as read-only by the node the monitor trusts as primary (a
    /// primary read-only by default, or a transaction set read-only): no other node would
    /// take it.
    pub(super) fn refused_by_primary(&self, err: &Error) -> bool {
        let snap = self.inner.monitor.snapshot();
        err.is_read_only()
            && snap.primary_index().is_some_and(|p| {
                err.node() == Some(snap.statuses()[p].node.as_str())
                    && snap.statuses()[p].role == crate::topology::Role::Primary
            })
    }

    /// How long a retry waits for the monitor's fresh look at a failed node: a few probe
    /// intervals, so a slow probe cannot eat the whole failover timeout.
    pub(super) fn look_limit(&self) -> Duration {
        (self.inner.options.monitor_interval * 3).max(Duration::from_secs(1))
    }

    /// The index of the node named `name` (`host:port`).
    fn node_index(&self, name: &str) -> Option<usize> {
        self.inner.nodes.iter().position(|n| n.to_string() == name)
    }

    /// A connection to the primary (`read-write`: one not read-only by default), waiting for
    /// one during a failover, until `deadline`.
    async fn primary_until(&self, target: Target, deadline: Instant) -> Result<Pooled<D>> {
        let monitor = &self.inner.monitor;
        // The trusted primary (for `read-write`, unless read-only by default): no
        // allocation, one snapshot read.
        let read_write = target == Target::Attrs(crate::config::TargetSessionAttrs::ReadWrite);
        let writable = |snap: &crate::topology::Snapshot| {
            snap.primary_index()
                .filter(|&p| !(read_write && snap.statuses()[p].read_only))
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::new(
                    ErrorKind::Connect,
                    format!(
                        "no primary within the failover timeout ({})",
                        self.describe()
                    ),
                )
                .with_hint(
                    "a failover may be in progress; check the nodes with `pgprovider health`",
                ));
            }
            let snap = monitor.snapshot();
            let found = match writable(&snap) {
                Some(i) => Ok(i),
                None => {
                    // The monitor's view may be a probe interval old: look again everywhere.
                    monitor.recheck_all();
                    match monitor
                        .wait_for(left, |_| writable(&monitor.snapshot()).is_some())
                        .await
                    {
                        Ok(_) => match writable(&monitor.snapshot()) {
                            Some(i) => Ok(i),
                            None => continue,
                        },
                        Err(e) => Err(e),
                    }
                }
            };
            let i = match found {
                Ok(i) => i,
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::Connect,
                        format!("no primary within {left:?} ({})", self.describe()),
                    )
                    .with_hint(
                        "a failover may be in progress; check the nodes with `pgprovider health`",
                    ));
                }
            };
            let node = &self.inner.nodes[i];
            let probes = snap.statuses()[i].probes;
            let permit = match self.inner.breakers[i].try_acquire() {
                Ok(p) => p,
                Err(e) => {
                    // Do not hammer a failing primary: wait for the monitor to trust
                    // another node, or this one's breaker to close. A half-open breaker
                    // with its probe in flight is looked at again after a short pause
                    // (never a busy loop).
                    monitor.recheck(node);
                    let pause = left.min(Duration::from_millis(50));
                    let moved = monitor
                        .wait_for(pause, |_| {
                            monitor.primary_index() != Some(i)
                                || self.inner.breakers[i].state() == BreakerState::Closed
                        })
                        .await;
                    if moved.is_err() && Instant::now() >= deadline {
                        return Err(e);
                    }
                    continue;
                }
            };
            // An idle connection is taken at once (one poll: no timer, no watch); only a
            // checkout that has to wait races the monitor: when the node stops being the
            // trusted primary (crashed, demoted, fenced), the write re-routes at once instead
            // of waiting out the pool's connect retries.
            let mut get = std::pin::pin!(self.inner.pools[i].get());
            let first =
                std::future::poll_fn(|cx| std::task::Poll::Ready(get.as_mut().poll(cx))).await;
            let outcome = match first {
                std::task::Poll::Ready(r) => Ok(r),
                std::task::Poll::Pending => {
                    let demoted = monitor.wait_for(left, |_| monitor.primary_index() != Some(i));
                    let checkout =
                        tokio::time::timeout(left.max(Duration::from_millis(1)), get.as_mut());
                    tokio::select! {
                        r = checkout => r,
                        Ok(_) = demoted => continue,
                    }
                }
            };
            if let Ok(got) = &outcome {
                permit.record(got);
            }
            match outcome {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) if Instant::now() < deadline && e.is_node_failure() => {
                    // The primary just went away: have the monitor look again, wait for
                    // its verdict, then route by it.
                    monitor.recheck(node);
                    let _ = monitor
                        .wait_for(deadline.saturating_duration_since(Instant::now()), |s| {
                            s[i].probes > probes || !s[i].reachable
                        })
                        .await;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::PoolTimeout,
                        format!("no connection to the primary {node} within the failover timeout"),
                    )
                    .with_node(node.to_string()));
                }
            }
        }
    }

    /// The nodes `target` may use now, in the order to try them.
    fn candidates(&self, target: Target) -> Vec<usize> {
        let n = self.inner.next_read.fetch_add(1, Relaxed);
        let random = self.inner.options.read_balancing == super::ReadBalancing::Random
            || self.inner.lb == LoadBalanceHosts::Random;
        let start = if random {
            self.inner.random.hash_one(n) as usize
        } else {
            n
        };
        let pools = &self.inner.pools;
        route::candidates(
            &self.inner.monitor.snapshot(),
            target,
            &self.inner.options,
            self.inner.lb,
            &|i: usize| pools[i].in_use(),
            start,
        )
    }

    /// Every node's state, for errors.
    fn describe(&self) -> String {
        let snap = self.inner.monitor.snapshot();
        let states: Vec<String> = snap
            .statuses()
            .iter()
            .map(|s| match &s.last_error {
                Some(e) if !s.reachable => format!("{}: unreachable ({e})", s.node),
                _ if s.fenced => format!("{}: fenced", s.node),
                _ => format!("{} {:?} lag {:?}", s.node, s.role, s.replay_lag_bytes),
            })
            .collect();
        states.join("; ")
    }

    fn no_node(&self, target: Target, errors: &[String]) -> Error {
        let failed = if errors.is_empty() {
            String::new()
        } else {
            format!("; failed: {}", errors.join("; "))
        };
        let (what, hint) = match target {
            Target::Attrs(attrs) => (
                format!("no node matches target_session_attrs={attrs:?}"),
                "the nodes of that kind are down or too far behind; change target_session_attrs or the lag bounds",
            ),
            _ => (
                "no node can serve the read".to_string(),
                "standbys are down or too far behind; allow read_from_primary or raise the lag bounds",
            ),
        };
        Error::new(
            ErrorKind::Connect,
            format!("{what} ({}{failed})", self.describe()),
        )
        .with_hint(hint)
    }

    /// The candidate loop: each node in turn (skipping open breakers), a checkout that gives
    /// up as soon as the monitor sees the node unreachable, then `run`; a node failure moves
    /// on to the next node. When a round ends with nothing served while some node failed or
    /// is unreachable (a failure in progress), every node is probed and the round runs again
    /// until `deadline`; with every node reachable and none qualifying (or only open
    /// breakers), it fails at once.
    async fn on_candidates<T, F, Fut>(
        &self,
        target: Target,
        deadline: Instant,
        run: &F,
    ) -> Result<T>
    where
        F: Fn(Pooled<D>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let monitor = &self.inner.monitor;
        loop {
            let mut errors = Vec::new();
            let mut node_failed = false;
            for i in self.candidates(target) {
                let Ok(permit) = self.inner.breakers[i].try_acquire() else {
                    errors.push(format!("{}: circuit breaker open", self.inner.nodes[i]));
                    continue;
                };
                // Whether the statement was sent: a failed checkout sent nothing. The
                // checkout and, for reads, the statement race the monitor: a node seen
                // unreachable gives up at once (reads then try the next node).
                let lost = || {
                    Error::new(
                        ErrorKind::ConnectionLost,
                        "the node became unreachable during the statement",
                    )
                    .with_node(self.inner.nodes[i].to_string())
                };
                let gone = || monitor.until(|s| !s[i].reachable);
                let (r, sent) = match self.get_racing(i, gone).await {
                    Err(e) => (Err(e), false),
                    Ok(conn) if target.is_read() => tokio::select! {
                        r = run(conn) => (r, true),
                        () = gone() => (Err(lost()), true),
                    },
                    Ok(conn) => (run(conn).await, true),
                };
                permit.record(&r);
                match r {
                    Ok(v) => return Ok(v),
                    Err(e)
                        if e.is_node_failure()
                            && (!sent || (target.is_read() && e.kind() != ErrorKind::Timeout)) =>
                    {
                        node_failed = true;
                        monitor.recheck(&self.inner.nodes[i]);
                        errors.push(format!("{}: {e}", self.inner.nodes[i]));
                    }
                    Err(e) => return Err(e),
                }
            }
            // Open breakers fail fast (that is their point); a node failing or unreachable
            // now is worth another look.
            let settled = !node_failed && monitor.snapshot().statuses().iter().all(|s| s.reachable);
            let left = deadline.saturating_duration_since(Instant::now());
            if settled || left.is_zero() {
                return Err(self.no_node(target, &errors));
            }
            // A failure in progress: look again once every node has been probed anew.
            monitor.recheck_all();
            if monitor.wait_round(left).await.is_err() {
                return Err(self.no_node(target, &errors));
            }
        }
    }

    /// A read pipelined on a busy connection of the first candidate for `target`, when
    /// that node's pool pipelines and has every connection busy (adaptive pipelining);
    /// `None` to take the usual path (which also covers every failure of the node).
    pub(crate) async fn pipelined_read<'p>(
        &self,
        target: Target,
        sql: &str,
        params: &[&'p <D::Connection as crate::Queries>::Param<'p>],
    ) -> Option<Result<Vec<<D::Connection as crate::Queries>::Row>>>
    where
        D::Connection: crate::Queries,
    {
        if !target.is_read() || matches!(target, Target::After(..)) {
            return None;
        }
        let i = *self.candidates(target).first()?;
        let pool = &self.inner.pools[i];
        if !pool.pipelines() || !pool.saturated() {
            return None;
        }
        let permit = self.inner.breakers[i].try_acquire().ok()?;
        // Races the monitor as any read does: a node seen unreachable sends the read down
        // the usual path (to another node), where reads are retried.
        let monitor = &self.inner.monitor;
        let r = tokio::select! {
            r = pool.try_pipelined(sql, params) => r?,
            () = monitor.until(|s| !s[i].reachable) => return None,
        };
        permit.record(&r);
        Some(r)
    }

    /// A checkout from node `i`'s pool: an idle connection at once (one poll: no watch, no
    /// timer); a checkout that has to wait races `gone` (the node seen unreachable).
    async fn get_racing<G, Fut>(&self, i: usize, gone: G) -> Result<Pooled<D>>
    where
        G: FnOnce() -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut get = std::pin::pin!(self.inner.pools[i].get());
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(get.as_mut().poll(cx))).await;
        match first {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => tokio::select! {
                r = get.as_mut() => r,
                () = gone() => Err(Error::new(
                    ErrorKind::Connect,
                    "the node became unreachable while waiting for a connection",
                )
                .with_node(self.inner.nodes[i].to_string())),
            },
        }
    }

    /// A connection that sees everything before `token`: a standby that has replayed it
    /// (waiting up to `wait` for one to catch up), else the primary. Never one behind it.
    async fn after(&self, token: ConsistencyToken, wait: Duration) -> Result<Pooled<D>> {
        let deadline = later(wait);
        let snap = self.inner.monitor.snapshot();
        for i in self.candidates(Target::Read) {
            if snap.statuses()[i].role != Role::Standby {
                continue;
            }
            let Ok(mut conn) = self.inner.pools[i].get().await else {
                continue;
            };
            loop {
                match replayed(&mut *conn).await {
                    Some(lsn) if lsn >= token.0 => return Ok(conn),
                    Some(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    _ => break,
                }
            }
        }
        let deadline = later(self.inner.options.failover_timeout);
        self.primary_until(Target::Primary, deadline).await
    }
}

/// The position a standby has replayed.
async fn replayed<C: Connection>(conn: &mut C) -> Option<u64> {
    let rows =
        pgprovider_core::observe::internal(conn.simple_query("SELECT pg_last_wal_replay_lsn()"))
            .await
            .ok()?;
    rows.first()?.get(0).and_then(parse_lsn)
}

/// The primary's current WAL position, on `conn`.
pub(super) async fn current_lsn<C: Connection>(conn: &mut C) -> Result<ConsistencyToken> {
    let rows = pgprovider_core::observe::internal(conn.simple_query("SELECT pg_current_wal_lsn()"))
        .await?;
    rows.first()
        .and_then(|r| r.get(0))
        .and_then(parse_lsn)
        .map(ConsistencyToken)
        .ok_or_else(|| Error::new(ErrorKind::Other, "the server returned no WAL position"))
}

/// A refusal as read-only by the primary itself, as an error that no layer moves elsewhere.
pub(super) fn primary_refused(err: Error) -> Error {
    let node = err.node().map(str::to_owned);
    let e = Error::new(
        ErrorKind::Other,
        format!("{err}: the primary itself refused it as read-only"),
    )
    .with_hint(
        "the primary is read-only by default (default_transaction_read_only) or the transaction was set read-only; no other node would take the write",
    );
    match node {
        Some(n) => e.with_node(n),
        None => e,
    }
}
