//! Retry policy for Fastly requests: how many attempts a request gets and how long to wait
//! between them, and the loop that applies it.
//!
//! Delays grow exponentially (backon's schedule) and each actual delay is drawn uniformly from
//! zero to that ceiling ("full jitter"), so that workers that failed together spread out.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::config::RetrySettings;
use crate::fastly::{ErrorClass, FastlyError};

/// Attempts and delays for one Fastly request.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn from_settings(settings: &RetrySettings) -> RetryPolicy {
        RetryPolicy {
            max_attempts: settings.max_attempts.max(1),
            min_delay: Duration::from_millis(settings.min_delay_ms),
            max_delay: Duration::from_millis(settings.max_delay_ms),
        }
    }

    /// Returns the delay ceilings before each retry: `max_attempts - 1` values.
    pub fn ceilings(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .build()
    }
}

/// Draws a delay uniformly from zero to `ceiling`.
pub fn full_jitter(ceiling: Duration) -> Duration {
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::random_range(0..=millis))
}

/// How a retried request ended.
#[derive(Debug)]
pub struct Attempted<T> {
    pub result: Result<T, FastlyError>,
    /// Attempts made, at least 1.
    pub attempts: u32,
}

/// Runs `request` until it succeeds, fails permanently, or the policy's attempts are used up.
///
/// A 429 is retried only when Fastly's reset time is no further away than the policy's largest
/// delay; otherwise waiting here would only hold the delivery, so the request fails at once.
pub async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    mut request: F,
) -> Attempted<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, FastlyError>>,
{
    let mut ceilings = policy.ceilings();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let err = match request().await {
            Ok(value) => {
                return Attempted {
                    result: Ok(value),
                    attempts,
                };
            }
            Err(err) => err,
        };

        let delay = match err.class() {
            ErrorClass::Permanent => None,
            ErrorClass::Transient => ceilings.next().map(full_jitter),
            ErrorClass::RateLimited => match until_reset(&err) {
                Some(wait) if wait > policy.max_delay => None,
                Some(wait) => ceilings.next().map(|_| wait),
                None => ceilings.next().map(full_jitter),
            },
        };
        let Some(delay) = delay else {
            return Attempted {
                result: Err(err),
                attempts,
            };
        };
        tracing::warn!(
            request = what,
            attempt = attempts,
            delay_ms = delay.as_millis() as u64,
            error = %err,
            "Fastly request failed, retrying"
        );
        tokio::time::sleep(delay).await;
    }
}

/// Returns the time until the rate-limit window of a 429 reply resets, if Fastly said.
fn until_reset(err: &FastlyError) -> Option<Duration> {
    let reset = err.rate_limit()?.reset?;
    let now = chrono::Utc::now().timestamp();
    Some(Duration::from_secs(u64::try_from(reset - now).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use reqwest::StatusCode;

    use super::*;
    use crate::fastly::RateLimit;

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(8),
        }
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

    #[test]
    fn ceilings_double_up_to_max() {
        let policy = RetryPolicy {
            max_attempts: 6,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
        };
        let ceilings: Vec<u128> = policy.ceilings().map(|d| d.as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 500, 500]);
    }

    #[test]
    fn full_jitter_stays_within_ceiling() {
        for _ in 0..1000 {
            assert!(full_jitter(Duration::from_millis(50)) <= Duration::from_millis(50));
        }
        assert_eq!(full_jitter(Duration::ZERO), Duration::ZERO);
    }

    #[tokio::test]
    async fn transient_errors_retried_until_success() {
        let calls = AtomicU32::new(0);
        let outcome = with_retries(&policy(5), "test", || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(status(503, None))
            } else {
                Ok("done")
            }
        })
        .await;
        assert_eq!(outcome.result.unwrap(), "done");
        assert_eq!(outcome.attempts, 3);
    }

    #[tokio::test]
    async fn attempts_bounded() {
        let outcome: Attempted<()> =
            with_retries(&policy(3), "test", || async { Err(status(500, None)) }).await;
        assert!(outcome.result.is_err());
        assert_eq!(outcome.attempts, 3);
    }

    #[tokio::test]
    async fn permanent_errors_not_retried() {
        let outcome: Attempted<()> =
            with_retries(&policy(5), "test", || async { Err(status(403, None)) }).await;
        assert_eq!(outcome.attempts, 1);
    }

    #[tokio::test]
    async fn rate_limit_with_distant_reset_not_retried() {
        let reset = chrono::Utc::now().timestamp() + 3600;
        let outcome: Attempted<()> = with_retries(&policy(5), "test", || async {
            Err(status(429, Some(reset)))
        })
        .await;
        assert_eq!(outcome.attempts, 1);
    }

    #[tokio::test]
    async fn rate_limit_without_reset_backs_off() {
        let outcome: Attempted<()> =
            with_retries(&policy(3), "test", || async { Err(status(429, None)) }).await;
        assert_eq!(outcome.attempts, 3);
    }
}
