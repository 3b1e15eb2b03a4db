use super::*;

fn policy() -> AccessPolicy {
    AccessPolicy::new()
        .role("reader", AppRole::reader("public.*"))
        .role(
            "analyst",
            AppRole::new()
                .allow(&[Kind::Select], "reports.*")
                .allow(&[Kind::Select], "public.items"),
        )
        .role(
            "writer",
            AppRole::writer("public.*").allow(&[Kind::Copy], "public.items"),
        )
        .role("admin", AppRole::admin())
        .role(
            "app",
            AppRole::writer("app_*.*").allow(&[Kind::Ddl, Kind::Other], "*"),
        )
}

#[test]
fn roles_are_allowed_and_denied_per_kind_and_object() {
    let p = policy();
    let ok = |role: &str, sql: &str| p.check(Some(role), sql).is_ok();
    assert!(ok("reader", "SELECT * FROM items"));
    assert!(ok(
        "reader",
        "SELECT * FROM public.items JOIN public.orders USING (id)"
    ));
    assert!(ok("reader", "SELECT now()"));
    assert!(ok("reader", "BEGIN"));
    assert!(ok("reader", "COMMIT"));
    assert!(!ok("reader", "INSERT INTO items VALUES (1)"));
    assert!(!ok("reader", "SELECT * FROM items FOR UPDATE"));
    assert!(!ok("reader", "SELECT * FROM reports.daily"));
    assert!(!ok("reader", "SET search_path = reports"));
    assert!(!ok(
        "reader",
        "WITH d AS (DELETE FROM items RETURNING *) SELECT * FROM d"
    ));
    assert!(!ok("reader", "COPY items FROM STDIN"));
    assert!(ok(
        "analyst",
        "SELECT * FROM reports.daily JOIN items USING (id)"
    ));
    assert!(!ok("analyst", "SELECT * FROM public.users"));
    assert!(!ok(
        "analyst",
        "SELECT * FROM items UNION SELECT * FROM users"
    ));
    assert!(!ok(
        "analyst",
        "SELECT (SELECT max(id) FROM users) FROM items"
    ));
    // A quoted name is another name: not `items`.
    assert!(!ok("analyst", r#"SELECT * FROM "Items""#));
    assert!(ok("writer", "UPDATE items SET n = n + 1"));
    assert!(ok("writer", "COPY items FROM STDIN"));
    assert!(!ok("writer", "COPY orders FROM STDIN"));
    assert!(!ok("writer", "TRUNCATE items"));
    assert!(!ok("writer", "DROP TABLE items"));
    // Catalogs: unqualified pg_* names are pg_catalog's.
    assert!(!ok("writer", "SELECT * FROM pg_authid"));
    assert!(ok("admin", "DROP TABLE items"));
    assert!(ok("admin", "SET work_mem = '64MB'"));
    assert!(ok("app", "INSERT INTO app_1.t VALUES (1)"));
    assert!(!ok("app", "INSERT INTO other.t VALUES (1)"));
}

#[test]
fn denials_name_the_role_the_kind_and_the_object() {
    let p = policy();
    let e = p
        .check(Some("reader"), "DELETE FROM public.items")
        .unwrap_err();
    assert_eq!(e.kind(), crate::ErrorKind::Rejected);
    assert!(
        e.message()
            .contains(r#"role "reader" may not delete public.items"#),
        "{e}"
    );
    let e = p.check(Some("reader"), "LISTEN c").unwrap_err();
    assert!(e.message().contains("may not run LISTEN"), "{e}");
    let e = p.check(Some("nobody"), "SELECT 1").unwrap_err();
    assert!(
        e.message().contains(r#"role "nobody" is not configured"#),
        "{e}"
    );
    let e = p.check(None, "SELECT 1").unwrap_err();
    assert!(e.message().contains("no application role is acting"), "{e}");
    let e = p.check(Some("admin"), "SELEC 1").unwrap_err();
    assert!(e.message().contains("cannot be checked"), "{e}");
    let e = AccessPolicy::new()
        .role("w", AppRole::new().allow(&[Kind::Insert], "*"))
        .check(Some("w"), "SELECT 1")
        .unwrap_err();
    assert!(e.message().contains("it has no select permission"), "{e}");
    // The default role acts when none is set.
    let p = policy()
        .with_default_role("reader")
        .with_default_schema("reports");
    assert!(p.check(None, "SELECT * FROM public.items").is_ok());
    assert!(
        p.check(None, "SELECT * FROM items").is_err(),
        "items is reports.items now"
    );
    assert_eq!(p.get("reader").unwrap().server_role(), None);
    assert_eq!(p.roles().count(), 5);
    // A tenant's unqualified names are in its schema.
    let p = policy().with_tenant_schemas("app_");
    assert!(
        p.check_for(Some("app"), Some("1"), "INSERT INTO t VALUES (1)")
            .is_ok()
    );
    assert!(
        p.check_for(Some("app"), None, "INSERT INTO t VALUES (1)")
            .is_err()
    );
}

#[test]
fn patterns_match_as_documented() {
    assert!(matches_object("*", "s", "t"));
    assert!(matches_object("s.*", "s", "t"));
    assert!(matches_object("*.t", "x", "t"));
    assert!(matches_object("s.t_*", "s", "t_1"));
    assert!(matches_object("s.*_log", "s", "a_log"));
    assert!(!matches_object("s.*_log", "s", "a_logs"));
    assert!(matches_object("a*b*c.x", "aXbYc", "x"));
    assert!(!matches_object("a*b*c.x", "aXc", "x"));
    assert!(!matches_object("s.t", "s", "u"));
    assert!(
        !matches_object("t", "public", "t"),
        "unqualified patterns are resolved first"
    );
}
