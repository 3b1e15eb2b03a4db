//! The `pgprovider` binary, run as a user would, against real servers.

use pgprovider_testkit::TestCluster;
use std::process::{Command, Output};

/// The kit's shared server (or its fallback cluster), from sync code: a runtime of its
/// own on a thread of its own.
fn shared_url() -> String {
    std::thread::spawn(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(pgprovider_testkit::shared_url())
            .unwrap()
    })
    .join()
    .unwrap()
}

fn pgprovider(args: &[&str], database_url: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pgprovider"));
    c.args(args).env_remove("DATABASE_URL");
    for v in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD"] {
        c.env_remove(v);
    }
    if let Some(u) = database_url {
        c.env("DATABASE_URL", u);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn assert_no_panic(stderr: &str) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

async fn demo_tables(url: &str) -> i64 {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'pgprovider_demo_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn demo_against_database_url_cleans_up() {
    let url = shared_url();
    let before = demo_tables(&url).await;
    let o = pgprovider(&["demo", "--ops", "300", "--tasks", "4"], Some(&url));
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("(DATABASE_URL)"), "{out}");
    for needle in [
        "read",
        "write",
        "transaction",
        "total",
        "rows written and verified: 150",
        "checkouts",
        "connections created",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
    assert_eq!(
        demo_tables(&url).await,
        before,
        "the demo table was removed"
    );
}

#[tokio::test]
async fn demo_runs_with_every_registered_driver() {
    let url = shared_url();
    for driver in ["tokio-postgres", "sqlx", "diesel"] {
        let o = pgprovider(
            &["demo", "--ops", "100", "--tasks", "2", "--driver", driver],
            Some(&url),
        );
        let (out, err) = text(&o);
        assert!(o.status.success(), "{driver}: {out}\n{err}");
        assert!(out.contains(&format!("driver {driver}")), "{out}");
        assert!(out.contains("rows written and verified: 50"), "{out}");
    }
    let o = pgprovider(&["demo", "--driver", "nope"], Some(&url));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("sqlx"),
        "the error lists the drivers: {:?}",
        text(&o)
    );
}

#[test]
fn demo_without_database_url_starts_and_removes_an_embedded_cluster() {
    let o = pgprovider(&["demo", "--ops", "200"], None);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        err.contains("starting a throwaway PostgreSQL cluster"),
        "{err}"
    );
    assert!(out.contains("embedded throwaway cluster"), "{out}");
    let port = out
        .split("node 127.0.0.1:")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    // Nothing listens there any more: the embedded cluster is gone.
    assert!(std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err());
}

#[test]
fn demo_rejects_bad_input_without_panicking() {
    let cases: &[(&[&str], Option<&str>, i32, &str)] = &[
        (
            &["demo", "--url", "postgres://h:0/x?pool_max_sise=2"],
            None,
            2,
            "did you mean pool_max_size?",
        ),
        (
            &["demo", "--url", "mysql://x"],
            None,
            2,
            "start it with postgres://",
        ),
        (
            &["demo", "--driver", "nope", "--url", "postgres://x"],
            None,
            2,
            "registered drivers: diesel, sqlx, tokio-postgres",
        ),
        (&["demo", "--ops", "0"], None, 2, "at least 1"),
        (
            &["demo", "--url", "postgres://postgres@127.0.0.1:1/x"],
            None,
            1,
            "Connection refused",
        ),
    ];
    let missing_db = format!("{}_no_such_db_pgprovider", shared_url());
    let cases: Vec<_> = cases
        .iter()
        .cloned()
        .chain([(&["demo"][..], Some(missing_db.as_str()), 1, "3D000")])
        .collect();
    for (args, env, code, needle) in &cases {
        let o = pgprovider(args, *env);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {out}\n{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_no_panic(&err);
    }
}

#[test]
fn health_of_a_single_node() {
    let o = pgprovider(&["health", "--url", &shared_url()], None);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains(" up ") && out.contains("primary"), "{out}");
    // From the environment when --url is absent.
    let o = pgprovider(&["health"], Some(&shared_url()));
    assert!(o.status.success(), "{:?}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_roles_lag_and_down_nodes() {
    let cluster = TestCluster::builder().standbys(1).start().await.unwrap();
    let url = cluster.url();
    let o = pgprovider(&["health", "--url", &url], None);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let lines: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains(&cluster.primary().addr()) && lines[0].contains("primary"),
        "{out}"
    );
    assert!(lines[0].contains("1 streaming standbys"), "{out}");
    assert!(
        lines[1].contains(&cluster.standby(0).addr()) && lines[1].contains("standby"),
        "{out}"
    );
    assert!(lines[1].contains("replay lag"), "{out}");
    let major = pgprovider_testkit::ServerBinaries::find()
        .unwrap()
        .major_version()
        .unwrap();
    assert!(
        lines[0].contains(&format!(" {major}.")),
        "server version shown: {out}"
    );

    cluster.standby(0).stop().await.unwrap();
    let o = pgprovider(&["health", "--url", &url], None);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(out.lines().nth(2).unwrap().contains("down"), "{out}");
    assert_no_panic(&err);
}

