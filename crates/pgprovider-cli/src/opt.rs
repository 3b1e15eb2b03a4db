//! Command-line options.

use clap::{Parser, Subcommand};

/// pgprovider: one dependable way to use PostgreSQL in production.
#[derive(Debug, Parser)]
#[command(name = "pgprovider", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a short mixed workload (writes, reads, transactions) and print pool statistics.
    /// Uses DATABASE_URL when set; otherwise starts a throwaway PostgreSQL cluster.
    Demo(DemoArgs),
    /// One line per node: reachability, role, server version, replication lag. Exits 0 when
    /// every node is reachable, 1 otherwise.
    Health(HealthArgs),
    /// Throughput and latency of pgprovider against raw tokio-postgres and (with the `peers`
    /// feature) deadpool-postgres, bb8 and sqlx, interleaved round by round on one server.
    /// Uses DATABASE_URL when set; otherwise starts a throwaway PostgreSQL cluster.
    Bench(BenchArgs),
    /// Versioned schema migrations: `up`, `status`, `down`, for the database or for every
    /// tenant schema. Uses --url, else DATABASE_URL and the PG* variables.
    Migrate(MigrateArgs),
    /// Print notifications of the channels as JSON lines (and gaps after reconnects) until
    /// interrupted or --count notifications arrived.
    Listen(ListenArgs),
    /// Send one notification.
    Notify(NotifyArgs),
    /// Serve `/healthz` (liveness), `/readyz` (readiness: the health report as JSON, 503
    /// when no primary), `/metrics` (Prometheus, with process and runtime figures) and
    /// `/debug/pprof/profile?seconds=N` (a CPU profile as folded stacks) until interrupted.
    /// Uses --url, else starts a throwaway PostgreSQL cluster.
    Serve(ServeArgs),
    /// Failure drills: failover and switchover, on an embedded cluster or on yours.
    #[command(subcommand)]
    Drill(DrillCommand),
    /// A mixed workload for --duration with random faults (latency, resets, blackholes,
    /// refused connects, a paused server, terminated sessions) through a fault proxy in
    /// front of an embedded server; checks that every acknowledged write is present,
    /// errors happened only during faults, no server connection is left behind and memory
    /// stayed flat. Exits 0 when all hold, 1 otherwise.
    Soak(SoakArgs),
    /// Safety findings of every node: who blocks whom, long and idle transactions,
    /// deadlocks, connection headroom, orphaned prepared transactions, replication slots,
    /// transaction ID age. Tables, or with --json one JSON object per node (one line each).
    /// Exits 0 when nothing is over a threshold, 1 otherwise.
    Inspect(InspectArgs),
}

/// Options of `pgprovider inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The nodes to inspect (each host of a multi-host URL); without it, DATABASE_URL and
    /// the PG* variables are read.
    #[arg(long)]
    pub url: Option<String>,
    /// One JSON object per node and refresh, one per line.
    #[arg(long)]
    pub json: bool,
    /// Refresh every --interval like `top` until interrupted (or --count refreshes); new
    /// deadlocks are counted between refreshes.
    #[arg(long)]
    pub watch: bool,
    /// Time between refreshes with --watch.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub interval: std::time::Duration,
    /// Stop after this many refreshes (with --watch).
    #[arg(long)]
    pub count: Option<u64>,
    /// The `application_name` whose sessions are marked as ours (default: the URL's).
    #[arg(long)]
    pub application: Option<String>,
    /// A transaction open longer than this is a finding.
    #[arg(long, default_value = "5m", value_parser = duration)]
    pub long_transaction: std::time::Duration,
    /// A statement running longer than this is a finding.
    #[arg(long, default_value = "1m", value_parser = duration)]
    pub long_statement: std::time::Duration,
    /// A session idle in a transaction longer than this is a finding.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub idle_in_transaction: std::time::Duration,
    /// A session waiting for a lock longer than this is a finding.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub blocked: std::time::Duration,
    /// Client connections at or above this share of the usable slots is a finding.
    #[arg(long, default_value_t = 0.9)]
    pub connections_ratio: f64,
    /// A prepared transaction older than this is a finding.
    #[arg(long, default_value = "5m", value_parser = duration)]
    pub prepared_transaction: std::time::Duration,
    /// WAL a replication slot may retain, bytes (an inactive slot is always a finding).
    #[arg(long, default_value_t = 1 << 30)]
    pub slot_retained_bytes: u64,
    /// Transaction ID (or multixact) age that is a finding.
    #[arg(long, default_value_t = 1_000_000_000)]
    pub wraparound_age: u64,
}

