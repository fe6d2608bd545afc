//! Reply values built by the route handlers, and the Fastly error bodies they use.

use axum::body::{Body, Bytes};
use axum::http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Serialize;
use serde_json::json;

pub const RATE_LIMIT_REMAINING: HeaderName = HeaderName::from_static("fastly-ratelimit-remaining");
pub const RATE_LIMIT_RESET: HeaderName = HeaderName::from_static("fastly-ratelimit-reset");
pub const SURROGATE_KEY_COUNT: HeaderName = HeaderName::from_static("fastly-surrogate-key-count");

/// Body of Fastly's 401 reply to a missing, unknown or expired token.
pub const INVALID_CREDENTIALS: &str = "Provided credentials are missing or invalid";

/// Start of Fastly's 429 message for the hourly write limit.
// NOTE: only this start of the message is documented. The rest of Fastly's wording is unknown.
pub const RATE_LIMIT_MESSAGE: &str = "You have exceeded your hourly rate limit";

/// A reply before it becomes an HTTP response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn new(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            headers: HeaderMap::new(),
            body: body.into(),
        }
    }

    /// Builds a JSON reply with `Content-Type: application/json`.
    pub fn json(status: StatusCode, value: &impl Serialize) -> Self {
        let mut reply = Self::json_without_content_type(status, value);
        reply
            .headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        reply
    }

    /// Builds a JSON reply with no Content-Type header, as Fastly sends bulk purge results.
    pub fn json_without_content_type(status: StatusCode, value: &impl Serialize) -> Self {
        let body = serde_json::to_vec(value).expect("reply values serialize to JSON");
        Self::new(status, body)
    }

    /// Builds a reply from a body that is already serialized JSON.
    pub fn raw_json(status: StatusCode, body: impl Into<Bytes>) -> Self {
        let mut reply = Self::new(status, body);
        reply
            .headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        reply
    }

    /// Builds the `{"msg": ...}` error shape.
    pub fn msg(status: StatusCode, msg: &str) -> Self {
        Self::json(status, &json!({ "msg": msg }))
    }

    /// Builds the `{"msg": ..., "detail": ...}` error shape of Fastly's classic endpoints.
    pub fn legacy_error(status: StatusCode, msg: &str, detail: &str) -> Self {
        Self::json(status, &json!({ "msg": msg, "detail": detail }))
    }

    /// Builds `400 {"msg":"Bad request","detail": ...}`.
    pub fn bad_request(detail: &str) -> Self {
        Self::legacy_error(StatusCode::BAD_REQUEST, "Bad request", detail)
    }

    /// Builds the `{"status":"fail","reason": ...}` shape of the bulk purge endpoint.
    pub fn purge_failure(reason: &str) -> Self {
        Self::json(
            StatusCode::BAD_REQUEST,
            &json!({ "status": "fail", "reason": reason }),
        )
    }

    pub fn not_found() -> Self {
        Self::msg(StatusCode::NOT_FOUND, "Record not found")
    }

    pub fn unauthorized() -> Self {
        Self::msg(StatusCode::UNAUTHORIZED, INVALID_CREDENTIALS)
    }

    /// Builds a 429 with the rate-limit headers showing nothing left until `reset`.
    pub fn rate_limited(reset: i64) -> Self {
        let mut reply = Self::msg(StatusCode::TOO_MANY_REQUESTS, RATE_LIMIT_MESSAGE);
        reply.set_rate_limit(0, reset);
        reply
    }

    pub fn set_rate_limit(&mut self, remaining: u32, reset: i64) {
        self.headers
            .insert(RATE_LIMIT_REMAINING, HeaderValue::from(remaining));
        self.headers
            .insert(RATE_LIMIT_RESET, HeaderValue::from(reset));
    }

    pub fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}
