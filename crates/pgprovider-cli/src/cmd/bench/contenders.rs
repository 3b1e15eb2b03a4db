//! The contenders and what each does for each workload.
//!
//! Every contender uses the same server, the same number of connections and the same SQL.
//! Pools run with their library's defaults, as users get them, except where a default would
//! make the comparison meaningless (noted per contender):
//!
//! | contender | what it is |
//! | --- | --- |
//! | `pgprovider` | the classic pool: checkout, statement cache, return |
//! | `pgprovider_sqlx` | the classic pool over the sqlx driver (feature `sqlx`, on by default) |
//! | `pgprovider_diesel` | the classic pool over the diesel-async driver (feature `diesel`, on by default) |
//! | `pgprovider_provider` | the provider, the front door (`provider.query`, `provider.transaction`, `provider.conn`), over the same pool: what routing, retries and the monitor's snapshot cost |
//! | `pgprovider_pipelined` | the classic pool with adaptive pipelining (`pool_pipeline`, from `--pipeline-depth`): reads that find every connection busy are pipelined onto busy ones |
//! | `pgprovider_mux` | multiplexed mode: tasks share the connections, pipelined (reads only) |
//! | `raw` | one raw tokio-postgres client per connection, one task driving each (no pool) |
//! | `raw_pipelined` | the raw clients shared by every task (the ceiling for multiplexing; reads only) |
//! | `deadpool` | deadpool-postgres, `Fast` recycling, `prepare_cached` |
//! | `bb8` | bb8-postgres with its defaults (a ping at every checkout); statements prepared per call, as its API does |
//! | `sqlx` | sqlx's `PgPool` with its defaults (a ping before every acquire; statements cached) |

use super::measure::{Op, mix};
use pgprovider::provider::{Provider, TopologyOptions};
use pgprovider::{Config, Pool, Queries, TxOptions};
use pgprovider_tokio_postgres::{Multiplexed, TokioPostgres};
use std::sync::Arc;
use tokio_postgres::{Client, NoTls, Statement};

/// Rows in the accounts table (pgbench's scale 1).
pub(crate) const ACCOUNTS: u64 = 100_000;
pub(crate) const TABLE: &str = "pgprovider_bench_accounts";

/// The workloads, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Workload {
    /// `SELECT 1`, prepared.
    Select1,
    /// A point select by primary key on the accounts table.
    PointSelect,
    /// A short write transaction: update a balance, read it back, commit.
    WriteTx,
    /// Checkout and return, no query, one task.
    Checkout,
    /// `SELECT 1` from 1,000 tasks over the same connections.
    Tasks1000,
    /// Head-of-line blocking: `SELECT 1` while [`SLOW_TASKS`] tasks run a 20 ms statement
    /// in a loop; only the fast statements are measured.
    SlowMix,
}

/// Tasks of [`Workload::SlowMix`] that run the slow statement (not measured).
pub(crate) const SLOW_TASKS: usize = 4;
pub(crate) const SLOW: &str = "SELECT pg_sleep(0.02)";

/// The read of task `task` in workload `w`: the slow statement for the slow tasks of
/// [`Workload::SlowMix`], `SELECT 1` otherwise.
pub(crate) fn read_sql(w: Workload, task: usize) -> &'static str {
    if w == Workload::SlowMix && task < SLOW_TASKS {
        SLOW
    } else {
        SELECT1
    }
}

impl Workload {
    pub(crate) const ALL: [Workload; 6] = [
        Workload::Select1,
        Workload::PointSelect,
        Workload::WriteTx,
        Workload::Checkout,
        Workload::Tasks1000,
        Workload::SlowMix,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Select1 => "select1",
            Workload::PointSelect => "point_select",
            Workload::WriteTx => "write_tx",
            Workload::Checkout => "checkout",
            Workload::Tasks1000 => "tasks_1000",
            Workload::SlowMix => "slow_mix",
        }
    }

    /// Concurrent tasks for this workload.
    pub(crate) fn tasks(self, pooled_tasks: usize) -> usize {
        match self {
            Workload::Checkout => 1,
            Workload::Tasks1000 => 1000,
            _ => pooled_tasks,
        }
    }

    fn reads(self) -> bool {
        matches!(
            self,
            Workload::Select1 | Workload::PointSelect | Workload::Tasks1000 | Workload::SlowMix
        )
    }

    /// Tasks whose operations are not measured (they make the load).
    pub(crate) fn unmeasured_tasks(self) -> usize {
        match self {
            Workload::SlowMix => SLOW_TASKS,
            _ => 0,
        }
    }
}

