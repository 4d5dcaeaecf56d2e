//! The controller's state directory and its configuration file.
//!
//! ```text
//! STATE_DIR/
//!   controller.toml          configuration (TOML, snake_case)
//!   jit.db                   the embedded SQLite database (plus -wal/-shm)
//!   tls/ca.crt, tls/ca.key   the CA operators and agents trust
//!   tls/server.crt, .key     the API's certificate, signed by the CA
//!   keys/grant-signing.key   Ed25519 private key (PKCS#8 PEM, 0600) that signs grants,
//!                            revocations and policies to agents; destroyed when a
//!                            rotation retires it
//!   keys/grant-signing.pub   its public key (SPKI PEM), given to agents at enrolment
//!   keys/grant-<id>.key      keys made by `keys rotate` (the key ring is in the database)
//!   keys/checkpoint.key      Ed25519 key (0600) that signs the activity log's checkpoints
//!   keys/checkpoint.pub      its public key, carried in activity log exports
//!   keys/checkpoint-retired-N.pub  replaced checkpoint keys, still trusted for old checkpoints
//!   keys/oidc-seal.key       sealing key (mode 0600) of sign-in state and stored refresh
//!                            tokens; every controller on one database needs the same file
//!   notify-secrets/          named secrets of notification sinks (0700)
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use jitgate_api::{Role, Scope};

use crate::error::SetupError;
use crate::store::db::{DbOptions, Synchronous, sqlite_url};

mod checkpoint_key;
mod files;

pub use checkpoint_key::{
    RETIRED_CHECKPOINT_PREFIX, Replacement, load_checkpoint_key, replace_checkpoint_key,
};
pub use files::{InitOutcome, ServerRenewal, init, renew_server_cert};

/// Default state directory (override with `--state-dir` or `JIT_CONTROLLER_STATE_DIR`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/jitgate-controller";

#[derive(Clone, Debug)]
pub struct StateDir(pub PathBuf);

