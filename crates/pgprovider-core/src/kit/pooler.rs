//! What a transaction-mode pooler cannot carry: statements that leave state on a server
//! session which the pooler then hands to other clients.
//!
//! Classified on the SQL text with string literals, comments and dollar-quoted bodies
//! blanked out, and double-quoted identifiers unquoted, so `'SET x = 1'` in a literal is not a
//! `SET` and `"pg_advisory_lock"(1)` is still an advisory lock. This is a guard against
//! mistakes, not a security boundary: server-side code (a function, a `DO` block) that sets
//! session state is not seen.

use crate::{Error, ErrorKind};

/// The SQL text with literals, comments and dollar-quoted bodies replaced by spaces and the
/// quotes of identifiers removed (byte for byte, so positions are kept), lower-cased.
pub fn code_only(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = b.to_ascii_lowercase();
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to.min(b.len())] {
            *c = b' ';
        }
    };
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    while i < b.len() {
        match b[i] {
            b'\'' => {
                let escapes =
                    i > 0 && matches!(b[i - 1], b'e' | b'E') && (i < 2 || !ident(b[i - 2]));
                let start = i;
                i += 1;
                while i < b.len() {
                    match b[i] {
                        b'\\' if escapes => i += 2,
                        b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
                        b'\'' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
                blank(&mut out, start, i);
            }
            b'"' => {
                out[i] = b' ';
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b';' {
                        out[i] = b' ';
                    }
                    i += 1;
                }
                if i < b.len() {
                    out[i] = b' ';
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                let start = i;
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                blank(&mut out, start, i);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let (start, mut depth) = (i, 0usize);
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                blank(&mut out, start, i);
            }
            b'$' if i == 0 || !ident(b[i - 1]) => {
                // `$tag$ … $tag$` (a parameter `$1` is not one).
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|c| !ident(*c))
                    .map(|p| i + 1 + p);
                match tag_end {
                    Some(e) if b[e] == b'$' && !b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                        let tag = &b[i..=e];
                        let start = i;
                        let body = e + 1;
                        let close = b[body..]
                            .windows(tag.len())
                            .position(|w| w == tag)
                            .map_or(b.len(), |p| body + p + tag.len());
                        blank(&mut out, start, close);
                        i = close;
                    }
                    _ => i += 1,
                }
            }
            _ => i += 1,
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

/// `EXPLAIN`'s options, skipped to classify the statement it runs.
const EXPLAIN_OPTIONS: &[&str] = &[
    "explain",
    "analyze",
    "analyse",
    "verbose",
    "costs",
    "settings",
    "generic_plan",
    "buffers",
    "serialize",
    "wal",
    "timing",
    "summary",
    "memory",
    "format",
    "text",
    "xml",
    "json",
    "yaml",
    "true",
    "false",
    "on",
    "off",
    "none",
];

/// The words of one statement of [`code_only`] text, `EXPLAIN` and its options skipped.
fn words(stmt: &str) -> Vec<&str> {
    let all: Vec<&str> = stmt
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    let skip = match all.first() {
        Some(&"explain") => all
            .iter()
            .position(|w| !EXPLAIN_OPTIONS.contains(w))
            .unwrap_or(all.len()),
        _ => 0,
    };
    all[skip..].to_vec()
}

/// Whether `seq` occurs in `words`, in order and adjacent.
fn has_seq(words: &[&str], seq: &[&str]) -> bool {
    words.windows(seq.len()).any(|w| w == seq)
}

/// The session state that `sql` would leave on the server session, described for an error
/// message; `None` when it leaves none. See the [module docs](self).
pub fn session_effect(sql: &str) -> Option<&'static str> {
    let code = code_only(sql);
    for stmt in code.split(';') {
        let words = words(stmt);
        let w = |i: usize| words.get(i).copied().unwrap_or("");
        let has = |x: &str| words.contains(&x);
        let temp = |x: &str| matches!(x, "temp" | "temporary");
        let effect = match w(0) {
            "set" => match w(1) {
                "local" | "transaction" | "constraints" => None,
                _ => Some("a session-level SET (use SET LOCAL inside a transaction)"),
            },
            "listen" => Some(
                "LISTEN (a listener needs a session of its own: connect it to the node directly)",
            ),
            "prepare" if w(1) != "transaction" => {
                Some("a named prepared statement (PREPARE; use parameters instead)")
            }
            "declare" if has_seq(&words, &["with", "hold"]) => {
                Some("a cursor WITH HOLD (declare it without HOLD inside a transaction)")
            }
            "load" => Some("LOAD of a library into the session"),
            "create"
                if {
                    // `CREATE [OR REPLACE] [GLOBAL | LOCAL] TEMP …`, or an object named in pg_temp.
                    let rest = if w(1) == "or" && w(2) == "replace" {
                        &words[3..]
                    } else {
                        &words[1..]
                    };
                    let r = |i: usize| rest.get(i).copied().unwrap_or("");
                    let temporary =
                        temp(r(0)) || (matches!(r(0), "global" | "local") && temp(r(1)));
                    let in_pg_temp = words.windows(2).any(|p| {
                        matches!(p[0], "table" | "view" | "sequence" | "exists")
                            && p[1] == "pg_temp"
                    });
                    (temporary || in_pg_temp) && !has_seq(&words, &["on", "commit", "drop"])
                } =>
            {
                Some(
                    "a temporary object that outlives its transaction (CREATE TEMP TABLE … ON COMMIT DROP inside a transaction)",
                )
            }
            "select" | "with"
                if words.windows(3).any(|p| {
                    p[0] == "into"
                        && (temp(p[1])
                            || p[1] == "pg_temp"
                            || (matches!(p[1], "global" | "local") && temp(p[2])))
                }) =>
            {
                Some(
                    "a temporary table (SELECT … INTO TEMP; use CREATE TEMP TABLE … ON COMMIT DROP inside a transaction)",
                )
            }
            _ => None,
        };
        if effect.is_some() {
            return effect;
        }
        for lock in [
            "pg_advisory_lock",
            "pg_advisory_lock_shared",
            "pg_try_advisory_lock",
            "pg_try_advisory_lock_shared",
        ] {
            if has(lock) {
                return Some(
                    "a session-level advisory lock (use pg_advisory_xact_lock inside a transaction)",
                );
            }
        }
        // Local only when the third argument of every call is the literal `true`.
        let mut rest = stmt;
        while let Some(at) = find_word(rest, "set_config") {
            let call = &rest[at + "set_config".len()..];
            let args = balanced_args(call);
            if args.rsplit(',').next().map(str::trim) != Some("true") {
                return Some(
                    "set_config(…) without true as its third argument, a session-level setting (pass true for a local one)",
                );
            }
            rest = call;
        }
    }
    None
}

/// The text inside the parentheses that open `call` (up to the matching one).
fn balanced_args(call: &str) -> &str {
    let Some(open) = call.find('(') else {
        return "";
    };
    let mut depth = 0;
    for (i, c) in call[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &call[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    &call[open + 1..]
}

/// Whether `sql` is a statement PostgreSQL refuses inside a transaction block (`VACUUM`,
/// `CREATE INDEX CONCURRENTLY`, `CREATE DATABASE`, …): behind a transaction pooler it is sent
/// on its own, in one exchange, never wrapped in a transaction.
pub fn outside_transaction_only(sql: &str) -> bool {
    let code = code_only(sql);
    let words = words(&code);
    let w = |i: usize| words.get(i).copied().unwrap_or("");
    match w(0) {
        "vacuum" => true,
        "create" | "drop" | "alter"
            if matches!(w(1), "database" | "tablespace" | "subscription") =>
        {
            true
        }
        "alter" if w(1) == "system" => true,
        "create" | "drop" | "alter" | "reindex" if words.contains(&"concurrently") => true,
        "reindex" if matches!(w(1), "database" | "system" | "schema") => true,
        // CLUSTER without a table re-clusters every table, one transaction each.
        "cluster" => words.iter().skip(1).all(|w| *w == "verbose"),
        "discard" => w(1) == "all",
        _ => false,
    }
}

/// The error for a statement refused behind a transaction pooler: `what` it would leave on
/// the server session, and what to do instead.
pub fn refusal(what: &str, node: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "refused before sending: {what} would stay on a server session that the transaction pooler hands to other clients"
        ),
    )
    .with_node(node)
    .with_hint(
        "do what the message suggests, or run this work on a direct connection (pooler=none) or through the pooler in session mode (pooler=session)",
    )
}

/// The byte position of `word` as a whole word in `s`.
fn find_word(s: &str, word: &str) -> Option<usize> {
    let b = s.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    s.match_indices(word)
        .map(|(i, _)| i)
        .find(|&i| (i == 0 || !ident(b[i - 1])) && b.get(i + word.len()).is_none_or(|c| !ident(*c)))
}

/// The `(name, value)` pairs of a libpq `options` string (`-c name=value`, `-cname=value`,
/// `--name=value`).
///
/// # Errors
/// The first word that is not such a setting (other server switches cannot be applied
/// with `SET`), or a name that is not a plain setting name.
pub fn startup_settings(options: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut words = options.split_whitespace();
    while let Some(w) = words.next() {
        let pair = if w == "-c" {
            words.next()
        } else if let Some(rest) = w.strip_prefix("--") {
            Some(rest)
        } else {
            w.strip_prefix("-c")
        };
        let Some((k, v)) = pair.and_then(|p| p.split_once('=')) else {
            return Err(format!("{w:?} is not a -c name=value setting"));
        };
        let k = k.replace('-', "_").to_ascii_lowercase();
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Err(format!("{k:?} is not a setting name"));
        }
        out.push((k, v.to_owned()));
    }
    Ok(out)
}

