//! Files in the agent's state directory replaced whole: written beside the old one, flushed,
//! renamed over it, and the directory flushed, so that a crash leaves the old file or the
//! new one, never half of either. A private file (a key, a certificate) has mode 0600 from
//! its first byte: never readable by others, not even for the moment between a write and a
//! `chmod`.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Replaces `path` with `data`, mode 0644.
pub fn replace(path: &Path, data: &[u8]) -> io::Result<()> {
    write(path, data, 0o644)
}

/// Replaces `path` with `data`, mode 0600.
pub fn replace_private(path: &Path, data: &[u8]) -> io::Result<()> {
    write(path, data, 0o600)
}

fn write(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?
        .to_os_string();
    name.push(".tmp");
    let tmp = dir.join(name);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // A temporary file left by a crash keeps its old mode through `open`.
        f.set_permissions(Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_are_replaced_whole_with_their_mode() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("agent.key");
        // A temporary file left world-readable by a crash does not make the key so.
        std::fs::write(d.path().join("agent.key.tmp"), b"old").unwrap();
        std::fs::set_permissions(
            d.path().join("agent.key.tmp"),
            Permissions::from_mode(0o666),
        )
        .unwrap();
        replace_private(&key, b"secret").unwrap();
        assert_eq!(std::fs::read(&key).unwrap(), b"secret");
        assert_eq!(mode(&key), 0o600);
        assert!(!d.path().join("agent.key.tmp").exists());
        replace_private(&key, b"newer").unwrap();
        assert_eq!(std::fs::read(&key).unwrap(), b"newer");

        let state = d.path().join("channel.json");
        replace(&state, b"{}").unwrap();
        assert_eq!(mode(&state), 0o644);
        assert!(replace(Path::new("/"), b"x").is_err());
    }
}
