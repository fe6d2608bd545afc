//! Outcome: how a job ended, and the result message built from it.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::gateway::{CallError, Called};
use crate::job::{JobResult, Rejection, ResultError, Status};

/// The outcome of a job.
#[derive(Debug)]
pub enum Outcome {
    Succeeded {
        output: Value,
        attempts: u32,
    },
    /// Fastly rejected a request, or the job could not be done within its deliveries. `output` carries
    /// what was done when part of the job succeeded.
    Failed {
        error: CallError,
        attempts: u32,
        output: Option<Value>,
    },
    /// Invalid, or not allowed for the account's token; no Fastly request was made.
    Rejected(Rejection),
    /// Not done within the delivery's budget, for a reason that may pass: a transient Fastly
    /// error, a budget that admits no request yet, or time spent waiting. The job goes to a
    /// delay queue.
    RetryLater {
        error: CallError,
        attempts: u32,
        /// The partial output, kept for the failed result if no attempt is left.
        output: Option<Value>,
    },
}

impl Outcome {
    /// Builds the outcome of a single request; `output` shapes a successful reply.
    pub fn from_called<T>(called: Called<T>, output: impl FnOnce(T) -> Value) -> Outcome {
        match called.result {
            Ok(value) => Outcome::Succeeded {
                output: output(value),
                attempts: called.attempts,
            },
            Err(error) => Outcome::failed_or_retry(error, called.attempts, None),
        }
    }

    /// Classifies a failure: transient errors are retried later, the rest fail the job. The
    /// only place that makes this choice for a job.
    pub fn failed_or_retry(error: CallError, attempts: u32, output: Option<Value>) -> Outcome {
        if error.is_transient() {
            Outcome::RetryLater {
                error,
                attempts,
                output,
            }
        } else {
            Outcome::Failed {
                error,
                attempts,
                output,
            }
        }
    }

    pub fn status(&self) -> Status {
        match self {
            Outcome::Succeeded { .. } => Status::Succeeded,
            Outcome::Failed { .. } | Outcome::RetryLater { .. } => Status::Failed,
            Outcome::Rejected(_) => Status::Rejected,
        }
    }

    /// Fastly requests this delivery made.
    pub fn attempts(&self) -> u32 {
        match self {
            Outcome::Succeeded { attempts, .. }
            | Outcome::Failed { attempts, .. }
            | Outcome::RetryLater { attempts, .. } => *attempts,
            Outcome::Rejected(_) => 0,
        }
    }

    /// Returns the result error, when the job did not succeed.
    pub fn error(&self) -> Option<ResultError> {
        match self {
            Outcome::Succeeded { .. } => None,
            Outcome::Failed { error, .. } | Outcome::RetryLater { error, .. } => {
                Some(ResultError {
                    code: error.code(),
                    message: error.to_string(),
                    http_status: error.http_status(),
                })
            }
            Outcome::Rejected(rejection) => Some(ResultError {
                code: rejection.code,
                message: rejection.message.clone(),
                http_status: None,
            }),
        }
    }

    fn output(&self) -> Option<Value> {
        match self {
            Outcome::Succeeded { output, .. } => Some(output.clone()),
            Outcome::Failed { output, .. } | Outcome::RetryLater { output, .. } => output.clone(),
            Outcome::Rejected(_) => None,
        }
    }

    /// Turns a job that may not be retried any more into a failure.
    pub fn final_attempt(self) -> Outcome {
        match self {
            Outcome::RetryLater {
                error,
                attempts,
                output,
            } => Outcome::Failed {
                error,
                attempts,
                output,
            },
            other => other,
        }
    }
}

/// The fields of a result that describe the job, apart from its outcome.
#[derive(Debug, Clone)]
pub struct JobFacts {
    pub job_id: Option<String>,
    pub job_type: Option<String>,
    pub account: Option<String>,
    pub redelivered: bool,
    pub received_at: DateTime<Utc>,
    /// Fastly requests of earlier deliveries of this job.
    pub earlier_attempts: u32,
}

/// Builds the result message of a job.
pub fn job_result(facts: &JobFacts, outcome: &Outcome) -> JobResult {
    JobResult {
        job_id: facts.job_id.clone(),
        job_type: facts.job_type.clone(),
        status: outcome.status(),
        account: facts.account.clone(),
        attempts: facts.earlier_attempts + outcome.attempts(),
        redelivered: facts.redelivered,
        received_at: facts.received_at,
        finished_at: Utc::now(),
        output: outcome.output(),
        error: outcome.error(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::job::ErrorCode;

    fn facts(earlier_attempts: u32) -> JobFacts {
        JobFacts {
            job_id: Some("j1".to_owned()),
            job_type: Some("purge_keys".to_owned()),
            account: Some("a".to_owned()),
            redelivered: true,
            received_at: Utc::now(),
            earlier_attempts,
        }
    }

    #[test]
    fn result_adds_attempts_and_keeps_output() {
        let outcome = Outcome::Succeeded {
            output: json!({"purge_ids": {"k": "p1"}}),
            attempts: 3,
        };
        let result = job_result(&facts(2), &outcome);
        assert_eq!(result.attempts, 5);
        assert_eq!(result.output, Some(json!({"purge_ids": {"k": "p1"}})));
        assert!(result.error.is_none());
    }

    #[test]
    fn rejected_result_carries_its_error() {
        let outcome = Outcome::Rejected(Rejection::new(ErrorCode::InvalidField, "bad keys"));
        let result = job_result(&facts(0), &outcome);
        assert_eq!(result.attempts, 0);
        assert_eq!(result.error.unwrap().code, ErrorCode::InvalidField);
    }
}
