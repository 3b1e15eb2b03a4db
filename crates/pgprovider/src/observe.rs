//! Observability: operation hooks and spans (from [`pgprovider_core::observe`]), plus the
//! built-in hooks: [`MetricsHook`] (the `metrics` crate; a Prometheus exporter behind the
//! `prometheus` feature), [`AuditLog`] (one JSON line per operation) and [`SlowQueryLog`].
//!
//! ```no_run
//! # async fn run() -> pgprovider::Result<()> {
//! use pgprovider::observe::{AuditLog, Hooks, MetricsHook, SlowQueryLog};
//! use pgprovider::provider::{Provider, TopologyOptions};
//! use std::time::Duration;
//! let config = pgprovider::Config::from_url("postgres://app@db1,db2/app")?;
//! let hooks = Hooks::builder()
//!     .spans(true)
//!     .hook(0, MetricsHook::new())
//!     .hook(10, SlowQueryLog::new(Duration::from_millis(200)))
//!     .hook(20, AuditLog::new(std::io::stderr(), config.user()))
//!     .build();
//! let provider = Provider::with_hooks(
//!     pgprovider_tokio_postgres::TokioPostgres::new(),
//!     &config,
//!     TopologyOptions::default(),
//!     hooks,
//! );
//! # Ok(()) }
//! ```
//!
//! Metric names (labels in brackets; no SQL text ever becomes a label, so their number stays
//! bounded by nodes × operation kinds × error kinds):
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `pgprovider_operations_total` | counter | node, operation, outcome (`ok`, `error`), tenant when set |
//! | `pgprovider_operation_duration_seconds` | histogram | node, operation, tenant when set |
//! | `pgprovider_errors_total` | counter | node, operation, kind, sqlstate_class |
//! | `pgprovider_transaction_duration_seconds` | histogram | node, outcome (`commit`, `rollback`) |
//! | `pgprovider_pool_acquire_seconds` | histogram | node |
//! | `pgprovider_pool_connections` | gauge | node, role, state (`idle`, `in_use`) |
//! | `pgprovider_pool_max_size`, `pgprovider_pool_waiters` | gauge | node, role |
//! | `pgprovider_pool_connections_created_total`, `pgprovider_pool_timeouts_total`, `pgprovider_pool_leaks_total`, `pgprovider_transactions_abandoned_total` | counter | node, role |
//! | `pgprovider_safety_*`, `pgprovider_deadlocks_total` | see [`safety`](crate::safety) | |
//! | `pgprovider_pool_connections_closed_total` | counter | node, role, reason |
//! | `pgprovider_statement_cache_hits_total`, `pgprovider_statement_cache_misses_total` | counter | node, role |
//! | `pgprovider_split_brains_total` | counter | |
//!
//! The pool figures are read from the pools when [`record_pool_metrics`] runs (the
//! provider's [`record_metrics`](crate::provider::Provider::record_metrics) does it for every
//! node; the `/metrics` endpoint calls it before rendering).

pub use pgprovider_core::observe::*;

use crate::pool::PoolStats;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Installs a Prometheus recorder as the `metrics` crate's global recorder (feature
/// `prometheus`), with histogram buckets suited to database latencies; render its text with
/// the returned handle (the `http` feature's `/metrics` does).
///
/// # Errors
/// When a global recorder is already installed.
#[cfg(feature = "prometheus")]
pub fn install_prometheus()
-> Result<metrics_exporter_prometheus::PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0,
        ])?
        .install_recorder()
}

/// A `tracing` layer that sends the provider's spans (and any others) to OpenTelemetry
/// through `tracer` (feature `otel`): add it to your subscriber, and the spans'
/// `otel.name`, `otel.kind` and `otel.status_code` fields become the exported span's name,
/// kind and status.
#[cfg(feature = "otel")]
pub fn otel_layer<S, T>(tracer: T) -> tracing_opentelemetry::OpenTelemetryLayer<S, T>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    T: opentelemetry::trace::Tracer + 'static,
    T::Span: Send + Sync,
{
    tracing_opentelemetry::layer().with_tracer(tracer)
}

