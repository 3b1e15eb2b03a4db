//! Replica lag measured against the primary.
//!
//! A standby's own view of its lag (received minus replayed WAL) is zero when its WAL stream
//! is cut: it has received nothing new (shared/POSTGRES-FACTS.md, measured). So the monitor
//! keeps a short history of the trusted primary's WAL positions, each with the time it was
//! probed, and measures a standby probed at time `t` having replayed position `r` as:
//!
//! - **bytes**: the primary's position at its last probe before `t`, minus `r`;
//! - **time**: `t` minus the time of the oldest primary probe that saw a position past `r`
//!   (the standby lacks WAL that existed then).
//!
//! Both are lower bounds of the true lag (the primary may have written more since its last
//! probe), so a healthy standby is never excluded for a probe's age, and a standby that stops
//! replaying is seen falling behind within about one probe interval of the primary writing
//! past it. During a failover the last primary's positions still count; before the first
//! primary probe the standby's own figure is all there is.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// How many distinct primary positions are kept (16 KiB); the oldest always stays, so a
/// standby stuck behind it shows its whole time lag.
const KEEP: usize = 1024;

/// The trusted primary's recent WAL positions.
#[derive(Debug, Default)]
pub(crate) struct PrimaryWal {
    node: Option<usize>,
    samples: VecDeque<(Instant, u64)>,
}

impl PrimaryWal {
    /// Records that `primary` (a node index) had reached `lsn` by `at` (when its probe was
    /// answered). A new primary, or a position that went backwards (another server behind
    /// the same address), starts a new history; a probe already recorded, answered out of
    /// order, or at a position already known adds nothing (the first time a position was
    /// seen is what time lags are measured from).
    pub(crate) fn record(&mut self, primary: usize, at: Instant, lsn: u64) {
        let backwards = self.samples.back().is_some_and(|&(_, l)| lsn < l);
        if self.node != Some(primary) || backwards {
            self.node = Some(primary);
            self.samples.clear();
        }
        if self
            .samples
            .back()
            .is_some_and(|&(t, l)| t >= at || l == lsn)
        {
            return;
        }
        if self.samples.len() == KEEP {
            // Keep the oldest: a standby behind it has lacked WAL at least that long, however
            // often the primary is probed.
            self.samples.remove(1);
        }
        self.samples.push_back((at, lsn));
    }

    /// The lag of a standby that had replayed `replayed` when probed at `at`, in bytes and
    /// time; `None` when no primary position from before `at` is known.
    pub(crate) fn lag(&self, replayed: u64, at: Instant) -> Option<(u64, Duration)> {
        let before = self.samples.partition_point(|&(t, _)| t <= at);
        let &(_, primary) = self.samples.get(before.checked_sub(1)?)?;
        if replayed >= primary {
            return Some((0, Duration::ZERO));
        }
        // The oldest position past `replayed`: the standby has lacked it since then.
        let first = self.samples.partition_point(|&(_, l)| l <= replayed);
        let since = self.samples[first].0;
        Some((primary - replayed, at.saturating_duration_since(since)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_measured_against_the_primarys_earlier_positions() {
        let t0 = Instant::now();
        let s = |ms| t0 + Duration::from_millis(ms);
        let mut wal = PrimaryWal::default();
        assert_eq!(wal.lag(10, s(0)), None, "nothing known yet");
        wal.record(0, s(0), 100);
        wal.record(0, s(1000), 200);
        wal.record(0, s(2000), 300);
        // A standby probed at 1.5 s: compared with the primary at 1 s.
        assert_eq!(wal.lag(200, s(1500)), Some((0, Duration::ZERO)));
        assert_eq!(wal.lag(250, s(1500)), Some((0, Duration::ZERO)));
        // Cut off at 150: lacks what the primary had at 1 s.
        assert_eq!(
            wal.lag(150, s(2500)),
            Some((150, Duration::from_millis(1500)))
        );
        // Behind everything known: since the oldest sample (a lower bound).
        assert_eq!(
            wal.lag(50, s(2000)),
            Some((250, Duration::from_millis(2000)))
        );
        // Probed before the first sample: unknown.
        let mut late = PrimaryWal::default();
        late.record(0, s(1000), 100);
        assert_eq!(late.lag(0, s(500)), None);
    }

    #[test]
    fn a_new_primary_starts_a_new_history() {
        let t0 = Instant::now();
        let mut wal = PrimaryWal::default();
        wal.record(0, t0, 500);
        wal.record(1, t0 + Duration::from_millis(10), 100);
        assert_eq!(
            wal.lag(100, t0 + Duration::from_millis(20)),
            Some((0, Duration::ZERO))
        );
        // Out of order, repeated and unchanged positions add nothing.
        wal.record(1, t0, 150);
        wal.record(1, t0 + Duration::from_millis(10), 100);
        wal.record(1, t0 + Duration::from_millis(30), 100);
        assert_eq!(wal.samples.len(), 1);
        // A position going backwards starts again.
        wal.record(1, t0 + Duration::from_millis(40), 90);
        assert_eq!(
            wal.samples.iter().copied().collect::<Vec<_>>(),
            vec![(t0 + Duration::from_millis(40), 90)]
        );
        for i in 1..(KEEP as u64 + 10) {
            wal.record(2, t0 + Duration::from_millis(i), i);
        }
        assert_eq!(wal.samples.len(), KEEP);
        assert_eq!(
            wal.samples[0],
            (t0 + Duration::from_millis(1), 1),
            "the oldest stays"
        );
    }
}
