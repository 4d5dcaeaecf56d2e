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

/// An export for offline verification: the whole chain, its checkpoints and the key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Export {
    /// [`EXPORT_FORMAT`].
    pub format: String,
    pub key_id: String,
    /// The controller's Ed25519 public key (SPKI PEM).
    pub public_key_pem: String,
    pub exported_time_ms: i64,
    pub entries: Vec<ActivityEntry>,
    pub checkpoints: Vec<Checkpoint>,
}

/// The outcome of a verification (at the controller, or of an export offline).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
// Tolerant of fields a newer controller adds: an older `jit` keeps reading.
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub ok: bool,
    /// Entries verified (up to the failure, if any).
    pub entries: i64,
    /// The head the log claims: the controller's chain head, or an export's last entry.
    pub head_seq: i64,
    pub head_hash: String,
    /// The first entry that fails, if any (for a checkpoint mismatch: the checkpoint's entry).
    pub first_bad_seq: Option<i64>,
    /// The checkpoint that fails (its seq), if any.
    pub bad_checkpoint_seq: Option<i64>,
    pub problem: Option<String>,
    /// Signed checkpoints checked.
    pub checkpoints: i64,
    /// Entries 1..=coveredSeq are under a signed checkpoint.
    pub covered_seq: i64,
    /// Entries after the last checkpoint: chained, but not yet covered by a signature.
    pub uncovered: i64,
    /// The checkpoint key's id (None when no key was loaded).
    pub key_id: Option<String>,
}

impl Report {
    /// A report not yet decided, for a log whose head is (`head_seq`, `head_hash`).
    pub fn new(
        head_seq: i64,
        head_hash: &str,
        checkpoints: usize,
        key_id: Option<String>,
    ) -> Report {
        Report {
            ok: false,
            entries: 0,
            head_seq,
            head_hash: head_hash.into(),
            first_bad_seq: None,
            bad_checkpoint_seq: None,
            problem: None,
            checkpoints: checkpoints as i64,
            covered_seq: 0,
            uncovered: 0,
            key_id,
        }
    }

    /// Failed after `entries` good entries.
    pub fn fail(mut self, f: Failure, entries: i64) -> Report {
        self.entries = entries;
        self.first_bad_seq = Some(f.seq);
        self.bad_checkpoint_seq = f.checkpoint;
        self.problem = Some(f.problem);
        self
    }

    /// Finishes a walk: a failure, a head that disagrees with the walk (entries removed from
    /// the end), or success.
    pub fn finish(self, walk: ChainWalk) -> Report {
        let s = match walk.finish() {
            Ok(s) => s,
            Err(f) => {
                let n = f.seq - 1;
                return self.fail(f, n);
            }
        };
        if s.entries != self.head_seq || s.head_hash != self.head_hash {
            let f = Failure {
                seq: s.entries + 1,
                checkpoint: None,
                problem: format!(
                    "the chain head says {} entries but {} were found (entries removed from the end?)",
                    self.head_seq, s.entries
                ),
            };
            return self.fail(f, s.entries);
        }
        Report {
            ok: true,
            entries: s.entries,
            covered_seq: s.covered_seq,
            uncovered: s.entries - s.covered_seq,
            ..self
        }
    }
}

impl Export {
    /// Verifies the bundle from its own content, with `pinned` (if given) as the only key
    /// trusted; without it, the bundle's key is used and the report names its id so the
    /// auditor can compare it with the controller's.
    pub fn verify(&self, pinned: Option<&VerifyingKey>) -> Result<Report, String> {
        if self.format != EXPORT_FORMAT {
            return Err(format!("format {:?} is not {EXPORT_FORMAT:?}", self.format));
        }
        let own = parse_public_key(&self.public_key_pem)?;
        if let Some(p) = pinned
            && p != &own
        {
            return Err(format!(
                "the export's key {} is not the pinned key {}",
                key_id(&own),
                key_id(p)
            ));
        }
        Ok(self.verify_with(std::slice::from_ref(&own), &own))
    }

    /// Verifies the bundle with `pinned` trusted (not empty): every checkpoint under the one
    /// it names, and the bundle's own key one of them.
    pub fn verify_trusting(&self, pinned: &[VerifyingKey]) -> Result<Report, String> {
        if self.format != EXPORT_FORMAT {
            return Err(format!("format {:?} is not {EXPORT_FORMAT:?}", self.format));
        }
        let own = parse_public_key(&self.public_key_pem)?;
        if !pinned.contains(&own) {
            return Err(format!(
                "the export's key {} is not a pinned key ({})",
                key_id(&own),
                pinned.iter().map(key_id).collect::<Vec<_>>().join(", ")
            ));
        }
        Ok(self.verify_with(pinned, &own))
    }