impl StateDir {
    pub fn config(&self) -> PathBuf {
        self.0.join("controller.toml")
    }
    pub fn db(&self) -> PathBuf {
        self.0.join("jit.db")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.0.join("tls/ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.0.join("tls/ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.0.join("tls/server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.0.join("tls/server.key")
    }
    pub fn signing_key(&self) -> PathBuf {
        self.0.join("keys/grant-signing.key")
    }
    pub fn signing_pub(&self) -> PathBuf {
        self.0.join("keys/grant-signing.pub")
    }
    /// The key that signs the activity log's checkpoints: a key of its own, so that the
    /// grant-signing key `init` made can be destroyed when a rotation retires it.
    pub fn checkpoint_key(&self) -> PathBuf {
        self.0
            .join("keys")
            .join(crate::keys::files::CHECKPOINT_KEY_FILE)
    }
    /// Its public half (SPKI PEM): what `jit audit verify --offline --key` checks against.
    pub fn checkpoint_pub(&self) -> PathBuf {
        self.0.join("keys/checkpoint.pub")
    }
    /// The key that seals sign-in state and the identity provider's refresh tokens.
    pub fn oidc_seal_key(&self) -> PathBuf {
        self.0.join("keys/oidc-seal.key")
    }
    /// The notification secrets (`notify.secrets_dir` by default).
    pub fn notify_secrets(&self) -> PathBuf {
        self.0.join("notify-secrets")
    }
}

fn default_listen() -> String {
    "127.0.0.1:8443".into()
}
fn default_agent_listen() -> String {
    "127.0.0.1:8444".into()
}
/// `max_body_bytes` when the config does not set it.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

fn default_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_sync() -> Synchronous {
    Synchronous::Full
}
fn default_max_pending() -> u32 {
    20
}

fn default_sweep() -> u64 {
    5
}
fn default_conns() -> u32 {
    8
}
fn default_checkpoint() -> u64 {
    300
}

fn default_lease() -> u64 {
    15
}
fn default_agent_ping() -> u64 {
    2
}
/// The bounds of `agent_ping_seconds`.
const AGENT_PING_SECONDS: std::ops::RangeInclusive<u64> = 1..=15;

/// `controller.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address and port the HTTPS API listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// `sqlite://...` or `postgres://...`; default: `jit.db` in the state directory.
    #[serde(default)]
    pub database_url: Option<String>,
    /// Proxies (CIDRs) whose X-Forwarded-For header is believed for "My IP".
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Largest accepted request body.
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    /// SQLite durability: "full" (default) or "normal".
    #[serde(default = "default_sync")]
    pub sqlite_synchronous: Synchronous,
    /// How often ended access is marked Revoked/Expired (and pending requests past their
    /// approval deadline time out).
    #[serde(default = "default_sweep")]
    pub expiry_sweep_seconds: u64,
    /// Most requests one principal may have pending approval at once.
    #[serde(default = "default_max_pending")]
    pub max_pending_per_requester: u32,
    /// Furthest ahead a port may be booked (ISO 8601, PT1M to P7D; default P7D).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_booking_ahead: Option<String>,
    #[serde(default = "default_conns")]
    pub max_db_connections: u32,
    /// Address and port of the agent channel (mutual TLS, docs/protocol.md).
    #[serde(default = "default_agent_listen")]
    pub agent_listen: String,
    /// The agent channel's address as agents should dial it (host:port), given to agents at
    /// enrolment; default: the address `agent_listen` is bound to.
    #[serde(default)]
    pub agent_endpoint: Option<String>,
    /// Several controllers: every controller's agent channel as agents dial it (host:port),
    /// the same list on every controller. Given to agents at enrolment and on every
    /// connection; an agent whose controller goes away tries the next one at once (docs/ha.md,
    /// "Agent failover"). Default: this controller's own endpoint only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_endpoints: Vec<String>,
    /// How often the controller pings each agent (1 to 15 s, default 2). An agent leaves a
    /// controller silent for three pings, so this bounds how long a frozen or cut-off
    /// controller keeps its agents (about 3 × this + one reconnect). Agents at protocol
    /// level 11 are pinged every 1.5 × this and leave after two: the same bound.
    #[serde(default = "default_agent_ping")]
    pub agent_ping_seconds: u64,
    /// How often the activity log's chain head is signed (a checkpoint), if it moved; also
    /// on demand and at shutdown (docs/controller.md, "Activity log").
    #[serde(default = "default_checkpoint")]
    pub checkpoint_interval_seconds: u64,
    /// Several controllers on one database: how long the leader lease lasts without renewal
    /// (renewed every third of it). A controller that stops or freezes is replaced as leader
    /// (sweeps, schedules, checkpoints, notification delivery) within about 4/3 of this
    /// (docs/ha.md, "Leader lease"). Default 15.
    #[serde(default = "default_lease")]
    pub leader_lease_seconds: u64,
    /// Address and port of the metrics listener (plain HTTP, read-only: `/metrics`,
    /// `/healthz`, `/readyz`; docs/operations.md, "Metrics and health"). Off when unset;
    /// `init` writes `127.0.0.1:9465` unless told otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// Log lines as text (default) or one JSON object per line; `--log-format` overrides.
    #[serde(default)]
    pub log_format: crate::logging::LogFormat,
    /// Which log lines are written: a tracing `EnvFilter` (`RUST_LOG` syntax, e.g.
    /// `"info,jitgate_controller::channel=debug"`); the `JIT_LOG` environment variable
    /// overrides. Default `info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_filter: Option<String>,
    /// Compliance: management ports, schedule, probe bounds (docs/compliance.md). Not written
    /// by `init` (the defaults apply until a `[compliance]` table is added).
    #[serde(default, skip_serializing)]
    pub compliance: crate::compliance::settings::ComplianceConfig,
    /// Notifications: sinks, secrets, what sinks may reach, retries, retention
    /// (docs/notifications.md). Not written by `init`.
    #[serde(default, skip_serializing)]
    pub notify: jitgate_notify::NotifyConfig,
    /// How long each kind of record is kept (`jit-controller prune`; docs/operations.md,
    /// "Retention"). Not written by `init` (the defaults apply).
    #[serde(default, skip_serializing)]
    pub retention: crate::retention::RetentionConfig,
    /// The controller's public https URL as browsers reach it (`https://jit.example.net`):
    /// the portal's sign-in redirect is this plus `/auth/callback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// OpenID Connect sign-in for people (docs/identity.md). Not written by `init`.
    #[serde(default, skip_serializing)]
    pub oidc: Option<jitgate_oidc::OidcConfig<Role, Scope>>,
    /// One-time portal sign-in links (`jit-controller login-link`, docs/portal.md). Default:
    /// on while `[oidc]` is not configured, off once it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_links: Option<bool>,
    /// Certificate lifetimes and renewal (docs/operations.md, "Rotation"). Not written by
    /// `init` (the defaults apply).
    #[serde(default, skip_serializing)]
    pub certificates: CertConfig,
    /// Grant-signing key rotation: the switch's grace (docs/operations.md, "Rotation"). Not
    /// written by `init` (the defaults apply).
    #[serde(default, skip_serializing)]
    pub keys: crate::keys::KeysConfig,
}

pub use crate::fleet::ca::CertConfig;

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: default_listen(),
            database_url: None,
            trusted_proxies: vec![],
            max_body_bytes: default_body(),
            sqlite_synchronous: default_sync(),
            expiry_sweep_seconds: default_sweep(),
            max_pending_per_requester: default_max_pending(),
            max_booking_ahead: None,
            max_db_connections: default_conns(),
            agent_listen: default_agent_listen(),
            agent_endpoint: None,
            agent_endpoints: vec![],
            agent_ping_seconds: default_agent_ping(),
            checkpoint_interval_seconds: default_checkpoint(),
            leader_lease_seconds: default_lease(),
            metrics_listen: None,
            log_format: Default::default(),
            log_filter: None,
            compliance: Default::default(),
            notify: Default::default(),
            retention: Default::default(),
            public_url: None,
            oidc: None,
            login_links: None,
            certificates: CertConfig::default(),
            keys: Default::default(),
        }
    }
}

