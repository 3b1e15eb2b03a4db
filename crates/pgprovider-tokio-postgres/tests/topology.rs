//! The health monitor against a real primary and standby: roles, positions, a crash, a
//! promotion found without configuration change, and rechecks on demand.

use pgprovider::Config;
use pgprovider::topology::{HealthMonitor, Role};
use pgprovider_tokio_postgres::TokioPostgres;
use std::time::Duration;

mod common;
use common::two_nodes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_learns_roles_and_finds_the_promoted_standby() {
    let (cluster, config) = two_nodes(false, "").await;
    let (p, s) = (cluster.primary(), cluster.standby(0));
    let monitor = HealthMonitor::start(TokioPostgres::new(), &config, Duration::from_millis(200));
    // A second monitor that probes only once a minute unless asked.
    let lazy = HealthMonitor::start(TokioPostgres::new(), &config, Duration::from_secs(60));
    let wait = Duration::from_secs(20);
    assert_eq!(
        monitor.wait_for_primary(wait).await.unwrap(),
        config.nodes()[0]
    );
    let st = monitor
        .wait_for(wait, |s| s[1].role == Role::Standby)
        .await
        .unwrap();
    assert!(st[0].lsn.is_some() && st[1].lsn.is_some(), "{st:?}");
    assert!(st[1].replay_lag_bytes.is_some());
    assert!(
        st[0]
            .server_version
            .as_deref()
            .unwrap()
            .starts_with(char::is_numeric)
    );
    lazy.wait_for(wait, |s| {
        s[1].role == Role::Standby && s[0].role == Role::Primary
    })
    .await
    .unwrap();

    p.crash().unwrap();
    let st = monitor.wait_for(wait, |s| !s[0].reachable).await.unwrap();
    assert_eq!(st[0].role, Role::Unknown);
    assert!(st[0].last_error.is_some());
    assert!(monitor.primary().is_none());
    let e = monitor
        .wait_for_primary(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(e.message().contains("no primary within"), "{e}");
    assert!(e.message().contains("unreachable"), "{e}");

    s.promote().await.unwrap();
    assert_eq!(
        monitor.wait_for_primary(wait).await.unwrap(),
        config.nodes()[1]
    );
    // The lazy monitor still believes the old roles until asked to look again.
    assert_eq!(lazy.statuses()[1].role, Role::Standby);
    lazy.recheck(&config.nodes()[1]);
    lazy.wait_for(Duration::from_secs(10), |s| s[1].role == Role::Primary)
        .await
        .unwrap();
    // Its stale view now has two primaries: it trusts the one on the newer timeline.
    assert_eq!(lazy.primary(), Some(config.nodes()[1].clone()));
    let split = lazy.split_brain().expect("a split brain in the stale view");
    assert_eq!(split.chosen, Some(config.nodes()[1].to_string()));
    assert_eq!(split.primaries.len(), 2);
    assert!(split.primaries[0].1 < split.primaries[1].1, "{split:?}");
    assert_eq!(lazy.split_brains(), 1);
    assert!(lazy.statuses()[0].fenced);
    let e = lazy
        .wait_for(Duration::from_millis(100), |s| !s[0].reachable)
        .await
        .unwrap_err();
    assert!(e.message().contains("did not reach"), "{e}");
    lazy.recheck(&config.nodes()[0]);
    lazy.wait_for(Duration::from_secs(10), |s| !s[0].reachable)
        .await
        .unwrap();
    assert_eq!(lazy.primary(), Some(config.nodes()[1].clone()));
    assert_eq!(lazy.split_brain(), None);
    assert!(!lazy.statuses()[0].fenced);
    assert_eq!(monitor.split_brains(), 0);
    assert!(format!("{monitor:?}").contains("statuses"));
}

async fn in_recovery(mut c: pgprovider::Pooled<TokioPostgres>) -> bool {
    use pgprovider::Queries;
    c.query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_a_failover_and_reads_respect_the_lag_bound() {
    use pgprovider::Queries;
    use pgprovider::provider::{Provider, TopologyOptions};
    let (cluster, config) = two_nodes(true, "&pool_acquire_timeout=2s").await;
    let (p, s) = (cluster.primary(), cluster.standby(0));
    let provider = Provider::new(
        TokioPostgres::new(),
        &config,
        TopologyOptions::default()
            .with_monitor_interval(Duration::from_millis(100))
            .with_failover_timeout(Duration::from_secs(20))
            .with_max_replica_lag_bytes(Some(0)),
    );
    provider
        .write()
        .await
        .unwrap()
        .execute("CREATE TABLE acked (id int PRIMARY KEY)", &[])
        .await
        .unwrap();
    // Reads go to the standby once it has caught up.
    provider
        .monitor()
        .wait_for(Duration::from_secs(20), |st| {
            st[1].role == Role::Standby && st[1].replay_lag_bytes == Some(0)
        })
        .await
        .unwrap();
    assert!(in_recovery(provider.read().conn().await.unwrap()).await);
    // A standby whose replay is paused falls behind the bound: reads go to the primary.
    s.execute("SELECT pg_wal_replay_pause()").await.unwrap();
    provider
        .write()
        .await
        .unwrap()
        .execute("INSERT INTO acked VALUES (0)", &[])
        .await
        .unwrap();
    provider
        .monitor()
        .wait_for(Duration::from_secs(20), |st| {
            st[1].replay_lag_bytes.is_some_and(|l| l > 0)
        })
        .await
        .unwrap();
    assert!(!in_recovery(provider.read().conn().await.unwrap()).await);
    s.execute("SELECT pg_wal_replay_resume()").await.unwrap();
    provider
        .monitor()
        .wait_for(Duration::from_secs(20), |st| {
            st[1].replay_lag_bytes == Some(0)
        })
        .await
        .unwrap();
    assert!(in_recovery(provider.read().conn().await.unwrap()).await);

    // A writer runs through the failover; every acknowledged write must survive it.
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (provider, progress) = (provider.clone(), progress.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failed = 0;
            let mut id = 1;
            let mut ack_times = Vec::new();
            while acked.len() < 400 {
                let r = async {
                    let mut c = provider.write().await?;
                    c.execute("INSERT INTO acked VALUES ($1)", &[&id]).await
                }
                .await;
                match r {
                    Ok(_) => {
                        acked.push(id);
                        progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        ack_times.push(std::time::Instant::now());
                    }
                    Err(_) => failed += 1,
                }
                id += 1;
            }
            (acked, failed, ack_times)
        })
    };
    // Let some writes land, then kill the primary and promote the standby.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while progress.load(std::sync::atomic::Ordering::Relaxed) < 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer made no progress"
        );
        tokio::task::yield_now().await;
    }
    p.crash().unwrap();
    let promoted = std::time::Instant::now();
    s.promote().await.unwrap();
    let (acked, failed, ack_times) = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the writer finished")
        .unwrap();
    // The first write acknowledged after the crash came from the promoted standby.
    let first_after = ack_times
        .iter()
        .find(|t| **t > promoted)
        .expect("writes resumed after the crash");
    let resumed = first_after.saturating_duration_since(promoted);
    eprintln!(
        "writes resumed {resumed:?} after the primary was killed (promotion started at once); {failed} writes failed"
    );
    // Every acknowledged write is on the new primary.
    let new_primary = provider
        .monitor()
        .wait_for_primary(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(new_primary, config.nodes()[1]);
    let mut c = provider.write().await.unwrap();
    let present: std::collections::HashSet<i32> = c
        .query("SELECT id FROM acked WHERE id > 0", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost: Vec<&i32> = acked.iter().filter(|id| !present.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

fn provider(config: &Config, interval: Duration) -> pgprovider::provider::Provider<TokioPostgres> {
    use pgprovider::provider::{Provider, TopologyOptions};
    Provider::new(
        TokioPostgres::new(),
        config,
        TopologyOptions::default()
            .with_monitor_interval(interval)
            .with_max_replica_lag_bytes(None)
            .with_breaker(pgprovider::breaker::BreakerConfig::new(
                2,
                Duration::from_secs(30),
            )),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_read_never_sees_stale_data() {
    use pgprovider::Queries;
    let (cluster, config) = two_nodes(false, "").await;
    let s = cluster.standby(0);
    let provider = provider(&config, Duration::from_millis(100));
    provider
        .monitor()
        .wait_for(Duration::from_secs(20), |st| st[1].role == Role::Standby)
        .await
        .unwrap();
    let mut w = provider.write().await.unwrap();
    w.execute("CREATE TABLE t (id int)", &[]).await.unwrap();
    cluster.wait_for_replay(s).await.unwrap();
    s.execute("SELECT pg_wal_replay_pause()").await.unwrap();
    w.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    let token = provider.consistency_token().await.unwrap();
    drop(w);
    // The standby is behind the token: without waiting, the read goes to the primary.
    let mut r = provider
        .read_after(token, Duration::ZERO)
        .conn()
        .await
        .unwrap();
    assert!(!in_recovery_ref(&mut r).await);
    let n: i64 = r
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    drop(r);
    // A plain read may see the standby's stale state; that is what tokens are for.
    let mut stale = provider.read().conn().await.unwrap();
    assert!(in_recovery_ref(&mut stale).await);
    let n: i64 = stale
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    drop(stale);
    // Waiting: the read goes to the standby once it has replayed the token.
    let after = provider.read_after(token, Duration::from_secs(10));
    let (r, ()) = tokio::join!(after.conn(), async {
        s.execute("SELECT pg_wal_replay_resume()").await.unwrap();
    });
    let mut r = r.unwrap();
    assert!(in_recovery_ref(&mut r).await);
    let n: i64 = r
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

async fn in_recovery_ref(c: &mut pgprovider::Pooled<TokioPostgres>) -> bool {
    use pgprovider::Queries;
    c.query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_killed_under_read_load_fails_no_read() {
    let (cluster, config) = two_nodes(false, "").await;
    let provider = provider(&config, Duration::from_millis(100));
    provider
        .monitor()
        .wait_for(Duration::from_secs(20), |st| st[1].role == Role::Standby)
        .await
        .unwrap();
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = {
        let (provider, progress) = (provider.clone(), progress.clone());
        tokio::spawn(async move {
            let mut failed = Vec::new();
            for _ in 0..400 {
                if let Err(e) = provider.read().query("SELECT 1", &[]).await {
                    failed.push(e.to_string());
                }
                progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            failed
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while progress.load(std::sync::atomic::Ordering::Relaxed) < 100 {
        assert!(std::time::Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    cluster.standby(0).crash().unwrap();
    let failed = reader.await.unwrap();
    assert!(failed.is_empty(), "failed reads: {failed:?}");
    // The monitor saw it; reads now go to the primary.
    provider
        .monitor()
        .wait_for(Duration::from_secs(20), |st| !st[1].reachable)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_standby_opens_its_breaker_and_reads_stop_waiting_for_it() {
    let cluster = pgprovider_testkit::TestCluster::builder()
        .standbys(1)
        .start()
        .await
        .unwrap();
    let target = format!("127.0.0.1:{}", cluster.standby(0).port())
        .parse()
        .unwrap();
    let proxy = pgprovider_testkit::FaultProxy::start(target).await.unwrap();
    let config = Config::from_url(&format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?connect_timeout=300ms&pool_acquire_timeout=400ms&query_timeout=300ms&pool_validation=always",
        cluster.primary().port(),
        proxy.port()
    ))
    .unwrap();
    // A monitor that looks once a minute: the reads meet the dead standby themselves.
    let provider = provider(&config, Duration::from_secs(60));
    provider
        .monitor()
        .wait_for(Duration::from_secs(20), |st| {
            st[1].role == Role::Standby && st[0].role == Role::Primary
        })
        .await
        .unwrap();
    provider.read().query("SELECT 1", &[]).await.unwrap();
    proxy.blackhole();
    let standby = &config.nodes()[1];
    let mut slow = Vec::new();
    for _ in 0..6 {
        let start = std::time::Instant::now();
        provider.read().query("SELECT 1", &[]).await.unwrap();
        slow.push(start.elapsed());
    }
    assert_eq!(
        provider.breaker(standby).unwrap().state(),
        pgprovider::breaker::BreakerState::Open
    );
    // Every read succeeded (on the primary); none waited much past the node's timeouts,
    // and once the breaker opened they stopped waiting at all.
    assert!(slow.iter().all(|d| *d < Duration::from_secs(2)), "{slow:?}");
    assert!(
        slow[4] < Duration::from_millis(200) && slow[5] < Duration::from_millis(200),
        "{slow:?}"
    );
    proxy.heal();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_errors_say_what_is_missing() {
    use pgprovider::provider::{Provider, TopologyOptions};
    use pgprovider::{ErrorKind, Queries};
    let url = pgprovider_testkit::shared_url().await.unwrap();
    let config = Config::from_url(&url).unwrap();
    let node = &config.nodes()[0];
    let only_standbys = Provider::new(
        TokioPostgres::new(),
        &config,
        TopologyOptions::default()
            .with_monitor_interval(Duration::from_millis(100))
            .with_read_from_primary(false),
    );
    assert!(format!("{only_standbys:?}").contains("Provider"));
    assert!(only_standbys.pool(node).is_some());
    only_standbys
        .monitor()
        .wait_for_primary(Duration::from_secs(10))
        .await
        .unwrap();
    let e = only_standbys.read().conn().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connect);
    assert!(e.message().contains("no node can serve the read"), "{e}");
    assert!(only_standbys.read().query("SELECT 1", &[]).await.is_err());
    // The primary serves reads when allowed; a statement's own error is not retried.
    let p = Provider::new(
        TokioPostgres::new(),
        &config,
        TopologyOptions::default().with_monitor_interval(Duration::from_millis(100)),
    );
    p.monitor()
        .wait_for_primary(Duration::from_secs(10))
        .await
        .unwrap();
    p.read().query("SELECT 1", &[]).await.unwrap();
    let e = p.read().query("SELEC 1", &[]).await.unwrap_err();
    assert_eq!(e.sql_state().unwrap().code(), "42601");
    // An open breaker takes its node out of reads.
    let b = p.breaker(node).unwrap();
    for _ in 0..5 {
        b.try_acquire()
            .unwrap()
            .record(&Err::<(), _>(pgprovider::Error::new(
                ErrorKind::ConnectionLost,
                "x",
            )));
    }
    let e = p.read().conn().await.unwrap_err();
    assert!(e.message().contains("circuit breaker open"), "{e}");
    // A write does not hammer a primary whose breaker is open: it waits for the monitor
    // within the failover timeout, then reports the open breaker.
    let brief = Provider::new(
        TokioPostgres::new(),
        &config,
        TopologyOptions::default()
            .with_monitor_interval(Duration::from_millis(100))
            .with_failover_timeout(Duration::from_millis(300))
            .with_breaker(pgprovider::breaker::BreakerConfig::new(
                1,
                Duration::from_millis(700),
            )),
    );
    brief
        .monitor()
        .wait_for_primary(Duration::from_secs(10))
        .await
        .unwrap();
    let bb = brief.breaker(node).unwrap();
    bb.try_acquire()
        .unwrap()
        .record(&Err::<(), _>(pgprovider::Error::new(
            ErrorKind::ConnectionLost,
            "x",
        )));
    let started = std::time::Instant::now();
    let e = brief.write().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Once the pause is over, a write is the probe that closes the breaker.
    let e2 = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match brief.write().await {
                Ok(c) => return c,
                Err(e) => assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}"),
            }
        }
    })
    .await
    .unwrap();
    drop(e2);
    assert_eq!(bb.state(), pgprovider::breaker::BreakerState::Closed);
    // No primary and no waiting: writes fail at once, naming the node's state.
    let down = Config::from_url(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres?connect_timeout=1",
        pgprovider_testkit::free_port().unwrap()
    ))
    .unwrap();
    let none = Provider::new(
        TokioPostgres::new(),
        &down,
        TopologyOptions::default().with_failover_timeout(Duration::ZERO),
    );
    let started = std::time::Instant::now();
    let e = none.write().await.unwrap_err();
    assert!(e.message().contains("no primary"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let _ = none.read().conn().await.unwrap_err();
    let mut c = brief.write().await.unwrap();
    assert!(c.query("SELECT 1", &[]).await.is_ok());
}

/// Waits (bounded) until `pool` has retired `n` connections: the provider retires them in
/// a task of its own after the monitor saw the role change.
async fn retired(pool: &pgprovider::Pool<TokioPostgres>, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pool.stats().closed_retired < n {
        assert!(std::time::Instant::now() < deadline, "{:?}", pool.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(pool.stats().closed_retired, n);
}

/// The port of the server behind `c`.
async fn port(c: &mut pgprovider::Pooled<TokioPostgres>) -> i32 {
    use pgprovider::Queries;
    c.query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_brain_is_fenced_and_writes_fail_back_after_a_demotion() {
    use pgprovider::Queries;
    use pgprovider::provider::{Provider, TopologyOptions};
    let (cluster, config) = two_nodes(false, "&pool_acquire_timeout=5s").await;
    let (a, b) = (cluster.primary(), cluster.standby(0));
    let (a_port, b_port) = (i32::from(a.port()), i32::from(b.port()));
    let options = TopologyOptions::default()
        .with_monitor_interval(Duration::from_millis(100))
        .with_failover_timeout(Duration::from_secs(20))
        .with_max_replica_lag_bytes(None);
    let provider = Provider::new(TokioPostgres::new(), &config, options.clone());
    let wait = Duration::from_secs(20);
    provider
        .monitor()
        .wait_for(wait, |s| {
            s[0].role == Role::Primary && s[1].role == Role::Standby
        })
        .await
        .unwrap();
    let mut w = provider.write().await.unwrap();
    w.execute("CREATE TABLE t (id int)", &[]).await.unwrap();
    drop(w);
    // A read leaves an idle connection in b's pool.
    let mut r = provider.read().conn().await.unwrap();
    assert_eq!(port(&mut r).await, b_port);
    drop(r);
    let b_pool = provider.pool(&config.nodes()[1]).unwrap().clone();
    assert_eq!(b_pool.stats().idle, 1);

    // Failover: b is promoted, and its pool's sessions from before are retired.
    a.crash().unwrap();
    b.promote().await.unwrap();
    let mut w = provider.write().await.unwrap();
    assert_eq!(port(&mut w).await, b_port);
    w.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    drop(w);
    retired(&b_pool, 1).await;

    // The old primary comes back read-write on the old timeline: a split brain. Only the
    // newer timeline gets writes and reads; the alarm is raised once.
    a.start().await.unwrap();
    let st = provider
        .monitor()
        .wait_for(wait, |s| s[0].fenced)
        .await
        .unwrap();
    assert_eq!(st[0].role, Role::Primary);
    assert!(st[0].timeline < st[1].timeline, "{st:?}");
    let split = provider.monitor().split_brain().unwrap();
    assert_eq!(split.chosen, Some(config.nodes()[1].to_string()));
    assert_eq!(provider.monitor().split_brains(), 1);
    for _ in 0..20 {
        let mut w = provider.write().await.unwrap();
        assert_eq!(port(&mut w).await, b_port);
        drop(w);
        let mut r = provider.read().conn().await.unwrap();
        assert_eq!(port(&mut r).await, b_port, "a read went to the fenced node");
    }
    let rows = provider
        .read()
        .query("SELECT inet_server_port()", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), b_port);

    // a rejoins as b's standby: the split brain ends and reads go to a again.
    cluster.rejoin(a, b).await.unwrap();
    provider
        .monitor()
        .wait_for(wait, |s| s[0].role == Role::Standby && !s[0].fenced)
        .await
        .unwrap();
    assert_eq!(provider.monitor().split_brain(), None);
    let mut r = provider.read().conn().await.unwrap();
    assert_eq!(port(&mut r).await, a_port);
    let n: i64 = r
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the rejoined node holds the new timeline's data");
    drop(r);

    // A provider whose monitor probes only once a minute, so it learns the next change
    // only from what its connections meet.
    let lazy = Provider::new(
        TokioPostgres::new(),
        &config,
        options.with_monitor_interval(Duration::from_secs(60)),
    );
    lazy.monitor()
        .wait_for(wait, |s| {
            s[0].role == Role::Standby && s[1].role == Role::Primary
        })
        .await
        .unwrap();
    // Switchover back to a: b stopped, a promoted, b rejoins as a's standby.
    b.stop().await.unwrap();
    a.promote().await.unwrap();
    cluster.rejoin(b, a).await.unwrap();
    // The stale view still routes the write to b, now a standby: refused as read-only.
    let mut w = lazy.write().await.unwrap();
    let e = w
        .execute("INSERT INTO t VALUES (2)", &[])
        .await
        .unwrap_err();
    assert!(e.is_read_only(), "{e}");
    drop(w);
    // That one error had b probed at once (not a minute later), and the next write, finding
    // no primary, has every node probed: it lands on a.
    lazy.monitor()
        .wait_for(Duration::from_secs(10), |s| s[1].role == Role::Standby)
        .await
        .unwrap();
    let mut w = lazy.write().await.unwrap();
    assert_eq!(port(&mut w).await, a_port);
    w.execute("INSERT INTO t VALUES (2)", &[]).await.unwrap();
    drop(w);
    // The demoted node's pool was retired when its role changed.
    retired(lazy.pool(&config.nodes()[1]).unwrap(), 1).await;
    // And the first provider follows too.
    let mut w = provider.write().await.unwrap();
    assert_eq!(port(&mut w).await, a_port);
    let n: i64 = w
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

/// A primary and a standby, with the standby listed first, plus `extra`.
async fn standby_first(extra: &str) -> (pgprovider_testkit::TestCluster, String) {
    let cluster = pgprovider_testkit::TestCluster::builder()
        .standbys(1)
        .start()
        .await
        .unwrap();
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?connect_timeout=1&pool_acquire_timeout=5s{extra}",
        cluster.standby(0).port(),
        cluster.primary().port(),
    );
    (cluster, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_session_attrs_and_load_balance_hosts_are_honoured_with_a_standby_listed_first() {
    use pgprovider::provider::{Provider, TopologyOptions};
    use pgprovider::{Pool, Queries};
    let (cluster, base) = standby_first("").await;
    cluster.wait_for_replay(cluster.standby(0)).await.unwrap();
    let recovery = "SELECT pg_is_in_recovery()";
    let opts = || {
        TopologyOptions::default()
            .with_monitor_interval(Duration::from_millis(100))
            .with_failover_timeout(Duration::from_secs(10))
    };
    // (value, a standby answers?) for the provider and for a pool over both hosts.
    for (attrs, standby) in [
        ("any", true),
        ("read-write", false),
        ("read-only", true),
        ("primary", false),
        ("standby", true),
        ("prefer-standby", true),
    ] {
        let config = Config::from_url(&format!("{base}&target_session_attrs={attrs}")).unwrap();
        let provider = Provider::new(TokioPostgres::new(), &config, opts());
        provider
            .monitor()
            .wait_for(Duration::from_secs(20), |s| {
                s[0].role == Role::Standby && s[1].role == Role::Primary
            })
            .await
            .unwrap();
        let got: bool = provider.query_one(recovery, &[]).await.unwrap().get(0);
        assert_eq!(got, standby, "provider, target_session_attrs={attrs}");
        // A transaction and a checkout take the same route.
        let in_tx: bool = provider
            .transaction(&pgprovider::TxOptions::new(), |tx| async move {
                Ok::<bool, pgprovider::Error>(tx.query_one(recovery, &[]).await?.get(0))
            })
            .await
            .unwrap();
        assert_eq!(in_tx, standby, "transaction, target_session_attrs={attrs}");
        let mut c = provider.conn().await.unwrap();
        assert_eq!(in_recovery_ref(&mut c).await, standby, "conn, {attrs}");
        drop(c);
        let pool = Pool::from_config(TokioPostgres::new(), &config);
        let got: bool = pool.query_one(recovery, &[]).await.unwrap().get(0);
        assert_eq!(got, standby, "pool, target_session_attrs={attrs}");
        let mut c = pool.get().await.unwrap();
        assert!(c.query_one(recovery, &[]).await.is_ok());
    }
    // A write under `any` lands on the standby first, is refused there (25006), and goes
    // to the primary: the caller sees success.
    let any = Config::from_url(&base).unwrap();
    let provider = Provider::new(TokioPostgres::new(), &any, opts());
    provider
        .monitor()
        .wait_for(Duration::from_secs(20), |s| {
            s[1].role == Role::Primary && s[0].reachable
        })
        .await
        .unwrap();
    provider
        .execute("CREATE TABLE tsa (id int)", &[])
        .await
        .unwrap();
    // Once the standby has the table, a transaction's write on it is refused as read-only
    // and the transaction runs again on the primary.
    cluster.wait_for_replay(cluster.standby(0)).await.unwrap();
    assert_eq!(
        provider
            .execute("INSERT INTO tsa VALUES (0)", &[])
            .await
            .unwrap(),
        1
    );
    let n = provider
        .transaction(&pgprovider::TxOptions::new(), |tx| async move {
            tx.execute("INSERT INTO tsa VALUES (1)", &[]).await
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
    let rows = provider
        .primary()
        .query("SELECT id FROM tsa", &[])
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        2,
        "the statement and the transaction both landed once"
    );
    // The retry layer is what sends it on: with retries left out, the refusal comes back.
    let no_retry = Provider::new(
        TokioPostgres::new(),
        &any,
        opts().with_retry(pgprovider::retry::RetryPolicy::new(
            pgprovider::retry::Backoff::never(),
            Duration::from_secs(10),
        )),
    );
    no_retry
        .monitor()
        .wait_for(Duration::from_secs(20), |s| {
            s[1].role == Role::Primary && s[0].reachable
        })
        .await
        .unwrap();
    let e = no_retry
        .execute("INSERT INTO tsa VALUES (2)", &[])
        .await
        .unwrap_err();
    assert!(e.is_read_only(), "{e}");
    // A pool asked for a standby when none is listed says so.
    let lonely = format!(
        "postgres://postgres@127.0.0.1:{p},127.0.0.1:{p}/postgres?connect_timeout=1&pool_acquire_timeout=1s&target_session_attrs=standby",
        p = cluster.primary().port()
    );
    let pool = Pool::from_config(TokioPostgres::new(), &Config::from_url(&lonely).unwrap());
    let e = pool.get().await.unwrap_err();
    assert!(
        format!("{e}").contains("no host matches target_session_attrs=standby"),
        "{e}"
    );
    // load_balance_hosts=random: connections of a multi-host pool and statements of a
    // provider start from a random host, so both hosts serve.
    let random =
        Config::from_url(&format!("{base}&load_balance_hosts=random&pool_max_size=1")).unwrap();
    let mut ports = std::collections::HashSet::new();
    for _ in 0..40 {
        let pool = Pool::from_config(TokioPostgres::new(), &random);
        let mut c = pool.get().await.unwrap();
        ports.insert(port(&mut c).await);
        if ports.len() == 2 {
            break;
        }
    }
    assert_eq!(ports.len(), 2, "a random start reaches both hosts");
    let provider = Provider::new(TokioPostgres::new(), &random, opts());
    provider
        .monitor()
        .wait_for(Duration::from_secs(20), |s| s.iter().all(|n| n.reachable))
        .await
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        let p: i32 = provider
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap()
            .get(0);
        seen.insert(p);
    }
    assert_eq!(
        seen.len(),
        2,
        "statements of a provider spread over both hosts"
    );
}

/// Stops (`STOP`) or resumes (`CONT`) the standby's WAL receiver: its replication is cut
/// while the server itself keeps answering.
async fn signal_wal_receiver(standby: &pgprovider_testkit::TestNode, signal: &str) {
    let pid = standby
        .query_one("SELECT pid FROM pg_stat_wal_receiver")
        .await
        .unwrap();
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_cut_off_from_its_primary_gets_no_reads_until_it_catches_up() {
    use pgprovider::provider::{Provider, TopologyOptions};
    let (cluster, config) = two_nodes(false, "&pool_acquire_timeout=5s").await;
    let s = cluster.standby(0);
    let provider = Provider::new(
        TokioPostgres::new(),
        &config,
        TopologyOptions::default()
            .with_monitor_interval(Duration::from_millis(100))
            .with_max_replica_lag_bytes(Some(64 << 10)),
    );
    provider
        .primary()
        .execute("CREATE TABLE feed (id bigint PRIMARY KEY, pad text)", &[])
        .await
        .unwrap();
    cluster.wait_for_replay(s).await.unwrap();
    let mon = provider.monitor();
    mon.wait_for(Duration::from_secs(20), |st| st[1].role == Role::Standby)
        .await
        .unwrap();
    let on_standby = || async {
        provider
            .read()
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get::<_, bool>(0)
    };
    assert!(on_standby().await, "a healthy standby serves reads");
    signal_wal_receiver(s, "STOP").await;
    // Writes go on (about 1 MiB of WAL); the cut standby receives none of it.
    let mut id = 0_i64;
    let pad = "x".repeat(1000);
    let excluded = loop {
        id += 1;
        provider
            .primary()
            .execute("INSERT INTO feed VALUES ($1, $2)", &[&id, &pad])
            .await
            .unwrap();
        let st = mon.snapshot();
        if st.statuses()[1]
            .replay_lag_bytes
            .is_some_and(|l| l > 64 << 10)
        {
            break id;
        }
        assert!(
            id < 100_000,
            "the cut standby never fell behind: {:?}",
            st.statuses()[1]
        );
    };
    // From now on no read is stale: each sees the write just acknowledged.
    for _ in 0..50 {
        id += 1;
        provider
            .primary()
            .execute("INSERT INTO feed VALUES ($1, $2)", &[&id, &pad])
            .await
            .unwrap();
        let seen: i64 = provider
            .read()
            .query_one("SELECT coalesce(max(id), 0) FROM feed", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            seen, id,
            "a stale read after the standby fell behind at {excluded}"
        );
    }
    assert!(!on_standby().await);
    // A time bound alone excludes it too, once it has lacked the primary's WAL that long.
    let by_time = Provider::new(
        TokioPostgres::new(),
        &config,
        TopologyOptions::default()
            .with_monitor_interval(Duration::from_millis(100))
            .with_max_replica_lag_bytes(None)
            .with_max_replica_lag(Some(Duration::from_millis(500))),
    );
    by_time
        .monitor()
        .wait_for(Duration::from_secs(20), |st| {
            st[1]
                .replay_lag
                .is_some_and(|l| l > Duration::from_millis(500))
        })
        .await
        .unwrap();
    let seen: i64 = by_time
        .read()
        .query_one("SELECT coalesce(max(id), 0) FROM feed", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, id, "the time bound keeps reads off the cut standby");
    // Replication resumes: the standby catches up and serves reads again.
    signal_wal_receiver(s, "CONT").await;
    mon.wait_for(Duration::from_secs(30), |st| {
        st[1].replay_lag_bytes == Some(0)
    })
    .await
    .unwrap();
    assert!(on_standby().await, "the standby is back once it caught up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_primary_dies_before_commit_runs_again_on_the_new_primary() {
    use pgprovider::provider::{Provider, TopologyOptions};
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    let (cluster, config) = two_nodes(true, "&pool_acquire_timeout=2s").await;
    let provider = Provider::new(
        TokioPostgres::new(),
        &config,
        TopologyOptions::default()
            .with_monitor_interval(Duration::from_millis(100))
            .with_failover_timeout(Duration::from_secs(20)),
    );
    provider
        .primary()
        .execute("CREATE TABLE moved (attempt int)", &[])
        .await
        .unwrap();
    let attempts = AtomicU32::new(0);
    let cluster = &cluster;
    let attempts = &attempts;
    let committed = provider
        .primary()
        .transaction(&pgprovider::TxOptions::new(), |tx| async move {
            let n = attempts.fetch_add(1, SeqCst) as i32 + 1;
            tx.execute("INSERT INTO moved VALUES ($1)", &[&n]).await?;
            if n == 1 {
                // The primary dies before COMMIT is sent; the standby takes over.
                cluster.primary().crash().unwrap();
                cluster.standby(0).promote().await.unwrap();
            }
            tx.execute("INSERT INTO moved VALUES ($1)", &[&n]).await?;
            Ok::<i32, pgprovider::Error>(n)
        })
        .await
        .unwrap();
    assert_eq!(committed, 2, "run again once");
    let rows: Vec<i32> = provider
        .primary()
        .query("SELECT attempt FROM moved", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        rows,
        vec![2, 2],
        "only the second run committed, on the new primary"
    );
    assert_eq!(
        provider.monitor().primary().unwrap(),
        config.nodes()[1],
        "the promoted standby is primary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_host_pool_runs_a_transaction_again_on_the_new_primary() {
    use pgprovider::Pool;
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    let (cluster, _) = two_nodes(false, "").await;
    let config = Config::from_url(&format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?connect_timeout=1&pool_acquire_timeout=20s&target_session_attrs=read-write",
        cluster.primary().port(),
        cluster.standby(0).port()
    ))
    .unwrap();
    let pool = Pool::from_config(TokioPostgres::new(), &config);
    pool.execute("CREATE TABLE hosts_moved (attempt int)", &[])
        .await
        .unwrap();
    let attempts = AtomicU32::new(0);
    let (cluster, attempts) = (&cluster, &attempts);
    let committed = pool
        .transaction(&pgprovider::TxOptions::new(), |tx| async move {
            let n = attempts.fetch_add(1, SeqCst) as i32 + 1;
            if n == 1 {
                cluster.primary().crash().unwrap();
                cluster.standby(0).promote().await.unwrap();
            }
            tx.execute("INSERT INTO hosts_moved VALUES ($1)", &[&n])
                .await?;
            Ok::<i32, pgprovider::Error>(n)
        })
        .await
        .unwrap();
    assert!(
        committed >= 2,
        "run again after the primary died: {committed}"
    );
    let rows: Vec<i32> = pool
        .query("SELECT attempt FROM hosts_moved", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        rows,
        vec![committed],
        "one run committed, on the promoted standby"
    );
    let mut c = pool.get().await.unwrap();
    assert!(!in_recovery_ref(&mut c).await);
    assert_eq!(port(&mut c).await, cluster.standby(0).port() as i32);
}
