//! A cluster managed by a real HA manager: Patroni with etcd, both from Debian's packages
//! (`apt-get install patroni etcd-server`).
//!
//! The cluster lives in a temporary directory that also holds small shell scripts, so the
//! faults a drill injects are the ones an operator would run, and can be passed to
//! `pgprovider drill … --fault-command` as they are:
//!
//! | script | what it does |
//! |---|---|
//! | `switchover.sh` | a planned switchover (`patronictl switchover --force`) |
//! | `kill-leader.sh` | SIGKILL to the leader's Patroni and postmaster (its machine dies) |
//! | `heal.sh` | starts every stopped Patroni and waits until all members run, one leader |
//! | `stop.sh` | stops everything (Drop runs it; so does the watchdog if the test dies) |
//!
//! Settings are tuned for speed (`fsync=off`, `loop_wait` 1 s, `ttl` 10 s), with
//! `synchronous_mode` on so acknowledged writes survive a failover.

use crate::{KitError, ServerBinaries};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One Patroni member.
#[derive(Clone, Debug)]
pub struct PatroniMember {
    /// The member's name (`n0`, `n1`, …).
    pub name: String,
    /// PostgreSQL's port on 127.0.0.1.
    pub port: u16,
    /// Patroni's REST API port on 127.0.0.1.
    pub api_port: u16,
}

/// A PostgreSQL cluster of N members managed by Patroni, with a one-node etcd as its DCS.
/// Dropping it stops every process and removes its directory.
///
/// ```no_run
/// use pgprovider_testkit::PatroniCluster;
///
/// # async fn run() -> Result<(), pgprovider_testkit::KitError> {
/// let cluster = PatroniCluster::start(2).await?;
/// println!("drill it: pgprovider drill switchover --url '{}' --fault-command '{}'",
///     cluster.url(), cluster.script("switchover.sh"));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PatroniCluster {
    members: Vec<PatroniMember>,
    watchdog: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

