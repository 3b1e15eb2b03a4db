//! The pool's state machine against a scripted fake driver, with paused time.
//! (This file is long by choice: one test module sharing the fake driver's script helpers.)

use super::*;
use crate::config::Config;
use pgprovider_core::{CancelToken, ConnectParams, SimpleRow};
use std::sync::atomic::AtomicBool;

#[derive(Default)]
struct Script {
    connects: AtomicU64,
    fail_next: AtomicU64,
    fatal: AtomicBool,
    ping_fails: AtomicBool,
    hang: AtomicBool,
    dirty: AtomicBool,
    reset_fails: AtomicBool,
    resets: AtomicU64,
    pings: AtomicU64,
    closed: AtomicU64,
    /// How long a connect takes (ms).
    connect_ms: AtomicU64,
    /// Connects under way now, and the most seen at once.
    connecting: AtomicU64,
    most_connecting: AtomicU64,
    /// How long an abandoned statement still runs (ms) when recovery starts; a cancel cuts
    /// it short.
    abandoned_ms: AtomicU64,
    /// A cancel hits recovery's own statement (57014) instead of the abandoned one.
    cancel_hits_recovery: AtomicBool,
    recover_fails: AtomicBool,
    recovers: AtomicU64,
    cancels: AtomicU64,
    cancelled: tokio::sync::Notify,
    connect_panics: AtomicBool,
    /// The server has closed every connection open now (ids below this, plus one).
    closed_below: AtomicU64,
}

#[derive(Clone, Default)]
struct Fake(Arc<Script>);

struct FakeConn {
    id: u64,
    broken: bool,
    /// A statement was abandoned mid-flight.
    in_flight: bool,
    read_only: bool,
    script: Arc<Script>,
}

impl Driver for Fake {
    type Connection = FakeConn;
    fn name(&self) -> &'static str {
        "fake"
    }
    async fn connect(&self, _: &ConnectParams) -> Result<FakeConn> {
        let s = &self.0;
        if s.hang.load(Relaxed) {
            std::future::pending::<()>().await;
        }
        if s.fatal.load(Relaxed) {
            return Err(Error::new(
                ErrorKind::Auth,
                "password authentication failed",
            ));
        }
        if s.fail_next.load(Relaxed) > 0 {
            s.fail_next.fetch_sub(1, Relaxed);
            return Err(Error::new(ErrorKind::Connect, "connection refused"));
        }
        assert!(!s.connect_panics.load(Relaxed), "driver bug");
        let now = s.connecting.fetch_add(1, Relaxed) + 1;
        s.most_connecting.fetch_max(now, Relaxed);
        tokio::time::sleep(Duration::from_millis(s.connect_ms.load(Relaxed))).await;
        s.connecting.fetch_sub(1, Relaxed);
        let id = s.connects.fetch_add(1, Relaxed);
        Ok(FakeConn {
            id,
            broken: false,
            in_flight: false,
            read_only: false,
            script: s.clone(),
        })
    }
}

impl Connection for FakeConn {
    fn is_broken(&self) -> bool {
        self.broken || self.in_flight || self.id < self.script.closed_below.load(Relaxed)
    }
    fn interrupted(&self) -> bool {
        self.in_flight && !self.broken
    }
    async fn recover(&mut self) -> Result<()> {
        let s = self.script.clone();
        s.recovers.fetch_add(1, Relaxed);
        let run = Duration::from_millis(s.abandoned_ms.swap(0, Relaxed));
        let cancelled = tokio::select! {
            _ = tokio::time::sleep(run) => false,
            _ = s.cancelled.notified() => true,
        };
        if cancelled && s.cancel_hits_recovery.swap(false, Relaxed) {
            return Err(Error::database(
                pgprovider_core::SqlState::QUERY_CANCELED,
                "canceling statement due to user request",
            ));
        }
        if s.recover_fails.load(Relaxed) {
            return Err(Error::new(ErrorKind::ConnectionLost, "gone"));
        }
        self.in_flight = false;
        Ok(())
    }
    fn refused_read_only(&self) -> bool {
        self.read_only
    }
    fn recycled(&mut self) {
        self.read_only = false;
    }
    async fn ping(&mut self) -> Result<()> {
        self.script.pings.fetch_add(1, Relaxed);
        if self.script.ping_fails.load(Relaxed) {
            return Err(Error::new(ErrorKind::ConnectionLost, "gone"));
        }
        Ok(())
    }
    fn needs_reset(&self) -> bool {
        self.script.dirty.load(Relaxed)
    }
    async fn reset(&mut self) -> Result<()> {
        self.script.resets.fetch_add(1, Relaxed);
        if self.script.reset_fails.load(Relaxed) {
            return Err(Error::new(ErrorKind::ConnectionLost, "gone"));
        }
        Ok(())
    }
    async fn simple_query(&mut self, _: &str) -> Result<Vec<SimpleRow>> {
        Ok(Vec::new())
    }
    fn cancel_token(&self) -> CancelToken {
        let s = self.script.clone();
        CancelToken::new(move || {
            s.cancels.fetch_add(1, Relaxed);
            s.cancelled.notify_waiters();
            async { Ok(()) }
        })
    }
    async fn close(self) {
        self.script.closed.fetch_add(1, Relaxed);
    }
}

