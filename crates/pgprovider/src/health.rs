//! Health reports: per node whether it is reachable, its role, replication lag and pool
//! saturation, and an overall verdict.
//!
//! | status | when |
//! | --- | --- |
//! | `down` | no trusted primary (writes cannot be served) |
//! | `degraded` | a primary, but some node unreachable, a split brain, a pool saturated (every connection in use and callers waiting), or a [safety](crate::safety) finding (the reasons are in [`HealthReport::safety`]) |
//! | `ok` | otherwise |
//!
//! A provider is *ready* unless it is `down`. Behind the `http` feature,
//! [`router`](crate::http::router) serves the report at `/readyz`.

use crate::observe::Json;
use crate::topology::Role;

/// The overall verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthStatus {
    /// Everything serves.
    Ok,
    /// Writes are served, but not everything is well.
    Degraded,
    /// Writes cannot be served.
    Down,
}

impl HealthStatus {
    /// `ok`, `degraded` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Ok => "ok",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Down => "down",
        }
    }
}

/// One node's health.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeHealth {
    /// `host:port`.
    pub node: String,
    /// Whether the monitor's last probe succeeded.
    pub reachable: bool,
    /// Its role.
    pub role: Role,
    /// A primary on an old timeline, kept out of rotation.
    pub fenced: bool,
    /// Received but not replayed WAL (standbys), bytes.
    pub replay_lag_bytes: Option<u64>,
    /// Connections checked out.
    pub pool_in_use: u64,
    /// The pool's maximum size.
    pub pool_max: u64,
    /// Callers waiting for a connection.
    pub pool_waiters: u64,
    /// The last probe's error, when unreachable.
    pub last_error: Option<String>,
}

impl NodeHealth {
    /// A node's health with empty pool figures.
    pub fn new(node: impl Into<String>, reachable: bool, role: Role) -> Self {
        NodeHealth {
            node: node.into(),
            reachable,
            role,
            fenced: false,
            replay_lag_bytes: None,
            pool_in_use: 0,
            pool_max: 0,
            pool_waiters: 0,
            last_error: None,
        }
    }

    /// Every connection in use and callers waiting.
    pub fn saturated(&self) -> bool {
        self.pool_in_use >= self.pool_max && self.pool_waiters > 0
    }
}

/// A provider's health; see the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthReport {
    /// The verdict.
    pub status: HealthStatus,
    /// The trusted primary, `host:port`.
    pub primary: Option<String>,
    /// Whether several nodes claim to be primary.
    pub split_brain: bool,
    /// Every node, in configuration order.
    pub nodes: Vec<NodeHealth>,
    /// The safety monitor's findings and probe failures, one line each (empty without a
    /// monitor).
    pub safety: Vec<String>,
}

impl HealthReport {
    /// A report from the nodes' health, the trusted primary and whether a split brain is on.
    pub fn new(nodes: Vec<NodeHealth>, primary: Option<String>, split_brain: bool) -> Self {
        let status = if primary.is_none() {
            HealthStatus::Down
        } else if split_brain || nodes.iter().any(|n| !n.reachable || n.saturated()) {
            HealthStatus::Degraded
        } else {
            HealthStatus::Ok
        };
        HealthReport {
            status,
            primary,
            split_brain,
            nodes,
            safety: Vec::new(),
        }
    }

    /// With the safety monitor's lines: any makes an `ok` report `degraded`.
    pub fn with_safety(mut self, lines: Vec<String>) -> Self {
        if !lines.is_empty() && self.status == HealthStatus::Ok {
            self.status = HealthStatus::Degraded;
        }
        self.safety = lines;
        self
    }

    /// Ready to serve (not [`HealthStatus::Down`]).
    pub fn ready(&self) -> bool {
        self.status != HealthStatus::Down
    }

    /// The report as a JSON object.
    pub fn to_json(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                let mut j = Json::default();
                j.str("node", &n.node);
                j.raw("reachable", if n.reachable { "true" } else { "false" });
                j.str(
                    "role",
                    match n.role {
                        Role::Primary => "primary",
                        Role::Standby => "standby",
                        _ => "unknown",
                    },
                );
                j.raw("fenced", if n.fenced { "true" } else { "false" });
                j.raw(
                    "replay_lag_bytes",
                    &n.replay_lag_bytes
                        .map_or_else(|| "null".to_owned(), |l| l.to_string()),
                );
                j.raw("pool_in_use", &n.pool_in_use.to_string());
                j.raw("pool_max", &n.pool_max.to_string());
                j.raw("pool_waiters", &n.pool_waiters.to_string());
                j.opt("last_error", n.last_error.as_deref());
                j.finish()
            })
            .collect();
        let mut j = Json::default();
        j.str("status", self.status.as_str());
        j.opt("primary", self.primary.as_deref());
        j.raw(
            "split_brain",
            if self.split_brain { "true" } else { "false" },
        );
        j.raw("nodes", &format!("[{}]", nodes.join(",")));
        let safety: Vec<String> = self
            .safety
            .iter()
            .map(|l| {
                let mut s = String::new();
                crate::observe::escape_into(&mut s, l);
                s
            })
            .collect();
        j.raw("safety", &format!("[{}]", safety.join(",")));
        j.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(reachable: bool, in_use: u64, waiters: u64) -> NodeHealth {
        NodeHealth {
            node: "db:5432".into(),
            reachable,
            role: if reachable {
                Role::Primary
            } else {
                Role::Unknown
            },
            fenced: false,
            replay_lag_bytes: None,
            pool_in_use: in_use,
            pool_max: 2,
            pool_waiters: waiters,
            last_error: (!reachable).then(|| "refused \"x\"".to_owned()),
        }
    }

    #[test]
    fn verdicts() {
        let p = Some("db:5432".to_owned());
        assert_eq!(
            HealthReport::new(vec![node(true, 0, 0)], p.clone(), false).status,
            HealthStatus::Ok
        );
        assert_eq!(
            HealthReport::new(vec![node(true, 2, 1)], p.clone(), false).status,
            HealthStatus::Degraded
        );
        assert_eq!(
            HealthReport::new(vec![node(true, 2, 0)], p.clone(), false).status,
            HealthStatus::Ok
        );
        assert_eq!(
            HealthReport::new(vec![node(true, 0, 0), node(false, 0, 0)], p.clone(), false).status,
            HealthStatus::Degraded
        );
        assert_eq!(
            HealthReport::new(vec![node(true, 0, 0)], p.clone(), true).status,
            HealthStatus::Degraded
        );
        let warned = HealthReport::new(vec![node(true, 0, 0)], p.clone(), false)
            .with_safety(vec!["db:5432: 1 \"idle\" session".into()]);
        assert_eq!(warned.status, HealthStatus::Degraded);
        assert!(
            warned
                .to_json()
                .ends_with(r#""safety":["db:5432: 1 \"idle\" session"]}"#)
        );
        let down =
            HealthReport::new(vec![node(false, 0, 0)], None, false).with_safety(vec!["x".into()]);
        assert_eq!(down.status, HealthStatus::Down);
        let down = HealthReport::new(vec![node(false, 0, 0)], None, false);
        assert_eq!(down.status, HealthStatus::Down);
        assert!(!down.ready());
        assert_eq!(
            down.to_json(),
            r#"{"status":"down","primary":null,"split_brain":false,"nodes":[{"node":"db:5432","reachable":false,"role":"unknown","fenced":false,"replay_lag_bytes":null,"pool_in_use":0,"pool_max":2,"pool_waiters":0,"last_error":"refused \"x\""}],"safety":[]}"#
        );
    }
}
