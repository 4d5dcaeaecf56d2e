//! `npm ci` into a test directory, once, whoever asks first.
//!
//! Test rigs that run an npm package (the OpenID test provider, axe-core for the browser
//! tests) commit a `package.json` and `package-lock.json` and call [`ensure_installed`] on
//! first use: parallel tests and test binaries install once (an exclusive file lock), and a
//! changed lock file installs again. Nothing is installed for the product.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Written into node_modules after a complete install: the hash of the lock file installed.
const MARKER: &str = "node_modules/.jitgate-installed";

/// The install failed; the message says what (with npm's output).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NpmError(pub String);

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> NpmError {
    NpmError(format!("{what}: {e}"))
}

/// Installs the locked npm packages of `dir` unless the installed set matches its
/// `package-lock.json` and `node_modules/<probe>` exists. Blocks; safe to call from parallel
/// tests and processes (an exclusive lock on `dir/.install.lock`).
///
/// The equivalent by hand (and for `cargo xtask setup`): `npm ci --no-audit --no-fund` in
/// `dir` when `node_modules/.jitgate-installed` does not hold the SHA-256 of
/// `package-lock.json` (then write it there).
pub fn ensure_installed(dir: &Path, probe: &str) -> Result<PathBuf, NpmError> {
    let lock_path = dir.join(".install.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| err(lock_path.display(), e))?;
    lock.lock()
        .map_err(|e| err(format!("locking {}", lock_path.display()), e))?;
    let lockfile = dir.join("package-lock.json");
    let want = hex::encode(Sha256::digest(
        std::fs::read(&lockfile).map_err(|e| err(lockfile.display(), e))?,
    ));
    let marker = dir.join(MARKER);
    let installed = std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == want)
        && dir.join("node_modules").join(probe).exists();
    if !installed {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir)
            .output()
            .map_err(|e| err("running npm (Node.js and npm must be installed)", e))?;
        if !out.status.success() {
            return Err(NpmError(format!(
                "npm ci in {} failed ({}): {}{}",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        std::fs::write(&marker, format!("{want}\n")).map_err(|e| err(marker.display(), e))?;
    }
    // The lock is released when `lock` is closed.
    drop(lock);
    Ok(dir.to_path_buf())
}
