//! The activity log as callers see it: filtered lists, verification, signed checkpoints and
//! the export for offline verification (docs/controller.md, "Activity log").

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use ed25519_dalek::{SigningKey, VerifyingKey};
use jitgate_api::{
    ActivityEntry, ActivityExport, ActivityQuery, Checkpoint, CheckpointList, ErrorCode, Operation,
    ResourceType, VerifyReport,
};

use crate::authz::{self, Action, Actor, Caller};
use crate::csv::{self, Cell};
use crate::error::{Error, Result};
use crate::input::parse_time;
use crate::store::activity::{self, Filter};
use crate::store::db::Db;
use crate::store::full_run;
use crate::store::verified::{self, Verified};

/// The controller's checkpoint key: its Ed25519 key from the state directory (never from the
/// database, which a writer could change), and the public half as agents and auditors pin it.
pub struct CheckpointKey {
    pub key: SigningKey,
    /// SPKI PEM.
    pub public_pem: String,
    /// Public halves of checkpoint keys this one replaced (`keys/checkpoint-retired-*.pub`):
    /// the checkpoints they signed still verify.
    pub retired: Vec<VerifyingKey>,
}

impl CheckpointKey {
    /// Every key a checkpoint may be signed by: this one first, then the retired ones.
    pub fn trusted(&self) -> Vec<VerifyingKey> {
        std::iter::once(self.key.verifying_key())
            .chain(self.retired.iter().copied())
            .collect()
    }
}

#[derive(Clone)]
pub struct Audit {
    db: Db,
    /// None where this controller signs nothing (administration commands).
    key: Option<Arc<CheckpointKey>>,
    /// This controller's name in the cluster (the lease holder's name): who runs a full
    /// verification.
    name: Arc<str>,
}

/// A verification of the whole log in the background (one in the cluster at a time), as
/// every controller sees it (`store::full_run`).
#[derive(Clone, Debug, Default)]
pub struct FullRun {
    pub running: bool,
    /// The controller that runs (or ran) it.
    pub controller: String,
    /// Entries the log held when it started.
    pub total: i64,
    /// Entries walked so far (written every second while it runs).
    pub walked: i64,
    pub started_ms: i64,
    /// The last run's result, once finished.
    pub report: Option<VerifyReport>,
    /// Why the last run could not finish (a database error, or its controller stopped), if
    /// it could not.
    pub error: Option<String>,
}

/// Entries the background task verifies per step (`Audit::extend_verified`).
pub const VERIFY_STEP: i64 = 200_000;

impl Audit {
    /// `name`: this controller's name in the cluster.
    pub fn new(db: Db, key: Option<CheckpointKey>, name: &str) -> Audit {
        Audit {
            db,
            key: key.map(Arc::new),
            name: name.into(),
        }
    }

    /// Moves the verified mark over up to `max` entries appended since it last moved
    /// (checking their chain and the checkpoints signed over them). A failure is recorded
    /// and logged; it stays until a verification of the whole log passes. Run after each
    /// checkpoint, so the portal shows how far the log verifies without walking it.
    pub async fn extend_verified(&self, max: i64) -> Result<Verified> {
        let keys = self.key()?.trusted();
        let pool = self.db.pool();
        let mark = verified::get(pool).await?.unwrap_or_else(Verified::start);
        if mark.failed_seq.is_some() {
            return Ok(mark);
        }
        let now = jitgate_api::time::now_ms();
        let from = (mark.seq, mark.hash.as_str(), mark.covered);
        let next = match activity::walk_from(pool, &keys, from, max).await? {
            Ok(walk) => {
                let (seq, hash, covered) = walk.position();
                Verified {
                    seq,
                    hash: hash.to_string(),
                    covered,
                    checkpoints: mark.checkpoints + walk.matched(),
                    time_ms: now,
                    failed_seq: None,
                    problem: None,
                }
            }
            Err(f) => {
                tracing::error!(seq = f.seq, problem = %f.problem, "the activity log does not verify");
                Verified {
                    time_ms: now,
                    failed_seq: Some(f.seq),
                    problem: Some(f.problem),
                    ..mark
                }
            }
        };
        self.record(&next).await?;
        Ok(next)
    }

    async fn record(&self, v: &Verified) -> Result<()> {
        let mut w = self.db.begin().await?;
        verified::set(&mut w, v).await?;
        w.commit().await
    }

    /// How far the log has been verified (None before the first verification).
    pub async fn verified(&self, caller: &Caller) -> Result<Option<Verified>> {
        authz::authorize(caller, Action::ReadAll)?;
        verified::get(self.db.pool()).await
    }

