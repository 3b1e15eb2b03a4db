use super::*;

#[test]
fn files_are_paired_ordered_and_checked() {
    let m = Migrations::from_files([
        ("0002_orders.up.sql", "CREATE TABLE orders (id int)"),
        ("0002_orders.down.sql", "DROP TABLE orders"),
        ("1_users.sql", "CREATE TABLE users (id int)"),
        ("README.md", "ignored"),
        (
            "0003-index.sql",
            "-- pgprovider:no-transaction\nCREATE INDEX CONCURRENTLY i ON orders (id)",
        ),
    ])
    .unwrap();
    let v: Vec<(i64, &str, bool, bool)> = m
        .iter()
        .map(|m| (m.version(), m.name(), m.down().is_some(), m.transactional()))
        .collect();
    assert_eq!(
        v,
        vec![
            (1, "users", false, true),
            (2, "orders", true, true),
            (3, "index", false, false)
        ]
    );
    assert_eq!(m.len(), 3);
    assert!(!m.is_empty());
    assert_eq!(m.get(2).unwrap().label(), "2_orders");
    assert_eq!(m.get(1).unwrap().up(), "CREATE TABLE users (id int)");
    assert_eq!(
        m.get(1).unwrap().checksum(),
        checksum("CREATE TABLE users (id int)")
    );
    assert_ne!(checksum("a"), checksum("b"));
    assert_eq!(checksum(""), "cbf29ce484222325");

    let e = Migrations::from_files([("users.sql", "x")]).unwrap_err();
    assert!(e.message().contains("does not start with a version"), "{e}");
    let e = Migrations::from_files([("1_a.sql", "x"), ("01_b.sql", "y")]).unwrap_err();
    assert!(e.message().contains("two migrations have version 1"), "{e}");
    let e = Migrations::from_files([("1_a.down.sql", "x")]).unwrap_err();
    assert!(e.message().contains("has no up file"), "{e}");
    let e = Migrations::from_dir("/nonexistent/migrations").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
}

#[test]
fn folders_are_read_and_names_quoted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("1_a.sql"), "SELECT 1").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let m = Migrations::from_dir(dir.path()).unwrap();
    assert_eq!(m.len(), 1);
    // A .sql entry that cannot be read as a file is an error naming it.
    let bad = tempfile::tempdir().unwrap();
    std::fs::create_dir(bad.path().join("2_dir.sql")).unwrap();
    let e = Migrations::from_dir(bad.path()).unwrap_err();
    assert!(
        e.message().contains("cannot read") && e.message().contains("2_dir.sql"),
        "{e}"
    );
    assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
    assert_eq!(literal("it's"), "'it''s'");
    let a = Migrator::new(m.clone()).with_schema("t1");
    let b = Migrator::new(m).with_schema("t2").with_table("h");
    assert_ne!(a.lock_key(), b.lock_key());
    assert_eq!(a.history(), "\"t1\".\"pgprovider_migrations\"");
    assert_eq!(b.history(), "\"t2\".\"h\"");
    assert_eq!(a.migrations().len(), 1);
}

#[tokio::test]
async fn limited_runs_keep_input_order_and_the_limit() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let running = AtomicUsize::new(0);
    let most = AtomicUsize::new(0);
    let items: Vec<u64> = (0..20).collect();
    let out = futures_like::run_limited(&items, 3, async |i: &u64| {
        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20 - *i)).await;
        running.fetch_sub(1, Ordering::SeqCst);
        i * 2
    })
    .await;
    assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
    assert_eq!(most.load(Ordering::SeqCst), 3);
}