    /// Verifies the parts of one log, oldest first (see [`Export::join`]). With `pinned`
    /// (not empty), those keys are trusted, every checkpoint is checked with the one it
    /// names, and every part's own key must be one of them (a log whose checkpoint key was
    /// replaced: checkpoints by the old key and by the new, in one file or across an
    /// archive and the rest). Without, the parts' own key is trusted, and must be one.
    pub fn verify_parts(parts: Vec<Export>, pinned: &[VerifyingKey]) -> Result<Report, String> {
        let mut keys: Vec<VerifyingKey> = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            if p.format != EXPORT_FORMAT {
                return Err(format!(
                    "part {}: format {:?} is not {EXPORT_FORMAT:?}",
                    i + 1,
                    p.format
                ));
            }
            let own =
                parse_public_key(&p.public_key_pem).map_err(|e| format!("part {}: {e}", i + 1))?;
            if !pinned.is_empty() && !pinned.contains(&own) {
                return Err(format!(
                    "part {}: its key {} is not a pinned key ({})",
                    i + 1,
                    key_id(&own),
                    pinned.iter().map(key_id).collect::<Vec<_>>().join(", ")
                ));
            }
            if !keys.contains(&own) {
                keys.push(own);
            }
        }
        if pinned.is_empty() && keys.len() > 1 {
            // Unpinned, a report names one key for the auditor to compare: never trust a
            // second one silently (a rewritten archive could bring a key of its own).
            return Err(format!(
                "the parts are signed by several keys ({}): name each one you trust with --key",
                keys.iter().map(key_id).collect::<Vec<_>>().join(", ")
            ));
        }
        let all = Export::join(parts)?;
        // The report names the key of the newest part (the controller's now).
        let newest = parse_public_key(&all.public_key_pem)?;
        let trusted = if pinned.is_empty() { &keys } else { pinned };
        Ok(all.verify_with(trusted, &newest))
    }

    /// The walk itself: the chain, and every checkpoint under the key of `keys` it names.
    fn verify_with(&self, keys: &[VerifyingKey], own: &VerifyingKey) -> Report {
        let (head_seq, head_hash) = self
            .entries
            .last()
            .map_or((0, GENESIS_HASH), |e| (e.seq, e.hash.as_str()));
        let report = Report::new(
            head_seq,
            head_hash,
            self.checkpoints.len(),
            Some(key_id(own)),
        );
        // An export of a pruned log (or an archive after the first) starts after entry
        // N: it is anchored by the signed checkpoint at N, which its first entry chains to.
        let start = match self.entries.first() {
            Some(first) if first.seq > 1 => {
                match anchor(&self.checkpoints, first.seq - 1, &first.prev_hash, keys) {
                    Ok(()) => ChainWalk::resume(
                        first.seq - 1,
                        &first.prev_hash,
                        first.seq - 1,
                        self.checkpoints.clone(),
                        keys,
                    ),
                    Err(f) => Err(f),
                }
            }
            _ => ChainWalk::new(self.checkpoints.clone(), keys),
        };
        let mut walk = match start {
            Ok(w) => w,
            Err(f) => return report.fail(f, 0),
        };
        for e in &self.entries {
            let pushed = e
                .computed_hash()
                .map_err(|problem| Failure {
                    seq: e.seq,
                    checkpoint: None,
                    problem,
                })
                .and_then(|h| walk.push(e.seq, &e.prev_hash, &e.hash, &h));
            if let Err(f) = pushed {
                let n = walk.entries();
                return report.fail(f, n);
            }
        }
        report.finish(walk)
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

impl Export {
    /// Joins the parts of one log, oldest first (the archives `jit-controller prune` wrote,
    /// then an export of what remains): each part must continue the one before it (its
    /// first entry right after the previous part's last, chained to its hash). The joined
    /// export, under the newest part's key, verifies as one chain (with every part's key,
    /// [`Export::verify_parts`], when the checkpoint key was replaced between them);
    /// checkpoints in several parts (an archive's last is the next part's anchor) count once.
    pub fn join(parts: Vec<Export>) -> Result<Export, String> {
        let mut it = parts.into_iter();
        let Some(mut all) = it.next() else {
            return Err("no export to verify".into());
        };
        for (i, p) in it.enumerate() {
            if p.format != all.format {
                return Err(format!(
                    "part {} is of another format ({:?}) than the first ({:?})",
                    i + 2,
                    p.format,
                    all.format
                ));
            }
            if let (Some(last), Some(first)) = (all.entries.last(), p.entries.first())
                && (first.seq != last.seq + 1 || first.prev_hash != last.hash)
            {
                return Err(format!(
                    "part {} does not continue the part before it: it starts at entry {}, \
                     the part before ends at entry {} (give the files oldest first)",
                    i + 2,
                    first.seq,
                    last.seq
                ));
            }
            all.exported_time_ms = p.exported_time_ms;
            all.key_id = p.key_id;
            all.public_key_pem = p.public_key_pem;
            all.entries.extend(p.entries);
            for c in p.checkpoints {
                if !all
                    .checkpoints
                    .iter()
                    .any(|x| x.seq == c.seq && x.key_id == c.key_id && x.signature == c.signature)
                {
                    all.checkpoints.push(c);
                }
            }
        }
        Ok(all)
    }
}

/// Domain separation for an agent's signature over its own audit chain head.
pub const AGENT_CHECKPOINT_CONTEXT: &[u8] = b"jitgate agent audit checkpoint v1\0";

/// The bytes an agent signs to vouch for its audit log up to `seq` (whose hash is `hash`):
/// the context, then `agent_id \n seq \n hash`.
pub fn agent_checkpoint_message(agent_id: &str, seq: u64, hash: &str) -> Vec<u8> {
    let mut m = AGENT_CHECKPOINT_CONTEXT.to_vec();
    m.extend_from_slice(format!("{agent_id}\n{seq}\n{hash}").as_bytes());
    m
}

/// Signs with the agent's enrolment key (ECDSA P-256, PKCS#8 PEM); the signature is hex
/// (ASN.1 DER, SHA-256).
pub fn agent_sign(key_pem: &str, message: &[u8]) -> Result<String, String> {
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject;
    let der = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("agent key: {e}"))?;
    let rng = ring::rand::SystemRandom::new();
    let kp = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        der.secret_pkcs8_der(),
        &rng,
    )
    .map_err(|e| format!("agent key: {e}"))?;
    let sig = kp
        .sign(&rng, message)
        .map_err(|e| format!("signing: {e}"))?;
    Ok(hex::encode(sig.as_ref()))
}

