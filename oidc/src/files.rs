//! Reading secret files (client secret, sealing key): refused when others may read them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A secret file (client secret, sealing key) that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: readable or writable by others (mode {mode:o}); run chmod 600 {path}")]
    TooOpen { path: String, mode: u32 },
}

/// The file's text; refused when group or others have any access to it.
pub(crate) fn read_secret(path: &Path) -> Result<String, SecretFileError> {
    let shown = || path.display().to_string();
    let io = |source| SecretFileError::Io {
        path: shown(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::TooOpen {
            path: shown(),
            mode,
        });
    }
    std::fs::read_to_string(path).map_err(io)
}
