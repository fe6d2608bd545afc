//! The consumer: settling deliveries on the channel that delivered them.

use crate::world::{Client, delete_worker_queues, test_settings, unique_prefix};
use fastly_purge_worker::broker::{BrokerError, JobConsumer, connect, declare_topology};

#[tokio::test]
async fn ack_after_channel_closed_fails() {
    let prefix = unique_prefix("ack-closed");
    let settings = test_settings(&prefix);
    let connection = connect(&settings.broker).await.unwrap();
    declare_topology(&connection, &settings.broker, &settings.retry_queues())
        .await
        .unwrap();
    let client = Client::connect(&settings).await;
    client.send(&serde_json::json!({"type": "get_token"})).await;

    let mut consumer = JobConsumer::start(&connection, &settings.broker, 10, "ack-closed")
        .await
        .unwrap();
    let incoming = consumer.next().await.unwrap().unwrap();
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
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(depth, 1);

    let channel = connection.create_channel().await.unwrap();
    delete_worker_queues(&channel, &settings).await;
}
