//! One tokio-postgres connection, as the pool sees it.

use crate::cache::StatementCache;
use crate::error::map_error;
use pgprovider_core::kit::sql::{
    RESET_RECIPE, may_change_session, opens_transaction, transaction_effect,
};
use pgprovider_core::{CancelToken, ConnectParams, Connection, PoolerMode, Result, SimpleRow};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{Client, SimpleQueryMessage};

/// How cancel requests reach the server: the same way the connection did.
#[derive(Clone)]
pub(crate) enum Cancel {
    Plain,
    Tls(tokio_postgres_rustls::MakeRustlsConnect),
}

/// A tokio-postgres connection, with a prepared-statement cache, typed queries (the
/// [`Queries`](pgprovider_core::Queries) trait and the methods in `query.rs`), pipelined
/// batches and COPY.
///
/// Cancel safety: when a future running a query on this connection is dropped before the
/// reply arrives, the connection is marked [interrupted](Connection::interrupted). A
/// harmless typed statement (no setting, no transaction) is simply forgotten
/// ([`release_in_place`](Connection::release_in_place)): tokio-postgres discards its replies
/// and the next statement queues behind it. Otherwise the pool
/// [recovers](Connection::recover) it first: tokio-postgres reads and discards the replies of abandoned requests itself, so
/// one `ROLLBACK` queued behind them returns once they are all in and ends any transaction
/// the abandoned statement opened (the pool cancels it on the server when it runs long,
/// and closes the connection when recovery fails or takes too long). A connection whose
/// protocol is out of step (a refused `COPY`) is marked broken instead and closed.
///
/// Timeouts: a statement running longer than the query timeout is cancelled on the server
/// (a cancel request); when its reply then arrives the connection is clean and stays in use,
/// otherwise it is marked broken.
///
/// Session state: a statement that may change the session (anything but a plain `SELECT`,
/// `INSERT`, `UPDATE`, `DELETE`, `WITH`, `VALUES`, `TABLE`, `SHOW`, `EXPLAIN` or `MERGE`, and
/// any call of `set_config` or an advisory-lock function) marks the connection for
/// [`RESET_RECIPE`] when it is returned to the pool; so does [`client`](Self::client).
pub struct PgConnection {
    pub(crate) client: Client,
    pub(crate) node: String,
    pub(crate) in_flight: bool,
    /// The protocol is out of step (a refused `COPY`): only closing helps.
    pub(crate) desynced: bool,
    /// When the running statement's query timeout sends a cancel request: abandoned after
    /// that, a cancel may be on its way to the next statement, so it is not recovered.
    pub(crate) cancel_at: Option<std::time::Instant>,
    /// The statement in flight can change neither the session nor the transaction state:
    /// abandoned, it leaves nothing but its replies (see `release_in_place`).
    pub(crate) harmless: bool,
    pub(crate) dirty: bool,
    pub(crate) in_tx: bool,
    /// A statement met SQLSTATE 25006 since the last recycle.
    pub(crate) read_only: bool,
    pub(crate) cache: StatementCache,
    pub(crate) timeout: Option<Duration>,
    default_timeout: Option<Duration>,
    pub(crate) hooks: pgprovider_core::observe::Hooks,
    /// When the open transaction began (tracked only for hooks).
    pub(crate) tx_started: Option<std::time::Instant>,
    /// What sits between the client and the server.
    pub(crate) pooler: PoolerMode,
    /// `BEGIN` with the settings' `SET LOCAL`s (transaction mode), or `BEGIN`.
    pub(crate) begin: Arc<str>,
    /// Built once: it cancels whatever the connection runs.
    cancel: CancelToken,
    driver_task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConnection")
            .field("node", &self.node)
            .field("closed", &self.client.is_closed())
            .field("in_transaction", &self.in_tx)
            .field("cached_statements", &self.cache.len())
            .finish()
    }
}

