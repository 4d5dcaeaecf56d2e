//! A started code flow and its callback. What the flow must remember (state, nonce, PKCE
//! verifier) travels sealed with the browser (the portal's pre-sign-in cookie) or the CLI,
//! so that the controller writes nothing before someone has signed in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, StateError};
use crate::redirect::{LoopbackRedirect, ReturnPath};
use crate::seal::{Purpose, Sealer};

/// How long a started sign-in may take (login page, consent, MFA).
pub const LOGIN_STATE_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// Longest authorization code accepted from a callback (bytes).
const MAX_CODE_LEN: usize = 4096;

pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Which registered client a flow runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    /// The portal: confidential (`client_id` + secret), redirect to `/auth/callback`.
    Portal,
    /// `jit login`: public (`cli_client_id`), loopback redirect or device flow.
    Cli,
}

impl ClientKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientKind::Portal => "portal",
            ClientKind::Cli => "cli",
        }
    }
}

/// What a login is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
pub enum LoginRequest {
    /// The portal's browser sign-in; back to `return_to` afterwards.
    Portal { return_to: ReturnPath },
    /// `jit login` with a browser: the provider sends the browser to the CLI's loopback
    /// listener, which hands the code to the controller.
    Cli { redirect: LoopbackRedirect },
}

impl LoginRequest {
    pub fn client(&self) -> ClientKind {
        match self {
            LoginRequest::Portal { .. } => ClientKind::Portal,
            LoginRequest::Cli { .. } => ClientKind::Cli,
        }
    }
}

/// A started code flow: state, nonce and PKCE verifier, kept sealed by the browser (portal
/// cookie) or the CLI until the callback. Its fields stay private: only
/// [`crate::RelyingParty::start_login`] and [`PendingLogin::open`] make one.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLogin {
    #[serde(rename = "r")]
    pub(crate) request: LoginRequest,
    #[serde(rename = "s")]
    pub(crate) state: String,
    #[serde(rename = "n")]
    pub(crate) nonce: String,
    #[serde(rename = "v")]
    pub(crate) verifier: String,
    #[serde(rename = "i")]
    pub(crate) issuer: String,
    #[serde(rename = "c")]
    pub(crate) client_id: String,
    #[serde(rename = "e")]
    pub(crate) expires_at: i64,
}

impl std::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLogin")
            .field("request", &self.request)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl PendingLogin {
    pub fn request(&self) -> &LoginRequest {
        &self.request
    }

    /// Where the portal goes after sign-in (None for the CLI).
    pub fn return_to(&self) -> Option<&ReturnPath> {
        match &self.request {
            LoginRequest::Portal { return_to } => Some(return_to),
            LoginRequest::Cli { .. } => None,
        }
    }

    /// Unix seconds after which the callback is refused; also the cookie's Max-Age.
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }

    /// The `state` sent to the provider; the CLI compares it with what its loopback listener
    /// receives before handing the code over.
    pub fn state(&self) -> &str {
        &self.state
    }

    /// Sealed for the portal cookie or the CLI (base64url, a few hundred bytes).
    pub fn seal(&self, sealer: &Sealer) -> String {
        sealer.seal_json(Purpose::LoginState, b"", self)
    }

    /// Opens what [`PendingLogin::seal`] made; refused when altered, foreign or expired.
    pub fn open(sealer: &Sealer, sealed: &str) -> Result<PendingLogin, Error> {
        let p: PendingLogin = sealer
            .open_json(Purpose::LoginState, b"", sealed)
            .map_err(|_| StateError::Unsealable)?;
        if now_unix() > p.expires_at {
            return Err(StateError::Expired.into());
        }
        Ok(p)
    }

    /// Checks a callback against this sign-in (expiry, `state`, RFC 9207 `iss`, the
    /// provider's `error`), before anything is sent to the provider.
    pub fn check_callback(&self, cb: &CallbackParams) -> Result<CheckedCallback, Error> {
        if now_unix() > self.expires_at {
            return Err(StateError::Expired.into());
        }
        let state = cb.state.as_deref().ok_or(StateError::Missing("state"))?;
        if Sha256::digest(state.as_bytes()) != Sha256::digest(self.state.as_bytes()) {
            return Err(StateError::Mismatch.into());
        }
        if let Some(iss) = &cb.iss
            && *iss != self.issuer
        {
            return Err(StateError::WrongCallbackIssuer {
                expected: self.issuer.clone(),
                found: iss.chars().take(200).collect(),
            }
            .into());
        }
        if let Some(error) = &cb.error {
            return Err(Error::ProviderRefused {
                error: error.chars().take(100).collect(),
                description: cb
                    .error_description
                    .as_ref()
                    .map(|d| d.chars().take(300).collect()),
            });
        }
        let code = cb.code.as_deref().ok_or(StateError::Missing("code"))?;
        if code.is_empty() || code.len() > MAX_CODE_LEN {
            return Err(StateError::Missing("usable code").into());
        }
        Ok(CheckedCallback {
            pending: self.clone(),
            code: code.to_string(),
            iss_present: cb.iss.is_some(),
        })
    }
}

/// The query parameters of a redirect back from the provider (or what the CLI's loopback
/// listener received, handed over as is).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackParams {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
    /// RFC 9207: the issuer that answered.
    pub iss: Option<String>,
}

impl std::fmt::Debug for CallbackParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackParams")
            .field("code", &self.code.as_ref().map(|_| ".."))
            .field("error", &self.error)
            .field("iss", &self.iss)
            .finish_non_exhaustive()
    }
}

