//! Classifying SQL text the way drivers need it: whether a statement may leave state on the
//! session, what it does to the transaction, and the statement that resets a session. Pure
//! functions shared by every driver.

/// What drivers' [`Connection::reset`](crate::Connection::reset) runs, in one round trip: PostgreSQL's `DISCARD ALL` without
/// `DEALLOCATE ALL`, so prepared statements survive for the statement cache. It ends an
/// open or failed transaction, closes cursors, restores the session user and every setting
/// to its connection default, stops listening, releases advisory locks, and drops temporary
/// tables and cached sequence values. (`DISCARD ALL` itself cannot run in the implicit
/// transaction of a multi-statement query.)
pub const RESET_RECIPE: &str = "ROLLBACK; CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; \
     UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

const SAFE_LEADING_WORDS: [&str; 10] = [
    "SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "VALUES", "TABLE", "SHOW", "EXPLAIN", "MERGE",
];

/// Whether `sql` may leave state on the session besides an open transaction (which
/// [`transaction_effect`] tracks). Errs on the side of yes: statements are split at every
/// `;` (even inside literals), and any statement not led by a plain data keyword or a
/// transaction-control one counts, as does any mention of `set_config` or advisory locks,
/// and any Unicode-escaped identifier (`U&"…"`, which can spell either).
pub fn may_change_session(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    // `U&"set\005fconfig"` is set_config too: any Unicode-escaped identifier counts (found
    // by checking this classifier against the server on a corpus).
    if lower.contains("set_config") || lower.contains("advisory") || lower.contains("u&\"") {
        return true;
    }
    for stmt in sql.split(';') {
        let (first, second) = leading_words(stmt);
        match first.as_str() {
            // Transaction control, and settings that end with the transaction.
            "" | "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT"
            | "RELEASE" => {}
            "SET" if second == "LOCAL" || second == "TRANSACTION" => {}
            // `SELECT … INTO [TEMP] t` creates a table (perhaps a temporary one, which
            // outlives the transaction).
            "SELECT" | "WITH" | "TABLE" | "VALUES" if selects_into(stmt) => return true,
            // `EXPLAIN ANALYZE` runs what it explains: `CREATE TEMP TABLE … AS`, `SELECT …
            // INTO TEMP t`.
            "EXPLAIN"
                if selects_into(stmt)
                    || stmt
                        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                        .any(|w| w.eq_ignore_ascii_case("create")) =>
            {
                return true;
            }
            w if SAFE_LEADING_WORDS.contains(&w) => {}
            _ => return true,
        }
    }
    false
}

/// Whether a statement has an `INTO` that is not `INSERT INTO` / `MERGE INTO`: a
/// `SELECT … INTO t` that creates a table.
fn selects_into(stmt: &str) -> bool {
    let mut prev = "";
    for w in stmt
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
    {
        if w.eq_ignore_ascii_case("into")
            && !prev.eq_ignore_ascii_case("insert")
            && !prev.eq_ignore_ascii_case("merge")
        {
            return true;
        }
        prev = w;
    }
    false
}

/// What `sql`, run to the end without error, leaves behind: `Some(true)` when its last
/// transaction-control statement opens a block (`BEGIN`, `START`, `COMMIT AND CHAIN`),
/// `Some(false)` when it ends one, `None` when it has none (or only savepoint commands).
pub fn transaction_effect(sql: &str) -> Option<bool> {
    let mut effect = None;
    for stmt in sql.split(';') {
        let (first, second) = leading_words(stmt);
        match first.as_str() {
            "BEGIN" | "START" => effect = Some(true),
            "COMMIT" | "END" | "ROLLBACK" | "ABORT" if second != "TO" => {
                effect = Some(stmt.to_ascii_uppercase().contains("CHAIN"));
            }
            "PREPARE" if second == "TRANSACTION" => effect = Some(false),
            _ => {}
        }
    }
    effect
}

/// Whether `sql` opens a transaction block (which a failure part-way would leave open).
pub fn opens_transaction(sql: &str) -> bool {
    sql.split(';')
        .any(|s| matches!(leading_words(s).0.as_str(), "BEGIN" | "START"))
}

/// The first two words of a statement, upper-cased.
fn leading_words(stmt: &str) -> (String, String) {
    let mut words = stmt
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_uppercase);
    let starts_with_word = stmt
        .trim_start()
        .starts_with(|c: char| c.is_ascii_alphabetic());
    if !starts_with_word && !stmt.trim().is_empty() {
        // A comment or anything unusual first: not a plain statement.
        return ("?".to_owned(), String::new());
    }
    (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    )
}

