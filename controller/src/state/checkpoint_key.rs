//! The activity log's checkpoint key in the state directory: `keys/checkpoint.key` (0600)
//! and `.pub`, the public halves of the keys it replaced (`keys/checkpoint-retired-N.pub`,
//! still trusted for the checkpoints they signed), read at start and replaced by
//! `jit-controller keys replace-checkpoint`.

use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::Serialize;

use super::StateDir;
use super::files::{replace_file, write_key_pair};
use crate::audit::CheckpointKey;
use crate::error::SetupError;

/// The activity log's checkpoint key (`keys/checkpoint.key`). A state directory made before
/// checkpoints had a key of their own signs them with the key `init` made
/// (`keys/grant-signing.key`): with `split` (a starting controller, as the state
/// directory's owner), that key is copied to `keys/checkpoint.key` and `checkpoint.pub`
/// once, so that checkpoints go on verifying with the same public key and a rotation can
/// destroy `grant-signing.key` when it retires it; without (administration commands), it is
/// read where it is.
pub fn load_checkpoint_key(dir: &StateDir, split: bool) -> Result<CheckpointKey, SetupError> {
    let mut path = dir.checkpoint_key();
    if !path.exists() {
        let legacy = dir.signing_key();
        if !legacy.exists() {
            return Err(SetupError::Invalid(format!(
                "no checkpoint key: {} is missing (restore it from the backup of the state \
                 directory's keys, or make a new pair and keep the old public half as \
                 keys/{RETIRED_CHECKPOINT_PREFIX}1.pub: docs/operations.md)",
                path.display()
            )));
        }
        if split {
            let key = crate::channel::tls::load_signing_key(&legacy)?;
            let public = dir.checkpoint_pub();
            // A public half left from an interrupted split is written again with its key.
            if public.exists() {
                std::fs::remove_file(&public).map_err(|e| SetupError::io(public.display(), e))?;
            }
            write_key_pair(&key, &path, &public)?;
            tracing::info!(from = %legacy.display(), to = %path.display(),
                "checkpoint key: the key init made copied to a file of its own");
        } else {
            path = legacy;
        }
    }
    let key = crate::channel::tls::load_signing_key(&path)?;
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| SetupError::Invalid(format!("encoding {}: {e}", path.display())))?;
    Ok(CheckpointKey {
        key,
        public_pem,
        retired: retired_files(dir)?.into_iter().map(|(_, k)| k).collect(),
    })
}

/// The public halves of checkpoint keys replaced before the current one, kept as
/// `keys/checkpoint-retired-N.pub` (by `jit-controller keys replace-checkpoint`, or by hand:
/// docs/operations.md): the checkpoints they signed go on verifying. In name order.
fn retired_files(dir: &StateDir) -> Result<Vec<(PathBuf, VerifyingKey)>, SetupError> {
    let keys = dir.0.join("keys");
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(&keys) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_retired(p))
            .collect(),
        Err(e) => return Err(SetupError::io(keys.display(), e)),
    };
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let pem = std::fs::read_to_string(&p).map_err(|e| SetupError::io(p.display(), e))?;
            let key = jitgate_proto::audit::parse_public_key(&pem)
                .map_err(|e| SetupError::Invalid(format!("{}: {e}", p.display())))?;
            Ok((p, key))
        })
        .collect()
}

/// Whether `path` is named `checkpoint-retired-*.pub` (kept by the command, N a number, or
/// by hand under any name).
fn is_retired(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix(RETIRED_CHECKPOINT_PREFIX))
        .is_some_and(|rest| rest.len() > ".pub".len() && rest.ends_with(".pub"))
}

/// N of `keys/checkpoint-retired-N.pub` (any other name: None): the command keeps the next
/// replaced key as N + 1 of the highest.
fn retired_number(path: &Path) -> Option<u32> {
    path.file_name()?
        .to_str()?
        .strip_prefix(RETIRED_CHECKPOINT_PREFIX)?
        .strip_suffix(".pub")?
        .parse()
        .ok()
}

/// How the public half of a replaced checkpoint key is named in `keys/`.
pub const RETIRED_CHECKPOINT_PREFIX: &str = "checkpoint-retired-";

/// What [`replace_checkpoint_key`] did.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Replacement {
    /// The replaced key's id (as checkpoints and exports name it).
    pub old_key_id: String,
    pub new_key_id: String,
    /// Where the replaced key's public half is kept (`keys/checkpoint-retired-N.pub`).
    pub retired_public_key: PathBuf,
    pub private_key: PathBuf,
    pub public_key: PathBuf,
}

