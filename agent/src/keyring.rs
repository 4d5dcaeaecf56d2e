//! The controller's grant-signing keys this agent trusts (docs/protocol.md, "Key rotation").
//!
//! The key pinned at enrolment is `state_dir/enrollment/grant-signing.pub`. A key announced
//! by the controller (signed by a key trusted here) is kept next to it in
//! `grant-signing.next.pub`, and both verify. A retirement signed by the announced key makes
//! it the pinned one (an atomic rename) and the retired key verifies nothing from then on.
//! Files are written whole (temporary file, fsync, rename, fsync of the directory) with mode
//! 0600, so a crash leaves either the old set of keys or the new one.

use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePublicKey, EncodePublicKey};
use jitgate_proto::signed::Body;
use jitgate_proto::{KeyAnnouncementBody, KeyId, KeyRetirementBody, Signed, VerifyError};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// The pinned key's file in the enrolment directory.
pub const PINNED: &str = "grant-signing.pub";
/// The announced key's file, while a rotation is under way.
pub const NEXT: &str = "grant-signing.next.pub";

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Verify(#[from] VerifyError),
    #[error("the announcement's key id {0} is not the id of its key")]
    BadKey(KeyId),
    #[error(
        "retirement of key {retired} by {successor} does not match the keys held here (pinned {pinned}, announced {next})"
    )]
    Mismatch {
        retired: KeyId,
        successor: KeyId,
        pinned: KeyId,
        next: String,
    },
}

/// Whether a rotation step changed the keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Changed,
    /// The keys already were so (a replay after a lost answer, an enrolment after it).
    Unchanged,
}

#[derive(Clone, Debug)]
pub struct Keyring {
    dir: PathBuf,
    pinned: VerifyingKey,
    next: Option<VerifyingKey>,
}

fn file_err(path: &Path) -> impl FnOnce(String) -> KeyringError + '_ {
    move |reason| KeyringError::File {
        path: path.to_path_buf(),
        reason,
    }
}

fn read_key(path: &Path) -> Result<VerifyingKey, KeyringError> {
    let pem = std::fs::read_to_string(path).map_err(|e| file_err(path)(e.to_string()))?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|e| file_err(path)(e.to_string()))
}

fn sync_dir(path: &Path) -> Result<(), KeyringError> {
    if let Some(d) = path.parent() {
        std::fs::File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(|e| file_err(d)(e.to_string()))?;
    }
    Ok(())
}

fn pem(key: &VerifyingKey) -> Result<String, KeyringError> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyringError::File {
            path: PathBuf::from(NEXT),
            reason: e.to_string(),
        })
}

impl Keyring {
    /// The keys in the enrolment directory `dir`.
    pub fn load(dir: &Path) -> Result<Keyring, KeyringError> {
        let pinned = read_key(&dir.join(PINNED))?;
        let next_path = dir.join(NEXT);
        let next = if next_path.exists() {
            Some(read_key(&next_path)?)
        } else {
            None
        };
        Ok(Keyring {
            dir: dir.to_path_buf(),
            pinned,
            next,
        })
    }

    pub fn pinned_id(&self) -> KeyId {
        KeyId::of(&self.pinned)
    }

    pub fn next_id(&self) -> Option<KeyId> {
        self.next.as_ref().map(KeyId::of)
    }

    fn held(&self) -> impl Iterator<Item = &VerifyingKey> {
        std::iter::once(&self.pinned).chain(self.next.as_ref())
    }

    /// Verifies a body for `agent` with the pinned key or the announced one.
    pub fn verify<T: Body>(&self, s: &Signed<T>, agent: Uuid) -> Result<T, VerifyError> {
        s.verify_any(self.held(), agent)
    }

    /// A key announcement: signed by a key held here, it is kept as the announced key.
    pub fn announce(
        &mut self,
        s: &Signed<KeyAnnouncementBody>,
    ) -> Result<(KeyId, Change), KeyringError> {
        let body = match s.verify_any(self.held(), Uuid::nil()) {
            Ok(b) => b,
            Err(e) => {
                // Sent to an agent enrolled after it (its pinned key is the announced one),
                // the predecessor that signed it is unknown here: nothing to change.
                let unverified = s.unverified();
                match unverified.and_then(|b| b.verifying_key()) {
                    Some(k) if k == self.pinned => return Ok((KeyId::of(&k), Change::Unchanged)),
                    _ => return Err(e.into()),
                }
            }
        };
        let key = body
            .verifying_key()
            .ok_or(KeyringError::BadKey(body.key_id))?;
        if key == self.pinned || self.next == Some(key) {
            return Ok((body.key_id, Change::Unchanged));
        }
        let next = self.dir.join(NEXT);
        crate::state_file::replace_private(&next, pem(&key)?.as_bytes())
            .map_err(|e| file_err(&next)(e.to_string()))?;
        self.next = Some(key);
        Ok((body.key_id, Change::Changed))
    }

