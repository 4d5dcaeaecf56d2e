//! The audit log: one JSON line per event, hash-chained, append-only, rotated by size
//! without breaking the chain.
//!
//! Each line carries `prev` (the previous line's hash) and `hash` = SHA-256 over `prev` and
//! the line's other fields as serialized. `verify` recomputes the chain across every file and
//! names the first line that was edited, removed or reordered. The chain proves order and
//! integrity against anyone who cannot rewrite all later lines; root on the host can, which
//! is why the head is also reported off the host (see docs/agent.md).

use jitgate_proto::AuditKind;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

use crate::enroll::{EnrollError, Enrollment};

pub const FILE: &str = "audit.log";
/// The hash a chain starts from.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One event, as written (without its hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditBody {
    pub id: String,
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// A kind this build does not know (written by a newer agent) is kept as it is.
    pub kind: AuditKind,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// On `audit.checkpoint` records: the agent's signature (enrolment key, ECDSA P-256, hex)
    /// over (agent id, seq - 1, prev), i.e. the chain head this record follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    pub prev: String,
}

/// Who signs checkpoint records (of kind `audit.checkpoint`): the agent's id and its
/// enrolment key (PKCS#8 PEM).
#[derive(Clone)]
pub struct Signer {
    pub agent_id: String,
    pub key_pem: String,
}

impl Signer {
    /// The signer of an enrolled agent: its id and its enrolment key.
    pub fn for_enrollment(e: &Enrollment) -> Result<Signer, EnrollError> {
        Ok(Signer {
            agent_id: e.agent_id.to_string(),
            key_pem: e.key_pem()?,
        })
    }
}

/// Who checks them: the agent's id and its certificate (PEM).
pub struct Checker<'a> {
    pub agent_id: &'a str,
    pub cert_pem: &'a str,
}

impl Checker<'_> {
    /// Checks a checkpoint record's signature.
    pub fn check(&self, body: &AuditBody) -> Result<(), String> {
        let sig = body.signature.as_deref().ok_or("no signature")?;
        let m = jitgate_proto::audit::agent_checkpoint_message(
            self.agent_id,
            body.seq.saturating_sub(1),
            &body.prev,
        );
        jitgate_proto::audit::agent_verify(self.cert_pem, &m, sig)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub end: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLine {
    #[serde(flatten)]
    pub body: AuditBody,
    pub hash: String,
}

/// An event to record; `seq`, `id`, `prev` and `hash` are filled in by the log.
#[derive(Clone, Debug)]
pub struct AuditEvent {
    pub kind: AuditKind,
    pub actor: String,
    pub source: Option<String>,
    pub protocol: Option<String>,
    pub port: Option<u16>,
    pub window: Option<(OffsetDateTime, OffsetDateTime)>,
    pub grant_id: Option<String>,
    pub reason: Option<String>,
    /// When it happened; now if `None`.
    pub time: Option<OffsetDateTime>,
}

impl AuditEvent {
    pub fn new(kind: impl Into<AuditKind>, actor: &str) -> Self {
        AuditEvent {
            kind: kind.into(),
            actor: actor.to_string(),
            source: None,
            protocol: None,
            port: None,
            window: None,
            grant_id: None,
            reason: None,
            time: None,
        }
    }
}

fn hash_of(body: &AuditBody) -> String {
    let json = serde_json::to_vec(body).unwrap_or_default();
    jitgate_proto::audit::agent_record_hash(&body.prev, &json)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("{file}:{line}: not a valid audit record")]
    Malformed { file: String, line: usize },
    #[error("{file}:{line}: seq {seq}: hash does not match the record (edited)")]
    Edited { file: String, line: usize, seq: u64 },
    #[error(
        "{file}:{line}: seq {seq}: does not follow the previous record \
         (a record was removed, inserted or reordered before it)"
    )]
    Broken { file: String, line: usize, seq: u64 },
    #[error("{file}:{line}: seq {seq}: checkpoint signature does not verify: {reason}")]
    Checkpoint {
        file: String,
        line: usize,
        seq: u64,
        reason: String,
    },
    #[error("{0}")]
    Io(String),
}

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub records: u64,
    pub files: usize,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub head: String,
    /// Signed checkpoint records (verified when a certificate was given).
    pub checkpoints: u64,
    /// The seq the last checkpoint signs: records up to it are covered.
    pub covered_seq: Option<u64>,
}