/// Records every operation in the `metrics` crate's global recorder; see the table in the
/// [module docs](self).
///
/// The `tenant` label is bounded: the first [`DEFAULT_TENANT_LABELS`] tenants seen get their
/// own value, later ones share `other` (see [`with_tenant_labels`](Self::with_tenant_labels)).
#[derive(Debug)]
pub struct MetricsHook {
    tenants: Mutex<std::collections::HashSet<String>>,
    max_tenants: usize,
}

/// How many tenants get a label value of their own by default.
pub const DEFAULT_TENANT_LABELS: usize = 100;

impl Default for MetricsHook {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsHook {
    /// The hook.
    pub fn new() -> Self {
        MetricsHook {
            tenants: Mutex::new(std::collections::HashSet::new()),
            max_tenants: DEFAULT_TENANT_LABELS,
        }
    }

    /// How many tenants get a `tenant` label value of their own (0: none).
    pub fn with_tenant_labels(mut self, max: usize) -> Self {
        self.max_tenants = max;
        self
    }

    fn tenant_label(&self, tenant: &str) -> String {
        let mut seen = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(tenant) {
            return tenant.to_owned();
        }
        if seen.len() < self.max_tenants {
            seen.insert(tenant.to_owned());
            return tenant.to_owned();
        }
        "other".to_owned()
    }
}

impl Hook for MetricsHook {
    fn name(&self) -> &str {
        "metrics"
    }

    fn after(&self, op: &Operation<'_>, outcome: &Outcome<'_>) {
        let node = op.node.to_owned();
        match op.kind {
            OperationKind::Checkout => {
                metrics::histogram!("pgprovider_pool_acquire_seconds", "node" => node)
                    .record(outcome.duration.as_secs_f64());
                return;
            }
            OperationKind::Return | OperationKind::Close | OperationKind::Custom => return,
            _ => {}
        }
        let operation = op.kind.as_str();
        let mut labels = vec![("node", node.clone()), ("operation", operation.to_owned())];
        if let Some(t) = &op.tenant {
            labels.push(("tenant", self.tenant_label(t)));
        }
        metrics::histogram!("pgprovider_operation_duration_seconds", &labels)
            .record(outcome.duration.as_secs_f64());
        let ok = if outcome.error.is_none() {
            "ok"
        } else {
            "error"
        };
        labels.push(("outcome", ok.to_owned()));
        metrics::counter!("pgprovider_operations_total", &labels).increment(1);
        if let Some(e) = outcome.error {
            let class = e
                .sql_state()
                .map_or_else(|| "none".to_owned(), |s| s.code()[..2].to_owned());
            metrics::counter!(
                "pgprovider_errors_total",
                "node" => node.clone(),
                "operation" => operation,
                "kind" => e.kind().as_str(),
                "sqlstate_class" => class
            )
            .increment(1);
        }
        if let Some(open_for) = outcome.transaction {
            let end = if op.kind == OperationKind::Commit && outcome.error.is_none() {
                "commit"
            } else {
                "rollback"
            };
            metrics::histogram!("pgprovider_transaction_duration_seconds", "node" => node, "outcome" => end)
                .record(open_for.as_secs_f64());
        }
    }
}

/// Publishes a pool's figures as gauges and counters (see the [module docs](self)).
pub fn record_pool_metrics(node: &str, role: &str, s: &PoolStats) {
    let l = |extra: Option<(&'static str, &'static str)>| {
        let mut v = vec![("node", node.to_owned()), ("role", role.to_owned())];
        if let Some((k, val)) = extra {
            v.push((k, val.to_owned()));
        }
        v
    };
    metrics::gauge!("pgprovider_pool_connections", &l(Some(("state", "idle")))).set(s.idle as f64);
    metrics::gauge!("pgprovider_pool_connections", &l(Some(("state", "in_use"))))
        .set(s.in_use as f64);
    metrics::gauge!("pgprovider_pool_max_size", &l(None)).set(s.max_size as f64);
    metrics::gauge!("pgprovider_pool_waiters", &l(None)).set(s.waiters as f64);
    metrics::counter!("pgprovider_pool_connections_created_total", &l(None)).absolute(s.created);
    metrics::counter!("pgprovider_pool_timeouts_total", &l(None)).absolute(s.timeouts);
    metrics::counter!("pgprovider_pool_leaks_total", &l(None)).absolute(s.leaks);
    metrics::counter!("pgprovider_transactions_abandoned_total", &l(None))
        .absolute(s.abandoned_transactions);
    metrics::counter!("pgprovider_pool_recovered_total", &l(None)).absolute(s.recovered);
    metrics::counter!("pgprovider_pool_adopted_total", &l(None)).absolute(s.adopted);
    for (reason, n) in [
        ("error", s.closed_error),
        ("lifetime", s.closed_lifetime),
        ("idle", s.closed_idle),
        ("validation", s.closed_validation),
        ("resize", s.closed_resize),
        ("pool", s.closed_pool),
        ("retired", s.closed_retired),
    ] {
        metrics::counter!(
            "pgprovider_pool_connections_closed_total",
            &l(Some(("reason", reason)))
        )
        .absolute(n);
    }
    metrics::counter!("pgprovider_statement_cache_hits_total", &l(None))
        .absolute(s.statement_cache.hits);
    metrics::counter!("pgprovider_statement_cache_misses_total", &l(None))
        .absolute(s.statement_cache.misses);
}

/// Logs operations slower than a threshold (`warn`, target `pgprovider::slow_query`) with
/// their duration, node and statement fingerprint and normalized text (literal values
/// replaced by `?`, so no data leaks into the log).
#[derive(Debug)]
pub struct SlowQueryLog {
    threshold: Duration,
}

impl SlowQueryLog {
    /// Logs operations taking `threshold` or longer.
    pub fn new(threshold: Duration) -> Self {
        SlowQueryLog { threshold }
    }
}

impl Hook for SlowQueryLog {
    fn name(&self) -> &str {
        "slow-query-log"
    }

