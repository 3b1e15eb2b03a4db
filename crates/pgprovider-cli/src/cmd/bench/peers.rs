//! The peer libraries (feature `peers`): deadpool-postgres, bb8-postgres and sqlx.

use super::contenders::Workload;
use super::contenders::{POINT, UPDATE, aid, read_sql};
use std::time::Duration;
use tokio_postgres::NoTls;

type Bb8 = bb8::Pool<bb8_postgres::PostgresConnectionManager<NoTls>>;

/// A connected peer pool.
#[derive(Clone)]
pub(crate) enum Peer {
    Deadpool(deadpool_postgres::Pool),
    Bb8(Bb8),
    Sqlx(sqlx::PgPool),
}

impl Peer {
    pub(crate) async fn connect(name: &str, url: &str, connections: usize) -> anyhow::Result<Peer> {
        let pg: tokio_postgres::Config = url.parse()?;
        let peer = match name {
            "deadpool" => {
                let manager = deadpool_postgres::Manager::from_config(
                    pg,
                    NoTls,
                    deadpool_postgres::ManagerConfig {
                        recycling_method: deadpool_postgres::RecyclingMethod::Fast,
                    },
                );
                Peer::Deadpool(
                    deadpool_postgres::Pool::builder(manager)
                        .max_size(connections)
                        .wait_timeout(Some(Duration::from_secs(30)))
                        .runtime(deadpool_postgres::Runtime::Tokio1)
                        .build()?,
                )
            }
            "bb8" => Peer::Bb8(
                bb8::Pool::builder()
                    .max_size(connections as u32)
                    .build(bb8_postgres::PostgresConnectionManager::new(pg, NoTls))
                    .await?,
            ),
            "sqlx" => Peer::Sqlx(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(connections as u32)
                    .min_connections(connections as u32)
                    .connect(url)
                    .await?,
            ),
            other => anyhow::bail!("unknown contender {other}"),
        };
        peer.open_all(connections).await?;
        Ok(peer)
    }

    /// Checks out every connection at once, so all are open before measuring.
    async fn open_all(&self, n: usize) -> anyhow::Result<()> {
        match self {
            Peer::Deadpool(p) => {
                let mut held = Vec::new();
                for _ in 0..n {
                    held.push(p.get().await?);
                }
            }
            Peer::Bb8(p) => {
                let mut held = Vec::new();
                for _ in 0..n {
                    held.push(p.get().await?);
                }
            }
            Peer::Sqlx(p) => {
                let mut held = Vec::new();
                for _ in 0..n {
                    held.push(p.acquire().await?);
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn close(self) {
        match self {
            Peer::Deadpool(p) => p.close(),
            Peer::Bb8(_) => {}
            Peer::Sqlx(p) => p.close().await,
        }
    }

    pub(crate) async fn call(&self, w: Workload, task: usize, i: u64) -> anyhow::Result<()> {
        match self {
            Peer::Deadpool(p) => {
                let mut c = p.get().await?;
                match w {
                    Workload::Checkout => {}
                    Workload::PointSelect => {
                        let st = c.prepare_cached(POINT).await?;
                        c.query(&st, &[&aid(task, i)]).await?;
                    }
                    Workload::WriteTx => {
                        let a = aid(task, i);
                        let tx = c.transaction().await?;
                        let up = tx.prepare_cached(UPDATE).await?;
                        tx.execute(&up, &[&1_i32, &a]).await?;
                        let st = tx.prepare_cached(POINT).await?;
                        tx.query(&st, &[&a]).await?;
                        tx.commit().await?;
                    }
                    _ => {
                        let st = c.prepare_cached(read_sql(w, task)).await?;
                        c.query(&st, &[]).await?;
                    }
                }
            }
            Peer::Bb8(p) => {
                let mut c = p.get().await?;
                match w {
                    Workload::Checkout => {}
                    Workload::PointSelect => {
                        c.query(POINT, &[&aid(task, i)]).await?;
                    }
                    Workload::WriteTx => {
                        let a = aid(task, i);
                        let tx = c.transaction().await?;
                        tx.execute(UPDATE, &[&1_i32, &a]).await?;
                        tx.query(POINT, &[&a]).await?;
                        tx.commit().await?;
                    }
                    _ => {
                        c.query(read_sql(w, task), &[]).await?;
                    }
                }
            }
            Peer::Sqlx(p) => match w {
                Workload::Checkout => drop(p.acquire().await?),
                Workload::PointSelect => {
                    sqlx::query(POINT).bind(aid(task, i)).fetch_all(p).await?;
                }
                Workload::WriteTx => {
                    let a = aid(task, i);
                    let mut tx = p.begin().await?;
                    sqlx::query(UPDATE)
                        .bind(1_i32)
                        .bind(a)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(POINT).bind(a).fetch_all(&mut *tx).await?;
                    tx.commit().await?;
                }
                _ => {
                    sqlx::query(read_sql(w, task)).fetch_all(p).await?;
                }
            },
        }
        Ok(())
    }
}
