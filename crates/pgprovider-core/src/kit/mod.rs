//! The driver kit: what driver crates share and applications never need.
//!
//! - [`Session`]: the bookkeeping of one connection (statement running with a query timeout
//!   and a server-side cancel, in-flight / broken / read-only flags, session-state
//!   tracking, hooks, reset, the pooler mode), written once; each driver keeps only what is
//!   specific to its library and implements [`DriverErrors`] for its error type.
//! - [`run_bounded`]: a statement bounded by a timeout with a cancel on expiry.
//! - [`sql`]: session-state tracking from the SQL text; [`pooler`]: what a transaction-mode
//!   pooler cannot carry, and settings applied with `SET` / `SET LOCAL`.
//! - [`StatementCaches`]: the pool-wide prepared-statement cache bookkeeping.
//!
//! The user-facing contract (drivers, connections, errors, rows, values, hooks) is at the
//! crate root.

mod bounded;
pub mod pooler;
mod session;
pub mod sql;
mod statements;

pub use bounded::{Bounded, CANCEL_GRACE, query_timeout_error, run_bounded};
pub use session::{DriverErrors, Observer, Session, pooler_startup_refusal, session_settings};
pub use statements::{Stale, StatementCacheStats, StatementCaches};