pub(crate) const SELECT1: &str = "SELECT 1";
pub(crate) const POINT: &str = "SELECT abalance FROM pgprovider_bench_accounts WHERE aid = $1";
pub(crate) const UPDATE: &str =
    "UPDATE pgprovider_bench_accounts SET abalance = abalance + $1 WHERE aid = $2";

pub(crate) fn aid(task: usize, i: u64) -> i32 {
    (mix(task, i) % ACCOUNTS) as i32 + 1
}

/// The contenders compiled into this binary, in report order.
pub(crate) fn names() -> Vec<&'static str> {
    let mut v = vec!["pgprovider", "pgprovider_pipelined", "pgprovider_provider"];
    if cfg!(feature = "sqlx") {
        v.push("pgprovider_sqlx");
    }
    if cfg!(feature = "diesel") {
        v.push("pgprovider_diesel");
    }
    v.extend(["pgprovider_mux", "raw", "raw_pipelined"]);
    if cfg!(feature = "peers") {
        v.extend(["deadpool", "bb8", "sqlx"]);
    }
    v
}

/// Whether `contender` takes part in `workload`.
pub(crate) fn supports(contender: &str, workload: Workload) -> bool {
    match contender {
        "pgprovider_mux" | "raw_pipelined" => workload.reads(),
        "raw" => !matches!(workload, Workload::Checkout | Workload::Tasks1000),
        _ => true,
    }
}

/// A contender, connected.
pub(crate) enum Contender {
    Ours(Pool<TokioPostgres>),
    Provider(Provider<TokioPostgres>),
    #[cfg(feature = "sqlx")]
    OursSqlx(Pool<pgprovider_sqlx::SqlxDriver>),
    #[cfg(feature = "diesel")]
    OursDiesel(Pool<pgprovider_diesel::DieselDriver>),
    Mux(Multiplexed),
    Raw(Arc<Vec<RawClient>>),
    #[cfg(feature = "peers")]
    Peer(super::peers::Peer),
}

/// A raw client and its prepared statements.
pub(crate) struct RawClient {
    client: Client,
    select1: Statement,
    point: Statement,
    update: Statement,
}

impl Contender {
    /// Connects `name` with `connections` connections, all opened before returning.
    pub(crate) async fn connect(
        name: &str,
        url: &str,
        connections: usize,
        pipeline_depth: usize,
        raw: &Option<Arc<Vec<RawClient>>>,
    ) -> anyhow::Result<Contender> {
        Ok(match name {
            "pgprovider" => Contender::Ours(warm(TokioPostgres::new(), url, connections).await?),
            "pgprovider_pipelined" => Contender::Ours(
                warm(
                    TokioPostgres::new(),
                    &format!("{url}&pool_pipeline={pipeline_depth}"),
                    connections,
                )
                .await?,
            ),
            "pgprovider_provider" => Contender::Provider(provider(url, connections).await?),
            #[cfg(feature = "sqlx")]
            "pgprovider_sqlx" => Contender::OursSqlx(
                warm(pgprovider_sqlx::SqlxDriver::new(), url, connections).await?,
            ),
            #[cfg(feature = "diesel")]
            "pgprovider_diesel" => Contender::OursDiesel(
                warm(pgprovider_diesel::DieselDriver::new(), url, connections).await?,
            ),
            "pgprovider_mux" => {
                let config = Config::from_url(url)?;
                let params = config.connect_params(&config.nodes()[0]).await?;
                Contender::Mux(Multiplexed::connect(params, connections).await?)
            }
            "raw" | "raw_pipelined" => match raw {
                Some(r) => Contender::Raw(r.clone()),
                None => Contender::Raw(Arc::new(raw_clients(url, connections).await?)),
            },
            #[cfg(feature = "peers")]
            other => Contender::Peer(super::peers::Peer::connect(other, url, connections).await?),
            #[cfg(not(feature = "peers"))]
            other => anyhow::bail!("unknown contender {other}"),
        })
    }

