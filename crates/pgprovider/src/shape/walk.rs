//! The walk over a statement's parse tree (as JSON): its accesses, literals and injection
//! shapes.

use super::{Access, Kind};
use pg_query::protobuf::{BoolExprType, SetOperation};
use serde_json::{Map, Value};

#[derive(Default)]
pub(super) struct Walker {
    pub(super) accesses: Vec<Access>,
    pub(super) literals: usize,
    pub(super) injection: Option<String>,
    /// CTE names visible here, innermost last.
    ctes: Vec<String>,
}

/// Utility statements and their names, for denials.
const OTHER: &[(&str, &str)] = &[
    ("VariableSetStmt", "SET / RESET"),
    ("VariableShowStmt", "SHOW"),
    ("DiscardStmt", "DISCARD"),
    ("DoStmt", "DO"),
    ("CallStmt", "CALL"),
    ("ListenStmt", "LISTEN"),
    ("UnlistenStmt", "UNLISTEN"),
    ("NotifyStmt", "NOTIFY"),
    ("LoadStmt", "LOAD"),
    ("AlterSystemStmt", "ALTER SYSTEM"),
    ("PrepareStmt", "PREPARE"),
    ("ExecuteStmt", "EXECUTE"),
    ("DeallocateStmt", "DEALLOCATE"),
    ("GrantStmt", "GRANT / REVOKE"),
    ("GrantRoleStmt", "GRANT / REVOKE role"),
    ("CreateRoleStmt", "CREATE ROLE"),
    ("AlterRoleStmt", "ALTER ROLE"),
    ("DropRoleStmt", "DROP ROLE"),
    ("VacuumStmt", "VACUUM / ANALYZE"),
    ("LockStmt", "LOCK"),
    ("CheckPointStmt", "CHECKPOINT"),
    ("ClusterStmt", "CLUSTER"),
    ("ReindexStmt", "REINDEX"),
    ("DeclareCursorStmt", "DECLARE CURSOR"),
    ("FetchStmt", "FETCH / MOVE"),
    ("ClosePortalStmt", "CLOSE"),
    ("CreatedbStmt", "CREATE DATABASE"),
    ("DropdbStmt", "DROP DATABASE"),
    ("ConstraintsSetStmt", "SET CONSTRAINTS"),
    ("RefreshMatViewStmt", "REFRESH MATERIALIZED VIEW"),
];

