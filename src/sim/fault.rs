//! Scripted failures: injected [`Fault`] replies, and the random 5xx replies of chaos mode's
//! `error_rate`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use axum::http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use axum::http::{HeaderMap, StatusCode};
use rand::RngExt;
use serde::{Deserialize, Serialize};

use super::reply::{INVALID_CREDENTIALS, RATE_LIMIT_MESSAGE, Reply};

/// A scripted reply: the next `times` requests whose method and path match get it instead of
/// the normal reply. Authentication and scope checks still run first. Faults are matched in
/// injection order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// HTTP method to match, case-insensitive. `None` matches every method.
    #[serde(default)]
    pub method: Option<String>,
    /// Prefix of the request's path plus `?query`.
    pub path_prefix: String,
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default = "one")]
    pub times: u32,
}

fn one() -> u32 {
    1
}

impl Fault {
    /// Builds a fault for any method with a body shaped like Fastly's for that status: an HTML
    /// error page for 502, 503 and 504, and JSON `{"msg": ...}` for every other status. A 429
    /// also carries `Fastly-RateLimit-Remaining: 0` and a reset at the top of the next UTC hour.
    pub fn status(path_prefix: &str, status: u16, times: u32) -> Fault {
        let (content_type, body) = default_body(status);
        let mut headers = vec![("Content-Type".to_string(), content_type.to_string())];
        if status == 429 {
            let next_hour = (chrono::Utc::now().timestamp() / 3600 + 1) * 3600;
            headers.push(("Fastly-RateLimit-Remaining".to_string(), "0".to_string()));
            headers.push(("Fastly-RateLimit-Reset".to_string(), next_hour.to_string()));
        }
        Fault {
            method: None,
            path_prefix: path_prefix.to_string(),
            status,
            body,
            headers,
            times,
        }
    }

    fn matches(&self, method: &str, path_and_query: &str) -> bool {
        let method_matches = self
            .method
            .as_deref()
            .is_none_or(|expected| expected.eq_ignore_ascii_case(method));
        method_matches && path_and_query.starts_with(&self.path_prefix)
    }

    /// Checks that the status and headers form a valid HTTP reply and builds it.
    pub(crate) fn to_reply(&self) -> Result<Reply, String> {
        let status = StatusCode::from_u16(self.status).map_err(|_| {
            format!(
                "fault status {} is invalid: expected 100..=999",
                self.status
            )
        })?;
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let header_name = HeaderName::try_from(name.as_str())
                .map_err(|_| format!("fault header name {name:?} is invalid"))?;
            let header_value = HeaderValue::try_from(value.as_str())
                .map_err(|_| format!("fault header {name} has an invalid value {value:?}"))?;
            headers.append(header_name, header_value);
        }
        Ok(Reply {
            status,
            headers,
            body: self.body.clone().into(),
        })
    }
}

fn default_body(status: u16) -> (&'static str, String) {
    let json = |msg: &str| {
        (
            "application/json",
            serde_json::json!({ "msg": msg }).to_string(),
        )
    };
    match status {
        400 => json("Bad request"),
        401 => json(INVALID_CREDENTIALS),
        404 => json("Record not found"),
        429 => json(RATE_LIMIT_MESSAGE),
        502..=504 => ("text/html", html_error_page(status)),
        _ => json(reason_phrase(status)),
    }
}

fn reason_phrase(status: u16) -> &'static str {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or("Error")
}

/// Returns an edge-cache error page like those Fastly's caches send when the API origin fails.
fn html_error_page(status: u16) -> String {
    let reason = reason_phrase(status);
    format!(
        "<!DOCTYPE html>\n<html><head><title>{status} {reason}</title></head>\n\
         <body><h1>Error {status} {reason}</h1><p>{reason}</p>\n\
         <p>Details: cache-sim-0001</p><hr><p>Varnish cache server</p></body></html>\n"
    )
}