fn pool(query: &str) -> (Pool<Fake>, Arc<Script>) {
    let c = Config::from_url(&format!("postgres://fake/db?pool_validation=never&{query}")).unwrap();
    let fake = Fake::default();
    let script = fake.0.clone();
    (Pool::new(fake, &c, &c.nodes()[0]), script)
}

#[tokio::test(start_paused = true)]
async fn reuses_the_most_recent_idle_connection() {
    let (pool, _) = pool("pool_max_size=3");
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    assert_eq!((a.id, b.id), (0, 1));
    drop(a);
    drop(b);
    assert_eq!(
        pool.get().await.unwrap().id,
        1,
        "LIFO: the warmest connection first"
    );
    let s = pool.stats();
    assert_eq!(
        (s.created, s.acquired, s.size, s.idle, s.in_use),
        (2, 3, 2, 2, 0)
    );
    assert!(format!("{pool:?}").contains("fake"));
    assert_eq!(pool.node().port(), 5432);
}

#[tokio::test(start_paused = true)]
async fn lifetime_expires_with_at_most_an_eighth_of_jitter() {
    let (pool, script) = pool("pool_max_lifetime=80s&pool_idle_timeout=off");
    drop(pool.get().await.unwrap());
    tokio::time::advance(Duration::from_secs(69)).await; // before 80 - 80/8 = 70 s
    assert_eq!(pool.get().await.unwrap().id, 0);
    tokio::time::advance(Duration::from_secs(12)).await; // past 80 s
    assert_eq!(pool.get().await.unwrap().id, 1);
    assert_eq!(pool.stats().closed_lifetime, 1);
    tokio::task::yield_now().await;
    assert_eq!(
        script.closed.load(Relaxed),
        1,
        "the expired connection was closed"
    );
}

