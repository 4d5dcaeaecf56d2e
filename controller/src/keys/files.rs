//! Private halves of grant-signing keys in the state directory: `keys/grant-signing.key`
//! (made by `init`) and `keys/grant-<key id>.key` for keys made by `keys rotate`. PKCS#8
//! PEM, mode 0600. The activity log's checkpoint key (`keys/checkpoint.key`) is not one of
//! them.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jitgate_proto::KeyId;

use super::KeyError;

/// A state directory's grant-signing key files.
#[derive(Clone, Debug)]
pub struct KeyDir {
    /// `keys/` in the state directory.
    dir: PathBuf,
    /// `keys/grant-signing.key` (the key `init` made).
    initial: PathBuf,
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |e| KeyError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl KeyDir {
    /// `initial`: the key `init` made (`StateDir::signing_key`); the others go next to it.
    pub fn new(initial: PathBuf) -> KeyDir {
        let dir = initial
            .parent()
            .map_or_else(|| PathBuf::from("keys"), Path::to_path_buf);
        KeyDir { dir, initial }
    }

    /// Where `keys rotate` writes the private half of key `id`.
    pub fn path(&self, id: KeyId) -> PathBuf {
        self.dir.join(format!("grant-{id}.key"))
    }

    /// The private half of key `id`, if this controller holds it.
    pub fn load(&self, id: KeyId) -> Result<Option<SigningKey>, KeyError> {
        for path in [self.path(id), self.initial.clone()] {
            let pem = match std::fs::read_to_string(&path) {
                Ok(p) => p,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(file_err(&path)(e)),
            };
            let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            if KeyId::of(&key.verifying_key()) == id {
                return Ok(Some(key));
            }
        }
        Ok(None)
    }

    /// Writes a new key's private half (mode 0600, never over an existing file).
    pub fn create(&self, key: &SigningKey) -> Result<PathBuf, KeyError> {
        let path = self.path(KeyId::of(&key.verifying_key()));
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(file_err(&path))?;
        f.write_all(pem.as_bytes()).map_err(file_err(&path))?;
        f.sync_all().map_err(file_err(&path))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(path)
    }

    /// Whether [`KeyDir::destroy`] would delete a file of key `id` (cheap while there is
    /// none: the ring asks for every retired key at each refresh).
    pub fn may_destroy(&self, id: KeyId) -> bool {
        self.path(id).exists()
            || (self.initial.exists()
                && !self.initial_signs_checkpoints()
                && matches!(self.load(id), Ok(Some(_))))
    }

    /// Destroys key `id`'s private half: overwritten, synced, removed. The key `init` made
    /// stays while it also signs the activity log's checkpoints (a state directory whose
    /// controller has not yet given the checkpoint key a file of its own,
    /// `state::load_checkpoint_key`): the answer says so.
    pub fn destroy(&self, id: KeyId) -> Result<Destroyed, KeyError> {
        let path = self.path(id);
        match std::fs::metadata(&path) {
            Ok(_) => return shred(&path).map(|()| Destroyed::Deleted(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(file_err(&path)(e)),
        }
        if self.load(id)?.is_none() {
            return Ok(Destroyed::NotHere);
        }
        if self.initial_signs_checkpoints() {
            return Ok(Destroyed::KeptAsCheckpointKey(self.initial.clone()));
        }
        shred(&self.initial)?;
        Ok(Destroyed::Deleted(self.initial.clone()))
    }

    /// Whether the key `init` made still signs the activity log's checkpoints: a state
    /// directory with no `keys/checkpoint.key` yet. That key may not be destroyed then.
    fn initial_signs_checkpoints(&self) -> bool {
        !self.dir.join(CHECKPOINT_KEY_FILE).exists()
    }
}

/// The checkpoint key's file name in `keys/` (`StateDir::checkpoint_key`).
pub const CHECKPOINT_KEY_FILE: &str = "checkpoint.key";

/// Overwrites a private key file with zeros, syncs, and removes it (also the checkpoint
/// key's, `state::replace_checkpoint_key`).
pub(crate) fn shred(path: &Path) -> Result<(), KeyError> {
    let len = std::fs::metadata(path).map_err(file_err(path))?.len();
    let zeros = vec![0u8; usize::try_from(len).unwrap_or(0)];
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(file_err(path))?;
    f.write_all(&zeros).map_err(file_err(path))?;
    f.sync_all().map_err(file_err(path))?;
    std::fs::remove_file(path).map_err(file_err(path))
}

/// What [`KeyDir::destroy`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destroyed {
    Deleted(PathBuf),
    /// The key `init` made, in a state directory where it still signs the activity log's
    /// checkpoints (no `keys/checkpoint.key` yet: a controller starting makes it).
    KeptAsCheckpointKey(PathBuf),
    /// This controller never held it.
    NotHere,
}
