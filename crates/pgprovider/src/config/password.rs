//! Resolving the password at connect time, from its source or a libpq password file.

use super::{Config, Node, PasswordSource};
use pgprovider_core::{Error, ErrorKind, Host, Secret};

pub(super) async fn resolve(config: &Config, node: &Node) -> Result<Option<Secret>, Error> {
    match &config.password {
        PasswordSource::Literal(s) => Ok(Some(s.clone())),
        PasswordSource::File(path) => {
            let path = path.clone();
            let text = blocking(move || std::fs::read_to_string(&path).map_err(|e| (path, e)))
                .await
                .map_err(|(path, e)| {
                    Error::new(
                        ErrorKind::Config,
                        format!("cannot read password_file {}: {e}", path.display()),
                    )
                    .with_node(node.to_string())
                    .with_hint("check that the file exists and is readable by this process")
                })?;
            Ok(Some(Secret::new(text.trim_end_matches(['\r', '\n']))))
        }
        PasswordSource::Command(cmd) => {
            let cmd = cmd.clone();
            let out = blocking(move || {
                std::process::Command::new("sh")
                    .arg("-c")
                    .arg(&cmd)
                    .stdin(std::process::Stdio::null())
                    .output()
            })
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("cannot run password_command: {e}"),
                )
                .with_node(node.to_string())
            })?;
            if !out.status.success() {
                // stderr is not included: a failing secret tool may echo what it was given.
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("password_command failed with {}", out.status),
                )
                .with_node(node.to_string())
                .with_hint("run the command by hand to see its error"));
            }
            let text = String::from_utf8(out.stdout).map_err(|_| {
                Error::new(
                    ErrorKind::Config,
                    "password_command printed non-UTF-8 output",
                )
                .with_node(node.to_string())
            })?;
            Ok(Some(Secret::new(text.trim_end_matches(['\r', '\n']))))
        }
        PasswordSource::None => match &config.passfile {
            Some(path) => {
                let path = path.to_owned();
                let text = blocking(move || std::fs::read_to_string(&path).ok()).await;
                Ok(text.and_then(|t| pgpass_lookup(&t, node, &config.dbname, &config.user)))
            }
            None => Ok(None),
        },
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => match h.spawn_blocking(f).await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        },
        Err(_) => f(),
    }
}

/// Finds the password for `node`/`dbname`/`user` in a libpq password file's text
/// (`hostname:port:database:username:password`, `*` matches anything, `\` escapes).
pub(super) fn pgpass_lookup(text: &str, node: &Node, dbname: &str, user: &str) -> Option<Secret> {
    let host = match node.host() {
        Host::Tcp(h) => h.clone(),
        Host::Unix(_) => "localhost".to_owned(),
    };
    let port = node.port().to_string();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .find_map(|line| {
            let fields = split_pgpass(line);
            let [h, p, d, u, pw] = fields.as_slice() else {
                return None;
            };
            let m = |pat: &String, v: &str| pat == "*" || pat == v;
            (m(h, &host) && m(p, &port) && m(d, dbname) && m(u, user))
                .then(|| Secret::new(pw.clone()))
        })
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = Vec::with_capacity(5);
    let mut cur = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            // The password, last, may hold unescaped colons.
            ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}
