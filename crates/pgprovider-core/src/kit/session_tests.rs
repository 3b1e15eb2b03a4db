//! Tests of the kit's [`Session`](super::Session).
use super::*;
use crate::{Host, SqlState};

fn params(pooler: PoolerMode, settings: &[(&str, &str)]) -> ConnectParams {
    let mut p = ConnectParams::new(Host::Tcp("db".into()), 6432, "app", "orders");
    p.pooler = pooler;
    p.settings = settings
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    p
}

fn token() -> CancelToken {
    CancelToken::new(|| async { Ok(()) })
}

/// A driver whose errors are pgprovider's own.
struct Plain;

impl DriverErrors for Plain {
    type Error = Error;
    fn is_cancel_reply(&self, e: &Error) -> bool {
        e.sql_state() == Some(SqlState::QUERY_CANCELED)
    }
    fn breaks_connection(&self, e: &Error) -> bool {
        e.is_connection_lost()
    }
    fn convert(&self, e: Error) -> Error {
        e
    }
}

#[test]
fn the_pooler_mode_decides_wrapping_settings_and_reset() {
    let direct = Session::new(&params(PoolerMode::None, &[]), token());
    assert!(!direct.needs_wrap(false) && direct.local_settings().is_none());
    assert_eq!(&*direct.reset_sql(), RESET_RECIPE);
    let mut tx = Session::new(
        &params(PoolerMode::Transaction, &[("statement_timeout", "5000")]),
        token(),
    );
    assert_eq!(tx.node(), "db:6432");
    assert!(tx.needs_wrap(true), "settings need a transaction");
    assert!(
        tx.wrap_begin()
            .starts_with("BEGIN; SELECT pg_catalog.set_config"),
        "{}",
        tx.wrap_begin()
    );
    assert_eq!(&*tx.reset_sql(), "ROLLBACK");
    tx.untracked();
    assert!(!tx.needs_reset(), "session state is refused, not reset");
    let e = tx.before("SET work_mem = '1MB'").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert_eq!(
        tx.begin_with_settings("BEGIN; SET LOCAL ROLE t").unwrap(),
        format!("BEGIN; {}; SET LOCAL ROLE t", tx.local_settings().unwrap())
    );
    tx.before("BEGIN").unwrap();
    tx.track("BEGIN", true);
    assert!(tx.opened_transaction(false) && tx.needs_reset() && !tx.needs_wrap(false));
    assert!(!direct.alone("BEGIN") && !direct.alone("VACUUM"));
    let bare = Session::new(&params(PoolerMode::Transaction, &[]), token());
    assert!(bare.alone("BEGIN") && bare.alone("COMMIT") && bare.alone("VACUUM t"));
    assert!(!bare.alone("SELECT 1"));
    assert!(!bare.needs_wrap(true) && bare.needs_wrap(false));
    assert_eq!(bare.wrap_begin(), "BEGIN");
    let session = Session::new(&params(PoolerMode::Session, &[]), token());
    assert_eq!(session.pooler(), PoolerMode::Session);
    assert!(!session.needs_wrap(false));
    assert_eq!(
        super::session_settings(&params(PoolerMode::Session, &[("work_mem", "4MB")])).as_deref(),
        Some("SELECT pg_catalog.set_config(E'work_mem', E'4MB', false) AS \"pgprovider setting\"")
    );
    let kept = Session::new(
        &params(PoolerMode::Session, &[("work_mem", "4MB")]),
        token(),
    );
    assert!(
        kept.reset_sql().starts_with(RESET_RECIPE) && kept.reset_sql().contains("E'4MB', false)"),
        "{}",
        kept.reset_sql()
    );
    assert_eq!(
        super::session_settings(&params(PoolerMode::Transaction, &[("a", "b")])),
        None
    );
}

