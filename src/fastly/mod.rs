//! The Fastly API client: one method per endpoint the worker uses, reply parsing, rate-limit
//! headers, and errors classified for retrying ([`FastlyError::class`]).
//!
//! The client makes exactly one HTTP request per call and never retries; the worker decides
//! what to do with an error. It does not depend on the broker. The API token reaches it only as
//! the sensitive `Fastly-Key` header value of an [`Account`].

mod error;
mod model;
#[cfg(test)]
mod replay_tests;

pub use error::{ErrorClass, FastlyError, error_message};
pub use model::{RateLimit, TokenInfo, next_link};

use std::collections::BTreeMap;

use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};
use serde_json::Value;
use url::Url;

use crate::config::{Account, FastlySettings};
use crate::job::{PurgeUrl, ServiceId};

/// Maximum surrogate keys in one bulk purge request, Fastly's documented limit.
pub const MAX_KEYS_PER_REQUEST: usize = 256;

/// The User-Agent of every request: the worker's name and version.
pub const USER_AGENT_VALUE: &str = concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION"));

/// A successful reply's value and its rate-limit headers.
#[derive(Debug, Clone)]
pub struct Reply<T> {
    pub value: T,
    pub rate_limit: RateLimit,
}

/// One page of `GET /service`.
#[derive(Debug, Clone)]
pub struct ServicePage {
    pub services: Vec<Value>,
    /// Path and query of the next page, when the `Link` header names one.
    pub next: Option<String>,
}

/// The Fastly API client. Cloning is cheap and shares the connection pool.
#[derive(Debug, Clone)]
pub struct FastlyClient {
    http: reqwest::Client,
    base: Url,
}

impl FastlyClient {
    pub fn new(base: Url, settings: &FastlySettings) -> Result<FastlyClient, reqwest::Error> {
        let mut headers = HeaderMap::new();
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(settings.request_timeout())
            .connect_timeout(settings.connect_timeout())
            // Redirects could carry the Fastly-Key header to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(FastlyClient { http, base })
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// Purges up to 256 surrogate keys of a service; returns each key's purge id.
    pub async fn purge_keys(
        &self,
        account: &Account,
        service_id: &ServiceId,
        keys: &[String],
        soft: bool,
    ) -> Result<Reply<BTreeMap<String, String>>, FastlyError> {
        debug_assert!(keys.len() <= MAX_KEYS_PER_REQUEST);
        let path = format!("/service/{service_id}/purge");
        let body = serde_json::json!({ "surrogate_keys": keys });
        let (body, rate_limit) = self
            .send(account, Method::POST, &path, Some(body), soft)
            .await?;

        // A flat map of key to purge id; the recorded reply had no Content-Type.
        let ids: BTreeMap<String, String> = serde_json::from_slice(&body).map_err(|err| {
            FastlyError::InvalidReply(format!(
                "the bulk purge reply is not a map of keys to purge ids: {err}"
            ))
        })?;
        if let Some(missing) = keys.iter().find(|key| !ids.contains_key(*key)) {
            return Err(FastlyError::InvalidReply(format!(
                "the bulk purge reply has no purge id for key {missing:?}"
            )));
        }
        Ok(Reply {
            value: ids,
            rate_limit,
        })
    }

    /// Purges one URL; returns its purge id.
    pub async fn purge_url(
        &self,
        account: &Account,
        url: &PurgeUrl,
        soft: bool,
    ) -> Result<Reply<String>, FastlyError> {
        let path = format!("/purge/{}{}", url.host, url.path_and_query);
        let (body, rate_limit) = self.send(account, Method::POST, &path, None, soft).await?;
        let value = parse_json(&body, "URL purge")?;
        let id = value
            .get("id")
            .and_then(Value::as_str)
            .filter(|_| value.get("status").and_then(Value::as_str) == Some("ok"))
            .ok_or_else(|| {
                FastlyError::InvalidReply(format!(
                    "the URL purge reply has no status \"ok\" and id: {}",
                    excerpt(&body)
                ))
            })?;
        Ok(Reply {
            value: id.to_owned(),
            rate_limit,
        })
    }

    /// Purges everything cached for a service.
    pub async fn purge_all(
        &self,
        account: &Account,
        service_id: &ServiceId,
    ) -> Result<Reply<()>, FastlyError> {
        let path = format!("/service/{service_id}/purge_all");
        let (body, rate_limit) = self.send(account, Method::POST, &path, None, false).await?;
        let value = parse_json(&body, "purge_all")?;
        if value.get("status").and_then(Value::as_str) != Some("ok") {
            return Err(FastlyError::InvalidReply(format!(
                "the purge_all reply has no status \"ok\": {}",
                excerpt(&body)
            )));
        }
        Ok(Reply {
            value: (),
            rate_limit,
        })
    }

    /// Reads one page of services. `path` is `/service` with its query, as built by
    /// [`service_list_path`] or taken from the previous page's `next`.
    pub async fn list_services_page(
        &self,
        account: &Account,
        path: &str,
    ) -> Result<Reply<ServicePage>, FastlyError> {
        let response = self
            .request(account, Method::GET, path, None, false)
            .await?;
        let next = next_link(response.headers()).and_then(|link| self.link_path(&link, "/service"));
        let (body, rate_limit) = read_body(response).await?;
        let services = match parse_json(&body, "service list")? {
            Value::Array(items) => items,
            _ => {
                return Err(FastlyError::InvalidReply(
                    "the service list reply is not a JSON array".to_owned(),
                ));
            }
        };
        Ok(Reply {
            value: ServicePage { services, next },
            rate_limit,
        })
    }

    /// Reads a service with its versions, its active version and that version's settings.
    pub async fn service_details(
        &self,
        account: &Account,
        service_id: &ServiceId,
    ) -> Result<Reply<Value>, FastlyError> {
        self.get_json(
            account,
            &format!("/service/{service_id}/details"),
            "service details",
        )
        .await
    }

    /// Reads the user who owns the token.
    pub async fn current_user(&self, account: &Account) -> Result<Reply<Value>, FastlyError> {
        self.get_json(account, "/current_user", "current user")
            .await
    }

    /// Reads a customer (the Fastly account as a company) by id.
    pub async fn customer(
        &self,
        account: &Account,
        customer_id: &str,
    ) -> Result<Reply<Value>, FastlyError> {
        if customer_id.is_empty() || !customer_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(FastlyError::InvalidReply(format!(
                "the customer id {customer_id:?} is not letters and digits"
            )));
        }
        self.get_json(account, &format!("/customer/{customer_id}"), "customer")
            .await
    }

