//! Validation problems, collected and reported together.

use std::fmt;

/// One problem found while reading or validating a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// The field, in URL parameter spelling (`port`, `pool_max_size`, …).
    pub field: String,
    /// The offending value, with secrets masked; `None` when the field is missing.
    pub value: Option<String>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

impl Problem {
    pub(crate) fn new(
        field: impl Into<String>,
        value: Option<&str>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Problem {
            field: field.into(),
            value: value.map(str::to_owned),
            message: message.into(),
            hint: hint.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.field)?;
        if let Some(v) = &self.value {
            write!(f, " = {v:?}")?;
        }
        write!(f, ": {}; hint: {}", self.message, self.hint)
    }
}

/// Every problem of a configuration, found in one pass.
///
/// ```
/// use pgprovider::Config;
/// let err = Config::from_url("postgres://db:0/app?pool_max_sise=5").unwrap_err();
/// assert_eq!(err.problems().len(), 2);
/// assert!(err.to_string().contains("did you mean pool_max_size"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    problems: Vec<Problem>,
}

impl ConfigError {
    pub(crate) fn new(problems: Vec<Problem>) -> Self {
        debug_assert!(!problems.is_empty());
        ConfigError { problems }
    }

    /// The problems, in the order they were found.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The problem about `field`, if any.
    pub fn problem(&self, field: &str) -> Option<&Problem> {
        self.problems.iter().find(|p| p.field == field)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid configuration ({n} problem{})",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for pgprovider_core::Error {
    fn from(e: ConfigError) -> Self {
        pgprovider_core::Error::new(pgprovider_core::ErrorKind::Config, e.to_string())
            .with_hint("fix the fields listed above")
    }
}

/// The known name closest to `input`, if it is close enough to be a likely typo.
pub(crate) fn did_you_mean<'a>(input: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (levenshtein(input, k), *k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(
            did_you_mean("sslmod", &["sslmode", "port"]),
            Some("sslmode")
        );
        assert_eq!(did_you_mean("xyzzy", &["sslmode", "port"]), None);
    }
}
