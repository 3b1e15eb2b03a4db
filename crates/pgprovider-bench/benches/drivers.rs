//! The per-query cost of each driver through the provider against the same driver used
//! raw: one task, `SELECT $1::int4` (prepared where the driver prepares), the provider's
//! pool doing a checkout, the query and the return each time; the raw driver on one
//! connection it owns. Rounds interleave the six; medians of 5 rounds of 3,000.
//!
//! ```text
//! cargo bench -p pgprovider-bench --bench drivers
//! ```

use diesel::sql_types::Integer;
use diesel_async::{AsyncConnection, RunQueryDsl};
use pgprovider::{Column, Config, Pool};
use pgprovider_diesel::DieselDriver;
use pgprovider_sqlx::SqlxDriver;
use pgprovider_tokio_postgres::TokioPostgres;
use sqlx::Connection as _;
use std::time::Instant;

const QUERIES: usize = 3_000;
const ROUNDS: usize = 5;
const SQL: &str = "SELECT $1::int4";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[derive(diesel::QueryableByName)]
struct One {
    #[diesel(sql_type = Integer)]
    int4: i32,
}

async fn timed<F: AsyncFnMut(i32)>(n: usize, mut f: F) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        f(i as i32).await;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = pgprovider_bench::server().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let plain = format!("{url}{sep}sslmode=disable");
    let config = Config::from_url(&format!("{plain}&pool_max_size=1")).unwrap();
    let node = &config.nodes()[0];
    let params = config.connect_params(node).await.unwrap();
    let libpq = format!(
        "host={} port={} user={} dbname={}",
        node.host(),
        node.port(),
        params.user,
        params.dbname
    );

    let tp_pool = Pool::new(TokioPostgres::new(), &config, node);
    let sqlx_pool = Pool::new(SqlxDriver::new(), &config, node);
    let diesel_pool = Pool::new(DieselDriver::new(), &config, node);
    let (client, conn) = tokio_postgres::connect(&libpq, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let stmt = client.prepare(SQL).await.unwrap();
    let mut sqlx_conn = sqlx::PgConnection::connect(&format!(
        "postgres://{}@{}:{}/{}?sslmode=disable",
        params.user,
        node.host(),
        node.port(),
        params.dbname
    ))
    .await
    .unwrap();
    let mut diesel_conn = diesel_async::AsyncPgConnection::establish(&format!(
        "postgres://{}@{}:{}/{}?sslmode=disable",
        params.user,
        node.host(),
        node.port(),
        params.dbname
    ))
    .await
    .unwrap();

    let names = [
        "tokio-postgres raw",
        "tokio-postgres via pgprovider",
        "sqlx raw",
        "sqlx via pgprovider",
        "diesel-async raw",
        "diesel-async via pgprovider",
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for round in 0..=ROUNDS {
        let n = if round == 0 { 300 } else { QUERIES };
        let r = [
            timed(n, async |v| {
                let row = client.query_one(&stmt, &[&v]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), v);
            })
            .await,
            timed(n, async |v| {
                let row = tp_pool.query_one(SQL, &[&v]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), v);
            })
            .await,
            timed(n, async |v| {
                let got: i32 = sqlx::query_scalar(SQL)
                    .bind(v)
                    .fetch_one(&mut sqlx_conn)
                    .await
                    .unwrap();
                assert_eq!(got, v);
            })
            .await,
            timed(n, async |v| {
                let row = sqlx_pool.query_one(SQL, &[&v]).await.unwrap();
                assert_eq!(Column::<i32>::column(&row, 0).unwrap(), v);
            })
            .await,
            timed(n, async |v| {
                let got: One = diesel::sql_query(SQL)
                    .bind::<Integer, _>(v)
                    .get_result(&mut diesel_conn)
                    .await
                    .unwrap();
                assert_eq!(got.int4, v);
            })
            .await,
            timed(n, async |v| {
                let row = diesel_pool.query_one(SQL, &[&v]).await.unwrap();
                assert_eq!(Column::<i32>::column(&row, 0).unwrap(), v);
            })
            .await,
        ];
        if round > 0 {
            for (k, rate) in r.into_iter().enumerate() {
                rates[k].push(rate);
            }
        }
    }
    println!("SELECT $1::int4, 1 task, medians of {ROUNDS} rounds of {QUERIES}:");
    let m: Vec<f64> = rates.into_iter().map(median).collect();
    for (k, name) in names.iter().enumerate() {
        println!("  {name:<32} {:>9.0} queries/s", m[k]);
    }
    for (raw, via, driver) in [
        (0, 1, "tokio-postgres"),
        (2, 3, "sqlx"),
        (4, 5, "diesel-async"),
    ] {
        println!(
            "  {driver:<16} via pgprovider / raw {:.3}  extra {:+.2} µs/query",
            m[via] / m[raw],
            (1.0 / m[via] - 1.0 / m[raw]) * 1e6
        );
    }
}
