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
    halite_daemon::init_tracing(args.log_json);
    let config = match halite_minion::Config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("halite-minion: {e}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    // Two workers are plenty for a minion and keep its memory small.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("halite-minion: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let running = match halite_minion::start(config, halite_minion::default_registry(), shutdown.clone()) {
            Ok(running) => running,
            Err(e) => {
                eprintln!("halite-minion: {e}");
                return ExitCode::FAILURE;
            }
        };
        halite_daemon::wait_for_signal().await;
        tracing::info!("shutting down");
        running.shutdown.cancel();
        let _ = running.task.await;
        ExitCode::SUCCESS
    })
}
