//! State that every request of one simulator reads or updates: the fixed account data, the
//! adjustable delay and chaos settings, and the locked counters and logs.
//!
//! Each lock guards one concern and is held only for a few map or queue operations, never
//! across an `.await`.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::accounts::Accounts;
use super::catalog::Catalog;
use super::chaos::{Chaos, ChaosDice};
use super::config::{DEFAULT_CUSTOMER_ID, SimConfig};
use super::fault::FaultQueue;
use super::ids::PurgeIds;
use super::limits::Limiter;
use super::record::{Outcome, RecordedRequest, Recorder, SimStats};
use super::tokens::TokenTable;

/// Node number in purge ids, like the cache node number in Fastly's.
const PURGE_ID_NODE: u32 = 4151;

/// Everything that was purged, by service id for surrogate keys.
#[derive(Debug, Default)]
pub struct PurgeLog {
    keys: HashMap<String, BTreeSet<String>>,
    urls: BTreeSet<String>,
}

#[derive(Debug)]
pub struct SimState {
    pub tokens: TokenTable,
    pub accounts: Accounts,
    pub catalog: Catalog,
    pub purge_ids: PurgeIds,
    pub faults: FaultQueue,
    /// Address the server listens on, used for `Link` headers when a request has no Host.
    pub local_addr: SocketAddr,
    latency_micros: AtomicU64,
    chaos: Mutex<ChaosDice>,
    limiter: Mutex<Limiter>,
    recorder: Mutex<Recorder>,
    purge_log: Mutex<PurgeLog>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain counters behind, which are still
    // usable, so a poisoned lock is taken over instead of failing every later request.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SimState {
    /// Builds the state. `started_at_ms` is the start time in Unix milliseconds: purge ids
    /// and storms are timed from it.
    pub fn new(config: &SimConfig, local_addr: SocketAddr, started_at_ms: u64) -> Self {
        let owner = config
            .tokens
            .first()
            .map_or(DEFAULT_CUSTOMER_ID, |token| token.customer_id.as_str());
        let state = Self {
            tokens: TokenTable::new(&config.tokens),
            accounts: Accounts::new(&config.tokens),
            catalog: Catalog::new(config.services, owner),
            purge_ids: PurgeIds::new(PURGE_ID_NODE, (started_at_ms / 1000) as i64),
            faults: FaultQueue::default(),
            local_addr,
            latency_micros: AtomicU64::new(0),
            chaos: Mutex::new(ChaosDice::new(config.effective_chaos(), started_at_ms)),
            limiter: Mutex::new(Limiter::new(
                config.write_limit,
                config.purge_limit,
                config.window,
            )),
            recorder: Mutex::new(Recorder::new(config.request_log_limit)),
            purge_log: Mutex::new(PurgeLog::default()),
        };
        state.set_latency(config.latency);
        state
    }

    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_micros.load(Ordering::Relaxed))
    }

    pub fn set_latency(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_micros.store(micros, Ordering::Relaxed);
    }

    /// Locks the chaos settings and their random source. Hold the guard only for draws.
    pub fn chaos(&self) -> MutexGuard<'_, ChaosDice> {
        lock(&self.chaos)
    }

    /// Replaces the chaos settings, which take effect at `now_ms` (Unix milliseconds).
    pub fn set_chaos(&self, chaos: Chaos, now_ms: u64) {
        *lock(&self.chaos) = ChaosDice::new(chaos, now_ms);
    }

    pub fn limiter(&self) -> MutexGuard<'_, Limiter> {
        lock(&self.limiter)
    }

    pub fn record(&self, request: RecordedRequest, outcome: Outcome) {
        lock(&self.recorder).record(request, outcome);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.recorder).requests()
    }

    pub fn clear_requests(&self) {
        lock(&self.recorder).clear_requests();
    }

    pub fn stats(&self) -> SimStats {
        let mut stats = lock(&self.recorder).stats();
        stats.max_write_requests_in_window = self.limiter().max_write_requests_in_window();
        stats
    }

    pub fn add_purged_keys<'k>(&self, service_id: &str, keys: impl IntoIterator<Item = &'k str>) {
        let mut purge_log = lock(&self.purge_log);
        let purged = match purge_log.keys.get_mut(service_id) {
            Some(purged) => purged,
            None => purge_log.keys.entry(service_id.to_string()).or_default(),
        };
        for key in keys {
            if !purged.contains(key) {
                purged.insert(key.to_string());
            }
        }
    }

    pub fn add_purged_url(&self, url: &str) {
        let mut purge_log = lock(&self.purge_log);
        if !purge_log.urls.contains(url) {
            purge_log.urls.insert(url.to_string());
        }
    }

    pub fn purged_keys(&self, service_id: &str) -> BTreeSet<String> {
        lock(&self.purge_log)
            .keys
            .get(service_id)
            .cloned()
            .unwrap_or_default()
    }

    pub fn purged_urls(&self) -> BTreeSet<String> {
        lock(&self.purge_log).urls.clone()
    }

    /// Clears the request log, the counters, the rate-limit windows, the purge log and the
    /// pending faults.
    pub fn reset(&self) {
        lock(&self.recorder).clear();
        self.limiter().clear();
        *lock(&self.purge_log) = PurgeLog::default();
        self.faults.clear();
    }
}
