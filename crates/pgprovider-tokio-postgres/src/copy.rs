//! COPY: bulk load with `COPY … FROM STDIN (FORMAT binary)` and export with `COPY … TO
//! STDOUT`.
//!
//! Both count rows. A load whose source fails, or whose future is dropped, aborts the COPY
//! on the server (nothing is loaded); a dropped future also leaves the connection marked
//! broken, so the pool closes it, as does a `COPY … FROM` the server refuses outright.

use crate::conn::PgConnection;
use crate::error::map_error;
use futures_util::{Stream, StreamExt, TryStreamExt, pin_mut};
use pgprovider_core::observe::{Operation, OperationKind};
use pgprovider_core::{Error, ErrorKind, Result};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutRow, BinaryCopyOutStream};
use tokio_postgres::types::{ToSql, Type};

/// [`step`] on `$self`'s session, marking it broken when the step stalls (so the pool closes
/// the connection, which ends the COPY on the server).
macro_rules! stepped {
    ($self:ident, $fut:expr) => {{
        let r = step($self.s.query_timeout(), $self.s.node(), $fut).await;
        if r.is_err() {
            $self.s.set_broken(true);
        }
        r
    }};
}

/// A row that [`PgConnection::copy_in`] can send: tuples of up to 12 values, or a vector of
/// boxed values.
pub trait CopyRow {
    /// The row's values, in column order.
    fn values(&self) -> Vec<&(dyn ToSql + Sync)>;
}

impl CopyRow for Vec<Box<dyn ToSql + Send + Sync>> {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect()
    }
}

impl<R: CopyRow + ?Sized> CopyRow for &R {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        (**self).values()
    }
}

macro_rules! tuple_copy_row {
    ($($t:ident $i:tt),+) => {
        impl<$($t: ToSql + Sync),+> CopyRow for ($($t,)+) {
            fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
                vec![$(&self.$i as &(dyn ToSql + Sync)),+]
            }
        }
    };
}

tuple_copy_row!(A 0);
tuple_copy_row!(A 0, B 1);
tuple_copy_row!(A 0, B 1, C 2);
tuple_copy_row!(A 0, B 1, C 2, D 3);
tuple_copy_row!(A 0, B 1, C 2, D 3, E 4);
tuple_copy_row!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_copy_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_copy_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
tuple_copy_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);
tuple_copy_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9);
tuple_copy_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10);
tuple_copy_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11);

impl PgConnection {
    /// Loads `rows` with `sql`, a `COPY table (columns) FROM STDIN (FORMAT binary)` whose
    /// columns have the SQL `types` given, and returns the number of rows loaded.
    ///
    /// ```no_run
    /// # async fn run(conn: &mut pgprovider_tokio_postgres::PgConnection) -> pgprovider::Result<()> {
    /// use pgprovider_tokio_postgres::types::Type;
    /// let rows = (0..100_000_i64).map(|i| (i, format!("name {i}")));
    /// let n = conn
    ///     .copy_in("COPY users (id, name) FROM STDIN (FORMAT binary)", &[Type::INT8, Type::TEXT], rows)
    ///     .await?;
    /// assert_eq!(n, 100_000);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The server's error (a constraint violated by some row, say); nothing is loaded then.
    pub async fn copy_in<R, I>(&mut self, sql: &str, types: &[Type], rows: I) -> Result<u64>
    where
        R: CopyRow + Send,
        I: IntoIterator<Item = R>,
        I::IntoIter: Send,
    {
        let stream = futures_util::stream::iter(rows.into_iter().map(Ok::<R, Error>));
        self.copy_in_stream(sql, types, stream).await
    }

    /// Like [`copy_in`](Self::copy_in), from a fallible stream: an error from the stream
    /// aborts the COPY (nothing is loaded) and is returned.
    ///
    /// # Errors
    /// The stream's error, or the server's.
    pub async fn copy_in_stream<R, S>(&mut self, sql: &str, types: &[Type], rows: S) -> Result<u64>
    where
        R: CopyRow + Send,
        S: Stream<Item = Result<R>> + Send,
    {
        if self.s.hooks().is_empty() {
            return self.copy_in_inner(sql, types, rows).await;
        }
        let (hooks, node) = (self.s.hooks().clone(), self.s.node_shared());
        let op = Operation::new(OperationKind::Copy, &node).with_sql(sql);
        hooks
            .observe(&op, |n| Some(*n), self.copy_in_inner(sql, types, rows))
            .await
    }

