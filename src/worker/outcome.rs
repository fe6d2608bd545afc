//! Outcome: how a job ended, and the result message built from it.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::fastly::FastlyError;
use crate::job::{ErrorCode, JobResult, Rejection, ResultError, Status};
use crate::retry::Attempted;

/// How a job ended.
#[derive(Debug)]
pub enum Outcome {
    Succeeded {
        output: Value,
        attempts: u32,
    },
    /// Fastly refused, or the request could not be done within its retries. `output` carries
    /// what was done when part of the job succeeded.
    Failed {
        error: FastlyError,
        attempts: u32,
        output: Option<Value>,
    },
    /// Invalid, or not allowed for the account's token; no Fastly request was made.
    Rejected(Rejection),
}

impl Outcome {
    /// Builds the outcome of a single retried request; `output` shapes a successful reply.
    pub fn from_attempt<T>(attempted: Attempted<T>, output: impl FnOnce(T) -> Value) -> Outcome {
        match attempted.result {
            Ok(value) => Outcome::Succeeded {
                output: output(value),
                attempts: attempted.attempts,
            },
            Err(error) => Outcome::Failed {
                error,
                attempts: attempted.attempts,
                output: None,
            },
        }
    }

    pub fn status(&self) -> Status {
        match self {
            Outcome::Succeeded { .. } => Status::Succeeded,
            Outcome::Failed { .. } => Status::Failed,
            Outcome::Rejected(_) => Status::Rejected,
        }
    }

    pub fn attempts(&self) -> u32 {
        match self {
            Outcome::Succeeded { attempts, .. } | Outcome::Failed { attempts, .. } => *attempts,
            Outcome::Rejected(_) => 0,
        }
    }

    /// The result error, when the job did not succeed.
    pub fn error(&self) -> Option<ResultError> {
        match self {
            Outcome::Succeeded { .. } => None,
            Outcome::Failed { error, .. } => Some(ResultError {
                code: error.code(),
                message: error.to_string(),
                http_status: error.http_status(),
            }),
            Outcome::Rejected(rejection) => Some(ResultError {
                code: rejection.code,
                message: rejection.message.clone(),
                http_status: None,
            }),
        }
    }

    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Outcome::Succeeded { .. } => None,
            Outcome::Failed { error, .. } => Some(error.code()),
            Outcome::Rejected(rejection) => Some(rejection.code),
        }
    }

    fn output(&self) -> Option<Value> {
        match self {
            Outcome::Succeeded { output, .. } => Some(output.clone()),
            Outcome::Failed { output, .. } => output.clone(),
            Outcome::Rejected(_) => None,
        }
    }
}

/// What the result says about the job besides its outcome.
#[derive(Debug, Clone)]
pub struct JobFacts {
    pub job_id: Option<String>,
    pub job_type: Option<String>,
    pub account: Option<String>,
    pub redelivered: bool,
    pub received_at: DateTime<Utc>,
}

/// Builds the result message of a job.
pub fn job_result(facts: &JobFacts, outcome: &Outcome) -> JobResult {
    JobResult {
        job_id: facts.job_id.clone(),
        job_type: facts.job_type.clone(),
        status: outcome.status(),
        account: facts.account.clone(),
        attempts: outcome.attempts(),
        redelivered: facts.redelivered,
        received_at: facts.received_at,
        finished_at: Utc::now(),
        output: outcome.output(),
        error: outcome.error(),
    }
}
