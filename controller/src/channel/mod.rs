//! The agent channel (docs/protocol.md): a TLS listener that requires a client certificate
//! chained to the controller CA, one long-lived connection per agent, signed policy, grants
//! and revocations pushed from the grant outbox, results, reports, audit records and
//! heartbeats from the agent.
//!
//! - [`tls`]: the listener's TLS, the client certificate's agent id, the signing key.
//! - [`conn`]: one agent's connection.
//! - [`reader`]: a connection's reader task (pongs noted there, not passed on).

pub mod conn;
mod reader;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::app::App;
use jitgate_proto::{
    LEVEL_QUIET_PINGS, LEVEL_SETTINGS, QUIET_AGENT_SILENCE, SILENT_PINGS, ping_interval,
};

/// Keepalive for agents before level 3 ([`LEVEL_SETTINGS`]): a Ping this often; they give up
/// on a controller silent for 45 s whatever it says.
pub const PING_EVERY: Duration = Duration::from_secs(15);
/// A connection of an agent before level 3 silent for this long is closed.
pub const IDLE_LIMIT: Duration = Duration::from_secs(45);

/// What every connection tells an agent of level 3 or later (`ControllerMsg::Settings`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Every controller's agent endpoint (`agent_endpoints`, else this controller's own).
    pub endpoints: Vec<String>,
    /// `agent_ping_seconds`: a frozen or cut-off controller is left after
    /// [`SILENT_PINGS`] of these.
    pub ping_every: Duration,
}

impl Settings {
    /// The ping interval and silence limit for an agent of protocol `level`. An agent at
    /// [`LEVEL_QUIET_PINGS`] or later does not answer pings: its status reports are what is
    /// heard from it.
    /// From [`jitgate_proto::LEVEL_SPARSE_PINGS`] on the agent is pinged every 3/2 of
    /// `agent_ping_seconds` and waits two of those ([`ping_interval`]).
    pub fn keepalive(&self, level: u32) -> (Duration, Duration) {
        if level >= LEVEL_QUIET_PINGS {
            (
                ping_interval(self.ping_every, level),
                (self.ping_every * SILENT_PINGS).max(QUIET_AGENT_SILENCE),
            )
        } else if level >= LEVEL_SETTINGS {
            (self.ping_every, self.ping_every * SILENT_PINGS)
        } else {
            (PING_EVERY, IDLE_LIMIT)
        }
    }
}
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
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let settings = Arc::new(settings);
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
            let (acceptor, app, settings, sd) = (
                acceptor.clone(),
                app.clone(),
                settings.clone(),
                shutdown.clone(),
            );
            tokio::spawn(async move {
                match conn::connection(acceptor, tcp, app, settings, sd).await {
                    Ok(agent) => tracing::info!(%peer, %agent, "agent connection closed"),
                    Err(e) => tracing::warn!(%peer, reason = %e, "agent connection closed"),
                }
            });
        }
    })
}
