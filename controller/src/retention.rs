//! Retention: how long each kind of record is kept (`[retention]` in controller.toml), and
//! `jit-controller prune`, which deletes what is past it (docs/operations.md, "Retention").
//!
//! Every kind is deleted in short steps, each its own write transaction ([`store::retention`]),
//! so the write path waits for one step at most. The activity log is pruned only up to a
//! signed checkpoint, and only after the range was written to an archive file (the format of
//! `jit audit export`) and verified there; what remains verifies from that checkpoint (the
//! anchor), alone or after the archives (`jit audit verify --offline ARCHIVE --offline REST`).

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use jitgate_api::{Operation, ResourceType};
use jitgate_proto::audit::{EXPORT_FORMAT, Export, key_id};

use crate::authz::Actor;
use crate::store::activity::{self, Anchor, NewActivity};
use crate::store::db::Db;
use crate::store::{notify, retention as sql, verified};

const DAY_MS: i64 = 86_400_000;
/// The bounds of every `*_days` setting (1 day to 100 years).
const DAYS: std::ops::RangeInclusive<u64> = 1..=36_500;

fn d400() -> u64 {
    400
}
fn d90() -> u64 {
    90
}
fn d7() -> u64 {
    7
}

/// `[retention]` in controller.toml: days each kind of record is kept. Delivered
/// notifications follow `[notify] retain_delivered_days`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Ended requests (with their ports, grants and approvals), after their last end time.
    #[serde(default = "d400")]
    pub requests_days: u64,
    /// Agent audit records other than connection records, after the controller received
    /// them.
    #[serde(default = "d400")]
    pub agent_audit_days: u64,
    /// Connection records (connection.admitted, connection.denied): they hold people's
    /// source addresses.
    #[serde(default = "d90")]
    pub connections_days: u64,
    /// Compliance evaluations (the newest always stays).
    #[serde(default = "d400")]
    pub compliance_days: u64,
    /// Sign-in sessions, after they ended or expired.
    #[serde(default = "d7")]
    pub sessions_days: u64,
    /// The activity log: kept forever unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity_days: Option<u64>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            requests_days: d400(),
            agent_audit_days: d400(),
            connections_days: d90(),
            compliance_days: d400(),
            sessions_days: d7(),
            activity_days: None,
        }
    }
}

impl RetentionConfig {
    /// Checks every setting: the first one out of range, named as in controller.toml.
    pub fn validate(&self) -> Result<(), String> {
        let named = [
            ("requests_days", Some(self.requests_days)),
            ("agent_audit_days", Some(self.agent_audit_days)),
            ("connections_days", Some(self.connections_days)),
            ("compliance_days", Some(self.compliance_days)),
            ("sessions_days", Some(self.sessions_days)),
            ("activity_days", self.activity_days),
        ];
        for (name, v) in named {
            if let Some(v) = v
                && !DAYS.contains(&v)
            {
                return Err(format!(
                    "retention.{name} = {v} is out of range ({} to {} days)",
                    DAYS.start(),
                    DAYS.end()
                ));
            }
        }
        if self.connections_days > self.agent_audit_days {
            return Err(format!(
                "retention.connections_days ({}) exceeds retention.agent_audit_days ({}): \
                 connection records are agent audit records and cannot outlive them",
                self.connections_days, self.agent_audit_days
            ));
        }
        Ok(())
    }
}

/// Why a prune did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Store(#[from] crate::error::Error),
    #[error("{path}: {source}")]
    Archive {
        path: String,
        source: std::io::Error,
    },
    /// The activity log's range would not verify: nothing of it was deleted.
    #[error("the activity log does not verify, nothing of it was pruned: {0}")]
    Unverified(String),
}

/// One kind's outcome.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KindCount {
    pub kind: &'static str,
    /// Records older than this go (None: kept forever).
    pub cutoff_time_utc: Option<String>,
    /// Rows that go (dry run) or went.
    pub rows: u64,
}

/// The activity log's part of a prune.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ActivityPrune {
    /// Entries up to this seq went (or would go) to the archive; None: none.
    pub through_seq: Option<i64>,
    pub entries: u64,
    pub checkpoints: u64,
    pub archive: Option<PathBuf>,
    pub archive_sha256: Option<String>,
    /// Why nothing was pruned, if so.
    pub skipped: Option<String>,
}

