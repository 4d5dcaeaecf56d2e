//! What can go wrong in a sign-in, each with its own variant so that the controller (and the
//! tests) can tell a forged token from an unreachable provider from a replayed callback.

use std::fmt;

/// A sign-in, device poll or refresh that did not produce an identity.
///
/// Every variant is a refusal: the caller signs nobody in (and, for a refresh, ends the
/// session). Messages never contain tokens, codes or secrets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Discovery has not succeeded (yet): the provider is down, unreachable, or its TLS
    /// certificate or discovery document is wrong. Retried in the background.
    #[error("the OpenID provider {issuer} is unavailable: {reason}")]
    ProviderUnavailable { issuer: String, reason: String },
    /// Portal sign-in needs the confidential client's secret and a redirect URI.
    #[error(
        "portal sign-in is not configured: [oidc] needs client_secret_file (the portal is a \
         confidential client) and the controller its public https URL"
    )]
    PortalNotConfigured,
    /// `jit login` needs the public CLI client.
    #[error("`jit login` is not configured: [oidc] needs cli_client_id (a public client)")]
    CliNotConfigured,
    /// The provider's discovery document names no device authorization endpoint.
    #[error(
        "the OpenID provider {issuer} offers no device authorization endpoint: use `jit login` \
         without --device"
    )]
    DeviceFlowUnsupported { issuer: String },
    /// A CLI redirect URI that is not a loopback one (RFC 8252).
    #[error("redirect URI {uri:?} is refused: {reason}")]
    InvalidRedirect { uri: String, reason: &'static str },
    /// A portal return path that could lead off the site.
    #[error("return path {path:?} is refused: {reason}")]
    InvalidReturnPath { path: String, reason: &'static str },
    /// The pre-sign-in state (cookie or CLI handle) does not fit this callback.
    #[error("sign-in state refused: {0}")]
    State(#[from] StateError),
    /// The callback of this sign-in was already presented once.
    #[error("this sign-in was already completed or attempted: a callback is accepted once")]
    Replayed,
    /// The store that remembers used callbacks failed; nothing was redeemed.
    #[error("recording the sign-in callback as used failed: {0}")]
    ReplayStore(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The provider said no: at the authorization endpoint (`error=` on the callback) or at
    /// the token endpoint (`invalid_grant` for a used or expired code or refresh token, ...).
    #[error("the OpenID provider refused: {}", ProviderMessage(error, description))]
    ProviderRefused {
        error: String,
        description: Option<String>,
    },
    /// The token request failed on the way (network, TLS, unreadable response).
    #[error("the token request to the OpenID provider failed: {0}")]
    TokenRequest(String),
    /// A token response without an ID token: nothing names the person.
    #[error(
        "the OpenID provider returned no ID token (is `openid` among the scopes, and does the \
         provider return an ID token on refresh?)"
    )]
    NoIdToken,
    /// The ID token failed validation.
    #[error("ID token refused: {0}")]
    Rejected(#[from] TokenRejected),
    /// The device code expired before the person approved it.
    #[error("the device sign-in expired before it was approved: start again")]
    DeviceExpired,
    /// The person (or the provider) denied the device sign-in.
    #[error("the device sign-in was denied at the OpenID provider")]
    DeviceDenied,
}

struct ProviderMessage<'a>(&'a String, &'a Option<String>);

impl fmt::Display for ProviderMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(d) => write!(f, "{} ({})", self.0, d),
            None => write!(f, "{}", self.0),
        }
    }
}

/// Why a pre-sign-in state (sealed cookie or CLI handle) was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Not sealed by this controller's key, altered, truncated, or sealed for another use.
    #[error("not sealed by this controller (altered, truncated, foreign or for another use)")]
    Unsealable,
    /// Older than its lifetime.
    #[error("expired: start the sign-in again")]
    Expired,
    /// The `state` parameter of the callback is not the one this browser (or CLI) started.
    #[error("the callback's state does not match the sign-in this browser started")]
    Mismatch,
    /// A callback without a `state` or `code`.
    #[error("the callback carries no {0}")]
    Missing(&'static str),
    /// Started against another issuer or client (the configuration changed in between).
    #[error("started for another issuer or client; start the sign-in again")]
    OtherProvider,
    /// The callback names another authorization server (RFC 9207 `iss`): a mix-up attempt.
    #[error("the callback comes from issuer {found:?}, not {expected:?}")]
    WrongCallbackIssuer { expected: String, found: String },
}

/// Why an ID token was refused. One variant per check, so that each forgery is named.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejected {
    #[error("wrong issuer: {0}")]
    WrongIssuer(String),
    #[error("wrong audience: {0}")]
    WrongAudience(String),
    #[error(
        "minted for another client: authorized party (azp) is {}, expected {expected:?}",
        shown(found)
    )]
    WrongAuthorizedParty {
        expected: String,
        found: Option<String>,
    },
    #[error("expired: {0}")]
    Expired(String),
    #[error("not valid yet: nbf {nbf} is after now ({now}) plus the allowed clock skew")]
    NotYetValid { nbf: i64, now: i64 },
    #[error("issued in the future: iat {iat} is after now ({now}) plus the allowed clock skew")]
    IssuedInFuture { iat: i64, now: i64 },
    #[error("issued too long ago: iat {iat}, now {now}")]
    Stale { iat: i64, now: i64 },
    #[error("unsigned (alg \"none\")")]
    Unsigned,
    #[error("signature algorithm not allowed: {0}")]
    DisallowedAlgorithm(String),
    #[error(
        "signed with key id {}, which the provider's key set does not contain (also after \
         refreshing it)",
        shown(kid)
    )]
    UnknownKey { kid: Option<String> },
    #[error("the key to check it with is ambiguous: {0}")]
    AmbiguousKey(String),
    #[error("bad signature: {0}")]
    BadSignature(String),
    #[error("wrong nonce: {0}")]
    WrongNonce(String),
    #[error("the subject changed from {expected:?} to {found:?}")]
    SubjectChanged { expected: String, found: String },
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// An optional claim as shown in a message.
fn shown(v: &Option<String>) -> String {
    match v {
        Some(s) => format!("{s:?}"),
        None => "absent".into(),
    }
}

/// Renders an error and its sources on one line: reqwest's own message ("error sending
/// request") says nothing without its causes ("connection refused", "UnknownIssuer").
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}