    /// The operation of `workload` for this contender.
    pub(crate) fn op(&self, workload: Workload) -> Runner {
        Runner {
            contender: match self {
                Contender::Ours(p) => Contender::Ours(p.clone()),
                Contender::Provider(p) => Contender::Provider(p.clone()),
                #[cfg(feature = "sqlx")]
                Contender::OursSqlx(p) => Contender::OursSqlx(p.clone()),
                #[cfg(feature = "diesel")]
                Contender::OursDiesel(p) => Contender::OursDiesel(p.clone()),
                Contender::Mux(m) => Contender::Mux(m.clone()),
                Contender::Raw(r) => Contender::Raw(r.clone()),
                #[cfg(feature = "peers")]
                Contender::Peer(p) => Contender::Peer(p.clone()),
            },
            workload,
        }
    }

    /// Closes pools so the server's connections go before the next contender is measured.
    pub(crate) async fn close(self) {
        match self {
            Contender::Ours(p) => p.close().await,
            Contender::Provider(p) => p.close().await,
            #[cfg(feature = "sqlx")]
            Contender::OursSqlx(p) => p.close().await,
            #[cfg(feature = "diesel")]
            Contender::OursDiesel(p) => p.close().await,
            Contender::Mux(_) | Contender::Raw(_) => {}
            #[cfg(feature = "peers")]
            Contender::Peer(p) => p.close().await,
        }
    }
}

async fn raw_clients(url: &str, connections: usize) -> anyhow::Result<Vec<RawClient>> {
    let mut v = Vec::new();
    for _ in 0..connections {
        let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(conn);
        let (select1, point, update) = (
            client.prepare(SELECT1).await?,
            client.prepare(POINT).await?,
            client.prepare(UPDATE).await?,
        );
        v.push(RawClient {
            client,
            select1,
            point,
            update,
        });
    }
    Ok(v)
}

/// One contender bound to one workload.
pub(crate) struct Runner {
    contender: Contender,
    workload: Workload,
}

impl Op for Runner {
    async fn call(&self, task: usize, i: u64) -> anyhow::Result<()> {
        let w = self.workload;
        match &self.contender {
            Contender::Ours(pool) => ours(pool, w, task, i).await,
            Contender::Provider(p) => {
                match w {
                    Workload::Select1 | Workload::Tasks1000 | Workload::SlowMix => {
                        p.query(read_sql(w, task), &[]).await?;
                    }
                    Workload::PointSelect => {
                        p.query(POINT, &[&aid(task, i)]).await?;
                    }
                    Workload::WriteTx => {
                        let a = aid(task, i);
                        p.transaction(&TxOptions::new(), |tx| async move {
                            tx.execute(UPDATE, &[&1_i32, &a]).await?;
                            tx.query(POINT, &[&a]).await
                        })
                        .await?;
                    }
                    Workload::Checkout => drop(p.conn().await?),
                }
                Ok(())
            }
            #[cfg(feature = "sqlx")]
            Contender::OursSqlx(pool) => ours_sqlx(pool, w, task, i).await,
            #[cfg(feature = "diesel")]
            Contender::OursDiesel(pool) => ours_diesel(pool, w, task, i).await,
            Contender::Mux(mux) => {
                match w {
                    Workload::PointSelect => mux.query(POINT, &[&aid(task, i)]).await?,
                    _ => mux.query(read_sql(w, task), &[]).await?,
                };
                Ok(())
            }
            Contender::Raw(clients) => {
                // `raw` runs one task per client, so each task owns its client;
                // `raw_pipelined` runs more tasks than clients, which then share them.
                let c = &clients[task % clients.len()];
                match w {
                    Workload::PointSelect => {
                        c.client.query(&c.point, &[&aid(task, i)]).await?;
                    }
                    Workload::WriteTx => {
                        let a = aid(task, i);
                        c.client.batch_execute("BEGIN").await?;
                        c.client.execute(&c.update, &[&1_i32, &a]).await?;
                        c.client.query(&c.point, &[&a]).await?;
                        c.client.batch_execute("COMMIT").await?;
                    }
                    Workload::SlowMix if task < SLOW_TASKS => {
                        c.client.query(SLOW, &[]).await?;
                    }
                    _ => {
                        c.client.query(&c.select1, &[]).await?;
                    }
                }
                Ok(())
            }
            #[cfg(feature = "peers")]
            Contender::Peer(p) => p.call(w, task, i).await,
        }
    }
}

