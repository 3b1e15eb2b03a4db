//! Helpers shared by the integration tests: the shared server's configuration and pools,
//! and a throwaway primary with a standby.
// Every test binary uses a subset.
#![allow(dead_code)]

use pgprovider::{Config, Pool};
use pgprovider_tokio_postgres::TokioPostgres;

/// The shared server's URL plus `extra` query parameters (each starting with `&`), with
/// `application_name=pgprovider-test` unless `extra` names another.
pub(crate) async fn config(extra: &str) -> Config {
    let u = pgprovider_testkit::shared_url().await.unwrap();
    let sep = if u.contains('?') { '&' } else { '?' };
    Config::from_url(&format!("{u}{sep}application_name=pgprovider-test{extra}")).unwrap()
}

/// A pool on the shared server; see [`config`].
pub(crate) async fn pool(extra: &str) -> Pool<TokioPostgres> {
    let c = config(extra).await;
    Pool::new(TokioPostgres::new(), &c, &c.nodes()[0])
}

/// A throwaway primary with one streaming standby (synchronous when asked), and a
/// configuration naming both (primary first) plus `extra` query parameters.
pub(crate) async fn two_nodes(
    synchronous: bool,
    extra: &str,
) -> (pgprovider_testkit::TestCluster, Config) {
    let cluster = pgprovider_testkit::TestCluster::builder()
        .standbys(1)
        .synchronous(synchronous)
        .start()
        .await
        .unwrap();
    let config = Config::from_url(&format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?connect_timeout=1{extra}",
        cluster.primary().port(),
        cluster.standby(0).port()
    ))
    .unwrap();
    (cluster, config)
}
