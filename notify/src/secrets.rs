//! Named secrets (webhook HMAC keys, SMTP passwords) in a directory the controller owns.
//!
//! A sink names a secret; it never names a file. Names are checked ([`SecretName`]: letters,
//! digits, `_`, `-`; no separators, no dots) so no name can leave the directory, and files are
//! opened without following symbolic links. The directory is 0700 and each file 0600, owned
//! by the controller's user; a looser directory or file is refused, not silently used.
//! Secrets are write-only from the outside: [`SecretStore::put`] stores one, and nothing in
//! this crate returns a secret's bytes except to the signing and SMTP code inside it.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use zeroize::Zeroizing;

/// Largest secret accepted.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
const MAX_NAME: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "secret name {0:?} is invalid: use 1-{MAX_NAME} letters, digits, '_' or '-', starting with a letter or digit"
    )]
    BadName(String),
    #[error("no secret named {0:?} in the secrets directory")]
    Unknown(String),
    #[error("a secret must be 1 to {MAX_SECRET_BYTES} bytes")]
    BadSize,
    #[error("notify.secrets_dir must be an absolute path, not {0:?}")]
    RelativeDir(PathBuf),
    #[error("{path}: {problem}")]
    Unsafe { path: PathBuf, problem: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SecretError + '_ {
    move |source| SecretError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A valid secret name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct SecretName(String);

impl SecretName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SecretName {
    type Err = SecretError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= MAX_NAME
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(SecretName(s.to_string()))
        } else {
            Err(SecretError::BadName(s.chars().take(80).collect()))
        }
    }
}

/// A secret's value: zeroed when dropped, never printed.
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
    /// As text (an SMTP password); `None` when it is not UTF-8.
    pub(crate) fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// The secrets directory (`notify.secrets_dir`).
#[derive(Clone, Debug)]
pub struct SecretStore {
    dir: PathBuf,
}

impl SecretStore {
    /// Opens the directory, creating it 0700 if it does not exist. An existing directory
    /// must be a real directory (not a link), owned by this user, with no group or other
    /// permissions.
    pub fn open(dir: impl Into<PathBuf>) -> Result<SecretStore, SecretError> {
        let dir = dir.into();
        if !dir.is_absolute() {
            return Err(SecretError::RelativeDir(dir));
        }
        match fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .map_err(io_err(&dir))?;
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                    .map_err(io_err(&dir))?;
            }
            Err(e) => return Err(io_err(&dir)(e)),
            Ok(_) => {}
        }
        let meta = fs::symlink_metadata(&dir).map_err(io_err(&dir))?;
        if !meta.file_type().is_dir() {
            return Err(unsafe_path(
                &dir,
                "not a directory (links are not followed)",
            ));
        }
        check_owner_and_mode(&dir, &meta)?;
        Ok(SecretStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &SecretName) -> PathBuf {
        self.dir.join(name.as_str())
    }

    /// Stores (or replaces) a secret, atomically: written 0600 to a temporary file, synced,
    /// renamed over the old one, and the directory synced.
    pub fn put(&self, name: &SecretName, value: &[u8]) -> Result<(), SecretError> {
        if value.is_empty() || value.len() > MAX_SECRET_BYTES {
            return Err(SecretError::BadSize);
        }
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            name.as_str(),
            uuid::Uuid::new_v4().simple()
        ));
        let result = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
                .map_err(io_err(&tmp))?;
            f.write_all(value).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
            fs::rename(&tmp, self.path(name)).map_err(io_err(&tmp))?;
            fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&self.dir))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Whether a secret of that name exists (what `add` checks a sink's secret against).
    pub fn contains(&self, name: &SecretName) -> Result<bool, SecretError> {
        match fs::symlink_metadata(self.path(name)) {
            Ok(m) => Ok(m.file_type().is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&self.path(name))(e)),
        }
    }

    /// Removes a secret; false when there was none.
    pub fn remove(&self, name: &SecretName) -> Result<bool, SecretError> {
        let p = self.path(name);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    /// The names of the stored secrets (never their values). Files whose names are not
    /// valid secret names (temporary and dot files among them) are not listed.
    pub fn names(&self) -> Result<Vec<SecretName>, SecretError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            if let Some(name) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Reads a secret for use inside this crate. The file must be a regular file (links are
    /// not followed), owned by this user, without group or other permissions. One trailing
    /// newline (`\n` or `\r\n`), as editors and `echo` leave, is not part of the secret.
    pub(crate) fn load(&self, name: &SecretName) -> Result<Secret, SecretError> {
        let p = self.path(name);
        let mut f = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&p)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SecretError::Unknown(name.to_string()));
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(unsafe_path(&p, "is a symbolic link"));
            }
            Err(e) => return Err(io_err(&p)(e)),
        };
        let meta = f.metadata().map_err(io_err(&p))?;
        if !meta.file_type().is_file() {
            return Err(unsafe_path(&p, "not a regular file"));
        }
        check_owner_and_mode(&p, &meta)?;
        if meta.len() > MAX_SECRET_BYTES as u64 {
            return Err(SecretError::BadSize);
        }
        let mut buf = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
        Read::by_ref(&mut f)
            .take(MAX_SECRET_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(io_err(&p))?;
        if buf.ends_with(b"\r\n") {
            let n = buf.len() - 2;
            buf.truncate(n);
        } else if buf.ends_with(b"\n") {
            let n = buf.len() - 1;
            buf.truncate(n);
        }
        if buf.is_empty() || buf.len() > MAX_SECRET_BYTES {
            return Err(SecretError::BadSize);
        }
        Ok(Secret(buf))
    }
}

