//! Authenticated encryption with a key only the controller holds: the pre-sign-in state that
//! rides in a cookie (or in the CLI's hands) and the provider's refresh tokens at rest.
//!
//! XChaCha20-Poly1305 with a random 192-bit nonce per message: one key can seal any number of
//! messages without a nonce-reuse risk, so the key needs no rotation schedule. Each message is
//! bound to its use (associated data: a purpose and, for refresh tokens, the session id), so a
//! sealed login state never opens as a refresh token and a refresh token sealed for one
//! session never opens for another. Controllers that share a database share the key file.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

use crate::files::{SecretFileError, read_secret};

/// Bytes in a key.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
/// Format version, the first byte of every sealed message.
const VERSION: u8 = 1;

/// What a sealed message is for; part of the associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    LoginState,
    DeviceState,
    RefreshToken,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::LoginState => "login-state",
            Purpose::DeviceState => "device-state",
            Purpose::RefreshToken => "refresh-token",
        }
    }
}

/// A sealing key. Its Debug output never shows the key.
#[derive(Clone)]
pub struct SealKey([u8; KEY_LEN]);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error(transparent)]
    File(#[from] SecretFileError),
    #[error("{path}: not a sealing key (expected {} hex digits)", KEY_LEN * 2)]
    Invalid { path: String },
    #[error("{path}: {source}")]
    Create {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl SealKey {
    /// A fresh random key.
    pub fn generate() -> SealKey {
        let mut k = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut k);
        SealKey(k)
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> SealKey {
        SealKey(bytes)
    }

    /// Reads a key file: 64 hex digits (a trailing newline is fine), mode 0600 or tighter.
    pub fn load(path: &Path) -> Result<SealKey, KeyFileError> {
        let text = read_secret(path)?;
        let invalid = || KeyFileError::Invalid {
            path: path.display().to_string(),
        };
        let bytes = hex::decode(text.trim()).map_err(|_| invalid())?;
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| invalid())?;
        Ok(SealKey(key))
    }

    /// Writes a new random key file with mode 0600; refuses to overwrite one.
    pub fn create_file(path: &Path) -> Result<SealKey, KeyFileError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let key = SealKey::generate();
        let io = |source| KeyFileError::Create {
            path: path.display().to_string(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(format!("{}\n", hex::encode(key.0)).as_bytes())
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(key)
    }
}

/// Seals with the current key; opens with the current key or any previous one, so that a key
/// can be replaced without signing everybody out.
#[derive(Clone)]
pub struct Sealer {
    keys: Vec<XChaCha20Poly1305>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer({} keys)", self.keys.len())
    }
}

/// A sealed message that does not open.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("sealed data refused (altered, truncated, foreign key or another use)")]
pub struct Unsealable;

impl Sealer {
    pub fn new(current: &SealKey) -> Sealer {
        Sealer {
            keys: vec![XChaCha20Poly1305::new(&current.0.into())],
        }
    }

    /// Also opens (never seals) what older keys sealed.
    pub fn with_previous(mut self, previous: &[SealKey]) -> Sealer {
        self.keys
            .extend(previous.iter().map(|k| XChaCha20Poly1305::new(&k.0.into())));
        self
    }

    /// `VERSION || nonce || ciphertext+tag`, base64url without padding (cookie-safe).
    pub(crate) fn seal(&self, purpose: Purpose, context: &[u8], plaintext: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = associated_data(purpose, context);
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + 16);
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        // Encryption fails only for messages beyond the cipher's limit (256 GiB).
        if let Some(key) = self.keys.first()
            && let Ok(ct) = key.encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
        {
            out.extend_from_slice(&ct);
        }
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Seals `value` as JSON (plain structs: serialising them cannot fail; if it did, the
    /// empty message would not open as one).
    pub(crate) fn seal_json<T: serde::Serialize>(
        &self,
        purpose: Purpose,
        context: &[u8],
        value: &T,
    ) -> String {
        self.seal(
            purpose,
            context,
            &serde_json::to_vec(value).unwrap_or_default(),
        )
    }

    pub(crate) fn open_json<T: serde::de::DeserializeOwned>(
        &self,
        purpose: Purpose,
        context: &[u8],
        sealed: &str,
    ) -> Result<T, Unsealable> {
        serde_json::from_slice(&self.open(purpose, context, sealed)?).map_err(|_| Unsealable)
    }

    pub(crate) fn open(
        &self,
        purpose: Purpose,
        context: &[u8],
        sealed: &str,
    ) -> Result<Vec<u8>, Unsealable> {
        let raw = URL_SAFE_NO_PAD
            .decode(sealed.as_bytes())
            .map_err(|_| Unsealable)?;
        if raw.len() < 1 + NONCE_LEN + 16 || raw[0] != VERSION {
            return Err(Unsealable);
        }
        let nonce: [u8; NONCE_LEN] = raw[1..1 + NONCE_LEN].try_into().map_err(|_| Unsealable)?;
        let nonce = XNonce::from(nonce);
        let aad = associated_data(purpose, context);
        self.keys
            .iter()
            .find_map(|k| {
                k.decrypt(
                    &nonce,
                    Payload {
                        msg: &raw[1 + NONCE_LEN..],
                        aad: &aad,
                    },
                )
                .ok()
            })
            .ok_or(Unsealable)
    }
}

fn associated_data(purpose: Purpose, context: &[u8]) -> Vec<u8> {
    let mut aad = b"jitgate-oidc/v1/".to_vec();
    aad.extend_from_slice(purpose.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(context);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_only_for_the_same_use_and_key() {
        let k = SealKey::generate();
        let s = Sealer::new(&k);
        let sealed = s.seal(Purpose::LoginState, b"", b"hello");
        assert_eq!(s.open(Purpose::LoginState, b"", &sealed).unwrap(), b"hello");
        // Another purpose, another context, another key: refused.
        assert_eq!(s.open(Purpose::RefreshToken, b"", &sealed), Err(Unsealable));
        assert_eq!(s.open(Purpose::LoginState, b"x", &sealed), Err(Unsealable));
        let other = Sealer::new(&SealKey::generate());
        assert_eq!(
            other.open(Purpose::LoginState, b"", &sealed),
            Err(Unsealable)
        );
        // Two seals of the same message differ (random nonce).
        assert_ne!(sealed, s.seal(Purpose::LoginState, b"", b"hello"));
    }

    #[test]
    fn every_altered_byte_is_refused() {
        let s = Sealer::new(&SealKey::generate());
        let sealed = s.seal(Purpose::RefreshToken, b"session-1", b"refresh-token-value");
        let raw = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            let bad = URL_SAFE_NO_PAD.encode(&bad);
            assert_eq!(
                s.open(Purpose::RefreshToken, b"session-1", &bad),
                Err(Unsealable),
                "byte {i}"
            );
        }
        for cut in [0, 1, 10, raw.len() - 1] {
            let short = URL_SAFE_NO_PAD.encode(&raw[..cut]);
            assert_eq!(
                s.open(Purpose::RefreshToken, b"session-1", &short),
                Err(Unsealable)
            );
        }
        assert_eq!(
            s.open(Purpose::RefreshToken, b"session-1", "not base64 !"),
            Err(Unsealable)
        );
    }

    #[test]
    fn previous_keys_open_but_do_not_seal() {
        let old = SealKey::generate();
        let new = SealKey::generate();
        let sealed_by_old = Sealer::new(&old).seal(Purpose::LoginState, b"", b"m");
        let s = Sealer::new(&new).with_previous(std::slice::from_ref(&old));
        assert_eq!(
            s.open(Purpose::LoginState, b"", &sealed_by_old).unwrap(),
            b"m"
        );
        let sealed_now = s.seal(Purpose::LoginState, b"", b"m");
        assert_eq!(
            Sealer::new(&old).open(Purpose::LoginState, b"", &sealed_now),
            Err(Unsealable)
        );
    }

    #[test]
    fn key_files_are_created_tight_and_loaded_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("oidc-seal.key");
        let k = SealKey::create_file(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(SealKey::load(&p).unwrap().0, k.0);
        assert!(SealKey::create_file(&p).is_err(), "never overwrites");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = SealKey::load(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, "abcd\n").unwrap();
        assert!(matches!(
            SealKey::load(&p),
            Err(KeyFileError::Invalid { .. })
        ));
    }
}
