//! Multi-tenancy against the shared server: each strategy keeps tenants' data apart, the
//! tenant's own SQL cannot leave its scope, limits hold under load, and tenants can be
//! dropped and created again.

use pgprovider::ErrorKind;
use pgprovider::migrate::{Migrations, Migrator};
use pgprovider::provider::{Provider, TopologyOptions};
use pgprovider::tenant::{Strategy, Tenancy, TenancyOptions, TenantLimits};
use pgprovider_tokio_postgres::TokioPostgres;
use std::time::Duration;

mod common;

fn migrator() -> Migrator {
    Migrator::new(
        Migrations::from_files([(
            "1_items.sql",
            "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL);",
        )])
        .unwrap(),
    )
}

/// A unique tenant name for this run.
fn name(base: &str) -> String {
    format!("{base}_{}", std::process::id())
}

async fn tenancy(options: TenancyOptions) -> Tenancy<TokioPostgres> {
    let config = common::config("&application_name=pgprovider-tenancy&pool_max_size=4").await;
    let provider = Provider::new(
        TokioPostgres::new(),
        &config,
        TopologyOptions::default().with_monitor_interval(Duration::from_millis(200)),
    );
    provider
        .monitor()
        .wait_for_primary(Duration::from_secs(10))
        .await
        .unwrap();
    Tenancy::new(provider, options)
}

/// Every escape the module docs list, tried through a tenant handle and its transactions.
async fn escapes_are_refused(t: &pgprovider::tenant::Tenant<TokioPostgres>) {
    for sql in [
        "SET ROLE postgres",
        "RESET ROLE",
        "SET SESSION AUTHORIZATION postgres",
        "SET search_path = public",
        "RESET ALL",
        "DISCARD ALL",
        "SELECT set_config('app.tenant_id', 'other', true)",
        "DO $$ BEGIN EXECUTE 'RESET ROLE'; END $$",
        "CREATE FUNCTION esc() RETURNS text LANGUAGE sql SECURITY DEFINER AS 'SELECT current_user'",
    ] {
        let e = t.execute(sql, &[]).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Rejected, "{sql}: {e}");
        assert_eq!(e.tenant(), Some(t.name()), "{sql}");
        let e = t
            .transaction(&pgprovider::TxOptions::default(), |tx| async move {
                tx.execute(sql, &[]).await
            })
            .await
            .unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::Rejected,
            "in a transaction, {sql}: {e}"
        );
    }
}

