//! `npm ci` into this directory, once, whoever asks first (jitgate-testnpm).

use std::path::PathBuf;

use crate::HarnessError;

/// The directory with package.json, package-lock.json and provider.mjs.
pub fn testprovider_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Installs the locked npm packages unless the installed set matches package-lock.json.
/// Blocks; safe to call from parallel tests and processes (see
/// [`jitgate_testnpm::ensure_installed`], which also says what `cargo xtask setup` runs).
pub fn ensure_installed() -> Result<PathBuf, HarnessError> {
    jitgate_testnpm::ensure_installed(&testprovider_dir(), "oidc-provider/package.json")
        .map_err(|e| HarnessError(e.0))
}