/// Options of `pgprovider soak`.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// How long to run.
    #[arg(long, default_value = "2m", value_parser = duration)]
    pub duration: std::time::Duration,
    /// Concurrent tasks running the mix of writes, transactions and reads.
    #[arg(long, default_value_t = 4)]
    pub tasks: usize,
    /// The mean quiet time between fault windows: each fault starts 7 s (the time an
    /// operation may still fail because of the last one) plus 0.5x to 1.5x of this after
    /// the previous fault ended.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub fault_every: std::time::Duration,
    /// The seed of the fault sequence, to replay one.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The most resident memory may grow between warm-up and the end.
    #[arg(long, default_value_t = 16)]
    pub max_growth_mib: u64,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Options of `pgprovider serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The nodes (a multi-host URL); without it, an embedded throwaway cluster.
    #[arg(long, env = "DATABASE_URL")]
    pub url: Option<String>,
    /// Where to listen (`host:port`; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:9187")]
    pub listen: String,
    /// Also serve `/debug/pprof/profile?seconds=N`, a CPU profile of this process as folded
    /// stacks (built with the `profiling` feature, on by default). Off unless asked: whoever
    /// reaches the listener may then run the profiler.
    #[arg(long)]
    pub profiling: bool,
}

/// `pgprovider drill` drills.
#[derive(Debug, Subcommand)]
pub enum DrillCommand {
    /// Runs writes and reads through the provider while the primary fails, and checks every
    /// write's fate. Embedded (default): kills the primary of a throwaway cluster and
    /// promotes its standby. With --url and --fault-command: runs the fault on your cluster
    /// and lets its HA manager promote.
    Failover(DrillArgs),
    /// A planned, graceful switchover under the same load: writes wait for the new primary
    /// instead of failing. Embedded: stops the primary cleanly and promotes the standby; with
    /// --url, --fault-command is your switchover (e.g. `patronictl switchover --force`).
    Switchover(DrillArgs),
}

/// Options of `pgprovider drill failover` and `drill switchover`.
#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Embedded mode: use an asynchronous standby and report the loss measured (instead of
    /// expecting none).
    #[arg(long = "async")]
    pub asynchronous: bool,
    /// Concurrent writers.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Your cluster, every node named (`postgres://u@h1:5432,h2:5432/db`): the drill writes
    /// into a table of its own there and drops it at the end. Needs --fault-command.
    #[arg(long, requires = "fault_command")]
    pub url: Option<String>,
    /// The fault, run with `sh -c` once writes flow (e.g. a script that kills the leader,
    /// or asks the HA manager for a switchover). It gets PGPROVIDER_DRILL_PRIMARY
    /// (`host:port` of the primary when it starts). Needs --url.
    #[arg(long, requires = "url")]
    pub fault_command: Option<String>,
    /// Run with `sh -c` after the figures are taken (e.g. restart the killed node), before
    /// the next run.
    #[arg(long, requires = "url")]
    pub heal_command: Option<String>,
    /// Repeat the drill this many times and report percentiles (a new embedded cluster each
    /// run; the fault and heal commands run each time).
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// How long writes wait for a new primary before they fail.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub failover_timeout: std::time::Duration,
    /// Writes acknowledged before the fault, and again after the new primary, before the
    /// drill ends.
    #[arg(long, default_value_t = 200)]
    pub acks: usize,
}

/// Options of `pgprovider listen`.
#[derive(Debug, clap::Args)]
pub struct ListenArgs {
    /// The channels.
    #[arg(required = true)]
    pub channels: Vec<String>,
    /// The database; without it, DATABASE_URL and the PG* variables are read. With several
    /// hosts, the listener follows the primary.
    #[arg(long)]
    pub url: Option<String>,
    /// Stop after this many notifications.
    #[arg(long)]
    pub count: Option<u64>,
}

/// Options of `pgprovider notify`.
#[derive(Debug, clap::Args)]
pub struct NotifyArgs {
    /// The channel.
    pub channel: String,
    /// The payload (at most 7999 bytes).
    #[arg(default_value = "")]
    pub payload: String,
    /// The database; without it, DATABASE_URL and the PG* variables are read.
    #[arg(long)]
    pub url: Option<String>,
}

