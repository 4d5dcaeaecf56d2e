//! Bodies the controller signs with its Ed25519 grant-signing key.
//!
//! A [`Signed`] carries the postcard bytes of the body and a signature over a per-type
//! context string followed by those bytes. The agent verifies the signature before decoding,
//! so the bytes it trusts are exactly the bytes the controller signed; the context keeps a
//! signature over one kind of body from being replayed as another.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use jitgate_common::{MaxConnections, Port, ProtectedPort, Protocol, SourcePrefix};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::marker::PhantomData;
use uuid::Uuid;

/// A body type that can be signed.
pub trait Body: Serialize + DeserializeOwned {
    /// Domain separation: prefixed to the bytes before signing.
    const CONTEXT: &'static [u8];
    /// The agent the body is for.
    fn agent_id(&self) -> Uuid;
    /// The sequence number: for grants and revocations the controller's outbox seq (one
    /// increasing sequence); for policies a separate per-VM policy version (docs/protocol.md).
    fn seq(&self) -> u64;
}

/// A grant for one agent: open (protocol, port, source) until the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantBody {
    pub agent_id: Uuid,
    pub grant_id: Uuid,
    pub seq: u64,
    pub request_id: String,
    pub protocol: Protocol,
    pub port: Port,
    pub source: SourcePrefix,
    pub start_unix_ms: i64,
    pub end_unix_ms: i64,
    /// Time left at signing, in ms. The agent ends the grant at the EARLIER of `end_unix_ms`
    /// (by its wall clock) and receipt + `remaining_ms` (by its boot clock): no wall clock,
    /// on either side, can lengthen a grant by more than the transit delay.
    pub remaining_ms: u64,
    pub requester: String,
    pub justification: String,
}

/// A booked grant: `grant` opens at its start, not at receipt.
///
/// A separate body type (own [`Body::CONTEXT`], own message) rather than a new field of
/// [`GrantBody`]: postcard ignores what an older decoder does not know, so an older agent
/// would read an appended field as an ordinary grant and open it at once. The controller
/// sends this only to agents whose `HelloV2` announces
/// [`LEVEL_SCHEDULED_GRANTS`](crate::LEVEL_SCHEDULED_GRANTS) or later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledGrantBody {
    /// The grant; its `start_unix_ms` is the booked start and `remaining_ms` the time to its
    /// end at signing.
    pub grant: GrantBody,
    /// Time to the start at signing, in ms. The agent opens at the LATER of
    /// `grant.start_unix_ms` (by its wall clock) and receipt + `starts_in_ms` (by its boot
    /// clock): no wall clock can open a booked grant early.
    pub starts_in_ms: u64,
}

/// A grant that admits at most `max_connections` new connections, open at receipt
/// (`starts_in_ms` absent) or booked (`starts_in_ms` as in [`ScheduledGrantBody`]).
///
/// Its own body type and message for the same reason as [`ScheduledGrantBody`]: an older
/// agent would read an appended field of [`GrantBody`] as an ordinary, unlimited grant. The
/// controller sends this only to agents whose `HelloV2` announces
/// [`LEVEL_CONNECTION_LIMITS`](crate::LEVEL_CONNECTION_LIMITS) or later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitedGrantBody {
    pub grant: GrantBody,
    pub max_connections: MaxConnections,
    /// For a booked grant, the time to its start at signing in ms (see
    /// [`ScheduledGrantBody::starts_in_ms`]); absent: it opens at receipt.
    pub starts_in_ms: Option<u64>,
}

/// Ends a grant now (revocation or supersession).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeBody {
    pub agent_id: Uuid,
    pub grant_id: Uuid,
    pub seq: u64,
    /// `UserRequested`, `NewerRequestInitiated`, ...
    pub reason: String,
}

/// The VM's effective JIT policy: its protected set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyBody {
    pub agent_id: Uuid,
    pub seq: u64,
    pub ports: Vec<ProtectedPort>,
    pub issued_unix_ms: i64,
}

impl Body for GrantBody {
    const CONTEXT: &'static [u8] = b"jitgate grant v1\0";
    fn agent_id(&self) -> Uuid {
        self.agent_id
    }
    fn seq(&self) -> u64 {
        self.seq
    }
}

impl Body for ScheduledGrantBody {
    const CONTEXT: &'static [u8] = b"jitgate scheduled grant v1\0";
    fn agent_id(&self) -> Uuid {
        self.grant.agent_id
    }
    fn seq(&self) -> u64 {
        self.grant.seq
    }
}

impl Body for LimitedGrantBody {
    const CONTEXT: &'static [u8] = b"jitgate limited grant v1\0";
    fn agent_id(&self) -> Uuid {
        self.grant.agent_id
    }
    fn seq(&self) -> u64 {
        self.grant.seq
    }
}

