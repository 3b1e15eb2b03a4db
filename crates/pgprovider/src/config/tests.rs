//! Configuration tests: URL, environment, builder and validation. (This file is long by
//! choice: one module sharing fixtures.)

use super::*;
use pgprovider_core::{Host, SslMode};
use std::io::Write;
use std::time::Duration;

fn ok(url: &str) -> Config {
    Config::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"))
}

fn err(url: &str) -> ConfigError {
    Config::from_url(url).expect_err(url)
}

#[test]
fn defaults() {
    let c = Config::builder().build().unwrap();
    assert_eq!(c.nodes(), &[Node::new(Host::Tcp("localhost".into()), 5432)]);
    assert_eq!(c.user(), "postgres");
    assert_eq!(c.dbname(), "postgres");
    assert_eq!(c.ssl_mode(), SslMode::Prefer);
    assert_eq!(c.target_session_attrs(), TargetSessionAttrs::Any);
    assert_eq!(c.load_balance_hosts(), LoadBalanceHosts::Disable);
    assert_eq!(c.connect_timeout(), Some(Duration::from_secs(10)));
    assert_eq!(c.pool(), &PoolConfig::default());
    assert_eq!(c.pool().max_size(), 10);
    assert_eq!(c.pool().min_idle(), 0);
    assert_eq!(c.pool().acquire_timeout(), Duration::from_secs(30));
    assert_eq!(c.pool().idle_timeout(), Some(Duration::from_secs(600)));
    assert_eq!(c.pool().max_lifetime(), Some(Duration::from_secs(1800)));
    assert_eq!(
        c.pool().validation(),
        ValidationPolicy::WhenIdleFor(Duration::from_secs(30))
    );
    assert_eq!(c.pool().leak_detection_threshold(), None);
    assert_eq!(c.password_source(), &PasswordSource::None);
    assert!(c.application_name().is_none() && c.options().is_none() && c.passfile().is_none());
}

#[test]
fn builder_sets_everything() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f.pem");
    std::fs::write(&f, "x").unwrap();
    let c = Config::builder()
        .with_node("db1", 5433)
        .with_host("db2")
        .with_port(6000)
        .with_user("app")
        .with_password("pw")
        .with_dbname("orders")
        .with_application_name("svc")
        .with_connect_timeout(Duration::from_secs(3))
        .with_options("-c statement_timeout=5s")
        .with_ssl_mode(SslMode::VerifyFull)
        .with_ssl_root_cert(&f)
        .with_ssl_client_cert(&f, &f)
        .with_target_session_attrs(TargetSessionAttrs::ReadWrite)
        .with_load_balance_hosts(LoadBalanceHosts::Random)
        .with_max_connections(20)
        .with_min_idle(2)
        .with_acquire_timeout(Duration::from_secs(1))
        .with_idle_timeout(None)
        .with_max_lifetime(Some(Duration::from_secs(60)))
        .with_validation(ValidationPolicy::Always)
        .with_leak_detection_threshold(Some(Duration::from_secs(5)))
        .with_max_waiters(Some(50))
        .with_pipeline(Some(12))
        .with_passfile(&f)
        .build()
        .unwrap();
    let nodes: Vec<String> = c.nodes().iter().map(|n| n.to_string()).collect();
    assert_eq!(nodes, ["db1:5433", "db2:6000"]);
    assert_eq!((c.user(), c.dbname()), ("app", "orders"));
    assert_eq!(c.application_name(), Some("svc"));
    assert_eq!(c.options(), Some("-c statement_timeout=5s"));
    assert_eq!(c.connect_timeout(), Some(Duration::from_secs(3)));
    assert_eq!(c.tls().mode, SslMode::VerifyFull);
    assert_eq!(c.tls().client_key.as_deref(), Some(f.as_path()));
    assert_eq!(c.target_session_attrs(), TargetSessionAttrs::ReadWrite);
    assert_eq!(c.load_balance_hosts(), LoadBalanceHosts::Random);
    let p = c.pool();
    assert_eq!((p.max_size(), p.min_idle()), (20, 2));
    assert_eq!(p.idle_timeout(), None);
    assert_eq!(p.max_lifetime(), Some(Duration::from_secs(60)));
    assert_eq!(p.validation(), ValidationPolicy::Always);
    assert_eq!(p.leak_detection_threshold(), Some(Duration::from_secs(5)));
    assert_eq!(p.max_waiters(), Some(50));
    assert_eq!(p.pipeline(), Some(12));
    assert_eq!(c.passfile(), Some(f.as_path()));
    assert_eq!(
        c.redacted_url(),
        "postgres://app:***@db1:5433,db2:6000/orders"
    );
}

