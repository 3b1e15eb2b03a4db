//! A password rotated under load on a throwaway cluster that asks for it (scram-sha-256):
//! no operation fails, new connections use the new secret, old ones are recycled, and a
//! secret the server does not know yet falls back to the previous one.

use pgprovider::Config;
use pgprovider::provider::{Provider, TopologyOptions};
use pgprovider::secrets::{FileSecret, RotationOptions};
use pgprovider_tokio_postgres::TokioPostgres;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Writers inserting through `provider` until stopped: (acknowledged, failed).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(provider: &Provider<TokioPostgres>, writers: usize) -> Load {
        let (stop, ok, failed) = (Arc::default(), Arc::default(), Arc::default());
        let tasks = (0..writers)
            .map(|_| {
                let (p, stop, ok, failed): (_, Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>) = (
                    provider.clone(),
                    Arc::clone(&stop),
                    Arc::clone(&ok),
                    Arc::clone(&failed),
                );
                tokio::spawn(async move {
                    while !stop.load(Relaxed) {
                        match p.execute("INSERT INTO rotated DEFAULT VALUES", &[]).await {
                            Ok(_) => ok.fetch_add(1, Relaxed),
                            Err(e) => {
                                eprintln!("failed: {e:?}");
                                failed.fetch_add(1, Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Waits until `n` more writes were acknowledged.
    async fn progress(&self, n: u64) {
        let target = self.ok.load(Relaxed) + n;
        tokio::time::timeout(Duration::from_secs(30), async {
            while self.ok.load(Relaxed) < target && self.failed.load(Relaxed) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (self.ok.load(Relaxed), self.failed.load(Relaxed))
    }
}

/// Waits until no session of user `app` opened before `since` is left, but the one
/// the health monitor keeps (it authenticated once and stays); returns the count left.
async fn recycled(cluster: &pgprovider_testkit::TestCluster, since: &str) -> i64 {
    let client = cluster.primary().connect().await.unwrap();
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND backend_start < '{since}'"
    );
    let mut left = i64::MAX;
    for _ in 0..400 {
        left = client.query_one(&sql, &[]).await.unwrap().get(0);
        if left <= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    left
}

async fn server_now(cluster: &pgprovider_testkit::TestCluster) -> String {
    let client = cluster.primary().connect().await.unwrap();
    client
        .query_one("SELECT clock_timestamp()::text", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_rotated_under_load_fails_no_operation() {
    let cluster = pgprovider_testkit::TestCluster::builder()
        .hba("host all app 127.0.0.1/32 scram-sha-256")
        .start()
        .await
        .unwrap();
    let primary = cluster.primary();
    primary
        .execute(
            "CREATE ROLE app LOGIN PASSWORD 'one'; CREATE TABLE rotated (id bigserial); \
             GRANT ALL ON rotated, rotated_id_seq TO app",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("password");
    std::fs::write(&secret, "one\n").unwrap();
    let config = Config::from_url(&format!(
        "postgres://app@127.0.0.1:{}/postgres?connect_timeout=2&pool_max_size=4",
        primary.port()
    ))
    .unwrap();
    let provider = Provider::builder(TokioPostgres::new(), &config)
        .topology(TopologyOptions::default().with_monitor_interval(Duration::from_millis(100)))
        .secret(
            FileSecret::new(&secret),
            RotationOptions::default()
                .with_check_every(None)
                .with_recycle_within(Duration::from_millis(500))
                .with_grace(Duration::from_secs(60)),
        )
        .build();
    provider
        .monitor()
        .wait_for_primary(Duration::from_secs(20))
        .await
        .unwrap();
    let load = Load::start(&provider, 4);
    load.progress(200).await;

    // The vault changes the password on the server, then in the file.
    primary
        .execute("ALTER ROLE app PASSWORD 'two'")
        .await
        .unwrap();
    load.progress(100).await;
    std::fs::write(&secret, "two\n").unwrap();
    let since = server_now(&cluster).await;
    assert!(provider.rotate_secret().await.unwrap());
    assert!(!provider.rotate_secret().await.unwrap(), "unchanged");
    // Every pooled session is replaced within the window (the old password no longer
    // works: each new one authenticated with the new secret).
    assert!(recycled(&cluster, &since).await <= 1);
    load.progress(200).await;
    let stats = provider.rotation().unwrap().stats();
    assert_eq!((stats.rotations, stats.fallbacks), (1, 0), "{stats:?}");

    // The file changes first this time: the server refuses the new secret, and new
    // connections fall back to the previous one (loudly) instead of failing.
    std::fs::write(&secret, "three\n").unwrap();
    let since = server_now(&cluster).await;
    assert!(provider.rotate_secret().await.unwrap());
    assert!(recycled(&cluster, &since).await <= 1);
    load.progress(200).await;
    let fallbacks = provider.rotation().unwrap().stats().fallbacks;
    assert!(fallbacks >= 1, "{:?}", provider.rotation().unwrap().stats());
    // Once the server has it, new connections use it.
    primary
        .execute("ALTER ROLE app PASSWORD 'three'")
        .await
        .unwrap();
    let since = server_now(&cluster).await;
    provider.recycle_within(Duration::from_millis(200));
    assert!(recycled(&cluster, &since).await <= 1);
    // (Attempts begun before the server had it may still have fallen back.) Every
    // connection opened from now on authenticates with the current secret.
    let fallbacks = provider.rotation().unwrap().stats().fallbacks;
    let since = server_now(&cluster).await;
    provider.recycle_within(Duration::from_millis(200));
    assert!(recycled(&cluster, &since).await <= 1);
    load.progress(200).await;
    assert_eq!(provider.rotation().unwrap().stats().fallbacks, fallbacks);

    // Server and file change and nobody calls rotate_secret: new connections, refused,
    // read the source again themselves (and the pools recycle on the change).
    primary
        .execute("ALTER ROLE app PASSWORD 'four'")
        .await
        .unwrap();
    std::fs::write(&secret, "four\n").unwrap();
    let since = server_now(&cluster).await;
    provider.recycle_within(Duration::from_millis(200));
    assert!(recycled(&cluster, &since).await <= 1);
    load.progress(200).await;
    assert_eq!(provider.rotation().unwrap().stats().rotations, 3);

    let (ok, failed) = load.stop().await;
    assert_eq!(failed, 0, "no operation may fail during a rotation");
    let client = primary.connect().await.unwrap();
    let rows: i64 = client
        .query_one("SELECT count(*) FROM rotated", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows as u64, ok, "every acknowledged write is there");
    // A source that cannot be read keeps the current secret.
    std::fs::remove_file(&secret).unwrap();
    assert!(provider.rotate_secret().await.is_err());
    assert_eq!(provider.rotation().unwrap().stats().failures, 1);
    let n: i64 = provider
        .query_one("SELECT count(*) FROM rotated", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n as u64, ok);
    provider.close().await;
}

/// A source that counts its reads and hands out what it is told.
struct Counted(Arc<AtomicU64>, Arc<std::sync::Mutex<String>>);

impl pgprovider::secrets::SecretSource for Counted {
    fn describe(&self) -> String {
        "a counted test source".into()
    }
    fn fetch(&self) -> pgprovider::observe::BoxFuture<'_, pgprovider::Result<pgprovider::Secret>> {
        self.0.fetch_add(1, Relaxed);
        let v = self.1.lock().unwrap().clone();
        Box::pin(async move { Ok(pgprovider::Secret::new(v)) })
    }
}

/// Waits (up to 5 s) until `f` holds.
async fn until(f: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_is_read_every_check_and_a_change_recycles_the_pools() {
    let reads = Arc::new(AtomicU64::new(0));
    let value = Arc::new(std::sync::Mutex::new("a".to_owned()));
    let config = super::common::config("&application_name=rotation-poll&pool_max_size=2").await;
    let provider = Provider::builder(TokioPostgres::new(), &config)
        .secret(
            Counted(reads.clone(), value.clone()),
            RotationOptions::default()
                .with_check_every(Some(Duration::from_millis(20)))
                .with_recycle_within(Duration::from_millis(10)),
        )
        .build();
    provider
        .monitor()
        .wait_for_primary(Duration::from_secs(20))
        .await
        .unwrap();
    provider.execute("SELECT 1", &[]).await.unwrap();
    let at = reads.load(Relaxed);
    until(|| reads.load(Relaxed) >= at + 3).await;
    assert_eq!(provider.rotation().unwrap().stats().rotations, 0);
    *value.lock().unwrap() = "b".to_owned();
    until(|| provider.rotation().unwrap().stats().rotations == 1).await;
    // The connection opened before the change goes when it is next used.
    let closed = |p: &Provider<TokioPostgres>| p.stats()[0].1.closed_lifetime;
    let before = closed(&provider);
    tokio::time::sleep(Duration::from_millis(50)).await;
    provider.execute("SELECT 1", &[]).await.unwrap();
    provider.execute("SELECT 1", &[]).await.unwrap();
    assert!(closed(&provider) > before, "{:?}", provider.stats());
    provider.close().await;
    // Without a rotation, rotate_secret says so.
    let plain = Provider::new(TokioPostgres::new(), &config, TopologyOptions::default());
    let e = plain.rotate_secret().await.unwrap_err();
    assert!(e.message().contains("no rotating secret"), "{e}");
    let e = plain.check_grants().await.unwrap_err();
    assert!(e.message().contains("no access policy"), "{e}");
    assert!(plain.firewall().is_none() && plain.access().is_none() && plain.rotation().is_none());
    assert!(format!("{:?}", provider.rotation().unwrap()).contains("a counted test source"));
}
