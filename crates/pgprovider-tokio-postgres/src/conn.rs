//! One tokio-postgres connection, as the pool sees it.

use crate::cache::StatementCache;
use crate::error::map_error;
use pgprovider_core::kit::sql::may_change_session;
use pgprovider_core::kit::{DriverErrors, Session};
use pgprovider_core::{CancelToken, ConnectParams, Connection, Error, Result, SimpleRow};
use std::fmt;
use std::sync::Arc;
use tokio_postgres::{Client, SimpleQueryMessage};

/// How cancel requests reach the server: the same way the connection did.
#[derive(Clone)]
pub(crate) enum Cancel {
    Plain,
    Tls(tokio_postgres_rustls::MakeRustlsConnect),
}

/// How tokio-postgres's errors are judged ([`DriverErrors`]): a closed client is noticed
/// by [`Connection::is_broken`] itself.
pub(crate) struct PgErrors;

impl DriverErrors for PgErrors {
    type Error = tokio_postgres::Error;
    fn is_cancel_reply(&self, e: &tokio_postgres::Error) -> bool {
        e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    }
    fn breaks_connection(&self, _: &tokio_postgres::Error) -> bool {
        false
    }
    fn convert(&self, e: tokio_postgres::Error) -> Error {
        map_error(e)
    }
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
/// [`RESET_RECIPE`](pgprovider_core::kit::sql::RESET_RECIPE) when it is returned to the pool; so does [`client`](Self::client). The
/// bookkeeping is the driver kit's ([`Session`]).
pub struct PgConnection {
    /// Shared with the connection's [`PgPipeline`](crate::PgPipeline), if one was asked for.
    pub(crate) client: Arc<Client>,
    /// Made the first time the pool asks ([`Queries::pipeline`](pgprovider_core::Queries::pipeline)).
    pub(crate) pipe: std::sync::OnceLock<crate::PgPipeline>,
    /// The kit's bookkeeping: node, cancel token, hooks, timeout, flags, session state,
    /// pooler mode.
    pub(crate) s: Session,
    pub(crate) cache: StatementCache,
    /// When the open transaction began (tracked only for hooks).
    pub(crate) tx_started: Option<std::time::Instant>,
    /// Behind a transaction pooler: a result had a column of a type tokio-postgres does not
    /// know, so it looked the type up with named statements it keeps for good.
    pub(crate) looked_up_types: bool,
    driver_task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConnection")
            .field("node", &self.s.node())
            .field("closed", &self.client.is_closed())
            .field("in_transaction", &self.s.in_transaction())
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
            params.connect_timeout,
        );
        let n = node;
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
            client: Arc::new(client),
            pipe: std::sync::OnceLock::new(),
            s: Session::new(params, cancel),
            // Behind a transaction pooler only unnamed statements: a named one would stay on
            // a server session that the pooler hands to others.
            cache: StatementCache::new(
                match params.pooler {
                    pgprovider_core::PoolerMode::Transaction => 0,
                    _ => params.statement_cache_capacity,
                },
                params.statements.clone(),
            ),
            tx_started: None,
            looked_up_types: false,
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
        self.s.untracked();
        &self.client
    }

    /// Gives up the pooled wrapper and keeps the bare client (for multiplexed mode, where
    /// many tasks share it).
    pub(crate) fn into_client(self) -> Client {
        // Only the connection's pipeline shares the client, and only a pooled connection
        // has one: the callers here never made one.
        let PgConnection { client, pipe, .. } = self;
        drop(pipe);
        Arc::try_unwrap(client).unwrap_or_else(|_| {
            unreachable!("a connection given up for its client has no pipeline")
        })
    }

    /// `host:port` of the node.
    pub fn node(&self) -> &str {
        self.s.node()
    }

    /// Runs `f` on the client through the kit ([`Session::run`]): bounded by the query
    /// timeout (a cancel request on expiry, then the reply awaited, so the connection stays
    /// usable; broken when no reply comes) and tracked for cancel safety.
    pub(crate) async fn run<T>(
        &mut self,
        f: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        self.s.run(&PgErrors, f(&self.client)).await
    }

    /// Behind a transaction pooler, the text that ends a transaction (`sql` ends one): when
    /// tokio-postgres looked types up (with named statements it keeps for the client's
    /// life, for columns of types it does not know), `sql` followed by `DEALLOCATE ALL` in
    /// the same message, so they go from the server session that has them whatever state
    /// the transaction is in; the connection is then closed on return (its client would use
    /// them again). `None` when `sql` is to be sent as it is.
    pub(crate) fn ending(&mut self, sql: &str) -> Option<String> {
        // Cheapest test first: this runs before every simple query.
        if !self.looked_up_types
            || pgprovider_core::kit::sql::transaction_effect(sql) != Some(false)
        {
            return None;
        }
        self.s.set_broken(true);
        Some(format!("{sql}; DEALLOCATE ALL"))
    }

    /// Notes a result whose columns have types tokio-postgres had to look up (see
    /// [`before_transaction_end`](Self::before_transaction_end)).
    pub(crate) fn note_types(&mut self, rows: &[tokio_postgres::Row]) {
        if self.s.pooler() == pgprovider_core::PoolerMode::Transaction
            && rows.first().is_some_and(|r| {
                r.columns()
                    .iter()
                    .any(|c| tokio_postgres::types::Type::from_oid(c.type_().oid()).is_none())
            })
        {
            self.looked_up_types = true;
        }
    }

    /// After a statement that may have opened a transaction (`was_in_tx` before it): behind
    /// a transaction pooler, applies the settings to it.
    pub(crate) async fn serve_transaction(&mut self, was_in_tx: bool) -> Result<()> {
        if !self.s.opened_transaction(was_in_tx) {
            return Ok(());
        }
        let local = self.s.local_settings().unwrap_or_default().to_owned();
        self.run(async |c| c.batch_execute(&local).await).await
    }
}

