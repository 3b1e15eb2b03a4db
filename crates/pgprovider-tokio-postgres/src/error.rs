//! Maps tokio-postgres errors into pgprovider's [`Error`], at the boundary.

use pgprovider_core::{DbErrorFields, Error, ErrorKind, SqlState};

/// Converts a tokio-postgres error: server errors keep their SQLSTATE and fields; a closed
/// connection becomes [`ErrorKind::ConnectionLost`].
pub fn map_error(e: tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        let state =
            SqlState::new(db.code().code()).unwrap_or(SqlState::new("XX000").expect("valid"));
        let mut fields = DbErrorFields::default();
        fields.detail = db.detail().map(str::to_owned);
        fields.hint = db.hint().map(str::to_owned);
        fields.schema = db.schema().map(str::to_owned);
        fields.table = db.table().map(str::to_owned);
        fields.column = db.column().map(str::to_owned);
        fields.constraint = db.constraint().map(str::to_owned);
        fields.severity = Some(db.severity().to_owned());
        let msg = db.message().to_owned();
        return Error::database(state, msg)
            .with_db_fields(fields)
            .with_source(e);
    }
    if e.is_closed() {
        return Error::new(ErrorKind::ConnectionLost, "the connection is closed")
            .with_hint("the server closed the connection or the network dropped it; retry on a new connection")
            .with_source(e);
    }
    let msg = e.to_string();
    Error::new(ErrorKind::Other, msg).with_source(e)
}

/// Converts an error met while connecting to `node`.
pub(crate) fn connect_error(e: tokio_postgres::Error, node: &str) -> Error {
    if e.as_db_error().is_some() {
        let err = map_error(e);
        let hint = match err.kind() {
            ErrorKind::Auth => "check the user name and password",
            _ if err.sql_state() == Some(SqlState::INVALID_CATALOG_NAME) => {
                "check the database name, or create the database"
            }
            _ if err.sql_state() == Some(SqlState::TOO_MANY_CONNECTIONS) => {
                "the server is at max_connections; lower pool sizes or raise max_connections"
            }
            _ => "see the server's message",
        };
        // The server's kind is kept: a missing database or bad password is not retryable,
        // while 53300 and 57P03 are, through their SQLSTATE.
        return err.with_node(node).with_hint(hint);
    }
    let text = e.to_string();
    if text.starts_with("error performing TLS handshake") {
        let detail = std::error::Error::source(&e).map_or_else(|| text.clone(), |s| s.to_string());
        let hint = if detail.contains("server does not support TLS") {
            "the server does not offer TLS: turn ssl on at the server, or lower sslmode to prefer"
        } else {
            "check sslrootcert, the server's certificate and the host name it was issued for"
        };
        return Error::new(ErrorKind::Tls, format!("TLS handshake failed: {detail}"))
            .with_node(node)
            .with_hint(hint)
            .with_source(e);
    }
    let detail = std::error::Error::source(&e).map_or_else(|| text, |s| s.to_string());
    Error::new(ErrorKind::Connect, format!("cannot connect: {detail}"))
        .with_node(node)
        .with_hint("check that the server is running and reachable at this address")
        .with_source(e)
}
