//! The compliance API (routes are in `api::router`, documented in openapi.yaml).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jitgate_api::ErrorCode;
use jitgate_api::{
    AssignBody, ComplianceGroup as Group, ComplianceReport as Report, Format, GroupBy,
    HistoryQuery, List, PolicyBody as PolicyJson, PolicyPort as PolicyPortJson, RemediateBody,
    ReportQuery, ScanBody, ScanReason,
};

use super::{Assignment, ResourceKind, ResourceResult, ScanSummary, State as CState};
use crate::api::{AppState, Body, Q, csv_response, format_of};
use crate::auth::{Caller, Role, Scope};
use crate::error::ApiError;
use crate::model::{Policy, parse_time};
use crate::store::{Actor, NewActivity, op};

pub async fn report(
    State(st): State<AppState>,
    c: Caller,
    Q(q): Q<ReportQuery>,
) -> Result<Response, ApiError> {
    let want = q
        .scope
        .as_deref()
        .map(crate::auth::parse_scope)
        .transpose()?;
    let at = q.at.as_deref().map(parse_time).transpose()?;
    let group_by = q.group_by;
    let csv = format_of(q.format, &[Format::Json, Format::Csv])? == Format::Csv;
    let scan = st.store.scan_at(at).await?;
    let mut results = match &scan {
        Some(s) => st.store.scan_results(s.scan_id).await?,
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
        visible(&c.scope) && want.as_ref().is_none_or(visible)
    });
    if csv {
        return Ok(csv_response(to_csv(&results)));
    }
    let super::Counts {
        compliant,
        non_compliant,
        unknown,
        unmanaged,
    } = super::Counts::of(&results);
    let groups = group_by.map(|g| {
        let by_owner = g == GroupBy::Owner;
        let mut out: Vec<Group> = Vec::new();
        for r in results.iter().filter(|r| r.state == CState::NonCompliant) {
            let key = if by_owner {
                &r.owner
            } else {
                &r.resource_group
            };
            let key = if key.is_empty() {
                "(unassigned)".to_string()
            } else {
                key.clone()
            };
            match out.iter_mut().find(|x| x.key == key) {
                Some(x) => x.non_compliant.push(r.clone()),
                None => out.push(Group {
                    owner: r.owner.clone(),
                    key,
                    non_compliant: vec![r.clone()],
                }),
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    });
    Ok(Json(Report {
        scan,
        compliant,
        non_compliant,
        unknown,
        unmanaged,
        compliance_percentage: ScanSummary::percentage(compliant, non_compliant),
        results,
        groups,
    })
    .into_response())
}

/// The CSV columns, one row per finding (a resource without findings has one row).
pub const CSV_HEADER: &str =
    "resource,kind,resourceGroup,owner,state,finding,port,interface,address,reason";

pub fn to_csv(results: &[ResourceResult]) -> String {
    let header: Vec<&str> = CSV_HEADER.split(',').collect();
    let mut rows = Vec::new();
    for r in results {
        let head = [
            r.resource.as_str(),
            r.kind.as_str(),
            r.resource_group.as_str(),
            r.owner.as_str(),
            r.state.as_str(),
        ];
        let mut tails: Vec<[&str; 5]> = r
            .findings
            .iter()
            .map(|f| {
                [
                    f.code.as_str(),
                    f.port.as_deref().unwrap_or(""),
                    f.interface.as_deref().unwrap_or(""),
                    f.address.as_deref().unwrap_or(""),
                    f.reason.as_str(),
                ]
            })
            .collect();
        if tails.is_empty() {
            tails.push(["", "", "", "", ""]);
        }
        for tail in tails {
            rows.push(
                head.iter()
                    .chain(tail.iter())
                    .map(|c| c.to_string())
                    .collect(),
            );
        }
    }
    crate::csv::write(&header, rows)
}

pub async fn scan(
    State(st): State<AppState>,
    c: Caller,
    Body(b): Body<ScanBody>,
) -> Result<Response, ApiError> {
    c.check_global(Role::Admin)?;
    let range = match &b.range {
        None => None,
        Some(r) => {
            let p = crate::model::parse_prefix(r)?;
            if !st.compliance.settings.ranges.iter().any(|c| c.contains(&p)) {
                return Err(ApiError::bad_request(
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
        return Err(ApiError::bad_request(
            ErrorCode::InvalidScan,
            "range is only meaningful with probe: true",
        ));
    }
    tracing::info!(caller = %c.name, probe = b.probe, "compliance evaluation on demand");
    let s = st
        .compliance
        .scan(ScanReason::OnDemand, b.probe, range)
        .await?;
    Ok(Json(s).into_response())
}

pub async fn history(
    State(st): State<AppState>,
    c: Caller,
    Q(q): Q<HistoryQuery>,
) -> Result<Response, ApiError> {
    c.check_global(Role::Reader)?;
    let v = st
        .store
        .scan_history(q.limit.unwrap_or(100).clamp(1, 10_000))
        .await?;
    Ok(Json(List::from(v)).into_response())
}

pub async fn assignments(State(st): State<AppState>, _c: Caller) -> Result<Response, ApiError> {
    let v: Vec<Assignment> = st.store.compliance_assignments().await?;
    Ok(Json(List::from(v)).into_response())
}

pub async fn assign(
    State(st): State<AppState>,
    c: Caller,
    Body(b): Body<AssignBody>,
) -> Result<Response, ApiError> {
    c.check_global(Role::Admin)?;
    let a = st.store.assign_compliance(&Actor::of(&c), &b.scope).await?;
    Ok((StatusCode::CREATED, Json(a)).into_response())
}

pub async fn unassign(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    c.check_global(Role::Admin)?;
    st.store.unassign_compliance(&Actor::of(&c), &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The JIT policy of a named template. `default`: every management port, from any source,
/// for at most the configured duration.
pub fn template(s: &super::Settings, name: &str) -> Result<PolicyJson, ApiError> {
    if name != "default" {
        return Err(ApiError::not_found(
            ErrorCode::TemplateNotFound,
            format!("no remediation template {name:?} (available: default)"),
        ));
    }
    let mut ports: Vec<PolicyPortJson> = Vec::new();
    for m in &s.ports {
        let proto = jitgate_api::ProtoSel::from(m.protocol).as_str();
        match ports
            .iter_mut()
            .find(|p| p.number == u32::from(m.port.get()))
        {
            // The same port in both protocols: one entry for both.
            Some(p) if p.protocol != proto => p.protocol = "*".into(),
            Some(_) => {}
            None => ports.push(PolicyPortJson {
                number: u32::from(m.port.get()),
                protocol: proto.into(),
                allowed_source_address_prefix: Some("*".into()),
                allowed_source_address_prefixes: None,
                max_request_access_duration: s.template_max.clone(),
                on_expiry: Default::default(),
            }),
        }
    }
    Ok(PolicyJson { ports })
}

/// Enables JIT on a VM from a template (its own policy, pushed to its agent), audited.
pub async fn remediate(
    State(st): State<AppState>,
    c: Caller,
    Body(b): Body<RemediateBody>,
) -> Result<Response, ApiError> {
    let (group, _) = st.store.vm(&b.virtual_machine).await?;
    c.check_vm(Role::Admin, &b.virtual_machine, &group)?;
    let policy = Policy::from_json(&template(&st.compliance.settings, &b.template)?)?;
    let actor = Actor::of(&c);
    let view = st
        .store
        .put_policy(&actor, "vm", &b.virtual_machine, &group, &policy)
        .await?;
    let mut w = st.store.begin_write().await?;
    w.log(NewActivity {
        operation: op::REMEDIATE,
        resource_type: "VirtualMachine",
        resource_group: &group,
        vm: &b.virtual_machine,
        actor: &actor,
        outcome: "Succeeded",
        request_id: "",
        details: serde_json::json!({"template": b.template, "policy": super::POLICY_NAME}),
    })
    .await?;
    w.commit().await?;
    Ok(Json(view).into_response())
}
