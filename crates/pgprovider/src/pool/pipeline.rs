//! Adaptive pipelining: plain reads sent on busy connections when none is free (see
//! [the pool docs](super#adaptive-pipelining)).
//!
//! Each connection that has run a statement through [`Pool::query`](super::Pool::query)
//! (or `execute`, the provider's statements) has an [`Entry`]: its driver's [`Pipeline`],
//! whether requests may be sent on it now (`open`), and how many pipelined statements it
//! carries (`depth`). The holder opens the entry while it runs a statement that leaves
//! nothing on the session, on a connection outside a transaction with nothing to reset, and
//! closes it under the entry's lock before it does anything else. A pipelined read is sent
//! in the first poll of the driver's future, under that lock, only while the entry is open;
//! so everything pipelined is queued on the connection before anything the holder sends
//! afterwards, and nothing pipelined ever runs inside a transaction or after a `SET`.
//!
//! The holder gives the connection back at once ([`release`]), still open to reads while
//! it is on its way back and idle; the next checkout closes it before its holder can send
//! anything. Reads still in flight on it are queued ahead of the next holder's first
//! statement, so the checkout tells the connection ([`Connection::queued_ahead`]): until
//! its first reply, a query timeout closes it rather than sending a cancel that would hit
//! someone else's read. A read whose caller gave up before its reply counts the same way.
//!
//! No global lock on the path: the entries are read under a read lock (written only when a
//! connection first shares), the choice is a scan of atomics from a rotating start, and the
//! only lock taken is the chosen connection's own, for one poll.

use super::{CountGuard, Inner, Pool, Pooled, lock};
use pgprovider_core::{Connection, Driver, Error, ErrorKind, Pipeline, Queries, Result, SqlState};
use std::any::Any;
use std::future::Future;
use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicUsize, Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed,
    Ordering::Release,
};
use std::sync::{Arc, Mutex, RwLock};
use std::task::Poll;
use tokio::sync::Semaphore;

type Pipe<D> = <<D as Driver>::Connection as Queries>::Pipeline;
type Param<'p, D> = <<D as Driver>::Connection as Queries>::Param<'p>;
type Row<D> = <<D as Driver>::Connection as Queries>::Row;

/// A connection with work outstanding that has finished nothing for this long is running
/// something slow: reads are not queued behind it (head-of-line blocking).
pub(crate) const STALL: std::time::Duration = std::time::Duration::from_millis(1);

/// Connections looked at per pick, from a rotating start: enough to find a light one,
/// bounded so a pool of a thousand connections does not scan them all.
const SCAN: usize = 8;

/// One connection's pipelining state.
pub(crate) struct Entry {
    /// Requests may be sent: the holder runs a statement that leaves nothing on the
    /// session. Set freely, cleared under `lock`; read without it to pick.
    open: AtomicBool,
    lock: Mutex<()>,
    /// Pipelined statements in flight on the connection.
    depth: AtomicUsize,
    /// A pipelined read's caller gave up before its reply: the session runs something
    /// nobody waits for.
    abandoned: AtomicBool,
    /// When the connection last made progress (nanoseconds since the pool's epoch): its
    /// holder opened it, or a pipelined statement on it got its reply.
    progress: AtomicU64,
    /// The connection is gone.
    dead: AtomicBool,
    /// The pool generation the connection belongs to ([`Pool::retire`](super::Pool::retire)).
    generation: u64,
    /// The driver's [`Pipeline`], as `Pipe<D>`.
    pipe: Box<dyn Any + Send + Sync>,
}

/// A connection's entry, held by its slot: marks it dead when the connection goes.
pub(crate) struct Registered(Arc<Entry>);

impl Registered {
    /// At checkout: closes the connection to pipelined reads (the new holder opens it again
    /// when it runs a statement that may share), and says whether others' requests may
    /// still be queued on it ([`Entry::queued`]).
    pub(crate) fn checked_out(&self) -> bool {
        self.0.close();
        self.0.queued()
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.dead.store(true, Relaxed);
        self.0.open.store(false, Relaxed);
    }
}

