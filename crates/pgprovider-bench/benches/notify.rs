//! Notifications through one `Listener`: throughput and delivery latency.
//!
//! Four tasks send `pg_notify` (autocommit, one notification per statement) on their own
//! pooled connections; one subscription receives. Each payload carries its send time, so the
//! receiver measures delivery latency (send call → stream item). Medians of 3 rounds.
//!
//! ```text
//! cargo bench -p pgprovider-bench --bench notify
//! ```

use futures_util::StreamExt;
use pgprovider::{Config, Pool};
use pgprovider_tokio_postgres::{Event, Listener, TokioPostgres};
use std::time::{Duration, Instant};

const PER_SENDER: usize = 5_000;
const SENDERS: usize = 4;
const ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let url = pgprovider_bench::server().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let config = Config::from_url(&format!(
        "{url}{sep}sslmode=disable&pool_max_size={SENDERS}"
    ))
    .unwrap();
    let pool = Pool::new(TokioPostgres::new(), &config, &config.nodes()[0]);
    let nodes = vec![config.connect_params(&config.nodes()[0]).await.unwrap()];
    let listener = Listener::builder(nodes)
        .with_buffer(1 << 16)
        .start()
        .await
        .unwrap();
    let base = Instant::now();
    let (mut rates, mut p50s, mut p99s) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let channel = format!("bench_{round}");
        let mut sub = listener.subscribe(&channel).await.unwrap();
        let start = Instant::now();
        let mut senders = Vec::new();
        for _ in 0..SENDERS {
            let (pool, channel) = (pool.clone(), channel.clone());
            senders.push(tokio::spawn(async move {
                let mut conn = pool.get().await.unwrap();
                for _ in 0..PER_SENDER {
                    let sent = base.elapsed().as_nanos().to_string();
                    conn.notify(&channel, &sent).await.unwrap();
                }
            }));
        }
        let mut latencies = Vec::with_capacity(SENDERS * PER_SENDER);
        while latencies.len() < SENDERS * PER_SENDER {
            match tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
                Ok(Some(Event::Notification(n))) => {
                    let sent: u128 = n.payload.parse().unwrap();
                    latencies.push((base.elapsed().as_nanos() - sent) as f64 / 1e3);
                }
                Ok(Some(other)) => panic!("unexpected {other:?}"),
                _ => panic!("notifications stopped after {}", latencies.len()),
            }
        }
        let took = start.elapsed();
        for s in senders {
            s.await.unwrap();
        }
        rates.push(latencies.len() as f64 / took.as_secs_f64());
        latencies.sort_by(f64::total_cmp);
        p50s.push(latencies[latencies.len() / 2]);
        p99s.push(latencies[latencies.len() * 99 / 100]);
    }
    println!(
        "{} notifications per round from {SENDERS} senders through one listener (median of {ROUNDS} rounds)",
        SENDERS * PER_SENDER
    );
    println!(
        "  throughput        {:>10.0} notifications/s",
        median(rates)
    );
    println!("  latency p50       {:>10.0} µs", median(p50s));
    println!("  latency p99       {:>10.0} µs", median(p99s));
}
