//! Request log, fault injection, failure rate, latency and `/_sim/` control endpoint tests.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use super::*;
use crate::sim::Fault;

#[tokio::test]
async fn request_log_records_requests() {
    let sim = Harness::start_default().await;
    let service_id = sim.first_service();
    let body = json!({ "surrogate_keys": ["a", "b"] }).to_string();

    send(
        sim.post(&format!("/service/{service_id}/purge?x=1"))
            .header("Content-Type", "application/json")
            .header("X-Request-Id", "req-1")
            .body(body.clone()),
    )
    .await;
    send(sim.get("/service")).await;

    let requests = sim.requests();
    assert_eq!(requests.len(), 2);
    let purge = &requests[0];
    assert_eq!(purge.method, "POST");
    assert_eq!(purge.path, format!("/service/{service_id}/purge?x=1"));
    assert_eq!(purge.token.as_deref(), Some(DEFAULT_TOKEN));
    assert_eq!(purge.status, 200);
    assert_eq!(purge.body, body.as_bytes());
    assert_eq!(purge.header("x-request-id"), Some("req-1"));
    assert_eq!(purge.header("content-type"), Some("application/json"));
    assert!(
        purge.header("fastly-key").is_none(),
        "the token is kept out of the headers"
    );
    assert!(
        purge
            .headers
            .iter()
            .all(|(name, _)| *name == name.to_lowercase())
    );
    assert_eq!(purge.surrogate_keys(), ["a", "b"]);
    assert_eq!(requests[1].method, "GET");
    assert_eq!(requests[1].path, "/service");

    sim.clear_requests();
    assert!(sim.requests().is_empty());
    assert_eq!(sim.stats().requests, 2);
}

#[tokio::test]
async fn request_log_keeps_newest() {
    let sim = Harness::start(SimConfig {
        request_log_limit: 2,
        ..SimConfig::default()
    })
    .await;

    for page in 1..=3 {
        send(sim.get(&format!("/service?page={page}"))).await;
    }

    let paths: Vec<String> = sim
        .requests()
        .into_iter()
        .map(|request| request.path)
        .collect();
    assert_eq!(paths, ["/service?page=2", "/service?page=3"]);
    assert_eq!(sim.stats().requests, 3);
}

#[tokio::test]
async fn injected_fault_is_used_exactly_times() {
    let sim = Harness::start_default().await;
    let path = format!("/service/{}/purge/k", sim.first_service());
    sim.inject(Fault::status("/service/", 503, 2));

    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(send(sim.post(&path)).await.status().as_u16());
    }

    assert_eq!(statuses, [503, 503, 200]);
    let stats = sim.stats();
    assert_eq!(stats.by_status.get(&503), Some(&2));
    assert_eq!(stats.by_status.get(&200), Some(&1));
    assert_eq!(stats.purges, 1);
}

#[tokio::test]
async fn fault_waits_for_authentication() {
    let sim = Harness::start_default().await;
    sim.inject(Fault::status("/service", 500, 1));

    let unauthenticated = send(sim.request(Method::GET, "/service", None)).await;
    let faulted = send(sim.get("/service")).await;
    let normal = send(sim.get("/service")).await;

    assert_eq!(unauthenticated.status(), 401);
    assert_eq!(faulted.status(), 500);
    assert_eq!(normal.status(), 200);
}

