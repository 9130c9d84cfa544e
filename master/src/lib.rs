//! The halite master as a library: `halite-master` only parses flags and
//! calls [`start`]; tests call it in-process with port 0.
//!
//! Map: [`config`] (validated before anything binds), [`transport`]
//! (ZeroMQ PUB and ROUTER), [`core`] (state, message handling, job
//! submission), [`collector`] (grouped durable returns), [`presence`]
//! (who is up), [`session`] (the session key), [`store`] (sled),
//! [`backend`] (the HTTP API's view of all this), [`cli`] (`master-cli`).

#![deny(missing_docs)]

pub mod acl;
pub mod api_tls;
pub mod apps;
pub mod backend;
pub mod batch;
pub mod cli;
pub mod collector;
pub mod config;
pub mod core;
pub mod listing;
pub mod lua_modules;
pub mod presence;
pub mod session;
pub mod stats;
pub mod store;
pub mod token;
pub mod transport;
pub mod users;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use axum::serve::ListenerExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Why the master could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Keys could not be read or written.
    #[error(transparent)]
    Pki(#[from] halite_pki::PkiError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A ZeroMQ socket could not be bound.
    #[error(transparent)]
    Bind(#[from] transport::BindError),
    /// The API's TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] api_tls::TlsConfigError),
    /// Something on disk (data_dir, token, HTTP port).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A running master: its real addresses, and the handle to stop it.
pub struct Running {
    /// PUB port actually bound.
    pub publish_port: u16,
    /// ROUTER port actually bound.
    pub return_port: u16,
    /// HTTP API address actually bound.
    pub api_addr: SocketAddr,
    /// The shared state (for in-process tests).
    pub core: Arc<core::Core>,
    /// Fires to stop every task.
    pub shutdown: CancellationToken,
}

/// Handler tasks allowed at once; past this the ROUTER reader waits.
const MAX_IN_FLIGHT: usize = 1024;

/// Binds everything and starts the tasks. Returns once the master is
/// ready to serve; it runs until `shutdown` is cancelled.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, Error> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::Io {
        context: format!("create data_dir {}", config.data_dir.display()),
        source,
    })?;
    let (key, created) = halite_pki::KeyPair::load_or_generate(&config.pki_dir, "master")?;
    if created {
        tracing::info!(pki_dir = %config.pki_dir.display(), "generated master key");
    }
    let keys = halite_pki::KeyStore::open(&config.pki_dir)?;
    let store = store::Store::open(&config.data_dir.join("store"))?;
    let cli_token = token::ensure(&config.token_file()).map_err(|source| Error::Io {
        context: format!("write CLI token {}", config.token_file().display()),
        source,
    })?;

    let bound = transport::bind(
        config.interface,
        config.publish_port,
        config.return_port,
        shutdown.clone(),
    )
    .await?;
    // A bad certificate stops the master before it binds anything else.
    let tls = match &config.api_tls {
        Some((cert, key)) => Some(api_tls::server_config(cert, key)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.api_bind)
        .await
        .map_err(|source| Error::Io {
            context: format!("bind api_bind {}", config.api_bind),
            source,
        })?;
    let api_addr = listener.local_addr().map_err(|source| Error::Io {
        context: "read API address".into(),
        source,
    })?;

    let (returns_tx, returns_rx) = tokio::sync::mpsc::channel(16 * 1024);
    let core = Arc::new(core::Core::new(core::CoreParts {
        config: config.clone(),
        key,
        keys,
        store,
        publisher: bound.publisher.clone(),
        replier: bound.replier.clone(),
        returns: returns_tx,
        publish_port: bound.publish_port,
        cli_token,
    })?);

    tokio::spawn(collector::run(core.clone(), returns_rx));
    if let Some(plans) = core.take_batch_plans() {
        tokio::spawn(batch::run(core.clone(), plans));
    }
    core.resume_batches()?;
    spawn_router_handlers(core.clone(), bound.incoming);
    spawn_timers(core.clone(), shutdown.clone());

    let app = halite_api::router(Arc::new(backend::ApiBackend(core.clone())))
        .into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        Some(tls) => {
            let listener = api_tls::TlsListener::new(listener, tls)
                .map_err(|source| Error::Io {
                    context: "start the HTTPS listener".into(),
                    source,
                })?
                // tap_io gives the listener axum's connect-info support.
                .tap_io(|_| {});
            tokio::spawn(serve_api(listener, app, shutdown.clone()));
        }
        None => {
            tokio::spawn(serve_api(listener, app, shutdown.clone()));
        }
    }

    write_ports(&config, bound.publish_port, bound.return_port, api_addr)?;
    tracing::info!(
        id = %config.id,
        version = env!("CARGO_PKG_VERSION"),
        publish_port = bound.publish_port,
        return_port = bound.return_port,
        api = %api_addr,
        fingerprint = %core.fingerprint(),
        "halite-master ready"
    );
    Ok(Running {
        publish_port: bound.publish_port,
        return_port: bound.return_port,
        api_addr,
        core,
        shutdown,
    })
}