/// The audit log files in `dir`, oldest first: `audit.log.1`, `audit.log.2`, ..., `audit.log`.
pub fn files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut rotated: Vec<(u64, PathBuf)> = Vec::new();
    if dir.exists() {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = name
                .strip_prefix("audit.log.")
                .and_then(|n| n.parse::<u64>().ok())
            {
                rotated.push((n, e.path()));
            }
        }
    }
    rotated.sort();
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    let active = dir.join(FILE);
    if active.exists() {
        out.push(active);
    }
    Ok(out)
}

/// Reads every line of every file, oldest first. Lines that do not parse are returned as
/// errors in place.
pub fn read_all(dir: &Path) -> io::Result<Vec<Result<AuditLine, (String, usize)>>> {
    let mut out = Vec::new();
    for f in files(dir)? {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (i, line) in BufReader::new(File::open(&f)?).lines().enumerate() {
            let line = line?;
            match serde_json::from_str::<AuditLine>(&line) {
                Ok(l) => out.push(Ok(l)),
                Err(_) => out.push(Err((name.clone(), i + 1))),
            }
        }
    }
    Ok(out)
}

/// Verifies the chain across all files; with `checker`, also every checkpoint signature.
pub fn verify(dir: &Path, checker: Option<&Checker<'_>>) -> Result<Verified, VerifyError> {
    let fs = files(dir).map_err(|e| VerifyError::Io(e.to_string()))?;
    let mut chain = Chain::new();
    chain.checker = checker;
    for f in &fs {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = File::open(f).map_err(|e| VerifyError::Io(e.to_string()))?;
        chain.feed(&name, BufReader::new(file))?;
    }
    Ok(chain.finish(fs.len()))
}

/// The chain check of [`verify`], fed one file at a time, oldest first (a reader, so that it
/// can be tested and fuzzed without files).
pub struct Chain<'a> {
    prev: Option<(String, u64)>,
    v: Verified,
    /// Also checks each checkpoint's signature (without: counts them, trusts them).
    pub checker: Option<&'a Checker<'a>>,
}

impl Default for Chain<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl Chain<'_> {
    pub fn new() -> Self {
        Chain {
            prev: None,
            v: Verified {
                records: 0,
                files: 0,
                first_seq: None,
                last_seq: None,
                head: GENESIS.to_string(),
                checkpoints: 0,
                covered_seq: None,
            },
            checker: None,
        }
    }

    /// Checks every line of one file (`name` is for the error) against the chain so far.
    pub fn feed(&mut self, name: &str, r: impl BufRead) -> Result<(), VerifyError> {
        for (i, line) in r.lines().enumerate() {
            let line = line.map_err(|e| VerifyError::Io(e.to_string()))?;
            let lineno = i + 1;
            let l: AuditLine = serde_json::from_str(&line).map_err(|_| VerifyError::Malformed {
                file: name.to_string(),
                line: lineno,
            })?;
            if hash_of(&l.body) != l.hash {
                return Err(VerifyError::Edited {
                    file: name.to_string(),
                    line: lineno,
                    seq: l.body.seq,
                });
            }
            let follows = match &self.prev {
                // The oldest surviving file may start mid-chain (older files pruned).
                None => l.body.seq == 1 && l.body.prev == GENESIS || l.body.seq > 1,
                Some((h, s)) => l.body.prev == *h && l.body.seq == s + 1,
            };
            if !follows {
                return Err(VerifyError::Broken {
                    file: name.to_string(),
                    line: lineno,
                    seq: l.body.seq,
                });
            }
            if l.body.kind == AuditKind::AuditCheckpoint {
                if let Some(c) = self.checker {
                    c.check(&l.body).map_err(|reason| VerifyError::Checkpoint {
                        file: name.to_string(),
                        line: lineno,
                        seq: l.body.seq,
                        reason,
                    })?;
                }
                self.v.checkpoints += 1;
                self.v.covered_seq = Some(l.body.seq.saturating_sub(1));
            }
            self.v.first_seq.get_or_insert(l.body.seq);
            self.v.last_seq = Some(l.body.seq);
            self.v.records += 1;
            self.prev = Some((l.hash.clone(), l.body.seq));
            self.v.head = l.hash;
        }
        Ok(())
    }

    /// What was seen, over `files` files.
    pub fn finish(mut self, files: usize) -> Verified {
        self.v.files = files;
        self.v
    }
}