/// Where Debian installs the HA manager's programs.
fn program(name: &str) -> Option<PathBuf> {
    let debian = PathBuf::from("/usr/bin").join(name);
    if debian.is_file() {
        return Some(debian);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl PatroniCluster {
    /// Whether Patroni and etcd are installed.
    pub fn available() -> bool {
        ["patroni", "patronictl", "etcd", "etcdctl", "python3"]
            .iter()
            .all(|p| program(p).is_some())
    }

    /// Starts etcd and `members` Patroni members (at least 2), and waits (up to 90 s) until
    /// one is the leader and every other runs as a replica.
    ///
    /// # Errors
    /// When Patroni or etcd is missing (the error says which package to install), or the
    /// cluster does not come up (the logs are in the error).
    pub async fn start(members: usize) -> Result<PatroniCluster, KitError> {
        if members < 2 {
            return Err(KitError::new("a Patroni cluster needs at least 2 members"));
        }
        if !Self::available() {
            return Err(KitError::new(
                "patroni, etcd, etcdctl or python3 not found: install them (Debian/Ubuntu: apt-get install patroni etcd-server etcd-client)",
            ));
        }
        let bins = ServerBinaries::find()?;
        let dir = crate::work_dir("pgprovider-patroni-")?;
        let path = dir.path().to_path_buf();
        let (client, peer) = (crate::free_port()?, crate::free_port()?);
        let mut list = Vec::new();
        for i in 0..members {
            let m = PatroniMember {
                name: format!("n{i}"),
                port: crate::free_port()?,
                api_port: crate::free_port()?,
            };
            std::fs::write(
                path.join(format!("{}.yml", m.name)),
                member_config(&m, &path, client, bins.bindir()),
            )?;
            list.push(m);
        }
        let user = bins.user().unwrap_or("");
        write_scripts(&path, user, client, peer, &list)?;
        chown_all(&bins, &path)?;
        let cluster = PatroniCluster {
            members: list,
            watchdog: spawn_watchdog(&path).ok(),
            dir,
        };
        // The first member bootstraps the cluster alone, so it is the leader; the others
        // join as replicas (started together they race to initdb).
        cluster.run_script("start-etcd.sh", &[]).await?;
        cluster
            .run_script("start-node.sh", &[&cluster.members[0].name])
            .await?;
        cluster.run_script("wait.sh", &["1"]).await?;
        cluster.run_script("heal.sh", &[]).await?;
        Ok(cluster)
    }

    /// The members, in start order.
    pub fn members(&self) -> &[PatroniMember] {
        &self.members
    }

    /// A URL naming every member (database `postgres`, user `postgres`), as an application
    /// behind Patroni would use it.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect();
        format!("postgres://postgres@{}/postgres", hosts.join(","))
    }

    /// A shell command that runs the named script of the cluster's directory (see the
    /// module docs), for `--fault-command` and `--heal-command`.
    pub fn script(&self, name: &str) -> String {
        format!(
            "sh {}",
            shell_quote(&self.dir.path().join(name).display().to_string())
        )
    }

    /// The cluster's directory (configurations, logs, scripts).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The logs of etcd and every member.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in std::iter::once("etcd").chain(self.members.iter().map(|m| m.name.as_str())) {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let _ = writeln!(out, "--- {name}.log (last lines)");
            for l in tail.iter().rev() {
                let _ = writeln!(out, "{l}");
            }
        }
        out
    }

    /// Runs one of the cluster's scripts and waits for it.
    ///
    /// # Errors
    /// When it exits unsuccessfully; its output and the logs are in the error.
    pub async fn run_script(&self, name: &str, args: &[&str]) -> Result<(), KitError> {
        let out = tokio::time::timeout(
            Duration::from_secs(120),
            tokio::process::Command::new("sh")
                .arg(self.dir.path().join(name))
                .args(args)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| KitError::new(format!("{name} took over 120 s:\n{}", self.logs())))??;
        if out.status.success() {
            return Ok(());
        }
        Err(KitError::new(format!(
            "{name} failed ({}): {}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        )))
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = std::process::Command::new("sh")
            .arg(self.dir.path().join("stop.sh"))
            .stdin(std::process::Stdio::null())
            .status();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

fn member_config(m: &PatroniMember, dir: &Path, etcd: u16, bindir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"scope: pgprovider
name: {name}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:{api}
  connect_address: 127.0.0.1:{api}
etcd3:
  hosts: 127.0.0.1:{etcd}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 3
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      remove_data_directory_on_rewind_failure: true
      remove_data_directory_on_diverged_timelines: true
      parameters:
        fsync: 'off'
        full_page_writes: 'off'
        wal_log_hints: 'on'
        wal_level: replica
        max_wal_senders: 10
        max_replication_slots: 10
        hot_standby: 'on'
        wal_sender_timeout: 5s
        wal_receiver_timeout: 5s
        wal_receiver_status_interval: 1s
        wal_retrieve_retry_interval: 100ms
        max_connections: 100
        shared_buffers: 32MB
  initdb:
  - encoding: UTF8
  - locale: C
  - auth: trust
  pg_hba:
  - local all all trust
  - host replication all 127.0.0.1/32 trust
  - host all all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:{port}
  connect_address: 127.0.0.1:{port}
  data_dir: {data}
  bin_dir: {bindir}
  pgpass: {pgpass}
  authentication:
    replication:
      username: postgres
    superuser:
      username: postgres
    rewind:
      username: postgres
  parameters:
    unix_socket_directories: {sockets}
tags: {{}}
"#,
        name = m.name,
        api = m.api_port,
        port = m.port,
        data = yaml_str(&format!("{dir}/{}.data", m.name)),
        pgpass = yaml_str(&format!("{dir}/{}.pgpass", m.name)),
        bindir = yaml_str(&bindir.display().to_string()),
        sockets = yaml_str(&dir.to_string()),
    )
}

fn write_scripts(
    dir: &Path,
    user: &str,
    client: u16,
    peer: u16,
    members: &[PatroniMember],
) -> Result<(), KitError> {
    let d = "\"$D\"";
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    let names = names.join(" ");
    // Every script runs the cluster's processes as the unprivileged user when started as
    // root (initdb refuses root).
    let as_user = if user.is_empty() {
        String::new()
    } else {
        format!("if [ \"$(id -u)\" = 0 ]; then exec runuser -u {user} -- sh \"$0\" \"$@\"; fi\n")
    };
    let ctl = "patronictl -c \"$D/n0.yml\"";
    let scripts = [
        (
            "start-etcd.sh",
            format!(
                "{as_user}cd {d}\nsetsid etcd --name etcd --data-dir \"$D/etcd.data\" \
                 --listen-client-urls http://127.0.0.1:{client} --advertise-client-urls http://127.0.0.1:{client} \
                 --listen-peer-urls http://127.0.0.1:{peer} --initial-advertise-peer-urls http://127.0.0.1:{peer} \
                 --initial-cluster etcd=http://127.0.0.1:{peer} >> etcd.log 2>&1 < /dev/null &\n\
                 echo $! > etcd.pid\n\
                 for i in $(seq 1 100); do\n  \
                   etcdctl --endpoints=127.0.0.1:{client} endpoint health >/dev/null 2>&1 && exit 0\n  sleep 0.1\ndone\n\
                 echo 'etcd did not become healthy' >&2; exit 1\n"
            ),
        ),
        (
            "start-node.sh",
            format!(
                "{as_user}# Starts Patroni member $1 unless it runs.\ncd {d}\n\
                 if [ -f \"$1.pid\" ] && kill -0 \"$(cat \"$1.pid\")\" 2>/dev/null; then exit 0; fi\n\
                 setsid patroni \"$1.yml\" >> \"$1.log\" 2>&1 < /dev/null &\necho $! > \"$1.pid\"\n"
            ),
        ),
        (
            "wait.sh",
            format!(
                "# Waits until $1 members run, one of them the leader and (with more than one) one a\n\
                 # synchronous standby (90 s at most).\n\
                 for i in $(seq 1 900); do\n  \
                   {ctl} list -f json 2>/dev/null | python3 -c '\n\
import json, sys\n\
m = json.load(sys.stdin)\n\
running = [x for x in m if x.get(\"State\") in (\"running\", \"streaming\")]\n\
leaders = [x for x in running if x.get(\"Role\") == \"Leader\"]\n\
n = int(sys.argv[1])\n\
sync = n == 1 or any(x.get(\"Role\") == \"Sync Standby\" for x in running)\n\
sys.exit(0 if len(running) >= n and len(leaders) == 1 and sync else 1)' \"$1\" && exit 0\n  \
                   sleep 0.1\ndone\necho \"the cluster did not come up with $1 running members\" >&2\n{ctl} list >&2\nexit 1\n"
            ),
        ),
        (
            "heal.sh",
            format!(
                "# Starts every stopped member and waits until all run, one of them the leader.\n\
                 for n in {names}; do sh \"$D/start-node.sh\" $n || exit 1; done\n\
                 exec sh \"$D/wait.sh\" {count}\n",
                count = members.len()
            ),
        ),
        (
            "switchover.sh",
            // patronictl says a refused switchover but exits 0: tell the caller.
            format!(
                "out=$({ctl} switchover --force 2>&1)\nstatus=$?\necho \"$out\"\n\
                 [ $status = 0 ] && echo \"$out\" | grep -q 'Successfully switched over'\n"
            ),
        ),
        (
            "kill-leader.sh",
            format!(
                "# SIGKILL to the leader's Patroni and postmaster: its machine died.\ncd {d}\n\
                 leader=$({ctl} list -f json | python3 -c '\n\
import json, sys\n\
print([x[\"Member\"] for x in json.load(sys.stdin) if x.get(\"Role\") == \"Leader\"][0])')\n\
                 [ -n \"$leader\" ] || {{ echo 'no leader' >&2; exit 1; }}\n\
                 kill -KILL \"$(cat \"$leader.pid\")\" \"$(head -n 1 \"$leader.data/postmaster.pid\")\"\n\
                 echo \"killed $leader\"\n"
            ),
        ),
        (
            "stop.sh",
            format!(
                "# Stops every member (Patroni stops its PostgreSQL), then etcd.\ncd {d}\n\
                 for n in {names}; do [ -f $n.pid ] && kill -TERM \"$(cat $n.pid)\" 2>/dev/null; done\n\
                 for i in $(seq 1 100); do\n  alive=0\n  \
                   for n in {names}; do [ -f $n.pid ] && kill -0 \"$(cat $n.pid)\" 2>/dev/null && alive=1; done\n  \
                   [ $alive = 0 ] && break\n  sleep 0.1\ndone\n\
                 for n in {names}; do\n  [ -f $n.pid ] && kill -KILL \"$(cat $n.pid)\" 2>/dev/null\n  \
                   [ -f $n.data/postmaster.pid ] && kill -KILL \"$(head -n 1 $n.data/postmaster.pid)\" 2>/dev/null\ndone\n\
                 [ -f etcd.pid ] && kill -KILL \"$(cat etcd.pid)\" 2>/dev/null\nexit 0\n"
            ),
        ),
    ];
    // Every script knows the cluster's directory as $D (quoted wherever it is used).
    let set_dir = format!("D={}\n", shell_quote(&dir.display().to_string()));
    for (name, body) in scripts {
        std::fs::write(dir.join(name), format!("#!/bin/sh\n{set_dir}{body}"))?;
    }
    Ok(())
}

/// `s` as one word for `sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `s` as a YAML double-quoted string.
fn yaml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn chown_all(bins: &ServerBinaries, dir: &Path) -> Result<(), KitError> {
    bins.chown(dir)?;
    for e in std::fs::read_dir(dir)? {
        bins.chown(&e?.path())?;
    }
    Ok(())
}

/// Stops the cluster and removes `dir` once this process is gone.
fn spawn_watchdog(dir: &Path) -> std::io::Result<std::process::Child> {
    let script = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 1; done
        sh "$2/stop.sh"; rm -rf "$2"
    "#;
    std::process::Command::new("setsid")
        .args(["sh", "-c", script, "pgprovider-patroni-watchdog"])
        .arg(std::process::id().to_string())
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
}
