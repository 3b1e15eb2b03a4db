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