#[test]
fn url_hosts_ports_and_sockets() {
    let c = ok("postgresql://u:p%40ss@h1:5432,h2:5433,[::1]:5434,[fe80::1]/db");
    let nodes: Vec<String> = c.nodes().iter().map(|n| n.to_string()).collect();
    assert_eq!(
        nodes,
        ["h1:5432", "h2:5433", "[::1]:5434", "[fe80::1]:5432"]
    );
    assert_eq!(c.password_source(), &PasswordSource::Literal("p@ss".into()));
    assert_eq!(c.dbname(), "db");

    let c = ok("postgres://%2Fvar%2Frun%2Fpostgresql/db");
    assert_eq!(
        c.nodes()[0].host(),
        &Host::Unix("/var/run/postgresql".into())
    );

    let c = ok("postgres:///db?host=/tmp,/run&port=6432");
    assert_eq!(c.nodes()[0], Node::new(Host::Unix("/tmp".into()), 6432));
    assert_eq!(c.nodes()[1], Node::new(Host::Unix("/run".into()), 6432));

    let c = ok("postgres://a,b/db?port=1,2");
    assert_eq!((c.nodes()[0].port(), c.nodes()[1].port()), (1, 2));

    let c = ok("postgres://");
    assert_eq!(c.nodes()[0].to_string(), "localhost:5432");

    let c = ok("postgres://:7000/x");
    assert_eq!(c.nodes()[0].to_string(), "localhost:7000");
}

