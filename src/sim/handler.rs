//! Request pipeline for Fastly API paths: authentication, scope checks, injected faults,
//! random failures, rate limits, the endpoint itself, recording and the added delay.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Bytes, to_bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use rand::RngExt;

use super::account_routes;
use super::control;
use super::fault::random_server_error;
use super::limits::Decision;
use super::purge;
use super::record::{Outcome, RecordedRequest};
use super::reply::Reply;
use super::routes::Route;
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
/// Fastly pipeline.
pub async fn handle(State(state): State<Arc<SimState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if control::is_control_path(parts.uri.path()) {
        return control::handle(&state, &parts, body).await;
    }

    let (body, reply, outcome) = match to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => {
            let (reply, outcome) = process(&state, &parts, &body);
            (body, reply, outcome)
        }
        Err(error) => {
            tracing::warn!(
                path = %parts.uri.path(),
                %error,
                "failed to read request body, replying 413"
            );
            let reply = Reply::msg(StatusCode::PAYLOAD_TOO_LARGE, "Request entity too large");
            (Bytes::new(), reply, Outcome::default())
        }
    };

    state.record(recorded_request(&parts, &body, reply.status), outcome);

    let latency = state.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    reply.into_response()
}

fn recorded_request(parts: &Parts, body: &[u8], status: StatusCode) -> RecordedRequest {
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
        status: status.as_u16(),
    }
}

fn path_and_query(parts: &Parts) -> &str {
    parts.uri.path_and_query().map_or_else(
        || parts.uri.path(),
        |path_and_query| path_and_query.as_str(),
    )
}

fn process(state: &SimState, parts: &Parts, body: &[u8]) -> (Reply, Outcome) {
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

    // Injected faults and random failures replace the reply once the token is accepted, and
    // are not charged to any limit.
    if let Some(reply) = state
        .faults
        .take(parts.method.as_str(), path_and_query(parts))
    {
        return (reply, Outcome::default());
    }
    let error_rate = state.error_rate();
    if error_rate > 0.0 && rand::rng().random_bool(error_rate) {
        return (random_server_error(), Outcome::default());
    }

    // Every request other than GET, HEAD and key or URL purges is a write. It is charged
    // before the endpoint runs, so a write that then fails (400, 404) still counts.
    let is_read = parts.method == Method::GET || parts.method == Method::HEAD;
    let mut outcome = Outcome::default();
    let mut rate_limit = None;
    if !is_read && !route.is_key_or_url_purge() {
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
        peer: parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| *peer),
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

/// Builds the axum service state and routes every path to [`handle`].
pub fn router(state: Arc<SimState>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(state)
}
