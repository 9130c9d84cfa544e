//! `halite-master --config /etc/halite/master.toml`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The halite master: publishes signed jobs, stores signed returns, serves the API.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file.
    #[arg(long, short, default_value = halite_master::config::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (config, runtime) = match halite_daemon::boot("halite-master", args.log_json, None, || {
        let config = halite_master::Config::load(&args.config)?;
        // A broken app or secrets file stops the master here, named.
        config.apps().check()?;
        config.lua_modules().check()?;
        Ok::<_, halite_proto::config::ConfigError>(config)
    }) {
        Ok(booted) => booted,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let running = match halite_master::start(config, CancellationToken::new()).await {
            Ok(running) => running,
            Err(e) => {
                eprintln!("halite-master: {e}");
                return ExitCode::FAILURE;
            }
        };
        halite_daemon::wait_for_signal().await;
        tracing::info!("shutting down");
        if let Err(e) = running.stop().await {
            eprintln!("halite-master: final flush failed: {e}");
            return ExitCode::FAILURE;
        }
        ExitCode::SUCCESS
    })
}
