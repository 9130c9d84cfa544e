//! `halite-minion --config /etc/halite/minion.toml`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The halite minion: verifies signed jobs from its master and runs them.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file.
    #[arg(long, short, default_value = halite_minion::config::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Two workers are plenty for a minion and keep its memory small.
    let (config, runtime) =
        match halite_daemon::boot("halite-minion", args.log_json, Some(2), || {
            halite_minion::Config::load(&args.config)
        }) {
            Ok(booted) => booted,
            Err(code) => return code,
        };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let running =
            match halite_minion::start(config, halite_minion::default_registry(), shutdown) {
                Ok(running) => running,
                Err(e) => {
                    eprintln!("halite-minion: {e}");
                    return ExitCode::FAILURE;
                }
            };
        tokio::select! {
            () = halite_daemon::wait_for_signal() => tracing::info!("shutting down"),
            () = running.shutdown.cancelled() => {}
        }
        running.shutdown.cancel();
        let _ = running.task.await;
        match running.fatal.get() {
            Some(reason) => {
                eprintln!("halite-minion: {reason}");
                ExitCode::from(2)
            }
            None => ExitCode::SUCCESS,
        }
    })
}
