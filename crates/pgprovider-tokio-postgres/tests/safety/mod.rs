//! Safety monitoring on a real server: a lock chain, sessions idle in a transaction, a real
//! deadlock, policies that touch only our sessions, and the client-side reports of a
//! transaction held too long or dropped. (Prepared transactions, slots and
//! `pgprovider inspect` run on a throwaway cluster in the CLI's tests.)

use super::{Log, Recorder, Sink, common};
use pgprovider::observe::{AuditLog, Hooks, fingerprint};
use pgprovider::provider::{Provider, TopologyOptions};
use pgprovider::safety::{Action, Findings, Policy, SafetyOptions, act, probe};
use pgprovider::{Config, Connection, Driver, Pool, Queries, TxOptions};
use pgprovider_tokio_postgres::TokioPostgres;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// A session of its own on the shared server, as application `app`, and its pid.
async fn session(app: &str) -> (tokio_postgres::Client, i32) {
    let u = pgprovider_testkit::shared_url().await.unwrap();
    let sep = if u.contains('?') { '&' } else { '?' };
    let (client, conn) = tokio_postgres::connect(
        &format!("{u}{sep}application_name={app}"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    (client, pid)
}

/// A provider on `config` with `hooks` and a safety monitor, once it knows its primary.
async fn monitored(
    config: &Config,
    hooks: Hooks,
    safety: SafetyOptions,
) -> Provider<TokioPostgres> {
    let provider = Provider::builder(TokioPostgres::new(), config)
        .topology(TopologyOptions::default().with_monitor_interval(Duration::from_millis(100)))
        .hooks(hooks)
        .safety(safety)
        .build();
    provider
        .monitor()
        .wait_for_primary(Duration::from_secs(20))
        .await
        .unwrap();
    provider
}

/// A round of `provider`'s safety monitor, run now.
async fn round(provider: &Provider<TokioPostgres>) -> Vec<Findings> {
    provider
        .safety()
        .unwrap()
        .probe_now(Duration::from_secs(20))
        .await
        .unwrap()
}

/// The probe's own connection to the shared server.
async fn prober() -> (<TokioPostgres as Driver>::Connection, String) {
    let c = common::config("").await;
    let node = c.nodes()[0].clone();
    let conn = TokioPostgres::new()
        .connect(&c.connect_params(&node).await.unwrap())
        .await
        .unwrap();
    (conn, node.to_string())
}

/// Probes until `done` holds (the server needs a moment to show a wait), within 15 s.
async fn probe_until(
    conn: &mut <TokioPostgres as Driver>::Connection,
    node: &str,
    opts: &SafetyOptions,
    app: &str,
    done: impl Fn(&Findings) -> bool,
) -> Findings {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let f = probe(conn, node, opts, Some(app)).await.unwrap();
        if done(&f) {
            return f;
        }
        assert!(Instant::now() < deadline, "never seen: {f:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_sees_a_lock_chain_and_policies_end_only_our_blocker() {
    let pid = std::process::id();
    let (table, ours_app) = (format!("safety_chain_{pid}"), format!("safety-ours-{pid}"));
    let (setup, _) = session("safety-setup").await;
    setup
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY, n int); \
             INSERT INTO {table} VALUES (1, 0)"
        ))
        .await
        .unwrap();
    let (holder, holder_pid) = session(&ours_app).await;
    holder
        .batch_execute(&format!("BEGIN; UPDATE {table} SET n = n + 1 WHERE id = 1"))
        .await
        .unwrap();
    let (waiter, waiter_pid) = session("safety-foreign").await;
    let blocked_sql = format!("UPDATE {table} SET n = n + 10 WHERE id = 1");
    let sql = blocked_sql.clone();
    let waiting = tokio::spawn(async move { waiter.execute(&sql, &[]).await });

    let (mut conn, node) = prober().await;
    let f = probe_until(
        &mut conn,
        &node,
        &SafetyOptions::everything(),
        &ours_app,
        |f| f.blocking.iter().any(|b| b.blocked_pid == waiter_pid),
    )
    .await;
    let b = f
        .blocking
        .iter()
        .find(|b| b.blocked_pid == waiter_pid)
        .unwrap();
    assert_eq!(b.blocking_pid, holder_pid, "{b:#?}");
    assert_eq!(
        (b.lock_type.as_str(), b.mode.as_str()),
        ("transactionid", "ShareLock")
    );
    assert!(
        !b.blocked.ours && b.blocking.as_ref().unwrap().ours,
        "{b:#?}"
    );
    assert_eq!(
        b.blocked.fingerprint.as_deref(),
        Some(fingerprint(&blocked_sql).as_str())
    );
    assert_eq!(b.blocked.wait_event_type.as_deref(), Some("Lock"));
    let has = |list: &[pgprovider::safety::Session], pid| list.iter().any(|s| s.pid == pid);
    assert!(has(&f.idle_in_transaction, holder_pid), "{f:#?}");
    assert!(!has(&f.idle_in_transaction, waiter_pid), "{f:#?}");
    assert!(has(&f.long_transactions, holder_pid) && has(&f.long_transactions, waiter_pid));
    assert!(has(&f.long_statements, waiter_pid), "{f:#?}");
    assert!(f.connections.ours == 1 && f.connections.used >= 3, "{f:#?}");
    assert!(f.problems().iter().any(|l| l.contains("blocked on locks")));
    let json = f.to_json();
    assert!(
        json.contains(&format!(
            r#""blocked_pid":{waiter_pid},"blocking_pid":{holder_pid},"wait_ms":"#
        )),
        "{json}"
    );
    assert!(f.connections_over && f.wraparound.over, "{f:#?}");
    // Default thresholds: a wait, a transaction and an idle spell of a moment are no
    // finding; nor are 3 % of the connection slots or a young cluster's transaction IDs.
    let calm = probe(&mut conn, &node, &SafetyOptions::new(), Some(&ours_app))
        .await
        .unwrap();
    assert!(
        calm.blocking.iter().all(|b| b.blocked_pid != waiter_pid),
        "{calm:#?}"
    );
    assert!(!has(&calm.idle_in_transaction, holder_pid), "{calm:#?}");
    assert!(!has(&calm.long_transactions, holder_pid), "{calm:#?}");
    assert!(!has(&calm.long_statements, waiter_pid), "{calm:#?}");
    assert!(!calm.connections_over && !calm.wraparound.over, "{calm:#?}");

    let end = Policy::blocking(Duration::ZERO, Action::Terminate);
    // Dry run: reported, not done.
    let dry = SafetyOptions::new().with_policy(end.clone().with_dry_run(true));
    let acts = act(&mut conn, &node, &dry, Some(&ours_app)).await.unwrap();
    let a = acts
        .iter()
        .find(|a| a.pid == holder_pid)
        .expect("the blocker");
    assert!(a.dry_run && !a.done && a.ours, "{acts:?}");
    // Another application's policy leaves our blocker alone (it is foreign to it).
    let theirs = SafetyOptions::new().with_policy(end.clone());
    let acts = act(&mut conn, &node, &theirs, Some("safety-nobody"))
        .await
        .unwrap();
    assert!(acts.iter().all(|a| a.pid != holder_pid), "{acts:?}");
    holder.simple_query("SELECT 1").await.expect("still alive");
    // Ours: ended, and the waiter goes on.
    let acts = act(&mut conn, &node, &theirs, Some(&ours_app))
        .await
        .unwrap();
    let a = acts
        .iter()
        .find(|a| a.pid == holder_pid)
        .expect("the blocker");
    assert!(a.done && !a.dry_run && a.ours, "{acts:?}");
    assert_eq!(waiting.await.unwrap().unwrap(), 1);
    assert!(holder.simple_query("SELECT 1").await.is_err());
    setup
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_in_transaction_policy_ends_ours_and_leaves_foreign_sessions_alone() {
    let pid = std::process::id();
    let ours_app = format!("safety-idle-{pid}");
    let (ours, ours_pid) = session(&ours_app).await;
    let (foreign, foreign_pid) = session("safety-psql").await;
    for c in [&ours, &foreign] {
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    }
    let (mut conn, node) = prober().await;
    let opts = SafetyOptions::new().with_idle_in_transaction(Duration::ZERO);
    let f = probe_until(&mut conn, &node, &opts, &ours_app, |f| {
        let ids: Vec<i32> = f.idle_in_transaction.iter().map(|s| s.pid).collect();
        ids.contains(&ours_pid) && ids.contains(&foreign_pid)
    })
    .await;
    let mine = f
        .idle_in_transaction
        .iter()
        .find(|s| s.pid == ours_pid)
        .unwrap();
    assert!(mine.ours && mine.application == ours_app, "{mine:#?}");
    assert!(
        !f.idle_in_transaction
            .iter()
            .find(|s| s.pid == foreign_pid)
            .unwrap()
            .ours
    );

    // With foreign sessions included, but only as a dry run (the shared server has other
    // tests' sessions).
    let policy = Policy::idle_in_transaction(Duration::ZERO, Action::Terminate);
    let everyone =
        SafetyOptions::new().with_policy(policy.clone().with_foreign(true).with_dry_run(true));
    let acts = act(&mut conn, &node, &everyone, Some(&ours_app))
        .await
        .unwrap();
    let theirs = acts
        .iter()
        .find(|a| a.pid == foreign_pid)
        .expect("seen, not touched");
    assert!(!theirs.ours && !theirs.done && theirs.dry_run, "{acts:?}");

    let only_ours = SafetyOptions::new().with_policy(policy);
    let acts = act(&mut conn, &node, &only_ours, Some(&ours_app))
        .await
        .unwrap();
    assert_eq!(
        acts.iter().map(|a| (a.pid, a.done)).collect::<Vec<_>>(),
        [(ours_pid, true)]
    );
    assert!(
        ours.simple_query("SELECT 1").await.is_err(),
        "ours was ended"
    );
    foreign
        .simple_query("SELECT 1")
        .await
        .expect("foreign left alone");
    foreign.batch_execute("ROLLBACK").await.unwrap();
    // A provider without application_name has no sessions of its own: nothing is ours.
    let acts = act(&mut conn, &node, &only_ours_again(), None)
        .await
        .unwrap();
    assert!(acts.is_empty(), "{acts:?}");
}

fn only_ours_again() -> SafetyOptions {
    SafetyOptions::new().with_policy(Policy::idle_in_transaction(
        Duration::ZERO,
        Action::Terminate,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_deadlock_reaches_the_monitor_the_health_report_hooks_audit_and_metrics() {
    let metrics = super::prometheus();
    let pid = std::process::id();
    let (table, app) = (format!("safety_deadlock_{pid}"), format!("safety-dl-{pid}"));
    let config = common::config(&format!("&application_name={app}")).await;
    let log = Log::default();
    let audit = Sink::default();
    let hooks = Hooks::builder()
        .hook(
            0,
            Recorder {
                name: "rec",
                log: log.clone(),
            },
        )
        .hook(1, AuditLog::new(audit.clone(), config.user()))
        .build();
    // Rounds on demand only (probe_now), so each assertion sees the round it asked for.
    let provider = monitored(
        &config,
        hooks,
        SafetyOptions::new().with_interval(Duration::from_secs(3600)),
    )
    .await;
    let safety = provider.safety().expect("asked for");
    provider
        .execute(&format!("DROP TABLE IF EXISTS {table}"), &[])
        .await
        .unwrap();
    provider
        .execute(
            &format!("CREATE TABLE {table} (id int PRIMARY KEY, n int)"),
            &[],
        )
        .await
        .unwrap();
    provider
        .execute(&format!("INSERT INTO {table} VALUES (1, 0), (2, 0)"), &[])
        .await
        .unwrap();
    let before = round(&provider).await;
    let server_before = before[0].deadlocks.server_total;
    assert!(before[0].is_clear() || !before[0].kinds().contains(&"deadlock"));

    // Two transactions taking the rows in opposite orders: the server ends one with 40P01,
    // and the provider runs it again.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let run = |first: i32, second: i32| {
        let (p, b, t) = (provider.clone(), barrier.clone(), table.clone());
        let waited = Arc::new(AtomicBool::new(false));
        tokio::spawn(async move {
            p.transaction(&TxOptions::new(), |tx| {
                let (b, t, waited) = (b.clone(), t.clone(), waited.clone());
                async move {
                    tx.execute(
                        &format!("UPDATE {t} SET n = n + 1 WHERE id = $1"),
                        &[&first],
                    )
                    .await?;
                    if !waited.swap(true, Relaxed) {
                        b.wait().await;
                    }
                    tx.execute(
                        &format!("UPDATE {t} SET n = n + 1 WHERE id = $1"),
                        &[&second],
                    )
                    .await
                }
            })
            .await
        })
    };
    let (a, b) = (run(1, 2), run(2, 1));
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();

    // The server's counter is flushed a moment after the transaction ends; ours was
    // counted as the error happened, so the first round already has it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ours_new = 0;
    let found = loop {
        let f = round(&provider).await;
        ours_new += f[0].deadlocks.ours_new;
        if f[0].deadlocks.server_total > server_before {
            break f;
        }
        assert!(Instant::now() < deadline, "{f:#?}");
    };
    let d = found[0].deadlocks;
    assert_eq!((d.ours_total, ours_new), (1, 1), "{d:?}");
    assert!(d.server_new >= 1, "{d:?}");
    assert!(found[0].kinds().contains(&"deadlock"), "{found:#?}");
    let health = provider.health();
    assert!(
        health.safety.iter().any(|l| l.contains("deadlock")),
        "{health:#?}"
    );
    assert_eq!(health.status, pgprovider::health::HealthStatus::Degraded);
    assert!(health.to_json().contains("deadlock"));
    assert!(
        log.0
            .lock()
            .unwrap()
            .iter()
            .any(|e| e == "after:rec:safety.deadlock:ok"),
        "{:?}",
        log.0.lock().unwrap()
    );
    let lines = String::from_utf8(audit.0.lock().unwrap().clone()).unwrap();
    assert!(
        lines.contains(r#""operation":"safety.deadlock""#),
        "{lines}"
    );
    let body = metrics.render();
    let node = config.nodes()[0].to_string();
    assert!(
        body.contains(&format!(
            "pgprovider_deadlocks_total{{node=\"{node}\",source=\"ours\"}} 1"
        )),
        "{body}"
    );
    // (The findings gauge is not read here: other tests' monitors on this node set it.)
    assert!(body.contains("pgprovider_safety_probe_seconds"), "{body}");
    // The next round finds nothing new: the report is ok again.
    let after = round(&provider).await;
    assert_eq!(
        after[0].deadlocks.server_new + after[0].deadlocks.ours_new,
        0
    );
    assert!(safety.rounds() >= 3);
    provider
        .execute(&format!("DROP TABLE {table}"), &[])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_held_too_long_or_dropped_is_reported_with_where_it_began() {
    let c: Config = common::config("&pool_leak_detection_threshold=1s&pool_max_size=1").await;
    let (sent, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let pool = Pool::builder(TokioPostgres::new(), &c, &c.nodes()[0])
        .on_leak(move |r| {
            let _ = sent.send(r.clone());
        })
        .build();
    let line = line!() + 1;
    let tx = pool.begin(&TxOptions::new()).await.unwrap();
    tx.execute("SELECT 1", &[]).await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), reports.recv())
        .await
        .unwrap()
        .unwrap();
    let begun = report.transaction.expect("held in a transaction");
    assert!(begun.file().ends_with("safety/mod.rs"), "{begun}");
    assert_eq!(begun.line(), line);
    assert_eq!(pool.stats().abandoned_transactions, 0);
    drop(tx);
    assert_eq!(pool.stats().abandoned_transactions, 1);
    // The transaction was rolled back: the connection comes back outside any transaction.
    let mut conn = pool.get().await.unwrap();
    let e = conn.execute("SAVEPOINT s", &[]).await.unwrap_err();
    assert!(e.message().contains("transaction block"), "{e}");
    conn.simple_query("SELECT 1").await.unwrap();
    // A transaction ended properly is no leak of that kind.
    drop(conn);
    let tx = pool.begin(&TxOptions::new()).await.unwrap();
    tx.commit().await.unwrap();
    drop(tx);
    assert_eq!(pool.stats().abandoned_transactions, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_runs_its_policy_on_our_idle_transaction_and_says_so() {
    let metrics = super::prometheus();
    let pid = std::process::id();
    let app = format!("safety-policy-{pid}");
    let config = common::config(&format!("&application_name={app}")).await;
    let log = Log::default();
    let hooks = Hooks::builder()
        .hook(
            0,
            Recorder {
                name: "rec",
                log: log.clone(),
            },
        )
        .build();
    let provider = monitored(
        &config,
        hooks,
        SafetyOptions::new()
            .with_interval(Duration::from_secs(3600))
            .with_policy(Policy::idle_in_transaction(
                Duration::from_millis(200),
                Action::Terminate,
            )),
    )
    .await;
    // A foreign session idle in a transaction: seen, never touched.
    let (foreign, foreign_pid) = session("safety-bystander").await;
    foreign.batch_execute("BEGIN; SELECT 1").await.unwrap();
    // Ours: a transaction begun through the provider's pool and left idle.
    let node = config.nodes()[0].clone();
    let tx = provider
        .pool(&node)
        .unwrap()
        .begin(&TxOptions::new())
        .await
        .unwrap();
    let ours_pid: i32 = tx
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    // Every round's actions, until ours is acted on.
    let mut seen = Vec::new();
    let acted = loop {
        let f = round(&provider).await;
        seen.extend(f[0].actions.iter().cloned());
        if let Some(a) = seen.iter().find(|a| a.pid == ours_pid) {
            break a.clone();
        }
        assert!(Instant::now() < deadline, "{f:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(acted.done && acted.ours && !acted.dry_run, "{acted:?}");
    assert!(seen.iter().all(|a| a.pid != foreign_pid), "{seen:#?}");
    foreign
        .simple_query("SELECT 1")
        .await
        .expect("the bystander is alive");
    foreign.batch_execute("ROLLBACK").await.unwrap();
    // Our transaction was ended on the server: its next statement fails.
    assert!(tx.execute("SELECT 1", &[]).await.is_err());
    drop(tx);
    assert!(
        log.0
            .lock()
            .unwrap()
            .iter()
            .any(|e| e == "after:rec:safety.terminate:ok"),
        "{:?}",
        log.0.lock().unwrap()
    );
    let body = metrics.render();
    let line = format!(
        "pgprovider_safety_actions_total{{node=\"{node}\",action=\"terminate\",reason=\"idle_in_transaction\",mode=\"done\"}} "
    );
    assert!(body.lines().any(|l| l.starts_with(&line)), "{body}");
    provider.query_one("SELECT 1", &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_probes_standbys_when_asked() {
    let (cluster, config) = common::two_nodes(false, "&application_name=safety-standbys").await;
    for standbys in [false, true] {
        let provider = monitored(
            &config,
            Hooks::default(),
            SafetyOptions::new()
                .with_interval(Duration::from_secs(3600))
                .with_standbys(standbys),
        )
        .await;
        // Both roles known first, so the round has every node to probe.
        let deadline = Instant::now() + Duration::from_secs(20);
        while provider
            .monitor()
            .statuses()
            .iter()
            .any(|s| s.role == pgprovider::topology::Role::Unknown)
        {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let f = round(&provider).await;
        let nodes: Vec<&str> = f.iter().map(|f| f.node.as_str()).collect();
        let mut want = vec![cluster.primary().addr()];
        if standbys {
            want.push(cluster.standby(0).addr());
        }
        assert_eq!(nodes, want);
        assert!(f.iter().all(Findings::is_clear), "{f:#?}");
        provider.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sessions_are_joined_to_the_checkout_transaction_and_tenant_behind_them() {
    // No application_name: the join with the pool is what makes the session ours.
    let config = common::config("&application_name=").await;
    let provider = monitored(
        &config,
        Hooks::default(),
        SafetyOptions::new()
            .with_interval(Duration::from_secs(3600))
            .with_idle_in_transaction(Duration::ZERO)
            .with_policy(Policy::idle_in_transaction(
                Duration::ZERO,
                Action::Terminate,
            )),
    )
    .await;
    let pool = provider.pool(&config.nodes()[0]).unwrap();
    let line = line!() + 2;
    let tx =
        pgprovider::observe::with_tenant("acme", async { pool.begin(&TxOptions::new()).await })
            .await
            .unwrap();
    let pid: i32 = tx
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let f = round(&provider).await;
    let s = f[0]
        .idle_in_transaction
        .iter()
        .find(|s| s.pid == pid)
        .unwrap_or_else(|| panic!("{f:#?}"));
    assert!(s.ours, "{s:#?}");
    let c = s.checkout.as_ref().expect("joined to its checkout");
    let begun = c.transaction.as_deref().unwrap();
    assert!(
        begun.contains("safety/mod.rs") && begun.contains(&format!(":{line}:")),
        "{c:#?}"
    );
    assert_eq!(c.tenant.as_deref(), Some("acme"));
    assert!(f[0].to_json().contains(r#""tenant":"acme""#));
    // Policies go by application name only (a joined pid may be stale): nothing acted.
    assert!(f[0].actions.iter().all(|a| a.pid != pid), "{f:#?}");
    tx.rollback().await.unwrap();
    // Sessions of other clients are not joined to anything.
    let (other, other_pid) = session("safety-other").await;
    other.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let f = round(&provider).await;
    let o = f[0]
        .idle_in_transaction
        .iter()
        .find(|s| s.pid == other_pid)
        .unwrap();
    assert!(!o.ours && o.checkout.is_none(), "{o:#?}");
    assert!(f[0].actions.iter().all(|a| a.pid != other_pid), "{f:#?}");
    other.simple_query("SELECT 1").await.expect("left alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_transactions_and_slots_reach_health_and_metrics_and_a_lost_node_is_said() {
    let metrics = super::prometheus();
    let cluster = pgprovider_testkit::TestCluster::builder()
        .setting("max_prepared_transactions", "2")
        .start()
        .await
        .unwrap();
    let node = cluster.primary();
    let admin = node.connect().await.unwrap();
    // One statement per call: PREPARE TRANSACTION takes the implicit transaction along.
    for sql in [
        "CREATE TABLE t (id int)",
        "BEGIN",
        "INSERT INTO t VALUES (1)",
        "PREPARE TRANSACTION 'orphan'",
        "SELECT pg_create_physical_replication_slot('idle_slot', true)",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    let config = Config::from_url(&format!(
        "{}?connect_timeout=1&application_name=safety-cluster",
        node.url()
    ))
    .unwrap();
    let provider = monitored(
        &config,
        Hooks::default(),
        SafetyOptions::new()
            .with_interval(Duration::from_secs(3600))
            .with_prepared_transaction(Duration::ZERO),
    )
    .await;
    let safety = provider.safety().unwrap();
    let f = round(&provider).await;
    assert_eq!(f[0].prepared_transactions[0].gid, "orphan", "{f:#?}");
    let slot = &f[0].replication_slots[0];
    assert!(
        slot.name == "idle_slot" && !slot.active && slot.kind == "physical",
        "{slot:?}"
    );
    let health = provider.health();
    assert_eq!(health.status, pgprovider::health::HealthStatus::Degraded);
    assert!(
        health
            .safety
            .iter()
            .any(|l| l.contains("1 orphaned prepared transaction")),
        "{health:#?}"
    );
    assert!(
        health
            .safety
            .iter()
            .any(|l| l.contains("1 replication slot")),
        "{health:#?}"
    );
    let body = metrics.render();
    let addr = node.addr();
    for kind in ["prepared_transaction", "replication_slot"] {
        let line = format!("pgprovider_safety_findings{{node=\"{addr}\",kind=\"{kind}\"}} 1");
        assert!(body.lines().any(|l| l == line), "{line}\n{body}");
    }
    // The node crashes: the monitor says it could not probe (or that no primary is left),
    // and stays ready to probe again.
    drop(admin);
    node.crash().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = safety.probe_now(Duration::from_secs(20)).await;
        let p = safety.problems();
        if p.iter()
            .any(|l| l.contains("the safety probe failed") || l.contains("no primary known"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "{p:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    provider.close().await;
    // Closed: no round runs any more.
    assert!(safety.probe_now(Duration::from_millis(500)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_match_names_with_quotes_and_backslashes_exactly_whatever_the_string_mode() {
    let pid = std::process::id();
    // A name with a quote and a backslash, and a near miss without the backslash.
    let app = format!("o'brien\\{pid}");
    let near_app = format!("o'brien{pid}");
    let quoted = |name: &str| format!("E'{}'", name.replace('\\', "\\\\").replace('\'', "\\'"));
    let (ours, ours_pid) = session("safety-quote").await;
    let (near, near_pid) = session("safety-near").await;
    for (c, name) in [(&ours, &app), (&near, &near_app)] {
        c.batch_execute(&format!("SET application_name = {}", quoted(name)))
            .await
            .unwrap();
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    }
    let shown: String = ours
        .query_one(
            "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(shown, app, "the server keeps the name as set");
    let (mut conn, node) = prober().await;
    // The policy's own connection reads backslashes in '' literals as escapes.
    conn.simple_query("SET standard_conforming_strings = off")
        .await
        .unwrap();
    let opts = only_ours_again();
    let acts = act(&mut conn, &node, &opts, Some(&app)).await.unwrap();
    assert_eq!(
        acts.iter().map(|a| (a.pid, a.done)).collect::<Vec<_>>(),
        [(ours_pid, true)],
        "{acts:?}"
    );
    assert!(ours.simple_query("SELECT 1").await.is_err());
    near.simple_query("SELECT 1")
        .await
        .expect("the near miss is left alone");
    assert_ne!(near_pid, ours_pid);
    near.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_probes_at_its_interval() {
    let config = common::config("&application_name=safety-interval").await;
    let every = |d| SafetyOptions::new().with_interval(d);
    let fast = monitored(&config, Hooks::default(), every(Duration::from_millis(100))).await;
    let slow = monitored(&config, Hooks::default(), every(Duration::from_secs(3600))).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while fast.safety().unwrap().rounds() < 5 {
        assert!(
            Instant::now() < deadline,
            "{}",
            fast.safety().unwrap().rounds()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The slow one has had its first round (at start) and no other.
    assert!(slow.safety().unwrap().rounds() <= 1);
    assert_eq!(
        slow.safety().unwrap().options().interval,
        Duration::from_secs(3600)
    );
}
