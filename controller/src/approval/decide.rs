//! Decisions on a pending request: approve (counted toward its rule's current stage, or an
//! admin's emergency approval), deny, cancel, and the timeout.
//!
//! Each runs in one write transaction, which begins by locking the counters row (every write
//! transaction of every controller on the database does): the request is read, checked
//! still pending, decided and recounted under that lock, so of several racing decisions
//! exactly one ends the request and the others get `409 RequestNotPending` and change
//! nothing, on SQLite and on PostgreSQL alike.

use std::collections::BTreeMap;

use jitgate_api::{ActivityOutcome, Decision, ErrorCode, Operation, RequestView, StatusReason};

use crate::approval::rule::{self, NotCounted, Who};
use crate::authz::{self, Action, Actor, Caller};
use crate::error::{Error, Result};
use crate::lifecycle::initiate::write_grants;
use crate::lifecycle::plan::{self, Start};
use crate::outbox::event;
use crate::request::MAX_JUSTIFICATION;
use crate::store::activity::{self, NewActivity};
use crate::store::approvals::{self, NewDecision};
use crate::store::backend::Rows;
use crate::store::db::Db;
use crate::store::grants::GrantKey;
use crate::store::notify;
use crate::store::requests::{self, Pending};
use crate::store::snapshot;
use crate::store::write::WriteTx;

/// What the caller decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Approve {
        reason: Option<String>,
    },
    /// An admin's emergency approval: completes the request where every rule allows it.
    Emergency {
        reason: String,
    },
    Deny {
        reason: String,
    },
    Cancel,
}

impl Verdict {
    /// From the API's body: `emergency` only with approve; a reason where one is required.
    pub fn approve(reason: Option<String>, emergency: bool) -> Result<Verdict> {
        let reason = clean(reason)?;
        if emergency {
            let reason = reason.ok_or_else(|| {
                Error::refused(
                    ErrorCode::InvalidRequest,
                    "an emergency approval needs a reason",
                )
            })?;
            return Ok(Verdict::Emergency { reason });
        }
        Ok(Verdict::Approve { reason })
    }

    pub fn deny(reason: Option<String>) -> Result<Verdict> {
        let reason = clean(reason)?
            .ok_or_else(|| Error::refused(ErrorCode::InvalidRequest, "a denial needs a reason"))?;
        Ok(Verdict::Deny { reason })
    }

    fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Approve { reason } => reason.as_deref(),
            Verdict::Emergency { reason } | Verdict::Deny { reason } => Some(reason),
            Verdict::Cancel => None,
        }
    }
}

/// A reason trimmed; empty is none; too long is refused.
fn clean(reason: Option<String>) -> Result<Option<String>> {
    let Some(r) = reason else { return Ok(None) };
    let r = r.trim().to_string();
    if r.len() > MAX_JUSTIFICATION {
        return Err(Error::refused(
            ErrorCode::InvalidRequest,
            format!("reason is longer than {MAX_JUSTIFICATION} bytes"),
        ));
    }
    Ok((!r.is_empty()).then_some(r))
}