    /// Reads Fastly's record of the token itself: scopes, services, expiry.
    pub async fn token_self(&self, account: &Account) -> Result<Reply<Value>, FastlyError> {
        self.get_json(account, "/tokens/self", "tokens/self").await
    }

    async fn get_json(
        &self,
        account: &Account,
        path: &str,
        what: &str,
    ) -> Result<Reply<Value>, FastlyError> {
        let (body, rate_limit) = self.send(account, Method::GET, path, None, false).await?;
        Ok(Reply {
            value: parse_json(&body, what)?,
            rate_limit,
        })
    }

    async fn send(
        &self,
        account: &Account,
        method: Method,
        path: &str,
        json: Option<Value>,
        soft: bool,
    ) -> Result<(bytes::Bytes, RateLimit), FastlyError> {
        let response = self.request(account, method, path, json, soft).await?;
        read_body(response).await
    }

    /// Sends one request and turns a non-2xx reply into [`FastlyError::Status`].
    async fn request(
        &self,
        account: &Account,
        method: Method,
        path: &str,
        json: Option<Value>,
        soft: bool,
    ) -> Result<reqwest::Response, FastlyError> {
        let url = self.url(path)?;
        let mut request = self
            .http
            .request(method, url)
            .header("fastly-key", fastly_key(account)?);
        if soft {
            request = request.header("fastly-soft-purge", "1");
        }
        if let Some(json) = json {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(json.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|err| FastlyError::from_reqwest(&err))?;
        if response.status().is_success() {
            return Ok(response);
        }

        let status = response.status();
        let rate_limit = RateLimit::from_headers(response.headers());
        let body = response.bytes().await.unwrap_or_default();
        Err(FastlyError::Status {
            status,
            message: error_message(status, &body),
            rate_limit,
        })
    }

    /// Joins an API path to the base URL, which may carry a path prefix of its own.
    ///
    /// The URL parser resolves dot segments and encodes some characters, so the result is
    /// checked to have exactly the path and query that were built: a job must never reach
    /// another endpoint than the one its type calls.
    fn url(&self, path: &str) -> Result<Url, FastlyError> {
        let prefix = self.base.path().trim_end_matches('/');
        let expected = format!("{prefix}{path}");
        let mut url = self.base.clone();
        let (path_only, query) = match expected.split_once('?') {
            Some((path_only, query)) => (path_only, Some(query)),
            None => (expected.as_str(), None),
        };
        url.set_path(path_only);
        url.set_query(query);
        let built = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        if built != expected {
            return Err(FastlyError::InvalidRequest(format!(
                "the request path {expected:?} would be sent as {built:?}"
            )));
        }
        Ok(url)
    }

    /// Returns a link's path and query when its path is `expected_path` under the API base.
    /// The host is dropped, so that a `Link` header can never send the token to another host.
    fn link_path(&self, link: &str, expected_path: &str) -> Option<String> {
        let url = Url::parse(link).or_else(|_| self.base.join(link)).ok()?;
        let prefix = self.base.path().trim_end_matches('/');
        let path = url.path().strip_prefix(prefix).unwrap_or(url.path());
        if path != expected_path {
            return None;
        }
        Some(match url.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        })
    }
}

