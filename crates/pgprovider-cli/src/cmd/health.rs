//! `pgprovider health`: one line per node.

use anyhow::Context as _;
use pgprovider::config::Node;
use pgprovider::{Config, Connection, Driver};
use pgprovider_tokio_postgres::TokioPostgres;
use std::process::ExitCode;

struct Line {
    node: String,
    up: bool,
    role: String,
    version: String,
    detail: String,
}

pub(crate) async fn run(args: crate::opt::HealthArgs) -> anyhow::Result<ExitCode> {
    let config = match &args.url {
        Some(url) => Config::from_url(url)?,
        None => Config::from_env()?,
    };
    let mut checks = tokio::task::JoinSet::new();
    for (i, node) in config.nodes().iter().enumerate() {
        let (config, node) = (config.clone(), node.clone());
        checks.spawn(async move { (i, check(&config, &node).await) });
    }
    let mut lines: Vec<(usize, Line)> = Vec::new();
    while let Some(r) = checks.join_next().await {
        lines.push(r.context("a health check failed")?);
    }
    lines.sort_by_key(|(i, _)| *i);
    crate::say!(
        "{:<24} {:<5} {:<8} {:<8} replication",
        "node",
        "state",
        "role",
        "version"
    );
    let mut healthy = true;
    for (_, l) in &lines {
        healthy &= l.up;
        crate::say!(
            "{:<24} {:<5} {:<8} {:<8} {}",
            l.node,
            if l.up { "up" } else { "down" },
            l.role,
            l.version,
            l.detail
        );
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn check(config: &Config, node: &Node) -> Line {
    let mut line = Line {
        node: node.to_string(),
        up: false,
        role: "-".into(),
        version: "-".into(),
        detail: String::new(),
    };
    match probe(config, node).await {
        Ok((role, version, detail)) => {
            line.up = true;
            line.role = role;
            line.version = version;
            line.detail = detail;
        }
        Err(e) => line.detail = e.to_string(),
    }
    line
}

async fn probe(config: &Config, node: &Node) -> pgprovider::Result<(String, String, String)> {
    let params = config.connect_params(node).await?;
    let mut conn = TokioPostgres::new().connect(&params).await?;
    let rows = conn
        .simple_query(
            "SELECT pg_is_in_recovery(), current_setting('server_version'), \
             CASE WHEN pg_is_in_recovery() THEN pg_wal_lsn_diff(coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), pg_last_wal_replay_lsn()) END, \
             CASE WHEN pg_is_in_recovery() THEN round(extract(epoch FROM now() - pg_last_xact_replay_timestamp()))::text END",
        )
        .await?;
    let r = &rows[0];
    let version = r
        .get(1)
        .unwrap_or("?")
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_owned();
    let detail = if r.get(0) == Some("t") {
        let lag = r.get(2).unwrap_or("0");
        let ago = r
            .get(3)
            .map(|s| format!(", last replayed transaction {s} s ago"))
            .unwrap_or_default();
        ("standby".to_owned(), format!("replay lag {lag} bytes{ago}"))
    } else {
        let rows = conn
            .simple_query(
                "SELECT count(*), coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0) \
                 FROM pg_stat_replication WHERE state = 'streaming'",
            )
            .await?;
        let (n, lag) = (rows[0].get(0).unwrap_or("0"), rows[0].get(1).unwrap_or("0"));
        (
            "primary".to_owned(),
            format!("{n} streaming standbys, max replay lag {lag} bytes"),
        )
    };
    conn.close().await;
    Ok((detail.0, version, detail.1))
}
