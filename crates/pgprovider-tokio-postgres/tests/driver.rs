//! The tokio-postgres driver and the pool against the shared server
//! (`PGPROVIDER_TEST_URL`, default `postgres://postgres@127.0.0.1:5432/test`).

use pgprovider::{Config, Connection, DriverRegistry, ErrorKind, Pool, Pooled, Queries, SqlState};
use pgprovider_tokio_postgres::TokioPostgres;
use std::time::Duration;

mod common;
use common::{config, pool};

#[tokio::test]
async fn queries_and_reuse() {
    let pool = pool("&pool_max_size=2").await;
    {
        let mut c = pool.get().await.unwrap();
        let rows = c
            .simple_query("SELECT 1 AS one, NULL AS nothing; SELECT 'x' AS x")
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].get_by_name("one"), Some("1"));
        assert_eq!(rows[0].get_by_name("nothing"), None);
        assert_eq!(rows[1].get_by_name("x"), Some("x"));
        assert!(c.node().contains(':'));
        c.ping().await.unwrap();
    }
    let pid_a = pid(&mut pool.get().await.unwrap()).await;
    let pid_b = pid(&mut pool.get().await.unwrap()).await;
    assert_eq!(pid_a, pid_b, "the idle connection is reused");
    let s = pool.stats();
    assert_eq!(
        (s.created, s.acquired, s.size, s.idle, s.in_use),
        (1, 3, 1, 1, 0)
    );
    // Typed queries through the driver's own client.
    let mut c = pool.get().await.unwrap();
    let n: i32 = c
        .client()
        .query_one("SELECT 41 + 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 42);
    drop(c);
    pool.close().await;
    assert!(pool.is_closed());
    assert_eq!(pool.get().await.unwrap_err().kind(), ErrorKind::PoolClosed);
    assert_eq!(pool.stats().closed_pool, 1);
}

async fn pid(c: &mut Pooled<TokioPostgres>) -> String {
    c.simple_query("SELECT pg_backend_pid()").await.unwrap()[0]
        .get(0)
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn server_errors_keep_sqlstate_and_fields() {
    let pool = pool("").await;
    let mut c = pool.get().await.unwrap();
    c.simple_query("CREATE TEMP TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    c.simple_query("INSERT INTO t VALUES (1)").await.unwrap();
    let e = c
        .simple_query("INSERT INTO t VALUES (1)")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Database);
    assert_eq!(e.sql_state(), Some(SqlState::UNIQUE_VIOLATION));
    let f = e.db_fields().unwrap();
    assert_eq!(f.constraint.as_deref(), Some("t_pkey"));
    assert_eq!(f.table.as_deref(), Some("t"));
    assert!(f.detail.as_deref().unwrap().contains("(id)=(1)"));
    assert!(e.node().is_some());
    let e = c.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(e.sql_state(), Some(SqlState::SYNTAX_ERROR));
    // The connection stays usable after server errors.
    assert_eq!(
        c.simple_query("SELECT 2").await.unwrap()[0].get(0),
        Some("2")
    );
}

#[tokio::test]
async fn reset_rolls_back_and_clears_settings() {
    let pool = pool("").await;
    let mut c = pool.get().await.unwrap();
    c.simple_query("CREATE TEMP TABLE r (x int)").await.unwrap();
    c.simple_query("BEGIN; INSERT INTO r VALUES (1); SET application_name = 'changed'")
        .await
        .unwrap();
    assert!(c.needs_reset());
    c.reset().await.unwrap();
    assert!(!c.needs_reset());
    let row = &c
        .simple_query(
            "SELECT now() = statement_timestamp(), current_setting('application_name'), \
             to_regclass('pg_temp.r') IS NULL",
        )
        .await
        .unwrap()[0];
    assert_eq!(row.get(0), Some("t"), "the transaction was rolled back");
    assert_eq!(
        row.get(1),
        Some("pgprovider-test"),
        "settings back to connection defaults"
    );
    assert_eq!(row.get(2), Some("t"), "temporary tables dropped");
}

#[tokio::test]
async fn a_query_dropped_mid_flight_is_recovered_and_never_handed_out_dirty() {
    let app = "pgprovider-drop-mid-flight";
    let pool = pool(&format!("&application_name={app}&pool_max_size=1")).await;
    let observer = self::pool("").await;
    let mut c = pool.get().await.unwrap();
    let first = pid(&mut c).await;

    // A short statement abandoned by its caller: drained, the connection kept.
    let r = tokio::time::timeout(
        Duration::from_millis(10),
        c.simple_query("SELECT pg_sleep(0.05)"),
    )
    .await;
    assert!(r.is_err(), "the query should still be running");
    assert!(c.interrupted() && c.is_broken(), "never reused as it is");
    drop(c);
    let mut c = pool.get().await.unwrap();
    assert!(!c.interrupted());
    assert_eq!(pid(&mut c).await, first, "the same connection, recovered");
    let s = pool.stats();
    assert_eq!((s.recovered, s.closed_error), (1, 0), "{s:?}");

    // A harmless typed statement (no setting, no transaction) abandoned: the connection
    // goes straight back (no reset), and the next statement queues behind it and gets its
    // own rows.
    let resets = pool.stats().resets;
    let r = tokio::time::timeout(
        Duration::from_millis(10),
        c.query("SELECT pg_sleep(0.05), 'old'", &[]),
    )
    .await;
    assert!(r.is_err());
    drop(c);
    let mut c = pool.get().await.unwrap();
    assert!(!c.interrupted());
    let row = c.query_one("SELECT 'new'::text", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "new");
    assert_eq!(pid(&mut c).await, first);
    let s = pool.stats();
    assert_eq!(
        (s.recovered, s.resets, s.closed_error),
        (2, resets, 0),
        "{s:?}"
    );

    // Abandoned inside a transaction it opened, after changing a setting: rolled back and
    // reset before anyone gets the connection again.
    let r = tokio::time::timeout(
        Duration::from_millis(10),
        c.simple_query("BEGIN; SET application_name = 'leaked'; SELECT pg_sleep(0.05)"),
    )
    .await;
    assert!(r.is_err());
    drop(c);
    let mut c = pool.get().await.unwrap();
    assert_eq!(pid(&mut c).await, first);
    let row = &c
        .simple_query(
            "SELECT current_setting('application_name'), \
             txid_current_if_assigned() IS NULL AND now() = statement_timestamp()",
        )
        .await
        .unwrap()[0];
    assert_eq!(row.get(0), Some(app), "the setting was reset");
    assert_eq!(row.get(1), Some("t"), "no transaction carried over");
    assert_eq!(pool.stats().recovered, 3);

    // A long statement nobody waits for: cancelled on the server after a short grace.
    let r = tokio::time::timeout(
        Duration::from_millis(50),
        c.simple_query("SELECT pg_sleep(30)"),
    )
    .await;
    assert!(r.is_err());
    drop(c);
    let got = tokio::time::timeout(Duration::from_secs(3), pool.get()).await;
    let mut c = got
        .expect("the connection came back (or was replaced) within a few seconds")
        .unwrap();
    pid(&mut c).await;
    let running: i64 = observer
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
             AND query = 'SELECT pg_sleep(30)' AND state = 'active'",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        running, 0,
        "the abandoned statement was cancelled on the server"
    );
    let s = pool.stats();
    assert_eq!(s.recovered + s.closed_error, 4, "{s:?}");
}

