//! The job contract: what producers send ([`Job`]), how a message becomes one ([`decode`], then
//! [`validate`]), the stable error codes, and the result the worker publishes ([`JobResult`]).
//!
//! This module depends on neither the broker nor HTTP. The broker hands it bytes and a few message
//! properties ([`MessageMeta`]); the Fastly client receives the validated types.

mod decode;
mod result;
mod validate;

pub use decode::{Envelope, MessageMeta, decode};
pub use result::{JobResult, ResultError, Status};
pub use validate::{PurgeUrl, ServiceId, validate};

use std::fmt;

use serde::{Deserialize, Serialize};

/// A validated job, ready to execute.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    pub account: String,
    pub kind: JobKind,
}

/// The operation a job requests, with its validated fields.
#[derive(Debug, Clone, PartialEq)]
pub enum JobKind {
    /// Purge surrogate keys of one service. Keys are unique, in their first order.
    PurgeKeys {
        service_id: ServiceId,
        keys: Vec<String>,
        soft: bool,
    },
    /// Purge single URLs. URLs are unique, in their first order.
    PurgeUrls {
        urls: Vec<PurgeUrl>,
        soft: bool,
    },
    PurgeAll {
        service_id: ServiceId,
    },
    /// List services: one page when `page` is set, otherwise every page.
    ListServices {
        page: Option<u32>,
        per_page: Option<u32>,
    },
    GetService {
        service_id: ServiceId,
    },
    GetAccount,
    GetToken,
}

impl JobKind {
    pub fn job_type(&self) -> JobType {
        match self {
            JobKind::PurgeKeys { .. } => JobType::PurgeKeys,
            JobKind::PurgeUrls { .. } => JobType::PurgeUrls,
            JobKind::PurgeAll { .. } => JobType::PurgeAll,
            JobKind::ListServices { .. } => JobType::ListServices,
            JobKind::GetService { .. } => JobType::GetService,
            JobKind::GetAccount => JobType::GetAccount,
            JobKind::GetToken => JobType::GetToken,
        }
    }

    /// Returns the service the job acts on, if it names one.
    pub fn service_id(&self) -> Option<&ServiceId> {
        match self {
            JobKind::PurgeKeys { service_id, .. }
            | JobKind::PurgeAll { service_id }
            | JobKind::GetService { service_id } => Some(service_id),
            _ => None,
        }
    }
}

/// The `type` field of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobType {
    PurgeKeys,
    PurgeUrls,
    PurgeAll,
    ListServices,
    GetService,
    GetAccount,
    GetToken,
}

impl JobType {
    pub const ALL: [JobType; 7] = [
        JobType::PurgeKeys,
        JobType::PurgeUrls,
        JobType::PurgeAll,
        JobType::ListServices,
        JobType::GetService,
        JobType::GetAccount,
        JobType::GetToken,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobType::PurgeKeys => "purge_keys",
            JobType::PurgeUrls => "purge_urls",
            JobType::PurgeAll => "purge_all",
            JobType::ListServices => "list_services",
            JobType::GetService => "get_service",
            JobType::GetAccount => "get_account",
            JobType::GetToken => "get_token",
        }
    }

    pub fn parse(value: &str) -> Option<JobType> {
        JobType::ALL.into_iter().find(|t| t.as_str() == value)
    }

    /// Token scopes that allow this job; the token needs any one of them.
    pub fn allowed_scopes(self) -> &'static [&'static str] {
        match self {
            JobType::PurgeKeys | JobType::PurgeUrls => &["purge_select", "global"],
            JobType::PurgeAll => &["purge_all", "global"],
            JobType::ListServices
            | JobType::GetService
            | JobType::GetAccount
            | JobType::GetToken => &["global:read", "global"],
        }
    }
}

impl fmt::Display for JobType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stable, machine-readable error codes of results and dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // Rejected: the message could not be read as a job.
    MessageTooLarge,
    UnsupportedContentType,
    InvalidUtf8,
    InvalidJson,
    NotAnObject,
    // Rejected: the job is not valid.
    UnknownType,
    MissingField,
    InvalidField,
    UnknownAccount,
    MissingScope,
    ServiceNotAllowed,
    // Failed: Fastly refused the request.
    FastlyUnauthorized,
    FastlyForbidden,
    FastlyNotFound,
    FastlyBadRequest,
    // Failed: Fastly could not be reached or kept failing after retries.
    FastlyRateLimited,
    FastlyServerError,
    FastlyTimeout,
    FastlyConnection,
    FastlyInvalidReply,
    /// The job did not finish within the delivery budget of any of its deliveries.
    TimedOut,
    /// A defect in the worker stopped the job.
    InternalError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::UnsupportedContentType => "unsupported_content_type",
            ErrorCode::InvalidUtf8 => "invalid_utf8",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::NotAnObject => "not_an_object",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::UnknownAccount => "unknown_account",
            ErrorCode::MissingScope => "missing_scope",
            ErrorCode::ServiceNotAllowed => "service_not_allowed",
            ErrorCode::FastlyUnauthorized => "fastly_unauthorized",
            ErrorCode::FastlyForbidden => "fastly_forbidden",
            ErrorCode::FastlyNotFound => "fastly_not_found",
            ErrorCode::FastlyBadRequest => "fastly_bad_request",
            ErrorCode::FastlyRateLimited => "fastly_rate_limited",
            ErrorCode::FastlyServerError => "fastly_server_error",
            ErrorCode::FastlyTimeout => "fastly_timeout",
            ErrorCode::FastlyConnection => "fastly_connection",
            ErrorCode::FastlyInvalidReply => "fastly_invalid_reply",
            ErrorCode::TimedOut => "timed_out",
            ErrorCode::InternalError => "internal_error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reason a message or job was rejected before any Fastly request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Rejection {
        Rejection {
            code,
            message: message.into(),
        }
    }
}
