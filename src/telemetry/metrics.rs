//! Metrics and the events behind them. Each event is one method that writes its log line (if
//! any) and moves its counters together, so logs and metrics cannot disagree. Names follow
//! Prometheus conventions: the `fastly_purge_worker_` prefix, units in names, `_total` for
//! counters.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::LogLimiter;
use crate::job::{ResultError, Status};

// Log targets named after what the events are about rather than this module, so that a filter
// such as `RUST_LOG=info,fastly_purge_worker::jobs=debug` reads naturally.
const JOBS_LOG: &str = "fastly_purge_worker::jobs";
const FASTLY_LOG: &str = "fastly_purge_worker::fastly";
const BROKER_LOG: &str = "fastly_purge_worker::broker";

/// Label pairs of a series.
type Labels = Vec<(&'static str, String)>;

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs
        .into_iter()
        .map(|(name, value)| (name, value.to_owned()))
        .collect()
}

fn latency_histogram() -> Histogram {
    // 5 ms to about 80 s: purges take tens of milliseconds, jobs can wait for budgets.
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 80.0,
    ])
}

fn keys_histogram() -> Histogram {
    Histogram::new([
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 192.0, 255.0, 256.0,
    ])
}

/// Every metric of a worker, and the registry that exposes them.
pub struct Metrics {
    registry: Registry,
    jobs_received: Family<Labels, Counter>,
    jobs_completed: Family<Labels, Counter>,
    job_duration: Family<Labels, Histogram, fn() -> Histogram>,
    requests: Family<Labels, Counter>,
    request_duration: Family<Labels, Histogram, fn() -> Histogram>,
    retries: Family<Labels, Counter>,
    rate_limited: Family<Labels, Counter>,
    rate_limit_remaining: Family<Labels, Gauge>,
    budget_wait: Family<Labels, Histogram, fn() -> Histogram>,
    batch_keys: Histogram,
    keys_purged: Counter,
    dead_lettered: Family<Labels, Counter>,
    delayed: Family<Labels, Counter>,
    in_flight: Family<Labels, Gauge>,
    broker_connected: Gauge,
    broker_reconnects: Counter,
    queue_ready: Family<Labels, Gauge>,
    queue_consumers: Family<Labels, Gauge>,
    token_expiry: Family<Labels, Gauge>,
    token_valid: Family<Labels, Gauge>,
    /// Accounts whose token is known to be invalid or expired, for readiness.
    invalid_tokens: Mutex<HashMap<String, String>>,
    log_limiter: LogLimiter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates every metric, registered under the `fastly_purge_worker` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("fastly_purge_worker");
        let metrics = Metrics {
            jobs_received: Family::default(),
            jobs_completed: Family::default(),
            job_duration: Family::new_with_constructor(latency_histogram),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            retries: Family::default(),
            rate_limited: Family::default(),
            rate_limit_remaining: Family::default(),
            budget_wait: Family::new_with_constructor(latency_histogram),
            batch_keys: keys_histogram(),
            keys_purged: Counter::default(),
            dead_lettered: Family::default(),
            delayed: Family::default(),
            in_flight: Family::default(),
            broker_connected: Gauge::default(),
            broker_reconnects: Counter::default(),
            queue_ready: Family::default(),
            queue_consumers: Family::default(),
            token_expiry: Family::default(),
            token_valid: Family::default(),
            invalid_tokens: Mutex::new(HashMap::new()),
            log_limiter: LogLimiter::new(Duration::from_secs(10)),
            registry: Registry::default(),
        };

        // Every job type and status starts at 0, so that a rate() over an idle worker is 0
        // rather than empty, and alerts on a worker that never received a job can fire.
        let types = crate::job::JobType::ALL.map(crate::job::JobType::as_str);
        for job_type in types.into_iter().chain(["unknown"]) {
            drop(
                metrics
                    .jobs_received
                    .get_or_create(&labels([("type", job_type)])),
            );
            for status in [Status::Succeeded, Status::Failed, Status::Rejected] {
                let pair = [("type", job_type), ("status", status.as_str())];
                drop(metrics.jobs_completed.get_or_create(&labels(pair)));
            }
        }

        // Jobs.
        registry.register(
            "jobs_received",
            "Jobs received, by type",
            metrics.jobs_received.clone(),
        );
        registry.register(
            "jobs_completed",
            "Jobs that got their result, by type and status",
            metrics.jobs_completed.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "Time from receiving a job to its result",
            metrics.job_duration.clone(),
        );

        // Fastly requests and budgets.
        registry.register(
            "fastly_requests",
            "Fastly API requests, by endpoint and status class",
            metrics.requests.clone(),
        );
        registry.register(
            "fastly_request_duration_seconds",
            "Duration of Fastly API requests",
            metrics.request_duration.clone(),
        );
        registry.register(
            "fastly_retries",
            "Fastly requests retried in-process",
            metrics.retries.clone(),
        );
        registry.register(
            "fastly_rate_limited",
            "Fastly replies with status 429, by account and budget class",
            metrics.rate_limited.clone(),
        );
        registry.register(
            "rate_limit_remaining",
            "Fastly-RateLimit-Remaining of the last reply that carried it",
            metrics.rate_limit_remaining.clone(),
        );
        registry.register(
            "budget_wait_seconds",
            "Time requests waited for the budget and an in-flight place",
            metrics.budget_wait.clone(),
        );

