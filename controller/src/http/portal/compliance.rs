//! The compliance dashboard: the evaluation as of now (or as of a date), its counts and
//! percentage, the percentage over time as a chart, the non-compliant VMs grouped by owner
//! or resource group with each finding in words, the unknown VMs and unmanaged hosts, the
//! exports (CSV per finding, JSON) equal to `GET /api/v1/compliance`'s, and the forms of
//! admins: **Scan now** / **Probe now**, **Remediate** (after a confirmation that shows the
//! policy the template sets) and the policy's assignments. Every view and change goes
//! through the service of `/api/v1/compliance*` ([`crate::compliance::Compliance`]): the
//! same rights, the same activity log entries.

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use jitgate_api::{
    AssignBody, ComplianceResult, ComplianceState, ErrorCode, Finding, FindingCode, GroupBy,
    PolicyBody, RemediateBody, ReportQuery, ResourceKind, ScanBody, ScanSummary, Scope,
};
use serde::Deserialize;

use crate::authz::{self, Action, Caller};
use crate::compliance::Report;
use crate::compliance::overview::{Budget, Overview};
use crate::http::extract::Q;
use crate::http::portal::compliance_chart::{Chart, percent};
use crate::http::portal::page::{
    Chrome, PageError, PageResult, html, refuse, some, time_field, when_utc,
};
use crate::http::portal::session::{Posted, Viewer};
use crate::http::state::AppState;

/// Evaluations on the chart (the newest, up to the date shown).
const CHART_POINTS: i64 = 100;
/// Resources listed with their findings on one page, all sections together (non-compliant
/// first, then unknown, then unmanaged); the rest are counted (the exports carry them all).
/// With the compliant names, it keeps the page within 150 KB with its assets.
const LISTED: usize = 50;
/// Compliant VMs listed (names only).
const LISTED_COMPLIANT: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/compliance", get(dashboard))
        .route("/compliance/export", get(download))
        .route("/compliance/scan", post(scan))
        .route("/compliance/remediate", get(confirm).post(remediate))
        .route("/compliance/assignments", post(assign))
        .route("/compliance/assignments/{id}/delete", post(unassign))
}

/// The filters as the form sends them (an empty field: no filter).
#[derive(Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Filters {
    /// `*`, `rg:NAME` or `vm:NAME`.
    scope: Option<String>,
    /// `owner` (the default) or `resourceGroup`.
    group: Option<String>,
    /// As of: UTC, `YYYY-MM-DDTHH:MM` (a datetime-local field) or RFC 3339.
    at: Option<String>,
    /// Export only: `csv` or `json`.
    format: Option<String>,
}

impl Filters {
    fn group_by(&self) -> Result<GroupBy, PageError> {
        match some(&self.group) {
            None => Ok(GroupBy::Owner),
            Some(g) => g.parse().map_err(|e: jitgate_api::UnknownValue| {
                refuse(ErrorCode::InvalidQuery, e.to_string())
            }),
        }
    }

    /// The API query for these filters (checked: a bad scope or time is refused by the
    /// service, a bad grouping here).
    fn query(&self) -> Result<ReportQuery, PageError> {
        Ok(ReportQuery {
            scope: some(&self.scope),
            group_by: Some(self.group_by()?),
            at: time_field("as of", &self.at)?,
            format: None,
        })
    }

    /// The filters as a query string (without `format`).
    fn pairs(&self) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("scope", &self.scope),
            ("group", &self.group),
            ("at", &self.at),
        ] {
            if let Some(v) = some(v) {
                s.append_pair(k, &v);
            }
        }
        s.finish()
    }
}

