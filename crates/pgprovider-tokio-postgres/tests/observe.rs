//! Hooks, spans, metrics, health endpoints and the audit log against real servers.

use pgprovider::observe::{AuditLog, Hook, Hooks, MetricsHook, Operation, Outcome, Verdict};
use pgprovider::provider::{Provider, TopologyOptions};
use pgprovider::{Config, ErrorKind, Pool, Queries};
use pgprovider_tokio_postgres::TokioPostgres;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
mod safety;
mod security;

/// An in-memory sink for the audit log.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The process's Prometheus recorder, installed once for every test of this binary.
fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| pgprovider::observe::install_prometheus().unwrap())
}

/// Everything hooks saw, in order: `before:name:kind` and `after:name:kind:outcome`.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

struct Recorder {
    name: &'static str,
    log: Log,
}

impl Hook for Recorder {
    fn name(&self) -> &str {
        self.name
    }
    fn before(&self, op: &Operation<'_>) -> Verdict {
        self.log
            .0
            .lock()
            .unwrap()
            .push(format!("before:{}:{}", self.name, op.name));
        Verdict::Proceed
    }
    fn after(&self, op: &Operation<'_>, outcome: &Outcome<'_>) {
        let ok = if outcome.error.is_none() { "ok" } else { "err" };
        self.log
            .0
            .lock()
            .unwrap()
            .push(format!("after:{}:{}:{ok}", self.name, op.name));
    }
}

/// Rejects statements touching `guarded`, after an async check.
struct Guard;

impl Hook for Guard {
    fn name(&self) -> &str {
        "guard"
    }
    fn before(&self, op: &Operation<'_>) -> Verdict {
        let Some(sql) = op.sql else {
            return Verdict::Proceed;
        };
        if !sql.contains("guarded") {
            return Verdict::Proceed;
        }
        let drop = sql.to_ascii_uppercase().starts_with("DROP");
        Verdict::Wait(Box::pin(async move {
            tokio::task::yield_now().await;
            if drop {
                Err("guarded tables are not dropped".to_owned())
            } else {
                Ok(())
            }
        }))
    }
}

struct Panicky;

impl Hook for Panicky {
    fn name(&self) -> &str {
        "panicky"
    }
    fn before(&self, op: &Operation<'_>) -> Verdict {
        if op.sql.is_some_and(|s| s.contains("boom")) {
            panic!("hook bug");
        }
        Verdict::Proceed
    }
}

