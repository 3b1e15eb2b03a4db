//! `pgprovider bench --deadlines 1ms,2ms,5ms,20ms`: callers that give up.
//!
//! Each task runs `timeout(T, SELECT 1 through the pool)` in a loop, as services with a
//! request deadline do. A pool that throws away the connection of every abandoned
//! statement, or the connection it was opening when its caller gave up, collapses under
//! short deadlines: this measures successes, timeouts, errors, connections opened and the
//! connections still open at the end, for a warm pool (every connection open first) and a
//! cold one (none), against the peers in the same run (feature `peers`), rounds interleaved.

use super::contenders::SELECT1;
use crate::opt::BenchArgs;
use anyhow::Context as _;
use pgprovider::{Config, Pool};
use pgprovider_tokio_postgres::TokioPostgres;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The contenders of this workload (those compiled in).
fn names() -> Vec<&'static str> {
    let mut v = vec!["pgprovider"];
    if cfg!(feature = "peers") {
        v.extend(["deadpool", "bb8", "sqlx"]);
    }
    v
}

/// One pool under test, with a count of the connections it opened.
enum Contender {
    Ours(Pool<TokioPostgres>),
    #[cfg(feature = "peers")]
    Deadpool(deadpool_postgres::Pool, Arc<AtomicU64>),
    #[cfg(feature = "peers")]
    Bb8(bb8::Pool<bb8_postgres::PostgresConnectionManager<tokio_postgres::NoTls>>),
    #[cfg(feature = "peers")]
    Sqlx(sqlx::PgPool, Arc<AtomicU64>),
}

impl Contender {
    async fn connect(name: &str, url: &str, size: usize, warm: bool) -> anyhow::Result<Self> {
        let c = match name {
            "pgprovider" => {
                let config = Config::from_url(&format!("{url}&pool_max_size={size}"))?;
                Contender::Ours(Pool::new(TokioPostgres::new(), &config, &config.nodes()[0]))
            }
            #[cfg(feature = "peers")]
            "deadpool" => {
                let opened = Arc::new(AtomicU64::new(0));
                let n = opened.clone();
                let manager = deadpool_postgres::Manager::from_config(
                    url.parse()?,
                    tokio_postgres::NoTls,
                    deadpool_postgres::ManagerConfig {
                        recycling_method: deadpool_postgres::RecyclingMethod::Fast,
                    },
                );
                let pool = deadpool_postgres::Pool::builder(manager)
                    .max_size(size)
                    .wait_timeout(Some(Duration::from_secs(30)))
                    .runtime(deadpool_postgres::Runtime::Tokio1)
                    .post_create(deadpool_postgres::Hook::sync_fn(move |_, _| {
                        n.fetch_add(1, Relaxed);
                        Ok(())
                    }))
                    .build()?;
                Contender::Deadpool(pool, opened)
            }
            #[cfg(feature = "peers")]
            "bb8" => Contender::Bb8(
                bb8::Pool::builder()
                    .max_size(size as u32)
                    .min_idle(Some(0))
                    .build(bb8_postgres::PostgresConnectionManager::new(
                        url.parse()?,
                        tokio_postgres::NoTls,
                    ))
                    .await?,
            ),
            #[cfg(feature = "peers")]
            "sqlx" => {
                let opened = Arc::new(AtomicU64::new(0));
                let n = opened.clone();
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(size as u32)
                    .min_connections(0)
                    .after_connect(move |_, _| {
                        n.fetch_add(1, Relaxed);
                        Box::pin(async { Ok(()) })
                    })
                    .connect_lazy(url)?;
                Contender::Sqlx(pool, opened)
            }
            other => anyhow::bail!("unknown contender {other}"),
        };
        if warm {
            // Every connection open before the clock starts.
            let mut held = Vec::new();
            for _ in 0..size {
                held.push(c.hold().await?);
            }
        }
        Ok(c)
    }

    /// Checks a connection out and gives it back when the result is dropped.
    async fn hold(&self) -> anyhow::Result<Box<dyn Send>> {
        Ok(match self {
            Contender::Ours(p) => Box::new(p.get().await?),
            #[cfg(feature = "peers")]
            Contender::Deadpool(p, _) => Box::new(p.get().await?),
            #[cfg(feature = "peers")]
            Contender::Bb8(p) => Box::new(p.get_owned().await?),
            #[cfg(feature = "peers")]
            Contender::Sqlx(p, _) => Box::new(p.acquire().await?),
        })
    }

    async fn call(&self) -> anyhow::Result<()> {
        match self {
            Contender::Ours(p) => {
                p.query(SELECT1, &[]).await?;
            }
            #[cfg(feature = "peers")]
            Contender::Deadpool(p, _) => {
                let c = p.get().await?;
                let st = c.prepare_cached(SELECT1).await?;
                c.query(&st, &[]).await?;
            }
            #[cfg(feature = "peers")]
            Contender::Bb8(p) => {
                p.get().await?.query(SELECT1, &[]).await?;
            }
            #[cfg(feature = "peers")]
            Contender::Sqlx(p, _) => {
                sqlx::query(SELECT1).fetch_all(p).await?;
            }
        }
        Ok(())
    }

    fn opened(&self) -> u64 {
        match self {
            Contender::Ours(p) => p.stats().created,
            #[cfg(feature = "peers")]
            Contender::Deadpool(_, n) | Contender::Sqlx(_, n) => n.load(Relaxed),
            #[cfg(feature = "peers")]
            Contender::Bb8(p) => p.state().statistics.connections_created,
        }
    }