/// Decides on request `id` (see the module documentation); returns the request after.
pub async fn decide(db: &Db, caller: &Caller, id: &str, verdict: Verdict) -> Result<RequestView> {
    let mut w = db.begin().await?;
    let req = match requests::pending(w.conn(), id).await? {
        None => return Err(not_found(id)),
        Some(None) => return Err(not_pending(&mut w, caller, id).await),
        Some(Some(p)) => p,
    };
    let vms = req.vms();
    if !vms.iter().any(|(vm, g)| authz::sees_vm(caller, vm, g)) {
        return Err(not_found(id));
    }
    if req.deadline_ms <= w.now {
        // Its time ran out before this decision: it times out now, and the decision finds
        // it no longer pending.
        let event = time_out(&mut w, &req).await?;
        let rows = notify::event_rows(&mut w, &[event])?;
        w.commit_with(vec![rows]).await?;
        return Err(Error::refused(
            ErrorCode::RequestNotPending,
            format!("request {id} timed out waiting for approval"),
        ));
    }
    let me = caller.principal_id();
    let decisions = approvals::of_request(w.conn(), id).await?;
    let counted = approvals::counted(&decisions);
    let who = Who {
        principal: &me,
        groups: &caller.groups,
    };
    let mut complete = false;
    let (decision, counted_for, emergency, operation) = match &verdict {
        Verdict::Approve { .. } => {
            for (vm, group) in &vms {
                authz::authorize(caller, Action::Decide { vm, group })?;
            }
            if !me.may_approve() {
                return Err(Error::refused(
                    ErrorCode::Forbidden,
                    format!("{me} can never approve"),
                ));
            }
            let at = rule::attribute(&req.rules, &counted, &who, &req.principal)
                .map_err(|e| not_counted(e, &me, id))?;
            let mut after = counted.clone();
            after.push(rule::Counted {
                principal: me.to_string(),
                rule: at.0,
                stage: at.1,
            });
            complete = rule::complete(&rule::progress(&req.rules, &after));
            (Decision::Approved, Some(at), false, Operation::Approve)
        }
        Verdict::Emergency { .. } => {
            for (vm, group) in &vms {
                authz::authorize(caller, Action::EmergencyApprove { vm, group })?;
            }
            if !req.rules.iter().all(|r| r.allow_emergency) {
                return Err(Error::refused(
                    ErrorCode::Forbidden,
                    format!(
                        "request {id} is under an approval rule that does not allow emergency \
                         approval"
                    ),
                ));
            }
            complete = true;
            (Decision::Approved, None, true, Operation::Approve)
        }
        Verdict::Deny { .. } => {
            for (vm, group) in &vms {
                authz::authorize(caller, Action::Decide { vm, group })?;
            }
            if me.to_string() == req.principal {
                return Err(Error::refused(
                    ErrorCode::Forbidden,
                    format!("{me} made request {id}: cancel it instead of denying it"),
                ));
            }
            if !rule::named_in_current(&req.rules, &counted, &who) {
                return Err(Error::refused(
                    ErrorCode::Forbidden,
                    format!("{me} is not an approver of request {id}'s current stage"),
                ));
            }
            (Decision::Rejected, None, false, Operation::Deny)
        }
        Verdict::Cancel => {
            for (vm, group) in &vms {
                authz::authorize(
                    caller,
                    Action::Revoke {
                        owner: &req.principal,
                        vm,
                        group,
                    },
                )?;
            }
            (Decision::Cancelled, None, false, Operation::Cancel)
        }
    };
    let me_str = me.to_string();
    approvals::insert(
        &mut w,
        &NewDecision {
            request_id: id,
            counted_for,
            principal: &me_str,
            decision: decision.clone(),
            reason: verdict.reason(),
            emergency,
        },
    )
    .await?;
    let actor = caller.actor();
    let mut outcome = ActivityOutcome::Succeeded;
    let mut details = serde_json::json!({
        "decision": decision.as_str(),
        "approver": me_str,
        "reason": verdict.reason(),
        "emergency": emergency,
        "stage": counted_for.map(|(_, s)| s + 1),
        "requestor": req.requestor,
        "justification": req.justification,
    });
    let mut supersedes = Vec::new();
    let mut tables = Vec::new();
    match decision {
        Decision::Rejected => {
            requests::end_pending(&mut w, id, &StatusReason::Rejected).await?;
        }
        Decision::Cancelled => {
            requests::end_pending(&mut w, id, &StatusReason::Cancelled).await?;
        }
        _ if complete => {
            let (approved, rows) = open(&mut w, &req, emergency).await?;
            tables = rows;
            if !approved.denial.is_empty() {
                outcome = ActivityOutcome::Denied;
            }
            if let Some(d) = details.as_object_mut() {
                d.insert("complete".into(), true.into());
                d.insert(
                    "denialReasons".into(),
                    serde_json::to_value(&approved.denial)?,
                );
            }
            supersedes = approved.supersedes;
        }
        _ => {}
    }
    if let Some(d) = details.as_object_mut() {
        d.insert("supersedes".into(), serde_json::to_value(&supersedes)?);
    }
    for (vm, group) in &vms {
        activity::log(
            &mut w,
            NewActivity::vm(operation.clone(), group, vm, &actor)
                .outcome(outcome.clone())
                .request(id)
                .details(details.clone()),
        )
        .await?;
    }
    let after = requests::load(w.conn(), id)
        .await?
        .ok_or_else(|| Error::Internal(format!("request {id} vanished while decided")))?;
    let events = decision_events(
        &after,
        &req,
        &verdict,
        &me_str,
        (&counted, counted_for),
        complete,
        w.now,
    );
    tables.push(notify::event_rows(&mut w, &events)?);
    w.commit_with(tables).await?;
    tracing::info!(
        request = id,
        decision = decision.as_str(),
        approver = %me,
        emergency,
        complete,
        "approval decision"
    );
    Ok(after)
}

