//! Transaction options: isolation, access mode, deadline, retries, and (for tenant handles)
//! the scope to run in.

use crate::retry::Backoff;
use std::sync::Arc;
use std::time::Duration;

/// The SQL isolation levels PostgreSQL implements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IsolationLevel {
    /// Each statement sees data committed before it began (PostgreSQL's default).
    #[default]
    ReadCommitted,
    /// The transaction sees one snapshot; concurrent updates of the same rows fail with
    /// `40001`.
    RepeatableRead,
    /// As if transactions ran one at a time; conflicts fail with `40001` and are re-run.
    Serializable,
}

/// How to run a transaction: isolation, access mode, deadline, and retries.
#[must_use]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxOptions {
    isolation: IsolationLevel,
    read_only: bool,
    deferrable: bool,
    pub(crate) timeout: Option<Duration>,
    pub(crate) backoff: Backoff,
    pub(crate) seed: Option<u64>,
    /// Set by tenant handles: statements are checked against the tenant's scope.
    pub(crate) tenant: Option<Arc<str>>,
    /// Set by tenant handles: the tenant's own schema, if its strategy has one.
    pub(crate) tenant_schema: Option<Arc<str>>,
    /// Set by tenant handles: the server-side scope check run after each statement.
    pub(crate) tenant_check: Option<Arc<str>>,
    /// Set by tenant handles: run in the same round trip as `BEGIN` (`SET LOCAL …`).
    pub(crate) prologue: Option<Arc<str>>,
}

impl TxOptions {
    /// Read committed, read-write, no deadline, [`Backoff::default`] retries.
    pub fn new() -> Self {
        Self::default()
    }
    /// The isolation level.
    pub fn with_isolation(mut self, level: IsolationLevel) -> Self {
        self.isolation = level;
        self
    }
    /// A read-only transaction: writes fail with `25006`.
    /// Whether the transaction is read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Sets the access mode.
    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }
    /// `DEFERRABLE`: with serializable and read-only, waits for a safe snapshot and then
    /// never fails with a serialization error.
    pub fn with_deferrable(mut self, deferrable: bool) -> Self {
        self.deferrable = deferrable;
        self
    }
    /// A deadline for the whole transaction, retries and waits included.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    /// How often to re-run after a conflict, and how long to wait between runs.
    pub fn with_retries(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
    /// A fixed seed for the jitter, for repeatable tests.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The `BEGIN` statement for these options (a constant string: no allocation per
    /// transaction).
    pub fn begin_sql(&self) -> &'static str {
        use IsolationLevel::*;
        match (self.isolation, self.read_only, self.deferrable) {
            (ReadCommitted, false, false) => "BEGIN ISOLATION LEVEL READ COMMITTED",
            (ReadCommitted, true, false) => "BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY",
            (ReadCommitted, false, true) => "BEGIN ISOLATION LEVEL READ COMMITTED DEFERRABLE",
            (ReadCommitted, true, true) => {
                "BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY DEFERRABLE"
            }
            (RepeatableRead, false, false) => "BEGIN ISOLATION LEVEL REPEATABLE READ",
            (RepeatableRead, true, false) => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            (RepeatableRead, false, true) => "BEGIN ISOLATION LEVEL REPEATABLE READ DEFERRABLE",
            (RepeatableRead, true, true) => {
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY DEFERRABLE"
            }
            (Serializable, false, false) => "BEGIN ISOLATION LEVEL SERIALIZABLE",
            (Serializable, true, false) => "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
            (Serializable, false, true) => "BEGIN ISOLATION LEVEL SERIALIZABLE DEFERRABLE",
            (Serializable, true, true) => "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_statements_spell_every_option() {
        for isolation in [
            IsolationLevel::ReadCommitted,
            IsolationLevel::RepeatableRead,
            IsolationLevel::Serializable,
        ] {
            for read_only in [false, true] {
                for deferrable in [false, true] {
                    let sql = TxOptions::new()
                        .with_isolation(isolation)
                        .with_read_only(read_only)
                        .with_deferrable(deferrable)
                        .begin_sql();
                    let level = format!("{isolation:?}").to_ascii_uppercase();
                    assert!(sql.replace(' ', "").contains(&level), "{sql}");
                    assert_eq!(sql.contains("READ ONLY"), read_only, "{sql}");
                    assert_eq!(sql.contains("DEFERRABLE"), deferrable, "{sql}");
                }
            }
        }
    }
}
