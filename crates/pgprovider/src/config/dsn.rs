//! Connection URLs with libpq semantics. See the key table in the [module docs](super).

use super::builder::{AutoscaleKey, ConfigBuilder, host_from_str, parse_choice};
use super::problem::did_you_mean;
use super::{LoadBalanceHosts, TargetSessionAttrs, ValidationPolicy, parse_duration};
use percent_encoding::percent_decode_str;
use pgprovider_core::PoolerMode;
use pgprovider_core::{Secret, SslMode};
use std::path::PathBuf;

/// Every key a URL's query (and the environment) may set.
pub(super) const KEYS: &[&str] = &[
    "host",
    "port",
    "user",
    "password",
    "dbname",
    "passfile",
    "password_file",
    "password_command",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "target_session_attrs",
    "load_balance_hosts",
    "application_name",
    "connect_timeout",
    "options",
    "pool_max_size",
    "pool_min_idle",
    "pool_acquire_timeout",
    "pool_idle_timeout",
    "pool_max_lifetime",
    "pool_validation",
    "pool_leak_detection_threshold",
    "pool_max_waiters",
    "pool_pipeline",
    "pool_autoscale",
    "pool_autoscale_wait",
    "pool_autoscale_step",
    "pool_autoscale_cooldown",
    "pool_autoscale_idle",
    "statement_cache_capacity",
    "query_timeout",
    "statement_timeout",
    "pooler",
];

/// Keys whose values are secret: masked in problems.
const SECRET_KEYS: &[&str] = &["password", "password_command"];

impl ConfigBuilder {
    /// A builder holding what `url` says; problems in it are reported by
    /// [`build`](Self::build) together with the rest.
    pub fn from_url(url: &str) -> Self {
        let mut b = ConfigBuilder::new();
        b.parse_url(url);
        b
    }

