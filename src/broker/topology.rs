//! Topology: the jobs, results and dead-letter queues and the jobs queue's bindings, declared
//! at start with explicit arguments. A queue that exists with other arguments is a
//! [`BrokerError::QueueConflict`] naming the queue and the argument.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ExchangeKind};

use super::BrokerError;
use crate::config::{BrokerSettings, QueueType};

/// Returns the arguments the worker declares a queue with.
pub fn queue_arguments(settings: &BrokerSettings, queue: &str) -> FieldTable {
    if is_retry_queue(settings, queue) {
        return retry_queue_arguments(settings);
    }
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        long_string(settings.queue_type.as_str()),
    );
    if queue == settings.jobs_queue {
        // Deliveries that RabbitMQ itself drops (delivery limit, rejected without requeue)
        // land in the dead-letter queue instead of being lost.
        arguments.insert("x-dead-letter-exchange".into(), long_string(""));
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            long_string(&settings.dead_letter_queue),
        );
        if settings.queue_type == QueueType::Quorum {
            arguments.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(i64::from(settings.delivery_limit)),
            );
        }
    }
    arguments
}

/// Returns whether `queue` is one of the delay queues, named `retry_queue.N`.
fn is_retry_queue(settings: &BrokerSettings, queue: &str) -> bool {
    queue
        .strip_prefix(settings.retry_queue.as_str())
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|level| !level.is_empty() && level.bytes().all(|b| b.is_ascii_digit()))
}

/// Builds the arguments of a delay queue. A message waits there until its per-message TTL
/// ends, then RabbitMQ dead-letters it back to the jobs queue. Nothing consumes it.
fn retry_queue_arguments(settings: &BrokerSettings) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        long_string(settings.queue_type.as_str()),
    );
    arguments.insert("x-dead-letter-exchange".into(), long_string(""));
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        long_string(&settings.jobs_queue),
    );
    if settings.queue_type == QueueType::Quorum {
        // Quorum queues dead-letter at most once by default. At-least-once needs the
        // reject-publish overflow mode, so a message is never dropped on its way back.
        arguments.insert(
            "x-dead-letter-strategy".into(),
            long_string("at-least-once"),
        );
        arguments.insert("x-overflow".into(), long_string("reject-publish"));
    }
    arguments
}

fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text.as_bytes().to_vec()))
}

/// Declares the worker's queues and bindings. Idempotent, so every worker and the `enqueue`
/// command run it at start.
///
/// A failed declaration closes the channel it ran on, so each declaration gets its own channel.
pub async fn declare_topology(
    connection: &Connection,
    settings: &BrokerSettings,
    retry_queues: &[String],
) -> Result<(), BrokerError> {
    let mut queues = vec![
        &settings.dead_letter_queue,
        &settings.results_queue,
        &settings.jobs_queue,
    ];
    queues.extend(retry_queues);
    for queue in queues {
        let channel = connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening a channel"))?;
        declare_queue(&channel, settings, queue).await?;
        let _ = channel.close(200, "topology declared".into()).await;
    }

    if settings.bindings.is_empty() {
        return Ok(());
    }
    let channel = connection
        .create_channel()
        .await
        .map_err(BrokerError::amqp("opening a channel"))?;
    for binding in &settings.bindings {
        channel
            .exchange_declare(
                binding.exchange.as_str().into(),
                exchange_kind(&binding.exchange_type),
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::amqp(format!(
                "declaring exchange {:?} of type {}",
                binding.exchange, binding.exchange_type
            )))?;
        channel
            .queue_bind(
                settings.jobs_queue.as_str().into(),
                binding.exchange.as_str().into(),
                binding.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::amqp(format!(
                "binding queue {:?} to exchange {:?} with routing key {:?}",
                settings.jobs_queue, binding.exchange, binding.routing_key
            )))?;
    }
    let _ = channel.close(200, "bindings declared".into()).await;
    Ok(())
}

async fn declare_queue(
    channel: &Channel,
    settings: &BrokerSettings,
    queue: &str,
) -> Result<(), BrokerError> {
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    match channel
        .queue_declare(queue.into(), options, queue_arguments(settings, queue))
        .await
    {
        Ok(_) => Ok(()),
        Err(err) => Err(declare_error(queue, err)),
    }
}

/// Turns a failed queue declaration into a conflict error when the queue exists with other
/// arguments, else into a plain AMQP error.
pub(super) fn declare_error(queue: &str, err: lapin::Error) -> BrokerError {
    conflict(queue, &err)
        .unwrap_or_else(|| BrokerError::amqp(format!("declaring queue {queue:?}"))(err))
}

/// Recognizes RabbitMQ's PRECONDITION_FAILED reply to a declaration that differs from the
/// existing queue, such as "inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': ...".
fn conflict(queue: &str, err: &lapin::Error) -> Option<BrokerError> {
    let lapin::ErrorKind::ProtocolError(amqp) = err.kind() else {
        return None;
    };
    if amqp.kind() != &AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) {
        return None;
    }
    let detail = amqp.get_message().as_str().to_owned();
    let argument = detail
        .split_once("inequivalent arg '")
        .and_then(|(_, rest)| rest.split_once('\''))
        .map(|(argument, _)| argument.to_owned())
        .unwrap_or_else(|| "argument".to_owned());
    Some(BrokerError::QueueConflict {
        queue: queue.to_owned(),
        argument,
        detail,
    })
}

fn exchange_kind(name: &str) -> ExchangeKind {
    match name {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "headers" => ExchangeKind::Headers,
        _ => ExchangeKind::Topic,
    }
}
