//! Simulator settings: the API tokens it accepts, the seeded account size, injected delay and
//! chaos faults, and the rate limits it enforces.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::chaos::Chaos;

/// Token value accepted by [`SimConfig::default`].
pub const DEFAULT_TOKEN: &str = "sim-global-token";
/// User that owns tokens built by [`SimToken::global`] and [`SimToken::with_scopes`].
pub const DEFAULT_USER_ID: &str = "2Hq7wLx5TbKcN0mVr8YdFa";
/// Customer (account) of that user, and the owner of the seeded services.
pub const DEFAULT_CUSTOMER_ID: &str = "6nPz3JeQsW9uGtB1kXoRvM";

/// Settings of one simulator instance.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Accepted API tokens. The first token's customer owns the seeded services.
    pub tokens: Vec<SimToken>,
    /// Number of seeded services.
    pub services: usize,
    /// Delay added before every Fastly API reply.
    pub latency: Duration,
    /// Fraction (0.0..=1.0) of authenticated requests that get a random 500, 502 or 503 reply.
    /// The same setting as `chaos.error_rate`, kept for older callers: set one of the two.
    pub error_rate: f64,
    /// Chaos faults in force from the start: random 5xx replies, resets, hangs, slow replies
    /// and 429 storms. All off by default. Storms are timed from the simulator's start.
    pub chaos: Chaos,
    /// Write requests (every non-GET/HEAD request except key and URL purges) accepted per
    /// rate-limit window per user. Fastly's default is 1,000 per hour.
    pub write_limit: u32,
    /// Surrogate keys and URLs purged per rate-limit window per customer.
    pub purge_limit: u32,
    /// Length of a rate-limit window. Windows are consecutive multiples of this length since
    /// the Unix epoch, so 3600 s gives UTC hours.
    pub window: Duration,
    /// Maximum number of recorded requests kept. Older ones are dropped, but the counters in
    /// [`super::SimStats`] keep counting.
    pub request_log_limit: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            tokens: vec![SimToken::global(DEFAULT_TOKEN)],
            services: 3,
            latency: Duration::ZERO,
            error_rate: 0.0,
            chaos: Chaos::default(),
            write_limit: 1000,
            purge_limit: 100_000,
            window: Duration::from_secs(3600),
            request_log_limit: 100_000,
        }
    }
}

impl SimConfig {
    /// Checks the settings that would make the simulator misbehave.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(format!(
                "error_rate {} is invalid: expected a fraction between 0.0 and 1.0",
                self.error_rate
            ));
        }
        if self.error_rate > 0.0
            && self.chaos.error_rate > 0.0
            && self.error_rate != self.chaos.error_rate
        {
            return Err(format!(
                "error_rate {} and chaos.error_rate {} differ: set only one of them",
                self.error_rate, self.chaos.error_rate
            ));
        }
        self.chaos
            .validate()
            .map_err(|message| format!("chaos: {message}"))?;
        if self.window.as_millis() == 0 {
            return Err("window is invalid: expected at least 1 ms".to_string());
        }
        for token in &self.tokens {
            if token.token.is_empty() {
                return Err(
                    "a token value is empty: every SimToken needs a Fastly-Key value".into(),
                );
            }
        }
        Ok(())
    }

    /// Returns the chaos settings with `error_rate` folded in when `chaos.error_rate` is unset.
    pub(crate) fn effective_chaos(&self) -> Chaos {
        let mut chaos = self.chaos.clone();
        if chaos.error_rate == 0.0 {
            chaos.error_rate = self.error_rate;
        }
        chaos
    }
}

/// One API token as Fastly stores it: the `Fastly-Key` value, its scopes and its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimToken {
    /// The `Fastly-Key` header value.
    pub token: String,
    /// Scopes such as `global`, `global:read`, `purge_select` and `purge_all`.
    pub scopes: Vec<String>,
    /// Service ids the token is limited to. An empty list means every service.
    pub services: Vec<String>,
    /// Expiry time. Requests with an expired token get 401.
    pub expires_at: Option<DateTime<Utc>>,
    /// Owner of the token. Write limits are counted per user.
    pub user_id: String,
    /// Account of the owner. Purge limits are counted per customer.
    pub customer_id: String,
}

impl SimToken {
    /// Builds a never-expiring `global` token for every service, owned by [`DEFAULT_USER_ID`].
    pub fn global(token: &str) -> Self {
        Self::with_scopes(token, &["global"])
    }

    /// Builds a never-expiring token with the given scopes for every service, owned by
    /// [`DEFAULT_USER_ID`].
    pub fn with_scopes(token: &str, scopes: &[&str]) -> Self {
        Self {
            token: token.to_string(),
            scopes: scopes.iter().map(|scope| scope.to_string()).collect(),
            services: Vec::new(),
            expires_at: None,
            user_id: DEFAULT_USER_ID.to_string(),
            customer_id: DEFAULT_CUSTOMER_ID.to_string(),
        }
    }
}
