//! A real PgBouncer (Debian's `pgbouncer` package) in front of a server, in session or
//! transaction mode, for tests of the pooler modes.

use crate::{KitError, ServerBinaries, shared_url};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::OnceCell;

/// How PgBouncer hands server sessions to clients (its `pool_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolMode {
    /// One server session per client connection, for its lifetime.
    Session,
    /// A server session per transaction (or per statement outside one).
    Transaction,
}

impl PoolMode {
    /// PgBouncer's spelling, which is also the URL's `pooler` value.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

/// A PgBouncer process in front of one server, with trust authentication, every database
/// passed through (`* = host=… port=…`) and PgBouncer's defaults otherwise: startup
/// parameters it does not know (`options`, `extra_float_digits`) are refused.
///
/// It runs as the unprivileged user that runs test servers (PgBouncer refuses root), and
/// stops when dropped; a watchdog stops it if the test process dies without unwinding.
///
/// ```no_run
/// use pgprovider_testkit::{PgBouncer, PoolMode};
/// # async fn run() -> Result<(), pgprovider_testkit::KitError> {
/// let bouncer = PgBouncer::start("127.0.0.1", 5432, PoolMode::Transaction).await?;
/// let url = format!("{}?pooler=transaction", bouncer.url("test"));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PgBouncer {
    port: u16,
    mode: PoolMode,
    child: std::process::Child,
    watchdog: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

impl PgBouncer {
    /// The `pgbouncer` binary: `PGPROVIDER_PGBOUNCER`, else `/usr/sbin/pgbouncer`, else on
    /// `PATH`.
    pub fn binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("PGPROVIDER_PGBOUNCER") {
            return Some(PathBuf::from(p)).filter(|p| p.is_file());
        }
        let debian = PathBuf::from("/usr/sbin/pgbouncer");
        if debian.is_file() {
            return Some(debian);
        }
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join("pgbouncer"))
            .find(|p| p.is_file())
    }

    /// Starts PgBouncer in `mode` in front of the server at `host:port`, and waits until it
    /// answers.
    ///
    /// # Errors
    /// When PgBouncer is not installed (Debian: `apt-get install pgbouncer`), or does not
    /// start within 15 s (its log is in the error).
    pub async fn start(host: &str, port: u16, mode: PoolMode) -> Result<PgBouncer, KitError> {
        let bin = Self::binary().ok_or_else(|| {
            KitError::new(
                "pgbouncer not found: install it (Debian/Ubuntu: apt-get install pgbouncer) or set PGPROVIDER_PGBOUNCER",
            )
        })?;
        let bins = ServerBinaries::find()?;
        let dir = tempfile::Builder::new().prefix("pgbouncer-").tempdir()?;
        let listen = crate::free_port()?;
        let path = dir.path();
        let pool_size = match mode {
            // Few server sessions, so clients really share them.
            PoolMode::Transaction => 6,
            PoolMode::Session => 60,
        };
        std::fs::write(path.join("users.txt"), "\"postgres\" \"\"\n")?;
        std::fs::write(
            path.join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host={host} port={port}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {listen}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {users}\npool_mode = {mode}\n\
                 max_client_conn = 2000\ndefault_pool_size = {pool_size}\n\
                 logfile = {log}\npidfile = {pid}\nadmin_users = postgres\n",
                users = path.join("users.txt").display(),
                mode = mode.as_str(),
                log = path.join("pgbouncer.log").display(),
                pid = path.join("pgbouncer.pid").display(),
            ),
        )?;
        bins.chown(path)?;
        for f in ["users.txt", "pgbouncer.ini"] {
            bins.chown(&path.join(f))?;
        }
        let child = bins
            .std_command_at(&bin)
            .arg(path.join("pgbouncer.ini"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let watchdog = spawn_watchdog(child.id(), path).ok();
        let bouncer = PgBouncer {
            port: listen,
            mode,
            child,
            watchdog,
            dir,
        };
        let url = bouncer.url("postgres");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let connect = tokio_postgres::connect(&url, tokio_postgres::NoTls);
            if let Ok(Ok((client, conn))) =
                tokio::time::timeout(Duration::from_secs(2), connect).await
            {
                let task = tokio::spawn(conn);
                let ok = client.simple_query("SELECT 1").await.is_ok();
                drop(client);
                let _ = task.await;
                if ok {
                    return Ok(bouncer);
                }
            }
            if std::time::Instant::now() > deadline {
                return Err(KitError::new(format!(
                    "pgbouncer did not answer on port {listen} within 15 s: {}",
                    bouncer.log()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The port PgBouncer listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The pool mode.
    pub fn mode(&self) -> PoolMode {
        self.mode
    }

    /// A URL for `dbname` through PgBouncer, as user `postgres`.
    pub fn url(&self, dbname: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{dbname}", self.port)
    }

    /// PgBouncer's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// Stops PgBouncer `pid` and removes `dir` once this process is gone.
fn spawn_watchdog(pid: u32, dir: &std::path::Path) -> std::io::Result<std::process::Child> {
    let script = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 1; done
        kill -TERM "$2" 2>/dev/null; sleep 1; kill -KILL "$2" 2>/dev/null
        rm -rf "$3"
    "#;
    std::process::Command::new("setsid")
        .args(["sh", "-c", script, "pgprovider-pgbouncer-watchdog"])
        .arg(std::process::id().to_string())
        .arg(pid.to_string())
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
}

static TRANSACTION: OnceCell<Result<PgBouncer, String>> = OnceCell::const_new();
static SESSION: OnceCell<Result<PgBouncer, String>> = OnceCell::const_new();

/// The URL of database `test` through a PgBouncer in `mode` in front of the
/// [`shared_url`] server, started once per test process (a static is never dropped: the
/// watchdog stops it when the process exits). The URL carries no `pooler` key.
///
/// # Errors
/// When there is no server or PgBouncer cannot be started.
pub async fn shared_pgbouncer_url(mode: PoolMode) -> Result<String, KitError> {
    let cell = match mode {
        PoolMode::Transaction => &TRANSACTION,
        PoolMode::Session => &SESSION,
    };
    let started = cell
        .get_or_init(|| async {
            let url = shared_url().await.map_err(|e| e.to_string())?;
            let cfg: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
            let host = match cfg.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                _ => "127.0.0.1".to_owned(),
            };
            let port = cfg.get_ports().first().copied().unwrap_or(5432);
            PgBouncer::start(&host, port, mode)
                .await
                .map_err(|e| e.to_string())
        })
        .await;
    match started {
        Ok(b) => Ok(b.url("test")),
        Err(e) => Err(KitError::new(format!("no PgBouncer for the tests: {e}"))),
    }
}
