//! The cost of the security layers: the firewall's and role-based access's decision on a
//! cached statement (the ≤ 1 µs target) and on a new text (a parse), then a point query
//! end to end through a provider without them and with both (enforce mode, a role acting),
//! interleaved rounds, medians and the ratio.
//!
//! ```text
//! cargo bench -p pgprovider-bench --bench firewall
//! ```

use pgprovider::Config;
use pgprovider::access::{AccessPolicy, AppRole, with_role};
use pgprovider::firewall::{Firewall, FirewallOptions, Mode};
use pgprovider::provider::{Provider, TopologyOptions};
use pgprovider_tokio_postgres::TokioPostgres;
use std::time::{Duration, Instant};

const ROUNDS: usize = 5;
const DECISIONS: usize = 200_000;
const OPS: usize = 2_000;
const SQL: &str = "SELECT name FROM bench_fw_items WHERE id = $1";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Nanoseconds per call of `f`, median of the rounds.
fn per_call(n: usize, mut f: impl FnMut(usize)) -> f64 {
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for i in 0..n {
            f(i);
        }
        rounds.push(start.elapsed().as_nanos() as f64 / n as f64);
    }
    median(rounds)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // Decisions alone.
    let fw = Firewall::new(FirewallOptions::new(Mode::Enforce), "bench").unwrap();
    fw.allow(Some("reader"), None, SQL).unwrap();
    let policy = AccessPolicy::new().role("reader", AppRole::reader("public.*"));
    let firewall_hit = per_call(DECISIONS, |_| fw.check(Some("reader"), None, SQL).unwrap());
    let access_hit = per_call(DECISIONS, |_| policy.check(Some("reader"), SQL).unwrap());
    // New texts every round: each decision parses.
    let texts: Vec<String> = (0..2_000 * ROUNDS)
        .map(|i| format!("SELECT name FROM bench_fw_items WHERE id = $1 AND n{i} = $2"))
        .collect();
    let miss = median(
        texts
            .chunks(2_000)
            .map(|slice| {
                let start = Instant::now();
                for t in slice {
                    let _ = policy.check(Some("reader"), t);
                }
                start.elapsed().as_nanos() as f64 / slice.len() as f64
            })
            .collect(),
    );
    println!(
        "decision on a cached statement: firewall {firewall_hit:.0} ns, access {access_hit:.0} ns"
    );
    println!(
        "decision on a new text (parse, fingerprint, walk): {:.1} µs",
        miss / 1e3
    );

    // End to end.
    let url = pgprovider_bench::server().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let config = Config::from_url(&format!(
        "{url}{sep}sslmode=disable&pool_max_size=2&application_name=bench"
    ))
    .unwrap();
    let plain = Provider::new(TokioPostgres::new(), &config, TopologyOptions::default());
    let guarded = Provider::builder(TokioPostgres::new(), &config)
        .firewall(FirewallOptions::new(Mode::Enforce))
        .unwrap()
        .access(policy.clone())
        .build();
    for p in [&plain, &guarded] {
        p.monitor()
            .wait_for_primary(Duration::from_secs(10))
            .await
            .unwrap();
    }
    guarded
        .firewall()
        .unwrap()
        .allow(Some("reader"), None, SQL)
        .unwrap();
    plain
        .execute("DROP TABLE IF EXISTS bench_fw_items", &[])
        .await
        .unwrap();
    plain
        .execute(
            "CREATE TABLE bench_fw_items (id int PRIMARY KEY, name text)",
            &[],
        )
        .await
        .unwrap();
    plain
        .execute("INSERT INTO bench_fw_items VALUES (1, 'one')", &[])
        .await
        .unwrap();
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..OPS {
            plain.query_one(SQL, &[&1_i32]).await.unwrap();
        }
        without.push(start.elapsed().as_secs_f64() * 1e6 / OPS as f64);
        let start = Instant::now();
        with_role("reader", async {
            for _ in 0..OPS {
                guarded.query_one(SQL, &[&1_i32]).await.unwrap();
            }
        })
        .await;
        with.push(start.elapsed().as_secs_f64() * 1e6 / OPS as f64);
    }
    let (a, b) = (median(without), median(with));
    println!(
        "point query: {a:.1} µs without, {b:.1} µs with firewall (enforce) + access; ratio {:.3}",
        b / a
    );
    plain
        .execute("DROP TABLE bench_fw_items", &[])
        .await
        .unwrap();
}
