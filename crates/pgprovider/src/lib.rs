//! pgprovider: one dependable way for Rust services to use PostgreSQL in production.
//!
//! This crate holds the provider that applications depend on: the [`Provider`](provider::Provider)
//! (the one front door: statements, transactions, reads on standbys, tenants, health),
//! configuration (builder, libpq-style URLs with several hosts, `PG*` environment variables,
//! validation that reports every problem at once), the driver registry, the pool and the
//! layers of the request path. Drivers live in their own crates
//! (`pgprovider-tokio-postgres`, …) and implement [`pgprovider_core::Driver`].
//!
//! ```no_run
//! use pgprovider::provider::Provider;
//! use pgprovider_tokio_postgres::TokioPostgres;
//!
//! # async fn run() -> Result<(), pgprovider::Error> {
//! let provider = Provider::from_url(TokioPostgres::new(), "postgres://app@db1:5432,db2:5432/orders?target_session_attrs=read-write")?;
//! let row = provider.query_one("SELECT 41 + 1", &[]).await?;
//! assert_eq!(row.get::<_, i32>(0), 42);
//! let n: i64 = provider.read().query_one("SELECT count(*) FROM orders", &[]).await?.get(0);
//! # Ok(()) }
//! ```
//!
//! The path of one statement, and the module of each layer:
//!
//! | layer | module |
//! | --- | --- |
//! | the front door: query surface, handles per route, transactions | [`provider`], [`Client`] |
//! | hooks around every operation, spans, metrics, audit | [`observe`] |
//! | statement guard and per-tenant limits | [`tenant`] |
//! | retry (safe cases only, backoff with jitter) and circuit breakers | [`policy`] ([`retry`], [`breaker`]) |
//! | routing on the monitor's snapshot: primary, standbys by lag, `target_session_attrs` | [`provider`] (route), [`topology`] |
//! | pool, one per node (or over several hosts, libpq-style) | [`pool`] |
//! | transactions | [`tx`] |
//! | configuration, driver registry, migrations, health | [`config`], [`registry`], [`migrate`], [`health`] |
//! | safety monitoring: blocking chains, long and idle transactions, deadlocks, slots, wraparound | [`safety`] |
//!
//! | feature | enables | default |
//! | --- | --- | --- |
//! | `derive` | `#[derive(FromRow)]` | on |
#![deny(missing_docs)]

pub mod access;
pub mod client;
pub mod config;
pub mod firewall;
mod guard;
pub mod health;
#[cfg(feature = "http")]
pub mod http;
#[cfg(test)]
mod layout_tests;
pub mod migrate;
pub mod observe;
pub mod policy;
pub mod pool;
#[cfg(test)]
mod properties;
pub mod provider;
mod query;
pub mod registry;
mod rows;
pub mod safety;
pub mod secrets;
mod shape;
pub mod tenant;
pub mod topology;
pub mod tx;

pub use client::Client;
pub use config::{Autoscale, Config, ConfigBuilder, ConfigError};
pub use policy::{breaker, retry};
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
    Notification, PoolerMode, Queries, Result, Scope, Secret, SimpleRow, SqlState, SslMode,
    StatementCacheStats, Value, ValueQueries, ValueRow, check_notification,
};

/// Compiles the README's Rust examples as doctests, so the README stays true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

/// Compiles the safety guide's Rust example as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/SAFETY.md")]
struct SafetyDoctests;

/// Compiles the security guide's Rust example as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/SECURITY.md")]
struct SecurityDoctests;
