//! `pgprovider demo`: a short mixed workload through the provider (the front door: typed
//! statements and transactions on driver-neutral values, whichever driver is chosen), then a
//! summary.

use crate::Exit;
use crate::opt::DemoArgs;
use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use pgprovider::provider::{Provider, TopologyOptions};
use pgprovider::{AnyDriver, Config, Connection, Driver, PoolStats, TxOptions, Value};
use pgprovider_testkit::TestCluster;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const KINDS: [&str; 3] = ["read", "write", "transaction"];

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if args.ops == 0 || args.tasks == 0 {
        return Err(Exit(2, "--ops and --tasks must be at least 1".into()).into());
    }
    let registry = crate::registry();
    let driver = registry
        .get(&args.driver)
        .map_err(|e| Exit(2, e.to_string()))?;
    let (config, cluster) = match &args.url {
        Some(url) => (Config::from_url(url)?, None),
        None => {
            let cluster = start_embedded().await?;
            let url = format!(
                "{}?application_name=pgprovider-demo&pool_max_size=8",
                cluster.primary().url()
            );
            (Config::from_url(&url)?, Some(cluster))
        }
    };
    let node = &config.nodes()[0];
    let where_ = if cluster.is_some() {
        "embedded throwaway cluster"
    } else {
        "DATABASE_URL"
    };
    crate::say!(
        "pgprovider demo: driver {}, node {node} ({where_})",
        args.driver
    );

    // One direct attempt first, so an unreachable node fails at once with its own error
    // instead of after the pool's acquire timeout.
    let probe = driver.connect(&config.connect_params(node).await?).await?;
    probe.close().await;

    let provider = registry.provider(&args.driver, &config, TopologyOptions::default())?;
    let table = format!("pgprovider_demo_{}", std::process::id());
    provider
        .execute(
            &format!(
                "CREATE TABLE {table} (id bigserial PRIMARY KEY, task int NOT NULL, counter bigint NOT NULL DEFAULT 0, note text)"
            ),
            &[],
        )
        .await
        .context("cannot create the demo table")?;
    let outcome = workload(&provider, &table, &args).await;
    let verified = match &outcome {
        Ok(r) => verify(&provider, &table, r).await,
        Err(_) => Ok(()),
    };
    // Always remove what the demo created, whatever happened above.
    let cleanup = provider
        .execute(&format!("DROP TABLE IF EXISTS {table}"), &[])
        .await;
    let stats = provider
        .stats()
        .into_iter()
        .next()
        .map(|(_, s)| s)
        .unwrap_or_default();
    provider.close().await;
    drop(cluster);
    let report = outcome?;
    verified?;
    cleanup.context("cannot drop the demo table")?;
    print_report(&report, &stats, config.pool().max_size());
    crate::say!("removed table {table}; everything the demo created is gone");
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn start_embedded() -> anyhow::Result<TestCluster> {
    eprintln!("DATABASE_URL is not set: starting a throwaway PostgreSQL cluster");
    let pb = ProgressBar::new_spinner();
    pb.enable_steady_tick(Duration::from_millis(100));
    pb.set_message("starting an embedded PostgreSQL cluster");
    let p = pb.clone();
    let cluster = TestCluster::builder()
        .on_progress(move |step| p.set_message(format!("embedded cluster: {step}")))
        .start()
        .await;
    pb.finish_and_clear();
    cluster.map_err(|e| {
        anyhow::anyhow!("{e}").context(
            "cannot start the embedded cluster (set DATABASE_URL to use an existing server)",
        )
    })
}

#[derive(Default)]
struct Report {
    latencies: [Vec<Duration>; 3],
    errors: [u64; 3],
    rows_written: u64,
    elapsed: Duration,
    first_error: Option<String>,
}