#[tokio::test]
async fn cancel_token_stops_a_running_query() {
    let pool = pool("").await;
    let mut c = pool.get().await.unwrap();
    let token = c.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        token.cancel().await
    });
    let e = c.simple_query("SELECT pg_sleep(30)").await.unwrap_err();
    assert_eq!(e.sql_state(), Some(SqlState::QUERY_CANCELED));
    canceller.await.unwrap().unwrap();
    assert!(!c.is_broken());
}

#[tokio::test]
async fn missing_database_fails_fast_without_retrying() {
    let shared = config("").await;
    let node = shared.nodes()[0].clone();
    let c = Config::builder()
        .with_node(node.host().to_string(), node.port())
        .with_dbname("no_such_db_pgprovider")
        .with_acquire_timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let pool = Pool::new(TokioPostgres::new(), &c, &c.nodes()[0]);
    let start = std::time::Instant::now();
    let e = pool.get().await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "not retried until the deadline"
    );
    assert_eq!(e.sql_state(), Some(SqlState::INVALID_CATALOG_NAME));
    assert_eq!(e.node(), Some(node.to_string().as_str()));
    assert!(e.to_string().contains("create the database"), "{e}");
    assert_eq!(pool.stats().connect_errors, 1);
}

#[tokio::test]
async fn unreachable_node_times_out_with_the_last_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = Config::from_url(&format!(
        "postgres://postgres@127.0.0.1:{port}/x?pool_acquire_timeout=400ms"
    ))
    .unwrap();
    let pool = Pool::new(TokioPostgres::new(), &c, &c.nodes()[0]);
    let e = pool.get().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PoolTimeout);
    let text = e.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(
        text.contains("last connection error: cannot connect"),
        "{text}"
    );
    let s = pool.stats();
    assert_eq!(s.timeouts, 1);
    assert!(s.connect_errors >= 2, "backed off and retried: {s:?}");
    assert!(s.connect_errors < 20, "backoff, not a spin: {s:?}");
}

