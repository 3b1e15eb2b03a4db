//! LISTEN/NOTIFY that never goes silent.
//!
//! A [`Listener`] owns one dedicated connection to the primary (outside any pool), on which it
//! LISTENs to every channel somebody subscribed to. Subscribers get a [`Subscription`], a
//! `Stream` of [`Event`]s; many subscriptions of one channel share one server subscription
//! (fan-out in the process).
//!
//! - **Reconnect**: when the connection drops (killed backend, server restart, failover), the
//!   listener reconnects with backoff to whichever node is primary now, LISTENs again to every
//!   channel, and sends [`Event::Gap`] to every subscription: notifications sent while it was
//!   away are lost (PostgreSQL keeps none for absent listeners), so a subscriber should catch
//!   up from the data itself. [`ListenerBuilder::on_reconnect`] runs a callback at that moment.
//!   Nothing is delivered twice: each connection has its own delivery queue.
//! - **Heartbeat**: when no notification arrived for the heartbeat interval, the listener pings
//!   the server; no answer within the interval means a half-open connection (the server or
//!   the network gone without a FIN), and it reconnects instead of waiting for TCP's timeout.
//! - **Backpressure**: each channel buffers up to the configured number of events per
//!   subscription; a subscriber that falls behind loses the oldest and receives
//!   [`Event::Lagged`] with the count, or (with [`SlowSubscriber::Disconnect`]) is told so
//!   and its stream ends; either way one slow subscriber never blocks the others or the
//!   connection.
//! - **Channel names** are quoted identifiers (any name is safe, up to 63 bytes); payloads are
//!   checked against the server's limit before anything is sent ([`PgConnection::notify`]).
//!
//! ```no_run
//! # async fn run() -> pgprovider::Result<()> {
//! use futures_util::StreamExt;
//! use pgprovider_tokio_postgres::{Event, Listener};
//! let config = pgprovider::Config::from_url("postgres://app@db1,db2/app")?;
//! let mut nodes = Vec::new();
//! for node in config.nodes() {
//!     nodes.push(config.connect_params(node).await?);
//! }
//! let listener = Listener::connect(nodes).await?;
//! let mut jobs = listener.subscribe("jobs").await?;
//! while let Some(event) = jobs.next().await {
//!     match event {
//!         Event::Notification(n) => println!("job {}", n.payload),
//!         Event::Gap | Event::Lagged(_) => { /* reload pending jobs from their table */ }
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

use crate::{PgConnection, TokioPostgres};
use futures_util::Stream;
use pgprovider_core::{
    ConnectParams, Connection, Driver, Error, ErrorKind, Notification, Result, check_channel,
    check_notification,
};
use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

/// What a [`Subscription`] yields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A notification on the channel.
    Notification(Notification),
    /// The listener lost its connection and is listening again on a new one: notifications
    /// sent in between were lost.
    Gap,
    /// This subscriber fell behind and lost this many of the oldest events.
    Lagged(u64),
}

/// Counters of a [`Listener`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerStats {
    /// Notifications received from the server.
    pub notifications: u64,
    /// Times the listener connected again after losing its connection.
    pub reconnects: u64,
    /// Channels listened to now.
    pub channels: usize,
}

type Callback = Arc<dyn Fn() + Send + Sync>;

/// What happens to a subscriber whose buffer overflows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlowSubscriber {
    /// It loses the oldest events and gets [`Event::Lagged`] with the count (the default).
    #[default]
    DropOldest,
    /// It gets [`Event::Lagged`] and then its stream ends: it must subscribe again.
    Disconnect,
}

/// Builds a [`Listener`].
#[must_use]
pub struct ListenerBuilder {
    nodes: Vec<ConnectParams>,
    heartbeat: Duration,
    buffer: usize,
    slow: SlowSubscriber,
    on_reconnect: Option<Callback>,
}

impl fmt::Debug for ListenerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerBuilder")
            .field("heartbeat", &self.heartbeat)
            .field("buffer", &self.buffer)
            .finish()
    }
}

impl ListenerBuilder {
    /// How long without traffic before the connection is checked, and how long the check
    /// may take (default 5 s).
    pub fn with_heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }

    /// Events buffered per subscription before the oldest are dropped (default 1,024).
    pub fn with_buffer(mut self, events: usize) -> Self {
        self.buffer = events.max(1);
        self
    }

    /// What happens to a subscriber that falls more than the buffer behind.
    pub fn with_slow_subscriber(mut self, policy: SlowSubscriber) -> Self {
        self.slow = policy;
        self
    }

    /// Calls `f` each time the listener is listening again after a reconnect (before the
    /// subscriptions get [`Event::Gap`]), for example to re-read state that notifications
    /// would have announced.
    pub fn on_reconnect(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_reconnect = Some(Arc::new(f));
        self
    }

    /// Connects to the primary and starts listening.
    ///
    /// # Errors
    /// When no node can be reached, or none is a primary.
    pub async fn start(self) -> Result<Listener> {
        let session = connect_primary(&self.nodes).await?;
        let (commands, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            channels: Mutex::new(HashMap::new()),
            commands,
            buffer: self.buffer,
            slow: self.slow,
            notifications: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        });
        tokio::spawn(run(
            Arc::downgrade(&shared),
            self.nodes,
            self.heartbeat,
            self.on_reconnect,
            rx,
            session,
        ));
        Ok(Listener { shared })
    }
}