#[tokio::test(start_paused = true)]
async fn expiry_differs_between_connections() {
    let (pool, _) = pool("pool_max_size=32&pool_max_lifetime=1h");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..32 {
        seen.insert(pool.inner.expiry().unwrap());
    }
    assert!(
        seen.len() > 16,
        "jitter spreads expiry: {} distinct of 32",
        seen.len()
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_expiring_while_checked_out_is_closed_on_return() {
    let (pool, _) = pool("pool_max_lifetime=10s&pool_idle_timeout=off");
    let c = pool.get().await.unwrap();
    tokio::time::advance(Duration::from_secs(11)).await;
    drop(c);
    assert_eq!(pool.stats().closed_lifetime, 1);
    assert_eq!(pool.stats().idle, 0);
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_closes_stale_connections() {
    let (pool, _) = pool("pool_idle_timeout=10s");
    drop(pool.get().await.unwrap());
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(pool.get().await.unwrap().id, 1);
    assert_eq!(pool.stats().closed_idle, 1);
}

#[tokio::test(start_paused = true)]
async fn validation_pings_only_when_asked_and_drops_dead_connections() {
    let script = Arc::new(Script::default());
    let c = Config::from_url("postgres://fake/db?pool_validation=5s").unwrap();
    let pool2 = Pool::new(Fake(script.clone()), &c, &c.nodes()[0]);
    drop(pool2.get().await.unwrap());
    drop(pool2.get().await.unwrap());
    assert_eq!(script.pings.load(Relaxed), 0, "used a moment ago: no ping");
    tokio::time::advance(Duration::from_secs(6)).await;
    drop(pool2.get().await.unwrap());
    assert_eq!(script.pings.load(Relaxed), 1);
    tokio::time::advance(Duration::from_secs(6)).await;
    script.ping_fails.store(true, Relaxed);
    let c = pool2.get().await.unwrap();
    assert_eq!(c.id, 1, "the dead connection was replaced");
    assert_eq!(pool2.stats().closed_validation, 1);
    drop(c);

    let always = Config::from_url("postgres://fake/db?pool_validation=always").unwrap();
    let pool3 = Pool::new(Fake(script.clone()), &always, &always.nodes()[0]);
    script.ping_fails.store(false, Relaxed);
    drop(pool3.get().await.unwrap());
    let before = script.pings.load(Relaxed);
    drop(pool3.get().await.unwrap());
    assert_eq!(script.pings.load(Relaxed), before + 1);
}

#[tokio::test(start_paused = true)]
async fn broken_connections_are_never_handed_out_again() {
    let (pool, _) = pool("");
    let mut c = pool.get().await.unwrap();
    c.broken = true;
    drop(c);
    assert_eq!(pool.get().await.unwrap().id, 1);
    let s = pool.stats();
    assert_eq!((s.closed_error, s.size), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn connections_closed_while_idle_are_not_handed_out() {
    let (pool, script) = pool("pool_max_size=2");
    let first = pool.get().await.unwrap().id;
    // The server (or the network) ends the idle session: the driver knows, no round trip.
    script
        .closed_below
        .store(script.connects.load(Relaxed), Relaxed);
    let next = pool.get().await.unwrap().id;
    assert_ne!(next, first, "a closed connection was handed out");
    assert_eq!(pool.stats().closed_error, 1);
    assert_eq!(script.pings.load(Relaxed), 0, "found without a ping");
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order() {
    let (pool, _) = pool("pool_max_size=1");
    let held = pool.get().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..5 {
        let (pool, order) = (pool.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let c = pool.get().await.unwrap();
            order.lock().unwrap().push(i);
            tokio::time::sleep(Duration::from_millis(1)).await;
            drop(c);
        }));
        // Let task i queue before task i+1 is spawned.
        tokio::task::yield_now().await;
    }
    assert_eq!(pool.stats().waiters, 5);
    drop(held);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
    assert_eq!(pool.stats().created, 1);
}

#[tokio::test(start_paused = true)]
async fn acquire_timeout_names_the_node_and_the_state() {
    let (pool, _) = pool("pool_max_size=1&pool_acquire_timeout=2s");
    let _held = pool.get().await.unwrap();
    let e = pool.get().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PoolTimeout);
    assert_eq!(e.node(), Some("fake:5432"));
    let text = e.to_string();
    assert!(
        text.contains("in use 1")
            && text.contains("max 1")
            && text.contains("last connection error: none"),
        "{text}"
    );
    let s = pool.stats();
    assert_eq!((s.timeouts, s.waiters), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_checkout_leaves_counts_right() {
    let (pool, _) = pool("pool_max_size=1");
    let held = pool.get().await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(10), pool.get()).await;
    assert!(waiting.is_err());
    assert_eq!(pool.stats().waiters, 0);
    drop(held);
    let s = pool.stats();
    assert_eq!((s.in_use, s.idle, s.size), (0, 1, 1));
    pool.get().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn connect_failures_back_off_then_succeed_or_time_out() {
    let (pool, script) = pool("pool_acquire_timeout=10s");
    script.fail_next.store(3, Relaxed);
    let start = Instant::now();
    let c = pool.get().await.unwrap();
    // 25 + 50 + 100 ms of backoff.
    assert_eq!(start.elapsed(), Duration::from_millis(175));
    assert_eq!(pool.stats().connect_errors, 3);
    drop(c);

    let (pool, script) = self::pool("pool_acquire_timeout=3s");
    script.fail_next.store(u64::MAX, Relaxed);
    let e = pool.get().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PoolTimeout);
    assert!(
        e.to_string()
            .contains("last connection error: connection refused"),
        "{e}"
    );
    let tries = pool.stats().connect_errors;
    assert!(
        (4..=8).contains(&tries),
        "backoff capped at 1 s: {tries} tries in 3 s"
    );
}

#[tokio::test(start_paused = true)]
async fn fatal_connect_errors_are_not_retried() {
    let (pool, script) = pool("");
    script.fatal.store(true, Relaxed);
    let e = pool.get().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth);
    assert_eq!(e.node(), Some("fake:5432"));
    assert_eq!(pool.stats().connect_errors, 1);
    assert_eq!(pool.stats().waiters, 0);
}

#[tokio::test(start_paused = true)]
async fn close_fails_waiters_and_closes_every_connection() {
    let (pool, script) = pool("pool_max_size=2");
    let a = pool.get().await.unwrap();
    drop(pool.get().await.unwrap());
    let b = pool.get().await.unwrap();
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|_| ()) }
    });
    tokio::task::yield_now().await;
    pool.close().await;
    assert_eq!(
        waiter.await.unwrap().unwrap_err().kind(),
        ErrorKind::PoolClosed
    );
    drop(a);
    drop(b);
    tokio::task::yield_now().await;
    let s = pool.stats();
    assert_eq!((s.closed_pool, s.size, s.in_use), (2, 0, 0));
    assert_eq!(script.closed.load(Relaxed), 2);
    let e = pool.get().await.unwrap_err();
    assert!(e.to_string().contains("the pool is closed"));
}

