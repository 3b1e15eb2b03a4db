//! A throwaway primary with streaming standbys.

use crate::node::{Role, TestNode, WAIT};
use crate::{KitError, ServerBinaries, free_port};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

type Progress = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// Settings of a [`TestCluster`]; make one with [`TestCluster::builder`].
#[derive(Clone, Default)]
#[must_use]
pub struct ClusterBuilder {
    standbys: usize,
    synchronous: bool,
    settings: Vec<(String, String)>,
    hba: Vec<String>,
    tls: Option<(String, String)>,
    client_ca: Option<String>,
    on_progress: Option<Progress>,
}

impl std::fmt::Debug for ClusterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBuilder")
            .field("standbys", &self.standbys)
            .field("synchronous", &self.synchronous)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ClusterBuilder {
    /// How many hot standbys to start (default 0).
    pub fn standbys(mut self, n: usize) -> Self {
        self.standbys = n;
        self
    }

    /// Makes the first standby synchronous (`synchronous_commit=on`): a commit is
    /// acknowledged only once the standby has it. Needs at least one standby.
    pub fn synchronous(mut self, on: bool) -> Self {
        self.synchronous = on;
        self
    }

    /// Adds a `postgresql.conf` setting for every node, such as `("max_connections", "20")`.
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Turns TLS on (`ssl = on`) with this PEM certificate (chain) and private key.
    pub fn tls(mut self, cert_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        self.tls = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Trusts client certificates signed by this PEM CA (`ssl_ca_file`), for `cert`
    /// authentication in [`hba`](Self::hba) lines. Needs [`tls`](Self::tls).
    pub fn tls_client_ca(mut self, ca_pem: impl Into<String>) -> Self {
        self.client_ca = Some(ca_pem.into());
        self
    }

    /// Adds a `pg_hba.conf` line ahead of the default trust lines, such as
    /// `host all app 127.0.0.1/32 scram-sha-256` to make user `app` log in with a password.
    pub fn hba(mut self, line: &str) -> Self {
        self.hba.push(line.to_owned());
        self
    }

    /// Calls `f` with a short description of each step while starting (for progress bars).
    pub fn on_progress(mut self, f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(std::sync::Arc::new(f));
        self
    }

    fn progress(&self, step: &str) {
        if let Some(f) = &self.on_progress {
            f(step);
        }
        tracing::debug!(step, "test cluster");
    }

    /// Creates and starts the cluster: `initdb`, the primary, then each standby from a
    /// base backup, and waits until every standby streams (and the synchronous one is
    /// `sync`).
    ///
    /// # Errors
    /// When the binaries are missing or a step fails; the error holds the server log.
    pub async fn start(self) -> Result<TestCluster, KitError> {
        if self.synchronous && self.standbys == 0 {
            return Err(KitError::new(
                "a synchronous cluster needs at least one standby",
            ));
        }
        let bins = ServerBinaries::find()?;
        let dir = crate::work_dir("pgprovider-cluster-")?;
        bins.chown(dir.path())?;
        let mut cluster = TestCluster {
            primary: None,
            standbys: Vec::new(),
            watchdog: None,
            dir,
        };
        cluster.watchdog = spawn_watchdog(cluster.dir.path()).ok();

        self.progress("initdb");
        let primary = cluster.new_node(&bins, "primary", Role::Primary)?;
        let data = primary.data_dir();
        let out = bins
            .command("initdb")
            .args([
                "--no-sync",
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C",
                "-D",
            ])
            .arg(&data)
            .output()
            .await?;
        if !out.status.success() {
            return Err(KitError::new(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let mut conf = String::new();
        for (k, v) in [
            ("listen_addresses", "'127.0.0.1'"),
            ("fsync", "off"),
            ("full_page_writes", "off"),
            ("synchronous_commit", "on"),
            ("wal_level", "replica"),
            ("max_wal_senders", "10"),
            ("max_replication_slots", "10"),
            ("hot_standby", "on"),
            ("wal_sender_timeout", "'5s'"),
            ("wal_receiver_timeout", "'5s'"),
            ("wal_receiver_status_interval", "'1s'"),
            ("wal_retrieve_retry_interval", "'100ms'"),
            ("max_connections", "100"),
            ("shared_buffers", "'32MB'"),
            ("log_line_prefix", "'%m [%p] '"),
        ] {
            let _ = writeln!(conf, "{k} = {v}");
        }
        for (k, v) in &self.settings {
            let _ = writeln!(conf, "{k} = '{}'", v.replace('\'', "''"));
        }
        if let Some((cert, key)) = &self.tls {
            write_private(&bins, &data.join("server.crt"), cert)?;
            write_private(&bins, &data.join("server.key"), key)?;
            conf.push_str("ssl = on\n");
            if let Some(ca) = &self.client_ca {
                write_private(&bins, &data.join("root.crt"), ca)?;
                conf.push_str("ssl_ca_file = 'root.crt'\n");
            }
        } else if self.client_ca.is_some() {
            return Err(KitError::new(
                "tls_client_ca needs tls (a server certificate) too",
            ));
        }
        append(&data.join("postgresql.conf"), &conf)?;
        append(&data.join("postgresql.conf"), &node_conf(&primary))?;
        let hba_path = data.join("pg_hba.conf");
        let defaults = std::fs::read_to_string(&hba_path)?;
        let mut hba: String = self.hba.iter().map(|l| format!("{l}\n")).collect();
        hba.push_str(&defaults);
        hba.push_str("host replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n");
        std::fs::write(&hba_path, hba)?;
        self.progress("starting the primary");
        primary.start().await?;
        cluster.primary = Some(primary);

        for i in 0..self.standbys {
            let name = format!("standby{i}");
            self.progress(&format!("base backup for {name}"));
            let standby = cluster.new_node(&bins, &name, Role::Standby)?;
            base_backup(&bins, &standby, cluster.primary()).await?;
            self.progress(&format!("starting {name}"));
            standby.start().await?;
            cluster.standbys.push(standby);
        }
        if self.synchronous {
            self.progress("making standby0 synchronous");
            let p = cluster.primary();
            p.execute("ALTER SYSTEM SET synchronous_standby_names = 'standby0'")
                .await?;
            p.execute("SELECT pg_reload_conf()").await?;
        }
        if self.standbys > 0 {
            self.progress("waiting for the standbys to stream");
            let want = self.standbys;
            let sync = self.synchronous;
            let p = cluster.primary();
            poll(WAIT, "standbys to stream", || async {
                let q = format!(
                    "SELECT count(*) = {want} AND bool_or(sync_state = 'sync' OR NOT {sync}) \
                     FROM pg_stat_replication WHERE state = 'streaming'"
                );
                Ok(p.query_one(&q).await? == "t")
            })
            .await?;
        }
        Ok(cluster)
    }
}

/// A throwaway PostgreSQL cluster. Dropping it stops every server and removes its files.
#[derive(Debug)]
pub struct TestCluster {
    primary: Option<TestNode>,
    standbys: Vec<TestNode>,
    watchdog: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

impl TestCluster {
    /// A builder; by default one primary and no standby.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Starts a single primary.
    ///
    /// # Errors
    /// As [`ClusterBuilder::start`].
    pub async fn start() -> Result<TestCluster, KitError> {
        Self::builder().start().await
    }

    /// The node started as primary.
    pub fn primary(&self) -> &TestNode {
        self.primary
            .as_ref()
            .expect("the primary exists once started")
    }

    /// Standby `i` (0-based).
    pub fn standby(&self, i: usize) -> &TestNode {
        &self.standbys[i]
    }

    /// Every node, primary first.
    pub fn nodes(&self) -> impl Iterator<Item = &TestNode> {
        self.primary.iter().chain(&self.standbys)
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A URL naming every node (`host1:port1,host2:port2`), for multi-host configurations.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes().map(TestNode::addr).collect();
        format!("postgres://postgres@{}/postgres", hosts.join(","))
    }

    /// Waits until `standby` has replayed the WAL the `source` node has written so far.
    ///
    /// # Errors
    /// When it has not caught up within 60 seconds.
    pub async fn wait_for_replay_from(
        &self,
        source: &TestNode,
        standby: &TestNode,
    ) -> Result<(), KitError> {
        let lsn = source.query_one("SELECT pg_current_wal_lsn()").await?;
        poll(
            WAIT,
            &format!("{} to replay {lsn}", standby.name()),
            || async {
                let q =
                    format!("SELECT coalesce(pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn, false)");
                Ok(standby.query_one(&q).await? == "t")
            },
        )
        .await
    }

    /// Waits until `standby` has replayed the primary's current WAL position.
    ///
    /// # Errors
    /// When it has not caught up within 60 seconds.
    pub async fn wait_for_replay(&self, standby: &TestNode) -> Result<(), KitError> {
        self.wait_for_replay_from(self.primary(), standby).await
    }

    /// Every server's log, labelled, for failure reports.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in self.nodes() {
            let _ = writeln!(
                out,
                "--- {} ({}) log ---\n{}",
                n.name(),
                n.addr(),
                n.log_tail(40)
            );
        }
        out
    }

    /// Makes `node` a fresh streaming standby of `upstream`: stops it if it runs, throws its
    /// data away, takes a base backup of `upstream` and starts it. This is how an old
    /// primary rejoins after a failover (the kit has no `pg_rewind`; a new base backup is
    /// as good for tests), and how a fail-back is staged: rejoin, then stop the current
    /// primary and promote the node.
    ///
    /// # Errors
    /// When the backup or the start fails.
    pub async fn rejoin(&self, node: &TestNode, upstream: &TestNode) -> Result<(), KitError> {
        node.kill_now();
        let data = node.data_dir();
        if data.exists() {
            std::fs::remove_dir_all(&data)?;
        }
        base_backup(&node.bins, node, upstream).await?;
        node.start().await?;
        let name = node.name().to_owned();
        poll(WAIT, "the rejoined node to stream", || async {
            let q = format!(
                "SELECT count(*) = 1 FROM pg_stat_replication WHERE application_name = '{name}' AND state = 'streaming'"
            );
            Ok(upstream.query_one(&q).await? == "t")
        })
        .await
    }

    fn new_node(
        &self,
        bins: &ServerBinaries,
        name: &str,
        role: Role,
    ) -> Result<TestNode, KitError> {
        let dir = self.dir.path().join(name);
        std::fs::create_dir(&dir)?;
        bins.chown(&dir)?;
        std::fs::create_dir(dir.join("sock"))?;
        bins.chown(&dir.join("sock"))?;
        Ok(TestNode {
            name: name.to_owned(),
            port: free_port()?,
            dir,
            role,
            bins: bins.clone(),
            paused: AtomicBool::new(false),
            child: std::sync::Mutex::new(None),
        })
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "pgprovider-testkit: test failed; server logs follow\n{}",
                self.logs()
            );
        }
        for n in self.standbys.iter().chain(&self.primary) {
            n.kill_now();
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        // The TempDir removes the files.
    }
}

/// Fills `standby`'s data directory with a base backup of `upstream` (a replication slot
/// named after the standby, made anew) and the settings to stream from it.
async fn base_backup(
    bins: &ServerBinaries,
    standby: &TestNode,
    upstream: &TestNode,
) -> Result<(), KitError> {
    let name = standby.name();
    upstream
        .execute(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{name}'"
        ))
        .await?;
    let out = bins
        .command("pg_basebackup")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &upstream.port().to_string(),
            "-U",
            "postgres",
        ])
        .args([
            "-X",
            "stream",
            "-C",
            "-S",
            name,
            "-R",
            "--checkpoint=fast",
            "--no-sync",
            "-D",
        ])
        .arg(standby.data_dir())
        .output()
        .await?;
    if !out.status.success() {
        return Err(KitError::new(format!(
            "pg_basebackup for {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    append(
        &standby.data_dir().join("postgresql.conf"),
        &node_conf(standby),
    )?;
    append(
        &standby.data_dir().join("postgresql.auto.conf"),
        &format!(
            "primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name={name}'\nprimary_slot_name = '{name}'\n",
            upstream.port()
        ),
    )
}

fn node_conf(node: &TestNode) -> String {
    format!(
        "port = {}\nunix_socket_directories = '{}'\ncluster_name = '{}'\n",
        node.port(),
        node.dir.join("sock").display(),
        node.name()
    )
}

/// Writes a file only the server's user may read, as PostgreSQL demands of its key.
fn write_private(bins: &ServerBinaries, path: &Path, text: &str) -> Result<(), KitError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    bins.chown(path)
}

fn append(path: &Path, text: &str) -> Result<(), KitError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Polls `check` until it is true, with a short growing pause between tries.
async fn poll<F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<(), KitError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, KitError>>,
{
    let start = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(5);
    let mut last = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = Some(e),
        }
        if start.elapsed() > limit {
            let why = last.map(|e| format!(": {e}")).unwrap_or_default();
            return Err(KitError::new(format!("timed out waiting for {what}{why}")));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A detached shell that, once this process is gone without cleaning up (abort, SIGKILL),
/// stops every postmaster under `dir` and removes it. Killed by `Drop` in the normal case.
fn spawn_watchdog(dir: &Path) -> std::io::Result<std::process::Child> {
    // A paused (SIGSTOPped) tree must be continued first, or its children never run to
    // notice the postmaster's death.
    let script = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 1; done
        pids=""
        for f in "$2"/*/data/postmaster.pid; do
            [ -f "$f" ] && pids="$pids $(head -n 1 "$f")"
        done
        for p in $pids; do
            pkill -CONT -P "$p"; kill -CONT "$p"; kill -QUIT "$p"
        done 2>/dev/null
        sleep 2
        for p in $pids; do
            pkill -KILL -P "$p"; kill -KILL "$p"
        done 2>/dev/null
        rm -rf "$2"
    "#;
    let mut cmd = std::process::Command::new("setsid");
    cmd.args(["sh", "-c", script, "pgprovider-watchdog"])
        .arg(std::process::id().to_string())
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd.spawn()
}
