//! Request pipeline for Fastly API paths: chaos mode's connection faults, authentication,
//! scope checks, injected faults, 429 storms, random failures, rate limits, the endpoint
//! itself, recording and the added delay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::to_bytes;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};

use super::account_routes;
use super::chaos::{AfterHang, ChaosKind, ConnectionFault};
use super::control;
use super::limits::Decision;
use super::purge;
use super::record::{Outcome, RecordedRequest};
use super::reply::Reply;
use super::routes::Route;
use super::server::{Abort, ConnectionHandle};
use super::services;
use super::state::SimState;
use super::tokens::{Authentication, TokenRecord};

/// Largest request body read. A bulk purge of 256 keys of 1024 bytes needs about 270 KiB.
const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Everything an endpoint handler may read about the request.
pub struct RequestContext<'a> {
    pub state: &'a SimState,
    pub token: &'a TokenRecord,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    pub now: DateTime<Utc>,
    /// `now` in Unix milliseconds, for the rate-limit windows.
    pub now_ms: u64,
    pub peer: Option<SocketAddr>,
}

impl RequestContext<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// Serves every request: `/_sim/` control paths go to [`control`], all others through the
/// Fastly pipeline with chaos mode's connection faults around it.
///
/// A request that gets no reply (a reset, or a hang that ends in a close) is recorded with
/// status 0, and its response future never finishes: the connection's task drops it together
/// with the connection.
pub async fn handle(state: Arc<SimState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if control::is_control_path(parts.uri.path()) {
        return control::handle(&state, &parts, body).await;
    }
    let connection = parts
        .extensions
        .get::<ConnectionHandle>()
        .cloned()
        .expect("the server puts a ConnectionHandle into every request");

    let body = match to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(error) => {
            tracing::warn!(
                path = %parts.uri.path(),
                %error,
                "failed to read request body, replying 413"
            );
            let reply = Reply::msg(StatusCode::PAYLOAD_TOO_LARGE, "Request entity too large");
            state.record(
                recorded_request(&parts, &[], reply.status.as_u16(), Vec::new()),
                Outcome::default(),
            );
            return delayed(&state, &connection, reply, Duration::ZERO).await;
        }
    };

    let fault = state.chaos().connection_fault();
    match fault {
        Some(ConnectionFault::Reset) => {
            record_without_reply(&state, &parts, &body, ChaosKind::Reset);
            end_without_reply(&connection, Abort::Reset).await
        }
        Some(ConnectionFault::Hang {
            hold,
            then: AfterHang::Close,
        }) => {
            record_without_reply(&state, &parts, &body, ChaosKind::Hang);
            connection.wait_unless_closing(hold).await;
            end_without_reply(&connection, Abort::Close).await
        }
        Some(ConnectionFault::Hang {
            hold,
            then: AfterHang::Reply,
        }) => {
            let reply =
                process_and_record(&state, &parts, &body, &connection, Some(ChaosKind::Hang));
            if !connection.wait_unless_closing(hold).await {
                return end_without_reply(&connection, Abort::Close).await;
            }
            delayed(&state, &connection, reply, Duration::ZERO).await
        }
        Some(ConnectionFault::Slow { delay }) => {
            let reply =
                process_and_record(&state, &parts, &body, &connection, Some(ChaosKind::Slow));
            delayed(&state, &connection, reply, delay).await
        }
        None => {
            let reply = process_and_record(&state, &parts, &body, &connection, None);
            delayed(&state, &connection, reply, Duration::ZERO).await
        }
    }
}

/// Runs the Fastly pipeline and records the request with the status of its reply.
fn process_and_record(
    state: &SimState,
    parts: &Parts,
    body: &[u8],
    connection: &ConnectionHandle,
    connection_fault: Option<ChaosKind>,
) -> Reply {
    let (reply, outcome) = process(state, parts, body, connection.peer);
    let chaos = connection_fault.into_iter().chain(outcome.chaos).collect();
    state.record(
        recorded_request(parts, body, reply.status.as_u16(), chaos),
        outcome,
    );
    reply
}

fn record_without_reply(state: &SimState, parts: &Parts, body: &[u8], kind: ChaosKind) {
    state.record(
        recorded_request(parts, body, NO_REPLY, vec![kind]),
        Outcome::default(),
    );
}

/// Requests that the connection end without a reply, and waits for the connection's task to
/// drop this future.
async fn end_without_reply(connection: &ConnectionHandle, how: Abort) -> Response {
    connection.abort(how);
    std::future::pending().await
}

/// Sends the reply after the simulator's latency plus `extra`. While the server shuts down,
/// the reply goes without the wait.
async fn delayed(
    state: &SimState,
    connection: &ConnectionHandle,
    reply: Reply,
    extra: Duration,
) -> Response {
    let delay = state.latency() + extra;
    if !delay.is_zero() {
        connection.wait_unless_closing(delay).await;
    }
    reply.into_response()
}

/// Status recorded for a request that got no reply.
const NO_REPLY: u16 = 0;

