//! The statement guard's decisions, without a server.

use super::*;

fn refused(sql: &str) -> String {
    match check("acme", Some("acme"), sql) {
        Err(e) => e.to_string(),
        Ok(()) => panic!("allowed: {sql}"),
    }
}

#[test]
fn the_parser_decides_however_names_are_written() {
    for sql in [
        "SELECT set_config('role', 'x', true)",
        "SELECT pg_catalog.set_config('search_path', 'other', true)",
        "SELECT \"set_config\"('app.tenant_id', 'other', true)",
        "SELECT U&\"set\\005fconfig\"('app.tenant_id', 'other', true)",
        "SELECT * FROM t WHERE x = (SELECT set_config('role','x',true))",
        "CREATE TABLE t (x text DEFAULT set_config('role','x',true))",
        "SELECT 1; SET ROLE postgres",
        "SET ROLE postgres",
        "set local search_path = other",
        "RESET ROLE",
        "SET SESSION AUTHORIZATION postgres",
        "COMMIT",
        "END",
        "ABORT",
        "ROLLBACK",
        "START TRANSACTION",
        "SAVEPOINT s",
        "RELEASE SAVEPOINT s",
        "PREPARE TRANSACTION 'x'",
        "DISCARD ALL",
        "DO $$ BEGIN PERFORM 1; END $$",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql AS 'SELECT 1'",
        "CREATE TRIGGER t BEFORE INSERT ON x FOR EACH ROW EXECUTE FUNCTION f()",
        "CREATE RULE r AS ON INSERT TO x DO INSTEAD NOTHING",
        "COPY t TO '/tmp/x'",
        "COPY t FROM PROGRAM 'id'",
        "LISTEN c",
        "NOTIFY c",
        "LOAD 'x'",
        "ALTER SYSTEM SET work_mem = '1MB'",
        "ALTER ROLE acme SUPERUSER",
        "PREPARE p AS SELECT 1",
        "EXECUTE p",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT lo_import('/etc/passwd')",
        "SELECT pg_advisory_lock(1)",
        "SELECT query_to_xml('select * from other.t', true, true, '')",
        "UPDATE pg_settings SET setting = 'other' WHERE name = 'search_path'",
        "WITH x AS (UPDATE pg_catalog.pg_settings SET setting = 'x' WHERE name = 'role' RETURNING 1) SELECT 1",
        "SELECT * FROM other.items",
        "SELECT ('/etc/passwd'::text).pg_read_file",
        "SELECT ('SELECT v FROM other.items'::text).ts_stat",
        "SELECT (424242::bigint).pg_advisory_lock",
        "SELECT t.pg_read_file FROM (SELECT '/etc/passwd'::text) t",
        "SELECT ts_rewrite('a'::tsquery, 'SELECT 1')",
        "UPDATE pg_catalog.pg_class SET relname = 'x' WHERE oid = 'other.items'::regclass",
        "UPDATE pg_class SET relname = 'x'",
        "DELETE FROM pg_catalog.pg_inherits",
        "INSERT INTO information_schema.sql_features VALUES ('x')",
        "SELECT * FROM pg_stats WHERE schemaname = 'other'",
        "SELECT rolpassword FROM pg_authid",
        "SELECT query FROM pg_catalog.pg_stat_activity",
        "SELECT pg_sequence_last_value('other.s')",
        "CREATE VIEW s AS SELECT * FROM pg_catalog.pg_settings",
        "CREATE TABLE s AS SELECT * FROM pg_settings",
        "COMMENT ON COLUMN other.items.name IS 'x'",
        "CREATE SEQUENCE s OWNED BY other.items.id",
        "SELECT 1 OPERATOR(other.+) 2",
        "CREATE VIEW cls AS SELECT * FROM pg_catalog.pg_class",
        "CREATE VIEW ns AS SELECT * FROM pg_namespace",
        "LOCK TABLE items IN ACCESS EXCLUSIVE MODE",
        "LOCK pg_catalog.pg_class",
        "SELECT query FROM pg_catalog.pg_stat_get_activity(NULL)",
        "SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s",
        "SELECT * FROM pg_show_all_file_settings()",
        "SELECT * FROM pg_hba_file_rules()",
        "SELECT ('other.s'::regclass).nextval",
        "SELECT last_value FROM pg_catalog.pg_sequences",
        "SELECT setseed(0.42)",
        "SELECT lastval()",
        "SELECT currval('shared_seq')",
        "COMMENT ON CONSTRAINT c ON other.acme IS 'x'",
        "SELECT nextval('16404')",
        "SELECT setval(' 16404', 1000)",
        "SELECT name, statement FROM pg_prepared_statements",
        "SELECT * FROM pg_catalog.pg_prepared_statement()",
        "SELECT * FROM pg_cursors",
        "SELECT currtid2('other.t', '(0,1)')",
        "SELECT brin_summarize_range('other.i', 0)",
        "SELECT pg_stat_reset_single_table_counters('other.t'::regclass)",
        "CREATE TABLE y (c other.items)",
        "SELECT NULL::other.items",
        "CREATE TEMP TABLE items (name text)",
        "CREATE TEMPORARY VIEW v AS SELECT 1",
        "SELECT 'x' AS name INTO TEMP items",
        "CREATE TABLE pg_temp.items (name text)",
        "SELECT * FROM pg_temp.items",
        "CREATE TEMP SEQUENCE s",
        "DROP TABLE other.items",
        "DROP TABLE items, other.items",
        "COMMENT ON TABLE other.items IS 'x'",
        "SELECT nextval('other.items_id_seq')",
        "SELECT setval('\"other\".items_id_seq', 1)",
        "SELECT nextval('\"Acme\".items_id_seq')",
        "SELECT nextval(concat('other', '.s'))",
        "SELECT ts_stat('SELECT v FROM other.items')",
        "SELECT * FROM \"other\".items",
        "SELECT * FROM U&\"oth\\0065r\".items",
        "INSERT INTO other.items VALUES (1)",
        "SELECT other.f()",
        "CREATE VIEW v AS SELECT * FROM other.items",
        "ALTER TABLE items OWNER TO postgres",
        "ALTER TABLE items DISABLE ROW LEVEL SECURITY",
        "DROP SCHEMA other CASCADE",
        "CREATE SCHEMA x",
        "GRANT SELECT ON items TO PUBLIC",
        "SELECT 1 /* unterminated",
        "",
    ] {
        let e = refused(sql);
        assert!(e.contains("tenant acme"), "{sql}: {e}");
    }
}

