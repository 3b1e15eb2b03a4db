//! A wrapper for secrets (passwords) that never shows its value.

use std::fmt;

/// A secret string (a password). `Debug` and `Display` print `***`; the value is only
/// reachable through [`Secret::expose`], so it cannot end up in logs or errors by accident.
///
/// ```
/// use pgprovider_core::Secret;
/// let s = Secret::new("hunter2");
/// assert_eq!(format!("{s:?} {s}"), "Secret(***) ***");
/// assert_eq!(s.expose(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value. Call this only where the value is sent to the server.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret::new(s)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shows_its_value() {
        let a: Secret = "pw".into();
        let b: Secret = String::from("pw").into();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "***");
        assert_eq!(format!("{b:?}"), "Secret(***)");
        assert_eq!(a.clone().expose(), "pw");
    }
}
