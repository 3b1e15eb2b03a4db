//! `/healthz`, `/readyz` and `/metrics` as an [axum] router (feature `http`).
//!
//! - `GET /healthz`: liveness: `200 ok` while the process serves requests.
//! - `GET /readyz`: readiness: the [`HealthReport`](crate::health::HealthReport) as JSON,
//!   `200` when ready (a primary is trusted), `503` when down.
//! - `GET /metrics`: the Prometheus text of every metric (pool figures refreshed first).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use pgprovider::provider::{Provider, TopologyOptions};
//! let config = pgprovider::Config::from_url("postgres://app@db1,db2/app")?;
//! let metrics = pgprovider::observe::install_prometheus()?;
//! let provider = Provider::new(pgprovider_tokio_postgres::TokioPostgres::new(), &config, TopologyOptions::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9187").await?;
//! axum::serve(listener, pgprovider::http::router(provider, metrics)).await?;
//! # Ok(()) }
//! ```

use crate::Driver;
use crate::provider::Provider;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

/// The router; see the [module docs](self).
pub fn router<D>(provider: Provider<D>, metrics: PrometheusHandle) -> Router
where
    D: Driver + Send + Sync + 'static,
{
    let ready = provider.clone();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let report = ready.health();
                async move {
                    let code = if report.ready() {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (
                        code,
                        [(header::CONTENT_TYPE, "application/json")],
                        report.to_json(),
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                provider.record_metrics();
                let text = metrics.render();
                async move {
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
                }
            }),
        )
}
