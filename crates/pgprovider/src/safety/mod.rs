//! Safety monitoring: who blocks whom, transactions open too long, sessions idle in a
//! transaction, deadlocks, connection headroom, orphaned prepared transactions, replication
//! slots holding WAL, and transaction ID age toward wraparound.
//!
//! [`probe`] asks one server all of it in one round trip (catalog reads in one
//! simple-protocol message, each bounded by a 10 s `statement_timeout` local to it) and returns [`Findings`]: only what is over a
//! [threshold](SafetyOptions). A [`SafetyMonitor`] (opt-in, [`ProviderBuilder::safety`](crate::provider::ProviderBuilder::safety))
//! probes the primary, and the standbys when asked, on a dedicated connection per node at an
//! interval, and turns findings into signals:
//!
//! | signal | what |
//! | --- | --- |
//! | hook events ([`Hooks::fire`](crate::observe::Hooks::fire)), hence the audit log | `safety.blocking`, `safety.long_transaction`, `safety.long_statement`, `safety.idle_in_transaction`, `safety.deadlock`, `safety.connections`, `safety.prepared_transaction`, `safety.replication_slot`, `safety.wraparound` (once per round that finds them), and per action `safety.cancel` / `safety.terminate` (`safety.would_cancel` / `safety.would_terminate` in dry-run mode) |
//! | metrics | `pgprovider_safety_findings` (gauge; node, kind), `pgprovider_safety_probes_total` (node, outcome), `pgprovider_safety_probe_seconds` (histogram; node), `pgprovider_safety_actions_total` (node, action, reason, mode: `dry_run`, `done`, or `missed` when the session had gone), `pgprovider_deadlocks_total` (node, source: `server` or `ours`) |
//! | the health report | `degraded`, with one line per finding kind in [`HealthReport::safety`](crate::health::HealthReport::safety) |
//! | logs | `warn` (target `pgprovider::safety`) per finding kind and per action |
//!
//! Sessions of this application are marked [`ours`](Session::ours): their
//! `application_name` equals the configuration's, or (with a monitor) the provider's pools
//! hold a checkout on their connection, which the session then carries
//! ([`Session::checkout`]: where it was checked out, where its transaction began, its
//! tenant). Policies decide "ours" by `application_name` alone. For that, a provider with a monitor learns each new connection's server process
//! (one round trip per connection). The [policies](Policy) act only on them unless told
//! otherwise, re-check on the server at the moment they act (a session that moved on is
//! left alone), and can run in dry-run mode.
//!
//! ```no_run
//! # async fn run() -> pgprovider::Result<()> {
//! use pgprovider::provider::Provider;
//! use pgprovider::safety::{Action, Policy, SafetyOptions};
//! use std::time::Duration;
//! let config = pgprovider::Config::from_url("postgres://app@db1,db2/app?application_name=orders")?;
//! let provider = Provider::builder(pgprovider_tokio_postgres::TokioPostgres::new(), &config)
//!     .safety(
//!         SafetyOptions::new()
//!             .with_interval(Duration::from_secs(10))
//!             .with_idle_in_transaction(Duration::from_secs(30))
//!             .with_policy(Policy::idle_in_transaction(Duration::from_secs(120), Action::Terminate)),
//!     )
//!     .build();
//! if let Some(findings) = provider.safety().and_then(|s| s.latest().into_iter().next()) {
//!     for line in findings.problems() {
//!         eprintln!("{line}");
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The cost on the server: one round trip per node per interval, reading `pg_stat_activity`,
//! `pg_locks` (only for sessions waiting on a lock: `pg_blocking_pids` is not free),
//! `pg_stat_database`, `pg_prepared_xacts`, `pg_replication_slots` and `pg_database`
//! ([`Findings::probe_time`] says how long it took; docs/SAFETY.md gives figures).
//!
//! The policies never act on a blocker that is itself waiting for a lock (only on the head
//! of a chain), never cancel a session that runs no statement (a cancel does nothing to a
//! session idle in a transaction: terminate those), and skip sessions the monitor's user
//! may not signal.

