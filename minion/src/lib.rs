//! The halite minion as a library: `halite-minion` only parses flags and
//! calls [`start`]; the benchmark swarm starts thousands in one process.
//!
//! Map: [`config`] (validated first), [`link`] (the supervised connection
//! to a master: auth, SUB, heartbeats, catch-up, re-sends; failover
//! across masters), [`outbox`] (returns and events to one or every
//! master), [`trust`]
//! (master key pinning), [`executor`] (replay/expiry/target checks, module
//! calls, signed returns and events), [`spool`] (returns on disk until
//! acknowledged), [`seen`] (the replay guard), [`launch`] (the process:
//! config, logs, signals, exit codes), `service` (Windows only: the
//! service entry point, `service install|uninstall`).

#![deny(missing_docs)]

pub mod config;
pub mod executor;
pub mod launch;
pub mod link;
pub mod lua_store;
pub mod outbox;
pub mod seen;
#[cfg(windows)]
pub mod service;
pub mod spool;
pub mod trust;

use std::sync::Arc;

use halite_modules::Registry;
use tokio::sync::watch;
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
    /// Why the minion stopped by itself (a master failing
    /// `master_fingerprint`), if it did: `shutdown` has fired then.
    pub fatal: Arc<std::sync::OnceLock<String>>,
}

/// Modules every minion has; built once and shared (the swarm runs many
/// minions on one registry).
pub fn default_registry() -> Arc<Registry> {
    Arc::new(Registry::with_builtins())
}

/// Loads keys and state and starts the links to the masters. Returns at
/// once; the minion runs until `shutdown` fires.
///
/// One master, or `master_type = "failover"`: one connection at a time
/// ([`link::run_failover`]), one spool whose returns go to whichever
/// master is active. `master_type = "hot"`: a connection to every master,
/// each with its own spool, so every master receives every return.
pub fn start(
    config: Config,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> Result<Running, Error> {
    let io = |context: String| move |source| Error::Io { context, source };
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
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
    let hot = config.master_type == config::MasterType::Hot && config.masters.len() > 1;
    let spool_dir = config.data_dir.join("spool");
    let spool_dirs: Vec<std::path::PathBuf> = if hot {
        config
            .masters
            .iter()
            .map(|m| spool_dir.join(m.file_name()))
            .collect()
    } else {
        vec![spool_dir]
    };
    let spools = spool_dirs
        .iter()
        .map(|dir| spool::Spool::open(dir).map_err(io(format!("create {}", dir.display()))))
        .collect::<Result<Vec<_>, _>>()?;
    let (outbox, queues) = outbox::Outbox::new(spools.clone());

    let lua = Arc::new(lua_store::LuaStore::open(
        config.data_dir.join("lua_modules"),
        config.pki_dir.join("masters"),
        config.lua.clone(),
        registry.clone(),
    ));
    let (session_tx, session_rx) = watch::channel(executor::SessionKeys::new());
    let executor = Arc::new(executor::Executor::new(executor::ExecutorParts {
        id: config.id.clone(),
        key: key.clone(),
        registry,
        grains: grains.clone(),
        seen,
        outbox: Arc::new(outbox),
        session: session_rx,
        clock_skew: config.clock_skew,
        shutdown: shutdown.clone(),
        markers: config.data_dir.join("running"),
        lua,
        several_masters: config.masters.len() > 1,
        traces: config.otel_endpoint.as_deref().map(|endpoint| {
            halite_daemon::traces::Traces::start(
                endpoint,
                "halite-minion",
                &config.id,
                shutdown.clone(),
            )
        }),
    }));
    executor.recover_interrupted();
    let fatal = Arc::new(std::sync::OnceLock::new());
    let links: Vec<link::Link> = config
        .masters
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let route = if hot { i } else { 0 };
            link::Link {
                addr: addr.clone(),
                trust: trust::MasterTrust::new(
                    config
                        .pki_dir
                        .join("masters")
                        .join(format!("{}.pub", addr.file_name())),
                    config.master_fingerprint.clone(),
                ),
                id: config.id.clone(),
                key: key.clone(),
                grains: grains.clone(),
                executor: executor.clone(),
                session_tx: session_tx.clone(),
                out_rx: queues[route].clone(),
                spool: spools[route].clone(),
                auth_retry: config.auth_retry,
                alive: config.master_alive_interval,
                epoch: None,
                fatal: fatal.clone(),
                stop: shutdown.clone(),
            }
        })
        .collect();
    let masters: Vec<String> = config.masters.iter().map(|m| m.to_string()).collect();
    tracing::info!(
        minion = %config.id,
        version = env!("CARGO_PKG_VERSION"),
        masters = %masters.join(", "),
        mode = if hot { "hot" } else { "failover" },
        "halite-minion starting"
    );
    let task = if hot {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let runs: Vec<_> = links
                .into_iter()
                .map(|link| tokio::spawn(link.run(stop.clone())))
                .collect();
            for run in runs {
                let _ = run.await;
            }
        })
    } else {
        tokio::spawn(link::run_failover(
            links,
            config.random_master,
            config.master_failback,
            shutdown.clone(),
        ))
    };
    Ok(Running {
        shutdown,
        task,
        fatal,
    })
}
