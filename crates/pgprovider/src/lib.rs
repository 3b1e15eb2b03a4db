//! pgprovider: one dependable way for Rust services to use PostgreSQL in production.
//!
//! This crate holds the provider that applications depend on: configuration (builder,
//! libpq-style URLs with several hosts, `PG*` environment variables, validation that reports
//! every problem at once), the driver registry and the connection pool. Drivers live in their
//! own crates (`pgprovider-tokio-postgres`) and implement [`pgprovider_core::Driver`].
//!
//! ```no_run
//! use pgprovider::{Config, Connection, Pool};
//! use pgprovider_tokio_postgres::TokioPostgres;
//!
//! # async fn run() -> Result<(), pgprovider::Error> {
//! let config = Config::from_url("postgres://app@db1:5432,db2:5432/orders?pool_max_size=16")?;
//! let pool = Pool::new(TokioPostgres::new(), &config, &config.nodes()[0]);
//! let mut conn = pool.get().await?;
//! let rows = conn.simple_query("SELECT 1").await?;
//! assert_eq!(rows[0].get(0), Some("1"));
//! # Ok(()) }
//! ```
//!
//! | area | module |
//! | --- | --- |
//! | configuration | [`config`] |
//! | driver registry | [`registry`] |
//! | pool | [`pool`] |
//! | queries on the pool | [`Pool::query`], [`Pool::query_as`], [`Pool::execute`], … |
//! | transactions | [`tx`]: [`Pool::transaction`], [`Pool::begin`], [`TxOptions`] |
//! | backoff with jitter, retry policy | [`retry`] |
//! | circuit breaker per node | [`breaker`] |
//! | node roles, WAL positions, lag; waiting for a primary | [`topology`] |
//! | pools per node, writes to the primary through failovers, reads over standbys | [`provider`] |
//! | schema migrations, per database or tenant schema | [`migrate`] |
//!
//! | feature | enables | default |
//! | --- | --- | --- |
//! | `derive` | `#[derive(FromRow)]` | on |
#![deny(missing_docs)]

pub mod breaker;
pub mod config;
mod guard;
pub mod health;
#[cfg(feature = "http")]
pub mod http;
pub mod migrate;
pub mod observe;
pub mod pool;
pub mod provider;
mod query;
pub mod registry;
pub mod retry;
pub mod tenant;
pub mod topology;
pub mod tx;

pub use config::{Config, ConfigBuilder, ConfigError};
pub use pool::{LeakReport, Pool, PoolBuilder, PoolStats, Pooled};
pub use registry::{AnyConnection, AnyDriver, DriverRegistry};
pub use tx::{IsolationLevel, Tx, TxOptions};

/// Derives [`FromRow`](trait@FromRow) for a struct: named fields by column name (`#[from_row(rename =
/// "col")]` for another), tuple-struct fields by position. Works with every driver's rows.
///
/// ```
/// #[derive(pgprovider::FromRow)]
/// struct User {
///     id: i64,
///     #[from_row(rename = "user_name")]
///     name: String,
/// }
/// ```
#[cfg(feature = "derive")]
pub use pgprovider_macros::FromRow;

/// Embeds a folder of migration files in the binary, as [`migrate::Migrations`]; the path is
/// relative to the calling crate's `Cargo.toml`.
///
/// ```
/// let migrations = pgprovider::embed_migrations!("examples/migrations")?;
/// assert_eq!(migrations.get(1).unwrap().name(), "example_users");
/// assert!(migrations.get(1).unwrap().down().is_some());
/// # Ok::<(), pgprovider::Error>(())
/// ```
#[cfg(feature = "derive")]
pub use pgprovider_macros::embed_migrations;

pub use pgprovider_core::{
    CancelToken, Column, ConnectParams, Connection, Driver, Error, ErrorKind, FromRow, Host,
    Notification, Queries, Result, Scope, Secret, SimpleRow, SqlState, SslMode,
    StatementCacheStats, check_notification,
};

/// Compiles the README's Rust examples as doctests, so the README stays true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