#[tokio::test(start_paused = true)]
async fn detach_and_discard_keep_counts() {
    let (pool, script) = pool("pool_max_size=2");
    let c = pool.get().await.unwrap();
    assert!(format!("{c:?}").contains("fake:5432"));
    let conn = Pooled::detach(c);
    assert_eq!(conn.id, 0);
    let s = pool.stats();
    assert_eq!((s.size, s.in_use), (0, 0));
    Pooled::discard(pool.get().await.unwrap());
    tokio::task::yield_now().await;
    let s = pool.stats();
    assert_eq!((s.size, s.in_use, s.closed_error), (0, 0, 1));
    assert_eq!(script.closed.load(Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_dirty_session_is_reset_before_anyone_else_gets_it() {
    let (pool, script) = pool("pool_max_size=1");
    script.dirty.store(true, Relaxed);
    let c = pool.get().await.unwrap();
    let waiter = tokio::spawn({
        let (pool, script) = (pool.clone(), script.clone());
        async move {
            let c = pool.get().await.unwrap();
            script.dirty.store(false, Relaxed); // this user leaves the session clean
            c.id
        }
    });
    tokio::task::yield_now().await;
    drop(c);
    // The waiter gets the same connection, and only after its reset.
    assert_eq!(waiter.await.unwrap(), 0);
    assert_eq!(script.resets.load(Relaxed), 1);
    let s = pool.stats();
    assert_eq!((s.resets, s.created, s.closed_error), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_failed_reset_closes_the_connection() {
    let (pool, script) = pool("pool_max_size=1");
    script.dirty.store(true, Relaxed);
    script.reset_fails.store(true, Relaxed);
    drop(pool.get().await.unwrap());
    assert_eq!(
        pool.get().await.unwrap().id,
        1,
        "a fresh connection, not the dirty one"
    );
    let s = pool.stats();
    assert_eq!((s.resets, s.closed_error), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn close_waits_for_a_reset_in_flight() {
    let (pool, script) = pool("");
    script.dirty.store(true, Relaxed);
    drop(pool.get().await.unwrap()); // reset spawned, not yet run
    pool.close().await;
    let s = pool.stats();
    assert_eq!((s.resets, s.closed_pool, s.size), (1, 1, 0));
    assert_eq!(script.closed.load(Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_connect_that_hangs_ends_at_the_acquire_deadline() {
    let (pool, script) = pool("pool_acquire_timeout=2s");
    script.hang.store(true, Relaxed);
    let start = Instant::now();
    let e = pool.get().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PoolTimeout);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(pool.stats().size, 0);
}

#[test]
fn returning_outside_a_runtime_never_panics() {
    let (pool, script) = pool("pool_max_size=2");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (clean, dirty) =
        rt.block_on(async { (pool.get().await.unwrap(), pool.get().await.unwrap()) });
    drop(rt);
    drop(clean); // back to idle: no runtime needed
    script.dirty.store(true, Relaxed);
    drop(dirty); // cannot be reset without a runtime: closed instead
    let s = pool.stats();
    assert_eq!((s.idle, s.closed_error, s.in_use), (1, 1, 0));
}

/// Lets the maintenance task and spawned closes run (paused time auto-advances).
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn warm_up_keeps_min_idle_ready_within_max() {
    let (pool, _) = pool("pool_min_idle=3&pool_max_size=5");
    settle().await;
    let s = pool.stats();
    assert_eq!((s.idle, s.created, s.max_size), (3, 3, 5));
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    assert_eq!(pool.stats().idle, 1);
    tokio::time::sleep(Duration::from_millis(1100)).await; // one maintenance round
    let s = pool.stats();
    assert_eq!((s.idle, s.size), (3, 5), "refilled to min idle");
    drop((a, b));

    let (small, _) = self::pool("pool_min_idle=3&pool_max_size=3");
    small.resize(2).unwrap();
    settle().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(small.stats().size, 2, "warm-up never goes above max size");
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_reaped_in_the_background_down_to_min_idle() {
    let (pool, script) = pool("pool_min_idle=1&pool_idle_timeout=10s&pool_max_size=4");
    let held: Vec<_> = futures_get(&pool, 3).await;
    drop(held);
    assert_eq!(pool.stats().idle, 3);
    tokio::time::sleep(Duration::from_secs(16)).await;
    let s = pool.stats();
    assert_eq!((s.size, s.closed_idle), (1, 2), "{s:?}");
    settle().await;
    assert_eq!(script.closed.load(Relaxed), 2);
}

async fn futures_get(pool: &Pool<Fake>, n: usize) -> Vec<Pooled<Fake>> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(pool.get().await.unwrap());
    }
    v
}

#[tokio::test(start_paused = true)]
async fn lifetime_expiry_is_applied_to_idle_connections_in_the_background() {
    let (pool, _) = pool("pool_max_lifetime=20s&pool_min_idle=2&pool_idle_timeout=off");
    settle().await;
    assert_eq!(pool.stats().created, 2);
    tokio::time::sleep(Duration::from_secs(22)).await;
    let s = pool.stats();
    assert_eq!(
        (s.closed_lifetime, s.idle, s.created),
        (2, 2, 4),
        "expired and replaced: {s:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn growing_serves_waiters_at_once() {
    let (pool, _) = pool("pool_max_size=1");
    let held = pool.get().await.unwrap();
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|c| c.id) }
    });
    settle().await;
    assert_eq!(pool.stats().waiters, 1);
    pool.resize(2).unwrap();
    assert_eq!(
        waiter.await.unwrap().unwrap(),
        1,
        "a second connection, without waiting"
    );
    assert_eq!(pool.stats().max_size, 2);
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn shrinking_closes_surplus_idle_now_and_busy_ones_on_return() {
    let (pool, _) = pool("pool_max_size=4&pool_acquire_timeout=1s");
    let mut busy = futures_get(&pool, 4).await;
    drop(busy.pop()); // one idle
    pool.resize(2).unwrap();
    let s = pool.stats();
    assert_eq!(
        (s.max_size, s.size, s.closed_resize),
        (2, 3, 1),
        "the idle one went at once: {s:?}"
    );
    drop(busy); // three come back: one closes, two stay
    let s = pool.stats();
    assert_eq!((s.size, s.idle, s.closed_resize), (2, 2, 2), "{s:?}");
    // Only two permits remain.
    let two = futures_get(&pool, 2).await;
    assert_eq!(pool.get().await.unwrap_err().kind(), ErrorKind::PoolTimeout);
    drop(two);
    pool.resize(3).unwrap();
    let three = futures_get(&pool, 3).await;
    assert_eq!(three.len(), 3);
    assert_eq!(pool.resize(0).unwrap_err().kind(), ErrorKind::Config);
    assert_eq!(
        pool.resize(usize::MAX).unwrap_err().kind(),
        ErrorKind::Config
    );
}

#[tokio::test(start_paused = true)]
async fn shrinking_under_load_then_growing_back_cancels_the_debt() {
    let (pool, _) = pool("pool_max_size=3&pool_acquire_timeout=1s");
    let busy = futures_get(&pool, 3).await;
    pool.resize(1).unwrap(); // owes two permits
    pool.resize(2).unwrap(); // now owes one
    drop(busy);
    let s = pool.stats();
    assert_eq!((s.size, s.closed_resize), (2, 1), "{s:?}");
    let two = futures_get(&pool, 2).await;
    assert_eq!(pool.get().await.unwrap_err().kind(), ErrorKind::PoolTimeout);
    drop(two);
}

#[tokio::test(start_paused = true)]
async fn a_held_connection_is_reported_once_with_where_it_was_taken() {
    let c = Config::from_url(
        "postgres://fake/db?pool_leak_detection_threshold=5s&pool_validation=never",
    )
    .unwrap();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let seen = reports.clone();
    let pool = Pool::builder(Fake::default(), &c, &c.nodes()[0])
        .on_leak(move |r| seen.lock().unwrap().push(r.clone()))
        .build();
    let line = line!() + 1;
    let held = pool.get().await.unwrap();
    let quick = pool.get().await.unwrap();
    drop(quick); // returned in time: never reported
    tokio::time::sleep(Duration::from_secs(7)).await;
    {
        let r = reports.lock().unwrap();
        assert_eq!(r.len(), 1);
        assert!(
            r[0].location.file().ends_with("pool/tests.rs"),
            "{}",
            r[0].location
        );
        assert_eq!(r[0].location.line(), line);
        assert!(r[0].held_for >= Duration::from_secs(5));
        assert_eq!(r[0].node, "fake:5432");
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(reports.lock().unwrap().len(), 1, "reported once");
    assert_eq!(pool.stats().leaks, 1);
    drop(held);
    assert!(
        pool.inner
            .leases
            .as_ref()
            .unwrap()
            .lock()
            .unwrap()
            .open
            .is_empty()
    );
}

#[tokio::test(start_paused = true)]
async fn after_connect_runs_once_per_connection_and_its_failure_is_the_callers() {
    let c = Config::from_url("postgres://fake/db?pool_validation=never").unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    let r = runs.clone();
    let pool = Pool::builder(Fake::default(), &c, &c.nodes()[0])
        .after_connect(move |conn| {
            let r = r.clone();
            Box::pin(async move {
                r.fetch_add(1, Relaxed);
                match conn.id {
                    1 => Err(Error::new(ErrorKind::Database, "set failed")),
                    2 => panic!("hook bug"),
                    _ => Ok(()),
                }
            })
        })
        .build();
    drop(pool.get().await.unwrap());
    drop(pool.get().await.unwrap());
    assert_eq!(runs.load(Relaxed), 1, "not again for a reused connection");
    let busy = pool.get().await.unwrap();
    let e = pool.get().await.unwrap_err();
    assert!(
        e.to_string()
            .contains("after_connect hook failed: set failed"),
        "{e}"
    );
    let e = pool.get().await.unwrap_err();
    assert!(e.to_string().contains("panicked: hook bug"), "{e}");
    let s = pool.stats();
    assert_eq!((s.closed_error, s.size), (2, 1), "{s:?}");
    assert_eq!(pool.get().await.unwrap().id, 3, "the pool still works");
    drop(busy);
}

#[tokio::test(start_paused = true)]
async fn before_checkout_and_after_return_can_reject_and_never_poison_the_pool() {
    let c = Config::from_url("postgres://fake/db?pool_validation=never").unwrap();
    let pool = Pool::builder(Fake::default(), &c, &c.nodes()[0])
        .before_checkout(|conn| match conn.id {
            0 => false,
            1 => panic!("checkout hook bug"),
            _ => true,
        })
        .after_return(|conn| {
            if conn.id == 3 {
                panic!("return hook bug")
            }
        })
        .build();
    let (a, b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
    assert_eq!((a.id, b.id), (0, 1));
    drop((a, b));
    assert_eq!(
        pool.get().await.unwrap().id,
        2,
        "0 and 1 were rejected and closed"
    );
    assert_eq!(pool.stats().closed_validation, 2);
    let (c2, c3) = (pool.get().await.unwrap(), pool.get().await.unwrap());
    assert_eq!((c2.id, c3.id), (2, 3));
    drop(c3); // its after_return panics: closed
    assert_eq!(pool.stats().closed_error, 1);
    drop(c2);
    assert!(format!("{pool:?}").contains("before_checkout: true"));
}

#[tokio::test(start_paused = true)]
async fn graceful_close_waits_for_returns_up_to_its_deadline() {
    let (pool, _) = pool("pool_max_size=2");
    let (a, b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(a);
    });
    let start = Instant::now();
    let still_out = pool.close_graceful(Duration::from_secs(10)).await;
    // b never comes back in time; a does after 2 s.
    assert_eq!(still_out, 1);
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_eq!(pool.stats().closed_pool, 1);
    drop(b);
    assert_eq!(pool.stats().closed_pool, 2);

    let (pool, _) = self::pool("");
    let c = pool.get().await.unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(c);
    });
    let start = Instant::now();
    assert_eq!(pool.close_graceful(Duration::from_secs(30)).await, 0);
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(1),
        "returns as soon as all are back"
    );
}

#[tokio::test(start_paused = true)]
async fn the_wait_histogram_counts_every_checkout() {
    let (pool, _) = pool("pool_max_size=1");
    for _ in 0..5 {
        drop(pool.get().await.unwrap());
    }
    let s = pool.stats();
    assert_eq!(s.acquire_wait_histogram.iter().sum::<u64>(), 5);
    assert!(
        s.acquire_wait_quantile(0.99) <= Duration::from_micros(1),
        "no waiting in paused time"
    );
}

#[test]
fn a_pool_built_outside_a_runtime_still_enforces_timeouts_and_idle_limits() {
    // No runtime at build: no maintenance task, and a timer per waiter for deadlines.
    let (pool, _) = pool("pool_max_size=1&pool_acquire_timeout=2s&pool_idle_timeout=10s");
    assert!(pool.inner.deadlines.is_none());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let held = pool.get().await.unwrap();
        let start = Instant::now();
        assert_eq!(pool.get().await.unwrap_err().kind(), ErrorKind::PoolTimeout);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        drop(held);
        tokio::time::sleep(Duration::from_secs(11)).await;
        // Nothing reaped it in the background; the checkout itself closes it.
        assert_eq!(pool.stats().idle, 1);
        assert_eq!(pool.get().await.unwrap().id, 1);
        assert_eq!(pool.stats().closed_idle, 1);
    });
    let b = Pool::builder(
        Fake::default(),
        &Config::builder().build().unwrap(),
        &pool.inner.node.clone(),
    );
    assert!(format!("{b:?}").contains("PoolBuilder"));
}

#[tokio::test(start_paused = true)]
async fn warm_up_retries_after_connect_failures() {
    let c = Config::from_url("postgres://fake/db?pool_min_idle=2&pool_validation=never").unwrap();
    let fake = Fake::default();
    fake.0.fail_next.store(3, Relaxed);
    let pool = Pool::new(fake, &c, &c.nodes()[0]);
    settle().await;
    assert!(pool.stats().connect_errors >= 1);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = pool.stats();
    assert_eq!(
        (s.idle, s.connect_errors),
        (2, 3),
        "warmed up once the node answered: {s:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_leak_hook_is_contained_and_an_awaiting_connect_hook_works() {
    let c = Config::from_url(
        "postgres://fake/db?pool_leak_detection_threshold=1s&pool_validation=never",
    )
    .unwrap();
    let pool = Pool::builder(Fake::default(), &c, &c.nodes()[0])
        .on_leak(|_| panic!("leak hook bug"))
        .after_connect(|_conn| {
            Box::pin(async {
                tokio::task::yield_now().await;
                Ok(())
            })
        })
        .build();
    let held = pool.get().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pool.stats().leaks, 1, "counted although the hook panicked");
    drop(held);
    assert_eq!(pool.get().await.unwrap().id, 0, "the pool goes on");
}

#[tokio::test(start_paused = true)]
async fn a_waiter_that_gives_up_leaves_the_deadline_queue_clean() {
    let (pool, _) = pool("pool_max_size=1&pool_acquire_timeout=30s");
    let held = pool.get().await.unwrap();
    for _ in 0..3 {
        assert!(
            tokio::time::timeout(Duration::from_millis(10), pool.get())
                .await
                .is_err()
        );
    }
    // The watchdog sleeps until the first deadline, then drops the finished entries.
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(lock(&pool.inner.deadlines.as_ref().unwrap().queue).is_empty());
    assert_eq!(pool.stats().waiters, 0);
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn a_full_wait_queue_refuses_at_once() {
    let (unbounded, _) = pool("pool_max_size=1&pool_max_waiters=off");
    assert_eq!(unbounded.stats().rejected, 0);
    let (pool, _) = pool("pool_max_size=1&pool_max_waiters=2&pool_acquire_timeout=5s");
    let held = pool.get().await.unwrap();
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get().await.map(|c| c.id) })
        })
        .collect();
    while pool.stats().waiters < 2 {
        tokio::task::yield_now().await;
    }
    let e = pool.get().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Overloaded);
    assert_eq!(e.node(), Some("fake:5432"));
    assert!(
        e.to_string().contains("2 callers are already waiting"),
        "{e}"
    );
    assert_eq!(pool.stats().rejected, 1);
    // The queued callers are served as usual.
    drop(held);
    for w in waiting {
        assert_eq!(w.await.unwrap().unwrap(), 0);
    }
    // With no bound, the queue is limited only by the acquire timeout.
    let c = Config::from_url("postgres://fake/db?pool_max_waiters=off").unwrap();
    assert_eq!(c.pool().max_waiters(), None);
}

