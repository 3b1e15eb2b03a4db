//! Typed queries, the statement cache, transactions, batches, COPY and timeouts against the
//! shared server (`PGPROVIDER_TEST_URL`, default `postgres://postgres@127.0.0.1:5432/test`).

use futures_util::StreamExt;
use pgprovider::{
    Config, Connection, ErrorKind, FromRow, IsolationLevel, Pool, Queries, SqlState, TxOptions,
};
use pgprovider_tokio_postgres::types::Type;
use pgprovider_tokio_postgres::{PgRow, TokioPostgres};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

mod common;
use common::{config, pool};

/// A fresh table named `name` (tests run in parallel, so each uses its own).
async fn table(pool: &Pool<TokioPostgres>, name: &str, columns: &str) {
    let mut c = pool.get().await.unwrap();
    c.simple_query(&format!(
        "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} ({columns})"
    ))
    .await
    .unwrap();
}

/// Sessions of `app` in the state `state` on the server (other than the caller's).
async fn sessions(pool: &Pool<TokioPostgres>, app: &str, state: &str) -> i64 {
    pool.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state = $2 \
         AND pid <> pg_backend_pid()",
        &[&app, &state],
    )
    .await
    .unwrap()
    .get(0)
}

#[derive(Debug, PartialEq, pgprovider::FromRow)]
struct Account {
    id: i64,
    #[from_row(rename = "owner")]
    holder: String,
    balance: Option<i64>,
}

/// Read by position.
#[derive(Debug, PartialEq, pgprovider::FromRow)]
struct Pair(i64, String);

/// A hand-written impl, for rows that need more than field-by-field reading.
#[derive(Debug, PartialEq)]
struct Label(String);

impl FromRow<PgRow> for Label {
    fn from_row(row: &PgRow) -> pgprovider::Result<Self> {
        use pgprovider::Column;
        let (id, owner): (i64, String) = (row.column(0)?, row.column_named("owner")?);
        Ok(Label(format!("{owner}#{id}")))
    }
}

