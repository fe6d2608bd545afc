//! Execute: a validated, authorized job to Fastly requests and an [`Outcome`]. Key purges and
//! purge_all go through the batcher; URL purges and reads go straight through the gateway.
//! This is the only pipeline stage that causes HTTP requests.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::outcome::Outcome;
use crate::batch::{Batcher, KeysResult, PurgeAllWaited, Waited};
use crate::config::Account;
use crate::fastly::{FastlyError, service_list_path};
use crate::gateway::{CallError, Called, Gateway};
use crate::job::{JobKind, PurgeUrl, ServiceId};
use crate::limits::BudgetClass;

/// Maximum concurrent URL purges of one job; the account's in-flight cap applies as well.
const URLS_IN_FLIGHT_PER_JOB: usize = 8;
/// Maximum service pages read for one list_services job, a guard against a paging loop.
const MAX_SERVICE_PAGES: usize = 1000;

/// The gateway and the batcher, shared by every job of the worker.
pub struct Executor {
    pub gateway: Arc<Gateway>,
    pub batcher: Arc<Batcher<Arc<Gateway>>>,
}

impl Executor {
    /// Runs a job's requests. Work not done by `deadline` ends as [`Outcome::RetryLater`].
    ///
    /// Each branch is boxed: thousands of deliveries wait here at once under a backlog, and an
    /// unboxed future would reserve the size of the largest branch (URL purges, service pages)
    /// for every one of them.
    pub async fn execute(&self, account: &Account, kind: &JobKind, deadline: Instant) -> Outcome {
        match kind {
            JobKind::PurgeKeys {
                service_id,
                keys,
                soft,
            } => Box::pin(self.purge_keys(account, service_id, keys, *soft, deadline)).await,
            JobKind::PurgeUrls { urls, soft } => {
                Box::pin(self.purge_urls(account, urls, *soft, deadline)).await
            }
            JobKind::PurgeAll { service_id } => {
                Box::pin(self.purge_all(account, service_id, deadline)).await
            }
            JobKind::ListServices { page, per_page } => {
                Box::pin(self.list_services(account, *page, *per_page, deadline)).await
            }
            JobKind::GetService { service_id } => {
                let called = Box::pin(self.read(account, "service_details", deadline, || {
                    self.gateway.client().service_details(account, service_id)
                }))
                .await;
                Outcome::from_called(called, |value| value)
            }
            JobKind::GetAccount => Box::pin(self.get_account(account, deadline)).await,
            JobKind::GetToken => {
                let called = Box::pin(self.read(account, "tokens_self", deadline, || {
                    self.gateway.client().token_self(account)
                }))
                .await;
                Outcome::from_called(called, |value| value)
            }
        }
    }

    async fn read<T, F, Fut>(
        &self,
        account: &Account,
        endpoint: &str,
        deadline: Instant,
        request: F,
    ) -> Called<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<crate::fastly::Reply<T>, FastlyError>>,
    {
        self.gateway
            .call(
                account,
                BudgetClass::Read,
                endpoint,
                deadline,
                None,
                request,
            )
            .await
    }

    /// Purges keys through shared bulk requests. Succeeds when every key was purged; its
    /// output then lists the purge id of each key, and the keys a purge_all covered.
    async fn purge_keys(
        &self,
        account: &Account,
        service_id: &ServiceId,
        keys: &[String],
        soft: bool,
        deadline: Instant,
    ) -> Outcome {
        if let Some(error) =
            self.gateway
                .unavailable_past(account.name(), BudgetClass::Purge, deadline)
        {
            return Outcome::RetryLater {
                error,
                attempts: 0,
                output: None,
            };
        }
        let account_name: Arc<str> = Arc::from(account.name());
        let waited = self
            .batcher
            .purge_keys(&account_name, service_id, soft, keys.to_vec(), deadline)
            .await;
        let (result, timed_out) = match waited {
            Waited::Done(result) => (result, false),
            Waited::TimedOut(result) => (result, true),
        };
        let KeysResult {
            purge_ids,
            by_purge_all,
            mut failed,
            error,
            attempts,
        } = result;

        let mut output = json!({
            "service_id": service_id.as_str(),
            "soft": soft,
            "purge_ids": purge_ids,
        });
        if !by_purge_all.is_empty() {
            output["purged_by_purge_all"] = json!(in_job_order(keys, &by_purge_all));
        }
        if timed_out {
            // Keys not resolved in time count as not purged; they may still be, later.
            let resolved: HashSet<&str> = purge_ids_of(&output)
                .chain(by_purge_all.iter().map(String::as_str))
                .collect();
            failed = keys
                .iter()
                .filter(|key| !resolved.contains(key.as_str()))
                .cloned()
                .collect();
        }
        if failed.is_empty() {
            return Outcome::Succeeded { output, attempts };
        }
        output["not_purged"] = json!(in_job_order(keys, &failed));
        let error = match error {
            Some(error) => error,
            None if timed_out => CallError::OutOfTime,
            None => CallError::Fastly(FastlyError::InvalidReply(
                "the bulk purge reply has no purge id for some keys".to_owned(),
            )),
        };
        Outcome::failed_or_retry(error, attempts, Some(output))
    }