/// What `jit-controller prune` did (or, with `dry_run`, would do).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PruneReport {
    pub dry_run: bool,
    pub kinds: Vec<KindCount>,
    pub activity: ActivityPrune,
    /// The activity entry that records the prune (None for a dry run or when nothing went).
    pub activity_seq: Option<i64>,
}

/// The checkpoint key, as the state directory holds it.
pub struct Keys {
    /// The current key first, then retired ones (`CheckpointKey::trusted`).
    pub trusted: Vec<VerifyingKey>,
    /// SPKI PEM of the current key (carried in the archive).
    pub public_pem: String,
}

/// What to prune.
pub struct Options<'a> {
    pub retention: &'a RetentionConfig,
    pub notify_days: u64,
    pub dry_run: bool,
    /// Where the pruned activity range goes; without it the activity log is not pruned.
    pub archive: Option<&'a Path>,
    pub keys: &'a Keys,
    pub actor: Actor,
    /// The time "now" (ms): cutoffs are this minus each retention.
    pub now_ms: i64,
}

fn cutoff(now: i64, days: u64) -> i64 {
    now.saturating_sub(
        i64::try_from(days)
            .unwrap_or(i64::MAX)
            .saturating_mul(DAY_MS),
    )
}

/// Deletes (or counts, with `dry_run`) the records past their retention.
pub async fn prune(db: &Db, o: &Options<'_>) -> Result<PruneReport, RetentionError> {
    let r = o.retention;
    let delete = !o.dry_run;
    let mut kinds = Vec::new();
    let fmt = |t: i64| Some(jitgate_api::time::format(t));

    // Requests, with their grants and approvals.
    // Candidates are read in windows of seq outside any write transaction; each batch is
    // checked again and deleted in a short one.
    let before = cutoff(o.now_ms, r.requests_days);
    let end = sql::requests_end(db.pool(), before).await?;
    let (mut n, mut lo) = (0, 0);
    while lo <= end {
        let hi = lo.saturating_add(sql::REQUEST_WINDOW);
        let ids = sql::request_candidates(db.pool(), before, lo, hi).await?;
        if delete {
            for chunk in ids.chunks(usize::try_from(sql::REQUEST_BATCH).unwrap_or(200)) {
                let mut w = db.begin().await?;
                n += sql::delete_requests(&mut w, before, chunk).await?;
                w.commit().await?;
                tokio::task::yield_now().await;
            }
        } else {
            n += ids.len() as u64;
        }
        lo = hi;
    }
    kinds.push(KindCount {
        kind: "requests",
        cutoff_time_utc: fmt(before),
        rows: n,
    });

    // Agent audit records: a prefix of each agent's chain.
    let conn_before = cutoff(o.now_ms, r.connections_days);
    let other_before = cutoff(o.now_ms, r.agent_audit_days);
    let (mut conns, mut others) = (0, 0);
    for agent in sql::audit_agents(db.pool()).await? {
        let range = {
            let mut c = db
                .pool()
                .acquire()
                .await
                .map_err(crate::error::Error::from)?;
            sql::audit_prefix(&mut c, &agent, conn_before, other_before).await?
        };
        let Some((first, last)) = range else { continue };
        let (c, x) = sql::audit_counts(db.pool(), &agent, first, last).await?;
        (conns, others) = (conns + c, others + x);
        if delete {
            let mut lo = first;
            while lo <= last {
                let hi = last.min(lo + sql::ROW_BATCH - 1);
                let mut w = db.begin().await?;
                sql::delete_audit(&mut w, &agent, lo, hi).await?;
                w.commit().await?;
                lo = hi + 1;
                tokio::task::yield_now().await;
            }
        }
    }
    kinds.push(KindCount {
        kind: "agentAuditRecords",
        cutoff_time_utc: fmt(other_before),
        rows: others,
    });
    kinds.push(KindCount {
        kind: "connectionRecords",
        cutoff_time_utc: fmt(conn_before),
        rows: conns,
    });

    // Compliance evaluations and their results.
    let before = cutoff(o.now_ms, r.compliance_days);
    let (mut scans, mut results, mut after) = (0, 0, i64::MIN);
    loop {
        let mut w = db.begin().await?;
        let (s, x, next) = sql::compliance_batch(&mut w, before, after, delete).await?;
        w.commit().await?;
        (scans, results) = (scans + s, results + x);
        match next {
            Some(id) => after = id,
            None => break,
        }
        tokio::task::yield_now().await;
    }
    kinds.push(KindCount {
        kind: "complianceEvaluations",
        cutoff_time_utc: fmt(before),
        rows: scans,
    });
    kinds.push(KindCount {
        kind: "complianceResults",
        cutoff_time_utc: fmt(before),
        rows: results,
    });

    // Delivered notifications (the leader prunes them hourly as well).
    let before = cutoff(o.now_ms, o.notify_days);
    let (d, e) = if delete {
        notify::prune_all(db, before).await?
    } else {
        let mut c = db
            .pool()
            .acquire()
            .await
            .map_err(crate::error::Error::from)?;
        sql::notify_counts(&mut c, before).await?
    };
    kinds.push(KindCount {
        kind: "notificationDeliveries",
        cutoff_time_utc: fmt(before),
        rows: d,
    });
    kinds.push(KindCount {
        kind: "notificationEvents",
        cutoff_time_utc: fmt(before),
        rows: e,
    });

    // Sessions that ended or expired.
    let before = cutoff(o.now_ms, r.sessions_days);
    let (mut n, mut after) = (0, String::new());
    loop {
        let mut w = db.begin().await?;
        let (k, next) = sql::sessions_batch(&mut w, before, &after, delete).await?;
        w.commit().await?;
        n += k;
        match next {
            Some(id) => after = id,
            None => break,
        }
        tokio::task::yield_now().await;
    }
    kinds.push(KindCount {
        kind: "sessions",
        cutoff_time_utc: fmt(before),
        rows: n,
    });

    let activity = prune_activity(db, o).await?;
    kinds.push(KindCount {
        kind: "activityEntries",
        cutoff_time_utc: r.activity_days.and_then(|d| fmt(cutoff(o.now_ms, d))),
        rows: activity.entries,
    });

    let total: u64 = kinds.iter().map(|k| k.rows).sum();
    let mut report = PruneReport {
        dry_run: o.dry_run,
        kinds,
        activity,
        activity_seq: None,
    };
    if delete && total > 0 {
        let counts: serde_json::Map<String, serde_json::Value> = report
            .kinds
            .iter()
            .map(|k| (k.kind.to_string(), k.rows.into()))
            .collect();
        let mut details = serde_json::json!({ "deleted": counts });
        if let Some(seq) = report.activity.through_seq {
            details["activityPrunedThroughSeq"] = seq.into();
            details["archiveSha256"] = report.activity.archive_sha256.clone().into();
        }
        let a = NewActivity::other(Operation::Prune, ResourceType::Database, "", &o.actor)
            .details(details);
        let mut w = db.begin().await?;
        let seq = activity::log(&mut w, a).await?;
        w.commit().await?;
        report.activity_seq = Some(seq);
    }
    tracing::info!(
        dry_run = o.dry_run,
        rows = total,
        activity_through = ?report.activity.through_seq,
        "prune finished"
    );
    Ok(report)
}

