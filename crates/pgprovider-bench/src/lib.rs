//! Shared set-up for pgprovider's benchmarks.
//!
//! The micro-benchmarks of checkout + return against deadpool-postgres and bb8 live in
//! `benches/pool.rs`; run them with
//!
//! ```text
//! cargo bench -p pgprovider-bench --features peers --bench pool
//! ```
//!
//! They use `DATABASE_URL` when set, else the test kit's server ([`server`]), and print the
//! medians and the ratios of pgprovider to each peer at the end.
#![deny(missing_docs)]

/// A server to benchmark against: `DATABASE_URL`, else the test kit's shared server (or a
/// throwaway cluster that lives as long as the process).
///
/// # Panics
/// When no server can be found or started; a benchmark has nothing to measure then.
pub async fn server() -> String {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return url;
    }
    pgprovider_testkit::shared_url()
        .await
        .expect("a PostgreSQL server to benchmark against")
}

/// The pool size every contender uses.
pub const POOL_SIZE: usize = 8;

/// How many tasks contend in the contended benchmark.
pub const TASKS: usize = 64;
