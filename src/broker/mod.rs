//! The broker: RabbitMQ connections, the worker's queue topology, consuming deliveries,
//! publishing results, dead letters and delayed retries with publisher confirms, acks, and the
//! producer side used by the command line.
//!
//! Apart from the worker session, which owns the connection and closes it, this is the only
//! module that uses lapin. The pipeline handles an [`Incoming`] delivery and a [`Publisher`],
//! never an AMQP type. This module does not depend on Fastly.

mod client;
mod consume;
mod publish;
mod topology;

pub use client::{JobProducer, QueueProbe, QueueStatus, queue_status};
pub use consume::{
    ATTEMPT_COUNT_HEADER, Incoming, JobConsumer, REQUEST_ATTEMPTS_HEADER, RETRY_COUNT_HEADER,
    RetryCounts,
};
pub use publish::{DeadLetter, Publisher, ResultTarget, RetryLetter};
pub use topology::{declare_topology, queue_arguments};

use lapin::{Connection, ConnectionProperties};

use crate::config::BrokerSettings;

/// A broker failure, worded for the operator.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "cannot connect to RabbitMQ at {url}: {cause}; check that the broker runs and that \
         AMQP_URL (broker.url) names the right host, port, user, password and vhost"
    )]
    Connect { url: String, cause: lapin::Error },
    /// A queue exists with arguments other than the ones the worker declares.
    #[error(
        "queue {queue:?} already exists with a different {argument:?} \
         (RabbitMQ said: {detail}); delete the queue after moving its messages, or change the \
         settings to match it"
    )]
    QueueConflict {
        queue: String,
        argument: String,
        detail: String,
    },
    #[error("{action} failed: {cause}")]
    Amqp { action: String, cause: lapin::Error },
    #[error("RabbitMQ did not confirm {message} within {timeout_ms} ms")]
    ConfirmTimeout { message: String, timeout_ms: u64 },
    #[error("RabbitMQ rejected {message} (publisher nack)")]
    Nacked { message: String },
    /// The channel of a delivery closed before it was acked or rejected.
    #[error(
        "{action} failed: the channel that delivered it is closed, so RabbitMQ delivers the job \
         again"
    )]
    ChannelClosed { action: String },
    /// An ack or reject of a delivery that was already acked or rejected, which has no effect.
    #[error("{action} failed: the delivery was already acked or rejected")]
    AlreadySettled { action: String },
    #[error("no queue named {queue:?} took {message}; was it deleted?")]
    Unroutable { message: String, queue: String },
}

impl BrokerError {
    pub(crate) fn amqp(action: impl Into<String>) -> impl FnOnce(lapin::Error) -> BrokerError {
        let action = action.into();
        move |cause| BrokerError::Amqp { action, cause }
    }
}

/// Opens a connection named after the worker, so operators can find it in the management UI.
pub async fn connect(settings: &BrokerSettings) -> Result<Connection, BrokerError> {
    connect_named(settings, &settings.connection_name).await
}

/// Opens a connection with a given name.
pub async fn connect_named(
    settings: &BrokerSettings,
    name: &str,
) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(&settings.url, properties)
        .await
        .map_err(|cause| BrokerError::Connect {
            url: settings.redacted_url(),
            cause,
        })
}
