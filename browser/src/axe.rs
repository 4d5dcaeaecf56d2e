//! axe-core (the npm package, pinned in `browser/axe/package-lock.json`), injected into the
//! page under test.

use std::path::PathBuf;

use serde::Deserialize;

use crate::BrowserError;

/// The directory with axe-core's package.json and package-lock.json.
pub fn axe_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("axe")
}

/// `npm ci` in [`axe_dir`] unless done (once per lock file, whoever asks first); the path of
/// `axe.min.js`.
pub fn ensure_axe_installed() -> Result<PathBuf, BrowserError> {
    let dir = jitgate_testnpm::ensure_installed(&axe_dir(), "axe-core/axe.min.js")
        .map_err(|e| BrowserError(e.0))?;
    Ok(dir.join("node_modules/axe-core/axe.min.js"))
}

/// One rule that failed, with the elements it failed on (CSS selectors).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AxeViolation {
    pub id: String,
    /// minor, moderate, serious or critical.
    pub impact: Option<String>,
    pub help: String,
    pub help_url: String,
    pub nodes: Vec<String>,
}

impl AxeViolation {
    /// Serious and critical violations fail a page.
    pub fn is_serious(&self) -> bool {
        matches!(self.impact.as_deref(), Some("serious" | "critical"))
    }
}

impl std::fmt::Display for AxeViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {} [{}] at {}",
            self.id,
            self.impact.as_deref().unwrap_or("?"),
            self.help,
            self.help_url,
            self.nodes.join(", ")
        )
    }
}

/// Runs axe on the document (the WebDriver script's callback is its last argument) and
/// returns the violations as JSON text, or `{"error": ...}`.
pub(crate) const RUN: &str = r#"
const done = arguments[arguments.length - 1];
axe.run(document, { resultTypes: ['violations'] })
  .then((r) => done(JSON.stringify({ violations: r.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help, helpUrl: v.helpUrl,
    nodes: v.nodes.map((n) => n.target.join(' ')) })) })))
  .catch((e) => done(JSON.stringify({ error: String(e) })));
"#;

#[derive(Deserialize)]
pub(crate) struct RunResult {
    pub violations: Option<Vec<AxeViolation>>,
    pub error: Option<String>,
}
