//! The one error type of pgprovider.

use crate::SqlState;
use std::error::Error as StdError;
use std::fmt;

/// A `Result` with pgprovider's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] is. Match on it to decide what to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration is invalid; nothing was attempted.
    Config,
    /// A connection could not be opened (network, refused, DNS, startup).
    Connect,
    /// TLS could not be negotiated or a certificate was rejected.
    Tls,
    /// The server rejected the credentials.
    Auth,
    /// An open connection was lost (closed, reset, server shut down).
    ConnectionLost,
    /// The server answered with an error; see [`Error::sql_state`] and [`Error::db_fields`].
    Database,
    /// No connection could be acquired from the pool in time.
    PoolTimeout,
    /// The pool is closed.
    PoolClosed,
    /// An operation ran past its deadline and was cancelled.
    Timeout,
    /// The reply to a statement (a COMMIT, say) was lost after it was sent: it may or may
    /// not have taken effect. Never retried automatically.
    OutcomeUnknown,
    /// A hook or policy rejected the operation before it reached the server.
    Rejected,
    /// The driver or server does not support what was asked.
    Unsupported,
    /// A query returned another number of rows than the call expects (`query_one` and none,
    /// say).
    RowCount,
    /// A value could not be read as the requested type, or a column does not exist.
    Decode,
    /// The node's circuit breaker is open: it failed repeatedly and calls fail fast until a
    /// probe succeeds.
    CircuitOpen,
    /// Too many callers are already waiting (a bounded queue is full): shed load or retry
    /// later.
    Overloaded,
    /// A security boundary was crossed: the server found a tenant's scope (role,
    /// `search_path`, tenant setting) changed after a statement. The transaction was rolled
    /// back and the connection closed.
    Security,
    /// A protocol or internal error.
    Other,
}

impl ErrorKind {
    /// A short lowercase name, stable for metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Auth => "auth",
            ErrorKind::ConnectionLost => "connection_lost",
            ErrorKind::Database => "database",
            ErrorKind::PoolTimeout => "pool_timeout",
            ErrorKind::PoolClosed => "pool_closed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::OutcomeUnknown => "outcome_unknown",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::RowCount => "row_count",
            ErrorKind::Decode => "decode",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Security => "security",
            ErrorKind::Other => "other",
        }
    }
}

/// The fields of a server error report beyond its SQLSTATE and message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DbErrorFields {
    /// `DETAIL`.
    pub detail: Option<String>,
    /// `HINT` from the server.
    pub hint: Option<String>,
    /// The schema of the object involved.
    pub schema: Option<String>,
    /// The table involved.
    pub table: Option<String>,
    /// The column involved.
    pub column: Option<String>,
    /// The constraint violated.
    pub constraint: Option<String>,
    /// The severity (`ERROR`, `FATAL`, …).
    pub severity: Option<String>,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    sql_state: Option<SqlState>,
    db: Option<DbErrorFields>,
    node: Option<String>,
    tenant: Option<String>,
    hint: Option<String>,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

/// pgprovider's error: what failed, on which node or tenant, the SQLSTATE when the server
/// sent one, and a hint on what to do.
///
/// Messages are lowercase and never contain secrets.
///
/// ```
/// use pgprovider_core::{Error, ErrorKind};
/// let e = Error::new(ErrorKind::Connect, "connection refused")
///     .with_node("db1:5432")
///     .with_hint("check that the server is running and accepts TCP connections");
/// assert_eq!(e.node(), Some("db1:5432"));
/// assert_eq!(
///     e.to_string(),
///     "connection refused (node db1:5432); hint: check that the server is running and accepts TCP connections"
/// );
/// ```
pub struct Error(Box<Inner>);

