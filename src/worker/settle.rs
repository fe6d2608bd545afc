//! Settle: publish the result, dead-letter what did not succeed, then ack. The only place in
//! the worker that acks or requeues a delivery.

use super::outcome::{JobFacts, Outcome};
use crate::broker::{DeadLetter, Incoming, Publisher};
use crate::job::{JobResult, Status};

/// How settling ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Acked,
    /// Given back to the queue (or left to the broker to redeliver) after a broker error.
    Requeued,
}

/// Publishes the result, dead-letters a failed or rejected job, and acks the delivery.
///
/// The delivery is acked only after the broker confirmed the result (and the dead letter).
/// When either publish fails, the delivery is given back to the queue, so the job runs again
/// and gets its result later. Purges are idempotent, so a repeat does no harm.
pub async fn settle(
    publisher: &Publisher,
    incoming: &Incoming,
    facts: &JobFacts,
    outcome: &Outcome,
    result: &JobResult,
) -> Settled {
    let status = result.status;
    let job_id = facts.job_id.as_deref();
    let body = result.to_json();

    if let Err(err) = publisher
        .publish_result(incoming, job_id, status.as_str(), &body)
        .await
    {
        tracing::error!(error = %err, "cannot publish the result, requeueing the delivery");
        requeue(incoming).await;
        return Settled::Requeued;
    }

    if status != Status::Succeeded {
        let error = result.error.as_ref();
        let reason = DeadLetter {
            job_id,
            status: status.as_str(),
            code: outcome.error_code().map_or("unknown", |code| code.as_str()),
            message: error.map_or("", |error| error.message.as_str()),
            attempts: result.attempts,
        };
        if let Err(err) = publisher.dead_letter(incoming, &reason).await {
            tracing::error!(error = %err, "cannot dead-letter the job, requeueing the delivery");
            requeue(incoming).await;
            return Settled::Requeued;
        }
    }

    if let Err(err) = incoming.ack().await {
        // The channel is gone, so the broker will deliver the job again; its result is
        // already published and the repeat is marked redelivered.
        tracing::error!(error = %err, "cannot ack the delivery");
        return Settled::Requeued;
    }
    Settled::Acked
}

async fn requeue(incoming: &Incoming) {
    if let Err(err) = incoming.requeue().await {
        tracing::error!(error = %err, "cannot requeue the delivery; the broker redelivers it when the channel closes");
    }
}
