//! The controller's messages, carried out on the core: signed grants, revocations and
//! policies (verified before anything in them is believed), reconciliation after a
//! reconnect, and the status reports the controller judges the host by. The connection
//! itself is `crate::channel`'s.

use super::answers::{
    Out, answer_when_durable, answer_with_mark, applied_now, grant_reply, high_water,
    raise_high_water, record, record_revocation, refuse_grant, reject, save_chan, unix_ms,
    verified, verified_grant,
};
use super::booking;
use super::core::{Core, grant_event};
use super::flows;
use super::interfaces;
use super::keys;
use super::writer::WriteJob;
use crate::audit::AuditEvent;
use crate::clock::BootInstant;
use crate::grant::{GrantId, Origin};
use crate::grant_table;
use crate::journal::{Record, RemoveReason};
use crate::sockdiag;
use jitgate_common::{MaxConnections, Protocol};
use jitgate_proto::message::{
    AgentMsg, Outcome, ReportedGrant, ReportedLimitedGrant, bounded_hooks,
};
use jitgate_proto::{
    AuditKind, ControllerMsg, GrantBody, LEVEL_GRANT_LIMITS, LEVEL_HOOK_REPORTS, LimitedGrantBody,
    PolicyBody, RevokeBody, ScheduledGrantBody, Signed,
};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;
use time::OffsetDateTime;

/// The last signed policy from the controller, kept across restarts.
pub(super) const POLICY_FILE: &str = "policy.json";

/// Stores the signed policy as received (unless the file already holds these bytes).
fn store_policy(core: &Core, s: &Signed<PolicyBody>) {
    let path = core.cfg.state_dir.join(POLICY_FILE);
    let Ok(bytes) = serde_json::to_vec(s) else {
        return;
    };
    if std::fs::read(&path).is_ok_and(|old| old == bytes) {
        return;
    }
    if let Err(e) = std::fs::write(&path, bytes) {
        tracing::error!(error = %e, "cannot store the signed policy");
    }
}

/// At most this many listening sockets go into one status report (frames stay small).
const MAX_REPORTED_SOCKETS: usize = 1024;

/// A state-changing message from the controller; answers go to `out`.
pub(super) async fn handle(core: &mut Core, msg: ControllerMsg, out: Out) {
    match msg {
        ControllerMsg::Grant(s) => grant(core, s, out).await,
        ControllerMsg::ScheduledGrant(s) => booking::receive(core, s, out).await,
        ControllerMsg::LimitedGrant(s) => limited_grant(core, s, out).await,
        ControllerMsg::Revoke(s) => revoke(core, s, out).await,
        ControllerMsg::Policy(s) => policy(core, s, out).await,
        ControllerMsg::Active { grant_ids, .. } => reconcile(core, grant_ids, out).await,
        ControllerMsg::KeyAnnouncement(s) => keys::announcement(core, s, out).await,
        ControllerMsg::KeyRetirement(s) => keys::retirement(core, s, out).await,
        ControllerMsg::Welcome { .. }
        | ControllerMsg::Settings { .. }
        | ControllerMsg::Ping { .. }
        | ControllerMsg::AuditAck { .. }
        | ControllerMsg::AuditResend { .. }
        | ControllerMsg::Closing { .. }
        | ControllerMsg::Certificate { .. }
        | ControllerMsg::RenewalRefused { .. }
        | ControllerMsg::Level { .. } => {}
    }
}

async fn grant(core: &mut Core, s: Signed<GrantBody>, out: Out) {
    let Some(body) = verified_grant(core, &s, &out).await else {
        return;
    };
    open_grant(core, body, None, out).await;
}

/// A grant with a connection limit: opened like a grant, or booked like a booking.
async fn limited_grant(core: &mut Core, s: Signed<LimitedGrantBody>, out: Out) {
    let Some(body) = verified_grant(core, &s, &out).await else {
        return;
    };
    let limit = Some(body.max_connections);
    match body.starts_in_ms {
        None => open_grant(core, body.grant, limit, out).await,
        Some(starts_in_ms) => {
            let b = ScheduledGrantBody {
                grant: body.grant,
                starts_in_ms,
            };
            booking::book(core, b, limit, out).await;
        }
    }
}

