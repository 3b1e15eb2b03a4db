//! Property tests (proptest) of everything that parses or classifies untrusted input: URLs
//! and environment variables, the SQL classifiers, the tenant statement guard, migration
//! file names, WAL positions and the backoff arithmetic.
//!
//! Each property runs `PROPTEST_CASES` cases (256 by default); a long run is
//! `PROPTEST_CASES=200000 cargo test -p pgprovider --lib properties`. The classifiers'
//! agreement with the server on a corpus lives in the tokio-postgres driver's tests
//! (`the_sql_classifiers_agree_with_the_server_on_a_corpus` in `tests/driver.rs`), which
//! can reach a server.

use crate::config::{Config, ConfigBuilder};
use crate::retry::Backoff;
use pgprovider_core::kit::sql;
use proptest::prelude::*;
use std::time::Duration;

/// Strings that look like what the parsers meet: SQL and URL punctuation, quotes, comments,
/// escapes, non-ASCII, control characters.
fn soup() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("SELECT ".to_owned()),
        Just("set_config".to_owned()),
        Just("\"set_config\"".to_owned()),
        Just("U&\"set\\005fconfig\"".to_owned()),
        Just("pg_catalog.".to_owned()),
        Just("BEGIN".to_owned()),
        Just("COMMIT AND CHAIN".to_owned()),
        Just("ROLLBACK TO s".to_owned()),
        Just("SET LOCAL ".to_owned()),
        Just("SET ROLE ".to_owned()),
        Just("RESET ROLE".to_owned()),
        Just(" INTO ".to_owned()),
        Just("EXPLAIN ANALYZE ".to_owned()),
        Just("$$".to_owned()),
        Just("$tag$".to_owned()),
        Just("--".to_owned()),
        Just("/*".to_owned()),
        Just("*/".to_owned()),
        Just("'".to_owned()),
        Just("\"".to_owned()),
        Just(";".to_owned()),
        Just("(".to_owned()),
        Just(")".to_owned()),
        Just("\n".to_owned()),
        Just("\0".to_owned()),
        Just("é".to_owned()),
        Just("postgres://".to_owned()),
        Just("@".to_owned()),
        Just(":".to_owned()),
        Just("/".to_owned()),
        Just("?".to_owned()),
        Just("&".to_owned()),
        Just("=".to_owned()),
        Just("%".to_owned()),
        Just("%2".to_owned()),
        Just("[::1]".to_owned()),
        Just(",".to_owned()),
        "[a-z_]{1,8}",
        "[0-9]{1,6}",
        any::<String>(),
    ];
    proptest::collection::vec(token, 0..24).prop_map(|v| v.concat())
}

/// What the URL parser may meet as a value of a known key.
fn url_key() -> impl Strategy<Value = (String, String)> {
    let keys = prop_oneof![
        Just("connect_timeout"),
        Just("application_name"),
        Just("sslmode"),
        Just("target_session_attrs"),
        Just("load_balance_hosts"),
        Just("pool_max_size"),
        Just("pool_min_idle"),
        Just("pool_acquire_timeout"),
        Just("pool_pipeline"),
        Just("pool_autoscale"),
        Just("pooler"),
        Just("statement_timeout"),
        Just("query_timeout"),
        Just("options"),
        Just("nonsense"),
    ];
    (keys, soup()).prop_map(|(k, v)| (k.to_owned(), v))
}

/// A well-formed multi-host URL's parts: user, password, hosts with ports, database.
#[derive(Clone, Debug)]
struct Parts {
    user: String,
    password: Option<String>,
    hosts: Vec<(String, u16)>,
    dbname: String,
}

