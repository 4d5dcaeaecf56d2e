//! ID token validation (OpenID Connect Core 1.0 §3.1.3.7), by `openidconnect`'s verifier with
//! jitgate's settings, plus the checks that verifier leaves to its callers (`azp`, `nbf`,
//! `iat`). Each failure maps to its own [`TokenRejected`] variant.

use chrono::Utc;
use openidconnect::core::{CoreJsonWebKey, CoreJwsSigningAlgorithm};
use openidconnect::{
    ClaimsVerificationError, ClientId, IdTokenVerifier, IssuerUrl, Nonce,
    SignatureVerificationError,
};
use serde_json::{Map, Value};

use crate::error::TokenRejected;
use crate::types::{IdToken, Jwks};

/// Clock difference tolerated between the controller and the provider, for `exp`, `nbf` and
/// `iat`.
pub const CLOCK_SKEW_SECS: i64 = 60;
/// How old an ID token may be when it arrives: it comes straight from the token endpoint.
pub const MAX_ID_TOKEN_AGE_SECS: i64 = 10 * 60;

/// Asymmetric algorithms only: `none` is refused, and so is HMAC (a public key or a client
/// secret as an HMAC key lets others forge tokens). The provider's advertised list is not
/// trusted.
pub const ALLOWED_ALGS: [CoreJwsSigningAlgorithm; 4] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// What the token is checked against.
pub(crate) struct Expect<'a> {
    pub issuer: &'a IssuerUrl,
    pub client_id: &'a str,
    /// The code flow's nonce; `None` for the device flow and refreshes (no nonce was sent).
    pub nonce: Option<&'a Nonce>,
}

/// Validates `token` with the keys in `jwks`; on success, all of its claims.
pub(crate) fn validate(
    token: &IdToken,
    jwks: &Jwks,
    expect: &Expect<'_>,
) -> Result<Map<String, Value>, TokenRejected> {
    let skew = chrono::Duration::seconds(CLOCK_SKEW_SECS);
    // The public-client verifier: it never takes a client secret as an HMAC key.
    let verifier = IdTokenVerifier::<CoreJsonWebKey>::new_public_client(
        ClientId::new(expect.client_id.to_string()),
        expect.issuer.clone(),
        jwks.clone(),
    )
    .set_allowed_algs(ALLOWED_ALGS)
    // `exp` with the skew: the library compares "now" against it.
    .set_time_fn(move || Utc::now() - skew)
    // Extra audiences are judged below by `azp`, as Core §3.1.3.7 steps 4 and 5 say.
    .set_other_audience_verifier_fn(|_| true);
    let claims = match expect.nonce {
        Some(n) => token.claims(&verifier, n),
        None => token.claims(&verifier, |_: Option<&Nonce>| Ok(())),
    }
    .map_err(|e| rejected(e, token))?;

    let audiences = claims.audiences();
    match claims.authorized_party() {
        Some(azp) if azp.as_str() != expect.client_id => {
            return Err(TokenRejected::WrongAuthorizedParty {
                expected: expect.client_id.to_string(),
                found: Some(azp.to_string()),
            });
        }
        None if audiences.len() > 1 => {
            return Err(TokenRejected::WrongAuthorizedParty {
                expected: expect.client_id.to_string(),
                found: None,
            });
        }
        _ => {}
    }

    let all = match serde_json::to_value(claims) {
        Ok(Value::Object(m)) => m,
        _ => return Err(TokenRejected::Malformed("claims are not an object".into())),
    };
    let now = Utc::now().timestamp();
    match all.get("nbf") {
        None | Some(Value::Null) => {}
        Some(v) => match v.as_f64() {
            // Compared in seconds; a fractional nbf rounds towards "later".
            Some(nbf) if nbf.ceil() > (now + CLOCK_SKEW_SECS) as f64 => {
                return Err(TokenRejected::NotYetValid {
                    nbf: nbf.ceil() as i64,
                    now,
                });
            }
            Some(_) => {}
            None => return Err(TokenRejected::Malformed("`nbf` is not a number".into())),
        },
    }
    let iat = claims.issue_time().timestamp();
    if iat > now + CLOCK_SKEW_SECS {
        return Err(TokenRejected::IssuedInFuture { iat, now });
    }
    if iat < now - CLOCK_SKEW_SECS - MAX_ID_TOKEN_AGE_SECS {
        return Err(TokenRejected::Stale { iat, now });
    }
    Ok(all)
}

fn rejected(e: ClaimsVerificationError, token: &IdToken) -> TokenRejected {
    use ClaimsVerificationError as C;
    use SignatureVerificationError as S;
    match e {
        C::InvalidIssuer(m) => TokenRejected::WrongIssuer(m),
        C::InvalidAudience(m) => TokenRejected::WrongAudience(m),
        C::Expired(m) => TokenRejected::Expired(m),
        C::InvalidNonce(m) => TokenRejected::WrongNonce(m),
        C::Unsupported(m) => TokenRejected::Unsupported(m),
        C::SignatureVerification(s) => match s {
            S::NoSignature => TokenRejected::Unsigned,
            S::DisallowedAlg(m) | S::UnsupportedAlg(m) => TokenRejected::DisallowedAlgorithm(m),
            S::NoMatchingKey => TokenRejected::UnknownKey {
                kid: unverified_kid(token),
            },
            S::AmbiguousKeyId(m) => TokenRejected::AmbiguousKey(m),
            S::CryptoError(m) => TokenRejected::BadSignature(m),
            S::InvalidKey(m) => TokenRejected::BadSignature(format!("unusable key: {m}")),
            other => TokenRejected::BadSignature(other.to_string()),
        },
        other => TokenRejected::Malformed(other.to_string()),
    }
}

/// The `kid` of the (unverified) header, for the error message only.
fn unverified_kid(token: &IdToken) -> Option<String> {
    use base64::Engine;
    let compact = serde_json::to_value(token).ok()?;
    let header = compact.as_str()?.split('.').next()?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    v.get("kid")?
        .as_str()
        .map(|k| k.chars().take(100).collect())
}

/// Whether a refusal may go away after fetching the provider's keys again.
pub(crate) fn wants_new_keys(e: &TokenRejected) -> bool {
    matches!(e, TokenRejected::UnknownKey { .. })
}
