//! The export bundle an auditor verifies offline, and the report of any verification.

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::{
    ActivityEntry, ChainWalk, Checkpoint, EXPORT_FORMAT, Failure, GENESIS_HASH, anchor, key_id,
    parse_public_key,
};

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
        let own = self.own_key()?;
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
        let own = self.own_key()?;
        if !pinned.contains(&own) {
            return Err(format!(
                "the export's key {} is not a pinned key ({})",
                key_id(&own),
                ids(pinned)
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
            let own = p.own_key().map_err(|e| format!("part {}: {e}", i + 1))?;
            if !pinned.is_empty() && !pinned.contains(&own) {
                return Err(format!(
                    "part {}: its key {} is not a pinned key ({})",
                    i + 1,
                    key_id(&own),
                    ids(pinned)
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
                ids(&keys)
            ));
        }
        let all = Export::join(parts)?;
        // The report names the key of the newest part (the controller's now).
        let newest = parse_public_key(&all.public_key_pem)?;
        let trusted = if pinned.is_empty() { &keys } else { pinned };
        Ok(all.verify_with(trusted, &newest))
    }

    /// The bundle's own key, once its format is known to be [`EXPORT_FORMAT`].
    fn own_key(&self) -> Result<VerifyingKey, String> {
        if self.format != EXPORT_FORMAT {
            return Err(format!("format {:?} is not {EXPORT_FORMAT:?}", self.format));
        }
        parse_public_key(&self.public_key_pem)
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

/// Key ids for a message: `id1, id2`.
fn ids(keys: &[VerifyingKey]) -> String {
    keys.iter().map(key_id).collect::<Vec<_>>().join(", ")
}
