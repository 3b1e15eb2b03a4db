//! `pgprovider soak`: a mixed workload through the provider for a chosen duration, with
//! random faults injected through the test kit's fault proxy in front of an embedded
//! server, then the checks a long-running service needs:
//!
//! - every acknowledged write is present (checked in batches as the soak goes, so the
//!   soak's own memory stays flat however long it runs);
//! - errors only where faults were injected: an operation that failed must overlap a fault
//!   window (widened by the time the provider's layers may take to give up);
//! - no server connection left behind once the provider is closed;
//! - client memory flat: resident memory after warm-up compared with the end, within a
//!   stated bound (`--max-growth-mib`, 16 by default).

use crate::opt::SoakArgs;
use pgprovider::provider::{Provider, TopologyOptions};
use pgprovider::{Config, TxOptions};
use pgprovider_testkit::{FaultProxy, TestCluster};
use pgprovider_tokio_postgres::TokioPostgres;
use serde_json::json;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long after a fault ends an operation may still fail because of it: the retry
/// budget (the failover timeout, 3 s) plus one last attempt (a query timeout of 2 s and a
/// cancel bounded by the connect timeout, 1 s), plus a second. Faults are spaced so that
/// quiet periods lie between these windows, where every operation must succeed.
const GRACE: Duration = Duration::from_secs(7);
const APP: &str = "pgprovider-soak";

#[derive(Default)]
struct Log {
    /// Fault windows: kind, start, end.
    faults: Vec<(&'static str, Instant, Instant)>,
    /// Failed operations: what, start, end, error.
    failures: Vec<(&'static str, Instant, Instant, String)>,
    /// Acknowledged ids not yet checked on the server.
    unchecked: Vec<i64>,
    ops: u64,
    unknown_writes: u64,
}

/// Runs the soak.
///
/// # Errors
/// When the embedded cluster cannot be started, or the final checks cannot be made.
pub(crate) async fn run(args: SoakArgs) -> anyhow::Result<ExitCode> {
    eprintln!("starting an embedded server with a fault proxy in front of it");
    let cluster = TestCluster::start()
        .await
        .map_err(|e| anyhow::anyhow!("{e}").context("cannot start the embedded cluster"))?;
    let target = format!("127.0.0.1:{}", cluster.primary().port()).parse()?;
    let proxy = FaultProxy::start(target).await?;
    let config = Config::from_url(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres?application_name={APP}&connect_timeout=1&query_timeout=2s&pool_acquire_timeout=3s&pool_max_size={}",
        proxy.port(),
        args.tasks + 2
    ))?;
    let provider = Provider::new(
        TokioPostgres::new(),
        &config,
        TopologyOptions::default()
            .with_monitor_interval(Duration::from_millis(200))
            .with_failover_timeout(Duration::from_secs(3)),
    );
    provider
        .primary()
        .execute(
            "CREATE TABLE soak (id bigint PRIMARY KEY, payload text, at timestamptz DEFAULT now())",
            &[],
        )
        .await?;

    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let next_id = Arc::new(AtomicU64::new(1));
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..args.tasks {
        let (provider, log, stop, next_id) =
            (provider.clone(), log.clone(), stop.clone(), next_id.clone());
        tasks.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Relaxed) {
                n += 1;
                let start = Instant::now();
                let id = next_id.fetch_add(1, Relaxed) as i64;
                // A mix: plain writes, transactions of several statements, reads on the
                // read route, and batches of reads.
                let (what, r) = match (t + n as usize) % 4 {
                    0 => (
                        "write",
                        provider
                            .primary()
                            .execute(
                                "INSERT INTO soak (id, payload) VALUES ($1, repeat('x', 100))",
                                &[&id],
                            )
                            .await
                            .map(|_| true),
                    ),
                    1 => (
                        "transaction",
                        provider
                            .primary()
                            .transaction(&TxOptions::new(), |tx| async move {
                                tx.execute("INSERT INTO soak (id) VALUES ($1)", &[&id])
                                    .await?;
                                tx.query(
                                    "SELECT count(*) FROM soak WHERE id > $1::bigint - 100",
                                    &[&id],
                                )
                                .await?;
                                Ok(())
                            })
                            .await
                            .map(|()| true),
                    ),
                    2 => (
                        "read",
                        provider
                            .read()
                            .query(
                                "SELECT id, payload FROM soak WHERE id > $1::bigint - 50",
                                &[&id],
                            )
                            .await
                            .map(|_| false),
                    ),
                    _ => (
                        "query",
                        provider
                            .primary()
                            .query("SELECT pg_backend_pid(), now(), $1::bigint", &[&id])
                            .await
                            .map(|_| false),
                    ),
                };
                let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                l.ops += 1;
                match r {
                    Ok(true) => l.unchecked.push(id),
                    Ok(false) => {}
                    Err(e) => {
                        if matches!(what, "write" | "transaction") && e.is_connection_lost() {
                            l.unknown_writes += 1;
                        }
                        l.failures
                            .push((what, start, Instant::now(), e.to_string()));
                    }
                }
            }
        });
    }

    let started = Instant::now();
    let end = started + args.duration;
    let warm = started + (args.duration / 10).min(Duration::from_secs(10));
    let mut rng = SplitMix(args.seed);
    let mut rss = Vec::new();
    let mut missing = 0u64;
    let mut checked = 0u64;
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut next_fault = started + Duration::from_secs(2);
    while Instant::now() < end {
        if Instant::now() >= next_fault {
            // Every kind in turn (from a seeded start), each held for a random time.
            let which = (args.seed as usize + counts.values().sum::<u64>() as usize) % 6;
            let (kind, from, to, made) = inject(which, &mut rng, &proxy, &cluster).await;
            // A fault that could not be made still gets its window (it may have half
            // happened) but does not count as injected.
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .faults
                .push((kind, from, to));
            *counts
                .entry(if made { kind } else { "not_made" })
                .or_default() += 1;
            let jitter = rng.below(args.fault_every.as_millis() as u64 + 1);
            next_fault =
                Instant::now() + GRACE + args.fault_every / 2 + Duration::from_millis(jitter);
        }
        if Instant::now() >= warm {
            rss.push(resident_kib());
        }
        // Check the acknowledged writes so far, and forget them.
        let batch = std::mem::take(&mut log.lock().unwrap_or_else(|e| e.into_inner()).unchecked);
        match present(&provider, &batch).await {
            Some(n) => {
                missing += batch.len() as u64 - n;
                checked += batch.len() as u64;
            }
            None => log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .unchecked
                .extend(batch),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Relaxed);
    while tasks.join_next().await.is_some() {}
    proxy.heal();
    let batch = std::mem::take(&mut log.lock().unwrap_or_else(|e| e.into_inner()).unchecked);
    let n = present(&provider, &batch)
        .await
        .ok_or_else(|| anyhow::anyhow!("cannot check the last writes"))?;
    missing += batch.len() as u64 - n;
    checked += batch.len() as u64;
    provider.close().await;
    drop(provider);
    let leftover = leftover_sessions(&cluster).await?;

    let l = log.lock().unwrap_or_else(|e| e.into_inner());
    let outside: Vec<&(&str, Instant, Instant, String)> = l
        .failures
        .iter()
        .filter(|(_, s, e, _)| {
            !l.faults
                .iter()
                .any(|(_, fs, fe)| *s <= *fe + GRACE && *e >= *fs)
        })
        .collect();
    // Resident memory: the median of the first and of the last tenth after warm-up.
    let tenth = (rss.len() / 10).max(1);
    let median = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    let (first, last) = if rss.is_empty() {
        (0, 0)
    } else {
        (median(&rss[..tenth]), median(&rss[rss.len() - tenth..]))
    };
    let growth_kib = last as i64 - first as i64;
    let bound_kib = args.max_growth_mib as i64 * 1024;
    let report = json!({
        "duration_s": started.elapsed().as_secs_f64().round(),
        "operations": l.ops,
        "failed_operations": l.failures.len(),
        "errors_outside_faults": outside.len(),
        "first_error_outside_faults": outside.first().map(|(w, _, _, e)| format!("{w}: {e}")),
        "faults_injected": counts,
        "acked_writes_checked": checked,
        "missing_writes": missing,
        "unknown_writes": l.unknown_writes,
        "leftover_server_connections": leftover,
        "rss_after_warmup_kib": first,
        "rss_at_end_kib": last,
        "rss_growth_kib": growth_kib,
        "rss_growth_bound_kib": bound_kib,
    });
    crate::say!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_string())?;
    }
    let made: u64 = counts
        .iter()
        .filter(|(k, _)| **k != "not_made")
        .map(|(_, n)| n)
        .sum();
    if made == 0 {
        eprintln!("no fault was injected: run for longer than 2 s plus --fault-every");
    }
    let clean = missing == 0
        && outside.is_empty()
        && leftover == 0
        && growth_kib <= bound_kib
        && checked > 0
        && made > 0;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Injects fault number `which` (0 to 5) and waits until it is over: its kind, its window,
