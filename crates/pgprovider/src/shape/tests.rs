use super::{Kind, of};

fn accesses(sql: &str) -> Vec<(Kind, String)> {
    let s = of(sql);
    assert!(s.error.is_none(), "{sql}: {:?}", s.error);
    s.accesses
        .iter()
        .map(|a| {
            let name = match (&a.schema, &a.name) {
                (Some(s), Some(n)) => format!("{s}.{n}"),
                (None, Some(n)) => n.clone(),
                _ => a.what.to_string(),
            };
            (a.kind, name)
        })
        .collect()
}

#[test]
fn every_table_is_found_with_its_kind() {
    use Kind::*;
    let cases: &[(&str, &[(Kind, &str)])] = &[
        ("SELECT * FROM t WHERE id = $1", &[(Select, "t")]),
        (
            "SELECT * FROM s.t JOIN u ON true",
            &[(Select, "s.t"), (Select, "u")],
        ),
        (
            "INSERT INTO t (a) SELECT a FROM u",
            &[(Insert, "t"), (Select, "u")],
        ),
        (
            "UPDATE t SET a = 1 FROM u WHERE t.id = u.id",
            &[(Update, "t"), (Select, "u")],
        ),
        (
            "DELETE FROM t USING u WHERE t.id = u.id",
            &[(Delete, "t"), (Select, "u")],
        ),
        ("SELECT * FROM t FOR UPDATE", &[(Update, "t")]),
        (
            "INSERT INTO t (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET id = 2",
            &[(Insert, "t"), (Update, "t")],
        ),
        ("TRUNCATE a, s.b", &[(Truncate, "a"), (Truncate, "s.b")]),
        ("COPY t FROM STDIN", &[(Copy, "t")]),
        (
            "COPY (SELECT * FROM u) TO STDOUT",
            &[(Select, "u"), (Copy, "COPY")],
        ),
        ("CREATE TABLE s.n (id int)", &[(Ddl, "s.n")]),
        ("DROP TABLE s.n, m", &[(Ddl, "s.n"), (Ddl, "m")]),
        (
            "CREATE TABLE n AS SELECT * FROM secrets",
            &[(Ddl, "n"), (Select, "secrets")],
        ),
        ("SET search_path = x", &[(Other, "SET / RESET")]),
        ("LISTEN c", &[(Other, "LISTEN")]),
        ("EXPLAIN ANALYZE DELETE FROM t", &[(Delete, "t")]),
        ("SELECT 1", &[(Select, "SELECT")]),
        (
            "SELECT * FROM a UNION SELECT * FROM b",
            &[(Select, "a"), (Select, "b")],
        ),
        (
            "SELECT (SELECT max(x) FROM hidden) FROM t",
            &[(Select, "hidden"), (Select, "t")],
        ),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET n = 1 \
             WHEN NOT MATCHED THEN INSERT VALUES (1)",
            &[(Update, "t"), (Insert, "t"), (Select, "t"), (Select, "s")],
        ),
        ("CREATE INDEX i ON s.t (a)", &[(Ddl, "s.t")]),
        (
            "ALTER TABLE t ADD COLUMN c int REFERENCES u (id)",
            &[(Ddl, "t"), (Select, "u")],
        ),
        (
            "CREATE VIEW v AS SELECT * FROM u",
            &[(Ddl, "v"), (Select, "u")],
        ),
        ("ALTER TABLE t RENAME TO t2", &[(Ddl, "t")]),
        ("COMMENT ON TABLE s.t IS 'x'", &[(Ddl, "s.t")]),
        ("CREATE SEQUENCE s.q", &[(Ddl, "s.q")]),
        ("VACUUM t", &[(Other, "VACUUM / ANALYZE"), (Select, "t")]),
        ("LOCK TABLE t", &[(Other, "LOCK"), (Select, "t")]),
        ("CREATE SCHEMA x", &[(Ddl, "this DDL")]),
        ("DROP FUNCTION f()", &[(Ddl, "this DDL")]),
        ("SELECT nextval('s.\"Q\"')", &[(Update, "s.Q")]),
        (
            "SELECT * INTO TEMP n FROM u",
            &[(Ddl, "pg_temp.n"), (Select, "u")],
        ),
    ];
    for (sql, want) in cases {
        let mut got = accesses(sql);
        let mut want: Vec<(Kind, String)> =
            want.iter().map(|(k, n)| (*k, (*n).to_owned())).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{sql}");
    }
}

