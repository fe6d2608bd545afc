//! The path of one delivery: decode, validate, authorize, execute, then publish the result and
//! settle. Each stage is a function with a typed input and output. A stage that ends the job
//! early returns an [`Outcome`], and the rest are skipped.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;

use chrono::Utc;
use tracing::{Instrument, field};

use super::accounts::{AccountEntry, AccountRegistry};
use super::execute::Executor;
use super::outcome::{JobFacts, Outcome, job_result};
use super::settle::{RetryPlan, Settled, reject, settle};
use crate::broker::{Incoming, Publisher, RetryCounts};
use crate::config::{JobLimits, RedeliverySettings};
use crate::gateway::CallError;
use crate::job::{Job, JobKind, JobResult, decode, validate};
use crate::telemetry::Metrics;

/// Everything one delivery needs; shared by all deliveries of a worker.
pub struct Pipeline {
    pub limits: JobLimits,
    pub redelivery: RedeliverySettings,
    /// Delay queue names, one per delay level.
    pub retry_queues: Vec<String>,
    /// Time kept in reserve at the end of the delivery budget for settling.
    pub settle_reserve: std::time::Duration,
    pub accounts: AccountRegistry,
    pub executor: Executor,
    /// Jobs waiting in the queue from which the worker counts as behind: a full batch.
    pub backlog_threshold: usize,
    pub metrics: Arc<Metrics>,
}

/// The parts of the broker session that a delivery came from and is settled through. A new
/// session after a reconnect has its own, so a delivery is never settled on another channel.
pub struct SessionLink {
    pub publisher: Publisher,
    /// Set when the publisher's channel is closed, which ends the session.
    pub broken: tokio::sync::watch::Sender<bool>,
}

