//! Compliance (docs/compliance.md): which hosts have management ports reachable without JIT.
//!
//! - [`settings`]: the `[compliance]` configuration, validated once.
//! - [`evaluate`]: judges each VM in an assigned scope from its agent's status reports and
//!   the last network probe, into findings; runs and stores an evaluation.
//! - [`probe`]: the external check: TCP connects from the controller to registered addresses
//!   (and configured ranges, for unmanaged hosts), rate-limited and bounded in time.
//! - [`schedule`]: runs evaluations and probes on their intervals.
//!
//! This module is the service: reports, evaluations on demand, history, assignments and
//! remediation.

pub mod evaluate;
pub mod overview;
pub mod probe;
pub mod schedule;
pub mod settings;

use std::sync::Arc;

use jitgate_api::{
    AssignBody, Assignment, AssignmentEffect, ComplianceGroup, ComplianceReport, ComplianceResult,
    ComplianceState, ErrorCode, Finding, GroupBy, Operation, PolicyBody, PolicyPort, PolicyView,
    ProtoSel, RemediateBody, ReportQuery, ResourceKind, ResourceType, ScanBody, ScanReason,
    ScanSummary, Scope,
};
use tokio::sync::Mutex;

use crate::authz::{self, Action, Caller};
use crate::compliance::settings::Settings;
use crate::csv::{self, Cell};
use crate::error::{Error, Result};
use crate::input::{parse_prefix, parse_scope, parse_time};
use crate::policies::{self, Target};
use crate::policy::Policy;
use crate::presence::Presence;
use crate::store::activity::{self, NewActivity};
use crate::store::compliance::{self as db, AssignmentRow};
use crate::store::db::Db;
use crate::store::inventory;
use crate::store::write::WriteTx;

/// The built-in policy definition assigned at a scope.
pub const POLICY_NAME: &str = "Management ports of virtual machines should be protected with just-in-time network access control";

/// From findings: none is compliant; only "nothing observed" ones is unknown.
pub fn state_of(findings: &[Finding]) -> ComplianceState {
    if findings.is_empty() {
        ComplianceState::Compliant
    } else if findings.iter().all(|f| f.code.is_unknown()) {
        ComplianceState::Unknown
    } else {
        ComplianceState::NonCompliant
    }
}

/// VMs per state, and unmanaged hosts, among results.
pub struct Counts {
    pub compliant: i64,
    pub non_compliant: i64,
    pub unknown: i64,
    pub unmanaged: i64,
}

impl Counts {
    pub fn of(results: &[ComplianceResult]) -> Counts {
        let vms = |st: ComplianceState| {
            results
                .iter()
                .filter(|r| r.kind == ResourceKind::VirtualMachine && r.state == st)
                .count() as i64
        };
        Counts {
            compliant: vms(ComplianceState::Compliant),
            non_compliant: vms(ComplianceState::NonCompliant),
            unknown: vms(ComplianceState::Unknown),
            unmanaged: results
                .iter()
                .filter(|r| r.kind == ResourceKind::UnmanagedHost)
                .count() as i64,
        }
    }
}

/// The CSV columns, one row per finding (a resource without findings has one row).
pub const CSV_HEADER: [&str; 10] = [
    "resource",
    "kind",
    "resourceGroup",
    "owner",
    "state",
    "finding",
    "port",
    "interface",
    "address",
    "reason",
];

/// A report as CSV.
pub fn to_csv(results: &[ComplianceResult]) -> Result<String> {
    let mut rows = Vec::new();
    for r in results {
        let head = [
            Cell::from(r.resource.as_str()),
            Cell::from(r.kind.as_str()),
            Cell::from(r.resource_group.as_str()),
            Cell::from(r.owner.as_str()),
            Cell::from(r.state.as_str()),
        ];
        let mut tails: Vec<[Cell; 5]> = r
            .findings
            .iter()
            .map(|f| {
                [
                    Cell::from(f.code.as_str()),
                    Cell::from(f.port.as_deref()),
                    Cell::from(f.interface.as_deref()),
                    Cell::from(f.address.as_deref()),
                    Cell::from(f.reason.as_str()),
                ]
            })
            .collect();
        if tails.is_empty() {
            tails.push([
                Cell::Empty,
                Cell::Empty,
                Cell::Empty,
                Cell::Empty,
                Cell::Empty,
            ]);
        }
        for tail in tails {
            rows.push(head.iter().cloned().chain(tail).collect());
        }
    }
    csv::write(&CSV_HEADER, rows)
}

/// The report, or its CSV.
pub enum Report {
    Json(ComplianceReport),
    Csv(String),
}