/// The notification events of a decision: denied (by the approver, or by the policy at the
/// final approval), cancelled, approved (emergency flagged), or the next stage pending.
fn decision_events(
    after: &RequestView,
    req: &Pending,
    verdict: &Verdict,
    me: &str,
    (before, counted_for): (&[rule::Counted], Option<(usize, usize)>),
    complete: bool,
    now: i64,
) -> Vec<jitgate_notify::Event> {
    let owner = req.principal.as_str();
    let reasons = || verdict.reason().map(str::to_string).into_iter().collect();
    match verdict {
        Verdict::Deny { .. } => vec![event::denied(
            after,
            owner,
            Some(event::principal(me)),
            reasons(),
            now,
        )],
        Verdict::Cancel => vec![event::cancelled(after, owner, event::principal(me), now)],
        Verdict::Approve { .. } | Verdict::Emergency { .. } if complete => {
            if !after.denial_reasons.is_empty() {
                return vec![event::denied(
                    after,
                    owner,
                    None,
                    event::policy_reasons(after),
                    now,
                )];
            }
            let emergency = matches!(verdict, Verdict::Emergency { .. });
            let mut by: Vec<jitgate_notify::event::Principal> = Vec::new();
            for a in &after.approvals {
                if a.decision == Decision::Approved && !by.iter().any(|p| p.id == a.approver) {
                    by.push(event::principal(&a.approver));
                }
            }
            vec![event::approved(after, owner, by, emergency, reasons(), now)]
        }
        Verdict::Approve { .. } | Verdict::Emergency { .. } => {
            // Counted toward a stage: the approvers of a stage that has just begun are told.
            let Some(at) = counted_for else {
                return Vec::new();
            };
            let mut counted = before.to_vec();
            counted.push(rule::Counted {
                principal: me.to_string(),
                rule: at.0,
                stage: at.1,
            });
            let was = rule::pending_stages(&req.rules, before);
            let now_stages = rule::pending_stages(&req.rules, &counted);
            let new: Vec<_> = now_stages
                .into_iter()
                .filter(|s| {
                    !was.iter()
                        .any(|w| w.stage == s.stage && w.approvers == s.approvers)
                })
                .collect();
            event::pending(after, owner, &new, now)
        }
    }
}

/// Opens a pending request's ports at its final approval (re-checked against the policy of
/// this moment; refused: the request is Denied with the policy's reasons).
/// Returns the plan and the rows the commit inserts.
async fn open(
    w: &mut WriteTx,
    req: &Pending,
    emergency: bool,
) -> Result<(plan::Approved, Vec<Rows>)> {
    let names: Vec<&str> = req.vms().into_iter().map(|(vm, _)| vm).collect();
    let mut keys = Vec::new();
    for p in &req.ports {
        let number = u16::try_from(p.number).map_err(Error::corrupt)?;
        for proto in p.protocol.expand() {
            for prefix in p.prefixes.split(',') {
                keys.push(GrantKey {
                    vm: p.vm.clone(),
                    port: number,
                    protocol: *proto,
                    prefix: prefix.to_string(),
                });
            }
        }
    }
    keys.sort();
    keys.dedup();
    let mut snap = snapshot::read(w, &names, &keys, &[]).await?;
    // A grant with a connection limit needs the VM's agent to enforce it (plan::limitable).
    snap.agent_levels = crate::store::agents::levels(w, &names).await?;
    let (request_seq, outbox_seq) = w.sequences();
    let start = Start {
        now: w.now,
        request_seq,
        outbox_seq,
        max_pending: 0,
    };
    let approved = plan::approve(&snap, req, start, &mut crate::ids::new_guid)?;
    let tables = write_grants(w, &approved.plan).await?;
    requests::set_decided(w, &req.id, emergency, &approved.denial).await?;
    for p in &approved.ports {
        requests::set_port(
            w,
            &req.id,
            p.idx,
            &p.status,
            p.reason.as_ref(),
            p.window,
            p.max_connections,
        )
        .await?;
    }
    Ok((approved, tables))
}

