//! The worker: startup (token scopes, the first broker session), the supervisor that opens a
//! new [`session`] when the broker breaks one, and shutdown. Each delivery runs through the
//! [`pipeline`] concurrently, up to the window of all consumers (consumers x prefetch).
//!
//! It wires the other modules together but owns no wire format: jobs are read by
//! [`crate::job`], Fastly is called by [`crate::fastly`], AMQP is handled by [`crate::broker`].

mod accounts;
mod execute;
mod outcome;
mod pipeline;
mod session;
mod settle;

pub use accounts::{AccountEntry, AccountRegistry};
pub use execute::Executor;
pub use outcome::Outcome;

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;

use crate::batch::Batcher;
use crate::config::{Config, Settings};
use crate::fastly::FastlyClient;
use crate::gateway::Gateway;
use crate::limits::Limits;
use crate::retry::RetryPolicy;
use crate::telemetry::{Metrics, TelemetryServer};
use pipeline::Pipeline;
use session::{Session, SessionEnd};

/// A running worker. Dropping the handle does not stop the worker; call
/// [`WorkerHandle::shutdown`] or send true through [`WorkerHandle::stopper`].
pub struct WorkerHandle {
    /// Set to true to start a graceful shutdown.
    stop: watch::Sender<bool>,
    /// True while a broker session consumes jobs.
    ready: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    metrics: Arc<Metrics>,
    /// The metrics and health endpoint, when configured; it stops with the handle.
    telemetry: Option<TelemetryServer>,
    /// Rechecks the tokens; stopped with the handle.
    token_checks: tokio::task::JoinHandle<()>,
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.token_checks.abort();
    }
}

impl WorkerHandle {
    /// Stops consuming, waits for jobs in progress (up to the shutdown timeout), and returns
    /// how the worker ended.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        (&mut self.task).await.context("the worker task panicked")?
    }

    /// Waits until the worker ends by itself, for example because the broker went away.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        (&mut self.task).await.context("the worker task panicked")?
    }

    /// Returns the worker's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Returns the address of the metrics and health endpoint, if it runs.
    pub fn telemetry_addr(&self) -> Option<std::net::SocketAddr> {
        self.telemetry.as_ref().map(TelemetryServer::addr)
    }

    /// Returns a receiver of the worker's readiness: true while it is connected and consuming.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }

    /// Returns a sender that starts a graceful shutdown when it sends true.
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Starts a worker. Returns once the topology is declared and the consumer is running, so a
/// job published after this returns is processed. A broker that cannot be reached or a queue
/// that conflicts is an error here; after the start, the worker reconnects by itself.
pub async fn start(config: Config) -> anyhow::Result<WorkerHandle> {
    let settings = config.settings.clone();
    let metrics = Arc::new(Metrics::new());
    let client = FastlyClient::new(config.api_url.clone(), &settings.fastly)
        .context("cannot build the HTTP client")?;
    let retry = RetryPolicy::from_settings(&settings.fastly.retry);
    // Peers are expected to run with the same settings, so this shutdown timeout is theirs.
    let limits = Limits::new(config.accounts.keys().map(String::as_str), &settings.limits)
        .with_share_growth_delay(settings.worker.shutdown_timeout());
    let gateway = Arc::new(Gateway::new(
        client,
        limits,
        retry,
        config.accounts.values().cloned(),
        settings.redelivery.delivery_budget(),
        Arc::clone(&metrics),
    ));
    let batcher = Arc::new(Batcher::with_backlog_linger(
        Arc::clone(&gateway),
        settings.batch.max_keys,
        settings.batch.linger(),
        settings.batch.backlog_linger(),
        // Every consumer has its own prefetch window, and all of them feed one batcher.
        usize::from(settings.prefetch()) * usize::from(settings.broker.consumers.max(1)),
    ));

    let session = Session::open(&settings).await?;
    tracing::info!(url = %settings.broker.redacted_url(), "connected to RabbitMQ");
    let (ready_flag, ready) = watch::channel(true);
    let telemetry = match settings.telemetry.listen.as_str() {
        "" => None,
        listen => Some(
            TelemetryServer::start(listen, Arc::clone(&metrics), ready.clone())
                .await
                .with_context(|| {
                    format!(
                        "cannot serve metrics on {listen}; set another address in \
                         telemetry.listen (FPW_TELEMETRY__LISTEN), or an empty one to turn it off"
                    )
                })?,
        ),
    };
    let accounts = AccountRegistry::load(
        &gateway,
        &config.accounts,
        settings.fastly.request_timeout() * 2,
        settings.telemetry.token_expiry_warning_days,
    )
    .await;
    let token_checks = tokio::spawn(accounts::check_tokens_periodically(
        Arc::clone(&gateway),
        config.accounts.clone(),
        settings.telemetry.clone(),
        settings.fastly.request_timeout() * 2,
    ));
    let pipeline = Arc::new(Pipeline {
        limits: settings.jobs.clone(),
        redelivery: settings.redelivery.clone(),
        retry_queues: settings.retry_queues(),
        // Publishing the result and the ack must fit before the budget ends.
        settle_reserve: settings.broker.publish_timeout(),
        accounts,
        executor: Executor { gateway, batcher },
        backlog_threshold: settings.batch.max_keys,
        metrics: Arc::clone(&metrics),
    });
    metrics.broker_consuming(false, 0);
    tracing::info!(
        queue = %settings.broker.jobs_queue,
        consumers = settings.broker.consumers,
        prefetch = settings.prefetch(),
        window = u32::from(settings.prefetch()) * u32::from(settings.broker.consumers.max(1)),
        linger_ms = settings.batch.linger_ms,
        fastly = %config.api_url,
        accounts = config.accounts.len(),
        "consuming jobs"
    );

    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(supervise(session, pipeline, settings, stopped, ready_flag));
    Ok(WorkerHandle {
        stop,
        ready,
        task,
        metrics,
        telemetry,
        token_checks,
    })
}

