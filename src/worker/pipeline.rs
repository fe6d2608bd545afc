//! The path of one delivery: decode, validate, authorize, execute, then publish the result and
//! settle. Each stage is a function with a typed input and output; a stage that ends the job
//! early returns an [`Outcome`] and the rest are skipped.

use std::time::Instant;

use chrono::{DateTime, Utc};
use tracing::{Instrument, field};

use super::accounts::AccountRegistry;
use super::execute::Executor;
use super::outcome::{JobFacts, Outcome, job_result};
use super::settle::{Settled, settle};
use crate::broker::{Incoming, Publisher};
use crate::config::JobLimits;
use crate::job::{Job, decode, validate};

/// Everything one delivery needs; shared by all deliveries of a worker.
pub struct Pipeline {
    pub limits: JobLimits,
    pub accounts: AccountRegistry,
    pub executor: Executor,
    pub publisher: Publisher,
    /// Set when the publisher's channel is closed, which ends the consume loop.
    pub broken: tokio::sync::watch::Sender<bool>,
}

impl Pipeline {
    /// Takes one delivery through every stage. It always ends settled: acked after its result
    /// was confirmed, or given back to the queue when the broker could not take the result.
    pub async fn process(&self, incoming: Incoming) {
        let span = tracing::info_span!(
            "job",
            job_id = field::Empty,
            r#type = field::Empty,
            account = field::Empty,
            service_id = field::Empty,
            correlation_id = incoming.correlation_id.as_deref(),
            delivery_tag = incoming.delivery_tag,
            redelivered = incoming.redelivered,
        );
        async {
            let started = Instant::now();
            let received_at = Utc::now();
            let (facts, outcome) = self.run(&incoming, received_at).await;
            log_outcome(&outcome, started);
            let result = job_result(&facts, &outcome);
            let settled = settle(&self.publisher, &incoming, &facts, &outcome, &result).await;
            if settled == Settled::Requeued && !self.publisher.is_open() {
                self.broken.send_replace(true);
            }
        }
        .instrument(span)
        .await
    }

    /// Runs the job stages and returns what the result needs.
    async fn run(&self, incoming: &Incoming, received_at: DateTime<Utc>) -> (JobFacts, Outcome) {
        let mut facts = JobFacts {
            job_id: incoming.meta.message_id.clone(),
            job_type: None,
            account: None,
            redelivered: incoming.redelivered,
            received_at,
        };

        let envelope = match decode(
            &incoming.body,
            &incoming.meta,
            self.limits.max_message_bytes,
        ) {
            Ok(envelope) => envelope,
            Err(rejection) => return (facts, Outcome::Rejected(rejection)),
        };
        facts.job_id = Some(envelope.job_id.clone());
        facts.job_type = envelope.job_type.clone();
        facts.account = Some(envelope.account.clone());
        let span = tracing::Span::current();
        span.record("job_id", envelope.job_id.as_str());
        span.record("type", envelope.job_type.as_deref());
        span.record("account", envelope.account.as_str());

        let job: Job = match validate(&envelope, &self.limits) {
            Ok(job) => job,
            Err(rejection) => return (facts, Outcome::Rejected(rejection)),
        };
        if let Some(service_id) = job.kind.service_id() {
            span.record("service_id", service_id.as_str());
        }

        let entry = match self.accounts.authorize(&job) {
            Ok(entry) => entry,
            Err(rejection) => return (facts, Outcome::Rejected(rejection)),
        };
        let outcome = self.executor.execute(&entry.account, &job.kind).await;
        (facts, outcome)
    }
}

fn log_outcome(outcome: &Outcome, started: Instant) {
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match outcome {
        Outcome::Succeeded { attempts, .. } => {
            tracing::info!(attempts, elapsed_ms, "job succeeded");
        }
        Outcome::Failed {
            error, attempts, ..
        } => {
            tracing::warn!(
                attempts,
                elapsed_ms,
                code = %error.code(),
                http_status = error.http_status(),
                error = %error,
                "job failed"
            );
        }
        Outcome::Rejected(rejection) => {
            tracing::warn!(code = %rejection.code, reason = %rejection.message, "job rejected");
        }
    }
}