        // Batches and delivery ends.
        registry.register(
            "batch_keys",
            "Surrogate keys per bulk purge request",
            metrics.batch_keys.clone(),
        );
        registry.register(
            "keys_purged",
            "Surrogate keys purged by bulk requests",
            metrics.keys_purged.clone(),
        );
        registry.register(
            "jobs_dead_lettered",
            "Jobs published to the dead-letter queue, by error code",
            metrics.dead_lettered.clone(),
        );
        registry.register(
            "jobs_delayed",
            "Jobs sent to a delay queue for a later attempt, by error code",
            metrics.delayed.clone(),
        );
        registry.register(
            "fastly_requests_in_flight",
            "Fastly requests in flight, by account",
            metrics.in_flight.clone(),
        );

        // Broker and queues.
        registry.register(
            "broker_connected",
            "1 while a broker session consumes jobs",
            metrics.broker_connected.clone(),
        );
        registry.register(
            "broker_reconnects",
            "Broker sessions opened after a broken one",
            metrics.broker_reconnects.clone(),
        );
        registry.register(
            "queue_messages_ready",
            "Messages ready in the worker's queues (passive declare)",
            metrics.queue_ready.clone(),
        );
        registry.register(
            "queue_consumers",
            "Consumers of the worker's queues (passive declare)",
            metrics.queue_consumers.clone(),
        );

        // Tokens.
        registry.register(
            "token_expiry_timestamp_seconds",
            "When each account's token expires, for tokens that expire",
            metrics.token_expiry.clone(),
        );
        registry.register(
            "token_valid",
            "1 unless the account's token is known to be invalid or expired",
            metrics.token_valid.clone(),
        );

        Metrics {
            registry,
            ..metrics
        }
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    pub fn job_received(&self, job_type: &str) {
        self.jobs_received
            .get_or_create(&labels([("type", job_type)]))
            .inc();
    }

    /// Logs and counts a job that got its result, and observes its duration. Failures and
    /// rejections are logged as warnings, at most once every ten seconds per job type and
    /// error code. Successes are logged only at debug level, because a busy worker finishes
    /// thousands of jobs a second.
    pub fn job_finished(
        &self,
        job_type: &str,
        status: &str,
        error: Option<&ResultError>,
        attempts: u32,
        duration: Duration,
    ) {
        self.jobs_completed
            .get_or_create(&labels([("type", job_type), ("status", status)]))
            .inc();
        self.job_duration
            .get_or_create(&labels([("type", job_type)]))
            .observe(duration.as_secs_f64());
        let elapsed_ms = duration.as_millis() as u64;
        let Some(error) = error else {
            tracing::debug!(target: JOBS_LOG,status, attempts, elapsed_ms, "job finished");
            return;
        };
        let key = format!("job:{job_type}:{status}:{}", error.code);
        if let Some(suppressed) = self.log_limiter.allow(&key) {
            tracing::warn!(target: JOBS_LOG,
                status,
                code = %error.code,
                http_status = error.http_status,
                error = %error.message,
                attempts,
                elapsed_ms,
                similar_not_logged = suppressed,
                "job finished without success"
            );
        }
    }

    /// Counts a Fastly request by endpoint and status class (`2xx`, `4xx`, `429`, `5xx`, or
    /// `error` when no reply came).
    pub fn fastly_request(&self, endpoint: &str, status: Option<u16>, duration: Duration) {
        let class = match status {
            Some(429) => "429".to_owned(),
            Some(code) => format!("{}xx", code / 100),
            None => "error".to_owned(),
        };
        self.requests
            .get_or_create(&labels([("endpoint", endpoint), ("status_class", &class)]))
            .inc();
        self.request_duration
            .get_or_create(&labels([("endpoint", endpoint)]))
            .observe(duration.as_secs_f64());
    }

    /// Logs and counts a request retried in-process. Repeats of the same endpoint and cause
    /// are logged at most once every ten seconds, with the count of the lines left out.
    pub fn fastly_retry(
        &self,
        account: &str,
        endpoint: &str,
        attempt: u32,
        delay: Duration,
        error: &dyn std::fmt::Display,
        cause: &str,
    ) {
        self.retries
            .get_or_create(&labels([("endpoint", endpoint)]))
            .inc();
        if let Some(suppressed) = self.log_limiter.allow(&format!("retry:{endpoint}:{cause}")) {
            tracing::warn!(target: FASTLY_LOG,
                account,
                request = endpoint,
                attempt,
                delay_ms = delay.as_millis() as u64,
                error = %error,
                similar_not_logged = suppressed,
                "Fastly request failed, retrying"
            );
        }
    }

