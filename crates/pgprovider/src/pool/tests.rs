//! The pool's state machine against a scripted fake driver, with paused time.

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
}

#[derive(Clone, Default)]
struct Fake(Arc<Script>);

struct FakeConn {
    id: u64,
    broken: bool,
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
        let id = s.connects.fetch_add(1, Relaxed);
        Ok(FakeConn {
            id,
            broken: false,
            script: s.clone(),
        })
    }
}

impl Connection for FakeConn {
    fn is_broken(&self) -> bool {
        self.broken
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
        CancelToken::new(|| async { Ok(()) })
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
