//! The result message: one per job, published to the job's reply_to or to the results queue.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ErrorCode;

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Fastly accepted every request of the job.
    Succeeded,
    /// Fastly refused the job, or it could not be done after retries.
    Failed,
    /// The job was invalid, or its account lacks a token scope; no Fastly request was made.
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Rejected => "rejected",
        }
    }
}

/// The error part of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultError {
    pub code: ErrorCode,
    pub message: String,
    /// HTTP status of Fastly's last reply, when the error came from one.
    pub http_status: Option<u16>,
}

/// The result message of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// Null only when a message that is not a job had no message_id.
    pub job_id: Option<String>,
    /// The job's `type` as sent, or null when it had none.
    #[serde(rename = "type")]
    pub job_type: Option<String>,
    pub status: Status,
    /// Null when the message was not a job.
    pub account: Option<String>,
    /// Tries of the job's most-tried Fastly request, added up over the job's deliveries; 0 when
    /// no request was made.
    pub attempts: u32,
    /// True when RabbitMQ delivered this job before, for example to a worker that stopped.
    pub redelivered: bool,
    #[serde(with = "millis")]
    pub received_at: DateTime<Utc>,
    #[serde(with = "millis")]
    pub finished_at: DateTime<Utc>,
    pub output: Option<Value>,
    pub error: Option<ResultError>,
}

impl JobResult {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a result always serializes")
    }
}

/// RFC 3339 timestamps in UTC with millisecond precision, such as `2026-01-31T12:00:00.250Z`.
mod millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|at| at.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_serializes_contract_fields() {
        let at = DateTime::parse_from_rfc3339("2026-01-31T12:00:00.25Z")
            .unwrap()
            .with_timezone(&Utc);
        let result = JobResult {
            job_id: Some("j1".to_owned()),
            job_type: Some("purge_all".to_owned()),
            status: Status::Failed,
            account: Some("default".to_owned()),
            attempts: 3,
            redelivered: false,
            received_at: at,
            finished_at: at,
            output: None,
            error: Some(ResultError {
                code: ErrorCode::FastlyServerError,
                message: "Fastly replied 503".to_owned(),
                http_status: Some(503),
            }),
        };
        let value: Value = serde_json::from_slice(&result.to_json()).unwrap();
        assert_eq!(value["job_id"], "j1");
        assert_eq!(value["type"], "purge_all");
        assert_eq!(value["status"], "failed");
        assert_eq!(value["received_at"], "2026-01-31T12:00:00.250Z");
        assert_eq!(value["error"]["code"], "fastly_server_error");
        assert_eq!(value["error"]["http_status"], 503);
        assert!(value["output"].is_null());
        let back: JobResult = serde_json::from_value(value).unwrap();
        assert_eq!(back, result);
    }
}
