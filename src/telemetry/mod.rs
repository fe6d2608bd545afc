//! Telemetry: logging setup, the metrics with the events that move them, and the endpoint
//! that serves metrics and health. Logs go to standard error, as text or as JSON lines.

mod metrics;
mod server;

pub use metrics::Metrics;
pub use server::TelemetryServer;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{LogFormat, LogSettings};

/// Installs the global log subscriber. `RUST_LOG`, when set, overrides the configured filter.
pub fn init_logging(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // A closed stderr (a log pipe whose reader died) must not panic the tasks that log, or
    // the one that handles shutdown signals.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .log_internal_errors(false)
        .with_span_events(FmtSpan::NONE);
    let installed = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second call (tests, or `run` after `check`) keeps the first subscriber.
    let _ = installed;
}

/// A filter that lets a log line through at most once per interval and key and counts the
/// suppressed ones, so a fault repeated thousands of times does not flood the log.
pub struct LogLimiter {
    interval: Duration,
    last: Mutex<HashMap<String, (Instant, u64)>>,
}

impl LogLimiter {
    /// Number of distinct keys above which keys not logged within the interval are forgotten.
    /// Keys logged within the interval stay, so the map can hold more while many faults repeat.
    const MAX_KEYS: usize = 1024;

    pub fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Returns the number of lines suppressed since the last one was logged, when this one may
    /// be logged. Returns `None` when it must be suppressed.
    pub fn allow(&self, key: &str) -> Option<u64> {
        let now = Instant::now();
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((logged_at, suppressed)) = last.get_mut(key) {
            if now.duration_since(*logged_at) < self.interval {
                *suppressed += 1;
                return None;
            }
            let count = *suppressed;
            *logged_at = now;
            *suppressed = 0;
            return Some(count);
        }
        if last.len() >= Self::MAX_KEYS {
            let interval = self.interval;
            last.retain(|_, (at, _)| now.duration_since(*at) < interval);
        }
        last.insert(key.to_owned(), (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_suppressed_and_counted() {
        let limiter = LogLimiter::new(Duration::from_millis(50));
        assert_eq!(limiter.allow("a"), Some(0));
        assert_eq!(limiter.allow("a"), None);
        assert_eq!(limiter.allow("a"), None);
        assert_eq!(limiter.allow("b"), Some(0), "other keys are independent");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(limiter.allow("a"), Some(2));
    }

    #[test]
    fn metrics_render_with_prefix_and_units() {
        let metrics = Metrics::new();
        metrics.job_received("purge_keys");
        metrics.job_finished(
            "purge_keys",
            "succeeded",
            None,
            1,
            Duration::from_millis(120),
        );
        metrics.fastly_request("purge_keys", Some(200), Duration::from_millis(20));
        metrics.fastly_request("purge_all", Some(429), Duration::from_millis(20));
        metrics.fastly_request("tokens_self", None, Duration::from_millis(20));
        let text = metrics.render();
        assert!(
            text.contains("fastly_purge_worker_jobs_received_total{type=\"purge_keys\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("fastly_purge_worker_job_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains("status_class=\"2xx\""), "{text}");
        assert!(text.contains("status_class=\"429\""), "{text}");
        assert!(text.contains("status_class=\"error\""), "{text}");
    }

    #[test]
    fn token_problems_make_readiness_fail_until_fixed() {
        let metrics = Metrics::new();
        assert_eq!(metrics.token_problem(), None);
        metrics.token_status("shop", Some(1), Some("expired"));
        assert!(metrics.token_problem().unwrap().contains("shop"));
        metrics.token_status("shop", None, None);
        assert_eq!(metrics.token_problem(), None);
    }
}
