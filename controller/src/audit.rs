//! The activity log as callers see it: filtered lists, verification, signed checkpoints and
//! the export for offline verification (docs/controller.md, "Activity log").

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use jitgate_api::{
    ActivityEntry, ActivityExport, ActivityQuery, Checkpoint, CheckpointList, ErrorCode,
    VerifyReport,
};

use crate::authz::{self, Action, Caller};
use crate::csv::{self, Cell};
use crate::error::{Error, Result};
use crate::input::parse_time;
use crate::store::activity::{self, Filter};
use crate::store::db::Db;

/// The controller's checkpoint key: its Ed25519 key from the state directory (never from the
/// database, which a writer could change), and the public half as agents and auditors pin it.
pub struct CheckpointKey {
    pub key: SigningKey,
    /// SPKI PEM.
    pub public_pem: String,
}

#[derive(Clone)]
pub struct Audit {
    db: Db,
    /// None where this controller signs nothing (administration commands).
    key: Option<Arc<CheckpointKey>>,
}

impl Audit {
    pub fn new(db: Db, key: Option<CheckpointKey>) -> Audit {
        Audit {
            db,
            key: key.map(Arc::new),
        }
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
        let vk = self.key.as_ref().map(|k| k.key.verifying_key());
        activity::verify(self.db.pool(), vk.as_ref()).await
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
