//! Rate budgets: one governor limiter per account and budget class (key and URL purges,
//! writes, reads), the pause after a 429 and the write spacing derived from Fastly's
//! rate-limit headers, and the cap on requests in flight per account.
//!
//! Fastly limits writes per user per hour (1,000 by default) and counts key and URL purges
//! against a separate, larger budget; reads are not limited. Every Fastly request passes
//! [`AccountLimits::admit`] before it is sent and reports its reply to
//! [`AccountLimits::observe`]. This module does not depend on jobs.

mod pacer;

pub use pacer::Pacer;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::{LimitSettings, QuotaSettings};
use crate::fastly::{FastlyError, RateLimit};

/// Budget classes. Fastly counts each against a budget of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetClass {
    /// Surrogate-key and URL purges.
    Purge,
    /// purge_all and other non-GET requests: the hourly write limit per user.
    Write,
    /// GET requests. Fastly does not limit them; the worker still paces them politely.
    Read,
}

impl BudgetClass {
    pub const ALL: [BudgetClass; 3] = [BudgetClass::Purge, BudgetClass::Write, BudgetClass::Read];

    pub fn as_str(self) -> &'static str {
        match self {
            BudgetClass::Purge => "purge",
            BudgetClass::Write => "write",
            BudgetClass::Read => "read",
        }
    }

    fn index(self) -> usize {
        match self {
            BudgetClass::Purge => 0,
            BudgetClass::Write => 1,
            BudgetClass::Read => 2,
        }
    }
}

/// Permission to send one request; holding it takes one of the account's in-flight places.
#[derive(Debug)]
pub struct Admission {
    _in_flight: OwnedSemaphorePermit,
    /// Time spent waiting for the budget and an in-flight place.
    pub waited: Duration,
}

/// The budget would allow the request only after the caller's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the {class} budget allows no request before the deadline; earliest in {wait:?}")]
pub struct OverBudget {
    pub class: &'static str,
    /// How long until the budget allows a request.
    pub wait: Duration,
}

/// The budgets of one account.
#[derive(Debug)]
pub struct AccountLimits {
    account: String,
    in_flight: Arc<Semaphore>,
    classes: [ClassLimit; 3],
}

#[derive(Debug)]
struct ClassLimit {
    /// Replaced as a whole when the quota changes, because a governor quota is fixed. The
    /// burst of its quota is kept with it, to carry the unspent part over to the next one.
    limiter: Mutex<(Arc<DefaultDirectRateLimiter>, u32)>,
    pacer: Mutex<Pacer>,
}

