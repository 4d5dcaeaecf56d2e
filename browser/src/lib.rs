//! Test support: a real headless Chromium, driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`, installed by `cargo xtask setup`), for the portal's browser tests.
//!
//! ```no_run
//! # async fn t() -> Result<(), jitgate_browser::BrowserError> {
//! use jitgate_browser::{Browser, BrowserOptions};
//! let b = Browser::start(
//!     BrowserOptions::new("sign_in")
//!         .trust("/path/to/server.crt")           // this certificate's key, nothing else
//!         .check_headers_of("https://127.0.0.1:8443"),
//! )
//! .await?;
//! b.goto("https://127.0.0.1:8443/auth/session").await?;
//! b.wait_for_text("Signed in as").await?;
//! b.checkpoint("signed-in").await;    // screenshot, console, CSP, axe-core, headers
//! b.click_button("Sign out").await?;
//! # Ok(()) }
//! ```
//!
//! - **Where it runs.** chromedriver and the Chromium it starts run on loopback here, or
//!   inside a network namespace ([`BrowserOptions::netns`], root only): then chromedriver
//!   listens on the namespace's loopback and this process reaches it through a forwarder
//!   whose connections are opened inside the namespace. Chromium resolves no host names
//!   (IP literals and `localhost` only) and runs without background networking.
//! - **TLS.** Only the keys of the certificates given with [`BrowserOptions::trust`] are
//!   accepted besides the system's roots (`--ignore-certificate-errors-spki-list`), never a
//!   blanket exception.
//! - **Nothing left behind.** chromedriver leads a process group of its own that holds every
//!   Chromium process; dropping the [`Browser`] (also while a failed test unwinds) kills the
//!   group and removes the profile. A watchdog (`sh`, in its own process group) holds a pipe
//!   only this process writes to: when the test process dies any other way it kills the group
//!   and removes the profile.
//! - **Checks.** [`Browser::assert_clean`] fails on any console error and any
//!   Content-Security-Policy violation (the browser's log, and a `securitypolicyviolation`
//!   listener installed in every document before its own scripts run);
//!   [`Browser::assert_accessible`] runs axe-core (the npm package, `npm ci` into
//!   `browser/axe` on first use) and fails on serious or critical violations;
//!   [`Browser::checkpoint`] does both, checks the security headers of the documents the
//!   browser received, and saves a screenshot.
//! - **Screenshots** go to `JIT_SCREENSHOT_DIR`, else `$CARGO_TARGET_DIR/portal-screenshots`,
//!   else `target/portal-screenshots` of the workspace, one directory per browser name,
//!   numbered by step.

mod axe;
mod driver;
mod headers;
mod netns;
mod session;
mod site;
mod tls;

/// The WebDriver client ([`Browser::client`]), for what the harness does not wrap.
pub use fantoccini;

pub use axe::{AxeViolation, axe_dir, ensure_axe_installed};
pub use headers::{HeaderPolicy, Headers, headers_of, security_header_problems};
pub use netns::Forwarder;
pub use session::{Browser, BrowserOptions, ConsoleEntry, SeenResponse, screenshot_root};
pub use site::StaticSite;
pub use tls::spki_sha256_base64;

/// Something in the browser rig or a page failed; the message says what.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BrowserError(pub String);

impl BrowserError {
    pub(crate) fn new(what: impl std::fmt::Display, e: impl std::fmt::Display) -> BrowserError {
        BrowserError(format!("{what}: {e}"))
    }
}
