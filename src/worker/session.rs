//! A broker session: one connection with its topology, publisher, consumer and queue-depth
//! probe, and the consume loop that runs deliveries until shutdown or until the session breaks.
//! The supervisor in [`super`] opens a new session after a broken one.

use std::sync::Arc;
use std::time::Duration;

use lapin::Connection;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::pipeline::{Pipeline, SessionLink};
use crate::batch::Batcher;
use crate::broker::{self, BrokerError, JobConsumer, Publisher, QueueProbe};
use crate::config::Settings;
use crate::gateway::Gateway;

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Shutdown was asked for and the session drained.
    Stopped,
    /// The broker connection, a channel or the consumer broke; a new session is needed.
    Broken(anyhow::Error),
}

/// An open session, ready to consume.
pub struct Session {
    connection: Arc<Connection>,
    consumer: JobConsumer,
    link: Arc<SessionLink>,
    broken: watch::Receiver<bool>,
    probe: Arc<QueueProbe>,
    /// The queues whose depth is watched: jobs first, then the delay queues, then dead letters.
    queues: Vec<String>,
    poll_interval: Duration,
}

impl Session {
    /// Connects, declares the topology and starts consuming.
    pub async fn open(settings: &Settings) -> Result<Session, BrokerError> {
        let broker = &settings.broker;
        let connection = Arc::new(broker::connect(broker).await?);
        broker::declare_topology(&connection, broker, &settings.retry_queues()).await?;
        let publisher = Publisher::open(&connection, broker).await?;
        let probe = Arc::new(QueueProbe::open(Arc::clone(&connection)).await?);
        let mut queues = vec![broker.jobs_queue.clone()];
        queues.extend(settings.retry_queues());
        queues.push(broker.dead_letter_queue.clone());
        let tag = format!("{}-{}", broker.connection_name, uuid::Uuid::new_v4());
        let consumer = JobConsumer::start(&connection, broker, settings.prefetch(), &tag).await?;
        let (broken_flag, broken) = watch::channel(false);
        Ok(Session {
            connection,
            consumer,
            link: Arc::new(SessionLink {
                publisher,
                broken: broken_flag,
            }),
            broken,
            probe,
            queues,
            poll_interval: Duration::from_millis(settings.telemetry.queue_poll_interval_ms),
        })
    }

    /// Runs each delivery in a task of its own until shutdown or until the session breaks.
    ///
    /// On shutdown: no new deliveries, open batches go out at once, jobs in progress get up to
    /// `shutdown_timeout` to finish, and what is left is given back to the queue (nack with
    /// requeue) for another worker. On a break, jobs in progress are dropped: their channel is
    /// gone, RabbitMQ requeues their deliveries, and none is settled on another channel.
    pub async fn run(
        mut self,
        pipeline: Arc<Pipeline>,
        stopped: &mut watch::Receiver<bool>,
        shutdown_timeout: Duration,
    ) -> SessionEnd {
        let batcher = Arc::clone(&pipeline.executor.batcher);
        let watcher = tokio::spawn(watch_queues(
            Arc::clone(&self.probe),
            self.queues.clone(),
            self.poll_interval,
            Arc::clone(&pipeline),
        ));
        let mut in_progress = JoinSet::new();
        let broken = loop {
            // Reap finished tasks so the set does not grow with every delivery.
            while let Some(finished) = in_progress.try_join_next() {
                if let Err(err) = finished {
                    tracing::error!(error = %err, "a job task ended abnormally");
                }
            }
            tokio::select! {
                _ = super::signalled(stopped) => break None,
                _ = super::signalled(&mut self.broken) => {
                    break Some(anyhow::anyhow!("the publisher channel closed"));
                }
                delivery = self.consumer.next() => match delivery {
                    Some(Ok(incoming)) => {
                        let pipeline = Arc::clone(&pipeline);
                        let link = Arc::clone(&self.link);
                        in_progress.spawn(async move { pipeline.process(incoming, &link).await });
                    }
                    Some(Err(err)) => break Some(anyhow::Error::new(err).context("the consumer failed")),
                    None => break Some(anyhow::anyhow!("the broker cancelled the consumer or closed its channel")),
                },
            }
        };
        watcher.abort();

        if let Some(err) = broken {
            // Dropping the tasks drops their deliveries unsettled; the broker requeues them.
            in_progress.abort_all();
            batcher.set_behind(false);
            let _ = self.connection.close(200, "session broken".into()).await;
            return SessionEnd::Broken(err);
        }

        tracing::info!(
            in_progress = in_progress.len(),
            "stopping: no new deliveries, sending open batches, finishing jobs in progress"
        );
        if let Err(err) = self.consumer.cancel().await {
            tracing::warn!(error = %err, "cannot cancel the consumer");
        }
        batcher.set_flushing(true);
        let drained = tokio::time::timeout(shutdown_timeout, async {
            while in_progress.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                unfinished = in_progress.len(),
                timeout_ms = shutdown_timeout.as_millis() as u64,
                "shutdown timeout reached, giving unfinished deliveries back to the queue"
            );
            in_progress.abort_all();
        }
        // Deliveries still unacked (unfinished jobs, and deliveries received but never started)
        // go back to the queue now rather than when the channel closes.
        if let Err(err) = self.consumer.requeue_unacked().await {
            tracing::warn!(error = %err, "cannot give unacked deliveries back; they return when the channel closes");
        }
        // Close the channels before the connection: a channel still closing when the connection
        // closes makes lapin log a spurious connection error.
        self.consumer.close().await;
        self.link.publisher.close().await;
        self.probe.close().await;
        let _ = self.connection.close(200, "worker stopped".into()).await;
        SessionEnd::Stopped
    }
}

/// Reads the depth of the worker's queues at every interval, for the queue metrics, and tells
/// the batcher when the worker is behind: when at least a full batch of jobs waits in the jobs
/// queue, unconsumed. Batches then wait up to the backlog linger and go out full.
async fn watch_queues(
    probe: Arc<QueueProbe>,
    queues: Vec<String>,
    interval: Duration,
    pipeline: Arc<Pipeline>,
) {
    let batcher: &Batcher<Arc<Gateway>> = &pipeline.executor.batcher;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        for (index, queue) in queues.iter().enumerate() {
            match probe.status(queue).await {
                Ok(status) => {
                    pipeline
                        .metrics
                        .queue_depth(queue, status.messages, status.consumers);
                    if index == 0 {
                        batcher.set_behind(status.messages as usize >= pipeline.backlog_threshold);
                    }
                }
                Err(err) => {
                    // A delay or dead-letter queue deleted by hand comes back with the next
                    // session; until then its depth is unknown.
                    tracing::debug!(error = %err, queue, "cannot read a queue's depth");
                    if index == 0 {
                        batcher.set_behind(false);
                    }
                }
            }
        }
    }
}
