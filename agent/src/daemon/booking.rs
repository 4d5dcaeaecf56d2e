//! Booked grants from the controller: accepted and journaled ahead of their start, kept out
//! of the maps (`crate::schedule`), and opened by the core's timer at the start. Revocation
//! or reconciliation before the start removes a booking without it ever opening.

use super::answers::{
    Out, answer_when_durable, grant_reply, high_water, raise_high_water, record, record_revocation,
    refuse_grant, reject, unix_ms, verified_grant,
};
use super::core::{Core, Msg, expired, grant_event};
use super::writer::WriteJob;
use crate::clock::BootInstant;
use crate::grant::GrantId;
use crate::grant_table;
use crate::journal::{Record, RemoveReason};
use crate::schedule::{Booking, MAX_AHEAD};
use jitgate_common::MaxConnections;
use jitgate_proto::message::{AgentMsg, Outcome, ReportedGrant, ReportedScheduledGrant};
use jitgate_proto::{AuditKind, ScheduledGrantBody, Signed};
use std::time::Duration;
use time::OffsetDateTime;

fn utc_ms(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .filter(|t| grant_table::representable(*t))
}

/// Why a booking is refused, if it is.
fn problem(core: &Core, b: &ScheduledGrantBody, now: OffsetDateTime) -> Option<String> {
    let g = &b.grant;
    if g.seq <= high_water(core) {
        return Some(format!(
            "replay: seq {} is not above the high-water mark {}",
            g.seq,
            high_water(core)
        ));
    }
    let (Some(start), Some(end)) = (utc_ms(g.start_unix_ms), utc_ms(g.end_unix_ms)) else {
        return Some("start or end time out of range".into());
    };
    let max_grant = core.cfg.max_grant + time::Duration::seconds(5);
    if start >= end {
        Some(format!("the start {start} is not before the end {end}"))
    } else if end <= now {
        Some(format!("the end time {end} has passed"))
    } else if start - now > MAX_AHEAD {
        Some(format!(
            "the start {start} is more than {} ahead",
            humantime::format_duration(MAX_AHEAD)
        ))
    } else if end - start > max_grant {
        Some(format!(
            "longer than this host's maximum grant of {}",
            humantime::format_duration(core.cfg.max_grant)
        ))
    } else {
        None
    }
}

/// `ControllerMsg::ScheduledGrant`: verified and checked like a grant, then journaled as a
/// booking and answered `Scheduled`; it opens at the later of the wall-clock start and
/// receipt + `starts_in_ms` on the boot clock.
pub(super) async fn receive(core: &mut Core, s: Signed<ScheduledGrantBody>, out: Out) {
    let Some(body) = verified_grant(core, &s, &out).await else {
        return;
    };
    book(core, body, None, out).await;
}

/// A verified booking, with its connection limit if it has one.
pub(super) async fn book(
    core: &mut Core,
    body: ScheduledGrantBody,
    limit: Option<MaxConnections>,
    out: Out,
) {
    let received = BootInstant::now();
    let now = OffsetDateTime::now_utc();
    let g = &body.grant;
    let gid = GrantId::from_bytes(*g.grant_id.as_bytes());
    let reply = grant_reply(g.grant_id, g.seq);
    if core.grants.contains(&gid) {
        // It opened already: acknowledged again, not applied again.
        let _ = out.send(reply(Outcome::AlreadyApplied)).await;
        return;
    }
    if let Some(b) = core.schedule.get(&gid) {
        let opens_unix_ms = unix_ms(b.opens(core.grants.boot_id()).to_utc().into());
        let outcome = Outcome::Scheduled {
            agent_unix_ms: unix_ms(now),
            opens_unix_ms,
        };
        let _ = out.send(reply(outcome)).await;
        return;
    }
    let times = (utc_ms(g.start_unix_ms), utc_ms(g.end_unix_ms));
    let checked = match (problem(core, &body, now), times) {
        (None, (Some(start), Some(end))) => {
            let opens = BootInstant::from_utc(start.into())
                .max(received.saturating_add(Duration::from_millis(body.starts_in_ms)));
            let expires = BootInstant::from_utc(end.into())
                .min(received.saturating_add(Duration::from_millis(g.remaining_ms)));
            if opens < expires {
                Ok((start, end, opens, expires))
            } else {
                Err("by this host's clocks it would open only after its end".to_string())
            }
        }
        (Some(reason), _) => Err(reason),
        (None, _) => Err("start or end time out of range".to_string()),
    };
    let (start, end, opens, expires) = match checked {
        Ok(t) => t,
        Err(reason) => {
            refuse_grant(core, (g.grant_id, g.seq), true, reason, &out).await;
            return;
        }
    };
    let booking = Booking {
        grant: record(core, g, gid, (start, end), expires, limit),
        opens_boot_ns: opens.0,
        seq: g.seq,
    };
    core.schedule.insert(booking.clone());
    let mut journal = Vec::from_iter(raise_high_water(core, g.seq));
    let opens_utc = OffsetDateTime::from(opens.to_utc());
    tracing::info!(grant = %gid, seq = g.seq, opens = %opens_utc, end = %end, "grant booked");
    let event = grant_event(
        AuditKind::GrantScheduled,
        &format!("controller:{}", g.requester),
        &booking.grant,
        Some(&format!("request {}; opens {opens_utc}", g.request_id)),
    );
    journal.push(Record::Scheduled(booking));
    let (job, done) = WriteJob::durable(journal, vec![event]);
    core.write(job).await;
    let scheduled = move || Outcome::Scheduled {
        agent_unix_ms: unix_ms(OffsetDateTime::now_utc()),
        opens_unix_ms: unix_ms(opens_utc),
    };
    answer_when_durable(core, done, out, vec![gid], reply, scheduled);
}

