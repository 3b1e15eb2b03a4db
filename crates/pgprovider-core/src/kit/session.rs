//! [`Session`]: the bookkeeping every driver keeps for one connection, written once.

use super::pooler::{refusal, session_effect, settings_sql};
use super::sql::{RESET_RECIPE, SessionState};
use super::{Bounded, query_timeout_error, run_bounded};
use crate::observe::{Hooks, Operation, OperationKind};
use crate::{CancelToken, ConnectParams, Error, ErrorKind, PoolerMode, Result};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a driver's own errors are judged and converted: implemented by a type in each driver
/// crate (a unit struct, or one holding what the library does not put in its errors), so
/// [`Session::run`] stays generic.
pub trait DriverErrors {
    /// The driver library's error type.
    type Error;
    /// Whether `e` is the server's reply to a cancel request (SQLSTATE `57014`).
    fn is_cancel_reply(&self, e: &Self::Error) -> bool;
    /// Whether `e` leaves the connection unusable (I/O, protocol or TLS failure).
    fn breaks_connection(&self, e: &Self::Error) -> bool;
    /// The error as pgprovider's (the node is added by [`Session::run`]).
    fn convert(&self, e: Self::Error) -> Error;
}

/// What the kit keeps of one connection's server session: the node, the cancel token, the
/// hooks, the query timeout, the in-flight / broken / read-only flags, what the SQL that ran
/// left on the session, and the pooler mode with its settings.
///
/// A driver embeds one, sends every statement through [`before`](Self::before) (refusals),
/// [`run`](Self::run) (timeout, cancel, flags, error mapping) and [`track`](Self::track)
/// (session state), and answers the pool's [`Connection`](crate::Connection) questions from
/// it. Only what is specific to its library stays in the driver.
#[derive(Debug)]
pub struct Session {
    node: Arc<str>,
    cancel: CancelToken,
    hooks: Hooks,
    pooler: PoolerMode,
    /// `SET LOCAL …` for every transaction (transaction mode with settings); empty otherwise.
    local: Arc<str>,
    /// `BEGIN; SET LOCAL …`, to wrap a statement outside a transaction.
    wrap: Arc<str>,
    /// What resets the session (see [`reset_sql`](Self::reset_sql)).
    reset: Arc<str>,
    state: SessionState,
    in_flight: bool,
    cancel_at: Option<Instant>,
    broken: bool,
    read_only: bool,
    timeout: Option<Duration>,
    default_timeout: Option<Duration>,
    /// The statement in flight can change neither the session nor the transaction.
    harmless: bool,
    /// Others' requests may be queued ahead of the next statement: no cancel until a reply.
    ahead: bool,
}

impl Session {
    /// The bookkeeping of a new connection opened with `params`, cancelled through `cancel`.
    pub fn new(params: &ConnectParams, cancel: CancelToken) -> Self {
        let local = if params.pooler == PoolerMode::Transaction {
            settings_sql(&params.settings, true)
        } else {
            String::new()
        };
        let wrap = if local.is_empty() {
            "BEGIN".to_owned()
        } else {
            format!("BEGIN; {local}")
        };
        let reset = match params.pooler {
            PoolerMode::Transaction => "ROLLBACK".to_owned(),
            // `RESET ALL` undoes the settings applied after connecting: again.
            PoolerMode::Session if !params.settings.is_empty() => {
                format!("{RESET_RECIPE}; {}", settings_sql(&params.settings, false))
            }
            _ => RESET_RECIPE.to_owned(),
        };
        Session {
            node: params.node_name().into(),
            reset: reset.into(),
            cancel,
            hooks: params.hooks.clone(),
            pooler: params.pooler,
            local: local.into(),
            wrap: wrap.into(),
            state: SessionState::default(),
            in_flight: false,
            cancel_at: None,
            broken: false,
            read_only: false,
            timeout: params.query_timeout,
            default_timeout: params.query_timeout,
            harmless: false,
            ahead: false,
        }
    }

    /// `host:port` of the node.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The node, shared (a clone costs no allocation: for what outlives a borrow of the
    /// session, such as an operation observed while the statement borrows the connection).
    pub fn node_shared(&self) -> Arc<str> {
        self.node.clone()
    }

    /// The hooks statements run through.
    pub fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    /// The pooler mode.
    pub fn pooler(&self) -> PoolerMode {
        self.pooler
    }