/// A LISTEN connection shared by any number of subscriptions. Cheap to clone; the connection
/// closes when the listener and every subscription are dropped.
///
/// It follows the primary among the nodes it was given, reconnects with backoff after any
/// loss (sending [`Event::Gap`] to every subscription once it listens again), checks an idle
/// connection with a heartbeat, and bounds each subscriber's buffer ([`SlowSubscriber`]).
#[derive(Clone)]
pub struct Listener {
    shared: Arc<Shared>,
}

struct Shared {
    channels: Mutex<HashMap<String, broadcast::Sender<Event>>>,
    commands: mpsc::UnboundedSender<Command>,
    buffer: usize,
    slow: SlowSubscriber,
    notifications: AtomicU64,
    reconnects: AtomicU64,
}

enum Command {
    Listen(String, oneshot::Sender<Result<()>>),
    Unlisten(String),
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Listener {
    /// A builder, for the heartbeat, buffer and reconnect callback. `nodes` are the nodes
    /// that may be primary (`Config::connect_params` of each, in pgprovider); the listener
    /// connects to the one that is, now and after every reconnect.
    pub fn builder(nodes: Vec<ConnectParams>) -> ListenerBuilder {
        ListenerBuilder {
            nodes,
            heartbeat: Duration::from_secs(5),
            buffer: 1024,
            slow: SlowSubscriber::default(),
            on_reconnect: None,
        }
    }

    /// A listener with the defaults.
    ///
    /// # Errors
    /// As [`ListenerBuilder::start`].
    pub async fn connect(nodes: Vec<ConnectParams>) -> Result<Listener> {
        Self::builder(nodes).start().await
    }

    /// Subscribes to `channel`; the first subscription of a channel LISTENs on the server
    /// before this returns, so nothing sent after it is missed.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] for an empty or too long name; the server's error for LISTEN.
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription> {
        check_channel(channel)?;
        let (rx, first) = {
            let mut channels = lock(&self.shared.channels);
            match channels.get(channel) {
                Some(tx) => (tx.subscribe(), false),
                None => {
                    let (tx, rx) = broadcast::channel(self.shared.buffer);
                    channels.insert(channel.to_owned(), tx);
                    (rx, true)
                }
            }
        };
        let sub = Subscription {
            channel: channel.to_owned(),
            stream: Box::pin(events(rx, self.shared.slow)),
            listener: self.clone(),
        };
        if first {
            let (ack, done) = oneshot::channel();
            let _ = self
                .shared
                .commands
                .send(Command::Listen(channel.to_owned(), ack));
            done.await.unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::ConnectionLost,
                    "the listener has stopped",
                ))
            })?;
        }
        Ok(sub)
    }

    /// Counters.
    pub fn stats(&self) -> ListenerStats {
        ListenerStats {
            notifications: self.shared.notifications.load(Relaxed),
            reconnects: self.shared.reconnects.load(Relaxed),
            channels: lock(&self.shared.channels).len(),
        }
    }
}

/// The events of one channel for one subscriber. Dropping the last subscription of a
/// channel UNLISTENs it.
pub struct Subscription {
    channel: String,
    stream: Pin<Box<dyn Stream<Item = Event> + Send + Sync>>,
    listener: Listener,
}

impl Subscription {
    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .finish()
    }
}

impl Stream for Subscription {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.stream.as_mut().poll_next(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut channels = lock(&self.listener.shared.channels);
        // This subscription's receiver is still alive: one left means it is the last.
        if channels
            .get(&self.channel)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            channels.remove(&self.channel);
            let _ = self
                .listener
                .shared
                .commands
                .send(Command::Unlisten(self.channel.clone()));
        }
    }
}

