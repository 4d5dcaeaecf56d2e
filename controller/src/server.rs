//! A running controller: its [`App`] opened from the state directory, the HTTPS API (rustls
//! with the ring provider over tokio, hyper HTTP/1.1 with keep-alive), the agent channel, and
//! the background work (the expiry sweep, periodic checkpoints, the compliance schedule, and
//! on PostgreSQL the cluster tasks: other controllers' commits, catch-up, presence).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::app::{App, Parts};
use crate::channel::tls::ServerCert;
use crate::compliance::settings::Settings;
use crate::error::SetupError;
use crate::fleet::Enrollment;
use crate::fleet::ca::Ca;
use crate::http::extract::PeerAddr;
use crate::http::router;
use crate::http::state::AppState;
use crate::metrics::Metrics;
use crate::state::{Config, StateDir};
use crate::store::Backend;

/// The API's rustls server configuration: the server certificate from `server` (reloaded
/// when its files change).
pub fn tls_config(server: Arc<ServerCert>) -> Result<rustls::ServerConfig, SetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(server);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Reloads the server certificate when its files change (checked every `every`; never
/// when zero) and on SIGHUP, and keeps the expiry metric true.
fn spawn_cert_reloader(
    server: Arc<ServerCert>,
    ca_pem: String,
    metrics: Metrics,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(if every.is_zero() {
            Duration::from_secs(3600)
        } else {
            every
        });
        tick.reset();
        loop {
            let force = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                _ = shutdown.changed() => return,
            };
            if !force && every.is_zero() {
                continue;
            }
            match server.reload(force) {
                Ok(true) => {
                    let pem = server.pem();
                    crate::health::record_cert_expiry(&metrics, &pem, &ca_pem);
                    tracing::info!(
                        expires_unix = crate::health::cert_expiry(&pem).ok(),
                        "server certificate reloaded: new connections get it"
                    );
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "server certificate not reloaded; the one loaded is kept")
                }
            }
        }
    })
}

/// A running controller.
pub struct ServerHandle {
    pub addr: SocketAddr,
    /// Where the agent channel listens.
    pub agent_addr: SocketAddr,
    /// Where the metrics listener is bound (`metrics_listen`), if configured.
    pub metrics_addr: Option<SocketAddr>,
    pub app: App,
    /// This controller's metrics.
    pub metrics: Metrics,
    /// The server certificate served to new connections (API and agent channel).
    pub server_cert: Arc<ServerCert>,
    ca_pem: String,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The periodic checkpoint task (a last checkpoint is signed at stop).
    checkpointer: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// Reads the server certificate and key files again now (what SIGHUP does): `Ok(true)`
    /// when new connections get a new certificate. The expiry metric follows.
    pub fn reload_server_cert(&self) -> Result<bool, SetupError> {
        let changed = self.server_cert.reload(true)?;
        if changed {
            crate::health::record_cert_expiry(&self.metrics, &self.server_cert.pem(), &self.ca_pem);
        }
        Ok(changed)
    }

    /// Stops accepting, stops the background tasks, signs a last checkpoint, closes the
    /// database.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // After the other tasks: the last checkpoint covers everything they logged.
        self.checkpointer.abort();
        let _ = self.checkpointer.await;
        // Only the leader signs (another controller's checkpoints cover what this one
        // logged); then it gives the lease up, so that another takes over at once.
        if let Some(Err(e)) = self.app.leader.run(self.app.audit.checkpoint()).await {
            tracing::error!(error = %e, "signing the shutdown checkpoint failed");
        }
        self.app.leader.release(&self.app.db).await;
        self.app.close().await;
    }
}

fn read(path: &std::path::Path) -> Result<String, SetupError> {
    std::fs::read_to_string(path).map_err(|e| SetupError::io(path.display(), e))
}

