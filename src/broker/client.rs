//! The broker as producers and operators use it: publish one job and wait for its result on a
//! private reply queue (the `enqueue` command), and read the state of the worker's queues (the
//! `check` command).

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, Consumer};

use super::{BrokerError, queue_arguments};
use crate::config::BrokerSettings;

/// Messages and consumers of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStatus {
    pub name: String,
    pub messages: u32,
    pub consumers: u32,
}

/// Declares each queue with the worker's arguments and returns its counts. A queue that
/// exists with other arguments is a [`BrokerError::QueueConflict`], as it would be for the
/// worker.
pub async fn queue_status(
    connection: &Connection,
    settings: &BrokerSettings,
    queues: &[String],
) -> Result<Vec<QueueStatus>, BrokerError> {
    let mut statuses = Vec::with_capacity(queues.len());
    for queue in queues {
        // A failed declaration closes its channel, so each gets a channel of its own.
        let channel = connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening a channel"))?;
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                options,
                queue_arguments(settings, queue),
            )
            .await
            .map_err(|err| super::topology::declare_error(queue, err))?;
        statuses.push(QueueStatus {
            name: queue.clone(),
            messages: declared.message_count(),
            consumers: declared.consumer_count(),
        });
        let _ = channel.close(200, "counted".into()).await;
    }
    Ok(statuses)
}

/// Reads the depth of queues with passive declares, on a channel of its own.
pub struct QueueProbe {
    connection: std::sync::Arc<Connection>,
    channel: tokio::sync::Mutex<Channel>,
}

impl QueueProbe {
    pub async fn open(connection: std::sync::Arc<Connection>) -> Result<QueueProbe, BrokerError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening the queue probe channel"))?;
        Ok(QueueProbe {
            connection,
            channel: tokio::sync::Mutex::new(channel),
        })
    }

    /// Closes the probe's channel.
    pub async fn close(&self) {
        let _ = self
            .channel
            .lock()
            .await
            .close(200, "worker stopping".into())
            .await;
    }

    /// Returns the messages ready for delivery in a queue and its consumers. A missing queue
    /// closes the channel, so the probe opens a new one for the next call.
    pub async fn status(&self, queue: &str) -> Result<QueueStatus, BrokerError> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let mut channel = self.channel.lock().await;
        let declared = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await;
        match declared {
            Ok(declared) => Ok(QueueStatus {
                name: queue.to_owned(),
                messages: declared.message_count(),
                consumers: declared.consumer_count(),
            }),
            Err(err) => {
                if let Ok(fresh) = self.connection.create_channel().await {
                    *channel = fresh;
                }
                Err(BrokerError::amqp(format!("reading the depth of {queue:?}"))(err))
            }
        }
    }
}

/// A producer of single jobs, with an optional private queue for their results.
pub struct JobProducer {
    channel: Channel,
    jobs_queue: String,
    replies: Option<(String, Consumer)>,
}

impl JobProducer {
    /// Opens a confirm-mode channel; with `wait_for_results`, also a private reply queue that
    /// disappears with the connection.
    pub async fn open(
        connection: &Connection,
        settings: &BrokerSettings,
        wait_for_results: bool,
    ) -> Result<JobProducer, BrokerError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening a channel"))?;
        let mut replies = None;
        if wait_for_results {
            let queue = channel
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(BrokerError::amqp("declaring a reply queue"))?;
            let consumer = channel
                .basic_consume(
                    queue.name().clone(),
                    "enqueue".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(BrokerError::amqp("consuming the reply queue"))?;
            replies = Some((queue.name().as_str().to_owned(), consumer));
        }
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(BrokerError::amqp("enabling publisher confirms"))?;
        Ok(JobProducer {
            channel,
            jobs_queue: settings.jobs_queue.clone(),
            replies,
        })
    }

    /// Publishes a job persistently to the jobs queue, with the job id as message_id and
    /// correlation_id, and waits for the broker's confirm.
    pub async fn publish(&self, job_id: &str, body: &[u8]) -> Result<(), BrokerError> {
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(job_id.into())
            .with_correlation_id(job_id.into());
        if let Some((queue, _)) = &self.replies {
            properties = properties.with_reply_to(queue.as_str().into());
        }
        let confirmation = self
            .channel
            .basic_publish(
                "".into(),
                self.jobs_queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .map_err(BrokerError::amqp("publishing the job"))?
            .await
            .map_err(BrokerError::amqp("waiting for the confirm of the job"))?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable {
                message: "the job".to_owned(),
                queue: self.jobs_queue.clone(),
            }),
            Confirmation::Nack(_) | Confirmation::NotRequested => Err(BrokerError::Nacked {
                message: "the job".to_owned(),
            }),
        }
    }

    /// Waits for the result whose correlation_id is `job_id`; `None` after `timeout`.
    pub async fn wait_for_result(
        &mut self,
        job_id: &str,
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>, BrokerError> {
        let Some((_, replies)) = self.replies.as_mut() else {
            return Ok(None);
        };
        let wait = async {
            while let Some(delivery) = replies.next().await {
                let delivery = delivery.map_err(BrokerError::amqp("reading the reply queue"))?;
                let correlation = delivery.properties.correlation_id().as_ref();
                if correlation.map(|id| id.as_str()) == Some(job_id) {
                    return Ok(Some(delivery.data));
                }
            }
            Ok(None)
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Ok(None))
    }
}
