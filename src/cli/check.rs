//! `check`: validate the configuration, reach the broker, read each account's token, and
//! print what each account can do. Exits non-zero when anything is wrong.

use std::path::Path;
use std::process::ExitCode;

use chrono::Utc;

use crate::broker;
use crate::config::Config;
use crate::fastly::{FastlyClient, TokenInfo};
use crate::job::JobType;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Check against the built-in Fastly simulator instead of Fastly.
    #[arg(long)]
    simulate: bool,
}

pub async fn check(config_file: Option<&Path>, args: CheckArgs) -> anyhow::Result<ExitCode> {
    let settings = super::load_settings(config_file)?;
    let (config, simulator) = if args.simulate {
        let (config, simulator) = super::run::simulated(settings).await?;
        (config, Some(simulator))
    } else {
        (settings.resolve(|name| std::env::var(name).ok())?, None)
    };
    // Printed only now, because resolving reads the tokens, and a missing one is a
    // configuration error.
    println!("configuration: valid");

    let mut problems = 0;
    problems += check_broker(&config).await;
    problems += check_accounts(&config).await;
    if let Some(simulator) = simulator {
        simulator.stop().await;
    }

    if problems == 0 {
        println!("all checks passed");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{problems} problem(s) found");
        Ok(ExitCode::from(super::EXIT_FAILURE))
    }
}

/// Connects and reports each queue; returns the number of problems.
async fn check_broker(config: &Config) -> usize {
    let settings = &config.settings.broker;
    let connection = match broker::connect_named(settings, "fastly-purge-worker check").await {
        Ok(connection) => connection,
        Err(err) => {
            println!("broker: PROBLEM: {err}");
            return 1;
        }
    };
    println!("broker: connected to {}", settings.redacted_url());
    let mut queues = vec![
        settings.jobs_queue.clone(),
        settings.results_queue.clone(),
        settings.dead_letter_queue.clone(),
    ];
    queues.extend(config.settings.retry_queues());
    // Declaring with the worker's arguments finds queues that would stop the worker.
    let problems = match broker::queue_status(&connection, settings, &queues).await {
        Ok(statuses) => {
            for status in statuses {
                println!(
                    "  queue {}: {} messages ready, {} consumers",
                    status.name, status.messages, status.consumers
                );
            }
            0
        }
        Err(err) => {
            println!("  PROBLEM: {err}");
            1
        }
    };
    let _ = connection.close(200, "check done".into()).await;
    problems
}

/// Reads each account's token and prints what it allows; returns the number of problems.
async fn check_accounts(config: &Config) -> usize {
    let client = match FastlyClient::new(config.api_url.clone(), &config.settings.fastly) {
        Ok(client) => client,
        Err(err) => {
            println!("fastly: PROBLEM: cannot build the HTTP client: {err}");
            return 1;
        }
    };
    println!("fastly: {}", config.api_url);
    let mut problems = 0;
    for (name, account) in &config.accounts {
        let token = match client.token_self(account).await {
            Ok(reply) => TokenInfo::from_json(&reply.value),
            Err(err) => Err(err.to_string()),
        };
        let token = match token {
            Ok(token) => token,
            Err(reason) => {
                println!("account {name}: PROBLEM: cannot read the token (tokens/self): {reason}");
                problems += 1;
                continue;
            }
        };
        let expiry = match token.expires_at {
            None => "never expires".to_owned(),
            Some(at) if token.is_expired(Utc::now()) => {
                problems += 1;
                format!("PROBLEM: expired at {at}; create a new token in Fastly")
            }
            Some(at) => {
                let days = (at - Utc::now()).num_days();
                format!("expires at {at} (in {days} days)")
            }
        };
        println!(
            "account {name}: token {:?}, scopes: {}, {expiry}",
            token.name.as_deref().unwrap_or("(unnamed)"),
            token.scopes.join(" ")
        );
        if !token.services.is_empty() {
            println!("  limited to services: {}", token.services.join(", "));
        }
        for job_type in JobType::ALL {
            let allowed = job_type.allowed_scopes();
            let verdict = if token.has_any_scope(allowed) {
                "yes".to_owned()
            } else {
                format!("no (needs {})", allowed.join(" or "))
            };
            println!("  {job_type}: {verdict}");
        }
    }
    problems
}
