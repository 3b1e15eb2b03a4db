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
