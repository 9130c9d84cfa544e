//! The halite master as a library: `halite-master` only parses flags and
//! calls [`start`]; tests call it in-process with port 0.
//!
//! Map: [`config`] (validated before anything binds), [`transport`]
//! (the [`transport::Outbound`] trait, ZeroMQ PUB and ROUTER, an
//! in-memory double), [`core`] (the centre: inbound messages, returns,
//! jobs, auth, views, upkeep), [`presence`] (who is up), [`session`]
//! (the session key), [`store`] (sled), [`backend`] (the HTTP adapter:
//! the one place a [`core::CoreError`] becomes a status).

#![deny(missing_docs)]

pub mod acl;
pub mod api_tls;
pub mod apps;
pub mod backend;
pub mod batch;
pub mod config;
pub mod core;
pub mod error;
pub mod freeze;
pub mod listing;
pub mod lua_modules;
pub mod metrics;
pub mod notify;
pub mod peer_masters;
pub mod presence;
pub mod schedule;
pub mod session;
pub mod stats;
pub mod store;
pub mod token;
pub mod transport;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinSet;
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
    /// Where `/metrics` is served, when `metrics_bind` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// The shared state (for in-process tests).
    pub core: Arc<core::Core>,
    /// Fires to stop every task.
    pub shutdown: CancellationToken,
    /// The tasks that must finish before the store is closed.
    tasks: JoinSet<()>,
}

impl Running {
    /// Stops the master in order: cancels `shutdown`; the API stops
    /// accepting and finishes its requests, the timers stop, the transport
    /// closes (which ends the inbound router and then the collector, after
    /// it stored and acked what was queued), then the store is flushed a
    /// last time. Returns when all of that is done.
    pub async fn stop(mut self) -> Result<(), store::StoreError> {
        self.shutdown.cancel();
        let joined = tokio::time::timeout(STOP_GRACE, async {
            while let Some(joined) = self.tasks.join_next().await {
                if let Err(e) = joined {
                    tracing::error!(error = %e, "a master task failed while stopping");
                }
            }
        });
        if joined.await.is_err() {
            // Open event streams keep their HTTP requests alive; they
            // are cut here, everything else has ended by then.
            tracing::warn!("requests still open after the grace; cutting them");
            self.tasks.shutdown().await;
        }
        let store = self.core.store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .unwrap_or(Ok(()))
    }
}

/// How long [`Running::stop`] lets open API requests (event streams)
/// finish before it cuts them.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Binds everything and starts the tasks. Returns once the master is
/// ready to serve; it runs until `shutdown` is cancelled (then call
/// [`Running::stop`] to wait for it).
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, Error> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::Io {
        context: format!("create data_dir {}", config.data_dir.display()),
        source,
    })?;
    // The ports of a previous run are no longer true: nobody may read
    // them until this run has bound its own.
    match std::fs::remove_file(config.ports_file()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::Io {
                context: format!("remove {}", config.ports_file().display()),
                source,
            })
        }
    }
    let (key, created) = halite_pki::KeyPair::load_or_generate(&config.pki_dir, "master")?;
    if created {
        tracing::info!(pki_dir = %config.pki_dir.display(), "generated master key");
    }
    let keys = halite_pki::KeyStore::open(&config.pki_dir)?;
    let store = store::Store::at(&config.store)?;
    tracing::info!(store = %config.store, "store open");
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

    let metrics_listener = match config.metrics_bind {
        Some(bind) => Some(
            tokio::net::TcpListener::bind(bind)
                .await
                .map_err(|source| Error::Io {
                    context: format!("bind metrics_bind {bind}"),
                    source,
                })?,
        ),
        None => None,
    };
    let metrics_addr = metrics_listener
        .as_ref()
        .map(tokio::net::TcpListener::local_addr)
        .transpose()
        .map_err(|source| Error::Io {
            context: "read the metrics address".into(),
            source,
        })?;

    let (returns_tx, returns_rx) = tokio::sync::mpsc::channel(16 * 1024);
    // The core reports the ports actually bound (0 in the file picks one).
    let mut core_config = config.clone();
    core_config.return_port = bound.return_port;
    let core = Arc::new(core::Core::new(core::CoreParts {
        config: core_config,
        key,
        keys,
        store,
        outbound: Arc::new(transport::ZmqOutbound {
            publisher: bound.publisher.clone(),
            replier: bound.replier.clone(),
        }),
        returns: returns_tx,
        publish_port: bound.publish_port,
        cli_token,
    })?);

    if let Some(endpoint) = &core.config.otel_endpoint {
        core.send_traces_to(halite_daemon::traces::Traces::start(
            endpoint,
            "halite-master",
            &core.config.id,
            shutdown.clone(),
        ));
    }
    let mut tasks = JoinSet::new();
    tasks.spawn(core::returns::collect(
        core.clone(),
        returns_rx,
        shutdown.clone(),
    ));
    if let Some(plans) = core.take_batch_plans() {
        // Not joined: batch drivers only read the store and publish; they
        // end with the runtime.
        tokio::spawn(batch::run(core.clone(), plans));
    }
    core.resume_batches()?;
    tasks.spawn(core::peers::route(core.clone(), bound.incoming));
    tasks.spawn(core::upkeep::run(core.clone(), shutdown.clone()));
    tasks.spawn(core::workflow::run(core.clone(), shutdown.clone()));
    tasks.spawn(core::rollouts::run(core.clone(), shutdown.clone()));
    tasks.spawn(core::notify::deliver(core.clone(), shutdown.clone()));
    tasks.spawn(core::shared_keys::follow(core.clone(), shutdown.clone()));
    tasks.spawn(core::shared_users::follow(core.clone(), shutdown.clone()));

    spawn_api(&mut tasks, listener, tls, core.clone(), shutdown.clone())?;
    if let Some(listener) = metrics_listener {
        tasks.spawn(serve_api(
            listener,
            metrics_router(core.clone()),
            shutdown.clone(),
        ));
    }

    write_ports(
        &config,
        bound.publish_port,
        bound.return_port,
        api_addr,
        metrics_addr,
    )?;
    tracing::info!(
        id = %config.id,
        version = env!("CARGO_PKG_VERSION"),
        publish_port = bound.publish_port,
        return_port = bound.return_port,
        api = %api_addr,
        metrics = ?metrics_addr,
        fingerprint = %core.fingerprint(),
        "halite-master ready"
    );
    Ok(Running {
        publish_port: bound.publish_port,
        return_port: bound.return_port,
        api_addr,
        metrics_addr,
        core,
        shutdown,
        tasks,
    })
}

