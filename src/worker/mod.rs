//! The worker: startup (broker topology, token scopes), the consume loop that runs each
//! delivery through the [`pipeline`] concurrently up to the prefetch limit, and shutdown.
//!
//! It wires the other modules together but owns no wire format: jobs are read by
//! [`crate::job`], Fastly is called by [`crate::fastly`], AMQP is handled by [`crate::broker`].

mod accounts;
mod execute;
mod outcome;
mod pipeline;
mod settle;

pub use accounts::{AccountEntry, AccountRegistry};
pub use execute::Executor;
pub use outcome::Outcome;

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::batch::Batcher;
use crate::broker::{self, DepthProbe, JobConsumer, Publisher};
use crate::config::Config;
use crate::fastly::FastlyClient;
use crate::gateway::Gateway;
use crate::limits::Limits;
use crate::retry::RetryPolicy;
use pipeline::Pipeline;

/// A running worker. Dropping the handle does not stop the worker; call
/// [`WorkerHandle::shutdown`] or send true through [`WorkerHandle::stopper`].
pub struct WorkerHandle {
    /// Set to true to start a graceful shutdown.
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl WorkerHandle {
    /// Stops consuming, waits for jobs in progress (up to the shutdown timeout), and returns
    /// how the worker ended.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await.context("the worker task panicked")?
    }

    /// Waits until the worker ends by itself, for example because the broker went away.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the worker task panicked")?
    }

    /// Returns a sender that starts a graceful shutdown when it sends true.
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Starts a worker. Returns once the topology is declared and the consumer is running, so a
/// job published after this returns is processed.
pub async fn start(config: Config) -> anyhow::Result<WorkerHandle> {
    let settings = &config.settings;
    let client = FastlyClient::new(config.api_url.clone(), &settings.fastly)
        .context("cannot build the HTTP client")?;
    let retry = RetryPolicy::from_settings(&settings.fastly.retry);
    let limits = Limits::new(config.accounts.keys().map(String::as_str), &settings.limits);
    let gateway = Arc::new(Gateway::new(
        client,
        limits,
        retry,
        config.accounts.values().cloned(),
        settings.redelivery.delivery_budget(),
    ));
    let prefetch = settings.prefetch();
    let batcher = Arc::new(Batcher::with_backlog_linger(
        Arc::clone(&gateway),
        settings.batch.max_keys,
        settings.batch.linger(),
        settings.batch.backlog_linger(),
        usize::from(prefetch),
    ));

    let connection = broker::connect(&settings.broker).await?;
    tracing::info!(url = %settings.broker.redacted_url(), "connected to RabbitMQ");
    let retry_queues = settings.retry_queues();
    broker::declare_topology(&connection, &settings.broker, &retry_queues).await?;

    let accounts = AccountRegistry::load(
        &gateway,
        &config.accounts,
        settings.fastly.request_timeout() * 2,
    )
    .await;
    let publisher = Publisher::open(&connection, &settings.broker).await?;
    let consumer_tag = format!(
        "{}-{}",
        settings.broker.connection_name,
        uuid::Uuid::new_v4()
    );
    let consumer =
        JobConsumer::start(&connection, &settings.broker, prefetch, &consumer_tag).await?;
    tracing::info!(
        queue = %settings.broker.jobs_queue,
        prefetch,
        linger_ms = settings.batch.linger_ms,
        fastly = %config.api_url,
        accounts = config.accounts.len(),
        "consuming jobs"
    );

    let (broken, broken_seen) = watch::channel(false);
    let pipeline = Arc::new(Pipeline {
        limits: settings.jobs.clone(),
        redelivery: settings.redelivery.clone(),
        retry_queues,
        // Publishing the result and the ack must fit before the budget ends.
        settle_reserve: settings.broker.publish_timeout(),
        accounts,
        executor: Executor { gateway, batcher },
        publisher,
        broken,
    });
    let probe = Arc::new(DepthProbe::open(&connection, &settings.broker.jobs_queue).await?);
    let watcher = tokio::spawn(watch_backlog(
        Arc::clone(&probe),
        Arc::clone(&pipeline.executor.batcher),
        settings.batch.max_keys,
    ));
    let (stop, stopped) = watch::channel(false);
    let shutdown_timeout = settings.worker.shutdown_timeout();
    let task = tokio::spawn(async move {
        let result = consume(consumer, pipeline, stopped, broken_seen, shutdown_timeout).await;
        watcher.abort();
        probe.close().await;
        let _ = connection.close(200, "worker stopped".into()).await;
        result
    });
    Ok(WorkerHandle { stop, task })
}

