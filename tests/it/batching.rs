//! Batching through the broker: keys of concurrent jobs share bulk requests, purge_all jobs
//! coalesce and cover pending key purges, soft and hard stay apart, a 429 pauses only its
//! budget class, and a failed request fails only the jobs with keys in it.

use std::time::{Duration, Instant};

use fastly_purge_worker::job::{ErrorCode, Status};
use fastly_purge_worker::sim::Fault;
use serde_json::json;

use crate::world::{World, WorldBuilder, header};

fn purges_of(world: &World, service: &str) -> Vec<fastly_purge_worker::sim::RecordedRequest> {
    world.sim.requests_to(&format!("/service/{service}/purge"))
}

async fn world_with_linger(test: &str, linger_ms: u64) -> World {
    let mut builder = WorldBuilder::new(test);
    builder.settings.batch.linger_ms = linger_ms;
    builder.start().await
}

#[tokio::test]
async fn concurrent_jobs_share_few_requests() {
    let mut world = world_with_linger("batch_concurrent", 300).await;
    let mut correlations = Vec::new();
    for job in 0..300 {
        let keys = [format!("post-{job}"), "home".to_owned()];
        let correlation = world
            .send(json!({"type": "purge_keys", "service_id": "S1", "keys": keys}))
            .await;
        correlations.push((job, correlation));
    }
    for (job, correlation) in correlations {
        let reply = world.client.reply_for(&correlation).await;
        assert_eq!(reply.result.status, Status::Succeeded, "{}", reply.json);
        let ids = &reply.json["output"]["purge_ids"];
        assert!(ids[format!("post-{job}")].is_string());
        assert!(ids["home"].is_string());
    }
    let requests = purges_of(&world, "S1");
    let sent: usize = requests.iter().map(|r| r.surrogate_keys().len()).sum();
    // 301 distinct keys need two requests; publishing 300 jobs may span a few linger windows.
    assert!(
        requests.len() <= 6,
        "{} requests for 301 keys",
        requests.len()
    );
    assert!(requests.iter().all(|r| r.surrogate_keys().len() <= 256));
    assert!(sent >= 301);
    assert_eq!(world.sim.purged_keys("S1").len(), 301);
    world.finish().await;
}

#[tokio::test]
async fn shared_key_sent_once_with_one_purge_id() {
    let mut world = world_with_linger("batch_shared_key", 200).await;
    let mut correlations = Vec::new();
    for job in 0..5 {
        let keys = ["shared".to_owned(), format!("own-{job}")];
        correlations.push(
            world
                .send(json!({"type": "purge_keys", "service_id": "S1", "keys": keys}))
                .await,
        );
    }
    let mut shared_ids = Vec::new();
    for correlation in correlations {
        let reply = world.client.reply_for(&correlation).await;
        assert_eq!(reply.result.status, Status::Succeeded);
        shared_ids.push(reply.json["output"]["purge_ids"]["shared"].clone());
    }
    assert!(
        shared_ids
            .iter()
            .all(|id| id == &shared_ids[0] && id.is_string())
    );
    let sent: Vec<String> = purges_of(&world, "S1")
        .iter()
        .flat_map(|r| r.surrogate_keys())
        .collect();
    assert_eq!(sent.iter().filter(|k| *k == "shared").count(), 1);
    world.finish().await;
}

#[tokio::test]
async fn lone_key_sent_after_linger() {
    let mut world = world_with_linger("batch_linger", 150).await;
    let started = Instant::now();
    let reply = world
        .run(json!({"type": "purge_keys", "service_id": "S1", "keys": ["lonely"]}))
        .await;
    assert_eq!(reply.result.status, Status::Succeeded);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "a key waits for others up to the linger time"
    );
    assert_eq!(purges_of(&world, "S1").len(), 1);
    world.finish().await;
}

#[tokio::test]
async fn soft_and_hard_never_share_a_request() {
    let mut world = world_with_linger("batch_soft_hard", 200).await;
    let hard = world
        .send(json!({"type": "purge_keys", "service_id": "S1", "keys": ["a", "b"]}))
        .await;
    let soft = world
        .send(json!({"type": "purge_keys", "service_id": "S1", "keys": ["a", "c"], "soft": true}))
        .await;
    assert_eq!(
        world.client.reply_for(&hard).await.result.status,
        Status::Succeeded
    );
    assert_eq!(
        world.client.reply_for(&soft).await.result.status,
        Status::Succeeded
    );
    let requests = purges_of(&world, "S1");
    assert_eq!(requests.len(), 2);
    for request in &requests {
        let mut keys = request.surrogate_keys();
        keys.sort();
        if request.soft() {
            assert_eq!(keys, ["a", "c"]);
        } else {
            assert_eq!(keys, ["a", "b"]);
        }
    }
    world.finish().await;
}

#[tokio::test]
async fn purge_all_jobs_coalesce_and_cover_keys() {
    let mut world = world_with_linger("batch_purge_all", 200).await;
    let mut purge_alls = Vec::new();
    for _ in 0..4 {
        purge_alls.push(
            world
                .send(json!({"type": "purge_all", "service_id": "S1"}))
                .await,
        );
    }
    // Keys that arrive while the purge_all waits are covered by it when it is sent.
    let keys_job = world
        .send(json!({"type": "purge_keys", "service_id": "S1", "keys": ["k1", "k2"], "soft": true}))
        .await;
    for correlation in purge_alls {
        let reply = world.client.reply_for(&correlation).await;
        assert_eq!(reply.result.status, Status::Succeeded, "{}", reply.json);
    }
    let keys = world.client.reply_for(&keys_job).await;
    assert_eq!(keys.result.status, Status::Succeeded, "{}", keys.json);
    assert_eq!(
        keys.json["output"]["purged_by_purge_all"],
        json!(["k1", "k2"])
    );

    let purge_all_requests = world.sim.requests_to("/service/S1/purge_all").len();
    assert_eq!(
        purge_all_requests, 1,
        "four waiting purge_all jobs share one request"
    );
    assert!(
        purges_of(&world, "S1").is_empty(),
        "the purge_all covered the keys"
    );
    world.finish().await;
}