    async fn copy_in_inner<R, S>(&mut self, sql: &str, types: &[Type], rows: S) -> Result<u64>
    where
        R: CopyRow + Send,
        S: Stream<Item = Result<R>> + Send,
    {
        self.copy_here()?;
        self.s.untracked();
        self.s.set_in_flight(true);
        let node = self.s.node().to_owned();
        let db = |e: tokio_postgres::Error| map_error(e).with_node(node.clone());
        // A COPY the server refuses (no such table, say) leaves tokio-postgres's connection
        // out of step (its next reply is "unexpected message"), so the connection stays
        // marked broken and the pool replaces it.
        // Out of step until the server accepts the COPY: refused (or dropped while it may
        // be refused), the replies no longer pair with requests.
        self.s.set_broken(true);
        let sink = stepped!(self, self.client.copy_in(sql))?.map_err(db)?;
        self.s.set_broken(false);
        // Boxed, so that dropping it really drops the sink (which aborts the COPY).
        let mut writer = Box::pin(BinaryCopyInWriter::new(sink, types));
        pin_mut!(rows);
        while let Some(row) = rows.next().await {
            // Returning before `finish` drops the sink, which aborts the COPY.
            let row = match row {
                Ok(r) => r,
                Err(e) => {
                    drop(writer);
                    self.settle().await;
                    return Err(e.context("the row source failed; the COPY was aborted"));
                }
            };
            let values = row.values();
            if values.len() != types.len() {
                drop(writer);
                self.settle().await;
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "a row has {} values for {} columns; the COPY was aborted",
                        values.len(),
                        types.len()
                    ),
                )
                .with_hint("give one type per column, in the column order of the COPY"));
            }
            match stepped!(self, writer.as_mut().write(&values)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    drop(writer);
                    self.settle().await;
                    return Err(db(e));
                }
                // Stalled: the connection is broken, so the pool closes it (which ends
                // the COPY on the server).
                Err(stalled) => return Err(stalled),
            }
        }
        // The end was sent: a stall now leaves the COPY's outcome unknown.
        let n = stepped!(self, writer.as_mut().finish()).map_err(|e| {
            Error::new(
                ErrorKind::OutcomeUnknown,
                format!(
                    "the end of the COPY was sent but not confirmed: {}",
                    e.message()
                ),
            )
            .with_node(self.s.node())
            .with_hint("the COPY may or may not have been applied: check before running it again")
        })?;
        self.s.set_in_flight(false);
        n.map_err(db)
    }

    /// Sends a `COPY … TO STDOUT`, marking the connection busy until its end.
    async fn start_copy_out(&mut self, sql: &str) -> Result<tokio_postgres::CopyOutStream> {
        self.copy_here()?;
        self.s.set_in_flight(true);
        match stepped!(self, self.client.copy_out(sql))? {
            Ok(stream) => Ok(stream),
            Err(e) => Err(self.ended(e)),
        }
    }

    /// The next item of a COPY's output; `None` at its end.
    async fn next_or_end<T>(
        &mut self,
        mut stream: std::pin::Pin<&mut impl Stream<Item = Result<T, tokio_postgres::Error>>>,
    ) -> Result<Option<T>> {
        match stepped!(self, stream.try_next())? {
            Ok(item) => Ok(item),
            Err(e) => Err(self.ended(e)),
        }
    }

    /// The server ended the COPY with an error: nothing is in flight any more (a lost
    /// connection shows as closed anyway).
    fn ended(&mut self, e: tokio_postgres::Error) -> Error {
        self.s.set_in_flight(false);
        map_error(e).with_node(self.s.node().to_owned())
    }

    /// After an aborted COPY, waits for the server to confirm the abort so the connection
    /// can be reused.
    async fn settle(&mut self) {
        let confirmed = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.client.batch_execute(""),
        )
        .await;
        if matches!(confirmed, Ok(Ok(()))) {
            self.s.set_in_flight(false);
        }
    }

    /// Exports with `sql`, a `COPY … TO STDOUT (FORMAT binary)` whose columns have the SQL
    /// `types` given, calling `each` on every row; returns the number of rows.
    ///
    /// # Errors
    /// The server's error, or the first error `each` returns (the export stops there).
    pub async fn copy_out<F>(&mut self, sql: &str, types: &[Type], each: F) -> Result<u64>
    where
        F: FnMut(BinaryCopyOutRow) -> Result<()> + Send,
    {
        if self.s.hooks().is_empty() {
            return self.copy_out_inner(sql, types, each).await;
        }
        let (hooks, node) = (self.s.hooks().clone(), self.s.node_shared());
        let op = Operation::new(OperationKind::Copy, &node).with_sql(sql);
        hooks
            .observe(&op, |n| Some(*n), self.copy_out_inner(sql, types, each))
            .await
    }

    async fn copy_out_inner<F>(&mut self, sql: &str, types: &[Type], mut each: F) -> Result<u64>
    where
        F: FnMut(BinaryCopyOutRow) -> Result<()> + Send,
    {
        let stream = self.start_copy_out(sql).await?;
        let rows = BinaryCopyOutStream::new(stream, types);
        pin_mut!(rows);
        let mut n = 0;
        while let Some(row) = self.next_or_end(rows.as_mut()).await? {
            n += 1;
            if let Err(e) = each(row) {
                // Left mid-stream: the rest would still arrive, so the connection goes.
                return Err(e.context(format!("the export stopped at row {n}")));
            }
        }
        self.s.set_in_flight(false);
        Ok(n)
    }

    /// Exports with `sql`, any `COPY … TO STDOUT` (text, CSV or binary), writing the raw
    /// bytes to `out`; returns the number of bytes written.
    ///
    /// # Errors
    /// The server's error, or `out`'s.
    pub async fn copy_out_raw<W>(&mut self, sql: &str, out: &mut W) -> Result<u64>
    where
        W: AsyncWrite + Unpin + Send,
    {
        if self.s.hooks().is_empty() {
            return self.copy_out_raw_inner(sql, out).await;
        }
        let (hooks, node) = (self.s.hooks().clone(), self.s.node_shared());
        let op = Operation::new(OperationKind::Copy, &node).with_sql(sql);
        // The count is of bytes, not rows: not reported as rows.
        hooks
            .observe(&op, |_| None, self.copy_out_raw_inner(sql, out))
            .await
    }

    async fn copy_out_raw_inner<W>(&mut self, sql: &str, out: &mut W) -> Result<u64>
    where
        W: AsyncWrite + Unpin + Send,
    {
        let stream = self.start_copy_out(sql).await?;
        pin_mut!(stream);
        let mut bytes = 0;
        while let Some(chunk) = self.next_or_end(stream.as_mut()).await? {
            out.write_all(&chunk).await.map_err(write_error)?;
            bytes += chunk.len() as u64;
        }
        out.flush().await.map_err(write_error)?;
        self.s.set_in_flight(false);
        Ok(bytes)
    }
}