/// A finding's code as a heading.
fn title(code: &FindingCode) -> &'static str {
    match code {
        FindingCode::ListeningUnprotected => "Listening without JIT",
        FindingCode::ReachableWithoutJit => "Reachable without JIT",
        FindingCode::EnforcementDetached => "Enforcement detached",
        FindingCode::InterfaceUnprotected => "Interface without enforcement",
        FindingCode::ProgramUnhealthy => "Program unhealthy",
        FindingCode::ProgramNotFirst => "Another program runs first",
        FindingCode::ProgramMissing => "Program missing from an interface",
        FindingCode::StaleStatusReport => "No recent status report",
        FindingCode::AgentOffline => "Agent offline",
        FindingCode::NoAgent => "No agent",
        FindingCode::NoStatusReport => "No status report yet",
        FindingCode::Unmanaged => "Unmanaged host",
        FindingCode::Other(_) => "Finding",
    }
}

/// A finding as the page shows it: what, where, why.
struct FindingLine {
    title: &'static str,
    code: String,
    port: String,
    interface: String,
    address: String,
    reason: String,
}

impl FindingLine {
    fn of(f: &Finding) -> FindingLine {
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        FindingLine {
            title: title(&f.code),
            code: f.code.as_str().to_string(),
            port: dash(&f.port),
            interface: match f.interface.as_deref() {
                Some("*") => "* (every interface)".into(),
                _ => dash(&f.interface),
            },
            address: dash(&f.address),
            reason: f.reason.clone(),
        }
    }
}

/// A resource with its findings.
struct Resource {
    name: String,
    vm: bool,
    group: String,
    owner: String,
    state: String,
    findings: Vec<FindingLine>,
    /// The viewer may enable JIT on it from a template (a non-compliant VM).
    remediate: bool,
}

impl Resource {
    fn of(r: &ComplianceResult, caller: &Caller) -> Resource {
        let vm = r.kind == ResourceKind::VirtualMachine;
        Resource {
            name: r.resource.clone(),
            vm,
            group: r.resource_group.clone(),
            owner: r.owner.clone(),
            state: r.state.as_str().to_string(),
            findings: r.findings.iter().map(FindingLine::of).collect(),
            // Shown to those the service will allow; the service decides on the POST.
            remediate: vm
                && r.state == ComplianceState::NonCompliant
                && authz::allowed(
                    caller,
                    Action::WriteVmPolicy {
                        vm: &r.resource,
                        group: &r.resource_group,
                    },
                ),
        }
    }
}

/// A section's resources: those listed, and how many more there are.
struct Listed {
    items: Vec<Resource>,
    more: i64,
}

impl Listed {
    /// `listed` of a section of `count` resources.
    fn of(listed: &[ComplianceResult], count: i64, caller: &Caller) -> Listed {
        Listed {
            more: (count - listed.len() as i64).max(0),
            items: listed.iter().map(|r| Resource::of(r, caller)).collect(),
        }
    }
}

/// Non-compliant VMs of one owner or resource group.
struct Group {
    key: String,
    owner: String,
    count: i64,
    vms: Listed,
}

struct Assigned {
    id: String,
    scope: String,
    effect: String,
    created: String,
    by: String,
}

/// What an action did, in words.
struct Notice {
    ok: bool,
    text: String,
}

fn scanned(s: &ScanSummary) -> Notice {
    Notice {
        ok: true,
        text: format!(
            "Evaluation {} done ({}): {} compliant, {} non-compliant, {} unknown, {} unmanaged \
             host{}; {} compliant.",
            s.scan_id,
            if s.probed {
                "with a probe of the network"
            } else {
                "from the agents' reports and the last probe"
            },
            s.compliant,
            s.non_compliant,
            s.unknown,
            s.unmanaged,
            if s.unmanaged == 1 { "" } else { "s" },
            percent(s.compliance_percentage)
        ),
    }
}

