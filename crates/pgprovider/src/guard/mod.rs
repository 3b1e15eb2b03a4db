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

mod lists;
use lists::{ALLOWED, FUNCTION_PREFIXES, FUNCTIONS, NEVER, SECRET_RELATIONS};

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

/// Whether calling `name` changes settings or reaches outside the data (also the
/// firewall's and role-based access's list).
pub(crate) fn denied_function(name: &str) -> bool {
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
            // Operators qualified with a schema, `OPERATOR(s.+)`, and types, `s.t`.
            for key in ["name", "names"] {
                let Some(Value::Array(parts)) = o.get(key) else {
                    continue;
                };
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
                            // An all-digit name is an OID: any sequence at all.
                            if lit.trim().starts_with(|c: char| c.is_ascii_digit()) {
                                return Some(refused(
                                    "a sequence named by its OID",
                                    "name the sequence",
                                ));
                            }
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

/// Reports a tenant statement that changed its scope (the server's check caught it).
pub(crate) fn scope_breach(tenant: &str, e: &crate::Error) {
    tracing::error!(
        target: "pgprovider::security",
        tenant,
        node = e.node().unwrap_or("?"),
        "a tenant statement changed its scope; rolled back, connection closed"
    );
}

#[cfg(test)]
mod tests;