impl PgConnection {
    pub(crate) fn new<S, T>(
        client: Client,
        connection: tokio_postgres::Connection<S, T>,
        cancel: Cancel,
        params: &ConnectParams,
        notifications: Option<tokio::sync::mpsc::UnboundedSender<pgprovider_core::Notification>>,
    ) -> Self
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let node = params.node_name();
        let cancel = crate::cancel::token(
            client.cancel_token(),
            params.host.clone(),
            params.port,
            cancel,
            node.clone(),
        );
        let n = node.clone();
        let driver_task = tokio::spawn(async move {
            let Some(tx) = notifications else {
                if let Err(e) = connection.await {
                    tracing::debug!(node = %n, error = %e, "connection ended with an error");
                }
                return;
            };
            // Driving the connection message by message hands over its notifications.
            let mut connection = connection;
            while let Some(m) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match m {
                    Ok(tokio_postgres::AsyncMessage::Notification(note)) => {
                        let _ = tx.send(pgprovider_core::Notification::new(
                            note.channel(),
                            note.payload(),
                            note.process_id(),
                        ));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(node = %n, error = %e, "listener connection ended with an error");
                        break;
                    }
                }
            }
        });
        PgConnection {
            client,
            node,
            in_flight: false,
            desynced: false,
            cancel_at: None,
            harmless: false,
            dirty: false,
            in_tx: false,
            read_only: false,
            // Behind a transaction pooler only unnamed statements: a named one would stay on
            // a server session that the pooler hands to others.
            cache: StatementCache::new(
                match params.pooler {
                    PoolerMode::Transaction => 0,
                    _ => params.statement_cache_capacity,
                },
                params.statements.clone(),
            ),
            timeout: params.query_timeout,
            default_timeout: params.query_timeout,
            hooks: params.hooks.clone(),
            tx_started: None,
            pooler: params.pooler,
            begin: match params.pooler {
                PoolerMode::Transaction if !params.settings.is_empty() => format!(
                    "BEGIN; {}",
                    pgprovider_core::kit::pooler::settings_sql(&params.settings, true)
                )
                .into(),
                _ => "BEGIN".into(),
            },
            cancel,
            driver_task,
        }
    }

    /// The tokio-postgres client, for what this wrapper does not offer.
    ///
    /// What runs through it is not tracked, so calling this marks the session for reset on
    /// return (one extra round trip). Nor is it tracked for cancel safety: if you drop such a
    /// future mid-query, discard the connection (`pgprovider::Pooled::discard`) rather than
    /// returning it.
    pub fn client(&mut self) -> &Client {
        self.dirty = true;
        &self.client
    }

    /// Gives up the pooled wrapper and keeps the bare client (for multiplexed mode, where
    /// many tasks share it).
    pub(crate) fn into_client(self) -> Client {
        self.client
    }

    /// `host:port` of the node.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Runs `f` on the client, tracking it for cancel safety and bounding it by the query
    /// timeout: on expiry the server is sent a cancel request and the reply awaited, so the
    /// connection stays usable; if no reply comes, it is left marked broken.
    pub(crate) async fn run<T>(
        &mut self,
        f: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        self.in_flight = true;
        self.cancel_at = self.timeout.map(|t| std::time::Instant::now() + t);
        let fut = f(&self.client);
        let r = match pgprovider_core::kit::run_bounded(self.timeout, &self.cancel, fut, |e| {
            e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
        })
        .await
        {
            pgprovider_core::kit::Bounded::Finished(r) => r,
            pgprovider_core::kit::Bounded::TimedOut { clean } => {
                // Not clean: the cancel may still hit the next statement, discard then.
                self.in_flight = !clean;
                self.desynced |= !clean;
                let t = self.timeout.unwrap_or_default();
                return Err(pgprovider_core::kit::query_timeout_error(
                    t, clean, &self.node,
                ));
            }
        };
        self.in_flight = false;
        self.cancel_at = None;
        self.harmless = false;
        r.map_err(|e| {
            let e = map_error(e).with_node(self.node.clone());
            self.read_only |= e.is_read_only();
            e
        })
    }

    /// Behind a transaction pooler, refuses a statement that would leave state on the
    /// server session (see [`pgprovider_core::kit::Session::before`]).
    pub(crate) fn refuse_session_state(&self, sql: &str) -> Result<()> {
        if self.pooler != PoolerMode::Transaction {
            return Ok(());
        }
        match pgprovider_core::kit::pooler::session_effect(sql) {
            None => Ok(()),
            Some(what) => Err(pgprovider_core::kit::pooler::refusal(what, &self.node)),
        }
    }

    /// The `SET LOCAL`s that every transaction needs behind a transaction pooler; `None`
    /// when there are none.
    pub(crate) fn local_settings(&self) -> Option<&str> {
        self.begin.strip_prefix("BEGIN; ")
    }

    /// After a statement that may have opened a transaction (`was_in_tx` before it): behind
    /// a transaction pooler, applies the settings to it.
    pub(crate) async fn serve_transaction(&mut self, was_in_tx: bool) -> Result<()> {
        if was_in_tx || !self.in_tx {
            return Ok(());
        }
        let Some(local) = self.local_settings().map(str::to_owned) else {
            return Ok(());
        };
        self.run(async |c| c.batch_execute(&local).await).await
    }

    /// Notes the effect of a transaction-control statement that ran successfully.
    pub(crate) fn track_transaction(&mut self, sql: &str) {
        if let Some(open) = transaction_effect(sql) {
            self.in_tx = open;
        }
    }
}

impl Connection for PgConnection {
    fn is_broken(&self) -> bool {
        self.in_flight || self.desynced || self.client.is_closed()
    }

    fn interrupted(&self) -> bool {
        self.in_flight
            && !self.desynced
            && !self.client.is_closed()
            && self.cancel_at.is_none_or(|t| std::time::Instant::now() < t)
    }

