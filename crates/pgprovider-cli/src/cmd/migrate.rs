//! `pgprovider migrate up|status|down`: schema migrations for the database or its tenants.

use crate::Exit;
use crate::opt::{MigrateAction, MigrateArgs};
use indicatif::{ProgressBar, ProgressStyle};
use pgprovider::migrate::{Migrations, Migrator, State, up_tenants};
use pgprovider::provider::{Provider, TopologyOptions};
use pgprovider::{AnyDriver, Config, Connection, Pool};
use std::process::ExitCode;

pub(crate) async fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let migrations = Migrations::from_dir(&args.dir).map_err(|e| Exit(2, e.to_string()))?;
    let config = match &args.url {
        Some(url) => Config::from_url(url)?,
        None => Config::from_env()?,
    };
    let driver = crate::registry().get("tokio-postgres")?;
    // Migrations run on the primary, found among the URL's hosts by the provider.
    let provider = Provider::new(driver, &config, TopologyOptions::default());
    let primary = provider
        .monitor()
        .wait_for_primary(provider.failover_timeout())
        .await?;
    let pool = provider
        .pool(&primary)
        .expect("the provider has a pool per node")
        .clone();
    let migrator = Migrator::new(migrations).with_table(&args.table);
    let tenants = tenants(&pool, &args).await?;
    let code = match (tenants, &args.action) {
        (None, MigrateAction::Up { to }) => {
            let report = migrator.up(&mut *pool.get().await?, *to).await?;
            print_report("applied", &report, "the database is up to date");
            ExitCode::SUCCESS
        }
        (None, MigrateAction::Down { to }) => {
            let report = migrator.down(&mut *pool.get().await?, *to).await?;
            print_report(
                "reverted",
                &report,
                &format!("now at version {to} or below"),
            );
            ExitCode::SUCCESS
        }
        (None, MigrateAction::Status) => status(&migrator, &pool, None).await?,
        (Some(list), MigrateAction::Status) => {
            let mut worst = ExitCode::SUCCESS;
            for t in &list {
                if status(&migrator.clone().with_schema(t.clone()), &pool, Some(t)).await?
                    != ExitCode::SUCCESS
                {
                    worst = ExitCode::from(1);
                }
            }
            worst
        }
        (Some(list), MigrateAction::Up { to: None }) => {
            tenants_up(&pool, &migrator, &list, args.concurrency).await
        }
        (Some(_), _) => {
            return Err(Exit(
                2,
                "with tenants, only `up` (without --to) and `status` are supported".into(),
            )
            .into());
        }
    };
    pool.close().await;
    Ok(code)
}

fn print_report(verb: &str, report: &pgprovider::migrate::Report, end: &str) {
    for (v, name, took) in &report.applied {
        crate::say!("{verb} {v}_{name} ({} ms)", took.as_millis());
    }
    crate::say!("{} migration(s) {verb}; {end}", report.applied.len());
}

/// The tenant schemas asked for: the list, and the schemas matching the pattern.
async fn tenants(
    pool: &Pool<AnyDriver>,
    args: &MigrateArgs,
) -> anyhow::Result<Option<Vec<String>>> {
    let mut list = args.tenants.clone();
    if let Some(pattern) = &args.tenant_pattern {
        let sql = format!(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE '{}' ORDER BY 1",
            pattern.replace('\'', "''")
        );
        for row in pool.get().await?.simple_query(&sql).await? {
            if let Some(name) = row.get(0) {
                if !list.iter().any(|t| t == name) {
                    list.push(name.to_owned());
                }
            }
        }
        if list.is_empty() {
            return Err(Exit(1, format!("no schema matches the pattern {pattern:?}")).into());
        }
    }
    Ok((!list.is_empty()).then_some(list))
}

async fn status(
    migrator: &Migrator,
    pool: &Pool<AnyDriver>,
    tenant: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let lines = migrator.status(&mut *pool.get().await?).await?;
    if let Some(t) = tenant {
        crate::say!("tenant {t}:");
    }
    let mut changed = false;
    for s in &lines {
        let state = match &s.state {
            State::Applied {
                applied_at,
                duration_ms,
            } => format!("applied {applied_at} ({duration_ms} ms)"),
            State::Pending => "pending".to_owned(),
            State::Changed { .. } => {
                changed = true;
                "CHANGED since it was applied".to_owned()
            }
            State::Unknown => "applied, but no file has this version".to_owned(),
            _ => "unknown state".to_owned(),
        };
        crate::say!("  {:>6}  {:<32} {state}", s.version, s.name);
    }
    if changed {
        eprintln!(
            "error: applied migration files changed; restore them and put changes in new migrations"
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

async fn tenants_up(
    pool: &Pool<AnyDriver>,
    migrator: &Migrator,
    tenants: &[String],
    concurrency: usize,
) -> ExitCode {
    let bar = ProgressBar::new(tenants.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} tenants {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report = up_tenants(pool, migrator, tenants, concurrency, |tenant, _| {
        bar.set_message(tenant.to_owned());
        bar.inc(1);
    })
    .await;
    bar.finish_and_clear();
    let applied: usize = report.succeeded.iter().map(|(_, r)| r.applied.len()).sum();
    crate::say!(
        "{} tenant(s) migrated ({applied} migration(s) applied), {} failed",
        report.succeeded.len(),
        report.failed.len()
    );
    for (tenant, e) in &report.failed {
        crate::say!("  {tenant}: {e}");
    }
    if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        crate::say!("fix the failed tenants and run again: the others have nothing left to do");
        ExitCode::from(1)
    }
}