/// Serves the API on `listener` (plain TCP or TLS) until `stop`.
async fn serve_api<L>(
    listener: L,
    app: axum::extract::connect_info::IntoMakeServiceWithConnectInfo<axum::Router, SocketAddr>,
    stop: CancellationToken,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
    for<'a> SocketAddr: axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "HTTP API stopped");
    }
}

/// How long a peer's worker waits for its next message before it ends
/// (a new one starts with the peer's next message).
const PEER_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// A message waiting for its peer's worker, holding its in-flight permit.
type Queued = (Bytes, tokio::sync::OwnedSemaphorePermit);

/// Handles ROUTER messages: in order per peer (a minion's events are
/// stored in the order it sent them, and its return after them), in
/// parallel across peers (signature checks spread over all cores), with
/// at most [`MAX_IN_FLIGHT`] messages accepted and not yet handled.
fn spawn_router_handlers(
    core: Arc<core::Core>,
    mut incoming: tokio::sync::mpsc::Receiver<transport::Incoming>,
) {
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    tokio::spawn(async move {
        let mut workers: HashMap<Bytes, mpsc::UnboundedSender<Queued>> = HashMap::new();
        let mut since_sweep = 0usize;
        while let Some(message) = incoming.recv().await {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            let mut queued = (message.body, permit);
            loop {
                let worker = workers
                    .entry(message.peer.clone())
                    .or_insert_with(|| spawn_peer_worker(core.clone(), message.peer.clone()));
                match worker.send(queued) {
                    Ok(()) => break,
                    // That worker went idle and closed: start another.
                    Err(mpsc::error::SendError(back)) => {
                        workers.remove(&message.peer);
                        queued = back;
                    }
                }
            }
            since_sweep += 1;
            if since_sweep >= 4096 {
                since_sweep = 0;
                workers.retain(|_, tx| !tx.is_closed());
            }
        }
    });
}

/// One peer's messages, handled one after the other. After
/// [`PEER_IDLE`] without a message the worker closes its queue, handles
/// what is still in it, and ends.
fn spawn_peer_worker(core: Arc<core::Core>, peer: Bytes) -> mpsc::UnboundedSender<Queued> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Queued>();
    tokio::spawn(async move {
        loop {
            match tokio::time::timeout(PEER_IDLE, rx.recv()).await {
                Ok(Some((body, permit))) => {
                    core.handle(peer.clone(), body).await;
                    drop(permit);
                }
                Ok(None) => return,
                // Idle: refuse new messages; `recv` still yields what is
                // queued, then None.
                Err(_idle) => rx.close(),
            }
        }
    });
    tx
}

fn spawn_timers(core: Arc<core::Core>, shutdown: CancellationToken) {
    let beacon_every = core.config.beacon_interval;
    tokio::spawn(async move {
        let mut beacon = tokio::time::interval(beacon_every);
        let mut prune = tokio::time::interval(std::time::Duration::from_secs(600));
        let mut sweep = tokio::time::interval(std::time::Duration::from_secs(1));
        // The first check waits a full interval: right after a start the
        // minions have not reconnected yet.
        let check_every = core.config.check_interval;
        let mut check =
            tokio::time::interval_at(tokio::time::Instant::now() + check_every, check_every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = beacon.tick() => core.beacon(),
                _ = sweep.tick() => {
                    core.presence.sweep(halite_proto::time::now_ms());
                }
                _ = check.tick() => {
                    let core = core.clone();
                    let _ = tokio::task::spawn_blocking(move || core.check_connectivity()).await;
                }
                _ = prune.tick() => {
                    let core = core.clone();
                    let _ = tokio::task::spawn_blocking(move || core.prune()).await;
                }
            }
        }
        if let Err(e) = core.store.flush() {
            tracing::error!(error = %e, "final store flush failed");
        }
    });
}

fn write_ports(
    config: &Config,
    publish_port: u16,
    return_port: u16,
    api: SocketAddr,
) -> Result<(), Error> {
    let body = serde_json::json!({
        "publish_port": publish_port,
        "return_port": return_port,
        "api": api.to_string(),
        "pid": std::process::id(),
    });
    let path = config.ports_file();
    std::fs::write(&path, body.to_string()).map_err(|source| Error::Io {
        context: format!("write {}", path.display()),
        source,
    })
}
