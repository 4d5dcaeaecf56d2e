//! What lives between calls after the authorization step: the device flow the CLI polls,
//! and the provider's refresh token in the sessions table. Both only ever sealed.

use serde::{Deserialize, Serialize};

use crate::error::{Error, StateError};
use crate::login::ClientKind;
use crate::seal::{Purpose, Sealer};

/// A started device flow (RFC 8628), sealed for the CLI while it polls the controller.
#[derive(Clone, Serialize, Deserialize)]
pub struct PendingDevice {
    #[serde(rename = "d")]
    pub(crate) response: serde_json::Value,
    #[serde(rename = "i")]
    pub(crate) issuer: String,
    #[serde(rename = "c")]
    pub(crate) client_id: String,
    #[serde(rename = "e")]
    pub(crate) expires_at: i64,
}

impl std::fmt::Debug for PendingDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingDevice")
            .field("issuer", &self.issuer)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl PendingDevice {
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }

    pub fn seal(&self, sealer: &Sealer) -> String {
        sealer.seal_json(Purpose::DeviceState, b"", self)
    }

    /// Refused when altered or foreign; an expired one still opens (the poll says expired).
    pub fn open(sealer: &Sealer, sealed: &str) -> Result<PendingDevice, Error> {
        Ok(sealer
            .open_json(Purpose::DeviceState, b"", sealed)
            .map_err(|_| StateError::Unsealable)?)
    }
}

/// The provider's refresh token and the client it belongs to. Stored only sealed, bound to
/// one session id ([`RefreshGrant::seal`]); its Debug output never shows the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshGrant {
    #[serde(rename = "k")]
    pub(crate) client: ClientKind,
    #[serde(rename = "t")]
    pub(crate) token: String,
}

impl std::fmt::Debug for RefreshGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RefreshGrant({}, ..)", self.client.as_str())
    }
}

impl RefreshGrant {
    pub fn client(&self) -> ClientKind {
        self.client
    }

    /// Sealed for the sessions table; opens only for the same `session_id`.
    pub fn seal(&self, sealer: &Sealer, session_id: &str) -> String {
        sealer.seal_json(Purpose::RefreshToken, session_id.as_bytes(), self)
    }

    pub fn open(sealer: &Sealer, session_id: &str, sealed: &str) -> Result<RefreshGrant, Error> {
        Ok(sealer
            .open_json(Purpose::RefreshToken, session_id.as_bytes(), sealed)
            .map_err(|_| StateError::Unsealable)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::SealKey;

    #[test]
    fn refresh_grants_open_only_for_their_session() {
        let sealer = Sealer::new(&SealKey::generate());
        let g = RefreshGrant {
            client: ClientKind::Cli,
            token: "rt-secret".into(),
        };
        let sealed = g.seal(&sealer, "session-1");
        assert!(!sealed.contains("rt-secret"));
        assert_eq!(
            RefreshGrant::open(&sealer, "session-1", &sealed).unwrap(),
            g
        );
        assert!(RefreshGrant::open(&sealer, "session-2", &sealed).is_err());
        assert_eq!(format!("{g:?}"), "RefreshGrant(cli, ..)");
        // A device handle never opens as a refresh token, nor the reverse.
        let device = PendingDevice {
            response: serde_json::json!({}),
            issuer: "https://i.example".into(),
            client_id: "c".into(),
            expires_at: 0,
        };
        let sealed_device = device.seal(&sealer);
        assert!(RefreshGrant::open(&sealer, "", &sealed_device).is_err());
        assert!(PendingDevice::open(&sealer, &g.seal(&sealer, "")).is_err());
    }
}