/// Ends a pending request whose deadline passed: Denied / ApprovalTimedOut. Returns its
/// notification event.
async fn time_out(w: &mut WriteTx, req: &Pending) -> Result<jitgate_notify::Event> {
    approvals::insert(
        w,
        &NewDecision {
            request_id: &req.id,
            counted_for: None,
            principal: &Actor::controller().name,
            decision: Decision::TimedOut,
            reason: None,
            emergency: false,
        },
    )
    .await?;
    requests::end_pending(w, &req.id, &StatusReason::ApprovalTimedOut).await?;
    let mut by_vm: BTreeMap<(&str, &str), ()> = BTreeMap::new();
    for (vm, group) in req.vms() {
        by_vm.insert((vm, group), ());
    }
    for (vm, group) in by_vm.keys() {
        activity::log(
            w,
            NewActivity::vm(Operation::ApprovalTimedOut, group, vm, &Actor::controller())
                .request(&req.id)
                .details(serde_json::json!({
                    "statusReason": StatusReason::ApprovalTimedOut.as_str(),
                    "deadlineUtc": jitgate_api::time::format(req.deadline_ms),
                    "requestor": req.requestor,
                    "justification": req.justification,
                })),
        )
        .await?;
    }
    let after = requests::load(w.conn(), &req.id)
        .await?
        .ok_or_else(|| Error::Internal(format!("request {} vanished while timed out", req.id)))?;
    Ok(event::timed_out(&after, &req.principal, w.now))
}

/// Times out every pending request whose deadline is at or before `now` (the sweep; also
/// safe from several controllers at once: each request is rechecked under the lock).
/// Returns how many timed out.
pub async fn time_out_due(db: &Db, now: i64) -> Result<usize> {
    let due = requests::pending_ids(db.pool(), Some(now), 500).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut w = db.begin().await?;
    let mut n = 0;
    let mut events = Vec::new();
    for id in &due {
        if let Some(Some(req)) = requests::pending(w.conn(), id).await?
            && req.deadline_ms <= now
        {
            events.push(time_out(&mut w, &req).await?);
            n += 1;
        }
    }
    let rows = notify::event_rows(&mut w, &events)?;
    w.commit_with(vec![rows]).await?;
    Ok(n)
}

fn not_found(id: &str) -> Error {
    Error::refused(ErrorCode::RequestNotFound, format!("no request {id}"))
}

/// The refusal for a request that exists but is not pending (or not visible: not found).
async fn not_pending(w: &mut WriteTx, caller: &Caller, id: &str) -> Error {
    match requests::load(w.conn(), id).await {
        Ok(Some(rec))
            if rec
                .virtual_machines
                .iter()
                .any(|v| authz::sees_vm(caller, &v.id, &v.resource_group)) =>
        {
            Error::refused(
                ErrorCode::RequestNotPending,
                format!(
                    "request {id} is not waiting for a decision (status {})",
                    rec.status
                ),
            )
        }
        Ok(_) => not_found(id),
        Err(e) => e,
    }
}

fn not_counted(e: NotCounted, me: &jitgate_api::PrincipalId, id: &str) -> Error {
    match e {
        NotCounted::AlreadyApproved => Error::refused(
            ErrorCode::AlreadyDecided,
            format!("{me} already approved request {id}: one principal counts once"),
        ),
        NotCounted::SelfApproval => Error::refused(
            ErrorCode::Forbidden,
            format!("{me} made request {id} and its rule does not allow self-approval"),
        ),
        NotCounted::NotNamed => Error::refused(
            ErrorCode::Forbidden,
            format!(
                "{me} is not an approver of request {id}'s current stage (an admin is not an \
                 implicit approver)"
            ),
        ),
    }
}
