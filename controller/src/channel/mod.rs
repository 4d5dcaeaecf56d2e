//! The agent channel (docs/protocol.md): a TLS listener that requires a client certificate
//! chained to the controller CA, one long-lived connection per agent, signed policy, grants
//! and revocations pushed from the grant outbox, results, reports, audit records and
//! heartbeats from the agent.
//!
//! - [`tls`]: the listener's TLS, the client certificate's agent id, the signing key.
//! - [`conn`]: one agent's connection.

pub mod conn;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::app::App;

/// Keepalive: a Ping after this long without traffic from the agent.
pub const PING_EVERY: Duration = Duration::from_secs(15);
/// A connection silent for this long is closed.
pub const IDLE_LIMIT: Duration = Duration::from_secs(45);
/// How often a connection re-checks that its agent is still active (revocation), on SQLite
/// (on PostgreSQL revocation is pushed, with the cluster catch-up behind it).
pub const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Time allowed for the TLS handshake and the agent's Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Outbox rows read per query.
pub const OUTBOX_BATCH: i64 = 500;

/// Serves agents on `listener` until `shutdown` turns true.
pub fn serve_agents(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    app: App,
    key: SigningKey,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let key = Arc::new(key);
    app.presence.set_serving();
    tokio::spawn(async move {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "serving the agent channel");
        }
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "agent accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => break,
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, app, key, sd) =
                (acceptor.clone(), app.clone(), key.clone(), shutdown.clone());
            tokio::spawn(async move {
                match conn::connection(acceptor, tcp, app, key, sd).await {
                    Ok(agent) => tracing::info!(%peer, %agent, "agent connection closed"),
                    Err(e) => tracing::warn!(%peer, reason = %e, "agent connection closed"),
                }
            });
        }
    })
}