async fn workload(
    provider: &Provider<AnyDriver>,
    table: &str,
    args: &DemoArgs,
) -> anyhow::Result<Report> {
    let next = Arc::new(AtomicU64::new(0));
    let bar = ProgressBar::new(args.ops);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} operations {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..args.tasks {
        let (provider, next, bar, table, ops) = (
            provider.clone(),
            next.clone(),
            bar.clone(),
            table.to_owned(),
            args.ops,
        );
        tasks.spawn(async move {
            let mut r = Report::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    break;
                }
                let kind = match i % 10 {
                    0..=4 => 0,
                    5..=7 => 1,
                    _ => 2,
                };
                let t = Instant::now();
                let (task_v, table) = (Value::from(task as i64), table.as_str());
                let res = match kind {
                    0 => provider
                        .query(
                            &format!("SELECT count(*), coalesce(sum(counter), 0)::bigint FROM {table} WHERE task = $1"),
                            &[&task_v],
                        )
                        .await
                        .map(|_| ()),
                    1 => provider
                        .execute(
                            &format!("INSERT INTO {table} (task, note) VALUES ($1, $2)"),
                            &[&task_v, &Value::from(format!("write {i}"))],
                        )
                        .await
                        .map(|_| ()),
                    _ => {
                        let task_v = &task_v;
                        provider
                            .transaction(&TxOptions::new(), |tx| async move {
                                tx.execute(
                                    &format!("UPDATE {table} SET counter = counter + 1 WHERE id = (SELECT max(id) FROM {table} WHERE task = $1)"),
                                    &[task_v],
                                )
                                .await?;
                                tx.execute(
                                    &format!("INSERT INTO {table} (task, note) VALUES ($1, $2)"),
                                    &[task_v, &Value::from(format!("transaction {i}"))],
                                )
                                .await
                            })
                            .await
                            .map(|_| ())
                    }
                };
                match res {
                    Ok(()) => {
                        r.latencies[kind].push(t.elapsed());
                        r.rows_written += u64::from(kind > 0);
                    }
                    Err(e) => {
                        r.errors[kind] += 1;
                        r.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
                bar.inc(1);
            }
            r
        });
    }
    let mut total = Report::default();
    while let Some(done) = tasks.join_next().await {
        let r = done.context("a workload task failed")?;
        for k in 0..3 {
            total.latencies[k].extend(&r.latencies[k]);
            total.errors[k] += r.errors[k];
        }
        total.rows_written += r.rows_written;
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
    }
    bar.finish_and_clear();
    total.elapsed = start.elapsed();
    Ok(total)
}

/// Checks that every acknowledged write is in the table, and nothing else.
async fn verify(provider: &Provider<AnyDriver>, table: &str, r: &Report) -> anyhow::Result<()> {
    let (n,): (i64,) = provider
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await?
        .to()?;
    let n = n as u64;
    anyhow::ensure!(
        n == r.rows_written,
        "the table holds {n} rows but {} writes were acknowledged",
        r.rows_written
    );
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

fn print_report(r: &Report, s: &PoolStats, max_size: usize) {
    crate::say!("");
    crate::say!(
        "{:<12} {:>8} {:>7} {:>9} {:>9}",
        "operation",
        "count",
        "errors",
        "p50 ms",
        "p99 ms"
    );
    let mut total = 0;
    for (k, name) in KINDS.iter().enumerate() {
        let mut l = r.latencies[k].clone();
        l.sort();
        total += l.len() as u64;
        crate::say!(
            "{name:<12} {:>8} {:>7} {:>9.2} {:>9.2}",
            l.len(),
            r.errors[k],
            percentile(&l, 0.5),
            percentile(&l, 0.99)
        );
    }
    let errors: u64 = r.errors.iter().sum();
    let rate = total as f64 / r.elapsed.as_secs_f64().max(1e-9);
    crate::say!(
        "{:<12} {total:>8} {errors:>7}   {rate:.0} ops/s over {:.2} s",
        "total",
        r.elapsed.as_secs_f64()
    );
    crate::say!("rows written and verified: {}", r.rows_written);
    if let Some(e) = &r.first_error {
        crate::say!("first error: {e}");
    }
    crate::say!("");
    crate::say!("{:<26} {:>10}", "pool statistic", "value");
    let avg_wait = s.acquire_wait_total.as_secs_f64() * 1e3 / (s.acquired.max(1) as f64);
    for (name, value) in [
        ("max size", max_size.to_string()),
        ("open connections", s.size.to_string()),
        ("idle", s.idle.to_string()),
        ("in use", s.in_use.to_string()),
        ("checkouts", s.acquired.to_string()),
        ("checkout timeouts", s.timeouts.to_string()),
        ("mean checkout wait ms", format!("{avg_wait:.3}")),
        (
            "max checkout wait ms",
            format!("{:.3}", s.acquire_wait_max.as_secs_f64() * 1e3),
        ),
        (
            "checkout wait p99 ms (<=)",
            format!("{:.3}", s.acquire_wait_quantile(0.99).as_secs_f64() * 1e3),
        ),
        ("sessions reset on return", s.resets.to_string()),
        ("leaks reported", s.leaks.to_string()),
        ("connections created", s.created.to_string()),
        ("connect errors", s.connect_errors.to_string()),
        ("closed: error", s.closed_error.to_string()),
        ("closed: lifetime", s.closed_lifetime.to_string()),
        ("closed: idle", s.closed_idle.to_string()),
        ("closed: validation", s.closed_validation.to_string()),
    ] {
        crate::say!("{name:<26} {value:>10}");
    }
    crate::say!("");
}