/// A pool's pipelining state (present when `pool_pipeline` is set).
pub(crate) struct Pipes {
    depth: usize,
    /// What [`Entry::progress`] counts from.
    epoch: std::time::Instant,
    entries: RwLock<Vec<Arc<Entry>>>,
    next: AtomicUsize,
    /// The driver returned no pipeline: nothing is ever pipelined.
    unsupported: AtomicBool,
    /// Room for pipelined statements over every connection, taken in arrival order.
    room: Semaphore,
    /// Statements run pipelined.
    pub(crate) sent: AtomicU64,
    /// Attempts that went to a checkout after all (no room, or a stale statement, a lost
    /// connection or a cancel on the shared session).
    pub(crate) fell_back: AtomicU64,
}

impl Pipes {
    pub(crate) fn new(depth: usize, size: usize) -> Self {
        Pipes {
            depth,
            epoch: std::time::Instant::now(),
            entries: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
            unsupported: AtomicBool::new(false),
            room: Semaphore::new(depth.saturating_mul(size).min(Semaphore::MAX_PERMITS)),
            sent: AtomicU64::new(0),
            fell_back: AtomicU64::new(0),
        }
    }

    /// The least-loaded open entry of `generation` with room, among up to [`SCAN`] from a
    /// rotating start, counted in (its depth raised) before it is returned.
    fn pick(&self, generation: u64) -> Option<InFlight<'_>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let n = entries.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Relaxed);
        let now = self.now();
        let stall = STALL.as_nanos() as u64;
        let mut best: Option<(&Arc<Entry>, usize)> = None;
        for k in 0..n.min(SCAN) {
            let e = &entries[(start + k) % n];
            if !e.open.load(Relaxed)
                || e.generation != generation
                || now.saturating_sub(e.progress.load(Relaxed)) > stall
            {
                continue;
            }
            let d = e.depth.load(Relaxed);
            if d < self.depth && best.is_none_or(|(_, b)| d < b) {
                best = Some((e, d));
                if d == 0 {
                    break;
                }
            }
        }
        let (e, _) = best?;
        e.depth
            .fetch_update(Relaxed, Relaxed, |d| (d < self.depth).then_some(d + 1))
            .ok()?;
        Some(InFlight {
            entry: e.clone(),
            pipes: self,
            replied: false,
        })
    }

    /// Whether `sql` may be pipelined at all, as the pipeline of a live connection says
    /// (each caches its answer); false while no connection has shared yet.
    fn accepts<D: Driver>(&self, sql: &str) -> bool
    where
        D::Connection: Queries,
    {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .find(|e| !e.dead.load(Relaxed))
            .and_then(|e| e.pipe.downcast_ref::<Pipe<D>>())
            .is_some_and(|p| p.accepts(sql))
    }

    /// Adds a connection's entry, dropping those of connections gone.
    fn register(&self, pipe: Box<dyn Any + Send + Sync>, generation: u64) -> Registered {
        let entry = Arc::new(Entry {
            open: AtomicBool::new(false),
            lock: Mutex::new(()),
            depth: AtomicUsize::new(0),
            abandoned: AtomicBool::new(false),
            progress: AtomicU64::new(0),
            dead: AtomicBool::new(false),
            generation,
            pipe,
        });
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| !e.dead.load(Relaxed));
        entries.push(entry.clone());
        Registered(entry)
    }

    /// Nanoseconds since the epoch.
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// A pipelined statement counted in its connection's depth until dropped; dropped before
/// its reply came, it marks the connection abandoned.
struct InFlight<'a> {
    entry: Arc<Entry>,
    pipes: &'a Pipes,
    replied: bool,
}

