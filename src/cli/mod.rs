//! The command line: argument parsing, wiring and exit codes. Each subcommand lives in a file
//! of its own; the work itself is done by the library modules.

mod check;
mod enqueue;
mod run;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{ConfigError, Settings};
use crate::sim::{SimConfig, SimToken};

/// Exit code for a job that failed or was rejected, and for runtime failures.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for configuration and usage errors.
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "fastly-purge-worker",
    version,
    about = "Purges Fastly content for jobs taken from RabbitMQ, and publishes a result for each job"
)]
pub struct Cli {
    /// Settings file in TOML, layered over the built-in defaults (see config/default.toml).
    #[arg(long, global = true, env = "FPW_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the worker: consume jobs, call Fastly, publish results.
    Run(run::RunArgs),
    /// Publish one job to the jobs queue, optionally waiting for its result.
    Enqueue(enqueue::EnqueueArgs),
    /// Run the Fastly API simulator alone, for docker-compose and manual tries.
    SimulateFastly(SimulateArgs),
    /// Check the configuration, the broker and each account's token, then exit.
    Check(check::CheckArgs),
}

#[derive(Debug, clap::Args)]
struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// A token the simulator accepts, as TOKEN or TOKEN=SCOPE,SCOPE (default scope: global).
    /// Repeat for several tokens. Without any, the simulator accepts "sim-token".
    #[arg(long = "token", value_name = "TOKEN[=SCOPES]")]
    tokens: Vec<String>,
    /// Number of services the simulator holds.
    #[arg(long, default_value_t = 3)]
    services: usize,
    /// Delay in ms before every reply.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Fraction of requests, from 0 to 1, answered with a random 5xx error.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Writes (purge_all included) allowed per user in each rate-limit window.
    #[arg(long, default_value_t = 1000)]
    write_limit: u32,
    /// Length of the rate-limit window in seconds (Fastly's is one hour).
    #[arg(long, default_value_t = 3600)]
    window_secs: u64,
}

/// Parses the command line, runs the command, and returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(cli.config.as_deref(), args).await,
            Command::Enqueue(args) => enqueue::enqueue(cli.config.as_deref(), args).await,
            Command::SimulateFastly(args) => simulate(args).await,
            Command::Check(args) => check::check(cli.config.as_deref(), args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            let code = if err.downcast_ref::<ConfigError>().is_some() {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            };
            eprintln!("error: {err:#}");
            ExitCode::from(code)
        }
    }
}

/// Loads settings and starts logging with them.
fn load_settings(config: Option<&std::path::Path>) -> Result<Settings, ConfigError> {
    let settings = Settings::load(config)?;
    crate::telemetry::init_logging(&settings.log);
    Ok(settings)
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    crate::telemetry::init_logging(&crate::config::LogSettings {
        filter: "info".to_owned(),
        format: crate::config::LogFormat::Text,
    });
    let tokens = if args.tokens.is_empty() {
        vec![SimToken::global("sim-token")]
    } else {
        args.tokens
            .iter()
            .map(|spec| parse_token_spec(spec))
            .collect()
    };
    if !(0.0..=1.0).contains(&args.error_rate) {
        anyhow::bail!(
            "--error-rate {} is out of range; give a fraction from 0 to 1",
            args.error_rate
        );
    }
    let names: Vec<String> = tokens
        .iter()
        .map(|t| format!("{} ({})", t.token, t.scopes.join(" ")))
        .collect();
    let config = SimConfig {
        tokens,
        services: args.services,
        latency: Duration::from_millis(args.latency_ms),
        error_rate: args.error_rate,
        write_limit: args.write_limit,
        window: Duration::from_secs(args.window_secs.max(1)),
        ..SimConfig::default()
    };
    let simulator = crate::sim::Simulator::start(args.listen, config).await?;
    tracing::info!(url = %simulator.base_url(), tokens = %names.join(", "), "Fastly simulator listening; stop it with Ctrl-C");
    shutdown_signal().await;
    simulator.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// Parses TOKEN or TOKEN=SCOPE,SCOPE.
fn parse_token_spec(spec: &str) -> SimToken {
    match spec.split_once('=') {
        Some((token, scopes)) => {
            let scopes: Vec<&str> = scopes.split([',', ' ']).filter(|s| !s.is_empty()).collect();
            SimToken::with_scopes(token, &scopes)
        }
        None => SimToken::global(spec),
    }
}

/// Resolves when the process receives SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler cannot fail on Unix");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn token_specs() {
        let plain = parse_token_spec("abc");
        assert_eq!(plain.scopes, ["global"]);
        let scoped = parse_token_spec("abc=purge_select,global:read");
        assert_eq!(scoped.token, "abc");
        assert_eq!(scoped.scopes, ["purge_select", "global:read"]);
    }
}