    /// The token that cancels what the connection runs.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// Checks a statement about to be sent and notes it (dropped half-way, whatever it does
    /// counts as done). In [`PoolerMode::Transaction`], a statement that would leave state
    /// on the server session is refused before it is sent.
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`] naming what the statement would leave behind and what to
    /// do instead.
    pub fn before(&mut self, sql: &str) -> Result<()> {
        self.refuse(sql)?;
        self.state.before(sql);
        Ok(())
    }

    /// The refusal part of [`before`](Self::before), for drivers that track the session
    /// from cached statement traits themselves.
    ///
    /// # Errors
    /// As [`before`](Self::before).
    pub fn refuse(&self, sql: &str) -> Result<()> {
        if self.pooler == PoolerMode::Transaction
            && let Some(what) = session_effect(sql)
        {
            return Err(refusal(what, &self.node));
        }
        Ok(())
    }

    /// Notes a statement that ran (`ok`) or failed.
    pub fn track(&mut self, sql: &str, ok: bool) {
        self.state.track(sql, ok);
    }

    /// Notes that code outside the kit used the connection (the library's own API): its
    /// session is reset on return.
    pub fn untracked(&mut self) {
        self.state.dirty = true;
    }

    /// Notes that the statement about to run can change neither session nor transaction
    /// (see [`release_in_place`](crate::Connection::release_in_place)).
    pub fn set_harmless(&mut self, harmless: bool) {
        self.harmless = harmless;
    }

    /// Whether a statement outside a transaction must be wrapped in one: in transaction
    /// mode, when the driver sends it in more than one exchange (`one_exchange` false: a
    /// prepare, then an execute, which the pooler may hand to different server sessions) or
    /// when there are settings to apply with `SET LOCAL`.
    pub fn needs_wrap(&self, one_exchange: bool) -> bool {
        self.pooler == PoolerMode::Transaction
            && !self.state.in_tx
            && (!one_exchange || !self.local.is_empty())
    }

    /// Behind a transaction pooler, whether `sql` is sent on its own in one exchange, never
    /// wrapped: transaction control, and what PostgreSQL refuses in a transaction block
    /// ([`outside_transaction_only`](super::pooler::outside_transaction_only)). Always
    /// `false` in other modes (and then costs nothing).
    pub fn alone(&self, sql: &str) -> bool {
        self.pooler == PoolerMode::Transaction
            && (super::sql::transaction_effect(sql).is_some()
                || super::pooler::outside_transaction_only(sql))
    }

    /// `BEGIN` and the `SET LOCAL`s of the settings: what opens a wrapping transaction.
    pub fn wrap_begin(&self) -> &str {
        &self.wrap
    }

    /// The `SET LOCAL`s to run in every transaction (transaction mode); `None` when there
    /// are none.
    pub fn local_settings(&self) -> Option<&str> {
        (!self.local.is_empty()).then_some(&*self.local)
    }

    /// `sql` (a simple query that opens a transaction, perhaps followed by a caller's own
    /// `SET LOCAL`s) with the settings right after its `BEGIN`, so the caller's win; `None`
    /// when there is nothing to add (then [`opened_transaction`](Self::opened_transaction)
    /// tells whether to apply them after it ran).
    pub fn begin_with_settings(&self, sql: &str) -> Option<String> {
        if self.state.in_tx {
            return None;
        }
        super::pooler::after_begin(sql, self.local_settings()?)
    }

    /// Whether a statement that just ran opened a transaction that needs the settings
    /// ([`local_settings`](Self::local_settings)) applied now.
    pub fn opened_transaction(&self, was_in_tx: bool) -> bool {
        !was_in_tx && self.state.in_tx && !self.local.is_empty()
    }

    /// Awaits `fut` (one exchange with the server) bounded by the query timeout: on expiry a
    /// cancel request, then the reply awaited, so the connection stays usable; tracked for
    /// cancel safety (dropped half-way, the connection stays in flight). Errors come back
    /// with the node; one that breaks the connection marks it broken, a read-only refusal
    /// is remembered for the pool.
    ///
    /// # Errors
    /// The statement's error, or [`ErrorKind::Timeout`].
    pub async fn run<E: DriverErrors, T>(
        &mut self,
        errors: &E,
        fut: impl Future<Output = std::result::Result<T, E::Error>>,
    ) -> Result<T> {
        self.in_flight = true;
        self.cancel_at = self.timeout.map(|t| Instant::now() + t);
        let is_cancel = |e: &E::Error| errors.is_cancel_reply(e);
        let bounded = match (self.ahead, self.timeout) {
            // Others' requests may be ahead: a cancel could stop one of them. Given up on
            // instead, and the connection closed.
            (true, Some(t)) => match tokio::time::timeout(t, fut).await {
                Ok(r) => Bounded::Finished(r),
                Err(_) => Bounded::TimedOut { clean: false },
            },
            _ => run_bounded(self.timeout, &self.cancel, fut, is_cancel).await,
        };
        let r = match bounded {
            Bounded::Finished(r) => r,
            Bounded::TimedOut { clean } => {
                // Not clean: the cancel may still hit the next statement.
                self.in_flight = !clean;
                self.broken |= !clean;
                let t = self.timeout.unwrap_or_default();
                return Err(query_timeout_error(t, clean, &self.node));
            }
        };
        self.in_flight = false;
        self.cancel_at = None;
        self.harmless = false;
        r.inspect(|_| {
            // A reply: whatever was queued ahead has been answered.
            self.ahead = false;
        })
        .map_err(|e| {
            self.broken |= errors.breaks_connection(&e);
            let e = errors.convert(e).with_node(&*self.node);
            // The server's own error is a reply too; one raised before sending is not.
            if e.sql_state().is_some() {
                self.ahead = false;
            }
            self.read_only |= e.is_read_only();
            e
        })
    }

    /// What runs statements through the hooks, held apart from the session so that the
    /// statement's future may borrow the connection: `session.observer().run(…, fut)`.
    pub fn observer(&self) -> Observer {
        Observer((!self.hooks.is_empty()).then(|| (self.hooks.clone(), self.node.clone())))
    }

    /// Before closing a connection whose statement is still in flight: cancels it on the
    /// server (bounded to 1 s), so that it does not run on, orphaned, to its end.
    pub async fn cancel_before_close(&self) {
        // Not while others' requests may be queued ahead: the cancel could stop one of them.
        if self.in_flight && !self.ahead {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.cancel.cancel()).await;
        }
    }

    /// Notes that others' requests may be queued ahead of the next statement (see
    /// [`Connection::queued_ahead`](crate::Connection::queued_ahead)).
    pub fn set_queued_ahead(&mut self) {
        self.ahead = true;
    }

    /// Marks the connection unusable (or usable again: a protocol step that completed).
    pub fn set_broken(&mut self, broken: bool) {
        self.broken = broken;
    }

    /// Marks a statement in flight (a row stream or `COPY` still open) or done.
    pub fn set_in_flight(&mut self, in_flight: bool) {
        self.in_flight = in_flight;
    }

    /// Notes that a transaction block is open or not.
    pub fn set_in_transaction(&mut self, open: bool) {
        self.state.in_tx = open;
    }

    /// Notes a statement that may change the session (`changes`), as cached traits say.
    pub fn dirty_if(&mut self, changes: bool) {
        self.state.dirty |= changes;
    }

    /// [`Connection::is_broken`](crate::Connection::is_broken).
    pub fn is_broken(&self) -> bool {
        self.in_flight || self.broken
    }

    /// Whether a statement is in flight (its future was dropped half-way).
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// [`Connection::interrupted`](crate::Connection::interrupted): abandoned mid-flight,
    /// before its query timeout's cancel could have been sent.
    pub fn interrupted(&self) -> bool {
        self.in_flight && !self.broken && self.cancel_at.is_none_or(|t| Instant::now() < t)
    }

    /// [`Connection::release_in_place`](crate::Connection::release_in_place) for drivers
    /// that discard an abandoned statement's replies themselves.
    pub fn release_in_place(&mut self) -> bool {
        if self.harmless && !self.state.needs_reset() {
            self.in_flight = false;
            self.harmless = false;
            self.cancel_at = None;
            return true;
        }
        false
    }

    /// Notes that the abandoned statement's replies were read and any transaction ended.
    pub fn recovered(&mut self) {
        self.in_flight = false;
        self.cancel_at = None;
        self.state.in_tx = false;
    }

    /// [`Connection::needs_reset`](crate::Connection::needs_reset). In transaction mode only
    /// an open transaction needs it: session state is refused, and what the library's own
    /// API left is on a server session the pooler has handed on.
    pub fn needs_reset(&self) -> bool {
        match self.pooler {
            PoolerMode::Transaction => self.state.in_tx,
            _ => self.state.needs_reset(),
        }
    }

    /// What resets the session: [`RESET_RECIPE`] (in session mode followed by the settings,
    /// which its `RESET ALL` undoes), or `ROLLBACK` in transaction mode.
    pub fn reset_sql(&self) -> Arc<str> {
        self.reset.clone()
    }

    /// Takes the query timeout off for a reset (the pool bounds it); give it back with
    /// [`reset_done`](Self::reset_done).
    pub fn take_timeout(&mut self) -> Option<Duration> {
        self.timeout.take()
    }

    /// Notes a reset that ended (`ok`): the session is clean again.
    pub fn reset_done(&mut self, timeout: Option<Duration>, ok: bool) {
        self.timeout = timeout;
        if ok {
            self.state = SessionState::default();
        }
    }

    /// [`Connection::recycled`](crate::Connection::recycled).
    pub fn recycled(&mut self) {
        self.timeout = self.default_timeout;
        self.read_only = false;
    }

    /// [`Connection::refused_read_only`](crate::Connection::refused_read_only).
    pub fn refused_read_only(&self) -> bool {
        self.read_only
    }

    /// The query timeout of the statements that follow.
    pub fn query_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Sets the query timeout.
    pub fn set_query_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// Whether a transaction block is open (possibly failed).
    pub fn in_transaction(&self) -> bool {
        self.state.in_tx
    }

    /// Whether something may have changed the session.
    pub fn dirty(&self) -> bool {
        self.state.dirty
    }

    /// Sets whether something may have changed the session (simple queries settle it once
    /// they ran).
    pub fn set_dirty(&mut self, dirty: bool) {
        self.state.dirty = dirty;
    }
}

/// Runs statements through a connection's hooks ([`Session::observer`]).
#[derive(Debug)]
pub struct Observer(Option<(Hooks, Arc<str>)>);

impl Observer {
    /// Runs `fut` (a statement of kind `default` unless its SQL says otherwise) through the
    /// hooks, with `rows` counting what it returned. Without hooks it is awaited as is.
    ///
    /// # Errors
    /// A hook's refusal, or the statement's error.
    pub async fn run<T>(
        self,
        default: OperationKind,
        sql: &str,
        rows: impl FnOnce(&T) -> Option<u64>,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let Some((hooks, node)) = self.0 else {
            return fut.await;
        };
        let op = Operation::new(OperationKind::of_sql(sql, default), &node).with_sql(sql);
        hooks.observe(&op, rows, fut).await
    }
}

/// Turns the server's refusal of a startup parameter (what PgBouncer and other poolers
/// answer to `options`) into an error that names the setting to use, given the `pooler`
/// mode the connection was made in. Other errors pass.
pub fn pooler_startup_refusal(e: Error, pooler: PoolerMode) -> Error {
    let m = e.message();
    if !m.contains("unsupported startup parameter") {
        return e;
    }
    let node = e.node().map(str::to_owned);
    let err = match pooler {
        PoolerMode::None => Error::new(
            ErrorKind::Connect,
            format!(
                "a connection pooler refused the startup parameters ({m}): set pooler=transaction or pooler=session in the URL"
            ),
        )
        .with_hint(
            "the server is a pooler (PgBouncer, pgcat, …) that refuses startup options such as statement_timeout or options: with pooler=transaction (or pooler=session) they are applied with SET LOCAL (or SET) instead",
        ),
        _ => Error::new(
            ErrorKind::Connect,
            format!("the connection pooler refused a startup parameter even with pooler={pooler} ({m})"),
        )
        .with_hint(
            "add the parameter to the pooler's ignore_startup_parameters (PgBouncer), or report which one the driver sent",
        ),
    };
    match node {
        Some(n) => err.with_node(n),
        None => err,
    }
}

/// What applies `params`'s settings for the session, to run once after connecting in
/// [`PoolerMode::Session`]; `None` otherwise.
pub fn session_settings(params: &ConnectParams) -> Option<String> {
    (params.pooler == PoolerMode::Session && !params.settings.is_empty())
        .then(|| settings_sql(&params.settings, false))
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
