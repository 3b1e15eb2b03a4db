//! The retry layer: what is safe to run again ([`RetryPolicy::is_safe`]), exponential
//! backoff with full jitter, and a time budget. The provider runs every statement through it
//! ([`Provider::query`](crate::provider::Provider::query) and the rest), and transactions
//! re-run through it after a conflict or a lost connection.
//!
//! Full jitter (a uniform delay between zero and the exponential cap) spreads out clients
//! that failed together, so they do not collide again on the next attempt. The random source
//! takes a seed, so tests and simulations are repeatable.

use crate::config::Problem;
use crate::{ConfigError, Error, ErrorKind};
use std::time::Duration;

/// How often and how patiently to retry.
///
/// ```
/// use pgprovider::retry::Backoff;
/// use std::time::Duration;
/// let b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1), 5).unwrap();
/// let mut delays = b.delays(42);
/// let first = delays.next().unwrap();
/// assert!(first <= Duration::from_millis(10));
/// assert_eq!(b.delays(42).count(), 4); // 5 attempts: 4 waits between them
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    max_attempts: u32,
}

impl Default for Backoff {
    /// 5 attempts, waits capped at 10 ms, 20 ms, 40 ms, 80 ms (up to 1 s).
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_secs(1),
            max_attempts: 5,
        }
    }
}

impl Backoff {
    /// Waits drawn from `[0, min(max, base × 2^n)]` before retry `n + 1`, for at most
    /// `max_attempts` attempts in all (the first included).
    ///
    /// # Errors
    /// When `base` is zero or above `max`, or `max_attempts` is zero.
    pub fn new(base: Duration, max: Duration, max_attempts: u32) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        if base.is_zero() || base > max {
            problems.push(Problem::new(
                "backoff",
                Some(&format!("base {base:?}, max {max:?}")),
                "the base wait must be positive and at most the maximum",
                "use a base such as 10ms and a maximum such as 1s",
            ));
        }
        if max_attempts == 0 {
            problems.push(Problem::new(
                "max_attempts",
                Some("0"),
                "at least one attempt is needed",
                "use 1 to never retry",
            ));
        }
        if !problems.is_empty() {
            return Err(ConfigError::new(problems));
        }
        Ok(Backoff {
            base,
            max,
            max_attempts,
        })
    }

    /// No retries: one attempt.
    pub fn never() -> Self {
        Backoff {
            max_attempts: 1,
            ..Backoff::default()
        }
    }

    /// Attempts in all, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The waits between attempts (`max_attempts - 1` of them), drawn with `seed`.
    pub fn delays(&self, seed: u64) -> impl Iterator<Item = Duration> + Send + use<> {
        let this = *self;
        let mut rng = SplitMix64(seed);
        (0..self.max_attempts.saturating_sub(1)).map(move |n| this.delay(n, &mut rng))
    }

    /// The wait before retry `n + 1`, drawn from `rng`.
    fn delay(&self, n: u32, rng: &mut SplitMix64) -> Duration {
        let cap = self
            .base
            .checked_mul(1u32 << n.min(30))
            .map_or(self.max, |d| d.min(self.max));
        let nanos = cap.as_nanos() as u64;
        Duration::from_nanos(rng.next() % (nanos + 1))
    }
}

/// What to retry and for how long: the [`Backoff`] between attempts, a limit on the total
/// time, and the safety rule of [`RetryPolicy::is_safe`].
///
/// ```
/// # async fn run() -> pgprovider::Result<()> {
/// use pgprovider::retry::{Backoff, RetryPolicy};
/// use std::time::Duration;
/// let policy = RetryPolicy::new(Backoff::default(), Duration::from_secs(2));
/// let n = policy.run(false, async |attempt| Ok::<_, pgprovider::Error>(attempt)).await?;
/// assert_eq!(n, 1);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    backoff: Backoff,
    max_elapsed: Duration,
    seed: Option<u64>,
}

impl RetryPolicy {
    /// Retries with `backoff`, giving up once `max_elapsed` has passed since the first
    /// attempt (a wait that would end past it is not started).
    pub fn new(backoff: Backoff, max_elapsed: Duration) -> Self {
        RetryPolicy {
            backoff,
            max_elapsed,
            seed: None,
        }
    }