/// The last line of `data` that parses as a record, and the end (after its newline) of the
/// last such line: what [`AuditLog::open`] continues the chain from. A line without its
/// newline (torn by a crash) never counts.
pub fn last_good(data: &[u8]) -> (usize, Option<AuditLine>) {
    let mut good_end = 0usize;
    let mut last: Option<AuditLine> = None;
    let mut start = 0usize;
    while let Some(nl) = data[start..].iter().position(|&b| b == b'\n') {
        let line = &data[start..start + nl];
        if let Ok(l) = serde_json::from_slice::<AuditLine>(line) {
            last = Some(l);
            good_end = start + nl + 1;
        }
        start += nl + 1;
    }
    (good_end, last)
}

/// Verifies the log in `state_dir`, and its checkpoints against the enrolment certificate if
/// the agent is enrolled.
pub fn verify_state_dir(state_dir: &Path) -> Result<Verified, VerifyError> {
    let enr = Enrollment::load(state_dir).map_err(|e| VerifyError::Io(e.to_string()))?;
    match enr {
        None => verify(state_dir, None),
        Some(e) => {
            let cert = e.cert_pem().map_err(|e| VerifyError::Io(e.to_string()))?;
            let id = e.agent_id.to_string();
            verify(
                state_dir,
                Some(&Checker {
                    agent_id: &id,
                    cert_pem: &cert,
                }),
            )
        }
    }
}

/// The writer. Owned by one task.
pub struct AuditLog {
    dir: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    head: String,
    seq: u64,
    signer: Option<Signer>,
    /// The seq of the last checkpoint record this log wrote (no new one while it is the head).
    last_checkpoint: Option<u64>,
}

impl AuditLog {
    /// Opens the log in `dir`, continuing the chain from its last good line. A torn last line
    /// (crash mid-write) is cut off first.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<AuditLog> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let (mut head, mut seq) = (GENESIS.to_string(), 0u64);
        // The last record of the newest file that has one.
        for f in files(dir)?.iter().rev() {
            let data = std::fs::read(f)?;
            let (good_end, last) = last_good(&data);
            if *f == path && good_end < data.len() {
                let t = OpenOptions::new().write(true).open(f)?;
                t.set_len(good_end as u64)?;
                t.sync_all()?;
            }
            if let Some(l) = last {
                head = l.hash;
                seq = l.body.seq;
                break;
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(AuditLog {
            dir: dir.to_path_buf(),
            file,
            size,
            max_bytes,
            head,
            seq,
            signer: None,
            last_checkpoint: None,
        })
    }

    /// Signs `audit.checkpoint` records from now on (once enrolled).
    pub fn set_signer(&mut self, signer: Signer) {
        self.signer = Some(signer);
    }

    pub fn head(&self) -> (&str, u64) {
        (&self.head, self.seq)
    }

    /// Appends events (not yet durable: call `sync`). Returns the lines written.
    pub fn append(
        &mut self,
        events: impl IntoIterator<Item = AuditEvent>,
    ) -> io::Result<Vec<AuditLine>> {
        let mut buf = Vec::new();
        let mut lines = Vec::new();
        for e in events {
            let mut signature = None;
            if e.kind == AuditKind::AuditCheckpoint {
                // Signed here, against the exact head it follows; skipped when nothing moved
                // since the last one, or when there is no key (not enrolled).
                let Some(s) = &self.signer else { continue };
                if self.seq == 0 || self.last_checkpoint == Some(self.seq) {
                    continue;
                }
                let m = jitgate_proto::audit::agent_checkpoint_message(
                    &s.agent_id,
                    self.seq,
                    &self.head,
                );
                match jitgate_proto::audit::agent_sign(&s.key_pem, &m) {
                    Ok(sig) => signature = Some(sig),
                    Err(e) => {
                        // Never let a signing problem block the audit log itself.
                        tracing::warn!(error = %e, "cannot sign an audit checkpoint");
                        continue;
                    }
                }
            }
            self.seq += 1;
            if signature.is_some() {
                self.last_checkpoint = Some(self.seq);
            }
            let body = AuditBody {
                id: uuid::Uuid::new_v4().to_string(),
                seq: self.seq,
                time: e.time.unwrap_or_else(OffsetDateTime::now_utc),
                kind: e.kind,
                actor: e.actor,
                source: e.source,
                protocol: e.protocol,
                port: e.port,
                window: e.window.map(|(start, end)| Window { start, end }),
                grant_id: e.grant_id,
                reason: e.reason,
                signature,
                prev: self.head.clone(),
            };
            let hash = hash_of(&body);
            self.head = hash.clone();
            let line = AuditLine { body, hash };
            serde_json::to_writer(&mut buf, &line).map_err(io::Error::other)?;
            buf.push(b'\n');
            lines.push(line);
        }
        self.file.write_all(&buf)?;
        self.size += buf.len() as u64;
        if self.size >= self.max_bytes {
            self.rotate()?;
        }
        Ok(lines)
    }

    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Moves the active file to the next `audit.log.N`. The chain continues in the new file.
    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_all()?;
        let next = files(&self.dir)?
            .iter()
            .filter_map(|p| p.extension()?.to_str()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        std::fs::rename(self.dir.join(FILE), self.dir.join(format!("{FILE}.{next}")))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(FILE))?;
        File::open(&self.dir)?.sync_all()?;
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u32) -> AuditEvent {
        let mut e = AuditEvent::new("grant.applied", "root");
        e.source = Some(format!("203.0.113.{n}/32"));
        e.port = Some(22);
        e
    }