#[test]
fn health_rejects_bad_urls() {
    let o = pgprovider(
        &[
            "health",
            "--url",
            "postgres://a,b/x?port=1,2,3&sslmode=bogus",
        ],
        None,
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("invalid configuration (2 problems)"), "{err}");
    assert_no_panic(&err);
}

#[test]
fn bench_writes_every_workload_and_contender_to_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    let o = pgprovider(
        &[
            "bench",
            "--duration",
            "200ms",
            "--warmup",
            "50ms",
            "--rounds",
            "2",
            "--tasks",
            "16",
            "--connections",
            "2",
            "--json",
            out.to_str().unwrap(),
        ],
        Some(&shared_url()),
    );
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert_no_panic(&stderr);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let w = &v["workloads"];
    for (workload, contenders) in [
        (
            "select1",
            &[
                "pgprovider",
                "pgprovider_sqlx",
                "pgprovider_diesel",
                "pgprovider_mux",
                "raw",
                "raw_pipelined",
            ][..],
        ),
        (
            "point_select",
            &[
                "pgprovider",
                "pgprovider_sqlx",
                "pgprovider_diesel",
                "pgprovider_mux",
                "raw",
                "raw_pipelined",
            ][..],
        ),
        (
            "write_tx",
            &["pgprovider", "pgprovider_sqlx", "pgprovider_diesel", "raw"][..],
        ),
        (
            "checkout",
            &["pgprovider", "pgprovider_sqlx", "pgprovider_diesel"][..],
        ),
        (
            "tasks_1000",
            &[
                "pgprovider",
                "pgprovider_sqlx",
                "pgprovider_diesel",
                "pgprovider_mux",
                "raw_pipelined",
            ][..],
        ),
    ] {
        for c in contenders {
            let r = &w[workload][c];
            assert!(
                r["ops_per_sec"].as_f64().unwrap() > 0.0,
                "{workload}/{c}: {r}"
            );
            for key in ["p50_us", "p99_us", "p999_us"] {
                assert!(r[key].as_f64().unwrap() > 0.0, "{workload}/{c}/{key}");
            }
            assert_eq!(r["rounds_ops_per_sec"].as_array().unwrap().len(), 2);
        }
    }
    assert_eq!(w["tasks_1000"]["pgprovider"]["tasks"], 1000);
    assert_eq!(w["checkout"]["pgprovider"]["tasks"], 1);
    assert!(v["ratios"]["select1"]["pgprovider/raw"].as_f64().unwrap() > 0.0);
    assert!(
        v["ratios"]["select1"]["pgprovider/pgprovider_sqlx"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(stdout.contains("pgprovider/pgprovider_mux"), "{stdout}");
    let accounts = stdout.contains("point_select");
    assert!(accounts);
}

#[test]
fn bench_rejects_bad_input() {
    for (args, want) in [
        (
            &["bench", "--workloads", "selec1"][..],
            "unknown workload \"selec1\"",
        ),
        (
            &["bench", "--contenders", "hikari"][..],
            "unknown contender \"hikari\"",
        ),
        (&["bench", "--rounds", "0"][..], "must be above zero"),
        (
            &["bench", "--deadlines", "1ms", "--workloads", "select1"][..],
            "leave out --workloads",
        ),
        (&["bench", "--deadlines", "0ms"][..], "must be above zero"),
        (&["bench", "--duration", "3x"][..], "not a duration"),
    ] {
        let o = pgprovider(args, Some("postgres://postgres@127.0.0.1:1/none"));
        let (_, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert_no_panic(&stderr);
    }
    if !cfg!(feature = "peers") {
        let o = pgprovider(&["bench", "--contenders", "sqlx"], Some("postgres://h/x"));
        assert!(text(&o).1.contains("--features peers"));
    }
}

#[test]
fn migrate_up_status_down_and_tenants() {
    let url = shared_url();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    std::fs::write(
        dir.path().join("1_cli_mig_t.sql"),
        "CREATE TABLE cli_mig_t (id int)",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("1_cli_mig_t.down.sql"),
        "DROP TABLE cli_mig_t",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("2_cli_mig_u.sql"),
        "CREATE TABLE cli_mig_u (id int)",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("2_cli_mig_u.down.sql"),
        "DROP TABLE cli_mig_u",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut all = vec![
            "migrate",
            "--url",
            &url,
            "--dir",
            d,
            "--table",
            "cli_mig_history",
        ];
        all.extend_from_slice(args);
        let o = pgprovider(&all, None);
        let (out, err) = text(&o);
        assert_no_panic(&err);
        (o.status.code(), out, err)
    };
    // Leftovers of an earlier failed run.
    run(&["down", "--to", "0"]);
    drop_schemas(&url, &["cli_mig_a", "cli_mig_b"]);

    let (code, out, _) = run(&["status"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.matches("pending").count(), 2, "{out}");
    let (code, out, err) = run(&["up", "--to", "1"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("applied 1_cli_mig_t"), "{out}");
    let (_, out, _) = run(&["up"]);
    assert!(
        out.contains("applied 2_cli_mig_u") && out.contains("1 migration(s) applied"),
        "{out}"
    );
    let (_, out, _) = run(&["up"]);
    assert!(out.contains("0 migration(s) applied"), "{out}");
    // An applied file edited: status says so and fails.
    std::fs::write(
        dir.path().join("1_cli_mig_t.sql"),
        "CREATE TABLE cli_mig_t (id bigint)",
    )
    .unwrap();
    let (code, out, err) = run(&["status"]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("CHANGED") && err.contains("changed"),
        "{out}{err}"
    );
    let (code, _, err) = run(&["up"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("1_cli_mig_t"), "{err}");
    std::fs::write(
        dir.path().join("1_cli_mig_t.sql"),
        "CREATE TABLE cli_mig_t (id int)",
    )
    .unwrap();
    let (code, out, _) = run(&["down", "--to", "0"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("2 migration(s) reverted"), "{out}");

    // Tenants: a list and a pattern.
    let (code, out, err) = run(&["--tenants", "cli_mig_a,cli_mig_b", "up"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("2 tenant(s) migrated (4 migration(s) applied), 0 failed"),
        "{out}"
    );
    // A tenant that fails: reported, the others go on, exit 1.
    drop_schemas(&url, &["cli_mig_c"]);
    create_conflict(&url);
    let (code, out, _) = run(&["--tenants", "cli_mig_a,cli_mig_c", "up"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("1 tenant(s) migrated (0 migration(s) applied), 1 failed"),
        "{out}"
    );
    assert!(
        out.contains("cli_mig_c: migration 1_cli_mig_t.sql failed"),
        "{out}"
    );
    assert!(out.contains("fix the failed tenants"), "{out}");
    drop_schemas(&url, &["cli_mig_c"]);
    let (code, out, _) = run(&["--tenant-pattern", "cli_mig_%", "status"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("tenant cli_mig_a:") && out.contains("tenant cli_mig_b:"),
        "{out}"
    );
    let (code, _, err) = run(&["--tenants", "cli_mig_a", "down", "--to", "0"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("only `up`"), "{err}");
    let (code, _, err) = run(&["--tenant-pattern", "no_such_%", "up"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no schema matches"), "{err}");
    let o = pgprovider(
        &["migrate", "--url", &url, "--dir", "/nonexistent", "status"],
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    drop_schemas(&url, &["cli_mig_a", "cli_mig_b"]);
}

fn create_conflict(url: &str) {
    sql(
        url,
        "CREATE SCHEMA cli_mig_c; CREATE TABLE cli_mig_c.cli_mig_t (x int)".to_owned(),
    );
}

fn sql(url: &str, statement: String) {
    let url = url.to_owned();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                client.batch_execute(&statement).await.unwrap();
            })
    })
    .join()
    .unwrap();
}

fn drop_schemas(url: &str, schemas: &[&str]) {
    for s in schemas {
        sql(url, format!("DROP SCHEMA IF EXISTS {s} CASCADE"));
    }
}

#[test]
fn listen_prints_notifications_as_json_lines() {
    use std::io::{BufRead, BufReader};
    let url = shared_url();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgprovider"))
        .args(["listen", "--url", &url, "--count", "2", "cli chan"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("listening on cli chan"), "{line}");
    for payload in ["one", "two \"quoted\""] {
        let o = pgprovider(&["notify", "--url", &url, "cli chan", payload], None);
        assert!(o.status.success(), "{:?}", text(&o));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["channel"], "cli chan");
    assert_eq!(lines[0]["payload"], "one");
    assert_eq!(lines[1]["payload"], "two \"quoted\"");
    assert!(lines[1]["process_id"].as_i64().unwrap() > 0);

    let big = "x".repeat(8000);
    let o = pgprovider(&["notify", "--url", &url, "jobs", &big], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("at most 7999"), "{:?}", text(&o));
    let o = pgprovider(&["listen", "--url", &url, &"c".repeat(64)], None);
    assert_eq!(o.status.code(), Some(2));
}

/// `pgprovider drill KIND ARGS… --json FILE`: the figures, after checking it exited 0
/// without a panic.
fn drill(kind: &str, args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("drill.json");
    let mut all = vec!["drill", kind, "--json", out.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = pgprovider(&all, None);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert_no_panic(&stderr);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for key in [
        "new_primary_writable_ms",
        "recovery_ms",
        "write_gap_ms",
        "lost_writes",
        "phantoms",
        "duplicates",
        "failed_writes",
        "unknown_writes",
        "failed_reads",
        "acked_writes",
    ] {
        // Several runs give percentiles of the times.
        let key = match (v.get("runs"), key.ends_with("_ms")) {
            (Some(_), true) => format!("{key}_p99"),
            _ => key.to_owned(),
        };
        assert!(!v[&key].is_null(), "{key} missing: {v}");
    }
    assert_eq!(v["lost_writes"], 0, "{v}");
    assert_eq!(v["phantoms"], 0, "{v}");
    assert_eq!(v["duplicates"], 0, "{v}");
    assert_eq!(v["failed_but_present"], 0, "{v}");
    v
}

#[test]
fn the_failover_drill_loses_no_acknowledged_write() {
    let v = drill("failover", &[]);
    assert_eq!(v["mode"], "embedded", "{v}");
    assert!(v["acked_writes"].as_u64().unwrap() >= 400, "{v}");
    // A generous bound that catches a hang, not a performance target.
    assert!(v["recovery_ms"].as_f64().unwrap() < 20_000.0, "{v}");
}

#[test]
fn a_switchover_fails_no_write_and_no_read() {
    let v = drill("switchover", &["--runs", "2", "--acks", "100"]);
    assert_eq!(v["runs"], 2, "{v}");
    assert_eq!(v["failed_writes"], 0, "{v}");
    assert_eq!(v["failed_reads"], 0, "{v}");
    assert!(v["recovery_ms_p99"].as_f64().is_some(), "{v}");
    assert_eq!(v["each"][0]["drill"], "switchover", "{v}");
}

#[test]
fn drills_run_on_a_cluster_managed_by_patroni() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cluster = rt
        .block_on(pgprovider_testkit::PatroniCluster::start(2))
        .unwrap();
    let url = cluster.url();
    // A planned switchover by Patroni: writes wait for the new leader.
    let v = drill(
        "switchover",
        &[
            "--url",
            &url,
            "--fault-command",
            &cluster.script("switchover.sh"),
            // The old leader is back as the synchronous standby before the next drill.
            "--heal-command",
            &cluster.script("heal.sh"),
            "--acks",
            "100",
        ],
    );
    assert_eq!(v["mode"], "external", "{v}");
    assert_eq!(v["failed_writes"], 0, "{v}");
    assert_eq!(v["failed_reads"], 0, "{v}");
    assert_eq!(v["fault_command_status"], "exit status: 0", "{v}");
    // The leader's machine dies: Patroni's leader key expires, the replica takes over; the
    // heal command brings the old leader back as a replica.
    let v = drill(
        "failover",
        &[
            "--url",
            &url,
            "--fault-command",
            &cluster.script("kill-leader.sh"),
            "--heal-command",
            &cluster.script("heal.sh"),
            "--acks",
            "100",
        ],
    );
    assert!(v["new_primary_writable_ms"].as_f64().unwrap() > 0.0, "{v}");
    assert_ne!(v["primary_before"], serde_json::Value::Null, "{v}");
    // The drill's table is gone from the user's cluster.
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'pgprovider_drill_%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
    });
}

/// The CI version of the soak: two minutes of mixed load with every kind of fault.
#[test]
fn a_two_minute_soak_keeps_every_write_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("soak.json");
    let o = pgprovider(
        &[
            "soak",
            "--duration",
            "2m",
            "--fault-every",
            "3s",
            "--max-growth-mib",
            "24",
            "--json",
            out.to_str().unwrap(),
        ],
        None,
    );
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert_no_panic(&stderr);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["missing_writes"], 0, "{v}");
    assert_eq!(v["errors_outside_faults"], 0, "{v}");
    assert_eq!(v["leftover_server_connections"], 0, "{v}");
    assert!(v["acked_writes_checked"].as_u64().unwrap() > 1000, "{v}");
    // Every kind of fault was injected (a soak without faults proves nothing).
    for kind in [
        "latency",
        "reset",
        "blackhole",
        "refuse",
        "pause",
        "terminate",
    ] {
        assert!(
            v["faults_injected"][kind].as_u64().unwrap_or(0) >= 1,
            "{kind}: {v}"
        );
    }
    assert_eq!(
        v["rss_growth_bound_kib"],
        24 * 1024,
        "--max-growth-mib: {v}"
    );
    assert!(
        v["rss_growth_kib"].as_i64().unwrap() <= v["rss_growth_bound_kib"].as_i64().unwrap(),
        "{v}"
    );
}

/// The figures of 10 switchovers and 10 leader kills on a Patroni cluster, for the docs:
/// `PGPROVIDER_DRILL_OUT=dir cargo test -p pgprovider-cli --test cli -- --ignored patroni_drill_figures`.
#[test]
#[ignore = "takes minutes; run by hand for the figures in docs/RELIABILITY.md"]
fn patroni_drill_figures() {
    let out = std::path::PathBuf::from(std::env::var("PGPROVIDER_DRILL_OUT").unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cluster = rt
        .block_on(pgprovider_testkit::PatroniCluster::start(2))
        .unwrap();
    let url = cluster.url();
    let heal = cluster.script("heal.sh");
    for (kind, fault, file) in [
        (
            "switchover",
            cluster.script("switchover.sh"),
            "patroni-switchover.json",
        ),
        (
            "failover",
            cluster.script("kill-leader.sh"),
            "patroni-failover.json",
        ),
    ] {
        let path = out.join(file);
        let o = pgprovider(
            &[
                "drill",
                kind,
                "--url",
                &url,
                "--fault-command",
                &fault,
                "--heal-command",
                &heal,
                "--runs",
                "10",
                "--json",
                path.to_str().unwrap(),
            ],
            None,
        );
        let (stdout, stderr) = text(&o);
        assert!(o.status.success(), "{stdout}\n{stderr}");
    }
}

#[test]
fn drill_options_are_checked() {
    for args in [
        &["drill", "failover", "--runs", "0"][..],
        &["drill", "failover", "--url", "postgres://127.0.0.1/x"],
        &["drill", "failover", "--fault-command", "true"],
        &[
            "drill",
            "switchover",
            "--url",
            "postgres://127.0.0.1/x",
            "--fault-command",
            "true",
            "--async",
        ],
        &["drill", "failover", "--failover-timeout", "3 days"],
        &["soak", "--duration", "forever"],
    ] {
        let o = pgprovider(args, None);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {:?}", text(&o));
    }
}

/// `GET path` over a real socket: status code and body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out[9..12].parse().unwrap();
    (code, out.split_once("\r\n\r\n").unwrap().1.to_owned())
}

/// `pgprovider serve --url URL --listen 127.0.0.1:0 EXTRA…`, its address and first line.
fn serve(url: &str, extra: &[&str]) -> (std::process::Child, String, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgprovider"))
        .args(["serve", "--url", url, "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    (child, addr, line)
}

#[test]
fn serve_answers_health_readiness_and_metrics() {
    let url = shared_url();
    let (mut child, addr, _) = serve(&url, &[]);
    assert_eq!(http_get(&addr, "/healthz"), (200, "ok\n".to_owned()));
    // Ready once the monitor has found the primary.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let body = loop {
        let (code, body) = http_get(&addr, "/readyz");
        if code == 200 {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "{code} {body}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["status"], "ok");
    assert_eq!(report["nodes"][0]["role"], "primary");
    let (code, metrics) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("pgprovider_pool_max_size{"), "{metrics}");
    for gauge in [
        "process_resident_memory_bytes ",
        "process_cpu_seconds ",
        "process_open_fds ",
        "process_threads ",
        "tokio_workers ",
        "tokio_alive_tasks ",
    ] {
        assert!(metrics.contains(gauge), "no {gauge}in {metrics}");
    }
    // Not asked for: no profile endpoint.
    assert_eq!(http_get(&addr, "/debug/pprof/profile?seconds=1").0, 404);
    let _ = child.kill();
    let _ = child.wait();
    let o = pgprovider(&["serve", "--url", &url, "--listen", "nowhere"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--listen nowhere"), "{:?}", text(&o));
}

/// `serve --profiling`: a CPU profile, taken while requests keep the process busy; a second
/// one at the same time is refused, and so is a length out of bounds.
#[cfg(feature = "profiling")]
#[test]
fn serve_profiling_returns_folded_stacks_one_at_a_time() {
    let (child, addr, line) = serve(&shared_url(), &["--profiling"]);
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(child);
    assert!(line.contains("/debug/pprof/profile"), "{line}");
    assert_eq!(http_get(&addr, "/debug/pprof/profile?seconds=0").0, 400);
    // Two at once: one runs, the other is refused at once.
    let start = |addr: &str| {
        let addr = addr.to_owned();
        std::thread::spawn(move || http_get(&addr, "/debug/pprof/profile?seconds=2"))
    };
    let (a, b) = (start(&addr), start(&addr));
    // Work for the profiler to see, for as long as it samples (from two threads: on a busy
    // machine one serial client leaves the server too idle for a 99 Hz CPU sampler).
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let until = std::time::Instant::now() + std::time::Duration::from_millis(2500);
                while std::time::Instant::now() < until {
                    http_get(&addr, "/metrics");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    let mut codes = [a.0, b.0];
    codes.sort_unstable();
    assert_eq!(codes, [200, 409], "{a:?} {b:?}");
    let folded = if a.0 == 200 { a.1 } else { b.1 };
    for l in folded.lines() {
        let (stack, count) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l}"));
        assert!(count.parse::<u64>().unwrap() > 0, "{l}");
        assert!(!stack.is_empty(), "{l}");
    }
    assert!(
        folded.contains("pgprovider") || folded.contains("tokio") || folded.contains("hyper"),
        "no frame of this program in {folded:?}"
    );
}

#[test]
fn bench_deadlines_reports_each_deadline_pool_and_contender_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    let o = pgprovider(
        &[
            "bench",
            "--deadlines",
            "5ms,50ms",
            "--duration",
            "200ms",
            "--rounds",
            "1",
            "--tasks",
            "8",
            "--connections",
            "2",
            "--contenders",
            "pgprovider",
            "--json",
            out.to_str().unwrap(),
        ],
        Some(&shared_url()),
    );
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert_no_panic(&stderr);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let rows = v["deadlines"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "2 deadlines x warm/cold x 1 contender: {v}");
    for r in rows {
        assert_eq!(r["contender"], "pgprovider", "{r}");
        assert_eq!(r["open_at_end"], 2, "the pool kept its connections: {r}");
    }
    let slow = rows
        .iter()
        .find(|r| r["deadline_ms"] == 50.0 && r["pool"] == "warm")
        .unwrap();
    assert!(slow["successes"].as_u64().unwrap() > 0, "{slow}");
}

/// `bench --many N`, `--autoscale` and the pipelined contender with `--pipeline-depth`: each
/// reports its figures, and bad combinations are refused with exit code 2.
#[test]
fn bench_many_autoscale_and_pipelined_report_their_figures() {
    let dir = tempfile::tempdir().unwrap();
    let url = shared_url();
    let run = |args: &[&str], file: &str| {
        let out = dir.path().join(file);
        let mut all = vec!["bench"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--json", out.to_str().unwrap()]);
        let o = pgprovider(&all, Some(&url));
        let (stdout, stderr) = text(&o);
        assert!(o.status.success(), "{stdout}\n{stderr}");
        assert_no_panic(&stderr);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        v
    };
    // 20 connections: the shared server's max_connections (100) holds 2 × 20 + 50.
    let many = run(
        &["--many", "20", "--duration", "300ms", "--warmup", "100ms"],
        "many.json",
    );
    let m = &many["many"];
    assert_eq!(m["connections"], 20, "{m}");
    assert!(m["ops_per_sec"].as_f64().unwrap() > 0.0, "{m}");
    assert!(m["pool_kib_per_connection"].as_f64().unwrap() >= 0.0, "{m}");
    assert!(m["raw_ops_per_sec"].as_f64().unwrap() > 0.0, "{m}");

    let scale = run(&["--autoscale", "--connections", "2"], "scale.json");
    let a = &scale["autoscale"];
    assert_eq!(a["size_before"], 2, "{a}");
    assert!(
        a["size_after_step"].as_u64().unwrap() > 2,
        "did not grow: {a}"
    );
    assert!(
        a["size_after_step"].as_u64().unwrap() <= 8,
        "past the maximum: {a}"
    );

    let piped = run(
        &[
            "--contenders",
            "pgprovider_pipelined",
            "--workloads",
            "slow_mix",
            "--pipeline-depth",
            "4",
            "--connections",
            "2",
            "--tasks",
            "16",
            "--rounds",
            "1",
            "--duration",
            "300ms",
            "--warmup",
            "100ms",
        ],
        "piped.json",
    );
    assert!(
        piped.to_string().contains("pgprovider_pipelined"),
        "{piped}"
    );

    for bad in [
        &["bench", "--many", "0"][..],
        &["bench", "--many", "5", "--autoscale"][..],
        &["bench", "--autoscale", "--workloads", "select1"][..],
    ] {
        let o = pgprovider(bad, Some(&url));
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {:?}", text(&o));
    }
}

/// Runs `pgprovider` off the async runtime (its clients keep sessions open meanwhile).
async fn pgprovider_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pgprovider(&args, None)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_reports_every_kind_of_finding_and_exits_by_threshold() {
    let cluster = TestCluster::builder()
        .setting("max_prepared_transactions", "2")
        .start()
        .await
        .unwrap();
    let base = cluster.primary().url();
    let url = format!("{base}?application_name=inspected");
    let connect = |app: &str| {
        let u = format!("{base}?application_name={app}");
        async move {
            let (c, conn) = tokio_postgres::connect(&u, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let pid: i32 = c
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap()
                .get(0);
            (c, pid)
        }
    };
    let (admin, _) = connect("admin").await;
    // One statement per call: a multi-statement string is one implicit transaction, which
    // PREPARE TRANSACTION would take along.
    for sql in [
        "CREATE TABLE t (id int PRIMARY KEY)",
        "INSERT INTO t VALUES (1)",
        "BEGIN",
        "INSERT INTO t VALUES (2)",
        "PREPARE TRANSACTION 'orphan'",
        "SELECT pg_create_physical_replication_slot('idle_slot', true)",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    let (holder, holder_pid) = connect("inspected").await;
    holder
        .batch_execute("BEGIN; UPDATE t SET id = 1 WHERE id = 1")
        .await
        .unwrap();
    let (waiter, waiter_pid) = connect("someone-else").await;
    let waiting = tokio::spawn(async move {
        waiter
            .execute("UPDATE t SET id = 1 WHERE id = 1", &[])
            .await
    });
    // The waiter is seen waiting once the server says so.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
            &[&waiter_pid],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let args = |extra: &[&str]| {
        let mut v: Vec<String> = ["inspect", "--url", &url]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let zero = [
        "--json",
        "--idle-in-transaction",
        "0s",
        "--blocked",
        "0s",
        "--long-transaction",
        "0s",
        "--prepared-transaction",
        "0s",
        "--wraparound-age",
        "0",
        "--long-statement",
        "0s",
        "--connections-ratio",
        "0",
    ];
    let o = pgprovider_async(args(&zero)).await;
    let (out, err) = text(&o);
    assert_no_panic(&err);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["clear"], false);
    let b = &j["blocking"][0];
    assert_eq!(
        (b["blocked_pid"].as_i64(), b["blocking_pid"].as_i64()),
        (Some(waiter_pid.into()), Some(holder_pid.into())),
        "{j:#}"
    );
    assert!(
        b["wait_ms"].as_u64().is_some() && b["blocking_ours"] == true,
        "{j:#}"
    );
    let idle = j["idle_in_transaction"].as_array().unwrap();
    assert!(
        idle.iter()
            .any(|s| s["pid"] == holder_pid && s["idle_ms"].is_u64() && s["ours"] == true),
        "{j:#}"
    );
    let long = j["long_transactions"].as_array().unwrap();
    assert!(
        long.iter()
            .any(|s| s["pid"] == waiter_pid && s["age_ms"].is_u64()),
        "{j:#}"
    );
    assert!(j["deadlocks"]["server_total"].is_u64(), "{j:#}");
    assert!(j["connections"]["used"].as_u64().unwrap() >= 3, "{j:#}");
    assert!(j["connections"]["max"].as_u64().unwrap() >= 10, "{j:#}");
    assert_eq!(j["prepared_transactions"][0]["gid"], "orphan", "{j:#}");
    assert_eq!(j["replication_slots"][0]["name"], "idle_slot", "{j:#}");
    assert_eq!(j["replication_slots"][0]["active"], false, "{j:#}");
    assert_eq!(j["wraparound"]["over"], true, "{j:#}");
    assert_eq!(j["probe"]["queries"], 9, "{j:#}");
    let active = j["long_statements"].as_array().unwrap();
    assert!(active.iter().any(|s| s["pid"] == waiter_pid), "{j:#}");
    assert_eq!(j["connections"]["over"], true, "{j:#}");
    assert_eq!(j["connections"]["ours"], 1, "{j:#}");
    // Whose sessions are ours is --application's to say.
    let mut other = zero.to_vec();
    other.extend(["--application", "nobody"]);
    let o = pgprovider_async(args(&other)).await;
    let j: serde_json::Value = serde_json::from_str(text(&o).0.trim()).unwrap();
    assert_eq!(j["connections"]["ours"], 0, "{j:#}");
    assert_eq!(j["blocking"][0]["blocking_ours"], false, "{j:#}");

    // Tables, with --watch: two refreshes, each a screen.
    let o = pgprovider_async(args(&[
        "--watch",
        "--count",
        "2",
        "--interval",
        "100ms",
        "--idle-in-transaction",
        "0s",
        "--prepared-transaction",
        "0s",
    ]))
    .await;
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert_eq!(out.matches("pgprovider inspect, ").count(), 2, "{out}");
    assert!(out.contains("IDLE IN TRANSACTION"), "{out}");
    assert!(out.contains(&holder_pid.to_string()), "{out}");
    assert!(out.contains("orphan") && out.contains("idle_slot"), "{out}");

    // Cleared: exit 0.
    drop(holder);
    waiting.await.unwrap().unwrap();
    admin
        .batch_execute("COMMIT PREPARED 'orphan'")
        .await
        .unwrap();
    admin
        .batch_execute("SELECT pg_drop_replication_slot('idle_slot')")
        .await
        .unwrap();
    let o = pgprovider_async(args(&[])).await;
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("nothing over a threshold"), "{out}");
    // A node that cannot be reached is a failure, said as such.
    let o = pgprovider_async(vec![
        "inspect".into(),
        "--url".into(),
        "postgres://postgres@127.0.0.1:1/x?connect_timeout=1".into(),
        "--json".into(),
    ])
    .await;
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["clear"], false);
    assert!(j["error"].as_str().unwrap().contains("127.0.0.1:1"), "{j}");
}
