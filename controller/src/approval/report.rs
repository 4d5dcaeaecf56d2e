//! What approvers read: the requests waiting for their decision, and the approvals report
//! (every decision, who, when, stage, reason, emergency or not).

use jitgate_api::{ApprovalEntry, ApprovalsQuery, ErrorCode, RequestView};

use crate::approval::rule::{self, Who};
use crate::authz::{self, Action, Caller};
use crate::csv::Cell;
use crate::error::{Error, Result};
use crate::input::{parse_time, validate_name};
use crate::store::approvals::{self, Filter};
use crate::store::db::Db;
use crate::store::{inventory, requests};

/// Most pending requests examined for one caller's waiting list.
const MAX_PENDING_SCANNED: i64 = 10_000;
/// Default and largest number of report rows.
const DEFAULT_LIMIT: i64 = 1000;
const MAX_LIMIT: i64 = 100_000;

/// The requests whose current stage the caller may approve now: named in it (directly or
/// through a group), in scope for every VM, not already counted, and not their own unless
/// the rule allows self-approval. Oldest first.
pub async fn waiting(db: &Db, caller: &Caller) -> Result<Vec<RequestView>> {
    let me = caller.principal_id();
    if !me.may_approve() {
        return Ok(Vec::new());
    }
    let who = Who {
        principal: &me,
        groups: &caller.groups,
    };
    let mut conn = db.pool().acquire().await?;
    let mut out = Vec::new();
    for id in requests::pending_ids(&mut *conn, None, MAX_PENDING_SCANNED).await? {
        let Some(Some(req)) = requests::pending(&mut conn, &id).await? else {
            continue;
        };
        if !req
            .vms()
            .iter()
            .all(|(vm, group)| authz::authorize(caller, Action::Decide { vm, group }).is_ok())
        {
            continue;
        }
        let counted = approvals::counted(&approvals::of_request(&mut conn, &id).await?);
        if rule::attribute(&req.rules, &counted, &who, &req.principal).is_err() {
            continue;
        }
        if let Some(view) = requests::load(&mut conn, &id).await? {
            out.push(view);
        }
    }
    Ok(out)
}

/// Every decision matching the query, newest first. Filtered to a VM or a group, the caller
/// needs reader rights on it; otherwise on everything.
pub async fn history(db: &Db, caller: &Caller, q: &ApprovalsQuery) -> Result<Vec<ApprovalEntry>> {
    let mut conn = db.pool().acquire().await?;
    match (&q.vm, &q.resource_group) {
        (Some(vm), _) => {
            validate_name("VM", vm)?;
            let group = inventory::require_vm(&mut *conn, vm).await?.resource_group;
            authz::authorize(caller, Action::ReadVm { vm, group: &group })?;
        }
        (None, Some(g)) => {
            validate_name("resource group", g)?;
            authz::authorize(caller, Action::ReadGroupPolicy { group: g })?;
        }
        (None, None) => authz::authorize(caller, Action::ReadAll)?,
    }
    if let Some(a) = &q.approver
        && a != "controller"
    {
        a.parse::<jitgate_api::PrincipalId>()
            .map_err(|e| Error::refused(ErrorCode::InvalidQuery, format!("approver: {e}")))?;
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Error::refused(
            ErrorCode::InvalidQuery,
            format!("limit must be 1 to {MAX_LIMIT}"),
        ));
    }
    let filter = Filter {
        vm: q.vm.clone(),
        resource_group: q.resource_group.clone(),
        principal: q.approver.clone(),
        since_ms: q.since.as_deref().map(parse_time).transpose()?,
        until_ms: q.until.as_deref().map(parse_time).transpose()?,
        limit,
    };
    let mut rows = approvals::history(&mut conn, &filter).await?;
    // A request across VMs: show only the VMs the caller sees.
    for r in &mut rows {
        let mut keep = Vec::new();
        for vm in &r.virtual_machines {
            if let Some(v) = inventory::vm(&mut *conn, vm).await?
                && authz::sees_vm(caller, vm, &v.resource_group)
            {
                keep.push(vm.clone());
            }
        }
        r.virtual_machines = keep;
    }
    Ok(rows)
}

/// The report as formula-safe CSV (`crate::csv`).
pub fn to_csv(rows: &[ApprovalEntry]) -> Result<String> {
    crate::csv::write(
        &[
            "timeUtc",
            "requestId",
            "requestor",
            "virtualMachines",
            "resourceGroups",
            "stage",
            "approver",
            "decision",
            "emergency",
            "reason",
        ],
        rows.iter().map(|r| {
            vec![
                Cell::from(r.time_utc.as_str()),
                Cell::from(r.request_id.as_str()),
                Cell::from(r.requestor.as_str()),
                Cell::from(r.virtual_machines.join(" ")),
                Cell::from(r.resource_groups.join(" ")),
                r.stage.map_or(Cell::Empty, |s| Cell::Int(i64::from(s))),
                Cell::from(r.approver.as_str()),
                Cell::from(r.decision.as_str()),
                Cell::from(if r.emergency { "true" } else { "false" }),
                Cell::from(r.reason.as_deref()),
            ]
        }),
    )
}
