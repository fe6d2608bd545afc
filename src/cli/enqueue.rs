//! `enqueue`: publish one job, built from arguments and checked with the worker's own
//! validation, and with `--wait` print its result.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation};
use serde_json::{Map, Value, json};

use crate::broker;
use crate::job::{JobResult, MessageMeta, Status, decode, validate};

#[derive(Debug, clap::Args)]
pub struct EnqueueArgs {
    #[command(subcommand)]
    job: JobArgs,
    /// Account to use (a name from [accounts]); the worker uses "default" without it.
    #[arg(long, global = true)]
    account: Option<String>,
    /// Job id; a UUID is generated without it.
    #[arg(long, global = true)]
    id: Option<String>,
    /// Wait for the job's result and print it. The exit code is 0 only if the job succeeded.
    #[arg(long, global = true)]
    wait: bool,
    /// Seconds to wait for the result with --wait.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECONDS")]
    timeout: u64,
}

#[derive(Debug, clap::Subcommand)]
enum JobArgs {
    /// Purge surrogate keys of a service.
    PurgeKeys {
        #[arg(long = "service", value_name = "SERVICE_ID")]
        service_id: String,
        /// Mark content stale instead of removing it.
        #[arg(long)]
        soft: bool,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Purge URLs.
    PurgeUrls {
        /// Mark content stale instead of removing it.
        #[arg(long)]
        soft: bool,
        #[arg(required = true, value_name = "URL")]
        urls: Vec<String>,
    },
    /// Purge everything cached for a service.
    PurgeAll {
        #[arg(long = "service", value_name = "SERVICE_ID")]
        service_id: String,
    },
    /// List the account's services: one page with --page, otherwise all.
    ListServices {
        #[arg(long)]
        page: Option<u32>,
        #[arg(long)]
        per_page: Option<u32>,
    },
    /// Read a service with its active version.
    GetService {
        #[arg(long = "service", value_name = "SERVICE_ID")]
        service_id: String,
    },
    /// Read the token's user and customer.
    GetAccount,
    /// Read the token's scopes, services and expiry.
    GetToken,
}

impl JobArgs {
    fn to_json(&self) -> Map<String, Value> {
        let value = match self {
            JobArgs::PurgeKeys {
                service_id,
                soft,
                keys,
            } => {
                json!({"type": "purge_keys", "service_id": service_id, "keys": keys, "soft": soft})
            }
            JobArgs::PurgeUrls { soft, urls } => {
                json!({"type": "purge_urls", "urls": urls, "soft": soft})
            }
            JobArgs::PurgeAll { service_id } => {
                json!({"type": "purge_all", "service_id": service_id})
            }
            JobArgs::ListServices { page, per_page } => {
                let mut job = json!({"type": "list_services"});
                if let Some(page) = page {
                    job["page"] = json!(page);
                }
                if let Some(per_page) = per_page {
                    job["per_page"] = json!(per_page);
                }
                job
            }
            JobArgs::GetService { service_id } => {
                json!({"type": "get_service", "service_id": service_id})
            }
            JobArgs::GetAccount => json!({"type": "get_account"}),
            JobArgs::GetToken => json!({"type": "get_token"}),
        };
        match value {
            Value::Object(map) => map,
            _ => unreachable!("every job is built as a JSON object"),
        }
    }
}

pub async fn enqueue(config_file: Option<&Path>, args: EnqueueArgs) -> anyhow::Result<ExitCode> {
    let settings = super::load_settings(config_file)?;
    let broker_settings = &settings.broker;

    let mut job = args.job.to_json();
    let job_id = args
        .id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    job.insert("id".to_owned(), json!(job_id));
    if let Some(account) = &args.account {
        job.insert("account".to_owned(), json!(account));
    }
    let body = serde_json::to_vec(&job)?;

    // The same checks the worker makes, so a mistake shows here rather than in a result.
    let checked = decode(
        &body,
        &MessageMeta::default(),
        settings.jobs.max_message_bytes,
    )
    .and_then(|envelope| validate(&envelope, &settings.jobs));
    if let Err(rejection) = checked {
        eprintln!("error: the job is invalid: {}", rejection.message);
        return Ok(ExitCode::from(super::EXIT_USAGE));
    }

    let connection = broker::connect_named(broker_settings, "fastly-purge-worker enqueue").await?;
    broker::declare_topology(&connection, broker_settings).await?;
    let channel = connection
        .create_channel()
        .await
        .context("cannot open a channel")?;

    let mut results = None;
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(job_id.as_str().into())
        .with_correlation_id(job_id.as_str().into());
    if args.wait {
        // A private, server-named queue that disappears with this connection.
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
            .context("cannot declare a reply queue")?;
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
            .context("cannot consume the reply queue")?;
        properties = properties.with_reply_to(queue.name().clone());
        results = Some(consumer);
    }

    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("cannot enable publisher confirms")?;
    let confirmation = channel
        .basic_publish(
            "".into(),
            broker_settings.jobs_queue.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &body,
            properties,
        )
        .await
        .context("cannot publish the job")?
        .await
        .context("RabbitMQ did not confirm the job")?;
    match confirmation {
        Confirmation::Ack(None) => {}
        Confirmation::Ack(Some(_)) => bail!(
            "RabbitMQ could not route the job to queue {:?}",
            broker_settings.jobs_queue
        ),
        Confirmation::Nack(_) | Confirmation::NotRequested => {
            bail!("RabbitMQ did not accept the job")
        }
    }
    eprintln!(
        "published job {job_id} to queue {}",
        broker_settings.jobs_queue
    );

    let Some(mut results) = results else {
        let _ = connection.close(200, "done".into()).await;
        return Ok(ExitCode::SUCCESS);
    };
    let timeout = Duration::from_secs(args.timeout);
    let wait = async {
        while let Some(delivery) = results.next().await {
            let delivery = delivery.context("the reply queue failed")?;
            let correlation = delivery.properties.correlation_id().as_ref();
            if correlation.map(|id| id.as_str()) == Some(job_id.as_str()) {
                return Ok(delivery.data);
            }
        }
        bail!("the reply queue closed before the result arrived")
    };
    let data = tokio::time::timeout(timeout, wait).await.map_err(|_| {
        anyhow::anyhow!(
            "no result within {} s; is a worker running on queue {:?}? (raise --timeout to wait longer)",
            args.timeout,
            broker_settings.jobs_queue
        )
    })??;
    let _ = connection.close(200, "done".into()).await;

    let result: JobResult =
        serde_json::from_slice(&data).context("the result is not a valid result message")?;
    let pretty: Value = serde_json::from_slice(&data)?;
    println!("{}", serde_json::to_string_pretty(&pretty)?);
    Ok(if result.status == Status::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_FAILURE)
    })
}
