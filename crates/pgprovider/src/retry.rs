//! Exponential backoff with full jitter, for re-running transactions that lost a conflict
//! (and, later, for retrying operations on another node).
//!
//! Full jitter (a uniform delay between zero and the exponential cap) spreads out clients
//! that failed together, so they do not collide again on the next attempt. The random source
//! takes a seed, so tests and simulations are repeatable.

use crate::ConfigError;
use crate::config::Problem;
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
        let (base, max) = (self.base, self.max);
        let mut rng = SplitMix64(seed);
        (0..self.max_attempts.saturating_sub(1)).map(move |n| {
            let cap = base
                .checked_mul(1u32 << n.min(30))
                .map_or(max, |d| d.min(max));
            let nanos = cap.as_nanos() as u64;
            Duration::from_nanos(rng.next() % (nanos + 1))
        })
    }
}

/// A small, seedable random source (splitmix64): good enough for jitter, no dependency.
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
    fn huge_attempt_counts_do_not_overflow() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(3600), 64).unwrap();
        assert!(b.delays(7).all(|d| d <= Duration::from_secs(3600)));
    }
}
