//! LISTEN/NOTIFY against real servers: fan-out, unsubscribe, odd names, limits, a killed
//! backend, a failover, a half-open connection and a stalled subscriber.

use futures_util::StreamExt;
use pgprovider::{Config, ErrorKind, Pool};
use pgprovider_tokio_postgres::{Event, Listener, TokioPostgres};
use std::time::Duration;

mod common;
use common::{config, pool, two_nodes};

async fn nodes(config: &Config) -> Vec<pgprovider::ConnectParams> {
    let mut v = Vec::new();
    for n in config.nodes() {
        v.push(config.connect_params(n).await.unwrap());
    }
    v
}

/// The next event, failing the test after a generous bound instead of hanging.
async fn next(sub: &mut pgprovider_tokio_postgres::Subscription) -> Event {
    tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .expect("an event in time")
        .expect("the stream is open")
}

async fn notify(pool: &Pool<TokioPostgres>, channel: &str, payload: &str) {
    pool.get()
        .await
        .unwrap()
        .notify(channel, payload)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_every_notification_in_order() {
    let c = config("&application_name=pgprovider-listen-a").await;
    let listener = Listener::connect(nodes(&c).await).await.unwrap();
    let weird = "we \"ird\" channel; DROP TABLE x";
    let mut a = listener.subscribe(weird).await.unwrap();
    let mut b = listener.subscribe(weird).await.unwrap();
    assert_eq!(a.channel(), weird);
    let sender = pool("").await;
    for i in 0..50 {
        notify(&sender, weird, &format!("{i}")).await;
    }
    for sub in [&mut a, &mut b] {
        for i in 0..50 {
            match next(sub).await {
                Event::Notification(n) => {
                    assert_eq!(
                        (n.channel.as_str(), n.payload.clone()),
                        (weird, i.to_string())
                    );
                    assert!(n.process_id > 0);
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(
        listener.stats().notifications,
        50,
        "one server subscription for both"
    );
    assert_eq!(listener.stats().channels, 1);

    // Unsubscribing the last subscription stops delivery (and UNLISTENs).
    drop(a);
    assert_eq!(listener.stats().channels, 1);
    drop(b);
    assert_eq!(listener.stats().channels, 0);
    let mut other = listener.subscribe("other").await.unwrap();
    notify(&sender, weird, "unheard").await;
    notify(&sender, "other", "heard").await;
    match next(&mut other).await {
        Event::Notification(n) => assert_eq!(n.payload, "heard"),
        e => panic!("{e:?}"),
    }
    assert_eq!(
        listener.stats().notifications,
        51,
        "the unsubscribed channel is not received"
    );

    // Limits are checked before anything is sent.
    let mut conn = sender.get().await.unwrap();
    let e = conn.notify("jobs", &"x".repeat(8000)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(listener.subscribe(&"c".repeat(64)).await.is_err());
    assert!(listener.subscribe("").await.is_err());
    // Transactional notify: delivered at commit, not before.
    let tx = sender.begin(&pgprovider::TxOptions::new()).await.unwrap();
    tx.conn()
        .await
        .unwrap()
        .notify("other", "at commit")
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), other.next())
            .await
            .is_err()
    );
    tx.commit().await.unwrap();
    match next(&mut other).await {
        Event::Notification(n) => assert_eq!(n.payload, "at commit"),
        e => panic!("{e:?}"),
    }
    assert!(format!("{listener:?}").contains("notifications"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_is_followed_by_a_gap_then_delivery() {
    let app = "pgprovider-listen-kill";
    let c = config(&format!("&application_name={app}")).await;
    let reconnected = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = reconnected.clone();
    let listener = Listener::builder(nodes(&c).await)
        .on_reconnect(move || {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
        .start()
        .await
        .unwrap();
    let mut sub = listener.subscribe("kill_me").await.unwrap();
    let sender = pool("").await;
    let killed: i64 = sender
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    assert_eq!(next(&mut sub).await, Event::Gap);
    assert_eq!(reconnected.load(std::sync::atomic::Ordering::SeqCst), 1);
    notify(&sender, "kill_me", "after").await;
    match next(&mut sub).await {
        Event::Notification(n) => assert_eq!(n.payload, "after"),
        e => panic!("{e:?}"),
    }
    assert_eq!(listener.stats().reconnects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_does_not_delay_another() {
    let c = config("").await;
    let listener = Listener::builder(nodes(&c).await)
        .with_buffer(16)
        .start()
        .await
        .unwrap();
    let mut stalled = listener.subscribe("busy").await.unwrap();
    let mut fast = listener.subscribe("busy").await.unwrap();
    // The fast subscriber keeps up while the other never reads.
    let reader = tokio::spawn(async move {
        for i in 0..200 {
            match next(&mut fast).await {
                Event::Notification(n) => assert_eq!(n.payload, i.to_string()),
                e => panic!("{e:?}"),
            }
        }
    });
    let sender = pool("").await;
    let mut conn = sender.get().await.unwrap();
    for i in 0..200 {
        conn.notify("busy", &i.to_string()).await.unwrap();
        if i % 8 == 7 {
            // Paced, so the fast reader's 16-event buffer is enough.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    reader.await.unwrap();
    // The stalled one lost the oldest and is told how many, then gets the newest.
    assert_eq!(next(&mut stalled).await, Event::Lagged(184));
    match next(&mut stalled).await {
        Event::Notification(n) => assert_eq!(n.payload, "184"),
        e => panic!("{e:?}"),
    }

    // With the disconnect policy, a subscriber that falls behind is told so and dropped.
    let strict = Listener::builder(nodes(&c).await)
        .with_buffer(4)
        .with_slow_subscriber(pgprovider_tokio_postgres::SlowSubscriber::Disconnect)
        .start()
        .await
        .unwrap();
    let mut slow = strict.subscribe("busy2").await.unwrap();
    let _marker = strict.subscribe("busy2-marker").await.unwrap();
    for i in 0..10 {
        conn.notify("busy2", &i.to_string()).await.unwrap();
    }
    // Wait until the listener has handed all ten over (and so overflowed the buffer): a
    // notification is counted just before it is handed over, so wait for one sent after
    // them (on a channel of its own), which is counted only once the tenth was handed over.
    conn.notify("busy2-marker", "after").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while strict.stats().notifications < 11 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "notifications did not arrive"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(next(&mut slow).await, Event::Lagged(6));
    assert!(slow.next().await.is_none(), "the stream ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_connection_is_noticed_by_the_heartbeat() {
    let base = config("").await;
    let node = &base.nodes()[0];
    let target = format!("{}:{}", node.host(), node.port()).parse().unwrap();
    let proxy = pgprovider_testkit::FaultProxy::start(target).await.unwrap();
    let mut params = base.connect_params(node).await.unwrap();
    params.port = proxy.port();
    params.connect_timeout = Some(Duration::from_millis(500));
    let listener = Listener::builder(vec![params])
        .with_heartbeat(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let mut sub = listener.subscribe("half_open").await.unwrap();
    proxy.blackhole();
    // Nothing arrives: the heartbeat finds the connection dead; the reconnect waits for the
    // network to come back.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), sub.next())
            .await
            .is_err()
    );
    proxy.heal();
    assert_eq!(next(&mut sub).await, Event::Gap);
    notify(&pool("").await, "half_open", "back").await;
    match next(&mut sub).await {
        Event::Notification(n) => assert_eq!(n.payload, "back"),
        e => panic!("{e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_is_followed_by_a_gap_then_delivery_from_the_new_primary() {
    let (cluster, config) = two_nodes(false, "").await;
    let (p, s) = (cluster.primary(), cluster.standby(0));
    let listener = Listener::connect(nodes(&config).await).await.unwrap();
    let mut sub = listener.subscribe("failover").await.unwrap();
    p.crash().unwrap();
    s.promote().await.unwrap();
    assert_eq!(next(&mut sub).await, Event::Gap);
    let new_primary = Config::from_url(&s.url()).unwrap();
    let pool = Pool::new(TokioPostgres::new(), &new_primary, &new_primary.nodes()[0]);
    pool.get()
        .await
        .unwrap()
        .notify("failover", "from the new primary")
        .await
        .unwrap();
    match next(&mut sub).await {
        Event::Notification(n) => assert_eq!(n.payload, "from the new primary"),
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn no_primary_is_a_clear_error() {
    let c = Config::from_url(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres?connect_timeout=1",
        pgprovider_testkit::free_port().unwrap()
    ))
    .unwrap();
    let builder = Listener::builder(nodes(&c).await).with_heartbeat(Duration::from_secs(1));
    assert!(format!("{builder:?}").contains("heartbeat"));
    let e = builder.start().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connect);
    assert!(e.message().contains("no primary to listen on"), "{e}");
    assert!(e.hint().unwrap().contains("LISTEN needs the primary"));
    let ok = Listener::connect(nodes(&config("").await).await)
        .await
        .unwrap();
    let sub = ok.subscribe("debugged").await.unwrap();
    assert!(format!("{sub:?}").contains("debugged"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_listens_and_runs_batches_through_its_own_route() {
    use pgprovider::provider::{Provider, TopologyOptions};
    use pgprovider_tokio_postgres::ProviderExt;
    let c = config("&application_name=pgprovider-listen-provider").await;
    let provider = Provider::new(TokioPostgres::new(), &c, TopologyOptions::default());
    let listener = provider.listen().await.unwrap();
    let mut sub = listener.subscribe("provider_front_door").await.unwrap();
    provider
        .execute("SELECT pg_notify('provider_front_door', 'hello')", &[])
        .await
        .unwrap();
    match next(&mut sub).await {
        Event::Notification(n) => assert_eq!(n.payload, "hello"),
        other => panic!("{other:?}"),
    }
    let r = provider
        .batch(&[("SELECT 1", &[]), ("SELECT $1::int + 1", &[&41_i32])])
        .await
        .unwrap();
    assert_eq!(r.len(), 2);
    // A failing statement names its position; nothing of the batch is applied.
    let e = provider
        .batch(&[("SELECT 1", &[]), ("SELEC 2", &[])])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("batch statement 2 of 2"), "{e}");
}
