//! Tamper evidence of the controller's activity log, shared by the controller (which writes,
//! signs and verifies it) and the `jit` CLI (which verifies an export offline).
//!
//! A hash chain alone can be recomputed by anyone who can write the database. So the
//! controller also signs its chain head from time to time (a [`Checkpoint`]: key id, seq,
//! head hash, time) with its Ed25519 key under a dedicated context, and verification checks
//! that every signed (seq, hash) is still on the chain: rewriting an entry and recomputing
//! every later hash breaks the match with the first checkpoint at or after that entry.
//! Entries after the last checkpoint are reported as not yet covered.

use std::collections::BTreeMap;

use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev_hash` of entry 1.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain separation: a checkpoint signature can never be taken for a grant, revocation or
/// policy signature made with the same key (those have their own contexts), nor the reverse.
pub const CHECKPOINT_CONTEXT: &[u8] = b"jitgate audit checkpoint v1\0";

/// The `format` of an export bundle.
pub const EXPORT_FORMAT: &str = "jitgate-activity-export/1";

/// What an entry's hash covers, in this order; `details` as the exact stored JSON text.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HashInput<'a> {
    pub seq: i64,
    pub time_ms: i64,
    pub operation: &'a str,
    pub resource_type: &'a str,
    pub resource_group: &'a str,
    pub vm: &'a str,
    pub caller: &'a str,
    pub caller_address: &'a str,
    pub outcome: &'a str,
    pub request_id: &'a str,
    pub details: &'a str,
    pub prev_hash: &'a str,
}

/// SHA-256 (hex) of the entry's fields as compact JSON.
pub fn entry_hash(h: &HashInput<'_>) -> String {
    let json = serde_json::to_vec(h).unwrap_or_default();
    hex::encode(Sha256::digest(&json))
}

/// One activity log entry as the API shows and exports it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
// Tolerant of fields a newer controller adds: an older `jit` keeps reading.
#[serde(rename_all = "camelCase")]
pub struct ActivityEntry {
    pub seq: i64,
    pub time_utc: String,
    pub operation: String,
    pub resource_type: String,
    pub resource_group: String,
    pub virtual_machine: String,
    pub caller: String,
    pub caller_address: String,
    pub outcome: String,
    pub request_id: String,
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

impl ActivityEntry {
    /// Recomputes the entry's hash from its exported fields (`details` re-serialised
    /// compactly, which reproduces the stored text; `timeUtc` carries milliseconds).
    pub fn computed_hash(&self) -> Result<String, String> {
        let time = time::OffsetDateTime::parse(
            &self.time_utc,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|e| format!("entry {}: time {:?}: {e}", self.seq, self.time_utc))?;
        let details = serde_json::to_string(&self.details)
            .map_err(|e| format!("entry {}: details: {e}", self.seq))?;
        Ok(entry_hash(&HashInput {
            seq: self.seq,
            time_ms: (time.unix_timestamp_nanos() / 1_000_000) as i64,
            operation: &self.operation,
            resource_type: &self.resource_type,
            resource_group: &self.resource_group,
            vm: &self.virtual_machine,
            caller: &self.caller,
            caller_address: &self.caller_address,
            outcome: &self.outcome,
            request_id: &self.request_id,
            details: &details,
            prev_hash: &self.prev_hash,
        }))
    }
}

/// The id of a checkpoint key: the first 16 hex digits of SHA-256 of the raw public key.
pub fn key_id(vk: &VerifyingKey) -> String {
    let mut s = hex::encode(Sha256::digest(vk.as_bytes()));
    s.truncate(16);
    s
}

/// Parses an Ed25519 public key in SPKI PEM (the controller's `keys/grant-signing.pub`).
pub fn parse_public_key(pem: &str) -> Result<VerifyingKey, String> {
    VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| format!("public key: {e}"))
}

/// The controller's signature over its chain head at one point in time.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
// Tolerant of fields a newer controller adds: an older `jit` keeps reading.
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// Which key signed (see [`key_id`]).
    pub key_id: String,
    /// The chain head's seq: the number of entries covered.
    pub seq: i64,
    /// The hash of entry `seq`.
    pub hash: String,
    /// When it was signed (Unix ms).
    pub time_ms: i64,
    /// Ed25519 signature (hex) over [`CHECKPOINT_CONTEXT`] followed by [`Checkpoint::message`].
    pub signature: String,
}

impl Checkpoint {
    /// The signed text after the context: `key_id \n seq \n hash \n time_ms`.
    pub fn message(key_id: &str, seq: i64, hash: &str, time_ms: i64) -> Vec<u8> {
        let mut m = CHECKPOINT_CONTEXT.to_vec();
        m.extend_from_slice(format!("{key_id}\n{seq}\n{hash}\n{time_ms}").as_bytes());
        m
    }

    pub fn sign(sk: &SigningKey, seq: i64, hash: &str, time_ms: i64) -> Checkpoint {
        let key_id = key_id(&sk.verifying_key());
        let sig = sk.sign(&Self::message(&key_id, seq, hash, time_ms));
        Checkpoint {
            key_id,
            seq,
            hash: hash.into(),
            time_ms,
            signature: hex::encode(sig.to_bytes()),
        }
    }

    /// Checks the signature with the one of `keys` its key id names (several: a log whose
    /// checkpoint key was replaced, verified with the old public key and the new).
    pub fn verify_any(&self, keys: &[VerifyingKey]) -> Result<(), String> {
        match keys {
            [one] => self.verify(one),
            _ => match keys.iter().find(|k| key_id(k) == self.key_id) {
                Some(k) => self.verify(k),
                None => Err(format!(
                    "checkpoint at entry {} names key {}, none of the trusted keys ({})",
                    self.seq,
                    self.key_id,
                    keys.iter().map(key_id).collect::<Vec<_>>().join(", ")
                )),
            },
        }
    }

    /// Checks the key id and the signature.
    pub fn verify(&self, vk: &VerifyingKey) -> Result<(), String> {
        let expect = key_id(vk);
        if self.key_id != expect {
            return Err(format!(
                "checkpoint at entry {} names key {}, not the controller key {expect}",
                self.seq, self.key_id
            ));
        }
        let bad = || {
            format!(
                "checkpoint at entry {}: bad signature (altered, or not signed by key {expect})",
                self.seq
            )
        };
        let raw = hex::decode(&self.signature).map_err(|_| bad())?;
        let sig = Signature::from_slice(&raw).map_err(|_| bad())?;
        vk.verify(
            &Self::message(&self.key_id, self.seq, &self.hash, self.time_ms),
            &sig,
        )
        .map_err(|_| bad())
    }
}

/// Why a chain failed verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The first entry that fails (for a checkpoint mismatch: the checkpoint's entry).
    pub seq: i64,
    /// The checkpoint involved, if any (its seq).
    pub checkpoint: Option<i64>,
    pub problem: String,
}

/// What a verified chain looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub entries: i64,
    pub head_hash: String,
    pub checkpoints: i64,
    /// The seq of the last checkpoint (0 if none).
    pub covered_seq: i64,
}

/// Walks a chain entry by entry from seq 1, checking each link, each recomputed hash, and
/// each checkpoint's (seq, hash) as the walk passes it.
pub struct ChainWalk {
    prev: String,
    expect: i64,
    /// Checkpoints not yet reached, by seq (several may share one seq).
    pending: BTreeMap<i64, Vec<Checkpoint>>,
    checkpoints: i64,
    covered: i64,
}

impl ChainWalk {
    /// Checks every checkpoint's signature with the key of `keys` it names first.
    pub fn new(checkpoints: Vec<Checkpoint>, keys: &[VerifyingKey]) -> Result<ChainWalk, Failure> {
        let mut pending: BTreeMap<i64, Vec<Checkpoint>> = BTreeMap::new();
        let n = checkpoints.len() as i64;
        for c in checkpoints {
            c.verify_any(keys).map_err(|problem| Failure {
                seq: c.seq,
                checkpoint: Some(c.seq),
                problem,
            })?;
            pending.entry(c.seq).or_default().push(c);
        }
        Ok(ChainWalk {
            pending,
            checkpoints: n,
            ..ChainWalk::unsigned()
        })
    }

    /// A walk that continues after entry `last_seq`, whose hash is `last_hash`: an earlier
    /// walk verified entries 1..=`last_seq` and the checkpoints up to `covered`. Of
    /// `checkpoints`, those above `last_seq` are checked (signature first).
    pub fn resume(
        last_seq: i64,
        last_hash: &str,
        covered: i64,
        checkpoints: Vec<Checkpoint>,
        keys: &[VerifyingKey],
    ) -> Result<ChainWalk, Failure> {
        let later = checkpoints
            .into_iter()
            .filter(|c| c.seq > last_seq)
            .collect();
        let mut w = ChainWalk::new(later, keys)?;
        w.prev = last_hash.into();
        w.expect = last_seq + 1;
        w.covered = covered;
        Ok(w)
    }

    /// The last entry walked (seq, hash) and the entry the last matched checkpoint covers.
    pub fn position(&self) -> (i64, &str, i64) {
        (self.expect - 1, &self.prev, self.covered)
    }

    /// Checkpoints matched so far (of those this walk was given).
    pub fn matched(&self) -> i64 {
        self.checkpoints - self.pending.values().map(|v| v.len() as i64).sum::<i64>()
    }

    /// A walk with no checkpoints (the chain alone).
    pub fn unsigned() -> ChainWalk {
        ChainWalk {
            prev: GENESIS_HASH.into(),
            expect: 1,
            pending: BTreeMap::new(),
            checkpoints: 0,
            covered: 0,
        }
    }

    /// The next entry: its seq, stored `prev_hash` and `hash`, and the hash recomputed from
    /// its content.
    pub fn push(
        &mut self,
        seq: i64,
        stored_prev: &str,
        stored_hash: &str,
        computed: &str,
    ) -> Result<(), Failure> {
        let fail = |seq: i64, problem: String| Failure {
            seq,
            checkpoint: None,
            problem,
        };
        if seq != self.expect {
            return Err(fail(
                self.expect,
                format!("entry {} is missing", self.expect),
            ));
        }
        if stored_prev != self.prev {
            return Err(fail(
                seq,
                format!("entry {seq} does not chain to entry {}", seq - 1),
            ));
        }
        if computed != stored_hash {
            return Err(fail(
                seq,
                format!("entry {seq} was altered: its content does not match its hash"),
            ));
        }
        if let Some(cps) = self.pending.remove(&seq) {
            if let Some(c) = cps.iter().find(|c| c.hash != stored_hash) {
                return Err(Failure {
                    seq,
                    checkpoint: Some(c.seq),
                    problem: format!(
                        "entry {seq} does not match the checkpoint signed for it: the log was \
                         rewritten between entries {} and {seq} and the later hashes recomputed",
                        self.covered + 1
                    ),
                });
            }
            self.covered = seq;
        }
        self.prev = stored_hash.into();
        self.expect += 1;
        Ok(())
    }

    /// Ends the walk: no checkpoint may lie beyond the last entry.
    pub fn finish(self) -> Result<Summary, Failure> {
        let entries = self.expect - 1;
        if let Some((&seq, _)) = self.pending.iter().next() {
            return Err(Failure {
                seq: entries + 1,
                checkpoint: Some(seq),
                problem: format!(
                    "a checkpoint covers {seq} entries but the log has {entries} (entries removed)"
                ),
            });
        }
        Ok(Summary {
            entries,
            head_hash: self.prev,
            checkpoints: self.checkpoints,
            covered_seq: self.covered,
        })
    }

    /// Entries walked so far.
    pub fn entries(&self) -> i64 {
        self.expect - 1
    }
}

/// Checks the anchor of a log that starts after entry `seq` (pruned before it): a checkpoint
/// at `seq` signed by one of `keys` whose hash is `hash`, the hash the first remaining entry
/// chains to.
pub fn anchor(
    checkpoints: &[Checkpoint],
    seq: i64,
    hash: &str,
    keys: &[VerifyingKey],
) -> Result<(), Failure> {
    let fail = |problem: String| Failure {
        seq: seq + 1,
        checkpoint: Some(seq),
        problem,
    };
    let mut found = false;
    for c in checkpoints.iter().filter(|c| c.seq == seq) {
        c.verify_any(keys).map_err(&fail)?;
        if c.hash != hash {
            return Err(fail(format!(
                "entry {} does not chain to the signed checkpoint at entry {seq}",
                seq + 1
            )));
        }
        found = true;
    }
    if !found {
        return Err(fail(format!(
            "the log starts at entry {} but no signed checkpoint covers entry {seq}: entries \
             1..={seq} are missing (verify with the archive of the pruned range)",
            seq + 1
        )));
    }
    Ok(())
}

mod agent;
mod export;

pub use agent::*;
pub use export::{Export, Report};

#[cfg(test)]
mod tests;
