//! A broker session: one connection with its topology, its consumer lanes (a consumer and a
//! publisher each) and a queue-depth probe, and the loops that run deliveries until shutdown
//! or until the session breaks. The supervisor in [`super`] opens a new session after a broken
//! one.

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

/// The reason a session ended.
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
    lanes: Vec<Lane>,
    probe: Arc<QueueProbe>,
    /// The queues whose depth is watched: jobs first, then the delay queues, then dead letters.
    queues: Vec<String>,
    poll_interval: Duration,
    /// Consumers of this process on the jobs queue, for its share of the budgets.
    own_consumers: usize,
}

/// One consumer of the jobs queue with a publisher of its own: a channel pair that works in
/// parallel with the others on the broker.
struct Lane {
    /// The lane's number in this process, from 1, for logs.
    number: usize,
    consumer: JobConsumer,
    link: Arc<SessionLink>,
    broken: watch::Receiver<bool>,
}

/// The reason a consumer lane ended.
enum LaneEnd {
    Stopped,
    /// Another lane broke, so this one stopped without draining.
    Aborted,
    Broken(anyhow::Error),
}

impl Session {
    /// Connects, declares the topology and starts `broker.consumers` consumers.
    pub async fn open(settings: &Settings) -> Result<Session, BrokerError> {
        let broker = &settings.broker;
        let connection = Arc::new(broker::connect(broker).await?);
        broker::declare_topology(&connection, broker, &settings.retry_queues()).await?;
        let probe = Arc::new(QueueProbe::open(Arc::clone(&connection)).await?);
        let mut queues = vec![broker.jobs_queue.clone()];
        queues.extend(settings.retry_queues());
        queues.push(broker.dead_letter_queue.clone());

        let mut lanes = Vec::with_capacity(usize::from(broker.consumers));
        for number in 1..=usize::from(broker.consumers.max(1)) {
            let publisher = Publisher::open(&connection, broker).await?;
            let tag = format!("{}-{}", broker.connection_name, uuid::Uuid::new_v4());
            let consumer =
                JobConsumer::start(&connection, broker, settings.prefetch(), &tag).await?;
            let (broken_flag, broken) = watch::channel(false);
            lanes.push(Lane {
                number,
                consumer,
                link: Arc::new(SessionLink {
                    publisher,
                    broken: broken_flag,
                }),
                broken,
            });
        }
        Ok(Session {
            connection,
            own_consumers: lanes.len(),
            lanes,
            probe,
            queues,
            poll_interval: Duration::from_millis(settings.telemetry.queue_poll_interval_ms),
        })
    }

    /// Runs every lane until shutdown or until one of them breaks.
    ///
    /// On shutdown: no new deliveries, open batches go out at once, jobs in progress get up to
    /// `shutdown_timeout` to finish, and what is left is given back to the queue (nack with
    /// requeue) for another worker. When a lane breaks, the whole session ends: jobs in
    /// progress are dropped, RabbitMQ requeues their deliveries, and none is settled on
    /// another channel.
    pub async fn run(
        self,
        pipeline: Arc<Pipeline>,
        stopped: &mut watch::Receiver<bool>,
        shutdown_timeout: Duration,
    ) -> SessionEnd {
        let batcher = Arc::clone(&pipeline.executor.batcher);
        // Take this process's share of the budgets before the first job runs, so a worker that
        // joins others does not spend a whole budget's burst first.
        match self.probe.status(&self.queues[0]).await {
            Ok(status) => apply_jobs_queue_status(
                &pipeline,
                self.own_consumers,
                status.messages,
                status.consumers,
                true,
            ),
            Err(err) => tracing::warn!(
                error = %err,
                "cannot read the consumer count of the jobs queue, so the budget share stays as \
                 it was (the whole budget in a first session) until the next poll"
            ),
        }
        let watcher = tokio::spawn(watch_queues(
            Arc::clone(&self.probe),
            self.queues.clone(),
            self.poll_interval,
            self.own_consumers,
            Arc::clone(&pipeline),
            stopped.clone(),
        ));

        let (abort, aborted) = watch::channel(false);
        let mut lanes = JoinSet::new();
        for lane in self.lanes {
            lanes.spawn(run_lane(
                lane,
                Arc::clone(&pipeline),
                stopped.clone(),
                aborted.clone(),
                shutdown_timeout,
            ));
        }

        let mut end = SessionEnd::Stopped;
        while let Some(finished) = lanes.join_next().await {
            let cause = match finished {
                Ok(LaneEnd::Broken(cause)) => cause,
                Ok(LaneEnd::Stopped | LaneEnd::Aborted) => continue,
                Err(err) => anyhow::anyhow!("a consumer lane ended abnormally: {err}"),
            };
            if matches!(end, SessionEnd::Stopped) {
                abort.send_replace(true);
                end = SessionEnd::Broken(cause);
            }
        }

        watcher.abort();
        if matches!(end, SessionEnd::Broken(_)) {
            batcher.set_behind(false);
            let _ = self.connection.close(200, "session broken".into()).await;
            return end;
        }
        // Close the channels before the connection: a channel still closing when the connection
        // closes makes lapin log a spurious connection error.
        self.probe.close().await;
        let _ = self.connection.close(200, "worker stopped".into()).await;
        end
    }
}