#[derive(Template)]
#[template(path = "portal/compliance.html")]
struct Dashboard {
    chrome: Chrome,
    scope: String,
    by_owner: bool,
    at: String,
    /// The as-of time in words ("2026-11-30 10:15 UTC"); empty: now.
    at_words: String,
    shown: Option<ScanSummary>,
    shown_time: String,
    percentage: String,
    report: Overview,
    /// Resources listed with their findings at most ([`LISTED`]).
    listed: usize,
    groups: Vec<Group>,
    unknown: Listed,
    unmanaged: Listed,
    compliant: Listed,
    chart: Option<Chart>,
    /// What the chart counts: "the whole fleet", "scope rg:prod", "the VMs within your scope".
    chart_of: String,
    /// Why there is no chart, when there is none.
    no_chart: &'static str,
    assignments: Vec<Assigned>,
    /// Scan, probe and assignments (admin on `*`).
    admin: bool,
    exports: String,
    notice: Option<Notice>,
}

async fn render(st: &AppState, v: &Viewer, f: &Filters, notice: Option<Notice>) -> PageResult {
    let c = &st.app.compliance;
    let q = f.query()?;
    let by = q.group_by.unwrap_or(GroupBy::Owner);
    let report = c
        .overview(
            &v.caller,
            &q,
            Budget {
                with_findings: LISTED,
                compliant: LISTED_COMPLIANT,
            },
        )
        .await?;
    let until =
        q.at.as_deref()
            .map(jitgate_api::time::parse)
            .transpose()
            .map_err(|_| refuse(ErrorCode::InvalidTime, "as of: not a time"))?;
    let shown_id = report.scan.as_ref().map(|s| s.scan_id);
    // The history counts what the dashboard lists: the viewer's scope and the filter's.
    let history = c
        .history_until(&v.caller, q.scope.as_deref(), until, CHART_POINTS)
        .await?;
    let chart = Chart::of(&history, shown_id);
    let no_chart = "No evaluation yet: the chart starts with the first one.";
    let everything = v.caller.grants.iter().any(|g| g.scope == Scope::All);
    let chart_of = match q.scope.as_deref() {
        Some(s) if s != "*" => format!("scope {s}"),
        _ if everything => "the whole fleet".to_string(),
        _ => "the VMs within your scope".to_string(),
    };
    let caller = &v.caller;
    let groups = report
        .groups
        .iter()
        .map(|g| Group {
            key: g.key.clone(),
            owner: g.owner.clone(),
            count: g.count,
            vms: Listed::of(&g.listed, g.count, caller),
        })
        .collect();
    let unknown = Listed::of(&report.unknown_listed, report.unknown, caller);
    let unmanaged = Listed::of(&report.unmanaged_listed, report.unmanaged, caller);
    let compliant = Listed::of(&report.compliant_listed, report.compliant, caller);
    let assignments = c
        .assignments()
        .await?
        .into_iter()
        .map(|a| Assigned {
            id: a.id,
            scope: a.scope.to_string(),
            effect: a.effect.as_str().to_string(),
            created: when_utc(&a.created_time_utc),
            by: a.created_by,
        })
        .collect();
    let pairs = f.pairs();
    Ok(html(
        StatusCode::OK,
        &Dashboard {
            chrome: v.chrome("compliance"),
            scope: some(&f.scope).unwrap_or_default(),
            by_owner: by == GroupBy::Owner,
            at: some(&f.at).unwrap_or_default(),
            at_words: q.at.as_deref().map(when_utc).unwrap_or_default(),
            shown_time: report
                .scan
                .as_ref()
                .map(|s| when_utc(&s.time_utc))
                .unwrap_or_default(),
            shown: report.scan.clone(),
            percentage: percent(report.compliance_percentage),
            listed: LISTED,
            groups,
            unknown,
            unmanaged,
            compliant,
            chart,
            chart_of,
            no_chart,
            assignments,
            admin: authz::allowed(caller, Action::AdministerAll),
            exports: if pairs.is_empty() {
                String::new()
            } else {
                format!("{pairs}&")
            },
            notice,
            report,
        },
    ))
}

async fn dashboard(State(st): State<AppState>, v: Viewer, Q(f): Q<Filters>) -> PageResult {
    if f.format.is_some() {
        return Err(refuse(
            ErrorCode::InvalidQuery,
            "format belongs to /compliance/export",
        ));
    }
    render(&st, &v, &f, None).await
}