/// Backoff between reconnection attempts: from 250 ms, doubling, to 30 s, with full jitter.
const RECONNECT_MIN: std::time::Duration = std::time::Duration::from_millis(250);
const RECONNECT_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs sessions until shutdown: when one breaks (broker restart, closed connection or
/// channel, cancelled consumer), it opens a new one with backoff, declaring the topology again.
/// `ready` is false while no session consumes.
async fn supervise(
    first: Session,
    pipeline: Arc<Pipeline>,
    settings: Settings,
    mut stopped: watch::Receiver<bool>,
    ready: watch::Sender<bool>,
) -> anyhow::Result<()> {
    let shutdown_timeout = settings.worker.shutdown_timeout();
    let mut session = first;
    loop {
        let end = session
            .run(Arc::clone(&pipeline), &mut stopped, shutdown_timeout)
            .await;
        let cause = match end {
            SessionEnd::Stopped => return Ok(()),
            SessionEnd::Broken(cause) => cause,
        };
        ready.send_replace(false);
        pipeline.metrics.broker_lost(&cause);

        let mut ceiling = RECONNECT_MIN;
        let mut failures = 0u32;
        session = loop {
            let delay = crate::retry::full_jitter(ceiling).max(RECONNECT_MIN / 2);
            tokio::select! {
                _ = signalled(&mut stopped) => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
            match Session::open(&settings).await {
                Ok(session) => break session,
                Err(err) => {
                    failures += 1;
                    pipeline.metrics.reconnect_failed(&err, failures);
                    ceiling = (ceiling * 2).min(RECONNECT_MAX);
                }
            }
        };
        ready.send_replace(true);
        pipeline.metrics.broker_consuming(true, failures);
    }
}

/// Resolves once the flag is true. A flag whose sender is gone never resolves, so dropping a
/// [`WorkerHandle`] does not stop the worker.
pub(super) async fn signalled(flag: &mut watch::Receiver<bool>) {
    if flag.wait_for(|set| *set).await.is_err() {
        std::future::pending::<()>().await;
    }
}