/// and whether it could be made.
async fn inject(
    which: usize,
    rng: &mut SplitMix,
    proxy: &FaultProxy,
    cluster: &TestCluster,
) -> (&'static str, Instant, Instant, bool) {
    let start = Instant::now();
    let hold = Duration::from_millis(300 + rng.below(900));
    let mut made = true;
    let kind = match which {
        0 => {
            proxy.set_latency(Duration::from_millis(50));
            tokio::time::sleep(hold).await;
            proxy.heal();
            "latency"
        }
        1 => {
            proxy.reset_all();
            "reset"
        }
        2 => {
            proxy.blackhole();
            tokio::time::sleep(hold).await;
            proxy.heal();
            "blackhole"
        }
        3 => {
            proxy.refuse();
            tokio::time::sleep(hold).await;
            proxy.heal();
            "refuse"
        }
        4 => {
            made = cluster.primary().pause().is_ok();
            if made {
                tokio::time::sleep(hold).await;
                made = cluster.primary().resume().is_ok();
            }
            "pause"
        }
        _ => {
            // The server ends our sessions (an administrator, or a pooler restart).
            made = cluster
                .primary()
                .execute(&format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{APP}'"))
                .await
                .is_ok();
            "terminate"
        }
    };
    (kind, start, Instant::now(), made)
}

/// How many of `ids` the server has, or `None` when it cannot be asked now (a fault).
async fn present(provider: &Provider<TokioPostgres>, ids: &[i64]) -> Option<u64> {
    if ids.is_empty() {
        return Some(0);
    }
    let ids = ids.to_vec();
    let row = provider
        .primary()
        .query_one("SELECT count(*) FROM soak WHERE id = ANY($1)", &[&ids])
        .await
        .ok()?;
    Some(row.get::<_, i64>(0) as u64)
}

/// Sessions of the soak still on the server (waiting up to 5 s for them to end).
async fn leftover_sessions(cluster: &TestCluster) -> anyhow::Result<u64> {
    let q = format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{APP}'");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n: u64 = cluster
            .primary()
            .query_one(&q)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .parse()?;
        if n == 0 || Instant::now() > deadline {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// This process's resident memory in KiB (0 where /proc is missing).
fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// A small seeded generator, so a soak's fault sequence can be replayed with `--seed`.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n.max(1)
    }
}
