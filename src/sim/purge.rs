//! Purge endpoints: bulk and single surrogate-key purges, URL purges and purge_all.
//!
//! Key and URL purges are charged to the customer's purge budget, one unit per key or URL.
//! purge_all is a write, and the pipeline charges it to the user's write limit.

use std::collections::HashSet;

use axum::http::StatusCode;
use axum::http::header::HeaderValue;
use serde_json::{Value, json};

use super::handler::RequestContext;
use super::limits::Decision;
use super::record::Outcome;
use super::reply::{Reply, SURROGATE_KEY_COUNT};

/// Maximum number of keys in one bulk purge request.
pub const MAX_BULK_KEYS: usize = 256;
/// Maximum surrogate key length, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

const TOO_MANY_KEYS: &str = "Batch surrogate key request only supports up to 256 surrogate keys";

/// Purges the keys of a JSON body `{"surrogate_keys": [...]}`, or else of the space-separated
/// `Surrogate-Key` header, and returns a flat JSON object of key to purge id with no
/// Content-Type, as Fastly does. Repeated keys are purged once.
///
/// NOTE: purges for a service id that is not seeded succeed here, as purges of unknown keys
/// do at Fastly. What the real API returns for an unknown service id is unverified. The same
/// holds for [`single_key`] and [`purge_all`].
pub fn bulk(context: &RequestContext, service_id: &str) -> (Reply, Outcome) {
    let keys = match requested_keys(context) {
        Ok(keys) => keys,
        Err(reason) => return (Reply::purge_failure(&reason), Outcome::default()),
    };
    if keys.len() > MAX_BULK_KEYS {
        return (Reply::purge_failure(TOO_MANY_KEYS), Outcome::default());
    }
    if keys.is_empty() {
        let reason = "No surrogate keys given: send a JSON body {\"surrogate_keys\": [...]} \
                      or a Surrogate-Key header";
        return (Reply::purge_failure(reason), Outcome::default());
    }
    if let Some(reason) = keys.iter().find_map(|key| invalid_key_reason(key)) {
        return (Reply::purge_failure(&reason), Outcome::default());
    }

    let mut seen = HashSet::with_capacity(keys.len());
    let unique_keys: Vec<&str> = keys
        .iter()
        .map(String::as_str)
        .filter(|key| seen.insert(*key))
        .collect();
    if let Some(reply) = charge_purges(context, unique_keys.len()) {
        return (reply, Outcome::default());
    }

    // serde_json's map sorts its keys, so the object is written by hand to keep request order.
    let mut body = String::with_capacity(unique_keys.len() * 48 + 2);
    body.push('{');
    for (index, key) in unique_keys.iter().enumerate() {
        if index > 0 {
            body.push(',');
        }
        body.push_str(&Value::from(*key).to_string());
        body.push(':');
        body.push_str(&Value::from(context.state.purge_ids.next_id()).to_string());
    }
    body.push('}');
    context
        .state
        .add_purged_keys(service_id, unique_keys.iter().copied());

    let mut reply = Reply::new(StatusCode::OK, body.into_bytes());
    reply
        .headers
        .insert(SURROGATE_KEY_COUNT, HeaderValue::from(unique_keys.len()));
    let outcome = Outcome {
        purge_succeeded: true,
        keys_purged: unique_keys.len() as u64,
        ..Outcome::default()
    };
    (reply, outcome)
}

/// Reads the keys from the JSON body when there is one, else from the `Surrogate-Key` header.
fn requested_keys(context: &RequestContext) -> Result<Vec<String>, String> {
    let body_is_blank = context.body.iter().all(u8::is_ascii_whitespace);
    if !body_is_blank {
        let invalid = || {
            "Invalid request body: expected JSON {\"surrogate_keys\": [\"key\", ...]}".to_string()
        };
        let value: Value = serde_json::from_slice(context.body).map_err(|_| invalid())?;
        let keys = value
            .get("surrogate_keys")
            .and_then(Value::as_array)
            .ok_or_else(invalid)?;
        return keys
            .iter()
            .map(|key| key.as_str().map(str::to_string).ok_or_else(invalid))
            .collect();
    }

    Ok(context
        .header("surrogate-key")
        .map(|header| header.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default())
}

/// Returns why a key is invalid: empty, longer than 1024 bytes, or containing whitespace or
/// control characters (keys are space-separated in headers).
fn invalid_key_reason(key: &str) -> Option<String> {
    if key.is_empty() {
        return Some("Surrogate key must not be empty".to_string());
    }
    if key.len() > MAX_KEY_BYTES {
        return Some(format!(
            "Surrogate key is {} bytes long; the maximum is {MAX_KEY_BYTES}",
            key.len()
        ));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!(
            "Surrogate key {key:?} contains whitespace or a control character"
        ));
    }
    None
}

/// Charges `count` purges to the customer's budget and returns the 429 reply when over it.
// NOTE: the body and headers of Fastly's reply over the purge limit are unverified. This one
// reuses the write-limit reply so that callers can see when the window resets.
fn charge_purges(context: &RequestContext, count: usize) -> Option<Reply> {
    let count = u32::try_from(count).unwrap_or(u32::MAX);
    let decision =
        context
            .state
            .limiter()
            .try_purge(context.token.customer_id(), count, context.now_ms);
    match decision {
        Decision::Accepted { .. } => None,
        Decision::Rejected { reset } => Some(Reply::rate_limited(reset)),
    }
}

/// Purges one key named in the path and returns `{"status":"ok","id":...}`.
pub fn single_key(context: &RequestContext, service_id: &str, key: &str) -> (Reply, Outcome) {
    if let Some(reason) = invalid_key_reason(key) {
        return (Reply::bad_request(&reason), Outcome::default());
    }
    if let Some(reply) = charge_purges(context, 1) {
        return (reply, Outcome::default());
    }

    let id = context.state.purge_ids.next_id();
    context.state.add_purged_keys(service_id, [key]);
    let mut reply = Reply::json(StatusCode::OK, &json!({ "status": "ok", "id": id }));
    reply
        .headers
        .insert(SURROGATE_KEY_COUNT, HeaderValue::from_static("1"));
    let outcome = Outcome {
        purge_succeeded: true,
        keys_purged: 1,
        ..Outcome::default()
    };
    (reply, outcome)
}

/// Purges one URL, `host/path?query` exactly as received, and returns
/// `{"status":"ok","id":...}`.
pub fn url(context: &RequestContext, url: &str) -> (Reply, Outcome) {
    if let Some(reply) = charge_purges(context, 1) {
        return (reply, Outcome::default());
    }

    let id = context.state.purge_ids.next_id();
    context.state.add_purged_url(url);
    let reply = Reply::json(StatusCode::OK, &json!({ "status": "ok", "id": id }));
    let outcome = Outcome {
        purge_succeeded: true,
        ..Outcome::default()
    };
    (reply, outcome)
}

/// Purges everything of a service and returns `{"status":"ok"}`. Soft purging does not apply
/// to purge_all: a `Fastly-Soft-Purge` header is recorded but changes nothing.
pub fn purge_all(_context: &RequestContext, _service_id: &str) -> (Reply, Outcome) {
    let reply = Reply::json(StatusCode::OK, &json!({ "status": "ok" }));
    let outcome = Outcome {
        purge_succeeded: true,
        ..Outcome::default()
    };
    (reply, outcome)
}
