//! `/healthz`, `/readyz` and `/metrics` as an [axum] router (feature `http`).
//!
//! - `GET /healthz`: liveness: `200 ok` while the process serves requests.
//! - `GET /readyz`: readiness: the [`HealthReport`](crate::health::HealthReport) as JSON,
//!   `200` when ready (a primary is trusted), `503` when down.
//! - `GET /metrics`: the Prometheus text of every metric, pool figures and this process's
//!   own refreshed first: `process_resident_memory_bytes`, `process_cpu_seconds` (user +
//!   system, a gauge that only grows), `process_open_fds`, `process_threads` (from
//!   `/proc/self` on Linux), and the tokio runtime's `tokio_workers`, `tokio_alive_tasks`
//!   and `tokio_global_queue_depth`.
//!
//! [`profiling_router`] (feature `profiling`) adds `GET /debug/pprof/profile?seconds=N`: a
//! CPU profile of this process sampled at 99 Hz for N seconds (default 10, at most 60), as
//! folded stacks (`thread;outer;…;inner count` per line), which `inferno-flamegraph`,
//! `flamegraph.pl` and speedscope turn into a flame graph; one profile at a time (`409`
//! while one runs). It is a separate router so that exposing it is a decision: it lets
//! whoever reaches it spend a profiler's overhead on the process (SIGPROF sampling; the
//! unwinder runs in the signal handler, which pprof documents as unsafe next to other
//! profilers such as jemalloc's), so merge it only on a private listener.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use pgprovider::provider::{Provider, TopologyOptions};
//! let config = pgprovider::Config::from_url("postgres://app@db1,db2/app")?;
//! let metrics = pgprovider::observe::install_prometheus()?;
//! let provider = Provider::new(pgprovider_tokio_postgres::TokioPostgres::new(), &config, TopologyOptions::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9187").await?;
//! axum::serve(listener, pgprovider::http::router(provider, metrics)).await?;
//! # Ok(()) }
//! ```

use crate::Driver;
use crate::provider::Provider;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

/// The router; see the [module docs](self).
pub fn router<D>(provider: Provider<D>, metrics: PrometheusHandle) -> Router
where
    D: Driver + Send + Sync + 'static,
{
    let ready = provider.clone();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let report = ready.health();
                async move {
                    let code = if report.ready() {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (
                        code,
                        [(header::CONTENT_TYPE, "application/json")],
                        report.to_json(),
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                provider.record_metrics();
                record_process_metrics();
                let text = metrics.render();
                async move {
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
                }
            }),
        )
}

/// Sets the process and runtime gauges (see the [module docs](self)).
pub fn record_process_metrics() {
    let p = process_figures();
    let set = |name: &'static str, v: Option<f64>| {
        if let Some(v) = v {
            metrics::gauge!(name).set(v);
        }
    };
    set("process_resident_memory_bytes", p.resident_bytes);
    set("process_cpu_seconds", p.cpu_seconds);
    set("process_open_fds", p.open_fds);
    set("process_threads", p.threads);
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let m = rt.metrics();
        metrics::gauge!("tokio_workers").set(m.num_workers() as f64);
        metrics::gauge!("tokio_alive_tasks").set(m.num_alive_tasks() as f64);
        metrics::gauge!("tokio_global_queue_depth").set(m.global_queue_depth() as f64);
    }
}

/// This process's figures from `/proc/self` (`None` where it is missing).
#[derive(Debug, Default)]
struct Process {
    resident_bytes: Option<f64>,
    cpu_seconds: Option<f64>,
    open_fds: Option<f64>,
    threads: Option<f64>,
}

fn process_figures() -> Process {
    // Linux's USER_HZ, as glibc reports it on every platform it supports.
    const TICKS_PER_SECOND: f64 = 100.0;
    let mut p = Process::default();
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        // In kB whatever the page size.
        p.resident_bytes = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map(|kb| kb * 1024.0);
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // The fields after the command name (which may hold spaces and parentheses).
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
        // utime, stime and num_threads are fields 14, 15 and 20: 12, 13 and 18 here.
        p.cpu_seconds = num(11)
            .zip(num(12))
            .map(|(u, s)| (u + s) / TICKS_PER_SECOND);
        p.threads = num(17);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        // Less the one reading the directory.
        p.open_fds = Some(fds.count().saturating_sub(1) as f64);
    }
    p
}

