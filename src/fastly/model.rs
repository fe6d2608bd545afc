//! Fastly reply data the worker reads: rate-limit headers, `Link` paging headers and the
//! token information of `GET /tokens/self`.

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use serde_json::Value;

/// The rate-limit headers of a write reply. Fastly sends them on writes (purge_all included,
/// failed writes too), never on reads or on key and URL purges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// `Fastly-RateLimit-Remaining`: writes left in the current window.
    pub remaining: Option<u64>,
    /// `Fastly-RateLimit-Reset`: end of the current window, in Unix epoch seconds (UTC).
    pub reset: Option<i64>,
}

impl RateLimit {
    pub fn from_headers(headers: &HeaderMap) -> RateLimit {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .and_then(|text| text.trim().parse::<i64>().ok())
        };
        RateLimit {
            remaining: number("fastly-ratelimit-remaining").and_then(|n| u64::try_from(n).ok()),
            reset: number("fastly-ratelimit-reset"),
        }
    }
}

/// Returns the target of the `rel="next"` link of an RFC 8288 `Link` header, if any.
pub fn next_link(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all("link")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|value| find_rel(value, "next"))
}

/// Finds the link with relation `rel` in one `Link` header value such as
/// `<https://x/a?page=2>; rel="next", <https://x/a?page=9>; rel="last"`.
fn find_rel(header: &str, rel: &str) -> Option<String> {
    let mut rest = header;
    while let Some(open) = rest.find('<') {
        let close = open + rest[open..].find('>')?;
        let target = &rest[open + 1..close];
        let after = &rest[close + 1..];
        // Parameters run until the next link, which starts with '<'.
        let params_end = after.find('<').unwrap_or(after.len());
        let params = after[..params_end].trim_end().trim_end_matches(',');
        let matches = params.split(';').any(|param| {
            let Some((name, value)) = param.split_once('=') else {
                return false;
            };
            name.trim().eq_ignore_ascii_case("rel")
                && value
                    .trim()
                    .trim_matches('"')
                    .split_whitespace()
                    .any(|r| r.eq_ignore_ascii_case(rel))
        });
        if matches {
            return Some(target.to_owned());
        }
        rest = after;
    }
    None
}

/// What `GET /tokens/self` says about the token the worker uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: Option<String>,
    pub name: Option<String>,
    /// Scopes, split from the space-separated `scope` string.
    pub scopes: Vec<String>,
    /// Services the token is limited to; empty means every service of the account.
    pub services: Vec<String>,
    /// Null when the token never expires.
    pub expires_at: Option<DateTime<Utc>>,
}

impl TokenInfo {
    /// Reads the reply of `GET /tokens/self`.
    pub fn from_json(value: &Value) -> Result<TokenInfo, String> {
        let object = value
            .as_object()
            .ok_or("the tokens/self reply is not a JSON object")?;
        let text = |name: &str| object.get(name).and_then(Value::as_str).map(str::to_owned);

        // `scope` is one space-separated string that may hold several scopes. Older replies
        // also carry a `scopes` array; use it only when `scope` is absent.
        let scopes: Vec<String> = match object.get("scope").and_then(Value::as_str) {
            Some(scope) => scope.split_whitespace().map(str::to_owned).collect(),
            None => object
                .get("scopes")
                .and_then(Value::as_array)
                .ok_or("the tokens/self reply has neither scope nor scopes")?
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        };
        let services = object
            .get("services")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let expires_at = match object.get("expires_at") {
            None | Some(Value::Null) => None,
            Some(Value::String(at)) => Some(
                DateTime::parse_from_rfc3339(at)
                    .map_err(|err| format!("expires_at {at:?} is not an RFC 3339 time: {err}"))?
                    .with_timezone(&Utc),
            ),
            Some(other) => return Err(format!("expires_at is not a string: {other}")),
        };
        Ok(TokenInfo {
            id: text("id"),
            name: text("name"),
            scopes,
            services,
            expires_at,
        })
    }

    /// Returns whether the token has any of `allowed`.
    pub fn has_any_scope(&self, allowed: &[&str]) -> bool {
        self.scopes
            .iter()
            .any(|scope| allowed.contains(&scope.as_str()))
    }

    /// Returns whether the token may act on `service_id`.
    pub fn covers_service(&self, service_id: &str) -> bool {
        self.services.is_empty() || self.services.iter().any(|id| id == service_id)
    }

    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;
    use serde_json::json;

    use super::*;
    use crate::fastly::tests::{fixture, fixture_headers};

    #[test]
    fn token_self_recording_parses() {
        let recording = fixture("tokens_self.json");
        let info = TokenInfo::from_json(&recording["body"]).unwrap();
        assert_eq!(info.scopes, ["global"]);
        assert_eq!(info.services, ["XXXXXXXXXXXXXXXXXXXXXX"]);
        assert_eq!(info.expires_at, None);
        assert_eq!(info.name.as_deref(), Some("TempTokenForGoFastlyTests"));
        assert!(info.has_any_scope(&["global"]));
        assert!(info.covers_service("XXXXXXXXXXXXXXXXXXXXXX"));
        assert!(!info.covers_service("other"));
    }

    #[test]
    fn multi_scope_string_split() {
        let info = TokenInfo::from_json(&json!({
            "scope": "global:read purge_select",
            "services": [],
            "expires_at": "2021-04-14T10:20:53Z"
        }))
        .unwrap();
        assert_eq!(info.scopes, ["global:read", "purge_select"]);
        assert!(info.has_any_scope(&["purge_select", "global"]));
        assert!(!info.has_any_scope(&["purge_all", "global"]));
        assert!(info.covers_service("anything"));
        assert!(info.is_expired(Utc::now()));
    }

    #[test]
    fn token_list_recordings_parse() {
        for name in ["tokens_list.json", "customer_tokens_list.json"] {
            let recording = fixture(name);
            for token in recording["body"].as_array().unwrap() {
                let info = TokenInfo::from_json(token).unwrap();
                assert!(!info.scopes.is_empty(), "{name}");
            }
        }
    }

    #[test]
    fn link_header_recordings() {
        let page1 = fixture_headers("services_list_paginator.page1.json");
        assert_eq!(
            next_link(&page1).as_deref(),
            Some(
                "https://api.fastly.com/service?direction=descend&page=2&per_page=200&sort=created"
            )
        );
        let page3 = fixture_headers("services_list.page3.json");
        assert_eq!(next_link(&page3), None);
        let page2 = fixture_headers("services_list.page2.json");
        assert!(next_link(&page2).unwrap().contains("page=3"));
    }

    #[test]
    fn link_header_variants() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "link",
            HeaderValue::from_static("<https://x/s?page=2>; rel=next"),
        );
        assert_eq!(next_link(&headers).as_deref(), Some("https://x/s?page=2"));
        headers.insert(
            "link",
            HeaderValue::from_static("<https://x/s?a=1,2>; rel=\"prev\", <https://x/s?page=3>; title=\"n\"; rel=\"next last\""),
        );
        assert_eq!(next_link(&headers).as_deref(), Some("https://x/s?page=3"));
        headers.insert("link", HeaderValue::from_static("garbage"));
        assert_eq!(next_link(&headers), None);
    }

    #[test]
    fn rate_limit_headers_recorded() {
        let headers = fixture_headers("purge_all.json");
        let limit = RateLimit::from_headers(&headers);
        assert!(limit.remaining.is_some());
        assert!(limit.reset.is_some());
        let none = RateLimit::from_headers(&fixture_headers("purge_by_keys.json"));
        assert_eq!(none, RateLimit::default());
    }
}
