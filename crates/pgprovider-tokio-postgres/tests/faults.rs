//! The fault matrix: every public operation × every fault the test kit can make.
//!
//! Each test is one fault (its own throwaway server behind a fault proxy) and runs every
//! operation through the provider under it. Each cell asserts that the call ends within
//! its timeouts plus a small bound, that its outcome is one the fault allows (a success
//! where the library can mask the fault, otherwise the right error kind), and that after
//! the fault is healed the operation works again and the pool holds no broken connection
//! (every pooled connection answers at once) and no dirty one (the server shows no session
//! of ours in a transaction or still running a statement). Each cell prints one line
//! (`cell: fault × operation → outcome in ms`), which docs/RELIABILITY.md tabulates.

use futures_util::StreamExt;
use pgprovider::migrate::{Migrations, Migrator};
use pgprovider::provider::{Provider, TopologyOptions};
use pgprovider::tenant::{Strategy, Tenancy, TenancyOptions};
use pgprovider::{Config, ErrorKind, TxOptions};
use pgprovider_testkit::{FaultProxy, TestCluster};
use pgprovider_tokio_postgres::types::Type;
use pgprovider_tokio_postgres::{Event, ProviderExt, TokioPostgres};
use std::time::{Duration, Instant};

const APP: &str = "pgprovider-faults";
/// `connect_timeout` 1 s, `query_timeout` 2 s, `pool_acquire_timeout` 2 s and a failover
/// timeout of 2 s, and a cancel bounded by the connect timeout: the bound is 6 s.
const BOUND: Duration = Duration::from_secs(6);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Latency,
    Reset,
    Blackhole,
    Refuse,
    Crash,
    Restart,
    Pause,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Checkout,
    Query,
    Execute,
    Transaction,
    Batch,
    Copy,
    Stream,
    Listen,
    Tenant,
    Migration,
}

const OPS: [Op; 10] = [
    Op::Checkout,
    Op::Query,
    Op::Execute,
    Op::Transaction,
    Op::Batch,
    Op::Copy,
    Op::Stream,
    Op::Listen,
    Op::Tenant,
    Op::Migration,
];

struct Bench {
    cluster: TestCluster,
    proxy: FaultProxy,
    provider: Provider<TokioPostgres>,
    tenancy: Tenancy<TokioPostgres>,
    migrator: Migrator,
}

/// A server behind a fault proxy, and a provider through it whose monitor probes every
/// `monitor` (a long interval keeps its probes out of a reset test's way).
async fn bench(monitor: Duration) -> Bench {
    let cluster = TestCluster::start().await.unwrap();
    let proxy = FaultProxy::start(cluster.primary().addr().parse().unwrap())
        .await
        .unwrap();
    let config = Config::from_url(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres?application_name={APP}&connect_timeout=1&query_timeout=2s&pool_acquire_timeout=2s&pool_max_size=4",
        proxy.port()
    ))
    .unwrap();
    let provider = Provider::new(
        TokioPostgres::new(),
        &config,
        TopologyOptions::default()
            .with_monitor_interval(monitor)
            .with_failover_timeout(Duration::from_secs(2)),
    );
    provider
        .primary()
        .execute("CREATE TABLE fm (v int)", &[])
        .await
        .unwrap();
    let tenancy = Tenancy::new(provider.clone(), TenancyOptions::new(Strategy::Schema));
    tenancy.create_tenant("acme", None).await.unwrap();
    tenancy
        .tenant("acme")
        .unwrap()
        .execute("CREATE TABLE items (v int)", &[])
        .await
        .unwrap();
    let migrator = Migrator::new(
        Migrations::from_files([("1_fm.sql", "CREATE TABLE fm_migrated (v int)")]).unwrap(),
    );
    Bench {
        cluster,
        proxy,
        provider,
        tenancy,
        migrator,
    }
}

