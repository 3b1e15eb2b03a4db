//! The per-operation cost of each tenancy strategy against no tenancy: one task, a point
//! query on a one-row table, through a tenant handle of each strategy and through the
//! provider's pool directly. Rounds interleave the five; medians of 5 rounds of 2,000.
//! Then the statement guard alone: a decision on a cached statement, and on new texts.
//!
//! ```text
//! cargo bench -p pgprovider-bench --bench tenancy
//! ```

use pgprovider::Config;
use pgprovider::migrate::{Migrations, Migrator};
use pgprovider::provider::{Provider, TopologyOptions};
use pgprovider::tenant::{Strategy, Tenancy, TenancyOptions};
use pgprovider_tokio_postgres::TokioPostgres;
use std::time::{Duration, Instant};

const OPS: usize = 2_000;
const ROUNDS: usize = 5;
const SQL: &str = "SELECT name FROM items WHERE id = $1";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = pgprovider_bench::server().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let config = Config::from_url(&format!("{url}{sep}sslmode=disable&pool_max_size=2")).unwrap();
    let provider = Provider::new(TokioPostgres::new(), &config, TopologyOptions::default());
    provider
        .monitor()
        .wait_for_primary(Duration::from_secs(10))
        .await
        .unwrap();
    let migrator = Migrator::new(
        Migrations::from_files([(
            "1_items.sql",
            "CREATE TABLE items (id int PRIMARY KEY, name text, tenant_id text); \
             INSERT INTO items VALUES (1, 'one', 'bench_rls');",
        )])
        .unwrap(),
    );
    let pool = provider.pool(&config.nodes()[0]).unwrap().clone();
    pool.execute("DROP TABLE IF EXISTS bench_rls_items", &[])
        .await
        .unwrap();
    pool.execute(
        "CREATE TABLE bench_rls_items (id int PRIMARY KEY, name text, tenant_id text)",
        &[],
    )
    .await
    .unwrap();
    pool.execute(
        "INSERT INTO bench_rls_items VALUES (1, 'one', 'bench_rls')",
        &[],
    )
    .await
    .unwrap();
    pool.execute("DROP SCHEMA IF EXISTS bench_plain CASCADE", &[])
        .await
        .unwrap();
    pool.execute("CREATE SCHEMA bench_plain", &[])
        .await
        .unwrap();
    pool.execute(
        "CREATE TABLE bench_plain.items (id int PRIMARY KEY, name text)",
        &[],
    )
    .await
    .unwrap();
    pool.execute("INSERT INTO bench_plain.items VALUES (1, 'one')", &[])
        .await
        .unwrap();
    let mut handles = Vec::new();
    for (strategy, tenant) in [
        (Strategy::Schema, "bench_schema"),
        (Strategy::Role, "bench_role"),
        (Strategy::RowLevel, "bench_rls"),
        (Strategy::Database, "bench_db"),
    ] {
        let tenancy = Tenancy::new(provider.clone(), TenancyOptions::new(strategy));
        tenancy.drop_tenant(tenant).await.unwrap();
        let m = (strategy != Strategy::RowLevel).then_some(&migrator);
        tenancy.create_tenant(tenant, m).await.unwrap();
        if strategy == Strategy::RowLevel {
            tenancy.enable_row_level("bench_rls_items").await.unwrap();
        }
        handles.push((strategy, tenancy.clone(), tenancy.tenant(tenant).unwrap()));
    }
    let plain_sql = "SELECT name FROM bench_plain.items WHERE id = $1";
    let rls_sql = "SELECT name FROM bench_rls_items WHERE id = $1";
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); 5];
    for round in 0..=ROUNDS {
        let n = if round == 0 { 200 } else { OPS };
        let start = Instant::now();
        for _ in 0..n {
            let rows = pool.query(plain_sql, &[&1i32]).await.unwrap();
            assert_eq!(rows.len(), 1);
        }
        if round > 0 {
            rates[0].push(n as f64 / start.elapsed().as_secs_f64());
        }
        for (k, (strategy, _, t)) in handles.iter().enumerate() {
            let sql = if *strategy == Strategy::RowLevel {
                rls_sql
            } else {
                SQL
            };
            let start = Instant::now();
            for _ in 0..n {
                let rows = t.query(sql, &[&1i32]).await.unwrap();
                assert_eq!(rows.len(), 1, "{strategy:?}");
            }
            if round > 0 {
                rates[k + 1].push(n as f64 / start.elapsed().as_secs_f64());
            }
        }
    }
    let base = median(rates[0].clone());
    println!("point query, 1 task, medians of {ROUNDS} rounds of {OPS}:");
    println!("  {:<22} {:>9.0} ops/s", "no tenancy", base);
    for (k, (strategy, _, _)) in handles.iter().enumerate() {
        let r = median(rates[k + 1].clone());
        println!(
            "  {:<22} {:>9.0} ops/s  ratio {:.3}  extra {:+.1} µs/op",
            format!("{strategy:?}"),
            r,
            r / base,
            (1.0 / r - 1.0 / base) * 1e6
        );
    }
    // The statement guard alone: a decision on a cached statement (the cost every tenant
    // statement pays), and the first decision on a new text (a parse with PostgreSQL's
    // parser), against the per-operation time of a tenant point query.
    let guard = |sql: &str| pgprovider::tenant::check_statement("bench_schema", sql).unwrap();
    guard(SQL);
    let mut cached = Vec::new();
    for _ in 0..ROUNDS {
        let n = 1_000_000;
        let start = Instant::now();
        for _ in 0..n {
            guard(std::hint::black_box(SQL));
        }
        cached.push(start.elapsed().as_nanos() as f64 / n as f64);
    }
    let texts: Vec<String> = (0..20_000)
        .map(|i| format!("SELECT name FROM items WHERE id = $1 AND {i} = {i}"))
        .collect();
    let start = Instant::now();
    for t in &texts {
        guard(t);
    }
    let parse_us = start.elapsed().as_secs_f64() * 1e6 / texts.len() as f64;
    let hit_ns = median(cached);
    let op_us = 1e6 / median(rates[1].clone());
    println!(
        "  statement guard: {hit_ns:.0} ns per decision on a cached statement ({:.2} % of a schema tenant's point query, {op_us:.1} µs: ratio to no guard {:.4}); {parse_us:.1} µs for a new statement (parse)",
        hit_ns / 10.0 / op_us,
        1.0 - hit_ns / 1000.0 / op_us
    );
    for ((_, tenancy, t), name) in
        handles
            .iter()
            .zip(["bench_schema", "bench_role", "bench_rls", "bench_db"])
    {
        let _ = t;
        tenancy.drop_tenant(name).await.unwrap();
    }
    pool.execute("DROP TABLE bench_rls_items", &[])
        .await
        .unwrap();
    pool.execute("DROP SCHEMA bench_plain CASCADE", &[])
        .await
        .unwrap();
}