/// The JIT policy of a named template. `default`: every management port, from any source,
/// for at most the configured duration.
pub fn template(s: &Settings, name: &str) -> Result<PolicyBody> {
    if name != "default" {
        return Err(Error::refused(
            ErrorCode::TemplateNotFound,
            format!("no remediation template {name:?} (available: default)"),
        ));
    }
    let mut ports: Vec<PolicyPort> = Vec::new();
    for m in &s.ports {
        let proto = ProtoSel::from(m.protocol).as_str();
        match ports
            .iter_mut()
            .find(|p| p.number == u32::from(m.port.get()))
        {
            // The same port in both protocols: one entry for both.
            Some(p) if p.protocol != proto => p.protocol = ProtoSel::Any.as_str().into(),
            Some(_) => {}
            None => ports.push(PolicyPort {
                number: u32::from(m.port.get()),
                protocol: proto.into(),
                allowed_source_address_prefix: Some("*".into()),
                allowed_source_address_prefixes: None,
                max_request_access_duration: s.template_max.clone(),
                on_expiry: Default::default(),
                max_connections: None,
                approval: None,
            }),
        }
    }
    Ok(PolicyBody { ports })
}

#[derive(Clone)]
pub struct Compliance {
    db: Db,
    presence: Presence,
    pub settings: Arc<Settings>,
    /// One evaluation at a time (scheduled and on demand).
    running: Arc<Mutex<()>>,
}

impl Compliance {
    pub fn new(db: Db, presence: Presence, settings: Settings) -> Compliance {
        Compliance {
            db,
            presence,
            settings: Arc::new(settings),
            running: Arc::new(Mutex::new(())),
        }
    }

    /// One evaluation now (after a running one finishes).
    pub async fn evaluate(
        &self,
        reason: ScanReason,
        probe: bool,
        range: Option<jitgate_common::SourcePrefix>,
    ) -> Result<ScanSummary> {
        let _one = self.running.lock().await;
        evaluate::run_scan(
            &self.db,
            &self.presence,
            &self.settings,
            reason,
            probe,
            range,
        )
        .await
    }

    /// An evaluation on demand (admin, scope `*`); with `probe`, the network first.
    pub async fn scan(&self, caller: &Caller, b: &ScanBody) -> Result<ScanSummary> {
        authz::authorize(caller, Action::AdministerAll)?;
        let range = match &b.range {
            None => None,
            Some(r) => {
                let p = parse_prefix(r)?;
                if !self.settings.ranges.iter().any(|c| c.contains(&p)) {
                    return Err(Error::refused(
                        ErrorCode::RangeNotAllowed,
                        format!(
                            "{p} is not inside a configured probe range ([compliance] probe_ranges)"
                        ),
                    ));
                }
                Some(p)
            }
        };
        if range.is_some() && !b.probe {
            return Err(Error::refused(
                ErrorCode::InvalidScan,
                "range is only meaningful with probe: true",
            ));
        }
        tracing::info!(caller = %caller.name(), probe = b.probe, "compliance evaluation on demand");
        self.evaluate(ScanReason::OnDemand, b.probe, range).await
    }