/// What a driver knows of a session from the SQL it ran: whether it may carry state the next
/// user must not inherit, and whether a transaction block is open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionState {
    /// Something may have changed the session (see [`may_change_session`]).
    pub dirty: bool,
    /// A transaction block is open (possibly failed).
    pub in_tx: bool,
}

impl SessionState {
    /// Notes a statement about to be sent: if its caller abandons it half-way, the session
    /// may carry whatever it does, so it counts as dirty from now on.
    pub fn before(&mut self, sql: &str) {
        self.dirty |= may_change_session(sql);
    }

    /// Notes a statement that ran (`ok`) or failed.
    pub fn track(&mut self, sql: &str, ok: bool) {
        self.dirty |= may_change_session(sql);
        if ok {
            if let Some(open) = transaction_effect(sql) {
                self.in_tx = open;
            }
        } else if opens_transaction(sql) {
            // A failure part-way may leave the block open (aborted).
            self.in_tx = true;
        }
    }

    /// Whether the session needs a reset before reuse.
    pub fn needs_reset(&self) -> bool {
        self.dirty || self.in_tx
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn session_state_follows_statements() {
        let mut s = SessionState::default();
        s.before("SELECT 1");
        s.track("SELECT 1", true);
        assert!(!s.needs_reset());
        let mut abandoned = SessionState::default();
        abandoned.before("SET search_path = other");
        assert!(abandoned.needs_reset(), "dirty before it ran");
        s.track("BEGIN", true);
        assert!(s.in_tx && s.needs_reset());
        s.track("COMMIT", true);
        assert!(!s.in_tx);
        s.track("BEGIN; SELECT 1/0", false);
        assert!(s.in_tx);
        s.track("SET work_mem = '1MB'", true);
        assert!(s.dirty);
        assert!(may_change_session("SELECT 1 AS x INTO TEMP t"));
        assert!(may_change_session(
            "with a as (select 1) select * into t from a"
        ));
        assert!(!may_change_session("INSERT INTO t VALUES (1)"));
        assert!(!may_change_session("SELECT intolerance FROM t"));
        assert!(!may_change_session(
            "WITH i AS (INSERT INTO w VALUES (1) RETURNING x) SELECT * FROM i"
        ));
        assert!(may_change_session(
            "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1"
        ));
        assert!(may_change_session("EXPLAIN ANALYZE SELECT 1 INTO TEMP t"));
        assert!(!may_change_session("EXPLAIN SELECT created_at FROM t"));
    }

    use super::*;

    #[test]
    fn session_changing_statements_are_recognised() {
        for sql in [
            "SELECT 1",
            "select * from t; insert into t values (1);",
            "  UPDATE t SET x = 1",
            "WITH a AS (DELETE FROM t RETURNING *) SELECT * FROM a",
            "SHOW application_name",
            "",
            "BEGIN; UPDATE t SET x = 1; INSERT INTO t VALUES (2); COMMIT",
            "begin; set local work_mem = '1MB'; select 1; commit;",
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE; SAVEPOINT a; ROLLBACK TO a; RELEASE a; END",
            "BEGIN; SELECT 1; ROLLBACK",
            // The transaction itself is tracked apart (transaction_effect).
            "BEGIN",
            "SELECT 1; begin",
            "SAVEPOINT s",
            "BEGIN; SELECT 1",
            "ROLLBACK TO a",
            "BEGIN; COMMIT AND CHAIN",
            "SET LOCAL work_mem = '1MB'",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        ] {
            assert!(!may_change_session(sql), "{sql}");
        }
        for sql in [
            "SET search_path = x",
            "reset all",
            "CREATE TEMP TABLE t (x int)",
            "LISTEN ch",
            "PREPARE p AS SELECT 1",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "SELECT set_config('a.b', 'c', false)",
            "SELECT pg_advisory_lock(1)",
            "/* comment */ BEGIN",
            "DO $$ BEGIN PERFORM 1; END $$",
            "BEGIN; CREATE TEMP TABLE t (x int); COMMIT",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        ] {
            assert!(may_change_session(sql), "{sql}");
        }
    }

    #[test]
    fn transaction_effects_follow_the_last_control_statement() {
        for (sql, effect) in [
            ("SELECT 1", None),
            ("BEGIN", Some(true)),
            ("start transaction read only", Some(true)),
            ("BEGIN; SELECT 1; COMMIT", Some(false)),
            ("COMMIT AND CHAIN", Some(true)),
            ("ROLLBACK TO SAVEPOINT a", None),
            ("SAVEPOINT a; RELEASE a", None),
            ("END", Some(false)),
            ("ABORT", Some(false)),
            ("PREPARE TRANSACTION 'x'", Some(false)),
        ] {
            assert_eq!(transaction_effect(sql), effect, "{sql}");
        }
    }
}