#[test]
fn every_url_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    std::fs::write(&f, "secret\n").unwrap();
    let f = f.display().to_string();
    type Check = Box<dyn Fn(&Config) -> bool>;
    let cases: Vec<(String, Check)> = vec![
        (
            "host=x".into(),
            Box::new(|c| c.nodes()[0].host() == &Host::Tcp("x".into())),
        ),
        (
            "port=1234".into(),
            Box::new(|c| c.nodes()[0].port() == 1234),
        ),
        ("user=bob".into(), Box::new(|c| c.user() == "bob")),
        (
            "password=pw".into(),
            Box::new(|c| c.password_source() == &PasswordSource::Literal("pw".into())),
        ),
        ("dbname=d".into(), Box::new(|c| c.dbname() == "d")),
        (
            format!("passfile={f}"),
            Box::new(|c| c.passfile().is_some()),
        ),
        (
            format!("password_file={f}"),
            Box::new(|c| matches!(c.password_source(), PasswordSource::File(_))),
        ),
        (
            "password_command=echo%20pw".into(),
            Box::new(|c| c.password_source() == &PasswordSource::Command("echo pw".into())),
        ),
        (
            "sslmode=verify-ca&sslrootcert=system".into(),
            Box::new(|c| c.ssl_mode() == SslMode::VerifyCa),
        ),
        (
            format!("sslrootcert={f}"),
            Box::new(|c| c.tls().root_cert.is_some()),
        ),
        (
            format!("sslcert={f}&sslkey={f}"),
            Box::new(|c| c.tls().client_cert.is_some() && c.tls().client_key.is_some()),
        ),
        (
            "target_session_attrs=prefer-standby".into(),
            Box::new(|c| c.target_session_attrs() == TargetSessionAttrs::PreferStandby),
        ),
        (
            "load_balance_hosts=random".into(),
            Box::new(|c| c.load_balance_hosts() == LoadBalanceHosts::Random),
        ),
        (
            "application_name=my%20app".into(),
            Box::new(|c| c.application_name() == Some("my app")),
        ),
        (
            "connect_timeout=7".into(),
            Box::new(|c| c.connect_timeout() == Some(Duration::from_secs(7))),
        ),
        (
            "connect_timeout=250ms".into(),
            Box::new(|c| c.connect_timeout() == Some(Duration::from_millis(250))),
        ),
        (
            "options=-c%20search_path%3Dx".into(),
            Box::new(|c| c.options() == Some("-c search_path=x")),
        ),
        (
            "pool_max_size=3".into(),
            Box::new(|c| c.pool().max_size() == 3),
        ),
        (
            "pool_min_idle=2".into(),
            Box::new(|c| c.pool().min_idle() == 2),
        ),
        (
            "pool_acquire_timeout=2m".into(),
            Box::new(|c| c.pool().acquire_timeout() == Duration::from_secs(120)),
        ),
        (
            "pool_idle_timeout=off".into(),
            Box::new(|c| c.pool().idle_timeout().is_none()),
        ),
        (
            "pool_idle_timeout=1h".into(),
            Box::new(|c| c.pool().idle_timeout() == Some(Duration::from_secs(3600))),
        ),
        (
            "pool_max_lifetime=none".into(),
            Box::new(|c| c.pool().max_lifetime().is_none()),
        ),
        (
            "pool_max_lifetime=90s".into(),
            Box::new(|c| c.pool().max_lifetime() == Some(Duration::from_secs(90))),
        ),
        (
            "pool_validation=always".into(),
            Box::new(|c| c.pool().validation() == ValidationPolicy::Always),
        ),
        (
            "pool_validation=never".into(),
            Box::new(|c| c.pool().validation() == ValidationPolicy::Never),
        ),
        (
            "pool_validation=5s".into(),
            Box::new(|c| {
                c.pool().validation() == ValidationPolicy::WhenIdleFor(Duration::from_secs(5))
            }),
        ),
        (
            "pool_leak_detection_threshold=30s".into(),
            Box::new(|c| c.pool().leak_detection_threshold() == Some(Duration::from_secs(30))),
        ),
        (
            "pool_max_waiters=7".into(),
            Box::new(|c| c.pool().max_waiters() == Some(7)),
        ),
        (
            "pool_pipeline=16".into(),
            Box::new(|c| c.pool().pipeline() == Some(16)),
        ),
        (
            "pool_autoscale=on".into(),
            Box::new(|c| c.pool().autoscale() == Some(crate::Autoscale::default())),
        ),
        (
            "pool_autoscale=on&pool_autoscale_wait=7ms&pool_autoscale_step=3&pool_autoscale_cooldown=1s&pool_autoscale_idle=9s".into(),
            Box::new(|c| {
                c.pool().autoscale()
                    == Some(
                        crate::Autoscale::new()
                            .with_wait(Duration::from_millis(7))
                            .with_step(3)
                            .with_cooldown(Duration::from_secs(1))
                            .with_idle(Duration::from_secs(9)),
                    )
            }),
        ),
        (
            "statement_cache_capacity=0".into(),
            Box::new(|c| c.statement_cache_capacity() == 0),
        ),
        (
            "query_timeout=250ms".into(),
            Box::new(|c| c.query_timeout() == Some(Duration::from_millis(250))),
        ),
        (
            "statement_timeout=2s&options=-c%20work_mem%3D4MB".into(),
            Box::new(|c| c.statement_timeout() == Some(Duration::from_secs(2))),
        ),
        (
            "pooler=transaction".into(),
            Box::new(|c| {
                c.pooler() == pgprovider_core::PoolerMode::Transaction
                    && c.statement_cache_capacity() == 0
            }),
        ),
    ];
    let mut covered: Vec<&str> = Vec::new();
    for (query, check) in &cases {
        let c = ok(&format!("postgres://h/db?{query}"));
        assert!(check(&c), "{query}: {c:?}");
        for part in query.split('&') {
            covered.push(
                dsn::KEYS
                    .iter()
                    .find(|k| part.starts_with(&format!("{k}=")))
                    .unwrap(),
            );
        }
    }
    for k in dsn::KEYS {
        assert!(covered.contains(k), "key {k} has no test case");
    }
    for (name, attrs) in TargetSessionAttrs::ALL {
        assert_eq!(
            ok(&format!("postgres://h?target_session_attrs={name}")).target_session_attrs(),
            attrs
        );
    }
    for (name, mode) in SslMode::ALL {
        assert_eq!(
            ok(&format!(
                "postgres://h?sslmode={name}{}",
                if name.starts_with("verify") {
                    "&sslrootcert=system"
                } else {
                    ""
                }
            ))
            .ssl_mode(),
            mode
        );
        assert_eq!(mode.as_str(), name);
    }
}

