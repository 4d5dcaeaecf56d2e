//! What the agent answers to the controller's signed messages, shared by grants, bookings
//! and revocations: verification (nothing in a failed message is believed), refusals (audited
//! and answered), the replay high-water mark, and answers sent only once the journal and
//! audit records are durable.

use super::core::{Core, Msg};
use super::writer::WriteJob;
use crate::audit::AuditEvent;
use crate::clock::BootInstant;
use crate::grant::{GrantId, GrantRecord, Origin};
use crate::journal::{Record, RemoveReason};
use jitgate_common::MaxConnections;
use jitgate_proto::message::{AgentMsg, Outcome};
use jitgate_proto::{AuditKind, GrantBody, Signed};
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

pub(super) type Out = mpsc::Sender<AgentMsg>;

pub(super) fn unix_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Writes `channel.json` now (through the one writer of the file) and waits for it.
pub(super) async fn save_chan(core: &Core) {
    core.marks.durable().await;
}

/// Raises the replay high-water mark in memory; returns the journal record that makes it
/// durable, to be written in the same job as the grant or revocation it belongs to (one
/// fsync for both, rather than rewriting `channel.json` for every grant).
pub(super) fn raise_high_water(core: &Core, seq: u64) -> Option<Record> {
    let raised = core.chan.lock().is_ok_and(|mut s| {
        let c = seq > s.seq_high_water;
        if c {
            s.seq_high_water = seq;
        }
        c
    });
    raised.then_some(Record::HighWater { seq })
}

/// Raises the replay high-water mark to `seq` where nothing else is journaled (a refusal,
/// a revocation of a grant already gone), writes it with `audit`, and answers `outcome` only
/// once both are on disk: a controller told the message was handled never sees the mark
/// fall back below it after a crash.
pub(super) async fn answer_with_mark(
    core: &Core,
    seq: u64,
    audit: Vec<AuditEvent>,
    out: Out,
    reply: impl FnOnce(Outcome) -> AgentMsg + Send + 'static,
    outcome: Outcome,
) {
    let journal = Vec::from_iter(raise_high_water(core, seq));
    let (job, done) = WriteJob::durable(journal, audit);
    core.write(job).await;
    answer_when_durable(core, done, out, Vec::new(), reply, move || outcome);
}

pub(super) fn high_water(core: &Core) -> u64 {
    core.chan
        .lock()
        .map(|s| s.seq_high_water)
        .unwrap_or(u64::MAX)
}

pub(super) async fn reject(core: &Core, kind: AuditKind, id: Option<uuid::Uuid>, reason: String) {
    core.write(WriteJob::audit(vec![rejection(kind, id, reason)], true))
        .await;
}

/// The audit record of a rejected controller message (logged as it is made).
fn rejection(kind: AuditKind, id: Option<uuid::Uuid>, reason: String) -> AuditEvent {
    tracing::warn!(kind = kind.as_str(), %reason, "controller message rejected");
    let mut e = AuditEvent::new(kind, "controller");
    e.grant_id = id.map(|i| i.to_string());
    e.reason = Some(reason);
    e
}

/// Verifies a signed body from the controller. On failure nothing in it is believed, not
/// even its ids: the rejection is audited as `kind` and answered with `reply`.
pub(super) async fn verified<T: jitgate_proto::signed::Body>(
    core: &Core,
    s: &Signed<T>,
    kind: AuditKind,
    out: &Out,
    reply: impl FnOnce(Outcome) -> AgentMsg,
) -> Option<T> {
    let enr = core.enrollment.as_ref()?;
    match enr.keys.verify(s, enr.agent_id) {
        Ok(b) => Some(b),
        Err(e) => {
            reject(core, kind, None, e.to_string()).await;
            let reason = e.to_string();
            let _ = out.send(reply(Outcome::Rejected { reason })).await;
            None
        }
    }
}

