//! The results: a table of medians with ratios, and JSON.

use super::Outcome;
use crate::opt::BenchArgs;
use serde_json::{Map, Value, json};

/// Medians over rounds of one outcome.
struct Medians {
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    peak_growth_kib: u64,
    cpu_us_per_op: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn medians(o: &Outcome) -> Medians {
    let q = |q: f64| {
        median(
            o.rounds
                .iter()
                .map(|s| s.latency.value_at_quantile(q) as f64 / 1e3)
                .collect(),
        )
    };
    Medians {
        ops_per_sec: median(o.rounds.iter().map(|s| s.ops_per_sec).collect()),
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        peak_growth_kib: median(o.rounds.iter().map(|s| s.peak_growth_kib as f64).collect()) as u64,
        cpu_us_per_op: median(o.rounds.iter().map(|s| s.cpu_us_per_op).collect()),
    }
}

/// `(label, ratio)` of pgprovider's throughput to every other contender's in `workload`,
/// and of multiplexed mode to the classic pool and to raw pipelining.
fn ratios(outcomes: &[&Outcome]) -> Vec<(String, f64)> {
    let ops = |name: &str| {
        outcomes
            .iter()
            .find(|o| o.contender == name)
            .map(|o| medians(o).ops_per_sec)
    };
    let mut v = Vec::new();
    if let Some(ours) = ops("pgprovider") {
        for o in outcomes.iter().filter(|o| o.contender != "pgprovider") {
            v.push((
                format!("pgprovider/{}", o.contender),
                ours / medians(o).ops_per_sec,
            ));
        }
    }
    if let Some(mux) = ops("pgprovider_mux") {
        for base in ["pgprovider", "raw_pipelined"] {
            if let Some(b) = ops(base) {
                v.push((format!("pgprovider_mux/{base}"), mux / b));
            }
        }
    }
    v
}

fn by_workload(outcomes: &[Outcome]) -> Vec<Vec<&Outcome>> {
    let mut groups: Vec<Vec<&Outcome>> = Vec::new();
    for o in outcomes {
        match groups.iter_mut().find(|g| g[0].workload == o.workload) {
            Some(g) => g.push(o),
            None => groups.push(vec![o]),
        }
    }
    groups
}

/// Prints one table a workload, medians over rounds, then the ratios.
pub(crate) fn print(outcomes: &[Outcome], args: &BenchArgs) {
    crate::say!(
        "\nmedians of {} round(s); latency and client CPU per operation in µs; memory in KiB (this process's resident set)",
        args.rounds
    );
    for group in by_workload(outcomes) {
        let w = group[0].workload;
        crate::say!("\n{} ({} connections)", w.name(), args.connections);
        crate::say!(
            "  {:<16} {:>6} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "contender",
            "tasks",
            "ops/s",
            "p50",
            "p99",
            "p99.9",
            "cpu/op",
            "mem/conn",
            "peak"
        );
        for o in &group {
            let m = medians(o);
            crate::say!(
                "  {:<16} {:>6} {:>12.0} {:>9.1} {:>9.1} {:>9.1} {:>9.2} {:>9} {:>9}",
                o.contender,
                o.tasks,
                m.ops_per_sec,
                m.p50_us,
                m.p99_us,
                m.p999_us,
                m.cpu_us_per_op,
                o.mem_per_conn_kib,
                m.peak_growth_kib
            );
        }
        let r = ratios(&group);
        if !r.is_empty() {
            let text: Vec<String> = r.iter().map(|(k, v)| format!("{k} {v:.2}x")).collect();
            crate::say!("  ratios: {}", text.join(", "));
        }
    }
}

/// `{"settings": …, "workloads": {NAME: {CONTENDER: {...}}}, "ratios": {NAME: {...}}}`.
pub(crate) fn json(outcomes: &[Outcome], args: &BenchArgs) -> Value {
    let mut workloads = Map::new();
    let mut all_ratios = Map::new();
    for group in by_workload(outcomes) {
        let mut contenders = Map::new();
        for o in &group {
            let m = medians(o);
            contenders.insert(
                o.contender.to_owned(),
                json!({
                    "ops_per_sec": m.ops_per_sec,
                    "p50_us": m.p50_us,
                    "p99_us": m.p99_us,
                    "p999_us": m.p999_us,
                    "cpu_us_per_op": m.cpu_us_per_op,
                    "tasks": o.tasks,
                    "mem_per_conn_kib": o.mem_per_conn_kib,
                    "peak_mem_kib": m.peak_growth_kib,
                    "rounds_ops_per_sec": o.rounds.iter().map(|s| s.ops_per_sec).collect::<Vec<_>>(),
                }),
            );
        }
        let name = group[0].workload.name().to_owned();
        let r: Map<String, Value> = ratios(&group)
            .into_iter()
            .map(|(k, v)| (k, json!(v)))
            .collect();
        all_ratios.insert(name.clone(), Value::Object(r));
        workloads.insert(name, Value::Object(contenders));
    }
    json!({
        "settings": {
            "rounds": args.rounds,
            "duration_ms": args.duration.as_millis() as u64,
            "warmup_ms": args.warmup.as_millis() as u64,
            "connections": args.connections,
            "tasks": args.tasks,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        },
        "workloads": workloads,
        "ratios": all_ratios,
    })
}