#[test]
fn every_validation_message() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing").display().to_string();
    let cases: &[(&str, &str, &str)] = &[
        ("mysql://h/db", "url", "start it with postgres://"),
        ("localhost:5432", "url", "start it with postgres://"),
        ("postgres://h:0/db", "port", "between 1 and 65535"),
        ("postgres://h:99999/db", "port", "between 1 and 65535"),
        ("postgres://h:abc/db", "port", "not a number"),
        (
            "postgres://a,b/db?port=1,2,3",
            "port",
            "3 ports given for 2 hosts",
        ),
        (
            "postgres://h/db?sslmod=require",
            "sslmod",
            "did you mean sslmode?",
        ),
        (
            "postgres://h/db?frobnicate=1",
            "frobnicate",
            "unknown parameter",
        ),
        (
            "postgres://h/db?sslmode=verify_full",
            "sslmode",
            "did you mean verify-full?",
        ),
        (
            "postgres://h/db?target_session_attrs=rw",
            "target_session_attrs",
            "valid values: any, read-write",
        ),
        (
            "postgres://h/db?load_balance_hosts=yes",
            "load_balance_hosts",
            "valid values: disable, random",
        ),
        (
            "postgres://h/db?connect_timeout=0",
            "connect_timeout",
            "must be positive",
        ),
        (
            "postgres://h/db?connect_timeout=soon",
            "connect_timeout",
            "not a duration",
        ),
        (
            "postgres://h/db?pool_max_size=0",
            "pool_max_size",
            "at least one connection",
        ),
        (
            "postgres://h/db?pool_max_size=many",
            "pool_max_size",
            "not a whole number",
        ),
        (
            "postgres://h/db?pool_max_size=99999999999999",
            "pool_max_size",
            "more connections than a PostgreSQL server accepts",
        ),
        (
            "postgres://h/db?pool_min_idle=5&pool_max_size=2",
            "pool_min_idle",
            "min idle (5) is above max size (2)",
        ),
        (
            "postgres://h/db?pool_acquire_timeout=0s",
            "pool_acquire_timeout",
            "must be positive",
        ),
        (
            "postgres://h/db?pool_idle_timeout=0",
            "pool_idle_timeout",
            "off to disable",
        ),
        (
            "postgres://h/db?pool_max_lifetime=0",
            "pool_max_lifetime",
            "off to disable",
        ),
        (
            "postgres://h/db?pool_leak_detection_threshold=0ms",
            "pool_leak_detection_threshold",
            "must be positive",
        ),
        (
            "postgres://h/db?pool_validation=0",
            "pool_validation",
            "means always",
        ),
        (
            "postgres://h/db?pool_max_waiters=0",
            "pool_max_waiters",
            "no caller could ever wait",
        ),
        (
            "postgres://h/db?pool_max_waiters=lots",
            "pool_max_waiters",
            "not a whole number",
        ),
        (
            "postgres://h/db?pool_autoscale_step=3",
            "pool_autoscale_step",
            "auto-scaling is off",
        ),
        (
            "postgres://h/db?pool_autoscale=on&pool_autoscale_step=0",
            "pool_autoscale_step",
            "a step must be between 1 and",
        ),
        (
            "postgres://h/db?pool_autoscale=sometimes",
            "pool_autoscale",
            "write on or off",
        ),
        (
            "postgres://h/db?pool_pipeline=deep",
            "pool_pipeline",
            "not a depth",
        ),
        (
            "postgres://h/db?pool_pipeline=100000",
            "pool_pipeline",
            "deeper than 256",
        ),
        (
            "postgres://h/db?pool_pipeline=4&pooler=transaction",
            "pool_pipeline",
            "transaction-mode pooler",
        ),
        (
            "postgres://h/db?pool_validation=sometimes",
            "pool_validation",
            "write always, never",
        ),
        (
            "postgres://h/db?password_command=",
            "password_command",
            "password command is empty",
        ),
        (
            "postgres://u:pw@h/db?password_command=x",
            "password",
            "more than one password source",
        ),
        (
            "postgres://h/db?sslcert=/etc/hostname",
            "sslkey",
            "needs its private key",
        ),
        (
            "postgres://h/db?sslkey=/etc/hostname",
            "sslcert",
            "needs its certificate",
        ),
        (
            "postgres://h/db?sslmode=disable&sslrootcert=/etc/hostname",
            "sslmode",
            "TLS is disabled",
        ),
        ("postgres://h/db?host=", "host", "host name is empty"),
        ("postgres://h/db?host=./rel", "host", "absolute path"),
        ("postgres://h/%FF", "dbname", "UTF-8"),
        (
            "postgres://h/db?sslmode=verify-full",
            "sslrootcert",
            "needs trusted roots",
        ),
        (
            "postgres://h/db?sslmode=verify-ca",
            "sslrootcert",
            "sslrootcert=system",
        ),
        ("postgres://%FF@h/db", "user", "UTF-8"),
        ("postgres://%FF/db", "host", "UTF-8"),
        ("postgres://h/db?%FF=1", "url", "UTF-8"),
    ];
    for (url, field, text) in cases {
        let e = err(url);
        let p = e
            .problem(field)
            .unwrap_or_else(|| panic!("{url}: no problem for {field}: {e}"));
        let shown = p.to_string();
        assert!(shown.contains(text), "{url}: {shown:?} lacks {text:?}");
        assert!(!p.hint.is_empty(), "{url}: no hint");
    }
    for field in ["password_file", "passfile", "sslrootcert"] {
        let e = err(&format!("postgres://h/db?{field}={missing}"));
        let shown = e.problem(field).unwrap().to_string();
        assert!(shown.contains("cannot read the file"), "{shown}");
    }
    let e = err(&format!(
        "postgres://h/db?sslcert={missing}&sslkey={missing}"
    ));
    assert!(e.problem("sslcert").is_some() && e.problem("sslkey").is_some());
}

