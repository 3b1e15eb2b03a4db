//! `pgprovider bench`: workloads × contenders, interleaved round by round, medians and
//! ratios, optionally as JSON.
//!
//! Every contender connects once; then each round runs every workload for every contender
//! in turn (so drifts of the machine hit all of them alike), and the report gives the median
//! over rounds. The memory a contender's connections take is measured when it connects (the
//! growth of this process's resident set, divided by the connections); the peak during a run
//! is the growth of the resident set while it was measured.

mod contenders;
mod deadline;
mod many;
mod measure;
#[cfg(feature = "peers")]
mod peers;
mod report;
mod scale;

use crate::Exit;
use crate::opt::BenchArgs;
use anyhow::Context as _;
use contenders::{Contender, Workload};
use indicatif::{ProgressBar, ProgressStyle};
use pgprovider::{Config, Pool};
use pgprovider_tokio_postgres::TokioPostgres;
use std::process::ExitCode;
use std::sync::Arc;

/// What one (workload, contender) pair measured, every round.
pub(crate) struct Outcome {
    pub(crate) workload: Workload,
    pub(crate) contender: &'static str,
    pub(crate) tasks: usize,
    pub(crate) rounds: Vec<measure::Sample>,
    pub(crate) mem_per_conn_kib: u64,
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let (workloads, names) = choose(&args)?;
    if let Some(n) = args.many {
        let url = args.url.as_deref().map(plaintext);
        let value = many::run(&args, url.as_deref(), n).await?;
        write_json(&args, "many", value)?;
        return Ok(ExitCode::SUCCESS);
    }
    let (url, cluster) = match &args.url {
        Some(url) => (url.clone(), None),
        None => {
            let cluster = crate::cmd::demo::start_embedded().await?;
            (cluster.primary().url(), Some(cluster))
        }
    };
    let url = plaintext(&url);
    let where_ = if cluster.is_some() {
        "an embedded throwaway cluster"
    } else {
        "DATABASE_URL"
    };
    let config = Config::from_url(&url)?;
    crate::say!(
        "pgprovider bench on {} ({where_}): {} connections per contender, {} tasks, {} rounds of {:?} (+{:?} warm-up) per workload and contender",
        config.nodes()[0],
        args.connections,
        args.tasks,
        args.rounds,
        args.duration,
        args.warmup
    );
    if args.autoscale || !args.deadlines.is_empty() {
        let (key, value) = if args.autoscale {
            ("autoscale", scale::run(&args, &url).await?)
        } else {
            ("deadlines", deadline::run(&args, &url).await?)
        };
        drop(cluster);
        write_json(&args, key, value)?;
        return Ok(ExitCode::SUCCESS);
    }
    let setup = Pool::new(TokioPostgres::new(), &config, &config.nodes()[0]);
    contenders::prepare_accounts(&setup)
        .await
        .context("cannot create the accounts table")?;
    setup.close().await;

    let mut connected = Vec::new();
    let mut raw = None;
    for name in &names {
        let before = measure::rss_kib();
        let c = Contender::connect(name, &url, args.connections, args.pipeline_depth, &raw)
            .await
            .with_context(|| format!("cannot connect {name}"))?;
        let mem = measure::rss_kib().saturating_sub(before) / args.connections as u64;
        if let (Contender::Raw(r), None) = (&c, &raw) {
            raw = Some(r.clone());
        }
        connected.push((*name, c, mem));
    }