#[tokio::test]
async fn registry_creates_pools_by_name() {
    let mut reg = DriverRegistry::new();
    reg.register(TokioPostgres::new());
    assert_eq!(reg.names(), ["tokio-postgres"]);
    let e = reg.get("sqlx").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(
        e.to_string().contains("registered drivers: tokio-postgres"),
        "{e}"
    );
    let c = config("").await;
    let by_name = reg.pool("tokio-postgres", &c, &c.nodes()[0]).unwrap();
    assert_eq!(
        by_name
            .get()
            .await
            .unwrap()
            .simple_query("SELECT 3")
            .await
            .unwrap()[0]
            .get(0),
        Some("3")
    );
    let e = reg.pool("diesel", &c, &c.nodes()[0]).unwrap_err();
    assert!(
        e.to_string().contains("registered drivers: tokio-postgres"),
        "{e}"
    );
    let driver = reg.get("tokio-postgres").unwrap();
    assert_eq!(format!("{driver:?}"), "AnyDriver(tokio-postgres)");
    assert_eq!(pgprovider::Driver::name(&driver), "tokio-postgres");
    let pool = Pool::new(driver, &c, &c.nodes()[0]);
    let mut conn = pool.get().await.unwrap();
    assert_eq!(
        conn.simple_query("SELECT 7").await.unwrap()[0].get(0),
        Some("7")
    );
    conn.ping().await.unwrap();
    assert_eq!(format!("{:?}", *conn), "AnyConnection");
    conn.reset().await.unwrap();
    assert!(!conn.is_broken());
    let _ = conn.cancel_token();
    let detached = Pooled::detach(conn);
    detached.close().await;
    assert_eq!(pool.stats().size, 0);
    assert!(format!("{reg:?}").contains("tokio-postgres"));
}

