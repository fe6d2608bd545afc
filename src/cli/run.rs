//! `run`: the worker, against Fastly or, with `--simulate`, against a built-in simulator.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use crate::config::{Config, Settings};
use crate::sim::{SimConfig, SimToken, Simulator};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Start the built-in Fastly simulator on a loopback port and send every Fastly request
    /// there. Nothing reaches Fastly, and no token is needed.
    #[arg(long)]
    simulate: bool,
}

pub async fn run(config_file: Option<&Path>, args: RunArgs) -> anyhow::Result<ExitCode> {
    let settings = super::load_settings(config_file)?;
    let (config, simulator) = if args.simulate {
        let (config, simulator) = simulated(settings).await?;
        (config, Some(simulator))
    } else {
        (settings.resolve(|name| std::env::var(name).ok())?, None)
    };

    let worker = crate::worker::start(config).await?;
    let stop = worker.stopper();
    let signal = tokio::spawn(async move {
        super::shutdown_signal().await;
        // Stop first: logging can fail when stderr is gone.
        let _ = stop.send(true);
        tracing::info!("shutdown signal received, stopping");
        // A second signal ends the process at once, for an operator who cannot wait.
        super::shutdown_signal().await;
        let _ = writeln!(
            std::io::stderr(),
            "second shutdown signal received, exiting without waiting for jobs"
        );
        std::process::exit(super::EXIT_FAILURE.into());
    });
    let ended = worker.wait().await;
    signal.abort();
    if let Some(simulator) = simulator {
        simulator.stop().await;
    }
    ended?;
    tracing::info!("worker stopped");
    Ok(ExitCode::SUCCESS)
}

/// Starts a simulator on a free loopback port and points every account at it with a token
/// of its own, so that a real FASTLY_API_TOKEN is never sent anywhere.
pub(super) async fn simulated(settings: Settings) -> anyhow::Result<(Config, Simulator)> {
    let token = format!("sim-{}", uuid::Uuid::new_v4().simple());
    let sim_config = SimConfig {
        tokens: vec![SimToken::global(&token)],
        ..SimConfig::default()
    };
    let simulator = Simulator::start(([127, 0, 0, 1], 0).into(), sim_config).await?;
    let api_url = url::Url::parse(&simulator.base_url())?;
    tracing::warn!(
        simulator = %api_url,
        "simulate mode: every Fastly request goes to the built-in simulator; nothing reaches Fastly"
    );
    let config = settings.resolve_with_token(api_url, &token)?;
    Ok((config, simulator))
}
