//! Finding the server binaries and the user to run them as.

use crate::KitError;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The installed PostgreSQL server binaries, and the unprivileged user that runs them when
/// the test process is root.
#[derive(Clone, Debug)]
pub struct ServerBinaries {
    bindir: PathBuf,
    run_as: Option<(u32, u32, String)>,
}

const NEEDED: [&str; 3] = ["initdb", "pg_ctl", "pg_basebackup"];

impl ServerBinaries {
    /// Finds the binaries: `PGPROVIDER_PG_BINDIR`, then `pg_config --bindir`, then `PATH`,
    /// then the newest `/usr/lib/postgresql/*/bin`.
    ///
    /// # Errors
    /// When no directory holds `initdb`, `pg_ctl` and `pg_basebackup`, or when running as
    /// root without an unprivileged user to run them as.
    pub fn find() -> Result<Self, KitError> {
        let bindir = find_bindir().ok_or_else(|| {
            KitError::new(
                "PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) not found; \
                 install them (Debian/Ubuntu: apt-get install postgresql) or set PGPROVIDER_PG_BINDIR",
            )
        })?;
        let user = std::env::var("PGPROVIDER_TEST_USER").unwrap_or_else(|_| "postgres".into());
        let run_as = run_as(nix::unistd::geteuid().is_root(), &user)?;
        Ok(ServerBinaries { bindir, run_as })
    }

    /// The directory holding the binaries.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The major version, from `pg_ctl --version`.
    ///
    /// # Errors
    /// When `pg_ctl` cannot be run.
    pub fn major_version(&self) -> Result<u32, KitError> {
        let out = Command::new(self.bindir.join("pg_ctl"))
            .arg("--version")
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .find_map(|w| w.split('.').next()?.parse().ok())
            .ok_or_else(|| KitError::new(format!("cannot read the version from {text:?}")))
    }

    /// A command for binary `name`, run as the unprivileged user when needed.
    pub(crate) fn command(&self, name: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::from(self.std_command(name));
        c.kill_on_drop(true);
        c
    }

    /// A blocking command for binary `name`, run as the unprivileged user when needed.
    pub(crate) fn std_command(&self, name: &str) -> std::process::Command {
        use std::os::unix::process::CommandExt;
        let mut c = std::process::Command::new(self.bindir.join(name));
        if let Some((uid, gid, _)) = &self.run_as {
            c.uid(*uid).gid(*gid);
        }
        c.env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST");
        c.stdin(std::process::Stdio::null());
        c
    }

    /// A blocking command for the program at `path`, run as the unprivileged user when
    /// needed.
    pub(crate) fn std_command_at(&self, path: &Path) -> std::process::Command {
        use std::os::unix::process::CommandExt;
        let mut c = std::process::Command::new(path);
        if let Some((uid, gid, _)) = &self.run_as {
            c.uid(*uid).gid(*gid);
        }
        c.stdin(std::process::Stdio::null());
        c
    }

    /// The unprivileged user's name, when servers run as one (the test process is root).
    pub(crate) fn user(&self) -> Option<&str> {
        self.run_as.as_ref().map(|(_, _, name)| name.as_str())
    }

    /// Gives `path` to the unprivileged user, if there is one.
    pub(crate) fn chown(&self, path: &Path) -> Result<(), KitError> {
        if let Some((uid, gid, _)) = &self.run_as {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid))?;
        }
        Ok(())
    }
}