#[tokio::test]
async fn a_session_left_dirty_is_clean_for_the_next_user() {
    let pool = pool("&pool_max_size=1").await;
    {
        let mut c = pool.get().await.unwrap();
        c.simple_query("SELECT 1").await.unwrap();
        assert!(!c.needs_reset(), "plain queries leave nothing to reset");
        c.simple_query("CREATE TEMP TABLE leak (x int)")
            .await
            .unwrap();
        c.simple_query("SET statement_timeout = '1min'; SELECT pg_advisory_lock(4242); BEGIN; INSERT INTO leak VALUES (1)")
            .await
            .unwrap();
        assert!(c.needs_reset());
    } // returned dirty: inside a transaction, with a setting, a lock and a temp table
    let mut c = pool.get().await.unwrap();
    let row = &c
        .simple_query(
            "SELECT current_setting('statement_timeout'), now() = statement_timestamp(), \
             (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), \
             to_regclass('pg_temp.leak') IS NULL",
        )
        .await
        .unwrap()[0];
    assert_eq!(row.get(0), Some("0"), "setting reset");
    assert_eq!(row.get(1), Some("t"), "no transaction left open");
    assert_eq!(row.get(2), Some("0"), "advisory lock released");
    assert_eq!(row.get(3), Some("t"), "temp table dropped");
    let s = pool.stats();
    assert_eq!(
        (s.created, s.resets),
        (1, 1),
        "the same connection, reset once"
    );
    // The raw client is untracked, so using it marks the session for reset.
    let _ = c.client();
    assert!(c.needs_reset());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_makes_the_pool_back_off_then_recover() {
    let cluster = pgprovider_testkit::TestCluster::builder()
        .setting("max_connections", "4")
        .setting("superuser_reserved_connections", "0")
        .start()
        .await
        .unwrap();
    let p = cluster.primary();
    let mut hogs = Vec::new();
    for _ in 0..4 {
        hogs.push(p.connect().await.unwrap());
    }
    let c = Config::from_url(&format!("{}?pool_acquire_timeout=1s", p.url())).unwrap();
    let pool = Pool::new(TokioPostgres::new(), &c, &c.nodes()[0]);
    let e = pool.get().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PoolTimeout, "{e}");
    assert!(e.to_string().contains("SQLSTATE 53300"), "{e}");
    let tries = pool.stats().connect_errors;
    assert!(
        (2..=8).contains(&tries),
        "backed off, not spun: {tries} tries in 1 s"
    );
    // A slot frees up: the next checkout succeeds.
    drop(hogs.pop());
    let c2 = Config::from_url(&format!("{}?pool_acquire_timeout=10s", p.url())).unwrap();
    let pool = Pool::new(TokioPostgres::new(), &c2, &c2.nodes()[0]);
    pool.get().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_times_out_the_connect_and_unix_sockets_work() {
    let cluster = pgprovider_testkit::TestCluster::start().await.unwrap();
    let p = cluster.primary();
    // Through the server's unix socket directory.
    let sock = cluster.dir().join("primary/sock");
    let c = Config::builder()
        .with_host(sock.to_str().unwrap())
        .with_port(p.port())
        .build()
        .unwrap();
    let pool = Pool::new(TokioPostgres::new(), &c, &c.nodes()[0]);
    let mut conn = pool.get().await.unwrap();
    let addr = conn
        .simple_query("SELECT coalesce(inet_client_addr()::text, 'local')")
        .await
        .unwrap();
    assert_eq!(addr[0].get(0), Some("local"));
    drop(conn);

    // A paused server accepts the TCP connection and never answers the startup.
    p.pause().unwrap();
    let c = Config::from_url(&format!("{}?connect_timeout=300ms", p.url())).unwrap();
    let params = c.connect_params(&c.nodes()[0]).await.unwrap();
    let e = pgprovider::Driver::connect(&TokioPostgres::new(), &params)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connect);
    assert!(e.to_string().contains("timed out after 300ms"), "{e}");
    p.resume().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_from_every_source_and_startup_options() {
    let cluster = pgprovider_testkit::TestCluster::builder()
        .hba("host all app 127.0.0.1/32 scram-sha-256")
        .start()
        .await
        .unwrap();
    let p = cluster.primary();
    p.execute("CREATE ROLE app LOGIN PASSWORD 's3cret:/@'")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "s3cret:/@\n").unwrap();
    let base = format!("postgres://app@127.0.0.1:{}/postgres", p.port());
    let pw_file = dir.path().join("pw").display().to_string();
    for url in [
        format!(
            "postgres://app:s3cret%3A%2F%40@127.0.0.1:{}/postgres",
            p.port()
        ),
        format!("{base}?password_file={pw_file}"),
        format!("{base}?password_command=printf%20%27s3cret:/@%27"),
    ] {
        let sep = if url.contains('?') { '&' } else { '?' };
        let c =
            Config::from_url(&format!("{url}{sep}options=-c%20statement_timeout%3D1234")).unwrap();
        let pool = Pool::new(TokioPostgres::new(), &c, &c.nodes()[0]);
        let mut conn = pool.get().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let row = &conn
            .simple_query("SELECT current_user, current_setting('statement_timeout')")
            .await
            .unwrap()[0];
        assert_eq!(
            (row.get(0), row.get(1)),
            (Some("app"), Some("1234ms")),
            "{url}"
        );
    }
    // A wrong password is an authentication error, reported at once and never retried.
    let c = Config::from_url(&format!(
        "postgres://app:wrong@127.0.0.1:{}/postgres?pool_acquire_timeout=20s",
        p.port()
    ))
    .unwrap();
    let pool = Pool::new(TokioPostgres::new(), &c, &c.nodes()[0]);
    let start = std::time::Instant::now();
    let e = pool.get().await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert_eq!(e.sql_state(), Some(SqlState::INVALID_PASSWORD));
    assert!(
        e.to_string().contains("check the user name and password"),
        "{e}"
    );
    assert!(
        !e.to_string().contains("wrong") && !format!("{e:?}").contains("wrong"),
        "{e:?}"
    );
    assert_eq!(pool.stats().connect_errors, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_backend_is_never_handed_out_again() {
    let cluster = pgprovider_testkit::TestCluster::start().await.unwrap();
    let p = cluster.primary();
    let c = Config::from_url(&format!("{}?pool_max_size=1", p.url())).unwrap();
    let pool = Pool::new(TokioPostgres::new(), &c, &c.nodes()[0]);
    let mut conn = pool.get().await.unwrap();
    assert!(format!("{:?}", *conn).contains("PgConnection"));
    let victim = pid(&mut conn).await;
    p.execute(&format!("SELECT pg_terminate_backend({victim})"))
        .await
        .unwrap();
    let e = conn.simple_query("SELECT 1").await.unwrap_err();
    assert!(e.is_connection_lost(), "{e:?}");
    let e = conn.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionLost, "{e}");
    assert!(e.to_string().contains("the connection is closed"), "{e}");
    assert!(conn.is_broken());
    drop(conn);
    let mut conn = pool.get().await.unwrap();
    assert_ne!(pid(&mut conn).await, victim);
    assert_eq!(pool.stats().closed_error, 1);

    // A cancel request to a server that is gone fails with a clear error.
    let token = conn.cancel_token();
    drop(conn);
    p.stop().await.unwrap();
    let e = token.cancel().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connect);
    assert!(
        e.to_string().contains("cannot send the cancel request"),
        "{e}"
    );
}