/// Serves the HTTP API on `listener` (over TLS when `tls` is set) until
/// `shutdown`, as one of the master's joined tasks.
fn spawn_api(
    tasks: &mut JoinSet<()>,
    listener: tokio::net::TcpListener,
    tls: Option<rustls::ServerConfig>,
    core: Arc<core::Core>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let portal = halite_portal::router(halite_portal::PortalOptions {
        secure_cookies: tls.is_some(),
    });
    let app = halite_api::router_with(Arc::new(backend::ApiBackend(core)), portal);
    match tls {
        Some(tls) => {
            let listener =
                api_tls::TlsListener::new(listener, tls).map_err(|source| Error::Io {
                    context: "start the HTTPS listener".into(),
                    source,
                })?;
            tasks.spawn(serve_api(listener, app, shutdown));
        }
        None => {
            // Without TCP_NODELAY, a small write (an event stream entry, the
            // end of a chunked answer) waits for the ACK of the previous
            // one, which the client delays up to 40 ms (Nagle against
            // delayed ACK): every `master-cli run` paid it.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            tasks.spawn(serve_api(listener, app, shutdown));
        }
    }
    Ok(())
}

/// The `metrics_bind` listener's one route: `GET /metrics`, Prometheus
/// text format, without a token (a scraper cannot log in; bind it where
/// only the scraper reaches, loopback by default in the packages).
fn metrics_router(core: Arc<core::Core>) -> axum::Router {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let core = core.clone();
            async move {
                let rendered = tokio::task::spawn_blocking(move || {
                    core.gauges().map(|gauges| core.metrics.render(&gauges))
                })
                .await;
                match rendered {
                    Ok(Ok(text)) => (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response(),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot read the metrics' gauges");
                        StatusCode::INTERNAL_SERVER_ERROR.into_response()
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics task failed");
                        StatusCode::INTERNAL_SERVER_ERROR.into_response()
                    }
                }
            }
        }),
    )
}

/// How long a client may take to send a request's headers, and how long
/// a keep-alive connection may wait idle for its next request: past it
/// the connection is closed (half-open and trickling clients would
/// otherwise hold a socket and a task each, forever).
pub const API_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long shutdown waits for requests in flight (event streams end
/// with the master's stream).
const API_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves the API on `listener` (plain TCP or TLS) until `stop`: HTTP/1.1
/// with [`API_HEADER_TIMEOUT`], the client's address given to the routes
/// (`ConnectInfo`), requests in flight finished at shutdown.
async fn serve_api<L>(mut listener: L, app: axum::Router, stop: CancellationToken)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(API_HEADER_TIMEOUT);
    loop {
        let (io, addr) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(addr));
                tower::ServiceExt::oneshot(app.clone(), request)
            },
        );
        let connection = graceful.watch(http.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%addr, error = %e, "API connection ended");
            }
        });
    }
    if tokio::time::timeout(API_DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("API connections still open at shutdown; closing them");
    }
}

/// Writes `data_dir/ports.json`: the ports and API address this run
/// bound (port 0 in the config picks free ones) and its pid, for
/// `master-cli` and tests.
fn write_ports(
    config: &Config,
    publish_port: u16,
    return_port: u16,
    api: SocketAddr,
    metrics: Option<SocketAddr>,
) -> Result<(), Error> {
    let body = serde_json::json!({
        "publish_port": publish_port,
        "return_port": return_port,
        "api": api.to_string(),
        "metrics": metrics.map(|m| m.to_string()),
        "pid": std::process::id(),
    });
    let path = config.ports_file();
    // Written whole, then renamed: a reader never sees half a file.
    let partial = path.with_extension("json.partial");
    std::fs::write(&partial, body.to_string())
        .and_then(|()| std::fs::rename(&partial, &path))
        .map_err(|source| Error::Io {
            context: format!("write {}", path.display()),
            source,
        })
}