#[tokio::test]
async fn typed_queries_on_the_pool_and_on_a_connection() {
    let pool = pool("").await;
    table(
        &pool,
        "q_accounts",
        "id bigint PRIMARY KEY, owner text NOT NULL, balance bigint",
    )
    .await;
    let owner = String::from("ada");
    let n = pool
        .execute(
            "INSERT INTO q_accounts VALUES ($1, $2, $3), (2, 'bob', NULL)",
            &[&1_i64, &owner.as_str(), &Some(10_i64)],
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    let rows = pool
        .query("SELECT id, owner FROM q_accounts ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].get::<_, &str>("owner"), "bob");
    let accounts: Vec<Account> = pool
        .query_as("SELECT * FROM q_accounts ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(
        accounts,
        vec![
            Account {
                id: 1,
                holder: "ada".into(),
                balance: Some(10)
            },
            Account {
                id: 2,
                holder: "bob".into(),
                balance: None
            },
        ]
    );
    let pairs: Vec<(i64, String)> = pool
        .query_as("SELECT id, owner FROM q_accounts ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(pairs[0], (1, "ada".to_owned()));
    let pairs: Vec<Pair> = pool
        .query_as("SELECT id, owner FROM q_accounts ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(pairs[1], Pair(2, "bob".into()));
    let labels: Vec<Label> = pool
        .query_as("SELECT id, owner FROM q_accounts ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(labels[0], Label("ada#1".into()));
    assert!(
        pool.query_opt("SELECT 1 FROM q_accounts WHERE id = $1", &[&9_i64])
            .await
            .unwrap()
            .is_none()
    );

    // Wrong row counts and types are errors that say what to do.
    let e = pool
        .query_one("SELECT 1 FROM q_accounts WHERE id = 9", &[])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RowCount);
    assert!(e.hint().unwrap().contains("query_opt"));
    let e = pool
        .query_opt("SELECT id FROM q_accounts", &[])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RowCount);
    let e = pool
        .query_as::<(String,)>("SELECT id FROM q_accounts", &[])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Decode);
    let e = pool
        .query_as::<Account>("SELECT id FROM q_accounts", &[])
        .await
        .unwrap_err();
    assert!(e.message().contains("owner"), "{e}");

    // The same on a checked-out connection, and server errors keep their fields.
    let mut c = pool.get().await.unwrap();
    let row = c
        .query_one("SELECT count(*) FROM q_accounts", &[])
        .await
        .unwrap();
    assert_eq!(row.to::<(i64,)>().unwrap().0, 2);
    let e = c
        .execute("INSERT INTO q_accounts VALUES (1, 'dup', 0)", &[])
        .await
        .unwrap_err();
    assert!(e.is_constraint_violation());
    assert_eq!(
        e.db_fields().unwrap().constraint.as_deref(),
        Some("q_accounts_pkey")
    );
    assert_eq!(e.db_fields().unwrap().table.as_deref(), Some("q_accounts"));
    assert!(e.node().is_some());
    // Transaction and session state are tracked for typed statements too (and remembered
    // with the cached statement, so a cache hit does not scan the SQL again).
    for _ in 0..2 {
        assert!(!c.needs_reset());
        c.execute("BEGIN", &[]).await.unwrap();
        assert!(c.in_transaction() && c.needs_reset());
        c.execute("COMMIT", &[]).await.unwrap();
        assert!(!c.in_transaction() && !c.needs_reset());
    }
    c.execute("SET work_mem = '8MB'", &[]).await.unwrap();
    assert!(c.needs_reset());
}

#[tokio::test]
async fn the_statement_cache_counts_and_heals_the_whole_pool_after_a_schema_change() {
    let pool = pool("&pool_max_size=3").await;
    table(&pool, "q_altered", "id int").await;
    pool.execute("INSERT INTO q_altered VALUES (1)", &[])
        .await
        .unwrap();
    let before = pool.stats().statement_cache;
    let (mut a, mut b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
    for c in [&mut a, &mut b] {
        for _ in 0..3 {
            assert_eq!(
                c.query("SELECT * FROM q_altered", &[]).await.unwrap()[0].len(),
                1
            );
        }
    }
    let s = pool.stats().statement_cache;
    assert_eq!(s.misses - before.misses, 2, "one prepare per connection");
    assert_eq!(s.hits - before.hits, 4);

    // Alter the table under both cached statements.
    pool.execute(
        "ALTER TABLE q_altered ADD COLUMN extra text DEFAULT 'x'",
        &[],
    )
    .await
    .unwrap();
    let rows = a.query("SELECT * FROM q_altered", &[]).await.unwrap();
    assert_eq!(rows[0].len(), 2, "re-prepared and run again, invisibly");
    assert_eq!(
        pool.stats().statement_cache.invalidations - before.invalidations,
        1
    );
    // The other connection dropped its copy before using it: no error, no second
    // invalidation.
    let rows = b.query("SELECT * FROM q_altered", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, &str>("extra"), "x");
    assert_eq!(
        pool.stats().statement_cache.invalidations - before.invalidations,
        1
    );

    // Inside a transaction the error is returned and says why; the closure API re-runs.
    drop((a, b));
    pool.execute("ALTER TABLE q_altered ADD COLUMN more int DEFAULT 7", &[])
        .await
        .unwrap();
    let tx = pool.begin(&TxOptions::new()).await.unwrap();
    let e = tx.query("SELECT * FROM q_altered", &[]).await.unwrap_err();
    assert!(e.is_stale_statement());
    assert!(e.hint().unwrap().contains("inside a transaction"), "{e:?}");
    tx.rollback().await.unwrap();
    pool.execute("ALTER TABLE q_altered ADD COLUMN most int DEFAULT 8", &[])
        .await
        .unwrap();
    let width = pool
        .transaction(&TxOptions::new(), |tx| async move {
            Ok::<_, pgprovider::Error>(tx.query("SELECT * FROM q_altered", &[]).await?[0].len())
        })
        .await
        .unwrap();
    assert_eq!(width, 4);
}

#[tokio::test]
async fn a_small_cache_evicts_and_unnamed_mode_leaves_nothing_prepared() {
    let pool = pool("&statement_cache_capacity=2&pool_max_size=1").await;
    for i in 0..5 {
        pool.query(&format!("SELECT {i}"), &[]).await.unwrap();
    }
    let s = pool.stats().statement_cache;
    assert_eq!((s.misses, s.evictions), (5, 3));
    let prepared: i64 = pool
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        prepared <= 3,
        "evicted statements are closed on the server: {prepared}"
    );

    let unnamed = self::pool("&statement_cache_capacity=0").await;
    let mut c = unnamed.get().await.unwrap();
    let row = c
        .query_one(
            "SELECT $1::int8 + 1, $2 || '!', $3::float8 * 2, $4::bool, $5::bytea",
            &[&41_i64, &"hi", &1.5_f64, &true, &vec![1_u8, 2]],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 42);
    assert_eq!(row.get::<_, String>(1), "hi!");
    assert_eq!(row.get::<_, f64>(2), 3.0);
    let n = c
        .execute("SELECT generate_series(1, $1)", &[&3_i32])
        .await
        .unwrap();
    assert_eq!(n, 3);
    let mut stream = c
        .query_stream("SELECT generate_series(1, $1)", &[&4_i32])
        .await
        .unwrap();
    let mut seen = 0;
    while let Some(r) = stream.next().await {
        seen += r.unwrap().get::<_, i32>(0);
    }
    assert_eq!(seen, 10);
    drop(stream);
    let prepared: i64 = c
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(prepared, 0);
    let s = unnamed.stats().statement_cache;
    assert_eq!((s.hits, s.misses), (0, 0));
    // A type unnamed statements cannot declare is refused before anything is sent.
    let e = c
        .query(
            "SELECT $1",
            &[&std::collections::HashMap::<String, Option<String>>::new()],
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.hint().unwrap().contains("statement_cache_capacity=0"));
}

#[tokio::test]
async fn the_transaction_closure_commits_rolls_back_and_nests_savepoints() {
    let pool = pool("").await;
    table(&pool, "q_tx", "id int PRIMARY KEY").await;
    let opts = TxOptions::new();
    pool.transaction(&opts, |tx| async move {
        tx.execute("INSERT INTO q_tx VALUES (1)", &[]).await?;
        // A failing savepoint is undone; the transaction carries on.
        let inner: Result<(), pgprovider::Error> = tx
            .savepoint(|sp| async move {
                sp.execute("INSERT INTO q_tx VALUES (2)", &[]).await?;
                sp.savepoint(|deeper| async move {
                    deeper
                        .execute("INSERT INTO q_tx VALUES (3)", &[])
                        .await
                        .map(|_| ())
                })
                .await?;
                sp.execute("INSERT INTO q_tx VALUES (1)", &[]).await?; // duplicate
                Ok(())
            })
            .await;
        assert!(inner.unwrap_err().is_constraint_violation());
        tx.savepoint(|sp| async move { sp.execute("INSERT INTO q_tx VALUES (4)", &[]).await })
            .await?;
        Ok::<_, pgprovider::Error>(())
    })
    .await
    .unwrap();
    // A committed transaction goes back to the pool clean: no reset round trip.
    let resets = pool.stats().resets;
    for _ in 0..3 {
        pool.transaction(&opts, |tx| async move {
            tx.query("SELECT count(*) FROM q_tx", &[]).await
        })
        .await
        .unwrap();
    }
    assert_eq!(pool.stats().resets, resets);
    let ids: Vec<(i32,)> = pool
        .query_as("SELECT id FROM q_tx ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(ids, vec![(1,), (4,)]);

    // Err rolls back and returns the closure's own error.
    #[derive(Debug)]
    enum AppError {
        Db(pgprovider::Error),
        Refused,
    }
    impl From<pgprovider::Error> for AppError {
        fn from(e: pgprovider::Error) -> Self {
            AppError::Db(e)
        }
    }
    let r = pool
        .transaction(&opts, |tx| async move {
            tx.execute("INSERT INTO q_tx VALUES (5)", &[]).await?;
            Err::<(), _>(AppError::Refused)
        })
        .await;
    assert!(matches!(r, Err(AppError::Refused)));
    // A swallowed statement error does not let the commit pass silently.
    let r = pool
        .transaction(&opts, |tx| async move {
            tx.execute("INSERT INTO q_tx VALUES (6)", &[]).await?;
            let _ignored = tx.execute("INSERT INTO q_tx VALUES (1)", &[]).await;
            Ok::<_, AppError>(())
        })
        .await;
    let Err(AppError::Db(e)) = r else {
        panic!("{r:?}")
    };
    assert!(e.message().contains("rolled back, not committed"), "{e}");
    assert_eq!(e.sql_state(), Some(SqlState::UNIQUE_VIOLATION));
    let n: i64 = pool
        .query_one("SELECT count(*) FROM q_tx", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);

    // Read-only transactions refuse writes; a committed handle refuses further use.
    let ro = TxOptions::new()
        .with_read_only(true)
        .with_isolation(IsolationLevel::RepeatableRead);
    assert!(ro.begin_sql().contains("REPEATABLE READ READ ONLY"));
    let e = pool
        .transaction(&ro, |tx| async move {
            tx.execute("INSERT INTO q_tx VALUES (7)", &[]).await
        })
        .await
        .unwrap_err();
    assert!(e.is_read_only());
    let tx = pool.begin(&opts).await.unwrap();
    tx.commit().await.unwrap();
    assert!(
        tx.query("SELECT 1", &[])
            .await
            .unwrap_err()
            .message()
            .contains("ended")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serialization_conflicts_are_run_again_and_the_data_is_right() {
    let pool = pool("&pool_max_size=4").await;
    table(&pool, "q_counter", "id int PRIMARY KEY, n int NOT NULL").await;
    pool.execute("INSERT INTO q_counter VALUES (1, 0)", &[])
        .await
        .unwrap();
    let opts = TxOptions::new()
        .with_isolation(IsolationLevel::Serializable)
        .with_retries(
            pgprovider::retry::Backoff::new(
                Duration::from_millis(1),
                Duration::from_millis(20),
                50,
            )
            .unwrap(),
        );
    let attempts = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (pool, opts, attempts) = (pool.clone(), opts.clone(), attempts.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let attempts = attempts.clone();
                pool.transaction(&opts, move |tx| {
                    let attempts = attempts.clone();
                    async move {
                        attempts.fetch_add(1, Ordering::Relaxed);
                        let n: i32 = tx
                            .query_one("SELECT n FROM q_counter WHERE id = 1", &[])
                            .await?
                            .get(0);
                        tokio::task::yield_now().await;
                        tx.execute("UPDATE q_counter SET n = $1 WHERE id = 1", &[&(n + 1)])
                            .await?;
                        Ok::<_, pgprovider::Error>(())
                    }
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n: i32 = pool
        .query_one("SELECT n FROM q_counter", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 20, "every increment applied exactly once");
    assert!(attempts.load(Ordering::Relaxed) >= 20);

    // Without retries the conflict reaches the caller, classified.
    let once = opts
        .clone()
        .with_retries(pgprovider::retry::Backoff::never());
    let t1 = pool.begin(&once).await.unwrap();
    let t2 = pool.begin(&once).await.unwrap();
    t1.query("SELECT n FROM q_counter", &[]).await.unwrap();
    t2.query("SELECT n FROM q_counter", &[]).await.unwrap();
    t1.execute("UPDATE q_counter SET n = n + 1", &[])
        .await
        .unwrap();
    t1.commit().await.unwrap();
    let e = t2
        .execute("UPDATE q_counter SET n = n + 1", &[])
        .await
        .unwrap_err();
    assert!(e.is_transaction_conflict() && e.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_or_panicking_transactions_leave_nothing_open() {
    let app = "pgprovider-q-drop";
    let pool = pool(&format!("&application_name={app}&pool_max_size=2")).await;
    let observer = self::pool("").await;
    table(&pool, "q_drop", "id int").await;
    // Dropped while a statement runs.
    let p = pool.clone();
    let opts = TxOptions::new();
    let fut = p.transaction(&opts, |tx| async move {
        tx.execute("INSERT INTO q_drop VALUES (1)", &[]).await?;
        tx.execute("SELECT pg_sleep(30)", &[]).await
    });
    // Dropped once the server runs the sleep (not on a timer: a slow machine could still
    // be between statements then).
    let running = async {
        while sessions(&observer, app, "active").await == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        r = fut => panic!("the transaction ended: {r:?}"),
        r = tokio::time::timeout(Duration::from_secs(20), running) => r.unwrap(),
    }
    // Dropped between statements.
    let p = pool.clone();
    let (started, wait) = tokio::sync::oneshot::channel();
    let started = Arc::new(std::sync::Mutex::new(Some(started)));
    let fut = p.transaction(&opts, move |tx| {
        let started = started.clone();
        async move {
            tx.execute("INSERT INTO q_drop VALUES (2)", &[]).await?;
            if let Some(s) = started.lock().unwrap().take() {
                let _ = s.send(());
            }
            std::future::pending::<()>().await;
            Ok::<_, pgprovider::Error>(())
        }
    });
    tokio::select! {
        _ = fut => unreachable!(),
        _ = wait => {}
    }
    // Panicking.
    let p = pool.clone();
    let panicked = tokio::spawn(async move {
        p.transaction(&TxOptions::new(), |tx| async move {
            tx.execute("INSERT INTO q_drop VALUES (3)", &[]).await?;
            if tx.query("SELECT 1", &[]).await?.len() == 1 {
                panic!("application bug");
            }
            Ok::<_, pgprovider::Error>(())
        })
        .await
    })
    .await;
    assert!(panicked.unwrap_err().is_panic());
    // The pool rolls back what it gets back (reset), and recovers (or, when the statement
    // had to be cancelled, closes) what was mid-statement.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sessions(&observer, app, "idle in transaction").await
        + sessions(&observer, app, "active").await
        > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a transaction stayed open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let n: i64 = observer
        .query_one("SELECT count(*) FROM q_drop", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing of the abandoned transactions committed");
    let s = pool.stats();
    assert!(s.closed_error + s.recovered >= 1, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_cancel_on_the_server_and_leave_the_connection_clean() {
    let app = "pgprovider-q-timeout";
    let pool = pool(&format!(
        "&application_name={app}&pool_max_size=1&query_timeout=200ms"
    ))
    .await;
    let observer = self::pool("").await;
    let mut c = pool.get().await.unwrap();
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let e = c.execute("SELECT pg_sleep(30)", &[]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert!(e.message().contains("200ms"), "{e}");
    assert!(
        !c.is_broken(),
        "the cancel was confirmed: the connection stays"
    );
    assert_eq!(
        sessions(&observer, app, "active").await,
        0,
        "no longer running on the server"
    );
    // The same connection answers the next statement.
    let again: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid, again);
    // A per-connection override, restored when the connection goes back.
    c.set_query_timeout(None);
    c.execute("SELECT pg_sleep(0.3)", &[]).await.unwrap();
    drop(c);
    let c = pool.get().await.unwrap();
    assert_eq!(c.query_timeout(), Some(Duration::from_millis(200)));
    drop(c);
    assert_eq!(pool.stats().closed_error, 0);

    // A transaction deadline rolls back and says so.
    let slow = self::pool(&format!("&application_name={app}")).await;
    table(&slow, "q_deadline", "id int").await;
    let opts = TxOptions::new().with_timeout(Duration::from_millis(300));
    let e = slow
        .transaction(&opts, |tx| async move {
            tx.execute("INSERT INTO q_deadline VALUES (1)", &[]).await?;
            tx.execute("SELECT pg_sleep(30)", &[]).await
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    let e = slow
        .transaction(&opts, |tx| async move {
            tx.execute("INSERT INTO q_deadline VALUES (2)", &[]).await?;
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, pgprovider::Error>(0)
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert!(e.message().contains("deadline"));
    assert_eq!(sessions(&observer, app, "active").await, 0);
    let n: i64 = observer
        .query_one("SELECT count(*) FROM q_deadline", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);

    // The server-side statement_timeout from the configuration.
    let st = self::pool("&statement_timeout=100ms").await;
    let e = st.execute("SELECT pg_sleep(5)", &[]).await.unwrap_err();
    assert_eq!(e.sql_state(), Some(SqlState::QUERY_CANCELED));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_reply_is_lost_is_an_unknown_outcome() {
    let base = config("").await;
    let node = &base.nodes()[0];
    let target = format!("{}:{}", node.host(), node.port()).parse().unwrap();
    let proxy = pgprovider_testkit::FaultProxy::start(target).await.unwrap();
    let url = pgprovider_testkit::shared_url().await.unwrap();
    let url = url.replace(
        &format!(":{}/", node.port()),
        &format!(":{}/", proxy.port()),
    );
    let c = Config::from_url(&url).unwrap();
    let pool = Pool::new(TokioPostgres::new(), &c, &c.nodes()[0]);
    let direct = self::pool("").await;
    table(&direct, "q_unknown", "id int").await;
    let opts = TxOptions::new().with_timeout(Duration::from_millis(500));
    let proxy = Arc::new(proxy);
    let p = proxy.clone();
    let e = pool
        .transaction(&opts, move |tx| {
            let p = p.clone();
            async move {
                tx.execute("INSERT INTO q_unknown VALUES (1)", &[]).await?;
                p.blackhole();
                Ok::<_, pgprovider::Error>(())
            }
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{e:?}");
    assert!(!e.is_retryable());
    assert!(e.hint().unwrap().contains("may or may not"));
    proxy.heal();
    // The connection drops while committing: unknown too.
    let p = proxy.clone();
    let e = pool
        .transaction(&TxOptions::new(), move |tx| {
            let p = p.clone();
            async move {
                tx.execute("INSERT INTO q_unknown VALUES (2)", &[]).await?;
                p.reset_all();
                Ok::<_, pgprovider::Error>(())
            }
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{e:?}");
    assert!(e.message().contains("committing"), "{e}");
}

#[tokio::test]
async fn batches_are_pipelined_atomic_and_name_the_failing_statement() {
    let pool = pool("").await;
    table(&pool, "q_batch", "id int PRIMARY KEY, n int").await;
    let mut c = pool.get().await.unwrap();
    let results = c
        .batch(&[
            ("INSERT INTO q_batch VALUES ($1, 0)", &[&1_i32]),
            (
                "INSERT INTO q_batch VALUES ($1, 0), ($2, 0)",
                &[&2_i32, &3_i32],
            ),
            ("UPDATE q_batch SET n = n + $1", &[&5_i32]),
            ("SELECT id, n FROM q_batch ORDER BY id", &[]),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[1].rows_affected(), 2);
    assert_eq!(results[2].rows_affected(), 3);
    let rows: Vec<(i32, i32)> = results[3].rows().iter().map(|r| r.to().unwrap()).collect();
    assert_eq!(rows, vec![(1, 5), (2, 5), (3, 5)]);
    assert!(c.batch(&[]).await.unwrap().is_empty());

    let e = c
        .batch(&[
            ("INSERT INTO q_batch VALUES ($1, 0)", &[&4_i32]),
            ("INSERT INTO q_batch VALUES ($1, 0)", &[&1_i32]),
            ("UPDATE q_batch SET n = 0", &[]),
        ])
        .await
        .unwrap_err();
    assert!(
        e.message().starts_with("batch statement 2 of 3 failed"),
        "{e}"
    );
    assert!(e.message().contains("nothing of the batch was applied"));
    assert_eq!(e.sql_state(), Some(SqlState::UNIQUE_VIOLATION));
    let e = c
        .batch(&[("SELECT 1", &[]), ("SELEC 2", &[])])
        .await
        .unwrap_err();
    assert!(
        e.message()
            .contains("batch statement 2 of 2 failed to prepare"),
        "{e}"
    );
    let sum: i64 = c
        .query_one("SELECT sum(n) FROM q_batch", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, 15, "the failed batch changed nothing");
    assert!(!c.in_transaction());

    // Inside a transaction the batch joins it.
    drop(c);
    let tx = pool.begin(&TxOptions::new()).await.unwrap();
    tx.conn()
        .await
        .unwrap()
        .batch(&[
            ("UPDATE q_batch SET n = 0", &[]),
            ("DELETE FROM q_batch WHERE id = 1", &[]),
        ])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let sum: i64 = pool
        .query_one("SELECT sum(n) FROM q_batch", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_round_trips_100k_rows_exactly() {
    let pool = pool("").await;
    table(&pool, "q_copy", "id bigint, name text, score float8").await;
    let mut c = pool.get().await.unwrap();
    let types = [Type::INT8, Type::TEXT, Type::FLOAT8];
    let rows = (0..100_000_i64).map(|i| (i, format!("name-{i}"), i as f64 / 4.0));
    let n = c
        .copy_in(
            "COPY q_copy (id, name, score) FROM STDIN (FORMAT binary)",
            &types,
            rows,
        )
        .await
        .unwrap();
    assert_eq!(n, 100_000);
    let mut next = 0_i64;
    let out = c
        .copy_out(
            "COPY (SELECT * FROM q_copy ORDER BY id) TO STDOUT (FORMAT binary)",
            &types,
            |row| {
                assert_eq!(row.get::<i64>(0), next);
                assert_eq!(row.get::<String>(1), format!("name-{next}"));
                assert_eq!(row.get::<f64>(2), next as f64 / 4.0);
                next += 1;
                Ok(())
            },
        )
        .await
        .unwrap();
    assert_eq!((out, next), (100_000, 100_000));
    let mut csv = Vec::new();
    let bytes = c
        .copy_out_raw(
            "COPY (SELECT id FROM q_copy WHERE id < 3 ORDER BY id) TO STDOUT (FORMAT csv)",
            &mut csv,
        )
        .await
        .unwrap();
    assert_eq!(csv, b"0\n1\n2\n");
    assert_eq!(bytes, 6);

    // A failing source aborts the load: nothing from it lands, the connection stays usable.
    let source = futures_util::stream::iter((0..10_i64).map(|i| {
        if i == 5 {
            Err(pgprovider::Error::new(ErrorKind::Other, "source broke"))
        } else {
            Ok((i, "x".to_owned(), 0.0_f64))
        }
    }));
    let e = c
        .copy_in_stream("COPY q_copy FROM STDIN (FORMAT binary)", &types, source)
        .await
        .unwrap_err();
    assert!(e.message().contains("source broke"));
    let e = c
        .copy_in(
            "COPY q_copy FROM STDIN (FORMAT binary)",
            &types,
            [(1_i64, "short".to_owned())],
        )
        .await
        .unwrap_err();
    assert!(e.message().contains("2 values for 3 columns"), "{e}");
    assert!(!c.is_broken());
    let total: i64 = c
        .query_one("SELECT count(*) FROM q_copy", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 100_000);
    let e = c
        .copy_out(
            "COPY (SELECT 1 / 0) TO STDOUT (FORMAT binary)",
            &types,
            |_| Ok(()),
        )
        .await
        .unwrap_err();
    assert_eq!(e.sql_state().unwrap().code(), "22012");
    assert!(!c.is_broken());
    c.query("SELECT 1", &[]).await.unwrap();
    // A COPY the server refuses: the connection is replaced, not reused.
    let e = c
        .copy_in(
            "COPY q_nowhere FROM STDIN (FORMAT binary)",
            &types,
            Vec::<(i64, String, f64)>::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.sql_state().unwrap().code(), "42P01");
    assert!(c.is_broken());
    drop(c);
    assert_eq!(pool.stats().closed_error, 1);
    pool.query("SELECT 1", &[]).await.unwrap();
}

#[tokio::test]
async fn row_streams_end_cleanly_or_are_drained_before_reuse() {
    let pool = pool("&pool_max_size=1").await;
    let mut c = pool.get().await.unwrap();
    let mut s = c
        .query_stream("SELECT generate_series(1, 1000)", &[])
        .await
        .unwrap();
    let mut sum = 0_i64;
    while let Some(row) = s.next().await {
        sum += i64::from(row.unwrap().get::<_, i32>(0));
    }
    assert_eq!(s.rows_affected(), Some(1000));
    assert_eq!(sum, 500_500);
    drop(s);
    assert!(!c.is_broken());
    let mut s = c
        .query_stream("SELECT 1 / (g - 3) FROM generate_series(1, 5) g", &[])
        .await
        .unwrap();
    let mut errors = 0;
    while let Some(row) = s.next().await {
        errors += usize::from(row.is_err());
    }
    assert_eq!(errors, 1);
    drop(s);
    assert!(!c.is_broken());
    // Left half-way: the connection is not handed out again with rows still coming; the
    // pool drains the rest first and keeps it.
    let mut s = c
        .query_stream("SELECT generate_series(1, 100000)", &[])
        .await
        .unwrap();
    s.next().await.unwrap().unwrap();
    drop(s);
    assert!(c.is_broken() && c.interrupted());
    drop(c);
    let n: i64 = pool
        .query_one("SELECT count(*) FROM generate_series(1, 7)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        n, 7,
        "the next statement sees its own rows, none of the old ones"
    );
    let st = pool.stats();
    assert_eq!(
        (st.recovered, st.closed_error, st.created),
        (1, 0, 1),
        "{st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_failures_abandoned_savepoints_and_exhausted_retries() {
    let pool = pool("&pool_max_size=4").await;
    table(
        &pool,
        "q_deferred",
        "id int, CONSTRAINT q_deferred_u UNIQUE (id) DEFERRABLE INITIALLY DEFERRED",
    )
    .await;
    // A deferred constraint fails at COMMIT: a definite failure, not an unknown outcome.
    let e = pool
        .transaction(&TxOptions::new(), |tx| async move {
            tx.execute("INSERT INTO q_deferred VALUES (1), (1)", &[])
                .await
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("COMMIT failed"), "{e}");
    assert_eq!(
        e.db_fields().unwrap().constraint.as_deref(),
        Some("q_deferred_u")
    );
    // The same in a batch: the batch's own COMMIT fails, nothing is applied.
    let mut c = pool.get().await.unwrap();
    let e = c
        .batch(&[
            ("INSERT INTO q_deferred VALUES (2)", &[]),
            ("INSERT INTO q_deferred VALUES (2)", &[]),
        ])
        .await
        .unwrap_err();
    assert!(e.message().contains("COMMIT failed"), "{e}");
    let results = c
        .batch(&[("INSERT INTO q_deferred VALUES (3) RETURNING id", &[])])
        .await
        .unwrap();
    let rows = results.into_iter().next().unwrap().into_rows();
    assert!(format!("{:?}", rows[0]).contains("Row"));
    assert_eq!(
        rows.into_iter()
            .next()
            .unwrap()
            .into_inner()
            .get::<_, i32>(0),
        3
    );
    // Inside a transaction a failing batch statement aborts it, and says so.
    let tx = pool.begin(&TxOptions::new()).await.unwrap();
    let e = tx
        .conn()
        .await
        .unwrap()
        .batch(&[("SELECT 1/0", &[])])
        .await
        .unwrap_err();
    assert!(e.message().contains("the transaction is aborted"), "{e}");
    tx.rollback().await.unwrap();
    drop(c);

    // A savepoint future dropped half-way: the commit refuses.
    let tx = pool
        .begin(&TxOptions::new().with_deferrable(true).with_seed(7))
        .await
        .unwrap();
    assert_eq!(format!("{tx:?}"), "Tx");
    let sp = tx.savepoint(|sp| async move {
        sp.execute("INSERT INTO q_deferred VALUES (10)", &[])
            .await?;
        std::future::pending::<()>().await;
        Ok::<_, pgprovider::Error>(())
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(100), sp)
            .await
            .is_err()
    );
    let e = tx.commit().await.unwrap_err();
    assert!(
        e.message().contains("savepoint inside it was abandoned"),
        "{e}"
    );
    assert!(
        pool.query_opt("SELECT 1 FROM q_deferred WHERE id = 10", &[])
            .await
            .unwrap()
            .is_none()
    );

    // query_opt and query_as in a transaction; a statement after the deadline is refused.
    let tx = pool
        .begin(&TxOptions::new().with_timeout(Duration::from_millis(200)))
        .await
        .unwrap();
    assert!(
        tx.query_opt("SELECT 1 WHERE false", &[])
            .await
            .unwrap()
            .is_none()
    );
    let v: Vec<(i32,)> = tx.query_as("SELECT 5", &[]).await.unwrap();
    assert_eq!(v, vec![(5,)]);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        tx.query("SELECT 1", &[]).await.unwrap_err().kind(),
        ErrorKind::Timeout
    );
    tx.rollback().await.unwrap();
    assert!(tx.rollback().await.is_err(), "already ended");

    // Retries run out: the conflict reaches the caller with the attempt count.
    table(&pool, "q_hot", "id int PRIMARY KEY, n int").await;
    pool.execute("INSERT INTO q_hot VALUES (1, 0)", &[])
        .await
        .unwrap();
    let two = TxOptions::new()
        .with_isolation(IsolationLevel::RepeatableRead)
        .with_retries(
            pgprovider::retry::Backoff::new(Duration::from_millis(1), Duration::from_millis(2), 2)
                .unwrap(),
        )
        .with_seed(1);
    let e = lose_a_conflict(&pool, &two, false).await;
    assert!(e.is_transaction_conflict());
    let n: i32 = pool
        .query_one("SELECT n FROM q_hot", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "two attempts, each lost; none of ours applied");
    // A conflict swallowed by the closure is still seen at commit, and still re-run.
    let e = lose_a_conflict(&pool, &two, true).await;
    assert!(e.message().contains("on each of its 2 attempts"), "{e}");
    assert!(e.is_transaction_conflict());
    // A deadline that the next wait would pass ends the re-runs at once.
    let slow_retries = two
        .clone()
        .with_retries(
            pgprovider::retry::Backoff::new(Duration::from_secs(5), Duration::from_secs(5), 3)
                .unwrap(),
        )
        .with_seed(3)
        .with_timeout(Duration::from_millis(400));
    let e = lose_a_conflict(&pool, &slow_retries, false).await;
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
}

/// Runs a transaction on `q_hot` that always loses: another transaction updates the row
/// between its read and its write. With `swallow`, the closure hides the conflict and
/// returns `Ok`.
async fn lose_a_conflict(
    pool: &Pool<TokioPostgres>,
    opts: &TxOptions,
    swallow: bool,
) -> pgprovider::Error {
    pool.transaction(opts, |tx| {
        let pool = pool.clone();
        async move {
            tx.query("SELECT n FROM q_hot", &[]).await?;
            pool.execute("UPDATE q_hot SET n = n + 1", &[]).await?;
            let r = tx.execute("UPDATE q_hot SET n = n + 10", &[]).await;
            if swallow { Ok(()) } else { r.map(|_| ()) }
        }
    })
    .await
    .unwrap_err()
}

#[tokio::test]
async fn unnamed_batches_and_copy_edge_cases() {
    let pool = pool("&statement_cache_capacity=0").await;
    table(&pool, "q_unnamed", "id int, name text").await;
    let mut c = pool.get().await.unwrap();
    let results = c
        .batch(&[
            ("INSERT INTO q_unnamed VALUES ($1, $2)", &[&1_i32, &"a"]),
            ("SELECT name FROM q_unnamed WHERE id = $1", &[&1_i32]),
        ])
        .await
        .unwrap();
    assert_eq!(results[1].rows()[0].get::<_, &str>(0), "a");
    let e = c
        .batch(&[(
            "SELECT $1",
            &[&std::collections::HashMap::<String, Option<String>>::new()],
        )])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);

    // COPY from boxed values and borrowed rows.
    let types = [Type::INT4, Type::TEXT];
    let boxed: Vec<Vec<Box<dyn pgprovider_tokio_postgres::types::ToSql + Send + Sync>>> =
        vec![vec![Box::new(2_i32), Box::new("b".to_owned())]];
    let n = c
        .copy_in("COPY q_unnamed FROM STDIN (FORMAT binary)", &types, boxed)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let owned = [(3_i32, "c".to_owned())];
    let n = c
        .copy_in(
            "COPY q_unnamed FROM STDIN (FORMAT binary)",
            &types,
            owned.iter(),
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    // An export stopped by its callback, and failing exports.
    let e = c
        .copy_out("COPY q_unnamed TO STDOUT (FORMAT binary)", &types, |_| {
            Err(pgprovider::Error::new(ErrorKind::Other, "enough"))
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("stopped at row 1"), "{e}");
    assert!(c.is_broken(), "rows were still coming");
    drop(c);
    let mut c = pool.get().await.unwrap();
    let mut out = Vec::new();
    let e = c
        .copy_out_raw("COPY (SELECT 1/0) TO STDOUT", &mut out)
        .await
        .unwrap_err();
    assert_eq!(e.sql_state().unwrap().code(), "22012");
    let e = c
        .copy_out_raw("COPY q_nowhere TO STDOUT", &mut out)
        .await
        .unwrap_err();
    assert_eq!(e.sql_state().unwrap().code(), "42P01");
    assert!(!c.is_broken());
    struct Full;
    impl tokio::io::AsyncWrite for Full {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Ready(Err(std::io::Error::other("disk full")))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }
    let e = c
        .copy_out_raw("COPY q_unnamed TO STDOUT", &mut Full)
        .await
        .unwrap_err();
    assert!(e.message().contains("disk full"), "{e}");
    let stream = {
        let mut c = pool.get().await.unwrap();
        let s = format!("{:?}", c.query_stream("SELECT 1", &[]).await.unwrap());
        s
    };
    assert!(stream.contains("PgRowStream"));
}

#[tokio::test]
async fn a_batch_heals_a_stale_statement_and_runs_again() {
    let pool = pool("&pool_max_size=2").await;
    table(&pool, "q_batch_stale", "id int").await;
    let mut c = pool.get().await.unwrap();
    c.batch(&[("SELECT * FROM q_batch_stale", &[])])
        .await
        .unwrap();
    let mut other = pool.get().await.unwrap();
    other
        .execute("ALTER TABLE q_batch_stale ADD COLUMN extra int", &[])
        .await
        .unwrap();
    drop(other);
    let before = pool.stats().statement_cache.invalidations;
    let r = c
        .batch(&[
            ("INSERT INTO q_batch_stale VALUES (1, 2)", &[]),
            ("SELECT * FROM q_batch_stale", &[]),
        ])
        .await
        .unwrap();
    assert_eq!(r[1].rows()[0].len(), 2);
    assert_eq!(pool.stats().statement_cache.invalidations, before + 1);
    let n: i64 = c
        .query_one("SELECT count(*) FROM q_batch_stale", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the first, rolled-back run left nothing behind");
}

/// Callers with deadlines of 1 to 5 ms over a pool of 4: plain queries, transactions and
/// session settings abandoned at every point. Afterwards no session of the pool is idle in
/// transaction or carries a setting, every change reported committed is there, every change
/// present was reported committed or unknown (the caller gave up), and the pool still holds
/// its connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_deadlines_leaves_every_session_clean_and_every_commit_accounted_for() {
    let app = "pgprovider-deadline-storm";
    let pool = pool(&format!(
        "&application_name={app}&pool_max_size=4&pool_min_idle=4"
    ))
    .await;
    let observer = self::pool("").await;
    table(&pool, "q_storm", "id int PRIMARY KEY").await;
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Fate {
        Committed,
        Unknown,
        Failed,
    }
    let fates = Arc::new(std::sync::Mutex::new(Vec::new()));
    let next = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for t in 0..16_u64 {
        let (pool, fates, next) = (pool.clone(), fates.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..60_u64 {
                let deadline = Duration::from_millis(1 + (t + i) % 5);
                match (t + i) % 4 {
                    0 => {
                        let id = next.fetch_add(1, Ordering::Relaxed) as i32;
                        let p = pool.clone();
                        let r = tokio::time::timeout(deadline, async move {
                            p.transaction(&TxOptions::new(), |tx| async move {
                                tx.execute("INSERT INTO q_storm VALUES ($1)", &[&id])
                                    .await?;
                                tx.query("SELECT pg_sleep(0.001)", &[]).await?;
                                Ok::<_, pgprovider::Error>(())
                            })
                            .await
                        })
                        .await;
                        let fate = match r {
                            Ok(Ok(())) => Fate::Committed,
                            Err(_) => Fate::Unknown,
                            Ok(Err(e)) if e.kind() == ErrorKind::OutcomeUnknown => Fate::Unknown,
                            Ok(Err(_)) => Fate::Failed,
                        };
                        fates.lock().unwrap().push((id, fate));
                    }
                    1 => {
                        let _ = tokio::time::timeout(deadline, async {
                            let mut c = pool.get().await?;
                            c.simple_query(
                                "SET statement_timeout = '1234s'; SET search_path = nowhere",
                            )
                            .await?;
                            c.query("SELECT pg_sleep(0.002)", &[]).await
                        })
                        .await;
                    }
                    2 => {
                        let _ = tokio::time::timeout(deadline, async {
                            let mut c = pool.get().await?;
                            c.simple_query("BEGIN; SELECT pg_sleep(0.002)").await
                        })
                        .await;
                    }
                    _ => {
                        let _ = tokio::time::timeout(deadline, pool.query("SELECT 1", &[])).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every connection back and settled: none active or idle in transaction.
    let until = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let busy = sessions(&observer, app, "active").await
            + sessions(&observer, app, "idle in transaction").await
            + sessions(&observer, app, "idle in transaction (aborted)").await;
        if busy == 0 && pool.stats().in_use == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "sessions stayed busy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every pooled session carries its defaults: check them all out at once.
    let s = pool.stats();
    let mut held = Vec::new();
    for _ in 0..s.size.max(1) {
        held.push(pool.get().await.unwrap());
    }
    for c in &mut held {
        let row = &c
            .simple_query(
                "SELECT current_setting('statement_timeout'), current_setting('search_path'), \
                 now() = statement_timestamp()",
            )
            .await
            .unwrap()[0];
        assert_eq!(row.get(0), Some("0"));
        assert_eq!(row.get(1), Some("\"$user\", public"));
        assert_eq!(row.get(2), Some("t"), "no transaction open");
    }
    drop(held);
    let present: Vec<i32> = observer
        .query("SELECT id FROM q_storm", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let fates = fates.lock().unwrap().clone();
    for (id, fate) in &fates {
        let there = present.contains(id);
        match fate {
            Fate::Committed => assert!(there, "{id} was reported committed but is missing"),
            Fate::Failed => assert!(!there, "{id} was reported failed but committed"),
            Fate::Unknown => {}
        }
    }
    let committed = fates.iter().filter(|(_, f)| *f == Fate::Committed).count();
    let s = pool.stats();
    println!(
        "storm: {} transactions, {committed} committed, {} present; pool {s:?}",
        fates.len(),
        present.len()
    );
    // Kept, or refilled to min_idle by the pool's maintenance (a connection whose statement
    // had to be cancelled on a loaded machine is replaced).
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while pool.stats().size < 4 {
        assert!(
            tokio::time::Instant::now() < until,
            "the pool kept (or refilled) its connections: {:?}",
            pool.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        s.recovered > 0,
        "statements were abandoned and recovered: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_a_read_only_transaction_fails_once_and_is_not_run_again() {
    use pgprovider::provider::{Provider, TopologyOptions};
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    let c = common::config("").await;
    let provider = Provider::new(
        TokioPostgres::new(),
        &c,
        TopologyOptions::default().with_failover_timeout(std::time::Duration::from_secs(30)),
    );
    let runs = AtomicU32::new(0);
    let runs = &runs;
    let started = std::time::Instant::now();
    let e = provider
        .transaction(
            &pgprovider::TxOptions::new().with_read_only(true),
            |tx| async move {
                runs.fetch_add(1, SeqCst);
                tx.execute("CREATE TEMP TABLE ro_refused (id int)", &[])
                    .await
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.sql_state(),
        Some(pgprovider::SqlState::READ_ONLY_SQL_TRANSACTION),
        "{e}"
    );
    assert_eq!(
        runs.load(SeqCst),
        1,
        "the caller's own read-only transaction is not re-run"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "no retry loop"
    );
}

/// Code written once against `Client`, run on every shared handle.
async fn through_client<C>(db: &C, what: &str)
where
    C: pgprovider::Client,
    C::Row: pgprovider::Column<i64>,
{
    const THREE: &str = "SELECT x FROM (VALUES (1::bigint), (2::bigint), (3::bigint)) v(x)";
    let rows: Vec<(i64,)> = db.query_as(THREE, &[]).await.unwrap();
    assert_eq!(rows, vec![(1,), (2,), (3,)], "{what}");
    let one = db
        .query_one("SELECT 7::bigint", &[])
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        pgprovider::Column::<i64>::column(&one, 0).unwrap(),
        7,
        "{what}"
    );
    let none = db
        .query_opt("SELECT 1::bigint WHERE false", &[])
        .await
        .unwrap();
    assert!(none.is_none(), "{what}");
    let e = db.query_one(THREE, &[]).await.err().unwrap();
    assert_eq!(e.kind(), ErrorKind::RowCount, "{what}: {e}");
    let e = db.query_opt(THREE, &[]).await.err().unwrap();
    assert_eq!(e.kind(), ErrorKind::RowCount, "{what}: {e}");
    assert_eq!(db.execute("SELECT 1", &[]).await.unwrap(), 1, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_trait_runs_on_the_provider_its_handles_pools_transactions_and_tenants() {
    use pgprovider::provider::{Provider, TopologyOptions};
    use pgprovider::tenant::{Strategy, TenancyOptions};
    let url = pgprovider_testkit::shared_url().await.unwrap();
    let provider = Provider::from_url(TokioPostgres::new(), &url).unwrap();
    through_client(&provider, "provider").await;
    through_client(&provider.read(), "read handle").await;
    through_client(&provider.primary().idempotent(), "primary handle").await;
    let pool = Pool::from_config(TokioPostgres::new(), provider.config());
    through_client(&pool, "pool").await;
    provider
        .transaction(&pgprovider::TxOptions::new(), |tx| async move {
            through_client(&tx, "transaction").await;
            Ok::<(), pgprovider::Error>(())
        })
        .await
        .unwrap();
    let stats = provider.stats();
    assert_eq!(stats.len(), 1);
    assert!(stats[0].1.acquired > 0, "{stats:?}");
    // Tenants from a provider built with tenancy.
    let c = common::config("").await;
    let tenanted = Provider::builder(TokioPostgres::new(), &c)
        .topology(TopologyOptions::default())
        .hooks(pgprovider::observe::Hooks::default())
        .tenancy(TenancyOptions::new(Strategy::Schema))
        .build();
    let tenants = tenanted.tenants().unwrap();
    tenants.create_tenant("client_trait", None).await.unwrap();
    through_client(&tenanted.tenant("client_trait").unwrap(), "tenant").await;
    tenants.drop_tenant("client_trait").await.unwrap();
    // A provider without tenancy says how to get one.
    let e = provider.tenant("x").err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.hint().unwrap().contains(".tenancy("), "{e:?}");
    provider.close().await;
    let e = provider.query("SELECT 1", &[]).await.err().unwrap();
    assert!(e.to_string().contains("closed"), "{e}");
    tenanted.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_read_only_by_default_refuses_writes_at_once_without_retries() {
    use pgprovider::provider::{Provider, TopologyOptions};
    let admin = pool("").await;
    let db = format!("pgprovider_ro_{}", std::process::id());
    admin
        .execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"), &[])
        .await
        .unwrap();
    admin
        .execute(&format!("CREATE DATABASE {db}"), &[])
        .await
        .unwrap();
    admin
        .execute(
            &format!("ALTER DATABASE {db} SET default_transaction_read_only = on"),
            &[],
        )
        .await
        .unwrap();
    let url = pgprovider_testkit::shared_url().await.unwrap();
    let (base, query) = url.split_once('?').unwrap_or((&url, ""));
    let (host, _) = base.rsplit_once('/').unwrap();
    let c = Config::from_url(&format!("{host}/{db}?{query}")).unwrap();
    let provider = Provider::new(
        TokioPostgres::new(),
        &c,
        TopologyOptions::default()
            .with_monitor_interval(Duration::from_millis(100))
            .with_failover_timeout(Duration::from_secs(30)),
    );
    provider
        .monitor()
        .wait_for(Duration::from_secs(10), |s| s[0].read_only)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let e = provider
        .execute("CREATE TABLE refused (id int)", &[])
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("the primary itself refused it"),
        "{e}"
    );
    let runs = AtomicU32::new(0);
    let runs = &runs;
    let e = provider
        .transaction(&TxOptions::new(), |tx| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tx.execute("CREATE TABLE refused (id int)", &[]).await
        })
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("the primary itself refused it"),
        "{e}"
    );
    assert!(
        runs.load(Ordering::SeqCst) <= 2,
        "not re-run until the failover timeout"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "no retry loop");
    provider.close().await;
    admin
        .execute(&format!("DROP DATABASE {db} WITH (FORCE)"), &[])
        .await
        .unwrap();
}

/// Behind a transaction pooler, COPY (prepared in one exchange, run in another) is refused
/// outside a transaction and runs inside one; a row stream outside one cannot carry the
/// settings; the multiplexed mode and listeners refuse the pooler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_streams_listeners_and_mux_behind_a_transaction_pooler() {
    use pgprovider_testkit::{PoolMode, shared_pgbouncer_url};
    let base = shared_pgbouncer_url(PoolMode::Transaction).await.unwrap();
    let config =
        Config::from_url(&format!("{base}?pooler=transaction&statement_timeout=5s")).unwrap();
    let pool = Pool::new(TokioPostgres::new(), &config, &config.nodes()[0]);
    let mut c = pool.get().await.unwrap();
    c.execute("DROP TABLE IF EXISTS q_pooler_copy", &[])
        .await
        .unwrap();
    c.execute("CREATE TABLE q_pooler_copy (id int4)", &[])
        .await
        .unwrap();
    let copy = "COPY q_pooler_copy (id) FROM STDIN (FORMAT binary)";
    let e = c
        .copy_in(copy, &[Type::INT4], (0..3).map(|i: i32| (i,)))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.hint().unwrap().contains("inside a transaction"), "{e:?}");
    c.execute("BEGIN", &[]).await.unwrap();
    let n = c
        .copy_in(copy, &[Type::INT4], (0..3).map(|i: i32| (i,)))
        .await
        .unwrap();
    assert_eq!(n, 3);
    let mut out = Vec::new();
    c.copy_out_raw("COPY q_pooler_copy TO STDOUT", &mut out)
        .await
        .unwrap();
    assert_eq!(out, b"0\n1\n2\n");
    c.execute("COMMIT", &[]).await.unwrap();
    let e = c
        .query_stream("SELECT * FROM q_pooler_copy", &[])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    c.execute("DROP TABLE q_pooler_copy", &[]).await.unwrap();
    drop(c);
    let params = config.connect_params(&config.nodes()[0]).await.unwrap();
    let e = pgprovider_tokio_postgres::Multiplexed::connect(params.clone(), 1)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    let e = pgprovider_tokio_postgres::Listener::connect(vec![params])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("LISTEN"), "{e}");
}

/// Behind a transaction pooler, a column of a type tokio-postgres does not know (an enum)
/// is looked up inside the transaction that reads it, and the lookup's named statements
/// are gone from every server session once it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_types_inside_transactions_behind_a_transaction_pooler() {
    use pgprovider_testkit::{PoolMode, shared_pgbouncer_url};
    let base = shared_pgbouncer_url(PoolMode::Transaction).await.unwrap();
    let config = Config::from_url(&format!("{base}?pooler=transaction&pool_max_size=2")).unwrap();
    let pool = Pool::new(TokioPostgres::new(), &config, &config.nodes()[0]);
    pool.execute(
        "DO $$ BEGIN CREATE TYPE q_pooler_mood AS ENUM ('ok', 'sad'); \
         EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        &[],
    )
    .await
    .unwrap();
    for _ in 0..3 {
        let n = pool
            .transaction(&TxOptions::default(), |tx| async move {
                let rows = tx
                    .query("SELECT 'sad'::q_pooler_mood AS m, 1 AS n", &[])
                    .await?;
                Ok::<_, pgprovider::Error>(rows.len())
            })
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    // No server session keeps a statement: six open transactions hold all six of
    // PgBouncer's sessions, and each is looked at.
    let six = Config::from_url(&format!("{base}?pooler=transaction&pool_max_size=6")).unwrap();
    let held = Pool::new(TokioPostgres::new(), &six, &six.nodes()[0]);
    let mut conns = Vec::new();
    let mut pids = std::collections::HashSet::new();
    for _ in 0..6 {
        let mut c = held.get().await.unwrap();
        c.execute("BEGIN", &[]).await.unwrap();
        let row = c
            .query_one(
                "SELECT count(*), string_agg(name || ': ' || left(statement, 60), ' | '), \
                 pg_backend_pid() FROM pg_prepared_statements \
                 WHERE statement NOT LIKE '%pg_prepared%'",
                &[],
            )
            .await
            .unwrap();
        let (left, names, pid): (i64, Option<String>, i32) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            left, 0,
            "lookup statements were left on a server session: {names:?}"
        );
        pids.insert(pid);
        conns.push(c);
    }
    assert_eq!(pids.len(), 6, "every server session was looked at");
    for mut c in conns {
        c.execute("ROLLBACK", &[]).await.unwrap();
    }
}

/// Adaptive pipelining (`pool_pipeline`): with more readers than connections, reads go onto
/// busy connections; each gets its own reply, and none ever runs inside another holder's
/// transaction or after another holder's `SET`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_pipelining_shares_only_clean_sessions_and_keeps_replies_apart() {
    use std::sync::atomic::AtomicBool;
    let pool = pool("&pool_max_size=3&pool_pipeline=8").await;
    let stop = Arc::new(AtomicBool::new(false));
    // Holders that leave state on their session while they hold it: a transaction with a
    // SET LOCAL, and a session SET (reset on return).
    let mut dirty = Vec::new();
    for kind in ["tx", "session"] {
        let (pool, stop) = (pool.clone(), stop.clone());
        dirty.push(tokio::spawn(async move {
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut c = pool.get().await.unwrap();
                let (set, end) = match kind {
                    "tx" => ("BEGIN; SET LOCAL app.mark = 'tx'", "COMMIT"),
                    _ => ("SET app.mark = 'session'", "SELECT 1"),
                };
                c.simple_query(set).await.unwrap();
                c.query("SELECT pg_sleep(0.002)", &[]).await.unwrap();
                c.simple_query(end).await.unwrap();
                rounds += 1;
            }
            rounds
        }));
    }
    let mut readers = Vec::new();
    for t in 0..64_i32 {
        let (pool, stop) = (pool.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut i = 0_i32;
            while !stop.load(Ordering::Relaxed) {
                let n = t * 1_000_000 + i;
                let rows = pool
                    .query(
                        "SELECT $1::int AS n, current_setting('app.mark', true) AS mark",
                        &[&n],
                    )
                    .await
                    .unwrap();
                assert_eq!(rows.len(), 1);
                assert_eq!(
                    rows[0].get::<_, i32>("n"),
                    n,
                    "a reply went to another read"
                );
                let mark: Option<String> = rows[0].get("mark");
                assert!(
                    mark.as_deref().unwrap_or("").is_empty(),
                    "a read saw another holder's state: {mark:?}"
                );
                i += 1;
            }
            i
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap();
    }
    for d in dirty {
        assert!(
            d.await.unwrap() > 0,
            "a dirty holder never got a connection"
        );
    }
    let s = pool.stats();
    assert!(s.pipelined > 0, "nothing was pipelined: {s:?}");
    assert!(s.size <= 3, "{s:?}");
    assert!(reads > 1000, "only {reads} reads");
    // No session outlives the pool: a pipeline does not keep its connection open.
    let app = "pgprovider-pipeline-close";
    let closing = pool_with_app(app, "&pool_max_size=2&pool_pipeline=8").await;
    saturate(&closing, "SELECT 1", 16, 300).await;
    assert!(closing.stats().pipelined > 0, "{:?}", closing.stats());
    closing.close().await;
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = pool
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{left} sessions left after close"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The pool is whole afterwards: every connection idle and clean.
    let mut c = pool.get().await.unwrap();
    let mark: Option<String> = c
        .query_one("SELECT current_setting('app.mark', true)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(mark.unwrap_or_default().is_empty());
    drop(c);
    pool.close().await;
}

/// Pipelining is a setting: off by default, refused with a reason where it cannot work, and
/// a statement that is not a plain read, or that runs long, is never pipelined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_pipelining_is_off_by_default_and_skips_writes_and_slow_reads() {
    // Off by default: the same load pipelines nothing.
    let plain = pool("&pool_max_size=2").await;
    assert_eq!(plain.config().pool().pipeline(), None);
    saturate(&plain, "SELECT 1", 32, 300).await;
    assert_eq!(plain.stats().pipelined, 0);
    plain.close().await;

    let err = pgprovider::Config::from_url("postgres://h/db?pooler=transaction&pool_pipeline=8")
        .unwrap_err()
        .to_string();
    assert!(err.contains("pool_pipeline"), "{err}");
    let err = pgprovider::Config::from_url("postgres://h/db?pool_pipeline=0")
        .unwrap_err()
        .to_string();
    assert!(err.contains("pool_pipeline=off"), "{err}");
    assert_eq!(
        pgprovider::Config::from_url("postgres://h/db?pool_pipeline=on")
            .unwrap()
            .pool()
            .pipeline(),
        Some(pgprovider::config::DEFAULT_PIPELINE_DEPTH)
    );

    // Writes through `query` (not plain reads) take a connection of their own.
    let pool = pool("&pool_max_size=2&pool_pipeline=8").await;
    table(&pool, "pipeline_writes", "n int").await;
    saturate(
        &pool,
        "INSERT INTO pipeline_writes VALUES (1) RETURNING n",
        32,
        300,
    )
    .await;
    saturate(
        &pool,
        "WITH i AS (INSERT INTO pipeline_writes VALUES (2) RETURNING n) SELECT n FROM i",
        32,
        300,
    )
    .await;
    saturate(
        &pool,
        "SELECT n FROM pipeline_writes LIMIT 1 FOR UPDATE",
        32,
        300,
    )
    .await;
    assert_eq!(pool.stats().pipelined, 0, "a write was pipelined");
    // A read that runs long is learnt (per connection) and then no longer pipelined nor
    // shared: after a few rounds, nothing more is pipelined for it.
    saturate(&pool, "SELECT pg_sleep(0.01)", 16, 400).await;
    let before = pool.stats().pipelined;
    saturate(&pool, "SELECT pg_sleep(0.01)", 16, 400).await;
    let after = pool.stats().pipelined;
    assert!(
        after - before <= 4,
        "slow reads kept being pipelined: {before} then {after}"
    );
    pool.close().await;
}

/// A pool on the shared server whose sessions carry `app` as their application name.
async fn pool_with_app(app: &str, extra: &str) -> Pool<TokioPostgres> {
    let c = config(&format!("&application_name={app}{extra}")).await;
    Pool::new(TokioPostgres::new(), &c, &c.nodes()[0])
}

/// Runs `sql` from `tasks` tasks for `ms` milliseconds.
async fn saturate(pool: &Pool<TokioPostgres>, sql: &'static str, tasks: usize, ms: u64) {
    let until = tokio::time::Instant::now() + Duration::from_millis(ms);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let pool = pool.clone();
        set.spawn(async move {
            while tokio::time::Instant::now() < until {
                pool.query(sql, &[]).await.unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

/// The provider's read route pipelines too: reads through `provider.read()` find the
/// node's pool saturated and go onto busy connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_providers_reads_are_pipelined_when_its_pool_is_saturated() {
    use pgprovider::provider::{Provider, TopologyOptions};
    let c = config("&pool_max_size=2&pool_pipeline=8").await;
    let provider = Provider::new(TokioPostgres::new(), &c, TopologyOptions::default());
    provider
        .monitor()
        .wait_for_primary(Duration::from_secs(10))
        .await
        .unwrap();
    let until = tokio::time::Instant::now() + Duration::from_millis(500);
    let mut set = tokio::task::JoinSet::new();
    for t in 0..32_i32 {
        let p = provider.clone();
        set.spawn(async move {
            let mut i = 0;
            while tokio::time::Instant::now() < until {
                let n = t * 1_000_000 + i;
                let rows = p.read().query("SELECT $1::int", &[&n]).await.unwrap();
                assert_eq!(rows[0].get::<_, i32>(0), n);
                i += 1;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let stats = provider.stats();
    assert!(stats[0].1.pipelined > 0, "{stats:?}");
    provider.close().await;
}

/// Auto-scaling (`pool_autoscale`): a light load leaves the pool at its floor; callers
/// that wait grow it in steps of `pool_autoscale_step`, no faster than
/// `pool_autoscale_cooldown`, up to `pool_max_size`; an idle window shrinks it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_scaling_grows_in_steps_under_waits_and_shrinks_after_an_idle_window() {
    let pool = pool(
        "&pool_autoscale=on&pool_min_idle=1&pool_max_size=9&pool_autoscale_step=2\
         &pool_autoscale_cooldown=150ms&pool_autoscale_wait=2ms&pool_autoscale_idle=500ms",
    )
    .await;
    // The same load against a wait threshold it never reaches: no growth.
    let patient = pool_with_app(
        "pgprovider-autoscale-patient",
        "&pool_autoscale=on&pool_max_size=9&pool_autoscale_wait=10s",
    )
    .await;
    saturate(&patient, "SELECT pg_sleep(0.002)", 16, 400).await;
    assert_eq!(patient.stats().autoscale_grows, 0, "{:?}", patient.stats());
    patient.close().await;
    let size = || pool.stats().max_size;
    assert_eq!(size(), 1);
    // One task never waits: no growth.
    saturate(&pool, "SELECT pg_sleep(0.001)", 1, 300).await;
    assert_eq!((size(), pool.stats().autoscale_grows), (1, 0));

    // Sixteen tasks wait: growth in steps, cooldowns apart, up to the maximum.
    let load = {
        let pool = pool.clone();
        tokio::spawn(async move { saturate(&pool, "SELECT pg_sleep(0.002)", 16, 2500).await })
    };
    let mut seen = vec![(tokio::time::Instant::now(), size())];
    while !load.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let s = size();
        if s != seen.last().unwrap().1 {
            seen.push((tokio::time::Instant::now(), s));
        }
    }
    load.await.unwrap();
    let sizes: Vec<u64> = seen.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        *sizes.last().unwrap(),
        9,
        "did not reach the maximum: {sizes:?}"
    );
    for w in seen.windows(2) {
        assert!(w[1].1 > w[0].1, "shrank under load: {sizes:?}");
    }
    // Steps of two from 1 to 9: four growths, at least three cooldowns apart in all
    // (the sampling adds its own delays, never removes them).
    assert_eq!(pool.stats().autoscale_grows, 4, "{sizes:?}");
    let span = seen.last().unwrap().0 - seen[1].0;
    assert!(
        span >= Duration::from_millis(3 * 150 - 20),
        "four growths within {span:?}: {sizes:?}"
    );
    assert!(pool.stats().size <= 9);

    // Idle: shrinks back to the floor, a step per idle window.
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while (size() > 1 || pool.stats().size > 1) && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = pool.stats();
    assert_eq!(s.max_size, 1, "{s:?}");
    assert!(s.autoscale_shrinks >= 4, "{s:?}");
    assert!(s.size <= 1, "{s:?}");
    pool.close().await;
}

/// The query timeout bounds each wait for a stream's next row (a progress bound): a server
/// that stalls mid-stream ends the stream with a timeout, and the connection is not reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stalls_mid_way_ends_with_a_timeout() {
    use futures_util::StreamExt;
    let pool = pool("&query_timeout=250ms&pool_max_size=1").await;
    let mut c = pool.get().await.unwrap();
    let started = std::time::Instant::now();
    // Rows of 20 kB, which the server sends as they are made; the third takes 2 s.
    let mut s = c
        .query_stream(
            "SELECT x, repeat('x', 20000), CASE WHEN x > 2 THEN pg_sleep(2) END::text \
             FROM generate_series(1, 3) x",
            &[],
        )
        .await
        .unwrap();
    let mut rows = 0;
    let e = loop {
        match s.next().await {
            Some(Ok(_)) => rows += 1,
            Some(Err(e)) => break e,
            None => panic!("the stream ended without the stall"),
        }
    };
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.to_string().contains("made no progress"), "{e}");
    assert!(rows < 3, "{rows}");
    assert!(s.next().await.is_none(), "nothing after the stall");
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    drop(s);
    assert!(c.is_broken());
    drop(c);
    let st = pool.stats();
    assert_eq!(st.closed_error, 1, "{st:?}");
}

/// The routed handles' `query_opt`, cloned and `idempotent` handles, and reads after a
/// consistency token, on the shared server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_handles_answer_query_opt_and_reads_after_a_token() {
    use pgprovider::provider::{Provider, TopologyOptions};
    let config = common::config("").await;
    let provider = Provider::new(TokioPostgres::new(), &config, TopologyOptions::default());
    let primary = provider.primary();
    let retried = primary.clone().idempotent();
    let shown = format!("{retried:?}");
    assert!(shown.contains("idempotent: true"), "{shown}");
    assert!(
        primary
            .query_opt("SELECT 1 WHERE false", &[])
            .await
            .unwrap()
            .is_none()
    );
    let row = provider
        .read()
        .query_opt("SELECT 7", &[])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
    let e = retried
        .query_opt("SELECT generate_series(1, 2)", &[])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RowCount, "{e}");
    let token = provider.consistency_token().await.unwrap();
    let rows = provider
        .read_after(token, Duration::from_secs(5))
        .query("SELECT 1", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    provider.close().await;
}