    /// A key retirement: signed by the announced key and retiring the pinned one, the
    /// announced key becomes the pinned one; the retired key verifies nothing from then on.
    pub fn retire(
        &mut self,
        s: &Signed<KeyRetirementBody>,
    ) -> Result<(KeyId, Change), KeyringError> {
        let (signer, body) = self
            .held()
            .find_map(|k| s.verify_broadcast(k).ok().map(|b| (KeyId::of(k), b)))
            .ok_or(VerifyError::Signature)?;
        let (pinned, next) = (self.pinned_id(), self.next_id());
        if body.successor != signer || body.retired == body.successor {
            return Err(self.mismatch(&body));
        }
        if body.retired == pinned && Some(body.successor) == next {
            let from = self.dir.join(NEXT);
            let to = self.dir.join(PINNED);
            std::fs::rename(&from, &to).map_err(|e| file_err(&to)(e.to_string()))?;
            sync_dir(&to)?;
            if let Some(k) = self.next.take() {
                self.pinned = k;
            }
            return Ok((body.retired, Change::Changed));
        }
        if body.successor == pinned && body.retired != pinned && Some(body.retired) != next {
            // Retired before (a replay), or before this agent was enrolled.
            return Ok((body.retired, Change::Unchanged));
        }
        Err(self.mismatch(&body))
    }

    fn mismatch(&self, b: &KeyRetirementBody) -> KeyringError {
        KeyringError::Mismatch {
            retired: b.retired,
            successor: b.successor,
            pinned: self.pinned_id(),
            next: self
                .next_id()
                .map_or_else(|| "none".to_string(), |k| k.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use std::os::unix::fs::PermissionsExt;

    fn sk(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn announce(by: &SigningKey, new: &SigningKey) -> Signed<KeyAnnouncementBody> {
        let vk = new.verifying_key();
        let body = KeyAnnouncementBody {
            key_id: KeyId::of(&vk),
            public_key: vk.to_bytes(),
            issued_unix_ms: 1,
        };
        Signed::sign(&body, by).unwrap()
    }

    fn retire(old: &SigningKey, new: &SigningKey) -> Signed<KeyRetirementBody> {
        let body = KeyRetirementBody {
            retired: KeyId::of(&old.verifying_key()),
            successor: KeyId::of(&new.verifying_key()),
            issued_unix_ms: 2,
        };
        Signed::sign(&body, new).unwrap()
    }

    fn ring(dir: &Path, k: &SigningKey) -> Keyring {
        std::fs::write(dir.join(PINNED), pem(&k.verifying_key()).unwrap()).unwrap();
        Keyring::load(dir).unwrap()
    }

    #[test]
    fn rotation_announce_then_retire_survives_reload() {
        let d = tempfile::tempdir().unwrap();
        let (a, b, c) = (sk(1), sk(2), sk(3));
        let mut r = ring(d.path(), &a);
        // Not signed by a held key: refused, nothing written.
        assert!(r.announce(&announce(&c, &b)).is_err());
        assert!(!d.path().join(NEXT).exists());
        assert_eq!(r.announce(&announce(&a, &b)).unwrap().1, Change::Changed);
        assert_eq!(r.announce(&announce(&a, &b)).unwrap().1, Change::Unchanged);
        let mode = std::fs::metadata(d.path().join(NEXT))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Both keys verify, after a reload too.
        let r2 = Keyring::load(d.path()).unwrap();
        assert_eq!(r2.next_id(), Some(KeyId::of(&b.verifying_key())));
        // A retirement signed by the retired key itself is refused.
        assert!(r.retire(&retire(&a, &a)).is_err());
        assert_eq!(r.retire(&retire(&a, &b)).unwrap().1, Change::Changed);
        assert_eq!(r.retire(&retire(&a, &b)).unwrap().1, Change::Unchanged);
        let r3 = Keyring::load(d.path()).unwrap();
        assert_eq!(r3.pinned_id(), KeyId::of(&b.verifying_key()));
        assert_eq!(r3.next_id(), None);
        // The retired key's announcement no longer verifies; the new pinned key's own
        // announcement (an agent enrolled after the rotation) changes nothing.
        let mut r3 = r3;
        assert!(r3.announce(&announce(&a, &c)).is_err());
        assert_eq!(r3.announce(&announce(&a, &b)).unwrap().1, Change::Unchanged);
    }
}