    /// The newest evaluation (or the newest at or before `at`) within the caller's scope and
    /// the requested one (unmanaged hosts only for scope `*`); grouped on request.
    pub async fn report(&self, caller: &Caller, q: &ReportQuery, csv: bool) -> Result<Report> {
        let want = q.scope.as_deref().map(parse_scope).transpose()?;
        let at = q.at.as_deref().map(parse_time).transpose()?;
        let scan = db::scan_at(self.db.pool(), at).await?;
        let mut results = match &scan {
            Some(s) => db::results(self.db.pool(), s.scan_id).await?,
            None => Vec::new(),
        };
        results.retain(|r| {
            let visible = |sc: &Scope| {
                if r.kind == ResourceKind::UnmanagedHost {
                    *sc == Scope::All
                } else {
                    sc.covers_vm(&r.resource, &r.resource_group)
                }
            };
            caller.grants.iter().any(|g| visible(&g.scope)) && want.as_ref().is_none_or(visible)
        });
        if csv {
            return Ok(Report::Csv(to_csv(&results)?));
        }
        let c = Counts::of(&results);
        let groups = q.group_by.map(|g| {
            let mut out: Vec<ComplianceGroup> = Vec::new();
            for r in results
                .iter()
                .filter(|r| r.state == ComplianceState::NonCompliant)
            {
                let key = match g {
                    GroupBy::Owner => &r.owner,
                    GroupBy::ResourceGroup => &r.resource_group,
                };
                let key = if key.is_empty() {
                    "(unassigned)".to_string()
                } else {
                    key.clone()
                };
                match out.iter_mut().find(|x| x.key == key) {
                    Some(x) => x.non_compliant.push(r.clone()),
                    None => out.push(ComplianceGroup {
                        owner: r.owner.clone(),
                        key,
                        non_compliant: vec![r.clone()],
                    }),
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            out
        });
        Ok(Report::Json(ComplianceReport {
            scan,
            compliant: c.compliant,
            non_compliant: c.non_compliant,
            unknown: c.unknown,
            unmanaged: c.unmanaged,
            compliance_percentage: ScanSummary::percentage(c.compliant, c.non_compliant),
            results,
            groups,
        }))
    }

    /// Evaluations, oldest first (the newest `limit`), counted within the caller's scope and
    /// `scope` (`*`, `rg:NAME`, `vm:NAME`; none: everything the caller may read).
    pub async fn history(
        &self,
        caller: &Caller,
        scope: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ScanSummary>> {
        self.history_until(caller, scope, None, limit).await
    }

    /// Evaluations at or before `until_ms` (every one without it), oldest first (the newest
    /// `limit` of them): the history as it stood at a time, counted as [`Self::report`]
    /// counts — the VMs within the caller's scope and `scope`, unmanaged hosts only for
    /// scope `*`. A reader of everything without a narrower `scope` gets the fleet's counts
    /// as stored with each evaluation; anyone else the sum of their groups' counts
    /// (`compliance_counts`) and of their single VMs' results.
    pub async fn history_until(
        &self,
        caller: &Caller,
        scope: Option<&str>,
        until_ms: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ScanSummary>> {
        let want = scope.map(parse_scope).transpose()?;
        let all = caller.grants.iter().any(|g| g.scope == Scope::All);
        if all && want.as_ref().is_none_or(|w| *w == Scope::All) {
            return db::history(self.db.pool(), until_ms, limit).await;
        }
        let mut groups = std::collections::BTreeSet::new();
        let mut vms = std::collections::BTreeSet::new();
        match &want {
            Some(Scope::Vm(v)) => {
                vms.insert(v.clone());
            }
            Some(Scope::ResourceGroup(g))
                if caller.grants.iter().any(|c| c.scope.covers_group(g)) =>
            {
                groups.insert(g.clone());
            }
            _ => {
                for g in &caller.grants {
                    match &g.scope {
                        Scope::ResourceGroup(rg) => {
                            if want.as_ref().is_none_or(|w| w.covers_group(rg)) {
                                groups.insert(rg.clone());
                            }
                        }
                        Scope::Vm(v) => {
                            vms.insert(v.clone());
                        }
                        Scope::All => {}
                    }
                }
            }
        }
        let keep_vm = |vm: &str, group: &str| {
            caller.grants.iter().any(|g| g.scope.covers_vm(vm, group))
                && want.as_ref().is_none_or(|w| w.covers_vm(vm, group))
        };
        let mut conn = self.db.pool().acquire().await?;
        db::history_of(
            &mut conn,
            until_ms,
            limit,
            &db::HistoryScope {
                groups: &groups,
                vms: &vms,
                keep_vm: &keep_vm,
            },
        )
        .await
    }

    /// Where the policy is assigned (any caller).
    pub async fn assignments(&self) -> Result<Vec<Assignment>> {
        Ok(db::assignments(self.db.pool())
            .await?
            .into_iter()
            .map(|a| Assignment {
                id: a.id,
                scope: a.scope,
                policy: POLICY_NAME.into(),
                effect: a.effect,
                created_time_utc: jitgate_api::time::format(a.created_ms),
                created_by: a.created_by,
            })
            .collect())
    }

    /// Assigns the policy at `*` or `rg:NAME`; a second assignment at one scope conflicts.
    pub async fn assign(&self, caller: &Caller, b: &AssignBody) -> Result<Assignment> {
        let mut w = self.db.begin().await?;
        let a = assign(&mut w, caller, &b.scope).await?;
        w.commit().await?;
        Ok(a)
    }

    pub async fn unassign(&self, caller: &Caller, id: &str) -> Result<()> {
        let mut w = self.db.begin().await?;
        unassign(&mut w, caller, id).await?;
        w.commit().await
    }

    /// Enables JIT on a VM from a template: its own policy (pushed to its agent) and the
    /// "Remediate Compliance" entry, in one transaction.
    pub async fn remediate(&self, caller: &Caller, b: &RemediateBody) -> Result<PolicyView> {
        let vm = &b.virtual_machine;
        let (group, body) = self.remediation(caller, b).await?;
        let policy = Policy::from_body(&body)?;
        let actor = caller.actor();
        let mut w = self.db.begin().await?;
        let view = policies::write(&mut w, caller, Target::Vm(vm), &group, &policy).await?;
        activity::log(
            &mut w,
            NewActivity::vm(Operation::Remediate, &group, vm, &actor)
                .details(serde_json::json!({"template": b.template, "policy": POLICY_NAME})),
        )
        .await?;
        w.commit().await?;
        Ok(view)
    }
}

impl Compliance {
    /// What [`Compliance::remediate`] would do, checked as it checks it and changing
    /// nothing: the VM's resource group and the policy the template sets (for a
    /// confirmation that shows it).
    pub async fn remediation(
        &self,
        caller: &Caller,
        b: &RemediateBody,
    ) -> Result<(String, PolicyBody)> {
        let vm = &b.virtual_machine;
        let group = inventory::require_vm(self.db.pool(), vm)
            .await?
            .resource_group;
        authz::authorize(caller, Action::WriteVmPolicy { vm, group: &group })?;
        Ok((group, template(&self.settings, &b.template)?))
    }
}

/// Assigns the policy at `scope` (`*` or `rg:NAME`) in `w` (authorised, activity-logged).
pub async fn assign(w: &mut WriteTx, caller: &Caller, scope: &str) -> Result<Assignment> {
    authz::authorize(caller, Action::AdministerAll)?;
    let scope = match parse_scope(scope)? {
        Scope::Vm(_) => {
            return Err(Error::refused(
                ErrorCode::InvalidScope,
                "assign the compliance policy to the whole fleet (*) or a resource group (rg:NAME)",
            ));
        }
        s => s,
    };
    let group = match &scope {
        Scope::ResourceGroup(g) => inventory::require_group(w.conn(), g).await?.name,
        _ => String::new(),
    };
    let actor = caller.actor();
    let row = AssignmentRow {
        id: format!("asg_{}", uuid::Uuid::new_v4().simple()),
        scope,
        effect: AssignmentEffect::Audit,
        created_ms: w.now,
        created_by: actor.name.clone(),
    };
    if !db::assign(w, &row).await? {
        return Err(Error::refused(
            ErrorCode::AssignmentExists,
            format!("the compliance policy is already assigned at {}", row.scope),
        ));
    }
    activity::log(
        w,
        NewActivity::other(
            Operation::AssignCompliance,
            ResourceType::PolicyAssignment,
            &group,
            &actor,
        )
        .details(
            serde_json::json!({"assignmentId": row.id, "scope": row.scope.to_string(),
            "policy": POLICY_NAME, "effect": row.effect.as_str()}),
        ),
    )
    .await?;
    Ok(Assignment {
        id: row.id,
        scope: row.scope,
        policy: POLICY_NAME.into(),
        effect: row.effect,
        created_time_utc: jitgate_api::time::format(row.created_ms),
        created_by: row.created_by,
    })
}

/// Deletes assignment `id` in `w` (authorised, activity-logged).
pub async fn unassign(w: &mut WriteTx, caller: &Caller, id: &str) -> Result<()> {
    authz::authorize(caller, Action::AdministerAll)?;
    let Some(scope) = db::unassign(w, id).await? else {
        return Err(Error::refused(
            ErrorCode::AssignmentNotFound,
            format!("no compliance assignment {id}"),
        ));
    };
    let group = match &scope {
        Scope::ResourceGroup(g) => g.clone(),
        _ => String::new(),
    };
    activity::log(
        w,
        NewActivity::other(
            Operation::UnassignCompliance,
            ResourceType::PolicyAssignment,
            &group,
            &caller.actor(),
        )
        .details(serde_json::json!({"assignmentId": id, "scope": scope.to_string()})),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitgate_api::FindingCode;

    #[test]
    fn report_csv_neutralises_formulas() {
        let r = ComplianceResult {
            resource: "web1".into(),
            kind: ResourceKind::VirtualMachine,
            resource_group: "prod".into(),
            owner: "=cmd|' /C calc'!A0".into(),
            state: ComplianceState::NonCompliant,
            findings: vec![Finding {
                code: FindingCode::ProgramUnhealthy,
                port: None,
                interface: None,
                address: None,
                reason: "@SUM(1+1)".into(),
            }],
        };
        let text = to_csv(&[r]).unwrap();
        assert_eq!(text.lines().next(), Some(CSV_HEADER.join(",").as_str()));
        assert_eq!(
            text.lines().nth(1),
            Some(
                "web1,virtualMachine,prod,'=cmd|' /C calc'!A0,NonCompliant,ProgramUnhealthy,,,,'@SUM(1+1)"
            )
        );
    }
}