    let runs: usize = workloads
        .iter()
        .map(|w| names.iter().filter(|n| contenders::supports(n, *w)).count())
        .sum();
    let bar = ProgressBar::new((runs * args.rounds) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} runs, {eta} left: {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut outcomes: Vec<Outcome> = Vec::new();
    for round in 0..args.rounds {
        for w in &workloads {
            for (name, c, mem) in &connected {
                if !contenders::supports(name, *w) {
                    continue;
                }
                bar.set_message(format!("round {}, {}, {name}", round + 1, w.name()));
                let tasks = if *name == "raw" {
                    args.connections
                } else {
                    w.tasks(args.tasks)
                };
                let sample = measure::drive(
                    Arc::new(c.op(*w)),
                    tasks,
                    w.unmeasured_tasks(),
                    args.warmup,
                    args.duration,
                )
                .await
                .with_context(|| format!("{name} failed in {}", w.name()))?;
                match outcomes
                    .iter_mut()
                    .find(|o| o.workload == *w && o.contender == *name)
                {
                    Some(o) => o.rounds.push(sample),
                    None => outcomes.push(Outcome {
                        workload: *w,
                        contender: name,
                        tasks,
                        rounds: vec![sample],
                        mem_per_conn_kib: *mem,
                    }),
                }
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    for (_, c, _) in connected {
        c.close().await;
    }
    drop(cluster);
    report::print(&outcomes, &args);
    if let Some(path) = &args.json {
        std::fs::write(path, report::json(&outcomes, &args).to_string())
            .with_context(|| format!("cannot write {}", path.display()))?;
        crate::say!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `{key: value}` to `--json`, when asked.
fn write_json(args: &BenchArgs, key: &str, value: serde_json::Value) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::json!({ key: value }).to_string())
            .with_context(|| format!("cannot write {}", path.display()))?;
        crate::say!("wrote {}", path.display());
    }
    Ok(())
}

/// The workloads and contenders asked for, checked.
fn choose(args: &BenchArgs) -> anyhow::Result<(Vec<Workload>, Vec<&'static str>)> {
    if args.rounds == 0 || args.connections == 0 || args.tasks == 0 || args.duration.is_zero() {
        return Err(Exit(
            2,
            "--rounds, --connections, --tasks and --duration must be above zero".into(),
        )
        .into());
    }
    if !args.deadlines.is_empty() && !args.workloads.is_empty() {
        return Err(Exit(
            2,
            "--deadlines runs its own workload (SELECT 1 under each deadline); leave out --workloads"
                .into(),
        )
        .into());
    }
    if args
        .many
        .is_some_and(|n| n == 0 || n > pgprovider::config::MAX_POOL_SIZE)
    {
        return Err(Exit(
            2,
            format!(
                "--many must be between 1 and {}",
                pgprovider::config::MAX_POOL_SIZE
            ),
        )
        .into());
    }
    let special = [
        args.many.is_some(),
        args.autoscale,
        !args.deadlines.is_empty(),
    ];
    if special.iter().filter(|s| **s).count() > 1 {
        return Err(Exit(
            2,
            "--many, --autoscale and --deadlines each run a workload of their own: give one".into(),
        )
        .into());
    }
    if (args.many.is_some() || args.autoscale) && !args.workloads.is_empty() {
        return Err(Exit(
            2,
            "--many and --autoscale run workloads of their own; leave out --workloads".into(),
        )
        .into());
    }
    if args.deadlines.iter().any(|d| d.is_zero()) {
        return Err(Exit(2, "--deadlines must be above zero".into()).into());
    }
    let all: Vec<&str> = Workload::ALL.iter().map(|w| w.name()).collect();
    let mut workloads = Vec::new();
    for name in &args.workloads {
        match Workload::ALL.iter().find(|w| w.name() == name) {
            Some(w) => workloads.push(*w),
            None => {
                return Err(Exit(
                    2,
                    format!(
                        "unknown workload {name:?}; the workloads are {}",
                        all.join(", ")
                    ),
                )
                .into());
            }
        }
    }
    if workloads.is_empty() {
        workloads = Workload::ALL.to_vec();
    }
    let compiled = contenders::names();
    let mut names = Vec::new();
    for name in &args.contenders {
        match compiled.iter().find(|c| *c == name) {
            Some(c) => names.push(*c),
            None => {
                let hint = if ["deadpool", "bb8", "sqlx"].contains(&name.as_str()) {
                    " (the peers are built with `--features peers`)"
                } else {
                    ""
                };
                return Err(Exit(
                    2,
                    format!(
                        "unknown contender {name:?}; this binary has {}{hint}",
                        compiled.join(", ")
                    ),
                )
                .into());
            }
        }
    }
    if names.is_empty() {
        names = compiled;
    }
    Ok((workloads, names))
}

/// `url` with `sslmode=disable` unless it names a mode: every contender then does the same
/// work (the raw clients and the peers here connect without TLS).
fn plaintext(url: &str) -> String {
    if url.contains("sslmode=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&sslmode=disable")
    } else {
        format!("{url}?sslmode=disable")
    }
}
