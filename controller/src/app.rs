//! One running controller's domain layer: its database, wakeups, agent presence and the
//! services every client calls (the HTTP API today, the portal later). A value, never
//! process-wide: several controllers can run in one process.

use crate::audit::{Audit, CheckpointKey};
use crate::cluster::ClusterStatus;
use crate::compliance::Compliance;
use crate::compliance::settings::Settings;
use crate::error::Result;
use crate::fleet::{Enrollment, Fleet};
use crate::inventory::Inventory;
use crate::lease::Leader;
use crate::lifecycle::Lifecycle;
use crate::notify::Notifier;
use crate::outbox::Notifications;
use crate::policies::Policies;
use crate::presence::Presence;
use crate::signin::Sessions;
use crate::store::db::{Db, DbOptions};
use crate::tokens::Tokens;
use crate::views::AgentViews;

/// What a controller needs besides its database; administration commands run without keys.
#[derive(Default)]
pub struct Parts {
    /// Agent enrolment (the CA, the grant-signing public key, the advertised endpoint).
    pub enrollment: Option<Enrollment>,
    /// The key that signs activity log checkpoints.
    pub checkpoint_key: Option<CheckpointKey>,
    /// Where the grant-signing keys' private halves are (None: this controller signs
    /// nothing for agents).
    pub key_dir: Option<crate::keys::files::KeyDir>,
    /// The CA (PEM) agent certificates must chain to, for verifying agent audit records.
    pub ca_pem: String,
    pub compliance: Option<Settings>,
    /// What an initiate obeys (the pending-approval limit).
    pub limits: crate::lifecycle::initiate::Limits,
    /// Sign-in with OpenID Connect, when `[oidc]` is configured.
    pub oidc: Option<std::sync::Arc<crate::signin::Oidc>>,
    /// Whether one-time sign-in links may be made and redeemed (`login_links`; default:
    /// only while `[oidc]` is not configured).
    pub login_links: bool,
    /// Roles new API tokens may carry (`oidc.token_roles`); None: any.
    pub token_roles: Option<Vec<jitgate_api::Role>>,
    /// How long the leader lease lasts without renewal (`leader_lease_seconds`; zero: 15 s).
    pub leader_lease: std::time::Duration,
    /// The cluster configuration fingerprint (`Config::fingerprint`).
    pub config_fingerprint: String,
    /// `[keys] switch_grace_seconds` (zero: the default).
    pub key_switch_grace: std::time::Duration,
}

/// A controller's services. Clones share everything.
#[derive(Clone)]
pub struct App {
    pub db: Db,
    pub notifier: Notifier,
    pub presence: Presence,
    /// Several controllers on one PostgreSQL: what this one knows of the others.
    pub cluster: ClusterStatus,
    /// Whether this controller does the once-per-cluster work now (`lease`).
    pub leader: Leader,
    pub tokens: Tokens,
    /// People's sign-in sessions.
    pub sessions: Sessions,
    pub inventory: Inventory,
    pub policies: Policies,
    pub lifecycle: Lifecycle,
    pub fleet: Fleet,
    pub audit: Audit,
    /// The grant-signing keys (rotation).
    pub keys: crate::keys::Ring,
    /// How long after an announcement the leader switches without every agent's
    /// acknowledgement (`[keys] switch_grace_seconds`).
    pub key_switch_grace: std::time::Duration,
    pub views: AgentViews,
    pub compliance: Compliance,
    /// Notification sinks and secrets (unavailable in administration commands).
    pub notifications: Notifications,
}

impl App {
    /// Opens the database at `url` and starts the services (and their writer tasks).
    pub async fn open(url: &str, opts: &DbOptions, parts: Parts) -> Result<App> {
        let notifier = Notifier::new();
        let presence = Presence::new();
        let db = Db::open(url, opts, notifier.clone()).await?;
        let policies = Policies::new(db.clone());
        let settings = match parts.compliance {
            Some(s) => s,
            None => Settings::from_config(&Default::default())
                .map_err(|e| crate::error::Error::Internal(e.to_string()))?,
        };
        let lease = if parts.leader_lease.is_zero() {
            std::time::Duration::from_secs(15)
        } else {
            parts.leader_lease
        };
        let name = holder_name(notifier.origin());
        let leader = Leader::new(name.clone(), parts.config_fingerprint.clone(), lease);
        Ok(App {
            tokens: Tokens::new(db.clone(), parts.token_roles),
            sessions: Sessions::new(db.clone(), parts.oidc, parts.login_links),
            inventory: Inventory::new(db.clone(), presence.clone(), policies.clone()),
            lifecycle: Lifecycle::start(db.clone(), parts.limits)?,
            fleet: Fleet::new(db.clone(), presence.clone(), parts.enrollment)?,
            audit: Audit::new(db.clone(), parts.checkpoint_key, &name),
            keys: crate::keys::Ring::new(parts.key_dir),
            key_switch_grace: if parts.key_switch_grace.is_zero() {
                crate::keys::KeysConfig::default().switch_grace()
            } else {
                parts.key_switch_grace
            },
            views: AgentViews::new(db.clone(), parts.ca_pem),
            compliance: Compliance::new(db.clone(), presence.clone(), settings),
            policies,
            db,
            notifier,
            presence,
            cluster: ClusterStatus::default(),
            leader,
            notifications: Notifications::default(),
        })
    }

    pub async fn close(&self) {
        self.db.close().await;
    }
}

/// This controller's name in the lease row: its host (for people reading it) and its
/// per-process id (unique).
fn holder_name(origin: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        origin.to_string()
    } else {
        format!("{host}/{origin}")
    }
}