/// The pgprovider contenders' operations, the same for every driver (each has its own
/// parameter type, so the body is stamped out per driver).
macro_rules! ours_for {
    ($name:ident, $driver:ty) => {
        async fn $name(
            pool: &Pool<$driver>,
            w: Workload,
            task: usize,
            i: u64,
        ) -> anyhow::Result<()> {
            match w {
                Workload::Select1 | Workload::Tasks1000 | Workload::SlowMix => {
                    pool.query(read_sql(w, task), &[]).await?;
                }
                Workload::PointSelect => {
                    pool.query(POINT, &[&aid(task, i)]).await?;
                }
                Workload::WriteTx => {
                    let a = aid(task, i);
                    pool.transaction(&TxOptions::new(), |tx| async move {
                        tx.execute(UPDATE, &[&1_i32, &a]).await?;
                        tx.query(POINT, &[&a]).await
                    })
                    .await?;
                }
                Workload::Checkout => drop(pool.get().await?),
            }
            Ok(())
        }
    };
}

ours_for!(ours, TokioPostgres);
#[cfg(feature = "sqlx")]
ours_for!(ours_sqlx, pgprovider_sqlx::SqlxDriver);
#[cfg(feature = "diesel")]
ours_for!(ours_diesel, pgprovider_diesel::DieselDriver);

/// A pool of `connections` connections through `driver`, all opened before returning.
async fn warm<D: pgprovider::Driver>(
    driver: D,
    url: &str,
    connections: usize,
) -> anyhow::Result<Pool<D>> {
    let config = Config::from_url(&format!(
        "{url}&pool_max_size={connections}&pool_min_idle={connections}"
    ))?;
    let pool = Pool::new(driver, &config, &config.nodes()[0]);
    let mut held = Vec::new();
    for _ in 0..connections {
        held.push(pool.get().await?);
    }
    Ok(pool)
}

/// A provider over the one node of `url` with `connections` connections, all opened (and
/// the node's role known) before returning.
async fn provider(url: &str, connections: usize) -> anyhow::Result<Provider<TokioPostgres>> {
    let config = Config::from_url(&format!(
        "{url}&pool_max_size={connections}&pool_min_idle={connections}"
    ))?;
    let provider = Provider::new(TokioPostgres::new(), &config, TopologyOptions::default());
    provider
        .monitor()
        .wait_for_primary(std::time::Duration::from_secs(10))
        .await?;
    let mut held = Vec::new();
    for _ in 0..connections {
        held.push(provider.conn().await?);
    }
    Ok(provider)
}

/// Creates and fills the accounts table unless it is there with every row.
pub(crate) async fn prepare_accounts(pool: &Pool<TokioPostgres>) -> anyhow::Result<()> {
    let mut c = pool.get().await?;
    let have: Option<i64> = match c
        .query_one(&format!("SELECT count(*) FROM {TABLE}"), &[])
        .await
    {
        Ok(row) => Some(row.get(0)),
        Err(_) => None,
    };
    if have != Some(ACCOUNTS as i64) {
        pgprovider::Connection::simple_query(
            &mut *c,
            &format!(
                "DROP TABLE IF EXISTS {TABLE}; \
                 CREATE TABLE {TABLE} (aid int PRIMARY KEY, bid int NOT NULL, abalance int NOT NULL, filler char(84)); \
                 INSERT INTO {TABLE} SELECT g, 1, 0, '' FROM generate_series(1, {ACCOUNTS}) g"
            ),
        )
        .await?;
        pgprovider::Connection::simple_query(&mut *c, &format!("VACUUM ANALYZE {TABLE}")).await?;
    }
    Ok(())
}
