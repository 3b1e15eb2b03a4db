//! The safety monitor: a task that probes at an interval on its own connections and turns
//! findings into hook events, metrics, logs and the health report's lines.

use super::{Findings, SafetyOptions, act, probe};
use crate::config::{Config, Node};
use crate::observe::{Hook, Hooks, Operation, Outcome};
use crate::pool::{OpenCheckout, lock};
use pgprovider_core::{Connection, Driver, SqlState};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// The safety monitor of a provider ([`ProviderBuilder::safety`](crate::provider::ProviderBuilder::safety));
/// see the [module docs](super). Cheap to clone. Its task ends with the provider.
#[derive(Clone)]
pub struct SafetyMonitor {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SafetyMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetyMonitor")
            .field("options", &self.shared.options)
            .field("rounds", &*self.shared.rounds.borrow())
            .finish()
    }
}

struct Shared {
    options: SafetyOptions,
    /// The last round's findings, one per node probed.
    latest: Mutex<Vec<Findings>>,
    /// The last round's probe failures, one line per node.
    failures: Mutex<Vec<String>>,
    /// Rounds done so far.
    rounds: watch::Sender<u64>,
    /// Rounds started so far (round `n` is the `n`th started and the `n`th done).
    started: AtomicU64,
    /// The provider closed: the task ends.
    stopped: AtomicBool,
    /// Asks for a round now.
    wake: Notify,
    /// `40P01`s the application received, per node.
    deadlocks: Arc<DeadlockCounter>,
}

/// Counts the `40P01` errors operations end with, per node.
#[derive(Debug, Default)]
pub(crate) struct DeadlockCounter(Mutex<HashMap<String, u64>>);

impl Hook for DeadlockCounter {
    fn name(&self) -> &str {
        "safety-deadlocks"
    }

    fn after(&self, op: &Operation<'_>, outcome: &Outcome<'_>) {
        if outcome
            .error
            .is_some_and(|e| e.sql_state() == Some(SqlState::DEADLOCK_DETECTED))
        {
            *lock(&self.0).entry(op.node.to_owned()).or_default() += 1;
            metrics::counter!("pgprovider_deadlocks_total", "node" => op.node.to_owned(), "source" => "ours")
                .increment(1);
        }
    }
}

impl SafetyMonitor {
    /// A monitor whose deadlock hook is to be added to the provider's hooks; the task starts
    /// with [`run`](Self::run).
    pub(crate) fn new(options: SafetyOptions) -> Self {
        SafetyMonitor {
            shared: Arc::new(Shared {
                options,
                latest: Mutex::new(Vec::new()),
                failures: Mutex::new(Vec::new()),
                rounds: watch::channel(0).0,
                started: AtomicU64::new(0),
                stopped: AtomicBool::new(false),
                wake: Notify::new(),
                deadlocks: Arc::default(),
            }),
        }
    }

    /// The hook counting the application's deadlocks.
    pub(crate) fn deadlock_hook(&self) -> Arc<dyn Hook> {
        self.shared.deadlocks.clone()
    }