/// Runs `op` once through the provider.
async fn run(b: &Bench, op: Op) -> pgprovider::Result<()> {
    let p = &b.provider;
    match op {
        Op::Checkout => p.primary().conn().await.map(drop),
        Op::Query => p
            .primary()
            .query("SELECT count(*) FROM fm", &[])
            .await
            .map(drop),
        Op::Execute => p
            .primary()
            .execute("INSERT INTO fm VALUES (1)", &[])
            .await
            .map(drop),
        Op::Transaction => p
            .primary()
            .transaction(&TxOptions::new(), |tx| async move {
                tx.execute("INSERT INTO fm VALUES (2)", &[]).await?;
                tx.query("SELECT count(*) FROM fm", &[]).await
            })
            .await
            .map(drop),
        Op::Batch => p
            .batch(&[
                ("INSERT INTO fm VALUES (3)", &[]),
                ("INSERT INTO fm VALUES (4)", &[]),
            ])
            .await
            .map(drop),
        Op::Copy => {
            let mut c = p.primary().conn().await?;
            let rows = (0..100_i32).map(|i| (i,));
            c.copy_in("COPY fm (v) FROM STDIN BINARY", &[Type::INT4], rows)
                .await
                .map(drop)
        }
        Op::Stream => {
            let mut c = p.primary().conn().await?;
            let mut s = c
                .query_stream("SELECT generate_series(1, 2000)", &[])
                .await?;
            while let Some(row) = s.next().await {
                row?;
            }
            Ok(())
        }
        Op::Listen => {
            let listener = p.listen().await?;
            listener.subscribe("fm_channel").await.map(drop)
        }
        Op::Tenant => b
            .tenancy
            .tenant("acme")?
            .execute("INSERT INTO items VALUES (1)", &[])
            .await
            .map(drop),
        Op::Migration => {
            let mut c = p.primary().conn().await?;
            b.migrator.up(&mut *c, None).await.map(drop)
        }
    }
}

