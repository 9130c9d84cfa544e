//! Running the minion as a process: from the command line (until SIGTERM
//! or Ctrl-C) or as a Windows service (until the service manager says
//! stop). Both paths load the config, log, start and stop the same way.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::config::{parse_master, Config};

/// Exit code when a master fails `master_fingerprint`.
pub const EXIT_WRONG_MASTER: u8 = 2;

/// What the process was started with.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The config file.
    pub config: PathBuf,
    /// A master to use instead of the config's `masters` (set by an
    /// installer, e.g. the MSI's `MASTER` property); empty means none.
    pub master: Option<String>,
    /// Log JSON lines.
    pub log_json: bool,
    /// Log to this file instead of stderr (a service has no console).
    pub log_file: Option<PathBuf>,
}

impl Launch {
    /// The config file, validated, with `--master` applied.
    pub fn load(&self) -> Result<Config, halite_proto::config::ConfigError> {
        let mut config = Config::load(&self.config)?;
        if let Some(master) = self.master.as_deref().filter(|m| !m.trim().is_empty()) {
            let addr = parse_master(master.trim()).map_err(|e| {
                halite_proto::config::ConfigError::key(
                    &self.config,
                    "masters",
                    format!("--master overrides it, but {e}"),
                )
            })?;
            config.masters = vec![addr];
        }
        Ok(config)
    }
}

/// Runs the minion until `stop` fires (or, with `signals`, SIGTERM or
/// Ctrl-C arrives), then stops it cleanly. Returns the exit code:
/// 0, [`halite_daemon::EXIT_CONFIG`] for a bad config, or
/// [`EXIT_WRONG_MASTER`].
pub fn run(launch: &Launch, stop: CancellationToken, signals: bool) -> u8 {
    let booted = halite_daemon::boot_logging_to(
        "halite-minion",
        launch.log_json,
        launch.log_file.as_deref(),
        // Two workers are plenty for a minion and keep its memory small.
        Some(2),
        || launch.load(),
    );
    let (config, runtime) = match booted {
        Ok(booted) => booted,
        Err(_) => {
            // boot printed why; a config error is the usual cause.
            return halite_daemon::EXIT_CONFIG;
        }
    };
    runtime.block_on(async move {
        let running = match crate::start(config, crate::default_registry(), stop.clone()) {
            Ok(running) => running,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("halite-minion: {e}");
                return 1;
            }
        };
        if signals {
            let on_signal = stop.clone();
            tokio::spawn(async move {
                halite_daemon::wait_for_signal().await;
                on_signal.cancel();
            });
        }
        stop.cancelled().await;
        tracing::info!("shutting down");
        let _ = running.task.await;
        match running.fatal.get() {
            Some(reason) => {
                eprintln!("halite-minion: {reason}");
                EXIT_WRONG_MASTER
            }
            None => 0,
        }
    })
}