/// The filtered report exactly as `GET /api/v1/compliance` answers it for the same
/// filter: CSV (one row per finding, formula-safe) or JSON, as a download.
async fn download(State(st): State<AppState>, v: Viewer, Q(f): Q<Filters>) -> PageResult {
    let csv = match some(&f.format).as_deref() {
        Some("csv") => true,
        Some("json") | None => false,
        Some(other) => {
            return Err(refuse(
                ErrorCode::InvalidQuery,
                format!("format {other:?}: csv or json"),
            ));
        }
    };
    let mut q = f.query()?;
    if some(&f.group).is_none() {
        // The API groups only when asked.
        q.group_by = None;
    }
    let (mut r, ext) = match st.app.compliance.report(&v.caller, &q, csv).await? {
        Report::Csv(text) => (crate::http::respond::csv(text), "csv"),
        Report::Json(r) => (axum::Json(r).into_response(), "json"),
    };
    if let Ok(h) = HeaderValue::from_str(&format!("attachment; filename=\"compliance.{ext}\"")) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, h);
    }
    Ok(r)
}

/// **Scan now** (`probe` absent) or **Probe now** (`probe=1`): `POST /api/v1/compliance/scans`.
async fn scan(State(st): State<AppState>, p: Posted) -> PageResult {
    let body = ScanBody {
        probe: p.one("probe").is_some(),
        range: None,
    };
    let s = st.app.compliance.scan(&p.viewer.caller, &body).await?;
    render(&st, &p.viewer, &Filters::default(), Some(scanned(&s))).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemediateQuery {
    vm: String,
    template: Option<String>,
}

/// A port of the policy a template sets, in words.
struct PolicyLine {
    port: String,
    sources: String,
    max: String,
    on_expiry: String,
}

fn policy_lines(b: &PolicyBody) -> Vec<PolicyLine> {
    b.ports
        .iter()
        .map(|p| PolicyLine {
            port: format!("{}/{}", p.number, p.protocol),
            sources: crate::http::portal::page::policy_sources(p),
            max: p.max_request_access_duration.clone(),
            on_expiry: p.on_expiry.as_str().to_string(),
        })
        .collect()
}

#[derive(Template)]
#[template(path = "portal/compliance_remediate.html")]
struct Confirm {
    chrome: Chrome,
    vm: String,
    group: String,
    template: String,
    ports: Vec<PolicyLine>,
}

/// The confirmation of Remediate: the policy the template will set, checked as the
/// remediation checks it (a VM the viewer may not change is refused here already).
async fn confirm(State(st): State<AppState>, v: Viewer, Q(q): Q<RemediateQuery>) -> PageResult {
    let b = RemediateBody {
        virtual_machine: q.vm,
        template: q.template.unwrap_or_else(|| "default".into()),
    };
    let (group, policy) = st.app.compliance.remediation(&v.caller, &b).await?;
    Ok(html(
        StatusCode::OK,
        &Confirm {
            chrome: v.chrome("compliance"),
            vm: b.virtual_machine,
            group,
            template: b.template,
            ports: policy_lines(&policy),
        },
    ))
}

/// **Remediate**: `POST /api/v1/compliance/remediate` (the VM's own policy from the
/// template, pushed to its agent, and the `Remediate Compliance` entry).
async fn remediate(State(st): State<AppState>, p: Posted) -> PageResult {
    let Some(vm) = p.one("vm") else {
        return Err(refuse(ErrorCode::InvalidBody, "which VM: vm is missing"));
    };
    let b = RemediateBody {
        virtual_machine: vm.to_string(),
        template: p.one("template").unwrap_or("default").to_string(),
    };
    let view = st.app.compliance.remediate(&p.viewer.caller, &b).await?;
    let ports: Vec<String> = view
        .ports
        .iter()
        .map(|x| format!("{}/{}", x.number, x.protocol))
        .collect();
    let notice = Notice {
        ok: true,
        text: format!(
            "JIT enabled on {} from the template {}: {} now open only through a request. The \
             agent applies the policy at once; the VM shows compliant after the next \
             evaluation (Scan now, or Probe now when the probe found the port open).",
            b.virtual_machine,
            b.template,
            ports.join(", ")
        ),
    };
    render(&st, &p.viewer, &Filters::default(), Some(notice)).await
}

/// Assigns the policy at a scope (`POST /api/v1/compliance/assignments`).
async fn assign(State(st): State<AppState>, p: Posted) -> PageResult {
    let b = AssignBody {
        scope: p.one("scope").unwrap_or_default().to_string(),
    };
    let a = st.app.compliance.assign(&p.viewer.caller, &b).await?;
    let notice = Notice {
        ok: true,
        text: format!(
            "The compliance policy is assigned at {} ({}): its VMs are judged from the next \
             evaluation.",
            a.scope, a.id
        ),
    };
    render(&st, &p.viewer, &Filters::default(), Some(notice)).await
}

/// Deletes an assignment (`DELETE /api/v1/compliance/assignments/{id}`).
async fn unassign(State(st): State<AppState>, Path(id): Path<String>, p: Posted) -> PageResult {
    st.app.compliance.unassign(&p.viewer.caller, &id).await?;
    let notice = Notice {
        ok: true,
        text: format!("Assignment {id} deleted: its VMs are no longer judged."),
    };
    render(&st, &p.viewer, &Filters::default(), Some(notice)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_read_and_travel() {
        let f = Filters {
            scope: Some(" rg:prod ".into()),
            group: Some("resourceGroup".into()),
            at: Some("2026-11-30T10:15".into()),
            format: None,
        };
        let q = f.query().ok().unwrap_or_default();
        assert_eq!(q.scope.as_deref(), Some("rg:prod"));
        assert_eq!(q.group_by, Some(GroupBy::ResourceGroup));
        assert_eq!(q.at.as_deref(), Some("2026-11-30T10:15:00Z"));
        assert_eq!(
            f.pairs(),
            "scope=rg%3Aprod&group=resourceGroup&at=2026-11-30T10%3A15"
        );
        let bad = Filters {
            group: Some("team".into()),
            ..Filters::default()
        };
        assert!(bad.query().is_err());
        assert_eq!(Filters::default().group_by().ok(), Some(GroupBy::Owner));
    }

    #[test]
    fn a_section_says_how_many_more() {
        let r = |name: &str| ComplianceResult {
            resource: name.into(),
            kind: ResourceKind::VirtualMachine,
            resource_group: "prod".into(),
            owner: "ops".into(),
            state: ComplianceState::NonCompliant,
            findings: vec![],
        };
        let rs = [r("a"), r("b")];
        let local = Caller::local();
        let first = Listed::of(&rs, 3, &local);
        assert_eq!((first.items.len(), first.more), (2, 1));
        assert!(first.items[0].remediate, "a local caller may remediate");
        let none = Listed::of(&[], 3, &local);
        assert_eq!((none.items.len(), none.more), (0, 3));
    }

    #[test]
    fn findings_in_words() {
        let f = FindingLine::of(&Finding {
            code: FindingCode::ListeningUnprotected,
            port: Some("22/TCP".into()),
            interface: Some("*".into()),
            address: Some("0.0.0.0".into()),
            reason: "22/TCP listens on 0.0.0.0".into(),
        });
        assert_eq!(
            (f.title, f.port.as_str(), f.interface.as_str()),
            ("Listening without JIT", "22/TCP", "* (every interface)")
        );
        let f = FindingLine::of(&Finding {
            code: FindingCode::NoAgent,
            port: None,
            interface: None,
            address: None,
            reason: "no agent".into(),
        });
        assert_eq!((f.port.as_str(), f.address.as_str()), ("-", "-"));
    }
}
