//! `pgprovider listen` and `pgprovider notify`.

use crate::Exit;
use crate::opt::{ListenArgs, NotifyArgs};
use futures_util::StreamExt;
use pgprovider::Config;
use pgprovider::provider::{Provider, TopologyOptions};
use pgprovider_tokio_postgres::{Event, Listener, TokioPostgres};
use serde_json::json;
use std::process::ExitCode;

fn config(url: &Option<String>) -> anyhow::Result<Config> {
    Ok(match url {
        Some(url) => Config::from_url(url)?,
        None => Config::from_env()?,
    })
}

pub(crate) async fn listen(args: ListenArgs) -> anyhow::Result<ExitCode> {
    let config = config(&args.url)?;
    let mut nodes = Vec::new();
    for node in config.nodes() {
        nodes.push(config.connect_params(node).await?);
    }
    let listener = Listener::connect(nodes).await?;
    let mut streams = Vec::new();
    for channel in &args.channels {
        let sub = listener
            .subscribe(channel)
            .await
            .map_err(|e| Exit(2, e.to_string()))?;
        streams.push(sub);
    }
    eprintln!("listening on {}", args.channels.join(", "));
    let mut all = futures_util::stream::select_all(streams);
    let mut seen = 0;
    while args.count.is_none_or(|c| seen < c) {
        let event = tokio::select! {
            e = all.next() => e,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(event) = event else { break };
        let line = match event {
            Event::Notification(n) => {
                seen += 1;
                json!({"channel": n.channel, "payload": n.payload, "process_id": n.process_id})
            }
            Event::Gap => {
                json!({"event": "gap", "note": "reconnected: notifications sent meanwhile were lost"})
            }
            Event::Lagged(n) => json!({"event": "lagged", "lost": n}),
            _ => continue,
        };
        crate::say!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn notify(args: NotifyArgs) -> anyhow::Result<ExitCode> {
    pgprovider::check_notification(&args.channel, &args.payload)
        .map_err(|e| Exit(2, e.to_string()))?;
    let config = config(&args.url)?;
    // On the primary, found among the URL's hosts by the provider.
    let provider = Provider::new(TokioPostgres::new(), &config, TopologyOptions::default());
    provider
        .primary()
        .conn()
        .await?
        .notify(&args.channel, &args.payload)
        .await?;
    provider.close().await;
    Ok(ExitCode::SUCCESS)
}
