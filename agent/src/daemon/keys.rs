//! A grant-signing key rotation from the controller (docs/protocol.md, "Key rotation"): the
//! announced key is kept next to the pinned one; a retirement pins the successor and the
//! retired key is refused from then on. Each step is audited and answered with `KeyResult`.

use super::answers::{Out, reject};
use super::core::Core;
use super::writer::WriteJob;
use crate::audit::AuditEvent;
use crate::keyring::{Change, KeyringError};
use jitgate_proto::message::{AgentMsg, Outcome};
use jitgate_proto::{AuditKind, KeyAnnouncementBody, KeyId, KeyRetirementBody, KeyStep, Signed};

/// `ControllerMsg::KeyAnnouncement`.
pub(super) async fn announcement(core: &mut Core, s: Signed<KeyAnnouncementBody>, out: Out) {
    // For the answer only: an unverified id is never believed, just echoed.
    let claimed = s.unverified().map_or(KeyId([0; 8]), |b| b.key_id);
    let Some(enr) = core.enrollment.as_mut() else {
        return;
    };
    let r = enr.keys.announce(&s);
    answer(core, KeyStep::Announced, claimed, r, out).await;
}

/// `ControllerMsg::KeyRetirement`.
pub(super) async fn retirement(core: &mut Core, s: Signed<KeyRetirementBody>, out: Out) {
    let claimed = s.unverified().map_or(KeyId([0; 8]), |b| b.retired);
    let Some(enr) = core.enrollment.as_mut() else {
        return;
    };
    let r = enr.keys.retire(&s);
    answer(core, KeyStep::Retired, claimed, r, out).await;
}

async fn answer(
    core: &Core,
    step: KeyStep,
    claimed: KeyId,
    r: Result<(KeyId, Change), KeyringError>,
    out: Out,
) {
    let (key_id, outcome) = match r {
        Ok((id, Change::Changed)) => {
            let (kind, what) = match step {
                KeyStep::Announced => (
                    AuditKind::KeyAnnounced,
                    "announced; accepted next to the pinned key",
                ),
                KeyStep::Retired => (AuditKind::KeyRetired, "retired; its successor is pinned"),
            };
            tracing::info!(key = %id, step = step.as_str(), "grant-signing key rotation step applied");
            let mut e = AuditEvent::new(kind, "controller");
            e.reason = Some(format!("grant-signing key {id} {what}"));
            core.write(WriteJob::audit(vec![e], true)).await;
            (
                id,
                Outcome::Applied {
                    agent_unix_ms: super::answers::unix_ms(time::OffsetDateTime::now_utc()),
                },
            )
        }
        Ok((id, Change::Unchanged)) => (id, Outcome::AlreadyApplied),
        Err(e) => {
            let reason = format!("key {} {}: {e}", claimed, step.as_str());
            reject(core, AuditKind::KeyRejected, None, reason.clone()).await;
            (claimed, Outcome::Rejected { reason })
        }
    };
    let _ = out
        .send(AgentMsg::KeyResult {
            key_id,
            step,
            outcome,
        })
        .await;
}
