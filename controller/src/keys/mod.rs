//! Grant-signing keys and their rotation (docs/operations.md, "Rotation";
//! docs/protocol.md, "Key rotation").
//!
//! - [`files`]: the private halves in the state directory (mode 0600, never in the database,
//!   logs or answers), found by key id.
//! - [`ring`]: the running controller's keys: the one that signs, the rotation messages
//!   agents are sent, and whether this controller holds every private half it needs
//!   (`/readyz`).
//! - [`rotation`]: `jit-controller keys rotate | status | retire`, and the switch the
//!   leader makes by itself ([`switcher`]).
//! - [`status`]: the keys as administrators see them through the API, `jit keys` and the
//!   portal.

pub mod files;
pub mod ring;
pub mod rotation;
pub mod status;
pub mod switcher;

pub use ring::Ring;

use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;
use jitgate_proto::KeyId;

/// `[keys]` in `controller.toml`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// How long after a key's announcement the leader switches to it even though some
    /// active agents have not acknowledged it (it switches sooner once every active agent
    /// did). Default 86400 (24 h); from 1 s to 90 days.
    #[serde(default = "default_switch_grace")]
    pub switch_grace_seconds: u64,
}

/// The bounds of `switch_grace_seconds`.
pub const SWITCH_GRACE_SECONDS: std::ops::RangeInclusive<u64> = 1..=90 * 86_400;

fn default_switch_grace() -> u64 {
    86_400
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            switch_grace_seconds: default_switch_grace(),
        }
    }
}

impl KeysConfig {
    pub fn switch_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.switch_grace_seconds)
    }

    /// Within its bounds, or why not.
    pub fn validate(&self) -> Result<(), String> {
        if SWITCH_GRACE_SECONDS.contains(&self.switch_grace_seconds) {
            Ok(())
        } else {
            Err(format!(
                "keys.switch_grace_seconds must be from {} to {}, not {}",
                SWITCH_GRACE_SECONDS.start(),
                SWITCH_GRACE_SECONDS.end(),
                self.switch_grace_seconds
            ))
        }
    }
}

/// Why a key operation was refused or failed; nothing changed unless it says so.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] crate::error::Error),
    #[error("{path}: {reason}")]
    File {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error(
        "this controller has no private key for grant-signing key {0} (copy keys/grant-{0}.key from the controller that made it)"
    )]
    MissingPrivate(KeyId),
    #[error("a rotation is already under way (key {0} announced); retire the current key first")]
    RotationUnderway(KeyId),
    #[error("no rotation is under way: run `jit-controller keys rotate` first")]
    NoRotation,
    #[error("the database holds no current grant-signing key")]
    NoCurrentKey,
    #[error("{} connected agent(s) have not acknowledged key {key}: {}; wait for them, or retire with --force (they would refuse every grant until re-enrolled)", blocking.len(), blocking.join(", "))]
    Blocked { key: KeyId, blocking: Vec<String> },
    #[error("the switch to key {key} waits: {} live controller(s) lack its private half: {} (copy keys/grant-{key}.key to them, or stop them; `keys retire --force` switches anyway, and they can sign nothing until they have it)", controllers.len(), controllers.join(", "))]
    ControllersLack {
        key: KeyId,
        controllers: Vec<String>,
    },
    #[error("stored key data is corrupt: {0}")]
    Corrupt(String),
}

impl From<KeyError> for crate::error::Error {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Store(e) => e,
            KeyError::Corrupt(c) => crate::error::Error::Corrupt(c),
            e => crate::error::Error::Internal(e.to_string()),
        }
    }
}

/// The key id of a public key in SPKI PEM.
pub fn id_of_pem(pem: &str) -> Result<(KeyId, VerifyingKey), KeyError> {
    let vk =
        VerifyingKey::from_public_key_pem(pem).map_err(|e| KeyError::Corrupt(e.to_string()))?;
    Ok((KeyId::of(&vk), vk))
}

/// A key id as stored.
pub fn parse_id(s: &str) -> Result<KeyId, KeyError> {
    s.parse()
        .map_err(|e: jitgate_proto::keys::BadKeyId| KeyError::Corrupt(e.to_string()))
}