/// Checks an agent checkpoint signature against the agent's certificate (PEM).
pub fn agent_verify(cert_pem: &str, message: &[u8], signature_hex: &str) -> Result<(), String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| format!("agent certificate: {e}"))?;
    let cert =
        webpki::EndEntityCert::try_from(&der).map_err(|e| format!("agent certificate: {e}"))?;
    let sig = hex::decode(signature_hex).map_err(|_| "signature is not hex".to_string())?;
    cert.verify_signature(webpki::ring::ECDSA_P256_SHA256, message, &sig)
        .map_err(|_| "bad signature (altered, or not signed by this agent's key)".to_string())
}

/// The hash of an agent audit record: SHA-256 (hex) over `prev`, a newline, and the record's
/// JSON without its `hash` field, exactly as written.
pub fn agent_record_hash(prev: &str, body_json: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(body_json);
    hex::encode(h.finalize())
}

/// What verification needs from one agent audit line (`{...body, "hash": "..."}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentLine {
    pub seq: u64,
    pub prev: String,
    /// Unknown kinds (from a newer agent) are kept, never an error.
    pub kind: crate::AuditKind,
    pub signature: Option<String>,
    pub hash: String,
    /// The hash recomputed from the line's bytes.
    pub computed: String,
}

impl AgentLine {
    /// Parses a line as the agent wrote it: the body's JSON with `"hash"` as the last field.
    pub fn parse(line: &str) -> Result<AgentLine, String> {
        const KEY: &str = ",\"hash\":\"";
        let bad = || "not an agent audit record".to_string();
        let at = line.rfind(KEY).ok_or_else(bad)?;
        let hash = line[at + KEY.len()..]
            .strip_suffix("\"}")
            .ok_or_else(bad)?
            .to_string();
        let body = format!("{}}}", &line[..at]);
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|_| bad())?;
        let prev = v["prev"].as_str().ok_or_else(bad)?.to_string();
        Ok(AgentLine {
            seq: v["seq"].as_u64().ok_or_else(bad)?,
            kind: crate::AuditKind::from(v["kind"].as_str().unwrap_or_default()),
            signature: v["signature"].as_str().map(str::to_string),
            computed: agent_record_hash(&prev, body.as_bytes()),
            prev,
            hash,
        })
    }
}