impl Connection for PgConnection {
    fn is_broken(&self) -> bool {
        self.s.is_broken() || self.client.is_closed()
    }

    fn interrupted(&self) -> bool {
        self.s.interrupted() && !self.client.is_closed()
    }

    fn release_in_place(&mut self) -> bool {
        // tokio-postgres reads and drops the replies of an abandoned request and pairs the
        // next request's replies with it: a harmless statement needs nothing more.
        self.s.release_in_place()
    }

    async fn recover(&mut self) -> Result<()> {
        // Queued behind the abandoned requests, whose replies the connection task reads
        // and drops; ROLLBACK (a warning only when no transaction is open) also ends one
        // the abandoned statement may have begun. Not through `run`: no query timeout
        // (the pool bounds this) and no hooks (the application did not ask for it).
        let rollback = self
            .ending("ROLLBACK")
            .unwrap_or_else(|| "ROLLBACK".to_owned());
        match self.client.batch_execute(&rollback).await {
            Ok(()) => {
                self.s.recovered();
                self.tx_started = None;
                Ok(())
            }
            Err(e) => Err(map_error(e).with_node(self.s.node())),
        }
    }

    async fn ping(&mut self) -> Result<()> {
        self.run(async |c| c.batch_execute("").await).await
    }

    fn needs_reset(&self) -> bool {
        self.s.needs_reset()
    }

    async fn reset(&mut self) -> Result<()> {
        let timeout = self.s.take_timeout();
        let recipe = self.s.reset_sql();
        let recipe = self.ending(&recipe).unwrap_or_else(|| recipe.to_string());
        let r = self.run(async |c| c.batch_execute(&recipe).await).await;
        self.s.reset_done(timeout, r.is_ok());
        r
    }

    fn recycled(&mut self) {
        self.s.recycled();
    }

    fn queued_ahead(&mut self) {
        self.s.set_queued_ahead();
    }

    fn refused_read_only(&self) -> bool {
        self.s.refused_read_only()
    }

    async fn simple_query(&mut self, sql: &str) -> Result<Vec<SimpleRow>> {
        let observer = self.s.observer();
        let rows = |r: &Vec<SimpleRow>| Some(r.len() as u64);
        let kind = pgprovider_core::observe::OperationKind::Execute;
        observer
            .run(kind, sql, rows, self.simple_query_inner(sql))
            .await
    }

    fn cancel_token(&self) -> CancelToken {
        self.s.cancel_token()
    }

    async fn close(self) {
        // A statement still running would go on until it next writes to the socket
        // (pg_sleep, a long scan): cancel it first.
        if !self.client.is_closed() {
            self.s.cancel_before_close().await;
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

impl PgConnection {
    async fn simple_query_inner(&mut self, sql: &str) -> Result<Vec<SimpleRow>> {
        // Dirty while it runs (a dropped future leaves the session unknown); afterwards as
        // its statements say. A failure part-way may leave a transaction open (aborted):
        // the transaction state says so, and needs_reset covers both.
        self.s.refuse(sql)?;
        let after = self.s.dirty() || may_change_session(sql);
        let was_in_tx = self.s.in_transaction();
        // Behind a transaction pooler: the settings right after BEGIN (before the caller's
        // own), and lookup statements deallocated as a transaction ends.
        let with_settings = self.s.begin_with_settings(sql);
        let text = with_settings.clone().or_else(|| self.ending(sql));
        let text = text.as_deref().unwrap_or(sql);
        self.s.untracked();
        let result = self.run(async |c| c.simple_query(text).await).await;
        self.s.track(sql, result.is_ok());
        self.s.set_dirty(after);
        let msgs = result?;
        if with_settings.is_none() {
            self.serve_transaction(was_in_tx).await?;
        }
        let mut rows = Vec::new();
        let mut columns: Option<Arc<[String]>> = None;
        for m in msgs {
            match m {
                SimpleQueryMessage::RowDescription(cols) => {
                    columns = Some(cols.iter().map(|c| c.name().to_owned()).collect());
                }
                SimpleQueryMessage::Row(row)
                    if with_settings.is_some()
                        && pgprovider_core::kit::pooler::is_settings_row(
                            row.columns().iter().map(|c| c.name()),
                        ) => {}
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
}
