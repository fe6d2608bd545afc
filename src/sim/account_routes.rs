//! Account read endpoints: `GET /current_user`, `GET /current_customer`,
//! `GET /customer/{id}` and `GET /tokens/self`.

use axum::http::StatusCode;

use super::handler::RequestContext;
use super::reply::Reply;

/// Returns the user that owns the token.
pub fn current_user(context: &RequestContext) -> Reply {
    match context.state.accounts.user(context.token.user_id()) {
        Some(user) => Reply::json(StatusCode::OK, &user.json(context.now)),
        // Accounts are derived from the same token list, so every token's user exists.
        None => Reply::not_found(),
    }
}

/// Returns the token's own customer. Another customer's id gets 403.
pub fn customer(context: &RequestContext, customer_id: &str) -> Reply {
    if customer_id != context.token.customer_id() {
        let detail = format!("This token cannot read customer '{customer_id}'");
        return Reply::legacy_error(StatusCode::FORBIDDEN, "Forbidden", &detail);
    }
    match context.state.accounts.customer(customer_id) {
        Some(customer) => Reply::json(StatusCode::OK, &customer.json()),
        None => Reply::not_found(),
    }
}

/// Returns the token's own record, with the client's address and User-Agent as the last use.
pub fn token_self(context: &RequestContext) -> Reply {
    let ip = context.peer.map(|peer| peer.ip().to_string());
    let body = context
        .token
        .self_json(context.now, ip, context.header("user-agent"));
    Reply::json(StatusCode::OK, &body)
}