#[tokio::test(start_paused = true)]
async fn retiring_closes_idle_connections_now_and_busy_ones_on_return() {
    let (pool, script) = pool("pool_max_size=3");
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    drop(a);
    assert_eq!(pool.retire(), 1);
    drop(b);
    let s = pool.stats();
    assert_eq!((s.closed_retired, s.size, s.idle), (2, 0, 0), "{s:?}");
    // New checkouts open new connections, which are kept.
    let c = pool.get().await.unwrap();
    assert_eq!(c.id, 2);
    drop(c);
    assert_eq!(pool.stats().idle, 1);
    tokio::task::yield_now().await;
    assert_eq!(script.closed.load(Relaxed), 2);
}

#[tokio::test(start_paused = true)]
async fn broken_or_read_only_returns_are_reported_once() {
    let c = Config::from_url("postgres://fake/db?pool_validation=never").unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let s2 = seen.clone();
    let pool = Pool::builder(Fake::default(), &c, &c.nodes()[0])
        .on_suspect(move || {
            s2.fetch_add(1, Relaxed);
        })
        .build();
    drop(pool.get().await.unwrap());
    assert_eq!(seen.load(Relaxed), 0);
    let mut conn = pool.get().await.unwrap();
    conn.read_only = true;
    drop(conn);
    assert_eq!(seen.load(Relaxed), 1);
    // Recycled: the flag does not linger into the next checkout.
    let conn = pool.get().await.unwrap();
    assert!(!conn.read_only);
    drop(conn);
    assert_eq!(seen.load(Relaxed), 1);
    let mut conn = pool.get().await.unwrap();
    conn.broken = true;
    drop(conn);
    assert_eq!(seen.load(Relaxed), 2);
    assert_eq!(pool.stats().closed_error, 1);
}

