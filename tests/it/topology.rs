//! Topology: queue arguments, conflicts with existing queues, exchange bindings, quorum queues.

use fastly_purge_worker::config::{Binding, QueueType};
use fastly_purge_worker::job::Status;
use lapin::options::{BasicPublishOptions, ExchangeDeleteOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::json;

use crate::world::{WorldBuilder, amqp_url, delete_worker_queues, test_settings, unique_prefix};

#[tokio::test]
async fn conflicting_queue_named_in_error() {
    let prefix = unique_prefix("conflict");
    let mut settings = test_settings(&prefix);
    settings.broker.queue_type = QueueType::Quorum;
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    // Someone declared the jobs queue before, as a plain classic queue.
    channel
        .queue_declare(
            settings.broker.jobs_queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();

    let config = settings
        .clone()
        .resolve_with_token(url::Url::parse("http://127.0.0.1:9").unwrap(), "t")
        .unwrap();
    let err = match fastly_purge_worker::worker::start(config).await {
        Ok(_) => panic!("the worker started despite the conflicting queue"),
        Err(err) => format!("{err:#}"),
    };
    assert!(err.contains(&settings.broker.jobs_queue), "{err}");
    assert!(
        err.contains("x-queue-type") || err.contains("x-dead-letter-exchange"),
        "{err}"
    );

    let channel = connection.create_channel().await.unwrap();
    delete_worker_queues(&channel, &settings).await;
}

#[tokio::test]
async fn exchange_binding_routes_cms_events() {
    let mut builder = WorldBuilder::new("binding");
    let exchange = format!("{}.cms", builder.prefix);
    builder.settings.broker.bindings = vec![Binding {
        exchange: exchange.clone(),
        exchange_type: "topic".to_owned(),
        routing_key: "content.#".to_owned(),
    }];
    let mut world = builder.start().await;

    let body =
        serde_json::to_vec(&json!({"type": "purge_keys", "service_id": "S1", "keys": ["post-7"]}))
            .unwrap();
    let properties: BasicProperties = world.client.reply_properties("via-exchange");
    world
        .client
        .channel
        .basic_publish(
            exchange.as_str().into(),
            "content.published.article".into(),
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let reply = world.client.reply_for("via-exchange").await;
    assert_eq!(reply.result.status, Status::Succeeded, "{}", reply.json);
    assert!(world.sim.purged_keys("S1").contains("post-7"));

    let _ = world
        .client
        .channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    world.finish().await;
}

#[tokio::test]
async fn quorum_queues_work_end_to_end() {
    let mut builder = WorldBuilder::new("quorum");
    builder.settings.broker.queue_type = QueueType::Quorum;
    let mut world = builder.start().await;
    let reply = world
        .run(json!({"type": "purge_all", "service_id": "S1"}))
        .await;
    assert_eq!(reply.result.status, Status::Succeeded, "{}", reply.json);

    // Declaring again with the same arguments is accepted, as a second worker would.
    let config = world
        .settings
        .clone()
        .resolve_with_token(url::Url::parse(&world.sim.base_url()).unwrap(), "t")
        .unwrap();
    let connection = fastly_purge_worker::broker::connect(&config.settings.broker)
        .await
        .unwrap();
    fastly_purge_worker::broker::declare_topology(
        &connection,
        &config.settings.broker,
        &config.settings.retry_queues(),
    )
    .await
    .unwrap();
    let _ = connection.close(200, "done".into()).await;
    world.finish().await;
}
