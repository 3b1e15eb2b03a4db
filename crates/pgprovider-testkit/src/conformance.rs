//! The driver conformance suite (feature `conformance`): one set of tests that every driver
//! crate runs unchanged, through [`conformance_tests!`](crate::conformance_tests).
//!
//! ```ignore
//! // tests/conformance.rs of a driver crate:
//! pgprovider_testkit::conformance_tests!(
//!     pgprovider_sqlx::SqlxDriver::new(),
//!     pgprovider_testkit::conformance::Capabilities::ALL.without_notify()
//! );
//! ```
//!
//! What a driver cannot do is an explicit [`Capabilities`] flag, and the suite checks the
//! documented fallback instead (never a skipped test):
//!
//! | test | checks |
//! | --- | --- |
//! | `connect_and_query` | typed rows through `Column`, row counts, simple queries, SQLSTATE and node on errors, unnamed statements (`statement_cache_capacity=0`) |
//! | `transactions` | commit, rollback on `Err`, a dropped transaction future leaves no session idle in transaction and nothing committed |
//! | `statement_cache` | a table altered under a cached statement: the next run succeeds |
//! | `abandoned_statements` | statements whose callers gave up (plain, and in a transaction that changed settings) leave the next user a clean session; with `recover` the connection is drained and kept, without it closed |
//! | `cancel_and_timeouts` | a query past `query_timeout` fails with `Timeout` and no longer runs on the server; with `cancel`, a cancel token stops a running statement (`57014`), without it the token reports `Unsupported` |
//! | `tls` | against a cluster serving TLS: with `tls`, `sslmode=require` gives an encrypted session (checked in `pg_stat_ssl`); without, the connection fails |
//! | `pgbouncer_transaction`, `pgbouncer_session` | a real PgBouncer in that mode: [`pooler`] (startup options refused without the `pooler` key, settings in every transaction, clients sharing server sessions, schema changes, session state refused or reset), then the suite's tests that need no server of their own ([`suite_via`]) through it |
//! | `hooks` | operations reach hooks with their SQL; a rejecting hook keeps a statement from the server |
//! | `metrics` | the Prometheus counters equal the operations run |
//! | `tenancy` | a schema tenant's rows are invisible to another tenant |
//! | `failover` | writes through a provider survive a primary crash and promotion, every acknowledged write present |
//!
//! LISTEN/NOTIFY has no driver-neutral API yet: the `notify` flag records whether the driver
//! crate offers one (the tokio-postgres driver's `Listener` has its own tests).

use crate::{PoolMode, TestCluster, shared_url};
use pgprovider::observe::{Hook, Hooks, MetricsHook, Operation, Outcome, Verdict};
use pgprovider::provider::{Provider, TopologyOptions};
use pgprovider::tenant::{Strategy, Tenancy, TenancyOptions};
use pgprovider::{Column, Config, Connection, Driver, Error, ErrorKind, Pool, Queries, TxOptions};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// What a driver can do; see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Cancel tokens stop a running statement on the server.
    pub cancel: bool,
    /// TLS sessions.
    pub tls: bool,
    /// A LISTEN/NOTIFY API in the driver crate.
    pub notify: bool,
    /// A statement abandoned mid-flight (its caller's deadline) is drained and the
    /// connection kept ([`Connection::interrupted`] / [`Connection::recover`]); without it
    /// the connection is closed. Never handed out dirty either way.
    pub recover: bool,
}

impl Capabilities {
    /// Everything.
    pub const ALL: Capabilities = Capabilities {
        cancel: true,
        tls: true,
        notify: true,
        recover: true,
    };

    /// Without LISTEN/NOTIFY.
    pub const fn without_notify(mut self) -> Self {
        self.notify = false;
        self
    }

    /// Without cancel.
    pub const fn without_cancel(mut self) -> Self {
        self.cancel = false;
        self
    }

    /// Without TLS.
    pub const fn without_tls(mut self) -> Self {
        self.tls = false;
        self
    }

    /// Closes connections whose statement was abandoned instead of recovering them.
    pub const fn without_recover(mut self) -> Self {
        self.recover = false;
        self
    }
}

/// The row type of a driver.
pub type Row<D> = <<D as Driver>::Connection as Queries>::Row;

/// A driver the suite can run against.
pub trait Subject: Driver + Clone + Send + Sync + 'static {}
impl<D: Driver + Clone + Send + Sync + 'static> Subject for D {}

/// How the suite reaches the shared server: directly, or through a real PgBouncer in one of
/// its modes (with the matching `pooler` key in the URL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Straight to the server.
    Direct,
    /// Through [`shared_pgbouncer_url`](crate::shared_pgbouncer_url) in this mode.
    PgBouncer(PoolMode),
}

tokio::task_local! {
    static VIA: Via;
}

/// Runs a suite test (`fut`) with every connection made `via` the given route.
pub async fn via<F: std::future::Future>(via: Via, fut: F) -> F::Output {
    VIA.scope(via, fut).await
}

