//! HTTPS serving: rustls (ring provider) over tokio, hyper HTTP/1.1 with keep-alive.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::api::{AppState, PeerAddr, router};
use crate::error::SetupError;
use crate::state::{Config, StateDir};
use crate::store::{Store, StoreOptions};

/// A rustls server configuration from PEM files.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig, SetupError> {
    let io = |p: &std::path::Path, e: rustls_pki_types::pem::Error| {
        SetupError::Invalid(format!("{}: {e}", p.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| io(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| io(cert, e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| io(key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A running server.
pub struct ServerHandle {
    pub addr: SocketAddr,
    /// Where the agent channel listens.
    pub agent_addr: Option<SocketAddr>,
    pub store: Store,
    shutdown: watch::Sender<bool>,
    join: tokio::task::JoinHandle<()>,
    agent_join: Option<tokio::task::JoinHandle<()>>,
    compliance_join: Option<tokio::task::JoinHandle<()>>,
    /// The periodic checkpoint task and its key (a last checkpoint is signed at stop).
    checkpoint: Option<(tokio::task::JoinHandle<()>, ed25519_dalek::SigningKey)>,
}

impl ServerHandle {
    /// Stops accepting, stops the background tasks, waits for the accept loop, closes the
    /// database.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.join.await;
        if let Some(j) = self.agent_join {
            let _ = j.await;
        }
        if let Some(j) = self.compliance_join {
            let _ = j.await;
        }
        // After the other tasks: the last checkpoint covers everything they logged.
        if let Some((j, key)) = self.checkpoint {
            j.abort();
            let _ = j.await;
            if let Err(e) = self.store.checkpoint(&key).await {
                tracing::error!(error = %e, "signing the shutdown checkpoint failed");
            }
        }
        self.store.close().await;
    }
}

/// Opens the database of a state directory and starts serving on `cfg.listen`.
pub async fn start(dir: &StateDir, cfg: &Config) -> Result<ServerHandle, SetupError> {
    let store = Store::open(
        &cfg.database_url(dir),
        &StoreOptions {
            max_connections: cfg.max_db_connections,
            sqlite_synchronous: cfg.sqlite_synchronous.clone(),
        },
    )
    .await?;
    let tls = tls_config(&dir.server_cert(), &dir.server_key())?;
    let listener = TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| SetupError::Io {
            path: format!("listen {}", cfg.listen),
            source: e,
        })?;
    let mut trusted = Vec::new();
    for p in &cfg.trusted_proxies {
        trusted.push(
            p.parse()
                .map_err(|e| SetupError::Invalid(format!("trusted_proxies: {p:?}: {e}")))?,
        );
    }
    let agent_listener =
        TcpListener::bind(&cfg.agent_listen)
            .await
            .map_err(|e| SetupError::Io {
                path: format!("agent_listen {}", cfg.agent_listen),
                source: e,
            })?;
    let agent_addr = agent_listener.local_addr().map_err(|e| SetupError::Io {
        path: "agent listener".into(),
        source: e,
    })?;
    let agent_tls =
        crate::channel::agent_tls_config(&dir.server_cert(), &dir.server_key(), &dir.ca_cert())?;
    let key = crate::channel::load_signing_key(&dir.signing_key())?;
    store.set_checkpoint_key(key.verifying_key());
    let key_for_stop = key.clone();
    let pub_pem = std::fs::read_to_string(dir.signing_pub()).map_err(|e| SetupError::Io {
        path: dir.signing_pub().display().to_string(),
        source: e,
    })?;
    let enroll = crate::api::EnrollCtx {
        ca: crate::agents::Ca::load(&dir.ca_cert(), &dir.ca_key())?,
        grant_signing_key_pem: pub_pem,
        agent_endpoint: cfg
            .agent_endpoint
            .clone()
            .unwrap_or_else(|| agent_addr.to_string()),
    };
    let compliance = crate::compliance::schedule::Scheduler::new(
        store.clone(),
        Arc::new(crate::compliance::Settings::from_config(&cfg.compliance)?),
    );
    let state = AppState {
        store: store.clone(),
        trusted_proxies: trusted,
        max_body_bytes: cfg.max_body_bytes,
        enroll: Arc::new(enroll),
        compliance: compliance.clone(),
        checkpoint_key: Arc::new(key.clone()),
    };
    let mut h = serve(
        listener,
        tls,
        state,
        Duration::from_secs(cfg.expiry_sweep_seconds.max(1)),
    )
    .await?;
    let checkpoints = spawn_checkpointer(
        store.clone(),
        key.clone(),
        Duration::from_secs(cfg.checkpoint_interval_seconds.max(1)),
    );
    let agents = crate::channel::serve_agents(
        agent_listener,
        agent_tls,
        store,
        key,
        h.shutdown.subscribe(),
    );
    h.checkpoint = Some((checkpoints, key_for_stop));
    h.agent_addr = Some(agent_addr);
    h.agent_join = Some(agents);
    h.compliance_join = Some(compliance.spawn(h.shutdown.subscribe()));
    Ok(h)
}

/// Signs the activity log's head every `every` if it moved (`ServerHandle::stop` signs the
/// last one).
fn spawn_checkpointer(
    store: Store,
    key: ed25519_dalek::SigningKey,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = store.checkpoint(&key).await {
                tracing::error!(error = %e, "signing an activity log checkpoint failed");
            }
        }
    })
}

/// Serves the API on an already-bound listener.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    state: AppState,
    sweep_every: Duration,
) -> Result<ServerHandle, SetupError> {
    let addr = listener.local_addr().map_err(|e| SetupError::Io {
        path: "listener".into(),
        source: e,
    })?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let store = state.store.clone();
    let app = router(state);
    let (tx, mut rx) = watch::channel(false);
    let mut sweep_rx = tx.subscribe();
    let sweep_store = store.clone();
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(sweep_every);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = sweep_store.expire_due(crate::model::now_ms()).await {
                        tracing::error!(error = %e, "expiry sweep failed");
                    }
                }
                _ = sweep_rx.changed() => break,
            }
        }
    });
    let join = tokio::spawn(async move {
        tracing::info!(%addr, "serving HTTPS API");
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = rx.changed() => break,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let app = app.clone();
            let mut conn_rx = rx.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                    req.extensions_mut().insert(PeerAddr(peer));
                    let mut app = app.clone();
                    async move { tower_service::Service::call(&mut app, req).await }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(tls), svc);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    }
                    _ = conn_rx.changed() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                    }
                }
            });
        }
        let _ = sweeper.await;
    });
    Ok(ServerHandle {
        addr,
        agent_addr: None,
        agent_join: None,
        compliance_join: None,
        checkpoint: None,
        store,
        shutdown: tx,
        join,
    })
}