    /// A fixed seed for the jitter, for repeatable tests.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Whether running the operation again is safe after `err`:
    /// - nothing reached the server: a failed connection attempt, a transient refusal
    ///   (`53300`, `57P03`), an open circuit breaker;
    /// - the server refused it without applying it: a serialization failure or deadlock
    ///   (`40001`, `40P01`) in autocommit, a write that reached a read-only node (`25006`);
    /// - the outcome is unknown (the connection broke, the reply was lost, the statement
    ///   timed out) only when the caller says the operation is `idempotent`.
    pub fn is_safe(err: &Error, idempotent: bool) -> bool {
        let nothing_sent = matches!(err.kind(), ErrorKind::Connect | ErrorKind::CircuitOpen)
            || err
                .sql_state()
                .is_some_and(|s| s.is_transient_connect_refusal());
        let refused = err.is_transaction_conflict() || err.is_read_only();
        let unknown = matches!(
            err.kind(),
            ErrorKind::ConnectionLost | ErrorKind::OutcomeUnknown | ErrorKind::Timeout
        ) || err.sql_state().is_some_and(|s| s.is_connection_lost());
        nothing_sent || refused || (unknown && idempotent)
    }

    /// The time budget of one operation.
    pub fn max_elapsed(&self) -> Duration {
        self.max_elapsed
    }

    /// The attempts of one operation, started now: ask [`Attempts::retry_after`] after each
    /// failure whether (and after how long) to try again.
    pub fn attempts(&self) -> Attempts {
        Attempts {
            backoff: self.backoff,
            rng: None,
            seed: self.seed,
            attempt: 1,
            start: tokio::time::Instant::now(),
            max_elapsed: self.max_elapsed,
        }
    }

    /// Runs `f` (given the attempt number, from 1) until it succeeds, fails in a way that is
    /// not safe to retry, or the attempts or time run out; returns the last error then, with
    /// the number of attempts in its message when there were several.
    ///
    /// # Errors
    /// The last error of `f`.
    pub async fn run<T, F, Fut>(&self, idempotent: bool, mut f: F) -> Result<T, Error>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let mut attempts = self.attempts();
        loop {
            let err = match f(attempts.number()).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            match attempts.retry_after(&err, idempotent) {
                Some(wait) => tokio::time::sleep(wait).await,
                None => return Err(attempts.give_up(err)),
            }
        }
    }
}

/// The attempts of one operation under a [`RetryPolicy`] (see [`RetryPolicy::attempts`]).
#[derive(Debug)]
pub struct Attempts {
    backoff: Backoff,
    rng: Option<SplitMix64>,
    seed: Option<u64>,
    attempt: u32,
    start: tokio::time::Instant,
    max_elapsed: Duration,
}

impl Attempts {
    /// The number of the attempt under way, from 1.
    pub fn number(&self) -> u32 {
        self.attempt
    }

    /// After attempt [`number`](Self::number) failed with `err`: the wait before the next
    /// one, or `None` when `err` is not [safe](RetryPolicy::is_safe) to retry, the attempts
    /// are used up, or the wait would end past the time budget. Counts the attempt.
    pub fn retry_after(&mut self, err: &Error, idempotent: bool) -> Option<Duration> {
        if !RetryPolicy::is_safe(err, idempotent) || self.attempt >= self.backoff.max_attempts {
            return None;
        }
        let seed = self.seed;
        let rng = self
            .rng
            .get_or_insert_with(|| SplitMix64(seed.unwrap_or_else(fresh_seed)));
        let wait = self.backoff.delay(self.attempt - 1, rng);
        if self.start.elapsed() + wait > self.max_elapsed {
            return None;
        }
        self.attempt += 1;
        Some(wait)
    }

    /// The time left of the budget.
    pub fn time_left(&self) -> Duration {
        self.max_elapsed.saturating_sub(self.start.elapsed())
    }

    /// `err`, saying how many attempts were made when there were several.
    pub fn give_up(&self, err: Error) -> Error {
        if self.attempt > 1 {
            err.context(format!("failed after {} attempts", self.attempt))
        } else {
            err
        }
    }
}

