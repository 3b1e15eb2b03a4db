//! `pgprovider drill failover | switchover`: fail the primary under load and check the fate
//! of every write, on an embedded cluster or on the user's own (`--url --fault-command`).
//!
//! Every write inserts a unique id and ends as **ok** (acknowledged), **failed** (never
//! applied: no connection could be had, or the server refused it) or **unknown** (sent,
//! then the reply was lost). Afterwards the ids on the new primary are compared with that
//! history: an ok write that is missing is lost; a present id never attempted is a phantom;
//! a failed write present is counted too (it would mean "failed" lied); duplicates cannot
//! exist (primary key) but are counted anyway.
//!
//! Independent observers (one connection per node, outside the provider; see `observe`)
//! tell when a new primary first accepted a write: `new_primary_writable_ms` is the fault's
//! start → that moment, `recovery_ms` that moment → the first write the provider
//! acknowledged after it.

mod observe;

use crate::Exit;
use crate::opt::DrillArgs;
use observe::Observers;
use pgprovider::provider::{Provider, TopologyOptions};
use pgprovider::{Config, ErrorKind, TxOptions};
use pgprovider_testkit::TestCluster;
use pgprovider_tokio_postgres::TokioPostgres;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which drill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The primary fails (embedded: SIGKILL, then the standby is promoted).
    Failover,
    /// A planned switchover (embedded: a clean stop, then the standby is promoted).
    Switchover,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Failover => "failover",
            Kind::Switchover => "switchover",
        }
    }
}

#[derive(Default)]
struct History {
    ok: Vec<(i64, Instant)>,
    failed: Vec<i64>,
    unknown: Vec<i64>,
    first_failed: Option<String>,
}

/// How the fault is made.
enum Fault<'a> {
    Embedded(&'a TestCluster),
    Command(&'a str),
}

/// Runs the drill `args.runs` times and reports.
///
/// # Errors
/// Bad options (exit 2), a cluster that cannot be reached or started, a fault or heal
/// command that fails.
pub(crate) async fn run(kind: Kind, args: DrillArgs) -> anyhow::Result<ExitCode> {
    if args.writers == 0 || args.runs == 0 || args.acks == 0 {
        return Err(Exit(2, "--writers, --runs and --acks must be at least 1".into()).into());
    }
    if args.url.is_some() && args.asynchronous {
        return Err(Exit(
            2,
            "--async chooses the embedded cluster's standby; your cluster's replication is its own"
                .into(),
        )
        .into());
    }
    let mut reports = Vec::new();
    for n in 1..=args.runs {
        if args.runs > 1 {
            eprintln!("run {n} of {}", args.runs);
        }
        let report = match (&args.url, &args.fault_command) {
            (Some(url), Some(cmd)) => {
                let config = Config::from_url(url).map_err(|e| Exit(2, e.to_string()))?;
                drill(kind, &args, &config, Fault::Command(cmd)).await?
            }
            _ => embedded(kind, &args).await?,
        };
        if args.runs == 1 {
            crate::say!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            crate::say!("{report}");
        }
        reports.push(report);
        if let Some(heal) = &args.heal_command {
            eprintln!("healing: {heal}");
            let status = shell(heal, None).await?;
            if !status.success() {
                anyhow::bail!("the heal command failed ({status}): {heal}");
            }
        }
    }
    let report = if reports.len() == 1 {
        reports.pop().unwrap_or_default()
    } else {
        let s = summary(&reports);
        crate::say!("{}", serde_json::to_string_pretty(&s)?);
        s
    };
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_string())?;
    }
    let count = |k: &str| report[k].as_u64().unwrap_or(0);
    let mut clean = count("phantoms") == 0
        && count("duplicates") == 0
        && count("failed_but_present") == 0
        && (args.asynchronous || count("lost_writes") == 0);
    let each = report["each"]
        .as_array()
        .map_or(std::slice::from_ref(&report), Vec::as_slice);
    if each.iter().any(|r| r["fault_failed"] == true) {
        eprintln!(
            "a fault command failed: the figures do not show a completed {}",
            kind.name()
        );
        clean = false;
    }
    if each.iter().any(|r| r["new_primary_writable_ms"].is_null()) {
        eprintln!(
            "no new primary became writable within the failover timeout ({:?}) in some run",
            args.failover_timeout
        );
        clean = false;
    }
    // The provider must write through the new primary, not just see it.
    let short = |r: &Value| {
        r["recovery_ms"].is_null()
            || r["acked_after_new_primary"].as_u64().unwrap_or(0) < args.acks as u64
    };
    if each.iter().any(short) {
        eprintln!(
            "the provider did not acknowledge {} writes through the new primary in some run",
            args.acks
        );
        clean = false;
    }
    if kind == Kind::Switchover {
        clean &= count("failed_writes") == 0 && count("failed_reads") == 0;
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One drill on a new embedded primary with a standby.
async fn embedded(kind: Kind, args: &DrillArgs) -> anyhow::Result<Value> {
    let sync = !args.asynchronous;
    eprintln!(
        "starting an embedded primary with {} standby",
        if sync {
            "a synchronous"
        } else {
            "an asynchronous"
        }
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
        args.writers + 2
    ))?;
    let mut report = drill(kind, args, &config, Fault::Embedded(&cluster)).await?;
    report["synchronous"] = sync.into();
    Ok(report)
}

