//! The health monitor against a real primary and standby: roles, positions, a crash, a
//! promotion found without configuration change, and rechecks on demand.

use pgprovider::Config;
use pgprovider::topology::{HealthMonitor, Role};
use pgprovider_tokio_postgres::TokioPostgres;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_learns_roles_and_finds_the_promoted_standby() {
    let cluster = pgprovider_testkit::TestCluster::builder()
        .standbys(1)
        .start()
        .await
        .unwrap();
    let (p, s) = (cluster.primary(), cluster.standby(0));
    let config = Config::from_url(&format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?connect_timeout=1",
        p.port(),
        s.port()
    ))
    .unwrap();
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
    // Its stale view now has two primaries: it trusts neither.
    assert!(lazy.primary().is_none());
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
    let cluster = pgprovider_testkit::TestCluster::builder()
        .standbys(1)
        .synchronous(true)
        .start()
        .await
        .unwrap();
    let (p, s) = (cluster.primary(), cluster.standby(0));
    let config = Config::from_url(&format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?connect_timeout=1&pool_acquire_timeout=2s",
        p.port(),
        s.port()
    ))
    .unwrap();
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
    assert!(in_recovery(provider.read().await.unwrap()).await);
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
    assert!(!in_recovery(provider.read().await.unwrap()).await);
    s.execute("SELECT pg_wal_replay_resume()").await.unwrap();
    provider
        .monitor()
        .wait_for(Duration::from_secs(20), |st| {
            st[1].replay_lag_bytes == Some(0)
        })
        .await
        .unwrap();
    assert!(in_recovery(provider.read().await.unwrap()).await);

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
