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

/// What a hostile tenant tries; `{b}` is the victim's name (its schema), `{t}` the table
/// holding the victim's rows, `{rb}` the victim's role.
const ATTACKS: &[&str] = &[
    // Naming the victim's objects, however spelled.
    "SELECT name FROM {b}.{t}",
    "SELECT name FROM \"{b}\".{t}",
    "SELECT name FROM \"{b}\".\"{t}\"",
    "SELECT name FROM {t} UNION ALL SELECT name FROM {b}.{t}",
    "SELECT (SELECT string_agg(name, ',') FROM {b}.{t})",
    "INSERT INTO {b}.{t} (name) VALUES ('pwned')",
    "UPDATE {b}.{t} SET name = 'pwned'",
    "DELETE FROM {b}.{t}",
    "TRUNCATE {b}.{t}",
    "DROP TABLE {b}.{t}",
    "CREATE VIEW peek AS SELECT name FROM {b}.{t}",
    "SELECT name FROM {t} WHERE tenant_id = '{b}'",
    "UPDATE {t} SET name = 'pwned' WHERE tenant_id = '{b}'",
    "DELETE FROM {t} WHERE tenant_id = '{b}'",
    // Changing the scope: statements, functions however written, pg_settings.
    "SET search_path = {b}",
    "SET LOCAL search_path TO {b}",
    "set local search_path = \"{b}\"",
    "SET ROLE {rb}",
    "SET ROLE NONE",
    "RESET ROLE",
    "RESET ALL",
    "SET SESSION AUTHORIZATION DEFAULT",
    "SET app.tenant_id = '{b}'",
    "SELECT set_config('search_path', '{b}', true)",
    "SELECT pg_catalog.set_config('app.tenant_id', '{b}', true)",
    "SELECT \"set_config\"('role', 'none', true)",
    "SELECT U&\"set\\005fconfig\"('search_path', '{b}', true)",
    "SELECT name FROM {t} WHERE (SELECT set_config('app.tenant_id', '{b}', true)) IS NOT NULL",
    "EXPLAIN ANALYZE SELECT set_config('search_path', '{b}', true)",
    "UPDATE pg_settings SET setting = '{b}' WHERE name = 'search_path'",
    "WITH x AS (UPDATE pg_catalog.pg_settings SET setting = '{b}' WHERE name = 'app.tenant_id' RETURNING 1) SELECT name FROM {t}",
    "DISCARD ALL",
    // Ending or restarting the transaction that holds the scope.
    "COMMIT",
    "END",
    "ABORT",
    "ROLLBACK",
    "BEGIN",
    "START TRANSACTION",
    "SAVEPOINT s",
    "ROLLBACK TO SAVEPOINT s",
    "RELEASE SAVEPOINT s",
    "COMMIT; SELECT name FROM {b}.{t}",
    "SELECT 1; SET search_path = {b}",
    // Server-side code, files, programs, prepared statements, notifications.
    "DO $$ BEGIN PERFORM set_config('search_path', '{b}', false); END $$",
    "DO $body$ BEGIN EXECUTE 'RESET ROLE'; END $body$",
    "CREATE FUNCTION esc() RETURNS text LANGUAGE sql SECURITY DEFINER AS 'SELECT current_user'",
    "CREATE OR REPLACE PROCEDURE escp() LANGUAGE sql AS 'SELECT 1'",
    "CREATE TRIGGER esc BEFORE INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION esc()",
    "CREATE RULE esc AS ON INSERT TO {t} DO ALSO NOTIFY x",
    "COPY {b}.{t} TO STDOUT",
    "COPY {t} TO '/tmp/pgprovider-esc'",
    "COPY {t} FROM PROGRAM 'id'",
    "PREPARE esc AS SELECT name FROM {b}.{t}",
    "EXECUTE esc",
    "LISTEN esc",
    "NOTIFY esc, 'x'",
    "SELECT pg_notify('esc', 'x')",
    "LOAD 'auto_explain'",
    "ALTER SYSTEM SET work_mem = '1MB'",
    "ALTER ROLE {rb} SUPERUSER",
    "GRANT SELECT ON {t} TO PUBLIC",
    "ALTER TABLE {t} OWNER TO {rb}",
    "ALTER TABLE {t} DISABLE ROW LEVEL SECURITY",
    "CREATE SCHEMA esc",
    "SELECT query_to_xml('SELECT name FROM {b}.{t}', true, true, '')",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT lo_import('/etc/passwd')",
    "SELECT pg_advisory_lock(42)",
    "SELECT pg_terminate_backend(pg_backend_pid())",
    // Temporary objects outlive the transaction on a shared connection.
    "CREATE TEMP TABLE {t} (name text)",
    "SELECT 'pwned' AS name INTO TEMP {t}",
    "CREATE TABLE pg_temp.{t} (name text)",
    "CREATE TEMP TABLE {t} (LIKE {t} INCLUDING ALL)",
    // Found by review: functions by field selection, SQL run from text, catalogs.
    "SELECT ('/etc/passwd'::text).pg_read_file",
    "SELECT (424242::bigint).pg_advisory_lock",
    "SELECT ts_rewrite('a'::tsquery, $$SELECT 'a'::tsquery, plainto_tsquery('simple', string_agg(name, ' ')) FROM {b}.{t}$$)::text",
    "UPDATE pg_catalog.pg_class SET relname = 'stolen' WHERE oid = '{b}.{t}'::regclass",
    "SELECT most_common_vals::text FROM pg_stats WHERE schemaname = '{b}'",
    "CREATE VIEW s AS SELECT * FROM pg_catalog.pg_settings",
    "SELECT query FROM pg_stat_activity",
    // Found by a second review: catalogs through views, activity functions, sequences,
    // state left for the next tenant, locks.
    "CREATE VIEW cls AS SELECT * FROM pg_catalog.pg_class",
    "SELECT query FROM pg_catalog.pg_stat_get_activity(NULL)",
    "SELECT ('{b}.{t}_id_seq'::regclass).nextval",
    "SELECT setseed(0.42)",
    "SELECT lastval()",
    "LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE",
    // Found by a third review: other sessions' statements, sequences by OID, types.
    "SELECT name, statement FROM pg_prepared_statements",
    "SELECT nextval((SELECT oid FROM pg_class WHERE relname = '{t}_id_seq' LIMIT 1)::text)",
    "CREATE TABLE pinned (c {b}.{t})",
    // Comments, dollar quotes and garbage: harmless or unparsable.
    "SELECT name FROM {t} /* ; SET search_path = {b} */",
    "SELECT $$; SET search_path = {b}; $$ AS x",
    "SELECT name FROM {t} -- ; RESET ROLE",
    "SELECT 1 /* unterminated",
    "SELECT name FROM {t} WHERE name = 'x'';SET ROLE NONE;--'",
];