#[tokio::test(start_paused = true)]
async fn statements_run_bounded_and_flagged() {
    let mut s = Session::new(&params(PoolerMode::None, &[]), token());
    s.set_query_timeout(Some(Duration::from_millis(50)));
    // Finished: in flight no more.
    let ok: Result<u8> = s.run(&Plain, async { Ok::<_, Error>(7) }).await;
    assert_eq!(ok.unwrap(), 7);
    assert!(!s.is_broken() && !s.in_flight());
    // A read-only refusal is remembered; a lost connection breaks it.
    let e = s
        .run(&Plain, async {
            Err::<(), _>(Error::database(SqlState::READ_ONLY_SQL_TRANSACTION, "ro"))
        })
        .await
        .unwrap_err();
    assert_eq!(e.node(), Some("db:6432"));
    assert!(s.refused_read_only());
    s.recycled();
    assert!(!s.refused_read_only());
    assert_eq!(
        s.query_timeout(),
        None,
        "recycled to the configured default"
    );
    s.set_query_timeout(Some(Duration::from_millis(50)));
    // Past the timeout, the cancel's reply arrives: clean.
    let cancelled = s
        .run(&Plain, async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err::<(), _>(Error::database(SqlState::QUERY_CANCELED, "canceling"))
        })
        .await
        .unwrap_err();
    assert_eq!(cancelled.kind(), ErrorKind::Timeout);
    assert!(!s.is_broken());
    // No reply within the grace: broken.
    let lost = s
        .run(
            &Plain,
            std::future::pending::<std::result::Result<(), Error>>(),
        )
        .await
        .unwrap_err();
    assert_eq!(lost.kind(), ErrorKind::Timeout);
    assert!(s.is_broken() && !s.interrupted());
    let t = s.take_timeout();
    s.reset_done(t, true);
    assert_eq!(s.query_timeout(), Some(Duration::from_millis(50)));
}

#[tokio::test]
async fn observers_run_through_hooks_only_when_there_are_some() {
    let s = Session::new(&params(PoolerMode::None, &[]), token());
    let r = s
        .observer()
        .run(OperationKind::Query, "SELECT 1", |_: &u8| Some(1), async {
            Ok(1u8)
        })
        .await;
    assert_eq!(r.unwrap(), 1);
    let mut s = Session::new(&params(PoolerMode::None, &[]), token());
    s.set_harmless(true);
    s.set_in_flight(true);
    assert!(s.interrupted() && s.release_in_place() && !s.in_flight());
    s.set_in_flight(true);
    s.dirty_if(true);
    assert!(!s.release_in_place(), "a dirty session needs more");
    s.recovered();
    assert!(!s.in_transaction() && !s.in_flight());
    s.set_in_transaction(true);
    assert!(s.in_transaction());
    s.set_broken(true);
    assert!(s.is_broken());
    s.cancel_before_close().await;
    assert!(format!("{s:?}").contains("db:6432"));
}

#[test]
fn pooler_startup_refusals_name_the_setting() {
    let refused = || {
        Error::new(
            ErrorKind::Database,
            "unsupported startup parameter: options",
        )
        .with_node("db:6432")
    };
    let e = super::pooler_startup_refusal(refused(), PoolerMode::None);
    assert_eq!(e.kind(), ErrorKind::Connect);
    assert!(e.to_string().contains("pooler=transaction"), "{e}");
    assert_eq!(e.node(), Some("db:6432"));
    let already = super::pooler_startup_refusal(refused(), PoolerMode::Transaction);
    assert!(
        already.to_string().contains("even with pooler=transaction")
            && already
                .hint()
                .unwrap()
                .contains("ignore_startup_parameters"),
        "{already}"
    );
    let other = super::pooler_startup_refusal(
        Error::new(ErrorKind::Auth, "bad password"),
        PoolerMode::None,
    );
    assert_eq!(other.kind(), ErrorKind::Auth);
}

/// Others' requests queued ahead (reads the pool pipelined): a timeout sends no cancel
/// (it could stop one of them) and gives up on the connection; a reply ends the state.
#[tokio::test]
async fn with_requests_queued_ahead_a_timeout_sends_no_cancel() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let sent = std::sync::Arc::new(AtomicU32::new(0));
    let counting = || {
        let sent = sent.clone();
        CancelToken::new(move || {
            let sent = sent.clone();
            async move {
                sent.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
    };
    let mut p = params(PoolerMode::None, &[]);
    p.query_timeout = Some(Duration::from_millis(20));
    let mut s = Session::new(&p, counting());
    s.set_queued_ahead();
    let e = s
        .run(&Plain, std::future::pending::<Result<()>>())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert!(s.is_broken(), "closed instead of cancelled");
    assert_eq!(sent.load(Ordering::SeqCst), 0, "a cancel was sent");
    // After a reply, timeouts cancel again.
    let mut s = Session::new(&p, counting());
    s.set_queued_ahead();
    s.run(&Plain, async { Ok::<_, Error>(()) }).await.unwrap();
    let slow = async {
        tokio::time::sleep(Duration::from_millis(60)).await;
        Ok::<_, Error>(())
    };
    let _ = s.run(&Plain, slow).await;
    assert_eq!(sent.load(Ordering::SeqCst), 1, "no cancel after the reply");
}