#[test]
fn all_problems_are_reported_together_and_secrets_masked() {
    let e = err(
        "postgres://u:hunter2@h:0/db?pool_min_idle=9&pool_max_size=3&bogus=1&connect_timeout=0",
    );
    let fields: Vec<&str> = e.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        ["port", "bogus", "connect_timeout", "pool_min_idle"]
    );
    let text = e.to_string();
    assert!(text.starts_with(&format!(
        "invalid configuration ({} problems)",
        e.problems().len()
    )));
    assert!(!text.contains("hunter2"), "{text}");
    let e = err("postgres://u:%FF@h/db");
    assert!(e.to_string().contains("password = \"***\""), "{e}");
    let core: pgprovider_core::Error = e.into();
    assert_eq!(core.kind(), pgprovider_core::ErrorKind::Config);
}

#[test]
fn debug_never_shows_secrets() {
    let c = ok("postgres://u:hunter2@h/db");
    assert!(!format!("{c:?}").contains("hunter2"));
    let c = ok("postgres://h/db?password_command=vault%20read%20hunter2");
    assert!(!format!("{c:?}").contains("hunter2"));
    let b = ConfigBuilder::from_url("postgres://u:hunter2@h/db");
    assert!(!format!("{b:?}").contains("hunter2"));
    assert_eq!(
        format!("{:?}", PasswordSource::File("/x".into())),
        "File(\"/x\")"
    );
    assert_eq!(format!("{:?}", PasswordSource::None), "None");
}