/// A small, seedable random source (splitmix64): good enough for jitter, no dependency.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The moment `d` from now, saturating (a `Duration::MAX` timeout means "about never"
/// rather than a panic).
pub(crate) fn later(d: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// A seed that differs between calls and processes.
pub(crate) fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_and_stay_under_their_caps() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(50), 6).unwrap();
        let caps = [10, 20, 40, 50, 50];
        for seed in 0..200 {
            let delays: Vec<_> = b.delays(seed).collect();
            assert_eq!(delays.len(), 5);
            for (d, cap) in delays.iter().zip(caps) {
                assert!(*d <= Duration::from_millis(cap), "{d:?} > {cap} ms");
            }
        }
        // Jitter: different seeds give different waits; the same seed the same ones.
        let a: Vec<_> = b.delays(1).collect();
        assert_eq!(a, b.delays(1).collect::<Vec<_>>());
        assert_ne!(a, b.delays(2).collect::<Vec<_>>());
        // Spread over the whole range, not bunched at the cap.
        let firsts: Vec<_> = (0..1000).map(|s| b.delays(s).next().unwrap()).collect();
        assert!(firsts.iter().any(|d| *d < Duration::from_millis(2)));
        assert!(firsts.iter().any(|d| *d > Duration::from_millis(8)));
    }

    #[test]
    fn bad_settings_are_reported_together() {
        let e = Backoff::new(Duration::ZERO, Duration::from_secs(1), 0).unwrap_err();
        assert_eq!(e.problems().len(), 2);
        assert!(Backoff::new(Duration::from_secs(2), Duration::from_secs(1), 3).is_err());
        assert_eq!(Backoff::never().max_attempts(), 1);
        assert_eq!(Backoff::never().delays(0).count(), 0);
        assert_eq!(Backoff::default().max_attempts(), 5);
        assert_ne!(fresh_seed(), fresh_seed());
    }

    #[test]
    fn only_safe_failures_are_retried() {
        use crate::SqlState;
        let e = |k: ErrorKind| Error::new(k, "x");
        assert!(RetryPolicy::is_safe(&e(ErrorKind::Connect), false));
        assert!(RetryPolicy::is_safe(&e(ErrorKind::CircuitOpen), false));
        assert!(RetryPolicy::is_safe(
            &Error::database(SqlState::TOO_MANY_CONNECTIONS, "full"),
            false
        ));
        assert!(RetryPolicy::is_safe(
            &Error::database(SqlState::SERIALIZATION_FAILURE, "c"),
            false
        ));
        assert!(RetryPolicy::is_safe(
            &Error::database(SqlState::READ_ONLY_SQL_TRANSACTION, "ro"),
            false
        ));
        for unknown in [
            ErrorKind::ConnectionLost,
            ErrorKind::OutcomeUnknown,
            ErrorKind::Timeout,
        ] {
            assert!(!RetryPolicy::is_safe(&e(unknown), false), "{unknown:?}");
            assert!(RetryPolicy::is_safe(&e(unknown), true), "{unknown:?}");
        }
        assert!(RetryPolicy::is_safe(
            &Error::database(SqlState::ADMIN_SHUTDOWN, "bye"),
            true
        ));
        assert!(!RetryPolicy::is_safe(
            &Error::database(SqlState::UNIQUE_VIOLATION, "dup"),
            true
        ));
        assert!(!RetryPolicy::is_safe(&e(ErrorKind::Config), true));
    }

    #[tokio::test(start_paused = true)]
    async fn run_retries_until_success_attempts_or_time_run_out() {
        let backoff =
            Backoff::new(Duration::from_millis(10), Duration::from_millis(100), 4).unwrap();
        let policy = RetryPolicy::new(backoff, Duration::from_secs(10)).with_seed(1);
        // Succeeds on the third attempt.
        let n = policy
            .run(false, async |a| {
                if a < 3 {
                    Err(Error::new(ErrorKind::Connect, "refused"))
                } else {
                    Ok(a)
                }
            })
            .await
            .unwrap();
        assert_eq!(n, 3);
        // Not safe: one attempt only.
        let mut calls = 0;
        let e = policy
            .run(false, |_| {
                calls += 1;
                std::future::ready(Err::<(), _>(Error::new(ErrorKind::ConnectionLost, "reset")))
            })
            .await
            .unwrap_err();
        assert_eq!((calls, e.message()), (1, "reset"));
        // Attempts run out: the error says how many.
        let e = policy
            .run(true, async |_| {
                Err::<(), _>(Error::new(ErrorKind::ConnectionLost, "reset"))
            })
            .await
            .unwrap_err();
        assert_eq!(e.message(), "failed after 4 attempts: reset");
        // Time runs out before the attempts do.
        let tight = RetryPolicy::new(
            Backoff::new(Duration::from_secs(1), Duration::from_secs(1), 10).unwrap(),
            Duration::from_millis(1500),
        )
        .with_seed(5);
        let start = tokio::time::Instant::now();
        let mut calls = 0;
        let _ = tight
            .run(false, |_| {
                calls += 1;
                std::future::ready(Err::<(), _>(Error::new(ErrorKind::Connect, "refused")))
            })
            .await;
        assert!(start.elapsed() <= Duration::from_millis(1500));
        assert!((2..10).contains(&calls), "{calls}");
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(3600), 64).unwrap();
        assert!(b.delays(7).all(|d| d <= Duration::from_secs(3600)));
    }
}