impl InFlight<'_> {
    /// The reply came: the connection made progress.
    fn replied(&mut self) {
        self.replied = true;
        self.entry.progress.store(self.pipes.now(), Relaxed);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.replied {
            self.entry.abandoned.store(true, Release);
        }
        self.entry.depth.fetch_sub(1, Release);
    }
}

/// While alive, the holder's connection takes pipelined statements; dropping it closes the
/// connection to them (waiting for one being sent). Give the connection back with
/// [`release`].
pub(crate) struct Sharing(Option<Arc<Entry>>);

impl Drop for Sharing {
    fn drop(&mut self) {
        if let Some(e) = &self.0 {
            e.close();
        }
    }
}

impl Entry {
    /// No more requests: waits for one being sent.
    fn close(&self) {
        let _sending = lock(&self.lock);
        self.open.store(false, Relaxed);
    }
}

impl<D: Driver> Pool<D> {
    /// Whether adaptive pipelining is on.
    pub(crate) fn pipelines(&self) -> bool {
        self.inner.pipes.is_some()
    }

    /// Whether every connection is checked out (or being opened).
    pub(crate) fn saturated(&self) -> bool {
        self.inner.semaphore.available_permits() == 0
    }
}

impl<D: Driver> Pool<D>
where
    D::Connection: Queries,
{
    /// A read pipelined on a busy connection when every connection is busy, else on a
    /// connection of its own that others may pipeline onto meanwhile.
    pub(crate) async fn query_adaptive<'p>(
        &self,
        sql: &str,
        params: &[&'p Param<'p, D>],
    ) -> Result<Vec<Row<D>>> {
        let inner = &self.inner;
        let Some(pipes) = &inner.pipes else {
            return self.get().await?.query(sql, params).await;
        };
        let mut deadline = None;
        if self.saturated() && pipes.accepts::<D>(sql) {
            // Room on busy connections is handed out in arrival order (a FIFO semaphore of
            // depth × size permits), so no read starves while later ones pipeline. Those
            // waiting count as waiters of the pool, bounded by `pool_max_waiters`.
            let start = tokio::time::Instant::now();
            let until = start + inner.config.pool().acquire_timeout();
            deadline = Some((start, until));
            let room = match pipes.room.try_acquire() {
                Ok(p) => Some(p),
                Err(_) => {
                    if let Some(max) = inner.config.pool().max_waiters() {
                        if inner.counters.waiters.load(Relaxed) >= max as u64 {
                            return Err(inner.overloaded_error(max));
                        }
                    }
                    let _waiting = CountGuard::new(&inner.counters.waiters);
                    let acquire = std::pin::pin!(pipes.room.acquire());
                    let got = match &inner.deadlines {
                        Some(d) => d.register(until).bound(acquire).await,
                        None => tokio::time::timeout_at(until, acquire).await.ok(),
                    };
                    match got {
                        None => return Err(inner.timeout_error(start)),
                        Some(p) => p.ok(),
                    }
                }
            };
            if room.is_some() && self.saturated() {
                if let Some(r) = send(inner, pipes, sql, params).await {
                    return r;
                }
            }
        }
        // One acquire timeout for the whole call: what waiting for room used is gone.
        let conn = match deadline {
            None => self.get().await?,
            Some((start, until)) => match tokio::time::timeout_at(until, self.get()).await {
                Ok(c) => c?,
                Err(_) => return Err(inner.timeout_error(start)),
            },
        };
        let sent = pipes.now();
        Pooled::shared(conn, sql, async |c| {
            let r = c.query(sql, params).await;
            Pooled::note(c, pipes, sql, sent);
            r
        })
        .await
    }

    /// `sql` pipelined on a busy connection (through the hooks), when pipelining is on,
    /// every connection is busy, and one has room at once; `None` otherwise (check out).
    pub(crate) async fn try_pipelined<'p>(
        &self,
        sql: &str,
        params: &[&'p Param<'p, D>],
    ) -> Option<Result<Vec<Row<D>>>> {
        let pipes = self.inner.pipes.as_ref()?;
        if !self.saturated() {
            return None;
        }
        let _room = pipes.room.try_acquire().ok()?; // Only room free now, no wait.
        let (i, sent) = (&self.inner, send(&self.inner, pipes, sql, params));
        super::hooks::observed_read(&i.observe, &i.node_name, sql, sent).await
    }
}