#[test]
fn env_fills_what_the_url_leaves_out() {
    let c = ConfigBuilder::from_env_vars([
        (
            "DATABASE_URL",
            "postgres://app@db1,db2/orders?sslmode=require",
        ),
        ("PGHOST", "ignored"),
        ("PGPORT", "6432"),
        ("PGUSER", "ignored"),
        ("PGPASSWORD", "pw"),
        ("PGDATABASE", "ignored"),
        ("PGSSLMODE", "disable"),
        ("PGAPPNAME", "svc"),
        ("PGCONNECT_TIMEOUT", "4"),
        ("PGOPTIONS", "-c x=y"),
        ("PGTARGETSESSIONATTRS", "primary"),
        ("PGLOADBALANCEHOSTS", "random"),
        ("UNRELATED", "1"),
    ])
    .build()
    .unwrap();
    let nodes: Vec<String> = c.nodes().iter().map(|n| n.to_string()).collect();
    assert_eq!(nodes, ["db1:6432", "db2:6432"]);
    assert_eq!((c.user(), c.dbname()), ("app", "orders"));
    assert_eq!(c.ssl_mode(), SslMode::Require);
    assert_eq!(c.password_source(), &PasswordSource::Literal("pw".into()));
    assert_eq!(c.application_name(), Some("svc"));
    assert_eq!(c.connect_timeout(), Some(Duration::from_secs(4)));
    assert_eq!(c.options(), Some("-c x=y"));
    assert_eq!(c.target_session_attrs(), TargetSessionAttrs::Primary);
    assert_eq!(c.load_balance_hosts(), LoadBalanceHosts::Random);
}

#[test]
fn env_without_url_and_builder_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pgpass");
    std::fs::write(&f, "").unwrap();
    let fs = f.display().to_string();
    let c = ConfigBuilder::from_env_vars([
        ("PGHOST", "h1,h2"),
        ("PGPORT", "1,2"),
        ("PGUSER", "u"),
        ("PGPASSFILE", fs.as_str()),
        ("PGSSLROOTCERT", fs.as_str()),
        ("PGSSLCERT", fs.as_str()),
        ("PGSSLKEY", fs.as_str()),
        ("DATABASE_URL", ""),
    ])
    .with_user("override")
    .build()
    .unwrap();
    let nodes: Vec<String> = c.nodes().iter().map(|n| n.to_string()).collect();
    assert_eq!(nodes, ["h1:1", "h2:2"]);
    assert_eq!(c.user(), "override");
    assert_eq!(c.dbname(), "override");
    assert_eq!(c.passfile(), Some(f.as_path()));
    assert!(c.tls().root_cert.is_some() && c.tls().client_cert.is_some());

    let e = ConfigBuilder::from_env_vars([("PGPORT", "nope"), ("PGSSLMODE", "on")])
        .build()
        .unwrap_err();
    assert!(e.problem("PGPORT (port)").is_some(), "{e}");
    assert!(e.problem("PGSSLMODE (sslmode)").is_some(), "{e}");
    // from_env reads the real environment; it must at least build with what CI has.
    let _ = ConfigBuilder::from_env();
    let _ = Config::from_env();
}

#[test]
fn with_param_and_durations() {
    let c = Config::builder()
        .with_param("pool_max_size", "4")
        .build()
        .unwrap();
    assert_eq!(c.pool().max_size(), 4);
    let e = Config::builder()
        .with_param("nope", "1")
        .build()
        .unwrap_err();
    assert!(e.problem("nope").is_some());
    assert_eq!(parse_duration("10"), Some(Duration::from_secs(10)));
    assert_eq!(parse_duration("3min"), Some(Duration::from_secs(180)));
    assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
    assert_eq!(parse_duration("10 parsecs"), None);
    assert_eq!(parse_duration(""), None);
}

