//! Running the minion as a process: from the command line (until SIGTERM
//! or Ctrl-C) or as a Windows service (until the service manager says
//! stop). Both paths load the config, log, start and stop the same way.

use std::path::{Path, PathBuf};

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

/// The log file of the minion running as a service: `logs/minion.log`
/// beside its config (`%ProgramData%\\halite\\logs\\minion.log` when installed).
pub fn service_log_file(config: &Path) -> PathBuf {
    config
        .parent()
        .unwrap_or(Path::new("."))
        .join("logs")
        .join("minion.log")
}

/// Why [`purge`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// The config names the directories; an unreadable one is not guessed.
    #[error(transparent)]
    Config(#[from] halite_proto::config::ConfigError),
    /// Something could not be removed (what was removed before stays so).
    #[error("cannot remove {path}: {source}")]
    Remove {
        /// What could not be removed.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Forgets this minion: removes its keys (`pki_dir`), spool and replay
/// guard (`data_dir`), the service's logs and the config file, then the
/// config's directory if that left it empty. A master then sees a new key
/// if it is installed again. What uninstalling with `PURGE=1` runs (the
/// MSI), never a plain uninstall. Returns what it removed.
pub fn purge(config_file: &Path) -> Result<Vec<PathBuf>, PurgeError> {
    let home = config_file.parent().unwrap_or(Path::new("."));
    // Without the config, the defaults say where the rest lives, but only
    // what lies beside it is certainly this minion's (the Linux defaults
    // are absolute paths).
    let (config, beside_only) = match std::fs::metadata(config_file) {
        Ok(_) => (Config::load(config_file)?, false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (Config::from_toml(config_file, "")?, true)
        }
        Err(e) => {
            return Err(PurgeError::Remove {
                path: config_file.to_path_buf(),
                source: e,
            })
        }
    };
    let logs = service_log_file(config_file)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut removed = Vec::new();
    for dir in [&config.pki_dir, &config.data_dir, &logs] {
        if beside_only && !dir.starts_with(home) {
            continue;
        }
        match std::fs::remove_dir_all(dir) {
            Ok(()) => removed.push(dir.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(PurgeError::Remove {
                    path: dir.clone(),
                    source,
                })
            }
        }
    }
    match std::fs::remove_file(config_file) {
        Ok(()) => removed.push(config_file.to_path_buf()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(PurgeError::Remove {
                path: config_file.to_path_buf(),
                source,
            })
        }
    }
    // Only if empty: other files there are someone else's.
    if std::fs::remove_dir(home).is_ok() {
        removed.push(home.to_path_buf());
    }
    Ok(removed)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_removes_keys_state_logs_and_config_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("halite");
        let config = home.join("minion.toml");
        std::fs::create_dir_all(home.join("logs")).unwrap();
        std::fs::write(home.join("logs/minion.log"), "log").unwrap();
        std::fs::write(
            &config,
            format!(
                "pki_dir = {:?}\ndata_dir = {:?}\n",
                home.join("pki"),
                dir.path().join("elsewhere/data")
            ),
        )
        .unwrap();
        for sub in ["pki", "elsewhere/data"] {
            let path = if sub == "pki" {
                home.join(sub)
            } else {
                dir.path().join(sub)
            };
            std::fs::create_dir_all(&path).unwrap();
            std::fs::write(path.join("minion.key"), "secret").unwrap();
        }
        std::fs::write(dir.path().join("neighbour.txt"), "stays").unwrap();

        let removed = purge(&config).unwrap();
        assert_eq!(removed.len(), 5, "{removed:?}");
        assert!(!home.exists());
        assert!(!dir.path().join("elsewhere/data").exists());
        assert!(dir.path().join("neighbour.txt").exists());
        assert!(
            dir.path().join("elsewhere").exists(),
            "only data_dir itself"
        );
        // Twice is fine: without the config, only what lies beside it
        // goes (here the logs), never the absolute default directories.
        std::fs::create_dir_all(home.join("logs")).unwrap();
        assert_eq!(
            purge(&config).unwrap(),
            vec![home.join("logs"), home.clone()]
        );
    }

    #[test]
    fn purge_refuses_to_guess_from_a_broken_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("minion.toml");
        std::fs::create_dir_all(dir.path().join("pki")).unwrap();
        std::fs::write(&config, "pki_dir = [").unwrap();
        assert!(matches!(purge(&config), Err(PurgeError::Config(_))));
        assert!(dir.path().join("pki").exists());
    }
}