fn parts() -> impl Strategy<Value = Parts> {
    let host = prop_oneof![
        Just("127.0.0.1".to_owned()),
        Just("localhost".to_owned()),
        "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9-]{0,6}){0,2}",
    ];
    (
        "[^\\x00]{1,12}",
        proptest::option::of("[^\\x00]{1,12}"),
        proptest::collection::vec((host, 1u16..), 1..4),
        "[^\\x00]{1,12}",
    )
        .prop_map(|(user, password, hosts, dbname)| Parts {
            user,
            password,
            hosts,
            dbname,
        })
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn url_of(p: &Parts) -> String {
    let pw = p
        .password
        .as_ref()
        .map(|pw| format!(":{}", enc(pw)))
        .unwrap_or_default();
    let hosts: Vec<String> = p
        .hosts
        .iter()
        .map(|(h, port)| format!("{h}:{port}"))
        .collect();
    format!(
        "postgres://{}{pw}@{}/{}",
        enc(&p.user),
        hosts.join(","),
        enc(&p.dbname)
    )
}

proptest! {
    #[test]
    fn the_url_parser_never_panics(s in soup(), keys in proptest::collection::vec(url_key(), 0..4)) {
        let _ = Config::from_url(&s);
        let query: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect();
        let _ = Config::from_url(&format!("postgres://u@127.0.0.1:5432/db?{}", query.join("&")));
        let _ = Config::from_url(&format!("postgresql://{s}"));
    }

    #[test]
    fn an_accepted_url_round_trips(p in parts()) {
        let config = Config::from_url(&url_of(&p)).unwrap();
        prop_assert_eq!(config.user(), p.user.as_str());
        prop_assert_eq!(config.dbname(), p.dbname.as_str());
        let nodes: Vec<String> = config.nodes().iter().map(ToString::to_string).collect();
        let want: Vec<String> = p.hosts.iter().map(|(h, port)| format!("{h}:{port}")).collect();
        prop_assert_eq!(&nodes, &want);
        // What the library prints of it (passwords left out) parses to the same place.
        let again = Config::from_url(&config.redacted_url().replace(":***@", "@")).unwrap();
        prop_assert_eq!(again.user(), config.user());
        prop_assert_eq!(again.dbname(), config.dbname());
        prop_assert_eq!(again.nodes(), config.nodes());
        // The password is never printed: only `***` stands where it was.
        let shown = config.redacted_url();
        let userinfo = shown.rsplit_once('@').map(|(u, _)| u).unwrap_or_default();
        prop_assert_eq!(userinfo.ends_with(":***"), p.password.is_some(), "{}", shown);
    }

    #[test]
    fn environment_variables_never_panic(
        vars in proptest::collection::vec(
            (prop_oneof![
                Just("PGHOST"), Just("PGPORT"), Just("PGUSER"), Just("PGDATABASE"),
                Just("PGPASSWORD"), Just("PGAPPNAME"), Just("PGCONNECT_TIMEOUT"),
                Just("PGSSLMODE"), Just("PGTARGETSESSIONATTRS"), Just("PGOPTIONS"),
                Just("DATABASE_URL"),
            ], soup()),
            0..8,
        )
    ) {
        let _ = ConfigBuilder::from_env_vars(vars).build();
    }

    #[test]
    fn the_sql_classifiers_never_panic(s in soup()) {
        let _ = sql::may_change_session(&s);
        let _ = sql::transaction_effect(&s);
        let _ = sql::opens_transaction(&s);
        let _ = pgprovider_core::kit::pooler::startup_settings(&s);
    }

    #[test]
    fn anything_after_a_session_changing_statement_stays_flagged(
        a in soup(),
        b in prop_oneof![
            Just("SET search_path = x"), Just("SELECT set_config('a', 'b', false)"),
            Just("SELECT U&\"set\\005fconfig\"('a', 'b', false)"),
            Just("CREATE TEMP TABLE t (x int)"), Just("LISTEN c"), Just("RESET ROLE"),
            Just("SELECT pg_advisory_lock(1)"), Just("PREPARE p AS SELECT 1"),
            Just("SELECT 1 INTO TEMP t"), Just("DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
        ],
        c in soup(),
    ) {
        // Split at `;` as the server would run them, a session-changing statement anywhere
        // makes the whole text session-changing.
        let text = format!("{a};{b};{c}");
        prop_assert!(sql::may_change_session(&text), "{text:?}");
    }

    #[test]
    fn the_statement_guard_never_panics(tenant in "[a-z_]{1,10}", schema in proptest::option::of("[a-z_]{1,10}"), s in soup()) {
        let _ = crate::guard::check(&tenant, schema.as_deref(), &s);
    }

    #[test]
    fn every_spelling_of_set_config_is_refused(
        qualified in any::<bool>(),
        quoted in any::<bool>(),
        escaped in proptest::collection::vec(any::<bool>(), 10),
        upper in proptest::collection::vec(any::<bool>(), 10),
        wrapper in 0usize..4,
    ) {
        let name = "set_config";
        let spelled = if quoted {
            // Quoted: exact case; some letters as \XXXX escapes under U&.
            let body: String = name
                .chars()
                .zip(&escaped)
                .map(|(c, e)| if *e { format!("\\{:04x}", c as u32) } else { c.to_string() })
                .collect();
            if escaped.iter().any(|e| *e) { format!("U&\"{body}\"") } else { format!("\"{name}\"") }
        } else {
            name.chars()
                .zip(&upper)
                .map(|(c, u)| if *u { c.to_ascii_uppercase() } else { c })
                .collect()
        };
        let f = if qualified { format!("pg_catalog.{spelled}") } else { spelled };
        let call = format!("{f}('search_path', 'other', false)");
        let sql = match wrapper {
            0 => format!("SELECT {call}"),
            1 => format!("SELECT * FROM t WHERE x = (SELECT {call})"),
            2 => format!("WITH a AS (SELECT {call}) SELECT * FROM a"),
            _ => format!("SELECT 1; SELECT {call}"),
        };
        prop_assert!(crate::guard::check("t1", Some("t1"), &sql).is_err(), "{sql}");
    }

    #[test]
    fn migration_file_names_never_panic(names in proptest::collection::vec(soup(), 0..6)) {
        let _ = crate::migrate::Migrations::from_files(names.iter().map(|n| (n.as_str(), "SELECT 1")));
        let with_sql: Vec<String> = names.iter().map(|n| format!("{n}.sql")).collect();
        let _ = crate::migrate::Migrations::from_files(with_sql.iter().map(|n| (n.as_str(), "SELECT 1")));
    }

    #[test]
    fn migration_versions_come_from_the_leading_digits(version in 0i64..1_000_000_000, name in "[a-z_]{0,12}", down in any::<bool>()) {
        let up = format!("{version:04}_{name}.sql");
        let m = if down {
            let d = format!("{version:04}_{name}.down.sql");
            crate::migrate::Migrations::from_files([(up.as_str(), "SELECT 1"), (d.as_str(), "SELECT 2")]).unwrap()
        } else {
            crate::migrate::Migrations::from_files([(up.as_str(), "SELECT 1")]).unwrap()
        };
        let only = m.iter().next().unwrap();
        prop_assert_eq!(only.version(), version);
        prop_assert_eq!(only.down().is_some(), down);
    }

    #[test]
    fn wal_positions_round_trip_and_nothing_else_parses(
        lsn in any::<u64>(),
        junk in prop_oneof![soup(), "[+-]?[0-9a-fA-F]{0,12}/[+-]?[0-9a-fA-F ]{0,12}"],
    ) {
        let text = format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF);
        prop_assert_eq!(crate::topology::parse_lsn(&text), Some(lsn));
        prop_assert_eq!(crate::topology::parse_lsn(&text.to_lowercase()), Some(lsn));
        if let Some(v) = crate::topology::parse_lsn(&junk) {
            // Whatever parses is two hexadecimal halves of at most 32 bits each.
            let (hi, lo) = junk.split_once('/').unwrap();
            prop_assert!(hi.len() <= 8 && lo.len() <= 8 && !hi.is_empty() && !lo.is_empty(), "{junk:?}");
            prop_assert!(hi.chars().chain(lo.chars()).all(|c| c.is_ascii_hexdigit()), "{junk:?}");
            prop_assert_eq!(v, (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap());
        }
    }

    #[test]
    fn backoff_waits_stay_within_their_caps(
        base_ns in 1u64..,
        extra_ns in any::<u64>(),
        attempts in 1u32..64,
        seed in any::<u64>(),
    ) {
        let base = Duration::from_nanos(base_ns);
        let max = base.saturating_add(Duration::from_nanos(extra_ns));
        let b = Backoff::new(base, max, attempts).unwrap();
        let delays: Vec<Duration> = b.delays(seed).collect();
        prop_assert_eq!(delays.len(), attempts as usize - 1);
        for (n, d) in delays.iter().enumerate() {
            let cap = base.checked_mul(1u32 << n.min(30)).map_or(max, |c| c.min(max));
            prop_assert!(*d <= cap, "wait {n}: {d:?} > {cap:?}");
        }
        // The same seed gives the same waits.
        prop_assert_eq!(b.delays(seed).collect::<Vec<_>>(), delays);
    }

    #[test]
    fn backoff_accepts_any_durations_without_panicking(base in any::<u64>(), max in any::<u64>(), attempts in any::<u32>(), secs in any::<bool>()) {
        let d = |n: u64| if secs { Duration::from_secs(n) } else { Duration::from_nanos(n) };
        if let Ok(b) = Backoff::new(d(base), d(max), attempts) {
            for w in b.delays(7).take(70) {
                prop_assert!(w <= d(max));
            }
        }
    }
}