    /// Logs and counts a 429 that paused a budget class.
    pub fn rate_limited(
        &self,
        account: &str,
        class: &str,
        pause: Duration,
        remaining: Option<u64>,
        reset: Option<i64>,
    ) {
        self.rate_limited
            .get_or_create(&labels([("account", account), ("class", class)]))
            .inc();
        if let Some(suppressed) = self.log_limiter.allow(&format!("429:{account}:{class}")) {
            tracing::warn!(target: FASTLY_LOG,
                account,
                class,
                pause_ms = pause.as_millis() as u64,
                remaining,
                reset,
                similar_not_logged = suppressed,
                "Fastly rate limit reached, pausing this budget class"
            );
        }
    }

    pub fn rate_limit_remaining(&self, account: &str, class: &str, remaining: u64) {
        self.rate_limit_remaining
            .get_or_create(&labels([("account", account), ("class", class)]))
            .set(i64::try_from(remaining).unwrap_or(i64::MAX));
    }

    pub fn budget_waited(&self, account: &str, class: &str, waited: Duration) {
        self.budget_wait
            .get_or_create(&labels([("account", account), ("class", class)]))
            .observe(waited.as_secs_f64());
    }

    pub fn in_flight_changed(&self, account: &str, delta: i64) {
        self.in_flight
            .get_or_create(&labels([("account", account)]))
            .inc_by(delta);
    }

    /// Observes the size of a bulk purge request, and its keys once it succeeded.
    pub fn batch_sent(&self, keys: usize, purged: bool) {
        self.batch_keys.observe(keys as f64);
        if purged {
            self.keys_purged.inc_by(keys as u64);
        }
    }

    pub fn dead_lettered(&self, code: &str) {
        self.dead_lettered
            .get_or_create(&labels([("code", code)]))
            .inc();
    }

    /// Logs and counts a job sent to a delay queue, with the error that sent it there.
    pub fn delayed(&self, error: &ResultError, queue: &str, delay: Duration, retries: u32) {
        let code = error.code.as_str();
        self.delayed.get_or_create(&labels([("code", code)])).inc();
        if let Some(suppressed) = self.log_limiter.allow(&format!("delayed:{code}")) {
            tracing::warn!(target: JOBS_LOG,
                queue,
                delay_ms = delay.as_millis() as u64,
                retries,
                code,
                error = %error.message,
                similar_not_logged = suppressed,
                "job not done in this delivery, sent to a delay queue"
            );
        }
    }

    /// Logs and records a broker session that broke.
    pub fn broker_lost(&self, cause: &anyhow::Error) {
        self.broker_connected.set(0);
        tracing::warn!(target: BROKER_LOG,error = %format!("{cause:#}"), "lost the broker session, reconnecting");
    }

    /// Logs a failed reconnection attempt, the first and then every tenth.
    pub fn reconnect_failed(&self, error: &dyn std::fmt::Display, failures: u32) {
        if failures == 1 || failures.is_multiple_of(10) {
            tracing::warn!(target: BROKER_LOG,error = %error, failures, "cannot reconnect to RabbitMQ yet");
        }
    }

    /// Records a consuming session: the first one, or one opened after a broken one.
    pub fn broker_consuming(&self, reconnected: bool, failures: u32) {
        self.broker_connected.set(1);
        if reconnected {
            self.broker_reconnects.inc();
            tracing::info!(target: BROKER_LOG,failures, "reconnected to RabbitMQ, consuming jobs again");
        }
    }

    pub fn queue_depth(&self, queue: &str, ready: u32, consumers: u32) {
        self.queue_ready
            .get_or_create(&labels([("queue", queue)]))
            .set(i64::from(ready));
        self.queue_consumers
            .get_or_create(&labels([("queue", queue)]))
            .set(i64::from(consumers));
    }

    /// Records what Fastly reported about an account's token: its expiry, and whether it
    /// works. `problem` names the reason it does not (expired, rejected by Fastly).
    pub fn token_status(&self, account: &str, expires_at: Option<i64>, problem: Option<&str>) {
        match expires_at {
            Some(at) => {
                self.token_expiry
                    .get_or_create(&labels([("account", account)]))
                    .set(at);
            }
            None => {
                self.token_expiry.remove(&labels([("account", account)]));
            }
        }
        self.token_valid
            .get_or_create(&labels([("account", account)]))
            .set(i64::from(problem.is_none()));
        let mut invalid = self
            .invalid_tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match problem {
            Some(problem) => {
                invalid.insert(account.to_owned(), problem.to_owned());
            }
            None => {
                invalid.remove(account);
            }
        }
    }

    /// Returns why some account's token is known not to work, if one is.
    pub fn token_problem(&self) -> Option<String> {
        let invalid = self
            .invalid_tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        invalid
            .iter()
            .next()
            .map(|(account, problem)| format!("the token of account {account:?} {problem}"))
    }
}