/// A verified grant to open now, with its connection limit if it has one.
async fn open_grant(core: &mut Core, body: GrantBody, limit: Option<MaxConnections>, out: Out) {
    let gid = GrantId::from_bytes(*body.grant_id.as_bytes());
    let ids = (body.grant_id, body.seq);
    let reply = grant_reply(body.grant_id, body.seq);
    if core.grants.contains(&gid) {
        // A redelivery: acknowledged again, not applied again.
        let _ = out.send(reply(Outcome::AlreadyApplied)).await;
        return;
    }
    if core.schedule.contains(&gid) {
        // Booked under this id: it opens at its start, not because of a plain grant.
        let reason = "this grant is booked; it opens at its start".to_string();
        refuse_grant(core, ids, false, reason, &out).await;
        return;
    }
    let now = OffsetDateTime::now_utc();
    let end =
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(body.end_unix_ms) * 1_000_000).ok();
    let problem = if body.seq <= high_water(core) {
        Some(format!(
            "replay: seq {} is not above the high-water mark {}",
            body.seq,
            high_water(core)
        ))
    } else {
        match end {
            None => Some("end time out of range".to_string()),
            Some(e) if e <= now => Some(format!("the end time {e} has passed")),
            Some(e) if (e - now) > core.cfg.max_grant + time::Duration::seconds(5) => {
                Some(format!(
                    "longer than this host's maximum grant of {}",
                    humantime::format_duration(core.cfg.max_grant)
                ))
            }
            Some(_) => None,
        }
    };
    if let Some(reason) = problem {
        refuse_grant(core, ids, true, reason, &out).await;
        return;
    }
    let end = end.unwrap_or(now);
    // The earlier of the wall-clock end and receipt + the time left the controller counted.
    let by_wall = BootInstant::from_utc(end.into());
    let by_boot = BootInstant::now().saturating_add(Duration::from_millis(body.remaining_ms));
    let expires = by_wall.min(by_boot);
    // A start the table cannot hold (centuries away) reads as now, like one out of range.
    let start =
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(body.start_unix_ms) * 1_000_000)
            .ok()
            .filter(|t| grant_table::representable(*t))
            .unwrap_or(now);
    let g = record(core, &body, gid, (start, end), expires, limit);
    if let Err(e) = core.apply(&g) {
        let _ = out
            .send(reply(Outcome::Rejected {
                reason: format!("cannot apply: {e}"),
            }))
            .await;
        return;
    }
    let mut journal = Vec::from_iter(raise_high_water(core, body.seq));
    let actor = format!("controller:{}", body.requester);
    let event = grant_event(
        AuditKind::GrantApplied,
        &actor,
        &g,
        Some(&format!("request {}", body.request_id)),
    );
    journal.push(Record::Grant(g));
    let (job, done) = WriteJob::durable(journal, vec![event]);
    core.write(job).await;
    answer_when_durable(core, done, out, vec![gid], reply, applied_now);
}

async fn revoke(core: &mut Core, s: Signed<RevokeBody>, out: Out) {
    let Some(body) = verified(core, &s, AuditKind::RevokeRejected, &out, |outcome| {
        AgentMsg::RevokeResult {
            grant_id: uuid::Uuid::nil(),
            seq: 0,
            outcome,
        }
    })
    .await
    else {
        return;
    };
    let (bid, bseq) = (body.grant_id, body.seq);
    let reply = move |outcome| AgentMsg::RevokeResult {
        grant_id: bid,
        seq: bseq,
        outcome,
    };
    let gid = GrantId::from_bytes(*body.grant_id.as_bytes());
    if booking::revoke(core, gid, body.seq, &body.reason, &out, reply).await {
        return;
    }
    let Some(origin) = core.grants.get(&gid).map(|g| g.origin()) else {
        // Already gone (ended, or revoked before): nothing to do, say so again.
        answer_with_mark(
            core,
            body.seq,
            Vec::new(),
            out,
            reply,
            Outcome::AlreadyApplied,
        )
        .await;
        return;
    };
    if origin != Origin::Controller {
        let reason = "local grants are revoked locally, not by the controller".to_string();
        reject(
            core,
            AuditKind::RevokeRejected,
            Some(body.grant_id),
            reason.clone(),
        )
        .await;
        let _ = out.send(reply(Outcome::Rejected { reason })).await;
        return;
    }
    if body.seq <= high_water(core) {
        let reason = format!("replay: seq {} is not above the high-water mark", body.seq);
        reject(
            core,
            AuditKind::RevokeRejected,
            Some(body.grant_id),
            reason.clone(),
        )
        .await;
        let _ = out.send(reply(Outcome::Rejected { reason })).await;
        return;
    }
    let Some((g, cut)) = core.withdraw(&[gid]).pop() else {
        return;
    };
    let mut ev = grant_event(
        AuditKind::GrantRevoked,
        "controller",
        &g,
        Some(&body.reason),
    );
    if cut > 0 {
        ev.reason = Some(format!("{}; {cut} session(s) closed", body.reason));
    }
    record_revocation(core, (gid, body.seq), ev, out, reply).await;
}

