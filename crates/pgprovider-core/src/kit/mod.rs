//! The driver kit: what driver crates share and applications never need. Statement running
//! with a query timeout and a server-side cancel ([`run_bounded`]), session-state tracking
//! from the SQL text ([`sql`]), and the pool-wide prepared-statement cache bookkeeping
//! ([`StatementCaches`]). The user-facing contract (drivers, connections, errors, rows,
//! values, hooks) is at the crate root.

mod bounded;
pub mod sql;
mod statements;

pub use bounded::{Bounded, CANCEL_GRACE, query_timeout_error, run_bounded};
pub use statements::{Stale, StatementCacheStats, StatementCaches};
