//! Resolving the password at connect time, from its source or a libpq password file.

use super::{Config, Node};
use pgprovider_core::{ConnectParams, Error, Host, Secret};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Where the password comes from. Its `Debug` never shows a secret.
#[derive(Clone)]
#[non_exhaustive]
pub enum PasswordSource {
    /// No password.
    None,
    /// A fixed password (from the URL, `PGPASSWORD` or `with_password`).
    Literal(pgprovider_core::Secret),
    /// A file whose whole content, trimmed, is the password (read at each connect).
    File(PathBuf),
    /// A shell command that prints the password (run at each connect).
    Command(String),
    /// A rotating secret ([`secrets`](crate::secrets)): the current value, re-read when it
    /// changes, with the previous one as a fallback for a grace period.
    Rotating(Arc<crate::secrets::Rotation>),
}

impl PartialEq for PasswordSource {
    fn eq(&self, other: &Self) -> bool {
        use PasswordSource as P;
        match (self, other) {
            (P::None, P::None) => true,
            (P::Literal(a), P::Literal(b)) => a == b,
            (P::File(a), P::File(b)) => a == b,
            (P::Command(a), P::Command(b)) => a == b,
            (P::Rotating(a), P::Rotating(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for PasswordSource {}

impl fmt::Debug for PasswordSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordSource::None => f.write_str("None"),
            PasswordSource::Literal(_) => f.write_str("Literal(***)"),
            PasswordSource::File(p) => f.debug_tuple("File").field(p).finish(),
            PasswordSource::Command(_) => f.write_str("Command(***)"),
            PasswordSource::Rotating(r) => f.debug_tuple("Rotating").field(r).finish(),
        }
    }
}

impl Config {
    /// Connects to `node` with `connect` given its parameters. With a
    /// [rotating secret](crate::secrets) the server refuses
    /// ([`ErrorKind::Auth`](pgprovider_core::ErrorKind::Auth)): tries the previous value
    /// while its grace period lasts (logged loudly), then reads the source again and tries
    /// the current value once more (the server may have switched in between). At most
    /// three attempts.
    ///
    /// # Errors
    /// As [`connect_params`](Self::connect_params), or `connect`'s error.
    pub async fn connect_with<C, F, Fut>(&self, node: &Node, connect: F) -> Result<C, Error>
    where
        F: Fn(ConnectParams) -> Fut,
        Fut: std::future::Future<Output = Result<C, Error>>,
    {
        let params = self.connect_params(node).await?;
        let PasswordSource::Rotating(rotation) = &self.password else {
            return connect(params).await;
        };
        let with = |secret: Option<Secret>| {
            let mut p = params.clone();
            p.password = secret;
            p
        };
        let is_auth = |r: &Result<C, Error>| matches!(r, Err(e) if e.kind() == pgprovider_core::ErrorKind::Auth);
        let first = connect(params.clone()).await;
        if !is_auth(&first) {
            return first;
        }
        // The server may not have the new secret yet: the previous one, in its grace.
        if let Some(previous) = rotation.fallback(&node.to_string()) {
            let r = connect(with(Some(previous))).await;
            if !is_auth(&r) {
                return r;
            }
        }
        // The server may have been given a secret the source has and we have not read
        // yet, or have switched between the two attempts: read the source, try again once.
        let _ = rotation.refresh().await;
        match rotation.current().await {
            Ok(current) => connect(with(Some(current))).await,
            Err(_) => first,
        }
    }

    /// Uses `rotation` for the password (see [`secrets`](crate::secrets)).
    pub(crate) fn set_rotation(&mut self, rotation: Arc<crate::secrets::Rotation>) {
        self.password = PasswordSource::Rotating(rotation);
    }
}

pub(super) async fn resolve(config: &Config, node: &Node) -> Result<Option<Secret>, Error> {
    match &config.password {
        PasswordSource::Literal(s) => Ok(Some(s.clone())),
        PasswordSource::File(path) => crate::secrets::read_secret_file(path.clone())
            .await
            .map(Some)
            .map_err(|e| e.with_node(node.to_string())),
        PasswordSource::Command(cmd) => crate::secrets::run_secret_command(cmd.clone())
            .await
            .map(Some)
            .map_err(|e| e.with_node(node.to_string())),
        PasswordSource::Rotating(r) => r
            .current()
            .await
            .map(Some)
            .map_err(|e| e.with_node(node.to_string())),
        PasswordSource::None => match &config.passfile {
            Some(path) => {
                let path = path.to_owned();
                let text =
                    crate::secrets::blocking(move || std::fs::read_to_string(&path).ok()).await;
                Ok(text.and_then(|t| pgpass_lookup(&t, node, &config.dbname, &config.user)))
            }
            None => Ok(None),
        },
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
