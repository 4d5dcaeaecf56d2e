//! Where the controller is and how to sign in. Later wins: the file `$JIT_CONFIG` (default
//! `~/.config/jit/config.toml`; keys `url`, `ca`, `token`, unknown keys refused), then the
//! environment (`JIT_URL`, `JIT_CA`, `JIT_TOKEN`), then `--url` / `--ca`.

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
    pub token: String,
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
    let token = std::env::var("JIT_TOKEN")
        .ok()
        .or(fc.token)
        .ok_or_else(|| Fail::usage("no API token: set token in the config file or JIT_TOKEN"))?;
    let ca_pem =
        std::fs::read(&ca_path).map_err(|e| Fail::usage(format!("{}: {e}", ca_path.display())))?;
    Ok(Settings {
        url: url.trim_end_matches('/').to_string(),
        ca_pem,
        ca_path,
        token: token.trim().to_string(),
    })
}