/// Pending connections a listener holds (the kernel caps it at `net.core.somaxconn`): when a
/// controller goes away, its agents all reconnect to the others at once, and a short queue
/// would drop their SYNs into the kernel's 1 s, 3 s, 7 s retransmissions.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(addr: &str, what: &str) -> Result<TcpListener, SetupError> {
    let err = |e| SetupError::io(format!("{what} {addr}"), e);
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for a in tokio::net::lookup_host(addr).await.map_err(err)? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(err)?;
        socket.set_reuseaddr(true).map_err(err)?;
        match socket.bind(a).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(err(last))
}

/// Opens the database of a state directory and serves the API on `cfg.listen` and the agent
/// channel on `cfg.agent_listen`.
pub async fn start(dir: &StateDir, cfg: &Config) -> Result<ServerHandle, SetupError> {
    let server_cert = Arc::new(ServerCert::load(&dir.server_cert(), &dir.server_key())?);
    let tls = tls_config(server_cert.clone())?;
    let mut trusted = Vec::new();
    for p in &cfg.trusted_proxies {
        trusted.push(
            p.parse()
                .map_err(|e| SetupError::Invalid(format!("trusted_proxies: {p:?}: {e}")))?,
        );
    }
    let listener = bind(&cfg.listen, "listen").await?;
    let agent_listener = bind(&cfg.agent_listen, "agent_listen").await?;
    let addr = listener
        .local_addr()
        .map_err(|e| SetupError::io("listener", e))?;
    let agent_addr = agent_listener
        .local_addr()
        .map_err(|e| SetupError::io("agent listener", e))?;
    let own_endpoint = cfg
        .agent_endpoint
        .clone()
        .unwrap_or_else(|| agent_addr.to_string());
    let channel_settings = crate::channel::Settings {
        endpoints: if cfg.agent_endpoints.is_empty() {
            vec![own_endpoint.clone()]
        } else {
            cfg.agent_endpoints.clone()
        },
        ping_every: Duration::from_secs(cfg.agent_ping_seconds.max(1)),
    };
    if !channel_settings.endpoints.contains(&own_endpoint) {
        tracing::warn!(endpoint = %own_endpoint, listed = ?channel_settings.endpoints,
            "agent_endpoints does not list this controller's own agent endpoint; agents will not come back to it unless a listed name leads here");
    }
    let metrics_listener = match &cfg.metrics_listen {
        Some(a) => {
            let l = bind(a, "metrics_listen").await?;
            let bound = l
                .local_addr()
                .map_err(|e| SetupError::io("metrics listener", e))?;
            Some((l, bound))
        }
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().map(|(_, a)| *a);
    let metrics = Metrics::new();
    let ca_pem = read(&dir.ca_cert())?;
    crate::health::record_cert_expiry(&metrics, &server_cert.pem(), &ca_pem);
    let (past_grace_tx, past_grace_rx) = tokio::sync::mpsc::unbounded_channel();
    let agent_tls = crate::channel::tls::agent_tls_config(
        server_cert.clone(),
        &dir.ca_cert(),
        cfg.certificates.agent_grace(),
        Some(past_grace_tx),
    )?;
    let checkpoint_key = crate::state::load_checkpoint_key(dir, true)?;
    let key_dir = crate::keys::files::KeyDir::new(dir.signing_key());
    let switcher_dir = key_dir.clone();
    let public_pem = read(&dir.signing_pub())?;
    let ca = Ca::load(&dir.ca_cert(), &dir.ca_key())?;
    let oidc = start_oidc(dir, cfg).await?;
    let parts = Parts {
        token_roles: cfg.oidc.as_ref().and_then(|o| o.token_roles.clone()),
        login_links: cfg.login_links_enabled(),
        oidc,
        ca_pem: ca.pem.clone(),
        enrollment: Some(Enrollment {
            ca,
            grant_signing_key_pem: public_pem.clone(),
            agent_endpoint: own_endpoint.clone(),
            agent_endpoints: channel_settings.endpoints.clone(),
            certs: cfg.certificates.clone(),
        }),
        checkpoint_key: Some(checkpoint_key),
        key_dir: Some(key_dir),
        compliance: Some(Settings::from_config(&cfg.compliance)?),
        limits: crate::lifecycle::initiate::Limits {
            max_pending: i64::from(cfg.max_pending_per_requester),
            max_booking_ahead_ms: cfg.booking_horizon_ms().map_err(SetupError::Invalid)?,
        },
        leader_lease: Duration::from_secs(cfg.leader_lease_seconds.max(1)),
        config_fingerprint: cfg.fingerprint(dir),
        key_switch_grace: cfg.keys.switch_grace(),
    };
    let mut app = App::open(
        &cfg.database_url(dir),
        &cfg.db_options(cfg.max_db_connections),
        parts,
    )
    .await?;
    // The key `init` made is the first grant-signing key; after a rotation the database
    // names the one in use.
    if let Err(e) = app.keys.seed(&app.db, &public_pem).await {
        return Err(SetupError::Invalid(format!("grant-signing keys: {e}")));
    }
    if let Err(e) = app.keys.refresh(&app.db).await {
        return Err(SetupError::Invalid(format!("grant-signing keys: {e}")));
    }
    let outbox =
        crate::outbox::worker::setup(&cfg.notify, &dir.notify_secrets(), &app.db, &app.notifier)
            .await?;
    app.notifications = crate::outbox::Notifications::new(outbox.clone());
    let (shutdown, _) = watch::channel(false);
    let state = AppState {
        app: app.clone(),
        trusted_proxies: trusted,
        max_body_bytes: cfg.max_body_bytes,
        metrics: metrics.clone(),
        sign_in_limit: crate::http::ratelimit::RateLimit::new(
            SIGN_IN_PER_MINUTE,
            Duration::from_secs(60),
        ),
        public_origin: cfg
            .public_url
            .as_deref()
            .and_then(|u| url::Url::parse(u).ok())
            .map(|u| u.origin().ascii_serialization()),
    };
    let url = cfg.database_url(dir);
    let mut tasks = vec![
        app.leader.spawn(app.db.clone(), shutdown.subscribe()),
        serve(listener, tls, state.clone(), shutdown.subscribe(), addr),
        crate::health::spawn_probe(app.db.clone(), metrics.clone(), shutdown.subscribe()),
        spawn_sweeper(
            app.clone(),
            Duration::from_secs(cfg.expiry_sweep_seconds.max(1)),
            Leads {
                ending_soon_ms: ms(cfg.notify.ending_soon_lead_seconds),
                agent_offline_ms: ms(cfg.notify.agent_offline_after_seconds),
            },
            shutdown.subscribe(),
        ),
        app.keys.spawn(
            app.db.clone(),
            (app.db.backend() == Backend::Postgres).then(|| app.leader.holder().to_string()),
            shutdown.subscribe(),
        ),
        crate::keys::switcher::spawn(
            app.clone(),
            switcher_dir,
            cfg.keys.switch_grace(),
            shutdown.subscribe(),
        ),
        crate::channel::serve_agents(
            agent_listener,
            agent_tls,
            app.clone(),
            channel_settings,
            shutdown.subscribe(),
        ),
        crate::compliance::schedule::spawn(
            app.compliance.clone(),
            app.leader.clone(),
            shutdown.subscribe(),
        ),
        spawn_session_refresher(app.clone(), shutdown.subscribe()),
        app.fleet.spawn_reports(shutdown.subscribe()),
        spawn_cert_reloader(
            server_cert.clone(),
            ca_pem.clone(),
            metrics.clone(),
            Duration::from_secs(cfg.certificates.server_reload_seconds),
            shutdown.subscribe(),
        ),
        app.fleet.spawn_past_grace(past_grace_rx),
    ];
    tasks.push(crate::outbox::spawn(
        outbox,
        app.leader.clone(),
        shutdown.subscribe(),
    ));
    if let Some((l, a)) = metrics_listener {
        tasks.push(serve_metrics(l, state, shutdown.subscribe(), a));
    }
    if app.db.backend() == Backend::Postgres {
        tasks.extend(crate::cluster::spawn(
            crate::cluster::Parts {
                db: app.db.clone(),
                url,
                notifier: app.notifier.clone(),
                presence: app.presence.clone(),
                status: app.cluster.clone(),
            },
            &shutdown.subscribe(),
        ));
    }
    let checkpointer = spawn_checkpointer(
        app.clone(),
        Duration::from_secs(cfg.checkpoint_interval_seconds.max(1)),
    );
    Ok(ServerHandle {
        server_cert,
        ca_pem,
        addr,
        agent_addr,
        metrics_addr,
        app,
        metrics,
        shutdown,
        tasks,
        checkpointer,
    })
}

/// Sign-in starts (`/auth/login`, device flow) accepted per client address and minute.
const SIGN_IN_PER_MINUTE: u32 = 30;
/// How often due sessions are looked for (each is refreshed every 15 minutes).
const SESSION_SWEEP: Duration = Duration::from_secs(30);

/// The relying party for `[oidc]`, with this state directory's sealing key. An unreachable
/// provider is no error: sign-in is unavailable (health says so) and discovery is retried.
async fn start_oidc(
    dir: &StateDir,
    cfg: &Config,
) -> Result<Option<Arc<crate::signin::Oidc>>, SetupError> {
    let Some(oc) = &cfg.oidc else {
        return Ok(None);
    };
    let key_path = dir.oidc_seal_key();
    let key = if key_path.exists() {
        jitgate_oidc::SealKey::load(&key_path)
    } else {
        // A state directory made before sign-in existed: make the key now. Controllers on
        // one database must share it: copy it to the others.
        tracing::warn!(path = %key_path.display(),
            "no sign-in sealing key: creating one (copy it to every controller on this database)");
        jitgate_oidc::SealKey::create_file(&key_path)
    }
    .map_err(|e| SetupError::Invalid(e.to_string()))?;
    let portal_redirect = cfg
        .public_url
        .as_ref()
        .map(|u| format!("{}/auth/callback", u.trim_end_matches('/')));
    let rp = jitgate_oidc::RelyingParty::start(
        oc,
        jitgate_oidc::Options {
            portal_redirect,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| SetupError::Invalid(e.to_string()))?;
    match rp.status() {
        jitgate_oidc::ProviderStatus::Ready { .. } => {
            tracing::info!(issuer = %oc.issuer, "sign-in with the identity provider is ready");
        }
        jitgate_oidc::ProviderStatus::Unavailable { reason, .. } => {
            tracing::error!(issuer = %oc.issuer, %reason,
                "the identity provider is unreachable: sign-in is unavailable until discovery                  succeeds (retried); API tokens keep working");
        }
    }
    Ok(Some(Arc::new(crate::signin::Oidc {
        rp,
        sealer: jitgate_oidc::Sealer::new(&key),
        config: oc.clone(),
    })))
}

/// Refreshes people's sessions as they come due (and ends those whose refresh fails).
fn spawn_session_refresher(
    app: App,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if app.sessions.status().is_none() {
            return;
        }
        let mut tick = tokio::time::interval(SESSION_SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    match app.sessions.refresh_due(jitgate_api::time::now_ms()).await {
                        Ok(s) if s.refreshed + s.ended > 0 => {
                            tracing::info!(refreshed = s.refreshed, ended = s.ended, "session refresh sweep");
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!(error = %e, "session refresh sweep failed"),
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
    })
}

fn ms(seconds: u64) -> i64 {
    i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// What the sweeper tells ahead of or after the fact.
struct Leads {
    /// `access.ending_soon` this long before a window ends.
    ending_soon_ms: i64,
    /// `agent.offline` after an agent is gone this long.
    agent_offline_ms: i64,
}

/// While this controller leads: marks ended access every `every` (the controller's
/// bookkeeping; the kernel enforces), times out pending approvals, and tells of access ending
/// soon and of agents gone offline or back.
fn spawn_sweeper(
    app: App,
    every: Duration,
    leads: Leads,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let since = jitgate_api::time::now_ms();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    app.leader.run(sweep(&app, &leads, since)).await;
                }
                _ = shutdown.changed() => break,
            }
        }
    })
}

