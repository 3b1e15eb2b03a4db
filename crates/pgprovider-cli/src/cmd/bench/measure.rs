//! Running one workload for one contender: tasks in a loop, a warm-up, then a measured
//! window with a latency histogram per task and the process's memory sampled.

use hdrhistogram::Histogram;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// One operation of a workload, called by every task in a loop.
pub(crate) trait Op: Send + Sync + 'static {
    /// Runs operation number `i` of task `task`.
    fn call(&self, task: usize, i: u64) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// What one run measured.
pub(crate) struct Sample {
    pub(crate) ops_per_sec: f64,
    pub(crate) latency: Histogram<u64>,
    /// Growth of the resident set during the measured window, in KiB.
    pub(crate) peak_growth_kib: u64,
    /// This process's CPU time (user + system) per operation in the window, in µs.
    pub(crate) cpu_us_per_op: f64,
}

/// Runs `op` on `tasks` tasks: `warmup` unmeasured, then `measure` measured (except the
/// operations of the first `unmeasured` tasks, which only make load).
pub(crate) async fn drive<O: Op>(
    op: Arc<O>,
    tasks: usize,
    unmeasured: usize,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<Sample> {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let (op, measuring, stop) = (op.clone(), measuring.clone(), stop.clone());
        set.spawn(async move {
            let mut hist = histogram();
            let mut ops = 0_u64;
            let mut i = 0_u64;
            while !stop.load(Relaxed) {
                let start = Instant::now();
                op.call(task, i).await?;
                i += 1;
                if task >= unmeasured && measuring.load(Relaxed) {
                    let _ = hist.record(start.elapsed().as_nanos().max(1) as u64);
                    ops += 1;
                }
            }
            anyhow::Ok((ops, hist))
        });
    }
    tokio::time::sleep(warmup).await;
    let base = rss_kib();
    let peak = Arc::new(AtomicU64::new(base));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Relaxed) {
                peak.fetch_max(rss_kib(), Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    measuring.store(true, Relaxed);
    let started = Instant::now();
    let cpu_before = cpu_ticks();
    tokio::time::sleep(measure).await;
    measuring.store(false, Relaxed);
    let cpu = cpu_ticks().saturating_sub(cpu_before);
    let elapsed = started.elapsed();
    stop.store(true, Relaxed);
    let mut latency = histogram();
    let mut ops = 0;
    while let Some(joined) = set.join_next().await {
        let (n, h) = joined??;
        ops += n;
        latency.add(&h)?;
    }
    let _ = sampler.await;
    Ok(Sample {
        // USER_HZ is 100 on Linux: a tick is 10 ms.
        cpu_us_per_op: cpu as f64 * 10_000.0 / ops.max(1) as f64,
        ops_per_sec: ops as f64 / elapsed.as_secs_f64(),
        latency,
        peak_growth_kib: peak.load(Relaxed).saturating_sub(base),
    })
}

/// Nanoseconds from 1 ns to 60 s, three significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// The process's resident set, in KiB (0 where `/proc` is missing).
pub(crate) fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

/// User + system CPU time of this process so far, in clock ticks (0 where `/proc` is
/// missing).
fn cpu_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// A cheap, well-spread number from a task and an operation index (splitmix64).
pub(crate) fn mix(task: usize, i: u64) -> u64 {
    let mut z = (task as u64).wrapping_shl(40) ^ i;
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sleepy(AtomicU64);
    impl Op for Sleepy {
        async fn call(&self, _task: usize, _i: u64) -> anyhow::Result<()> {
            self.0.fetch_add(1, Relaxed);
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok(())
        }
    }

    #[tokio::test]
    async fn counts_only_the_measured_window() {
        let op = Arc::new(Sleepy(AtomicU64::new(0)));
        let s = drive(
            op.clone(),
            4,
            0,
            Duration::from_millis(50),
            Duration::from_millis(200),
        )
        .await
        .unwrap();
        let total = op.0.load(Relaxed) as f64;
        // 4 tasks of ~1 ms operations: at most ~4,000 per second measured, and fewer than
        // all the operations run (the warm-up is left out).
        assert!(
            s.ops_per_sec > 100.0 && s.ops_per_sec < 4_500.0,
            "{}",
            s.ops_per_sec
        );
        assert!(s.ops_per_sec * 0.2 < total);
        assert!(s.latency.value_at_quantile(0.5) >= 1_000_000);
        assert!(rss_kib() > 0);
        assert!(s.cpu_us_per_op.is_finite() && s.cpu_us_per_op >= 0.0);
        // The CPU clock moves with work done (ticks are 10 ms).
        let before = cpu_ticks();
        let spin = Instant::now();
        let mut x = 0_u64;
        while spin.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(
            cpu_ticks() > before,
            "no CPU time counted after 60 ms of work"
        );
        assert_ne!(mix(0, 1), mix(1, 0));
        // Tasks below `unmeasured` make load only: with 3 of 4 left out, about a quarter.
        let op = Arc::new(Sleepy(AtomicU64::new(0)));
        let some = drive(op, 4, 3, Duration::ZERO, Duration::from_millis(200))
            .await
            .unwrap();
        assert!(
            some.ops_per_sec < s.ops_per_sec * 0.5,
            "{} measured of 4 tasks' {}",
            some.ops_per_sec,
            s.ops_per_sec
        );
    }

    struct Failing;
    impl Op for Failing {
        async fn call(&self, _task: usize, _i: u64) -> anyhow::Result<()> {
            anyhow::bail!("server gone")
        }
    }

    #[tokio::test]
    async fn an_operation_error_ends_the_run_with_it() {
        let e = drive(
            Arc::new(Failing),
            2,
            0,
            Duration::ZERO,
            Duration::from_millis(10),
        )
        .await
        .err()
        .unwrap();
        assert!(e.to_string().contains("server gone"));
    }
}
