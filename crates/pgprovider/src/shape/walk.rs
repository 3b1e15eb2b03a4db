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
                self.relation(&body["relation"], Kind::Copy);
                self.walk(&body["query"], Kind::Select);
            }
            "TruncateStmt" => self.walk(&body["relations"], Kind::Truncate),
            k => {
                if let Some((_, what)) = OTHER.iter().find(|(n, _)| *n == k) {
                    self.accesses.push(Access {
                        kind: Kind::Other,
                        schema: None,
                        name: None,
                        what,
                    });
                    self.walk(body, Kind::Select);
                } else {
                    self.ddl(body);
                }
            }
        }
    }

    /// DDL: every relation it names, and every object named by a list of names.
    fn ddl(&mut self, body: &Value) {
        let before = self.accesses.len();
        self.walk(body, Kind::Ddl);
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
                if let Some((name, rest)) = names.split_last() {
                    self.accesses.push(Access {
                        kind: Kind::Ddl,
                        schema: rest.last().map(|s| (*s).to_owned()),
                        name: Some((*name).to_owned()),
                        what: "DDL",
                    });
                }
            }
        }
        if self.accesses.len() == before {
            self.accesses.push(Access {
                kind: Kind::Ddl,
                schema: None,
                name: None,
                what: "DDL",
            });
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
                self.injection =
                    Some("a UNION (or other set operation) into catalog tables".into());
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
                        self.relation(v, k);
                    }
                    self.relation(v, Kind::Select);
                }
                "relation" if target.is_some() => {
                    self.relation(v, target.unwrap_or(Kind::Select));
                    // INSERT … ON CONFLICT DO UPDATE updates the target too.
                    if kind == "InsertStmt"
                        && o.get("on_conflict_clause")
                            .and_then(|c| c["action"].as_i64())
                            == Some(pg_query::protobuf::OnConflictAction::OnconflictUpdate as i64)
                    {
                        self.relation(v, Kind::Update);
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

    /// A range variable (`{"relname": …, "schemaname": …}`) accessed as `kind`.
    fn relation(&mut self, v: &Value, kind: Kind) {
        let Some(name) = v["relname"].as_str() else {
            return;
        };
        let schema = v["schemaname"].as_str().filter(|s| !s.is_empty());
        if schema.is_none() && self.ctes.iter().any(|c| c == name) {
            return;
        }
        self.accesses.push(Access {
            kind,
            schema: schema.map(str::to_owned),
            name: Some(name.to_owned()),
            what: "",
        });
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
            !matches!(
                k.as_str(),
                "ColumnRef" | "ParamRef" | "SubLink" | "RangeVar"
            ) && constant_only(c)
        }),
        _ => true,
    }
}

/// Whether a set operation reads a catalog (`pg_catalog`, `information_schema`, `pg_*`).
fn reads_catalog(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.iter().any(reads_catalog),
        Value::Object(o) => {
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