/// One sweep (leader work): expiry and approval timeouts, ending soon, agents offline.
async fn sweep(app: &App, leads: &Leads, since: i64) {
    let now = jitgate_api::time::now_ms();
    if let Err(e) = app.lifecycle.expire_due(now).await {
        tracing::error!(error = %e, "expiry sweep failed");
    }
    if let Err(e) = app
        .lifecycle
        .tell_ending_soon(now, leads.ending_soon_ms)
        .await
    {
        tracing::error!(error = %e, "ending-soon sweep failed");
    }
    let offline =
        crate::fleet::watch::check(&app.db, &app.presence, now, leads.agent_offline_ms, since);
    if let Err(e) = offline.await {
        tracing::error!(error = %e, "agent offline watch failed");
    }
}

/// While this controller leads: signs the activity log's head every `every` if it moved
/// (`ServerHandle::stop` signs the last one), then verifies the entries appended since the last time (the verified mark).
fn spawn_checkpointer(app: App, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let work = async {
                if let Err(e) = app.audit.checkpoint().await {
                    tracing::error!(error = %e, "signing an activity log checkpoint failed");
                }
                if let Err(e) = app.audit.extend_verified(crate::audit::VERIFY_STEP).await {
                    tracing::error!(error = %e, "verifying the new activity log entries failed");
                }
            };
            app.leader.run(work).await;
        }
    })
}

