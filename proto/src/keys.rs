//! Grant-signing key rotation (docs/protocol.md, "Key rotation").
//!
//! A key is named by its [`KeyId`]: the first 8 bytes of the SHA-256 of its 32-byte Ed25519
//! public key. A rotation is two signed bodies, both for every agent (they name no agent, so
//! the controller keeps them and replays them to agents that were offline):
//!
//! - [`KeyAnnouncementBody`], signed by the key in use: "this key follows". The agent keeps
//!   the announced key next to its pinned one and accepts both.
//! - [`KeyRetirementBody`], signed by the successor: "the previous key is retired". The agent
//!   pins the successor and refuses the retired key from then on.

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

use crate::signed::Body;

/// A grant-signing key's id: the first 8 bytes of SHA-256 over its public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    pub fn of(key: &VerifyingKey) -> KeyId {
        let digest = Sha256::digest(key.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&hex::encode(self.0))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a key id is 16 hexadecimal digits, not {0:?}")]
pub struct BadKeyId(pub String);

impl FromStr for KeyId {
    type Err = BadKeyId;
    fn from_str(s: &str) -> Result<KeyId, BadKeyId> {
        let bytes = hex::decode(s).map_err(|_| BadKeyId(s.to_string()))?;
        <[u8; 8]>::try_from(bytes.as_slice())
            .map(KeyId)
            .map_err(|_| BadKeyId(s.to_string()))
    }
}

/// "This key follows the one that signed me": signed by the key in use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAnnouncementBody {
    pub key_id: KeyId,
    /// The new Ed25519 public key (32 bytes).
    pub public_key: [u8; 32],
    pub issued_unix_ms: i64,
}

/// "`retired` is retired; `successor` (which signed this) replaces it".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRetirementBody {
    pub retired: KeyId,
    pub successor: KeyId,
    pub issued_unix_ms: i64,
}

impl KeyAnnouncementBody {
    /// The announced key, if its bytes are a key and its id is theirs.
    pub fn verifying_key(&self) -> Option<VerifyingKey> {
        let k = VerifyingKey::from_bytes(&self.public_key).ok()?;
        (KeyId::of(&k) == self.key_id).then_some(k)
    }
}

/// For every agent: [`Body::agent_id`] is nil, and the bodies are opened with
/// [`Signed::verify_broadcast`](crate::signed::Signed::verify_broadcast).
impl Body for KeyAnnouncementBody {
    const CONTEXT: &'static [u8] = b"jitgate key announcement v1\0";
    fn agent_id(&self) -> Uuid {
        Uuid::nil()
    }
    fn seq(&self) -> u64 {
        0
    }
}

impl Body for KeyRetirementBody {
    const CONTEXT: &'static [u8] = b"jitgate key retirement v1\0";
    fn agent_id(&self) -> Uuid {
        Uuid::nil()
    }
    fn seq(&self) -> u64 {
        0
    }
}

/// Which step of a rotation an agent answers (`AgentMsg::KeyResult`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyStep {
    /// The announced key is kept next to the pinned one.
    Announced,
    /// The retired key is refused; its successor is pinned.
    Retired,
}

impl KeyStep {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStep::Announced => "announced",
            KeyStep::Retired => "retired",
        }
    }

    /// The step [`KeyStep::as_str`] names (as stored by the controller).
    pub fn parse(s: &str) -> Option<KeyStep> {
        [KeyStep::Announced, KeyStep::Retired]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signed::{Signed, VerifyError};
    use ed25519_dalek::SigningKey;

    #[test]
    fn key_steps_parse_what_they_print_and_nothing_else() {
        for k in [KeyStep::Announced, KeyStep::Retired] {
            assert_eq!(KeyStep::parse(k.as_str()), Some(k));
        }
        assert_eq!(KeyStep::parse("Retired"), None);
        assert_eq!(KeyStep::parse(""), None);
    }

    #[test]
    fn key_id_is_stable_and_parses() {
        let k = SigningKey::from_bytes(&[3; 32]).verifying_key();
        let id = KeyId::of(&k);
        assert_eq!(id.to_string().len(), 16);
        assert_eq!(id.to_string().parse::<KeyId>(), Ok(id));
        assert!("xyz".parse::<KeyId>().is_err());
        assert!("00".parse::<KeyId>().is_err());
    }

    #[test]
    fn announcement_binds_id_to_key_and_is_broadcast_only() {
        let old = SigningKey::from_bytes(&[1; 32]);
        let new = SigningKey::from_bytes(&[2; 32]).verifying_key();
        let body = KeyAnnouncementBody {
            key_id: KeyId::of(&new),
            public_key: new.to_bytes(),
            issued_unix_ms: 5,
        };
        let s = Signed::sign(&body, &old).unwrap();
        let opened = s.verify_broadcast(&old.verifying_key()).unwrap();
        assert_eq!(opened.verifying_key(), Some(new));
        // Not by another key; not as an agent-bound body.
        assert_eq!(s.verify_broadcast(&new), Err(VerifyError::Signature));
        assert!(
            s.verify(&old.verifying_key(), Uuid::from_bytes([1; 16]))
                .is_err()
        );
        // An id that is not the key's.
        let lying = KeyAnnouncementBody {
            key_id: KeyId([0; 8]),
            ..body
        };
        assert_eq!(lying.verifying_key(), None);
        // Distinct contexts.
        assert_ne!(KeyAnnouncementBody::CONTEXT, KeyRetirementBody::CONTEXT);
    }
}
