//! `enqueue`: publish one job, built from arguments and checked with the worker's own
//! validation, and with `--wait` print its result.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};

use crate::broker::{self, JobProducer};
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
    /// Seconds to wait for the result with --wait. The job stays queued after the timeout and
    /// runs when a worker takes it.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..), requires = "wait")]
    timeout: u64,
}

#[derive(Debug, clap::Subcommand)]
enum JobArgs {
    /// Purge surrogate keys of a service.
    PurgeKeys {
        /// Fastly service id (letters and digits).
        #[arg(long = "service", value_name = "SERVICE_ID")]
        service_id: String,
        /// Mark content stale instead of removing it.
        #[arg(long)]
        soft: bool,
        /// Surrogate keys to purge.
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Purge URLs.
    PurgeUrls {
        /// Mark content stale instead of removing it.
        #[arg(long)]
        soft: bool,
        /// Absolute http or https URLs to purge.
        #[arg(required = true, value_name = "URL")]
        urls: Vec<String>,
    },
    /// Purge everything cached for a service.
    PurgeAll {
        /// Fastly service id (letters and digits).
        #[arg(long = "service", value_name = "SERVICE_ID")]
        service_id: String,
    },
    /// List the account's services: one page with --page, otherwise all.
    ListServices {
        /// Page to read (from 1); without it, every page is read.
        #[arg(long)]
        page: Option<u32>,
        /// Services per page (Fastly's default is 20).
        #[arg(long)]
        per_page: Option<u32>,
    },
    /// Read a service with its active version.
    GetService {
        /// Fastly service id (letters and digits); `list-services` shows them.
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
    broker::declare_topology(&connection, broker_settings, &settings.retry_queues()).await?;
    let mut producer = JobProducer::open(&connection, broker_settings, args.wait).await?;
    producer.publish(&job_id, &body).await?;
    eprintln!(
        "published job {job_id} to queue {}",
        broker_settings.jobs_queue
    );
    if !args.wait {
        let _ = connection.close(200, "done".into()).await;
        return Ok(ExitCode::SUCCESS);
    }

    let timeout = Duration::from_secs(args.timeout);
    let data = producer.wait_for_result(&job_id, timeout).await?;
    let _ = connection.close(200, "done".into()).await;
    let Some(data) = data else {
        bail!(
            "no result within {} s; is a worker running on queue {:?}? The job stays queued \
             and runs when a worker takes it; raise --timeout to wait longer",
            args.timeout,
            broker_settings.jobs_queue
        );
    };

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
