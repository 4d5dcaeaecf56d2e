//! `npm ci` into this directory, once, whoever asks first.

use std::path::PathBuf;
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::HarnessError;

/// Written into node_modules after a complete install: the hash of the lock file installed.
const MARKER: &str = "node_modules/.jitgate-installed";

/// The directory with package.json, package-lock.json and provider.mjs.
pub fn testprovider_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Installs the locked npm packages unless the installed set matches package-lock.json.
/// Blocks; safe to call from parallel tests and processes (an exclusive file lock).
///
/// The equivalent for `cargo xtask setup`: `npm ci --no-audit --no-fund` in
/// `oidc/testprovider` when `node_modules/.jitgate-installed` does not hold the SHA-256 of
/// `package-lock.json` (then write it there).
pub fn ensure_installed() -> Result<PathBuf, HarnessError> {
    let dir = testprovider_dir();
    let lock_path = dir.join(".install.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| HarnessError::new(lock_path.display(), e))?;
    lock.lock()
        .map_err(|e| HarnessError::new(format!("locking {}", lock_path.display()), e))?;
    let lockfile = dir.join("package-lock.json");
    let want = hex::encode(Sha256::digest(
        std::fs::read(&lockfile).map_err(|e| HarnessError::new(lockfile.display(), e))?,
    ));
    let marker = dir.join(MARKER);
    let installed = std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == want)
        && dir.join("node_modules/oidc-provider/package.json").exists();
    if !installed {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .output()
            .map_err(|e| HarnessError::new("running npm (Node.js and npm must be installed)", e))?;
        if !out.status.success() {
            return Err(HarnessError(format!(
                "npm ci in {} failed ({}): {}{}",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        std::fs::write(&marker, format!("{want}\n"))
            .map_err(|e| HarnessError::new(marker.display(), e))?;
    }
    // The lock is released when `lock` is closed.
    drop(lock);
    Ok(dir)
}