/// The column name of the row [`settings_sql`] returns: drivers drop such rows from the
/// results of a caller's simple query they added the settings to.
pub const SETTING_COLUMN: &str = "pgprovider setting";

/// Whether a simple query's row, with these column names, is the one [`settings_sql`]
/// returns.
pub fn is_settings_row<'a>(columns: impl IntoIterator<Item = &'a str>) -> bool {
    let mut any = false;
    for c in columns {
        if c != SETTING_COLUMN {
            return false;
        }
        any = true;
    }
    any
}

/// The statement that applies `settings` (empty for none) with `set_config`, which parses a
/// value as a startup option does (`search_path=a,b` is two schemas; `SET search_path =
/// 'a,b'` would be one); `local`: for the current transaction only. Values are quoted as
/// escape strings, right whatever `standard_conforming_strings` says.
pub fn settings_sql(settings: &[(String, String)], local: bool) -> String {
    if settings.is_empty() {
        return String::new();
    }
    let quote = |v: &str| format!("E'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let calls: Vec<String> = settings
        .iter()
        .map(|(k, v)| {
            format!(
                "pg_catalog.set_config({}, {}, {local}) AS \"{SETTING_COLUMN}\"",
                quote(k),
                quote(v)
            )
        })
        .collect();
    format!("SELECT {}", calls.join(", "))
}

/// `sql` with `settings` (what [`settings_sql`] made) placed right after its first
/// statement, when that statement opens a transaction (`BEGIN …; <a tenant's SET LOCALs>`):
/// the statements after it, set by the caller, then win over the settings.
pub fn after_begin(sql: &str, settings: &str) -> Option<String> {
    let code = code_only(sql);
    let first = code.split(';').next().unwrap_or("");
    if !matches!(words(first).first(), Some(&"begin" | &"start")) {
        return None;
    }
    let end = first.len();
    Some(if end >= sql.len() {
        format!("{sql}; {settings}")
    } else {
        format!("{}; {settings};{}", &sql[..end], &sql[end + 1..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_comments_and_dollar_bodies_are_blanked() {
        let sql = "SELECT 'a; SET x = 1', E'it\\'s; LISTEN c' -- SET y = 2\n/* LISTEN /* nested */ z */ $$ SET $$, $tag$ LISTEN $tag$, $1, \"Pg_Advisory_Lock\"(1)";
        let code = code_only(sql);
        assert_eq!(code.len(), sql.len(), "positions are kept");
        assert!(!code.contains("set") && !code.contains("listen"), "{code}");
        assert!(code.contains("$1"), "{code}");
        assert!(code.contains(" pg_advisory_lock (1)"), "{code}");
        // Unterminated pieces blank to the end.
        assert_eq!(code_only("SELECT 'open").trim(), "select");
        assert_eq!(code_only("SELECT $$ open").trim(), "select");
    }

    #[test]
    fn what_would_outlive_a_transaction_is_named() {
        for (sql, what) in [
            ("SET search_path = x", "SET"),
            ("/* c */ set work_mem = '1MB'", "SET"),
            ("SET SESSION AUTHORIZATION bob", "SET"),
            ("SELECT 1; SET ROLE bob", "SET"),
            ("LISTEN ch", "LISTEN"),
            ("PREPARE p AS SELECT 1", "PREPARE"),
            ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "HOLD"),
            ("LOAD 'auto_explain'", "LOAD"),
            ("CREATE TEMP TABLE t (x int)", "temporary"),
            ("create local temporary view v as select 1", "temporary"),
            ("SELECT 1 AS x INTO TEMP t", "temporary"),
            ("SELECT pg_advisory_lock(1)", "advisory"),
            (
                "SELECT pg_catalog.pg_try_advisory_lock_shared(1, 2)",
                "advisory",
            ),
            ("SELECT \"pg_advisory_lock\"(1)", "advisory"),
            ("SELECT set_config('a.b', 'c', false)", "set_config"),
            ("SELECT set_config('a.b', 'c', $1)", "set_config"),
            (
                "SELECT set_config('a','1',true), set_config('search_path','x',false)",
                "set_config",
            ),
            ("SELECT set_config('a', '1', NOT true)", "set_config"),
            ("DECLARE c CURSOR WITH\n  HOLD FOR SELECT 1", "HOLD"),
            ("CREATE TABLE pg_temp.t (x int)", "temporary"),
            ("SELECT 1 AS x INTO pg_temp.t", "temporary"),
            (
                "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
                "temporary",
            ),
            (
                "explain (analyze, verbose) select pg_advisory_lock(1)",
                "advisory",
            ),
        ] {
            let effect = session_effect(sql).unwrap_or_else(|| panic!("{sql} passed"));
            assert!(effect.contains(what), "{sql}: {effect}");
        }
        for sql in [
            "SELECT 1",
            "SET LOCAL work_mem = '1MB'",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET CONSTRAINTS ALL DEFERRED",
            "SELECT 'SET x = 1; LISTEN y'",
            "-- LISTEN x\nSELECT 1",
            "SELECT pg_advisory_xact_lock(1)",
            "CREATE TEMP TABLE t (x int) ON COMMIT DROP",
            "SELECT set_config('a.b', 'c', true)",
            "UPDATE t SET x = 1",
            "INSERT INTO t SELECT * FROM temp_source",
            "RESET ALL",
            "PREPARE TRANSACTION 'x'",
            "DECLARE c CURSOR FOR SELECT 1",
            "UNLISTEN *",
            "SELECT my_set_config_wrapper(1)",
            "CREATE TABLE readings (temp numeric)",
            "WITH r AS (SELECT 1) INSERT INTO readings (temp) SELECT * FROM r",
            "CREATE TEMP TABLE t (x int) ON COMMIT\nDROP",
            "SELECT 1 AS \"a;SET x = 1\"",
            "SELECT set_config('a', (SELECT 'b'), true)",
            "SELECT 1 AS x INTO UNLOGGED t",
            "CREATE FUNCTION f() RETURNS int SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS 'SELECT 1' LANGUAGE sql",
        ] {
            assert_eq!(session_effect(sql), None, "{sql}");
        }
    }

    #[test]
    fn startup_options_become_settings() {
        assert_eq!(
            startup_settings("-c statement_timeout=5000 --search-path=a,b -cwork_mem=4MB").unwrap(),
            vec![
                ("statement_timeout".into(), "5000".into()),
                ("search_path".into(), "a,b".into()),
                ("work_mem".into(), "4MB".into()),
            ]
        );
        assert!(startup_settings("").unwrap().is_empty());
        for bad in ["-f s", "-c novalue", "-c bad;name=1", "--=x"] {
            assert!(startup_settings(bad).is_err(), "{bad}");
        }
        let settings = vec![
            ("a.b".to_owned(), "it's".to_owned()),
            ("work_mem".to_owned(), "4MB".to_owned()),
        ];
        assert_eq!(
            settings_sql(&settings, true),
            "SELECT pg_catalog.set_config(E'a.b', E'it\\'s', true) AS \"pgprovider setting\", pg_catalog.set_config(E'work_mem', E'4MB', true) AS \"pgprovider setting\""
        );
        assert_eq!(
            settings_sql(&[("a".into(), "x\\".into())], false),
            "SELECT pg_catalog.set_config(E'a', E'x\\\\', false) AS \"pgprovider setting\""
        );
        let local = "SELECT 1";
        assert_eq!(
            after_begin(
                "BEGIN ISOLATION LEVEL SERIALIZABLE; SET LOCAL ROLE t",
                local
            )
            .unwrap(),
            "BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT 1; SET LOCAL ROLE t"
        );
        assert_eq!(after_begin("BEGIN", local).unwrap(), "BEGIN; SELECT 1");
        assert_eq!(after_begin("SELECT 1; BEGIN", local), None);
        assert!(is_settings_row([SETTING_COLUMN, SETTING_COLUMN]));
        assert!(!is_settings_row(["x"]) && !is_settings_row([]));
        assert_eq!(settings_sql(&[], true), "");
    }

    #[test]
    fn statements_that_refuse_a_transaction_block_are_known() {
        for sql in [
            "VACUUM ANALYZE t",
            "CREATE INDEX CONCURRENTLY i ON t (x)",
            "drop index concurrently i",
            "REINDEX INDEX CONCURRENTLY i",
            "REINDEX DATABASE app",
            "CREATE DATABASE other",
            "DROP DATABASE other",
            "ALTER SYSTEM SET work_mem = '8MB'",
            "CREATE TABLESPACE ts LOCATION '/x'",
            "ALTER TABLE p DETACH PARTITION c CONCURRENTLY",
            "REINDEX SCHEMA app",
            "CLUSTER",
            "DISCARD ALL",
            "CREATE SUBSCRIPTION s CONNECTION 'x' PUBLICATION p",
        ] {
            assert!(outside_transaction_only(sql), "{sql}");
        }
        for sql in [
            "CREATE INDEX i ON t (x)",
            "SELECT 'VACUUM'",
            "ANALYZE t",
            "REINDEX TABLE t",
        ] {
            assert!(!outside_transaction_only(sql), "{sql}");
        }
    }

    #[test]
    fn refusals_say_what_to_do() {
        let e = refusal("LISTEN", "db:6432");
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert_eq!(e.node(), Some("db:6432"));
        assert!(e.to_string().contains("transaction pooler"), "{e}");
        assert!(e.hint().unwrap().contains("pooler=session"), "{e:?}");
    }
}
