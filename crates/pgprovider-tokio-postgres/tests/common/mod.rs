//! Helpers shared by the integration tests: the shared server's configuration and pools.

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