/// The shared server's configuration for `driver`'s tests (directly or through PgBouncer,
/// see [`via`]), plus `extra` (`&k=v…`).
async fn config<D: Driver>(driver: &D, extra: &str) -> Config {
    let (url, pooler) = match VIA.try_with(|v| *v).unwrap_or(Via::Direct) {
        Via::Direct => (shared_url().await, String::new()),
        Via::PgBouncer(mode) => (
            crate::shared_pgbouncer_url(mode).await,
            format!("&pooler={}", mode.as_str()),
        ),
    };
    let url = url.expect("a server for the suite");
    let sep = if url.contains('?') { '&' } else { '?' };
    Config::from_url(&format!(
        "{url}{sep}application_name=conformance-{}{pooler}{extra}",
        driver.name()
    ))
    .expect("a valid URL")
}

/// The error of a call expected to fail (rows need not be `Debug`).
fn err<T>(r: pgprovider::Result<T>) -> Error {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

/// The driver's name as part of an identifier (`tokio_postgres`), with the route when it is
/// not direct (`tokio_postgres_transaction`): tests of several routes run at once.
fn tag<D: Driver>(driver: &D) -> String {
    let name = driver.name().replace('-', "_");
    match VIA.try_with(|v| *v).unwrap_or(Via::Direct) {
        Via::Direct => name,
        Via::PgBouncer(mode) => format!("{name}_{}", mode.as_str()),
    }
}

fn col<R: Column<T>, T>(row: &R, i: usize) -> T {
    row.column(i).expect("a readable column")
}

/// Sessions of `app` in `state` (`active`, `idle in transaction`, …) other than ours.
async fn sessions<D: Subject>(pool: &Pool<D>, app: &str, state: &str, query: &str) -> i64
where
    D::Connection: Queries,
    Row<D>: Column<i64>,
{
    let sql = format!(
        "SELECT count(*)::int8 FROM pg_stat_activity WHERE application_name = '{app}' \
         AND state = '{state}' AND query LIKE '{query}%' AND pid <> pg_backend_pid()"
    );
    col(
        &pool.query_one(&sql, &[]).await.expect("pg_stat_activity"),
        0,
    )
}

/// Typed rows, counts, simple queries, errors, unnamed statements.
pub async fn connect_and_query<D: Subject>(driver: D)
where
    D::Connection: Queries,
    Row<D>: Column<i32> + Column<i64> + Column<String> + Column<bool>,
{
    let config = config(&driver, "").await;
    let pool = Pool::new(driver.clone(), &config, &config.nodes()[0]);
    let row = pool
        .query_one("SELECT 41 + 1, 'x'::text, true, 7::int8", &[])
        .await
        .unwrap();
    assert_eq!(col::<_, i32>(&row, 0), 42);
    assert_eq!(col::<_, String>(&row, 1), "x");
    assert!(col::<_, bool>(&row, 2));
    assert_eq!(col::<_, i64>(&row, 3), 7);
    assert_eq!(
        Column::<String>::column(&row, 0).unwrap_err().kind(),
        ErrorKind::Decode
    );
    let rows = pool
        .query("SELECT generate_series(1, 3)", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        pool.query_opt("SELECT 1 WHERE false", &[])
            .await
            .unwrap()
            .is_none()
    );
    let mut conn = pool.get().await.unwrap();
    let simple = conn
        .simple_query("SELECT 1 AS one, NULL::text AS nothing")
        .await
        .unwrap();
    assert_eq!(simple[0].get(0), Some("1"));
    assert_eq!(simple[0].get_by_name("nothing"), None);
    drop(conn);
    let e = err(pool
        .query("SELECT * FROM no_such_conformance_table", &[])
        .await);
    assert_eq!(e.sql_state().unwrap().code(), "42P01", "{e}");
    assert_eq!(e.node(), Some(config.nodes()[0].to_string().as_str()));
    // Unnamed statements only (transaction-mode poolers).
    let unnamed = crate::conformance::config(&driver, "&statement_cache_capacity=0").await;
    let pool = Pool::new(driver, &unnamed, &unnamed.nodes()[0]);
    for _ in 0..3 {
        let row = pool.query_one("SELECT 5 * 5", &[]).await.unwrap();
        assert_eq!(col::<_, i32>(&row, 0), 25);
    }
}

/// Commit, rollback, and a dropped transaction.
pub async fn transactions<D: Subject>(driver: D)
where
    D::Connection: Queries,
    Row<D>: Column<i64>,
{
    let config = config(&driver, "").await;
    let pool = Pool::new(driver.clone(), &config, &config.nodes()[0]);
    let table = format!("conformance_tx_{}", tag(&driver));
    pool.execute(&format!("DROP TABLE IF EXISTS {table}"), &[])
        .await
        .unwrap();
    pool.execute(&format!("CREATE TABLE {table} (id int)"), &[])
        .await
        .unwrap();
    let insert = format!("INSERT INTO {table} VALUES (1)");
    let ins = insert.as_str();
    pool.transaction(&TxOptions::default(), |tx| async move {
        tx.execute(ins, &[]).await
    })
    .await
    .unwrap();
    let r: Result<(), pgprovider::Error> = pool
        .transaction(&TxOptions::default(), |tx| async move {
            tx.execute(ins, &[]).await?;
            Err(pgprovider::Error::new(ErrorKind::Other, "changed my mind"))
        })
        .await;
    assert!(r.is_err());
    // Dropped half-way: the pool's reset rolls it back.
    let opts = TxOptions::default();
    let long = pool.transaction(&opts, |tx| async move {
        tx.execute(ins, &[]).await?;
        tx.execute("SELECT pg_sleep(30)", &[]).await
    });
    let _ = tokio::time::timeout(Duration::from_millis(500), long).await;
    let count = format!("SELECT count(*)::int8 FROM {table}");
    let app = format!("conformance-{}", driver.name());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let open = sessions(&pool, &app, "idle in transaction", "").await
            + sessions(&pool, &app, "active", "SELECT pg_sleep").await;
        if open == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{open} sessions left open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let n: i64 = col(&pool.query_one(&count, &[]).await.unwrap(), 0);
    assert_eq!(n, 1, "only the committed insert is there");
    pool.execute(&format!("DROP TABLE {table}"), &[])
        .await
        .unwrap();
}

/// A table altered under a cached statement.
pub async fn statement_cache<D: Subject>(driver: D)
where
    D::Connection: Queries,
{
    let config = config(&driver, "&pool_max_size=1").await;
    let pool = Pool::new(driver.clone(), &config, &config.nodes()[0]);
    let table = format!("conformance_cache_{}", tag(&driver));
    pool.execute(&format!("DROP TABLE IF EXISTS {table}"), &[])
        .await
        .unwrap();
    pool.execute(&format!("CREATE TABLE {table} (a int)"), &[])
        .await
        .unwrap();
    pool.execute(&format!("INSERT INTO {table} VALUES (1)"), &[])
        .await
        .unwrap();
    let select = format!("SELECT * FROM {table}");
    for _ in 0..2 {
        assert_eq!(pool.query(&select, &[]).await.unwrap().len(), 1);
    }
    pool.execute(&format!("ALTER TABLE {table} ADD COLUMN b int"), &[])
        .await
        .unwrap();
    assert_eq!(pool.query(&select, &[]).await.unwrap().len(), 1);
    pool.execute(&format!("DROP TABLE {table}"), &[])
        .await
        .unwrap();
}

/// A 5 s statement on `pool` (whose query timeout is short) fails with `Timeout` well
/// before it would have ended.
async fn times_out<D: Subject>(pool: &Pool<D>)
where
    D::Connection: Queries,
{
    let started = std::time::Instant::now();
    let e = err(pool.query("SELECT pg_sleep(5)", &[]).await);
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "{took:?}");
}