fn pool_with(config: &Config, hooks: Hooks) -> Pool<TokioPostgres> {
    Pool::builder(TokioPostgres::new(), config, &config.nodes()[0])
        .observe(hooks)
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_in_order_reject_before_the_server_and_survive_panics() {
    let config = common::config("&application_name=pgprovider-hooks").await;
    let log = Log::default();
    let hooks = Hooks::builder()
        .hook(
            5,
            Recorder {
                name: "second",
                log: log.clone(),
            },
        )
        .hook(
            -1,
            Recorder {
                name: "first",
                log: log.clone(),
            },
        )
        .hook(
            5,
            Recorder {
                name: "third",
                log: log.clone(),
            },
        )
        .hook(10, Guard)
        .hook(20, Panicky)
        .build();
    let pool = pool_with(&config, hooks.clone());
    pool.execute("DROP TABLE IF EXISTS guarded_t", &[])
        .await
        .unwrap_err();
    // Set up the table without hooks, then try to drop it through them.
    let plain = common::pool("").await;
    plain
        .execute("DROP TABLE IF EXISTS guarded_t", &[])
        .await
        .unwrap();
    plain
        .execute("CREATE TABLE guarded_t (id int)", &[])
        .await
        .unwrap();
    log.0.lock().unwrap().clear();
    let e = pool.execute("DROP TABLE guarded_t", &[]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected);
    assert!(
        e.message()
            .contains("rejected by hook `guard`: guarded tables are not dropped"),
        "{e}"
    );
    assert!(e.node().is_some());
    // Nothing reached the server: the table is there.
    let n: i64 = plain
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'guarded_t'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let seen = log.0.lock().unwrap().clone();
    let befores: Vec<&str> = seen
        .iter()
        .filter(|l| l.starts_with("before:"))
        .map(|s| s.as_str())
        .collect();
    assert_eq!(
        &befores[..3],
        [
            "before:first:execute",
            "before:second:execute",
            "before:third:execute"
        ],
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|l| l.starts_with("after:") && l.ends_with(":execute:ok")),
        "{seen:?}"
    );
    // Allowed statements run; after hooks see their outcome in the same order.
    log.0.lock().unwrap().clear();
    pool.execute("INSERT INTO guarded_t VALUES (1)", &[])
        .await
        .unwrap();
    let seen = log.0.lock().unwrap().clone();
    let afters: Vec<&String> = seen.iter().filter(|l| l.starts_with("after:")).collect();
    assert!(afters.len() >= 3, "{seen:?}");
    let exec: Vec<&&String> = afters.iter().filter(|l| l.contains(":execute:")).collect();
    assert_eq!(
        exec.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        [
            "after:first:execute:ok",
            "after:second:execute:ok",
            "after:third:execute:ok"
        ]
    );
    // The lifecycle is reported: connect, checkout, return.
    assert!(
        seen.iter().any(|l| l == "after:first:checkout:ok"),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|l| l == "after:first:return:ok"),
        "{seen:?}"
    );
    // A panicking hook is contained and counted; the statement still runs.
    let rows = pool.query("SELECT 'boom'::text", &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(hooks.panics(), 1);
    // Transaction control is its own kind.
    log.0.lock().unwrap().clear();
    pool.transaction(&pgprovider::TxOptions::default(), |tx| async move {
        tx.execute("INSERT INTO guarded_t VALUES (2)", &[]).await
    })
    .await
    .unwrap();
    let seen = log.0.lock().unwrap().clone();
    for k in ["begin", "execute", "commit"] {
        assert!(
            seen.iter().any(|l| *l == format!("after:first:{k}:ok")),
            "{k}: {seen:?}"
        );
    }
    // Batches, COPY in and out, notify and simple queries are operations too.
    log.0.lock().unwrap().clear();
    {
        use tokio_postgres::types::Type;
        let mut c = pool.get().await.unwrap();
        c.batch(&[("INSERT INTO guarded_t VALUES (3)", &[]), ("SELECT 1", &[])])
            .await
            .unwrap();
        let n = c
            .copy_in(
                "COPY guarded_t (id) FROM STDIN (FORMAT binary)",
                &[Type::INT4],
                (10..13).map(|i: i32| (i,)),
            )
            .await
            .unwrap();
        assert_eq!(n, 3);
        let mut seen_rows = 0;
        c.copy_out(
            "COPY (SELECT id FROM guarded_t) TO STDOUT (FORMAT binary)",
            &[Type::INT4],
            |_| {
                seen_rows += 1;
                Ok(())
            },
        )
        .await
        .unwrap();
        assert_eq!(seen_rows, 6);
        let mut csv = Vec::new();
        c.copy_out_raw("COPY (SELECT 1) TO STDOUT (FORMAT csv)", &mut csv)
            .await
            .unwrap();
        assert_eq!(csv, b"1\n");
        c.notify("hooks_chan", "x").await.unwrap();
        pgprovider::Connection::simple_query(&mut *c, "SELECT 1")
            .await
            .unwrap();
    }
    let seen = log.0.lock().unwrap().clone();
    for k in ["batch", "copy", "notify", "execute"] {
        assert!(
            seen.iter().any(|l| *l == format!("after:first:{k}:ok")),
            "{k}: {seen:?}"
        );
    }
    assert_eq!(
        seen.iter().filter(|l| *l == "after:first:copy:ok").count(),
        3,
        "{seen:?}"
    );
    // Custom events.
    log.0.lock().unwrap().clear();
    hooks.fire("cache-refresh", "app").await.unwrap();
    assert_eq!(
        log.0.lock().unwrap()[..2],
        ["before:first:cache-refresh", "before:second:cache-refresh"]
    );
    plain.execute("DROP TABLE guarded_t", &[]).await.unwrap();
}

/// A subscriber layer keeping every span's fields, and the fields of slow-query events.
#[derive(Clone, Default)]
struct Spans(
    Arc<Mutex<HashMap<u64, (String, SpanFields)>>>,
    Arc<Mutex<Vec<SpanFields>>>,
);

type SpanFields = HashMap<String, String>;