/// The victim's secret, which no attempt may read, change or remove.
const SECRET: &str = "SECRET_OF_B";

fn leaked(rows: &[pgprovider_tokio_postgres::PgRow]) -> bool {
    rows.iter().any(|r| {
        (0..r.len()).any(|i| {
            r.try_get::<_, Option<String>>(i)
                .ok()
                .flatten()
                .is_some_and(|v| v.contains(SECRET) || v.contains("pwned"))
        })
    })
}

/// Runs every attack through every tenant API of `ta` (query, execute, a transaction's query
/// and execute) and checks after each that nothing of `tb`'s was read or changed; returns
/// how many attempts were refused before reaching the server.
async fn attack(
    ta: &pgprovider::tenant::Tenant<TokioPostgres>,
    tb: &pgprovider::tenant::Tenant<TokioPostgres>,
    b: &str,
    table: &str,
) -> (usize, usize) {
    let victim_check = format!("SELECT count(*) FROM {table} WHERE name = '{SECRET}'");
    let victim_all = format!("SELECT count(*) FROM {table}");
    let (mut tried, mut refused) = (0, 0);
    for template in ATTACKS {
        let sql = template
            .replace("{b}", b)
            .replace("{t}", table)
            .replace("{rb}", &format!("tenant_{b}"));
        for api in 0..4 {
            tried += 1;
            let s = sql.as_str();
            let r: Result<Vec<_>, pgprovider::Error> = match api {
                0 => ta.query(s, &[]).await,
                1 => ta.execute(s, &[]).await.map(|_| Vec::new()),
                2 => {
                    ta.transaction(&pgprovider::TxOptions::default(), |tx| async move {
                        tx.query(s, &[]).await
                    })
                    .await
                }
                _ => {
                    ta.transaction(&pgprovider::TxOptions::default(), |tx| async move {
                        tx.execute("SELECT 1", &[]).await?;
                        tx.execute(s, &[]).await.map(|_| Vec::new())
                    })
                    .await
                }
            };
            match &r {
                Ok(rows) => assert!(!leaked(rows), "api {api}: {sql} leaked"),
                Err(e) => {
                    assert_ne!(e.kind(), ErrorKind::Security, "api {api}: {sql}: {e}");
                    refused += usize::from(e.kind() == ErrorKind::Rejected);
                }
            }
            for check in [&victim_check, &victim_all] {
                let n: i64 = match tb.query_one(check, &[]).await {
                    Ok(row) => row.get(0),
                    Err(e) => panic!("api {api}: {sql}: the victim's rows are gone: {e}"),
                };
                assert_eq!(n, 1, "api {api}: {sql}");
            }
        }
    }
    (tried, refused)
}