/// `GET /debug/pprof/profile?seconds=N`, to merge into [`router`] on a private listener
/// (see the [module docs](self)).
///
/// ```no_run
/// # fn run(provider: pgprovider::provider::Provider<pgprovider_tokio_postgres::TokioPostgres>, metrics: metrics_exporter_prometheus::PrometheusHandle) {
/// let app = pgprovider::http::router(provider, metrics).merge(pgprovider::http::profiling_router());
/// # }
/// ```
#[cfg(feature = "profiling")]
pub fn profiling_router() -> Router {
    use axum::extract::RawQuery;
    use std::sync::atomic::{AtomicBool, Ordering};
    static RUNNING: AtomicBool = AtomicBool::new(false);
    /// Clears `RUNNING` however the profile ends (an error, a panic, a task never run).
    struct Running;
    impl Drop for Running {
        fn drop(&mut self) {
            RUNNING.store(false, Ordering::Release);
        }
    }
    Router::new().route(
        "/debug/pprof/profile",
        get(|RawQuery(query): RawQuery| async move {
            let seconds = match profile_seconds(query.as_deref()) {
                Ok(s) => s,
                Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
            };
            if RUNNING.swap(true, Ordering::AcqRel) {
                return (
                    StatusCode::CONFLICT,
                    "a profile is being taken already: try again when it ends\n".to_owned(),
                )
                    .into_response();
            }
            let running = Running;
            // The profiler's guard stays on one thread: sampled on a blocking thread.
            let folded = tokio::task::spawn_blocking(move || {
                let _running = running;
                folded_profile(seconds)
            })
            .await
            .unwrap_or_else(|e| Err(format!("the profiling thread failed: {e}")));
            match folded {
                Ok(text) => ([(header::CONTENT_TYPE, "text/plain")], text).into_response(),
                Err(why) => (StatusCode::INTERNAL_SERVER_ERROR, why).into_response(),
            }
        }),
    )
}

/// `seconds=N` of the query string: 1 to 60, 10 when absent.
#[cfg(feature = "profiling")]
fn profile_seconds(query: Option<&str>) -> Result<u64, String> {
    let Some(v) = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("seconds="))
    else {
        return Ok(10);
    };
    match v.parse::<u64>() {
        Ok(n @ 1..=60) => Ok(n),
        _ => Err(format!(
            "seconds={v}: give a whole number of seconds from 1 to 60\n"
        )),
    }
}

/// Samples this process for `seconds` and returns the folded stacks, hottest first.
#[cfg(feature = "profiling")]
fn folded_profile(seconds: u64) -> Result<String, String> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(99)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| format!("cannot start the profiler: {e}\n"))?;
    std::thread::sleep(std::time::Duration::from_secs(seconds));
    let report = guard
        .report()
        .build()
        .map_err(|e| format!("cannot build the profile: {e}\n"))?;
    let mut lines: Vec<(isize, String)> = report
        .data
        .iter()
        .map(|(frames, count)| {
            let mut stack = vec![frames.thread_name.clone()];
            // Innermost first in the report; folded stacks go outermost first.
            for frame in frames.frames.iter().rev() {
                for symbol in frame.iter().rev() {
                    stack.push(symbol.name().replace(';', ":"));
                }
            }
            (*count, stack.join(";"))
        })
        .collect();
    lines.sort_by_key(|l| std::cmp::Reverse(l.0));
    Ok(lines
        .into_iter()
        .map(|(count, stack)| format!("{stack} {count}\n"))
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn process_figures_come_from_proc() {
        let p = super::process_figures();
        assert!(p.resident_bytes.unwrap() > 1_000_000.0, "{p:?}");
        assert!(p.cpu_seconds.unwrap() >= 0.0, "{p:?}");
        assert!(p.open_fds.unwrap() >= 3.0, "{p:?}");
        assert!(p.threads.unwrap() >= 1.0, "{p:?}");
    }

    /// A profile of a second while a thread works: folded stacks with counts.
    #[cfg(feature = "profiling")]
    #[test]
    fn a_profile_is_folded_stacks() {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let worker = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0_u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            })
        };
        let folded = super::folded_profile(1).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        worker.join().unwrap();
        let first = folded.lines().next().expect("samples of the busy thread");
        let (stack, count) = first.rsplit_once(' ').unwrap();
        assert!(
            count.parse::<u64>().unwrap() > 0 && stack.contains(';'),
            "{first}"
        );
    }

    #[cfg(feature = "profiling")]
    #[test]
    fn profile_seconds_are_bounded() {
        assert_eq!(super::profile_seconds(None), Ok(10));
        assert_eq!(super::profile_seconds(Some("seconds=3")), Ok(3));
        assert_eq!(super::profile_seconds(Some("x=1&seconds=60")), Ok(60));
        for bad in ["seconds=0", "seconds=61", "seconds=ten"] {
            assert!(super::profile_seconds(Some(bad)).is_err(), "{bad}");
        }
    }
}
