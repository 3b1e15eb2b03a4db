//! What this driver adds to the provider's surface (feature `provider`, on by default):
//! LISTEN/NOTIFY that follows the primary, and pipelined batches on the provider's route.
//! COPY and streams run on a connection of the route (`provider.conn()`).
//!
//! ```no_run
//! # async fn run() -> pgprovider::Result<()> {
//! use pgprovider::provider::Provider;
//! use pgprovider_tokio_postgres::{ProviderExt, TokioPostgres};
//! let provider = Provider::from_url(TokioPostgres::new(), "postgres://app@db1,db2/app")?;
//! let listener = provider.listen().await?;
//! let mut orders = listener.subscribe("orders").await?;
//! provider.batch(&[("INSERT INTO t VALUES (1)", &[]), ("INSERT INTO t VALUES (2)", &[])]).await?;
//! # Ok(()) }
//! ```

use crate::{BatchResult, Listener, ListenerBuilder, Param, TokioPostgres};
use pgprovider::Result;
use pgprovider::provider::Provider;
use std::future::Future;

/// LISTEN/NOTIFY and batches on a [`Provider`] of this driver; see the [`Provider` module docs](pgprovider::provider).
pub trait ProviderExt {
    /// A listener builder on every node of the provider: the listener connects to whichever
    /// is primary, now and after every failover.
    ///
    /// # Errors
    /// A node whose connection parameters cannot be made (a password command failing).
    fn listener(&self) -> impl Future<Output = Result<ListenerBuilder>> + Send;

    /// A listener with the defaults ([`listener`](Self::listener), then start).
    ///
    /// # Errors
    /// As [`ListenerBuilder::start`].
    fn listen(&self) -> impl Future<Output = Result<Listener>> + Send;

    /// Runs `statements` as one pipelined batch on a connection of the provider's route
    /// (atomic outside a transaction; see [`PgConnection::batch`](crate::PgConnection::batch)).
    ///
    /// # Errors
    /// The routing error, or the first failing statement's (nothing of the batch applied).
    fn batch(
        &self,
        statements: &[(&str, &[&Param<'_>])],
    ) -> impl Future<Output = Result<Vec<BatchResult>>> + Send;
}

impl ProviderExt for Provider<TokioPostgres> {
    async fn listener(&self) -> Result<ListenerBuilder> {
        let config = self.config();
        let mut nodes = Vec::with_capacity(config.nodes().len());
        for node in config.nodes() {
            nodes.push(config.connect_params(node).await?);
        }
        Ok(Listener::builder(nodes))
    }

    async fn listen(&self) -> Result<Listener> {
        self.listener().await?.start().await
    }

    async fn batch(&self, statements: &[(&str, &[&Param<'_>])]) -> Result<Vec<BatchResult>> {
        self.conn().await?.batch(statements).await
    }
}