fn events(
    rx: broadcast::Receiver<Event>,
    slow: SlowSubscriber,
) -> impl Stream<Item = Event> + Send + Sync {
    futures_util::stream::unfold(Some(rx), move |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Ok(e) => Some((e, Some(rx))),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let keep = (slow == SlowSubscriber::DropOldest).then_some(rx);
                Some((Event::Lagged(n), keep))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
}

type Session = (PgConnection, mpsc::UnboundedReceiver<Notification>);

/// Connects to the first node that is a primary (LISTEN needs one; after a failover the
/// promoted node is found the same way).
async fn connect_primary(nodes: &[ConnectParams]) -> Result<Session> {
    let mut errors = Vec::new();
    for params in nodes {
        let node = params.node_name();
        if params.pooler == pgprovider_core::PoolerMode::Transaction {
            // LISTEN belongs to a server session; a transaction pooler hands it on.
            return Err(pgprovider_core::kit::pooler::refusal(
                "LISTEN (a listener needs a session of its own: connect it to the node directly)",
                &node,
            ));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let attempt = async {
            let mut conn = TokioPostgres::with_notifications(tx)
                .connect(params)
                .await?;
            let rows = conn.simple_query("SELECT pg_is_in_recovery()").await?;
            Ok::<_, Error>((conn, rows.first().and_then(|r| r.get(0)) == Some("f")))
        };
        match attempt.await {
            Ok((conn, true)) => return Ok((conn, rx)),
            Ok((conn, false)) => {
                errors.push(format!("{node}: a standby"));
                conn.close().await;
            }
            Err(e) => errors.push(format!("{node}: {e}")),
        }
    }
    Err(Error::new(
        ErrorKind::Connect,
        format!("no primary to listen on ({})", errors.join("; ")),
    )
    .with_hint("LISTEN needs the primary; check that one of the nodes is up and not in recovery"))
}

fn listen_sql(verb: &str, channel: &str) -> String {
    format!("{verb} \"{}\"", channel.replace('"', "\"\""))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The listener's task: deliver, obey subscribe/unsubscribe, check the connection, and
/// reconnect when it is lost. Ends when the listener and its subscriptions are gone.
async fn run(
    shared: std::sync::Weak<Shared>,
    nodes: Vec<ConnectParams>,
    heartbeat: Duration,
    on_reconnect: Option<Callback>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut session: Session,
) {
    loop {
        let (conn, notes) = &mut session;
        loop {
            tokio::select! {
                note = notes.recv() => {
                    let Some(note) = note else { break };
                    let Some(shared) = shared.upgrade() else { return };
                    shared.notifications.fetch_add(1, Relaxed);
                    if let Some(tx) = lock(&shared.channels).get(&note.channel) {
                        let _ = tx.send(Event::Notification(note));
                    }
                }
                command = commands.recv() => match command {
                    // Listener and subscriptions gone: dropping the session closes it.
                    None => return,
                    Some(Command::Listen(channel, ack)) => {
                        let r = conn.simple_query(&listen_sql("LISTEN", &channel)).await.map(|_| ());
                        let lost = r.is_err() && conn.is_broken();
                        let _ = ack.send(r);
                        if lost { break }
                    }
                    Some(Command::Unlisten(channel)) => {
                        if conn.simple_query(&listen_sql("UNLISTEN", &channel)).await.is_err() && conn.is_broken() {
                            break;
                        }
                    }
                },
                () = tokio::time::sleep(heartbeat) => {
                    let alive = matches!(tokio::time::timeout(heartbeat, conn.ping()).await, Ok(Ok(())));
                    if !alive || conn.is_broken() {
                        tracing::warn!("listener connection did not answer its heartbeat; reconnecting");
                        break;
                    }
                }
            }
        }
        // Lost: connect again, with backoff, answering subscriptions meanwhile (they are
        // listened to on the new connection).
        let mut backoff = Duration::from_millis(50);
        let fresh = loop {
            match connect_primary(&nodes).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(error = %e, "listener cannot reconnect yet");
                    let wait = tokio::time::sleep(backoff);
                    tokio::pin!(wait);
                    loop {
                        tokio::select! {
                            () = &mut wait => break,
                            command = commands.recv() => match command {
                                None => return,
                                Some(Command::Listen(_, ack)) => { let _ = ack.send(Ok(())); }
                                Some(Command::Unlisten(_)) => {}
                            },
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        let old = std::mem::replace(&mut session, fresh);
        drop(old);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let channels: Vec<String> = lock(&shared.channels).keys().cloned().collect();
        let sql: Vec<String> = channels.iter().map(|c| listen_sql("LISTEN", c)).collect();
        if !sql.is_empty() && session.0.simple_query(&sql.join("; ")).await.is_err() {
            continue; // lost again at once: the outer loop reconnects
        }
        shared.reconnects.fetch_add(1, Relaxed);
        // The callback first, so a subscriber seeing the gap finds it done.
        if let Some(f) = &on_reconnect {
            f();
        }
        for tx in lock(&shared.channels).values() {
            let _ = tx.send(Event::Gap);
        }
    }
}

impl PgConnection {
    /// Sends a notification with `pg_notify` (inside a transaction it goes out at commit).
    ///
    /// # Errors
    /// [`ErrorKind::Config`] for a bad channel name or a payload over the server's limit,
    /// before anything is sent; the server's error otherwise.
    pub async fn notify(&mut self, channel: &str, payload: &str) -> Result<()> {
        check_notification(channel, payload)?;
        self.observed(
            pgprovider_core::observe::OperationKind::Notify,
            "SELECT pg_notify($1, $2)",
            &[&channel, &payload],
            crate::query::Op::Execute,
        )
        .await
        .map(|_| ())
    }
}
