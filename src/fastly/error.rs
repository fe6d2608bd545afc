//! Fastly errors: what went wrong with a request, Fastly's own message from any of its error
//! body shapes, and the one place that decides whether an error is worth retrying.

use std::error::Error as _;

use reqwest::StatusCode;
use serde_json::Value;

use super::RateLimit;
use crate::job::ErrorCode;

/// Maximum length in characters of an error message taken from a reply body.
const MAX_MESSAGE_CHARS: usize = 500;

/// A failed Fastly request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FastlyError {
    /// Fastly replied with a status other than 2xx.
    #[error("Fastly replied {status}: {message}")]
    Status {
        status: StatusCode,
        /// Fastly's explanation, from whichever error body shape it sent.
        message: String,
        rate_limit: RateLimit,
    },
    #[error("the request to Fastly timed out: {0}")]
    Timeout(String),
    #[error("cannot connect to Fastly: {0}")]
    Connect(String),
    #[error("the request to Fastly failed: {0}")]
    Transport(String),
    /// A 2xx reply whose body is not what the endpoint returns.
    #[error("Fastly sent an unexpected reply: {0}")]
    InvalidReply(String),
    /// The request could not be built as asked; nothing was sent.
    #[error("the request was not sent: {0}")]
    InvalidRequest(String),
}

/// The handling a failed request calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth another attempt: 408, 5xx, timeouts, connection and transport errors.
    Transient,
    /// 429: the account's budget is used up until the rate-limit reset.
    RateLimited,
    /// Retrying cannot help: other 4xx replies and unexpected reply bodies.
    Permanent,
}

impl FastlyError {
    /// Classifies the error. Every retry decision in the worker comes from here.
    pub fn class(&self) -> ErrorClass {
        match self {
            FastlyError::Status { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => {
                ErrorClass::RateLimited
            }
            // 408 is the server giving up on a slow request, which is a timeout.
            FastlyError::Status { status, .. }
                if status.is_server_error() || *status == StatusCode::REQUEST_TIMEOUT =>
            {
                ErrorClass::Transient
            }
            FastlyError::Status { .. }
            | FastlyError::InvalidReply(_)
            | FastlyError::InvalidRequest(_) => ErrorClass::Permanent,
            FastlyError::Timeout(_) | FastlyError::Connect(_) | FastlyError::Transport(_) => {
                ErrorClass::Transient
            }
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.class() != ErrorClass::Permanent
    }

    pub fn http_status(&self) -> Option<u16> {
        match self {
            FastlyError::Status { status, .. } => Some(status.as_u16()),
            _ => None,
        }
    }

    pub fn rate_limit(&self) -> Option<&RateLimit> {
        match self {
            FastlyError::Status { rate_limit, .. } => Some(rate_limit),
            _ => None,
        }
    }

    /// Returns the result error code for a job that failed with this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            FastlyError::Status { status, .. } => match status.as_u16() {
                401 => ErrorCode::FastlyUnauthorized,
                403 => ErrorCode::FastlyForbidden,
                404 => ErrorCode::FastlyNotFound,
                408 => ErrorCode::FastlyTimeout,
                429 => ErrorCode::FastlyRateLimited,
                500..=599 => ErrorCode::FastlyServerError,
                _ => ErrorCode::FastlyBadRequest,
            },
            FastlyError::Timeout(_) => ErrorCode::FastlyTimeout,
            FastlyError::Connect(_) | FastlyError::Transport(_) => ErrorCode::FastlyConnection,
            FastlyError::InvalidReply(_) => ErrorCode::FastlyInvalidReply,
            FastlyError::InvalidRequest(_) => ErrorCode::InternalError,
        }
    }

    /// Converts a reqwest error, keeping its cause chain but never a header value.
    pub(super) fn from_reqwest(err: &reqwest::Error) -> FastlyError {
        let mut text = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        if err.is_timeout() {
            FastlyError::Timeout(text)
        } else if err.is_connect() {
            FastlyError::Connect(text)
        } else {
            FastlyError::Transport(text)
        }
    }
}

/// Extracts Fastly's explanation from an error reply body.
///
/// Fastly uses several shapes: `{"msg","detail"}`, `{"msg","details"}`, `{"errors":[...]}`,
/// `application/problem+json` (`title`, `detail`), `{"status":"fail","reason"}`, plain text,
/// HTML, or nothing. The Content-Type is not trusted, because Fastly does not always set it.
pub fn error_message(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return format!("empty reply body ({})", status);
    }
    let from_json = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|value| message_from_json(&value));
    let message = from_json.unwrap_or_else(|| collapse_whitespace(&strip_tags(text)));
    if message.is_empty() {
        return format!("reply body without text ({})", status);
    }
    truncate(&message)
}

