//! Webhook signatures: `Jitgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`.
//!
//! The MAC covers `"<t>." + body` with the sink's secret, so a receiver knows the body came
//! from the controller and when it was signed; rejecting signatures outside a replay window
//! stops a captured request from being replayed later. Every delivery attempt is signed anew
//! (a retry has a fresh `t`); `Jitgate-Delivery` (the event id) stays the same, so receivers
//! de-duplicate on it.
//!
//! ```
//! use std::time::Duration;
//! use jitgate_notify::signature::{sign, verify_signature};
//!
//! let secret = b"whsec-from-the-secrets-dir";
//! let body = br#"{"id":"...","type":"request.approved"}"#;
//! let header = sign(secret, 1_800_000_000, body);
//! // The receiver, 20 seconds later, accepting signatures up to 5 minutes old:
//! verify_signature(&header, body, secret, 1_800_000_020, Duration::from_secs(300)).unwrap();
//! // A changed body, or the same request replayed an hour later, is refused:
//! assert!(verify_signature(&header, b"{}", secret, 1_800_000_020, Duration::from_secs(300)).is_err());
//! assert!(verify_signature(&header, body, secret, 1_800_003_600, Duration::from_secs(300)).is_err());
//! ```

use std::time::Duration;

use ring::hmac;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Jitgate-Signature";
/// The header carrying the event id, for de-duplication.
pub const DELIVERY_HEADER: &str = "Jitgate-Delivery";

/// The header value for `body` signed at `timestamp` (unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, &signed_payload(timestamp, body));
    format!("t={timestamp},v1={}", hex::encode(tag.as_ref()))
}

fn signed_payload(timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(body.len() + 21);
    msg.extend_from_slice(timestamp.to_string().as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(body);
    msg
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("malformed Jitgate-Signature header: {0}")]
    Malformed(&'static str),
    #[error(
        "signature timestamp is {age_seconds} s from now, outside the replay window of {window_seconds} s"
    )]
    OutsideWindow {
        age_seconds: i64,
        window_seconds: u64,
    },
    #[error("no v1 signature matches the body and secret")]
    Mismatch,
}

/// Checks a `Jitgate-Signature` header against the raw request body (before any JSON
/// parsing), in constant time. `now` is unix seconds; signatures more than `replay_window`
/// older (or newer: clock skew the other way) than `now` are refused. Several `v1=` entries
/// are accepted (any one matching suffices), so a secret can be rotated without a gap.
pub fn verify_signature(
    header: &str,
    body: &[u8],
    secret: &[u8],
    now: i64,
    replay_window: Duration,
) -> Result<(), SignatureError> {
    if header.len() > 4096 {
        return Err(SignatureError::Malformed("too long"));
    }
    let mut timestamp: Option<i64> = None;
    let mut candidates: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed("expected key=value pairs"))?;
        match k {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed("t given twice"));
                }
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(SignatureError::Malformed("t is not unix seconds"));
                }
                timestamp = Some(
                    v.parse()
                        .map_err(|_| SignatureError::Malformed("t is not unix seconds"))?,
                );
            }
            "v1" => candidates
                .push(hex::decode(v).map_err(|_| SignatureError::Malformed("v1 is not hex"))?),
            // Later schemes (v2=...) are ignored, so receivers keep working when one is added.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no t"))?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed("no v1"));
    }
    let age = now.saturating_sub(timestamp);
    let window = i64::try_from(replay_window.as_secs()).unwrap_or(i64::MAX);
    if age.unsigned_abs() > window.unsigned_abs() {
        return Err(SignatureError::OutsideWindow {
            age_seconds: age,
            window_seconds: replay_window.as_secs(),
        });
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let payload = signed_payload(timestamp, body);
    if candidates
        .iter()
        .any(|tag| hmac::verify(&key, &payload, tag).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(300);

    #[test]
    fn known_vector() {
        // HMAC-SHA256(key "secret", "1700000000.{}"), computed independently with Python's hmac.
        assert_eq!(
            sign(b"secret", 1_700_000_000, b"{}"),
            "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }

    #[test]
    fn accepts_own_signature_and_rotation() {
        let h = sign(b"k1", 1000, b"body");
        verify_signature(&h, b"body", b"k1", 1000, W).unwrap();
        let rotated = format!(
            "{h},v1={}",
            sign(b"k2", 1000, b"body").split("v1=").nth(1).unwrap()
        );
        verify_signature(&rotated, b"body", b"k2", 1000, W).unwrap();
        verify_signature(&format!("{h},v2=zzz"), b"body", b"k1", 1000, W).unwrap();
    }

    #[test]
    fn refuses_tampering_replay_and_garbage() {
        let h = sign(b"k", 1000, b"body");
        assert_eq!(
            verify_signature(&h, b"bodY", b"k", 1000, W),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(&h, b"body", b"K", 1000, W),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify_signature(&h, b"body", b"k", 1301, W),
            Err(SignatureError::OutsideWindow { .. })
        ));
        assert!(matches!(
            verify_signature(&h, b"body", b"k", 699, W),
            Err(SignatureError::OutsideWindow { .. })
        ));
        verify_signature(&h, b"body", b"k", 1300, W).unwrap();
        // The timestamp is inside the MAC: moving it forward breaks the signature.
        let moved = h.replacen("t=1000", "t=1200", 1);
        assert_eq!(
            verify_signature(&moved, b"body", b"k", 1200, W),
            Err(SignatureError::Mismatch)
        );
        for bad in [
            "",
            "t=1000",
            "v1=00",
            "t=-5,v1=00",
            "t=1000,t=1000,v1=00",
            "t=1000,v1=xyz",
            "garbage",
        ] {
            assert!(
                matches!(
                    verify_signature(bad, b"body", b"k", 1000, W),
                    Err(SignatureError::Malformed(_))
                ),
                "{bad}"
            );
        }
    }
}