    #[test]
    fn chain_verifies_across_rotation_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = AuditLog::open(dir.path(), 600).unwrap();
            for i in 0..10 {
                log.append([ev(i)]).unwrap();
            }
            log.sync().unwrap();
        }
        assert!(files(dir.path()).unwrap().len() > 2, "rotation happened");
        {
            let mut log = AuditLog::open(dir.path(), 600).unwrap();
            assert_eq!(log.head().1, 10);
            log.append([ev(99)]).unwrap();
        }
        let v = verify(dir.path(), None).unwrap();
        assert_eq!(v.records, 11);
        assert_eq!(v.last_seq, Some(11));
    }

    fn rewrite(dir: &Path, f: impl FnOnce(&mut Vec<String>)) {
        let path = dir.join(FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        f(&mut lines);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    }

    fn fresh(n: u32) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path(), u64::MAX).unwrap();
        for i in 0..n {
            log.append([ev(i)]).unwrap();
        }
        dir
    }

    #[test]
    fn detects_edit_removal_and_reorder_and_says_where() {
        let d = fresh(5);
        rewrite(d.path(), |l| {
            l[2] = l[2].replace("203.0.113.2/32", "198.51.100.2/32")
        });
        assert!(matches!(
            verify(d.path(), None),
            Err(VerifyError::Edited {
                line: 3,
                seq: 3,
                ..
            })
        ));

        let d = fresh(5);
        rewrite(d.path(), |l| {
            l.remove(1);
        });
        assert!(matches!(
            verify(d.path(), None),
            Err(VerifyError::Broken {
                line: 2,
                seq: 3,
                ..
            })
        ));

        let d = fresh(5);
        rewrite(d.path(), |l| l.swap(1, 3));
        assert!(matches!(
            verify(d.path(), None),
            Err(VerifyError::Broken { line: 2, .. })
        ));

        let d = fresh(5);
        rewrite(d.path(), |l| l[4] = "{not json".into());
        assert!(matches!(
            verify(d.path(), None),
            Err(VerifyError::Malformed { line: 5, .. })
        ));
    }

    fn signer() -> (Signer, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["agent".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let s = Signer {
            agent_id: "0b5e1c1e-0000-4000-8000-000000000001".into(),
            key_pem: key.serialize_pem(),
        };
        (s, cert.pem())
    }

    #[test]
    fn checkpoints_are_signed_only_when_the_head_moved_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (s, cert) = signer();
        let checker = Checker {
            agent_id: &s.agent_id,
            cert_pem: &cert,
        };
        let mut log = AuditLog::open(dir.path(), u64::MAX).unwrap();
        // Not enrolled: no checkpoint is written.
        log.append([ev(0), AuditEvent::new(AuditKind::AuditCheckpoint, "agent")])
            .unwrap();
        assert_eq!(log.head().1, 1);
        log.set_signer(s.clone());
        log.append([ev(1), AuditEvent::new(AuditKind::AuditCheckpoint, "agent")])
            .unwrap();
        // The head has not moved since: nothing new.
        log.append([AuditEvent::new(AuditKind::AuditCheckpoint, "agent")])
            .unwrap();
        log.append([ev(2)]).unwrap();
        log.sync().unwrap();
        let v = verify(dir.path(), Some(&checker)).unwrap();
        assert_eq!((v.records, v.checkpoints, v.covered_seq), (4, 1, Some(2)));
        // The controller checks delivered lines from their bytes alone: same hashes, and the
        // checkpoint's signature verifies there too.
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        for line in text.lines() {
            let l = jitgate_proto::audit::AgentLine::parse(line).unwrap();
            assert_eq!(l.computed, l.hash, "{line}");
            if l.kind == AuditKind::AuditCheckpoint {
                let m =
                    jitgate_proto::audit::agent_checkpoint_message(&s.agent_id, l.seq - 1, &l.prev);
                jitgate_proto::audit::agent_verify(&cert, &m, l.signature.as_deref().unwrap())
                    .unwrap();
            }
        }
        // Another agent's certificate does not verify the signature.
        let (_, other) = signer();
        let wrong = Checker {
            agent_id: &s.agent_id,
            cert_pem: &other,
        };
        assert!(matches!(
            verify(dir.path(), Some(&wrong)),
            Err(VerifyError::Checkpoint { seq: 3, .. })
        ));
    }

    #[test]
    fn rechained_rewrite_fails_the_signed_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (s, cert) = signer();
        let mut log = AuditLog::open(dir.path(), u64::MAX).unwrap();
        log.set_signer(s.clone());
        log.append([
            ev(1),
            ev(2),
            AuditEvent::new(AuditKind::AuditCheckpoint, "agent"),
            ev(3),
        ])
        .unwrap();
        log.sync().unwrap();
        drop(log);
        // Rewrite record 1 and recompute every later hash: the plain chain holds again.
        let path = dir.path().join(FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut prev = GENESIS.to_string();
        let mut out = String::new();
        for (i, line) in text.lines().enumerate() {
            let mut l: AuditLine = serde_json::from_str(line).unwrap();
            if i == 0 {
                l.body.source = Some("198.51.100.9/32".into());
            }
            l.body.prev = prev.clone();
            l.hash = hash_of(&l.body);
            prev = l.hash.clone();
            out.push_str(&serde_json::to_string(&l).unwrap());
            out.push('\n');
        }
        std::fs::write(&path, out).unwrap();
        assert!(verify(dir.path(), None).is_ok());
        let checker = Checker {
            agent_id: &s.agent_id,
            cert_pem: &cert,
        };
        assert!(matches!(
            verify(dir.path(), Some(&checker)),
            Err(VerifyError::Checkpoint { seq: 3, .. })
        ));
    }

    #[test]
    fn torn_last_line_is_cut_and_chain_continues() {
        let d = fresh(3);
        let path = d.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"{\"id\":\"half");
        std::fs::write(&path, bytes).unwrap();
        let mut log = AuditLog::open(d.path(), u64::MAX).unwrap();
        log.append([ev(7)]).unwrap();
        assert_eq!(verify(d.path(), None).unwrap().records, 4);
    }

    /// A record of a kind this build does not know (a newer agent wrote it before this one
    /// was installed) is read, verified and continued from like any other.
    #[test]
    fn record_of_unknown_kind_is_read_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path(), u64::MAX).unwrap();
        log.append([ev(1), AuditEvent::new("grant.extended", "agent"), ev(2)])
            .unwrap();
        log.sync().unwrap();
        drop(log);
        let all: Vec<AuditLine> = read_all(dir.path())
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(all.len(), 3);
        assert_eq!(
            all[1].body.kind,
            AuditKind::Unknown("grant.extended".into())
        );
        assert_eq!(verify(dir.path(), None).unwrap().records, 3);
        let mut log = AuditLog::open(dir.path(), u64::MAX).unwrap();
        assert_eq!(log.head().1, 3);
        log.append([ev(3)]).unwrap();
        assert_eq!(verify(dir.path(), None).unwrap().records, 4);
    }
}
