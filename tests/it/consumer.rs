//! The consumer: settling deliveries on the channel that delivered them.

use std::time::Duration;

use fastly_purge_worker::broker::{BrokerError, Incoming, JobConsumer, connect, declare_topology};
use fastly_purge_worker::config::Settings;
use lapin::Connection;

use crate::world::{Client, QueueCleanup, test_settings, unique_prefix};

/// Declares the worker queues, publishes one job, and consumes it.
async fn one_delivery(settings: &Settings) -> (Connection, Client, JobConsumer, Incoming) {
    let connection = connect(&settings.broker).await.unwrap();
    declare_topology(&connection, &settings.broker, &settings.retry_queues())
        .await
        .unwrap();
    let client = Client::connect(settings).await;
    client.send(&serde_json::json!({"type": "get_token"})).await;
    let mut consumer = JobConsumer::start(&connection, &settings.broker, 10, "consumer-test")
        .await
        .unwrap();
    let incoming = consumer.next().await.unwrap().unwrap();
    (connection, client, consumer, incoming)
}

#[tokio::test]
async fn ack_after_channel_closed_fails() {
    let settings = test_settings(&unique_prefix("ack-closed"));
    let _cleanup = QueueCleanup::new(&settings);
    let (connection, client, consumer, incoming) = one_delivery(&settings).await;

    consumer.close().await;
    let err = incoming.ack().await.unwrap_err();

    assert!(matches!(err, BrokerError::ChannelClosed { .. }), "{err:?}");
    assert!(err.to_string().contains("delivers the job again"), "{err}");
    // The broker took the delivery back when the channel closed, so the job is not lost.
    let mut depth = 0;
    for _ in 0..100 {
        depth = client.depth(&settings.broker.jobs_queue).await;
        if depth == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(depth, 1);
    let _ = connection.close(200, "test done".into()).await;
}

#[tokio::test]
async fn second_settlement_already_settled() {
    let settings = test_settings(&unique_prefix("ack-twice"));
    let _cleanup = QueueCleanup::new(&settings);
    let (connection, _client, consumer, incoming) = one_delivery(&settings).await;

    incoming.ack().await.unwrap();
    let err = incoming.reject().await.unwrap_err();

    assert!(matches!(err, BrokerError::AlreadySettled { .. }), "{err:?}");
    consumer.close().await;
    let _ = connection.close(200, "test done".into()).await;
}

#[tokio::test]
async fn settled_then_closed_already_settled() {
    let settings = test_settings(&unique_prefix("ack-closed-twice"));
    let _cleanup = QueueCleanup::new(&settings);
    let (connection, _client, consumer, incoming) = one_delivery(&settings).await;

    incoming.ack().await.unwrap();
    consumer.close().await;
    let err = incoming.reject().await.unwrap_err();

    // The ack went through before the channel closed, so the job is not delivered again.
    assert!(matches!(err, BrokerError::AlreadySettled { .. }), "{err:?}");
    let _ = connection.close(200, "test done".into()).await;
}
