//! Acquire deadlines without a timer per waiter.
//!
//! Why not `tokio::time::timeout` around each wait: under contention, arming and clearing a
//! timer per waiting checkout (timer-wheel insert and removal under the time driver's lock)
//! was a fifth of the cost of a checkout in the contended micro-benchmark. Every waiter of a
//! pool has the same acquire timeout and the semaphore serves waiters in order, so their
//! deadlines are ordered by arrival: one watchdog task sleeping until the oldest unfinished
//! deadline can expire them all. A waiter costs one small allocation and one push under a
//! short lock; finished entries are trimmed from the front as new ones arrive.

use super::lock;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use tokio::sync::Notify;
use tokio::time::Instant;

const WAITING: u8 = 0;
const EXPIRED: u8 = 1;
const DONE: u8 = 2;

pub(crate) struct Entry {
    deadline: Instant,
    state: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

#[derive(Default)]
pub(crate) struct Deadlines {
    pub(crate) queue: Mutex<VecDeque<Arc<Entry>>>,
    wake: Arc<Notify>,
    /// The watchdog found nothing to wait for and sleeps until notified. Read and written
    /// under the queue's lock. While it sleeps on a timer instead, new entries need no
    /// wake-up: their deadlines are later than the one it sleeps until.
    parked: AtomicBool,
}

impl Deadlines {
    /// Starts the watchdog on the current runtime; `None` without one (callers then fall
    /// back to a timer per waiter).
    pub(crate) fn start() -> Option<Arc<Deadlines>> {
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let d = Arc::new(Deadlines::default());
        rt.spawn(watchdog(Arc::downgrade(&d), d.wake.clone()));
        Some(d)
    }

    /// Registers a waiter whose deadline is at or after every one registered before it.
    pub(crate) fn register(&self, deadline: Instant) -> Registration {
        let entry = Arc::new(Entry {
            deadline,
            state: AtomicU8::new(WAITING),
            waker: Mutex::new(None),
        });
        let parked = {
            let mut q = lock(&self.queue);
            while q
                .front()
                .is_some_and(|e| e.state.load(Ordering::Acquire) == DONE)
            {
                q.pop_front();
            }
            q.push_back(entry.clone());
            self.parked.swap(false, Ordering::Relaxed)
        };
        if parked {
            self.wake.notify_one();
        }
        Registration(entry)
    }
}

/// A waiter's entry; marks itself done when dropped (finished or cancelled).
pub(crate) struct Registration(Arc<Entry>);

impl Registration {
    /// Waits for `fut`, or until the watchdog expires this entry (`None`).
    pub(crate) fn bound<F: Future>(&self, fut: F) -> Bounded<'_, F> {
        Bounded {
            entry: &self.0,
            fut,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.0.state.store(DONE, Ordering::Release);
    }
}

/// `fut`, bounded by a registered deadline.
pub(crate) struct Bounded<'a, F> {
    entry: &'a Entry,
    fut: F,
}

impl<F: Future + Unpin> Future for Bounded<'_, F> {
    type Output = Option<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = Pin::new(&mut self.fut).poll(cx) {
            return Poll::Ready(Some(v));
        }
        let entry = self.entry;
        if entry.state.load(Ordering::Acquire) == EXPIRED {
            return Poll::Ready(None);
        }
        {
            let mut w = lock(&entry.waker);
            match &*w {
                Some(old) if old.will_wake(cx.waker()) => {}
                _ => *w = Some(cx.waker().clone()),
            }
        }
        // Checked again after storing the waker, so an expiry in between is not missed.
        if entry.state.load(Ordering::Acquire) == EXPIRED {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

/// Sleeps until the oldest unfinished deadline, expires what is due, and repeats; ends when
/// the pool (the only strong owner of the deadlines) is gone.
async fn watchdog(deadlines: Weak<Deadlines>, wake: Arc<Notify>) {
    loop {
        let notified = wake.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        let next = {
            let Some(d) = deadlines.upgrade() else { return };
            let now = Instant::now();
            let mut q = lock(&d.queue);
            while let Some(e) = q.front() {
                if e.state.load(Ordering::Acquire) == DONE {
                    q.pop_front();
                } else if e.deadline <= now {
                    if e.state
                        .compare_exchange(WAITING, EXPIRED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        if let Some(w) = lock(&e.waker).take() {
                            w.wake();
                        }
                    }
                    q.pop_front();
                } else {
                    break;
                }
            }
            let next = q.front().map(|e| e.deadline);
            d.parked.store(next.is_none(), Ordering::Relaxed);
            next
        };
        match next {
            Some(at) => {
                let _ = tokio::time::timeout_at(at, notified).await;
            }
            None => notified.await,
        }
    }
}