impl Body for RevokeBody {
    const CONTEXT: &'static [u8] = b"jitgate revoke v1\0";
    fn agent_id(&self) -> Uuid {
        self.agent_id
    }
    fn seq(&self) -> u64 {
        self.seq
    }
}

impl Body for PolicyBody {
    const CONTEXT: &'static [u8] = b"jitgate policy v1\0";
    fn agent_id(&self) -> Uuid {
        self.agent_id
    }
    fn seq(&self) -> u64 {
        self.seq
    }
}

/// Signed bytes of a body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Signed<T: Body> {
    pub body: Vec<u8>,
    pub signature: Vec<u8>,
    #[serde(skip)]
    _t: PhantomData<T>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("bad signature (not signed by the pinned controller key, or altered)")]
    Signature,
    #[error("signed body does not decode: {0}")]
    Decode(String),
    #[error("signed for agent {0}, not this one")]
    WrongAgent(Uuid),
}

fn message<T: Body>(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(T::CONTEXT.len() + body.len());
    m.extend_from_slice(T::CONTEXT);
    m.extend_from_slice(body);
    m
}

impl<T: Body> Signed<T> {
    pub fn sign(body: &T, key: &SigningKey) -> Result<Self, postcard::Error> {
        let bytes = postcard::to_allocvec(body)?;
        let sig = key.sign(&message::<T>(&bytes));
        Ok(Signed {
            body: bytes,
            signature: sig.to_bytes().to_vec(),
            _t: PhantomData,
        })
    }

    /// Verifies the signature over the exact bytes, then decodes them, then checks that the
    /// body is for `agent`.
    pub fn verify(&self, key: &VerifyingKey, agent: Uuid) -> Result<T, VerifyError> {
        let body = self.open(key)?;
        if body.agent_id() != agent {
            return Err(VerifyError::WrongAgent(body.agent_id()));
        }
        Ok(body)
    }

    /// Verifies and decodes a body for every agent (a key rotation's, whose agent id is nil).
    pub fn verify_broadcast(&self, key: &VerifyingKey) -> Result<T, VerifyError> {
        self.verify(key, Uuid::nil())
    }

