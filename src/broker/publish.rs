//! Publishing with publisher confirms: results to a job's reply_to or the results queue, and
//! dead letters (the original message plus error headers) to the dead-letter queue.
//!
//! Every publish waits for the broker's confirm, bounded by `publish_timeout_ms`, because a
//! delivery may be acked only after its result is safely stored.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use super::{BrokerError, Incoming};
use crate::config::BrokerSettings;

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// Where a result goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultTarget {
    /// The job's reply_to queue, through the default exchange.
    ReplyTo(String),
    /// The results queue, for jobs without reply_to or whose reply_to queue is gone.
    ResultsQueue,
}

/// Why a message went to the dead-letter queue; written into its headers.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub job_id: Option<&'a str>,
    pub status: &'a str,
    pub code: &'a str,
    pub message: &'a str,
    pub attempts: u32,
}

/// Publishes results and dead letters on a confirm-mode channel of its own.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    results_queue: String,
    dead_letter_queue: String,
    timeout: Duration,
}

impl Publisher {
    pub async fn open(
        connection: &Connection,
        settings: &BrokerSettings,
    ) -> Result<Publisher, BrokerError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening the publisher channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(BrokerError::amqp("enabling publisher confirms"))?;
        Ok(Publisher {
            channel,
            results_queue: settings.results_queue.clone(),
            dead_letter_queue: settings.dead_letter_queue.clone(),
            timeout: settings.publish_timeout(),
        })
    }

    /// Returns whether the publisher's channel is still open. After a channel error every
    /// publish fails, so the worker must stop rather than requeue deliveries in a loop.
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Publishes a job's result and waits for the confirm. Returns where it went: a result
    /// for a reply_to queue that no longer exists goes to the results queue instead.
    pub async fn publish_result(
        &self,
        incoming: &Incoming,
        job_id: Option<&str>,
        status: &str,
        body: &[u8],
    ) -> Result<ResultTarget, BrokerError> {
        let mut headers = FieldTable::default();
        if let Some(job_id) = job_id {
            headers.insert("x-job-id".into(), long_string(job_id));
        }
        headers.insert("x-job-status".into(), long_string(status));
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(PERSISTENT)
            .with_message_id(uuid::Uuid::new_v4().to_string().into())
            .with_app_id(env!("CARGO_PKG_NAME").into())
            .with_type("fastly.job_result".into())
            .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
            .with_headers(headers);
        if let Some(correlation_id) = &incoming.correlation_id {
            properties = properties.with_correlation_id(correlation_id.as_str().into());
        }

        if let Some(reply_to) = &incoming.reply_to {
            let routed = self
                .publish("a result", reply_to, body, properties.clone(), true)
                .await?;
            if routed {
                return Ok(ResultTarget::ReplyTo(reply_to.clone()));
            }
            tracing::warn!(
                job_id,
                reply_to = %reply_to,
                results_queue = %self.results_queue,
                "reply_to queue does not exist, publishing the result to the results queue"
            );
        }
        self.publish("a result", &self.results_queue, body, properties, false)
            .await?;
        Ok(ResultTarget::ResultsQueue)
    }

    /// Publishes a copy of the delivery to the dead-letter queue and waits for the confirm.
    ///
    /// Body and properties are the original ones, so an operator can replay the message, with
    /// headers added that say why it failed. The copy is persistent and has no expiration, so
    /// the dead letter is neither discarded nor lost on a broker restart.
    pub async fn dead_letter(
        &self,
        incoming: &Incoming,
        reason: &DeadLetter<'_>,
    ) -> Result<(), BrokerError> {
        let mut headers = incoming.properties.headers().clone().unwrap_or_default();
        if let Some(job_id) = reason.job_id {
            headers.insert("x-job-id".into(), long_string(job_id));
        }
        headers.insert("x-job-status".into(), long_string(reason.status));
        headers.insert("x-error-code".into(), long_string(reason.code));
        headers.insert("x-error-message".into(), long_string(reason.message));
        headers.insert(
            "x-attempts".into(),
            AMQPValue::LongLongInt(i64::from(reason.attempts)),
        );
        headers.insert(
            "x-failed-at".into(),
            long_string(&chrono::Utc::now().to_rfc3339()),
        );
        headers.insert(
            "x-original-exchange".into(),
            long_string(&incoming.exchange),
        );
        headers.insert(
            "x-original-routing-key".into(),
            long_string(&incoming.routing_key),
        );
        if let Some(user_id) = incoming.properties.user_id() {
            headers.insert("x-original-user-id".into(), long_string(user_id.as_str()));
        }
        let mut properties = incoming.properties.clone().with_headers(headers);
        properties = properties.with_delivery_mode(PERSISTENT);
        let properties = without_expiration(properties);

        self.publish(
            "a dead letter",
            &self.dead_letter_queue,
            &incoming.body,
            properties,
            false,
        )
        .await
        .map(|_| ())
    }

    /// Publishes through the default exchange and waits for the confirm. Returns false when a
    /// mandatory message could not be routed to `queue`.
    async fn publish(
        &self,
        what: &str,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<bool, BrokerError> {
        let routing_key = ShortString::try_new(queue).map_err(|_| BrokerError::Nacked {
            what: format!("{what} for a queue name over 255 bytes"),
        })?;
        let options = BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        };
        let send_and_confirm = async {
            let confirm = self
                .channel
                .basic_publish("".into(), routing_key, options, body, properties)
                .await
                .map_err(BrokerError::amqp(format!("publishing {what} to {queue:?}")))?;
            confirm.await.map_err(BrokerError::amqp(format!(
                "waiting for the confirm of {what}"
            )))
        };
        let confirmation = tokio::time::timeout(self.timeout, send_and_confirm)
            .await
            .map_err(|_| BrokerError::ConfirmTimeout {
                what: format!("{what} to {queue:?}"),
                timeout_ms: self.timeout.as_millis() as u64,
            })??;
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(true),
            Confirmation::Ack(Some(_returned)) => Ok(false),
            Confirmation::Nack(_) => Err(BrokerError::Nacked {
                what: format!("{what} to {queue:?}"),
            }),
        }
    }
}

fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text.as_bytes().to_vec()))
}

/// Copies the properties without `expiration`, which would let the broker discard the copy,
/// and without `user_id`, which RabbitMQ rejects unless it names the publishing connection's
/// user (the original one is kept in the `x-original-user-id` header).
fn without_expiration(properties: BasicProperties) -> BasicProperties {
    let mut copy = BasicProperties::default();
    if let Some(v) = properties.content_type() {
        copy = copy.with_content_type(v.clone());
    }
    if let Some(v) = properties.content_encoding() {
        copy = copy.with_content_encoding(v.clone());
    }
    if let Some(v) = properties.headers() {
        copy = copy.with_headers(v.clone());
    }
    if let Some(v) = properties.delivery_mode() {
        copy = copy.with_delivery_mode(*v);
    }
    if let Some(v) = properties.priority() {
        copy = copy.with_priority(*v);
    }
    if let Some(v) = properties.correlation_id() {
        copy = copy.with_correlation_id(v.clone());
    }
    if let Some(v) = properties.reply_to() {
        copy = copy.with_reply_to(v.clone());
    }
    if let Some(v) = properties.message_id() {
        copy = copy.with_message_id(v.clone());
    }
    if let Some(v) = properties.timestamp() {
        copy = copy.with_timestamp(*v);
    }
    if let Some(v) = properties.kind() {
        copy = copy.with_type(v.clone());
    }
    if let Some(v) = properties.app_id() {
        copy = copy.with_app_id(v.clone());
    }
    if let Some(v) = properties.cluster_id() {
        copy = copy.with_cluster_id(v.clone());
    }
    copy
}
