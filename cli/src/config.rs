//! Where the controller is and how to sign in. Later wins: the file `$JIT_CONFIG` (default
//! `~/.config/jit/config.toml`; keys `url`, `ca`, `token`, unknown keys refused), then the
//! environment (`JIT_URL`, `JIT_CA`, `JIT_TOKEN`), then `--url` / `--ca`.
//!
//! The credential: `JIT_TOKEN` if set (automation), else the session `jit login` saved for
//! this controller (`session.json` beside the configuration file, mode 0600), else the
//! file's `token`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::exit::{Fail, R};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    url: Option<String>,
    ca: Option<PathBuf>,
    token: Option<String>,
}

/// What the client needs, resolved.
pub struct Settings {
    pub url: String,
    /// The CA certificate (PEM) that signed the controller's certificate.
    pub ca_pem: Vec<u8>,
    pub ca_path: PathBuf,
    /// None: not signed in (only `jit login` works then).
    pub token: Option<String>,
    /// Where `jit login` keeps the session credential.
    pub session_path: Option<PathBuf>,
}

/// What `jit login` saves: the session credential, for one controller.
#[derive(serde::Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedSession {
    pub url: String,
    pub credential: String,
    pub expires_utc: Option<String>,
}

/// Reads the saved session if it is for `url`.
fn saved_session(path: &Path, url: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let s: SavedSession = serde_json::from_str(&text).ok()?;
    (s.url == url).then_some(s.credential)
}

/// Writes the session credential with mode 0600 (replacing any previous one at once).
pub fn save_session(path: &Path, session: &SavedSession) -> R<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let fail =
        |e: std::io::Error| Fail::error(format!("saving the session in {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(fail)?;
    }
    let tmp = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let text = serde_json::to_string(session).map_err(|e| Fail::error(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// Forgets the saved session (nothing saved is fine).
pub fn remove_session(path: &Path) -> R<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Fail::error(format!("{}: {e}", path.display()))),
    }
}

/// The global flags that take part.
pub struct Flags<'a> {
    pub url: Option<&'a str>,
    pub ca: Option<&'a Path>,
    pub config: Option<&'a Path>,
}

pub fn load(flags: &Flags<'_>) -> R<Settings> {
    let path = flags
        .config
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("JIT_CONFIG").map(PathBuf::from))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/jit/config.toml"))
        });
    let mut fc = FileConfig::default();
    if let Some(p) = &path
        && p.exists()
    {
        let text =
            std::fs::read_to_string(p).map_err(|e| Fail::usage(format!("{}: {e}", p.display())))?;
        fc = toml::from_str(&text).map_err(|e| Fail::usage(format!("{}: {e}", p.display())))?;
    }
    let url = flags
        .url
        .map(str::to_string)
        .or_else(|| std::env::var("JIT_URL").ok())
        .or(fc.url)
        .ok_or_else(|| {
            Fail::usage("no controller URL: set url in the config file, JIT_URL or --url")
        })?;
    let ca_path = flags
        .ca
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("JIT_CA").map(PathBuf::from))
        .or(fc.ca)
        .ok_or_else(|| {
            Fail::usage("no CA certificate: set ca in the config file, JIT_CA or --ca")
        })?;
    let url = url.trim_end_matches('/').to_string();
    let session_path = path
        .as_deref()
        .and_then(Path::parent)
        .map(|d| d.join("session.json"));
    let token = std::env::var("JIT_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .or_else(|| session_path.as_deref().and_then(|p| saved_session(p, &url)))
        .or(fc.token)
        .map(|t| t.trim().to_string());
    let ca_pem =
        std::fs::read(&ca_path).map_err(|e| Fail::usage(format!("{}: {e}", ca_path.display())))?;
    Ok(Settings {
        url,
        ca_pem,
        ca_path,
        token,
        session_path,
    })
}
