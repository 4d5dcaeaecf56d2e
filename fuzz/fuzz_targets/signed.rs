//! Signed grant, revocation and policy bodies as the agent verifies them (proto/src/signed.rs),
//! against a fixed controller key pair.
//!
//! Input: one byte choosing the body type, then the postcard encoding of a `Signed<T>` (body
//! bytes and signature, as inside a `ControllerMsg`). The seeds are messages signed with the
//! fixed key (fuzz/seeds/signed, written by proto/tests/fuzz_seeds.rs); libFuzzer mutates them.
//!
//! Properties: verification never panics; a message is accepted only if it is exactly what
//! the key signs for the decoded body (Ed25519 signing is deterministic, so any other accepted
//! body bytes or signature would be a forgery or a malleability); it is refused as any other
//! body type (domain separation), and refused for another agent.
#![no_main]

use ed25519_dalek::SigningKey;
use jitgate_proto::signed::Body;
use jitgate_proto::{GrantBody, PolicyBody, RevokeBody, Signed, VerifyError};
use libfuzzer_sys::fuzz_target;
use std::fmt::Debug;
use uuid::Uuid;

/// The fixed key pair and agent of the seeds (the same constants as proto/tests/fuzz_seeds.rs).
const KEY_SEED: [u8; 32] = [0x5a; 32];
const AGENT: Uuid = Uuid::from_bytes([0xa1; 16]);

/// The same bytes and signature as another body type.
fn retyped<A: Body, B: Body>(s: &Signed<A>) -> Signed<B> {
    let bytes = postcard::to_allocvec(s).expect("encodes");
    postcard::from_bytes(&bytes).expect("the same layout")
}

fn check<T: Body + PartialEq + Debug, O1: Body, O2: Body>(data: &[u8]) {
    let Ok(s) = postcard::from_bytes::<Signed<T>>(data) else {
        return;
    };
    let key = SigningKey::from_bytes(&KEY_SEED);
    let vk = key.verifying_key();
    match s.verify(&vk, AGENT) {
        Ok(body) => {
            assert_eq!(body.agent_id(), AGENT);
            let canonical = Signed::sign(&body, &key).expect("a verified body re-encodes");
            assert_eq!(
                (&s.body, &s.signature),
                (&canonical.body, &canonical.signature),
                "accepted bytes or signature that the key did not produce"
            );
            assert_eq!(
                s.verify(&vk, Uuid::from_bytes([0xb2; 16])),
                Err(VerifyError::WrongAgent(AGENT))
            );
            assert_eq!(
                retyped::<T, O1>(&s).verify(&vk, AGENT).err(),
                Some(VerifyError::Signature)
            );
            assert_eq!(
                retyped::<T, O2>(&s).verify(&vk, AGENT).err(),
                Some(VerifyError::Signature)
            );
        }
        Err(VerifyError::WrongAgent(a)) => {
            // Signed by the key, for another agent: still exactly what the key signs.
            assert_ne!(a, AGENT);
            let body: T = postcard::from_bytes(&s.body).expect("verified bytes decode");
            let canonical = Signed::sign(&body, &key).expect("re-encodes");
            assert_eq!(
                (&s.body, &s.signature),
                (&canonical.body, &canonical.signature)
            );
        }
        // The signature is checked first: bytes that verify but do not decode were never
        // signed by the key.
        Err(VerifyError::Decode(e)) => panic!("a signature over undecodable bytes verified: {e}"),
        Err(VerifyError::Signature) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => check::<GrantBody, RevokeBody, PolicyBody>(rest),
        1 => check::<RevokeBody, GrantBody, PolicyBody>(rest),
        _ => check::<PolicyBody, GrantBody, RevokeBody>(rest),
    }
});