impl<D: Driver> Pooled<D>
where
    D::Connection: Queries,
{
    /// Runs `f` on `conn`, whose holder runs `sql`, with the connection open to pipelined
    /// reads meanwhile when pipelining is on and `sql` leaves nothing on the session; then
    /// gives the connection back once those reads have their replies ([`release`]).
    pub(crate) async fn shared<T>(
        mut conn: Self,
        sql: &str,
        f: impl AsyncFnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let pool = conn.pool.clone();
        let Some(pipes) = &pool.pipes else {
            return f(&mut conn).await;
        };
        let sharing = share(pipes, &mut conn, sql);
        if sharing.is_some() {
            // Reads may be queued ahead of the holder's own statement (sent after the
            // connection opened): its timeout must not send a cancel that could hit one.
            conn.queued_ahead();
        }
        let r = f(&mut conn).await;
        if let Some(sharing) = sharing {
            release(sharing, conn);
        }
        r
    }

    /// Tells the connection's pipeline how long `sql`, sent at `sent`, took.
    fn note(this: &Self, pipes: &Pipes, sql: &str, sent: u64) {
        let Some(entry) = this.slot.as_ref().and_then(|s| s.pipe.as_ref()) else {
            return;
        };
        if let Some(pipe) = entry.0.pipe.downcast_ref::<Pipe<D>>() {
            pipe.note(sql, entry.0.took(pipes, sent));
        }
    }
}

/// Gives the holder's connection back, still open to pipelined reads when its session is
/// clean: it stays open on its way back and while idle, until the next checkout closes it
/// (under the lock, before the next holder can send anything). Otherwise closed now. Reads
/// still in flight on it are queued ahead of whatever the next holder sends: the checkout
/// tells the next holder's connection so ([`Connection::queued_ahead`]), and a timeout
/// there closes the connection instead of sending a cancel that could hit one of them.
fn release<D: Driver>(mut sharing: Sharing, conn: Pooled<D>)
where
    D::Connection: Queries,
{
    if let Some(entry) = sharing.0.take() {
        let c = conn.slot.as_ref().map(|s| &s.conn);
        let clean = c.is_some_and(|c| {
            !(c.in_transaction() || c.needs_reset() || c.is_broken() || c.interrupted())
        });
        if !clean {
            entry.close();
        }
    }
    drop(conn);
}

impl Entry {
    /// Whether requests of others may still be queued on the connection (in flight, or
    /// abandoned by their callers before the reply), which its next holder must know;
    /// forgets the abandoned ones (the next holder's first reply comes after theirs).
    pub(crate) fn queued(&self) -> bool {
        // Depth first: a read abandoned in between has already set the flag read next.
        let in_flight = self.depth.load(Acquire) > 0;
        self.abandoned.swap(false, AcqRel) | in_flight
    }
}

impl Entry {
    /// How long the statement sent at `sent` whose reply just came took on the server:
    /// from the later of its sending and the previous reply on the connection.
    fn took(&self, pipes: &Pipes, sent: u64) -> std::time::Duration {
        let from = sent.max(self.progress.load(Relaxed));
        std::time::Duration::from_nanos(pipes.now().saturating_sub(from))
    }
}

