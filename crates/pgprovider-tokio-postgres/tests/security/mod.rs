//! Security on real servers: the SQL firewall learning an application's statements and
//! refusing injected variants, role-based access on every path (statements, transactions,
//! batches, COPY, tenant handles) with a mapped server role and `check_grants`, and a
//! password rotated under load (on a throwaway cluster with password authentication).

use super::{Sink, common};
use pgprovider::access::{AccessPolicy, AppRole, Kind, with_role};
use pgprovider::firewall::{FirewallOptions, Mode};
use pgprovider::observe::{AuditLog, Hooks};
use pgprovider::provider::Provider;
use pgprovider::tenant::{Strategy, TenancyOptions};
use pgprovider::{Connection, ErrorKind, Queries, TxOptions};
use pgprovider_tokio_postgres::TokioPostgres;
use std::time::Duration;

mod rotation;

/// A unique name for this run.
fn unique(base: &str) -> String {
    format!("{base}_{}", std::process::id())
}

/// Runs `sql` on the shared server, outside any provider.
async fn admin(sql: &str) {
    let pool = common::pool("").await;
    pool.get().await.unwrap().simple_query(sql).await.unwrap();
}

async fn ready(provider: Provider<TokioPostgres>) -> Provider<TokioPostgres> {
    provider
        .monitor()
        .wait_for_primary(Duration::from_secs(20))
        .await
        .unwrap();
    provider
}

/// The application under test: what it runs, with the user's input where it goes (one
/// lookup builds its SQL by concatenation, the bug the firewall is there for).
async fn application(
    p: &Provider<TokioPostgres>,
    t: &str,
    input: &str,
) -> pgprovider::Result<usize> {
    let rows = p
        .query(&format!("SELECT id FROM {t} WHERE name = '{input}'"), &[])
        .await?;
    p.query(&format!("SELECT name FROM {t} WHERE id = $1"), &[&1_i32])
        .await?;
    p.execute(
        &format!("UPDATE {t} SET seen = seen + 1 WHERE name = $1"),
        &[&input],
    )
    .await?;
    let sql = format!("INSERT INTO {t} (name) VALUES ($1) RETURNING id");
    let insert = sql.as_str();
    p.transaction(&TxOptions::new(), |tx| async move {
        let id: i32 = tx.query_one(insert, &[&"tx"]).await?.get(0);
        tx.execute(&format!("DELETE FROM {t} WHERE id = $1"), &[&id])
            .await
    })
    .await?;
    let mut conn = p.conn().await?;
    conn.batch(&[
        (&format!("SELECT count(*) FROM {t}"), &[]),
        (&format!("UPDATE {t} SET seen = 0 WHERE id = $1"), &[&2_i32]),
    ])
    .await?;
    Ok(rows.len())
}