/// Serves the API on a bound listener until `shutdown` turns true.
fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    state: AppState,
    mut shutdown: watch::Receiver<bool>,
    addr: SocketAddr,
) -> tokio::task::JoinHandle<()> {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let app = router(state);
    tokio::spawn(async move {
        tracing::info!(%addr, "serving HTTPS API");
        while let Some((tcp, peer)) = next_connection(&listener, &mut shutdown).await {
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let app = app.clone();
            let conn_shutdown = shutdown.clone();
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
                serve_connection(tls, app, peer, Duration::from_secs(30), conn_shutdown).await;
            });
        }
    })
}

/// Serves the metrics listener (plain HTTP/1.1, read-only) until `shutdown` turns true.
fn serve_metrics(
    listener: TcpListener,
    state: AppState,
    mut shutdown: watch::Receiver<bool>,
    addr: SocketAddr,
) -> tokio::task::JoinHandle<()> {
    let app = crate::http::ops::metrics_router(state);
    tokio::spawn(async move {
        tracing::info!(%addr, "serving metrics and health over HTTP");
        while let Some((tcp, peer)) = next_connection(&listener, &mut shutdown).await {
            let app = app.clone();
            let conn_shutdown = shutdown.clone();
            tokio::spawn(serve_connection(
                tcp,
                app,
                peer,
                Duration::from_secs(10),
                conn_shutdown,
            ));
        }
    })
}

/// The next accepted connection, or `None` once `shutdown` turns true (accept errors are
/// logged and retried).
async fn next_connection(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return None,
        }
    }
}

/// Serves HTTP/1.1 (keep-alive) on one connection with `app` until it ends; at shutdown,
/// lets the request in flight finish (at most 5 s).
async fn serve_connection<I>(
    io: I,
    app: axum::Router,
    peer: SocketAddr,
    header_read_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(PeerAddr(peer));
        let mut app = app.clone();
        async move { tower_service::Service::call(&mut app, req).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}
