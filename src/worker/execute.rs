//! Execute: a validated, authorized job to Fastly requests and an [`Outcome`]. This is the only
//! pipeline stage that makes HTTP requests; each request gets the retry policy.

use std::collections::{BTreeMap, HashSet};

use futures_util::stream::{self, StreamExt};
use serde_json::{Value, json};

use super::outcome::Outcome;
use crate::config::Account;
use crate::fastly::{FastlyClient, FastlyError, MAX_KEYS_PER_REQUEST, Reply, service_list_path};
use crate::job::{JobKind, PurgeUrl, ServiceId};
use crate::retry::{Attempted, RetryPolicy, with_retries};

/// Maximum concurrent Fastly requests of one job (key chunks or URLs).
const REQUESTS_PER_JOB: usize = 8;
/// Maximum service pages read for one list_services job, a guard against a paging loop.
const MAX_SERVICE_PAGES: usize = 1000;

/// What execution needs: the client and the retry policy.
#[derive(Debug, Clone)]
pub struct Executor {
    pub client: FastlyClient,
    pub retry: RetryPolicy,
}

impl Executor {
    pub async fn execute(&self, account: &Account, kind: &JobKind) -> Outcome {
        match kind {
            JobKind::PurgeKeys {
                service_id,
                keys,
                soft,
            } => self.purge_keys(account, service_id, keys, *soft).await,
            JobKind::PurgeUrls { urls, soft } => self.purge_urls(account, urls, *soft).await,
            JobKind::PurgeAll { service_id } => {
                let attempted = self
                    .attempt("purge_all", || self.client.purge_all(account, service_id))
                    .await;
                Outcome::from_attempt(attempted, |_| json!({ "service_id": service_id.as_str() }))
            }
            JobKind::ListServices { page, per_page } => {
                self.list_services(account, *page, *per_page).await
            }
            JobKind::GetService { service_id } => {
                let attempted = self
                    .attempt("service details", || {
                        self.client.service_details(account, service_id)
                    })
                    .await;
                Outcome::from_attempt(attempted, |reply| reply.value)
            }
            JobKind::GetAccount => self.get_account(account).await,
            JobKind::GetToken => {
                let attempted = self
                    .attempt("tokens/self", || self.client.token_self(account))
                    .await;
                Outcome::from_attempt(attempted, |reply| reply.value)
            }
        }
    }

    async fn attempt<T, F, Fut>(&self, what: &str, request: F) -> Attempted<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, FastlyError>>,
    {
        with_retries(&self.retry, what, request).await
    }

    /// Sends the keys in requests of at most 256. The job succeeds only if every request does;
    /// otherwise its output lists the keys purged and those not purged.
    async fn purge_keys(
        &self,
        account: &Account,
        service_id: &ServiceId,
        keys: &[String],
        soft: bool,
    ) -> Outcome {
        // The requests are built up front: a closure inside the stream would not be Send.
        let requests: Vec<_> = keys
            .chunks(MAX_KEYS_PER_REQUEST)
            .map(|chunk| self.purge_key_chunk(account, service_id, chunk, soft))
            .collect();
        let results: Vec<(&[String], Attempted<_>)> = stream::iter(requests)
            .buffer_unordered(REQUESTS_PER_JOB)
            .collect()
            .await;

        let mut purge_ids = BTreeMap::new();
        let mut not_purged: Vec<&str> = Vec::new();
        let mut attempts = 0;
        let mut first_error = None;
        for (chunk, attempted) in results {
            attempts = attempts.max(attempted.attempts);
            match attempted.result {
                Ok(reply) => purge_ids.extend(reply.value),
                Err(err) => {
                    not_purged.extend(chunk.iter().map(String::as_str));
                    first_error.get_or_insert(err);
                }
            }
        }
        let mut output = json!({
            "service_id": service_id.as_str(),
            "soft": soft,
            "purge_ids": purge_ids,
        });
        match first_error {
            None => Outcome::Succeeded { output, attempts },
            Some(error) => {
                // Keep the job's order, so the list reads like the request.
                let failed: HashSet<&str> = not_purged.into_iter().collect();
                let ordered: Vec<&str> = keys
                    .iter()
                    .map(String::as_str)
                    .filter(|key| failed.contains(key))
                    .collect();
                output["not_purged"] = json!(ordered);
                Outcome::Failed {
                    error,
                    attempts,
                    output: Some(output),
                }
            }
        }
    }

