//! Reading a statement's rows: one, at most one, or every row as a type. Shared by every
//! query surface (a leaf module: it depends on nothing of this crate's).

use pgprovider_core::{FromRow, Result};

/// Every row of `rows` read as a `T`.
pub(crate) fn rows_as<R, T: FromRow<R>>(rows: Vec<R>) -> Result<Vec<T>> {
    rows.iter().map(T::from_row).collect()
}

/// The one row of `rows`, or the row-count error.
pub(crate) fn one<R>(mut rows: Vec<R>) -> Result<R> {
    match rows.len() {
        1 => Ok(rows.pop().expect("one row")),
        n => Err(pgprovider_core::row_count_error(n, "exactly one")),
    }
}

/// The row of `rows` if any, or the row-count error when there are several.
pub(crate) fn at_most_one<R>(mut rows: Vec<R>) -> Result<Option<R>> {
    match rows.len() {
        0 | 1 => Ok(rows.pop()),
        n => Err(pgprovider_core::row_count_error(n, "at most one")),
    }
}