/// The answer about one grant (`grant_id`, `seq`).
pub(super) fn grant_reply(
    grant_id: uuid::Uuid,
    seq: u64,
) -> impl FnOnce(Outcome) -> AgentMsg + Send + 'static {
    move |outcome| AgentMsg::GrantResult {
        grant_id,
        seq,
        outcome,
    }
}

/// Verifies a signed grant or booking; a failure is answered with a result naming no grant.
pub(super) async fn verified_grant<T: jitgate_proto::signed::Body>(
    core: &Core,
    s: &Signed<T>,
    out: &Out,
) -> Option<T> {
    let reply = grant_reply(uuid::Uuid::nil(), 0);
    verified(core, s, AuditKind::GrantRejected, out, reply).await
}

/// Refuses a verified grant or booking: audited and answered; with `seen`, its seq moves
/// the high-water mark (it may not come back).
pub(super) async fn refuse_grant(
    core: &Core,
    (grant_id, seq): (uuid::Uuid, u64),
    seen: bool,
    reason: String,
    out: &Out,
) {
    let event = rejection(AuditKind::GrantRejected, Some(grant_id), reason.clone());
    let outcome = Outcome::Rejected { reason };
    if seen {
        let reply = grant_reply(grant_id, seq);
        answer_with_mark(core, seq, vec![event], out.clone(), reply, outcome).await;
        return;
    }
    core.write(WriteJob::audit(vec![event], true)).await;
    let _ = out.send(grant_reply(grant_id, seq)(outcome)).await;
}

/// Answers once the writer reports `done`: `ok()` when durable, else `Rejected` after
/// `rollback` leaves the maps, the table and the schedule again.
pub(super) fn answer_when_durable(
    core: &Core,
    done: oneshot::Receiver<Result<(), String>>,
    out: Out,
    rollback: Vec<GrantId>,
    reply: impl FnOnce(Outcome) -> AgentMsg + Send + 'static,
    ok: impl FnOnce() -> Outcome + Send + 'static,
) {
    let me = core.me.clone();
    tokio::spawn(async move {
        let outcome = match done.await {
            Ok(Ok(())) => ok(),
            _ => {
                if !rollback.is_empty() {
                    let _ = me.send(Msg::Rollback(rollback)).await;
                }
                Outcome::Rejected {
                    reason: "not durable on the agent".into(),
                }
            }
        };
        let _ = out.send(reply(outcome)).await;
    });
}

/// `Applied`, now.
pub(super) fn applied_now() -> Outcome {
    Outcome::Applied {
        agent_unix_ms: unix_ms(OffsetDateTime::now_utc()),
    }
}

/// The grant record of a signed grant body, for this boot.
pub(super) fn record(
    core: &Core,
    body: &GrantBody,
    id: GrantId,
    (start, end): (OffsetDateTime, OffsetDateTime),
    expires: BootInstant,
    max_connections: Option<MaxConnections>,
) -> GrantRecord {
    GrantRecord {
        id,
        protocol: body.protocol,
        port: body.port,
        source: body.source,
        start,
        end,
        requester: Arc::from(body.requester.as_str()),
        justification: body.justification.clone().into(),
        origin: Origin::Controller,
        boot_id: core.grants.boot_id().clone(),
        expires_boot_ns: expires.0,
        max_connections,
    }
}

/// Journals and audits a revocation from the controller, then answers `Applied` once durable.
/// Records a revocation of seq `seq` (raising the high-water mark in the same write).
pub(super) async fn record_revocation(
    core: &Core,
    (gid, seq): (GrantId, u64),
    event: AuditEvent,
    out: Out,
    reply: impl FnOnce(Outcome) -> AgentMsg + Send + 'static,
) {
    let mut journal = Vec::from_iter(raise_high_water(core, seq));
    journal.push(Record::Remove {
        id: gid,
        reason: RemoveReason::Revoked,
    });
    let (job, done) = WriteJob::durable(journal, vec![event]);
    core.write(job).await;
    answer_when_durable(core, done, out, Vec::new(), reply, applied_now);
}