/// Options of `pgprovider migrate`.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The database; without it, DATABASE_URL and the PG* variables are read.
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// The folder of migration files (`<version>_<name>.sql`, `<version>_<name>.down.sql`).
    #[arg(long, global = true, default_value = "migrations")]
    pub dir: std::path::PathBuf,
    /// The history table.
    #[arg(long, global = true, default_value = "pgprovider_migrations")]
    pub table: String,
    /// Apply to these tenant schemas (comma-separated) instead of the database's default
    /// schema; each gets its own history table.
    #[arg(long, global = true, value_delimiter = ',')]
    pub tenants: Vec<String>,
    /// Apply to every schema whose name matches this SQL LIKE pattern, such as `tenant_%`.
    #[arg(long, global = true)]
    pub tenant_pattern: Option<String>,
    /// Tenants migrated at once.
    #[arg(long, global = true, default_value_t = 4)]
    pub concurrency: usize,
    /// What to do.
    #[command(subcommand)]
    pub action: MigrateAction,
}

/// `pgprovider migrate` actions.
#[derive(Debug, Subcommand)]
pub enum MigrateAction {
    /// Apply pending migrations (all, or up to --to).
    Up {
        /// The last version to apply.
        #[arg(long)]
        to: Option<i64>,
    },
    /// List every migration: applied, pending, changed since applied, or unknown. Exits 1
    /// when an applied file changed.
    Status,
    /// Revert applied migrations newer than --to, newest first, with their down files.
    Down {
        /// The version to go back to (0 reverts everything).
        #[arg(long)]
        to: i64,
    },
}

/// Options of `pgprovider bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The database to use; without it an embedded throwaway cluster is started. The bench
    /// connects in plaintext (`sslmode=disable`) so every contender does the same work.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub url: Option<String>,
    /// Measuring time per workload, contender and round (`500ms`, `3s`).
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub duration: std::time::Duration,
    /// Warm-up before each measurement.
    #[arg(long, default_value = "500ms", value_parser = duration)]
    pub warmup: std::time::Duration,
    /// Rounds; every contender runs once per round, in turn, and medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Server connections per contender.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Concurrent tasks in the pooled workloads (`tasks_1000` always uses 1,000).
    #[arg(long, default_value_t = 64)]
    pub tasks: usize,
    /// Workloads to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub workloads: Vec<String>,
    /// Contenders to run, comma-separated (default: all compiled in).
    #[arg(long, value_delimiter = ',')]
    pub contenders: Vec<String>,
    /// `pool_pipeline` of the `pgprovider_pipelined` contender: pipelined reads per
    /// connection.
    #[arg(long, default_value_t = pgprovider::config::DEFAULT_PIPELINE_DEPTH)]
    pub pipeline_depth: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Runs the many-connections workload instead of the throughput ones: one pool of this
    /// many server connections (and as many raw clients), on a throwaway cluster started
    /// with enough `max_connections` unless the --url server has them: time to open them
    /// all, memory per connection, throughput and checkout latency.
    #[arg(long)]
    pub many: Option<usize>,
    /// Runs the auto-scaling workload instead of the throughput ones: a step in load, a
    /// drop, and an oscillating load on a pool with `pool_autoscale=on` (from 2 to
    /// --connections × 4 connections): how fast the size follows, and whether it thrashes.
    #[arg(long)]
    pub autoscale: bool,
    /// Runs the deadline workload instead of the throughput ones: callers that give up
    /// after each of these deadlines (`1ms,2ms,5ms,20ms`), warm and cold pools, for the
    /// contenders pgprovider, deadpool, bb8 and sqlx (or those of --contenders). --warmup
    /// does not apply (a warm pool opens every connection first).
    #[arg(long, value_delimiter = ',', value_parser = duration)]
    pub deadlines: Vec<std::time::Duration>,
}

fn duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 500ms, 3s or 2m"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "" | "s" => Ok(std::time::Duration::from_secs(n)),
        "m" => Ok(std::time::Duration::from_secs(n.saturating_mul(60))),
        _ => Err(format!("{s:?} is not a duration such as 500ms, 3s or 2m")),
    }
}

/// Options of `pgprovider demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The database to use; without it an embedded throwaway cluster is started.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub url: Option<String>,
    /// The driver, by registry name.
    #[arg(long, default_value = "tokio-postgres")]
    pub driver: String,
    /// Operations to run in all.
    #[arg(long, default_value_t = 2000)]
    pub ops: u64,
    /// Concurrent tasks sharing the pool.
    #[arg(long, default_value_t = 16)]
    pub tasks: u64,
}

/// Options of `pgprovider health`.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// The nodes to check (a multi-host URL checks each host); without it, DATABASE_URL and
    /// the PG* variables are read.
    #[arg(long)]
    pub url: Option<String>,
}
