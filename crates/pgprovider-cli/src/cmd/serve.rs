//! `pgprovider serve`: `/healthz`, `/readyz` and `/metrics` (with this process's own
//! figures) for a provider over the nodes of a URL (or of an embedded throwaway cluster when
//! there is none), and with `--profiling` `/debug/pprof/profile?seconds=N` (feature
//! `profiling`, on by default): a CPU profile of the process as folded stacks.

use crate::Exit;
use pgprovider::Config;
use pgprovider::observe::{Hooks, MetricsHook};
use pgprovider::provider::{Provider, TopologyOptions};
use pgprovider_tokio_postgres::TokioPostgres;
use std::process::ExitCode;

pub(crate) async fn run(args: crate::opt::ServeArgs) -> anyhow::Result<ExitCode> {
    let (config, _cluster) = match &args.url {
        Some(url) => (Config::from_url(url)?, None),
        None => {
            let cluster = crate::cmd::demo::start_embedded().await?;
            (Config::from_url(&cluster.primary().url())?, Some(cluster))
        }
    };
    let addr: std::net::SocketAddr = args
        .listen
        .parse()
        .map_err(|e| Exit(2, format!("--listen {}: {e} (give host:port)", args.listen)))?;
    let metrics = pgprovider::observe::install_prometheus()?;
    let hooks = Hooks::builder().hook(0, MetricsHook::new()).build();
    let provider = Provider::with_hooks(
        TokioPostgres::new(),
        &config,
        TopologyOptions::default(),
        hooks,
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Exit(2, format!("cannot listen on {addr}: {e}")))?;
    if args.profiling && !cfg!(feature = "profiling") {
        return Err(Exit(
            2,
            "--profiling needs a pgprovider built with the `profiling` feature".into(),
        )
        .into());
    }
    let profile = if args.profiling {
        ", /debug/pprof/profile"
    } else {
        ""
    };
    crate::say!(
        "pgprovider serve: http://{}/healthz, /readyz, /metrics{profile} for {}",
        listener.local_addr()?,
        config.redacted_url()
    );
    let app = pgprovider::http::router(provider, metrics);
    #[cfg(feature = "profiling")]
    let app = if args.profiling {
        app.merge(pgprovider::http::profiling_router())
    } else {
        app
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}