impl Pipeline {
    /// Takes one delivery through every stage. It ends acked after what it published was
    /// confirmed, or rejected to the dead-letter queue when the broker did not take it.
    pub async fn process(&self, incoming: Incoming, session: &SessionLink) {
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
            let mut facts = JobFacts {
                job_id: incoming.meta.message_id.clone(),
                job_type: None,
                account: None,
                redelivered: incoming.redelivered,
                received_at,
                earlier_attempts: incoming.retries.requests,
            };
            // A panic in a stage must still end in a result and a settled delivery.
            let stages = AssertUnwindSafe(self.run(&incoming, &mut facts, started));
            let outcome = match stages.catch_unwind().await {
                Ok(outcome) => outcome,
                Err(panic) => panicked(panic.as_ref()),
            };
            let (outcome, retry) = self.plan_retry(&incoming, outcome);
            let result = job_result(&facts, &outcome);
            let job_type = facts.job_type.as_deref().map_or("unknown", known_type);
            // Boxed, like the execute stage, to keep each waiting delivery's future small. A
            // panic here rejects the delivery rather than leave it unacked.
            let settling = AssertUnwindSafe(Box::pin(settle(
                &session.publisher,
                &incoming,
                &facts,
                &outcome,
                &result,
                retry.as_ref(),
            )));
            let settled = match settling.catch_unwind().await {
                Ok(settled) => settled,
                Err(_) => {
                    tracing::error!("settling the delivery panicked, rejecting it");
                    reject(&incoming).await
                }
            };
            self.record(&result, retry.as_ref(), settled, job_type, started);
            if settled == Settled::NotAcked && !session.publisher.is_open() {
                session.broken.send_replace(true);
            }
        }
        .instrument(span)
        .await
    }

    /// Logs and counts what became of a settled delivery: sent to a delay queue, or finished
    /// with its result (and, unless it succeeded, its dead letter).
    fn record(
        &self,
        result: &JobResult,
        retry: Option<&RetryPlan>,
        settled: Settled,
        job_type: &str,
        started: Instant,
    ) {
        match (settled, retry, result.error.as_ref()) {
            (Settled::Delayed, Some(plan), Some(error)) => {
                self.metrics
                    .delayed(error, &plan.queue, plan.delay, plan.counts.retries);
            }
            (Settled::Acked, _, error) => {
                self.metrics.job_finished(
                    job_type,
                    result.status.as_str(),
                    error,
                    result.attempts,
                    started.elapsed(),
                );
                if let Some(error) = error {
                    self.metrics.dead_lettered(error.code.as_str());
                }
            }
            _ => {}
        }
    }

    /// Runs the job stages, filling in `facts` as they learn about the job.
    async fn run(&self, incoming: &Incoming, facts: &mut JobFacts, started: Instant) -> Outcome {
        let (kind, entry) = match self.admit(incoming, facts) {
            Ok(admitted) => admitted,
            Err(outcome) => return outcome,
        };
        let budget = self
            .redelivery
            .delivery_budget()
            .saturating_sub(self.settle_reserve);
        let deadline = tokio::time::Instant::from_std(started) + budget;
        self.executor.execute(&entry.account, &kind, deadline).await
    }

    /// Decodes, validates and authorizes a delivery: its job and account, or the rejection.
    ///
    /// A function of its own, so the decoded message is dropped before the job waits for its
    /// Fastly requests: under a backlog thousands of deliveries wait at once.
    fn admit(
        &self,
        incoming: &Incoming,
        facts: &mut JobFacts,
    ) -> Result<(JobKind, &AccountEntry), Outcome> {
        let envelope = match decode(
            &incoming.body,
            &incoming.meta,
            self.limits.max_message_bytes,
        ) {
            Ok(envelope) => envelope,
            Err(rejection) => {
                self.metrics.job_received("unknown");
                return Err(Outcome::Rejected(rejection));
            }
        };
        self.metrics
            .job_received(envelope.job_type.as_deref().map_or("unknown", known_type));
        facts.job_id = Some(envelope.job_id.clone());
        facts.job_type = envelope.job_type.clone();
        // An account field that is not a string is rejected below, and the result shows null.
        let account_valid = envelope.fields.get("account").is_none_or(|a| a.is_string());
        facts.account = account_valid.then(|| envelope.account.clone());
        let span = tracing::Span::current();
        span.record("job_id", envelope.job_id.as_str());
        span.record("type", envelope.job_type.as_deref());
        span.record("account", envelope.account.as_str());

        let job: Job = validate(&envelope, &self.limits).map_err(Outcome::Rejected)?;
        if let Some(service_id) = job.kind.service_id() {
            span.record("service_id", service_id.as_str());
        }
        let entry = self.accounts.authorize(&job).map_err(Outcome::Rejected)?;
        Ok((job.kind, entry))
    }

    /// Decides where a job to be retried goes, or turns it into a failure when it has no
    /// attempts left. Deliveries that sent no Fastly request (the budget admitted none) do
    /// not use up an attempt, up to a limit of their own.
    fn plan_retry(&self, incoming: &Incoming, outcome: Outcome) -> (Outcome, Option<RetryPlan>) {
        let Outcome::RetryLater { attempts, .. } = &outcome else {
            return (outcome, None);
        };
        let before = incoming.retries;
        let counts = RetryCounts {
            retries: before.retries + 1,
            failed_attempts: before.failed_attempts + u32::from(*attempts > 0),
            requests: before.requests + attempts,
        };
        let deferrals = counts.retries.saturating_sub(counts.failed_attempts);
        if counts.failed_attempts >= self.redelivery.max_attempts
            || deferrals > self.redelivery.max_deferrals
        {
            return (outcome.final_attempt(), None);
        }
        let level = self.redelivery.level_after(counts.retries);
        let plan = RetryPlan {
            queue: self.retry_queues[level - 1].clone(),
            delay: self.redelivery.delay_after(counts.retries),
            counts,
        };
        (outcome, Some(plan))
    }
}

/// Returns the job type for metric labels: a type of the contract, or "unknown", so a
/// producer cannot create label values at will.
fn known_type(name: &str) -> &str {
    crate::job::JobType::parse(name).map_or("unknown", crate::job::JobType::as_str)
}

/// Builds the outcome of a job whose stages panicked.
fn panicked(panic: &(dyn std::any::Any + Send)) -> Outcome {
    let message = panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a job stage panicked".to_owned());
    tracing::error!(panic = %message, "a job stage panicked");
    Outcome::Failed {
        error: CallError::Internal(message),
        attempts: 0,
        output: None,
    }
}