/// Checks the pool's books once everything has settled: every open connection is idle or
/// checked out, no more are open than the maximum, and every permit is back.
async fn books_balance(pool: &Pool<Fake>) -> PoolStats {
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let s = pool.stats();
        if pool.inner.resetting.load(Relaxed) == 0 && s.size == s.idle {
            break;
        }
    }
    let s = pool.stats();
    assert_eq!(s.in_use, 0, "{s:?}");
    assert_eq!(s.size, s.idle, "every open connection is idle: {s:?}");
    assert!(s.size <= s.max_size, "{s:?}");
    assert_eq!(
        pool.inner.semaphore.available_permits() as u64,
        s.max_size,
        "every permit is back: {s:?}"
    );
    s
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_statement_costs_no_connection() {
    let (pool, script) = pool("pool_max_size=1");
    let mut c = pool.get().await.unwrap();
    c.in_flight = true; // as a dropped query future leaves it
    drop(c);
    let s = books_balance(&pool).await;
    assert_eq!((s.recovered, s.closed_error, s.size), (1, 0, 1), "{s:?}");
    assert_eq!(script.cancels.load(Relaxed), 0, "it ended within the grace");
    let c = pool.get().await.unwrap();
    assert_eq!(c.id, 0, "the same connection, back in use");
    assert!(!c.in_flight);
}

