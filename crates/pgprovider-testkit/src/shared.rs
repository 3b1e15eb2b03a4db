//! The server that plain-query tests use.

use crate::{KitError, TestCluster};
use std::time::Duration;
use tokio::sync::OnceCell;

/// The default shared server: trust authentication, database `test`.
pub const DEFAULT_SHARED_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

static FALLBACK: OnceCell<Result<(TestCluster, String), String>> = OnceCell::const_new();

/// The URL of a server for plain-query tests, chosen once per process:
///
/// 1. `PGPROVIDER_TEST_URL` when set (used as is, never probed);
/// 2. else the shared server at [`DEFAULT_SHARED_URL`], when it accepts a connection;
/// 3. else a throwaway cluster started for this test process, with a `test` database.
///    It lives until the process exits; the cluster's watchdog then stops it and removes
///    its files (a static is never dropped).
///
/// So a fresh machine with only the PostgreSQL server package installed runs the whole
/// suite, and CI uses the shared server.
///
/// # Errors
/// When no server is reachable and no cluster can be started.
pub async fn shared_url() -> Result<String, KitError> {
    if let Ok(url) = std::env::var("PGPROVIDER_TEST_URL") {
        return Ok(url);
    }
    shared_url_or_cluster(DEFAULT_SHARED_URL).await
}

async fn shared_url_or_cluster(default: &str) -> Result<String, KitError> {
    if answers(default).await {
        return Ok(default.to_owned());
    }
    let started = FALLBACK
        .get_or_init(|| async {
            let cluster = TestCluster::start().await.map_err(|e| e.to_string())?;
            cluster
                .primary()
                .execute("CREATE DATABASE test")
                .await
                .map_err(|e| e.to_string())?;
            let url = cluster.primary().url_for("test");
            Ok((cluster, url))
        })
        .await;
    match started {
        Ok((_, url)) => Ok(url.clone()),
        Err(e) => Err(KitError::new(format!(
            "no server for plain-query tests: {default} does not answer and a throwaway cluster failed: {e}"
        ))),
    }
}

async fn answers(url: &str) -> bool {
    let connect = tokio_postgres::connect(url, tokio_postgres::NoTls);
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Ok((client, conn))) => {
            drop(client);
            let _ = conn.await;
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn falls_back_to_one_throwaway_cluster_with_a_test_database() {
        let port = crate::free_port().unwrap();
        let nowhere = format!("postgres://postgres@127.0.0.1:{port}/test");
        let url = shared_url_or_cluster(&nowhere).await.unwrap();
        assert_ne!(url, nowhere);
        assert!(url.ends_with("/test"), "{url}");
        assert!(answers(&url).await, "the fallback serves database test");
        assert_eq!(
            shared_url_or_cluster(&nowhere).await.unwrap(),
            url,
            "started once"
        );
        assert_eq!(
            shared_url_or_cluster(&url).await.unwrap(),
            url,
            "a live server is used as is"
        );
    }
}
