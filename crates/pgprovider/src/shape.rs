//! What a statement is, read once from PostgreSQL's own parse tree and cached per text: its
//! shape (fingerprint and normalized text, literals removed), how many statements the text
//! holds, its literals, the injection shapes it contains, and every table it touches with
//! the kind of access. The [firewall](crate::firewall) and [role-based
//! access](crate::access) decide on it; neither looks at the text.

mod walk;

use pg_query::protobuf::Token;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use walk::Walker;

/// What a statement does to an object, as role-based access grants it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Kind {
    /// `SELECT` (reading a table, view or sequence, also inside other statements).
    Select,
    /// `INSERT` (and the insert arm of `MERGE`).
    Insert,
    /// `UPDATE` (and `SELECT … FOR UPDATE / SHARE`, `ON CONFLICT DO UPDATE`).
    Update,
    /// `DELETE`.
    Delete,
    /// `TRUNCATE`.
    Truncate,
    /// `COPY` to or from the client.
    Copy,
    /// Creating, altering, dropping, renaming or commenting on objects.
    Ddl,
    /// Everything else: `SET`, `LISTEN`, `NOTIFY`, `DO`, `CALL`, `VACUUM`, grants, …
    Other,
}

impl Kind {
    /// The lowercase name (`select`, `ddl`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Select => "select",
            Kind::Insert => "insert",
            Kind::Update => "update",
            Kind::Delete => "delete",
            Kind::Truncate => "truncate",
            Kind::Copy => "copy",
            Kind::Ddl => "ddl",
            Kind::Other => "other",
        }
    }

    /// Every kind.
    pub const ALL: [Kind; 8] = [
        Kind::Select,
        Kind::Insert,
        Kind::Update,
        Kind::Delete,
        Kind::Truncate,
        Kind::Copy,
        Kind::Ddl,
        Kind::Other,
    ];
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One access of a statement: a kind on an object (`schema.name`; the schema is `None`
/// when the statement does not qualify the name), or a kind on nothing (`SET`, `SELECT 1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Access {
    pub(crate) kind: Kind,
    pub(crate) schema: Option<String>,
    pub(crate) name: Option<String>,
    /// For an access to no object: the statement or call (`SET / RESET`, `a call of
    /// set_config`, …).
    pub(crate) what: std::borrow::Cow<'static, str>,
}

/// A statement, as the parse tree describes it.
#[derive(Debug)]
pub(crate) struct Shape {
    /// The fingerprint (literals and aliases ignored; schemas and full names kept).
    pub(crate) fingerprint: u64,
    /// The text with its literals replaced by placeholders.
    pub(crate) normalized: Arc<str>,
    /// Statements in the text.
    pub(crate) statements: usize,
    /// Transaction control only (`BEGIN`, `COMMIT`, `SAVEPOINT`, …).
    pub(crate) transaction_control: bool,
    /// String and number literals outside `LIMIT` / `OFFSET`.
    pub(crate) literals: usize,
    /// The first classic injection shape found, described.
    pub(crate) injection: Option<String>,
    /// Every access.
    pub(crate) accesses: Vec<Access>,
    /// PostgreSQL's parser rejects the text.
    pub(crate) error: Option<String>,
}

impl Shape {
    /// The fingerprint as 16 hex digits.
    pub(crate) fn hex(&self) -> String {
        format!("{:016x}", self.fingerprint)
    }
}

/// The verdict of a policy on an operation: `decide` on each of its statements (none for
/// the library's own, see [`Operation::internal`](pgprovider_core::observe::Operation)),
/// failing closed: a panic refuses, naming `who` failed.
pub(crate) fn verdict(
    op: &pgprovider_core::observe::Operation<'_>,
    who: &str,
    decide: impl Fn(&str) -> Result<(), String>,
) -> pgprovider_core::observe::Verdict {
    use pgprovider_core::observe::Verdict;
    if op.internal {
        return Verdict::Proceed;
    }
    let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        op.statements().try_for_each(&decide)
    }));
    match decided {
        Ok(Ok(())) => Verdict::Proceed,
        Ok(Err(reason)) => Verdict::Reject(reason),
        Err(_) => Verdict::Reject(format!("{who} failed to decide")),
    }
}

const CACHE_CAP: usize = 10_000;

