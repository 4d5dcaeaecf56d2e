//! Grant-signing keys and their rotation (docs/operations.md, "Rotation";
//! docs/protocol.md, "Key rotation").
//!
//! - [`files`]: the private halves in the state directory (mode 0600, never in the database,
//!   logs or answers), found by key id.
//! - [`ring`]: the running controller's keys: the one that signs, the rotation messages
//!   agents are sent, and whether this controller holds every private half it needs
//!   (`/readyz`).
//! - [`rotation`]: `jit-controller keys rotate | status | retire`.

pub mod files;
pub mod ring;
pub mod rotation;

pub use ring::Ring;

use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;
use jitgate_proto::KeyId;

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
    #[error("stored key data is corrupt: {0}")]
    Corrupt(String),
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