/// Waits until the number of server backends with `app` satisfies `ok`, or fails with `what`.
async fn wait_for_backends(
    p: &pgprovider_testkit::TestNode,
    app: &str,
    ok: impl Fn(usize) -> bool,
    within: Duration,
    what: &str,
) {
    let deadline = std::time::Instant::now() + within;
    while !ok(backends(p, app).await) {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn backends(p: &pgprovider_testkit::TestNode, app: &str) -> usize {
    p.query_one(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}'"
    ))
    .await
    .unwrap()
    .parse()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_lifetime_resize_leaks_and_graceful_close_on_a_real_server() {
    let cluster = pgprovider_testkit::TestCluster::start().await.unwrap();
    let p = cluster.primary();
    let c = Config::from_url(&format!(
        "{}?application_name=lifecycle&pool_min_idle=2&pool_max_size=4&pool_max_lifetime=2s&pool_leak_detection_threshold=300ms&pool_acquire_timeout=2s",
        p.url()
    ))
    .unwrap();
    let leaks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = leaks.clone();
    let pool = Pool::builder(TokioPostgres::new(), &c, &c.nodes()[0])
        .on_leak(move |r| seen.lock().unwrap().push(r.location.line()))
        .build();

    // Warm-up: two connections open on the server before anyone asks.
    wait_for_backends(
        p,
        "lifecycle",
        |n| n >= 2,
        Duration::from_secs(10),
        "warm-up did not happen",
    )
    .await;

    // Lifetime: after 2 s (less up to 1/8 jitter) a connection is replaced.
    let first = pid(&mut pool.get().await.unwrap()).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let later = pid(&mut pool.get().await.unwrap()).await;
    assert_ne!(first, later, "an expired connection is not reused");
    assert!(pool.stats().closed_lifetime >= 1);

    // Leak report, with the line of the checkout.
    let line = line!() + 1;
    let held = pool.get().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(*leaks.lock().unwrap(), vec![line]);
    assert_eq!(pool.stats().leaks, 1);

    // Resize: shrinking to one closes the idle surplus on the server within a second.
    pool.resize(1).unwrap();
    wait_for_backends(
        p,
        "lifecycle",
        |n| n <= 1,
        Duration::from_secs(2),
        "shrink did not take effect",
    )
    .await;
    let e = pool.get().await.unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::PoolTimeout,
        "the held connection is the only one"
    );
    pool.resize(3).unwrap();
    let extra = pool.get().await.unwrap();

    // Graceful close: waits for the returns, then nothing is left on the server.
    let returner = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(held);
        drop(extra);
    });
    assert_eq!(pool.close_graceful(Duration::from_secs(10)).await, 0);
    returner.await.unwrap();
    wait_for_backends(
        p,
        "lifecycle",
        |n| n == 0,
        Duration::from_secs(5),
        "connections left open after close",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_goes_away_and_comes_back() {
    let cluster = pgprovider_testkit::TestCluster::start().await.unwrap();
    let p = cluster.primary();
    let proxy = pgprovider_testkit::FaultProxy::start(p.addr().parse().unwrap())
        .await
        .unwrap();
    let c = Config::from_url(&format!(
        "postgres://postgres@{}/postgres?pool_acquire_timeout=1s&connect_timeout=300ms&pool_validation=always",
        proxy.addr()
    ))
    .unwrap();
    let pool = Pool::new(TokioPostgres::new(), &c, &c.nodes()[0]);
    pool.get()
        .await
        .unwrap()
        .simple_query("SELECT 1")
        .await
        .unwrap();

    // Network gone without a FIN: the idle connection fails validation, new ones time
    // out, and the caller waits no longer than the acquire timeout.
    proxy.blackhole();
    let start = std::time::Instant::now();
    let e = pool.get().await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(e.kind(), ErrorKind::PoolTimeout);
    assert_eq!(e.node(), Some(proxy.addr().to_string().as_str()));
    proxy.heal();
    proxy.reset_all();
    pool.get()
        .await
        .unwrap()
        .simple_query("SELECT 1")
        .await
        .unwrap();

    // The server crashes: pooled connections are discarded, not handed out.
    p.crash().unwrap();
    let e = pool.get().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PoolTimeout, "{e}");
    assert!(e.to_string().contains("last connection error"), "{e}");
    p.start().await.unwrap();
    let mut conn = pool.get().await.unwrap();
    assert_eq!(
        conn.simple_query("SELECT 2").await.unwrap()[0].get(0),
        Some("2")
    );
    let s = pool.stats();
    assert!(s.closed_validation >= 1 || s.closed_error >= 1, "{s:?}");
}

mod multiplexed {
    use super::*;
    use pgprovider_tokio_postgres::Multiplexed;

    async fn mux(p: &pgprovider_testkit::TestNode, app: &str, n: usize) -> Multiplexed {
        let c = Config::from_url(&format!(
            "{}?application_name={app}&options=-c%20statement_timeout%3D5s",
            p.url()
        ))
        .unwrap();
        Multiplexed::connect(c.connect_params(&c.nodes()[0]).await.unwrap(), n)
            .await
            .unwrap()
    }