/// Every pooled connection of the provider is back in its default scope.
async fn pool_is_clean(provider: &Provider<TokioPostgres>) {
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(provider.write().await.unwrap());
    }
    for c in &mut held {
        let row = &pgprovider::Connection::simple_query(
            &mut **c,
            "SELECT current_user = session_user, current_setting('search_path'), \
             coalesce(current_setting('app.tenant_id', true), ''), now() = statement_timestamp()",
        )
        .await
        .unwrap()[0];
        assert_eq!(row.get(0), Some("t"), "role back to the login role");
        assert_eq!(row.get(1), Some("\"$user\", public"));
        assert_eq!(row.get(2), Some(""), "no tenant setting left");
        assert_eq!(row.get(3), Some("t"), "no transaction left open");
    }
}

/// Two fresh tenants `a` (the attacker) and `b` (the victim, holding one row: [`SECRET`])
/// under `strategy`, and the table their rows are in (a shared one with the row-level
/// policy under the row-level strategy).
struct Victim {
    tenants: Tenancy<TokioPostgres>,
    a: String,
    b: String,
    ta: pgprovider::tenant::Tenant<TokioPostgres>,
    tb: pgprovider::tenant::Tenant<TokioPostgres>,
    table: String,
}

async fn victim(prefix: &str, strategy: Strategy) -> Victim {
    let tenants = tenancy(TenancyOptions::new(strategy)).await;
    let tag = format!("{strategy:?}").to_lowercase();
    let (a, b) = (
        name(&format!("{prefix}_{tag}_a")),
        name(&format!("{prefix}_{tag}_b")),
    );
    let table = match strategy {
        Strategy::RowLevel => {
            let t = name(&format!("{prefix}_rl_items"));
            let admin = common::pool("").await;
            admin
                .execute(&format!("DROP TABLE IF EXISTS {t}"), &[])
                .await
                .unwrap();
            admin
                .execute(
                    &format!(
                        "CREATE TABLE {t} (id serial, tenant_id text NOT NULL \
                         DEFAULT current_setting('app.tenant_id'), name text NOT NULL)"
                    ),
                    &[],
                )
                .await
                .unwrap();
            tenants.enable_row_level(&t).await.unwrap();
            t
        }
        _ => "items".to_owned(),
    };
    for t in [&a, &b] {
        tenants.drop_tenant(t).await.unwrap();
        let m = (strategy != Strategy::RowLevel).then(migrator);
        tenants.create_tenant(t, m.as_ref()).await.unwrap();
    }
    let ta = tenants.tenant(&a).unwrap();
    let tb = tenants.tenant(&b).unwrap();
    tb.execute(
        &format!("INSERT INTO {table} (name) VALUES ('{SECRET}')"),
        &[],
    )
    .await
    .unwrap();
    Victim {
        tenants,
        a,
        b,
        ta,
        tb,
        table,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_tenant_cannot_leave_its_scope_under_any_strategy() {
    let mut report = Vec::new();
    for strategy in [
        Strategy::Schema,
        Strategy::Role,
        Strategy::RowLevel,
        Strategy::Database,
    ] {
        let Victim {
            tenants,
            a,
            b,
            ta,
            tb,
            table,
        } = victim("adv", strategy).await;
        ta.execute(&format!("INSERT INTO {table} (name) VALUES ('mine')"), &[])
            .await
            .unwrap();
        let (tried, refused) = attack(&ta, &tb, &b, &table).await;
        // Two tenants taking turns on the same connections: each sees only its own rows.
        for _ in 0..10 {
            let mine: Vec<String> = ta
                .query(&format!("SELECT name FROM {table}"), &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert_eq!(mine, ["mine"]);
            let theirs: Vec<String> = tb
                .query(&format!("SELECT name FROM {table}"), &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert_eq!(theirs, [SECRET]);
        }
        pool_is_clean(tenants.provider()).await;
        report.push(format!(
            "{strategy:?}: {tried} attempts, {refused} refused by the guard, 0 escapes"
        ));
        for t in [&a, &b] {
            tenants.drop_tenant(t).await.unwrap();
        }
    }
    println!("{}", report.join("\n"));
}

/// Defence in depth: a function the guard cannot see into (an existing one in `public`,
/// allowed) changes the tenant's scope and reads in the same statement. The server's check
/// catches it: no row reaches the caller, nothing is committed, the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_catches_a_scope_change_the_guard_cannot_see() {
    let admin = common::pool("").await;
    let sneaky = name("adv_sneaky");
    admin
        .execute(
            &format!(
                "CREATE OR REPLACE FUNCTION public.{sneaky}(v text) RETURNS text LANGUAGE sql AS \
                 $$ SELECT set_config('search_path', v, true) || set_config('app.tenant_id', v, true) $$"
            ),
            &[],
        )
        .await
        .unwrap();
    for strategy in [Strategy::Schema, Strategy::Role, Strategy::RowLevel] {
        let Victim {
            tenants,
            a,
            b,
            ta,
            tb,
            table,
        } = victim("dd", strategy).await;
        let closed = closed_errors(tenants.provider());
        let steal = format!(
            "SELECT public.{sneaky}('{b}') AS changed, (SELECT string_agg(name, ',') FROM {table}) AS rows"
        );
        let e = ta.query(&steal, &[]).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Security, "{strategy:?}: {e}");
        assert_eq!(e.tenant(), Some(a.as_str()));
        let write = format!("INSERT INTO {table} (name) SELECT public.{sneaky}('{b}')");
        let e = ta.execute(&write, &[]).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Security, "{strategy:?}: {e}");
        let s = steal.as_str();
        let e = ta
            .transaction(&pgprovider::TxOptions::default(), |tx| async move {
                tx.query(s, &[]).await
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Security, "{strategy:?}: {e}");
        assert_eq!(
            closed_errors(tenants.provider()) - closed,
            3,
            "{strategy:?}: each connection was closed"
        );
        // Nothing was written anywhere; the victim is intact.
        assert_eq!(
            count(&ta, &format!("SELECT count(*) FROM {table}")).await,
            0
        );
        assert_eq!(
            count(&tb, &format!("SELECT count(*) FROM {table}")).await,
            1
        );
        pool_is_clean(tenants.provider()).await;
        for t in [&a, &b] {
            tenants.drop_tenant(t).await.unwrap();
        }
    }
    admin
        .execute(&format!("DROP FUNCTION public.{sneaky}(text)"), &[])
        .await
        .unwrap();
}

/// Connections of the provider's primary closed as broken.
fn closed_errors(provider: &Provider<TokioPostgres>) -> u64 {
    let node = provider.monitor().primary().unwrap();
    provider.pool(&node).unwrap().stats().closed_error
}

/// Tenant reads on a standby, through the provider's read routing, in the tenant's scope and
/// behind the same guard and check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_reads_run_on_a_standby_in_the_tenants_scope() {
    let (cluster, config) = common::two_nodes(false, "&pool_max_size=2").await;
    let provider = Provider::new(
        TokioPostgres::new(),
        &config,
        TopologyOptions::default()
            .with_monitor_interval(Duration::from_millis(200))
            .with_read_from_primary(false),
    );
    provider
        .monitor()
        .wait_for_primary(Duration::from_secs(10))
        .await
        .unwrap();
    for strategy in [Strategy::Role, Strategy::RowLevel] {
        let tenants = Tenancy::new(provider.clone(), TenancyOptions::new(strategy));
        let table = match strategy {
            Strategy::RowLevel => {
                let mut c = provider.write().await.unwrap();
                pgprovider::Connection::simple_query(
                    &mut *c,
                    "CREATE TABLE IF NOT EXISTS rl_reads (tenant_id text NOT NULL \
                     DEFAULT current_setting('app.tenant_id'), name text)",
                )
                .await
                .unwrap();
                drop(c);
                tenants.enable_row_level("rl_reads").await.unwrap();
                "rl_reads"
            }
            _ => "items",
        };
        for t in ["reader_a", "reader_b"] {
            let m = (strategy != Strategy::RowLevel).then(migrator);
            tenants.create_tenant(t, m.as_ref()).await.unwrap();
            let h = tenants.tenant(t).unwrap();
            h.execute(&format!("INSERT INTO {table} (name) VALUES ($1)"), &[&t])
                .await
                .unwrap();
        }
        cluster.wait_for_replay(cluster.standby(0)).await.unwrap();
        let ta = tenants.tenant("reader_a").unwrap();
        let rows = ta
            .read_query(
                &format!("SELECT name, pg_is_in_recovery(), current_user::text FROM {table}"),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{strategy:?}: only the tenant's rows");
        assert_eq!(rows[0].get::<_, String>(0), "reader_a");
        assert!(
            rows[0].get::<_, bool>(1),
            "{strategy:?}: read on the standby"
        );
        let who: String = rows[0].get(2);
        assert_ne!(who, "postgres", "{strategy:?}: in the tenant's role");
        let e = ta
            .read_query("SELECT set_config('app.tenant_id', 'reader_b', true)", &[])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
        let e = ta
            .read_query(&format!("SELECT name FROM reader_b.{table}"), &[])
            .await
            .unwrap_err();
        assert!(
            e.kind() == ErrorKind::Rejected || e.sql_state().is_some(),
            "{strategy:?}: {e}"
        );
    }
}

/// The schema, role and database prefixes name what the server really gets (each fails if
/// its option stops being honoured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_role_and_database_prefixes_name_the_server_objects() {
    let admin = common::pool("").await;
    let exists = |sql: String| {
        let admin = &admin;
        async move {
            let n: i64 = admin.query_one(&sql, &[]).await.unwrap().get(0);
            n == 1
        }
    };
    let t = name("prefixed");
    for (strategy, options, object) in [
        (
            Strategy::Schema,
            TenancyOptions::new(Strategy::Schema).with_schema_prefix("sx_"),
            format!("SELECT count(*) FROM pg_namespace WHERE nspname = 'sx_{t}'"),
        ),
        (
            Strategy::Role,
            TenancyOptions::new(Strategy::Role).with_role_prefix("rx_"),
            format!("SELECT count(*) FROM pg_roles WHERE rolname = 'rx_{t}'"),
        ),
        (
            Strategy::Database,
            TenancyOptions::new(Strategy::Database).with_database_prefix("dx_"),
            format!("SELECT count(*) FROM pg_database WHERE datname = 'dx_{t}'"),
        ),
    ] {
        let tenants = tenancy(options).await;
        tenants.drop_tenant(&t).await.unwrap();
        tenants.create_tenant(&t, None).await.unwrap();
        assert!(exists(object.clone()).await, "{strategy:?}: {object}");
        let handle = tenants.tenant(&t).unwrap();
        assert_eq!(handle.strategy(), strategy);
        handle
            .execute("CREATE TABLE IF NOT EXISTS p (x int)", &[])
            .await
            .unwrap();
        tenants.drop_tenant(&t).await.unwrap();
        assert!(
            !exists(object.clone()).await,
            "{strategy:?} dropped: {object}"
        );
    }
}

/// A tenant's `query_as` and `query_one`, whose errors name the tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_rows_as_types_and_row_count_errors_name_the_tenant() {
    let tenants = tenancy(TenancyOptions::new(Strategy::Schema)).await;
    let t = name("typed");
    tenants.drop_tenant(&t).await.unwrap();
    tenants.create_tenant(&t, Some(&migrator())).await.unwrap();
    let handle = tenants.tenant(&t).unwrap();
    assert!(format!("{handle:?}").contains(&t));
    handle
        .execute("INSERT INTO items (name) VALUES ('a'), ('b')", &[])
        .await
        .unwrap();
    let names: Vec<(String,)> = handle
        .query_as("SELECT name FROM items ORDER BY name", &[])
        .await
        .unwrap();
    assert_eq!(names, vec![("a".to_owned(),), ("b".to_owned(),)]);
    let e = handle
        .query_one("SELECT name FROM items", &[])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RowCount, "{e}");
    assert_eq!(e.tenant(), Some(t.as_str()));
    tenants.drop_tenant(&t).await.unwrap();
}
