use super::*;

fn fw(mode: Mode) -> Firewall {
    Firewall::new(FirewallOptions::new(mode), "app").unwrap()
}

#[test]
fn learn_then_enforce_allows_the_learned_shapes_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("allow.json");
    let learn = Firewall::new(
        FirewallOptions::new(Mode::Learn).with_allowlist(&path),
        "app",
    )
    .unwrap();
    learn
        .check(Some("r"), None, "SELECT * FROM users WHERE id = 1")
        .unwrap();
    learn
        .check(Some("r"), None, "SELECT * FROM users WHERE id = 2")
        .unwrap();
    learn
        .check(None, None, "INSERT INTO t VALUES ($1)")
        .unwrap();
    assert_eq!(learn.stats().learned, 2);
    let shapes = learn.shapes();
    assert_eq!(shapes.len(), 2);
    let users = shapes
        .iter()
        .find(|s| s.role.as_deref() == Some("r"))
        .unwrap();
    assert_eq!(users.count, 2);
    assert_eq!(users.statement, "SELECT * FROM users WHERE id = $1");
    assert!(
        users.call_site.contains("firewall/tests.rs"),
        "{}",
        users.call_site
    );
    learn.save().unwrap();

    let enforce = Firewall::new(
        FirewallOptions::new(Mode::Enforce).with_allowlist(&path),
        "app",
    )
    .unwrap();
    enforce
        .check(Some("r"), None, "SELECT * FROM users WHERE id = 99")
        .unwrap();
    enforce
        .check(None, Some("any-tenant"), "INSERT INTO t VALUES ($1)")
        .unwrap();
    // Another role, another shape, an injected variant: refused.
    assert!(
        enforce
            .check(Some("other"), None, "SELECT * FROM users WHERE id = 1")
            .is_err()
    );
    let e = enforce
        .check(
            Some("r"),
            None,
            "SELECT * FROM users WHERE id = 1 OR id > 0",
        )
        .unwrap_err();
    assert_eq!(e.kind(), crate::ErrorKind::Rejected);
    assert!(e.message().contains("is not in the allowlist"), "{e}");
    assert!(e.message().contains("Firewall::allow"), "{e}");
    assert_eq!(enforce.stats().refused, 2);
    assert_eq!(enforce.stats().allowed, 2);
    enforce
        .allow(Some("other"), None, "SELECT * FROM users WHERE id = $1")
        .unwrap();
    enforce
        .check(Some("other"), None, "SELECT * FROM users WHERE id = 5")
        .unwrap();
    assert!(enforce.allow(None, None, "SELEC").is_err());
    // Transaction control always passes.
    enforce.check(None, None, "BEGIN").unwrap();

    // A file of another application, or not JSON, is a clear error.
    assert!(
        Firewall::new(
            FirewallOptions::new(Mode::Enforce).with_allowlist(&path),
            "other"
        )
        .is_err()
    );
    std::fs::write(&path, "{").unwrap();
    let e = Firewall::new(
        FirewallOptions::new(Mode::Enforce).with_allowlist(&path),
        "app",
    )
    .unwrap_err();
    assert!(e.message().contains("not JSON"), "{e}");
    assert!(fw(Mode::Enforce).save().is_err(), "no file to save to");
}

#[test]
fn structural_rules_hold_in_every_mode_but_off() {
    for mode in [Mode::Learn, Mode::Warn, Mode::Enforce] {
        let f = fw(mode);
        assert!(
            f.check(None, None, "SELECT 1; DROP TABLE t").is_err(),
            "{mode}"
        );
        assert!(
            f.check(None, None, "SELECT * FROM u WHERE n = '' OR '1'='1'")
                .is_err()
        );
        assert!(
            f.check(None, None, "SELECT * FROM u WHERE n = 'a'-- AND p = 'b'")
                .is_err()
        );
    }
    let off = fw(Mode::Off);
    off.check(None, None, "SELECT 1; DROP TABLE t").unwrap();
    let lax = Firewall::new(
        FirewallOptions::new(Mode::Warn)
            .single_statement(false)
            .injection_shapes(false),
        "app",
    )
    .unwrap();
    lax.check(None, None, "SELECT 1; SELECT 2").unwrap();
    lax.check(None, None, "SELECT * FROM u WHERE n = '' OR '1'='1'")
        .unwrap();
    assert_eq!(lax.stats().warned, 2);
    let strict = Firewall::new(
        FirewallOptions::new(Mode::Warn).parameters_only(true),
        "app",
    )
    .unwrap();
    let e = strict
        .check(None, None, "SELECT * FROM u WHERE n = 'bob'")
        .unwrap_err();
    assert!(
        e.message()
            .contains("1 literal(s) where parameters are required"),
        "{e}"
    );
    strict
        .check(None, None, "SELECT * FROM u WHERE n = $1 LIMIT 10")
        .unwrap();
    // Parse errors: refused when enforcing, left to the server otherwise.
    assert!(fw(Mode::Enforce).check(None, None, "SELEC 1").is_err());
    fw(Mode::Warn).check(None, None, "SELEC 1").unwrap();
}

#[test]
fn tenants_have_their_own_modes_and_optionally_their_own_shapes() {
    let f = Firewall::new(
        FirewallOptions::new(Mode::Learn)
            .with_tenant_mode("locked", Mode::Enforce)
            .per_tenant(true)
            .with_application("svc"),
        "ignored",
    )
    .unwrap();
    f.check(None, Some("open"), "SELECT * FROM t").unwrap();
    assert!(f.check(None, Some("locked"), "SELECT * FROM t").is_err());
    f.allow(None, Some("locked"), "SELECT * FROM t").unwrap();
    f.check(None, Some("locked"), "SELECT * FROM t").unwrap();
    assert!(format!("{f:?}").contains("svc"));
    assert_eq!("enforce".parse::<Mode>().unwrap(), Mode::Enforce);
    assert_eq!(Mode::Learn.to_string(), "learn");
    assert!("strict".parse::<Mode>().is_err());
}

#[test]
fn a_bad_allowlist_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("allow.json");
    let open = |text: &str| {
        std::fs::write(&path, text).unwrap();
        Firewall::new(
            FirewallOptions::new(Mode::Enforce).with_allowlist(&path),
            "app",
        )
        .unwrap_err()
        .message()
        .to_owned()
    };
    assert!(open(r#"{"version": 2, "application": "app"}"#).contains("unknown version"));
    assert!(
        open(r#"{"version": 1, "application": "app", "shapes": [{"fingerprint": "xyz"}]}"#)
            .contains("shape 1 has no valid fingerprint")
    );
    // A directory that does not exist cannot be saved to.
    let f = Firewall::new(
        FirewallOptions::new(Mode::Learn).with_allowlist(dir.path().join("no/such/dir.json")),
        "app",
    )
    .unwrap();
    f.check(None, None, "SELECT 1").unwrap();
    assert!(f.save().unwrap_err().message().contains("cannot write"));
    assert_eq!(f.options().mode, Mode::Learn);
}
