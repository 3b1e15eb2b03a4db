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
