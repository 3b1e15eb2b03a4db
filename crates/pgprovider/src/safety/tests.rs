//! Findings' verdicts, lines and JSON, on values built by hand (the probe itself is tested
//! on a real server: `pgprovider-tokio-postgres/tests/safety.rs`).

use super::*;

fn session(pid: i32, ours: bool) -> Session {
    Session {
        pid,
        user: "app".into(),
        application: if ours { "orders" } else { "psql" }.into(),
        database: "test".into(),
        state: "idle in transaction".into(),
        transaction_age: Some(Duration::from_millis(9000)),
        statement_age: Some(Duration::from_millis(8000)),
        state_age: Some(Duration::from_millis(7000)),
        wait_event_type: None,
        fingerprint: Some("00ff".into()),
        statement: Some("UPDATE t SET a = ? WHERE id = ?".into()),
        ours,
        checkout: None,
    }
}

fn empty() -> Findings {
    Findings {
        node: "db1:5432".into(),
        at: SystemTime::UNIX_EPOCH,
        blocking: vec![],
        long_transactions: vec![],
        long_statements: vec![],
        idle_in_transaction: vec![],
        deadlocks: Deadlocks::default(),
        connections: Connections {
            used: 3,
            max: 100,
            reserved: 3,
            ours: 1,
        },
        connections_over: false,
        prepared_transactions: vec![],
        replication_slots: vec![],
        wraparound: Wraparound::default(),
        actions: vec![],
        limited_view: false,
        probe_queries: 9,
        probe_time: Duration::from_micros(1500),
    }
}