    /// Starts verifying the whole log in the background; false if a run is going on
    /// already, on this controller or another. Its progress and result: [`Audit::full_run`].
    /// A passing run confirms the mark (and clears a recorded failure); a failing one
    /// records where it failed.
    pub async fn start_full(&self, caller: &Caller) -> Result<bool> {
        authz::authorize(caller, Action::ReadAll)?;
        let keys = self.key()?.trusted();
        let (head, _) = crate::store::cluster::heads(self.db.pool()).await?;
        let mut w = self.db.begin().await?;
        let started_ms = w.now;
        if !full_run::claim(&mut w, &self.name, head).await? {
            return Ok(false);
        }
        w.commit().await?;
        tracing::info!(caller = %caller.name(), entries = head, "verifying the whole activity log");
        let me = self.clone();
        tokio::spawn(async move { me.run_full(&keys, started_ms).await });
        Ok(true)
    }

    /// Walks the whole log, writing its progress every second, then its result.
    async fn run_full(&self, keys: &[VerifyingKey], started_ms: i64) {
        let walked = Arc::new(AtomicI64::new(0));
        let pool = self.db.pool();
        let walk = activity::verify_counting(pool, keys, &walked);
        tokio::pin!(walk);
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                r = &mut walk => break r,
                _ = tick.tick() => {
                    let n = walked.load(Ordering::Relaxed);
                    if let Err(e) = self.write_progress(started_ms, n).await {
                        tracing::warn!(error = %e, "could not record the verification's progress");
                    }
                }
            }
        };
        let n = walked.load(Ordering::Relaxed);
        let outcome = match result {
            Ok(r) => match self.record_full(&r).await {
                Ok(()) => Ok(r),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "verifying the whole activity log failed to run");
        }
        let written = async {
            let mut w = self.db.begin().await?;
            full_run::finish(
                &mut w,
                &self.name,
                started_ms,
                n,
                outcome.as_ref().map_err(String::as_str),
            )
            .await?;
            w.commit().await
        };
        if let Err(e) = written.await {
            tracing::error!(error = %e, "could not record the verification's result");
        }
    }

    async fn write_progress(&self, started_ms: i64, walked: i64) -> Result<()> {
        let mut w = self.db.begin().await?;
        full_run::progress(&mut w, &self.name, started_ms, walked).await?;
        w.commit().await
    }

    /// Moves (or fails) the verified mark after a full run.
    async fn record_full(&self, r: &VerifyReport) -> Result<()> {
        let pool = self.db.pool();
        let now = jitgate_api::time::now_ms();
        let mark = if r.ok {
            Verified {
                seq: r.entries,
                hash: r.head_hash.clone(),
                covered: r.covered_seq,
                checkpoints: r.checkpoints,
                time_ms: now,
                failed_seq: None,
                problem: None,
            }
        } else {
            tracing::error!(seq = ?r.first_bad_seq, problem = ?r.problem, "the activity log does not verify");
            Verified {
                failed_seq: Some(r.first_bad_seq.unwrap_or(0)),
                problem: r.problem.clone(),
                time_ms: now,
                ..verified::get(pool).await?.unwrap_or_else(Verified::start)
            }
        };
        self.record(&mark).await
    }

    /// The running or last full verification, whichever controller runs it. A run whose
    /// controller wrote no progress for [`full_run::ABANDONED_AFTER_MS`] shows as stopped.
    pub async fn full_run(&self, caller: &Caller) -> Result<FullRun> {
        authz::authorize(caller, Action::ReadAll)?;
        let Some(row) = full_run::get(self.db.pool()).await? else {
            return Ok(FullRun::default());
        };
        let now = jitgate_api::time::now_ms();
        let abandoned = row.running != 0 && !row.live(now);
        Ok(FullRun {
            running: row.live(now),
            total: row.total,
            walked: row.walked,
            started_ms: row.started_ms,
            report: row.report()?,
            error: if abandoned {
                Some(format!(
                    "controller {} stopped reporting progress after {} of {} entries; start it \
                     again",
                    row.controller, row.walked, row.total
                ))
            } else {
                row.error.clone()
            },
            controller: row.controller,
        })
    }

    fn key(&self) -> Result<&CheckpointKey> {
        self.key
            .as_deref()
            .ok_or_else(|| Error::Internal("no checkpoint key loaded".into()))
    }

    /// Entries matching the query, oldest first, limited to the caller's scope.
    pub async fn entries(&self, caller: &Caller, q: &ActivityQuery) -> Result<Vec<ActivityEntry>> {
        let f = Filter {
            resource_type: q.resource_type.clone(),
            vm: q.vm.clone(),
            resource_group: q.resource_group.clone(),
            caller: q.caller.clone(),
            operation: q.operation.clone(),
            outcome: q.outcome.clone(),
            from: q.from.as_deref().map(parse_time).transpose()?,
            to: q.to.as_deref().map(parse_time).transpose()?,
            after: q.after.unwrap_or(0),
            before: q.before,
            limit: q.limit.unwrap_or(1000).clamp(1, 100_000),
        };
        activity::list(self.db.pool(), &f, &caller.scopes()).await
    }

    /// Walks the whole chain and every checkpoint.
    pub async fn verify(&self, caller: &Caller) -> Result<VerifyReport> {
        authz::authorize(caller, Action::ReadAll)?;
        let keys = self.key.as_ref().map(|k| k.trusted()).unwrap_or_default();
        activity::verify(self.db.pool(), &keys).await
    }

    /// The signed checkpoints, oldest first, with the key that verifies them.
    pub async fn checkpoints(&self, caller: &Caller) -> Result<CheckpointList> {
        authz::authorize(caller, Action::ReadAll)?;
        let k = self.key()?;
        Ok(CheckpointList {
            key_id: jitgate_proto::audit::key_id(&k.key.verifying_key()),
            public_key_pem: k.public_pem.clone(),
            value: activity::checkpoints(self.db.pool()).await?,
        })
    }

    /// Signs the chain head if it moved since the last checkpoint; None when it did not.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        let k = self.key()?;
        activity::checkpoint(self.db.begin().await?, &k.key).await
    }

    /// Signs the head now: (true, the new checkpoint), or (false, the latest one) when the
    /// head has not moved since; EmptyActivityLog when there is no head to sign.
    pub async fn sign(&self, caller: &Caller) -> Result<(bool, Checkpoint)> {
        authz::authorize(caller, Action::AdministerAll)?;
        if let Some(cp) = self.checkpoint().await? {
            return Ok((true, cp));
        }
        match activity::checkpoints(self.db.pool()).await?.pop() {
            Some(cp) => Ok((false, cp)),
            None => Err(Error::refused(
                ErrorCode::EmptyActivityLog,
                "the activity log is empty: there is no head to sign",
            )),
        }
    }

    /// The whole log with its checkpoints and the public key: verifiable offline.
    pub async fn export(&self, caller: &Caller) -> Result<ActivityExport> {
        authz::authorize(caller, Action::ReadAll)?;
        let k = self.key()?;
        // Checkpoints first: every one of them is then at or below the exported head.
        let checkpoints = activity::checkpoints(self.db.pool()).await?;
        let entries = activity::all_entries(self.db.pool()).await?;
        Ok(ActivityExport {
            format: jitgate_proto::audit::EXPORT_FORMAT.into(),
            key_id: jitgate_proto::audit::key_id(&k.key.verifying_key()),
            public_key_pem: k.public_pem.clone(),
            exported_time_ms: jitgate_api::time::now_ms(),
            entries,
            checkpoints,
        })
    }
}