/// Runs each delivery in a task of its own until shutdown or until the consumer ends.
async fn consume(
    mut consumer: JobConsumer,
    pipeline: Arc<Pipeline>,
    mut stopped: watch::Receiver<bool>,
    mut broken: watch::Receiver<bool>,
    shutdown_timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let mut in_progress = JoinSet::new();
    let ended = loop {
        // Reap finished tasks so the set does not grow with every delivery.
        while let Some(finished) = in_progress.try_join_next() {
            if let Err(err) = finished {
                tracing::error!(error = %err, "a job task panicked; its delivery stays unacked until the channel closes");
            }
        }
        tokio::select! {
            _ = signalled(&mut stopped) => break Ok(()),
            _ = signalled(&mut broken) => {
                break Err(anyhow::anyhow!("the publisher channel closed; results cannot be published"));
            }
            delivery = consumer.next() => match delivery {
                Some(Ok(incoming)) => {
                    let pipeline = Arc::clone(&pipeline);
                    in_progress.spawn(async move { pipeline.process(incoming).await });
                }
                Some(Err(err)) => break Err(anyhow::Error::new(err).context("the consumer failed")),
                None => break Err(anyhow::anyhow!("the broker cancelled the consumer or closed its channel")),
            },
        }
    };

    // NOTE: when the consumer ends because the broker went away, unfinished deliveries cannot
    // be settled on the dead channel; the broker requeues them itself.
    if ended.is_ok() {
        tracing::info!(
            in_progress = in_progress.len(),
            "stopping: no new deliveries, finishing jobs in progress"
        );
        if let Err(err) = consumer.cancel().await {
            tracing::warn!(error = %err, "cannot cancel the consumer");
        }
    }
    let drained = tokio::time::timeout(shutdown_timeout, async {
        while in_progress.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            unfinished = in_progress.len(),
            timeout_ms = shutdown_timeout.as_millis() as u64,
            "shutdown timeout reached; unfinished deliveries go back to the queue when the channel closes"
        );
        in_progress.abort_all();
    }
    // Close both channels before the connection; a channel still closing when the connection
    // closes makes lapin log a spurious connection error.
    consumer.close().await;
    pipeline.publisher.close().await;
    ended
}

/// How often the worker looks at the depth of the jobs queue.
const BACKLOG_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Tells the batcher when the worker is behind: when at least a full batch of jobs waits in the
/// queue, unconsumed. Batches then wait up to the backlog linger and go out full.
async fn watch_backlog(
    probe: Arc<DepthProbe>,
    batcher: Arc<Batcher<Arc<Gateway>>>,
    full_batch: usize,
) {
    let mut interval = tokio::time::interval(BACKLOG_PROBE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match probe.ready().await {
            Ok(ready) => batcher.set_behind(ready as usize >= full_batch),
            Err(err) => {
                // Without a depth the worker keeps the short linger; nothing else depends on it.
                tracing::debug!(error = %err, "cannot read the jobs queue depth");
                batcher.set_behind(false);
                return;
            }
        }
    }
}

/// Resolves once the flag is true. A flag whose sender is gone never resolves, so dropping a
/// [`WorkerHandle`] does not stop the worker.
async fn signalled(flag: &mut watch::Receiver<bool>) {
    if flag.wait_for(|set| *set).await.is_err() {
        std::future::pending::<()>().await;
    }
}
