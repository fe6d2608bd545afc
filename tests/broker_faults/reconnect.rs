//! Broker trouble: the worker reconnects, declares its topology again, reports itself not
//! ready while it is down, and goes on with jobs.

use std::time::Duration;

use fastly_purge_worker::job::Status;
use lapin::options::QueueDeleteOptions;
use serde_json::json;

use crate::world::{Client, World, WorldBuilder};
use crate::{BrokerGuard, rabbitmqctl, serial};

const RECOVERY: Duration = Duration::from_secs(60);

/// Returns the broker's process ids of the connections whose client properties carry `name`, the
/// worker's unique connection name (RabbitMQ 3.10 has no `user_provided_name` column).
fn connections_named(name: &str) -> Vec<String> {
    rabbitmqctl(&[
        "list_connections",
        "pid",
        "client_properties",
        "--no-table-headers",
        "-q",
    ])
    .lines()
    .filter(|line| line.contains(name))
    .filter_map(|line| line.split('\t').next())
    .map(|connection| connection.trim().to_owned())
    .collect()
}

async fn named_world(test: &str) -> (World, String) {
    let mut builder = WorldBuilder::new(test);
    let name = format!("fpw-{}", builder.prefix);
    builder.settings.broker.connection_name = name.clone();
    (builder.start().await, name)
}

async fn job_succeeds(world: &mut World, key: &str) {
    let reply = world
        .run(json!({"type": "purge_keys", "service_id": "S1", "keys": [key]}))
        .await;
    assert_eq!(reply.result.status, Status::Succeeded, "{}", reply.json);
}

#[tokio::test]
async fn closed_connection_reconnects() {
    let _broker = serial().await;
    let (mut world, name) = named_world("closed_connection").await;
    job_succeeds(&mut world, "before").await;
    let mut ready = world.worker.as_ref().unwrap().ready();

    let connections = connections_named(&name);
    assert_eq!(connections.len(), 1, "{connections:?}");
    rabbitmqctl(&["close_connection", &connections[0], "closed by a test"]);
    tokio::time::timeout(RECOVERY, ready.wait_for(|ready| !*ready))
        .await
        .expect("the worker reports itself not ready")
        .unwrap();
    tokio::time::timeout(RECOVERY, ready.wait_for(|ready| *ready))
        .await
        .expect("the worker reconnects")
        .unwrap();
    job_succeeds(&mut world, "after").await;
    world.finish().await;
}

#[tokio::test]
async fn deleted_queue_cancels_consumer_then_recovers() {
    let _broker = serial().await;
    let (mut world, _) = named_world("deleted_queue").await;
    let mut ready = world.worker.as_ref().unwrap().ready();
    world
        .client
        .channel
        .queue_delete(
            world.settings.broker.jobs_queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    tokio::time::timeout(RECOVERY, ready.wait_for(|ready| !*ready))
        .await
        .expect("the cancelled consumer ends the session")
        .unwrap();
    tokio::time::timeout(RECOVERY, ready.wait_for(|ready| *ready))
        .await
        .expect("the worker declares the queue again and consumes")
        .unwrap();
    job_succeeds(&mut world, "after-delete").await;
    world.finish().await;
}

#[tokio::test]
async fn broker_restart_reconnects() {
    let _broker = serial().await;
    let _restart = BrokerGuard;
    let (world, _) = named_world("broker_restart").await;
    let settings = world.settings.clone();
    let mut ready = world.worker.as_ref().unwrap().ready();

    let readyz = format!(
        "http://{}/readyz",
        world.worker.as_ref().unwrap().telemetry_addr().unwrap()
    );
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 200);

    rabbitmqctl(&["stop_app"]);
    tokio::time::timeout(RECOVERY, ready.wait_for(|ready| !*ready))
        .await
        .expect("the worker reports itself not ready while the broker is down")
        .unwrap();
    let down = reqwest::get(&readyz).await.unwrap();
    assert_eq!(down.status(), 503, "/readyz fails while the broker is down");
    assert!(down.text().await.unwrap().contains("RabbitMQ"));
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup", "--timeout", "60"]);
    tokio::time::timeout(RECOVERY, ready.wait_for(|ready| *ready))
        .await
        .expect("the worker reconnects after the restart")
        .unwrap();
    assert_eq!(
        reqwest::get(&readyz).await.unwrap().status(),
        200,
        "/readyz passes again"
    );
    let metrics = crate::world::scrape(world.worker.as_ref().unwrap()).await;
    assert_eq!(
        crate::world::metric(&metrics, "fastly_purge_worker_broker_reconnects_total", &[]),
        1.0
    );

    // The test's own connection died with the broker; a new client publishes the next job.
    let mut world = world;
    world.client = Client::connect(&settings).await;
    job_succeeds(&mut world, "after-restart").await;
    world.finish().await;
}

/// Sets a RabbitMQ application setting for the duration of a test, then restores it.
struct BrokerSetting {
    key: &'static str,
    previous: String,
}

impl BrokerSetting {
    fn set(key: &'static str, value: u64) -> BrokerSetting {
        let previous = rabbitmqctl(&["eval", &format!("application:get_env(rabbit, {key}).")]);
        let previous = previous
            .trim()
            .trim_start_matches("{ok,")
            .trim_end_matches('}')
            .to_owned();
        rabbitmqctl(&[
            "eval",
            &format!("application:set_env(rabbit, {key}, {value})."),
        ]);
        BrokerSetting { key, previous }
    }
}

impl Drop for BrokerSetting {
    fn drop(&mut self) {
        if self.previous.chars().all(|c| c.is_ascii_digit()) && !self.previous.is_empty() {
            rabbitmqctl(&[
                "eval",
                &format!(
                    "application:set_env(rabbit, {}, {}).",
                    self.key, self.previous
                ),
            ]);
        }
    }
}

#[tokio::test]
async fn ack_timeout_closes_channel_then_job_redelivered() {
    let _broker = serial().await;
    // The broker checks consumer timeouts on its channel tick; both are shortened for this
    // test and restored afterwards. They apply to channels opened from now on.
    let _tick = BrokerSetting::set("channel_tick_interval", 200);
    let _timeout = BrokerSetting::set("consumer_timeout", 1000);
    let mut builder = WorldBuilder::new("ack_timeout");
    builder.sim.latency = Duration::from_millis(3000);
    builder.settings.fastly.request_timeout_ms = 10_000;
    builder.settings.redelivery.delivery_budget_ms = 60_000;
    let mut world = builder.start().await;
    let mut ready = world.worker.as_ref().unwrap().ready();

    let correlation = world.send(json!({"type": "get_token", "id": "slow"})).await;
    tokio::time::timeout(RECOVERY, ready.wait_for(|ready| !*ready))
        .await
        .expect("the broker closes the channel of a delivery held past its timeout")
        .unwrap();
    world.sim.set_latency(Duration::ZERO);
    tokio::time::timeout(RECOVERY, ready.wait_for(|ready| *ready))
        .await
        .expect("the worker opens a new session")
        .unwrap();
    let reply = world.client.reply_for(&correlation).await;
    assert_eq!(reply.result.status, Status::Succeeded, "{}", reply.json);
    assert!(reply.result.redelivered);
    world.finish().await;
}