/// Builds one of the replies picked by `error_rate`: status 500, 502 or 503, with an empty,
/// HTML or JSON body, because real 5xx bodies vary.
pub fn random_server_error(rng: &mut impl RngExt) -> Reply {
    let status = [500_u16, 502, 503][rng.random_range(0..3)];
    let code = StatusCode::from_u16(status).expect("500, 502 and 503 are valid statuses");

    match rng.random_range(0..3) {
        0 => Reply::new(code, Vec::new()),
        1 => {
            let mut reply = Reply::new(code, html_error_page(status).into_bytes());
            reply
                .headers
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
            reply
        }
        _ => Reply::msg(code, reason_phrase(status)),
    }
}

/// Pending faults, in injection order.
#[derive(Debug, Default)]
pub struct FaultQueue {
    faults: Mutex<Vec<(Fault, Reply)>>,
    /// Number of pending faults, read without the lock so requests skip it when none are set.
    pending: AtomicUsize,
}

impl FaultQueue {
    fn lock(&self) -> MutexGuard<'_, Vec<(Fault, Reply)>> {
        // The queue stays consistent even if a panic interrupted a holder, so take it over.
        self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends a fault. Faults with `times == 0` are ignored.
    pub fn push(&self, fault: Fault) -> Result<(), String> {
        let reply = fault.to_reply()?;
        if fault.times == 0 {
            return Ok(());
        }
        let mut faults = self.lock();
        faults.push((fault, reply));
        self.pending.store(faults.len(), Ordering::Release);
        Ok(())
    }

    /// Takes one use of the first fault that matches and returns its reply.
    pub fn take(&self, method: &str, path_and_query: &str) -> Option<Reply> {
        if self.pending.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut faults = self.lock();
        let index = faults
            .iter()
            .position(|(fault, _)| fault.matches(method, path_and_query))?;

        let (fault, reply) = &mut faults[index];
        fault.times -= 1;
        let reply = if fault.times == 0 {
            faults.remove(index).1
        } else {
            reply.clone()
        };
        self.pending.store(faults.len(), Ordering::Release);
        Some(reply)
    }

    pub fn clear(&self) {
        let mut faults = self.lock();
        faults.clear();
        self.pending.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::reply::{RATE_LIMIT_REMAINING, RATE_LIMIT_RESET};

    #[test]
    fn fault_is_used_times_then_removed() {
        let queue = FaultQueue::default();
        queue.push(Fault::status("/service/", 503, 2)).unwrap();

        assert!(queue.take("POST", "/purge/host/path").is_none());
        assert_eq!(queue.take("POST", "/service/a/purge").unwrap().status, 503);
        assert_eq!(queue.take("GET", "/service/a").unwrap().status, 503);
        assert!(queue.take("GET", "/service/a").is_none());
    }

    #[test]
    fn faults_match_in_injection_order() {
        let queue = FaultQueue::default();
        let mut post_only = Fault::status("/service/", 500, 1);
        post_only.method = Some("post".to_string());
        queue.push(post_only).unwrap();
        queue.push(Fault::status("/service/", 404, 1)).unwrap();

        assert_eq!(queue.take("GET", "/service/a").unwrap().status, 404);
        assert_eq!(queue.take("POST", "/service/a").unwrap().status, 500);
    }

    #[test]
    fn default_429_carries_rate_limit_headers() {
        let reply = Fault::status("/", 429, 1).to_reply().unwrap();

        assert_eq!(reply.headers.get(RATE_LIMIT_REMAINING).unwrap(), "0");
        let reset: i64 = reply.headers[RATE_LIMIT_RESET]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(reset % 3600, 0);
        assert!(reply.headers.get("retry-after").is_none());
    }

    #[test]
    fn invalid_fault_status_is_rejected() {
        let queue = FaultQueue::default();

        assert!(queue.push(Fault::status("/", 42, 1)).is_err());
    }
}