#[test]
fn a_clear_probe_says_so() {
    let f = empty();
    assert!(f.is_clear());
    assert!(f.kinds().is_empty());
    let j = f.to_json();
    assert!(
        j.starts_with(r#"{"node":"db1:5432","clear":true,"problems":[],"blocking":[]"#),
        "{j}"
    );
    assert!(
        j.contains(r#""connections":{"used":3,"max":100,"reserved":3,"ours":1,"over":false}"#),
        "{j}"
    );
    assert!(
        j.ends_with(r#""actions":[],"limited_view":false,"probe":{"queries":9,"ms":1.500}}"#),
        "{j}"
    );
}

#[test]
fn every_kind_of_finding_has_a_line_a_kind_and_json() {
    let mut f = empty();
    f.blocking.push(Blocking {
        blocked: session(11, true),
        blocking: Some(session(12, false)),
        blocked_pid: 11,
        blocking_pid: 12,
        wait: Duration::from_millis(6000),
        lock_type: "transactionid".into(),
        mode: "ShareLock".into(),
        relation: None,
    });
    f.long_transactions.push(session(12, false));
    f.long_statements.push(session(13, true));
    f.idle_in_transaction.push(session(12, false));
    f.deadlocks = Deadlocks {
        server_total: 4,
        server_new: 1,
        ours_total: 2,
        ours_new: 1,
    };
    f.connections_over = true;
    f.prepared_transactions.push(Prepared {
        gid: "g\"1".into(),
        owner: "app".into(),
        database: "test".into(),
        age: Duration::from_secs(400),
    });
    f.replication_slots.push(ReplicationSlot {
        name: "s1".into(),
        kind: "physical".into(),
        active: false,
        retained_bytes: 16,
        wal_status: "reserved".into(),
    });
    f.wraparound = Wraparound {
        database: "test".into(),
        xid_age: 1_500_000_000,
        mxid_age: 2,
        over: true,
    };
    f.actions.push(ActionTaken {
        pid: 12,
        action: Action::Terminate,
        trigger: Trigger::IdleInTransaction,
        dry_run: true,
        done: false,
        ours: false,
    });
    assert_eq!(
        f.kinds(),
        [
            "blocking",
            "long_transaction",
            "long_statement",
            "idle_in_transaction",
            "deadlock",
            "connections",
            "prepared_transaction",
            "replication_slot",
            "wraparound"
        ]
    );
    let lines = f.problems();
    assert_eq!(lines.len(), 9, "{lines:#?}");
    f.limited_view = true;
    assert!(
        f.problems()[8].contains("grant it pg_monitor"),
        "{:#?}",
        f.problems()
    );
    assert!(
        lines[0].contains("pid 11 waits 6000 ms for pid 12"),
        "{lines:#?}"
    );
    assert!(
        lines[3].contains("1 session(s) idle in transaction, 0 of them ours"),
        "{lines:#?}"
    );
    assert!(
        lines[4].contains("1 new deadlock(s) on the server, 1 received"),
        "{lines:#?}"
    );
    let j = f.to_json();
    for part in [
        r#""clear":false"#,
        r#""blocking":[{"blocked_pid":11,"blocking_pid":12,"wait_ms":6000,"lock_type":"transactionid","mode":"ShareLock","relation":null,"blocked_ours":true"#,
        r#""blocking_ours":false,"blocking_state":"idle in transaction""#,
        r#""idle_in_transaction":[{"idle_ms":7000,"pid":12,"#,
        r#""long_transactions":[{"age_ms":9000,"pid":12,"#,
        r#""long_statements":[{"age_ms":8000,"pid":13,"#,
        r#""deadlocks":{"server_total":4,"server_new":1,"ours_total":2,"ours_new":1}"#,
        r#""over":true}"#,
        r#""prepared_transactions":[{"gid":"g\"1","owner":"app","database":"test","age_ms":400000}]"#,
        r#""replication_slots":[{"name":"s1","type":"physical","active":false,"retained_bytes":16,"wal_status":"reserved"}]"#,
        r#""wraparound":{"database":"test","xid_age":1500000000,"mxid_age":2,"over":true}"#,
        r#""actions":[{"pid":12,"action":"terminate","reason":"idle_in_transaction","dry_run":true,"done":false,"ours":false}]"#,
    ] {
        assert!(j.contains(part), "{part}\nnot in\n{j}");
    }
    assert!(!j.contains("secret"));
}

#[test]
fn options_and_policies_build_as_documented() {
    let o = SafetyOptions::new()
        .with_interval(Duration::from_secs(2))
        .with_standbys(true)
        .with_long_transaction(Duration::from_secs(1))
        .with_long_statement(Duration::from_secs(2))
        .with_idle_in_transaction(Duration::from_secs(3))
        .with_blocked(Duration::from_secs(4))
        .with_connections_ratio(0.5)
        .with_prepared_transaction(Duration::from_secs(5))
        .with_slot_retained_bytes(6)
        .with_wraparound_age(7)
        .with_policy(Policy::blocking(Duration::from_secs(8), Action::Cancel).with_dry_run(true));
    assert_eq!(o.interval, Duration::from_secs(2));
    assert!(o.standbys);
    assert_eq!(
        (
            o.long_transaction,
            o.long_statement,
            o.idle_in_transaction,
            o.blocked
        ),
        (
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(3),
            Duration::from_secs(4)
        )
    );
    assert_eq!(o.connections_ratio, 0.5);
    assert_eq!(o.prepared_transaction, Duration::from_secs(5));
    assert_eq!((o.slot_retained_bytes, o.wraparound_age), (6, 7));
    assert_eq!(o.policies[0].trigger.as_str(), "blocking");
    assert!(o.policies[0].dry_run && !o.policies[0].foreign);
    assert_eq!(Action::Cancel.to_string(), "cancel");
    assert_eq!(Trigger::IdleInTransaction.as_str(), "idle_in_transaction");
    let all = SafetyOptions::everything();
    assert_eq!(all.wraparound_age, 0);
    assert_eq!(all.interval, SafetyOptions::default().interval);
}

#[test]
fn sessions_are_joined_to_the_pools_checkouts_by_server_process() {
    let mut f = empty();
    f.idle_in_transaction.push(session(41, false));
    f.long_transactions.push(session(42, false));
    f.blocking.push(Blocking {
        blocked: session(42, false),
        blocking: Some(session(41, false)),
        blocked_pid: 42,
        blocking_pid: 41,
        wait: Duration::from_millis(1),
        lock_type: "relation".into(),
        mode: "AccessExclusiveLock".into(),
        relation: Some("t".into()),
    });
    f.attach(&[]);
    assert!(f.idle_in_transaction[0].checkout.is_none());
    let here = std::panic::Location::caller();
    f.attach(&[crate::pool::OpenCheckout {
        pid: 41,
        location: here,
        transaction: Some(here),
        held_for: Duration::from_millis(2500),
        tenant: Some("acme".into()),
    }]);
    let s = &f.idle_in_transaction[0];
    assert!(s.ours);
    let c = s.checkout.as_ref().unwrap();
    assert_eq!(c.location, here.to_string());
    assert_eq!(c.tenant.as_deref(), Some("acme"));
    assert!(f.blocking[0].blocking.as_ref().unwrap().ours);
    assert!(!f.blocking[0].blocked.ours && !f.long_transactions[0].ours);
    let j = f.to_json();
    assert!(
        j.contains(&format!(
            r#""checkout":{{"location":"{here}","transaction":"{here}","held_ms":2500,"tenant":"acme"}}"#
        )),
        "{j}"
    );
    assert!(j.contains(r#""checkout":null"#), "{j}");
}