/// Opens every booking whose opening has come: into the maps and the table, journaled, and
/// reported `Applied` to the controller (now, or on the next connection).
pub(super) async fn open_due(core: &mut Core) {
    let now = BootInstant::now();
    let due = core.schedule.take_due(now.0);
    if due.is_empty() {
        return;
    }
    let mut journal = Vec::with_capacity(due.len());
    let mut events = Vec::with_capacity(due.len());
    let mut results = Vec::with_capacity(due.len());
    let mut opened = Vec::with_capacity(due.len());
    for b in due {
        let g = b.grant;
        let id = uuid::Uuid::from_bytes(g.id.to_bytes());
        if BootInstant(g.expires_boot_ns) <= now {
            let (r, e) = expired(&g, "ended before it could open");
            journal.push(r);
            events.push(e);
            continue;
        }
        match core.apply(&g) {
            Ok(()) => {
                let late = now.0.saturating_sub(b.opens_boot_ns);
                tracing::info!(grant = %g.id, late_us = late / 1000, "booked grant opened");
                let agent_unix_ms = unix_ms(OffsetDateTime::now_utc());
                results.push(AgentMsg::GrantResult {
                    grant_id: id,
                    seq: b.seq,
                    outcome: Outcome::Applied { agent_unix_ms },
                });
                events.push(grant_event(
                    AuditKind::GrantApplied,
                    "agent",
                    &g,
                    Some("opened at its booked start"),
                ));
                opened.push(g.id);
                journal.push(Record::Grant(g));
            }
            Err(e) => {
                tracing::error!(grant = %g.id, error = %e, "booked grant could not open");
                let reason = format!("cannot open at its start: {e}");
                results.push(AgentMsg::GrantResult {
                    grant_id: id,
                    seq: b.seq,
                    outcome: Outcome::Rejected {
                        reason: reason.clone(),
                    },
                });
                events.push(grant_event(
                    AuditKind::GrantRejected,
                    "agent",
                    &g,
                    Some(&reason),
                ));
                journal.push(Record::Remove {
                    id: g.id,
                    reason: RemoveReason::OpenFailed,
                });
            }
        }
    }
    let (job, done) = WriteJob::durable(journal, events);
    core.write(job).await;
    let out = core.outbox.clone();
    let me = core.me.clone();
    tokio::spawn(async move {
        if !matches!(done.await, Ok(Ok(()))) {
            // Out of the maps again; the journal still holds the booking.
            let _ = me.send(Msg::Rollback(opened)).await;
            return;
        }
        for m in results {
            let unsent = match &out {
                Some(o) => o.send(m).await.err().map(|e| e.0),
                None => Some(m),
            };
            if let Some(m) = unsent {
                let _ = me.send(Msg::Unsent(m)).await;
            }
        }
    });
}

/// `Revoke` of a booking before its start: it leaves the schedule and never opens. Returns
/// false when `gid` is not a booking.
pub(super) async fn revoke(
    core: &mut Core,
    gid: GrantId,
    seq: u64,
    reason: &str,
    out: &Out,
    reply: impl FnOnce(Outcome) -> AgentMsg + Send + 'static,
) -> bool {
    if !core.schedule.contains(&gid) {
        return false;
    }
    if seq <= high_water(core) {
        let why = format!("replay: seq {seq} is not above the high-water mark");
        let uid = uuid::Uuid::from_bytes(gid.to_bytes());
        reject(core, AuditKind::RevokeRejected, Some(uid), why.clone()).await;
        let _ = out.send(reply(Outcome::Rejected { reason: why })).await;
        return true;
    }
    let Some(b) = core.schedule.remove(&gid) else {
        return true;
    };
    let ev = grant_event(
        AuditKind::GrantRevoked,
        "controller",
        &b.grant,
        Some(&format!("{reason}; before its start, never opened")),
    );
    record_revocation(core, (gid, seq), ev, out.clone(), reply).await;
    true
}

/// Reconciliation: bookings the controller no longer lists are removed unopened; returns
/// their journal and audit records.
pub(super) fn reconcile(
    core: &mut Core,
    keep: &std::collections::BTreeSet<GrantId>,
) -> (Vec<Record>, Vec<crate::audit::AuditEvent>) {
    let gone: Vec<GrantId> = core
        .schedule
        .iter()
        .map(|b| b.grant.id)
        .filter(|id| !keep.contains(id))
        .collect();
    let mut journal = Vec::new();
    let mut events = Vec::new();
    for id in gone {
        if let Some(b) = core.schedule.remove(&id) {
            journal.push(Record::Remove {
                id,
                reason: RemoveReason::Reconciled,
            });
            events.push(grant_event(
                AuditKind::GrantRevoked,
                "controller",
                &b.grant,
                Some("reconciled: no longer active on the controller; never opened"),
            ));
        }
    }
    (journal, events)
}

/// The bookings for the controller's `ScheduledGrants` report.
pub(super) fn report(core: &Core) -> AgentMsg {
    let boot = core.grants.boot_id();
    let grants = core
        .schedule
        .iter()
        .map(|b| ReportedScheduledGrant {
            grant: ReportedGrant {
                grant_id: uuid::Uuid::from_bytes(b.grant.id.to_bytes()),
                origin: b.grant.origin.as_str().into(),
                protocol: b.grant.protocol,
                port: b.grant.port,
                source: b.grant.source,
                end_unix_ms: unix_ms(b.grant.end),
                requester: b.grant.requester.to_string(),
            },
            opens_unix_ms: unix_ms(b.opens(boot).to_utc().into()),
        })
        .collect();
    AgentMsg::ScheduledGrants { grants }
}
