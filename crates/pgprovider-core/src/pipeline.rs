//! Adaptive pipelining, as a driver offers it to the pool: plain reads sent on a
//! connection's session while another task holds the connection.
//!
//! A driver whose library pipelines concurrent requests on one connection (tokio-postgres)
//! hands the pool a [`Pipeline`] per connection ([`Queries::pipeline`]). When every
//! connection of a pool is busy, the pool sends a plain read on the least-loaded connection
//! whose holder runs a statement that leaves nothing on the session (see the `pool` module
//! of `pgprovider`), instead of making the read wait for a whole checkout.
//!
//! The pool decides *when* a request may be sent (the holder's session is clean and outside
//! a transaction, checked under a per-connection lock); the driver decides *what* may be
//! sent ([`accepts`](Pipeline::accepts)) and sends it. For the pool's lock to mean anything,
//! every future a pipeline returns must put its whole request on the connection in its
//! **first poll** (or complete in it): requests sent later could land behind a `BEGIN` of
//! the holder's. So a pipeline runs only statements its connection's holders prepared.
//!
//! Drivers that cannot pipeline use [`NoPipeline`].

use crate::{Error, ErrorKind, Queries, Result};
use std::future::Future;

/// What a driver may run on a busy connection ([`Queries::pipeline`]). Cheap to clone.
pub trait Pipeline<Q: Queries + ?Sized>: Clone + Send + Sync + 'static {
    /// A statement prepared on this connection's session.
    type Statement: Clone + Send + Sync + 'static;

    /// Whether `sql` may be pipelined: a single plain read that leaves nothing on the
    /// session. Cheap when asked again for the same text.
    fn accepts(&self, sql: &str) -> bool;

    /// Whether a holder running `sql` may share the connection meanwhile: `sql` changes
    /// neither the session nor the transaction state. Cheap when asked again.
    fn shares(&self, sql: &str) -> bool;

    /// The statement for `sql` prepared on this session, if the connection's holder has
    /// prepared it. A pipeline never prepares statements itself: preparing may take several
    /// exchanges (type lookups), and only the first is sent under the pool's lock.
    fn statement(&self, sql: &str) -> Option<Self::Statement>;

    /// Runs `stmt` and collects its rows. The request is sent in the first poll.
    fn query<'a, 'p>(
        &'a self,
        stmt: &'a Self::Statement,
        params: &'a [&'p Q::Param<'p>],
    ) -> impl Future<Output = Result<Vec<Q::Row>>> + Send + 'a;

    /// Drops the statement for `sql` (the server said it went stale).
    fn forget(&self, sql: &str);

    /// Notes how long `sql` took on the server (as the pool estimates it: from the reply
    /// before it, or from its sending, to its own reply). A statement that runs long is
    /// neither [accepted](Self::accepts) nor [shared](Self::shares) while it keeps doing
    /// so: reads queued behind it would wait for it.
    fn note(&self, sql: &str, took: std::time::Duration);
}

/// The pipeline of a driver that cannot pipeline: [`Queries::pipeline`] returns `None`, so
/// none of its methods is ever called.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoPipeline;

impl<Q: Queries + ?Sized> Pipeline<Q> for NoPipeline {
    type Statement = ();

    fn accepts(&self, _: &str) -> bool {
        false
    }

    fn shares(&self, _: &str) -> bool {
        false
    }

    fn statement(&self, _: &str) -> Option<()> {
        None
    }

    async fn query<'a, 'p>(&'a self, _: &'a (), _: &'a [&'p Q::Param<'p>]) -> Result<Vec<Q::Row>> {
        Err(unsupported())
    }

    fn forget(&self, _: &str) {}

    fn note(&self, _: &str, _: std::time::Duration) {}
}

fn unsupported() -> Error {
    Error::new(
        ErrorKind::Unsupported,
        "this driver does not pipeline statements",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Connection, SimpleRow};

    /// A connection of a driver that cannot pipeline.
    struct Plain;

    impl Connection for Plain {
        fn is_broken(&self) -> bool {
            false
        }
        async fn ping(&mut self) -> Result<()> {
            Ok(())
        }
        async fn reset(&mut self) -> Result<()> {
            Ok(())
        }
        fn cancel_token(&self) -> crate::CancelToken {
            crate::CancelToken::new(|| async { Ok(()) })
        }
        async fn simple_query(&mut self, _: &str) -> Result<Vec<SimpleRow>> {
            Ok(Vec::new())
        }
        async fn close(self) {}
    }

    impl Queries for Plain {
        type Row = ();
        type Param<'a> = ();
        type Pipeline = NoPipeline;
        async fn query(&mut self, _: &str, _: &[&()]) -> Result<Vec<()>> {
            Ok(Vec::new())
        }
        async fn execute(&mut self, _: &str, _: &[&()]) -> Result<u64> {
            Ok(0)
        }
        fn query_timeout(&self) -> Option<std::time::Duration> {
            None
        }
        fn set_query_timeout(&mut self, _: Option<std::time::Duration>) {}
        fn in_transaction(&self) -> bool {
            false
        }
    }

    #[tokio::test]
    async fn a_driver_that_cannot_pipeline_offers_nothing() {
        assert!(Plain.pipeline().is_none(), "the default is no pipeline");
        let p = NoPipeline;
        assert!(!Pipeline::<Plain>::accepts(&p, "SELECT 1"));
        assert!(!Pipeline::<Plain>::shares(&p, "SELECT 1"));
        assert!(Pipeline::<Plain>::statement(&p, "SELECT 1").is_none());
        Pipeline::<Plain>::forget(&p, "SELECT 1");
        Pipeline::<Plain>::note(&p, "SELECT 1", std::time::Duration::ZERO);
        let e = Pipeline::<Plain>::query(&p, &(), &[]).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
    }
}