#[test]
fn plain_statements_pass_and_decisions_are_cached() {
    for sql in [
        "SELECT 1",
        "SELECT * FROM items WHERE id = $1",
        "SELECT * FROM acme.items",
        "SELECT count(*) FROM pg_catalog.pg_class",
        "SELECT current_setting('search_path'), pg_advisory_xact_lock(1)",
        "INSERT INTO items (body) VALUES ($1) RETURNING id",
        "WITH d AS (DELETE FROM items RETURNING *) SELECT count(*) FROM d",
        "CREATE TABLE IF NOT EXISTS notes (body text)",
        "ALTER TABLE notes ADD COLUMN n int DEFAULT 0",
        "DROP TABLE IF EXISTS notes",
        "CREATE INDEX ON items (id)",
        "TRUNCATE items",
        "SELECT nextval('items_id_seq'), nextval('acme.items_id_seq')",
        "DROP TABLE acme.notes",
        "COMMENT ON COLUMN acme.notes.body IS 'x'",
        "COMMENT ON COLUMN notes.body IS 'x'",
        "SELECT name, setting FROM pg_settings WHERE name = 'work_mem'",
        "SELECT n.body FROM notes n",
        "SELECT 1 OPERATOR(pg_catalog.+) 2",
        "CREATE TABLE IF NOT EXISTS typed (a integer, b varchar(3), c timestamptz, d acme.notes)",
        "SELECT 1::int, '1'::numeric(3, 1), NULL::pg_catalog.text",
        "EXPLAIN SELECT 1",
        "COPY items FROM STDIN",
        "SELECT 'SET ROLE postgres; set_config' AS harmless_text",
        "SELECT $$ COMMIT $$",
    ] {
        check("acme", Some("acme"), sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    // Another tenant's schema is refused for acme, fine without an own schema.
    assert!(check("acme", Some("acme"), "SELECT * FROM other.items").is_err());
    check("acme", None, "SELECT * FROM other.items").unwrap();
    // Temporary objects, whatever the strategy.
    for sql in [
        "CREATE TABLE pg_temp.items (name text)",
        "SELECT 'x' AS name INTO TEMP items",
        "CREATE TEMP TABLE t AS SELECT 1",
    ] {
        assert!(check("acme", None, sql).is_err(), "{sql}");
    }
    assert!(crate::pool::lock(cache()).contains_key("SELECT * FROM other.items"));
}