async fn policy(core: &mut Core, s: Signed<PolicyBody>, out: Out) {
    let Some(body) = verified(core, &s, AuditKind::PolicyRejected, &out, |outcome| {
        AgentMsg::PolicyResult { seq: 0, outcome }
    })
    .await
    else {
        return;
    };
    if body.seq == 0 {
        // Version 0: the VM has no JIT policy on the controller. The local configuration
        // stays the protected set; an empty list here must not open anything.
        let _ = out
            .send(AgentMsg::PolicyResult {
                seq: 0,
                outcome: Outcome::AlreadyApplied,
            })
            .await;
        return;
    }
    let current = core.chan.lock().map(|c| c.policy_seq).unwrap_or(u64::MAX);
    if body.seq < current {
        let reason = format!(
            "policy version {} is older than the applied {current}",
            body.seq
        );
        reject(core, AuditKind::PolicyRejected, None, reason.clone()).await;
        let _ = out
            .send(AgentMsg::PolicyResult {
                seq: body.seq,
                outcome: Outcome::Rejected { reason },
            })
            .await;
        return;
    }
    let mut ports = body.ports.clone();
    ports.sort();
    ports.dedup();
    if body.seq == current && ports == core.cfg.protected {
        // The same policy, perhaps signed by another key (after a key rotation): kept as
        // received, so that a restart still verifies it once the old key is retired.
        store_policy(core, &s);
        let _ = out
            .send(AgentMsg::PolicyResult {
                seq: body.seq,
                outcome: Outcome::AlreadyApplied,
            })
            .await;
        return;
    }
    if let Err(e) = core.dp.set_protected(&ports) {
        let _ = out
            .send(AgentMsg::PolicyResult {
                seq: body.seq,
                outcome: Outcome::Rejected {
                    reason: e.to_string(),
                },
            })
            .await;
        return;
    }
    let before = std::mem::replace(&mut core.cfg.protected, ports);
    // Kept so that a restart while the controller is unreachable keeps this policy.
    store_policy(core, &s);
    if let Ok(mut c) = core.chan.lock() {
        c.policy_seq = body.seq;
    }
    save_chan(core).await;
    let mut events = flows::adopt_sessions(&mut core.dp, &core.cfg.protected);
    let mut e = AuditEvent::new(AuditKind::PolicyApplied, "controller");
    e.reason = Some(format!(
        "version {}: protected {} (was {})",
        body.seq,
        core.cfg
            .protected
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        before
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    events.insert(0, e);
    core.write(WriteJob::audit(events, true)).await;
    let _ = out
        .send(AgentMsg::PolicyResult {
            seq: body.seq,
            outcome: Outcome::Applied {
                agent_unix_ms: unix_ms(OffsetDateTime::now_utc()),
            },
        })
        .await;
    // The protected set changed: the controller's view (and compliance) follows at once.
    for m in heartbeat(core) {
        let _ = out.send(m).await;
    }
}

/// After a (re)connect: controller grants the controller no longer lists were revoked or
/// superseded while we were away; remove them. Then report everything held.
async fn reconcile(core: &mut Core, active: Vec<uuid::Uuid>, out: Out) {
    let keep: BTreeSet<GrantId> = active
        .iter()
        .map(|u| GrantId::from_bytes(*u.as_bytes()))
        .collect();
    let gone: Vec<GrantId> = core
        .grants
        .iter()
        .filter(|g| g.origin() == Origin::Controller && !keep.contains(&g.id()))
        .map(|g| g.id())
        .collect();
    let (mut journal, mut events) = booking::reconcile(core, &keep);
    for (g, cut) in core.withdraw(&gone) {
        journal.push(Record::Remove {
            id: g.id,
            reason: RemoveReason::Reconciled,
        });
        events.push(grant_event(
            AuditKind::GrantRevoked,
            "controller",
            &g,
            Some(&format!(
                "reconciled: no longer active on the controller; {cut} session(s) closed"
            )),
        ));
    }
    if !events.is_empty() {
        core.write(WriteJob {
            journal,
            audit: events,
            durable: true,
            compact: None,
            done: None,
        })
        .await;
    }
    let _ = out.send(grants_report(core)).await;
    let _ = out.send(booking::report(core)).await;
}

/// Every open grant, controller and local alike, as the controller is told them: at each
/// connection (after `Active`) and as soon as a local break-glass grant is made, with each
/// grant's connection limit to a controller at [`LEVEL_GRANT_LIMITS`] or later (an older
/// one could not decode it: docs/protocol.md "Levels").
pub(super) fn grants_report(core: &Core) -> AgentMsg {
    let grants = core.grants.iter().map(|g| ReportedLimitedGrant {
        grant: ReportedGrant {
            grant_id: uuid::Uuid::from_bytes(g.id().to_bytes()),
            origin: g.origin().as_str().into(),
            protocol: g.protocol(),
            port: g.port(),
            source: g.source(),
            end_unix_ms: unix_ms(g.end()),
            requester: g.requester().to_string(),
        },
        max_connections: g.max_connections(),
    });
    if core.controller_level.load(Ordering::Relaxed) >= LEVEL_GRANT_LIMITS {
        AgentMsg::GrantsWithLimits {
            grants: grants.collect(),
        }
    } else {
        AgentMsg::Grants {
            grants: grants.map(|g| g.grant).collect(),
        }
    }
}

/// The status report with the state of enforcement (docs/protocol.md), after the hook
/// report (`AgentMsg::Hooks`) for a controller at level 7 or later; an older controller
/// has the hooks' problems in words among the report's problems instead (never both).
pub(super) fn heartbeat(core: &mut Core) -> Vec<AgentMsg> {
    let mut listening: Vec<(Protocol, String)> = Vec::new();
    for (proto, socks) in [
        (Protocol::Tcp, sockdiag::listening(|_| true)),
        (Protocol::Udp, sockdiag::listening_udp(|_| true)),
    ] {
        match socks {
            Ok(v) => listening.extend(v.into_iter().map(|a| (proto, a.to_string()))),
            Err(e) => {
                tracing::warn!(protocol = %proto, error = %e, "cannot list listening sockets")
            }
        }
    }
    listening.sort();
    listening.dedup();
    listening.truncate(MAX_REPORTED_SOCKETS);
    let (audit_head, audit_seq) = core.head.lock().map(|h| h.clone()).unwrap_or_default();
    let attached = core.interfaces.attached();
    let health = core.dp.health(attached.keys().map(String::as_str));
    let mut out = Vec::with_capacity(2);
    let mut problems = health.problems.clone();
    if core.controller_level.load(Ordering::Relaxed) >= LEVEL_HOOK_REPORTS {
        out.push(AgentMsg::Hooks {
            interfaces: bounded_hooks(health.hooks.iter().map(|h| h.to_wire())),
        });
    } else {
        problems.extend(health.hook_problems());
    }
    out.push(AgentMsg::Status(Box::new(
        jitgate_proto::message::StatusReport {
            heartbeat: jitgate_proto::message::Heartbeat {
                interfaces: attached
                    .iter()
                    .map(|(n, a)| (n.clone(), a.mode.as_str().to_string()))
                    .collect(),
                protected: core.cfg.protected.clone(),
                listening,
                active_grants: core.grants.len() as u32,
                audit_head,
                audit_seq,
            },
            addresses: interfaces::addresses(),
            problems,
            agent_unix_ms: unix_ms(OffsetDateTime::now_utc()),
        },
    )));
    out
}
