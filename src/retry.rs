//! Retry policy for Fastly requests: how many attempts a request gets and how long to wait
//! between them. The loop that applies it is in [`crate::gateway`].
//!
//! Delays grow exponentially (backon's schedule) and each actual delay is drawn uniformly from
//! zero to that ceiling ("full jitter"), so that workers that failed together spread out.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::config::RetrySettings;

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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn full_jitter_spreads_over_ceiling() {
        let samples = 1000;
        let total: u128 = (0..samples)
            .map(|_| full_jitter(Duration::from_millis(1000)).as_millis())
            .sum();
        // Uniform over 0..=1000 ms, so the mean is 500 ms, and 150 ms is about 16 standard
        // errors of the mean away from it.
        let mean = total / samples;
        assert!((350..=650).contains(&mean), "mean delay {mean} ms");
    }
}
