//! The provider's background tasks that follow the topology: retiring pools of nodes that
//! changed role, and the safety monitor's choice of nodes.

use super::Inner;
use crate::config::Node;
use crate::topology::Role;
use pgprovider_core::Driver;
use std::sync::Arc;

/// Retires a node's pool when the node changes role (between known roles: a spell of
/// unreachability in between does not hide a demotion) or becomes fenced. Ends with the
/// provider.
pub(super) async fn retire_on_role_change<D: Driver>(
    inner: std::sync::Weak<Inner<D>>,
    mut changes: tokio::sync::watch::Receiver<u64>,
) {
    let mut known: Vec<(Role, bool)> = Vec::new();
    loop {
        {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let statuses = inner.monitor.statuses();
            known.resize(statuses.len(), (Role::Unknown, false));
            for (i, s) in statuses.iter().enumerate() {
                if s.role == Role::Unknown {
                    continue;
                }
                let (role, fenced) = known[i];
                let changed = (role != Role::Unknown && role != s.role) || (s.fenced && !fenced);
                if changed {
                    let closed = inner.pools[i].retire();
                    tracing::warn!(node = %s.node, from = ?role, to = ?s.role, fenced = s.fenced, closed, "node changed role: its pooled connections are retired");
                }
                known[i] = (s.role, s.fenced);
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Starts the safety monitor, when one was asked for: each round probes the trusted
/// primary, and the standbys when its options say so. Ends with the provider.
pub(super) fn start_safety<D: Driver + Clone>(inner: &Arc<Inner<D>>, driver: D) {
    let Some(s) = &inner.safety else {
        return;
    };
    let weak = Arc::downgrade(inner);
    let checkouts = {
        let weak = weak.clone();
        move |node: &Node| {
            weak.upgrade()
                .and_then(|inner| {
                    let i = inner.nodes.iter().position(|n| n == node)?;
                    Some(inner.pools[i].open_checkouts())
                })
                .unwrap_or_default()
        }
    };
    let standbys = s.options().standbys;
    s.run(
        driver,
        inner.config.clone(),
        inner.hooks.clone(),
        checkouts,
        move || {
            let inner = weak.upgrade()?;
            let mut nodes: Vec<Node> = inner.monitor.primary().into_iter().collect();
            if standbys {
                let statuses = inner.monitor.statuses();
                nodes.extend(
                    statuses
                        .iter()
                        .zip(&inner.nodes)
                        .filter(|(st, _)| st.role == Role::Standby)
                        .map(|(_, n)| n.clone()),
                );
            }
            Some(nodes)
        },
    );
}

/// Reads the rotating secret's source every `check_every` (when set), and recycles every
/// pool's connections whenever the secret changes (read here, by
/// [`Provider::rotate_secret`](super::Provider::rotate_secret), or by a connection the
/// server refused). Ends with the provider.
pub(super) fn start_rotation<D: Driver>(inner: &Arc<Inner<D>>) {
    let Some(r) = inner.rotation.clone() else {
        return;
    };
    let every = r.options().check_every;
    let window = r.options().recycle_within;
    let mut changes = r.changes();
    // Held weakly, like the provider: the task ends once both are gone.
    let (weak, r) = (Arc::downgrade(inner), Arc::downgrade(&r));
    tokio::spawn(async move {
        loop {
            let tick = async {
                match every {
                    Some(e) => {
                        tokio::time::sleep(e.max(std::time::Duration::from_millis(10))).await
                    }
                    None => std::future::pending().await,
                }
            };
            let changed = tokio::select! {
                () = tick => {
                    let Some(r) = r.upgrade() else { return };
                    // A failed read is logged and counted by the rotation; the secret stays.
                    let _ = r.refresh().await;
                    changes.has_changed().unwrap_or(false)
                }
                c = changes.changed() => c.is_ok(),
            };
            let Some(inner) = weak.upgrade() else {
                return;
            };
            if changed {
                changes.borrow_and_update();
                for pool in &inner.pools {
                    pool.recycle_within(window);
                }
            }
        }
    });
}