fn unsafe_path(path: &Path, problem: &str) -> SecretError {
    SecretError::Unsafe {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

fn check_owner_and_mode(path: &Path, meta: &fs::Metadata) -> Result<(), SecretError> {
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(unsafe_path(
            path,
            &format!(
                "owned by uid {}, not by the controller's uid {me}",
                meta.uid()
            ),
        ));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        let want = if meta.file_type().is_dir() {
            "0700"
        } else {
            "0600"
        };
        return Err(unsafe_path(
            path,
            &format!("mode {mode:04o} gives access to others; set it to {want}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, SecretStore) {
        let t = tempfile::tempdir().unwrap();
        let s = SecretStore::open(t.path().join("secrets")).unwrap();
        (t, s)
    }

    #[test]
    fn names_cannot_leave_the_directory() {
        for bad in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "x.y",
            "..",
            "-x",
            "a b",
            "a\0b",
            &"a".repeat(65),
        ] {
            assert!(bad.parse::<SecretName>().is_err(), "{bad:?}");
        }
        for good in ["hook-key", "smtp_password", "A1"] {
            assert!(good.parse::<SecretName>().is_ok(), "{good}");
        }
    }

    #[test]
    fn put_load_modes_and_listing() {
        let (_t, s) = store();
        assert_eq!(fs::metadata(s.dir()).unwrap().mode() & 0o777, 0o700);
        let n: SecretName = "hook".parse().unwrap();
        assert!(!s.contains(&n).unwrap());
        assert!(matches!(s.load(&n), Err(SecretError::Unknown(_))));
        s.put(&n, b"k1\n").unwrap();
        assert_eq!(
            fs::metadata(s.dir().join("hook")).unwrap().mode() & 0o777,
            0o600
        );
        assert_eq!(s.load(&n).unwrap().expose(), b"k1");
        s.put(&n, b"k2").unwrap();
        assert_eq!(s.load(&n).unwrap().expose(), b"k2");
        assert!(matches!(s.put(&n, b""), Err(SecretError::BadSize)));
        assert!(matches!(
            s.put(&n, &vec![1; MAX_SECRET_BYTES + 1]),
            Err(SecretError::BadSize)
        ));
        fs::write(s.dir().join(".dotfile"), b"x").unwrap();
        assert_eq!(s.names().unwrap(), vec![n.clone()]);
        assert_eq!(format!("{:?}", s.load(&n).unwrap()), "Secret(redacted)");
        assert!(s.remove(&n).unwrap());
        assert!(!s.remove(&n).unwrap());
    }

    #[test]
    fn loose_modes_and_links_are_refused() {
        let (t, s) = store();
        let n: SecretName = "k".parse().unwrap();
        s.put(&n, b"v").unwrap();
        fs::set_permissions(s.dir().join("k"), fs::Permissions::from_mode(0o644)).unwrap();
        let err = s.load(&n).unwrap_err().to_string();
        assert!(err.contains("0644") && err.contains("0600"), "{err}");
        let target = t.path().join("elsewhere");
        fs::write(&target, b"not a secret").unwrap();
        std::os::unix::fs::symlink(&target, s.dir().join("link")).unwrap();
        let err = s.load(&"link".parse().unwrap()).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        let open = t.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        let err = SecretStore::open(&open).unwrap_err().to_string();
        assert!(err.contains("0755"), "{err}");
        assert!(matches!(
            SecretStore::open("relative/dir"),
            Err(SecretError::RelativeDir(_))
        ));
    }
}