#[tokio::test(start_paused = true)]
async fn a_long_abandoned_statement_is_cancelled_and_its_connection_kept_only_when_the_cancel_is_seen()
 {
    // The cancel hits recovery's own statement: it landed, so the connection is clean.
    let (pool, script) = pool("pool_max_size=1");
    script.abandoned_ms.store(60_000, Relaxed);
    script.cancel_hits_recovery.store(true, Relaxed);
    let mut c = pool.get().await.unwrap();
    c.in_flight = true;
    let start = Instant::now();
    drop(c);
    let c = pool.get().await.unwrap();
    assert!(
        start.elapsed() >= guard::RECOVER_GRACE && start.elapsed() < Duration::from_secs(1),
        "cancelled after the grace, not waited out: {:?}",
        start.elapsed()
    );
    assert_eq!(c.id, 0);
    assert_eq!(script.cancels.load(Relaxed), 1);
    assert_eq!(
        script.recovers.load(Relaxed),
        2,
        "recovery ran again after its cancel"
    );
    drop(c);

    // The cancel ended the abandoned statement, or may still be on its way: not reused.
    let (pool, script) = self::pool("pool_max_size=1");
    script.abandoned_ms.store(60_000, Relaxed);
    let mut c = pool.get().await.unwrap();
    c.in_flight = true;
    drop(c);
    let c = pool.get().await.unwrap();
    assert_eq!(c.id, 1, "a fresh connection");
    assert_eq!(script.cancels.load(Relaxed), 1);
    drop(c);
    let s = books_balance(&pool).await;
    assert_eq!((s.recovered, s.closed_error), (0, 1), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_statement_that_cannot_be_recovered_closes_its_connection() {
    let (pool, script) = pool("pool_max_size=2");
    script.recover_fails.store(true, Relaxed);
    let mut c = pool.get().await.unwrap();
    c.in_flight = true;
    drop(c);
    let s = books_balance(&pool).await;
    assert_eq!((s.recovered, s.closed_error, s.size), (0, 1, 0), "{s:?}");
    // A dirty session recovered is reset too.
    script.recover_fails.store(false, Relaxed);
    script.dirty.store(true, Relaxed);
    let mut c = pool.get().await.unwrap();
    c.in_flight = true;
    drop(c);
    let s = books_balance(&pool).await;
    assert_eq!((s.recovered, s.resets, s.size), (1, 1, 1), "{s:?}");
    // Broken for good (not merely interrupted): closed, and the node suspected.
    let mut c = pool.get().await.unwrap();
    c.broken = true;
    c.in_flight = true;
    drop(c);
    let s = books_balance(&pool).await;
    assert_eq!((s.recovered, s.closed_error), (1, 2), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn a_connection_opened_for_a_caller_who_gave_up_joins_the_pool() {
    let (pool, script) = pool("pool_max_size=2");
    script.connect_ms.store(20, Relaxed);
    let gave_up = tokio::time::timeout(Duration::from_millis(1), pool.get()).await;
    assert!(gave_up.is_err());
    let s = books_balance(&pool).await;
    assert_eq!((s.adopted, s.created, s.idle), (1, 1, 1), "{s:?}");
    // The next caller gets it without connecting.
    let c = pool.get().await.unwrap();
    assert_eq!((c.id, script.connects.load(Relaxed)), (0, 1));
    drop(c);
    // Failed connects give their permits back; a later one still succeeds.
    script.fail_next.store(2, Relaxed);
    let held = pool.get().await.unwrap();
    let gave_up = tokio::time::timeout(Duration::from_millis(1), pool.get()).await;
    assert!(gave_up.is_err());
    drop(held);
    let s = books_balance(&pool).await;
    assert_eq!((s.adopted, s.size, s.connect_errors), (2, 2, 2), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn a_checkout_storm_opens_at_most_four_connections_at_once() {
    let (pool, script) = pool("pool_max_size=16");
    script.connect_ms.store(10, Relaxed);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get().await.unwrap() })
        })
        .collect();
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap());
    }
    assert_eq!(script.most_connecting.load(Relaxed), MAX_CONNECTING as u64);
    drop(held);
    books_balance(&pool).await;
}