#[tokio::test]
async fn fault_matches_method_and_custom_reply() {
    let sim = Harness::start_default().await;
    sim.inject(Fault {
        method: Some("POST".to_string()),
        path_prefix: "/purge/".to_string(),
        status: 429,
        body: r#"{"msg":"slow down"}"#.to_string(),
        headers: vec![("Fastly-RateLimit-Reset".to_string(), "12345".to_string())],
        times: 1,
    });

    let read = send(sim.get("/purge/host/path")).await;
    let faulted = send(sim.post("/purge/host/path")).await;

    assert_eq!(read.status(), 404);
    assert_eq!(faulted.status(), 429);
    assert_eq!(header(&faulted, "fastly-ratelimit-reset"), Some("12345"));
    assert_eq!(faulted.text().await.unwrap(), r#"{"msg":"slow down"}"#);
    assert_eq!(sim.stats().rate_limited, 1);
}

#[tokio::test]
async fn control_endpoints_work_over_http() {
    let sim = Harness::start_default().await;
    let service_id = sim.first_service();
    let control = |method: Method, path: &str| sim.request(method, path, None);

    let fault = json!({ "path_prefix": "/service", "status": 502, "times": 1 });
    let added = send(control(Method::POST, "/_sim/faults").json(&fault)).await;
    let faulted = send(sim.get("/service")).await;
    let faulted_type = header(&faulted, "content-type").map(str::to_string);
    send(sim.post(&format!("/service/{service_id}/purge/key-1"))).await;
    let (_, requests) = send_json(control(Method::GET, "/_sim/requests")).await;
    let (_, stats) = send_json(control(Method::GET, "/_sim/stats")).await;
    let (_, purged) = send_json(control(
        Method::GET,
        &format!("/_sim/purged_keys/{service_id}"),
    ))
    .await;
    let bad_fault = send(control(Method::POST, "/_sim/faults").body("{}")).await;
    let reset = send(control(Method::POST, "/_sim/reset")).await;

    assert_eq!(added.status(), 204);
    assert_eq!(faulted.status(), 502);
    assert_eq!(faulted_type.as_deref(), Some("text/html"));
    assert_eq!(requests.as_array().unwrap().len(), 2);
    assert_eq!(
        requests[1]["path"],
        format!("/service/{service_id}/purge/key-1")
    );
    assert_eq!(requests[1]["status"], 200);
    assert_eq!(stats["requests"], 2);
    assert_eq!(stats["by_status"]["502"], 1);
    assert_eq!(stats["keys_purged"], 1);
    assert_eq!(purged, json!(["key-1"]));
    assert_eq!(bad_fault.status(), 400);
    assert_eq!(reset.status(), 204);
    assert!(sim.requests().is_empty());
    assert_eq!(sim.stats().requests, 0);
    assert!(sim.purged_keys(&service_id).is_empty());
}

#[tokio::test]
async fn unknown_route_gets_404() {
    let sim = Harness::start_default().await;

    let (status, body) = send_json(sim.get("/nothing/here")).await;
    let (control_status, _) = send_json(sim.request(Method::GET, "/_sim/nothing", None)).await;

    assert_eq!(status, 404);
    assert_eq!(body, json!({ "msg": "Record not found" }));
    assert_eq!(control_status, 404);
}

#[tokio::test]
async fn full_error_rate_fails_every_request() {
    let sim = Harness::start(SimConfig {
        error_rate: 1.0,
        ..SimConfig::default()
    })
    .await;

    for _ in 0..10 {
        let status = send(sim.get("/service")).await.status().as_u16();
        assert!([500, 502, 503].contains(&status), "got {status}");
    }
    let unauthenticated = send(sim.request(Method::GET, "/service", None)).await;
    assert_eq!(unauthenticated.status(), 401);

    sim.set_error_rate(0.0);
    assert_eq!(send(sim.get("/service")).await.status(), 200);
}

#[tokio::test]
async fn latency_delays_replies() {
    let sim = Harness::start_default().await;
    send(sim.get("/service")).await;
    sim.set_latency(Duration::from_millis(50));

    let started = Instant::now();
    let status = send(sim.get("/service")).await.status();

    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[tokio::test]
async fn stop_closes_the_port() {
    let sim = Harness::start_default().await;
    let base_url = sim.base_url();
    let Harness { simulator, client } = sim;

    simulator.stop().await;

    assert!(
        client
            .get(format!("{base_url}/service"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn invalid_config_is_rejected() {
    let result = Simulator::start(
        LOOPBACK,
        SimConfig {
            error_rate: 1.5,
            ..SimConfig::default()
        },
    )
    .await;

    let error = result.expect_err("error_rate above 1.0 is invalid");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}