    fn parse_url(&mut self, url: &str) {
        let Some(rest) = url
            .strip_prefix("postgresql://")
            .or_else(|| url.strip_prefix("postgres://"))
        else {
            let shown = url.split_once("://").map_or("", |(s, _)| s);
            self.problem(
                "url",
                Some(if shown.is_empty() {
                    "(no scheme)"
                } else {
                    shown
                }),
                "not a PostgreSQL URL",
                "start it with postgres:// or postgresql://",
            );
            return;
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (rest, None),
        };
        let (userinfo, hostspec) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if let Some(userinfo) = userinfo {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                if let Some(u) = self.decode("user", user) {
                    self.user = Some(u);
                }
            }
            if let Some(pw) = password {
                if let Some(pw) = self.decode("password", pw) {
                    *self = std::mem::take(self).with_password(Secret::new(pw));
                }
            }
        }
        if !hostspec.is_empty() {
            self.parse_hostspec(hostspec);
        }
        if let Some(db) = path.filter(|p| !p.is_empty()) {
            if let Some(db) = self.decode("dbname", db) {
                self.dbname = Some(db);
            }
        }
        for pair in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (Some(k), Some(v)) = (self.decode("url", k), self.decode(k, v)) else {
                continue;
            };
            self.apply(&k, &v);
        }
    }

    fn parse_hostspec(&mut self, spec: &str) {
        for item in spec.split(',') {
            // `[v6]:port`, `host:port`, `host`, or `:port`.
            let (host, port) = if let Some(end) = item.strip_prefix('[').and_then(|s| s.find(']')) {
                let host = &item[1..=end];
                let after = &item[end + 2..];
                (host, after.strip_prefix(':'))
            } else {
                match item.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (item, None),
                }
            };
            let Some(host) = self.decode("host", host) else {
                continue;
            };
            let port = port.and_then(|p| self.parse_port(p));
            let host = if host.is_empty() {
                "localhost".to_owned()
            } else {
                host
            };
            self.nodes.push((host_from_str(&host), port));
        }
    }

    fn parse_port(&mut self, s: &str) -> Option<u16> {
        match s.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Some(n as u16),
            Ok(_) => {
                self.problem(
                    "port",
                    Some(s),
                    "port must be between 1 and 65535",
                    "PostgreSQL listens on 5432 by default",
                );
                None
            }
            Err(_) => {
                self.problem(
                    "port",
                    Some(s),
                    "port is not a number",
                    "write the port as digits, such as 5432",
                );
                None
            }
        }
    }

    fn decode(&mut self, field: &str, s: &str) -> Option<String> {
        match percent_decode_str(s).decode_utf8() {
            Ok(v) => Some(v.into_owned()),
            Err(_) => {
                let shown = if SECRET_KEYS.contains(&field) {
                    "***"
                } else {
                    s
                };
                self.problem(
                    field,
                    Some(shown),
                    "percent-encoding does not decode to UTF-8",
                    "percent-encode the value's UTF-8 bytes",
                );
                None
            }
        }
    }

    /// Sets one key, as spelled in a URL query. Unknown keys and bad values become problems
    /// that [`build`](Self::build) reports.
    pub fn with_param(mut self, key: &str, value: &str) -> Self {
        self.apply(key, value);
        self
    }

    pub(super) fn apply(&mut self, key: &str, value: &str) {
        match key {
            "host" => {
                // A `host` parameter replaces hosts given in the authority, keeping their ports.
                let hosts: Vec<_> = value.split(',').map(host_from_str).collect();
                let ports: Vec<Option<u16>> = self.nodes.iter().map(|(_, p)| *p).collect();
                self.nodes = hosts
                    .into_iter()
                    .enumerate()
                    .map(|(i, h)| (h, ports.get(i).copied().flatten()))
                    .collect();
            }
            "port" => {
                let ports: Vec<Option<u16>> = value
                    .split(',')
                    .map(|p| self.parse_port(p.trim()))
                    .collect();
                if ports.iter().any(Option::is_none) {
                    return;
                }
                let ports: Vec<u16> = ports.into_iter().flatten().collect();
                if ports.len() == 1 {
                    self.default_port = Some(ports[0]);
                    for node in &mut self.nodes {
                        node.1 = Some(ports[0]);
                    }
                } else if ports.len() == self.nodes.len() {
                    for (node, port) in self.nodes.iter_mut().zip(ports) {
                        node.1 = Some(port);
                    }
                } else {
                    let n = self.nodes.len();
                    self.problem(
                        "port",
                        Some(value),
                        &format!("{} ports given for {n} hosts", ports.len()),
                        "give one port for every host, or a single port for all",
                    );
                }
            }
            "user" => self.user = Some(value.to_owned()),
            "dbname" => self.dbname = Some(value.to_owned()),
            "password" => *self = std::mem::take(self).with_password(Secret::new(value)),
            "password_file" => *self = std::mem::take(self).with_password_file(value),
            "password_command" => *self = std::mem::take(self).with_password_command(value),
            "passfile" => self.passfile = Some(PathBuf::from(value)),
            "sslmode" => {
                self.ssl_mode = parse_choice(self, key, value, &SslMode::ALL).or(self.ssl_mode)
            }
            "sslrootcert" => self.ssl_root_cert = Some(PathBuf::from(value)),
            "sslcert" => self.ssl_cert = Some(PathBuf::from(value)),
            "sslkey" => self.ssl_key = Some(PathBuf::from(value)),
            "target_session_attrs" => {
                self.target_session_attrs = parse_choice(self, key, value, &TargetSessionAttrs::ALL)
                    .or(self.target_session_attrs)
            }
            "load_balance_hosts" => {
                self.load_balance_hosts = parse_choice(self, key, value, &LoadBalanceHosts::ALL)
                    .or(self.load_balance_hosts)
            }
            "application_name" => self.application_name = Some(value.to_owned()),
            "pooler" => {
                self.pooler = parse_choice(self, key, value, &PoolerMode::ALL).or(self.pooler)
            }
            "options" => self.options = Some(value.to_owned()),
            "connect_timeout" => {
                if let Some(d) = self.duration(key, value) {
                    self.connect_timeout = Some(d);
                }
            }
            "pool_max_size" => self.max_size = self.count(key, value).or(self.max_size),
            "pool_min_idle" => self.min_idle = self.count(key, value).or(self.min_idle),
            "pool_acquire_timeout" => {
                if let Some(d) = self.duration(key, value) {
                    self.acquire_timeout = Some(d);
                }
            }
            "pool_idle_timeout" => {
                if let Some(d) = self.optional_duration(key, value) {
                    self.idle_timeout = Some(d);
                }
            }
            "pool_max_lifetime" => {
                if let Some(d) = self.optional_duration(key, value) {
                    self.max_lifetime = Some(d);
                }
            }
            "pool_leak_detection_threshold" => {
                if let Some(d) = self.optional_duration(key, value) {
                    self.leak_detection_threshold = Some(d);
                }
            }
            "pool_max_waiters" => {
                self.max_waiters = match value {
                    "off" => Some(None),
                    _ => self.count(key, value).map(Some).or(self.max_waiters),
                }
            }
            "pool_pipeline" => {
                self.pipeline = match value {
                    "off" => Some(None),
                    "on" => Some(Some(super::DEFAULT_PIPELINE_DEPTH)),
                    _ => match value.parse::<usize>() {
                        Ok(n) => Some(Some(n)),
                        Err(_) => {
                            self.problem(
                                key,
                                Some(value),
                                "not a depth",
                                "write on, off, or the statements to pipeline per connection, such as 32",
                            );
                            self.pipeline
                        }
                    },
                }
            }
            "pool_autoscale" => match value {
                "on" => self.autoscale = Some(Some(super::Autoscale::default())),
                "off" => self.autoscale = Some(None),
                _ => self.problem(key, Some(value), "unknown value", "write on or off"),
            },
            "pool_autoscale_wait" | "pool_autoscale_cooldown" | "pool_autoscale_idle" => {
                if let Some(d) = self.duration(key, value) {
                    let (k, v) = match key {
                        "pool_autoscale_wait" => ("pool_autoscale_wait", AutoscaleKey::Wait(d)),
                        "pool_autoscale_cooldown" => {
                            ("pool_autoscale_cooldown", AutoscaleKey::Cooldown(d))
                        }
                        _ => ("pool_autoscale_idle", AutoscaleKey::Idle(d)),
                    };
                    self.autoscale_keys.push((k, v));
                }
            }
            "pool_autoscale_step" => {
                if let Some(n) = self.count(key, value) {
                    self.autoscale_keys
                        .push(("pool_autoscale_step", AutoscaleKey::Step(n)));
                }
            }
            "statement_cache_capacity" => {
                self.statement_cache_capacity =
                    self.count(key, value).or(self.statement_cache_capacity)
            }
            "query_timeout" => {
                if let Some(d) = self.optional_duration(key, value) {
                    self.query_timeout = Some(d);
                }
            }
            "statement_timeout" => {
                if let Some(d) = self.optional_duration(key, value) {
                    self.statement_timeout = Some(d);
                }
            }
            "pool_validation" => {
                self.validation = match value {
                    "always" => Some(ValidationPolicy::Always),
                    "never" => Some(ValidationPolicy::Never),
                    _ => match parse_duration(value) {
                        Some(d) => Some(ValidationPolicy::WhenIdleFor(d)),
                        None => {
                            self.problem(
                                key,
                                Some(value),
                                "unknown value",
                                "write always, never, or an idle threshold such as 30s",
                            );
                            self.validation
                        }
                    },
                }
            }
            _ => {
                let hint = match did_you_mean(key, KEYS) {
                    Some(s) => format!("did you mean {s}?"),
                    None => "see the key table in the pgprovider::config docs".to_owned(),
                };
                self.problem(key, None, "unknown parameter", &hint);
            }
        }
    }

    fn count(&mut self, key: &str, value: &str) -> Option<usize> {
        match value.parse() {
            Ok(n) => Some(n),
            Err(_) => {
                self.problem(
                    key,
                    Some(value),
                    "not a whole number",
                    "write a count such as 10",
                );
                None
            }
        }
    }

    fn duration(&mut self, key: &str, value: &str) -> Option<std::time::Duration> {
        let d = parse_duration(value);
        if d.is_none() {
            self.problem(
                key,
                Some(value),
                "not a duration",
                "write a whole number with a unit: 500ms, 10s, 5m, 1h",
            );
        }
        d
    }

    fn optional_duration(&mut self, key: &str, value: &str) -> Option<Option<std::time::Duration>> {
        if matches!(value, "off" | "none" | "disable") {
            return Some(None);
        }
        self.duration(key, value).map(Some)
    }
}