#[tokio::test]
async fn rate_limited_writes_leave_purges_flowing() {
    let mut world = World::start("batch_429").await;
    let reset = chrono::Utc::now().timestamp() + 3600;
    let mut fault = Fault::status("/service/S1/purge_all", 429, 1);
    fault.headers = vec![
        ("Fastly-RateLimit-Remaining".to_owned(), "0".to_owned()),
        ("Fastly-RateLimit-Reset".to_owned(), reset.to_string()),
    ];
    world.sim.inject(fault);

    let reply = world
        .run(json!({"id": "write", "type": "purge_all", "service_id": "S1"}))
        .await;
    assert_eq!(reply.result.status, Status::Failed, "{}", reply.json);
    assert_eq!(
        reply.result.error.as_ref().unwrap().code,
        ErrorCode::FastlyRateLimited
    );

    // Key purges use another budget class and still go through.
    let keys = world
        .run(json!({"type": "purge_keys", "service_id": "S1", "keys": ["still-flowing"]}))
        .await;
    assert_eq!(keys.result.status, Status::Succeeded, "{}", keys.json);
    let another_write = world
        .run(json!({"type": "purge_all", "service_id": "S2"}))
        .await;
    assert_eq!(
        another_write.result.status,
        Status::Failed,
        "writes stay paused"
    );

    let purge_alls = world
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/purge_all"))
        .count();
    assert_eq!(
        purge_alls, 1,
        "no write is sent while the write budget is paused"
    );
    let dead = world.dead_letters(2).await;
    assert_eq!(dead.len(), 2);
    assert_eq!(
        header(&dead[0], "x-error-code").as_deref(),
        Some("fastly_rate_limited")
    );
    world.finish().await;
}

#[tokio::test]
async fn failed_request_fails_only_its_jobs() {
    let mut world = world_with_linger("batch_partial", 100).await;
    world.sim.inject(Fault::status("/service/S1/purge", 400, 1));
    let failing = world
        .send(json!({"type": "purge_keys", "service_id": "S1", "keys": ["a", "b"]}))
        .await;
    let healthy = world
        .send(json!({"type": "purge_keys", "service_id": "S2", "keys": ["a", "b"]}))
        .await;
    let failing = world.client.reply_for(&failing).await;
    let healthy = world.client.reply_for(&healthy).await;
    assert_eq!(failing.result.status, Status::Failed, "{}", failing.json);
    assert_eq!(failing.json["output"]["not_purged"], json!(["a", "b"]));
    assert_eq!(healthy.result.status, Status::Succeeded, "{}", healthy.json);
    world.finish().await;
}

#[tokio::test]
async fn transient_failure_goes_through_delay_queue() {
    let mut world = World::start("batch_delay_queue").await;
    // Every attempt of the first delivery fails; the second delivery succeeds.
    world.sim.inject(Fault::status("/service/S1/purge", 503, 4));
    let reply = world
        .run(json!({"type": "purge_keys", "service_id": "S1", "keys": ["retry-me"]}))
        .await;
    assert_eq!(reply.result.status, Status::Succeeded, "{}", reply.json);
    assert_eq!(
        reply.result.attempts, 5,
        "4 failed attempts, then 1 after the delay queue"
    );
    let statuses: Vec<u16> = purges_of(&world, "S1").iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 503, 503, 200]);
    world.finish().await;
}

#[tokio::test]
async fn quorum_delay_queue_returns_job() {
    let mut builder = WorldBuilder::new("quorum_delay");
    builder.settings.broker.queue_type = fastly_purge_worker::config::QueueType::Quorum;
    let mut world = builder.start().await;
    world.sim.inject(Fault::status("/service/S1/purge", 503, 4));
    let reply = world
        .run(json!({"type": "purge_keys", "service_id": "S1", "keys": ["via-quorum"]}))
        .await;
    assert_eq!(reply.result.status, Status::Succeeded, "{}", reply.json);
    assert_eq!(
        reply.result.attempts, 5,
        "the second delivery came back from the delay queue"
    );
    world.finish().await;
}

#[tokio::test]
async fn deleted_delay_queue_fails_job_with_result() {
    let mut world = World::start("delay_queue_gone").await;
    for queue in world.settings.retry_queues() {
        world
            .client
            .channel
            .queue_delete(
                queue.as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await
            .unwrap();
    }
    world.sim.inject(Fault::status("/service/S1/purge", 503, 4));
    let reply = world
        .run(json!({"type": "purge_keys", "service_id": "S1", "keys": ["nowhere-to-wait"]}))
        .await;
    assert_eq!(reply.result.status, Status::Failed, "{}", reply.json);
    assert_eq!(
        reply.json["output"]["not_purged"],
        json!(["nowhere-to-wait"])
    );
    let dead = world.dead_letters(1).await;
    assert_eq!(
        header(&dead[0], "x-error-code").as_deref(),
        Some("fastly_server_error")
    );
    world.finish().await;
}