#[test]
fn common_table_expressions_are_scoped_as_postgresql_scopes_them() {
    use Kind::*;
    // A CTE named like a table hides it in the statement…
    assert_eq!(
        accesses("WITH t AS (SELECT 1) SELECT * FROM t"),
        vec![(Select, "SELECT".to_owned())]
    );
    // …but not in its own body (not recursive), nor outside the subquery that defines it.
    assert_eq!(
        accesses("WITH secrets AS (SELECT * FROM secrets) SELECT * FROM secrets"),
        vec![(Select, "secrets".to_owned())]
    );
    assert_eq!(
        accesses("SELECT * FROM secrets, (WITH secrets AS (SELECT 1) SELECT * FROM secrets) s"),
        vec![(Select, "secrets".to_owned())]
    );
    // A qualified name is never a CTE.
    assert_eq!(
        accesses("WITH t AS (SELECT 1) SELECT * FROM public.t"),
        vec![(Select, "public.t".to_owned())]
    );
    // Recursive: the body sees its own name.
    assert_eq!(
        accesses("WITH RECURSIVE r AS (SELECT 1 UNION ALL SELECT 1 FROM r) SELECT * FROM r"),
        vec![(Select, "SELECT".to_owned())]
    );
    // A data-changing CTE changes its table.
    assert_eq!(
        accesses("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"),
        vec![(Delete, "t".to_owned())]
    );
}

#[test]
fn injection_shapes_are_found_on_the_tree() {
    for sql in [
        "SELECT * FROM users WHERE name = '' OR '1'='1'",
        "SELECT * FROM users WHERE name = 'x' OR 1=1",
        "SELECT * FROM users WHERE id = 5 OR true",
        "SELECT * FROM users WHERE (id = 5) OR (2 > 1)",
        "SELECT * FROM users WHERE name = 'admin'--' AND password = 'x'",
        "SELECT name FROM users WHERE id = 1 UNION SELECT passwd FROM pg_shadow",
        "SELECT name FROM users WHERE id = 1 UNION SELECT table_name FROM information_schema.tables",
        "SELECT name FROM users WHERE id = 1 UNION SELECT query_to_xml('select 1', true, false, '')::text",
        "SELECT * FROM users WHERE name = 'x' OR id = id",
        "SELECT * FROM users WHERE name = 'x' OR EXISTS (SELECT 1)",
        "SELECT * FROM users WHERE name = 'x' OR 1 IN (SELECT 1)",
    ] {
        assert!(of(sql).injection.is_some(), "{sql}");
    }
    for sql in [
        "SELECT * FROM users WHERE name = $1 OR $2 IS NULL",
        "SELECT * FROM users WHERE name = $1 /* sqlcommenter='x' */",
        "SELECT * FROM users WHERE a = 1 OR b = 2",
        "SELECT * FROM users WHERE 1 = 1 AND name = $1",
        "SELECT a FROM x UNION SELECT b FROM y",
        "-- a leading comment\nSELECT 1",
    ] {
        assert_eq!(of(sql).injection, None, "{sql}");
    }
}

#[test]
fn literals_statements_and_fingerprints() {
    assert_eq!(
        of("SELECT * FROM t WHERE a = 'x' AND b = 2 LIMIT 10 OFFSET 5").literals,
        2
    );
    assert_eq!(
        of("SELECT * FROM t WHERE a IS NULL AND b = true").literals,
        0
    );
    assert_eq!(of("SELECT 1; SELECT 2").statements, 2);
    assert!(of("BEGIN ISOLATION LEVEL SERIALIZABLE").transaction_control);
    assert!(!of("SELECT 1").transaction_control);
    // Literal values do not change the shape; names, schemas and structure do.
    let a = of("SELECT * FROM t WHERE id = 1").fingerprint;
    assert_eq!(a, of("SELECT * FROM t WHERE id = 42").fingerprint);
    assert_eq!(a, of("select *   from t where id = $1").fingerprint);
    assert_ne!(a, of("SELECT * FROM t WHERE id = 1 OR 1 = 1").fingerprint);
    assert_ne!(a, of("SELECT * FROM u WHERE id = 1").fingerprint);
    assert_ne!(a, of("SELECT * FROM other.t WHERE id = 1").fingerprint);
    assert_ne!(
        of("SELECT * FROM t AS x").fingerprint,
        of("SELECT * FROM u AS x").fingerprint
    );
    assert_ne!(
        of("SELECT * FROM orders_2024").fingerprint,
        of("SELECT * FROM orders_2025").fingerprint
    );
    assert_eq!(
        &*of("SELECT * FROM t WHERE id = 7").normalized,
        "SELECT * FROM t WHERE id = $1"
    );
    let bad = of("SELEC nonsense");
    assert!(bad.error.is_some());
    assert_eq!(bad.hex().len(), 16);
}