    async fn close(self) {
        match self {
            Contender::Ours(p) => p.close().await,
            #[cfg(feature = "peers")]
            Contender::Deadpool(p, _) => p.close(),
            #[cfg(feature = "peers")]
            Contender::Bb8(p) => drop(p),
            #[cfg(feature = "peers")]
            Contender::Sqlx(p, _) => p.close().await,
        }
    }
}

/// What one run measured.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    ok: u64,
    timeouts: u64,
    errors: u64,
    opened: u64,
    open_at_end: u64,
}

/// Every round of one (deadline, warmth, contender).
struct Row {
    deadline: Duration,
    warm: bool,
    contender: &'static str,
    samples: Vec<Sample>,
}

impl Row {
    fn median(&self, f: impl Fn(&Sample) -> u64) -> u64 {
        let mut v: Vec<u64> = self.samples.iter().map(f).collect();
        v.sort_unstable();
        v[v.len() / 2]
    }
}

/// Runs `tasks` callers for `duration`, each giving up after `deadline`.
async fn drive(c: &Arc<Contender>, tasks: usize, deadline: Duration, duration: Duration) -> Sample {
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let mut handles = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let (c, stop, counts) = (c.clone(), stop.clone(), counts.clone());
        handles.push(tokio::spawn(async move {
            while !stop.load(Relaxed) {
                let i = match tokio::time::timeout(deadline, c.call()).await {
                    Ok(Ok(())) => 0,
                    Err(_) => 1,
                    Ok(Err(_)) => 2,
                };
                counts[i].fetch_add(1, Relaxed);
            }
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Relaxed);
    for h in handles {
        let _ = h.await;
    }
    Sample {
        ok: counts[0].load(Relaxed),
        timeouts: counts[1].load(Relaxed),
        errors: counts[2].load(Relaxed),
        opened: c.opened(),
        open_at_end: 0,
    }
}

/// Sessions on the server with this application name.
async fn open_sessions(observer: &Pool<TokioPostgres>, app: &str) -> anyhow::Result<u64> {
    let row = observer
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// The whole suite; prints a table and returns the JSON value for `--json`.
pub(crate) async fn run(args: &BenchArgs, url: &str) -> anyhow::Result<Value> {
    let names: Vec<&'static str> = names()
        .into_iter()
        .filter(|n| args.contenders.is_empty() || args.contenders.iter().any(|c| c == n))
        .collect();
    if names.is_empty() {
        return Err(crate::Exit(
            2,
            format!(
                "none of the contenders asked for runs the deadline workload; it has {}",
                self::names().join(", ")
            ),
        )
        .into());
    }
    let observer_config = Config::from_url(url)?;
    let observer = Pool::new(
        TokioPostgres::new(),
        &observer_config,
        &observer_config.nodes()[0],
    );
    crate::say!(
        "deadlines: {} tasks over {} connections, each call `timeout(T, SELECT 1)`, {} rounds of {:?}; contenders {}",
        args.tasks,
        args.connections,
        args.rounds,
        args.duration,
        names.join(", ")
    );
    let mut rows: Vec<Row> = Vec::new();
    for round in 0..args.rounds {
        for &deadline in &args.deadlines {
            for warm in [true, false] {
                for &name in &names {
                    let app = format!("pgprovider-bench-deadline-{name}-{round}");
                    let sep = if url.contains('?') { '&' } else { '?' };
                    let u = format!("{url}{sep}application_name={app}");
                    let c = Arc::new(
                        Contender::connect(name, &u, args.connections, warm)
                            .await
                            .with_context(|| format!("cannot connect {name}"))?,
                    );
                    let mut s = drive(&c, args.tasks, deadline, args.duration).await;
                    // What is still open once the callers are gone (closes settle first).
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    s.open_at_end = open_sessions(&observer, &app).await?;
                    if let Ok(c) = Arc::try_unwrap(c) {
                        c.close().await;
                    }
                    match rows
                        .iter_mut()
                        .find(|r| r.deadline == deadline && r.warm == warm && r.contender == name)
                    {
                        Some(r) => r.samples.push(s),
                        None => rows.push(Row {
                            deadline,
                            warm,
                            contender: name,
                            samples: vec![s],
                        }),
                    }
                }
            }
        }
    }
    observer.close().await;
    crate::say!(
        "{:>8} {:>5} {:>12} {:>10} {:>10} {:>7} {:>7} {:>12}",
        "deadline",
        "pool",
        "contender",
        "successes",
        "timeouts",
        "errors",
        "opened",
        "open at end"
    );
    let mut out = Vec::new();
    for r in &rows {
        let (ok, to, err) = (
            r.median(|s| s.ok),
            r.median(|s| s.timeouts),
            r.median(|s| s.errors),
        );
        let (opened, left) = (r.median(|s| s.opened), r.median(|s| s.open_at_end));
        crate::say!(
            "{:>8} {:>5} {:>12} {:>10} {:>10} {:>7} {:>7} {:>12}",
            format!("{:?}", r.deadline),
            if r.warm { "warm" } else { "cold" },
            r.contender,
            ok,
            to,
            err,
            opened,
            left
        );
        out.push(json!({
            "deadline_ms": r.deadline.as_secs_f64() * 1000.0,
            "pool": if r.warm { "warm" } else { "cold" },
            "contender": r.contender,
            "successes": ok,
            "timeouts": to,
            "errors": err,
            "opened": opened,
            "open_at_end": left,
            "rounds_successes": r.samples.iter().map(|s| s.ok).collect::<Vec<_>>(),
        }));
    }
    Ok(Value::Array(out))
}