#[tokio::test]
async fn password_sources_resolve_at_connect() {
    let dir = tempfile::tempdir().unwrap();
    let pwfile = dir.path().join("pw");
    std::fs::write(&pwfile, "from-file\n").unwrap();
    let node = Node::new(Host::Tcp("db1".into()), 5432);

    let c = Config::builder()
        .with_password_file(&pwfile)
        .build()
        .unwrap();
    let p = c.connect_params(&node).await.unwrap();
    assert_eq!(p.password.unwrap().expose(), "from-file");

    let c = Config::builder()
        .with_password_command("printf from-cmd")
        .build()
        .unwrap();
    let p = c.connect_params(&node).await.unwrap();
    assert_eq!(p.password.unwrap().expose(), "from-cmd");

    let c = Config::builder()
        .with_password_command("echo hunter2 >&2; exit 3")
        .build()
        .unwrap();
    let e = c.connect_params(&node).await.unwrap_err();
    assert!(e.to_string().contains("password_command failed"), "{e}");
    assert!(!e.to_string().contains("hunter2"));
    assert_eq!(e.node(), Some("db1:5432"));

    // A password file removed after build is reported at connect, naming the node.
    let gone = dir.path().join("gone");
    std::fs::write(&gone, "x").unwrap();
    let c = Config::builder().with_password_file(&gone).build().unwrap();
    std::fs::remove_file(&gone).unwrap();
    let e = c.connect_params(&node).await.unwrap_err();
    assert!(e.to_string().contains("cannot read password_file"), "{e}");

    let mut pgpass = std::fs::File::create(dir.path().join("pgpass")).unwrap();
    writeln!(
        pgpass,
        "# comment\nshort:line\nother:*:*:*:nope\ndb1:5432:app:u:pa\\:ss\n*:*:*:*:fall:back"
    )
    .unwrap();
    let c = Config::builder()
        .with_user("u")
        .with_dbname("app")
        .with_passfile(dir.path().join("pgpass"))
        .build()
        .unwrap();
    let p = c.connect_params(&node).await.unwrap();
    assert_eq!(p.password.unwrap().expose(), "pa:ss");
    let other = Node::new(Host::Unix("/tmp".into()), 1);
    let p = c.connect_params(&other).await.unwrap();
    assert_eq!(p.password.unwrap().expose(), "fall:back");

    let c = Config::builder()
        .with_password("lit")
        .with_application_name("a")
        .build()
        .unwrap();
    let p = c.connect_params(&node).await.unwrap();
    assert_eq!(p.password.clone().unwrap().expose(), "lit");
    assert_eq!(p.application_name.as_deref(), Some("a"));
    assert_eq!(p.node_name(), "db1:5432");
    let c = Config::builder().build().unwrap();
    assert!(c.connect_params(&node).await.unwrap().password.is_none());
}

#[test]
fn builder_ports_are_validated_and_choices_parse() {
    let e = Config::builder().with_port(0).build().unwrap_err();
    assert!(
        e.problem("port")
            .unwrap()
            .to_string()
            .contains("between 1 and 65535")
    );
    let e = Config::builder().with_node("h", 0).build().unwrap_err();
    assert!(e.problem("port").is_some());
    assert_eq!(
        TargetSessionAttrs::parse("read-only"),
        Some(TargetSessionAttrs::ReadOnly)
    );
    assert_eq!(TargetSessionAttrs::parse("rw"), None);
    assert_eq!(
        LoadBalanceHosts::parse("random"),
        Some(LoadBalanceHosts::Random)
    );
    assert_eq!(LoadBalanceHosts::parse("yes"), None);
    assert_eq!(
        Config::builder().build().unwrap().redacted_url(),
        "postgres://postgres@localhost:5432/postgres"
    );
}

#[tokio::test]
async fn a_password_command_printing_bytes_that_are_not_utf8_is_refused() {
    let c = Config::builder()
        .with_password_command("printf '\\377'")
        .build()
        .unwrap();
    let node = Node::new(Host::Tcp("db1".into()), 5432);
    let e = c.connect_params(&node).await.unwrap_err();
    assert!(e.to_string().contains("non-UTF-8"), "{e}");
}

