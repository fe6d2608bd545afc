//! Control endpoints under `/_sim/` for processes that cannot call the Rust API: the request
//! log, the counters, fault injection, chaos mode, purged keys and reset. They need no token,
//! get no added delay, injected faults or chaos faults, and are neither recorded nor counted.
//!
//! - `GET /_sim/requests`: the request log as a JSON array of [`super::RecordedRequest`].
//! - `GET /_sim/stats`: [`super::SimStats`] as JSON.
//! - `POST /_sim/faults`: queue a [`super::Fault`] given as JSON. `method`, `body`, `headers`
//!   (an array of `[name, value]` pairs) and `times` (default 1) are optional. Without `body`,
//!   the default body and headers of [`super::Fault::status`] are used.
//! - `POST /_sim/chaos`: replace the chaos settings with a [`super::Chaos`] given as JSON, for
//!   example `{"reset_rate": 0.05, "hang_rate": 0.05, "hang_ms": 3000}`. Fields left out are
//!   off, so `{}` turns chaos mode off. Storms are timed from this request.
//! - `GET /_sim/chaos`: the chaos settings in force, as JSON.
//! - `GET /_sim/purged_keys/{service_id}`: every key purged on that service, sorted.
//! - `GET /_sim/purged_urls`: every URL purged, sorted.
//! - `POST /_sim/reset`: clear the log, counters, rate-limit windows, purge log and faults.
//!   The chaos settings stay.

use axum::body::{Body, to_bytes};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::chaos::Chaos;
use super::fault::Fault;
use super::reply::Reply;
use super::state::SimState;

const CONTROL_PREFIX: &str = "/_sim/";
/// Largest body of a control request (a fault or chaos settings).
const MAX_CONTROL_BODY_BYTES: usize = 1024 * 1024;

pub fn is_control_path(path: &str) -> bool {
    path.starts_with(CONTROL_PREFIX)
}

/// JSON form of a fault, with the optional fields left out.
#[derive(Debug, Deserialize)]
struct FaultRequest {
    method: Option<String>,
    path_prefix: String,
    status: u16,
    body: Option<String>,
    headers: Option<Vec<(String, String)>>,
    times: Option<u32>,
}

impl FaultRequest {
    fn into_fault(self) -> Fault {
        let mut fault = Fault::status(&self.path_prefix, self.status, self.times.unwrap_or(1));
        fault.method = self.method;
        if let Some(body) = self.body {
            fault.body = body;
            fault.headers.clear();
        }
        if let Some(headers) = self.headers {
            fault.headers = headers;
        }
        fault
    }
}

pub async fn handle(state: &SimState, parts: &Parts, body: Body) -> Response {
    let path = parts.uri.path();
    let action = &path[CONTROL_PREFIX.len()..];
    let reply = match (&parts.method, action) {
        (&Method::GET, "requests") => Reply::json(StatusCode::OK, &state.requests()),
        (&Method::GET, "stats") => Reply::json(StatusCode::OK, &state.stats()),
        (&Method::GET, "purged_urls") => Reply::json(StatusCode::OK, &state.purged_urls()),
        (&Method::POST, "faults") => add_fault(state, body).await,
        (&Method::GET, "chaos") => Reply::json(StatusCode::OK, state.chaos().chaos()),
        (&Method::POST, "chaos") => set_chaos(state, body).await,
        (&Method::POST, "reset") => {
            state.reset();
            Reply::new(StatusCode::NO_CONTENT, Vec::new())
        }
        (&Method::GET, _) if action.starts_with("purged_keys/") => {
            let service_id = &action["purged_keys/".len()..];
            Reply::json(StatusCode::OK, &state.purged_keys(service_id))
        }
        _ => Reply::not_found(),
    };
    reply.into_response()
}

async fn add_fault(state: &SimState, body: Body) -> Reply {
    let Ok(body) = to_bytes(body, MAX_CONTROL_BODY_BYTES).await else {
        return Reply::bad_request("Fault body is unreadable or larger than 1 MiB");
    };
    let request: FaultRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => return Reply::bad_request(&format!("Invalid fault JSON: {error}")),
    };
    match state.faults.push(request.into_fault()) {
        Ok(()) => Reply::new(StatusCode::NO_CONTENT, Vec::new()),
        Err(error) => Reply::bad_request(&error),
    }
}

async fn set_chaos(state: &SimState, body: Body) -> Reply {
    let Ok(body) = to_bytes(body, MAX_CONTROL_BODY_BYTES).await else {
        return Reply::bad_request("Chaos body is unreadable or larger than 1 MiB");
    };
    let chaos: Chaos = match serde_json::from_slice(&body) {
        Ok(chaos) => chaos,
        Err(error) => return Reply::bad_request(&format!("Invalid chaos JSON: {error}")),
    };
    if let Err(error) = chaos.validate() {
        return Reply::bad_request(&format!("Invalid chaos settings: {error}"));
    }
    tracing::info!(chaos = ?chaos, "Fastly API simulator chaos settings replaced");
    let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    state.set_chaos(chaos, now_ms);
    Reply::new(StatusCode::NO_CONTENT, Vec::new())
}