impl Walker {
    /// One statement node (`{"SelectStmt": {…}}`).
    pub(super) fn statement(&mut self, node: &Map<String, Value>) {
        let Some((kind, body)) = node.iter().next() else {
            return;
        };
        match kind.as_str() {
            "TransactionStmt" => {}
            "ExplainStmt" => self.walk(&body["query"], Kind::Select),
            "SelectStmt" | "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => {
                self.node(kind, body, Kind::Select)
            }
            "CopyStmt" => {
                if body["is_program"].as_bool().unwrap_or(false)
                    || body["filename"].as_str().is_some_and(|f| !f.is_empty())
                {
                    self.nameless(Kind::Other, "COPY to or from a file or program");
                }
                if body["relation"].is_object() {
                    self.target(&body["relation"], Kind::Copy);
                } else {
                    self.nameless(Kind::Copy, "COPY");
                }
                self.walk(&body["query"], Kind::Select);
            }
            "TruncateStmt" => {
                for r in body["relations"].as_array().into_iter().flatten() {
                    self.target(&r["node"]["RangeVar"], Kind::Truncate);
                }
                if cascades(body) {
                    self.nameless(Kind::Truncate, "TRUNCATE … CASCADE");
                }
            }
            k => {
                if let Some((_, what)) = OTHER.iter().find(|(n, _)| *n == k) {
                    self.accesses.push(Access {
                        kind: Kind::Other,
                        schema: None,
                        name: None,
                        what: (*what).into(),
                    });
                    self.walk(body, Kind::Select);
                } else {
                    self.ddl(k, body);
                }
            }
        }
    }

    /// An access to no object in particular: only a grant on `*` (or, for reads and
    /// `COPY`, any grant of the kind) covers it.
    fn nameless(&mut self, kind: Kind, what: impl Into<std::borrow::Cow<'static, str>>) {
        self.accesses.push(Access {
            kind,
            schema: None,
            name: None,
            what: what.into(),
        });
    }

    /// DDL: every relation it names, and every table, index, view or sequence named by a
    /// list of names; any other kind of object (schemas, functions, triggers, extensions,
    /// roles, …) or `CASCADE` is DDL on no object in particular.
    fn ddl(&mut self, kind: &str, body: &Value) {
        use pg_query::protobuf::ObjectType as O;
        let relation_like = |t: Option<i64>| {
            matches!(
                t.and_then(|t| O::try_from(t as i32).ok()),
                Some(
                    O::ObjectTable
                        | O::ObjectIndex
                        | O::ObjectView
                        | O::ObjectSequence
                        | O::ObjectMatview
                        | O::ObjectForeignTable
                )
            )
        };
        let named = match kind {
            "CreateStmt" | "AlterTableStmt" | "IndexStmt" | "ViewStmt" | "CreateTableAsStmt"
            | "CreateSeqStmt" | "AlterSeqStmt" => true,
            "DropStmt" => relation_like(body["remove_type"].as_i64()),
            "RenameStmt" => relation_like(body["rename_type"].as_i64()),
            "CommentStmt" => relation_like(body["objtype"].as_i64()),
            _ => false,
        };
        if !named || cascades(body) {
            self.nameless(Kind::Ddl, "this DDL");
        }
        let before = self.accesses.len();
        // The objects it creates or changes are targets (never CTE names); what it reads
        // (`CREATE TABLE … AS SELECT`, a view's query) is read.
        for key in ["relation", "view", "sequence"] {
            self.target(&body[key], Kind::Ddl);
        }
        self.target(&body["into"]["rel"], Kind::Ddl);
        for (k, v) in body.as_object().into_iter().flatten() {
            if !matches!(k.as_str(), "relation" | "view" | "sequence" | "into") {
                self.walk(v, Kind::Select);
            }
        }
        for key in ["objects", "object"] {
            let lists: Vec<&Value> = match &body[key] {
                Value::Array(a) => a.iter().collect(),
                o @ Value::Object(_) => vec![o],
                _ => Vec::new(),
            };
            for l in lists {
                let names: Vec<&str> = l["node"]["List"]["items"]
                    .as_array()
                    .map(|i| {
                        i.iter()
                            .filter_map(|p| p["node"]["String"]["sval"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                if let (true, Some((name, rest))) = (named, names.split_last()) {
                    self.accesses.push(Access {
                        kind: Kind::Ddl,
                        schema: rest.last().map(|s| (*s).to_owned()),
                        name: Some((*name).to_owned()),
                        what: "DDL".into(),
                    });
                }
            }
        }
        if named && self.accesses.len() == before {
            self.nameless(Kind::Ddl, "this DDL");
        }
    }

    /// A data statement's body (`kind` is its node name); `ctx` the kind of the reads in it.
    fn node(&mut self, kind: &str, body: &Value, ctx: Kind) {
        let Value::Object(o) = body else { return };
        let pushed = self.with_clause(o.get("with_clause"));
        let target = match kind {
            "InsertStmt" => Some(Kind::Insert),
            "UpdateStmt" => Some(Kind::Update),
            "DeleteStmt" => Some(Kind::Delete),
            _ => None,
        };
        // SELECT … FOR UPDATE / SHARE locks rows: UPDATE, as the server asks.
        let ctx = if kind == "SelectStmt"
            && o.get("locking_clause")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
        {
            Kind::Update
        } else {
            ctx
        };
        if kind == "SelectStmt" {
            let setop = o.get("op").and_then(Value::as_i64).unwrap_or(0);
            if setop > SetOperation::SetopNone as i64
                && self.injection.is_none()
                && reads_catalog(body)
            {
                self.injection = Some(
                    "a UNION (or other set operation) into catalog tables or server functions"
                        .into(),
                );
            }
        }
        for (k, v) in o {
            match k.as_str() {
                "with_clause" => {}
                "relation" if kind == "MergeStmt" => {
                    for c in o
                        .get("merge_when_clauses")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        let cmd = c["node"]["MergeWhenClause"]["command_type"]
                            .as_i64()
                            .unwrap_or(0);
                        let k = match pg_query::protobuf::CmdType::try_from(cmd as i32) {
                            Ok(pg_query::protobuf::CmdType::CmdInsert) => Kind::Insert,
                            Ok(pg_query::protobuf::CmdType::CmdDelete) => Kind::Delete,
                            Ok(pg_query::protobuf::CmdType::CmdUpdate) => Kind::Update,
                            _ => continue,
                        };
                        self.target(v, k);
                    }
                    self.target(v, Kind::Select);
                }
                // SELECT … INTO creates a table.
                "into_clause" if v.is_object() => self.target(&v["rel"], Kind::Ddl),
                "relation" if target.is_some() => {
                    self.target(v, target.unwrap_or(Kind::Select));
                    // INSERT … ON CONFLICT DO UPDATE updates the target too.
                    if kind == "InsertStmt"
                        && o.get("on_conflict_clause")
                            .and_then(|c| c["action"].as_i64())
                            == Some(pg_query::protobuf::OnConflictAction::OnconflictUpdate as i64)
                    {
                        self.target(v, Kind::Update);
                    }
                }
                "limit_count" | "limit_offset" => {
                    let literals = self.literals;
                    self.walk(v, ctx);
                    self.literals = literals;
                }
                _ => self.walk(v, ctx),
            }
        }
        self.ctes.truncate(self.ctes.len() - pushed);
    }

    /// Walks a `WITH` clause (each query sees the names before it; all of them when
    /// recursive), then leaves every name visible; returns how many it pushed.
    fn with_clause(&mut self, with: Option<&Value>) -> usize {
        let Some(w) = with.filter(|w| w.is_object()) else {
            return 0;
        };
        let recursive = w["recursive"].as_bool().unwrap_or(false);
        let ctes: Vec<&Value> = w["ctes"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        let names: Vec<String> = ctes
            .iter()
            .filter_map(|c| {
                c["node"]["CommonTableExpr"]["ctename"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        let base = self.ctes.len();
        if recursive {
            self.ctes.extend(names.iter().cloned());
        }
        for (i, c) in ctes.iter().enumerate() {
            if !recursive {
                self.ctes.truncate(base);
                self.ctes
                    .extend(names[..i.min(names.len())].iter().cloned());
            }
            self.walk(&c["node"]["CommonTableExpr"]["ctequery"], Kind::Select);
        }
        self.ctes.truncate(base);
        self.ctes.extend(names.iter().cloned());
        names.len()
    }

    /// A range variable (`{"relname": …, "schemaname": …}`) read or written as `kind`
    /// where a CTE of that name, if visible, is what it names.
    fn relation(&mut self, v: &Value, kind: Kind) {
        let Some(name) = v["relname"].as_str() else {
            return;
        };
        if v["schemaname"].as_str().is_none_or(str::is_empty) && self.ctes.iter().any(|c| c == name)
        {
            return;
        }
        self.target(v, kind);
    }

    /// A range variable that is always a table: the target of a data change or DDL
    /// (PostgreSQL never takes a CTE there). A temporary one is in `pg_temp`.
    fn target(&mut self, v: &Value, kind: Kind) {
        let Some(name) = v["relname"].as_str() else {
            return;
        };
        let schema = match v["schemaname"].as_str().filter(|s| !s.is_empty()) {
            Some(s) => Some(s.to_owned()),
            None if v["relpersistence"].as_str() == Some("t") => Some("pg_temp".to_owned()),
            None => None,
        };
        self.accesses.push(Access {
            kind,
            schema,
            name: Some(name.to_owned()),
            what: "".into(),
        });
    }

    /// A function call: one that changes settings or reaches outside the data (the
    /// tenant guard's list) is [`Kind::Other`]; a sequence function names its sequence.
    fn call(&mut self, body: &Value) {
        let names: Vec<&str> = body["funcname"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["node"]["String"]["sval"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        let Some(name) = names.last() else { return };
        if matches!(*name, "nextval" | "setval") {
            let arg = body["args"][0]["node"]["AConst"]["val"]["Sval"]["sval"].as_str();
            match arg.map(split_name) {
                Some((schema, seq)) if !seq.chars().all(|c| c.is_ascii_digit()) => {
                    self.accesses.push(Access {
                        kind: Kind::Update,
                        schema,
                        name: Some(seq),
                        what: "".into(),
                    });
                }
                _ => self.nameless(Kind::Other, format!("{name} of a computed sequence")),
            }
        } else if crate::guard::denied_function(name) {
            self.nameless(Kind::Other, format!("a call of {name}"));
        }
    }

    /// Every node under `v`; range variables are accessed as `ctx`.
    fn walk(&mut self, v: &Value, ctx: Kind) {
        match v {
            Value::Array(items) => items.iter().for_each(|i| self.walk(i, ctx)),
            Value::Object(o) => {
                if o.contains_key("relname") && o.contains_key("relpersistence") {
                    self.relation(v, ctx);
                    return;
                }
                if let Some(Value::Object(node)) = o.get("node") {
                    if let Some((k, body)) = node.iter().next() {
                        match k.as_str() {
                            "SelectStmt" | "InsertStmt" | "UpdateStmt" | "DeleteStmt"
                            | "MergeStmt" => {
                                // A nested query reads (a data-changing one also
                                // changes its target).
                                return self.node(k, body, Kind::Select);
                            }
                            "AConst" => {
                                if !body["isnull"].as_bool().unwrap_or(false)
                                    && body["val"].get("Boolval").is_none()
                                {
                                    self.literals += 1;
                                }
                                return;
                            }
                            "BoolExpr" => self.tautology(body),
                            "AExpr" => self.same_sides(body),
                            "FuncCall" => self.call(body),
                            _ => {}
                        }
                    }
                }
                // A SelectStmt's arms (`larg`, `rarg`) are messages, not nodes.
                for (k, child) in o {
                    if matches!(k.as_str(), "larg" | "rarg") && child.is_object() {
                        self.node("SelectStmt", child, ctx);
                    } else {
                        self.walk(child, ctx);
                    }
                }
            }
            _ => {}
        }
    }

    /// A comparison of a column with itself (`id = id`): true for every row.
    fn same_sides(&mut self, body: &Value) {
        if self.injection.is_some() || !body["lexpr"]["node"]["ColumnRef"].is_object() {
            return;
        }
        if without_locations(&body["lexpr"]) == without_locations(&body["rexpr"]) {
            self.injection = Some("a comparison of a column with itself (such as id = id)".into());
        }
    }

    /// An `OR` with an arm made of constants alone (`OR 1=1`, `OR 'a'='a'`, `OR true`).
    fn tautology(&mut self, body: &Value) {
        if self.injection.is_some() || body["boolop"].as_i64() != Some(BoolExprType::OrExpr as i64)
        {
            return;
        }
        if body["args"]
            .as_array()
            .is_some_and(|a| a.iter().any(constant_only))
        {
            self.injection = Some(
                "an OR with a condition made of constants alone (a tautology such as OR 1=1)"
                    .into(),
            );
        }
    }
}

/// Whether an expression holds no column, parameter or subquery: its value is fixed.
fn constant_only(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.iter().all(constant_only),
        Value::Object(o) => o.iter().all(|(k, c)| {
            !matches!(k.as_str(), "ColumnRef" | "ParamRef" | "RangeVar") && constant_only(c)
        }),
        _ => true,
    }
}

/// Whether a set operation reads a catalog (`pg_catalog`, `information_schema`, `pg_*`)
/// or calls a function of the tenant guard's list.
fn reads_catalog(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.iter().any(reads_catalog),
        Value::Object(o) => {
            let called = o
                .get("funcname")
                .and_then(Value::as_array)
                .and_then(|a| a.last())
                .and_then(|n| n["node"]["String"]["sval"].as_str());
            if called.is_some_and(crate::guard::denied_function) {
                return true;
            }
            if let Some(name) = o.get("relname").and_then(Value::as_str) {
                let schema = o.get("schemaname").and_then(Value::as_str).unwrap_or("");
                if name.starts_with("pg_") || matches!(schema, "pg_catalog" | "information_schema")
                {
                    return true;
                }
            }
            o.values().any(reads_catalog)
        }
        _ => false,
    }
}

/// Whether a `TRUNCATE` or `DROP` cascades to objects it does not name.
fn cascades(body: &Value) -> bool {
    body["behavior"].as_i64() == Some(pg_query::protobuf::DropBehavior::DropCascade as i64)
}

/// `v` without its `location` fields (positions in the text).
fn without_locations(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, _)| k.as_str() != "location")
                .map(|(k, c)| (k.clone(), without_locations(c)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_locations).collect()),
        other => other.clone(),
    }
}

/// A possibly qualified name written in a string (`'s.seq'`, `'"S".seq'`), folded as
/// PostgreSQL folds it.
fn split_name(lit: &str) -> (Option<String>, String) {
    let fold = |p: &str| match p.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(q) => q.replace("\"\"", "\""),
        None => p.to_lowercase(),
    };
    match lit.trim().rsplit_once('.') {
        Some((s, n)) => (Some(fold(s)), fold(n)),
        None => (None, fold(lit.trim())),
    }
}
