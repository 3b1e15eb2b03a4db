//! Where migrations come from: a folder of SQL files, or files embedded at compile time.

use crate::{Error, ErrorKind, Result};
use std::path::Path;

/// One migration: a version, a name, the SQL to apply it and, optionally, to revert it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    version: i64,
    name: String,
    up: String,
    down: Option<String>,
    transactional: bool,
    checksum: String,
}

/// The first-line marker of a migration that must run outside a transaction (for
/// `CREATE INDEX CONCURRENTLY` and the like). Such a file holds a single statement.
pub const NO_TRANSACTION: &str = "-- pgprovider:no-transaction";

impl Migration {
    /// A migration from its parts.
    pub fn new(
        version: i64,
        name: impl Into<String>,
        up: impl Into<String>,
        down: Option<String>,
    ) -> Self {
        let up = up.into();
        Migration {
            version,
            name: name.into(),
            transactional: !up.trim_start().starts_with(NO_TRANSACTION),
            checksum: checksum(&up),
            up,
            down,
        }
    }
    /// The version (the number the file name starts with).
    pub fn version(&self) -> i64 {
        self.version
    }
    /// The name (the rest of the file name).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The SQL that applies it.
    pub fn up(&self) -> &str {
        &self.up
    }
    /// The SQL that reverts it, if a down file exists.
    pub fn down(&self) -> Option<&str> {
        self.down.as_deref()
    }
    /// Whether it runs in a transaction of its own (files without [`NO_TRANSACTION`]).
    pub fn transactional(&self) -> bool {
        self.transactional
    }
    /// A fingerprint of the up SQL, stored when it is applied.
    pub fn checksum(&self) -> &str {
        &self.checksum
    }
    /// `V<version> <name>`, for messages.
    pub fn label(&self) -> String {
        format!("{}_{}", self.version, self.name)
    }
}

/// FNV-1a (64-bit) of the SQL, as 16 hex digits. Why not SHA-256: the checksum detects edits
/// to applied files, not tampering, and a fixed, documented function needs no dependency
/// (std's hasher may change between Rust releases).
pub fn checksum(sql: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sql.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// An ordered set of migrations with distinct versions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Migrations(Vec<Migration>);

impl Migrations {
    /// Reads `dir`: files named `<version>_<name>.sql` or `<version>_<name>.up.sql`, with an
    /// optional `<version>_<name>.down.sql`. Other files are ignored.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] when the folder cannot be read, a file name has no version,
    /// or two files share a version.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let entries = std::fs::read_dir(dir).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("cannot read the migrations folder {}: {e}", dir.display()),
            )
            .with_hint("pass the folder that holds the .sql files (--dir)")
        })?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("cannot list {}: {e}", dir.display()),
                )
            })?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            if !name.ends_with(".sql") {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            files.push((name, text));
        }
        Self::from_files(files.iter().map(|(n, t)| (n.as_str(), t.as_str())))
    }

    /// Builds the set from `(file name, contents)` pairs, named as for
    /// [`from_dir`](Self::from_dir); what `embed_migrations!` produces.
    ///
    /// # Errors
    /// As [`from_dir`](Self::from_dir).
    pub fn from_files<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut ups: Vec<(i64, String, String)> = Vec::new();
        let mut downs: Vec<(i64, String)> = Vec::new();
        for (file, text) in files {
            let Some(stem) = file.strip_suffix(".sql") else {
                continue;
            };
            let (stem, down) = match stem.strip_suffix(".down") {
                Some(s) => (s, true),
                None => (stem.strip_suffix(".up").unwrap_or(stem), false),
            };
            let (version, name) = parse_stem(stem).ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    format!("migration file {file:?} does not start with a version"),
                )
                .with_hint("name files <version>_<name>.sql, such as 0003_add_orders.sql")
            })?;
            if down {
                downs.push((version, text.to_owned()));
            } else {
                if let Some((_, other, _)) = ups.iter().find(|(v, _, _)| *v == version) {
                    return Err(Error::new(
                        ErrorKind::Config,
                        format!("two migrations have version {version}: {other:?} and {name:?}"),
                    )
                    .with_hint("give every migration its own version number"));
                }
                ups.push((version, name.to_owned(), text.to_owned()));
            }
        }
        if let Some((v, _)) = downs
            .iter()
            .find(|(v, _)| !ups.iter().any(|(u, _, _)| u == v))
        {
            return Err(Error::new(
                ErrorKind::Config,
                format!("a down file for version {v} has no up file"),
            )
            .with_hint("add the up file, or remove the down file"));
        }
        ups.sort_by_key(|(v, _, _)| *v);
        Ok(Migrations(
            ups.into_iter()
                .map(|(v, name, up)| {
                    let down = downs.iter().find(|(d, _)| *d == v).map(|(_, t)| t.clone());
                    Migration::new(v, name, up, down)
                })
                .collect(),
        ))
    }

    /// The migrations, by version.
    pub fn iter(&self) -> impl Iterator<Item = &Migration> {
        self.0.iter()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The migration with `version`.
    pub fn get(&self, version: i64) -> Option<&Migration> {
        self.0.iter().find(|m| m.version == version)
    }
}

/// `0003_add_orders` → `(3, "add_orders")`.
fn parse_stem(stem: &str) -> Option<(i64, &str)> {
    let digits = stem
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(stem.len());
    let version = stem[..digits].parse().ok()?;
    let name = stem[digits..].trim_start_matches(['_', '-']);
    Some((version, name))
}