    fn after(&self, op: &Operation<'_>, outcome: &Outcome<'_>) {
        if outcome.duration < self.threshold {
            return;
        }
        let Some(sql) = op.sql else {
            return;
        };
        tracing::warn!(
            target: "pgprovider::slow_query",
            node = op.node,
            operation = op.kind.as_str(),
            duration_ms = outcome.duration.as_secs_f64() * 1e3,
            fingerprint = %fingerprint(sql),
            statement = %normalize(sql),
            tenant = op.tenant.as_deref(),
            correlation_id = op.correlation_id().as_deref(),
            "slow operation"
        );
    }
}

/// Writes one JSON line per operation to a sink: `time` (RFC 3339, UTC), `tenant`, `role`
/// (the application role acting, see [`access`](crate::access)), `user` (the database
/// user), `node`, `operation`, `fingerprint` (of the statement, see [`fingerprint`]),
/// `rows`, `duration_ms`, `outcome` (`ok`, `error`, or `denied` when a hook such as the
/// firewall or role-based access refused it before it was sent), and on error `error_kind`
/// and `sqlstate`, plus `correlation_id` when set. Parameter values never
/// appear: hooks are not given them. Connection lifecycle events are not audited.
pub struct AuditLog {
    sink: Mutex<Box<dyn Write + Send>>,
    user: String,
    failures: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("user", &self.user)
            .finish()
    }
}

