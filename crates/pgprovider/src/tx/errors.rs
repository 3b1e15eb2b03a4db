//! The errors transactions make of their own.

use pgprovider_core::{Error, ErrorKind};

/// What routing needs of an error (kind, SQLSTATE, message, node), as a new value.
pub(super) fn copy_of(e: &Error) -> Error {
    let c = match e.sql_state() {
        Some(state) => Error::database(state, e.message()).with_kind(e.kind()),
        None => Error::new(e.kind(), e.message()),
    };
    match e.node() {
        Some(n) => c.with_node(n),
        None => c,
    }
}

pub(super) fn ended_error() -> Error {
    Error::new(ErrorKind::Other, "the transaction has already ended")
        .with_hint("a Tx handle was used after commit, rollback, or the end of its closure")
}

pub(super) fn deadline_error() -> Error {
    Error::new(
        ErrorKind::Timeout,
        "the transaction ran past its deadline and was rolled back",
    )
    .with_hint("raise TxOptions::with_timeout, or do less in one transaction")
}

pub(super) fn outcome_unknown(msg: String, node: String) -> Error {
    Error::new(ErrorKind::OutcomeUnknown, msg)
        .with_node(node)
        .with_hint("the transaction may or may not have committed: check before doing it again")
}
