//! Independent observers: one connection per node, outside the provider, asking every few
//! milliseconds whether the node accepts a write, so the drill knows when a new primary
//! became writable without trusting the provider it measures.

use pgprovider::{Config, Driver, Queries};
use pgprovider_tokio_postgres::TokioPostgres;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often each observer asks.
const EVERY: Duration = Duration::from_millis(5);
/// How long one question may take before the connection is given up and made again.
const PATIENCE: Duration = Duration::from_secs(1);

/// What one question found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Seen {
    /// The node took a write; its postmaster started at this time (a restart changes it).
    Writable(Arc<str>),
    /// The node answered as a standby.
    ReadOnly,
    /// No answer (refused, timed out, reset): says nothing about the node's role.
    Unknown,
}

/// One answer: when, which node, what it said.
pub(super) type Sample = (Instant, usize, Seen);

/// The observers of every node of a configuration.
pub(super) struct Observers {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    names: Vec<String>,
}

impl Observers {
    /// Starts one observer per node of `config`.
    pub(super) fn start(config: &Config) -> Observers {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..config.nodes().len())
            .map(|i| {
                let (config, samples, stop) = (config.clone(), samples.clone(), stop.clone());
                tokio::spawn(async move { observe(config, i, samples, stop).await })
            })
            .collect();
        Observers {
            samples,
            stop,
            tasks,
            names: config.nodes().iter().map(ToString::to_string).collect(),
        }
    }

    /// The samples so far.
    pub(super) fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The node (`host:port`) whose latest answer said writable, if one did.
    pub(super) fn writable_now(&self) -> Option<String> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = vec![false; self.names.len()];
        for (_, i, w) in samples.iter() {
            if *w != Seen::Unknown {
                last[*i] = matches!(w, Seen::Writable(_));
            }
        }
        last.iter().position(|w| *w).map(|i| self.names[i].clone())
    }

    /// Per node, what its observer saw: answers before and after `fault`, and how many of
    /// them said writable.
    pub(super) fn seen(&self, fault: Instant) -> serde_json::Value {
        let samples = self.samples();
        let mut out = serde_json::Map::new();
        for (i, name) in self.names.iter().enumerate() {
            let count = |after: bool, writable: bool| {
                samples
                    .iter()
                    .filter(|(t, n, w)| {
                        *n == i
                            && (*t > fault) == after
                            && (!writable || matches!(w, Seen::Writable(_)))
                    })
                    .count()
            };
            out.insert(
                name.clone(),
                serde_json::json!({
                    "answers_before": count(false, false),
                    "writable_before": count(false, true),
                    "answers_after": count(true, false),
                    "writable_after": count(true, true),
                }),
            );
        }
        out.into()
    }

    /// Waits (up to `limit`) until every node has answered at least once.
    pub(super) async fn wait_first(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let seen = {
                let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
                (0..self.names.len()).all(|i| s.iter().any(|(_, n, _)| *n == i))
            };
            if seen {
                return;
            }
            tokio::time::sleep(EVERY).await;
        }
    }

    /// Stops every observer and waits for them.
    pub(super) async fn stop(mut self) {
        self.stop.store(true, Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for Observers {
    /// A drill that fails half-way stops its observers too (they end at their next
    /// question).
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// When a new primary first accepted a write after `fault`: the first write taken by a
/// server (a node, and the start time of its postmaster) that took none before the fault.
/// A promoted standby counts, and so does a primary restarted in place; a primary that only
/// missed a few questions (a timeout, a reset) does not.
pub(super) fn new_primary_writable(samples: &[Sample], fault: Instant) -> Option<Instant> {
    let before: Vec<(usize, &Arc<str>)> = samples
        .iter()
        .filter(|s| s.0 <= fault)
        .filter_map(|(_, i, w)| match w {
            Seen::Writable(start) => Some((*i, start)),
            _ => None,
        })
        .collect();
    samples
        .iter()
        .filter(|s| s.0 > fault)
        .filter_map(|(t, i, w)| match w {
            Seen::Writable(start) if !before.contains(&(*i, start)) => Some(*t),
            _ => None,
        })
        .min()
}

/// One node's observer: asks, records, and reconnects when the node stops answering.
async fn observe(
    config: Config,
    i: usize,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
) {
    let node = &config.nodes()[i];
    let driver = TokioPostgres::new();
    let mut conn = None;
    // A write needs a transaction id; a standby answers NULL instead of an error, so its
    // log stays quiet.
    let ask = "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE txid_current() END, \
               pg_postmaster_start_time()::text";
    while !stop.load(Relaxed) {
        if conn.is_none() {
            if let Ok(mut params) = config.connect_params(node).await {
                params.connect_timeout =
                    Some(params.connect_timeout.unwrap_or(PATIENCE).min(PATIENCE));
                params.application_name = Some("pgprovider-drill-observer".into());
                conn = tokio::time::timeout(PATIENCE, driver.connect(&params))
                    .await
                    .ok()
                    .and_then(Result::ok);
            }
        }
        let writable = match conn.as_mut() {
            Some(c) => match tokio::time::timeout(PATIENCE, c.query(ask, &[])).await {
                Ok(Ok(rows)) => match rows.first() {
                    Some(r) if r.get::<_, Option<i64>>(0).is_some() => {
                        Seen::Writable(r.get::<_, String>(1).into())
                    }
                    Some(_) => Seen::ReadOnly,
                    None => Seen::Unknown,
                },
                _ => {
                    conn = None;
                    Seen::Unknown
                }
            },
            None => Seen::Unknown,
        };
        samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((Instant::now(), i, writable));
        tokio::time::sleep(EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_node_or_a_restarted_one_counts_the_old_one_still_up_does_not() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let w = |start: &str| Seen::Writable(start.into());
        // Node 0 primary before the fault at 10 ms; it keeps answering until 20, node 1
        // becomes writable at 30.
        let s = vec![
            (at(5), 0, w("a")),
            (at(5), 1, Seen::ReadOnly),
            (at(15), 0, w("a")),
            (at(20), 0, Seen::Unknown),
            (at(30), 1, w("b")),
        ];
        assert_eq!(new_primary_writable(&s, at(10)), Some(at(30)));
        // Restarted in place: a new postmaster start time.
        let s = vec![
            (at(5), 0, w("a")),
            (at(15), 0, Seen::Unknown),
            (at(25), 0, w("a2")),
        ];
        assert_eq!(new_primary_writable(&s, at(10)), Some(at(25)));
        // Missed questions, the same server: no new primary.
        let s = vec![
            (at(5), 0, w("a")),
            (at(15), 0, Seen::Unknown),
            (at(25), 0, w("a")),
        ];
        assert_eq!(new_primary_writable(&s, at(10)), None);
    }
}