/// Query timeouts cancel on the server; cancel tokens (or their documented absence).
pub async fn cancel_and_timeouts<D: Subject>(driver: D, caps: Capabilities)
where
    D::Connection: Queries,
    Row<D>: Column<i32> + Column<i64>,
{
    let config = config(&driver, "&query_timeout=300ms&pool_max_size=2").await;
    let pool = Pool::new(driver.clone(), &config, &config.nodes()[0]);
    let app = format!("conformance-{}", driver.name());
    times_out(&pool).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sessions(&pool, &app, "active", "SELECT pg_sleep").await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the statement still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let row = pool.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(col::<_, i32>(&row, 0), 1);

    let plain = crate::conformance::config(&driver, "&pool_max_size=2").await;
    let pool = Pool::new(driver, &plain, &plain.nodes()[0]);
    let mut conn = pool.get().await.unwrap();
    let token = conn.cancel_token();
    if caps.cancel {
        let watcher = pool.clone();
        let canceller = tokio::spawn(async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while sessions(&watcher, &app, "active", "SELECT pg_sleep").await == 0 {
                assert!(std::time::Instant::now() < deadline);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            token.cancel().await
        });
        let e = err(conn.query("SELECT pg_sleep(10)", &[]).await);
        assert_eq!(e.sql_state().unwrap().code(), "57014", "{e}");
        canceller.await.unwrap().unwrap();
        let row = conn.query_one("SELECT 2", &[]).await.unwrap();
        assert_eq!(col::<_, i32>(&row, 0), 2);
    } else {
        let e = token.cancel().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    }
}

