//! `pgprovider bench --many 1000`: one pool of a thousand server connections.
//!
//! Needs a server whose `max_connections` holds them twice (the pool's and the raw
//! clients' are open together): with `--url` the server's is checked first; without it
//! (or when it is too small) a throwaway cluster is started with `max_connections` =
//! 2N + 50. Reports, for the pool and for N raw
//! tokio-postgres clients on the same server:
//! - the time to open all N connections (the pool: N tasks checking out at once, each
//!   holding its connection until all are open; the raw clients: connected four at a time,
//!   as the pool opens at most four at once);
//! - the growth of this process's resident set per pool connection;
//! - `SELECT 1` throughput from N tasks with N connections, and the p50/p99/p99.9 of
//!   operations and of checkouts (the pool's own acquire-wait histogram), then the same
//!   from the raw clients, one task each (what the server gives N sessions at all).

use super::contenders::SELECT1;
use super::measure::{Op, drive, rss_kib};
use crate::opt::BenchArgs;
use anyhow::Context as _;
use pgprovider::{Config, Pool, Queries};
use pgprovider_tokio_postgres::TokioPostgres;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;

/// Connections the server keeps beyond the run's (for the bench's own setup and others).
const SPARE: usize = 50;

pub(crate) async fn run(args: &BenchArgs, url: Option<&str>, n: usize) -> anyhow::Result<Value> {
    let mut cluster = None;
    let url = match url {
        Some(u) if max_connections(u).await? >= 2 * n + SPARE => u.to_owned(),
        given => {
            if let Some(u) = given {
                crate::say!(
                    "{u}: max_connections is below {}; starting a throwaway cluster instead",
                    2 * n + SPARE
                );
            }
            let c = pgprovider_testkit::TestCluster::builder()
                .setting("max_connections", &(2 * n + SPARE).to_string())
                .start()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("cannot start a throwaway cluster for the many-connections run")?;
            let u = super::plaintext(&c.primary().url());
            cluster = Some(c);
            u
        }
    };
    crate::say!(
        "{n} connections: one pool against {n} raw tokio-postgres clients, {:?} of SELECT 1 from {n} tasks",
        args.duration
    );

    // The pool: every connection opened by a checkout of its own, all at once.
    let config = Config::from_url(&format!(
        "{url}&pool_max_size={n}&pool_acquire_timeout=120s&pool_idle_timeout=off&pool_max_lifetime=off"
    ))?;
    let pool = Pool::new(TokioPostgres::new(), &config, &config.nodes()[0]);
    let before = rss_kib();
    let start = Instant::now();
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (pool, barrier) = (pool.clone(), barrier.clone());
        set.spawn(async move {
            let mut conn = pool.get().await?;
            let opened = Instant::now();
            // Prepared on every connection, as the raw clients' are below.
            conn.query(SELECT1, &[]).await?;
            barrier.wait().await;
            drop(conn);
            anyhow::Ok(opened)
        });
    }
    let mut last = start;
    while let Some(r) = set.join_next().await {
        last = last.max(r??);
    }
    let pool_connect = last - start;
    let pool_kib = rss_kib().saturating_sub(before) as f64 / n as f64;

    // The raw clients, for what the server gives N sessions without a pool. (Their memory
    // is not measured here: they would reuse what the pool's connecting freed; the main
    // bench's `mem/conn` column has it.)
    let start = Instant::now();
    let mut clients = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(4) {
        let batch = (chunk * 4..((chunk + 1) * 4).min(n)).map(|_| async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            let select1 = client.prepare(SELECT1).await?;
            anyhow::Ok((client, select1))
        });
        for c in futures_util::future::join_all(batch).await {
            clients.push(c?);
        }
    }
    let raw_connect = start.elapsed();

    // Throughput, the pool then the raw clients (one task each), the other side idle.
    let sample = drive(
        Arc::new(PoolOp(pool.clone())),
        n,
        0,
        args.warmup,
        args.duration,
    )
    .await?;
    let stats = pool.stats();
    let raw = drive(Arc::new(RawOp(clients)), n, 0, args.warmup, args.duration).await?;
    pool.close().await;
    drop(cluster);

    let q = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let checkout = |p: f64| stats.acquire_wait_quantile(p).as_secs_f64() * 1e6;
    crate::say!(
        "  pool: all {n} open in {:.0} ms (four at a time), {:.1} KiB of resident memory per connection; raw clients: all open in {:.0} ms (four at a time)",
        pool_connect.as_secs_f64() * 1000.0,
        pool_kib,
        raw_connect.as_secs_f64() * 1000.0,
    );
    crate::say!(
        "  raw clients, SELECT 1 from {n} tasks (one each): {:.0} ops/s, p99 {:.1} µs, p99.9 {:.1} µs, {:.2} µs CPU per op",
        raw.ops_per_sec,
        q(&raw.latency, 0.99),
        q(&raw.latency, 0.999),
        raw.cpu_us_per_op
    );
    crate::say!(
        "  pool, SELECT 1 from {n} tasks: {:.0} ops/s, p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, {:.2} µs CPU per op; checkout wait p99.9 ≤ {:.1} µs (max {:.1} µs)",
        sample.ops_per_sec,
        q(&sample.latency, 0.5),
        q(&sample.latency, 0.99),
        q(&sample.latency, 0.999),
        sample.cpu_us_per_op,
        checkout(0.999),
        stats.acquire_wait_max.as_secs_f64() * 1e6
    );
    Ok(json!({
        "connections": n,
        "pool_connect_all_ms": pool_connect.as_secs_f64() * 1000.0,
        "pool_kib_per_connection": pool_kib,
        "raw_connect_all_ms": raw_connect.as_secs_f64() * 1000.0,
        "ops_per_sec": sample.ops_per_sec,
        "p50_us": q(&sample.latency, 0.5),
        "p99_us": q(&sample.latency, 0.99),
        "p999_us": q(&sample.latency, 0.999),
        "cpu_us_per_op": sample.cpu_us_per_op,
        "checkout_p999_us": checkout(0.999),
        "checkout_max_us": stats.acquire_wait_max.as_secs_f64() * 1e6,
        "raw_ops_per_sec": raw.ops_per_sec,
        "raw_p99_us": q(&raw.latency, 0.99),
        "raw_p999_us": q(&raw.latency, 0.999),
        "raw_cpu_us_per_op": raw.cpu_us_per_op,
    }))
}

/// The server's `max_connections`.
async fn max_connections(url: &str) -> anyhow::Result<usize> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    tokio::spawn(conn);
    let row = client.query_one("SHOW max_connections", &[]).await?;
    Ok(row.get::<_, String>(0).parse()?)
}

struct RawOp(Vec<(tokio_postgres::Client, tokio_postgres::Statement)>);

impl Op for RawOp {
    async fn call(&self, task: usize, _i: u64) -> anyhow::Result<()> {
        let (client, select1) = &self.0[task % self.0.len()];
        client.query(select1, &[]).await?;
        Ok(())
    }
}

struct PoolOp(Pool<TokioPostgres>);

impl Op for PoolOp {
    async fn call(&self, _task: usize, _i: u64) -> anyhow::Result<()> {
        let mut c = self.0.get().await?;
        c.query(SELECT1, &[]).await?;
        Ok(())
    }
}
