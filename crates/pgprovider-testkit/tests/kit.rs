//! The test kit's own tests: real clusters, real faults.

use pgprovider_testkit::{FaultProxy, Role, ServerBinaries, TestCluster};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

/// Connects with `timeout` bounding the whole handshake (tokio-postgres's own
/// connect_timeout covers only the TCP connect).
async fn connect(addr: &str, timeout: Duration) -> Result<tokio_postgres::Client, String> {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(host)
        .port(port.parse().unwrap())
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(timeout);
    let (client, conn) = tokio::time::timeout(timeout, cfg.connect(NoTls))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_catches_up_and_promotion_makes_it_writable() {
    let cluster = TestCluster::builder().standbys(1).start().await.unwrap();
    let (p, s) = (cluster.primary(), cluster.standby(0));
    assert_eq!((p.role(), s.role()), (Role::Primary, Role::Standby));
    assert!(!p.is_in_recovery().await.unwrap());
    assert!(s.is_in_recovery().await.unwrap());
    p.execute("CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 100)")
        .await
        .unwrap();
    cluster.wait_for_replay(s).await.unwrap();
    assert_eq!(s.query_one("SELECT count(*) FROM t").await.unwrap(), "100");
    // A standby refuses writes until promoted.
    let e = s.execute("INSERT INTO t VALUES (0)").await.unwrap_err();
    assert!(e.to_string().contains("25006"), "{e}");

    p.crash().unwrap();
    assert!(!p.is_running());
    s.promote().await.unwrap();
    assert!(!s.is_in_recovery().await.unwrap());
    s.execute("INSERT INTO t VALUES (101)").await.unwrap();
    assert_eq!(s.query_one("SELECT count(*) FROM t").await.unwrap(), "101");
    assert!(cluster.url().contains(&p.addr()) && cluster.url().contains(&s.addr()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_standby_is_sync_and_has_every_commit() {
    let cluster = TestCluster::builder()
        .standbys(1)
        .synchronous(true)
        .start()
        .await
        .unwrap();
    let p = cluster.primary();
    let state = p
        .query_one("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby0'")
        .await
        .unwrap();
    assert_eq!(state, "sync");
    // remote_apply: once COMMIT returns, the standby shows the row, with no wait of ours.
    let client = p.connect().await.unwrap();
    client.batch_execute("SET synchronous_commit = remote_apply; CREATE TABLE s (x int); INSERT INTO s VALUES (1)").await.unwrap();
    assert_eq!(
        cluster
            .standby(0)
            .query_one("SELECT count(*) FROM s")
            .await
            .unwrap(),
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_and_restart_keep_committed_data() {
    let cluster = TestCluster::start().await.unwrap();
    let p = cluster.primary();
    p.execute("CREATE TABLE c (x int); INSERT INTO c VALUES (1), (2)")
        .await
        .unwrap();
    let client = p.connect().await.unwrap();
    let pid = p.pid().unwrap();
    p.crash().unwrap();
    assert!(
        client.simple_query("SELECT 1").await.is_err(),
        "the old connection is gone"
    );
    assert!(p.connect().await.is_err());
    p.start().await.unwrap();
    assert_ne!(p.pid().unwrap(), pid);
    assert_eq!(p.query_one("SELECT count(*) FROM c").await.unwrap(), "2");
    p.restart().await.unwrap();
    p.stop().await.unwrap();
    assert!(!p.is_running());
    assert!(
        p.log().contains("database system is shut down"),
        "{}",
        p.log()
    );
    p.start().await.unwrap();
    assert_eq!(p.query_one("SELECT count(*) FROM c").await.unwrap(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_node_times_out_clients_until_resumed() {
    let cluster = TestCluster::start().await.unwrap();
    let p = cluster.primary();
    let open = p.connect().await.unwrap();
    p.pause().unwrap();
    assert!(p.is_paused());
    let start = Instant::now();
    let r = connect(&p.addr(), Duration::from_millis(300)).await;
    assert!(r.is_err(), "a hung server must not accept a session");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the client's timeout ended the wait"
    );
    let q = tokio::time::timeout(Duration::from_millis(300), open.simple_query("SELECT 1")).await;
    assert!(q.is_err(), "an open connection gets no answer while paused");
    p.resume().unwrap();
    assert!(!p.is_paused());
    connect(&p.addr(), Duration::from_secs(10)).await.unwrap();
    assert_eq!(p.query_one("SELECT 1").await.unwrap(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_cluster_leaves_no_process_or_file() {
    let cluster = TestCluster::builder().standbys(1).start().await.unwrap();
    let pids: Vec<i32> = cluster.nodes().map(|n| n.pid().unwrap()).collect();
    let dir = cluster.dir().to_owned();
    cluster.standby(0).pause().unwrap(); // a paused node must be stopped too
    assert!(dir.exists());
    drop(cluster);
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid),
            "postmaster {pid} survived"
        );
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
        .unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_proxy_fault_and_heal() {
    let cluster = TestCluster::start().await.unwrap();
    let target = cluster.primary().addr().parse().unwrap();
    let proxy = FaultProxy::start(target).await.unwrap();
    assert_eq!(proxy.target(), target);
    let addr = proxy.addr().to_string();
    let client = connect(&addr, Duration::from_secs(5)).await.unwrap();
    assert_eq!(proxy.open_connections(), 1);

    // Latency: every round trip takes at least twice the added delay (once each way).
    proxy.set_latency(Duration::from_millis(100));
    let start = Instant::now();
    client.simple_query("SELECT 1").await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "{:?}",
        start.elapsed()
    );
    proxy.heal();

    // Blackhole: nothing comes back, on open and new connections.
    proxy.blackhole();
    let q = tokio::time::timeout(Duration::from_millis(300), client.simple_query("SELECT 2")).await;
    assert!(q.is_err(), "a blackholed query must hang");
    assert!(connect(&addr, Duration::from_millis(300)).await.is_err());
    proxy.heal();
    // Held data flows again after healing, as TCP retransmission would deliver it.
    assert_eq!(client.simple_query("SELECT 3").await.unwrap().len(), 3);

    // Reset: open connections fail at once.
    proxy.reset_all();
    let e = client.simple_query("SELECT 4").await.unwrap_err();
    assert!(
        e.is_closed() || e.to_string().contains("reset") || e.to_string().contains("closed"),
        "{e}"
    );
    let client = connect(&addr, Duration::from_secs(5)).await.unwrap();
    client.simple_query("SELECT 5").await.unwrap();

    // Refuse: new connections are refused; open ones go on.
    proxy.refuse();
    // The accept loop closes the listener when it sees the change; wait for that event (a
    // connection racing the close may be accepted or reset instead of refused).
    let refused = async {
        loop {
            match tokio::net::TcpStream::connect(proxy.addr()).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                _ => tokio::task::yield_now().await,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), refused)
        .await
        .expect("new connections are refused");
    client.simple_query("SELECT 6").await.unwrap();
    proxy.heal();
    let again = loop {
        if let Ok(c) = connect(&addr, Duration::from_secs(5)).await {
            break c;
        }
        tokio::task::yield_now().await;
    };
    again.simple_query("SELECT 7").await.unwrap();
    drop(proxy);
    assert!(
        client.simple_query("SELECT 8").await.is_err(),
        "dropping the proxy closes its connections"
    );
}

#[test]
fn binaries_are_found_with_their_version() {
    let b = ServerBinaries::find().unwrap();
    assert!(b.bindir().join("initdb").is_file());
    assert!(b.major_version().unwrap() >= 12);
}

#[tokio::test]
async fn synchronous_without_standby_is_refused() {
    let e = TestCluster::builder()
        .synchronous(true)
        .start()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("at least one standby"));
}

/// Run by `a_killed_test_process_leaves_no_postmaster` in a child process, never alone.
#[tokio::test]
#[ignore = "helper: run by a_killed_test_process_leaves_no_postmaster"]
async fn helper_holds_a_paused_cluster_until_killed() {
    if std::env::var_os("PGPROVIDER_KIT_HELPER").is_none() {
        return;
    }
    let cluster = TestCluster::start().await.unwrap();
    let p = cluster.primary();
    let pid = p.pid().unwrap();
    p.pause().unwrap();
    println!("READY {pid} {}", cluster.dir().display());
    std::future::pending::<()>().await;
}

#[test]
fn a_killed_test_process_leaves_no_postmaster() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_holds_a_paused_cluster_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .env("PGPROVIDER_KIT_HELPER", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let line = out
        .lines()
        .map(Result::unwrap)
        .find(|l| l.starts_with("READY "))
        .expect("the helper reports its cluster");
    let mut parts = line.split_whitespace().skip(1);
    let pid: i32 = parts.next().unwrap().parse().unwrap();
    let dir = std::path::PathBuf::from(parts.next().unwrap());
    // SIGKILL: no unwinding, no Drop. Only the watchdog can clean up.
    child.kill().unwrap();
    child.wait().unwrap();
    let start = Instant::now();
    while (std::path::Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid))
        || dir.exists()
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "postmaster {pid} or {} survived",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run by `a_failing_test_prints_the_server_logs` in a child process, never alone.
#[tokio::test]
#[ignore = "helper: run by a_failing_test_prints_the_server_logs"]
async fn helper_fails_while_holding_a_cluster() {
    if std::env::var_os("PGPROVIDER_KIT_HELPER").is_none() {
        return;
    }
    let cluster = TestCluster::start().await.unwrap();
    cluster.primary().execute("SELECT 1").await.unwrap();
    panic!("deliberate failure");
}

#[test]
fn a_failing_test_prints_the_server_logs() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_fails_while_holding_a_cluster",
            "--ignored",
            "--nocapture",
        ])
        .env("PGPROVIDER_KIT_HELPER", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("deliberate failure"), "{err}");
    assert!(err.contains("test failed; server logs follow"), "{err}");
    assert!(err.contains("--- primary (127.0.0.1:"), "{err}");
    assert!(
        err.contains("database system is ready to accept connections"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_on_a_node_in_the_wrong_state_say_so() {
    let cluster = TestCluster::start().await.unwrap();
    let p = cluster.primary();
    assert!(
        p.start()
            .await
            .unwrap_err()
            .to_string()
            .contains("already running")
    );
    assert!(p.data_dir().join("PG_VERSION").is_file());
    assert!(p.log_path().is_file());
    assert_eq!(p.name(), "primary");
    p.stop().await.unwrap();
    assert!(p.crash().unwrap_err().to_string().contains("not running"));
    assert!(p.pause().unwrap_err().to_string().contains("not running"));
    p.resume().unwrap(); // not paused: nothing to do
    let e = p.query_one("SELECT 1").await.unwrap_err();
    assert!(e.to_string().contains("cannot connect"), "{e}");
    p.restart().await.unwrap();
    assert_eq!(p.query_one("SELECT 1").await.unwrap(), "1");
    let e = p.query_one("SELECT 1 WHERE false").await.unwrap_err();
    assert!(e.to_string().contains("returned no row"), "{e}");
    let e = p.query_one("SELEC 1").await.unwrap_err();
    assert!(e.to_string().contains("42601"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_cannot_start_reports_its_log() {
    let e = TestCluster::builder()
        .setting("max_connections", "-1")
        .start()
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("the server exited while starting"), "{text}");
    assert!(
        text.contains("max_connections"),
        "the server's own complaint: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoting_a_primary_fails_with_pg_ctl_output() {
    let cluster = TestCluster::start().await.unwrap();
    let e = cluster.primary().promote().await.unwrap_err().to_string();
    assert!(
        e.contains("pg_ctl promote failed") && e.contains("not in standby mode"),
        "{e}"
    );
}