/// Records a replacement of the checkpoint key (`jit-controller keys replace-checkpoint`,
/// `state::replace_checkpoint_key`) in the log that key protects: who, and the old and new
/// key ids. Returns the entry's seq.
pub async fn record_key_replacement(
    db: &Db,
    actor: &Actor,
    old_key_id: &str,
    new_key_id: &str,
) -> Result<i64> {
    let a = activity::NewActivity::other(
        Operation::ReplaceCheckpointKey,
        ResourceType::CheckpointKey,
        "",
        actor,
    )
    .details(serde_json::json!({ "oldKeyId": old_key_id, "keyId": new_key_id }));
    let mut w = db.begin().await?;
    let seq = activity::log(&mut w, a).await?;
    w.commit().await?;
    Ok(seq)
}

/// The activity log as CSV (free text neutralised, `seq` a number).
pub fn to_csv(v: &[ActivityEntry]) -> Result<String> {
    csv::write(
        &[
            "seq",
            "timeUtc",
            "operation",
            "resourceType",
            "resourceGroup",
            "virtualMachine",
            "caller",
            "callerAddress",
            "outcome",
            "requestId",
            "details",
            "prevHash",
            "hash",
        ],
        v.iter().map(|e| {
            vec![
                Cell::Int(e.seq),
                Cell::from(e.time_utc.as_str()),
                Cell::from(e.operation.as_str()),
                Cell::from(e.resource_type.as_str()),
                Cell::from(e.resource_group.as_str()),
                Cell::from(e.virtual_machine.as_str()),
                Cell::from(e.caller.as_str()),
                Cell::from(e.caller_address.as_str()),
                Cell::from(e.outcome.as_str()),
                Cell::from(e.request_id.as_str()),
                Cell::Text(e.details.to_string()),
                Cell::from(e.prev_hash.as_str()),
                Cell::from(e.hash.as_str()),
            ]
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_keeps_numbers_and_neutralises_text() {
        let e = ActivityEntry {
            seq: 7,
            time_utc: "2026-01-31T17:00:00.000Z".into(),
            operation: "Initiate JIT Network Access".into(),
            resource_type: "VirtualMachine".into(),
            resource_group: "prod".into(),
            virtual_machine: "web1".into(),
            caller: "@evil".into(),
            caller_address: "-1+1".into(),
            outcome: "Succeeded".into(),
            request_id: "r".into(),
            details: serde_json::json!({"justification": "=HYPERLINK(\"x\")"}),
            prev_hash: "0".into(),
            hash: "1".into(),
        };
        let text = to_csv(&[e]).unwrap();
        let line = text.lines().nth(1).unwrap();
        assert!(line.starts_with("7,2026-01-31T17:00:00.000Z,"), "{line}");
        assert!(line.contains(",'@evil,'-1+1,"), "{line}");
    }
}
