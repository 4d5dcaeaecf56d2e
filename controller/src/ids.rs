//! Secrets and identifiers: API and enrolment tokens (only their SHA-256 is ever stored),
//! request and grant ids.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix of API tokens: `jit_` + 64 hex digits (256 random bits).
const TOKEN_PREFIX: &str = "jit_";
/// Prefix of enrolment tokens: `jitenroll_` + 64 hex digits.
pub const ENROLL_PREFIX: &str = "jitenroll_";

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// A fresh API token.
pub fn new_token() -> String {
    format!("{TOKEN_PREFIX}{}", random_hex(32))
}

/// Prefix of session credentials (people signed in with OpenID Connect).
const SESSION_PREFIX: &str = "jitsess_";

/// A fresh session credential: `jitsess_` + 64 hex digits (256 random bits).
pub fn new_session_credential() -> String {
    format!("{SESSION_PREFIX}{}", random_hex(32))
}

/// Whether a presented string has the shape of a session credential.
pub fn plausible_session(t: &str) -> bool {
    plausible(t, SESSION_PREFIX)
}

/// A session id (for list and revoke; not the credential): `ses_` + 32 hex digits.
pub fn new_session_id() -> String {
    format!("ses_{}", random_hex(16))
}

/// A one-time sign-in link's secret: `jitlink_` + 64 hex digits.
pub fn new_link_secret() -> String {
    format!("{LINK_PREFIX}{}", random_hex(32))
}

/// Whether a presented string has the shape of a sign-in link's secret.
pub fn plausible_link(t: &str) -> bool {
    plausible(t, LINK_PREFIX)
}

/// A sign-in link's id (named in the activity log; not the secret).
pub fn new_link_id() -> String {
    format!("lnk_{}", random_hex(16))
}

const LINK_PREFIX: &str = "jitlink_";

/// A fresh one-time enrolment token.
pub fn new_enroll_token() -> String {
    format!("{ENROLL_PREFIX}{}", random_hex(32))
}

/// What is stored of a token (API or enrolment).
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn plausible(t: &str, prefix: &str) -> bool {
    t.strip_prefix(prefix).is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Whether a presented string has the shape of an API token (checked before any lookup).
pub fn plausible_token(t: &str) -> bool {
    t.len() == 68 && t.starts_with(TOKEN_PREFIX) && t[4..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether a presented string has the shape of an enrolment token.
pub fn plausible_enroll_token(t: &str) -> bool {
    plausible(t, ENROLL_PREFIX)
}

/// A token id: `tok_` + 16 hex digits.
pub fn new_token_id() -> String {
    format!("tok_{}", random_hex(8))
}

/// A request or grant id in GUID form, as Azure shows them: a UUIDv7 (time-ordered, so
/// index inserts stay local; the agent protocol carries grant ids as UUIDs).
pub fn new_guid() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let t = new_token();
        assert!(plausible_token(&t) && !plausible_enroll_token(&t));
        let e = new_enroll_token();
        assert!(plausible_enroll_token(&e) && !plausible_token(&e));
        assert!(!plausible_token("jit_xyz"));
        let s = new_session_credential();
        assert!(plausible_session(&s) && !plausible_token(&s) && !plausible_session(&t));
        assert_eq!(hash_token(&t).len(), 64);
        let (a, b) = (new_guid(), new_guid());
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "7", "UUIDv7");
        assert!(a < b || a[..13] == b[..13], "time-ordered");
    }
}