impl AccountLimits {
    pub fn new(account: &str, settings: &LimitSettings) -> AccountLimits {
        let class = |quota: &QuotaSettings| ClassLimit {
            limiter: Mutex::new((
                Arc::new(RateLimiter::direct(governor_quota(quota))),
                quota.burst.max(1),
            )),
            pacer: Mutex::new(Pacer::default()),
        };
        AccountLimits {
            account: account.to_owned(),
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight.max(1) as usize)),
            classes: [
                class(&settings.purge),
                class(&settings.write),
                class(&settings.read),
            ],
        }
    }

    fn class(&self, class: BudgetClass) -> &ClassLimit {
        &self.classes[class.index()]
    }

    /// Replaces a class's quota, for example with this worker's share of the account's budget.
    ///
    /// A new governor limiter starts with its whole burst, so the unspent part of the old one
    /// is carried over in proportion: a limiter that had spent half its burst starts the new
    /// quota with half of the new burst. A quota change then never grants a second burst.
    pub fn set_quota(&self, class: BudgetClass, quota: &QuotaSettings) {
        let new_burst = quota.burst.max(1);
        let limiter = Arc::new(RateLimiter::direct(governor_quota(quota)));
        let mut current = lock(&self.class(class).limiter);
        let (old, old_burst) = &*current;
        // Counting what the old limiter would still admit spends it, which does not matter
        // because it is being replaced.
        let mut unspent: u64 = 0;
        while unspent < u64::from(*old_burst) && old.check().is_ok() {
            unspent += 1;
        }
        let keep = unspent * u64::from(new_burst) / u64::from(*old_burst);
        let spend = u64::from(new_burst).saturating_sub(keep);
        if let Some(spend) = NonZeroU32::new(u32::try_from(spend).unwrap_or(new_burst)) {
            // A fresh limiter has its whole burst available, and spend is at most that burst.
            let spent = limiter.check_n(spend);
            debug_assert!(matches!(spent, Ok(Ok(()))), "{spent:?}");
        }
        *current = (limiter, new_burst);
    }

    /// Waits until the class's budget and an in-flight place allow one request.
    ///
    /// Fails without sending when `deadline` has passed, or as soon as it is clear that the
    /// budget would allow the request only after `deadline`: the caller then hands the job back
    /// rather than hold its delivery. The pause and spacing are checked again once an in-flight
    /// place is free, so requests that queued for a place do not go out after a 429.
    pub async fn admit(
        &self,
        class: BudgetClass,
        deadline: Instant,
    ) -> Result<Admission, OverBudget> {
        let started = Instant::now();
        let limit = self.class(class);
        let over = |at: Instant| OverBudget {
            class: class.as_str(),
            wait: at.saturating_duration_since(Instant::now()),
        };
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(over(now));
            }
            let ready_at = lock(&limit.pacer).ready_at(now);
            if let Some(at) = ready_at {
                if at > deadline {
                    return Err(over(at));
                }
                tokio::time::sleep_until(at).await;
                continue;
            }

            let permit =
                tokio::time::timeout_at(deadline, Arc::clone(&self.in_flight).acquire_owned())
                    .await
                    .map_err(|_| over(deadline))?
                    .expect("the in-flight semaphore is never closed");
            // The wait for a place may have outlasted a 429 that arrived meanwhile.
            let now = Instant::now();
            if lock(&limit.pacer).ready_at(now).is_some() {
                drop(permit);
                continue;
            }
            // Checked under the lock, so that a quota change cannot drain this limiter between
            // the lookup and the check.
            let checked = lock(&limit.limiter).0.check();
            match checked {
                Ok(()) => {
                    lock(&limit.pacer).started(now);
                    return Ok(Admission {
                        _in_flight: permit,
                        waited: started.elapsed(),
                    });
                }
                Err(not_until) => {
                    drop(permit);
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    if now + wait > deadline {
                        return Err(over(now + wait));
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Learns from a reply: rate-limit headers adjust the spacing of the class, a 429 pauses
    /// the class until Fastly's reset time, while the other classes keep going. Returns the
    /// pause a 429 caused, for the caller to log and count.
    pub fn observe(
        &self,
        class: BudgetClass,
        reply: Result<&RateLimit, &FastlyError>,
    ) -> Option<Duration> {
        let now = Instant::now();
        let limit = self.class(class);
        match reply {
            Ok(rate_limit) => {
                self.observe_headers(limit, rate_limit, now);
                None
            }
            Err(err) => {
                let rate_limit = err.rate_limit()?;
                if err.http_status() == Some(429) {
                    Some(lock(&limit.pacer).observe_rate_limited(until_reset(rate_limit), now))
                } else {
                    self.observe_headers(limit, rate_limit, now);
                    None
                }
            }
        }
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    fn observe_headers(&self, limit: &ClassLimit, rate_limit: &RateLimit, now: Instant) {
        if let (Some(remaining), Some(until_reset)) =
            (rate_limit.remaining, until_reset(rate_limit))
        {
            lock(&limit.pacer).observe_budget(remaining, until_reset, now);
        }
    }

    /// Returns when a paused class resumes, if it is paused.
    pub fn paused_until(&self, class: BudgetClass) -> Option<Instant> {
        lock(&self.class(class).pacer).paused_until(Instant::now())
    }

    /// Returns when the class admits its next request, if not now: the end of a pause, or the
    /// spacing that spreads the remaining budget.
    pub fn ready_at(&self, class: BudgetClass) -> Option<Instant> {
        lock(&self.class(class).pacer).ready_at(Instant::now())
    }
}

/// Returns the time until the reset in a rate-limit reply. A reset that is not in the future
/// (clock skew, or a reply at the turn of the hour) counts as absent, so a 429 with it still
/// pauses, with the growing pause for replies without a reset.
fn until_reset(rate_limit: &RateLimit) -> Option<Duration> {
    let reset = rate_limit.reset?;
    let now = chrono::Utc::now().timestamp();
    u64::try_from(reset - now)
        .ok()
        .filter(|seconds| *seconds > 0)
        .map(Duration::from_secs)
}

/// Locks a mutex, taking it over if a panic poisoned it: the values here (a pacer, a limiter)
/// stay consistent between statements.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Returns `own / all` of `value`, rounded down so that the shares of all workers add up to no
/// more than `value`, and at least 1, so a small burst still admits a request.
///
/// NOTE: when the queue has more consumers than `value` has units (a burst of 20 shared by 30
/// single-consumer workers), the minimum of 1 lets the workers together exceed `value`.
fn scaled(value: u32, own: usize, all: usize) -> u32 {
    let scaled = u64::from(value) * own as u64 / all as u64;
    u32::try_from(scaled).unwrap_or(u32::MAX).max(1)
}

fn governor_quota(settings: &QuotaSettings) -> Quota {
    let per_hour = NonZeroU32::new(settings.per_hour.max(1)).expect("at least 1");
    let burst = NonZeroU32::new(settings.burst.max(1)).expect("at least 1");
    // One request per (3600 s / per_hour), with up to `burst` at once.
    let period = Duration::from_secs(3600) / per_hour.get();
    Quota::with_period(period.max(Duration::from_nanos(1)))
        .expect("the period is positive")
        .allow_burst(burst)
}

/// The budgets of every account.
#[derive(Debug, Default)]
pub struct Limits {
    accounts: HashMap<String, Arc<AccountLimits>>,
    settings: Option<LimitSettings>,
    share: Mutex<Share>,
    /// How long a larger share waits before it applies (see [`Limits::set_share`]).
    growth_delay: Duration,
}

/// The share of the budgets last applied, and since when a larger one has been seen.
#[derive(Debug)]
struct Share {
    /// This process's consumers.
    own: usize,
    /// All consumers of the jobs queue, this process's included.
    all: usize,
    larger_since: Option<Instant>,
}

impl Default for Share {
    fn default() -> Share {
        Share {
            own: 1,
            all: 1,
            larger_since: None,
        }
    }
}

impl Limits {
    pub fn new<'a>(
        accounts: impl IntoIterator<Item = &'a str>,
        settings: &LimitSettings,
    ) -> Limits {
        Limits {
            accounts: accounts
                .into_iter()
                .map(|name| {
                    (
                        name.to_owned(),
                        Arc::new(AccountLimits::new(name, settings)),
                    )
                })
                .collect(),
            settings: Some(settings.clone()),
            share: Mutex::new(Share::default()),
            growth_delay: Duration::ZERO,
        }
    }

    /// Makes a larger share wait `delay` before it applies: the shutdown timeout of the
    /// workers, during which a peer that left the queue may still send its last requests.
    pub fn with_share_growth_delay(mut self, delay: Duration) -> Limits {
        self.growth_delay = delay;
        self
    }

    /// Gives this process `own` of `all` shares of every configured budget: several workers
    /// on one queue then stay within the account's limits together, with no coordination
    /// beyond the consumer count of the queue. Returns whether the share changed.
    ///
    /// Each limiter keeps the unspent part of its burst in proportion (see
    /// [`AccountLimits::set_quota`]), so a peer that joins or leaves refills no burst.
    ///
    /// A smaller share applies at once. A larger one applies only once it has been seen for
    /// the growth delay: its consumers left because their worker is stopping or died, and a
    /// stopping worker still sends requests for its last jobs until its shutdown timeout.
    pub fn set_share(&self, own: usize, all: usize) -> bool {
        let own = own.max(1);
        let all = all.max(own);
        // Held until the quotas are applied, so that two changes at once apply in the order
        // in which they were stored.
        let mut share = lock(&self.share);
        // Compared as fractions: 4 of 4 consumers is the same share as 1 of 1.
        let (proposed, current) = (own * share.all, share.own * all);
        if proposed == current {
            share.larger_since = None;
            return false;
        }
        if proposed > current {
            let now = Instant::now();
            let since = *share.larger_since.get_or_insert(now);
            if now < since + self.growth_delay {
                return false;
            }
        }
        *share = Share {
            own,
            all,
            larger_since: None,
        };

        let Some(settings) = &self.settings else {
            return false;
        };
        let scale = |quota: &QuotaSettings| QuotaSettings {
            per_hour: scaled(quota.per_hour, own, all),
            burst: scaled(quota.burst, own, all),
        };
        let fraction = own as f64 / all as f64;
        for limits in self.accounts.values() {
            for (class, quota) in [
                (BudgetClass::Purge, &settings.purge),
                (BudgetClass::Write, &settings.write),
                (BudgetClass::Read, &settings.read),
            ] {
                limits.set_quota(class, &scale(quota));
                lock(&limits.class(class).pacer).set_share(fraction);
            }
        }
        true
    }

    pub fn account(&self, name: &str) -> Option<&Arc<AccountLimits>> {
        self.accounts.get(name)
    }
}

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    fn settings(per_hour: u32, burst: u32) -> LimitSettings {
        let quota = QuotaSettings { per_hour, burst };
        LimitSettings {
            max_in_flight: 2,
            purge: quota.clone(),
            write: quota.clone(),
            read: quota,
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    /// Builds a 429 whose reset is `reset_in` seconds from now.
    fn too_many_requests(reset_in: i64) -> FastlyError {
        FastlyError::Status {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "hourly limit".to_owned(),
            rate_limit: RateLimit {
                remaining: Some(0),
                reset: Some(chrono::Utc::now().timestamp() + reset_in),
            },
        }
    }

    #[test]
    fn until_reset_counts_from_now() {
        let now = chrono::Utc::now().timestamp();
        let ahead = RateLimit {
            remaining: Some(0),
            reset: Some(now + 100),
        };
        let wait = until_reset(&ahead).unwrap();
        assert!(
            (Duration::from_secs(99)..=Duration::from_secs(100)).contains(&wait),
            "{wait:?}"
        );
        let past = RateLimit {
            remaining: Some(0),
            reset: Some(now - 1),
        };
        assert_eq!(until_reset(&past), None);
    }

    #[tokio::test]
    async fn burst_admitted_then_over_budget() {
        let limits = AccountLimits::new("a", &settings(3600, 2));
        let first = limits.admit(BudgetClass::Purge, far()).await.unwrap();
        let second = limits.admit(BudgetClass::Purge, far()).await.unwrap();
        drop((first, second));
        // One per second after the burst, so a deadline 100 ms away cannot be met.
        let soon = Instant::now() + Duration::from_millis(100);
        let over = limits.admit(BudgetClass::Purge, soon).await.unwrap_err();
        assert_eq!(over.class, "purge");
        assert!(over.wait > Duration::from_millis(500), "{over:?}");
    }

    #[tokio::test]
    async fn rate_limit_pauses_only_its_class() {
        let limits = AccountLimits::new("a", &settings(360_000, 100));
        let too_many = too_many_requests(600);
        limits.observe(BudgetClass::Write, Err(&too_many));

        assert!(limits.paused_until(BudgetClass::Write).is_some());
        let soon = Instant::now() + Duration::from_millis(50);
        let over = limits.admit(BudgetClass::Write, soon).await.unwrap_err();
        assert!(over.wait > Duration::from_secs(500), "{over:?}");
        assert!(limits.admit(BudgetClass::Purge, soon).await.is_ok());
        assert!(limits.admit(BudgetClass::Read, soon).await.is_ok());
    }

    #[tokio::test]
    async fn headers_spread_remaining_writes() {
        let limits = AccountLimits::new("a", &settings(360_000, 100));
        let reset = chrono::Utc::now().timestamp() + 100;
        let headers = RateLimit {
            remaining: Some(10),
            reset: Some(reset),
        };
        limits.observe(BudgetClass::Write, Ok(&headers));
        let first = limits.admit(BudgetClass::Write, far()).await.unwrap();
        drop(first);
        // About 10 s between writes now, so a second write within a second is over budget.
        let soon = Instant::now() + Duration::from_secs(1);
        let over = limits.admit(BudgetClass::Write, soon).await.unwrap_err();
        assert!(over.wait > Duration::from_secs(5), "{over:?}");
    }

    #[tokio::test]
    async fn passed_deadline_admits_nothing() {
        let limits = AccountLimits::new("a", &settings(360_000, 100));
        let past = Instant::now() - Duration::from_secs(1);
        assert!(limits.admit(BudgetClass::Read, past).await.is_err());
    }

    #[tokio::test]
    async fn waiting_requests_respect_new_pause() {
        let limits = Arc::new(AccountLimits::new("a", &settings(360_000, 100)));
        let first = limits.admit(BudgetClass::Write, far()).await.unwrap();
        // Two (the cap) are in flight; a third waits for a place.
        let second = limits.admit(BudgetClass::Write, far()).await.unwrap();
        let waiting = {
            let limits = Arc::clone(&limits);
            tokio::spawn(async move {
                let soon = Instant::now() + Duration::from_millis(300);
                limits.admit(BudgetClass::Write, soon).await.map(|_| ())
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let too_many = too_many_requests(600);
        limits.observe(BudgetClass::Write, Err(&too_many));
        drop((first, second));
        assert!(
            waiting.await.unwrap().is_err(),
            "no write goes out during the pause"
        );
    }

    #[tokio::test]
    async fn rate_limit_with_past_reset_still_pauses() {
        let limits = AccountLimits::new("a", &settings(360_000, 100));
        let stale = too_many_requests(-30);
        limits.observe(BudgetClass::Write, Err(&stale));
        assert!(limits.paused_until(BudgetClass::Write).is_some());
    }

    #[test]
    fn share_scales_quotas_down_to_one() {
        assert_eq!(scaled(1000, 1, 3), 333);
        assert_eq!(scaled(20, 1, 3), 6);
        assert_eq!(scaled(1, 1, 4), 1, "a budget never drops to zero");
        assert_eq!(scaled(1000, 2, 2), 1000);
    }

    #[test]
    fn shares_add_up_to_no_more_than_budget() {
        for all in 1..=40usize {
            for own in [1, 4] {
                let workers = all / own;
                if workers == 0 {
                    continue;
                }
                let per_hour: u32 = (0..workers).map(|_| scaled(1000, own, all)).sum();
                assert!(per_hour <= 1000, "{workers} workers of {own}: {per_hour}");
                if own * 20 >= all {
                    // Each share of the burst is at least one whole unit.
                    let burst: u32 = (0..workers).map(|_| scaled(20, own, all)).sum();
                    assert!(burst <= 20, "{workers} workers of {own}: burst {burst}");
                }
            }
        }
    }

    #[tokio::test]
    async fn shared_burst_admits_only_its_part() {
        let limits = Limits::new(["a"], &settings(3600, 9));
        assert!(limits.set_share(1, 3));
        assert!(!limits.set_share(1, 3), "the same share changes nothing");
        let account = limits.account("a").unwrap();
        let soon = Instant::now() + Duration::from_millis(100);
        for _ in 0..3 {
            drop(account.admit(BudgetClass::Write, soon).await.unwrap());
        }
        assert!(
            account.admit(BudgetClass::Write, soon).await.is_err(),
            "a third of a burst of 9"
        );
    }

    #[tokio::test]
    async fn share_change_carries_unspent_burst() {
        let limits = Limits::new(["a"], &settings(3600, 8));
        let account = limits.account("a").unwrap();
        // A worker alone spends half its burst, then a peer joins.
        assert!(
            !limits.set_share(4, 4),
            "4 of 4 is the whole budget, as before"
        );
        for _ in 0..4 {
            drop(account.admit(BudgetClass::Write, far()).await.unwrap());
        }
        assert!(limits.set_share(4, 8));

        // Half of the new burst of 4 is left: 2 now, and the next one a period (2 s) later.
        for _ in 0..2 {
            drop(account.admit(BudgetClass::Write, far()).await.unwrap());
        }
        let soon = Instant::now() + Duration::from_millis(500);
        let over = account.admit(BudgetClass::Write, soon).await.unwrap_err();
        assert!(over.wait > Duration::from_secs(1), "{over:?}");
    }

    #[tokio::test]
    async fn share_changes_refill_no_burst() {
        let limits = Limits::new(["a"], &settings(3600, 8));
        let account = limits.account("a").unwrap();
        for _ in 0..8 {
            drop(account.admit(BudgetClass::Write, far()).await.unwrap());
        }

        // Peers join and leave: each new share keeps the burst spent.
        assert!(limits.set_share(4, 8));
        assert!(limits.set_share(4, 7));
        assert!(limits.set_share(4, 5));

        let soon = Instant::now() + Duration::from_millis(500);
        let over = account.admit(BudgetClass::Write, soon).await.unwrap_err();
        assert!(over.wait > Duration::from_millis(600), "{over:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn larger_share_waits_growth_delay() {
        let limits =
            Limits::new(["a"], &settings(3600, 8)).with_share_growth_delay(Duration::from_secs(30));
        assert!(limits.set_share(4, 8), "a smaller share applies at once");

        assert!(
            !limits.set_share(4, 4),
            "a peer left, and may still be stopping"
        );
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!limits.set_share(4, 4));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limits.set_share(4, 4), "after the peers' shutdown timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn unchanged_share_restarts_growth_delay() {
        let limits =
            Limits::new(["a"], &settings(3600, 8)).with_share_growth_delay(Duration::from_secs(30));
        assert!(limits.set_share(4, 8));
        assert!(!limits.set_share(4, 4));
        tokio::time::advance(Duration::from_secs(20)).await;
        // The peer came back: the larger share is no longer pending.
        assert!(!limits.set_share(4, 8));
        tokio::time::advance(Duration::from_secs(20)).await;

        assert!(!limits.set_share(4, 4), "the delay starts again");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(limits.set_share(4, 4));
    }

    #[tokio::test]
    async fn in_flight_capped() {
        let limits = AccountLimits::new("a", &settings(360_000, 100));
        let first = limits.admit(BudgetClass::Read, far()).await.unwrap();
        let second = limits.admit(BudgetClass::Purge, far()).await.unwrap();
        let soon = Instant::now() + Duration::from_millis(30);
        assert!(limits.admit(BudgetClass::Write, soon).await.is_err());
        drop(first);
        let later = Instant::now() + Duration::from_millis(30);
        assert!(limits.admit(BudgetClass::Write, later).await.is_ok());
        drop(second);
    }

    #[test]
    fn rate_limit_pause_ends_at_reset() {
        let limits = AccountLimits::new("a", &settings(360_000, 100));
        let too_many = too_many_requests(600);
        let pause = limits.observe(BudgetClass::Write, Err(&too_many)).unwrap();
        assert!(pause <= Duration::from_secs(600), "{pause:?}");
        assert!(pause >= Duration::from_secs(599), "{pause:?}");
    }

    #[tokio::test]
    async fn share_spreads_only_own_part_of_remaining() {
        let limits = Limits::new(["a"], &settings(360_000, 100));
        assert!(limits.set_share(1, 4));
        let account = limits.account("a").unwrap();
        let headers = RateLimit {
            remaining: Some(100),
            reset: Some(chrono::Utc::now().timestamp() + 100),
        };
        account.observe(BudgetClass::Write, Ok(&headers));
        drop(account.admit(BudgetClass::Write, far()).await.unwrap());

        // A quarter of 100 requests over about 100 s: about 4 s apart, not 1 s.
        let next = account.ready_at(BudgetClass::Write).unwrap();
        assert!(next - Instant::now() > Duration::from_secs(3), "{next:?}");
    }
}