async fn count(t: &pgprovider::tenant::Tenant<TokioPostgres>, sql: &str) -> i64 {
    t.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_and_role_strategies_keep_tenants_apart() {
    for strategy in [Strategy::Schema, Strategy::Role] {
        let tenants = tenancy(TenancyOptions::new(strategy)).await;
        let (a, b) = (
            name(&format!("{strategy:?}_a").to_lowercase()),
            name(&format!("{strategy:?}_b").to_lowercase()),
        );
        for t in [&a, &b] {
            tenants.drop_tenant(t).await.unwrap();
            tenants.create_tenant(t, Some(&migrator())).await.unwrap();
            // Idempotent.
            tenants.create_tenant(t, Some(&migrator())).await.unwrap();
        }
        let ta = tenants.tenant(&a).unwrap();
        let tb = tenants.tenant(&b).unwrap();
        assert_eq!(ta.strategy(), strategy);
        ta.execute("INSERT INTO items (name) VALUES ($1)", &[&"from a"])
            .await
            .unwrap();
        assert_eq!(count(&ta, "SELECT count(*) FROM items").await, 1);
        assert_eq!(count(&tb, "SELECT count(*) FROM items").await, 0);
        escapes_are_refused(&ta).await;
        // Another tenant's schema, named outright.
        let other = format!("SELECT count(*) FROM \"{b}\".items");
        // The statement guard refuses the other schema's name under both strategies (under
        // roles the server would refuse too).
        let e = ta.query(&other, &[]).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
        assert_eq!(e.tenant(), Some(a.as_str()));
        match strategy {
            Strategy::Schema => {}
            _ => {
                let who: String = ta
                    .query_one("SELECT current_user::text", &[])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(who, format!("tenant_{a}"));
            }
        }
        // Nothing of the tenant's scope stays on pooled connections.
        let admin = common::pool("").await;
        let path: String = admin
            .query_one("SHOW search_path", &[])
            .await
            .unwrap()
            .get(0);
        assert!(!path.contains(&a), "{path}");
        // Dropped and created again: empty.
        tenants.drop_tenant(&a).await.unwrap();
        tenants.drop_tenant(&a).await.unwrap();
        let e = ta
            .query("SELECT count(*) FROM items", &[])
            .await
            .unwrap_err();
        assert!(e.sql_state().is_some(), "{e}");
        tenants.create_tenant(&a, Some(&migrator())).await.unwrap();
        assert_eq!(count(&ta, "SELECT count(*) FROM items").await, 0);
        for t in [&a, &b] {
            tenants.drop_tenant(t).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security_keeps_rows_apart() {
    let tenants = tenancy(TenancyOptions::new(Strategy::RowLevel)).await;
    let table = name("rls_orders");
    let admin = common::pool("").await;
    admin
        .execute(&format!("DROP TABLE IF EXISTS {table}"), &[])
        .await
        .unwrap();
    admin
        .execute(
            &format!("CREATE TABLE {table} (id serial, tenant_id text NOT NULL, item text)"),
            &[],
        )
        .await
        .unwrap();
    tenants.enable_row_level(&table).await.unwrap();
    tenants.enable_row_level(&table).await.unwrap();
    let (a, b) = (name("rls_a"), name("rls_b"));
    for t in [&a, &b] {
        tenants.create_tenant(t, None).await.unwrap();
    }
    let ta = tenants.tenant(&a).unwrap();
    let tb = tenants.tenant(&b).unwrap();
    let insert = format!(
        "INSERT INTO {table} (tenant_id, item) VALUES (current_setting('app.tenant_id'), $1)"
    );
    ta.execute(&insert, &[&"a1"]).await.unwrap();
    ta.execute(&insert, &[&"a2"]).await.unwrap();
    tb.execute(&insert, &[&"b1"]).await.unwrap();
    let all = format!("SELECT count(*) FROM {table}");
    assert_eq!(count(&ta, &all).await, 2);
    assert_eq!(count(&tb, &all).await, 1);
    // A row claiming another tenant is refused by the policy.
    let e = ta
        .execute(
            &format!("INSERT INTO {table} (tenant_id, item) VALUES ($1, 'x')"),
            &[&b.as_str()],
        )
        .await
        .unwrap_err();
    assert_eq!(e.sql_state().unwrap().code(), "42501", "{e}");
    // Updates and deletes see only the tenant's rows.
    assert_eq!(
        ta.execute(&format!("DELETE FROM {table}"), &[])
            .await
            .unwrap(),
        2
    );
    assert_eq!(count(&tb, &all).await, 1);
    escapes_are_refused(&ta).await;
    // Dropping a tenant removes its rows only.
    ta.execute(&insert, &[&"a3"]).await.unwrap();
    tenants.drop_tenant(&a).await.unwrap();
    let left: i64 = admin.query_one(&all, &[]).await.unwrap().get(0);
    assert_eq!(left, 1);
    admin
        .execute(&format!("DROP TABLE {table}"), &[])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_per_tenant_with_a_capped_number_of_pools() {
    let tenants = tenancy(TenancyOptions::new(Strategy::Database).with_max_open_databases(1)).await;
    let (a, b) = (name("db_a"), name("db_b"));
    for t in [&a, &b] {
        tenants.drop_tenant(t).await.unwrap();
        tenants.create_tenant(t, Some(&migrator())).await.unwrap();
        tenants.create_tenant(t, Some(&migrator())).await.unwrap();
    }
    let ta = tenants.tenant(&a).unwrap();
    let tb = tenants.tenant(&b).unwrap();
    ta.execute("INSERT INTO items (name) VALUES ('a')", &[])
        .await
        .unwrap();
    let db: String = ta
        .query_one("SELECT current_database()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(db, format!("tenant_{a}"));
    assert_eq!(tenants.open_databases(), 1);
    assert_eq!(count(&tb, "SELECT count(*) FROM items").await, 0);
    // The cap: b's pool replaced a's.
    assert_eq!(tenants.open_databases(), 1);
    assert_eq!(count(&ta, "SELECT count(*) FROM items").await, 1);
    escapes_are_refused(&ta).await;
    for t in [&a, &b] {
        tenants.drop_tenant(t).await.unwrap();
        tenants.drop_tenant(t).await.unwrap();
    }
    assert_eq!(tenants.open_databases(), 0);
    let admin = common::pool("").await;
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1 OR datname = $2",
            &[&format!("tenant_{a}"), &format!("tenant_{b}")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    // Pools unused past the idle timeout close on the next use of another tenant.
    let idle = tenancy(
        TenancyOptions::new(Strategy::Schema)
            .with_override(&a, Strategy::Database)
            .with_override(&b, Strategy::Database)
            // Long enough that creating both tenants never outlasts it on a loaded
            // machine (CI saw 50 ms elapse between two steps).
            .with_database_idle_timeout(Duration::from_millis(1000)),
    )
    .await;
    assert_eq!(idle.strategy_of(&a), Strategy::Database);
    assert_eq!(idle.strategy_of("someone_else"), Strategy::Schema);
    for t in [&a, &b] {
        idle.create_tenant(t, Some(&migrator())).await.unwrap();
    }
    let ia = idle.tenant(&a).unwrap();
    assert_eq!(ia.strategy(), Strategy::Database);
    assert_eq!(count(&ia, "SELECT count(*) FROM items").await, 0);
    // Both opened by their creation (the migrations ran through them).
    assert_eq!(idle.open_databases(), 2);
    // Time passing is the event here: the idle timeout must elapse.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        count(&idle.tenant(&b).unwrap(), "SELECT count(*) FROM items").await,
        0
    );
    assert_eq!(idle.open_databases(), 1, "a's idle pool was closed");
    for t in [&a, &b] {
        idle.drop_tenant(t).await.unwrap();
    }
    // Bad names never reach the server.
    let e = tenants.tenant("Robert'); DROP TABLE x;--").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(tenants.create_tenant("pg_evil", None).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_and_a_noisy_tenant_does_not_starve_the_others() {
    let (noisy, calm, slow, capped) = (name("noisy"), name("calm"), name("slow"), name("capped"));
    let tenants = tenancy(
        TenancyOptions::new(Strategy::Schema)
            .with_tenant_limits(&noisy, TenantLimits::default().with_max_connections(2))
            .with_tenant_limits(
                &slow,
                TenantLimits::default().with_statement_timeout(Duration::from_millis(100)),
            )
            .with_tenant_limits(&capped, TenantLimits::default().with_ops_per_second(3)),
    )
    .await;
    for t in [&noisy, &calm, &slow, &capped] {
        tenants.create_tenant(t, Some(&migrator())).await.unwrap();
    }
    // Statement timeout: the server cancels it.
    let e = tenants
        .tenant(&slow)
        .unwrap()
        .query("SELECT pg_sleep(1)", &[])
        .await
        .unwrap_err();
    assert_eq!(e.sql_state().unwrap().code(), "57014", "{e}");
    // Rate: a burst of 3, then refused with the tenant and the limit.
    let c = tenants.tenant(&capped).unwrap();
    let mut refused = None;
    for _ in 0..10 {
        if let Err(e) = c.query("SELECT 1", &[]).await {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("the rate limit refused");
    assert_eq!(e.kind(), ErrorKind::Rejected);
    assert!(e.message().contains("3 operations per second"), "{e}");
    assert_eq!(e.tenant(), Some(capped.as_str()));
    // Connections: the noisy tenant holds at most 2 of the 4 pooled connections.
    let n = tenants.tenant(&noisy).unwrap();
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let n = n.clone();
            tokio::spawn(async move { n.query("SELECT pg_sleep(1.5)", &[]).await.map(|_| ()) })
        })
        .collect();
    // Wait (bounded) until both run on the server.
    let admin = common::pool("").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let running: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(1.5)' AND state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if running == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{running} running");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let e = n.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
    assert!(
        e.message().contains("limit of 2 concurrent connections"),
        "{e}"
    );
    // Meanwhile the calm tenant is served at once, several times, while the noisy one
    // still sleeps.
    let calm_t = tenants.tenant(&calm).unwrap();
    let started = std::time::Instant::now();
    for _ in 0..5 {
        calm_t
            .execute("INSERT INTO items (name) VALUES ('calm')", &[])
            .await
            .unwrap();
    }
    assert!(
        busy.iter().all(|h| !h.is_finished()),
        "the noisy tenant finished first"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    for h in busy {
        h.await.unwrap().unwrap();
    }
    // A transaction re-run after a serialization failure takes the tenant's one connection
    // again (the first attempt's permit is given back first).
    let seq = name("tenant_retry_seq");
    let admin = common::pool("").await;
    admin
        .execute(&format!("DROP SEQUENCE IF EXISTS {seq}"), &[])
        .await
        .unwrap();
    admin
        .execute(&format!("CREATE SEQUENCE {seq}"), &[])
        .await
        .unwrap();
    admin
        .execute(
            &format!(
                "CREATE OR REPLACE FUNCTION public.{seq}_fail_once() RETURNS bigint LANGUAGE plpgsql AS $f$ \
                 DECLARE c bigint := nextval('public.{seq}'); BEGIN \
                 IF c = 1 THEN RAISE EXCEPTION 'lost a conflict' USING ERRCODE = '40001'; END IF; \
                 RETURN c; END $f$"
            ),
            &[],
        )
        .await
        .unwrap();
    let one_conn = tenancy(
        TenancyOptions::new(Strategy::Schema)
            .with_tenant_limits(&calm, TenantLimits::default().with_max_connections(1)),
    )
    .await;
    let sql = format!("SELECT public.{seq}_fail_once()");
    let q = sql.as_str();
    let got: i64 = one_conn
        .tenant(&calm)
        .unwrap()
        .transaction(&pgprovider::TxOptions::default(), |tx| async move {
            Ok::<i64, pgprovider::Error>(tx.query_one(q, &[]).await?.get(0))
        })
        .await
        .unwrap();
    assert_eq!(got, 2, "the second attempt ran");
    admin
        .execute(&format!("DROP FUNCTION public.{seq}_fail_once()"), &[])
        .await
        .unwrap();
    admin
        .execute(&format!("DROP SEQUENCE {seq}"), &[])
        .await
        .unwrap();
    for t in [&noisy, &calm, &slow, &capped] {
        tenants.drop_tenant(t).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_carries_the_tenant() {
    use pgprovider::observe::{Hook, Hooks, Operation, Outcome};
    use std::sync::{Arc, Mutex};
    /// (operation kind, tenant) of every statement.
    type Ops = Vec<(String, Option<String>)>;
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Ops>>);
    impl Hook for Seen {
        fn name(&self) -> &str {
            "seen"
        }
        fn after(&self, op: &Operation<'_>, _: &Outcome<'_>) {
            if op.sql.is_some() {
                self.0
                    .lock()
                    .unwrap()
                    .push((op.kind.to_string(), op.tenant.as_deref().map(str::to_owned)));
            }
        }
    }
    let seen = Seen::default();
    let config = common::config("&application_name=pgprovider-tenancy").await;
    let provider = Provider::with_hooks(
        TokioPostgres::new(),
        &config,
        TopologyOptions::default(),
        Hooks::builder().hook(0, seen.clone()).build(),
    );
    let tenants = provider.tenancy(TenancyOptions::new(Strategy::Schema));
    let t = name("traced");
    tenants.create_tenant(&t, Some(&migrator())).await.unwrap();
    seen.0.lock().unwrap().clear();
    tenants
        .tenant(&t)
        .unwrap()
        .execute("INSERT INTO items (name) VALUES ('x')", &[])
        .await
        .unwrap();
    let ops = seen.0.lock().unwrap().clone();
    let kinds: Vec<&str> = ops.iter().map(|(k, _)| k.as_str()).collect();
    // One pipelined operation: BEGIN + settings, the statement and COMMIT together.
    assert_eq!(kinds, ["execute"], "{ops:?}");
    assert!(
        ops.iter()
            .all(|(_, tenant)| tenant.as_deref() == Some(t.as_str())),
        "{ops:?}"
    );
    tenants.drop_tenant(&t).await.unwrap();
}
