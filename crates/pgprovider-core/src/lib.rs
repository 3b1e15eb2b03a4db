//! The contract between the pgprovider provider and its PostgreSQL drivers.
//!
//! This crate is deliberately small and slow-moving: driver crates (tokio-postgres, sqlx,
//! diesel-async) depend on it, and the provider builds every layer (pool, policies,
//! topology) on it alone. Nothing here names a driver type.
//!
//! - [`Driver`] / [`Connection`]: connect to one node, check validity, reset session state,
//!   cancel the running query, close.
//! - [`Error`] / [`ErrorKind`]: one opaque error with a public kind, SQLSTATE, node and tenant.
//! - [`SqlState`]: SQLSTATE codes and the one place that classifies them.
//! - [`observe`]: hooks around every operation and the OpenTelemetry-style span.
//! - [`ConnectParams`]: everything a driver needs to reach one node; [`Secret`] keeps the
//!   password out of `Debug`, `Display` and logs.
//!
//! ```
//! use pgprovider_core::{Error, ErrorKind, SqlState};
//!
//! let err = Error::database(SqlState::SERIALIZATION_FAILURE, "could not serialize access");
//! assert_eq!(err.kind(), ErrorKind::Database);
//! assert!(err.is_retryable());
//! ```
#![deny(missing_docs)]

mod driver;
mod error;
pub mod kit;
mod notify;
pub mod observe;
mod params;
pub mod pipeline;
mod query;
mod secret;
mod sqlstate;
mod value;

pub use driver::{CancelToken, Connection, Driver, SimpleRow};
pub use error::{DbErrorFields, Error, ErrorKind, Result};
pub use kit::StatementCacheStats;
pub use notify::{MAX_CHANNEL, MAX_PAYLOAD, Notification, check_channel, check_notification};
pub use params::{
    ConnectParams, DEFAULT_STATEMENT_CACHE_CAPACITY, Host, PoolerMode, SslMode, TlsParams,
};
pub use pipeline::{NoPipeline, Pipeline};
pub use query::{Column, FromRow, Queries, Scope, row_count_error, scope_changed_error};
pub use secret::Secret;
pub use sqlstate::SqlState;
pub use value::{Value, ValueQueries, ValueRow};