async fn prune_activity(db: &Db, o: &Options<'_>) -> Result<ActivityPrune, RetentionError> {
    let mut out = ActivityPrune::default();
    let Some(days) = o.retention.activity_days else {
        out.skipped = Some("retention.activity_days is not set: the log is kept forever".into());
        return Ok(out);
    };
    let before = cutoff(o.now_ms, days);
    let pool = db.pool();
    let anchor = activity::anchor(pool).await?;
    let from = anchor.as_ref().map_or(0, |a| a.seq);
    let Some(current) = o.keys.trusted.first() else {
        return Err(RetentionError::Unverified("no checkpoint key".into()));
    };
    let kid = key_id(current);
    let cut = {
        let mut c = pool.acquire().await.map_err(crate::error::Error::from)?;
        sql::activity_cut(&mut c, &kid, from, before).await?
    };
    let Some((through, hash)) = cut else {
        out.skipped = Some(format!(
            "no signed checkpoint covers only entries older than {days} days"
        ));
        return Ok(out);
    };
    out.through_seq = Some(through);
    out.entries = u64::try_from(through - from).unwrap_or(0);
    // The range's checkpoints: the anchor's (which its first entry chains to) up to the cut.
    let checkpoints: Vec<_> = activity::checkpoints(pool)
        .await?
        .into_iter()
        .filter(|c| c.seq >= from.max(1) && c.seq <= through)
        .collect();
    out.checkpoints = checkpoints.iter().filter(|c| c.seq > from).count() as u64;
    let Some(path) = o.archive else {
        out.skipped = Some(
            "no --archive FILE: the activity log is pruned only after the pruned range was \
             written to an archive that `jit audit verify --offline` verifies"
                .into(),
        );
        if !o.dry_run {
            out.entries = 0;
            out.checkpoints = 0;
            out.through_seq = None;
        }
        return Ok(out);
    };
    out.archive = Some(path.to_path_buf());
    if o.dry_run {
        return Ok(out);
    }
    let export = Export {
        format: EXPORT_FORMAT.into(),
        key_id: kid,
        public_key_pem: o.keys.public_pem.clone(),
        exported_time_ms: o.now_ms,
        entries: activity::range(pool, from + 1, through).await?,
        checkpoints,
    };
    // Nothing is deleted unless the archive verifies, under the pinned key, to the cut.
    let report = export
        .verify_trusting(&o.keys.trusted)
        .map_err(RetentionError::Unverified)?;
    if !report.ok || report.head_seq != through || report.head_hash != hash {
        return Err(RetentionError::Unverified(format!(
            "entries {}..={through}: {}",
            from + 1,
            report
                .problem
                .unwrap_or_else(|| "the range does not end at its checkpoint".into())
        )));
    }
    let sha = write_archive(path, &export)?;
    out.archive_sha256 = Some(sha.clone());
    // The anchor first: a verification from now on starts there, so entries deleted below
    // it are never reported missing. The verified mark follows it (the range was verified
    // above).
    let mut w = db.begin().await?;
    activity::set_anchor(
        &mut w,
        &Anchor {
            seq: through,
            hash: hash.clone(),
            time_ms: o.now_ms,
            archive_sha256: sha,
        },
    )
    .await?;
    if let Some(mut mark) = verified::get(w.conn()).await?
        && mark.failed_seq.is_none()
        && mark.seq < through
    {
        mark.seq = through;
        mark.hash = hash;
        mark.covered = through;
        verified::set(&mut w, &mark).await?;
    }
    w.commit().await?;
    let mut lo = from + 1;
    while lo <= through {
        let hi = through.min(lo + sql::ROW_BATCH - 1);
        let mut w = db.begin().await?;
        sql::delete_activity(&mut w, lo, hi).await?;
        w.commit().await?;
        lo = hi + 1;
        tokio::task::yield_now().await;
    }
    let mut w = db.begin().await?;
    sql::delete_checkpoints_below(&mut w, through).await?;
    w.commit().await?;
    tracing::info!(
        through_seq = through,
        entries = out.entries,
        archive = %path.display(),
        "activity log pruned up to a signed checkpoint"
    );
    Ok(out)
}

/// Writes the archive: a new file (never over one), mode 0600, synced with its directory.
/// Returns its SHA-256 (hex).
fn write_archive(path: &Path, export: &Export) -> Result<String, RetentionError> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e| RetentionError::Archive {
        path: path.display().to_string(),
        source: e,
    };
    let text = serde_json::to_vec(export).map_err(|e| io(std::io::Error::other(e)))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    let written = f.write_all(&text).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(io(e));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(hex::encode(Sha256::digest(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_named() {
        let ok = RetentionConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let bad = RetentionConfig {
            requests_days: 0,
            ..RetentionConfig::default()
        };
        assert!(
            bad.validate()
                .err()
                .unwrap_or_default()
                .contains("retention.requests_days = 0")
        );
        let bad = RetentionConfig {
            activity_days: Some(40_000),
            ..RetentionConfig::default()
        };
        assert!(
            bad.validate()
                .err()
                .unwrap_or_default()
                .contains("retention.activity_days")
        );
        let bad = RetentionConfig {
            connections_days: 500,
            ..RetentionConfig::default()
        };
        assert!(
            bad.validate()
                .err()
                .unwrap_or_default()
                .contains("cannot outlive")
        );
    }
}
