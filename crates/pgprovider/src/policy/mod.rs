//! The request path's policies, each a small module used by every path that needs it:
//!
//! | layer | module | used by |
//! | --- | --- | --- |
//! | retry: what is safe to run again, backoff with jitter, a time budget | [`retry`] | the provider's statements ([`Provider::query`](crate::provider::Provider::query) …), transaction re-runs |
//! | circuit breaker per node | [`breaker`] | the provider's routing, for reads and writes |
//!
//! Statement guard (tenant scope) and limits (per tenant) live with tenancy
//! ([`tenant`](crate::tenant)); hooks with [`observe`](crate::observe).

pub mod breaker;
pub mod retry;
