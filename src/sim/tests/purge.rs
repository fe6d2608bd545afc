//! Purge endpoint tests: bulk, single key, URL, soft purge and the purge budget.

use serde_json::{Value, json};

use super::*;

fn is_purge_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('-').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

#[tokio::test]
async fn bulk_purge_returns_flat_map_without_content_type() {
    let sim = Harness::start_default().await;
    let service_id = sim.service_ids()[0].clone();

    let response = send(
        sim.post(&format!("/service/{service_id}/purge"))
            .json(&json!({ "surrogate_keys": ["foo", "bar", "baz"] })),
    )
    .await;

    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").is_none());
    assert_eq!(header(&response, "fastly-surrogate-key-count"), Some("3"));
    assert!(header(&response, "fastly-ratelimit-remaining").is_none());
    assert!(header(&response, "fastly-ratelimit-reset").is_none());
    let text = response.text().await.unwrap();
    assert!(
        text.starts_with("{\"foo\":"),
        "keys keep request order: {text}"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    let map = body.as_object().expect("reply is a flat object");
    assert_eq!(map.len(), 3);
    assert!(map.get("status").is_none());
    let ids: Vec<&str> = map.values().map(|id| id.as_str().unwrap()).collect();
    assert!(
        ids.iter().all(|id| is_purge_id(id)),
        "ids look like node-epoch-seq: {ids:?}"
    );
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3);
    let purged: Vec<String> = sim.purged_keys(&service_id).into_iter().collect();
    assert_eq!(purged, ["bar", "baz", "foo"]);
}

#[tokio::test]
async fn bulk_purge_reads_surrogate_key_header() {
    let sim = Harness::start_default().await;
    let service_id = sim.service_ids()[1].clone();

    let (status, body) = send_json(
        sim.post(&format!("/service/{service_id}/purge"))
            .header("Surrogate-Key", "a b  a c"),
    )
    .await;

    assert_eq!(status, 200);
    assert_eq!(body.as_object().unwrap().len(), 3);
    let recorded = &sim.requests()[0];
    assert_eq!(recorded.surrogate_keys(), ["a", "b", "a", "c"]);
    assert_eq!(sim.stats().keys_purged, 3);
}

#[tokio::test]
async fn bulk_purge_over_256_keys_gets_400() {
    let sim = Harness::start_default().await;
    let service_id = sim.service_ids()[0].clone();
    let keys: Vec<String> = (0..257).map(|index| format!("key-{index}")).collect();

    let (status, body) = send_json(
        sim.post(&format!("/service/{service_id}/purge"))
            .json(&json!({ "surrogate_keys": keys })),
    )
    .await;

    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({
            "status": "fail",
            "reason": "Batch surrogate key request only supports up to 256 surrogate keys"
        })
    );
    assert!(sim.purged_keys(&service_id).is_empty());
    assert_eq!(sim.stats().purges, 0);
}

#[tokio::test]
async fn bulk_purge_accepts_256_keys() {
    let sim = Harness::start_default().await;
    let service_id = sim.service_ids()[0].clone();
    let keys: Vec<String> = (0..256).map(|index| format!("key-{index}")).collect();

    let (status, body) = send_json(
        sim.post(&format!("/service/{service_id}/purge"))
            .json(&json!({ "surrogate_keys": keys })),
    )
    .await;

    assert_eq!(status, 200);
    assert_eq!(body.as_object().unwrap().len(), 256);
    assert_eq!(sim.purged_keys(&service_id).len(), 256);
}