mod monitor;
mod probe;
mod report;

pub use monitor::SafetyMonitor;
pub use probe::{act, probe};

use std::time::{Duration, SystemTime};

/// What a policy does to a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// `pg_cancel_backend`: cancels the running statement (a session idle in a transaction
    /// has none: use `Terminate` for those).
    Cancel,
    /// `pg_terminate_backend`: ends the session, rolling its transaction back.
    Terminate,
}

impl Action {
    /// `cancel` or `terminate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Cancel => "cancel",
            Action::Terminate => "terminate",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which sessions a policy is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Trigger {
    /// Idle in a transaction for longer than the limit.
    IdleInTransaction,
    /// Blocking another session that has waited longer than the limit.
    Blocking,
}

impl Trigger {
    /// `idle_in_transaction` or `blocking`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::IdleInTransaction => "idle_in_transaction",
            Trigger::Blocking => "blocking",
        }
    }
}

/// A conservative, opt-in policy: what to do to sessions over a limit. Acts on this
/// application's sessions only, unless [`with_foreign`](Self::with_foreign).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// When it applies.
    pub trigger: Trigger,
    /// The limit.
    pub after: Duration,
    /// What it does.
    pub action: Action,
    /// Log and count what it would do, without doing it.
    pub dry_run: bool,
    /// Also act on other applications' sessions.
    pub foreign: bool,
}

impl Policy {
    /// Acts on sessions idle in a transaction for longer than `after`.
    pub fn idle_in_transaction(after: Duration, action: Action) -> Self {
        Policy {
            trigger: Trigger::IdleInTransaction,
            after,
            action,
            dry_run: false,
            foreign: false,
        }
    }

    /// Acts on sessions that have blocked another for longer than `after` (the blocker, not
    /// the blocked).
    pub fn blocking(after: Duration, action: Action) -> Self {
        Policy {
            trigger: Trigger::Blocking,
            after,
            action,
            dry_run: false,
            foreign: false,
        }
    }

    /// Only logs and counts what it would do.
    pub fn with_dry_run(mut self, on: bool) -> Self {
        self.dry_run = on;
        self
    }

    /// Acts on other applications' sessions too.
    pub fn with_foreign(mut self, on: bool) -> Self {
        self.foreign = on;
        self
    }
}

/// Thresholds, interval and policies of the safety monitor and of [`probe`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SafetyOptions {
    /// How often the monitor probes (default 15 s).
    pub interval: Duration,
    /// Also probe the standbys (default: the primary only).
    pub standbys: bool,
    /// A transaction open longer than this is a finding (default 5 min).
    pub long_transaction: Duration,
    /// A statement running longer than this is a finding (default 1 min).
    pub long_statement: Duration,
    /// A session idle in a transaction longer than this is a finding (default 30 s).
    pub idle_in_transaction: Duration,
    /// A session waiting for a lock longer than this is a finding (default 5 s).
    pub blocked: Duration,
    /// Client connections at or above this share of the usable slots (`max_connections`
    /// less the reserved ones) is a finding (default 0.9).
    pub connections_ratio: f64,
    /// A prepared transaction older than this is a finding (default 5 min).
    pub prepared_transaction: Duration,
    /// A slot retaining more WAL than this is a finding, as is any inactive slot (default
    /// 1 GiB).
    pub slot_retained_bytes: u64,
    /// A database whose oldest transaction ID (or multixact) is older than this is a
    /// finding (default 1 000 000 000, about half-way to the server's hard stop).
    pub wraparound_age: u64,
    /// What to do about sessions over limits (default none).
    pub policies: Vec<Policy>,
}

impl Default for SafetyOptions {
    fn default() -> Self {
        SafetyOptions {
            interval: Duration::from_secs(15),
            standbys: false,
            long_transaction: Duration::from_secs(300),
            long_statement: Duration::from_secs(60),
            idle_in_transaction: Duration::from_secs(30),
            blocked: Duration::from_secs(5),
            connections_ratio: 0.9,
            prepared_transaction: Duration::from_secs(300),
            slot_retained_bytes: 1 << 30,
            wraparound_age: 1_000_000_000,
            policies: Vec::new(),
        }
    }
}

