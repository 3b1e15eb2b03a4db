//! One tokio-postgres connection, as the pool sees it.

use crate::error::map_error;
use pgprovider_core::{CancelToken, Connection, Error, ErrorKind, Result, SimpleRow};
use std::fmt;
use std::sync::Arc;
use tokio_postgres::{Client, SimpleQueryMessage};

/// A tokio-postgres connection. [`client`](Self::client) gives the driver's own client for
/// typed queries.
///
/// Cancel safety: when a future running a query on this connection is dropped before the
/// reply arrives, the connection is marked broken, so the pool closes it instead of handing a
/// connection with a reply still in flight (or an open transaction) to the next user.
pub struct PgConnection {
    client: Client,
    node: String,
    in_flight: bool,
    driver_task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConnection")
            .field("node", &self.node)
            .field("closed", &self.client.is_closed())
            .finish()
    }
}

impl PgConnection {
    pub(crate) fn new<S, T>(
        client: Client,
        connection: tokio_postgres::Connection<S, T>,
        node: String,
    ) -> Self
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let n = node.clone();
        let driver_task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(node = %n, error = %e, "connection ended with an error");
            }
        });
        PgConnection {
            client,
            node,
            in_flight: false,
            driver_task,
        }
    }

    /// The tokio-postgres client, for typed and prepared queries.
    ///
    /// Work done through it is not tracked for cancel safety: if you drop such a future
    /// mid-query, call [`Pooled::discard`](https://docs.rs/pgprovider) rather than returning
    /// the connection.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `host:port` of the node.
    pub fn node(&self) -> &str {
        &self.node
    }

    async fn run<T>(
        &mut self,
        f: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        self.in_flight = true;
        let r = f(&self.client).await;
        self.in_flight = false;
        r.map_err(|e| map_error(e).with_node(self.node.clone()))
    }
}

impl Connection for PgConnection {
    fn is_broken(&self) -> bool {
        self.in_flight || self.client.is_closed()
    }

    async fn ping(&mut self) -> Result<()> {
        self.run(async |c| c.batch_execute("").await).await
    }

    async fn reset(&mut self) -> Result<()> {
        self.run(async |c| c.batch_execute("ROLLBACK; RESET ALL").await)
            .await
    }

    async fn simple_query(&mut self, sql: &str) -> Result<Vec<SimpleRow>> {
        let msgs = self.run(async |c| c.simple_query(sql).await).await?;
        let mut rows = Vec::new();
        let mut columns: Option<Arc<[String]>> = None;
        for m in msgs {
            match m {
                SimpleQueryMessage::RowDescription(cols) => {
                    columns = Some(cols.iter().map(|c| c.name().to_owned()).collect());
                }
                SimpleQueryMessage::Row(row) => {
                    let cols = columns
                        .get_or_insert_with(|| {
                            row.columns().iter().map(|c| c.name().to_owned()).collect()
                        })
                        .clone();
                    let values = (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect();
                    rows.push(SimpleRow::new(cols, values));
                }
                SimpleQueryMessage::CommandComplete(_) => columns = None,
                _ => {}
            }
        }
        Ok(rows)
    }

    fn cancel_token(&self) -> CancelToken {
        let token = self.client.cancel_token();
        let node = self.node.clone();
        CancelToken::new(move || {
            let token = token.clone();
            let node = node.clone();
            async move {
                token
                    .cancel_query(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| {
                        Error::new(
                            ErrorKind::Connect,
                            format!("cannot send the cancel request: {e}"),
                        )
                        .with_node(node)
                    })
            }
        })
    }

    async fn close(self) {
        // Dropping the client sends Terminate and lets the connection task finish.
        let PgConnection {
            client,
            driver_task,
            ..
        } = self;
        drop(client);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), driver_task).await;
    }
}