fn message_from_json(value: &Value) -> Option<String> {
    let object = value.as_object()?;
    let field = |name: &str| {
        object
            .get(name)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|text| !text.is_empty())
    };

    if let Some(errors) = object.get("errors").and_then(Value::as_array) {
        let parts: Vec<String> = errors.iter().filter_map(error_item_text).collect();
        if !parts.is_empty() {
            return Some(parts.join("; "));
        }
    }
    let headline = field("msg").or_else(|| field("title"));
    let detail = field("detail")
        .or_else(|| field("details"))
        .or_else(|| field("reason"))
        .or_else(|| field("message"));
    match (headline, detail) {
        (Some(headline), Some(detail)) => Some(format!("{headline}: {detail}")),
        (Some(text), None) | (None, Some(text)) => Some(text.to_owned()),
        (None, None) => None,
    }
}

/// Reads one item of an `errors` array: `{"title","detail"}`, a JSON:API error, or a string.
fn error_item_text(item: &Value) -> Option<String> {
    if let Some(text) = item.as_str() {
        return Some(text.to_owned());
    }
    let object = item.as_object()?;
    let field = |name: &str| {
        object
            .get(name)
            .and_then(Value::as_str)
            .filter(|text| !text.is_empty())
    };
    match (field("title").or_else(|| field("code")), field("detail")) {
        (Some(title), Some(detail)) => Some(format!("{title}: {detail}")),
        (Some(text), None) | (None, Some(text)) => Some(text.to_owned()),
        (None, None) => None,
    }
}

fn strip_tags(text: &str) -> String {
    if !text.starts_with('<') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_MESSAGE_CHARS {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
    cut.push_str("...");
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fastly::tests::fixture;

    fn message_of(name: &str) -> String {
        let recording = fixture(name);
        let status = StatusCode::from_u16(recording["status"].as_u64().unwrap() as u16).unwrap();
        let body = serde_json::to_vec(&recording["body"]).unwrap();
        error_message(status, &body)
    }

    #[test]
    fn legacy_msg_detail_shape() {
        assert_eq!(
            message_of("error_400_service_deleted.json"),
            "Bad request: Service 'DCsx1c14IixEK8PqF0TvqK' is deleted"
        );
        assert!(
            message_of("error_400_bad_request_validation.json")
                .starts_with("Bad request: Name must start")
        );
    }

    #[test]
    fn msg_only_shape() {
        assert_eq!(
            message_of("error_404_record_not_found.json"),
            "Record not found"
        );
    }

    #[test]
    fn errors_array_shape() {
        assert_eq!(
            message_of("error_400_errors_array.json"),
            "Invalid value for fqdn: fqdn has already been taken"
        );
    }

    #[test]
    fn problem_json_shape() {
        assert_eq!(
            message_of("error_404_problem_json.json"),
            "The content you requested could not be found"
        );
    }

    #[test]
    fn msg_details_shape() {
        let body = br#"{"msg":"Record not found","details":"Cannot find service 'abc'"}"#;
        assert_eq!(
            error_message(StatusCode::NOT_FOUND, body),
            "Record not found: Cannot find service 'abc'"
        );
    }

    #[test]
    fn status_fail_reason_shape() {
        let body = br#"{"status":"fail","reason":"Batch surrogate key request only supports up to 256 surrogate keys"}"#;
        assert_eq!(
            error_message(StatusCode::BAD_REQUEST, body),
            "Batch surrogate key request only supports up to 256 surrogate keys"
        );
    }

    #[test]
    fn plain_html_and_empty_bodies() {
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, b"  upstream went away \n"),
            "upstream went away"
        );
        assert_eq!(
            error_message(
                StatusCode::SERVICE_UNAVAILABLE,
                b"<html><body><h1>503 Service Unavailable</h1></body></html>"
            ),
            "503 Service Unavailable"
        );
        assert_eq!(
            error_message(StatusCode::SERVICE_UNAVAILABLE, b""),
            "empty reply body (503 Service Unavailable)"
        );
    }

    #[test]
    fn long_bodies_truncated() {
        let body = "x".repeat(5000);
        assert_eq!(
            error_message(StatusCode::INTERNAL_SERVER_ERROR, body.as_bytes()).len(),
            MAX_MESSAGE_CHARS + 3
        );
    }

    #[test]
    fn classification() {
        let status = |code: u16| FastlyError::Status {
            status: StatusCode::from_u16(code).unwrap(),
            message: String::new(),
            rate_limit: RateLimit::default(),
        };
        assert_eq!(status(429).class(), ErrorClass::RateLimited);
        for code in [408, 500, 502, 503, 504, 599] {
            assert_eq!(status(code).class(), ErrorClass::Transient, "{code}");
        }
        for code in [400, 401, 403, 404, 409, 422] {
            assert_eq!(status(code).class(), ErrorClass::Permanent, "{code}");
        }
        assert_eq!(
            FastlyError::Timeout(String::new()).class(),
            ErrorClass::Transient
        );
        assert_eq!(
            FastlyError::Connect(String::new()).class(),
            ErrorClass::Transient
        );
        assert_eq!(
            FastlyError::InvalidReply(String::new()).class(),
            ErrorClass::Permanent
        );
        assert_eq!(status(403).code(), ErrorCode::FastlyForbidden);
        assert_eq!(status(503).code(), ErrorCode::FastlyServerError);
    }
}
