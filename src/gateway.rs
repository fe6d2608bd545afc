//! The gateway: every Fastly request of the worker passes here. It waits for the account's
//! budget, sends the request, feeds the reply's rate-limit headers back to the budget, and
//! retries transient failures in-process until the attempts or the caller's deadline run out.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::batch::{BatchKind, Dispatch, QueueKey, Sealed, Sent};
use crate::config::Account;
use crate::fastly::{ErrorClass, FastlyClient, FastlyError, Reply};
use crate::job::ErrorCode;
use crate::limits::{AccountLimits, Admission, BudgetClass, Limits, OverBudget};
use crate::retry::{RetryPolicy, full_jitter};
use crate::telemetry::Metrics;

/// The reason a request did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Fastly(#[from] FastlyError),
    /// The budget allowed no request before the deadline, so none was sent.
    #[error("account {account:?}: {over}")]
    OverBudget { account: String, over: OverBudget },
    /// The job's requests were not done before the delivery's deadline, for example because
    /// its batch waited for budget.
    #[error(
        "the job's requests did not finish within the delivery budget \
         (redelivery.delivery_budget_ms)"
    )]
    OutOfTime,
    /// A defect in the worker; the job is not retried.
    #[error("internal error in the worker: {0}")]
    Internal(String),
}

impl CallError {
    /// Returns whether the job may succeed later: transient Fastly errors and budgets.
    pub fn is_transient(&self) -> bool {
        match self {
            CallError::Fastly(err) => err.is_retryable(),
            CallError::OverBudget { .. } | CallError::OutOfTime => true,
            CallError::Internal(_) => false,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            CallError::Fastly(err) => err.code(),
            CallError::OverBudget { .. } => ErrorCode::FastlyRateLimited,
            CallError::OutOfTime => ErrorCode::TimedOut,
            CallError::Internal(_) => ErrorCode::InternalError,
        }
    }

    pub fn http_status(&self) -> Option<u16> {
        match self {
            CallError::Fastly(err) => err.http_status(),
            CallError::OverBudget { .. } | CallError::OutOfTime | CallError::Internal(_) => None,
        }
    }
}

/// The outcome of a request, with the attempts it took.
#[derive(Debug)]
pub struct Called<T> {
    pub result: Result<T, CallError>,
    /// Requests sent; 0 when the budget allowed none.
    pub attempts: u32,
}

/// Sends Fastly requests within the accounts' budgets.
pub struct Gateway {
    client: FastlyClient,
    metrics: Arc<Metrics>,
    limits: Limits,
    retry: RetryPolicy,
    accounts: std::collections::HashMap<String, Account>,
    /// Deadline of batch requests, which serve several jobs with deadlines of their own.
    batch_budget: Duration,
    /// Wakes the token check when Fastly responds to a request with 401.
    unauthorized: tokio::sync::Notify,
}

impl Gateway {
    pub fn new(
        client: FastlyClient,
        limits: Limits,
        retry: RetryPolicy,
        accounts: impl IntoIterator<Item = Account>,
        batch_budget: Duration,
        metrics: Arc<Metrics>,
    ) -> Gateway {
        Gateway {
            client,
            metrics,
            limits,
            retry,
            accounts: accounts
                .into_iter()
                .map(|account| (account.name().to_owned(), account))
                .collect(),
            batch_budget,
            unauthorized: tokio::sync::Notify::new(),
        }
    }

