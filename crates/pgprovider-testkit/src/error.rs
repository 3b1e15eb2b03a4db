//! The test kit's error.

use std::fmt;

/// What went wrong in the test kit: the step, and the server log or command output that
/// explains it.
#[derive(Debug)]
pub struct KitError(pub(crate) String);

impl KitError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        KitError(msg.into())
    }
}

impl fmt::Display for KitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KitError {}

impl From<std::io::Error> for KitError {
    fn from(e: std::io::Error) -> Self {
        KitError(format!("i/o error: {e}"))
    }
}

impl From<tokio_postgres::Error> for KitError {
    fn from(e: tokio_postgres::Error) -> Self {
        KitError(format!("sql error: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_keep_the_cause() {
        let e: KitError = std::io::Error::other("disk full").into();
        assert_eq!(e.to_string(), "i/o error: disk full");
        assert!(format!("{e:?}").contains("disk full"));
    }
}