/// One drill on the nodes of `config`.
async fn drill(
    kind: Kind,
    args: &DrillArgs,
    config: &Config,
    fault: Fault<'_>,
) -> anyhow::Result<Value> {
    let provider = Provider::new(
        TokioPostgres::new(),
        config,
        TopologyOptions::default()
            .with_monitor_interval(Duration::from_millis(100))
            .with_failover_timeout(args.failover_timeout)
            .with_max_replica_lag_bytes(None),
    );
    let table = format!("pgprovider_drill_{}", std::process::id());
    provider
        .primary()
        .execute(&format!("DROP TABLE IF EXISTS {table}"), &[])
        .await?;
    provider
        .primary()
        .execute(
            &format!("CREATE TABLE {table} (id bigint PRIMARY KEY, at timestamptz DEFAULT now())"),
            &[],
        )
        .await?;
    // The table goes whatever happens in between.
    let r = measure(kind, args, config, fault, &provider, &table).await;
    let _ = provider
        .primary()
        .execute(&format!("DROP TABLE IF EXISTS {table}"), &[])
        .await;
    r
}

/// The drill proper, on `table`: load, fault, observation, accounting.
async fn measure(
    kind: Kind,
    args: &DrillArgs,
    config: &Config,
    fault: Fault<'_>,
    provider: &Provider<TokioPostgres>,
    table: &str,
) -> anyhow::Result<Value> {
    let observers = Observers::start(config);
    observers.wait_first(Duration::from_secs(10)).await;
    // Every node has the table before reads start (a standby may lag).
    wait_for_table(provider, table).await;

    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let failed_reads = Arc::new(AtomicU64::new(0));
    let read_error = Arc::new(Mutex::new(None::<String>));
    let mut tasks = load(
        provider,
        args.writers,
        table,
        &history,
        &stop,
        &failed_reads,
        &read_error,
    );
    // Steady load first.
    wait_for_acks(&history, args.acks, Duration::from_secs(60)).await;
    let primary_before = observers.writable_now();
    eprintln!(
        "{}: {}",
        kind.name(),
        match (&fault, kind) {
            (Fault::Embedded(_), Kind::Failover) =>
                "killing the primary, promoting the standby".to_owned(),
            (Fault::Embedded(_), Kind::Switchover) =>
                "stopping the primary cleanly, promoting the standby".to_owned(),
            (Fault::Command(cmd), _) => format!("running {cmd}"),
        }
    );
    let fault_at = Instant::now();
    let fault_status = match fault {
        Fault::Embedded(cluster) => {
            let (p, s) = (cluster.primary(), cluster.standby(0));
            match kind {
                Kind::Failover => p.crash()?,
                Kind::Switchover => p.stop().await?,
            }
            s.promote().await?;
            None
        }
        Fault::Command(cmd) => {
            let status = shell(cmd, primary_before.as_deref()).await?;
            if !status.success() {
                eprintln!("the fault command failed ({status}); the drill goes on and reports it");
            }
            Some(status)
        }
    };
    let fault_ms = ms(fault_at.elapsed());
    // Until a new primary is writable and the provider has written through it for a while.
    let deadline = Instant::now() + args.failover_timeout + Duration::from_secs(30);
    let mut writable = None;
    while Instant::now() < deadline {
        writable = observe::new_primary_writable(&observers.samples(), fault_at);
        if writable.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let acked = history.lock().unwrap_or_else(|e| e.into_inner()).ok.len();
    wait_for_acks(
        &history,
        acked + args.acks,
        deadline.saturating_duration_since(Instant::now()),
    )
    .await;
    stop.store(true, Relaxed);
    while tasks.join_next().await.is_some() {}
    let observed = observers.seen(fault_at);
    observers.stop().await;

    let present: Vec<i64> = provider
        .primary()
        .query(&format!("SELECT id FROM {table}"), &[])
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
    let mut times: Vec<Instant> = h.ok.iter().map(|(_, t)| *t).collect();
    times.sort();
    let recovery =
        writable.and_then(|w| times.iter().find(|t| **t >= w).map(|t| t.duration_since(w)));
    let acked_after = writable.map_or(0, |w| times.iter().filter(|t| **t >= w).count());
    let gap = times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    Ok(json!({
        "drill": kind.name(),
        "mode": if matches!(fault, Fault::Embedded(_)) { "embedded" } else { "external" },
        "new_primary_writable_ms": writable.map(|w| ms(w.duration_since(fault_at))),
        "recovery_ms": recovery.map(ms),
        "write_gap_ms": ms(gap),
        "lost_writes": h.ok.iter().filter(|(id, _)| !present.contains(id)).count(),
        "phantoms": present.iter().filter(|id| !attempted.contains(id)).count(),
        "duplicates": duplicates,
        "failed_writes": h.failed.len(),
        "unknown_writes": h.unknown.len(),
        "failed_reads": failed_reads.load(Relaxed),
        "acked_writes": h.ok.len(),
        "acked_after_new_primary": acked_after,
        "failed_but_present": h.failed.iter().filter(|id| present.contains(id)).count(),
        "fault_ms": fault_ms,
        "fault_command_status": fault_status.map(|s| s.to_string()),
        "fault_failed": fault_status.is_some_and(|s| !s.success()),
        "primary_before": primary_before,
        "observed": observed,
        "first_failed_write": h.first_failed,
        "first_failed_read": *read_error.lock().unwrap_or_else(|e| e.into_inner()),
    }))
}

/// Writers (plain statements and transactions in turn, through the provider's primary
/// route, retried and re-run by its layers) and one reader on the read route.
fn load(
    provider: &Provider<TokioPostgres>,
    writers: usize,
    table: &str,
    history: &Arc<Mutex<History>>,
    stop: &Arc<AtomicBool>,
    failed_reads: &Arc<AtomicU64>,
    read_error: &Arc<Mutex<Option<String>>>,
) -> tokio::task::JoinSet<()> {
    let next_id = Arc::new(AtomicU64::new(1));
    let mut tasks = tokio::task::JoinSet::new();
    let insert: Arc<str> = format!("INSERT INTO {table} (id) VALUES ($1)").into();
    for _ in 0..writers {
        let (provider, history, next_id, stop, insert) = (
            provider.clone(),
            history.clone(),
            next_id.clone(),
            stop.clone(),
            insert.clone(),
        );
        tasks.spawn(async move {
            while !stop.load(Relaxed) {
                let id = next_id.fetch_add(1, Relaxed) as i64;
                let r = if id % 2 == 0 {
                    provider.primary().execute(&insert, &[&id]).await
                } else {
                    let insert = insert.clone();
                    provider
                        .primary()
                        .transaction(&TxOptions::new(), move |tx| {
                            let insert = insert.clone();
                            async move { tx.execute(&insert, &[&id]).await }
                        })
                        .await
                };
                let mut h = history.lock().unwrap_or_else(|e| e.into_inner());
                match r {
                    Ok(_) => h.ok.push((id, Instant::now())),
                    Err(e) => {
                        h.first_failed.get_or_insert_with(|| e.to_string());
                        match e.kind() {
                            // Nothing was sent, or the server refused it: not applied.
                            ErrorKind::Connect
                            | ErrorKind::PoolTimeout
                            | ErrorKind::CircuitOpen
                            | ErrorKind::Overloaded => h.failed.push(id),
                            ErrorKind::Database if !e.is_connection_lost() => h.failed.push(id),
                            // Anything else after sending may have been applied.
                            _ => h.unknown.push(id),
                        }
                    }
                }
            }
        });
    }
    let (provider, stop, failed_reads, read_error) = (
        provider.clone(),
        stop.clone(),
        failed_reads.clone(),
        read_error.clone(),
    );
    let count: Arc<str> = format!("SELECT count(*) FROM {table}").into();
    tasks.spawn(async move {
        while !stop.load(Relaxed) {
            if let Err(e) = provider.read().query(&count, &[]).await {
                failed_reads.fetch_add(1, Relaxed);
                read_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(|| e.to_string());
            }
        }
    });
    tasks
}

/// Waits (up to 30 s) until every node the provider reads from has `table`.
async fn wait_for_table(provider: &Provider<TokioPostgres>, table: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let nodes = provider.config().nodes().to_vec();
    for node in &nodes {
        while Instant::now() < deadline {
            let ok = match provider.pool(node) {
                Some(pool) => pool
                    .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                    .await
                    .is_ok_and(|r| r.get::<_, bool>(0)),
                None => true,
            };
            if ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs `cmd` with `sh -c`, telling it the primary's `host:port`.
async fn shell(cmd: &str, primary: Option<&str>) -> anyhow::Result<std::process::ExitStatus> {
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c").arg(cmd).stdin(std::process::Stdio::null());
    if let Some(p) = primary {
        c.env("PGPROVIDER_DRILL_PRIMARY", p);
    }
    c.status()
        .await
        .map_err(|e| anyhow::anyhow!("cannot run {cmd:?}: {e}"))
}

/// Waits until `n` writes were acknowledged, at most `limit` (a drill whose writes stall
/// ends, and says so in its figures).
async fn wait_for_acks(history: &Mutex<History>, n: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while history.lock().unwrap_or_else(|e| e.into_inner()).ok.len() < n
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Several runs in one object: every count summed, the times as percentiles, the runs.
fn summary(reports: &[Value]) -> Value {
    let mut s = json!({ "runs": reports.len(), "each": reports });
    for key in [
        "lost_writes",
        "phantoms",
        "duplicates",
        "failed_writes",
        "unknown_writes",
        "failed_reads",
        "acked_writes",
        "failed_but_present",
    ] {
        s[key] = reports
            .iter()
            .map(|r| r[key].as_u64().unwrap_or(0))
            .sum::<u64>()
            .into();
    }
    for key in ["new_primary_writable_ms", "recovery_ms", "write_gap_ms"] {
        let mut v: Vec<f64> = reports.iter().filter_map(|r| r[key].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        let missing = reports.len() - v.len();
        let pct = |p: f64| -> Option<f64> {
            if v.is_empty() || missing > 0 {
                return None;
            }
            let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            Some(v[i])
        };
        s[format!("{key}_p50")] = pct(0.5).into();
        s[format!("{key}_p99")] = pct(0.99).into();
        s[format!("{key}_max")] = v.last().copied().into();
        // A run with no figure (no new primary seen, no write after it) makes every
        // percentile unknown rather than flattering.
        s[format!("{key}_missing")] = missing.into();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_sums_counts_and_takes_percentiles() {
        let runs: Vec<Value> = (1..=10)
            .map(|i| json!({"recovery_ms": f64::from(i) * 10.0, "new_primary_writable_ms": 5.0, "write_gap_ms": 1.0, "lost_writes": 0, "acked_writes": 400}))
            .collect();
        let s = summary(&runs);
        assert_eq!(s["acked_writes"], 4000);
        assert_eq!(s["recovery_ms_p50"], 50.0);
        assert_eq!(s["recovery_ms_p99"], 100.0);
        assert_eq!(s["recovery_ms_missing"], 0);
        let mut runs = runs;
        runs[3]["recovery_ms"] = Value::Null;
        let s = summary(&runs);
        assert!(s["recovery_ms_p99"].is_null());
        assert_eq!(s["recovery_ms_missing"], 1);
    }
}