struct Fields<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        self.0.insert(f.name().to_owned(), format!("{v:?}"));
    }
    fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
        self.0.insert(f.name().to_owned(), v.to_owned());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Spans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0
            .lock()
            .unwrap()
            .insert(id.into_u64(), (attrs.metadata().name().to_owned(), fields));
    }
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == "pgprovider::slow_query" {
            let mut fields = HashMap::new();
            event.record(&mut Fields(&mut fields));
            self.1.lock().unwrap().push(fields);
        }
    }
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Some((_, f)) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(f));
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn spans_carry_the_database_conventions_and_never_parameters() {
    use tracing_subscriber::layer::SubscriberExt;
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let config = common::config("&application_name=pgprovider-spans").await;
    let pool = pool_with(
        &config,
        Hooks::builder()
            .spans(true)
            .sql_comments(true)
            .hook(
                0,
                pgprovider::observe::SlowQueryLog::new(Duration::from_millis(40)),
            )
            .build(),
    );
    let secret = "hunter2-secret";
    pool.query("SELECT $1::text", &[&secret]).await.unwrap();
    let e = pool
        .query("SELECT * FROM no_such_table_for_spans", &[])
        .await
        .unwrap_err();
    assert_eq!(e.sql_state().unwrap().code(), "42P01");
    // A correlation id goes into the span and, as a sqlcommenter comment, to the server.
    let seen_by_server: String = pgprovider::observe::with_correlation_id("req-42", async {
        pool.query_one(
            "SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
    })
    .await;
    assert!(
        seen_by_server.ends_with("/*correlation_id='req-42'*/"),
        "{seen_by_server}"
    );
    let all = spans.0.lock().unwrap().clone();
    let ops: Vec<&HashMap<String, String>> = all
        .values()
        .filter(|(name, _)| name == "pgprovider.operation")
        .map(|(_, f)| f)
        .collect();
    let find = |text: &str| {
        ops.iter()
            .find(|f| f.get("db.query.text").is_some_and(|t| t.contains(text)))
            .unwrap_or_else(|| panic!("no span for {text}: {ops:?}"))
    };
    let ok = find("SELECT $1::text");
    let node = &config.nodes()[0];
    assert_eq!(ok["db.system.name"], "postgresql");
    assert_eq!(ok["db.namespace"], config.dbname());
    assert_eq!(ok["db.operation.name"], "query");
    assert_eq!(ok["server.address"], node.host().to_string());
    assert_eq!(ok["server.port"], node.port().to_string());
    assert_eq!(ok["otel.kind"], "client");
    assert_eq!(ok["otel.status_code"], "OK");
    assert_eq!(ok["db.response.returned_rows"], "1");
    let failed = find("no_such_table_for_spans");
    assert_eq!(failed["db.response.status_code"], "42P01");
    assert_eq!(failed["error.type"], "database");
    assert_eq!(failed["otel.status_code"], "ERROR");
    let tagged = find("pg_stat_activity");
    assert_eq!(tagged["pgprovider.correlation_id"], "req-42");
    // The span holds the statement as written, not the comment or any parameter.
    assert!(!tagged["db.query.text"].contains("correlation_id"));
    let connect = all
        .values()
        .filter(|(_, f)| f.get("db.operation.name").is_some_and(|o| o == "connect"))
        .count();
    assert!(connect >= 1);
    // The slow-query log: only the slow statement, normalized, with its fingerprint.
    pool.query("SELECT pg_sleep(0.05), 'x'::text", &[])
        .await
        .unwrap();
    // (A loaded machine may make another statement slow too: only this one must be there.)
    let slow: Vec<SpanFields> = spans
        .1
        .lock()
        .unwrap()
        .iter()
        .filter(|f| f["statement"].contains("pg_sleep"))
        .cloned()
        .collect();
    assert_eq!(slow.len(), 1, "{slow:?}");
    assert_eq!(slow[0]["statement"], "SELECT pg_sleep(?), ?::text");
    assert_eq!(
        slow[0]["fingerprint"],
        pgprovider::observe::fingerprint("SELECT pg_sleep(0.05), 'x'::text")
    );
    assert!(slow[0]["duration_ms"].parse::<f64>().unwrap() >= 40.0);
    let dump = format!("{all:?}");
    assert!(
        !dump.contains(secret),
        "a parameter value leaked into a span"
    );
}

/// Sends `GET path` over a real socket and returns the status code and body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Parses Prometheus text: every sample line is `name{labels} value`; returns the samples
/// by `name{labels}`.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            assert!(
                line.is_empty() || line.starts_with("# TYPE ") || line.starts_with("# HELP "),
                "bad comment line: {line}"
            );
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("a sample has a value");
        let name_end = key.find('{').unwrap_or(key.len());
        let name = &key[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        if name_end < key.len() {
            assert!(key.ends_with('}'), "unclosed labels in {line}");
            for pair in key[name_end + 1..key.len() - 1].split("\",") {
                let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                assert!(!v.contains('\n'));
            }
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        out.insert(key.to_owned(), v);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_endpoints_and_the_audit_log_after_a_real_workload() {
    let metrics = prometheus().clone();
    let cluster = pgprovider_testkit::TestCluster::start().await.unwrap();
    let node = cluster.primary();
    let config = Config::from_url(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres?connect_timeout=1&pool_acquire_timeout=2s",
        node.port()
    ))
    .unwrap();
    let audit = Sink::default();
    let hooks = Hooks::builder()
        .hook(0, MetricsHook::new())
        .hook(1, AuditLog::new(audit.clone(), config.user()))
        .build();
    let provider = Provider::with_hooks(
        TokioPostgres::new(),
        &config,
        TopologyOptions::default().with_monitor_interval(Duration::from_millis(100)),
        hooks,
    );
    provider
        .monitor()
        .wait_for_primary(Duration::from_secs(20))
        .await
        .unwrap();
    // The workload: 1 create, 10 inserts, 5 queries, 2 failing queries, 1 transaction.
    let mut c = provider.write().await.unwrap();
    c.execute("CREATE TABLE audited (id int, secret text)", &[])
        .await
        .unwrap();
    for i in 0..10 {
        c.execute("INSERT INTO audited VALUES ($1, $2)", &[&i, &"hunter2"])
            .await
            .unwrap();
    }
    for _ in 0..5 {
        c.query("SELECT id FROM audited WHERE secret = $1", &[&"hunter2"])
            .await
            .unwrap();
    }
    for _ in 0..2 {
        c.query("SELECT nope FROM audited", &[]).await.unwrap_err();
    }
    c.execute("BEGIN", &[]).await.unwrap();
    c.execute("UPDATE audited SET id = id + 1", &[])
        .await
        .unwrap();
    c.execute("COMMIT", &[]).await.unwrap();
    drop(c);
    // A returned connection may be reset in a task of its own first: wait until it is idle.
    let pool = provider.pool(&config.nodes()[0]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pool.stats().idle < 1 {
        assert!(std::time::Instant::now() < deadline, "{:?}", pool.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let app = pgprovider::http::router(provider.clone(), metrics);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (code, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    let samples = parse_prometheus(&body);
    let n = node.addr();
    let count = |op: &str, outcome: &str| {
        samples
            .get(&format!(
                "pgprovider_operations_total{{node=\"{n}\",operation=\"{op}\",outcome=\"{outcome}\"}}"
            ))
            .copied()
            .unwrap_or(0.0)
    };
    assert_eq!(count("execute", "ok"), 12.0, "{body}");
    assert_eq!(count("query", "ok"), 5.0, "{body}");
    assert_eq!(count("query", "error"), 2.0, "{body}");
    assert_eq!(count("begin", "ok"), 1.0, "{body}");
    assert_eq!(count("commit", "ok"), 1.0, "{body}");
    assert_eq!(
        samples[&format!(
            "pgprovider_errors_total{{node=\"{n}\",operation=\"query\",kind=\"database\",sqlstate_class=\"42\"}}"
        )],
        2.0
    );
    assert_eq!(
        samples[&format!(
            "pgprovider_transaction_duration_seconds_count{{node=\"{n}\",outcome=\"commit\"}}"
        )],
        1.0
    );
    assert_eq!(
        samples[&format!(
            "pgprovider_pool_connections_created_total{{node=\"{n}\",role=\"primary\"}}"
        )],
        1.0
    );
    assert_eq!(
        samples[&format!(
            "pgprovider_pool_connections{{node=\"{n}\",role=\"primary\",state=\"idle\"}}"
        )],
        1.0
    );
    assert!(samples[&format!("pgprovider_pool_acquire_seconds_count{{node=\"{n}\"}}")] >= 1.0);
    assert!(samples.contains_key("pgprovider_split_brains_total"));
    assert!(
        !body.contains("hunter2") && !body.contains("SELECT"),
        "SQL in labels"
    );

    // The audit log: one line per operation, no parameter values.
    let text = String::from_utf8(audit.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 10 + 5 + 2 + 3, "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(lines.iter().all(|l| l.starts_with('{') && l.ends_with('}')));
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("\"outcome\":\"error\""))
            .count(),
        2
    );
    assert!(
        lines[1].contains("\"operation\":\"execute\"") && lines[1].contains("\"rows\":1"),
        "{}",
        lines[1]
    );

    // Health: live and ready, then unready once the only node is gone.
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_owned()));
    let (code, body) = get(addr, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    node.stop().await.unwrap();
    provider
        .monitor()
        .wait_for(Duration::from_secs(20), |s| !s[0].reachable)
        .await
        .unwrap();
    let (code, body) = get(addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("\"status\":\"down\"") && body.contains("\"reachable\":false"),
        "{body}"
    );
    assert_eq!(get(addr, "/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_built_with_hooks_runs_every_statement_through_them() {
    let log = Log::default();
    let hooks = Hooks::builder()
        .hook(
            0,
            Recorder {
                name: "built",
                log: log.clone(),
            },
        )
        .build();
    let c = common::config("").await;
    let provider = Provider::builder(TokioPostgres::new(), &c)
        .hooks(hooks)
        .topology(TopologyOptions::default())
        .build();
    provider.query("SELECT 1", &[]).await.unwrap();
    let seen = log.0.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|l| l.starts_with("after:built:") && l.ends_with(":ok")),
        "{seen:?}"
    );
}
