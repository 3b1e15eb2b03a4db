//! Checkout + return with no query: pgprovider's pool against deadpool-postgres and bb8, all
//! with the same size, on the same server, in one run.
//!
//! - `uncontended`: one task, one checkout at a time (target: at most 250 ns per
//!   checkout + return, and no slower than either peer);
//! - `contended_64`: 64 tasks sharing 8 connections, each holding its connection across a
//!   yield so that the others queue for it; the figure is the time per checkout + yield +
//!   return across all tasks. On one thread (deterministic), and again on two workers
//!   (`contended_64_2workers`, realistic but bimodal from work stealing).
//!
//! Peers do no work on checkout either: deadpool with `Fast` recycling, bb8 with
//! `test_on_check_out(false)`. pgprovider enforces its acquire timeout (30 s by default), as
//! does bb8 (`connection_timeout`, 30 s); deadpool runs twice: as configured by default (no
//! wait timeout at all) and with a 30 s wait timeout, the like-for-like setting.

use criterion::{Criterion, criterion_group};
use pgprovider::{Config, Pool};
use pgprovider_bench::{POOL_SIZE, TASKS, server};
use pgprovider_tokio_postgres::TokioPostgres;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONTENDERS: [&str; 4] = ["pgprovider", "deadpool", "deadpool_timeout", "bb8"];

struct Pools {
    ours: Pool<TokioPostgres>,
    deadpool: deadpool_postgres::Pool,
    deadpool_timeout: deadpool_postgres::Pool,
    bb8: bb8::Pool<bb8_postgres::PostgresConnectionManager<tokio_postgres::NoTls>>,
}

impl Pools {
    async fn new(url: &str) -> Pools {
        let sep = if url.contains('?') { '&' } else { '?' };
        let config = Config::from_url(&format!(
            "{url}{sep}pool_max_size={POOL_SIZE}&pool_min_idle={POOL_SIZE}"
        ))
        .unwrap();
        let ours = Pool::new(TokioPostgres::new(), &config, &config.nodes()[0]);
        let pg: tokio_postgres::Config = url.parse().unwrap();
        let deadpool = |timeout: Option<Duration>| {
            let manager = deadpool_postgres::Manager::from_config(
                pg.clone(),
                tokio_postgres::NoTls,
                deadpool_postgres::ManagerConfig {
                    recycling_method: deadpool_postgres::RecyclingMethod::Fast,
                },
            );
            deadpool_postgres::Pool::builder(manager)
                .max_size(POOL_SIZE)
                .wait_timeout(timeout)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .unwrap()
        };
        let bb8 = bb8::Pool::builder()
            .max_size(POOL_SIZE as u32)
            .test_on_check_out(false)
            .connection_timeout(Duration::from_secs(30))
            .build(bb8_postgres::PostgresConnectionManager::new(
                pg.clone(),
                tokio_postgres::NoTls,
            ))
            .await
            .unwrap();
        let pools = Pools {
            ours,
            deadpool: deadpool(None),
            deadpool_timeout: deadpool(Some(Duration::from_secs(30))),
            bb8,
        };
        // Open every connection of every pool before measuring.
        for name in CONTENDERS {
            let mut held = Vec::new();
            for _ in 0..POOL_SIZE {
                held.push(pools.checkout(name).await);
            }
        }
        pools
    }

    /// Checks out from the pool `name` and returns a guard that gives the connection back.
    async fn checkout(&self, name: &str) -> Box<dyn Send + '_> {
        match name {
            "pgprovider" => Box::new(self.ours.get().await.unwrap()),
            "deadpool" => Box::new(self.deadpool.get().await.unwrap()),
            "deadpool_timeout" => Box::new(self.deadpool_timeout.get().await.unwrap()),
            _ => Box::new(self.bb8.get().await.unwrap()),
        }
    }
}

/// One checkout + return on `$pool`, without the dispatch of [`Pools::checkout`].
macro_rules! cycle {
    ($pool:expr, $hold:expr) => {{
        let c = $pool.get().await.unwrap();
        if $hold {
            tokio::task::yield_now().await;
        }
        drop(black_box(c));
    }};
}

/// Runs `iters` cycles on the contender `name`, spread over `tasks` tasks.
async fn run(
    pools: Arc<Pools>,
    name: &'static str,
    iters: u64,
    tasks: u64,
    hold: bool,
) -> Duration {
    let per_task = iters.div_ceil(tasks);
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let p = pools.clone();
        set.spawn(async move {
            for _ in 0..per_task {
                match name {
                    "pgprovider" => cycle!(p.ours, hold),
                    "deadpool" => cycle!(p.deadpool, hold),
                    "deadpool_timeout" => cycle!(p.deadpool_timeout, hold),
                    _ => cycle!(p.bb8, hold),
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    start
        .elapsed()
        .mul_f64(iters as f64 / (per_task * tasks) as f64)
}

fn bench(c: &mut Criterion, group: &str, rt: tokio::runtime::Runtime, tasks: u64, hold: bool) {
    let url = rt.block_on(server());
    let pools = Arc::new(rt.block_on(Pools::new(&url)));
    let mut g = c.benchmark_group(group);
    for name in CONTENDERS {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| rt.block_on(run(pools.clone(), name, iters, tasks, hold)))
        });
    }
    g.finish();
}

fn uncontended(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    bench(c, "uncontended", rt, 1, false);
}

fn contended(c: &mut Criterion) {
    // One thread: scheduling is deterministic, so the difference is the pools' own cost.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    bench(c, &format!("contended_{TASKS}"), rt, TASKS as u64, true);
    // Two workers, as a service would run: closer to production, but work stealing makes
    // runs bimodal for every contender; compare medians of several runs.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    bench(
        c,
        &format!("contended_{TASKS}_2workers"),
        rt,
        TASKS as u64,
        true,
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = uncontended, contended
}

/// Reads criterion's median estimate (ns) for `group/function`.
fn median(dir: &std::path::Path, group: &str, function: &str) -> Option<f64> {
    let text =
        std::fs::read_to_string(dir.join(group).join(function).join("new/estimates.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    let dir = std::env::var_os("CRITERION_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(|d| std::path::PathBuf::from(d).join("criterion"))
        })
        .unwrap_or_else(|| std::path::PathBuf::from("target/criterion"));
    println!(
        "\nmedian ns per checkout + return; ratios are the peer's time over pgprovider's (>1: pgprovider is faster)"
    );
    println!(
        "{:<22} {:>10} {:>9} {:>12} {:>8} {:>12} {:>12} {:>8}",
        "workload",
        "pgprovider",
        "deadpool",
        "deadpool_30s",
        "bb8",
        "vs deadpool",
        "vs dp_30s",
        "vs bb8"
    );
    for group in [
        "uncontended".to_owned(),
        format!("contended_{TASKS}"),
        format!("contended_{TASKS}_2workers"),
    ] {
        let m: Vec<Option<f64>> = CONTENDERS.iter().map(|f| median(&dir, &group, f)).collect();
        if let [Some(ours), Some(dp), Some(dpt), Some(b8)] = m[..] {
            println!(
                "{group:<22} {ours:>10.1} {dp:>9.1} {dpt:>12.1} {b8:>8.1} {:>11.2}x {:>11.2}x {:>7.2}x",
                dp / ours,
                dpt / ours,
                b8 / ours
            );
        }
    }
}