/// Opens `conn` to pipelined statements while its holder runs `sql`, when `sql` leaves
/// nothing on the session and the connection is outside a transaction with nothing to
/// reset. Registers the connection the first time.
fn share<D: Driver>(pipes: &Pipes, conn: &mut Pooled<D>, sql: &str) -> Option<Sharing>
where
    D::Connection: Queries,
{
    if pipes.unsupported.load(Relaxed) {
        return None;
    }
    let slot = conn.slot.as_mut()?;
    if slot.pipe.is_none() {
        let Some(pipe) = slot.conn.pipeline() else {
            pipes.unsupported.store(true, Relaxed);
            return None;
        };
        slot.pipe = Some(pipes.register(Box::new(pipe), slot.generation));
    }
    let entry = &slot.pipe.as_ref()?.0;
    let pipe = entry.pipe.downcast_ref::<Pipe<D>>()?;
    if slot.conn.in_transaction() || slot.conn.needs_reset() || !pipe.shares(sql) {
        return None;
    }
    entry.progress.store(pipes.now(), Relaxed);
    entry.open.store(true, Relaxed);
    Some(Sharing(Some(entry.clone())))
}

/// Runs `sql` pipelined on a busy connection; `None` when it cannot (no open connection
/// with room, not a plain read, not prepared there yet, or the shared session said no: a
/// stale statement, a lost connection, a cancel meant for another statement), and the
/// caller checks out instead.
///
/// A pipelined statement honours the query timeout by giving up on the reply (discarded by
/// the driver; the connection is then closed when its holder gives it back); it is not
/// cancelled on the server, where a cancel would hit whatever the shared session runs.
async fn send<'p, D: Driver>(
    inner: &Inner<D>,
    pipes: &Pipes,
    sql: &str,
    params: &[&'p Param<'p, D>],
) -> Option<Result<Vec<Row<D>>>>
where
    D::Connection: Queries,
{
    let fall_back = || {
        pipes.fell_back.fetch_add(1, Relaxed);
        None
    };
    let mut flight = pipes.pick(inner.generation.load(Relaxed))?;
    let entry = flight.entry.clone();
    let pipe = entry.pipe.downcast_ref::<Pipe<D>>()?;
    if !pipe.accepts(sql) {
        // Not a read: nothing was sent.
        flight.replied = true;
        return None;
    }
    let Some(stmt) = pipe.statement(sql) else {
        // Not prepared on this session yet (its holders prepare; a pipeline never does).
        flight.replied = true;
        return fall_back();
    };
    let sent = pipes.now();
    let run = async {
        let r = while_open(&entry, pipe.query(&stmt, params)).await;
        match &r {
            None => flight.replied = true, // never sent
            Some(Ok(_)) => {
                pipe.note(sql, entry.took(pipes, sent));
                flight.replied();
            }
            Some(Err(_)) => flight.replied(),
        }
        r
    };
    let r = match inner.config.query_timeout() {
        None => run.await,
        Some(t) => match tokio::time::timeout(t, run).await {
            Ok(r) => r,
            Err(_) => Some(Err(Error::new(
                ErrorKind::Timeout,
                format!("a pipelined read took longer than the query timeout ({t:?}); its reply is discarded"),
            )
            .with_node(&*inner.node_name)
            .with_hint("raise query_timeout, or look for a slow statement ahead of it on the connection"))),
        },
    };
    drop(flight);
    match r {
        None => fall_back(),
        Some(Ok(rows)) => {
            pipes.sent.fetch_add(1, Relaxed);
            Some(Ok(rows))
        }
        Some(Err(e)) if e.is_stale_statement() => {
            pipe.forget(sql);
            fall_back()
        }
        Some(Err(e))
            if e.is_connection_lost() || e.sql_state() == Some(SqlState::QUERY_CANCELED) =>
        {
            fall_back()
        }
        Some(Err(e)) => Some(Err(e)),
    }
}

/// Polls `fut` once under `entry`'s lock while it is open (sending its request), then to
/// the end; `None` when the entry was closed.
async fn while_open<F: Future>(entry: &Entry, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| {
        let _sending = lock(&entry.lock);
        if !entry.open.load(Relaxed) || entry.dead.load(Relaxed) {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(fut.as_mut().poll(cx)))
    })
    .await?;
    Some(match first {
        Poll::Ready(v) => v,
        Poll::Pending => fut.await,
    })
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
