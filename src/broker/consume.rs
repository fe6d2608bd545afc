//! Consuming: a consumer on the jobs queue with a prefetch limit, and [`Incoming`], a delivery
//! with the properties the pipeline reads and the only handle that can ack it.

use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};

use super::BrokerError;
use crate::config::BrokerSettings;
use crate::job::MessageMeta;

/// A consumer of the jobs queue on its own channel.
pub struct JobConsumer {
    channel: Channel,
    consumer: Consumer,
    /// Prefix of the delay queues, to recognize jobs that come back from one.
    retry_prefix: String,
}

impl JobConsumer {
    /// Opens a channel, sets the prefetch limit, and starts consuming the jobs queue.
    pub async fn start(
        connection: &Connection,
        settings: &BrokerSettings,
        prefetch: u16,
        tag: &str,
    ) -> Result<JobConsumer, BrokerError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening the consumer channel"))?;
        // The prefetch bounds the deliveries in progress; it must be set before consuming.
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
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
        Ok(JobConsumer {
            channel,
            consumer,
            retry_prefix: format!("{}.", settings.retry_queue),
        })
    }

    /// Returns the next delivery; `None` when the consumer was cancelled or its channel closed.
    pub async fn next(&mut self) -> Option<Result<Incoming, BrokerError>> {
        let delivery = self.consumer.next().await?;
        Some(
            delivery
                .map(|delivery| Incoming::new(delivery, &self.retry_prefix))
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

    /// Gives every unacked delivery of this channel back to the queue (nack of all outstanding
    /// deliveries with requeue), for a shutdown that leaves work for other workers.
    pub async fn requeue_unacked(&self) -> Result<(), BrokerError> {
        self.channel
            .basic_nack(
                0,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            )
            .await
            .map_err(BrokerError::amqp("requeueing unacked deliveries"))
    }

    pub async fn close(&self) {
        let _ = self.channel.close(200, "worker stopping".into()).await;
    }
}

/// Header that counts a job's trips through a delay queue.
pub const RETRY_COUNT_HEADER: &str = "x-retry-count";
/// Header that counts a job's deliveries in which Fastly requests failed transiently.
pub const ATTEMPT_COUNT_HEADER: &str = "x-attempt-count";
/// Header that counts the Fastly requests of a job's earlier deliveries.
pub const REQUEST_ATTEMPTS_HEADER: &str = "x-request-attempts";

/// A job's history of retries through the delay queues, read from its headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryCounts {
    /// Trips through a delay queue so far.
    pub retries: u32,
    /// Earlier deliveries whose Fastly requests failed transiently.
    pub failed_attempts: u32,
    /// Fastly requests made in earlier deliveries.
    pub requests: u32,
}

impl RetryCounts {
    /// Reads the counters of a job back from a delay queue; a header of an unexpected type
    /// counts as absent.
    ///
    /// The counters are trusted only when RabbitMQ's `x-death` header shows that the message
    /// expired in one of the worker's delay queues (`retry_prefix` then a level), so a
    /// producer's own headers count for nothing. Dead letters carry no counters, so a replayed
    /// one starts from zero as well.
    pub fn from_headers(headers: Option<&FieldTable>, retry_prefix: &str) -> RetryCounts {
        if !headers.is_some_and(|table| expired_in_delay_queue(table, retry_prefix)) {
            return RetryCounts::default();
        }
        let read = |name: &str| {
            headers
                .and_then(|table| table.inner().get(name))
                .and_then(amqp_integer)
                .unwrap_or(0)
        };
        RetryCounts {
            retries: read(RETRY_COUNT_HEADER),
            failed_attempts: read(ATTEMPT_COUNT_HEADER),
            requests: read(REQUEST_ATTEMPTS_HEADER),
        }
    }
}

/// Returns whether the `x-death` header names a queue that starts with `retry_prefix`.
fn expired_in_delay_queue(headers: &FieldTable, retry_prefix: &str) -> bool {
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        return false;
    };
    deaths.as_slice().iter().any(|death| match death {
        AMQPValue::FieldTable(death) => match death.inner().get("queue") {
            Some(AMQPValue::LongString(queue)) => {
                queue.as_bytes().starts_with(retry_prefix.as_bytes())
            }
            Some(AMQPValue::ShortString(queue)) => queue.as_str().starts_with(retry_prefix),
            _ => false,
        },
        _ => false,
    })
}

