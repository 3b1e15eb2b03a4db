//! `pgprovider bench --autoscale`: how fast an auto-scaling pool follows its load.
//!
//! One pool with `pool_autoscale=on`, `pool_min_idle=2`, `pool_max_size=--connections×4`,
//! a 1 ms wait threshold (so the step's load needs every connection) and a 2 s idle window; tasks run a 1 ms statement (`SELECT pg_sleep(0.001)`) in a loop.
//! Phases: 2 tasks (1 s); a step to `--connections×4` tasks, timing how long the size
//! takes to go 90 % of the way to what it settles at (and all of it: the growth stops
//! where the mean wait falls below `pool_autoscale_wait`); back to 2 tasks, timing the shrink; then an
//! oscillating load (the many tasks for 0.5 s, 2 tasks for 0.5 s, six times), counting the
//! size changes it causes.

use crate::opt::BenchArgs;
use pgprovider::{Config, Pool, Queries};
use pgprovider_tokio_postgres::TokioPostgres;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const LOW: usize = 2;
const IDLE_WINDOW: &str = "2s";
/// Below the 1 ms statement, so the step's load needs every connection: the size the pool
/// must reach is its maximum.
const WAIT: &str = "1ms";

pub(crate) async fn run(args: &BenchArgs, url: &str) -> anyhow::Result<Value> {
    let high = args.connections * 4;
    let config = Config::from_url(&format!(
        "{url}&pool_autoscale=on&pool_min_idle={LOW}&pool_max_size={high}&pool_autoscale_idle={IDLE_WINDOW}&pool_autoscale_wait={WAIT}"
    ))?;
    let a = config.pool().autoscale().expect("on");
    crate::say!(
        "auto-scaling: pool_min_idle={LOW}, pool_max_size={high}, wait {:?}, step {}, cooldown {:?}, idle window {:?}; tasks run SELECT pg_sleep(0.001)",
        a.wait(),
        a.step(),
        a.cooldown(),
        a.idle()
    );
    let pool = Pool::new(TokioPostgres::new(), &config, &config.nodes()[0]);
    let (load, active) = watch::channel(LOW);
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..high {
        let (pool, mut active) = (pool.clone(), active.clone());
        workers.spawn(async move {
            loop {
                let n = *active.borrow_and_update();
                if n == usize::MAX {
                    return anyhow::Ok(());
                }
                if i < n {
                    let mut c = pool.get().await?;
                    c.query("SELECT pg_sleep(0.001)", &[]).await?;
                } else if active.changed().await.is_err() {
                    return Ok(());
                }
            }
        });
    }
    let size = || pool.stats().max_size as usize;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = size();

    // The step up: the size it settles at, and when it first got there.
    load.send_replace(high);
    let step_at = Instant::now();
    let trace = follow(&size, Duration::from_secs(3)).await;
    let settled = trace.last().map_or(before, |(_, s)| *s);
    let ms = |t: &Instant, from: Instant| t.saturating_duration_since(from).as_secs_f64() * 1000.0;
    // Rise time: to 90 % of the way to the size it settled at; and the last change.
    let ninety = before + (settled.saturating_sub(before) * 9).div_ceil(10);
    let grow_ms = trace
        .iter()
        .find(|(_, s)| *s >= ninety)
        .map_or(0.0, |(t, _)| ms(t, step_at));
    let settle_ms = trace
        .iter()
        .find(|(_, s)| *s >= settled)
        .map_or(0.0, |(t, _)| ms(t, step_at));

    // The step down.
    load.send_replace(LOW);
    let down_at = Instant::now();
    let trace = follow(&size, config.pool().autoscale().expect("on").idle() * 4).await;
    let shrunk = trace.last().map_or(settled, |(_, s)| *s);
    let shrink_ms = trace
        .iter()
        .find(|(_, s)| *s <= shrunk)
        .map_or(0.0, |(t, _)| ms(t, down_at));

    // Oscillation: the changes it causes.
    load.send_replace(high);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (g0, s0) = {
        let s = pool.stats();
        (s.autoscale_grows, s.autoscale_shrinks)
    };
    let (mut lo, mut hi) = (usize::MAX, 0);
    for cycle in 0..12 {
        load.send_replace(if cycle % 2 == 0 { LOW } else { high });
        for (_, s) in follow(&size, Duration::from_millis(500)).await {
            lo = lo.min(s);
            hi = hi.max(s);
        }
    }
    let s = pool.stats();
    let (grows, shrinks) = (s.autoscale_grows - g0, s.autoscale_shrinks - s0);
    load.send_replace(usize::MAX);
    while let Some(r) = workers.join_next().await {
        r??;
    }
    pool.close().await;

    crate::say!(
        "  {LOW} tasks: size {before}; step to {high} tasks: settled at {settled}, 90 % of the way in {grow_ms:.0} ms, all of it in {settle_ms:.0} ms; back to {LOW} tasks: size {shrunk} after {shrink_ms:.0} ms"
    );
    crate::say!(
        "  oscillating {LOW} ↔ {high} tasks every 0.5 s for 6 s: size between {lo} and {hi}, {grows} growths and {shrinks} shrinks"
    );
    Ok(json!({
        "low_tasks": LOW,
        "high_tasks": high,
        "size_before": before,
        "size_after_step": settled,
        "grow_90_ms": grow_ms,
        "grow_all_ms": settle_ms,
        "size_after_drop": shrunk,
        "shrink_ms": shrink_ms,
        "oscillation_min_size": lo,
        "oscillation_max_size": hi,
        "oscillation_grows": grows,
        "oscillation_shrinks": shrinks,
    }))
}

/// The size every 5 ms for `d`.
async fn follow(size: &impl Fn() -> usize, d: Duration) -> Vec<(Instant, usize)> {
    let end = Instant::now() + d;
    let mut v = Vec::new();
    while Instant::now() < end {
        v.push((Instant::now(), size()));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    v
}
