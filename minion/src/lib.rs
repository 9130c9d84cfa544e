//! The halite minion as a library: `halite-minion` only parses flags and
//! calls [`start`]; the benchmark swarm starts thousands in one process.
//!
//! Map: [`config`] (validated first), [`link`] (the supervised connection
//! to a master: auth, SUB, heartbeats, catch-up, re-sends), [`trust`]
//! (master key pinning), [`executor`] (replay/expiry/target checks, module
//! calls, signed returns and events), [`spool`] (returns on disk until
//! acknowledged), [`seen`] (the replay guard).

#![deny(missing_docs)]

pub mod config;
pub mod executor;
pub mod link;
pub mod seen;
pub mod spool;
pub mod trust;

use std::sync::Arc;

use halite_modules::Registry;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Why the minion could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Keys could not be read or written.
    #[error(transparent)]
    Pki(#[from] halite_pki::PkiError),
    /// `data_dir` could not be prepared.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A started minion.
pub struct Running {
    /// Fires to stop it.
    pub shutdown: CancellationToken,
    /// Ends when the link has stopped.
    pub task: tokio::task::JoinHandle<()>,
}

/// Modules every minion has; built once and shared (the swarm runs many
/// minions on one registry).
pub fn default_registry() -> Arc<Registry> {
    Arc::new(Registry::with_builtins())
}

/// Loads keys and state and starts the link to the first master. Returns
/// at once; the minion runs until `shutdown` fires.
///
/// With several masters listed, this version connects to the first one
/// (the others are kept for failover, not yet implemented).
pub fn start(
    config: Config,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> Result<Running, Error> {
    let io = |context: String| move |source| Error::Io { context, source };
    std::fs::create_dir_all(&config.data_dir)
        .map_err(io(format!("create data_dir {}", config.data_dir.display())))?;
    let (key, created) = halite_pki::KeyPair::load_or_generate(&config.pki_dir, "minion")?;
    if created {
        tracing::info!(minion = %config.id, fingerprint = %key.public().fingerprint(), "generated minion key");
    }
    let key = Arc::new(key);
    let mut grains = halite_modules::grains::collect(&config.grains);
    if let Some(map) = grains.as_object_mut() {
        map.insert("id".into(), config.id.clone().into());
    }
    let grains = Arc::new(grains);
    let now = halite_proto::time::now_ms();
    let seen_path = config.data_dir.join("seen_jobs");
    let seen = seen::SeenJobs::open(
        &seen_path,
        now.saturating_sub(config.clock_skew.as_millis() as u64),
    )
    .map_err(io(format!("open {}", seen_path.display())))?;
    let spool_dir = config.data_dir.join("spool");
    let spool =
        spool::Spool::open(&spool_dir).map_err(io(format!("create {}", spool_dir.display())))?;

    let (session_tx, session_rx) = watch::channel(None);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let executor = Arc::new(executor::Executor::new(executor::ExecutorParts {
        id: config.id.clone(),
        key: key.clone(),
        registry,
        grains: grains.clone(),
        seen,
        spool,
        session: session_rx,
        out: out_tx,
        clock_skew: config.clock_skew,
        shutdown: shutdown.clone(),
    }));
    let addr = config.masters[0].clone();
    let trust = trust::MasterTrust::new(
        config
            .pki_dir
            .join("masters")
            .join(format!("{}.pub", addr.file_name())),
        config.master_fingerprint.clone(),
    );
    let link = link::Link {
        addr,
        trust,
        id: config.id.clone(),
        key,
        grains,
        executor,
        session_tx,
        out_rx,
        auth_retry: config.auth_retry,
    };
    tracing::info!(minion = %config.id, version = env!("CARGO_PKG_VERSION"), master = %link.addr, "halite-minion starting");
    let task = tokio::spawn(link.run(shutdown.clone()));
    Ok(Running { shutdown, task })
}
