//! Fastly failures: retries after 5xx, no retry on 4xx, missing scopes, partial failure, and the
//! dead letters of failed jobs.

use fastly_purge_worker::job::{ErrorCode, Status};
use fastly_purge_worker::sim::Fault;
use lapin::BasicProperties;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;

use crate::world::{World, WorldBuilder, header};

#[tokio::test]
async fn server_errors_retried_then_success() {
    let mut world = World::start("retry_5xx").await;
    world.sim.inject(Fault::status("/service/S1/purge", 503, 2));
    let reply = world
        .run(json!({"type": "purge_keys", "service_id": "S1", "keys": ["a"]}))
        .await;
    assert_eq!(reply.result.status, Status::Succeeded, "{}", reply.json);
    assert_eq!(reply.result.attempts, 3);
    let purges = world
        .sim
        .requests_to("/service/S1/purge")
        .into_iter()
        .map(|r| r.status)
        .collect::<Vec<_>>();
    assert_eq!(purges, [503, 503, 200]);
    let counts = world.stop_and_count().await;
    assert_eq!(counts.jobs, 0, "the delivery was acked");
    assert_eq!(counts.dead, 0, "a job that succeeded is not dead-lettered");
    world.finish().await;
}

#[tokio::test]
async fn retries_exhausted_fail_and_dead_letter() {
    let mut world = World::start("retry_exhausted").await;
    world
        .sim
        .inject(Fault::status("/service/S1/purge_all", 502, 100));
    let reply = world
        .run(json!({"id": "doomed", "type": "purge_all", "service_id": "S1"}))
        .await;
    assert_eq!(reply.result.status, Status::Failed, "{}", reply.json);
    // 4 attempts in-process (fastly.retry.max_attempts) in each of 2 deliveries
    // (redelivery.max_attempts), the second one after a trip through the delay queue.
    assert_eq!(reply.result.attempts, 8);
    let purge_alls = world.sim.requests_to("/service/S1/purge_all").len();
    assert_eq!(purge_alls, 8);
    let error = reply.result.error.as_ref().unwrap();
    assert_eq!(error.code, ErrorCode::FastlyServerError);
    assert_eq!(error.http_status, Some(502));

    let dead = world.dead_letters(1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(header(&dead[0], "x-job-id").as_deref(), Some("doomed"));
    assert_eq!(
        header(&dead[0], "x-error-code").as_deref(),
        Some("fastly_server_error")
    );
    let original: serde_json::Value = serde_json::from_slice(&dead[0].data).unwrap();
    assert_eq!(
        original["service_id"], "S1",
        "the dead letter keeps the original body"
    );
    world.finish().await;
}

#[tokio::test]
async fn forbidden_not_retried() {
    let mut world = World::start("no_retry_403").await;
    world.sim.inject(Fault::status("/service/S1/purge", 403, 5));
    let reply = world
        .run(json!({"type": "purge_keys", "service_id": "S1", "keys": ["a"]}))
        .await;
    assert_eq!(reply.result.status, Status::Failed, "{}", reply.json);
    assert_eq!(reply.result.attempts, 1);
    let error = reply.result.error.as_ref().unwrap();
    assert_eq!(error.code, ErrorCode::FastlyForbidden);
    assert_eq!(error.http_status, Some(403));
    let purges = world.sim.requests_to("/service/S1/purge").len();
    assert_eq!(purges, 1);
    assert_eq!(world.dead_letters(1).await.len(), 1);
    world.finish().await;
}

#[tokio::test]
async fn missing_scope_rejected_without_request() {
    let mut world = WorldBuilder::new("missing_scope")
        .account("purger", &["purge_select"])
        .start()
        .await;
    let before = world.sim.requests().len();
    let reply = world
        .run(json!({"type": "purge_all", "account": "purger", "service_id": "S1"}))
        .await;
    assert_eq!(reply.result.status, Status::Rejected, "{}", reply.json);
    let error = reply.result.error.as_ref().unwrap();
    assert_eq!(error.code, ErrorCode::MissingScope);
    assert!(error.message.contains("purge_all"), "{}", error.message);
    assert_eq!(world.sim.requests().len(), before);

    let read = world
        .run(json!({"type": "list_services", "account": "purger"}))
        .await;
    assert_eq!(read.result.status, Status::Rejected);
    assert!(read.result.error.unwrap().message.contains("global:read"));
    world.finish().await;
}

#[tokio::test]
async fn fastly_error_message_carried_into_result() {
    let mut world = World::start("error_text").await;
    let service = "DCsx1c14IixEK8PqF0TvqK";
    let reply = world
        .run(json!({"type": "get_service", "service_id": service}))
        .await;
    assert_eq!(reply.result.status, Status::Failed, "{}", reply.json);
    let error = reply.result.error.unwrap();
    assert_eq!(error.http_status, Some(400));
    assert!(error.message.contains(service), "{}", error.message);
    world.finish().await;
}

#[tokio::test]
async fn partial_failure_lists_keys_not_purged() {
    let mut world = World::start("partial_failure").await;
    world.sim.inject(Fault::status("/service/S1/purge", 400, 1));
    let keys: Vec<String> = (0..257).map(|i| format!("key-{i}")).collect();
    let reply = world
        .run(json!({"type": "purge_keys", "service_id": "S1", "keys": keys}))
        .await;
    assert_eq!(reply.result.status, Status::Failed, "{}", reply.json);
    let output = &reply.json["output"];
    let purged = output["purge_ids"].as_object().unwrap().len();
    let not_purged = output["not_purged"].as_array().unwrap().len();
    assert_eq!(purged + not_purged, 257);
    assert!([1, 256].contains(&not_purged), "{not_purged}");
    assert_eq!(world.sim.purged_keys("S1").len(), purged);
    world.finish().await;
}

#[tokio::test]
async fn full_reply_queue_result_goes_to_results_queue() {
    let mut world = World::start("full_reply_to").await;
    // A reply queue that takes nothing: RabbitMQ nacks every publish to it.
    let full = format!("{}.full", world.settings.broker.jobs_queue);
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    world
        .client
        .channel
        .queue_declare(
            full.as_str().into(),
            QueueDeclareOptions::default(),
            arguments,
        )
        .await
        .unwrap();

    let body =
        serde_json::to_vec(&json!({"id": "to-full", "type": "purge_all", "service_id": "S1"}))
            .unwrap();
    let properties = BasicProperties::default().with_reply_to(full.as_str().into());
    world.client.publish(&body, properties).await;

    let results = world.results_queue(1).await;
    assert_eq!(results.len(), 1);
    let result: serde_json::Value = serde_json::from_slice(&results[0].data).unwrap();
    assert_eq!(result["job_id"], "to-full");
    assert_eq!(result["status"], "succeeded");

    let counts = world.stop_and_count().await;
    assert_eq!(counts.jobs, 0);
    let purge_alls = world.sim.requests_to("/service/S1/purge_all").len();
    assert_eq!(
        purge_alls, 1,
        "the job runs once, not again for every failed publish"
    );
    let _ = world
        .client
        .channel
        .queue_delete(full.as_str().into(), QueueDeleteOptions::default())
        .await;
    world.finish().await;
}