    pub fn client(&self) -> &FastlyClient {
        &self.client
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Takes `own` of `all` shares of every account's budgets, from the consumer count of the
    /// jobs queue, and logs a change.
    pub fn set_budget_share(&self, own: usize, all: usize) {
        if self.limits.set_share(own, all) {
            tracing::info!(
                consumers = own,
                all_consumers = all,
                "budget share changed: this worker takes its consumers' part of every account's budgets"
            );
        }
    }

    /// Waits for the budget of an account's class.
    pub async fn wait_for_budget(
        &self,
        account: &str,
        class: BudgetClass,
        deadline: Instant,
    ) -> Result<Admission, CallError> {
        let limits = self
            .limits
            .account(account)
            .expect("every configured account has limits");
        limits
            .admit(class, deadline)
            .await
            .map_err(|over| CallError::OverBudget {
                account: account.to_owned(),
                over,
            })
    }

    /// Returns the error to give up with at once when the account's class admits no request
    /// before `deadline`, because of a pause or the spacing of the remaining budget. A job then
    /// does not wait for a budget it cannot get in time.
    pub fn unavailable_past(
        &self,
        account: &str,
        class: BudgetClass,
        deadline: Instant,
    ) -> Option<CallError> {
        let until = self.limits.account(account)?.ready_at(class)?;
        (until > deadline).then(|| CallError::OverBudget {
            account: account.to_owned(),
            over: OverBudget {
                class: class.as_str(),
                wait: until.saturating_duration_since(Instant::now()),
            },
        })
    }

    /// Sends a request with retries. `first` is an admission the caller already holds for the
    /// first attempt; later attempts wait for the budget again. `endpoint` names the request in
    /// logs and metrics.
    ///
    /// Retries stop at the policy's attempts, at a permanent error, or when the next attempt
    /// could not start before `deadline`.
    pub async fn call<T, F, Fut>(
        &self,
        account: &Account,
        class: BudgetClass,
        endpoint: &str,
        deadline: Instant,
        first: Option<Admission>,
        mut request: F,
    ) -> Called<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Reply<T>, FastlyError>>,
    {
        let limits = Arc::clone(
            self.limits
                .account(account.name())
                .expect("every configured account has limits"),
        );
        let mut ceilings = self.retry.ceilings();
        let mut admission = first;
        let mut attempts = 0;
        let mut last_error: Option<FastlyError> = None;
        loop {
            let permit = match admission.take() {
                Some(permit) => permit,
                None => match limits.admit(class, deadline).await {
                    Ok(permit) => permit,
                    Err(over) => {
                        // After a failure, Fastly's own error is more useful to the producer than the budget's.
                        let result = match last_error {
                            Some(err) => Err(CallError::Fastly(err)),
                            None => Err(CallError::OverBudget {
                                account: account.name().to_owned(),
                                over,
                            }),
                        };
                        return Called { result, attempts };
                    }
                },
            };
            self.metrics
                .budget_waited(account.name(), class.as_str(), permit.waited);
            attempts += 1;
            self.metrics.in_flight_changed(account.name(), 1);
            let started = Instant::now();
            // A request still running at the deadline is cut off: the delivery must settle.
            let sent = tokio::time::timeout_at(deadline, request()).await;
            self.metrics.in_flight_changed(account.name(), -1);
            drop(permit);
            let Ok(reply) = sent else {
                self.metrics
                    .fastly_request(endpoint, None, started.elapsed());
                return Called {
                    result: Err(CallError::OutOfTime),
                    attempts,
                };
            };
            let status = match &reply {
                Ok(_) => Some(200),
                Err(err) => err.http_status(),
            };
            self.metrics
                .fastly_request(endpoint, status, started.elapsed());
            self.observe(&limits, class, &reply);
            if status == Some(401) {
                // Wakes a waiting token check only, so the check's own 401 does not wake it
                // again.
                self.unauthorized.notify_waiters();
            }

            let err = match reply {
                Ok(reply) => {
                    return Called {
                        result: Ok(reply.value),
                        attempts,
                    };
                }
                Err(err) => err,
            };
            let delay = match err.class() {
                ErrorClass::Permanent => None,
                // The budget's pause after a 429 delays the next admission, and jitter spreads it.
                ErrorClass::Transient | ErrorClass::RateLimited => ceilings.next().map(full_jitter),
            };
            let Some(delay) = delay.filter(|delay| Instant::now() + *delay < deadline) else {
                return Called {
                    result: Err(CallError::Fastly(err)),
                    attempts,
                };
            };
            self.metrics.fastly_retry(
                account.name(),
                endpoint,
                attempts,
                delay,
                &err,
                err.code().as_str(),
            );
            last_error = Some(err);
            tokio::time::sleep(delay).await;
        }
    }

    /// Feeds a reply's rate-limit headers to the budget and records them.
    fn observe<T>(
        &self,
        limits: &AccountLimits,
        class: BudgetClass,
        reply: &Result<Reply<T>, FastlyError>,
    ) {
        let rate_limit = match reply {
            Ok(reply) => Some(&reply.rate_limit),
            Err(err) => err.rate_limit(),
        };
        if let Some(remaining) = rate_limit.and_then(|limit| limit.remaining) {
            self.metrics
                .rate_limit_remaining(limits.account(), class.as_str(), remaining);
        }
        let paused = limits.observe(class, reply.as_ref().map(|reply| &reply.rate_limit));
        if let Some(pause) = paused {
            let rate_limit = rate_limit.copied().unwrap_or_default();
            self.metrics.rate_limited(
                limits.account(),
                class.as_str(),
                pause,
                rate_limit.remaining,
                rate_limit.reset,
            );
        }
    }

    /// Waits until Fastly responds to some request with 401, as for a revoked or deleted token.
    pub async fn unauthorized(&self) {
        self.unauthorized.notified().await;
    }

    /// Returns the account of a batch queue.
    fn account(&self, name: &str) -> Account {
        self.accounts
            .get(name)
            .cloned()
            .expect("batches are only made for configured accounts")
    }
}

/// The gateway sends the batcher's batches.
impl Dispatch for Arc<Gateway> {
    type Error = CallError;
    type Permit = Option<Admission>;

