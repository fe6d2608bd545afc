//! Fixed-window rate limits: API writes per user and key/URL purges per customer.
//!
//! A window is `[k * window, (k + 1) * window)` in Unix time, so a 3600 s window is a UTC hour
//! and its reset is the top of the next hour, as in Fastly's `Fastly-RateLimit-Reset` header.

use std::collections::HashMap;
use std::time::Duration;

/// Outcome of charging a request to a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Charged. `remaining` is what is left in the window after this request.
    Accepted { remaining: u32, reset: i64 },
    /// Over the limit, so nothing was charged.
    Rejected { reset: i64 },
}

#[derive(Debug, Clone, Copy)]
struct WindowCount {
    window: u64,
    used: u32,
}

/// Usage counters for the current window of every user and customer.
#[derive(Debug)]
pub struct Limiter {
    write_limit: u32,
    purge_limit: u32,
    window_ms: u64,
    writes: HashMap<String, WindowCount>,
    purges: HashMap<String, WindowCount>,
    /// Write requests per user and window, rejected ones included.
    write_requests: HashMap<String, WindowCount>,
    max_write_requests_in_window: u32,
}

impl Limiter {
    pub fn new(write_limit: u32, purge_limit: u32, window: Duration) -> Self {
        Self {
            write_limit,
            purge_limit,
            window_ms: (window.as_millis() as u64).max(1),
            writes: HashMap::new(),
            purges: HashMap::new(),
            write_requests: HashMap::new(),
            max_write_requests_in_window: 0,
        }
    }

    /// Charges one write to `user_id` at `now_ms` (Unix time in milliseconds).
    pub fn try_write(&mut self, user_id: &str, now_ms: u64) -> Decision {
        // Counted before the limit applies, so a client that overruns the limit shows here
        // even though the rejected requests are not charged.
        if let Decision::Accepted { remaining, .. } = charge(
            &mut self.write_requests,
            user_id,
            1,
            u32::MAX,
            self.window_ms,
            now_ms,
        ) {
            let requests = u32::MAX - remaining;
            self.max_write_requests_in_window = self.max_write_requests_in_window.max(requests);
        }
        charge(
            &mut self.writes,
            user_id,
            1,
            self.write_limit,
            self.window_ms,
            now_ms,
        )
    }

    /// Charges `count` purged keys or URLs to `customer_id`. A request that does not fit in
    /// what is left of the window is rejected whole.
    pub fn try_purge(&mut self, customer_id: &str, count: u32, now_ms: u64) -> Decision {
        charge(
            &mut self.purges,
            customer_id,
            count,
            self.purge_limit,
            self.window_ms,
            now_ms,
        )
    }

    /// Returns the highest number of write requests, rejected ones included, from one user in
    /// one window.
    pub fn max_write_requests_in_window(&self) -> u32 {
        self.max_write_requests_in_window
    }

    pub fn clear(&mut self) {
        self.writes.clear();
        self.purges.clear();
        self.write_requests.clear();
        self.max_write_requests_in_window = 0;
    }
}

fn charge(
    counts: &mut HashMap<String, WindowCount>,
    owner: &str,
    cost: u32,
    limit: u32,
    window_ms: u64,
    now_ms: u64,
) -> Decision {
    let window = now_ms / window_ms;
    let reset = reset_epoch_seconds(window, window_ms);

    let count = match counts.get_mut(owner) {
        Some(count) => count,
        None => counts
            .entry(owner.to_string())
            .or_insert(WindowCount { window, used: 0 }),
    };
    if count.window != window {
        *count = WindowCount { window, used: 0 };
    }

    let Some(used) = count.used.checked_add(cost).filter(|used| *used <= limit) else {
        return Decision::Rejected { reset };
    };
    count.used = used;
    Decision::Accepted {
        remaining: limit - used,
        reset,
    }
}

/// Returns the end of `window` in Unix seconds, rounded up for windows shorter than a second.
fn reset_epoch_seconds(window: u64, window_ms: u64) -> i64 {
    let end_ms = (window + 1) * window_ms;
    end_ms.div_ceil(1000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn hourly_window_resets_at_top_of_hour() {
        let mut limiter = Limiter::new(2, 10, HOUR);
        // 2021-11-03T17:09:51Z, the time of a recorded purge_all reply with reset 1635962400.
        let now_ms = 1_635_959_391_000;

        assert_eq!(
            limiter.try_write("user", now_ms),
            Decision::Accepted {
                remaining: 1,
                reset: 1_635_962_400
            }
        );
        assert_eq!(
            limiter.try_write("user", now_ms),
            Decision::Accepted {
                remaining: 0,
                reset: 1_635_962_400
            }
        );
        assert_eq!(
            limiter.try_write("user", now_ms),
            Decision::Rejected {
                reset: 1_635_962_400
            }
        );
        assert_eq!(limiter.max_write_requests_in_window(), 3);
    }

    #[test]
    fn next_window_starts_empty() {
        let mut limiter = Limiter::new(1, 10, HOUR);
        let now_ms = 1_635_959_391_000;

        limiter.try_write("user", now_ms);

        assert!(matches!(
            limiter.try_write("user", now_ms + 3_600_000),
            Decision::Accepted { remaining: 0, .. }
        ));
        assert!(matches!(
            limiter.try_write("other-user", now_ms),
            Decision::Accepted { remaining: 0, .. }
        ));
        assert_eq!(limiter.max_write_requests_in_window(), 1);
    }

    #[test]
    fn purge_batch_over_budget_is_rejected_whole() {
        let mut limiter = Limiter::new(1, 10, HOUR);

        assert!(matches!(
            limiter.try_purge("customer", 8, 0),
            Decision::Accepted { remaining: 2, .. }
        ));
        assert!(matches!(
            limiter.try_purge("customer", 3, 0),
            Decision::Rejected { reset: 3600 }
        ));
        assert!(matches!(
            limiter.try_purge("customer", 2, 0),
            Decision::Accepted { remaining: 0, .. }
        ));
    }

    #[test]
    fn short_window_reset_rounds_up() {
        let mut limiter = Limiter::new(1, 10, Duration::from_millis(250));

        assert_eq!(
            limiter.try_write("user", 1_000_100),
            Decision::Accepted {
                remaining: 0,
                reset: 1001
            }
        );
    }
}