#[tokio::test(start_paused = true)]
async fn a_closed_pool_closes_what_is_opened_for_it() {
    let (pool, script) = pool("pool_max_size=2");
    script.connect_ms.store(20, Relaxed);
    let gave_up = tokio::time::timeout(Duration::from_millis(1), pool.get()).await;
    assert!(gave_up.is_err());
    pool.close().await;
    let s = pool.stats();
    assert_eq!((s.size, s.closed_pool, s.adopted), (0, 1, 0), "{s:?}");
    assert_eq!(script.closed.load(Relaxed), 1);
}

/// Callers that give up at every point of a checkout and of a statement (while waiting,
/// connecting, pinging, mid-statement, while the connection is recovered or reset): the
/// books always balance and the pool keeps its connections.
#[tokio::test(start_paused = true)]
async fn callers_cancelling_at_every_await_point_leave_the_pool_whole() {
    let (pool, script) = pool("pool_max_size=3&pool_min_idle=2&pool_validation=always");
    script.connect_ms.store(3, Relaxed);
    script.dirty.store(true, Relaxed);
    // Tokio's timers tick in milliseconds: cuts a millisecond apart.
    for cut_ms in 0..16 {
        let tasks: Vec<_> = (0..6)
            .map(|i| {
                let pool = pool.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    let work = async {
                        let mut c = pool.get().await.unwrap();
                        c.in_flight = true; // a statement under way
                        script.abandoned_ms.store(1 + i % 3, Relaxed);
                        tokio::time::sleep(Duration::from_millis(4)).await;
                        c.in_flight = false;
                    };
                    let _ = tokio::time::timeout(Duration::from_millis(cut_ms + i), work).await;
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let s = books_balance(&pool).await;
        assert!(s.size >= 2, "the min_idle floor holds: {s:?}");
    }
    let s = pool.stats();
    assert!(s.recovered > 0 && s.adopted > 0, "{s:?}");
    assert_eq!(
        s.closed_error, 0,
        "no connection lost to a cancellation: {s:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn warm_up_counts_connections_being_opened_for_checkouts() {
    // max 2, min_idle 2: one connection held, a checkout opening the second while warm-up
    // wants two idle ones. Never more than two open.
    let (pool, script) = pool("pool_max_size=2&pool_min_idle=2");
    script.connect_ms.store(50, Relaxed);
    books_balance(&pool).await;
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    drop(b);
    let opening = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|c| c.id) }
    });
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(pool.stats().size <= 2, "{:?}", pool.stats());
    }
    drop(a);
    opening.await.unwrap().unwrap();
    let s = books_balance(&pool).await;
    assert_eq!(s.size, 2, "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_driver_gives_the_permit_back() {
    let (pool, script) = pool("pool_max_size=1");
    script.connect_panics.store(true, Relaxed);
    let e = pool.get().await.unwrap_err();
    assert!(e.message().contains("ended early"), "{e}");
    script.connect_panics.store(false, Relaxed);
    let s = books_balance(&pool).await;
    assert_eq!(s.size, 0, "{s:?}");
    pool.get().await.unwrap();
}