/// Statements abandoned by callers that give up (a deadline), plain and inside a
/// transaction that changed a setting: the next user gets a clean session, and the
/// connection is kept when the driver can recover it.
pub async fn abandoned_statements<D: Subject>(driver: D, caps: Capabilities)
where
    D::Connection: Queries,
    Row<D>: Column<i32> + Column<String>,
{
    let config = config(&driver, "&pool_max_size=1").await;
    let pool = Pool::new(driver.clone(), &config, &config.nodes()[0]);
    let pid = async |pool: &Pool<D>| -> i32 {
        col(
            &pool
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap(),
            0,
        )
    };
    let first = pid(&pool).await;
    // Each abandoned statement ends well within the pool's grace (100 ms), so it is
    // drained, not cancelled.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(5),
        pool.query("SELECT pg_sleep(0.02)", &[]),
    )
    .await;
    assert!(gave_up.is_err(), "the statement outlived its deadline");
    // Back in the pool (or replaced) before the next caller's clock starts.
    let second = pid(&pool).await;
    assert_eq!(second == first, caps.recover, "kept only when recovered");
    let p = pool.clone();
    let gave_up = tokio::time::timeout(Duration::from_millis(30), async move {
        let mut c = p.get().await?;
        c.execute("BEGIN", &[]).await?;
        c.execute("SET LOCAL application_name = 'leaked'", &[])
            .await?;
        c.execute("SET search_path = nowhere", &[]).await?;
        // Twice the deadline: a loaded machine's late timer must not let it finish first.
        c.query("SELECT pg_sleep(0.06)", &[]).await
    })
    .await;
    assert!(
        gave_up.is_err(),
        "the statement outlived its deadline: {:?}",
        gave_up.map(|r| r.map(|rows| rows.len()))
    );
    let row = pool
        .query_one(
            "SELECT current_setting('application_name'), current_setting('search_path')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        col::<_, String>(&row, 0),
        format!("conformance-{}", driver.name()),
        "the transaction whose SET LOCAL this was is over"
    );
    assert_eq!(col::<_, String>(&row, 1), "\"$user\", public");
    let s = pool.stats();
    if caps.recover {
        assert_eq!(pid(&pool).await, first, "the connection was kept");
        assert_eq!((s.recovered, s.closed_error), (2, 0), "{s:?}");
    } else {
        assert_eq!(s.recovered, 0, "{s:?}");
    }
}

/// TLS sessions (or their refusal), against a throwaway cluster that serves TLS with a
/// self-signed certificate: with `tls`, `sslmode=require` must give an encrypted session (a
/// plaintext one, or none, fails the test); without, the connection must fail.
pub async fn tls<D: Subject>(driver: D, caps: Capabilities)
where
    D::Connection: Queries,
    Row<D>: Column<bool>,
{
    let key = rcgen::KeyPair::generate().expect("a key");
    let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate parameters");
    let cert = params.self_signed(&key).expect("a certificate");
    let cluster = TestCluster::builder()
        .tls(cert.pem(), key.serialize_pem())
        .start()
        .await
        .expect("a TLS cluster");
    let config = Config::from_url(&format!(
        "{}?sslmode=require&pool_acquire_timeout=5s&query_timeout=300ms",
        cluster.primary().url()
    ))
    .unwrap();
    let pool = Pool::new(driver, &config, &config.nodes()[0]);
    let r = pool
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await;
    if caps.tls {
        let row = r.expect("sslmode=require against a server with TLS");
        assert!(
            col::<_, bool>(&row, 0),
            "sslmode=require gave a plaintext session"
        );
        // Errors keep their SQLSTATE over TLS too.
        let e = err(pool
            .query("SELECT * FROM no_such_conformance_table", &[])
            .await);
        assert_eq!(e.sql_state().unwrap().code(), "42P01", "{e}");
        // A query timeout's cancel reaches the server over TLS too.
        times_out(&pool).await;
    } else {
        let e = err(r);
        assert!(
            matches!(
                e.kind(),
                ErrorKind::Tls | ErrorKind::Connect | ErrorKind::PoolTimeout
            ),
            "{e}"
        );
    }
}

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Hook for Seen {
    fn name(&self) -> &str {
        "conformance-seen"
    }
    fn before(&self, op: &Operation<'_>) -> Verdict {
        match op.sql {
            Some(sql) if sql.contains("conformance_keep") && sql.starts_with("DROP") => {
                Verdict::Reject("kept".into())
            }
            _ => Verdict::Proceed,
        }
    }
    fn after(&self, op: &Operation<'_>, _: &Outcome<'_>) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{}:{}", op.kind, op.sql.unwrap_or_default()));
    }
}

/// Hooks see operations and can stop them.
pub async fn hooks<D: Subject>(driver: D)
where
    D::Connection: Queries,
    Row<D>: Column<i64>,
{
    let config = config(&driver, "").await;
    let seen = Seen::default();
    let pool = Pool::builder(driver.clone(), &config, &config.nodes()[0])
        .observe(Hooks::builder().hook(0, seen.clone()).build())
        .build();
    let table = format!("conformance_keep_{}", tag(&driver));
    pool.execute(&format!("CREATE TABLE IF NOT EXISTS {table} (id int)"), &[])
        .await
        .unwrap();
    pool.query("SELECT 1", &[]).await.unwrap();
    let log = seen.0.lock().unwrap().clone();
    assert!(log.contains(&"query:SELECT 1".to_owned()), "{log:?}");
    assert!(log.iter().any(|l| l.starts_with("checkout:")), "{log:?}");
    let e = pool
        .execute(&format!("DROP TABLE {table}"), &[])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
    let n: i64 = col(
        &pool
            .query_one(
                &format!("SELECT count(*)::int8 FROM pg_tables WHERE tablename = '{table}'"),
                &[],
            )
            .await
            .unwrap(),
        0,
    );
    assert_eq!(n, 1, "the rejected DROP reached the server");
}

static PROMETHEUS: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();

