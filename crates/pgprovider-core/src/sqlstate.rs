//! SQLSTATE codes and their classification: the one place that decides which server errors
//! are retryable, which mean the connection is gone, and so on.
//!
//! Why hand-written and not generated from the server's `errcodes.txt`: the provider only
//! needs the handful of codes below to make decisions; any other code is still carried
//! through unchanged by [`SqlState::new`], so nothing is lost.

use std::fmt;

/// A five-character SQLSTATE code, as sent by the server.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState([u8; 5]);

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $code:literal;)*) => {
        impl SqlState {
            $($(#[$doc])* pub const $name: SqlState = SqlState(*$code);)*
        }
    };
}

codes! {
    /// `00000` successful completion.
    SUCCESSFUL_COMPLETION = b"00000";
    /// `08000` connection exception.
    CONNECTION_EXCEPTION = b"08000";
    /// `08001` the client could not establish a connection.
    SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION = b"08001";
    /// `08003` connection does not exist.
    CONNECTION_DOES_NOT_EXIST = b"08003";
    /// `08004` the server rejected the connection.
    SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION = b"08004";
    /// `08006` connection failure.
    CONNECTION_FAILURE = b"08006";
    /// `08P01` protocol violation.
    PROTOCOL_VIOLATION = b"08P01";
    /// `0A000` feature not supported (also "cached plan must not change result type").
    FEATURE_NOT_SUPPORTED = b"0A000";
    /// `23505` unique violation.
    UNIQUE_VIOLATION = b"23505";
    /// `23503` foreign key violation.
    FOREIGN_KEY_VIOLATION = b"23503";
    /// `23502` not-null violation.
    NOT_NULL_VIOLATION = b"23502";
    /// `23514` check violation.
    CHECK_VIOLATION = b"23514";
    /// `23P01` exclusion violation.
    EXCLUSION_VIOLATION = b"23P01";
    /// `25006` read-only SQL transaction (a write reached a standby or a read-only session).
    READ_ONLY_SQL_TRANSACTION = b"25006";
    /// `25P02` in failed SQL transaction.
    IN_FAILED_SQL_TRANSACTION = b"25P02";
    /// `26000` invalid SQL statement name (a prepared statement that no longer exists).
    INVALID_SQL_STATEMENT_NAME = b"26000";
    /// `28000` invalid authorization specification.
    INVALID_AUTHORIZATION_SPECIFICATION = b"28000";
    /// `28P01` invalid password.
    INVALID_PASSWORD = b"28P01";
    /// `3D000` invalid catalog name (the database does not exist).
    INVALID_CATALOG_NAME = b"3D000";
    /// `40001` serialization failure.
    SERIALIZATION_FAILURE = b"40001";
    /// `40P01` deadlock detected.
    DEADLOCK_DETECTED = b"40P01";
    /// `42601` syntax error.
    SYNTAX_ERROR = b"42601";
    /// `42P01` undefined table.
    UNDEFINED_TABLE = b"42P01";
    /// `42704` undefined object (such as an unknown setting; the tenant scope check's
    /// marker).
    UNDEFINED_OBJECT = b"42704";
    /// `53300` too many connections.
    TOO_MANY_CONNECTIONS = b"53300";
    /// `57014` query canceled.
    QUERY_CANCELED = b"57014";
    /// `57P01` admin shutdown.
    ADMIN_SHUTDOWN = b"57P01";
    /// `57P02` crash shutdown.
    CRASH_SHUTDOWN = b"57P02";
    /// `57P03` cannot connect now (the server is starting or shutting down).
    CANNOT_CONNECT_NOW = b"57P03";
}

impl SqlState {
    /// Wraps a code from the server. Returns `None` unless it is five ASCII letters or digits.
    pub fn new(code: &str) -> Option<SqlState> {
        let bytes: [u8; 5] = code.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(u8::is_ascii_alphanumeric)
            .then_some(SqlState(bytes))
    }

    /// The code, such as `"40001"`.
    pub fn code(&self) -> &str {
        // Only ASCII is ever stored (checked in `new`, and by the constants).
        std::str::from_utf8(&self.0).unwrap_or("?????")
    }

    /// The two-character class, such as `"40"`.
    pub fn class(&self) -> &str {
        &self.code()[..2]
    }

    /// A transaction that may succeed when run again from the start: serialization failure
    /// (`40001`) and deadlock (`40P01`).
    pub fn is_retryable_transaction(&self) -> bool {
        *self == SqlState::SERIALIZATION_FAILURE || *self == SqlState::DEADLOCK_DETECTED
    }

    /// The connection is gone or unusable: class `08`, and the server shutting down
    /// (`57P01`, `57P02`, `57P03`).
    pub fn is_connection_lost(&self) -> bool {
        self.class() == "08"
            || *self == SqlState::ADMIN_SHUTDOWN
            || *self == SqlState::CRASH_SHUTDOWN
            || *self == SqlState::CANNOT_CONNECT_NOW
    }

    /// A transient refusal to connect that a pool should back off from: too many
    /// connections (`53300`), cannot connect now (`57P03`).
    pub fn is_transient_connect_refusal(&self) -> bool {
        *self == SqlState::TOO_MANY_CONNECTIONS || *self == SqlState::CANNOT_CONNECT_NOW
    }

    /// An integrity constraint was violated (class `23`).
    pub fn is_constraint_violation(&self) -> bool {
        self.class() == "23"
    }

    /// A write reached a read-only node or session (`25006`).
    pub fn is_read_only(&self) -> bool {
        *self == SqlState::READ_ONLY_SQL_TRANSACTION
    }

    /// Authentication failed (class `28`): retrying with the same credentials will not help.
    pub fn is_auth_failure(&self) -> bool {
        self.class() == "28"
    }
}

impl fmt::Debug for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SqlState({})", self.code())
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_classifies() {
        let s = SqlState::new("40001").unwrap();
        assert_eq!(s, SqlState::SERIALIZATION_FAILURE);
        assert_eq!(s.class(), "40");
        assert!(s.is_retryable_transaction());
        assert!(SqlState::DEADLOCK_DETECTED.is_retryable_transaction());
        assert!(!SqlState::UNIQUE_VIOLATION.is_retryable_transaction());
        assert!(SqlState::new("08006").unwrap().is_connection_lost());
        assert!(SqlState::ADMIN_SHUTDOWN.is_connection_lost());
        assert!(!SqlState::SYNTAX_ERROR.is_connection_lost());
        assert!(SqlState::TOO_MANY_CONNECTIONS.is_transient_connect_refusal());
        assert!(SqlState::UNIQUE_VIOLATION.is_constraint_violation());
        assert!(SqlState::READ_ONLY_SQL_TRANSACTION.is_read_only());
        assert!(SqlState::INVALID_PASSWORD.is_auth_failure());
        assert_eq!(format!("{:?} {}", s, s), "SqlState(40001) 40001");
    }

    #[test]
    fn rejects_malformed_codes() {
        assert!(SqlState::new("4000").is_none());
        assert!(SqlState::new("400011").is_none());
        assert!(SqlState::new("40 01").is_none());
        assert_eq!(SqlState::new("XX000").unwrap().code(), "XX000");
    }
}
