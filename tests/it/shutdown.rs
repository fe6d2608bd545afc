//! Graceful shutdown: no new deliveries, open batches sent, jobs in progress finished within
//! the deadline, the rest given back to the queue for another worker.

use std::time::Duration;

use fastly_purge_worker::job::Status;
use serde_json::json;

use crate::world::WorldBuilder;

#[tokio::test]
async fn shutdown_finishes_jobs_in_progress() {
    let mut builder = WorldBuilder::new("shutdown_drain");
    builder.sim.latency = Duration::from_millis(300);
    // A long linger: the shutdown must send the open batches instead of waiting for it.
    builder.settings.batch.linger_ms = 2_000;
    let mut world = builder.start().await;
    let mut correlations = Vec::new();
    for job in 0..20 {
        correlations.push(
            world
                .send(
                    json!({"type": "purge_keys", "service_id": "S1", "keys": [format!("k{job}")]}),
                )
                .await,
        );
    }
    // Let the worker take the jobs, then stop it while they wait in their batch.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let counts = world.stop_and_count().await;
    assert_eq!(counts.jobs, 0, "every job finished and was acked");
    for correlation in correlations {
        let reply = world.client.reply_for(&correlation).await;
        assert_eq!(reply.result.status, Status::Succeeded, "{}", reply.json);
    }
    world.finish().await;
}

#[tokio::test]
async fn shutdown_deadline_gives_jobs_back() {
    let mut builder = WorldBuilder::new("shutdown_requeue");
    builder.sim.latency = Duration::from_millis(1500);
    builder.settings.fastly.request_timeout_ms = 5_000;
    builder.settings.redelivery.delivery_budget_ms = 30_000;
    builder.settings.worker.shutdown_timeout_ms = 200;
    let mut world = builder.start().await;
    let mut correlations = Vec::new();
    for job in 0..5 {
        correlations.push(
            world
                .send(json!({"type": "get_token", "id": format!("slow-{job}")}))
                .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let counts = world.stop_and_count().await;
    assert_eq!(counts.jobs, 5, "unfinished jobs went back to the queue");
    assert_eq!(counts.dead, 0);

    // Another worker takes them over.
    world.sim.set_latency(Duration::ZERO);
    world.restart_worker().await;
    for correlation in correlations {
        let reply = world.client.reply_for(&correlation).await;
        assert_eq!(reply.result.status, Status::Succeeded, "{}", reply.json);
        assert!(
            reply.result.redelivered,
            "a job given back is marked redelivered"
        );
    }
    world.finish().await;
}