/// One exchange of a COPY with the server on `node`, bounded by the query timeout `t` as a
/// progress bound: a COPY may take as long as it needs, but not a step of it.
async fn step<T>(
    t: Option<std::time::Duration>,
    node: &str,
    fut: impl std::future::Future<Output = T>,
) -> Result<T> {
    let Some(t) = t else {
        return Ok(fut.await);
    };
    tokio::time::timeout(t, fut)
        .await
        .map_err(|_| stalled("the COPY", t, node))
}

/// The error of a COPY or a row stream that made no progress within the query timeout `t`.
pub(crate) fn stalled(what: &str, t: std::time::Duration, node: &str) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!(
            "{what} made no progress within the query timeout of {t:?}; the connection is closed"
        ),
    )
    .with_node(node)
    .with_hint("the server or the network stalled; raise query_timeout if the server is just slow")
}

fn write_error(e: std::io::Error) -> Error {
    Error::new(ErrorKind::Other, format!("cannot write the export: {e}")).with_source(e)
}

impl PgConnection {
    /// Behind a transaction pooler, COPY runs inside a transaction: tokio-postgres prepares
    /// it in one exchange and runs it in another, which the pooler may hand to two server
    /// sessions.
    fn copy_here(&self) -> Result<()> {
        if self.s.pooler() == pgprovider_core::PoolerMode::Transaction && !self.s.in_transaction() {
            return Err(pgprovider_core::Error::new(
                pgprovider_core::ErrorKind::Unsupported,
                "COPY outside a transaction is refused behind a transaction pooler: it is prepared in one exchange and run in another",
            )
            .with_node(self.s.node())
            .with_hint("run the COPY inside a transaction (it then stays on one server session)"));
        }
        Ok(())
    }
}
