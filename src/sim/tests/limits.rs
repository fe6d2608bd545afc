//! Write rate-limit tests: headers on writes, 429 over the limit, window reset.

use std::time::Duration;

use super::*;

fn header_number(response: &Response, name: &str) -> i64 {
    header(response, name)
        .unwrap_or_else(|| panic!("reply has {name}"))
        .parse()
        .unwrap_or_else(|_| panic!("{name} is a number"))
}

#[tokio::test]
async fn purge_all_carries_rate_limit_headers() {
    let sim = Harness::start_default().await;
    let path = format!("/service/{}/purge_all", sim.service_ids()[0]);

    let first = send(sim.post(&path)).await;
    let second = send(sim.post(&path)).await;

    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "content-type"), Some("application/json"));
    assert_eq!(header_number(&first, "fastly-ratelimit-remaining"), 999);
    assert_eq!(header_number(&second, "fastly-ratelimit-remaining"), 998);
    let reset = header_number(&first, "fastly-ratelimit-reset");
    let now = chrono::Utc::now().timestamp();
    assert_eq!(reset % 3600, 0, "reset is the top of an hour");
    assert!(reset > now, "reset {reset} is after now {now}");
    assert!(
        reset <= now + 3600,
        "reset {reset} is within an hour of now {now}"
    );
    assert_eq!(
        first.json::<Value>().await.unwrap(),
        serde_json::json!({ "status": "ok" })
    );
}

#[tokio::test]
async fn writes_over_limit_get_429_until_window_ends() {
    let window = Duration::from_millis(100);
    let sim = Harness::start(SimConfig {
        write_limit: 2,
        window,
        ..SimConfig::default()
    })
    .await;
    let path = format!("/service/{}/purge_all", sim.service_ids()[0]);

    // Start right after a window boundary so that the three requests below, a few
    // milliseconds apart, fall in one window.
    let window_ms = window.as_millis() as i64;
    let into_window = chrono::Utc::now().timestamp_millis() % window_ms;
    tokio::time::sleep(Duration::from_millis((window_ms - into_window + 1) as u64)).await;
    let statuses = [
        send(sim.post(&path)).await.status().as_u16(),
        send(sim.post(&path)).await.status().as_u16(),
    ];
    let limited = send(sim.post(&path)).await;

    assert_eq!(statuses, [200, 200]);
    assert_eq!(limited.status(), 429);
    assert_eq!(header(&limited, "fastly-ratelimit-remaining"), Some("0"));
    assert!(header(&limited, "fastly-ratelimit-reset").is_some());
    assert!(header(&limited, "retry-after").is_none());
    let body: Value = limited.json().await.unwrap();
    assert!(
        body["msg"]
            .as_str()
            .unwrap()
            .starts_with("You have exceeded your hourly rate limit")
    );

    tokio::time::sleep(window).await;
    let next_window = send(sim.post(&path)).await;
    assert_eq!(next_window.status(), 200);
    assert_eq!(
        header(&next_window, "fastly-ratelimit-remaining"),
        Some("1")
    );

    let stats = sim.stats();
    assert_eq!(stats.max_write_requests_in_window, 3);
    assert_eq!(stats.rate_limited, 1);
    assert_eq!(stats.writes, 3);
}

#[tokio::test]
async fn failed_write_still_counts() {
    let sim = Harness::start_default().await;

    let response = send(sim.post("/service/unknown/version/1/acl")).await;

    assert_eq!(response.status(), 404);
    assert_eq!(header(&response, "fastly-ratelimit-remaining"), Some("999"));
    assert_eq!(sim.stats().writes, 1);
}

#[tokio::test]
async fn reads_and_key_purges_are_not_writes() {
    let sim = Harness::start(SimConfig {
        write_limit: 1,
        ..SimConfig::default()
    })
    .await;
    let service_id = sim.service_ids()[0].clone();

    for _ in 0..3 {
        let read = send(sim.get("/service")).await;
        assert_eq!(read.status(), 200);
        assert!(header(&read, "fastly-ratelimit-remaining").is_none());
        let purge = send(sim.post(&format!("/service/{service_id}/purge/k"))).await;
        assert_eq!(purge.status(), 200);
    }

    assert_eq!(sim.stats().writes, 0);
    assert_eq!(sim.stats().max_write_requests_in_window, 0);
}

#[tokio::test]
async fn write_limit_is_per_user() {
    let mut other_user = crate::sim::SimToken::global("other");
    other_user.user_id = "OtherUser0000000000000".to_string();
    let sim = Harness::start(SimConfig {
        tokens: vec![crate::sim::SimToken::global(DEFAULT_TOKEN), other_user],
        write_limit: 1,
        ..SimConfig::default()
    })
    .await;
    let path = format!("/service/{}/purge_all", sim.service_ids()[0]);

    let first_user = send(sim.post(&path)).await.status();
    let first_user_again = send(sim.post(&path)).await.status();
    let second_user = send(sim.request(reqwest::Method::POST, &path, Some("other")))
        .await
        .status();

    assert_eq!(first_user, 200);
    assert_eq!(first_user_again, 429);
    assert_eq!(second_user, 200);
    assert_eq!(sim.stats().max_write_requests_in_window, 2);
}