    /// A throwaway cluster set up by `sql`, and `n` multiplexed connections to it.
    async fn with_table(
        sql: &str,
        app: &str,
        n: usize,
    ) -> (pgprovider_testkit::TestCluster, Multiplexed) {
        let cluster = pgprovider_testkit::TestCluster::start().await.unwrap();
        cluster.primary().execute(sql).await.unwrap();
        let mux = mux(cluster.primary(), app, n).await;
        (cluster, mux)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_tasks_share_two_connections_for_reads() {
        let (cluster, mux) = with_table("CREATE TABLE kv (k int PRIMARY KEY, v text); INSERT INTO kv SELECT g, 'v' || g FROM generate_series(1, 100) g", "mux-reads", 2).await;
        let p = cluster.primary();
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..200_i32 {
            let mux = mux.clone();
            tasks.spawn(async move {
                for i in 0..10_i32 {
                    let k = (t * 10 + i) % 100 + 1;
                    let row = mux
                        .query_one("SELECT v FROM kv WHERE k = $1", &[&k])
                        .await
                        .unwrap();
                    assert_eq!(row.get::<_, String>(0), format!("v{k}"));
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        assert_eq!(
            backends(p, "mux-reads").await,
            2,
            "2,000 reads over two server connections"
        );
        // The user's own options are kept; read-only is added to them.
        let row = mux.query_one("SELECT current_setting('statement_timeout'), current_setting('default_transaction_read_only')", &[]).await.unwrap();
        assert_eq!(
            (row.get::<_, String>(0), row.get::<_, String>(1)),
            ("5s".to_owned(), "on".to_owned())
        );
        let s = mux.stats();
        assert_eq!(
            (s.connections, s.queries, s.in_flight, s.rejected),
            (2, 2001, 0, 0)
        );
        assert!(format!("{mux:?}").contains("Multiplexed"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unsafe_uses_are_refused_before_or_at_the_server() {
        let (cluster, mux) = with_table("CREATE TABLE w (x int)", "mux-guard", 1).await;
        let p = cluster.primary();
        // A statement that fails to prepare is the caller's error, not retried.
        let e = mux
            .query("SELECT * FROM no_such_table", &[])
            .await
            .unwrap_err();
        assert_eq!(e.sql_state(), Some(SqlState::UNDEFINED_TABLE), "{e}");
        for sql in [
            "INSERT INTO w VALUES (1)",
            "BEGIN",
            "SET work_mem = '64MB'",
            "SELECT set_config('a.b', 'c', false)",
            "SELECT pg_advisory_lock(7)",
            "CREATE TEMP TABLE t (x int)",
            "SELECT 1; SELECT 2",
        ] {
            let e = mux.query(sql, &[]).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Rejected, "{sql}: {e}");
            assert!(e.hint().unwrap().contains("through the pool"));
        }
        assert_eq!(mux.stats().rejected, 7);
        // Writes hidden inside reads reach the server and are refused there.
        for sql in [
            "WITH i AS (INSERT INTO w VALUES (1) RETURNING x) SELECT * FROM i",
            "SELECT * FROM w FOR UPDATE",
        ] {
            let e = mux.query(sql, &[]).await.unwrap_err();
            assert_eq!(
                e.sql_state(),
                Some(SqlState::READ_ONLY_SQL_TRANSACTION),
                "{sql}: {e}"
            );
        }
        assert_eq!(p.query_one("SELECT count(*) FROM w").await.unwrap(), "0");
        assert!(
            Multiplexed::connect(
                pgprovider::ConnectParams::new(pgprovider::Host::Tcp("x".into()), 1, "u", "d"),
                0
            )
            .await
            .is_err()
        );
        let e = mux
            .query_one("SELECT 1 WHERE false", &[])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("expected one row, got 0"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lost_connections_and_changed_tables_heal() {
        let (cluster, mux) = with_table(
            "CREATE TABLE s (a int); INSERT INTO s VALUES (1)",
            "mux-heal",
            1,
        )
        .await;
        let p = cluster.primary();
        assert_eq!(mux.query("SELECT * FROM s", &[]).await.unwrap().len(), 1);

        // The backend is terminated: the next read reconnects and succeeds.
        p.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'mux-heal'").await.unwrap();
        assert_eq!(mux.query("SELECT * FROM s", &[]).await.unwrap().len(), 1);
        assert_eq!(mux.stats().reconnects, 1);

        // The cached statement's result type changes: re-prepared once, invisibly.
        p.execute("ALTER TABLE s ADD COLUMN b text DEFAULT 'x'")
            .await
            .unwrap();
        let rows = mux.query("SELECT * FROM s", &[]).await.unwrap();
        assert_eq!(rows[0].get::<_, String>(1), "x");

        // A dropped query future leaves the shared connection usable for others.
        let slow = mux.query("SELECT pg_sleep(0.5)", &[]);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), slow)
                .await
                .is_err()
        );
        assert_eq!(
            mux.query("SELECT 42", &[]).await.unwrap()[0].get::<_, i32>(0),
            42
        );
        assert_eq!(mux.stats().in_flight, 0);
    }
}

#[tokio::test]
async fn complete_transactions_need_no_reset_failed_ones_do() {
    let pool = pool("&pool_max_size=1").await;
    let mut c = pool.get().await.unwrap();
    let resets = pool.stats().resets;
    c.simple_query("SELECT 1").await.unwrap();
    assert!(!c.needs_reset());
    let e = c
        .simple_query("BEGIN; SELECT 1/0; COMMIT")
        .await
        .unwrap_err();
    assert_eq!(e.sql_state(), SqlState::new("22012"));
    assert!(
        c.needs_reset(),
        "the failed block left an aborted transaction"
    );
    drop(c);
    let mut c = pool.get().await.unwrap();
    assert_eq!(pool.stats().resets, resets + 1);
    let row = &c
        .simple_query("SELECT now() = statement_timestamp()")
        .await
        .unwrap()[0];
    assert_eq!(
        row.get(0),
        Some("t"),
        "not left inside the aborted transaction"
    );
    c.simple_query("BEGIN; SET LOCAL work_mem = '1MB'; SELECT 1; COMMIT")
        .await
        .unwrap();
    assert!(
        !c.needs_reset(),
        "a complete transaction leaves nothing behind"
    );
}

#[tokio::test]
async fn startup_and_conversion_errors_are_mapped_with_hints() {
    let c = config("&options=-c%20no_such_setting%3D1").await;
    let params = c.connect_params(&c.nodes()[0]).await.unwrap();
    let e = pgprovider::Driver::connect(&TokioPostgres::new(), &params)
        .await
        .unwrap_err();
    assert_eq!(e.sql_state(), SqlState::new("42704"), "{e}");
    assert!(e.hint().unwrap().contains("see the server's message"));

    // Parameters built by hand, with no connect timeout at all.
    let mut params = c.connect_params(&c.nodes()[0]).await.unwrap();
    params.options = None;
    params.connect_timeout = None;
    let mut conn = pgprovider::Driver::connect(&TokioPostgres::new(), &params)
        .await
        .unwrap();
    // A client-side conversion error, mapped by the documented helper.
    let row = conn
        .client()
        .query_one("SELECT 1::int8", &[])
        .await
        .unwrap();
    let e = pgprovider_tokio_postgres::map_error(row.try_get::<_, String>(0).unwrap_err());
    assert_eq!(e.kind(), ErrorKind::Other);
    assert!(
        e.to_string().contains("error deserializing column 0"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_cut_mid_flight_is_retried_only_when_marked_idempotent() {
    use pgprovider::provider::{Provider, TopologyOptions};
    let cluster = pgprovider_testkit::TestCluster::start().await.unwrap();
    let proxy = pgprovider_testkit::FaultProxy::start(cluster.primary().addr().parse().unwrap())
        .await
        .unwrap();
    let c = Config::from_url(&format!(
        "postgres://postgres@{}/postgres?pool_acquire_timeout=2s&connect_timeout=1",
        proxy.addr()
    ))
    .unwrap();
    let provider = Provider::new(
        TokioPostgres::new(),
        &c,
        TopologyOptions::default()
            .with_monitor_interval(std::time::Duration::from_millis(100))
            .with_failover_timeout(std::time::Duration::from_secs(10)),
    );
    provider
        .execute("CREATE TABLE cut (n int)", &[])
        .await
        .unwrap();
    // The statement reaches the server, then its connection is cut before the reply.
    let cut = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        proxy.reset_all();
    };
    let slow = "INSERT INTO cut SELECT 1 FROM pg_sleep(1)";
    let (plain, ()) = tokio::join!(provider.execute(slow, &[]), cut);
    let e = plain.unwrap_err();
    assert!(e.is_connection_lost(), "{e}");
    let cut = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        proxy.reset_all();
    };
    let idempotent = provider.primary().idempotent();
    let (idempotent, ()) = tokio::join!(idempotent.execute(slow, &[]), cut);
    assert_eq!(idempotent.unwrap(), 1, "run again on a new connection");
    // The cut statements may have committed on the server (each is its own transaction):
    // the plain one was reported, not repeated; the idempotent one ran at least once more.
    let n: i64 = provider
        .query_one("SELECT count(*) FROM cut", &[])
        .await
        .unwrap()
        .get(0);
    assert!((1..=3).contains(&n), "{n}");
}

/// What a session carries that the next user must not inherit, as the server reports it.
const SESSION_FINGERPRINT: &str = "SELECT concat_ws('|', current_user, session_user, \
     (SELECT md5(string_agg(name || '=' || coalesce(setting, ''), ',' ORDER BY name)) FROM pg_settings), \
     (SELECT count(*) FROM pg_prepared_statements), (SELECT count(*) FROM pg_cursors), \
     (SELECT count(*) FROM pg_listening_channels()), \
     (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), \
     (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()))";

/// The driver kit's SQL classifiers against the server, on a corpus: every statement that
/// really changed the session (settings, role, prepared statements, cursors, listens,
/// advisory locks, temporary tables) is classified as session-changing, and the
/// transaction state the server is left in is the one `transaction_effect` predicts.
#[tokio::test]
async fn the_sql_classifiers_agree_with_the_server_on_a_corpus() {
    use pgprovider_core::kit::sql::{may_change_session, transaction_effect};
    let url = pgprovider_testkit::shared_url().await.unwrap();
    let corpus = [
        "SELECT 1",
        "SELECT * FROM pg_class LIMIT 1",
        "VALUES (1)",
        "TABLE pg_namespace",
        "SHOW search_path",
        "EXPLAIN SELECT 1",
        "WITH a AS (SELECT 1) SELECT * FROM a",
        "BEGIN",
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "BEGIN; COMMIT",
        "BEGIN; COMMIT AND CHAIN",
        "BEGIN; SELECT 1; ROLLBACK",
        "BEGIN; SAVEPOINT s; ROLLBACK TO s",
        "BEGIN; SAVEPOINT s; RELEASE s; END",
        "BEGIN; ABORT",
        "SET search_path = public",
        "SET work_mem = '5MB'",
        "BEGIN; SET LOCAL work_mem = '8MB'",
        "SELECT set_config('application_name', 'x', false)",
        "SELECT pg_catalog.set_config('work_mem', '9MB', false)",
        "SELECT \"set_config\"('work_mem', '12MB', false)",
        "SELECT U&\"set\\005fconfig\"('work_mem', '13MB', false)",
        "SELECT set_config('work_mem', '14MB', true)",
        "SET SESSION AUTHORIZATION postgres",
        "SET ROLE pg_monitor",
        "LISTEN corpus_channel",
        "PREPARE corpus_p AS SELECT 1",
        "DECLARE corpus_c CURSOR WITH HOLD FOR SELECT 1",
        "CREATE TEMP TABLE corpus_t1 (x int)",
        "SELECT 1 AS x INTO TEMP corpus_t2",
        "CREATE TEMP TABLE corpus_t3 AS SELECT 1",
        "EXPLAIN ANALYZE CREATE TEMP TABLE corpus_t4 AS SELECT 1",
        "SELECT pg_advisory_lock(4242)",
        "SELECT pg_try_advisory_lock(4243)",
        "RESET ALL",
        "DISCARD ALL",
        "SELECT 1; SET work_mem = '6MB'",
        "/* a comment */ SET work_mem = '7MB'",
        "-- a comment\nSET work_mem = '10MB'",
        "DO $$BEGIN PERFORM set_config('work_mem', '11MB', false); END$$",
        "DO $$BEGIN EXECUTE 'SET work_mem = ''15MB'''; END$$",
        "SET TIME ZONE 'UTC'",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "BEGIN; SET TRANSACTION READ ONLY",
    ];
    let mut changed_seen = 0;
    for sql in corpus {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        let before: String = client
            .query_one(SESSION_FINGERPRINT, &[])
            .await
            .unwrap()
            .get(0);
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        // In an open block, now() is the block's start, not this statement's (asked in one
        // simple-protocol message, which is its own statement outside a block).
        let in_tx = client
            .simple_query("SELECT now() <> statement_timestamp()")
            .await
            .unwrap()
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0) == Some("t")),
                _ => None,
            })
            .unwrap();
        // What outlives the transaction: a block left open is rolled back first, as the
        // pool's reset does (transaction-scoped state is tracked by `in_tx` above).
        if in_tx {
            client.batch_execute("ROLLBACK").await.unwrap();
        }
        let after: String = client
            .query_one(SESSION_FINGERPRINT, &[])
            .await
            .unwrap()
            .get(0);
        let changed = before != after;
        changed_seen += usize::from(changed);
        assert!(
            !changed || may_change_session(sql),
            "{sql:?} changed the session ({before} -> {after}) but is not classified so"
        );
        assert_eq!(
            in_tx,
            transaction_effect(sql) == Some(true),
            "{sql:?}: the server is {}in a transaction block",
            if in_tx { "" } else { "not " }
        );
        drop(client);
        let _ = task.await;
    }
    // The corpus really changes sessions (a fingerprint that never moves proves nothing).
    assert!(
        changed_seen >= 20,
        "only {changed_seen} statements changed the session"
    );
}
