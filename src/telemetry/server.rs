//! The telemetry endpoint: `/metrics` in the Prometheus text format, `/healthz` while the
//! process runs, and `/readyz` while the worker consumes jobs with working tokens.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Metrics;

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
}

/// A running telemetry endpoint; dropping it stops the server.
pub struct TelemetryServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TelemetryServer {
    /// Binds `listen` and serves until dropped. `ready` is the worker's broker readiness.
    pub async fn start(
        listen: &str,
        metrics: Arc<Metrics>,
        ready: watch::Receiver<bool>,
    ) -> std::io::Result<TelemetryServer> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/metrics", get(render_metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readiness))
            .with_state(Shared { metrics, ready });
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(error = %err, "the telemetry endpoint stopped");
            }
        });
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        Ok(TelemetryServer { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TelemetryServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn render_metrics(State(shared): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}

async fn readiness(State(shared): State<Shared>) -> impl IntoResponse {
    if !*shared.ready.borrow() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not connected to RabbitMQ\n".to_owned(),
        );
    }
    if let Some(problem) = shared.metrics.token_problem() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {problem}\n"),
        );
    }
    (StatusCode::OK, "ready\n".to_owned())
}