/// Runs the deliveries of one consumer, each in a task of its own, until shutdown, until the
/// session aborts, or until this lane breaks.
async fn run_lane(
    mut lane: Lane,
    pipeline: Arc<Pipeline>,
    mut stopped: watch::Receiver<bool>,
    mut aborted: watch::Receiver<bool>,
    shutdown_timeout: Duration,
) -> LaneEnd {
    let mut in_progress = JoinSet::new();
    let ended = loop {
        // Reap finished tasks so the set does not grow with every delivery.
        reap(&mut in_progress);
        tokio::select! {
            _ = super::signalled(&mut stopped) => break LaneEnd::Stopped,
            _ = super::signalled(&mut aborted) => break LaneEnd::Aborted,
            _ = super::signalled(&mut lane.broken) => {
                break LaneEnd::Broken(anyhow::anyhow!("the publisher channel closed"));
            }
            delivery = lane.consumer.next() => match delivery {
                Some(Ok(incoming)) => {
                    let pipeline = Arc::clone(&pipeline);
                    let link = Arc::clone(&lane.link);
                    in_progress.spawn(async move { pipeline.process(incoming, &link).await });
                }
                Some(Err(err)) => break LaneEnd::Broken(anyhow::Error::new(err).context("the consumer failed")),
                None => break LaneEnd::Broken(anyhow::anyhow!("the broker cancelled the consumer or closed its channel")),
            },
        }
    };
    if !matches!(ended, LaneEnd::Stopped) {
        // Dropping the tasks drops their deliveries unsettled; the broker requeues them.
        in_progress.abort_all();
        return ended;
    }

    reap(&mut in_progress);
    tracing::info!(
        consumer = lane.number,
        in_progress = in_progress.len(),
        "stopping: no new deliveries, sending open batches, finishing jobs in progress"
    );
    if let Err(err) = lane.consumer.cancel().await {
        tracing::warn!(error = %err, "cannot cancel the consumer");
    }
    pipeline.executor.batcher.set_flushing(true);
    let drained = tokio::time::timeout(shutdown_timeout, async {
        while in_progress.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            consumer = lane.number,
            unfinished = in_progress.len(),
            timeout_ms = shutdown_timeout.as_millis() as u64,
            "shutdown timeout reached, giving unfinished deliveries back to the queue"
        );
        // Wait for the aborted tasks to stop, so none acks after the nack below: an ack of a
        // requeued delivery is an unknown delivery tag, which closes the channel.
        in_progress.shutdown().await;
    }
    // Deliveries still unacked (unfinished jobs, and deliveries received but never started)
    // go back to the queue now rather than when the channel closes.
    if let Err(err) = lane.consumer.requeue_unacked().await {
        tracing::warn!(error = %err, "cannot give unacked deliveries back; they return when the channel closes");
    }
    lane.consumer.close().await;
    lane.link.publisher.close().await;
    LaneEnd::Stopped
}

/// Removes the finished tasks from the set, logging any that panicked.
fn reap(in_progress: &mut JoinSet<()>) {
    while let Some(finished) = in_progress.try_join_next() {
        if let Err(err) = finished {
            tracing::error!(error = %err, "a job task ended abnormally");
        }
    }
}

/// Applies what a poll of the jobs queue found: whether the worker is behind, and, with
/// `update_share`, this process's share of every budget, its consumers among all the consumers
/// of the queue (which include other processes' ones).
fn apply_jobs_queue_status(
    pipeline: &Pipeline,
    own_consumers: usize,
    ready: u32,
    consumers: u32,
    update_share: bool,
) {
    let batcher: &Batcher<Arc<Gateway>> = &pipeline.executor.batcher;
    batcher.set_behind(ready as usize >= pipeline.backlog_threshold);
    if !update_share {
        return;
    }
    let all = (consumers as usize).max(own_consumers);
    pipeline
        .executor
        .gateway
        .set_budget_share(own_consumers, all);
}

/// Reads the depth of the worker's queues at every interval, for the queue metrics, and marks
/// the batcher as behind: when at least a full batch of jobs waits in the jobs
/// queue, unconsumed. Batches then wait up to the backlog linger and go out full.
async fn watch_queues(
    probe: Arc<QueueProbe>,
    queues: Vec<String>,
    interval: Duration,
    own_consumers: usize,
    pipeline: Arc<Pipeline>,
    stopped: watch::Receiver<bool>,
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
                        // While stopping, the lanes close one by one and the count falls, but
                        // this worker must not take a larger share for its last jobs.
                        apply_jobs_queue_status(
                            &pipeline,
                            own_consumers,
                            status.messages,
                            status.consumers,
                            !*stopped.borrow(),
                        );
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
