//! Opening connections for checkouts in tasks of their own, so that a connection opened
//! for a caller who gave up still joins the pool (see the module docs of `pool`).

use super::stats::CloseReason;
use super::{Inner, Slot};
use pgprovider_core::{Driver, Result};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::time::Instant;

/// Opens a connection for a checkout under the permit the checkout took, and hands both
/// over; when the caller is gone by then, the connection joins the idle queue (`adopted`).
/// At most [`MAX_CONNECTING`] run at once per pool, so a storm of checkouts cannot become a
/// storm of connection attempts.
pub(super) async fn open_for_checkout<D: Driver>(
    pool: Arc<Inner<D>>,
    deadline: Instant,
    start: Instant,
    tx: tokio::sync::oneshot::Sender<Result<Opened<D>>>,
) {
    // Gives back the permit and the size reservation unless handed over, also if the
    // driver panics or the runtime drops this task.
    let mut owed = Opener {
        pool: pool.clone(),
        permit: true,
        reserved: true,
    };
    let opened = async {
        let _turn = match tokio::time::timeout_at(deadline, pool.connecting.acquire()).await {
            Ok(Ok(turn)) => turn,
            Ok(Err(_)) => return Err(pool.closed_error()),
            Err(_) => return Err(pool.timeout_error(start)),
        };
        pool.connect_until(deadline, start).await
    }
    .await;
    match opened {
        Ok((conn, _)) if pool.closed.load(Relaxed) => {
            owed.reserved = false; // the connection holds it; closing gives it back
            pool.close_conn(conn, CloseReason::Pool);
            let _ = tx.send(Err(pool.closed_error()));
        }
        Ok((conn, birth)) => {
            let slot = pool.new_slot(conn, birth);
            owed.reserved = false;
            owed.permit = false;
            // Sent or not, the connection is safe: an `Opened` that nobody takes puts itself
            // into the idle queue and gives the permit back.
            let _ = tx.send(Ok(Opened {
                slot: Some(slot),
                pool: pool.clone(),
            }));
        }
        Err(e) => {
            drop(owed);
            let _ = tx.send(Err(e));
            return;
        }
    }
    drop(owed);
}

/// What a connection attempt for a checkout owes the pool until it hands a connection over:
/// the checkout's permit, the `size` reserved for the connection, and its place among the
/// tasks [`close`](Pool::close) waits for.
struct Opener<D: Driver> {
    pool: Arc<Inner<D>>,
    permit: bool,
    reserved: bool,
}

impl<D: Driver> Drop for Opener<D> {
    fn drop(&mut self) {
        let pool = &self.pool;
        if self.reserved {
            pool.counters.size.fetch_sub(1, Relaxed);
        }
        if self.permit {
            pool.semaphore.add_permits(1);
        }
        pool.resetting.fetch_sub(1, Relaxed);
        pool.settled.notify_waiters();
    }
}

/// Connection attempts under way at once, per pool.
pub(super) const MAX_CONNECTING: usize = 4;

/// A connection opened for a checkout, owning the checkout's permit until
/// [`take`](Opened::take)n; dropped untaken, it joins the idle queue and gives the permit
/// back.
pub(super) struct Opened<D: Driver> {
    pub(super) slot: Option<Box<Slot<D::Connection>>>,
    pub(super) pool: Arc<Inner<D>>,
}

impl<D: Driver> Opened<D> {
    pub(super) fn take(mut this: Self) -> Box<Slot<D::Connection>> {
        this.slot.take().expect("present until taken")
    }
}

impl<D: Driver> Drop for Opened<D> {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let pool = &self.pool;
        if pool.closed.load(Relaxed) {
            pool.close_conn(slot.conn, CloseReason::Pool);
        } else {
            pool.counters.adopted.fetch_add(1, Relaxed);
            pool.return_idle(slot, Instant::now());
        }
        pool.semaphore.add_permits(1);
        pool.signal_if_closing();
    }
}

/// An idle connection being pinged at checkout; closed (and counted) if the checkout is
/// dropped meanwhile.
pub(super) struct Pinging<'a, D: Driver> {
    pub(super) slot: Option<Box<Slot<D::Connection>>>,
    pub(super) pool: &'a Inner<D>,
}

impl<D: Driver> Drop for Pinging<'_, D> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.pool.close_conn(slot.conn, CloseReason::Validation);
        }
    }
}
