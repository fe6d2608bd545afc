//! Authentication and scope tests.

use chrono::{Duration as TimeDelta, Utc};
use reqwest::Method;
use serde_json::json;

use super::*;
use crate::sim::{DEFAULT_CUSTOMER_ID, DEFAULT_USER_ID, SimToken};

async fn start_with(tokens: Vec<SimToken>) -> Harness {
    Harness::start(SimConfig {
        tokens,
        ..SimConfig::default()
    })
    .await
}

#[tokio::test]
async fn missing_token_gets_401() {
    let sim = Harness::start_default().await;
    let service_id = sim.first_service();

    let purge = sim.request(
        Method::POST,
        &format!("/service/{service_id}/purge/key"),
        None,
    );
    let (status, body) = send_json(purge).await;

    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({ "msg": "Provided credentials are missing or invalid" })
    );
    assert_eq!(sim.requests()[0].status, 401);
    assert_eq!(sim.requests()[0].token, None);
    assert!(sim.purged_keys(&service_id).is_empty());
}

#[tokio::test]
async fn wrong_token_gets_401() {
    let sim = Harness::start_default().await;

    let (status, body) = send_json(sim.request(Method::GET, "/service", Some("wrong"))).await;

    assert_eq!(status, 401);
    assert_eq!(body["msg"], "Provided credentials are missing or invalid");
    assert_eq!(sim.requests()[0].token.as_deref(), Some("wrong"));
}

#[tokio::test]
async fn expired_token_gets_401() {
    let mut expired = SimToken::global("expired");
    expired.expires_at = Some(Utc::now() - TimeDelta::minutes(1));
    let sim = start_with(vec![expired]).await;

    let (status, _) = send_json(sim.request(Method::GET, "/tokens/self", Some("expired"))).await;

    assert_eq!(status, 401);
}

#[tokio::test]
async fn unauthenticated_write_is_not_charged() {
    let sim = Harness::start_default().await;
    let path = format!("/service/{}/purge_all", sim.first_service());

    let response = send(sim.request(Method::POST, &path, None)).await;

    assert_eq!(response.status(), 401);
    assert!(header(&response, "fastly-ratelimit-remaining").is_none());
    assert_eq!(sim.stats().writes, 0);
}

#[tokio::test]
async fn purge_select_token_cannot_purge_all() {
    let sim = start_with(vec![SimToken::with_scopes("purger", &["purge_select"])]).await;
    let path = format!("/service/{}/purge_all", sim.first_service());

    let (status, body) = send_json(sim.request(Method::POST, &path, Some("purger"))).await;

    assert_eq!(status, 403);
    assert_eq!(body["msg"], "Forbidden");
    let detail = body["detail"].as_str().expect("403 body has a detail");
    assert!(
        detail.contains("purge_all"),
        "detail names the missing scope: {detail}"
    );
    assert_eq!(sim.stats().writes, 0);
}

#[tokio::test]
async fn purge_only_token_cannot_read_services() {
    let sim = start_with(vec![SimToken::with_scopes("purger", &["purge_select"])]).await;
    let key_path = format!("/service/{}/purge/k", sim.first_service());

    let (list_status, list_body) =
        send_json(sim.request(Method::GET, "/service", Some("purger"))).await;
    let key_purge = send(sim.request(Method::POST, &key_path, Some("purger"))).await;
    let token_self = send(sim.request(Method::GET, "/tokens/self", Some("purger"))).await;

    assert_eq!(list_status, 403);
    assert!(
        list_body["detail"]
            .as_str()
            .unwrap()
            .contains("global:read")
    );
    assert_eq!(key_purge.status(), 200);
    assert_eq!(token_self.status(), 200);
}

#[tokio::test]
async fn read_token_cannot_purge() {
    let sim = start_with(vec![SimToken::with_scopes("reader", &["global:read"])]).await;
    let bulk_path = format!("/service/{}/purge", sim.first_service());

    let bulk = sim
        .request(Method::POST, &bulk_path, Some("reader"))
        .header("Surrogate-Key", "a");
    let (status, body) = send_json(bulk).await;
    let list = send(sim.request(Method::GET, "/service", Some("reader"))).await;

    assert_eq!(status, 403);
    assert!(body["detail"].as_str().unwrap().contains("purge_select"));
    assert_eq!(list.status(), 200);
}

#[tokio::test]
async fn service_limited_token_gets_403_elsewhere() {
    let service_ids = Harness::start_default().await.service_ids();
    let mut limited = SimToken::global("limited");
    limited.services = vec![service_ids[0].clone()];
    let sim = start_with(vec![limited]).await;

    let allowed_path = format!("/service/{}/purge/k", service_ids[0]);
    let denied_path = format!("/service/{}/purge/k", service_ids[1]);
    let allowed = send(sim.request(Method::POST, &allowed_path, Some("limited"))).await;
    let (denied_status, denied_body) =
        send_json(sim.request(Method::POST, &denied_path, Some("limited"))).await;
    let (_, list) = send_json(sim.request(Method::GET, "/service", Some("limited"))).await;

    assert_eq!(allowed.status(), 200);
    assert_eq!(denied_status, 403);
    assert!(
        denied_body["detail"]
            .as_str()
            .unwrap()
            .contains(&service_ids[1])
    );
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], service_ids[0].as_str());
}

#[tokio::test]
async fn tokens_self_reports_scope_string() {
    let mut token = SimToken::with_scopes("multi", &["global:read", "purge_select"]);
    token.services = vec!["svc1".to_string()];
    let sim = start_with(vec![token]).await;

    let self_request = sim
        .request(Method::GET, "/tokens/self", Some("multi"))
        .header("User-Agent", "sim-test/1");
    let (status, body) = send_json(self_request).await;

    assert_eq!(status, 200);
    assert_eq!(body["scope"], "global:read purge_select");
    assert_eq!(body["scopes"], json!(["global:read", "purge_select"]));
    assert_eq!(body["services"], json!(["svc1"]));
    assert_eq!(body["service_id"], "svc1");
    assert_eq!(body["expires_at"], json!(null));
    assert_eq!(body["user_id"], DEFAULT_USER_ID);
    assert_eq!(body["customer_id"], DEFAULT_CUSTOMER_ID);
    assert_eq!(body["ip"], "127.0.0.1");
    assert_eq!(body["user_agent"], "sim-test/1");
    assert_eq!(body["id"].as_str().unwrap().len(), 22);
    for field in ["name", "created_at", "last_used_at", "sudo_expires_at"] {
        assert!(body.get(field).is_some(), "tokens/self has {field}");
    }
    assert!(
        !body.to_string().contains("\"multi\""),
        "the token value never appears"
    );
}
