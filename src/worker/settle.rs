//! Settle: publish the result, dead-letter what did not succeed, or hand the job to a delay
//! queue, then ack. The only place in the worker that acks or rejects a delivery.

use std::time::Duration;

use super::outcome::{JobFacts, Outcome};
use crate::broker::{DeadLetter, Incoming, Publisher, RetryCounts, RetryLetter};
use crate::job::{JobResult, Status};

/// The end state of a delivery after settling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Acked after its result (and dead letter) was published.
    Acked,
    /// Acked after the job was sent to a delay queue.
    Delayed,
    /// Rejected after a broker error, so RabbitMQ dead-letters the original message, or left
    /// unacked on a closed channel, so RabbitMQ delivers it again.
    NotAcked,
}

/// The delay queue, delay and counters of a job to be retried.
#[derive(Debug, Clone)]
pub struct RetryPlan {
    pub queue: String,
    pub delay: Duration,
    pub counts: RetryCounts,
}

/// Settles a delivery from its outcome.
///
/// A job to be retried goes to its delay queue and gets no result yet. Any other job gets its
/// result, and a failed or rejected one a dead letter too. The delivery is acked only after
/// the broker confirmed what was published. When the broker does not take a publish, the
/// delivery is rejected without requeue: the jobs queue's dead-letter exchange then keeps the
/// original message in the dead-letter queue. It is never requeued, because running the job
/// again would repeat its purges (a purge_all clears the whole cache) in a tight loop.
pub async fn settle(
    publisher: &Publisher,
    incoming: &Incoming,
    facts: &JobFacts,
    outcome: &Outcome,
    result: &JobResult,
    retry: Option<&RetryPlan>,
) -> Settled {
    if let (Outcome::RetryLater { error, .. }, Some(plan)) = (outcome, retry) {
        let message = error.to_string();
        let letter = RetryLetter {
            queue: &plan.queue,
            delay: plan.delay,
            counts: plan.counts,
            code: error.code().as_str(),
            message: &message,
        };
        match publisher.retry_later(incoming, &letter).await {
            Ok(()) => {}
            // The channel works but the delay queue took nothing (deleted, full): the job
            // fails now, with its result and dead letter, rather than wait for nothing.
            Err(err) if publisher.is_open() => {
                tracing::error!(error = %err, "cannot send the job to its delay queue, failing it");
                return publish_and_ack(publisher, incoming, facts, result).await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot send the job to its delay queue, rejecting the delivery to the dead-letter queue");
                return reject(incoming).await;
            }
        }
        return match ack(incoming).await {
            Settled::Acked => Settled::Delayed,
            other => other,
        };
    }

    publish_and_ack(publisher, incoming, facts, result).await
}

/// Publishes the result, dead-letters a job that did not succeed, then acks.
async fn publish_and_ack(
    publisher: &Publisher,
    incoming: &Incoming,
    facts: &JobFacts,
    result: &JobResult,
) -> Settled {
    let status = result.status;
    let job_id = facts.job_id.as_deref();
    let body = result.to_json();
    if let Err(err) = publisher
        .publish_result(incoming, job_id, status.as_str(), &body)
        .await
    {
        tracing::error!(error = %err, "cannot publish the result, rejecting the delivery to the dead-letter queue");
        return reject(incoming).await;
    }

    if status != Status::Succeeded {
        let error = result.error.as_ref();
        let reason = DeadLetter {
            job_id,
            status: status.as_str(),
            code: error.map_or("unknown", |error| error.code.as_str()),
            message: error.map_or("", |error| error.message.as_str()),
            attempts: result.attempts,
        };
        if let Err(err) = publisher.dead_letter(incoming, &reason).await {
            tracing::error!(error = %err, "cannot publish the dead letter, rejecting the delivery to the dead-letter queue");
            return reject(incoming).await;
        }
    }
    ack(incoming).await
}

async fn ack(incoming: &Incoming) -> Settled {
    match incoming.ack().await {
        Ok(()) => Settled::Acked,
        Err(err) => {
            // The channel is gone, so the broker delivers the job again. What was published
            // for it stays published, and the repeat is marked redelivered.
            tracing::error!(error = %err, "cannot ack the delivery");
            Settled::NotAcked
        }
    }
}

/// Rejects the delivery without requeue, so RabbitMQ dead-letters it.
pub async fn reject(incoming: &Incoming) -> Settled {
    if let Err(err) = incoming.reject().await {
        tracing::error!(error = %err, "cannot reject the delivery");
    }
    Settled::NotAcked
}
