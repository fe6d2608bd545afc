//! Publishing with publisher confirms: results to a job's reply_to or the results queue, and
//! dead letters (the original message plus error headers) to the dead-letter queue.
//!
//! Every publish waits for the broker's confirm, bounded by `publish_timeout_ms`, because a
//! delivery may be acked only after its result is safely stored.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use super::consume::{
    ATTEMPT_COUNT_HEADER, REQUEST_ATTEMPTS_HEADER, RETRY_COUNT_HEADER, RetryCounts,
};
use super::{BrokerError, Incoming};
use crate::config::BrokerSettings;

/// Prefix of RabbitMQ's direct reply-to pseudo-queue names.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// The destination of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultTarget {
    /// The job's reply_to queue, through the default exchange.
    ReplyTo(String),
    /// The results queue, for jobs without reply_to or whose reply_to queue is gone.
    ResultsQueue,
}

/// A job sent to a delay queue, to be delivered again after `delay`.
#[derive(Debug, Clone)]
pub struct RetryLetter<'a> {
    pub queue: &'a str,
    pub delay: Duration,
    /// The job's counters after this delivery.
    pub counts: RetryCounts,
    pub code: &'a str,
    pub message: &'a str,
}

/// The reason a message went to the dead-letter queue, written into its headers.
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

    /// Closes the publisher's channel, after every confirm it waits for.
    pub async fn close(&self) {
        if self.is_open() {
            let _ = self.channel.close(200, "worker stopping".into()).await;
        }
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
            // RabbitMQ returns results sent to direct reply-to as unroutable even when they
            // arrive, so a mandatory publish would duplicate them into the results queue.
            let mandatory = !reply_to.starts_with(DIRECT_REPLY_TO);
            match self
                .publish("a result", reply_to, body, properties.clone(), mandatory)
                .await
            {
                Ok(()) => return Ok(ResultTarget::ReplyTo(reply_to.clone())),
                Err(err) if self.is_open() => tracing::warn!(
                    job_id,
                    reply_to = ?reply_to,
                    results_queue = %self.results_queue,
                    error = %err,
                    "cannot publish the result to reply_to, publishing it to the results queue"
                ),
                Err(err) => return Err(err),
            }
        }
        self.publish("a result", &self.results_queue, body, properties, true)
            .await?;
        Ok(ResultTarget::ResultsQueue)
    }

    /// Publishes a copy of the delivery to the dead-letter queue and waits for the confirm.
    ///
    /// Body and properties are the original ones, so an operator can replay the message, with
    /// headers added that record why it failed. The copy is persistent and has no expiration, so
    /// the dead letter is neither discarded nor lost on a broker restart.
    pub async fn dead_letter(
        &self,
        incoming: &Incoming,
        reason: &DeadLetter<'_>,
    ) -> Result<(), BrokerError> {
        let mut headers = incoming.properties.headers().clone().unwrap_or_default();
        // A dead letter replayed to the jobs queue starts its retries afresh.
        let mut entries = headers.inner().clone();
        for counter in [
            RETRY_COUNT_HEADER,
            ATTEMPT_COUNT_HEADER,
            REQUEST_ATTEMPTS_HEADER,
        ] {
            entries.remove(counter);
        }
        headers = entries.into();

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
        headers.insert("x-failed-at".into(), long_string(&now_rfc3339()));

        let properties = copy_for_republish(incoming, headers);
        self.publish(
            "a dead letter",
            &self.dead_letter_queue,
            &incoming.body,
            properties,
            true,
        )
        .await
    }

    /// Publishes a copy of the delivery to a delay queue, from which RabbitMQ returns it to
    /// the jobs queue after `letter.delay`, and waits for the confirm.
    pub async fn retry_later(
        &self,
        incoming: &Incoming,
        letter: &RetryLetter<'_>,
    ) -> Result<(), BrokerError> {
        let mut headers = incoming.properties.headers().clone().unwrap_or_default();
        let counts = [
            (RETRY_COUNT_HEADER, letter.counts.retries),
            (ATTEMPT_COUNT_HEADER, letter.counts.failed_attempts),
            (REQUEST_ATTEMPTS_HEADER, letter.counts.requests),
        ];
        for (name, value) in counts {
            headers.insert(name.into(), AMQPValue::LongLongInt(i64::from(value)));
        }
        headers.insert("x-last-error-code".into(), long_string(letter.code));
        headers.insert("x-last-error-message".into(), long_string(letter.message));
        let millis = letter.delay.as_millis().max(1).to_string();
        let properties =
            copy_for_republish(incoming, headers).with_expiration(millis.as_str().into());
        self.publish(
            "a delayed retry",
            letter.queue,
            &incoming.body,
            properties,
            true,
        )
        .await
    }

    /// Publishes through the default exchange and waits for the confirm. A mandatory message
    /// that no queue took is an error, so nothing is acked on the strength of a lost publish.
    async fn publish(
        &self,
        message: &str,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        let routing_key = ShortString::try_new(queue).map_err(|_| BrokerError::Unroutable {
            message: message.to_owned(),
            queue: queue.chars().take(64).collect(),
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
                .map_err(BrokerError::amqp(format!(
                    "publishing {message} to {queue:?}"
                )))?;
            confirm.await.map_err(BrokerError::amqp(format!(
                "waiting for the confirm of {message}"
            )))
        };
        let confirmation = tokio::time::timeout(self.timeout, send_and_confirm)
            .await
            .map_err(|_| BrokerError::ConfirmTimeout {
                message: format!("{message} to {queue:?}"),
                timeout_ms: self.timeout.as_millis() as u64,
            })??;
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_returned)) => Err(BrokerError::Unroutable {
                message: message.to_owned(),
                queue: queue.to_owned(),
            }),
            Confirmation::Nack(_) => Err(BrokerError::Nacked {
                message: format!("{message} to {queue:?}"),
            }),
        }
    }
}

fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text.as_bytes().to_vec()))
}

/// Returns the current time as results write it, such as `2026-01-31T12:00:00.250Z`.
fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Copies a delivery's properties for publishing it again, with `headers` and persistent.
/// Routing headers (CC, BCC) are renamed so the copy reaches only the queue it is sent to.
///
/// `expiration` is dropped, because it would let the broker discard the copy. `user_id` is
/// dropped, because RabbitMQ rejects it unless it names the publishing connection's user; the
/// original is kept in the `x-original-user-id` header. The exchange and routing key the job
/// first arrived with are kept as headers too.
fn copy_for_republish(incoming: &Incoming, headers: FieldTable) -> BasicProperties {
    let original = &incoming.properties;
    // RabbitMQ routes a message to the queues in its CC and BCC headers as well. Kept, they
    // would send every dead letter and delayed retry back to the jobs queue too, in a loop.
    let mut headers: FieldTable = headers
        .inner()
        .iter()
        .map(|(name, value)| match name.as_str() {
            "CC" => ("x-original-cc".into(), value.clone()),
            "BCC" => ("x-original-bcc".into(), value.clone()),
            _ => (name.clone(), value.clone()),
        })
        .collect::<std::collections::BTreeMap<_, _>>()
        .into();
    if let Some(user_id) = original.user_id() {
        headers.insert("x-original-user-id".into(), long_string(user_id.as_str()));
    }
    // A job back from a delay queue arrived through the default exchange; keep the first.
    if !headers.contains_key("x-original-exchange") {
        headers.insert(
            "x-original-exchange".into(),
            long_string(&incoming.exchange),
        );
        headers.insert(
            "x-original-routing-key".into(),
            long_string(&incoming.routing_key),
        );
    }

    let mut copy = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(PERSISTENT);
    if let Some(v) = original.content_type() {
        copy = copy.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        copy = copy.with_content_encoding(v.clone());
    }
    if let Some(v) = original.priority() {
        copy = copy.with_priority(*v);
    }
    if let Some(v) = original.correlation_id() {
        copy = copy.with_correlation_id(v.clone());
    }
    if let Some(v) = original.reply_to() {
        copy = copy.with_reply_to(v.clone());
    }
    if let Some(v) = original.message_id() {
        copy = copy.with_message_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        copy = copy.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        copy = copy.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        copy = copy.with_app_id(v.clone());
    }
    if let Some(v) = original.cluster_id() {
        copy = copy.with_cluster_id(v.clone());
    }
    copy
}
