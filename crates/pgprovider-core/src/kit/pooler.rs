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

/// The session state that `sql` would leave on the server session, described for an error
/// message; `None` when it leaves none. See the [module docs](self).
pub fn session_effect(sql: &str) -> Option<&'static str> {
    let code = code_only(sql);
    for stmt in code.split(';') {
        let words: Vec<&str> = stmt
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        let w = |i: usize| words.get(i).copied().unwrap_or("");
        let has = |x: &str| words.contains(&x);
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
            "declare" if stmt.contains("with hold") => {
                Some("a cursor WITH HOLD (declare it without HOLD inside a transaction)")
            }
            "load" => Some("LOAD of a library into the session"),
            "create" if (has("temp") || has("temporary")) && !stmt.contains("on commit drop") => {
                Some(
                    "a temporary object that outlives its transaction (CREATE TEMP TABLE … ON COMMIT DROP inside a transaction)",
                )
            }
            "select" | "with" if has("into") && (has("temp") || has("temporary")) => Some(
                "a temporary table (SELECT … INTO TEMP; use CREATE TEMP TABLE … ON COMMIT DROP inside a transaction)",
            ),
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
        if let Some(at) = find_word(stmt, "set_config") {
            // Local only when the third argument is the literal `true`.
            let args = &stmt[at..];
            let close = args.find(')').unwrap_or(args.len());
            if !args[..close].trim_end().ends_with("true") {
                return Some(
                    "set_config(…, false), a session-level setting (pass true for a local one)",
                );
            }
        }
    }
    None
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
        "keep session state inside a transaction, or connect without the pooler (pooler=session or a direct node) for this work",
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
        let k = k.replace('-', "_");
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

/// `SET name = 'value'; …` (or `SET LOCAL` when `local`) for `settings`; empty for none.
pub fn settings_sql(settings: &[(String, String)], local: bool) -> String {
    let set = if local { "SET LOCAL" } else { "SET" };
    settings
        .iter()
        .map(|(k, v)| format!("{set} {k} = '{}'", v.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join("; ")
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
            "SET LOCAL a.b = 'it''s'; SET LOCAL work_mem = '4MB'"
        );
        assert_eq!(settings_sql(&settings[1..], false), "SET work_mem = '4MB'");
        assert_eq!(settings_sql(&[], true), "");
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
