//! Pacing state of one budget class of one account: a pause after a 429, and the spacing of
//! writes derived from Fastly's rate-limit headers. Pure arithmetic on instants, so it is
//! tested without clocks or HTTP.

use std::time::Duration;

use tokio::time::Instant;

/// Maximum pause after a 429 that carried no reset time. Repeated 429s double the pause up to it.
pub const MAX_BLIND_PAUSE: Duration = Duration::from_secs(60);
/// First pause after a 429 without a reset time.
pub const FIRST_BLIND_PAUSE: Duration = Duration::from_secs(1);

/// When the next request of a class may start.
#[derive(Debug, Clone, Default)]
pub struct Pacer {
    /// No request before this instant: set by a 429.
    paused_until: Option<Instant>,
    /// Spacing between requests that spreads the remaining budget over the rest of the window.
    interval: Option<Duration>,
    /// Start of the previous request, for the spacing.
    last_start: Option<Instant>,
    /// 429s in a row without a reset time, for the growing pause.
    blind_429s: u32,
    /// This process's share of the account's budget, from 0 (exclusive) to 1. The headers show
    /// what is left for every worker of the account, so each spreads only its share of it.
    share: Option<f64>,
}

impl Pacer {
    /// Returns when the next request may start, or `None` if it may start now.
    pub fn ready_at(&self, now: Instant) -> Option<Instant> {
        let paused = self.paused_until.filter(|until| *until > now);
        let spaced = match (self.last_start, self.interval) {
            (Some(last), Some(interval)) => Some(last + interval).filter(|at| *at > now),
            _ => None,
        };
        match (paused, spaced) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (one, other) => one.or(other),
        }
    }

    /// Records that a request starts now.
    pub fn started(&mut self, now: Instant) {
        self.last_start = Some(now);
    }

    /// Adjusts the spacing from a reply's `Fastly-RateLimit-Remaining` and the time left until
    /// `Fastly-RateLimit-Reset`: the remaining requests are spread evenly over that time.
    pub fn observe_budget(&mut self, remaining: u64, until_reset: Duration, now: Instant) {
        self.blind_429s = 0;
        if remaining == 0 {
            self.paused_until = Some(now + until_reset);
            return;
        }
        let ours = (remaining as f64 * self.share.unwrap_or(1.0)).max(1.0);
        self.interval = Some(until_reset.div_f64(ours));
    }

    /// Pauses the class after a 429: until the reset time when Fastly gave one, else for a
    /// pause that doubles with each 429 in a row. Returns the pause.
    pub fn observe_rate_limited(
        &mut self,
        until_reset: Option<Duration>,
        now: Instant,
    ) -> Duration {
        let pause = match until_reset {
            Some(wait) => {
                self.blind_429s = 0;
                wait
            }
            None => {
                let doubling = 1u32 << self.blind_429s.min(16);
                self.blind_429s = self.blind_429s.saturating_add(1);
                (FIRST_BLIND_PAUSE * doubling).min(MAX_BLIND_PAUSE)
            }
        };
        let until = now + pause;
        self.paused_until = Some(self.paused_until.map_or(until, |at| at.max(until)));
        pause
    }

    /// Returns the end of the current pause, if the class is paused.
    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.paused_until.filter(|until| *until > now)
    }

    /// Sets this process's share of the budget that the headers report.
    pub fn set_share(&mut self, share: f64) {
        self.share = Some(share.clamp(f64::MIN_POSITIVE, 1.0));
    }

    /// Returns the current spacing between requests, if the headers set one.
    pub fn interval(&self) -> Option<Duration> {
        self.interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn fresh_pacer_is_ready() {
        let now = Instant::now();
        assert_eq!(Pacer::default().ready_at(now), None);
    }

    #[test]
    fn budget_spread_over_window() {
        let now = Instant::now();
        let mut pacer = Pacer::default();
        pacer.observe_budget(100, secs(1000), now);
        assert_eq!(pacer.interval(), Some(secs(10)));
        pacer.started(now);
        assert_eq!(pacer.ready_at(now), Some(now + secs(10)));
        assert_eq!(pacer.ready_at(now + secs(10)), None);
    }

    #[test]
    fn share_of_remaining_budget_spread() {
        let now = Instant::now();
        let mut pacer = Pacer::default();
        pacer.set_share(0.25);
        pacer.observe_budget(100, secs(1000), now);
        assert_eq!(
            pacer.interval(),
            Some(secs(40)),
            "a quarter of 100 over 1000 s"
        );
    }

    #[test]
    fn zero_remaining_pauses_until_reset() {
        let now = Instant::now();
        let mut pacer = Pacer::default();
        pacer.observe_budget(0, secs(300), now);
        assert_eq!(pacer.paused_until(now), Some(now + secs(300)));
        assert_eq!(pacer.ready_at(now + secs(299)), Some(now + secs(300)));
        assert_eq!(pacer.ready_at(now + secs(300)), None);
    }

    #[test]
    fn rate_limited_with_reset_pauses_until_it() {
        let now = Instant::now();
        let mut pacer = Pacer::default();
        let pause = pacer.observe_rate_limited(Some(secs(42)), now);
        assert_eq!(pause, secs(42));
        assert_eq!(pacer.ready_at(now), Some(now + secs(42)));
    }

    #[test]
    fn rate_limited_without_reset_doubles_to_cap() {
        let now = Instant::now();
        let mut pacer = Pacer::default();
        let pauses: Vec<Duration> = (0..9)
            .map(|_| pacer.observe_rate_limited(None, now))
            .collect();
        assert_eq!(pauses[0], FIRST_BLIND_PAUSE);
        assert_eq!(pauses[1], FIRST_BLIND_PAUSE * 2);
        assert_eq!(pauses[2], FIRST_BLIND_PAUSE * 4);
        assert_eq!(*pauses.last().unwrap(), MAX_BLIND_PAUSE);
        assert!(pauses.windows(2).all(|pair| pair[0] <= pair[1]));
    }

    #[test]
    fn later_pause_never_shortens_earlier_one() {
        let now = Instant::now();
        let mut pacer = Pacer::default();
        pacer.observe_rate_limited(Some(secs(100)), now);
        pacer.observe_rate_limited(Some(secs(5)), now);
        assert_eq!(pacer.paused_until(now), Some(now + secs(100)));
    }
}
