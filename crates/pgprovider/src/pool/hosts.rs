//! libpq's host selection for a pool built from a URL with several hosts
//! ([`Pool::from_config`](super::Pool::from_config)): each new connection tries the hosts
//! in order (`load_balance_hosts=random`: from a random one), and keeps the first whose
//! session matches `target_session_attrs`, checked on the server as libpq does:
//!
//! | value | accepted when |
//! | --- | --- |
//! | `any` | the connection succeeds |
//! | `read-write` | not in recovery and `default_transaction_read_only` off |
//! | `read-only` | in recovery or `default_transaction_read_only` on |
//! | `primary` | not in recovery |
//! | `standby` | in recovery |
//! | `prefer-standby` | in recovery; when no host is, any host (a second pass) |
//!
//! After a failover the connections to the old primary break, and new ones go to whichever
//! host matches now.

use crate::config::{Config, LoadBalanceHosts, Node, TargetSessionAttrs};
use crate::{Connection, Driver, Error, ErrorKind, Result};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The hosts of a multi-host pool and how to pick one.
pub(crate) struct Hosts {
    pub(crate) nodes: Vec<Node>,
    attrs: TargetSessionAttrs,
    lb: LoadBalanceHosts,
    random: RandomState,
    turn: AtomicU64,
}

impl Hosts {
    pub(crate) fn new(config: &Config) -> Self {
        Hosts {
            nodes: config.nodes().to_vec(),
            attrs: config.target_session_attrs(),
            lb: config.load_balance_hosts(),
            random: RandomState::new(),
            turn: AtomicU64::new(0),
        }
    }

    /// The hosts in the order to try them for one connection.
    fn order(&self) -> Vec<&Node> {
        let mut order: Vec<&Node> = self.nodes.iter().collect();
        if self.lb == LoadBalanceHosts::Random && !order.is_empty() {
            let k = self.random.hash_one(self.turn.fetch_add(1, Relaxed)) as usize % order.len();
            order.rotate_left(k);
        }
        order
    }

    /// A connection to the first host (in [`order`](Self::order)) whose session matches,
    /// opened by `connect`; the others are closed.
    pub(crate) async fn connect<D: Driver, F, Fut>(&self, connect: F) -> Result<D::Connection>
    where
        F: Fn(&Node) -> Fut,
        Fut: std::future::Future<Output = Result<D::Connection>>,
    {
        let order = self.order();
        let mut refused = Vec::new();
        // An error that retrying cannot fix (authentication, TLS, a missing database):
        // returned as it is when no host matches, so the pool fails at once.
        let mut fatal: Option<Error> = None;
        let mut fallback: Option<(D::Connection, &Node)> = None;
        for node in &order {
            let mut conn = match connect(node).await {
                Ok(c) => c,
                Err(e) => {
                    refused.push(format!("{node}: {}", e.message()));
                    if !e.is_retryable() && fatal.is_none() {
                        fatal = Some(e);
                    }
                    continue;
                }
            };
            if self.attrs == TargetSessionAttrs::Any {
                return Ok(conn);
            }
            let session = match session(&mut conn).await {
                Ok(s) => s,
                Err(e) => {
                    refused.push(format!("{node}: {}", e.message()));
                    conn.close().await;
                    continue;
                }
            };
            if matches(self.attrs, session) {
                if let Some((c, _)) = fallback.take() {
                    c.close().await;
                }
                return Ok(conn);
            }
            refused.push(format!("{node}: {}", describe(session)));
            // prefer-standby: keep the first other host for the second pass.
            if self.attrs == TargetSessionAttrs::PreferStandby && fallback.is_none() {
                fallback = Some((conn, node));
            } else {
                conn.close().await;
            }
        }
        if let Some((conn, _)) = fallback {
            return Ok(conn);
        }
        if let Some(e) = fatal {
            return Err(e);
        }
        let attrs = crate::config::TargetSessionAttrs::ALL
            .iter()
            .find(|(_, v)| *v == self.attrs)
            .map_or("?", |(n, _)| n);
        Err(Error::new(
            ErrorKind::Connect,
            format!(
                "no host matches target_session_attrs={attrs} ({})",
                refused.join("; ")
            ),
        )
        .with_node(
            self.nodes
                .iter()
                .map(Node::to_string)
                .collect::<Vec<_>>()
                .join(","),
        )
        .with_hint("a failover may be in progress, or no host of that kind is listed; check the hosts with `pgprovider health`"))
    }
}

/// What libpq checks of a session: in recovery, read-only by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Session {
    in_recovery: bool,
    read_only: bool,
}

async fn session<C: Connection>(conn: &mut C) -> Result<Session> {
    let rows = conn
        .simple_query(
            "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')",
        )
        .await?;
    let row = rows
        .first()
        .ok_or_else(|| Error::new(ErrorKind::Other, "the session check returned no row"))?;
    let in_recovery = row.get(0) == Some("t");
    Ok(Session {
        in_recovery,
        read_only: in_recovery || row.get(1) == Some("on"),
    })
}

fn matches(attrs: TargetSessionAttrs, s: Session) -> bool {
    match attrs {
        TargetSessionAttrs::ReadWrite => !s.read_only,
        TargetSessionAttrs::ReadOnly => s.read_only,
        TargetSessionAttrs::Primary => !s.in_recovery,
        TargetSessionAttrs::Standby | TargetSessionAttrs::PreferStandby => s.in_recovery,
        _ => true,
    }
}

fn describe(s: Session) -> &'static str {
    match (s.in_recovery, s.read_only) {
        (true, _) => "a standby",
        (false, true) => "a primary, read-only by default",
        (false, false) => "a read-write primary",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_session_attributes() {
        let primary = Session {
            in_recovery: false,
            read_only: false,
        };
        let ro_primary = Session {
            in_recovery: false,
            read_only: true,
        };
        let standby = Session {
            in_recovery: true,
            read_only: true,
        };
        use TargetSessionAttrs as T;
        let table = [
            (T::Any, [true, true, true]),
            (T::ReadWrite, [true, false, false]),
            (T::ReadOnly, [false, true, true]),
            (T::Primary, [true, true, false]),
            (T::Standby, [false, false, true]),
            (T::PreferStandby, [false, false, true]),
        ];
        for (attrs, want) in table {
            let got = [primary, ro_primary, standby].map(|s| matches(attrs, s));
            assert_eq!(got, want, "{attrs:?}");
        }
        assert_eq!(describe(standby), "a standby");
        assert_eq!(describe(ro_primary), "a primary, read-only by default");
        assert_eq!(describe(primary), "a read-write primary");
    }
}
