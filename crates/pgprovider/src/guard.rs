//! The statement guard: decides on PostgreSQL's own parse tree (libpg_query, through
//! [`pg_query`]) whether a tenant may send a statement, never on its text.
//!
//! PostgreSQL's grammar defeats textual filters: identifiers can be quoted (`"set_config"`)
//! or Unicode-escaped (`U&"set\005fconfig"`), names qualified (`pg_catalog.set_config`),
//! comments and dollar quotes hide words, and one string can hold several statements. The
//! parser resolves all of that; the guard then walks the **whole** tree (serialised once,
//! so no node kind can be skipped) and allows:
//!
//! - exactly one statement, of an allowed kind: `SELECT`, `INSERT`, `UPDATE`, `DELETE`,
//!   `MERGE`, `EXPLAIN` of those, `SHOW`, and DDL on tables, indexes, views and
//!   sequences (`CREATE`, `ALTER` with column and constraint changes only, `DROP`,
//!   `TRUNCATE`, renames, comments); `COPY` only to and from the client (never files or
//!   programs). Everything else is refused: transaction control of every kind, `SET` /
//!   `RESET` / `SET ROLE` / `SET SESSION AUTHORIZATION`, `DISCARD`, `DO`, functions,
//!   procedures, triggers, rules, policies, roles and grants, `PREPARE` / `EXECUTE`,
//!   `LISTEN` / `NOTIFY`, `LOAD`, `ALTER SYSTEM`, schemas, extensions, `VACUUM`, …;
//! - no call, anywhere in the tree, of a function that changes settings or reaches outside
//!   the database (`set_config`, server files, large objects, advisory session locks,
//!   signalling backends, `query_to_xml` and friends that run SQL given as text,
//!   `pg_notify`, `dblink`, …), however its name is written;
//! - no write to `pg_settings` (an updatable view over `set_config`);
//! - with an own schema (schema and role strategies), no table, view, sequence or function
//!   qualified with another schema than the tenant's, `public` (shared by convention),
//!   `pg_catalog` or `information_schema`.
//!
//! Decisions are cached per statement text (a parse costs tens of microseconds; a cache hit
//! is a hash lookup, measured by the tenancy benchmark).

