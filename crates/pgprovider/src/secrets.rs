//! Secret rotation: the password comes from a [`SecretSource`] (a file, a command, an
//! environment variable, or your vault's client), is re-read when it changes, and the
//! connections made with the old one are replaced gradually.
//!
//! ```no_run
//! # async fn run() -> pgprovider::Result<()> {
//! use pgprovider::provider::Provider;
//! use pgprovider::secrets::{FileSecret, RotationOptions};
//! use std::time::Duration;
//! let config = pgprovider::Config::from_url("postgres://app@db1,db2/app")?;
//! let provider = Provider::builder(pgprovider_tokio_postgres::TokioPostgres::new(), &config)
//!     .secret(
//!         FileSecret::new("/run/secrets/db-password"),
//!         RotationOptions::default().with_check_every(Some(Duration::from_secs(10))),
//!     )
//!     .build();
//! // After the vault rotated the file (or on SIGHUP, from your own handler):
//! provider.rotate_secret().await?;
//! # Ok(()) }
//! ```
//!
//! - **When it is read**: at start, every [`check_every`](RotationOptions::check_every)
//!   (30 s by default), and on [`Provider::rotate_secret`]. A changed value becomes the
//!   secret of every new connection (pools, the health monitor, the safety monitor).
//! - **Existing connections** are [recycled](crate::Pool::recycle_within) over
//!   [`recycle_within`](RotationOptions::recycle_within) (1 min): each closes at its own
//!   point in the window, when idle or when given back, so a pool under load never drains.
//! - **Fallback**: a connection refused for authentication (`28P01`, `28000`) with the new
//!   secret is tried again with the previous one, for [`grace`](RotationOptions::grace)
//!   (10 min) after the change, each time with an `error` log (target
//!   `pgprovider::secrets`) and a count ([`RotationStats::fallbacks`]): the application
//!   keeps working while someone finds out why the server has not the new password yet.
//! - **Failures** to read the source keep the current secret (logged, counted in
//!   [`RotationStats::failures`]).
//! - Secrets never appear in errors, logs or `Debug` ([`Secret`]).
//!
//! [`Provider::rotate_secret`]: crate::provider::Provider::rotate_secret

use crate::{Error, ErrorKind, Result, Secret};
use pgprovider_core::observe::BoxFuture;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::time::Instant;

/// Where a secret comes from. Implement it for a vault or a cloud secret manager.
///
/// ```
/// use pgprovider::secrets::SecretSource;
/// use pgprovider::{Result, Secret};
/// struct Vault;
/// impl SecretSource for Vault {
///     fn describe(&self) -> String { "vault secret db/app".into() }
///     fn fetch(&self) -> pgprovider::observe::BoxFuture<'_, Result<Secret>> {
///         Box::pin(async { Ok(Secret::new("from the vault")) })
///     }
/// }
/// ```
pub trait SecretSource: Send + Sync + 'static {
    /// What it is, for logs and errors (never the secret).
    fn describe(&self) -> String;
    /// The secret now.
    fn fetch(&self) -> BoxFuture<'_, Result<Secret>>;
}

/// A file whose whole content (without its trailing newline) is the secret, such as a
/// mounted Kubernetes secret.
#[derive(Clone, Debug)]
pub struct FileSecret(PathBuf);

impl FileSecret {
    /// The file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSecret(path.into())
    }
}

impl SecretSource for FileSecret {
    fn describe(&self) -> String {
        format!("file {}", self.0.display())
    }
    fn fetch(&self) -> BoxFuture<'_, Result<Secret>> {
        Box::pin(read_secret_file(self.0.clone()))
    }
}

/// A shell command that prints the secret.
#[derive(Clone, Debug)]
pub struct CommandSecret(String);

impl CommandSecret {
    /// The command `cmd`, run with `sh -c`.
    pub fn new(cmd: impl Into<String>) -> Self {
        CommandSecret(cmd.into())
    }
}

impl SecretSource for CommandSecret {
    fn describe(&self) -> String {
        "a password command".into()
    }
    fn fetch(&self) -> BoxFuture<'_, Result<Secret>> {
        Box::pin(run_secret_command(self.0.clone()))
    }
}

/// An environment variable, read each time (for platforms that update the environment of
/// a running process, or for tests).
#[derive(Clone, Debug)]
pub struct EnvSecret(String);

impl EnvSecret {
    /// The variable `name`.
    pub fn new(name: impl Into<String>) -> Self {
        EnvSecret(name.into())
    }
}

impl SecretSource for EnvSecret {
    fn describe(&self) -> String {
        format!("environment variable {}", self.0)
    }
    fn fetch(&self) -> BoxFuture<'_, Result<Secret>> {
        let r = std::env::var(&self.0).map(Secret::new).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("cannot read the environment variable {}: {e}", self.0),
            )
        });
        Box::pin(std::future::ready(r))
    }
}