/// Reads a non-negative integer header value of any AMQP integer type.
fn amqp_integer(value: &AMQPValue) -> Option<u32> {
    let wide: i64 = match value {
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::LongLongInt(v) => *v,
        _ => return None,
    };
    u32::try_from(wide).ok()
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
    /// Where the job stands in its retries through the delay queues, from its headers.
    pub retries: RetryCounts,
    pub(super) exchange: String,
    pub(super) routing_key: String,
    /// The original properties, kept whole for dead letters.
    pub(super) properties: BasicProperties,
    acker: lapin::Acker,
    /// Set by the first ack, reject or requeue. lapin's acker cannot tell a delivery settled
    /// before its channel closed from one that never was.
    settling: AtomicBool,
}

impl Incoming {
    fn new(delivery: lapin::message::Delivery, retry_prefix: &str) -> Incoming {
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
            retries: RetryCounts::from_headers(properties.headers().as_ref(), retry_prefix),
            exchange: delivery.exchange.as_str().to_owned(),
            routing_key: delivery.routing_key.as_str().to_owned(),
            body: delivery.data,
            properties,
            acker: delivery.acker,
            settling: AtomicBool::new(false),
        }
    }

    /// Acknowledges the delivery on the channel that delivered it.
    pub async fn ack(&self) -> Result<(), BrokerError> {
        let first = self.first_settlement();
        let sent = self.acker.ack(BasicAckOptions::default()).await;
        self.settled("acking", first, sent)
    }

    /// Rejects the delivery without requeueing it, so RabbitMQ dead-letters it through the
    /// jobs queue's dead-letter exchange. For a job whose result or dead letter the broker
    /// would not take: running it again could not fix that, and a loop would repeat its purges.
    pub async fn reject(&self) -> Result<(), BrokerError> {
        let first = self.first_settlement();
        let sent = self
            .acker
            .nack(BasicNackOptions {
                requeue: false,
                ..BasicNackOptions::default()
            })
            .await;
        self.settled("rejecting", first, sent)
    }

    /// Gives the delivery back to the queue for this or another worker.
    pub async fn requeue(&self) -> Result<(), BrokerError> {
        let first = self.first_settlement();
        let sent = self
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await;
        self.settled("requeueing", first, sent)
    }

    /// Returns whether this is the delivery's first ack, reject or requeue.
    fn first_settlement(&self) -> bool {
        !self.settling.swap(true, Ordering::AcqRel)
    }

    /// Converts lapin's result into an error unless the ack or nack was sent. lapin returns
    /// `false`, sending nothing, when the delivery's channel has closed or it was settled before.
    fn settled(
        &self,
        action: &str,
        first: bool,
        sent: Result<bool, lapin::Error>,
    ) -> Result<(), BrokerError> {
        let action = format!("{action} delivery {}", self.delivery_tag);
        match sent {
            Ok(true) => Ok(()),
            Ok(false) if first && self.acker.poisoned() => {
                Err(BrokerError::ChannelClosed { action })
            }
            Ok(false) => Err(BrokerError::AlreadySettled { action }),
            Err(cause) => Err(BrokerError::Amqp { action, cause }),
        }
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldArray, LongString};

    use super::*;

    fn headers(death_queue: Option<&str>) -> FieldTable {
        let mut headers = FieldTable::default();
        headers.insert(RETRY_COUNT_HEADER.into(), AMQPValue::LongLongInt(2));
        headers.insert(ATTEMPT_COUNT_HEADER.into(), AMQPValue::ShortShortUInt(1));
        headers.insert(
            REQUEST_ATTEMPTS_HEADER.into(),
            AMQPValue::LongString("7".into()),
        );
        if let Some(queue) = death_queue {
            let mut death = FieldTable::default();
            death.insert(
                "queue".into(),
                AMQPValue::LongString(LongString::from(queue.as_bytes().to_vec())),
            );
            headers.insert(
                "x-death".into(),
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
            );
        }
        headers
    }

    #[test]
    fn counters_read_after_delay_queue() {
        let counts = RetryCounts::from_headers(
            Some(&headers(Some("fastly.jobs.retry.2"))),
            "fastly.jobs.retry.",
        );
        assert_eq!(counts.retries, 2);
        assert_eq!(counts.failed_attempts, 1);
        assert_eq!(counts.requests, 0, "a string is not a count");
    }

    #[test]
    fn counters_of_producers_ignored() {
        let prefix = "fastly.jobs.retry.";
        assert_eq!(
            RetryCounts::from_headers(Some(&headers(None)), prefix),
            RetryCounts::default()
        );
        let elsewhere = headers(Some("fastly.jobs"));
        assert_eq!(
            RetryCounts::from_headers(Some(&elsewhere), prefix),
            RetryCounts::default()
        );
        assert_eq!(
            RetryCounts::from_headers(None, prefix),
            RetryCounts::default()
        );
    }
}