async fn count(t: &str) -> i64 {
    let pool = common::pool("").await;
    let mut conn = pool.get().await.unwrap();
    conn.query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_firewall_learns_the_applications_shapes_and_refuses_injected_ones() {
    let t = unique("fw_users");
    admin(&format!(
        "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id serial PRIMARY KEY, name text, seen int DEFAULT 0); \
         INSERT INTO {t} (name) VALUES ('alice'), ('bob')"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("allowlist.json");
    let config = common::config("&application_name=fw-app").await;

    // Learn: the application's statements, with ordinary input.
    let learn = Provider::builder(TokioPostgres::new(), &config)
        .firewall(FirewallOptions::new(Mode::Learn).with_allowlist(&list))
        .unwrap()
        .build();
    let learn = ready(learn).await;
    assert_eq!(application(&learn, &t, "alice").await.unwrap(), 1);
    application(&learn, &t, "bob").await.unwrap();
    let learned = learn.firewall().unwrap().stats().learned;
    let shapes = learn.firewall().unwrap().shapes();
    learn.close().await;
    assert_eq!(shapes.len() as u64, learned);
    assert_eq!(shapes.len(), 7, "{shapes:#?}");
    let lookup = shapes
        .iter()
        .find(|s| s.statement == format!("SELECT id FROM {t} WHERE name = $1"))
        .unwrap();
    assert_eq!(lookup.count, 2);
    assert!(lookup.call_site.contains("security/mod.rs"), "{lookup:?}");
    let file = std::fs::read_to_string(&list).unwrap();
    assert!(file.contains(r#""application": "fw-app""#), "{file}");
    assert!(file.contains(&lookup.fingerprint), "{file}");

    // Enforce, with an audit log.
    let audit = Sink::default();
    let hooks = Hooks::builder()
        .hook(0, AuditLog::new(audit.clone(), "postgres"))
        .build();
    let enforce = Provider::builder(TokioPostgres::new(), &config)
        .hooks(hooks)
        .firewall(FirewallOptions::new(Mode::Enforce).with_allowlist(&list))
        .unwrap()
        .build();
    let enforce = ready(enforce).await;
    // The application passes, whatever ordinary input it gets.
    assert_eq!(application(&enforce, &t, "carol").await.unwrap(), 0);
    assert_eq!(application(&enforce, &t, "alice").await.unwrap(), 1);
    let before = count(&t).await;
    // Each injection is refused before it is sent.
    let attacks = [
        ("x' OR '1'='1", "an injection shape"),
        ("x' OR 1=1 OR name = '", "an injection shape"),
        (
            "x'; DELETE FROM fw_victim; --",
            "2 statements in one string",
        ),
        ("alice'--", "an injection shape"),
        (
            "x' UNION SELECT oid::int FROM pg_authid WHERE rolname = 'postgres",
            "an injection shape",
        ),
        ("x' AND id > 0 AND name <> '", "is not in the allowlist"),
    ];
    for (input, why) in attacks {
        let e = application(&enforce, &t, input).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Rejected, "{input}: {e}");
        assert!(e.message().contains(why), "{input}: {e}");
    }
    // A statement the application never ran.
    let e = enforce
        .execute(&format!("DELETE FROM {t}"), &[])
        .await
        .unwrap_err();
    assert!(
        e.message()
            .contains("is not in the allowlist of application \"fw-app\""),
        "{e}"
    );
    assert!(e.message().contains("Firewall::allow"), "{e}");
    assert_eq!(
        count(&t).await,
        before,
        "nothing refused reached the server"
    );
    let stats = enforce.firewall().unwrap().stats();
    assert_eq!(stats.refused, 7);
    assert!(stats.allowed >= 12, "{stats:?}");
    let lines = String::from_utf8(audit.0.lock().unwrap().clone()).unwrap();
    assert_eq!(lines.matches(r#""outcome":"denied""#).count(), 7, "{lines}");
    assert!(lines.contains(r#""outcome":"ok""#));
    // Allowed at run time, then it passes.
    let fw = enforce.firewall().unwrap();
    fw.allow(None, None, &format!("DELETE FROM {t} WHERE id = $1"))
        .unwrap();
    enforce
        .execute(&format!("DELETE FROM {t} WHERE id = $1"), &[&-1_i32])
        .await
        .unwrap();
    enforce.close().await;
    admin(&format!("DROP TABLE {t}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_mode_runs_unknown_shapes_and_the_structural_rules_still_refuse() {
    let t = unique("fw_warn");
    admin(&format!(
        "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id int)"
    ))
    .await;
    let config = common::config("&application_name=fw-warn").await;
    let p = Provider::builder(TokioPostgres::new(), &config)
        .firewall(FirewallOptions::new(Mode::Warn).parameters_only(true))
        .unwrap()
        .build();
    let p = ready(p).await;
    p.execute(&format!("INSERT INTO {t} VALUES ($1)"), &[&1_i32])
        .await
        .unwrap();
    let e = p
        .execute(&format!("INSERT INTO {t} VALUES (2)"), &[])
        .await
        .unwrap_err();
    assert!(
        e.message()
            .contains("literal(s) where parameters are required"),
        "{e}"
    );
    let e = p
        .execute(
            &format!("INSERT INTO {t} VALUES ($1); DROP TABLE {t}"),
            &[&3_i32],
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
    assert_eq!(count(&t).await, 1);
    let stats = p.firewall().unwrap().stats();
    assert_eq!((stats.warned, stats.refused), (1, 2), "{stats:?}");
    p.close().await;
    admin(&format!("DROP TABLE {t}")).await;
}

fn policy(items: &str, secrets: &str, server_role: &str) -> AccessPolicy {
    AccessPolicy::new()
        .role("reader", AppRole::reader(&format!("public.{items}")))
        .role(
            "writer",
            AppRole::writer(&format!("public.{items}"))
                .allow(&[Kind::Copy], &format!("public.{items}")),
        )
        .role("admin", AppRole::admin())
        .role("tenant_reader", AppRole::reader("*.items"))
        .role(
            "mapped",
            AppRole::writer(&format!("public.{items}")).with_server_role(server_role),
        )
        .role("secrets", AppRole::reader(&format!("public.{secrets}")))
        .role(
            "mapped_admin",
            AppRole::new()
                .allow(&Kind::ALL, &format!("public.{items}"))
                .allow(&[Kind::Other], "*")
                .with_server_role(server_role),
        )
        .with_tenant_schemas("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_checked_on_every_path_and_mapped_to_server_roles() {
    let (items, secrets, srv) = (unique("ac_items"), unique("ac_secrets"), unique("ac_srv"));
    admin(&format!(
        "DROP TABLE IF EXISTS {items}, {secrets}; DROP ROLE IF EXISTS {srv}; \
         CREATE TABLE {items} (id int, name text); CREATE TABLE {secrets} (token text); \
         INSERT INTO {items} VALUES (1, 'one'); CREATE ROLE {srv} NOLOGIN; \
         GRANT SELECT ON {items} TO {srv}"
    ))
    .await;
    let audit = Sink::default();
    let hooks = Hooks::builder()
        .hook(0, AuditLog::new(audit.clone(), "postgres"))
        .build();
    let config = common::config("&application_name=ac-app&pool_max_size=4").await;
    let p = Provider::builder(TokioPostgres::new(), &config)
        .hooks(hooks)
        .access(policy(&items, &secrets, &srv))
        .tenancy(TenancyOptions::new(Strategy::Schema))
        .build();
    let p = ready(p).await;
    let denied = |r: pgprovider::Result<u64>, what: &str| {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
        assert!(e.message().contains(what), "{what}: {e}");
    };

    // Statements.
    let reader = p.as_role("reader");
    assert_eq!(
        reader
            .query(&format!("SELECT * FROM {items}"), &[])
            .await
            .unwrap()
            .len(),
        1
    );
    let e = reader
        .query(&format!("SELECT * FROM {secrets}"), &[])
        .await
        .unwrap_err();
    assert!(
        e.message()
            .contains(&format!("role \"reader\" may not select public.{secrets}")),
        "{e}"
    );
    denied(
        reader
            .execute(&format!("INSERT INTO {items} VALUES (2, 'two')"), &[])
            .await,
        &format!("may not insert public.{items}"),
    );
    denied(
        reader
            .execute(
                &format!("WITH d AS (DELETE FROM {items} RETURNING *) SELECT count(*) FROM d"),
                &[],
            )
            .await,
        &format!("may not delete public.{items}"),
    );
    denied(
        p.execute("SELECT 1", &[]).await,
        "no application role is acting",
    );
    // Transactions: the role acts inside; a denied statement aborts nothing else.
    let ins = format!("INSERT INTO {items} VALUES (3, 'tx')");
    let ins = ins.as_str();
    let r = reader
        .transaction(
            &TxOptions::new(),
            |tx| async move { tx.execute(ins, &[]).await },
        )
        .await;
    denied(r, "may not insert");
    with_role(
        "writer",
        p.transaction(
            &TxOptions::new(),
            |tx| async move { tx.execute(ins, &[]).await },
        ),
    )
    .await
    .unwrap();
    // Batches and COPY on a checked-out connection, in the handle's scope.
    let mut conn = reader.conn().await.unwrap();
    let sel = format!("SELECT count(*) FROM {items}");
    let upd = format!("UPDATE {items} SET name = 'b' WHERE id = $1");
    let e = reader
        .scope(conn.batch(&[(&sel, &[]), (&upd, &[&1_i32])]))
        .await
        .unwrap_err();
    assert!(e.message().contains("may not update"), "{e}");
    let copy = format!("COPY {items} (id, name) FROM STDIN (FORMAT binary)");
    let types = [
        tokio_postgres::types::Type::INT4,
        tokio_postgres::types::Type::TEXT,
    ];
    let row: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> =
        vec![Box::new(4_i32), Box::new("copied")];
    let e = reader
        .scope(conn.copy_in(&copy, &types, [row]))
        .await
        .unwrap_err();
    assert!(
        e.message()
            .contains(&format!("may not copy public.{items}")),
        "{e}"
    );
    drop(conn);
    let writer = p.primary().as_role("writer");
    let mut conn = writer.conn().await.unwrap();
    writer
        .scope(conn.batch(&[(&sel, &[]), (&upd, &[&1_i32])]))
        .await
        .unwrap();
    let row: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> =
        vec![Box::new(4_i32), Box::new("copied")];
    assert_eq!(
        writer
            .scope(conn.copy_in(&copy, &types, [row]))
            .await
            .unwrap(),
        1
    );
    drop(conn);

    // Tenant handles: the tenant's unqualified names are its own schema's.
    let tenant = unique("ac_tenant");
    let tenants = p.tenants().unwrap();
    with_role("admin", tenants.drop_tenant(&tenant))
        .await
        .unwrap();
    with_role("admin", async {
        tenants.create_tenant(&tenant, None).await?;
        tenants
            .tenant(&tenant)?
            .execute("CREATE TABLE items (id int)", &[])
            .await
    })
    .await
    .unwrap();
    let th = p.tenant(&tenant).unwrap();
    assert!(
        with_role("tenant_reader", th.query("SELECT * FROM items", &[]))
            .await
            .is_ok()
    );
    denied(
        with_role(
            "tenant_reader",
            th.execute("INSERT INTO items VALUES (1)", &[]),
        )
        .await,
        &format!("may not insert {tenant}.items"),
    );
    with_role("admin", tenants.drop_tenant(&tenant))
        .await
        .unwrap();

    // A mapped server role: the server enforces its grants too (SELECT only), and the
    // role ends with the statement's transaction.
    let mapped = p.as_role("mapped");
    let who: String = mapped
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, srv);
    let e = mapped
        .execute(&format!("INSERT INTO {items} VALUES (5, 'x')"), &[])
        .await
        .unwrap_err();
    assert_eq!(
        e.sql_state().map(|s| s.code().to_owned()).as_deref(),
        Some("42501"),
        "{e}"
    );
    // A statement allowed by the application's policy that leaves the server role, or
    // ends the transaction that holds it, is caught by the server-side check.
    let e = p
        .as_role("mapped_admin")
        .execute("RESET ROLE", &[])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Security, "{e}");
    let e = p
        .as_role("mapped_admin")
        .transaction(&TxOptions::new(), |tx| async move {
            tx.execute("COMMIT", &[]).await
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Security, "{e}");
    // The policy refuses what would leave it for roles without `other` on everything.
    let e = mapped
        .query("SELECT set_config('role', 'none', true)", &[])
        .await
        .unwrap_err();
    assert!(e.message().contains("a call of set_config"), "{e}");
    for _ in 0..4 {
        let who: String = p
            .as_role("admin")
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, "postgres", "no connection keeps the mapped role");
    }

    // The audit log writes allow and deny, with the role.
    let lines = String::from_utf8(audit.0.lock().unwrap().clone()).unwrap();
    assert!(
        lines
            .lines()
            .any(|l| l.contains(r#""role":"reader""#) && l.contains(r#""outcome":"denied""#)),
        "{lines}"
    );
    assert!(
        lines
            .lines()
            .any(|l| l.contains(r#""role":"reader""#) && l.contains(r#""outcome":"ok""#)),
        "{lines}"
    );
    assert!(
        lines
            .lines()
            .any(|l| l.contains(r#""role":"tenant_reader""#)
                && l.contains(&format!(r#""tenant":"{tenant}""#))),
        "{lines}"
    );

    // check_grants: every gap at once.
    let report = p.check_grants().await.unwrap();
    let gaps: Vec<String> = report.gaps.iter().map(ToString::to_string).collect();
    let mapped_gaps: Vec<&String> = gaps.iter().filter(|g| g.contains("\"mapped\"")).collect();
    assert_eq!(mapped_gaps.len(), 3, "{gaps:#?}");
    for p in ["INSERT", "UPDATE", "DELETE"] {
        assert!(
            mapped_gaps
                .iter()
                .any(|g| g.contains(&format!("{p} on public.{items}"))),
            "{gaps:#?}"
        );
    }
    // Pattern `*.items` matches no table now (the tenant was dropped) unless another run's.
    assert!(report.checked > 10);
    let e = report.clone().into_result().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(
        e.message().contains(&format!("INSERT on public.{items}")),
        "{e}"
    );
    admin(&format!("GRANT INSERT, UPDATE, DELETE ON {items} TO {srv}")).await;
    let report = p.check_grants().await.unwrap();
    assert!(
        !report.gaps.iter().any(|g| g.role == "mapped"),
        "{:?}",
        report.gaps
    );
    mapped
        .execute(&format!("INSERT INTO {items} VALUES (5, 'x')"), &[])
        .await
        .unwrap();
    // A role that does not exist and a pattern that matches nothing.
    let broken = Provider::builder(TokioPostgres::new(), &config)
        .access(
            AccessPolicy::new()
                .role(
                    "ghost",
                    AppRole::reader("public.*").with_server_role("no_such_role_x"),
                )
                .role("typo", AppRole::reader("public.no_such_table_x")),
        )
        .build();
    let broken = ready(broken).await;
    let gaps: Vec<String> = broken
        .check_grants()
        .await
        .unwrap()
        .gaps
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(gaps.len(), 2, "{gaps:#?}");
    assert!(
        gaps[0].contains("no_such_role_x does not exist"),
        "{gaps:#?}"
    );
    assert!(gaps[1].contains("matches no table"), "{gaps:#?}");
    broken.close().await;
    p.close().await;
    admin(&format!("DROP TABLE {items}, {secrets}; DROP ROLE {srv}")).await;
}