/// Metrics counters equal the work done.
pub async fn metrics<D: Subject>(driver: D)
where
    D::Connection: Queries,
{
    let handle = PROMETHEUS.get_or_init(|| {
        pgprovider::observe::install_prometheus().expect("no other recorder in this binary")
    });
    let config = config(&driver, "").await;
    let pool = Pool::builder(driver.clone(), &config, &config.nodes()[0])
        .observe(Hooks::builder().hook(0, MetricsHook::new()).build())
        .build();
    let tenant = format!("conformance_{}", tag(&driver));
    pgprovider::observe::with_tenant(tenant.as_str(), async {
        for _ in 0..3 {
            pool.query("SELECT 1", &[]).await.unwrap();
        }
        err(pool
            .query("SELECT * FROM no_such_conformance_table", &[])
            .await);
    })
    .await;
    let text = handle.render();
    let node = config.nodes()[0].to_string();
    let find = |outcome: &str| {
        let key = format!(
            "pgprovider_operations_total{{node=\"{node}\",operation=\"query\",tenant=\"{tenant}\",outcome=\"{outcome}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .map(|v| v.trim().parse::<f64>().unwrap())
            .unwrap_or_else(|| panic!("no {key} in\n{text}"))
    };
    assert_eq!(find("ok"), 3.0);
    assert_eq!(find("error"), 1.0);
}

/// A schema tenant through the driver.
pub async fn tenancy<D: Subject>(driver: D)
where
    D::Connection: Queries,
    Row<D>: Column<i64>,
{
    let config = config(&driver, "").await;
    let provider = Provider::new(driver.clone(), &config, TopologyOptions::default());
    provider
        .monitor()
        .wait_for_primary(Duration::from_secs(10))
        .await
        .unwrap();
    let tenants = Tenancy::new(provider, TenancyOptions::new(Strategy::Schema));
    let (a, b) = (
        format!("conf_{}_a", tag(&driver)),
        format!("conf_{}_b", tag(&driver)),
    );
    for t in [&a, &b] {
        tenants.drop_tenant(t).await.unwrap();
        tenants.create_tenant(t, None).await.unwrap();
    }
    for t in [&a, &b] {
        tenants
            .tenant(t)
            .unwrap()
            .execute("CREATE TABLE items (id int)", &[])
            .await
            .unwrap();
    }
    let ta = tenants.tenant(&a).unwrap();
    ta.execute("INSERT INTO items VALUES (1)", &[])
        .await
        .unwrap();
    let count = |t: pgprovider::tenant::Tenant<D>| async move {
        col::<_, i64>(
            &t.query_one("SELECT count(*)::int8 FROM items", &[])
                .await
                .unwrap(),
            0,
        )
    };
    assert_eq!(count(ta.clone()).await, 1);
    assert_eq!(count(tenants.tenant(&b).unwrap()).await, 0);
    let e = ta.execute("RESET ROLE", &[]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected);
    for t in [&a, &b] {
        tenants.drop_tenant(t).await.unwrap();
    }
}

/// Writes through a provider survive a primary crash and the standby's promotion.
pub async fn failover<D: Subject>(driver: D)
where
    D::Connection: Queries,
    Row<D>: Column<i32>,
{
    let cluster = TestCluster::builder()
        .standbys(1)
        .synchronous(true)
        .start()
        .await
        .unwrap();
    let config = Config::from_url(&format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?connect_timeout=1&pool_acquire_timeout=2s",
        cluster.primary().port(),
        cluster.standby(0).port()
    ))
    .unwrap();
    let provider = Provider::new(
        driver,
        &config,
        TopologyOptions::default()
            .with_monitor_interval(Duration::from_millis(100))
            .with_failover_timeout(Duration::from_secs(20)),
    );
    provider
        .write()
        .await
        .unwrap()
        .execute("CREATE TABLE acked (id int PRIMARY KEY)", &[])
        .await
        .unwrap();
    let mut acked = Vec::new();
    let mut crashed = false;
    for id in 1..=200 {
        if id == 60 {
            cluster.primary().crash().unwrap();
            cluster.standby(0).promote().await.unwrap();
            crashed = true;
        }
        let r = provider
            .primary()
            .execute(&format!("INSERT INTO acked VALUES ({id})"), &[])
            .await;
        if r.is_ok() {
            acked.push(id);
        }
    }
    assert!(crashed);
    assert!(
        acked.iter().any(|id| *id > 60),
        "no write after the failover"
    );
    let mut c = provider.write().await.unwrap();
    let present: std::collections::HashSet<i32> = c
        .query("SELECT id FROM acked", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| col::<_, i32>(r, 0))
        .collect();
    let lost: Vec<&i32> = acked.iter().filter(|id| !present.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

/// Runs `fut` to completion on a two-worker runtime whose threads have 16 MiB stacks: the
/// nested futures of some drivers (diesel-async's) overflow a test thread's 2 MiB in debug
/// builds.
///
/// # Panics
/// When `fut` panics (the test fails with its message).
pub fn on_big_stack<F: std::future::Future<Output = ()> + Send + 'static>(fut: F) {
    const STACK: usize = 16 << 20;
    let thread = std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_stack_size(STACK)
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(fut)
        })
        .expect("a test thread");
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// The suite's tests that do not need a server of their own (no failover, TLS or backend
/// identity), one after the other, every connection made `via` the given route.
pub async fn suite_via<D: Subject>(driver: D, caps: Capabilities, route: Via)
where
    D::Connection: pgprovider::ValueQueries + Queries,
    Row<D>: Column<i32> + Column<i64> + Column<String> + Column<bool>,
{
    // Each boxed: together they would overflow a test thread's stack in debug builds.
    Box::pin(via(route, connect_and_query(driver.clone()))).await;
    Box::pin(via(route, transactions(driver.clone()))).await;
    Box::pin(via(route, statement_cache(driver.clone()))).await;
    Box::pin(via(route, cancel_and_timeouts(driver.clone(), caps))).await;
    Box::pin(via(route, hooks(driver.clone()))).await;
    Box::pin(via(route, tenancy(driver.clone()))).await;
    Box::pin(via(route, registry(driver))).await;
}