/// Replaces the checkpoint key: a new pair in `keys/checkpoint.key` and `.pub`, the old
/// public half kept as the next `keys/checkpoint-retired-N.pub` (so the checkpoints it
/// signed keep verifying), the old private half overwritten and removed. A controller
/// running on this directory keeps signing with the old key until it restarts (its
/// checkpoints verify all the same). Safe to run again after an interruption: a public
/// half already kept is not kept twice, leftovers of an earlier run are removed (a private
/// one overwritten first).
pub fn replace_checkpoint_key(dir: &StateDir) -> Result<Replacement, SetupError> {
    let keys = dir.0.join("keys");
    let aside = keys.join("checkpoint.key.old");
    let staged = (
        keys.join("checkpoint.key.new"),
        keys.join("checkpoint.pub.new"),
    );
    // An earlier run stopped after linking the old key aside: if the link is still the key
    // in use (the new one never took its place), only the link goes.
    if same_file(&aside, &dir.checkpoint_key()) {
        remove_if_present(&aside)?;
    }
    for p in [&aside, &staged.0] {
        if p.exists() {
            shred(p)?;
        }
    }
    remove_if_present(&staged.1)?;
    // An older directory signs checkpoints with the key `init` made: give it its own file
    // first, so that the replacement never touches the grant-signing key.
    let old = load_checkpoint_key(dir, true)?;
    let old_key = old.key.verifying_key();
    let retired = retired_files(dir)?;
    let retired_public_key = match retired.iter().find(|(_, k)| *k == old_key) {
        Some((p, _)) => p.clone(),
        None => {
            let n = retired
                .iter()
                .filter_map(|(p, _)| retired_number(p))
                .max()
                .unwrap_or(0)
                + 1;
            let p = keys.join(format!("{RETIRED_CHECKPOINT_PREFIX}{n}.pub"));
            replace_file(&p, old.public_pem.as_bytes(), 0o644)?;
            p
        }
    };
    let new = SigningKey::generate(&mut rand::rngs::OsRng);
    write_key_pair(&new, &staged.0, &staged.1)?;
    // The old private half stays reachable (linked aside) until the new one is in place.
    let (private_key, public_key) = (dir.checkpoint_key(), dir.checkpoint_pub());
    std::fs::hard_link(&private_key, &aside).map_err(|e| SetupError::io(aside.display(), e))?;
    std::fs::rename(&staged.0, &private_key)
        .map_err(|e| SetupError::io(private_key.display(), e))?;
    std::fs::rename(&staged.1, &public_key).map_err(|e| SetupError::io(public_key.display(), e))?;
    sync_dir(&keys);
    shred(&aside)?;
    sync_dir(&keys);
    let r = Replacement {
        old_key_id: jitgate_proto::audit::key_id(&old_key),
        new_key_id: jitgate_proto::audit::key_id(&new.verifying_key()),
        retired_public_key,
        private_key,
        public_key,
    };
    tracing::info!(old = %r.old_key_id, new = %r.new_key_id,
        retired = %r.retired_public_key.display(), "checkpoint key replaced");
    Ok(r)
}

/// Overwrites a private key file with zeros, syncs it, and removes it.
fn shred(path: &Path) -> Result<(), SetupError> {
    crate::keys::files::shred(path).map_err(|e| SetupError::Invalid(e.to_string()))
}

fn remove_if_present(path: &Path) -> Result<(), SetupError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(SetupError::io(path.display(), e))
        }
        _ => Ok(()),
    }
}

/// Whether `a` and `b` are one file (hard links of each other); false if either is missing.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state directory with a checkpoint key pair only; its public key.
    fn dir_with_key() -> Result<(tempfile::TempDir, StateDir, VerifyingKey), String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = StateDir(tmp.path().to_path_buf());
        std::fs::create_dir(dir.0.join("keys")).map_err(|e| e.to_string())?;
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        write_key_pair(&key, &dir.checkpoint_key(), &dir.checkpoint_pub())
            .map_err(|e| e.to_string())?;
        Ok((tmp, dir, key.verifying_key()))
    }

    #[test]
    fn a_rerun_after_the_key_was_linked_aside_keeps_the_key_in_use() -> Result<(), String> {
        let (_tmp, dir, old) = dir_with_key()?;
        // Where an interrupted run stopped: the old key linked aside, the new one not in place.
        std::fs::hard_link(dir.checkpoint_key(), dir.0.join("keys/checkpoint.key.old"))
            .map_err(|e| e.to_string())?;
        let r = replace_checkpoint_key(&dir).map_err(|e| e.to_string())?;
        assert_eq!(r.old_key_id, jitgate_proto::audit::key_id(&old));
        let kept = retired_files(&dir).map_err(|e| e.to_string())?;
        assert_eq!(kept.iter().map(|(_, k)| *k).collect::<Vec<_>>(), vec![old]);
        assert!(!dir.0.join("keys/checkpoint.key.old").exists());
        let now = load_checkpoint_key(&dir, false).map_err(|e| e.to_string())?;
        assert_ne!(now.key.verifying_key(), old);
        assert_eq!(
            jitgate_proto::audit::key_id(&now.key.verifying_key()),
            r.new_key_id
        );
        Ok(())
    }

    #[test]
    fn retired_keys_named_by_hand_are_trusted_and_numbered_after() -> Result<(), String> {
        let (_tmp, dir, first) = dir_with_key()?;
        let by_hand = SigningKey::generate(&mut rand::rngs::OsRng).verifying_key();
        let pem = by_hand
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| e.to_string())?;
        let keys = dir.0.join("keys");
        std::fs::write(keys.join("checkpoint-retired-2019.pub"), &pem)
            .map_err(|e| e.to_string())?;
        std::fs::write(keys.join("checkpoint-retired-old.pub"), &pem).map_err(|e| e.to_string())?;
        // Not a retired key: a leftover temporary file.
        std::fs::write(keys.join("checkpoint-retired-7.pub.tmp"), "x")
            .map_err(|e| e.to_string())?;
        let loaded = load_checkpoint_key(&dir, false).map_err(|e| e.to_string())?;
        assert_eq!(loaded.retired, vec![by_hand, by_hand]);
        let r = replace_checkpoint_key(&dir).map_err(|e| e.to_string())?;
        assert_eq!(
            r.retired_public_key,
            keys.join("checkpoint-retired-2020.pub")
        );
        let kept = retired_files(&dir).map_err(|e| e.to_string())?;
        assert!(kept.iter().any(|(_, k)| *k == first));
        Ok(())
    }
}