/// Builds the `Fastly-Key` header value of an account: the one place the token leaves its
/// wrapper. The value is marked sensitive, so HTTP libraries keep it out of debug output.
fn fastly_key(account: &Account) -> Result<HeaderValue, FastlyError> {
    let mut value = HeaderValue::from_str(account.expose_token()).map_err(|_| {
        FastlyError::InvalidRequest(format!(
            "the token of account {:?} cannot be sent as a header",
            account.name()
        ))
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Builds the path of the first service page to read.
pub fn service_list_path(page: Option<u32>, per_page: Option<u32>) -> String {
    let mut query = Vec::new();
    if let Some(page) = page {
        query.push(format!("page={page}"));
    }
    if let Some(per_page) = per_page {
        query.push(format!("per_page={per_page}"));
    }
    if query.is_empty() {
        "/service".to_owned()
    } else {
        format!("/service?{}", query.join("&"))
    }
}

async fn read_body(response: reqwest::Response) -> Result<(bytes::Bytes, RateLimit), FastlyError> {
    let rate_limit = RateLimit::from_headers(response.headers());
    let body = response
        .bytes()
        .await
        .map_err(|err| FastlyError::from_reqwest(&err))?;
    Ok((body, rate_limit))
}

fn parse_json(body: &[u8], what: &str) -> Result<Value, FastlyError> {
    serde_json::from_slice(body).map_err(|err| {
        FastlyError::InvalidReply(format!(
            "the {what} reply is not JSON ({err}): {}",
            excerpt(body)
        ))
    })
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut cut: String = text.chars().take(200).collect();
    if cut.len() < text.len() {
        cut.push_str("...");
    }
    cut
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
    use serde_json::Value;

    use super::*;

    fn fixture_path(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/fastly")
            .join(name)
    }

    /// Reads one recorded Fastly interaction.
    pub(crate) fn fixture(name: &str) -> Value {
        let text = std::fs::read_to_string(fixture_path(name)).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Returns the response headers of a recording.
    pub(crate) fn fixture_headers(name: &str) -> HeaderMap {
        let recording = fixture(name);
        let mut headers = HeaderMap::new();
        for (name, value) in recording["response_headers"].as_object().unwrap() {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value.as_str().unwrap()).unwrap(),
            );
        }
        headers
    }

    fn client(base: &str) -> FastlyClient {
        let settings = crate::config::Settings::defaults().fastly;
        FastlyClient::new(Url::parse(base).unwrap(), &settings).unwrap()
    }

    #[test]
    fn link_reduced_to_api_path() {
        let client = client("http://127.0.0.1:9000");
        assert_eq!(
            client
                .link_path(
                    "http://127.0.0.1:9000/service?page=2&per_page=20",
                    "/service"
                )
                .as_deref(),
            Some("/service?page=2&per_page=20")
        );
        // The real API sends absolute links to api.fastly.com; only path and query are used.
        assert_eq!(
            client
                .link_path("https://api.fastly.com/service?page=3", "/service")
                .as_deref(),
            Some("/service?page=3")
        );
        assert_eq!(
            client.link_path("https://evil.example/other?page=3", "/service"),
            None
        );
    }

    #[test]
    fn url_that_would_change_rejected() {
        let client = client("https://api.fastly.com");
        for path in [
            "/purge/../service/abc/purge_all",
            "/purge/x/%2e%2e/%2e%2e/service/abc/purge_all",
            "/purge/h/a{b}",
        ] {
            let err = client.url(path).unwrap_err();
            assert!(
                matches!(err, FastlyError::InvalidRequest(_)),
                "{path}: {err}"
            );
            assert!(!err.is_retryable());
        }
        assert_eq!(
            client.url("/purge/h/a%2Fb?x=1&y=%41").unwrap().as_str(),
            "https://api.fastly.com/purge/h/a%2Fb?x=1&y=%41"
        );
    }

    #[test]
    fn url_joins_base_with_prefix() {
        let client = client("https://proxy.example/fastly/");
        assert_eq!(
            client.url("/service/abc/purge").unwrap().as_str(),
            "https://proxy.example/fastly/service/abc/purge"
        );
    }

    #[test]
    fn service_list_paths() {
        assert_eq!(service_list_path(None, None), "/service");
        assert_eq!(
            service_list_path(Some(2), Some(50)),
            "/service?page=2&per_page=50"
        );
        assert_eq!(service_list_path(None, Some(100)), "/service?per_page=100");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Every URL the job validation accepts becomes a request for exactly its own URL
            /// purge path: nothing in it can lead the request to another endpoint.
            #[test]
            fn accepted_purge_urls_stay_under_purge(
                text in "https?://(([a-zA-Z0-9._-]|%[0-9a-fA-F]{2}|[é☃。ü]){1,16}|\\[[0-9a-f:]{2,12}\\])(:[0-9]{1,4})?(/[!-~]{0,10}){0,4}(\\?[!-~]{0,10})?"
            ) {
                let Ok(url) = PurgeUrl::parse(&text) else {
                    return Ok(());
                };
                let client = client("https://api.fastly.com");
                let path = format!("/purge/{}{}", url.host, url.path_and_query);
                let request = client.url(&path);
                prop_assert!(request.is_ok(), "{text} -> {path}: {request:?}");
                let request = request.unwrap();
                let expected_prefix = format!("/purge/{}/", url.host);
                prop_assert!(request.path().starts_with(&expected_prefix), "{text} -> {request}");
            }
        }
    }
}