fn recorded_request(
    parts: &Parts,
    body: &[u8],
    status: u16,
    chaos: Vec<ChaosKind>,
) -> RecordedRequest {
    let mut token = None;
    let mut headers = Vec::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if name == "fastly-key" {
            token = Some(value);
        } else {
            headers.push((name.as_str().to_string(), value));
        }
    }
    RecordedRequest {
        method: parts.method.as_str().to_string(),
        path: path_and_query(parts).to_string(),
        token,
        headers,
        body: body.to_vec(),
        status,
        chaos,
    }
}

fn path_and_query(parts: &Parts) -> &str {
    parts.uri.path_and_query().map_or_else(
        || parts.uri.path(),
        |path_and_query| path_and_query.as_str(),
    )
}

fn process(state: &SimState, parts: &Parts, body: &[u8], peer: SocketAddr) -> (Reply, Outcome) {
    let now = Utc::now();
    let now_ms = u64::try_from(now.timestamp_millis()).unwrap_or(0);
    let fastly_key = parts
        .headers
        .get("fastly-key")
        .and_then(|value| value.to_str().ok());

    let token = match state.tokens.authenticate(fastly_key, now) {
        Authentication::Valid(token) => token,
        Authentication::Invalid => return (Reply::unauthorized(), Outcome::default()),
    };
    let route = Route::parse(&parts.method, parts.uri.path(), parts.uri.query());
    if let Some(reply) = check_access(&token, &route) {
        return (reply, Outcome::default());
    }

    // Every request other than GET, HEAD and key or URL purges is a write.
    let is_read = parts.method == Method::GET || parts.method == Method::HEAD;
    let is_purge = route.is_key_or_url_purge();
    let is_write = !is_read && !is_purge;

    // Injected faults, storms and random failures replace the reply once the token is
    // accepted, and are not charged to any limit.
    if let Some(reply) = state
        .faults
        .take(parts.method.as_str(), path_and_query(parts))
    {
        return (reply, Outcome::default());
    }
    let chaos_reply = {
        let mut chaos = state.chaos();
        match chaos.storm_reply(now_ms, is_write, is_purge) {
            Some(reply) => Some((reply, ChaosKind::Storm)),
            None => chaos
                .server_error()
                .map(|reply| (reply, ChaosKind::ServerError)),
        }
    };
    if let Some((reply, kind)) = chaos_reply {
        let outcome = Outcome {
            chaos: Some(kind),
            ..Outcome::default()
        };
        return (reply, outcome);
    }

    // A write is charged before the endpoint runs, so a write that then fails (400, 404)
    // still counts.
    let mut outcome = Outcome::default();
    let mut rate_limit = None;
    if is_write {
        match state.limiter().try_write(token.user_id(), now_ms) {
            Decision::Accepted { remaining, reset } => {
                outcome.write_charged = true;
                rate_limit = Some((remaining, reset));
            }
            Decision::Rejected { reset } => return (Reply::rate_limited(reset), outcome),
        }
    }

    let context = RequestContext {
        state,
        token: &token,
        headers: &parts.headers,
        query: parts.uri.query(),
        body,
        now,
        now_ms,
        peer: Some(peer),
    };
    let (mut reply, endpoint_outcome) = dispatch(&context, route);
    outcome.purge_succeeded = endpoint_outcome.purge_succeeded;
    outcome.keys_purged = endpoint_outcome.keys_purged;

    if let Some((remaining, reset)) = rate_limit {
        reply.set_rate_limit(remaining, reset);
    }
    (reply, outcome)
}

/// Returns a 403 reply when the token lacks the route's scope or is limited to other services.
fn check_access(token: &TokenRecord, route: &Route) -> Option<Reply> {
    let scope = route.scope()?;
    if !token.grants(scope) {
        let detail = format!(
            "This request requires a token with the '{}' or 'global' scope",
            scope.name()
        );
        return Some(Reply::legacy_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &detail,
        ));
    }
    if let Some(service_id) = route.service_id()
        && !token.allows_service(service_id)
    {
        let detail = format!("This token is not authorized for service '{service_id}'");
        return Some(Reply::legacy_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &detail,
        ));
    }
    None
}

fn dispatch(context: &RequestContext, route: Route) -> (Reply, Outcome) {
    let read = |reply: Reply| (reply, Outcome::default());
    match route {
        Route::BulkPurge { service_id } => purge::bulk(context, service_id),
        Route::KeyPurge { service_id, key } => purge::single_key(context, service_id, &key),
        Route::UrlPurge { url } => purge::url(context, &url),
        Route::PurgeAll { service_id } => purge::purge_all(context, service_id),
        Route::ListServices => read(services::list(context)),
        Route::SearchService => read(services::search(context)),
        Route::GetService { service_id } => read(services::get(context, service_id)),
        Route::ServiceDetails { service_id } => read(services::details(context, service_id)),
        Route::CurrentUser => read(account_routes::current_user(context)),
        Route::CurrentCustomer => read(account_routes::customer(
            context,
            context.token.customer_id(),
        )),
        Route::Customer { customer_id } => read(account_routes::customer(context, customer_id)),
        Route::TokenSelf => read(account_routes::token_self(context)),
        Route::NotFound => read(Reply::not_found()),
    }
}