impl Error {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error(Box::new(Inner {
            kind,
            message: message.into(),
            sql_state: None,
            db: None,
            node: None,
            tenant: None,
            hint: None,
            source: None,
        }))
    }

    /// A server error with its SQLSTATE. Its kind is [`ErrorKind::Database`], or
    /// [`ErrorKind::ConnectionLost`] / [`ErrorKind::Auth`] when the code says so.
    pub fn database(sql_state: SqlState, message: impl Into<String>) -> Self {
        let kind = if sql_state.is_connection_lost() {
            ErrorKind::ConnectionLost
        } else if sql_state.is_auth_failure() {
            ErrorKind::Auth
        } else {
            ErrorKind::Database
        };
        let mut e = Error::new(kind, message);
        e.0.sql_state = Some(sql_state);
        e
    }

    /// Adds the server's extra fields.
    pub fn with_db_fields(mut self, fields: DbErrorFields) -> Self {
        self.0.db = Some(fields);
        self
    }

    /// Names the node (`host:port`) the error happened on.
    pub fn with_node(mut self, node: impl Into<String>) -> Self {
        self.0.node = Some(node.into());
        self
    }

    /// Names the tenant the error happened for.
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.0.tenant = Some(tenant.into());
        self
    }

    /// Says what the user can do about it.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.0.hint = Some(hint.into());
        self
    }

    /// Keeps the underlying cause.
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.0.source = Some(Box::new(source));
        self
    }

    /// Puts `context` (what was being done) in front of the message, keeping the kind,
    /// SQLSTATE, fields, node and hint: `"{context}: {message}"`.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.0.message = format!("{context}: {}", self.0.message);
        self
    }

    /// Changes the kind, keeping everything else.
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.0.kind = kind;
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The message, without node, tenant or hint.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The SQLSTATE the server sent, if any.
    pub fn sql_state(&self) -> Option<SqlState> {
        self.0.sql_state
    }

    /// The server's detail, hint, table, column and constraint, if any.
    pub fn db_fields(&self) -> Option<&DbErrorFields> {
        self.0.db.as_ref()
    }

    /// The node (`host:port`) the error happened on, if known.
    pub fn node(&self) -> Option<&str> {
        self.0.node.as_deref()
    }

    /// The tenant the error happened for, if any.
    pub fn tenant(&self) -> Option<&str> {
        self.0.tenant.as_deref()
    }

    /// What to do about it, if known.
    pub fn hint(&self) -> Option<&str> {
        self.0.hint.as_deref()
    }

    /// Whether running the same work again may succeed: a serialization failure or
    /// deadlock (re-run the whole transaction), a transient refusal to connect, or a failure
    /// to connect at all (nothing was sent). A lost reply ([`ErrorKind::OutcomeUnknown`]) is
    /// never retryable.
    pub fn is_retryable(&self) -> bool {
        match self.0.kind {
            ErrorKind::Connect | ErrorKind::PoolTimeout => true,
            ErrorKind::OutcomeUnknown => false,
            _ => self
                .0
                .sql_state
                .is_some_and(|s| s.is_retryable_transaction() || s.is_transient_connect_refusal()),
        }
    }

    /// A transaction lost to another (serialization failure `40001`, deadlock `40P01`):
    /// running the whole transaction again may succeed.
    pub fn is_transaction_conflict(&self) -> bool {
        self.0
            .sql_state
            .is_some_and(|s| s.is_retryable_transaction())
    }

    /// A prepared statement the server no longer accepts: `cached plan must not change
    /// result type` (`0A000`, after a table it reads was altered) or `prepared statement …
    /// does not exist` (`26000`, after `DEALLOCATE` or behind a transaction-mode pooler).
    /// Preparing it again fixes it.
    pub fn is_stale_statement(&self) -> bool {
        match self.0.sql_state {
            Some(SqlState::INVALID_SQL_STATEMENT_NAME) => true,
            Some(SqlState::FEATURE_NOT_SUPPORTED) => self.0.message.contains("cached plan"),
            _ => false,
        }
    }

    /// An integrity constraint was violated (class `23`); see
    /// [`DbErrorFields::constraint`].
    pub fn is_constraint_violation(&self) -> bool {
        self.0
            .sql_state
            .is_some_and(|s| s.is_constraint_violation())
    }

    /// A write reached a read-only node or transaction (`25006`).
    pub fn is_read_only(&self) -> bool {
        self.0.sql_state.is_some_and(|s| s.is_read_only())
    }

    /// A failure of the node rather than of the statement: it could not be reached, the
    /// connection broke, the pool could not get a connection in time, a statement timed out,
    /// or the server is shutting down. Circuit breakers count these.
    pub fn is_node_failure(&self) -> bool {
        matches!(
            self.0.kind,
            ErrorKind::Connect
                | ErrorKind::ConnectionLost
                | ErrorKind::PoolTimeout
                | ErrorKind::Timeout
                | ErrorKind::OutcomeUnknown
        ) || self
            .0
            .sql_state
            .is_some_and(|s| s.is_connection_lost() || s.is_transient_connect_refusal())
    }

    /// Whether the connection that produced this error must be discarded.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self.0.kind,
            ErrorKind::ConnectionLost | ErrorKind::OutcomeUnknown
        ) || self.0.sql_state.is_some_and(|s| s.is_connection_lost())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.0.kind)
            .field("message", &self.0.message);
        if let Some(s) = &self.0.sql_state {
            d.field("sql_state", s);
        }
        if let Some(db) = &self.0.db {
            d.field("db", db);
        }
        if let Some(n) = &self.0.node {
            d.field("node", n);
        }
        if let Some(t) = &self.0.tenant {
            d.field("tenant", t);
        }
        if let Some(h) = &self.0.hint {
            d.field("hint", h);
        }
        if let Some(s) = &self.0.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)?;
        if let Some(s) = &self.0.sql_state {
            write!(f, " (SQLSTATE {s})")?;
        }
        match (&self.0.node, &self.0.tenant) {
            (Some(n), Some(t)) => write!(f, " (node {n}, tenant {t})")?,
            (Some(n), None) => write!(f, " (node {n})")?,
            (None, Some(t)) => write!(f, " (tenant {t})")?,
            (None, None) => {}
        }
        if let Some(detail) = self.0.db.as_ref().and_then(|d| d.detail.as_deref()) {
            write!(f, "; detail: {detail}")?;
        }
        if let Some(h) = &self.0.hint {
            write!(f, "; hint: {h}")?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_sqlstate() {
        assert_eq!(
            Error::database(SqlState::ADMIN_SHUTDOWN, "terminating").kind(),
            ErrorKind::ConnectionLost
        );
        assert_eq!(
            Error::database(SqlState::INVALID_PASSWORD, "bad password").kind(),
            ErrorKind::Auth
        );
        let e = Error::database(SqlState::UNIQUE_VIOLATION, "duplicate key").with_db_fields(
            DbErrorFields {
                constraint: Some("t_pkey".into()),
                detail: Some("Key (id)=(1) already exists.".into()),
                ..Default::default()
            },
        );
        assert_eq!(e.kind(), ErrorKind::Database);
        assert_eq!(e.db_fields().unwrap().constraint.as_deref(), Some("t_pkey"));
        assert!(!e.is_retryable());
        assert_eq!(
            e.to_string(),
            "duplicate key (SQLSTATE 23505); detail: Key (id)=(1) already exists."
        );
    }

    #[test]
    fn retryability() {
        assert!(Error::database(SqlState::DEADLOCK_DETECTED, "x").is_retryable());
        assert!(Error::database(SqlState::TOO_MANY_CONNECTIONS, "x").is_retryable());
        assert!(Error::new(ErrorKind::Connect, "refused").is_retryable());
        assert!(!Error::new(ErrorKind::OutcomeUnknown, "lost").is_retryable());
        assert!(Error::new(ErrorKind::OutcomeUnknown, "lost").is_connection_lost());
        assert!(!Error::new(ErrorKind::Config, "bad").is_retryable());
    }

    #[test]
    fn classification_helpers() {
        let conflict = Error::database(SqlState::SERIALIZATION_FAILURE, "could not serialize");
        assert!(conflict.is_transaction_conflict());
        assert!(!conflict.is_stale_statement());
        assert!(
            Error::database(
                SqlState::FEATURE_NOT_SUPPORTED,
                "cached plan must not change result type"
            )
            .is_stale_statement()
        );
        assert!(
            !Error::database(SqlState::FEATURE_NOT_SUPPORTED, "not supported").is_stale_statement()
        );
        assert!(
            Error::database(
                SqlState::INVALID_SQL_STATEMENT_NAME,
                "prepared statement \"s1\" does not exist"
            )
            .is_stale_statement()
        );
        assert!(Error::database(SqlState::CHECK_VIOLATION, "check").is_constraint_violation());
        assert!(Error::database(SqlState::READ_ONLY_SQL_TRANSACTION, "ro").is_read_only());
        assert!(!Error::new(ErrorKind::Timeout, "slow").is_read_only());
        assert!(Error::new(ErrorKind::Timeout, "slow").is_node_failure());
        assert!(Error::database(SqlState::ADMIN_SHUTDOWN, "bye").is_node_failure());
        assert!(!Error::database(SqlState::UNIQUE_VIOLATION, "dup").is_node_failure());
        let e = Error::database(SqlState::UNIQUE_VIOLATION, "duplicate key")
            .context("statement 2 of 3");
        assert_eq!(e.message(), "statement 2 of 3: duplicate key");
        assert_eq!(e.sql_state(), Some(SqlState::UNIQUE_VIOLATION));
    }

    #[test]
    fn display_debug_and_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::new(ErrorKind::Connect, "could not connect")
            .with_node("h:1")
            .with_tenant("acme")
            .with_source(io);
        assert_eq!(e.to_string(), "could not connect (node h:1, tenant acme)");
        assert_eq!(e.tenant(), Some("acme"));
        assert!(e.source().unwrap().to_string().contains("refused"));
        let dbg = format!("{e:?}");
        assert!(dbg.contains("Connect") && dbg.contains("acme"));
        assert_eq!(e.with_kind(ErrorKind::Tls).kind(), ErrorKind::Tls);
        assert_eq!(ErrorKind::PoolTimeout.as_str(), "pool_timeout");
        assert_eq!(
            Error::new(ErrorKind::Other, "x")
                .with_tenant("t")
                .to_string(),
            "x (tenant t)"
        );
        let full = Error::database(SqlState::UNIQUE_VIOLATION, "dup")
            .with_db_fields(DbErrorFields {
                hint: Some("h".into()),
                ..Default::default()
            })
            .with_node("n:1")
            .with_hint("do this");
        let dbg = format!("{full:?}");
        for part in ["23505", "hint: Some(\"h\")", "do this", "n:1"] {
            assert!(dbg.contains(part), "{part} in {dbg}");
        }
        assert_eq!(full.hint(), Some("do this"));
        assert_eq!(full.message(), "dup");
        assert!(full.source().is_none());
        for kind in [
            ErrorKind::Config,
            ErrorKind::Connect,
            ErrorKind::Tls,
            ErrorKind::Auth,
            ErrorKind::ConnectionLost,
            ErrorKind::Database,
            ErrorKind::PoolTimeout,
            ErrorKind::PoolClosed,
            ErrorKind::Timeout,
            ErrorKind::OutcomeUnknown,
            ErrorKind::Rejected,
            ErrorKind::Unsupported,
            ErrorKind::RowCount,
            ErrorKind::Decode,
            ErrorKind::CircuitOpen,
            ErrorKind::Other,
        ] {
            let name = kind.as_str();
            assert!(!name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
    }
}
