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
use crate::sim::{AfterHang, Chaos, SimConfig, SimToken, Storm};

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
    #[command(flatten)]
    chaos: ChaosArgs,
}

/// Chaos mode: random faults mixed into Fastly API traffic, all off by default. A request gets
/// at most one of a reset, a hang and a slow reply, so those three rates add up to at most 1.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Chaos mode")]
struct ChaosArgs {
    /// Fraction of requests, from 0 to 1, whose connection is reset (TCP RST) without a reply.
    #[arg(long, default_value_t = 0.0)]
    reset_rate: f64,
    /// Fraction of requests, from 0 to 1, held for --hang-ms before the connection is closed
    /// without a reply (or the reply is sent, with --hang-then-reply).
    #[arg(long, default_value_t = 0.0)]
    hang_rate: f64,
    /// Time in ms that a hanging request is held. Set it above the client's request timeout.
    #[arg(long, default_value_t = 3000)]
    hang_ms: u64,
    /// Process a hanging request and send its reply when the hang ends, instead of closing
    /// the connection without a reply.
    #[arg(long)]
    hang_then_reply: bool,
    /// Fraction of requests, from 0 to 1, whose reply is delayed by --slow-ms.
    #[arg(long, default_value_t = 0.0)]
    slow_rate: f64,
    /// Extra delay in ms of a slow reply, on top of --latency-ms.
    #[arg(long, default_value_t = 500)]
    slow_ms: u64,
    /// Length in ms of a 429 storm, during which every write (purge_all included) gets 429
    /// with Fastly-RateLimit-Remaining: 0 and a reset at the storm's end. Unset: no storm.
    #[arg(long, value_name = "MS")]
    storm_ms: Option<u64>,
    /// Time in ms from the simulator's start to the first 429 storm.
    #[arg(long, default_value_t = 0, requires = "storm_ms")]
    storm_after_ms: u64,
    /// Time in ms from the start of one 429 storm to the start of the next. Unset: one storm.
    #[arg(long, value_name = "MS", requires = "storm_ms")]
    storm_every_ms: Option<u64>,
    /// Give key and URL purges 429 during a storm too, not only writes.
    #[arg(long, requires = "storm_ms")]
    storm_purges: bool,
    /// Seed of the random draws, so that the same sequence of requests gets the same faults.
    #[arg(long)]
    chaos_seed: Option<u64>,
}

impl ChaosArgs {
    /// Builds the chaos settings, with `error_rate` from --error-rate.
    fn to_chaos(&self, error_rate: f64) -> Chaos {
        let storm = self.storm_ms.map(|length_ms| Storm {
            start_after: Duration::from_millis(self.storm_after_ms),
            length: Duration::from_millis(length_ms),
            every: self.storm_every_ms.map(Duration::from_millis),
            purges: self.storm_purges,
        });
        let after_hang = if self.hang_then_reply {
            AfterHang::Reply
        } else {
            AfterHang::Close
        };
        Chaos {
            error_rate,
            reset_rate: self.reset_rate,
            hang_rate: self.hang_rate,
            hang: Duration::from_millis(self.hang_ms),
            after_hang,
            slow_rate: self.slow_rate,
            slow: Duration::from_millis(self.slow_ms),
            storm,
            seed: self.chaos_seed,
        }
    }
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

    // The messages name the JSON fields, which are the option names with underscores.
    let chaos = args.chaos.to_chaos(args.error_rate);
    if let Err(message) = chaos.validate() {
        anyhow::bail!("invalid chaos mode options: {message} (see --help)");
    }

    let config = SimConfig {
        tokens,
        services: args.services,
        latency: Duration::from_millis(args.latency_ms),
        chaos,
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
    fn chaos_flags_build_settings() {
        let cli = Cli::try_parse_from([
            "fastly-purge-worker",
            "simulate-fastly",
            "--error-rate",
            "0.1",
            "--reset-rate",
            "0.05",
            "--hang-rate",
            "0.02",
            "--hang-ms",
            "4000",
            "--hang-then-reply",
            "--slow-rate",
            "0.2",
            "--slow-ms",
            "250",
            "--storm-ms",
            "30000",
            "--storm-after-ms",
            "60000",
            "--storm-every-ms",
            "600000",
            "--storm-purges",
            "--chaos-seed",
            "7",
        ])
        .unwrap();
        let Command::SimulateFastly(args) = cli.command else {
            panic!("expected simulate-fastly");
        };

        let chaos = args.chaos.to_chaos(args.error_rate);

        assert_eq!(chaos.error_rate, 0.1);
        assert_eq!(chaos.reset_rate, 0.05);
        assert_eq!(chaos.hang_rate, 0.02);
        assert_eq!(chaos.hang, Duration::from_millis(4000));
        assert_eq!(chaos.after_hang, AfterHang::Reply);
        assert_eq!(chaos.slow_rate, 0.2);
        assert_eq!(chaos.slow, Duration::from_millis(250));
        assert_eq!(
            chaos.storm,
            Some(Storm {
                start_after: Duration::from_secs(60),
                length: Duration::from_secs(30),
                every: Some(Duration::from_secs(600)),
                purges: true,
            })
        );
        assert_eq!(chaos.seed, Some(7));
        assert_eq!(chaos.validate(), Ok(()));
    }

    #[test]
    fn chaos_off_without_flags() {
        let cli = Cli::try_parse_from(["fastly-purge-worker", "simulate-fastly"]).unwrap();
        let Command::SimulateFastly(args) = cli.command else {
            panic!("expected simulate-fastly");
        };

        let chaos = args.chaos.to_chaos(args.error_rate);

        assert!(!chaos.is_active());
        assert_eq!(chaos.after_hang, AfterHang::Close);
    }

    #[test]
    fn storm_options_need_storm_length() {
        let parsed = Cli::try_parse_from([
            "fastly-purge-worker",
            "simulate-fastly",
            "--storm-after-ms",
            "100",
        ]);

        assert!(parsed.is_err());
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
