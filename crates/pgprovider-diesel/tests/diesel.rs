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