    /// Starts the task: each round probes the nodes `targets` names (it ends the task by
    /// returning `None`), on a connection of its own per node, and joins the sessions to
    /// the pools' open `checkouts`.
    pub(crate) fn run<D: Driver + Clone>(
        &self,
        driver: D,
        config: Config,
        hooks: Hooks,
        checkouts: impl Fn(&Node) -> Vec<OpenCheckout> + Send + Sync + 'static,
        targets: impl Fn() -> Option<Vec<Node>> + Send + Sync + 'static,
    ) {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let mut conns: HashMap<Node, D::Connection> = HashMap::new();
            let mut server_deadlocks: HashMap<String, u64> = HashMap::new();
            let mut ours_deadlocks: HashMap<String, u64> = HashMap::new();
            let app = config.application_name().map(str::to_owned);
            loop {
                let nodes = match targets() {
                    Some(n) if !shared.stopped.load(SeqCst) => n,
                    _ => {
                        for (_, c) in conns.drain() {
                            c.close().await;
                        }
                        return;
                    }
                };
                // Connections to nodes no longer probed (after a failover) are closed.
                let gone: Vec<Node> = conns
                    .keys()
                    .filter(|n| !nodes.contains(n))
                    .cloned()
                    .collect();
                for n in gone {
                    if let Some(c) = conns.remove(&n) {
                        c.close().await;
                    }
                }
                shared.started.fetch_add(1, SeqCst);
                let (mut latest, mut failures) = (Vec::new(), Vec::new());
                if nodes.is_empty() {
                    failures.push("no primary known: nothing was probed".to_owned());
                }
                for node in nodes {
                    let name = node.to_string();
                    let start = Instant::now();
                    // A node that does not answer never holds up the others or the next
                    // round: its connection is dropped and opened again next time.
                    let limit = round_limit(shared.options.interval);
                    let probed = round(
                        &shared.options,
                        &driver,
                        &config,
                        &mut conns,
                        (&node, &checkouts),
                        app.as_deref(),
                        &mut failures,
                    );
                    let r = match tokio::time::timeout(limit, probed).await {
                        Ok(r) => r,
                        Err(_) => {
                            conns.remove(&node);
                            Err(pgprovider_core::Error::new(
                                pgprovider_core::ErrorKind::Timeout,
                                format!("no answer within {limit:?}"),
                            ))
                        }
                    };
                    metrics::histogram!("pgprovider_safety_probe_seconds", "node" => name.clone())
                        .record(start.elapsed().as_secs_f64());
                    let outcome = if r.is_ok() { "ok" } else { "error" };
                    metrics::counter!("pgprovider_safety_probes_total", "node" => name.clone(), "outcome" => outcome)
                        .increment(1);
                    match r {
                        Ok(mut f) => {
                            let prev =
                                server_deadlocks.insert(name.clone(), f.deadlocks.server_total);
                            f.deadlocks.server_new =
                                prev.map_or(0, |p| f.deadlocks.server_total.saturating_sub(p));
                            let ours = lock(&shared.deadlocks.0).get(&name).copied().unwrap_or(0);
                            let prev = ours_deadlocks.insert(name.clone(), ours).unwrap_or(0);
                            f.deadlocks.ours_total = ours;
                            f.deadlocks.ours_new = ours - prev;
                            signal(&hooks, &f).await;
                            latest.push(f);
                        }
                        Err(e) => {
                            tracing::warn!(target: "pgprovider::safety", node = %name, error = %e, "safety probe failed");
                            if conns.get(&node).is_some_and(Connection::is_broken) {
                                conns.remove(&node);
                            }
                            failures
                                .push(format!("{name}: the safety probe failed: {}", e.message()));
                        }
                    }
                }
                *lock(&shared.latest) = latest;
                *lock(&shared.failures) = failures;
                shared.rounds.send_modify(|n| *n += 1);
                tokio::select! {
                    () = tokio::time::sleep(shared.options.interval.max(MIN_INTERVAL)) => {}
                    () = shared.wake.notified() => {}
                }
            }
        });
    }

    /// Stops the task (the provider closed or was dropped); it closes its connections.
    pub(crate) fn stop(&self) {
        self.shared.stopped.store(true, SeqCst);
        self.shared.wake.notify_one();
    }

    /// The options it runs with.
    pub fn options(&self) -> &SafetyOptions {
        &self.shared.options
    }

    /// The last round's findings, one per node probed (empty before the first round).
    pub fn latest(&self) -> Vec<Findings> {
        lock(&self.shared.latest).clone()
    }

    /// The last round's problems and probe failures, one line each (the health report's
    /// `safety` lines).
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = lock(&self.shared.latest)
            .iter()
            .flat_map(Findings::problems)
            .collect();
        out.extend(lock(&self.shared.failures).iter().cloned());
        out
    }

    /// Rounds done so far.
    pub fn rounds(&self) -> u64 {
        *self.shared.rounds.borrow()
    }

    /// Asks for a round now and waits until one that started after the call has ended
    /// (within `timeout`); returns its findings.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) when no round ended in time (the
    /// provider was dropped, or the probe hangs).
    pub async fn probe_now(&self, timeout: Duration) -> crate::Result<Vec<Findings>> {
        let mut rx = self.shared.rounds.subscribe();
        // Rounds run one at a time: the one after those started so far starts after this
        // call, and the wake-up (kept if a round is running) makes sure it comes.
        let wanted = self.shared.started.load(SeqCst) + 1;
        self.shared.wake.notify_one();
        let r = tokio::time::timeout(timeout, async {
            loop {
                if *rx.borrow_and_update() >= wanted {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        match r {
            Ok(true) => Ok(self.latest()),
            _ => Err(pgprovider_core::Error::new(
                pgprovider_core::ErrorKind::Timeout,
                format!("no safety probe round ended within {timeout:?}"),
            )
            .with_hint("the provider may have been dropped, or the servers do not answer")),
        }
    }
}

/// Rounds never wait less than this apart (an interval of zero would spin).
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// How long one node's probe and policies may take.
fn round_limit(interval: Duration) -> Duration {
    interval.clamp(Duration::from_secs(5), Duration::from_secs(60))
}

/// One node's probe and the policies, on the monitor's own connection to it. A failing
/// policy is a failure line; the findings are kept.
async fn round<D: Driver>(
    options: &SafetyOptions,
    driver: &D,
    config: &Config,
    conns: &mut HashMap<Node, D::Connection>,
    (node, checkouts): (&Node, &(impl Fn(&Node) -> Vec<OpenCheckout> + Send + Sync)),
    app: Option<&str>,
    failures: &mut Vec<String>,
) -> crate::Result<Findings> {
    let name = node.to_string();
    if !conns.contains_key(node) {
        let conn = config
            .connect_with(node, |p| {
                let driver = &driver;
                async move { driver.connect(&p).await }
            })
            .await?;
        conns.insert(node.clone(), conn);
    }
    let conn = conns.get_mut(node).expect("inserted above");
    let mut f = probe(conn, &name, options, app).await?;
    // The checkouts after the probe: a session the server showed is still held.
    let open = checkouts(node);
    f.attach(&open);
    if !options.policies.is_empty() {
        // Policies decide "ours" by application name on the server, never by the joined
        // pids: a pid kept by a checkout whose connection died may belong to another
        // session by now.
        match act(conn, &name, options, app).await {
            Ok(a) => f.actions = a,
            Err(e) => {
                tracing::warn!(target: "pgprovider::safety", node = %name, error = %e, "safety policy failed");
                failures.push(format!("{name}: a safety policy failed: {}", e.message()));
            }
        }
    }
    Ok(f)
}

/// Hook events, metrics and logs for one node's findings.
async fn signal(hooks: &Hooks, f: &Findings) {
    let node = f.node.as_str();
    let kinds = f.kinds();
    for (kind, n) in [
        ("blocking", f.blocking.len()),
        ("long_transaction", f.long_transactions.len()),
        ("long_statement", f.long_statements.len()),
        ("idle_in_transaction", f.idle_in_transaction.len()),
        (
            "deadlock",
            (f.deadlocks.server_new + f.deadlocks.ours_new) as usize,
        ),
        ("connections", usize::from(f.connections_over)),
        ("prepared_transaction", f.prepared_transactions.len()),
        ("replication_slot", f.replication_slots.len()),
        ("wraparound", usize::from(f.wraparound.over)),
    ] {
        metrics::gauge!("pgprovider_safety_findings", "node" => node.to_owned(), "kind" => kind)
            .set(n as f64);
    }
    metrics::counter!("pgprovider_deadlocks_total", "node" => node.to_owned(), "source" => "server")
        .absolute(f.deadlocks.server_total);
    for line in f.problems() {
        tracing::warn!(target: "pgprovider::safety", node, "{line}");
    }
    for kind in kinds {
        let _ = hooks.fire(&format!("safety.{kind}"), node).await;
    }
    for a in &f.actions {
        let mode = match (a.dry_run, a.done) {
            (true, _) => "dry_run",
            (false, true) => "done",
            (false, false) => "missed",
        };
        metrics::counter!(
            "pgprovider_safety_actions_total",
            "node" => node.to_owned(),
            "action" => a.action.as_str(),
            "reason" => a.trigger.as_str(),
            "mode" => mode
        )
        .increment(1);
        let event = if a.dry_run {
            format!("safety.would_{}", a.action.as_str())
        } else {
            format!("safety.{}", a.action.as_str())
        };
        let _ = hooks.fire(&event, node).await;
    }
}
