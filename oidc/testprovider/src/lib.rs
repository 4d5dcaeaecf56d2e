//! Test support for OpenID Connect: a real, certified OpenID provider (the npm package
//! `oidc-provider`, run by Node.js from this directory), a test CA for its TLS, and a
//! scripted person who signs in through the provider's pages over HTTP.
//!
//! Used by `jitgate-oidc`'s tests, and meant for the controller's and the portal's sign-in
//! tests. Everything listens on 127.0.0.1. The provider process dies with its
//! [`TestProvider`] (Drop), and also when the test process dies without unwinding
//! (it exits when its stdin closes, and the kernel kills it when its parent thread dies).
//!
//! `npm ci` runs on first use ([`ensure_installed`]), under a file lock so that parallel
//! tests install once; `cargo xtask setup` runs the same command ahead of the tests.

mod ca;
mod install;
mod person;
mod process;

pub use ca::{ServerCert, TestCa};
pub use install::{ensure_installed, testprovider_dir};
pub use person::{Choice, Person};
pub use process::{CLI_CLIENT_ID, Setup, TestProvider, User, WEB_CLIENT_ID};

/// Something in the test rig failed; the message says what (and includes the provider's log
/// when it would not start).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HarnessError(pub String);

impl HarnessError {
    pub(crate) fn new(what: impl std::fmt::Display, e: impl std::fmt::Display) -> HarnessError {
        HarnessError(format!("{what}: {e}"))
    }

    /// With the error's sources: reqwest's own message says little without them.
    pub(crate) fn chain(what: impl std::fmt::Display, e: &dyn std::error::Error) -> HarnessError {
        let mut s = format!("{what}: {e}");
        let mut src = e.source();
        while let Some(c) = src {
            s.push_str(&format!(": {c}"));
            src = c.source();
        }
        HarnessError(s)
    }
}
