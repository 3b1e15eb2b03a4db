//! diesel's own API on pooled connections.

use diesel_async::RunQueryDsl;
use pgprovider::{Config, Pool};
use pgprovider_diesel::DieselDriver;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diesel_code_runs_on_a_pooled_connection_and_is_reset_after() {
    let url = pgprovider_testkit::shared_url().await.unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let config = Config::from_url(&format!("{url}{sep}pool_max_size=1")).unwrap();
    let pool = Pool::new(DieselDriver::new(), &config, &config.nodes()[0]);
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query("SET application_name = 'diesel-was-here'")
        .execute(conn.diesel())
        .await
        .unwrap();
    let n = diesel::sql_query("CREATE TEMPORARY TABLE diesel_t AS SELECT 1 AS id")
        .execute(conn.diesel())
        .await
        .unwrap();
    assert_eq!(n, 1);
    drop(conn);
    // The session was marked for a reset: the next user finds neither the setting nor
    // the temporary table.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pool.stats().idle < 1 {
        assert!(std::time::Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    assert_eq!(pool.stats().resets, 1);
    let mut conn = pool.get().await.unwrap();
    let rows = pgprovider::Connection::simple_query(&mut *conn, "SELECT current_setting('application_name') AS app, to_regclass('diesel_t') IS NULL AS gone")
        .await
        .unwrap();
    assert_ne!(rows[0].get_by_name("app"), Some("diesel-was-here"));
    assert_eq!(rows[0].get_by_name("gone"), Some("t"));
}

async fn pool_for(extra: &str) -> Pool<DieselDriver> {
    let url = pgprovider_testkit::shared_url().await.unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let config = Config::from_url(&format!("{url}{sep}pool_acquire_timeout=2s{extra}")).unwrap();
    Pool::new(DieselDriver::new(), &config, &config.nodes()[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_rows_simple_queries_and_broken_connections() {
    use pgprovider::{Column, Connection, ErrorKind, Queries};
    let url = pgprovider_testkit::shared_url().await.unwrap();
    let base = url.rsplit_once('/').unwrap().0;
    let config = Config::from_url(&format!("{base}/no_such_db_for_diesel")).unwrap();
    let e = Pool::new(DieselDriver::new(), &config, &config.nodes()[0])
        .get()
        .await
        .unwrap_err();
    assert_eq!(e.sql_state().unwrap().code(), "3D000", "{e}");

    let pool = pool_for("&options=-c%20statement_timeout%3D150ms").await;
    let mut c = pool.get().await.unwrap();
    assert!(format!("{:?}", *c).contains("DieselConnection"));
    assert!(c.node().contains(':'));
    c.ping().await.unwrap();
    // Simple queries: rows as text (through row_to_json), statements as batches.
    let rows = c
        .simple_query("SELECT 1 AS one, true AS yes, NULL::text AS nothing, 'a\"b' AS q, '{\"k\":1}'::json AS j, current_setting('statement_timeout') AS st")
        .await
        .unwrap();
    let r = &rows[0];
    assert_eq!(r.get_by_name("one"), Some("1"));
    assert_eq!(r.get_by_name("yes"), Some("t"));
    assert_eq!(r.get_by_name("nothing"), None);
    assert_eq!(r.get_by_name("q"), Some("a\"b"));
    assert_eq!(r.get_by_name("j"), Some("{\"k\":1}"));
    assert_eq!(r.get_by_name("st"), Some("150ms"));
    assert!(
        c.simple_query("SET work_mem = '8MB'; SELECT 1")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(c.needs_reset());
    let e = c
        .query("SELECT pg_sleep(2)", &[])
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.sql_state().unwrap().code(), "57014", "{e}");

    // Typed rows and parameters of every supported type.
    let rows = c
        .query(
            "SELECT $1::int2, $2::int4, $3::int8, $4::float4, $5::float8, $6::bool, $7::text, $8::bytea, $9::int4",
            &[&1i16, &2i32, &3i64, &4.5f32, &5.5f64, &true, &"x", &vec![1u8, 2], &None::<i32>],
        )
        .await
        .unwrap();
    let r = &rows[0];
    assert_eq!(Column::<i16>::column(r, 0).unwrap(), 1);
    assert_eq!(Column::<i32>::column(r, 1).unwrap(), 2);
    assert_eq!(Column::<i64>::column(r, 2).unwrap(), 3);
    assert_eq!(Column::<f32>::column(r, 3).unwrap(), 4.5);
    assert_eq!(Column::<f64>::column(r, 4).unwrap(), 5.5);
    assert!(Column::<bool>::column(r, 5).unwrap());
    assert_eq!(Column::<String>::column(r, 6).unwrap(), "x");
    assert_eq!(Column::<Vec<u8>>::column(r, 7).unwrap(), vec![1, 2]);
    assert_eq!(Column::<Option<i32>>::column(r, 8).unwrap(), None);
    assert_eq!(
        Column::<i32>::column(r, 8).unwrap_err().kind(),
        ErrorKind::Decode
    );
    assert_eq!(
        Column::<i32>::column(r, 99).unwrap_err().kind(),
        ErrorKind::Decode
    );
    assert_eq!(
        Column::<i32>::column_named(r, "nope").unwrap_err().kind(),
        ErrorKind::Decode
    );
    assert!(format!("{r:?}").contains("DieselRow"));
    // Errors keep the state the provider acts on.
    let e = Queries::execute(&mut *c, "INSERT INTO no_such_diesel_t VALUES (1)", &[])
        .await
        .unwrap_err();
    assert_eq!(e.sql_state().unwrap().code(), "42P01");
    c.simple_query("CREATE TEMPORARY TABLE u (id int PRIMARY KEY)")
        .await
        .unwrap();
    Queries::execute(&mut *c, "INSERT INTO u VALUES (1)", &[])
        .await
        .unwrap();
    let e = Queries::execute(&mut *c, "INSERT INTO u VALUES (1)", &[])
        .await
        .unwrap_err();
    assert!(e.is_constraint_violation(), "{e}");
    // Read-only refusals are reported to the pool.
    c.simple_query("SET default_transaction_read_only = on")
        .await
        .unwrap();
    let e = Queries::execute(&mut *c, "CREATE TEMPORARY TABLE ro_t (id int)", &[])
        .await
        .unwrap_err();
    assert!(e.is_read_only(), "{e}");
    assert!(c.refused_read_only());
    c.recycled();
    c.reset().await.unwrap();
    assert!(!c.needs_reset());
    Queries::execute(&mut *c, "BEGIN", &[]).await.unwrap();
    assert!(c.in_transaction());
    Queries::execute(&mut *c, "ROLLBACK", &[]).await.unwrap();
    c.set_query_timeout(None);
    assert_eq!(c.query_timeout(), None);

    // A terminated backend: the connection is lost and not reused.
    let pid: i32 = Column::column(
        &c.query("SELECT pg_backend_pid()", &[]).await.unwrap()[0],
        0,
    )
    .unwrap();
    let admin = pool_for("").await;
    admin
        .query("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let e = c.query("SELECT 1", &[]).await.map(|_| ()).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::ConnectionLost | ErrorKind::Database),
        "{e}"
    );
    pgprovider::Pooled::discard(c);
}

/// diesel-async drops an error's SQLSTATE; the driver reads it off the protocol, so codes
/// that no message text could give (a function's own, a message in any language) arrive,
/// over TLS-less TCP and unix sockets alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlstates_come_from_the_protocol_not_the_message() {
    use pgprovider::{Client, Connection, Queries};
    let pool = pool_for("").await;
    let raise = |code: &str, msg: &str| {
        format!("DO $$ BEGIN RAISE EXCEPTION '{msg}' USING ERRCODE = '{code}'; END $$")
    };
    let e = Client::execute(&pool, &raise("P0042", "eigener Fehler"), &[])
        .await
        .unwrap_err();
    assert_eq!(e.sql_state().unwrap().code(), "P0042", "{e}");
    let mut conn = pool.get().await.unwrap();
    let e = Queries::execute(&mut *conn, &raise("40001", "sérialisation impossible"), &[])
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    let e = conn
        .simple_query(&raise("22012", "durch null geteilt"))
        .await
        .unwrap_err();
    assert_eq!(e.sql_state().unwrap().code(), "22012", "{e}");
    // The connection is still in step: the next statement succeeds.
    assert_eq!(
        Queries::execute(&mut *conn, "SELECT 1", &[]).await.unwrap(),
        1
    );
}
