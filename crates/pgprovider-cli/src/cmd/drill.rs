//! `pgprovider drill failover`: kill the primary under load, promote the standby, and check
//! the fate of every write.
//!
//! Every write inserts a unique id and ends as **ok** (acknowledged), **failed** (never
//! sent: no connection could be had) or **unknown** (sent, then the reply was lost).
//! Afterwards the ids on the new primary are compared with that history: an ok write that
//! is missing is lost; a present id never attempted is a phantom; a failed write present is
//! counted too (it would mean "failed" lied); duplicates cannot exist (primary key) but are
//! counted anyway.

use crate::opt::FailoverArgs;
use pgprovider::provider::{Provider, TopologyOptions};
use pgprovider::{Config, ErrorKind, TxOptions};
use pgprovider_testkit::TestCluster;
use pgprovider_tokio_postgres::TokioPostgres;
use serde_json::json;
use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct History {
    ok: Vec<(i64, Instant)>,
    failed: Vec<i64>,
    unknown: Vec<i64>,
}

pub(crate) async fn failover(args: FailoverArgs) -> anyhow::Result<ExitCode> {
    let sync = !args.asynchronous;
    eprintln!(
        "starting an embedded primary with an {} standby",
        if sync { "synchronous" } else { "asynchronous" }
    );
    let cluster = TestCluster::builder()
        .standbys(1)
        .synchronous(sync)
        .start()
        .await
        .map_err(|e| anyhow::anyhow!("{e}").context("cannot start the embedded cluster"))?;
    let (p, s) = (cluster.primary(), cluster.standby(0));
    let config = Config::from_url(&format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?connect_timeout=1&pool_acquire_timeout=2s&pool_max_size={}",
        p.port(),
        s.port(),
        args.writers.max(1) + 2
    ))?;
    let provider = Provider::new(
        TokioPostgres::new(),
        &config,
        TopologyOptions::default()
            .with_monitor_interval(Duration::from_millis(100))
            .with_failover_timeout(Duration::from_secs(20))
            .with_max_replica_lag_bytes(None),
    );
    provider
        .primary()
        .execute(
            "CREATE TABLE drill (id bigint PRIMARY KEY, at timestamptz DEFAULT now())",
            &[],
        )
        .await?;
    // The standby has the table before reads start (an asynchronous one may lag).
    cluster
        .wait_for_replay(s)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let history = Arc::new(Mutex::new(History::default()));
    let next_id = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let failed_reads = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.writers.max(1) {
        let (provider, history, next_id, stop) = (
            provider.clone(),
            history.clone(),
            next_id.clone(),
            stop.clone(),
        );
        tasks.spawn(async move {
            while !stop.load(Relaxed) {
                let id = next_id.fetch_add(1, Relaxed) as i64;
                // Through the provider's own API: plain statements and transactions in
                // turn, both on the primary route (retried and re-run by its layers).
                let insert = "INSERT INTO drill (id) VALUES ($1)";
                let r = if id % 2 == 0 {
                    provider.primary().execute(insert, &[&id]).await
                } else {
                    provider
                        .primary()
                        .transaction(&TxOptions::new(), |tx| async move {
                            tx.execute(insert, &[&id]).await
                        })
                        .await
                };
                let outcome = r.map_err(|e| match e.kind() {
                    // Nothing was sent, or the server refused it: not applied.
                    ErrorKind::Connect
                    | ErrorKind::PoolTimeout
                    | ErrorKind::CircuitOpen
                    | ErrorKind::Overloaded => false,
                    // A definite refusal from the server did not apply; anything else after
                    // sending may have.
                    k => k != ErrorKind::Database || e.is_connection_lost(),
                });
                let mut h = history.lock().unwrap_or_else(|e| e.into_inner());
                match outcome {
                    Ok(_) => h.ok.push((id, Instant::now())),
                    Err(false) => h.failed.push(id),
                    Err(true) => h.unknown.push(id),
                }
            }
        });
    }
    let read_error = Arc::new(Mutex::new(None::<String>));
    {
        let (provider, stop, failed_reads, read_error) = (
            provider.clone(),
            stop.clone(),
            failed_reads.clone(),
            read_error.clone(),
        );
        tasks.spawn(async move {
            while !stop.load(Relaxed) {
                if let Err(e) = provider
                    .read()
                    .query("SELECT count(*) FROM drill", &[])
                    .await
                {
                    failed_reads.fetch_add(1, Relaxed);
                    read_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert_with(|| e.to_string());
                }
            }
        });
    }
    // Steady load first.
    wait_for_acks(&history, 200).await;
    eprintln!("killing the primary and promoting the standby");
    let killed = Instant::now();
    p.crash()?;
    s.promote().await?;
    let promoted = Instant::now();
    let acked_before = history.lock().unwrap_or_else(|e| e.into_inner()).ok.len();
    wait_for_acks(&history, acked_before + 200).await;
    stop.store(true, Relaxed);
    while tasks.join_next().await.is_some() {}

    let present: Vec<i64> = provider
        .primary()
        .query("SELECT id FROM drill", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let duplicates = present.len() - present.iter().collect::<HashSet<_>>().len();
    let present: HashSet<i64> = present.into_iter().collect();
    let h = history.lock().unwrap_or_else(|e| e.into_inner());
    let attempted: HashSet<i64> =
        h.ok.iter()
            .map(|(id, _)| *id)
            .chain(h.failed.iter().copied())
            .chain(h.unknown.iter().copied())
            .collect();
    let lost = h.ok.iter().filter(|(id, _)| !present.contains(id)).count();
    let phantoms = present.iter().filter(|id| !attempted.contains(id)).count();
    let failed_present = h.failed.iter().filter(|id| present.contains(id)).count();
    let mut times: Vec<Instant> = h.ok.iter().map(|(_, t)| *t).collect();
    times.sort();
    let recovery = times
        .iter()
        .find(|t| **t > promoted)
        .map(|t| t.duration_since(promoted));
    let gap = times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    let report = json!({
        "synchronous": sync,
        "recovery_ms": recovery.map(|d| d.as_secs_f64() * 1e3),
        "kill_to_promotion_ms": promoted.duration_since(killed).as_secs_f64() * 1e3,
        "lost_writes": lost,
        "failed_reads": failed_reads.load(Relaxed),
        "failed_writes": h.failed.len(),
        "unknown_writes": h.unknown.len(),
        "phantoms": phantoms,
        "failed_but_present": failed_present,
        "duplicates": duplicates,
        "write_gap_ms": gap.as_secs_f64() * 1e3,
        "acknowledged_writes": h.ok.len(),
        "first_failed_read": *read_error.lock().unwrap_or_else(|e| e.into_inner()),
    });
    crate::say!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_string())?;
    }
    let clean = phantoms == 0 && duplicates == 0 && failed_present == 0 && (!sync || lost == 0);
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Waits until `n` writes were acknowledged (bounded: a drill whose writes stall ends).
async fn wait_for_acks(history: &Mutex<History>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while history.lock().unwrap_or_else(|e| e.into_inner()).ok.len() < n
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