    /// Verifies with the first of `keys` that the signature verifies with.
    pub fn verify_any<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a VerifyingKey>,
        agent: Uuid,
    ) -> Result<T, VerifyError> {
        let mut last = VerifyError::Signature;
        for k in keys {
            match self.verify(k, agent) {
                Err(VerifyError::Signature) => {}
                Err(e) => last = e,
                Ok(b) => return Ok(b),
            }
        }
        Err(last)
    }

    /// The body decoded WITHOUT verifying: only to name what was refused in an answer,
    /// never to act on.
    pub fn unverified(&self) -> Option<T> {
        postcard::from_bytes(&self.body).ok()
    }

    /// The signature over the exact bytes, then the decoding (no trailing bytes).
    fn open(&self, key: &VerifyingKey) -> Result<T, VerifyError> {
        let sig =
            <[u8; 64]>::try_from(self.signature.as_slice()).map_err(|_| VerifyError::Signature)?;
        key.verify(&message::<T>(&self.body), &Signature::from_bytes(&sig))
            .map_err(|_| VerifyError::Signature)?;
        let (body, rest): (T, _) = postcard::take_from_bytes(&self.body)
            .map_err(|e| VerifyError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(VerifyError::Decode("trailing bytes".into()));
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn grant(agent: Uuid) -> GrantBody {
        GrantBody {
            agent_id: agent,
            grant_id: Uuid::from_bytes([7; 16]),
            seq: 3,
            request_id: "r1".into(),
            protocol: Protocol::Tcp,
            port: Port::new(22).unwrap(),
            source: "203.0.113.0/24".parse().unwrap(),
            start_unix_ms: 1,
            end_unix_ms: 2,
            remaining_ms: 1,
            requester: "alice".into(),
            justification: "INC-1".into(),
        }
    }

    #[test]
    fn sign_verify_and_every_rejection() {
        let agent = Uuid::from_bytes([1; 16]);
        let k = key(1);
        let s = Signed::sign(&grant(agent), &k).unwrap();
        assert_eq!(s.verify(&k.verifying_key(), agent).unwrap(), grant(agent));
        // Another key.
        assert_eq!(
            s.verify(&key(2).verifying_key(), agent),
            Err(VerifyError::Signature)
        );
        // Another agent.
        assert!(matches!(
            s.verify(&k.verifying_key(), Uuid::nil()),
            Err(VerifyError::WrongAgent(_))
        ));
        // Every single tampered byte of the body or signature.
        for i in 0..s.body.len() + s.signature.len() {
            let mut t = s.clone();
            if i < t.body.len() {
                t.body[i] ^= 0x01;
            } else {
                t.signature[i - s.body.len()] ^= 0x01;
            }
            assert_eq!(
                t.verify(&k.verifying_key(), agent),
                Err(VerifyError::Signature),
                "byte {i}"
            );
        }
        // A grant signature does not verify as a revocation (domain separation).
        let as_revoke: Signed<RevokeBody> = Signed {
            body: s.body.clone(),
            signature: s.signature.clone(),
            _t: PhantomData,
        };
        assert_eq!(
            as_revoke.verify(&k.verifying_key(), agent),
            Err(VerifyError::Signature)
        );
    }

    fn booked(agent: Uuid) -> ScheduledGrantBody {
        ScheduledGrantBody {
            grant: grant(agent),
            starts_in_ms: 60_000,
        }
    }

    #[test]
    fn scheduled_grant_has_its_own_context() {
        let contexts = [
            GrantBody::CONTEXT,
            ScheduledGrantBody::CONTEXT,
            LimitedGrantBody::CONTEXT,
            RevokeBody::CONTEXT,
            PolicyBody::CONTEXT,
        ];
        for (i, a) in contexts.iter().enumerate() {
            for b in &contexts[i + 1..] {
                assert_ne!(a, b);
                // Neither is a prefix of the other (each ends in NUL).
                assert!(!a.starts_with(b) && !b.starts_with(a));
            }
        }
    }

    #[test]
    fn grant_and_scheduled_grant_signatures_do_not_cross() {
        let agent = Uuid::from_bytes([1; 16]);
        let k = key(1);
        let vk = k.verifying_key();
        let s = Signed::sign(&booked(agent), &k).unwrap();
        assert_eq!(s.verify(&vk, agent).unwrap(), booked(agent));
        // A grant's signature does not verify as a booking, even over the same bytes.
        let g = Signed::sign(&grant(agent), &k).unwrap();
        let as_booked: Signed<ScheduledGrantBody> = Signed {
            body: g.body.clone(),
            signature: g.signature.clone(),
            _t: PhantomData,
        };
        assert_eq!(as_booked.verify(&vk, agent), Err(VerifyError::Signature));
        // Nor a booking's as a grant (it would open at once).
        let as_grant: Signed<GrantBody> = Signed {
            body: s.body.clone(),
            signature: s.signature.clone(),
            _t: PhantomData,
        };
        assert_eq!(as_grant.verify(&vk, agent), Err(VerifyError::Signature));
        // The booking's agent id is the inner grant's.
        assert!(matches!(
            s.verify(&vk, Uuid::nil()),
            Err(VerifyError::WrongAgent(_))
        ));
    }

    fn limited(agent: Uuid, starts_in_ms: Option<u64>) -> LimitedGrantBody {
        LimitedGrantBody {
            grant: grant(agent),
            max_connections: MaxConnections::ONE,
            starts_in_ms,
        }
    }

    /// A limited grant round-trips with its limit, and no signature crosses between it and
    /// an unlimited grant or a booking: neither can be presented as the other.
    #[test]
    fn limited_grant_signatures_do_not_cross() {
        let agent = Uuid::from_bytes([1; 16]);
        let k = key(1);
        let vk = k.verifying_key();
        for start in [None, Some(60_000)] {
            let s = Signed::sign(&limited(agent, start), &k).unwrap();
            assert_eq!(s.verify(&vk, agent).unwrap(), limited(agent, start));
            let as_grant: Signed<GrantBody> = Signed {
                body: s.body.clone(),
                signature: s.signature.clone(),
                _t: PhantomData,
            };
            assert_eq!(as_grant.verify(&vk, agent), Err(VerifyError::Signature));
            let as_booked: Signed<ScheduledGrantBody> = Signed {
                body: s.body.clone(),
                signature: s.signature.clone(),
                _t: PhantomData,
            };
            assert_eq!(as_booked.verify(&vk, agent), Err(VerifyError::Signature));
        }
        let g = Signed::sign(&grant(agent), &k).unwrap();
        let as_limited: Signed<LimitedGrantBody> = Signed {
            body: g.body,
            signature: g.signature,
            _t: PhantomData,
        };
        assert_eq!(as_limited.verify(&vk, agent), Err(VerifyError::Signature));
    }

    /// A limit of 0 never decodes, even validly signed bytes (postcard: a u32 varint).
    #[test]
    fn a_zero_limit_does_not_decode() {
        let agent = Uuid::from_bytes([1; 16]);
        let k = key(1);
        let mut bytes = postcard::to_allocvec(&grant(agent)).unwrap();
        bytes.push(0); // max_connections = 0
        bytes.push(0); // starts_in_ms = None
        let sig = k.sign(&message::<LimitedGrantBody>(&bytes));
        let s: Signed<LimitedGrantBody> = Signed {
            body: bytes,
            signature: sig.to_bytes().to_vec(),
            _t: PhantomData,
        };
        assert!(matches!(
            s.verify(&k.verifying_key(), agent),
            Err(VerifyError::Decode(_))
        ));
    }
}