fn cache() -> &'static Mutex<HashMap<Box<str>, Arc<Shape>>> {
    static CACHE: OnceLock<Mutex<HashMap<Box<str>, Arc<Shape>>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The shape of `sql`, parsed once per text (a cache hit is one hash lookup).
pub(crate) fn of(sql: &str) -> Arc<Shape> {
    if let Some(s) = crate::pool::lock(cache()).get(sql) {
        return s.clone();
    }
    // libpg_query does not panic on input, but a panic here must refuse, not pass: a
    // shape whose parse panicked is an error shape.
    let shape = Arc::new(
        std::panic::catch_unwind(|| analyse(sql)).unwrap_or_else(|_| Shape {
            error: Some("the parser failed".into()),
            ..empty(sql)
        }),
    );
    let mut c = crate::pool::lock(cache());
    if c.len() >= CACHE_CAP {
        c.clear();
    }
    c.insert(sql.into(), shape.clone());
    shape
}

fn empty(sql: &str) -> Shape {
    Shape {
        fingerprint: {
            use std::hash::{Hash, Hasher};
            let mut h = std::hash::DefaultHasher::new();
            sql.hash(&mut h);
            h.finish()
        },
        normalized: Arc::from(sql),
        statements: 1,
        transaction_control: false,
        literals: 0,
        injection: None,
        accesses: Vec::new(),
        error: None,
    }
}

fn analyse(sql: &str) -> Shape {
    let parsed = match pg_query::parse(sql, 0) {
        Ok(p) => p,
        Err(e) => {
            return Shape {
                error: Some(e.to_string()),
                ..empty(sql)
            };
        }
    };
    let options = pg_query::FingerprintOptions::RANGEVAR_PG17_COMPAT
        | pg_query::FingerprintOptions::FULL_RELNAME;
    let fingerprint = match pg_query::fingerprint(sql, 0, options) {
        Ok(f) => f.value,
        Err(e) => {
            return Shape {
                error: Some(e.to_string()),
                ..empty(sql)
            };
        }
    };
    let normalized = pg_query::normalize(sql).unwrap_or_else(|_| sql.to_owned());
    // PostgreSQL's fingerprint ignores what does not change a plan: constants and their
    // casts, the length and order of lists (`IN (1)` and `IN (1, 2, 3)`, one row of
    // `VALUES` or three, `ORDER BY 1` or `2`, `LIMIT 10` or `LIMIT ALL`). For a firewall
    // those change the meaning: the normalized text (constants as `$n`; whitespace and
    // letter case folded, quoted names being told apart by the fingerprint already) is
    // part of the shape.
    let fingerprint = {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        fingerprint.hash(&mut h);
        for word in normalized.split_whitespace() {
            word.to_ascii_lowercase().hash(&mut h);
        }
        h.finish()
    };
    let stmts = &parsed.protobuf.stmts;
    let transaction_control = stmts.len() == 1
        && matches!(
            stmts[0].stmt.as_ref().and_then(|s| s.node.as_ref()),
            Some(pg_query::NodeEnum::TransactionStmt(_))
        );
    let tree = serde_json::to_value(&parsed.protobuf).unwrap_or(Value::Null);
    let mut walker = Walker::default();
    if let Some(list) = tree["stmts"].as_array() {
        for stmt in list {
            if let Some(node) = stmt["stmt"]["node"].as_object() {
                let before = walker.accesses.len();
                walker.statement(node);
                // A query of no table (`SELECT now()`) still reads.
                if walker.accesses.len() == before && !node.contains_key("TransactionStmt") {
                    walker.accesses.push(Access {
                        kind: Kind::Select,
                        schema: None,
                        name: None,
                        what: "SELECT".into(),
                    });
                }
            }
        }
    }
    let injection = walker.injection.or_else(|| {
        trailing_comment(sql)
            .then(|| "a `--` comment that cuts off the rest of the statement".to_owned())
    });
    Shape {
        fingerprint,
        normalized: Arc::from(normalized),
        statements: stmts.len(),
        transaction_control,
        literals: walker.literals,
        injection,
        accesses: walker.accesses,
        error: None,
    }
}

/// Whether the text ends in a `--` comment (nothing after it): the classic way an injected
/// value cuts off the conditions that follow it.
fn trailing_comment(sql: &str) -> bool {
    pg_query::scan_tokens(sql)
        .ok()
        .and_then(|t| t.last().map(|t| t.token == Token::SqlComment as i32))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests;