#[tokio::test]
async fn bulk_purge_rejects_bad_bodies() {
    let sim = Harness::start_default().await;
    let path = format!("/service/{}/purge", sim.service_ids()[0]);
    let long_key = "k".repeat(1025);
    let cases: [(&str, String); 5] = [
        ("no keys at all", String::new()),
        ("empty key list", r#"{"surrogate_keys":[]}"#.to_string()),
        ("not JSON", "surrogate_keys=a".to_string()),
        (
            "key is not a string",
            r#"{"surrogate_keys":[1]}"#.to_string(),
        ),
        (
            "key over 1024 bytes",
            json!({ "surrogate_keys": [long_key] }).to_string(),
        ),
    ];

    for (case, body) in cases {
        let (status, reply) = send_json(sim.post(&path).body(body)).await;

        assert_eq!(status, 400, "{case}");
        assert_eq!(reply["status"], "fail", "{case}");
        assert!(reply["reason"].is_string(), "{case}");
    }
    assert_eq!(sim.stats().purges, 0);
}

#[tokio::test]
async fn soft_purge_header_is_recorded() {
    let sim = Harness::start_default().await;
    let service_id = sim.service_ids()[0].clone();

    send(
        sim.post(&format!("/service/{service_id}/purge/soft-key"))
            .header("Fastly-Soft-Purge", "1"),
    )
    .await;
    send(sim.post(&format!("/service/{service_id}/purge/hard-key"))).await;

    let requests = sim.requests();
    assert!(requests[0].soft());
    assert!(!requests[1].soft());
    assert_eq!(requests[0].header("Fastly-Soft-Purge"), Some("1"));
    let purged: Vec<String> = sim.purged_keys(&service_id).into_iter().collect();
    assert_eq!(purged, ["hard-key", "soft-key"]);
}

#[tokio::test]
async fn single_key_purge_reply_shape() {
    let sim = Harness::start_default().await;
    let service_id = sim.service_ids()[0].clone();

    let response = send(sim.post(&format!("/service/{service_id}/purge/a%2Fb"))).await;

    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), Some("application/json"));
    assert!(header(&response, "fastly-ratelimit-remaining").is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert!(is_purge_id(body["id"].as_str().unwrap()));
    assert!(sim.purged_keys(&service_id).contains("a/b"));
    assert_eq!(sim.requests()[0].surrogate_keys(), ["a/b"]);
}

#[tokio::test]
async fn url_purge_keeps_raw_path_and_query() {
    let sim = Harness::start_default().await;

    let (status, body) = send_json(sim.post("/purge/www.example.com/a%2Fb/c?x=1&y=2")).await;

    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert!(is_purge_id(body["id"].as_str().unwrap()));
    assert_eq!(
        sim.requests()[0].path,
        "/purge/www.example.com/a%2Fb/c?x=1&y=2"
    );
    let urls: Vec<String> = sim.purged_urls().into_iter().collect();
    assert_eq!(urls, ["www.example.com/a%2Fb/c?x=1&y=2"]);
}

#[tokio::test]
async fn unknown_service_purge_is_accepted() {
    let sim = Harness::start_default().await;

    let (status, body) = send_json(sim.post("/service/notSeeded/purge/key")).await;

    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert!(sim.purged_keys("notSeeded").contains("key"));
}

#[tokio::test]
async fn purge_budget_is_per_customer() {
    let sim = Harness::start(SimConfig {
        purge_limit: 3,
        ..SimConfig::default()
    })
    .await;
    let path = format!("/service/{}/purge", sim.service_ids()[0]);

    let first = send(sim.post(&path).header("Surrogate-Key", "a b"))
        .await
        .status();
    let over = send(sim.post(&path).header("Surrogate-Key", "c d")).await;
    let over_status = over.status();
    let over_remaining = header(&over, "fastly-ratelimit-remaining").map(str::to_string);
    let last = send(sim.post("/purge/www.example.com/x")).await.status();
    let after = send(sim.post("/purge/www.example.com/y")).await.status();

    assert_eq!(first, 200);
    assert_eq!(over_status, 429);
    assert_eq!(over_remaining.as_deref(), Some("0"));
    assert_eq!(last, 200);
    assert_eq!(after, 429);
    let stats = sim.stats();
    assert_eq!(stats.rate_limited, 2);
    assert_eq!(stats.purges, 2);
    assert_eq!(stats.writes, 0);
}