#[tokio::test]
async fn query_settings_reach_the_connect_parameters() {
    let c =
        ok("postgres://h/db?statement_timeout=1500ms&query_timeout=2s&statement_cache_capacity=16");
    let p = c.connect_params(&c.nodes()[0]).await.unwrap();
    assert_eq!(p.options.as_deref(), Some("-c statement_timeout=1500"));
    assert_eq!(p.query_timeout, Some(Duration::from_secs(2)));
    assert_eq!(p.statement_cache_capacity, 16);
    let c = Config::builder()
        .with_options("-c work_mem=4MB")
        .with_statement_timeout(Some(Duration::from_secs(3)))
        .with_query_timeout(None)
        .with_statement_cache_capacity(0)
        .build()
        .unwrap();
    let p = c.connect_params(&c.nodes()[0]).await.unwrap();
    assert_eq!(
        p.options.as_deref(),
        Some("-c work_mem=4MB -c statement_timeout=3000")
    );
    assert_eq!((p.query_timeout, p.statement_cache_capacity), (None, 0));
    let defaults = ok("postgres://h/db");
    assert_eq!(defaults.statement_cache_capacity(), 256);
    assert_eq!(
        (defaults.query_timeout(), defaults.statement_timeout()),
        (None, None)
    );
    let e = Config::from_url(
        "postgres://h/db?query_timeout=0&statement_timeout=0&statement_cache_capacity=x",
    )
    .unwrap_err();
    assert_eq!(e.problems().len(), 3, "{e}");
}

#[tokio::test]
async fn behind_a_pooler_settings_leave_the_startup_packet() {
    use pgprovider_core::PoolerMode;
    for (mode, name) in [
        (PoolerMode::Session, "session"),
        (PoolerMode::Transaction, "transaction"),
    ] {
        let c = ok(&format!(
            "postgres://h/db?pooler={name}&statement_timeout=1500ms&options=-c%20work_mem%3D4MB%20--search_path%3Da"
        ));
        assert_eq!(c.pooler(), mode);
        let p = c.connect_params(&c.nodes()[0]).await.unwrap();
        assert_eq!(p.options, None, "{name}: poolers refuse startup options");
        assert_eq!(p.pooler, mode);
        assert_eq!(
            p.settings,
            vec![
                ("work_mem".to_owned(), "4MB".to_owned()),
                ("search_path".to_owned(), "a".to_owned()),
                ("statement_timeout".to_owned(), "1500".to_owned()),
            ]
        );
    }
    // Session mode keeps the statement cache; none sends the options at startup.
    let c = ok("postgres://h/db?pooler=session");
    assert_eq!(c.statement_cache_capacity(), 256);
    let c = ok("postgres://h/db?statement_timeout=2s");
    let p = c.connect_params(&c.nodes()[0]).await.unwrap();
    assert_eq!(p.options.as_deref(), Some("-c statement_timeout=2000"));
    assert!(p.settings.is_empty());
    // The builder sets it too.
    let c = Config::builder()
        .with_pooler(PoolerMode::Transaction)
        .build()
        .unwrap();
    assert_eq!(c.pooler(), PoolerMode::Transaction);
}

#[test]
fn pooler_problems_are_reported_with_the_rest() {
    let e = Config::from_url(
        "postgres://h/db?pooler=transaction&statement_cache_capacity=64&options=-f%20s&pooler_mode=x",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("statement_cache_capacity") && e.contains("named prepared statements"),
        "{e}"
    );
    assert!(e.contains("options") && e.contains("-c name=value"), "{e}");
    let e = Config::from_url("postgres://h/db?pooler=statement")
        .unwrap_err()
        .to_string();
    assert!(e.contains("pooler") && e.contains("transaction"), "{e}");
    // Unnamed statements asked for explicitly are fine.
    assert_eq!(
        ok("postgres://h/db?pooler=transaction&statement_cache_capacity=0")
            .statement_cache_capacity(),
        0
    );
}