/// The suite as `#[tokio::test]` functions, for a driver expression and its
/// [`Capabilities`].
#[macro_export]
macro_rules! conformance_tests {
    ($driver:expr, $caps:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_connect_and_query() {
            $crate::conformance::connect_and_query($driver).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_transactions() {
            $crate::conformance::transactions($driver).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_statement_cache() {
            $crate::conformance::statement_cache($driver).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_cancel_and_timeouts() {
            $crate::conformance::cancel_and_timeouts($driver, $caps).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_abandoned_statements() {
            $crate::conformance::abandoned_statements($driver, $caps).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_tls() {
            $crate::conformance::tls($driver, $caps).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_hooks() {
            $crate::conformance::hooks($driver).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_metrics() {
            $crate::conformance::metrics($driver).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_tenancy() {
            $crate::conformance::tenancy($driver).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_failover() {
            $crate::conformance::failover($driver).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_registry() {
            $crate::conformance::registry($driver).await;
        }
        #[test]
        fn conformance_pgbouncer_transaction() {
            $crate::conformance::on_big_stack(async {
                let mode = $crate::PoolMode::Transaction;
                Box::pin($crate::conformance::pooler($driver, mode)).await;
                let via = $crate::conformance::Via::PgBouncer(mode);
                $crate::conformance::suite_via($driver, $caps, via).await;
            });
        }
        #[test]
        fn conformance_pgbouncer_session() {
            $crate::conformance::on_big_stack(async {
                let mode = $crate::PoolMode::Session;
                Box::pin($crate::conformance::pooler($driver, mode)).await;
                let via = $crate::conformance::Via::PgBouncer(mode);
                $crate::conformance::suite_via($driver, $caps, via).await;
            });
        }
    };
}

/// A provider made by driver name through the registry runs typed statements on
/// driver-neutral values, and transactions.
pub async fn registry<D: Subject>(driver: D)
where
    D::Connection: pgprovider::ValueQueries + Queries,
{
    use pgprovider::provider::TopologyOptions;
    use pgprovider::{DriverRegistry, Value, ValueRow};
    let name = driver.name();
    let table = format!("conf_registry_{}", tag(&driver));
    let mut registry = DriverRegistry::new();
    registry.register(driver.clone());
    let config = config(&driver, "").await;
    let provider = registry
        .provider(name, &config, TopologyOptions::default())
        .expect("a registered driver");
    provider
        .execute(&format!("DROP TABLE IF EXISTS {table}"), &[])
        .await
        .unwrap();
    provider
        .execute(
            &format!("CREATE TABLE {table} (id int PRIMARY KEY, name text, ok bool, score float8, raw bytea, small int2)"),
            &[],
        )
        .await
        .unwrap();
    let insert = format!("INSERT INTO {table} VALUES ($1, $2, $3, $4, $5, $6)");
    let n = provider
        .execute(
            &insert,
            &[
                &Value::from(1_i32),
                &Value::from("ada"),
                &Value::from(true),
                &Value::from(0.5_f64),
                &Value::from(vec![1_u8, 2]),
                &Value::from(7_i16),
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 1, "{name}");
    let row: ValueRow = provider
        .query_one(
            &format!("SELECT id, name, ok, score, raw, small FROM {table} WHERE id = $1"),
            &[&Value::from(1_i64)],
        )
        .await
        .unwrap();
    assert_eq!(row.columns()[1], "name", "{name}");
    let typed: (i32, String, bool, f64, Vec<u8>, i16) = row.to().unwrap();
    assert_eq!(typed, (1, "ada".into(), true, 0.5, vec![1, 2], 7), "{name}");
    // A transaction: rolled back on Err, committed on Ok.
    let failed: pgprovider::Result<()> = provider
        .transaction(&pgprovider::TxOptions::new(), |tx| {
            let insert = insert.clone();
            async move {
                tx.execute(
                    &insert,
                    &[
                        &Value::from(2_i64),
                        &Value::from("rolled back"),
                        &Value::Null,
                        &Value::Null,
                        &Value::Null,
                        &Value::Null,
                    ],
                )
                .await?;
                Err(Error::new(pgprovider::ErrorKind::Other, "give up"))
            }
        })
        .await;
    assert!(failed.is_err(), "{name}");
    provider
        .transaction(&pgprovider::TxOptions::new(), |tx| {
            let insert = insert.clone();
            async move {
                tx.execute(
                    &insert,
                    &[
                        &Value::from(3_i64),
                        &Value::Null,
                        &Value::Null,
                        &Value::Null,
                        &Value::Null,
                        &Value::Null,
                    ],
                )
                .await
            }
        })
        .await
        .unwrap();
    let ids: Vec<(i32, Option<String>)> = provider
        .query_as(&format!("SELECT id, name FROM {table} ORDER BY id"), &[])
        .await
        .unwrap();
    assert_eq!(ids, vec![(1, Some("ada".into())), (3, None)], "{name}");
    // A column the values do not cover says how to read it.
    let e = err(provider.query("SELECT 1.5::numeric AS amount", &[]).await);
    assert_eq!(e.kind(), pgprovider::ErrorKind::Decode, "{name}: {e}");
    assert!(
        e.hint().unwrap_or("").contains("amount::text"),
        "{name}: {e:?}"
    );
    // The registry's pools are typed too.
    let pool = registry.pool(name, &config, &config.nodes()[0]).unwrap();
    let one: i64 = pool
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = $1",
            &[&Value::from(table.as_str())],
        )
        .await
        .unwrap()
        .to::<(i64,)>()
        .unwrap()
        .0;
    assert_eq!(one, 1, "{name}");
    provider
        .execute(&format!("DROP TABLE {table}"), &[])
        .await
        .unwrap();
}

/// Session settings a leak would change and PgBouncer does not reset by itself.
const SETTINGS: &str = "SELECT current_setting('search_path') || ' / ' || current_setting('work_mem') \
     || ' / ' || current_setting('DateStyle') || ' / ' || current_setting('lock_timeout')";

/// Behind a real PgBouncer in `mode`: startup options without the `pooler` key are refused
/// with an error naming it; with it, `statement_timeout` holds in every transaction (or
/// session); clients sharing few server sessions get their own results; a schema change
/// under running statements is harmless; session state is refused in transaction mode and
/// reset on return in session mode.
pub async fn pooler<D: Subject>(driver: D, mode: PoolMode)
where
    D::Connection: pgprovider::ValueQueries + Queries,
    Row<D>: Column<i32> + Column<i64> + Column<String>,
{
    use pgprovider::{Value, ValueQueries};
    let base = crate::shared_pgbouncer_url(mode)
        .await
        .expect("PgBouncer for the suite");
    let app = format!("conformance-{}", driver.name());
    let bare = Config::from_url(&format!(
        "{base}?application_name={app}&statement_timeout=5s&pool_acquire_timeout=3s"
    ))
    .unwrap();
    let pool = Pool::new(driver.clone(), &bare, &bare.nodes()[0]);
    let e = err(pool.query("SELECT 1", &[]).await);
    assert!(e.to_string().contains("pooler=transaction"), "{e}");

    let url = |extra: &str| {
        Config::from_url(&format!(
            "{base}?application_name={app}&pooler={}&statement_timeout=1500ms{extra}",
            mode.as_str()
        ))
        .unwrap()
    };
    let config = url("&pool_max_size=4");
    let pool = Pool::new(driver.clone(), &config, &config.nodes()[0]);
    let setting = "SELECT current_setting('statement_timeout')";
    let row = pool.query_one(setting, &[]).await.unwrap();
    assert_eq!(col::<_, String>(&row, 0), "1500ms", "outside a transaction");
    // Boxed, as the other large futures here: debug builds overflow a test thread's stack.
    let in_tx = Box::pin(pool.transaction(&TxOptions::default(), |tx| async move {
        let row = tx.query_one(setting, &[]).await?;
        Ok::<_, Error>(col::<_, String>(&row, 0))
    }))
    .await
    .unwrap();
    assert_eq!(in_tx, "1500ms", "inside a transaction");
    let e = err(pool.query("SELECT pg_sleep(3)", &[]).await);
    assert_eq!(
        e.sql_state().map(|s| s.code().to_owned()).as_deref(),
        Some("57014"),
        "the server's statement_timeout: {e}"
    );

    // Clients sharing few server sessions (PgBouncer keeps 6 in transaction mode).
    let table = format!("conformance_pooler_{}_{}", tag(&driver), mode.as_str());
    pool.execute(&format!("DROP TABLE IF EXISTS {table}"), &[])
        .await
        .unwrap();
    pool.execute(&format!("CREATE TABLE {table} (id int8, v int8)"), &[])
        .await
        .unwrap();
    let insert = format!("INSERT INTO {table} (id, v) VALUES ($1, $2)");
    let mut tasks = Vec::new();
    for client in 0..4_i64 {
        let pool = Pool::new(driver.clone(), &config, &config.nodes()[0]);
        let insert = insert.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25_i64 {
                let mut c = pool.get().await.unwrap();
                let n = client * 1000 + i;
                let rows = c
                    .query_values("SELECT $1::int8 * 2 AS twice", &[Value::Int(n)])
                    .await
                    .unwrap();
                let (twice,): (i64,) = rows[0].to().unwrap();
                assert_eq!(twice, 2 * n, "a result of another client");
                c.execute_values(&insert, &[Value::Int(n), Value::Int(i)])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let count = format!("SELECT count(*)::int8 FROM {table}");
    assert_eq!(
        col::<_, i64>(&pool.query_one(&count, &[]).await.unwrap(), 0),
        100
    );
    // A schema change under statements that ran before.
    let select = format!("SELECT * FROM {table} WHERE id = 1");
    assert_eq!(pool.query(&select, &[]).await.unwrap().len(), 1);
    pool.execute(&format!("ALTER TABLE {table} ADD COLUMN w int"), &[])
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(pool.query(&select, &[]).await.unwrap().len(), 1);
    }
    // What may not run in a transaction block runs on its own.
    pool.execute(&format!("VACUUM {table}"), &[]).await.unwrap();
    pool.execute(&format!("DROP TABLE {table}"), &[])
        .await
        .unwrap();

    match mode {
        PoolMode::Transaction => {
            // Nothing was left on any server session: six open transactions hold all six
            // of PgBouncer's, and each has no prepared statement and the server's settings.
            // Settings PgBouncer does not track itself (it sets TimeZone and the like to
            // each client's own), as a direct session has them.
            let direct = {
                let url = shared_url().await.unwrap();
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                let rows = client.simple_query(SETTINGS).await.unwrap();
                match &rows[1] {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap().to_owned(),
                    _ => panic!("no settings"),
                }
            };
            let six = url("&pool_max_size=6");
            let held = Pool::new(driver.clone(), &six, &six.nodes()[0]);
            let mut conns = Vec::new();
            let mut pids = std::collections::HashSet::new();
            // Statements other than this check itself (which drivers may prepare).
            let left = "statement NOT LIKE '%pg_prepared_statements%'";
            for _ in 0..6 {
                let mut c = held.get().await.unwrap();
                c.simple_query("BEGIN").await.unwrap();
                let rows = c
                    .simple_query(
                        "SELECT (SELECT count(*) FROM pg_prepared_statements WHERE {LEFT}), \
                         ({SETTINGS}), pg_backend_pid(), \
                         (SELECT string_agg(name || ': ' || statement, ' | ') \
                          FROM pg_prepared_statements WHERE {LEFT})"
                            .replace("{LEFT}", left)
                            .replace("{SETTINGS}", SETTINGS)
                            .as_str(),
                    )
                    .await
                    .unwrap();
                assert_eq!(
                    rows[0].get(0),
                    Some("0"),
                    "prepared statements were left: {:?}",
                    rows[0].get(3)
                );
                assert_eq!(rows[0].get(1), Some(direct.as_str()), "a setting was left");
                pids.insert(rows[0].get(2).unwrap().to_owned());
                conns.push(c);
            }
            assert_eq!(pids.len(), 6, "every server session was looked at");
            for mut c in conns {
                c.simple_query("ROLLBACK").await.unwrap();
            }
            for sql in [
                "SET search_path = nowhere",
                "/* a comment */ set work_mem = '1MB'",
                "SELECT \"pg_advisory_lock\"(42)",
                "CREATE TEMP TABLE conformance_tmp (x int)",
                "LISTEN conformance_channel",
                "SELECT set_config('search_path', 'nowhere', false)",
            ] {
                let mut c = pool.get().await.unwrap();
                let e = err(c.execute(sql, &[]).await);
                assert_eq!(e.kind(), ErrorKind::Unsupported, "{sql}: {e}");
                assert!(e.to_string().contains("transaction pooler"), "{e}");
                let e = err(c.simple_query(sql).await);
                assert_eq!(e.kind(), ErrorKind::Unsupported, "{sql}: {e}");
            }
            // What ends with the transaction is fine.
            Box::pin(pool.transaction(&TxOptions::default(), |tx| async move {
                tx.execute("SET LOCAL work_mem = '1MB'", &[]).await?;
                tx.execute("SELECT pg_advisory_xact_lock(42)", &[]).await?;
                tx.execute(
                    "CREATE TEMP TABLE conformance_tmp (x int) ON COMMIT DROP",
                    &[],
                )
                .await
            }))
            .await
            .unwrap();
        }
        PoolMode::Session => {
            let one = url("&pool_max_size=1");
            let pool = Pool::new(driver, &one, &one.nodes()[0]);
            let mut c = pool.get().await.unwrap();
            c.execute("SET search_path = nowhere", &[]).await.unwrap();
            drop(c);
            let row = pool
                .query_one("SELECT current_setting('search_path')", &[])
                .await
                .unwrap();
            assert_eq!(
                col::<_, String>(&row, 0),
                "\"$user\", public",
                "reset on return"
            );
            // The reset kept the settings applied after connecting.
            let row = pool.query_one(setting, &[]).await.unwrap();
            assert_eq!(col::<_, String>(&row, 0), "1500ms", "after a reset");
        }
    }
}
