//! Metrics and health: after a known cycle of jobs, the counters moved by exactly the right
//! amounts, and the health endpoints respond.

use fastly_purge_worker::job::Status;
use fastly_purge_worker::sim::Fault;
use serde_json::json;

use crate::world::{WorldBuilder, metric, scrape, scrape_until};

const P: &str = "fastly_purge_worker_";

#[tokio::test]
async fn counters_follow_a_job_cycle() {
    let mut world = WorldBuilder::new("metrics")
        .account("purger", &["purge_select"])
        .start()
        .await;
    world.sim.inject(Fault::status("/service/S2/purge", 403, 1));

    let ok = world
        .run(json!({"type": "purge_keys", "service_id": "S1", "keys": ["a", "b", "c"]}))
        .await;
    assert_eq!(ok.result.status, Status::Succeeded);
    let forbidden = world
        .run(json!({"type": "purge_keys", "service_id": "S2", "keys": ["x"]}))
        .await;
    assert_eq!(forbidden.result.status, Status::Failed);
    let rejected = world
        .run(json!({"type": "purge_all", "account": "purger", "service_id": "S1"}))
        .await;
    assert_eq!(rejected.result.status, Status::Rejected);
    let token = world.run(json!({"type": "get_token"})).await;
    assert_eq!(token.result.status, Status::Succeeded);

    let worker = world.worker.as_ref().unwrap();
    let text = scrape_until(worker, |text| {
        metric(text, &format!("{P}jobs_completed_total"), &[]) == 4.0
    })
    .await;
    let value = |name: &str, labels: &[(&str, &str)]| metric(&text, &format!("{P}{name}"), labels);

    assert_eq!(
        value("jobs_received_total", &[("type", "purge_keys")]),
        2.0,
        "{text}"
    );
    assert_eq!(value("jobs_received_total", &[("type", "purge_all")]), 1.0);
    assert_eq!(value("jobs_received_total", &[("type", "get_token")]), 1.0);
    assert_eq!(
        value(
            "jobs_completed_total",
            &[("type", "purge_keys"), ("status", "succeeded")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "jobs_completed_total",
            &[("type", "purge_keys"), ("status", "failed")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "jobs_completed_total",
            &[("type", "purge_all"), ("status", "rejected")]
        ),
        1.0
    );
    assert_eq!(
        value("job_duration_seconds_count", &[("type", "purge_keys")]),
        2.0
    );
    assert_eq!(
        value("jobs_dead_lettered_total", &[("code", "fastly_forbidden")]),
        1.0
    );
    assert_eq!(
        value("jobs_dead_lettered_total", &[("code", "missing_scope")]),
        1.0
    );
    assert_eq!(
        value(
            "fastly_requests_total",
            &[("endpoint", "purge_keys"), ("status_class", "2xx")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "fastly_requests_total",
            &[("endpoint", "purge_keys"), ("status_class", "4xx")]
        ),
        1.0
    );
    // Two tokens/self reads at start (two accounts), and the get_token job.
    assert_eq!(
        value(
            "fastly_requests_total",
            &[("endpoint", "tokens_self"), ("status_class", "2xx")]
        ),
        3.0
    );
    assert_eq!(
        value("fastly_retries_total", &[]),
        0.0,
        "a 403 is not retried"
    );
    assert_eq!(value("batch_keys_count", &[]), 2.0, "two bulk requests");
    assert_eq!(value("batch_keys_sum", &[]), 4.0, "three keys and one key");
    assert_eq!(
        value("keys_purged_total", &[]),
        3.0,
        "the forbidden key was not purged"
    );
    assert_eq!(value("broker_connected", &[]), 1.0);
    assert_eq!(value("token_valid", &[("account", "default")]), 1.0);
    assert_eq!(
        value("fastly_requests_in_flight", &[("account", "default")]),
        0.0
    );
    assert!(
        text.contains(&format!(
            "{P}queue_messages_ready{{queue=\"{}\"}}",
            world.settings.broker.jobs_queue
        )),
        "{text}"
    );
    world.finish().await;
}

#[tokio::test]
async fn health_endpoints_answer() {
    let world = WorldBuilder::new("health").start().await;
    let addr = world.worker.as_ref().unwrap().telemetry_addr().unwrap();
    let healthz = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    let readyz = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(readyz.status(), 200);
    // Job counters exist at 0 before the first job, so alerts on an idle worker can fire.
    let text = scrape(world.worker.as_ref().unwrap()).await;
    for job_type in ["purge_keys", "get_token", "unknown"] {
        let received = format!("{P}jobs_received_total{{type=\"{job_type}\"}} 0");
        assert!(text.contains(&received), "{received} missing:\n{text}");
    }
    world.finish().await;
}

#[tokio::test]
async fn rejected_token_makes_worker_not_ready() {
    let mut builder = WorldBuilder::new("bad_token");
    // The simulator has no such token, so tokens/self returns 401.
    builder
        .accounts
        .insert("stale".to_owned(), "unknown-token".to_owned());
    let world = builder.start().await;
    let worker = world.worker.as_ref().unwrap();
    let addr = worker.telemetry_addr().unwrap();
    let readyz = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(readyz.status(), 503);
    let reason = readyz.text().await.unwrap();
    assert!(reason.contains("stale"), "{reason}");
    let text = scrape(worker).await;
    assert_eq!(
        metric(&text, &format!("{P}token_valid"), &[("account", "stale")]),
        0.0
    );
    world.finish().await;
}

#[tokio::test]
async fn unauthorized_reply_rechecks_the_token() {
    let mut world = WorldBuilder::new("revoked").start().await;
    // From here on Fastly rejects the token: the next purge_all and the next tokens/self.
    world
        .sim
        .inject(Fault::status("/service/S1/purge_all", 401, 1));
    world.sim.inject(Fault::status("/tokens/self", 401, 1));

    let reply = world
        .run(json!({"type": "purge_all", "service_id": "S1"}))
        .await;
    assert_eq!(reply.result.status, Status::Failed, "{}", reply.json);

    // The 401 brings the token check forward from its hourly interval.
    let addr = world.worker.as_ref().unwrap().telemetry_addr().unwrap();
    let mut readyz = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    for _ in 0..100 {
        if readyz.status() == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        readyz = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    }
    assert_eq!(readyz.status(), 503);
    let reason = readyz.text().await.unwrap();
    assert!(reason.contains("default"), "{reason}");
    assert_eq!(
        world.sim.requests_to("/tokens/self").len(),
        2,
        "at start and after the 401"
    );
    world.finish().await;
}