    fn admit(
        &self,
        queue: &QueueKey,
    ) -> futures_util::future::BoxFuture<'static, Option<Admission>> {
        let gateway = Arc::clone(self);
        let queue = queue.clone();
        Box::pin(async move {
            let class = if queue.write {
                BudgetClass::Write
            } else {
                BudgetClass::Purge
            };
            // Waiting here as long as the budget needs is intended: the batch keeps filling,
            // and jobs whose deadline passes hand themselves to the delay queue.
            let far = Instant::now() + Duration::from_secs(24 * 3600);
            gateway
                .wait_for_budget(&queue.account, class, far)
                .await
                .ok()
        })
    }

    fn internal_error(message: String) -> CallError {
        CallError::Internal(message)
    }

    fn send(
        &self,
        batch: Sealed,
        permit: Option<Admission>,
    ) -> futures_util::future::BoxFuture<'static, Sent<CallError>> {
        let gateway = Arc::clone(self);
        Box::pin(async move {
            let account = gateway.account(&batch.account);
            let deadline = Instant::now() + gateway.batch_budget;
            match batch.kind {
                BatchKind::Keys { soft } => {
                    let called = gateway
                        .call(
                            &account,
                            BudgetClass::Purge,
                            "purge_keys",
                            deadline,
                            permit,
                            || {
                                gateway.client.purge_keys(
                                    &account,
                                    &batch.service,
                                    &batch.keys,
                                    soft,
                                )
                            },
                        )
                        .await;
                    gateway
                        .metrics
                        .batch_sent(batch.keys.len(), called.result.is_ok());
                    Sent::Keys {
                        result: called.result,
                        attempts: called.attempts,
                    }
                }
                BatchKind::PurgeAll => {
                    let called = gateway
                        .call(
                            &account,
                            BudgetClass::Write,
                            "purge_all",
                            deadline,
                            permit,
                            || gateway.client.purge_all(&account, &batch.service),
                        )
                        .await;
                    Sent::PurgeAll {
                        result: called.result,
                        attempts: called.attempts,
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use reqwest::StatusCode;

    use super::*;
    use crate::config::{LimitSettings, QuotaSettings};
    use crate::fastly::RateLimit;

    fn gateway() -> (Gateway, Account) {
        let account = Account::new("a", secrecy::SecretString::from("t".to_owned())).unwrap();
        let quota = QuotaSettings {
            per_hour: 360_000,
            burst: 100,
        };
        let limits = Limits::new(
            ["a"],
            &LimitSettings {
                max_in_flight: 4,
                purge: quota.clone(),
                write: quota.clone(),
                read: quota,
            },
        );
        let client = FastlyClient::new(
            url::Url::parse("http://127.0.0.1:9").unwrap(),
            &crate::config::Settings::defaults().fastly,
        )
        .unwrap();
        let policy = RetryPolicy {
            max_attempts: 4,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
        };
        let gateway = Gateway::new(
            client,
            limits,
            policy,
            [account.clone()],
            Duration::from_secs(5),
            Arc::new(Metrics::new()),
        );
        (gateway, account)
    }

    fn status(code: u16, reset: Option<i64>) -> FastlyError {
        FastlyError::Status {
            status: StatusCode::from_u16(code).unwrap(),
            message: "x".to_owned(),
            rate_limit: RateLimit {
                remaining: Some(0),
                reset,
            },
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    fn ok<T>(value: T) -> Result<Reply<T>, FastlyError> {
        Ok(Reply {
            value,
            rate_limit: RateLimit::default(),
        })
    }

    #[tokio::test]
    async fn transient_errors_retried_until_success() {
        let (gateway, account) = gateway();
        let calls = AtomicU32::new(0);
        let called = gateway
            .call(
                &account,
                BudgetClass::Purge,
                "test",
                far(),
                None,
                || async {
                    if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                        Err(status(503, None))
                    } else {
                        ok("done")
                    }
                },
            )
            .await;
        assert_eq!(called.result.unwrap(), "done");
        assert_eq!(called.attempts, 3);
    }

    #[tokio::test]
    async fn attempts_bounded_by_policy() {
        let (gateway, account) = gateway();
        let called: Called<()> = gateway
            .call(
                &account,
                BudgetClass::Purge,
                "test",
                far(),
                None,
                || async { Err(status(500, None)) },
            )
            .await;
        assert!(called.result.unwrap_err().is_transient());
        assert_eq!(called.attempts, 4);
    }

    #[tokio::test]
    async fn permanent_errors_not_retried() {
        let (gateway, account) = gateway();
        let called: Called<()> = gateway
            .call(
                &account,
                BudgetClass::Purge,
                "test",
                far(),
                None,
                || async { Err(status(403, None)) },
            )
            .await;
        assert_eq!(called.attempts, 1);
        assert!(!called.result.unwrap_err().is_transient());
    }

    #[tokio::test]
    async fn distant_reset_stops_retries_with_fastly_error() {
        let (gateway, account) = gateway();
        let reset = chrono::Utc::now().timestamp() + 3600;
        let called: Called<()> = gateway
            .call(
                &account,
                BudgetClass::Write,
                "test",
                far(),
                None,
                || async { Err(status(429, Some(reset))) },
            )
            .await;
        assert_eq!(
            called.attempts, 1,
            "the pause until the reset outlasts the deadline"
        );
        let err = called.result.unwrap_err();
        assert_eq!(err.http_status(), Some(429));
        assert!(err.is_transient());

        // The class stays paused: the next call sends nothing.
        let next: Called<()> = gateway
            .call(
                &account,
                BudgetClass::Write,
                "test",
                far(),
                None,
                || async { panic!("no request while paused") },
            )
            .await;
        assert_eq!(next.attempts, 0);
        assert!(matches!(next.result, Err(CallError::OverBudget { .. })));
        assert_eq!(
            next.result.unwrap_err().code(),
            ErrorCode::FastlyRateLimited
        );
    }

    #[tokio::test]
    async fn deadline_stops_retries() {
        let (gateway, account) = gateway();
        let soon = Instant::now() + Duration::from_millis(1);
        tokio::time::sleep(Duration::from_millis(2)).await;
        let called: Called<()> = gateway
            .call(&account, BudgetClass::Read, "test", soon, None, || async {
                panic!("no request after the deadline")
            })
            .await;
        assert_eq!(called.attempts, 0);
        assert!(matches!(called.result, Err(CallError::OverBudget { .. })));
    }

    #[tokio::test]
    async fn request_cut_off_at_deadline() {
        let (gateway, account) = gateway();
        let soon = Instant::now() + Duration::from_millis(30);
        let called: Called<()> = gateway
            .call(&account, BudgetClass::Read, "test", soon, None, || async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Err(status(503, None))
            })
            .await;
        assert_eq!(called.attempts, 1);
        assert!(matches!(called.result, Err(CallError::OutOfTime)));
    }
}