macro_rules! setters {
    ($($(#[$m:meta])* $name:ident: $field:ident: $ty:ty;)*) => {
        $(
            $(#[$m])*
            pub fn $name(mut self, v: $ty) -> Self {
                self.$field = v;
                self
            }
        )*
    };
}

impl SafetyOptions {
    /// The defaults (see each field).
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// How often the monitor probes.
        with_interval: interval: Duration;
        /// Whether the monitor probes the standbys too.
        with_standbys: standbys: bool;
        /// The long-transaction threshold.
        with_long_transaction: long_transaction: Duration;
        /// The long-statement threshold.
        with_long_statement: long_statement: Duration;
        /// The idle-in-transaction threshold.
        with_idle_in_transaction: idle_in_transaction: Duration;
        /// The lock-wait threshold.
        with_blocked: blocked: Duration;
        /// The share of usable connection slots in use that is a finding.
        with_connections_ratio: connections_ratio: f64;
        /// The prepared-transaction age threshold.
        with_prepared_transaction: prepared_transaction: Duration;
        /// The WAL a slot may retain.
        with_slot_retained_bytes: slot_retained_bytes: u64;
        /// The transaction ID age threshold.
        with_wraparound_age: wraparound_age: u64;
    }

    /// Adds a policy.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policies.push(policy);
        self
    }

    /// Every threshold at zero (and the connection ratio too): everything the probe sees is
    /// a finding. For tests and one-off looks.
    pub fn everything() -> Self {
        SafetyOptions {
            long_transaction: Duration::ZERO,
            long_statement: Duration::ZERO,
            idle_in_transaction: Duration::ZERO,
            blocked: Duration::ZERO,
            connections_ratio: 0.0,
            prepared_transaction: Duration::ZERO,
            slot_retained_bytes: 0,
            wraparound_age: 0,
            ..Self::default()
        }
    }
}

/// A server session, as `pg_stat_activity` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Session {
    /// The server process.
    pub pid: i32,
    /// The database user.
    pub user: String,
    /// Its `application_name`.
    pub application: String,
    /// The database.
    pub database: String,
    /// `active`, `idle in transaction`, …
    pub state: String,
    /// How long its transaction has been open.
    pub transaction_age: Option<Duration>,
    /// How long its current (or last) statement has been running (or ran).
    pub statement_age: Option<Duration>,
    /// How long it has been in its state.
    pub state_age: Option<Duration>,
    /// `Lock`, `IO`, … when it waits.
    pub wait_event_type: Option<String>,
    /// The fingerprint of its current (or last) statement (see
    /// [`fingerprint`](crate::observe::fingerprint)); never its literal values.
    pub fingerprint: Option<String>,
    /// Its statement with literal values replaced by `?` (at most 200 characters).
    pub statement: Option<String>,
    /// Whether it belongs to this application (its `application_name`, or a checkout of
    /// the provider's pools on its connection).
    pub ours: bool,
    /// The provider's checkout on this session's connection, when the monitor found one.
    pub checkout: Option<Checkout>,
}

/// A checkout of the provider's pools, joined to the server session of its connection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Checkout {
    /// Where the connection was checked out (`file:line:column`).
    pub location: String,
    /// Where the transaction open on it began (`begin` or `transaction` call).
    pub transaction: Option<String>,
    /// How long it has been held.
    pub held_for: Duration,
    /// The tenant it was checked out for.
    pub tenant: Option<String>,
}

/// A session waiting for a lock another holds.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Blocking {
    /// The waiting session.
    pub blocked: Session,
    /// The session it waits for (its pid when it is not a client session).
    pub blocking: Option<Session>,
    /// The waiting session's pid.
    pub blocked_pid: i32,
    /// The blocking session's pid.
    pub blocking_pid: i32,
    /// How long it has waited.
    pub wait: Duration,
    /// `relation`, `transactionid`, `tuple`, …
    pub lock_type: String,
    /// The lock mode it waits for (`ShareLock`, …).
    pub mode: String,
    /// The relation, when the lock is on one (its OID outside the monitor's database).
    pub relation: Option<String>,
}