impl Config {
    /// Whether one-time sign-in links are on (`login_links`, else: only without `[oidc]`).
    pub fn login_links_enabled(&self) -> bool {
        self.login_links.unwrap_or(self.oidc.is_none())
    }

    pub fn database_url(&self, dir: &StateDir) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| sqlite_url(&dir.db()))
    }

    /// `max_booking_ahead` in ms (default and at most P7D: agents refuse bookings further
    /// ahead).
    pub fn booking_horizon_ms(&self) -> Result<i64, String> {
        let Some(d) = &self.max_booking_ahead else {
            return Ok(crate::request::MAX_BOOKING_AHEAD_MS);
        };
        let secs =
            jitgate_api::duration::parse(d).map_err(|e| format!("max_booking_ahead {d:?}: {e}"))?;
        let ms = secs.saturating_mul(1000);
        if !(60_000..=crate::request::MAX_BOOKING_AHEAD_MS).contains(&ms) {
            return Err(format!("max_booking_ahead {d} is outside PT1M..P7D"));
        }
        Ok(ms)
    }

    /// What every controller of a cluster must agree on, as one SHA-256 (hex): every
    /// setting but those that are this host's own (listen addresses, the endpoint it
    /// advertises, metrics, logging, the database URL and pool size, trusted proxies), and
    /// the keys and certificates operators copy between controllers (the CA, the
    /// grant-signing public key, the sign-in sealing key). Compared with the leader's for
    /// `/readyz` (docs/ha.md, "Configuration drift"); the hash reveals nothing of them.
    pub fn fingerprint(&self, dir: &StateDir) -> String {
        use sha2::{Digest, Sha256};
        let mut shared = self.clone();
        shared.listen.clear();
        shared.agent_listen.clear();
        shared.agent_endpoint = None;
        shared.metrics_listen = None;
        shared.log_format = Default::default();
        shared.log_filter = None;
        shared.database_url = None;
        shared.max_db_connections = 0;
        shared.trusted_proxies.clear();
        let mut h = Sha256::new();
        h.update(b"jitgate cluster configuration v1\0");
        h.update(format!("{shared:?}").as_bytes());
        for file in [dir.ca_cert(), dir.signing_pub(), dir.oidc_seal_key()] {
            h.update(b"\0");
            // A missing file (no sign-in key yet) hashes as empty, alike on every controller.
            h.update(std::fs::read(file).unwrap_or_default());
        }
        // The checkpoint key, when it is not the key `init` made (a state directory from
        // before the split): so the hash stays what it was for those, across an upgrade.
        let checkpoint = std::fs::read(dir.checkpoint_pub()).unwrap_or_default();
        if !checkpoint.is_empty()
            && checkpoint != std::fs::read(dir.signing_pub()).unwrap_or_default()
        {
            h.update(b"\0checkpoint\0");
            h.update(checkpoint);
        }
        hex::encode(h.finalize())
    }

    /// How the controller opens its database (`connections` per pool).
    pub fn db_options(&self, connections: u32) -> DbOptions {
        DbOptions {
            max_connections: connections,
            synchronous: self.sqlite_synchronous,
            ..DbOptions::default()
        }
    }

    pub fn load(dir: &StateDir) -> Result<Config, SetupError> {
        let p = dir.config();
        let text = std::fs::read_to_string(&p).map_err(|e| SetupError::Io {
            path: p.display().to_string(),
            reason: e,
        })?;
        let cfg: Config = toml::from_str(&text)
            .map_err(|e| SetupError::Invalid(format!("{}: {e}", p.display())))?;
        cfg.booking_horizon_ms()
            .map_err(|e| SetupError::Invalid(format!("{}: {e}", p.display())))?;
        if let Some(u) = &cfg.public_url {
            match url::Url::parse(u) {
                Ok(parsed) if parsed.scheme() == "https" && parsed.path() == "/" => {}
                _ => {
                    return Err(SetupError::Invalid(format!(
                        "{}: public_url {u:?} must be an https URL without a path \
                         (https://jit.example.net)",
                        p.display()
                    )));
                }
            }
        }
        cfg.certificates
            .validate()
            .map_err(|e| SetupError::Invalid(format!("{}: {e}", p.display())))?;
        if !AGENT_PING_SECONDS.contains(&cfg.agent_ping_seconds) {
            return Err(SetupError::Invalid(format!(
                "{}: agent_ping_seconds must be from {} to {}, not {}",
                p.display(),
                AGENT_PING_SECONDS.start(),
                AGENT_PING_SECONDS.end(),
                cfg.agent_ping_seconds
            )));
        }
        if cfg.agent_endpoints.len() > jitgate_proto::MAX_ENDPOINTS {
            return Err(SetupError::Invalid(format!(
                "{}: agent_endpoints lists {} controllers; at most {}",
                p.display(),
                cfg.agent_endpoints.len(),
                jitgate_proto::MAX_ENDPOINTS
            )));
        }
        for e in cfg.agent_endpoint.iter().chain(&cfg.agent_endpoints) {
            e.parse::<jitgate_proto::Endpoint>()
                .map_err(|err| SetupError::Invalid(format!("{}: {err}", p.display())))?;
        }
        cfg.retention
            .validate()
            .map_err(|e| SetupError::Invalid(format!("{}: {e}", p.display())))?;
        cfg.keys
            .validate()
            .map_err(|e| SetupError::Invalid(format!("{}: {e}", p.display())))?;
        if cfg.max_pending_per_requester == 0 {
            return Err(SetupError::Invalid(format!(
                "{}: max_pending_per_requester must be at least 1",
                p.display()
            )));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = StateDir(tmp.path().to_path_buf());
        std::fs::write(dir.config(), text).map_err(|e| e.to_string())?;
        Config::load(&dir).map_err(|e| e.to_string())
    }

    #[test]
    fn retention_is_checked_when_loaded_and_part_of_the_cluster_fingerprint() {
        let cfg = load("[retention]\nrequests_days = 30\nactivity_days = 3650\n");
        let cfg = cfg.as_ref().map_err(String::as_str);
        assert_eq!(cfg.map(|c| c.retention.requests_days), Ok(30));
        assert_eq!(cfg.map(|c| c.retention.activity_days), Ok(Some(3650)));
        let defaults = load("").map(|c| c.retention);
        assert_eq!(defaults, Ok(crate::retention::RetentionConfig::default()));
        let err = load("[retention]\ncompliance_days = 0\n")
            .err()
            .unwrap_or_default();
        assert!(
            err.contains("retention.compliance_days = 0 is out of range"),
            "{err}"
        );
        let tmp = tempfile::tempdir().ok();
        let dir = StateDir(tmp.as_ref().map_or_else(PathBuf::new, |t| t.path().into()));
        let a = Config::default();
        let mut b = Config::default();
        b.retention.activity_days = Some(365);
        assert_ne!(a.fingerprint(&dir), b.fingerprint(&dir));
    }

    #[test]
    fn agent_failover_settings_are_checked_when_loaded() {
        let ok = load(
            "agent_endpoints = [\"ctl-a.example.net:8444\", \"[2001:db8::2]:8444\"]\nagent_ping_seconds = 5\n",
        );
        let cfg = ok.as_ref().map_err(String::as_str);
        assert_eq!(cfg.map(|c| c.agent_ping_seconds), Ok(5));
        assert_eq!(load("").map(|c| c.agent_ping_seconds), Ok(2), "default");
        for (text, want) in [
            (
                "agent_ping_seconds = 0\n",
                "agent_ping_seconds must be from 1 to 15",
            ),
            (
                "agent_ping_seconds = 16\n",
                "agent_ping_seconds must be from 1 to 15",
            ),
            (
                "agent_endpoints = [\"ctl-a.example.net\"]\n",
                "expected host:port",
            ),
            (
                "agent_endpoints = [\"ctl-a:8444\", \"2001:db8::2:8444\"]\n",
                "brackets",
            ),
            ("agent_endpoint = \"ctl-a:99999\"\n", "1 to 65535"),
        ] {
            let err = load(text).err().unwrap_or_default();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        let many: Vec<String> = (0..17).map(|i| format!("\"ctl-{i}:8444\"")).collect();
        let err = load(&format!("agent_endpoints = [{}]\n", many.join(", ")))
            .err()
            .unwrap_or_default();
        assert!(err.contains("at most 16"), "{err}");
    }
}