/// The user to run servers as: none unless root, else `name`, which must exist.
fn run_as(is_root: bool, name: &str) -> Result<Option<(u32, u32, String)>, KitError> {
    if !is_root {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .ok_or_else(|| {
            KitError::new(format!(
                "running as root, and initdb refuses root: create the user {name:?} \
             (useradd --system {name}) or set PGPROVIDER_TEST_USER to an unprivileged user"
            ))
        })?;
    Ok(Some((
        user.uid.as_raw(),
        user.gid.as_raw(),
        name.to_owned(),
    )))
}

fn has_all(dir: &Path) -> bool {
    NEEDED.iter().all(|b| dir.join(b).is_file())
}

fn find_bindir() -> Option<PathBuf> {
    find_bindir_in(
        std::env::var_os("PGPROVIDER_PG_BINDIR"),
        "pg_config",
        std::env::var_os("PATH"),
        Path::new("/usr/lib/postgresql"),
    )
}

/// [`find_bindir`] with its inputs given: the override, `PATH`, and the Debian root.
fn find_bindir_in(
    override_dir: Option<std::ffi::OsString>,
    pg_config: &str,
    path: Option<std::ffi::OsString>,
    debian_root: &Path,
) -> Option<PathBuf> {
    if let Some(d) = override_dir {
        return Some(PathBuf::from(d)).filter(|d| has_all(d));
    }
    if let Ok(out) = Command::new(pg_config).arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_all(&d) {
            return Some(d);
        }
    }
    if let Some(path) = path {
        for d in std::env::split_paths(&path) {
            if has_all(&d) {
                // Resolve links such as /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin.
                let real = std::fs::canonicalize(d.join("initdb")).ok()?;
                return real
                    .parent()
                    .map(Path::to_path_buf)
                    .filter(|p| has_all(p))
                    .or(Some(d));
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(debian_root)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has_all(d))
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_PG_CONFIG: &str = "pgprovider-no-such-pg-config";

    fn fake_bindir(root: &Path) -> PathBuf {
        std::fs::create_dir_all(root).unwrap();
        for b in NEEDED {
            std::fs::write(root.join(b), "").unwrap();
        }
        root.to_owned()
    }

    #[test]
    fn the_override_wins_and_must_hold_every_binary() {
        let dir = tempfile::tempdir().unwrap();
        let good = fake_bindir(&dir.path().join("good"));
        let found = find_bindir_in(Some(good.clone().into()), "pg_config", None, dir.path());
        assert_eq!(found, Some(good));
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert_eq!(
            find_bindir_in(Some(empty.into()), "pg_config", None, dir.path()),
            None
        );
    }

    #[test]
    fn pg_config_then_path_then_the_newest_debian_version() {
        let dir = tempfile::tempdir().unwrap();
        // pg_config, where installed, answers first.
        if let Some(d) = find_bindir_in(None, "pg_config", None, dir.path()) {
            assert!(has_all(&d));
        }
        let real = fake_bindir(&dir.path().join("real"));
        let on_path = dir.path().join("onpath");
        std::fs::create_dir(&on_path).unwrap();
        for b in NEEDED {
            std::os::unix::fs::symlink(real.join(b), on_path.join(b)).unwrap();
        }
        let path = std::env::join_paths([dir.path().join("nothing"), on_path.clone()]).unwrap();
        // Links on PATH are followed to the directory that holds the real binaries.
        let found = find_bindir_in(None, NO_PG_CONFIG, Some(path), dir.path());
        assert_eq!(found, Some(real.canonicalize().unwrap()));

        let root = dir.path().join("debian");
        fake_bindir(&root.join("13/bin"));
        let newest = fake_bindir(&root.join("16/bin"));
        std::fs::create_dir_all(root.join("notaversion/bin")).unwrap();
        assert_eq!(
            find_bindir_in(None, NO_PG_CONFIG, None, &root),
            Some(newest)
        );
        assert_eq!(
            find_bindir_in(None, NO_PG_CONFIG, None, &dir.path().join("none")),
            None
        );
    }

    #[test]
    fn root_needs_an_unprivileged_user() {
        assert!(run_as(false, "anyone").unwrap().is_none());
        let e = run_as(true, "pgprovider-no-such-user")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("initdb refuses root") && e.contains("PGPROVIDER_TEST_USER"),
            "{e}"
        );
        if let Ok(Some((_, _, name))) = run_as(true, "postgres") {
            assert_eq!(name, "postgres");
        }
    }
}
