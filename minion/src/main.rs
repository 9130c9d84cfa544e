//! `halite-minion --config /etc/halite/minion.toml`; on Windows also
//! `halite-minion service install|uninstall|run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use halite_minion::launch::Launch;
use tokio_util::sync::CancellationToken;

/// The halite minion: verifies signed jobs from its masters and runs them.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file (default /etc/halite/minion.toml; on Windows
    /// %ProgramData%\halite\minion.toml).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// A master to use instead of the config's `masters` (`host` or
    /// `host:return_port`); empty: the config's.
    #[arg(long, global = true)]
    master: Option<String>,
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The Windows service (the MSI does `install` itself).
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
}

#[derive(Subcommand, Clone, Copy)]
enum ServiceAction {
    /// Register `halite-minion` to start at boot with this --config and
    /// --master, and start it.
    Install,
    /// Stop and remove the service (keys and state stay).
    Uninstall,
    /// Forget this minion: remove its keys, state, logs and config (the
    /// MSI runs it on uninstall with PURGE=1; stop the service first).
    Purge,
    /// What the service manager starts (not for a console).
    Run,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let launch = Launch {
        config: args
            .config
            .unwrap_or_else(halite_minion::config::default_config),
        master: args.master,
        log_json: args.log_json,
        log_file: None,
    };
    match args.command {
        None => ExitCode::from(halite_minion::launch::run(
            &launch,
            CancellationToken::new(),
            true,
        )),
        Some(Command::Service { action }) => service(action, launch),
    }
}

#[cfg(windows)]
fn service(action: ServiceAction, launch: Launch) -> ExitCode {
    use halite_minion::service;
    let result = match action {
        ServiceAction::Install => service::install(&launch),
        ServiceAction::Uninstall => service::uninstall(),
        ServiceAction::Purge => match halite_minion::launch::purge(&launch.config) {
            Ok(removed) => {
                for path in removed {
                    eprintln!("removed {}", path.display());
                }
                Ok(())
            }
            Err(e) => {
                eprintln!("halite-minion service purge: {e}");
                return ExitCode::FAILURE;
            }
        },
        ServiceAction::Run => service::run(Launch {
            log_file: Some(halite_minion::launch::service_log_file(&launch.config)),
            ..launch
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("halite-minion service: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(windows))]
fn service(_action: ServiceAction, _launch: Launch) -> ExitCode {
    eprintln!(
        "halite-minion service: Windows only; on Linux run it under systemd (packaging/systemd/halite-minion.service)"
    );
    ExitCode::from(2)
}
