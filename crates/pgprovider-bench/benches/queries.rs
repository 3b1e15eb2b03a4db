//! COPY and pipelined-batch throughput, each next to its baseline in the same run:
//!
//! - `COPY … FROM STDIN (FORMAT binary)` of 100,000 rows through `PgConnection::copy_in`,
//!   next to `psql -c '\copy … from file csv'` loading the same rows (psql's time includes
//!   its start-up, measured separately and shown);
//! - a batch of 100 single-row inserts sent in one pipelined window, next to the same
//!   inserts run one after another in a transaction, and one after another in autocommit
//!   (through pgprovider, and through a raw tokio-postgres client for reference).
//!
//! ```text
//! cargo bench -p pgprovider-bench --bench queries
//! ```
//!
//! Uses `DATABASE_URL` when set, else the test kit's server. Prints medians of 5 rounds.

use pgprovider::{Config, Connection, Pool, Queries, TxOptions};
use pgprovider_tokio_postgres::types::Type;
use pgprovider_tokio_postgres::{Param, TokioPostgres};
use std::process::Command;
use std::time::{Duration, Instant};

const ROWS: i64 = 100_000;
const BATCH: usize = 100;
const ROUNDS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn psql(url: &str, command: &str) -> Duration {
    let start = Instant::now();
    let out = Command::new("psql")
        .args([url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", command])
        .output()
        .expect("psql on the PATH");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

#[tokio::main]
async fn main() {
    // Every contender plaintext, like for like (psql and pgprovider would pick TLS on a
    // server that offers it; the raw client cannot).
    let url = pgprovider_bench::server().await;
    let url = if url.contains("sslmode=") {
        url
    } else if url.contains('?') {
        format!("{url}&sslmode=disable")
    } else {
        format!("{url}?sslmode=disable")
    };
    let config = Config::from_url(&url).expect("a valid URL");
    let pool = Pool::new(TokioPostgres::new(), &config, &config.nodes()[0]);
    let mut c = pool.get().await.expect("a connection");
    c.simple_query(
        "DROP TABLE IF EXISTS bench_copy; CREATE UNLOGGED TABLE bench_copy (id bigint, name text, score float8); \
         DROP TABLE IF EXISTS bench_batch; CREATE UNLOGGED TABLE bench_batch (id int, n int)",
    )
    .await
    .expect("tables");
    let types = [Type::INT8, Type::TEXT, Type::FLOAT8];
    let rows = || (0..ROWS).map(|i| (i, format!("name-{i}"), i as f64 / 4.0));
    let csv = std::env::temp_dir().join(format!("pgprovider-bench-{}.csv", std::process::id()));

    let (mut ours, mut theirs, mut startup) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        c.simple_query("TRUNCATE bench_copy").await.unwrap();
        let start = Instant::now();
        let n = c
            .copy_in("COPY bench_copy FROM STDIN (FORMAT binary)", &types, rows())
            .await
            .unwrap();
        ours.push(n as f64 / start.elapsed().as_secs_f64());
        if round == 0 {
            let mut data = Vec::new();
            c.copy_out_raw("COPY bench_copy TO STDOUT (FORMAT csv)", &mut data)
                .await
                .unwrap();
            std::fs::write(&csv, data).unwrap();
        }
        c.simple_query("TRUNCATE bench_copy").await.unwrap();
        let took = psql(
            &url,
            &format!("\\copy bench_copy from '{}' csv", csv.display()),
        );
        theirs.push(ROWS as f64 / took.as_secs_f64());
        startup.push(psql(&url, "SELECT 1").as_secs_f64());
    }
    let _ = std::fs::remove_file(&csv);
    let (ours, theirs, startup) = (median(ours), median(theirs), median(startup));
    let adjusted = ROWS as f64 / (ROWS as f64 / theirs - startup);
    println!("COPY of {ROWS} rows (median of {ROUNDS} rounds)");
    println!("  pgprovider copy_in (binary)      {:>10.0} rows/s", ours);
    println!(
        "  psql \\copy (csv file)            {:>10.0} rows/s   ({:.2}x)",
        theirs,
        ours / theirs
    );
    println!(
        "  psql \\copy minus its start-up    {:>10.0} rows/s   ({:.2}x; start-up {:.1} ms)",
        adjusted,
        ours / adjusted,
        startup * 1e3
    );

    let ids: Vec<i32> = (0..BATCH as i32).collect();
    let stmts: Vec<(&str, Vec<&Param<'_>>)> = ids
        .iter()
        .map(|i| {
            (
                "INSERT INTO bench_batch VALUES ($1, 0)",
                vec![i as &Param<'_>],
            )
        })
        .collect();
    let stmts: Vec<(&str, &[&Param<'_>])> = stmts.iter().map(|(s, p)| (*s, &p[..])).collect();
    let (raw, raw_conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("a raw tokio-postgres connection");
    tokio::spawn(raw_conn);
    let raw_insert = raw
        .prepare("INSERT INTO bench_batch VALUES ($1, 0)")
        .await
        .unwrap();
    let (mut pipelined, mut in_tx, mut autocommit, mut raw_autocommit) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..10 {
            c.batch(&stmts).await.unwrap();
        }
        pipelined.push((10 * BATCH) as f64 / start.elapsed().as_secs_f64());
        drop(c);
        let start = Instant::now();
        for _ in 0..10 {
            pool.transaction(&TxOptions::new(), |tx| {
                let ids = &ids;
                async move {
                    for i in ids {
                        tx.execute("INSERT INTO bench_batch VALUES ($1, 0)", &[i])
                            .await?;
                    }
                    Ok::<_, pgprovider::Error>(())
                }
            })
            .await
            .unwrap();
        }
        in_tx.push((10 * BATCH) as f64 / start.elapsed().as_secs_f64());
        c = pool.get().await.unwrap();
        let start = Instant::now();
        for i in ids.iter().take(BATCH) {
            c.execute("INSERT INTO bench_batch VALUES ($1, 0)", &[i])
                .await
                .unwrap();
        }
        autocommit.push(BATCH as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for i in ids.iter().take(BATCH) {
            raw.execute(&raw_insert, &[i]).await.unwrap();
        }
        raw_autocommit.push(BATCH as f64 / start.elapsed().as_secs_f64());
        c.simple_query("TRUNCATE bench_batch").await.unwrap();
    }
    let (p, t, a) = (median(pipelined), median(in_tx), median(autocommit));
    println!("Batch of {BATCH} single-row inserts (median of {ROUNDS} rounds)");
    println!(
        "  pipelined batch (one transaction)  {:>10.0} statements/s",
        p
    );
    println!(
        "  sequential, one transaction        {:>10.0} statements/s   (pipelined {:.2}x)",
        t,
        p / t
    );
    println!(
        "  sequential, autocommit             {:>10.0} statements/s   (pipelined {:.2}x)",
        a,
        p / a
    );
    let r = median(raw_autocommit);
    println!(
        "  raw tokio-postgres, autocommit     {:>10.0} statements/s   (pgprovider sequential {:.2}x)",
        r,
        a / r
    );
    c.simple_query("DROP TABLE bench_copy; DROP TABLE bench_batch")
        .await
        .unwrap();
}
