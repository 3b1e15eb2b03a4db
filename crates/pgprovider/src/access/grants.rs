//! `check_grants`: does the server grant every role what its permissions need?

use super::{AccessPolicy, Kind};
use crate::migrate::literal;
use crate::{Connection, Error, ErrorKind, Result};
use std::fmt;

/// One thing a role needs that the server does not grant.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Gap {
    /// The application role.
    pub role: String,
    /// The server role checked (the mapped one, or the login user).
    pub server_role: String,
    /// What is missing (`INSERT on public.orders`, `membership of app_writer`, …).
    pub missing: String,
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "role {:?} (server role {}): {}",
            self.role, self.server_role, self.missing
        )
    }
}

/// What [`Provider::check_grants`](crate::provider::Provider::check_grants) found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrantReport {
    /// Every gap, in role order.
    pub gaps: Vec<Gap>,
    /// How many (role, object, privilege) triples were checked.
    pub checked: usize,
}

impl GrantReport {
    /// Whether nothing is missing.
    pub fn is_ok(&self) -> bool {
        self.gaps.is_empty()
    }

    /// `Ok` when nothing is missing, else one error listing every gap.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] with every gap, one per line.
    pub fn into_result(self) -> Result<()> {
        if self.gaps.is_empty() {
            return Ok(());
        }
        let lines: Vec<String> = self.gaps.iter().map(|g| format!("  - {g}")).collect();
        Err(Error::new(
            ErrorKind::Config,
            format!(
                "the server does not grant what {} application role permission(s) need:\n{}",
                self.gaps.len(),
                lines.join("\n")
            ),
        )
        .with_hint("GRANT the privileges listed (or narrow the roles' patterns), then start again"))
    }
}

fn privilege(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Select | Kind::Copy => "SELECT",
        Kind::Insert => "INSERT",
        Kind::Update => "UPDATE",
        Kind::Delete => "DELETE",
        Kind::Truncate => "TRUNCATE",
        Kind::Ddl => "CREATE",
        Kind::Other => return None,
    })
}

/// `*` → `%`, with LIKE's own wildcards escaped.
fn like(glob: &str) -> String {
    let mut s = String::new();
    for c in glob.chars() {
        match c {
            '*' => s.push('%'),
            '%' | '_' | '\\' => {
                s.push('\\');
                s.push(c);
            }
            c => s.push(c),
        }
    }
    s
}

/// Checks every role of `policy` on `conn`.
pub(crate) async fn check<C: Connection>(
    conn: &mut C,
    policy: &AccessPolicy,
) -> Result<GrantReport> {
    let mut report = GrantReport::default();
    let login = first(conn, "SELECT session_user")
        .await?
        .unwrap_or_default();
    for (name, role) in policy.roles() {
        let server = role.server_role().unwrap_or(&login).to_owned();
        let gap = |missing: String| Gap {
            role: name.to_owned(),
            server_role: server.clone(),
            missing,
        };
        if role.server_role().is_some() {
            let sql = format!(
                "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {r}) THEN 'missing' \
                 WHEN pg_catalog.pg_has_role(session_user, {r}, 'MEMBER') THEN 'ok' ELSE 'not a member' END",
                r = literal(&server)
            );
            report.checked += 1;
            match first(conn, &sql).await?.as_deref() {
                Some("ok") => {}
                Some("missing") => {
                    report
                        .gaps
                        .push(gap(format!("the server role {server} does not exist")));
                    continue;
                }
                _ => {
                    report.gaps.push(gap(format!(
                        "the login user {login} is not a member of {server} (GRANT {server} TO {login})"
                    )));
                    continue;
                }
            }
        }
        for (kinds, pattern) in role.grants() {
            let (schema, table) = match pattern.split_once('.') {
                Some((s, t)) => (s, t),
                None if pattern == "*" => ("*", "*"),
                None => (policy.default_schema.as_str(), pattern),
            };
            let sql = format!(
                "SELECT n.nspname, c.relname, c.relkind, \
                 pg_catalog.has_table_privilege({r}, c.oid, 'SELECT'), \
                 pg_catalog.has_table_privilege({r}, c.oid, 'INSERT'), \
                 pg_catalog.has_table_privilege({r}, c.oid, 'UPDATE'), \
                 pg_catalog.has_table_privilege({r}, c.oid, 'DELETE'), \
                 pg_catalog.has_table_privilege({r}, c.oid, 'TRUNCATE'), \
                 pg_catalog.has_schema_privilege({r}, n.oid, 'CREATE') \
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') \
                 AND n.nspname LIKE {s} AND c.relname LIKE {t} \
                 AND ({explicit} OR (n.nspname NOT IN ('pg_catalog', 'information_schema') AND pg_catalog.left(n.nspname, 3) <> 'pg_')) \
                 ORDER BY 1, 2",
                r = literal(&server),
                s = literal(&like(schema)),
                t = literal(&like(table)),
                explicit = if schema.contains('*') {
                    "false"
                } else {
                    "true"
                },
            );
            let rows = conn.simple_query(&sql).await?;
            if rows.is_empty() && kinds.iter().any(|k| privilege(*k).is_some()) {
                report.gaps.push(gap(format!(
                    "the pattern {pattern} matches no table, view or sequence"
                )));
                continue;
            }
            for row in &rows {
                let object = format!(
                    "{}.{}",
                    row.get(0).unwrap_or("?"),
                    row.get(1).unwrap_or("?")
                );
                let sequence = row.get(2) == Some("S");
                for kind in kinds {
                    let Some(p) = privilege(*kind) else { continue };
                    let column = match p {
                        "SELECT" => 3,
                        "INSERT" => 4,
                        "UPDATE" => 5,
                        "DELETE" => 6,
                        "TRUNCATE" => 7,
                        _ => 8,
                    };
                    // Sequences know only SELECT, UPDATE (and USAGE).
                    if sequence && !matches!(p, "SELECT" | "UPDATE") {
                        continue;
                    }
                    report.checked += 1;
                    if row.get(column) != Some("t") {
                        let on = if p == "CREATE" {
                            format!("CREATE on schema {}", row.get(0).unwrap_or("?"))
                        } else {
                            format!("{p} on {object}")
                        };
                        if !report
                            .gaps
                            .iter()
                            .any(|g| g.role == name && g.missing == on)
                        {
                            report.gaps.push(gap(on));
                        }
                    }
                }
            }
        }
    }
    Ok(report)
}

async fn first<C: Connection>(conn: &mut C, sql: &str) -> Result<Option<String>> {
    let rows = conn.simple_query(sql).await?;
    Ok(rows.first().and_then(|r| r.get(0)).map(str::to_owned))
}