/// Deadlocks: the server's counter (all databases) and the application's own `40P01`s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Deadlocks {
    /// `pg_stat_database.deadlocks`, summed.
    pub server_total: u64,
    /// Of those, detected since the previous probe of the same monitor.
    pub server_new: u64,
    /// `40P01` errors this application received (counted by the monitor's hook).
    pub ours_total: u64,
    /// Of those, since the previous probe.
    pub ours_new: u64,
}

/// Connection slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Connections {
    /// Client sessions.
    pub used: u64,
    /// `max_connections`.
    pub max: u64,
    /// Slots only superusers (and `pg_use_reserved_connections`) may take.
    pub reserved: u64,
    /// This application's sessions.
    pub ours: u64,
}

/// A prepared transaction (two-phase commit) still waiting for `COMMIT PREPARED`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Prepared {
    /// Its global identifier.
    pub gid: String,
    /// Who prepared it.
    pub owner: String,
    /// The database.
    pub database: String,
    /// How long ago it was prepared.
    pub age: Duration,
}

/// A replication slot.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicationSlot {
    /// Its name.
    pub name: String,
    /// `physical` or `logical`.
    pub kind: String,
    /// Whether a consumer is connected.
    pub active: bool,
    /// WAL it keeps from being removed, bytes.
    pub retained_bytes: u64,
    /// `reserved`, `extended`, `unreserved`, `lost` (empty when not reported).
    pub wal_status: String,
}

/// The oldest transaction ID of any database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Wraparound {
    /// The database.
    pub database: String,
    /// `age(datfrozenxid)`.
    pub xid_age: u64,
    /// `mxid_age(datminmxid)`.
    pub mxid_age: u64,
    /// Whether either is over the threshold.
    pub over: bool,
}

/// What a policy did (or, in dry-run mode, would have done).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ActionTaken {
    /// The session.
    pub pid: i32,
    /// What was done.
    pub action: Action,
    /// Why.
    pub trigger: Trigger,
    /// Only logged.
    pub dry_run: bool,
    /// Whether the server did it (`false`: the session had moved on or was gone).
    pub done: bool,
    /// Whether the session was this application's.
    pub ours: bool,
}

/// What one probe of one node found over the thresholds; see the [module docs](self).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Findings {
    /// `host:port`.
    pub node: String,
    /// When it was taken.
    pub at: SystemTime,
    /// Sessions waiting for a lock longer than the threshold, with their blockers.
    pub blocking: Vec<Blocking>,
    /// Transactions open longer than the threshold.
    pub long_transactions: Vec<Session>,
    /// Statements running longer than the threshold.
    pub long_statements: Vec<Session>,
    /// Sessions idle in a transaction longer than the threshold.
    pub idle_in_transaction: Vec<Session>,
    /// Deadlock counts.
    pub deadlocks: Deadlocks,
    /// Connection slots.
    pub connections: Connections,
    /// Whether connections are over the ratio.
    pub connections_over: bool,
    /// Prepared transactions older than the threshold.
    pub prepared_transactions: Vec<Prepared>,
    /// Inactive slots and slots retaining more WAL than the threshold.
    pub replication_slots: Vec<ReplicationSlot>,
    /// The oldest transaction ID.
    pub wraparound: Wraparound,
    /// What the policies did.
    pub actions: Vec<ActionTaken>,
    /// The probe's user cannot see other users' sessions (it lacks `pg_read_all_stats`,
    /// e.g. through `pg_monitor`): sessions, blocking chains and counts are incomplete.
    pub limited_view: bool,
    /// Statements the probe ran (one round trip).
    pub probe_queries: u32,
    /// How long the probe took.
    pub probe_time: Duration,
}

#[cfg(test)]
mod tests;
