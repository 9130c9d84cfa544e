//! Process plumbing shared by the halite binaries, so both daemons log,
//! stop and bound their sockets the same way.
#![deny(missing_docs)]

pub mod traces;

use std::fmt::Display;
use std::process::ExitCode;
use std::time::Duration;

use halite_proto::envelope::MAX_MESSAGE_BYTES;

use tracing_subscriber::EnvFilter;

/// Exit code for a configuration error (sysexits' EX_CONFIG), so service
/// managers and scripts can tell "fix the config" from a crash.
pub const EXIT_CONFIG: u8 = 78;

/// How long an accepted peer may take over the ZMTP handshake before it
/// is disconnected (a connection that says nothing holds a task and a
/// socket otherwise).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Options for every ZeroMQ socket of master and minion: a message
/// larger than [`MAX_MESSAGE_BYTES`] (plus room for the routing and topic
/// frames) is refused from its frame header, before anything is
/// allocated, and ends that peer's connection; a peer must finish its
/// handshake within [`HANDSHAKE_TIMEOUT`].
pub fn socket_options() -> zeromq::SocketOptions {
    let mut options = zeromq::SocketOptions::default();
    options
        .max_message_size(MAX_MESSAGE_BYTES + 64 * 1024)
        .handshake_timeout(HANDSHAKE_TIMEOUT);
    options
}

/// The host name when it is usable as an id, else `fallback`.
pub fn host_id(fallback: &str) -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.split('.').next().unwrap_or_default().to_owned())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .unwrap_or_else(|| fallback.to_owned())
}

/// Start-up common to both daemons: logging, then the configuration
/// (validated before anything binds), then a tokio runtime with
/// `workers` threads (all cores when `None`). On failure prints
/// `NAME: reason` and gives the exit code to return.
pub fn boot<C, E: Display>(
    name: &str,
    log_json: bool,
    workers: Option<usize>,
    load: impl FnOnce() -> Result<C, E>,
) -> Result<(C, tokio::runtime::Runtime), ExitCode> {
    boot_logging_to(name, log_json, None, workers, load)
}

/// Like [`boot`], logging to `log_file` (appended to, its directory
/// created) instead of stderr: a Windows service has no console.
pub fn boot_logging_to<C, E: Display>(
    name: &str,
    log_json: bool,
    log_file: Option<&std::path::Path>,
    workers: Option<usize>,
    load: impl FnOnce() -> Result<C, E>,
) -> Result<(C, tokio::runtime::Runtime), ExitCode> {
    match log_file {
        None => init_tracing(log_json),
        Some(path) => {
            if let Err(e) = init_tracing_to_file(log_json, path) {
                eprintln!("{name}: cannot open the log file {}: {e}", path.display());
                return Err(ExitCode::FAILURE);
            }
        }
    }
    let config = load().map_err(|e| {
        eprintln!("{name}: {e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        builder.worker_threads(workers);
    }
    let runtime = builder.enable_all().build().map_err(|e| {
        eprintln!("{name}: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })?;
    Ok((config, runtime))
}

/// Sets up `tracing` once: level from `RUST_LOG` (default `info`), plain
/// text to stderr, or JSON lines when `json` is set. Every line carries
/// the structured fields (`jid`, `minion`) the code attaches.
pub fn init_tracing(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: never escape codes in files or journald.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .with_target(false);
    // A second call (tests starting several daemons in one process) keeps
    // the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Sets up `tracing` like [`init_tracing`], appending plain (or JSON) lines
/// to `path`.
pub fn init_tracing_to_file(json: bool, path: &std::path::Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .with_target(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    Ok(())
}

/// Resolves on SIGINT or SIGTERM (Ctrl-C on Windows).
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Log lines about one thing (a peer, a refusal) at most once per
/// interval, so a peer sending garbage cannot flood the log: the first
/// line goes out, later ones are counted and the count rides on the next
/// line let through. Bounded: at most [`LogThrottle::MAX_KEYS`] keys.
pub struct LogThrottle {
    interval: Duration,
    seen: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, u64)>>,
}

impl LogThrottle {
    /// Keys remembered at once; past it, keys quiet for an interval go.
    pub const MAX_KEYS: usize = 4096;

    /// One line per key per `interval`.
    pub fn new(interval: Duration) -> LogThrottle {
        LogThrottle {
            interval,
            seen: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Should a line about `key` be logged now? `Some(suppressed)` (the
    /// lines dropped since the last one) if so, `None` to stay quiet.
    pub fn allow(&self, key: &str) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((last, suppressed)) = seen.get_mut(key) {
            if now.duration_since(*last) < self.interval {
                *suppressed += 1;
                return None;
            }
            let dropped = std::mem::take(suppressed);
            *last = now;
            return Some(dropped);
        }
        if seen.len() >= Self::MAX_KEYS {
            let interval = self.interval;
            seen.retain(|_, (last, _)| now.duration_since(*last) < interval);
            if seen.len() >= Self::MAX_KEYS {
                // Everyone is noisy: forget them all rather than grow.
                seen.clear();
            }
        }
        seen.insert(key.to_owned(), (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_interval_and_the_rest_counted() {
        let throttle = LogThrottle::new(Duration::from_secs(3600));
        assert_eq!(throttle.allow("peer-a"), Some(0));
        assert_eq!(throttle.allow("peer-a"), None);
        assert_eq!(throttle.allow("peer-a"), None);
        assert_eq!(throttle.allow("peer-b"), Some(0), "keys are separate");
        let quick = LogThrottle::new(Duration::ZERO);
        assert_eq!(quick.allow("k"), Some(0));
        assert_eq!(quick.allow("k"), Some(0));
    }

    #[test]
    fn the_keys_are_bounded() {
        let throttle = LogThrottle::new(Duration::from_secs(3600));
        for i in 0..LogThrottle::MAX_KEYS + 100 {
            throttle.allow(&format!("peer-{i}"));
        }
        assert!(throttle.seen.lock().unwrap().len() <= LogThrottle::MAX_KEYS);
    }
}
