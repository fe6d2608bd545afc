//! Local Fastly API simulator for tests, `--simulate` runs, docker-compose setups and
//! benchmarks.
//!
//! This module owns the simulator, an HTTP server for the Fastly API endpoints that the purge
//! worker uses: key, URL and purge_all purges, and service and account reads. Its replies are
//! shaped like recorded Fastly traffic. The module also owns the simulator's state: seeded
//! services, tokens and accounts, rate limits, the request log and counters, injected faults,
//! chaos mode, and the `/_sim/` control endpoints. Chaos mode ([`Chaos`]) mixes random 5xx
//! replies, connection resets, hangs, slow replies and 429 storms into the traffic. The
//! module does not contain the worker or any Fastly client.
//! The simulator only listens and never opens a connection to any host.
//!
//! Start one with [`Simulator::start`] on `127.0.0.1:0`, point the Fastly client at
//! [`Simulator::base_url`], and inspect [`Simulator::requests`], [`Simulator::stats`] and
//! [`Simulator::purged_keys`] afterwards.

mod account_routes;
mod accounts;
mod catalog;
mod chaos;
mod config;
mod control;
mod fault;
mod handler;
mod ids;
mod limits;
mod model;
mod purge;
mod record;
mod reply;
mod routes;
mod server;
mod services;
mod state;
mod tokens;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use chaos::{AfterHang, Chaos, ChaosKind, ChaosStats, Storm};
pub use config::{DEFAULT_CUSTOMER_ID, DEFAULT_TOKEN, DEFAULT_USER_ID, SimConfig, SimToken};
pub use fault::Fault;
pub use record::{RecordedRequest, SimStats};

use state::SimState;

/// Maximum wait in [`Simulator::stop`] for open connections to finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Handle to a running simulator. Dropping it, or calling [`Simulator::stop`], shuts the
/// server down.
#[derive(Debug)]
pub struct Simulator {
    state: Arc<SimState>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl Simulator {
    /// Binds `listen` (port 0 picks a free port) and starts serving in a Tokio task.
    ///
    /// Returns an `InvalidInput` error for an invalid config (an error rate outside 0.0..=1.0,
    /// invalid chaos settings, a zero window or an empty token), or the bind error.
    pub async fn start(listen: SocketAddr, config: SimConfig) -> io::Result<Simulator> {
        config
            .validate()
            .map_err(|message| io::Error::new(io::ErrorKind::InvalidInput, message))?;
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SimState::new(&config, addr, now_ms()));

        let (shutdown, shutdown_signal) = oneshot::channel::<()>();
        let server = tokio::spawn(server::serve(listener, Arc::clone(&state), async {
            // A dropped sender also ends the wait, so dropping the handle stops the server.
            let _ = shutdown_signal.await;
        }));
        tracing::info!(
            %addr,
            services = config.services,
            tokens = config.tokens.len(),
            "Fastly API simulator started"
        );
        let chaos = config.effective_chaos();
        if chaos.is_active() {
            tracing::info!(%addr, ?chaos, "Fastly API simulator chaos mode is on");
        }

        Ok(Simulator {
            state,
            addr,
            shutdown: Some(shutdown),
            server: Some(server),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns `http://IP:PORT`, with 127.0.0.1 (or ::1) in place of an unspecified address.
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// Returns the recorded requests in arrival order, at most `request_log_limit` of them.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests()
    }

    /// Returns the recorded requests whose path, query included, equals `path`, in arrival order.
    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        let mut requests = self.state.requests();
        requests.retain(|request| request.path == path);
        requests
    }

    /// Empties the request log. The counters keep their values.
    pub fn clear_requests(&self) {
        self.state.clear_requests();
    }

    /// Clears the request log, the counters, the rate-limit windows, the purge log and the
    /// pending faults, like `POST /_sim/reset`.
    pub fn reset(&self) {
        self.state.reset();
    }

    pub fn stats(&self) -> SimStats {
        self.state.stats()
    }

    /// Returns every surrogate key purged on the service, hard or soft, since start or reset.
    pub fn purged_keys(&self, service_id: &str) -> BTreeSet<String> {
        self.state.purged_keys(service_id)
    }

    /// Returns every URL purged since start or reset, as `host/path?query` exactly as sent.
    pub fn purged_urls(&self) -> BTreeSet<String> {
        self.state.purged_urls()
    }

    /// Returns the seeded service ids in the default list order (oldest first).
    pub fn service_ids(&self) -> Vec<String> {
        self.state.catalog.service_ids()
    }

    /// Queues a scripted reply for the next `fault.times` matching requests.
    ///
    /// # Panics
    /// Panics when the fault's status is outside 100..=999 or a header name or value is
    /// invalid, because such a fault can never be sent.
    pub fn inject(&self, fault: Fault) {
        if let Err(message) = self.state.faults.push(fault) {
            panic!("{message}");
        }
    }

    pub fn set_latency(&self, latency: Duration) {
        self.state.set_latency(latency);
    }

    /// Sets the fraction of authenticated requests that get a random 5xx reply, clamped to
    /// 0.0..=1.0. The same as `chaos.error_rate`: the other chaos settings are kept.
    pub fn set_error_rate(&self, rate: f64) {
        self.state.chaos().set_error_rate(rate);
    }

    /// Replaces the chaos settings, like `POST /_sim/chaos`. Storms are timed from now, and a
    /// seed restarts the random sequence. `Chaos::default()` turns chaos mode off.
    ///
    /// # Panics
    /// Panics when the settings are invalid (see [`Chaos::validate`]), because a test that
    /// passes them has a bug.
    pub fn set_chaos(&self, chaos: Chaos) {
        if let Err(message) = chaos.validate() {
            panic!("invalid chaos settings: {message}");
        }
        self.state.set_chaos(chaos, now_ms());
    }

    /// Returns the chaos settings in force, with the error rate of [`Simulator::set_error_rate`].
    pub fn chaos(&self) -> Chaos {
        self.state.chaos().chaos().clone()
    }

    /// Stops accepting connections and waits up to 5 s for open ones to finish their request
    /// in progress, then aborts the server task. Hanging requests of chaos mode end at once
    /// without a reply, and delayed replies are sent without the rest of their delay.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let Some(mut server) = self.server.take() else {
            return;
        };
        if tokio::time::timeout(STOP_TIMEOUT, &mut server)
            .await
            .is_err()
        {
            tracing::warn!(
                addr = %self.addr,
                "Fastly API simulator connections still open after 5 s, aborting the server task"
            );
            server.abort();
        }
        tracing::info!(addr = %self.addr, "Fastly API simulator stopped");
    }
}

/// Returns the current time in Unix milliseconds.
fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}
