//! One server of a test cluster.

use crate::{KitError, ServerBinaries};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What a node was started as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Started as the primary.
    Primary,
    /// Started as a streaming standby.
    Standby,
}

/// One PostgreSQL server of a [`TestCluster`](crate::TestCluster), listening on
/// 127.0.0.1 on a free port, with trust authentication for the `postgres` user.
#[derive(Debug)]
pub struct TestNode {
    pub(crate) name: String,
    pub(crate) port: u16,
    pub(crate) dir: PathBuf,
    pub(crate) role: Role,
    pub(crate) bins: ServerBinaries,
    pub(crate) paused: AtomicBool,
    /// The postmaster, our own child so we reap it and know when it is gone.
    pub(crate) child: Mutex<Option<Child>>,
}

/// How long waits in the kit (start, stop, promote, replay) may take before failing.
pub(crate) const WAIT: Duration = Duration::from_secs(60);

impl TestNode {
    /// The node's name (`primary`, `standby0`, …), also its `application_name` upstream.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// What the node was started as (a promoted standby still says `Standby`; ask the
    /// server with [`is_in_recovery`](Self::is_in_recovery)).
    pub fn role(&self) -> Role {
        self.role
    }
    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    /// A connection URL for database `postgres` as user `postgres`.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }
    /// A connection URL for `dbname`.
    pub fn url_for(&self, dbname: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{dbname}", self.port)
    }
    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
    /// The server log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }
    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The postmaster's pid, while it runs.
    pub fn pid(&self) -> Option<i32> {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let child = guard.as_mut()?;
        match child.try_wait() {
            Ok(None) => i32::try_from(child.id()).ok(),
            _ => {
                *guard = None;
                None
            }
        }
    }