use crate::{Error, ErrorKind, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// What the parse tree says of one statement, independent of the tenant.
#[derive(Clone, Debug)]
enum Facts {
    /// Allowed kind; the schemas it names explicitly.
    Allowed { schemas: Arc<[String]> },
    /// Refused whatever the tenant: the statement kind (or construct) and why.
    Refused { what: String, why: String },
}

const CACHE_CAP: usize = 10_000;

fn cache() -> &'static Mutex<HashMap<Box<str>, Facts>> {
    static CACHE: OnceLock<Mutex<HashMap<Box<str>, Facts>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Checks `sql` for `tenant`, whose own schema (if the strategy has one) is `schema`.
///
/// # Errors
/// [`ErrorKind::Rejected`] naming the tenant, the statement kind and why.
pub(crate) fn check(tenant: &str, schema: Option<&str>, sql: &str) -> Result<()> {
    let facts = {
        let cached = crate::pool::lock(cache()).get(sql).cloned();
        match cached {
            Some(f) => f,
            None => {
                let f = facts_of(sql);
                let mut c = crate::pool::lock(cache());
                if c.len() >= CACHE_CAP {
                    c.clear();
                }
                c.insert(sql.into(), f.clone());
                f
            }
        }
    };
    let refuse = |what: &str, why: &str| {
        Err(Error::new(
            ErrorKind::Rejected,
            format!("tenant {tenant}: {what} refused: {why}"),
        )
        .with_tenant(tenant)
        .with_hint(
            "tenant handles run plain statements in the tenant's scope; the provider sets the \
             role, search_path and settings. Run administration outside tenant handles",
        ))
    };
    match facts {
        Facts::Refused { what, why } => refuse(&what, &why),
        Facts::Allowed { schemas } => {
            if let Some(own) = schema {
                if let Some(other) = schemas.iter().find(|s| {
                    !matches!(s.as_str(), "pg_catalog" | "information_schema" | "public")
                        && *s != own
                }) {
                    return refuse(
                        "a name qualified with another schema",
                        &format!("schema {other:?} is not the tenant's"),
                    );
                }
            }
            Ok(())
        }
    }
}

/// Statement kinds a tenant may send (the keys of the parse tree's nodes).
const ALLOWED: &[&str] = &[
    "SelectStmt",
    "InsertStmt",
    "UpdateStmt",
    "DeleteStmt",
    "MergeStmt",
    "ExplainStmt",
    "VariableShowStmt",
    "CreateStmt",
    "CreateTableAsStmt",
    "IndexStmt",
    "AlterTableStmt",
    "DropStmt",
    "TruncateStmt",
    "ViewStmt",
    "CreateSeqStmt",
    "AlterSeqStmt",
    "RenameStmt",
    "CommentStmt",
    "CopyStmt",
];

/// Nodes refused wherever they appear in a tree (belt and braces: the allowed kinds cannot
/// nest them today).
const NEVER: &[&str] = &[
    "TransactionStmt",
    "VariableSetStmt",
    "DiscardStmt",
    "DoStmt",
    "CreateFunctionStmt",
    "AlterFunctionStmt",
    "CallStmt",
    "CreateTrigStmt",
    "RuleStmt",
    "CreatePolicyStmt",
    "AlterPolicyStmt",
    "ListenStmt",
    "UnlistenStmt",
    "NotifyStmt",
    "LoadStmt",
    "AlterSystemStmt",
    "AlterRoleStmt",
    "AlterRoleSetStmt",
    "CreateRoleStmt",
    "DropRoleStmt",
    "GrantStmt",
    "GrantRoleStmt",
    "PrepareStmt",
    "ExecuteStmt",
    "DeallocateStmt",
    "CreateSchemaStmt",
    "AlterOwnerStmt",
    "CreateExtensionStmt",
];

/// Functions refused by exact name, and by prefix.
const FUNCTIONS: &[&str] = &[
    "set_config",
    "pg_stat_file",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_notify",
    "pg_logical_emit_message",
    "pg_switch_wal",
    "pg_promote",
    "pg_create_restore_point",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_log_backend_memory_contexts",
    "pg_import_system_collations",
    "pg_drop_replication_slot",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "loread",
    "lowrite",
    "ts_stat",
    "ts_rewrite",
    "pg_sequence_last_value",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_show_all_file_settings",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "lastval",
    "currval",
    "setseed",
];

/// Catalog relations a tenant may not read: credentials, statistics (which hold column
/// values), other sessions' statements, server files and large objects.
const SECRET_RELATIONS: &[&str] = &[
    "pg_authid",
    "pg_shadow",
    "pg_user_mapping",
    "pg_user_mappings",
    "pg_statistic",
    "pg_statistic_ext_data",
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_largeobject",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_file_settings",
    "pg_stat_activity",
    "pg_stat_statements",
    "pg_sequences",
];
const FUNCTION_PREFIXES: &[&str] = &[
    "pg_read_",
    "pg_ls_",
    "pg_file_",
    "lo_",
    "dblink",
    "pg_advisory_lock",
    "pg_advisory_unlock",
    "pg_try_advisory_lock",
    "pg_replication_origin",
    "pg_stat_get_",
    "pg_logical_",
    "pg_copy_",
    "query_to_xml",
    "cursor_to_xml",
    "table_to_xml",
    "schema_to_xml",
    "database_to_xml",
];

fn denied_function(name: &str) -> bool {
    FUNCTIONS.contains(&name) || FUNCTION_PREFIXES.iter().any(|p| name.starts_with(p))
}

fn refused(what: impl Into<String>, why: impl Into<String>) -> Facts {
    Facts::Refused {
        what: what.into(),
        why: why.into(),
    }
}

fn facts_of(sql: &str) -> Facts {
    let parsed = match pg_query::parse(sql, 0) {
        Ok(p) => p,
        Err(e) => {
            return refused(
                "the statement",
                format!("PostgreSQL's parser rejects it ({e})"),
            );
        }
    };
    let stmts = &parsed.protobuf.stmts;
    if stmts.len() != 1 {
        return refused(
            format!("{} statements in one call", stmts.len()),
            "send one statement per call",
        );
    }
    let Some(node) = stmts[0].stmt.as_ref().and_then(|s| s.node.as_ref()) else {
        return refused("an empty statement", "nothing to run");
    };
    if let Some(f) = typed_checks(node) {
        return f;
    }
    let tree = match serde_json::to_value(&parsed.protobuf) {
        Ok(v) => v,
        Err(e) => {
            return refused(
                "the statement",
                format!("its parse tree cannot be read ({e})"),
            );
        }
    };
    let kind = tree["stmts"][0]["stmt"]["node"]
        .as_object()
        .and_then(|o| o.keys().next().cloned())
        .unwrap_or_default();
    if !ALLOWED.contains(&kind.as_str()) {
        return refused(
            statement_name(&kind),
            "only queries, data changes and DDL on tables, indexes, views and sequences run through tenant handles",
        );
    }
    let (mut schemas, mut relations) = (Vec::new(), Vec::new());
    if let Some(f) = walk(&tree, &mut schemas, &mut relations) {
        return f;
    }
    // Catalogs only in plain reads: a view over one is updatable (pg_class rewritten with
    // a superuser login, pg_settings calling set_config), a lock on one stalls the server.
    if let Some(name) = relations.first() {
        if kind != "SelectStmt" && kind != "ExplainStmt" {
            return refused(
                format!("{name} outside a plain read"),
                "a view, table or lock over a system catalog could change the server or the session",
            );
        }
    }
    // Objects named by lists of names (`DROP TABLE s.t`, `COMMENT ON TABLE s.t`).
    if let Some(objects) = tree["stmts"][0]["stmt"]["node"]
        .as_object()
        .and_then(|o| o.values().next())
        .and_then(|v| match (&v["objects"], &v["object"]) {
            (Value::Array(a), _) => Some(a.clone()),
            (_, o @ Value::Object(_)) => Some(vec![o.clone()]),
            _ => None,
        })
    {
        for o in objects {
            let names: Vec<&str> = o["node"]["List"]["items"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|i| i["node"]["String"]["sval"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            // A column is named `[schema.]table.column`.
            let at = if kind == "CommentStmt" && tree_objtype_is_member(&tree) {
                3
            } else {
                2
            };
            if names.len() >= at {
                schemas.push(names[names.len() - at].to_owned());
            }
        }
    }
    schemas.sort();
    schemas.dedup();
    Facts::Allowed {
        schemas: schemas.into(),
    }
}

/// Whether a `COMMENT` is on a member of a table (a column or constraint), named
/// `[schema.]table.member`.
fn tree_objtype_is_member(tree: &Value) -> bool {
    use pg_query::protobuf::ObjectType as O;
    let t = tree["stmts"][0]["stmt"]["node"]["CommentStmt"]["objtype"].as_i64();
    matches!(
        t.and_then(|t| O::try_from(t as i32).ok()),
        Some(O::ObjectColumn | O::ObjectTabconstraint)
    )
}

/// Checks that need the typed tree (enum values).
fn typed_checks(node: &pg_query::NodeEnum) -> Option<Facts> {
    use pg_query::NodeEnum as N;
    use pg_query::protobuf::{AlterTableType as A, ObjectType as O};
    let objects_ok = |t: i32| {
        matches!(
            O::try_from(t),
            Ok(O::ObjectTable
                | O::ObjectIndex
                | O::ObjectView
                | O::ObjectSequence
                | O::ObjectMatview
                | O::ObjectColumn
                | O::ObjectTabconstraint)
        )
    };
    match node {
        N::CopyStmt(c) if c.is_program || !c.filename.is_empty() => Some(refused(
            "COPY to or from a file or program",
            "only COPY to and from the client runs through tenant handles",
        )),
        N::DropStmt(d) if !objects_ok(d.remove_type) => Some(refused(
            "DROP of this kind of object",
            "tenants drop only tables, indexes, views and sequences",
        )),
        N::RenameStmt(r) if !objects_ok(r.rename_type) => Some(refused(
            "renaming this kind of object",
            "tenants rename only tables, columns, indexes, views and sequences",
        )),
        N::CommentStmt(c) if !objects_ok(c.objtype) => Some(refused(
            "COMMENT on this kind of object",
            "tenants comment only on tables, columns, indexes, views and sequences",
        )),
        N::AlterTableStmt(a) => {
            if !objects_ok(a.objtype) {
                return Some(refused(
                    "ALTER of this kind of object",
                    "tenants alter only tables, indexes, views and sequences",
                ));
            }
            for cmd in &a.cmds {
                if let Some(N::AlterTableCmd(c)) = cmd.node.as_ref() {
                    let ok = matches!(
                        A::try_from(c.subtype),
                        Ok(A::AtAddColumn
                            | A::AtColumnDefault
                            | A::AtDropNotNull
                            | A::AtSetNotNull
                            | A::AtDropColumn
                            | A::AtAlterColumnType
                            | A::AtAddConstraint
                            | A::AtDropConstraint
                            | A::AtValidateConstraint
                            | A::AtAddIndex
                            | A::AtAddIdentity
                            | A::AtSetIdentity
                            | A::AtDropIdentity)
                    );
                    if !ok {
                        let name = A::try_from(c.subtype).map_or("?", |t| t.as_str_name());
                        return Some(refused(
                            format!("ALTER TABLE … {name}"),
                            "tenants change only columns, defaults and constraints (not owners, row security, triggers or rules)",
                        ));
                    }
                }
            }
            None
        }
        _ => None,
    }
}

/// Walks every node; returns a refusal, or collects the schemas named explicitly.
fn walk(v: &Value, schemas: &mut Vec<String>, relations: &mut Vec<String>) -> Option<Facts> {
    match v {
        Value::Array(items) => items.iter().find_map(|i| walk(i, schemas, relations)),
        Value::Object(o) => {
            for (k, child) in o {
                if NEVER.contains(&k.as_str()) {
                    return Some(refused(
                        statement_name(k),
                        "it could leave the tenant's scope",
                    ));
                }
                if matches!(
                    k.as_str(),
                    "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt"
                ) {
                    let rel = &child["relation"];
                    let name = rel["relname"].as_str().unwrap_or("");
                    let schema = rel["schemaname"].as_str().unwrap_or("");
                    // Catalogs (a superuser login could rewrite them: rename another
                    // tenant's table into this one's schema), pg_settings (set_config).
                    if name.starts_with("pg_")
                        || matches!(schema, "pg_catalog" | "information_schema")
                    {
                        return Some(refused(
                            format!("a write to {name}"),
                            "system catalogs and settings are not the tenant's data",
                        ));
                    }
                }
            }
            // A range variable (table, view, sequence), whatever node holds it.
            if o.contains_key("relname") && o.contains_key("relpersistence") {
                let schema = o.get("schemaname").and_then(Value::as_str).unwrap_or("");
                // Temporary objects live as long as the session, not the transaction: the
                // next tenant on the same connection would find them first (the temporary
                // schema is searched before the search_path).
                if o.get("relpersistence").and_then(Value::as_str) == Some("t")
                    || schema.starts_with("pg_temp")
                    || schema.starts_with("pg_toast")
                {
                    return Some(refused(
                        "a temporary table, view or sequence",
                        "temporary objects outlive the tenant's transaction on a shared connection",
                    ));
                }
                if !schema.is_empty() {
                    schemas.push(schema.to_owned());
                }
                let name = o.get("relname").and_then(Value::as_str).unwrap_or("");
                if SECRET_RELATIONS.contains(&name) {
                    return Some(refused(
                        format!("reading {name}"),
                        "it holds credentials, column values or other sessions' statements",
                    ));
                }
                if name.starts_with("pg_") || matches!(schema, "pg_catalog" | "information_schema")
                {
                    relations.push(name.to_owned());
                }
            }
            // A function called with field-selection syntax, `(expr).func` or `t.func`:
            // the parser leaves the name as a plain string.
            let selected: Vec<&str> = match (o.get("indirection"), o.get("fields")) {
                (Some(Value::Array(parts)), _) => parts
                    .iter()
                    .filter_map(|p| p["node"]["String"]["sval"].as_str())
                    .collect(),
                (_, Some(Value::Array(parts))) if parts.len() > 1 => parts
                    .iter()
                    .skip(1)
                    .filter_map(|p| p["node"]["String"]["sval"].as_str())
                    .collect(),
                _ => Vec::new(),
            };
            if let Some(name) = selected
                .iter()
                .find(|n| denied_function(n) || matches!(**n, "nextval" | "setval"))
            {
                return Some(refused(
                    format!("a call of {name}"),
                    "it changes settings or reaches outside the tenant's data",
                ));
            }
            // Operators qualified with a schema: `OPERATOR(s.+)`.
            if let Some(Value::Array(parts)) = o.get("name") {
                let names: Vec<&str> = parts
                    .iter()
                    .filter_map(|p| p["node"]["String"]["sval"].as_str())
                    .collect();
                if names.len() > 1 {
                    schemas.push(names[names.len() - 2].to_owned());
                }
            }
            // `OWNED BY s.t.c`.
            if o.get("defname").and_then(Value::as_str) == Some("owned_by") {
                let names: Vec<&str> = o["arg"]["node"]["List"]["items"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| p["node"]["String"]["sval"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                if names.len() >= 3 {
                    schemas.push(names[names.len() - 3].to_owned());
                }
            }
            // A function call (or a function named by a DDL node).
            for key in ["funcname", "objname"] {
                if let Some(Value::Array(parts)) = o.get(key) {
                    let names: Vec<&str> = parts
                        .iter()
                        .filter_map(|p| p["node"]["String"]["sval"].as_str())
                        .collect();
                    if let Some(name) = names.last() {
                        if denied_function(name) {
                            return Some(refused(
                                format!("a call of {name}"),
                                "it changes settings or reaches outside the tenant's data",
                            ));
                        }
                    }
                    if key == "funcname" && names.len() > 1 {
                        schemas.push(names[names.len() - 2].to_owned());
                    }
                    // Sequences named in a string (`nextval('s.seq')`): the schema, if
                    // any, must pass the same test.
                    if key == "funcname"
                        && names
                            .last()
                            .is_some_and(|n| matches!(*n, "nextval" | "currval" | "setval"))
                    {
                        if let Some(arg) = o.get("args").and_then(|a| a.get(0)) {
                            let Some(lit) = arg["node"]["AConst"]["val"]["Sval"]["sval"].as_str()
                            else {
                                return Some(refused(
                                    format!(
                                        "{} with a computed sequence name",
                                        names[names.len() - 1]
                                    ),
                                    "name the sequence with a literal",
                                ));
                            };
                            if let Some(schema) = literal_schema(lit) {
                                schemas.push(schema);
                            }
                        }
                    }
                }
            }
            o.values().find_map(|c| walk(c, schemas, relations))
        }
        _ => None,
    }
}

/// The schema of a qualified name written in a string (`'s.seq'`, `'"S".seq'`), folded as
/// PostgreSQL folds it (quoted: as written; unquoted: lowercase).
fn literal_schema(lit: &str) -> Option<String> {
    let (schema, _) = lit.trim().rsplit_once('.')?;
    Some(
        match schema.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            Some(quoted) => quoted.replace("\"\"", "\""),
            None => schema.to_lowercase(),
        },
    )
}

/// `SelectStmt` → `SELECT`-ish names people recognise.
fn statement_name(kind: &str) -> String {
    let known = [
        ("TransactionStmt", "transaction control"),
        ("VariableSetStmt", "SET / RESET"),
        ("DiscardStmt", "DISCARD"),
        ("DoStmt", "DO"),
        ("CreateFunctionStmt", "CREATE FUNCTION / PROCEDURE"),
        ("CallStmt", "CALL"),
        ("CreateTrigStmt", "CREATE TRIGGER"),
        ("RuleStmt", "CREATE RULE"),
        ("ListenStmt", "LISTEN"),
        ("NotifyStmt", "NOTIFY"),
        ("LoadStmt", "LOAD"),
        ("AlterSystemStmt", "ALTER SYSTEM"),
        ("AlterRoleStmt", "ALTER ROLE"),
        ("PrepareStmt", "PREPARE"),
        ("ExecuteStmt", "EXECUTE"),
        ("CopyStmt", "COPY"),
    ];
    known.iter().find(|(k, _)| *k == kind).map_or_else(
        || kind.trim_end_matches("Stmt").to_owned(),
        |(_, n)| (*n).to_owned(),
    )
}

#[cfg(test)]
mod tests {
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
}
