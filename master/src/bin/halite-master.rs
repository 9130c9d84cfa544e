//! `halite-master --config /etc/halite/master.toml`, or
//! `halite-master copy-store --to postgres://…` (the master stopped).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Copy the embedded store (data_dir/store) into a new PostgreSQL
    /// database, then set `store` in the config to it. The master must
    /// be stopped.
    CopyStore {
        /// The new database: postgres://USER:PASSWORD@HOST/DB.
        #[arg(long)]
        to: String,
    },
}

/// `copy-store`: every keyspace's rows, then a summary.
fn copy_store(config: &std::path::Path, to: &str) -> ExitCode {
    let config = match halite_master::Config::load(config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("halite-master: {e}");
            return ExitCode::FAILURE;
        }
    };
    match halite_master::store::copy_store(&config.store, to) {
        Ok(copied) => {
            use std::fmt::Write as _;
            let mut summary = String::new();
            for (space, rows) in &copied {
                let _ = writeln!(summary, "{space:<16} {rows:>10} rows");
            }
            let total: usize = copied.iter().map(|(_, rows)| rows).sum();
            let _ = writeln!(summary, "copied {total} rows from {}", config.store);
            use std::io::Write as _;
            match std::io::stdout().write_all(summary.as_bytes()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            }
        }
        Err(e) => {
            eprintln!("halite-master: copy-store: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::CopyStore { to }) = &args.command {
        return copy_store(&args.config, to);
    }
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