    /// Whether the postmaster runs.
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Starts the server (after [`stop`](Self::stop) or [`crash`](Self::crash)) and waits
    /// until it accepts connections; crash recovery runs first when needed.
    ///
    /// # Errors
    /// When the server does not come up; the error holds the end of its log.
    pub async fn start(&self) -> Result<(), KitError> {
        if self.is_running() {
            return Err(KitError::new(format!("{}: already running", self.name)));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = self
            .bins
            .std_command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        // postmaster.pid's 8th line is the server status: "ready" or "standby" once it
        // accepts connections (what pg_ctl -w waits for).
        let pidfile = self.data_dir().join("postmaster.pid");
        let start = tokio::time::Instant::now();
        loop {
            if !self.is_running() {
                return Err(KitError::new(format!(
                    "{}: the server exited while starting\n--- server log ---\n{}",
                    self.name,
                    self.log_tail(30)
                )));
            }
            // After a crash the old file lingers until the new postmaster rewrites it:
            // only a file naming our child counts.
            let status = std::fs::read_to_string(&pidfile).unwrap_or_default();
            let ours = status
                .lines()
                .next()
                .and_then(|l| l.trim().parse::<i32>().ok())
                == self.pid();
            if ours
                && matches!(
                    status.lines().nth(7).map(str::trim),
                    Some("ready" | "standby")
                )
            {
                return Ok(());
            }
            if start.elapsed() > WAIT {
                return Err(KitError::new(format!(
                    "{}: the server did not become ready\n--- server log ---\n{}",
                    self.name,
                    self.log_tail(30)
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`).
    ///
    /// # Errors
    /// When `pg_ctl` fails.
    pub async fn stop(&self) -> Result<(), KitError> {
        self.resume()?;
        self.pg_ctl(&["stop", "-w", "-t", "60", "-m", "fast"])
            .await?;
        self.reap(WAIT);
        Ok(())
    }

    /// Stops the server then starts it again.
    ///
    /// # Errors
    /// As [`stop`](Self::stop) and [`start`](Self::start).
    pub async fn restart(&self) -> Result<(), KitError> {
        if self.is_running() {
            self.stop().await?;
        }
        self.start().await
    }

    /// Kills the postmaster with SIGKILL (its children exit on their own) and waits until
    /// it is gone.
    ///
    /// # Errors
    /// When the node is not running.
    pub fn crash(&self) -> Result<(), KitError> {
        let pid = self.pid().ok_or_else(|| {
            KitError::new(format!(
                "{}: cannot crash a node that is not running",
                self.name
            ))
        })?;
        let children = children_of(pid);
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        self.paused.store(false, Ordering::SeqCst);
        for c in &children {
            let _ = kill(Pid::from_raw(*c), Signal::SIGCONT);
        }
        self.reap(WAIT);
        // Children notice the postmaster's death and exit; wait so the port is free.
        for c in children {
            wait_gone(c);
        }
        Ok(())
    }

    /// Waits up to `limit` for the postmaster to exit and reaps it; true when it has.
    fn reap(&self, limit: Duration) -> bool {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let Some(child) = guard.as_mut() else {
            return true;
        };
        let start = std::time::Instant::now();
        loop {
            if !matches!(child.try_wait(), Ok(None)) {
                *guard = None;
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Promotes a standby and waits until it accepts writes.
    ///
    /// # Errors
    /// When the node is not a standby or promotion fails.
    pub async fn promote(&self) -> Result<(), KitError> {
        self.pg_ctl(&["promote", "-w", "-t", "60"]).await
    }

    /// Freezes the postmaster and every child (SIGSTOP), like a hung server: connections
    /// stay open but nothing answers.
    ///
    /// # Errors
    /// When the node is not running.
    pub fn pause(&self) -> Result<(), KitError> {
        let pid = self.pid().ok_or_else(|| {
            KitError::new(format!(
                "{}: cannot pause a node that is not running",
                self.name
            ))
        })?;
        let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
        for c in children_of(pid) {
            let _ = kill(Pid::from_raw(c), Signal::SIGSTOP);
        }
        self.paused.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Undoes [`pause`](Self::pause). Does nothing when the node is not paused.
    ///
    /// # Errors
    /// Never, today; kept fallible for symmetry.
    pub fn resume(&self) -> Result<(), KitError> {
        if !self.paused.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        if let Some(pid) = self.pid() {
            for c in children_of(pid) {
                let _ = kill(Pid::from_raw(c), Signal::SIGCONT);
            }
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
        Ok(())
    }

    /// Whether the node is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Opens a client connection (database `postgres`), driven on the current runtime.
    ///
    /// # Errors
    /// When the server cannot be reached within 10 seconds.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, KitError> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .application_name("pgprovider-testkit")
            .connect_timeout(Duration::from_secs(10));
        // connect_timeout covers the TCP connect only; bound the startup too.
        let (client, conn) =
            tokio::time::timeout(Duration::from_secs(10), cfg.connect(tokio_postgres::NoTls))
                .await
                .map_err(|_| KitError::new(format!("{}: connection timed out", self.name)))?
                .map_err(|e| KitError::new(format!("{}: cannot connect: {e}", self.name)))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Runs SQL statements (simple protocol) on database `postgres`.
    ///
    /// # Errors
    /// The server's error.
    pub async fn execute(&self, sql: &str) -> Result<(), KitError> {
        self.connect().await?.batch_execute(sql).await.map_err(|e| {
            KitError::new(format!("{}: {sql:?} failed: {}", self.name, db_message(&e)))
        })
    }

    /// Runs a query and returns the first column of the first row as text (`""` for NULL).
    ///
    /// # Errors
    /// The server's error, or no row.
    pub async fn query_one(&self, sql: &str) -> Result<String, KitError> {
        let client = self.connect().await?;
        let msgs = client.simple_query(sql).await.map_err(|e| {
            KitError::new(format!("{}: {sql:?} failed: {}", self.name, db_message(&e)))
        })?;
        msgs.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some(r.get(0).unwrap_or("").to_owned())
                }
                _ => None,
            })
            .ok_or_else(|| KitError::new(format!("{}: {sql:?} returned no row", self.name)))
    }

    /// Whether the server is in recovery (a standby), from `pg_is_in_recovery()`.
    ///
    /// # Errors
    /// When the server cannot be queried.
    pub async fn is_in_recovery(&self) -> Result<bool, KitError> {
        Ok(self.query_one("SELECT pg_is_in_recovery()").await? == "t")
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub(crate) async fn pg_ctl(&self, args: &[&str]) -> Result<(), KitError> {
        let mut cmd = self.bins.command("pg_ctl");
        cmd.args(args);
        cmd.arg("-D").arg(self.data_dir());
        let out = tokio::time::timeout(WAIT + Duration::from_secs(5), cmd.output())
            .await
            .map_err(|_| KitError::new(format!("{}: pg_ctl {} hung", self.name, args[0])))??;
        if out.status.success() {
            return Ok(());
        }
        Err(KitError::new(format!(
            "{}: pg_ctl {} failed: {}{}\n--- server log ---\n{}",
            self.name,
            args[0],
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(30)
        )))
    }

    /// Best-effort immediate stop, for teardown: never blocks long, never fails.
    pub(crate) fn kill_now(&self) {
        let _ = self.resume();
        if let Some(pid) = self.pid() {
            let children = children_of(pid);
            // SIGQUIT is PostgreSQL's immediate shutdown: it cleans up shared memory.
            let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
            if !self.reap(Duration::from_secs(5)) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                self.reap(WAIT);
            }
            for c in children {
                if !wait_gone_for(c, Duration::from_secs(2)) {
                    let _ = kill(Pid::from_raw(c), Signal::SIGKILL);
                }
            }
        }
    }
}

fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// The pids whose parent is `pid`, from /proc.
pub(crate) fn children_of(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let child: i32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let ppid: i32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == pid).then_some(child)
    })
    .collect()
}

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); read its state to tell.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].chars().next())
            .is_some_and(|s| s != 'Z'),
        Err(_) => false,
    }
}

fn wait_gone_for(pid: i32, limit: Duration) -> bool {
    let start = std::time::Instant::now();
    while alive(pid) {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn wait_gone(pid: i32) {
    wait_gone_for(pid, WAIT);
}
