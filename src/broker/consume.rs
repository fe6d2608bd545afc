//! Consuming: a consumer on the jobs queue with a prefetch limit, and [`Incoming`], a delivery
//! with the properties the pipeline reads and the only handle that can ack it.

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer};

use super::BrokerError;
use crate::config::BrokerSettings;
use crate::job::MessageMeta;

/// A consumer of the jobs queue on its own channel.
pub struct JobConsumer {
    channel: Channel,
    consumer: Consumer,
}

impl JobConsumer {
    /// Opens a channel, sets the prefetch limit, and starts consuming the jobs queue.
    pub async fn start(
        connection: &Connection,
        settings: &BrokerSettings,
        tag: &str,
    ) -> Result<JobConsumer, BrokerError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening the consumer channel"))?;
        // The prefetch bounds the deliveries in progress; it must be set before consuming.
        channel
            .basic_qos(settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(BrokerError::amqp("setting the prefetch (basic.qos)"))?;
        let consumer = channel
            .basic_consume(
                settings.jobs_queue.as_str().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::amqp(format!(
                "consuming queue {:?}",
                settings.jobs_queue
            )))?;
        Ok(JobConsumer { channel, consumer })
    }

    /// Returns the next delivery; `None` when the consumer was cancelled or its channel closed.
    pub async fn next(&mut self) -> Option<Result<Incoming, BrokerError>> {
        let delivery = self.consumer.next().await?;
        Some(
            delivery
                .map(Incoming::new)
                .map_err(BrokerError::amqp("receiving a delivery")),
        )
    }

    /// Stops new deliveries. Deliveries already received can still be acked.
    pub async fn cancel(&self) -> Result<(), BrokerError> {
        self.channel
            .basic_cancel(self.consumer.tag(), BasicCancelOptions::default())
            .await
            .map_err(BrokerError::amqp("cancelling the consumer"))
    }

    pub async fn close(&self) {
        let _ = self.channel.close(200, "worker stopping".into()).await;
    }
}

/// One delivery of the jobs queue.
#[derive(Debug)]
pub struct Incoming {
    pub body: Vec<u8>,
    pub meta: MessageMeta,
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
    pub redelivered: bool,
    pub delivery_tag: u64,
    pub(super) exchange: String,
    pub(super) routing_key: String,
    /// The original properties, kept whole for dead letters.
    pub(super) properties: BasicProperties,
    acker: lapin::Acker,
}

impl Incoming {
    fn new(delivery: lapin::message::Delivery) -> Incoming {
        let properties = delivery.properties;
        let text = |value: Option<&lapin::types::ShortString>| {
            value
                .map(|s| s.as_str().to_owned())
                .filter(|s| !s.is_empty())
        };
        Incoming {
            meta: MessageMeta {
                content_type: text(properties.content_type().as_ref()),
                content_encoding: text(properties.content_encoding().as_ref()),
                message_id: text(properties.message_id().as_ref()),
            },
            reply_to: text(properties.reply_to().as_ref()),
            correlation_id: text(properties.correlation_id().as_ref()),
            redelivered: delivery.redelivered,
            delivery_tag: delivery.delivery_tag,
            exchange: delivery.exchange.as_str().to_owned(),
            routing_key: delivery.routing_key.as_str().to_owned(),
            body: delivery.data,
            properties,
            acker: delivery.acker,
        }
    }

    /// Acknowledges the delivery on the channel that delivered it.
    pub async fn ack(&self) -> Result<(), BrokerError> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
            .map_err(BrokerError::amqp(format!(
                "acking delivery {}",
                self.delivery_tag
            )))
    }

    /// Gives the delivery back to the queue for this or another worker.
    pub async fn requeue(&self) -> Result<(), BrokerError> {
        self.acker
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .map(|_| ())
            .map_err(BrokerError::amqp(format!(
                "requeueing delivery {}",
                self.delivery_tag
            )))
    }
}