/// Runs `op` under `fault`, bounded by [`BOUND`]: its outcome and how long it took. A
/// reset hits the call mid-way (while its request is held by latency in the proxy), or
/// right after it when it sent nothing; the other faults are made before the call and
/// healed after it.
async fn under(b: &Bench, fault: Fault, op: Op) -> (pgprovider::Result<()>, Duration) {
    let start = Instant::now();
    let r = if fault == Fault::Reset {
        // Nothing else may be talking through the proxy: the pool finishes resetting the
        // connections of the healthy run first (its stats show no connection in a reset).
        let pool = b.provider.pool(&b.provider.config().nodes()[0]).unwrap();
        let quiet = Instant::now() + Duration::from_secs(5);
        while pool.stats().idle != pool.stats().size && Instant::now() < quiet {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        b.proxy.set_latency(Duration::from_millis(200));
        let call = run(b, op);
        tokio::pin!(call);
        let r = tokio::select! {
            r = &mut call => Some(r),
            () = b.proxy.wait_held() => None,
        };
        b.proxy.reset_all();
        b.proxy.heal();
        match r {
            Some(r) => Some(r),
            None => tokio::time::timeout(BOUND, call).await.ok(),
        }
    } else {
        let needs_heal = inject(b, fault).await;
        let r = tokio::time::timeout(BOUND, run(b, op)).await.ok();
        if needs_heal {
            heal(b, fault).await;
        }
        r
    };
    let took = start.elapsed();
    // The fault has landed everywhere before anything is checked.
    b.proxy.settled().await;
    let r = r.unwrap_or_else(|| panic!("{fault:?} × {op:?}: still running after {BOUND:?}"));
    (r, took)
}

/// Makes the fault; `true` when it must be healed after the call.
async fn inject(b: &Bench, fault: Fault) -> bool {
    match fault {
        Fault::Latency => b.proxy.set_latency(Duration::from_millis(100)),
        Fault::Reset => unreachable!("made mid-call by `under`"),
        Fault::Blackhole => b.proxy.blackhole(),
        Fault::Refuse => {
            // Refused connects bite only when a new connection is needed: the open ones
            // are reset first.
            b.proxy.reset_all();
            b.proxy.settled().await;
            b.proxy.refuse();
        }
        Fault::Crash => b.cluster.primary().crash().unwrap(),
        Fault::Restart => b.cluster.primary().restart().await.unwrap(),
        Fault::Pause => b.cluster.primary().pause().unwrap(),
    }
    !matches!(fault, Fault::Reset | Fault::Restart)
}

async fn heal(b: &Bench, fault: Fault) {
    match fault {
        Fault::Crash => b.cluster.primary().start().await.unwrap(),
        Fault::Pause => b.cluster.primary().resume().unwrap(),
        _ => b.proxy.heal(),
    }
}

/// What each fault may end a call with: a success where the library can mask it, else
/// these error kinds.
fn allowed(fault: Fault, op: Op, r: &pgprovider::Result<()>) -> bool {
    use ErrorKind::*;
    let Err(e) = r else {
        // Latency, resets, restarts and refused connects (with connections to spare or a
        // retry) can be masked; a crashed, blackholed or paused server cannot, except
        // by a checkout that sends nothing.
        return !matches!(fault, Fault::Crash | Fault::Blackhole | Fault::Pause)
            || op == Op::Checkout;
    };
    let k = e.kind();
    match fault {
        Fault::Latency => false,
        Fault::Reset | Fault::Restart => {
            matches!(k, ConnectionLost | OutcomeUnknown | Connect) || e.is_connection_lost()
        }
        Fault::Refuse | Fault::Crash => {
            matches!(
                k,
                Connect | ConnectionLost | OutcomeUnknown | PoolTimeout | Timeout
            ) || e.is_connection_lost()
        }
        Fault::Blackhole | Fault::Pause => {
            matches!(
                k,
                Timeout | PoolTimeout | Connect | ConnectionLost | OutcomeUnknown
            )
        }
    }
}

/// Sessions of ours the server shows in a transaction or still running a statement.
async fn dirty_sessions(b: &Bench) -> i64 {
    let q = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{APP}' \
         AND state <> 'idle' AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    );
    b.cluster
        .primary()
        .query_one(&q)
        .await
        .unwrap()
        .parse()
        .unwrap()
}

async fn matrix(fault: Fault) {
    // The reset test waits for the call's own request to be in flight: no monitor
    // probes through the proxy meanwhile.
    let monitor = if fault == Fault::Reset {
        Duration::from_secs(3600)
    } else {
        Duration::from_millis(200)
    };
    let b = bench(monitor).await;
    let mut lines = Vec::new();
    for op in OPS {
        // Healthy first: the cell starts from a working pool.
        run(&b, op)
            .await
            .unwrap_or_else(|e| panic!("{op:?} before {fault:?}: {e}"));
        let (r, took) = under(&b, fault, op).await;
        let outcome = match &r {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("{:?}", e.kind()),
        };
        assert!(
            allowed(fault, op, &r),
            "{fault:?} × {op:?}: {outcome} is not an outcome this fault allows: {r:?}"
        );
        // A reset mid-statement loses the reply: the single statements that no layer may
        // run again must say so (a test that never hit a statement mid-way fails here).
        if fault == Fault::Reset
            && matches!(
                op,
                Op::Query
                    | Op::Execute
                    | Op::Batch
                    | Op::Tenant
                    | Op::Copy
                    | Op::Stream
                    | Op::Migration
            )
        {
            assert!(
                r.is_err(),
                "{fault:?} × {op:?}: the reset missed the statement"
            );
        }
        // Healed, the operation works again (the provider may need a moment to see the
        // server back).
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match run(&b, op).await {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{fault:?} × {op:?}: not working again after the heal: {e}"),
            }
        }
        // No broken connection kept: every pooled one answers. A reset the driver has not
        // read yet (the RST is still on its way) may fail one first use; that connection
        // is then discarded, so a second pass must find every connection sound.
        let pool = b.provider.pool(&b.provider.config().nodes()[0]).unwrap();
        let mut failures = Vec::new();
        for pass in 0..2 {
            failures.clear();
            let mut held = Vec::new();
            for _ in 0..pool.stats().idle {
                let mut c = pool.get().await.unwrap();
                if let Err(e) = pgprovider::Queries::execute(&mut *c, "SELECT 1", &[]).await {
                    assert!(e.is_connection_lost(), "{fault:?} × {op:?}: {e}");
                    failures.push(format!("pass {pass}: {e}"));
                }
                held.push(c);
            }
            drop(held);
            if failures.is_empty() {
                break;
            }
        }
        assert!(
            failures.is_empty(),
            "{fault:?} × {op:?}: the pool kept broken connections: {failures:?}; {:?}",
            pool.stats()
        );
        // No dirty one: nothing of ours left in a transaction or mid-statement.
        let deadline = Instant::now() + Duration::from_secs(5);
        while dirty_sessions(&b).await > 0 {
            assert!(
                Instant::now() < deadline,
                "{fault:?} × {op:?}: sessions left in a transaction or a statement"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        lines.push(format!(
            "cell: {fault:?} × {op:?} → {outcome} in {} ms",
            took.as_millis()
        ));
    }
    // The listener's sessions end with it; one subscription after the heal still hears.
    let listener = b.provider.listen().await.unwrap();
    let mut sub = listener.subscribe("fm_after").await.unwrap();
    b.provider
        .primary()
        .execute("NOTIFY fm_after, 'back'", &[])
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Event::Notification(n)) = sub.next().await {
                return n;
            }
        }
    })
    .await
    .expect("a notification after the heal");
    assert_eq!(got.payload, "back");
    for l in lines {
        println!("{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_latency() {
    matrix(Fault::Latency).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_reset() {
    matrix(Fault::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole() {
    matrix(Fault::Blackhole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connects() {
    matrix(Fault::Refuse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_crash() {
    matrix(Fault::Crash).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart() {
    matrix(Fault::Restart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_server() {
    matrix(Fault::Pause).await;
}