    fn release_in_place(&mut self) -> bool {
        // tokio-postgres reads and drops the replies of an abandoned request and pairs the
        // next request's replies with it: a harmless statement needs nothing more.
        if self.harmless && !self.in_tx && !self.dirty {
            self.in_flight = false;
            self.harmless = false;
            self.cancel_at = None;
            return true;
        }
        false
    }

    async fn recover(&mut self) -> Result<()> {
        // Queued behind the abandoned requests, whose replies the connection task reads
        // and drops; ROLLBACK (a warning only when no transaction is open) also ends one
        // the abandoned statement may have begun. Not through `run`: no query timeout
        // (the pool bounds this) and no hooks (the application did not ask for it).
        match self.client.batch_execute("ROLLBACK").await {
            Ok(()) => {
                self.in_flight = false;
                self.in_tx = false;
                self.tx_started = None;
                Ok(())
            }
            Err(e) => Err(map_error(e).with_node(self.node.clone())),
        }
    }

    async fn ping(&mut self) -> Result<()> {
        self.run(async |c| c.batch_execute("").await).await
    }

    fn needs_reset(&self) -> bool {
        match self.pooler {
            // Session state is refused; what the client API left is on a server session
            // the pooler has handed on.
            PoolerMode::Transaction => self.in_tx,
            _ => self.dirty || self.in_tx,
        }
    }

    async fn reset(&mut self) -> Result<()> {
        let timeout = self.timeout.take();
        let recipe = match self.pooler {
            PoolerMode::Transaction => "ROLLBACK",
            _ => RESET_RECIPE,
        };
        let r = self.run(async |c| c.batch_execute(recipe).await).await;
        self.timeout = timeout;
        r?;
        self.dirty = false;
        self.in_tx = false;
        Ok(())
    }

    fn recycled(&mut self) {
        self.timeout = self.default_timeout;
        self.read_only = false;
    }

    fn refused_read_only(&self) -> bool {
        self.read_only
    }

    async fn simple_query(&mut self, sql: &str) -> Result<Vec<SimpleRow>> {
        if self.hooks.is_empty() {
            return self.simple_query_inner(sql).await;
        }
        let (hooks, node) = (self.hooks.clone(), self.node.clone());
        let kind = pgprovider_core::observe::OperationKind::of_sql(
            sql,
            pgprovider_core::observe::OperationKind::Execute,
        );
        let op = pgprovider_core::observe::Operation::new(kind, &node).with_sql(sql);
        let rows = |r: &Vec<SimpleRow>| Some(r.len() as u64);
        hooks.observe(&op, rows, self.simple_query_inner(sql)).await
    }

    fn cancel_token(&self) -> CancelToken {
        self.cancel_token_inner()
    }

    async fn close(self) {
        self.close_inner().await
    }
}

impl PgConnection {
    async fn simple_query_inner(&mut self, sql: &str) -> Result<Vec<SimpleRow>> {
        // Dirty while it runs (a dropped future leaves the session unknown); afterwards as
        // its statements say. A failure part-way may leave a transaction open (aborted):
        // the transaction state says so, and needs_reset covers both.
        self.refuse_session_state(sql)?;
        let after = self.dirty || may_change_session(sql);
        let was_in_tx = self.in_tx;
        self.dirty = true;
        let result = self.run(async |c| c.simple_query(sql).await).await;
        self.dirty = after;
        if result.is_ok() {
            self.track_transaction(sql);
        } else if opens_transaction(sql) {
            self.in_tx = true;
        }
        let msgs = result?;
        self.serve_transaction(was_in_tx).await?;
        let mut rows = Vec::new();
        let mut columns: Option<Arc<[String]>> = None;
        for m in msgs {
            match m {
                SimpleQueryMessage::RowDescription(cols) => {
                    columns = Some(cols.iter().map(|c| c.name().to_owned()).collect());
                }
                SimpleQueryMessage::Row(row) => {
                    let cols = columns
                        .get_or_insert_with(|| {
                            row.columns().iter().map(|c| c.name().to_owned()).collect()
                        })
                        .clone();
                    let values = (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect();
                    rows.push(SimpleRow::new(cols, values));
                }
                SimpleQueryMessage::CommandComplete(_) => columns = None,
                _ => {}
            }
        }
        Ok(rows)
    }

    fn cancel_token_inner(&self) -> CancelToken {
        self.cancel.clone()
    }

    async fn close_inner(self) {
        // A statement still running would go on until it next writes to the socket
        // (pg_sleep, a long scan): cancel it first.
        if self.in_flight && !self.client.is_closed() {
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                self.cancel_token_inner().cancel(),
            )
            .await;
        }
        // Dropping the client sends Terminate and lets the connection task finish.
        let PgConnection {
            client,
            driver_task,
            ..
        } = self;
        drop(client);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), driver_task).await;
    }
}
