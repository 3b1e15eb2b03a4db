//! Schema migrations against the shared server: fresh databases, re-runs, edited files,
//! broken migrations, concurrent runners and tenants.

use pgprovider::migrate::{Migrations, Migrator, State, up_tenants};
use pgprovider::{Connection, ErrorKind, Queries};
use std::sync::Arc;

mod common;
use common::{config, pool};

fn three() -> Migrations {
    Migrations::from_files([
        ("1_accounts.sql", "CREATE TABLE accounts (id int PRIMARY KEY, name text);"),
        ("1_accounts.down.sql", "DROP TABLE accounts"),
        (
            "2_runs.sql",
            "CREATE TABLE runs (n int); INSERT INTO runs VALUES (1);",
        ),
        ("2_runs.down.sql", "DROP TABLE runs"),
        (
            "3_index.sql",
            "-- pgprovider:no-transaction\nCREATE INDEX CONCURRENTLY accounts_name ON accounts (name)",
        ),
    ])
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_database_is_migrated_once_and_edits_are_caught() {
    let admin = pool("").await;
    let db = format!("pgprovider_mig_{}", std::process::id());
    let mut c = admin.get().await.unwrap();
    c.simple_query(&format!("DROP DATABASE IF EXISTS {db}"))
        .await
        .unwrap();
    c.simple_query(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    drop(c);
    let base = config("").await;
    let url = pgprovider_testkit::shared_url().await.unwrap();
    let url = format!("{}/{db}", url.rsplit_once('/').unwrap().0);
    let fresh = pgprovider::Config::from_url(&url).unwrap();
    let pool = pgprovider::Pool::new(
        pgprovider_tokio_postgres::TokioPostgres::new(),
        &fresh,
        &fresh.nodes()[0],
    );
    let _ = base;

    let m = Migrator::new(three());
    let mut conn = pool.get().await.unwrap();
    let status = m.status(&mut *conn).await.unwrap();
    assert!(status.iter().all(|s| s.state == State::Pending));
    let r = m.up(&mut *conn, None).await.unwrap();
    let versions: Vec<i64> = r.applied.iter().map(|a| a.0).collect();
    assert_eq!(versions, vec![1, 2, 3]);
    // A second run applies nothing.
    assert!(m.up(&mut *conn, None).await.unwrap().applied.is_empty());
    let status = m.status(&mut *conn).await.unwrap();
    assert!(
        status
            .iter()
            .all(|s| matches!(s.state, State::Applied { .. })),
        "{status:?}"
    );
    let index: i64 = conn
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'accounts_name'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(index, 1, "the non-transactional migration ran");

    // An applied file edited afterwards: reported, and up refuses before running anything.
    let edited = Migrator::new(
        Migrations::from_files([
            (
                "1_accounts.sql",
                "CREATE TABLE accounts (id bigint PRIMARY KEY, name text);",
            ),
            (
                "2_runs.sql",
                "CREATE TABLE runs (n int); INSERT INTO runs VALUES (1);",
            ),
            ("4_more.sql", "CREATE TABLE more (x int)"),
        ])
        .unwrap(),
    );
    let status = edited.status(&mut *conn).await.unwrap();
    assert!(
        matches!(status[0].state, State::Changed { .. }),
        "{status:?}"
    );
    assert_eq!(
        status[2].state,
        State::Unknown,
        "version 3 has no file here"
    );
    assert_eq!(status[3].state, State::Pending);
    let e = edited.up(&mut *conn, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.message().contains("1_accounts"), "{e}");
    let more: i64 = conn
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'more'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(more, 0);

    // Down to version 1 reverts 3? No down file for 3: refused, nothing reverted.
    let e = m.down(&mut *conn, 1).await.unwrap_err();
    assert!(e.message().contains("3_index has no down file"), "{e}");
    drop(conn);
    pool.close().await;
    let mut c = admin.get().await.unwrap();
    c.simple_query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_broken_migration_leaves_the_previous_version_and_down_reverts() {
    let pool = pool("").await;
    let schema = "mig_broken";
    pool.execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"), &[])
        .await
        .unwrap();
    let broken = Migrations::from_files([
        ("1_a.sql", "CREATE TABLE a (id int)"),
        ("1_a.down.sql", "DROP TABLE a"),
        ("2_b.sql", "CREATE TABLE b (id int)"),
        ("2_b.down.sql", "DROP TABLE b"),
        (
            "3_c.sql",
            "CREATE TABLE c (id int); INSERT INTO c VALUES ('not a number');",
        ),
    ])
    .unwrap();
    let m = Migrator::new(broken).with_schema(schema);
    let mut conn = pool.get().await.unwrap();
    let e = m.up(&mut *conn, None).await.unwrap_err();
    assert!(e.message().contains("migration 3_c.sql failed"), "{e}");
    assert!(e.message().contains("invalid input syntax"), "{e}");
    assert_eq!(e.sql_state().unwrap().code(), "22P02");
    assert_eq!(e.tenant(), Some(schema));
    let status = m.status(&mut *conn).await.unwrap();
    assert!(matches!(status[1].state, State::Applied { .. }));
    assert_eq!(status[2].state, State::Pending);
    let c_exists: i64 = conn
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = 'c'",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(c_exists, 0, "the failed migration was rolled back");
    assert!(!conn.in_transaction());
    // Up to a version, then down.
    let r = m.down(&mut *conn, 1).await.unwrap();
    assert_eq!(r.applied.iter().map(|a| a.0).collect::<Vec<_>>(), vec![2]);
    let r = m.up(&mut *conn, Some(2)).await.unwrap();
    assert_eq!(r.applied.iter().map(|a| a.0).collect::<Vec<_>>(), vec![2]);
    let r = m.down(&mut *conn, 0).await.unwrap();
    assert_eq!(r.applied.len(), 2);
    let tables: i64 = conn
        .query_one("SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename <> 'pgprovider_migrations'", &[&schema])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_runs_apply_each_migration_once() {
    let pool = pool("&pool_max_size=9").await;
    let schema = "mig_concurrent";
    pool.execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"), &[])
        .await
        .unwrap();
    let m = Arc::new(
        Migrator::new(
            Migrations::from_files([
                ("1_log.sql", "CREATE TABLE log (v int)"),
                (
                    "2_one.sql",
                    "INSERT INTO log VALUES (2); SELECT pg_sleep(0.05)",
                ),
                ("3_two.sql", "INSERT INTO log VALUES (3)"),
            ])
            .unwrap(),
        )
        .with_schema(schema),
    );
    let mut runs = Vec::new();
    for _ in 0..8 {
        let (pool, m) = (pool.clone(), m.clone());
        runs.push(tokio::spawn(async move {
            let mut c = pool.get().await.unwrap();
            m.up(&mut *c, None).await.unwrap().applied.len()
        }));
    }
    let mut total = 0;
    for r in runs {
        total += r.await.unwrap();
    }
    assert_eq!(total, 3, "each migration applied by exactly one run");
    let rows: Vec<(i32,)> = pool
        .query_as(&format!("SELECT v FROM {schema}.log ORDER BY v"), &[])
        .await
        .unwrap();
    assert_eq!(rows, vec![(2,), (3,)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_tenants_are_migrated_and_a_failed_one_resumes() {
    let pool = pool("&pool_max_size=4").await;
    let tenants: Vec<String> = (0..50).map(|i| format!("mig_tenant_{i:02}")).collect();
    let mut c = pool.get().await.unwrap();
    for t in &tenants {
        c.simple_query(&format!("DROP SCHEMA IF EXISTS {t} CASCADE"))
            .await
            .unwrap();
    }
    // One tenant already has a conflicting table: its migration fails.
    c.simple_query("CREATE SCHEMA mig_tenant_07; CREATE TABLE mig_tenant_07.orders (x int)")
        .await
        .unwrap();
    drop(c);
    let m = Migrator::new(
        Migrations::from_files([
            ("1_orders.sql", "CREATE TABLE orders (id int PRIMARY KEY)"),
            (
                "2_items.sql",
                "CREATE TABLE items (order_id int REFERENCES orders)",
            ),
        ])
        .unwrap(),
    );
    let seen = std::sync::atomic::AtomicUsize::new(0);
    let report = up_tenants(&pool, &m, &tenants, 4, |_, _| {
        seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })
    .await;
    assert_eq!(seen.into_inner(), 50);
    assert_eq!(report.succeeded.len(), 49);
    assert_eq!(report.failed.len(), 1);
    let (tenant, e) = &report.failed[0];
    assert_eq!(tenant, "mig_tenant_07");
    assert_eq!(e.tenant(), Some("mig_tenant_07"));
    assert!(e.message().contains("1_orders.sql"), "{e}");
    assert!(e.message().contains("already exists"), "{e}");
    // Fix the tenant and run again: only it has work left.
    pool.execute("DROP TABLE mig_tenant_07.orders", &[])
        .await
        .unwrap();
    let report = up_tenants(&pool, &m, &tenants, 4, |_, _| {}).await;
    assert!(report.failed.is_empty());
    let applied: usize = report.succeeded.iter().map(|(_, r)| r.applied.len()).sum();
    assert_eq!(applied, 2);
    let n: i64 = pool
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname LIKE 'mig_tenant_%' AND tablename = 'items'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 50);
    let mut c = pool.get().await.unwrap();
    for t in &tenants {
        c.simple_query(&format!("DROP SCHEMA {t} CASCADE"))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn non_transactional_migrations_in_a_tenant_schema() {
    let pool = pool("").await;
    pool.execute("DROP SCHEMA IF EXISTS mig_notx CASCADE", &[])
        .await
        .unwrap();
    let m = Migrator::new(
        Migrations::from_files([
            ("1_t.sql", "CREATE TABLE t (id int)"),
            (
                "2_i.sql",
                "-- pgprovider:no-transaction\nCREATE INDEX CONCURRENTLY t_id ON t (id)",
            ),
            (
                "3_bad.sql",
                "-- pgprovider:no-transaction\nCREATE INDEX CONCURRENTLY t_x ON t (nope)",
            ),
        ])
        .unwrap(),
    )
    .with_schema("mig_notx");
    let mut c = pool.get().await.unwrap();
    let e = m.up(&mut *c, None).await.unwrap_err();
    assert!(
        e.message()
            .contains("3_bad.sql failed (outside a transaction"),
        "{e}"
    );
    let idx: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'mig_notx' AND indexname = 't_id'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(idx, 1, "the index went into the tenant's schema");
    let path: String = c.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert!(!path.contains("mig_notx"), "search_path restored: {path}");
    c.simple_query("DROP SCHEMA mig_notx CASCADE")
        .await
        .unwrap();
}

#[tokio::test]
async fn embedded_migrations_apply_and_revert() {
    let migrations = pgprovider::embed_migrations!("tests/fixtures/migrations").unwrap();
    assert_eq!(migrations.len(), 1);
    assert!(migrations.get(1).unwrap().down().is_some());
    let pool = pool("").await;
    pool.execute("DROP SCHEMA IF EXISTS mig_embedded CASCADE", &[])
        .await
        .unwrap();
    let m = Migrator::new(migrations).with_schema("mig_embedded");
    let mut c = pool.get().await.unwrap();
    assert_eq!(m.up(&mut *c, None).await.unwrap().applied.len(), 1);
    assert_eq!(m.down(&mut *c, 0).await.unwrap().applied.len(), 1);
    c.simple_query("DROP SCHEMA mig_embedded CASCADE")
        .await
        .unwrap();
}