impl AuditLog {
    /// An audit log writing to `sink` for operations run as the database user `user`.
    pub fn new(sink: impl Write + Send + 'static, user: impl Into<String>) -> Self {
        AuditLog {
            sink: Mutex::new(Box::new(sink)),
            user: user.into(),
            failures: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Lines that could not be written (the sink failed); each failure is also logged.
    pub fn failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn line(&self, op: &Operation<'_>, outcome: &Outcome<'_>) -> String {
        let mut j = Json::default();
        j.str("time", &rfc3339(SystemTime::now()));
        j.opt("tenant", op.tenant.as_deref());
        j.opt("role", op.role.as_deref());
        j.str("user", &self.user);
        j.str("node", op.node);
        j.str(
            "operation",
            if op.kind == OperationKind::Custom {
                op.name
            } else {
                op.kind.as_str()
            },
        );
        j.opt("fingerprint", op.sql.map(fingerprint).as_deref());
        match outcome.rows {
            Some(n) => j.raw("rows", &n.to_string()),
            None => j.raw("rows", "null"),
        }
        j.raw(
            "duration_ms",
            &format!("{:.3}", outcome.duration.as_secs_f64() * 1e3),
        );
        let rejected = outcome
            .error
            .is_some_and(|e| e.kind() == crate::ErrorKind::Rejected);
        j.str(
            "outcome",
            match outcome.error {
                None => "ok",
                Some(_) if rejected => "denied",
                Some(_) => "error",
            },
        );
        if let Some(e) = outcome.error {
            j.str("error_kind", e.kind().as_str());
            let code = e.sql_state();
            j.opt("sqlstate", code.as_ref().map(|s| s.code()));
        }
        j.opt("correlation_id", op.correlation_id().as_deref());
        j.finish()
    }
}

impl Hook for AuditLog {
    fn name(&self) -> &str {
        "audit-log"
    }

    fn after(&self, op: &Operation<'_>, outcome: &Outcome<'_>) {
        if matches!(
            op.kind,
            OperationKind::Connect
                | OperationKind::Checkout
                | OperationKind::Return
                | OperationKind::Close
        ) {
            return;
        }
        let mut line = self.line(op, outcome);
        line.push('\n');
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = sink.write_all(line.as_bytes()).and_then(|()| sink.flush()) {
            self.failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }
}

/// A tiny JSON object writer (keys are ours; values escaped).
#[derive(Default)]
pub(crate) struct Json(String);

impl Json {
    fn key(&mut self, k: &str) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        self.0.push('"');
        self.0.push_str(k);
        self.0.push_str("\":");
    }
    pub(crate) fn raw(&mut self, k: &str, v: &str) {
        self.key(k);
        self.0.push_str(v);
    }
    pub(crate) fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        escape_into(&mut self.0, v);
    }
    pub(crate) fn opt(&mut self, k: &str, v: Option<&str>) {
        match v {
            Some(v) => self.str(k, v),
            None => self.raw(k, "null"),
        }
    }
    pub(crate) fn finish(mut self) -> String {
        if self.0.is_empty() {
            self.0.push('{');
        }
        self.0.push('}');
        self.0
    }
}

/// `v` as a JSON string.
pub(crate) fn escape_into(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `t` as RFC 3339 in UTC with milliseconds.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_labels_are_bounded() {
        let m = MetricsHook::new().with_tenant_labels(2);
        assert_eq!(m.tenant_label("a"), "a");
        assert_eq!(m.tenant_label("b"), "b");
        assert_eq!(m.tenant_label("c"), "other");
        assert_eq!(m.tenant_label("a"), "a");
        assert_eq!(MetricsHook::default().tenant_label("z"), "z");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_768_496_789);
        assert_eq!(rfc3339(t), "2026-11-27T08:34:56.789Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn json_escapes_what_it_must() {
        let mut j = Json::default();
        j.str("a", "q\"b\\n\nt\t\u{1}é");
        j.opt("b", None);
        j.raw("c", "1");
        assert_eq!(j.finish(), r#"{"a":"q\"b\\n\nt\t\u0001é","b":null,"c":1}"#);
        assert_eq!(Json::default().finish(), "{}");
    }

    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn audit_lines_and_a_failing_sink() {
        let out = Shared::default();
        let log = AuditLog::new(out.clone(), "app");
        let op = Operation::new(OperationKind::Execute, "db1:5432")
            .with_sql("UPDATE t SET a = 'secret' WHERE id = 7")
            .with_tenant(Some("acme".into()));
        let e = pgprovider_core::Error::database(
            pgprovider_core::SqlState::SERIALIZATION_FAILURE,
            "could not serialize",
        );
        log.after(&op, &Outcome::new(Duration::from_millis(2), Some(1), None));
        log.after(&op, &Outcome::new(Duration::from_millis(3), None, Some(&e)));
        log.after(
            &Operation::new(OperationKind::Checkout, "db1:5432"),
            &Outcome::new(Duration::ZERO, None, None),
        );
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert!(
            lines[0].contains(
                r#""tenant":"acme","role":null,"user":"app","node":"db1:5432","operation":"execute""#
            ),
            "{text}"
        );
        assert!(
            lines[0].contains(r#""rows":1,"duration_ms":2.000,"outcome":"ok""#),
            "{text}"
        );
        assert!(
            lines[1].contains(r#""outcome":"error","error_kind":"database","sqlstate":"40001""#),
            "{text}"
        );
        assert!(format!("{log:?}").contains("app"));
        let broken = AuditLog::new(Broken, "app");
        broken.after(&op, &Outcome::new(Duration::ZERO, None, None));
        assert_eq!(broken.failures(), 1);
    }
}
