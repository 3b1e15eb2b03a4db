//! Test kit for pgprovider: throwaway PostgreSQL clusters and a fault-injecting proxy.
//!
//! - [`TestCluster`]: a primary and N hot standbys with streaming replication, started from
//!   the installed server binaries in a temporary directory, on free ports, tuned for speed
//!   (`fsync=off`), optionally with a synchronous standby. Nodes can be stopped, crashed
//!   (SIGKILL), restarted, promoted, paused (SIGSTOP, a hung server) and resumed.
//! - [`FaultProxy`]: an in-process TCP proxy in front of a node that adds latency, resets
//!   every connection, blackholes traffic, refuses new connections, and heals.
//! - [`PatroniCluster`]: a cluster managed by a real HA manager (Patroni with etcd, from
//!   Debian's packages), with scripts for switchover, killing the leader and healing.
//! - [`PgBouncer`]: a real PgBouncer in session or transaction mode in front of a server
//!   ([`shared_pgbouncer_url`] for one per test process in front of the shared server).
//!
//! When run as root, server processes run as an unprivileged user (`postgres`, or the one
//! named by `PGPROVIDER_TEST_USER`), because `initdb` refuses root. Server binaries are
//! found through `PGPROVIDER_PG_BINDIR`, `pg_config --bindir`, `PATH`, or
//! `/usr/lib/postgresql/*/bin`.
//!
//! With the `conformance` feature, the `conformance_tests!` macro runs the driver conformance
//! suite (the `conformance` module).
//!
//! Plain-query tests get their server from [`shared_url`]: `PGPROVIDER_TEST_URL`, the
//! shared server on 127.0.0.1:5432, or else a throwaway cluster.
//!
//! Dropping a cluster stops every server and removes its directory, also when a test
//! panics (the server logs are then printed). If the test process dies without unwinding,
//! a small watchdog process does the same.
//!
//! ```no_run
//! use pgprovider_testkit::TestCluster;
//!
//! # async fn run() -> Result<(), pgprovider_testkit::KitError> {
//! let cluster = TestCluster::builder().standbys(1).synchronous(true).start().await?;
//! cluster.primary().execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)").await?;
//! cluster.wait_for_replay(cluster.standby(0)).await?;
//! assert_eq!(cluster.standby(0).query_one("SELECT count(*) FROM t").await?, "1");
//! cluster.primary().crash()?;
//! cluster.standby(0).promote().await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod bin;
mod cluster;
#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
mod node;
mod patroni;
mod pgbouncer;
mod proxy;
mod shared;

pub use bin::ServerBinaries;
pub use cluster::{ClusterBuilder, TestCluster};
pub use error::KitError;
pub use node::{Role, TestNode};
pub use patroni::{PatroniCluster, PatroniMember};
pub use pgbouncer::{PgBouncer, PoolMode, shared_pgbouncer_url};
pub use proxy::FaultProxy;
pub use shared::{DEFAULT_SHARED_URL, shared_url};

/// A new temporary directory named `prefix…` under `PGPROVIDER_TEST_DIR` (default: the
/// system temp directory), for a cluster's files.
pub(crate) fn work_dir(prefix: &str) -> std::io::Result<tempfile::TempDir> {
    let base =
        std::env::var_os("PGPROVIDER_TEST_DIR").unwrap_or_else(|| std::env::temp_dir().into());
    tempfile::Builder::new().prefix(prefix).tempdir_in(base)
}

/// Reserves a free TCP port on 127.0.0.1 (bound, then released for the caller to use).
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