impl CallbackParams {
    /// From a query string (`code=...&state=...`); repeated parameters: the first counts.
    pub fn from_query(query: &str) -> CallbackParams {
        let mut p = CallbackParams::default();
        for (k, v) in openidconnect::url::form_urlencoded::parse(query.as_bytes()) {
            let slot = match k.as_ref() {
                "code" => &mut p.code,
                "state" => &mut p.state,
                "error" => &mut p.error,
                "error_description" => &mut p.error_description,
                "iss" => &mut p.iss,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(v.into_owned());
            }
        }
        p
    }
}

/// A callback that fits its sign-in; redeemable once, through
/// [`crate::RelyingParty::finish_login`].
#[derive(Clone, Debug)]
pub struct CheckedCallback {
    pub(crate) pending: PendingLogin,
    pub(crate) code: String,
    pub(crate) iss_present: bool,
}

/// Identifies one sign-in attempt for the single-use check: a hash of its `state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplayKey(pub [u8; 32]);

impl CheckedCallback {
    pub fn replay_key(&self) -> ReplayKey {
        let mut h = Sha256::new();
        h.update(b"jitgate-oidc/v1/replay\0");
        h.update(self.pending.state.as_bytes());
        ReplayKey(h.finalize().into())
    }

    /// Until when the replay key must be remembered (the sign-in's expiry).
    pub fn keep_until(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(u64::try_from(self.pending.expires_at).unwrap_or(0))
    }

    pub fn pending(&self) -> &PendingLogin {
        &self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::SealKey;

    fn pending(expires_in: i64) -> PendingLogin {
        PendingLogin {
            request: LoginRequest::Portal {
                return_to: ReturnPath::parse(&format!("/vms/{}", "x".repeat(1000))).unwrap(),
            },
            state: "s".repeat(22),
            nonce: "n".repeat(22),
            verifier: "v".repeat(43),
            issuer: "https://login.example.net/realms/corp".into(),
            client_id: "jitgate".into(),
            expires_at: now_unix() + expires_in,
        }
    }

    #[test]
    fn sealed_login_fits_a_cookie_and_opens() {
        let sealer = Sealer::new(&SealKey::generate());
        let p = pending(600);
        let sealed = p.seal(&sealer);
        // A cookie holds 4096 bytes with its name and attributes; the longest return path fits.
        assert!(sealed.len() < 3000, "{}", sealed.len());
        assert!(
            sealed
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(PendingLogin::open(&sealer, &sealed).unwrap(), p);
    }

    #[test]
    fn expired_and_foreign_states_are_refused() {
        let sealer = Sealer::new(&SealKey::generate());
        let e = PendingLogin::open(&sealer, &pending(-1).seal(&sealer)).unwrap_err();
        assert!(matches!(e, Error::State(StateError::Expired)), "{e}");
        let other = Sealer::new(&SealKey::generate());
        let e = PendingLogin::open(&other, &pending(600).seal(&sealer)).unwrap_err();
        assert!(matches!(e, Error::State(StateError::Unsealable)), "{e}");
    }

    #[test]
    fn callbacks_are_checked_before_any_redemption() {
        let p = pending(600);
        let good = CallbackParams {
            code: Some("c0de".into()),
            state: Some(p.state.clone()),
            ..Default::default()
        };
        assert_eq!(p.check_callback(&good).unwrap().code, "c0de");
        let cases = [
            (
                CallbackParams {
                    state: Some("other".into()),
                    ..good.clone()
                },
                "does not match",
            ),
            (
                CallbackParams {
                    state: None,
                    ..good.clone()
                },
                "no state",
            ),
            (
                CallbackParams {
                    code: None,
                    ..good.clone()
                },
                "no code",
            ),
            (
                CallbackParams {
                    iss: Some("https://evil.example".into()),
                    ..good.clone()
                },
                "comes from issuer",
            ),
            (
                CallbackParams {
                    code: None,
                    error: Some("access_denied".into()),
                    error_description: Some("user said no".into()),
                    ..good.clone()
                },
                "refused: access_denied (user said no)",
            ),
        ];
        for (cb, needle) in cases {
            let e = p.check_callback(&cb).unwrap_err().to_string();
            assert!(e.contains(needle), "{cb:?}: {e}");
        }
        let e = pending(-1).check_callback(&good).unwrap_err();
        assert!(matches!(e, Error::State(StateError::Expired)));
        // The same state gives the same replay key; another login another.
        let k1 = p.check_callback(&good).unwrap().replay_key();
        assert_eq!(k1, p.check_callback(&good).unwrap().replay_key());
        let mut q = pending(600);
        q.state = "t".repeat(22);
        let cb = CallbackParams {
            state: Some(q.state.clone()),
            ..good
        };
        assert_ne!(k1, q.check_callback(&cb).unwrap().replay_key());
    }

    #[test]
    fn callback_query_parsing() {
        let p = CallbackParams::from_query("code=a%2Fb&state=s1&state=s2&iss=https%3A%2F%2Fi&x=y");
        assert_eq!(p.code.as_deref(), Some("a/b"));
        assert_eq!(p.state.as_deref(), Some("s1"));
        assert_eq!(p.iss.as_deref(), Some("https://i"));
        assert!(
            !format!("{p:?}").contains("a/b"),
            "the code is not in Debug output"
        );
    }
}