    /// Purges each URL with its own request, a few at a time.
    async fn purge_urls(&self, account: &Account, urls: &[PurgeUrl], soft: bool) -> Outcome {
        let requests: Vec<_> = urls
            .iter()
            .map(|url| self.purge_one_url(account, url, soft))
            .collect();
        let results: Vec<(&PurgeUrl, Attempted<_>)> = stream::iter(requests)
            .buffer_unordered(REQUESTS_PER_JOB)
            .collect()
            .await;

        let mut purge_ids = BTreeMap::new();
        let mut failed = HashSet::new();
        let mut attempts = 0;
        let mut first_error = None;
        for (url, attempted) in results {
            attempts = attempts.max(attempted.attempts);
            match attempted.result {
                Ok(reply) => {
                    purge_ids.insert(url.original.clone(), reply.value);
                }
                Err(err) => {
                    failed.insert(url.original.as_str());
                    first_error.get_or_insert(err);
                }
            }
        }
        let mut output = json!({ "soft": soft, "purge_ids": purge_ids });
        match first_error {
            None => Outcome::Succeeded { output, attempts },
            Some(error) => {
                let ordered: Vec<&str> = urls
                    .iter()
                    .map(|url| url.original.as_str())
                    .filter(|url| failed.contains(url))
                    .collect();
                output["not_purged"] = json!(ordered);
                Outcome::Failed {
                    error,
                    attempts,
                    output: Some(output),
                }
            }
        }
    }

    async fn purge_key_chunk<'a>(
        &self,
        account: &Account,
        service_id: &ServiceId,
        chunk: &'a [String],
        soft: bool,
    ) -> (&'a [String], Attempted<Reply<BTreeMap<String, String>>>) {
        let attempted = self
            .attempt("bulk key purge", || {
                self.client.purge_keys(account, service_id, chunk, soft)
            })
            .await;
        (chunk, attempted)
    }

    async fn purge_one_url<'a>(
        &self,
        account: &Account,
        url: &'a PurgeUrl,
        soft: bool,
    ) -> (&'a PurgeUrl, Attempted<Reply<String>>) {
        let attempted = self
            .attempt("URL purge", || self.client.purge_url(account, url, soft))
            .await;
        (url, attempted)
    }

    /// Reads one page when `page` is given; otherwise follows `Link: rel="next"` to the end.
    async fn list_services(
        &self,
        account: &Account,
        page: Option<u32>,
        per_page: Option<u32>,
    ) -> Outcome {
        let mut services = Vec::new();
        let mut attempts = 0;
        let mut path = service_list_path(page, per_page);
        let mut seen = HashSet::new();
        loop {
            let attempted = self
                .attempt("service list", || {
                    self.client.list_services_page(account, &path)
                })
                .await;
            attempts = attempts.max(attempted.attempts);
            let reply = match attempted.result {
                Ok(reply) => reply,
                Err(error) => {
                    return Outcome::Failed {
                        error,
                        attempts,
                        output: None,
                    };
                }
            };
            services.extend(reply.value.services);
            seen.insert(path.clone());

            let next = match reply.value.next {
                Some(next) if page.is_none() => next,
                _ => break,
            };
            if seen.contains(&next) || seen.len() >= MAX_SERVICE_PAGES {
                return Outcome::Failed {
                    error: FastlyError::InvalidReply(format!(
                        "service paging does not end: page {next:?} after {} pages",
                        seen.len()
                    )),
                    attempts,
                    output: None,
                };
            }
            path = next;
        }
        let total = services.len();
        Outcome::Succeeded {
            output: json!({ "services": services, "total": total }),
            attempts,
        }
    }

    /// Reads the token's user, then the user's customer.
    async fn get_account(&self, account: &Account) -> Outcome {
        let user = self
            .attempt("current user", || self.client.current_user(account))
            .await;
        let mut attempts = user.attempts;
        let user = match user.result {
            Ok(reply) => reply.value,
            Err(error) => {
                return Outcome::Failed {
                    error,
                    attempts,
                    output: None,
                };
            }
        };
        let Some(customer_id) = user.get("customer_id").and_then(Value::as_str) else {
            return Outcome::Failed {
                error: FastlyError::InvalidReply(
                    "the current_user reply has no customer_id".to_owned(),
                ),
                attempts,
                output: None,
            };
        };
        let customer = self
            .attempt("customer", || self.client.customer(account, customer_id))
            .await;
        attempts = attempts.max(customer.attempts);
        match customer.result {
            Ok(reply) => Outcome::Succeeded {
                output: json!({ "user": user, "customer": reply.value }),
                attempts,
            },
            Err(error) => Outcome::Failed {
                error,
                attempts,
                output: None,
            },
        }
    }
}