    /// Purges everything of a service, sharing the request with other purge_all jobs of it.
    async fn purge_all(
        &self,
        account: &Account,
        service_id: &ServiceId,
        deadline: Instant,
    ) -> Outcome {
        if let Some(error) =
            self.gateway
                .unavailable_past(account.name(), BudgetClass::Write, deadline)
        {
            return Outcome::RetryLater {
                error,
                attempts: 0,
                output: None,
            };
        }
        let account_name: Arc<str> = Arc::from(account.name());
        let (result, attempts) = match self
            .batcher
            .purge_all(&account_name, service_id, deadline)
            .await
        {
            PurgeAllWaited::Done { result, attempts } => (result, attempts),
            PurgeAllWaited::TimedOut { attempts } => {
                return Outcome::RetryLater {
                    error: CallError::OutOfTime,
                    attempts,
                    output: None,
                };
            }
        };
        match result {
            Ok(()) => Outcome::Succeeded {
                output: json!({ "service_id": service_id.as_str() }),
                attempts,
            },
            Err(error) => Outcome::failed_or_retry(error, attempts, None),
        }
    }

    /// Purges each URL with its own request, a few at a time.
    async fn purge_urls(
        &self,
        account: &Account,
        urls: &[PurgeUrl],
        soft: bool,
        deadline: Instant,
    ) -> Outcome {
        // The requests are built up front: a closure inside the stream would not be Send.
        let requests: Vec<_> = urls
            .iter()
            .map(|url| self.purge_one_url(account, url, soft, deadline))
            .collect();
        let results: Vec<(&PurgeUrl, Called<String>)> = stream::iter(requests)
            .buffer_unordered(URLS_IN_FLIGHT_PER_JOB)
            .collect()
            .await;

        let mut purge_ids = BTreeMap::new();
        let mut failed = Vec::new();
        let mut attempts = 0;
        let mut first_error = None;
        for (url, called) in results {
            attempts = attempts.max(called.attempts);
            match called.result {
                Ok(id) => {
                    purge_ids.insert(url.original.clone(), id);
                }
                Err(err) => {
                    failed.push(url.original.clone());
                    // A permanent error decides the job, so prefer it over a transient one.
                    if first_error.as_ref().is_none_or(CallError::is_transient) {
                        first_error = Some(err);
                    }
                }
            }
        }
        let mut output = json!({ "soft": soft, "purge_ids": purge_ids });
        let Some(error) = first_error else {
            return Outcome::Succeeded { output, attempts };
        };
        let originals: Vec<String> = urls.iter().map(|url| url.original.clone()).collect();
        output["not_purged"] = json!(in_job_order(&originals, &failed));
        Outcome::failed_or_retry(error, attempts, Some(output))
    }

    async fn purge_one_url<'a>(
        &self,
        account: &Account,
        url: &'a PurgeUrl,
        soft: bool,
        deadline: Instant,
    ) -> (&'a PurgeUrl, Called<String>) {
        let called = self
            .gateway
            .call(
                account,
                BudgetClass::Purge,
                "purge_url",
                deadline,
                None,
                || self.gateway.client().purge_url(account, url, soft),
            )
            .await;
        (url, called)
    }

    /// Reads one page when `page` is given; otherwise follows `Link: rel="next"` to the end.
    async fn list_services(
        &self,
        account: &Account,
        page: Option<u32>,
        per_page: Option<u32>,
        deadline: Instant,
    ) -> Outcome {
        let mut services = Vec::new();
        let mut attempts = 0;
        let mut path = service_list_path(page, per_page);
        let mut seen = HashSet::new();
        loop {
            let called = self
                .read(account, "list_services", deadline, || {
                    self.gateway.client().list_services_page(account, &path)
                })
                .await;
            attempts = attempts.max(called.attempts);
            let page_of_services = match called.result {
                Ok(page) => page,
                Err(error) => return Outcome::failed_or_retry(error, attempts, None),
            };
            services.extend(page_of_services.services);
            seen.insert(path.clone());

            let next = match page_of_services.next {
                Some(next) if page.is_none() => next,
                _ => break,
            };
            if seen.contains(&next) || seen.len() >= MAX_SERVICE_PAGES {
                let error = FastlyError::InvalidReply(format!(
                    "service paging does not end: page {next:?} after {} pages",
                    seen.len()
                ));
                return Outcome::failed_or_retry(error.into(), attempts, None);
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
    async fn get_account(&self, account: &Account, deadline: Instant) -> Outcome {
        let user = self
            .read(account, "current_user", deadline, || {
                self.gateway.client().current_user(account)
            })
            .await;
        let mut attempts = user.attempts;
        let user = match user.result {
            Ok(user) => user,
            Err(error) => return Outcome::failed_or_retry(error, attempts, None),
        };
        let Some(customer_id) = user.get("customer_id").and_then(Value::as_str) else {
            let error =
                FastlyError::InvalidReply("the current_user reply has no customer_id".to_owned());
            return Outcome::failed_or_retry(error.into(), attempts, None);
        };
        let customer = self
            .read(account, "customer", deadline, || {
                self.gateway.client().customer(account, customer_id)
            })
            .await;
        attempts = attempts.max(customer.attempts);
        match customer.result {
            Ok(customer) => Outcome::Succeeded {
                output: json!({ "user": user, "customer": customer }),
                attempts,
            },
            Err(error) => Outcome::failed_or_retry(error, attempts, None),
        }
    }
}

/// Returns the keys of an output's `purge_ids` map.
fn purge_ids_of(output: &Value) -> impl Iterator<Item = &str> {
    output["purge_ids"]
        .as_object()
        .into_iter()
        .flat_map(|ids| ids.keys().map(String::as_str))
}

/// Returns `subset` in the order the items have in `all`, so lists read like the job.
fn in_job_order(all: &[String], subset: &[String]) -> Vec<String> {
    let members: HashSet<&str> = subset.iter().map(String::as_str).collect();
    all.iter()
        .filter(|item| members.contains(item.as_str()))
        .cloned()
        .collect()
}
