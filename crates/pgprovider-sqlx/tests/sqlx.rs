//! sqlx's own API on pooled connections.

use pgprovider::{Config, Pool};
use pgprovider_sqlx::SqlxDriver;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_code_runs_on_a_pooled_connection_and_is_reset_after() {
    let url = pgprovider_testkit::shared_url().await.unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let config = Config::from_url(&format!("{url}{sep}pool_max_size=1")).unwrap();
    let pool = Pool::new(SqlxDriver::new(), &config, &config.nodes()[0]);
    let mut conn = pool.get().await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT $1::int8 + 1")
        .bind(41_i64)
        .fetch_one(conn.raw())
        .await
        .unwrap();
    assert_eq!(n, 42);
    sqlx::query("SET application_name = 'sqlx-was-here'")
        .execute(conn.raw())
        .await
        .unwrap();
    drop(conn);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pool.stats().idle < 1 {
        assert!(std::time::Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    assert_eq!(pool.stats().resets, 1);
    let mut conn = pool.get().await.unwrap();
    let rows = pgprovider::Connection::simple_query(
        &mut *conn,
        "SELECT current_setting('application_name') AS app",
    )
    .await
    .unwrap();
    assert_ne!(rows[0].get_by_name("app"), Some("sqlx-was-here"));
}

async fn pool_for(extra: &str) -> (Pool<SqlxDriver>, Config) {
    let url = pgprovider_testkit::shared_url().await.unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let config = Config::from_url(&format!("{url}{sep}pool_acquire_timeout=2s{extra}")).unwrap();
    (
        Pool::new(SqlxDriver::new(), &config, &config.nodes()[0]),
        config,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_rows_options_and_broken_connections() {
    use pgprovider::{Column, Connection, ErrorKind, Queries};
    // A missing database: the server's error, with node and hint, not retried.
    let (missing, _) = pool_for("").await;
    let url = pgprovider_testkit::shared_url().await.unwrap();
    let base = url.rsplit_once('/').unwrap().0;
    let config = Config::from_url(&format!("{base}/no_such_db_for_sqlx")).unwrap();
    let bad = Pool::new(SqlxDriver::new(), &config, &config.nodes()[0]);
    let e = bad.get().await.unwrap_err();
    assert_eq!(e.sql_state().unwrap().code(), "3D000", "{e}");
    assert!(e.node().is_some());
    assert!(e.to_string().contains("create the database"), "{e}");
    // Nothing listening: a connect error.
    let port = pgprovider_testkit::free_port().unwrap();
    let config = Config::from_url(&format!(
        "postgres://postgres@127.0.0.1:{port}/x?pool_acquire_timeout=300ms&connect_timeout=1"
    ))
    .unwrap();
    let e = Pool::new(SqlxDriver::new(), &config, &config.nodes()[0])
        .get()
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Connect | ErrorKind::PoolTimeout),
        "{e}"
    );
    drop(missing);

    // Startup options reach the server.
    let (pool, _) = pool_for("&options=-c%20statement_timeout%3D150ms").await;
    let mut c = pool.get().await.unwrap();
    let rows = c.simple_query("SHOW statement_timeout").await.unwrap();
    assert_eq!(rows[0].get(0), Some("150ms"));
    let e = c
        .query("SELECT pg_sleep(2)", &[])
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.sql_state().unwrap().code(), "57014");
    c.ping().await.unwrap();
    assert!(format!("{:?}", *c).contains("SqlxConnection"));
    assert!(c.node().starts_with("127.0.0.1:") || c.node().contains(':'));

    // Rows: by index and name, wrong types and columns are decode errors.
    let rows = c
        .query(
            "SELECT $1::int4 AS a, $2::text AS b, NULL::int8 AS c",
            &[&7i32, &"x"],
        )
        .await
        .unwrap();
    let r = &rows[0];
    assert_eq!(r.get::<i32>(0), 7);
    assert_eq!(Column::<String>::column_named(r, "b").unwrap(), "x");
    assert_eq!(Column::<Option<i64>>::column(r, 2).unwrap(), None);
    assert_eq!(
        Column::<i64>::column(r, 0).unwrap_err().kind(),
        ErrorKind::Decode
    );
    assert_eq!(
        Column::<i32>::column_named(r, "nope").unwrap_err().kind(),
        ErrorKind::Decode
    );
    assert!(format!("{r:?}").contains("SqlxRow"));
    assert_eq!(sqlx::Row::len(&**r), 3);
    let inner = rows.into_iter().next().unwrap().into_inner();
    assert_eq!(sqlx::Row::len(&inner), 3);
    assert_eq!(
        c.execute("UPDATE pg_class SET relname = relname WHERE false", &[])
            .await
            .unwrap(),
        0
    );

    // A read-only refusal is reported to the pool.
    c.simple_query("SET default_transaction_read_only = on")
        .await
        .unwrap();
    let e = c
        .execute("CREATE TEMPORARY TABLE ro_t (id int)", &[])
        .await
        .unwrap_err();
    assert!(e.is_read_only(), "{e}");
    assert!(c.refused_read_only());
    c.recycled();
    assert!(!c.refused_read_only());
    assert!(c.needs_reset());
    c.reset().await.unwrap();
    assert!(!c.needs_reset());

    // A backend terminated under the connection: lost, and the connection is broken.
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let (admin, _) = pool_for("").await;
    admin
        .query("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let e = c.query("SELECT 1", &[]).await.map(|_| ()).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::ConnectionLost | ErrorKind::Database),
        "{e}"
    );
    assert!(c.is_broken() || e.sql_state().is_some_and(|s| s.code() == "57P01"));
    pgprovider::Pooled::discard(c);

    // A transaction left open is tracked; a failed BEGIN-opening batch too.
    let mut c = pool.get().await.unwrap();
    c.execute("BEGIN", &[]).await.unwrap();
    assert!(c.in_transaction());
    c.execute("COMMIT", &[]).await.unwrap();
    assert!(!c.in_transaction());
    assert!(c.simple_query("BEGIN; SELECT 1/0").await.is_err());
    assert!(c.in_transaction());
    c.simple_query("ROLLBACK").await.unwrap();
    c.set_query_timeout(Some(std::time::Duration::from_secs(5)));
    assert_eq!(c.query_timeout(), Some(std::time::Duration::from_secs(5)));
}
