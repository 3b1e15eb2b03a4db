//! The hot-path cost of observability: the same point query, one task on one pooled
//! connection, with no hooks, and with tracing spans (a `tracing` registry subscriber) +
//! the Prometheus metrics hook + one no-op hook. Rounds interleave the two; medians of 7.
//! Also counts heap allocations per query (a counting global allocator): raw tokio-postgres,
//! pgprovider without hooks, with everything, and the empty hook registry's own path
//! (which must be zero).
//!
//! ```text
//! cargo bench -p pgprovider-bench --bench observe
//! ```

use pgprovider::observe::{Hook, Hooks, MetricsHook, Operation, OperationKind};
use pgprovider::{Config, Pool, Queries};
use pgprovider_tokio_postgres::TokioPostgres;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::time::Instant;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const QUERIES: usize = 5_000;
const ROUNDS: usize = 7;
const SQL: &str = "SELECT $1::int";

struct Nothing;
impl Hook for Nothing {
    fn name(&self) -> &str {
        "nothing"
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn run(pool: &Pool<TokioPostgres>, n: usize) -> f64 {
    let mut c = pool.get().await.unwrap();
    let start = Instant::now();
    for i in 0..n {
        let v = i as i32;
        let r = c.query_one(SQL, &[&v]).await.unwrap();
        assert_eq!(r.get::<_, i32>(0), v);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Allocations per query of `f` over `n` calls.
async fn allocs<F: AsyncFnMut()>(n: usize, mut f: F) -> f64 {
    let region = Region::new(GLOBAL);
    for _ in 0..n {
        f().await;
    }
    region.change().allocations as f64 / n as f64
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    use tracing_subscriber::layer::SubscriberExt;
    let url = pgprovider_bench::server().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let config = Config::from_url(&format!("{url}{sep}sslmode=disable&pool_max_size=1")).unwrap();
    let node = &config.nodes()[0];
    let _metrics = pgprovider::observe::install_prometheus().unwrap();
    let subscriber =
        tracing_subscriber::registry().with(tracing_subscriber::layer::Identity::new());
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let bare = Pool::new(TokioPostgres::new(), &config, node);
    let hooks = Hooks::builder()
        .spans(true)
        .hook(0, MetricsHook::new())
        .hook(1, Nothing)
        .build();
    let observed = Pool::builder(TokioPostgres::new(), &config, node)
        .observe(hooks)
        .build();
    // Warm both (connection, prepared statement).
    run(&bare, 500).await;
    run(&observed, 500).await;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        a.push(run(&bare, QUERIES).await);
        b.push(run(&observed, QUERIES).await);
    }
    let (a, b) = (median(a), median(b));
    println!("point query, 1 task, 1 connection, medians of {ROUNDS} rounds of {QUERIES}:");
    println!("  no hooks                              {a:>9.0} queries/s");
    println!("  spans + metrics + one hook            {b:>9.0} queries/s");
    println!(
        "  ratio observed / none                 {:>9.3} (per-query cost {:+.2} µs)",
        b / a,
        (1.0 / b - 1.0 / a) * 1e6
    );

    // Allocations per query.
    let params = config.connect_params(node).await.unwrap();
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host={} port={} user={} dbname={}",
            node.host(),
            node.port(),
            params.user,
            params.dbname
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let stmt = client.prepare(SQL).await.unwrap();
    let raw = allocs(2_000, async || {
        client.query_one(&stmt, &[&1i32]).await.unwrap();
    })
    .await;
    let mut c = bare.get().await.unwrap();
    let none = allocs(2_000, async || {
        c.query_one(SQL, &[&1i32]).await.unwrap();
    })
    .await;
    drop(c);
    let mut c = observed.get().await.unwrap();
    let all = allocs(2_000, async || {
        c.query_one(SQL, &[&1i32]).await.unwrap();
    })
    .await;
    drop(c);
    let empty = Hooks::default();
    let op = Operation::new(OperationKind::Query, "n:1").with_sql(SQL);
    let registry = allocs(100_000, async || {
        empty
            .observe(&op, |_| None, async { Ok(()) })
            .await
            .unwrap();
    })
    .await;
    println!("heap allocations per query:");
    println!("  raw tokio-postgres (prepared)         {raw:>9.2}");
    println!("  pgprovider, no hooks                  {none:>9.2}");
    println!("  pgprovider, spans + metrics + hook    {all:>9.2}");
    println!("  the empty hook registry's own path    {registry:>9.2}");
    assert_eq!(registry, 0.0, "the empty registry allocated");
}