/// How a rotating secret is watched and applied.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RotationOptions {
    /// How often the source is read (`None`: only on
    /// [`Provider::rotate_secret`](crate::provider::Provider::rotate_secret)).
    pub check_every: Option<Duration>,
    /// The window over which connections made with the old secret are replaced.
    pub recycle_within: Duration,
    /// How long after a change the previous secret is tried when the new one is refused.
    pub grace: Duration,
}

impl Default for RotationOptions {
    /// Read every 30 s, recycle within 1 min, fall back for 10 min.
    fn default() -> Self {
        RotationOptions {
            check_every: Some(Duration::from_secs(30)),
            recycle_within: Duration::from_secs(60),
            grace: Duration::from_secs(600),
        }
    }
}

impl RotationOptions {
    /// Sets how often the source is read.
    pub fn with_check_every(mut self, every: Option<Duration>) -> Self {
        self.check_every = every;
        self
    }
    /// Sets the recycling window.
    pub fn with_recycle_within(mut self, window: Duration) -> Self {
        self.recycle_within = window;
        self
    }
    /// Sets the fallback grace period.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
}

/// What a rotation has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RotationStats {
    /// Changes of the secret seen (0 until the first change after start).
    pub rotations: u64,
    /// Connections made with the previous secret after the new one was refused.
    pub fallbacks: u64,
    /// Reads of the source that failed.
    pub failures: u64,
}

struct State {
    current: Option<Secret>,
    previous: Option<(Secret, Instant)>,
}