/// Checks that `cert_pem` was issued by the CA in `ca_pem` for client authentication (an
/// agent certificate), so a certificate substituted in the database is refused.
pub fn agent_cert_issued_by(cert_pem: &str, ca_pem: &str) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, UnixTime};
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| format!("agent certificate: {e}"))?;
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| format!("CA: {e}"))?;
    let anchor = webpki::anchor_from_trusted_cert(&ca).map_err(|e| format!("CA: {e}"))?;
    let cert =
        webpki::EndEntityCert::try_from(&der).map_err(|e| format!("agent certificate: {e}"))?;
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| format!("agent certificate not issued by the controller CA: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<ActivityEntry> {
        let mut prev = GENESIS_HASH.to_string();
        let mut out = Vec::new();
        for seq in 1..=n {
            let mut e = ActivityEntry {
                seq,
                time_utc: "2026-11-27T02:00:00.123Z".into(),
                operation: "Initiate JIT Network Access".into(),
                resource_type: "VirtualMachine".into(),
                resource_group: "rg".into(),
                virtual_machine: "web1".into(),
                caller: "alice".into(),
                caller_address: "203.0.113.5".into(),
                outcome: "Succeeded".into(),
                request_id: format!("r{seq}"),
                details: serde_json::json!({"justification": "INC-1", "n": seq}),
                prev_hash: prev.clone(),
                hash: String::new(),
            };
            e.hash = e.computed_hash().expect("hash");
            prev = e.hash.clone();
            out.push(e);
        }
        out
    }

    fn export(sk: &SigningKey, entries: Vec<ActivityEntry>, at: &[i64]) -> Export {
        let checkpoints = at
            .iter()
            .map(|&s| Checkpoint::sign(sk, s, &entries[(s - 1) as usize].hash, 1))
            .collect();
        Export {
            format: EXPORT_FORMAT.into(),
            key_id: key_id(&sk.verifying_key()),
            public_key_pem: ed25519_dalek::pkcs8::EncodePublicKey::to_public_key_pem(
                &sk.verifying_key(),
                ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF,
            )
            .expect("pem"),
            exported_time_ms: 2,
            entries,
            checkpoints,
        }
    }

    fn key() -> SigningKey {
        SigningKey::generate(&mut rand::rngs::OsRng)
    }

    #[test]
    fn intact_export_verifies_and_reports_uncovered() {
        let sk = key();
        let r = export(&sk, chain(10), &[4, 8])
            .verify(Some(&sk.verifying_key()))
            .expect("verify");
        assert!(r.ok, "{r:?}");
        assert_eq!((r.entries, r.covered_seq, r.uncovered), (10, 8, 2));
    }

    #[test]
    fn rewritten_and_rechained_entry_breaks_the_next_checkpoint() {
        let sk = key();
        let mut entries = chain(10);
        entries[4].details = serde_json::json!({"justification": "INC-2", "n": 5});
        // The writer recomputes every later hash: the plain chain holds again.
        let mut prev = entries[3].hash.clone();
        for e in entries.iter_mut().skip(4) {
            e.prev_hash = prev.clone();
            e.hash = e.computed_hash().expect("hash");
            prev = e.hash.clone();
        }
        let mut x = export(&sk, chain(10), &[4, 8]);
        x.entries = entries;
        let r = x.verify(None).expect("verify");
        assert!(!r.ok);
        assert_eq!(r.bad_checkpoint_seq, Some(8), "{r:?}");
        assert!(
            r.problem
                .expect("problem")
                .contains("between entries 5 and 8")
        );
    }

    #[test]
    fn forged_checkpoint_or_other_key_is_refused() {
        let sk = key();
        let mut x = export(&sk, chain(5), &[3]);
        x.checkpoints[0].time_ms += 1;
        let r = x.verify(None).expect("verify");
        assert_eq!(r.bad_checkpoint_seq, Some(3));
        assert!(r.problem.expect("p").contains("bad signature"));
        let other = key();
        let x = export(&sk, chain(5), &[3]);
        assert!(x.verify(Some(&other.verifying_key())).is_err());
        // A checkpoint by another key under this key's id does not verify either.
        let mut x = export(&sk, chain(5), &[3]);
        let mut forged = Checkpoint::sign(&other, 3, &x.entries[2].hash, 1);
        forged.key_id = x.key_id.clone();
        x.checkpoints = vec![forged];
        assert!(!x.verify(None).expect("verify").ok);
    }

    /// A log whose checkpoint key was replaced: the archive under the old key, the rest
    /// under the new; the rest's anchor (the archive's last checkpoint) is the old key's.
    #[test]
    fn parts_under_two_keys_verify_with_both_pinned_only() {
        let (old, new) = (key(), key());
        let entries = chain(10);
        let archive = export(&old, entries[..6].to_vec(), &[3, 6]);
        let mut rest = export(&new, entries.clone(), &[9]);
        rest.entries.drain(..6);
        rest.checkpoints.push(archive.checkpoints[1].clone());
        let both = [old.verifying_key(), new.verifying_key()];
        let r = Export::verify_parts(vec![archive.clone(), rest.clone()], &both).expect("verify");
        assert!(r.ok, "{r:?}");
        assert_eq!((r.entries, r.covered_seq, r.checkpoints), (10, 9, 3));
        assert_eq!(r.key_id, Some(key_id(&new.verifying_key())));
        // Only the new key pinned: the archive's key is refused.
        let e = Export::verify_parts(vec![archive.clone(), rest.clone()], &[new.verifying_key()])
            .expect_err("the old key is not pinned");
        assert!(e.contains("part 1"), "{e}");
        // Nothing pinned: two keys are refused rather than trusted.
        let e = Export::verify_parts(vec![archive.clone(), rest.clone()], &[])
            .expect_err("several keys, none pinned");
        assert!(e.contains("several keys"), "{e}");
        // The joined log checked with one key alone fails at the other key's checkpoint.
        let joined = Export::join(vec![archive.clone(), rest.clone()]).expect("join");
        assert!(
            !joined
                .verify(Some(&new.verifying_key()))
                .expect("verify")
                .ok
        );
        // One export taken after the replacement holds checkpoints by both keys.
        let mut one = export(&new, entries.clone(), &[9]);
        one.checkpoints.extend(archive.checkpoints.iter().cloned());
        let r = Export::verify_parts(vec![one.clone()], &both).expect("verify");
        assert!(r.ok && r.checkpoints == 3, "{r:?}");
        let r = Export::verify_parts(vec![one], &[new.verifying_key()]).expect("verify");
        assert!(!r.ok, "the old key's checkpoints need the old key: {r:?}");
        // An archive entry rewritten and re-signed by a third key: refused even so.
        let mallory = key();
        let mut forged = export(&mallory, entries[..6].to_vec(), &[3, 6]);
        forged.entries[1].caller = "mallory".into();
        let e = Export::verify_parts(vec![forged, rest], &both).expect_err("mallory's key");
        assert!(e.contains("not a pinned key"), "{e}");
    }

    #[test]
    fn truncated_log_under_a_checkpoint_fails() {
        let sk = key();
        let mut x = export(&sk, chain(6), &[6]);
        x.entries.pop();
        let r = x.verify(None).expect("verify");
        assert!(!r.ok);
        assert_eq!(r.bad_checkpoint_seq, Some(6));
        assert_eq!(r.first_bad_seq, Some(6));
    }

    /// A record from a newer agent, of a kind this build does not know, parses with its kind
    /// kept and its hash intact: the controller stores and shows it like any other.
    #[test]
    fn agent_line_of_unknown_kind_parses_and_verifies() {
        let body = format!(
            r#"{{"id":"r1","seq":7,"time":"2026-11-27T02:00:00Z","kind":"grant.extended","actor":"agent","prev":"{GENESIS_HASH}"}}"#
        );
        let hash = agent_record_hash(GENESIS_HASH, body.as_bytes());
        let line = format!("{},\"hash\":\"{hash}\"}}", body.trim_end_matches('}'));
        let l = AgentLine::parse(&line).expect("parses");
        assert_eq!(l.kind, crate::AuditKind::Unknown("grant.extended".into()));
        assert_eq!(l.kind.as_str(), "grant.extended");
        assert_eq!((l.seq, l.computed.as_str()), (7, hash.as_str()));
        assert_eq!(l.hash, hash);
    }

    #[test]
    fn agent_checkpoint_signs_and_verifies_against_the_certificate() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["agent".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let m = agent_checkpoint_message("a1", 7, "ab");
        let sig = agent_sign(&key.serialize_pem(), &m).expect("sign");
        agent_verify(&cert.pem(), &m, &sig).expect("verifies");
        let other = agent_checkpoint_message("a1", 7, "ac");
        assert!(agent_verify(&cert.pem(), &other, &sig).is_err());
        let other_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("k");
        let sig2 = agent_sign(&other_key.serialize_pem(), &m).expect("sign");
        assert!(agent_verify(&cert.pem(), &m, &sig2).is_err());
    }

    #[test]
    fn checkpoint_signature_is_not_a_grant_signature() {
        // Same key, same bytes after the context: the contexts differ, so they never verify
        // as each other.
        assert_ne!(
            CHECKPOINT_CONTEXT,
            <crate::GrantBody as crate::signed::Body>::CONTEXT
        );
    }
}