/// A rotating secret: the current value, the previous one during its grace period, and
/// the counts. Shared by the provider's configuration and its tasks.
pub struct Rotation {
    source: Box<dyn SecretSource>,
    options: RotationOptions,
    state: Mutex<State>,
    rotations: AtomicU64,
    fallbacks: AtomicU64,
    failures: AtomicU64,
    /// The number of changes, published for the provider's task (which recycles).
    changes: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Rotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotation")
            .field("source", &self.source.describe())
            .field("options", &self.options)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Rotation {
    /// A rotation reading `source`.
    pub fn new(source: impl SecretSource, options: RotationOptions) -> Self {
        Rotation {
            source: Box::new(source),
            options,
            state: Mutex::new(State {
                current: None,
                previous: None,
            }),
            rotations: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The options.
    pub fn options(&self) -> &RotationOptions {
        &self.options
    }

    /// The counts.
    pub fn stats(&self) -> RotationStats {
        RotationStats {
            rotations: self.rotations.load(Relaxed),
            fallbacks: self.fallbacks.load(Relaxed),
            failures: self.failures.load(Relaxed),
        }
    }

    /// Reads the source; true when the secret changed (the previous one is then kept for
    /// the grace period).
    ///
    /// # Errors
    /// The source's error (the current secret stays).
    pub async fn refresh(&self) -> Result<bool> {
        let fresh = match self.source.fetch().await {
            Ok(s) => s,
            Err(e) => {
                self.failures.fetch_add(1, Relaxed);
                tracing::error!(target: "pgprovider::secrets", source = %self.source.describe(), error = %e, "cannot read the secret; the current one stays");
                return Err(e);
            }
        };
        let changed = {
            let mut st = lock(&self.state);
            match st.current.take() {
                Some(old) if old != fresh => {
                    st.previous = Some((old, Instant::now() + self.options.grace));
                    st.current = Some(fresh);
                    true
                }
                old => {
                    st.current = Some(old.unwrap_or(fresh));
                    false
                }
            }
        };
        if changed {
            let n = self.rotations.fetch_add(1, Relaxed) + 1;
            self.changes.send_replace(n);
            tracing::info!(target: "pgprovider::secrets", source = %self.source.describe(), "the secret changed: new connections use it; open ones are recycled");
        }
        Ok(changed)
    }

    /// Changes of the secret, as they happen.
    pub(crate) fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The secret for a new connection (read from the source the first time).
    pub(crate) async fn current(&self) -> Result<Secret> {
        if let Some(s) = lock(&self.state).current.clone() {
            return Ok(s);
        }
        self.refresh().await?;
        lock(&self.state)
            .current
            .clone()
            .ok_or_else(|| Error::new(ErrorKind::Config, "no secret"))
    }

    /// The previous secret, while its grace period lasts; counts and logs the fallback.
    pub(crate) fn fallback(&self, node: &str) -> Option<Secret> {
        let st = lock(&self.state);
        let (s, until) = st.previous.as_ref()?;
        if Instant::now() >= *until {
            return None;
        }
        self.fallbacks.fetch_add(1, Relaxed);
        tracing::error!(
            target: "pgprovider::secrets",
            node,
            source = %self.source.describe(),
            "the server refused the NEW secret; connected with the previous one (grace period). Update the server's password or the source now"
        );
        Some(s.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The whole content of `path`, without its trailing newline.
pub(crate) async fn read_secret_file(path: std::path::PathBuf) -> Result<Secret, Error> {
    let text = blocking(move || std::fs::read_to_string(&path).map_err(|e| (path, e)))
        .await
        .map_err(|(path, e)| {
            Error::new(
                ErrorKind::Config,
                format!("cannot read password_file {}: {e}", path.display()),
            )
            .with_hint("check that the file exists and is readable by this process")
        })?;
    Ok(Secret::new(text.trim_end_matches(['\r', '\n'])))
}

/// What `cmd` prints (run with `sh -c`), without its trailing newline.
pub(crate) async fn run_secret_command(cmd: String) -> Result<Secret, Error> {
    let out = blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .stdin(std::process::Stdio::null())
            .output()
    })
    .await
    .map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("cannot run password_command: {e}"),
        )
    })?;
    if !out.status.success() {
        // stderr is not included: a failing secret tool may echo what it was given.
        return Err(Error::new(
            ErrorKind::Config,
            format!("password_command failed with {}", out.status),
        )
        .with_hint("run the command by hand to see its error"));
    }
    let text = String::from_utf8(out.stdout).map_err(|_| {
        Error::new(
            ErrorKind::Config,
            "password_command printed non-UTF-8 output",
        )
    })?;
    Ok(Secret::new(text.trim_end_matches(['\r', '\n'])))
}

/// Runs `f` on the blocking pool (at once outside a runtime).
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => match h.spawn_blocking(f).await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        },
        Err(_) => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A source whose value the test sets (`Err` for a source that is down).
    struct Set(Arc<Mutex<std::result::Result<String, ()>>>);

    impl SecretSource for Set {
        fn describe(&self) -> String {
            "a test source".into()
        }
        fn fetch(&self) -> BoxFuture<'_, Result<Secret>> {
            let r = lock(&self.0)
                .clone()
                .map(Secret::new)
                .map_err(|()| Error::new(ErrorKind::Config, "the source is down"));
            Box::pin(std::future::ready(r))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_previous_secret_serves_only_within_its_grace() {
        let value = Arc::new(Mutex::new(Ok("a".to_owned())));
        let r = Rotation::new(
            Set(value.clone()),
            RotationOptions::default().with_grace(Duration::from_secs(60)),
        );
        assert_eq!(r.current().await.unwrap().expose(), "a");
        assert!(!r.refresh().await.unwrap(), "unchanged");
        assert!(r.fallback("db1:5432").is_none(), "nothing before a change");
        *lock(&value) = Ok("b".to_owned());
        let changes = r.changes();
        assert!(r.refresh().await.unwrap());
        assert!(changes.has_changed().unwrap());
        assert_eq!(r.current().await.unwrap().expose(), "b");
        assert_eq!(r.fallback("db1:5432").unwrap().expose(), "a");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(r.fallback("db1:5432").is_none(), "the grace period is over");
        // A source that is down keeps the current secret.
        *lock(&value) = Err(());
        assert!(r.refresh().await.is_err());
        assert_eq!(r.current().await.unwrap().expose(), "b");
        assert_eq!(
            r.stats(),
            RotationStats {
                rotations: 1,
                fallbacks: 1,
                failures: 1
            }
        );
        let debug = format!("{r:?}");
        assert!(
            debug.contains("a test source") && !debug.contains("\"b\""),
            "{debug}"
        );
        assert_eq!(r.options().grace, Duration::from_secs(60));
        // A source down from the start: no secret at all.
        let down = Rotation::new(
            Set(Arc::new(Mutex::new(Err(())))),
            RotationOptions::default(),
        );
        assert!(down.current().await.is_err());
    }

    #[tokio::test]
    async fn files_commands_and_variables_are_sources() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "from-file\n").unwrap();
        let file = FileSecret::new(&path);
        assert_eq!(file.fetch().await.unwrap().expose(), "from-file");
        assert!(file.describe().contains("pw"));
        let missing = FileSecret::new(dir.path().join("nope"));
        assert!(
            missing
                .fetch()
                .await
                .unwrap_err()
                .message()
                .contains("cannot read")
        );
        let cmd = CommandSecret::new("printf 'from-command\\n'");
        assert_eq!(cmd.fetch().await.unwrap().expose(), "from-command");
        assert_eq!(cmd.describe(), "a password command");
        let failing = CommandSecret::new("exit 3");
        assert!(
            failing
                .fetch()
                .await
                .unwrap_err()
                .message()
                .contains("failed with")
        );
        let env = EnvSecret::new("PATH");
        assert!(!env.fetch().await.unwrap().expose().is_empty());
        assert!(env.describe().contains("PATH"));
        let unset = EnvSecret::new("PGPROVIDER_NO_SUCH_VARIABLE");
        assert!(
            unset
                .fetch()
                .await
                .unwrap_err()
                .message()
                .contains("PGPROVIDER_NO_SUCH_VARIABLE")
        );
        let o = RotationOptions::default()
            .with_check_every(None)
            .with_recycle_within(Duration::from_secs(5));
        assert_eq!(
            (o.check_every, o.recycle_within),
            (None, Duration::from_secs(5))
        );
    }
}
